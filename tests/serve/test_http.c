/*
 * test_http.c — the HTTP layer (serve/http.h) against real clients over loopback.
 *
 * The test starts the server on 127.0.0.1 with port 0 and a small test handler, then talks to it
 * with libcurl: a GET with query arguments and headers, a JSON echo (with Content-Length and
 * chunked), a multipart upload of a 3 MiB file plus fields, bodies and uploads over their limits
 * (413 with a JSON error, declared and chunked), malformed multipart (400), a binary response, a
 * server-sent-events stream read to its end, clients that leave mid-stream (while it writes and
 * while it is silent), clients that leave mid-upload (raw sockets), 16 concurrent clients, a
 * handler that sets nothing or nonsense (500), and a server stopped while two streams are open. Stream and
 * handler bookkeeping uses atomics because the handler runs on the server's connection threads.
 *
 * The front door and admission: a refusal from the head alone (no body byte sent), admitted limits
 * (413 at once, 415), the admission context and its release, HEAD (no body, no stream started),
 * malformed or ambiguous heads answered in JSON (400, 414, 431, 501, 505), quoted boundaries,
 * part limits and aligned part data, the memory of a 100,000-part form (peak RSS), server paths
 * removed from errors, and on a small second server: trickled heads (408 while others are
 * served), the per-client limit (429), a full server (503) with the ops reserve still answering,
 * and the slowest waiting head dropped when too many wait.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/error.h"
#include "harness.h"
#include "serve/http.h"

#define MAX_BODY (64 * 1024)
#define MAX_UPLOAD (4 * 1024 * 1024)
#define BINARY_SIZE 300001

static fl_http_server *server;
static char base_url[64];
static atomic_int json_calls;    /* handler runs for /json */
static atomic_int upload_calls;  /* handler runs for /upload */
static atomic_int streams_freed; /* stream_free runs for /stream */
static atomic_int forever_freed; /* stream_free runs for /forever */
static atomic_int admit_calls;   /* admission runs */
static atomic_int denied_handled; /* handler runs for /deny (never expected) */
static atomic_int ctx_freed;     /* admission contexts released */

/* ---- helpers --------------------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait up to timeout_ms for *counter to reach want. */
static bool wait_for(atomic_int *counter, int want, int timeout_ms) {
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        if (atomic_load(counter) >= want) return true;
        sleep_ms(10);
    }
    return atomic_load(counter) >= want;
}

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Deterministic bytes covering every value, zeros included. */
static unsigned char *make_bytes(size_t n, uint64_t seed) {
    unsigned char *p = malloc(n ? n : 1);
    uint64_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
    return p;
}

typedef struct buf {
    char *data;
    size_t size;
    size_t abort_after; /* a write callback that fails once this much arrived (0: never) */
} buf;

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
    buf *b = ud;
    size_t len = size * n;
    char *grown = realloc(b->data, b->size + len + 1);
    if (!grown) return 0;
    b->data = grown;
    memcpy(b->data + b->size, p, len);
    b->size += len;
    b->data[b->size] = '\0';
    if (b->abort_after && b->size >= b->abort_after) return 0;
    return len;
}

typedef struct reply {
    CURLcode rc;
    long status;
    buf body;
    buf headers;
    char content_type[128];
} reply;

static void reply_free(reply *r) {
    free(r->body.data);
    free(r->headers.data);
}

/* A chunked request body produced by a read callback. */
typedef struct source {
    const unsigned char *data;
    size_t size, pos;
} source;

static size_t on_read(char *p, size_t size, size_t n, void *ud) {
    source *s = ud;
    size_t len = size * n;
    if (len > 8192) len = 8192; /* several chunks */
    if (len > s->size - s->pos) len = s->size - s->pos;
    memcpy(p, s->data + s->pos, len);
    s->pos += len;
    return len;
}

typedef struct request {
    const char *method; /* NULL: GET, or POST when a body is given */
    const char *path;
    const void *body;
    size_t size;
    bool chunked;
    const char *content_type;
    const char *const *headers; /* NULL-terminated */
    curl_mime *mime;
    size_t abort_after;
    long timeout_ms;
} request;

static reply perform(const request *rq) {
    reply r = {0};
    r.body.abort_after = rq->abort_after;
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s%s", base_url, rq->path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, rq->timeout_ms ? rq->timeout_ms : 10000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    struct curl_slist *hl = NULL;
    for (const char *const *h = rq->headers; h && *h; h++) hl = curl_slist_append(hl, *h);
    char ct[160];
    if (rq->content_type) {
        snprintf(ct, sizeof ct, "Content-Type: %s", rq->content_type);
        hl = curl_slist_append(hl, ct);
    }
    source src = {.data = rq->body, .size = rq->size};
    if (rq->mime) {
        curl_easy_setopt(c, CURLOPT_MIMEPOST, rq->mime);
    } else if (rq->chunked) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, &src);
        hl = curl_slist_append(hl, "Transfer-Encoding: chunked");
    } else if (rq->body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, rq->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->size);
    }
    if (rq->method && !strcmp(rq->method, "HEAD")) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (rq->method) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    r.rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    char *type = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &type);
    if (type) snprintf(r.content_type, sizeof r.content_type, "%s", type);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    return r;
}

static const char *jstr(const json_t *v) {
    const char *s = json_string_value(v);
    return s ? s : "";
}

static json_t *reply_json(const reply *r) {
    if (!r->body.data) return NULL;
    return json_loadb(r->body.data, r->body.size, 0, NULL);
}

static bool has_header_line(const reply *r, const char *line) {
    if (!r->headers.data) return false;
    return strcasestr(r->headers.data, line) != NULL;
}

/* The error code of a {"error": {"code": ...}} reply, or "" (static buffer). */
static const char *error_code(const reply *r) {
    static _Thread_local char code[64];
    code[0] = '\0';
    json_t *j = reply_json(r);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    if (c) snprintf(code, sizeof code, "%s", c);
    json_decref(j);
    return code;
}

/* ---- the test handler ------------------------------------------------------------------------ */

typedef struct count_stream {
    int n, next, calls;
    atomic_int *freed;
} count_stream;

/* "data: i\n\n" for i < n, with a "nothing yet" between events. */
static ssize_t count_next(void *arg, char *out, size_t max) {
    count_stream *cs = arg;
    cs->calls++;
    if (cs->next >= cs->n) return -1;
    if (cs->calls % 2 == 0) return 0;
    int len = snprintf(out, max, "data: %d\n\n", cs->next);
    cs->next++;
    return len;
}

/* An endless stream of events, one every 5 ms. */
static ssize_t forever_next(void *arg, char *out, size_t max) {
    sleep_ms(5);
    return snprintf(out, max, "data: tick\n\n");
}

/* One event, then nothing ever again (the layer must notice a client that leaves). */
static ssize_t silent_next(void *arg, char *out, size_t max) {
    count_stream *cs = arg;
    if (cs->calls++ == 0) return snprintf(out, max, "data: hello\n\n");
    return 0;
}

