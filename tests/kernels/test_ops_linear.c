/*
 * test_ops_linear.c — CPU gemm, linear and bias_grad against naive double-precision loops.
 *
 * Covers every combination of transpose flags on odd shapes with row-strided operands (column
 * slices of wider buffers, whose padding must stay untouched), beta == 0 ignoring a NaN-filled C,
 * 3-d operands collapsing into matrix views, the linear backward expressed through gemm
 * (dX = dY W, dW += dY^T X) and bias_grad checked by finite differences with their accumulate
 * semantics, device allocation and transfers, and planning mode.
 * Forward tolerance: atol 1e-4, rtol 1e-4 (f32 products of length <= 300 against double).
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

/* c = alpha * op(a) op(b) + beta * c0 in double; beta_zero ignores c0. */
static void naive_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const float *a, int64_t lda,
                       const float *b, int64_t ldb, double beta, const float *c0, int64_t ldc, float *out) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0.0;
            for (int64_t p = 0; p < k; p++) {
                double av = ta ? a[p * lda + i] : a[i * lda + p];
                double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
                s += av * bv;
            }
            double prev = beta == 0.0 ? 0.0 : beta * c0[i * ldc + j];
            out[i * n + j] = (float)(alpha * s + prev);
        }
}

/* Gathers a strided [rows, cols] view into a dense array. */
static void gather(const fl_tensor *t, float *dst) {
    fl_matrix m;
    FL_EXPECT(fl_tensor_matrix(t, &m));
    const float *src = t->data;
    for (int64_t i = 0; i < m.rows; i++) memcpy(dst + i * m.cols, src + i * m.ld, (size_t)m.cols * sizeof(float));
}

static void check_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, uint64_t seed) {
    int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    const int64_t apad = 5, bpad = 7, cpad = 4;
    size_t asz = (size_t)(ar * (ac + apad)), bsz = (size_t)(br * (bc + bpad)), csz = (size_t)(m * (n + cpad));
    float *as = fl_test_randn(asz, seed, 1.0f), *bs = fl_test_randn(bsz, seed + 1, 1.0f);
    float *cs = fl_test_randn(csz, seed + 2, 1.0f), *c0 = kt_dup(cs, csz);
    fl_tensor a = kt_wide_view(as, ar, ac, 3, apad - 3), b = kt_wide_view(bs, br, bc, 2, bpad - 2);
    fl_tensor c = kt_wide_view(cs, m, n, 1, cpad - 1);
    float *want = kt_alloc((size_t)(m * n)), *got = kt_alloc((size_t)(m * n));
    char what[96];

    const float alpha = 0.75f, beta = -0.5f;
    fl_op_gemm(ctx, &a, ta, &b, tb, &c, alpha, beta);
    naive_gemm(ta, tb, m, n, k, alpha, a.data, ac + apad, b.data, bc + bpad, beta, (float *)c0 + 1, n + cpad, want);
    gather(&c, got);
    snprintf(what, sizeof what, "gemm ta=%d tb=%d %lldx%lldx%lld", ta, tb, (long long)m, (long long)n, (long long)k);
    FL_EXPECT_CLOSE(what, got, want, (size_t)(m * n), 1e-4, 1e-4);
    /* padding columns of C are untouched */
    for (int64_t i = 0; i < m; i++) {
        FL_EXPECT(cs[i * (n + cpad)] == c0[i * (n + cpad)]);
        for (int64_t j = n + 1; j < n + cpad; j++) FL_EXPECT(cs[i * (n + cpad) + j] == c0[i * (n + cpad) + j]);
    }

    /* beta == 0: C's old contents (NaN here) are ignored */
    for (int64_t i = 0; i < m; i++) kt_fill_nan(cs + i * (n + cpad) + 1, (size_t)n);
    fl_op_gemm(ctx, &a, ta, &b, tb, &c, alpha, 0.0f);
    naive_gemm(ta, tb, m, n, k, alpha, a.data, ac + apad, b.data, bc + bpad, 0.0, NULL, 0, want);
    gather(&c, got);
    snprintf(what, sizeof what, "gemm beta=0 ta=%d tb=%d", ta, tb);
    FL_EXPECT_CLOSE(what, got, want, (size_t)(m * n), 1e-4, 1e-4);

    free(as);
    free(bs);
    free(cs);
    free(c0);
    free(want);
    free(got);
}

