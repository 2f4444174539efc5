/*
 * ops.c — the checked entry points of kernels/ops.h.
 *
 * Each op verifies that its operands match the contract in ops.h (device, dtype, shape, layout)
 * and then calls the context's backend. A mismatch is a bug in the caller, so it aborts with the
 * op's name and the offending operand's shape. In planning mode nothing is computed.
 */
#include "kernels/ops.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "kernels/backend.h"

/* ---- operand checks -------------------------------------------------------------------------- */

#define OP_FAIL(op, ...)                                                                           \
    fl_abort_at(__FILE__, __LINE__, "%s: %s", op, op_message(__VA_ARGS__))

static const char *op_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *op_message(const char *fmt, ...) {
    static _Thread_local char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

static void need_device(const char *op, fl_ctx *ctx, const fl_tensor *t, const char *name) {
    if (!t) OP_FAIL(op, "operand %s is NULL", name);
    if (!fl_device_equal(t->device, ctx->device))
        OP_FAIL(op, "operand %s is on %s:%d, the context on %s:%d", name, fl_device_kind_name(t->device.kind),
                t->device.index, fl_device_kind_name(ctx->device.kind), ctx->device.index);
}

/* Whether operands are checked as a CUDA context checks them: a CUDA context, or a CPU context
 * under the BF16 checking policy (kernels/context.h), which may only plan. */
static bool checks_as_cuda(const fl_ctx *ctx) {
    return ctx->device.kind == FL_DEVICE_CUDA || (ctx->storage_set && ctx->storage == FL_BF16);
}

/* Activations and weights: F32 everywhere; BF16 too on CUDA (and, planning only, on a CPU
 * context under the BF16 checking policy). */
static void need_storage(const char *op, fl_ctx *ctx, const fl_tensor *t, const char *name) {
    need_device(op, ctx, t, name);
    if (t->dtype == FL_F32) return;
    if (t->dtype == FL_BF16 && ctx->device.kind == FL_DEVICE_CUDA) return;
    if (t->dtype == FL_BF16 && checks_as_cuda(ctx)) {
        if (!ctx->planning)
            OP_FAIL(op, "operand %s is BF16 on a CPU context that checks the CUDA dtype policy: it computes "
                        "nothing, so it must stay in planning mode", name);
        return;
    }
    OP_FAIL(op, "operand %s has dtype %s, not supported on %s", name, fl_dtype_name(t->dtype),
            fl_device_kind_name(ctx->device.kind));
}

static void need_f32(const char *op, fl_ctx *ctx, const fl_tensor *t, const char *name) {
    need_device(op, ctx, t, name);
    if (t->dtype != FL_F32) OP_FAIL(op, "operand %s must be F32, is %s", name, fl_dtype_name(t->dtype));
}

static void need_contiguous(const char *op, const fl_tensor *t, const char *name) {
    if (!fl_tensor_is_contiguous(t)) OP_FAIL(op, "operand %s must be contiguous", name);
}

static void need_same_dtype(const char *op, const fl_tensor *a, const fl_tensor *b, const char *names) {
    if (a->dtype != b->dtype)
        OP_FAIL(op, "operands %s differ in dtype (%s vs %s)", names, fl_dtype_name(a->dtype),
                fl_dtype_name(b->dtype));
}

static fl_matrix need_matrix(const char *op, const fl_tensor *t, const char *name) {
    fl_matrix m;
    if (!fl_tensor_matrix(t, &m)) OP_FAIL(op, "operand %s has no matrix view (last dim must be contiguous)", name);
    return m;
}

static void need_shape(const char *op, const fl_tensor *t, const char *name, int ndim, const int64_t *shape) {
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[128], want[128];
        fl_tensor expect = fl_tensor_make(NULL, t->dtype, t->device, ndim, shape);
        OP_FAIL(op, "operand %s has shape %s, expected %s", name, fl_tensor_shape_str(t, got, sizeof got),
                fl_tensor_shape_str(&expect, want, sizeof want));
    }
}

static void need_same_shape(const char *op, const fl_tensor *a, const fl_tensor *b, const char *name_b) {
    need_shape(op, b, name_b, a->ndim, a->shape);
}

static void need_matrix_dims(const char *op, const fl_matrix *m, const char *name, int64_t rows, int64_t cols) {
    if (m->rows != rows || m->cols != cols)
        OP_FAIL(op, "operand %s is a [%lld, %lld] matrix, expected [%lld, %lld]", name, (long long)m->rows,
                (long long)m->cols, (long long)rows, (long long)cols);
}

/* Matrix work of an op that passed its checks (kernels/context.h: the FLOP count). */
/* Counted in double: a planning run over absurd shapes (a test of refusals) must not overflow; the
 * products of real shapes stay far below 2^53, where the count is exact. The total saturates. */
static void count_flops(fl_ctx *ctx, double flops) {
    const double cap = 1.8e19; /* below UINT64_MAX */
    double total = (double)ctx->flops + flops;
    ctx->flops = total >= cap ? (uint64_t)cap : ctx->flops + (uint64_t)flops;
    if (ctx->profile && !ctx->planning) ctx->profile->pending_flops = flops;
}

/* ---- profile (kernels/context.h) ---------------------------------------------------------- */

const char *fl_op_kind_name(fl_op_kind kind) {
    static const char *const names[FL_OPK_COUNT] = {"gemm", "attention", "norm/modulate", "rope",
                                                    "elementwise", "lora", "optimizer", "other"};
    return kind >= 0 && kind < FL_OPK_COUNT ? names[kind] : "?";
}

