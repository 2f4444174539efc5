/*
 * test_ops_elementwise.c — CPU copy, fill, add, scale, GELU (tanh), SiLU and the gated residual.
 *
 * copy is checked against a naive per-element walk over arbitrary strides (permuted, sliced and
 * 6-d views, strided destinations whose other elements must stay untouched) and across storage
 * dtypes bit for bit against core/tensor.h's converters, including inf, NaN, signed zero,
 * subnormals and f16 overflow. The activations are compared with double-precision formulas on
 * column-sliced views and in place; their backwards and the gated residual's are checked with
 * finite differences (kernel_test_util.h: h = 1e-3, atol 1e-4, rtol 1e-3). Planning mode must
 * leave every output untouched.
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

/* ---- copy and fill ------------------------------------------------------------------------ */

static size_t elem_size(fl_dtype dt) {
    return dt == FL_F32 ? 4 : 2;
}

/* Element at multi-index idx of t, converted to f32. */
static float read_elem(const fl_tensor *t, const int64_t *idx) {
    int64_t off = 0;
    for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
    const char *p = (const char *)t->data + off * (int64_t)elem_size(t->dtype);
    if (t->dtype == FL_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return t->dtype == FL_BF16 ? fl_bf16_to_f32(h) : fl_f16_to_f32(h);
}

/* Raw bits of the element at idx (zero-extended). */
static uint32_t read_bits(const fl_tensor *t, const int64_t *idx) {
    int64_t off = 0;
    for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
    const char *p = (const char *)t->data + off * (int64_t)elem_size(t->dtype);
    if (t->dtype == FL_F32) {
        uint32_t u;
        memcpy(&u, p, 4);
        return u;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static uint32_t convert_bits(float v, fl_dtype dt) {
    if (dt == FL_F32) {
        uint32_t u;
        memcpy(&u, &v, 4);
        return u;
    }
    return dt == FL_BF16 ? fl_f32_to_bf16(v) : fl_f32_to_f16(v);
}

static bool next_index(const fl_tensor *t, int64_t *idx) {
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (++idx[d] < t->shape[d]) return true;
        idx[d] = 0;
    }
    return false;
}

/* Every element of dst equals src's converted to dst's dtype (bit for bit). */
static void expect_copied(const fl_tensor *src, const fl_tensor *dst, const char *what) {
    int64_t idx[FL_MAX_DIMS] = {0};
    if (fl_tensor_numel(dst) == 0) return;
    int bad = 0;
    do {
        uint32_t want = convert_bits(read_elem(src, idx), dst->dtype);
        if (src->dtype == dst->dtype) want = read_bits(src, idx);
        if (read_bits(dst, idx) != want) bad++;
    } while (next_index(dst, idx));
    FL_EXPECTF(bad == 0, "%s: %d elements differ", what, bad);
}

static void test_copy_permuted(void) {
    float *src = fl_test_randn(3 * 4 * 5 * 6, 1, 1.0f), *dst = kt_alloc(360), *back = kt_alloc(360);
    fl_tensor s = fl_tensor_f32_4d(src, 3, 4, 5, 6);
    int perm[4] = {2, 0, 3, 1};
    fl_tensor sp = fl_tensor_permute(&s, perm);
    fl_tensor d = fl_tensor_f32_4d(dst, 5, 3, 6, 4);
    fl_op_copy(ctx, &sp, &d);
    expect_copied(&sp, &d, "permuted -> contiguous");
    /* and back: contiguous source into a permuted destination */
    fl_tensor b = fl_tensor_f32_4d(back, 3, 4, 5, 6);
    fl_tensor bp = fl_tensor_permute(&b, perm);
    fl_op_copy(ctx, &d, &bp);
    FL_EXPECT(kt_same_bits(back, src, 360 * sizeof(float)));
    free(src);
    free(dst);
    free(back);
}

static void test_copy_sliced_into_strided(void) {
    float *src = fl_test_randn(4 * 9 * 11, 2, 1.0f);
    float *dst = fl_test_randn(6 * 5 * 13, 3, 1.0f), *dst0 = kt_dup(dst, 6 * 5 * 13);
    fl_tensor s = fl_tensor_f32_3d(src, 4, 9, 11);
    fl_tensor ss = fl_tensor_slice(&s, 1, 2, 5);
    ss = fl_tensor_slice(&ss, 2, 3, 7); /* [4, 5, 7], strided in two dims */
    fl_tensor d = fl_tensor_f32_3d(dst, 6, 5, 13);
    fl_tensor ds = fl_tensor_slice(&d, 0, 1, 4);
    ds = fl_tensor_slice(&ds, 2, 4, 7); /* [4, 5, 7] inside [6, 5, 13] */
    fl_op_copy(ctx, &ss, &ds);
    expect_copied(&ss, &ds, "sliced -> sliced");
    int untouched_bad = 0;
    for (int64_t a = 0; a < 6; a++)
        for (int64_t b = 0; b < 5; b++)
            for (int64_t c = 0; c < 13; c++) {
                bool inside = a >= 1 && a < 5 && c >= 4 && c < 11;
                size_t i = (size_t)((a * 5 + b) * 13 + c);
                if (!inside && dst[i] != dst0[i]) untouched_bad++;
            }
    FL_EXPECTF(untouched_bad == 0, "%d elements outside the destination view changed", untouched_bad);
    free(src);
    free(dst);
    free(dst0);
}

static void test_copy_6d_round_trip(void) {
    int64_t shape[6] = {2, 3, 1, 4, 2, 3}, pshape[6];
    int perm[6] = {5, 3, 0, 4, 1, 2}, inv[6];
    for (int i = 0; i < 6; i++) {
        inv[perm[i]] = i;
        pshape[i] = shape[perm[i]];
    }
    float *src = fl_test_randn(144, 4, 1.0f), *mid = kt_alloc(144), *back = kt_alloc(144);
    fl_tensor s = fl_tensor_make(src, FL_F32, fl_device_cpu(), 6, shape);
    fl_tensor sp = fl_tensor_permute(&s, perm);
    fl_tensor m = fl_tensor_make(mid, FL_F32, fl_device_cpu(), 6, pshape);
    fl_op_copy(ctx, &sp, &m);
    expect_copied(&sp, &m, "6-d permuted");
    fl_tensor mp = fl_tensor_permute(&m, inv);
    fl_tensor b = fl_tensor_make(back, FL_F32, fl_device_cpu(), 6, shape);
    fl_op_copy(ctx, &mp, &b);
    FL_EXPECT(kt_same_bits(back, src, 144 * sizeof(float)));
    free(src);
    free(mid);
    free(back);
}

/* Values that exercise the converters: specials, f16 subnormals and overflow, bf16 rounding. */
static float *conversion_values(size_t n, uint64_t seed) {
    float *x = fl_test_randn(n, seed, 3.0f);
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-6f, -3e-7f, 6e-8f, 70000.0f,
                              -65504.0f, 65519.0f, 1.00390625f, 1.0f + 1.0f / 256 + 1.0f / 512, 1e-30f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0] && i < n; i++) x[i * 7 % n] = specials[i];
    return x;
}

