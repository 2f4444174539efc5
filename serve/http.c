/*
 * http.c — the HTTP layer on libmicrohttpd (see http.h).
 *
 * MHD runs one thread per connection (poll-based, so descriptors above FD_SETSIZE are fine) and
 * calls the access handler on that thread: once when the headers are in, then once per piece of
 * body, then once more when the body is complete. The first call picks the limit (multipart or
 * not) and answers 413 at once when Content-Length already exceeds it; the body calls count
 * bytes as they arrive and store them (raw, or through MHD's post processor into parts); the
 * last call runs the application's handler and queues its response. MHD 0.9.x refuses a
 * response while the body is still arriving, so a body that crosses its limit mid-way (chunked
 * transfer) is read on and discarded, up to FL_HTTP_DRAIN_BYTES past the limit, and answered
 * with 413 when it ends; a client still sending after that is disconnected without a reply.
 * Everything a request owns lives in one conn_state, freed by MHD's request-completed callback,
 * which also runs when the client goes away mid-upload or mid-stream.
 */
#include "serve/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"

/* After a body crosses its limit, this much more is read and thrown away so that the client can
 * still be told 413; a client still sending after that is cut off. */
#define FL_HTTP_DRAIN_BYTES ((uint64_t)16 << 20)
/* The post processor's buffer: it must hold the headers of one multipart part. */
#define FL_HTTP_PP_BUFFER (64 * 1024)
/* A stream function that has nothing yet is called again after this long. */
#define FL_HTTP_STREAM_IDLE_MS 20
/* Bytes MHD asks a stream function for at most, per call. */
#define FL_HTTP_STREAM_BLOCK (16 * 1024)

struct fl_http_server {
    struct MHD_Daemon *daemon;
    fl_http_handler handler;
    void *app;
    size_t max_body_bytes;
    size_t max_upload_bytes;
    int port;
    atomic_bool stopping;
};

typedef enum body_failure {
    BODY_OK = 0,
    BODY_TOO_LARGE,     /* 413 */
    BODY_BAD_MULTIPART, /* 400 */
    BODY_NO_MEMORY,     /* 500 */
} body_failure;

/* Everything one request owns; MHD keeps the pointer in its per-request slot. */
typedef struct conn_state {
    fl_http_server *server;
    struct MHD_Connection *conn;
    bool multipart;
    bool responded; /* a response is queued (an early 413/400) */
    size_t limit;
    uint64_t received;
    body_failure failure;
    /* raw body */
    unsigned char *body;
    size_t size, cap;
    /* multipart/form-data */
    struct MHD_PostProcessor *pp;
    fl_http_part *parts;
    size_t n_parts, cap_parts;
    size_t part_cap; /* capacity of the last part's data (only the last part grows) */
    char remote[INET6_ADDRSTRLEN];
} conn_state;

/* A streamed body: what MHD's content reader and free callbacks get. */
typedef struct stream_ctx {
    fl_http_server *server;
    struct MHD_Connection *conn;
    fl_http_stream_fn fn;
    void *arg;
    void (*free_fn)(void *arg);
} stream_ctx;

/* ---- responses filled by handlers ------------------------------------------------------------ */

/* Serialize a JSON value into a malloc'ed buffer (our allocator, so MHD may free() it). */
static unsigned char *dump_json(const json_t *value, size_t *size) {
    size_t n = json_dumpb(value, NULL, 0, JSON_COMPACT);
    unsigned char *buf = fl_xmalloc(n + 1);
    size_t m = json_dumpb(value, (char *)buf, n, JSON_COMPACT);
    FL_CHECK(m == n);
    buf[n] = '\0';
    *size = n;
    return buf;
}

static void set_body(fl_http_response *res, int status, const char *content_type, unsigned char *body,
                     size_t size) {
    free(res->body);
    res->status = status;
    res->content_type = content_type;
    res->body = body;
    res->size = size;
}

