/*
 * sources.c — gathering the raw files of an image set from a folder or an archive.
 *
 * Nothing is ever extracted to disk. Folders are walked with openat/fstatat without following
 * symlinks, and every file is opened O_NOFOLLOW and re-checked to be a regular file. Archives
 * (zip, tar, tar.gz only: no other formats or external filter programs are enabled) are read with
 * libarchive into memory buffers capped by the limits: bytes are counted as they inflate, never
 * taken from the sizes an archive declares, and a file is refused as soon as it passes
 * max_file_bytes. In a compressed stream, skipping an entry means inflating it, so there the
 * entries we do not keep are drained here under the total byte budget instead of being left to
 * libarchive's unbounded skip.
 */
#include "datasets/imageset_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/utf8.h"
#include "fl_build_config.h"

#if defined(FL_HAVE_ARCHIVE)
#include <archive.h>
#include <archive_entry.h>
#endif

enum { FL_DS_MAX_DEPTH = 32, FL_DS_CHUNK = 64 << 10, FL_DS_FIRST_BUFFER = 4 << 10 };

/* ---- names -------------------------------------------------------------------------------------- */

static bool is_separator(char ch) {
    return ch == '/' || ch == '\\';
}

fl_ds_name_kind fl_ds_clean_name(const char *raw, char *out, const char **reason) {
    size_t len = strlen(raw);
    out[0] = '\0';
    if (len == 0) return *reason = "empty name", FL_DS_NAME_REFUSED;
    if (len > FL_DS_NAME_MAX) return *reason = "name longer than 1024 bytes", FL_DS_NAME_REFUSED;
    if (!fl_utf8_valid(raw, len))
        return *reason = "name is not valid UTF-8", FL_DS_NAME_REFUSED;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)raw[i] < 0x20 || raw[i] == 0x7f)
            return *reason = "name contains control characters", FL_DS_NAME_REFUSED;
    bool drive = len >= 2 && raw[1] == ':' && ((raw[0] >= 'a' && raw[0] <= 'z') || (raw[0] >= 'A' && raw[0] <= 'Z'));
    if (is_separator(raw[0]) || drive) return *reason = "absolute path refused", FL_DS_NAME_REFUSED;

    /* `..` is refused whether separated by '/' or '\\'; only '/' separates components otherwise. */
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && !is_separator(raw[j])) j++;
        if (j - i == 2 && raw[i] == '.' && raw[i + 1] == '.')
            return *reason = "path escapes the archive (..)", FL_DS_NAME_REFUSED;
        i = j + 1;
    }
    bool hidden = false;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && raw[j] != '/') j++;
        size_t n = j - i;
        bool dot = n == 1 && raw[i] == '.';
        if (n > 0 && !dot) {
            if (raw[i] == '.' || (n == 8 && memcmp(raw + i, "__MACOSX", 8) == 0)) hidden = true;
            if (o > 0) out[o++] = '/';
            memcpy(out + o, raw + i, n);
            o += n;
        }
        i = j + 1;
    }
    out[o] = '\0';
    if (hidden || o == 0) return FL_DS_NAME_HIDDEN;
    return FL_DS_NAME_OK;
}

/* A read buffer cut to the bytes it holds, so many small files do not each keep a large block. */
static unsigned char *shrink(unsigned char *buf, size_t size, size_t cap) {
    if (!buf || size == cap) return buf;
    if (size == 0) {
        free(buf);
        return NULL;
    }
    unsigned char *p = realloc(buf, size);
    return p ? p : buf;
}

/* ---- folders ------------------------------------------------------------------------------------ */

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read a regular file (already checked with fstatat) relative to dirfd into a buffer capped at
 * max_file_bytes + 1 bytes. Returns -1 only for a set-wide failure. */
