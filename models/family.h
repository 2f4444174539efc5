/*
 * family.h — recognising a checkpoint's model family from its tensor names and shapes alone,
 * and checking that a checkpoint would bind to a configuration.
 *
 * Both are pure functions over (name, shape) lists, so a header without data (a manifest of
 * the real FLUX.1 checkpoints, an upload not yet stored) can be checked. The safetensors
 * wrappers below build that list from an open file.
 */
#ifndef FL_MODELS_FAMILY_H
#define FL_MODELS_FAMILY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "models/flux.h"

typedef struct fl_tensor_header {
    const char *name;
    int ndim;
    int64_t shape[FL_SAFETENSORS_MAX_DIMS];
} fl_tensor_header;

typedef enum fl_model_family { FL_FAMILY_UNKNOWN = 0, FL_FAMILY_FLUX } fl_model_family;

typedef struct fl_family_info {
    fl_model_family family;
    const char *variant; /* "dev" (guidance embedding) or "schnell" (none) for Flux */
    const char *prefix;  /* "" or "model.diffusion_model." */
    fl_flux_params flux; /* inferred from shapes (axes_dim: the FLUX.1 layout for head dim 128) */
} fl_family_info;

/* Recognises the family; for Flux infers FluxParams from shapes. A Flux checkpoint whose head dim
 * is not 128 gets an error asking for its parameters (axes_dim is not visible in shapes). */
int fl_detect_family(const fl_tensor_header *entries, size_t n, fl_family_info *out, fl_error *err);

/* Every tensor p needs is present under prefix with its exact shape, and no other tensor is under
 * that prefix. The error names the first tensor missing, misshaped or unexpected. */
int fl_flux_check_entries(const fl_tensor_header *entries, size_t n, const char *prefix, const fl_flux_params *p,
                          fl_error *err);

/* The same over an open safetensors file (also requiring computable dtypes: F32, BF16, F16). */
int fl_flux_params_from_safetensors(const fl_safetensors *st, fl_flux_params *out, fl_error *err);
int fl_flux_check_safetensors(const fl_safetensors *st, const fl_flux_params *p, fl_error *err);

#endif
