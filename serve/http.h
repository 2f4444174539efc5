/*
 * http.h — the HTTP layer of the service on libmicrohttpd: requests parsed into plain structs,
 * handlers that fill a response, limits enforced before a handler ever runs.
 *
 * Each connection runs on its own thread (MHD's thread-per-connection mode, bounded by
 * max_connections), so a handler may block: on Redis, on a synchronous generation, or inside a
 * streaming body (server-sent events). Bodies are buffered in memory up to a limit: JSON and
 * other bodies up to max_body_bytes, multipart/form-data up to max_upload_bytes (parsed into
 * parts by MHD's post processor). A body over its limit never reaches the handler: the client
 * gets 413 with a JSON error as soon as the limit is crossed (Content-Length is checked first).
 * Errors are JSON: {"error": {"code": "...", "message": "..."}}.
 */
#ifndef FL_SERVE_HTTP_H
#define FL_SERVE_HTTP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "core/error.h"

/* One field of a multipart/form-data body: a file (filename set) or a plain value. */
typedef struct fl_http_part {
    char *name;
    char *filename;     /* NULL for a plain field */
    char *content_type; /* may be NULL */
    unsigned char *data;
    size_t size;
} fl_http_part;

typedef struct fl_http_request {
    const char *method;        /* "GET", "POST", ... */
    const char *path;          /* without the query string, e.g. "/v1/jobs/job_123" */
    const char *authorization; /* the Authorization header, or NULL */
    const char *content_type;  /* or NULL */
    const unsigned char *body; /* the raw body (not for multipart), NUL-terminated; NULL if none */
    size_t body_size;
    const fl_http_part *parts; /* multipart/form-data fields, in order */
    size_t n_parts;
    const char *remote_addr;   /* "127.0.0.1" */
    void *internal;            /* the layer's own state (query arguments, headers) */
} fl_http_request;

/* A query-string argument ("?limit=10"), or NULL. */
const char *fl_http_query(const fl_http_request *req, const char *key);
/* A request header, or NULL. */
const char *fl_http_header(const fl_http_request *req, const char *name);
/* The part named name, or NULL. */
const fl_http_part *fl_http_part_get(const fl_http_request *req, const char *name);

/* Streaming body: fill buf with up to max bytes and return how many; return 0 to be called again
 * later (after a short wait), -1 to end the stream. May block. */
typedef ssize_t (*fl_http_stream_fn)(void *arg, char *buf, size_t max);

#define FL_HTTP_MAX_HEADERS 8
typedef struct fl_http_response {
    int status;               /* default 200 */
    const char *content_type; /* a string constant; default "application/json" */
    unsigned char *body;      /* malloc'ed; the layer frees it */
    size_t size;
    int n_headers;
    char header_names[FL_HTTP_MAX_HEADERS][64];
    char header_values[FL_HTTP_MAX_HEADERS][256];
    fl_http_stream_fn stream; /* when set, the body is streamed from it (body ignored) */
    void *stream_arg;
    void (*stream_free)(void *arg); /* called once when the stream ends or the client leaves */
} fl_http_response;

/* Fill a response: a JSON value (reference stolen), an error, raw bytes (copied), a header. */
void fl_http_reply_json(fl_http_response *res, int status, json_t *value);
void fl_http_reply_error(fl_http_response *res, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void fl_http_reply_bytes(fl_http_response *res, int status, const char *content_type, const void *data, size_t size);
void fl_http_add_header(fl_http_response *res, const char *name, const char *value);

/* The handler: runs on the connection's thread; must set res (status and body or stream). */
typedef void (*fl_http_handler)(void *app, const fl_http_request *req, fl_http_response *res);

typedef struct fl_http_config {
    const char *bind_address;  /* "127.0.0.1" (default), "0.0.0.0" */
    int port;                  /* 0: any free port (see fl_http_port) */
    int max_connections;       /* default 256 */
    size_t max_body_bytes;     /* default 1 MiB */
    size_t max_upload_bytes;   /* default 256 MiB */
    int connection_timeout_s;  /* idle connections close after this (default 60) */
} fl_http_config;

fl_http_config fl_http_config_default(void);

typedef struct fl_http_server fl_http_server;
int fl_http_start(const fl_http_config *config, fl_http_handler handler, void *app, fl_http_server **out,
                  fl_error *err);
int fl_http_port(const fl_http_server *s);
void fl_http_stop(fl_http_server *s);

#endif
