/*
 * worker.c — the worker loop (see worker.h): read jobs from the Redis work streams, hand them to
 * the generation and training code (worker_generate.c, worker_train.c), renew claims, see cancels,
 * hand jobs back when stopping, reclaim what dead workers left behind, publish heartbeats, and
 * run the retention sweep (worker_sweep.c).
 */
#include "serve/worker.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/device.h"
#include "core/fileio.h"
#include "core/log.h"
#include "serve/jobs.h"
#include "serve/redis.h"
#include "serve/worker_internal.h"

fl_worker_config fl_worker_config_default(void) {
    fl_worker_config c;
    memset(&c, 0, sizeof c);
    c.device = "cpu";
    c.max_batch = 8;
    c.batch_wait_ms = 5;
    c.claim_timeout_ms = 60000;
    c.max_deliveries = 3;
    c.cache_bytes = (size_t)1 << 30;
    c.device_cache_bytes = (size_t)1 << 30;
    c.checkpoint_every = 10;
    c.shutdown_timeout_ms = 30000;
    c.sweep_interval_ms = 10000;
    return c;
}

static char *error_json(const char *code, const char *message) {
    json_t *o = json_pack("{s:s, s:s}", "code", code, "message", message);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    FL_CHECK(text);
    return text;
}

/* ---- stream plumbing ------------------------------------------------------------------------- */

/* Appends the entries of one stream's [[id, [field, value, ...]], ...] array. */
static void collect_entries(const redisReply *entries, work_item *items, int *n, int max) {
    if (!entries || entries->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i < entries->elements && *n < max; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[0]->type != REDIS_REPLY_STRING) continue;
        const redisReply *fields = e->element[1];
        work_item *it = &items[*n];
        memset(it, 0, sizeof *it);
        snprintf(it->entry, sizeof it->entry, "%s", e->element[0]->str);
        if (fields->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k + 1 < fields->elements; k += 2)
                if (!strcmp(fields->element[k]->str, "job"))
                    snprintf(it->job, sizeof it->job, "%s", fields->element[k + 1]->str);
        (*n)++;
    }
}

/* XREADGROUP over one or both streams: items of the generate stream go to gen, of the train
 * stream to train. block_ms < 0: no BLOCK. */
static int read_group(worker_state *w, bool want_gen, bool want_train, int count, int block_ms, work_item *gen,
                      int *n_gen, work_item *train, int *n_train, fl_error *err) {
    const char *argv[16];
    char count_s[16], block_s[16];
    int argc = 0;
    snprintf(count_s, sizeof count_s, "%d", count);
    snprintf(block_s, sizeof block_s, "%d", block_ms);
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = FL_JOBS_GROUP;
    argv[argc++] = w->name;
    argv[argc++] = "COUNT";
    argv[argc++] = count_s;
    if (block_ms >= 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = block_s;
    }
    argv[argc++] = "STREAMS";
    if (want_gen) argv[argc++] = fl_job_stream_key(FL_JOB_GENERATE);
    if (want_train) argv[argc++] = fl_job_stream_key(FL_JOB_TRAIN);
    if (want_gen) argv[argc++] = ">";
    if (want_train) argv[argc++] = ">";
    redisReply *rep = fl_redis_argv(w->r, err, argc, argv, NULL);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_ARRAY) {
        for (size_t s = 0; s < rep->elements; s++) {
            const redisReply *st = rep->element[s];
            if (st->type != REDIS_REPLY_ARRAY || st->elements < 2) continue;
            bool is_gen = !strcmp(st->element[0]->str, fl_job_stream_key(FL_JOB_GENERATE));
            if (is_gen)
                collect_entries(st->element[1], gen, n_gen, FL_WORKER_MAX_ITEMS);
            else
                collect_entries(st->element[1], train, n_train, FL_WORKER_MAX_ITEMS);
        }
    }
    freeReplyObject(rep);
    return 0;
}

fl_claim fl_worker_keep_claim(worker_state *w, fl_job_kind kind, const work_item *it) {
    fl_error err = {0};
    fl_claim claim = FL_CLAIM_HELD;
    if (fl_jobs_keep_claim(w->r, kind, it->job, it->entry, w->name, &claim, &err) != 0) {
        fl_log_warn("worker %s: job %s: cannot renew the claim: %s", w->name, it->job, err.message);
        return FL_CLAIM_HELD;
    }
    w->last_keepalive_ms = fl_now_ms();
    if (claim == FL_CLAIM_LOST)
        fl_log_warn("worker %s: job %s was taken over by another worker: stopping it here", w->name, it->job);
    return claim;
}

