/*
 * error.c — fl_error filling, code names, and the abort path for broken invariants.
 */
#include "core/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fl_fail(fl_error *err, fl_error_code code, const char *fmt, ...) {
    if (!err) return -1;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

int fl_fail_prefix(fl_error *err, const char *fmt, ...) {
    if (!err) return -1;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Shift the old message right and write "prefix: " in front, truncating the tail. */
    size_t cap = sizeof err->message;
    size_t plen = strlen(prefix);
    size_t olen = strnlen(err->message, cap - 1);
    if (plen + 2 + olen > cap - 1) olen = cap - 1 - plen - 2;
    memmove(err->message + plen + 2, err->message, olen);
    memcpy(err->message, prefix, plen);
    err->message[plen] = ':';
    err->message[plen + 1] = ' ';
    err->message[plen + 2 + olen] = '\0';
    if (err->code == FL_OK) err->code = FL_EINVAL;
    return -1;
}

void fl_error_clear(fl_error *err) {
    if (!err) return;
    err->code = FL_OK;
    err->message[0] = '\0';
}

int fl_errno_is_no_space(int errnum) {
    return errnum == ENOSPC || errnum == EDQUOT || errnum == EFBIG;
}

int fl_fail_errno(fl_error *err, int errnum, const char *fmt, ...) {
    if (!err) return -1;
    if (fl_errno_is_no_space(errnum)) return fl_fail(err, FL_ENOSPACE, "the disk is full (%s)", strerror(errnum));
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return fl_fail(err, FL_EIO, "%s: %s", what, strerror(errnum));
}

const char *fl_error_code_name(fl_error_code code) {
    switch (code) {
    case FL_OK: return "ok";
    case FL_EINVAL: return "invalid_input";
    case FL_EIO: return "io_error";
    case FL_ENOMEM: return "out_of_memory";
    case FL_ENOTFOUND: return "not_found";
    case FL_EUNSUPPORTED: return "unsupported";
    case FL_ELIMIT: return "limit_exceeded";
    case FL_ECONFLICT: return "conflict";
    case FL_EUNAVAILABLE: return "unavailable";
    case FL_ENOSPACE: return "insufficient_storage";
    case FL_EUNREACHABLE: return "url_unreachable";
    }
    return "unknown";
}

FL_NORETURN void fl_abort_at(const char *file, int line, const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "flashlora: fatal at %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

void *fl_xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    FL_CHECKF(p, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *fl_xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    FL_CHECKF(p, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *fl_xrealloc(void *ptr, size_t bytes) {
    void *p = realloc(ptr, bytes ? bytes : 1);
    FL_CHECKF(p, "out of memory reallocating to %zu bytes", bytes);
    return p;
}

char *fl_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = fl_xmalloc(n);
    memcpy(p, s, n);
    return p;
}
