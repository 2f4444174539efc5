/*
 * test_ops_conv.c — CPU conv2d, group_norm and upsample_nearest2x against naive loops in double.
 *
 * conv2d: every geometry the autoencoder uses (3x3 stride 1 pad 1; 3x3 stride 2 with the
 * asymmetric (0, 1, 0, 1) pad; 1x1) on odd, non-square images, with and without bias, batch 2,
 * plus odd strides/pads/rectangular kernels, an empty output channel count, an image large enough
 * that the im2col is split into several row tiles (and a final short tile), and planning mode.
 * group_norm: with and without the fused SiLU, in place, on rows with a large common offset
 * (the variance must not cancel), 4-d and 3-d inputs. Forward-only ops (the autoencoder is
 * frozen), so there are no gradient checks here.
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

#define SHAPE4(a, b, c, d) ((const int64_t[]){a, b, c, d})

/* ---- conv2d ------------------------------------------------------------------------------------- */

static void ref_conv2d(const float *x, const float *w, const float *bias, int64_t B, int64_t C, int64_t H, int64_t W,
                       int64_t O, int64_t KH, int64_t KW, int stride, fl_conv2d_pad pad, int64_t Ho, int64_t Wo,
                       float *y) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < Ho; i++)
                for (int64_t j = 0; j < Wo; j++) {
                    double acc = bias ? bias[o] : 0.0;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t u = 0; u < KH; u++)
                            for (int64_t v = 0; v < KW; v++) {
                                int64_t hi = i * stride + u - pad.top, wi = j * stride + v - pad.left;
                                if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
                                acc += (double)w[((o * C + c) * KH + u) * KW + v] * x[((b * C + c) * H + hi) * W + wi];
                            }
                    y[((b * O + o) * Ho + i) * Wo + j] = (float)acc;
                }
}

static void conv_case(int64_t B, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int stride,
                      fl_conv2d_pad pad, bool with_bias, uint64_t seed) {
    int64_t Ho = (H + pad.top + pad.bottom - KH) / stride + 1, Wo = (W + pad.left + pad.right - KW) / stride + 1;
    size_t nx = (size_t)(B * C * H * W), nw = (size_t)(O * C * KH * KW), ny = (size_t)(B * O * Ho * Wo);
    float *x = fl_test_randn(nx, seed, 1.0f), *w = fl_test_randn(nw, seed + 1, 0.3f);
    float *bias = fl_test_randn((size_t)O, seed + 2, 1.0f);
    float *y = kt_alloc(ny), *want = kt_alloc(ny);
    kt_fill_nan(y, ny); /* every output element must be written */
    ref_conv2d(x, w, with_bias ? bias : NULL, B, C, H, W, O, KH, KW, stride, pad, Ho, Wo, want);
    fl_tensor tx = fl_tensor_f32_4d(x, B, C, H, W), tw = fl_tensor_f32_4d(w, O, C, KH, KW);
    fl_tensor ty = fl_tensor_f32_4d(y, B, O, Ho, Wo), tb = fl_tensor_f32_1d(bias, O);
    fl_op_conv2d(ctx, &tx, &tw, with_bias ? &tb : NULL, &ty, stride, pad);
    char what[160];
    snprintf(what, sizeof what, "conv2d B=%lld C=%lld %lldx%lld O=%lld k=%lldx%lld s=%d pad=(%d,%d,%d,%d) bias=%d",
             (long long)B, (long long)C, (long long)H, (long long)W, (long long)O, (long long)KH, (long long)KW, stride,
             pad.left, pad.right, pad.top, pad.bottom, with_bias);
    FL_EXPECT_CLOSE(what, y, want, ny, 1e-5, 1e-5);
    free(x);
    free(w);
    free(bias);
    free(y);
    free(want);
}

static const fl_conv2d_pad pad_same = {1, 1, 1, 1}, pad_down = {0, 1, 0, 1}, pad_none = {0, 0, 0, 0};

