/*
 * cpu_attention.c — rotary embeddings and softmax attention (forward and backward) of the CPU
 * backend.
 *
 * Attention materializes one block of score rows at a time: for BQ query rows of one (batch,
 * head) it forms S = scale * q k^T against every key, applies a numerically stable softmax (row
 * maximum subtracted, log-sum-exp stored for the backward) and multiplies by v. The forward runs
 * (batch * head, query block) tasks in parallel; the backward runs one task per (batch, head),
 * since dk and dv sum over every query block. The backward recomputes P = exp(S - lse) and uses
 * D_i = sum_j dout_ij out_ij, so dS = P * (dP - D_i) with dP = dout v^T.
 *
 * With OpenBLAS the block products are single-threaded cblas_sgemm calls made inside the
 * OpenMP region (OpenBLAS runs one thread per call there), on blocks of ATTN_BQ_BLAS rows; the
 * region is always entered, so every call is made the same way whatever the batch size, and a
 * (batch, head)'s result depends only on its own q, k, v (the per-sample batch invariance of
 * models/flux.h). Without OpenBLAS the products go through the single-threaded blocked kernel of
 * cpu_gemm.c, with k and v transposed into scratch where a product needs them as [D, Lk].
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#ifdef FL_HAVE_OPENBLAS
#include <cblas.h>
#endif

enum { ATTN_BQ = 32, ATTN_BQ_BLAS = 64 };

/* y = rotation of x by the angles of pe (sign +1) or by their opposites (sign -1). */
static void rope_apply(const fl_tensor *x, const fl_tensor *pe, fl_tensor *y, float sign) {
    int64_t B = x->shape[0], H = x->shape[1], L = x->shape[2], D = x->shape[3], half = D / 2;
    const float *xd = x->data, *ped = pe->data;
    float *yd = y->data;
    FL_OMP(omp parallel for schedule(static) if (B * H * L * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < B * H * L; r++) {
        int64_t b = r / (H * L), l = r % L;
        const float *p = ped + (b * L + l) * half * 2, *xr = xd + r * D;
        float *yr = yd + r * D;
        for (int64_t i = 0; i < half; i++) {
            float c = p[2 * i], s = sign * p[2 * i + 1];
            float x0 = xr[2 * i], x1 = xr[2 * i + 1];
            yr[2 * i] = c * x0 - s * x1;
            yr[2 * i + 1] = s * x0 + c * x1;
        }
    }
}

void fl_cpu_rope(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y) {
    (void)ctx;
    rope_apply(x, pe, y, 1.0f);
}

void fl_cpu_rope_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *pe, fl_tensor *dx) {
    (void)ctx;
    rope_apply(dy, pe, dx, -1.0f);
}

/* dst[D, L] = src[L, D]^T */
static void transpose(const float *src, int64_t L, int64_t D, float *dst) {
    for (int64_t j = 0; j < L; j++)
        for (int64_t d = 0; d < D; d++) dst[d * L + j] = src[j * D + d];
}

static void *scratch(size_t count) {
    return fl_xmalloc((count ? count : 1) * sizeof(float));
}

