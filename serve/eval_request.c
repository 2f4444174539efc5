/*
 * eval_request.c — decoding and encoding the evaluation request (serve/eval_request.h). Every
 * field is read by one reader that knows whether the value came as JSON, as a form string or from
 * storage.
 */
#include "serve/eval_request.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/utf8.h"
#include "eval/evaluate.h"

void fl_eval_request_clear(fl_eval_request *r) {
    for (int i = 0; i < r->n_prompts; i++) free(r->prompts[i]);
    memset(r, 0, sizeof *r);
}

int64_t fl_eval_request_images(const fl_eval_request *r) {
    int prompts = r->n_prompts;
    if (prompts == 0) fl_eval_default_prompts(&prompts);
    return (int64_t)r->n_adapters * prompts * r->n_seeds * 2;
}

static int chars_ok(const char *s, size_t max_chars) {
    size_t n = strlen(s);
    if (!fl_utf8_valid(s, n)) return 0;
    size_t chars = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) chars += (*p & 0xc0) != 0x80;
    return chars <= max_chars;
}

/* A list field: a JSON array of strings, or (from a form) one string split at sep. Calls
 * take(arg, i, text) for each item; at most max items. */
static int read_list(json_t *o, fl_req_source src, const char *name, char sep, int max,
                     int (*take)(void *arg, int i, const char *text, fl_error *err), void *arg, int *count,
                     fl_error *err) {
    *count = 0;
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) return 0;
    if (src != FL_REQ_STORED && json_is_string(v)) { /* a form's list, or the same text in JSON */
        const char *s = json_string_value(v);
        int n = 0;
        while (*s) {
            const char *e = strchr(s, sep);
            size_t len = e ? (size_t)(e - s) : strlen(s);
            while (len > 0 && (s[len - 1] == '\r' || s[len - 1] == ' ')) len--;
            const char *b = s;
            while (len > 0 && *b == ' ') b++, len--;
            if (len > 0) {
                if (n == max) return fl_fail(err, FL_EINVAL, "field '%s': at most %d items", name, max);
                char *item = fl_xmalloc(len + 1);
                memcpy(item, b, len);
                item[len] = '\0';
                int rc = take(arg, n, item, err);
                free(item);
                if (rc != 0) return -1;
                n++;
            }
            s = e ? e + 1 : s + strlen(s);
        }
        *count = n;
        return 0;
    }
    if (!json_is_array(v)) return fl_fail(err, FL_EINVAL, "field '%s': expected an array", name);
    if ((int)json_array_size(v) > max) return fl_fail(err, FL_EINVAL, "field '%s': at most %d items", name, max);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        char tmp[32];
        const char *text = NULL;
        if (json_is_string(item)) text = json_string_value(item);
        else if (json_is_integer(item)) {
            snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(item));
            text = tmp;
        } else {
            return fl_fail(err, FL_EINVAL, "field '%s[%zu]': expected a %s", name, i,
                           !strcmp(name, "seeds") ? "integer" : "string");
        }
        if (!strcmp(name, "seeds") && !json_is_integer(item))
            return fl_fail(err, FL_EINVAL, "field 'seeds[%zu]': expected an integer", i);
        if (take(arg, (int)i, text, err) != 0) return -1;
    }
    *count = (int)json_array_size(v);
    return 0;
}

typedef struct take_ctx {
    fl_eval_request *r;
    const char *name;
    bool distractor;
} take_ctx;

static int take_prompt(void *arg, int i, const char *text, fl_error *err) {
    take_ctx *t = arg;
    if (!*text) return fl_fail(err, FL_EINVAL, "field 'prompts[%d]': empty", i);
    if (!chars_ok(text, FL_EVAL_REQ_MAX_PROMPT_CHARS))
        return fl_fail(err, FL_EINVAL, "field 'prompts[%d]': not UTF-8 text of at most %d characters", i,
                       FL_EVAL_REQ_MAX_PROMPT_CHARS);
    t->r->prompts[i] = fl_xstrdup(text);
    t->r->n_prompts = i + 1;
    return 0;
}