static void stream_done(void *arg) {
    count_stream *cs = arg;
    atomic_fetch_add(cs->freed, 1);
    free(cs);
}

static void test_handler(void *app, const fl_http_request *req, fl_http_response *res) {
    const char *p = req->path;
    if (!strcmp(p, "/echo")) {
        const char *missing = fl_http_query(req, "missing");
        const char *q = fl_http_query(req, "q"), *x = fl_http_header(req, "X-Test");
        json_t *o = json_object();
        json_object_set_new(o, "method", json_string(req->method));
        json_object_set_new(o, "path", json_string(req->path));
        json_object_set_new(o, "q", q ? json_string(q) : json_null());
        json_object_set_new(o, "missing", missing ? json_string(missing) : json_null());
        json_object_set_new(o, "auth", req->authorization ? json_string(req->authorization) : json_null());
        json_object_set_new(o, "x_test", x ? json_string(x) : json_null());
        json_object_set_new(o, "remote", json_string(req->remote_addr));
        json_object_set_new(o, "body_size", json_integer((json_int_t)req->body_size));
        fl_http_reply_json(res, 200, o);
    } else if (!strcmp(p, "/json")) {
        atomic_fetch_add(&json_calls, 1);
        json_error_t jerr;
        json_t *v = req->body ? json_loadb((const char *)req->body, req->body_size, 0, &jerr) : NULL;
        if (!v) {
            fl_http_reply_error(res, 400, "invalid_input", "body is not JSON");
            return;
        }
        bool terminated = req->body[req->body_size] == '\0';
        json_t *o = json_pack("{s:o,s:I,s:b}", "got", v, "size", (json_int_t)req->body_size, "nul", terminated);
        fl_http_reply_json(res, 200, o);
    } else if (!strcmp(p, "/upload")) {
        atomic_fetch_add(&upload_calls, 1);
        json_t *parts = json_array();
        for (size_t i = 0; i < req->n_parts; i++) {
            const fl_http_part *part = &req->parts[i];
            char hash[32];
            snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a(part->data, part->size));
            json_t *o = json_pack("{s:s,s:I,s:s,s:b}", "name", part->name, "size", (json_int_t)part->size,
                                  "fnv", hash, "nul", part->data[part->size] == '\0');
            if (part->filename) json_object_set_new(o, "filename", json_string(part->filename));
            if (part->content_type) json_object_set_new(o, "content_type", json_string(part->content_type));
            if (!part->filename) json_object_set_new(o, "value", json_stringn((const char *)part->data, part->size));
            json_array_append_new(parts, o);
        }
        const fl_http_part *note = fl_http_part_get(req, "note");
        json_t *o = json_pack("{s:o,s:b,s:b}", "parts", parts, "found_note", note != NULL, "has_body",
                              req->body != NULL);
        fl_http_reply_json(res, 200, o);
    } else if (!strcmp(p, "/binary")) {
        unsigned char *bytes = make_bytes(BINARY_SIZE, 7);
        fl_http_reply_bytes(res, 200, "application/octet-stream", bytes, BINARY_SIZE);
        free(bytes);
    } else if (!strcmp(p, "/stream") || !strcmp(p, "/forever") || !strcmp(p, "/silent")) {
        count_stream *cs = calloc(1, sizeof *cs);
        const char *n = fl_http_query(req, "n");
        cs->n = n ? atoi(n) : 10;
        bool counted = !strcmp(p, "/stream");
        cs->freed = counted ? &streams_freed : &forever_freed;
        res->status = 200;
        res->content_type = "text/event-stream";
        res->stream = counted ? count_next : !strcmp(p, "/forever") ? forever_next : silent_next;
        res->stream_arg = cs;
        res->stream_free = stream_done;
    } else if (!strcmp(p, "/slow")) {
        const char *ms = fl_http_query(req, "ms");
        sleep_ms(ms ? atoi(ms) : 100);
        fl_http_reply_json(res, 200, json_pack("{s:b}", "slept", 1));
    } else if (!strcmp(p, "/headers")) {
        fl_http_reply_bytes(res, 201, "text/plain", "made", 4);
        fl_http_add_header(res, "X-Custom", "yes");
        fl_http_add_header(res, "Location", "/v1/things/1");
    } else if (!strcmp(p, "/badstatus")) {
        fl_http_reply_bytes(res, 7, "text/plain", "x", 1);
    } else if (!strcmp(p, "/nulljson")) {
        fl_http_reply_json(res, 200, json_pack("{s:s}", "bad", "\xff\xfe not UTF-8"));
    } else if (!strcmp(p, "/healthz")) {
        fl_http_reply_json(res, 200, json_pack("{s:b}", "ok", 1));
    } else if (!strcmp(p, "/count")) {
        size_t aligned = 0;
        for (size_t i = 0; i < req->n_parts; i++) aligned += ((uintptr_t)req->parts[i].data % 16) == 0;
        fl_http_reply_json(res, 200, json_pack("{s:I,s:I}", "parts", (json_int_t)req->n_parts, "aligned",
                                               (json_int_t)aligned));
    } else if (!strcmp(p, "/ctx")) {
        const int *c = req->ctx;
        fl_http_reply_json(res, 200, json_pack("{s:i}", "ctx", c ? *c : -1));
    } else if (!strcmp(p, "/deny") || !strcmp(p, "/nobody") || !strcmp(p, "/jsononly")) {
        if (!strcmp(p, "/deny")) atomic_fetch_add(&denied_handled, 1);
        fl_http_reply_json(res, 200, json_pack("{s:I}", "body_size", (json_int_t)req->body_size));
    } else if (!strcmp(p, "/patherr")) {
        fl_http_reply_error(res, 500, "io_error", "cannot write /var/lib/flashlora/state/uploads/x.zip: denied; see "
                            "/v1/jobs/job_1 and (/srv/data/model.safetensors)");
    } else if (!strcmp(p, "/nothing")) {
        /* sets nothing: the layer answers 500 */
    } else {
        fl_http_reply_error(res, 404, "not_found", "no route for %s %s", req->method, req->path);
    }
}

static void ctx_release(void *ctx) {
    atomic_fetch_add(&ctx_freed, 1);
    free(ctx);
}

/* Admission of the test servers: /deny is refused (401) from its head, /nobody takes no body,
 * /jsononly no multipart, /ctx gets a context; everything else is admitted as configured. */
