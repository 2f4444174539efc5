/*
 * api.c — the HTTP API's state, its Redis connection pool, the mapping of errors to statuses, and
 * the routing (see api.h). Each route's handler lives with its resource: api_adapters.c,
 * api_jobs.c (trainings, generations, jobs, images) and api_ops.c (health, metrics). Handlers run
 * on the HTTP layer's connection threads and take Redis connections from a small pool.
 */
#include "serve/api.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/utf8.h"
#include "serve/api_internal.h"
#include "serve/auth.h"

fl_api_config fl_api_config_default(void) {
    fl_api_config c;
    memset(&c, 0, sizeof c);
    c.max_pending_generate = 64;
    c.max_pending_train = 8;
    c.max_pending_generate_tenant = 16;
    c.max_pending_train_tenant = 2;
    c.job_retention_s = 7L * 24 * 3600;
    c.jobs_per_tenant = 10000;
    c.max_resolution = 1024;
    c.max_generation_steps = 100;
    c.max_num_images = 8;
    c.max_train_steps = 5000;
    c.max_rank = 128;
    c.max_batch_size = 16;
    c.default_size = 64;
    c.max_text_tokens = 32;
    c.sync_timeout_s = 120;
    c.retry_after_s = 2;
    return c;
}

int fl_api_create(const fl_api_config *config, fl_api **out, fl_error *err) {
    fl_api *api = fl_xcalloc(1, sizeof *api);
    api->cfg = *config;
    pthread_mutex_init(&api->lock, NULL);
    int patch = fl_flux_pixel_patch(&config->params);
    api->limits = fl_request_limits_default();
    api->limits.patch = patch > 0 ? patch : 1;
    api->limits.default_size = config->default_size > 0 ? config->default_size : 64;
    api->limits.max_resolution = config->max_resolution;
    api->limits.max_generation_steps = config->max_generation_steps;
    api->limits.max_num_images = config->max_num_images;
    api->limits.max_train_steps = config->max_train_steps;
    api->limits.max_rank = config->max_rank;
    api->limits.max_batch_size = config->max_batch_size;
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

fl_redis *fl_api_pool_get(fl_api *api, fl_error *err) {
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

void fl_api_pool_put(fl_api *api, fl_redis *r) {
    if (!r) return;
    pthread_mutex_lock(&api->lock);
    if (api->n_pool < FL_API_POOL_MAX) {
        api->pool[api->n_pool++] = r;
        r = NULL;
    }
    pthread_mutex_unlock(&api->lock);
    fl_redis_close(r);
}

/* ---- replies ---------------------------------------------------------------------------------- */

int fl_api_status_of(fl_error_code code) {
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

void fl_api_reply_err(fl_http_response *res, const fl_error *err) {
    fl_http_reply_error(res, fl_api_status_of(err->code), fl_error_code_name(err->code), "%s", err->message);
}

json_t *fl_api_json_or_null(const char *text) {
    if (!text) return json_null();
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    return v ? v : json_string(text);
}

/* ---- request bodies ------------------------------------------------------------------------------ */

json_t *fl_api_request_object(const fl_http_request *req, fl_req_source *source, fl_error *err) {
    if (req->n_parts > 0 || (req->content_type && !strncasecmp(req->content_type, "multipart/", 10))) {
        *source = FL_REQ_CLIENT_FORM;
        json_t *o = json_object();
        for (size_t i = 0; i < req->n_parts; i++) {
            const fl_http_part *p = &req->parts[i];
            if (p->filename || !p->name) continue;
            char shown[80];
            fl_utf8_display(p->name, 64, shown, sizeof shown);
            json_t *v = json_stringn((const char *)p->data, p->size);
            if (!v || strlen(p->name) == 0) {
                json_decref(v);
                json_decref(o);
                fl_fail(err, FL_EINVAL, v ? "a form field has no name" : "field '%s' is not valid UTF-8", shown);
                return NULL;
            }
            if (json_object_get(o, p->name)) {
                json_decref(v);
                json_decref(o);
                fl_fail(err, FL_EINVAL, "field '%s' is given twice", shown);
                return NULL;
            }
            json_object_set_new(o, p->name, v);
        }
        return o;
    }
    *source = FL_REQ_CLIENT_JSON;
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
        { method_is(req, "GET") ? fl_api_healthz(api, res) : not_allowed(res, "GET"); return; }
    }
    if (!strcmp(req->path, "/metrics")) {
        *label = "GET /metrics";
        { method_is(req, "GET") ? fl_api_metrics(api, res) : not_allowed(res, "GET"); return; }
    }
    char collection[128], id[128], tail[128];
    if (!split_path(req->path, collection, id, tail)) {
        *label = "other";
        { fl_http_reply_error(res, 404, "not_found", "no route %.200s", req->path); return; }
    }
    fl_error err = {0};
    fl_redis *r = fl_api_pool_get(api, &err);
    if (!r) {
        *label = "other";
        { fl_api_reply_err(res, &err); return; }
    }
    char tenant[FL_TENANT_MAX];
    if (fl_auth_tenant(r, req->authorization, tenant, &err) != 0) {
        *label = "unauthorized";
        if (err.code == FL_EINVAL) {
            fl_http_reply_error(res, 401, "unauthorized", "%s", err.message);
            fl_http_add_header(res, "WWW-Authenticate", "Bearer");
        } else {
            fl_api_reply_err(res, &err);
        }
        fl_api_pool_put(api, r);
        return;
    }
    if (!strcmp(collection, "trainings") && !*id) {
        *label = "POST /v1/trainings";
        method_is(req, "POST") ? fl_api_trainings_create(api, r, tenant, req, res) : not_allowed(res, "POST");
    } else if (!strcmp(collection, "generations") && !*id) {
        *label = "POST /v1/generations";
        method_is(req, "POST") ? fl_api_generations_create(api, r, tenant, req, res) : not_allowed(res, "POST");
    } else if (!strcmp(collection, "jobs") && *id && !*tail) {
        *label = method_is(req, "DELETE") ? "DELETE /v1/jobs/{id}" : "GET /v1/jobs/{id}";
        if (method_is(req, "GET")) fl_api_jobs_get(r, tenant, id, res);
        else if (method_is(req, "DELETE")) fl_api_jobs_cancel(api, r, tenant, id, res);
        else not_allowed(res, "GET, DELETE");
    } else if (!strcmp(collection, "jobs") && *id && !strcmp(tail, "events")) {
        *label = "GET /v1/jobs/{id}/events";
        method_is(req, "GET") ? fl_api_jobs_events(api, r, tenant, id, req, res) : not_allowed(res, "GET");
    } else if (!strcmp(collection, "images") && *id && !*tail) {
        *label = "GET /v1/images/{id}";
        method_is(req, "GET") ? fl_api_images_get(api, r, tenant, id, res) : not_allowed(res, "GET");
    } else if (!strcmp(collection, "adapters") && !*id) {
        *label = method_is(req, "POST") ? "POST /v1/adapters" : "GET /v1/adapters";
        if (method_is(req, "GET")) fl_api_adapters_list(r, tenant, req, res);
        else if (method_is(req, "POST")) fl_api_adapters_import(api, r, tenant, req, res);
        else not_allowed(res, "GET, POST");
    } else if (!strcmp(collection, "adapters") && *id && !*tail) {
        *label = method_is(req, "DELETE") ? "DELETE /v1/adapters/{id}" : "GET /v1/adapters/{id}";
        if (method_is(req, "GET") || method_is(req, "DELETE")) fl_api_adapters_one(api, r, tenant, id, req, res);
        else not_allowed(res, "GET, DELETE");
    } else {
        *label = "other";
        fl_http_reply_error(res, 404, "not_found", "no route %.200s", req->path);
    }
    fl_api_pool_put(api, r);
}

void fl_api_handle(void *app, const fl_http_request *req, fl_http_response *res) {
    fl_api *api = app;
    double t0 = fl_monotonic_s();
    const char *label = "other";
    route(api, req, res, &label);
    fl_metrics_observe_http(api->cfg.metrics, label, res->status ? res->status : 200, fl_monotonic_s() - t0);
    if (res->status >= 500) fl_log_warn("%s %s -> %d", req->method, req->path, res->status);
}
