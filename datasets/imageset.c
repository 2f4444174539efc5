/*
 * imageset.c — the image-set loader: limits, the shared collection helpers, and the second stage
 * that turns gathered files into an fl_imageset (sort, de-duplicate, decode, pair captions, count).
 *
 * Files whose name ends in .txt (any case) are caption candidates; every other file is offered to
 * the decoder, which recognises images by content, not by extension, so a text file named .jpg is
 * "not an image" and a WebP named .png is "unsupported image format (WebP ...)".
 */
#include "datasets/imageset.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/utf8.h"
#include "datasets/fetch.h"
#include "datasets/imageset_internal.h"
#include "fl_build_config.h"

fl_imageset_limits fl_imageset_limits_default(void) {
    return (fl_imageset_limits){
        .min_images = 4,
        .max_images = 100,
        .max_file_bytes = (size_t)25 << 20,
        .max_total_bytes = (size_t)256 << 20,
        .max_pixels = 50000000,
        .max_side = 12000,
        .max_total_pixels = 512000000,
        .max_archive_entries = 2000,
        .max_caption_bytes = 16 << 10,
        .url_max_bytes = (size_t)256 << 20,
        .url_timeout_seconds = 60,
        .url_allow_private = false,
    };
}

static int check_limits(const fl_imageset_limits *l, fl_error *err) {
    const char *bad = NULL;
    if (l->max_images < 1 || l->min_images > l->max_images) bad = "need 1 <= max_images and min_images <= max_images";
    else if (l->max_file_bytes < 1 || l->max_file_bytes > 0x7fffffff) bad = "max_file_bytes must be in [1, 2^31)";
    else if (l->max_total_bytes < 1) bad = "max_total_bytes must be positive";
    else if (l->max_pixels < 1 || l->max_side < 1 || l->max_total_pixels < 1) bad = "pixel limits must be positive";
    else if (l->max_archive_entries < 1) bad = "max_archive_entries must be positive";
    else if (l->url_max_bytes < 1 || l->url_timeout_seconds < 1) bad = "URL limits must be positive";
    if (bad) return fl_fail(err, FL_EINVAL, "invalid image-set limits: %s", bad);
    return 0;
}

/* ---- helpers shared with the sources --------------------------------------------------------- */

void fl_ds_reject(fl_ds_collect *c, const char *name, const char *fmt, ...) {
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (c->rejected_count == c->rejected_cap) {
        c->rejected_cap = c->rejected_cap ? c->rejected_cap * 2 : 16;
        c->rejected = fl_xrealloc(c->rejected, c->rejected_cap * sizeof *c->rejected);
    }
    c->rejected[c->rejected_count++] = (fl_rejected){fl_xstrdup(name), fl_xstrdup(reason)};
    fl_log_debug("imageset: %s rejected: %s", name, reason);
}

static bool is_caption_file(const char *name);

void fl_ds_add_file(fl_ds_collect *c, const char *name, unsigned char *data, size_t size) {
    if (c->count == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 32;
        c->files = fl_xrealloc(c->files, c->cap * sizeof *c->files);
    }
    fl_ds_file f = {fl_xstrdup(name), data, size, c->count, 0, 0, NULL};
    if (c->headers_only) { /* check the image now, keep what its header says, drop its bytes */
        const fl_imageset_limits *l = c->limits;
        fl_error why;
        fl_error_clear(&why);
        if (!is_caption_file(name) &&
            (fl_image_probe(data, size, &f.width, &f.height, &why) ||
             fl_image_check_size(f.width, f.height, l->max_pixels, l->max_side, &why) ||
             fl_image_check_data(data, size, f.width, f.height, &why)))
            f.reason = fl_xstrdup(why.message);
        free(f.data);
        f.data = NULL;
    }
    c->files[c->count] = f;
    c->count++;
}

int fl_ds_count_entry(fl_ds_collect *c, fl_error *err) {
    if (++c->entries > c->limits->max_archive_entries)
        return fl_fail(err, FL_ELIMIT, "more than %zu entries (the limit on files and folders in a set)",
                       c->limits->max_archive_entries);
    return 0;
}

