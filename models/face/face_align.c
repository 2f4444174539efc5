/*
 * face_align.c — landmarks and alignment of dlib's face pipeline (see face_parts.h):
 *
 *   fl_shape_predict  the shape predictor's cascade: per cascade, the similarity transform from
 *                     the initial shape to the current one (float), each feature pixel placed at
 *                     its anchor point plus the transformed offset, mapped from the box's unit
 *                     square to the image and rounded to a pixel, read as (R + G + B) / 3 (0
 *                     outside); each tree walks left when the difference of its two pixels
 *                     exceeds the threshold, and adds its leaf to the shape;
 *   fl_face_chip      get_face_chip_details: the similarity transform (least squares, as
 *                     Umeyama's formula gives it in 2-D) from dlib's mean 5-point face, padded and
 *                     scaled to the chip, to the landmarks; the chip's rectangle and angle; then
 *                     extract_image_chip: a 2x pyramid (dlib's pyramid_down<2>, a 5-tap binomial
 *                     filter in integers) while the face is over twice the chip's size, and
 *                     bilinear sampling of each chip pixel (truncated to 8 bits; black outside).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/face/face_parts.h"

/* ---- similarity transforms ----------------------------------------------------------------- */

typedef struct affine2 {
    double m[2][2], b[2];
} affine2;

/* The least-squares rotation + scale + translation taking from[i] to to[i]. */
static affine2 similarity(const double *from, const double *to, int n) {
    double mf[2] = {0, 0}, mt[2] = {0, 0};
    for (int i = 0; i < n; i++) {
        mf[0] += from[2 * i], mf[1] += from[2 * i + 1];
        mt[0] += to[2 * i], mt[1] += to[2 * i + 1];
    }
    mf[0] /= n, mf[1] /= n, mt[0] /= n, mt[1] /= n;
    double sigma = 0, c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    for (int i = 0; i < n; i++) {
        double fx = from[2 * i] - mf[0], fy = from[2 * i + 1] - mf[1];
        double tx = to[2 * i] - mt[0], ty = to[2 * i + 1] - mt[1];
        sigma += fx * fx + fy * fy;
        c00 += tx * fx, c01 += tx * fy, c10 += ty * fx, c11 += ty * fy;
    }
    affine2 t;
    if (sigma == 0) {
        t.m[0][0] = t.m[1][1] = 1, t.m[0][1] = t.m[1][0] = 0;
    } else {
        double a = (c00 + c11) / sigma, bb = (c10 - c01) / sigma;
        t.m[0][0] = a, t.m[0][1] = -bb, t.m[1][0] = bb, t.m[1][1] = a;
    }
    t.b[0] = mt[0] - (t.m[0][0] * mf[0] + t.m[0][1] * mf[1]);
    t.b[1] = mt[1] - (t.m[1][0] * mf[0] + t.m[1][1] * mf[1]);
    return t;
}

static void apply(const affine2 *t, double x, double y, double *ox, double *oy) {
    *ox = t->m[0][0] * x + t->m[0][1] * y + t->b[0];
    *oy = t->m[1][0] * x + t->m[1][1] * y + t->b[1];
}

/* dlib's conversion of a real point to a pixel: floor(x + 0.5). */
static long to_pixel(double v) { return (long)floor(v + 0.5); }

/* ---- landmarks ------------------------------------------------------------------------------ */

void fl_shape_predict(const fl_shape_predictor *sp, const uint8_t *rgb, int width, int height, fl_face_rect box,
                      long *parts) {
    const int P = sp->num_parts, rows = 2 * P;
    float *cur = malloc((size_t)rows * sizeof(float)), *fpv = malloc((size_t)sp->pixels * sizeof(float));
    double *from = malloc((size_t)rows * sizeof(double)), *to = malloc((size_t)rows * sizeof(double));
    memcpy(cur, sp->initial, (size_t)rows * sizeof(float));
    /* the box's unit square to the image: (0,0) -> top-left, (1,1) -> bottom-right corner */
    const double sx = (double)(box.right - box.left), sy = (double)(box.bottom - box.top);
    for (int c = 0; c < sp->cascades; c++) {
        for (int i = 0; i < rows; i++) from[i] = sp->initial[i], to[i] = cur[i];
        affine2 t = similarity(from, to, P);
        const float m00 = (float)t.m[0][0], m01 = (float)t.m[0][1], m10 = (float)t.m[1][0], m11 = (float)t.m[1][1];
        for (int k = 0; k < sp->pixels; k++) {
            const float *d = sp->deltas + ((size_t)c * sp->pixels + k) * 2;
            uint32_t a = sp->anchor[(size_t)c * sp->pixels + k];
            float qx = m00 * d[0] + m01 * d[1] + cur[2 * a], qy = m10 * d[0] + m11 * d[1] + cur[2 * a + 1];
            long px = to_pixel(sx * qx + box.left), py = to_pixel(sy * qy + box.top);
            if (px >= 0 && py >= 0 && px < width && py < height) {
                const uint8_t *q = rgb + ((size_t)py * width + px) * 3;
                fpv[k] = (float)(((unsigned)q[0] + q[1] + q[2]) / 3);
            } else {
                fpv[k] = 0.0f;
            }
        }
        for (int tr = 0; tr < sp->trees; tr++) {
            size_t tree = (size_t)c * sp->trees + tr;
            const fl_dlib_split *s = sp->split + tree * sp->splits;
            uint32_t i = 0;
            while (i < (uint32_t)sp->splits) i = fpv[s[i].idx1] - fpv[s[i].idx2] > s[i].thresh ? 2 * i + 1 : 2 * i + 2;
            const float *leaf = sp->leaves + (tree * (size_t)(sp->splits + 1) + (i - sp->splits)) * rows;
            for (int j = 0; j < rows; j++) cur[j] += leaf[j];
        }
    }
    for (int p = 0; p < P; p++) {
        parts[2 * p] = to_pixel(sx * (double)cur[2 * p] + box.left);
        parts[2 * p + 1] = to_pixel(sy * (double)cur[2 * p + 1] + box.top);
    }
    free(cur), free(fpv), free(from), free(to);
}

