/*
 * lora.h — reading LoRA adapter files into the canonical in-memory form: one (A, B, alpha) per
 * adapted Linear, keyed by its module path in the original checkpoint layout.
 *
 * Layouts read (safetensors only; never pickle):
 *   canonical  "<module>.lora_A.weight" [r, in], "<module>.lora_B.weight" [out, r];
 *              alpha from the "alpha" metadata entry (default: the rank)
 *   kohya      "lora_unet_<module with '_' for '.'>.lora_down.weight" (A), ".lora_up.weight" (B),
 *              ".alpha" (a scalar; default: the rank)
 * Kohya names are resolved against the model's module paths (underscores are ambiguous on their
 * own). Keys that match no module are listed in `unmatched`, so callers can report exactly which
 * keys applied and which did not. A broken pair (one half missing, ranks disagreeing, a
 * non-float dtype, a non-scalar alpha) is an error naming the key.
 */
#ifndef FL_ADAPTERS_LORA_H
#define FL_ADAPTERS_LORA_H

#include <stddef.h>

#include "core/error.h"
#include "models/flux.h"

typedef struct fl_lora {
    const char *format; /* "canonical" or "kohya" */
    fl_flux_lora_pair *pairs;
    size_t n_pairs;
    char **unmatched; /* keys that adapt no known module */
    size_t n_unmatched;
} fl_lora;

/* module_paths: the Linears of the target model (needed for kohya files; may be NULL for
 * canonical ones, in which case every module name is accepted as written). */
int fl_lora_load(const char *path, const char *const *module_paths, size_t n_paths, fl_lora **out, fl_error *err);
void fl_lora_free(fl_lora *lora);

/* The module paths of a model's Linears (an array owned by the caller, strings by the model). */
const char **fl_lora_model_paths(fl_flux_model *m, size_t *n);

#endif
