/*
 * jobs.h — training and generation jobs in Redis: the job record, the work streams workers
 * consume, each job's event stream, and the life of a job from acceptance to removal.
 *
 * Keys (prefix fl:):
 *   fl:job:<id>              hash: id, tenant, kind, state, request (JSON), result / error (JSON),
 *                            step, total, loss, eta_s, attempts, worker, cancel_requested,
 *                            created_ms, updated_ms, finished_ms, ttl_s and keep (its retention)
 *   fl:job:<id>:events       stream of {"data": JSON event}: queued, running, progress, ...,
 *                            requeued, cancel_requested, and one terminal event: succeeded,
 *                            failed or canceled
 *   fl:stream:train|generate work streams ({"job": id}) read by the consumer group "workers"
 *   fl:queue:train|generate  jobs accepted and not yet finished (the bound behind HTTP 429)
 *   fl:tenant:<t>:pending    hash kind -> the tenant's jobs accepted and not finished (its quota)
 *   fl:jobs:states           hash state -> number of jobs in it (for /metrics)
 *   fl:tenant:<t>:jobs       sorted set of the tenant's job ids by creation time
 *   fl:images:due            sorted set image id -> when its key and PNG are to be removed
 *
 * Every state change is one Lua script, so a job is counted in exactly one state, the counters
 * drop exactly once (and never below zero), and a job finished once cannot be finished again by
 * a worker that reclaimed it late. States: queued -> running -> succeeded | failed | canceled;
 * running goes back to queued when a stopping worker hands the job back (requeue).
 *
 * Cancel: a queued job is canceled at once (it never starts: a worker that reads its entry
 * finds it finished and acknowledges it). A running job is marked cancel_requested; its worker
 * notices at the next step (it polls fl_jobs_keep_claim), stops, and finishes it as canceled.
 * A worker that takes over a job marked so finishes it as canceled instead of running it.
 *
 * Retention: when a job ends its record and event stream expire after the job's ttl_s, its
 * images are due then too (the workers' sweep removes key and PNG), and the tenant's index
 * keeps at most `keep` jobs: the oldest finished ones beyond it are removed (with their events
 * and images) and entries whose record is gone are dropped. Both figures are fixed when the job
 * is accepted (fl_job_policy). Work streams are trimmed of acknowledged entries by the sweep.
 */
#ifndef FL_SERVE_JOBS_H
#define FL_SERVE_JOBS_H
#include <stdbool.h>
#include <stdint.h>

#include "serve/registry.h"
#include "core/error.h"
#include "serve/redis.h"

#define FL_JOBS_GROUP "workers"
#define FL_JOBS_RETENTION_S_DEFAULT (7L * 24 * 3600) /* a finished job is kept a week */
#define FL_JOBS_KEEP_PER_TENANT_DEFAULT 10000L       /* and at most this many per tenant */

/* An import (an adapter fetched from a URL) and an evaluation (eval/evaluate.h) share the training
 * jobs' stream, queue bound and tenant quota: all are long, one at a time per worker. */
typedef enum fl_job_kind { FL_JOB_TRAIN = 0, FL_JOB_GENERATE = 1, FL_JOB_IMPORT = 2, FL_JOB_EVAL = 3 } fl_job_kind;

const char *fl_job_kind_name(fl_job_kind kind);     /* "train", "generate", "import", "evaluate" */
const char *fl_job_stream_key(fl_job_kind kind);    /* "fl:stream:train", ... */

typedef struct fl_job {
    char id[FL_ID_MAX];
    char tenant[FL_TENANT_MAX];
    fl_job_kind kind;
    char state[16];
    char worker[64];
    char *request_json; /* malloc'ed; NULL when absent */
    char *result_json;
    char *error_json;
    int step, total, attempts;
    double loss, eta_s;
    bool cancel_requested;
    bool deleted; /* deleted by its client while it ran: gone for the client, removed as it ends */
    int64_t created_ms, updated_ms, finished_ms;
} fl_job;

