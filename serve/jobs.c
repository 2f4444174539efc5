/*
 * jobs.c — job records, work streams and event streams in Redis (see jobs.h). Each state change
 * is a Lua script run with EVAL so its checks and writes are atomic.
 */
#include "serve/jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/rng.h"
#include "core/sha256.h"

static const char *const enqueue_script =
    "local n = tonumber(redis.call('GET', KEYS[3]) or '0')\n"
    "if n >= tonumber(ARGV[1]) then return 0 end\n"
    "if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end\n"
    "redis.call('HSET', KEYS[1], 'id', ARGV[2], 'tenant', ARGV[3], 'kind', ARGV[4], 'state', 'queued',\n"
    "  'request', ARGV[5], 'created_ms', ARGV[6], 'updated_ms', ARGV[6], 'attempts', 0, 'step', 0, 'total', 0)\n"
    "redis.call('INCR', KEYS[3])\n"
    "redis.call('ZADD', KEYS[4], ARGV[6], ARGV[2])\n"
    "redis.call('HINCRBY', KEYS[5], 'queued', 1)\n"
    "redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 'data', cjson.encode({event='queued', job=ARGV[2]}))\n"
    "redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])\n"
    "return 1\n";

static const char *const start_script =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return -1 end\n"
    "if st == 'succeeded' or st == 'failed' then return 0 end\n"
    "if st ~= 'running' then\n"
    "  redis.call('HINCRBY', KEYS[2], st, -1)\n"
    "  redis.call('HINCRBY', KEYS[2], 'running', 1)\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'updated_ms', ARGV[2])\n"
    "local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'data',\n"
    "  cjson.encode({event='running', attempt=n, worker=ARGV[1]}))\n"
    "return n\n";

static const char *const finish_script =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return -1 end\n"
    "if st == 'succeeded' or st == 'failed' then return 0 end\n"
    "redis.call('HINCRBY', KEYS[2], st, -1)\n"
    "redis.call('HINCRBY', KEYS[2], ARGV[1], 1)\n"
    "redis.call('HSET', KEYS[1], 'state', ARGV[1], ARGV[2], ARGV[3], 'updated_ms', ARGV[4], 'finished_ms', ARGV[4])\n"
    "local queue = redis.call('HGET', KEYS[1], 'kind') == 'generate' and KEYS[4] or KEYS[3]\n"
    "if redis.call('DECR', queue) < 0 then redis.call('SET', queue, 0) end\n"
    "redis.call('XADD', KEYS[5], 'MAXLEN', '~', 10000, '*', 'data', ARGV[5])\n"
    "return 1\n";

const char *fl_job_kind_name(fl_job_kind kind) {
    return kind == FL_JOB_TRAIN ? "train" : kind == FL_JOB_IMPORT ? "import" : "generate";
}

const char *fl_job_stream_key(fl_job_kind kind) {
    return kind == FL_JOB_GENERATE ? "fl:stream:generate" : "fl:stream:train";
}

static const char *queue_key(fl_job_kind kind) {
    return kind == FL_JOB_GENERATE ? "fl:queue:generate" : "fl:queue:train";
}

void fl_job_clear(fl_job *job) {
    free(job->request_json);
    free(job->result_json);
    free(job->error_json);
    memset(job, 0, sizeof *job);
}

bool fl_job_state_terminal(const char *state) {
    return !strcmp(state, "succeeded") || !strcmp(state, "failed");
}

void fl_jobs_new_id(const char *prefix, char id[FL_ID_MAX]) {
    char full[16];
    snprintf(full, sizeof full, "%.10s_", prefix);
    fl_random_id(full, 12, id, FL_ID_MAX);
}

static void key_of(char *buf, size_t cap, const char *fmt, const char *a) {
    snprintf(buf, cap, fmt, a);
}

int fl_jobs_init(fl_redis *r, fl_error *err) {
    for (int k = 0; k < 2; k++) {
        fl_error e = {0};
        /* From the stream's start, not "$": entries can only come from an accepted job, so a stream
         * without the group (Redis flushed or replaced, then a job accepted before any worker
         * recreated the group) holds jobs nobody has read yet. */
        redisReply *rep = fl_redis_cmd(r, &e, "XGROUP CREATE %s %s 0 MKSTREAM", fl_job_stream_key((fl_job_kind)k),
                                       FL_JOBS_GROUP);
        if (rep) {
            freeReplyObject(rep);
        } else if (!strstr(e.message, "BUSYGROUP")) {
            if (err) *err = e;
            return -1;
        }
    }
    return 0;
}