static double profile_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double profile_begin(const fl_ctx *ctx) {
    return ctx->profile ? profile_now() : 0.0;
}

static void profile_end(fl_ctx *ctx, fl_op_kind kind, double t0) {
    fl_op_profile *p = ctx->profile;
    if (!p) return;
    p->seconds[kind] += profile_now() - t0;
    p->flops[kind] += p->pending_flops;
    p->calls[kind]++;
    p->pending_flops = 0.0;
}

/* Runs one backend call, timed under kind when a profile is attached. */
#define PROFILED(ctx, kind, call)                                                                  \
    do {                                                                                           \
        double t0_ = profile_begin(ctx);                                                           \
        call;                                                                                      \
        profile_end(ctx, kind, t0_);                                                               \
    } while (0)

/* ---- matrix products ------------------------------------------------------------------------ */

void fl_op_gemm(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b, fl_tensor *c,
                float alpha, float beta) {
    static const char op[] = "gemm";
    need_storage(op, ctx, a, "a");
    need_storage(op, ctx, b, "b");
    need_storage(op, ctx, c, "c");
    need_same_dtype(op, a, b, "a, b");
    if (c->dtype != a->dtype && !(a->dtype == FL_BF16 && c->dtype == FL_F32))
        OP_FAIL(op, "c has dtype %s: it must be a's dtype %s, or F32 when a and b are BF16", fl_dtype_name(c->dtype),
                fl_dtype_name(a->dtype));
    fl_matrix ma = need_matrix(op, a, "a"), mb = need_matrix(op, b, "b"), mc = need_matrix(op, c, "c");
    int64_t m = trans_a ? ma.cols : ma.rows, k = trans_a ? ma.rows : ma.cols;
    int64_t kb = trans_b ? mb.cols : mb.rows, n = trans_b ? mb.rows : mb.cols;
    if (k != kb) OP_FAIL(op, "inner dimensions differ (%lld vs %lld)", (long long)k, (long long)kb);
    need_matrix_dims(op, &mc, "c", m, n);
    count_flops(ctx, 2.0 * m * n * k);
    if (ctx->planning) return;
    PROFILED(ctx, ctx->profile_lora ? FL_OPK_LORA : FL_OPK_GEMM,
             ctx->backend->gemm(ctx, a, trans_a, b, trans_b, c, alpha, beta));
}

static void check_linear(const char *op, fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias,
                         const fl_tensor *y) {
    need_storage(op, ctx, x, "x");
    need_storage(op, ctx, w, "w");
    need_storage(op, ctx, y, "y");
    need_same_dtype(op, x, w, "x, w");
    need_same_dtype(op, x, y, "x, y");
    if (w->ndim != 2) OP_FAIL(op, "weight must be 2-d [out, in], has %d dims", w->ndim);
    need_contiguous(op, w, "w");
    int64_t out = w->shape[0], in = w->shape[1];
    fl_matrix mx = need_matrix(op, x, "x"), my = need_matrix(op, y, "y");
    need_matrix_dims(op, &mx, "x", mx.rows, in);
    need_matrix_dims(op, &my, "y", mx.rows, out);
    if (bias) {
        need_storage(op, ctx, bias, "bias");
        need_same_dtype(op, x, bias, "x, bias");
        need_contiguous(op, bias, "bias");
        if (fl_tensor_numel(bias) != out) OP_FAIL(op, "bias has %lld elements, expected %lld",
                                                 (long long)fl_tensor_numel(bias), (long long)out);
    }
    count_flops(ctx, 2.0 * mx.rows * in * out);
}

void fl_op_linear(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y) {
    check_linear("linear", ctx, x, w, bias, y);
    if (ctx->planning) return;
    PROFILED(ctx, ctx->profile_lora ? FL_OPK_LORA : FL_OPK_GEMM, ctx->backend->linear(ctx, x, w, bias, y));
}

bool fl_op_has_linear_rows(const fl_ctx *ctx) {
    return ctx->backend && ctx->backend->linear_rows; /* a planning-only context has no backend */
}

void fl_op_linear_rows(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y) {
    static const char op[] = "linear_rows";
    if (!fl_op_has_linear_rows(ctx)) OP_FAIL(op, "this context has no batch-invariant linear");
    check_linear(op, ctx, x, w, bias, y);
    if (ctx->planning) return;
    PROFILED(ctx, ctx->profile_lora ? FL_OPK_LORA : FL_OPK_GEMM, ctx->backend->linear_rows(ctx, x, w, bias, y));
}

void fl_op_bias_grad(fl_ctx *ctx, const fl_tensor *dy, fl_tensor *db) {
    static const char op[] = "bias_grad";
    need_storage(op, ctx, dy, "dy");
    need_storage(op, ctx, db, "db");
    need_same_dtype(op, dy, db, "dy, db");
    fl_matrix m = need_matrix(op, dy, "dy");
    need_contiguous(op, db, "db");
    if (fl_tensor_numel(db) != m.cols) OP_FAIL(op, "db has %lld elements, expected %lld",
                                               (long long)fl_tensor_numel(db), (long long)m.cols);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_GEMM, ctx->backend->bias_grad(ctx, dy, db));
}

/* ---- layout and elementwise ----------------------------------------------------------------- */

void fl_op_copy(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst) {
    static const char op[] = "copy";
    need_device(op, ctx, src, "src");
    need_device(op, ctx, dst, "dst");
    need_same_shape(op, src, dst, "dst");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->copy(ctx, src, dst));
}

