/*
 * api.c — the routes of the HTTP API (see api.h): each handler authenticates, validates its input
 * into a plain JSON job request or registry call, and answers JSON. Handlers run on the HTTP
 * layer's connection threads and take Redis connections from a small pool.
 */
#include "serve/api.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "serve/registry.h"
#include "serve/store.h"
#include "core/clock.h"
#include "core/fileio.h"
#include "core/log.h"
#include "datasets/imageset.h"
#include "serve/auth.h"
#include "serve/jobs.h"
#include "serve/redis.h"

#define POOL_MAX 64
#define MAX_IMAGE_BYTES ((size_t)1 << 30) /* a PNG the service wrote */

struct fl_api {
    fl_api_config cfg;
    fl_store *store;
    int patch;
    pthread_mutex_t lock;
    fl_redis *pool[POOL_MAX];
    int n_pool;
};

fl_api_config fl_api_config_default(void) {
    fl_api_config c;
    memset(&c, 0, sizeof c);
    c.max_pending_generate = 64;
    c.max_pending_train = 8;
    c.max_resolution = 1024;
    c.max_generation_steps = 100;
    c.max_num_images = 8;
    c.max_train_steps = 5000;
    c.max_rank = 128;
    c.max_text_tokens = 32;
    c.sync_timeout_s = 120;
    c.retry_after_s = 2;
    return c;
}

int fl_api_create(const fl_api_config *config, fl_api **out, fl_error *err) {
    fl_api *api = fl_xcalloc(1, sizeof *api);
    api->cfg = *config;
    pthread_mutex_init(&api->lock, NULL);
    api->patch = fl_flux_pixel_patch(&config->params);
    if (api->patch < 1) api->patch = 1;
    char path[4200];
    snprintf(path, sizeof path, "%s/store", config->state_dir);
    if (fl_store_open(path, &api->store, err) != 0) {
        fl_api_free(api);
        return -1;
    }
    snprintf(path, sizeof path, "%s/uploads", config->state_dir);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fl_api_free(api);
        return fl_fail(err, FL_EIO, "%s: %s", path, strerror(errno));
    }
    *out = api;
    return 0;
}

void fl_api_free(fl_api *api) {
    if (!api) return;
    for (int i = 0; i < api->n_pool; i++) fl_redis_close(api->pool[i]);
    fl_store_close(api->store);
    pthread_mutex_destroy(&api->lock);
    free(api);
}

static fl_redis *pool_get(fl_api *api, fl_error *err) {
    pthread_mutex_lock(&api->lock);
    fl_redis *r = api->n_pool > 0 ? api->pool[--api->n_pool] : NULL;
    pthread_mutex_unlock(&api->lock);
    if (r) return r;
    if (fl_redis_connect(api->cfg.redis_address, &r, err) != 0) {
        err->code = FL_EUNAVAILABLE;
        return NULL;
    }
    return r;
}

static void pool_put(fl_api *api, fl_redis *r) {
    if (!r) return;
    pthread_mutex_lock(&api->lock);
    if (api->n_pool < POOL_MAX) {
        api->pool[api->n_pool++] = r;
        r = NULL;
    }
    pthread_mutex_unlock(&api->lock);
    fl_redis_close(r);
}

/* ---- replies ---------------------------------------------------------------------------------- */

static int status_of(fl_error_code code) {
    switch (code) {
    case FL_EINVAL: return 400;
    case FL_EUNSUPPORTED: return 400;
    case FL_ENOTFOUND: return 404;
    case FL_ECONFLICT: return 409;
    case FL_ELIMIT: return 413;
    case FL_ENOMEM: return 413;
    case FL_EUNAVAILABLE: return 503;
    default: return 500;
    }
}

static void reply_err(fl_http_response *res, const fl_error *err) {
    fl_http_reply_error(res, status_of(err->code), fl_error_code_name(err->code), "%s", err->message);
}

static json_t *parse_json_or_null(const char *text) {
    if (!text) return json_null();
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    return v ? v : json_string(text);
}

/* ---- field validation -------------------------------------------------------------------------- */

/* Fails naming the first field of obj that is not in allowed. */
static int check_known_fields(json_t *obj, const char *const *allowed, fl_error *err) {
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++) ok = !strcmp(allowed[i], key);
        if (!ok) return fl_fail(err, FL_EINVAL, "field '%.64s' is not known", key);
    }
    return 0;
}

static int get_int(json_t *obj, const char *name, long long dflt, long long lo, long long hi, long long *out,
                   fl_error *err) {
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    double d = json_is_integer(v) ? (double)json_integer_value(v) : json_is_real(v) ? json_real_value(v) : NAN;
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi)
        return fl_fail(err, FL_EINVAL, "field '%s': expected an integer in [%lld, %lld]", name, lo, hi);
    *out = (long long)d;
    return 0;
}

static int get_num(json_t *obj, const char *name, double dflt, double lo, double hi, double *out, fl_error *err) {
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_number(v) || !(json_number_value(v) >= lo && json_number_value(v) <= hi))
        return fl_fail(err, FL_EINVAL, "field '%s': expected a number in [%g, %g]", name, lo, hi);
    *out = json_number_value(v);
    return 0;
}

static int get_str(json_t *obj, const char *name, bool required, size_t max_len, const char **out, fl_error *err) {
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required) return fl_fail(err, FL_EINVAL, "field '%s' is required", name);
        return 0;
    }
    if (!json_is_string(v)) return fl_fail(err, FL_EINVAL, "field '%s': expected a string", name);
    if (json_string_length(v) > max_len)
        return fl_fail(err, FL_EINVAL, "field '%s': longer than %zu bytes", name, max_len);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return fl_fail(err, FL_EINVAL, "field '%s': contains a NUL byte", name);
    *out = json_string_value(v);
    return 0;
}

