/*
 * test_clipart.c — the embedded model's data builders on inputs made at test time (no Debian
 * package needed): captions from openclipart paths and emoji names, clip-art layers (alpha kept,
 * trimmed, drawn at a size and place), the pretraining-set builder on a small fake package tree
 * (caps per directory, held-out sources, duplicates and broken files skipped, manifest and
 * DATASET.json), the demo-subject renderer, and the figure canvas used for reports.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/figure.h"
#include "datasets/clipart.h"
#include "datasets/image.h"
#include "datasets/subjects.h"
#include "ds_test_util.h"
#include "fl_build_config.h"
#include "harness.h"

#ifdef FL_HAVE_STB
#include <stb_image_write.h>

static char *work;

/* ---- inputs ------------------------------------------------------------------------------------ */

typedef struct rgba_px {
    unsigned char r, g, b, a;
} rgba_px;

/* A w x h RGBA PNG: transparent, with a filled rectangle (x0, y0, rw, rh) of colour c. */
static void write_rgba(const char *path, int w, int h, int x0, int y0, int rw, int rh, rgba_px c) {
    rgba_px *px = calloc((size_t)w * h, sizeof *px);
    for (int y = y0; y < y0 + rh; y++)
        for (int x = x0; x < x0 + rw; x++) px[y * w + x] = c;
    FL_EXPECTF(stbi_write_png(path, w, h, 4, px, w * 4) != 0, "cannot write %s", path);
    free(px);
}

static void mkdir_p(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    mkdir(buf, 0755);
}

static const char *path_in(char *buf, size_t size, const char *rel) {
    snprintf(buf, size, "%s/%s", work, rel);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", buf);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        mkdir_p(dir);
    }
    return buf;
}

/* ---- captions ---------------------------------------------------------------------------------- */

static void expect_openclipart(int line, const char *rel, const char *want) {
    char got[256];
    fl_clipart_caption_openclipart(rel, got, sizeof got);
    if (strcmp(got, want)) fl_test_fail_at(__FILE__, line, "caption(%s) = \"%s\", want \"%s\"", rel, got, want);
}
#define EXPECT_OPENCLIPART(rel, want) expect_openclipart(__LINE__, rel, want)

static void test_openclipart_captions(void) {
    EXPECT_OPENCLIPART("animals/mammals/happy_monkey_benji_01.png", "happy monkey, animals mammals");
    EXPECT_OPENCLIPART("signs_and_symbols/BasseTemperature.png", "basse temperature, signs and symbols");
    EXPECT_OPENCLIPART("animals/birds/cigno_architetto_frances_01.png", "cigno, animals birds");
    EXPECT_OPENCLIPART("unsorted/teapot_architett_01.png", "teapot");
    EXPECT_OPENCLIPART("computer/icons/flat-theme/action/arrow1_left.png", "arrow left, computer icons action");
    EXPECT_OPENCLIPART("food/fruit/apple_apple_02.png", "apple, food fruit");
    EXPECT_OPENCLIPART("food/fruit/fruit_bowl.png", "fruit bowl, food");
    EXPECT_OPENCLIPART("special/01_02.png", "");
    EXPECT_OPENCLIPART("plain.png", "plain");
    char tiny[8];
    fl_clipart_caption_openclipart("animals/mammals/happy_monkey_01.png", tiny, sizeof tiny);
    FL_EXPECTF(strlen(tiny) < sizeof tiny, "caption overflowed its buffer");
}

static void test_emoji_captions(void) {
    char path[4096];
    path_in(path, sizeof path, "emoji-test.txt");
    const char *text = "# group: Smileys\n"
                       "1F600                                      ; fully-qualified     # \xF0\x9F\x98\x80 E1.0 grinning face\n"
                       "1F1EF 1F1F5                                ; fully-qualified     # x E0.6 flag: Japan\n"
                       "0023 FE0F 20E3                             ; fully-qualified     # x E0.6 keycap: #\n"
                       "0023 20E3                                  ; unqualified         # x E0.6 keycap: #\n"
                       "1F44B 1F3FB                                ; fully-qualified     # x E1.0 waving hand: light skin tone\n"
                       "1F3F4 E0067 E0062 E0065 E006E E0067 E007F  ; fully-qualified     # x E5.0 flag: England\n";
    FL_EXPECT(ds_write_file(path, text, strlen(text)));
    fl_emoji_names *names = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_emoji_names_load(path, &names, &err) == 0, "load: %s", err.message);
    if (!names) return;
    struct {
        const char *file, *want;
    } cases[] = {
        {"emoji_u1f600.png", "grinning face emoji"},
        {"JP.png", "flag japan emoji"},
        {"emoji_u0023_20e3.png", "keycap emoji"},
        {"emoji_u1f44b_1f3fb.png", "waving hand light skin tone emoji"},
        {"emoji_u1f3f4_e0067_e0062_e0065_e006e_e0067_e007f.png", "flag england emoji"},
        {"emoji_u1f601.png", ""},
        {"ZZ.png", ""},
        {"readme.png", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char got[128];
        size_t n = fl_emoji_caption(names, cases[i].file, got, sizeof got);
        FL_EXPECTF(!strcmp(got, cases[i].want) && n == strlen(cases[i].want), "%s -> \"%s\", want \"%s\"", cases[i].file,
                   got, cases[i].want);
    }
    fl_emoji_names_free(names);
    FL_EXPECT(fl_emoji_names_load("/nonexistent/emoji-test.txt", &names, &err) != 0 && names == NULL);
}

