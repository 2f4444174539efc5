/*
 * worker_internal.h — what the files of a worker share (not a public header): its state, the work
 * items read from the streams, and the steps every job kind takes (renew the claim and see a
 * cancel, finish and acknowledge, fail, hand back when stopping, heartbeat). worker.c runs the
 * loop; worker_generate.c and worker_train.c run the two job kinds; worker_sweep.c applies the
 * retention.
 */
#ifndef FL_SERVE_WORKER_INTERNAL_H
#define FL_SERVE_WORKER_INTERNAL_H
#include <dirent.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "adapters/cache.h"
#include "kernels/context.h"
#include "models/flux.h"
#include "models/pipeline.h"
#include "serve/jobs.h"
#include "serve/redis.h"
#include "serve/store.h"
#include "serve/worker.h"

#define FL_WORKER_MAX_ITEMS 64

/* One entry of a work stream. */
typedef struct work_item {
    char entry[64]; /* work-stream entry id */
    char job[FL_ID_MAX];
} work_item;

typedef struct worker_state {
    fl_worker_config cfg;
    char name[96];
    volatile sig_atomic_t *stop;
    fl_redis *r;
    fl_ctx *ctx;
    fl_pipeline *pipe;    /* the model and, for FLUX.1, its text encoders and autoencoder, resident */
    fl_flux_model *model; /* the pipeline's transformer */
    fl_flux_params params;
    int patch;
    char base_hash[65];
    fl_store *store;
    fl_adapter_cache *cache;
    int64_t last_reclaim_ms, last_heartbeat_ms, last_keepalive_ms, last_prune_ms;
    int64_t stop_seen_ms;          /* monotonic time the stop request was first seen (0: none) */
    int64_t last_sweep_ms;         /* monotonic */
    unsigned long long image_cursor; /* SCAN cursor of the orphan-image sweep */
    DIR *sweep_dirs[3];            /* uploads/, jobs/, images/: read a bounded slice per sweep */
    unsigned long long jobs_done;
    char current_job[FL_ID_MAX];
} worker_state;

/* Renews this worker's claim on the item's entry so no other worker takes it over while it runs,
 * and says whether the job is still this worker's and wanted (see fl_claim). A Redis error keeps
 * the job running (FL_CLAIM_HELD): the claim is renewed at the next poll. */
fl_claim fl_worker_keep_claim(worker_state *w, fl_job_kind kind, const work_item *it);
/* True when a running job should check its claim now: at most every min(250 ms, claim timeout
 * / 4); *last is the job's own clock (monotonic ms). */
bool fl_worker_poll_due(const worker_state *w, int64_t *last);
/* True once the worker was asked to stop (remembers when it first saw it). */
bool fl_worker_stopping(worker_state *w);
/* True when a stopping worker must abandon a running generation batch: it would not finish
 * within half of the shutdown timeout after the stop request, at the pace of its steps so far
 * (remaining_ms; < 0 when unknown). */
bool fl_worker_abandon_generation(worker_state *w, int64_t remaining_ms);
/* Acknowledges an entry (after its job's result is stored). */
void fl_worker_ack(worker_state *w, fl_job_kind kind, const char *entry);
/* Fails the item's job with {code, message} and acknowledges its entry; a training's upload and
 * checkpoints are removed. */
void fl_worker_fail_job(worker_state *w, fl_job_kind kind, const work_item *it, const char *code, const char *message);
/* Finishes the item's job as canceled (the client asked) and acknowledges its entry; a
 * training's upload and checkpoints are removed. */
void fl_worker_cancel_job(worker_state *w, fl_job_kind kind, const work_item *it);
/* Hands the item's job back to the queue (a stopping worker) so another worker takes it at once. */
void fl_worker_requeue(worker_state *w, fl_job_kind kind, const work_item *it);
/* Publishes the worker's heartbeat (at most every 500 ms unless forced). */
void fl_worker_heartbeat(worker_state *w, bool force);
/* Registers state_dir/images/<img_id>.png (already written) as one of tenant's images, made by
 * job: its key (tenant, job, seed, size, creation time) lets GET /v1/images serve it to that
 * tenant. 0, or -1 with err. */
int fl_worker_register_image(worker_state *w, const char *img_id, const char *tenant, const char *job,
                             unsigned long long seed, int width, int height, fl_error *err);

/* worker_sweep.c: retention, at most every sweep interval and by one worker at a time: trims
 * the work streams, removes due images (key and PNG) and orphaned images, uploads, checkpoint
 * directories and temporary files, each pass bounded. */
void fl_worker_sweep(worker_state *w);
void fl_worker_sweep_close(worker_state *w);

/* worker_generate.c: runs the generation items read together, batching compatible ones. */
void fl_worker_process_generate(worker_state *w, const work_item *items, int n);
/* worker_train.c: runs one training item (an import item, which shares the stream, goes on to
 * worker_import.c). */
void fl_worker_process_train(worker_state *w, const work_item *item);
/* worker_eval.c: runs one evaluation job (started, its record read); keeps a finished training's
 * upload as its adapter's references; removes kept references whose adapter file is gone (at
 * most max_entries looked at per call). */
void fl_worker_process_eval(worker_state *w, const work_item *item, const fl_job *job);
void fl_worker_keep_training_refs(worker_state *w, const char *upload, const char *adapter_sha256);
void fl_worker_sweep_refs(worker_state *w, int max_entries);
/* worker_import.c: runs one import job (started, its record read). */
void fl_worker_process_import(worker_state *w, const work_item *item, const fl_job *job);

#endif
