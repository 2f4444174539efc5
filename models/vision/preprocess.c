/*
 * preprocess.c — the image encoders' input preparation (see models/image_encoder.h): Pillow's
 * bicubic resampling on 8-bit values, as the Hugging Face image processors run it, the center crop
 * and the per-channel normalization into a planar [3, S, S] float input.
 *
 * Pillow's algorithm, reproduced from its documented behaviour: a separable convolution with the
 * Keys cubic (a = -0.5, support 2) stretched by the scale when shrinking (antialiasing), each
 * output pixel's taps normalized to sum 1 and converted to fixed point with 22 fraction bits
 * (rounded half away from zero); the sum starts at half a unit, and the result is the arithmetic
 * right shift clamped to 0..255. The horizontal pass runs first over the rows the vertical pass
 * needs, and its result is stored in 8 bits before the vertical pass. A pass whose size does not
 * change is skipped.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/image_encoder.h"

#define PRECISION_BITS (32 - 8 - 2)
#define MAX_SIDE 16384

static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Taps of every output position: bounds[2 * i] = first input, bounds[2 * i + 1] = count; kk
 * [out, ksize] fixed-point weights. Returns ksize. */
static int coefficients(int in_size, int out_size, int **bounds_out, int32_t **kk_out) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    int *bounds = fl_xmalloc((size_t)out_size * 2 * sizeof *bounds);
    int32_t *kk = fl_xcalloc((size_t)out_size * (size_t)ksize, sizeof *kk);
    double *k = fl_xmalloc((size_t)ksize * sizeof *k);
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            k[x] = bicubic((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < xmax; x++) {
            double w = ww != 0.0 ? k[x] / ww : k[x];
            kk[(size_t)xx * ksize + x] =
                w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS)) : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    free(k);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

static uint8_t clip8(int32_t v) {
    int32_t s = v >> PRECISION_BITS; /* arithmetic shift: floor */
    return (uint8_t)(s < 0 ? 0 : s > 255 ? 255 : s);
}

int fl_resize_bicubic_u8(const uint8_t *src, int w, int h, uint8_t *dst, int dw, int dh, fl_error *err) {
    if (w < 1 || h < 1 || dw < 1 || dh < 1 || w > MAX_SIDE || h > MAX_SIDE || dw > MAX_SIDE || dh > MAX_SIDE)
        return fl_fail(err, FL_EINVAL, "cannot resize %dx%d to %dx%d (sides 1 .. %d)", w, h, dw, dh, MAX_SIDE);
    int *hb, *vb;
    int32_t *hk, *vk;
    int hks = coefficients(w, dw, &hb, &hk), vks = coefficients(h, dh, &vb, &vk);
    /* rows of the source the vertical pass reads */
    int first = vb[0], last = vb[2 * (dh - 1)] + vb[2 * (dh - 1) + 1];
    const uint8_t *mid = src;
    int mid_rows, mid_first = 0;
    uint8_t *tmp = NULL;
    if (dw != w) {
        mid_rows = last - first;
        mid_first = first;
        tmp = malloc((size_t)mid_rows * (size_t)dw * 3);
        if (!tmp) {
            free(hb), free(hk), free(vb), free(vk);
            return fl_fail(err, FL_ENOMEM, "not enough memory to resize %dx%d to %dx%d", w, h, dw, dh);
        }
        for (int y = 0; y < mid_rows; y++) {
            const uint8_t *row = src + (size_t)(y + first) * w * 3;
            for (int xx = 0; xx < dw; xx++) {
                const int32_t *k = hk + (size_t)xx * hks;
                int xmin = hb[2 * xx], n = hb[2 * xx + 1];
                int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < n; x++) {
                    const uint8_t *p = row + (size_t)(x + xmin) * 3;
                    s0 += p[0] * k[x];
                    s1 += p[1] * k[x];
                    s2 += p[2] * k[x];
                }
                uint8_t *o = tmp + ((size_t)y * dw + xx) * 3;
                o[0] = clip8(s0), o[1] = clip8(s1), o[2] = clip8(s2);
            }
        }
        mid = tmp;
    }
    if (dh != h) {
        for (int yy = 0; yy < dh; yy++) {
            const int32_t *k = vk + (size_t)yy * vks;
            int ymin = vb[2 * yy] - mid_first, n = vb[2 * yy + 1];
            for (int xx = 0; xx < dw; xx++) {
                int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int y = 0; y < n; y++) {
                    const uint8_t *p = mid + ((size_t)(y + ymin) * dw + xx) * 3;
                    s0 += p[0] * k[y];
                    s1 += p[1] * k[y];
                    s2 += p[2] * k[y];
                }
                uint8_t *o = dst + ((size_t)yy * dw + xx) * 3;
                o[0] = clip8(s0), o[1] = clip8(s1), o[2] = clip8(s2);
            }
        }
    } else {
        memcpy(dst, mid, (size_t)dw * dh * 3);
    }
    free(tmp);
    free(hb), free(hk), free(vb), free(vk);
    return 0;
}

