/*
 * store.c — the content-addressed adapter store: <root>/blobs/<xx>/<sha256>.safetensors.
 *
 * A put writes to a temporary file (mkstemp) in <root>/blobs, hashing as it writes, fsyncs it,
 * renames it to its final name and fsyncs the directory that received it (and blobs/ when the
 * two-digit directory was just created). A crash leaves at most a ".tmp-" file in blobs/, never
 * a partial file under a hash; fl_store_open removes such leftovers older than an hour.
 */
#include "serve/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/sha256.h"

#define TMP_PREFIX ".tmp-"
#define COPY_CHUNK (1u << 20)

struct fl_store {
    char *root;
    char *blobs; /* <root>/blobs */
};

static int write_all(int fd, const void *data, size_t n) {
    const unsigned char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Temporary files older than an hour are leftovers of a crashed put. */
static void remove_stale_temps(const char *blobs) {
    DIR *d = opendir(blobs);
    if (!d) return;
    time_t now = time(NULL);
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, TMP_PREFIX, strlen(TMP_PREFIX))) continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
            now - st.st_mtime > 3600)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

int fl_store_open(const char *root, fl_store **out, fl_error *err) {
    *out = NULL;
    if (!root || !*root) return fl_fail(err, FL_EINVAL, "no adapter store directory");
    if (fl_mkdirs(root, err) != 0) return -1;
    fl_store *s = fl_xcalloc(1, sizeof *s);
    s->root = fl_xstrdup(root);
    size_t n = strlen(root);
    while (n > 1 && s->root[n - 1] == '/') s->root[--n] = '\0';
    if (asprintf(&s->blobs, "%s/blobs", s->root) < 0) FL_CHECK(!"out of memory");
    if (fl_mkdirs(s->blobs, err) != 0) {
        fl_store_close(s);
        return -1;
    }
    remove_stale_temps(s->blobs);
    *out = s;
    return 0;
}

void fl_store_close(fl_store *s) {
    if (!s) return;
    free(s->root);
    free(s->blobs);
    free(s);
}

const char *fl_store_root(const fl_store *s) {
    return s->root;
}

