/*
 * test_ops_norm.c — CPU layernorm, ln_modulate and rmsnorm, forward and backward.
 *
 * Forwards (outputs and saved statistics) are compared with double-precision loops on odd shapes;
 * ln_modulate takes shift and scale as column chunks of a [B, 6D] modulation tensor, as Flux's
 * blocks do. Backwards are checked with finite differences of L = sum(w * forward) computed in
 * double (kernel_test_util.h: h = 1e-3, atol 1e-4, rtol 1e-3), together with the overwrite
 * semantics of dshift/dscale (chunks of a wider gradient, the other chunks untouched), the NULL
 * variants, rmsnorm's accumulating dweight, a threaded dweight reduction, and planning mode.
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

#define EPS 1e-6f

/* ---- naive references in double ------------------------------------------------------------- */

/* xhat of one row, with its mean and rstd */
static void ref_ln_row(const float *x, int64_t D, double eps, double *xhat, double *mean, double *rstd) {
    double mu = 0.0, var = 0.0;
    for (int64_t j = 0; j < D; j++) mu += x[j];
    mu /= (double)D;
    for (int64_t j = 0; j < D; j++) var += (x[j] - mu) * (x[j] - mu);
    var /= (double)D;
    double rs = 1.0 / sqrt(var + eps);
    for (int64_t j = 0; j < D; j++) xhat[j] = (x[j] - mu) * rs;
    if (mean) *mean = mu;
    if (rstd) *rstd = rs;
}

typedef struct ln_state {
    const float *x, *w, *shift, *scale; /* shift/scale: NULL for plain layernorm; row stride sld */
    int64_t B, T, D, sld;
} ln_state;

/* Writes y (B*T*D) in double for layernorm (shift == NULL) or ln_modulate. */
static void ref_ln_forward(const ln_state *s, double *y) {
    double *xhat = malloc((size_t)s->D * sizeof(double));
    for (int64_t r = 0; r < s->B * s->T; r++) {
        ref_ln_row(s->x + r * s->D, s->D, EPS, xhat, NULL, NULL);
        int64_t b = r / s->T;
        for (int64_t j = 0; j < s->D; j++) {
            double v = xhat[j];
            if (s->shift) v = v * (1.0 + s->scale[b * s->sld + j]) + s->shift[b * s->sld + j];
            y[r * s->D + j] = v;
        }
    }
    free(xhat);
}

static double ln_loss(void *p) {
    const ln_state *s = p;
    size_t n = (size_t)(s->B * s->T * s->D);
    double *y = malloc(n * sizeof(double));
    ref_ln_forward(s, y);
    double l = kt_dot(s->w, y, n);
    free(y);
    return l;
}

/* ---- layernorm ------------------------------------------------------------------------------ */

static void test_layernorm_forward(void) {
    const int64_t R = 21, D = 37;
    const size_t n = (size_t)(R * D);
    float *x = fl_test_randn(n, 1, 2.0f), *y = kt_alloc(n), *mean = kt_alloc(R), *rstd = kt_alloc(R);
    for (size_t i = n / 2; i < n; i++) x[i] += 50.0f; /* rows with a large offset: two-pass variance */
    float *want = kt_alloc(n), *wmean = kt_alloc(R), *wrstd = kt_alloc(R);
    double *xhat = malloc((size_t)D * sizeof(double));
    for (int64_t r = 0; r < R; r++) {
        double mu, rs;
        ref_ln_row(x + r * D, D, EPS, xhat, &mu, &rs);
        for (int64_t j = 0; j < D; j++) want[r * D + j] = (float)xhat[j];
        wmean[r] = (float)mu;
        wrstd[r] = (float)rs;
    }
    fl_tensor tx = fl_tensor_f32_3d(x, 3, 7, D), ty = fl_tensor_f32_3d(y, 3, 7, D);
    fl_tensor tm = fl_tensor_f32_2d(mean, 3, 7), tr = fl_tensor_f32_2d(rstd, 3, 7);
    fl_op_layernorm(ctx, &tx, &ty, &tm, &tr, EPS);
    FL_EXPECT_CLOSE("layernorm y", y, want, n, 2e-5, 1e-5);
    FL_EXPECT_CLOSE("layernorm mean", mean, wmean, R, 1e-6, 1e-6);
    FL_EXPECT_CLOSE("layernorm rstd", rstd, wrstd, R, 0, 1e-5);
    free(x);
    free(y);
    free(mean);
    free(rstd);
    free(want);
    free(wmean);
    free(wrstd);
    free(xhat);
}

