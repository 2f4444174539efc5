/*
 * http.h — the HTTP layer of the service on libmicrohttpd: requests parsed into plain structs,
 * handlers that fill a response, and every limit enforced before a handler ever runs.
 *
 * A request passes three gates, each bounded, before its handler runs:
 *
 * 1. The front door (a thread of the layer's own, owning the listening socket). It accepts a
 *    connection and keeps it without a thread until the whole request head has arrived: the head
 *    must come within header_timeout_s and fit max_header_bytes, or the client gets 408, 414 or
 *    431. The head is checked (http_head.h) and anything malformed is answered here: 400 (bad
 *    request line or header, two different Content-Lengths, Content-Length with chunked), 505
 *    (not HTTP/1.0 or 1.1), 501 (a transfer coding other than chunked). A client address holds at
 *    most max_client_connections connections (waiting or served; 429 beyond), at most
 *    max_pending_heads connections wait for their heads (the longest waiting is dropped with 408
 *    to make room), and at most max_connections requests are served at once (503 with
 *    Retry-After beyond), plus ops_reserve more for the ops paths (/healthz, /metrics), so health
 *    checks and metrics keep answering while the service is full or under a slow-header attack.
 *    Only then does libmicrohttpd get the connection (one thread per connection). Every
 *    response closes its connection, so every request comes through the front door.
 * 2. Admission (fl_http_admit_fn, optional), called with the head only (no body byte read yet):
 *    it routes and authenticates, and either answers at once (401, 404, 405, ...) or admits the
 *    request with its own body limits and a context the handler gets as req->ctx. A body larger
 *    than its limit by Content-Length is 413 at once; multipart where it is not admitted is 415.
 * 3. The body: up to the admitted limit, in one buffer. A chunked body that crosses its limit
 *    stops being stored, is read on and discarded (up to 16 MiB more, then the connection is
 *    cut) and is answered 413 when it ends, because libmicrohttpd 0.9 cannot answer while a
 *    body is still arriving. multipart/form-data is split in place (multipart.h): at most
 *    max_parts parts, each part's header block at most max_part_header_bytes, no copy per part;
 *    so a request's memory is its body limit plus a few hundred bytes per part. Malformed
 *    multipart is 400.
 *
 * Errors are JSON everywhere: {"error": {"code": "...", "message": "..."}}, and an error message
 * never shows a path of the server's file system (absolute paths are replaced by "<path>").
 * HEAD is answered like GET without the body (a streamed body is not started). What can still
 * come as libmicrohttpd's own HTML: a malformed chunked body encoding (400) and a chunk size
 * over 2^64 (413), found while the body arrives.
 */
#ifndef FL_SERVE_HTTP_H
#define FL_SERVE_HTTP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "core/error.h"

/* One field of a multipart/form-data body: a file (filename set) or a plain value. The strings
 * and the data live inside the request's body buffer, valid while the handler runs. */
typedef struct fl_http_part {
    char *name;
    char *filename;     /* NULL for a plain field */
    char *content_type; /* may be NULL */
    unsigned char *data; /* followed by a NUL byte (not counted in size), like the raw body */
    size_t size;
} fl_http_part;