int fl_ds_count_bytes(fl_ds_collect *c, size_t n, fl_error *err) {
    char lim[32];
    if (n > c->limits->max_total_bytes - c->total_bytes)
        return fl_fail(err, FL_ELIMIT, "the files total more than the %s limit",
                       fl_ds_format_bytes(c->limits->max_total_bytes, lim, sizeof lim));
    c->total_bytes += n;
    return 0;
}

const char *fl_ds_format_bytes(size_t n, char *buf, size_t size) {
    if (n >= (1 << 20) && n % (1 << 20) == 0) snprintf(buf, size, "%zu MiB", n >> 20);
    else if (n >= (1 << 10) && n % (1 << 10) == 0) snprintf(buf, size, "%zu KiB", n >> 10);
    else snprintf(buf, size, "%zu bytes", n);
    return buf;
}

void fl_ds_display_name(const char *raw, char *out, size_t size) {
    fl_utf8_display(raw, 200, out, size);
}

/* ---- from files to a set ------------------------------------------------------------------------ */

static void collect_free(fl_ds_collect *c) {
    for (size_t i = 0; i < c->count; i++) {
        free(c->files[i].name);
        free(c->files[i].data);
        free(c->files[i].reason);
    }
    free(c->files);
    for (size_t i = 0; i < c->rejected_count; i++) {
        free(c->rejected[i].name);
        free(c->rejected[i].reason);
    }
    free(c->rejected);
    memset(c, 0, sizeof *c);
}

static int compare_files(const void *a, const void *b) {
    const fl_ds_file *x = a, *y = b;
    int r = strcmp(x->name, y->name);
    if (r) return r;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int compare_rejected(const void *a, const void *b) {
    const fl_rejected *x = a, *y = b;
    int r = strcmp(x->name, y->name);
    return r ? r : strcmp(x->reason, y->reason);
}

/* The extension of the last path component, including the dot, or "". */
static const char *extension(const char *name) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strrchr(base, '.');
    return dot && dot != base ? dot : "";
}

static bool is_caption_file(const char *name) {
    return strcasecmp(extension(name), ".txt") == 0;
}

/* Same path without the extension. */
static bool same_stem(const char *a, const char *b) {
    size_t la = strlen(a) - strlen(extension(a)), lb = strlen(b) - strlen(extension(b));
    return la == lb && memcmp(a, b, la) == 0;
}

/* The caption in a sidecar file, or NULL with *reason set when it is refused (NULL and no reason
 * for a caption that is empty after trimming). */
static char *read_caption(const fl_ds_file *f, size_t max_bytes, const char **reason) {
    const unsigned char *s = f->data;
    size_t n = f->size;
    *reason = NULL;
    if (n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) s += 3, n -= 3; /* byte-order mark */
    if (n > max_bytes) return *reason = "caption file too long", NULL;
    if (n && memchr(s, '\0', n)) return *reason = "caption contains a NUL byte", NULL;
    if (!fl_utf8_valid(s, n)) return *reason = "caption is not valid UTF-8", NULL;
    while (n > 0 && (s[n - 1] == ' ' || (s[n - 1] >= '\t' && s[n - 1] <= '\r'))) n--;
    if (n == 0) return NULL;
    char *caption = fl_xmalloc(n + 1);
    memcpy(caption, s, n);
    caption[n] = '\0';
    return caption;
}

static void too_few_message(const fl_ds_collect *c, size_t usable, fl_error *err) {
    char msg[sizeof err->message];
    size_t need = c->limits->min_images;
    int len;
    if (usable == 0 && c->rejected_count == 0) len = snprintf(msg, sizeof msg, "no images found (need at least %zu)", need);
    else len = snprintf(msg, sizeof msg, "only %zu usable image%s (need at least %zu)", usable, usable == 1 ? "" : "s", need);
    size_t shown = c->rejected_count < 3 ? c->rejected_count : 3;
    for (size_t i = 0; i < shown && len > 0 && (size_t)len < sizeof msg; i++)
        len += snprintf(msg + len, sizeof msg - (size_t)len, "%s%s: %s", i == 0 ? "; rejected: " : "; ",
                        c->rejected[i].name, c->rejected[i].reason);
    if (c->rejected_count > shown && len > 0 && (size_t)len < sizeof msg)
        snprintf(msg + len, sizeof msg - (size_t)len, "; and %zu more", c->rejected_count - shown);
    fl_fail(err, FL_EINVAL, "%s", msg);
}

