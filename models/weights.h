/*
 * weights.h — the tensors of one model component as users have them on disk, read as f32.
 *
 * A component is a single .safetensors file, the shards a "*.safetensors.index.json" lists
 * (Hugging Face / diffusers), or a folder holding either (diffusers' transformer/, vae/,
 * text_encoder/, text_encoder_2/: "diffusion_pytorch_model" or "model", a single file preferred
 * over an index). Every file is memory-mapped and validated (core/safetensors.h); an index must
 * be JSON with a "weight_map" of tensor names to shard files beside it, every shard it names must
 * open, and every tensor it names must be in that shard. The index is authoritative: tensors a
 * shard holds but the index does not list are not part of the component.
 *
 * Dtypes: F32, F16, BF16 and F64 convert exactly or by rounding to f32; F8_E4M3 (fn: no
 * infinities, 0x7f/0xff are NaN) and F8_E5M2 are dequantized, multiplied by their per-tensor
 * scale when the file has one ("<stem>.scale_weight", as in scaled-fp8 files, or
 * "<stem>.weight_scale" for "<stem>.weight"). Scale tensors and the "scaled_fp8" marker are not
 * listed as tensors of the component.
 *
 * Views: a component can be narrowed to the tensors under a key prefix, with the prefix removed
 * (all-in-one checkpoints: "model.diffusion_model.", "first_stage_model.", ...), and a diffusers
 * transformer can be seen under the original Flux names: its split q/k/v become the fused qkv and
 * linear1 tensors (rows stacked in order), norm_out.linear becomes final_layer.adaLN_modulation.1
 * with its halves of rows swapped, the q/k norms become the norm scales. The mapping is a pure
 * function over names and shapes (fl_flux_map_diffusers), checked once at open.
 */
#ifndef FL_MODELS_WEIGHTS_H
#define FL_MODELS_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "models/family.h"

#define FL_WEIGHTS_MAX_PARTS 4
#define FL_WEIGHTS_MAX_SHARDS 4096

/* One tensor of a component: up to FL_WEIGHTS_MAX_PARTS source tensors whose rows are stacked
 * (one for a plain tensor). */
typedef struct fl_weight {
    const char *name;
    int ndim;
    int64_t shape[FL_SAFETENSORS_MAX_DIMS];
    fl_st_dtype dtype; /* of the (first) source */
    int n_parts;
    const fl_safetensors_info *parts[FL_WEIGHTS_MAX_PARTS];
    float scales[FL_WEIGHTS_MAX_PARTS]; /* per-part dequantization scale (1 when none) */
    bool swap_halves;                   /* the two halves of the rows trade places */
} fl_weight;

typedef struct fl_weights fl_weights;

/* Opens a file, an index or a folder (see above). Errors name the path, the shard or the tensor
 * at fault: "<path>: not found", "<index>: shard 'x.safetensors' (listed for 'a.weight'): <why>",
 * "<index>: tensor 'a.weight' is listed in shard 'x' but not there". */
int fl_weights_open(const char *path, fl_weights **out, fl_error *err);
void fl_weights_close(fl_weights *w); /* NULL is fine */

/* The path given to fl_weights_open and the files it opened (one, or the shards). */
const char *fl_weights_path(const fl_weights *w);
size_t fl_weights_file_count(const fl_weights *w);
const fl_safetensors *fl_weights_file_at(const fl_weights *w, size_t i);

size_t fl_weights_count(const fl_weights *w);
const fl_weight *fl_weights_at(const fl_weights *w, size_t i);
const fl_weight *fl_weights_find(const fl_weights *w, const char *name); /* NULL when absent */
/* A "__metadata__" value of the first file, or NULL. */
const char *fl_weights_metadata_get(const fl_weights *w, const char *key);

/* Bytes the component's tensors take as f32. */
uint64_t fl_weights_f32_bytes(const fl_weights *w);

/* Whether some tensor's name starts with prefix. */
bool fl_weights_has_prefix(const fl_weights *w, const char *prefix);
/* Keeps only the tensors under prefix, with it removed. Fails (FL_EINVAL) when none is. */
int fl_weights_strip_prefix(fl_weights *w, const char *prefix, fl_error *err);

/* The tensors as (name, shape) headers, for family detection and binding checks (models/family.h).
 * The array is malloc'ed (free it); its names belong to w. */
fl_tensor_header *fl_weights_headers(const fl_weights *w, size_t *n);

/* Reads a tensor into dst (numel floats): parts stacked, dequantized, scaled, halves swapped.
 * Fails (FL_EUNSUPPORTED) for a dtype that is not a float. */
int fl_weights_read_f32(const fl_weights *w, const fl_weight *t, float *dst, fl_error *err);

/* A fingerprint of the component's contents for cache keys, without reading all of it: the
 * sha256 over each file's size, JSON header and the first and last MiB of its data. */
void fl_weights_fingerprint(const fl_weights *w, char hex[65]);

/* ---- the diffusers transformer under the original Flux names ------------------------------- */

/* Whether the tensors look like a diffusers FluxTransformer2DModel ("x_embedder.weight" and
 * "transformer_blocks.0..." or "single_transformer_blocks.0..."), with an optional prefix
 * ("transformer."). */
bool fl_flux_is_diffusers(const fl_tensor_header *entries, size_t n);

/* One original tensor made of diffusers tensors. */
typedef struct fl_flux_mapped {
    char name[FL_FLUX_NAME_MAX + 16];
    int n_parts;
    size_t parts[FL_WEIGHTS_MAX_PARTS]; /* indices into the input entries, rows stacked in order */
    bool swap_halves;
    int ndim;
    int64_t shape[2];
} fl_flux_mapped;

/* Maps every diffusers tensor onto the original names: a pure function over names and shapes.
 * *out (malloc'ed) gets one entry per original tensor, in the order the inputs first name them.
 * Every input must be used exactly once and every fused tensor complete with consistent shapes
 * (the error names the first tensor that is not: unknown, missing a part, or misshaped). */
int fl_flux_map_diffusers(const fl_tensor_header *entries, size_t n, fl_flux_mapped **out, size_t *n_out,
                          fl_error *err);

/* Applies fl_flux_map_diffusers to w in place (after an optional "transformer." prefix is
 * stripped). */
int fl_weights_map_flux_diffusers(fl_weights *w, fl_error *err);

/* ---- shard indexes ----------------------------------------------------------------------------- */

/* The "weight_map" of a "*.safetensors.index.json": tensor names and the shard file each is in
 * (a plain file name beside the index: no '/', '\\', leading '.', and ending in ".safetensors").
 * Parsed from memory (what names the index in messages); fl_weights_open uses it. Errors: not
 * JSON, no "weight_map" object or an empty one, a shard that is not a plain .safetensors name. */
typedef struct fl_weights_index {
    size_t n;
    const char **tensors; /* owned by the index */
    const char **shards;
    void *json;           /* the parsed document that owns the strings */
} fl_weights_index;

int fl_weights_parse_index(const char *json, size_t len, const char *what, fl_weights_index *out, fl_error *err);
void fl_weights_index_free(fl_weights_index *index);

/* F8 decoding (exposed for tests). */
float fl_f8_e4m3_to_f32(uint8_t x);
float fl_f8_e5m2_to_f32(uint8_t x);

#endif
