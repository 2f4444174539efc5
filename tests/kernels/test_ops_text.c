/*
 * test_ops_text.c — the text encoders' forward-only ops on the CPU reference backend against
 * naive double-precision loops: embedding gather (repeated ids, a strided output, planning mode
 * without ids), LayerNorm with weight and bias (in place, a threaded size), attention with an
 * additive bias ([H, L, L] shared by the batch and [B, H, L, L]), a causal mask, both, neither
 * (also against fl_op_attention), at query counts that are not a multiple of the kernel's row
 * block and with scale 1 as T5 uses it; quick-GELU, exact GELU and the elementwise product on
 * strided and aliased views.
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

/* ---- embedding ------------------------------------------------------------------------------ */

static void test_embedding(void) {
    const int64_t V = 11, D = 7, N = 9;
    float *table = fl_test_randn((size_t)(V * D), 1, 1.0f);
    const int32_t ids[9] = {3, 0, 10, 3, 5, 5, 1, 10, 0};
    float *storage = kt_alloc((size_t)(N * (D + 5)));
    kt_fill_nan(storage, (size_t)(N * (D + 5)));
    fl_tensor tt = fl_tensor_f32_2d(table, V, D);
    fl_tensor out = kt_wide_view(storage, N, D, 2, 3);
    fl_op_embedding(ctx, &tt, ids, N, &out);
    bool ok = true;
    for (int64_t r = 0; r < N; r++)
        for (int64_t c = 0; c < D; c++) ok &= storage[r * (D + 5) + 2 + c] == table[ids[r] * D + c];
    FL_EXPECTF(ok, "embedding rows differ from the table rows");
    /* the columns outside the view are untouched */
    FL_EXPECT(isnan(storage[0]) && isnan(storage[1]) && isnan(storage[2 + D]));
    /* planning mode checks shapes only, ids may be absent */
    ctx->planning = true;
    fl_op_embedding(ctx, &tt, NULL, N, &out);
    ctx->planning = false;
    free(table);
    free(storage);
}

/* ---- LayerNorm with weight and bias ----------------------------------------------------------- */

static void ref_layernorm(const float *x, const float *w, const float *b, int64_t R, int64_t D, float eps,
                          float *y) {
    for (int64_t r = 0; r < R; r++) {
        double mu = 0.0, var = 0.0;
        for (int64_t j = 0; j < D; j++) mu += x[r * D + j];
        mu /= (double)D;
        for (int64_t j = 0; j < D; j++) var += (x[r * D + j] - mu) * (x[r * D + j] - mu);
        var /= (double)D;
        for (int64_t j = 0; j < D; j++)
            y[r * D + j] = (float)((x[r * D + j] - mu) / sqrt(var + eps) * w[j] + b[j]);
    }
}

static void layernorm_case(int64_t R, int64_t D, float eps, uint64_t seed) {
    const size_t n = (size_t)(R * D);
    float *x = fl_test_randn(n, seed, 3.0f), *w = fl_test_randn((size_t)D, seed + 1, 1.0f);
    float *b = fl_test_randn((size_t)D, seed + 2, 1.0f), *y = kt_alloc(n), *want = kt_alloc(n);
    for (size_t i = 0; i < n; i++) x[i] += 5.0f; /* a large mean: the two-pass variance matters */
    kt_fill_nan(y, n);
    fl_tensor tx = fl_tensor_f32_2d(x, R, D), ty = fl_tensor_f32_2d(y, R, D);
    fl_tensor tw = fl_tensor_f32_1d(w, D), tb = fl_tensor_f32_1d(b, D);
    fl_op_layernorm_affine(ctx, &tx, &tw, &tb, &ty, eps);
    ref_layernorm(x, w, b, R, D, eps, want);
    FL_EXPECT_CLOSE("layernorm_affine", y, want, n, 1e-5, 1e-5);
    fl_op_layernorm_affine(ctx, &tx, &tw, &tb, &tx, eps); /* in place */
    FL_EXPECT_CLOSE("layernorm_affine in place", x, y, n, 0, 0);
    free(x);
    free(w);
    free(b);
    free(y);
    free(want);
}

static void test_layernorm_affine(void) {
    layernorm_case(5, 33, 1e-5f, 10);
    layernorm_case(1, 1, 1e-5f, 20);
    layernorm_case(77, 768, 1e-5f, 30); /* threaded */
    layernorm_case(3, 64, 1e-6f, 40);
}

/* ---- attention with bias and causal mask ------------------------------------------------------- */

typedef struct att_case {
    int64_t B, H, L, D;
    int bias_dims; /* 0: none, 3: [H, L, L], 4: [B, H, L, L] */
    bool causal;
    float scale;
} att_case;