static void test_layernorm_backward(void) {
    const int64_t R = 13, D = 24;
    const size_t n = (size_t)(R * D);
    float *x = fl_test_randn(n, 2, 1.5f), *w = fl_test_randn(n, 3, 1.0f), *y = kt_alloc(n);
    float *mean = kt_alloc(R), *rstd = kt_alloc(R), *dx = kt_alloc(n);
    kt_fill_nan(dx, n);
    fl_tensor tx = fl_tensor_f32_2d(x, R, D), ty = fl_tensor_f32_2d(y, R, D), tw = fl_tensor_f32_2d(w, R, D);
    fl_tensor tm = fl_tensor_f32_1d(mean, R), tr = fl_tensor_f32_1d(rstd, R), tdx = fl_tensor_f32_2d(dx, R, D);
    fl_op_layernorm(ctx, &tx, &ty, &tm, &tr, EPS);
    fl_op_layernorm_backward(ctx, &tw, &tx, &tm, &tr, &tdx);
    ln_state st = {x, w, NULL, NULL, 1, R, D, 0};
    KT_CHECK_GRAD("layernorm dx", x, n, dx, n, 1, ln_loss, &st);
    free(x);
    free(w);
    free(y);
    free(mean);
    free(rstd);
    free(dx);
}

/* ---- ln_modulate ---------------------------------------------------------------------------- */

static void test_ln_modulate_forward(void) {
    const int64_t B = 2, T = 9, D = 24, W = 6 * D;
    const size_t n = (size_t)(B * T * D);
    float *x = fl_test_randn(n, 4, 1.0f), *mod = fl_test_randn((size_t)(B * W), 5, 0.5f), *y = kt_alloc(n);
    float *mean = kt_alloc((size_t)(B * T)), *rstd = kt_alloc((size_t)(B * T)), *want = kt_alloc(n);
    fl_tensor tmod = fl_tensor_f32_2d(mod, B, W);
    fl_tensor shift = fl_tensor_slice(&tmod, 1, 3 * D, D), scale = fl_tensor_slice(&tmod, 1, 4 * D, D);
    fl_tensor tx = fl_tensor_f32_3d(x, B, T, D), ty = fl_tensor_f32_3d(y, B, T, D);
    fl_tensor tm = fl_tensor_f32_2d(mean, B, T), tr = fl_tensor_f32_2d(rstd, B, T);
    fl_op_ln_modulate(ctx, &tx, &shift, &scale, &ty, &tm, &tr, EPS);
    ln_state st = {x, NULL, mod + 3 * D, mod + 4 * D, B, T, D, W};
    double *yd = malloc(n * sizeof(double));
    ref_ln_forward(&st, yd);
    kt_to_float(yd, want, n);
    FL_EXPECT_CLOSE("ln_modulate y", y, want, n, 2e-5, 1e-5);
    double *xhat = malloc((size_t)D * sizeof(double));
    float *wm = kt_alloc((size_t)(B * T)), *wr = kt_alloc((size_t)(B * T));
    for (int64_t r = 0; r < B * T; r++) {
        double mu, rs;
        ref_ln_row(x + r * D, D, EPS, xhat, &mu, &rs);
        wm[r] = (float)mu;
        wr[r] = (float)rs;
    }
    FL_EXPECT_CLOSE("ln_modulate mean", mean, wm, (size_t)(B * T), 1e-6, 1e-6);
    FL_EXPECT_CLOSE("ln_modulate rstd", rstd, wr, (size_t)(B * T), 0, 1e-5);
    free(x);
    free(mod);
    free(y);
    free(mean);
    free(rstd);
    free(want);
    free(yd);
    free(xhat);
    free(wm);
    free(wr);
}

