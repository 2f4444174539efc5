/*
 * fuzz_ae_names.c — libFuzzer target for the autoencoder's name handling (models/ae_names.c):
 * the tensor list of a checkpoint is outside input, so detection, the binding check and the
 * diffusers -> BFL map must turn any names and shapes into a result or a one-line error.
 *
 * Input: one tensor per line, "name d0 d1 ..." (up to 8 extents, decimal, possibly huge or
 * negative). Every name also goes through fl_ae_diffusers_to_bfl at several level counts; when
 * detection succeeds, the binding check runs for each half. The corpus (tests/fuzz/corpus/
 * ae_names) holds the tiny fixture's names in both layouts, a decoder alone under a prefix, and
 * hostile shapes. Linked into the replay driver, it is a regression test on every build.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "models/ae.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TENSORS 1024

static void check_error(int rc, const fl_error *err) {
    if (rc == 0) return;
    FL_CHECKF(err->code != FL_OK && err->message[0] != '\0', "rejection without a reason");
    FL_CHECKF(strchr(err->message, '\n') == NULL, "multi-line error message: %s", err->message);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    fl_tensor_header *entries = calloc(MAX_TENSORS, sizeof *entries);
    size_t n = 0;
    for (char *line = text, *next; line && n < MAX_TENSORS; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *space = strchr(line, ' ');
        if (space) *space = '\0';
        if (!*line) continue;
        fl_tensor_header *e = &entries[n++];
        e->name = line;
        for (char *s = space ? space + 1 : NULL; s && *s && e->ndim < FL_SAFETENSORS_MAX_DIMS;) {
            char *end = NULL;
            long long v = strtoll(s, &end, 10);
            if (end == s) break;
            e->shape[e->ndim++] = v;
            s = end;
        }
        for (int levels = 1; levels <= FL_AE_MAX_LEVELS; levels *= 2) {
            char out[FL_AE_NAME_MAX];
            bool linear = true;
            if (fl_ae_diffusers_to_bfl(line, levels, out, sizeof out, &linear) == 0)
                FL_CHECK(strlen(out) < sizeof out && (!strncmp(out, "encoder.", 8) || !strncmp(out, "decoder.", 8)));
            else
                FL_CHECK(!linear);
        }
    }
    fl_ae_source src;
    fl_error err;
    fl_error_clear(&err);
    int rc = fl_ae_detect(entries, n, &src, &err);
    check_error(rc, &err);
    if (rc == 0) {
        FL_CHECK(fl_ae_params_validate(&src.params, NULL) == 0 && src.parts != 0);
        for (unsigned parts = FL_AE_ENCODER; parts <= FL_AE_BOTH; parts++) {
            fl_error_clear(&err);
            check_error(fl_ae_check_entries(entries, n, &src, parts, &err), &err);
        }
    }
    free(entries);
    free(text);
    return 0;
}