/* EVAL script with keys then args; returns the integer reply in *result. */
static int eval_int(fl_redis *r, const char *script, int n_keys, const char **keys, int n_args, const char **args,
                    long long *result, fl_error *err) {
    const char *argv[32];
    char nk[16];
    FL_CHECK(3 + n_keys + n_args <= 32);
    snprintf(nk, sizeof nk, "%d", n_keys);
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = script;
    argv[argc++] = nk;
    for (int i = 0; i < n_keys; i++) argv[argc++] = keys[i];
    for (int i = 0; i < n_args; i++) argv[argc++] = args[i];
    redisReply *rep = fl_redis_argv(r, err, argc, argv, NULL);
    if (!rep) return -1;
    int rc = 0;
    if (rep->type == REDIS_REPLY_INTEGER)
        *result = rep->integer;
    else
        rc = fl_fail(err, FL_EIO, "unexpected reply type %d from a job script", rep->type);
    freeReplyObject(rep);
    return rc;
}

int fl_jobs_enqueue(fl_redis *r, fl_job_kind kind, const char *id, const char *tenant, const char *request_json,
                    long max_pending, bool *full, fl_error *err) {
    char job_key[128], tenant_key[160], events_key[160], max[32], now[32];
    key_of(job_key, sizeof job_key, "fl:job:%s", id);
    key_of(events_key, sizeof events_key, "fl:job:%s:events", id);
    key_of(tenant_key, sizeof tenant_key, "fl:tenant:%s:jobs", tenant);
    snprintf(max, sizeof max, "%ld", max_pending);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *keys[6] = {job_key, fl_job_stream_key(kind), queue_key(kind), tenant_key, "fl:jobs:states", events_key};
    const char *args[6] = {max, id, tenant, fl_job_kind_name(kind), request_json, now};
    long long res = 0;
    *full = false;
    if (eval_int(r, enqueue_script, 6, keys, 6, args, &res, err) != 0) return -1;
    if (res == 0) *full = true;
    if (res == -1) return fl_fail(err, FL_ECONFLICT, "job %s already exists", id);
    return 0;
}

static char *dup_field(const redisReply *v) {
    return v && v->type == REDIS_REPLY_STRING ? fl_xstrdup(v->str) : NULL;
}

static void copy_field(char *dst, size_t cap, const redisReply *v) {
    snprintf(dst, cap, "%s", v && v->type == REDIS_REPLY_STRING ? v->str : "");
}

int fl_jobs_get(fl_redis *r, const char *tenant, const char *id, fl_job *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (!*id || strlen(id) >= FL_ID_MAX) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    redisReply *rep = fl_redis_cmd(r, err, "HGETALL fl:job:%s", id);
    if (!rep) return -1;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0) {
        freeReplyObject(rep);
        return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    }
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *k = rep->element[i]->str;
        const redisReply *v = rep->element[i + 1];
        const char *s = v->type == REDIS_REPLY_STRING ? v->str : "";
        if (!strcmp(k, "id")) copy_field(out->id, sizeof out->id, v);
        else if (!strcmp(k, "tenant")) copy_field(out->tenant, sizeof out->tenant, v);
        else if (!strcmp(k, "kind"))
            out->kind = !strcmp(s, "train") ? FL_JOB_TRAIN : !strcmp(s, "import") ? FL_JOB_IMPORT : FL_JOB_GENERATE;
        else if (!strcmp(k, "state")) copy_field(out->state, sizeof out->state, v);
        else if (!strcmp(k, "worker")) copy_field(out->worker, sizeof out->worker, v);
        else if (!strcmp(k, "request")) out->request_json = dup_field(v);
        else if (!strcmp(k, "result")) out->result_json = dup_field(v);
        else if (!strcmp(k, "error")) out->error_json = dup_field(v);
        else if (!strcmp(k, "step")) out->step = atoi(s);
        else if (!strcmp(k, "total")) out->total = atoi(s);
        else if (!strcmp(k, "attempts")) out->attempts = atoi(s);
        else if (!strcmp(k, "loss")) out->loss = atof(s);
        else if (!strcmp(k, "eta_s")) out->eta_s = atof(s);
        else if (!strcmp(k, "created_ms")) out->created_ms = atoll(s);
        else if (!strcmp(k, "updated_ms")) out->updated_ms = atoll(s);
    }
    freeReplyObject(rep);
    if (tenant && strcmp(tenant, out->tenant) != 0) {
        fl_job_clear(out);
        return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    }
    return 0;
}

