/*
 * cpu_conv.c — the image ops of the CPU backend: 2-D convolution, GroupNorm (optionally fused
 * with SiLU) and nearest 2x upsampling, all over NCHW tensors (the autoencoder's layout).
 *
 * Convolution is a GEMM per image, y[O, Ho*Wo] = w[O, C*KH*KW] * col[C*KH*KW, Ho*Wo], where col is
 * the im2col matrix of the padded input. The whole col of a 1024x1024 image with 128 channels
 * and a 3x3 kernel would hold 1.2 G elements, so it is built one tile of output rows at a time
 * (at most FL_CONV2D_TILE_ELEMS elements, fl_conv2d_scratch_elements) and each tile's product is
 * written straight into its rows of y (row stride Ho*Wo). A 1x1 kernel with stride 1 and no
 * padding needs no col at all: x itself is [C, H*W]. The bias is written into y first and the
 * GEMM accumulates onto it. Small products (a tiny model, a low-resolution stage) run on the
 * calling thread with the blocked kernel of cpu_gemm.c; large ones go to the threaded BLAS.
 *
 * GroupNorm statistics are computed in double (two passes: mean, then the squared deviations)
 * from the stored f32 values, one task per (sample, group); a group is one contiguous span of
 * C/groups channels.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

/* These loops only move memory (or nearly): below this many elements a second thread costs more
 * than it saves, and on a busy machine far more (every parallel region is a barrier). */
#define IMAGE_PARALLEL_MIN ((int64_t)1 << 18)
/* Products of at most this many multiply-adds run on the calling thread (a few milliseconds);
 * larger ones go to the threaded BLAS. */
#define GEMM_SERIAL_MAX ((int64_t)1 << 24)

/* ---- conv2d ------------------------------------------------------------------------------------- */

typedef struct conv_geom {
    int64_t C, H, W, KH, KW, Ho, Wo;
    int stride;
    fl_conv2d_pad pad;
} conv_geom;

/* First output column j with j * stride + off >= 0, and one past the last with j * stride + off < W. */
static void valid_cols(const conv_geom *g, int64_t off, int64_t *j0, int64_t *j1) {
    int64_t s = g->stride;
    int64_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
    int64_t hi = g->W - 1 - off < 0 ? 0 : (g->W - 1 - off) / s + 1;
    if (hi > g->Wo) hi = g->Wo;
    if (lo > hi) lo = hi;
    *j0 = lo;
    *j1 = hi;
}

/* col[K, rows * Wo] for output rows [i0, i0 + rows) of one image xb [C, H, W]. */
static void im2col_tile(const conv_geom *g, const float *xb, int64_t i0, int64_t rows, float *col) {
    const int64_t K = g->C * g->KH * g->KW, P = rows * g->Wo;
    FL_OMP(omp parallel for schedule(static) if (K * P > IMAGE_PARALLEL_MIN))
    for (int64_t k = 0; k < K; k++) {
        const int64_t c = k / (g->KH * g->KW), u = (k / g->KW) % g->KH, v = k % g->KW;
        const int64_t off = v - g->pad.left;
        int64_t j0, j1;
        valid_cols(g, off, &j0, &j1);
        float *dst = col + k * P;
        for (int64_t r = 0; r < rows; r++, dst += g->Wo) {
            const int64_t hi = (i0 + r) * g->stride + u - g->pad.top;
            if (hi < 0 || hi >= g->H || j0 >= j1) {
                memset(dst, 0, (size_t)g->Wo * sizeof(float));
                continue;
            }
            const float *src = xb + (c * g->H + hi) * g->W; /* input column j * stride + off */
            if (j0 > 0) memset(dst, 0, (size_t)j0 * sizeof(float));
            if (g->stride == 1) {
                memcpy(dst + j0, src + j0 + off, (size_t)(j1 - j0) * sizeof(float));
            } else {
                for (int64_t j = j0; j < j1; j++) dst[j] = src[j * g->stride + off];
            }
            if (j1 < g->Wo) memset(dst + j1, 0, (size_t)(g->Wo - j1) * sizeof(float));
        }
    }
}

/* y[O, n] (row stride ld) = w[O, K] * col[K, n] + bias (per row; none: 0). */
static void conv_gemm(const float *w, const float *bias, int64_t O, int64_t K, const float *col, int64_t n,
                      float *y, int64_t ld) {
    const bool serial = O * n * K <= GEMM_SERIAL_MAX;
    if (bias || serial) {
        FL_OMP(omp parallel for schedule(static) if (O * n > IMAGE_PARALLEL_MIN))
        for (int64_t o = 0; o < O; o++) {
            float *row = y + o * ld, b = bias ? bias[o] : 0.0f;
            for (int64_t p = 0; p < n; p++) row[p] = b;
        }
    }
    if (serial) fl_cpu_gemm_acc_serial(O, n, K, 1.0f, w, K, 1, col, n, y, ld);
    else fl_cpu_sgemm(false, false, O, n, K, 1.0f, w, K, col, n, bias ? 1.0f : 0.0f, y, ld);
}