static void test_conv2d_autoencoder_geometries(void) {
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        conv_case(2, 5, 9, 7, 6, 3, 3, 1, pad_same, with_bias, 10);  /* conv3x3, odd sizes */
        conv_case(2, 5, 10, 6, 4, 3, 3, 2, pad_down, with_bias, 20); /* downsample, even sizes */
        conv_case(1, 3, 9, 11, 4, 3, 3, 2, pad_down, with_bias, 30); /* downsample, odd sizes */
        conv_case(2, 7, 5, 8, 9, 1, 1, 1, pad_none, with_bias, 40);  /* nin_shortcut, q/k/v */
        conv_case(1, 3, 16, 16, 32, 3, 3, 1, pad_same, with_bias, 50); /* conv_in of an RGB image */
    }
}

static void test_conv2d_other_geometries(void) {
    conv_case(1, 3, 12, 13, 5, 4, 4, 4, pad_none, true, 60);           /* patch conv, k = stride */
    conv_case(2, 2, 6, 9, 3, 2, 5, 3, (fl_conv2d_pad){2, 0, 1, 3}, true, 70); /* rectangular, odd pads */
    conv_case(1, 4, 5, 5, 3, 1, 1, 2, pad_none, true, 80);             /* 1x1 with stride: not direct */
    conv_case(1, 4, 3, 3, 2, 1, 1, 1, pad_same, false, 90);            /* 1x1 with padding: not direct */
    conv_case(1, 2, 1, 1, 3, 3, 3, 1, pad_same, true, 100);            /* a single pixel */
    conv_case(2, 3, 4, 4, 0, 3, 3, 1, pad_same, true, 110);            /* no output channel */
}

/* K * Wo = 64 * 9 * 128 = 73728 per output row, so the 2^23-element tile holds 113 rows: the 128
 * output rows take a full tile and a short one. */
static void test_conv2d_row_tiles(void) {
    const int64_t C = 64, K = C * 9, Wo = 128;
    int64_t scratch = fl_conv2d_scratch_elements(C, 3, 3, 128, Wo, 1, pad_same);
    FL_EXPECTF(scratch == (FL_CONV2D_TILE_ELEMS / (K * Wo)) * K * Wo && scratch / (K * Wo) < 128,
               "scratch %lld elements", (long long)scratch);
    FL_EXPECT(fl_conv2d_scratch_elements(C, 1, 1, 128, Wo, 1, pad_none) == 0);
    /* one row bigger than the tile: one row's worth */
    FL_EXPECT(fl_conv2d_scratch_elements(4096, 3, 3, 8, 1024, 1, pad_same) == 4096 * 9 * 1024);
    /* small images: the whole col */
    FL_EXPECT(fl_conv2d_scratch_elements(3, 3, 3, 5, 7, 1, pad_same) == 27 * 35);
    conv_case(1, C, 128, Wo, 8, 3, 3, 1, pad_same, true, 120);
}

static void test_conv2d_planning(void) {
    float *x = fl_test_randn(2 * 3 * 8 * 8, 5, 1.0f), *w = fl_test_randn(4 * 3 * 9, 6, 1.0f);
    float *y = kt_alloc(2 * 4 * 4 * 4);
    kt_fill_nan(y, 2 * 4 * 4 * 4);
    float *before = kt_dup(y, 2 * 4 * 4 * 4);
    fl_tensor tx = fl_tensor_f32_4d(x, 2, 3, 8, 8), tw = fl_tensor_f32_4d(w, 4, 3, 3, 3);
    fl_tensor ty = fl_tensor_f32_4d(y, 2, 4, 4, 4);
    ctx->planning = true;
    fl_op_conv2d(ctx, &tx, &tw, NULL, &ty, 2, pad_down);
    ctx->planning = false;
    FL_EXPECT(kt_same_bits(y, before, sizeof(float) * 2 * 4 * 4 * 4));
    free(x);
    free(w);
    free(y);
    free(before);
}

/* ---- group_norm --------------------------------------------------------------------------------- */

static void ref_group_norm(const float *x, const float *w, const float *b, int64_t B, int64_t C, int64_t S, int groups,
                           double eps, bool silu, float *y) {
    int64_t cpg = C / groups, n = cpg * S;
    for (int64_t t = 0; t < B * groups; t++) {
        const float *xg = x + t * n;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < n; i++) mean += xg[i];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) var += (xg[i] - mean) * (xg[i] - mean);
        var /= (double)n;
        double rstd = 1.0 / sqrt(var + eps);
        for (int64_t i = 0; i < n; i++) {
            int64_t c = (t % groups) * cpg + i / S;
            double v = (xg[i] - mean) * rstd * w[c] + b[c];
            if (silu) v = v / (1.0 + exp(-v));
            y[t * n + i] = (float)v;
        }
    }
}

