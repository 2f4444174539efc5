/*
 * test_cuda_conv.c — parity of the CUDA image ops (conv2d, group_norm with and without SiLU,
 * upsample_nearest2x) with the CPU reference in F32 and BF16 storage, at every geometry the
 * autoencoder uses (3x3 stride 1 pad 1, 3x3 stride 2 with the (0, 1, 0, 1) pad, 1x1), with and
 * without bias, a convolution whose im2col takes two row tiles, groups large enough for several
 * stage-1 chunks, in-place GroupNorm, and the mid-block attention shape (one head, D = 512).
 * Exits 77 where no CUDA device is usable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "parity.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static const fl_conv2d_pad pad_same = {1, 1, 1, 1}, pad_down = {0, 1, 0, 1}, pad_none = {0, 0, 0, 0};

static void conv_case(fl_dtype dt, int64_t B, int64_t C, int64_t H, int64_t W, int64_t O, int64_t k, int stride,
                      fl_conv2d_pad pad, bool with_bias, uint64_t seed) {
    const int64_t Ho = (H + pad.top + pad.bottom - k) / stride + 1, Wo = (W + pad.left + pad.right - k) / stride + 1;
    pt_pair x = pt_randn(dt, 4, SHAPE(B, C, H, W), seed, 1.0f);
    pt_pair w = pt_randn(dt, 4, SHAPE(O, C, k, k), seed + 1, 1.0f / sqrtf((float)(C * k * k)));
    pt_pair bias = pt_randn(dt, 1, SHAPE(O), seed + 2, 1.0f);
    pt_pair y = pt_full(dt, 4, SHAPE(B, O, Ho, Wo), NAN);
    for (int s = 0; s < 2; s++) fl_op_conv2d(pt_ctx(s), &x.t[s], &w.t[s], with_bias ? &bias.t[s] : NULL, &y.t[s], stride, pad);
    char what[160];
    snprintf(what, sizeof what, "conv2d B=%lld C=%lld %lldx%lld O=%lld k=%lld s=%d pad=(%d,%d,%d,%d) bias=%d",
             (long long)B, (long long)C, (long long)H, (long long)W, (long long)O, (long long)k, stride, pad.left,
             pad.right, pad.top, pad.bottom, with_bias);
    PT_CHECK(what, &y, pt_tol_for(dt, 2e-4, 2e-4, 2e-2, 1e-2));
    pt_free(&x);
    pt_free(&w);
    pt_free(&bias);
    pt_free(&y);
}

static void test_conv2d(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        for (int b = 0; b < 2; b++) {
            conv_case(dt, 2, 5, 9, 7, 6, 3, 1, pad_same, b, 10);
            conv_case(dt, 2, 5, 10, 6, 4, 3, 2, pad_down, b, 20);
            conv_case(dt, 1, 3, 9, 11, 4, 3, 2, pad_down, b, 30);
            conv_case(dt, 2, 7, 5, 8, 9, 1, 1, pad_none, b, 40);
        }
        conv_case(dt, 1, 4, 12, 12, 5, 4, 4, pad_none, true, 50); /* patch conv */
        conv_case(dt, 1, 32, 64, 48, 32, 3, 1, pad_same, true, 60);
        conv_case(dt, 1, 64, 128, 128, 8, 3, 1, pad_same, true, 70); /* two row tiles */
        conv_case(dt, 1, 64, 64, 64, 128, 1, 1, pad_none, true, 80);  /* nin_shortcut at width */
    }
}