static int get_bool(json_t *obj, const char *name, bool dflt, bool *out, fl_error *err) {
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v)) return fl_fail(err, FL_EINVAL, "field '%s': expected true or false", name);
    *out = json_is_true(v);
    return 0;
}

static bool one_word(const char *s) {
    if (!s || !*s) return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f) return false;
    return true;
}

/* The body as a JSON object; a multipart body's plain fields become its members (numbers and
 * booleans parsed when they look like them). */
static json_t *request_object(const fl_http_request *req, fl_error *err) {
    if (req->n_parts > 0 || (req->content_type && !strncmp(req->content_type, "multipart/", 10))) {
        json_t *o = json_object();
        for (size_t i = 0; i < req->n_parts; i++) {
            const fl_http_part *p = &req->parts[i];
            if (p->filename || !p->name) continue;
            char *text = fl_xmalloc(p->size + 1);
            memcpy(text, p->data, p->size);
            text[p->size] = '\0';
            json_error_t jerr;
            json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);
            if (!v || json_is_object(v) || json_is_array(v) || json_is_string(v)) {
                json_decref(v);
                v = json_string(text);
            }
            if (v) json_object_set_new(o, p->name, v);
            free(text);
        }
        return o;
    }
    if (!req->body || req->body_size == 0) {
        fl_fail(err, FL_EINVAL, "the request needs a JSON object body");
        return NULL;
    }
    json_error_t jerr;
    json_t *o = json_loadb((const char *)req->body, req->body_size, 0, &jerr);
    if (!o) {
        fl_fail(err, FL_EINVAL, "malformed JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        fl_fail(err, FL_EINVAL, "the body must be a JSON object");
        return NULL;
    }
    return o;
}

static json_t *adapter_json(const fl_adapter_info *a) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:I, s:I}", "id", a->id, "name", a->name,
                          "trigger_word", a->trigger, "base_model", a->base_model, "sha256", a->sha256, "format",
                          a->format, "source", a->source, "rank", a->rank, "alpha", a->alpha, "bytes",
                          (json_int_t)a->bytes, "created_ms", (json_int_t)a->created_ms);
    json_object_set_new(o, "metadata", a->metadata_json ? parse_json_or_null(a->metadata_json) : json_object());
    return o;
}

