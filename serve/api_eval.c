/*
 * api_eval.c — the evaluation routes of the API (eval/evaluate.h as a job):
 *   POST /v1/evaluations                  adapters, prompts, seeds, options, optional "references"
 *                                         archive -> 202 with the job's URLs
 *   GET  /v1/evaluations/{id}             its state and progress, and the evaluation JSON once done
 *   GET  /v1/evaluations/{id}/report.html the HTML report (every image embedded), once done
 * An evaluation is a job of kind "evaluate" (its events at /v1/jobs/{id}/events, cancel and delete
 * at /v1/jobs/{id}); it shares the training queue and tenant quota. Each adapter's references are
 * its training images, kept by the worker that trained it (state/refs/<adapter sha256>.<ext>), or
 * the upload; an adapter imported or trained from a URL has none and needs the upload. Admission
 * bounds the work (images x pixels x steps, --max-evaluation-work) and the memory of a sampling
 * batch (as for a generation) before anything is queued. A tenant sees only its own evaluations.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/fileio.h"
#include "core/log.h"
#include "eval/report.h"
#include "serve/api_internal.h"
#include "serve/eval_request.h"
#include "serve/jobs.h"

/* Resolves subject s (an adapter of the tenant, for this base model) and its references. */
static int resolve_subject(fl_api *api, fl_redis *r, const char *tenant, fl_eval_req_subject *s, const char *field,
                           int i, bool need_refs, fl_error *err) {
    fl_adapter_info info;
    if (fl_api_find_adapter(r, tenant, s->id, &info, err) != 0) return fl_fail_prefix(err, "field '%s[%d]'", field, i);
    int rc = 0;
    if (strcmp(info.base_model, api->cfg.base_model_hash) != 0)
        rc = fl_fail(err, FL_EINVAL, "field '%s[%d]': adapter %s was made for base model %.12s, not %.12s", field, i,
                     info.id, info.base_model, api->cfg.base_model_hash);
    if (rc == 0) {
        snprintf(s->id, sizeof s->id, "%s", info.id);
        snprintf(s->name, sizeof s->name, "%s", info.name);
        snprintf(s->sha256, sizeof s->sha256, "%s", info.sha256);
        snprintf(s->trigger, sizeof s->trigger, "%s", info.trigger);
        if (need_refs && fl_eval_refs_path(api->cfg.state_dir, info.sha256, s->refs, sizeof s->refs) != 0)
            rc = fl_fail(err, FL_ENOTFOUND,
                         "field '%s[%d]': adapter %s has no stored training images (it was imported or trained from a "
                         "URL): upload its reference images as 'references'",
                         field, i, info.id);
    }
    fl_adapter_info_clear(&info);
    return rc;
}

/* The work and memory of the job against the limits; fills batch_images. */
static int admit(fl_api *api, fl_eval_request *er, fl_error *err) {
    int64_t images = fl_eval_request_images(er);
    int64_t work = images * er->width * er->height * er->steps;
    if (work > api->cfg.max_evaluation_work)
        return fl_fail(err, FL_ELIMIT,
                       "the evaluation's work is %" PRId64 " pixel-steps (%" PRId64 " images of %dx%d x %d steps: %d "
                       "adapters, their base images, prompts x %d seeds), over the limit of %" PRId64
                       " (--max-evaluation-work)",
                       work, images, er->width, er->height, er->steps, er->n_adapters, er->n_seeds,
                       api->cfg.max_evaluation_work);
    /* one sampling batch, as a generation of that many images with every adapter attached */
    fl_generate_request gr;
    memset(&gr, 0, sizeof gr);
    gr.width = er->width;
    gr.height = er->height;
    gr.steps = er->steps;
    gr.num_images = images < 8 ? (int)images : 8;
    gr.max_text_tokens = api->cfg.max_text_tokens;
    fl_adapter_info infos[FL_EVAL_REQ_MAX_ADAPTERS];
    memset(infos, 0, sizeof infos);
    for (int i = 0; i < er->n_adapters; i++) {
        infos[i].rank = 128; /* the largest a service admits: the estimate stays an upper bound */
        infos[i].bytes = 0;
    }
    if (fl_api_admit_generation_memory(api, &gr, infos, er->n_adapters, err) != 0) return -1;
    er->batch_images = gr.batch_images;
    return 0;
}