static void test_copy_dtype_round_trips(void) {
    const size_t n = 5 * 37;
    float *x = conversion_values(n, 5), *back = kt_alloc(n);
    uint16_t *h16 = calloc(n, 2), *b16 = calloc(n, 2), *h16b = calloc(n, 2);
    fl_tensor tx = fl_tensor_f32_2d(x, 5, 37), tb = fl_tensor_f32_2d(back, 5, 37);
    int64_t shape[2] = {5, 37};
    fl_tensor tbf = fl_tensor_make(b16, FL_BF16, fl_device_cpu(), 2, shape);
    fl_tensor thf = fl_tensor_make(h16, FL_F16, fl_device_cpu(), 2, shape);
    fl_tensor thf2 = fl_tensor_make(h16b, FL_F16, fl_device_cpu(), 2, shape);

    fl_op_copy(ctx, &tx, &tbf); /* F32 -> BF16 */
    expect_copied(&tx, &tbf, "F32 -> BF16");
    fl_op_copy(ctx, &tbf, &tb); /* BF16 -> F32 */
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float want = fl_bf16_to_f32(fl_f32_to_bf16(x[i]));
        if (!(isnan(want) ? isnan(back[i]) : memcmp(&want, &back[i], 4) == 0)) bad++;
    }
    FL_EXPECTF(bad == 0, "F32 -> BF16 -> F32: %d elements differ", bad);

    fl_op_copy(ctx, &tx, &thf); /* F32 -> F16 */
    expect_copied(&tx, &thf, "F32 -> F16");
    fl_op_copy(ctx, &thf, &tb); /* F16 -> F32 */
    bad = 0;
    for (size_t i = 0; i < n; i++) {
        float want = fl_f16_to_f32(fl_f32_to_f16(x[i]));
        if (!(isnan(want) ? isnan(back[i]) : memcmp(&want, &back[i], 4) == 0)) bad++;
    }
    FL_EXPECTF(bad == 0, "F32 -> F16 -> F32: %d elements differ", bad);

    fl_op_copy(ctx, &tbf, &thf2); /* BF16 -> F16 */
    expect_copied(&tbf, &thf2, "BF16 -> F16");
    fl_op_copy(ctx, &thf, &tbf); /* F16 -> BF16 */
    expect_copied(&thf, &tbf, "F16 -> BF16");

    /* conversion combined with a permutation and a 2-byte same-dtype strided copy */
    int perm[2] = {1, 0};
    fl_tensor txt = fl_tensor_permute(&tx, perm);
    uint16_t *t16 = calloc(n, 2), *u16 = calloc(n, 2);
    int64_t tshape[2] = {37, 5};
    fl_tensor tt = fl_tensor_make(t16, FL_BF16, fl_device_cpu(), 2, tshape);
    fl_op_copy(ctx, &txt, &tt);
    expect_copied(&txt, &tt, "F32 permuted -> BF16");
    fl_tensor ttp = fl_tensor_permute(&tt, perm);
    fl_tensor tu = fl_tensor_make(u16, FL_BF16, fl_device_cpu(), 2, shape);
    fl_op_copy(ctx, &ttp, &tu);
    expect_copied(&ttp, &tu, "BF16 permuted -> BF16");
    free(x);
    free(back);
    free(h16);
    free(b16);
    free(h16b);
    free(t16);
    free(u16);
}

