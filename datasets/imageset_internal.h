/*
 * imageset_internal.h — what the pieces of the image-set loader share (not a public header).
 *
 * Loading happens in two stages. The sources (sources.c: folders and archives; fetch.c: URLs)
 * gather the raw files into an fl_ds_collect, refusing unsafe entries and enforcing the entry and
 * byte limits as they read. imageset.c then sorts the files, decodes the images, pairs captions
 * and builds the fl_imageset.
 */
#ifndef FL_DATASETS_IMAGESET_INTERNAL_H
#define FL_DATASETS_IMAGESET_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "datasets/imageset.h"

enum { FL_DS_NAME_MAX = 1024 }; /* longest accepted relative path, bytes */

typedef struct fl_ds_file {
    char *name;          /* cleaned relative path */
    unsigned char *data; /* file bytes (malloc'ed; NULL when size is 0, and in headers-only mode) */
    size_t size;
    size_t order; /* position in the source, to keep the first of duplicate names */
    /* Headers-only mode: what the image's header said, checked as it arrived. */
    int width, height;
    char *reason; /* why the file cannot be used (malloc'ed), or NULL */
} fl_ds_file;

typedef struct fl_ds_collect {
    const fl_imageset_limits *limits;
    bool headers_only;      /* check each image's header (size, limits, enough data) as it is read,
                             * then drop its bytes: nothing is decoded */
    const char *archive_ext; /* ".zip", ".tar" or ".tar.gz" once an archive was recognised */
    fl_ds_file *files;
    size_t count, cap;
    fl_rejected *rejected;
    size_t rejected_count, rejected_cap;
    size_t entries;     /* entries seen, of any kind */
    size_t total_bytes; /* bytes read or inflated so far */
    fl_imageset_report *report; /* headers-only mode: also list every file's verdict here */
} fl_ds_collect;

/* Record a refused file. name is shown as given (callers pass a cleaned or display-safe name). */
void fl_ds_reject(fl_ds_collect *c, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Take ownership of data (malloc'ed) as file name. */
void fl_ds_add_file(fl_ds_collect *c, const char *name, unsigned char *data, size_t size);
/* Count one more entry / n more bytes against the limits; -1 with FL_ELIMIT past them. */
int fl_ds_count_entry(fl_ds_collect *c, fl_error *err);
int fl_ds_count_bytes(fl_ds_collect *c, size_t n, fl_error *err);
/* "25 MiB", "64 KiB" or "1000 bytes". */
const char *fl_ds_format_bytes(size_t n, char *buf, size_t size);
/* A printable copy of an untrusted name for messages: control bytes and invalid UTF-8 become '?',
 * cut at 200 bytes. */
void fl_ds_display_name(const char *raw, char *out, size_t size);

typedef enum fl_ds_name_kind { FL_DS_NAME_OK, FL_DS_NAME_HIDDEN, FL_DS_NAME_REFUSED } fl_ds_name_kind;
/* Clean an archive entry path into out (FL_DS_NAME_MAX + 1 bytes): drop empty and "." components
 * and a trailing '/'. HIDDEN for `.`-prefixed components and `__MACOSX`; REFUSED (with *reason)
 * for absolute paths, `..` components, control characters, invalid UTF-8, or overlong names. */
fl_ds_name_kind fl_ds_clean_name(const char *raw, char *out, const char **reason);

/* Sources. Each returns 0 after gathering (refusals recorded in c), or -1 with err set when the
 * whole source must fail. */
int fl_ds_collect_dir(fl_ds_collect *c, const char *path, fl_error *err);
int fl_ds_collect_archive_file(fl_ds_collect *c, const char *path, const char *label, fl_error *err);
int fl_ds_collect_archive_memory(fl_ds_collect *c, const void *bytes, size_t n, const char *label, fl_error *err);

#endif