static int read_dir_file(fl_ds_collect *c, int dirfd, const char *entry, const char *rel, fl_error *err) {
    int fd = openat(dirfd, entry, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        fl_ds_reject(c, rel, "could not open (%s)", strerror(errno));
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        fl_ds_reject(c, rel, "not a regular file");
        return 0;
    }
    size_t limit = c->limits->max_file_bytes;
    unsigned char *buf = NULL;
    size_t size = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (size > limit) {
            char lim[32];
            fl_ds_reject(c, rel, "larger than the %s per-file limit", fl_ds_format_bytes(limit, lim, sizeof lim));
            goto drop;
        }
        if (size == cap) {
            size_t grown = cap ? cap * 2 : FL_DS_FIRST_BUFFER;
            if (grown > limit + 1) grown = limit + 1;
            unsigned char *p = realloc(buf, grown);
            if (!p) {
                rc = fl_fail(err, FL_ENOMEM, "%s: not enough memory to read the file", rel);
                goto drop;
            }
            buf = p;
            cap = grown;
        }
        ssize_t got = read(fd, buf + size, cap - size);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            fl_ds_reject(c, rel, "could not read (%s)", strerror(errno));
            goto drop;
        }
        if (got == 0) break;
        if (fl_ds_count_bytes(c, (size_t)got, err)) {
            rc = -1;
            goto drop;
        }
        size += (size_t)got;
    }
    close(fd);
    fl_ds_add_file(c, rel, shrink(buf, size, cap), size);
    return 0;
drop:
    close(fd);
    free(buf);
    return rc;
}

static int walk_dir(fl_ds_collect *c, int fd, const char *prefix, int depth, fl_error *err);

static int visit_dir_entry(fl_ds_collect *c, int dirfd, const char *entry, const char *prefix, int depth,
                           fl_error *err) {
    char rel[FL_DS_NAME_MAX + 2];
    char shown[256];
    int len = snprintf(rel, sizeof rel, "%s%s%s", prefix, *prefix ? "/" : "", entry);
    if (len < 0 || (size_t)len > FL_DS_NAME_MAX) {
        fl_ds_display_name(entry, shown, sizeof shown);
        fl_ds_reject(c, shown, "name longer than 1024 bytes");
        return 0;
    }
    size_t elen = strlen(entry);
    bool control = false;
    for (size_t i = 0; i < elen; i++) control |= (unsigned char)entry[i] < 0x20 || entry[i] == 0x7f;
    if (control || !fl_utf8_valid(entry, elen)) {
        fl_ds_display_name(rel, shown, sizeof shown);
        fl_ds_reject(c, shown, control ? "name contains control characters" : "name is not valid UTF-8");
        return 0;
    }
    if (entry[0] == '.' || strcmp(entry, "__MACOSX") == 0) return 0; /* hidden: skipped silently */

    struct stat st;
    if (fstatat(dirfd, entry, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        fl_ds_reject(c, rel, "could not stat (%s)", strerror(errno));
        return 0;
    }
    if (S_ISLNK(st.st_mode)) return fl_ds_reject(c, rel, "symbolic link refused"), 0;
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) return fl_ds_reject(c, rel, "device node refused"), 0;
    if (S_ISFIFO(st.st_mode)) return fl_ds_reject(c, rel, "fifo refused"), 0;
    if (S_ISSOCK(st.st_mode)) return fl_ds_reject(c, rel, "socket refused"), 0;
    if (S_ISDIR(st.st_mode)) {
        if (depth + 1 >= FL_DS_MAX_DEPTH) return fl_ds_reject(c, rel, "folders nested too deeply"), 0;
        int sub = openat(dirfd, entry, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) return fl_ds_reject(c, rel, "could not open folder (%s)", strerror(errno)), 0;
        return walk_dir(c, sub, rel, depth + 1, err);
    }
    if (!S_ISREG(st.st_mode)) return fl_ds_reject(c, rel, "not a regular file"), 0;
    return read_dir_file(c, dirfd, entry, rel, err);
}

/* Walk the folder open as fd (taken over and closed), entries in name order. */
static int walk_dir(fl_ds_collect *c, int fd, const char *prefix, int depth, fl_error *err) {
    DIR *dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        if (depth == 0) return fl_fail(err, FL_EIO, "cannot read the folder (%s)", strerror(errno));
        fl_ds_reject(c, prefix, "could not read folder (%s)", strerror(errno));
        return 0;
    }
    char **names = NULL;
    size_t count = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        if (fl_ds_count_entry(c, err)) {
            rc = -1;
            break;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            names = fl_xrealloc(names, cap * sizeof *names);
        }
        names[count++] = fl_xstrdup(de->d_name);
    }
    if (rc == 0 && count > 1) qsort(names, count, sizeof *names, compare_strings);
    for (size_t i = 0; rc == 0 && i < count; i++) rc = visit_dir_entry(c, dirfd(dir), names[i], prefix, depth, err);
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
    closedir(dir);
    return rc;
}