static char *base64(const unsigned char *data, size_t n) {
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = fl_xmalloc((n + 2) / 3 * 4 + 1), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < n ? (uint32_t)data[i + 1] << 8 : 0) | (i + 2 < n ? data[i + 2] : 0);
        *o++ = table[v >> 18 & 63];
        *o++ = table[v >> 12 & 63];
        *o++ = i + 1 < n ? table[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? table[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* ---- adapters -------------------------------------------------------------------------------------- */

/* An adapter of the tenant by id, else by name. */
static int find_adapter(fl_redis *r, const char *tenant, const char *id_or_name, fl_adapter_info *out, fl_error *err) {
    if (fl_registry_get(r, tenant, id_or_name, out, err) == 0) return 0;
    if (err->code != FL_ENOTFOUND && err->code != FL_EINVAL) return -1;
    if (fl_registry_lookup(r, tenant, id_or_name, out, err) == 0) return 0;
    if (err->code == FL_ENOTFOUND || err->code == FL_EINVAL)
        return fl_fail(err, FL_ENOTFOUND, "adapter '%.128s' not found", id_or_name);
    return -1;
}

static void adapters_list(fl_redis *r, const char *tenant, const fl_http_request *req, fl_http_response *res) {
    fl_error err = {0};
    long long offset = 0, limit = 50;
    const char *q_off = fl_http_query(req, "offset"), *q_lim = fl_http_query(req, "limit");
    char *end = NULL;
    if (q_off && ((offset = strtoll(q_off, &end, 10)) < 0 || *end))
        { fl_http_reply_error(res, 400, "invalid_input", "query 'offset': expected an integer >= 0"); return; }
    if (q_lim && ((limit = strtoll(q_lim, &end, 10)) < 1 || limit > 500 || *end))
        { fl_http_reply_error(res, 400, "invalid_input", "query 'limit': expected an integer in [1, 500]"); return; }
    fl_adapter_info *items = NULL;
    size_t n = 0, total = 0;
    if (fl_registry_list(r, tenant, (size_t)offset, (size_t)limit, &items, &n, &total, &err) != 0) {
        reply_err(res, &err);
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(list, adapter_json(&items[i]));
        fl_adapter_info_clear(&items[i]);
    }
    free(items);
    json_t *o = json_pack("{s:o, s:I, s:I}", "adapters", list, "total", (json_int_t)total, "offset", (json_int_t)offset);
    size_t next = (size_t)offset + n;
    json_object_set_new(o, "next_offset", next < total ? json_integer((json_int_t)next) : json_null());
    fl_http_reply_json(res, 200, o);
}

static void adapters_import(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                            fl_http_response *res) {
    fl_error err = {0};
    json_t *o = request_object(req, &err);
    if (!o) { reply_err(res, &err); return; }
    static const char *const allowed[] = {"name", "trigger_word", "url", NULL};
    const char *name = NULL, *trigger = NULL, *url = NULL;
    const fl_http_part *file = fl_http_part_get(req, "file");
    fl_adapter_info info;
    memset(&info, 0, sizeof info);
    int rc = check_known_fields(o, allowed, &err);
    if (rc == 0) rc = get_str(o, "name", false, FL_NAME_MAX - 1, &name, &err);
    if (rc == 0) rc = get_str(o, "trigger_word", false, FL_NAME_MAX - 1, &trigger, &err);
    if (rc == 0) rc = get_str(o, "url", false, 2048, &url, &err);
    if (rc == 0 && !file && !url)
        rc = fl_fail(&err, FL_EINVAL, "field 'file' (a multipart file) or 'url' is required");
    if (rc == 0 && file && url) rc = fl_fail(&err, FL_EINVAL, "give either 'file' or 'url', not both");
    if (rc == 0 && trigger && *trigger && !one_word(trigger))
        rc = fl_fail(&err, FL_EINVAL, "field 'trigger_word': must be one word");
    if (rc == 0) {
        snprintf(info.tenant, sizeof info.tenant, "%s", tenant);
        if (name) snprintf(info.name, sizeof info.name, "%s", name);
        if (trigger) snprintf(info.trigger, sizeof info.trigger, "%s", trigger);
        snprintf(info.base_model, sizeof info.base_model, "%s", api->cfg.base_model_hash);
        if (!url) snprintf(info.source, sizeof info.source, "upload"); /* a URL is recorded without its query */
        rc = url ? fl_registry_import_url(r, api->store, &api->cfg.params, url, api->cfg.allow_private_urls, &info, &err)
                 : fl_registry_import_bytes(r, api->store, &api->cfg.params, file->data, file->size, &info, &err);
    }
    json_decref(o);
    if (rc != 0) {
        fl_adapter_info_clear(&info);
        { reply_err(res, &err); return; }
    }
    fl_http_reply_json(res, 201, adapter_json(&info));
    fl_adapter_info_clear(&info);
}

static void adapters_one(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                         fl_http_response *res) {
    fl_error err = {0};
    fl_adapter_info info;
    if (find_adapter(r, tenant, id, &info, &err) != 0) { reply_err(res, &err); return; }
    if (!strcmp(req->method, "GET")) {
        fl_http_reply_json(res, 200, adapter_json(&info));
    } else if (fl_registry_delete(r, api->store, tenant, info.id, &err) != 0) {
        reply_err(res, &err);
    } else {
        fl_http_reply_json(res, 200, json_pack("{s:s}", "deleted", info.id));
    }
    fl_adapter_info_clear(&info);
}

/* ---- jobs ------------------------------------------------------------------------------------------- */

static void reply_accepted(fl_http_response *res, const char *job_id) {
    char status_url[160], events_url[160];
    snprintf(status_url, sizeof status_url, "/v1/jobs/%s", job_id);
    snprintf(events_url, sizeof events_url, "/v1/jobs/%s/events", job_id);
    fl_http_add_header(res, "Location", status_url);
    fl_http_reply_json(res, 202, json_pack("{s:s, s:s, s:s, s:s}", "job_id", job_id, "status", "queued",
                                           "status_url", status_url, "events_url", events_url));
}

static void reply_queue_full(fl_api *api, fl_http_response *res, const char *kind, long max) {
    char retry[16];
    snprintf(retry, sizeof retry, "%d", api->cfg.retry_after_s);
    fl_http_reply_error(res, 429, "queue_full", "the %s queue is full (%ld jobs waiting or running); retry later", kind,
                        max);
    fl_http_add_header(res, "Retry-After", retry);
}

static void trainings_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                             fl_http_response *res) {
    fl_error err = {0};
    json_t *o = request_object(req, &err);
    if (!o) { reply_err(res, &err); return; }
    static const char *const allowed[] = {"images_url", "trigger_word", "name", "steps", "rank", "alpha",
                                          "learning_rate", "resolution", "caption", "is_style", "buckets", "seed",
                                          "batch_size", "targets", NULL};
    const fl_http_part *archive = fl_http_part_get(req, "images");
    const char *url = NULL, *trigger = NULL, *name = NULL, *caption = NULL, *targets = NULL;
    long long steps = 0, rank = 0, resolution = 0, seed = 0, batch = 0;
    double alpha = 0, lr = 0;
    bool is_style = false, buckets = false;
    int rc = check_known_fields(o, allowed, &err);
    if (rc == 0) rc = get_str(o, "images_url", false, 2048, &url, &err);
    if (rc == 0) rc = get_str(o, "trigger_word", true, 64, &trigger, &err);
    if (rc == 0 && !one_word(trigger)) rc = fl_fail(&err, FL_EINVAL, "field 'trigger_word': must be one word");
    if (rc == 0) rc = get_str(o, "name", false, FL_NAME_MAX - 1, &name, &err);
    if (rc == 0) rc = get_str(o, "caption", false, 1000, &caption, &err);
    if (rc == 0) rc = get_str(o, "targets", false, 500, &targets, &err);
    if (rc == 0) rc = get_int(o, "steps", 300, 1, api->cfg.max_train_steps, &steps, &err);
    if (rc == 0) rc = get_int(o, "rank", 16, 1, api->cfg.max_rank, &rank, &err);
    if (rc == 0) rc = get_num(o, "alpha", (double)rank, 1e-6, 1e6, &alpha, &err);
    if (rc == 0) rc = get_num(o, "learning_rate", 4e-4, 1e-9, 1.0, &lr, &err);
    if (rc == 0) rc = get_int(o, "resolution", 64, api->patch, api->cfg.max_resolution, &resolution, &err);
    if (rc == 0 && resolution % api->patch)
        rc = fl_fail(&err, FL_EINVAL, "field 'resolution': must be a multiple of %d", api->patch);
    if (rc == 0) rc = get_int(o, "seed", 0, 0, (1LL << 53), &seed, &err);
    if (rc == 0) rc = get_int(o, "batch_size", 1, 1, 16, &batch, &err);
    if (rc == 0) rc = get_bool(o, "is_style", false, &is_style, &err);
    if (rc == 0) rc = get_bool(o, "buckets", false, &buckets, &err);
    if (rc == 0 && name && *name) {
        fl_adapter_info taken;
        fl_error e2 = {0};
        if (fl_registry_lookup(r, tenant, name, &taken, &e2) == 0) {
            fl_adapter_info_clear(&taken);
            rc = fl_fail(&err, FL_ECONFLICT, "field 'name': this tenant already has an adapter named '%s'", name);
        }
    }
    if (rc == 0 && !archive && !url)
        rc = fl_fail(&err, FL_EINVAL, "an 'images' archive (multipart file) or 'images_url' is required");
    if (rc == 0 && archive && url) rc = fl_fail(&err, FL_EINVAL, "give either 'images' or 'images_url', not both");
    if (rc == 0 && url && strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
        rc = fl_fail(&err, FL_EINVAL, "field 'images_url': only http and https URLs are fetched");
    char job_id[FL_ID_MAX];
    fl_jobs_new_id("job", job_id);
    char upload_path[4500] = "";
    if (rc == 0 && archive) {
        /* Validate the set now, so a broken upload is a 400 and not a failed job. */
        fl_imageset_limits limits = fl_imageset_limits_default();
        fl_imageset *set = NULL;
        const char *label = archive->filename && *archive->filename ? archive->filename : "images.zip";
        rc = fl_imageset_load_memory(archive->data, archive->size, label, &limits, &set, &err);
        fl_imageset_free(set);
        const char *ext = strstr(label, ".tar.gz") ? ".tar.gz" : strrchr(label, '.') ? strrchr(label, '.') : ".zip";
        char dir[4200], file[160];
        snprintf(dir, sizeof dir, "%s/uploads", api->cfg.state_dir);
        snprintf(file, sizeof file, "%s%.10s", job_id, ext);
        snprintf(upload_path, sizeof upload_path, "%s/%s", dir, file);
        if (rc == 0) rc = fl_write_file_atomic(upload_path, archive->data, archive->size, &err);
        if (rc != 0) upload_path[0] = '\0';
    }
    if (rc != 0) {
        json_decref(o);
        { reply_err(res, &err); return; }
    }
    json_t *job = json_pack("{s:s, s:s, s:I, s:I, s:f, s:f, s:I, s:I, s:I, s:b, s:b}", "images",
                            archive ? upload_path : url, "trigger_word", trigger, "steps", (json_int_t)steps, "rank",
                            (json_int_t)rank, "alpha", alpha, "learning_rate", lr, "resolution",
                            (json_int_t)resolution, "seed", (json_int_t)seed, "batch_size", (json_int_t)batch,
                            "is_style", is_style, "buckets", buckets);
    json_object_set_new(job, "source", json_string(archive ? "upload" : url));
    if (name) json_object_set_new(job, "name", json_string(name));
    if (caption) json_object_set_new(job, "caption", json_string(caption));
    if (targets) json_object_set_new(job, "targets", json_string(targets));
    json_decref(o);
    char *text = json_dumps(job, JSON_COMPACT);
    json_decref(job);
    bool full = false;
    rc = fl_jobs_enqueue(r, FL_JOB_TRAIN, job_id, tenant, text, api->cfg.max_pending_train, &full, &err);
    free(text);
    if (rc != 0 || full) {
        if (*upload_path) unlink(upload_path);
        if (rc != 0) { reply_err(res, &err); return; }
        { reply_queue_full(api, res, "training", api->cfg.max_pending_train); return; }
    }
    reply_accepted(res, job_id);
}

/* The job as the API shows it: internal paths left out. */
static json_t *job_json(const fl_job *job) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:I, s:I}", "id", job->id, "kind", fl_job_kind_name(job->kind),
                          "state", job->state, "attempts", job->attempts, "created_ms", (json_int_t)job->created_ms,
                          "updated_ms", (json_int_t)job->updated_ms);
    json_t *request = parse_json_or_null(job->request_json);
    if (json_is_object(request) && json_object_get(request, "source")) {
        json_object_set(request, "images", json_object_get(request, "source"));
        json_object_del(request, "source");
    }
    json_object_set_new(o, "request", request);
    if (job->kind == FL_JOB_TRAIN)
        json_object_set_new(o, "progress", json_pack("{s:i, s:i, s:f, s:f}", "step", job->step, "total", job->total,
                                                     "loss", job->loss, "eta_s", job->eta_s));
    json_object_set_new(o, "result", parse_json_or_null(job->result_json));
    json_object_set_new(o, "error", parse_json_or_null(job->error_json));
    return o;
}

