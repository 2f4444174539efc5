/*
 * test_cpu_vexp.c — the CPU backend's array exp (kernels/cpu/cpu_vexp.c) against exp in double.
 *
 * Over [-87, 88] every result is within 4e-7 relative of exp; below, results are the tiny values
 * or zero that expf gives (absolute error under 1e-37); above 88.8, infinity; NaN stays NaN. The
 * shift argument subtracts before exp, the returned sum matches the results' sum, and every
 * element's result is bitwise the same whatever its position and the array's length (the tail is
 * computed like the body), which attention's and GELU's batch invariance rely on.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/cpu/cpu_internal.h"

static void test_accuracy(void) {
    enum { N = 20001 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++) x[i] = -87.0f + 175.0f * (float)i / (N - 1);
    fl_cpu_exp_sub(x, y, N, 0.0f);
    double worst = 0.0;
    for (int i = 0; i < N; i++) {
        double want = exp((double)x[i]), rel = fabs(y[i] - want) / want;
        worst = rel > worst ? rel : worst;
    }
    FL_EXPECTF(worst < 4e-7, "worst relative error %.3g", worst);
    /* the sum (of values a float sum cannot overflow) */
    for (int i = 0; i < N; i++) x[i] = -30.0f + 60.0f * (float)i / (N - 1);
    double sum = fl_cpu_exp_sub(x, y, N, 0.0f), want_sum = 0.0;
    for (int i = 0; i < N; i++) want_sum += y[i];
    FL_EXPECTF(fabs(sum - want_sum) <= 1e-5 * want_sum, "sum %.9g, elements add to %.9g", sum, want_sum);
    free(x);
    free(y);
}

static void test_extremes(void) {
    const float x[] = {-1e30f, -INFINITY, -110.0f, -103.0f, -95.0f, -88.0f, 88.8f, 89.0f, 1e30f, INFINITY, NAN, 0.0f,
                       -0.0f};
    const int n = (int)(sizeof x / sizeof x[0]);
    float y[sizeof x / sizeof x[0]];
    fl_cpu_exp_sub(x, y, n, 0.0f);
    for (int i = 0; i < n; i++) {
        if (isnan(x[i])) {
            FL_EXPECTF(isnan(y[i]), "exp(NaN) = %g", y[i]);
        } else if (x[i] > 88.75f) {
            FL_EXPECTF(isinf(y[i]) && y[i] > 0, "exp(%g) = %g, expected inf", x[i], y[i]);
        } else {
            double want = exp((double)x[i]);
            FL_EXPECTF(y[i] >= 0 && fabs(y[i] - want) <= 1e-37 + 4e-7 * want, "exp(%g) = %g, expected %g", x[i], y[i],
                       want);
        }
    }
}

static void test_shift(void) {
    float x[5] = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f}, y[5];
    fl_cpu_exp_sub(x, y, 5, 5.0f);
    for (int i = 0; i < 5; i++)
        FL_EXPECTF(fabs(y[i] - exp(x[i] - 5.0)) <= 4e-7 * exp(x[i] - 5.0), "exp(%g - 5) = %g", x[i], y[i]);
    fl_cpu_exp_sub(x, x, 5, 0.0f); /* in place */
    for (int i = 0; i < 5; i++) FL_EXPECT(fabs(x[i] - exp(i + 1.0)) <= 4e-7 * exp(i + 1.0));
}

static void test_position_invariant(void) {
    enum { N = 53 };
    float x[N], all[N], one[N];
    for (int i = 0; i < N; i++) x[i] = -20.0f + 0.77f * (float)i;
    fl_cpu_exp_sub(x, all, N, 0.5f);
    for (int len = 1; len <= N; len++) {
        for (int start = 0; start + len <= N; start += len) {
            fl_cpu_exp_sub(x + start, one + start, len, 0.5f);
            FL_EXPECTF(memcmp(one + start, all + start, (size_t)len * sizeof(float)) == 0,
                       "elements [%d, %d) differ when computed alone", start, start + len);
        }
    }
}

int main(void) {
    FL_RUN(test_accuracy);
    FL_RUN(test_extremes);
    FL_RUN(test_shift);
    FL_RUN(test_position_invariant);
    return fl_test_finish();
}
