/*
 * api_ops.c — the routes for operators, answered without a key: /healthz (Redis's state —
 * reachable, restarts of the private server and why, persistence — live workers, queue depths)
 * and /metrics (Prometheus text: HTTP and job figures of this process, Redis's state, queues and
 * job states from Redis, adapter caches summed over the workers' heartbeats). Both count workers
 * the same way: by live heartbeats, pruning members whose heartbeat expired.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "serve/api_internal.h"
#include "serve/jobs.h"
#include "serve/metrics.h"

/* ---- what both routes read -------------------------------------------------------------------- */

typedef struct live_workers {
    long long n, hits, misses, evictions, resident, resident_bytes;
    long long attaches, detaches, plans, attached, attached_bytes; /* adapter residency */
} live_workers;

/* The workers with a live heartbeat (fl:worker:<name> exists; it expires 30 s after the last
 * heartbeat), their adapter-cache and residency figures summed. Members of fl:workers whose heartbeat expired
 * are removed from it when prune is set. */
static void count_live_workers(fl_redis *r, bool prune, live_workers *out) {
    memset(out, 0, sizeof *out);
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(r, &err, "SMEMBERS fl:workers");
    for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const redisReply *name = rep->element[i];
        if (name->type != REDIS_REPLY_STRING) continue;
        redisReply *h = fl_redis_cmd(r, &err, "HMGET fl:worker:%b updated_ms cache_hits cache_misses cache_evictions "
                                              "resident_adapters resident_bytes adapter_attaches adapter_detaches "
                                              "forward_plans attached_adapters attached_bytes",
                                     name->str, name->len);
        if (!h) continue; /* Redis failed: neither counted nor pruned */
        if (h->type == REDIS_REPLY_ARRAY && h->elements == 11 && h->element[0]->type == REDIS_REPLY_STRING) {
            long long v[10] = {0};
            for (int k = 0; k < 10; k++)
                if (h->element[k + 1]->type == REDIS_REPLY_STRING) v[k] = atoll(h->element[k + 1]->str);
            long long *sums[10] = {&out->hits,     &out->misses,   &out->evictions, &out->resident, &out->resident_bytes,
                                   &out->attaches, &out->detaches, &out->plans,     &out->attached, &out->attached_bytes};
            out->n++;
            for (int k = 0; k < 10; k++) *sums[k] += v[k];
        } else if (prune) {
            redisReply *d = fl_redis_cmd(r, &err, "SREM fl:workers %b", name->str, name->len); /* expired */
            if (d) freeReplyObject(d);
        }
        freeReplyObject(h);
    }
    if (rep) freeReplyObject(rep);
}

typedef struct redis_health {
    bool reachable;
    char error[512];               /* why not */
    bool supervised;               /* a private server supervised by this process */
    fl_redis_server_status sup;    /* its status when supervised */
    int aof_enabled;               /* -1: unknown */
    bool aof_write_ok, rdb_save_ok; /* Redis's own view of its last writes to disk */
} redis_health;

static bool info_field(const char *info, const char *name, char *value, size_t cap) {
    size_t n = strlen(name);
    for (const char *p = info; p && *p;) {
        if (!strncmp(p, name, n) && p[n] == ':') {
            size_t len = strcspn(p + n + 1, "\r\n");
            snprintf(value, cap, "%.*s", (int)len, p + n + 1);
            return true;
        }
        p = strchr(p, '\n');
        if (p) p++;
    }
    return false;
}

/* Redis's state as this process sees it; r may be NULL (no connection could be made, error set). */
static void read_redis_health(fl_api *api, fl_redis *r, const fl_error *conn_err, redis_health *h) {
    memset(h, 0, sizeof *h);
    h->aof_enabled = -1;
    h->aof_write_ok = h->rdb_save_ok = true;
    fl_error err = {0};
    /* INFO, not PING: Redis refuses even PING while it cannot persist (MISCONF), never INFO. */
    redisReply *rep = r ? fl_redis_cmd(r, &err, "INFO persistence") : NULL;
    if (rep) {
        h->reachable = true;
        if (rep->type == REDIS_REPLY_STRING) {
            char v[32];
            if (info_field(rep->str, "aof_enabled", v, sizeof v)) h->aof_enabled = atoi(v);
            if (info_field(rep->str, "aof_last_write_status", v, sizeof v)) h->aof_write_ok = !strcmp(v, "ok");
            if (info_field(rep->str, "rdb_last_bgsave_status", v, sizeof v)) h->rdb_save_ok = !strcmp(v, "ok");
        }
        freeReplyObject(rep);
    } else {
        snprintf(h->error, sizeof h->error, "%s", r ? err.message : conn_err->message);
    }
    h->supervised = fl_redis_supervised_status(api->cfg.redis_address, &h->sup);
}