static void ref_attention(const att_case *c, const float *q, const float *k, const float *v, const float *bias,
                          float *out) {
    int64_t L = c->L, D = c->D;
    double *s = malloc((size_t)L * sizeof(double));
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++) {
            const int64_t base = (b * c->H + h) * L * D;
            const float *bt = NULL;
            if (c->bias_dims == 3) bt = bias + h * L * L;
            if (c->bias_dims == 4) bt = bias + (b * c->H + h) * L * L;
            for (int64_t i = 0; i < L; i++) {
                double mx = -INFINITY;
                int64_t nk = c->causal ? i + 1 : L;
                for (int64_t j = 0; j < nk; j++) {
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; d++) dot += (double)q[base + i * D + d] * k[base + j * D + d];
                    s[j] = c->scale * dot + (bt ? bt[i * L + j] : 0.0);
                    mx = s[j] > mx ? s[j] : mx;
                }
                double sum = 0.0;
                for (int64_t j = 0; j < nk; j++) sum += (s[j] = exp(s[j] - mx));
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j < nk; j++) acc += s[j] * v[base + j * D + d];
                    out[base + i * D + d] = (float)(acc / sum);
                }
            }
        }
    free(s);
}

static void attention_case(att_case c, uint64_t seed) {
    const size_t n = (size_t)(c.B * c.H * c.L * c.D);
    const size_t nb = c.bias_dims == 3 ? (size_t)(c.H * c.L * c.L) : (size_t)(c.B * c.H * c.L * c.L);
    float *q = fl_test_randn(n, seed, 1.0f), *k = fl_test_randn(n, seed + 1, 1.0f);
    float *v = fl_test_randn(n, seed + 2, 1.0f), *bias = fl_test_randn(nb, seed + 3, 2.0f);
    float *out = kt_alloc(n), *want = kt_alloc(n);
    kt_fill_nan(out, n);
    fl_tensor tq = fl_tensor_f32_4d(q, c.B, c.H, c.L, c.D), tk = fl_tensor_f32_4d(k, c.B, c.H, c.L, c.D);
    fl_tensor tv = fl_tensor_f32_4d(v, c.B, c.H, c.L, c.D), to = fl_tensor_f32_4d(out, c.B, c.H, c.L, c.D);
    fl_tensor tb = c.bias_dims == 3 ? fl_tensor_f32_3d(bias, c.H, c.L, c.L) : fl_tensor_f32_4d(bias, c.B, c.H, c.L, c.L);
    fl_op_attention_masked(ctx, &tq, &tk, &tv, c.bias_dims ? &tb : NULL, c.causal, &to, c.scale);
    ref_attention(&c, q, k, v, bias, want);
    char what[128];
    snprintf(what, sizeof what, "attention_masked B=%lld H=%lld L=%lld D=%lld bias=%d causal=%d", (long long)c.B,
             (long long)c.H, (long long)c.L, (long long)c.D, c.bias_dims, c.causal);
    FL_EXPECT_CLOSE(what, out, want, n, 1e-5, 1e-4);
    if (!c.bias_dims && !c.causal) { /* the same as the unmasked op */
        float *plain = kt_alloc(n), *lse = kt_alloc((size_t)(c.B * c.H * c.L));
        fl_tensor tp = fl_tensor_f32_4d(plain, c.B, c.H, c.L, c.D), tl = fl_tensor_f32_3d(lse, c.B, c.H, c.L);
        fl_op_attention(ctx, &tq, &tk, &tv, &tp, &tl, c.scale);
        FL_EXPECT_CLOSE("attention_masked without mask vs attention", out, plain, n, 1e-6, 1e-5);
        free(plain);
        free(lse);
    }
    free(q);
    free(k);
    free(v);
    free(bias);
    free(out);
    free(want);
}

static void test_attention_masked(void) {
    uint64_t seed = 100;
    for (int bias_dims = 0; bias_dims <= 4; bias_dims++) {
        if (bias_dims == 1 || bias_dims == 2) continue;
        for (int causal = 0; causal < 2; causal++) {
            attention_case((att_case){2, 3, 45, 16, bias_dims, causal, 0.25f}, seed += 4);
            attention_case((att_case){1, 2, 77, 64, bias_dims, causal, 0.125f}, seed += 4); /* CLIP length */
            attention_case((att_case){1, 1, 1, 8, bias_dims, causal, 1.0f}, seed += 4);     /* one token */
        }
    }
    /* T5: scale 1 with its bias; threaded size */
    attention_case((att_case){1, 4, 130, 16, 3, false, 1.0f}, seed += 4);
    attention_case((att_case){2, 4, 96, 32, 0, true, 0.2f}, seed += 4);
}

