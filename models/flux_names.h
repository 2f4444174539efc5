/*
 * flux_names.h — the correspondence between the Linears of the original (BFL) Flux checkpoint and
 * the modules of the diffusers FluxTransformer2DModel: one table, used to read diffusers LoRA files
 * (adapters/), to write PEFT ones, and to load a diffusers-layout transformer (models/weights.h).
 *
 * A fused original module may be split into several diffusers parts whose output rows are
 * stacked in order (qkv -> to_q, to_k, to_v; single-block linear1 -> to_q, to_k, to_v, proj_mlp),
 * and final_layer.adaLN_modulation.1 (shift, scale) is diffusers' norm_out.linear (scale, shift):
 * the two halves of its rows are swapped.
 */
#ifndef FL_MODELS_FLUX_NAMES_H
#define FL_MODELS_FLUX_NAMES_H

#include <stdbool.h>
#include <stdint.h>

#include "models/flux.h"

#define FL_FLUX_MAX_PARTS 4

/* How a module's output rows are divided among its diffusers parts. */
typedef enum fl_flux_split {
    FL_FLUX_SPLIT_NONE = 0,    /* one part, rows unchanged */
    FL_FLUX_SPLIT_QKV,         /* three parts of H rows each (out = 3 H, H = in) */
    FL_FLUX_SPLIT_QKV_MLP,     /* H, H, H, then out - 3 H rows (H = in) */
    FL_FLUX_SPLIT_SWAP_HALVES, /* one part whose two halves of rows are swapped */
} fl_flux_split;

/* An original module and its diffusers module paths (without a "transformer." prefix). */
typedef struct fl_flux_diffusers_map {
    char module[FL_FLUX_NAME_MAX];
    int n_parts;
    char parts[FL_FLUX_MAX_PARTS][FL_FLUX_NAME_MAX];
    fl_flux_split split;
} fl_flux_diffusers_map;

/* The rule naming an original module, written with sep between its components ('.' for module
 * paths, '_' for kohya stems): fills out (may be NULL); false when name is no Flux Linear. */
bool fl_flux_diffusers_lookup(const char *name, char sep, fl_flux_diffusers_map *out);
/* The original module of a diffusers module path ("transformer_blocks.3.attn.to_k") and which
 * part of it that path is; false when the path is not a Flux Linear. */
bool fl_flux_diffusers_source(const char *path, fl_flux_diffusers_map *out, int *part);
/* Rows [row0, row0 + rows) of the original [out, in] module that part `part` holds; -1 when the
 * shape cannot be split that way. */
int fl_flux_diffusers_part_rows(const fl_flux_diffusers_map *map, int part, int64_t in, int64_t out, int64_t *row0,
                                int64_t *rows);

#endif