void fl_job_clear(fl_job *job);
/* succeeded, failed and canceled. */
bool fl_job_state_terminal(const char *state);

/* "job_" + 24 random hex digits; "img_..." for images. */
void fl_jobs_new_id(const char *prefix, char id[FL_ID_MAX]);

/* Creates both work streams and the consumer group (idempotent). */
int fl_jobs_init(fl_redis *r, fl_error *err);

/* What bounds a job's admission and how long it is kept once finished. */
typedef struct fl_job_policy {
    long max_pending;        /* jobs of its kind queued or running, all tenants together */
    long max_pending_tenant; /* of its kind for its tenant; <= 0: no quota */
    long retention_s;        /* <= 0: FL_JOBS_RETENTION_S_DEFAULT */
    long keep_per_tenant;    /* <= 0: FL_JOBS_KEEP_PER_TENANT_DEFAULT */
} fl_job_policy;

typedef enum fl_admission {
    FL_ADMITTED = 0,
    FL_ADMIT_QUEUE_FULL,   /* max_pending reached: nothing written */
    FL_ADMIT_TENANT_QUOTA, /* max_pending_tenant reached for this tenant: nothing written */
} fl_admission;

/* Accepts a job (record, counters, index, queued event, work-stream entry) in one script, or
 * says why not in *admission. FL_ECONFLICT when the id exists. */
int fl_jobs_submit(fl_redis *r, fl_job_kind kind, const char *id, const char *tenant, const char *request_json,
                   const fl_job_policy *policy, fl_admission *admission, fl_error *err);
/* The same with only the queue bound (no tenant quota, default retention); *full on refusal. */
int fl_jobs_enqueue(fl_redis *r, fl_job_kind kind, const char *id, const char *tenant, const char *request_json,
                    long max_pending, bool *full, fl_error *err);
/* The job; with tenant set, another tenant's job is FL_ENOTFOUND like a missing one. */
int fl_jobs_get(fl_redis *r, const char *tenant, const char *id, fl_job *out, fl_error *err);
/* A worker takes the job: state running, attempts + 1 (into *attempts). *finished is set (and
 * nothing changed) when the job already reached a terminal state, or when it was marked
 * cancel_requested: then it is finished as canceled here. */
int fl_jobs_start(fl_redis *r, const char *id, const char *worker, int *attempts, bool *finished, fl_error *err);
/* Appends an event (a JSON object text) to the job's event stream; progress fields, when
 * step >= 0, are copied into the job record too. */
int fl_jobs_event(fl_redis *r, const char *id, const char *event_json, int step, int total, double loss,
                  double eta_s, fl_error *err);
/* Terminal state: succeeded with result_json, or failed with error_json ({"code","message"}).
 * *changed is false when the job was already finished (the images a result names are then
 * removed: they belong to no job). */
int fl_jobs_finish(fl_redis *r, const char *id, bool succeeded, const char *json, bool *changed, fl_error *err);
/* The same for any terminal state: "succeeded" (json: the result), "failed" or "canceled"
 * (json: the error {"code","message"}). */
int fl_jobs_finish_as(fl_redis *r, const char *id, const char *state, const char *json, bool *changed,
                      fl_error *err);

typedef enum fl_cancel_outcome {
    FL_CANCEL_DONE = 1,      /* it was queued: canceled now, it never starts */
    FL_CANCEL_REQUESTED = 2, /* it is running: its worker stops it at the next step */
} fl_cancel_outcome;
/* Cancels the tenant's job. FL_ENOTFOUND for a missing job or another tenant's; FL_ECONFLICT
 * for a job already finished (the message names its state). */
int fl_jobs_cancel(fl_redis *r, const char *tenant, const char *id, fl_cancel_outcome *outcome, fl_error *err);

