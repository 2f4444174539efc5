/*
 * ds_test_util.c — temporary work areas, file helpers, BMP writer and in-memory archives for the
 * datasets tests.
 */
#include "ds_test_util.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "fl_build_config.h"
#include "harness.h"

#if defined(FL_HAVE_ARCHIVE)
#include <archive.h>
#include <archive_entry.h>
#endif

char *ds_temp_dir(const char *tag) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    char path[4096];
    snprintf(path, sizeof path, "%s/fl-ds-%s-XXXXXX", base, tag);
    FL_CHECKF(mkdtemp(path) != NULL, "mkdtemp %s failed", path);
    return fl_xstrdup(path);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void ds_remove_tree(const char *path) {
    if (path) nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int ds_dir_entries(const char *path) {
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

const char *ds_join(char *buf, size_t size, const char *dir, const char *name) {
    snprintf(buf, size, "%s/%s", dir, name);
    return buf;
}

bool ds_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

unsigned char *ds_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = fl_xmalloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) buf = fl_xrealloc(buf, cap *= 2);
    }
    fclose(f);
    *n = len;
    return buf;
}

const char *ds_corpus_path(char *buf, size_t size, const char *name) {
    char rel[512];
    snprintf(rel, sizeof rel, "datasets/corpus/%s", name);
    return fl_test_data_path(rel, buf, size);
}

static void put32(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8), p[2] = (unsigned char)(v >> 16), p[3] = (unsigned char)(v >> 24);
}

unsigned char *ds_bmp(int w, int h, ds_pixel_fn fn, size_t *n) {
    size_t stride = ((size_t)w * 3 + 3) / 4 * 4;
    size_t bytes = 54 + stride * (size_t)h;
    unsigned char *b = fl_xcalloc(1, bytes);
    b[0] = 'B', b[1] = 'M';
    put32(b + 2, (unsigned)bytes);
    put32(b + 10, 54);
    put32(b + 14, 40);
    put32(b + 18, (unsigned)w);
    put32(b + 22, (unsigned)h);
    b[26] = 1, b[28] = 24;
    put32(b + 34, (unsigned)(stride * (size_t)h));
    for (int y = 0; y < h; y++) {
        unsigned char *row = b + 54 + stride * (size_t)(h - 1 - y); /* bottom-up */
        for (int x = 0; x < w; x++) {
            unsigned char rgb[3];
            fn(x, y, rgb);
            row[3 * x] = rgb[2], row[3 * x + 1] = rgb[1], row[3 * x + 2] = rgb[0];
        }
    }
    *n = bytes;
    return b;
}

static _Thread_local unsigned char solid_rgb[3];

static void solid_fn(int x, int y, unsigned char rgb[3]) {
    (void)x, (void)y;
    memcpy(rgb, solid_rgb, 3);
}

unsigned char *ds_bmp_solid(int w, int h, unsigned char r, unsigned char g, unsigned char b, size_t *n) {
    solid_rgb[0] = r, solid_rgb[1] = g, solid_rgb[2] = b;
    return ds_bmp(w, h, solid_fn, n);
}

#if defined(FL_HAVE_ARCHIVE)

typedef struct growbuf {
    unsigned char *data;
    size_t size, cap;
} growbuf;

static la_ssize_t on_write(struct archive *a, void *user, const void *buf, size_t n) {
    (void)a;
    growbuf *g = user;
    if (g->size + n > g->cap) {
        while (g->size + n > g->cap) g->cap = g->cap ? g->cap * 2 : 1 << 16;
        g->data = fl_xrealloc(g->data, g->cap);
    }
    memcpy(g->data + g->size, buf, n);
    g->size += n;
    return (la_ssize_t)n;
}

unsigned char *ds_archive(const ds_entry *entries, size_t count, ds_archive_format format, size_t *n) {
    struct archive *a = archive_write_new();
    if (format == DS_ZIP || format == DS_ZIP_STORED) {
        archive_write_set_format_zip(a);
        if (format == DS_ZIP_STORED) archive_write_zip_set_compression_store(a);
    } else {
        archive_write_set_format_pax_restricted(a);
        if (format == DS_TAR_GZ) archive_write_add_filter_gzip(a);
    }
    archive_write_set_bytes_in_last_block(a, 1);
    growbuf g = {0};
    FL_CHECK(archive_write_open2(a, &g, NULL, on_write, NULL, NULL) == ARCHIVE_OK);
    struct archive_entry *e = archive_entry_new();
    for (size_t i = 0; i < count; i++) {
        archive_entry_clear(e);
        archive_entry_set_pathname(e, entries[i].name);
        archive_entry_set_mtime(e, 0, 0);
        if (entries[i].kind == DS_DIR) {
            archive_entry_set_filetype(e, AE_IFDIR);
            archive_entry_set_perm(e, 0755);
        } else if (entries[i].kind == DS_SYMLINK) {
            archive_entry_set_filetype(e, AE_IFLNK);
            archive_entry_set_perm(e, 0777);
            archive_entry_set_symlink(e, entries[i].link);
        } else {
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, 0644);
            archive_entry_set_size(e, (la_int64_t)entries[i].size);
        }
        FL_CHECKF(archive_write_header(a, e) == ARCHIVE_OK, "archive_write_header: %s", archive_error_string(a));
        if (entries[i].kind == DS_FILE && entries[i].size)
            FL_CHECK(archive_write_data(a, entries[i].data, entries[i].size) == (la_ssize_t)entries[i].size);
    }
    archive_entry_free(e);
    FL_CHECK(archive_write_close(a) == ARCHIVE_OK);
    archive_write_free(a);
    *n = g.size;
    return g.data;
}

#else

unsigned char *ds_archive(const ds_entry *entries, size_t count, ds_archive_format format, size_t *n) {
    (void)entries, (void)count, (void)format;
    *n = 0;
    return NULL;
}

#endif

const char *ds_reason(const fl_imageset *set, const char *name) {
    const fl_rejected *r = fl_imageset_find_rejected(set, name);
    return r ? r->reason : NULL;
}

int ds_item(const fl_imageset *set, const char *name) {
    for (size_t i = 0; set && i < set->count; i++)
        if (strcmp(set->items[i].name, name) == 0) return (int)i;
    return -1;
}
