/*
 * cpu_norm.c — normalization ops of the CPU backend: LayerNorm, the fused LayerNorm + adaLN
 * modulation of Flux, RMSNorm, and their backwards.
 *
 * Rows are independent and split across threads. Row statistics are accumulated in double and
 * stored as f32; outputs and backwards use the stored f32 statistics so that forward and backward
 * agree exactly. Per-sample and per-feature parameter gradients are reduced over rows in double,
 * in a fixed order (results do not depend on scheduling).
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"

enum { COL_CHUNK = 256 };

/* Mean and 1/sqrt(biased variance + eps) of one row, two passes in double. */
static void row_moments(const float *x, int64_t n, float eps, float *mean_out, float *rstd_out) {
    double s = 0.0;
    FL_SIMD_REDUCTION(omp simd reduction(+ : s))
    for (int64_t j = 0; j < n; j++) s += x[j];
    double mu = n ? s / (double)n : 0.0;
    double v = 0.0;
    FL_SIMD_REDUCTION(omp simd reduction(+ : v))
    for (int64_t j = 0; j < n; j++) {
        double d = x[j] - mu;
        v += d * d;
    }
    double var = n ? v / (double)n : 0.0;
    *mean_out = (float)mu;
    *rstd_out = (float)(1.0 / sqrt(var + (double)eps));
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) for one row, xhat = (x - mean) * rstd. */
static void row_norm_backward(const float *g, const float *x, int64_t n, float mean, float rstd, float *dx) {
    double sg = 0.0, sgx = 0.0;
    FL_SIMD_REDUCTION(omp simd reduction(+ : sg, sgx))
    for (int64_t j = 0; j < n; j++) {
        float xh = (x[j] - mean) * rstd;
        sg += g[j];
        sgx += (double)g[j] * xh;
    }
    float a = n ? (float)(sg / (double)n) : 0.0f, c = n ? (float)(sgx / (double)n) : 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float xh = (x[j] - mean) * rstd;
        dx[j] = rstd * (g[j] - a - xh * c);
    }
}

void fl_cpu_layernorm(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps) {
    (void)ctx;
    int64_t D = x->ndim ? x->shape[x->ndim - 1] : 1, R = fl_tensor_numel(mean);
    const float *xd = x->data;
    float *yd = y->data, *md = mean->data, *rd = rstd->data;
    FL_OMP(omp parallel for schedule(static) if (R * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < R; r++) {
        const float *xr = xd + r * D;
        float *yr = yd + r * D;
        row_moments(xr, D, eps, &md[r], &rd[r]);
        float mu = md[r], rs = rd[r];
        for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - mu) * rs;
    }
}

void fl_cpu_layernorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *mean,
                               const fl_tensor *rstd, fl_tensor *dx) {
    (void)ctx;
    int64_t D = x->ndim ? x->shape[x->ndim - 1] : 1, R = fl_tensor_numel(mean);
    const float *dyd = dy->data, *xd = x->data, *md = mean->data, *rd = rstd->data;
    float *dxd = dx->data;
    FL_OMP(omp parallel for schedule(static) if (R * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < R; r++) row_norm_backward(dyd + r * D, xd + r * D, D, md[r], rd[r], dxd + r * D);
}

void fl_cpu_ln_modulate(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *shift, const fl_tensor *scale,
                        fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps) {
    (void)ctx;
    int64_t B = x->shape[0], T = x->shape[1], D = x->shape[2];
    fl_matrix msh = fl_cpu_matrix(shift), msc = fl_cpu_matrix(scale);
    const float *xd = x->data, *shd = shift->data, *scd = scale->data;
    float *yd = y->data, *md = mean->data, *rd = rstd->data;
    FL_OMP(omp parallel for schedule(static) if (B * T * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < B * T; r++) {
        const float *xr = xd + r * D, *sh = shd + (r / T) * msh.ld, *sc = scd + (r / T) * msc.ld;
        float *yr = yd + r * D;
        row_moments(xr, D, eps, &md[r], &rd[r]);
        float mu = md[r], rs = rd[r];
        for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - mu) * rs * (1.0f + sc[j]) + sh[j];
    }
}

void fl_cpu_ln_modulate_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *scale,
                                 const fl_tensor *mean, const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dshift,
                                 fl_tensor *dscale) {
    (void)ctx;
    int64_t B = x->shape[0], T = x->shape[1], D = x->shape[2];
    fl_matrix msc = fl_cpu_matrix(scale);
    const float *dyd = dy->data, *xd = x->data, *scd = scale->data, *md = mean->data, *rd = rstd->data;
    float *dxd = dx->data;
    FL_OMP(omp parallel if (B * T * D > FL_CPU_PARALLEL_MIN))
    {
        float *g = fl_xmalloc((size_t)(D ? D : 1) * sizeof(float));
        FL_OMP(omp for schedule(static))
        for (int64_t r = 0; r < B * T; r++) {
            const float *dyr = dyd + r * D, *sc = scd + (r / T) * msc.ld;
            for (int64_t j = 0; j < D; j++) g[j] = dyr[j] * (1.0f + sc[j]);
            row_norm_backward(g, xd + r * D, D, md[r], rd[r], dxd + r * D);
        }
        free(g);
    }
    if (!dshift && !dscale) return;
    fl_matrix mds = dshift ? fl_cpu_matrix(dshift) : msc, mdc = dscale ? fl_cpu_matrix(dscale) : msc;
    float *dsd = dshift ? dshift->data : NULL, *dcd = dscale ? dscale->data : NULL;
    int64_t chunks = (D + COL_CHUNK - 1) / COL_CHUNK;
    FL_OMP(omp parallel for collapse(2) schedule(static) if (B * T * D > FL_CPU_PARALLEL_MIN))
    for (int64_t b = 0; b < B; b++) {
        for (int64_t c = 0; c < chunks; c++) {
            int64_t j0 = c * COL_CHUNK, nb = D - j0 < COL_CHUNK ? D - j0 : COL_CHUNK;
            double acc_shift[COL_CHUNK] = {0}, acc_scale[COL_CHUNK] = {0};
            for (int64_t t = 0; t < T; t++) {
                int64_t r = b * T + t;
                const float *dyr = dyd + r * D + j0, *xr = xd + r * D + j0;
                float mu = md[r], rs = rd[r];
                for (int64_t j = 0; j < nb; j++) {
                    acc_shift[j] += dyr[j];
                    acc_scale[j] += (double)dyr[j] * ((xr[j] - mu) * rs);
                }
            }
            if (dsd)
                for (int64_t j = 0; j < nb; j++) dsd[b * mds.ld + j0 + j] = (float)acc_shift[j];
            if (dcd)
                for (int64_t j = 0; j < nb; j++) dcd[b * mdc.ld + j0 + j] = (float)acc_scale[j];
        }
    }
}