static void reply_accepted(fl_http_response *res, const char *job_id) {
    char status_url[160], events_url[160], eval_url[160], report_url[180];
    snprintf(status_url, sizeof status_url, "/v1/jobs/%s", job_id);
    snprintf(events_url, sizeof events_url, "/v1/jobs/%s/events", job_id);
    snprintf(eval_url, sizeof eval_url, "/v1/evaluations/%s", job_id);
    snprintf(report_url, sizeof report_url, "/v1/evaluations/%s/report.html", job_id);
    fl_http_add_header(res, "Location", eval_url);
    fl_http_reply_json(res, 202,
                       json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "job_id", job_id, "status", "queued", "status_url",
                                 status_url, "events_url", events_url, "evaluation_url", eval_url, "report_url",
                                 report_url));
}

void fl_api_evaluations_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                               fl_http_response *res) {
    fl_error err = {0};
    fl_req_source source;
    json_t *o = fl_api_request_object(req, "references", &source, &err);
    if (!o) { fl_api_reply_err(res, &err); return; }
    fl_eval_request *er = fl_xcalloc(1, sizeof *er); /* ~150 KB: not on a connection thread's stack */
    int rc = fl_eval_request_decode(o, source, &api->limits, er, &err);
    json_decref(o);
    const fl_http_part *upload = fl_http_part_get(req, "references");
    if (rc == 0 && upload && er->n_adapters != 1)
        rc = fl_fail(&err, FL_EINVAL, "a 'references' upload holds the references of one adapter; %d are named", er->n_adapters);
    for (int i = 0; rc == 0 && i < er->n_adapters; i++)
        rc = resolve_subject(api, r, tenant, &er->adapters[i], "adapters", i, !upload, &err);
    for (int i = 0; rc == 0 && i < er->n_distractors; i++)
        rc = resolve_subject(api, r, tenant, &er->distractors[i], "distractors", i, true, &err);
    /* the upload: checked from its images' headers now (a set without a usable image is a 400) */
    char job_id[FL_ID_MAX];
    fl_jobs_new_id("job", job_id);
    char upload_path[4500] = "";
    if (rc == 0 && upload) {
        fl_imageset_limits limits = fl_imageset_limits_default();
        limits.min_images = 1;
        limits.max_images = FL_EVAL_MAX_REFS;
        fl_imageset_summary set;
        rc = fl_imageset_inspect_memory(upload->data, upload->size, "references", &limits, &set, &err);
        if (rc != 0) rc = fl_fail_prefix(&err, "field 'references': no usable reference image");
        if (rc == 0) {
            snprintf(upload_path, sizeof upload_path, "%s/uploads/%s%s", api->cfg.state_dir, job_id,
                     set.archive_ext ? set.archive_ext : ".zip");
            if (strlen(upload_path) >= FL_EVAL_REQ_PATH_MAX) rc = fl_fail(&err, FL_EIO, "the upload could not be stored");
        }
    }
    bool refused = false;
    if (rc == 0) {
        rc = admit(api, er, &err);
        refused = rc != 0 && err.code == FL_ELIMIT;
    }
    if (rc == 0 && upload) {
        rc = fl_write_file_atomic(upload_path, upload->data, upload->size, &err);
        if (rc != 0) {
            fl_log_warn("storing the references of %s: %s", job_id, err.message);
            if (err.code == FL_ENOSPACE) fl_fail(&err, FL_ENOSPACE, "the upload could not be stored: the service's disk is full");
            else fl_fail(&err, FL_EIO, "the upload could not be stored; retry later");
            upload_path[0] = '\0';
        } else {
            snprintf(er->adapters[0].refs, sizeof er->adapters[0].refs, "%s", upload_path);
            er->adapters[0].refs_uploaded = true;
        }
    }
    if (rc != 0) {
        fl_eval_request_clear(er);
        free(er);
        if (refused) fl_http_reply_error(res, 422, "limit_exceeded", "%s", err.message);
        else fl_api_reply_err(res, &err);
        return;
    }
    json_t *job = fl_eval_request_to_json(er);
    fl_eval_request_clear(er);
    free(er);
    rc = fl_api_submit_job(api, r, FL_JOB_EVAL, job_id, tenant, job, res);
    json_decref(job);
    if (rc != 0) {
        if (*upload_path) unlink(upload_path);
        return;
    }
    reply_accepted(res, job_id);
}

