/*
 * face_detect.c — dlib's MMOD CNN face detector (see face_parts.h).
 *
 * The input is dlib's tiled pyramid: the image and its pyramid_down<6> levels (each 5/6 of the
 * last, down to 5 rows) packed into one tensor, the first column of levels down the left and the
 * rest back up the right, 10 pixels between levels and 11 around (the file's values). The image
 * is written as (pixel - mean) / 256; each level is the bilinear resize of the one before it in
 * that tensor, computed as dlib's resize_image does for float images: 4 columns at a time with
 * float coordinates accumulated step by step, the last columns in double. An output above the
 * threshold at (c, r) maps back through every layer (x * stride - pad + k / 2), becomes a box of
 * the detector window's size around that point, and goes to the image through its pyramid level
 * (the level whose rectangle is nearest the box's center; p * 6 / 5 + 0.3 per level), rounded to
 * whole pixels. Detections are sorted by score, then suppressed when they overlap a kept one by
 * more than the file's IoU (intersection over the bounding union) or covered fraction.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/face/dlib_net.h"
#include "models/face/face_parts.h"

#define MAX_LEVELS 128
#define MAX_SIDE 8192

struct fl_face_detector {
    fl_dlib_model *model;
    fl_dlib_net *net; /* layer geometry, windows, thresholds (weights freed) */
};

typedef struct irect {
    long l, t, r, b;
} irect;

static bool irect_empty(irect a) { return a.t > a.b || a.l > a.r; }
static long irect_w(irect a) { return irect_empty(a) ? 0 : a.r - a.l + 1; }
static long irect_h(irect a) { return irect_empty(a) ? 0 : a.b - a.t + 1; }
static double irect_area(irect a) { return (double)irect_w(a) * (double)irect_h(a); }
static irect irect_isect(irect a, irect b) {
    return (irect){a.l > b.l ? a.l : b.l, a.t > b.t ? a.t : b.t, a.r < b.r ? a.r : b.r, a.b < b.b ? a.b : b.b};
}
static irect irect_union(irect a, irect b) {
    if (irect_empty(b)) return a;
    if (irect_empty(a)) return b;
    return (irect){a.l < b.l ? a.l : b.l, a.t < b.t ? a.t : b.t, a.r > b.r ? a.r : b.r, a.b > b.b ? a.b : b.b};
}

void fl_face_detector_free(fl_face_detector *d) {
    if (!d) return;
    fl_dlib_model_free(d->model);
    fl_dlib_net_free(d->net);
    free(d);
}

int fl_face_detector_from_net(fl_ctx *ctx, const fl_dlib_net *net, fl_face_detector **out, fl_error *err) {
    *out = NULL;
    if (net->input != FL_DLIB_INPUT_PYRAMID || net->loss != FL_DLIB_LOSS_MMOD || net->n_layers == 0 ||
        net->layers[net->n_layers - 1].kind != FL_DLIB_CON)
        return fl_fail(err, FL_EINVAL, "not an MMOD detector network");
    if (net->layers[net->n_layers - 1].out_channels != net->n_windows)
        return fl_fail(err, FL_EINVAL, "the detector's last layer has %d channels for %d windows",
                       net->layers[net->n_layers - 1].out_channels, net->n_windows);
    fl_face_detector *d = fl_xcalloc(1, sizeof *d);
    if (fl_dlib_model_build(ctx, net, &d->model, err) != 0) {
        free(d);
        return -1;
    }
    /* keep the geometry only */
    d->net = fl_xcalloc(1, sizeof *d->net);
    *d->net = *net;
    d->net->layers = fl_xcalloc(net->n_layers, sizeof *net->layers);
    for (size_t i = 0; i < net->n_layers; i++) {
        d->net->layers[i] = net->layers[i];
        d->net->layers[i].weights = d->net->layers[i].bias = d->net->layers[i].scale = d->net->layers[i].shift = NULL;
    }
    d->net->windows = fl_xmalloc((size_t)net->n_windows * sizeof *net->windows);
    memcpy(d->net->windows, net->windows, (size_t)net->n_windows * sizeof *net->windows);
    *out = d;
    return 0;
}

int fl_face_detector_load(fl_ctx *ctx, const char *path, fl_face_detector **out, fl_error *err) {
    fl_dlib_entry layout[64];
    size_t n = fl_dlib_mmod_layout(layout, 64);
    fl_dlib_net *net = NULL;
    *out = NULL;
    if (fl_dlib_net_load(path, layout, n, FL_DLIB_LOSS_MMOD, &net, err) != 0) return -1;
    int rc = fl_face_detector_from_net(ctx, net, out, err);
    fl_dlib_net_free(net);
    return rc ? fl_fail_prefix(err, "%s", path) : 0;
}

/* ---- the tiled pyramid ---------------------------------------------------------------------- */