static bool test_admit(void *app, const fl_http_request *req, fl_http_admission *adm, fl_http_response *res) {
    atomic_fetch_add(&admit_calls, 1);
    if (!strcmp(req->path, "/deny")) {
        fl_http_reply_error(res, 401, "unauthorized", "no key (declared %lld bytes)", (long long)req->content_length);
        fl_http_add_header(res, "WWW-Authenticate", "Bearer");
        return false;
    }
    if (!strcmp(req->path, "/nobody")) adm->max_body_bytes = 0;
    if (!strcmp(req->path, "/jsononly")) adm->allow_multipart = false;
    if (!strcmp(req->path, "/ctx")) {
        int *c = malloc(sizeof *c);
        *c = 42;
        adm->ctx = c;
        adm->ctx_free = ctx_release;
    }
    return true;
}

/* ---- raw sockets --------------------------------------------------------------------------------- */

/* A connection to port from a loopback address of our choice ("127.0.0.2"); -1 on failure. */
static int connect_from(const char *from, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in src = {.sin_family = AF_INET};
    inet_pton(AF_INET, from, &src.sin_addr);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

typedef struct raw_reply {
    int status; /* 0: no answer */
    char head[2048];
    char body[4096];
} raw_reply;

/* Read what the server sends on fd until it closes or timeout_ms pass; parse the status line. */
static raw_reply read_raw(int fd, int timeout_ms) {
    raw_reply r;
    memset(&r, 0, sizeof r);
    char data[8192];
    size_t len = 0;
    double deadline = now_s() + timeout_ms / 1000.0;
    while (len < sizeof data - 1) {
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0) break;
        struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ssize_t n = recv(fd, data + len, sizeof data - 1 - len, 0);
        if (n <= 0) break;
        len += (size_t)n;
    }
    data[len] = '\0';
    char *end = strstr(data, "\r\n\r\n");
    if (!end || sscanf(data, "HTTP/1.%*d %d", &r.status) != 1) return r;
    snprintf(r.head, sizeof r.head, "%.*s", (int)(end - data), data);
    snprintf(r.body, sizeof r.body, "%s", end + 4);
    return r;
}

/* Send a whole request (or head) on a fresh connection and read the answer. */
static raw_reply raw_exchange(int port, const char *data, size_t size) {
    int fd = connect_from("127.0.0.1", port);
    if (fd < 0) return (raw_reply){0};
    send(fd, data, size, MSG_NOSIGNAL);
    raw_reply r = read_raw(fd, 3000);
    close(fd);
    return r;
}

