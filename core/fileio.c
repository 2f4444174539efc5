/*
 * fileio.c — directory creation and syncing, atomic file replacement, whole-file reads
 * (see fileio.h).
 */
#include "core/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fl_mkdirs(const char *path, fl_error *err) {
    char *p = fl_xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; rc == 0; s++) {
        bool end = *s == '\0';
        if (!end && *s != '/') continue;
        *s = '\0';
        struct stat st;
        if (mkdir(p, 0755) != 0 && !(errno == EEXIST && stat(p, &st) == 0 && S_ISDIR(st.st_mode)))
            rc = errno == EEXIST ? fl_fail(err, FL_EIO, "cannot create %s: not a directory", p)
                                : fl_fail_errno(err, errno, "cannot create %s", p);
        if (end) break;
        *s = '/';
    }
    free(p);
    return rc;
}

int fl_fsync_dir(const char *dir, fl_error *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL && errno != EROFS))
        rc = fl_fail(err, FL_EIO, "cannot sync directory %s: %s", dir, strerror(errno));
    if (fd >= 0) close(fd);
    return rc;
}

int fl_fsync_parent_dir(const char *path, fl_error *err) {
    char *dir = fl_xstrdup(path);
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (!slash) d = ".";
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    int rc = fl_fsync_dir(d, err);
    free(dir);
    return rc;
}

int fl_write_file_atomic(const char *path, const void *data, size_t size, fl_error *err) {
    size_t n = strlen(path);
    char *tmp = fl_xmalloc(n + 16);
    snprintf(tmp, n + 16, "%s.tmp.XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        fl_fail_errno(err, errno, "cannot write %s", path);
        free(tmp);
        return -1;
    }
    fchmod(fd, 0644);
    int rc = 0;
    const unsigned char *p = data;
    for (size_t done = 0; done < size && rc == 0;) {
        ssize_t w = write(fd, p + done, size - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) rc = fl_fail_errno(err, w < 0 ? errno : ENOSPC, "cannot write %s", path);
        else done += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0) rc = fl_fail_errno(err, errno, "cannot write %s", path);
    if (close(fd) != 0 && rc == 0) rc = fl_fail_errno(err, errno, "cannot write %s", path);
    if (rc == 0 && rename(tmp, path) != 0) rc = fl_fail_errno(err, errno, "cannot write %s", path);
    if (rc != 0) unlink(tmp);
    free(tmp);
    return rc == 0 ? fl_fsync_parent_dir(path, err) : rc;
}

int fl_read_file(const char *path, size_t max_bytes, unsigned char **data, size_t *size, fl_error *err) {
    *data = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return fl_fail(err, e == ENOENT ? FL_ENOTFOUND : FL_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max_bytes) {
        close(fd);
        return fl_fail(err, S_ISREG(st.st_mode) ? FL_ELIMIT : FL_EINVAL, "%s: %s", path,
                       S_ISREG(st.st_mode) ? "larger than the limit" : "not a regular file");
    }
    size_t n = (size_t)st.st_size;
    unsigned char *buf = fl_xmalloc(n + 1);
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        free(buf);
        return fl_fail(err, FL_EIO, "%s: short read", path);
    }
    buf[n] = '\0';
    *data = buf;
    *size = n;
    return 0;
}
