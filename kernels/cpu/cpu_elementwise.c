/*
 * cpu_elementwise.c — layout and elementwise ops of the CPU backend: strided copy with dtype
 * conversion, fill, add, scale, GELU (tanh) and SiLU with their backwards, and the gated residual.
 *
 * copy and fill walk any strided view: dims of extent 1 are dropped, the rest are ordered by the
 * destination's strides and merged where both sides are contiguous across them, so the common
 * cases (contiguous, head split/merge, column slices) become a few long contiguous rows.
 * The other ops take matrix views; when every operand is dense they run as one flat array cut
 * into chunks, otherwise row by row. Outputs may alias inputs exactly, as ops.h allows.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

/* ---- strided walks for copy and fill -------------------------------------------------------- */

typedef struct walk_plan {
    int nd; /* >= 1; the last dim is the inner loop */
    int64_t shape[FL_MAX_DIMS];
    int64_t sstride[FL_MAX_DIMS]; /* source strides (unused for fill) */
    int64_t dstride[FL_MAX_DIMS];
} walk_plan;

static int64_t abs64(int64_t x) {
    return x < 0 ? -x : x;
}

/* Builds the loop nest for dst (and src of the same shape, or NULL). False when there is
 * nothing to do (an extent is zero). */
static bool plan_walk(const fl_tensor *dst, const fl_tensor *src, walk_plan *w) {
    int order[FL_MAX_DIMS], nd = 0;
    for (int i = 0; i < dst->ndim; i++) {
        if (dst->shape[i] == 0) return false;
        if (dst->shape[i] == 1) continue;
        /* insertion sort by descending destination stride; stable for equal strides */
        int pos = nd++;
        while (pos > 0 && abs64(dst->stride[order[pos - 1]]) < abs64(dst->stride[i])) {
            order[pos] = order[pos - 1];
            pos--;
        }
        order[pos] = i;
    }
    w->nd = 0;
    for (int o = 0; o < nd; o++) {
        int i = order[o];
        int64_t ss = src ? src->stride[i] : 0, ds = dst->stride[i];
        if (w->nd > 0) {
            int last = w->nd - 1;
            /* merge into the previous (outer) dim when both sides continue contiguously */
            if (w->sstride[last] == ss * dst->shape[i] && w->dstride[last] == ds * dst->shape[i]) {
                w->shape[last] *= dst->shape[i];
                w->sstride[last] = ss;
                w->dstride[last] = ds;
                continue;
            }
        }
        w->shape[w->nd] = dst->shape[i];
        w->sstride[w->nd] = ss;
        w->dstride[w->nd] = ds;
        w->nd++;
    }
    if (w->nd == 0) {
        w->nd = 1;
        w->shape[0] = 1;
        w->sstride[0] = w->dstride[0] = 1;
    }
    return true;
}

static inline float bf16_bits_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

enum { CONVERT_CHUNK = 256 };

static void load_f32(const char *src, int64_t ss, fl_dtype dt, float *out, int64_t n) {
    if (dt == FL_F32) {
        const float *s = (const float *)src;
        for (int64_t i = 0; i < n; i++) out[i] = s[i * ss];
    } else if (dt == FL_BF16) {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++) out[i] = bf16_bits_to_f32(s[i * ss]);
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++) out[i] = fl_f16_to_f32(s[i * ss]);
    }
}

static void store_f32(char *dst, int64_t ds, fl_dtype dt, const float *in, int64_t n) {
    if (dt == FL_F32) {
        float *d = (float *)dst;
        for (int64_t i = 0; i < n; i++) d[i * ds] = in[i];
    } else if (dt == FL_BF16) {
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = 0; i < n; i++) d[i * ds] = fl_f32_to_bf16(in[i]);
    } else {
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = 0; i < n; i++) d[i * ds] = fl_f32_to_f16(in[i]);
    }
}

/* One inner row of a copy: n elements at element strides ss and ds. */
static void copy_row(const char *src, int64_t ss, fl_dtype sdt, char *dst, int64_t ds, fl_dtype ddt, int64_t n) {
    if (sdt == ddt) {
        size_t size = fl_dtype_size(sdt);
        if (ss == 1 && ds == 1) {
            memcpy(dst, src, (size_t)n * size);
        } else if (size == 4) {
            const uint32_t *s = (const uint32_t *)src;
            uint32_t *d = (uint32_t *)dst;
            for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
        } else {
            const uint16_t *s = (const uint16_t *)src;
            uint16_t *d = (uint16_t *)dst;
            for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
        }
        return;
    }
    float tmp[CONVERT_CHUNK];
    size_t ssize = fl_dtype_size(sdt), dsize = fl_dtype_size(ddt);
    for (int64_t i0 = 0; i0 < n; i0 += CONVERT_CHUNK) {
        int64_t len = n - i0 < CONVERT_CHUNK ? n - i0 : CONVERT_CHUNK;
        load_f32(src + (size_t)(i0 * ss) * ssize, ss, sdt, tmp, len);
        store_f32(dst + (size_t)(i0 * ds) * dsize, ds, ddt, tmp, len);
    }
}

