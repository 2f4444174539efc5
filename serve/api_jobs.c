/*
 * api_jobs.c — the job routes of the API: training and generation requests (checked against the
 * service's limits and queued), a job's state, its server-sent events, synchronous generation,
 * cancel, and the generated images. A tenant sees only its own jobs and images.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/fileio.h"
#include "core/log.h"
#include "datasets/fetch.h"
#include "datasets/imageset.h"
#include "serve/api_internal.h"
#include "serve/jobs.h"

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


/* ---- jobs ------------------------------------------------------------------------------------------- */

void fl_api_reply_accepted(fl_http_response *res, const char *job_id) {
    char status_url[160], events_url[160];
    snprintf(status_url, sizeof status_url, "/v1/jobs/%s", job_id);
    snprintf(events_url, sizeof events_url, "/v1/jobs/%s/events", job_id);
    fl_http_add_header(res, "Location", status_url);
    fl_http_reply_json(res, 202, json_pack("{s:s, s:s, s:s, s:s}", "job_id", job_id, "status", "queued",
                                           "status_url", status_url, "events_url", events_url));
}

/* How a job of a kind is admitted and kept, from the service's settings. Imports share the
 * training queue and quota. */
static fl_job_policy job_policy(const fl_api *api, fl_job_kind kind) {
    bool generate = kind == FL_JOB_GENERATE;
    fl_job_policy p;
    p.max_pending = generate ? api->cfg.max_pending_generate : api->cfg.max_pending_train;
    p.max_pending_tenant = generate ? api->cfg.max_pending_generate_tenant : api->cfg.max_pending_train_tenant;
    p.retention_s = api->cfg.job_retention_s;
    p.keep_per_tenant = api->cfg.jobs_per_tenant;
    return p;
}

int fl_api_submit_job(fl_api *api, fl_redis *r, fl_job_kind kind, const char *job_id, const char *tenant,
                      json_t *request, fl_http_response *res) {
    char *text = json_dumps(request, JSON_COMPACT);
    FL_CHECK(text != NULL);
    fl_job_policy p = job_policy(api, kind);
    fl_admission admission = FL_ADMIT_QUEUE_FULL;
    fl_error err = {0};
    int rc = fl_jobs_submit(r, kind, job_id, tenant, text, &p, &admission, &err);
    free(text);
    if (rc != 0) {
        fl_api_reply_err(res, &err);
        return -1;
    }
    if (admission == FL_ADMITTED) return 0;
    const char *what = kind == FL_JOB_GENERATE ? "generation" : "training and import";
    char retry[16];
    snprintf(retry, sizeof retry, "%d", api->cfg.retry_after_s);
    if (admission == FL_ADMIT_QUEUE_FULL)
        fl_http_reply_error(res, 429, "queue_full", "the %s queue is full (%ld jobs waiting or running); retry later",
                            what, p.max_pending);
    else
        fl_http_reply_error(res, 429, "tenant_quota",
                            "tenant quota: this tenant already has %ld %s jobs waiting or running (%s %ld); retry "
                            "when one has finished",
                            p.max_pending_tenant, what,
                            kind == FL_JOB_GENERATE ? "--max-queue-per-tenant" : "--max-train-queue-per-tenant",
                            p.max_pending_tenant);
    fl_http_add_header(res, "Retry-After", retry);
    return -1;
}