void fl_cpu_conv2d(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y,
                   int stride, fl_conv2d_pad pad) {
    (void)ctx;
    conv_geom g = {x->shape[1], x->shape[2], x->shape[3], w->shape[2], w->shape[3], y->shape[2], y->shape[3],
                   stride, pad};
    const int64_t B = x->shape[0], O = w->shape[0], K = g.C * g.KH * g.KW, HWo = g.Ho * g.Wo;
    if (B == 0 || O == 0 || HWo == 0) return;
    const float *xd = x->data, *wd = w->data, *bd = bias ? bias->data : NULL;
    float *yd = y->data;
    const int64_t scratch = fl_conv2d_scratch_elements(g.C, g.KH, g.KW, g.Ho, g.Wo, stride, pad);
    if (scratch == 0) { /* 1x1, stride 1, no padding: y[b] = w [O, C] * x[b] [C, H*W] */
        for (int64_t b = 0; b < B; b++) conv_gemm(wd, bd, O, K, xd + b * g.C * g.H * g.W, HWo, yd + b * O * HWo, HWo);
        return;
    }
    const int64_t tile_rows = scratch / (K * g.Wo);
    float *col = fl_xmalloc((size_t)scratch * sizeof(float));
    for (int64_t b = 0; b < B; b++) {
        const float *xb = xd + b * g.C * g.H * g.W;
        float *yb = yd + b * O * HWo;
        for (int64_t i0 = 0; i0 < g.Ho; i0 += tile_rows) {
            const int64_t rows = g.Ho - i0 < tile_rows ? g.Ho - i0 : tile_rows, P = rows * g.Wo;
            im2col_tile(&g, xb, i0, rows, col);
            conv_gemm(wd, bd, O, K, col, P, yb + i0 * g.Wo, HWo);
        }
    }
    free(col);
}

/* ---- group_norm --------------------------------------------------------------------------------- */

void fl_cpu_group_norm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias, fl_tensor *y,
                       int groups, float eps, bool silu) {
    (void)ctx;
    const int64_t B = x->shape[0], C = x->shape[1], numel = fl_tensor_numel(x);
    if (numel == 0) return;
    const int64_t S = numel / (B * C), cpg = C / groups, n = cpg * S, tasks = B * groups;
    const float *xd = x->data, *wd = weight->data, *bd = bias->data;
    float *yd = y->data;
    FL_OMP(omp parallel for schedule(dynamic) if (numel > IMAGE_PARALLEL_MIN))
    for (int64_t t = 0; t < tasks; t++) {
        const float *xg = xd + t * n;
        float *yg = yd + t * n;
        double sum = 0.0;
        FL_SIMD_REDUCTION(omp simd reduction(+ : sum))
        for (int64_t i = 0; i < n; i++) sum += xg[i];
        const double mean = sum / (double)n;
        double sq = 0.0;
        FL_SIMD_REDUCTION(omp simd reduction(+ : sq))
        for (int64_t i = 0; i < n; i++) {
            const double d = xg[i] - mean;
            sq += d * d;
        }
        const float mu = (float)mean, rstd = (float)(1.0 / sqrt(sq / (double)n + (double)eps));
        const int64_t c0 = (t % groups) * cpg;
        for (int64_t cc = 0; cc < cpg; cc++) {
            const float scale = rstd * wd[c0 + cc], shift = bd[c0 + cc];
            const float *xr = xg + cc * S;
            float *yr = yg + cc * S;
            if (silu) {
                for (int64_t i = 0; i < S; i++) {
                    const float v = (xr[i] - mu) * scale + shift;
                    yr[i] = v / (1.0f + expf(-v));
                }
            } else {
                for (int64_t i = 0; i < S; i++) yr[i] = (xr[i] - mu) * scale + shift;
            }
        }
    }
}

/* ---- upsample_nearest2x ------------------------------------------------------------------------- */

void fl_cpu_upsample_nearest2x(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    (void)ctx;
    const int64_t planes = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
    const float *xd = x->data;
    float *yd = y->data;
    FL_OMP(omp parallel for schedule(static) if (planes * H * W * 4 > IMAGE_PARALLEL_MIN))
    for (int64_t r = 0; r < planes * H; r++) { /* input row r -> output rows 2i and 2i + 1 of its plane */
        const float *src = xd + r * W;
        float *dst = yd + r * 4 * W;
        for (int64_t j = 0; j < W; j++) dst[2 * j] = dst[2 * j + 1] = src[j];
        memcpy(dst + 2 * W, dst, (size_t)(2 * W) * sizeof(float));
    }
}
