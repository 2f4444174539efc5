/*
 * http.h — the HTTP layer of the service on libmicrohttpd: requests parsed into plain structs,
 * handlers that fill a response, limits enforced before a handler ever runs.
 *
 * Each connection runs on its own thread (MHD's thread-per-connection mode, bounded by
 * max_connections), so a handler may block: on Redis, on a synchronous generation, or inside a
 * streaming body (server-sent events). Bodies are buffered in memory up to a limit: JSON and
 * other bodies up to max_body_bytes, multipart/form-data up to max_upload_bytes (parsed into
 * parts by MHD's post processor). A body over its limit never reaches the handler: the client
 * gets 413 with a JSON error, at once when Content-Length declares too much; a body without one
 * (chunked) stops being stored as soon as it crosses the limit, the rest is read and discarded
 * (up to 16 MiB more, then the connection is cut) and the 413 follows when it ends, because
 * libmicrohttpd 0.9 cannot answer while a body is still arriving. Malformed multipart is 400.
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
    unsigned char *data; /* followed by a NUL byte (not counted in size), like the raw body */
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
 * later (after a short wait, about 20 ms, during which the layer also checks whether the client
 * hung up), -1 to end the stream. May block, but briefly: the layer ends the stream itself
 * when the client leaves or the server stops, yet only between calls, so a function that waits
 * for events should wait in slices (say up to a second) and return 0 when nothing came, and
 * return -1 once fl_http_stopping() is true. A stream that stays silent longer than
 * connection_timeout_s is closed as idle: send a keep-alive (an SSE comment) before that. */
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

/* The handler: runs on the connection's thread; must set res (status and body or stream). A
 * response with neither a status, a body nor a stream becomes 500; a body without a status is
 * 200. Streamed responses get `Cache-Control: no-cache` and `X-Accel-Buffering: no` unless the
 * handler set those headers. Request strings are valid only during the call. */
typedef void (*fl_http_handler)(void *app, const fl_http_request *req, fl_http_response *res);

typedef struct fl_http_config {
    const char *bind_address;  /* "127.0.0.1" (default), "0.0.0.0" */
    int port;                  /* default 8080; 0: any free port (see fl_http_port) */
    int max_connections;       /* default 256 */
    size_t max_body_bytes;     /* default 1 MiB */
    size_t max_upload_bytes;   /* default 256 MiB */
    int connection_timeout_s;  /* idle connections close after this (default 60) */
} fl_http_config;

/* The defaults above; fl_http_start also treats a zero (or NULL) field as its default. */
fl_http_config fl_http_config_default(void);

typedef struct fl_http_server fl_http_server;
int fl_http_start(const fl_http_config *config, fl_http_handler handler, void *app, fl_http_server **out,
                  fl_error *err);
/* The port actually listened on (the chosen one when the config said 0). */
int fl_http_port(const fl_http_server *s);
/* True once fl_http_stop has begun: long-running handlers and stream functions should finish. */
bool fl_http_stopping(const fl_http_server *s);
/* Stop listening, end every stream, wait for every connection thread (so for every running
 * handler to return), and free the server. */
void fl_http_stop(fl_http_server *s);

#endif