/* ---- layers ------------------------------------------------------------------------------------- */

static void test_load_trim_draw(void) {
    char path[4096];
    path_in(path, sizeof path, "layer/red.png");
    write_rgba(path, 20, 10, 5, 3, 6, 4, (rgba_px){255, 0, 0, 255});
    fl_clipart art;
    fl_error err = {0};
    FL_EXPECTF(fl_clipart_load(path, &art, &err) == 0, "load: %s", err.message);
    if (fl_test_current_failures()) return;
    FL_EXPECTF(art.color.width == 6 && art.color.height == 4, "trimmed to %dx%d, want 6x4", art.color.width,
               art.color.height);
    fl_image canvas;
    FL_EXPECT(fl_image_init(&canvas, 16, 16, &err) == 0);
    for (size_t i = 0; i < 16 * 16 * 3; i++) canvas.pixels[i] = 1.0f;
    FL_EXPECT(fl_clipart_draw(&art, &canvas, 8.0, 8.0, 12.0, &err) == 0); /* 12 x 8 centred: x 2..13, y 4..11 */
    const float *centre = canvas.pixels + (8 * 16 + 8) * 3, *corner = canvas.pixels;
    FL_EXPECTF(fabsf(centre[0] - 1.0f) < 1e-5f && centre[1] < 1e-5f && centre[2] < 1e-5f, "centre is (%g, %g, %g)",
               centre[0], centre[1], centre[2]);
    FL_EXPECTF(corner[0] == 1.0f && corner[1] == 1.0f && corner[2] == 1.0f, "corner is not white");
    const float *above = canvas.pixels + (2 * 16 + 8) * 3, *left = canvas.pixels + (8 * 16 + 1) * 3;
    FL_EXPECT(above[1] == 1.0f && left[1] == 1.0f);
    /* Partly off the canvas: clipped, no crash. */
    FL_EXPECT(fl_clipart_draw(&art, &canvas, -3.0, 15.0, 30.0, &err) == 0);
    FL_EXPECT(fl_clipart_draw(&art, &canvas, 8.0, 8.0, 0.5, &err) != 0);
    FL_EXPECT(fl_clipart_draw(&art, &canvas, NAN, 8.0, 4.0, &err) != 0);
    fl_image_release(&canvas);
    fl_clipart_release(&art);

    /* Half-transparent colour composites over the background. */
    path_in(path, sizeof path, "layer/half.png");
    write_rgba(path, 4, 4, 0, 0, 4, 4, (rgba_px){0, 0, 255, 128});
    FL_EXPECT(fl_clipart_load(path, &art, &err) == 0);
    fl_image bg;
    FL_EXPECT(fl_image_init(&bg, 4, 4, &err) == 0);
    for (size_t i = 0; i < 4 * 4 * 3; i++) bg.pixels[i] = 1.0f;
    FL_EXPECT(fl_clipart_draw(&art, &bg, 2.0, 2.0, 4.0, &err) == 0);
    float a = 128 / 255.0f;
    FL_EXPECTF(fabsf(bg.pixels[0] - (1 - a)) < 1e-3f && fabsf(bg.pixels[2] - 1.0f) < 1e-3f, "half blue: (%g, %g, %g)",
               bg.pixels[0], bg.pixels[1], bg.pixels[2]);
    fl_image_release(&bg);
    fl_clipart_release(&art);

    /* Blank and broken files are errors with a reason. */
    path_in(path, sizeof path, "layer/blank.png");
    write_rgba(path, 8, 8, 0, 0, 8, 8, (rgba_px){255, 255, 255, 255});
    FL_EXPECT(fl_clipart_load(path, &art, &err) != 0 && strstr(err.message, "blank"));
    path_in(path, sizeof path, "layer/broken.png");
    FL_EXPECT(ds_write_file(path, "\x89PNG\r\n\x1a\nnot really", 18));
    FL_EXPECT(fl_clipart_load(path, &art, &err) != 0);
    FL_EXPECT(fl_clipart_load("/nonexistent.png", &art, &err) != 0);
}

