/*
 * test_image_data.c — images checked from their headers and structure, without decoding.
 *
 * Covered: a top-down BMP (negative height) probes to its real size and decodes to exactly the
 * pixels of the bottom-up file; a file too short for the size its header claims (a cut BMP, JPEG,
 * GIF and PNG, and a PNG claiming 7000x7000 over a few bytes of data) is refused by
 * fl_image_check_data and by the decoder before it allocates for the claim, while every good
 * image of the corpus passes; fl_imageset_inspect_memory agrees with the loader on what a set
 * holds (images, pixels, refusals, too few images) and names the archive's kind (.zip, .tar,
 * .tar.gz) whatever it is called, and its report mode lists the loader's images (names and
 * sizes) and refusals (names and reasons) one by one, a set-wide refusal as its problem; an image decoded with a fit side comes out shrunk, each pixel
 * the mean of its box of the full decode, and one already small enough exactly as the full
 * decode; and thousands of mutated corpus images never crash the checks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "datasets/image.h"
#include "datasets/imageset.h"
#include "ds_test_util.h"
#include "fl_build_config.h"
#include "harness.h"

#define CONTAINS(hay, needle) ((hay) != NULL && strstr((hay), (needle)) != NULL)

static void pattern(int x, int y, unsigned char rgb[3]) {
    rgb[0] = (unsigned char)(x * 13 + y), rgb[1] = (unsigned char)(y * 29), rgb[2] = (unsigned char)(x ^ y);
}

static unsigned char *corpus(const char *name, size_t *n) {
    char path[4096];
    unsigned char *data = ds_read_file(ds_corpus_path(path, sizeof path, name), n);
    FL_EXPECTF(data != NULL, "missing corpus file %s", name);
    return data;
}

/* The same BMP with its rows stored top-down and a negative height. */
static unsigned char *top_down(const unsigned char *b, size_t n, int w, int h) {
    unsigned char *t = malloc(n);
    memcpy(t, b, n);
    size_t stride = ((size_t)w * 3 + 3) / 4 * 4;
    for (int y = 0; y < h; y++) memcpy(t + 54 + stride * (size_t)y, b + 54 + stride * (size_t)(h - 1 - y), stride);
    int32_t neg = -h;
    memcpy(t + 22, &neg, 4);
    return t;
}

