/*
 * test_ops_train.c — CPU timestep embedding, flow interpolation, MSE loss, sum of squares and
 * AdamW.
 *
 * The timestep embedding is compared with Flux's definition (cosine half first, a zero column for
 * odd widths); flow_mix with its two formulas; the loss value and gradient with double loops and
 * the gradient also by finite differences (kernel_test_util.h: h = 1e-3, atol 1e-4, rtol 1e-3);
 * the sum of squares must match a double sum to 1e-12 relative on a million elements (an f32
 * accumulator would be off by ~1e-4); AdamW runs three steps against a double-precision rendering
 * of torch.optim.AdamW's update (decay param *= 1 - lr * wd first). Planning mode changes nothing.
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

static void check_timestep_embedding(int64_t dim) {
    const int64_t B = 6;
    float t[6] = {0.0f, 0.25f, 0.5f, 0.731f, 0.999f, 1.0f};
    float *out = kt_alloc((size_t)(B * dim)), *want = kt_alloc((size_t)(B * dim));
    kt_fill_nan(out, (size_t)(B * dim));
    fl_tensor tt = fl_tensor_f32_1d(t, B), to = fl_tensor_f32_2d(out, B, dim);
    fl_op_timestep_embedding(ctx, &tt, &to, 1000.0f, 10000.0f);
    int64_t half = dim / 2;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < half; i++) {
            double freq = exp(-log(10000.0) * (double)i / (double)half);
            double arg = 1000.0 * t[b] * freq;
            want[b * dim + i] = (float)cos(arg);
            want[b * dim + half + i] = (float)sin(arg);
        }
        if (dim % 2) want[b * dim + dim - 1] = 0.0f;
    }
    char what[64];
    snprintf(what, sizeof what, "timestep_embedding dim %lld", (long long)dim);
    FL_EXPECT_CLOSE(what, out, want, (size_t)(B * dim), 1e-5, 0);
    if (dim % 2)
        for (int64_t b = 0; b < B; b++) FL_EXPECT(out[b * dim + dim - 1] == 0.0f);
    free(out);
    free(want);
}

static void test_timestep_embedding(void) {
    check_timestep_embedding(16);
    check_timestep_embedding(7);
    check_timestep_embedding(256);
}

static void test_flow_mix(void) {
    const int64_t B = 3, n = 4 * 5;
    float t[3] = {0.0f, 0.3f, 1.0f};
    float *x0 = fl_test_randn((size_t)(B * n), 1, 1.0f), *noise = fl_test_randn((size_t)(B * n), 2, 1.0f);
    float *xt = kt_alloc((size_t)(B * n)), *target = kt_alloc((size_t)(B * n));
    float *wx = kt_alloc((size_t)(B * n)), *wt = kt_alloc((size_t)(B * n));
    fl_tensor tx0 = fl_tensor_f32_3d(x0, B, 4, 5), tn = fl_tensor_f32_3d(noise, B, 4, 5);
    fl_tensor txt = fl_tensor_f32_3d(xt, B, 4, 5), ttg = fl_tensor_f32_3d(target, B, 4, 5), tt = fl_tensor_f32_1d(t, B);
    fl_op_flow_mix(ctx, &tx0, &tn, &tt, &txt, &ttg);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            double a = x0[b * n + i], e = noise[b * n + i];
            wx[b * n + i] = (float)((1.0 - t[b]) * a + t[b] * e);
            wt[b * n + i] = (float)(e - a);
        }
    FL_EXPECT_CLOSE("flow_mix xt", xt, wx, (size_t)(B * n), 1e-6, 1e-6);
    FL_EXPECT_CLOSE("flow_mix target", target, wt, (size_t)(B * n), 1e-6, 1e-6);
    /* t = 0 gives x0 exactly, t = 1 the noise exactly */
    FL_EXPECT(kt_same_bits(xt, x0, (size_t)n * sizeof(float)));
    FL_EXPECT(kt_same_bits(xt + 2 * n, noise + 2 * n, (size_t)n * sizeof(float)));
    free(x0);
    free(noise);
    free(xt);
    free(target);
    free(wx);
    free(wt);
}

typedef struct mse_state {
    const float *pred, *target;
    size_t n;
} mse_state;

static double mse_ref(void *p) {
    const mse_state *s = p;
    double sum = 0.0;
    for (size_t i = 0; i < s->n; i++) {
        double d = (double)s->pred[i] - s->target[i];
        sum += d * d;
    }
    return sum / (double)s->n;
}

