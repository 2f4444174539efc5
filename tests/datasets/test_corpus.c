/*
 * test_corpus.c — the committed corpus (tests/datasets/corpus/, written by make_corpus.py) against
 * the expectations in its EXPECTED.txt, plus exact decoded values of the good images and a
 * deterministic mutation sweep over decoder and archive reader.
 *
 * Every corpus file must have an expectation. Archives are loaded as they are; other files are
 * loaded inside a folder beside the four good_*.png images. All of it runs with the working
 * directory and TMPDIR inside an empty temporary work area, which must still be empty afterwards,
 * and the targets of the `../` and absolute-path entries must not exist: nothing is written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/rng.h"
#include "datasets/image.h"
#include "datasets/imageset.h"
#include "ds_test_util.h"
#include "fl_build_config.h"
#include "harness.h"

#define CONTAINS(hay, needle) ((hay) != NULL && strstr((hay), (needle)) != NULL)

static const char *good_pngs[] = {"good_gray16.png", "good_palette.png", "good_rgb.png", "good_rgba.png"};

typedef struct expectation {
    char file[128], outcome[16], what[128], fragment[256];
} expectation;

static size_t read_expected(expectation **out) {
    char path[4096];
    size_t n = 0;
    unsigned char *text = ds_read_file(ds_corpus_path(path, sizeof path, "EXPECTED.txt"), &n);
    *out = NULL;
    if (!text) {
        fl_test_fail_at(__FILE__, __LINE__, "cannot read %s", path);
        return 0;
    }
    text = fl_xrealloc(text, n + 1);
    text[n] = '\0';
    size_t count = 0, cap = 0;
    expectation *list = NULL;
    for (char *line = strtok((char *)text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || !line[0]) continue;
        if (count == cap) list = fl_xrealloc(list, (cap = cap ? cap * 2 : 32) * sizeof *list);
        expectation *e = &list[count];
        memset(e, 0, sizeof *e);
        char *fields[4] = {0};
        char *p = line;
        for (int i = 0; i < 4 && p; i++) {
            fields[i] = p;
            p = strchr(p, '\t');
            if (p) *p++ = '\0';
        }
        if (!fields[3]) {
            fl_test_fail_at(__FILE__, __LINE__, "bad EXPECTED line: %s", line);
            continue;
        }
        snprintf(e->file, sizeof e->file, "%s", fields[0]);
        snprintf(e->outcome, sizeof e->outcome, "%s", fields[1]);
        snprintf(e->what, sizeof e->what, "%s", fields[2]);
        snprintf(e->fragment, sizeof e->fragment, "%s", fields[3]);
        count++;
    }
    free(text);
    *out = list;
    return count;
}

static bool is_archive_name(const char *name) {
    size_t n = strlen(name);
    const char *exts[] = {".zip", ".tar", ".tar.gz", ".tgz"};
    for (size_t i = 0; i < 4; i++) {
        size_t e = strlen(exts[i]);
        if (n >= e && strcmp(name + n - e, exts[i]) == 0) return true;
    }
    return false;
}

static void copy_corpus(const char *name, const char *dir) {
    char src[4096], dst[4096];
    size_t n = 0;
    unsigned char *data = ds_read_file(ds_corpus_path(src, sizeof src, name), &n);
    FL_CHECKF(data != NULL, "missing corpus file %s", name);
    FL_CHECK(ds_write_file(ds_join(dst, sizeof dst, dir, name), data, n));
    free(data);
}

/* Load one corpus file (wrapped in a folder unless it is an archive). */
static int load_item(const char *file, const char *wrap_root, fl_imageset **set, fl_error *err) {
    char path[4096];
    if (is_archive_name(file)) return fl_imageset_load(ds_corpus_path(path, sizeof path, file), NULL, set, err);
    ds_join(path, sizeof path, wrap_root, file);
    mkdir(path, 0755);
    for (size_t i = 0; i < 4; i++)
        if (strcmp(good_pngs[i], file) != 0) copy_corpus(good_pngs[i], path);
    copy_corpus(file, path);
    return fl_imageset_load(path, NULL, set, err);
}

