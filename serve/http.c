/*
 * http.c — the HTTP layer: the front door, admission, bodies and responses (see http.h).
 *
 * The front door is one thread that owns the listening socket. Accepted connections wait in its
 * poll set, without a thread, while it peeks (MSG_PEEK: nothing is consumed) at what they have
 * sent; a connection whose head is complete and valid is handed to libmicrohttpd with
 * MHD_add_connection, which reads the same bytes again and gives it a thread. A head that
 * arrives in pieces is looked at again when the first piece is in and then on a 50 ms timer
 * (FIONREAD says whether anything came), so a trickling client costs a few syscalls a second.
 * Refusals from the front door are written directly (a short JSON response, then shutdown of
 * the sending side); the socket then lingers, draining what the client still sends for up to
 * two seconds, so the client reads the answer instead of a reset.
 *
 * libmicrohttpd runs one thread per connection and calls the access handler on it: once when
 * the headers are in (admission: answered at once, or limits chosen), then once per piece of
 * body, then once more when the body is complete (the handler runs and its response is queued).
 * MHD 0.9.x refuses a response while the body is still arriving, so a body that crosses its
 * limit mid-way (chunked) is read on and discarded, up to FL_HTTP_DRAIN_BYTES past the limit,
 * and answered with 413 when it ends; a client still sending after that is disconnected. Every
 * response carries "Connection: close". Everything a request owns lives in one conn_state,
 * freed by MHD's request-completed callback, which also runs when the client goes away.
 * Counts shared by the front door and the connection threads (requests served, connections per
 * client address) are kept under one mutex; MHD's connection-closed notification gives a served
 * connection's place back.
 */
#include "serve/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "serve/http_head.h"
#include "serve/multipart.h"

/* After a body crosses its limit, this much more is read and thrown away so that the client can
 * still be told 413; a client still sending after that is cut off. */
#define FL_HTTP_DRAIN_BYTES ((uint64_t)16 << 20)
/* A stream function that has nothing yet is called again after this long. */
#define FL_HTTP_STREAM_IDLE_MS 20
/* Bytes MHD asks a stream function for at most, per call. */
#define FL_HTTP_STREAM_BLOCK (16 * 1024)
/* A head that arrives in pieces is looked at again this often. */
#define FL_HTTP_PEEK_INTERVAL_MS 50
/* A refused connection is drained this long (and this much) before it is closed. */
#define FL_HTTP_LINGER_MS 2000
#define FL_HTTP_LINGER_BYTES ((size_t)1 << 20)
#define FL_HTTP_LINGER_MAX 256
/* libmicrohttpd's own connection limit: far above ours (it also counts connections whose request
 * is over and whose thread is ending), so that it never refuses on its own. */
#define FL_HTTP_MHD_SLACK 16

static const char *const default_ops_paths[] = {"/healthz", "/metrics", NULL};

/* A client address, as the per-client limit counts it. */
typedef struct client_key {
    uint8_t family; /* 4 or 6 */
    uint8_t addr[16];
} client_key;

typedef struct client_slot {
    client_key key;
    int count; /* connections of this address waiting for their head or being served */
} client_slot;

/* A connection handed to libmicrohttpd (its socket context): its place among the served ones is
 * given back once, when its request completes or, failing that, when it closes. */
typedef struct served_conn {
    client_key key;
    bool released;
} served_conn;

/* A connection waiting in the front door for its request head. */
typedef struct pending_conn {
    int fd;
    client_key key;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int64_t deadline_ms;
    int64_t next_peek_ms; /* when waiting on the timer */
    size_t seen;          /* bytes there at the last look */
    bool on_timer;        /* a partial head was seen: look again on the timer, not on POLLIN */
    short revents;
} pending_conn;

/* A refused connection, drained before it is closed. */
typedef struct linger_conn {
    int fd;
    int64_t until_ms;
    size_t drained;
    short revents;
} linger_conn;

struct fl_http_server {
    struct MHD_Daemon *daemon;
    fl_http_handler handler;
    fl_http_admit_fn admit;
    void *app;
    fl_http_config cfg; /* with defaults filled in */
    const char *const *ops_paths;
    int port;
    int listen_fd;
    int wake[2];
    pthread_t front;
    bool front_started;
    atomic_bool stopping;

    pthread_mutex_t lock; /* guards what follows */
    client_slot *clients;
    size_t n_client_slots;
    int served;  /* handed to MHD and not yet closed */
    int pending; /* in the front door */
    fl_http_stats stats;

    /* the front door's own (only its thread touches them) */
    pending_conn *waiting;
    size_t n_waiting;
    linger_conn *lingering;
    size_t n_lingering;
    struct pollfd *pfds;
    char *peek;
};