/* Large enough to be split across threads; also a 0-d copy. */
static void test_copy_large_and_scalar(void) {
    const int64_t R = 64, C = 1030;
    float *src = fl_test_randn((size_t)(R * C), 6, 1.0f), *dst = kt_alloc((size_t)(R * (C - 1)));
    fl_tensor s = fl_tensor_f32_2d(src, R, C), ss = fl_tensor_slice(&s, 1, 1, C - 1);
    fl_tensor d = fl_tensor_f32_2d(dst, R, C - 1);
    fl_op_copy(ctx, &ss, &d);
    expect_copied(&ss, &d, "large column slice");
    uint16_t *h = calloc((size_t)(R * C), 2);
    int64_t shape[2] = {R, C};
    fl_tensor th = fl_tensor_make(h, FL_F16, fl_device_cpu(), 2, shape);
    fl_op_copy(ctx, &s, &th);
    expect_copied(&s, &th, "large F32 -> F16");
    float a = 3.5f, b = 0.0f;
    fl_tensor ta = fl_tensor_make(&a, FL_F32, fl_device_cpu(), 0, NULL);
    fl_tensor tb = fl_tensor_make(&b, FL_F32, fl_device_cpu(), 0, NULL);
    fl_op_copy(ctx, &ta, &tb);
    FL_EXPECT(b == 3.5f);
    free(src);
    free(dst);
    free(h);
}