static void fill_row(char *dst, int64_t ds, size_t size, uint32_t bits, int64_t n) {
    if (size == 4) {
        uint32_t *d = (uint32_t *)dst;
        for (int64_t i = 0; i < n; i++) d[i * ds] = bits;
    } else {
        uint16_t *d = (uint16_t *)dst, b = (uint16_t)bits;
        for (int64_t i = 0; i < n; i++) d[i * ds] = b;
    }
}

/* Runs the walk: a copy from src when src is not NULL, else a fill of dst with fill_bits. */
static void run_walk(const walk_plan *w, const char *src, fl_dtype sdt, char *dst, fl_dtype ddt,
                     uint32_t fill_bits) {
    int outer_nd = w->nd - 1;
    int64_t n = w->shape[outer_nd], outer = 1;
    for (int i = 0; i < outer_nd; i++) outer *= w->shape[i];
    size_t ssize = fl_dtype_size(sdt), dsize = fl_dtype_size(ddt);
    int64_t chunks = 1;
    if (outer * n > FL_CPU_PARALLEL_MIN) {
        chunks = 4 * (int64_t)fl_cpu_thread_count();
        if (chunks > outer) chunks = outer;
    }
    FL_OMP(omp parallel for schedule(static) if (chunks > 1))
    for (int64_t c = 0; c < chunks; c++) {
        int64_t begin = outer * c / chunks, end = outer * (c + 1) / chunks;
        int64_t idx[FL_MAX_DIMS] = {0}, soff = 0, doff = 0, rest = begin;
        for (int i = outer_nd - 1; i >= 0; i--) {
            idx[i] = rest % w->shape[i];
            rest /= w->shape[i];
            soff += idx[i] * w->sstride[i];
            doff += idx[i] * w->dstride[i];
        }
        for (int64_t o = begin; o < end; o++) {
            char *d = dst + (ptrdiff_t)doff * (ptrdiff_t)dsize;
            if (src)
                copy_row(src + (ptrdiff_t)soff * (ptrdiff_t)ssize, w->sstride[outer_nd], sdt, d,
                         w->dstride[outer_nd], ddt, n);
            else
                fill_row(d, w->dstride[outer_nd], dsize, fill_bits, n);
            for (int i = outer_nd - 1; i >= 0; i--) { /* odometer step */
                soff += w->sstride[i];
                doff += w->dstride[i];
                if (++idx[i] < w->shape[i]) break;
                soff -= w->sstride[i] * w->shape[i];
                doff -= w->dstride[i] * w->shape[i];
                idx[i] = 0;
            }
        }
    }
}

void fl_cpu_copy(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst) {
    (void)ctx;
    walk_plan w;
    if (!plan_walk(dst, src, &w)) return;
    run_walk(&w, src->data, src->dtype, dst->data, dst->dtype, 0);
}

void fl_cpu_fill(fl_ctx *ctx, fl_tensor *t, float value) {
    (void)ctx;
    walk_plan w;
    if (!plan_walk(t, NULL, &w)) return;
    uint32_t bits;
    if (t->dtype == FL_F32) memcpy(&bits, &value, sizeof bits);
    else if (t->dtype == FL_BF16) bits = fl_f32_to_bf16(value);
    else bits = fl_f32_to_f16(value);
    run_walk(&w, NULL, t->dtype, t->data, t->dtype, bits);
}

/* ---- elementwise ops on matrix views --------------------------------------------------------- */

/* out[0, n) = f(a, b, alpha); a, b or out may be the same array. */
typedef void (*row_fn)(int64_t n, float alpha, const float *a, const float *b, float *out);

enum { FLAT_CHUNK = 16384 };

/* Applies fn to every row of the matrix views (a and b may be NULL); dense operands are treated
 * as one flat array so that short rows still split evenly across threads. */
