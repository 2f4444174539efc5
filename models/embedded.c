/*
 * embedded.c — finding the project's shipped data (the embedded model, the demo subjects) from
 * a built or installed binary (see embedded.h).
 */
#include "models/embedded.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "fl_build_config.h"
#include "models/flux.h"

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int fl_data_path(const char *rel, char *out, size_t cap, fl_error *err) {
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
            if (strlen(tried[i]) >= cap) return fl_fail(err, FL_ELIMIT, "data path too long: %s", tried[i]);
            snprintf(out, cap, "%s", tried[i]);
            return 0;
        }
    return fl_fail(err, FL_ENOTFOUND, "%s not found (looked in %s%s%s%s%s; set FLASHLORA_DATA_DIR)", rel, tried[0],
                   n > 1 ? ", " : "", n > 1 ? tried[1] : "", n > 2 ? ", " : "", n > 2 ? tried[2] : "");
}

int fl_embedded_model_path(char *out, size_t cap, fl_error *err) {
    return fl_data_path(FL_EMBEDDED_MODEL_REL, out, cap, err);
}

int fl_model_resolution(const char *path, int fallback) {
    fl_safetensors *st = NULL;
    fl_error ignore = {0};
    if (fl_safetensors_open(path, &st, &ignore) != 0) return fallback;
    const char *res = fl_safetensors_metadata_get(st, "resolution");
    char *end = NULL;
    long v = res ? strtol(res, &end, 10) : 0;
    bool valid = res && end != res && *end == '\0' && v >= 1 && v <= 4096; /* before the close frees res */
    fl_safetensors_close(st);
    return valid ? (int)v : fallback;
}

int fl_default_model(const char *command, char *out, size_t cap, fl_error *err) {
    if (fl_embedded_model_path(out, cap, err) != 0) return -1;
    /* A short summary from the file's header (no weights are read). */
    char summary[160] = "";
    fl_safetensors *st = NULL;
    fl_error ignore = {0};
    if (fl_safetensors_open(out, &st, &ignore) == 0) {
        fl_flux_params p;
        const char *res = fl_safetensors_metadata_get(st, "resolution");
        const char *steps = fl_safetensors_metadata_get(st, "pretrain_steps");
        int64_t params = 0;
        for (size_t i = 0; i < fl_safetensors_count(st); i++) params += fl_safetensors_at(st, i)->numel;
        if (fl_flux_params_of_checkpoint(st, &p, &ignore) == 0)
            snprintf(summary, sizeof summary, " (%.1fM parameters, %sx%s pixels, %s pretraining steps)", params / 1e6,
                     res ? res : "?", res ? res : "?", steps ? steps : "?");
        fl_safetensors_close(st);
    }
    fprintf(stderr, "%s: no --model given: using the embedded model %s%s\n", command, out, summary);
    return 0;
}