int fl_ds_collect_dir(fl_ds_collect *c, const char *path, fl_error *err) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fl_fail(err, errno == ENOENT ? FL_ENOTFOUND : FL_EIO, "cannot open the folder (%s)", strerror(errno));
    return walk_dir(c, fd, "", 0, err);
}

/* ---- archives ----------------------------------------------------------------------------------- */

#if defined(FL_HAVE_ARCHIVE)

/* Inflate and discard the rest of the current entry, counting the bytes against the total. */
static int drain_entry(fl_ds_collect *c, struct archive *a, fl_error *err) {
    unsigned char scratch[16384];
    for (;;) {
        la_ssize_t got = archive_read_data(a, scratch, sizeof scratch);
        if (got <= 0) return 0; /* end, or an error the next header read reports */
        if (fl_ds_count_bytes(c, (size_t)got, err)) return -1;
    }
}

/* After a refusal: in a compressed stream, drain what libarchive would otherwise inflate
 * unbounded while skipping; elsewhere its skip only moves past stored bytes. */
static int skip_entry(fl_ds_collect *c, struct archive *a, fl_error *err) {
    if (archive_filter_count(a) > 1) return drain_entry(c, a, err);
    return 0;
}

static int read_archive_entry(fl_ds_collect *c, struct archive *a, const char *name, fl_error *err) {
    size_t limit = c->limits->max_file_bytes;
    unsigned char *buf = NULL;
    size_t size = 0, cap = 0;
    for (;;) {
        if (size > limit) {
            char lim[32];
            free(buf);
            fl_ds_reject(c, name, "larger than the %s per-file limit", fl_ds_format_bytes(limit, lim, sizeof lim));
            return skip_entry(c, a, err);
        }
        if (size == cap) {
            size_t grown = cap ? cap * 2 : FL_DS_FIRST_BUFFER;
            if (grown > limit + 1) grown = limit + 1;
            unsigned char *p = realloc(buf, grown);
            if (!p) {
                free(buf);
                return fl_fail(err, FL_ENOMEM, "%s: not enough memory to read the entry", name);
            }
            buf = p;
            cap = grown;
        }
        la_ssize_t got = archive_read_data(a, buf + size, cap - size);
        if (got == 0) break;
        if (got < 0) {
            free(buf);
            fl_ds_reject(c, name, "corrupt or unsupported archive entry (libarchive: %s)",
                         archive_error_string(a) ? archive_error_string(a) : "read error");
            return 0;
        }
        if (fl_ds_count_bytes(c, (size_t)got, err)) {
            free(buf);
            return -1;
        }
        size += (size_t)got;
    }
    fl_ds_add_file(c, name, shrink(buf, size, cap), size);
    return 0;
}

static int visit_archive_entry(fl_ds_collect *c, struct archive *a, struct archive_entry *entry, size_t index,
                               fl_error *err) {
    const char *raw = archive_entry_pathname_utf8(entry);
    if (!raw) raw = archive_entry_pathname(entry);
    char shown[256];
    if (!raw) {
        snprintf(shown, sizeof shown, "(entry %zu)", index + 1);
        fl_ds_reject(c, shown, "entry name is not readable");
        return skip_entry(c, a, err);
    }
    char name[FL_DS_NAME_MAX + 1];
    const char *reason = NULL;
    fl_ds_name_kind kind = fl_ds_clean_name(raw, name, &reason);
    if (kind == FL_DS_NAME_REFUSED) {
        fl_ds_display_name(raw, shown, sizeof shown);
        fl_ds_reject(c, shown, "%s", reason);
        return skip_entry(c, a, err);
    }
    if (kind == FL_DS_NAME_HIDDEN) return skip_entry(c, a, err);

    mode_t type = archive_entry_filetype(entry);
    const char *refusal = NULL;
    if (archive_entry_hardlink(entry)) refusal = "hard link refused";
    else if (archive_entry_symlink(entry) || type == AE_IFLNK) refusal = "symbolic link refused";
    else if (type == AE_IFDIR) return skip_entry(c, a, err);
    else if (type == AE_IFCHR || type == AE_IFBLK) refusal = "device node refused";
    else if (type == AE_IFIFO) refusal = "fifo refused";
    else if (type == AE_IFSOCK) refusal = "socket refused";
    else if (type != AE_IFREG) refusal = "not a regular file";
    if (refusal) {
        fl_ds_reject(c, name, "%s", refusal);
        return skip_entry(c, a, err);
    }
    return read_archive_entry(c, a, name, err);
}

