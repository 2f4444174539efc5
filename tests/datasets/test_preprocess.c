/*
 * test_preprocess.c — aspect buckets, resampling on synthetic images with exactly known results
 * (solid colors, checkerboards, hand-computed area and bilinear weights), agreement between the
 * stb_image_resize path and the built-in filter, center crops, flips, and the [-1, 1] layout.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "datasets/preprocess.h"
#include "harness.h"

static fl_image make_image(int w, int h, float (*fn)(int x, int y, int c)) {
    fl_image img;
    fl_error err;
    FL_CHECK(fl_image_init(&img, w, h, &err) == 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) img.pixels[((size_t)y * w + x) * 3 + c] = fn(x, y, c);
    return img;
}

static float px(const fl_image *img, int x, int y, int c) {
    return img->pixels[((size_t)y * img->width + x) * 3 + c];
}

static float solid(int x, int y, int c) {
    (void)x, (void)y;
    return c == 0 ? 0.8f : c == 1 ? 0.25f : 0.125f;
}
static float checker2(int x, int y, int c) { /* 2x2 cells */
    (void)c;
    return (float)(((x / 2) + (y / 2)) % 2);
}
static float checker1(int x, int y, int c) {
    (void)c;
    return (float)((x + y) % 2);
}
static float ramp3(int x, int y, int c) { /* [0, 0.3, 0.9] */
    (void)y, (void)c;
    return x == 0 ? 0.0f : x == 1 ? 0.3f : 0.9f;
}
static float two(int x, int y, int c) {
    (void)y, (void)c;
    return (float)x;
}
static float thirds_wide(int x, int y, int c) { /* 300x100: red | green | blue */
    (void)y;
    return (float)(x / 100 == c);
}
static float thirds_tall(int x, int y, int c) { /* 20x60: red / green / blue bands */
    (void)x;
    return (float)(y / 20 == c);
}
static float columns(int x, int y, int c) {
    (void)y;
    return (float)x / 10.0f + (float)c * 0.01f;
}

static void test_buckets(void) {
    int w = 0, h = 0;
    FL_EXPECT(fl_bucket_choose(1000, 1000, 1024, 64, &w, &h) == 0 && w == 1024 && h == 1024);
    FL_EXPECT(fl_bucket_choose(3, 3, 512, 64, &w, &h) == 0 && w == 512 && h == 512);
    FL_EXPECTF(fl_bucket_choose(2000, 1000, 1024, 64, &w, &h) == 0 && w == 1408 && h == 704, "%dx%d", w, h);
    FL_EXPECTF(fl_bucket_choose(1000, 2000, 1024, 64, &w, &h) == 0 && w == 704 && h == 1408, "%dx%d", w, h);
    FL_EXPECTF(fl_bucket_choose(10000, 100, 1024, 64, &w, &h) == 0 && w == 2048 && h == 512, "%dx%d", w, h);
    FL_EXPECTF(fl_bucket_choose(100, 10000, 1024, 64, &w, &h) == 0 && w == 512 && h == 2048, "%dx%d", w, h);
    FL_EXPECT(fl_bucket_choose(0, 10, 1024, 64, &w, &h) == -1);
    FL_EXPECT(fl_bucket_choose(10, 10, 32, 64, &w, &h) == -1);
    FL_EXPECT(fl_bucket_choose(10, 10, 1024, 0, &w, &h) == -1);
    FL_EXPECT(fl_bucket_choose(10, 10, 100000, 64, &w, &h) == -1);

    /* Properties over many shapes: multiples of step, area within base², aspect within 1:4, and
     * no allowed bucket has a closer aspect. */
    fl_rng rng;
    fl_rng_seed(&rng, 3);
    const int bases[] = {512, 768, 1024}, steps[] = {16, 32, 64};
    for (int i = 0; i < 300; i++) {
        int iw = 1 + (int)(fl_rng_next(&rng) % 6000), ih = 1 + (int)(fl_rng_next(&rng) % 6000);
        int base = bases[i % 3], step = steps[(i / 3) % 3];
        if (fl_bucket_choose(iw, ih, base, step, &w, &h) != 0) {
            fl_test_fail_at(__FILE__, __LINE__, "no bucket for %dx%d", iw, ih);
            continue;
        }
        bool ok = w % step == 0 && h % step == 0 && (long)w * h <= (long)base * base && w <= 4 * h && h <= 4 * w;
        double d = fabs(log((double)w / h) - log((double)iw / ih));
        for (int s = step; s <= 4 * base && ok; s += step) {
            int o = base * base / s / step * step;
            if (o < step || s > 4 * o || o > 4 * s) continue;
            ok = fabs(log((double)s / o) - log((double)iw / ih)) >= d - 1e-9 &&
                 fabs(log((double)o / s) - log((double)iw / ih)) >= d - 1e-9;
        }
        FL_EXPECTF(ok, "%dx%d base %d step %d -> %dx%d", iw, ih, base, step, w, h);
    }
}