static bool is_hex64(const char *hex) {
    if (!hex) return false;
    size_t i = 0;
    for (; hex[i]; i++) {
        if (i >= 64) return false;
        char c = hex[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return i == 64;
}

int fl_store_path(const fl_store *s, const char *hex, char *path, size_t cap, fl_error *err) {
    if (!is_hex64(hex)) return fl_fail(err, FL_EINVAL, "not a SHA-256 (64 lower-case hex digits)");
    int n = snprintf(path, cap, "%s/%.2s/%s.safetensors", s->blobs, hex, hex);
    if (n < 0 || (size_t)n >= cap) return fl_fail(err, FL_ELIMIT, "store path longer than %zu bytes", cap);
    return 0;
}

bool fl_store_has(const fl_store *s, const char *hex) {
    char path[4096];
    struct stat st;
    return fl_store_path(s, hex, path, sizeof path, NULL) == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A new temporary file in blobs/; *tmp gets its path (malloc'ed). */
static int open_temp(const fl_store *s, char **tmp, fl_error *err) {
    if (asprintf(tmp, "%s/" TMP_PREFIX "XXXXXX", s->blobs) < 0) FL_CHECK(!"out of memory");
    int fd = mkostemp(*tmp, O_CLOEXEC);
    if (fd < 0) {
        fl_fail_errno(err, errno, "cannot create a file in %s", s->blobs);
        free(*tmp);
        *tmp = NULL;
        return -1;
    }
    fchmod(fd, 0644);
    return fd;
}

/* fsyncs and closes fd (the complete temporary file tmp), then moves it to its hash's place. */
static int commit_temp(fl_store *s, int fd, char *tmp, const char *hex, fl_error *err) {
    int rc = -1;
    if (fsync(fd) != 0) {
        fl_fail_errno(err, errno, "cannot write %s", tmp);
        close(fd);
        goto done;
    }
    if (close(fd) != 0) {
        fl_fail_errno(err, errno, "cannot write %s", tmp);
        goto done;
    }
    char dir[4096], path[4096];
    snprintf(dir, sizeof dir, "%s/%.2s", s->blobs, hex);
    if (fl_store_path(s, hex, path, sizeof path, err) != 0) goto done;
    struct stat st;
    bool new_dir = stat(dir, &st) != 0;
    if (fl_mkdirs(dir, err) != 0) goto done;
    if (new_dir && fl_fsync_dir(s->blobs, err) != 0) goto done;
    if (rename(tmp, path) != 0) {
        fl_fail_errno(err, errno, "cannot rename %s to %s", tmp, path);
        goto done;
    }
    rc = fl_fsync_dir(dir, err);
done:
    if (rc != 0) unlink(tmp);
    free(tmp);
    return rc;
}

int fl_store_put_bytes(fl_store *s, const void *data, size_t size, char hex[65], fl_error *err) {
    if (size && !data) return fl_fail(err, FL_EINVAL, "no bytes to store");
    fl_sha256_hex(size ? data : "", size, hex);
    if (fl_store_has(s, hex)) return 0;
    char *tmp = NULL;
    int fd = open_temp(s, &tmp, err);
    if (fd < 0) return -1;
    if (size && write_all(fd, data, size) != 0) {
        fl_fail_errno(err, errno, "cannot write %s", tmp);
        close(fd);
        unlink(tmp);
        free(tmp);
        return -1;
    }
    return commit_temp(s, fd, tmp, hex, err);
}

int fl_store_put_file(fl_store *s, const char *src, char hex[65], fl_error *err) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return fl_fail(err, FL_EIO, "cannot open %s: %s", src, strerror(errno));
    struct stat st;
    if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(in);
        return fl_fail(err, FL_EINVAL, "%s is not a regular file", src);
    }
    char *tmp = NULL;
    int fd = open_temp(s, &tmp, err);
    if (fd < 0) {
        close(in);
        return -1;
    }
    /* Hash what is copied (not the file before or after), so the name always matches the bytes. */
    fl_sha256 h;
    fl_sha256_init(&h);
    unsigned char *buf = fl_xmalloc(COPY_CHUNK);
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, COPY_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = fl_fail(err, FL_EIO, "cannot read %s: %s", src, strerror(errno));
            break;
        }
        if (n == 0) break;
        fl_sha256_update(&h, buf, (size_t)n);
        if (write_all(fd, buf, (size_t)n) != 0) {
            rc = fl_fail_errno(err, errno, "cannot write %s", tmp);
            break;
        }
    }
    free(buf);
    close(in);
    if (rc != 0) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return -1;
    }
    uint8_t digest[32];
    fl_sha256_final(&h, digest);
    fl_sha256_digest_hex(digest, hex);
    if (fl_store_has(s, hex)) { /* already stored: keep the file in place */
        close(fd);
        unlink(tmp);
        free(tmp);
        return 0;
    }
    return commit_temp(s, fd, tmp, hex, err);
}

int fl_store_remove(fl_store *s, const char *hex, fl_error *err) {
    char path[4096], dir[4096];
    if (fl_store_path(s, hex, path, sizeof path, err) != 0) return -1;
    if (unlink(path) != 0) {
        if (errno == ENOENT) return 0;
        return fl_fail(err, FL_EIO, "cannot remove %s: %s", path, strerror(errno));
    }
    snprintf(dir, sizeof dir, "%s/%.2s", s->blobs, hex);
    return fl_fsync_dir(dir, err);
}

int fl_store_locate(void *store, const char *hex, char *path, size_t cap, fl_error *err) {
    fl_store *s = store;
    if (fl_store_path(s, hex, path, cap, err) != 0) return -1;
    if (!fl_store_has(s, hex)) return fl_fail(err, FL_ENOTFOUND, "adapter file %s is not in the store", hex);
    return 0;
}
