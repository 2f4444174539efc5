/*
 * requests.h — the job requests of the service, one plain struct per job kind, and the one JSON
 * codec the API and the workers share.
 *
 * A request arrives from a client as a JSON object (application/json) or as multipart form
 * fields (every value a string), is checked against the service's limits into the struct, and is
 * stored in the job record as JSON written by fl_*_request_to_json. A worker reads the stored
 * JSON back with the same decoder (FL_REQ_STORED), so a field is named, typed and bounded in
 * exactly one place. Client input never sets the fields the service fills in itself (the
 * adapters' file hashes, the uploaded archive's path, the text length): those are accepted only
 * from storage.
 *
 * Lengths of strings are limits in characters (Unicode code points, as JSON Schema's maxLength
 * counts them); a character takes at most 4 bytes, which the fixed buffers below allow for.
 *
 * Errors are FL_EINVAL naming the field ("field 'steps': expected an integer in [1, 5000]");
 * more adapters than a request may name is FL_EINVAL too (it is a malformed request, not a body
 * over a size limit).
 */
#ifndef FL_SERVE_REQUESTS_H
#define FL_SERVE_REQUESTS_H
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "core/error.h"
#include "serve/registry.h"

#define FL_REQ_MAX_ADAPTERS 8
#define FL_REQ_MAX_PROMPT_CHARS 4000
#define FL_REQ_MAX_CAPTION_CHARS 1000
#define FL_REQ_MAX_TARGETS_CHARS 500
#define FL_REQ_MAX_URL_CHARS 2048
#define FL_REQ_MAX_TRIGGER_CHARS 64
#define FL_REQ_MAX_SEED ((int64_t)1 << 53) /* seeds survive a round trip through a JSON double */
#define FL_REQ_MAX_SCALE 8.0

/* Where the JSON came from. */
typedef enum fl_req_source {
    FL_REQ_CLIENT_JSON, /* a client's JSON body: types as JSON, internal fields refused */
    FL_REQ_CLIENT_FORM, /* a client's multipart fields: every value a string, parsed per field */
    FL_REQ_STORED,      /* a job record written by fl_*_request_to_json */
} fl_req_source;

/* What the service accepts; the API fills it from its configuration. */
typedef struct fl_request_limits {
    int patch;                /* image sizes are multiples of this */
    int default_size;         /* width, height and training resolution when not given */
    int max_resolution;       /* width, height, training resolution */
    int max_generation_steps;
    int max_num_images;
    int max_train_steps;
    int max_rank;
    int max_batch_size;
    int default_steps;        /* generation steps when not given (0: 20) */
    double default_guidance;  /* guidance when not given (< 0: 1) */
} fl_request_limits;

/* Built-in bounds (what a stored request is checked against: the widest any service allows). */
fl_request_limits fl_request_limits_default(void);

typedef struct fl_request_adapter {
    char id[FL_NAME_MAX]; /* as the client named it: an id or a name (the API stores the id) */
    char sha256[65];     /* of the adapter file, filled by the API ("" from a client) */
    double scale;        /* default 1 */
} fl_request_adapter;

typedef struct fl_generate_request {
    char *prompt;        /* malloc'ed */
    int width, height;   /* default 64 */
    int steps;           /* default 20 */
    int num_images;      /* default 1 */
    double guidance;     /* default 1 */
    int64_t seed;        /* default: random (the decoder draws one) */
    bool sync;           /* wait for the result in the response (client only, not stored) */
    int n_adapters;
    fl_request_adapter adapters[FL_REQ_MAX_ADAPTERS];
    int max_text_tokens; /* filled by the API from its configuration */
    int batch_images;    /* filled by the API: the most images of this size one batch may hold
                          * within the memory limit (0: not limited) */
} fl_generate_request;

/* Training previews: at most this many sampling rounds (fl_train_preview_rounds, trainer/run.h)
 * of at most this many images. */
enum { FL_REQ_MAX_PREVIEWS = 20, FL_REQ_MAX_PREVIEW_COUNT = 4 };

typedef struct fl_train_request {
    char *images;        /* where the worker reads the set: the uploaded archive's path (set by the
                          * API) or the client's "images_url" */
    char *source;        /* what the job shows: "upload", or the URL */
    char trigger_word[4 * FL_REQ_MAX_TRIGGER_CHARS + 1];
    char name[FL_NAME_MAX];  /* "" when not given */
    char *caption;       /* NULL when not given */
    char *targets;       /* NULL when not given: the trainer's default */
    int steps;           /* default 300 */
    int rank;            /* default 16 */
    double alpha;        /* default: rank */
    double learning_rate; /* default 4e-4 */
    int resolution;      /* default 64 */
    int batch_size;      /* default 1 */
    int64_t seed;        /* default 0 */
    bool is_style, buckets;
    int preview_every;   /* default 0: no previews; else sample preview_count images every this many
                          * steps and at the end (admission allows FL_REQ_MAX_PREVIEWS rounds) */
    int preview_count;   /* default 2, in [1, 4] */
    int64_t max_decoded_pixels; /* filled by the API: the decoding budget of the set, in pixels,
                                 * within the memory limit (0: the loader's default) */
} fl_train_request;

/* An adapter import: a file part (handled by the API) or a URL (run as an import job). */
typedef struct fl_adapter_import_request {
    char *url;                    /* NULL when a file is uploaded */
    char name[FL_NAME_MAX];       /* "" when not given */
    char trigger_word[FL_NAME_MAX]; /* "" when not given */
    int64_t max_bytes;            /* filled by the API: the download's size limit */
    int64_t max_metadata_bytes;   /* filled by the API: the metadata's size limit */
} fl_adapter_import_request;

/* Decode obj into out (zeroed first; release with the matching _clear even on failure). */
int fl_generate_request_decode(json_t *obj, fl_req_source source, const fl_request_limits *limits,
                               fl_generate_request *out, fl_error *err);
int fl_train_request_decode(json_t *obj, fl_req_source source, const fl_request_limits *limits,
                            fl_train_request *out, fl_error *err);
int fl_adapter_import_request_decode(json_t *obj, fl_req_source source, fl_adapter_import_request *out,
                                     fl_error *err);
/* The stored form (a new reference). */
json_t *fl_generate_request_to_json(const fl_generate_request *r);
json_t *fl_train_request_to_json(const fl_train_request *r);
json_t *fl_adapter_import_request_to_json(const fl_adapter_import_request *r);
/* The same decoders over stored text. */
int fl_generate_request_parse(const char *text, fl_generate_request *out, fl_error *err);
int fl_train_request_parse(const char *text, fl_train_request *out, fl_error *err);
int fl_adapter_import_request_parse(const char *text, fl_adapter_import_request *out, fl_error *err);
void fl_generate_request_clear(fl_generate_request *r);
void fl_train_request_clear(fl_train_request *r);
void fl_adapter_import_request_clear(fl_adapter_import_request *r);

/* True when s is one word: non-empty, no whitespace or control characters. */
bool fl_request_one_word(const char *s);

#endif
