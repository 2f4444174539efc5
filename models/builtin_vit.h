/*
 * builtin_vit.h — the built-in image encoder: a small Vision Transformer trained by the project
 * itself (self-supervised, on the packaged clip art and emoji), shipped with the repository so
 * identity evaluation works without downloading anything.
 *
 * Architecture (a plain pre-norm ViT, chosen from what the kernels already provide):
 *   image [S, S, 3] in [0, 1] -> 2x - 1 -> P x P patches -> linear patch embedding (D)
 *   -> [CLS; patches] + learned positions -> depth x block -> LayerNorm -> CLS row (D)
 *   block: x += proj(attention(LN1(x)));  x += fc2(GELU-tanh(fc1(LN2(x))))
 * LayerNorm has an affine weight and bias, eps 1e-6; attention is multi-head softmax attention
 * with a fused qkv Linear (bias), scale 1/sqrt(head dim), no mask. The embedding is the CLS row
 * after the final LayerNorm, L2-normalized by callers that compare embeddings.
 *
 * Training adds a projection head (Linear D -> head_hidden, GELU-tanh, Linear -> head_out) whose
 * output feeds the contrastive loss (trainer/encoder_pretrain.h); the head is not part of the
 * shipped encoder and is ignored at load when present.
 *
 * File layout (safetensors; weights [out, in] as PyTorch): patch_embed.{weight [D, 3, P, P],
 * bias}, cls_token [1, 1, D], pos_embed [1, 1 + (S/P)^2, D], blocks.{i}.norm1.{weight,bias},
 * blocks.{i}.attn.qkv.{weight [3D, D], bias}, blocks.{i}.attn.proj.{weight, bias},
 * blocks.{i}.norm2.{weight,bias}, blocks.{i}.mlp.fc1.{weight [M, D], bias},
 * blocks.{i}.mlp.fc2.{weight [D, M], bias}, norm.{weight,bias}; optionally head.fc1.*, head.fc2.*.
 * Metadata "format" = "flashlora-builtin-vit" with image_size, patch_size, heads; the other sizes
 * follow from the shapes. F32, BF16 and F16 tensors are accepted. A file of another layout
 * (missing or misshapen tensors, absurd sizes) is FL_EINVAL naming what is wrong.
 *
 * Memory: the model keeps its weights on the context's device, and activations for the largest
 * batch seen (forward-only batches reuse one layer's buffers; training keeps every layer's).
 */
#ifndef FL_MODELS_BUILTIN_VIT_H
#define FL_MODELS_BUILTIN_VIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/context.h"

#define FL_BVIT_FORMAT "flashlora-builtin-vit"
#define FL_BVIT_EPS 1e-6f
/* Where the shipped encoder lives in the project's data (see fl_bvit_default_path). */
#define FL_BVIT_DEFAULT_REL "models/builtin_encoder/flashlora-vit.safetensors"

typedef struct fl_bvit_config {
    int image_size;  /* S: input side in pixels */
    int patch;       /* P: divides S */
    int dim;         /* D: divisible by heads */
    int depth;
    int heads;
    int mlp_hidden;  /* M */
    int head_hidden; /* projection head's hidden width; 0: no head */
    int head_out;    /* projection head's output width */
} fl_bvit_config;

/* The shipped encoder's configuration: 64 px, patch 8, D 128, 6 blocks of 4 heads, MLP 512,
 * projection head 512 -> 128 (1.2 M encoder parameters, 2.4 MB in bf16). */
fl_bvit_config fl_bvit_config_default(void);
/* Every size positive and consistent, and small enough for a built-in encoder (S <= 512,
 * D <= 2048, depth <= 48). */
int fl_bvit_config_validate(const fl_bvit_config *c, fl_error *err);
/* Parameters of the encoder (without the head) and of the head. */
int64_t fl_bvit_param_count(const fl_bvit_config *c, bool with_head);

typedef struct fl_bvit fl_bvit;

/* A model with freshly initialized weights (truncated-normal-like std 0.02 for weights and
 * positions, zero biases, unit norm weights), deterministic for a seed. */
fl_bvit *fl_bvit_create(fl_ctx *ctx, const fl_bvit_config *c, uint64_t seed);
/* Loads a file in the layout above. */
int fl_bvit_load(fl_ctx *ctx, const char *path, fl_bvit **out, fl_error *err);
void fl_bvit_free(fl_bvit *m);

const fl_bvit_config *fl_bvit_get_config(const fl_bvit *m);
fl_ctx *fl_bvit_get_ctx(const fl_bvit *m);
/* sha256 (hex) of the loaded file's bytes; "" for a created model. */
const char *fl_bvit_file_sha256(const fl_bvit *m);

/* Saves the weights (head included when the model has one) as dtype F32 or BF16, with metadata
 * (format, sizes, and the extra key/value pairs given). Atomic. */
int fl_bvit_save(const fl_bvit *m, const char *path, bool bf16, const char *const *extra_kv, size_t n_extra,
                 fl_error *err);

/* Copies every parameter of dst from the parameter of src with the same name and shape (an
 * encoder from a trained model with its head, say). FL_EINVAL names one that src lacks. */
int fl_bvit_copy_weights(fl_bvit *dst, const fl_bvit *src, fl_error *err);

/* Embeds n images given as [n, S, S, 3] floats in [0, 1] (already S x S): out gets [n, D], the CLS
 * rows after the final LayerNorm (not normalized). Runs in batches of at most 64. */
int fl_bvit_embed(fl_bvit *m, const float *images, int n, float *out, fl_error *err);

/* ---- training (trainer/encoder_pretrain.c; CPU f32 contexts only) ---------------------------- */

/* The flat parameter and gradient buffers (f32, equal length). Parameters are laid out with the
 * matrices that take weight decay first: [0, n_decay) are decayed, the rest (biases, norms,
 * class token, positions) are not. fl_bvit_train_step's gradients overwrite grads. */
fl_tensor fl_bvit_params(fl_bvit *m);
fl_tensor fl_bvit_grads(fl_bvit *m);
int64_t fl_bvit_decay_count(const fl_bvit *m);

/* Forward with the projection head on n images ([n, S, S, 3] in [0, 1]), keeping every
 * activation for the backward: z gets [n, head_out] (host). The model must have a head. */
void fl_bvit_forward_train(fl_bvit *m, const float *images, int n, float *z);
/* Backward of the last fl_bvit_forward_train given dz [n, head_out] (host): overwrites the
 * gradients of every parameter. */
void fl_bvit_backward(fl_bvit *m, const float *dz);

/* The contrastive (NT-Xent / InfoNCE) loss over 2n projections: rows i and i + n of z [2n, k]
 * are two views of one image. Each row is L2-normalized, similarities divided by temperature,
 * and each row's cross-entropy of its partner against every other row (itself excluded) is
 * averaged over the 2n rows. Returns the loss; dz (may be NULL) gets its gradient. Also reports
 * the fraction of rows whose most similar other row is their partner (top-1, may be NULL). */
double fl_bvit_ntxent(const float *z, int n, int k, float temperature, float *dz, double *top1);

#endif
