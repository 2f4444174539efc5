/*
 * api.h — the HTTP API of the service (serve/openapi.yaml describes it): authentication, request
 * validation into plain JSON job requests, the routes, and the mapping of errors to statuses.
 *
 *   POST /v1/trainings                 archive upload (multipart) or {images_url}, options -> 202 job
 *   GET  /v1/jobs/{id}                 state, progress, result or error
 *   DELETE /v1/jobs/{id}               cancel: 200 canceled (it was queued), 202 (running: it
 *                                      stops at its next step), 409 when already finished
 *   GET  /v1/jobs/{id}/events          server-sent events until the job ends
 *   POST /v1/generations               {prompt, adapters:[{id, scale}], ...} -> 202 job, or 200
 *                                      with base64 PNGs when "sync": true
 *   GET  /v1/images/{id}.png
 *   GET  /v1/adapters, POST /v1/adapters (import), GET|DELETE /v1/adapters/{id}
 *   GET  /v1/adapters/{id}/file        ?layout=canonical|kohya|peft, streamed
 *   GET  /v1/jobs                      the tenant's jobs, newest first, paginated
 *   POST /v1/datasets/validate         an image set's verdict per file, no job
 *   GET  /healthz, GET /metrics        (no key needed)
 *   GET  /, /console/<file>            the web console (no key needed; console.h)
 *
 * Every /v1 route needs "Authorization: Bearer KEY" (401 otherwise) and sees only its tenant's
 * adapters, jobs and images: anything else is 404, never 403. Bad JSON or fields are 400 naming
 * the field; bodies over the limits 413; jobs whose memory or work is over the admission limits
 * 422 (api_admit.c); full queues and a tenant's quota 429 with Retry-After; Redis unreachable 503;
 * a full disk (or Redis refusing writes it cannot persist) 507. POST /v1/adapters with a "url" is
 * an import job (202).
 */
#ifndef FL_SERVE_API_H
#define FL_SERVE_API_H
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "models/flux.h"
#include "models/pipeline.h"
#include "serve/http.h"
#include "serve/metrics.h"

typedef struct fl_api_config {
    const char *redis_address;
    const char *state_dir;
    fl_flux_params params;       /* of the resident base model */
    int patch;                   /* image pixels per token side (0: the pixel patch of params); 16 for
                                  * FLUX.1 */
    int default_steps;           /* generation steps when a request gives none (0: 20) */
    double default_guidance;     /* guidance when a request gives none (< 0: 1) */
    /* FLUX.1: what the workers hold beside the transformer and what a request adds (text
     * encoders, autoencoder; models/pipeline.h). All zero for a pixel model. */
    fl_pipeline_costs pipeline_costs;
    char base_model_hash[65];
    long max_pending_generate;   /* generation jobs queued or running before 429 (default 64) */
    long max_pending_train;      /* training jobs (default 8) */
    long max_pending_generate_tenant; /* generation jobs one tenant may have queued or running
                                  * (default 16; <= 0: no quota) */
    long max_pending_train_tenant;    /* training jobs of one tenant (default 2) */
    long job_retention_s;        /* a finished job, its events and images are kept this long
                                  * (default 7 days) */
    long jobs_per_tenant;        /* finished jobs kept per tenant, older ones removed first
                                  * (default 10000) */
    int default_size;            /* width, height and training resolution when a request gives none
                                  * (default 64) */
    int max_resolution;          /* largest width / height / training resolution (default 1024) */
    int max_generation_steps;    /* default 100 */
    int max_num_images;          /* per generation request (default 8) */
    int max_train_steps;         /* default 5000 */
    int max_rank;                /* default 128 */
    int max_batch_size;          /* training batch size (default 16) */
    int max_text_tokens;         /* text length every request is encoded to (default 32) */
    int sync_timeout_s;          /* how long "sync": true waits (default 120) */
    int retry_after_s;           /* Retry-After of a 429 (default 2) */
    bool allow_private_urls;     /* fetch images_url / adapter URLs on loopback and private networks */
    fl_metrics *metrics;         /* required */
    /* Admission (api_admit.c): what one job may cost. */
    fl_device_kind job_device;   /* the workers' device kind: the memory estimate's storage dtype (cpu) */
    size_t max_job_memory;       /* bytes one job may take on its worker (default: half the physical
                                  * memory, fl_api_default_job_memory) */
    int64_t max_generation_work; /* width x height x steps x num_images (default 1310720: 8 images
                                  * of 64x64 at 40 steps, one 256x256 at 20) */
    int64_t max_training_work;   /* resolution^2 x steps x batch_size (default 16384000: 64x64 x
                                  * 1000 steps x batch 4) */
    int64_t max_evaluation_work; /* width x height x steps x images of an evaluation, base images
                                  * included (default 10485760: 8 x max_generation_work) */
    /* Bounded inputs and outputs (api_adapters.c). */
    size_t max_adapter_bytes;    /* an adapter file downloaded from a URL (default 2 GiB) */
    size_t max_metadata_bytes;   /* an imported adapter's metadata, as JSON (default 64 KiB) */
    size_t max_page_bytes;       /* one page of GET /v1/adapters (default 1 MiB) */
} fl_api_config;

fl_api_config fl_api_config_default(void);
/* Half the machine's physical memory: the default --max-job-memory of a CPU service. */
size_t fl_api_default_job_memory(void);

typedef struct fl_api fl_api;
int fl_api_create(const fl_api_config *config, fl_api **out, fl_error *err);
void fl_api_free(fl_api *api);
/* The fl_http_admit_fn of the service (app is the fl_api): routes on the path and method (404,
 * 405 with Allow), authenticates /v1 routes (401), and sets each route's body limits (no body for
 * GET, HEAD and DELETE; multipart only where a route takes it), all before the body is read. */
bool fl_api_admit(void *app, const fl_http_request *req, fl_http_admission *adm, fl_http_response *res);
/* The fl_http_handler of the service (app is the fl_api); HEAD is answered as GET. */
void fl_api_handle(void *app, const fl_http_request *req, fl_http_response *res);
/* The service is stopping: handlers that wait for a job (a "sync" generation) stop waiting and
 * answer 503 with the job's URL; the job itself carries on. */
void fl_api_begin_shutdown(fl_api *api);
/* The HTTP server answering for the API, whose front-door counters /metrics reports (set once
 * it has started; until then they are left out). */
void fl_api_set_http(fl_api *api, fl_http_server *http);
/* How many handlers are still waiting for a job (0 soon after fl_api_begin_shutdown). */
int fl_api_waiting(fl_api *api);

#endif
