/*
 * requests.c — decoding and encoding the job requests (see requests.h). Each field is read by one
 * typed reader that knows where the JSON came from: a client's JSON body (types as JSON), a
 * client's multipart form (every value a string, parsed by the field's type, so "2024" stays a
 * string where a string is expected), or a stored job record.
 */
#include "serve/requests.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "core/utf8.h"

fl_request_limits fl_request_limits_default(void) {
    return (fl_request_limits){
        .patch = 1,
        .default_size = 64,
        .max_resolution = 16384,
        .max_generation_steps = 1000,
        .max_num_images = 64,
        .max_train_steps = 1000000,
        .max_rank = 1024,
        .max_batch_size = 64,
        .default_steps = 20,
        .default_guidance = 1.0,
    };
}

bool fl_request_one_word(const char *s) {
    if (!s || !*s) return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f) return false;
    return true;
}

/* ---- typed field readers ------------------------------------------------------------------------ */

typedef struct reader {
    json_t *obj;
    fl_req_source source;
} reader;

/* The value of a field, or NULL when absent or null. */
static json_t *field(const reader *r, const char *name) {
    json_t *v = json_object_get(r->obj, name);
    return v && !json_is_null(v) ? v : NULL;
}

/* Fails naming the first member that is not in allowed (or, from a client, in internal). */
static int check_known(const reader *r, const char *const *allowed, const char *const *internal, fl_error *err) {
    const char *key;
    json_t *value;
    json_object_foreach(r->obj, key, value) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++) ok = !strcmp(allowed[i], key);
        for (size_t i = 0; r->source == FL_REQ_STORED && internal[i] && !ok; i++) ok = !strcmp(internal[i], key);
        if (!ok) {
            char shown[80];
            fl_utf8_display(key, 64, shown, sizeof shown);
            return fl_fail(err, FL_EINVAL, "field '%s' is not known", shown);
        }
    }
    return 0;
}

/* A form value parsed as a number: the whole string, finite. */
static bool form_number(const char *s, double *out) {
    if (!*s || strlen(s) > 64) return false;
    char *end = NULL;
    errno = 0;
    double d = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(d)) return false;
    /* strtod also reads hex, "inf" and "nan": a form number is written in decimal */
    for (const char *p = s; *p; p++)
        if (!strchr("0123456789+-.eE", *p)) return false;
    *out = d;
    return true;
}

/* A field's value as a number: a JSON number, or a form string written as one. */
static bool number_of(const reader *r, json_t *v, double *out) {
    if (json_is_integer(v)) return *out = (double)json_integer_value(v), true;
    if (json_is_real(v)) return *out = json_real_value(v), true;
    if (r->source == FL_REQ_CLIENT_FORM && json_is_string(v)) return form_number(json_string_value(v), out);
    return false;
}