static const char *raw_code(const raw_reply *r) {
    static _Thread_local char code[64];
    code[0] = '\0';
    json_t *j = json_loads(r->body, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    if (c) snprintf(code, sizeof code, "%s", c);
    json_decref(j);
    return code;
}

static bool raw_is_json_error(const raw_reply *r, int status) {
    return r->status == status && strcasestr(r->head, "Content-Type: application/json") && raw_code(r)[0];
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_start_errors(void) {
    FL_EXPECT(fl_http_port(server) > 0);
    fl_http_config cfg = fl_http_config_default();
    fl_http_server *s = NULL;
    fl_error err = {0};
    cfg.bind_address = "not-an-address";
    FL_EXPECT(fl_http_start(&cfg, test_handler, NULL, &s, &err) != 0 && s == NULL && err.code == FL_EINVAL);
    cfg.bind_address = "127.0.0.1";
    cfg.port = fl_http_port(server); /* taken */
    fl_error_clear(&err);
    FL_EXPECT(fl_http_start(&cfg, test_handler, NULL, &s, &err) != 0 && s == NULL && err.code == FL_EIO);
    cfg.port = 70000;
    FL_EXPECT(fl_http_start(&cfg, test_handler, NULL, &s, &err) != 0 && s == NULL);
}

static void test_get_query_and_headers(void) {
    const char *headers[] = {"Authorization: Bearer secret-token", "X-Test: 42", NULL};
    reply r = perform(&(request){.path = "/echo?q=hello%20world&n=5", .headers = headers});
    FL_EXPECTF(r.rc == CURLE_OK && r.status == 200, "rc %d status %ld", r.rc, r.status);
    FL_EXPECT(!strncmp(r.content_type, "application/json", 16));
    json_t *j = reply_json(&r);
    FL_EXPECT(j != NULL);
    FL_EXPECT(!strcmp(jstr(json_object_get(j, "method")), "GET"));
    FL_EXPECT(!strcmp(jstr(json_object_get(j, "path")), "/echo"));
    FL_EXPECT(!strcmp(jstr(json_object_get(j, "q")), "hello world"));
    FL_EXPECT(json_is_null(json_object_get(j, "missing")));
    FL_EXPECT(!strcmp(jstr(json_object_get(j, "auth")), "Bearer secret-token"));
    FL_EXPECT(!strcmp(jstr(json_object_get(j, "x_test")), "42"));
    FL_EXPECT(!strcmp(jstr(json_object_get(j, "remote")), "127.0.0.1"));
    FL_EXPECT(json_integer_value(json_object_get(j, "body_size")) == 0);
    json_decref(j);
    reply_free(&r);

    /* an unknown route is the handler's business */
    r = perform(&(request){.path = "/nowhere", .method = "DELETE"});
    FL_EXPECT(r.status == 404 && !strcmp(error_code(&r), "not_found"));
    reply_free(&r);
}

static void test_post_json(void) {
    const char *text = "{\"a\":[1,2,3],\"s\":\"h\\u00e9llo\",\"nested\":{\"t\":true}}";
    json_t *want = json_loads(text, 0, NULL);
    for (int chunked = 0; chunked < 2; chunked++) {
        int before = atomic_load(&json_calls);
        reply r = perform(&(request){.path = "/json", .body = text, .size = strlen(text), .chunked = chunked,
                                     .content_type = "application/json"});
        FL_EXPECTF(r.rc == CURLE_OK && r.status == 200, "chunked %d: rc %d status %ld", chunked, r.rc, r.status);
        json_t *j = reply_json(&r);
        FL_EXPECT(json_equal(json_object_get(j, "got"), want));
        FL_EXPECT(json_integer_value(json_object_get(j, "size")) == (json_int_t)strlen(text));
        FL_EXPECT(json_is_true(json_object_get(j, "nul")));
        FL_EXPECT(atomic_load(&json_calls) == before + 1);
        json_decref(j);
        reply_free(&r);
    }
    json_decref(want);

    /* a body of exactly the limit is accepted */
    char *body = malloc(MAX_BODY + 1);
    memset(body, ' ', MAX_BODY);
    memcpy(body, "[1]", 3);
    reply r = perform(&(request){.path = "/json", .body = body, .size = MAX_BODY, .content_type = "application/json"});
    FL_EXPECTF(r.status == 200, "status %ld", r.status);
    reply_free(&r);
    free(body);
}

static void test_multipart_upload(void) {
    size_t file_size = 3u << 20;
    unsigned char *file = make_bytes(file_size, 3);
    char want_hash[32];
    snprintf(want_hash, sizeof want_hash, "%016llx", (unsigned long long)fnv1a(file, file_size));
    int before = atomic_load(&upload_calls);

    CURL *dummy = curl_easy_init();
    curl_mime *mime = curl_mime_init(dummy);
    curl_mimepart *part = curl_mime_addpart(mime);
    curl_mime_name(part, "note");
    curl_mime_data(part, "a plain field", CURL_ZERO_TERMINATED);
    part = curl_mime_addpart(mime);
    curl_mime_name(part, "file");
    curl_mime_filename(part, "weights.safetensors");
    curl_mime_type(part, "application/octet-stream");
    curl_mime_data(part, (const char *)file, file_size);
    part = curl_mime_addpart(mime);
    curl_mime_name(part, "empty");
    curl_mime_data(part, "", 0);
    part = curl_mime_addpart(mime);
    curl_mime_name(part, "last");
    curl_mime_data(part, "z", 1);

    reply r = perform(&(request){.path = "/upload", .mime = mime});
    FL_EXPECTF(r.rc == CURLE_OK && r.status == 200, "rc %d status %ld", r.rc, r.status);
    json_t *j = reply_json(&r);
    json_t *parts = json_object_get(j, "parts");
    FL_EXPECTF(json_array_size(parts) == 4, "%zu parts", json_array_size(parts));
    if (json_array_size(parts) == 4) {
        json_t *p0 = json_array_get(parts, 0), *p1 = json_array_get(parts, 1);
        json_t *p2 = json_array_get(parts, 2), *p3 = json_array_get(parts, 3);
        FL_EXPECT(!strcmp(jstr(json_object_get(p0, "name")), "note"));
        FL_EXPECT(!strcmp(jstr(json_object_get(p0, "value")), "a plain field"));
        FL_EXPECT(json_object_get(p0, "filename") == NULL);
        FL_EXPECT(!strcmp(jstr(json_object_get(p1, "name")), "file"));
        FL_EXPECT(!strcmp(jstr(json_object_get(p1, "filename")), "weights.safetensors"));
        FL_EXPECT(!strcmp(jstr(json_object_get(p1, "content_type")), "application/octet-stream"));
        FL_EXPECT(json_integer_value(json_object_get(p1, "size")) == (json_int_t)file_size);
        FL_EXPECT(!strcmp(jstr(json_object_get(p1, "fnv")), want_hash));
        FL_EXPECT(json_is_true(json_object_get(p1, "nul")));
        FL_EXPECT(!strcmp(jstr(json_object_get(p2, "name")), "empty"));
        FL_EXPECT(json_integer_value(json_object_get(p2, "size")) == 0);
        FL_EXPECT(!strcmp(jstr(json_object_get(p3, "value")), "z"));
    }
    FL_EXPECT(json_is_true(json_object_get(j, "found_note")));
    FL_EXPECT(json_is_false(json_object_get(j, "has_body")));
    FL_EXPECT(atomic_load(&upload_calls) == before + 1);
    json_decref(j);
    reply_free(&r);
    curl_mime_free(mime);
    curl_easy_cleanup(dummy);
    free(file);
}

static void expect_413(const reply *r, const char *what) {
    FL_EXPECTF(r->status == 413, "%s: rc %d status %ld", what, r->rc, r->status);
    FL_EXPECTF(!strcmp(error_code(r), "limit_exceeded"), "%s: error body %s", what,
               r->body.data ? r->body.data : "(none)");
}

static void test_body_over_limit(void) {
    size_t size = 100 * 1024;
    char *body = malloc(size);
    memset(body, 'x', size);
    int before = atomic_load(&json_calls);
    reply r = perform(&(request){.path = "/json", .body = body, .size = size, .content_type = "application/json"});
    expect_413(&r, "Content-Length");
    reply_free(&r);
    r = perform(&(request){.path = "/json", .body = body, .size = size, .chunked = true,
                           .content_type = "application/json"});
    expect_413(&r, "chunked");
    reply_free(&r);
    /* one byte over, chunked */
    r = perform(&(request){.path = "/json", .body = body, .size = MAX_BODY + 1, .chunked = true,
                           .content_type = "application/json"});
    expect_413(&r, "chunked, one byte over");
    reply_free(&r);
    free(body);

    /* a client that keeps sending far past the limit is cut off without a reply */
    size_t flood = MAX_BODY + (17u << 20);
    body = calloc(1, flood);
    r = perform(&(request){.path = "/json", .body = body, .size = flood, .chunked = true,
                           .content_type = "application/json"});
    FL_EXPECTF(r.rc != CURLE_OK && r.status != 200, "flood: rc %d status %ld", r.rc, r.status);
    reply_free(&r);
    free(body);
    FL_EXPECT(atomic_load(&json_calls) == before); /* the handler never saw any of them */

    /* the server still serves afterwards */
    r = perform(&(request){.path = "/echo"});
    FL_EXPECT(r.status == 200);
    reply_free(&r);
}

static void test_upload_over_limit(void) {
    size_t size = 5u << 20;
    unsigned char *file = make_bytes(size, 5);
    int before = atomic_load(&upload_calls);
    for (int chunked = 0; chunked < 2; chunked++) {
        CURL *dummy = curl_easy_init();
        curl_mime *mime = curl_mime_init(dummy);
        curl_mimepart *part = curl_mime_addpart(mime);
        curl_mime_name(part, "file");
        curl_mime_filename(part, "big.bin");
        source src = {.data = file, .size = size};
        if (chunked) /* unknown size: curl sends the multipart body chunked */
            curl_mime_data_cb(part, -1, on_read, NULL, NULL, &src);
        else
            curl_mime_data(part, (const char *)file, size);
        reply r = perform(&(request){.path = "/upload", .mime = mime});
        expect_413(&r, chunked ? "multipart, chunked" : "multipart, Content-Length");
        reply_free(&r);
        curl_mime_free(mime);
        curl_easy_cleanup(dummy);
    }
    FL_EXPECT(atomic_load(&upload_calls) == before);
    free(file);
}

static void test_malformed_multipart(void) {
    int before = atomic_load(&upload_calls);
    reply r = perform(&(request){.path = "/upload", .body = "hello", .size = 5, .content_type = "multipart/form-data"});
    FL_EXPECTF(r.status == 400 && !strcmp(error_code(&r), "invalid_input"), "no boundary: status %ld", r.status);
    reply_free(&r);
    const char *cut = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue without an end";
    r = perform(&(request){.path = "/upload", .body = cut, .size = strlen(cut),
                           .content_type = "multipart/form-data; boundary=XyZ"});
    FL_EXPECTF(r.status == 400 && !strcmp(error_code(&r), "invalid_input"), "truncated: status %ld", r.status);
    reply_free(&r);
    FL_EXPECT(atomic_load(&upload_calls) == before);
}

static void test_binary_response(void) {
    reply r = perform(&(request){.path = "/binary"});
    FL_EXPECT(r.rc == CURLE_OK && r.status == 200);
    FL_EXPECT(!strcmp(r.content_type, "application/octet-stream"));
    unsigned char *want = make_bytes(BINARY_SIZE, 7);
    FL_EXPECTF(r.body.size == BINARY_SIZE && !memcmp(r.body.data, want, BINARY_SIZE), "got %zu bytes", r.body.size);
    free(want);
    reply_free(&r);

    r = perform(&(request){.path = "/headers", .method = "PUT", .body = "", .size = 0});
    FL_EXPECT(r.status == 201 && !strcmp(r.content_type, "text/plain"));
    FL_EXPECT(r.body.size == 4 && !memcmp(r.body.data, "made", 4));
    FL_EXPECT(has_header_line(&r, "X-Custom: yes") && has_header_line(&r, "Location: /v1/things/1"));
    reply_free(&r);
}

static void test_stream(void) {
    int before = atomic_load(&streams_freed);
    reply r = perform(&(request){.path = "/stream?n=40"});
    FL_EXPECTF(r.rc == CURLE_OK && r.status == 200, "rc %d status %ld", r.rc, r.status);
    FL_EXPECT(!strcmp(r.content_type, "text/event-stream"));
    FL_EXPECT(has_header_line(&r, "Cache-Control: no-cache"));
    char want[1024] = "";
    for (int i = 0; i < 40; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "data: %d\n\n", i);
    FL_EXPECTF(r.body.data && !strcmp(r.body.data, want), "stream body: %s", (r.body.data ? r.body.data : "(none)"));
    FL_EXPECT(wait_for(&streams_freed, before + 1, 3000));
    reply_free(&r);
}

static void test_stream_client_leaves(void) {
    /* a stream that keeps writing, and one that stays silent after its first event */
    const char *paths[] = {"/forever", "/silent"};
    for (int i = 0; i < 2; i++) {
        int before = atomic_load(&forever_freed);
        reply r = perform(&(request){.path = paths[i], .abort_after = i == 0 ? 200 : 1});
        FL_EXPECTF(r.rc == CURLE_WRITE_ERROR && r.status == 200, "%s: rc %d status %ld", paths[i], r.rc, r.status);
        FL_EXPECTF(wait_for(&forever_freed, before + 1, 3000), "%s: stream_free not called after the client left",
                   paths[i]);
        reply_free(&r);
    }
}

static void test_nothing_is_500(void) {
    const char *paths[] = {"/nothing", "/badstatus", "/nulljson"};
    for (int i = 0; i < 3; i++) {
        reply r = perform(&(request){.path = paths[i]});
        FL_EXPECTF(r.status == 500 && !strcmp(error_code(&r), "internal_error"), "%s: status %ld", paths[i], r.status);
        reply_free(&r);
    }
}

/* Connect to the server and send raw bytes, then hang up. */
static void send_and_leave(const char *head, size_t body_bytes) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fl_http_port(server)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        FL_EXPECTF(false, "connect failed");
        close(fd);
        return;
    }
    FL_EXPECT(send(fd, head, strlen(head), MSG_NOSIGNAL) == (ssize_t)strlen(head));
    char chunk[1000];
    memset(chunk, 'a', sizeof chunk);
    for (size_t sent = 0; sent < body_bytes; sent += sizeof chunk) send(fd, chunk, sizeof chunk, MSG_NOSIGNAL);
    sleep_ms(50);
    close(fd);
}