typedef struct fl_http_request {
    const char *method;        /* "GET", "HEAD", "POST", ... */
    const char *path;          /* without the query string, e.g. "/v1/jobs/job_123" */
    const char *authorization; /* the Authorization header, or NULL */
    const char *content_type;  /* or NULL */
    int64_t content_length;    /* as declared; -1 when none (chunked, or no body) */
    const unsigned char *body; /* the raw body (not for multipart), NUL-terminated; NULL if none */
    size_t body_size;
    const fl_http_part *parts; /* multipart/form-data fields, in order */
    size_t n_parts;
    const char *remote_addr;   /* "127.0.0.1" */
    void *ctx;                 /* what admission gave (fl_http_admission.ctx); NULL without one */
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
/* Replace absolute server paths by "<path>" in the "message" strings of value, as
 * fl_http_reply_json and fl_http_reply_error do: for JSON a handler sends itself (events). */
void fl_http_redact_json(json_t *value);

/* What admission decides for a request whose head is in. The layer presets the limits from its
 * config; admission may lower them (a route that takes no body: max_body_bytes 0). */
typedef struct fl_http_admission {
    size_t max_body_bytes;   /* a body that is not multipart/form-data */
    size_t max_upload_bytes; /* a multipart/form-data body */
    bool allow_multipart;    /* false: multipart/form-data is 415 */
    size_t max_parts;
    void *ctx;               /* handed to the handler as req->ctx */
    void (*ctx_free)(void *ctx); /* called once the request is over (answered or abandoned) */
} fl_http_admission;

/* Admission: runs on the connection's thread once the head is in (req has no body and no parts;
 * fl_http_query and fl_http_header work). Return true to admit (setting adm), or false with
 * res filled: that answer goes out at once and no body byte is read. May block briefly (Redis). */
typedef bool (*fl_http_admit_fn)(void *app, const fl_http_request *req, fl_http_admission *adm,
                                 fl_http_response *res);

/* The handler: runs on the connection's thread; must set res (status and body or stream). A
 * response with neither a status, a body nor a stream becomes 500; a body without a status is
 * 200. Streamed responses get `Cache-Control: no-cache` and `X-Accel-Buffering: no` unless the
 * handler set those headers. Request strings are valid only during the call. */
typedef void (*fl_http_handler)(void *app, const fl_http_request *req, fl_http_response *res);

typedef struct fl_http_config {
    const char *bind_address;  /* "127.0.0.1" (default), "0.0.0.0" */
    int port;                  /* default 8080; 0: any free port (see fl_http_port) */
    int max_connections;       /* requests served at once (head in, answer not yet sent); default 256 */
    int ops_reserve;           /* more, for the ops paths only (default 4) */
    const char *const *ops_paths; /* NULL-terminated; default {"/healthz", "/metrics"} */
    int max_client_connections;   /* per client address, waiting or served (default 32) */
    int max_pending_heads;     /* connections waiting for their request head (default 1024) */
    int header_timeout_s;      /* the whole request head must arrive within this (default 10) */
    size_t max_header_bytes;   /* request line and header fields (default 16 KiB) */
    size_t max_body_bytes;     /* default 1 MiB */
    size_t max_upload_bytes;   /* default 256 MiB */
    size_t max_parts;          /* multipart/form-data parts (default 64) */
    size_t max_part_header_bytes; /* the header block of one part (default 8 KiB) */
    int connection_timeout_s;  /* a served connection idle this long is closed (default 60) */
    fl_http_admit_fn admit;    /* NULL: every request is admitted with the limits above */
} fl_http_config;

/* The defaults above; fl_http_start also treats a zero (or NULL) field as its default. */
fl_http_config fl_http_config_default(void);

typedef struct fl_http_server fl_http_server;
int fl_http_start(const fl_http_config *config, fl_http_handler handler, void *app, fl_http_server **out,
                  fl_error *err);
/* The port actually listened on (the chosen one when the config said 0). */
int fl_http_port(const fl_http_server *s);

/* Counters of the front door since the start (for tests and metrics). */
typedef struct fl_http_stats {
    uint64_t accepted;          /* connections accepted */
    uint64_t handed;            /* heads passed on to a handler thread */
    uint64_t refused_busy;      /* 503: max_connections (and the ops reserve) full */
    uint64_t refused_client;    /* 429: max_client_connections */
    uint64_t header_timeouts;   /* 408: head not in within header_timeout_s, or dropped to make room */
    uint64_t bad_heads;         /* 400, 414, 431, 501, 505 from the front door */
    int served_now;             /* requests being served */
    int pending_now;            /* connections waiting for their head */
} fl_http_stats;
void fl_http_get_stats(fl_http_server *s, fl_http_stats *out);
/* True once fl_http_stop has begun: long-running handlers and stream functions should finish. */
bool fl_http_stopping(const fl_http_server *s);
/* Stop listening, end every stream, wait for every connection thread (so for every running
 * handler to return), and free the server. */
void fl_http_stop(fl_http_server *s);

#endif
