/*
 * worker_internal.h — what the files of a worker share (not a public header): its state, the work
 * items read from the streams, and the steps every job kind takes (renew the claim, finish and
 * acknowledge, fail, heartbeat). worker.c runs the loop; worker_generate.c and worker_train.c run
 * the two job kinds.
 */
#ifndef FL_SERVE_WORKER_INTERNAL_H
#define FL_SERVE_WORKER_INTERNAL_H
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "adapters/cache.h"
#include "kernels/context.h"
#include "models/flux.h"
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
    fl_flux_model *model;
    fl_flux_params params;
    int patch;
    char base_hash[65];
    fl_store *store;
    fl_adapter_cache *cache;
    int64_t last_reclaim_ms, last_heartbeat_ms, last_keepalive_ms, last_prune_ms;
    unsigned long long jobs_done;
    char current_job[FL_ID_MAX];
} worker_state;

/* Renews this worker's claim on an entry so no other worker takes it over while it runs. */
void fl_worker_keep_claim(worker_state *w, fl_job_kind kind, const char *entry);
/* Acknowledges an entry (after its job's result is stored). */
void fl_worker_ack(worker_state *w, fl_job_kind kind, const char *entry);
/* Fails the item's job with {code, message} and acknowledges its entry. */
void fl_worker_fail_job(worker_state *w, fl_job_kind kind, const work_item *it, const char *code, const char *message);
/* Publishes the worker's heartbeat (at most every 500 ms unless forced). */
void fl_worker_heartbeat(worker_state *w, bool force);

/* worker_generate.c: runs the generation items read together, batching compatible ones. */
void fl_worker_process_generate(worker_state *w, const work_item *items, int n);
/* worker_train.c: runs one training item (an import item, which shares the stream, goes on to
 * worker_import.c). */
void fl_worker_process_train(worker_state *w, const work_item *item);
/* worker_import.c: runs one import job (started, its record read). */
void fl_worker_process_import(worker_state *w, const work_item *item, const fl_job *job);

#endif