/* Large scores (hundreds) stay finite: the maximum is subtracted before exp. */
static void test_attention_masked_stable(void) {
    att_case c = {1, 2, 40, 8, 3, true, 1.0f};
    const size_t n = (size_t)(c.H * c.L * c.D), nb = (size_t)(c.H * c.L * c.L);
    float *q = fl_test_randn(n, 7, 10.0f), *k = fl_test_randn(n, 8, 10.0f), *v = fl_test_randn(n, 9, 1.0f);
    float *bias = fl_test_randn(nb, 10, 50.0f), *out = kt_alloc(n), *want = kt_alloc(n);
    fl_tensor tq = fl_tensor_f32_4d(q, 1, c.H, c.L, c.D), tk = fl_tensor_f32_4d(k, 1, c.H, c.L, c.D);
    fl_tensor tv = fl_tensor_f32_4d(v, 1, c.H, c.L, c.D), to = fl_tensor_f32_4d(out, 1, c.H, c.L, c.D);
    fl_tensor tb = fl_tensor_f32_3d(bias, c.H, c.L, c.L);
    fl_op_attention_masked(ctx, &tq, &tk, &tv, &tb, true, &to, 1.0f);
    ref_attention(&c, q, k, v, bias, want);
    FL_EXPECT_CLOSE("attention_masked large scores", out, want, n, 1e-4, 1e-4);
    free(q);
    free(k);
    free(v);
    free(bias);
    free(out);
    free(want);
}

/* ---- activations and the product ------------------------------------------------------------ */

static void test_activations(void) {
    const int64_t R = 6, C = 37;
    float *storage = fl_test_randn((size_t)(R * (C + 4)), 50, 3.0f);
    storage[1] = 40.0f, storage[2] = -40.0f, storage[3] = 0.0f;
    float *ys = kt_alloc((size_t)(R * (C + 4)));
    fl_tensor x = kt_wide_view(storage, R, C, 1, 3), y = kt_wide_view(ys, R, C, 1, 3);
    for (int which = 0; which < 2; which++) {
        kt_fill_nan(ys, (size_t)(R * (C + 4)));
        if (which == 0) fl_op_quick_gelu(ctx, &x, &y);
        else fl_op_gelu_erf(ctx, &x, &y);
        float *got = kt_alloc((size_t)(R * C)), *want = kt_alloc((size_t)(R * C));
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                double v = storage[r * (C + 4) + 1 + c];
                want[r * C + c] = (float)(which == 0 ? v / (1.0 + exp(-1.702 * v)) : 0.5 * v * (1.0 + erf(v / sqrt(2.0))));
                got[r * C + c] = ys[r * (C + 4) + 1 + c];
            }
        FL_EXPECT_CLOSE(which == 0 ? "quick_gelu" : "gelu_erf", got, want, (size_t)(R * C), 1e-6, 1e-5);
        free(got);
        free(want);
    }
    /* in place equals out of place */
    float *copy = kt_dup(storage, (size_t)(R * (C + 4)));
    fl_tensor xc = kt_wide_view(copy, R, C, 1, 3);
    fl_op_gelu_erf(ctx, &xc, &xc);
    bool same = true;
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) same &= copy[r * (C + 4) + 1 + c] == ys[r * (C + 4) + 1 + c];
    FL_EXPECTF(same, "gelu_erf in place differs");
    free(copy);
    free(storage);
    free(ys);
}

static void test_mul(void) {
    const int64_t R = 5, C = 19;
    float *a = fl_test_randn((size_t)(R * (C + 2)), 60, 1.0f), *b = fl_test_randn((size_t)(R * C), 61, 1.0f);
    float *out = kt_alloc((size_t)(R * C)), *want = kt_alloc((size_t)(R * C));
    fl_tensor ta = kt_wide_view(a, R, C, 2, 0), tb = fl_tensor_f32_2d(b, R, C), to = fl_tensor_f32_2d(out, R, C);
    fl_op_mul(ctx, &ta, &tb, &to);
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) want[r * C + c] = a[r * (C + 2) + 2 + c] * b[r * C + c];
    FL_EXPECT_CLOSE("mul", out, want, (size_t)(R * C), 0, 0);
    fl_op_mul(ctx, &ta, &tb, &tb); /* out aliases b */
    FL_EXPECT_CLOSE("mul into b", b, want, (size_t)(R * C), 0, 0);
    free(a);
    free(b);
    free(out);
    free(want);
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_embedding);
    FL_RUN(test_layernorm_affine);
    FL_RUN(test_attention_masked);
    FL_RUN(test_attention_masked_stable);
    FL_RUN(test_activations);
    FL_RUN(test_mul);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