static void test_corpus_expectations(void) {
#if !defined(FL_HAVE_STB) || !defined(FL_HAVE_ARCHIVE)
    return;
#endif
    expectation *list = NULL;
    size_t count = read_expected(&list);
    FL_EXPECT(count > 30);

    /* Every corpus file is covered. */
    char corpus_dir[4096];
    ds_corpus_path(corpus_dir, sizeof corpus_dir, "");
    int files = ds_dir_entries(corpus_dir);
    int covered = 1; /* EXPECTED.txt */
    for (size_t i = 0; i < count; i++) {
        bool first = true;
        for (size_t k = 0; k < i; k++) first &= strcmp(list[k].file, list[i].file) != 0;
        covered += first;
    }
    FL_EXPECTF(files == covered, "%d corpus files, %d with expectations", files, covered);

    char *root = ds_temp_dir("corpus");
    char work[4096], wrap[4096], cwd[4096];
    mkdir(ds_join(work, sizeof work, root, "work"), 0755);
    mkdir(ds_join(wrap, sizeof wrap, root, "wrap"), 0755);
    FL_CHECK(getcwd(cwd, sizeof cwd) != NULL);
    const char *old_tmp = getenv("TMPDIR");
    char *saved_tmp = old_tmp ? fl_xstrdup(old_tmp) : NULL;
    FL_CHECK(chdir(work) == 0);
    setenv("TMPDIR", work, 1);

    for (size_t i = 0; i < count;) {
        const char *file = list[i].file;
        fl_imageset *set = NULL;
        fl_error err = {0};
        int rc = load_item(file, wrap, &set, &err);
        for (; i < count && strcmp(list[i].file, file) == 0; i++) {
            const expectation *e = &list[i];
            if (strcmp(e->outcome, "ok") == 0) {
                FL_EXPECTF(rc == 0, "%s: load failed: %s", file, err.message);
                FL_EXPECTF(rc != 0 || set->rejected_count == 0, "%s: %zu rejected, first %s: %s", file,
                           set->rejected_count, set->rejected_count ? set->rejected[0].name : "",
                           set->rejected_count ? set->rejected[0].reason : "");
                if (!is_archive_name(file)) FL_EXPECTF(rc != 0 || ds_item(set, file) >= 0, "%s: not loaded", file);
            } else if (strcmp(e->outcome, "rejected") == 0) {
                FL_EXPECTF(rc == 0, "%s: load failed: %s", file, err.message);
                const char *reason = rc == 0 ? ds_reason(set, e->what) : NULL;
                FL_EXPECTF(CONTAINS(reason, e->fragment), "%s: %s: reason '%s', want '%s'", file, e->what,
                           reason ? reason : "(not rejected)", e->fragment);
                FL_EXPECTF(rc != 0 || set->count == 4, "%s: %zu usable images", file, rc == 0 ? set->count : 0);
            } else if (strcmp(e->outcome, "error") == 0) {
                FL_EXPECTF(rc != 0 && set == NULL, "%s: loaded, expected an error", file);
                FL_EXPECTF(rc == 0 || strcmp(fl_error_code_name(err.code), e->what) == 0, "%s: code %s, want %s", file,
                           fl_error_code_name(err.code), e->what);
                FL_EXPECTF(rc == 0 || CONTAINS(err.message, e->fragment), "%s: message '%s', want '%s'", file,
                           err.message, e->fragment);
            } else {
                fl_test_fail_at(__FILE__, __LINE__, "%s: unknown outcome %s", file, e->outcome);
            }
        }
        fl_imageset_free(set);
    }

    FL_CHECK(chdir(cwd) == 0);
    if (saved_tmp) setenv("TMPDIR", saved_tmp, 1);
    else unsetenv("TMPDIR");
    free(saved_tmp);

    char probe[4096];
    FL_EXPECTF(ds_dir_entries(work) == 0, "the work area got %d entries", ds_dir_entries(work));
    FL_EXPECT(access(ds_join(probe, sizeof probe, root, "escape_probe.png"), F_OK) != 0);
    FL_EXPECT(access(ds_join(probe, sizeof probe, root, "escape_probe2.png"), F_OK) != 0);
    FL_EXPECT(access("/tmp/fl_corpus_abs_probe.png", F_OK) != 0);
    char corpus_parent[4096];
    fl_test_data_path("datasets/escape_probe.png", corpus_parent, sizeof corpus_parent);
    FL_EXPECT(access(corpus_parent, F_OK) != 0);
    ds_remove_tree(root);
    free(root);
    free(list);
}

