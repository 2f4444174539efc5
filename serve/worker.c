/*
 * worker.c — the worker loop: read jobs from the Redis work streams, batch generations across
 * adapters, run trainings with checkpoints, store results, acknowledge, reclaim what dead workers
 * left behind (see worker.h).
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

#include "adapters/cache.h"
#include "serve/registry.h"
#include "serve/store.h"
#include "core/clock.h"
#include "core/device.h"
#include "core/fileio.h"
#include "core/log.h"
#include "models/sampler.h"
#include "serve/jobs.h"
#include "serve/redis.h"
#include "trainer/run.h"

#define MAX_ITEMS 64

typedef struct work_item {
    char entry[64];       /* work-stream entry id */
    char job[FL_ID_MAX];
} work_item;

typedef struct worker_state {
    fl_worker_config cfg;
    char name[96];
    volatile sig_atomic_t *stop;
    fl_redis *r;
    fl_ctx *ctx;
    fl_flux_model *model;
    fl_flux_params params;
    int patch;
    char base_hash[65];
    fl_store *store;
    fl_adapter_cache *cache;
    int64_t last_reclaim_ms, last_heartbeat_ms, last_keepalive_ms, last_prune_ms;
    unsigned long long jobs_done;
    char current_job[FL_ID_MAX];
    fl_job_kind current_kind;
    char current_entry[64];
} worker_state;

fl_worker_config fl_worker_config_default(void) {
    fl_worker_config c;
    memset(&c, 0, sizeof c);
    c.device = "cpu";
    c.max_batch = 8;
    c.batch_wait_ms = 5;
    c.claim_timeout_ms = 60000;
    c.max_deliveries = 3;
    c.cache_bytes = (size_t)1 << 30;
    c.checkpoint_every = 10;
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
                collect_entries(st->element[1], gen, n_gen, MAX_ITEMS);
            else
                collect_entries(st->element[1], train, n_train, MAX_ITEMS);
        }
    }
    freeReplyObject(rep);
    return 0;
}

/* Renews this worker's claim on an entry so no other worker takes it over while it runs. */
static void keep_claim(worker_state *w, fl_job_kind kind, const char *entry) {
    fl_error err = {0};
    char idle[16];
    snprintf(idle, sizeof idle, "0");
    redisReply *rep = fl_redis_cmd(w->r, &err, "XCLAIM %s %s %s %s %s JUSTID", fl_job_stream_key(kind), FL_JOBS_GROUP,
                                   w->name, idle, entry);
    if (rep) freeReplyObject(rep);
    w->last_keepalive_ms = fl_now_ms();
}

static void ack(worker_state *w, fl_job_kind kind, const char *entry) {
    fl_error err = {0};
    if (fl_jobs_ack(w->r, kind, entry, &err) != 0) fl_log_warn("worker %s: XACK %s: %s", w->name, entry, err.message);
}

static void fail_job(worker_state *w, fl_job_kind kind, const work_item *it, const char *code, const char *message) {
    char *text = error_json(code, message);
    fl_error err = {0};
    if (fl_jobs_finish(w->r, it->job, false, text, NULL, &err) != 0)
        fl_log_warn("worker %s: cannot finish job %s: %s", w->name, it->job, err.message);
    else
        ack(w, kind, it->entry);
    fl_log_info("job %s failed: %s", it->job, message);
    free(text);
}

/* ---- heartbeat ------------------------------------------------------------------------------- */

static void heartbeat(worker_state *w, bool force) {
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
    if ((rep = fl_redis_cmd(w->r, &err, "EXPIRE fl:worker:%s 30", w->name))) freeReplyObject(rep);
    if ((rep = fl_redis_cmd(w->r, &err, "SADD fl:workers %s", w->name))) freeReplyObject(rep);
}

/* ---- generation -------------------------------------------------------------------------------- */

#define MAX_REQ_ADAPTERS 8