/* ---- rectangles as dlib keeps them ------------------------------------------------------------ */

typedef struct drect {
    double l, t, r, b;
} drect;

static bool drect_empty(drect a) { return a.t > a.b || a.l > a.r; }
static double drect_area(drect a) { return drect_empty(a) ? 0 : (a.r - a.l + 1) * (a.b - a.t + 1); }

/* pyramid_down<2>'s rect_down: each corner p / 2 - (1.25, 0.75). */
static drect rect_down(drect a) { return (drect){a.l / 2 - 1.25, a.t / 2 - 0.75, a.r / 2 - 1.25, a.b / 2 - 0.75}; }

static void rotate(double cx, double cy, double x, double y, double angle, double *ox, double *oy) {
    double s = sin(angle), c = cos(angle), dx = x - cx, dy = y - cy;
    *ox = dx * c - dy * s + cx;
    *oy = dx * s + dy * c + cy;
}

/* pyramid_down<2> on an 8-bit RGB image: out is (h - 3) / 2 x (w - 3) / 2 (empty when a side <= 8). */
static uint8_t *pyramid_down2(const uint8_t *img, int w, int h, int *ow, int *oh) {
    if (h <= 8 || w <= 8) {
        *ow = *oh = 0;
        return NULL;
    }
    int tw = (w - 3) / 2, dh = (h - 3) / 2;
    uint16_t *tmp = malloc((size_t)h * tw * 3 * sizeof(uint16_t));
    uint8_t *down = malloc((size_t)dh * tw * 3);
    for (int r = 0; r < h; r++)
        for (int c = 0, oc = 0; c < tw; c++, oc += 2)
            for (int k = 0; k < 3; k++) {
                const uint8_t *p = img + ((size_t)r * w + oc) * 3 + k;
                tmp[((size_t)r * tw + c) * 3 + k] = (uint16_t)(p[0] + 4 * p[3] + 6 * p[6] + 4 * p[9] + p[12]);
            }
    int dr = 0;
    for (int r = 2; r < h - 2; r += 2, dr++)
        for (int c = 0; c < tw; c++)
            for (int k = 0; k < 3; k++) {
                const uint16_t *p = tmp + ((size_t)r * tw + c) * 3 + k;
                size_t st = (size_t)tw * 3;
                unsigned v = (unsigned)p[-2 * (long)st] + 4u * p[-(long)st] + 6u * p[0] + 4u * p[st] + p[2 * st];
                down[((size_t)dr * tw + c) * 3 + k] = (uint8_t)((uint16_t)v / 256);
            }
    free(tmp);
    *ow = tw, *oh = dh;
    return down;
}

/* ---- the chip ------------------------------------------------------------------------------- */

