/*
 * builtin_vit_encoder.c — the project's built-in image encoder (models/builtin_vit.h) behind the
 * common image-encoder interface (models/image_encoder.h, spec "builtin" or "builtin:PATH"), and
 * where its shipped weights are found.
 *
 * Preprocessing: the centred crop of the image's aspect to a square, resampled to the encoder's
 * input (datasets/preprocess.h: area averaging down, bilinear up); an image already at the input
 * size is used as it is.
 */
#include "models/image_encoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/preprocess.h"
#include "models/builtin_vit.h"
#include "models/embedded.h"

enum { EMBED_CHUNK = 64 }; /* images per forward: bounds the input buffer and the activations */

int fl_builtin_encoder_path(char *out, size_t cap, fl_error *err) {
    return fl_data_path(FL_BVIT_DEFAULT_REL, out, cap, err);
}

typedef struct builtin_state {
    fl_bvit *vit;
    float *pixels; /* [EMBED_CHUNK, S, S, 3] */
} builtin_state;

static int builtin_embed(void *state, const fl_image *images, size_t n, float *out, fl_embed_info *info,
                         fl_error *err) {
    (void)info; /* the wrapper fills norm; there are no face fields */
    builtin_state *b = state;
    const fl_bvit_config *c = fl_bvit_get_config(b->vit);
    const int S = c->image_size, D = c->dim;
    const size_t px = (size_t)S * S * 3;
    for (size_t i0 = 0; i0 < n; i0 += EMBED_CHUNK) {
        int count = n - i0 < EMBED_CHUNK ? (int)(n - i0) : EMBED_CHUNK;
        for (int k = 0; k < count; k++) {
            const fl_image *img = &images[i0 + k];
            if (img->width == S && img->height == S) {
                memcpy(b->pixels + (size_t)k * px, img->pixels, px * sizeof(float));
                continue;
            }
            fl_image r = {0};
            if (fl_image_resize_crop(img, S, S, &r, err) != 0) return fl_fail_prefix(err, "image %zu", i0 + k);
            memcpy(b->pixels + (size_t)k * px, r.pixels, px * sizeof(float));
            fl_image_release(&r);
        }
        if (fl_bvit_embed(b->vit, b->pixels, count, out + i0 * D, err) != 0) return -1;
    }
    return 0;
}

static void builtin_free(void *state) {
    builtin_state *b = state;
    if (!b) return;
    fl_bvit_free(b->vit);
    free(b->pixels);
    free(b);
}

static const fl_image_encoder_impl BUILTIN_IMPL = {builtin_embed, NULL, builtin_free};

int fl_builtin_encoder_open(fl_ctx *ctx, const char *arg, fl_image_encoder **out, fl_error *err) {
    *out = NULL;
    char path[4200];
    if (arg) {
        if (strlen(arg) >= sizeof path) return fl_fail(err, FL_EINVAL, "builtin: path too long");
        snprintf(path, sizeof path, "%s", arg);
    } else if (fl_builtin_encoder_path(path, sizeof path, err) != 0) {
        return -1;
    }
    builtin_state *b = fl_xcalloc(1, sizeof *b);
    if (fl_bvit_load(ctx, path, &b->vit, err) != 0) {
        builtin_free(b);
        return -1;
    }
    const fl_bvit_config *c = fl_bvit_get_config(b->vit);
    b->pixels = fl_xmalloc((size_t)EMBED_CHUNK * c->image_size * c->image_size * 3 * sizeof(float));
    fl_image_encoder_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.kind, sizeof info.kind, "builtin");
    snprintf(info.description, sizeof info.description, "built-in ViT dim %d, %d blocks, %d heads, patch %d, %dx%d",
             c->dim, c->depth, c->heads, c->patch, c->image_size, c->image_size);
    snprintf(info.fingerprint, sizeof info.fingerprint, "%s", fl_bvit_file_sha256(b->vit));
    info.dim = c->dim;
    info.input_size = c->image_size;
    *out = fl_image_encoder_wrap(&info, &BUILTIN_IMPL, b);
    return 0;
}
