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
    if (rq->method) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method);
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
    } else if (!strcmp(p, "/nothing")) {
        /* sets nothing: the layer answers 500 */
    } else {
        fl_http_reply_error(res, 404, "not_found", "no route for %s %s", req->method, req->path);
    }
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

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    fl_http_config cfg = fl_http_config_default();
    cfg.bind_address = "127.0.0.1";
    cfg.port = 0;
    cfg.max_connections = 64;
    cfg.max_body_bytes = MAX_BODY;
    cfg.max_upload_bytes = MAX_UPLOAD;
    cfg.connection_timeout_s = 10;
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

    fl_http_stop(server);
    curl_global_cleanup();
    return fl_test_finish();
}
