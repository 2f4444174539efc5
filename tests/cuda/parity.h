/*
 * parity.h — helpers of the CUDA parity tests: one CPU context (the fp32 reference) and one CUDA
 * context, and tensor pairs holding the same values on both.
 *
 * A pair's CPU tensor is always F32; its GPU tensor has the storage dtype under test. Values are
 * rounded to that dtype before they reach either side, so with BF16 storage the reference runs
 * on exactly the values the GPU sees and a tolerance only has to cover the GPU's arithmetic and
 * the rounding of its outputs. A test runs an op once per side (PT_CPU, PT_GPU) and compares the
 * GPU result, downloaded as f32, with the CPU result.
 *
 * pt_setup() ends the binary with exit status 77 (skipped) when no CUDA device is usable.
 */
#ifndef FL_TESTS_CUDA_PARITY_H
#define FL_TESTS_CUDA_PARITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"
#include "harness.h"
#include "kernels/context.h"
#include "kernels/ops.h"

enum { PT_CPU = 0, PT_GPU = 1 };

/* The storage dtypes every op is checked in. */
extern const fl_dtype pt_dtypes[2];

void pt_setup(void);
void pt_teardown(void);
fl_ctx *pt_ctx(int side);

typedef struct pt_pair {
    fl_dtype dtype; /* of the GPU tensor */
    size_t n;       /* elements */
    fl_tensor t[2]; /* [PT_CPU] F32 on the CPU, [PT_GPU] dtype on the GPU; both contiguous */
} pt_pair;

/* A pair holding `values` (NULL: zeros) rounded to dtype. */
pt_pair pt_new(fl_dtype dtype, int ndim, const int64_t *shape, const float *values);
/* A pair of normal random values (mean 0), rounded to dtype. */
pt_pair pt_randn(fl_dtype dtype, int ndim, const int64_t *shape, uint64_t seed, float stddev);
/* A pair with every element = value (NaN marks outputs whose old contents must be ignored). */
pt_pair pt_full(fl_dtype dtype, int ndim, const int64_t *shape, float value);
/* Replaces both sides' contents with `values` rounded to the pair's dtype. */
void pt_set(pt_pair *p, const float *values);
void pt_free(pt_pair *p);

/* A view of both sides: fl_tensor_slice along dim. */
void pt_slice(const pt_pair *p, int dim, int64_t start, int64_t length, fl_tensor out[2]);

/* The contents of one side as f32 (malloc'ed). */
float *pt_get(const pt_pair *p, int side);

/* Rounds x to what dtype stores. */
float pt_round(fl_dtype dtype, float x);

typedef struct pt_tol {
    double atol, rtol;
} pt_tol;
static inline pt_tol pt_tol_for(fl_dtype dtype, double f32_atol, double f32_rtol, double bf16_atol,
                                double bf16_rtol) {
    pt_tol t = {f32_atol, f32_rtol};
    if (dtype == FL_BF16) {
        t.atol = bf16_atol;
        t.rtol = bf16_rtol;
    }
    return t;
}

/* Compares the GPU side of p with its CPU side (the reference); records a failure naming `what`
 * and the dtype. */
bool pt_check_at(const char *file, int line, const char *what, const pt_pair *p, pt_tol tol);
#define PT_CHECK(what, p, ...) pt_check_at(__FILE__, __LINE__, what, p, __VA_ARGS__)

/* Compares two scalars the same way. */
bool pt_check_scalar_at(const char *file, int line, const char *what, fl_dtype dtype, double got, double want,
                        pt_tol tol);
#define PT_CHECK_SCALAR(what, dtype, got, want, ...)                                                   \
    pt_check_scalar_at(__FILE__, __LINE__, what, dtype, got, want, __VA_ARGS__)

#endif
