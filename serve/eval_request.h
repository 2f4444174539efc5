/*
 * eval_request.h — the evaluation job's request (POST /v1/evaluations): the plain struct, checked
 * against the service's limits from a client's JSON body or multipart form, and its stored JSON
 * form, read back by the worker with the same decoder (as serve/requests.h does for the other
 * job kinds).
 *
 * Client fields (JSON types; in a form every value is a string: lists comma-separated, prompts
 * one per line; a JSON body may give a list as such a string too):
 *   adapters     1..8 adapter ids or names of the tenant (required)
 *   prompts      1..64 prompts with [trigger], each at most 1000 characters (default: 8 built-in)
 *   seeds        1..16 integers in [0, 2^53] (default 1, 2, 3, 4)
 *   distractors  0..16 adapter ids or names whose training images are further subjects
 *   width, height, steps, guidance, scale   as for generations (scale: the adapters' multiplier)
 *   encoder      "builtin" (the only encoder a service offers)
 *   bootstrap    resamples for the intervals, [0, 10000] (default 1000)
 * and an optional file part "references" (an image archive) holding the references of the one
 * adapter named; otherwise each adapter's training images are its references.
 *
 * Fields the service fills in (accepted only from storage): for each adapter its resolved id,
 * file sha256, trigger word and references path; the distractors' references paths; batch_images.
 */
#ifndef FL_SERVE_EVAL_REQUEST_H
#define FL_SERVE_EVAL_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/error.h"
#include "serve/requests.h"

#define FL_EVAL_REQ_MAX_ADAPTERS 8
#define FL_EVAL_REQ_MAX_DISTRACTORS 16
#define FL_EVAL_REQ_MAX_PROMPTS 64
#define FL_EVAL_REQ_MAX_PROMPT_CHARS 1000
#define FL_EVAL_REQ_MAX_SEEDS 16
#define FL_EVAL_REQ_PATH_MAX 4200

typedef struct fl_eval_req_subject {
    char id[FL_NAME_MAX];      /* as named by the client; the API stores the adapter id */
    char name[FL_NAME_MAX];    /* the adapter's name (filled by the API) */
    char sha256[65];           /* of the adapter file (filled by the API) */
    char trigger[FL_NAME_MAX]; /* (filled by the API) */
    char refs[FL_EVAL_REQ_PATH_MAX]; /* references: an archive path (filled by the API) */
    bool refs_uploaded;        /* the references came with the request (filled by the API) */
} fl_eval_req_subject;

typedef struct fl_eval_request {
    int n_adapters;
    fl_eval_req_subject adapters[FL_EVAL_REQ_MAX_ADAPTERS];
    int n_distractors;
    fl_eval_req_subject distractors[FL_EVAL_REQ_MAX_DISTRACTORS];
    int n_prompts;
    char *prompts[FL_EVAL_REQ_MAX_PROMPTS]; /* malloc'ed; n_prompts == 0: the built-in set */
    int n_seeds;
    int64_t seeds[FL_EVAL_REQ_MAX_SEEDS];
    int width, height, steps;
    double guidance, scale;
    int bootstrap;
    int batch_images; /* filled by the API: images of this size one batch may hold in memory */
} fl_eval_request;

int fl_eval_request_decode(json_t *obj, fl_req_source source, const fl_request_limits *limits, fl_eval_request *out,
                           fl_error *err);
json_t *fl_eval_request_to_json(const fl_eval_request *r);
int fl_eval_request_parse(const char *text, fl_eval_request *out, fl_error *err);
void fl_eval_request_clear(fl_eval_request *r);

/* The training images kept for an adapter: state_dir/refs/<sha256>.zip|.tar|.tar.gz, into out;
 * -1 when there are none. A worker keeps a training's upload there once its adapter is
 * registered (fl_eval_keep_training_refs: renamed, not copied); the sweep removes it once the
 * store no longer holds the adapter file. */
int fl_eval_refs_path(const char *state_dir, const char *sha256, char *out, size_t cap);
int fl_eval_keep_training_refs(const char *state_dir, const char *upload, const char *sha256, fl_error *err);

/* Images the job generates: adapters x prompts x seeds x 2 (the base model's too). */
int64_t fl_eval_request_images(const fl_eval_request *r);

#endif