typedef int (*resample_fn)(const fl_image *, int, int, fl_image *, fl_error *);

static void check_known_results(const char *what, resample_fn resample) {
    fl_error err;
    fl_image src, out;

    src = make_image(37, 23, solid);
    const int sizes[][2] = {{10, 7}, {50, 40}, {37, 23}, {80, 5}, {1, 1}};
    for (size_t s = 0; s < 5; s++) {
        FL_CHECK(resample(&src, sizes[s][0], sizes[s][1], &out, &err) == 0);
        float worst = 0;
        for (size_t i = 0; i < (size_t)out.width * out.height * 3; i++)
            worst = fmaxf(worst, fabsf(out.pixels[i] - solid(0, 0, (int)(i % 3))));
        FL_EXPECTF(worst < 1e-6f, "%s: solid color to %dx%d off by %g", what, sizes[s][0], sizes[s][1], worst);
        fl_image_release(&out);
    }
    fl_image_release(&src);

    src = make_image(16, 16, checker2);
    FL_CHECK(resample(&src, 8, 8, &out, &err) == 0);
    bool exact = true;
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++) exact &= fabsf(px(&out, x, y, 0) - (float)((x + y) % 2)) < 1e-6f;
    FL_EXPECTF(exact, "%s: 2x2 checkerboard halved", what);
    fl_image_release(&out);
    fl_image_release(&src);

    src = make_image(16, 16, checker1);
    FL_CHECK(resample(&src, 8, 8, &out, &err) == 0);
    exact = true;
    for (int i = 0; i < 8 * 8 * 3; i++) exact &= fabsf(out.pixels[i] - 0.5f) < 1e-6f;
    FL_EXPECTF(exact, "%s: 1x1 checkerboard halved is grey", what);
    fl_image_release(&out);
    fl_image_release(&src);

    /* 3 -> 2: area weights (1, 0.5) / 1.5 and (0.5, 1) / 1.5. */
    src = make_image(3, 1, ramp3);
    FL_CHECK(resample(&src, 2, 1, &out, &err) == 0);
    FL_EXPECTF(fabsf(px(&out, 0, 0, 0) - 0.1f) < 1e-6f && fabsf(px(&out, 1, 0, 0) - 0.7f) < 1e-6f, "%s: 3->2 gives %g %g",
               what, px(&out, 0, 0, 0), px(&out, 1, 0, 0));
    fl_image_release(&out);
    fl_image_release(&src);

    /* 2 -> 4: bilinear between centers, clamped: 0, 0.25, 0.75, 1. */
    src = make_image(2, 1, two);
    FL_CHECK(resample(&src, 4, 1, &out, &err) == 0);
    const float want[4] = {0.0f, 0.25f, 0.75f, 1.0f};
    exact = true;
    for (int x = 0; x < 4; x++) exact &= fabsf(px(&out, x, 0, 1) - want[x]) < 1e-6f;
    FL_EXPECTF(exact, "%s: 2->4 gives %g %g %g %g", what, px(&out, 0, 0, 1), px(&out, 1, 0, 1), px(&out, 2, 0, 1),
               px(&out, 3, 0, 1));
    fl_image_release(&out);
    fl_image_release(&src);
}

static void test_resample_known(void) {
    check_known_results("resample", fl_image_resample);
    check_known_results("builtin", fl_image_resample_builtin);
}

static float noise_value(int x, int y, int c) {
    unsigned h = (unsigned)x * 73856093u ^ (unsigned)y * 19349663u ^ (unsigned)c * 83492791u;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return (float)(h % 1000) / 999.0f;
}

static void test_resample_paths_agree(void) {
    fl_image src = make_image(61, 47, noise_value);
    const int sizes[][2] = {{20, 15}, {17, 29}, {100, 90}, {122, 20}, {61, 47}, {7, 3}, {64, 64}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        fl_image a, b;
        fl_error err;
        FL_CHECK(fl_image_resample(&src, sizes[s][0], sizes[s][1], &a, &err) == 0);
        FL_CHECK(fl_image_resample_builtin(&src, sizes[s][0], sizes[s][1], &b, &err) == 0);
        char what[64];
        snprintf(what, sizeof what, "61x47 -> %dx%d", sizes[s][0], sizes[s][1]);
        FL_EXPECT_CLOSE(what, a.pixels, b.pixels, (size_t)a.width * a.height * 3, 2e-5, 0);
        fl_image_release(&a);
        fl_image_release(&b);
    }
    fl_image_release(&src);
}

