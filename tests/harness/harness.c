/*
 * harness.c — test registry, failure recording, array comparison and test data helpers.
 */
#include "harness.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/rng.h"
#include "core/safetensors.h"

static int tests_passed = 0;
static int tests_failed = 0;
static int current_failures = 0;
static const char *current_name = "";

void fl_test_run(const char *name, void (*fn)(void)) {
    current_name = name;
    current_failures = 0;
    fn();
    if (current_failures == 0) {
        tests_passed++;
        printf("ok   %s\n", name);
    } else {
        tests_failed++;
        printf("FAIL %s (%d failed checks)\n", name, current_failures);
    }
    fflush(stdout);
}

int fl_test_finish(void) {
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed ? 1 : 0;
}

_Noreturn void fl_test_skip_all(const char *reason) {
    printf("skipped: %s\n", reason);
    printf("0 passed, 0 failed\n");
    exit(77);
}

void fl_test_fail_at(const char *file, int line, const char *fmt, ...) {
    current_failures++;
    if (current_failures > 20) return; /* enough to diagnose; keep logs readable */
    printf("  %s:%d: [%s] ", file, line, current_name);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

int fl_test_current_failures(void) {
    return current_failures;
}

bool fl_test_close_at(const char *file, int line, const char *what, const float *got, const float *want,
                      size_t n, double atol, double rtol) {
    size_t worst = 0, bad = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        double tol = atol + rtol * fabs(w);
        double diff = fabs(g - w);
        bool ok = !isnan(g) && !isnan(w) && diff <= tol;
        if (!ok) {
            bad++;
            double excess = isnan(diff) ? INFINITY : diff - tol;
            if (excess > worst_excess) {
                worst_excess = excess;
                worst = i;
            }
        }
    }
    if (bad == 0) return true;
    fl_test_fail_at(file, line, "%s: %zu of %zu elements differ; worst [%zu] got %.8g want %.8g (atol %g rtol %g)",
                    what, bad, n, worst, (double)got[worst], (double)want[worst], atol, rtol);
    return false;
}

float *fl_test_randn(size_t n, uint64_t seed, float stddev) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    if (!x) abort();
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    fl_rng_fill_normal(&rng, x, n, 0.0f, stddev);
    return x;
}

float *fl_test_rand_uniform(size_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    if (!x) abort();
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    fl_rng_fill_uniform(&rng, x, n, lo, hi);
    return x;
}

const char *fl_test_data_path(const char *relative, char *buf, size_t size) {
    const char *dir = getenv("FL_TEST_DATA_DIR");
    if (dir && *dir) snprintf(buf, size, "%s/%s", dir, relative);
    else snprintf(buf, size, "%s", relative);
    return buf;
}

float *fl_test_load_f32(const char *path, const char *name, int64_t *numel, int64_t *shape, int *ndim) {
    fl_error err = {0};
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, &err) != 0) {
        fl_test_fail_at(__FILE__, __LINE__, "%s: %s", path, err.message);
        return NULL;
    }
    const fl_safetensors_info *info = fl_safetensors_find(st, name);
    fl_tensor view;
    if (!info || fl_safetensors_tensor_view(st, info, fl_device_cpu(), &view, &err) != 0) {
        fl_test_fail_at(__FILE__, __LINE__, "%s: no float tensor '%s'", path, name);
        fl_safetensors_close(st);
        return NULL;
    }
    int64_t n = fl_tensor_numel(&view);
    float *out = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!out) abort();
    for (int64_t i = 0; i < n; i++) {
        if (view.dtype == FL_F32) out[i] = ((const float *)view.data)[i];
        else if (view.dtype == FL_BF16) out[i] = fl_bf16_to_f32(((const uint16_t *)view.data)[i]);
        else out[i] = fl_f16_to_f32(((const uint16_t *)view.data)[i]);
    }
    if (numel) *numel = n;
    if (ndim) *ndim = view.ndim;
    if (shape) for (int i = 0; i < view.ndim && i < 8; i++) shape[i] = view.shape[i];
    fl_safetensors_close(st);
    return out;
}