void fl_op_fill(fl_ctx *ctx, fl_tensor *t, float value) {
    need_device("fill", ctx, t, "t");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->fill(ctx, t, value));
}

/* Elementwise operands: matrix views of one shape and one storage dtype. */
static void need_elementwise(const char *op, fl_ctx *ctx, const fl_tensor *a, const char *name_a,
                             const fl_tensor *b, const char *name_b) {
    need_storage(op, ctx, a, name_a);
    need_storage(op, ctx, b, name_b);
    if (a->dtype != b->dtype) OP_FAIL(op, "operands %s and %s differ in dtype", name_a, name_b);
    fl_matrix ma = need_matrix(op, a, name_a), mb = need_matrix(op, b, name_b);
    need_matrix_dims(op, &mb, name_b, ma.rows, ma.cols);
}

void fl_op_add(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, float alpha, fl_tensor *out) {
    need_elementwise("add", ctx, a, "a", b, "b");
    need_elementwise("add", ctx, a, "a", out, "out");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->add(ctx, a, b, alpha, out));
}

void fl_op_scale(fl_ctx *ctx, fl_tensor *x, float alpha) {
    need_storage("scale", ctx, x, "x");
    need_matrix("scale", x, "x");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->scale(ctx, x, alpha));
}

void fl_op_gelu_tanh(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    need_elementwise("gelu_tanh", ctx, x, "x", y, "y");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->gelu_tanh(ctx, x, y));
}

void fl_op_gelu_tanh_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx) {
    need_elementwise("gelu_tanh_backward", ctx, x, "x", dy, "dy");
    need_elementwise("gelu_tanh_backward", ctx, x, "x", dx, "dx");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->gelu_tanh_backward(ctx, dy, x, dx));
}

void fl_op_silu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    need_elementwise("silu", ctx, x, "x", y, "y");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->silu(ctx, x, y));
}

void fl_op_silu_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx) {
    need_elementwise("silu_backward", ctx, x, "x", dy, "dy");
    need_elementwise("silu_backward", ctx, x, "x", dx, "dx");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->silu_backward(ctx, dy, x, dx));
}

/* ---- normalization and modulation ----------------------------------------------------------- */

/* x: contiguous [.., D] activations; stats: contiguous f32 with one value per row. */
static int64_t need_rows(const char *op, fl_ctx *ctx, const fl_tensor *x, const char *name) {
    need_storage(op, ctx, x, name);
    need_contiguous(op, x, name);
    if (x->ndim < 1) OP_FAIL(op, "operand %s must have at least one dim", name);
    return fl_tensor_numel(x) / (x->shape[x->ndim - 1] ? x->shape[x->ndim - 1] : 1);
}

static void need_stats(const char *op, fl_ctx *ctx, const fl_tensor *s, const char *name, int64_t rows) {
    need_f32(op, ctx, s, name);
    need_contiguous(op, s, name);
    if (fl_tensor_numel(s) != rows)
        OP_FAIL(op, "operand %s has %lld elements, expected one per row (%lld)", name,
                (long long)fl_tensor_numel(s), (long long)rows);
}

void fl_op_layernorm(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps) {
    static const char op[] = "layernorm";
    int64_t rows = need_rows(op, ctx, x, "x");
    need_rows(op, ctx, y, "y");
    need_same_shape(op, x, y, "y");
    need_same_dtype(op, x, y, "x, y");
    need_stats(op, ctx, mean, "mean", rows);
    need_stats(op, ctx, rstd, "rstd", rows);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM, ctx->backend->layernorm(ctx, x, y, mean, rstd, eps));
}

void fl_op_layernorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *mean,
                              const fl_tensor *rstd, fl_tensor *dx) {
    static const char op[] = "layernorm_backward";
    int64_t rows = need_rows(op, ctx, x, "x");
    need_rows(op, ctx, dy, "dy");
    need_rows(op, ctx, dx, "dx");
    need_same_shape(op, x, dy, "dy");
    need_same_shape(op, x, dx, "dx");
    need_same_dtype(op, x, dy, "x, dy");
    need_same_dtype(op, x, dx, "x, dx");
    need_stats(op, ctx, mean, "mean", rows);
    need_stats(op, ctx, rstd, "rstd", rows);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM, ctx->backend->layernorm_backward(ctx, dy, x, mean, rstd, dx));
}

/* x: [B, T, D]; a per-sample vector operand (shift, scale, gate): matrix view [B, D]. */
static void need_btd(const char *op, fl_ctx *ctx, const fl_tensor *x, const char *name) {
    need_storage(op, ctx, x, name);
    need_contiguous(op, x, name);
    if (x->ndim != 3) OP_FAIL(op, "operand %s must be [B, T, D], has %d dims", name, x->ndim);
}

static void need_per_sample(const char *op, fl_ctx *ctx, const fl_tensor *x, const fl_tensor *v,
                            const char *name) {
    need_storage(op, ctx, v, name);
    need_same_dtype(op, x, v, name);
    fl_matrix m = need_matrix(op, v, name);
    need_matrix_dims(op, &m, name, x->shape[0], x->shape[2]);
}

void fl_op_ln_modulate(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *shift, const fl_tensor *scale,
                       fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps) {
    static const char op[] = "ln_modulate";
    need_btd(op, ctx, x, "x");
    need_btd(op, ctx, y, "y");
    need_same_shape(op, x, y, "y");
    need_same_dtype(op, x, y, "x, y");
    need_per_sample(op, ctx, x, shift, "shift");
    need_per_sample(op, ctx, x, scale, "scale");
    need_stats(op, ctx, mean, "mean", x->shape[0] * x->shape[1]);
    need_stats(op, ctx, rstd, "rstd", x->shape[0] * x->shape[1]);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM, ctx->backend->ln_modulate(ctx, x, shift, scale, y, mean, rstd, eps));
}

