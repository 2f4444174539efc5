/*
 * flux.h — the Flux.1 transformer (BFL checkpoint layout) built from kernels/ops.h: parameters,
 * weight binding by the original key names, forward, and backward for LoRA training (gradients
 * of the trainable adapter's A and B) or for full training (gradients of every base weight).
 *
 * One code path serves every size: the tiny test configurations, the embedded default model,
 * and the real FLUX.1-dev / schnell shapes. Weights are [out, in] row-major as in the checkpoint.
 *
 * Memory: weights are uploaded once in the context's storage dtype (F32 on the CPU). Activations
 * live in one arena planned per input shape: the first call with a new (batch, image tokens,
 * text tokens, mode) runs the whole step in planning mode to measure it, grows the arena if it
 * needs more (it never shrinks), and later calls with a shape measured before allocate and plan
 * nothing. Every-row steps (training, and forwards without a per-sample selection) save each
 * adapter's x A^T, so attaching or detaching adapters makes them plan again; the per-sample
 * forward does not depend on which adapters are attached or selected: it plans one scratch of
 * [rows, largest rank attached so far] per Linear, which every adapter's x A^T reuses in turn,
 * so serving adapters that are already attached never plans (fl_flux_plan_count counts plans).
 *
 * LoRA: each Linear carries up to FL_FLUX_MAX_ATTACHED adapters, y += scale * (x A^T) B^T, with
 * scale = multiplier * alpha / rank folded in at attach time; one sample applies up to
 * FL_FLUX_MAX_ADAPTERS of them. At most one adapter is trainable;
 * its A and B live in one flat f32 parameter buffer (and one gradient buffer) so the optimizer
 * updates all of them in one call. With 16-bit storage (CUDA) the f32 buffer holds the master
 * weights and the products read a 16-bit copy of it that every forward casts afresh; gradients
 * stay f32 (kernels/ops.h, fl_op_gemm: mixed precision).
 *
 * Per-sample adapters (serving many tenants in one batch): by default every attached adapter
 * applies to every row. fl_flux_set_sample_adapters instead gives each sample of a batch its own
 * list of attached sets and multipliers, applied only to that sample's rows (its row segment: of
 * a Linear's M input rows, sample b owns rows [b*M/B, (b+1)*M/B) — its image, text or joint
 * tokens, or its one conditioning row). Each sample's output is bitwise the output it gets alone:
 * a BLAS GEMM's rows are not invariant to M (OpenBLAS switches kernels with the problem size, so
 * a row's rounding changes with its batch), so every forward (training too) computes its base products
 * with the batch-invariant linear (kernels/ops.h, fl_op_linear_rows: a row's bits do not depend on
 * the other rows of the call) — one product for the whole batch — and each sample's adapters on
 * its segment with exactly the shapes a batch of one would use. On a backend without that linear
 * (CUDA for now) the base product too runs once per segment, B smaller GEMMs per Linear instead of
 * one. Every other op of the forward is computed per row, per sample or per (sample, head).
 */
#ifndef FL_MODELS_FLUX_H
#define FL_MODELS_FLUX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "kernels/context.h"

#define FL_FLUX_MAX_AXES 4
#define FL_FLUX_MAX_ADAPTERS 16 /* adapters one sample applies */
#define FL_FLUX_MAX_ATTACHED 64 /* adapters attached to one Linear at a time (resident sets) */
#define FL_FLUX_NAME_MAX 96

/* The fields of the reference FluxParams. */
typedef struct fl_flux_params {
    int in_channels;
    int out_channels;
    int vec_in_dim;
    int context_in_dim;
    int hidden_size;
    double mlp_ratio;
    int num_heads;
    int depth;
    int depth_single_blocks;
    int axes_dim[FL_FLUX_MAX_AXES];
    int n_axes;
    int theta;
    bool qkv_bias;
    bool guidance_embed;
} fl_flux_params;