static void test_ln_modulate_backward(void) {
    const int64_t B = 2, T = 7, D = 16, W = 6 * D;
    const size_t n = (size_t)(B * T * D);
    float *x = fl_test_randn(n, 6, 1.0f), *mod = fl_test_randn((size_t)(B * W), 7, 0.5f), *w = fl_test_randn(n, 8, 1.0f);
    float *y = kt_alloc(n), *mean = kt_alloc((size_t)(B * T)), *rstd = kt_alloc((size_t)(B * T)), *dx = kt_alloc(n);
    float *dmod = fl_test_randn((size_t)(B * W), 9, 1.0f), *dmod0 = kt_dup(dmod, (size_t)(B * W));
    fl_tensor tmod = fl_tensor_f32_2d(mod, B, W), tdmod = fl_tensor_f32_2d(dmod, B, W);
    fl_tensor shift = fl_tensor_slice(&tmod, 1, 0, D), scale = fl_tensor_slice(&tmod, 1, D, D);
    fl_tensor dshift = fl_tensor_slice(&tdmod, 1, 0, D), dscale = fl_tensor_slice(&tdmod, 1, D, D);
    fl_tensor tx = fl_tensor_f32_3d(x, B, T, D), ty = fl_tensor_f32_3d(y, B, T, D), tw = fl_tensor_f32_3d(w, B, T, D);
    fl_tensor tm = fl_tensor_f32_2d(mean, B, T), tr = fl_tensor_f32_2d(rstd, B, T), tdx = fl_tensor_f32_3d(dx, B, T, D);
    fl_op_ln_modulate(ctx, &tx, &shift, &scale, &ty, &tm, &tr, EPS);
    kt_fill_nan(dx, n);
    fl_op_ln_modulate_backward(ctx, &tw, &tx, &scale, &tm, &tr, &tdx, &dshift, &dscale);
    ln_state st = {x, w, mod, mod + D, B, T, D, W};
    KT_CHECK_GRAD("ln_modulate dx", x, n, dx, n, 1, ln_loss, &st);
    /* shift and scale gradients: finite differences over the chunks inside mod */
    float *an = kt_alloc((size_t)(B * 2 * D)), *fd = kt_alloc((size_t)(B * 2 * D));
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < 2 * D; j++) {
            size_t idx = (size_t)(b * W + j);
            an[b * 2 * D + j] = dmod[idx];
            kt_fd_grad(mod, &idx, 1, ln_loss, &st, &fd[b * 2 * D + j]);
        }
    FL_EXPECT_CLOSE("ln_modulate dshift, dscale", an, fd, (size_t)(B * 2 * D), KT_FD_ATOL, KT_FD_RTOL);
    int bad = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 2 * D; j < W; j++) bad += dmod[b * W + j] != dmod0[b * W + j];
    FL_EXPECTF(bad == 0, "dshift/dscale wrote outside their chunks (%d elements)", bad);

    /* NULL dshift / dscale: same dx, and the given one still overwrites */
    float *dx2 = kt_alloc(n), *dmod2 = fl_test_randn((size_t)(B * W), 10, 1.0f);
    fl_tensor tdx2 = fl_tensor_f32_3d(dx2, B, T, D), tdmod2 = fl_tensor_f32_2d(dmod2, B, W);
    fl_tensor dscale2 = fl_tensor_slice(&tdmod2, 1, D, D), dshift2 = fl_tensor_slice(&tdmod2, 1, 0, D);
    fl_op_ln_modulate_backward(ctx, &tw, &tx, &scale, &tm, &tr, &tdx2, NULL, &dscale2);
    FL_EXPECT_CLOSE("ln_modulate dx without dshift", dx2, dx, n, 0, 0);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = D; j < 2 * D; j++) FL_EXPECT(dmod2[b * W + j] == dmod[b * W + j]);
    fl_op_ln_modulate_backward(ctx, &tw, &tx, &scale, &tm, &tr, &tdx2, &dshift2, NULL);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < D; j++) FL_EXPECT(dmod2[b * W + j] == dmod[b * W + j]);
    fl_op_ln_modulate_backward(ctx, &tw, &tx, &scale, &tm, &tr, &tdx2, NULL, NULL);
    FL_EXPECT_CLOSE("ln_modulate dx alone", dx2, dx, n, 0, 0);
    free(x);
    free(mod);
    free(w);
    free(y);
    free(mean);
    free(rstd);
    free(dx);
    free(dmod);
    free(dmod0);
    free(an);
    free(fd);
    free(dx2);
    free(dmod2);
}