void fl_http_reply_json(fl_http_response *res, int status, json_t *value) {
    if (!value) {
        /* a failed json_pack, typically over client text that is not UTF-8: not worth a crash */
        fl_log_error("http: a handler replied with a NULL JSON value");
        fl_http_reply_error(res, 500, "internal_error", "the response could not be built");
        return;
    }
    size_t size = 0;
    unsigned char *body = dump_json(value, &size);
    json_decref(value);
    set_body(res, status, "application/json", body, size);
}

/* A JSON string of text that may not be valid UTF-8 (client input, a truncated message). */
static json_t *json_string_lossy(const char *text) {
    json_t *s = json_string(text);
    if (s) return s;
    char *copy = fl_xstrdup(text);
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20) *p = '?';
    s = json_string(copy);
    free(copy);
    FL_CHECK(s != NULL);
    return s;
}

void fl_http_reply_error(fl_http_response *res, int status, const char *code, const char *fmt, ...) {
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    json_t *inner = json_object();
    json_object_set_new(inner, "code", json_string_lossy(code));
    json_object_set_new(inner, "message", json_string_lossy(message));
    json_t *root = json_object();
    json_object_set_new(root, "error", inner);
    fl_http_reply_json(res, status, root);
}

void fl_http_reply_bytes(fl_http_response *res, int status, const char *content_type, const void *data,
                         size_t size) {
    unsigned char *body = fl_xmalloc(size + 1);
    if (size) memcpy(body, data, size);
    body[size] = '\0';
    set_body(res, status, content_type, body, size);
}

void fl_http_add_header(fl_http_response *res, const char *name, const char *value) {
    FL_CHECKF(res->n_headers < FL_HTTP_MAX_HEADERS, "more than %d response headers", FL_HTTP_MAX_HEADERS);
    FL_CHECKF(strlen(name) < sizeof res->header_names[0], "response header name too long: %s", name);
    size_t len = strlen(value);
    if (len >= sizeof res->header_values[0] || strpbrk(value, "\r\n")) {
        /* values may carry client-chosen text: drop rather than truncate or inject */
        fl_log_warn("http: dropping response header %s (value too long or has a line break)", name);
        return;
    }
    memcpy(res->header_names[res->n_headers], name, strlen(name) + 1);
    memcpy(res->header_values[res->n_headers], value, len + 1);
    res->n_headers++;
}

/* ---- request accessors ----------------------------------------------------------------------- */

const char *fl_http_query(const fl_http_request *req, const char *key) {
    const conn_state *st = req->internal;
    return MHD_lookup_connection_value(st->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *fl_http_header(const fl_http_request *req, const char *name) {
    const conn_state *st = req->internal;
    return MHD_lookup_connection_value(st->conn, MHD_HEADER_KIND, name);
}

const fl_http_part *fl_http_part_get(const fl_http_request *req, const char *name) {
    for (size_t i = 0; i < req->n_parts; i++)
        if (req->parts[i].name && !strcmp(req->parts[i].name, name)) return &req->parts[i];
    return NULL;
}

bool fl_http_stopping(const fl_http_server *s) { return atomic_load(&s->stopping); }

/* ---- queueing responses ---------------------------------------------------------------------- */

/* Free the body buffers of a request early (when it failed: nothing will read them). */
static void drop_body(conn_state *st) {
    free(st->body);
    st->body = NULL;
    st->size = st->cap = 0;
    for (size_t i = 0; i < st->n_parts; i++) {
        free(st->parts[i].name);
        free(st->parts[i].filename);
        free(st->parts[i].content_type);
        free(st->parts[i].data);
    }
    free(st->parts);
    st->parts = NULL;
    st->n_parts = st->cap_parts = 0;
}

/* Wait up to ms for the client to hang up; true when it has. A client that only half-closes
 * (shuts down its sending side and keeps reading) counts as gone: stream clients do not. */
static bool client_gone(struct MHD_Connection *conn, int ms) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) {
        fl_sleep_ms(ms);
        return false;
    }
    struct pollfd p = {.fd = info->connect_fd, .events = POLLRDHUP};
    int n = poll(&p, 1, ms);
    return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_ctx *sc = cls;
    if (atomic_load(&sc->server->stopping)) return MHD_CONTENT_READER_END_WITH_ERROR;
    ssize_t n = sc->fn(sc->arg, buf, max);
    if (n > 0) {
        FL_CHECKF((size_t)n <= max, "stream function returned %zd bytes for a %zu-byte buffer", n, max);
        return n;
    }
    if (n < 0) return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing yet. MHD calls a reader that returned 0 again at once (it polls the socket with a
     * zero timeout), so wait here; the wait doubles as a check for a client that hung up. */
    if (client_gone(sc->conn, FL_HTTP_STREAM_IDLE_MS)) return MHD_CONTENT_READER_END_WITH_ERROR;
    return 0;
}