/* Parse a JSON object with the FluxParams fields (all required). Errors name the field. */
int fl_flux_params_from_json(const char *json_text, fl_flux_params *out, fl_error *err);
/* Consistency: positive sizes, hidden divisible by heads, sum(axes_dim) == head dim, even axes. */
int fl_flux_params_validate(const fl_flux_params *p, fl_error *err);
/* JSON text of p (malloc'ed). */
char *fl_flux_params_to_json(const fl_flux_params *p);
int fl_flux_mlp_hidden(const fl_flux_params *p); /* int(hidden_size * mlp_ratio) as Python computes it */
int fl_flux_head_dim(const fl_flux_params *p);
/* The pixel image space: each token packs a p x p patch of RGB pixels (in_channels = out_channels
 * = 3 p^2). Returns p, or 0 when the model does not work in pixels. */
int fl_flux_pixel_patch(const fl_flux_params *p);

/* ---- the parameter list --------------------------------------------------------------------- */

/* A tensor the model binds: its key in the original checkpoint and its shape. */
typedef struct fl_flux_param_decl {
    char name[FL_FLUX_NAME_MAX];
    int ndim;
    int64_t shape[2];
} fl_flux_param_decl;

/* Every tensor of the checkpoint for p, in a fixed order. Returns the count; fills decls when
 * it is not NULL (call once with NULL to size the array). */
size_t fl_flux_param_decls(const fl_flux_params *p, fl_flux_param_decl *decls);

/* One nn.Linear of the checkpoint: its module path ("double_blocks.0.img_attn.qkv") and shape. */
typedef struct fl_flux_linear_decl {
    char name[FL_FLUX_NAME_MAX];
    int64_t in, out;
} fl_flux_linear_decl;
/* Every Linear for p (its 2-D ".weight" tensors), in checkpoint order: the table the model builds
 * and adapters are checked against. Returns the count; fills decls when it is not NULL. */
size_t fl_flux_linear_decls(const fl_flux_params *p, fl_flux_linear_decl *decls);

/* ---- the model -------------------------------------------------------------------------------- */

typedef struct fl_flux_adapter {
    fl_tensor a;  /* [rank, in] */
    fl_tensor b;  /* [out, rank] */
    float scale;  /* multiplier * alpha / rank */
    int set_id;   /* which fl_flux_add_adapter call attached it */
} fl_flux_adapter;

/* One nn.Linear of the model. */
typedef struct fl_flux_linear {
    char name[FL_FLUX_NAME_MAX]; /* module path, e.g. "double_blocks.0.img_attn.qkv" */
    int64_t in, out;
    fl_tensor weight; /* [out, in] */
    fl_tensor bias;   /* [out]; data NULL when the layer has none */
    int n_adapters;
    fl_flux_adapter adapters[FL_FLUX_MAX_ATTACHED];
    int trainable;             /* index into adapters of the trainable one, or -1 */
    fl_tensor grad_a, grad_b;  /* gradients of the trainable adapter (views into the flat buffer) */
    fl_tensor grad_weight, grad_bias; /* full training only */
    /* Saved by the forward for the backward (views into the activation arena). */
    fl_tensor saved_x;
    fl_tensor saved_h[FL_FLUX_MAX_ATTACHED];
} fl_flux_linear;

typedef struct fl_flux_model fl_flux_model;

/* The parameters of an open checkpoint: its "flux_params" metadata when present, else inferred
 * from its shapes (models/family.h); validated. */
int fl_flux_params_of_checkpoint(const fl_safetensors *st, fl_flux_params *out, fl_error *err);

/* Build a model with parameters p on ctx's device, binding weights from a safetensors file.
 * path may be a file, an index of shards or a folder (models/weights.h); keys may carry the
 * "model.diffusion_model." prefix, and a diffusers transformer is read under the original names.
 * Every expected tensor must be present with its exact shape (the error names the first one
 * missing or misshaped); F32, BF16, F16 and F8 are converted to the context's storage dtype. If p is NULL the parameters come from the file's
 * "flux_params" metadata, else are inferred from its shapes (models/family.h). */
