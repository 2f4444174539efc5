/*
 * fuzz_weights.c — libFuzzer target for what models/weights.c makes of outside names and indexes:
 * a shard index ("*.safetensors.index.json") and a transformer's tensor list (the diffusers ->
 * original Flux mapping, family detection and the binding check over the mapped names) must turn
 * any input into a result or a one-line error.
 *
 * Input starting with '{' is an index: fl_weights_parse_index, then every shard name it accepted
 * must be a plain .safetensors file name. Anything else is one tensor per line, "name d0 d1 ..."
 * (up to 8 extents, decimal, possibly huge or negative): fl_flux_is_diffusers, fl_flux_map_diffusers
 * (every mapped tensor's parts must be distinct inputs whose rows add up), then on the mapped (or
 * original) names fl_detect_family and, when it succeeds, fl_flux_check_entries. The corpus
 * (tests/fuzz/corpus/weights) holds the tiny pipeline's transformer in the diffusers layout, a
 * Flux fixture's original names, indexes good and bad, and hostile shapes. Linked into the replay
 * driver, it is a regression test on every build.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "models/weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TENSORS 2048

static void check_error(int rc, const fl_error *err) {
    if (rc == 0) return;
    FL_CHECKF(err->code != FL_OK && err->message[0] != '\0', "rejection without a reason");
    FL_CHECKF(strchr(err->message, '\n') == NULL, "multi-line error message: %s", err->message);
}

static void fuzz_index(const char *text, size_t size) {
    fl_weights_index index;
    fl_error err;
    fl_error_clear(&err);
    int rc = fl_weights_parse_index(text, size, "index.json", &index, &err);
    check_error(rc, &err);
    if (rc != 0) return;
    FL_CHECK(index.n > 0);
    for (size_t i = 0; i < index.n; i++) {
        const char *s = index.shards[i];
        size_t n = strlen(s);
        FL_CHECK(n > 12 && s[0] != '.' && !strchr(s, '/') && !strcmp(s + n - 12, ".safetensors"));
        FL_CHECK(index.tensors[i][0] != '\0');
    }
    fl_weights_index_free(&index);
}

static void fuzz_names(char *text) {
    fl_tensor_header *entries = calloc(MAX_TENSORS, sizeof *entries);
    if (!entries) return;
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
    }
    fl_error err;
    fl_error_clear(&err);
    const fl_tensor_header *view = entries;
    size_t n_view = n;
    fl_tensor_header *mapped_headers = NULL;
    fl_flux_mapped *mapped = NULL;
    size_t n_mapped = 0;
    if (fl_flux_is_diffusers(entries, n)) {
        int rc = fl_flux_map_diffusers(entries, n, &mapped, &n_mapped, &err);
        check_error(rc, &err);
        if (rc == 0) {
            mapped_headers = calloc(n_mapped ? n_mapped : 1, sizeof *mapped_headers);
            size_t used = 0;
            for (size_t k = 0; k < n_mapped; k++) {
                int64_t rows = 0;
                for (int j = 0; j < mapped[k].n_parts; j++) {
                    FL_CHECK(mapped[k].parts[j] < n);
                    for (int q = 0; q < j; q++) FL_CHECK(mapped[k].parts[q] != mapped[k].parts[j]);
                    rows += entries[mapped[k].parts[j]].shape[0];
                }
                used += (size_t)mapped[k].n_parts;
                FL_CHECK(rows == mapped[k].shape[0]);
                mapped_headers[k].name = mapped[k].name;
                mapped_headers[k].ndim = mapped[k].ndim;
                mapped_headers[k].shape[0] = mapped[k].shape[0];
                mapped_headers[k].shape[1] = mapped[k].shape[1];
            }
            FL_CHECK(used == n); /* every input tensor is used exactly once */
            view = mapped_headers;
            n_view = n_mapped;
        }
    }
    fl_family_info info;
    fl_error_clear(&err);
    int rc = fl_detect_family(view, n_view, &info, &err);
    check_error(rc, &err);
    if (rc == 0) {
        fl_error_clear(&err);
        check_error(fl_flux_check_entries(view, n_view, info.prefix, &info.flux, &err), &err);
    }
    free(mapped_headers);
    free(mapped);
    free(entries);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (size > 0 && data[0] == '{') fuzz_index(text, size);
    else fuzz_names(text);
    free(text);
    return 0;
}