static void test_fill(void) {
    /* f32 column slice of a 2-d buffer, and a permuted 3-d view */
    float *buf = fl_test_randn(7 * 10, 7, 1.0f), *buf0 = kt_dup(buf, 70);
    fl_tensor t = fl_tensor_f32_2d(buf, 7, 10), ts = fl_tensor_slice(&t, 1, 2, 5);
    fl_op_fill(ctx, &ts, -2.25f);
    int bad = 0;
    for (int64_t i = 0; i < 7; i++)
        for (int64_t j = 0; j < 10; j++) {
            float want = (j >= 2 && j < 7) ? -2.25f : buf0[i * 10 + j];
            if (buf[i * 10 + j] != want) bad++;
        }
    FL_EXPECTF(bad == 0, "f32 fill of a column slice: %d elements wrong", bad);
    fl_tensor t3 = fl_tensor_f32_3d(buf, 2, 5, 7);
    int perm[3] = {2, 0, 1};
    fl_tensor tp = fl_tensor_permute(&t3, perm);
    fl_op_fill(ctx, &tp, 0.5f);
    bad = 0;
    for (int i = 0; i < 70; i++) bad += buf[i] != 0.5f;
    FL_EXPECTF(bad == 0, "f32 fill of a permuted view: %d elements wrong", bad);

    /* bf16 and f16 slices */
    uint16_t h[4 * 6];
    for (int i = 0; i < 24; i++) h[i] = 0xabcd;
    int64_t shape[2] = {4, 6};
    for (int k = 0; k < 2; k++) {
        fl_dtype dt = k ? FL_F16 : FL_BF16;
        fl_tensor th = fl_tensor_make(h, dt, fl_device_cpu(), 2, shape);
        fl_tensor sl = fl_tensor_slice(&th, 1, 1, 3);
        sl = fl_tensor_slice(&sl, 0, 1, 2);
        fl_op_fill(ctx, &sl, 1.3f);
        uint16_t want = dt == FL_BF16 ? fl_f32_to_bf16(1.3f) : fl_f32_to_f16(1.3f);
        bad = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 6; j++) {
                bool inside = i >= 1 && i < 3 && j >= 1 && j < 4;
                uint16_t expect = inside ? want : 0xabcd;
                if (h[i * 6 + j] != expect) bad++;
            }
        FL_EXPECTF(bad == 0, "%s fill of a slice: %d elements wrong", fl_dtype_name(dt), bad);
        for (int i = 0; i < 24; i++) h[i] = 0xabcd;
    }
    float s = 1.0f;
    fl_tensor ts0 = fl_tensor_make(&s, FL_F32, fl_device_cpu(), 0, NULL);
    fl_op_fill(ctx, &ts0, 9.0f);
    FL_EXPECT(s == 9.0f);
    free(buf);
    free(buf0);
}

/* ---- add and scale ------------------------------------------------------------------------ */

static void test_add_and_scale(void) {
    const int64_t R = 9, C = 23;
    float *as = fl_test_randn((size_t)(R * (C + 4)), 8, 1.0f), *bs = fl_test_randn((size_t)(R * (C + 2)), 9, 1.0f);
    float *os = fl_test_randn((size_t)(R * (C + 3)), 10, 1.0f), *o0 = kt_dup(os, (size_t)(R * (C + 3)));
    fl_tensor a = kt_wide_view(as, R, C, 1, 3), b = kt_wide_view(bs, R, C, 2, 0), out = kt_wide_view(os, R, C, 0, 3);
    float *want = kt_alloc((size_t)(R * C)), *got = kt_alloc((size_t)(R * C));

    fl_op_add(ctx, &a, &b, -1.5f, &out);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) {
            want[i * C + j] = (float)((double)as[i * (C + 4) + 1 + j] - 1.5 * bs[i * (C + 2) + 2 + j]);
            got[i * C + j] = os[i * (C + 3) + j];
            FL_EXPECT(j >= 3 || os[i * (C + 3) + C + j] == o0[i * (C + 3) + C + j]);
        }
    FL_EXPECT_CLOSE("add strided", got, want, (size_t)(R * C), 1e-6, 1e-6);

    /* out aliasing a, then out aliasing b */
    fl_op_add(ctx, &a, &b, 2.0f, &a);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) {
            want[i * C + j] += (float)(3.5 * bs[i * (C + 2) + 2 + j]);
            got[i * C + j] = as[i * (C + 4) + 1 + j];
        }
    FL_EXPECT_CLOSE("add out = a", got, want, (size_t)(R * C), 1e-5, 1e-5);
    float *bcopy = kt_dup(bs, (size_t)(R * (C + 2)));
    fl_op_add(ctx, &a, &b, 0.5f, &b);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) {
            want[i * C + j] = as[i * (C + 4) + 1 + j] + 0.5f * bcopy[i * (C + 2) + 2 + j];
            got[i * C + j] = bs[i * (C + 2) + 2 + j];
        }
    FL_EXPECT_CLOSE("add out = b", got, want, (size_t)(R * C), 1e-6, 1e-6);

    /* scale in place on a strided view; the padding stays */
    float *a0 = kt_dup(as, (size_t)(R * (C + 4)));
    fl_op_scale(ctx, &a, -0.25f);
    int bad = 0;
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C + 4; j++) {
            bool inside = j >= 1 && j < C + 1;
            float w = inside ? a0[i * (C + 4) + j] * -0.25f : a0[i * (C + 4) + j];
            if (as[i * (C + 4) + j] != w) bad++;
        }
    FL_EXPECTF(bad == 0, "scale strided: %d elements wrong", bad);

    /* a dense add large enough to be split across threads */
    const size_t n = 70001;
    float *x = fl_test_randn(n, 11, 1.0f), *y = fl_test_randn(n, 12, 1.0f), *z = kt_alloc(n), *zw = kt_alloc(n);
    fl_tensor tx = fl_tensor_f32_1d(x, (int64_t)n), ty = fl_tensor_f32_1d(y, (int64_t)n);
    fl_tensor tz = fl_tensor_f32_1d(z, (int64_t)n);
    fl_op_add(ctx, &tx, &ty, 0.3f, &tz);
    for (size_t i = 0; i < n; i++) zw[i] = x[i] + 0.3f * y[i];
    FL_EXPECT_CLOSE("add dense", z, zw, n, 1e-6, 1e-6);
    free(as);
    free(bs);
    free(os);
    free(o0);
    free(want);
    free(got);
    free(bcopy);
    free(a0);
    free(x);
    free(y);
    free(z);
    free(zw);
}