typedef enum fl_delete_outcome {
    FL_DELETE_DONE = 1,     /* finished, or queued and canceled first: removed now */
    FL_DELETE_STOPPING = 2, /* running: gone for the client now; its worker stops it at the next
                             * step and it is removed as it ends */
} fl_delete_outcome;
/* Deletes the tenant's job: its record, events and image keys (the image files are left due for
 * the next sweep). A queued job is canceled first and never starts; a running one is canceled
 * and removed when its worker stops it. From this call on the client sees it no more (404).
 * FL_ENOTFOUND for a missing job, one deleted already, or another tenant's. */
int fl_jobs_delete(fl_redis *r, const char *tenant, const char *id, fl_delete_outcome *outcome, fl_error *err);

typedef enum fl_claim {
    FL_CLAIM_LOST = 0,     /* the entry or the job belongs to another worker now: stop, touch nothing */
    FL_CLAIM_HELD = 1,     /* renewed: carry on */
    FL_CLAIM_CANCEL = 2,   /* renewed, but the client canceled the job: stop and finish it as canceled */
    FL_CLAIM_FINISHED = 3, /* the job is already finished: stop */
} fl_claim;
/* Renews worker's claim on a work-stream entry of job id, only if the entry is still pending
 * for worker and the job still runs on it (a worker never takes an entry back from the worker
 * that took it over), and reports whether the client asked to cancel. */
int fl_jobs_keep_claim(fl_redis *r, fl_job_kind kind, const char *id, const char *entry, const char *worker,
                       fl_claim *claim, fl_error *err);

typedef enum fl_requeue_outcome {
    FL_REQUEUE_NOT_HELD = 0, /* the entry or job is not this worker's any more: nothing done */
    FL_REQUEUED = 1,         /* (again) queued, the entry acknowledged and a new one added */
    FL_REQUEUE_CANCELED = 2, /* it was marked cancel_requested: finished as canceled instead */
} fl_requeue_outcome;
/* Hands a job back (a stopping worker): a running one, or one read but not started yet; another
 * worker can take it at once. */
int fl_jobs_requeue(fl_redis *r, fl_job_kind kind, const char *id, const char *entry, const char *worker,
                    fl_requeue_outcome *outcome, fl_error *err);

/* Acknowledges a work-stream entry (after the job's result is stored). */
int fl_jobs_ack(fl_redis *r, fl_job_kind kind, const char *entry_id, fl_error *err);
/* Removes the entries of a work stream every consumer is done with (acknowledged, older than
 * the oldest pending and the oldest undelivered entry); *trimmed gets how many. */
int fl_jobs_trim_stream(fl_redis *r, fl_job_kind kind, long long *trimmed, fl_error *err);
/* Removes up to max images that are due (key, and PNG under state_dir/images); *removed gets
 * how many. */
int fl_jobs_sweep_images(fl_redis *r, const char *state_dir, int max, int *removed, fl_error *err);
/* Looks at up to count image keys from *cursor on (SCAN; 0 starts over and comes back when a
 * round is complete): an image without an expiry whose job is finished or gone belongs to no
 * result (its worker died or lost the job before finishing): it is made due now. */
int fl_jobs_sweep_orphan_images(fl_redis *r, unsigned long long *cursor, int count, int *orphans, fl_error *err);
/* Removes a training job's files: its upload (state_dir/uploads/<id>.*) and its checkpoint
 * directory (state_dir/jobs/<id>/). */
void fl_jobs_remove_files(const char *state_dir, const char *id);
/* The SHA-256 of a model file, remembered in Redis under its path, size and modification time
 * (fl:modelhash:...), so a 24 GB checkpoint is hashed once, not at every start. */
int fl_model_hash_cached(fl_redis *r, const char *path, char hex[65], fl_error *err);
/* Jobs of a kind accepted and not finished. */
int fl_jobs_pending(fl_redis *r, fl_job_kind kind, long long *n, fl_error *err);

#endif
