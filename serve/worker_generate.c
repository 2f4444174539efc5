/*
 * worker_generate.c — a worker's generation jobs: requests read from the work stream are grouped
 * into batches of one size, step count and text length (up to the batch size and the adapters one
 * batch may use), sampled in one pass where each request's rows carry its own adapters, written as
 * PNGs, and each request finished and acknowledged on its own. Adapters stay attached between
 * batches (adapters/cache.h device tier): a batch acquires the sets it names (attaching only those
 * not resident) and selects them per sample; it detaches nothing. Between sampling steps the
 * claims are renewed and cancels seen (a batch nobody wants any more stops there); a stopping
 * worker hands back what it has not finished.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/log.h"
#include "models/sampler.h"
#include "serve/requests.h"
#include "serve/worker_internal.h"

typedef struct gen_request {
    work_item item;
    char tenant[FL_TENANT_MAX];
    fl_generate_request req;
    int64_t created_ms;
    bool done; /* finished (or failed) already */
    int first_sample; /* its first image in the batch being sampled */
} gen_request;

/* The per-step watch over a running batch (the sampler's callback): at the poll period it renews
 * the claims of every request this worker holds — the batch's and those waiting for a later
 * batch — finishes as canceled the ones their clients canceled, lets go of the ones another
 * worker took over, and stops the batch when none of its requests is left or when a stopping
 * worker must abandon it because it would not finish in time (its requests are then handed
 * back). */
typedef struct batch_watch {
    worker_state *w;
    gen_request *held; /* every request of this read, done or not */
    int n_held;
    gen_request **batch;
    int n_batch;
    int64_t last_poll_ms;
    int64_t started_ms; /* monotonic, when sampling began */
    bool abandoned;
} batch_watch;

/* Renews one request's claim; false (and the request done) when it is no longer this worker's
 * to run: canceled (finished as such), taken over, or finished elsewhere. */
static bool still_ours(worker_state *w, gen_request *g) {
    if (g->done) return false;
    fl_claim claim = fl_worker_keep_claim(w, FL_JOB_GENERATE, &g->item);
    if (claim == FL_CLAIM_HELD) return true;
    if (claim == FL_CLAIM_CANCEL) fl_worker_cancel_job(w, FL_JOB_GENERATE, &g->item);
    else if (claim == FL_CLAIM_FINISHED) fl_worker_ack(w, FL_JOB_GENERATE, g->item.entry);
    g->done = true;
    return false;
}

static bool batch_watch_step(void *arg, int done, int steps) {
    batch_watch *bw = arg;
    fl_worker_heartbeat(bw->w, false);
    if (done == 0) bw->started_ms = fl_monotonic_ms();
    int64_t remaining = done > 0 ? (fl_monotonic_ms() - bw->started_ms) * (steps - done) / done : -1;
    if (fl_worker_abandon_generation(bw->w, remaining)) {
        bw->abandoned = true;
        return true;
    }
    if (!fl_worker_poll_due(bw->w, &bw->last_poll_ms)) return false;
    for (int i = 0; i < bw->n_held; i++) still_ours(bw->w, &bw->held[i]);
    for (int b = 0; b < bw->n_batch; b++)
        if (!bw->batch[b]->done) return false;
    return true; /* nobody wants this batch any more */
}

static bool compatible(const gen_request *a, const gen_request *b) {
    return a->req.width == b->req.width && a->req.height == b->req.height && a->req.steps == b->req.steps &&
           a->req.max_text_tokens == b->req.max_text_tokens;
}

/* Runs one batch: acquires the union of its adapters (pinned, attached unless resident), samples
 * every image in one pass, writes the PNGs, and finishes and acknowledges each request. watch
 * checks the requests between steps. */
