/*
 * ds_test_util.h — helpers shared by the datasets tests: a private temporary work area, small
 * file utilities, a BMP writer for synthetic images, and in-memory archives built with
 * libarchive's writer (zip, tar, tar.gz) including symlinks and folders.
 */
#ifndef FL_TESTS_DATASETS_UTIL_H
#define FL_TESTS_DATASETS_UTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "datasets/imageset.h"

/* Create a fresh directory under $TMPDIR (or /tmp); returns a malloc'ed path. */
char *ds_temp_dir(const char *tag);
/* Remove a directory tree (not following symlinks). */
void ds_remove_tree(const char *path);
/* Number of entries in a directory (excluding . and ..), or -1. */
int ds_dir_entries(const char *path);

/* path = dir/name in buf. */
const char *ds_join(char *buf, size_t size, const char *dir, const char *name);
bool ds_write_file(const char *path, const void *data, size_t n);
/* Whole file, malloc'ed; NULL if unreadable. */
unsigned char *ds_read_file(const char *path, size_t *n);
/* Path of tests/datasets/corpus/<name>. */
const char *ds_corpus_path(char *buf, size_t size, const char *name);

/* A 24-bit BMP of w x h where pixel (x, y) = rgb(x, y); malloc'ed, *n bytes. */
typedef void (*ds_pixel_fn)(int x, int y, unsigned char rgb[3]);
unsigned char *ds_bmp(int w, int h, ds_pixel_fn fn, size_t *n);
/* A w x h BMP of a single color. */
unsigned char *ds_bmp_solid(int w, int h, unsigned char r, unsigned char g, unsigned char b, size_t *n);

typedef enum ds_entry_kind { DS_FILE, DS_DIR, DS_SYMLINK } ds_entry_kind;
typedef struct ds_entry {
    const char *name;
    const void *data; /* DS_FILE */
    size_t size;
    ds_entry_kind kind;
    const char *link; /* DS_SYMLINK target */
} ds_entry;
typedef enum ds_archive_format { DS_ZIP, DS_ZIP_STORED, DS_TAR, DS_TAR_GZ } ds_archive_format;
/* Build an archive in memory (malloc'ed, *n bytes), or NULL without libarchive. */
unsigned char *ds_archive(const ds_entry *entries, size_t count, ds_archive_format format, size_t *n);

/* The rejection reason recorded for name in set, or NULL. */
const char *ds_reason(const fl_imageset *set, const char *name);
/* Index of the item called name in set, or -1. */
int ds_item(const fl_imageset *set, const char *name);

#endif