int fl_flux_load(fl_ctx *ctx, const char *path, const fl_flux_params *p, fl_flux_model **out, fl_error *err);
/* The same from a component already open (models/weights.h) whose tensors carry the original names
 * without prefix; any float dtype (F8 included) is converted to the storage dtype. p is required. */
struct fl_weights;
int fl_flux_load_weights(fl_ctx *ctx, const struct fl_weights *w, const fl_flux_params *p, fl_flux_model **out,
                         fl_error *err);
/* Opens a transformer's weights as fl_flux_load does: a file, an index of shards or a folder; the
 * "model.diffusion_model." prefix is removed and a diffusers FluxTransformer2DModel is mapped onto
 * the original names (models/weights.h). */
int fl_flux_open_weights(const char *path, struct fl_weights **out, fl_error *err);
/* Parameters of open weights: their "flux_params" metadata, else inferred from the shapes. */
int fl_flux_params_of_weights(const struct fl_weights *w, fl_flux_params *out, fl_error *err);
/* A model with freshly initialized weights (normal, std 1/sqrt(in); zero biases; unit norm
 * scales), for pretraining and benchmarks. */
fl_flux_model *fl_flux_create_random(fl_ctx *ctx, const fl_flux_params *p, uint64_t seed);
/* A model whose weights are allocated on the device but not written (their contents are
 * undefined), for benchmarks at real shapes that fill them on the device through
 * fl_flux_param_at. */
fl_flux_model *fl_flux_create_empty(fl_ctx *ctx, const fl_flux_params *p);
void fl_flux_free(fl_flux_model *m);

const fl_flux_params *fl_flux_get_params(const fl_flux_model *m);
/* Whether the model was trained with caption dropout, so that classifier-free guidance works on
 * it (models/sampler.h). fl_flux_load sets it from the file's "caption_dropout" metadata (> 0);
 * models made in memory start without it. */
bool fl_flux_cfg_capable(const fl_flux_model *m);
void fl_flux_set_cfg_capable(fl_flux_model *m, bool capable);
fl_ctx *fl_flux_get_ctx(const fl_flux_model *m);
/* All Linears in checkpoint order. */
size_t fl_flux_linear_count(const fl_flux_model *m);
fl_flux_linear *fl_flux_linear_at(fl_flux_model *m, size_t i);
fl_flux_linear *fl_flux_find_linear(fl_flux_model *m, const char *module_path);
/* Every parameter tensor with its checkpoint key, in the order of fl_flux_param_decls. */
size_t fl_flux_param_count(const fl_flux_model *m);
void fl_flux_param_at(fl_flux_model *m, size_t i, const char **name, fl_tensor **value, fl_tensor **grad);

/* ---- adapters ------------------------------------------------------------------------------ */

/* One adapter's matrices for one Linear, as host f32 arrays. */
typedef struct fl_flux_lora_pair {
    const char *module; /* module path */
    int64_t rank;
    const float *a; /* [rank, in] */
    const float *b; /* [out, rank] */
    float alpha;
} fl_flux_lora_pair;

/* Attach an adapter given as pairs, with scale multiplier * alpha / rank per pair. Fails naming
 * the first pair whose module is unknown or whose shapes disagree with the Linear (FL_EINVAL),
 * on a Linear that already carries FL_FLUX_MAX_ATTACHED adapters (FL_ELIMIT), or when the
 * device has no memory for the matrices (FL_ENOMEM); the model is unchanged then. With
 * trainable set, the matrices are copied into the flat parameter buffer (fl_flux_trainable_*)
 * and gradients are computed for them; only one trainable adapter may exist. Returns the set
 * id (>= 0; ids are never reused by a model) or -1. */
int fl_flux_add_adapter(fl_flux_model *m, const fl_flux_lora_pair *pairs, size_t n, float multiplier, bool trainable,
                        fl_error *err);
/* Target selection by name. spec is a named set —
 *   "all"           every Linear inside the blocks: attention, MLP, single-block linears, modulation
 *   "attention"     double-block qkv and proj, single-block linear1
 *   "no_modulation" "all" without the modulation Linears
 * — or a POSIX extended regular expression matched against module paths (e.g.
 * ^single_blocks\.(3[0-7])\.linear[12]$ ). Fills selected[i] for Linear i (checkpoint order) and
 * returns how many were selected; a bad expression or an empty selection is an error. */