static void jobs_get(fl_redis *r, const char *tenant, const char *id, fl_http_response *res) {
    fl_error err = {0};
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { reply_err(res, &err); return; }
    fl_http_reply_json(res, 200, job_json(&job));
    fl_job_clear(&job);
}

/* Server-sent events: one Redis connection per stream, XREAD BLOCK on the job's event stream. */
typedef struct event_stream {
    fl_redis *r;
    char key[160];
    char last_id[64];
    char *buf;
    size_t len, off, cap;
    bool ended;
    int64_t last_send_ms;
} event_stream;

static void event_stream_free(void *arg) {
    event_stream *es = arg;
    fl_redis_close(es->r);
    free(es->buf);
    free(es);
}

static void es_append(event_stream *es, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void es_append(event_stream *es, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(es->buf ? es->buf + es->len : NULL, es->buf ? es->cap - es->len : 0, fmt, ap);
        va_end(ap);
        if (es->buf && es->len + (size_t)n < es->cap) {
            es->len += (size_t)n;
            return;
        }
        es->cap = (es->cap + (size_t)n + 1) * 2;
        es->buf = fl_xrealloc(es->buf, es->cap);
    }
}

static ssize_t event_stream_read(void *arg, char *out, size_t max) {
    event_stream *es = arg;
    if (es->off < es->len) {
        size_t n = es->len - es->off < max ? es->len - es->off : max;
        memcpy(out, es->buf + es->off, n);
        es->off += n;
        return (ssize_t)n;
    }
    if (es->ended) return -1;
    es->len = es->off = 0;
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(es->r, &err, "XREAD COUNT 64 BLOCK 1000 STREAMS %s %s", es->key, es->last_id);
    if (!rep) {
        es_append(es, "event: error\ndata: {\"code\":\"unavailable\",\"message\":\"event store unreachable\"}\n\n");
        es->ended = true;
        return event_stream_read(arg, out, max);
    }
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 && rep->element[0]->elements >= 2) {
        const redisReply *entries = rep->element[0]->element[1];
        for (size_t i = 0; i < entries->elements; i++) {
            const redisReply *e = entries->element[i];
            if (e->elements < 2) continue;
            snprintf(es->last_id, sizeof es->last_id, "%s", e->element[0]->str);
            const redisReply *fields = e->element[1];
            for (size_t k = 0; k + 1 < fields->elements; k += 2) {
                if (strcmp(fields->element[k]->str, "data") != 0) continue;
                const char *data = fields->element[k + 1]->str;
                json_error_t jerr;
                json_t *ev = json_loads(data, 0, &jerr);
                const char *type = ev ? json_string_value(json_object_get(ev, "event")) : NULL;
                es_append(es, "id: %s\nevent: %s\ndata: %s\n\n", es->last_id, type ? type : "message", data);
                if (type && (!strcmp(type, "succeeded") || !strcmp(type, "failed"))) es->ended = true;
                json_decref(ev);
            }
        }
    }
    freeReplyObject(rep);
    if (es->len == 0 && fl_now_ms() - es->last_send_ms > 15000) es_append(es, ": keep-alive\n\n");
    if (es->len == 0) return 0;
    es->last_send_ms = fl_now_ms();
    size_t n = es->len < max ? es->len : max;
    memcpy(out, es->buf, n);
    es->off = n;
    return (ssize_t)n;
}

