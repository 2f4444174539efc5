/*
 * error.h — the two kinds of errors in flashlora.
 *
 * 1. A broken invariant (a bug: a shape mismatch between our own buffers, a failed CUDA call,
 *    an out-of-memory on an allocation we planned) aborts at once with file:line through
 *    FL_CHECK / FL_CHECKF. These never depend on outside input.
 * 2. Bad outside input (a malformed file, a wrong JSON field, an unknown device name) is reported
 *    through an fl_error: the function fills it with a code and a one-line message and returns
 *    non-zero; the caller decides (CLI: print and exit 1; server: HTTP 4xx). Nothing aborts.
 */
#ifndef FL_CORE_ERROR_H
#define FL_CORE_ERROR_H

#include <stddef.h>

typedef enum fl_error_code {
    FL_OK = 0,
    FL_EINVAL,       /* malformed or inconsistent input */
    FL_EIO,          /* a file or network operation failed */
    FL_ENOMEM,       /* an allocation sized by outside input failed */
    FL_ENOTFOUND,    /* a named thing does not exist */
    FL_EUNSUPPORTED, /* valid but not supported (dtype, device, feature not compiled in) */
    FL_ELIMIT,       /* input exceeds a configured limit */
    FL_ECONFLICT,    /* the name or id is already taken */
    FL_EUNAVAILABLE, /* a service the operation needs (Redis) is unreachable, or a queue is full */
    FL_ENOSPACE,     /* no room to store: the disk, a quota or a file-size limit is full, or Redis
                      * refuses writes because it cannot persist them */
    FL_EUNREACHABLE, /* a host named by outside input (a URL) does not resolve or cannot be reached */
} fl_error_code;

typedef struct fl_error {
    fl_error_code code;
    char message[512];
} fl_error;

/* Fill err (which may be NULL) with code and a printf-style message; always returns -1 so a
 * caller can write `return fl_fail(err, FL_EINVAL, "...")`. */
int fl_fail(fl_error *err, fl_error_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix an existing message with more context: "context: old message". Returns -1. */
int fl_fail_prefix(fl_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void fl_error_clear(fl_error *err);

/* True for the errno values of a full disk: ENOSPC, EDQUOT, and EFBIG (a file-size limit). */
int fl_errno_is_no_space(int errnum);
/* A failed file operation: FL_ENOSPACE "the disk is full (<strerror>)" when errnum is one of the
 * above (the message then names no path: it may reach a client), else FL_EIO with the printf-style
 * message followed by ": <strerror>". Returns -1. */
int fl_fail_errno(fl_error *err, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A short stable name for a code ("invalid_input", "io_error", ...), for JSON replies and logs. */
const char *fl_error_code_name(fl_error_code code);

/* "does not return", spelled for C and for the CUDA (C++) sources that include this header. */
#ifdef __cplusplus
#define FL_NORETURN [[noreturn]]
#else
#define FL_NORETURN _Noreturn
#endif

/* Abort with file:line and a message. Used only by the FL_CHECK macros. */
FL_NORETURN void fl_abort_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define FL_CHECK(cond)                                                                 \
    do {                                                                               \
        if (!(cond)) fl_abort_at(__FILE__, __LINE__, "check failed: %s", #cond);       \
    } while (0)

#define FL_CHECKF(cond, ...)                                                           \
    do {                                                                               \
        if (!(cond)) fl_abort_at(__FILE__, __LINE__, __VA_ARGS__);                     \
    } while (0)

/* Allocation whose failure is a broken invariant (sizes we computed, not sizes a client sent). */
void *fl_xmalloc(size_t bytes);
void *fl_xcalloc(size_t count, size_t size);
void *fl_xrealloc(void *ptr, size_t bytes);
char *fl_xstrdup(const char *s);

#endif
