/*
 * worker_train.c — a worker's training jobs: the request is run by trainer/run.h on the resident
 * model with checkpoints in the shared state directory (so another worker can resume it), progress
 * goes to the job's event stream, the claim is renewed between steps (a cancel or a takeover ends
 * the run there), and the adapter is stored and registered under an id derived from the job before
 * the job is finished and acknowledged. A stopping worker checkpoints and hands the job back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/fileio.h"
#include "core/log.h"
#include "serve/registry.h"
#include "serve/requests.h"
#include "serve/worker_internal.h"
#include "trainer/run.h"

typedef struct train_ctx {
    worker_state *w;
    const work_item *item;
    int64_t last_poll_ms;
    fl_claim claim; /* FL_CLAIM_HELD until a poll finds otherwise */
    const char *tenant;
    int resolution;
    json_t *previews; /* the images published from the trainer's previews */
} train_ctx;

/* A preview PNG the trainer wrote into the job's directory becomes one of the tenant's images,
 * as a generation's do: moved to images/<id>.png with its key. Returns the event the client
 * sees, naming the image (never the server's path), or NULL when it could not be published
 * (the file is removed; the training goes on). The job's result lists the image under
 * "previews", so it lives and expires with the job (serve/jobs.c). */
static json_t *publish_preview(train_ctx *tc, json_t *event) {
    worker_state *w = tc->w;
    const char *path = json_string_value(json_object_get(event, "path"));
    int step = (int)json_integer_value(json_object_get(event, "step"));
    json_int_t seed = json_integer_value(json_object_get(event, "seed"));
    if (!path) return NULL;
    char img_id[FL_ID_MAX], dst[4200], url[160];
    fl_jobs_new_id("img", img_id);
    snprintf(dst, sizeof dst, "%s/images/%s.png", w->cfg.state_dir, img_id);
    if (rename(path, dst) != 0) {
        fl_log_warn("worker %s: job %s: preview %s not published: %s", w->name, tc->item->job, path, strerror(errno));
        unlink(path);
        return NULL;
    }
    fl_error err = {0};
    if (fl_worker_register_image(w, img_id, tc->tenant, tc->item->job, (unsigned long long)seed, tc->resolution,
                                 tc->resolution, &err) != 0) {
        fl_log_warn("worker %s: job %s: preview not registered: %s", w->name, tc->item->job, err.message);
        unlink(dst);
        return NULL;
    }
    snprintf(url, sizeof url, "/v1/images/%s.png", img_id);
    json_t *image = json_pack("{s:s, s:s, s:i, s:I, s:i, s:i}", "id", img_id, "url", url, "step", step, "seed", seed,
                              "width", tc->resolution, "height", tc->resolution);
    json_array_append(tc->previews, image);
    return json_pack("{s:s, s:i, s:[o]}", "event", "preview", "step", step, "images", image);
}

static void on_train_event(void *arg, json_t *event) {
    train_ctx *tc = arg;
    worker_state *w = tc->w;
    const char *kind = json_string_value(json_object_get(event, "event"));
    json_t *published = NULL;
    if (kind && !strcmp(kind, "preview")) {
        if (!(published = publish_preview(tc, event))) return;
        event = published;
    } else if (json_object_get(event, "path")) {
        /* a checkpoint's file is the server's business: the client sees the step only */
        published = json_copy(event);
        json_object_del(published, "path");
        event = published;
    }
    char *text = json_dumps(event, JSON_COMPACT);
    json_decref(published);
    if (!text) return;
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
    fl_worker_heartbeat(w, false);
}

/* Between steps: renew the claim; a cancel, a job taken over or finished elsewhere ends the run
 * at once, without a checkpoint. */
static bool train_should_abort(void *arg) {
    train_ctx *tc = arg;
    if (tc->claim == FL_CLAIM_HELD && fl_worker_poll_due(tc->w, &tc->last_poll_ms))
        tc->claim = fl_worker_keep_claim(tc->w, FL_JOB_TRAIN, tc->item);
    return tc->claim != FL_CLAIM_HELD;
}

/* A stopping worker checkpoints and hands the job back. */
static bool train_should_stop(void *arg) {
    train_ctx *tc = arg;
    return fl_worker_stopping(tc->w);
}

/* The adapter of training job "job_X" is "ad_X": a retried job can find what it registered. */
static void adapter_id_of_job(const char *job_id, char id[FL_ID_MAX]) {
    const char *suffix = strchr(job_id, '_') ? strchr(job_id, '_') + 1 : job_id;
    snprintf(id, FL_ID_MAX, "ad_%.56s", suffix);
}

/* Stores and registers the adapter of a finished training under an id derived from the job, so
 * a job that is retried after a crash between registering and finishing registers nothing twice. */