typedef enum body_failure {
    BODY_OK = 0,
    BODY_TOO_LARGE,     /* 413 */
    BODY_NO_MEMORY,     /* 500 */
} body_failure;

/* Everything one request owns; MHD keeps the pointer in its per-request slot. */
typedef struct conn_state {
    fl_http_server *server;
    struct MHD_Connection *conn;
    bool multipart;
    bool head_only; /* a HEAD request */
    bool responded; /* a response is queued (an early answer) */
    size_t limit;
    size_t max_parts;
    uint64_t received;
    body_failure failure;
    unsigned char *body; /* raw or multipart; the parts point into it */
    size_t size, cap;
    fl_http_part *parts;
    size_t n_parts;
    char boundary[FL_MULTIPART_BOUNDARY_MAX + 1];
    void *ctx;
    void (*ctx_free)(void *ctx);
    served_conn *slot; /* the connection's place (NULL if MHD does not know it) */
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

/* text with absolute file-system paths replaced by "<path>" (malloc'ed): a word that starts
 * with '/' (at the start or after a space, quote, bracket, '=' or ',') and has at least two '/'
 * is taken for a path, unless it is one of the API's own routes (/v1/...). */
static char *redact_paths(const char *text) {
    size_t cap = strlen(text) * 2 + 8, o = 0; /* "<path>" is at most twice the 3 bytes it replaces */
    char *out = fl_xmalloc(cap);
    for (const char *p = text; *p;) {
        bool word_start = p == text || strchr(" \t'\"(<[=,", p[-1]) != NULL;
        if (word_start && p[0] == '/' && p[1] != '/' && strncmp(p, "/v1/", 4) != 0) {
            size_t n = strcspn(p, " \t'\")>],;:");
            size_t slashes = 0;
            for (size_t i = 0; i < n; i++) slashes += p[i] == '/';
            if (slashes >= 2) {
                memcpy(out + o, "<path>", 6);
                o += 6;
                p += n;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
    return out;
}

/* The same over the "message" strings of a JSON value (error objects nested in replies). */
static void redact_json(json_t *v, int depth) {
    if (depth > 16) return;
    if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach(v, key, item) {
            if (json_is_string(item) && !strcmp(key, "message") && strchr(json_string_value(item), '/')) {
                char *clean = redact_paths(json_string_value(item));
                if (strcmp(clean, json_string_value(item)) != 0) json_string_set(item, clean);
                free(clean);
            } else {
                redact_json(item, depth + 1);
            }
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) redact_json(item, depth + 1);
    }
}

void fl_http_redact_json(json_t *value) { redact_json(value, 0); }

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
    redact_json(value, 0);
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
    char *clean = redact_paths(message);
    json_t *inner = json_object();
    json_object_set_new(inner, "code", json_string_lossy(code));
    json_object_set_new(inner, "message", json_string_lossy(clean));
    free(clean);
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

/* Free the body buffer of a request early (when it failed: nothing will read it). */
static void drop_body(conn_state *st) {
    free(st->parts);
    st->parts = NULL;
    st->n_parts = 0;
    free(st->body);
    st->body = NULL;
    st->size = st->cap = 0;
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
    if (res->stream && st->head_only) {
        /* HEAD: the headers of the stream, without starting it */
        if (res->stream_free) res->stream_free(res->stream_arg);
        res->stream = NULL;
        free(res->body);
        res->body = NULL;
        res->size = 0;
        if (!res->content_type) res->content_type = "application/json";
    }
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
    /* one request per connection: the next one comes through the front door again */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
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

/* Grow st->body to hold extra more bytes plus a NUL, never beyond the limit plus that NUL. */
static bool reserve(conn_state *st, size_t extra) {
    size_t need = st->size + extra + 1;
    if (need <= st->cap) return true;
    size_t want = st->cap ? st->cap : 64 * 1024;
    while (want < need) want *= 2;
    if (want > st->limit + 1) want = st->limit + 1;
    if (want < need) want = need;
    unsigned char *p = realloc(st->body, want);
    if (!p) return false;
    st->body = p;
    st->cap = want;
    return true;
}

static bool is_multipart(const char *content_type) {
    if (!content_type) return false;
    while (*content_type == ' ' || *content_type == '\t') content_type++;
    return !strncasecmp(content_type, "multipart/", strlen("multipart/"));
}

static bool is_form_data(const char *content_type) {
    while (*content_type == ' ' || *content_type == '\t') content_type++;
    size_t n = strlen("multipart/form-data");
    return !strncasecmp(content_type, "multipart/form-data", n) &&
           (content_type[n] == '\0' || content_type[n] == ';' || content_type[n] == ' ' || content_type[n] == '\t');
}

/* The declared body length, when Content-Length frames the body (checked by the front door). */
static bool declared_length(struct MHD_Connection *conn, uint64_t *out) {
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (te) return false;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl) return false;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(cl, &end, 10);
    if (errno || end == cl) return false;
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

/* The first call: the head is in, no body byte has been read. Admission decides. */
static enum MHD_Result begin_request(fl_http_server *s, struct MHD_Connection *conn, const char *url,
                                     const char *method, void **con_cls) {
    conn_state *st = fl_xcalloc(1, sizeof *st);
    *con_cls = st;
    st->server = s;
    st->conn = conn;
    st->head_only = !strcmp(method, "HEAD");
    const union MHD_ConnectionInfo *sci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    st->slot = sci ? sci->socket_context : NULL;
    remote_address(conn, st->remote, sizeof st->remote);
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    uint64_t declared = 0;
    bool known = declared_length(conn, &declared);
    fl_http_admission adm = {
        .max_body_bytes = s->cfg.max_body_bytes,
        .max_upload_bytes = s->cfg.max_upload_bytes,
        .allow_multipart = true,
        .max_parts = s->cfg.max_parts,
    };
    if (s->admit) {
        fl_http_request req = {
            .method = method,
            .path = url,
            .authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
            .content_type = ct,
            .content_length = known ? (int64_t)declared : -1,
            .remote_addr = st->remote,
            .internal = st,
        };
        fl_http_response res = {0};
        bool admitted = s->admit(s->app, &req, &adm, &res);
        st->ctx = adm.ctx;
        st->ctx_free = adm.ctx_free;
        if (!admitted) {
            if (res.status < 100 || res.status > 599 || res.stream) {
                fl_log_error("http: %s %s: admission refused without a valid answer", method, url);
                if (res.stream && res.stream_free) res.stream_free(res.stream_arg);
                res.stream = NULL;
                fl_http_reply_error(&res, 500, "internal_error", "the request could not be admitted");
            }
            fl_log_debug("http: %s %s from %s -> %d (admission)", method, url, st->remote, res.status);
            return queue(st, &res);
        }
        free(res.body); /* admitted: an answer it may have begun is not sent */
    }
    st->max_parts = adm.max_parts;
    st->multipart = is_multipart(ct);
    if (st->multipart && (!adm.allow_multipart || !is_form_data(ct)))
        return queue_error(st, 415, "unsupported_media_type", "%s is not accepted here%s",
                           is_form_data(ct) ? "multipart/form-data" : "this multipart type",
                           adm.allow_multipart ? " (only multipart/form-data)" : "");
    if (st->multipart) {
        fl_error err = {0};
        if (fl_multipart_boundary(ct, st->boundary, &err) != 0)
            return queue_error(st, MHD_HTTP_BAD_REQUEST, fl_error_code_name(FL_EINVAL), "%s", err.message);
    }
    st->limit = st->multipart ? adm.max_upload_bytes : adm.max_body_bytes;
    if (st->limit == 0 && MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
        /* a route without a body: a chunked one is refused before it is read (it could trickle) */
        return queue_error(st, 413 /* content too large */, fl_error_code_name(FL_ELIMIT),
                           "%s %s takes no request body", method, url);
    if (known && declared > st->limit)
        return queue_error(st, 413 /* content too large */, fl_error_code_name(FL_ELIMIT),
                           "request body of %" PRIu64 " bytes exceeds the limit of %zu bytes", declared, st->limit);
    /* sized by the client but within the limit; on failure the body grows as it arrives */
    if (known && declared > 0) reserve(st, (size_t)declared);
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
    if (!reserve(st, n)) {
        st->failure = BODY_NO_MEMORY;
        drop_body(st);
        return MHD_YES;
    }
    memcpy(st->body + st->size, data, n);
    st->size += n;
    st->body[st->size] = '\0';
    return MHD_YES;
}

/* The last call: the body is complete; split a form, run the handler. */
static enum MHD_Result finish_request(conn_state *st, const char *url, const char *method) {
    fl_http_server *s = st->server;
    switch (st->failure) {
    case BODY_OK: break;
    case BODY_TOO_LARGE:
        return queue_error(st, 413 /* content too large */, fl_error_code_name(FL_ELIMIT),
                           "request body exceeds the limit of %zu bytes", st->limit);
    case BODY_NO_MEMORY:
        return queue_error(st, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_error_code_name(FL_ENOMEM),
                           "out of memory while reading the request body");
    }
    if (st->multipart) {
        if (!st->body && !reserve(st, 0))
            return queue_error(st, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_error_code_name(FL_ENOMEM),
                               "out of memory while reading the request body");
        st->body[st->size] = '\0';
        fl_multipart_limits lim = {.max_parts = st->max_parts, .max_part_header_bytes = s->cfg.max_part_header_bytes};
        fl_error err = {0};
        if (fl_multipart_parse(st->body, st->size, st->boundary, &lim, &st->parts, &st->n_parts, &err) != 0) {
            int status = err.code == FL_ELIMIT ? 413 : err.code == FL_ENOMEM ? 500 : 400;
            drop_body(st);
            return queue_error(st, status, fl_error_code_name(err.code), "%s", err.message);
        }
    }

    fl_http_request req = {
        .method = method,
        .path = url,
        .authorization = MHD_lookup_connection_value(st->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .content_type = MHD_lookup_connection_value(st->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
        .content_length = -1,
        .body = !st->multipart && st->size > 0 ? st->body : NULL,
        .body_size = st->multipart ? 0 : st->size,
        .parts = st->parts,
        .n_parts = st->n_parts,
        .remote_addr = st->remote,
        .ctx = st->ctx,
        .internal = st,
    };
    uint64_t declared = 0;
    if (declared_length(st->conn, &declared)) req.content_length = (int64_t)declared;
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
    if (!st) return begin_request(s, conn, url, method, con_cls);
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (st->responded) return MHD_YES; /* MHD discards the rest itself; not expected here */
        return take_body(st, upload_data, n);
    }
    if (st->responded) return MHD_YES;
    return finish_request(st, url, method);
}

static void release_served(fl_http_server *s, served_conn *sc);

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    conn_state *st = *con_cls;
    if (!st) return;
    /* the request is over: its place is free for the next one (the socket closes on its own) */
    if (st->slot) release_served(st->server, st->slot);
    drop_body(st);
    if (st->ctx_free) st->ctx_free(st->ctx);
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

/* ---- counting clients -------------------------------------------------------------------------- */

static client_key key_of(const struct sockaddr *sa) {
    client_key k;
    memset(&k, 0, sizeof k);
    if (sa->sa_family == AF_INET) {
        k.family = 4;
        memcpy(k.addr, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            k.family = 4;
            memcpy(k.addr, a->s6_addr + 12, 4);
        } else {
            k.family = 6;
            memcpy(k.addr, a->s6_addr, 16);
        }
    }
    return k;
}

/* The slot of a client address (created when create is set and there is room); under s->lock. */
static client_slot *client_find(fl_http_server *s, const client_key *k, bool create) {
    client_slot *free_slot = NULL;
    for (size_t i = 0; i < s->n_client_slots; i++) {
        client_slot *c = &s->clients[i];
        if (c->count > 0 && !memcmp(&c->key, k, sizeof *k)) return c;
        if (c->count == 0 && !free_slot) free_slot = c;
    }
    if (!create || !free_slot) return NULL;
    free_slot->key = *k;
    return free_slot;
}

static void client_release(fl_http_server *s, const client_key *k) {
    client_slot *c = client_find(s, k, false);
    if (c && c->count > 0) c->count--;
}

static void release_served(fl_http_server *s, served_conn *sc) {
    pthread_mutex_lock(&s->lock);
    if (!sc->released) {
        sc->released = true;
        if (s->served > 0) s->served--;
        client_release(s, &sc->key);
    }
    pthread_mutex_unlock(&s->lock);
}

/* MHD's connection notifications: a served connection that closes without a completed request
 * (the client left before its head was read again) gives its place back here. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    fl_http_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        served_conn *sc = fl_xcalloc(1, sizeof *sc);
        if (info && info->client_addr) sc->key = key_of(info->client_addr);
        *socket_context = sc;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        served_conn *sc = *socket_context;
        if (sc) release_served(s, sc);
        free(sc);
        *socket_context = NULL;
    }
}

/* ---- the front door ------------------------------------------------------------------------------ */

static void linger_add(fl_http_server *s, int fd) {
    if (s->n_lingering == FL_HTTP_LINGER_MAX) {
        close(fd);
        return;
    }
    s->lingering[s->n_lingering++] = (linger_conn){.fd = fd, .until_ms = fl_monotonic_ms() + FL_HTTP_LINGER_MS};
}

/* Answer a connection from the front door with a JSON error and let it linger. */
static void front_reply(fl_http_server *s, int fd, int status, const char *code, const char *message,
                        bool head_only, bool retry_later) {
    fl_http_response res = {0};
    fl_http_reply_error(&res, status, code, "%s", message);
    const char *reason = MHD_get_reason_phrase_for((unsigned int)status);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     status, reason && *reason ? reason : "Error", res.size, retry_later ? "Retry-After: 1\r\n" : "");
    struct iovec iov[2] = {{.iov_base = head, .iov_len = (size_t)n}, {.iov_base = res.body, .iov_len = res.size}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = head_only ? 1 : 2};
    if (sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) fl_log_debug("http: front door reply: %s", strerror(errno));
    free(res.body);
    shutdown(fd, SHUT_WR);
    linger_add(s, fd);
}

/* Remove waiting connection i (its fd now belongs to someone else or is closed). */
static void waiting_forget(fl_http_server *s, size_t i, bool release_client) {
    pthread_mutex_lock(&s->lock);
    s->pending--;
    if (release_client) client_release(s, &s->waiting[i].key);
    pthread_mutex_unlock(&s->lock);
    s->waiting[i].fd = -1;
}

static void waiting_refuse(fl_http_server *s, size_t i, int status, const char *code, const char *message,
                           bool head_only, bool retry_later) {
    front_reply(s, s->waiting[i].fd, status, code, message, head_only, retry_later);
    waiting_forget(s, i, true);
}

static bool is_ops_path(const fl_http_server *s, const fl_http_head *h) {
    for (const char *const *p = s->ops_paths; *p; p++)
        if (strlen(*p) == h->path_len && !memcmp(*p, h->target, h->path_len)) return true;
    return false;
}

/* A complete, valid head: a thread for it if there is room. */
static void hand_over(fl_http_server *s, size_t i, const fl_http_head *h) {
    pending_conn *w = &s->waiting[i];
    bool ops = is_ops_path(s, h);
    bool head_only = h->method_len == 4 && !memcmp(h->method, "HEAD", 4);
    pthread_mutex_lock(&s->lock);
    bool room = s->served < s->cfg.max_connections || (ops && s->served < s->cfg.max_connections + s->cfg.ops_reserve);
    if (room) {
        s->served++;
        s->pending--;
        s->stats.handed++;
    } else {
        s->stats.refused_busy++;
    }
    pthread_mutex_unlock(&s->lock);
    if (!room) {
        char message[160];
        snprintf(message, sizeof message, "the server is serving %d requests, its limit; retry shortly",
                 s->cfg.max_connections);
        waiting_refuse(s, i, 503, "unavailable", message, head_only, true);
        return;
    }
    int fd = w->fd;
    w->fd = -1;
    if (MHD_add_connection(s->daemon, fd, (const struct sockaddr *)&w->addr, w->addrlen) != MHD_YES) {
        /* MHD closed the socket */
        fl_log_warn("http: could not hand a connection over: %s", strerror(errno));
        pthread_mutex_lock(&s->lock);
        s->served--;
        client_release(s, &w->key);
        pthread_mutex_unlock(&s->lock);
    }
}

/* Look at what waiting connection i has sent so far. */
static void look_at_head(fl_http_server *s, size_t i, int64_t now) {
    pending_conn *w = &s->waiting[i];
    if (w->revents & (POLLERR | POLLNVAL)) {
        close(w->fd);
        waiting_forget(s, i, true);
        return;
    }
    ssize_t n = recv(w->fd, s->peek, s->cfg.max_header_bytes, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) { /* the client left before its head was complete */
        close(w->fd);
        waiting_forget(s, i, true);
        return;
    }
    fl_http_head h;
    int status = 0;
    char message[256];
    fl_http_head_result r = fl_http_head_parse(s->peek, (size_t)n, s->cfg.max_header_bytes, &h, &status, message,
                                               sizeof message);
    if (r == FL_HTTP_HEAD_COMPLETE) {
        hand_over(s, i, &h);
    } else if (r == FL_HTTP_HEAD_INVALID) {
        pthread_mutex_lock(&s->lock);
        s->stats.bad_heads++;
        pthread_mutex_unlock(&s->lock);
        const char *code = status == 413 ? "limit_exceeded"
                         : status == 414 ? "uri_too_long"
                         : status == 431 ? "headers_too_large"
                         : status == 501 ? "not_implemented"
                         : status == 505 ? "http_version_not_supported"
                                         : "bad_request";
        waiting_refuse(s, i, status, code, message, false, false);
    } else if (w->revents & (POLLRDHUP | POLLHUP)) {
        close(w->fd); /* the client stopped sending in the middle of its head */
        waiting_forget(s, i, true);
    } else {
        w->seen = (size_t)n;
        w->on_timer = true;
        w->next_peek_ms = now + FL_HTTP_PEEK_INTERVAL_MS;
    }
}

/* Drop the connection that has waited longest for its head, to make room. */
static void evict_oldest(fl_http_server *s) {
    size_t oldest = SIZE_MAX;
    for (size_t i = 0; i < s->n_waiting; i++)
        if (s->waiting[i].fd >= 0 && (oldest == SIZE_MAX || s->waiting[i].deadline_ms < s->waiting[oldest].deadline_ms))
            oldest = i;
    if (oldest == SIZE_MAX) return;
    pthread_mutex_lock(&s->lock);
    s->stats.header_timeouts++;
    pthread_mutex_unlock(&s->lock);
    waiting_refuse(s, oldest, 408, "request_timeout", "too many connections are waiting to send a request; yours was the slowest",
                   false, true);
}

static void compact(fl_http_server *s) {
    size_t k = 0;
    for (size_t i = 0; i < s->n_waiting; i++)
        if (s->waiting[i].fd >= 0) s->waiting[k++] = s->waiting[i];
    s->n_waiting = k;
    k = 0;
    for (size_t i = 0; i < s->n_lingering; i++)
        if (s->lingering[i].fd >= 0) s->lingering[k++] = s->lingering[i];
    s->n_lingering = k;
}

/* Accept what the listening socket has, up to a batch. Returns false when out of descriptors. */
static bool accept_new(fl_http_server *s, int64_t now) {
    for (int batch = 0; batch < 64; batch++) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                fl_log_warn("http: cannot accept: %s", strerror(errno));
                return false;
            }
            return true; /* EAGAIN, or a connection that went away */
        }
        client_key k = key_of((const struct sockaddr *)&addr);
        compact(s);
        if (s->n_waiting == (size_t)s->cfg.max_pending_heads) {
            evict_oldest(s);
            compact(s);
        }
        pthread_mutex_lock(&s->lock);
        s->stats.accepted++;
        client_slot *c = client_find(s, &k, true);
        bool ok = c && c->count < s->cfg.max_client_connections;
        if (ok) {
            c->count++;
            s->pending++;
        } else {
            s->stats.refused_client++;
        }
        pthread_mutex_unlock(&s->lock);
        if (!ok) {
            char message[160];
            snprintf(message, sizeof message, "more than %d connections from your address", s->cfg.max_client_connections);
            front_reply(s, fd, 429, "too_many_connections", message, false, true);
            continue;
        }
        pending_conn *w = &s->waiting[s->n_waiting++];
        memset(w, 0, sizeof *w);
        w->fd = fd;
        w->key = k;
        w->addr = addr;
        w->addrlen = len;
        w->deadline_ms = now + (int64_t)s->cfg.header_timeout_s * 1000;
    }
    return true;
}

static void *front_door(void *arg) {
    fl_http_server *s = arg;
    int64_t accept_again_ms = 0;
    char drain[16384];
    while (!atomic_load(&s->stopping)) {
        int64_t now = fl_monotonic_ms();
        int64_t wake_at = now + 1000;
        size_t np = 0;
        s->pfds[np++] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        bool listening = now >= accept_again_ms;
        s->pfds[np++] = (struct pollfd){.fd = listening ? s->listen_fd : -1, .events = POLLIN};
        if (!listening && accept_again_ms < wake_at) wake_at = accept_again_ms;
        for (size_t i = 0; i < s->n_waiting; i++) {
            pending_conn *w = &s->waiting[i];
            s->pfds[np++] = (struct pollfd){.fd = w->fd, .events = (short)(w->on_timer ? POLLRDHUP : POLLIN | POLLRDHUP)};
            if (w->deadline_ms < wake_at) wake_at = w->deadline_ms;
            if (w->on_timer && w->next_peek_ms < wake_at) wake_at = w->next_peek_ms;
        }
        for (size_t i = 0; i < s->n_lingering; i++) {
            s->pfds[np++] = (struct pollfd){.fd = s->lingering[i].fd, .events = POLLIN | POLLRDHUP};
            if (s->lingering[i].until_ms < wake_at) wake_at = s->lingering[i].until_ms;
        }
        int timeout = wake_at > now ? (int)(wake_at - now) : 0;
        int rc = poll(s->pfds, (nfds_t)np, timeout);
        if (rc < 0 && errno != EINTR) {
            fl_log_error("http: front door poll: %s", strerror(errno));
            fl_sleep_ms(10);
            continue;
        }
        if (atomic_load(&s->stopping)) break;
        now = fl_monotonic_ms();
        if (s->pfds[0].revents) {
            char sink[64];
            while (read(s->wake[0], sink, sizeof sink) > 0) {
            }
        }
        size_t nw = s->n_waiting, nl = s->n_lingering;
        for (size_t i = 0; i < nw; i++) s->waiting[i].revents = s->pfds[2 + i].revents;
        for (size_t i = 0; i < nl; i++) s->lingering[i].revents = s->pfds[2 + nw + i].revents;
        /* connections waiting for their heads */
        for (size_t i = 0; i < nw; i++) {
            pending_conn *w = &s->waiting[i];
            if (w->fd < 0) continue;
            bool look = w->revents != 0 && !w->on_timer;
            if (w->on_timer && (w->revents || now >= w->next_peek_ms)) {
                int avail = 0;
                if (w->revents || (ioctl(w->fd, FIONREAD, &avail) == 0 && (size_t)avail > w->seen)) look = true;
                else w->next_peek_ms = now + FL_HTTP_PEEK_INTERVAL_MS;
            }
            if (look) look_at_head(s, i, now);
            if (w->fd >= 0 && now >= w->deadline_ms) {
                pthread_mutex_lock(&s->lock);
                s->stats.header_timeouts++;
                pthread_mutex_unlock(&s->lock);
                char message[160];
                snprintf(message, sizeof message, "the request head did not arrive within %d s", s->cfg.header_timeout_s);
                waiting_refuse(s, i, 408, "request_timeout", message, false, false);
            }
        }
        /* refused connections, drained until the client has read its answer */
        for (size_t i = 0; i < nl; i++) {
            linger_conn *l = &s->lingering[i];
            bool done = now >= l->until_ms || (l->revents & (POLLERR | POLLNVAL | POLLHUP));
            if (!done && l->revents) {
                for (;;) {
                    ssize_t got = recv(l->fd, drain, sizeof drain, MSG_DONTWAIT);
                    if (got > 0) {
                        l->drained += (size_t)got;
                        if (l->drained > FL_HTTP_LINGER_BYTES) done = true;
                        if (!done) continue;
                    } else if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                        done = true;
                    }
                    break;
                }
            }
            if (done) {
                close(l->fd);
                l->fd = -1;
            }
        }
        compact(s);
        /* new connections */
        if (listening && (s->pfds[1].revents & POLLIN) && !accept_new(s, now))
            accept_again_ms = now + 100; /* out of descriptors: let some close first */
    }
    return NULL;
}

/* ---- the server ------------------------------------------------------------------------------ */

fl_http_config fl_http_config_default(void) {
    return (fl_http_config){
        .bind_address = "127.0.0.1",
        .port = 8080,
        .max_connections = 256,
        .ops_reserve = 4,
        .ops_paths = NULL,
        .max_client_connections = 32,
        .max_pending_heads = 1024,
        .header_timeout_s = 10,
        .max_header_bytes = (size_t)16 << 10,
        .max_body_bytes = (size_t)1 << 20,
        .max_upload_bytes = (size_t)256 << 20,
        .max_parts = 64,
        .max_part_header_bytes = (size_t)8 << 10,
        .connection_timeout_s = 60,
        .admit = NULL,
    };
}

static int open_listener(const fl_http_config *c, int *out_fd, int *out_port, fl_error *err) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, c->bind_address, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)c->port);
        len = sizeof *sin;
    } else if (inet_pton(AF_INET6, c->bind_address, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)c->port);
        len = sizeof *sin6;
    } else {
        return fl_fail(err, FL_EINVAL, "http: bind address '%s' is not a numeric IPv4 or IPv6 address",
                       c->bind_address);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return fl_fail(err, FL_EIO, "http: socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        close(fd);
        return fl_fail(err, FL_EIO, "http: cannot listen on %s:%d (%s)", c->bind_address, c->port, strerror(e));
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    int port = c->port;
    if (getsockname(fd, (struct sockaddr *)&bound, &blen) == 0)
        port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                                : ((struct sockaddr_in6 *)&bound)->sin6_port);
    *out_fd = fd;
    *out_port = port;
    return 0;
}