/* ---- activations -------------------------------------------------------------------------- */

static double gelu_ref(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

static double silu_ref(double x) {
    return x / (1.0 + exp(-x));
}

typedef double (*act_fn)(double);

typedef struct act_state {
    act_fn f;
    const float *x, *w;
    size_t n;
} act_state;

static double act_loss(void *p) {
    const act_state *s = p;
    double l = 0.0;
    for (size_t i = 0; i < s->n; i++) l += s->w[i] * s->f(s->x[i]);
    return l;
}

typedef void (*act_op)(fl_ctx *, const fl_tensor *, fl_tensor *);
typedef void (*act_bwd_op)(fl_ctx *, const fl_tensor *, const fl_tensor *, fl_tensor *);

static void check_activation(const char *name, act_op fwd, act_bwd_op bwd, act_fn ref, uint64_t seed) {
    const int64_t R = 11, C = 29;
    char what[96];
    /* forward on column slices of wider buffers */
    float *xs = fl_test_randn((size_t)(R * (C + 5)), seed, 2.5f), *ys = kt_alloc((size_t)(R * (C + 1)));
    float *want = kt_alloc((size_t)(R * C)), *got = kt_alloc((size_t)(R * C));
    fl_tensor x = kt_wide_view(xs, R, C, 4, 1), y = kt_wide_view(ys, R, C, 0, 1);
    fwd(ctx, &x, &y);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) {
            want[i * C + j] = (float)ref(xs[i * (C + 5) + 4 + j]);
            got[i * C + j] = ys[i * (C + 1) + j];
        }
    snprintf(what, sizeof what, "%s forward", name);
    FL_EXPECT_CLOSE(what, got, want, (size_t)(R * C), 1e-6, 1e-5);
    /* y aliasing x */
    fwd(ctx, &x, &x);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) got[i * C + j] = xs[i * (C + 5) + 4 + j];
    snprintf(what, sizeof what, "%s in place", name);
    FL_EXPECT_CLOSE(what, got, want, (size_t)(R * C), 1e-6, 1e-5);

    /* backward by finite differences, contiguous [R, C] */
    const size_t n = (size_t)(R * C);
    float *xv = fl_test_randn(n, seed + 1, 2.0f), *w = fl_test_randn(n, seed + 2, 1.0f), *dx = kt_alloc(n);
    xv[0] = 0.0f, xv[1] = -7.0f, xv[2] = 7.0f, xv[3] = 1e-3f;
    fl_tensor tx = fl_tensor_f32_2d(xv, R, C), tw = fl_tensor_f32_2d(w, R, C), tdx = fl_tensor_f32_2d(dx, R, C);
    bwd(ctx, &tw, &tx, &tdx);
    act_state st = {ref, xv, w, n};
    snprintf(what, sizeof what, "%s backward", name);
    KT_CHECK_GRAD(what, xv, n, dx, n, seed, act_loss, &st);
    /* dx aliasing dy */
    float *w2 = kt_dup(w, n);
    fl_tensor tw2 = fl_tensor_f32_2d(w2, R, C);
    bwd(ctx, &tw2, &tx, &tw2);
    snprintf(what, sizeof what, "%s backward in place", name);
    FL_EXPECT_CLOSE(what, w2, dx, n, 0, 0);
    free(xs);
    free(ys);
    free(want);
    free(got);
    free(xv);
    free(w);
    free(dx);
    free(w2);
}

static void test_gelu_tanh(void) {
    check_activation("gelu_tanh", fl_op_gelu_tanh, fl_op_gelu_tanh_backward, gelu_ref, 20);
}