static int register_adapter(worker_state *w, const fl_job *job, const fl_train_request *req, const char *path,
                            fl_adapter_info *info,
                            fl_error *err) {
    char id[FL_ID_MAX];
    adapter_id_of_job(job->id, id);
    fl_error ignored = {0};
    if (fl_registry_get(w->r, job->tenant, id, info, &ignored) == 0) return 0; /* registered already */
    memset(info, 0, sizeof *info);
    snprintf(info->id, sizeof info->id, "%s", id);
    snprintf(info->tenant, sizeof info->tenant, "%s", job->tenant);
    snprintf(info->name, sizeof info->name, "%s", req->name[0] ? req->name : info->id);
    snprintf(info->trigger, sizeof info->trigger, "%s", req->trigger_word);
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

void fl_worker_process_train(worker_state *w, const work_item *item) {
    int attempts = 0;
    bool finished = false;
    fl_error err = {0};
    if (fl_worker_stopping(w)) { /* read just before the stop: another worker takes it */
        fl_worker_requeue(w, FL_JOB_TRAIN, item);
        return;
    }
    if (fl_jobs_start(w->r, item->job, w->name, &attempts, &finished, &err) != 0) {
        if (err.code == FL_ENOTFOUND) fl_worker_ack(w, FL_JOB_TRAIN, item->entry);
        else fl_log_warn("worker %s: job %s: %s", w->name, item->job, err.message);
        return;
    }
    if (finished) { /* finished or canceled before it started */
        fl_worker_ack(w, FL_JOB_TRAIN, item->entry);
        fl_job done;
        if (fl_jobs_get(w->r, NULL, item->job, &done, &err) == 0 && fl_job_state_terminal(done.state))
            fl_jobs_remove_files(w->cfg.state_dir, item->job);
        fl_job_clear(&done);
        return;
    }
    fl_job job;
    if (fl_jobs_get(w->r, NULL, item->job, &job, &err) != 0) return;
    if (job.kind == FL_JOB_IMPORT) { /* imports share the training stream */
        fl_worker_process_import(w, item, &job);
        fl_job_clear(&job);
        return;
    }
    if (job.kind == FL_JOB_EVAL) { /* and so do evaluations (worker_eval.c) */
        fl_worker_process_eval(w, item, &job);
        fl_job_clear(&job);
        return;
    }
    fl_train_request req;
    if (fl_train_request_parse(job.request_json, &req, &err) != 0) {
        fl_worker_fail_job(w, FL_JOB_TRAIN, item, "invalid_input", err.message);
        fl_train_request_clear(&req);
        fl_job_clear(&job);
        return;
    }
    snprintf(w->current_job, sizeof w->current_job, "%s", job.id);
    char dir[4096], out[4200];
    snprintf(dir, sizeof dir, "%s/jobs/%s", w->cfg.state_dir, job.id);
    snprintf(out, sizeof out, "%s/adapter.safetensors", dir);
    fl_train_job tj = fl_train_job_default();
    tj.images = req.images;
    tj.url_allow_private = w->cfg.allow_private_urls;
    tj.max_decoded_pixels = req.max_decoded_pixels; /* the budget admission gave the job */
    tj.trigger = req.trigger_word;
    if (req.caption) tj.caption = req.caption;
    tj.is_style = req.is_style;
    tj.buckets = req.buckets;
    tj.resolution = req.resolution;
    tj.cfg.steps = req.steps;
    tj.cfg.rank = req.rank;
    tj.cfg.alpha = (float)req.alpha;
    tj.cfg.lr = (float)req.learning_rate;
    tj.cfg.batch_size = req.batch_size;
    tj.cfg.seed = (uint64_t)req.seed;
    if (req.targets) tj.cfg.targets = req.targets;
    tj.out = out;
    tj.checkpoint_every = w->cfg.checkpoint_every;
    char preview_dir[4200];
    if (req.preview_every > 0) {
        snprintf(preview_dir, sizeof preview_dir, "%s/previews", dir);
        tj.preview_dir = preview_dir;
        tj.preview_every = req.preview_every;
        tj.preview_count = req.preview_count;
    }
    tj.resume = true;
    tj.base_model_hash = w->base_hash;
    /* FLUX.1: encoded latents and captions shared by every job of the state directory (their
     * names are content hashes); the worker keeps its encoders for generation. */
    char cache_dir[4200];
    snprintf(cache_dir, sizeof cache_dir, "%s/cache", w->cfg.state_dir);
    tj.cache_dir = cache_dir;
    tj.release_encoders = false;
    train_ctx tc = {w, item, 0, FL_CLAIM_HELD, job.tenant, req.resolution, json_array()};
    fl_train_hooks hooks = {on_train_event, train_should_stop, &tc, train_should_abort};
    fl_train_result res;
    memset(&res, 0, sizeof res);
    int rc = fl_mkdirs(dir, &err);
    tc.claim = fl_worker_keep_claim(w, FL_JOB_TRAIN, item);
    tc.last_poll_ms = fl_monotonic_ms();
    if (rc == 0 && attempts > 1) fl_log_info("worker %s: job %s: attempt %d, resuming from its checkpoint", w->name, job.id, attempts);
    /* An earlier attempt that registered its adapter but died before finishing the job: finish
     * it from the registry instead of training again. */
    fl_adapter_info prior;
    fl_error ignored = {0};
    char adapter_id[FL_ID_MAX];
    adapter_id_of_job(job.id, adapter_id);
    bool registered = fl_registry_get(w->r, job.tenant, adapter_id, &prior, &ignored) == 0;
    if (registered) {
        json_t *meta = prior.metadata_json ? json_loads(prior.metadata_json, 0, NULL) : NULL;
        const char *steps = json_string_value(json_object_get(meta, "steps"));
        const char *loss = json_string_value(json_object_get(meta, "final_loss"));
        res.steps = res.resumed_at = steps ? atoi(steps) : 0;
        res.final_loss = loss ? atof(loss) : 0.0;
        json_decref(meta);
        fl_adapter_info_clear(&prior);
        fl_log_info("worker %s: job %s: adapter %s was registered by an earlier attempt", w->name, job.id, adapter_id);
    }
    fl_adapter_cache_detach_all(w->cache); /* training needs the bare model, which is cleared after it too */
    if (rc == 0 && !registered && tc.claim == FL_CLAIM_HELD) rc = fl_train_run_pipeline(w->pipe, &tj, &hooks, &res, &err);
    fl_flux_clear_adapters(w->model);
    if (tc.claim == FL_CLAIM_HELD && rc == 0 && !registered) tc.claim = fl_worker_keep_claim(w, FL_JOB_TRAIN, item);
    if (tc.claim == FL_CLAIM_CANCEL) {
        fl_worker_cancel_job(w, FL_JOB_TRAIN, item);
    } else if (tc.claim == FL_CLAIM_LOST) {
        /* Another worker runs it now (this one stalled past the claim timeout): its files and
         * its result are that worker's. */
        fl_log_info("worker %s: job %s left to the worker that took it over", w->name, job.id);
    } else if (tc.claim == FL_CLAIM_FINISHED) {
        fl_worker_ack(w, FL_JOB_TRAIN, item->entry);
    } else if (rc != 0 && fl_worker_stopping(w) && err.code == FL_EUNAVAILABLE) {
        fl_log_info("worker %s: stopping; job %s keeps its checkpoint", w->name, job.id);
        fl_worker_requeue(w, FL_JOB_TRAIN, item);
    } else if (rc != 0) {
        fl_worker_fail_job(w, FL_JOB_TRAIN, item, fl_error_code_name(err.code), err.message);
    } else {
        fl_adapter_info info;
        if (register_adapter(w, &job, &req, out, &info, &err) != 0) {
            fl_worker_fail_job(w, FL_JOB_TRAIN, item, fl_error_code_name(err.code), err.message);
        } else {
            /* the uploaded set stays as the adapter's references for evaluations */
            if (req.source && !strcmp(req.source, "upload") && req.images && access(req.images, F_OK) == 0)
                fl_worker_keep_training_refs(w, req.images, info.sha256);
            json_t *result = json_pack("{s:s, s:s, s:s, s:i, s:f, s:i, s:f, s:i}", "adapter_id", info.id, "name",
                                       info.name, "sha256", info.sha256, "steps", res.steps, "final_loss",
                                       res.final_loss, "images", res.images, "training_s", res.training_s,
                                       "resumed_at", res.resumed_at);
            if (json_array_size(tc.previews) > 0) json_object_set(result, "previews", tc.previews);
            char *text = json_dumps(result, JSON_COMPACT);
            json_decref(result);
            bool changed = false;
            if (fl_jobs_finish(w->r, job.id, true, text, &changed, &err) == 0) {
                fl_worker_ack(w, FL_JOB_TRAIN, item->entry);
                w->jobs_done++;
                if (w->cfg.metrics) fl_metrics_observe_job(w->cfg.metrics, "train", (double)(fl_now_ms() - job.created_ms) / 1000.0);
                fl_log_info("job %s: adapter %s registered (%d steps, loss %.4f)", job.id, info.id, res.steps, res.final_loss);
            } else {
                fl_log_warn("worker %s: cannot finish job %s: %s (left pending)", w->name, job.id, err.message);
            }
            free(text);
            fl_adapter_info_clear(&info);
        }
    }
    /* The upload and the checkpoints belong to the job: gone once it is finished, however it
     * ended (a failed or canceled job's too). */
    fl_job after;
    if (tc.claim != FL_CLAIM_LOST && fl_jobs_get(w->r, NULL, job.id, &after, &err) == 0) {
        if (fl_job_state_terminal(after.state)) fl_jobs_remove_files(w->cfg.state_dir, job.id);
        fl_job_clear(&after);
    }
    w->current_job[0] = '\0';
    json_decref(tc.previews);
    fl_train_request_clear(&req);
    fl_job_clear(&job);
}