static int take_seed(void *arg, int i, const char *text, fl_error *err) {
    take_ctx *t = arg;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end || errno || v < 0 || v > FL_REQ_MAX_SEED)
        return fl_fail(err, FL_EINVAL, "field 'seeds[%d]': expected an integer in [0, %lld]", i, (long long)FL_REQ_MAX_SEED);
    t->r->seeds[i] = v;
    return 0;
}

static int take_subject(void *arg, int i, const char *text, fl_error *err) {
    take_ctx *t = arg;
    fl_eval_req_subject *s = t->distractor ? &t->r->distractors[i] : &t->r->adapters[i];
    if (!*text || strlen(text) >= sizeof s->id || !chars_ok(text, FL_NAME_MAX_CHARS))
        return fl_fail(err, FL_EINVAL, "field '%s[%d]': expected an adapter id or name", t->name, i);
    snprintf(s->id, sizeof s->id, "%s", text);
    return 0;
}

static int read_int(json_t *o, fl_req_source src, const char *name, long dflt, long lo, long hi, int *out, fl_error *err) {
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) {
        *out = (int)dflt;
        return 0;
    }
    long long x = 0;
    bool ok = false;
    if (json_is_integer(v)) ok = true, x = json_integer_value(v);
    else if (src == FL_REQ_CLIENT_FORM && json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end = NULL;
        errno = 0;
        x = strtoll(s, &end, 10);
        ok = end != s && *end == '\0' && !errno;
    }
    if (!ok || x < lo || x > hi) return fl_fail(err, FL_EINVAL, "field '%s': expected an integer in [%ld, %ld]", name, lo, hi);
    *out = (int)x;
    return 0;
}

static int read_num(json_t *o, fl_req_source src, const char *name, double dflt, double lo, double hi, double *out,
                    fl_error *err) {
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    double x = 0;
    bool ok = false;
    if (json_is_number(v)) ok = true, x = json_number_value(v);
    else if (src == FL_REQ_CLIENT_FORM && json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end = NULL;
        errno = 0;
        x = strtod(s, &end);
        /* an underflow (a denormal or smaller) is a number, its value rounded toward 0 */
        ok = end != s && *end == '\0' && (!errno || (errno == ERANGE && fabs(x) < 1.0)) &&
             strspn(s, "0123456789+-.eE") == strlen(s);
    }
    if (!ok || !isfinite(x) || x < lo || x > hi) return fl_fail(err, FL_EINVAL, "field '%s': expected a number in [%g, %g]", name, lo, hi);
    *out = x;
    return 0;
}

/* The stored details of each subject (an array of objects parallel to the ids). */
static int read_stored_subjects(json_t *arr, fl_eval_req_subject *subs, int n, const char *name, fl_error *err) {
    if (!json_is_array(arr) || (int)json_array_size(arr) != n) return fl_fail(err, FL_EINVAL, "stored field '%s' is malformed", name);
    for (int i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, (size_t)i);
        const char *id = json_string_value(json_object_get(o, "id")), *sha = json_string_value(json_object_get(o, "sha256"));
        const char *trig = json_string_value(json_object_get(o, "trigger")), *refs = json_string_value(json_object_get(o, "refs"));
        const char *nm = json_string_value(json_object_get(o, "name"));
        if (!id || !sha || !trig || !refs || !nm || strlen(sha) != 64 || strlen(refs) >= FL_EVAL_REQ_PATH_MAX ||
            strlen(id) >= FL_NAME_MAX || strlen(trig) >= FL_NAME_MAX || strlen(nm) >= FL_NAME_MAX)
            return fl_fail(err, FL_EINVAL, "stored field '%s[%d]' is malformed", name, i);
        snprintf(subs[i].id, sizeof subs[i].id, "%s", id);
        snprintf(subs[i].name, sizeof subs[i].name, "%s", nm);
        snprintf(subs[i].sha256, sizeof subs[i].sha256, "%s", sha);
        snprintf(subs[i].trigger, sizeof subs[i].trigger, "%s", trig);
        snprintf(subs[i].refs, sizeof subs[i].refs, "%s", refs);
        subs[i].refs_uploaded = json_is_true(json_object_get(o, "refs_uploaded"));
    }
    return 0;
}

