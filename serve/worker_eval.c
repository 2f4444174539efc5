/*
 * worker_eval.c — a worker's evaluation jobs (POST /v1/evaluations; eval/evaluate.h): the
 * adapters acquired from the worker's adapter cache (attached once, left resident), each
 * subject's references read from the kept training images or the upload, the run on the
 * worker's model with the built-in encoder, progress as job events ({"event": "progress",
 * "stage", "done", "total"}), the claim renewed and cancels seen between sampling steps, and the
 * result stored: the evaluation JSON in the job record, every generated image and reference
 * thumbnail as a service image of the job (kept and removed with it, like a generation's).
 *
 * Also here: keeping a training's upload as its adapter's references, and the sweep of kept
 * references whose adapter file is gone.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/log.h"
#include "eval/evaluate.h"
#include "models/sampler.h"
#include "serve/eval_request.h"
#include "serve/worker_internal.h"

#define PROGRESS_EVERY_MS 500
#define REFS_GRACE_S 3600 /* a kept reference set whose adapter is gone is removed once this old */

typedef struct eval_watch {
    worker_state *w;
    const work_item *item;
    const char *job_id;
    fl_claim claim;
    int64_t last_poll_ms, last_event_ms;
    char last_stage[16];
    bool abandoned;
} eval_watch;

static void on_progress(void *arg, const char *stage, int done, int total) {
    eval_watch *ew = arg;
    int64_t now = fl_monotonic_ms();
    bool new_stage = strcmp(ew->last_stage, stage) != 0;
    if (!new_stage && done < total && now - ew->last_event_ms < PROGRESS_EVERY_MS) return;
    ew->last_event_ms = now;
    snprintf(ew->last_stage, sizeof ew->last_stage, "%s", stage);
    json_t *ev = json_pack("{s:s, s:s, s:s, s:i, s:i}", "event", "progress", "job", ew->job_id, "stage", stage, "done",
                           done, "total", total);
    char *text = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    fl_error err = {0};
    if (fl_jobs_event(ew->w->r, ew->job_id, text, done, total, 0.0, -1.0, &err) != 0)
        fl_log_warn("worker %s: progress of %s: %s", ew->w->name, ew->job_id, err.message);
    free(text);
}

/* Between sampling steps: the claim renewed; a cancel, a takeover or a stopping worker stops it. */
static bool should_stop(void *arg) {
    eval_watch *ew = arg;
    fl_worker_heartbeat(ew->w, false);
    if (fl_worker_stopping(ew->w)) {
        ew->abandoned = true;
        return true;
    }
    if (ew->claim == FL_CLAIM_HELD && fl_worker_poll_due(ew->w, &ew->last_poll_ms))
        ew->claim = fl_worker_keep_claim(ew->w, FL_JOB_EVAL, ew->item);
    return ew->claim != FL_CLAIM_HELD;
}

/* Stores one image as a service image of the job; its id into id. */
static int store_png(worker_state *w, const char *tenant, const char *job, const float *img, int width, int height,
                     char id[FL_ID_MAX], json_t *all, fl_error *err) {
    char path[4300];
    fl_jobs_new_id("img", id);
    snprintf(path, sizeof path, "%s/images/%s.png", w->cfg.state_dir, id);
    if (fl_png_write(path, img, width, height, err) != 0) return -1;
    if (fl_worker_register_image(w, id, tenant, job, 0, width, height, err) != 0) return -1;
    char url[160];
    snprintf(url, sizeof url, "/v1/images/%s.png", id);
    json_array_append_new(all, json_pack("{s:s, s:s}", "id", id, "url", url));
    return 0;
}

/* The result: the evaluation, each adapter's image ids by kind, and every image (for retention). */
static json_t *store_result(worker_state *w, const fl_job *job, const fl_eval_result *res, const fl_eval_refs *refs,
                            fl_error *err) {
    json_t *all = json_array(), *by_adapter = json_array();
    int rc = 0;
    for (int a = 0; a < res->n_adapters && rc == 0; a++) {
        const fl_eval_adapter_result *ar = &res->adapters[a];
        json_t *gen = json_array(), *base = json_array(), *rl = json_array();
        char id[FL_ID_MAX];
        for (int i = 0; i < ar->n_images && rc == 0; i++) {
            rc = store_png(w, job->tenant, job->id, ar->gen[i], res->width, res->height, id, all, err);
            if (rc == 0) json_array_append_new(gen, json_string(id));
            if (rc == 0 && ar->base) {
                rc = store_png(w, job->tenant, job->id, ar->base[i], res->width, res->height, id, all, err);
                if (rc == 0) json_array_append_new(base, json_string(id));
            }
        }
        for (int i = 0; i < refs[a].n && i < 24 && rc == 0; i++) {
            const fl_image *im = &refs[a].images[i];
            size_t np = (size_t)im->width * im->height * 3;
            float *v = fl_xmalloc(np * sizeof(float));
            for (size_t k = 0; k < np; k++) v[k] = im->pixels[k] * 2.0f - 1.0f;
            rc = store_png(w, job->tenant, job->id, v, im->width, im->height, id, all, err);
            free(v);
            if (rc == 0) json_array_append_new(rl, json_string(id));
        }
        json_array_append_new(by_adapter, json_pack("{s:o, s:o, s:o}", "gen", gen, "base", base, "refs", rl));
    }
    json_t *result = json_pack("{s:O, s:o, s:o}", "evaluation", res->json, "image_ids", by_adapter, "images", all);
    if (rc != 0) {
        /* the images written so far belong to no result: the sweep removes them */
        json_decref(result);
        return NULL;
    }
    return result;
}