static void test_silu(void) {
    check_activation("silu", fl_op_silu, fl_op_silu_backward, silu_ref, 30);
}

/* ---- gated residual ----------------------------------------------------------------------- */

typedef struct gate_state {
    const float *x, *g, *y, *w; /* g: [B, gld] storage, chunk at column 0 */
    int64_t B, T, D, gld;
} gate_state;

static double gate_loss(void *p) {
    const gate_state *s = p;
    double l = 0.0;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->T; t++)
            for (int64_t j = 0; j < s->D; j++) {
                int64_t i = (b * s->T + t) * s->D + j;
                l += s->w[i] * ((double)s->x[i] + (double)s->g[b * s->gld + j] * s->y[i]);
            }
    return l;
}

static void test_gated_residual(void) {
    const int64_t B = 2, T = 5, D = 19, W = 6 * D, n = B * T * D;
    float *x = fl_test_randn((size_t)n, 40, 1.0f), *y = fl_test_randn((size_t)n, 41, 1.0f);
    float *mod = fl_test_randn((size_t)(B * W), 42, 1.0f), *out = kt_alloc((size_t)n), *want = kt_alloc((size_t)n);
    fl_tensor tx = fl_tensor_f32_3d(x, B, T, D), ty = fl_tensor_f32_3d(y, B, T, D);
    fl_tensor tout = fl_tensor_f32_3d(out, B, T, D);
    fl_tensor tmod = fl_tensor_f32_2d(mod, B, W), gate = fl_tensor_slice(&tmod, 1, 2 * D, D);
    const float *g = (const float *)gate.data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < D; j++) {
                int64_t i = (b * T + t) * D + j;
                want[i] = (float)((double)x[i] + (double)g[b * W + j] * y[i]);
            }
    fl_op_gated_residual(ctx, &tx, &gate, &ty, &tout);
    FL_EXPECT_CLOSE("gated_residual", out, want, (size_t)n, 1e-6, 1e-6);
    fl_op_gated_residual(ctx, &tx, &gate, &ty, &tx); /* out aliasing x */
    FL_EXPECT_CLOSE("gated_residual out = x", x, want, (size_t)n, 1e-6, 1e-6);

    /* backward: dy overwrites; dgate is a chunk of a [B, 6D] gradient whose other chunks stay */
    float *x2 = fl_test_randn((size_t)n, 43, 1.0f), *w = fl_test_randn((size_t)n, 44, 1.0f);
    float *dy = kt_alloc((size_t)n), *dmod = fl_test_randn((size_t)(B * W), 45, 1.0f);
    float *dmod0 = kt_dup(dmod, (size_t)(B * W));
    kt_fill_nan(dy, (size_t)n);
    fl_tensor tw = fl_tensor_f32_3d(w, B, T, D), tdy = fl_tensor_f32_3d(dy, B, T, D);
    fl_tensor tdmod = fl_tensor_f32_2d(dmod, B, W), dgate = fl_tensor_slice(&tdmod, 1, 2 * D, D);
    fl_op_gated_residual_backward(ctx, &tw, &gate, &ty, &tdy, &dgate);
    gate_state st = {x2, g, y, w, B, T, D, W};
    KT_CHECK_GRAD("gated_residual dy", y, (size_t)n, dy, (size_t)n, 1, gate_loss, &st);
    float *dg = kt_alloc((size_t)(B * D));
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < D; j++) dg[b * D + j] = dmod[b * W + 2 * D + j];
    /* finite differences over the gate, which lives inside mod */
    float *gd = kt_alloc((size_t)(B * D));
    size_t idx[1];
    int bad = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < D; j++) {
            idx[0] = (size_t)(b * W + 2 * D + j);
            float fd;
            kt_fd_grad(mod, idx, 1, gate_loss, &st, &fd);
            gd[b * D + j] = fd;
        }
    FL_EXPECT_CLOSE("gated_residual dgate", dg, gd, (size_t)(B * D), KT_FD_ATOL, KT_FD_RTOL);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < W; j++)
            if ((j < 2 * D || j >= 3 * D) && dmod[b * W + j] != dmod0[b * W + j]) bad++;
    FL_EXPECTF(bad == 0, "dgate wrote outside its chunk (%d elements)", bad);
    /* dgate may be NULL */
    float *dy2 = kt_alloc((size_t)n);
    fl_tensor tdy2 = fl_tensor_f32_3d(dy2, B, T, D);
    fl_op_gated_residual_backward(ctx, &tw, &gate, &ty, &tdy2, NULL);
    FL_EXPECT_CLOSE("gated_residual dy without dgate", dy2, dy, (size_t)n, 0, 0);
    free(x);
    free(y);
    free(mod);
    free(out);
    free(want);
    free(x2);
    free(w);
    free(dy);
    free(dmod);
    free(dmod0);
    free(dg);
    free(gd);
    free(dy2);
}