static void set_free_items(fl_imageset_item *items, size_t count) {
    for (size_t i = 0; i < count; i++) {
        free(items[i].name);
        free(items[i].caption);
        fl_image_release(&items[i].image);
    }
    free(items);
}

/* Decode every image file of c (sorted), pair captions, and hand out the set. Frees c. In
 * headers-only mode (c->headers_only) nothing is decoded: *summary gets the counts instead. */
static int build_set(fl_ds_collect *c, fl_imageset **out, fl_imageset_summary *summary, fl_error *err) {
#if !defined(FL_HAVE_STB)
    collect_free(c);
    return fl_fail(err, FL_EUNSUPPORTED, "decoding images needs stb_image, which this build lacks");
#endif
    const fl_imageset_limits *l = c->limits;
    if (c->count > 1) qsort(c->files, c->count, sizeof *c->files, compare_files);
    for (size_t i = 1; i < c->count; i++) {
        if (strcmp(c->files[i].name, c->files[i - 1].name) != 0) continue;
        fl_ds_reject(c, c->files[i].name, "duplicate name (the first one is used)");
        free(c->files[i].data);
        c->files[i].data = NULL;
        c->files[i].size = (size_t)-1; /* marks a dropped duplicate */
    }

    fl_imageset_item *items = NULL;
    size_t count = 0, cap = 0;
    int64_t pixels_used = 0;
    int rc = 0;
    for (size_t i = 0; i < c->count && rc == 0; i++) {
        fl_ds_file *f = &c->files[i];
        if (f->size == (size_t)-1 || is_caption_file(f->name)) continue;
        fl_error why;
        fl_error_clear(&why);
        int w = f->width, h = f->height;
        if (c->headers_only && f->reason) {
            fl_ds_reject(c, f->name, "%s", f->reason);
            continue;
        }
        if (!c->headers_only &&
            (fl_image_probe(f->data, f->size, &w, &h, &why) || fl_image_check_size(w, h, l->max_pixels, l->max_side, &why))) {
            fl_ds_reject(c, f->name, "%s", why.message);
            continue;
        }
        if ((int64_t)w * h > l->max_total_pixels - pixels_used) {
            fl_ds_reject(c, f->name, "%dx%d would take the set past its decoded-pixel budget (%lld pixels)", w, h,
                         (long long)l->max_total_pixels);
            continue;
        }
        if (c->headers_only) {
            if (count == l->max_images) {
                rc = fl_fail(err, FL_ELIMIT, "more than %zu usable images (the limit)", l->max_images);
                break;
            }
            count++;
            pixels_used += (int64_t)w * h;
            if ((int64_t)w * h > summary->largest_pixels) summary->largest_pixels = (int64_t)w * h;
            if (c->report) {
                fl_imageset_report *rp = c->report;
                rp->images = fl_xrealloc(rp->images, (rp->n_images + 1) * sizeof *rp->images);
                rp->images[rp->n_images++] = (fl_imageset_report_image){fl_xstrdup(f->name), w, h};
            }
            continue;
        }
        fl_image image;
        if (fl_image_decode_fit(f->data, f->size, l->max_pixels, l->max_side, l->fit_side, &image, &why)) {
            fl_ds_reject(c, f->name, "%s", why.message);
            continue;
        }
        if (count == l->max_images) {
            fl_image_release(&image);
            rc = fl_fail(err, FL_ELIMIT, "more than %zu usable images (the limit)", l->max_images);
            break;
        }
        free(f->data); /* the pixels replace the file bytes */
        f->data = NULL;
        pixels_used += (int64_t)w * h;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            items = fl_xrealloc(items, cap * sizeof *items);
        }
        items[count++] = (fl_imageset_item){fl_xstrdup(f->name), NULL, image};
    }

    /* Sidecar captions: `stem.txt` beside `stem.<image extension>`; unmatched .txt files are ignored
     * (and all of them in headers-only mode: a caption never decides whether a set is usable). */
    for (size_t i = 0; i < c->count && rc == 0 && !c->headers_only; i++) {
        fl_ds_file *f = &c->files[i];
        if (f->size == (size_t)-1 || !is_caption_file(f->name)) continue;
        bool matched = false;
        for (size_t k = 0; k < count && !matched; k++) matched = same_stem(f->name, items[k].name);
        if (!matched) continue;
        const char *reason = NULL;
        char *caption = read_caption(f, l->max_caption_bytes, &reason);
        if (reason) {
            fl_ds_reject(c, f->name, "%s (the image is kept without it)", reason);
            continue;
        }
        for (size_t k = 0; k < count; k++) {
            if (!caption || !same_stem(f->name, items[k].name) || items[k].caption) continue;
            items[k].caption = fl_xstrdup(caption);
        }
        free(caption);
    }

    if (c->rejected_count > 1) qsort(c->rejected, c->rejected_count, sizeof *c->rejected, compare_rejected);
    if (rc == 0 && count < l->min_images) {
        too_few_message(c, count, err);
        rc = -1;
    }
    if (c->report) {
        /* the report keeps every verdict; a set-wide refusal is its problem, not a failure */
        fl_imageset_report *rp = c->report;
        rp->rejected = c->rejected;
        rp->n_rejected = c->rejected_count;
        c->rejected = NULL;
        c->rejected_count = 0;
        rp->usable = rc == 0;
        if (rc) rp->problem = *err;
        if (rc == 0) {
            summary->images = count;
            summary->rejected = rp->n_rejected;
            summary->total_pixels = pixels_used;
        }
        summary->archive_ext = c->archive_ext;
        collect_free(c);
        return 0;
    }
    if (rc) {
        set_free_items(items, c->headers_only ? 0 : count); /* headers-only: counted, never made */
        collect_free(c);
        return -1;
    }
    if (c->headers_only) {
        summary->images = count;
        summary->rejected = c->rejected_count;
        summary->total_pixels = pixels_used;
        summary->archive_ext = c->archive_ext;
        collect_free(c);
        return 0;
    }
    fl_imageset *set = fl_xcalloc(1, sizeof *set);
    set->items = items;
    set->count = count;
    set->rejected = c->rejected;
    set->rejected_count = c->rejected_count;
    c->rejected = NULL;
    c->rejected_count = 0;
    collect_free(c);
    fl_log_debug("imageset: %zu images, %zu rejected", set->count, set->rejected_count);
    *out = set;
    return 0;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