static void test_mse_loss(void) {
    const size_t n = 3 * 7 * 11;
    float *pred = fl_test_randn(n, 3, 1.0f), *target = fl_test_randn(n, 4, 1.0f), *dpred = kt_alloc(n);
    float *want = kt_alloc(n);
    kt_fill_nan(dpred, n);
    fl_tensor tp = fl_tensor_f32_3d(pred, 3, 7, 11), tt = fl_tensor_f32_3d(target, 3, 7, 11);
    fl_tensor td = fl_tensor_f32_3d(dpred, 3, 7, 11);
    double loss = fl_op_mse_loss(ctx, &tp, &tt, &td);
    mse_state st = {pred, target, n};
    double ref = mse_ref(&st);
    FL_EXPECTF(fabs(loss - ref) <= 1e-6 * ref, "mse %.10g, want %.10g", loss, ref);
    for (size_t i = 0; i < n; i++) want[i] = (float)(2.0 * ((double)pred[i] - target[i]) / (double)n);
    FL_EXPECT_CLOSE("mse dpred", dpred, want, n, 1e-9, 1e-6);
    KT_CHECK_GRAD("mse dpred (finite differences)", pred, n, dpred, n, 1, mse_ref, &st);
    double again = fl_op_mse_loss(ctx, &tp, &tt, NULL);
    FL_EXPECT(again == loss);

    /* a large loss, threaded, in double */
    const size_t big = 300007;
    float *p2 = fl_test_randn(big, 5, 1.0f), *t2 = fl_test_randn(big, 6, 1.0f), *d2 = kt_alloc(big);
    fl_tensor tp2 = fl_tensor_f32_1d(p2, (int64_t)big), tt2 = fl_tensor_f32_1d(t2, (int64_t)big);
    fl_tensor td2 = fl_tensor_f32_1d(d2, (int64_t)big);
    mse_state st2 = {p2, t2, big};
    double l2 = fl_op_mse_loss(ctx, &tp2, &tt2, &td2), r2 = mse_ref(&st2);
    FL_EXPECTF(fabs(l2 - r2) <= 1e-6 * r2, "large mse %.12g, want %.12g", l2, r2);
    float *w2 = kt_alloc(big);
    for (size_t i = 0; i < big; i++) w2[i] = (float)(2.0 * ((double)p2[i] - t2[i]) / (double)big);
    FL_EXPECT_CLOSE("large mse dpred", d2, w2, big, 1e-12, 1e-6);
    free(w2);
    free(pred);
    free(target);
    free(dpred);
    free(want);
    free(p2);
    free(t2);
    free(d2);
}

static void test_sum_squares(void) {
    const size_t n = (1u << 20) + 3;
    float *x = fl_test_randn(n, 7, 1.0f);
    for (size_t i = 0; i < n; i += 1000) x[i] = 300.0f; /* a few large entries */
    fl_tensor tx = fl_tensor_f32_1d(x, (int64_t)n);
    double got = fl_op_sum_squares(ctx, &tx), want = 0.0;
    for (size_t i = 0; i < n; i++) want += (double)x[i] * x[i];
    FL_EXPECTF(fabs(got - want) <= 1e-12 * want, "sum_squares %.15g, want %.15g", got, want);
    float small[5] = {1.0f, -2.0f, 3.0f, 0.5f, 0.0f};
    fl_tensor ts = fl_tensor_f32_2d(small, 1, 5);
    FL_EXPECT(fl_op_sum_squares(ctx, &ts) == 14.25);
    free(x);
}

/* torch.optim.AdamW (single tensor, not amsgrad, not maximize) in double */
static void ref_adamw(double *p, const float *grad, double *m, double *v, size_t n, const fl_adamw_params *hp) {
    double bc1 = 1.0 - pow(hp->beta1, (double)hp->step), bc2 = 1.0 - pow(hp->beta2, (double)hp->step);
    double step_size = hp->lr / bc1, bc2_sqrt = sqrt(bc2);
    for (size_t i = 0; i < n; i++) {
        double g = (double)grad[i] * hp->grad_scale;
        p[i] *= 1.0 - (double)hp->lr * hp->weight_decay;
        m[i] = hp->beta1 * m[i] + (1.0 - hp->beta1) * g;
        v[i] = hp->beta2 * v[i] + (1.0 - hp->beta2) * g * g;
        double denom = sqrt(v[i]) / bc2_sqrt + hp->eps;
        p[i] -= step_size * m[i] / denom;
    }
}

