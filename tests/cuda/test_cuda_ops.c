/*
 * test_cuda_ops.c — parity of the CUDA backend with the CPU reference for the matrix products,
 * the elementwise ops, normalization/modulation and the training ops, in F32 and BF16 storage
 * (and the BF16-operand, F32-result product of the LoRA gradients; bitwise-repeatable products),
 * with strided (column-chunk) operands, misaligned views, in-place forms, accumulating and
 * overwriting gradients, and a few shapes large enough to exercise grid-stride loops and chunked
 * column sums. Exits 77 where no CUDA device is usable.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parity.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static char *label(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static char *label(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return buf;
}

/* ---- gemm, linear, bias_grad ------------------------------------------------------------------ */

/* Each operand is columns [off, off + cols) of a [rows, cols + pad] tensor (pad >= off). An odd
 * offset makes the view's address and row stride misaligned for vector loads. */
typedef struct layout {
    int64_t off, pad;
} layout;

static void gemm_case(fl_dtype dt, int64_t m, int64_t n, int64_t k, bool ta, bool tb, float alpha, float beta,
                      layout lay, uint64_t seed) {
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    pt_pair a = pt_randn(dt, 2, SHAPE(ar, ac + lay.pad), seed, 1.0f);
    pt_pair b = pt_randn(dt, 2, SHAPE(br, bc + lay.pad), seed + 1, 1.0f);
    /* beta == 0 must ignore C's old contents: NaN there shows it (when every element is written) */
    pt_pair c = beta == 0.0f && lay.pad == 0 ? pt_full(dt, 2, SHAPE(m, n), NAN)
                                              : pt_randn(dt, 2, SHAPE(m, n + lay.pad), seed + 2, 1.0f);
    fl_tensor av[2], bv[2], cv[2];
    pt_slice(&a, 1, lay.off, ac, av);
    pt_slice(&b, 1, lay.off, bc, bv);
    pt_slice(&c, 1, lay.off, n, cv);
    for (int s = 0; s < 2; s++) fl_op_gemm(pt_ctx(s), &av[s], ta, &bv[s], tb, &cv[s], alpha, beta);
    char what[128];
    PT_CHECK(label(what, sizeof what, "gemm m=%lld n=%lld k=%lld ta=%d tb=%d alpha=%g beta=%g off=%lld pad=%lld",
                   (long long)m, (long long)n, (long long)k, ta, tb, alpha, beta, (long long)lay.off,
                   (long long)lay.pad),
             &c, pt_tol_for(dt, 5e-4, 2e-4, 2e-2, 1e-2));
    pt_free(&a);
    pt_free(&b);
    pt_free(&c);
}

static void test_gemm(void) {
    const layout dense = {0, 0}, aligned = {8, 16}, odd = {1, 3};
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        uint64_t seed = 100;
        for (int t = 0; t < 4; t++) {
            bool ta = t & 1, tb = t & 2;
            gemm_case(dt, 33, 17, 65, ta, tb, 1.0f, 0.0f, dense, seed += 3);
            gemm_case(dt, 33, 17, 65, ta, tb, 0.5f, 0.75f, dense, seed += 3);
            gemm_case(dt, 40, 24, 32, ta, tb, 1.0f, 0.0f, aligned, seed += 3);
            gemm_case(dt, 19, 23, 29, ta, tb, -1.5f, 1.0f, odd, seed += 3);
        }
        gemm_case(dt, 1, 37, 45, false, true, 1.0f, 0.0f, dense, seed += 3);  /* a single row */
        gemm_case(dt, 37, 1, 45, false, false, 1.0f, 0.0f, dense, seed += 3); /* a single column */
        gemm_case(dt, 256, 3072, 64, false, true, 1.0f, 0.0f, dense, seed += 3);
        gemm_case(dt, 5, 7, 0, false, false, 1.0f, 0.5f, dense, seed += 3); /* empty inner dim: C = beta C */
        gemm_case(dt, 5, 7, 0, true, true, 1.0f, 0.0f, dense, seed += 3);   /* ... or zeros */

        /* alpha == 0: A and B are not read (BLAS convention), so NaN in A must not reach C */
        pt_pair a = pt_full(dt, 2, SHAPE(6, 5), NAN), b = pt_randn(dt, 2, SHAPE(5, 4), seed += 3, 1.0f);
        pt_pair c = pt_randn(dt, 2, SHAPE(6, 4), seed += 3, 1.0f);
        for (int s = 0; s < 2; s++) fl_op_gemm(pt_ctx(s), &a.t[s], false, &b.t[s], false, &c.t[s], 0.0f, 0.5f);
        PT_CHECK("gemm alpha=0", &c, pt_tol_for(dt, 1e-6, 1e-6, 1e-2, 1e-2));
        pt_free(&a);
        pt_free(&b);
        pt_free(&c);
    }
}