static void attention_serial(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                      fl_tensor *lse, float scale) {
    (void)ctx;
    int64_t BH = q->shape[0] * q->shape[1], Lq = q->shape[2], Lk = k->shape[2], D = q->shape[3];
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    float *od = out->data, *lsed = lse->data;
    if (BH == 0 || Lq == 0) return;
    bool parallel = BH * Lq * Lk * D > FL_CPU_PARALLEL_MIN;
    (void)parallel; /* only read by the OpenMP clauses */
    float *kt = scratch((size_t)(BH * D * Lk));
    FL_OMP(omp parallel for schedule(static) if (parallel))
    for (int64_t bh = 0; bh < BH; bh++) transpose(kd + bh * Lk * D, Lk, D, kt + bh * D * Lk);
    int64_t blocks = (Lq + ATTN_BQ - 1) / ATTN_BQ;
    FL_OMP(omp parallel if (parallel))
    {
        float *s = scratch((size_t)(ATTN_BQ * Lk));
        FL_OMP(omp for schedule(dynamic))
        for (int64_t task = 0; task < BH * blocks; task++) {
            int64_t bh = task / blocks, i0 = (task % blocks) * ATTN_BQ;
            int64_t bq = Lq - i0 < ATTN_BQ ? Lq - i0 : ATTN_BQ;
            memset(s, 0, (size_t)(bq * Lk) * sizeof(float));
            fl_cpu_gemm_acc_serial(bq, Lk, D, scale, qd + (bh * Lq + i0) * D, D, 1, kt + bh * D * Lk, Lk, s, Lk);
            for (int64_t i = 0; i < bq; i++) {
                float *row = s + i * Lk;
                float mx = -INFINITY;
                for (int64_t j = 0; j < Lk; j++) mx = row[j] > mx ? row[j] : mx;
                double sum = 0.0;
                for (int64_t j = 0; j < Lk; j++) {
                    row[j] = expf(row[j] - mx);
                    sum += row[j];
                }
                lsed[bh * Lq + i0 + i] = mx + (float)log(sum);
                float inv = (float)(1.0 / sum);
                for (int64_t j = 0; j < Lk; j++) row[j] *= inv;
            }
            float *ob = od + (bh * Lq + i0) * D;
            memset(ob, 0, (size_t)(bq * D) * sizeof(float));
            fl_cpu_gemm_acc_serial(bq, D, Lk, 1.0f, s, Lk, 1, vd + bh * Lk * D, D, ob, D);
        }
        free(s);
    }
    free(kt);
}

static void attention_backward_serial(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                               const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                               fl_tensor *dk, fl_tensor *dv, float scale) {
    (void)ctx;
    int64_t BH = q->shape[0] * q->shape[1], Lq = q->shape[2], Lk = k->shape[2], D = q->shape[3];
    const float *dod = dout->data, *qd = q->data, *kd = k->data, *vd = v->data, *od = out->data,
                *lsed = lse->data;
    float *dqd = dq->data, *dkd = dk->data, *dvd = dv->data;
    if (BH == 0) return;
    FL_OMP(omp parallel if (BH > 1 && BH * Lq * Lk * D > FL_CPU_PARALLEL_MIN))
    {
        float *kt = scratch((size_t)(D * Lk)), *vt = scratch((size_t)(D * Lk));
        float *p = scratch((size_t)(ATTN_BQ * Lk)), *dp = scratch((size_t)(ATTN_BQ * Lk));
        FL_OMP(omp for schedule(dynamic))
        for (int64_t bh = 0; bh < BH; bh++) {
            const float *kb = kd + bh * Lk * D, *vb = vd + bh * Lk * D;
            float *dkb = dkd + bh * Lk * D, *dvb = dvd + bh * Lk * D;
            transpose(kb, Lk, D, kt);
            transpose(vb, Lk, D, vt);
            memset(dkb, 0, (size_t)(Lk * D) * sizeof(float));
            memset(dvb, 0, (size_t)(Lk * D) * sizeof(float));
            for (int64_t i0 = 0; i0 < Lq; i0 += ATTN_BQ) {
                int64_t bq = Lq - i0 < ATTN_BQ ? Lq - i0 : ATTN_BQ;
                const float *qb = qd + (bh * Lq + i0) * D, *dob = dod + (bh * Lq + i0) * D;
                const float *ob = od + (bh * Lq + i0) * D, *lb = lsed + bh * Lq + i0;
                float *dqb = dqd + (bh * Lq + i0) * D;
                /* P = exp(scale q k^T - lse) */
                memset(p, 0, (size_t)(bq * Lk) * sizeof(float));
                fl_cpu_gemm_acc_serial(bq, Lk, D, scale, qb, D, 1, kt, Lk, p, Lk);
                for (int64_t i = 0; i < bq; i++) {
                    float *row = p + i * Lk;
                    for (int64_t j = 0; j < Lk; j++) row[j] = expf(row[j] - lb[i]);
                }
                /* dv += P^T dout */
                fl_cpu_gemm_acc_serial(Lk, D, bq, 1.0f, p, 1, Lk, dob, D, dvb, D);
                /* dS = P * (dout v^T - D_i) */
                memset(dp, 0, (size_t)(bq * Lk) * sizeof(float));
                fl_cpu_gemm_acc_serial(bq, Lk, D, 1.0f, dob, D, 1, vt, Lk, dp, Lk);
                for (int64_t i = 0; i < bq; i++) {
                    double di = 0.0;
                    for (int64_t d = 0; d < D; d++) di += (double)dob[i * D + d] * ob[i * D + d];
                    float dif = (float)di, *prow = p + i * Lk, *drow = dp + i * Lk;
                    for (int64_t j = 0; j < Lk; j++) drow[j] = prow[j] * (drow[j] - dif);
                }
                /* dq = scale dS k;  dk += scale dS^T q */
                memset(dqb, 0, (size_t)(bq * D) * sizeof(float));
                fl_cpu_gemm_acc_serial(bq, D, Lk, scale, dp, Lk, 1, kb, D, dqb, D);
                fl_cpu_gemm_acc_serial(Lk, D, bq, scale, dp, 1, Lk, qb, D, dkb, D);
            }
        }
        free(kt);
        free(vt);
        free(p);
        free(dp);
    }
}

