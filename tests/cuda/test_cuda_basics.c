/*
 * test_cuda_basics.c — the CUDA context and layout ops against the CPU reference: context
 * creation and failure, memory and transfers in every dtype, strided copy (permutations, slices,
 * 6-d walks, dtype conversions, a large transpose), strided fill, and planning mode (ops validate
 * and compute nothing). Exits 77 where no CUDA device is usable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "parity.h"

static const pt_tol EXACT = {0.0, 0.0};

static void test_context(void) {
    fl_error err;
    memset(&err, 0, sizeof err);
    fl_device missing = {FL_DEVICE_CUDA, fl_cuda_device_count()};
    fl_ctx *none = fl_ctx_create(missing, &err);
    FL_EXPECT(none == NULL);
    FL_EXPECT(err.code == FL_EUNSUPPORTED);

    fl_ctx *gpu = pt_ctx(PT_GPU);
    FL_EXPECT(fl_ctx_alloc(gpu, (size_t)1 << 60) == NULL); /* out of memory is NULL, not an abort */

    enum { N = 1000 };
    unsigned char src[N], back[N];
    for (int i = 0; i < N; i++) src[i] = (unsigned char)(i * 7 + 3);
    void *buf = fl_ctx_alloc(gpu, N);
    FL_EXPECT(buf != NULL);
    fl_ctx_upload(gpu, buf, src, N);
    memset(back, 0, N);
    fl_ctx_download(gpu, back, buf, N);
    FL_EXPECT(memcmp(src, back, N) == 0);
    fl_ctx_synchronize(gpu);
    fl_ctx_free(gpu, buf);
}

static void test_transfers_every_dtype(void) {
    const fl_dtype dtypes[3] = {FL_F32, FL_BF16, FL_F16};
    const int64_t shape[2] = {37, 29};
    const size_t n = 37 * 29;
    float *values = fl_test_randn(n, 11, 3.0f), *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    for (int d = 0; d < 3; d++) {
        for (size_t i = 0; i < n; i++) want[i] = pt_round(dtypes[d], values[i]);
        fl_tensor t = fl_ctx_tensor(pt_ctx(PT_GPU), dtypes[d], 2, shape);
        fl_ctx_upload_f32(pt_ctx(PT_GPU), &t, values, n);
        fl_ctx_download_f32(pt_ctx(PT_GPU), got, &t, n);
        char what[64];
        snprintf(what, sizeof what, "round trip %s", fl_dtype_name(dtypes[d]));
        FL_EXPECT_CLOSE(what, got, want, n, 0.0, 0.0);
        fl_ctx_tensor_free(pt_ctx(PT_GPU), &t);
    }
    free(values);
    free(want);
    free(got);
}

/* Contiguous copies between every pair of dtypes round to the destination dtype (nearest even). */
static void test_copy_conversions(void) {
    const fl_dtype dtypes[3] = {FL_F32, FL_BF16, FL_F16};
    const int64_t shape[1] = {4099};
    const size_t n = 4099;
    fl_ctx *gpu = pt_ctx(PT_GPU);
    float *values = fl_test_randn(n, 12, 10.0f), *src_vals = malloc(n * sizeof(float));
    float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    for (int a = 0; a < 3; a++) {
        for (int b = 0; b < 3; b++) {
            for (size_t i = 0; i < n; i++) {
                src_vals[i] = pt_round(dtypes[a], values[i]);
                want[i] = pt_round(dtypes[b], src_vals[i]);
            }
            fl_tensor src = fl_ctx_tensor(gpu, dtypes[a], 1, shape), dst = fl_ctx_tensor(gpu, dtypes[b], 1, shape);
            fl_ctx_upload_f32(gpu, &src, src_vals, n);
            fl_op_copy(gpu, &src, &dst);
            fl_ctx_download_f32(gpu, got, &dst, n);
            char what[64];
            snprintf(what, sizeof what, "copy %s -> %s", fl_dtype_name(dtypes[a]), fl_dtype_name(dtypes[b]));
            FL_EXPECT_CLOSE(what, got, want, n, 0.0, 0.0);
            fl_ctx_tensor_free(gpu, &src);
            fl_ctx_tensor_free(gpu, &dst);
        }
    }
    free(values);
    free(src_vals);
    free(want);
    free(got);
}