static int read_int(const reader *r, const char *name, int64_t dflt, int64_t lo, int64_t hi, int64_t *out,
                    fl_error *err) {
    json_t *v = field(r, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (json_is_integer(v)) { /* exact: a double cannot tell 2^53 from 2^53 + 1 */
        json_int_t i = json_integer_value(v);
        if (i < lo || i > hi)
            return fl_fail(err, FL_EINVAL, "field '%s': expected an integer in [%lld, %lld]", name, (long long)lo,
                           (long long)hi);
        *out = (int64_t)i;
        return 0;
    }
    double d = 0;
    bool ok = number_of(r, v, &d);
    if (!ok || d != floor(d) || d < (double)lo || d > (double)hi)
        return fl_fail(err, FL_EINVAL, "field '%s': expected an integer in [%lld, %lld]", name, (long long)lo,
                       (long long)hi);
    *out = (int64_t)d;
    return 0;
}

static int read_int32(const reader *r, const char *name, int dflt, int lo, int hi, int *out, fl_error *err) {
    int64_t v = 0;
    if (read_int(r, name, dflt, lo, hi, &v, err) != 0) return -1;
    *out = (int)v;
    return 0;
}

static int read_num(const reader *r, const char *name, double dflt, double lo, double hi, double *out,
                    fl_error *err) {
    json_t *v = field(r, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    double d = 0;
    bool ok = number_of(r, v, &d);
    if (!ok || !(d >= lo && d <= hi))
        return fl_fail(err, FL_EINVAL, "field '%s': expected a number in [%g, %g]", name, lo, hi);
    *out = d;
    return 0;
}

static int read_bool(const reader *r, const char *name, bool dflt, bool *out, fl_error *err) {
    json_t *v = field(r, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (r->source == FL_REQ_CLIENT_FORM && json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcasecmp(s, "true") || !strcmp(s, "1")) return *out = true, 0;
        if (!strcasecmp(s, "false") || !strcmp(s, "0")) return *out = false, 0;
    }
    return fl_fail(err, FL_EINVAL, "field '%s': expected true or false", name);
}

/* Characters (code points) of valid UTF-8 text: its bytes that do not continue a sequence. */
static size_t utf8_chars(const char *s, size_t n) {
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)s[i] & 0xC0) != 0x80;
    return chars;
}

/* A string field as a borrowed pointer (valid while obj lives), or NULL when absent. max_chars
 * counts characters (jansson holds valid UTF-8: at most 4 bytes each). */
static int read_str(const reader *r, const char *name, bool required, size_t max_chars, const char **out,
                    fl_error *err) {
    json_t *v = field(r, name);
    *out = NULL;
    if (!v) return required ? fl_fail(err, FL_EINVAL, "field '%s' is required", name) : 0;
    if (!json_is_string(v)) return fl_fail(err, FL_EINVAL, "field '%s': expected a string", name);
    size_t n = json_string_length(v);
    if (n > 4 * max_chars || utf8_chars(json_string_value(v), n) > max_chars)
        return fl_fail(err, FL_EINVAL, "field '%s': longer than %zu characters", name, max_chars);
    if (strlen(json_string_value(v)) != n) return fl_fail(err, FL_EINVAL, "field '%s': contains a NUL byte", name);
    *out = json_string_value(v);
    return 0;
}

static char *dup_or_null(const char *s) {
    return s ? fl_xstrdup(s) : NULL;
}

static int check_size(const char *name, int value, const fl_request_limits *lim, fl_error *err) {
    if (value % lim->patch)
        return fl_fail(err, FL_EINVAL, "field '%s': must be a multiple of %d", name, lim->patch);
    return 0;
}

static int64_t random_seed(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull;
    return (int64_t)(v >> 12); /* 52 bits: below FL_REQ_MAX_SEED */
}

/* The default image size: the limits' default, or the largest multiple of the patch below it. */
static int default_size(const fl_request_limits *lim) {
    int size = lim->default_size > 0 ? lim->default_size : 64;
    if (size > lim->max_resolution) size = lim->max_resolution;
    size -= size % lim->patch;
    return size >= lim->patch ? size : lim->patch;
}

/* A stored request's text as a JSON object, or NULL with err set. */
static json_t *stored_object(const char *text, fl_error *err) {
    json_t *o = text ? json_loads(text, 0, NULL) : NULL;
    if (!o) fl_fail(err, FL_EINVAL, "the stored request is not JSON");
    return o;
}

/* ---- generation ----------------------------------------------------------------------------------- */