void fl_worker_process_eval(worker_state *w, const work_item *item, const fl_job *job) {
    fl_eval_request *er = fl_xcalloc(1, sizeof *er); /* ~150 KB: off the worker thread's stack */
    fl_error err = {0};
    if (fl_eval_request_parse(job->request_json, er, &err) != 0) {
        fl_worker_fail_job(w, FL_JOB_EVAL, item, "invalid_input", err.message);
        fl_eval_request_clear(er);
        free(er);
        return;
    }
    snprintf(w->current_job, sizeof w->current_job, "%s", job->id);
    eval_watch ew = {w, item, job->id, fl_worker_keep_claim(w, FL_JOB_EVAL, item), fl_monotonic_ms(), 0, "", false};
    const int A = er->n_adapters, Dn = er->n_distractors;
    fl_eval_refs refs[FL_EVAL_REQ_MAX_ADAPTERS], distr[FL_EVAL_REQ_MAX_DISTRACTORS];
    fl_eval_adapter ads[FL_EVAL_REQ_MAX_ADAPTERS];
    memset(refs, 0, sizeof refs);
    memset(distr, 0, sizeof distr);
    memset(ads, 0, sizeof ads);
    const char *code = "invalid_input";
    int rc = 0;
    /* references first: a bad set fails the job before any adapter is attached */
    for (int a = 0; a < A && rc == 0; a++) {
        rc = fl_eval_refs_load(er->adapters[a].name, er->adapters[a].refs, &refs[a], &err);
        if (rc == 0)
            snprintf(refs[a].source, sizeof refs[a].source, "%s",
                     er->adapters[a].refs_uploaded ? "uploaded references" : "training images");
    }
    int n_distr = 0;
    for (int d = 0; d < Dn && rc == 0; d++) {
        rc = fl_eval_refs_load(er->distractors[d].name, er->distractors[d].refs, &distr[d], &err);
        if (rc == 0) {
            snprintf(distr[d].source, sizeof distr[d].source, "training images of %s", er->distractors[d].id);
            n_distr++;
        }
    }
    fl_eval_encoder *enc = NULL;
    if (rc == 0 && (rc = fl_eval_encoder_open(w->ctx, "builtin", &enc, &err)) != 0) code = "unavailable";
    fl_adapter_cache_release_all(w->cache);
    for (int a = 0; a < A && rc == 0; a++) {
        int set_id = -1;
        if (fl_adapter_cache_acquire(w->cache, er->adapters[a].sha256, &set_id, &err) != 0) {
            rc = fl_fail_prefix(&err, "adapter %s", er->adapters[a].id);
            code = "adapter_unavailable";
            break;
        }
        fl_eval_adapter *ad = &ads[a];
        snprintf(ad->label, sizeof ad->label, "%s", er->adapters[a].name[0] ? er->adapters[a].name : er->adapters[a].id);
        ad->path = NULL;
        ad->set_id = set_id;
        snprintf(ad->trigger, sizeof ad->trigger, "%s", er->adapters[a].trigger);
        ad->scale = (float)er->scale;
        ad->refs = &refs[a];
        ad->refs_in_training = !er->adapters[a].refs_uploaded;
    }
    int n_prompts = 0;
    const char *const *prompts = NULL;
    if (er->n_prompts > 0) {
        prompts = (const char *const *)er->prompts;
        n_prompts = er->n_prompts;
    } else {
        prompts = fl_eval_default_prompts(&n_prompts);
    }
    uint64_t seeds[FL_EVAL_REQ_MAX_SEEDS];
    for (int i = 0; i < er->n_seeds; i++) seeds[i] = (uint64_t)er->seeds[i];
    fl_eval_config cfg = fl_eval_config_default();
    cfg.adapters = ads;
    cfg.n_adapters = A;
    cfg.distractors = distr;
    cfg.n_distractors = n_distr;
    cfg.prompts = prompts;
    cfg.n_prompts = n_prompts;
    cfg.seeds = seeds;
    cfg.n_seeds = er->n_seeds;
    cfg.width = er->width;
    cfg.height = er->height;
    cfg.steps = er->steps;
    cfg.guidance = (float)er->guidance;
    cfg.bootstrap = er->bootstrap;
    cfg.batch = er->batch_images > 0 && er->batch_images < w->cfg.max_batch ? er->batch_images : w->cfg.max_batch;
    if (cfg.batch < 1) cfg.batch = 1;
    cfg.model_label = "the service's base model";
    cfg.model_sha256 = w->base_hash;
    cfg.progress = on_progress;
    cfg.should_stop = should_stop;
    cfg.arg = &ew;
    fl_eval_result res;
    memset(&res, 0, sizeof res);
    int64_t t0 = fl_now_ms();
    if (rc == 0 && ew.claim == FL_CLAIM_HELD) {
        rc = fl_eval_run(w->model, enc, &cfg, &res, &err);
        if (rc != 0 && err.code == FL_ENOMEM) code = "out_of_memory";
        else if (rc != 0) code = fl_error_code_name(err.code);
    }
    fl_adapter_cache_release_all(w->cache);
    if (ew.claim == FL_CLAIM_CANCEL) {
        fl_worker_cancel_job(w, FL_JOB_EVAL, item);
    } else if (ew.claim != FL_CLAIM_HELD) {
        /* taken over or finished elsewhere: nothing of it is this worker's to finish */
    } else if (ew.abandoned) {
        fl_worker_requeue(w, FL_JOB_EVAL, item);
    } else if (rc != 0) {
        fl_worker_fail_job(w, FL_JOB_EVAL, item, code, err.message);
    } else {
        json_t *result = store_result(w, job, &res, refs, &err);
        if (!result) {
            fl_worker_fail_job(w, FL_JOB_EVAL, item, "io_error", err.message);
        } else {
            json_t *sum = json_object_get(res.json, "summary");
            char *text = json_dumps(result, JSON_COMPACT);
            json_decref(result);
            bool changed = false;
            if (fl_jobs_finish(w->r, job->id, true, text, &changed, &err) == 0) {
                fl_worker_ack(w, FL_JOB_EVAL, item->entry);
                w->jobs_done++;
                if (w->cfg.metrics) fl_metrics_observe_job(w->cfg.metrics, "evaluate", (double)(fl_now_ms() - job->created_ms) / 1000.0);
                fl_log_info("job %s: evaluation of %d adapters in %.1f s, retrieval identity accuracy %.3f", job->id, A,
                            (double)(fl_now_ms() - t0) / 1000.0, json_number_value(json_object_get(sum, "retrieval")));
            } else {
                fl_log_warn("worker %s: cannot finish job %s: %s (left pending)", w->name, job->id, err.message);
            }
            free(text);
        }
    }
    fl_eval_result_free(&res);
    fl_eval_encoder_close(enc);
    for (int a = 0; a < A; a++) fl_eval_refs_free(&refs[a]);
    for (int d = 0; d < Dn; d++) fl_eval_refs_free(&distr[d]);
    fl_eval_request_clear(er);
    free(er);
    w->current_job[0] = '\0';
}