void fl_face_chip(const uint8_t *rgb, int width, int height, const long *parts5, int size, double padding,
                  uint8_t *chip) {
    /* dlib's mean face for the 5 points (right eye corners, left eye corners, nose) */
    static const double mean_face[5][2] = {{0.8595674595992, 0.2134981538014}, {0.6460604764104, 0.2289674387677},
                                           {0.1205750620789, 0.2137274526848}, {0.3340850613712, 0.2290642403242},
                                           {0.4901123135679, 0.6277975316475}};
    double from[10], to[10];
    for (int i = 0; i < 5; i++) {
        from[2 * i] = (padding + mean_face[i][0]) / (2 * padding + 1) * size;
        from[2 * i + 1] = (padding + mean_face[i][1]) / (2 * padding + 1) * size;
        to[2 * i] = (double)parts5[2 * i], to[2 * i + 1] = (double)parts5[2 * i + 1];
    }
    affine2 t = similarity(from, to, 5);
    double angle = atan2(t.m[1][0], t.m[0][0]), scale = sqrt(t.m[0][0] * t.m[0][0] + t.m[1][0] * t.m[1][0]);
    double cx, cy;
    apply(&t, size / 2.0, size / 2.0, &cx, &cy);
    double w = size * scale - 1, h = size * scale - 1; /* centered_drect(p, width, height) */
    drect rect = {cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2};
    const double chip_area = (double)size * size;

    /* how deep the pyramid goes, and the crop of the image it is built on */
    int depth = 0;
    double grow = 2;
    drect rd = rect_down(rect);
    while (drect_area(rd) > chip_area) {
        rd = rect_down(rd);
        depth++;
        grow = grow * 2 + 2;
    }
    double rcx = (rect.l + rect.r) / 2, rcy = (rect.t + rect.b) / 2, xs[4], ys[4];
    rotate(rcx, rcy, rect.l, rect.t, angle, &xs[0], &ys[0]);
    rotate(rcx, rcy, rect.r, rect.t, angle, &xs[1], &ys[1]);
    rotate(rcx, rcy, rect.l, rect.b, angle, &xs[2], &ys[2]);
    rotate(rcx, rcy, rect.r, rect.b, angle, &xs[3], &ys[3]);
    drect rot = {xs[0], ys[0], xs[0], ys[0]};
    for (int i = 1; i < 4; i++) {
        rot.l = fmin(rot.l, xs[i]), rot.r = fmax(rot.r, xs[i]);
        rot.t = fmin(rot.t, ys[i]), rot.b = fmax(rot.b, ys[i]);
    }
    drect g = {rot.l - grow, rot.t - grow, rot.r + grow, rot.b + grow};
    drect in = {fmax(g.l, 0), fmax(g.t, 0), fmin(g.r, width - 1), fmin(g.b, height - 1)};
    long bl = lround(in.l), bt = lround(in.t), br = lround(in.r), bb = lround(in.b);
    if (drect_empty(in) || br < bl || bb < bt) { /* the face is outside the image: a black chip */
        memset(chip, 0, (size_t)size * size * 3);
        return;
    }
    int cw = (int)(br - bl + 1), ch = (int)(bb - bt + 1);
    uint8_t *crop = malloc((size_t)cw * ch * 3);
    for (int r = 0; r < ch; r++) memcpy(crop + (size_t)r * cw * 3, rgb + ((size_t)(bt + r) * width + bl) * 3, (size_t)cw * 3);
    const uint8_t *src = crop;
    int sw = cw, sh = ch;
    uint8_t *level_img = NULL;
    /* the level to sample from */
    drect rr = {rect.l - bl, rect.t - bt, rect.r - bl, rect.b - bt};
    int level = -1;
    while (drect_area(rect_down(rr)) > chip_area) {
        level++;
        rr = rect_down(rr);
    }
    if (level > depth - 1) level = depth - 1;
    for (int lv = 0; lv <= level; lv++) {
        int nw, nh;
        uint8_t *next = pyramid_down2(src, sw, sh, &nw, &nh);
        if (src != crop) free((void *)src);
        src = next, sw = nw, sh = nh;
    }
    level_img = (uint8_t *)src;
    /* chip corners -> the rotated rectangle's corners at that level */
    double qcx = (rr.l + rr.r) / 2, qcy = (rr.t + rr.b) / 2, tlx, tly, trx, try_, blx, bly;
    rotate(qcx, qcy, rr.l, rr.t, angle, &tlx, &tly);
    rotate(qcx, qcy, rr.r, rr.t, angle, &trx, &try_);
    rotate(qcx, qcy, rr.l, rr.b, angle, &blx, &bly);
    /* the affine map with (0,0) -> tl, (size-1,0) -> tr, (0,size-1) -> bl */
    const double s1 = size - 1;
    affine2 m = {{{(trx - tlx) / s1, (blx - tlx) / s1}, {(try_ - tly) / s1, (bly - tly) / s1}}, {tlx, tly}};
    for (int r = 0; r < size; r++)
        for (int c = 0; c < size; c++) {
            double x, y;
            apply(&m, c, r, &x, &y);
            uint8_t *o = chip + ((size_t)r * size + c) * 3;
            long left = (long)floor(x), top = (long)floor(y), right = left + 1, bottom = top + 1;
            if (!level_img || !(left >= 0 && top >= 0 && right < sw && bottom < sh)) {
                o[0] = o[1] = o[2] = 0;
                continue;
            }
            double lr = x - left, tb = y - top;
            const uint8_t *ptl = level_img + ((size_t)top * sw + left) * 3, *ptr = ptl + 3;
            const uint8_t *pbl = level_img + ((size_t)bottom * sw + left) * 3, *pbr = pbl + 3;
            for (int k = 0; k < 3; k++) {
                double v = (1 - tb) * ((1 - lr) * ptl[k] + lr * ptr[k]) + tb * ((1 - lr) * pbl[k] + lr * pbr[k]);
                o[k] = (uint8_t)v;
            }
        }
    if (level_img != crop) free(level_img);
    free(crop);
}