/* ---- the builder ------------------------------------------------------------------------------ */

/* A fake openclipart-png tree and tanuki_emoji gem under work/fake. */
static void make_fake_packages(void) {
    char p[4096];
    write_rgba(path_in(p, sizeof p, "fake/png/animals/cat_01.png"), 40, 30, 5, 5, 30, 20, (rgba_px){200, 120, 30, 255});
    write_rgba(path_in(p, sizeof p, "fake/png/animals/dog_01.png"), 30, 30, 2, 2, 20, 26, (rgba_px){20, 60, 200, 255});
    write_rgba(path_in(p, sizeof p, "fake/png/animals/dog_02.png"), 30, 30, 2, 2, 20, 26, (rgba_px){20, 60, 200, 255});
    write_rgba(path_in(p, sizeof p, "fake/png/shapes/secret_mark.png"), 16, 16, 0, 0, 16, 8, (rgba_px){0, 0, 0, 255});
    FL_EXPECT(ds_write_file(path_in(p, sizeof p, "fake/png/broken/bad.png"), "\x89PNG\r\n\x1a\n", 8));
    for (int i = 0; i < 5; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "fake/png/shapes/stars/star_%d.png", i);
        write_rgba(path_in(p, sizeof p, rel), 20, 20, 0, 0, 20 - 3 * i, 20, (rgba_px){240, 200, 0, 255}); /* distinct shapes */
    }
    const char *test_txt = "1F600 ; fully-qualified # x E1.0 grinning face\n"
                           "1F1EF 1F1F5 ; fully-qualified # x E0.6 flag: Japan\n";
    FL_EXPECT(ds_write_file(path_in(p, sizeof p, "fake/gem/vendor/unicode/emoji-test.txt"), test_txt, strlen(test_txt)));
    write_rgba(path_in(p, sizeof p, "fake/gem/app/assets/images/tanuki_emoji/emoji_u1f600.png"), 24, 24, 2, 2, 20, 20,
               (rgba_px){250, 210, 60, 255});
    write_rgba(path_in(p, sizeof p, "fake/gem/app/assets/images/tanuki_emoji/JP.png"), 24, 16, 0, 0, 24, 16,
               (rgba_px){230, 0, 40, 255});
    write_rgba(path_in(p, sizeof p, "fake/gem/app/assets/images/tanuki_emoji/emoji_u99999.png"), 8, 8, 0, 0, 8, 8,
               (rgba_px){0, 0, 0, 255});
}

static json_t *read_json_lines(const char *path, size_t *count) {
    size_t n = 0;
    unsigned char *text = ds_read_file(path, &n);
    json_t *arr = json_array();
    if (!text) return arr;
    char *s = (char *)text;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) json_array_append_new(arr, json_loads(line, 0, NULL));
    free(text);
    *count = json_array_size(arr);
    return arr;
}