/* The mixed form of the products of LoRA gradients: BF16 A and B, an F32 C accumulated in fp32.
 * The reference multiplies the same bf16-rounded values in f32, so only summation order differs. */
static void gemm_mixed_case(int64_t m, int64_t n, int64_t k, bool ta, bool tb, float alpha, float beta, layout lay,
                            uint64_t seed) {
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    pt_pair a = pt_randn(FL_BF16, 2, SHAPE(ar, ac + lay.pad), seed, 1.0f);
    pt_pair b = pt_randn(FL_BF16, 2, SHAPE(br, bc + lay.pad), seed + 1, 1.0f);
    pt_pair c = beta == 0.0f && lay.pad == 0 ? pt_full(FL_F32, 2, SHAPE(m, n), NAN)
                                              : pt_randn(FL_F32, 2, SHAPE(m, n + lay.pad), seed + 2, 1.0f);
    fl_tensor av[2], bv[2], cv[2];
    pt_slice(&a, 1, lay.off, ac, av);
    pt_slice(&b, 1, lay.off, bc, bv);
    pt_slice(&c, 1, lay.off, n, cv);
    for (int s = 0; s < 2; s++) fl_op_gemm(pt_ctx(s), &av[s], ta, &bv[s], tb, &cv[s], alpha, beta);
    char what[128];
    PT_CHECK(label(what, sizeof what, "gemm bf16->f32 m=%lld n=%lld k=%lld ta=%d tb=%d alpha=%g beta=%g off=%lld",
                   (long long)m, (long long)n, (long long)k, ta, tb, alpha, beta, (long long)lay.off),
             &c, (pt_tol){5e-4, 2e-4});
    pt_free(&a);
    pt_free(&b);
    pt_free(&c);
}

static void test_gemm_bf16_in_f32_out(void) {
    const layout dense = {0, 0}, aligned = {8, 16}, odd = {1, 3};
    uint64_t seed = 700;
    for (int t = 0; t < 4; t++) {
        bool ta = t & 1, tb = t & 2;
        gemm_mixed_case(33, 17, 65, ta, tb, 1.0f, 0.0f, dense, seed += 3);
        gemm_mixed_case(40, 24, 32, ta, tb, 0.5f, 1.0f, aligned, seed += 3);
        gemm_mixed_case(19, 23, 29, ta, tb, -1.5f, 1.0f, odd, seed += 3);
    }
    /* The LoRA gradient shapes: grad_b [out, r] += s dy^T h, grad_a [r, in] += dh^T x. */
    gemm_mixed_case(3072, 16, 1536, true, false, 0.25f, 1.0f, dense, seed += 3);
    gemm_mixed_case(16, 3072, 1536, true, false, 1.0f, 1.0f, dense, seed += 3);
    gemm_mixed_case(4, 5, 0, false, false, 1.0f, 0.5f, dense, seed += 3);
}

/* A product run twice on the same buffers gives the same bits: the plan (and so the algorithm)
 * of a shape is pinned in the context. */
static void test_gemm_repeatable(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        pt_pair a = pt_randn(dt, 2, SHAPE(300, 200), 900, 1.0f), b = pt_randn(dt, 2, SHAPE(500, 200), 901, 1.0f);
        pt_pair c = pt_full(dt, 2, SHAPE(300, 500), NAN);
        fl_ctx *gpu = pt_ctx(PT_GPU);
        fl_op_gemm(gpu, &a.t[PT_GPU], false, &b.t[PT_GPU], true, &c.t[PT_GPU], 1.0f, 0.0f);
        float *first = pt_get(&c, PT_GPU);
        for (int r = 0; r < 3; r++) fl_op_gemm(gpu, &a.t[PT_GPU], false, &b.t[PT_GPU], true, &c.t[PT_GPU], 1.0f, 0.0f);
        float *again = pt_get(&c, PT_GPU);
        FL_EXPECTF(memcmp(first, again, c.n * sizeof(float)) == 0, "gemm [%s] differs between identical runs",
                   fl_dtype_name(dt));
        free(first);
        free(again);
        pt_free(&a);
        pt_free(&b);
        pt_free(&c);
    }
}