static void test_mixed_archive_details(void) {
#if !defined(FL_HAVE_STB) || !defined(FL_HAVE_ARCHIVE)
    return;
#endif
    char path[4096];
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_imageset_load(ds_corpus_path(path, sizeof path, "mixed.tar.gz"), NULL, &set, &err) == 0, "%s",
               err.message);
    if (!set) return;
    FL_EXPECT(set->count == 4 && set->rejected_count == 0);
    int i = ds_item(set, "set/good_rgb.png");
    FL_EXPECT(i >= 0 && set->items[i].caption &&
              strcmp(set->items[i].caption, "a red and blue gradient, [trigger]") == 0);
    for (size_t k = 0; k < set->count; k++) FL_EXPECT((int)k == i || set->items[k].caption == NULL);
    fl_imageset_free(set);
}

static fl_image decode_corpus(const char *name) {
    char path[4096];
    size_t n = 0;
    unsigned char *data = ds_read_file(ds_corpus_path(path, sizeof path, name), &n);
    fl_image img = {0};
    fl_error err = {0};
    if (!data || fl_image_decode(data, n, 50000000, 12000, &img, &err) != 0)
        fl_test_fail_at(__FILE__, __LINE__, "%s: %s", name, data ? err.message : "missing");
    free(data);
    return img;
}

static const unsigned char palette[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}};

/* Compare img with want(x, y, rgb) (8-bit values, alpha 255) exactly, or within tol. */
static void expect_pixels(const char *what, const fl_image *img, int w, int h, void (*want)(int, int, float[3]),
                          float tol) {
    FL_EXPECTF(img->width == w && img->height == h, "%s: %dx%d, want %dx%d", what, img->width, img->height, w, h);
    if (img->width != w || img->height != h) return;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float rgb[3];
            want(x, y, rgb);
            const float *px = img->pixels + ((size_t)y * w + x) * 3;
            for (int c = 0; c < 3; c++)
                if (!(px[c] >= rgb[c] - tol && px[c] <= rgb[c] + tol)) {
                    fl_test_fail_at(__FILE__, __LINE__, "%s: (%d,%d)[%d] = %.7f, want %.7f", what, x, y, c, px[c], rgb[c]);
                    return;
                }
        }
}

static void want_rgb(int x, int y, float o[3]) {
    o[0] = (float)(30 * x) / 255.0f, o[1] = (float)(40 * y) / 255.0f, o[2] = (float)(255 - 20 * x - 10 * y) / 255.0f;
}
static void want_rgba(int x, int y, float o[3]) { /* (255, 0, 100) at alpha 85x, on white */
    int a = 85 * x;
    (void)y;
    o[0] = (float)(255 * a + 255 * (255 - a)) / 65025.0f;
    o[1] = (float)(0 * a + 255 * (255 - a)) / 65025.0f;
    o[2] = (float)(100 * a + 255 * (255 - a)) / 65025.0f;
}
static void want_palette(int x, int y, float o[3]) {
    for (int c = 0; c < 3; c++) o[c] = (float)palette[(x + 2 * y) % 4][c] / 255.0f;
}
static void want_gray16(int x, int y, float o[3]) {
    for (int c = 0; c < 3; c++) o[c] = (float)(16 * (4 * x + y)) / 255.0f;
}
static void want_bmp(int x, int y, float o[3]) {
    o[0] = (float)(50 * x) / 255.0f, o[1] = (float)(100 * y) / 255.0f, o[2] = 7.0f / 255.0f;
}
static void want_gif(int x, int y, float o[3]) {
    for (int c = 0; c < 3; c++) o[c] = (float)palette[(x + y) % 4][c] / 255.0f;
}
static void want_jpeg(int x, int y, float o[3]) {
    (void)x, (void)y;
    o[0] = 200.0f / 255.0f, o[1] = 60.0f / 255.0f, o[2] = 30.0f / 255.0f;
}