typedef struct gen_request {
    work_item item;
    char tenant[FL_TENANT_MAX];
    char *prompt;
    int width, height, steps, num_images, max_text_tokens;
    float guidance;
    uint64_t seed;
    int n_adapters;
    char adapter_ids[MAX_REQ_ADAPTERS][FL_ID_MAX];
    char adapter_sha[MAX_REQ_ADAPTERS][65];
    float adapter_scale[MAX_REQ_ADAPTERS];
    int64_t created_ms;
    bool done; /* finished (or failed) already */
} gen_request;

static int parse_gen_request(const char *text, gen_request *g, fl_error *err) {
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    if (!o) return fl_fail(err, FL_EINVAL, "stored request is not JSON: %s", jerr.text);
    const char *prompt = json_string_value(json_object_get(o, "prompt"));
    g->prompt = fl_xstrdup(prompt ? prompt : "");
    g->width = (int)json_integer_value(json_object_get(o, "width"));
    g->height = (int)json_integer_value(json_object_get(o, "height"));
    g->steps = (int)json_integer_value(json_object_get(o, "steps"));
    g->num_images = (int)json_integer_value(json_object_get(o, "num_images"));
    g->max_text_tokens = (int)json_integer_value(json_object_get(o, "max_text_tokens"));
    g->guidance = (float)json_number_value(json_object_get(o, "guidance"));
    g->seed = (uint64_t)json_integer_value(json_object_get(o, "seed"));
    json_t *ads = json_object_get(o, "adapters");
    int rc = 0;
    if (g->num_images < 1 || g->steps < 1 || g->width < 1 || g->height < 1 || g->max_text_tokens < 1)
        rc = fl_fail(err, FL_EINVAL, "stored request lacks a size, steps, text length or image count");
    for (size_t i = 0; rc == 0 && i < json_array_size(ads); i++) {
        if (i >= MAX_REQ_ADAPTERS) {
            rc = fl_fail(err, FL_ELIMIT, "more than %d adapters", MAX_REQ_ADAPTERS);
            break;
        }
        json_t *a = json_array_get(ads, i);
        const char *id = json_string_value(json_object_get(a, "id"));
        const char *sha = json_string_value(json_object_get(a, "sha256"));
        if (!id || !sha) {
            rc = fl_fail(err, FL_EINVAL, "stored adapter entry %zu lacks id or sha256", i);
            break;
        }
        snprintf(g->adapter_ids[i], FL_ID_MAX, "%s", id);
        snprintf(g->adapter_sha[i], 65, "%s", sha);
        g->adapter_scale[i] = (float)json_number_value(json_object_get(a, "scale"));
        g->n_adapters = (int)i + 1;
    }
    json_decref(o);
    return rc;
}

static bool compatible(const gen_request *a, const gen_request *b) {
    return a->width == b->width && a->height == b->height && a->steps == b->steps &&
           a->max_text_tokens == b->max_text_tokens;
}

/* Runs one batch: attaches the union of its adapters, samples every image in one pass, writes
 * the PNGs, and finishes and acknowledges each request. */
