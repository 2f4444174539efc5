/*
 * builtin_encoder_stub.c — stands in for the built-in encoder (the project's small ViT, trained
 * self-supervised on the packaged images) until the evaluation layer provides
 * fl_builtin_encoder_open; this file goes when that lands.
 */
#include "models/image_encoder.h"

int fl_builtin_encoder_open(fl_ctx *ctx, const char *arg, fl_image_encoder **out, fl_error *err) {
    (void)ctx;
    (void)arg;
    *out = NULL;
    return fl_fail(err, FL_EUNSUPPORTED, "the built-in encoder is not part of this build (use dinov2:PATH, clip:PATH or "
                                         "face:DIR)");
}