void fl_op_ln_modulate_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *scale,
                                const fl_tensor *mean, const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dshift,
                                fl_tensor *dscale) {
    static const char op[] = "ln_modulate_backward";
    need_btd(op, ctx, x, "x");
    need_btd(op, ctx, dy, "dy");
    need_btd(op, ctx, dx, "dx");
    need_same_shape(op, x, dy, "dy");
    need_same_shape(op, x, dx, "dx");
    need_same_dtype(op, x, dy, "x, dy");
    need_same_dtype(op, x, dx, "x, dx");
    need_per_sample(op, ctx, x, scale, "scale");
    if (dshift) need_per_sample(op, ctx, x, dshift, "dshift");
    if (dscale) need_per_sample(op, ctx, x, dscale, "dscale");
    need_stats(op, ctx, mean, "mean", x->shape[0] * x->shape[1]);
    need_stats(op, ctx, rstd, "rstd", x->shape[0] * x->shape[1]);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM,
             ctx->backend->ln_modulate_backward(ctx, dy, x, scale, mean, rstd, dx, dshift, dscale));
}

static void need_norm_weight(const char *op, fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w,
                             const char *name) {
    need_storage(op, ctx, w, name);
    need_contiguous(op, w, name);
    need_same_dtype(op, x, w, name);
    if (fl_tensor_numel(w) != x->shape[x->ndim - 1])
        OP_FAIL(op, "%s has %lld elements, expected the last dim of x (%lld)", name,
                (long long)fl_tensor_numel(w), (long long)x->shape[x->ndim - 1]);
}

void fl_op_rmsnorm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, fl_tensor *y, fl_tensor *rstd,
                   float eps) {
    static const char op[] = "rmsnorm";
    int64_t rows = need_rows(op, ctx, x, "x");
    need_rows(op, ctx, y, "y");
    need_same_shape(op, x, y, "y");
    need_same_dtype(op, x, y, "x, y");
    need_norm_weight(op, ctx, x, weight, "weight");
    need_stats(op, ctx, rstd, "rstd", rows);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM, ctx->backend->rmsnorm(ctx, x, weight, y, rstd, eps));
}

void fl_op_rmsnorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *weight,
                            const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dweight) {
    static const char op[] = "rmsnorm_backward";
    int64_t rows = need_rows(op, ctx, x, "x");
    need_rows(op, ctx, dy, "dy");
    need_rows(op, ctx, dx, "dx");
    need_same_shape(op, x, dy, "dy");
    need_same_shape(op, x, dx, "dx");
    need_same_dtype(op, x, dy, "x, dy");
    need_same_dtype(op, x, dx, "x, dx");
    need_norm_weight(op, ctx, x, weight, "weight");
    if (dweight) need_norm_weight(op, ctx, x, dweight, "dweight");
    need_stats(op, ctx, rstd, "rstd", rows);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM, ctx->backend->rmsnorm_backward(ctx, dy, x, weight, rstd, dx, dweight));
}

void fl_op_gated_residual(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *gate, const fl_tensor *y,
                          fl_tensor *out) {
    static const char op[] = "gated_residual";
    need_btd(op, ctx, x, "x");
    need_btd(op, ctx, y, "y");
    need_btd(op, ctx, out, "out");
    need_same_shape(op, x, y, "y");
    need_same_shape(op, x, out, "out");
    need_same_dtype(op, x, y, "x, y");
    need_same_dtype(op, x, out, "x, out");
    need_per_sample(op, ctx, x, gate, "gate");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->gated_residual(ctx, x, gate, y, out));
}

void fl_op_gated_residual_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *gate, const fl_tensor *y,
                                   fl_tensor *dy, fl_tensor *dgate) {
    static const char op[] = "gated_residual_backward";
    need_btd(op, ctx, dout, "dout");
    need_btd(op, ctx, y, "y");
    need_btd(op, ctx, dy, "dy");
    need_same_shape(op, dout, y, "y");
    need_same_shape(op, dout, dy, "dy");
    need_same_dtype(op, dout, y, "dout, y");
    need_same_dtype(op, dout, dy, "dout, dy");
    need_per_sample(op, ctx, dout, gate, "gate");
    if (dgate) need_per_sample(op, ctx, dout, dgate, "dgate");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->gated_residual_backward(ctx, dout, gate, y, dy, dgate));
}

/* ---- positions and attention ---------------------------------------------------------------- */

void fl_rope_table_host(const float *ids, int64_t batch, int64_t length, const int *axes_dim, int n_axes,
                        double theta, float *pe_out) {
    int half = 0;
    for (int a = 0; a < n_axes; a++) {
        FL_CHECKF(axes_dim[a] > 0 && axes_dim[a] % 2 == 0, "rope axis %d has odd width %d", a, axes_dim[a]);
        half += axes_dim[a] / 2;
    }
    for (int64_t token = 0; token < batch * length; token++) {
        float *pe = pe_out + token * half * 2;
        int pair = 0;
        for (int a = 0; a < n_axes; a++) {
            double pos = ids[token * n_axes + a];
            for (int i = 0; i < axes_dim[a] / 2; i++, pair++) {
                double omega = 1.0 / pow(theta, (2.0 * i) / axes_dim[a]);
                double angle = pos * omega;
                pe[2 * pair] = (float)cos(angle);
                pe[2 * pair + 1] = (float)sin(angle);
            }
        }
    }
}