int fl_flux_select_targets(fl_flux_model *m, const char *spec, bool *selected, fl_error *err);

/* A fresh trainable adapter on the selected targets: A ~ U(-1/sqrt(in), 1/sqrt(in)) (the PEFT
 * default), B = 0, scale alpha / rank. Returns the set id or -1. */
int fl_flux_add_trainable_lora(fl_flux_model *m, const char *spec, int rank, float alpha, uint64_t seed,
                               fl_error *err);

/* Device bytes the matrices of an adapter given as pairs take once attached (frozen, in the
 * storage dtype), without attaching it; pairs are not checked. */
size_t fl_flux_adapter_device_bytes(const fl_flux_model *m, const fl_flux_lora_pair *pairs, size_t n);
/* Whether set_id is attached now. */
bool fl_flux_adapter_attached(const fl_flux_model *m, int set_id);
/* Detach every adapter. */
void fl_flux_clear_adapters(fl_flux_model *m);
/* Detach one set (as returned by fl_flux_add_adapter or fl_flux_add_trainable_lora) from every
 * Linear and free its memory; the other sets keep their ids and order. An unknown id is
 * FL_EINVAL. A per-sample selection still naming the set fails at the next forward. */
int fl_flux_remove_adapter(fl_flux_model *m, int set_id, fl_error *err);

/* The adapters of one sample: attached set ids, each applied with scale = (its attach-time
 * scale) * multipliers[i], in the listed order. n == 0 is the base model. A set that does not
 * adapt some Linear simply contributes nothing there; a zero multiplier skips the set. */
typedef struct fl_flux_sample_adapters {
    int n;
    int set_ids[FL_FLUX_MAX_ADAPTERS];
    float multipliers[FL_FLUX_MAX_ADAPTERS];
} fl_flux_sample_adapters;

/* Per-sample adapters for the following forwards: per_sample[b] applies to sample b's rows only
 * (copied; need not outlive the call). Forwards must then have exactly `batch` samples (another
 * batch size is FL_EINVAL), and fl_flux_loss_and_grads refuses to run (training uses the
 * every-row mode). Fails with FL_EINVAL, leaving the previous selection, for batch < 1, n outside
 * [0, FL_FLUX_MAX_ADAPTERS], a set id not attached, or a non-finite multiplier. */
int fl_flux_set_sample_adapters(fl_flux_model *m, int batch, const fl_flux_sample_adapters *per_sample,
                                fl_error *err);
/* Back to the default: every attached adapter on every row. */
void fl_flux_clear_sample_adapters(fl_flux_model *m);
/* The batch size of the per-sample selection in effect, or 0 when there is none. */
int fl_flux_sample_adapters_batch(const fl_flux_model *m);

/* The trainable adapter's flat parameter and gradient buffers (f32, equal length); NULL data
 * when there is none. */
fl_tensor fl_flux_trainable_params(fl_flux_model *m);
fl_tensor fl_flux_trainable_grads(fl_flux_model *m);

/* Full-training mode: allocate (once) and use gradients for every base parameter. */
void fl_flux_enable_full_grads(fl_flux_model *m);
/* Zero every gradient buffer in use (trainable adapter and, in full mode, base weights). */
void fl_flux_zero_grads(fl_flux_model *m);

/* ---- running ------------------------------------------------------------------------------- */

/* Inputs of one forward, shapes as in the reference: img [B, Li, in_channels], txt [B, Lt,
 * context_in_dim], y [B, vec_in_dim] in the storage dtype on the model's device; timesteps and
 * guidance [B] f32 on the device (guidance only with guidance_embed); ids as host f32 arrays
 * [B, Li, n_axes] and [B, Lt, n_axes] (the rotary table is computed on the host in double). */