/* compute_tiled_image_pyramid_details for pyramid_down<6>. Returns the level count. */
static int tile_pyramid(long nr, long nc, long padding, long outer, irect *rects, long *NR, long *NC) {
    int n = 0;
    rects[n++] = (irect){0, 0, nc - 1, nr - 1};
    for (;;) {
        nr = (long)floor(5.0 / 6.0 * nr);
        nc = (long)floor(5.0 / 6.0 * nc);
        if (nr * nc == 0 || nr < 5 || n == MAX_LEVELS) break;
        rects[n++] = (irect){0, 0, nc - 1, nr - 1};
    }
    long total_height = 0;
    for (int i = 0; i < n; i++) total_height += irect_h(rects[i]) + padding;
    total_height -= padding * 2;
    long height = 0, prev_width = 0;
    for (int i = 0; i < n; i++) {
        if (irect_w(rects[i]) <= irect_w(rects[0]) - prev_width - padding &&
            (height - irect_h(rects[0])) * 2 >= total_height - irect_h(rects[0]))
            break;
        height += irect_h(rects[i]) + padding;
        prev_width = irect_w(rects[i]);
    }
    height -= padding;
    const long width = irect_w(rects[0]);
    *NR = height + outer * 2;
    *NC = width + outer * 2;
    long y = outer;
    int i = 0;
    while (y < height + outer && i < n) {
        irect r = rects[i];
        rects[i] = (irect){r.l + outer, r.t + y, r.r + outer, r.b + y};
        y += irect_h(rects[i]) + padding;
        i++;
    }
    y -= padding;
    while (i < n) {
        long p1x = outer + width - 1, p1y = y - 1;
        long p2x = p1x - rects[i].r, p2y = p1y - rects[i].b; /* p1 - br_corner */
        irect r = {p1x < p2x ? p1x : p2x, p1y < p2y ? p1y : p2y, p1x > p2x ? p1x : p2x, p1y > p2y ? p1y : p2y};
        if (!irect_empty(irect_isect(rects[0], r))) break;
        rects[i] = r;
        y -= irect_h(rects[i]) + padding;
        i++;
    }
    return i;
}

/* dlib's resize_image for float planes (bilinear, corners aligned) from src [sh, sw] to dst
 * [dh, dw], both with row stride ld. */
static void resize_plane(const float *src, long sh, long sw, float *dst, long dh, long dw, long ld) {
    const double x_scale = (sw - 1) / (double)(dw - 1 > 1 ? dw - 1 : 1);
    const double y_scale = (sh - 1) / (double)(dh - 1 > 1 ? dh - 1 : 1);
    double y = -y_scale;
    for (long r = 0; r < dh; r++) {
        y += y_scale;
        const long top = (long)floor(y), bottom = top + 1 < sh - 1 ? top + 1 : sh - 1;
        const double tb_frac = y - top;
        const float *rt = src + top * ld, *rb = src + bottom * ld;
        float *out = dst + r * ld;
        double x = -4 * x_scale;
        const float ftb = (float)tb_frac, finv_tb = (float)(1 - tb_frac), fstep = (float)(4 * x_scale);
        float lane[4] = {(float)x, (float)(x + x_scale), (float)(x + 2 * x_scale), (float)(x + 3 * x_scale)};
        long c = 0;
        for (;; c += 4) {
            int left[4];
            float lr[4];
            for (int j = 0; j < 4; j++) {
                lane[j] += fstep;
                left[j] = (int)lane[j]; /* truncation, as the SSE conversion */
                lr[j] = lane[j] - (float)left[j];
            }
            if (left[3] + 1 >= sw) break;
            for (int j = 0; j < 4; j++) {
                const float inv_lr = 1 - lr[j];
                const float tlf = finv_tb * inv_lr, trf = finv_tb * lr[j], blf = ftb * inv_lr, brf = ftb * lr[j];
                out[c + j] = tlf * rt[left[j]] + trf * rt[left[j] + 1] + blf * rb[left[j]] + brf * rb[left[j] + 1];
            }
        }
        x = -x_scale + c * x_scale;
        for (; c < dw; c++) {
            x += x_scale;
            const long left = (long)floor(x), right = left + 1 < sw - 1 ? left + 1 : sw - 1;
            const float lr_frac = (float)(x - left);
            const float tl = rt[left], tr = rt[right], bl = rb[left], br = rb[right];
            out[c] = (float)((1 - tb_frac) * ((1 - lr_frac) * tl + lr_frac * tr) +
                             tb_frac * ((1 - lr_frac) * bl + lr_frac * br));
        }
    }
}

/* ---- detection -------------------------------------------------------------------------------- */

typedef struct cand {
    irect rect;
    double score;
} cand;

static int by_score_desc(const void *a, const void *b) {
    double x = ((const cand *)a)->score, y = ((const cand *)b)->score;
    return x < y ? 1 : x > y ? -1 : 0;
}

static bool overlaps(const fl_dlib_net *net, irect a, irect b) {
    const double inner = irect_area(irect_isect(a, b));
    if (inner == 0) return false;
    const double outer = irect_area(irect_union(a, b));
    return inner / outer > net->nms_iou || inner / irect_area(a) > net->nms_covered ||
           inner / irect_area(b) > net->nms_covered;
}