static void test_good_pixels(void) {
#if !defined(FL_HAVE_STB)
    return;
#endif
    struct {
        const char *name;
        int w, h;
        void (*want)(int, int, float[3]);
        float tol;
    } cases[] = {
        {"good_rgb.png", 8, 6, want_rgb, 0},         {"good_rgba.png", 4, 4, want_rgba, 0},
        {"good_palette.png", 4, 2, want_palette, 0}, {"good_gray16.png", 4, 4, want_gray16, 0},
        {"good.bmp", 5, 3, want_bmp, 0},             {"good.gif", 4, 4, want_gif, 0},
        {"good.jpg", 16, 16, want_jpeg, 3.0f / 255.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fl_image img = decode_corpus(cases[i].name);
        if (img.pixels) expect_pixels(cases[i].name, &img, cases[i].w, cases[i].h, cases[i].want, cases[i].tol);
        fl_image_release(&img);
    }
}

static void test_decompression_bombs(void) {
#if !defined(FL_HAVE_STB)
    return;
#endif
    char path[4096];
    size_t n = 0;
    unsigned char *data = ds_read_file(ds_corpus_path(path, sizeof path, "header_30000.png"), &n);
    int w = 0, h = 0;
    fl_error err = {0};
    FL_EXPECT(data && n < 100);
    FL_EXPECT(fl_image_probe(data, n, &w, &h, &err) == 0 && w == 30000 && h == 30000);
    fl_image img;
    FL_EXPECT(fl_image_decode(data, n, 50000000, 12000, &img, &err) != 0 && img.pixels == NULL);
    FL_EXPECT(err.code == FL_ELIMIT && strcmp(err.message, "30000x30000 exceeds the 50 MP limit") == 0);
    free(data);

    data = ds_read_file(ds_corpus_path(path, sizeof path, "idat_bomb.png"), &n);
    FL_EXPECT(data && fl_image_decode(data, n, 50000000, 12000, &img, &err) != 0);
    FL_EXPECTF(strcmp(err.message, "truncated or corrupt image (stb: outofmem)") == 0, "%s", err.message);
    free(data);
}

/* Prefixes and byte flips of every good image and of a small archive: errors, never crashes. */
static void test_mutations(void) {
#if !defined(FL_HAVE_STB)
    return;
#endif
    const char *names[] = {"good_rgb.png", "good_rgba.png", "good_palette.png", "good_gray16.png",
                           "good.bmp",     "good.gif",      "good.jpg"};
    fl_rng rng;
    fl_rng_seed(&rng, 1234);
    int decoded = 0, refused = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[4096];
        size_t n = 0;
        unsigned char *data = ds_read_file(ds_corpus_path(path, sizeof path, names[i]), &n);
        if (!data) continue;
        unsigned char *copy = fl_xmalloc(n);
        for (size_t cut = 0; cut <= n; cut++) {
            fl_image img;
            fl_error err;
            memcpy(copy, data, cut);
            if (fl_image_decode(copy, cut, 1 << 20, 4096, &img, &err) == 0) decoded++, fl_image_release(&img);
            else refused++;
        }
        for (int round = 0; round < 150; round++) {
            memcpy(copy, data, n);
            int flips = 1 + (int)(fl_rng_next(&rng) % 4);
            for (int f = 0; f < flips; f++) copy[fl_rng_next(&rng) % n] ^= (unsigned char)(1 + fl_rng_next(&rng) % 255);
            fl_image img;
            fl_error err;
            if (fl_image_decode(copy, n, 1 << 20, 4096, &img, &err) == 0) decoded++, fl_image_release(&img);
            else refused++;
        }
        free(copy);
        free(data);
    }
    FL_EXPECT(decoded > 0 && refused > 0);

#if defined(FL_HAVE_ARCHIVE)
    char path[4096];
    size_t n = 0;
    unsigned char *zip = ds_read_file(ds_corpus_path(path, sizeof path, "dotdot.zip"), &n);
    FL_EXPECT(zip != NULL);
    if (zip) {
        unsigned char *copy = fl_xmalloc(n);
        for (int round = 0; round < 300; round++) {
            memcpy(copy, zip, n);
            int flips = 1 + (int)(fl_rng_next(&rng) % 8);
            for (int f = 0; f < flips; f++) copy[fl_rng_next(&rng) % n] ^= (unsigned char)(1 + fl_rng_next(&rng) % 255);
            fl_imageset *set = NULL;
            fl_error err;
            int rc = fl_imageset_load_memory(copy, n, "mutated.zip", NULL, &set, &err);
            FL_EXPECT((rc == 0) == (set != NULL));
            fl_imageset_free(set);
        }
        free(copy);
        free(zip);
    }
#endif
}

int main(void) {
    /* The corpus test changes directory: make the data path absolute first. */
    const char *data = getenv("FL_TEST_DATA_DIR");
    char absolute[4096];
    if (realpath(data && *data ? data : ".", absolute)) setenv("FL_TEST_DATA_DIR", absolute, 1);
    FL_RUN(test_corpus_expectations);
    FL_RUN(test_mixed_archive_details);
    FL_RUN(test_good_pixels);
    FL_RUN(test_decompression_bombs);
    FL_RUN(test_mutations);
    return fl_test_finish();
}
