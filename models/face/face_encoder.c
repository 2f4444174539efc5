/*
 * face_encoder.c — the dlib face pipeline behind the image-encoder interface (see face.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "models/face/face.h"

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

int fl_face_encoder_open(fl_ctx *ctx, const char *dir, fl_image_encoder **out, fl_error *err) {
    (void)ctx;
    *out = NULL;
    return fl_fail(err, FL_EUNSUPPORTED, "%s: the face encoder is not implemented yet", dir);
}