void fl_worker_keep_training_refs(worker_state *w, const char *upload, const char *adapter_sha256) {
    fl_error err = {0};
    if (fl_eval_keep_training_refs(w->cfg.state_dir, upload, adapter_sha256, &err) != 0)
        fl_log_warn("worker %s: the training images of adapter %.12s are not kept for evaluations: %s", w->name,
                    adapter_sha256, err.message);
}

/* The listing a worker's sweep goes through, a slice per pass (one worker per thread). */
static _Thread_local DIR *refs_cursor;

void fl_worker_sweep_refs(worker_state *w, int max_entries) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/refs", w->cfg.state_dir);
    if (!refs_cursor && !(refs_cursor = opendir(dir))) return;
    DIR *d = refs_cursor;
    struct dirent *e = NULL;
    int seen = 0;
    while (seen < max_entries && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        seen++;
        char sha[65];
        if (strlen(e->d_name) < 64) continue;
        memcpy(sha, e->d_name, 64);
        sha[64] = '\0';
        if (strspn(sha, "0123456789abcdef") != 64 || fl_store_has(w->store, sha)) continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && time(NULL) - st.st_mtime > REFS_GRACE_S) unlink(path);
    }
    if (!e) { /* the end of the listing: the next pass starts a fresh one */
        closedir(d);
        refs_cursor = NULL;
    }
}