static void need_rope(const char *op, fl_ctx *ctx, const fl_tensor *x, const char *name_x, const fl_tensor *pe) {
    need_storage(op, ctx, x, name_x);
    need_contiguous(op, x, name_x);
    if (x->ndim != 4) OP_FAIL(op, "operand %s must be [B, H, L, D], has %d dims", name_x, x->ndim);
    if (x->shape[3] % 2) OP_FAIL(op, "head dim %lld is odd", (long long)x->shape[3]);
    need_f32(op, ctx, pe, "pe");
    need_contiguous(op, pe, "pe");
    int64_t want[4] = {x->shape[0], x->shape[2], x->shape[3] / 2, 2};
    need_shape(op, pe, "pe", 4, want);
}

void fl_op_rope(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y) {
    need_rope("rope", ctx, x, "x", pe);
    need_rope("rope", ctx, y, "y", pe);
    need_same_shape("rope", x, y, "y");
    need_same_dtype("rope", x, y, "x, y");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ROPE, ctx->backend->rope(ctx, x, pe, y));
}

void fl_op_rope_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *pe, fl_tensor *dx) {
    need_rope("rope_backward", ctx, dy, "dy", pe);
    need_rope("rope_backward", ctx, dx, "dx", pe);
    need_same_shape("rope_backward", dy, dx, "dx");
    need_same_dtype("rope_backward", dy, dx, "dy, dx");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ROPE, ctx->backend->rope_backward(ctx, dy, pe, dx));
}

static void need_bhld(const char *op, fl_ctx *ctx, const fl_tensor *t, const char *name, const fl_tensor *like) {
    need_storage(op, ctx, t, name);
    need_contiguous(op, t, name);
    if (t->ndim != 4) OP_FAIL(op, "operand %s must be [B, H, L, D], has %d dims", name, t->ndim);
    if (like) {
        need_same_dtype(op, like, t, name);
        if (t->shape[0] != like->shape[0] || t->shape[1] != like->shape[1] || t->shape[3] != like->shape[3])
            OP_FAIL(op, "operand %s disagrees with q in batch, heads or head dim", name);
    }
}

static void check_attention(const char *op, fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k,
                            const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse) {
    need_bhld(op, ctx, q, "q", NULL);
    need_bhld(op, ctx, k, "k", q);
    need_bhld(op, ctx, v, "v", q);
    need_same_shape(op, k, v, "v");
    need_bhld(op, ctx, out, "out", q);
    need_same_shape(op, q, out, "out");
    need_f32(op, ctx, lse, "lse");
    need_contiguous(op, lse, "lse");
    if (checks_as_cuda(ctx) && q->shape[3] > 512)
        OP_FAIL(op, "head dim %lld exceeds the CUDA kernels' limit of 512", (long long)q->shape[3]);
    int64_t want[3] = {q->shape[0], q->shape[1], q->shape[2]};
    need_shape(op, lse, "lse", 3, want);
}

/* Two products (q k^T and P v) of Lq x Lk x D per batch and head. */
static double attention_flops(const fl_tensor *q, const fl_tensor *k) {
    return 4.0 * q->shape[0] * q->shape[1] * q->shape[2] * k->shape[2] * q->shape[3];
}

void fl_op_attention(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                     fl_tensor *lse, float scale) {
    check_attention("attention", ctx, q, k, v, out, lse);
    count_flops(ctx, attention_flops(q, k));
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ATTENTION, ctx->backend->attention(ctx, q, k, v, out, lse, scale));
}

void fl_op_attention_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                              const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                              fl_tensor *dk, fl_tensor *dv, float scale) {
    static const char op[] = "attention_backward";
    check_attention(op, ctx, q, k, v, out, lse);
    need_bhld(op, ctx, dout, "dout", q);
    need_same_shape(op, q, dout, "dout");
    need_bhld(op, ctx, dq, "dq", q);
    need_same_shape(op, q, dq, "dq");
    need_bhld(op, ctx, dk, "dk", q);
    need_same_shape(op, k, dk, "dk");
    need_bhld(op, ctx, dv, "dv", q);
    need_same_shape(op, v, dv, "dv");
    /* The usual count: five products (recomputed scores, dv, dP, dq, dk), 2.5x the forward. */
    count_flops(ctx, attention_flops(q, k) / 2 * 5);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ATTENTION,
             ctx->backend->attention_backward(ctx, dout, q, k, v, out, lse, dq, dk, dv, scale));
}

void fl_op_timestep_embedding(fl_ctx *ctx, const fl_tensor *t, fl_tensor *out, float time_factor,
                              float max_period) {
    static const char op[] = "timestep_embedding";
    need_f32(op, ctx, t, "t");
    need_contiguous(op, t, "t");
    need_storage(op, ctx, out, "out");
    need_contiguous(op, out, "out");
    if (out->ndim != 2 || out->shape[0] != fl_tensor_numel(t))
        OP_FAIL(op, "out must be [B, dim] with B = %lld", (long long)fl_tensor_numel(t));
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_OTHER, ctx->backend->timestep_embedding(ctx, t, out, time_factor, max_period));
}

/* ---- objective and optimizer ---------------------------------------------------------------- */

