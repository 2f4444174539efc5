/*
 * test_ops_attention.c — Flux's rotary table, CPU rope and softmax attention, forward and backward.
 *
 * The rotary table is compared with the formula of ops.h for three axes; rope with a direct
 * rotation loop (also in place), its backward by finite differences and as the inverse rotation.
 * Attention is compared with a double-precision softmax on shapes with Lq != Lk, query counts that
 * are not a multiple of the kernel's row block, and scores in the hundreds (stability). Its
 * backward is checked by finite differences of L = sum(w * out) in double (kernel_test_util.h:
 * h = 1e-3, atol 1e-4, rtol 1e-3) on every element of small operands and on random subsets of a
 * larger, threaded case; dq, dk and dv start as NaN to check that they are overwritten. Each
 * (batch, head)'s forward and backward results are bitwise those of that batch alone (the
 * per-sample batch invariance models/flux.h relies on).
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

/* ---- rotary embedding ----------------------------------------------------------------------- */

static void test_rope_table(void) {
    const int64_t B = 2, L = 5;
    const int axes[3] = {4, 6, 6};
    const double theta = 10000.0;
    const int half = 8;
    float *ids = fl_test_rand_uniform((size_t)(B * L * 3), 1, 0.0f, 40.0f);
    ids[0] = 0.0f, ids[1] = 3.0f, ids[2] = 17.0f;
    float *pe = kt_alloc((size_t)(B * L * half * 2)), *want = kt_alloc((size_t)(B * L * half * 2));
    fl_rope_table_host(ids, B, L, axes, 3, theta, pe);
    for (int64_t tok = 0; tok < B * L; tok++) {
        int pair = 0;
        for (int a = 0; a < 3; a++)
            for (int i = 0; i < axes[a] / 2; i++, pair++) {
                double angle = ids[tok * 3 + a] * pow(theta, -2.0 * i / axes[a]);
                want[(tok * half + pair) * 2] = (float)cos(angle);
                want[(tok * half + pair) * 2 + 1] = (float)sin(angle);
            }
    }
    FL_EXPECT_CLOSE("rope table", pe, want, (size_t)(B * L * half * 2), 1e-6, 0);
    /* position 0: identity rotation on every pair */
    for (int p = 0; p < 2; p++) FL_EXPECT(pe[p * 2] == 1.0f && pe[p * 2 + 1] == 0.0f);
    free(ids);
    free(pe);
    free(want);
}

/* pe for [B, L] tokens with axes {4, 6, 6} (head dim 16) */
static float *make_pe(int64_t B, int64_t L, uint64_t seed) {
    const int axes[3] = {4, 6, 6};
    float *ids = fl_test_rand_uniform((size_t)(B * L * 3), seed, 0.0f, 30.0f);
    float *pe = kt_alloc((size_t)(B * L * 16));
    fl_rope_table_host(ids, B, L, axes, 3, 10000.0, pe);
    free(ids);
    return pe;
}

typedef struct rope_state {
    const float *x, *pe, *w;
    int64_t B, H, L, D;
} rope_state;

static void ref_rope(const rope_state *s, double *y) {
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t h = 0; h < s->H; h++)
            for (int64_t l = 0; l < s->L; l++) {
                const float *x = s->x + ((b * s->H + h) * s->L + l) * s->D;
                const float *p = s->pe + (b * s->L + l) * s->D;
                double *yr = y + ((b * s->H + h) * s->L + l) * s->D;
                for (int64_t i = 0; i < s->D / 2; i++) {
                    double c = p[2 * i], sn = p[2 * i + 1];
                    yr[2 * i] = c * x[2 * i] - sn * x[2 * i + 1];
                    yr[2 * i + 1] = sn * x[2 * i] + c * x[2 * i + 1];
                }
            }
}

static double rope_loss(void *p) {
    const rope_state *s = p;
    size_t n = (size_t)(s->B * s->H * s->L * s->D);
    double *y = malloc(n * sizeof(double));
    ref_rope(s, y);
    double l = kt_dot(s->w, y, n);
    free(y);
    return l;
}