static void linear_case(fl_dtype dt, int64_t rows, int64_t in, int64_t out, bool with_bias, int64_t bias_off,
                        layout lx, layout ly, uint64_t seed) {
    pt_pair x = pt_randn(dt, 2, SHAPE(rows, in + lx.pad), seed, 1.0f);
    pt_pair w = pt_randn(dt, 2, SHAPE(out, in), seed + 1, 0.2f);
    pt_pair bias = pt_randn(dt, 1, SHAPE(out + bias_off), seed + 2, 1.0f);
    pt_pair y = ly.pad == 0 ? pt_full(dt, 2, SHAPE(rows, out), NAN) : pt_randn(dt, 2, SHAPE(rows, out + ly.pad), seed + 3, 1.0f);
    fl_tensor xv[2], yv[2], bv[2];
    pt_slice(&x, 1, lx.off, in, xv);
    pt_slice(&y, 1, ly.off, out, yv);
    pt_slice(&bias, 0, bias_off, out, bv);
    for (int s = 0; s < 2; s++) fl_op_linear(pt_ctx(s), &xv[s], &w.t[s], with_bias ? &bv[s] : NULL, &yv[s]);
    char what[128];
    PT_CHECK(label(what, sizeof what, "linear rows=%lld in=%lld out=%lld bias=%d(+%lld) x+%lld y+%lld", (long long)rows,
                   (long long)in, (long long)out, with_bias, (long long)bias_off, (long long)lx.off, (long long)ly.off),
             &y, pt_tol_for(dt, 2e-4, 2e-4, 2e-2, 1e-2));
    pt_free(&x);
    pt_free(&w);
    pt_free(&bias);
    pt_free(&y);
}

static void test_linear(void) {
    const layout dense = {0, 0}, aligned = {16, 16}, odd = {1, 1};
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        linear_case(dt, 70, 48, 96, false, 0, dense, dense, 200);
        linear_case(dt, 70, 48, 96, true, 0, dense, dense, 210);
        linear_case(dt, 70, 48, 96, true, 0, aligned, aligned, 220);
        linear_case(dt, 33, 47, 95, true, 0, odd, odd, 230);
        linear_case(dt, 33, 48, 96, true, 1, dense, dense, 240); /* misaligned bias: no epilogue */
        linear_case(dt, 1, 64, 3, true, 0, dense, dense, 250);
        linear_case(dt, 512, 256, 768, true, 0, dense, dense, 260);
    }
}

static void test_bias_grad(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t cases[3][2] = {{70, 96}, {3, 5}, {4096, 300}};
        for (int i = 0; i < 3; i++) {
            int64_t rows = cases[i][0], cols = cases[i][1];
            pt_pair dy = pt_randn(dt, 2, SHAPE(rows, cols + 4), 300 + i, 1.0f);
            pt_pair db = pt_randn(dt, 1, SHAPE(cols), 310 + i, 1.0f); /* accumulates into this */
            fl_tensor dyv[2];
            pt_slice(&dy, 1, 2, cols, dyv);
            for (int s = 0; s < 2; s++) fl_op_bias_grad(pt_ctx(s), &dyv[s], &db.t[s]);
            char what[64];
            PT_CHECK(label(what, sizeof what, "bias_grad rows=%lld cols=%lld", (long long)rows, (long long)cols), &db,
                     pt_tol_for(dt, 1e-3, 1e-4, 5e-2, 1e-2));
            pt_free(&dy);
            pt_free(&db);
        }
    }
}

/* ---- elementwise ------------------------------------------------------------------------------ */

enum { EW_GELU, EW_SILU };