static void group_norm_case(int ndim, const int64_t *shape, int groups, bool silu, bool in_place, float offset,
                            uint64_t seed) {
    int64_t B = shape[0], C = shape[1], S = 1;
    for (int i = 2; i < ndim; i++) S *= shape[i];
    size_t n = (size_t)(B * C * S);
    float *x = fl_test_randn(n, seed, 1.5f), *w = fl_test_randn((size_t)C, seed + 1, 1.0f);
    float *b = fl_test_randn((size_t)C, seed + 2, 1.0f), *want = kt_alloc(n);
    for (size_t i = 0; i < n; i++) x[i] += offset;
    ref_group_norm(x, w, b, B, C, S, groups, 1e-6, silu, want);
    float *y = in_place ? x : kt_alloc(n);
    if (!in_place) kt_fill_nan(y, n);
    fl_tensor tx = fl_tensor_make(x, FL_F32, fl_device_cpu(), ndim, shape);
    fl_tensor ty = fl_tensor_make(y, FL_F32, fl_device_cpu(), ndim, shape);
    fl_tensor tw = fl_tensor_f32_1d(w, C), tb = fl_tensor_f32_1d(b, C);
    fl_op_group_norm(ctx, &tx, &tw, &tb, &ty, groups, 1e-6f, silu);
    char what[128];
    snprintf(what, sizeof what, "group_norm ndim=%d C=%lld groups=%d silu=%d in_place=%d offset=%g", ndim,
             (long long)C, groups, silu, in_place, (double)offset);
    /* an offset of 1000 costs its f32 rounding (~6e-5 absolute) before normalization */
    FL_EXPECT_CLOSE(what, y, want, n, offset > 100.0f ? 2e-4 : 2e-6, 2e-6);
    free(x);
    free(w);
    free(b);
    free(want);
    if (!in_place) free(y);
}

static void test_group_norm(void) {
    for (int silu = 0; silu < 2; silu++) {
        group_norm_case(4, SHAPE4(2, 64, 5, 7), 32, silu, false, 0.0f, 200);
        group_norm_case(4, SHAPE4(2, 64, 5, 7), 32, silu, true, 0.0f, 210);
        group_norm_case(4, SHAPE4(1, 96, 3, 4), 32, silu, false, 1000.0f, 220); /* large common offset */
        group_norm_case(3, ((const int64_t[]){3, 12, 10}), 4, silu, false, 0.0f, 230);
        group_norm_case(4, SHAPE4(1, 32, 64, 64), 32, silu, false, 0.5f, 240); /* threaded */
    }
}

/* ---- upsample_nearest2x ------------------------------------------------------------------------- */

static void test_upsample(void) {
    const int64_t B = 2, C = 3, H = 5, W = 7;
    float *x = fl_test_randn((size_t)(B * C * H * W), 300, 1.0f), *y = kt_alloc((size_t)(B * C * 4 * H * W));
    kt_fill_nan(y, (size_t)(B * C * 4 * H * W));
    fl_tensor tx = fl_tensor_f32_4d(x, B, C, H, W), ty = fl_tensor_f32_4d(y, B, C, 2 * H, 2 * W);
    fl_op_upsample_nearest2x(ctx, &tx, &ty);
    int bad = 0;
    for (int64_t p = 0; p < B * C; p++)
        for (int64_t i = 0; i < 2 * H; i++)
            for (int64_t j = 0; j < 2 * W; j++)
                bad += memcmp(&y[(p * 2 * H + i) * 2 * W + j], &x[(p * H + i / 2) * W + j / 2], sizeof(float)) != 0;
    FL_EXPECTF(bad == 0, "%d upsampled elements differ from their source", bad);
    free(x);
    free(y);
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_conv2d_autoencoder_geometries);
    FL_RUN(test_conv2d_other_geometries);
    FL_RUN(test_conv2d_row_tiles);
    FL_RUN(test_conv2d_planning);
    FL_RUN(test_group_norm);
    FL_RUN(test_upsample);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