static void test_rope(void) {
    const int64_t B = 2, H = 3, L = 5, D = 16;
    const size_t n = (size_t)(B * H * L * D);
    float *pe = make_pe(B, L, 2), *x = fl_test_randn(n, 3, 1.0f), *y = kt_alloc(n), *want = kt_alloc(n);
    double *yd = malloc(n * sizeof(double));
    fl_tensor tx = fl_tensor_f32_4d(x, B, H, L, D), ty = fl_tensor_f32_4d(y, B, H, L, D);
    fl_tensor tpe = fl_tensor_f32_4d(pe, B, L, D / 2, 2);
    fl_op_rope(ctx, &tx, &tpe, &ty);
    rope_state st = {x, pe, NULL, B, H, L, D};
    ref_rope(&st, yd);
    kt_to_float(yd, want, n);
    FL_EXPECT_CLOSE("rope", y, want, n, 1e-6, 1e-6);
    /* the inverse rotation restores x */
    float *back = kt_alloc(n);
    fl_tensor tback = fl_tensor_f32_4d(back, B, H, L, D);
    fl_op_rope_backward(ctx, &ty, &tpe, &tback);
    FL_EXPECT_CLOSE("rope_backward(rope(x))", back, x, n, 1e-5, 1e-5);
    /* in place */
    float *xi = kt_dup(x, n);
    fl_tensor txi = fl_tensor_f32_4d(xi, B, H, L, D);
    fl_op_rope(ctx, &txi, &tpe, &txi);
    FL_EXPECT_CLOSE("rope in place", xi, y, n, 0, 0);
    free(pe);
    free(x);
    free(y);
    free(want);
    free(yd);
    free(back);
    free(xi);
}

static void test_rope_backward(void) {
    const int64_t B = 2, H = 2, L = 3, D = 16;
    const size_t n = (size_t)(B * H * L * D);
    float *pe = make_pe(B, L, 4), *x = fl_test_randn(n, 5, 1.0f), *w = fl_test_randn(n, 6, 1.0f), *dx = kt_alloc(n);
    kt_fill_nan(dx, n);
    fl_tensor tw = fl_tensor_f32_4d(w, B, H, L, D), tdx = fl_tensor_f32_4d(dx, B, H, L, D);
    fl_tensor tpe = fl_tensor_f32_4d(pe, B, L, D / 2, 2);
    fl_op_rope_backward(ctx, &tw, &tpe, &tdx);
    rope_state st = {x, pe, w, B, H, L, D};
    KT_CHECK_GRAD("rope dx", x, n, dx, n, 1, rope_loss, &st);
    /* dx aliasing dy */
    float *wi = kt_dup(w, n);
    fl_tensor twi = fl_tensor_f32_4d(wi, B, H, L, D);
    fl_op_rope_backward(ctx, &twi, &tpe, &twi);
    FL_EXPECT_CLOSE("rope_backward in place", wi, dx, n, 0, 0);
    free(pe);
    free(x);
    free(w);
    free(dx);
    free(wi);
}

/* ---- attention ------------------------------------------------------------------------------ */

typedef struct attn_state {
    const float *q, *k, *v, *w;
    int64_t BH, Lq, Lk, D;
    double scale;
} attn_state;

