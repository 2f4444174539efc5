/*
 * ae_internal.h — the autoencoder's structure, shared by models/ae.c (building, binding weights,
 * loading) and models/ae_run.c (the planned passes and the memory estimate). Not part of the
 * public interface (models/ae.h).
 *
 * Each parameter tensor is a view into one device allocation per half (encoder, decoder), so a
 * half can be released on its own. A skeleton model (for fl_ae_estimate_memory) has the same
 * structure and shapes over a placeholder address and no memory.
 */
#ifndef FL_MODELS_AE_INTERNAL_H
#define FL_MODELS_AE_INTERNAL_H

#include "core/tensor.h"
#include "models/ae.h"

#define AE_GROUPS 32
#define AE_EPS 1e-6f

typedef struct ae_conv {
    fl_tensor w; /* [out, in, k, k] */
    fl_tensor b; /* [out] */
} ae_conv;

typedef struct ae_norm {
    fl_tensor w, b; /* [C] */
} ae_norm;

typedef struct ae_res {
    int64_t cin, cout;
    ae_norm norm1, norm2;
    ae_conv conv1, conv2;
    ae_conv nin; /* 1x1, only when cin != cout */
} ae_res;

typedef struct ae_attn {
    int64_t c;
    ae_norm norm;
    ae_conv q, k, v, proj_out; /* 1x1 */
} ae_attn;

typedef struct ae_level {
    int n_blocks;
    ae_res *blocks;
    bool has_sample; /* encoder: downsample after the blocks; decoder: upsample */
    ae_conv sample;
} ae_level;

typedef struct ae_half {
    ae_conv conv_in;
    ae_level levels[FL_AE_MAX_LEVELS]; /* index = BFL's level (down.i / up.i) */
    ae_res mid1, mid2;
    ae_attn attn;
    ae_norm norm_out;
    ae_conv conv_out;
} ae_half;

/* A live block of the activation pool (see ae_run.c). */
typedef struct ae_block {
    size_t off, size;
} ae_block;

#define AE_POOL_MAX_LIVE 32

typedef struct ae_pool {
    char *base;      /* NULL while measuring */
    size_t capacity; /* bytes; unbounded while measuring */
    size_t peak;     /* highest end offset handed out */
    int n_live;
    ae_block live[AE_POOL_MAX_LIVE]; /* sorted by offset */
    fl_device device;
} ae_pool;

typedef struct ae_plan {
    int64_t height, width;
    bool decode;
} ae_plan;

struct fl_ae {
    fl_ctx *ctx;
    fl_ae_params p;
    fl_dtype dtype;
    unsigned parts;   /* halves whose weights are resident */
    bool skeleton;    /* shapes only, no memory (memory estimates) */
    ae_half half[2];  /* [0] encoder, [1] decoder */
    void *memory[2];  /* the halves' weight allocations */
    size_t weight_bytes[2];
    /* activations */
    ae_pool pool;
    void *arena_memory;
    size_t arena_bytes;
    ae_plan *plans;
    size_t n_plans;
    uint64_t plan_count;
    int64_t max_conv_scratch; /* largest im2col tile of a measured pass, in elements */
    int64_t max_attn_positions; /* positions of the largest mid-block attention measured */
};

/* The structure of p with every parameter a shape-only tensor (data NULL); ae.c. */
fl_ae *ae_model_new(fl_ctx *ctx, const fl_ae_params *p);
/* Calls visit(name, tensor, user) for every parameter of the given parts, in the order of
 * fl_ae_param_decls; ae.c. */
void ae_visit(fl_ae *ae, unsigned parts, void (*visit)(const char *name, fl_tensor *t, void *user), void *user);
/* Allocates the weights of the given parts (a skeleton lays them out over a placeholder address
 * instead); FL_ENOMEM when the device has no room; ae.c. */
int ae_alloc_parts(fl_ae *ae, unsigned parts, fl_error *err);
/* Frees the model's structure (not its weights); ae.c. */
void ae_model_free_structure(fl_ae *ae);

#endif