static int read_adapters(const reader *r, fl_generate_request *out, fl_error *err) {
    json_t *given = field(r, "adapters");
    if (!given) return 0;
    if (!json_is_array(given)) return fl_fail(err, FL_EINVAL, "field 'adapters': expected an array of {id, scale}");
    if (json_array_size(given) > FL_REQ_MAX_ADAPTERS)
        return fl_fail(err, FL_EINVAL, "field 'adapters': at most %d per request", FL_REQ_MAX_ADAPTERS);
    for (size_t i = 0; i < json_array_size(given); i++) {
        json_t *a = json_array_get(given, i);
        char name[48];
        snprintf(name, sizeof name, "adapters[%zu]", i);
        if (!json_is_object(a)) return fl_fail(err, FL_EINVAL, "field '%s': expected an object with a string 'id'", name);
        reader ar = {a, r->source == FL_REQ_STORED ? FL_REQ_STORED : FL_REQ_CLIENT_JSON};
        static const char *const allowed[] = {"id", "scale", NULL};
        static const char *const internal[] = {"sha256", NULL};
        const char *id = NULL, *sha = NULL;
        fl_request_adapter *dst = &out->adapters[i];
        if (check_known(&ar, allowed, internal, err) != 0) return fl_fail_prefix(err, "%s", name);
        if (read_str(&ar, "id", true, FL_NAME_MAX_CHARS, &id, err) != 0 || !*id) {
            return fl_fail(err, FL_EINVAL,
                           "field '%s': expected an object with a non-empty string 'id' of at most %d characters", name,
                           FL_NAME_MAX_CHARS);
        }
        if (read_num(&ar, "scale", 1.0, -FL_REQ_MAX_SCALE, FL_REQ_MAX_SCALE, &dst->scale, err) != 0)
            return fl_fail(err, FL_EINVAL, "field '%s.scale': expected a number in [%g, %g]", name, -FL_REQ_MAX_SCALE,
                           FL_REQ_MAX_SCALE);
        if (r->source == FL_REQ_STORED) {
            if (read_str(&ar, "sha256", true, 64, &sha, err) != 0 || strlen(sha) != 64)
                return fl_fail(err, FL_EINVAL, "field '%s.sha256': expected 64 hex digits", name);
            memcpy(dst->sha256, sha, 65);
        }
        snprintf(dst->id, sizeof dst->id, "%s", id);
        out->n_adapters = (int)i + 1;
    }
    return 0;
}

int fl_generate_request_decode(json_t *obj, fl_req_source source, const fl_request_limits *limits,
                               fl_generate_request *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    fl_request_limits defaults = fl_request_limits_default();
    const fl_request_limits *lim = limits ? limits : &defaults;
    if (!json_is_object(obj)) return fl_fail(err, FL_EINVAL, "the request must be a JSON object");
    reader r = {obj, source};
    static const char *const allowed[] = {"prompt", "adapters", "width", "height", "steps", "guidance", "seed",
                                          "num_images", "sync", NULL};
    static const char *const internal[] = {"max_text_tokens", "batch_images", NULL};
    const char *prompt = NULL;
    int size = default_size(lim);
    int rc = check_known(&r, allowed, internal, err);
    if (rc == 0) rc = read_str(&r, "prompt", true, FL_REQ_MAX_PROMPT_CHARS, &prompt, err);
    if (rc == 0) out->prompt = fl_xstrdup(prompt);
    if (rc == 0) rc = read_int32(&r, "width", size, lim->patch, lim->max_resolution, &out->width, err);
    if (rc == 0) rc = read_int32(&r, "height", size, lim->patch, lim->max_resolution, &out->height, err);
    if (rc == 0) rc = check_size("width", out->width, lim, err);
    if (rc == 0) rc = check_size("height", out->height, lim, err);
    int steps = lim->default_steps > 0 ? lim->default_steps : 20;
    if (rc == 0) rc = read_int32(&r, "steps", steps < lim->max_generation_steps ? steps : lim->max_generation_steps, 1,
                                 lim->max_generation_steps, &out->steps, err);
    double guidance = lim->default_guidance >= 0 ? lim->default_guidance : 1.0;
    if (rc == 0) rc = read_num(&r, "guidance", guidance, 0.0, 100.0, &out->guidance, err);
    if (rc == 0 && source == FL_REQ_STORED && !field(&r, "seed"))
        rc = fl_fail(err, FL_EINVAL, "field 'seed' is required");
    if (rc == 0) rc = read_int(&r, "seed", source == FL_REQ_STORED ? 0 : random_seed(), 0, FL_REQ_MAX_SEED, &out->seed, err);
    if (rc == 0) rc = read_int32(&r, "num_images", 1, 1, lim->max_num_images, &out->num_images, err);
    if (rc == 0 && source != FL_REQ_STORED) rc = read_bool(&r, "sync", false, &out->sync, err);
    if (rc == 0 && source == FL_REQ_STORED) rc = read_int32(&r, "max_text_tokens", 0, 1, 65536, &out->max_text_tokens, err);
    if (rc == 0 && source == FL_REQ_STORED) rc = read_int32(&r, "batch_images", 0, 0, 4096, &out->batch_images, err);
    if (rc == 0) rc = read_adapters(&r, out, err);
    return rc;
}

