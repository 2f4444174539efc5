/*
 * encoders.c — the evaluation's view of an image encoder (eval/encoders.h): any encoder of
 * models/image_encoder.h, with what a report records about it.
 */
#include "eval/encoders.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/image_encoder.h"

struct fl_eval_encoder {
    fl_image_encoder *enc;
    char file[4200]; /* the weights file or folder the spec names ("" when none) */
};

int fl_eval_encoder_open(fl_ctx *ctx, const char *spec, fl_eval_encoder **out, fl_error *err) {
    *out = NULL;
    fl_eval_encoder *e = fl_xcalloc(1, sizeof *e);
    const char *colon = strchr(spec, ':');
    int rc = 0;
    char resolved[sizeof e->file + 16];
    if (colon && colon[1]) {
        if (strlen(colon + 1) >= sizeof e->file) rc = fl_fail(err, FL_EINVAL, "--encoder: path too long");
        else snprintf(e->file, sizeof e->file, "%s", colon + 1);
    } else if (!strcmp(spec, "builtin")) {
        /* found once, then opened by that path */
        rc = fl_builtin_encoder_path(e->file, sizeof e->file, err);
        snprintf(resolved, sizeof resolved, "builtin:%s", e->file);
        spec = resolved;
    }
    if (rc == 0) rc = fl_image_encoder_open(ctx, spec, &e->enc, err);
    if (rc != 0) {
        fl_eval_encoder_close(e);
        return -1;
    }
    *out = e;
    return 0;
}

void fl_eval_encoder_close(fl_eval_encoder *e) {
    if (!e) return;
    fl_image_encoder_close(e->enc);
    free(e);
}

int fl_eval_encoder_dim(const fl_eval_encoder *e) { return fl_image_encoder_dim(e->enc); }
const char *fl_eval_encoder_kind(const fl_eval_encoder *e) { return fl_image_encoder_get_info(e->enc)->kind; }
const char *fl_eval_encoder_file(const fl_eval_encoder *e) { return e->file; }
const char *fl_eval_encoder_sha256(const fl_eval_encoder *e) { return fl_image_encoder_get_info(e->enc)->fingerprint; }
int fl_eval_encoder_input_size(const fl_eval_encoder *e) { return fl_image_encoder_get_info(e->enc)->input_size; }
bool fl_eval_encoder_has_text(const fl_eval_encoder *e) { return fl_image_encoder_has_text(e->enc); }

float fl_eval_encoder_match_distance(const fl_eval_encoder *e) {
    return fl_image_encoder_get_info(e->enc)->match_distance;
}

int fl_eval_encoder_embed(fl_eval_encoder *e, const fl_image *images, int n, float *out, fl_embed_info *info,
                          fl_error *err) {
    if (n < 0) return fl_fail(err, FL_EINVAL, "negative image count");
    return fl_image_encoder_embed(e->enc, images, (size_t)n, out, info, err);
}

int fl_eval_encoder_text(fl_eval_encoder *e, const char *prompt, float *out, fl_error *err) {
    return fl_image_encoder_text(e->enc, prompt, out, err);
}