static void check_adamw(size_t n, int steps, uint64_t seed) {
    float *p = fl_test_randn(n, seed, 1.0f), *m = kt_alloc(n), *v = kt_alloc(n), *want = kt_alloc(n);
    double *pd = malloc(n * sizeof(double)), *md = calloc(n, sizeof(double)), *vd = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) pd[i] = p[i];
    fl_tensor tp = fl_tensor_f32_1d(p, (int64_t)n), tm = fl_tensor_f32_1d(m, (int64_t)n);
    fl_tensor tv = fl_tensor_f32_1d(v, (int64_t)n);
    fl_adamw_params hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f,
                          .grad_scale = 0.5f, .step = 0};
    for (int s = 1; s <= steps; s++) {
        float *g = fl_test_randn(n, seed + 100 + (uint64_t)s, 1.0f);
        g[0] = 0.0f; /* a zero gradient: only the decay and the old moments move it */
        fl_tensor tg = fl_tensor_f32_1d(g, (int64_t)n);
        hp.step = s;
        hp.grad_scale = s == 2 ? 0.25f : 0.5f;
        fl_op_adamw(ctx, &tp, &tg, &tm, &tv, &hp);
        ref_adamw(pd, g, md, vd, n, &hp);
        char what[64];
        kt_to_float(pd, want, n);
        snprintf(what, sizeof what, "adamw param after step %d", s);
        FL_EXPECT_CLOSE(what, p, want, n, 1e-6, 1e-5);
        kt_to_float(md, want, n);
        snprintf(what, sizeof what, "adamw m after step %d", s);
        FL_EXPECT_CLOSE(what, m, want, n, 1e-7, 1e-5);
        kt_to_float(vd, want, n);
        snprintf(what, sizeof what, "adamw v after step %d", s);
        FL_EXPECT_CLOSE(what, v, want, n, 1e-9, 1e-5);
        free(g);
    }
    free(p);
    free(m);
    free(v);
    free(want);
    free(pd);
    free(md);
    free(vd);
}

static void test_adamw(void) {
    check_adamw(1000, 3, 10);
    check_adamw(40001, 3, 20); /* threaded */
}

static void test_planning_leaves_outputs(void) {
    const size_t n = 12;
    float *a = fl_test_randn(n, 30, 1.0f), *b = fl_test_randn(n, 31, 1.0f), *c = fl_test_randn(n, 32, 1.0f);
    float *d = fl_test_randn(n, 33, 1.0f), *t = fl_test_rand_uniform(3, 34, 0.0f, 1.0f);
    float *a0 = kt_dup(a, n), *b0 = kt_dup(b, n), *c0 = kt_dup(c, n), *d0 = kt_dup(d, n);
    fl_tensor ta = fl_tensor_f32_2d(a, 3, 4), tb = fl_tensor_f32_2d(b, 3, 4), tc = fl_tensor_f32_2d(c, 3, 4);
    fl_tensor td = fl_tensor_f32_2d(d, 3, 4), tt = fl_tensor_f32_1d(t, 3);
    fl_adamw_params hp = {.lr = 1.0f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f, .weight_decay = 0.5f,
                          .grad_scale = 1.0f, .step = 1};
    ctx->planning = true;
    fl_op_timestep_embedding(ctx, &tt, &tc, 1000.0f, 10000.0f);
    fl_op_flow_mix(ctx, &ta, &tb, &tt, &tc, &td);
    FL_EXPECT(fl_op_mse_loss(ctx, &ta, &tb, &tc) == 0.0);
    FL_EXPECT(fl_op_sum_squares(ctx, &ta) == 0.0);
    fl_op_adamw(ctx, &ta, &tb, &tc, &td, &hp);
    ctx->planning = false;
    FL_EXPECT(kt_same_bits(a, a0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(b, b0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(c, c0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(d, d0, n * sizeof(float)));
    free(a);
    free(b);
    free(c);
    free(d);
    free(t);
    free(a0);
    free(b0);
    free(c0);
    free(d0);
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_timestep_embedding);
    FL_RUN(test_flow_mix);
    FL_RUN(test_mse_loss);
    FL_RUN(test_sum_squares);
    FL_RUN(test_adamw);
    FL_RUN(test_planning_leaves_outputs);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