static void run_batch(worker_state *w, gen_request **reqs, int n) {
    fl_flux_clear_adapters(w->model);
    fl_adapter_cache_unpin_all(w->cache);
    char union_sha[FL_FLUX_MAX_ADAPTERS][65];
    int union_set[FL_FLUX_MAX_ADAPTERS];
    int n_union = 0;
    /* Resolve every request's adapters; a request whose adapter cannot be loaded fails alone. */
    for (int i = 0; i < n; i++) {
        gen_request *g = reqs[i];
        for (int k = 0; k < g->n_adapters && !g->done; k++) {
            int found = -1;
            for (int u = 0; u < n_union; u++)
                if (!strcmp(union_sha[u], g->adapter_sha[k])) found = u;
            if (found >= 0) continue;
            const fl_lora *lora = NULL;
            fl_error err = {0};
            int set_id = -1;
            if (fl_adapter_cache_get(w->cache, g->adapter_sha[k], &lora, &err) == 0) {
                fl_adapter_cache_pin(w->cache, g->adapter_sha[k]);
                set_id = fl_flux_add_adapter(w->model, lora->pairs, lora->n_pairs, 1.0f, false, &err);
            }
            if (set_id < 0) {
                char msg[700];
                snprintf(msg, sizeof msg, "adapter %s: %s", g->adapter_ids[k], err.message);
                fail_job(w, FL_JOB_GENERATE, &g->item, "adapter_unavailable", msg);
                g->done = true;
                break;
            }
            snprintf(union_sha[n_union], 65, "%s", g->adapter_sha[k]);
            union_set[n_union++] = set_id;
        }
    }
    int total = 0;
    for (int i = 0; i < n; i++)
        if (!reqs[i]->done) total += reqs[i]->num_images;
    if (total == 0) {
        fl_flux_clear_adapters(w->model);
        fl_adapter_cache_unpin_all(w->cache);
        return;
    }
    fl_sample_request *samples = fl_xcalloc((size_t)total, sizeof *samples);
    float **images = fl_xcalloc((size_t)total, sizeof *images);
    const gen_request *first = NULL;
    int s = 0;
    for (int i = 0; i < n; i++) {
        gen_request *g = reqs[i];
        if (g->done) continue;
        first = first ? first : g;
        for (int k = 0; k < g->num_images; k++, s++) {
            samples[s].prompt = g->prompt;
            samples[s].seed = g->seed + (uint64_t)k;
            samples[s].guidance = g->guidance;
            samples[s].adapters.n = g->n_adapters;
            for (int a = 0; a < g->n_adapters; a++) {
                for (int u = 0; u < n_union; u++)
                    if (!strcmp(union_sha[u], g->adapter_sha[a])) samples[s].adapters.set_ids[a] = union_set[u];
                samples[s].adapters.multipliers[a] = g->adapter_scale[a];
            }
            images[s] = fl_xmalloc((size_t)g->width * (size_t)g->height * 3 * sizeof(float));
        }
    }
    fl_error err = {0};
    int64_t t0 = fl_now_ms();
    int rc = fl_flux_sample_pixels_batch(w->model, first->width, first->height, first->steps, first->max_text_tokens,
                                         samples, total, images, &err);
    double seconds = (double)(fl_now_ms() - t0) / 1000.0;
    if (rc == 0 && w->cfg.metrics) fl_metrics_observe_batch(w->cfg.metrics, total, seconds);
    fl_flux_clear_adapters(w->model);
    fl_adapter_cache_unpin_all(w->cache);
    fl_log_info("worker %s: batch of %d images (%d requests) in %.2f s", w->name, total, n, seconds);

    s = 0;
    for (int i = 0; i < n; i++) {
        gen_request *g = reqs[i];
        if (g->done) continue;
        int first_sample = s;
        s += g->num_images; /* the next request's images start there, whatever happens to this one */
        if (rc != 0) {
            fail_job(w, FL_JOB_GENERATE, &g->item, fl_error_code_name(err.code), err.message);
            g->done = true;
            continue;
        }
        json_t *result = json_pack("{s:[], s:i}", "images", "batch_size", total);
        json_t *list = json_object_get(result, "images");
        int wrc = 0;
        fl_error werr = {0};
        for (int k = 0; k < g->num_images && wrc == 0; k++) {
            char img_id[FL_ID_MAX], path[4096], url[160];
            fl_jobs_new_id("img", img_id);
            snprintf(path, sizeof path, "%s/images/%s.png", w->cfg.state_dir, img_id);
            wrc = fl_png_write(path, images[first_sample + k], g->width, g->height, &werr);
            if (wrc != 0) break;
            char seed_s[32], now_s[32], w_s[16], h_s[16];
            snprintf(seed_s, sizeof seed_s, "%llu", (unsigned long long)(g->seed + (uint64_t)k));
            snprintf(now_s, sizeof now_s, "%lld", (long long)fl_now_ms());
            snprintf(w_s, sizeof w_s, "%d", g->width);
            snprintf(h_s, sizeof h_s, "%d", g->height);
            redisReply *rep = fl_redis_cmd(w->r, &werr, "HSET fl:image:%s tenant %s job %s seed %s width %s height %s created_ms %s",
                                           img_id, g->tenant, g->item.job, seed_s, w_s, h_s, now_s);
            if (!rep) {
                wrc = -1;
                break;
            }
            freeReplyObject(rep);
            snprintf(url, sizeof url, "/v1/images/%s.png", img_id);
            json_array_append_new(list, json_pack("{s:s, s:s, s:I, s:i, s:i}", "id", img_id, "url", url, "seed",
                                                  (json_int_t)(g->seed + (uint64_t)k), "width", g->width, "height",
                                                  g->height));
        }
        if (wrc != 0) {
            json_decref(result);
            fail_job(w, FL_JOB_GENERATE, &g->item, "io_error", werr.message);
            g->done = true;
            continue;
        }
        char *text = json_dumps(result, JSON_COMPACT);
        json_decref(result);
        bool changed = false;
        fl_error ferr = {0};
        if (fl_jobs_finish(w->r, g->item.job, true, text, &changed, &ferr) == 0) {
            ack(w, FL_JOB_GENERATE, g->item.entry);
            w->jobs_done++;
            if (w->cfg.metrics) fl_metrics_observe_job(w->cfg.metrics, "generate", (double)(fl_now_ms() - g->created_ms) / 1000.0);
        } else {
            fl_log_warn("worker %s: cannot finish job %s: %s (left pending)", w->name, g->item.job, ferr.message);
        }
        free(text);
        g->done = true;
    }
    for (int i = 0; i < total; i++) free(images[i]);
    free(images);
    free(samples);
}