bool fl_worker_poll_due(const worker_state *w, int64_t *last) {
    int period = w->cfg.claim_timeout_ms / 4 < 250 ? w->cfg.claim_timeout_ms / 4 : 250;
    int64_t now = fl_monotonic_ms();
    if (*last != 0 && now - *last < (period > 10 ? period : 10)) return false;
    *last = now;
    return true;
}

bool fl_worker_stopping(worker_state *w) {
    if (!*w->stop) return false;
    if (w->stop_seen_ms == 0) {
        w->stop_seen_ms = fl_monotonic_ms();
        fl_log_info("worker %s: stopping: no new work; running jobs finish or go back to the queue", w->name);
    }
    return true;
}

bool fl_worker_abandon_generation(worker_state *w, int64_t remaining_ms) {
    if (!fl_worker_stopping(w)) return false;
    return remaining_ms < 0 || fl_monotonic_ms() + remaining_ms > w->stop_seen_ms + w->cfg.shutdown_timeout_ms / 2;
}

void fl_worker_ack(worker_state *w, fl_job_kind kind, const char *entry) {
    fl_error err = {0};
    if (fl_jobs_ack(w->r, kind, entry, &err) != 0) fl_log_warn("worker %s: XACK %s: %s", w->name, entry, err.message);
}

/* The message is stored as it is: whatever shows it to a client (the HTTP layer) takes server
 * paths out. */
static void end_job(worker_state *w, fl_job_kind kind, const work_item *it, const char *state, const char *code,
                    const char *message) {
    char *text = error_json(code, message);
    fl_error err = {0};
    if (fl_jobs_finish_as(w->r, it->job, state, text, NULL, &err) != 0) {
        fl_log_warn("worker %s: cannot finish job %s: %s", w->name, it->job, err.message);
    } else {
        fl_worker_ack(w, kind, it->entry);
        if (kind == FL_JOB_TRAIN) fl_jobs_remove_files(w->cfg.state_dir, it->job);
    }
    fl_log_info("job %s %s: %s", it->job, state, message);
    free(text);
}

void fl_worker_fail_job(worker_state *w, fl_job_kind kind, const work_item *it, const char *code, const char *message) {
    end_job(w, kind, it, "failed", code, message);
}

void fl_worker_cancel_job(worker_state *w, fl_job_kind kind, const work_item *it) {
    end_job(w, kind, it, "canceled", "canceled", "canceled by the client");
}

void fl_worker_requeue(worker_state *w, fl_job_kind kind, const work_item *it) {
    fl_error err = {0};
    fl_requeue_outcome out = FL_REQUEUE_NOT_HELD;
    if (fl_jobs_requeue(w->r, kind, it->job, it->entry, w->name, &out, &err) != 0) {
        fl_log_warn("worker %s: cannot hand job %s back (another worker takes it after the claim timeout): %s",
                    w->name, it->job, err.message);
        return;
    }
    if (out == FL_REQUEUE_CANCELED && kind == FL_JOB_TRAIN) fl_jobs_remove_files(w->cfg.state_dir, it->job);
    const char *what = out == FL_REQUEUED            ? "handed back to the queue"
                       : out == FL_REQUEUE_CANCELED ? "canceled"
                                                    : "is not this worker's any more";
    fl_log_info("worker %s: job %s %s", w->name, it->job, what);
}

/* ---- heartbeat ------------------------------------------------------------------------------- */

