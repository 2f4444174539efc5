/*
 * inspect.c — `flashlora inspect FILE.safetensors [--json]`: validates a .safetensors file and
 * lists its tensors (name, dtype, shape, bytes), its metadata and a total line; with --json the
 * same as one JSON object {"tensors": [{name, dtype, shape, bytes, offsets}], "metadata": {}}.
 *
 * Exit status: 0 listed, 1 the file cannot be read or is malformed (one line on stderr:
 * "flashlora inspect: FILE: reason"), 2 usage error.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli/commands.h"
#include "core/safetensors.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora inspect FILE.safetensors [--json]\n\n"
            "Validates FILE and lists its tensors (name, dtype, shape, bytes), its metadata and\n"
            "the totals. --json prints one JSON object instead:\n"
            "  {\"tensors\": [{\"name\", \"dtype\", \"shape\", \"bytes\", \"offsets\"}], \"metadata\": {...}}\n"
            "Exit status: 0 ok, 1 unreadable or malformed file, 2 usage error.\n");
}

/* Print s with control bytes escaped, so a name cannot break the one-entry-per-line listing. */
static void print_escaped(FILE *out, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\x%02x", *p);
        else fputc(*p, out);
    }
}

/* The one failure line: "flashlora inspect: FILE: reason". */
static void fail_line(const char *path, const char *reason) {
    fputs("flashlora inspect: ", stderr);
    print_escaped(stderr, path);
    fputs(": ", stderr);
    print_escaped(stderr, reason);
    fputc('\n', stderr);
}

static void shape_text(const fl_safetensors_info *t, char *buf, size_t size) {
    size_t o = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < t->ndim && o < size; d++)
        o += (size_t)snprintf(buf + o, size - o, "%s%" PRId64, d ? ", " : "", t->shape[d]);
    if (o < size) snprintf(buf + o, size - o, "]");
}

static void print_text(const fl_safetensors *f) {
    size_t n = fl_safetensors_count(f), width = 4;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(fl_safetensors_at(f, i)->name);
        if (len > width) width = len;
    }
    if (width > 64) width = 64;
    printf("%-*s  %-7s  %-24s  %s\n", (int)width, "name", "dtype", "shape", "bytes");
    for (size_t i = 0; i < n; i++) {
        const fl_safetensors_info *t = fl_safetensors_at(f, i);
        char shape[256];
        shape_text(t, shape, sizeof shape);
        print_escaped(stdout, t->name);
        size_t len = strlen(t->name);
        printf("%*s  %-7s  %-24s  %" PRIu64 "\n", (int)(len < width ? width - len : 0), "",
               fl_st_dtype_name(t->dtype), shape, t->nbytes);
        total += t->nbytes;
    }
    size_t m = fl_safetensors_metadata_count(f);
    if (m) {
        printf("\nmetadata:\n");
        for (size_t i = 0; i < m; i++) {
            const char *key, *value;
            fl_safetensors_metadata_at(f, i, &key, &value);
            printf("  ");
            print_escaped(stdout, key);
            printf(": ");
            print_escaped(stdout, value);
            printf("\n");
        }
    }
    printf("\ntotal: %zu tensor%s, %" PRIu64 " bytes\n", n, n == 1 ? "" : "s", total);
}

static int print_json(const fl_safetensors *f) {
    json_t *root = json_object(), *tensors = json_array(), *meta = json_object();
    if (!root || !tensors || !meta) return -1;
    json_object_set_new(root, "tensors", tensors);
    json_object_set_new(root, "metadata", meta);
    for (size_t i = 0; i < fl_safetensors_count(f); i++) {
        const fl_safetensors_info *t = fl_safetensors_at(f, i);
        json_t *shape = json_array();
        if (!shape) goto fail;
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *entry = json_pack("{s:s, s:s, s:o, s:I, s:[I, I]}", "name", t->name, "dtype",
                                  fl_st_dtype_name(t->dtype), "shape", shape, "bytes", (json_int_t)t->nbytes,
                                  "offsets", (json_int_t)t->begin, (json_int_t)t->end);
        if (!entry || json_array_append_new(tensors, entry)) goto fail;
    }
    for (size_t i = 0; i < fl_safetensors_metadata_count(f); i++) {
        const char *key, *value;
        fl_safetensors_metadata_at(f, i, &key, &value);
        if (json_object_set_new(meta, key, json_string(value))) goto fail;
    }
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text) return -1;
    puts(text);
    free(text);
    return 0;
fail:
    json_decref(root);
    return -1;
}

int fl_cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    bool json = false, options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!options_done && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            usage(stdout);
            return 0;
        }
        if (!options_done && !strcmp(a, "--json")) {
            json = true;
        } else if (!options_done && !strcmp(a, "--")) {
            options_done = true;
        } else if (!options_done && a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "flashlora inspect: unknown option '%s' (see 'flashlora inspect --help')\n", a);
            return 2;
        } else if (path) {
            fprintf(stderr, "flashlora inspect: expected one file, got '%s' and '%s'\n", path, a);
            return 2;
        } else {
            path = a;
        }
    }
    if (!path) {
        fprintf(stderr, "flashlora inspect: no file given (see 'flashlora inspect --help')\n");
        return 2;
    }

    fl_error err;
    fl_error_clear(&err);
    fl_safetensors *f = NULL;
    if (fl_safetensors_open(path, &f, &err)) {
        fail_line(path, err.message);
        return 1;
    }
    int rc = 0;
    if (json) {
        if (print_json(f)) {
            fail_line(path, "cannot build the JSON listing");
            rc = 1;
        }
    } else {
        print_text(f);
    }
    fl_safetensors_close(f);
    if (fflush(stdout) || ferror(stdout)) {
        fail_line(path, "cannot write the listing to stdout");
        rc = 1;
    }
    return rc;
}