void fl_api_trainings_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                             fl_http_response *res) {
    fl_error err = {0};
    fl_req_source source;
    json_t *o = fl_api_request_object(req, "images", &source, &err);
    if (!o) { fl_api_reply_err(res, &err); return; }
    fl_train_request tr;
    const fl_http_part *archive = fl_http_part_get(req, "images");
    int rc = fl_train_request_decode(o, source, &api->limits, &tr, &err);
    json_decref(o);
    if (rc == 0 && tr.name[0]) {
        fl_adapter_info taken;
        fl_error e2 = {0};
        if (fl_registry_lookup(r, tenant, tr.name, &taken, &e2) == 0) {
            fl_adapter_info_clear(&taken);
            rc = fl_fail(&err, FL_ECONFLICT, "field 'name': this tenant already has an adapter named '%s'", tr.name);
        }
    }
    if (rc == 0 && !archive && !tr.images)
        rc = fl_fail(&err, FL_EINVAL, "an 'images' archive (multipart file) or 'images_url' is required");
    if (rc == 0 && archive && tr.images) rc = fl_fail(&err, FL_EINVAL, "give either 'images' or 'images_url', not both");
    char job_id[FL_ID_MAX];
    fl_jobs_new_id("job", job_id);
    char upload_path[4500] = "";
    /* Check the set now from its images' headers (nothing is decoded here: the worker decodes, within
     * the budget admission gives it), so a broken upload is a 400 and not a failed job. */
    fl_imageset_summary set;
    memset(&set, 0, sizeof set);
    if (rc == 0 && archive) {
        fl_imageset_limits limits = fl_imageset_limits_default();
        const char *label = archive->filename && *archive->filename ? archive->filename : "images.zip";
        rc = fl_imageset_inspect_memory(archive->data, archive->size, label, &limits, &set, &err);
    }
    /* A URL must at least be one (its host's address is checked when the worker connects). */
    if (rc == 0 && !archive && fl_fetch_check_url(tr.images, true, &err) != 0)
        rc = fl_fail_prefix(&err, "field 'images_url'");
    bool refused = false; /* by admission: 422 */
    if (rc == 0) {
        rc = fl_api_admit_training(api, &tr, archive ? &set : NULL, &err);
        refused = rc != 0 && err.code == FL_ELIMIT;
    }
    if (rc == 0 && archive) {
        /* The file is named by the job and the archive's detected kind, never by the client. */
        snprintf(upload_path, sizeof upload_path, "%s/uploads/%s%s", api->cfg.state_dir, job_id,
                 set.archive_ext ? set.archive_ext : ".zip");
        rc = fl_write_file_atomic(upload_path, archive->data, archive->size, &err);
        if (rc != 0) {
            fl_log_warn("storing the upload of %s: %s", job_id, err.message);
            if (err.code == FL_ENOSPACE) fl_fail(&err, FL_ENOSPACE, "the upload could not be stored: the service's disk is full");
            else fl_fail(&err, FL_EIO, "the upload could not be stored; retry later");
            upload_path[0] = '\0';
        } else {
            tr.images = fl_xstrdup(upload_path);
            tr.source = fl_xstrdup("upload");
        }
    }
    if (rc != 0) {
        fl_train_request_clear(&tr);
        if (refused) fl_http_reply_error(res, 422, "limit_exceeded", "%s", err.message);
        else fl_api_reply_err(res, &err);
        return;
    }
    json_t *job = fl_train_request_to_json(&tr);
    fl_train_request_clear(&tr);
    rc = fl_api_submit_job(api, r, FL_JOB_TRAIN, job_id, tenant, job, res);
    json_decref(job);
    if (rc != 0) {
        if (*upload_path) unlink(upload_path);
        return;
    }
    fl_api_reply_accepted(res, job_id);
}

/* The job as the API shows it: internal paths left out. */
static json_t *job_json(const fl_job *job) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:I, s:I}", "id", job->id, "kind", fl_job_kind_name(job->kind),
                          "state", job->state, "attempts", job->attempts, "created_ms", (json_int_t)job->created_ms,
                          "updated_ms", (json_int_t)job->updated_ms);
    json_t *request = fl_api_json_or_null(job->request_json);
    if (json_is_object(request) && json_object_get(request, "source")) {
        json_object_set(request, "images", json_object_get(request, "source"));
        json_object_del(request, "source");
    }
    json_object_set_new(o, "request", request);
    if (job->kind == FL_JOB_TRAIN)
        json_object_set_new(o, "progress", json_pack("{s:i, s:i, s:f, s:f}", "step", job->step, "total", job->total,
                                                     "loss", job->loss, "eta_s", job->eta_s));
    json_object_set_new(o, "result", fl_api_json_or_null(job->result_json));
    json_object_set_new(o, "error", fl_api_json_or_null(job->error_json));
    if (job->cancel_requested) json_object_set_new(o, "cancel_requested", json_true());
    if (job->finished_ms) json_object_set_new(o, "finished_ms", json_integer((json_int_t)job->finished_ms));
    return o;
}