fl_image_preprocess fl_image_preprocess_dinov2(int size) {
    fl_image_preprocess p = {.resize_shortest = size * 256 / 224, .crop = size,
                             .mean = {0.485f, 0.456f, 0.406f}, .std = {0.229f, 0.224f, 0.225f}};
    return p;
}

fl_image_preprocess fl_image_preprocess_clip(int size) {
    fl_image_preprocess p = {.resize_shortest = size, .crop = size,
                             .mean = {0.48145466f, 0.4578275f, 0.40821073f},
                             .std = {0.26862954f, 0.26130258f, 0.27577711f}};
    return p;
}

static uint8_t to_u8(float v) {
    float s = v * 255.0f + 0.5f;
    return (uint8_t)(s < 0.0f ? 0.0f : s > 255.0f ? 255.0f : s);
}

int fl_image_preprocess_run(const fl_image_preprocess *pp, const fl_image *src, float *out, fl_error *err) {
    int S = pp->crop ? pp->crop : pp->resize_shortest;
    if (S < 1 || S > MAX_SIDE || pp->resize_shortest < 0 || pp->resize_shortest > MAX_SIDE)
        return fl_fail(err, FL_EINVAL, "preprocessing: bad sizes (resize %d, crop %d)", pp->resize_shortest, pp->crop);
    if (!src->pixels || src->width < 1 || src->height < 1 || src->width > MAX_SIDE || src->height > MAX_SIDE)
        return fl_fail(err, FL_EINVAL, "image of size %dx%d cannot be encoded (sides 1 .. %d)", src->width, src->height,
                       MAX_SIDE);
    int w = src->width, h = src->height;
    size_t n = (size_t)w * h * 3;
    uint8_t *img = malloc(n);
    if (!img) return fl_fail(err, FL_ENOMEM, "not enough memory for a %dx%d image", w, h);
    for (size_t i = 0; i < n; i++) img[i] = to_u8(src->pixels[i]);
    bool exact = w == S && h == S;
    if (!exact && pp->resize_shortest > 0) {
        /* Hugging Face's get_resize_output_image_size: the short side becomes the size, the long
         * one int(size * long / short). */
        int sh = w <= h ? w : h, lg = w <= h ? h : w;
        int ns = pp->resize_shortest, nl = (int)((double)ns * lg / sh);
        if (nl < 1) nl = 1;
        int nw = w <= h ? ns : nl, nh = w <= h ? nl : ns;
        if (nw != w || nh != h) {
            uint8_t *r = malloc((size_t)nw * nh * 3);
            if (!r || (nw > MAX_SIDE || nh > MAX_SIDE) ||
                fl_resize_bicubic_u8(img, w, h, r, nw, nh, err) != 0) {
                free(r), free(img);
                return err && err->code ? -1 : fl_fail(err, FL_ENOMEM, "cannot resize %dx%d to %dx%d", w, h, nw, nh);
            }
            free(img);
            img = r, w = nw, h = nh;
        }
    }
    /* center crop as Hugging Face's center_crop: offset (size - S) // 2 (floor), and an image
     * smaller than S placed at ceil((S - size) / 2) on zeros */
    int top = h >= S ? (h - S) / 2 : -((S - h + 1) / 2), left = w >= S ? (w - S) / 2 : -((S - w + 1) / 2);
    for (int c = 0; c < 3; c++) {
        float mean = pp->mean[c], std = pp->std[c];
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int sy = y + top, sx = x + left;
                float v = 0.0f;
                /* rescale in double, then normalize in float, as the processors' numpy code does */
                if (sy >= 0 && sy < h && sx >= 0 && sx < w) v = (float)(img[((size_t)sy * w + sx) * 3 + c] * (1.0 / 255.0));
                out[((size_t)c * S + y) * S + x] = (v - mean) / std;
            }
    }
    free(img);
    return 0;
}