static void test_resize_crop(void) {
    fl_error err;
    fl_image src = make_image(300, 100, thirds_wide), out;
    FL_CHECK(fl_image_resize_crop(&src, 10, 10, &out, &err) == 0);
    bool exact = true;
    for (int i = 0; i < 100; i++) exact &= fabsf(out.pixels[3 * i]) < 1e-6f && fabsf(out.pixels[3 * i + 1] - 1) < 1e-6f &&
                                     fabsf(out.pixels[3 * i + 2]) < 1e-6f;
    FL_EXPECTF(exact, "wide source: center third (green) expected");
    fl_image_release(&out);
    fl_image_release(&src);

    src = make_image(20, 60, thirds_tall);
    FL_CHECK(fl_image_resize_crop(&src, 4, 4, &out, &err) == 0);
    exact = true;
    for (int i = 0; i < 16; i++) exact &= fabsf(out.pixels[3 * i]) < 1e-6f && fabsf(out.pixels[3 * i + 1] - 1) < 1e-6f &&
                                     fabsf(out.pixels[3 * i + 2]) < 1e-6f;
    FL_EXPECTF(exact, "tall source: center band (green) expected");
    fl_image_release(&out);
    fl_image_release(&src);

    /* Odd margin: 5 columns to a square of 2 rows keeps columns 1 and 2. */
    src = make_image(5, 2, columns);
    FL_CHECK(fl_image_resize_crop(&src, 2, 2, &out, &err) == 0);
    FL_EXPECTF(fabsf(px(&out, 0, 0, 0) - 0.1f) < 1e-6f && fabsf(px(&out, 1, 1, 0) - 0.2f) < 1e-6f, "got %g %g",
               px(&out, 0, 0, 0), px(&out, 1, 1, 0));
    fl_image_release(&out);

    FL_EXPECT(fl_image_resize_crop(&src, 0, 4, &out, &err) != 0 && err.code == FL_EINVAL && out.pixels == NULL);
    FL_EXPECT(fl_image_resize_crop(&src, 4, FL_PREPROCESS_MAX_SIDE + 1, &out, &err) != 0);
    fl_image_release(&src);
}

static void test_flip_and_layout(void) {
    fl_image img = make_image(3, 2, columns);
    fl_image_flip_horizontal(&img);
    FL_EXPECT(px(&img, 0, 0, 0) == columns(2, 0, 0) && px(&img, 2, 1, 2) == columns(0, 1, 2) &&
              px(&img, 1, 0, 1) == columns(1, 0, 1));
    fl_image_flip_horizontal(&img);
    bool same = true;
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 3; x++)
            for (int c = 0; c < 3; c++) same &= px(&img, x, y, c) == columns(x, y, c);
    FL_EXPECT(same);
    fl_image_release(&img);

    img = make_image(4, 1, columns);
    fl_image_flip_horizontal(&img);
    FL_EXPECT(px(&img, 0, 0, 0) == columns(3, 0, 0) && px(&img, 3, 0, 0) == columns(0, 0, 0) &&
              px(&img, 1, 0, 0) == columns(2, 0, 0));
    fl_image_release(&img);

    fl_error err;
    FL_CHECK(fl_image_init(&img, 3, 1, &err) == 0);
    const float values[9] = {0, 1, 0.5f, 0.25f, 0.75f, 1, 0, 0, 0};
    memcpy(img.pixels, values, sizeof values);
    float out[9];
    fl_image_to_training(&img, out);
    const float want[9] = {-1, 1, 0, -0.5f, 0.5f, 1, -1, -1, -1};
    FL_EXPECT_CLOSE("training layout", out, want, 9, 0, 0);
    fl_image_release(&img);

    /* The whole path: 4x2 -> center 2x2 (columns 1, 2) -> flipped -> [-1, 1]. */
    img = make_image(4, 2, columns);
    float sample[2 * 2 * 3];
    FL_CHECK(fl_preprocess_sample(&img, 2, 2, true, sample, &err) == 0);
    float expect[12];
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++)
            for (int c = 0; c < 3; c++) expect[(y * 2 + x) * 3 + c] = 2.0f * columns(2 - x, y, c) - 1.0f;
    FL_EXPECT_CLOSE("preprocess_sample", sample, expect, 12, 1e-6, 0);
    fl_image_release(&img);
}

int main(void) {
    FL_RUN(test_buckets);
    FL_RUN(test_resample_known);
    FL_RUN(test_resample_paths_agree);
    FL_RUN(test_resize_crop);
    FL_RUN(test_flip_and_layout);
    return fl_test_finish();
}
