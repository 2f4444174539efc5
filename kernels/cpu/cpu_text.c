/*
 * cpu_text.c — the forward-only ops of the text encoders on the CPU reference backend: embedding
 * gather, LayerNorm with weight and bias, attention with an additive bias and/or a causal mask,
 * quick-GELU, exact (erf) GELU and the elementwise product.
 *
 * LayerNorm statistics are accumulated in double, two passes, as cpu_norm.c does. Attention works
 * like cpu_attention.c's forward: for a block of query rows of one (batch, head) it forms
 * S = scale * q k^T against the keys the mask allows (a causal block stops at its last row),
 * adds the bias, takes a numerically stable softmax and multiplies by v.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

enum { TEXT_ATTN_BQ = 32 };

void fl_cpu_embedding(fl_ctx *ctx, const fl_tensor *table, const int32_t *ids, int64_t n, fl_tensor *out) {
    (void)ctx;
    int64_t D = table->shape[1];
    fl_matrix mo = fl_cpu_matrix(out);
    const float *td = table->data;
    float *od = out->data;
    for (int64_t r = 0; r < n; r++) memcpy(od + r * mo.ld, td + (int64_t)ids[r] * D, (size_t)D * sizeof(float));
}

void fl_cpu_layernorm_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                             fl_tensor *y, float eps) {
    (void)ctx;
    int64_t D = x->shape[x->ndim - 1], R = D ? fl_tensor_numel(x) / D : 0;
    const float *xd = x->data, *wd = weight->data, *bd = bias->data;
    float *yd = y->data;
    FL_OMP(omp parallel for schedule(static) if (R * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < R; r++) {
        const float *xr = xd + r * D;
        float *yr = yd + r * D;
        double s = 0.0;
        for (int64_t j = 0; j < D; j++) s += xr[j];
        double mu = s / (double)D, v = 0.0;
        for (int64_t j = 0; j < D; j++) {
            double d = xr[j] - mu;
            v += d * d;
        }
        float mean = (float)mu, rstd = (float)(1.0 / sqrt(v / (double)D + (double)eps));
        for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - mean) * rstd * wd[j] + bd[j];
    }
}

void fl_cpu_attention_masked(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                             const fl_tensor *bias, bool causal, fl_tensor *out, float scale) {
    (void)ctx;
    int64_t B = q->shape[0], H = q->shape[1], Lq = q->shape[2], Lk = k->shape[2], D = q->shape[3];
    int64_t BH = B * H;
    const float *qd = q->data, *kd = k->data, *vd = v->data, *bd = bias ? bias->data : NULL;
    /* bias rows of (b, h): the same table for every batch when it is [H, Lq, Lk] */
    int64_t bias_bstride = bias && bias->ndim == 4 ? H * Lq * Lk : 0;
    float *od = out->data;
    if (BH == 0 || Lq == 0) return;
    bool parallel = BH * Lq * Lk * D > FL_CPU_PARALLEL_MIN;
    (void)parallel; /* only read by the OpenMP clauses */
    size_t kt_count = (size_t)(BH * D * Lk);
    float *kt = fl_xmalloc((kt_count ? kt_count : 1) * sizeof(float));
    FL_OMP(omp parallel for schedule(static) if (parallel))
    for (int64_t bh = 0; bh < BH; bh++) {
        const float *src = kd + bh * Lk * D;
        float *dst = kt + bh * D * Lk;
        for (int64_t j = 0; j < Lk; j++)
            for (int64_t d = 0; d < D; d++) dst[d * Lk + j] = src[j * D + d];
    }
    int64_t blocks = (Lq + TEXT_ATTN_BQ - 1) / TEXT_ATTN_BQ;
    FL_OMP(omp parallel if (parallel))
    {
        float *s = fl_xmalloc((size_t)(TEXT_ATTN_BQ * (Lk ? Lk : 1)) * sizeof(float));
        FL_OMP(omp for schedule(dynamic))
        for (int64_t task = 0; task < BH * blocks; task++) {
            int64_t bh = task / blocks, i0 = (task % blocks) * TEXT_ATTN_BQ;
            int64_t bq = Lq - i0 < TEXT_ATTN_BQ ? Lq - i0 : TEXT_ATTN_BQ;
            /* keys this block can see: all, or up to its last row under the causal mask */
            int64_t nk = causal ? (i0 + bq < Lk ? i0 + bq : Lk) : Lk;
            memset(s, 0, (size_t)(bq * nk) * sizeof(float));
            /* kt rows have stride Lk; the first nk columns are the visible keys */
            fl_cpu_gemm_acc_serial(bq, nk, D, scale, qd + (bh * Lq + i0) * D, D, 1, kt + bh * D * Lk, Lk, s, nk);
            const float *brow0 =
                bd ? bd + (bh / H) * bias_bstride + (bh % H) * Lq * Lk + i0 * Lk : NULL;
            for (int64_t i = 0; i < bq; i++) {
                float *row = s + i * nk;
                int64_t visible = causal ? i0 + i + 1 : nk;
                if (visible > nk) visible = nk;
                if (brow0)
                    for (int64_t j = 0; j < visible; j++) row[j] += brow0[i * Lk + j];
                float mx = -INFINITY;
                for (int64_t j = 0; j < visible; j++) mx = row[j] > mx ? row[j] : mx;
                double sum = 0.0;
                for (int64_t j = 0; j < visible; j++) {
                    row[j] = expf(row[j] - mx);
                    sum += row[j];
                }
                float inv = (float)(1.0 / sum);
                for (int64_t j = 0; j < visible; j++) row[j] *= inv;
                for (int64_t j = visible; j < nk; j++) row[j] = 0.0f;
            }
            float *ob = od + (bh * Lq + i0) * D;
            memset(ob, 0, (size_t)(bq * D) * sizeof(float));
            fl_cpu_gemm_acc_serial(bq, D, nk, 1.0f, s, nk, 1, vd + bh * Lk * D, D, ob, D);
        }
        free(s);
    }
    free(kt);
}

/* y = f(x) over matrix views (y may alias x). */
#define TEXT_UNARY(name, expr)                                                                           \
    void fl_cpu_##name(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {                                  \
        (void)ctx;                                                                                       \
        fl_matrix mx = fl_cpu_matrix(x), my = fl_cpu_matrix(y);                                          \
        const float *xd = x->data;                                                                       \
        float *yd = y->data;                                                                             \
        FL_OMP(omp parallel for schedule(static) if (mx.rows * mx.cols > FL_CPU_PARALLEL_MIN))            \
        for (int64_t r = 0; r < mx.rows; r++)                                                            \
            for (int64_t c = 0; c < mx.cols; c++) {                                                      \
                float v = xd[r * mx.ld + c];                                                             \
                yd[r * my.ld + c] = (expr);                                                              \
            }                                                                                            \
    }

TEXT_UNARY(quick_gelu, v / (1.0f + expf(-1.702f * v)))
TEXT_UNARY(gelu_erf, 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)))

void fl_cpu_mul(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out) {
    (void)ctx;
    fl_matrix ma = fl_cpu_matrix(a), mb = fl_cpu_matrix(b), mo = fl_cpu_matrix(out);
    const float *ad = a->data, *bd = b->data;
    float *od = out->data;
    FL_OMP(omp parallel for schedule(static) if (ma.rows * ma.cols > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < ma.rows; r++)
        for (int64_t c = 0; c < ma.cols; c++) od[r * mo.ld + c] = ad[r * ma.ld + c] * bd[r * mb.ld + c];
}