static void test_client_leaves_mid_upload(void) {
    int before = atomic_load(&json_calls) + atomic_load(&upload_calls);
    send_and_leave("POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000\r\n\r\n",
                   5000);
    send_and_leave("POST /json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n", 3000);
    send_and_leave("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                   "Content-Length: 900000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"f\"; "
                   "filename=\"f.bin\"\r\n\r\n",
                   20000);
    send_and_leave("GET /echo HTTP/1.1\r\nHo", 0); /* headers cut short */
    reply r = perform(&(request){.path = "/echo"});
    FL_EXPECT(r.status == 200);
    reply_free(&r);
    FL_EXPECT(atomic_load(&json_calls) + atomic_load(&upload_calls) == before);
}

typedef struct worker {
    int id;
    int failures;
} worker;

static void *client_thread(void *arg) {
    worker *w = arg;
    reply r = perform(&(request){.path = "/slow?ms=300"});
    if (r.status != 200) w->failures++;
    reply_free(&r);
    for (int i = 0; i < 5; i++) {
        char path[64], want[32];
        snprintf(path, sizeof path, "/echo?q=c%d-%d", w->id, i);
        snprintf(want, sizeof want, "c%d-%d", w->id, i);
        r = perform(&(request){.path = path});
        json_t *j = reply_json(&r);
        if (r.status != 200 || strcmp(jstr(json_object_get(j, "q")), want)) w->failures++;
        json_decref(j);
        reply_free(&r);
        char body[64];
        int n = snprintf(body, sizeof body, "{\"id\":%d,\"i\":%d}", w->id, i);
        r = perform(&(request){.path = "/json", .body = body, .size = (size_t)n, .content_type = "application/json"});
        j = reply_json(&r);
        json_t *got = json_object_get(j, "got");
        if (r.status != 200 || json_integer_value(json_object_get(got, "id")) != w->id ||
            json_integer_value(json_object_get(got, "i")) != i)
            w->failures++;
        json_decref(j);
        reply_free(&r);
    }
    return NULL;
}

static void test_concurrent_clients(void) {
    enum { N = 16 };
    pthread_t threads[N];
    worker workers[N];
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        workers[i] = (worker){.id = i};
        pthread_create(&threads[i], NULL, client_thread, &workers[i]);
    }
    int failures = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        failures += workers[i].failures;
    }
    double elapsed = now_s() - t0;
    FL_EXPECTF(failures == 0, "%d failed requests", failures);
    /* 16 handlers sleeping 300 ms each would take 4.8 s one after another */
    FL_EXPECTF(elapsed < 3.0, "16 clients took %.2f s: handlers did not run concurrently", elapsed);
}

typedef struct stop_client {
    char url[128];
    CURLcode rc;
    size_t got;
} stop_client;

static size_t count_bytes(char *p, size_t size, size_t n, void *ud) {
    *(size_t *)ud += size * n;
    return size * n;
}

static void *stream_reader(void *arg) {
    stop_client *sc = arg;
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, sc->url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, count_bytes);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sc->got);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    sc->rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    return NULL;
}

/* Stop a server while streams are open: one writing, one silent. */
static void test_stop_with_open_stream(void) {
    fl_http_config cfg = fl_http_config_default();
    cfg.port = 0;
    fl_http_server *s = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_http_start(&cfg, test_handler, NULL, &s, &err) == 0);
    if (!s) return;
    FL_EXPECT(!fl_http_stopping(s));
    int before = atomic_load(&forever_freed);
    stop_client sc[2];
    memset(sc, 0, sizeof sc);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        snprintf(sc[i].url, sizeof sc[i].url, "http://127.0.0.1:%d/%s", fl_http_port(s), i ? "silent" : "forever");
        pthread_create(&t[i], NULL, stream_reader, &sc[i]);
    }
    sleep_ms(300);
    double t0 = now_s();
    fl_http_stop(s);
    double took = now_s() - t0;
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    FL_EXPECTF(took < 2.0, "stop took %.2f s", took);
    FL_EXPECTF(sc[0].got > 0 && sc[1].got > 0, "the streams delivered nothing before the stop");
    FL_EXPECT(atomic_load(&forever_freed) == before + 2);
}

