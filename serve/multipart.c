/*
 * multipart.c — multipart/form-data split in place (see multipart.h). Each search for a boundary
 * starts where the previous one ended (memmem, linear), so a body is scanned once.
 */
#include "serve/multipart.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_ows(unsigned char c) { return c == ' ' || c == '\t'; }

/* RFC 2046 bcharsnospace, plus the space that may occur inside (not at the end). */
static bool is_bchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("'()+_,-./:=? ", c) != NULL);
}

/* A parameter value at *p (within [.., e)): a quoted string (unescaped in place: the value is
 * written from *p on, so it only shrinks) or a run of bytes up to ';' or white space. Sets the
 * value's span; false when malformed. */
static bool param_value(char *s, size_t *p, size_t e, size_t *vstart, size_t *vlen) {
    size_t i = *p;
    if (i < e && s[i] == '"') {
        size_t out = ++i;
        *vstart = out;
        while (i < e && s[i] != '"') {
            if (s[i] == '\\' && i + 1 < e) i++;
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 && c != '\t') return false;
            s[out++] = s[i++];
        }
        if (i >= e) return false; /* unterminated */
        *vlen = out - *vstart;
        *p = i + 1;
        return true;
    }
    *vstart = i;
    while (i < e && s[i] != ';' && !is_ows((unsigned char)s[i]) && s[i] != '"') {
        if ((unsigned char)s[i] < 0x20) return false;
        i++;
    }
    *vlen = i - *vstart;
    *p = i;
    return *vlen > 0;
}

int fl_multipart_boundary(const char *content_type, char out[FL_MULTIPART_BOUNDARY_MAX + 1], fl_error *err) {
    out[0] = '\0';
    if (!content_type) return fl_fail(err, FL_EINVAL, "no Content-Type");
    size_t e = strlen(content_type);
    if (e > 4096) return fl_fail(err, FL_EINVAL, "Content-Type is too long");
    char copy[4097];
    memcpy(copy, content_type, e + 1);
    size_t p = 0;
    while (p < e && copy[p] != ';') p++; /* the media type itself: checked by the caller */
    while (p < e) {
        p++; /* ';' */
        while (p < e && is_ows((unsigned char)copy[p])) p++;
        size_t ns = p;
        while (p < e && is_tchar((unsigned char)copy[p])) p++;
        size_t nl = p - ns;
        while (p < e && is_ows((unsigned char)copy[p])) p++;
        if (nl == 0 && p == e) break; /* a trailing ';' */
        if (nl == 0 || p >= e || copy[p] != '=') return fl_fail(err, FL_EINVAL, "malformed Content-Type parameters");
        p++;
        while (p < e && is_ows((unsigned char)copy[p])) p++;
        size_t vs = 0, vl = 0;
        if (!param_value(copy, &p, e, &vs, &vl)) return fl_fail(err, FL_EINVAL, "malformed Content-Type parameters");
        while (p < e && is_ows((unsigned char)copy[p])) p++;
        if (p < e && copy[p] != ';') return fl_fail(err, FL_EINVAL, "malformed Content-Type parameters");
        if (nl == 8 && !strncasecmp(copy + ns, "boundary", 8)) {
            if (out[0]) return fl_fail(err, FL_EINVAL, "more than one multipart boundary");
            if (vl == 0 || vl > FL_MULTIPART_BOUNDARY_MAX || copy[vs + vl - 1] == ' ')
                return fl_fail(err, FL_EINVAL, "the multipart boundary must have 1 to %d characters",
                               FL_MULTIPART_BOUNDARY_MAX);
            for (size_t k = 0; k < vl; k++)
                if (!is_bchar((unsigned char)copy[vs + k]))
                    return fl_fail(err, FL_EINVAL, "the multipart boundary has a character it may not have");
            memcpy(out, copy + vs, vl);
            out[vl] = '\0';
        }
    }
    if (!out[0]) return fl_fail(err, FL_EINVAL, "malformed multipart/form-data request (no boundary)");
    return 0;
}

/* One part's header block [hs, he): lines each ending in CRLF. Records the spans of name,
 * filename and content type (start, length; length SIZE_MAX when absent). */
typedef struct part_spans {
    size_t name, name_len, filename, filename_len, ctype, ctype_len;
} part_spans;