void fl_api_jobs_get(fl_redis *r, const char *tenant, const char *id, fl_http_response *res) {
    fl_error err = {0};
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { fl_api_reply_err(res, &err); return; }
    fl_http_reply_json(res, 200, job_json(&job));
    fl_job_clear(&job);
}

/* GET /v1/jobs: the tenant's jobs from its index (fl:tenant:<t>:jobs, by creation time), newest
 * first: at most `limit` (1-100, default 20) from index position `offset`, only those of `kind`
 * when it is given. A page ends early once its jobs pass --max-page-bytes as JSON (at least one
 * job per page), and once it has looked at JOBS_SCAN_MAX index entries (a filter that matches
 * little); next_offset is the index position where the next page starts. An index entry whose
 * job is gone (expired, deleted) is passed over. total counts the index, every kind, so it may
 * count such entries until the retention pass drops them. */
#define JOBS_SCAN_MAX 1000

void fl_api_jobs_list(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req, fl_http_response *res) {
    fl_error err = {0};
    long long offset = 0, limit = 20;
    const char *q_off = fl_http_query(req, "offset"), *q_lim = fl_http_query(req, "limit");
    const char *q_kind = fl_http_query(req, "kind");
    char *end = NULL;
    if (q_off && (!*q_off || (offset = strtoll(q_off, &end, 10)) < 0 || *end || offset > 1000000000LL))
        { fl_http_reply_error(res, 400, "invalid_input", "query 'offset': expected an integer in [0, 1000000000]"); return; }
    if (q_lim && (!*q_lim || (limit = strtoll(q_lim, &end, 10)) < 1 || limit > 100 || *end))
        { fl_http_reply_error(res, 400, "invalid_input", "query 'limit': expected an integer in [1, 100]"); return; }
    int kind = -1;
    for (int k = FL_JOB_TRAIN; q_kind && k <= FL_JOB_EVAL; k++)
        if (!strcmp(q_kind, fl_job_kind_name((fl_job_kind)k))) kind = k;
    if (q_kind && kind < 0)
        { fl_http_reply_error(res, 400, "invalid_input", "query 'kind': expected train, generate, import or evaluate"); return; }
    char index[160];
    snprintf(index, sizeof index, "fl:tenant:%s:jobs", tenant);
    redisReply *rep = fl_redis_cmd(r, &err, "ZCARD %s", index);
    if (!rep) { fl_api_reply_err(res, &err); return; }
    long long total = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    json_t *list = json_array();
    size_t bytes = 0;
    long long pos = offset; /* the next index position to look at */
    bool full = false;
    while (!full && pos < total && pos - offset < JOBS_SCAN_MAX) {
        long long chunk = kind < 0 ? limit : 100;
        rep = fl_redis_cmd(r, &err, "ZREVRANGE %s %lld %lld", index, pos, pos + chunk - 1);
        if (!rep) {
            json_decref(list);
            fl_api_reply_err(res, &err);
            return;
        }
        size_t n_entries = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
        for (size_t i = 0; i < n_entries && !full && pos - offset < JOBS_SCAN_MAX; i++) {
            const redisReply *e = rep->element[i];
            fl_job job;
            fl_error miss = {0};
            if (e->type != REDIS_REPLY_STRING || e->len >= FL_ID_MAX || fl_jobs_get(r, tenant, e->str, &job, &miss) != 0) {
                if (miss.code != FL_OK && miss.code != FL_ENOTFOUND) {
                    json_decref(list);
                    freeReplyObject(rep);
                    fl_api_reply_err(res, &miss);
                    return;
                }
                pos++; /* gone: passed over */
                continue;
            }
            if (kind >= 0 && (int)job.kind != kind) {
                fl_job_clear(&job);
                pos++;
                continue;
            }
            json_t *o = job_json(&job);
            fl_job_clear(&job);
            char *text = json_dumps(o, JSON_COMPACT);
            size_t n = text ? strlen(text) : 0;
            free(text);
            if (json_array_size(list) > 0 && bytes + n > api->cfg.max_page_bytes) {
                json_decref(o);
                full = true;
                break;
            }
            bytes += n;
            pos++;
            json_array_append_new(list, o);
            full = (long long)json_array_size(list) == limit;
        }
        freeReplyObject(rep);
        if (n_entries == 0) break; /* the index shrank meanwhile */
    }
    json_t *page = json_pack("{s:o, s:I, s:I}", "jobs", list, "total", (json_int_t)total, "offset", (json_int_t)offset);
    json_object_set_new(page, "next_offset", pos < total ? json_integer((json_int_t)pos) : json_null());
    fl_http_reply_json(res, 200, page);
}

