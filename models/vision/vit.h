/*
 * vit.h — the vision transformers of identity evaluation, built from kernels/ops.h in their
 * checkpoints' own Hugging Face key layouts:
 *
 *   DINOv2 (Dinov2Model; also under a "dinov2." prefix, as Dinov2ForImageClassification has it):
 *     x = [cls_token; patch_embeddings.projection(img) (conv, stride = kernel = patch)] + pos
 *     per layer: x += layer_scale1 * attention.output.dense(attn(norm1(x)))
 *                x += layer_scale2 * mlp.fc2(gelu_erf(mlp.fc1(norm2(x))))
 *                (or the SwiGLU MLP: weights_out(silu(a) * b), [a; b] = weights_in(norm2(x)))
 *     embedding = layernorm(x)[0]                                    (LayerNorm eps 1e-6)
 *   CLIP vision (CLIPVisionModel, ...WithProjection, or the vision side of CLIPModel):
 *     x = pre_layrnorm([class_embedding; patch_embedding(img) (no bias)] + pos)
 *     per layer: x += out_proj(attn(layer_norm1(x))); x += fc2(quick_gelu(fc1(layer_norm2(x))))
 *     embedding = visual_projection(post_layernorm(x[0]))            (LayerNorm eps 1e-5)
 *     (post_layernorm(x[0]) when the file has no visual_projection)
 *
 * Attention is bidirectional softmax attention with biases, scale 1/sqrt(head dim). LayerScale is
 * folded into the projection it scales when the weights are bound (diag(l) W, l * b).
 *
 * Position embeddings: at the native grid (sqrt(positions - 1) patches a side) they are used as
 * stored; at any other grid the patch part is resized as Hugging Face's interpolate_pos_encoding
 * does (torch bicubic, A = -0.75, align_corners=False, indices clamped at the borders, no
 * antialias; the class position unchanged), once per input size, in double precision.
 *
 * Parameters come from the tensors' shapes (head dim 64 unless config.json says otherwise) and
 * from config.json beside the weights (num_attention_heads, layer_norm_eps, hidden_act; a
 * CLIPConfig's vision_config). Weights convert to the context's storage dtype at load;
 * activations live in one arena planned once per input size. A file of another layout is an
 * error naming what is missing or misshaped.
 */
#ifndef FL_MODELS_VISION_VIT_H
#define FL_MODELS_VISION_VIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/context.h"
#include "models/text/weights.h"

typedef enum fl_vit_kind { FL_VIT_DINOV2 = 0, FL_VIT_CLIP } fl_vit_kind;
typedef enum fl_vit_act { FL_VIT_GELU = 0, FL_VIT_QUICK_GELU, FL_VIT_GELU_TANH } fl_vit_act;

#define FL_VIT_PREFIX_MAX 64

typedef struct fl_vit_params {
    fl_vit_kind kind;
    int hidden_size;
    int num_layers;
    int num_heads;
    int intermediate_size; /* MLP width (SwiGLU: the width of each half) */
    int patch_size;
    int num_positions;     /* rows of the position table: 1 + grid^2 */
    int native_size;       /* grid * patch: the image side the table was trained at */
    int projection_dim;    /* CLIP visual_projection rows; 0 without one */
    float layer_norm_eps;
    fl_vit_act act;
    bool swiglu;           /* DINOv2 giant's SwiGLU MLP */
    bool layer_scale;      /* DINOv2 */
} fl_vit_params;

/* Which layout the tensors are in: FL_VIT_DINOV2 or FL_VIT_CLIP with its prefix (copied into
 * prefix[FL_VIT_PREFIX_MAX]), and the parameters from the shapes. A file that is neither is
 * FL_ENOTFOUND naming both anchors. Pure function over names and shapes. */
int fl_vit_detect(const fl_tensor_header *entries, size_t n, fl_vit_params *p, char *prefix, fl_error *err);
/* Overrides p with a config.json (Dinov2Config, CLIPVisionConfig or CLIPConfig's vision_config). */
int fl_vit_apply_config(const char *json, size_t len, fl_vit_params *p, fl_error *err);
int fl_vit_params_validate(const fl_vit_params *p, fl_error *err);

typedef struct fl_vit fl_vit;

/* Binds the weights (p NULL: detected, then config.json beside the weights). */
int fl_vit_load(fl_ctx *ctx, const fl_weight_files *w, const fl_vit_params *p, fl_vit **out, fl_error *err);
void fl_vit_free(fl_vit *m);
const fl_vit_params *fl_vit_get_params(const fl_vit *m);
/* Floats of the embedding: projection_dim when there is a projection, else hidden_size. */
int fl_vit_dim(const fl_vit *m);

/* Runs one image: pixels [3, size, size] planar host floats (already normalized), size a multiple
 * of the patch size in [patch, 4096]; out[fl_vit_dim] host floats (not normalized). */
int fl_vit_forward(fl_vit *m, const float *pixels, int size, float *out, fl_error *err);
/* The same, also giving the final-norm hidden states [1 + (size/patch)^2, hidden] (DINOv2:
 * last_hidden_state; CLIP: the encoder output before post_layernorm). hidden may be NULL. */
int fl_vit_forward_hidden(fl_vit *m, const float *pixels, int size, float *out, float *hidden, fl_error *err);

/* The position table resized from an in_grid x in_grid patch grid to out_grid x out_grid, as
 * torch's bicubic interpolate(size=...) does: src [in_grid^2, dim] -> dst [out_grid^2, dim]. */
void fl_vit_interpolate_positions(const float *src, int in_grid, int dim, int out_grid, float *dst);

#endif