static void stream_release(void *cls) {
    stream_ctx *sc = cls;
    if (sc->free_fn) sc->free_fn(sc->arg);
    free(sc);
}

static bool has_header(const fl_http_response *res, const char *name) {
    for (int i = 0; i < res->n_headers; i++)
        if (!strcasecmp(res->header_names[i], name)) return true;
    return false;
}

/* Turn a filled fl_http_response into an MHD response and queue it. Takes ownership of the body
 * and of the stream argument (released even when queueing fails). */
static enum MHD_Result queue(conn_state *st, fl_http_response *res) {
    struct MHD_Response *r;
    if (res->stream) {
        free(res->body);
        res->body = NULL;
        stream_ctx *sc = fl_xcalloc(1, sizeof *sc);
        sc->server = st->server;
        sc->conn = st->conn;
        sc->fn = res->stream;
        sc->arg = res->stream_arg;
        sc->free_fn = res->stream_free;
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, FL_HTTP_STREAM_BLOCK, stream_read, sc,
                                              stream_release);
        if (!r) {
            stream_release(sc);
            return MHD_NO;
        }
        /* server-sent events must reach the client as they are produced */
        if (!has_header(res, "Cache-Control")) MHD_add_response_header(r, "Cache-Control", "no-cache");
        if (!has_header(res, "X-Accel-Buffering")) MHD_add_response_header(r, "X-Accel-Buffering", "no");
    } else if (res->body && res->size > 0) {
        r = MHD_create_response_from_buffer(res->size, res->body, MHD_RESPMEM_MUST_FREE);
        if (!r) {
            free(res->body);
            res->body = NULL;
            return MHD_NO;
        }
        res->body = NULL; /* MHD frees it */
    } else {
        free(res->body);
        res->body = NULL;
        res->size = 0;
        r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (!r) return MHD_NO;
    }
    if (res->stream || res->size > 0 || res->content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                res->content_type ? res->content_type : "application/json");
    for (int i = 0; i < res->n_headers; i++)
        if (MHD_add_response_header(r, res->header_names[i], res->header_values[i]) != MHD_YES)
            fl_log_warn("http: response header %s rejected", res->header_names[i]);
    enum MHD_Result ok = MHD_queue_response(st->conn, (unsigned int)res->status, r);
    MHD_destroy_response(r); /* MHD holds its own reference while it sends */
    st->responded = true;
    return ok;
}