static void free_server(fl_http_server *s) {
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->wake[0] >= 0) close(s->wake[0]);
    if (s->wake[1] >= 0) close(s->wake[1]);
    for (size_t i = 0; i < s->n_waiting; i++)
        if (s->waiting[i].fd >= 0) close(s->waiting[i].fd);
    for (size_t i = 0; i < s->n_lingering; i++)
        if (s->lingering[i].fd >= 0) close(s->lingering[i].fd);
    pthread_mutex_destroy(&s->lock);
    free(s->clients);
    free(s->waiting);
    free(s->lingering);
    free(s->pfds);
    free(s->peek);
    free(s);
}

int fl_http_start(const fl_http_config *config, fl_http_handler handler, void *app, fl_http_server **out,
                  fl_error *err) {
    FL_CHECK(handler != NULL && out != NULL);
    *out = NULL;
    fl_http_config def = fl_http_config_default();
    fl_http_config c = config ? *config : def;
    if (!c.bind_address || !*c.bind_address) c.bind_address = def.bind_address;
    if (c.max_connections <= 0) c.max_connections = def.max_connections;
    if (c.ops_reserve < 0) c.ops_reserve = 0;
    if (c.max_client_connections <= 0) c.max_client_connections = def.max_client_connections;
    if (c.max_pending_heads <= 0) c.max_pending_heads = def.max_pending_heads;
    if (c.header_timeout_s <= 0) c.header_timeout_s = def.header_timeout_s;
    if (c.max_header_bytes == 0) c.max_header_bytes = def.max_header_bytes;
    if (c.max_header_bytes < 256) c.max_header_bytes = 256;
    if (c.max_body_bytes == 0) c.max_body_bytes = def.max_body_bytes;
    if (c.max_upload_bytes == 0) c.max_upload_bytes = def.max_upload_bytes;
    if (c.max_parts == 0) c.max_parts = def.max_parts;
    if (c.max_part_header_bytes == 0) c.max_part_header_bytes = def.max_part_header_bytes;
    if (c.connection_timeout_s <= 0) c.connection_timeout_s = def.connection_timeout_s;
    if (c.port < 0 || c.port > 65535) return fl_fail(err, FL_EINVAL, "http: port %d is out of range", c.port);

    fl_http_server *s = fl_xcalloc(1, sizeof *s);
    s->listen_fd = s->wake[0] = s->wake[1] = -1;
    pthread_mutex_init(&s->lock, NULL);
    s->handler = handler;
    s->admit = c.admit;
    s->app = app;
    s->cfg = c;
    s->ops_paths = c.ops_paths ? c.ops_paths : default_ops_paths;
    atomic_init(&s->stopping, false);
    if (open_listener(&c, &s->listen_fd, &s->port, err) != 0) {
        free_server(s);
        return -1;
    }
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        int e = errno;
        free_server(s);
        return fl_fail(err, FL_EIO, "http: pipe: %s", strerror(e));
    }
    size_t pending_max = (size_t)c.max_pending_heads;
    s->n_client_slots = pending_max + (size_t)c.max_connections + (size_t)c.ops_reserve + FL_HTTP_MHD_SLACK;
    s->clients = fl_xcalloc(s->n_client_slots, sizeof *s->clients);
    s->waiting = fl_xcalloc(pending_max, sizeof *s->waiting);
    s->lingering = fl_xcalloc(FL_HTTP_LINGER_MAX, sizeof *s->lingering);
    s->pfds = fl_xcalloc(2 + pending_max + FL_HTTP_LINGER_MAX, sizeof *s->pfds);
    s->peek = fl_xmalloc(c.max_header_bytes + 1);

    /* MHD reads the head again into its per-connection pool: room for it twice, and the rest */
    size_t pool = 2 * c.max_header_bytes + ((size_t)32 << 10);
    if (pool < ((size_t)64 << 10)) pool = (size_t)64 << 10;
    unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                         MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, /* first, to catch all */
                                 MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned int)(4 * (c.max_connections + c.ops_reserve) + FL_HTTP_MHD_SLACK),
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)c.connection_timeout_s,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                                 MHD_OPTION_END);
    if (!s->daemon) {
        int e = errno;
        free_server(s);
        return fl_fail(err, FL_EIO, "http: libmicrohttpd failed to start (%s)", e ? strerror(e) : "unknown reason");
    }
    if (pthread_create(&s->front, NULL, front_door, s) != 0) {
        MHD_stop_daemon(s->daemon);
        free_server(s);
        return fl_fail(err, FL_EIO, "http: cannot start the front door thread");
    }
    s->front_started = true;
    fl_log_info("http: listening on %s:%d", c.bind_address, s->port);
    *out = s;
    return 0;
}

int fl_http_port(const fl_http_server *s) { return s->port; }

void fl_http_get_stats(fl_http_server *s, fl_http_stats *out) {
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    out->served_now = s->served;
    out->pending_now = s->pending;
    pthread_mutex_unlock(&s->lock);
}

void fl_http_stop(fl_http_server *s) {
    if (!s) return;
    atomic_store(&s->stopping, true);
    if (s->front_started) {
        ssize_t w = write(s->wake[1], "x", 1);
        (void)w;
        pthread_join(s->front, NULL);
    }
    close(s->listen_fd); /* no new connections */
    s->listen_fd = -1;
    MHD_stop_daemon(s->daemon); /* closes the served sockets and joins every connection thread */
    free_server(s);
}