/* POST /v1/jobs/{id}/cancel: a queued job is canceled now (200, and a training's upload goes with
 * it); a running one is asked to stop (202: its worker stops it at the next step and finishes it
 * as canceled); a finished one is 409; another tenant's is 404. */
void fl_api_jobs_cancel(fl_api *api, fl_redis *r, const char *tenant, const char *id, fl_http_response *res) {
    fl_error err = {0};
    fl_cancel_outcome outcome = FL_CANCEL_REQUESTED;
    if (fl_jobs_cancel(r, tenant, id, &outcome, &err) != 0) { fl_api_reply_err(res, &err); return; }
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { fl_api_reply_err(res, &err); return; }
    if (outcome == FL_CANCEL_DONE && job.kind == FL_JOB_TRAIN) fl_jobs_remove_files(api->cfg.state_dir, id);
    fl_http_reply_json(res, outcome == FL_CANCEL_DONE ? 200 : 202, job_json(&job));
    fl_job_clear(&job);
}

/* DELETE /v1/jobs/{id}: the job is canceled if it has not finished (a queued one never starts, a
 * running one stops at its next step and frees its memory) and removed with its events and images:
 * 200 when it is gone now, 202 when its worker is still stopping it; either way it is 404 from now
 * on. Another tenant's is 404. */
void fl_api_jobs_delete(fl_api *api, fl_redis *r, const char *tenant, const char *id, fl_http_response *res) {
    fl_error err = {0};
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { fl_api_reply_err(res, &err); return; }
    bool training = job.kind == FL_JOB_TRAIN, was_queued = !strcmp(job.state, "queued");
    fl_job_clear(&job);
    fl_delete_outcome outcome = FL_DELETE_DONE;
    if (fl_jobs_delete(r, tenant, id, &outcome, &err) != 0) { fl_api_reply_err(res, &err); return; }
    if (training && was_queued && outcome == FL_DELETE_DONE) fl_jobs_remove_files(api->cfg.state_dir, id);
    if (outcome == FL_DELETE_DONE) fl_http_reply_json(res, 200, json_pack("{s:s}", "deleted", id));
    else fl_http_reply_json(res, 202, json_pack("{s:s, s:b}", "deleted", id, "stopping", true));
}

/* Server-sent events: one Redis connection per stream, XREAD BLOCK on the job's event stream.
 * While nothing arrives the job's state is checked: a stream whose job has ended (or is gone)
 * ends too, whatever Last-Event-ID the client sent. */
typedef struct event_stream {
    fl_redis *r;
    char id[FL_ID_MAX];
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

static bool is_terminal_event(const char *type) {
    return type && (!strcmp(type, "succeeded") || !strcmp(type, "failed") || !strcmp(type, "canceled"));
}

/* Appends the entries of an XREAD reply as SSE events; marks the stream ended at a terminal one. */
static void es_append_entries(event_stream *es, const redisReply *rep) {
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0 || rep->element[0]->elements < 2) return;
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
            char *clean = NULL; /* an error message naming a server path: without it */
            if (ev && strchr(data, '/')) fl_http_redact_json(ev), clean = json_dumps(ev, JSON_COMPACT);
            es_append(es, "id: %s\nevent: %s\ndata: %s\n\n", es->last_id, type ? type : "message",
                      clean ? clean : data);
            free(clean);
            if (is_terminal_event(type)) es->ended = true;
            json_decref(ev);
        }
    }
}

