/*
 * jobs.h — training and generation jobs in Redis: the job record, the work streams workers
 * consume, and each job's event stream.
 *
 * Keys (prefix fl:):
 *   fl:job:<id>              hash: id, tenant, kind, state, request (JSON), result / error (JSON),
 *                            step, total, loss, eta_s, attempts, worker, created_ms, updated_ms
 *   fl:job:<id>:events       stream of {"data": JSON event}: queued, running, progress, ...,
 *                            and one terminal event, succeeded or failed
 *   fl:stream:train|generate work streams ({"job": id}) read by the consumer group "workers"
 *   fl:queue:train|generate  jobs accepted and not yet finished (the bound behind HTTP 429)
 *   fl:jobs:states           hash state -> number of jobs in it (for /metrics)
 *   fl:tenant:<t>:jobs       sorted set of the tenant's job ids by creation time
 * Every state change is one Lua script, so a job is counted in exactly one state, the queue
 * counter drops exactly once, and a job finished by one worker cannot be finished again by a
 * worker that reclaimed it late. States: queued -> running (again after a reclaim) -> succeeded
 * or failed.
 */
#ifndef FL_SERVE_JOBS_H
#define FL_SERVE_JOBS_H
#include <stdbool.h>
#include <stdint.h>

#include "serve/registry.h"
#include "core/error.h"
#include "serve/redis.h"

#define FL_JOBS_GROUP "workers"

/* An import (an adapter fetched from a URL) shares the training jobs' stream and queue bound: both
 * are long, one at a time per worker. */
typedef enum fl_job_kind { FL_JOB_TRAIN = 0, FL_JOB_GENERATE = 1, FL_JOB_IMPORT = 2 } fl_job_kind;

const char *fl_job_kind_name(fl_job_kind kind);     /* "train", "generate", "import" */
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
    int64_t created_ms, updated_ms;
} fl_job;

void fl_job_clear(fl_job *job);
bool fl_job_state_terminal(const char *state);

/* "job_" + 24 random hex digits; "img_..." for images. */
void fl_jobs_new_id(const char *prefix, char id[FL_ID_MAX]);

/* Creates both work streams and the consumer group (idempotent). */
int fl_jobs_init(fl_redis *r, fl_error *err);

/* Accepts a job unless max_pending jobs of its kind are already queued or running: then *full is
 * set and nothing is written. */
int fl_jobs_enqueue(fl_redis *r, fl_job_kind kind, const char *id, const char *tenant, const char *request_json,
                    long max_pending, bool *full, fl_error *err);
/* The job; with tenant set, another tenant's job is FL_ENOTFOUND like a missing one. */
int fl_jobs_get(fl_redis *r, const char *tenant, const char *id, fl_job *out, fl_error *err);
/* A worker takes the job: state running, attempts + 1 (into *attempts). *finished is set (and
 * nothing changed) when the job already reached a terminal state. */
int fl_jobs_start(fl_redis *r, const char *id, const char *worker, int *attempts, bool *finished, fl_error *err);
/* Appends an event (a JSON object text) to the job's event stream; progress fields, when
 * step >= 0, are copied into the job record too. */
int fl_jobs_event(fl_redis *r, const char *id, const char *event_json, int step, int total, double loss,
                  double eta_s, fl_error *err);
/* Terminal state: succeeded with result_json, or failed with error_json ({"code","message"}).
 * *changed is false when the job was already finished. */
int fl_jobs_finish(fl_redis *r, const char *id, bool succeeded, const char *json, bool *changed, fl_error *err);
/* Acknowledges a work-stream entry (after the job's result is stored). */
int fl_jobs_ack(fl_redis *r, fl_job_kind kind, const char *entry_id, fl_error *err);
/* The SHA-256 of a model file, remembered in Redis under its path, size and modification time
 * (fl:modelhash:...), so a 24 GB checkpoint is hashed once, not at every start. */
int fl_model_hash_cached(fl_redis *r, const char *path, char hex[65], fl_error *err);
/* Jobs of a kind accepted and not finished. */
int fl_jobs_pending(fl_redis *r, fl_job_kind kind, long long *n, fl_error *err);

#endif