static int part_headers(char *s, size_t hs, size_t he, size_t index, part_spans *sp, fl_error *err) {
    sp->name_len = sp->filename_len = sp->ctype_len = SIZE_MAX;
    bool disposition = false;
    size_t pos = hs;
    while (pos < he) {
        const char *crlf = memmem(s + pos, he - pos, "\r\n", 2);
        if (!crlf) return fl_fail(err, FL_EINVAL, "part %zu: malformed header line", index + 1);
        size_t e = (size_t)(crlf - s), p = pos;
        size_t next = e + 2;
        for (size_t k = pos; k < e; k++)
            if (((unsigned char)s[k] < 0x20 && s[k] != '\t') || s[k] == 0x7f)
                return fl_fail(err, FL_EINVAL, "part %zu: control character in a header line", index + 1);
        while (p < e && is_tchar((unsigned char)s[p])) p++;
        if (p == pos || p >= e || s[p] != ':')
            return fl_fail(err, FL_EINVAL, "part %zu: malformed header line", index + 1);
        size_t name_start = pos, name_len = p - pos;
        p++;
        while (p < e && is_ows((unsigned char)s[p])) p++;
        size_t ve = e;
        while (ve > p && is_ows((unsigned char)s[ve - 1])) ve--;
        if (name_len == 19 && !strncasecmp(s + name_start, "Content-Disposition", 19)) {
            if (disposition) return fl_fail(err, FL_EINVAL, "part %zu: two Content-Disposition headers", index + 1);
            disposition = true;
            size_t ts = p;
            while (p < ve && is_tchar((unsigned char)s[p])) p++;
            if (p - ts != 9 || strncasecmp(s + ts, "form-data", 9) != 0)
                return fl_fail(err, FL_EINVAL, "part %zu: Content-Disposition is not form-data", index + 1);
            while (p < ve) {
                while (p < ve && is_ows((unsigned char)s[p])) p++;
                if (p >= ve) break;
                if (s[p] != ';') return fl_fail(err, FL_EINVAL, "part %zu: malformed Content-Disposition", index + 1);
                p++;
                while (p < ve && is_ows((unsigned char)s[p])) p++;
                if (p >= ve) break;
                size_t ns = p;
                while (p < ve && is_tchar((unsigned char)s[p])) p++;
                size_t nl = p - ns;
                while (p < ve && is_ows((unsigned char)s[p])) p++;
                if (nl == 0 || p >= ve || s[p] != '=')
                    return fl_fail(err, FL_EINVAL, "part %zu: malformed Content-Disposition", index + 1);
                p++;
                while (p < ve && is_ows((unsigned char)s[p])) p++;
                size_t vs = 0, vl = 0;
                if (!param_value(s, &p, ve, &vs, &vl))
                    return fl_fail(err, FL_EINVAL, "part %zu: malformed Content-Disposition", index + 1);
                size_t *start = NULL, *len = NULL;
                if (nl == 4 && !strncasecmp(s + ns, "name", 4)) start = &sp->name, len = &sp->name_len;
                else if (nl == 8 && !strncasecmp(s + ns, "filename", 8)) start = &sp->filename, len = &sp->filename_len;
                if (start) {
                    if (*len != SIZE_MAX)
                        return fl_fail(err, FL_EINVAL, "part %zu: Content-Disposition gives %.*s twice", index + 1,
                                       (int)nl, s + ns);
                    *start = vs;
                    *len = vl;
                }
            }
        } else if (name_len == 12 && !strncasecmp(s + name_start, "Content-Type", 12)) {
            if (sp->ctype_len != SIZE_MAX) return fl_fail(err, FL_EINVAL, "part %zu: two Content-Type headers", index + 1);
            sp->ctype = p;
            sp->ctype_len = ve - p;
        }
        pos = next;
    }
    if (!disposition || sp->name_len == SIZE_MAX)
        return fl_fail(err, FL_EINVAL, "part %zu has no Content-Disposition: form-data with a name", index + 1);
    return 0;
}

/* Where a part was found in the first pass. */
typedef struct part_rec {
    part_spans sp;
    size_t data, size;
} part_rec;

static size_t span_bytes(size_t len) { return len == SIZE_MAX ? 0 : len + 1; }

static char *copy_span(char **arena, const char *s, size_t start, size_t len) {
    if (len == SIZE_MAX) return NULL;
    char *out = *arena;
    memcpy(out, s + start, len);
    out[len] = '\0';
    *arena += len + 1;
    return out;
}

