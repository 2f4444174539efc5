/*
 * flux_internal.h — the layout of fl_flux_model shared by the files of models/ (not a public
 * header): the Linears and norm scales of each block, the parameter table, and the activations
 * one step saves for its backward.
 */
#ifndef FL_MODELS_FLUX_INTERNAL_H
#define FL_MODELS_FLUX_INTERNAL_H

#include "models/flux.h"

/* One stream (img or txt) of a double block. */
typedef struct flux_stream {
    fl_flux_linear *mod, *qkv, *proj, *mlp0, *mlp2;
    fl_tensor *q_scale, *k_scale; /* [head_dim] */
    fl_tensor *q_scale_grad, *k_scale_grad;
} flux_stream;

enum { FLUX_IMG = 0, FLUX_TXT = 1 };

typedef struct flux_double {
    flux_stream s[2]; /* FLUX_IMG, FLUX_TXT */
} flux_double;

typedef struct flux_single {
    fl_flux_linear *linear1, *linear2, *mod;
    fl_tensor *q_scale, *k_scale;
    fl_tensor *q_scale_grad, *k_scale_grad;
} flux_single;

/* Activations of one stream of a double block. */
typedef struct stream_acts {
    fl_tensor x_in, mod;           /* block input [B, Ls, H]; modulation [B, 6H] */
    fl_tensor xm1, mean1, rstd1;   /* modulated norm before attention */
    fl_tensor qkv;                 /* [B, Ls, 3H] */
    fl_tensor q, k, rstd_q, rstd_k; /* [B, heads, Ls, D] before the q/k norm, and its statistics */
    fl_tensor attn, proj, x1;      /* attention output [B, Ls, H], its projection, first residual */
    fl_tensor xm2, mean2, rstd2;   /* modulated norm before the MLP */
    fl_tensor h, g, m, x_out;      /* MLP pre-activation, GELU, output; block output */
} stream_acts;

typedef struct double_acts {
    stream_acts s[2];
    fl_tensor q, k, v, o, lse; /* joint [B, heads, Lt + Li, D] over [txt; img], after RoPE */
} double_acts;

typedef struct single_acts {
    fl_tensor x_in, mod, xm, mean, rstd;
    fl_tensor y1;                   /* linear1 output [B, L, 3H + M] */
    fl_tensor q, k, rstd_q, rstd_k; /* [B, heads, L, D] before the q/k norm */
    fl_tensor qr, kr, v, o, lse;    /* attention operands after norm and RoPE, output */
    fl_tensor cat;                  /* [B, L, H + M] = [attention; GELU(mlp)] */
    fl_tensor y2, x_out;
} single_acts;

typedef struct flux_acts {
    int64_t batch, li, lt;
    fl_tensor temb, gemb, time_h, guid_h, vec_h; /* embedder pre-activations */
    fl_tensor time_hs, guid_hs, vec_hs;          /* after SiLU */
    fl_tensor time_out, guid_out, vecy_out;      /* embedder outputs */
    fl_tensor vec, vec_silu;                     /* [B, H] conditioning and SiLU(vec) */
    fl_tensor img_h, txt_h;                      /* embedded streams */
    fl_tensor pe, pe_img, pe_txt;                /* rotary tables [B, L, D/2, 2] */
    double_acts *dbl;
    single_acts *sgl;
    fl_tensor x_img;                  /* image tokens after the single blocks [B, Li, H] */
    fl_tensor final_mod, xf, meanf, rstdf;
    fl_tensor out;                    /* [B, Li, out_channels] */
    fl_tensor xt, target, dpred;      /* training only */
} flux_acts;

/* What a measured plan was measured for: the arena (grow-only) fits every later step with the
 * same key. mode 1: forward applying every attached adapter to every row; 2: training step;
 * 3: forward with per-sample adapters. stamp: modes 1 and 2, adapters_version (they save every
 * adapter's x A^T); mode 3, rank_reserve (its only adapter-dependent memory is the scratch). */
typedef struct flux_plan_key {
    int mode;
    int64_t batch, li, lt;
    uint64_t stamp;
} flux_plan_key;

#define FLUX_PLAN_KEYS 16

/* One fl_flux_add_adapter call. */
typedef struct flux_adapter_set {
    int set_id;
    bool trainable;
    void *memory; /* frozen sets: their A and B matrices on the device */
} flux_adapter_set;

struct fl_flux_model {
    fl_ctx *ctx;
    fl_flux_params p;
    fl_dtype dtype; /* storage dtype of weights and activations */
    bool cfg_capable; /* trained with caption dropout: the sampler may apply classifier-free guidance */

    fl_flux_linear *linears;
    size_t n_linears;
    fl_flux_linear *img_in, *txt_in, *time_in[2], *vector_in[2], *guidance_in[2], *final_linear, *final_mod;
    flux_double *dbl;
    flux_single *sgl;

    /* Parameter table in fl_flux_param_decls order. */
    size_t n_params;
    fl_flux_param_decl *decls;
    fl_tensor **values; /* points at a linear's weight/bias or at norm_scales[i] */
    fl_tensor **grads;  /* same places for gradients (full mode) */
    fl_tensor *norm_scales, *norm_scale_grads; /* storage for the q/k norm scales */
    size_t n_norm_scales;
    void *weight_memory;

    bool full_grads;
    void *grad_memory;

    /* Trainable adapter: flat f32 parameters (the master weights) and gradients. With a 16-bit
     * storage dtype (CUDA) its A and B matrices are views of train_shadow_memory instead, a copy
     * of the master weights in that dtype which every forward refreshes first (kernels/ops.h,
     * fl_op_gemm: mixed precision); train_shadow says so. */
    void *train_param_memory, *train_grad_memory, *train_shadow_memory;
    int64_t n_train;
    bool train_shadow;
    /* Attached adapter sets in attach order (the trainable one has no entry memory: it lives in
     * train_param_memory). */
    flux_adapter_set *sets;
    size_t n_sets;
    int next_set_id;

    /* Per-sample adapter selection (fl_flux_set_sample_adapters); sample_batch 0 = none. */
    int sample_batch;
    fl_flux_sample_adapters *sample_sel;
    bool per_sample; /* the running step uses the selection (set by each entry point) */
    bool inference;  /* the running forward has no backward after it: each block's activations are
                      * released once its output is kept (set by each entry point) */

    /* Activation arena, planned per shape. */
    fl_arena arena;
    void *arena_memory;
    size_t arena_bytes;
    flux_plan_key plans[FLUX_PLAN_KEYS]; /* the keys measured so far, most recent first */
    int n_plans;
    uint64_t plan_count;       /* planning runs (fl_flux_plan_count) */
    uint64_t adapters_version; /* bumped by whatever changes the every-row steps' allocations */
    int64_t rank_reserve;      /* columns of the per-sample scratch: largest rank attached so far */
    flux_acts acts;
};

/* flux_step.c: run the forward (and in training the backward) against m->arena. With
 * m->per_sample the forward applies m->sample_sel segment by segment (no backward then). */
void flux_run_forward(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *img);
void flux_run_backward(fl_flux_model *m);

/* flux_model.c: the structure of a model with parameters p on ctx (Linears, blocks, parameter
 * table) and no memory for anything: what flux_estimate.c plans against. */
fl_flux_model *flux_model_skeleton(fl_ctx *ctx, const fl_flux_params *p);
/* flux_model.c: casts the trainable adapter's f32 master weights into the storage-dtype copy the
 * products read (nothing without a shadow); flux_run_forward calls it first. */
void flux_refresh_trainable_shadow(fl_flux_model *m);

#endif