static void jobs_events(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                        fl_http_response *res) {
    fl_error err = {0};
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { reply_err(res, &err); return; }
    fl_job_clear(&job);
    event_stream *es = fl_xcalloc(1, sizeof *es);
    if (fl_redis_connect(api->cfg.redis_address, &es->r, &err) != 0) {
        free(es);
        err.code = FL_EUNAVAILABLE;
        { reply_err(res, &err); return; }
    }
    snprintf(es->key, sizeof es->key, "fl:job:%s:events", id);
    const char *last = fl_http_header(req, "Last-Event-ID");
    bool valid_last = last && *last && strlen(last) < sizeof es->last_id && strspn(last, "0123456789-") == strlen(last);
    snprintf(es->last_id, sizeof es->last_id, "%s", valid_last ? last : "0-0");
    es->last_send_ms = fl_now_ms();
    res->status = 200;
    res->content_type = "text/event-stream";
    fl_http_add_header(res, "Cache-Control", "no-cache");
    res->stream = event_stream_read;
    res->stream_arg = es;
    res->stream_free = event_stream_free;
}

/* Waits for a job's terminal event on its event stream. Returns 0 when it ended, 1 on timeout. */
static int wait_for_job(fl_api *api, const char *id, int timeout_s, fl_error *err) {
    fl_redis *r = NULL;
    if (fl_redis_connect(api->cfg.redis_address, &r, err) != 0) return -1;
    char key[160], last[64] = "0-0";
    snprintf(key, sizeof key, "fl:job:%s:events", id);
    int64_t deadline = fl_now_ms() + (int64_t)timeout_s * 1000;
    int rc = 1;
    while (rc == 1 && fl_now_ms() < deadline) {
        redisReply *rep = fl_redis_cmd(r, err, "XREAD COUNT 64 BLOCK 1000 STREAMS %s %s", key, last);
        if (!rep) {
            rc = -1;
            break;
        }
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 && rep->element[0]->elements >= 2) {
            const redisReply *entries = rep->element[0]->element[1];
            for (size_t i = 0; i < entries->elements; i++) {
                const redisReply *e = entries->element[i];
                snprintf(last, sizeof last, "%s", e->element[0]->str);
                for (size_t k = 0; k + 1 < e->element[1]->elements; k += 2) {
                    const char *data = e->element[1]->element[k + 1]->str;
                    if (strstr(data, "\"event\":\"succeeded\"") || strstr(data, "\"event\":\"failed\"")) rc = 0;
                }
            }
        }
        freeReplyObject(rep);
    }
    fl_redis_close(r);
    return rc;
}

static void reply_sync_result(fl_api *api, fl_redis *r, const char *tenant, const char *id, fl_http_response *res) {
    fl_error err = {0};
    int w = wait_for_job(api, id, api->cfg.sync_timeout_s, &err);
    if (w < 0) { reply_err(res, &err); return; }
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { reply_err(res, &err); return; }
    if (w == 1) {
        fl_job_clear(&job);
        fl_http_reply_error(res, 504, "timeout", "job %s did not finish within %d s; follow it at /v1/jobs/%s", id,
                            api->cfg.sync_timeout_s, id);
        return;
    }
    if (strcmp(job.state, "succeeded") != 0) {
        json_t *e = parse_json_or_null(job.error_json);
        const char *code = json_string_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        fl_http_reply_error(res, code && !strcmp(code, "invalid_input") ? 400 : 500, code ? code : "failed",
                            "job %s failed: %s", id, msg ? msg : "unknown reason");
        json_decref(e);
        fl_job_clear(&job);
        return;
    }
    json_t *result = parse_json_or_null(job.result_json);
    json_t *images = json_object_get(result, "images");
    size_t i;
    json_t *img;
    json_array_foreach(images, i, img) {
        char path[4300];
        snprintf(path, sizeof path, "%s/images/%s.png", api->cfg.state_dir, json_string_value(json_object_get(img, "id")));
        size_t size = 0;
        unsigned char *png = NULL;
        fl_error ignored = {0};
        if (fl_read_file(path, MAX_IMAGE_BYTES, &png, &size, &ignored) == 0) {
            char *b64 = base64(png, size);
            json_object_set_new(img, "png_base64", json_string(b64));
            free(b64);
            free(png);
        }
    }
    json_object_set_new(result, "job_id", json_string(id));
    fl_job_clear(&job);
    fl_http_reply_json(res, 200, result);
}