static enum MHD_Result queue_error(conn_state *st, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result queue_error(conn_state *st, int status, const char *code, const char *fmt, ...) {
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    fl_http_response res = {0};
    fl_http_reply_error(&res, status, code, "%s", message);
    return queue(st, &res);
}

/* ---- request bodies -------------------------------------------------------------------------- */

static bool same_str(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return !strcmp(a, b);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* Grow *buf (capacity *cap, *size used) to hold extra more bytes plus a NUL. */
static bool reserve(unsigned char **buf, size_t *cap, size_t size, size_t extra) {
    if (size + extra + 1 <= *cap) return true;
    size_t want = *cap ? *cap : 4096;
    while (want < size + extra + 1) want *= 2;
    unsigned char *p = realloc(*buf, want);
    if (!p) return false;
    *buf = p;
    *cap = want;
    return true;
}

/* MHD's post processor calls this with each piece of each part. A part's first call has off 0
 * (possibly with no data, and then again with off 0 once data arrives), later calls continue
 * at off. Returning MHD_NO stops processing (the request is answered with an error). */
static enum MHD_Result part_iterator(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                     const char *content_type, const char *transfer_encoding, const char *data,
                                     uint64_t off, size_t size) {
    conn_state *st = cls;
    fl_http_part *cur = st->n_parts ? &st->parts[st->n_parts - 1] : NULL;
    bool continues = cur && off == cur->size &&
                     (off > 0 || (same_str(cur->name, key) && same_str(cur->filename, filename) &&
                                  same_str(cur->content_type, content_type)));
    if (!continues) {
        if (off != 0) return MHD_NO; /* not the start of a part: the processor lost its place */
        if (st->n_parts == st->cap_parts) {
            size_t want = st->cap_parts ? 2 * st->cap_parts : 8;
            fl_http_part *p = realloc(st->parts, want * sizeof *p);
            if (!p) goto oom;
            st->parts = p;
            st->cap_parts = want;
        }
        cur = &st->parts[st->n_parts++];
        memset(cur, 0, sizeof *cur);
        cur->name = strdup(key ? key : "");
        cur->filename = dup_or_null(filename);
        cur->content_type = dup_or_null(content_type);
        if (!cur->name || (filename && !cur->filename) || (content_type && !cur->content_type)) goto oom;
        st->part_cap = 0;
        if (!reserve(&cur->data, &st->part_cap, 0, 0)) goto oom;
        cur->data[0] = '\0';
    }
    if (size == 0) return MHD_YES;
    if (!reserve(&cur->data, &st->part_cap, cur->size, size)) goto oom;
    memcpy(cur->data + cur->size, data, size);
    cur->size += size;
    cur->data[cur->size] = '\0';
    return MHD_YES;
oom:
    st->failure = BODY_NO_MEMORY;
    return MHD_NO;
}

static bool header_has_token(const char *value, const char *token) {
    return value && strcasestr(value, token) != NULL;
}

static bool is_multipart(const char *content_type) {
    if (!content_type) return false;
    while (*content_type == ' ' || *content_type == '\t') content_type++;
    return !strncasecmp(content_type, "multipart/form-data", strlen("multipart/form-data"));
}

/* The declared body length, when Content-Length frames the body. */
static bool declared_length(struct MHD_Connection *conn, uint64_t *out) {
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (header_has_token(te, "chunked")) return false;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl) return false;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(cl, &end, 10);
    if (errno || end == cl) return false; /* MHD itself rejects a malformed Content-Length */
    *out = v;
    return true;
}

static void remote_address(struct MHD_Connection *conn, char *out, size_t size) {
    snprintf(out, size, "unknown");
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!info || !info->client_addr) return;
    const struct sockaddr *sa = info->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)size);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out, (socklen_t)size);
}

/* The first call: headers are in, no body yet. */
static enum MHD_Result begin_request(fl_http_server *s, struct MHD_Connection *conn, void **con_cls) {
    conn_state *st = fl_xcalloc(1, sizeof *st);
    *con_cls = st;
    st->server = s;
    st->conn = conn;
    remote_address(conn, st->remote, sizeof st->remote);
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    st->multipart = is_multipart(ct);
    st->limit = st->multipart ? s->max_upload_bytes : s->max_body_bytes;
    uint64_t declared = 0;
    bool known = declared_length(conn, &declared);
    if (known && declared > st->limit)
        return queue_error(st, 413 /* content too large */, fl_error_code_name(FL_ELIMIT),
                           "request body of %" PRIu64 " bytes exceeds the limit of %zu bytes", declared, st->limit);
    if (st->multipart) {
        st->pp = MHD_create_post_processor(conn, FL_HTTP_PP_BUFFER, part_iterator, st);
        if (!st->pp)
            return queue_error(st, MHD_HTTP_BAD_REQUEST, fl_error_code_name(FL_EINVAL),
                               "malformed multipart/form-data request (no boundary)");
    } else if (known && declared > 0) {
        /* sized by the client but within our limit; on failure the body grows as it arrives */
        reserve(&st->body, &st->cap, 0, (size_t)declared);
    }
    return MHD_YES;
}