void fl_op_flow_mix(fl_ctx *ctx, const fl_tensor *x0, const fl_tensor *noise, const fl_tensor *t, fl_tensor *xt,
                    fl_tensor *target) {
    static const char op[] = "flow_mix";
    const fl_tensor *operands[4] = {x0, noise, xt, target};
    const char *names[4] = {"x0", "noise", "xt", "target"};
    for (int i = 0; i < 4; i++) {
        need_storage(op, ctx, operands[i], names[i]);
        need_contiguous(op, operands[i], names[i]);
        need_same_shape(op, x0, operands[i], names[i]);
        need_same_dtype(op, x0, operands[i], names[i]);
    }
    if (x0->ndim < 1) OP_FAIL(op, "x0 must have a batch dim");
    need_f32(op, ctx, t, "t");
    need_contiguous(op, t, "t");
    if (fl_tensor_numel(t) != x0->shape[0])
        OP_FAIL(op, "t has %lld elements, expected the batch size %lld", (long long)fl_tensor_numel(t),
                (long long)x0->shape[0]);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_OTHER, ctx->backend->flow_mix(ctx, x0, noise, t, xt, target));
}

double fl_op_mse_loss(fl_ctx *ctx, const fl_tensor *pred, const fl_tensor *target, fl_tensor *dpred) {
    static const char op[] = "mse_loss";
    need_storage(op, ctx, pred, "pred");
    need_contiguous(op, pred, "pred");
    need_storage(op, ctx, target, "target");
    need_contiguous(op, target, "target");
    need_same_shape(op, pred, target, "target");
    need_same_dtype(op, pred, target, "pred, target");
    if (dpred) {
        need_storage(op, ctx, dpred, "dpred");
        need_contiguous(op, dpred, "dpred");
        need_same_shape(op, pred, dpred, "dpred");
        need_same_dtype(op, pred, dpred, "pred, dpred");
    }
    if (ctx->planning) return 0.0;
    double t0 = profile_begin(ctx);
    double r = ctx->backend->mse_loss(ctx, pred, target, dpred);
    profile_end(ctx, FL_OPK_OTHER, t0);
    return r;
}

double fl_op_sum_squares(fl_ctx *ctx, const fl_tensor *x) {
    need_f32("sum_squares", ctx, x, "x");
    need_contiguous("sum_squares", x, "x");
    if (ctx->planning) return 0.0;
    double t0 = profile_begin(ctx);
    double r = ctx->backend->sum_squares(ctx, x);
    profile_end(ctx, FL_OPK_OTHER, t0);
    return r;
}

void fl_op_adamw(fl_ctx *ctx, fl_tensor *param, const fl_tensor *grad, fl_tensor *m, fl_tensor *v,
                 const fl_adamw_params *p) {
    static const char op[] = "adamw";
    const fl_tensor *operands[4] = {param, grad, m, v};
    const char *names[4] = {"param", "grad", "m", "v"};
    for (int i = 0; i < 4; i++) {
        need_f32(op, ctx, operands[i], names[i]);
        need_contiguous(op, operands[i], names[i]);
        if (fl_tensor_numel(operands[i]) != fl_tensor_numel(param))
            OP_FAIL(op, "operand %s has %lld elements, param has %lld", names[i],
                    (long long)fl_tensor_numel(operands[i]), (long long)fl_tensor_numel(param));
    }
    if (p->step < 1) OP_FAIL(op, "step must be >= 1, is %lld", (long long)p->step);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_OPTIMIZER, ctx->backend->adamw(ctx, param, grad, m, v, p));
}

/* ---- text encoders (CLIP, T5): forward-only ops ----------------------------------------------- */

void fl_op_embedding(fl_ctx *ctx, const fl_tensor *table, const int32_t *ids, int64_t n, fl_tensor *out) {
    static const char op[] = "embedding";
    need_storage(op, ctx, table, "table");
    need_storage(op, ctx, out, "out");
    need_same_dtype(op, table, out, "table, out");
    need_contiguous(op, table, "table");
    if (table->ndim != 2) OP_FAIL(op, "table must be [V, D], has %d dims", table->ndim);
    fl_matrix mo = need_matrix(op, out, "out");
    need_matrix_dims(op, &mo, "out", n, table->shape[1]);
    if (!ids && (!ctx->planning && n > 0)) OP_FAIL(op, "ids is NULL");
    for (int64_t r = 0; ids && r < n; r++)
        if (ids[r] < 0 || ids[r] >= table->shape[0])
            OP_FAIL(op, "id %d at row %lld is outside the table's %lld rows", (int)ids[r], (long long)r,
                    (long long)table->shape[0]);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_OTHER, ctx->backend->embedding(ctx, table, ids, n, out));
}

void fl_op_layernorm_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                            fl_tensor *y, float eps) {
    static const char op[] = "layernorm_affine";
    need_rows(op, ctx, x, "x");
    need_rows(op, ctx, y, "y");
    need_same_shape(op, x, y, "y");
    need_same_dtype(op, x, y, "x, y");
    need_norm_weight(op, ctx, x, weight, "weight");
    need_norm_weight(op, ctx, x, bias, "bias");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM, ctx->backend->layernorm_affine(ctx, x, weight, bias, y, eps));
}