/* [B, L, H, D] -> [B, H, L, D] (the head split), a 6-d permutation, and slice-to-slice copies. */
static void test_copy_strided(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        {
            const int64_t blhd[4] = {2, 5, 3, 8}, bhld[4] = {2, 3, 5, 8};
            pt_pair src = pt_randn(dt, 4, blhd, 21, 1.0f), dst = pt_full(dt, 4, bhld, 0.0f);
            const int perm[4] = {0, 2, 1, 3};
            for (int s = 0; s < 2; s++) {
                fl_tensor view = fl_tensor_permute(&src.t[s], perm);
                fl_op_copy(pt_ctx(s), &view, &dst.t[s]);
            }
            PT_CHECK("copy head split", &dst, EXACT);
            /* and back, permuting the destination instead */
            pt_pair back = pt_full(dt, 4, blhd, 0.0f);
            for (int s = 0; s < 2; s++) {
                fl_tensor view = fl_tensor_permute(&back.t[s], perm);
                fl_op_copy(pt_ctx(s), &dst.t[s], &view);
            }
            PT_CHECK("copy head merge", &back, EXACT);
            pt_free(&src);
            pt_free(&dst);
            pt_free(&back);
        }
        {
            const int64_t shape[6] = {2, 3, 1, 4, 5, 3};
            const int perm[6] = {5, 1, 0, 3, 2, 4};
            int64_t out_shape[6];
            for (int i = 0; i < 6; i++) out_shape[i] = shape[perm[i]];
            pt_pair src = pt_randn(dt, 6, shape, 22, 1.0f), dst = pt_full(dt, 6, out_shape, 0.0f);
            for (int s = 0; s < 2; s++) {
                fl_tensor view = fl_tensor_permute(&src.t[s], perm);
                fl_op_copy(pt_ctx(s), &view, &dst.t[s]);
            }
            PT_CHECK("copy 6-d permutation", &dst, EXACT);
            pt_free(&src);
            pt_free(&dst);
        }
        {
            /* columns [3, 11) of a [7, 20] tensor into columns [5, 13) of a [7, 16] one; the rest of
             * the destination must stay as it was */
            const int64_t a_shape[2] = {7, 20}, b_shape[2] = {7, 16};
            pt_pair a = pt_randn(dt, 2, a_shape, 23, 1.0f), b = pt_randn(dt, 2, b_shape, 24, 1.0f);
            fl_tensor av[2], bv[2];
            pt_slice(&a, 1, 3, 8, av);
            pt_slice(&b, 1, 5, 8, bv);
            for (int s = 0; s < 2; s++) fl_op_copy(pt_ctx(s), &av[s], &bv[s]);
            PT_CHECK("copy column slice", &b, EXACT);
            pt_free(&a);
            pt_free(&b);
        }
    }
    /* A strided copy that also converts: F32 source, BF16 destination on the GPU. */
    {
        const int64_t blhd[4] = {2, 7, 3, 10}, bhld[4] = {2, 3, 7, 10};
        const int perm[4] = {0, 2, 1, 3};
        pt_pair src = pt_randn(FL_F32, 4, blhd, 25, 1.0f), dst = pt_full(FL_BF16, 4, bhld, 0.0f);
        for (int s = 0; s < 2; s++) {
            fl_tensor view = fl_tensor_permute(&src.t[s], perm);
            fl_op_copy(pt_ctx(s), &view, &dst.t[s]);
        }
        const pt_tol half_ulp = {0.0, 1.0 / 256.0};
        PT_CHECK("copy permuted F32 -> BF16", &dst, half_ulp);
        pt_free(&src);
        pt_free(&dst);
    }
}

/* A [1024, 3072] transpose: grid-stride loops over millions of elements. */
static void test_copy_large(void) {
    const int64_t shape[2] = {1024, 3072}, tshape[2] = {3072, 1024};
    const int perm[2] = {1, 0};
    pt_pair src = pt_randn(FL_BF16, 2, shape, 31, 1.0f), dst = pt_full(FL_BF16, 2, tshape, 0.0f);
    for (int s = 0; s < 2; s++) {
        fl_tensor view = fl_tensor_permute(&src.t[s], perm);
        fl_op_copy(pt_ctx(s), &view, &dst.t[s]);
    }
    PT_CHECK("copy [1024, 3072] transpose", &dst, EXACT);
    pt_free(&src);
    pt_free(&dst);
}

