/*
 * api.c — the HTTP API's state, its Redis connection pool, the mapping of errors to statuses, and
 * the routing (see api.h): admission (route, method, key and body limits, decided on the request
 * head before any body byte is read) and dispatch to the route admission found. Each route's
 * handler lives with its resource: api_adapters.c, api_jobs.c (trainings, generations, jobs,
 * images), api_datasets.c (validating an image set), api_ops.c (health, metrics) and console.c (the web
 * console's files, at / and /console/). Handlers run on the HTTP layer's connection threads
 * and take Redis connections from a small pool.
 */
#include "serve/api.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
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
#include "serve/console.h"

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
    c.default_guidance = -1.0;
    c.sync_timeout_s = 120;
    c.retry_after_s = 2;
    c.job_device = FL_DEVICE_CPU;
    c.max_job_memory = fl_api_default_job_memory();
    c.max_generation_work = 1310720;
    c.max_training_work = 16384000;
    c.max_evaluation_work = 10485760;
    c.max_adapter_bytes = (size_t)2 << 30;
    c.max_metadata_bytes = (size_t)64 << 10;
    c.max_page_bytes = (size_t)1 << 20;
    return c;
}

int fl_api_create(const fl_api_config *config, fl_api **out, fl_error *err) {
    fl_api *api = fl_xcalloc(1, sizeof *api);
    api->cfg = *config;
    pthread_mutex_init(&api->lock, NULL);
    int patch = config->patch > 0 ? config->patch : fl_flux_pixel_patch(&config->params);
    api->limits = fl_request_limits_default();
    api->limits.patch = patch > 0 ? patch : 1;
    if (config->default_steps > 0) api->limits.default_steps = config->default_steps;
    if (config->default_guidance >= 0) api->limits.default_guidance = config->default_guidance;
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

void fl_api_set_http(fl_api *api, fl_http_server *http) {
    __atomic_store_n(&api->http, http, __ATOMIC_RELEASE);
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
        if (err->code != FL_ENOSPACE) err->code = FL_EUNAVAILABLE; /* a full disk stays a 507 */
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
    case FL_ENOSPACE: return 507;
    case FL_EUNREACHABLE: return 422; /* the client's URL, not this service */
    default: return 500;
    }
}

void fl_api_reply_err(fl_http_response *res, const fl_error *err) {
    /* the HTTP layer takes server paths out of the message; the log keeps them */
    if (strchr(err->message, '/')) fl_log_info("reply: %s", err->message);
    fl_http_reply_error(res, fl_api_status_of(err->code), fl_error_code_name(err->code), "%s", err->message);
}

json_t *fl_api_json_or_null(const char *text) {
    if (!text) return json_null();
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    return v ? v : json_string(text);
}

/* ---- request bodies ------------------------------------------------------------------------------ */

