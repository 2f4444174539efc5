/*
 * worker_import.c — a worker's import jobs: an adapter file behind a URL (POST /v1/adapters with
 * "url") is downloaded into a temporary file of the store (never into memory), within the size
 * limit the API recorded in the request and the fetcher's time limit, with the claim renewed while
 * it arrives; then it is converted, checked against the base model and registered exactly like an
 * upload. The job's result is the adapter; its error says why not (a host that does not resolve,
 * a download over the limit, a file that is not an adapter of this model).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/log.h"
#include "serve/registry.h"
#include "serve/requests.h"
#include "serve/worker_internal.h"

typedef struct import_ctx {
    worker_state *w;
    const work_item *item;
    fl_claim claim;
    int64_t last_poll_ms;
} import_ctx;

/* While the file arrives: the claim renewed; a cancel, a takeover or a stopping worker ends the
 * download. */
static bool keep_claim(void *arg) {
    import_ctx *ic = arg;
    if (ic->claim == FL_CLAIM_HELD && fl_worker_poll_due(ic->w, &ic->last_poll_ms))
        ic->claim = fl_worker_keep_claim(ic->w, FL_JOB_IMPORT, ic->item);
    fl_worker_heartbeat(ic->w, false);
    return ic->claim == FL_CLAIM_HELD && !fl_worker_stopping(ic->w);
}

void fl_worker_process_import(worker_state *w, const work_item *item, const fl_job *job) {
    fl_adapter_import_request req;
    fl_error err = {0};
    if (fl_adapter_import_request_parse(job->request_json, &req, &err) != 0) {
        fl_worker_fail_job(w, FL_JOB_IMPORT, item, "invalid_input", err.message);
        fl_adapter_import_request_clear(&req);
        return;
    }
    snprintf(w->current_job, sizeof w->current_job, "%s", job->id);
    import_ctx ic = {w, item, fl_worker_keep_claim(w, FL_JOB_IMPORT, item), fl_monotonic_ms()};
    fl_adapter_info info;
    /* The adapter of import job "job_X" is "ad_X": a job retried after its worker died finds
     * what the first attempt registered instead of importing the file twice. */
    char id[FL_ID_MAX];
    const char *suffix = strchr(job->id, '_') ? strchr(job->id, '_') + 1 : job->id;
    snprintf(id, sizeof id, "ad_%.56s", suffix);
    fl_error ignored = {0};
    bool registered = fl_registry_get(w->r, job->tenant, id, &info, &ignored) == 0;
    if (!registered) memset(&info, 0, sizeof info);
    snprintf(info.id, sizeof info.id, "%s", id);
    snprintf(info.tenant, sizeof info.tenant, "%s", job->tenant);
    snprintf(info.name, sizeof info.name, "%s", req.name);
    snprintf(info.trigger, sizeof info.trigger, "%s", req.trigger_word);
    snprintf(info.base_model, sizeof info.base_model, "%s", w->base_hash);
    fl_import_limits limits = fl_import_limits_default();
    limits.max_download_bytes = (size_t)req.max_bytes;
    limits.max_metadata_bytes = (size_t)req.max_metadata_bytes;
    limits.allow_private = w->cfg.allow_private_urls;
    limits.progress = keep_claim;
    limits.progress_arg = &ic;
    int rc = registered || ic.claim != FL_CLAIM_HELD
                 ? 0
                 : fl_registry_import_url(w->r, w->store, &w->params, req.url, &limits, &info, &err);
    if (ic.claim == FL_CLAIM_CANCEL) {
        fl_worker_cancel_job(w, FL_JOB_IMPORT, item);
    } else if (ic.claim != FL_CLAIM_HELD) {
        /* taken over or finished elsewhere: nothing of it is this worker's to finish */
    } else if (rc != 0 && fl_worker_stopping(w)) {
        fl_worker_requeue(w, FL_JOB_IMPORT, item);
    } else if (rc != 0) {
        fl_worker_fail_job(w, FL_JOB_IMPORT, item, fl_error_code_name(err.code), err.message);
    } else {
        json_t *result = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:I}", "adapter_id", info.id, "name",
                                   info.name, "trigger_word", info.trigger, "sha256", info.sha256, "format", info.format,
                                   "source", info.source, "rank", info.rank, "alpha", info.alpha, "bytes",
                                   (json_int_t)info.bytes);
        char *text = json_dumps(result, JSON_COMPACT);
        json_decref(result);
        bool changed = false;
        if (fl_jobs_finish(w->r, job->id, true, text, &changed, &err) == 0) {
            fl_worker_ack(w, FL_JOB_IMPORT, item->entry);
            w->jobs_done++;
            fl_log_info("job %s: adapter %s imported from a URL", job->id, info.id);
        } else {
            fl_log_warn("worker %s: cannot finish job %s: %s (left pending)", w->name, job->id, err.message);
        }
        free(text);
    }
    fl_adapter_info_clear(&info);
    fl_adapter_import_request_clear(&req);
    w->current_job[0] = '\0';
}