/* The tenant's evaluation job; 404 for another kind of job, another tenant's or none. */
static int get_eval_job(fl_redis *r, const char *tenant, const char *id, fl_job *job, fl_error *err) {
    if (fl_jobs_get(r, tenant, id, job, err) != 0) return -1;
    if (job->kind != FL_JOB_EVAL) {
        fl_job_clear(job);
        return fl_fail(err, FL_ENOTFOUND, "no evaluation '%.64s'", id);
    }
    return 0;
}

void fl_api_evaluations_get(fl_redis *r, const char *tenant, const char *id, fl_http_response *res) {
    fl_error err = {0};
    fl_job job;
    if (get_eval_job(r, tenant, id, &job, &err) != 0) { fl_api_reply_err(res, &err); return; }
    json_t *result = fl_api_json_or_null(job.result_json);
    json_t *evaluation = json_is_object(result) ? json_incref(json_object_get(result, "evaluation")) : json_null();
    json_decref(result);
    char report_url[180];
    snprintf(report_url, sizeof report_url, "/v1/evaluations/%s/report.html", job.id);
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:{s:i, s:i}, s:o, s:o}", "id", job.id, "state", job.state,
                          "created_ms", (json_int_t)job.created_ms, "updated_ms", (json_int_t)job.updated_ms, "progress",
                          "done", job.step, "total", job.total, "evaluation", evaluation ? evaluation : json_null(),
                          "error", fl_api_json_or_null(job.error_json));
    if (!strcmp(job.state, "succeeded")) json_object_set_new(o, "report_url", json_string(report_url));
    if (job.finished_ms) json_object_set_new(o, "finished_ms", json_integer((json_int_t)job.finished_ms));
    fl_job_clear(&job);
    fl_http_reply_json(res, 200, o);
}

/* The report's images: the ids the worker stored, read from state/images. */
typedef struct stored_images {
    const char *state_dir;
    json_t *ids; /* evaluation-result "image_ids": per adapter {gen: [...], base: [...], refs: [...]} */
} stored_images;

static int stored_png(void *arg, int adapter, fl_eval_image_kind kind, int index, unsigned char **png, size_t *n,
                      fl_error *err) {
    (void)err;
    const stored_images *si = arg;
    json_t *a = json_array_get(si->ids, (size_t)adapter);
    json_t *list = json_object_get(a, kind == FL_EVAL_IMAGE_GEN ? "gen" : kind == FL_EVAL_IMAGE_BASE ? "base" : "refs");
    const char *id = json_string_value(json_array_get(list, (size_t)index));
    if (!id || strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(id) || strlen(id) > 60) return 1;
    char path[4300];
    snprintf(path, sizeof path, "%s/images/%s.png", si->state_dir, id);
    fl_error ignored = {0};
    if (fl_read_file(path, FL_API_MAX_IMAGE_BYTES, png, n, &ignored) != 0) return 1;
    return 0;
}

void fl_api_evaluations_report(fl_api *api, fl_redis *r, const char *tenant, const char *id, fl_http_response *res) {
    fl_error err = {0};
    fl_job job;
    if (get_eval_job(r, tenant, id, &job, &err) != 0) { fl_api_reply_err(res, &err); return; }
    if (strcmp(job.state, "succeeded") != 0) {
        fl_http_reply_error(res, 409, "not_ready", "evaluation %s is %s: its report exists once it has succeeded", job.id,
                            job.state);
        fl_job_clear(&job);
        return;
    }
    json_t *result = fl_api_json_or_null(job.result_json);
    fl_job_clear(&job);
    stored_images si = {api->cfg.state_dir, json_object_get(result, "image_ids")};
    char *html = fl_eval_report_render(json_object_get(result, "evaluation"), stored_png, &si, &err);
    json_decref(result);
    if (!html) { fl_api_reply_err(res, &err); return; }
    fl_http_reply_bytes(res, 200, "text/html; charset=utf-8", html, strlen(html));
    free(html);
}