static void map_rows(row_fn fn, float alpha, const fl_tensor *a, const fl_tensor *b, fl_tensor *out) {
    fl_matrix mo = fl_cpu_matrix(out);
    fl_matrix ma = a ? fl_cpu_matrix(a) : mo, mb = b ? fl_cpu_matrix(b) : mo;
    const float *ad = a ? a->data : NULL, *bd = b ? b->data : NULL;
    float *od = out->data;
    if (mo.rows == 0 || mo.cols == 0) return;
    bool dense = mo.rows == 1 || (mo.ld == mo.cols && ma.ld == mo.cols && mb.ld == mo.cols);
    if (dense) {
        int64_t n = mo.rows * mo.cols, chunks = (n + FLAT_CHUNK - 1) / FLAT_CHUNK;
        FL_OMP(omp parallel for schedule(static) if (chunks > 1))
        for (int64_t c = 0; c < chunks; c++) {
            int64_t off = c * FLAT_CHUNK, len = n - off < FLAT_CHUNK ? n - off : FLAT_CHUNK;
            fn(len, alpha, ad ? ad + off : NULL, bd ? bd + off : NULL, od + off);
        }
        return;
    }
    FL_OMP(omp parallel for schedule(static) if (mo.rows * mo.cols > FL_CPU_PARALLEL_MIN))
    for (int64_t i = 0; i < mo.rows; i++)
        fn(mo.cols, alpha, ad ? ad + i * ma.ld : NULL, bd ? bd + i * mb.ld : NULL, od + i * mo.ld);
}

static void add_row(int64_t n, float alpha, const float *a, const float *b, float *out) {
    for (int64_t j = 0; j < n; j++) out[j] = a[j] + alpha * b[j];
}

static void scale_row(int64_t n, float alpha, const float *a, const float *b, float *out) {
    (void)b;
    for (int64_t j = 0; j < n; j++) out[j] = a[j] * alpha;
}

#define GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K1 0.044715f

/* 0.5 (1 + tanh(u)) equals sigmoid(2u), which costs one exp instead of a much slower tanhf and
 * saturates correctly at both ends (exp overflowing to inf gives 0). The gates are computed
 * GATE_CHUNK elements at a time: e = exp(-2u) (or exp(-x) for SiLU) through fl_cpu_exp_sub, then
 * the arithmetic around it. */
enum { GATE_CHUNK = 256 };

static inline float gelu_arg(float v) {
    return -2.0f * (GELU_K0 * (v + GELU_K1 * v * v * v));
}

static void gelu_row(int64_t n, float alpha, const float *x, const float *unused, float *y) {
    (void)alpha, (void)unused;
    float e[GATE_CHUNK];
    for (int64_t j0 = 0; j0 < n; j0 += GATE_CHUNK) {
        int64_t len = n - j0 < GATE_CHUNK ? n - j0 : GATE_CHUNK;
        for (int64_t j = 0; j < len; j++) e[j] = gelu_arg(x[j0 + j]);
        fl_cpu_exp_sub(e, e, len, 0.0f);
        for (int64_t j = 0; j < len; j++) y[j0 + j] = x[j0 + j] / (1.0f + e[j]);
    }
}

/* a = dy, b = x, out = dx. With s = 0.5 (1 + t): GELU' = s + 0.5 x (1 - t^2) u' and
 * 1 - t^2 = 4 s (1 - s). */
static void gelu_backward_row(int64_t n, float alpha, const float *dy, const float *x, float *dx) {
    (void)alpha;
    float e[GATE_CHUNK];
    for (int64_t j0 = 0; j0 < n; j0 += GATE_CHUNK) {
        int64_t len = n - j0 < GATE_CHUNK ? n - j0 : GATE_CHUNK;
        for (int64_t j = 0; j < len; j++) e[j] = gelu_arg(x[j0 + j]);
        fl_cpu_exp_sub(e, e, len, 0.0f);
        for (int64_t j = 0; j < len; j++) {
            float v = x[j0 + j], s = 1.0f / (1.0f + e[j]);
            float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
            dx[j0 + j] = dy[j0 + j] * (s + 2.0f * v * s * (1.0f - s) * du);
        }
    }
}

static void silu_row(int64_t n, float alpha, const float *x, const float *unused, float *y) {
    (void)alpha, (void)unused;
    float e[GATE_CHUNK];
    for (int64_t j0 = 0; j0 < n; j0 += GATE_CHUNK) {
        int64_t len = n - j0 < GATE_CHUNK ? n - j0 : GATE_CHUNK;
        for (int64_t j = 0; j < len; j++) e[j] = -x[j0 + j];
        fl_cpu_exp_sub(e, e, len, 0.0f);
        for (int64_t j = 0; j < len; j++) y[j0 + j] = x[j0 + j] / (1.0f + e[j]);
    }
}

