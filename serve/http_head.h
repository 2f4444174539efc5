/*
 * http_head.h — the head of an HTTP/1.x request (request line and header fields), checked before
 * the service gives the connection a thread. The HTTP layer's front door (http.c) peeks at the
 * bytes a new connection has sent and calls fl_http_head_parse on them until the head is complete,
 * wrong, or too large; only a complete and valid head is passed on to libmicrohttpd.
 *
 * The check is deliberately stricter than libmicrohttpd, so that everything it lets through
 * libmicrohttpd parses without an error of its own (whose answers are HTML): the request line is
 * exactly METHOD SP /path SP HTTP/1.x, lines end in CRLF (or LF), no bare CR, no control bytes,
 * no folded lines, field names are tokens, at most FL_HTTP_HEAD_MAX_FIELDS fields, one Host
 * (required by HTTP/1.1), Content-Length a plain decimal (several only when all equal), and
 * Transfer-Encoding only "chunked" and never together with Content-Length (request smuggling).
 * A pure function over bytes: fuzzed by tests/fuzz/fuzz_http_head.c.
 */
#ifndef FL_SERVE_HTTP_HEAD_H
#define FL_SERVE_HTTP_HEAD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FL_HTTP_HEAD_MAX_FIELDS 100
/* Largest Content-Length accepted as a number at all (a larger one is a 413 here). */
#define FL_HTTP_HEAD_MAX_LENGTH ((int64_t)1 << 50)

typedef struct fl_http_head {
    size_t size;             /* bytes of the head, its blank line included */
    const char *method;      /* into the parsed bytes; not NUL-terminated */
    size_t method_len;
    const char *target;      /* the request target: path and query */
    size_t target_len;
    size_t path_len;         /* of the target, up to the '?' */
    int minor_version;       /* HTTP/1.0 or HTTP/1.1 */
    int64_t content_length;  /* -1 when the head declares none */
    bool chunked;            /* Transfer-Encoding: chunked */
} fl_http_head;

typedef enum fl_http_head_result {
    FL_HTTP_HEAD_COMPLETE = 0,   /* *out describes a valid head of out->size bytes */
    FL_HTTP_HEAD_INCOMPLETE = 1, /* no blank line yet and fewer than max_bytes: read on */
    FL_HTTP_HEAD_INVALID = 2,    /* *status and message say why (400, 413, 414, 431, 501, 505) */
} fl_http_head_result;

/* Parse the first n bytes of a connection. max_bytes bounds the head: a head that has not ended
 * within it is 414 (the request line is still open) or 431. message gets a one-line reason. */
fl_http_head_result fl_http_head_parse(const char *buf, size_t n, size_t max_bytes, fl_http_head *out,
                                       int *status, char *message, size_t message_cap);

#endif