static void ref_attention(const attn_state *s, double *out, double *lse) {
    double *sc = malloc((size_t)(s->Lk ? s->Lk : 1) * sizeof(double));
    for (int64_t bh = 0; bh < s->BH; bh++)
        for (int64_t i = 0; i < s->Lq; i++) {
            const float *q = s->q + (bh * s->Lq + i) * s->D;
            double mx = -INFINITY;
            for (int64_t j = 0; j < s->Lk; j++) {
                const float *k = s->k + (bh * s->Lk + j) * s->D;
                double d = 0.0;
                for (int64_t c = 0; c < s->D; c++) d += (double)q[c] * k[c];
                sc[j] = s->scale * d;
                mx = sc[j] > mx ? sc[j] : mx;
            }
            double sum = 0.0;
            for (int64_t j = 0; j < s->Lk; j++) sum += exp(sc[j] - mx);
            if (lse) lse[bh * s->Lq + i] = mx + log(sum);
            double *o = out + (bh * s->Lq + i) * s->D;
            for (int64_t c = 0; c < s->D; c++) o[c] = 0.0;
            for (int64_t j = 0; j < s->Lk; j++) {
                double p = exp(sc[j] - mx) / sum;
                const float *v = s->v + (bh * s->Lk + j) * s->D;
                for (int64_t c = 0; c < s->D; c++) o[c] += p * v[c];
            }
        }
    free(sc);
}

static double attn_loss(void *p) {
    const attn_state *s = p;
    size_t n = (size_t)(s->BH * s->Lq * s->D);
    double *out = malloc(n * sizeof(double));
    ref_attention(s, out, NULL);
    double l = kt_dot(s->w, out, n);
    free(out);
    return l;
}

static void check_attention_forward(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, float qstd,
                                    uint64_t seed, const char *what) {
    const int64_t BH = B * H;
    const size_t nq = (size_t)(BH * Lq * D), nk = (size_t)(BH * Lk * D);
    float *q = fl_test_randn(nq, seed, qstd), *k = fl_test_randn(nk, seed + 1, 1.0f), *v = fl_test_randn(nk, seed + 2, 1.0f);
    float *out = kt_alloc(nq), *lse = kt_alloc((size_t)(BH * Lq)), *wo = kt_alloc(nq), *wl = kt_alloc((size_t)(BH * Lq));
    double *od = malloc(nq * sizeof(double)), *ld = malloc((size_t)(BH * Lq) * sizeof(double));
    kt_fill_nan(out, nq);
    float scale = 1.0f / sqrtf((float)D);
    fl_tensor tq = fl_tensor_f32_4d(q, B, H, Lq, D), tk = fl_tensor_f32_4d(k, B, H, Lk, D);
    fl_tensor tv = fl_tensor_f32_4d(v, B, H, Lk, D), to = fl_tensor_f32_4d(out, B, H, Lq, D);
    fl_tensor tl = fl_tensor_f32_3d(lse, B, H, Lq);
    fl_op_attention(ctx, &tq, &tk, &tv, &to, &tl, scale);
    attn_state st = {q, k, v, NULL, BH, Lq, Lk, D, scale};
    ref_attention(&st, od, ld);
    kt_to_float(od, wo, nq);
    kt_to_float(ld, wl, (size_t)(BH * Lq));
    char name[96];
    snprintf(name, sizeof name, "%s: out", what);
    FL_EXPECT_CLOSE(name, out, wo, nq, 2e-5, 1e-4);
    snprintf(name, sizeof name, "%s: lse", what);
    FL_EXPECT_CLOSE(name, lse, wl, (size_t)(BH * Lq), 1e-5, 1e-5);
    free(q);
    free(k);
    free(v);
    free(out);
    free(lse);
    free(wo);
    free(wl);
    free(od);
    free(ld);
}

static void test_attention_forward(void) {
    check_attention_forward(2, 3, 37, 45, 24, 1.0f, 10, "attention 2x3x37x45x24");
    check_attention_forward(1, 2, 70, 33, 16, 1.0f, 20, "attention 1x2x70x33x16");
    check_attention_forward(1, 1, 1, 1, 8, 1.0f, 30, "attention single key");
    /* threaded over (batch * head, row block), keys spanning more than one column block */
    check_attention_forward(2, 2, 100, 260, 40, 1.0f, 35, "attention 2x2x100x260x40");
    /* scores in the hundreds: only a max-subtracted softmax survives */
    check_attention_forward(1, 2, 5, 300, 8, 40.0f, 40, "attention large scores");
}