int fl_jobs_start(fl_redis *r, const char *id, const char *worker, int *attempts, bool *finished, fl_error *err) {
    char job_key[128], events_key[160], now[32];
    key_of(job_key, sizeof job_key, "fl:job:%s", id);
    key_of(events_key, sizeof events_key, "fl:job:%s:events", id);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *keys[3] = {job_key, "fl:jobs:states", events_key};
    const char *args[2] = {worker, now};
    long long res = 0;
    if (eval_int(r, start_script, 3, keys, 2, args, &res, err) != 0) return -1;
    if (res < 0) return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    *finished = res == 0;
    *attempts = (int)res;
    return 0;
}

int fl_jobs_event(fl_redis *r, const char *id, const char *event_json, int step, int total, double loss,
                  double eta_s, fl_error *err) {
    redisReply *rep = fl_redis_cmd(r, err, "XADD fl:job:%s:events MAXLEN ~ 10000 * data %s", id, event_json);
    if (!rep) return -1;
    freeReplyObject(rep);
    if (step < 0) return 0;
    char s_step[32], s_total[32], s_loss[64], s_eta[64], s_now[32];
    snprintf(s_step, sizeof s_step, "%d", step);
    snprintf(s_total, sizeof s_total, "%d", total);
    snprintf(s_loss, sizeof s_loss, "%.9g", loss);
    snprintf(s_eta, sizeof s_eta, "%.3f", eta_s);
    snprintf(s_now, sizeof s_now, "%lld", (long long)fl_now_ms());
    rep = fl_redis_cmd(r, err, "HSET fl:job:%s step %s total %s loss %s eta_s %s updated_ms %s", id, s_step, s_total,
                       s_loss, s_eta, s_now);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int fl_jobs_finish(fl_redis *r, const char *id, bool succeeded, const char *json, bool *changed, fl_error *err) {
    char job_key[128], events_key[160], now[32];
    key_of(job_key, sizeof job_key, "fl:job:%s", id);
    key_of(events_key, sizeof events_key, "fl:job:%s:events", id);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    /* The terminal event carries the result or error itself. */
    json_error_t jerr;
    json_t *payload = json_loads(json, 0, &jerr);
    json_t *event = json_pack("{s:s, s:s}", "event", succeeded ? "succeeded" : "failed", "job", id);
    json_object_set_new(event, succeeded ? "result" : "error", payload ? payload : json_string(json));
    char *event_text = json_dumps(event, JSON_COMPACT);
    json_decref(event);
    FL_CHECK(event_text);
    /* Both queue counters are named; the script drops the one of the job's kind. */
    const char *keys[5] = {job_key, "fl:jobs:states", queue_key(FL_JOB_TRAIN), queue_key(FL_JOB_GENERATE), events_key};
    const char *args[5] = {succeeded ? "succeeded" : "failed", succeeded ? "result" : "error", json, now, event_text};
    long long res = 0;
    int rc = eval_int(r, finish_script, 5, keys, 5, args, &res, err);
    free(event_text);
    if (rc != 0) return -1;
    if (res < 0) return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    if (changed) *changed = res == 1;
    return 0;
}

int fl_jobs_ack(fl_redis *r, fl_job_kind kind, const char *entry_id, fl_error *err) {
    redisReply *rep = fl_redis_cmd(r, err, "XACK %s %s %s", fl_job_stream_key(kind), FL_JOBS_GROUP, entry_id);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int fl_jobs_pending(fl_redis *r, fl_job_kind kind, long long *n, fl_error *err) {
    redisReply *rep = fl_redis_cmd(r, err, "GET %s", queue_key(kind));
    if (!rep) return -1;
    *n = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : 0;
    freeReplyObject(rep);
    return 0;
}

int fl_model_hash_cached(fl_redis *r, const char *path, char hex[65], fl_error *err) {
    struct stat st;
    char real[4096];
    if (!realpath(path, real) || stat(real, &st) != 0) return fl_fail(err, FL_EIO, "%s: cannot stat", path);
    char key[4300];
    snprintf(key, sizeof key, "fl:modelhash:%s:%lld:%lld.%09ld", real, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
             st.st_mtim.tv_nsec);
    fl_error ignored = {0};
    redisReply *rep = r ? fl_redis_cmd(r, &ignored, "GET %s", key) : NULL;
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len == 64) {
        memcpy(hex, rep->str, 65);
        freeReplyObject(rep);
        return 0;
    }
    if (rep) freeReplyObject(rep);
    if (fl_sha256_file(real, hex, err) != 0) return -1;
    if (r && (rep = fl_redis_cmd(r, &ignored, "SET %s %s", key, hex))) freeReplyObject(rep);
    return 0;
}
