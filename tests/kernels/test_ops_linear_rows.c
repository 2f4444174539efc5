/*
 * test_ops_linear_rows.c — the CPU's batch-invariant linear (fl_op_linear_rows,
 * kernels/cpu/cpu_gemm_rows.c).
 *
 * Parity: against a naive double-precision loop on odd shapes (partial tiles and panels, depth 0
 * and 1, the embedded model's widths), row-strided x and y (column slices of wider buffers whose
 * padding must stay untouched), with and without bias; tolerance atol 1e-4, rtol 1e-4 as for
 * fl_op_linear (f32 chains of length <= 300 against double).
 * Instruction sets: every kernel this CPU runs (AVX-512, AVX2+FMA) gives bitwise the scalar
 * reference's results.
 * Batch invariance: rows computed inside calls of M = 1, 3, 17, 64 (at several offsets) are
 * bitwise the same rows of one call over all of them, at 1 and at 2 threads, and the 1- and
 * 2-thread results are bitwise equal.
 * Also: planning mode computes nothing.
 */
#include "core/threads.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_internal.h"

static fl_ctx *ctx;

static void fill(float *x, size_t n, uint64_t seed) {
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    fl_rng_fill_normal(&rng, x, n, 0.0f, 1.0f);
}

/* y = x w^T + bias in double, dense [m, n]. */
static void naive_linear(int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx, const float *w,
                         const float *bias, double *y) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = bias ? bias[j] : 0.0;
            for (int64_t p = 0; p < k; p++) s += (double)x[i * ldx + p] * w[j * k + p];
            y[i * n + j] = s;
        }
}

static void check_parity(int64_t m, int64_t n, int64_t k, bool with_bias, uint64_t seed) {
    const int64_t xoff = 3, xpad = 2, yoff = 1, ypad = 5;
    int64_t ldx = k + xoff + xpad, ldy = n + yoff + ypad;
    float *xs = kt_alloc((size_t)(m * ldx)), *w = kt_alloc((size_t)(n * k)), *b = kt_alloc((size_t)n);
    float *ys = kt_alloc((size_t)(m * ldy));
    fill(xs, (size_t)(m * ldx), seed);
    fill(w, (size_t)(n * k), seed + 1);
    fill(b, (size_t)n, seed + 2);
    kt_fill_nan(ys, (size_t)(m * ldy));
    fl_tensor x = kt_wide_view(xs, m, k, xoff, xpad), y = kt_wide_view(ys, m, n, yoff, ypad);
    fl_tensor wt = fl_tensor_f32_2d(w, n, k), bt = fl_tensor_f32_2d(b, 1, n);
    fl_op_linear_rows(ctx, &x, &wt, with_bias ? &bt : NULL, &y);
    double *ref = malloc((size_t)(m * n) * sizeof(double));
    naive_linear(m, n, k, xs + xoff, ldx, w, with_bias ? b : NULL, ref);
    int bad = 0, pad_touched = 0;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double got = ys[i * ldy + yoff + j], want = ref[i * n + j];
            if (!(fabs(got - want) <= 1e-4 + 1e-4 * fabs(want))) bad++;
        }
        for (int64_t j = 0; j < yoff; j++) pad_touched += !isnan(ys[i * ldy + j]);
        for (int64_t j = yoff + n; j < ldy; j++) pad_touched += !isnan(ys[i * ldy + j]);
    }
    FL_EXPECTF(bad == 0, "linear_rows %lldx%lldx%lld bias %d: %d elements off the double reference", (long long)m,
               (long long)n, (long long)k, with_bias, bad);
    FL_EXPECTF(pad_touched == 0, "linear_rows %lldx%lldx%lld: %d padding elements written", (long long)m,
               (long long)n, (long long)k, pad_touched);
    free(xs), free(w), free(b), free(ys), free(ref);
}

static void test_parity(void) {
    static const int64_t shapes[][3] = {
        {1, 1, 1},   {1, 33, 17},  {2, 31, 0},   {5, 32, 1},   {12, 64, 9},   {13, 65, 300},
        {25, 7, 40}, {97, 100, 33}, {130, 96, 32}, {3, 768, 256}, {40, 256, 257}, {7, 1536, 64},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int bias = 0; bias < 2; bias++)
            check_parity(shapes[s][0], shapes[s][1], shapes[s][2], bias, 100 + 7 * s + (uint64_t)bias);
}

/* Every instruction set this CPU has gives the scalar reference's bits. */
static void test_isas_match_scalar(void) {
    static const int64_t shapes[][3] = {{1, 5, 3}, {13, 33, 70}, {29, 100, 129}, {64, 64, 256}, {7, 31, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], ldx = k + 3, ldy = n + 2;
        float *x = kt_alloc((size_t)(m * ldx)), *w = kt_alloc((size_t)(n * (k + 1))), *b = kt_alloc((size_t)n);
        float *ref = kt_alloc((size_t)(m * ldy)), *got = kt_alloc((size_t)(m * ldy));
        fill(x, (size_t)(m * ldx), 7 + s), fill(w, (size_t)(n * (k + 1)), 8 + s), fill(b, (size_t)n, 9 + s);
        fl_cpu_sgemm_rows(FL_CPU_ROWS_SCALAR, m, n, k, x, ldx, w, k + 1, b, ref, ldy);
        for (int isa = FL_CPU_ROWS_AVX2; isa <= FL_CPU_ROWS_AVX512; isa++) {
            if (!fl_cpu_rows_isa_supported((fl_cpu_rows_isa)isa)) {
                printf("  (this CPU has no %s)\n", fl_cpu_rows_isa_name((fl_cpu_rows_isa)isa));
                continue;
            }
            memset(got, 0, (size_t)(m * ldy) * sizeof(float));
            fl_cpu_sgemm_rows((fl_cpu_rows_isa)isa, m, n, k, x, ldx, w, k + 1, b, got, ldy);
            bool same = true;
            for (int64_t i = 0; i < m; i++) same &= kt_same_bits(ref + i * ldy, got + i * ldy, (size_t)n * sizeof(float));
            FL_EXPECTF(same, "%s differs from the scalar reference at %lldx%lldx%lld",
                       fl_cpu_rows_isa_name((fl_cpu_rows_isa)isa), (long long)m, (long long)n, (long long)k);
        }
        free(x), free(w), free(b), free(ref), free(got);
    }
}