static void test_fill(void) {
    for (int di = 0; di < 2; di++) {
        const int64_t shape[3] = {4, 9, 13};
        pt_pair t = pt_randn(pt_dtypes[di], 3, shape, 41, 1.0f);
        fl_tensor v[2], w[2];
        pt_slice(&t, 2, 2, 7, v);
        for (int s = 0; s < 2; s++) {
            const int perm[3] = {2, 0, 1};
            w[s] = fl_tensor_permute(&v[s], perm);
            fl_op_fill(pt_ctx(s), &w[s], -1.75f);
        }
        PT_CHECK("fill strided slice", &t, EXACT);
        pt_free(&t);
    }
    /* F16 storage works for fill (and copy) even though no op computes in it */
    const int64_t shape[1] = {1001};
    fl_tensor h = fl_ctx_tensor(pt_ctx(PT_GPU), FL_F16, 1, shape);
    fl_op_fill(pt_ctx(PT_GPU), &h, 0.1f);
    float got[1001], want[1001];
    fl_ctx_download_f32(pt_ctx(PT_GPU), got, &h, 1001);
    for (int i = 0; i < 1001; i++) want[i] = pt_round(FL_F16, 0.1f);
    FL_EXPECT_CLOSE("fill F16", got, want, 1001, 0.0, 0.0);
    fl_ctx_tensor_free(pt_ctx(PT_GPU), &h);
}

/* In planning mode ops check their operands and leave every output untouched. */
static void test_planning(void) {
    fl_ctx *gpu = pt_ctx(PT_GPU);
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t mk[2] = {8, 16}, nk[2] = {12, 16}, mn[2] = {8, 12}, bias_shape[1] = {12};
        const int64_t q_shape[4] = {1, 2, 9, 16}, lse_shape[3] = {1, 2, 9}, rows[1] = {8};
        pt_pair a = pt_randn(dt, 2, mk, 51, 1.0f), w = pt_randn(dt, 2, nk, 52, 1.0f);
        pt_pair bias = pt_randn(dt, 1, bias_shape, 53, 1.0f), c = pt_full(dt, 2, mn, 7.0f);
        pt_pair y = pt_full(dt, 2, mk, 7.0f), mean = pt_full(FL_F32, 1, rows, 7.0f), rstd = pt_full(FL_F32, 1, rows, 7.0f);
        pt_pair q = pt_randn(dt, 4, q_shape, 54, 1.0f), out = pt_full(dt, 4, q_shape, 7.0f);
        pt_pair lse = pt_full(FL_F32, 3, lse_shape, 7.0f);
        gpu->planning = true;
        fl_op_gemm(gpu, &a.t[PT_GPU], false, &w.t[PT_GPU], true, &c.t[PT_GPU], 1.0f, 0.0f);
        fl_op_linear(gpu, &a.t[PT_GPU], &w.t[PT_GPU], &bias.t[PT_GPU], &c.t[PT_GPU]);
        fl_op_layernorm(gpu, &a.t[PT_GPU], &y.t[PT_GPU], &mean.t[PT_GPU], &rstd.t[PT_GPU], 1e-6f);
        fl_op_attention(gpu, &q.t[PT_GPU], &q.t[PT_GPU], &q.t[PT_GPU], &out.t[PT_GPU], &lse.t[PT_GPU], 0.25f);
        fl_op_copy(gpu, &a.t[PT_GPU], &y.t[PT_GPU]);
        fl_op_fill(gpu, &y.t[PT_GPU], 0.0f);
        fl_op_add(gpu, &a.t[PT_GPU], &a.t[PT_GPU], 1.0f, &y.t[PT_GPU]);
        double loss = fl_op_mse_loss(gpu, &a.t[PT_GPU], &y.t[PT_GPU], NULL);
        double ss = fl_op_sum_squares(gpu, &mean.t[PT_GPU]);
        gpu->planning = false;
        FL_EXPECT(loss == 0.0);
        FL_EXPECT(ss == 0.0);
        PT_CHECK("planning gemm/linear output", &c, EXACT);
        PT_CHECK("planning layernorm/copy/fill/add output", &y, EXACT);
        PT_CHECK("planning layernorm mean", &mean, EXACT);
        PT_CHECK("planning attention output", &out, EXACT);
        PT_CHECK("planning attention lse", &lse, EXACT);
        pt_free(&a);
        pt_free(&w);
        pt_free(&bias);
        pt_free(&c);
        pt_free(&y);
        pt_free(&mean);
        pt_free(&rstd);
        pt_free(&q);
        pt_free(&out);
        pt_free(&lse);
    }
}

int main(void) {
    pt_setup();
    FL_RUN(test_context);
    FL_RUN(test_transfers_every_dtype);
    FL_RUN(test_copy_conversions);
    FL_RUN(test_copy_strided);
    FL_RUN(test_copy_large);
    FL_RUN(test_fill);
    FL_RUN(test_planning);
    pt_teardown();
    return fl_test_finish();
}
