/*
 * api_ops.c — the routes for operators, answered without a key: /healthz (Redis reachable, workers,
 * queue depths) and /metrics (Prometheus text: HTTP and job figures of this process, queues and
 * job states from Redis, adapter caches summed over the workers' heartbeats).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "serve/api_internal.h"
#include "serve/jobs.h"
#include "serve/metrics.h"

void fl_api_healthz(fl_api *api, fl_http_response *res) {
    fl_error err = {0};
    fl_redis *r = fl_api_pool_get(api, &err);
    redisReply *rep = r ? fl_redis_cmd(r, &err, "PING") : NULL;
    if (!rep) {
        fl_api_pool_put(api, r);
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
    fl_api_pool_put(api, r);
    fl_http_reply_json(res, 200, json_pack("{s:s, s:s, s:I, s:{s:I, s:I}, s:s}", "status", "ok", "redis", "ok",
                                           "workers", (json_int_t)workers, "pending", "generate", (json_int_t)gen,
                                           "train", (json_int_t)train, "base_model", api->cfg.base_model_hash));
}

void fl_api_metrics(fl_api *api, fl_http_response *res) {
    char *text = NULL;
    size_t len = 0, cap = 0;
    fl_metrics_render(api->cfg.metrics, &text, &len, &cap);
    fl_error err = {0};
    fl_redis *r = fl_api_pool_get(api, &err);
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
        const char *states[] = {"queued", "running", "succeeded", "failed", "canceled"};
        for (int s = 0; s < 5; s++) {
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
        fl_api_pool_put(api, r);
    } else {
        fl_metrics_appendf(&text, &len, &cap, "# redis unreachable: %s\n", err.message);
    }
    fl_http_reply_bytes(res, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}
