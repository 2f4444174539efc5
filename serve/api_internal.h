/*
 * api_internal.h — what the files of the HTTP API share (not a public header): the API's state,
 * its Redis connection pool, the error-to-status mapping, the request body as a JSON object, and
 * the handlers each file implements (api_adapters.c, api_jobs.c, api_eval.c, api_datasets.c,
 * api_ops.c). api.c routes.
 */
#ifndef FL_SERVE_API_INTERNAL_H
#define FL_SERVE_API_INTERNAL_H
#include <pthread.h>
#include <stdbool.h>

#include <jansson.h>

#include "datasets/imageset.h"
#include "serve/api.h"
#include "serve/http.h"
#include "serve/jobs.h"
#include "serve/redis.h"
#include "serve/registry.h"
#include "serve/requests.h"
#include "serve/store.h"

#define FL_API_POOL_MAX 64
#define FL_API_MAX_IMAGE_BYTES ((size_t)1 << 30) /* a PNG the service wrote */

struct fl_api {
    fl_api_config cfg;
    fl_store *store;
    fl_request_limits limits; /* what requests are checked against, from cfg and the model */
    fl_http_server *http;     /* for the front door's counters (atomic: set after serving began) */
    pthread_mutex_t lock;
    fl_redis *pool[FL_API_POOL_MAX];
    int n_pool;
    _Atomic bool stopping; /* fl_api_begin_shutdown */
    _Atomic int waiting;   /* handlers waiting for a job ("sync" generations) */
};

/* A Redis connection for this thread's request (FL_EUNAVAILABLE when Redis cannot be reached),
 * and its return to the pool. */
fl_redis *fl_api_pool_get(fl_api *api, fl_error *err);
void fl_api_pool_put(fl_api *api, fl_redis *r);

/* The HTTP status of an error code, and an error response from err. */
int fl_api_status_of(fl_error_code code);
void fl_api_reply_err(fl_http_response *res, const fl_error *err);
/* text parsed as JSON; text itself as a JSON string when it is not JSON; null for NULL. */
json_t *fl_api_json_or_null(const char *text);
/* The request's body as a JSON object: a JSON body, or the plain fields of a multipart form (each
 * value a string; *source tells which), leaving out parts with a file name and the part named
 * file_part (the route's file; may be NULL). NULL with err set for a malformed body. */
json_t *fl_api_request_object(const fl_http_request *req, const char *file_part, fl_req_source *source,
                              fl_error *err);

/* A job's 202 answer: its id, its status and events URLs, and Location. */
void fl_api_reply_accepted(fl_http_response *res, const char *job_id);
/* Queues a job of kind for tenant under the service's queue bound, tenant quota and retention:
 * 0 when accepted; otherwise -1 with the answer (the error, or 429 queue_full / tenant_quota
 * with Retry-After) already in res. */
int fl_api_submit_job(fl_api *api, fl_redis *r, fl_job_kind kind, const char *job_id, const char *tenant,
                      json_t *request, fl_http_response *res);

/* api_adapters.c */
json_t *fl_api_adapter_json(const fl_adapter_info *a);
/* An adapter of the tenant by id, else by name; FL_ENOTFOUND naming it otherwise. */
int fl_api_find_adapter(fl_redis *r, const char *tenant, const char *id_or_name, fl_adapter_info *out, fl_error *err);
void fl_api_adapters_list(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                          fl_http_response *res);
void fl_api_adapters_import(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                            fl_http_response *res);
void fl_api_adapters_one(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                         fl_http_response *res);
/* GET /v1/adapters/{id}/file?layout=canonical|kohya|peft: the adapter's file, streamed. */
void fl_api_adapters_file(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                          fl_http_response *res);

/* api_jobs.c */
void fl_api_trainings_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                             fl_http_response *res);
void fl_api_generations_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                               fl_http_response *res);
void fl_api_jobs_get(fl_redis *r, const char *tenant, const char *id, fl_http_response *res);
/* GET /v1/jobs: the tenant's jobs, newest first, a page bounded in count and bytes. */
void fl_api_jobs_list(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req, fl_http_response *res);
void fl_api_jobs_cancel(fl_api *api, fl_redis *r, const char *tenant, const char *id, fl_http_response *res);
void fl_api_jobs_delete(fl_api *api, fl_redis *r, const char *tenant, const char *id, fl_http_response *res);
void fl_api_jobs_events(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                        fl_http_response *res);
void fl_api_images_get(fl_api *api, fl_redis *r, const char *tenant, const char *name, fl_http_response *res);

/* api_admit.c: a job's memory and work against the limits (FL_ELIMIT naming the limit and the
 * figure; FL_EINVAL for bad training targets); fills the request's max_decoded_pixels (training:
 * set is the upload's summary, NULL for images_url) or batch_images (generation). */
int fl_api_admit_training(fl_api *api, fl_train_request *tr, const fl_imageset_summary *set, fl_error *err);
int fl_api_admit_generation(fl_api *api, fl_generate_request *gr, const fl_adapter_info *adapters, int n_adapters,
                            fl_error *err);

/* The memory part of fl_api_admit_generation alone (no work limit): an evaluation's sampling batch. */
int fl_api_admit_generation_memory(fl_api *api, fl_generate_request *gr, const fl_adapter_info *adapters,
                                   int n_adapters, fl_error *err);

/* api_eval.c: identity evaluations as jobs */
void fl_api_evaluations_create(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                               fl_http_response *res);
void fl_api_evaluations_get(fl_redis *r, const char *tenant, const char *id, fl_http_response *res);
void fl_api_evaluations_report(fl_api *api, fl_redis *r, const char *tenant, const char *id, fl_http_response *res);

/* api_datasets.c: POST /v1/datasets/validate, an image set checked as a training would check it */
void fl_api_datasets_validate(fl_api *api, const char *tenant, const fl_http_request *req, fl_http_response *res);

/* api_ops.c: no key needed */
void fl_api_healthz(fl_api *api, fl_http_response *res);
void fl_api_metrics(fl_api *api, fl_http_response *res);

#endif