static void test_add_scale(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const pt_tol tol = pt_tol_for(dt, 1e-6, 1e-6, 1e-2, 1e-2);
        pt_pair a = pt_randn(dt, 3, SHAPE(3, 17, 40), 400, 1.0f), b = pt_randn(dt, 3, SHAPE(3, 17, 40), 401, 1.0f);
        pt_pair out = pt_full(dt, 2, SHAPE(51, 30), 9.0f);
        fl_tensor av[2], bv[2], ov[2];
        pt_slice(&a, 2, 5, 23, av);
        pt_slice(&b, 2, 0, 23, bv);
        pt_slice(&out, 1, 7, 23, ov);
        for (int s = 0; s < 2; s++) {
            /* out is [51, 23] with row stride 30; a, b are [3, 17, 23] views: same matrix shape */
            fl_op_add(pt_ctx(s), &av[s], &bv[s], -0.5f, &ov[s]);
        }
        PT_CHECK("add strided", &out, tol);
        for (int s = 0; s < 2; s++) fl_op_add(pt_ctx(s), &av[s], &bv[s], 2.0f, &av[s]); /* out aliases a */
        PT_CHECK("add in place", &a, tol);
        for (int s = 0; s < 2; s++) fl_op_scale(pt_ctx(s), &bv[s], -3.25f);
        PT_CHECK("scale strided", &b, tol);
        pt_free(&a);
        pt_free(&b);
        pt_free(&out);
        /* a large view: 1024 x 3072 columns of a wider tensor */
        pt_pair big = pt_randn(dt, 2, SHAPE(1024, 3100), 402, 1.0f), big2 = pt_randn(dt, 2, SHAPE(1024, 3072), 403, 1.0f);
        fl_tensor gv[2];
        pt_slice(&big, 1, 20, 3072, gv);
        for (int s = 0; s < 2; s++) fl_op_add(pt_ctx(s), &gv[s], &big2.t[s], 0.25f, &gv[s]);
        PT_CHECK("add [1024, 3072] view", &big, tol);
        pt_free(&big);
        pt_free(&big2);
    }
}

static void activation_case(fl_dtype dt, int which) {
    const char *name = which == EW_GELU ? "gelu_tanh" : "silu";
    const pt_tol tol = pt_tol_for(dt, 1e-5, 1e-4, 1e-2, 1e-2);
    pt_pair x = pt_randn(dt, 2, SHAPE(45, 70), 500 + which, 2.0f), y = pt_full(dt, 2, SHAPE(45, 64), NAN);
    pt_pair dy = pt_randn(dt, 2, SHAPE(45, 64), 510 + which, 1.0f), dx = pt_full(dt, 2, SHAPE(45, 64), NAN);
    fl_tensor xv[2];
    pt_slice(&x, 1, 3, 64, xv);
    char what[64];
    for (int s = 0; s < 2; s++) {
        if (which == EW_GELU) fl_op_gelu_tanh(pt_ctx(s), &xv[s], &y.t[s]);
        else fl_op_silu(pt_ctx(s), &xv[s], &y.t[s]);
    }
    PT_CHECK(label(what, sizeof what, "%s strided input", name), &y, tol);
    for (int s = 0; s < 2; s++) {
        if (which == EW_GELU) fl_op_gelu_tanh_backward(pt_ctx(s), &dy.t[s], &xv[s], &dx.t[s]);
        else fl_op_silu_backward(pt_ctx(s), &dy.t[s], &xv[s], &dx.t[s]);
    }
    PT_CHECK(label(what, sizeof what, "%s backward", name), &dx, tol);
    for (int s = 0; s < 2; s++) { /* in place: dx aliases dy, y aliases x */
        if (which == EW_GELU) {
            fl_op_gelu_tanh_backward(pt_ctx(s), &dy.t[s], &xv[s], &dy.t[s]);
            fl_op_gelu_tanh(pt_ctx(s), &xv[s], &xv[s]);
        } else {
            fl_op_silu_backward(pt_ctx(s), &dy.t[s], &xv[s], &dy.t[s]);
            fl_op_silu(pt_ctx(s), &xv[s], &xv[s]);
        }
    }
    PT_CHECK(label(what, sizeof what, "%s backward in place", name), &dy, tol);
    PT_CHECK(label(what, sizeof what, "%s in place", name), &x, tol);
    pt_free(&x);
    pt_free(&y);
    pt_free(&dy);
    pt_free(&dx);
}

static void test_activations(void) {
    for (int di = 0; di < 2; di++) {
        activation_case(pt_dtypes[di], EW_GELU);
        activation_case(pt_dtypes[di], EW_SILU);
    }
}

/* ---- normalization ---------------------------------------------------------------------------- */

static const pt_tol STATS_TOL = {1e-5, 1e-4};

