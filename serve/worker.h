/*
 * worker.h — a worker: one resident base model, one thread, jobs from the Redis work streams.
 *
 * The loop reads generation jobs first (latency) and training jobs otherwise, from the consumer
 * group "workers". Generation jobs that share size, steps and text length are sampled as one
 * batch even when they name different adapters: each request's rows carry its own adapters and
 * scales (models/flux.h per-sample adapters), so every request gets exactly the image it would
 * get alone. Adapters stay attached to the model between batches (adapters/cache.h: a device
 * tier of attached sets over a host tier of loaded files, both LRU by bytes, fed by the store),
 * so a batch over resident adapters attaches, detaches and plans nothing.
 *
 * Faults: a job is acknowledged only after its result is stored (images written, adapter file
 * stored and registered, job record finished). Entries another worker left pending longer than
 * the claim timeout are taken over with XAUTOCLAIM; a training job then resumes from its last
 * checkpoint in the shared state directory. An entry delivered more than max_deliveries times
 * fails its job with the reason instead of running again. While a job runs — between every
 * training step and every sampling step — the worker renews its claim (at most every 250 ms,
 * and at least four times per claim timeout), so a long job is never taken over from a live
 * worker; a worker that finds its job taken over anyway (it stalled) stops it without finishing
 * it, and one that finds its job canceled stops it at that step and finishes it as canceled.
 * Consumers of workers gone for an hour with nothing pending are removed from the group.
 * Heartbeats in fl:worker:<name> (TTL 30 s) list the worker's resident adapters and cache
 * counters, and count the adapter sets attached to and detached from its model and the model's
 * activation plans.
 *
 * Stopping: once *stop is set the worker takes no new work. A running training writes a
 * checkpoint and is handed back to the queue at once (another worker resumes it); a running
 * generation batch finishes when, at the pace of its steps so far, it can within half of
 * shutdown_timeout_ms; otherwise it is abandoned at the next step and its requests handed back;
 * requests read but not yet started are handed back.
 *
 * Retention: every sweep_interval_ms one worker (a Redis lock) trims the work streams and
 * removes due and orphaned images, uploads and checkpoints, a bounded number per pass.
 */
#ifndef FL_SERVE_WORKER_H
#define FL_SERVE_WORKER_H
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "serve/metrics.h"

typedef struct fl_worker_config {
    const char *redis_address;
    const char *state_dir;      /* store/, images/, jobs/ and uploads/ live here */
    const char *model_path;
    const char *device;         /* "cpu", "cuda", "cuda:1", "auto" */
    const char *name;           /* consumer name; default "<host>-<pid>-<n>" */
    int max_batch;              /* images per generation batch (default 8) */
    int batch_wait_ms;          /* how long a batch waits for more requests (default 5) */
    int claim_timeout_ms;       /* idle time before another worker takes an entry over (default 60000) */
    int max_deliveries;         /* delivery cap (default 3) */
    size_t cache_bytes;         /* adapter cache budget (default 1 GiB) */
    size_t device_cache_bytes;  /* adapters kept attached to the model (default 1 GiB) */
    int checkpoint_every;       /* training checkpoint period in steps (default 10) */
    int shutdown_timeout_ms;    /* how long a stop may take (default 30000); see above */
    int sweep_interval_ms;      /* retention sweep period (default 10000) */
    bool allow_private_urls;    /* fetch images_url on loopback and private networks */
    fl_metrics *metrics;        /* optional: batch and job figures of this process */
} fl_worker_config;

fl_worker_config fl_worker_config_default(void);

/* Runs the loop on the calling thread until *stop becomes non-zero. Loads the model first. */
int fl_worker_run(const fl_worker_config *config, volatile sig_atomic_t *stop, fl_error *err);

/* The same on a thread of its own. */
typedef struct fl_worker fl_worker;
int fl_worker_start(const fl_worker_config *config, fl_worker **out, fl_error *err);
/* Asks the worker to stop (see "Stopping" above) and returns at once. */
void fl_worker_request_stop(fl_worker *w);
/* Asks the worker to stop, then joins it. */
void fl_worker_stop(fl_worker *w);

#endif