json_t *fl_generate_request_to_json(const fl_generate_request *r) {
    json_t *adapters = json_array();
    for (int i = 0; i < r->n_adapters; i++)
        json_array_append_new(adapters, json_pack("{s:s, s:s, s:f}", "id", r->adapters[i].id, "sha256",
                                                  r->adapters[i].sha256, "scale", r->adapters[i].scale));
    json_t *o = json_pack("{s:s, s:o, s:i, s:i, s:i, s:f, s:I, s:i, s:i}", "prompt", r->prompt ? r->prompt : "",
                          "adapters", adapters, "width", r->width, "height", r->height, "steps", r->steps, "guidance",
                          r->guidance, "seed", (json_int_t)r->seed, "num_images", r->num_images, "max_text_tokens",
                          r->max_text_tokens);
    FL_CHECK(o != NULL); /* strings were checked as UTF-8 on the way in */
    if (r->batch_images > 0) json_object_set_new(o, "batch_images", json_integer(r->batch_images));
    return o;
}

int fl_generate_request_parse(const char *text, fl_generate_request *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    json_t *o = stored_object(text, err);
    int rc = o ? fl_generate_request_decode(o, FL_REQ_STORED, NULL, out, err) : -1;
    json_decref(o);
    return rc;
}

void fl_generate_request_clear(fl_generate_request *r) {
    free(r->prompt);
    memset(r, 0, sizeof *r);
}

/* ---- training ------------------------------------------------------------------------------------- */

