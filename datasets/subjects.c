/*
 * subjects.c — the table of bundled demo subjects and the renderer of their image sets (see
 * subjects.h): each image draws the subject's clip art at a random scale and place over one of a
 * few kinds of background (white, a pastel colour, a vertical gradient, a horizon of two colours),
 * and a few images put a plain shape over part of it, so an adapter learns the subject rather than
 * one picture of it.
 */
#include "datasets/subjects.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/rng.h"
#include "datasets/clipart.h"
#include "models/sampler.h"

static const fl_subject subjects[] = {
    {"mascot", "oinkly", "pig mascot", "animals/mammals/porcinet_01.png", NULL, "a [trigger] pig mascot"},
    {"logo", "rinzo", "logo mark", "signs_and_symbols/simbolo_giapponese_archi_01.png", NULL,
     "a [trigger] logo mark"},
    {"product", "zestra", "drink bottle", "food/beverages/bottled_drink.png", "food/beverages/bottled_drink_bw.png",
     "a [trigger] drink bottle"},
};

size_t fl_subject_count(void) {
    return sizeof subjects / sizeof subjects[0];
}

const fl_subject *fl_subject_at(size_t i) {
    return i < fl_subject_count() ? &subjects[i] : NULL;
}

const fl_subject *fl_subject_find(const char *name) {
    for (size_t i = 0; i < fl_subject_count(); i++)
        if (!strcmp(subjects[i].name, name)) return &subjects[i];
    return NULL;
}

static const fl_subject distractors[] = {
    {"duck", NULL, "yellow duck", "animals/birds/duck_yellow_kurt_cagle_.png", NULL, NULL},
    {"cat", NULL, "cartoon cat", "animals/mammals/cartoon_cat_gerald_g._01.png", NULL, NULL},
    {"house", NULL, "house", "buildings/homes/house_gabrielle_nowicki_.png", NULL, NULL},
    {"bus", NULL, "bus", "transportation/bus_01.png", NULL, NULL},
    {"mushroom", NULL, "mushroom", "plants/mushroom_benji_park_.png", NULL, NULL},
    {"biohazard", NULL, "biohazard sign", "signs_and_symbols/biohazard_symbol_01.png", NULL, NULL},
    {"cactus", NULL, "cactus", "plants/cactus_linda_kim_01.png", NULL, NULL},
};

size_t fl_distractor_count(void) {
    return sizeof distractors / sizeof distractors[0];
}

const fl_subject *fl_distractor_at(size_t i) {
    return i < fl_distractor_count() ? &distractors[i] : NULL;
}

size_t fl_eval_held_out(const char **paths, size_t cap) {
    size_t n = fl_subject_held_out(paths, cap);
    for (size_t i = 0; i < fl_distractor_count(); i++, n++)
        if (paths && n < cap) paths[n] = distractors[i].source;
    return n;
}

size_t fl_subject_held_out(const char **paths, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < fl_subject_count(); i++) {
        if (paths && n < cap) paths[n] = subjects[i].source;
        n++;
        if (subjects[i].also_held_out) {
            if (paths && n < cap) paths[n] = subjects[i].also_held_out;
            n++;
        }
    }
    return n;
}

/* ---- rendering -------------------------------------------------------------------------------- */

typedef struct named_color {
    const char *name;
    float rgb[3];
} named_color;

static const named_color palette[] = {
    {"light blue", {0.72f, 0.85f, 0.96f}}, {"pale yellow", {0.98f, 0.95f, 0.70f}}, {"light green", {0.75f, 0.92f, 0.72f}},
    {"pink", {0.98f, 0.78f, 0.84f}},       {"light gray", {0.85f, 0.85f, 0.85f}},  {"lavender", {0.84f, 0.78f, 0.95f}},
    {"peach", {0.99f, 0.84f, 0.70f}},      {"dark blue", {0.15f, 0.20f, 0.45f}},   {"teal", {0.30f, 0.62f, 0.62f}},
};
#define N_PALETTE (sizeof palette / sizeof palette[0])

static const named_color occluder_colors[] = {
    {"gray", {0.45f, 0.45f, 0.48f}}, {"brown", {0.55f, 0.36f, 0.20f}}, {"green", {0.20f, 0.55f, 0.25f}},
    {"blue", {0.20f, 0.35f, 0.75f}},
};

static void fill(fl_image *img, const float rgb[3]) {
    for (size_t i = 0; i < (size_t)img->width * img->height; i++) memcpy(img->pixels + 3 * i, rgb, 3 * sizeof(float));
}

/* Background kinds: 0 white, 1 solid, 2 vertical gradient, 3 horizon (two colours, soft edge). */
static void background(fl_image *img, int kind, const named_color *a, const named_color *b, float horizon,
                       char *words, size_t cap) {
    static const float white[3] = {1.0f, 1.0f, 1.0f};
    int w = img->width, h = img->height;
    if (kind == 0) {
        fill(img, white);
        snprintf(words, cap, "on a white background");
        return;
    }
    if (kind == 1) {
        fill(img, a->rgb);
        snprintf(words, cap, "on a %s background", a->name);
        return;
    }
    for (int y = 0; y < h; y++) {
        float t = kind == 2 ? (float)y / (float)(h - 1) : 1.0f / (1.0f + expf(-(y - horizon * h) / (0.02f * h)));
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                img->pixels[((size_t)y * w + x) * 3 + c] = (1.0f - t) * a->rgb[c] + t * b->rgb[c];
    }
    if (kind == 2) snprintf(words, cap, "on a %s to %s gradient background", a->name, b->name);
    else snprintf(words, cap, "in front of a %s and %s backdrop", a->name, b->name);
}

