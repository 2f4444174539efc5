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
 * fails its job with the reason instead of running again. While a job runs the worker renews
 * its claim, so a long training is never taken over from a live worker. Consumers of workers gone
 * for an hour with nothing pending are removed from the group. Heartbeats in
 * fl:worker:<name> (TTL 30 s) list the worker's resident adapters and cache counters, and count
 * the adapter sets attached to and detached from its model and the model's activation plans.
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
    bool allow_private_urls;    /* fetch images_url on loopback and private networks */
    fl_metrics *metrics;        /* optional: batch and job figures of this process */
} fl_worker_config;

fl_worker_config fl_worker_config_default(void);

/* Runs the loop on the calling thread until *stop becomes non-zero. Loads the model first. */
int fl_worker_run(const fl_worker_config *config, volatile sig_atomic_t *stop, fl_error *err);

/* The same on a thread of its own. */
typedef struct fl_worker fl_worker;
int fl_worker_start(const fl_worker_config *config, fl_worker **out, fl_error *err);
/* Asks the worker to stop (a running training writes a checkpoint and is left to be reclaimed),
 * then joins it. */
void fl_worker_stop(fl_worker *w);

#endif