static void process_generate(worker_state *w, const work_item *items, int n) {
    gen_request *reqs = fl_xcalloc((size_t)n, sizeof *reqs);
    int live = 0;
    for (int i = 0; i < n; i++) {
        gen_request *g = &reqs[live];
        memset(g, 0, sizeof *g);
        g->item = items[i];
        int attempts = 0;
        bool finished = false;
        fl_error err = {0};
        if (fl_jobs_start(w->r, items[i].job, w->name, &attempts, &finished, &err) != 0) {
            if (err.code == FL_ENOTFOUND) ack(w, FL_JOB_GENERATE, items[i].entry); /* a job record that is gone */
            else fl_log_warn("worker %s: job %s: %s", w->name, items[i].job, err.message);
            continue;
        }
        if (finished) {
            ack(w, FL_JOB_GENERATE, items[i].entry);
            continue;
        }
        fl_job job;
        if (fl_jobs_get(w->r, NULL, items[i].job, &job, &err) != 0) continue;
        snprintf(g->tenant, sizeof g->tenant, "%s", job.tenant);
        g->created_ms = job.created_ms;
        int rc = job.request_json ? parse_gen_request(job.request_json, g, &err) : fl_fail(&err, FL_EINVAL, "no request");
        fl_job_clear(&job);
        if (rc != 0) {
            fail_job(w, FL_JOB_GENERATE, &g->item, "invalid_input", err.message);
            free(g->prompt);
            continue;
        }
        live++;
    }
    /* Batches: compatible requests in arrival order, up to max_batch images and the adapter
     * slots of a Linear. */
    gen_request **batch = fl_xcalloc((size_t)(live ? live : 1), sizeof *batch);
    for (int i = 0; i < live; i++) {
        if (reqs[i].done) continue;
        int nb = 0, images = 0;
        char shas[FL_FLUX_MAX_ADAPTERS][65];
        int n_shas = 0;
        for (int j = i; j < live; j++) {
            gen_request *g = &reqs[j];
            if (g->done || !compatible(&reqs[i], g)) continue;
            bool taken = false;
            for (int b = 0; b < nb; b++) taken = taken || batch[b] == g;
            if (taken) continue;
            int new_shas = 0;
            for (int a = 0; a < g->n_adapters; a++) {
                bool have = false;
                for (int u = 0; u < n_shas; u++) have = have || !strcmp(shas[u], g->adapter_sha[a]);
                for (int b = 0; b < a && !have; b++) have = !strcmp(g->adapter_sha[b], g->adapter_sha[a]);
                if (!have) new_shas++;
            }
            if (nb > 0 && (images + g->num_images > w->cfg.max_batch || n_shas + new_shas > FL_FLUX_MAX_ADAPTERS))
                continue;
            for (int a = 0; a < g->n_adapters; a++) {
                bool have = false;
                for (int u = 0; u < n_shas; u++) have = have || !strcmp(shas[u], g->adapter_sha[a]);
                if (!have && n_shas < FL_FLUX_MAX_ADAPTERS) snprintf(shas[n_shas++], 65, "%s", g->adapter_sha[a]);
            }
            batch[nb++] = g;
            images += g->num_images;
        }
        for (int b = 0; b < nb; b++) keep_claim(w, FL_JOB_GENERATE, batch[b]->item.entry);
        run_batch(w, batch, nb);
    }
    for (int i = 0; i < live; i++) free(reqs[i].prompt);
    free(batch);
    free(reqs);
}