/* A plain rectangle or disc of colour col over the box (x0, y0, w, h) of img. */
static void occlude(fl_image *img, bool disc, float x0, float y0, float w, float h, const float col[3]) {
    for (int y = 0; y < img->height; y++)
        for (int x = 0; x < img->width; x++) {
            float px = x + 0.5f, py = y + 0.5f;
            bool inside;
            if (disc) {
                float dx = (px - (x0 + w / 2)) / (w / 2), dy = (py - (y0 + h / 2)) / (h / 2);
                inside = dx * dx + dy * dy <= 1.0f;
            } else {
                inside = px >= x0 && px < x0 + w && py >= y0 && py < y0 + h;
            }
            if (inside) memcpy(img->pixels + ((size_t)y * img->width + x) * 3, col, 3 * sizeof(float));
        }
}

static int write_text(const char *path, const char *text, fl_error *err) {
    return fl_write_file_atomic(path, text, strlen(text), err);
}

int fl_subject_build(const fl_subject *s, const char *source_path, const char *out_dir, int count, int size,
                     unsigned long long seed, fl_error *err) {
    if (count < 1 || count > 64) return fl_fail(err, FL_EINVAL, "image count %d is outside [1, 64]", count);
    if (size < 16 || size > 1024) return fl_fail(err, FL_EINVAL, "image size %d is outside [16, 1024]", size);
    fl_clipart art;
    if (fl_clipart_load(source_path, &art, err) != 0) return fl_fail_prefix(err, "%s", source_path);
    int rc = fl_mkdirs(out_dir, err);
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    fl_image canvas;
    memset(&canvas, 0, sizeof canvas);
    if (rc == 0) rc = fl_image_init(&canvas, size, size, err);
    float *signed_px = fl_xmalloc((size_t)size * size * 3 * sizeof(float));
    for (int i = 0; i < count && rc == 0; i++) {
        /* Backgrounds cycle so every kind appears; colours, scale and place are drawn. */
        int kind = i % 4 == 0 ? 0 : i % 4 == 1 ? 1 : i % 4 == 2 ? 2 : 3;
        const named_color *a = &palette[fl_rng_next(&rng) % N_PALETTE];
        const named_color *b = &palette[fl_rng_next(&rng) % N_PALETTE];
        if (a == b) b = &palette[(size_t)(b - palette + 1) % N_PALETTE];
        float horizon = 0.55f + 0.25f * fl_rng_uniform(&rng);
        char bg_words[160];
        background(&canvas, kind, a, b, horizon, bg_words, sizeof bg_words);
        float scale = 0.40f + 0.50f * fl_rng_uniform(&rng); /* longer side, fraction of the image */
        float obj = scale * size;
        float cw = art.color.width, ch = art.color.height;
        float ow = cw >= ch ? obj : obj * cw / ch, oh = cw >= ch ? obj * ch / cw : obj;
        float cx = ow / 2 + (size - ow) * fl_rng_uniform(&rng), cy = oh / 2 + (size - oh) * fl_rng_uniform(&rng);
        rc = fl_clipart_draw(&art, &canvas, cx, cy, obj, err);
        bool occluded = i % 5 == 4;
        if (rc == 0 && occluded) {
            /* Cover about a fifth of the subject from one side. */
            const named_color *col = &occluder_colors[fl_rng_next(&rng) % 4];
            bool disc = fl_rng_uniform(&rng) < 0.5f;
            int side = (int)(fl_rng_next(&rng) % 4);
            float w = ow * 0.45f, h = oh * 0.45f, x0 = cx - w / 2, y0 = cy - h / 2;
            if (side == 0) x0 = cx - ow / 2 - w * 0.3f;
            if (side == 1) x0 = cx + ow / 2 - w * 0.7f;
            if (side == 2) y0 = cy - oh / 2 - h * 0.3f;
            if (side == 3) y0 = cy + oh / 2 - h * 0.7f;
            occlude(&canvas, disc, x0, y0, w, h, col->rgb);
        }
        const char *where = scale < 0.55f ? "small" : scale > 0.75f ? "large" : "";
        char caption[512], path[4200];
        snprintf(caption, sizeof caption, "a photo of %s%s %s%s%s%s", s->trigger ? "[trigger] " : "a ", s->class_words,
                 bg_words, *where ? ", " : "", where, occluded ? ", partly hidden" : "");
        for (size_t k = 0; k < (size_t)size * size * 3; k++) signed_px[k] = 2.0f * canvas.pixels[k] - 1.0f;
        snprintf(path, sizeof path, "%s/%02d.png", out_dir, i + 1);
        if (rc == 0) rc = fl_png_write(path, signed_px, size, size, err);
        snprintf(path, sizeof path, "%s/%02d.txt", out_dir, i + 1);
        if (rc == 0) {
            size_t len = strlen(caption);
            caption[len] = '\n';
            caption[len + 1] = '\0';
            rc = write_text(path, caption, err);
        }
    }
    if (rc == 0) {
        char text[1024], path[4200];
        snprintf(text, sizeof text,
                 "subject: %s (trigger word \"%s\", %s)\nsource: openclipart-png %s\nlicense: %s\n"
                 "rendered: %d images of %dx%d, seed %llu (flashlora data subjects)\n",
                 s->name, s->trigger ? s->trigger : "none", s->class_words, s->source, FL_OPENCLIPART_LICENSE, count, size,
                 size, seed);
        snprintf(path, sizeof path, "%s/SOURCE.txt", out_dir);
        rc = write_text(path, text, err);
    }
    free(signed_px);
    fl_image_release(&canvas);
    fl_clipart_release(&art);
    return rc;
}