static void check_attention_backward(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, size_t points,
                                     uint64_t seed, const char *what) {
    const int64_t BH = B * H;
    const size_t nq = (size_t)(BH * Lq * D), nk = (size_t)(BH * Lk * D);
    float *q = fl_test_randn(nq, seed, 1.0f), *k = fl_test_randn(nk, seed + 1, 1.0f), *v = fl_test_randn(nk, seed + 2, 1.0f);
    float *w = fl_test_randn(nq, seed + 3, 1.0f), *out = kt_alloc(nq), *lse = kt_alloc((size_t)(BH * Lq));
    float *dq = kt_alloc(nq), *dk = kt_alloc(nk), *dv = kt_alloc(nk);
    kt_fill_nan(dq, nq);
    kt_fill_nan(dk, nk);
    kt_fill_nan(dv, nk);
    float scale = 1.0f / sqrtf((float)D);
    fl_tensor tq = fl_tensor_f32_4d(q, B, H, Lq, D), tk = fl_tensor_f32_4d(k, B, H, Lk, D);
    fl_tensor tv = fl_tensor_f32_4d(v, B, H, Lk, D), to = fl_tensor_f32_4d(out, B, H, Lq, D);
    fl_tensor tl = fl_tensor_f32_3d(lse, B, H, Lq), tw = fl_tensor_f32_4d(w, B, H, Lq, D);
    fl_tensor tdq = fl_tensor_f32_4d(dq, B, H, Lq, D), tdk = fl_tensor_f32_4d(dk, B, H, Lk, D);
    fl_tensor tdv = fl_tensor_f32_4d(dv, B, H, Lk, D);
    fl_op_attention(ctx, &tq, &tk, &tv, &to, &tl, scale);
    fl_op_attention_backward(ctx, &tw, &tq, &tk, &tv, &to, &tl, &tdq, &tdk, &tdv, scale);
    attn_state st = {q, k, v, w, BH, Lq, Lk, D, scale};
    char name[96];
    snprintf(name, sizeof name, "%s: dq", what);
    KT_CHECK_GRAD(name, q, nq, dq, points, seed, attn_loss, &st);
    snprintf(name, sizeof name, "%s: dk", what);
    KT_CHECK_GRAD(name, k, nk, dk, points, seed + 1, attn_loss, &st);
    snprintf(name, sizeof name, "%s: dv", what);
    KT_CHECK_GRAD(name, v, nk, dv, points, seed + 2, attn_loss, &st);
    free(q);
    free(k);
    free(v);
    free(w);
    free(out);
    free(lse);
    free(dq);
    free(dk);
    free(dv);
}

static void test_attention_backward(void) {
    /* every element; Lq spans two row blocks */
    check_attention_backward(1, 2, 35, 9, 8, 100000, 50, "attention backward 1x2x35x9x8");
    /* threaded over (batch, head), random subsets */
    check_attention_backward(2, 3, 40, 50, 16, 60, 60, "attention backward 2x3x40x50x16");
    /* queries spanning three row blocks of every kernel: dk and dv sum over blocks */
    check_attention_backward(1, 2, 150, 20, 8, 80, 65, "attention backward 1x2x150x20x8");
}

