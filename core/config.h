/*
 * config.h — JSON configuration loading (jansson) with typed, range-checked field access.
 *
 * Every failure names the file (or "<string>") and the field path, e.g.
 *   "model.json: field 'hidden_size': expected an integer in [1, 65536], got \"abc\"".
 * Objects returned by fl_config_load* are owned by the caller (json_decref).
 */
#ifndef FL_CORE_CONFIG_H
#define FL_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/error.h"

/* Largest configuration file accepted by fl_config_load_file. */
#define FL_CONFIG_MAX_BYTES (16u << 20)

json_t *fl_config_load_file(const char *path, fl_error *err);
json_t *fl_config_load_string(const char *text, size_t length, fl_error *err);

/* Field getters. `required` false: a missing field leaves *out unchanged and succeeds.
 * A present field of the wrong type or out of range is always an error. */
int fl_config_get_int(const json_t *obj, const char *field, bool required, int64_t min, int64_t max,
                      int64_t *out, fl_error *err);
int fl_config_get_double(const json_t *obj, const char *field, bool required, double min, double max,
                         double *out, fl_error *err);
int fl_config_get_bool(const json_t *obj, const char *field, bool required, bool *out, fl_error *err);
/* *out points into obj (valid while obj lives). */
int fl_config_get_string(const json_t *obj, const char *field, bool required, const char **out,
                         fl_error *err);
/* An array of integers, at most max_count long, each in [min, max]; *count gets its length. */
int fl_config_get_int_array(const json_t *obj, const char *field, bool required, int64_t min, int64_t max,
                            int64_t *out, size_t max_count, size_t *count, fl_error *err);

#endif