/* A piece of body. */
static enum MHD_Result take_body(conn_state *st, const char *data, size_t n) {
    st->received += n;
    if (st->failure != BODY_OK) {
        /* discarding: let the client finish so it can read the error, within bounds */
        return st->received > (uint64_t)st->limit + FL_HTTP_DRAIN_BYTES ? MHD_NO : MHD_YES;
    }
    if (st->received > st->limit) {
        st->failure = BODY_TOO_LARGE;
        drop_body(st);
        return MHD_YES;
    }
    if (st->multipart) {
        if (MHD_post_process(st->pp, data, n) != MHD_YES) {
            if (st->failure == BODY_OK) st->failure = BODY_BAD_MULTIPART;
            drop_body(st);
        }
        return MHD_YES;
    }
    if (!reserve(&st->body, &st->cap, st->size, n)) {
        st->failure = BODY_NO_MEMORY;
        drop_body(st);
        return MHD_YES;
    }
    memcpy(st->body + st->size, data, n);
    st->size += n;
    st->body[st->size] = '\0';
    return MHD_YES;
}

/* The last call: the body is complete; run the handler. */
static enum MHD_Result finish_request(conn_state *st, const char *url, const char *method) {
    fl_http_server *s = st->server;
    if (st->pp) {
        enum MHD_Result done = MHD_destroy_post_processor(st->pp);
        st->pp = NULL;
        if (done != MHD_YES && st->failure == BODY_OK) {
            st->failure = BODY_BAD_MULTIPART;
            drop_body(st);
        }
    }
    switch (st->failure) {
    case BODY_OK: break;
    case BODY_TOO_LARGE:
        return queue_error(st, 413 /* content too large */, fl_error_code_name(FL_ELIMIT),
                           "request body exceeds the limit of %zu bytes", st->limit);
    case BODY_BAD_MULTIPART:
        return queue_error(st, MHD_HTTP_BAD_REQUEST, fl_error_code_name(FL_EINVAL),
                           "malformed multipart/form-data body");
    case BODY_NO_MEMORY:
        return queue_error(st, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_error_code_name(FL_ENOMEM),
                           "out of memory while reading the request body");
    }