int fl_multipart_parse(unsigned char *body, size_t size, const char *boundary, const fl_multipart_limits *limits,
                       fl_http_part **parts_out, size_t *n_out, fl_error *err) {
    *parts_out = NULL;
    *n_out = 0;
    size_t blen = strlen(boundary);
    if (blen == 0 || blen > FL_MULTIPART_BOUNDARY_MAX) return fl_fail(err, FL_EINVAL, "invalid multipart boundary");
    char delim[4 + FL_MULTIPART_BOUNDARY_MAX + 1];
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, boundary, blen);
    size_t dlen = 4 + blen;
    char *s = (char *)body;
    part_rec *recs = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;

    /* first pass: find the parts (quoted names are unescaped in place, nothing else is written) */
    size_t pos;
    if (size >= dlen - 2 && !memcmp(s, delim + 2, dlen - 2)) {
        pos = dlen - 2;
    } else {
        const char *d = memmem(s, size, delim, dlen);
        if (!d) return fl_fail(err, FL_EINVAL, "malformed multipart/form-data body (no boundary line)");
        pos = (size_t)(d - s) + dlen;
    }
    for (;;) {
        /* right after a boundary: "--" closes the body, else padding and CRLF start a part */
        if (size - pos >= 2 && s[pos] == '-' && s[pos + 1] == '-') break;
        while (pos < size && is_ows((unsigned char)s[pos])) pos++;
        if (size - pos < 2 || s[pos] != '\r' || s[pos + 1] != '\n') {
            rc = fl_fail(err, FL_EINVAL, "malformed multipart/form-data body (bad boundary line)");
            break;
        }
        pos += 2;
        if (n == limits->max_parts) {
            rc = fl_fail(err, FL_ELIMIT, "the form has more than %zu parts", limits->max_parts);
            break;
        }
        /* the part's header block ends at an empty line */
        size_t hs = pos, he, content;
        if (size - pos >= 2 && s[pos] == '\r' && s[pos + 1] == '\n') {
            he = pos;
            content = pos + 2;
        } else {
            size_t window = size - pos;
            bool capped = window > limits->max_part_header_bytes + 4;
            if (capped) window = limits->max_part_header_bytes + 4;
            const char *blank = memmem(s + pos, window, "\r\n\r\n", 4);
            if (!blank) {
                if (capped)
                    rc = fl_fail(err, FL_ELIMIT, "part %zu: its headers exceed %zu bytes", n + 1,
                                 limits->max_part_header_bytes);
                else
                    rc = fl_fail(err, FL_EINVAL, "malformed multipart/form-data body (part %zu is cut short)", n + 1);
                break;
            }
            he = (size_t)(blank - s) + 2;
            content = he + 2;
        }
        part_spans sp;
        if ((rc = part_headers(s, hs, he, n, &sp, err)) != 0) break;
        const char *d = memmem(s + content, size - content, delim, dlen);
        if (!d) {
            rc = fl_fail(err, FL_EINVAL, "malformed multipart/form-data body (part %zu has no closing boundary)", n + 1);
            break;
        }
        if (n == cap) {
            size_t want = cap ? 2 * cap : 8;
            if (want > limits->max_parts) want = limits->max_parts;
            part_rec *grown = realloc(recs, want * sizeof *grown);
            if (!grown) {
                rc = fl_fail(err, FL_ENOMEM, "out of memory while reading the form");
                break;
            }
            recs = grown;
            cap = want;
        }
        recs[n++] = (part_rec){.sp = sp, .data = content, .size = (size_t)(d - s) - content};
        pos = (size_t)(d - s) + dlen;
    }
    if (rc != 0) {
        free(recs);
        return -1;
    }

    /* second pass: the parts and their strings in one block; each part's data moved back onto a
     * FL_MULTIPART_ALIGN boundary (into its own header block, whose strings are copied first),
     * so that typed views of uploaded files are aligned */
    size_t strings = 0;
    for (size_t k = 0; k < n; k++)
        strings += span_bytes(recs[k].sp.name_len) + span_bytes(recs[k].sp.filename_len) +
                   span_bytes(recs[k].sp.ctype_len);
    fl_http_part *parts = malloc(n * sizeof *parts + strings + 1);
    if (!parts) {
        free(recs);
        return fl_fail(err, FL_ENOMEM, "out of memory while reading the form");
    }
    char *arena = (char *)(parts + n);
    for (size_t k = 0; k < n; k++) {
        const part_rec *r = &recs[k];
        fl_http_part *part = &parts[k];
        memset(part, 0, sizeof *part);
        part->name = copy_span(&arena, s, r->sp.name, r->sp.name_len);
        part->filename = copy_span(&arena, s, r->sp.filename, r->sp.filename_len);
        part->content_type = copy_span(&arena, s, r->sp.ctype, r->sp.ctype_len);
        size_t at = r->data & ~(size_t)(FL_MULTIPART_ALIGN - 1); /* within the header block: >= 40 bytes */
        if (at != r->data) memmove(body + at, body + r->data, r->size);
        part->data = body + at;
        part->size = r->size;
        body[at + r->size] = '\0'; /* within the old data or the CR of the next boundary */
    }
    free(recs);
    *parts_out = parts;
    *n_out = n;
    return 0;
}
