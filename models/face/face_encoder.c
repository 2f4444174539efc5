/*
 * face_encoder.c — the dlib face pipeline behind the image-encoder interface (see face.h): per
 * image, the detector's best face (highest score above dlib's threshold 0), its 5 landmarks, the
 * 150x150 chip and the 128-D descriptor. An image without a face gets face_found = false (and a
 * zero embedding from the wrapper). The fingerprint is the sha256 of the three files' digests.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/sha256.h"
#include "models/face/face.h"
#include "models/face/face_parts.h"

#define MAX_FACES 64

static bool has_models(const char *dir) {
    static const char *const files[] = {FL_FACE_RESNET_FILE, FL_FACE_DETECTOR_FILE, FL_FACE_LANDMARKS_FILE};
    for (int i = 0; i < 3; i++) {
        char path[4200];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return false;
    }
    return true;
}

int fl_face_models_default_dir(char *dir, size_t size) {
    const char *env = getenv("FLASHLORA_FACE_MODELS"), *cache = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (env && *env) snprintf(dir, size, "%s", env);
    else if (cache && *cache) snprintf(dir, size, "%s/flashlora/face-models", cache);
    else if (home && *home) snprintf(dir, size, "%s/.cache/flashlora/face-models", home);
    else return -1;
    return has_models(dir) ? 0 : -1;
}

typedef struct face_encoder {
    fl_face_detector *det;
    fl_shape_predictor *sp;
    fl_face_resnet *net;
    uint8_t *rgb;
    size_t rgb_cap;
    uint8_t *chip;
} face_encoder;

static void face_free(void *state) {
    face_encoder *e = state;
    if (!e) return;
    fl_face_detector_free(e->det);
    fl_shape_predictor_free(e->sp);
    fl_face_resnet_free(e->net);
    free(e->rgb);
    free(e->chip);
    free(e);
}

static int face_embed(void *state, const fl_image *images, size_t n, float *out, fl_embed_info *info, fl_error *err) {
    face_encoder *e = state;
    const int D = fl_face_resnet_dim(e->net), S = fl_face_resnet_chip_size(e->net);
    for (size_t i = 0; i < n; i++) {
        const fl_image *im = &images[i];
        size_t px = (size_t)im->width * im->height * 3;
        if (px > e->rgb_cap) {
            free(e->rgb);
            e->rgb = malloc(px);
            e->rgb_cap = e->rgb ? px : 0;
            if (!e->rgb) return fl_fail(err, FL_ENOMEM, "no memory for a %dx%d image", im->width, im->height);
        }
        for (size_t k = 0; k < px; k++) {
            float v = im->pixels[k] * 255.0f + 0.5f;
            e->rgb[k] = (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
        }
        fl_face_detection dets[MAX_FACES];
        int count = 0;
        if (fl_face_detect(e->det, e->rgb, im->width, im->height, 0.0, dets, MAX_FACES, &count, err) != 0)
            return fl_fail_prefix(err, "image %zu", i);
        float *row = out + i * (size_t)D;
        fl_embed_info *inf = info ? &info[i] : NULL;
        if (count == 0) {
            memset(row, 0, (size_t)D * sizeof *row);
            if (inf) {
                inf->face_found = false;
                inf->faces = 0;
                inf->face_score = 0.0f;
                memset(inf->face_box, 0, sizeof inf->face_box);
            }
            continue;
        }
        long parts[2 * 5];
        fl_shape_predict(e->sp, e->rgb, im->width, im->height, dets[0].rect, parts);
        fl_face_chip(e->rgb, im->width, im->height, parts, S, 0.25, e->chip);
        if (fl_face_resnet_describe(e->net, e->chip, row, err) != 0) return fl_fail_prefix(err, "image %zu", i);
        if (inf) {
            inf->face_found = true;
            inf->faces = count;
            inf->face_score = (float)dets[0].score;
            inf->face_box[0] = (float)dets[0].rect.left, inf->face_box[1] = (float)dets[0].rect.top;
            inf->face_box[2] = (float)dets[0].rect.right, inf->face_box[3] = (float)dets[0].rect.bottom;
        }
    }
    return 0;
}

static const fl_image_encoder_impl FACE_IMPL = {face_embed, NULL, face_free};

int fl_face_encoder_open(fl_ctx *ctx, const char *dir, fl_image_encoder **out, fl_error *err) {
    *out = NULL;
    char path[3][4200];
    static const char *const files[] = {FL_FACE_DETECTOR_FILE, FL_FACE_LANDMARKS_FILE, FL_FACE_RESNET_FILE};
    for (int i = 0; i < 3; i++) {
        snprintf(path[i], sizeof path[i], "%s/%s", dir, files[i]);
        struct stat st;
        if (stat(path[i], &st) != 0)
            return fl_fail(err, FL_ENOTFOUND, "%s: no %s (run scripts/install-face-models.sh)", dir, files[i]);
    }
    face_encoder *e = fl_xcalloc(1, sizeof *e);
    if (fl_face_detector_load(ctx, path[0], &e->det, err) != 0 || fl_shape_predictor_load(path[1], &e->sp, err) != 0 ||
        fl_face_resnet_load(ctx, path[2], &e->net, err) != 0) {
        face_free(e);
        return -1;
    }
    if (e->sp->num_parts != 5) {
        int parts = e->sp->num_parts;
        face_free(e);
        return fl_fail(err, FL_EUNSUPPORTED, "%s: a %d-point shape predictor (the face encoder uses the 5-point one)",
                       path[1], parts);
    }
    const int S = fl_face_resnet_chip_size(e->net);
    e->chip = fl_xmalloc((size_t)S * S * 3);
    fl_image_encoder_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.kind, sizeof info.kind, "face");
    snprintf(info.description, sizeof info.description,
             "dlib face pipeline: MMOD CNN detector, 5-point landmarks, %dx%d chip, %d-D ResNet descriptor", S, S,
             fl_face_resnet_dim(e->net));
    fl_sha256 h;
    fl_sha256_init(&h);
    for (int i = 0; i < 3; i++) {
        char hex[65];
        if (fl_sha256_file(path[i], hex, err) != 0) {
            face_free(e);
            return fl_fail_prefix(err, "%s", path[i]);
        }
        fl_sha256_update(&h, hex, 64);
    }
    uint8_t d[32];
    fl_sha256_final(&h, d);
    fl_sha256_digest_hex(d, info.fingerprint);
    info.dim = fl_face_resnet_dim(e->net);
    info.input_size = S;
    info.match_distance = (float)fl_face_resnet_threshold(e->net);
    *out = fl_image_encoder_wrap(&info, &FACE_IMPL, e);
    return 0;
}
