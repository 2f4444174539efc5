/*
 * test_cuda_face.c — parity of the CUDA ops of dlib's face networks (pool2d max and average,
 * channel_affine with and without ReLU and in place, relu, add_padded with channel and spatial
 * padding and in place) with the CPU reference in F32 and BF16 storage, at the geometries of the
 * face ResNet and the MMOD detector. Exits 77 where no CUDA device is usable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "parity.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static void pool_case(fl_dtype dt, int64_t B, int64_t C, int64_t H, int64_t W, int k, int s, int p, bool max,
                      uint64_t seed) {
    int64_t Ho = k ? 1 + (H + 2 * p - k) / s : 1, Wo = k ? 1 + (W + 2 * p - k) / s : 1;
    pt_pair x = pt_randn(dt, 4, SHAPE(B, C, H, W), seed, 1.0f);
    pt_pair y = pt_full(dt, 4, SHAPE(B, C, Ho, Wo), NAN);
    for (int side = 0; side < 2; side++) fl_op_pool2d(pt_ctx(side), &x.t[side], &y.t[side], k, k, s, s, p, p, max);
    char what[128];
    snprintf(what, sizeof what, "%s pool %lldx%lld k=%d s=%d p=%d", max ? "max" : "avg", (long long)H, (long long)W, k,
             s, p);
    PT_CHECK(what, &y, pt_tol_for(dt, 1e-6, 1e-5, 1e-2, 1e-2));
    pt_free(&x);
    pt_free(&y);
}

static void test_pool2d(void) {
    for (int di = 0; di < 2; di++)
        for (int m = 0; m < 2; m++) {
            pool_case(pt_dtypes[di], 2, 32, 72, 72, 3, 2, 0, m, 1);
            pool_case(pt_dtypes[di], 2, 64, 17, 17, 2, 2, 0, m, 2);
            pool_case(pt_dtypes[di], 2, 256, 2, 2, 0, 1, 0, m, 3);
            pool_case(pt_dtypes[di], 1, 5, 9, 7, 3, 1, 1, m, 4);
        }
}

static void test_channel_affine(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        for (int relu = 0; relu < 2; relu++)
            for (int in_place = 0; in_place < 2; in_place++) {
                pt_pair x = pt_randn(dt, 4, SHAPE(2, 45, 13, 11), 10 + relu, 1.0f);
                pt_pair s = pt_randn(dt, 1, SHAPE(45), 20, 1.0f), h = pt_randn(dt, 1, SHAPE(45), 21, 1.0f);
                pt_pair y = in_place ? x : pt_full(dt, 4, SHAPE(2, 45, 13, 11), NAN);
                for (int side = 0; side < 2; side++)
                    fl_op_channel_affine(pt_ctx(side), &x.t[side], &s.t[side], &h.t[side], &y.t[side], relu);
                char what[64];
                snprintf(what, sizeof what, "channel_affine relu=%d in_place=%d", relu, in_place);
                PT_CHECK(what, &y, pt_tol_for(dt, 1e-6, 1e-6, 1e-2, 1e-2));
                if (!in_place) pt_free(&y);
                pt_free(&x);
                pt_free(&s);
                pt_free(&h);
            }
    }
}

static void test_relu(void) {
    for (int di = 0; di < 2; di++) {
        pt_pair x = pt_randn(pt_dtypes[di], 2, SHAPE(33, 70), 30, 1.0f), y = pt_full(pt_dtypes[di], 2, SHAPE(33, 70), NAN);
        for (int side = 0; side < 2; side++) fl_op_relu(pt_ctx(side), &x.t[side], &y.t[side]);
        PT_CHECK("relu", &y, pt_tol_for(pt_dtypes[di], 0, 0, 0, 0));
        pt_free(&x);
        pt_free(&y);
    }
}

static void add_case(fl_dtype dt, const int64_t *sa, const int64_t *sb, bool in_place, uint64_t seed) {
    int64_t so[4];
    for (int d = 0; d < 4; d++) so[d] = sa[d] > sb[d] ? sa[d] : sb[d];
    pt_pair a = pt_randn(dt, 4, sa, seed, 1.0f), b = pt_randn(dt, 4, sb, seed + 1, 1.0f);
    pt_pair out = in_place ? a : pt_full(dt, 4, so, NAN);
    for (int side = 0; side < 2; side++) fl_op_add_padded(pt_ctx(side), &a.t[side], &b.t[side], &out.t[side]);
    PT_CHECK("add_padded", &out, pt_tol_for(dt, 1e-6, 1e-6, 1e-2, 1e-2));
    if (!in_place) pt_free(&out);
    pt_free(&a);
    pt_free(&b);
}

static void test_add_padded(void) {
    for (int di = 0; di < 2; di++) {
        add_case(pt_dtypes[di], SHAPE(2, 32, 17, 17), SHAPE(2, 64, 17, 17), false, 40);
        add_case(pt_dtypes[di], SHAPE(1, 256, 3, 3), SHAPE(1, 256, 4, 4), false, 42);
        add_case(pt_dtypes[di], SHAPE(2, 64, 8, 8), SHAPE(2, 32, 8, 8), true, 44);
    }
}

int main(void) {
    pt_setup();
    FL_RUN(test_pool2d);
    FL_RUN(test_channel_affine);
    FL_RUN(test_relu);
    FL_RUN(test_add_padded);
    pt_teardown();
    return fl_test_finish();
}