void fl_op_attention_masked(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                            const fl_tensor *bias, bool causal, fl_tensor *out, float scale) {
    static const char op[] = "attention_masked";
    need_bhld(op, ctx, q, "q", NULL);
    need_bhld(op, ctx, k, "k", q);
    need_bhld(op, ctx, v, "v", q);
    need_same_shape(op, k, v, "v");
    need_bhld(op, ctx, out, "out", q);
    need_same_shape(op, q, out, "out");
    if ((bias || causal) && q->shape[2] != k->shape[2])
        OP_FAIL(op, "a bias or causal mask needs Lq == Lk (got %lld, %lld)", (long long)q->shape[2],
                (long long)k->shape[2]);
    if (bias) {
        need_f32(op, ctx, bias, "bias");
        need_contiguous(op, bias, "bias");
        int64_t want3[3] = {q->shape[1], q->shape[2], k->shape[2]};
        int64_t want4[4] = {q->shape[0], q->shape[1], q->shape[2], k->shape[2]};
        if (bias->ndim == 3) need_shape(op, bias, "bias", 3, want3);
        else need_shape(op, bias, "bias", 4, want4);
    }
    if (checks_as_cuda(ctx) && q->shape[3] > 512)
        OP_FAIL(op, "head dim %lld exceeds the CUDA kernel's limit of 512", (long long)q->shape[3]);
    count_flops(ctx, attention_flops(q, k));
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ATTENTION,
             ctx->backend->attention_masked(ctx, q, k, v, bias, causal, out, scale));
}

void fl_op_quick_gelu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    need_elementwise("quick_gelu", ctx, x, "x", y, "y");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->quick_gelu(ctx, x, y));
}

void fl_op_gelu_erf(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    need_elementwise("gelu_erf", ctx, x, "x", y, "y");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->gelu_erf(ctx, x, y));
}

void fl_op_mul(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out) {
    need_elementwise("mul", ctx, a, "a", b, "b");
    need_elementwise("mul", ctx, a, "a", out, "out");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->mul(ctx, a, b, out));
}

/* ---- images: convolution, group normalization, upsampling (the autoencoder) ----------------- */

static void need_nchw(const char *op, fl_ctx *ctx, const fl_tensor *t, const char *name) {
    need_storage(op, ctx, t, name);
    need_contiguous(op, t, name);
    if (t->ndim != 4) OP_FAIL(op, "operand %s must be [B, C, H, W], has %d dims", name, t->ndim);
}

int64_t fl_conv2d_scratch_elements(int64_t channels, int64_t kh, int64_t kw, int64_t out_h, int64_t out_w,
                                   int stride, fl_conv2d_pad pad) {
    bool direct = kh == 1 && kw == 1 && stride == 1 && !pad.left && !pad.right && !pad.top && !pad.bottom;
    int64_t k = channels * kh * kw, row = k * out_w;
    if (direct || out_h <= 0 || out_w <= 0 || k <= 0) return 0; /* no column matrix (k == 0: y = bias) */
    int64_t rows = row >= FL_CONV2D_TILE_ELEMS ? 1 : FL_CONV2D_TILE_ELEMS / row;
    if (rows > out_h) rows = out_h;
    return rows * row;
}

void fl_op_conv2d(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y,
                  int stride, fl_conv2d_pad pad) {
    static const char op[] = "conv2d";
    need_nchw(op, ctx, x, "x");
    need_nchw(op, ctx, w, "w");
    need_nchw(op, ctx, y, "y");
    need_same_dtype(op, x, w, "x, w");
    need_same_dtype(op, x, y, "x, y");
    if (stride < 1) OP_FAIL(op, "stride %d must be positive", stride);
    if (pad.left < 0 || pad.right < 0 || pad.top < 0 || pad.bottom < 0)
        OP_FAIL(op, "negative padding (%d, %d, %d, %d)", pad.left, pad.right, pad.top, pad.bottom);
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t O = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    if (w->shape[1] != C)
        OP_FAIL(op, "w has %lld input channels, x has %lld", (long long)w->shape[1], (long long)C);
    if (KH < 1 || KW < 1) OP_FAIL(op, "empty kernel %lldx%lld", (long long)KH, (long long)KW);
    int64_t hp = H + pad.top + pad.bottom, wp = W + pad.left + pad.right;
    if (hp < KH || wp < KW)
        OP_FAIL(op, "padded input %lldx%lld is smaller than the kernel %lldx%lld", (long long)hp, (long long)wp,
                (long long)KH, (long long)KW);
    int64_t want[4] = {B, O, (hp - KH) / stride + 1, (wp - KW) / stride + 1};
    need_shape(op, y, "y", 4, want);
    if (bias) {
        need_storage(op, ctx, bias, "bias");
        need_same_dtype(op, x, bias, "x, bias");
        need_contiguous(op, bias, "bias");
        if (fl_tensor_numel(bias) != O)
            OP_FAIL(op, "bias has %lld elements, expected %lld", (long long)fl_tensor_numel(bias), (long long)O);
    }
    if (x->data == y->data && fl_tensor_numel(x) > 0) OP_FAIL(op, "y may not alias x");
    count_flops(ctx, 2.0 * B * O * want[2] * want[3] * C * KH * KW);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_OTHER, ctx->backend->conv2d(ctx, x, w, bias, y, stride, pad));
}

