/*
 * encoders.c — opening an evaluation encoder from its spec and embedding images with its
 * preprocessing (eval/encoders.h).
 */
#include "eval/encoders.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datasets/preprocess.h"
#include "fl_build_config.h"
#include "models/builtin_vit.h"

struct fl_eval_encoder {
    char kind[16];
    char file[4096];
    fl_bvit *bvit;
};

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int fl_builtin_encoder_path(char *out, size_t cap, fl_error *err) {
    const char *rel = FL_BVIT_DEFAULT_REL;
    char tried[3][4200];
    int n = 0;
    const char *env = getenv("FLASHLORA_DATA_DIR");
    if (env && *env) snprintf(tried[n++], sizeof tried[0], "%s/%s", env, rel);
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(tried[n++], sizeof tried[0], "%s/../share/flashlora/%s", exe, rel);
        }
    }
    snprintf(tried[n++], sizeof tried[0], "%s/%s", FL_SOURCE_ROOT, rel);
    for (int i = 0; i < n; i++)
        if (exists(tried[i])) {
            if (strlen(tried[i]) >= cap) return fl_fail(err, FL_ELIMIT, "data path too long");
            snprintf(out, cap, "%s", tried[i]);
            return 0;
        }
    return fl_fail(err, FL_ENOTFOUND, "the built-in encoder %s was not found (set FLASHLORA_DATA_DIR)", rel);
}

int fl_eval_encoder_open(fl_ctx *ctx, const char *spec, fl_eval_encoder **out, fl_error *err) {
    *out = NULL;
    fl_eval_encoder *e = fl_xcalloc(1, sizeof *e);
    int rc = 0;
    if (!strcmp(spec, "builtin") || !strncmp(spec, "builtin:", 8)) {
        snprintf(e->kind, sizeof e->kind, "builtin");
        if (spec[7] == ':') {
            if (strlen(spec + 8) >= sizeof e->file) rc = fl_fail(err, FL_EINVAL, "--encoder: path too long");
            else snprintf(e->file, sizeof e->file, "%s", spec + 8);
        } else {
            rc = fl_builtin_encoder_path(e->file, sizeof e->file, err);
        }
        if (rc == 0) rc = fl_bvit_load(ctx, e->file, &e->bvit, err);
    } else {
        const char *colon = strchr(spec, ':');
        int klen = colon ? (int)(colon - spec) : (int)strlen(spec);
        if (klen > 40) klen = 40;
        rc = fl_fail(err, FL_EINVAL, "encoder '%.*s' is not available in this build (builtin or builtin:PATH)", klen, spec);
    }
    if (rc != 0) {
        fl_eval_encoder_close(e);
        return -1;
    }
    *out = e;
    return 0;
}

void fl_eval_encoder_close(fl_eval_encoder *e) {
    if (!e) return;
    fl_bvit_free(e->bvit);
    free(e);
}

int fl_eval_encoder_dim(const fl_eval_encoder *e) { return fl_bvit_get_config(e->bvit)->dim; }
const char *fl_eval_encoder_kind(const fl_eval_encoder *e) { return e->kind; }
const char *fl_eval_encoder_file(const fl_eval_encoder *e) { return e->file; }
const char *fl_eval_encoder_sha256(const fl_eval_encoder *e) { return fl_bvit_file_sha256(e->bvit); }
int fl_eval_encoder_input_size(const fl_eval_encoder *e) { return fl_bvit_get_config(e->bvit)->image_size; }
bool fl_eval_encoder_has_text(const fl_eval_encoder *e) {
    (void)e;
    return false;
}

int fl_eval_encoder_embed(fl_eval_encoder *e, const fl_image *images, int n, float *out, fl_error *err) {
    const int S = fl_eval_encoder_input_size(e), D = fl_eval_encoder_dim(e);
    const size_t px = (size_t)S * S * 3;
    enum { CHUNK = 64 };
    float *buf = fl_xmalloc((size_t)CHUNK * px * sizeof(float));
    int rc = 0;
    for (int i0 = 0; i0 < n && rc == 0; i0 += CHUNK) {
        int B = n - i0 < CHUNK ? n - i0 : CHUNK;
        for (int b = 0; b < B && rc == 0; b++) {
            const fl_image *img = &images[i0 + b];
            if (img->width == S && img->height == S) {
                memcpy(buf + (size_t)b * px, img->pixels, px * sizeof(float));
            } else {
                fl_image r = {0};
                rc = fl_image_resize_crop(img, S, S, &r, err);
                if (rc == 0) memcpy(buf + (size_t)b * px, r.pixels, px * sizeof(float));
                fl_image_release(&r);
            }
        }
        if (rc == 0) rc = fl_bvit_embed(e->bvit, buf, B, out + (size_t)i0 * D, err);
    }
    free(buf);
    for (int i = 0; rc == 0 && i < n; i++) {
        float *row = out + (size_t)i * D;
        double s = 0;
        for (int k = 0; k < D; k++) s += (double)row[k] * row[k];
        double inv = s > 0 ? 1.0 / sqrt(s) : 0.0;
        for (int k = 0; k < D; k++) row[k] = (float)(row[k] * inv);
    }
    return rc;
}