/* Forward and backward over a batch of B, then over each sample alone: bitwise equal. */
static void test_attention_batch_invariant(void) {
    const int64_t B = 3, H = 2, L = 70, D = 16, per = H * L * D;
    const size_t n = (size_t)(B * per), nl = (size_t)(B * H * L);
    float *q = fl_test_randn(n, 80, 1.0f), *k = fl_test_randn(n, 81, 1.0f), *v = fl_test_randn(n, 82, 1.0f);
    float *w = fl_test_randn(n, 83, 1.0f);
    float *out[2], *lse[2], *dq[2], *dk[2], *dv[2];
    for (int r = 0; r < 2; r++)
        out[r] = kt_alloc(n), lse[r] = kt_alloc(nl), dq[r] = kt_alloc(n), dk[r] = kt_alloc(n), dv[r] = kt_alloc(n);
    for (int r = 0; r < 2; r++) {
        int64_t nb = r == 0 ? B : 1; /* the whole batch, then one sample at a time */
        for (int64_t b0 = 0; b0 < B; b0 += nb) {
            size_t off = (size_t)(b0 * per), offl = (size_t)(b0 * H * L);
            fl_tensor tq = fl_tensor_f32_4d(q + off, nb, H, L, D), tk = fl_tensor_f32_4d(k + off, nb, H, L, D);
            fl_tensor tv = fl_tensor_f32_4d(v + off, nb, H, L, D), tw = fl_tensor_f32_4d(w + off, nb, H, L, D);
            fl_tensor to = fl_tensor_f32_4d(out[r] + off, nb, H, L, D), tl = fl_tensor_f32_3d(lse[r] + offl, nb, H, L);
            fl_tensor tdq = fl_tensor_f32_4d(dq[r] + off, nb, H, L, D), tdk = fl_tensor_f32_4d(dk[r] + off, nb, H, L, D);
            fl_tensor tdv = fl_tensor_f32_4d(dv[r] + off, nb, H, L, D);
            fl_op_attention(ctx, &tq, &tk, &tv, &to, &tl, 0.25f);
            fl_op_attention_backward(ctx, &tw, &tq, &tk, &tv, &to, &tl, &tdq, &tdk, &tdv, 0.25f);
        }
    }
    FL_EXPECT(kt_same_bits(out[0], out[1], n * sizeof(float)));
    FL_EXPECT(kt_same_bits(lse[0], lse[1], nl * sizeof(float)));
    FL_EXPECT(kt_same_bits(dq[0], dq[1], n * sizeof(float)));
    FL_EXPECT(kt_same_bits(dk[0], dk[1], n * sizeof(float)));
    FL_EXPECT(kt_same_bits(dv[0], dv[1], n * sizeof(float)));
    for (int r = 0; r < 2; r++) free(out[r]), free(lse[r]), free(dq[r]), free(dk[r]), free(dv[r]);
    free(q), free(k), free(v), free(w);
}

static void test_planning_leaves_outputs(void) {
    const int64_t B = 1, H = 2, L = 3, D = 16;
    const size_t n = (size_t)(B * H * L * D);
    float *x = fl_test_randn(n, 70, 1.0f), *o = fl_test_randn(n, 71, 1.0f), *o0 = kt_dup(o, n);
    float *x0 = kt_dup(x, n), *lse = fl_test_randn((size_t)(B * H * L), 72, 1.0f), *lse0 = kt_dup(lse, (size_t)(B * H * L));
    float *pe = make_pe(B, L, 73);
    fl_tensor tx = fl_tensor_f32_4d(x, B, H, L, D), to = fl_tensor_f32_4d(o, B, H, L, D);
    fl_tensor tl = fl_tensor_f32_3d(lse, B, H, L), tpe = fl_tensor_f32_4d(pe, B, L, D / 2, 2);
    ctx->planning = true;
    fl_op_rope(ctx, &tx, &tpe, &to);
    fl_op_rope(ctx, &tx, &tpe, &tx);
    fl_op_rope_backward(ctx, &tx, &tpe, &to);
    fl_op_attention(ctx, &tx, &tx, &tx, &to, &tl, 0.25f);
    fl_op_attention_backward(ctx, &tx, &tx, &tx, &tx, &tx, &tl, &to, &to, &to, 0.25f);
    ctx->planning = false;
    FL_EXPECT(kt_same_bits(x, x0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(o, o0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(lse, lse0, (size_t)(B * H * L) * sizeof(float)));
    free(x);
    free(o);
    free(o0);
    free(x0);
    free(lse);
    free(lse0);
    free(pe);
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_rope_table);
    FL_RUN(test_rope);
    FL_RUN(test_rope_backward);
    FL_RUN(test_attention_forward);
    FL_RUN(test_attention_backward);
    FL_RUN(test_attention_batch_invariant);
    FL_RUN(test_planning_leaves_outputs);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