static void silu_backward_row(int64_t n, float alpha, const float *dy, const float *x, float *dx) {
    (void)alpha;
    float e[GATE_CHUNK];
    for (int64_t j0 = 0; j0 < n; j0 += GATE_CHUNK) {
        int64_t len = n - j0 < GATE_CHUNK ? n - j0 : GATE_CHUNK;
        for (int64_t j = 0; j < len; j++) e[j] = -x[j0 + j];
        fl_cpu_exp_sub(e, e, len, 0.0f);
        for (int64_t j = 0; j < len; j++) {
            float v = x[j0 + j], s = 1.0f / (1.0f + e[j]);
            dx[j0 + j] = dy[j0 + j] * s * (1.0f + v * (1.0f - s));
        }
    }
}

void fl_cpu_add(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, float alpha, fl_tensor *out) {
    (void)ctx;
    map_rows(add_row, alpha, a, b, out);
}

void fl_cpu_scale(fl_ctx *ctx, fl_tensor *x, float alpha) {
    (void)ctx;
    map_rows(scale_row, alpha, x, NULL, x);
}

void fl_cpu_gelu_tanh(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    (void)ctx;
    map_rows(gelu_row, 0.0f, x, NULL, y);
}

void fl_cpu_gelu_tanh_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx) {
    (void)ctx;
    map_rows(gelu_backward_row, 0.0f, dy, x, dx);
}

void fl_cpu_silu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    (void)ctx;
    map_rows(silu_row, 0.0f, x, NULL, y);
}

void fl_cpu_silu_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx) {
    (void)ctx;
    map_rows(silu_backward_row, 0.0f, dy, x, dx);
}

/* ---- gated residual --------------------------------------------------------------------------- */

void fl_cpu_gated_residual(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *gate, const fl_tensor *y,
                           fl_tensor *out) {
    (void)ctx;
    int64_t B = x->shape[0], T = x->shape[1], D = x->shape[2];
    fl_matrix mg = fl_cpu_matrix(gate);
    const float *xd = x->data, *yd = y->data, *gd = gate->data;
    float *od = out->data;
    FL_OMP(omp parallel for schedule(static) if (B * T * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < B * T; r++) {
        const float *g = gd + (r / T) * mg.ld, *xr = xd + r * D, *yr = yd + r * D;
        float *o = od + r * D;
        for (int64_t j = 0; j < D; j++) o[j] = xr[j] + g[j] * yr[j];
    }
}

void fl_cpu_gated_residual_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *gate, const fl_tensor *y,
                                    fl_tensor *dy, fl_tensor *dgate) {
    (void)ctx;
    enum { CHUNK = 256 };
    int64_t B = dout->shape[0], T = dout->shape[1], D = dout->shape[2];
    fl_matrix mg = fl_cpu_matrix(gate);
    const float *dod = dout->data, *yd = y->data, *gd = gate->data;
    float *dyd = dy->data;
    FL_OMP(omp parallel for schedule(static) if (B * T * D > FL_CPU_PARALLEL_MIN))
    for (int64_t r = 0; r < B * T; r++) {
        const float *g = gd + (r / T) * mg.ld, *d = dod + r * D;
        float *o = dyd + r * D;
        for (int64_t j = 0; j < D; j++) o[j] = g[j] * d[j];
    }
    if (!dgate) return;
    fl_matrix mdg = fl_cpu_matrix(dgate);
    float *dgd = dgate->data;
    int64_t chunks = (D + CHUNK - 1) / CHUNK;
    FL_OMP(omp parallel for collapse(2) schedule(static) if (B * T * D > FL_CPU_PARALLEL_MIN))
    for (int64_t b = 0; b < B; b++) {
        for (int64_t c = 0; c < chunks; c++) {
            int64_t j0 = c * CHUNK, nb = D - j0 < CHUNK ? D - j0 : CHUNK;
            double acc[CHUNK] = {0};
            for (int64_t t = 0; t < T; t++) {
                const float *d = dod + (b * T + t) * D + j0, *yr = yd + (b * T + t) * D + j0;
                for (int64_t j = 0; j < nb; j++) acc[j] += (double)d[j] * yr[j];
            }
            float *dg = dgd + b * mdg.ld + j0;
            for (int64_t j = 0; j < nb; j++) dg[j] = (float)acc[j];
        }
    }
}