int fl_eval_request_decode(json_t *obj, fl_req_source src, const fl_request_limits *limits, fl_eval_request *out,
                           fl_error *err) {
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj)) return fl_fail(err, FL_EINVAL, "the body must be a JSON object");
    static const char *const client[] = {"adapters", "prompts", "seeds", "distractors", "width", "height", "steps",
                                         "guidance", "scale", "encoder", "bootstrap"};
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value) {
        bool ok = false;
        for (size_t i = 0; i < sizeof client / sizeof client[0] && !ok; i++) ok = !strcmp(key, client[i]);
        if (src == FL_REQ_STORED)
            ok = ok || !strcmp(key, "adapter_details") || !strcmp(key, "distractor_details") || !strcmp(key, "batch_images");
        if (!ok) {
            char shown[80];
            fl_utf8_display(key, 64, shown, sizeof shown);
            return fl_fail(err, FL_EINVAL, "field '%s' is not known", shown);
        }
    }
    take_ctx t = {out, "adapters", false};
    int n = 0;
    if (read_list(obj, src, "adapters", ',', FL_EVAL_REQ_MAX_ADAPTERS, take_subject, &t, &n, err) != 0) return -1;
    out->n_adapters = n;
    if (n == 0) return fl_fail(err, FL_EINVAL, "field 'adapters': at least one adapter is required");
    t = (take_ctx){out, "distractors", true};
    if (read_list(obj, src, "distractors", ',', FL_EVAL_REQ_MAX_DISTRACTORS, take_subject, &t, &n, err) != 0) return -1;
    json_t *dv = json_object_get(obj, "distractors");
    if (dv && json_is_string(dv) && n == 0) return fl_fail(err, FL_EINVAL, "field 'distractors': no adapter named");
    out->n_distractors = n;
    t = (take_ctx){out, "prompts", false};
    if (read_list(obj, src, "prompts", '\n', FL_EVAL_REQ_MAX_PROMPTS, take_prompt, &t, &n, err) != 0) return -1;
    json_t *pv = json_object_get(obj, "prompts");
    if (pv && !json_is_null(pv) && n == 0) return fl_fail(err, FL_EINVAL, "field 'prompts': at least one prompt");
    t = (take_ctx){out, "seeds", false};
    if (read_list(obj, src, "seeds", ',', FL_EVAL_REQ_MAX_SEEDS, take_seed, &t, &n, err) != 0) return -1;
    json_t *sv = json_object_get(obj, "seeds");
    if (sv && !json_is_null(sv) && n == 0) return fl_fail(err, FL_EINVAL, "field 'seeds': at least one seed");
    out->n_seeds = n;
    if (n == 0) {
        out->n_seeds = 4;
        for (int i = 0; i < 4; i++) out->seeds[i] = i + 1;
    }
    int patch = limits->patch > 0 ? limits->patch : 1;
    if (read_int(obj, src, "width", limits->default_size, patch, limits->max_resolution, &out->width, err) ||
        read_int(obj, src, "height", limits->default_size, patch, limits->max_resolution, &out->height, err) ||
        read_int(obj, src, "steps", 20, 1, limits->max_generation_steps, &out->steps, err) ||
        read_int(obj, src, "bootstrap", 1000, 0, 10000, &out->bootstrap, err) ||
        read_num(obj, src, "guidance", 1.0, 0.0, 100.0, &out->guidance, err) ||
        read_num(obj, src, "scale", 1.0, -FL_REQ_MAX_SCALE, FL_REQ_MAX_SCALE, &out->scale, err))
        return -1;
    if (out->width % patch || out->height % patch)
        return fl_fail(err, FL_EINVAL, "fields 'width' and 'height' must be multiples of %d", patch);
    json_t *enc = json_object_get(obj, "encoder");
    if (enc && !json_is_null(enc) && (!json_is_string(enc) || strcmp(json_string_value(enc), "builtin")))
        return fl_fail(err, FL_EINVAL, "field 'encoder': this service offers \"builtin\"");
    if (src == FL_REQ_STORED) {
        if (read_stored_subjects(json_object_get(obj, "adapter_details"), out->adapters, out->n_adapters, "adapter_details", err) ||
            read_stored_subjects(json_object_get(obj, "distractor_details"), out->distractors, out->n_distractors,
                                 "distractor_details", err) ||
            read_int(obj, src, "batch_images", 0, 0, 4096, &out->batch_images, err))
            return -1;
    }
    return 0;
}

