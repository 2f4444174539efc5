/*
 * parity.c — contexts, tensor pairs and comparisons for the CUDA parity tests (see parity.h).
 */
#include "parity.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"

const fl_dtype pt_dtypes[2] = {FL_F32, FL_BF16};

static fl_ctx *contexts[2];

void pt_setup(void) {
    if (fl_cuda_device_count() == 0) fl_test_skip_all("no usable CUDA device");
    fl_error err;
    memset(&err, 0, sizeof err);
    contexts[PT_CPU] = fl_ctx_create(fl_device_cpu(), &err);
    if (!contexts[PT_CPU]) {
        fprintf(stderr, "cannot create a CPU context: %s\n", err.message);
        exit(1);
    }
    fl_device gpu = {FL_DEVICE_CUDA, 0};
    contexts[PT_GPU] = fl_ctx_create(gpu, &err);
    if (!contexts[PT_GPU]) {
        /* A GPU this build has no kernels for is a skip; any other setup failure is a failure. */
        if (err.code != FL_EUNSUPPORTED) {
            fprintf(stderr, "cannot create a CUDA context: %s\n", err.message);
            exit(1);
        }
        char reason[600];
        snprintf(reason, sizeof reason, "cuda:0 is present but not usable by this build: %s", err.message);
        fl_ctx_destroy(contexts[PT_CPU]);
        fl_test_skip_all(reason);
    }
}

void pt_teardown(void) {
    for (int s = 0; s < 2; s++) {
        fl_ctx_destroy(contexts[s]);
        contexts[s] = NULL;
    }
}

fl_ctx *pt_ctx(int side) {
    return contexts[side];
}

float pt_round(fl_dtype dtype, float x) {
    switch (dtype) {
    case FL_BF16: return fl_bf16_to_f32(fl_f32_to_bf16(x));
    case FL_F16: return fl_f16_to_f32(fl_f32_to_f16(x));
    default: return x;
    }
}

void pt_set(pt_pair *p, const float *values) {
    if (p->n == 0) return; /* nothing to send (and fl_tensor_is_contiguous rejects some empty shapes) */
    float *rounded = malloc((p->n ? p->n : 1) * sizeof(float));
    if (!rounded) abort();
    for (size_t i = 0; i < p->n; i++) rounded[i] = values ? pt_round(p->dtype, values[i]) : 0.0f;
    fl_ctx_upload_f32(contexts[PT_CPU], &p->t[PT_CPU], rounded, p->n);
    fl_ctx_upload_f32(contexts[PT_GPU], &p->t[PT_GPU], rounded, p->n);
    free(rounded);
}

pt_pair pt_new(fl_dtype dtype, int ndim, const int64_t *shape, const float *values) {
    pt_pair p;
    memset(&p, 0, sizeof p);
    p.dtype = dtype;
    p.t[PT_CPU] = fl_ctx_tensor(contexts[PT_CPU], FL_F32, ndim, shape);
    p.t[PT_GPU] = fl_ctx_tensor(contexts[PT_GPU], dtype, ndim, shape);
    p.n = (size_t)fl_tensor_numel(&p.t[PT_CPU]);
    pt_set(&p, values);
    return p;
}

pt_pair pt_randn(fl_dtype dtype, int ndim, const int64_t *shape, uint64_t seed, float stddev) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *values = fl_test_randn((size_t)n, seed, stddev);
    pt_pair p = pt_new(dtype, ndim, shape, values);
    free(values);
    return p;
}

pt_pair pt_full(fl_dtype dtype, int ndim, const int64_t *shape, float value) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *values = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!values) abort();
    for (int64_t i = 0; i < n; i++) values[i] = value;
    pt_pair p = pt_new(dtype, ndim, shape, values);
    free(values);
    return p;
}

void pt_free(pt_pair *p) {
    fl_ctx_tensor_free(contexts[PT_CPU], &p->t[PT_CPU]);
    fl_ctx_tensor_free(contexts[PT_GPU], &p->t[PT_GPU]);
}

void pt_slice(const pt_pair *p, int dim, int64_t start, int64_t length, fl_tensor out[2]) {
    for (int s = 0; s < 2; s++) out[s] = fl_tensor_slice(&p->t[s], dim, start, length);
}

float *pt_get(const pt_pair *p, int side) {
    float *out = malloc((p->n ? p->n : 1) * sizeof(float));
    if (!out) abort();
    if (p->n == 0) return out;
    fl_ctx_download_f32(contexts[side], out, &p->t[side], p->n);
    return out;
}

bool pt_check_at(const char *file, int line, const char *what, const pt_pair *p, pt_tol tol) {
    float *got = pt_get(p, PT_GPU), *want = pt_get(p, PT_CPU);
    char label[160];
    snprintf(label, sizeof label, "%s [%s]", what, fl_dtype_name(p->dtype));
    bool ok = fl_test_close_at(file, line, label, got, want, p->n, tol.atol, tol.rtol);
    free(got);
    free(want);
    return ok;
}

bool pt_check_scalar_at(const char *file, int line, const char *what, fl_dtype dtype, double got, double want,
                        pt_tol tol) {
    double diff = fabs(got - want), limit = tol.atol + tol.rtol * fabs(want);
    if (!isnan(got) && !isnan(want) && diff <= limit) return true;
    fl_test_fail_at(file, line, "%s [%s]: got %.10g want %.10g (atol %g rtol %g)", what, fl_dtype_name(dtype), got,
                    want, tol.atol, tol.rtol);
    return false;
}
