/*
 * http_head.c — the checked parse of an HTTP/1.x request head (see http_head.h). One pass over
 * the lines; nothing is allocated and nothing is written to the input.
 */
#include "serve/http_head.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static fl_http_head_result invalid(int *status, char *message, size_t cap, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static fl_http_head_result invalid(int *status, char *message, size_t cap, int code, const char *fmt, ...) {
    *status = code;
    if (message && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(message, cap, fmt, ap);
        va_end(ap);
    }
    return FL_HTTP_HEAD_INVALID;
}

static bool is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* A byte allowed inside a field value: visible ASCII, space, tab, or any byte >= 0x80. */
static bool is_value_byte(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

/* The next line starting at pos within the first limit bytes: its content is [pos, *end) and the
 * line (with its CRLF or LF) ends before *next. False when no LF comes within limit. */
static bool next_line(const char *buf, size_t pos, size_t limit, size_t *end, size_t *next) {
    const char *lf = memchr(buf + pos, '\n', limit - pos);
    if (!lf) return false;
    size_t e = (size_t)(lf - buf);
    *next = e + 1;
    if (e > pos && buf[e - 1] == '\r') e--;
    *end = e;
    return true;
}

static bool equals_ci(const char *s, size_t n, const char *lit) {
    return strlen(lit) == n && !strncasecmp(s, lit, n);
}

fl_http_head_result fl_http_head_parse(const char *buf, size_t n, size_t max_bytes, fl_http_head *out,
                                       int *status, char *message, size_t message_cap) {
    memset(out, 0, sizeof *out);
    out->content_length = -1;
    *status = 0;
    if (message && message_cap) message[0] = '\0';
    size_t limit = n < max_bytes ? n : max_bytes;

    /* ---- the request line ---- */
    size_t end, next;
    if (!next_line(buf, 0, limit, &end, &next)) {
        /* still arriving: refuse what can never become a request line (binary, TLS) at once */
        for (size_t i = 0; i < limit; i++) {
            unsigned char c = (unsigned char)buf[i];
            if (c < 0x20 && c != '\r') return invalid(status, message, message_cap, 400, "malformed request line");
            if (c == '\r' && i + 1 < limit) return invalid(status, message, message_cap, 400, "bare CR in the request line");
            if (c >= 0x7f) return invalid(status, message, message_cap, 400, "malformed request line");
        }
        if (n >= max_bytes)
            return invalid(status, message, message_cap, 414, "the request line is longer than %zu bytes", max_bytes);
        return FL_HTTP_HEAD_INCOMPLETE;
    }
    const char *line = buf;
    size_t len = end, i = 0;
    while (i < len && is_tchar((unsigned char)line[i])) i++;
    if (i == 0 || i > 32 || i >= len || line[i] != ' ')
        return invalid(status, message, message_cap, 400, "malformed request line (expected METHOD /path HTTP/1.1)");
    out->method = line;
    out->method_len = i;
    size_t t = ++i;
    while (i < len && line[i] > 0x20 && line[i] < 0x7f) i++;
    if (i == t || i >= len || line[i] != ' ')
        return invalid(status, message, message_cap, 400, "malformed request line (expected METHOD /path HTTP/1.1)");
    if (line[t] != '/') return invalid(status, message, message_cap, 400, "the request target must be a path starting with '/'");
    out->target = line + t;
    out->target_len = i - t;
    const char *q = memchr(out->target, '?', out->target_len);
    out->path_len = q ? (size_t)(q - out->target) : out->target_len;
    const char *v = line + i + 1;
    size_t vlen = len - i - 1;
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' || v[7] < '0' ||
        v[7] > '9') {
        for (size_t k = 0; k < vlen; k++)
            if (v[k] == '\r') return invalid(status, message, message_cap, 400, "bare CR in the request line");
        return invalid(status, message, message_cap, 400, "malformed HTTP version in the request line");
    }
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return invalid(status, message, message_cap, 505, "HTTP version %.8s is not supported (HTTP/1.0 and HTTP/1.1 are)",
                       v);
    out->minor_version = v[7] - '0';

    /* ---- header fields ---- */
    int fields = 0, hosts = 0, lengths = 0, encodings = 0;
    size_t pos = next;
    for (;;) {
        if (pos >= limit || !next_line(buf, pos, limit, &end, &next)) {
            if (n >= max_bytes)
                return invalid(status, message, message_cap, 431, "the request head is larger than %zu bytes",
                               max_bytes);
            /* complete lines were checked; the partial one is checked once it ends */
            return FL_HTTP_HEAD_INCOMPLETE;
        }
        line = buf + pos;
        len = end - pos;
        pos = next;
        for (size_t k = 0; k < len; k++)
            if (line[k] == '\r') return invalid(status, message, message_cap, 400, "bare CR in a header line");
        if (len == 0) break; /* the blank line: the head is complete */
        if (is_ows(line[0])) return invalid(status, message, message_cap, 400, "folded header lines are not accepted");
        if (++fields > FL_HTTP_HEAD_MAX_FIELDS)
            return invalid(status, message, message_cap, 431, "more than %d header fields", FL_HTTP_HEAD_MAX_FIELDS);
        i = 0;
        while (i < len && is_tchar((unsigned char)line[i])) i++;
        if (i == 0 || i >= len || line[i] != ':')
            return invalid(status, message, message_cap, 400, "malformed header line (expected Name: value)");
        const char *name = line;
        size_t name_len = i;
        size_t vs = i + 1, ve = len;
        for (size_t k = vs; k < ve; k++)
            if (!is_value_byte((unsigned char)line[k]))
                return invalid(status, message, message_cap, 400, "control character in header %.*s", (int)name_len,
                               name);
        while (vs < ve && is_ows(line[vs])) vs++;
        while (ve > vs && is_ows(line[ve - 1])) ve--;
        const char *value = line + vs;
        size_t value_len = ve - vs;
        if (equals_ci(name, name_len, "Host")) {
            hosts++;
        } else if (equals_ci(name, name_len, "Content-Length")) {
            if (value_len == 0 || value_len > 20)
                return invalid(status, message, message_cap, 400, "malformed Content-Length");
            int64_t cl = 0;
            for (size_t k = 0; k < value_len; k++) {
                if (value[k] < '0' || value[k] > '9')
                    return invalid(status, message, message_cap, 400, "malformed Content-Length");
                if (cl > FL_HTTP_HEAD_MAX_LENGTH) break;
                cl = cl * 10 + (value[k] - '0');
            }
            if (cl > FL_HTTP_HEAD_MAX_LENGTH)
                return invalid(status, message, message_cap, 413, "Content-Length is larger than the server accepts");
            if (lengths++ > 0 && cl != out->content_length)
                return invalid(status, message, message_cap, 400, "conflicting Content-Length headers");
            out->content_length = cl;
        } else if (equals_ci(name, name_len, "Transfer-Encoding")) {
            if (encodings++ > 0) return invalid(status, message, message_cap, 400, "more than one Transfer-Encoding header");
            if (!equals_ci(value, value_len, "chunked"))
                return invalid(status, message, message_cap, 501, "Transfer-Encoding '%.*s' is not supported (only chunked)",
                               (int)(value_len < 40 ? value_len : 40), value);
            out->chunked = true;
        }
    }
    out->size = pos;
    if (out->chunked && lengths)
        return invalid(status, message, message_cap, 400, "both Content-Length and Transfer-Encoding are given");
    if (out->chunked && out->minor_version == 0)
        return invalid(status, message, message_cap, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (hosts > 1) return invalid(status, message, message_cap, 400, "more than one Host header");
    if (hosts == 0 && out->minor_version == 1)
        return invalid(status, message, message_cap, 400, "an HTTP/1.1 request needs a Host header");
    return FL_HTTP_HEAD_COMPLETE;
}