/* ---- the front door and admission ------------------------------------------------------------------ */

static void test_refused_from_the_head(void) {
    int port = fl_http_port(server);
    int before = atomic_load(&admit_calls);
    /* declares 50 MB and sends none of it: the answer must come from the head alone */
    const char *head = "POST /deny HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                       "Content-Length: 50000000\r\n\r\n";
    double t0 = now_s();
    raw_reply r = raw_exchange(port, head, strlen(head));
    FL_EXPECTF(raw_is_json_error(&r, 401) && !strcmp(raw_code(&r), "unauthorized"), "status %d: %s", r.status, r.body);
    FL_EXPECT(strcasestr(r.head, "WWW-Authenticate: Bearer") != NULL);
    FL_EXPECT(strstr(r.body, "50000000") != NULL); /* admission saw the declared length */
    FL_EXPECTF(now_s() - t0 < 2.0, "took %.2f s", now_s() - t0);
    FL_EXPECT(atomic_load(&admit_calls) == before + 1 && atomic_load(&denied_handled) == 0);
}

static void test_admitted_limits(void) {
    reply r = perform(&(request){.path = "/nobody", .body = "{}", .size = 2, .content_type = "application/json"});
    expect_413(&r, "a route admitted without a body");
    reply_free(&r);
    r = perform(&(request){.path = "/nobody", .body = "{}", .size = 2, .chunked = true});
    expect_413(&r, "a chunked body where none is admitted");
    reply_free(&r);
    r = perform(&(request){.path = "/nobody"});
    FL_EXPECT(r.status == 200);
    reply_free(&r);
    const char *form = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--\r\n";
    r = perform(&(request){.path = "/jsononly", .body = form, .size = strlen(form),
                           .content_type = "multipart/form-data; boundary=XyZ"});
    FL_EXPECTF(r.status == 415 && !strcmp(error_code(&r), "unsupported_media_type"), "status %ld", r.status);
    reply_free(&r);
    r = perform(&(request){.path = "/upload", .body = form, .size = strlen(form), .content_type = "multipart/mixed; boundary=XyZ"});
    FL_EXPECTF(r.status == 415, "multipart/mixed: status %ld", r.status);
    reply_free(&r);
    int freed = atomic_load(&ctx_freed);
    r = perform(&(request){.path = "/ctx"});
    json_t *j = reply_json(&r);
    FL_EXPECTF(r.status == 200 && json_integer_value(json_object_get(j, "ctx")) == 42, "status %ld", r.status);
    json_decref(j);
    reply_free(&r);
    FL_EXPECT(wait_for(&ctx_freed, freed + 1, 2000));
    /* a context of a request whose body is refused is released too */
    r = perform(&(request){.path = "/ctx", .body = "x", .size = 1, .chunked = true});
    FL_EXPECT(r.status == 200);
    reply_free(&r);
    FL_EXPECT(wait_for(&ctx_freed, freed + 2, 2000));
}

static void test_head_requests(void) {
    reply r = perform(&(request){.path = "/echo", .method = "HEAD"});
    FL_EXPECTF(r.rc == CURLE_OK && r.status == 200 && r.body.size == 0, "rc %d status %ld size %zu", r.rc, r.status,
               r.body.size);
    FL_EXPECT(has_header_line(&r, "Content-Length: ") && !has_header_line(&r, "Content-Length: 0"));
    reply_free(&r);
    int before = atomic_load(&streams_freed);
    double t0 = now_s();
    r = perform(&(request){.path = "/stream?n=1000000", .method = "HEAD"});
    FL_EXPECTF(r.status == 200 && r.body.size == 0 && !strcmp(r.content_type, "text/event-stream"), "status %ld",
               r.status);
    FL_EXPECT(now_s() - t0 < 2.0);
    FL_EXPECT(wait_for(&streams_freed, before + 1, 2000)); /* released without being started */
    reply_free(&r);
}

