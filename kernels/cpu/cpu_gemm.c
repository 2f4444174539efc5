/*
 * cpu_gemm.c — matrix products of the CPU backend: gemm, linear (nn.Linear's x w^T + b) and the
 * bias gradient.
 *
 * With OpenBLAS the products go to cblas_sgemm. Without it a cache-blocked fallback runs: rows of
 * C are split across OpenMP threads and each thread updates blocks of four rows of C at a time
 * from a block of B (row-major, packed when B is transposed), with contiguous inner loops the
 * compiler vectorizes. The same single-threaded kernel serves attention's per-head products.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#ifdef FL_HAVE_OPENBLAS
#include <cblas.h>
#endif

enum {
    GEMM_NC = 256, /* columns of C per block: four rows of it stay in L1 */
    GEMM_KC = 256, /* depth per block: a KC x NC block of B stays in L2 */
    GEMM_KP = 256, /* rows of a transposed B packed at once */
    GEMM_MB = 64,  /* rows of C per thread task, at most */
};

static int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

/* c0..c3[0, nb) += sum_p ap[4p + r] * b[p * ldb + j]: four rows of C from one block of B. */
static void kernel_4rows(int64_t kb, int64_t nb, const float *restrict ap, const float *restrict b, int64_t ldb,
                         float *restrict c0, float *restrict c1, float *restrict c2, float *restrict c3) {
    for (int64_t p = 0; p < kb; p++) {
        const float a0 = ap[4 * p], a1 = ap[4 * p + 1], a2 = ap[4 * p + 2], a3 = ap[4 * p + 3];
        const float *restrict br = b + p * ldb;
        for (int64_t j = 0; j < nb; j++) {
            float bv = br[j];
            c0[j] += a0 * bv;
            c1[j] += a1 * bv;
            c2[j] += a2 * bv;
            c3[j] += a3 * bv;
        }
    }
}

static void kernel_1row(int64_t kb, int64_t nb, const float *restrict ap, const float *restrict b, int64_t ldb,
                        float *restrict c0) {
    for (int64_t p = 0; p < kb; p++) {
        const float a0 = ap[p];
        const float *restrict br = b + p * ldb;
        for (int64_t j = 0; j < nb; j++) c0[j] += a0 * br[j];
    }
}

void fl_cpu_gemm_acc_serial(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t a_rs,
                            int64_t a_cs, const float *b, int64_t ldb, float *c, int64_t ldc) {
    float ap[4 * GEMM_KC];
    for (int64_t p0 = 0; p0 < k; p0 += GEMM_KC) {
        int64_t kb = min64(GEMM_KC, k - p0);
        for (int64_t j0 = 0; j0 < n; j0 += GEMM_NC) {
            int64_t nb = min64(GEMM_NC, n - j0);
            const float *bb = b + p0 * ldb + j0;
            int64_t i = 0;
            for (; i + 4 <= m; i += 4) {
                for (int64_t p = 0; p < kb; p++)
                    for (int r = 0; r < 4; r++) ap[4 * p + r] = alpha * a[(i + r) * a_rs + (p0 + p) * a_cs];
                float *c0 = c + i * ldc + j0;
                kernel_4rows(kb, nb, ap, bb, ldb, c0, c0 + ldc, c0 + 2 * ldc, c0 + 3 * ldc);
            }
            for (; i < m; i++) {
                for (int64_t p = 0; p < kb; p++) ap[p] = alpha * a[i * a_rs + (p0 + p) * a_cs];
                kernel_1row(kb, nb, ap, bb, ldb, c + i * ldc + j0);
            }
        }
    }
}

/* C = beta * C over m x n (beta == 0 writes zeros without reading C). */
static void scale_c(int64_t m, int64_t n, float beta, float *c, int64_t ldc) {
    if (beta == 1.0f) return;
    FL_OMP(omp parallel for schedule(static) if (m * n > FL_CPU_PARALLEL_MIN))
    for (int64_t i = 0; i < m; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f) memset(row, 0, (size_t)n * sizeof(float));
        else
            for (int64_t j = 0; j < n; j++) row[j] *= beta;
    }
}