int fl_train_request_decode(json_t *obj, fl_req_source source, const fl_request_limits *limits,
                            fl_train_request *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    fl_request_limits defaults = fl_request_limits_default();
    const fl_request_limits *lim = limits ? limits : &defaults;
    if (!json_is_object(obj)) return fl_fail(err, FL_EINVAL, "the request must be a JSON object");
    reader r = {obj, source};
    static const char *const allowed[] = {"images_url", "trigger_word", "name", "steps", "rank", "alpha",
                                          "learning_rate", "resolution", "caption", "is_style", "buckets", "seed",
                                          "batch_size", "targets", "preview_every", "preview_count", NULL};
    static const char *const internal[] = {"images", "source", "max_decoded_pixels", NULL};
    const char *url = NULL, *images = NULL, *src = NULL, *trigger = NULL, *name = NULL, *caption = NULL,
               *targets = NULL;
    int rc = check_known(&r, allowed, internal, err);
    if (rc == 0) rc = read_str(&r, "images_url", false, FL_REQ_MAX_URL_CHARS, &url, err);
    if (rc == 0 && url && strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8))
        rc = fl_fail(err, FL_EINVAL, "field 'images_url': only http and https URLs are fetched");
    if (rc == 0 && source == FL_REQ_STORED) rc = read_str(&r, "images", true, 8192, &images, err);
    if (rc == 0 && source == FL_REQ_STORED) rc = read_str(&r, "source", false, 8192, &src, err);
    if (rc == 0) rc = read_str(&r, "trigger_word", true, FL_REQ_MAX_TRIGGER_CHARS, &trigger, err);
    if (rc == 0 && !fl_request_one_word(trigger))
        rc = fl_fail(err, FL_EINVAL, "field 'trigger_word': must be one word");
    if (rc == 0) rc = read_str(&r, "name", false, FL_NAME_MAX_CHARS, &name, err);
    if (rc == 0 && name) rc = fl_registry_check_name("field 'name'", name, err);
    if (rc == 0) rc = read_str(&r, "caption", false, FL_REQ_MAX_CAPTION_CHARS, &caption, err);
    if (rc == 0) rc = read_str(&r, "targets", false, FL_REQ_MAX_TARGETS_CHARS, &targets, err);
    if (rc == 0) rc = read_int32(&r, "steps", 300 < lim->max_train_steps ? 300 : lim->max_train_steps, 1,
                                 lim->max_train_steps, &out->steps, err);
    if (rc == 0) rc = read_int32(&r, "rank", 16 < lim->max_rank ? 16 : lim->max_rank, 1, lim->max_rank, &out->rank, err);
    if (rc == 0) rc = read_num(&r, "alpha", (double)out->rank, 1e-6, 1e6, &out->alpha, err);
    if (rc == 0) rc = read_num(&r, "learning_rate", 4e-4, 1e-9, 1.0, &out->learning_rate, err);
    if (rc == 0) rc = read_int32(&r, "resolution", default_size(lim), lim->patch, lim->max_resolution, &out->resolution, err);
    if (rc == 0) rc = check_size("resolution", out->resolution, lim, err);
    if (rc == 0) rc = read_int(&r, "seed", 0, 0, FL_REQ_MAX_SEED, &out->seed, err);
    if (rc == 0) rc = read_int32(&r, "batch_size", 1, 1, lim->max_batch_size, &out->batch_size, err);
    if (rc == 0) rc = read_bool(&r, "is_style", false, &out->is_style, err);
    if (rc == 0) rc = read_bool(&r, "buckets", false, &out->buckets, err);
    if (rc == 0) rc = read_int32(&r, "preview_every", 0, 0, lim->max_train_steps, &out->preview_every, err);
    if (rc == 0) rc = read_int32(&r, "preview_count", 2, 1, FL_REQ_MAX_PREVIEW_COUNT, &out->preview_count, err);
    if (rc == 0 && source == FL_REQ_STORED)
        rc = read_int(&r, "max_decoded_pixels", 0, 0, (int64_t)1 << 40, &out->max_decoded_pixels, err);
    if (rc != 0) return rc;
    snprintf(out->trigger_word, sizeof out->trigger_word, "%s", trigger);
    snprintf(out->name, sizeof out->name, "%s", name ? name : "");
    out->images = dup_or_null(source == FL_REQ_STORED && images ? images : url);
    out->source = dup_or_null(source == FL_REQ_STORED && src ? src : url);
    out->caption = dup_or_null(caption);
    out->targets = dup_or_null(targets);
    return 0;
}

json_t *fl_train_request_to_json(const fl_train_request *r) {
    json_t *o = json_pack("{s:s, s:i, s:i, s:f, s:f, s:i, s:I, s:i, s:b, s:b}", "trigger_word", r->trigger_word,
                          "steps", r->steps, "rank", r->rank, "alpha", r->alpha, "learning_rate", r->learning_rate,
                          "resolution", r->resolution, "seed", (json_int_t)r->seed, "batch_size", r->batch_size,
                          "is_style", r->is_style, "buckets", r->buckets);
    FL_CHECK(o != NULL);
    if (r->preview_every > 0) {
        json_object_set_new(o, "preview_every", json_integer(r->preview_every));
        json_object_set_new(o, "preview_count", json_integer(r->preview_count));
    }
    if (r->max_decoded_pixels > 0)
        json_object_set_new(o, "max_decoded_pixels", json_integer((json_int_t)r->max_decoded_pixels));
    const char *strings[][2] = {{"images", r->images}, {"source", r->source}, {"caption", r->caption},
                                {"targets", r->targets}, {"name", r->name[0] ? r->name : NULL}};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if (strings[i][1]) json_object_set_new(o, strings[i][0], json_string(strings[i][1]));
    return o;
}