/* Nothing new arrived: a job that has ended (or whose record is gone) ends its stream, after
 * whatever was appended since the last read. */
static void es_check_job(event_stream *es) {
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(es->r, &err, "HGET fl:job:%s state", es->id);
    if (!rep) return;
    bool over = rep->type != REDIS_REPLY_STRING || fl_job_state_terminal(rep->str);
    freeReplyObject(rep);
    if (!over) return;
    rep = fl_redis_cmd(es->r, &err, "XREAD COUNT 1000 STREAMS %s %s", es->key, es->last_id);
    if (rep) {
        es_append_entries(es, rep);
        freeReplyObject(rep);
    }
    es->ended = true;
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
        es_append(es, "event: error\ndata: {\"event\":\"error\",\"error\":{\"code\":\"unavailable\",\"message\":"
                      "\"the event store is unreachable\"}}\n\n");
        es->ended = true;
        return event_stream_read(arg, out, max);
    }
    es_append_entries(es, rep);
    freeReplyObject(rep);
    if (es->len == 0) es_check_job(es);
    if (es->len == 0 && es->ended) return -1;
    if (es->len == 0 && fl_now_ms() - es->last_send_ms > 15000) es_append(es, ": keep-alive\n\n");
    if (es->len == 0) return 0;
    es->last_send_ms = fl_now_ms();
    size_t n = es->len < max ? es->len : max;
    memcpy(out, es->buf, n);
    es->off = n;
    return (ssize_t)n;
}

/* "ms-seq" (or "ms") as two numbers; false when malformed. */
static bool parse_stream_id(const char *id, unsigned long long *ms, unsigned long long *seq) {
    char *end = NULL;
    errno = 0;
    *ms = strtoull(id, &end, 10);
    if (end == id || errno) return false;
    *seq = 0;
    if (*end == '-') {
        const char *s = end + 1;
        *seq = strtoull(s, &end, 10);
        if (end == s || errno) return false;
    }
    return *end == '\0';
}

/* A Last-Event-ID is honoured only when it names a place in the stream: at or before its last
 * entry. Anything else (malformed, or beyond what the stream has issued) replays from the start. */
static void es_resume_from(event_stream *es, const char *last) {
    snprintf(es->last_id, sizeof es->last_id, "0-0");
    unsigned long long ms, seq, top_ms, top_seq;
    if (!last || !*last || strlen(last) >= sizeof es->last_id || !parse_stream_id(last, &ms, &seq)) return;
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(es->r, &err, "XREVRANGE %s + - COUNT 1", es->key);
    bool ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 && rep->element[0]->elements >= 1 &&
              rep->element[0]->element[0]->type == REDIS_REPLY_STRING &&
              parse_stream_id(rep->element[0]->element[0]->str, &top_ms, &top_seq) &&
              (ms < top_ms || (ms == top_ms && seq <= top_seq));
    if (rep) freeReplyObject(rep);
    if (ok) snprintf(es->last_id, sizeof es->last_id, "%llu-%llu", ms, seq);
}

void fl_api_jobs_events(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                        fl_http_response *res) {
    fl_error err = {0};
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { fl_api_reply_err(res, &err); return; }
    fl_job_clear(&job);
    event_stream *es = fl_xcalloc(1, sizeof *es);
    if (fl_redis_connect(api->cfg.redis_address, &es->r, &err) != 0) {
        free(es);
        err.code = FL_EUNAVAILABLE;
        { fl_api_reply_err(res, &err); return; }
    }
    snprintf(es->id, sizeof es->id, "%s", id);
    snprintf(es->key, sizeof es->key, "fl:job:%s:events", id);
    es_resume_from(es, fl_http_header(req, "Last-Event-ID"));
    es->last_send_ms = fl_now_ms();
    res->status = 200;
    res->content_type = "text/event-stream";
    fl_http_add_header(res, "Cache-Control", "no-cache");
    res->stream = event_stream_read;
    res->stream_arg = es;
    res->stream_free = event_stream_free;
}