static void test_top_down_bmp(void) {
    size_t n = 0;
    unsigned char *up = ds_bmp(13, 7, pattern, &n);
    unsigned char *down = top_down(up, n, 13, 7);
    int w = 0, h = 0;
    fl_error err = {0};
    FL_EXPECTF(fl_image_probe(down, n, &w, &h, &err) == 0 && w == 13 && h == 7, "probe: %d x %d %s", w, h, err.message);
    fl_image a, b;
    FL_EXPECTF(fl_image_decode(up, n, 1000000, 1000, &a, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_image_decode(down, n, 1000000, 1000, &b, &err) == 0, "top-down: %s", err.message);
    FL_EXPECT(a.width == b.width && a.height == b.height && a.pixels && b.pixels &&
              memcmp(a.pixels, b.pixels, (size_t)a.width * (size_t)a.height * 3 * sizeof(float)) == 0);
    fl_image_release(&a);
    fl_image_release(&b);
    free(up);
    free(down);
}

/* Refused by fl_image_check_data and by the decoder, with the reason. */
static void expect_short(const char *what, const unsigned char *b, size_t n) {
    int w = 0, h = 0;
    fl_error err = {0};
    if (fl_image_probe(b, n, &w, &h, &err) != 0) { /* refused even earlier: fine, if for the same reason */
        FL_EXPECTF(CONTAINS(err.message, "truncated or corrupt image"), "%s: probe says %s", what, err.message);
        return;
    }
    FL_EXPECTF(fl_image_check_data(b, n, w, h, &err) != 0 && err.code == FL_EINVAL &&
                   CONTAINS(err.message, "truncated or corrupt image ("),
               "%s (%dx%d, %zu bytes) passed the data check", what, w, h, n);
    fl_image img;
    FL_EXPECTF(fl_image_decode(b, n, 100000000, 20000, &img, &err) != 0 && CONTAINS(err.message, "truncated or corrupt"),
               "%s decoded", what);
}

static void test_short_files_are_refused(void) {
    size_t n = 0;
    unsigned char *bmp = ds_bmp(40, 30, pattern, &n);
    expect_short("a BMP missing its last rows", bmp, n - 200);
    free(bmp);
    static const char *const names[] = {"good.jpg", "good.gif", "good_rgb.png", "good_palette.png"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        unsigned char *b = corpus(names[i], &n);
        if (!b) continue;
        int w = 0, h = 0;
        fl_error err = {0};
        FL_EXPECTF(fl_image_probe(b, n, &w, &h, &err) == 0 && fl_image_check_data(b, n, w, h, &err) == 0,
                   "good %s: %s", names[i], err.message);
        char what[96];
        snprintf(what, sizeof what, "%s cut at 60%%", names[i]);
        expect_short(what, b, n * 6 / 10);
        free(b);
    }
    /* A PNG that claims 7000x7000 over 40 bytes of pixel data (chunks complete, IEND present). */
    static const unsigned char head[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D',
                                         'R', 0, 0, 0x1b, 0x58, 0, 0, 0x1b, 0x58, 8, 2, 0, 0, 0, 0, 0, 0, 0};
    unsigned char liar[sizeof head + 12 + 40 + 12];
    memcpy(liar, head, sizeof head);
    unsigned char *p = liar + sizeof head;
    const unsigned char idat_len[4] = {0, 0, 0, 40};
    memcpy(p, idat_len, 4), memcpy(p + 4, "IDAT", 4), memset(p + 8, 0x78, 40), memset(p + 48, 0, 4);
    p += 52;
    memset(p, 0, 4), memcpy(p + 4, "IEND", 4), memset(p + 8, 0, 4);
    int w = 0, h = 0;
    fl_error err = {0};
    FL_EXPECT(fl_image_probe(liar, sizeof liar, &w, &h, &err) == 0 && w == 7000 && h == 7000);
    FL_EXPECTF(fl_image_check_data(liar, sizeof liar, w, h, &err) != 0 &&
                   CONTAINS(err.message, "7000x7000 needs at least 142448 bytes of pixel data, the file holds 40"),
               "%s", err.message);
}

static void test_inspect_agrees_with_the_loader(void) {
#if defined(FL_HAVE_ARCHIVE)
    size_t nb[6], njpg = 0, nbroken = 0;
    unsigned char *bmps[6];
    for (int i = 0; i < 6; i++) bmps[i] = ds_bmp(10 + i, 8 + 2 * i, pattern, &nb[i]);
    unsigned char *jpg = corpus("good.jpg", &njpg), *broken = corpus("truncated.png", &nbroken);
    ds_entry entries[] = {
        {"a.bmp", bmps[0], nb[0], DS_FILE, NULL}, {"b.bmp", bmps[1], nb[1], DS_FILE, NULL},
        {"c.bmp", bmps[2], nb[2], DS_FILE, NULL}, {"c.txt", "a caption", 9, DS_FILE, NULL},
        {"d/e.bmp", bmps[3], nb[3], DS_FILE, NULL}, {"f.jpg", jpg, njpg, DS_FILE, NULL},
        {"g.png", broken, nbroken, DS_FILE, NULL}, {"a.bmp", bmps[4], nb[4], DS_FILE, NULL},
    };
    static const struct {
        ds_archive_format format;
        const char *ext;
    } kinds[] = {{DS_ZIP, ".zip"}, {DS_TAR, ".tar"}, {DS_TAR_GZ, ".tar.gz"}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        size_t size = 0;
        unsigned char *archive = ds_archive(entries, sizeof entries / sizeof entries[0], kinds[k].format, &size);
        fl_imageset *set = NULL;
        fl_imageset_summary sum;
        fl_error err = {0};
        FL_EXPECTF(fl_imageset_load_memory(archive, size, "pics.zip", NULL, &set, &err) == 0, "%s", err.message);
        FL_EXPECTF(fl_imageset_inspect_memory(archive, size, "pics.zip", NULL, &sum, &err) == 0, "%s", err.message);
        if (set) {
            int64_t pixels = 0, largest = 0;
            for (size_t i = 0; i < set->count; i++) {
                int64_t px = (int64_t)set->items[i].image.width * set->items[i].image.height;
                pixels += px;
                largest = px > largest ? px : largest;
            }
            FL_EXPECTF(sum.images == set->count && sum.total_pixels == pixels && sum.largest_pixels == largest,
                       "%s: inspect %zu images %lld px, load %zu images %lld px", kinds[k].ext, sum.images,
                       (long long)sum.total_pixels, set->count, (long long)pixels);
            FL_EXPECTF(sum.rejected == set->rejected_count, "%s: %zu refused, the loader %zu", kinds[k].ext,
                       sum.rejected, set->rejected_count);
            FL_EXPECTF(sum.archive_ext && !strcmp(sum.archive_ext, kinds[k].ext), "kind %s, want %s",
                       sum.archive_ext ? sum.archive_ext : "(none)", kinds[k].ext);
            /* The report: the same images and refusals, one by one. */
            fl_imageset_report rep;
            FL_EXPECTF(fl_imageset_report_memory(archive, size, "pics.zip", NULL, &rep, &err) == 0, "%s", err.message);
            FL_EXPECTF(rep.usable && rep.n_images == set->count && rep.n_rejected == set->rejected_count &&
                           rep.summary.images == set->count,
                       "%s: report %zu images %zu refused, load %zu / %zu", kinds[k].ext, rep.n_images, rep.n_rejected,
                       set->count, set->rejected_count);
            for (size_t i = 0; i < rep.n_images && i < set->count; i++)
                FL_EXPECTF(!strcmp(rep.images[i].name, set->items[i].name) &&
                               rep.images[i].width == set->items[i].image.width &&
                               rep.images[i].height == set->items[i].image.height,
                           "image %zu: %s %dx%d, load %s", i, rep.images[i].name, rep.images[i].width,
                           rep.images[i].height, set->items[i].name);
            for (size_t i = 0; i < rep.n_rejected && i < set->rejected_count; i++)
                FL_EXPECTF(!strcmp(rep.rejected[i].name, set->rejected[i].name) &&
                               !strcmp(rep.rejected[i].reason, set->rejected[i].reason),
                           "refused %zu: %s (%s), load %s (%s)", i, rep.rejected[i].name, rep.rejected[i].reason,
                           set->rejected[i].name, set->rejected[i].reason);
            fl_imageset_report_clear(&rep);
        }
        fl_imageset_free(set);
        /* Too few images: both refuse with the same message. */
        fl_imageset_limits l = fl_imageset_limits_default();
        l.min_images = 6;
        fl_error e1 = {0}, e2 = {0};
        set = NULL;
        FL_EXPECT(fl_imageset_load_memory(archive, size, "pics", &l, &set, &e1) != 0);
        FL_EXPECT(fl_imageset_inspect_memory(archive, size, "pics", &l, &sum, &e2) != 0);
        FL_EXPECTF(!strcmp(e1.message, e2.message), "load: %s / inspect: %s", e1.message, e2.message);
        fl_imageset_report rep;
        FL_EXPECTF(fl_imageset_report_memory(archive, size, "pics", &l, &rep, &e2) == 0, "%s", e2.message);
        FL_EXPECTF(!rep.usable && !strcmp(rep.problem.message, e1.message) && rep.n_images == 5 && rep.n_rejected >= 2,
                   "too few: usable %d, problem %s, %zu images, %zu refused", rep.usable, rep.problem.message,
                   rep.n_images, rep.n_rejected);
        fl_imageset_report_clear(&rep);
        /* A pixel budget refuses the same images. */
        l = fl_imageset_limits_default();
        l.max_total_pixels = 300;
        FL_EXPECT(fl_imageset_load_memory(archive, size, "pics", &l, &set, &e1) != 0);
        FL_EXPECT(fl_imageset_inspect_memory(archive, size, "pics", &l, &sum, &e2) != 0);
        FL_EXPECTF(!strcmp(e1.message, e2.message), "budget: load: %s / inspect: %s", e1.message, e2.message);
        free(archive);
    }
    for (int i = 0; i < 6; i++) free(bmps[i]);
    free(jpg);
    free(broken);
#else
    printf("  (skipped: no libarchive)\n");
#endif
}

static void test_decode_fit_shrinks_by_box_means(void) {
    size_t n = 0;
    unsigned char *bmp = ds_bmp(40, 24, pattern, &n);
    fl_image full, fit, same;
    fl_error err = {0};
    FL_EXPECTF(fl_image_decode(bmp, n, 1000000, 1000, &full, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_image_decode_fit(bmp, n, 1000000, 1000, 10, &fit, &err) == 0, "%s", err.message);
    FL_EXPECTF(fit.width == 10 && fit.height == 6, "fit to 10: %d x %d", fit.width, fit.height);
    double worst = 0;
    for (int y = 0; y < fit.height && full.pixels && fit.pixels; y++)
        for (int x = 0; x < fit.width; x++)
            for (int c = 0; c < 3; c++) {
                double sum = 0; /* boxes of 4 x 4: 40 / 10 and 24 / 6 */
                for (int dy = 0; dy < 4; dy++)
                    for (int dx = 0; dx < 4; dx++) sum += full.pixels[3 * ((y * 4 + dy) * 40 + x * 4 + dx) + c];
                double d = sum / 16 - fit.pixels[3 * (y * 10 + x) + c];
                worst = d > worst ? d : -d > worst ? -d : worst;
            }
    FL_EXPECTF(worst < 1e-6, "a shrunk pixel is off its box mean by %g", worst);
    FL_EXPECTF(fl_image_decode_fit(bmp, n, 1000000, 1000, 40, &same, &err) == 0, "%s", err.message);
    FL_EXPECT(same.width == 40 && same.height == 24 && same.pixels && full.pixels &&
              memcmp(same.pixels, full.pixels, 40 * 24 * 3 * sizeof(float)) == 0);
    fl_image_release(&full);
    fl_image_release(&fit);
    fl_image_release(&same);
    free(bmp);
}

static void test_mutations_never_crash(void) {
    static const char *const names[] = {"good.jpg", "good.gif", "good_rgb.png", "good.bmp", "good_gray16.png"};
    fl_rng rng;
    fl_rng_seed(&rng, 7);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = 0;
        unsigned char *b = corpus(names[i], &n);
        if (!b) continue;
        unsigned char *m = malloc(n);
        for (int round = 0; round < 1500; round++) {
            memcpy(m, b, n);
            int flips = 1 + (int)(fl_rng_next(&rng) % 8);
            for (int f = 0; f < flips; f++) m[fl_rng_next(&rng) % n] = (unsigned char)fl_rng_next(&rng);
            size_t len = round % 3 == 0 ? (size_t)(fl_rng_next(&rng) % (n + 1)) : n;
            int w = 0, h = 0;
            fl_error err = {0};
            if (fl_image_probe(m, len, &w, &h, &err) == 0) fl_image_check_data(m, len, w, h, &err);
        }
        free(m);
        free(b);
    }
}

int main(void) {
    FL_RUN(test_top_down_bmp);
    FL_RUN(test_short_files_are_refused);
    FL_RUN(test_inspect_agrees_with_the_loader);
    FL_RUN(test_decode_fit_shrinks_by_box_means);
    FL_RUN(test_mutations_never_crash);
    return fl_test_finish();
}