void fl_cpu_rmsnorm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, fl_tensor *y, fl_tensor *rstd,
                    float eps) {
    (void)ctx;
    int64_t D = x->shape[x->ndim - 1], R = fl_tensor_numel(rstd);
    const float *xd = x->data, *w = weight->data;
    float *yd = y->data, *rd = rstd->data;
    FL_OMP(omp parallel for schedule(static) if (R * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < R; r++) {
        const float *xr = xd + r * D;
        float *yr = yd + r * D;
        double ss = 0.0;
        FL_SIMD_REDUCTION(omp simd reduction(+ : ss))
        for (int64_t j = 0; j < D; j++) ss += (double)xr[j] * xr[j];
        float rs = (float)(1.0 / sqrt((D ? ss / (double)D : 0.0) + (double)eps));
        rd[r] = rs;
        for (int64_t j = 0; j < D; j++) yr[j] = xr[j] * rs * w[j];
    }
}

void fl_cpu_rmsnorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *weight,
                             const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dweight) {
    (void)ctx;
    int64_t D = x->shape[x->ndim - 1], R = fl_tensor_numel(rstd);
    const float *dyd = dy->data, *xd = x->data, *w = weight->data, *rd = rstd->data;
    float *dxd = dx->data;
    int threads = fl_cpu_thread_count();
    /* one dweight partial per thread, summed in thread order afterwards */
    double *parts = dweight ? calloc((size_t)threads * (size_t)(D ? D : 1), sizeof(double)) : NULL;
    FL_CHECK(!dweight || parts);
    FL_OMP(omp parallel if (R * D > FL_CPU_PARALLEL_MIN))
    {
        double *part = parts ? parts + (size_t)fl_cpu_thread_id() * (size_t)D : NULL;
        FL_OMP(omp for schedule(static))
        for (int64_t r = 0; r < R; r++) {
            const float *dyr = dyd + r * D, *xr = xd + r * D;
            float *dxr = dxd + r * D;
            float rs = rd[r];
            double s = 0.0;
            FL_SIMD_REDUCTION(omp simd reduction(+ : s))
            for (int64_t j = 0; j < D; j++) s += (double)dyr[j] * w[j] * xr[j];
            float c = D ? (float)(s / (double)D) * rs * rs : 0.0f;
            if (part)
                for (int64_t j = 0; j < D; j++) part[j] += (double)dyr[j] * xr[j] * rs;
            for (int64_t j = 0; j < D; j++) dxr[j] = rs * (dyr[j] * w[j] - xr[j] * c);
        }
    }
    if (!parts) return;
    float *dw = dweight->data;
    for (int64_t j = 0; j < D; j++) {
        double total = 0.0;
        for (int t = 0; t < threads; t++) total += parts[(size_t)t * (size_t)D + (size_t)j];
        dw[j] += (float)total;
    }
    free(parts);
}