static void generations_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                               fl_http_response *res) {
    fl_error err = {0};
    json_t *o = request_object(req, &err);
    if (!o) { reply_err(res, &err); return; }
    static const char *const allowed[] = {"prompt", "adapters", "width", "height", "steps", "guidance", "seed",
                                          "num_images", "sync", NULL};
    const char *prompt = NULL;
    long long width = 0, height = 0, steps = 0, seed = 0, num_images = 0;
    double guidance = 0;
    bool sync = false;
    unsigned long long random_seed = 0;
    if (getrandom(&random_seed, sizeof random_seed, 0) != sizeof random_seed) random_seed = (unsigned long long)time(NULL);
    int rc = check_known_fields(o, allowed, &err);
    if (rc == 0) rc = get_str(o, "prompt", true, 4000, &prompt, &err);
    if (rc == 0) rc = get_int(o, "width", 64, api->patch, api->cfg.max_resolution, &width, &err);
    if (rc == 0) rc = get_int(o, "height", 64, api->patch, api->cfg.max_resolution, &height, &err);
    if (rc == 0 && width % api->patch) rc = fl_fail(&err, FL_EINVAL, "field 'width': must be a multiple of %d", api->patch);
    if (rc == 0 && height % api->patch) rc = fl_fail(&err, FL_EINVAL, "field 'height': must be a multiple of %d", api->patch);
    if (rc == 0) rc = get_int(o, "steps", 20, 1, api->cfg.max_generation_steps, &steps, &err);
    if (rc == 0) rc = get_num(o, "guidance", 1.0, 0.0, 100.0, &guidance, &err);
    if (rc == 0) rc = get_int(o, "seed", (long long)(random_seed >> 12), 0, (1LL << 53), &seed, &err);
    if (rc == 0) rc = get_int(o, "num_images", 1, 1, api->cfg.max_num_images, &num_images, &err);
    if (rc == 0) rc = get_bool(o, "sync", false, &sync, &err);
    json_t *adapters = json_array();
    json_t *given = json_object_get(o, "adapters");
    if (rc == 0 && given && !json_is_null(given) && !json_is_array(given))
        rc = fl_fail(&err, FL_EINVAL, "field 'adapters': expected an array of {id, scale}");
    if (rc == 0 && json_array_size(given) > 8) rc = fl_fail(&err, FL_ELIMIT, "field 'adapters': at most 8 per request");
    for (size_t i = 0; rc == 0 && i < json_array_size(given); i++) {
        json_t *a = json_array_get(given, i);
        char field[48];
        snprintf(field, sizeof field, "adapters[%zu]", i);
        const char *id = json_string_value(json_object_get(a, "id"));
        json_t *scale_v = json_object_get(a, "scale");
        if (!json_is_object(a) || !id)
            rc = fl_fail(&err, FL_EINVAL, "field '%s': expected an object with a string 'id'", field);
        else if (json_object_size(a) > (scale_v ? 2u : 1u))
            rc = fl_fail(&err, FL_EINVAL, "field '%s': only 'id' and 'scale' are known", field);
        else if (scale_v && !(json_is_number(scale_v) && fabs(json_number_value(scale_v)) <= 8.0))
            rc = fl_fail(&err, FL_EINVAL, "field '%s.scale': expected a number in [-8, 8]", field);
        if (rc != 0) break;
        fl_adapter_info info;
        if (find_adapter(r, tenant, id, &info, &err) != 0) {
            rc = -1;
            break;
        }
        if (strcmp(info.base_model, api->cfg.base_model_hash) != 0) {
            rc = fl_fail(&err, FL_EINVAL, "field '%s': adapter %s was made for base model %.12s, not %.12s", field,
                         info.id, info.base_model, api->cfg.base_model_hash);
        } else {
            json_array_append_new(adapters, json_pack("{s:s, s:s, s:f}", "id", info.id, "sha256", info.sha256, "scale",
                                                      scale_v ? json_number_value(scale_v) : 1.0));
        }
        fl_adapter_info_clear(&info);
    }
    if (rc != 0) {
        json_decref(adapters);
        json_decref(o);
        { reply_err(res, &err); return; }
    }
    json_t *job = json_pack("{s:s, s:o, s:I, s:I, s:I, s:f, s:I, s:I, s:i}", "prompt", prompt, "adapters", adapters,
                            "width", (json_int_t)width, "height", (json_int_t)height, "steps", (json_int_t)steps,
                            "guidance", guidance, "seed", (json_int_t)seed, "num_images", (json_int_t)num_images,
                            "max_text_tokens", api->cfg.max_text_tokens);
    json_decref(o);
    char *text = json_dumps(job, JSON_COMPACT);
    json_decref(job);
    char job_id[FL_ID_MAX];
    fl_jobs_new_id("job", job_id);
    bool full = false;
    rc = fl_jobs_enqueue(r, FL_JOB_GENERATE, job_id, tenant, text, api->cfg.max_pending_generate, &full, &err);
    free(text);
    if (rc != 0) { reply_err(res, &err); return; }
    if (full) { reply_queue_full(api, res, "generation", api->cfg.max_pending_generate); return; }
    if (sync) { reply_sync_result(api, r, tenant, job_id, res); return; }
    reply_accepted(res, job_id);
}

