/*
 * imageset.h — validated ingestion of a training image set.
 *
 * A brand team hands over 5–30 images as a folder, a .zip/.tar/.tar.gz/.tgz archive, or an http(s)
 * URL of such an archive (or the archive bytes of an HTTP upload). fl_imageset_load reads it
 * without ever writing to disk, refuses what is unsafe or too large, decodes the images and pairs
 * them with sidecar captions (`logo.txt` beside `logo.png`).
 *
 * Two levels of refusal:
 *  - a single file that cannot be used (corrupt, not an image, too large, a symlink, a path with
 *    `..`) becomes an fl_rejected entry {name, reason} and loading goes on;
 *  - the whole set fails (non-zero return, fl_error) when fewer than min_images usable images
 *    remain, when a set-wide limit is crossed (entries, total bytes, usable images), or when the
 *    source itself is unreadable (not an archive, download failed).
 * Hidden files (`.`-prefixed components, `__MACOSX/`) and directories are skipped silently, and so
 * are `.txt` files without a matching image.
 *
 * Images come out sorted by name (byte order), names being the path relative to the folder or
 * archive root with `/` separators. Each limit has an explicit default in
 * fl_imageset_limits_default(). Builds without libarchive, libcurl or stb return FL_EUNSUPPORTED
 * for the sources that need them.
 */
#ifndef FL_DATASETS_IMAGESET_H
#define FL_DATASETS_IMAGESET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "datasets/image.h"

typedef struct fl_imageset_limits {
    size_t min_images;          /* fewer usable images than this fails the set (default 4) */
    size_t max_images;          /* more usable images than this fails the set (default 100) */
    size_t max_file_bytes;      /* per file, counted while reading/inflating (default 25 MiB) */
    size_t max_total_bytes;     /* all bytes read or inflated from the source (default 256 MiB) */
    int64_t max_pixels;         /* per image, from the header before decoding (default 50 MP) */
    int max_side;               /* per image side, pixels (default 12000) */
    int64_t max_total_pixels;   /* decoded pixels over the whole set, counted at their full size
                                 * (default 512 MP, ~6 GiB of floats) */
    int fit_side;               /* an image whose longer side is over this is shrunk to it (box
                                 * mean) as it is decoded, before the next one is: the set holds
                                 * small copies and one full decode at a time (default 0: kept) */
    size_t max_archive_entries; /* entries in an archive or folder tree, any kind (default 2000) */
    size_t max_caption_bytes;   /* one sidecar caption (default 16 KiB) */
    size_t url_max_bytes;       /* download size (default 256 MiB) */
    long url_timeout_seconds;   /* whole transfer (default 60) */
    bool url_allow_private;     /* allow loopback/private/link-local addresses (default false) */
} fl_imageset_limits;

/* One file that was refused, with a reason fit to show the user. */
typedef struct fl_rejected {
    char *name;   /* archive- or folder-relative path */
    char *reason; /* e.g. "symbolic link refused", "30000x30000 exceeds the 50 MP limit" */
} fl_rejected;

typedef struct fl_imageset_item {
    char *name;     /* archive- or folder-relative path, `/`-separated */
    char *caption;  /* sidecar caption (valid UTF-8, trailing whitespace trimmed) or NULL */
    fl_image image; /* RGB float [height][width][3] in [0, 1], alpha composited on white */
} fl_imageset_item;

typedef struct fl_imageset {
    fl_imageset_item *items; /* sorted by name */
    size_t count;
    fl_rejected *rejected; /* sorted by name */
    size_t rejected_count;
} fl_imageset;

fl_imageset_limits fl_imageset_limits_default(void);

/* source: a directory, a zip/tar/tar.gz file (recognised by content, not by extension), or an
 * http:// or https:// URL of such an archive. limits may be NULL (defaults). On success *out is a
 * new set for fl_imageset_free and 0 is returned; on failure *out is NULL and err says why. */
int fl_imageset_load(const char *source, const fl_imageset_limits *limits, fl_imageset **out, fl_error *err);

/* The same for archive bytes already in memory (an HTTP upload). name_hint (may be NULL) names the
 * upload in messages. The bytes are only read. */
int fl_imageset_load_memory(const void *bytes, size_t n, const char *name_hint, const fl_imageset_limits *limits,
                            fl_imageset **out, fl_error *err);

/* What a set holds, found from the images' headers alone (no pixel is decoded): the same rules
 * and limits as fl_imageset_load_memory (refused files, the decoded-pixel budget, the image
 * counts, each image's data checked to be long enough for its claimed size), so a set this
 * accepts is one the loader accepts. Files are read one at a time and dropped once checked, so
 * the memory it needs is one file (max_file_bytes), not the set. */
typedef struct fl_imageset_summary {
    size_t images;            /* usable images */
    size_t rejected;          /* refused files */
    int64_t total_pixels;     /* decoded pixels of the usable images together */
    int64_t largest_pixels;   /* of the largest usable image */
    const char *archive_ext;  /* the archive's kind as a file extension: ".zip", ".tar", ".tar.gz" */
} fl_imageset_summary;

int fl_imageset_inspect_memory(const void *bytes, size_t n, const char *name_hint, const fl_imageset_limits *limits,
                               fl_imageset_summary *out, fl_error *err);

/* The same inspection with every file's verdict, for showing a set to its owner before it is
 * submitted: the usable images (name and size, sorted by name), the refused files with their
 * reasons, and whether the set as a whole would be accepted (usable; otherwise problem says why:
 * too few usable images, too many). 0 when the archive could be read (usable or not); -1 with err
 * (as fl_imageset_inspect_memory) when it could not: not an archive, a set-wide byte or entry
 * limit crossed while reading. Free with fl_imageset_report_clear. */
typedef struct fl_imageset_report_image {
    char *name;
    int width, height;
} fl_imageset_report_image;

typedef struct fl_imageset_report {
    fl_imageset_summary summary;
    bool usable;
    fl_error problem; /* when !usable */
    fl_imageset_report_image *images;
    size_t n_images;
    fl_rejected *rejected; /* sorted by name */
    size_t n_rejected;
} fl_imageset_report;

int fl_imageset_report_memory(const void *bytes, size_t n, const char *name_hint, const fl_imageset_limits *limits,
                              fl_imageset_report *out, fl_error *err);
void fl_imageset_report_clear(fl_imageset_report *report);

void fl_imageset_free(fl_imageset *set);

/* The rejection recorded for name, or NULL. */
const fl_rejected *fl_imageset_find_rejected(const fl_imageset *set, const char *name);

#endif