static void test_build(void) {
    make_fake_packages();
    char clip[4096], gem[4096], out[4096];
    snprintf(clip, sizeof clip, "%s/fake/png", work);
    snprintf(gem, sizeof gem, "%s/fake/gem", work);
    snprintf(out, sizeof out, "%s/built", work);
    const char *exclude[] = {"shapes/secret_mark.png"};
    fl_clipart_build_config c = fl_clipart_build_config_default();
    c.openclipart_dir = clip;
    c.emoji_dir = gem;
    c.out_dir = out;
    c.resolution = 16;
    c.margin = 1;
    c.max_per_dir = 3;
    c.heldout_every = 3;
    c.exclude = exclude;
    c.n_exclude = 1;
    fl_clipart_build_stats st;
    fl_error err = {0};
    FL_EXPECTF(fl_clipart_build(&c, &st, &err) == 0, "build: %s", err.message);
    /* cat, dog_01 (dog_02 is the same picture), 3 of the 5 stars, the two named emoji. */
    FL_EXPECTF(st.written == 7 && st.openclipart == 5 && st.emoji == 2, "written %zu (%zu + %zu)", st.written,
               st.openclipart, st.emoji);
    FL_EXPECTF(st.excluded == 1, "excluded %zu", st.excluded);
    FL_EXPECTF(st.skipped == 3, "skipped %zu (duplicate, broken file, unnamed emoji)", st.skipped);
    FL_EXPECT(st.train + st.heldout == st.written);
    char path[4200];
    snprintf(path, sizeof path, "%s/manifest.jsonl", out);
    size_t n = 0;
    json_t *lines = read_json_lines(path, &n);
    FL_EXPECTF(n == st.written, "manifest has %zu lines", n);
    bool saw_cat = false, saw_flag = false;
    for (size_t i = 0; i < n; i++) {
        json_t *l = json_array_get(lines, i);
        const char *caption = json_string_value(json_object_get(l, "caption"));
        const char *source = json_string_value(json_object_get(l, "source"));
        const char *file = json_string_value(json_object_get(l, "file"));
        const char *license = json_string_value(json_object_get(l, "license"));
        FL_EXPECT(caption && source && file && license);
        if (!caption || !source || !file) continue;
        FL_EXPECTF(!strstr(source, "secret_mark"), "held-out source %s is in the set", source);
        if (!strcmp(caption, "cat, animals")) saw_cat = !strcmp(source, "openclipart-png:animals/cat_01.png");
        if (!strcmp(caption, "flag japan emoji")) saw_flag = strstr(license, "Apache-2.0") != NULL;
        char img_path[4400];
        snprintf(img_path, sizeof img_path, "%s/%s", out, file);
        size_t bytes = 0;
        unsigned char *png = ds_read_file(img_path, &bytes);
        int w = 0, h = 0;
        FL_EXPECTF(png && fl_image_probe(png, bytes, &w, &h, &err) == 0 && w == 16 && h == 16, "%s is not 16x16", file);
        free(png);
    }
    FL_EXPECT(saw_cat);
    FL_EXPECT(saw_flag);
    json_decref(lines);
    snprintf(path, sizeof path, "%s/DATASET.json", out);
    json_t *summary = json_load_file(path, 0, NULL);
    FL_EXPECT(summary != NULL);
    json_t *held = json_object_get(summary, "held_out_for_demo_subjects");
    FL_EXPECT(json_array_size(held) == 1 && !strcmp(json_string_value(json_array_get(held, 0)), exclude[0]));
    FL_EXPECT(json_array_size(json_object_get(summary, "skipped_sources")) == 3);
    json_decref(summary);

    /* The same inputs give the same set. */
    char out2[4096];
    snprintf(out2, sizeof out2, "%s/built2", work);
    c.out_dir = out2;
    FL_EXPECT(fl_clipart_build(&c, &st, &err) == 0);
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s/manifest.jsonl", out);
    snprintf(b, sizeof b, "%s/manifest.jsonl", out2);
    size_t na = 0, nb = 0;
    unsigned char *ta = ds_read_file(a, &na), *tb = ds_read_file(b, &nb);
    FL_EXPECT(ta && tb && na == nb && memcmp(ta, tb, na) == 0);
    free(ta), free(tb);

    /* Nothing to build from, bad settings: one-line errors. */
    c.openclipart_dir = "";
    c.emoji_dir = "";
    FL_EXPECT(fl_clipart_build(&c, &st, &err) != 0 && strstr(err.message, "openclipart-png"));
    c.openclipart_dir = clip;
    c.margin = 8;
    FL_EXPECT(fl_clipart_build(&c, &st, &err) != 0);
}

/* ---- subjects ------------------------------------------------------------------------------------ */