static bool storage_full(const redis_health *h) {
    return (h->supervised && h->sup.storage_full) || !h->aof_write_ok || !h->rdb_save_ok;
}

/* ---- routes ------------------------------------------------------------------------------------- */

void fl_api_healthz(fl_api *api, fl_http_response *res) {
    fl_error err = {0};
    fl_redis *r = fl_api_pool_get(api, &err);
    redis_health h;
    read_redis_health(api, r, &err, &h);
    /* A supervised server is "starting" until it has proved it can write, even when it answers. */
    const char *state = h.supervised && (h.reachable || strcmp(h.sup.state, "up") != 0) ? h.sup.state
                        : h.reachable                                                    ? "up"
                                                                                         : "unreachable";
    json_t *redis = json_pack("{s:s, s:b, s:I, s:o, s:s, s:b}", "status", state, "supervised",
                              h.supervised, "restarts", (json_int_t)(h.supervised ? h.sup.restarts : 0), "last_error",
                              h.supervised && h.sup.last_error[0] ? json_string(h.sup.last_error) : json_null(), "aof",
                              h.aof_enabled < 0 ? "unknown" : !h.aof_enabled ? "off" : h.aof_write_ok ? "ok" : "err",
                              "storage_full", storage_full(&h));
    if (!h.reachable) {
        fl_api_pool_put(api, r);
        fl_http_reply_json(res, 503, json_pack("{s:s, s:s, s:o}", "status", "unavailable", "reason", h.error,
                                               "redis", redis));
        return;
    }
    char reason[640] = "";
    if (storage_full(&h))
        snprintf(reason, sizeof reason, "the service's disk is full or failing: Redis cannot persist (%s)",
                 !h.aof_write_ok ? "aof_last_write_status:err" : !h.rdb_save_ok ? "rdb_last_bgsave_status:err"
                                                                                 : h.sup.last_error);
    else if (h.supervised && h.sup.failures > 0)
        snprintf(reason, sizeof reason, "redis-server was restarted (%lld restarts; last: %s)", h.sup.restarts,
                 h.sup.last_error);
    live_workers lw;
    count_live_workers(r, !storage_full(&h), &lw);
    long long gen = 0, train = 0;
    fl_jobs_pending(r, FL_JOB_GENERATE, &gen, &err);
    fl_jobs_pending(r, FL_JOB_TRAIN, &train, &err);
    fl_api_pool_put(api, r);
    json_t *body = json_pack("{s:s, s:o, s:I, s:{s:I, s:I}, s:s}", "status", reason[0] ? "degraded" : "ok", "redis",
                             redis, "workers", (json_int_t)lw.n, "pending", "generate", (json_int_t)gen, "train",
                             (json_int_t)train, "base_model", api->cfg.base_model_hash);
    if (reason[0]) json_object_set_new(body, "reason", json_string(reason));
    fl_http_reply_json(res, 200, body);
}

/* Adapter residency, summed over the live workers: sets attached to the models, and how often
 * batches attached, detached and planned (zero growth while serving resident adapters). */
static void append_residency(const live_workers *lw, char **text, size_t *len, size_t *cap) {
    fl_metrics_appendf(text, len, cap,
                       "# HELP flashlora_adapter_attaches_total Adapter sets attached to worker models.\n"
                       "# TYPE flashlora_adapter_attaches_total counter\nflashlora_adapter_attaches_total %lld\n"
                       "# HELP flashlora_adapter_detaches_total Adapter sets detached from worker models.\n"
                       "# TYPE flashlora_adapter_detaches_total counter\nflashlora_adapter_detaches_total %lld\n"
                       "# HELP flashlora_forward_plans_total Activation plans measured by worker models.\n"
                       "# TYPE flashlora_forward_plans_total counter\nflashlora_forward_plans_total %lld\n"
                       "# HELP flashlora_attached_adapters Adapter sets attached to worker models.\n"
                       "# TYPE flashlora_attached_adapters gauge\nflashlora_attached_adapters %lld\n"
                       "# HELP flashlora_attached_adapter_bytes Device bytes of the attached adapter sets.\n"
                       "# TYPE flashlora_attached_adapter_bytes gauge\nflashlora_attached_adapter_bytes %lld\n",
                       lw->attaches, lw->detaches, lw->plans, lw->attached, lw->attached_bytes);
}