#ifndef FL_HAVE_OPENBLAS
/* C += alpha * op(A) * B for row-major B [k, n], rows of C split across threads. */
static void gemm_rows_parallel(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t a_rs,
                               int64_t a_cs, const float *b, int64_t ldb, float *c, int64_t ldc) {
    int threads = fl_cpu_thread_count();
    int64_t mb = (m + threads - 1) / threads;
    mb = mb > GEMM_MB ? GEMM_MB : (mb + 3) / 4 * 4;
    int64_t tasks = (m + mb - 1) / mb;
    FL_OMP(omp parallel for schedule(dynamic) if (tasks > 1 && m * n * k > FL_CPU_PARALLEL_MIN))
    for (int64_t t = 0; t < tasks; t++) {
        int64_t i0 = t * mb, rows = min64(mb, m - i0);
        fl_cpu_gemm_acc_serial(rows, n, k, alpha, a + i0 * a_rs, a_rs, a_cs, b, ldb, c + i0 * ldc, ldc);
    }
}

static void gemm_fallback(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc) {
    int64_t a_rs = trans_a ? 1 : lda, a_cs = trans_a ? lda : 1;
    if (!trans_b) {
        gemm_rows_parallel(m, n, k, alpha, a, a_rs, a_cs, b, ldb, c, ldc);
        return;
    }
    /* op(B)[p, j] = b[j * ldb + p]: pack GEMM_KP rows of op(B) at a time, then multiply. */
    int64_t kp_max = min64(GEMM_KP, k);
    float *panel = fl_xmalloc((size_t)(kp_max * n) * sizeof(float));
    for (int64_t p0 = 0; p0 < k; p0 += GEMM_KP) {
        int64_t kp = min64(GEMM_KP, k - p0);
        FL_OMP(omp parallel for schedule(static) if (kp * n > FL_CPU_PARALLEL_MIN))
        for (int64_t j = 0; j < n; j++) {
            const float *src = b + j * ldb + p0;
            for (int64_t p = 0; p < kp; p++) panel[p * n + j] = src[p];
        }
        gemm_rows_parallel(m, n, kp, alpha, a + p0 * a_cs, a_rs, a_cs, panel, n, c, ldc);
    }
    free(panel);
}
#endif

void fl_cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (m == 0 || n == 0) return;
    /* beta == 0 must ignore C entirely (it may hold NaN), whatever the BLAS does. */
    scale_c(m, n, beta, c, ldc);
    if (k == 0 || alpha == 0.0f) return;
#ifdef FL_HAVE_OPENBLAS
    FL_CHECKF(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
              "gemm dimensions exceed the BLAS integer range");
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)m,
                (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, 1.0f, c, (int)ldc);
#else
    gemm_fallback(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, c, ldc);
#endif
}

void fl_cpu_gemm(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b, fl_tensor *c,
                 float alpha, float beta) {
    (void)ctx;
    fl_matrix ma = fl_cpu_matrix(a), mb = fl_cpu_matrix(b), mc = fl_cpu_matrix(c);
    int64_t k = trans_a ? ma.rows : ma.cols;
    fl_cpu_sgemm(trans_a, trans_b, mc.rows, mc.cols, k, alpha, a->data, ma.ld, b->data, mb.ld, beta, c->data, mc.ld);
}

void fl_cpu_linear(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y) {
    (void)ctx;
    fl_matrix mx = fl_cpu_matrix(x), my = fl_cpu_matrix(y);
    int64_t out = w->shape[0], in = w->shape[1];
    float *yd = y->data;
    float beta = 0.0f;
    if (bias && out > 0) {
        const float *bd = bias->data;
        FL_OMP(omp parallel for schedule(static) if (my.rows * out > FL_CPU_PARALLEL_MIN))
        for (int64_t i = 0; i < my.rows; i++) memcpy(yd + i * my.ld, bd, (size_t)out * sizeof(float));
        beta = 1.0f;
    }
    fl_cpu_sgemm(false, true, my.rows, out, in, 1.0f, x->data, mx.ld, w->data, in, beta, yd, my.ld);
}

void fl_cpu_bias_grad(fl_ctx *ctx, const fl_tensor *dy, fl_tensor *db) {
    (void)ctx;
    enum { CHUNK = 256 };
    fl_matrix m = fl_cpu_matrix(dy);
    const float *g = dy->data;
    float *out = db->data;
    int64_t chunks = (m.cols + CHUNK - 1) / CHUNK;
    FL_OMP(omp parallel for schedule(static) if (m.rows * m.cols > FL_CPU_PARALLEL_MIN))
    for (int64_t c = 0; c < chunks; c++) {
        int64_t j0 = c * CHUNK, nb = min64(CHUNK, m.cols - j0);
        double acc[CHUNK] = {0};
        for (int64_t i = 0; i < m.rows; i++) {
            const float *row = g + i * m.ld + j0;
            for (int64_t j = 0; j < nb; j++) acc[j] += row[j];
        }
        for (int64_t j = 0; j < nb; j++) out[j0 + j] += (float)acc[j];
    }
}