static void test_subjects(void) {
    FL_EXPECT(fl_subject_count() == 3);
    const char *names[3] = {"mascot", "logo", "product"};
    for (int i = 0; i < 3; i++) {
        const fl_subject *s = fl_subject_find(names[i]);
        FL_EXPECTF(s && s->trigger && strstr(s->prompt, "[trigger]"), "subject %s", names[i]);
    }
    FL_EXPECT(fl_subject_find("nothing") == NULL);
    const char *held[16];
    size_t n = fl_subject_held_out(held, 16);
    FL_EXPECT(n >= 3);
    for (size_t i = 0; i < fl_subject_count(); i++) {
        bool found = false;
        for (size_t k = 0; k < n; k++) found = found || !strcmp(held[k], fl_subject_at(i)->source);
        FL_EXPECTF(found, "%s's source is not held out", fl_subject_at(i)->name);
    }

    char src[4096], out1[4096], out2[4096];
    path_in(src, sizeof src, "subject/source.png");
    write_rgba(src, 30, 40, 3, 3, 24, 34, (rgba_px){200, 30, 160, 255});
    snprintf(out1, sizeof out1, "%s/subject/a", work);
    snprintf(out2, sizeof out2, "%s/subject/b", work);
    fl_error err = {0};
    const fl_subject *s = fl_subject_find("mascot");
    FL_EXPECTF(fl_subject_build(s, src, out1, 6, 32, 7, &err) == 0, "build: %s", err.message);
    FL_EXPECT(fl_subject_build(s, src, out2, 6, 32, 7, &err) == 0);
    FL_EXPECTF(ds_dir_entries(out1) == 13, "%d files, want 6 images + 6 captions + SOURCE.txt", ds_dir_entries(out1));
    for (int i = 1; i <= 6; i++) {
        char a[4200], b[4200], name[16];
        snprintf(name, sizeof name, "%02d.png", i);
        size_t na = 0, nb = 0;
        unsigned char *pa = ds_read_file(ds_join(a, sizeof a, out1, name), &na);
        unsigned char *pb = ds_read_file(ds_join(b, sizeof b, out2, name), &nb);
        FL_EXPECTF(pa && pb && na == nb && !memcmp(pa, pb, na), "%s differs between two renders", name);
        free(pa), free(pb);
        snprintf(name, sizeof name, "%02d.txt", i);
        unsigned char *caption = ds_read_file(ds_join(a, sizeof a, out1, name), &na);
        FL_EXPECTF(caption && strstr((char *)caption, "[trigger] pig mascot"), "%s: %s", name, caption ? (char *)caption : "");
        free(caption);
    }
    FL_EXPECT(fl_subject_build(s, "/nonexistent.png", out1, 6, 32, 7, &err) != 0);
    FL_EXPECT(fl_subject_build(s, src, out1, 0, 32, 7, &err) != 0);
}

/* ---- figures --------------------------------------------------------------------------------------- */

static void test_figure(void) {
    fl_figure f;
    fl_error err = {0};
    FL_EXPECT(fl_figure_init(&f, 0, 10, (fl_rgb){0, 0, 0}, &err) != 0);
    FL_EXPECT(fl_figure_init(&f, 320, 200, (fl_rgb){255, 255, 255}, &err) == 0);
    FL_EXPECT(fl_figure_text_width("abc", 2) == 3 * FL_FONT_W * 2);
    FL_EXPECT(fl_figure_text_width("ab\nabcd", 1) == 4 * FL_FONT_W);
    fl_figure_text(&f, 2, 2, "A", 1, (fl_rgb){0, 0, 0});
    int dark = 0;
    for (int y = 2; y < 2 + FL_FONT_H; y++)
        for (int x = 2; x < 2 + FL_FONT_W; x++) dark += f.rgb[(y * 320 + x) * 3] == 0;
    FL_EXPECTF(dark > 5 && dark < FL_FONT_W * FL_FONT_H, "'A' drew %d pixels", dark);
    double xs[50], ys[50];
    for (int i = 0; i < 50; i++) xs[i] = i, ys[i] = 2.0 * exp(-i / 10.0) + 0.1;
    ys[7] = NAN;
    fl_plot_series s = {xs, ys, 50, {200, 0, 0}, "loss"};
    fl_figure_plot(&f, 0, 20, 320, 180, &s, 1, "step", "loss", 1);
    fl_figure_plot(&f, 0, 20, 320, 180, &s, 1, "step", "loss", 0);
    fl_figure_plot(&f, 0, 20, 10, 10, &s, 1, NULL, NULL, 0); /* too small: nothing drawn, no crash */
    float img[4 * 4 * 3];
    for (int i = 0; i < 48; i++) img[i] = (float)(i % 3) - 1.0f;
    fl_figure_blit(&f, img, 4, 4, 310, 190, 4); /* clipped at the edge */
    char path[4096];
    path_in(path, sizeof path, "figure/plot.png");
    FL_EXPECT(fl_figure_write_png(&f, path, &err) == 0);
    size_t n = 0;
    unsigned char *png = ds_read_file(path, &n);
    int w = 0, h = 0;
    FL_EXPECT(png && fl_image_probe(png, n, &w, &h, &err) == 0 && w == 320 && h == 200);
    free(png);
    fl_figure_release(&f);
}

int main(void) {
    work = ds_temp_dir("clipart");
    FL_RUN(test_openclipart_captions);
    FL_RUN(test_emoji_captions);
    FL_RUN(test_load_trim_draw);
    FL_RUN(test_build);
    FL_RUN(test_subjects);
    FL_RUN(test_figure);
    if (!getenv("FL_KEEP_TEST_DIR")) ds_remove_tree(work);
    free(work);
    return fl_test_finish();
}

#else

int main(void) {
    fl_test_skip_all("built without stb: no PNG decoder or encoder");
}

#endif