typedef struct fl_flux_inputs {
    const fl_tensor *img;
    const fl_tensor *txt;
    const fl_tensor *y;
    const fl_tensor *timesteps;
    const fl_tensor *guidance;
    const float *img_ids;
    const float *txt_ids;
} fl_flux_inputs;

/* Checks the inputs' shapes against the model (bad shapes are caller input: an error, not an
 * abort). */
int fl_flux_check_inputs(const fl_flux_model *m, const fl_flux_inputs *in, fl_error *err);

/* Forward: *out receives a view [B, Li, out_channels] valid until the next call on m. With
 * per-sample adapters set, B must equal their batch size. When the device has no memory for the
 * step's activations it fails with FL_ENOMEM (the model stays usable; so does the training step
 * below). */
int fl_flux_forward(fl_flux_model *m, const fl_flux_inputs *in, fl_tensor *out, fl_error *err);

/* One flow-matching training step's loss and gradients: x_t = (1 - t) x0 + t noise with
 * timesteps t, loss = mean((model(x_t) - (noise - x0))^2). x0 and noise are [B, Li, in_channels];
 * in->img is ignored (x_t is used) and in->timesteps is t. Gradients are accumulated into the
 * trainable adapter's buffer (and base gradients in full mode); call fl_flux_zero_grads first.
 * Fails (FL_EINVAL) while per-sample adapters are set. */
int fl_flux_loss_and_grads(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise,
                           double *loss, fl_error *err);

/* Bytes of the activation arena: the largest plan so far (it grows, never shrinks). */
size_t fl_flux_activation_bytes(const fl_flux_model *m);
/* How many times a step was run in planning mode to measure the arena (one per new shape, mode,
 * and for every-row steps adapter change; a per-sample forward also plans again after an
 * adapter of a rank larger than any before is attached). */
uint64_t fl_flux_plan_count(const fl_flux_model *m);

/* ---- memory, before any is allocated -------------------------------------------------------- */

/* One step of a job, as far as its memory depends on it. */
typedef struct fl_flux_job_shape {
    fl_device_kind device; /* the workers' device kind: its storage dtype (F32 CPU, BF16 CUDA) */
    int batch;             /* samples per step: the images of a generation batch, a training batch */
    int64_t image_tokens;  /* per sample */
    int64_t text_tokens;   /* per sample */
    bool training;         /* a LoRA training step (forward and backward) instead of a forward */
    int lora_rank;         /* training: the trainable adapter's rank */
    const char *targets;   /* training: target set or regular expression (NULL: "all") */
    int n_adapters;        /* generation: adapters applied per sample (per-sample mode) */
    int adapter_rank;      /* generation: their largest rank */
    int64_t adapter_params; /* generation: elements of their A and B matrices, all together */
    int threads;           /* CPU threads the step runs on (their scratch; 0: one) */
} fl_flux_job_shape;

/* Bytes on the model's device (on the CPU, of host memory). */
typedef struct fl_flux_memory {
    size_t weights;     /* the base model in the storage dtype */
    size_t adapters;    /* training: the trainable adapter and its gradients (f32) and, with 16-bit
                         * storage, the 16-bit copy of its weights the products read; generation:
                         * the frozen adapters' matrices in the storage dtype */
    size_t optimizer;   /* training: AdamW moments (f32) */
    size_t activations; /* the step's activation arena, measured in planning mode */
    size_t inputs;      /* the step's input tensors and the kernels' scratch outside the arena */
    size_t total;
    uint64_t flops;     /* the step's matrix FLOPs as its ops count them (kernels/context.h) */
} fl_flux_memory;

/* The memory a step of shape s takes on a model with parameters p, found without allocating any
 * of it: a skeleton model (shapes, no storage) runs the step in planning mode against a measuring
 * arena, as the real step plans its arena. Fails with FL_EINVAL for out-of-range shapes and for
 * training targets that are not a target set or a valid expression, or select no Linear (the
 * message names the targets as fl_flux_select_targets does). Cheap: no weights, no data. */
int fl_flux_estimate_memory(const fl_flux_params *p, const fl_flux_job_shape *s, fl_flux_memory *out,
                            fl_error *err);

#endif
