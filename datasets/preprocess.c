/*
 * preprocess.c — resampling (stb_image_resize or the built-in separable filter), center crop,
 * flips, aspect buckets and the [-1, 1] training layout.
 */
#include "datasets/preprocess.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl_build_config.h"

#if defined(FL_HAVE_STB)
#include <stb_image_resize.h>
#endif

/* A rectangle of a source image. */
typedef struct region {
    const fl_image *img;
    int x0, y0, w, h;
} region;

static int check_target(int width, int height, fl_error *err) {
    if (width <= 0 || height <= 0 || width > FL_PREPROCESS_MAX_SIDE || height > FL_PREPROCESS_MAX_SIDE)
        return fl_fail(err, FL_EINVAL, "target size %dx%d is outside 1..%d", width, height, FL_PREPROCESS_MAX_SIDE);
    return 0;
}

/* ---- the built-in separable filter ------------------------------------------------------------- */

typedef struct taps {
    int *first;    /* [dst] first source index */
    int *count;    /* [dst] number of taps */
    float *weight; /* [dst * max_taps] */
    int max_taps;
} taps;

/* Weights mapping src samples to dst samples along one axis. */
static void taps_build(taps *t, int src, int dst) {
    double scale = (double)src / dst;
    t->max_taps = dst < src ? (int)ceil(scale) + 2 : 2;
    t->first = fl_xmalloc((size_t)dst * sizeof(int));
    t->count = fl_xmalloc((size_t)dst * sizeof(int));
    t->weight = fl_xcalloc((size_t)dst * (size_t)t->max_taps, sizeof(float));
    for (int o = 0; o < dst; o++) {
        float *w = t->weight + (size_t)o * t->max_taps;
        if (dst < src) { /* area average over [lo, hi) */
            double lo = o * scale, hi = (o + 1) * scale;
            int i0 = (int)floor(lo), i1 = (int)ceil(hi);
            if (i1 > src) i1 = src;
            double sum = 0;
            for (int i = i0; i < i1; i++) sum += fmin(hi, i + 1.0) - fmax(lo, (double)i);
            t->first[o] = i0;
            t->count[o] = i1 - i0;
            for (int i = i0; i < i1; i++) w[i - i0] = (float)((fmin(hi, i + 1.0) - fmax(lo, (double)i)) / sum);
        } else { /* bilinear between pixel centers, clamped */
            double c = (o + 0.5) * scale - 0.5;
            if (c < 0) c = 0;
            if (c > src - 1) c = src - 1;
            int i0 = (int)floor(c);
            double f = c - i0;
            t->first[o] = i0;
            if (i0 + 1 < src && f > 0) {
                t->count[o] = 2;
                w[0] = (float)(1 - f);
                w[1] = (float)f;
            } else {
                t->count[o] = 1;
                w[0] = 1.0f;
            }
        }
    }
}

static void taps_free(taps *t) {
    free(t->first);
    free(t->count);
    free(t->weight);
}

static void resample_builtin(const region *r, int width, int height, fl_image *out) {
    taps tx, ty;
    taps_build(&tx, r->w, width);
    taps_build(&ty, r->h, height);
    const int sw = r->img->width;
    /* Horizontal pass over the region's rows into tmp [r->h][width][3], then vertical. */
    float *tmp = fl_xmalloc((size_t)r->h * (size_t)width * 3 * sizeof(float));
    for (int y = 0; y < r->h; y++) {
        const float *row = r->img->pixels + ((size_t)(r->y0 + y) * sw + (size_t)r->x0) * 3;
        float *dst = tmp + (size_t)y * width * 3;
        for (int x = 0; x < width; x++) {
            const float *w = tx.weight + (size_t)x * tx.max_taps;
            double acc[3] = {0, 0, 0};
            for (int k = 0; k < tx.count[x]; k++) {
                const float *px = row + (size_t)(tx.first[x] + k) * 3;
                for (int c = 0; c < 3; c++) acc[c] += (double)w[k] * px[c];
            }
            for (int c = 0; c < 3; c++) dst[x * 3 + c] = (float)acc[c];
        }
    }
    for (int y = 0; y < height; y++) {
        const float *w = ty.weight + (size_t)y * ty.max_taps;
        float *dst = out->pixels + (size_t)y * width * 3;
        for (int i = 0; i < width * 3; i++) {
            double acc = 0;
            for (int k = 0; k < ty.count[y]; k++) acc += (double)w[k] * tmp[((size_t)(ty.first[y] + k) * width) * 3 + i];
            dst[i] = (float)acc;
        }
    }
    free(tmp);
    taps_free(&tx);
    taps_free(&ty);
}

/* ---- dispatch ---------------------------------------------------------------------------------- */