/* True for the text of a job's last event (succeeded, failed or canceled). */
static bool event_is_terminal(const char *data) {
    json_error_t jerr;
    json_t *ev = json_loads(data, 0, &jerr);
    bool terminal = is_terminal_event(json_string_value(json_object_get(ev, "event")));
    json_decref(ev);
    return terminal;
}

void fl_api_begin_shutdown(fl_api *api) {
    api->stopping = true;
}

int fl_api_waiting(fl_api *api) {
    return api->waiting;
}

/* Waits for a job's terminal event on its event stream. Returns 0 when it ended, 1 on timeout,
 * 2 when the service began to stop. */
static int wait_for_job(fl_api *api, const char *id, int timeout_s, fl_error *err) {
    fl_redis *r = NULL;
    if (fl_redis_connect(api->cfg.redis_address, &r, err) != 0) return -1;
    char key[160], last[64] = "0-0";
    snprintf(key, sizeof key, "fl:job:%s:events", id);
    int64_t deadline = fl_monotonic_ms() + (int64_t)timeout_s * 1000;
    int rc = 1;
    while (rc == 1 && fl_monotonic_ms() < deadline) {
        if (api->stopping) {
            rc = 2;
            break;
        }
        redisReply *rep = fl_redis_cmd(r, err, "XREAD COUNT 64 BLOCK 500 STREAMS %s %s", key, last);
        if (!rep) {
            rc = -1;
            break;
        }
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 && rep->element[0]->elements >= 2) {
            const redisReply *entries = rep->element[0]->element[1];
            for (size_t i = 0; i < entries->elements; i++) {
                const redisReply *e = entries->element[i];
                snprintf(last, sizeof last, "%s", e->element[0]->str);
                for (size_t k = 0; k + 1 < e->element[1]->elements; k += 2)
                    if (event_is_terminal(e->element[1]->element[k + 1]->str)) rc = 0;
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
    if (w < 0) { fl_api_reply_err(res, &err); return; }
    fl_job job;
    if (fl_jobs_get(r, tenant, id, &job, &err) != 0) { fl_api_reply_err(res, &err); return; }
    if (w == 1) {
        fl_job_clear(&job);
        fl_http_reply_error(res, 504, "timeout", "job %s did not finish within %d s; follow it at /v1/jobs/%s", id,
                            api->cfg.sync_timeout_s, id);
        return;
    }
    if (w == 2) {
        fl_job_clear(&job);
        fl_http_reply_error(res, 503, "unavailable", "the service is stopping; job %s carries on: follow it at "
                            "/v1/jobs/%s", id, id);
        return;
    }
    if (!strcmp(job.state, "canceled")) {
        fl_job_clear(&job);
        fl_http_reply_error(res, 409, "canceled", "job %s was canceled", id);
        return;
    }
    if (strcmp(job.state, "succeeded") != 0) {
        json_t *e = fl_api_json_or_null(job.error_json);
        const char *code = json_string_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        fl_http_reply_error(res, code && !strcmp(code, "invalid_input") ? 400 : 500, code ? code : "failed",
                            "job %s failed: %s", id, msg ? msg : "unknown reason");
        json_decref(e);
        fl_job_clear(&job);
        return;
    }
    json_t *result = fl_api_json_or_null(job.result_json);
    json_t *images = json_object_get(result, "images");
    size_t i;
    json_t *img;
    json_array_foreach(images, i, img) {
        char path[4300];
        snprintf(path, sizeof path, "%s/images/%s.png", api->cfg.state_dir, json_string_value(json_object_get(img, "id")));
        size_t size = 0;
        unsigned char *png = NULL;
        fl_error ignored = {0};
        if (fl_read_file(path, FL_API_MAX_IMAGE_BYTES, &png, &size, &ignored) == 0) {
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

void fl_api_generations_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                               fl_http_response *res) {
    fl_error err = {0};
    fl_req_source source;
    json_t *o = fl_api_request_object(req, NULL, &source, &err);
    if (!o) { fl_api_reply_err(res, &err); return; }
    fl_generate_request gr;
    int rc = fl_generate_request_decode(o, source, &api->limits, &gr, &err);
    json_decref(o);
    /* Resolve each adapter (id or name) to its file, made for this base model. */
    fl_adapter_info infos[FL_REQ_MAX_ADAPTERS];
    memset(infos, 0, sizeof infos);
    for (int i = 0; rc == 0 && i < gr.n_adapters; i++) {
        fl_request_adapter *a = &gr.adapters[i];
        fl_adapter_info *info = &infos[i];
        if (fl_api_find_adapter(r, tenant, a->id, info, &err) != 0) {
            rc = -1;
            break;
        }
        if (strcmp(info->base_model, api->cfg.base_model_hash) != 0)
            rc = fl_fail(&err, FL_EINVAL, "field 'adapters[%d]': adapter %s was made for base model %.12s, not %.12s", i,
                         info->id, info->base_model, api->cfg.base_model_hash);
        memcpy(a->id, info->id, sizeof info->id); /* the id (FL_ID_MAX <= FL_NAME_MAX) in place of the name */
        memcpy(a->sha256, info->sha256, sizeof a->sha256);
        fl_adapter_info_clear(info);
    }
    gr.max_text_tokens = api->cfg.max_text_tokens;
    bool refused = false; /* by admission: 422 */
    if (rc == 0) {
        rc = fl_api_admit_generation(api, &gr, infos, gr.n_adapters, &err);
        refused = rc != 0 && err.code == FL_ELIMIT;
    }
    if (rc != 0) {
        fl_generate_request_clear(&gr);
        if (refused) fl_http_reply_error(res, 422, "limit_exceeded", "%s", err.message);
        else fl_api_reply_err(res, &err);
        return;
    }
    bool sync = gr.sync;
    json_t *job = fl_generate_request_to_json(&gr);
    fl_generate_request_clear(&gr);
    char job_id[FL_ID_MAX];
    fl_jobs_new_id("job", job_id);
    rc = fl_api_submit_job(api, r, FL_JOB_GENERATE, job_id, tenant, job, res);
    json_decref(job);
    if (rc != 0) return;
    if (sync) {
        api->waiting++;
        reply_sync_result(api, r, tenant, job_id, res);
        api->waiting--;
        return;
    }
    fl_api_reply_accepted(res, job_id);
}

void fl_api_images_get(fl_api *api, fl_redis *r, const char *tenant, const char *name, fl_http_response *res) {
    fl_error err = {0};
    size_t n = strlen(name);
    if (n < 5 || n > 60 || strcmp(name + n - 4, ".png") != 0)
        { fl_http_reply_error(res, 404, "not_found", "no image '%.64s'", name); return; }
    char id[64];
    snprintf(id, sizeof id, "%.*s", (int)(n - 4), name);
    if (strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(id))
        { fl_http_reply_error(res, 404, "not_found", "no image '%.64s'", name); return; }
    redisReply *rep = fl_redis_cmd(r, &err, "HGET fl:image:%s tenant", id);
    if (!rep) { fl_api_reply_err(res, &err); return; }
    bool mine = rep->type == REDIS_REPLY_STRING && !strcmp(rep->str, tenant);
    freeReplyObject(rep);
    if (!mine) { fl_http_reply_error(res, 404, "not_found", "no image '%s'", name); return; }
    char path[4300];
    snprintf(path, sizeof path, "%s/images/%s.png", api->cfg.state_dir, id);
    size_t size = 0;
    unsigned char *png = NULL;
    if (fl_read_file(path, FL_API_MAX_IMAGE_BYTES, &png, &size, &err) != 0) {
        fl_http_reply_error(res, 404, "not_found", "image '%s' is no longer stored", name);
        return;
    }
    fl_http_reply_bytes(res, 200, "image/png", png, size);
    free(png);
}
