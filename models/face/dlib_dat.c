/*
 * dlib_dat.c — the strict reader of dlib .dat files (see dlib_dat.h): primitives over a bounded
 * byte range, the network records driven by a layout, batch norm folded into a per-channel
 * affine as dlib folds it (in float: scale = gamma / sqrt(var + eps), shift = beta - scale * mean),
 * and the shape predictor's cascades.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "models/face/dlib_dat.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dlib tensors hold little-endian float32: this reader assumes a little-endian host"
#endif

#define MAX_FILE_BYTES ((size_t)256 << 20)
#define MAX_EXTENT ((int64_t)1 << 30)
#define TAG_MAX 64

typedef struct rd {
    const uint8_t *d;
    size_t n, p;
    fl_error *err;
    char what[96]; /* what is being read, for messages */
} rd;

static int truncated(rd *r) {
    return fl_fail(r->err, FL_EINVAL, "truncated at byte %zu of %zu (reading %s)", r->p, r->n, r->what);
}

static int bad(rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(rd *r, const char *fmt, ...) {
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fl_fail(r->err, FL_EINVAL, "%s at byte %zu (reading %s)", msg, r->p, r->what);
}

static void context(rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void context(rd *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->what, sizeof r->what, fmt, ap);
    va_end(ap);
}

static size_t left(const rd *r) { return r->n - r->p; }

/* An integer of at most max_bytes magnitude bytes (dlib masks the reserved bits 0x70). */
static int rd_int(rd *r, int64_t *v, int max_bytes, bool is_signed) {
    *v = 0;
    if (r->p >= r->n) return truncated(r);
    uint8_t c = r->d[r->p] & 0x8F;
    int count = c & 0x0F;
    bool neg = (c & 0x80) != 0;
    if (count == 0 || count > max_bytes || (neg && !is_signed)) return bad(r, "invalid integer (control byte 0x%02x)", c);
    if (left(r) < (size_t)count + 1) return truncated(r);
    uint64_t m = 0;
    for (int i = count; i >= 1; i--) m = m << 8 | r->d[r->p + (size_t)i];
    r->p += (size_t)count + 1;
    if (m > (uint64_t)INT64_MAX) return bad(r, "integer out of range");
    *v = neg ? -(int64_t)m : (int64_t)m;
    return 0;
}

/* A non-negative count or extent, at most hi. */
static int rd_count(rd *r, int64_t hi, int64_t *v) {
    if (rd_int(r, v, 8, true)) return -1;
    if (*v < 0 || *v > hi) return bad(r, "count %lld out of range [0, %lld]", (long long)*v, (long long)hi);
    return 0;
}

static int rd_small(rd *r, int *v) {
    int64_t x = 0;
    *v = 0;
    if (rd_int(r, &x, 8, true)) return -1;
    if (x < INT32_MIN || x > INT32_MAX) return bad(r, "integer %lld out of range", (long long)x);
    *v = (int)x;
    return 0;
}

static int rd_double(rd *r, double *v) {
    *v = 0.0;
    if (r->p >= r->n) return truncated(r);
    if (r->d[r->p] & 0x70) return bad(r, "a floating-point number in dlib's old text format");
    int64_t m = 0, e = 0;
    if (rd_int(r, &m, 8, true) || rd_int(r, &e, 2, true)) return -1;
    if (e == 32000) *v = INFINITY;
    else if (e == 32001) *v = -INFINITY;
    else if (e == 32002) *v = NAN;
    else *v = ldexp((double)m, (int)e);
    return 0;
}

static int rd_float(rd *r, float *v) {
    double d = 0.0;
    if (rd_double(r, &d)) return -1;
    *v = (float)d;
    return 0;
}

static int rd_bool(rd *r, bool *v) {
    if (r->p >= r->n) return truncated(r);
    uint8_t c = r->d[r->p];
    if (c != '0' && c != '1') return bad(r, "invalid bool 0x%02x", c);
    r->p++;
    *v = c == '1';
    return 0;
}

/* A string of at most cap - 1 bytes (longer: an error), NUL-terminated. */
static int rd_string(rd *r, char *buf, size_t cap) {
    int64_t len = 0;
    buf[0] = 0;
    if (rd_count(r, INT32_MAX, &len)) return -1;
    if ((size_t)len >= cap) return bad(r, "a string of %lld bytes where a short tag was expected", (long long)len);
    if (left(r) < (size_t)len) return truncated(r);
    for (int64_t i = 0; i < len; i++) /* tags are identifiers: anything else is not dlib's */
        if (r->d[r->p + (size_t)i] < 0x20 || r->d[r->p + (size_t)i] > 0x7e)
            return bad(r, "a tag with a non-text byte (0x%02x)", r->d[r->p + (size_t)i]);
    memcpy(buf, r->d + r->p, (size_t)len);
    buf[len] = 0;
    r->p += (size_t)len;
    return 0;
}

/* A string that must be present but whose value does not matter (a window's label). */
static int rd_skip_string(rd *r) {
    int64_t len = 0;
    if (rd_count(r, INT32_MAX, &len)) return -1;
    if (left(r) < (size_t)len) return truncated(r);
    r->p += (size_t)len;
    return 0;
}

static int rd_version(rd *r, int lo, int hi, int *v) {
    *v = 0;
    if (rd_small(r, v)) return -1;
    if (*v < lo || *v > hi) return bad(r, "unexpected version %d (expected %d..%d)", *v, lo, hi);
    return 0;
}

/* A tensor: its extents and (when out is not NULL) a malloc'ed copy of its floats. */
static int rd_tensor(rd *r, int64_t shape[4], float **out, size_t *count) {
    int v = 0;
    if (out) *out = NULL;
    if (count) *count = 0;
    if (rd_version(r, 2, 2, &v)) return -1;
    uint64_t total = 1;
    for (int i = 0; i < 4; i++) {
        if (rd_count(r, MAX_EXTENT, &shape[i])) return -1;
        total *= (uint64_t)shape[i];
        if (total > (uint64_t)(r->n / 4 + 1)) return truncated(r);
    }
    if (left(r) / 4 < total) return truncated(r);
    if (out) {
        *out = malloc(total ? total * sizeof(float) : sizeof(float));
        if (!*out) return fl_fail(r->err, FL_ENOMEM, "no memory for a tensor of %llu floats", (unsigned long long)total);
        memcpy(*out, r->d + r->p, total * sizeof(float));
    }
    if (count) *count = (size_t)total;
    r->p += total * 4;
    return 0;
}

static int rd_skip_tensor(rd *r) {
    int64_t shape[4];
    return rd_tensor(r, shape, NULL, NULL);
}

static int rd_alias(rd *r, int64_t shape[4]) {
    int v = 0;
    if (rd_version(r, 1, 1, &v)) return -1;
    for (int i = 0; i < 4; i++)
        if (rd_count(r, MAX_EXTENT, &shape[i])) return -1;
    return 0;
}

/* ---- layouts ---------------------------------------------------------------------------------- */

typedef struct lbuf {
    fl_dlib_entry *e;
    size_t n, cap;
} lbuf;

static void put(lbuf *b, fl_dlib_kind kind, int k, int stride, int id) {
    if (b->e && b->n < b->cap) b->e[b->n] = (fl_dlib_entry){kind, k, stride, id};
    b->n++;
}

/* ares: relu, add_prev1, affine, con 3x3/1, relu, affine, con 3x3/1, tag1 */
static void ares(lbuf *b) {
    put(b, FL_DLIB_RELU, 0, 0, 0);
    put(b, FL_DLIB_ADD_PREV, 0, 0, 1);
    put(b, FL_DLIB_AFFINE, 0, 0, 0);
    put(b, FL_DLIB_CON, 3, 1, 0);
    put(b, FL_DLIB_RELU, 0, 0, 0);
    put(b, FL_DLIB_AFFINE, 0, 0, 0);
    put(b, FL_DLIB_CON, 3, 1, 0);
    put(b, FL_DLIB_TAG, 0, 0, 1);
}

/* ares_down: relu, add_prev2, avg_pool 2x2/2, skip1, tag2, affine, con 3x3/1, relu, affine,
 * con 3x3/2, tag1 */
static void ares_down(lbuf *b) {
    put(b, FL_DLIB_RELU, 0, 0, 0);
    put(b, FL_DLIB_ADD_PREV, 0, 0, 2);
    put(b, FL_DLIB_AVG_POOL, 2, 2, 0);
    put(b, FL_DLIB_SKIP, 0, 0, 1);
    put(b, FL_DLIB_TAG, 0, 0, 2);
    put(b, FL_DLIB_AFFINE, 0, 0, 0);
    put(b, FL_DLIB_CON, 3, 1, 0);
    put(b, FL_DLIB_RELU, 0, 0, 0);
    put(b, FL_DLIB_AFFINE, 0, 0, 0);
    put(b, FL_DLIB_CON, 3, 2, 0);
    put(b, FL_DLIB_TAG, 0, 0, 1);
}

size_t fl_dlib_resnet_layout(fl_dlib_entry *out, size_t cap) {
    lbuf b = {out, 0, cap};
    put(&b, FL_DLIB_FC, 0, 0, 0);
    put(&b, FL_DLIB_AVG_POOL, 0, 1, 0); /* avg_pool_everything */
    ares_down(&b);                      /* level 0 */
    ares(&b), ares(&b), ares_down(&b);  /* level 1 */
    ares(&b), ares(&b), ares_down(&b);  /* level 2 */
    ares(&b), ares(&b), ares(&b), ares_down(&b); /* level 3 */
    ares(&b), ares(&b), ares(&b);       /* level 4 */
    put(&b, FL_DLIB_MAX_POOL, 3, 2, 0);
    put(&b, FL_DLIB_RELU, 0, 0, 0);
    put(&b, FL_DLIB_AFFINE, 0, 0, 0);
    put(&b, FL_DLIB_CON, 7, 2, 0);
    put(&b, FL_DLIB_INPUT_SIZED, 0, 0, 0);
    return b.n;
}

size_t fl_dlib_mmod_layout(fl_dlib_entry *out, size_t cap) {
    lbuf b = {out, 0, cap};
    put(&b, FL_DLIB_CON, 9, 1, 0);
    for (int i = 0; i < 3; i++) { /* rcon5 */
        put(&b, FL_DLIB_RELU, 0, 0, 0);
        put(&b, FL_DLIB_AFFINE, 0, 0, 0);
        put(&b, FL_DLIB_CON, 5, 1, 0);
    }
    for (int i = 0; i < 3; i++) { /* downsampler: con5d */
        put(&b, FL_DLIB_RELU, 0, 0, 0);
        put(&b, FL_DLIB_AFFINE, 0, 0, 0);
        put(&b, FL_DLIB_CON, 5, 2, 0);
    }
    put(&b, FL_DLIB_INPUT_PYRAMID, 0, 0, 0);
    return b.n;
}

/* ---- network records ------------------------------------------------------------------------ */

typedef struct parser {
    rd r;
    const fl_dlib_entry *layout;
    size_t n_layout;
    fl_dlib_net *net;
    size_t cap;
} parser;

static const char *kind_name(fl_dlib_kind k) {
    static const char *const names[] = {"input_rgb_image_sized", "input_rgb_image_pyramid", "con", "affine", "relu",
                                        "max_pool", "avg_pool", "add_prev", "tag", "skip", "fc"};
    return names[k];
}

static fl_dlib_layer *new_layer(parser *ps, fl_dlib_kind kind) {
    fl_dlib_net *net = ps->net;
    if (net->n_layers == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 64;
        net->layers = fl_xrealloc(net->layers, ps->cap * sizeof *net->layers);
    }
    fl_dlib_layer *l = &net->layers[net->n_layers++];
    memset(l, 0, sizeof *l);
    l->kind = kind;
    return l;
}

static int default_pad(int k, int stride) { return stride != 1 ? 0 : k / 2; }

static int con_details(parser *ps, const fl_dlib_entry *e, fl_dlib_layer *l, const char *tag) {
    rd *r = &ps->r;
    if (strcmp(tag, "con_4") && strcmp(tag, "con_5") && strcmp(tag, "con_6"))
        return bad(r, "found '%s' where a convolution (con_4..con_6) was expected", tag);
    int64_t pshape[4], nf, nr, nc;
    float *params = NULL;
    size_t count = 0;
    int sy, sx, py, px;
    if (rd_tensor(r, pshape, &params, &count)) return -1;
    int rc = -1;
    int64_t fs[4], bs[4];
    double mult;
    bool use_bias = true, use_relu = false;
    if (rd_count(r, MAX_EXTENT, &nf) || rd_count(r, 4096, &nr) || rd_count(r, 4096, &nc) || rd_small(r, &sy) ||
        rd_small(r, &sx) || rd_small(r, &py) || rd_small(r, &px) || rd_alias(r, fs) || rd_alias(r, bs))
        goto done;
    for (int i = 0; i < 4; i++)
        if (rd_double(r, &mult)) goto done;
    if (strcmp(tag, "con_4") && rd_bool(r, &use_bias)) goto done;
    if (!strcmp(tag, "con_6") && rd_bool(r, &use_relu)) goto done;
    if (nr != e->k || nc != e->k || sy != e->stride || sx != e->stride || py != default_pad(e->k, e->stride) ||
        px != default_pad(e->k, e->stride)) {
        rc = bad(r, "a %lldx%lld convolution with stride %d,%d and padding %d,%d where the network has %dx%d, stride "
                    "%d, padding %d", (long long)nr, (long long)nc, sy, sx, py, px, e->k, e->k, e->stride,
                 default_pad(e->k, e->stride));
        goto done;
    }
    if (fs[0] != nf || fs[2] != nr || fs[3] != nc || fs[1] < 1 || nf < 1) {
        rc = bad(r, "convolution filters of shape [%lld, %lld, %lld, %lld] for %lld %lldx%lld filters",
                 (long long)fs[0], (long long)fs[1], (long long)fs[2], (long long)fs[3], (long long)nf, (long long)nr,
                 (long long)nc);
        goto done;
    }
    uint64_t nw64 = 0, nb64 = 0;
    bool overflow = __builtin_mul_overflow((uint64_t)fs[0], (uint64_t)fs[1], &nw64) ||
                    __builtin_mul_overflow(nw64, (uint64_t)(fs[2] * fs[3]), &nw64) ||
                    __builtin_mul_overflow((uint64_t)(bs[0] * bs[1]), (uint64_t)bs[2], &nb64) ||
                    __builtin_mul_overflow(nb64, (uint64_t)bs[3], &nb64);
    size_t nw = (size_t)nw64, nb = use_bias ? (size_t)nf : 0;
    if (overflow || nw64 > count || count != nw + nb || (use_bias && nb64 != (uint64_t)nf)) {
        rc = bad(r, "convolution parameters hold %zu floats, expected %zu", count, nw + nb);
        goto done;
    }
    l->k_rows = (int)nr, l->k_cols = (int)nc, l->stride_y = sy, l->stride_x = sx, l->pad_y = py, l->pad_x = px;
    l->out_channels = (int)nf, l->in_channels = (int)fs[1];
    l->weights = fl_xmalloc(nw * sizeof(float));
    memcpy(l->weights, params, nw * sizeof(float));
    l->bias = fl_xcalloc((size_t)nf, sizeof(float));
    if (use_bias) memcpy(l->bias, params + nw, (size_t)nf * sizeof(float));
    l->relu_after = use_relu;
    rc = 0;
done:
    free(params);
    return rc;
}

static int affine_details(parser *ps, fl_dlib_layer *l, const char *tag) {
    rd *r = &ps->r;
    int64_t ps4[4], g[4], b[4];
    float *params = NULL;
    size_t count = 0;
    int rc = -1;
    if (!strcmp(tag, "bn_con2")) {
        float *rm = NULL, *rv = NULL;
        size_t nm = 0, nv = 0;
        int64_t s4[4], nupd, win;
        double mult, eps;
        if (rd_tensor(r, ps4, &params, &count) || rd_alias(r, g) || rd_alias(r, b) || rd_skip_tensor(r) ||
            rd_skip_tensor(r) || rd_tensor(r, s4, &rm, &nm) || rd_tensor(r, s4, &rv, &nv) ||
            rd_count(r, INT64_MAX, &nupd) || rd_count(r, INT64_MAX, &win))
            goto bn_done;
        int i;
        for (i = 0; i < 4; i++)
            if (rd_double(r, &mult)) break;
        if (i < 4 || rd_double(r, &eps)) goto bn_done;
        int64_t C = g[1];
        if (g[0] != 1 || g[2] != 1 || g[3] != 1 || C < 1 || count != 2 * (size_t)C || nm != (size_t)C ||
            nv != (size_t)C) {
            rc = bad(r, "batch norm parameters (%zu floats, %zu means, %zu variances) do not match %lld channels", count,
                     nm, nv, (long long)C);
            goto bn_done;
        }
        l->out_channels = (int)C;
        l->scale = fl_xmalloc((size_t)C * sizeof(float));
        l->shift = fl_xmalloc((size_t)C * sizeof(float));
        for (int64_t c = 0; c < C; c++) {
            l->scale[c] = params[c] / sqrtf(rv[c] + (float)eps);
            l->shift[c] = params[C + c] - l->scale[c] * rm[c];
        }
        rc = 0;
    bn_done:
        free(rm);
        free(rv);
        free(params);
        return rc;
    }
    if (strcmp(tag, "affine_") && strcmp(tag, "affine_2"))
        return bad(r, "found '%s' where an affine layer (affine_, affine_2 or bn_con2) was expected", tag);
    int mode;
    bool disabled = false;
    if (rd_tensor(r, ps4, &params, &count) || rd_alias(r, g) || rd_alias(r, b) || rd_small(r, &mode) ||
        (!strcmp(tag, "affine_2") && rd_bool(r, &disabled)))
        goto done;
    if (mode != 0) {
        rc = bad(r, "an affine layer in per-element mode (%d) where the network has a per-channel one", mode);
        goto done;
    }
    int64_t C = g[1];
    if (disabled) {
        l->disabled = true;
        rc = 0;
        goto done;
    }
    if (g[0] != 1 || g[2] != 1 || g[3] != 1 || C < 1 || count != 2 * (size_t)C) {
        rc = bad(r, "affine parameters of %zu floats for %lld channels", count, (long long)C);
        goto done;
    }
    l->out_channels = (int)C;
    l->scale = fl_xmalloc((size_t)C * sizeof(float));
    l->shift = fl_xmalloc((size_t)C * sizeof(float));
    memcpy(l->scale, params, (size_t)C * sizeof(float));
    memcpy(l->shift, params + C, (size_t)C * sizeof(float));
    rc = 0;
done:
    free(params);
    return rc;
}

static int pool_details(parser *ps, const fl_dlib_entry *e, fl_dlib_layer *l, const char *tag) {
    rd *r = &ps->r;
    const char *want = e->kind == FL_DLIB_MAX_POOL ? "max_pool_2" : "avg_pool_2";
    if (strcmp(tag, want)) return bad(r, "found '%s' where '%s' was expected", tag, want);
    int64_t nr, nc;
    int sy, sx, py, px;
    if (rd_count(r, 4096, &nr) || rd_count(r, 4096, &nc) || rd_small(r, &sy) || rd_small(r, &sx) ||
        rd_small(r, &py) || rd_small(r, &px))
        return -1;
    int pad = default_pad(e->k, e->stride);
    if (nr != e->k || nc != e->k || sy != e->stride || sx != e->stride || py != pad || px != pad)
        return bad(r, "a %lldx%lld pool with stride %d,%d and padding %d,%d where the network has %dx%d, stride %d, "
                      "padding %d", (long long)nr, (long long)nc, sy, sx, py, px, e->k, e->k, e->stride, pad);
    l->k_rows = (int)nr, l->k_cols = (int)nc, l->stride_y = sy, l->stride_x = sx, l->pad_y = py, l->pad_x = px;
    return 0;
}

static int fc_details(parser *ps, fl_dlib_layer *l, const char *tag) {
    rd *r = &ps->r;
    if (strcmp(tag, "fc_2") && strcmp(tag, "fc_3"))
        return bad(r, "found '%s' where a fully connected layer (fc_2, fc_3) was expected", tag);
    int64_t nout, nin, p4[4], w[4], b[4];
    float *params = NULL;
    size_t count = 0;
    int mode, rc = -1;
    double mult;
    bool use_bias = true;
    if (rd_count(r, MAX_EXTENT, &nout) || rd_count(r, MAX_EXTENT, &nin) || rd_tensor(r, p4, &params, &count) ||
        rd_alias(r, w) || rd_alias(r, b) || rd_small(r, &mode))
        goto done;
    for (int i = 0; i < 4; i++)
        if (rd_double(r, &mult)) goto done;
    if (!strcmp(tag, "fc_3") && rd_bool(r, &use_bias)) goto done;
    if (mode != 0 && mode != 1) {
        rc = bad(r, "unknown bias mode %d", mode);
        goto done;
    }
    bool has_bias = mode == 0 && use_bias;
    if (nout < 1 || nin < 1 || w[0] != nin || w[1] != nout || count != (size_t)(nin * nout) + (has_bias ? (size_t)nout : 0)) {
        rc = bad(r, "fully connected parameters (%zu floats, weights [%lld, %lld]) for %lld inputs and %lld outputs",
                 count, (long long)w[0], (long long)w[1], (long long)nin, (long long)nout);
        goto done;
    }
    l->out_channels = (int)nout, l->in_channels = (int)nin;
    l->weights = fl_xmalloc((size_t)(nin * nout) * sizeof(float));
    for (int64_t i = 0; i < nin; i++) /* dlib stores [in, out]: transpose to [out, in] */
        for (int64_t o = 0; o < nout; o++) l->weights[o * nin + i] = params[i * nout + o];
    if (has_bias) {
        l->bias = fl_xmalloc((size_t)nout * sizeof(float));
        memcpy(l->bias, params + nin * nout, (size_t)nout * sizeof(float));
    }
    rc = 0;
done:
    free(params);
    return rc;
}

static int details(parser *ps, size_t i) {
    rd *r = &ps->r;
    const fl_dlib_entry *e = &ps->layout[i];
    context(r, "layer %zu (%s)", i + 1, kind_name(e->kind));
    char tag[TAG_MAX];
    if (rd_string(r, tag, sizeof tag)) return -1;
    context(r, "layer %zu (%s)", i + 1, tag);
    fl_dlib_layer *l = new_layer(ps, e->kind);
    switch (e->kind) {
    case FL_DLIB_CON: return con_details(ps, e, l, tag);
    case FL_DLIB_AFFINE: return affine_details(ps, l, tag);
    case FL_DLIB_RELU: {
        bool disabled = false;
        if (!strcmp(tag, "relu_2")) {
            if (rd_bool(r, &disabled)) return -1;
        } else if (strcmp(tag, "relu_")) {
            return bad(r, "found '%s' where a relu was expected", tag);
        }
        l->disabled = disabled;
        return 0;
    }
    case FL_DLIB_MAX_POOL:
    case FL_DLIB_AVG_POOL: return pool_details(ps, e, l, tag);
    case FL_DLIB_ADD_PREV:
        l->id = e->id;
        return strcmp(tag, "add_prev_") ? bad(r, "found '%s' where add_prev_ was expected", tag) : 0;
    case FL_DLIB_FC: return fc_details(ps, l, tag);
    default: return bad(r, "internal: no details for %s", kind_name(e->kind));
    }
}

static int input_record(parser *ps, fl_dlib_kind kind) {
    rd *r = &ps->r;
    fl_dlib_net *net = ps->net;
    context(r, "the input layer");
    char tag[TAG_MAX];
    if (rd_string(r, tag, sizeof tag)) return -1;
    net->input = kind;
    for (int c = 0; c < 3; c++)
        if (rd_float(r, &net->avg[c])) return -1;
    if (kind == FL_DLIB_INPUT_SIZED) {
        if (strcmp(tag, "input_rgb_image_sized")) return bad(r, "found '%s' where input_rgb_image_sized was expected", tag);
        int64_t nr, nc;
        if (rd_count(r, 4096, &nr) || rd_count(r, 4096, &nc)) return -1;
        if (nr < 8 || nc < 8) return bad(r, "an input of %lldx%lld pixels", (long long)nr, (long long)nc);
        net->input_rows = (int)nr, net->input_cols = (int)nc;
        return 0;
    }
    if (!strcmp(tag, "input_rgb_image_pyramid")) {
        net->pyramid_padding = 10, net->pyramid_outer = 11;
        return 0;
    }
    if (strcmp(tag, "input_rgb_image_pyramid2")) return bad(r, "found '%s' where input_rgb_image_pyramid was expected", tag);
    int64_t pad, outer;
    if (rd_count(r, 1024, &pad) || rd_count(r, 1024, &outer)) return -1;
    net->pyramid_padding = (int)pad, net->pyramid_outer = (int)outer;
    return 0;
}

static int layer(parser *ps, size_t i) {
    rd *r = &ps->r;
    const fl_dlib_entry *e = &ps->layout[i];
    int v;
    bool flag;
    context(r, "layer %zu (%s)", i + 1, kind_name(e->kind));
    if (e->kind == FL_DLIB_TAG || e->kind == FL_DLIB_SKIP) {
        if (rd_version(r, 1, 1, &v) || layer(ps, i + 1)) return -1;
        fl_dlib_layer *l = new_layer(ps, e->kind);
        l->id = e->id;
        return 0;
    }
    if (i + 1 >= ps->n_layout) return bad(r, "internal: the layout has no input");
    fl_dlib_kind below = ps->layout[i + 1].kind;
    if (below == FL_DLIB_INPUT_SIZED || below == FL_DLIB_INPUT_PYRAMID) {
        if (rd_version(r, 2, 3, &v) || input_record(ps, below) || details(ps, i)) return -1;
        context(r, "layer %zu (%s) state", i + 1, kind_name(e->kind));
        for (int k = 0; k < 3; k++)
            if (rd_bool(r, &flag)) return -1;
        for (int k = 0; k < 3; k++)
            if (rd_skip_tensor(r)) return -1;
        int64_t factor;
        if (v == 3 && rd_count(r, INT32_MAX, &factor)) return -1;
        return 0;
    }
    if (rd_version(r, 1, 2, &v) || layer(ps, i + 1) || details(ps, i)) return -1;
    context(r, "layer %zu (%s) state", i + 1, kind_name(e->kind));
    for (int k = 0; k < 3; k++)
        if (rd_bool(r, &flag)) return -1;
    for (int k = 0; k < (v == 2 ? 3 : 2); k++)
        if (rd_skip_tensor(r)) return -1;
    return 0;
}

static int loss_record(parser *ps, fl_dlib_loss loss) {
    rd *r = &ps->r;
    fl_dlib_net *net = ps->net;
    int v;
    char tag[TAG_MAX];
    context(r, "the loss layer");
    if (rd_version(r, 1, 1, &v) || rd_string(r, tag, sizeof tag)) return -1;
    net->loss = loss;
    if (loss == FL_DLIB_LOSS_METRIC) {
        if (!strcmp(tag, "loss_metric_")) {
            net->margin = 0.1, net->dist_thresh = 0.75;
            return 0;
        }
        if (strcmp(tag, "loss_metric_2")) return bad(r, "found '%s' where the metric loss was expected", tag);
        return rd_double(r, &net->margin) || rd_double(r, &net->dist_thresh) ? -1 : 0;
    }
    if (strcmp(tag, "loss_mmod_")) return bad(r, "found '%s' where the MMOD loss was expected", tag);
    if (rd_version(r, 1, 4, &v)) return -1;
    int64_t count = 1, w, h;
    if (v > 1 && rd_count(r, 1024, &count)) return -1;
    if (count < 1) return bad(r, "no detector window");
    net->windows = fl_xcalloc((size_t)count, sizeof *net->windows);
    net->n_windows = (int)count;
    for (int64_t i = 0; i < count; i++) {
        int wv = 1;
        if (v > 1 && rd_version(r, 1, 2, &wv)) return -1;
        if (rd_count(r, 100000, &w) || rd_count(r, 100000, &h)) return -1;
        if (w < 1 || h < 1) return bad(r, "a %lldx%lld detector window", (long long)w, (long long)h);
        if (wv == 2 && rd_skip_string(r)) return -1;
        net->windows[i] = (fl_dlib_window){(int)w, (int)h};
    }
    double d;
    if (rd_double(r, &d) || rd_double(r, &d) || rd_double(r, &d) || rd_double(r, &net->nms_iou) ||
        rd_double(r, &net->nms_covered) || rd_double(r, &d) || rd_double(r, &d))
        return -1;
    if (v >= 3) {
        if (r->p >= r->n) return truncated(r);
        r->p++; /* assume_image_pyramid: one raw byte */
    }
    if (v >= 4) {
        double lambda;
        if (rd_bool(r, &net->bbr) || rd_double(r, &lambda)) return -1;
        if (net->bbr) return bad(r, "a detector with bounding-box regression (not supported)");
    }
    if (!(net->nms_iou >= 0 && net->nms_iou <= 1 && net->nms_covered >= 0 && net->nms_covered <= 1))
        return bad(r, "overlap thresholds out of [0, 1]");
    return 0;
}

void fl_dlib_net_free(fl_dlib_net *net) {
    if (!net) return;
    for (size_t i = 0; i < net->n_layers; i++) {
        free(net->layers[i].weights);
        free(net->layers[i].bias);
        free(net->layers[i].scale);
        free(net->layers[i].shift);
    }
    free(net->layers);
    free(net->windows);
    free(net);
}

int fl_dlib_net_parse(const uint8_t *data, size_t n, const fl_dlib_entry *layout, size_t n_layout, fl_dlib_loss loss,
                      fl_dlib_net **out, fl_error *err) {
    *out = NULL;
    parser ps = {.r = {.d = data, .n = n, .err = err}, .layout = layout, .n_layout = n_layout};
    ps.net = fl_xcalloc(1, sizeof *ps.net);
    int rc = loss_record(&ps, loss);
    if (rc == 0) rc = layer(&ps, 0);
    if (rc == 0 && ps.r.p != n) rc = fl_fail(err, FL_EINVAL, "%zu bytes after the end of the network", n - ps.r.p);
    if (rc) {
        fl_dlib_net_free(ps.net);
        return -1;
    }
    *out = ps.net;
    return 0;
}

/* ---- shape predictor ------------------------------------------------------------------------ */

void fl_shape_predictor_free(fl_shape_predictor *sp) {
    if (!sp) return;
    free(sp->initial);
    free(sp->split);
    free(sp->leaves);
    free(sp->anchor);
    free(sp->deltas);
    free(sp);
}

/* A column matrix<float,0,1> of exactly rows elements (rows < 0: any, returned in *got). */
static int rd_column(rd *r, int64_t rows, int64_t *got, float **out) {
    int64_t nr, nc;
    if (rd_int(r, &nr, 8, true) || rd_int(r, &nc, 8, true)) return -1;
    nr = -nr, nc = -nc; /* dlib writes the extents negated */
    if (nr < 0 || nc != 1 || (rows >= 0 && nr != rows) || nr > (int64_t)left(r) / 2)
        return bad(r, "a %lldx%lld matrix where a column of %lld was expected", (long long)nr, (long long)nc,
                   (long long)rows);
    if (got) *got = nr;
    for (int64_t i = 0; i < nr; i++)
        if (rd_float(r, &(*out)[i])) return -1;
    return 0;
}

int fl_shape_predictor_parse(const uint8_t *data, size_t n, fl_shape_predictor **out, fl_error *err) {
    *out = NULL;
    rd rr = {.d = data, .n = n, .err = err}, *r = &rr;
    fl_shape_predictor *sp = fl_xcalloc(1, sizeof *sp);
    int v, rc = -1;
    int64_t count, rows;
    context(r, "the shape predictor's version");
    if (rd_version(r, 1, 1, &v)) goto done;
    context(r, "the initial shape");
    {
        int64_t nr, nc;
        size_t save = r->p;
        if (rd_int(r, &nr, 8, true) || rd_int(r, &nc, 8, true)) goto done;
        r->p = save;
        rows = -nr;
        if (rows < 2 || rows % 2 || rows > 20000) {
            rc = bad(r, "an initial shape of %lld values (two per point expected)", (long long)rows);
            goto done;
        }
        sp->initial = fl_xmalloc((size_t)rows * sizeof(float));
        if (rd_column(r, rows, NULL, &sp->initial)) goto done;
        sp->num_parts = (int)(rows / 2);
    }
    context(r, "the cascades");
    if (rd_count(r, 1000, &count)) goto done;
    if (count < 1) {
        rc = bad(r, "no cascade");
        goto done;
    }
    sp->cascades = (int)count;
    size_t n_split = 0, n_leaf_floats = 0;
    for (int c = 0; c < sp->cascades; c++) {
        int64_t trees;
        context(r, "cascade %d", c);
        if (rd_count(r, (int64_t)left(r), &trees)) goto done;
        if (c == 0) sp->trees = (int)trees;
        if (trees != sp->trees || trees < 1) {
            rc = bad(r, "cascade %d has %lld trees (the first has %d)", c, (long long)trees, sp->trees);
            goto done;
        }
        for (int t = 0; t < sp->trees; t++) {
            int64_t ns, nl;
            context(r, "cascade %d tree %d", c, t);
            if (rd_count(r, (int64_t)left(r) / 3, &ns)) goto done;
            if (c == 0 && t == 0) {
                sp->splits = (int)ns;
                if (ns < 1 || ns > 65535 || ((ns + 1) & ns)) {
                    rc = bad(r, "a tree of %lld splits (a full binary tree has 2^d - 1)", (long long)ns);
                    goto done;
                }
                /* every tree is this size: bound the arrays by the bytes that can hold them */
                uint64_t total_splits = (uint64_t)sp->cascades * sp->trees * (uint64_t)ns;
                uint64_t total_leaf = (uint64_t)sp->cascades * sp->trees * (uint64_t)(ns + 1) * (uint64_t)rows;
                if (total_splits > n / 3 || total_leaf > n / 2) {
                    rc = truncated(r);
                    goto done;
                }
                sp->split = fl_xmalloc((size_t)total_splits * sizeof *sp->split);
                sp->leaves = fl_xmalloc((size_t)total_leaf * sizeof(float));
            }
            if (ns != sp->splits) {
                rc = bad(r, "trees of different depths (%lld and %d splits)", (long long)ns, sp->splits);
                goto done;
            }
            for (int64_t s = 0; s < ns; s++) {
                int64_t a, b;
                fl_dlib_split *sl = &sp->split[n_split++];
                if (rd_count(r, UINT32_MAX, &a) || rd_count(r, UINT32_MAX, &b) || rd_float(r, &sl->thresh)) goto done;
                sl->idx1 = (uint32_t)a, sl->idx2 = (uint32_t)b;
            }
            if (rd_count(r, 65536, &nl)) goto done;
            if (nl != ns + 1) {
                rc = bad(r, "a tree of %lld splits with %lld leaves", (long long)ns, (long long)nl);
                goto done;
            }
            for (int64_t k = 0; k < nl; k++) {
                float *dst = sp->leaves + n_leaf_floats;
                if (rd_column(r, rows, NULL, &dst)) goto done;
                n_leaf_floats += (size_t)rows;
            }
        }
    }
    context(r, "the feature pixels' anchors");
    if (rd_count(r, 1000, &count)) goto done;
    if (count != sp->cascades) {
        rc = bad(r, "%lld anchor lists for %d cascades", (long long)count, sp->cascades);
        goto done;
    }
    for (int c = 0; c < sp->cascades; c++) {
        int64_t np;
        if (rd_count(r, (int64_t)left(r) / 2, &np)) goto done;
        if (c == 0) {
            if (np < 1 || np > 1000000 || (uint64_t)np * sp->cascades > n) {
                rc = bad(r, "%lld feature pixels", (long long)np);
                goto done;
            }
            sp->pixels = (int)np;
            sp->anchor = fl_xmalloc((size_t)np * sp->cascades * sizeof *sp->anchor);
            sp->deltas = fl_xmalloc((size_t)np * sp->cascades * 2 * sizeof(float));
        }
        if (np != sp->pixels) {
            rc = bad(r, "cascade %d has %lld feature pixels (the first has %d)", c, (long long)np, sp->pixels);
            goto done;
        }
        for (int64_t k = 0; k < np; k++) {
            int64_t a;
            if (rd_count(r, sp->num_parts - 1, &a)) goto done;
            sp->anchor[(size_t)c * sp->pixels + k] = (uint32_t)a;
        }
    }
    context(r, "the feature pixels' offsets");
    if (rd_count(r, 1000, &count)) goto done;
    if (count != sp->cascades) {
        rc = bad(r, "%lld offset lists for %d cascades", (long long)count, sp->cascades);
        goto done;
    }
    for (int c = 0; c < sp->cascades; c++) {
        int64_t np;
        if (rd_count(r, (int64_t)left(r), &np)) goto done;
        if (np != sp->pixels) {
            rc = bad(r, "%lld offsets for %d feature pixels", (long long)np, sp->pixels);
            goto done;
        }
        for (int64_t k = 0; k < np; k++) {
            float *d = sp->deltas + ((size_t)c * sp->pixels + k) * 2;
            if (rd_float(r, &d[0]) || rd_float(r, &d[1])) goto done;
        }
    }
    for (size_t s = 0; s < n_split; s++)
        if (sp->split[s].idx1 >= (uint32_t)sp->pixels || sp->split[s].idx2 >= (uint32_t)sp->pixels) {
            rc = fl_fail(err, FL_EINVAL, "a split reads feature pixel %u of %d", sp->split[s].idx1 > sp->split[s].idx2 ?
                         sp->split[s].idx1 : sp->split[s].idx2, sp->pixels);
            goto done;
        }
    if (r->p != n) {
        rc = fl_fail(err, FL_EINVAL, "%zu bytes after the end of the shape predictor", n - r->p);
        goto done;
    }
    *out = sp;
    return 0;
done:
    (void)rc;
    fl_shape_predictor_free(sp);
    return -1;
}

/* ---- files ---------------------------------------------------------------------------------- */

int fl_dlib_net_load(const char *path, const fl_dlib_entry *layout, size_t n_layout, fl_dlib_loss loss,
                     fl_dlib_net **out, fl_error *err) {
    unsigned char *data = NULL;
    size_t size = 0;
    *out = NULL;
    if (fl_read_file(path, MAX_FILE_BYTES, &data, &size, err) != 0) return fl_fail_prefix(err, "%s", path);
    int rc = fl_dlib_net_parse(data, size, layout, n_layout, loss, out, err);
    free(data);
    return rc ? fl_fail_prefix(err, "%s", path) : 0;
}

int fl_shape_predictor_load(const char *path, fl_shape_predictor **out, fl_error *err) {
    unsigned char *data = NULL;
    size_t size = 0;
    *out = NULL;
    if (fl_read_file(path, MAX_FILE_BYTES, &data, &size, err) != 0) return fl_fail_prefix(err, "%s", path);
    int rc = fl_shape_predictor_parse(data, size, out, err);
    free(data);
    return rc ? fl_fail_prefix(err, "%s", path) : 0;
}