int fl_worker_register_image(worker_state *w, const char *img_id, const char *tenant, const char *job,
                             unsigned long long seed, int width, int height, fl_error *err) {
    redisReply *rep = fl_redis_cmd(w->r, err, "HSET fl:image:%s tenant %s job %s seed %llu width %d height %d created_ms %lld",
                                   img_id, tenant, job, seed, width, height, (long long)fl_now_ms());
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

void fl_worker_heartbeat(worker_state *w, bool force) {
    int64_t now = fl_now_ms();
    if (!force && now - w->last_heartbeat_ms < 500) return;
    w->last_heartbeat_ms = now;
    fl_adapter_cache_stats cs = fl_adapter_cache_get_stats(w->cache);
    const char *hashes[32];
    size_t n = fl_adapter_cache_resident(w->cache, hashes, 32);
    char list[32 * 17 + 1] = "";
    size_t off = 0;
    for (size_t i = 0; i < n; i++) off += (size_t)snprintf(list + off, sizeof list - off, "%s%.16s", i ? "," : "", hashes[i]);
    char s[8][32];
    snprintf(s[0], 32, "%llu", (unsigned long long)cs.hits);
    snprintf(s[1], 32, "%llu", (unsigned long long)cs.misses);
    snprintf(s[2], 32, "%llu", (unsigned long long)cs.evictions);
    snprintf(s[3], 32, "%zu", cs.resident);
    snprintf(s[4], 32, "%zu", cs.resident_bytes);
    snprintf(s[5], 32, "%llu", w->jobs_done);
    snprintf(s[6], 32, "%lld", (long long)now);
    snprintf(s[7], 32, "%d", (int)getpid());
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(w->r, &err,
                                   "HSET fl:worker:%s name %s pid %s device %s cache_hits %s cache_misses %s "
                                   "cache_evictions %s resident_adapters %s resident_bytes %s adapters %s jobs_done %s "
                                   "current_job %s updated_ms %s",
                                   w->name, w->name, s[7], w->cfg.device, s[0], s[1], s[2], s[3], s[4], list, s[5],
                                   w->current_job, s[6]);
    if (rep) freeReplyObject(rep);
    /* Residency: sets attached to the model, and how often batches attached, detached and planned. */
    char d[5][32];
    snprintf(d[0], 32, "%llu", (unsigned long long)cs.attaches);
    snprintf(d[1], 32, "%llu", (unsigned long long)cs.detaches);
    snprintf(d[2], 32, "%llu", (unsigned long long)fl_flux_plan_count(w->model));
    snprintf(d[3], 32, "%zu", cs.attached);
    snprintf(d[4], 32, "%zu", cs.attached_bytes);
    if ((rep = fl_redis_cmd(w->r, &err, "HSET fl:worker:%s adapter_attaches %s adapter_detaches %s forward_plans %s "
                                        "attached_adapters %s attached_bytes %s",
                            w->name, d[0], d[1], d[2], d[3], d[4])))
        freeReplyObject(rep);
    if ((rep = fl_redis_cmd(w->r, &err, "EXPIRE fl:worker:%s 30", w->name))) freeReplyObject(rep);
    if ((rep = fl_redis_cmd(w->r, &err, "SADD fl:workers %s", w->name))) freeReplyObject(rep);
}

/* ---- reclaiming ----------------------------------------------------------------------------------- */

static int deliveries_of(worker_state *w, fl_job_kind kind, const char *entry) {
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(w->r, &err, "XPENDING %s %s %s %s 1", fl_job_stream_key(kind), FL_JOBS_GROUP,
                                   entry, entry);
    int n = 0;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 && rep->element[0]->elements >= 4)
        n = (int)rep->element[0]->element[3]->integer;
    if (rep) freeReplyObject(rep);
    return n;
}

/* Consumers of workers long gone (nothing pending, idle for an hour) are removed from the group,
 * so restarts do not grow its consumer list without bound. */
static void prune_consumers(worker_state *w) {
    int64_t now = fl_now_ms();
    if (now - w->last_prune_ms < 60000) return;
    w->last_prune_ms = now;
    for (int k = 0; k < 2; k++) {
        const char *stream = fl_job_stream_key((fl_job_kind)k);
        fl_error err = {0};
        redisReply *rep = fl_redis_cmd(w->r, &err, "XINFO CONSUMERS %s %s", stream, FL_JOBS_GROUP);
        for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
            const redisReply *c = rep->element[i];
            const char *name = NULL;
            long long pending = -1, idle = 0;
            for (size_t f = 0; c->type == REDIS_REPLY_ARRAY && f + 1 < c->elements; f += 2) {
                const char *key = c->element[f]->str;
                const redisReply *v = c->element[f + 1];
                if (!strcmp(key, "name") && v->type == REDIS_REPLY_STRING) name = v->str;
                else if (!strcmp(key, "pending") && v->type == REDIS_REPLY_INTEGER) pending = v->integer;
                else if (!strcmp(key, "idle") && v->type == REDIS_REPLY_INTEGER) idle = v->integer;
            }
            if (!name || pending != 0 || idle < 3600 * 1000LL || !strcmp(name, w->name)) continue;
            redisReply *d = fl_redis_cmd(w->r, &err, "XGROUP DELCONSUMER %s %s %s", stream, FL_JOBS_GROUP, name);
            if (d) freeReplyObject(d);
        }
        if (rep) freeReplyObject(rep);
    }
}