/* The front door: connections accepted, handed on, and refused by each of its limits. */
static void append_front_door(fl_api *api, char **text, size_t *len, size_t *cap) {
    fl_http_server *http = __atomic_load_n(&api->http, __ATOMIC_ACQUIRE);
    if (!http) return;
    fl_http_stats s;
    fl_http_get_stats(http, &s);
    fl_metrics_appendf(text, len, cap,
                       "# HELP flashlora_http_connections_total Connections accepted by the front door.\n"
                       "# TYPE flashlora_http_connections_total counter\nflashlora_http_connections_total %llu\n"
                       "# HELP flashlora_http_refused_total Connections the front door answered itself, by reason.\n"
                       "# TYPE flashlora_http_refused_total counter\n"
                       "flashlora_http_refused_total{reason=\"busy\"} %llu\n"
                       "flashlora_http_refused_total{reason=\"client_limit\"} %llu\n"
                       "flashlora_http_refused_total{reason=\"header_timeout\"} %llu\n"
                       "flashlora_http_refused_total{reason=\"bad_head\"} %llu\n"
                       "# HELP flashlora_http_serving Requests being served now.\n"
                       "# TYPE flashlora_http_serving gauge\nflashlora_http_serving %d\n"
                       "# HELP flashlora_http_pending_heads Connections waiting for their request head.\n"
                       "# TYPE flashlora_http_pending_heads gauge\nflashlora_http_pending_heads %d\n",
                       (unsigned long long)s.accepted, (unsigned long long)s.refused_busy,
                       (unsigned long long)s.refused_client, (unsigned long long)s.header_timeouts,
                       (unsigned long long)s.bad_heads, s.served_now, s.pending_now);
}

void fl_api_metrics(fl_api *api, fl_http_response *res) {
    char *text = NULL;
    size_t len = 0, cap = 0;
    fl_metrics_render(api->cfg.metrics, &text, &len, &cap);
    append_front_door(api, &text, &len, &cap);
    fl_error err = {0};
    fl_redis *r = fl_api_pool_get(api, &err);
    redis_health h;
    read_redis_health(api, r, &err, &h);
    fl_metrics_appendf(&text, &len, &cap,
                       "# HELP flashlora_redis_up Whether Redis answers this process (1) or not (0).\n"
                       "# TYPE flashlora_redis_up gauge\nflashlora_redis_up %d\n"
                       "# HELP flashlora_redis_supervised Whether this process runs and supervises a private "
                       "redis-server.\n# TYPE flashlora_redis_supervised gauge\nflashlora_redis_supervised %d\n"
                       "# HELP flashlora_redis_restarts_total Restarts of the private redis-server by this process.\n"
                       "# TYPE flashlora_redis_restarts_total counter\nflashlora_redis_restarts_total %lld\n"
                       "# HELP flashlora_redis_aof_enabled Whether Redis writes an append-only file (-1: unknown).\n"
                       "# TYPE flashlora_redis_aof_enabled gauge\nflashlora_redis_aof_enabled %d\n"
                       "# HELP flashlora_redis_aof_last_write_ok Whether Redis's last write of its append-only file "
                       "succeeded.\n# TYPE flashlora_redis_aof_last_write_ok gauge\n"
                       "flashlora_redis_aof_last_write_ok %d\n"
                       "# HELP flashlora_redis_storage_full Whether Redis cannot persist for want of disk (writes are "
                       "refused).\n# TYPE flashlora_redis_storage_full gauge\nflashlora_redis_storage_full %d\n",
                       h.reachable, h.supervised, h.supervised ? h.sup.restarts : 0LL, h.aof_enabled,
                       h.reachable && h.aof_write_ok, storage_full(&h));
    if (h.reachable) {
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
        const char *states[] = {"queued", "running", "succeeded", "failed", "canceled"};
        for (int s = 0; s < 5; s++) {
            long long v = 0;
            for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2)
                if (!strcmp(rep->element[i]->str, states[s])) v = atoll(rep->element[i + 1]->str);
            fl_metrics_appendf(&text, &len, &cap, "flashlora_jobs{state=\"%s\"} %lld\n", states[s], v);
        }
        if (rep) freeReplyObject(rep);
        /* Adapter caches: summed over the live workers' heartbeats. */
        live_workers lw;
        count_live_workers(r, !storage_full(&h), &lw);
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
                           lw.n, lw.hits, lw.misses, lw.evictions, lw.resident, lw.resident_bytes);
        append_residency(&lw, &text, &len, &cap);
    } else {
        char shown[600];
        snprintf(shown, sizeof shown, "%s", h.error);
        for (char *p = shown; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
        fl_metrics_appendf(&text, &len, &cap, "# redis unreachable: %s\n", shown);
    }
    fl_api_pool_put(api, r);
    fl_http_reply_bytes(res, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}