static void layernorm_case(fl_dtype dt, int64_t rows, int64_t d, uint64_t seed) {
    pt_pair x = pt_randn(dt, 2, SHAPE(rows, d), seed, 2.0f), y = pt_full(dt, 2, SHAPE(rows, d), NAN);
    pt_pair mean = pt_full(FL_F32, 1, SHAPE(rows), NAN), rstd = pt_full(FL_F32, 1, SHAPE(rows), NAN);
    for (int s = 0; s < 2; s++) fl_op_layernorm(pt_ctx(s), &x.t[s], &y.t[s], &mean.t[s], &rstd.t[s], 1e-6f);
    char what[64];
    PT_CHECK(label(what, sizeof what, "layernorm y rows=%lld d=%lld", (long long)rows, (long long)d), &y,
             pt_tol_for(dt, 1e-4, 1e-4, 2e-2, 1e-2));
    PT_CHECK("layernorm mean", &mean, STATS_TOL);
    PT_CHECK("layernorm rstd", &rstd, STATS_TOL);

    /* backward from the reference statistics, shared by both sides */
    float *mu = pt_get(&mean, PT_CPU), *rs = pt_get(&rstd, PT_CPU);
    pt_set(&mean, mu);
    pt_set(&rstd, rs);
    pt_pair dy = pt_randn(dt, 2, SHAPE(rows, d), seed + 1, 1.0f), dx = pt_full(dt, 2, SHAPE(rows, d), NAN);
    for (int s = 0; s < 2; s++) fl_op_layernorm_backward(pt_ctx(s), &dy.t[s], &x.t[s], &mean.t[s], &rstd.t[s], &dx.t[s]);
    PT_CHECK(label(what, sizeof what, "layernorm_backward rows=%lld d=%lld", (long long)rows, (long long)d), &dx,
             pt_tol_for(dt, 2e-4, 1e-3, 2e-2, 2e-2));
    free(mu);
    free(rs);
    pt_free(&x);
    pt_free(&y);
    pt_free(&mean);
    pt_free(&rstd);
    pt_free(&dy);
    pt_free(&dx);
}

static void test_layernorm(void) {
    for (int di = 0; di < 2; di++) {
        layernorm_case(pt_dtypes[di], 37, 16, 600);
        layernorm_case(pt_dtypes[di], 37, 100, 610);
        layernorm_case(pt_dtypes[di], 9, 3072, 620);
        layernorm_case(pt_dtypes[di], 70000, 16, 630); /* many rows: a large grid */
    }
}

/* shift, scale (and their gradients) are column chunks of a [B, 6 D] modulation tensor. */
static void ln_modulate_case(fl_dtype dt, int64_t batch, int64_t t_len, int64_t d, uint64_t seed) {
    pt_pair x = pt_randn(dt, 3, SHAPE(batch, t_len, d), seed, 1.5f), y = pt_full(dt, 3, SHAPE(batch, t_len, d), NAN);
    pt_pair mod = pt_randn(dt, 2, SHAPE(batch, 6 * d), seed + 1, 0.5f);
    pt_pair mean = pt_full(FL_F32, 2, SHAPE(batch, t_len), NAN), rstd = pt_full(FL_F32, 2, SHAPE(batch, t_len), NAN);
    fl_tensor shift[2], scale[2];
    pt_slice(&mod, 1, 0, d, shift);
    pt_slice(&mod, 1, d, d, scale);
    for (int s = 0; s < 2; s++)
        fl_op_ln_modulate(pt_ctx(s), &x.t[s], &shift[s], &scale[s], &y.t[s], &mean.t[s], &rstd.t[s], 1e-6f);
    char what[80];
    PT_CHECK(label(what, sizeof what, "ln_modulate B=%lld T=%lld D=%lld", (long long)batch, (long long)t_len, (long long)d),
             &y, pt_tol_for(dt, 2e-4, 2e-4, 3e-2, 1e-2));
    PT_CHECK("ln_modulate mean", &mean, STATS_TOL);
    PT_CHECK("ln_modulate rstd", &rstd, STATS_TOL);

    float *mu = pt_get(&mean, PT_CPU), *rs = pt_get(&rstd, PT_CPU);
    pt_set(&mean, mu);
    pt_set(&rstd, rs);
    pt_pair dy = pt_randn(dt, 3, SHAPE(batch, t_len, d), seed + 2, 1.0f);
    const pt_tol dx_tol = pt_tol_for(dt, 2e-4, 1e-3, 3e-2, 2e-2), dmod_tol = pt_tol_for(dt, 5e-4, 2e-4, 5e-2, 1e-2);
    for (int variant = 0; variant < 3; variant++) {
        /* 0: both gradients, 1: dshift only, 2: dscale only. The other chunks hold 3.0 and must
         * keep it; the chunks written are overwritten, not accumulated. */
        pt_pair dx = pt_full(dt, 3, SHAPE(batch, t_len, d), NAN), dmod = pt_full(dt, 2, SHAPE(batch, 6 * d), 3.0f);
        fl_tensor dshift[2], dscale[2];
        pt_slice(&dmod, 1, 3 * d, d, dshift);
        pt_slice(&dmod, 1, 4 * d, d, dscale);
        for (int s = 0; s < 2; s++)
            fl_op_ln_modulate_backward(pt_ctx(s), &dy.t[s], &x.t[s], &scale[s], &mean.t[s], &rstd.t[s], &dx.t[s],
                                       variant == 2 ? NULL : &dshift[s], variant == 1 ? NULL : &dscale[s]);
        PT_CHECK(label(what, sizeof what, "ln_modulate_backward dx (variant %d)", variant), &dx, dx_tol);
        PT_CHECK(label(what, sizeof what, "ln_modulate_backward dshift/dscale (variant %d)", variant), &dmod, dmod_tol);
        pt_free(&dx);
        pt_free(&dmod);
    }
    free(mu);
    free(rs);
    pt_free(&x);
    pt_free(&y);
    pt_free(&mod);
    pt_free(&mean);
    pt_free(&rstd);
    pt_free(&dy);
}