static void test_gemm_trans_and_strides(void) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            check_gemm(ta, tb, 37, 29, 45, 100 + (uint64_t)(2 * ta + tb));
            check_gemm(ta, tb, 1, 13, 7, 200 + (uint64_t)(2 * ta + tb));
        }
}

/* Large enough for the threaded and multi-block paths (blocks of 256 in n and k). */
static void test_gemm_blocked(void) {
    check_gemm(false, false, 70, 530, 270, 300);
    check_gemm(true, true, 67, 290, 300, 301);
    check_gemm(false, true, 130, 257, 261, 302);
}

static void test_gemm_degenerate(void) {
    /* k == 0: C = beta * C */
    float a[1] = {0}, b[1] = {0}, c[6] = {1, 2, 3, 4, 5, 6};
    int64_t sa[2] = {2, 0}, sb[2] = {0, 3};
    fl_tensor ta = fl_tensor_make(a, FL_F32, fl_device_cpu(), 2, sa);
    fl_tensor tb = fl_tensor_make(b, FL_F32, fl_device_cpu(), 2, sb);
    fl_tensor tc = fl_tensor_f32_2d(c, 2, 3);
    fl_op_gemm(ctx, &ta, false, &tb, false, &tc, 1.0f, 2.0f);
    float want[6] = {2, 4, 6, 8, 10, 12};
    FL_EXPECT_CLOSE("gemm k=0", c, want, 6, 0, 0);
    /* alpha == 0 and beta == 0 with NaN in C: zeros */
    float a2[6] = {1, 2, 3, 4, 5, 6}, b2[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, c2[6];
    kt_fill_nan(c2, 6);
    fl_tensor a2t = fl_tensor_f32_2d(a2, 2, 3), b2t = fl_tensor_f32_2d(b2, 3, 3), c2t = fl_tensor_f32_2d(c2, 2, 3);
    fl_op_gemm(ctx, &a2t, false, &b2t, false, &c2t, 0.0f, 0.0f);
    float zeros[6] = {0};
    FL_EXPECT_CLOSE("gemm alpha=0 beta=0", c2, zeros, 6, 0, 0);
}

/* x: [2, 7, in] as a column slice of [2, 7, in + 3]; y: column slice of [2, 7, out + 2]. */
static void test_linear(void) {
    const int64_t B = 2, T = 7, in = 33, out = 19, R = B * T;
    float *xs = fl_test_randn((size_t)(R * (in + 3)), 1, 1.0f), *w = fl_test_randn((size_t)(out * in), 2, 0.3f);
    float *bias = fl_test_randn((size_t)out, 3, 1.0f), *ys = fl_test_randn((size_t)(R * (out + 2)), 4, 1.0f);
    float *y0 = kt_dup(ys, (size_t)(R * (out + 2)));
    fl_tensor xw = fl_tensor_f32_3d(xs, B, T, in + 3), yw = fl_tensor_f32_3d(ys, B, T, out + 2);
    fl_tensor x = fl_tensor_slice(&xw, 2, 2, in), y = fl_tensor_slice(&yw, 2, 1, out);
    fl_tensor wt = fl_tensor_f32_2d(w, out, in), bt = fl_tensor_f32_1d(bias, out);
    float *want = kt_alloc((size_t)(R * out)), *got = kt_alloc((size_t)(R * out));

    for (int with_bias = 0; with_bias < 2; with_bias++) {
        fl_op_linear(ctx, &x, &wt, with_bias ? &bt : NULL, &y);
        for (int64_t r = 0; r < R; r++)
            for (int64_t o = 0; o < out; o++) {
                double s = with_bias ? bias[o] : 0.0;
                for (int64_t i = 0; i < in; i++) s += (double)xs[r * (in + 3) + 2 + i] * w[o * in + i];
                want[r * out + o] = (float)s;
                got[r * out + o] = ys[r * (out + 2) + 1 + o];
            }
        FL_EXPECT_CLOSE(with_bias ? "linear with bias" : "linear without bias", got, want, (size_t)(R * out), 1e-5,
                        1e-4);
        for (int64_t r = 0; r < R; r++) {
            FL_EXPECT(ys[r * (out + 2)] == y0[r * (out + 2)]);
            FL_EXPECT(ys[r * (out + 2) + out + 1] == y0[r * (out + 2) + out + 1]);
        }
    }
    free(xs);
    free(w);
    free(bias);
    free(ys);
    free(y0);
    free(want);
    free(got);
}

/* L = sum(wgt * (x W^T + b)), forward in double. */
typedef struct linear_state {
    const float *x, *w, *b, *wgt;
    int64_t rows, in, out;
} linear_state;

static double linear_loss(void *p) {
    const linear_state *s = p;
    double l = 0.0;
    for (int64_t r = 0; r < s->rows; r++)
        for (int64_t o = 0; o < s->out; o++) {
            double y = s->b[o];
            for (int64_t i = 0; i < s->in; i++) y += (double)s->x[r * s->in + i] * s->w[o * s->in + i];
            l += s->wgt[r * s->out + o] * y;
        }
    return l;
}

static void test_linear_backward_fd(void) {
    const int64_t rows = 9, in = 13, out = 11;
    float *x = fl_test_randn((size_t)(rows * in), 10, 1.0f), *w = fl_test_randn((size_t)(out * in), 11, 0.5f);
    float *b = fl_test_randn((size_t)out, 12, 1.0f), *wgt = fl_test_randn((size_t)(rows * out), 13, 1.0f);
    float *dx = kt_alloc((size_t)(rows * in));
    float *dw0 = fl_test_randn((size_t)(out * in), 14, 1.0f), *dw = kt_dup(dw0, (size_t)(out * in));
    float *db0 = fl_test_randn((size_t)out, 15, 1.0f), *db = kt_dup(db0, (size_t)out);
    fl_tensor tx = fl_tensor_f32_2d(x, rows, in), tw = fl_tensor_f32_2d(w, out, in);
    fl_tensor tdy = fl_tensor_f32_2d(wgt, rows, out), tdx = fl_tensor_f32_2d(dx, rows, in);
    fl_tensor tdw = fl_tensor_f32_2d(dw, out, in), tdb = fl_tensor_f32_1d(db, out);
    kt_fill_nan(dx, (size_t)(rows * in));
    fl_op_gemm(ctx, &tdy, false, &tw, false, &tdx, 1.0f, 0.0f);      /* dX = dY W */
    fl_op_gemm(ctx, &tdy, true, &tx, false, &tdw, 1.0f, 1.0f);       /* dW += dY^T X */
    fl_op_bias_grad(ctx, &tdy, &tdb);                               /* db += colsum dY */
    fl_op_bias_grad(ctx, &tdy, &tdb);                               /* twice: accumulates */
    linear_state st = {x, w, b, wgt, rows, in, out};
    KT_CHECK_GRAD("linear dx", x, (size_t)(rows * in), dx, 200, 1, linear_loss, &st);
    /* remove the prior contents to compare the accumulated part against finite differences */
    for (int64_t i = 0; i < out * in; i++) dw[i] -= dw0[i];
    for (int64_t i = 0; i < out; i++) db[i] = (db[i] - db0[i]) * 0.5f;
    KT_CHECK_GRAD("linear dW (accumulated)", w, (size_t)(out * in), dw, 200, 2, linear_loss, &st);
    KT_CHECK_GRAD("linear db (accumulated)", b, (size_t)out, db, 200, 3, linear_loss, &st);
    free(x);
    free(w);
    free(b);
    free(wgt);
    free(dx);
    free(dw0);
    free(dw);
    free(db0);
    free(db);
}

/* dy: [3, 41, 50] as a column slice of [3, 41, 70]; db accumulates. */
static void test_bias_grad_strided(void) {
    const int64_t B = 3, T = 41, N = 50, W = 70;
    float *dys = fl_test_randn((size_t)(B * T * W), 20, 1.0f), *db = fl_test_randn((size_t)N, 21, 1.0f);
    float *want = kt_alloc((size_t)N);
    fl_tensor wide = fl_tensor_f32_3d(dys, B, T, W), dy = fl_tensor_slice(&wide, 2, 11, N);
    fl_tensor tdb = fl_tensor_f32_1d(db, N);
    for (int64_t j = 0; j < N; j++) {
        double s = db[j];
        for (int64_t r = 0; r < B * T; r++) s += dys[r * W + 11 + j];
        want[j] = (float)s;
    }
    fl_op_bias_grad(ctx, &dy, &tdb);
    FL_EXPECT_CLOSE("bias_grad strided", db, want, (size_t)N, 1e-5, 1e-5);
    free(dys);
    free(db);
    free(want);
}

static void test_device_memory(void) {
    int64_t shape[3] = {3, 5, 7};
    fl_tensor t = fl_ctx_tensor(ctx, FL_F32, 3, shape);
    FL_EXPECT(((uintptr_t)t.data % 64) == 0);
    float *src = fl_test_randn(105, 30, 1.0f), back[105];
    fl_ctx_upload(ctx, t.data, src, sizeof back);
    fl_ctx_synchronize(ctx);
    fl_ctx_download(ctx, back, t.data, sizeof back);
    FL_EXPECT(kt_same_bits(src, back, sizeof back));
    fl_ctx_tensor_free(ctx, &t);
    FL_EXPECT(t.data == NULL);
    /* a bf16 device tensor through the converting transfers */
    fl_tensor h = fl_ctx_tensor(ctx, FL_BF16, 3, shape);
    FL_EXPECT(((uintptr_t)h.data % 64) == 0);
    fl_ctx_upload_f32(ctx, &h, src, 105);
    fl_ctx_download_f32(ctx, back, &h, 105);
    for (int i = 0; i < 105; i++) FL_EXPECT(back[i] == fl_bf16_to_f32(fl_f32_to_bf16(src[i])));
    fl_ctx_tensor_free(ctx, &h);
    void *odd = fl_ctx_alloc(ctx, 3);
    FL_EXPECT(odd && ((uintptr_t)odd % 64) == 0);
    fl_ctx_free(ctx, odd);
    free(src);
}

static void test_planning_leaves_outputs(void) {
    float *a = fl_test_randn(12, 40, 1.0f), *b = fl_test_randn(20, 41, 1.0f), *c = fl_test_randn(15, 42, 1.0f);
    float *c0 = kt_dup(c, 15), *db = fl_test_randn(5, 43, 1.0f), *db0 = kt_dup(db, 5);
    fl_tensor ta = fl_tensor_f32_2d(a, 3, 4), tb = fl_tensor_f32_2d(b, 4, 5), tc = fl_tensor_f32_2d(c, 3, 5);
    fl_tensor tw = fl_tensor_f32_2d(b, 5, 4), tdb = fl_tensor_f32_1d(db, 5), bias = fl_tensor_f32_1d(a, 5);
    ctx->planning = true;
    fl_op_gemm(ctx, &ta, false, &tb, false, &tc, 1.0f, 0.0f);
    fl_op_linear(ctx, &ta, &tw, &bias, &tc);
    fl_op_bias_grad(ctx, &tc, &tdb);
    ctx->planning = false;
    FL_EXPECT(kt_same_bits(c, c0, 15 * sizeof(float)));
    FL_EXPECT(kt_same_bits(db, db0, 5 * sizeof(float)));
    free(a);
    free(b);
    free(c);
    free(c0);
    free(db);
    free(db0);
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_gemm_trans_and_strides);
    FL_RUN(test_gemm_blocked);
    FL_RUN(test_gemm_degenerate);
    FL_RUN(test_linear);
    FL_RUN(test_linear_backward_fd);
    FL_RUN(test_bias_grad_strided);
    FL_RUN(test_device_memory);
    FL_RUN(test_planning_leaves_outputs);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