int fl_face_detect(fl_face_detector *d, const uint8_t *rgb, int width, int height, double adjust,
                   fl_face_detection *out, int max, int *count, fl_error *err) {
    *count = 0;
    if (width < 1 || height < 1 || width > MAX_SIDE || height > MAX_SIDE)
        return fl_fail(err, FL_EINVAL, "a %dx%d image (sides 1 .. %d)", width, height, MAX_SIDE);
    const fl_dlib_net *net = d->net;
    irect rects[MAX_LEVELS];
    long NR, NC;
    int levels = tile_pyramid(height, width, net->pyramid_padding, net->pyramid_outer, rects, &NR, &NC);
    size_t plane = (size_t)NR * NC;
    float *input = calloc(3 * plane, sizeof(float));
    if (!input) return fl_fail(err, FL_ENOMEM, "no memory for the detector's input (%ldx%ld)", NC, NR);
    for (int c = 0; c < 3; c++) {
        float *p = input + c * plane;
        for (long r = 0; r < height; r++)
            for (long x = 0; x < width; x++)
                p[(rects[0].t + r) * NC + rects[0].l + x] =
                    (float)(((float)rgb[((size_t)r * width + x) * 3 + c] - net->avg[c]) / 256.0);
        for (int i = 1; i < levels; i++)
            resize_plane(p + rects[i - 1].t * NC + rects[i - 1].l, irect_h(rects[i - 1]), irect_w(rects[i - 1]),
                         p + rects[i].t * NC + rects[i].l, irect_h(rects[i]), irect_w(rects[i]), NC);
    }
    float *o = NULL;
    int64_t shape[4];
    int rc = fl_dlib_model_run(d->model, input, (int)NR, (int)NC, &o, shape, err);
    free(input);
    if (rc) return fl_fail_prefix(err, "face detector");
    size_t cap = 64, n = 0;
    cand *c = fl_xmalloc(cap * sizeof *c);
    const double thresh = adjust;
    for (int k = 0; k < net->n_windows; k++)
        for (int64_t r = 0; r < shape[2]; r++)
            for (int64_t x = 0; x < shape[3]; x++) {
                double score = o[((size_t)k * shape[2] + r) * shape[3] + x];
                if (!(score > thresh)) continue;
                /* output -> input tensor coordinates, through every layer from the top */
                double px = (double)x, py = (double)r;
                for (size_t li = net->n_layers; li-- > 0;) {
                    const fl_dlib_layer *l = &net->layers[li];
                    if (l->kind != FL_DLIB_CON) continue;
                    px = px * l->stride_x - l->pad_x + l->k_cols / 2;
                    py = py * l->stride_y - l->pad_y + l->k_rows / 2;
                }
                /* centered_drect(p, w, h) in tensor space */
                double w = net->windows[k].width - 1.0, h = net->windows[k].height - 1.0;
                double l0 = px - w / 2, t0 = py - h / 2, r0 = px + w / 2, b0 = py + h / 2;
                /* the level whose rectangle is nearest the box's center (rounded to a pixel) */
                long cx = (long)floor((l0 + r0) / 2 + 0.5), cy = (long)floor((t0 + b0) / 2 + 0.5);
                int best = 0;
                double best_d = INFINITY;
                for (int i = 0; i < levels; i++) {
                    const irect *q = &rects[i];
                    if (cx >= q->l && cx <= q->r && cy >= q->t && cy <= q->b) {
                        best = i;
                        break;
                    }
                    double nx = cx < q->l ? q->l : cx > q->r ? q->r : cx, ny = cy < q->t ? q->t : cy > q->b ? q->b : cy;
                    double dd = sqrt((nx - cx) * (nx - cx) + (ny - cy) * (ny - cy));
                    if (dd < best_d) best_d = dd, best = i;
                }
                l0 -= rects[best].l, r0 -= rects[best].l, t0 -= rects[best].t, b0 -= rects[best].t;
                for (int lv = 0; lv < best; lv++) {
                    l0 = l0 * (6.0 / 5.0) + 0.3, t0 = t0 * (6.0 / 5.0) + 0.3;
                    r0 = r0 * (6.0 / 5.0) + 0.3, b0 = b0 * (6.0 / 5.0) + 0.3;
                }
                if (n == cap) c = fl_xrealloc(c, (cap *= 2) * sizeof *c);
                c[n++] = (cand){{lround(l0), lround(t0), lround(r0), lround(b0)}, score};
            }
    free(o);
    qsort(c, n, sizeof *c, by_score_desc);
    int kept = 0;
    irect *keep = fl_xmalloc((n ? n : 1) * sizeof *keep);
    for (size_t i = 0; i < n; i++) {
        bool drop = false;
        for (int j = 0; j < kept && !drop; j++) drop = overlaps(net, keep[j], c[i].rect);
        if (drop) continue;
        keep[kept] = c[i].rect;
        if (kept < max) out[kept] = (fl_face_detection){{c[i].rect.l, c[i].rect.t, c[i].rect.r, c[i].rect.b}, c[i].score};
        kept++;
    }
    *count = kept < max ? kept : max;
    free(keep);
    free(c);
    return 0;
}