#ifdef FL_HAVE_OPENBLAS
/* C = alpha op(A) op(B) + beta C, row-major, one OpenBLAS call (single-threaded inside a region). */
static void sgemm1(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                   const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

static bool blas_dims_fit(int64_t lq, int64_t lk, int64_t d) {
    return lq <= INT_MAX / 2 && lk <= INT_MAX / 2 && d <= INT_MAX / 2;
}

static void attention_blas(const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                           fl_tensor *lse, float scale) {
    int64_t BH = q->shape[0] * q->shape[1], Lq = q->shape[2], Lk = k->shape[2], D = q->shape[3];
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    float *od = out->data, *lsed = lse->data;
    int64_t blocks = (Lq + ATTN_BQ_BLAS - 1) / ATTN_BQ_BLAS;
    FL_OMP(omp parallel)
    {
        float *s = scratch((size_t)(ATTN_BQ_BLAS * Lk));
        FL_OMP(omp for schedule(dynamic))
        for (int64_t task = 0; task < BH * blocks; task++) {
            int64_t bh = task / blocks, i0 = (task % blocks) * ATTN_BQ_BLAS;
            int64_t bq = Lq - i0 < ATTN_BQ_BLAS ? Lq - i0 : ATTN_BQ_BLAS;
            const float *kb = kd + bh * Lk * D, *vb = vd + bh * Lk * D;
            float *ob = od + (bh * Lq + i0) * D;
            sgemm1(false, true, bq, Lk, D, scale, qd + (bh * Lq + i0) * D, D, kb, D, 0.0f, s, Lk);
            for (int64_t i = 0; i < bq; i++) {
                float *row = s + i * Lk;
                float mx = -INFINITY;
                for (int64_t j = 0; j < Lk; j++) mx = row[j] > mx ? row[j] : mx;
                double sum = fl_cpu_exp_sub(row, row, Lk, mx);
                lsed[bh * Lq + i0 + i] = mx + (float)log(sum);
                float inv = (float)(1.0 / sum);
                for (int64_t j = 0; j < Lk; j++) row[j] *= inv;
            }
            sgemm1(false, false, bq, D, Lk, 1.0f, s, Lk, vb, D, 0.0f, ob, D);
        }
        free(s);
    }
}

static void attention_backward_blas(const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                                    const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                                    fl_tensor *dk, fl_tensor *dv, float scale) {
    int64_t BH = q->shape[0] * q->shape[1], Lq = q->shape[2], Lk = k->shape[2], D = q->shape[3];
    const float *dod = dout->data, *qd = q->data, *kd = k->data, *vd = v->data, *od = out->data,
                *lsed = lse->data;
    float *dqd = dq->data, *dkd = dk->data, *dvd = dv->data;
    FL_OMP(omp parallel)
    {
        float *p = scratch((size_t)(ATTN_BQ_BLAS * Lk)), *dp = scratch((size_t)(ATTN_BQ_BLAS * Lk));
        FL_OMP(omp for schedule(dynamic))
        for (int64_t bh = 0; bh < BH; bh++) {
            const float *kb = kd + bh * Lk * D, *vb = vd + bh * Lk * D;
            float *dkb = dkd + bh * Lk * D, *dvb = dvd + bh * Lk * D;
            for (int64_t i0 = 0; i0 < Lq; i0 += ATTN_BQ_BLAS) {
                int64_t bq = Lq - i0 < ATTN_BQ_BLAS ? Lq - i0 : ATTN_BQ_BLAS;
                float first = i0 == 0 ? 0.0f : 1.0f; /* dk and dv: the first block writes, later ones add */
                const float *qb = qd + (bh * Lq + i0) * D, *dob = dod + (bh * Lq + i0) * D;
                const float *ob = od + (bh * Lq + i0) * D, *lb = lsed + bh * Lq + i0;
                float *dqb = dqd + (bh * Lq + i0) * D;
                /* P = exp(scale q k^T - lse) */
                sgemm1(false, true, bq, Lk, D, scale, qb, D, kb, D, 0.0f, p, Lk);
                for (int64_t i = 0; i < bq; i++) fl_cpu_exp_sub(p + i * Lk, p + i * Lk, Lk, lb[i]);
                /* dv += P^T dout */
                sgemm1(true, false, Lk, D, bq, 1.0f, p, Lk, dob, D, first, dvb, D);
                /* dS = P * (dout v^T - D_i) */
                sgemm1(false, true, bq, Lk, D, 1.0f, dob, D, vb, D, 0.0f, dp, Lk);
                for (int64_t i = 0; i < bq; i++) {
                    double di = 0.0;
                    for (int64_t d = 0; d < D; d++) di += (double)dob[i * D + d] * ob[i * D + d];
                    float dif = (float)di, *prow = p + i * Lk, *drow = dp + i * Lk;
                    for (int64_t j = 0; j < Lk; j++) drow[j] = prow[j] * (drow[j] - dif);
                }
                /* dq = scale dS k;  dk += scale dS^T q */
                sgemm1(false, false, bq, D, Lk, scale, dp, Lk, kb, D, 0.0f, dqb, D);
                sgemm1(true, false, Lk, D, bq, scale, dp, Lk, qb, D, first, dkb, D);
            }
        }
        free(p);
        free(dp);
    }
}
#endif

void fl_cpu_attention(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                      fl_tensor *lse, float scale) {
    if (q->shape[0] * q->shape[1] == 0 || q->shape[2] == 0) return;
#ifdef FL_HAVE_OPENBLAS
    if (k->shape[2] > 0 && blas_dims_fit(q->shape[2], k->shape[2], q->shape[3])) {
        attention_blas(q, k, v, out, lse, scale);
        return;
    }
#endif
    attention_serial(ctx, q, k, v, out, lse, scale);
}

void fl_cpu_attention_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                               const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                               fl_tensor *dk, fl_tensor *dv, float scale) {
    if (q->shape[0] * q->shape[1] == 0) return;
#ifdef FL_HAVE_OPENBLAS
    if (q->shape[2] > 0 && k->shape[2] > 0 && blas_dims_fit(q->shape[2], k->shape[2], q->shape[3])) {
        attention_backward_blas(dout, q, k, v, out, lse, dq, dk, dv, scale);
        return;
    }
#endif
    attention_backward_serial(ctx, dout, q, k, v, out, lse, dq, dk, dv, scale);
}
