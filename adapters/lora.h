/*
 * lora.h — LoRA adapters in their canonical in-memory form: one (A, B, alpha) per adapted Linear,
 * keyed by its module path in the original checkpoint layout, read from any of the file layouts
 * flashlora knows (adapters/lora_formats.h writes them).
 *
 * Layouts read (safetensors only; never pickle):
 *   canonical  "<module>.lora_A.weight" [r, in], "<module>.lora_B.weight" [out, r]; alpha from a
 *              scalar "<module>.alpha" tensor, else the "alpha" metadata entry, else the rank
 *   kohya      "lora_unet_<module with '_' for '.'>.lora_down.weight" (A), ".lora_up.weight" (B),
 *              ".alpha" (a scalar; default: the rank)
 *   peft       the diffusers Flux transformer's names ("transformer_blocks.{i}.attn.to_q", ...),
 *              "<path>.lora_A.weight" / "<path>.lora_B.weight". Alpha per key: a scalar
 *              "<path>.alpha" tensor; else, when the file has alpha tensors, the most frequent of
 *              their values (as diffusers does); else the "lora_adapter_metadata" JSON (a PEFT
 *              LoraConfig, keys with or without the "transformer." prefix: an "alpha_pattern" entry
 *              matching the path, else "lora_alpha"; "use_rslora" makes the scale alpha / sqrt(r));
 *              else the rank. Parts of one original module are fused once, at load: q/k/v (and
 *              proj_mlp) parts sharing one A become that A with B stacked; parts with different
 *              A's are concatenated along the rank (A = [A_q; A_k; ...], B block-diagonal; when the
 *              parts' scales differ each is folded into its B block and alpha = the fused rank).
 *              A part absent from the file contributes zero rows. norm_out.linear's halves are
 *              swapped back to the original (shift, scale) order.
 * In canonical and peft files the key prefixes "transformer.", "base_model.model.",
 * "diffusion_model." and "model.diffusion_model." are ignored. A file is kohya when a key starts
 * with "lora_unet_", peft when a LoRA key names a diffusers module or "lora_adapter_metadata" is
 * present, else canonical.
 *
 * Kohya names are resolved against the model's module paths when given (underscores are
 * ambiguous on their own), else against the Flux layout. Keys that match no module are listed in
 * `unmatched`, so callers can report exactly which keys applied and which did not. A broken pair
 * (one half missing, ranks disagreeing, a non-float dtype, a non-scalar alpha, a module adapted
 * twice) is an error naming the key.
 */
#ifndef FL_ADAPTERS_LORA_H
#define FL_ADAPTERS_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "models/flux.h"

/* The shape of the Linear a pair adapts: A is [rank, in], B is [out, rank]. */
typedef struct fl_lora_dims {
    int64_t in, out;
} fl_lora_dims;

typedef struct fl_lora {
    const char *format;       /* "canonical", "kohya" or "peft" ("canonical" for built ones) */
    fl_flux_lora_pair *pairs; /* each owns its module string and matrices */
    fl_lora_dims *dims;       /* parallel to pairs */
    size_t n_pairs;
    char **unmatched; /* keys that adapt no known module */
    size_t n_unmatched;
} fl_lora;

/* module_paths: the Linears of the target model (may be NULL: canonical names are then accepted
 * as written, kohya and peft names when they are Flux Linears). */
int fl_lora_load(const char *path, const char *const *module_paths, size_t n_paths, fl_lora **out, fl_error *err);
/* The same against a model's Linears, whose shapes also size the parts a peft file leaves out. */
int fl_lora_load_for_model(const char *path, fl_flux_model *m, fl_lora **out, fl_error *err);
void fl_lora_free(fl_lora *lora);
/* The same over bytes in memory (an upload; not copied, need not outlive the call). label names
 * the bytes in errors ("upload"); dims (may be NULL) are the shapes of module_paths, which size
 * the parts a peft file leaves out, as fl_lora_load_for_model does. */
int fl_lora_load_memory(const void *data, size_t size, const char *label, const char *const *module_paths,
                        const fl_lora_dims *dims, size_t n_paths, fl_lora **out, fl_error *err);
/* Checks a loaded adapter against a model's Linears (module_paths with shapes dims): fails with
 * FL_EINVAL listing (the first few and a count) the keys that adapt no Linear (lora->unmatched,
 * or a pair whose module is not among module_paths) and the pairs whose [out, in] differ from
 * the Linear's; also fails for an adapter with no pairs. */
int fl_lora_check_dims(const fl_lora *lora, const char *const *module_paths, const fl_lora_dims *dims,
                       size_t n_paths, fl_error *err);

/* An empty adapter, and appending a pair (a [rank, in] and b [out, rank] are copied). Fails for a
 * module already present or rank/in/out < 1. */
fl_lora *fl_lora_new(void);
int fl_lora_add(fl_lora *lora, const char *module, int64_t rank, int64_t in, int64_t out, const float *a,
                const float *b, float alpha, fl_error *err);

/* The module paths of a model's Linears (an array owned by the caller, strings by the model). */
const char **fl_lora_model_paths(fl_flux_model *m, size_t *n);

#endif