static void reclaim(worker_state *w) {
    if (fl_worker_stopping(w)) return;
    int64_t now = fl_now_ms();
    int period = w->cfg.claim_timeout_ms / 4 > 250 ? w->cfg.claim_timeout_ms / 4 : 250;
    if (now - w->last_reclaim_ms < period) return;
    w->last_reclaim_ms = now;
    for (int k = 0; k < 2 && !fl_worker_stopping(w); k++) {
        fl_job_kind kind = k == 0 ? FL_JOB_GENERATE : FL_JOB_TRAIN;
        fl_error err = {0};
        char idle[32];
        snprintf(idle, sizeof idle, "%d", w->cfg.claim_timeout_ms);
        redisReply *rep = fl_redis_cmd(w->r, &err, "XAUTOCLAIM %s %s %s %s 0-0 COUNT 8", fl_job_stream_key(kind),
                                       FL_JOBS_GROUP, w->name, idle);
        if (!rep) continue;
        work_item items[FL_WORKER_MAX_ITEMS];
        int n = 0;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2) collect_entries(rep->element[1], items, &n, 8);
        freeReplyObject(rep);
        int keep = 0;
        for (int i = 0; i < n; i++) {
            int d = deliveries_of(w, kind, items[i].entry);
            fl_log_info("worker %s: took over job %s (delivery %d)", w->name, items[i].job, d);
            if (d > w->cfg.max_deliveries) {
                char msg[256];
                snprintf(msg, sizeof msg,
                         "the job was delivered %d times and no worker finished it (cap %d): giving up", d,
                         w->cfg.max_deliveries);
                fl_worker_fail_job(w, kind, &items[i], "delivery_cap", msg);
                continue;
            }
            items[keep++] = items[i];
        }
        if (keep == 0) continue;
        if (kind == FL_JOB_GENERATE) fl_worker_process_generate(w, items, keep);
        else
            for (int i = 0; i < keep && !fl_worker_stopping(w); i++) fl_worker_process_train(w, &items[i]);
    }
}

/* ---- the loop --------------------------------------------------------------------------------------- */

static int open_worker(worker_state *w, fl_error *err) {
    fl_device dev;
    char path[4200];
    if (fl_redis_connect(w->cfg.redis_address, &w->r, err) != 0) return -1;
    if (fl_jobs_init(w->r, err) != 0) return -1;
    if (fl_device_parse(w->cfg.device, &dev, err) != 0) return -1;
    if (!(w->ctx = fl_ctx_create(dev, err))) return -1;
    fl_pipeline_files files = {.model = w->cfg.model_path};
    if (fl_pipeline_open(w->ctx, &files, &w->pipe, err) != 0) return -1;
    w->model = fl_pipeline_model(w->pipe);
    w->params = *fl_flux_get_params(w->model);
    w->patch = fl_pipeline_get_info(w->pipe)->patch;
    /* The base model's identity, as the API computes it (cli/service.c). */
    struct stat st;
    if (fl_pipeline_get_info(w->pipe)->kind == FL_PIPELINE_PIXELS && stat(w->cfg.model_path, &st) == 0 &&
        S_ISREG(st.st_mode)) {
        if (fl_model_hash_cached(w->r, w->cfg.model_path, w->base_hash, err) != 0) return -1;
    } else {
        snprintf(w->base_hash, sizeof w->base_hash, "%s", fl_pipeline_fingerprint(w->pipe));
    }
    snprintf(path, sizeof path, "%s/store", w->cfg.state_dir);
    if (fl_store_open(path, &w->store, err) != 0) return -1;
    w->cache = fl_adapter_cache_create(fl_store_locate, w->store, w->model, w->cfg.cache_bytes);
    fl_adapter_cache_set_device_budget(w->cache, w->cfg.device_cache_bytes);
    const char *dirs[] = {"images", "jobs", "uploads"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", w->cfg.state_dir, dirs[i]);
        if (fl_mkdirs(path, err) != 0) return -1;
    }
    return 0;
}