/* Large enough for the threaded paths; dshift/dscale against double reductions. */
static void test_ln_modulate_backward_large(void) {
    const int64_t B = 2, T = 200, D = 300;
    const size_t n = (size_t)(B * T * D);
    float *x = fl_test_randn(n, 11, 1.0f), *dy = fl_test_randn(n, 12, 1.0f), *sc = fl_test_randn((size_t)(B * D), 13, 0.3f);
    float *sh = fl_test_randn((size_t)(B * D), 14, 0.3f), *y = kt_alloc(n), *dx = kt_alloc(n);
    float *mean = kt_alloc((size_t)(B * T)), *rstd = kt_alloc((size_t)(B * T));
    float *ds = kt_alloc((size_t)(B * D)), *dc = kt_alloc((size_t)(B * D));
    float *ws = kt_alloc((size_t)(B * D)), *wc = kt_alloc((size_t)(B * D)), *wdx = kt_alloc(n);
    fl_tensor tx = fl_tensor_f32_3d(x, B, T, D), tdy = fl_tensor_f32_3d(dy, B, T, D), ty = fl_tensor_f32_3d(y, B, T, D);
    fl_tensor tsc = fl_tensor_f32_2d(sc, B, D), tsh = fl_tensor_f32_2d(sh, B, D), tdx = fl_tensor_f32_3d(dx, B, T, D);
    fl_tensor tm = fl_tensor_f32_2d(mean, B, T), tr = fl_tensor_f32_2d(rstd, B, T);
    fl_tensor tds = fl_tensor_f32_2d(ds, B, D), tdc = fl_tensor_f32_2d(dc, B, D);
    fl_op_ln_modulate(ctx, &tx, &tsh, &tsc, &ty, &tm, &tr, EPS);
    fl_op_ln_modulate_backward(ctx, &tdy, &tx, &tsc, &tm, &tr, &tdx, &tds, &tdc);
    double *xhat = malloc((size_t)D * sizeof(double)), *as = calloc((size_t)(B * D), sizeof(double));
    double *ac = calloc((size_t)(B * D), sizeof(double));
    for (int64_t r = 0; r < B * T; r++) {
        int64_t b = r / T;
        double mg = 0.0, mgx = 0.0, rs = 0.0;
        ref_ln_row(x + r * D, D, EPS, xhat, NULL, &rs);
        for (int64_t j = 0; j < D; j++) {
            double g = dy[r * D + j] * (1.0 + sc[b * D + j]);
            mg += g;
            mgx += g * xhat[j];
            as[b * D + j] += dy[r * D + j];
            ac[b * D + j] += dy[r * D + j] * xhat[j];
        }
        mg /= (double)D;
        mgx /= (double)D;
        for (int64_t j = 0; j < D; j++) {
            double g = dy[r * D + j] * (1.0 + sc[b * D + j]);
            wdx[r * D + j] = (float)(rs * (g - mg - xhat[j] * mgx));
        }
    }
    kt_to_float(as, ws, (size_t)(B * D));
    kt_to_float(ac, wc, (size_t)(B * D));
    FL_EXPECT_CLOSE("ln_modulate dx (large)", dx, wdx, n, 1e-5, 1e-4);
    FL_EXPECT_CLOSE("ln_modulate dshift (large)", ds, ws, (size_t)(B * D), 1e-4, 1e-5);
    FL_EXPECT_CLOSE("ln_modulate dscale (large)", dc, wc, (size_t)(B * D), 1e-4, 1e-4);
    free(x);
    free(dy);
    free(sc);
    free(sh);
    free(y);
    free(dx);
    free(mean);
    free(rstd);
    free(ds);
    free(dc);
    free(ws);
    free(wc);
    free(wdx);
    free(xhat);
    free(as);
    free(ac);
}

/* ---- rmsnorm -------------------------------------------------------------------------------- */

typedef struct rms_state {
    const float *x, *weight, *w;
    int64_t R, D;
} rms_state;

static double rms_loss(void *p) {
    const rms_state *s = p;
    double l = 0.0;
    for (int64_t r = 0; r < s->R; r++) {
        const float *x = s->x + r * s->D;
        double ms = 0.0;
        for (int64_t j = 0; j < s->D; j++) ms += (double)x[j] * x[j];
        double rs = 1.0 / sqrt(ms / (double)s->D + EPS);
        for (int64_t j = 0; j < s->D; j++) l += s->w[r * s->D + j] * x[j] * rs * s->weight[j];
    }
    return l;
}