static void test_ln_modulate(void) {
    for (int di = 0; di < 2; di++) {
        ln_modulate_case(pt_dtypes[di], 2, 37, 96, 700);
        ln_modulate_case(pt_dtypes[di], 1, 5, 3072, 710);
        ln_modulate_case(pt_dtypes[di], 3, 1000, 40, 720); /* long sequences: chunked column sums */
    }
}

static void rmsnorm_case(fl_dtype dt, int64_t b, int64_t h, int64_t l, int64_t d, uint64_t seed) {
    const int64_t *shape = SHAPE(b, h, l, d);
    const int64_t rows = b * h * l;
    pt_pair x = pt_randn(dt, 4, shape, seed, 1.0f), y = pt_full(dt, 4, shape, NAN);
    pt_pair w = pt_randn(dt, 1, SHAPE(d), seed + 1, 0.5f), rstd = pt_full(FL_F32, 3, SHAPE(b, h, l), NAN);
    for (int s = 0; s < 2; s++) fl_op_rmsnorm(pt_ctx(s), &x.t[s], &w.t[s], &y.t[s], &rstd.t[s], 1e-6f);
    char what[80];
    PT_CHECK(label(what, sizeof what, "rmsnorm rows=%lld d=%lld", (long long)rows, (long long)d), &y,
             pt_tol_for(dt, 1e-4, 1e-4, 2e-2, 1e-2));
    PT_CHECK("rmsnorm rstd", &rstd, STATS_TOL);

    float *rs = pt_get(&rstd, PT_CPU);
    pt_set(&rstd, rs);
    pt_pair dy = pt_randn(dt, 4, shape, seed + 2, 1.0f), dx = pt_full(dt, 4, shape, NAN);
    pt_pair dw = pt_randn(dt, 1, SHAPE(d), seed + 3, 1.0f); /* accumulates */
    for (int s = 0; s < 2; s++) fl_op_rmsnorm_backward(pt_ctx(s), &dy.t[s], &x.t[s], &w.t[s], &rstd.t[s], &dx.t[s], &dw.t[s]);
    PT_CHECK(label(what, sizeof what, "rmsnorm_backward dx rows=%lld", (long long)rows), &dx,
             pt_tol_for(dt, 2e-4, 1e-3, 2e-2, 2e-2));
    PT_CHECK(label(what, sizeof what, "rmsnorm_backward dweight rows=%lld", (long long)rows), &dw,
             pt_tol_for(dt, 2e-3, 1e-4, 5e-2, 1e-2));
    pt_pair dx2 = pt_full(dt, 4, shape, NAN);
    for (int s = 0; s < 2; s++) fl_op_rmsnorm_backward(pt_ctx(s), &dy.t[s], &x.t[s], &w.t[s], &rstd.t[s], &dx2.t[s], NULL);
    PT_CHECK("rmsnorm_backward without dweight", &dx2, pt_tol_for(dt, 2e-4, 1e-3, 2e-2, 2e-2));
    free(rs);
    pt_free(&x);
    pt_free(&y);
    pt_free(&w);
    pt_free(&rstd);
    pt_free(&dy);
    pt_free(&dx);
    pt_free(&dw);
    pt_free(&dx2);
}

static void test_rmsnorm(void) {
    for (int di = 0; di < 2; di++) {
        rmsnorm_case(pt_dtypes[di], 2, 3, 37, 128, 800);
        rmsnorm_case(pt_dtypes[di], 1, 2, 9, 16, 810);
        rmsnorm_case(pt_dtypes[di], 1, 24, 1024, 128, 820); /* 24k rows into one dweight */
    }
}