static struct archive *new_reader(void) {
    struct archive *a = archive_read_new();
    FL_CHECK(a != NULL);
    /* Only the formats we accept: others (mtree, for one) can reference files on this machine. */
    archive_read_support_format_zip(a);
    archive_read_support_format_tar(a);
    archive_read_support_filter_gzip(a);
    return a;
}

static int read_archive(fl_ds_collect *c, struct archive *a, const char *label, fl_error *err) {
    size_t index = 0;
    int rc = 0;
    for (;;) {
        struct archive_entry *entry = NULL;
        int r = archive_read_next_header(a, &entry);
        if (r == ARCHIVE_EOF) break;
        const char *why = archive_error_string(a) ? archive_error_string(a) : "unknown error";
        if (r == ARCHIVE_FATAL) {
            if (index == 0)
                rc = fl_fail(err, FL_EINVAL, "%s: not a zip or tar archive, or corrupt (libarchive: %s)", label, why);
            else
                rc = fl_fail(err, FL_EINVAL, "%s: archive is truncated or corrupt after %zu entries (libarchive: %s)",
                             label, index, why);
            break;
        }
        if ((rc = fl_ds_count_entry(c, err)) != 0) break;
        if (!c->archive_ext) {
            bool zip = (archive_format(a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_ZIP;
            bool gzip = archive_filter_count(a) > 1 && archive_filter_code(a, 0) == ARCHIVE_FILTER_GZIP;
            c->archive_ext = zip ? ".zip" : gzip ? ".tar.gz" : ".tar";
        }
        if (r == ARCHIVE_RETRY) {
            char shown[64];
            snprintf(shown, sizeof shown, "(entry %zu)", index + 1);
            fl_ds_reject(c, shown, "unreadable archive entry (libarchive: %s)", why);
            index++;
            continue;
        }
        if ((rc = visit_archive_entry(c, a, entry, index, err)) != 0) break;
        index++;
    }
    archive_read_free(a);
    return rc;
}

int fl_ds_collect_archive_memory(fl_ds_collect *c, const void *bytes, size_t n, const char *label, fl_error *err) {
    if (n == 0) return fl_fail(err, FL_EINVAL, "%s: empty archive", label);
    struct archive *a = new_reader();
    if (archive_read_open_memory(a, bytes, n) != ARCHIVE_OK) {
        int rc = fl_fail(err, FL_EINVAL, "%s: not a zip or tar archive, or corrupt (libarchive: %s)", label,
                         archive_error_string(a) ? archive_error_string(a) : "open failed");
        archive_read_free(a);
        return rc;
    }
    return read_archive(c, a, label, err);
}

int fl_ds_collect_archive_file(fl_ds_collect *c, const char *path, const char *label, fl_error *err) {
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size == 0) return fl_fail(err, FL_EINVAL, "%s: empty archive", label);
    struct archive *a = new_reader();
    if (archive_read_open_filename(a, path, FL_DS_CHUNK) != ARCHIVE_OK) {
        int rc = fl_fail(err, FL_EINVAL, "%s: not a zip or tar archive, or corrupt (libarchive: %s)", label,
                         archive_error_string(a) ? archive_error_string(a) : "open failed");
        archive_read_free(a);
        return rc;
    }
    return read_archive(c, a, label, err);
}

#else /* no libarchive */

int fl_ds_collect_archive_memory(fl_ds_collect *c, const void *bytes, size_t n, const char *label, fl_error *err) {
    return fl_fail(err, FL_EUNSUPPORTED, "%s: reading archives needs libarchive, which this build lacks", label);
}

int fl_ds_collect_archive_file(fl_ds_collect *c, const char *path, const char *label, fl_error *err) {
    return fl_fail(err, FL_EUNSUPPORTED, "%s: reading archives needs libarchive, which this build lacks", label);
}

#endif
