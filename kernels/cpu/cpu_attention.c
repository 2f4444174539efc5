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
 * Products go through the single-threaded blocked kernel of cpu_gemm.c, with k and v transposed
 * into scratch where a product needs them as [D, Lk].
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

enum { ATTN_BQ = 32 };

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

void fl_cpu_attention(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
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

void fl_cpu_attention_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
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