static void test_gated_residual(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t B = 2, T = 37, D = 96;
        const pt_tol tol = pt_tol_for(dt, 1e-5, 1e-5, 2e-2, 1e-2);
        pt_pair x = pt_randn(dt, 3, SHAPE(B, T, D), 900, 1.0f), y = pt_randn(dt, 3, SHAPE(B, T, D), 901, 1.0f);
        pt_pair mod = pt_randn(dt, 2, SHAPE(B, 6 * D), 902, 1.0f), out = pt_full(dt, 3, SHAPE(B, T, D), NAN);
        fl_tensor gate[2];
        pt_slice(&mod, 1, 2 * D, D, gate);
        for (int s = 0; s < 2; s++) fl_op_gated_residual(pt_ctx(s), &x.t[s], &gate[s], &y.t[s], &out.t[s]);
        PT_CHECK("gated_residual", &out, tol);
        for (int s = 0; s < 2; s++) fl_op_gated_residual(pt_ctx(s), &x.t[s], &gate[s], &y.t[s], &x.t[s]);
        PT_CHECK("gated_residual in place", &x, tol);

        pt_pair dout = pt_randn(dt, 3, SHAPE(B, T, D), 903, 1.0f), dy = pt_full(dt, 3, SHAPE(B, T, D), NAN);
        pt_pair dmod = pt_full(dt, 2, SHAPE(B, 6 * D), 3.0f);
        fl_tensor dgate[2];
        pt_slice(&dmod, 1, 5 * D, D, dgate);
        for (int s = 0; s < 2; s++) fl_op_gated_residual_backward(pt_ctx(s), &dout.t[s], &gate[s], &y.t[s], &dy.t[s], &dgate[s]);
        PT_CHECK("gated_residual_backward dy", &dy, tol);
        PT_CHECK("gated_residual_backward dgate", &dmod, pt_tol_for(dt, 2e-4, 1e-4, 5e-2, 1e-2));
        pt_pair dy2 = pt_full(dt, 3, SHAPE(B, T, D), NAN);
        for (int s = 0; s < 2; s++) fl_op_gated_residual_backward(pt_ctx(s), &dout.t[s], &gate[s], &y.t[s], &dy2.t[s], NULL);
        PT_CHECK("gated_residual_backward without dgate", &dy2, tol);
        pt_free(&x);
        pt_free(&y);
        pt_free(&mod);
        pt_free(&out);
        pt_free(&dout);
        pt_free(&dy);
        pt_free(&dmod);
        pt_free(&dy2);
    }
}

/* ---- training ops ----------------------------------------------------------------------------- */

static void test_timestep_embedding(void) {
    float *tv = fl_test_rand_uniform(5, 1000, 0.0f, 1.0f);
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t dims[3] = {256, 7, 1};
        for (int i = 0; i < 3; i++) {
            pt_pair t = pt_new(FL_F32, 1, SHAPE(5), tv), out = pt_full(dt, 2, SHAPE(5, dims[i]), NAN);
            for (int s = 0; s < 2; s++) fl_op_timestep_embedding(pt_ctx(s), &t.t[s], &out.t[s], 1000.0f, 10000.0f);
            char what[64];
            PT_CHECK(label(what, sizeof what, "timestep_embedding dim=%lld", (long long)dims[i]), &out,
                     pt_tol_for(dt, 1e-6, 0.0, 4e-3, 0.0));
            pt_free(&t);
            pt_free(&out);
        }
    }
    free(tv);
}

static void test_flow_mix(void) {
    float *tv = fl_test_rand_uniform(3, 1100, 0.0f, 1.0f);
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t *shape = SHAPE(3, 4, 9, 11);
        pt_pair x0 = pt_randn(dt, 4, shape, 1101, 1.0f), noise = pt_randn(dt, 4, shape, 1102, 1.0f);
        pt_pair t = pt_new(FL_F32, 1, SHAPE(3), tv);
        pt_pair xt = pt_full(dt, 4, shape, NAN), target = pt_full(dt, 4, shape, NAN);
        for (int s = 0; s < 2; s++) fl_op_flow_mix(pt_ctx(s), &x0.t[s], &noise.t[s], &t.t[s], &xt.t[s], &target.t[s]);
        const pt_tol tol = pt_tol_for(dt, 1e-6, 1e-5, 1e-2, 1e-2);
        PT_CHECK("flow_mix xt", &xt, tol);
        PT_CHECK("flow_mix target", &target, tol);
        pt_free(&x0);
        pt_free(&noise);
        pt_free(&t);
        pt_free(&xt);
        pt_free(&target);
    }
    free(tv);
}