static void test_rmsnorm_forward(void) {
    const int64_t R = 30, D = 16;
    const size_t n = (size_t)(R * D);
    float *x = fl_test_randn(n, 20, 1.5f), *weight = fl_test_randn((size_t)D, 21, 0.2f);
    for (int64_t j = 0; j < D; j++) weight[j] += 1.0f;
    float *y = kt_alloc(n), *rstd = kt_alloc(R), *want = kt_alloc(n), *wr = kt_alloc(R);
    for (int64_t r = 0; r < R; r++) {
        double ms = 0.0;
        for (int64_t j = 0; j < D; j++) ms += (double)x[r * D + j] * x[r * D + j];
        double rs = 1.0 / sqrt(ms / (double)D + EPS);
        wr[r] = (float)rs;
        for (int64_t j = 0; j < D; j++) want[r * D + j] = (float)(x[r * D + j] * rs * weight[j]);
    }
    fl_tensor tx = fl_tensor_f32_4d(x, 2, 3, 5, D), ty = fl_tensor_f32_4d(y, 2, 3, 5, D);
    fl_tensor tw = fl_tensor_f32_1d(weight, D), tr = fl_tensor_f32_3d(rstd, 2, 3, 5);
    fl_op_rmsnorm(ctx, &tx, &tw, &ty, &tr, EPS);
    FL_EXPECT_CLOSE("rmsnorm y", y, want, n, 1e-6, 1e-5);
    FL_EXPECT_CLOSE("rmsnorm rstd", rstd, wr, R, 0, 1e-6);
    free(x);
    free(weight);
    free(y);
    free(rstd);
    free(want);
    free(wr);
}

static void test_rmsnorm_backward(void) {
    const int64_t R = 11, D = 20;
    const size_t n = (size_t)(R * D);
    float *x = fl_test_randn(n, 22, 1.0f), *weight = fl_test_randn((size_t)D, 23, 0.3f), *w = fl_test_randn(n, 24, 1.0f);
    for (int64_t j = 0; j < D; j++) weight[j] += 1.0f;
    float *y = kt_alloc(n), *rstd = kt_alloc(R), *dx = kt_alloc(n);
    float *dw0 = fl_test_randn((size_t)D, 25, 1.0f), *dw = kt_dup(dw0, (size_t)D);
    fl_tensor tx = fl_tensor_f32_2d(x, R, D), ty = fl_tensor_f32_2d(y, R, D), tw = fl_tensor_f32_2d(w, R, D);
    fl_tensor tweight = fl_tensor_f32_1d(weight, D), tr = fl_tensor_f32_1d(rstd, R);
    fl_tensor tdx = fl_tensor_f32_2d(dx, R, D), tdw = fl_tensor_f32_1d(dw, D);
    fl_op_rmsnorm(ctx, &tx, &tweight, &ty, &tr, EPS);
    kt_fill_nan(dx, n);
    fl_op_rmsnorm_backward(ctx, &tw, &tx, &tweight, &tr, &tdx, &tdw);
    rms_state st = {x, weight, w, R, D};
    KT_CHECK_GRAD("rmsnorm dx", x, n, dx, n, 1, rms_loss, &st);
    float *acc = kt_alloc((size_t)D);
    for (int64_t j = 0; j < D; j++) acc[j] = dw[j] - dw0[j]; /* dweight accumulates */
    KT_CHECK_GRAD("rmsnorm dweight (accumulated)", weight, (size_t)D, acc, (size_t)D, 2, rms_loss, &st);
    float *dx2 = kt_alloc(n);
    fl_tensor tdx2 = fl_tensor_f32_2d(dx2, R, D);
    fl_op_rmsnorm_backward(ctx, &tw, &tx, &tweight, &tr, &tdx2, NULL);
    FL_EXPECT_CLOSE("rmsnorm dx without dweight", dx2, dx, n, 0, 0);
    free(x);
    free(weight);
    free(w);
    free(y);
    free(rstd);
    free(dx);
    free(dw0);
    free(dw);
    free(acc);
    free(dx2);
}

