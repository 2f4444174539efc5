/*
 * config.c — JSON configuration loading and typed field access (see config.h).
 */
#include "core/config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *parse(const char *text, size_t length, const char *origin, fl_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, length, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        fl_fail(err, FL_EINVAL, "%s: invalid JSON at line %d column %d: %s", origin, jerr.line, jerr.column,
                jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        fl_fail(err, FL_EINVAL, "%s: expected a JSON object at the top level", origin);
        return NULL;
    }
    return root;
}

json_t *fl_config_load_file(const char *path, fl_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fl_fail(err, FL_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t used = 0, cap = 0;
    for (;;) {
        if (used == cap) {
            if (cap >= FL_CONFIG_MAX_BYTES) {
                fclose(f);
                free(buf);
                fl_fail(err, FL_ELIMIT, "%s: larger than %u bytes", path, FL_CONFIG_MAX_BYTES);
                return NULL;
            }
            cap = cap ? cap * 2 : 4096;
            char *grown = realloc(buf, cap);
            if (!grown) {
                fclose(f);
                free(buf);
                fl_fail(err, FL_ENOMEM, "%s: out of memory", path);
                return NULL;
            }
            buf = grown;
        }
        size_t n = fread(buf + used, 1, cap - used, f);
        used += n;
        if (n == 0) break;
    }
    int read_error = ferror(f);
    fclose(f);
    if (read_error) {
        free(buf);
        fl_fail(err, FL_EIO, "%s: read error", path);
        return NULL;
    }
    const char *base = strrchr(path, '/');
    json_t *root = parse(buf ? buf : "", used, base ? base + 1 : path, err);
    free(buf);
    return root;
}

json_t *fl_config_load_string(const char *text, size_t length, fl_error *err) {
    return parse(text, length, "<string>", err);
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* Looks the field up; returns 1 found, 0 absent-and-optional, -1 error. */
static int lookup(const json_t *obj, const char *field, bool required, json_t **out, fl_error *err) {
    *out = json_object_get(obj, field);
    if (*out) return 1;
    if (required) return fl_fail(err, FL_EINVAL, "field '%s': missing", field);
    return 0;
}

int fl_config_get_int(const json_t *obj, const char *field, bool required, int64_t min, int64_t max,
                      int64_t *out, fl_error *err) {
    json_t *v;
    int found = lookup(obj, field, required, &v, err);
    if (found <= 0) return found;
    if (!json_is_integer(v))
        return fl_fail(err, FL_EINVAL, "field '%s': expected an integer, got %s", field, type_name(v));
    int64_t x = (int64_t)json_integer_value(v);
    if (x < min || x > max)
        return fl_fail(err, FL_EINVAL, "field '%s': %lld is outside [%lld, %lld]", field, (long long)x,
                       (long long)min, (long long)max);
    *out = x;
    return 0;
}

int fl_config_get_double(const json_t *obj, const char *field, bool required, double min, double max,
                         double *out, fl_error *err) {
    json_t *v;
    int found = lookup(obj, field, required, &v, err);
    if (found <= 0) return found;
    if (!json_is_number(v))
        return fl_fail(err, FL_EINVAL, "field '%s': expected a number, got %s", field, type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < min || x > max)
        return fl_fail(err, FL_EINVAL, "field '%s': %g is outside [%g, %g]", field, x, min, max);
    *out = x;
    return 0;
}

int fl_config_get_bool(const json_t *obj, const char *field, bool required, bool *out, fl_error *err) {
    json_t *v;
    int found = lookup(obj, field, required, &v, err);
    if (found <= 0) return found;
    if (!json_is_boolean(v))
        return fl_fail(err, FL_EINVAL, "field '%s': expected a boolean, got %s", field, type_name(v));
    *out = json_is_true(v);
    return 0;
}

int fl_config_get_string(const json_t *obj, const char *field, bool required, const char **out,
                         fl_error *err) {
    json_t *v;
    int found = lookup(obj, field, required, &v, err);
    if (found <= 0) return found;
    if (!json_is_string(v))
        return fl_fail(err, FL_EINVAL, "field '%s': expected a string, got %s", field, type_name(v));
    *out = json_string_value(v);
    return 0;
}

int fl_config_get_int_array(const json_t *obj, const char *field, bool required, int64_t min, int64_t max,
                            int64_t *out, size_t max_count, size_t *count, fl_error *err) {
    json_t *v;
    int found = lookup(obj, field, required, &v, err);
    if (found <= 0) return found;
    if (!json_is_array(v))
        return fl_fail(err, FL_EINVAL, "field '%s': expected an array, got %s", field, type_name(v));
    size_t n = json_array_size(v);
    if (n > max_count)
        return fl_fail(err, FL_EINVAL, "field '%s': %zu entries, at most %zu allowed", field, n, max_count);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e))
            return fl_fail(err, FL_EINVAL, "field '%s[%zu]': expected an integer, got %s", field, i,
                           type_name(e));
        int64_t x = (int64_t)json_integer_value(e);
        if (x < min || x > max)
            return fl_fail(err, FL_EINVAL, "field '%s[%zu]': %lld is outside [%lld, %lld]", field, i,
                           (long long)x, (long long)min, (long long)max);
        out[i] = x;
    }
    *count = n;
    return 0;
}