static void images_get(fl_api *api, fl_redis *r, const char *tenant, const char *name, fl_http_response *res) {
    fl_error err = {0};
    size_t n = strlen(name);
    if (n < 5 || n > 60 || strcmp(name + n - 4, ".png") != 0)
        { fl_http_reply_error(res, 404, "not_found", "no image '%.64s'", name); return; }
    char id[64];
    snprintf(id, sizeof id, "%.*s", (int)(n - 4), name);
    if (strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(id))
        { fl_http_reply_error(res, 404, "not_found", "no image '%.64s'", name); return; }
    redisReply *rep = fl_redis_cmd(r, &err, "HGET fl:image:%s tenant", id);
    if (!rep) { reply_err(res, &err); return; }
    bool mine = rep->type == REDIS_REPLY_STRING && !strcmp(rep->str, tenant);
    freeReplyObject(rep);
    if (!mine) { fl_http_reply_error(res, 404, "not_found", "no image '%s'", name); return; }
    char path[4300];
    snprintf(path, sizeof path, "%s/images/%s.png", api->cfg.state_dir, id);
    size_t size = 0;
    unsigned char *png = NULL;
    if (fl_read_file(path, MAX_IMAGE_BYTES, &png, &size, &err) != 0) {
        fl_http_reply_error(res, 404, "not_found", "image '%s' is no longer stored", name);
        return;
    }
    fl_http_reply_bytes(res, 200, "image/png", png, size);
    free(png);
}

/* ---- health and metrics ------------------------------------------------------------------------------ */

static void healthz(fl_api *api, fl_http_response *res) {
    fl_error err = {0};
    fl_redis *r = pool_get(api, &err);
    redisReply *rep = r ? fl_redis_cmd(r, &err, "PING") : NULL;
    if (!rep) {
        pool_put(api, r);
        {
            fl_http_reply_json(res, 503, json_pack("{s:s, s:s}", "status", "unavailable", "redis", err.message));
            return;
        }
    }
    freeReplyObject(rep);
    long long workers = 0, gen = 0, train = 0;
    if ((rep = fl_redis_cmd(r, &err, "SCARD fl:workers"))) {
        workers = rep->integer;
        freeReplyObject(rep);
    }
    fl_jobs_pending(r, FL_JOB_GENERATE, &gen, &err);
    fl_jobs_pending(r, FL_JOB_TRAIN, &train, &err);
    pool_put(api, r);
    fl_http_reply_json(res, 200, json_pack("{s:s, s:s, s:I, s:{s:I, s:I}, s:s}", "status", "ok", "redis", "ok",
                                           "workers", (json_int_t)workers, "pending", "generate", (json_int_t)gen,
                                           "train", (json_int_t)train, "base_model", api->cfg.base_model_hash));
}

static void metrics(fl_api *api, fl_http_response *res) {
    char *text = NULL;
    size_t len = 0, cap = 0;
    fl_metrics_render(api->cfg.metrics, &text, &len, &cap);
    fl_error err = {0};
    fl_redis *r = pool_get(api, &err);
    if (r) {
        long long gen = 0, train = 0;
        fl_jobs_pending(r, FL_JOB_GENERATE, &gen, &err);
        fl_jobs_pending(r, FL_JOB_TRAIN, &train, &err);
        fl_metrics_appendf(&text, &len, &cap,
                           "# HELP flashlora_queue_depth Jobs accepted and not finished, by queue.\n"
                           "# TYPE flashlora_queue_depth gauge\nflashlora_queue_depth{queue=\"generate\"} %lld\n"
                           "flashlora_queue_depth{queue=\"train\"} %lld\n",
                           gen, train);
        redisReply *rep = fl_redis_cmd(r, &err, "HGETALL fl:jobs:states");
        fl_metrics_appendf(&text, &len, &cap,
                           "# HELP flashlora_jobs Jobs by state.\n# TYPE flashlora_jobs gauge\n");
        const char *states[] = {"queued", "running", "succeeded", "failed"};
        for (int s = 0; s < 4; s++) {
            long long v = 0;
            for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2)
                if (!strcmp(rep->element[i]->str, states[s])) v = atoll(rep->element[i + 1]->str);
            fl_metrics_appendf(&text, &len, &cap, "flashlora_jobs{state=\"%s\"} %lld\n", states[s], v);
        }
        if (rep) freeReplyObject(rep);
        /* Adapter caches: summed over the live workers' heartbeats. */
        long long hits = 0, misses = 0, evictions = 0, resident = 0, resident_bytes = 0, workers = 0;
        rep = fl_redis_cmd(r, &err, "SMEMBERS fl:workers");
        for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
            redisReply *h = fl_redis_cmd(r, &err, "HMGET fl:worker:%s cache_hits cache_misses cache_evictions "
                                                  "resident_adapters resident_bytes",
                                         rep->element[i]->str);
            if (h && h->type == REDIS_REPLY_ARRAY && h->elements == 5 && h->element[0]->type == REDIS_REPLY_STRING) {
                workers++;
                hits += atoll(h->element[0]->str);
                misses += atoll(h->element[1]->str);
                evictions += atoll(h->element[2]->str);
                resident += atoll(h->element[3]->str);
                resident_bytes += atoll(h->element[4]->str);
            } else {
                redisReply *d = fl_redis_cmd(r, &err, "SREM fl:workers %s", rep->element[i]->str); /* expired */
                if (d) freeReplyObject(d);
            }
            if (h) freeReplyObject(h);
        }
        if (rep) freeReplyObject(rep);
        fl_metrics_appendf(&text, &len, &cap,
                           "# HELP flashlora_workers Workers with a live heartbeat.\n# TYPE flashlora_workers gauge\n"
                           "flashlora_workers %lld\n"
                           "# HELP flashlora_adapter_cache_hits_total Adapter cache hits of all workers.\n"
                           "# TYPE flashlora_adapter_cache_hits_total counter\nflashlora_adapter_cache_hits_total %lld\n"
                           "# HELP flashlora_adapter_cache_misses_total Adapter cache misses of all workers.\n"
                           "# TYPE flashlora_adapter_cache_misses_total counter\n"
                           "flashlora_adapter_cache_misses_total %lld\n"
                           "# HELP flashlora_adapter_cache_evictions_total Adapters evicted from worker caches.\n"
                           "# TYPE flashlora_adapter_cache_evictions_total counter\n"
                           "flashlora_adapter_cache_evictions_total %lld\n"
                           "# HELP flashlora_resident_adapters Adapters held in worker caches.\n"
                           "# TYPE flashlora_resident_adapters gauge\nflashlora_resident_adapters %lld\n"
                           "# HELP flashlora_resident_adapter_bytes Bytes of adapters held in worker caches.\n"
                           "# TYPE flashlora_resident_adapter_bytes gauge\nflashlora_resident_adapter_bytes %lld\n",
                           workers, hits, misses, evictions, resident, resident_bytes);
        pool_put(api, r);
    } else {
        fl_metrics_appendf(&text, &len, &cap, "# redis unreachable: %s\n", err.message);
    }
    fl_http_reply_bytes(res, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}