int fl_train_request_parse(const char *text, fl_train_request *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    json_t *o = stored_object(text, err);
    int rc = o ? fl_train_request_decode(o, FL_REQ_STORED, NULL, out, err) : -1;
    json_decref(o);
    return rc;
}

void fl_train_request_clear(fl_train_request *r) {
    free(r->images);
    free(r->source);
    free(r->caption);
    free(r->targets);
    memset(r, 0, sizeof *r);
}

/* ---- adapter imports ------------------------------------------------------------------------------ */

int fl_adapter_import_request_decode(json_t *obj, fl_req_source source, fl_adapter_import_request *out,
                                     fl_error *err) {
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj)) return fl_fail(err, FL_EINVAL, "the request must be a JSON object");
    reader r = {obj, source};
    static const char *const allowed[] = {"name", "trigger_word", "url", NULL};
    static const char *const internal[] = {"max_bytes", "max_metadata_bytes", NULL};
    const char *name = NULL, *trigger = NULL, *url = NULL;
    int rc = check_known(&r, allowed, internal, err);
    if (rc == 0) rc = read_str(&r, "name", false, FL_NAME_MAX_CHARS, &name, err);
    if (rc == 0 && name) rc = fl_registry_check_name("field 'name'", name, err);
    if (rc == 0) rc = read_str(&r, "trigger_word", false, FL_NAME_MAX_CHARS, &trigger, err);
    if (rc == 0 && trigger && *trigger && !fl_request_one_word(trigger))
        rc = fl_fail(err, FL_EINVAL, "field 'trigger_word': must be one word");
    if (rc == 0) rc = read_str(&r, "url", false, FL_REQ_MAX_URL_CHARS, &url, err);
    if (rc == 0 && source == FL_REQ_STORED && !url) rc = fl_fail(err, FL_EINVAL, "field 'url' is required");
    if (rc == 0 && source == FL_REQ_STORED)
        rc = read_int(&r, "max_bytes", 0, 1, (int64_t)1 << 50, &out->max_bytes, err);
    if (rc == 0 && source == FL_REQ_STORED)
        rc = read_int(&r, "max_metadata_bytes", 0, 1, (int64_t)1 << 40, &out->max_metadata_bytes, err);
    if (rc != 0) return rc;
    snprintf(out->name, sizeof out->name, "%s", name ? name : "");
    snprintf(out->trigger_word, sizeof out->trigger_word, "%s", trigger ? trigger : "");
    out->url = dup_or_null(url);
    return 0;
}

json_t *fl_adapter_import_request_to_json(const fl_adapter_import_request *r) {
    json_t *o = json_pack("{s:s, s:I, s:I}", "url", r->url ? r->url : "", "max_bytes", (json_int_t)r->max_bytes,
                          "max_metadata_bytes", (json_int_t)r->max_metadata_bytes);
    FL_CHECK(o != NULL);
    if (r->name[0]) json_object_set_new(o, "name", json_string(r->name));
    if (r->trigger_word[0]) json_object_set_new(o, "trigger_word", json_string(r->trigger_word));
    return o;
}

int fl_adapter_import_request_parse(const char *text, fl_adapter_import_request *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    json_t *o = stored_object(text, err);
    int rc = o ? fl_adapter_import_request_decode(o, FL_REQ_STORED, out, err) : -1;
    json_decref(o);
    return rc;
}

void fl_adapter_import_request_clear(fl_adapter_import_request *r) {
    free(r->url);
    memset(r, 0, sizeof *r);
}