    fl_http_request req = {
        .method = method,
        .path = url,
        .authorization = MHD_lookup_connection_value(st->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .content_type = MHD_lookup_connection_value(st->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
        .body = st->size > 0 ? st->body : NULL,
        .body_size = st->size,
        .parts = st->parts,
        .n_parts = st->n_parts,
        .remote_addr = st->remote,
        .internal = st,
    };
    fl_http_response res = {0}; /* status 0: "not set" until the handler says otherwise */
    s->handler(s->app, &req, &res);
    if (res.status == 0 && !res.body && !res.stream) {
        fl_log_error("http: %s %s: the handler produced no response", method, url);
        fl_http_reply_error(&res, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal_error", "the handler produced no response");
    } else if (res.status == 0) {
        res.status = MHD_HTTP_OK;
    } else if (res.status < 100 || res.status > 599) {
        fl_log_error("http: %s %s: the handler set status %d", method, url, res.status);
        if (res.stream && res.stream_free) res.stream_free(res.stream_arg);
        res.stream = NULL;
        fl_http_reply_error(&res, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal_error", "invalid response status");
    }
    fl_log_debug("http: %s %s from %s -> %d", method, url, st->remote, res.status);
    return queue(st, &res);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    fl_http_server *s = cls;
    conn_state *st = *con_cls;
    if (!st) return begin_request(s, conn, con_cls);
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (st->responded) return MHD_YES; /* MHD discards the rest itself; not expected here */
        return take_body(st, upload_data, n);
    }
    if (st->responded) return MHD_YES;
    return finish_request(st, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    conn_state *st = *con_cls;
    if (!st) return;
    if (st->pp) MHD_destroy_post_processor(st->pp);
    drop_body(st);
    free(st);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    /* clients hanging up early is routine; everything else MHD reports is worth a warning */
    if (strstr(line, "closed by remote") || strstr(line, "Connection reset"))
        fl_log_debug("http: %s", line);
    else
        fl_log_warn("http: %s", line);
}

/* ---- the server ------------------------------------------------------------------------------ */

fl_http_config fl_http_config_default(void) {
    return (fl_http_config){
        .bind_address = "127.0.0.1",
        .port = 8080,
        .max_connections = 256,
        .max_body_bytes = (size_t)1 << 20,
        .max_upload_bytes = (size_t)256 << 20,
        .connection_timeout_s = 60,
    };
}

int fl_http_start(const fl_http_config *config, fl_http_handler handler, void *app, fl_http_server **out,
                  fl_error *err) {
    FL_CHECK(handler != NULL && out != NULL);
    *out = NULL;
    fl_http_config def = fl_http_config_default();
    fl_http_config c = config ? *config : def;
    if (!c.bind_address || !*c.bind_address) c.bind_address = def.bind_address;
    if (c.max_connections <= 0) c.max_connections = def.max_connections;
    if (c.max_body_bytes == 0) c.max_body_bytes = def.max_body_bytes;
    if (c.max_upload_bytes == 0) c.max_upload_bytes = def.max_upload_bytes;
    if (c.connection_timeout_s <= 0) c.connection_timeout_s = def.connection_timeout_s;
    if (c.port < 0 || c.port > 65535) return fl_fail(err, FL_EINVAL, "http: port %d is out of range", c.port);

    struct sockaddr_in sin = {0};
    struct sockaddr_in6 sin6 = {0};
    const struct sockaddr *addr;
    unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                         MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, c.bind_address, &sin.sin_addr) == 1) {
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)c.port);
        addr = (const struct sockaddr *)&sin;
    } else if (inet_pton(AF_INET6, c.bind_address, &sin6.sin6_addr) == 1) {
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons((uint16_t)c.port);
        addr = (const struct sockaddr *)&sin6;
        flags |= MHD_USE_IPv6;
    } else {
        return fl_fail(err, FL_EINVAL, "http: bind address '%s' is not a numeric IPv4 or IPv6 address",
                       c.bind_address);
    }

    fl_http_server *s = fl_xcalloc(1, sizeof *s);
    s->handler = handler;
    s->app = app;
    s->max_body_bytes = c.max_body_bytes;
    s->max_upload_bytes = c.max_upload_bytes;
    atomic_init(&s->stopping, false);
    s->daemon = MHD_start_daemon(flags, (uint16_t)c.port, NULL, NULL, on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, /* first, to catch all */
                                 MHD_OPTION_SOCK_ADDR, addr,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned int)c.max_connections,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)c.connection_timeout_s,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_END);
    if (!s->daemon) {
        int e = errno;
        free(s);
        return fl_fail(err, FL_EIO, "http: cannot listen on %s:%d (%s)", c.bind_address, c.port,
                       e ? strerror(e) : "libmicrohttpd failed to start");
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info && info->port ? (int)info->port : c.port;
    fl_log_info("http: listening on %s:%d", c.bind_address, s->port);
    *out = s;
    return 0;
}

int fl_http_port(const fl_http_server *s) { return s->port; }

void fl_http_stop(fl_http_server *s) {
    if (!s) return;
    atomic_store(&s->stopping, true);
    MHD_stop_daemon(s->daemon); /* closes the sockets and joins every connection thread */
    free(s);
}
