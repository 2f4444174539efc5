/*
 * face_encoder.c — the dlib face pipeline behind the image-encoder interface (see face.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/face/face.h"

int fl_face_models_default_dir(char *dir, size_t size) {
    (void)dir;
    (void)size;
    return -1;
}

int fl_face_encoder_open(fl_ctx *ctx, const char *dir, fl_image_encoder **out, fl_error *err) {
    (void)ctx;
    *out = NULL;
    return fl_fail(err, FL_EUNSUPPORTED, "%s: the face encoder is not implemented yet", dir);
}