static void close_worker(worker_state *w) {
    fl_worker_sweep_close(w);
    if (w->r) {
        fl_error err = {0};
        redisReply *rep = fl_redis_cmd(w->r, &err, "DEL fl:worker:%s", w->name);
        if (rep) freeReplyObject(rep);
        if ((rep = fl_redis_cmd(w->r, &err, "SREM fl:workers %s", w->name))) freeReplyObject(rep);
    }
    fl_adapter_cache_free(w->cache);
    fl_store_close(w->store);
    fl_pipeline_free(w->pipe); /* and its model */
    fl_ctx_destroy(w->ctx);
    fl_redis_close(w->r);
}

static int worker_loop(worker_state *w, fl_error *err) {
    if (open_worker(w, err) != 0) {
        close_worker(w);
        return -1;
    }
    fl_log_info("worker %s: ready (model %s, device %s)", w->name, w->cfg.model_path, w->cfg.device);
    fl_worker_heartbeat(w, true);
    int failures = 0;
    while (!fl_worker_stopping(w)) {
        fl_worker_heartbeat(w, false);
        reclaim(w);
        prune_consumers(w);
        fl_worker_sweep(w);
        work_item gen[FL_WORKER_MAX_ITEMS], train[FL_WORKER_MAX_ITEMS];
        int n_gen = 0, n_train = 0;
        fl_error e = {0};
        int batch = w->cfg.max_batch < FL_WORKER_MAX_ITEMS ? w->cfg.max_batch : FL_WORKER_MAX_ITEMS;
        int rc = read_group(w, true, false, batch, -1, gen, &n_gen, train, &n_train, &e);
        if (rc == 0 && n_gen == 0) rc = read_group(w, true, true, 1, 1000, gen, &n_gen, train, &n_train, &e);
        if (rc != 0) {
            if (failures++ % 10 == 0) fl_log_warn("worker %s: %s", w->name, e.message);
            if (strstr(e.message, "NOGROUP")) fl_jobs_init(w->r, &e);
            fl_sleep_ms(500);
            continue;
        }
        failures = 0;
        if (n_gen > 0 && n_gen < batch && w->cfg.batch_wait_ms > 0) {
            /* Give requests arriving together a moment to join the batch. */
            fl_sleep_ms(w->cfg.batch_wait_ms);
            read_group(w, true, false, batch - n_gen, -1, gen, &n_gen, train, &n_train, &e);
        }
        if (n_gen > 0) fl_worker_process_generate(w, gen, n_gen);
        for (int i = 0; i < n_train; i++) fl_worker_process_train(w, &train[i]);
    }
    fl_log_info("worker %s: stopped", w->name);
    close_worker(w);
    return 0;
}

static void default_name(char *name, size_t cap, int serial) {
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(name, cap, "%s-%d-%d", host, (int)getpid(), serial);
}

int fl_worker_run(const fl_worker_config *config, volatile sig_atomic_t *stop, fl_error *err) {
    worker_state w;
    memset(&w, 0, sizeof w);
    w.cfg = *config;
    w.stop = stop;
    if (config->name) snprintf(w.name, sizeof w.name, "%s", config->name);
    else default_name(w.name, sizeof w.name, 0);
    return worker_loop(&w, err);
}

struct fl_worker {
    worker_state state;
    pthread_t thread;
    volatile sig_atomic_t stop;
    fl_error err;
};

static void *worker_thread(void *arg) {
    fl_worker *wk = arg;
    if (worker_loop(&wk->state, &wk->err) != 0) fl_log_error("worker %s: %s", wk->state.name, wk->err.message);
    return NULL;
}

int fl_worker_start(const fl_worker_config *config, fl_worker **out, fl_error *err) {
    static int serial = 0; /* distinguishes the in-process workers of one process */
    fl_worker *wk = fl_xcalloc(1, sizeof *wk);
    wk->state.cfg = *config;
    wk->state.stop = &wk->stop;
    if (config->name) snprintf(wk->state.name, sizeof wk->state.name, "%s", config->name);
    else default_name(wk->state.name, sizeof wk->state.name, __atomic_fetch_add(&serial, 1, __ATOMIC_RELAXED));
    if (pthread_create(&wk->thread, NULL, worker_thread, wk) != 0) {
        free(wk);
        return fl_fail(err, FL_EIO, "cannot start a worker thread");
    }
    *out = wk;
    return 0;
}

void fl_worker_request_stop(fl_worker *w) {
    if (w) w->stop = 1;
}

void fl_worker_stop(fl_worker *w) {
    if (!w) return;
    w->stop = 1;
    pthread_join(w->thread, NULL);
    free(w);
}
