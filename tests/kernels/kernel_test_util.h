/*
 * kernel_test_util.h — helpers shared by the tests/kernels binaries: a CPU context, strided
 * wide buffers for matrix views, bitwise comparisons, and central finite differences.
 *
 * Gradient checks: a test writes its forward as a naive loop in double precision and a scalar
 * L = sum(w * forward(inputs)) with random w. kt_fd_grad perturbs chosen f32 input elements by
 * about +-h and divides by the perturbation actually stored in f32, so the only errors are the
 * O(h^2) truncation term and the backward op's own f32 rounding.
 */
#ifndef FL_TESTS_KERNEL_TEST_UTIL_H
#define FL_TESTS_KERNEL_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/tensor.h"
#include "harness.h"
#include "kernels/context.h"
#include "kernels/ops.h"

/* Finite-difference step and tolerances used by every gradient check. */
#define KT_FD_H 1e-3
#define KT_FD_ATOL 1e-4
#define KT_FD_RTOL 1e-3

static inline fl_ctx *kt_cpu_ctx(void) {
    fl_error err;
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    if (!ctx) {
        fprintf(stderr, "cannot create a CPU context: %s\n", err.message);
        abort();
    }
    return ctx;
}

static inline float *kt_alloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

static inline float *kt_dup(const float *x, size_t n) {
    float *p = kt_alloc(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

/* True when two arrays hold the same bits (NaN-safe "untouched" checks). */
static inline bool kt_same_bits(const void *a, const void *b, size_t bytes) {
    return memcmp(a, b, bytes) == 0;
}

static inline void kt_fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

/* Chooses `count` distinct indices of [0, n) (all of them, in order, when n <= count). */
static inline size_t kt_pick(size_t n, size_t count, uint64_t seed, size_t *idx) {
    if (n <= count) {
        for (size_t i = 0; i < n; i++) idx[i] = i;
        return n;
    }
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    size_t got = 0;
    while (got < count) {
        size_t cand = (size_t)(fl_rng_next(&rng) % n), dup = 0;
        for (size_t j = 0; j < got && !dup; j++) dup = idx[j] == cand;
        if (!dup) idx[got++] = cand;
    }
    return got;
}

typedef double (*kt_loss_fn)(void *state);

/* Central differences of loss() with respect to x[idx[i]], i < count, into grad[i]. */
static inline void kt_fd_grad(float *x, const size_t *idx, size_t count, kt_loss_fn loss, void *state,
                              float *grad) {
    for (size_t i = 0; i < count; i++) {
        float saved = x[idx[i]];
        float up = (float)(saved + KT_FD_H), down = (float)(saved - KT_FD_H);
        x[idx[i]] = up;
        double lp = loss(state);
        x[idx[i]] = down;
        double lm = loss(state);
        x[idx[i]] = saved;
        grad[i] = (float)((lp - lm) / ((double)up - (double)down));
    }
}

/* Checks an analytic gradient `got` (full array over x) against finite differences at up to
 * max_points elements of x. Returns true when all agree within KT_FD_ATOL + KT_FD_RTOL * |fd|. */
static inline bool kt_check_grad_at(const char *file, int line, const char *what, float *x, size_t n,
                                    const float *got, size_t max_points, uint64_t seed, kt_loss_fn loss,
                                    void *state) {
    size_t *idx = malloc((max_points ? max_points : 1) * sizeof(size_t));
    float *fd = kt_alloc(max_points), *an = kt_alloc(max_points);
    if (!idx) abort();
    size_t count = kt_pick(n, max_points, seed, idx);
    kt_fd_grad(x, idx, count, loss, state, fd);
    for (size_t i = 0; i < count; i++) an[i] = got[idx[i]];
    bool ok = fl_test_close_at(file, line, what, an, fd, count, KT_FD_ATOL, KT_FD_RTOL);
    free(idx);
    free(fd);
    free(an);
    return ok;
}
#define KT_CHECK_GRAD(what, x, n, got, max_points, seed, loss, state)                                  \
    kt_check_grad_at(__FILE__, __LINE__, what, x, n, got, max_points, seed, loss, state)

/* sum_i w[i] * y[i] in double */
static inline double kt_dot(const float *w, const double *y, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * y[i];
    return s;
}

/* Converts a double array to float (for comparisons against the harness's float arrays). */
static inline void kt_to_float(const double *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
}

/* A [rows, cols] matrix view whose rows sit `pad` elements apart inside a [rows, cols + pad + off]
 * buffer starting at column `off`: the shape of a column chunk of a wider tensor. */
static inline fl_tensor kt_wide_view(float *storage, int64_t rows, int64_t cols, int64_t off, int64_t pad) {
    fl_tensor wide = fl_tensor_f32_2d(storage, rows, cols + off + pad);
    return fl_tensor_slice(&wide, 1, off, cols);
}

#endif