static void test_bad_heads(void) {
    int port = fl_http_port(server);
    char big[48 * 1024];
    struct {
        const char *name;
        const char *data;
        int status;
    } cases[] = {
        {"HTTP/2.0", "GET /echo HTTP/2.0\r\nHost: t\r\n\r\n", 505},
        {"HTTP/0.9", "GET /echo HTTP/0.9\r\nHost: t\r\n\r\n", 505},
        {"garbage", "HELLO\r\n\r\n", 400},
        {"binary", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400},
        {"two spaces", "GET  /echo HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"no Host", "GET /echo HTTP/1.1\r\n\r\n", 400},
        {"two Hosts", "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        {"bare CR", "GET /echo HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400},
        {"folded", "GET /echo HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  2\r\n\r\n", 400},
        {"space before colon", "GET /echo HTTP/1.1\r\nHost : t\r\n\r\n", 400},
        {"control byte", "GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x01z\r\n\r\n", 400},
        {"not a path", "GET http://x/echo HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"two Content-Lengths", "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[1]", 400},
        {"Content-Length list", "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\n[1]", 400},
        {"Content-Length and chunked",
         "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1]\r\n0\r\n\r\n", 400},
        {"gzip coding", "POST /json HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
        {"huge Content-Length", "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n", 413},
        {"headers too large", NULL, 431},
        {"URI too long", NULL, 414},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *data = cases[i].data;
        if (!data && cases[i].status == 431) {
            int n = snprintf(big, sizeof big, "GET /echo HTTP/1.1\r\nHost: t\r\n");
            while (n < 20000) n += snprintf(big + n, sizeof big - (size_t)n, "X-Pad-%d: %0100d\r\n", n, 0);
            snprintf(big + n, sizeof big - (size_t)n, "\r\n");
            data = big;
        } else if (!data) {
            int n = snprintf(big, sizeof big, "GET /echo?q=");
            memset(big + n, 'a', 20000);
            snprintf(big + n + 20000, sizeof big - (size_t)n - 20000, " HTTP/1.1\r\nHost: t\r\n\r\n");
            data = big;
        }
        size_t size = strlen(data);
        if (!strcmp(cases[i].name, "binary")) size = 11;
        raw_reply r = raw_exchange(port, data, size);
        FL_EXPECTF(raw_is_json_error(&r, cases[i].status), "%s: status %d (want %d) %s", cases[i].name, r.status,
                   cases[i].status, r.body);
    }
    /* equal Content-Lengths frame the body as one; bare LF line ends and HTTP/1.0 without Host are fine */
    const char *same = "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n[1]";
    raw_reply r = raw_exchange(port, same, strlen(same));
    FL_EXPECTF(r.status == 200, "equal Content-Lengths: status %d %s", r.status, r.body);
    const char *lf = "GET /echo HTTP/1.1\nHost: t\n\n";
    r = raw_exchange(port, lf, strlen(lf));
    FL_EXPECTF(r.status == 200, "bare LF: status %d", r.status);
    const char *old = "GET /echo HTTP/1.0\r\n\r\n";
    r = raw_exchange(port, old, strlen(old));
    FL_EXPECTF(r.status == 200 && strcasestr(r.head, "Connection: close"), "HTTP/1.0: status %d", r.status);
}

static void test_quoted_boundary(void) {
    const char *body = "preamble\r\n--a b:c\r\nContent-Disposition: form-data; name=\"x\\\"y\"\r\n\r\none\r\n"
                       "--a b:c\r\ncontent-disposition: FORM-DATA; filename=\"f.bin\"; name=file\r\n"
                       "Content-Type: application/octet-stream\r\n\r\ntwo\r\n--a b:c--\r\nepilogue";
    reply r = perform(&(request){.path = "/upload", .body = body, .size = strlen(body),
                                 .content_type = "multipart/form-data; BOUNDARY=\"a b:c\"; charset=utf-8"});
    json_t *j = reply_json(&r);
    json_t *parts = json_object_get(j, "parts");
    FL_EXPECTF(r.status == 200 && json_array_size(parts) == 2, "status %ld %s", r.status, r.body.data);
    if (json_array_size(parts) == 2) {
        json_t *p0 = json_array_get(parts, 0), *p1 = json_array_get(parts, 1);
        FL_EXPECT(!strcmp(jstr(json_object_get(p0, "name")), "x\"y") && !strcmp(jstr(json_object_get(p0, "value")), "one"));
        FL_EXPECT(!strcmp(jstr(json_object_get(p1, "name")), "file") &&
                  !strcmp(jstr(json_object_get(p1, "filename")), "f.bin") &&
                  !strcmp(jstr(json_object_get(p1, "content_type")), "application/octet-stream") &&
                  json_integer_value(json_object_get(p1, "size")) == 3 && json_is_true(json_object_get(p1, "nul")));
    }
    json_decref(j);
    reply_free(&r);
}

/* A form of n parts, each with a one-byte value, and the given extra header bytes in the first. */
static char *make_form(size_t n, size_t pad, size_t *size) {
    size_t cap = n * 64 + pad + 256, len = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        len += (size_t)snprintf(out + len, cap - len, "--BB\r\nContent-Disposition: form-data; name=\"p\"\r\n");
        if (i == 0 && pad) {
            len += (size_t)snprintf(out + len, cap - len, "X-Pad: ");
            memset(out + len, 'a', pad);
            len += pad;
            len += (size_t)snprintf(out + len, cap - len, "\r\n");
        }
        len += (size_t)snprintf(out + len, cap - len, "\r\n%c\r\n", 'a' + (int)(i % 26));
    }
    len += (size_t)snprintf(out + len, cap - len, "--BB--\r\n");
    *size = len;
    return out;
}

static void test_part_limits(void) {
    size_t size = 0;
    char *form = make_form(64, 0, &size);
    reply r = perform(&(request){.path = "/count", .body = form, .size = size, .content_type = "multipart/form-data; boundary=BB"});
    json_t *j = reply_json(&r);
    FL_EXPECTF(r.status == 200 && json_integer_value(json_object_get(j, "parts")) == 64 &&
               json_integer_value(json_object_get(j, "aligned")) == 64, "64 parts: status %ld %s", r.status, r.body.data);
    json_decref(j);
    reply_free(&r);
    free(form);
    form = make_form(65, 0, &size);
    r = perform(&(request){.path = "/count", .body = form, .size = size, .content_type = "multipart/form-data; boundary=BB"});
    FL_EXPECTF(r.status == 413 && strstr(r.body.data, "64 parts"), "65 parts: status %ld", r.status);
    reply_free(&r);
    free(form);
    form = make_form(1, 9000, &size);
    r = perform(&(request){.path = "/count", .body = form, .size = size, .content_type = "multipart/form-data; boundary=BB"});
    FL_EXPECTF(r.status == 413 && strstr(r.body.data, "headers exceed"), "a 9 KB part header: status %ld", r.status);
    reply_free(&r);
    free(form);
    const char *nameless = "--BB\r\nContent-Disposition: form-data\r\n\r\nx\r\n--BB--\r\n";
    r = perform(&(request){.path = "/count", .body = nameless, .size = strlen(nameless),
                           .content_type = "multipart/form-data; boundary=BB"});
    FL_EXPECTF(r.status == 400 && !strcmp(error_code(&r), "invalid_input"), "a part without a name: status %ld", r.status);
    reply_free(&r);
}

static long proc_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atol(line + n + 1);
    if (f) fclose(f);
    return v;
}

/* 100,000 one-byte parts in 5 MB: the server's part costs a few dozen bytes each, not a buffer. */
static void test_form_memory(void) {
    fl_http_config cfg = fl_http_config_default();
    cfg.port = 0;
    cfg.max_upload_bytes = 8u << 20;
    cfg.max_parts = 200000;
    fl_http_server *s = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_http_start(&cfg, test_handler, NULL, &s, &err) == 0);
    if (!s) return;
    size_t size = 0, n = 100000;
    char *form = make_form(n, 0, &size);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/count", fl_http_port(s));
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* peak RSS := current RSS */
    if (f) {
        fputs("5", f);
        fclose(f);
    }
    long rss = proc_kib("VmRSS");
    CURL *c = curl_easy_init();
    buf out = {0};
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: multipart/form-data; boundary=BB");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)size);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    long grown = proc_kib("VmHWM") - rss;
    json_t *j = out.data ? json_loads(out.data, 0, NULL) : NULL;
    FL_EXPECTF(rc == CURLE_OK && status == 200 && json_integer_value(json_object_get(j, "parts")) == (json_int_t)n,
               "rc %d status %ld", rc, status);
    /* the body once (the client's copy is older) plus at most 128 bytes per part and 4 MiB;
     * twice that under AddressSanitizer (red zones, freed memory held in quarantine) */
    long bound = (long)(size / 1024) + (long)(n * 128 / 1024) + 4096;
#if defined(__SANITIZE_ADDRESS__)
    bound *= 2;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    bound *= 2;
#endif
#endif
    printf("    %zu parts in %.1f MiB: peak RSS grew %.1f MiB (bound %.1f MiB)\n", n, size / 1048576.0, grown / 1024.0,
           bound / 1024.0);
    FL_EXPECTF(grown < bound, "peak RSS grew %ld KiB, bound %ld KiB", grown, bound);
    json_decref(j);
    free(out.data);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    free(form);
    fl_http_stop(s);
}