/* A larger gated residual backward (threaded reduction over T) against a double reduction. */
static void test_gated_residual_backward_large(void) {
    const int64_t B = 2, T = 300, D = 70, n = B * T * D;
    float *dout = fl_test_randn((size_t)n, 50, 1.0f), *y = fl_test_randn((size_t)n, 51, 1.0f);
    float *g = fl_test_randn((size_t)(B * D), 52, 1.0f), *dy = kt_alloc((size_t)n), *dg = kt_alloc((size_t)(B * D));
    float *want = kt_alloc((size_t)(B * D));
    fl_tensor td = fl_tensor_f32_3d(dout, B, T, D), ty = fl_tensor_f32_3d(y, B, T, D);
    fl_tensor tg = fl_tensor_f32_2d(g, B, D), tdy = fl_tensor_f32_3d(dy, B, T, D), tdg = fl_tensor_f32_2d(dg, B, D);
    fl_op_gated_residual_backward(ctx, &td, &tg, &ty, &tdy, &tdg);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < D; j++) {
            double s = 0.0;
            for (int64_t t = 0; t < T; t++) s += (double)dout[(b * T + t) * D + j] * y[(b * T + t) * D + j];
            want[b * D + j] = (float)s;
        }
    FL_EXPECT_CLOSE("gated_residual dgate (large)", dg, want, (size_t)(B * D), 1e-5, 1e-5);
    free(dout);
    free(y);
    free(g);
    free(dy);
    free(dg);
    free(want);
}

static void test_planning_leaves_outputs(void) {
    const size_t n = 2 * 3 * 4;
    float *a = fl_test_randn(n, 60, 1.0f), *b = fl_test_randn(n, 61, 1.0f), *o = fl_test_randn(n, 62, 1.0f);
    float *a0 = kt_dup(a, n), *b0 = kt_dup(b, n), *o0 = kt_dup(o, n);
    fl_tensor ta = fl_tensor_f32_3d(a, 2, 3, 4), tb = fl_tensor_f32_3d(b, 2, 3, 4), to = fl_tensor_f32_3d(o, 2, 3, 4);
    fl_tensor gate = fl_tensor_f32_2d(a, 2, 4);
    ctx->planning = true;
    fl_op_copy(ctx, &ta, &to);
    fl_op_fill(ctx, &to, 1.0f);
    fl_op_add(ctx, &ta, &tb, 1.0f, &to);
    fl_op_add(ctx, &ta, &tb, 1.0f, &ta);
    fl_op_scale(ctx, &to, 2.0f);
    fl_op_gelu_tanh(ctx, &ta, &to);
    fl_op_gelu_tanh(ctx, &ta, &ta);
    fl_op_gelu_tanh_backward(ctx, &tb, &ta, &to);
    fl_op_silu(ctx, &ta, &to);
    fl_op_silu_backward(ctx, &tb, &ta, &to);
    fl_op_gated_residual(ctx, &ta, &gate, &tb, &to);
    fl_op_gated_residual_backward(ctx, &ta, &gate, &tb, &to, NULL);
    ctx->planning = false;
    FL_EXPECT(kt_same_bits(a, a0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(b, b0, n * sizeof(float)));
    FL_EXPECT(kt_same_bits(o, o0, n * sizeof(float)));
    free(a);
    free(b);
    free(o);
    free(a0);
    free(b0);
    free(o0);
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_copy_permuted);
    FL_RUN(test_copy_sliced_into_strided);
    FL_RUN(test_copy_6d_round_trip);
    FL_RUN(test_copy_dtype_round_trips);
    FL_RUN(test_copy_large_and_scalar);
    FL_RUN(test_fill);
    FL_RUN(test_add_and_scale);
    FL_RUN(test_gelu_tanh);
    FL_RUN(test_silu);
    FL_RUN(test_gated_residual);
    FL_RUN(test_gated_residual_backward_large);
    FL_RUN(test_planning_leaves_outputs);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