json_t *fl_api_request_object(const fl_http_request *req, const char *file_part, fl_req_source *source,
                              fl_error *err) {
    if (req->n_parts > 0 || (req->content_type && !strncasecmp(req->content_type, "multipart/", 10))) {
        *source = FL_REQ_CLIENT_FORM;
        json_t *o = json_object();
        for (size_t i = 0; i < req->n_parts; i++) {
            const fl_http_part *p = &req->parts[i];
            /* the route's file is a file whether or not the client named it (RFC 7578: filename
             * is optional); any other part with a filename is not a field */
            if (p->filename || !p->name || (file_part && !strcmp(p->name, file_part))) continue;
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

/* Routing happens twice over one table: admission (fl_api_admit) maps the path and method to a
 * route, authenticates, and sets the body limits before any body byte is read; the handler
 * (fl_api_handle) then dispatches on the route admission found, without looking again. */
typedef enum api_route {
    ROUTE_HEALTHZ,
    ROUTE_METRICS,
    ROUTE_TRAININGS,
    ROUTE_GENERATIONS,
    ROUTE_JOB,
    ROUTE_JOB_CANCEL,
    ROUTE_JOB_EVENTS,
    ROUTE_IMAGE,
    ROUTE_ADAPTERS,
    ROUTE_ADAPTER,
    /* identity evaluation (api_eval.c) */
    ROUTE_EVALUATIONS,
    ROUTE_EVALUATION,
    ROUTE_EVALUATION_REPORT,
    /* the web console (console.c) and what it needs of the API */
    ROUTE_CONSOLE,
    ROUTE_JOBS,
    ROUTE_ADAPTER_FILE,
    ROUTE_DATASET_VALIDATE,
} api_route;

/* What admission found, handed to the handler as req->ctx. */
typedef struct api_ctx {
    api_route route;
    char id[128];
    char tenant[FL_TENANT_MAX];
    const char *label; /* the metrics label: method and route pattern */
    double t0;
} api_ctx;

static const char *allowed_methods(api_route r) {
    switch (r) {
    case ROUTE_TRAININGS:
    case ROUTE_GENERATIONS:
    case ROUTE_EVALUATIONS:
    case ROUTE_DATASET_VALIDATE:
    case ROUTE_JOB_CANCEL: return "POST";
    case ROUTE_ADAPTERS: return "GET, HEAD, POST";
    case ROUTE_ADAPTER:
    case ROUTE_JOB: return "GET, HEAD, DELETE";
    default: return "GET, HEAD";
    }
}

/* HEAD is answered as GET (the HTTP layer leaves the body out). */
static bool is_get(const char *method) { return !strcmp(method, "GET") || !strcmp(method, "HEAD"); }

static bool method_allowed(api_route r, const char *method) {
    switch (r) {
    case ROUTE_TRAININGS:
    case ROUTE_GENERATIONS:
    case ROUTE_EVALUATIONS:
    case ROUTE_DATASET_VALIDATE:
    case ROUTE_JOB_CANCEL: return !strcmp(method, "POST");
    case ROUTE_ADAPTERS: return is_get(method) || !strcmp(method, "POST");
    case ROUTE_ADAPTER:
    case ROUTE_JOB: return is_get(method) || !strcmp(method, "DELETE");
    default: return is_get(method);
    }
}

static const char *route_label(api_route r, const char *method) {
    switch (r) {
    case ROUTE_HEALTHZ: return "GET /healthz";
    case ROUTE_METRICS: return "GET /metrics";
    case ROUTE_TRAININGS: return "POST /v1/trainings";
    case ROUTE_GENERATIONS: return "POST /v1/generations";
    case ROUTE_JOB: return !strcmp(method, "DELETE") ? "DELETE /v1/jobs/{id}" : "GET /v1/jobs/{id}";
    case ROUTE_JOB_CANCEL: return "POST /v1/jobs/{id}/cancel";
    case ROUTE_JOB_EVENTS: return "GET /v1/jobs/{id}/events";
    case ROUTE_IMAGE: return "GET /v1/images/{id}";
    case ROUTE_ADAPTERS: return !strcmp(method, "POST") ? "POST /v1/adapters" : "GET /v1/adapters";
    case ROUTE_ADAPTER: return !strcmp(method, "DELETE") ? "DELETE /v1/adapters/{id}" : "GET /v1/adapters/{id}";
    case ROUTE_EVALUATIONS: return "POST /v1/evaluations";
    case ROUTE_EVALUATION: return "GET /v1/evaluations/{id}";
    case ROUTE_EVALUATION_REPORT: return "GET /v1/evaluations/{id}/report.html";
    case ROUTE_CONSOLE: return "GET /console";
    case ROUTE_JOBS: return "GET /v1/jobs";
    case ROUTE_ADAPTER_FILE: return "GET /v1/adapters/{id}/file";
    case ROUTE_DATASET_VALIDATE: return "POST /v1/datasets/validate";
    }
    return "other";
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

/* The route of a path, with its id; false when there is none. */
static bool find_route(const char *path, api_route *route, char id[128]) {
    id[0] = '\0';
    if (!strcmp(path, "/healthz")) return *route = ROUTE_HEALTHZ, true;
    if (!strcmp(path, "/metrics")) return *route = ROUTE_METRICS, true;
    if (fl_console_path(path)) return *route = ROUTE_CONSOLE, true;
    char collection[128], tail[128];
    if (!split_path(path, collection, id, tail)) return false;
    bool has_id = id[0] != '\0', has_tail = tail[0] != '\0';
    if (!strcmp(collection, "trainings") && !has_id) *route = ROUTE_TRAININGS;
    else if (!strcmp(collection, "generations") && !has_id) *route = ROUTE_GENERATIONS;
    else if (!strcmp(collection, "jobs") && !has_id) *route = ROUTE_JOBS;
    else if (!strcmp(collection, "jobs") && has_id && !has_tail) *route = ROUTE_JOB;
    else if (!strcmp(collection, "jobs") && has_id && !strcmp(tail, "events")) *route = ROUTE_JOB_EVENTS;
    else if (!strcmp(collection, "jobs") && has_id && !strcmp(tail, "cancel")) *route = ROUTE_JOB_CANCEL;
    else if (!strcmp(collection, "images") && has_id && !has_tail) *route = ROUTE_IMAGE;
    else if (!strcmp(collection, "adapters") && !has_id) *route = ROUTE_ADAPTERS;
    else if (!strcmp(collection, "adapters") && has_id && !has_tail) *route = ROUTE_ADAPTER;
    else if (!strcmp(collection, "adapters") && has_id && !strcmp(tail, "file")) *route = ROUTE_ADAPTER_FILE;
    else if (!strcmp(collection, "datasets") && !strcmp(id, "validate") && !has_tail) *route = ROUTE_DATASET_VALIDATE;
    else if (!strcmp(collection, "evaluations") && !has_id) *route = ROUTE_EVALUATIONS;
    else if (!strcmp(collection, "evaluations") && has_id && !has_tail) *route = ROUTE_EVALUATION;
    else if (!strcmp(collection, "evaluations") && has_id && !strcmp(tail, "report.html")) *route = ROUTE_EVALUATION_REPORT;
    else return false;
    return true;
}

/* Job ids are made by fl_jobs_new_id: a prefix and hex digits. Anything else names no job (and
 * must never reach a Redis key: "job_x:events" is a job's event stream, not a job). */
static bool valid_job_id(const char *id) {
    size_t n = strlen(id);
    return n > 0 && n < FL_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

static bool refuse(fl_api *api, const char *label, double t0, fl_http_response *res) {
    fl_metrics_observe_http(api->cfg.metrics, label, res->status, fl_monotonic_s() - t0);
    return false;
}

bool fl_api_admit(void *app, const fl_http_request *req, fl_http_admission *adm, fl_http_response *res) {
    fl_api *api = app;
    double t0 = fl_monotonic_s();
    api_route route;
    char id[128];
    if (!find_route(req->path, &route, id)) {
        fl_http_reply_error(res, 404, "not_found", "no route %.200s", req->path);
        return refuse(api, "other", t0, res);
    }
    const char *label = route_label(route, req->method);
    if (!method_allowed(route, req->method)) {
        fl_http_reply_error(res, 405, "method_not_allowed", "allowed here: %s", allowed_methods(route));
        fl_http_add_header(res, "Allow", allowed_methods(route));
        return refuse(api, label, t0, res);
    }
    api_ctx *c = fl_xcalloc(1, sizeof *c);
    c->route = route;
    c->label = label;
    c->t0 = t0;
    memcpy(c->id, id, sizeof c->id);
    if (route != ROUTE_HEALTHZ && route != ROUTE_METRICS && route != ROUTE_CONSOLE) {
        /* every /v1 route needs a key, checked before a byte of the body is read */
        fl_error err = {0};
        fl_redis *r = fl_api_pool_get(api, &err);
        int rc = r ? fl_auth_tenant(r, req->authorization, c->tenant, &err) : -1;
        fl_api_pool_put(api, r);
        if (rc != 0) {
            free(c);
            if (r && err.code == FL_EINVAL) {
                fl_http_reply_error(res, 401, "unauthorized", "%s", err.message);
                fl_http_add_header(res, "WWW-Authenticate", "Bearer");
                return refuse(api, "unauthorized", t0, res);
            }
            fl_api_reply_err(res, &err);
            return refuse(api, label, t0, res);
        }
    }
    switch (route) {
    case ROUTE_TRAININGS:
    case ROUTE_ADAPTERS:
    case ROUTE_EVALUATIONS:
    case ROUTE_DATASET_VALIDATE:
        if (!strcmp(req->method, "POST")) break; /* an archive or adapter upload, or JSON */
        /* fall through */
    default: /* GET, HEAD, DELETE: no body */
        adm->max_body_bytes = 0;
        adm->allow_multipart = false;
        break;
    case ROUTE_GENERATIONS: /* JSON, or form fields without files */
        if (adm->max_upload_bytes > adm->max_body_bytes) adm->max_upload_bytes = adm->max_body_bytes;
        break;
    }
    adm->ctx = c;
    adm->ctx_free = free;
    return true;
}

static void route(fl_api *api, const api_ctx *c, const fl_http_request *req, fl_http_response *res) {
    if (c->route == ROUTE_HEALTHZ) { fl_api_healthz(api, res); return; }
    if (c->route == ROUTE_METRICS) { fl_api_metrics(api, res); return; }
    if (c->route == ROUTE_CONSOLE) { fl_console_reply(req->path, res); return; }
    if ((c->route == ROUTE_JOB || c->route == ROUTE_JOB_CANCEL || c->route == ROUTE_JOB_EVENTS) &&
        !valid_job_id(c->id)) {
        fl_http_reply_error(res, 404, "not_found", "no job '%.64s'", c->id);
        return;
    }
    if ((c->route == ROUTE_EVALUATION || c->route == ROUTE_EVALUATION_REPORT) && !valid_job_id(c->id)) {
        fl_http_reply_error(res, 404, "not_found", "no evaluation '%.64s'", c->id);
        return;
    }
    fl_error err = {0};
    fl_redis *r = fl_api_pool_get(api, &err);
    if (!r) { fl_api_reply_err(res, &err); return; }
    const char *tenant = c->tenant, *id = c->id;
    switch (c->route) {
    case ROUTE_TRAININGS: fl_api_trainings_create(api, r, tenant, req, res); break;
    case ROUTE_GENERATIONS: fl_api_generations_create(api, r, tenant, req, res); break;
    case ROUTE_JOB:
        if (!strcmp(req->method, "DELETE")) fl_api_jobs_delete(api, r, tenant, id, res);
        else fl_api_jobs_get(r, tenant, id, res);
        break;
    case ROUTE_JOB_CANCEL: fl_api_jobs_cancel(api, r, tenant, id, res); break;
    case ROUTE_JOB_EVENTS: fl_api_jobs_events(api, r, tenant, id, req, res); break;
    case ROUTE_IMAGE: fl_api_images_get(api, r, tenant, id, res); break;
    case ROUTE_ADAPTERS:
        if (!strcmp(req->method, "POST")) fl_api_adapters_import(api, r, tenant, req, res);
        else fl_api_adapters_list(api, r, tenant, req, res);
        break;
    case ROUTE_ADAPTER: fl_api_adapters_one(api, r, tenant, id, req, res); break;
    case ROUTE_ADAPTER_FILE: fl_api_adapters_file(api, r, tenant, id, req, res); break;
    case ROUTE_JOBS: fl_api_jobs_list(api, r, tenant, req, res); break;
    case ROUTE_DATASET_VALIDATE: fl_api_datasets_validate(api, tenant, req, res); break;
    case ROUTE_EVALUATIONS: fl_api_evaluations_create(api, r, tenant, req, res); break;
    case ROUTE_EVALUATION: fl_api_evaluations_get(r, tenant, id, res); break;
    case ROUTE_EVALUATION_REPORT: fl_api_evaluations_report(api, r, tenant, id, res); break;
    default: fl_http_reply_error(res, 404, "not_found", "no route %.200s", req->path); break;
    }
    fl_api_pool_put(api, r);
}

void fl_api_handle(void *app, const fl_http_request *req, fl_http_response *res) {
    fl_api *api = app;
    const api_ctx *c = req->ctx;
    void *owned = NULL;
    if (!c) {
        /* served without the admission hook: admit here (the body is already read) */
        fl_http_admission adm = {.max_body_bytes = SIZE_MAX, .max_upload_bytes = SIZE_MAX, .allow_multipart = true};
        if (!fl_api_admit(api, req, &adm, res)) return;
        c = owned = adm.ctx;
    }
    /* handlers see HEAD as GET (never as anything that changes state) */
    fl_http_request get = *req;
    if (!strcmp(req->method, "HEAD")) get.method = "GET";
    route(api, c, &get, res);
    fl_metrics_observe_http(api->cfg.metrics, c->label, res->status ? res->status : 200, fl_monotonic_s() - c->t0);
    if (res->status >= 500) fl_log_warn("%s %s -> %d", req->method, req->path, res->status);
    free(owned);
}
