/*
 * fileio.h — the small file operations every layer needs, done once and durably: create a
 * directory path, sync a directory, replace a file atomically (temporary file in the same
 * directory, fsync, rename, fsync of the directory), and read a whole file with a size cap.
 */
#ifndef FL_CORE_FILEIO_H
#define FL_CORE_FILEIO_H
#include <stddef.h>

#include "core/error.h"

/* mkdir -p (mode 0755); an existing directory is fine. */
int fl_mkdirs(const char *path, fl_error *err);
/* fsync of a directory, so a rename or a new entry in it survives a crash. */
int fl_fsync_dir(const char *dir, fl_error *err);
/* fsync of the directory holding path. */
int fl_fsync_parent_dir(const char *path, fl_error *err);
/* Writes data to path atomically and durably: readers see the old file or the whole new one. */
int fl_write_file_atomic(const char *path, const void *data, size_t size, fl_error *err);
/* The whole file as a malloc'ed buffer with a NUL after its last byte; files over max_bytes are
 * FL_ELIMIT. */
int fl_read_file(const char *path, size_t max_bytes, unsigned char **data, size_t *size, fl_error *err);

#endif