static int resample_region(const region *r, int width, int height, fl_image *out, bool builtin, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (check_target(width, height, err)) return -1;
    if (!r->img->pixels || r->w <= 0 || r->h <= 0) return fl_fail(err, FL_EINVAL, "empty source image");
    if (fl_image_init(out, width, height, err)) return -1;
#if defined(FL_HAVE_STB)
    if (!builtin) {
        const float *first = r->img->pixels + ((size_t)r->y0 * r->img->width + (size_t)r->x0) * 3;
        stbir_filter fh = width < r->w ? STBIR_FILTER_BOX : STBIR_FILTER_TRIANGLE;
        stbir_filter fv = height < r->h ? STBIR_FILTER_BOX : STBIR_FILTER_TRIANGLE;
        int ok = stbir_resize_region(first, r->w, r->h, r->img->width * 3 * (int)sizeof(float), out->pixels, width,
                                     height, width * 3 * (int)sizeof(float), STBIR_TYPE_FLOAT, 3,
                                     STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_EDGE_CLAMP, fh, fv,
                                     STBIR_COLORSPACE_LINEAR, NULL, 0.0f, 0.0f, 1.0f, 1.0f);
        if (!ok) {
            fl_image_release(out);
            return fl_fail(err, FL_ENOMEM, "resampling %dx%d to %dx%d failed", r->w, r->h, width, height);
        }
        return 0;
    }
#endif
    resample_builtin(r, width, height, out);
    return 0;
}

int fl_image_resample(const fl_image *src, int width, int height, fl_image *out, fl_error *err) {
    region r = {src, 0, 0, src->width, src->height};
    return resample_region(&r, width, height, out, false, err);
}

int fl_image_resample_builtin(const fl_image *src, int width, int height, fl_image *out, fl_error *err) {
    region r = {src, 0, 0, src->width, src->height};
    return resample_region(&r, width, height, out, true, err);
}

int fl_image_resize_crop(const fl_image *src, int width, int height, fl_image *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (check_target(width, height, err)) return -1;
    if (!src->pixels || src->width <= 0 || src->height <= 0) return fl_fail(err, FL_EINVAL, "empty source image");
    region r = {src, 0, 0, src->width, src->height};
    int64_t wide = (int64_t)src->width * height, tall = (int64_t)src->height * width;
    if (wide > tall) { /* source is wider than the target: keep full height */
        r.w = (int)(((int64_t)src->height * width * 2 + height) / (2 * (int64_t)height));
        if (r.w < 1) r.w = 1;
        r.x0 = (src->width - r.w) / 2;
    } else if (tall > wide) {
        r.h = (int)(((int64_t)src->width * height * 2 + width) / (2 * (int64_t)width));
        if (r.h < 1) r.h = 1;
        r.y0 = (src->height - r.h) / 2;
    }
    return resample_region(&r, width, height, out, false, err);
}

void fl_image_flip_horizontal(fl_image *img) {
    for (int y = 0; y < img->height; y++) {
        float *row = img->pixels + (size_t)y * img->width * 3;
        for (int a = 0, b = img->width - 1; a < b; a++, b--)
            for (int c = 0; c < 3; c++) {
                float t = row[a * 3 + c];
                row[a * 3 + c] = row[b * 3 + c];
                row[b * 3 + c] = t;
            }
    }
}

int fl_bucket_choose(int w, int h, int base_resolution, int step, int *out_w, int *out_h) {
    if (w <= 0 || h <= 0 || step <= 0 || base_resolution < step || base_resolution > FL_PREPROCESS_MAX_SIDE) return -1;
    const int64_t area = (int64_t)base_resolution * base_resolution;
    const double want = log((double)w / h);
    int best_w = 0, best_h = 0;
    double best_d = INFINITY;
    for (int64_t side = step; side <= (int64_t)FL_BUCKET_MAX_ASPECT * base_resolution; side += step) {
        int64_t other = area / side / step * step;
        if (other < step) break;
        if (side > FL_BUCKET_MAX_ASPECT * other || other > FL_BUCKET_MAX_ASPECT * side) continue;
        for (int t = 0; t < 2; t++) { /* the bucket and its transpose */
            int64_t bw = t ? other : side, bh = t ? side : other;
            double d = fabs(log((double)bw / (double)bh) - want);
            int64_t best_area = (int64_t)best_w * best_h;
            bool better = d < best_d - 1e-12 ||
                          (d <= best_d + 1e-12 && (bw * bh > best_area || (bw * bh == best_area && bw < best_w)));
            if (better) {
                best_d = d;
                best_w = (int)bw;
                best_h = (int)bh;
            }
        }
    }
    *out_w = best_w;
    *out_h = best_h;
    return 0;
}

void fl_image_to_training(const fl_image *img, float *out) {
    size_t n = (size_t)img->width * (size_t)img->height * 3;
    for (size_t i = 0; i < n; i++) out[i] = 2.0f * img->pixels[i] - 1.0f;
}

int fl_preprocess_sample(const fl_image *src, int width, int height, bool flip, float *out, fl_error *err) {
    fl_image sized;
    if (fl_image_resize_crop(src, width, height, &sized, err)) return -1;
    if (flip) fl_image_flip_horizontal(&sized);
    fl_image_to_training(&sized, out);
    fl_image_release(&sized);
    return 0;
}