/* Many short rows (per-head q/k norm): the threaded dweight reduction against a double sum. */
static void test_rmsnorm_dweight_large(void) {
    const int64_t R = 3000, D = 24;
    const size_t n = (size_t)(R * D);
    float *x = fl_test_randn(n, 26, 1.0f), *dy = fl_test_randn(n, 27, 1.0f), *weight = fl_test_randn((size_t)D, 28, 1.0f);
    float *y = kt_alloc(n), *rstd = kt_alloc(R), *dx = kt_alloc(n), *dw = kt_alloc((size_t)D), *want = kt_alloc((size_t)D);
    fl_tensor tx = fl_tensor_f32_2d(x, R, D), ty = fl_tensor_f32_2d(y, R, D), tdy = fl_tensor_f32_2d(dy, R, D);
    fl_tensor tweight = fl_tensor_f32_1d(weight, D), tr = fl_tensor_f32_1d(rstd, R);
    fl_tensor tdx = fl_tensor_f32_2d(dx, R, D), tdw = fl_tensor_f32_1d(dw, D);
    fl_op_rmsnorm(ctx, &tx, &tweight, &ty, &tr, EPS);
    fl_op_rmsnorm_backward(ctx, &tdy, &tx, &tweight, &tr, &tdx, &tdw);
    for (int64_t j = 0; j < D; j++) {
        double s = 0.0;
        for (int64_t r = 0; r < R; r++) {
            double ms = 0.0;
            for (int64_t k = 0; k < D; k++) ms += (double)x[r * D + k] * x[r * D + k];
            s += (double)dy[r * D + j] * x[r * D + j] / sqrt(ms / (double)D + EPS);
        }
        want[j] = (float)s;
    }
    FL_EXPECT_CLOSE("rmsnorm dweight (large)", dw, want, (size_t)D, 1e-4, 1e-5);
    free(x);
    free(dy);
    free(weight);
    free(y);
    free(rstd);
    free(dx);
    free(dw);
    free(want);
}

static void test_planning_leaves_outputs(void) {
    const int64_t B = 2, T = 3, D = 8;
    const size_t n = (size_t)(B * T * D);
    float *x = fl_test_randn(n, 30, 1.0f), *o = fl_test_randn(n, 31, 1.0f), *o0 = kt_dup(o, n);
    float *st = fl_test_randn((size_t)(B * T), 32, 1.0f), *st0 = kt_dup(st, (size_t)(B * T));
    float *v = fl_test_randn((size_t)(B * D), 33, 1.0f), *v0 = kt_dup(v, (size_t)(B * D));
    fl_tensor tx = fl_tensor_f32_3d(x, B, T, D), to = fl_tensor_f32_3d(o, B, T, D), ts = fl_tensor_f32_2d(st, B, T);
    fl_tensor tv = fl_tensor_f32_2d(v, B, D), tw = fl_tensor_f32_1d(v, D);
    ctx->planning = true;
    fl_op_layernorm(ctx, &tx, &to, &ts, &ts, EPS);
    fl_op_layernorm_backward(ctx, &tx, &tx, &ts, &ts, &to);
    fl_op_ln_modulate(ctx, &tx, &tv, &tv, &to, &ts, &ts, EPS);
    fl_op_ln_modulate_backward(ctx, &tx, &tx, &tv, &ts, &ts, &to, &tv, &tv);
    fl_op_rmsnorm(ctx, &tx, &tw, &to, &ts, EPS);
    fl_op_rmsnorm_backward(ctx, &tx, &tx, &tw, &ts, &to, &tw);
    ctx->planning = false;
    FL_EXPECT(kt_same_bits(o, o0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(st, st0, (size_t)(B * T) * sizeof(float)));
    FL_EXPECT(kt_same_bits(v, v0, (size_t)(B * D) * sizeof(float)));
    free(x);
    free(o);
    free(o0);
    free(st);
    free(st0);
    free(v);
    free(v0);
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_layernorm_forward);
    FL_RUN(test_layernorm_backward);
    FL_RUN(test_ln_modulate_forward);
    FL_RUN(test_ln_modulate_backward);
    FL_RUN(test_ln_modulate_backward_large);
    FL_RUN(test_rmsnorm_forward);
    FL_RUN(test_rmsnorm_backward);
    FL_RUN(test_rmsnorm_dweight_large);
    FL_RUN(test_planning_leaves_outputs);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