static void test_paths_redacted(void) {
    reply r = perform(&(request){.path = "/patherr"});
    json_t *j = reply_json(&r);
    const char *msg = jstr(json_object_get(json_object_get(j, "error"), "message"));
    FL_EXPECTF(r.status == 500 && !strstr(msg, "/var/lib") && !strstr(msg, "/srv/") && strstr(msg, "<path>") &&
               strstr(msg, "/v1/jobs/job_1"), "message: %s", msg);
    json_decref(j);
    reply_free(&r);
}

/* ---- a small server under slow and greedy clients --------------------------------------------------- */

typedef struct slow_call {
    int port;
    long status;
} slow_call;

static void *slow_request(void *arg) {
    slow_call *sc = arg;
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/slow?ms=1500", sc->port);
    CURL *c = curl_easy_init();
    buf out = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &sc->status);
    free(out.data);
    curl_easy_cleanup(c);
    return NULL;
}

static long get_status(int port, const char *path, double *seconds) {
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    buf out = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    double t0 = now_s();
    curl_easy_perform(c);
    if (seconds) *seconds = now_s() - t0;
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    free(out.data);
    curl_easy_cleanup(c);
    return status;
}

static void test_front_door_limits(void) {
    fl_http_config cfg = fl_http_config_default();
    cfg.port = 0;
    cfg.max_connections = 2;
    cfg.ops_reserve = 1;
    cfg.max_client_connections = 4;
    cfg.max_pending_heads = 8;
    cfg.header_timeout_s = 1;
    fl_http_server *s = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_http_start(&cfg, test_handler, NULL, &s, &err) == 0);
    if (!s) return;
    int port = fl_http_port(s);

    /* three clients of 127.0.0.2 trickle their heads: others are served meanwhile, they get 408 */
    int slow[3];
    for (int i = 0; i < 3; i++) {
        slow[i] = connect_from("127.0.0.2", port);
        send(slow[i], "GET /echo HTTP/1.1\r\nHo", 22, MSG_NOSIGNAL);
    }
    double took = 0;
    for (int i = 0; i < 3; i++) {
        long st = get_status(port, "/echo", &took);
        FL_EXPECTF(st == 200 && took < 0.5, "while heads trickle: status %ld in %.2f s", st, took);
        for (int k = 0; k < 3; k++) send(slow[k], "s", 1, MSG_NOSIGNAL);
        sleep_ms(150);
    }
    for (int i = 0; i < 3; i++) {
        raw_reply r = read_raw(slow[i], 2500);
        FL_EXPECTF(raw_is_json_error(&r, 408), "trickler %d: status %d %s", i, r.status, r.body);
        close(slow[i]);
    }

    /* one address holds at most max_client_connections */
    int greedy[5];
    for (int i = 0; i < 5; i++) greedy[i] = connect_from("127.0.0.3", port);
    raw_reply r = read_raw(greedy[4], 1000);
    FL_EXPECTF(raw_is_json_error(&r, 429) && strcasestr(r.head, "Retry-After"), "the fifth: status %d", r.status);
    for (int i = 0; i < 5; i++) close(greedy[i]);

    /* the slowest of too many waiting heads is dropped for a newcomer */
    int waiting[9];
    char addr[32];
    for (int i = 0; i < 9; i++) {
        snprintf(addr, sizeof addr, "127.0.0.%d", 10 + i);
        waiting[i] = connect_from(addr, port);
        sleep_ms(20);
    }
    r = read_raw(waiting[0], 1000);
    FL_EXPECTF(raw_is_json_error(&r, 408) && strstr(r.body, "slowest"), "the oldest waiting: status %d %s", r.status,
               r.body);
    for (int i = 0; i < 9; i++) close(waiting[i]);
    sleep_ms(100);

    /* two slow requests fill max_connections: a third is 503, the ops paths still answer */
    pthread_t t[2];
    slow_call calls[2] = {{.port = port}, {.port = port}};
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, slow_request, &calls[i]);
    sleep_ms(400);
    const char *get = "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n";
    r = raw_exchange(port, get, strlen(get));
    FL_EXPECTF(raw_is_json_error(&r, 503) && strcasestr(r.head, "Retry-After: 1"), "full: status %d %s", r.status, r.body);
    long hz = get_status(port, "/healthz", &took);
    FL_EXPECTF(hz == 200 && took < 0.5, "/healthz when full: status %ld in %.2f s", hz, took);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    FL_EXPECT(calls[0].status == 200 && calls[1].status == 200);
    FL_EXPECT(get_status(port, "/echo", NULL) == 200);

    fl_http_stats st;
    fl_http_get_stats(s, &st);
    FL_EXPECTF(st.header_timeouts >= 4 && st.refused_client >= 1 && st.refused_busy >= 1 && st.handed >= 7,
               "stats: timeouts %llu client %llu busy %llu handed %llu", (unsigned long long)st.header_timeouts,
               (unsigned long long)st.refused_client, (unsigned long long)st.refused_busy,
               (unsigned long long)st.handed);
    fl_http_stop(s);
}

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    fl_http_config cfg = fl_http_config_default();
    cfg.bind_address = "127.0.0.1";
    cfg.port = 0;
    cfg.max_connections = 64;
    cfg.max_body_bytes = MAX_BODY;
    cfg.max_upload_bytes = MAX_UPLOAD;
    cfg.connection_timeout_s = 10;
    cfg.admit = test_admit;
    fl_error err = {0};
    if (fl_http_start(&cfg, test_handler, NULL, &server, &err) != 0) {
        fprintf(stderr, "cannot start the server: %s\n", err.message);
        return 1;
    }
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d", fl_http_port(server));

    FL_RUN(test_start_errors);
    FL_RUN(test_get_query_and_headers);
    FL_RUN(test_post_json);
    FL_RUN(test_multipart_upload);
    FL_RUN(test_body_over_limit);
    FL_RUN(test_upload_over_limit);
    FL_RUN(test_malformed_multipart);
    FL_RUN(test_binary_response);
    FL_RUN(test_stream);
    FL_RUN(test_stream_client_leaves);
    FL_RUN(test_nothing_is_500);
    FL_RUN(test_client_leaves_mid_upload);
    FL_RUN(test_concurrent_clients);
    FL_RUN(test_stop_with_open_stream);
    FL_RUN(test_refused_from_the_head);
    FL_RUN(test_admitted_limits);
    FL_RUN(test_head_requests);
    FL_RUN(test_bad_heads);
    FL_RUN(test_quoted_boundary);
    FL_RUN(test_part_limits);
    FL_RUN(test_form_memory);
    FL_RUN(test_paths_redacted);
    FL_RUN(test_front_door_limits);

    fl_http_stop(server);
    curl_global_cleanup();
    return fl_test_finish();
}