void fl_op_group_norm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias, fl_tensor *y,
                      int groups, float eps, bool silu) {
    static const char op[] = "group_norm";
    need_storage(op, ctx, x, "x");
    need_contiguous(op, x, "x");
    need_storage(op, ctx, y, "y");
    need_contiguous(op, y, "y");
    need_same_dtype(op, x, y, "x, y");
    if (x->ndim < 2) OP_FAIL(op, "operand x must be [B, C, ...], has %d dims", x->ndim);
    need_same_shape(op, x, y, "y");
    int64_t C = x->shape[1];
    if (groups < 1 || C % groups)
        OP_FAIL(op, "%d groups do not divide %lld channels", groups, (long long)C);
    const fl_tensor *affine[2] = {weight, bias};
    const char *names[2] = {"weight", "bias"};
    for (int i = 0; i < 2; i++) {
        need_storage(op, ctx, affine[i], names[i]);
        need_contiguous(op, affine[i], names[i]);
        need_same_dtype(op, x, affine[i], names[i]);
        if (fl_tensor_numel(affine[i]) != C)
            OP_FAIL(op, "%s has %lld elements, expected the %lld channels", names[i],
                    (long long)fl_tensor_numel(affine[i]), (long long)C);
    }
    if (!(eps >= 0.0f)) OP_FAIL(op, "eps %g must be non-negative", (double)eps);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_NORM, ctx->backend->group_norm(ctx, x, weight, bias, y, groups, eps, silu));
}

void fl_op_upsample_nearest2x(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    static const char op[] = "upsample_nearest2x";
    need_nchw(op, ctx, x, "x");
    need_nchw(op, ctx, y, "y");
    need_same_dtype(op, x, y, "x, y");
    int64_t want[4] = {x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]};
    need_shape(op, y, "y", 4, want);
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->upsample_nearest2x(ctx, x, y));
}

/* ---- face networks (dlib) ---------------------------------------------------------------------- */

void fl_op_pool2d(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, int kh, int kw, int stride_y, int stride_x,
                  int pad_y, int pad_x, bool max) {
    static const char op[] = "pool2d";
    need_nchw(op, ctx, x, "x");
    need_nchw(op, ctx, y, "y");
    need_same_dtype(op, x, y, "x, y");
    const int64_t H = x->shape[2], W = x->shape[3];
    int64_t want[4] = {x->shape[0], x->shape[1], 1, 1};
    if (kh == 0 && kw == 0) {
        if (H < 1 || W < 1) OP_FAIL(op, "global pooling of an empty %lldx%lld plane", (long long)H, (long long)W);
    } else {
        if (kh < 1 || kw < 1 || stride_y < 1 || stride_x < 1 || pad_y < 0 || pad_x < 0 || pad_y >= kh || pad_x >= kw)
            OP_FAIL(op, "kernel %dx%d, stride %d,%d, padding %d,%d", kh, kw, stride_y, stride_x, pad_y, pad_x);
        if (kh > H + 2 * pad_y || kw > W + 2 * pad_x)
            OP_FAIL(op, "a %dx%d window does not fit the padded %lldx%lld image", kh, kw, (long long)H, (long long)W);
        want[2] = 1 + (H + 2 * pad_y - kh) / stride_y;
        want[3] = 1 + (W + 2 * pad_x - kw) / stride_x;
    }
    need_shape(op, y, "y", 4, want);
    if (x->data && x->data == y->data) OP_FAIL(op, "y may not alias x");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_OTHER,
             ctx->backend->pool2d(ctx, x, y, kh, kw, stride_y, stride_x, pad_y, pad_x, max));
}

void fl_op_channel_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *scale, const fl_tensor *shift,
                          fl_tensor *y, bool relu) {
    static const char op[] = "channel_affine";
    need_storage(op, ctx, x, "x");
    need_contiguous(op, x, "x");
    need_storage(op, ctx, y, "y");
    need_contiguous(op, y, "y");
    need_same_dtype(op, x, y, "x, y");
    if (x->ndim < 2) OP_FAIL(op, "operand x must be [B, C, ...], has %d dims", x->ndim);
    need_same_shape(op, x, y, "y");
    const fl_tensor *v[2] = {scale, shift};
    const char *names[2] = {"scale", "shift"};
    for (int i = 0; i < 2; i++) {
        need_storage(op, ctx, v[i], names[i]);
        need_contiguous(op, v[i], names[i]);
        need_same_dtype(op, x, v[i], names[i]);
        if (fl_tensor_numel(v[i]) != x->shape[1])
            OP_FAIL(op, "%s has %lld elements, expected the %lld channels", names[i],
                    (long long)fl_tensor_numel(v[i]), (long long)x->shape[1]);
    }
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->channel_affine(ctx, x, scale, shift, y, relu));
}

void fl_op_relu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    need_elementwise("relu", ctx, x, "x", y, "y");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->relu(ctx, x, y));
}

void fl_op_add_padded(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out) {
    static const char op[] = "add_padded";
    need_nchw(op, ctx, a, "a");
    need_nchw(op, ctx, b, "b");
    need_nchw(op, ctx, out, "out");
    need_same_dtype(op, a, b, "a, b");
    need_same_dtype(op, a, out, "a, out");
    if (a->shape[0] != b->shape[0])
        OP_FAIL(op, "batch sizes differ (%lld vs %lld)", (long long)a->shape[0], (long long)b->shape[0]);
    int64_t want[4] = {a->shape[0], 0, 0, 0};
    for (int d = 1; d < 4; d++) want[d] = a->shape[d] > b->shape[d] ? a->shape[d] : b->shape[d];
    need_shape(op, out, "out", 4, want);
    if (out->data && ((out->data == b->data && !fl_tensor_same_shape(b, out)) ||
                      (out->data == a->data && !fl_tensor_same_shape(a, out))))
        OP_FAIL(op, "out may only alias an operand of its own shape");
    if (ctx->planning) return;
    PROFILED(ctx, FL_OPK_ELEMENTWISE, ctx->backend->add_padded(ctx, a, b, out));
}