static void run_batch(worker_state *w, gen_request **reqs, int n, batch_watch *watch) {
    fl_adapter_cache_release_all(w->cache);
    char union_sha[FL_FLUX_MAX_ADAPTERS][65];
    int union_set[FL_FLUX_MAX_ADAPTERS];
    int n_union = 0;
    /* Resolve every request's adapters; a request whose adapter cannot be loaded fails alone. */
    for (int i = 0; i < n; i++) {
        gen_request *g = reqs[i];
        for (int k = 0; k < g->req.n_adapters && !g->done; k++) {
            int found = -1;
            for (int u = 0; u < n_union; u++)
                if (!strcmp(union_sha[u], g->req.adapters[k].sha256)) found = u;
            if (found >= 0) continue;
            fl_error err = {0};
            int set_id = -1;
            if (fl_adapter_cache_acquire(w->cache, g->req.adapters[k].sha256, &set_id, &err) != 0) {
                char msg[700];
                snprintf(msg, sizeof msg, "adapter %s: %s", g->req.adapters[k].id, err.message);
                fl_worker_fail_job(w, FL_JOB_GENERATE, &g->item, "adapter_unavailable", msg);
                g->done = true;
                break;
            }
            snprintf(union_sha[n_union], 65, "%s", g->req.adapters[k].sha256);
            union_set[n_union++] = set_id;
        }
    }
    int total = 0;
    for (int i = 0; i < n; i++)
        if (!reqs[i]->done) total += reqs[i]->req.num_images;
    if (total == 0) {
        fl_adapter_cache_release_all(w->cache);
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
        g->first_sample = s;
        for (int k = 0; k < g->req.num_images; k++, s++) {
            samples[s].prompt = g->req.prompt;
            samples[s].seed = g->req.seed + (uint64_t)k;
            samples[s].guidance = g->req.guidance;
            samples[s].adapters.n = g->req.n_adapters;
            for (int a = 0; a < g->req.n_adapters; a++) {
                for (int u = 0; u < n_union; u++)
                    if (!strcmp(union_sha[u], g->req.adapters[a].sha256)) samples[s].adapters.set_ids[a] = union_set[u];
                samples[s].adapters.multipliers[a] = g->req.adapters[a].scale;
            }
            images[s] = fl_xmalloc((size_t)g->req.width * (size_t)g->req.height * 3 * sizeof(float));
        }
    }
    fl_error err = {0};
    int64_t t0 = fl_now_ms();
    fl_sample_hooks hooks = {batch_watch_step, watch};
    fl_pipeline_output out = {images, NULL, NULL, false};
    int rc = fl_pipeline_generate(w->pipe, first->req.width, first->req.height, first->req.steps,
                                  first->req.max_text_tokens, samples, total, NULL, &hooks, &out, &err);
    for (int i = 0; i < n && watch->abandoned; i++)
        if (!reqs[i]->done) { /* a stopping worker: another one runs it from the start */
            fl_worker_requeue(w, FL_JOB_GENERATE, &reqs[i]->item);
            reqs[i]->done = true;
        }
    double seconds = (double)(fl_now_ms() - t0) / 1000.0;
    if (rc == 0 && w->cfg.metrics) fl_metrics_observe_batch(w->cfg.metrics, total, seconds);
    fl_adapter_cache_release_all(w->cache);
    fl_log_info("worker %s: batch of %d images (%d requests) in %.2f s", w->name, total, n, seconds);

    for (int i = 0; i < n; i++) {
        gen_request *g = reqs[i];
        if (g->done) continue;
        int first_sample = g->first_sample; /* requests done while it ran still hold their images */
        if (rc == 0 && !still_ours(w, g)) continue; /* canceled or taken over while it ran */
        if (rc != 0) {
            fl_worker_fail_job(w, FL_JOB_GENERATE, &g->item, fl_error_code_name(err.code), err.message);
            g->done = true;
            continue;
        }
        json_t *result = json_pack("{s:[], s:i}", "images", "batch_size", total);
        json_t *list = json_object_get(result, "images");
        int wrc = 0;
        fl_error werr = {0};
        for (int k = 0; k < g->req.num_images && wrc == 0; k++) {
            char img_id[FL_ID_MAX], path[4096], url[160];
            fl_jobs_new_id("img", img_id);
            snprintf(path, sizeof path, "%s/images/%s.png", w->cfg.state_dir, img_id);
            wrc = fl_png_write(path, images[first_sample + k], g->req.width, g->req.height, &werr);
            if (wrc != 0) break;
            wrc = fl_worker_register_image(w, img_id, g->tenant, g->item.job,
                                           (unsigned long long)(g->req.seed + (uint64_t)k), g->req.width,
                                           g->req.height, &werr);
            if (wrc != 0) break;
            snprintf(url, sizeof url, "/v1/images/%s.png", img_id);
            json_array_append_new(list, json_pack("{s:s, s:s, s:I, s:i, s:i}", "id", img_id, "url", url, "seed",
                                                  (json_int_t)(g->req.seed + (uint64_t)k), "width", g->req.width, "height",
                                                  g->req.height));
        }
        if (wrc != 0) {
            json_decref(result);
            fl_worker_fail_job(w, FL_JOB_GENERATE, &g->item, "io_error", werr.message);
            g->done = true;
            continue;
        }
        char *text = json_dumps(result, JSON_COMPACT);
        json_decref(result);
        bool changed = false;
        fl_error ferr = {0};
        if (fl_jobs_finish(w->r, g->item.job, true, text, &changed, &ferr) == 0) {
            fl_worker_ack(w, FL_JOB_GENERATE, g->item.entry);
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

void fl_worker_process_generate(worker_state *w, const work_item *items, int n) {
    gen_request *reqs = fl_xcalloc((size_t)n, sizeof *reqs);
    int live = 0;
    for (int i = 0; i < n; i++) {
        gen_request *g = &reqs[live];
        memset(g, 0, sizeof *g);
        g->item = items[i];
        int attempts = 0;
        bool finished = false;
        fl_error err = {0};
        if (fl_worker_stopping(w)) { /* read just before the stop: another worker takes it */
            fl_worker_requeue(w, FL_JOB_GENERATE, &items[i]);
            continue;
        }
        if (fl_jobs_start(w->r, items[i].job, w->name, &attempts, &finished, &err) != 0) {
            if (err.code == FL_ENOTFOUND) fl_worker_ack(w, FL_JOB_GENERATE, items[i].entry); /* a job record that is gone */
            else fl_log_warn("worker %s: job %s: %s", w->name, items[i].job, err.message);
            continue;
        }
        if (finished) {
            fl_worker_ack(w, FL_JOB_GENERATE, items[i].entry);
            continue;
        }
        fl_job job;
        if (fl_jobs_get(w->r, NULL, items[i].job, &job, &err) != 0) continue;
        snprintf(g->tenant, sizeof g->tenant, "%s", job.tenant);
        g->created_ms = job.created_ms;
        int rc = fl_generate_request_parse(job.request_json, &g->req, &err);
        fl_job_clear(&job);
        if (rc != 0) {
            fl_worker_fail_job(w, FL_JOB_GENERATE, &g->item, "invalid_input", err.message);
            fl_generate_request_clear(&g->req);
            continue;
        }
        live++;
    }
    /* Batches: compatible requests in arrival order, up to max_batch images and the adapter
     * slots of a Linear. */
    gen_request **batch = fl_xcalloc((size_t)(live ? live : 1), sizeof *batch);
    for (int i = 0; i < live; i++) {
        if (reqs[i].done) continue;
        if (fl_worker_stopping(w)) { /* started here, not sampled yet: another worker runs it */
            fl_worker_requeue(w, FL_JOB_GENERATE, &reqs[i].item);
            reqs[i].done = true;
            continue;
        }
        int nb = 0, images = 0, cap = reqs[i].req.batch_images; /* images within the memory limit (0: any) */
        char shas[FL_FLUX_MAX_ADAPTERS][65];
        int n_shas = 0;
        for (int j = i; j < live; j++) {
            gen_request *g = &reqs[j];
            if (g->done || !compatible(&reqs[i], g)) continue;
            bool taken = false;
            for (int b = 0; b < nb; b++) taken = taken || batch[b] == g;
            if (taken) continue;
            int new_shas = 0;
            for (int a = 0; a < g->req.n_adapters; a++) {
                bool have = false;
                for (int u = 0; u < n_shas; u++) have = have || !strcmp(shas[u], g->req.adapters[a].sha256);
                for (int b = 0; b < a && !have; b++) have = !strcmp(g->req.adapters[b].sha256, g->req.adapters[a].sha256);
                if (!have) new_shas++;
            }
            int g_cap = g->req.batch_images > 0 && (cap == 0 || g->req.batch_images < cap) ? g->req.batch_images : cap;
            if (nb > 0 && (images + g->req.num_images > w->cfg.max_batch || n_shas + new_shas > FL_FLUX_MAX_ADAPTERS ||
                           (g_cap > 0 && images + g->req.num_images > g_cap)))
                continue;
            cap = g_cap;
            for (int a = 0; a < g->req.n_adapters; a++) {
                bool have = false;
                for (int u = 0; u < n_shas; u++) have = have || !strcmp(shas[u], g->req.adapters[a].sha256);
                if (!have && n_shas < FL_FLUX_MAX_ADAPTERS) snprintf(shas[n_shas++], 65, "%s", g->req.adapters[a].sha256);
            }
            batch[nb++] = g;
            images += g->req.num_images;
        }
        int kept = 0;
        for (int b = 0; b < nb; b++) kept += still_ours(w, batch[b]);
        batch_watch watch = {w, reqs, live, batch, nb, fl_monotonic_ms(), 0, false};
        if (kept > 0) run_batch(w, batch, nb, &watch);
    }
    for (int i = 0; i < live; i++) fl_generate_request_clear(&reqs[i].req);
    free(batch);
    free(reqs);
}