static bool is_url(const char *source, bool *http) {
    const char *sep = strstr(source, "://");
    if (!sep || sep == source) return false;
    for (const char *p = source; p < sep; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '+' ||
                  ch == '-' || ch == '.';
        if (!ok) return false;
    }
    *http = strncasecmp(source, "http://", 7) == 0 || strncasecmp(source, "https://", 8) == 0;
    return true;
}

/* Collects an archive in memory into c (limits checked first; headers_only and report as the
 * caller's mode needs). On failure c is freed. */
static int collect_memory(const void *bytes, size_t n, const char *name_hint, const fl_imageset_limits *limits,
                          bool headers_only, fl_imageset_report *report, fl_ds_collect *c, fl_error *err) {
    if (check_limits(limits, err)) return -1;
    if (!bytes && n > 0) return fl_fail(err, FL_EINVAL, "no archive bytes given");
    char label[256];
    fl_ds_display_name(name_hint && *name_hint ? name_hint : "upload", label, sizeof label);
    *c = (fl_ds_collect){.limits = limits, .headers_only = headers_only, .report = report};
    if (fl_ds_collect_archive_memory(c, bytes, n, label, err)) {
        collect_free(c);
        return -1;
    }
    return 0;
}

int fl_imageset_load_memory(const void *bytes, size_t n, const char *name_hint, const fl_imageset_limits *limits,
                            fl_imageset **out, fl_error *err) {
    *out = NULL;
    fl_imageset_limits defaults = fl_imageset_limits_default();
    fl_ds_collect c;
    if (collect_memory(bytes, n, name_hint, limits ? limits : &defaults, false, NULL, &c, err)) return -1;
    return build_set(&c, out, NULL, err);
}

int fl_imageset_inspect_memory(const void *bytes, size_t n, const char *name_hint, const fl_imageset_limits *limits,
                               fl_imageset_summary *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    fl_imageset_limits defaults = fl_imageset_limits_default();
    fl_ds_collect c;
    if (collect_memory(bytes, n, name_hint, limits ? limits : &defaults, true, NULL, &c, err)) return -1;
    return build_set(&c, NULL, out, err);
}