/* ---- training ---------------------------------------------------------------------------------- */

typedef struct train_ctx {
    worker_state *w;
    const work_item *item;
} train_ctx;

static void on_train_event(void *arg, json_t *event) {
    train_ctx *tc = arg;
    worker_state *w = tc->w;
    char *text = json_dumps(event, JSON_COMPACT);
    if (!text) return;
    const char *kind = json_string_value(json_object_get(event, "event"));
    int step = -1, total = 0;
    double loss = 0, eta = 0;
    if (kind && !strcmp(kind, "progress")) {
        step = (int)json_integer_value(json_object_get(event, "step"));
        total = (int)json_integer_value(json_object_get(event, "total"));
        loss = json_number_value(json_object_get(event, "loss"));
        eta = json_number_value(json_object_get(event, "eta_s"));
    }
    fl_error err = {0};
    if (fl_jobs_event(w->r, tc->item->job, text, step, total, loss, eta, &err) != 0)
        fl_log_warn("worker %s: job %s: event not stored: %s", w->name, tc->item->job, err.message);
    free(text);
    if (fl_now_ms() - w->last_keepalive_ms >= 1000) keep_claim(w, FL_JOB_TRAIN, tc->item->entry);
    heartbeat(w, false);
}

static bool train_should_stop(void *arg) {
    train_ctx *tc = arg;
    return *tc->w->stop != 0;
}