/* Rows [start, start + rows) of x (a row-strided view) through one call into y's same rows. */
static void linear_rows_range(const float *xs, int64_t ldx, int64_t k, const fl_tensor *w, const fl_tensor *b,
                              int64_t start, int64_t rows, float *ys, int64_t ldy, int64_t n) {
    fl_tensor x = kt_wide_view((float *)xs + start * ldx, rows, k, 0, ldx - k);
    fl_tensor y = kt_wide_view(ys + start * ldy, rows, n, 0, ldy - n);
    fl_op_linear_rows(ctx, &x, w, b, &y);
}

static void test_batch_invariance(void) {
    static const int64_t shapes[][2] = {{33, 47}, {768, 256}, {256, 1024}, {100, 129}}; /* n, k */
    static const int64_t ms[] = {1, 3, 17, 64};
    const int64_t total = 64 + 17 + 3; /* room for the offsets below */
    int saved = fl_threads_get();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t n = shapes[s][0], k = shapes[s][1], ldx = k + 5, ldy = n + 3;
        float *x = kt_alloc((size_t)(total * ldx)), *w = kt_alloc((size_t)(n * k)), *b = kt_alloc((size_t)n);
        float *whole[2] = {kt_alloc((size_t)(total * ldy)), kt_alloc((size_t)(total * ldy))};
        float *part = kt_alloc((size_t)(total * ldy));
        fill(x, (size_t)(total * ldx), 31 + s), fill(w, (size_t)(n * k), 32 + s), fill(b, (size_t)n, 33 + s);
        fl_tensor wt = fl_tensor_f32_2d(w, n, k), bt = fl_tensor_f32_2d(b, 1, n);
        for (int threads = 1; threads <= 2; threads++) {
            fl_threads_set(threads);
            float *ref = whole[threads - 1];
            linear_rows_range(x, ldx, k, &wt, &bt, 0, total, ref, ldy, n);
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                int64_t offsets[] = {0, 1, total - ms[mi], (total - ms[mi]) / 2};
                for (int o = 0; o < 4; o++) {
                    int64_t start = offsets[o], rows = ms[mi];
                    kt_fill_nan(part, (size_t)(total * ldy));
                    linear_rows_range(x, ldx, k, &wt, &bt, start, rows, part, ldy, n);
                    bool same = true;
                    for (int64_t i = start; i < start + rows; i++)
                        same &= kt_same_bits(ref + i * ldy, part + i * ldy, (size_t)n * sizeof(float));
                    FL_EXPECTF(same, "n %lld k %lld, %d threads: rows [%lld, %lld) in a call of %lld differ from "
                               "the same rows in a call of %lld", (long long)n, (long long)k, threads,
                               (long long)start, (long long)(start + rows), (long long)rows, (long long)total);
                }
            }
        }
        bool same = true;
        for (int64_t i = 0; i < total; i++)
            same &= kt_same_bits(whole[0] + i * ldy, whole[1] + i * ldy, (size_t)n * sizeof(float));
        FL_EXPECTF(same, "n %lld k %lld: 1 and 2 threads differ", (long long)n, (long long)k);
        free(x), free(w), free(b), free(whole[0]), free(whole[1]), free(part);
    }
    fl_threads_set(saved);
}

static void test_planning_computes_nothing(void) {
    FL_EXPECT(fl_op_has_linear_rows(ctx));
    float x[6] = {1, 2, 3, 4, 5, 6}, w[6] = {1, 1, 1, 1, 1, 1}, y[4];
    kt_fill_nan(y, 4);
    fl_tensor xt = fl_tensor_f32_2d(x, 2, 3), wt = fl_tensor_f32_2d(w, 2, 3), yt = fl_tensor_f32_2d(y, 2, 2);
    ctx->planning = true;
    fl_op_linear_rows(ctx, &xt, &wt, NULL, &yt);
    ctx->planning = false;
    for (int i = 0; i < 4; i++) FL_EXPECT(isnan(y[i]));
    fl_op_linear_rows(ctx, &xt, &wt, NULL, &yt);
    FL_EXPECT(y[0] == 6.0f && y[1] == 6.0f && y[2] == 15.0f && y[3] == 15.0f);
}

int main(void) {
    ctx = kt_cpu_ctx();
    printf("batch-invariant linear: %s kernel\n", fl_cpu_rows_isa_name(fl_cpu_rows_isa_best()));
    FL_RUN(test_parity);
    FL_RUN(test_isas_match_scalar);
    FL_RUN(test_batch_invariance);
    FL_RUN(test_planning_computes_nothing);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