int fl_imageset_report_memory(const void *bytes, size_t n, const char *name_hint, const fl_imageset_limits *limits,
                              fl_imageset_report *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    fl_imageset_limits defaults = fl_imageset_limits_default();
    fl_ds_collect c;
    if (collect_memory(bytes, n, name_hint, limits ? limits : &defaults, true, out, &c, err)) return -1;
    fl_error set_err = {0};
    int rc = build_set(&c, NULL, &out->summary, &set_err);
    if (rc != 0) { /* a build without stb; otherwise build_set answers in the report */
        *err = set_err;
        fl_imageset_report_clear(out);
    }
    return rc;
}

void fl_imageset_report_clear(fl_imageset_report *report) {
    for (size_t i = 0; i < report->n_images; i++) free(report->images[i].name);
    free(report->images);
    for (size_t i = 0; i < report->n_rejected; i++) {
        free(report->rejected[i].name);
        free(report->rejected[i].reason);
    }
    free(report->rejected);
    memset(report, 0, sizeof *report);
}

int fl_imageset_load(const char *source, const fl_imageset_limits *limits, fl_imageset **out, fl_error *err) {
    *out = NULL;
    fl_imageset_limits defaults = fl_imageset_limits_default();
    if (!limits) limits = &defaults;
    if (check_limits(limits, err)) return -1;
    if (!source || !*source) return fl_fail(err, FL_EINVAL, "no image-set source given");

    bool http = false;
    if (is_url(source, &http)) {
        if (!http) return fl_fail(err, FL_EUNSUPPORTED, "only http:// and https:// URLs are supported");
        /* The archive streams to a temporary file (removed at once: only this descriptor holds
         * it), never to memory, and is read from there like an uploaded archive. */
        const char *tmpdir = getenv("TMPDIR");
        char path[4096];
        snprintf(path, sizeof path, "%s/flashlora-download-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
        int fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0) return fl_fail(err, FL_EIO, "download failed: no temporary file (%s)", strerror(errno));
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        unlink(path);
        fl_fetch_limits fetch = {.max_bytes = limits->url_max_bytes, .timeout_seconds = limits->url_timeout_seconds,
                                 .allow_private = limits->url_allow_private};
        size_t size = 0;
        int rc = fl_fetch_url_to_fd(source, &fetch, fd, &size, err);
        fl_ds_collect c = {.limits = limits};
        if (rc == 0 && size == 0) rc = fl_fail(err, FL_EINVAL, "download: empty archive");
        if (rc == 0) rc = fl_ds_collect_archive_file(&c, proc, "download", err);
        close(fd);
        if (rc) {
            collect_free(&c);
            return -1;
        }
        return build_set(&c, out, NULL, err);
    }

    char label[256];
    fl_ds_display_name(base_name(source), label, sizeof label);
    struct stat st;
    if (stat(source, &st) != 0) return fl_fail(err, FL_ENOTFOUND, "%s: no such folder or archive", label);
    fl_ds_collect c = {.limits = limits};
    int rc;
    if (S_ISDIR(st.st_mode)) rc = fl_ds_collect_dir(&c, source, err);
    else if (S_ISREG(st.st_mode)) rc = fl_ds_collect_archive_file(&c, source, label, err);
    else rc = fl_fail(err, FL_EINVAL, "%s: not a folder or an archive file", label);
    if (rc) {
        collect_free(&c);
        return -1;
    }
    return build_set(&c, out, NULL, err);
}

void fl_imageset_free(fl_imageset *set) {
    if (!set) return;
    set_free_items(set->items, set->count);
    for (size_t i = 0; i < set->rejected_count; i++) {
        free(set->rejected[i].name);
        free(set->rejected[i].reason);
    }
    free(set->rejected);
    free(set);
}

const fl_rejected *fl_imageset_find_rejected(const fl_imageset *set, const char *name) {
    for (size_t i = 0; set && i < set->rejected_count; i++)
        if (strcmp(set->rejected[i].name, name) == 0) return &set->rejected[i];
    return NULL;
}
