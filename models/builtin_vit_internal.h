/*
 * builtin_vit_internal.h — what builtin_vit.c (parameters, forward) and builtin_vit_train.c
 * (backward, loss) share: the model struct, its parameter table and its activations. Not a
 * public header.
 */
#ifndef FL_MODELS_BUILTIN_VIT_INTERNAL_H
#define FL_MODELS_BUILTIN_VIT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "core/tensor.h"
#include "models/builtin_vit.h"

#define BVIT_NAME_MAX 64
#define BVIT_MAX_ENTRIES (8 + 12 * 48)
#define BVIT_MAX_ACTS (64 + 16 * 48)
#define BVIT_EMBED_BATCH 64

/* One block's parameters (or their gradients). n1s/n2s hold the LayerNorm weight minus one. */
typedef struct bvit_layer {
    fl_tensor n1s, n1b, qkv_w, qkv_b, proj_w, proj_b, n2s, n2b, fc1_w, fc1_b, fc2_w, fc2_b;
} bvit_layer;

/* Every parameter as a view: pe_w [D, 3PP], cls [1, D], pos [L, D], norms [1, D]. */
typedef struct bvit_weights {
    fl_tensor pe_w, pe_b, cls, pos;
    bvit_layer *layers;
    fl_tensor nf_s, nf_b;
    fl_tensor hw1, hb1, hw2, hb2;
} bvit_weights;

/* A tensor of the file layout: its name, file shape, compute-view shape, where it sits in the
 * flat buffer and which bvit_weights field views it. */
typedef struct bvit_entry {
    char name[BVIT_NAME_MAX];
    int file_ndim, view_ndim;
    int64_t file_shape[4], view_shape[4];
    int64_t numel, offset;
    int layer;       /* the block it belongs to, or -1 */
    size_t slot;     /* byte offset of the fl_tensor inside bvit_weights (layer -1) or bvit_layer */
    bool norm_scale; /* a LayerNorm weight, held as weight - 1 */
    bool head;       /* part of the projection head */
} bvit_entry;

/* What one block's forward keeps for its backward. */
typedef struct bvit_acts {
    fl_tensor mean1, rstd1, h1, qkvh, o, lse, om, xmid, mean2, rstd2, h2, f1, g;
} bvit_acts;

struct fl_bvit {
    fl_ctx *ctx;
    fl_bvit_config c;
    fl_dtype dtype;
    int grid, tokens; /* G = S / P; L = 1 + G^2 */
    char sha256[65];

    bvit_entry *entries;
    int n_entries;
    int64_t n_params, n_decay;
    void *param_buf, *grad_buf;
    bvit_weights w, g;

    /* activations for batches up to cap_batch (every layer's when cap_train) */
    int cap_batch, last_batch;
    bool cap_train;
    bvit_acts *acts;
    fl_tensor xs[49]; /* residual stream: the input of block l is xs[l] ([1, B*L, D]) */
    fl_tensor patches, tok, qkv, tmp, meanf, rstdf, xf, cls_out, hh, hg, z;
    fl_tensor dx, dx2, dtmp, dmlp, dqkv, dqkvh, dov, dcls, dhh, dz, dtok;
    fl_tensor *act_list[BVIT_MAX_ACTS];
    int n_act;
    float *host_patches;
};

/* The tensor of entry e inside w. */
static inline fl_tensor *bvit_slot(const bvit_weights *w, const bvit_entry *e) {
    return e->layer < 0 ? (fl_tensor *)((char *)w + e->slot) : (fl_tensor *)((char *)&w->layers[e->layer] + e->slot);
}

/* Runs the forward on B host images; with train, every block keeps its activations and the
 * projection head runs. */
void bvit_forward(fl_bvit *m, const float *images, int B, bool train);

#endif