static void remove_job_dir(const char *dir) {
    char path[4200];
    const char *files[] = {"adapter.safetensors", "adapter.safetensors.ckpt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* The adapter of training job "job_X" is "ad_X": a retried job can find what it registered. */
static void adapter_id_of_job(const char *job_id, char id[FL_ID_MAX]) {
    const char *suffix = strchr(job_id, '_') ? strchr(job_id, '_') + 1 : job_id;
    snprintf(id, FL_ID_MAX, "ad_%.56s", suffix);
}

/* Stores and registers the adapter of a finished training under an id derived from the job, so
 * a job that is retried after a crash between registering and finishing registers nothing twice. */
static int register_adapter(worker_state *w, const fl_job *job, json_t *req, const char *path, fl_adapter_info *info,
                            fl_error *err) {
    char id[FL_ID_MAX];
    adapter_id_of_job(job->id, id);
    fl_error ignored = {0};
    if (fl_registry_get(w->r, job->tenant, id, info, &ignored) == 0) return 0; /* registered already */
    memset(info, 0, sizeof *info);
    snprintf(info->id, sizeof info->id, "%s", id);
    snprintf(info->tenant, sizeof info->tenant, "%s", job->tenant);
    const char *name = json_string_value(json_object_get(req, "name"));
    snprintf(info->name, sizeof info->name, "%s", name && *name ? name : info->id);
    const char *trigger = json_string_value(json_object_get(req, "trigger_word"));
    snprintf(info->trigger, sizeof info->trigger, "%s", trigger ? trigger : "");
    snprintf(info->base_model, sizeof info->base_model, "%s", w->base_hash);
    snprintf(info->source, sizeof info->source, "training:%s", job->id);
    unsigned char *data = NULL;
    size_t size = 0;
    if (fl_read_file(path, (size_t)1 << 40, &data, &size, err) != 0) return -1;
    int rc = fl_registry_import_bytes(w->r, w->store, &w->params, data, size, info, err);
    if (rc != 0 && err->code == FL_ECONFLICT) {
        /* The name was taken while the job ran: keep the adapter under a suffixed name. */
        char alt[FL_NAME_MAX];
        snprintf(alt, sizeof alt, "%.100s-%.8s", info->name, info->id + 3);
        snprintf(info->name, sizeof info->name, "%s", alt);
        rc = fl_registry_import_bytes(w->r, w->store, &w->params, data, size, info, err);
    }
    free(data);
    return rc;
}

static void process_train(worker_state *w, const work_item *item) {
    int attempts = 0;
    bool finished = false;
    fl_error err = {0};
    if (fl_jobs_start(w->r, item->job, w->name, &attempts, &finished, &err) != 0) {
        if (err.code == FL_ENOTFOUND) ack(w, FL_JOB_TRAIN, item->entry);
        else fl_log_warn("worker %s: job %s: %s", w->name, item->job, err.message);
        return;
    }
    if (finished) {
        ack(w, FL_JOB_TRAIN, item->entry);
        return;
    }
    fl_job job;
    if (fl_jobs_get(w->r, NULL, item->job, &job, &err) != 0) return;
    json_error_t jerr;
    json_t *req = job.request_json ? json_loads(job.request_json, 0, &jerr) : NULL;
    if (!req) {
        fail_job(w, FL_JOB_TRAIN, item, "invalid_input", "stored request is not JSON");
        fl_job_clear(&job);
        return;
    }
    snprintf(w->current_job, sizeof w->current_job, "%s", job.id);
    char dir[4096], out[4200];
    snprintf(dir, sizeof dir, "%s/jobs/%s", w->cfg.state_dir, job.id);
    snprintf(out, sizeof out, "%s/adapter.safetensors", dir);
    fl_train_job tj = fl_train_job_default();
    tj.images = json_string_value(json_object_get(req, "images"));
    tj.url_allow_private = w->cfg.allow_private_urls;
    tj.trigger = json_string_value(json_object_get(req, "trigger_word"));
    const char *caption = json_string_value(json_object_get(req, "caption"));
    if (caption) tj.caption = caption;
    tj.is_style = json_is_true(json_object_get(req, "is_style"));
    tj.buckets = json_is_true(json_object_get(req, "buckets"));
    tj.resolution = (int)json_integer_value(json_object_get(req, "resolution"));
    tj.cfg.steps = (int)json_integer_value(json_object_get(req, "steps"));
    tj.cfg.rank = (int)json_integer_value(json_object_get(req, "rank"));
    tj.cfg.alpha = (float)json_number_value(json_object_get(req, "alpha"));
    tj.cfg.lr = (float)json_number_value(json_object_get(req, "learning_rate"));
    tj.cfg.batch_size = (int)json_integer_value(json_object_get(req, "batch_size"));
    tj.cfg.seed = (uint64_t)json_integer_value(json_object_get(req, "seed"));
    const char *targets = json_string_value(json_object_get(req, "targets"));
    if (targets) tj.cfg.targets = targets;
    tj.out = out;
    tj.checkpoint_every = w->cfg.checkpoint_every;
    tj.resume = true;
    tj.base_model_hash = w->base_hash;
    train_ctx tc = {w, item};
    fl_train_hooks hooks = {on_train_event, train_should_stop, &tc};
    fl_train_result res;
    memset(&res, 0, sizeof res);
    int rc = fl_mkdirs(dir, &err);
    keep_claim(w, FL_JOB_TRAIN, item->entry);
    if (rc == 0 && attempts > 1) fl_log_info("worker %s: job %s: attempt %d, resuming from its checkpoint", w->name, job.id, attempts);
    /* An earlier attempt that registered its adapter but died before finishing the job: finish
     * it from the registry instead of training again. */
    fl_adapter_info prior;
    fl_error ignored = {0};
    char adapter_id[FL_ID_MAX];
    adapter_id_of_job(job.id, adapter_id);
    bool registered = fl_registry_get(w->r, job.tenant, adapter_id, &prior, &ignored) == 0;
    if (registered) {
        json_t *meta = prior.metadata_json ? json_loads(prior.metadata_json, 0, &jerr) : NULL;
        const char *steps = json_string_value(json_object_get(meta, "steps"));
        const char *loss = json_string_value(json_object_get(meta, "final_loss"));
        res.steps = res.resumed_at = steps ? atoi(steps) : 0;
        res.final_loss = loss ? atof(loss) : 0.0;
        json_decref(meta);
        fl_adapter_info_clear(&prior);
        fl_log_info("worker %s: job %s: adapter %s was registered by an earlier attempt", w->name, job.id, adapter_id);
    }
    if (rc == 0 && !registered) rc = fl_train_run(w->model, &tj, &hooks, &res, &err);
    fl_flux_clear_adapters(w->model);
    if (rc != 0 && *w->stop) {
        fl_log_info("worker %s: stopping; job %s keeps its checkpoint and will be taken over", w->name, job.id);
    } else if (rc != 0) {
        fail_job(w, FL_JOB_TRAIN, item, fl_error_code_name(err.code), err.message);
        remove_job_dir(dir);
    } else {
        fl_adapter_info info;
        if (register_adapter(w, &job, req, out, &info, &err) != 0) {
            fail_job(w, FL_JOB_TRAIN, item, fl_error_code_name(err.code), err.message);
        } else {
            json_t *result = json_pack("{s:s, s:s, s:s, s:i, s:f, s:i, s:f, s:i}", "adapter_id", info.id, "name",
                                       info.name, "sha256", info.sha256, "steps", res.steps, "final_loss",
                                       res.final_loss, "images", res.images, "training_s", res.training_s,
                                       "resumed_at", res.resumed_at);
            char *text = json_dumps(result, JSON_COMPACT);
            json_decref(result);
            bool changed = false;
            if (fl_jobs_finish(w->r, job.id, true, text, &changed, &err) == 0) {
                ack(w, FL_JOB_TRAIN, item->entry);
                w->jobs_done++;
                if (w->cfg.metrics) fl_metrics_observe_job(w->cfg.metrics, "train", (double)(fl_now_ms() - job.created_ms) / 1000.0);
                fl_log_info("job %s: adapter %s registered (%d steps, loss %.4f)", job.id, info.id, res.steps, res.final_loss);
            } else {
                fl_log_warn("worker %s: cannot finish job %s: %s (left pending)", w->name, job.id, err.message);
            }
            free(text);
            fl_adapter_info_clear(&info);
        }
        remove_job_dir(dir);
    }
    /* An uploaded archive belongs to its job: gone once the job is finished. */
    fl_job after;
    if (tj.images && fl_jobs_get(w->r, NULL, job.id, &after, &err) == 0) {
        char uploads[4200];
        snprintf(uploads, sizeof uploads, "%s/uploads/", w->cfg.state_dir);
        if (fl_job_state_terminal(after.state) && !strncmp(tj.images, uploads, strlen(uploads))) unlink(tj.images);
        fl_job_clear(&after);
    }
    w->current_job[0] = '\0';
    json_decref(req);
    fl_job_clear(&job);
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
    int64_t now = fl_now_ms();
    int period = w->cfg.claim_timeout_ms / 4 > 250 ? w->cfg.claim_timeout_ms / 4 : 250;
    if (now - w->last_reclaim_ms < period) return;
    w->last_reclaim_ms = now;
    for (int k = 0; k < 2 && !*w->stop; k++) {
        fl_job_kind kind = k == 0 ? FL_JOB_GENERATE : FL_JOB_TRAIN;
        fl_error err = {0};
        char idle[32];
        snprintf(idle, sizeof idle, "%d", w->cfg.claim_timeout_ms);
        redisReply *rep = fl_redis_cmd(w->r, &err, "XAUTOCLAIM %s %s %s %s 0-0 COUNT 8", fl_job_stream_key(kind),
                                       FL_JOBS_GROUP, w->name, idle);
        if (!rep) continue;
        work_item items[MAX_ITEMS];
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
                fail_job(w, kind, &items[i], "delivery_cap", msg);
                continue;
            }
            items[keep++] = items[i];
        }
        if (keep == 0) continue;
        if (kind == FL_JOB_GENERATE) process_generate(w, items, keep);
        else
            for (int i = 0; i < keep && !*w->stop; i++) process_train(w, &items[i]);
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
    if (fl_flux_load(w->ctx, w->cfg.model_path, NULL, &w->model, err) != 0) return -1;
    w->params = *fl_flux_get_params(w->model);
    w->patch = fl_flux_pixel_patch(&w->params);
    if (fl_model_hash_cached(w->r, w->cfg.model_path, w->base_hash, err) != 0) return -1;
    snprintf(path, sizeof path, "%s/store", w->cfg.state_dir);
    if (fl_store_open(path, &w->store, err) != 0) return -1;
    w->cache = fl_adapter_cache_create(fl_store_locate, w->store, w->model, w->cfg.cache_bytes);
    const char *dirs[] = {"images", "jobs", "uploads"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", w->cfg.state_dir, dirs[i]);
        if (fl_mkdirs(path, err) != 0) return -1;
    }
    return 0;
}

static void close_worker(worker_state *w) {
    if (w->r) {
        fl_error err = {0};
        redisReply *rep = fl_redis_cmd(w->r, &err, "DEL fl:worker:%s", w->name);
        if (rep) freeReplyObject(rep);
        if ((rep = fl_redis_cmd(w->r, &err, "SREM fl:workers %s", w->name))) freeReplyObject(rep);
    }
    fl_adapter_cache_free(w->cache);
    fl_store_close(w->store);
    fl_flux_free(w->model);
    fl_ctx_destroy(w->ctx);
    fl_redis_close(w->r);
}

static int worker_loop(worker_state *w, fl_error *err) {
    if (open_worker(w, err) != 0) {
        close_worker(w);
        return -1;
    }
    fl_log_info("worker %s: ready (model %s, device %s)", w->name, w->cfg.model_path, w->cfg.device);
    heartbeat(w, true);
    int failures = 0;
    while (!*w->stop) {
        heartbeat(w, false);
        reclaim(w);
        prune_consumers(w);
        work_item gen[MAX_ITEMS], train[MAX_ITEMS];
        int n_gen = 0, n_train = 0;
        fl_error e = {0};
        int batch = w->cfg.max_batch < MAX_ITEMS ? w->cfg.max_batch : MAX_ITEMS;
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
        if (n_gen > 0) process_generate(w, gen, n_gen);
        for (int i = 0; i < n_train && !*w->stop; i++) process_train(w, &train[i]);
    }
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

void fl_worker_stop(fl_worker *w) {
    if (!w) return;
    w->stop = 1;
    pthread_join(w->thread, NULL);
    free(w);
}
