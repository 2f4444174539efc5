/*
 * t5_encoder.h — the T5 v1.1 encoder (Hugging Face T5EncoderModel; FLUX uses T5-XXL's), built from
 * kernels/ops.h in the checkpoint's key layout (shared.weight, encoder.block.N...).
 *
 *   x = shared[ids]                                      (not scaled)
 *   bias[h, i, j] = relative_attention_bias[bucket(j - i), h]   block 0's table, used by every block
 *   per block: x += o(attention(rms(x)))                 q k^T unscaled, + bias, no mask
 *              x += wo(gelu_tanh(wi_0(rms(x))) * wi_1(rms(x)))
 *   out = final_layer_norm(x)                            rms(x) = x / sqrt(mean(x^2) + eps) * w, fp32
 *
 * The bucket of a relative position is the bidirectional one of the reference: half the buckets
 * per direction, exact below max_exact = buckets / 4, logarithmic up to max_distance, computed in
 * float32 and truncated as the reference does. No linear has a bias. Every position, pads
 * included, takes part in attention: FLUX runs T5 without an attention mask.
 *
 * Parameters come from shapes alone (heads from the bias table, d_kv = inner / heads) and from
 * config.json when there is one (relative_attention_max_distance, layer_norm_epsilon,
 * feed_forward_proj: only gated-gelu is supported). shared.weight or encoder.embed_tokens.weight
 * may hold the embedding.
 */
#ifndef FL_MODELS_TEXT_T5_ENCODER_H
#define FL_MODELS_TEXT_T5_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/context.h"
#include "models/family.h"
#include "models/text/clip_text.h"
#include "models/text/weights.h"

typedef struct fl_t5_params {
    int vocab_size;
    int d_model;
    int d_kv;
    int num_heads;
    int d_ff;
    int num_layers;
    int num_buckets;  /* 32 */
    int max_distance; /* 128 */
    float layer_norm_eps; /* 1e-6 */
} fl_t5_params;

size_t fl_t5_param_decls(const fl_t5_params *p, fl_text_param_decl *decls);
int fl_t5_params_validate(const fl_t5_params *p, fl_error *err);
/* Finds the encoder tensors (prefix: whatever precedes "encoder.final_layer_norm.weight") and
 * infers p from their shapes. */
int fl_t5_params_infer(const fl_tensor_header *entries, size_t n, fl_t5_params *p, char *prefix, fl_error *err);
/* Overrides p with the fields of a Hugging Face T5Config config.json. */
int fl_t5_params_apply_config(const char *json, size_t len, fl_t5_params *p, fl_error *err);
int fl_t5_check_entries(const fl_tensor_header *entries, size_t n, const char *prefix, const fl_t5_params *p,
                        fl_error *err);

/* The bucket of relative position rel = key - query, as the reference computes it. */
int fl_t5_relative_bucket(int rel, int num_buckets, int max_distance);

typedef struct fl_t5_encoder fl_t5_encoder;

int fl_t5_encoder_load(fl_ctx *ctx, const fl_weight_files *w, const fl_t5_params *p, fl_t5_encoder **out,
                       fl_error *err);
void fl_t5_encoder_free(fl_t5_encoder *m);
const fl_t5_params *fl_t5_encoder_params(const fl_t5_encoder *m);

/* Runs ids[0, L) (every id < vocab_size): out [L, d_model], a contiguous device tensor of the
 * storage dtype. */
void fl_t5_encoder_forward(fl_t5_encoder *m, const int32_t *ids, int length, fl_tensor *out);

void fl_t5_encoder_memory(const fl_t5_params *p, int length, fl_device_kind kind, size_t *weight_bytes,
                          size_t *activation_bytes);

#endif