/* ---- routing ---------------------------------------------------------------------------------------- */

static bool method_is(const fl_http_request *req, const char *m) {
    return !strcmp(req->method, m);
}

static void not_allowed(fl_http_response *res, const char *allow) {
    fl_http_reply_error(res, 405, "method_not_allowed", "allowed here: %s", allow);
    fl_http_add_header(res, "Allow", allow);
}

/* Splits "/v1/<collection>/<id>/<tail>"; the id may be empty. Returns false when the path has
 * more segments. */
static bool split_path(const char *path, char *collection, char *id, char *tail) {
    collection[0] = id[0] = tail[0] = '\0';
    if (strncmp(path, "/v1/", 4) != 0) return false;
    const char *p = path + 4;
    char parts[3][128] = {"", "", ""};
    for (int i = 0; i < 3 && *p; i++) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n >= sizeof parts[i]) return false;
        memcpy(parts[i], p, n);
        parts[i][n] = '\0';
        p = slash ? slash + 1 : p + n;
        if (i == 2 && *p) return false;
    }
    if (*p) return false;
    strcpy(collection, parts[0]);
    strcpy(id, parts[1]);
    strcpy(tail, parts[2]);
    return true;
}

static void route(fl_api *api, const fl_http_request *req, fl_http_response *res, const char **label) {
    if (!strcmp(req->path, "/healthz")) {
        *label = "GET /healthz";
        { method_is(req, "GET") ? healthz(api, res) : not_allowed(res, "GET"); return; }
    }
    if (!strcmp(req->path, "/metrics")) {
        *label = "GET /metrics";
        { method_is(req, "GET") ? metrics(api, res) : not_allowed(res, "GET"); return; }
    }
    char collection[128], id[128], tail[128];
    if (!split_path(req->path, collection, id, tail)) {
        *label = "other";
        { fl_http_reply_error(res, 404, "not_found", "no route %.200s", req->path); return; }
    }
    fl_error err = {0};
    fl_redis *r = pool_get(api, &err);
    if (!r) {
        *label = "other";
        { reply_err(res, &err); return; }
    }
    char tenant[FL_TENANT_MAX];
    if (fl_auth_tenant(r, req->authorization, tenant, &err) != 0) {
        *label = "unauthorized";
        if (err.code == FL_EINVAL) {
            fl_http_reply_error(res, 401, "unauthorized", "%s", err.message);
            fl_http_add_header(res, "WWW-Authenticate", "Bearer");
        } else {
            reply_err(res, &err);
        }
        pool_put(api, r);
        return;
    }
    if (!strcmp(collection, "trainings") && !*id) {
        *label = "POST /v1/trainings";
        method_is(req, "POST") ? trainings_create(api, r, tenant, req, res) : not_allowed(res, "POST");
    } else if (!strcmp(collection, "generations") && !*id) {
        *label = "POST /v1/generations";
        method_is(req, "POST") ? generations_create(api, r, tenant, req, res) : not_allowed(res, "POST");
    } else if (!strcmp(collection, "jobs") && *id && !*tail) {
        *label = "GET /v1/jobs/{id}";
        method_is(req, "GET") ? jobs_get(r, tenant, id, res) : not_allowed(res, "GET");
    } else if (!strcmp(collection, "jobs") && *id && !strcmp(tail, "events")) {
        *label = "GET /v1/jobs/{id}/events";
        method_is(req, "GET") ? jobs_events(api, r, tenant, id, req, res) : not_allowed(res, "GET");
    } else if (!strcmp(collection, "images") && *id && !*tail) {
        *label = "GET /v1/images/{id}";
        method_is(req, "GET") ? images_get(api, r, tenant, id, res) : not_allowed(res, "GET");
    } else if (!strcmp(collection, "adapters") && !*id) {
        *label = method_is(req, "POST") ? "POST /v1/adapters" : "GET /v1/adapters";
        if (method_is(req, "GET")) adapters_list(r, tenant, req, res);
        else if (method_is(req, "POST")) adapters_import(api, r, tenant, req, res);
        else not_allowed(res, "GET, POST");
    } else if (!strcmp(collection, "adapters") && *id && !*tail) {
        *label = method_is(req, "DELETE") ? "DELETE /v1/adapters/{id}" : "GET /v1/adapters/{id}";
        if (method_is(req, "GET") || method_is(req, "DELETE")) adapters_one(api, r, tenant, id, req, res);
        else not_allowed(res, "GET, DELETE");
    } else {
        *label = "other";
        fl_http_reply_error(res, 404, "not_found", "no route %.200s", req->path);
    }
    pool_put(api, r);
}

void fl_api_handle(void *app, const fl_http_request *req, fl_http_response *res) {
    fl_api *api = app;
    double t0 = fl_monotonic_s();
    const char *label = "other";
    route(api, req, res, &label);
    fl_metrics_observe_http(api->cfg.metrics, label, res->status ? res->status : 200, fl_monotonic_s() - t0);
    if (res->status >= 500) fl_log_warn("%s %s -> %d", req->method, req->path, res->status);
}