static void test_mse_loss(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t sizes[2] = {3000, 5 * 1000 * 1000}; /* the second fills every partial-sum block */
        for (int i = 0; i < 2; i++) {
            const int64_t *shape = SHAPE(sizes[i]);
            pt_pair pred = pt_randn(dt, 1, shape, 1200 + i, 1.0f), target = pt_randn(dt, 1, shape, 1210 + i, 1.0f);
            pt_pair dpred = pt_full(dt, 1, shape, NAN);
            double loss[2], loss_nograd[2];
            for (int s = 0; s < 2; s++) {
                loss[s] = fl_op_mse_loss(pt_ctx(s), &pred.t[s], &target.t[s], &dpred.t[s]);
                loss_nograd[s] = fl_op_mse_loss(pt_ctx(s), &pred.t[s], &target.t[s], NULL);
            }
            const pt_tol loss_tol = {0.0, 1e-5};
            char what[64];
            PT_CHECK_SCALAR(label(what, sizeof what, "mse_loss n=%lld", (long long)sizes[i]), dt, loss[PT_GPU],
                            loss[PT_CPU], loss_tol);
            PT_CHECK_SCALAR("mse_loss without dpred", dt, loss_nograd[PT_GPU], loss_nograd[PT_CPU], loss_tol);
            PT_CHECK("mse_loss dpred", &dpred, pt_tol_for(dt, 1e-12, 1e-6, 1e-12, 1e-2));
            pt_free(&pred);
            pt_free(&target);
            pt_free(&dpred);
        }
    }
}

static void test_sum_squares(void) {
    const int64_t sizes[3] = {1, 12345, 5 * 1000 * 1000};
    for (int i = 0; i < 3; i++) {
        pt_pair x = pt_randn(FL_F32, 1, SHAPE(sizes[i]), 1300 + i, 0.1f);
        double got = fl_op_sum_squares(pt_ctx(PT_GPU), &x.t[PT_GPU]);
        double want = fl_op_sum_squares(pt_ctx(PT_CPU), &x.t[PT_CPU]);
        char what[64];
        const pt_tol tol = {0.0, 1e-5};
        PT_CHECK_SCALAR(label(what, sizeof what, "sum_squares n=%lld", (long long)sizes[i]), FL_F32, got, want, tol);
        pt_free(&x);
    }
}

static void test_adamw(void) {
    const int64_t n = 10007;
    float *sq = fl_test_randn((size_t)n, 1401, 0.01f);
    for (int64_t i = 0; i < n; i++) sq[i] *= sq[i]; /* v >= 0 */
    pt_pair param = pt_randn(FL_F32, 1, SHAPE(n), 1400, 1.0f), grad = pt_randn(FL_F32, 1, SHAPE(n), 1402, 1.0f);
    pt_pair m = pt_randn(FL_F32, 1, SHAPE(n), 1403, 0.01f), v = pt_new(FL_F32, 1, SHAPE(n), sq);
    fl_adamw_params p = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f,
                         .grad_scale = 0.5f, .step = 1};
    const pt_tol tol = {1e-7, 1e-5};
    for (int step = 1; step <= 10; step++) {
        p.step = step;
        for (int s = 0; s < 2; s++) fl_op_adamw(pt_ctx(s), &param.t[s], &grad.t[s], &m.t[s], &v.t[s], &p);
    }
    PT_CHECK("adamw param after 10 steps", &param, tol);
    PT_CHECK("adamw m", &m, tol);
    PT_CHECK("adamw v", &v, (pt_tol){1e-10, 1e-5});
    free(sq);
    pt_free(&param);
    pt_free(&grad);
    pt_free(&m);
    pt_free(&v);
}

int main(void) {
    pt_setup();
    FL_RUN(test_gemm);
    FL_RUN(test_gemm_bf16_in_f32_out);
    FL_RUN(test_gemm_repeatable);
    FL_RUN(test_linear);
    FL_RUN(test_bias_grad);
    FL_RUN(test_add_scale);
    FL_RUN(test_activations);
    FL_RUN(test_layernorm);
    FL_RUN(test_ln_modulate);
    FL_RUN(test_rmsnorm);
    FL_RUN(test_gated_residual);
    FL_RUN(test_timestep_embedding);
    FL_RUN(test_flow_mix);
    FL_RUN(test_mse_loss);
    FL_RUN(test_sum_squares);
    FL_RUN(test_adamw);
    pt_teardown();
    return fl_test_finish();
}
