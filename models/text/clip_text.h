/*
 * clip_text.h — the CLIP text encoder (Hugging Face CLIPTextModel; FLUX uses CLIP-L/14's), built
 * from kernels/ops.h in the checkpoint's own key layout (text_model.*).
 *
 *   x = token_embedding[ids] + position_embedding[0 .. L)
 *   per layer: x += out_proj(attention(layer_norm1(x)))   causal, scale 1/sqrt(head_dim), biases
 *              x += fc2(act(fc1(layer_norm2(x))))          act: quick_gelu x*sigmoid(1.702x) or gelu
 *   hidden = final_layer_norm(x); pooled = hidden[the first position holding the largest id]
 *
 * The pooled row is where the references pool with the legacy eos_token_id (FLUX's CLIP-L): the
 * first end-of-text token, since <|endoftext|> has the largest id and pads repeat it. The
 * projection (text_projection) is not part of this output and is ignored when present.
 *
 * Parameters come from the tensors' shapes (head dim 64 unless a config.json says otherwise) and
 * from config.json when the weights have one. Weights convert to the context's storage dtype;
 * activations live in one arena planned once per sequence length.
 */
#ifndef FL_MODELS_TEXT_CLIP_TEXT_H
#define FL_MODELS_TEXT_CLIP_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/context.h"
#include "models/family.h"
#include "models/text/weights.h"

#define FL_TEXT_NAME_MAX 128
#define FL_TEXT_PREFIX_MAX 128

typedef enum fl_text_act { FL_TEXT_ACT_QUICK_GELU = 0, FL_TEXT_ACT_GELU, FL_TEXT_ACT_GELU_TANH } fl_text_act;

typedef struct fl_clip_params {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_layers;
    int num_heads;
    int max_positions;
    float layer_norm_eps; /* 1e-5 */
    fl_text_act act;      /* quick_gelu for CLIP-L */
} fl_clip_params;

/* One tensor a text encoder binds: its key (without prefix) and shape. */
typedef struct fl_text_param_decl {
    char name[FL_TEXT_NAME_MAX];
    int ndim;
    int64_t shape[2];
} fl_text_param_decl;

/* Every tensor of the checkpoint for p, in the Hugging Face order. Returns the count; fills decls
 * when not NULL. */
size_t fl_clip_param_decls(const fl_clip_params *p, fl_text_param_decl *decls);
/* Positive sizes, hidden divisible by heads. */
int fl_clip_params_validate(const fl_clip_params *p, fl_error *err);
/* Finds the CLIP text tensors among entries (prefix: whatever precedes
 * "text_model.embeddings.token_embedding.weight", copied into prefix[FL_TEXT_PREFIX_MAX]) and
 * infers p from their shapes. */
int fl_clip_params_infer(const fl_tensor_header *entries, size_t n, fl_clip_params *p, char *prefix,
                         fl_error *err);
/* Overrides p with the fields of a Hugging Face CLIPTextConfig config.json (num_attention_heads,
 * hidden_act, layer_norm_eps, ...; a full CLIPConfig's text_config too). */
int fl_clip_params_apply_config(const char *json, size_t len, fl_clip_params *p, fl_error *err);
/* Every tensor p needs is present under prefix with its shape; the error names the first one
 * missing or misshaped. Other tensors are ignored. */
int fl_clip_check_entries(const fl_tensor_header *entries, size_t n, const char *prefix, const fl_clip_params *p,
                          fl_error *err);

typedef struct fl_clip_text fl_clip_text;

/* Binds the weights (p NULL: inferred, then config.json beside the weights when there is one). */
int fl_clip_text_load(fl_ctx *ctx, const fl_weight_files *w, const fl_clip_params *p, fl_clip_text **out,
                      fl_error *err);
void fl_clip_text_free(fl_clip_text *m);
const fl_clip_params *fl_clip_text_params(const fl_clip_text *m);

/* Runs ids[0, L) (1 <= L <= max_positions; every id < vocab_size): hidden [L, hidden_size]
 * (may be NULL) and pooled [hidden_size] (may be NULL), contiguous device tensors of the storage
 * dtype. */
void fl_clip_text_forward(fl_clip_text *m, const int32_t *ids, int length, fl_tensor *hidden, fl_tensor *pooled);

/* Memory on a device of kind `kind` (storage dtype F32 on the CPU, BF16 on CUDA), from p alone:
 * the weights, and the activation arena of one forward of `length` tokens (planning mode). */
void fl_clip_text_memory(const fl_clip_params *p, int length, fl_device_kind kind, size_t *weight_bytes,
                         size_t *activation_bytes);

#endif