static json_t *subjects_json(const fl_eval_req_subject *s, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_pack("{s:s, s:s, s:s, s:s, s:s, s:b}", "id", s[i].id, "name", s[i].name,
                                           "sha256", s[i].sha256, "trigger", s[i].trigger, "refs", s[i].refs,
                                           "refs_uploaded", s[i].refs_uploaded));
    return a;
}

json_t *fl_eval_request_to_json(const fl_eval_request *r) {
    json_t *ids = json_array(), *dids = json_array(), *prompts = json_array(), *seeds = json_array();
    for (int i = 0; i < r->n_adapters; i++) json_array_append_new(ids, json_string(r->adapters[i].id));
    for (int i = 0; i < r->n_distractors; i++) json_array_append_new(dids, json_string(r->distractors[i].id));
    for (int i = 0; i < r->n_prompts; i++) json_array_append_new(prompts, json_string(r->prompts[i]));
    for (int i = 0; i < r->n_seeds; i++) json_array_append_new(seeds, json_integer((json_int_t)r->seeds[i]));
    json_t *o = json_pack("{s:o, s:o, s:o, s:i, s:i, s:i, s:f, s:f, s:s, s:i, s:o, s:o, s:i}", "adapters", ids,
                          "distractors", dids, "seeds", seeds, "width", r->width, "height", r->height, "steps", r->steps,
                          "guidance", r->guidance, "scale", r->scale, "encoder", "builtin", "bootstrap", r->bootstrap,
                          "adapter_details", subjects_json(r->adapters, r->n_adapters), "distractor_details",
                          subjects_json(r->distractors, r->n_distractors), "batch_images", r->batch_images);
    FL_CHECK(o);
    if (r->n_prompts > 0) json_object_set_new(o, "prompts", prompts);
    else json_decref(prompts);
    return o;
}

int fl_eval_request_parse(const char *text, fl_eval_request *out, fl_error *err) {
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    if (!o) return fl_fail(err, FL_EINVAL, "stored evaluation request is not JSON");
    fl_request_limits l = fl_request_limits_default();
    int rc = fl_eval_request_decode(o, FL_REQ_STORED, &l, out, err);
    json_decref(o);
    return rc;
}

/* ---- stored training images ------------------------------------------------------------------------ */

int fl_eval_refs_path(const char *state_dir, const char *sha256, char *out, size_t cap) {
    static const char *const exts[] = {".zip", ".tar", ".tar.gz"};
    if (strlen(sha256) != 64 || strspn(sha256, "0123456789abcdef") != 64) return -1;
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        snprintf(out, cap, "%s/refs/%s%s", state_dir, sha256, exts[i]);
        if (access(out, R_OK) == 0) return 0;
    }
    return -1;
}

int fl_eval_keep_training_refs(const char *state_dir, const char *upload, const char *sha256, fl_error *err) {
    if (strlen(sha256) != 64 || strspn(sha256, "0123456789abcdef") != 64) return fl_fail(err, FL_EINVAL, "not a sha256");
    const char *ext = strrchr(upload, '.');
    if (ext && !strcmp(ext, ".gz") && strlen(upload) > 7 && !strcmp(upload + strlen(upload) - 7, ".tar.gz")) ext = upload + strlen(upload) - 7;
    if (!ext || (strcmp(ext, ".zip") && strcmp(ext, ".tar") && strcmp(ext, ".tar.gz")))
        return fl_fail(err, FL_EINVAL, "the upload is not a .zip, .tar or .tar.gz archive");
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/refs", state_dir);
    if (fl_mkdirs(dir, err) != 0) return -1;
    snprintf(path, sizeof path, "%s/%s%s", dir, sha256, ext);
    if (rename(upload, path) != 0) return fl_fail_errno(err, errno, "keeping the training images");
    return fl_fsync_dir(dir, err);
}