static void group_norm_case(fl_dtype dt, const int64_t *shape, int groups, bool silu, bool in_place, float offset,
                            uint64_t seed) {
    const int64_t C = shape[1];
    pt_pair x = pt_randn(dt, 4, shape, seed, 1.5f);
    if (offset != 0.0f) {
        float *v = pt_get(&x, PT_CPU);
        for (size_t i = 0; i < x.n; i++) v[i] += offset;
        pt_set(&x, v);
        free(v);
    }
    pt_pair w = pt_randn(dt, 1, SHAPE(C), seed + 1, 1.0f), b = pt_randn(dt, 1, SHAPE(C), seed + 2, 1.0f);
    pt_pair y = in_place ? x : pt_full(dt, 4, shape, NAN);
    for (int s = 0; s < 2; s++) fl_op_group_norm(pt_ctx(s), &x.t[s], &w.t[s], &b.t[s], &y.t[s], groups, 1e-6f, silu);
    char what[160];
    snprintf(what, sizeof what, "group_norm [%lld, %lld, %lld, %lld] groups=%d silu=%d in_place=%d offset=%g",
             (long long)shape[0], (long long)C, (long long)shape[2], (long long)shape[3], groups, silu, in_place,
             (double)offset);
    PT_CHECK(what, &y, pt_tol_for(dt, offset != 0.0f ? 2e-3 : 2e-5, 1e-4, 3e-2, 2e-2));
    if (!in_place) pt_free(&y);
    pt_free(&x);
    pt_free(&w);
    pt_free(&b);
}

static void test_group_norm(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        for (int silu = 0; silu < 2; silu++) {
            group_norm_case(dt, SHAPE(2, 64, 5, 7), 32, silu, false, 0.0f, 100);
            group_norm_case(dt, SHAPE(2, 64, 5, 7), 32, silu, true, 0.0f, 110);
            group_norm_case(dt, SHAPE(1, 128, 96, 80), 32, silu, false, 0.0f, 120); /* 30720 per group: 8 chunks */
            group_norm_case(dt, SHAPE(1, 96, 9, 11), 32, silu, false, 100.0f, 130);  /* large common offset */
        }
    }
}

static void test_upsample(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        pt_pair x = pt_randn(dt, 4, SHAPE(2, 3, 5, 7), 200, 1.0f), y = pt_full(dt, 4, SHAPE(2, 3, 10, 14), NAN);
        for (int s = 0; s < 2; s++) fl_op_upsample_nearest2x(pt_ctx(s), &x.t[s], &y.t[s]);
        PT_CHECK("upsample_nearest2x", &y, (pt_tol){0.0, 0.0}); /* a copy: exact */
        pt_free(&x);
        pt_free(&y);
    }
}

/* The autoencoder's mid-block attention: one head over every position, D = 512 (the CUDA
 * kernels' limit), no score matrix materialized. */
static void test_mid_block_attention(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t L = 1024, D = 512;
        pt_pair q = pt_randn(dt, 4, SHAPE(1, 1, L, D), 300, 1.0f), k = pt_randn(dt, 4, SHAPE(1, 1, L, D), 301, 1.0f);
        pt_pair v = pt_randn(dt, 4, SHAPE(1, 1, L, D), 302, 1.0f);
        pt_pair out = pt_full(dt, 4, SHAPE(1, 1, L, D), NAN), lse = pt_full(FL_F32, 3, SHAPE(1, 1, L), NAN);
        for (int s = 0; s < 2; s++)
            fl_op_attention(pt_ctx(s), &q.t[s], &k.t[s], &v.t[s], &out.t[s], &lse.t[s], 1.0f / sqrtf((float)D));
        PT_CHECK("mid-block attention out", &out, pt_tol_for(dt, 1e-4, 1e-3, 1e-2, 1e-2));
        PT_CHECK("mid-block attention lse", &lse, (pt_tol){1e-4, 1e-5});
        pt_free(&q);
        pt_free(&k);
        pt_free(&v);
        pt_free(&out);
        pt_free(&lse);
    }
}

int main(void) {
    pt_setup();
    FL_RUN(test_conv2d);
    FL_RUN(test_group_norm);
    FL_RUN(test_upsample);
    FL_RUN(test_mid_block_attention);
    pt_teardown();
    return fl_test_finish();
}
