/*
 * test_imageset.c — the image-set loader on inputs made at test time: a folder with sidecar
 * captions and a mix of good and bad files (symlink, fifo, hidden files, corrupt images, bad
 * captions), every limit, zip and tar.gz archives written with libarchive (from memory and from a
 * file), an archive of 20 000 entries, compressed streams whose skipped entries must still count
 * against the byte budget, source dispatch, and archive name cleaning.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datasets/imageset.h"
#include "datasets/imageset_internal.h"
#include "ds_test_util.h"
#include "fl_build_config.h"
#include "harness.h"

#define CONTAINS(hay, needle) ((hay) != NULL && strstr((hay), (needle)) != NULL)

static void gradient(int x, int y, unsigned char rgb[3]) {
    rgb[0] = (unsigned char)(x * 10), rgb[1] = (unsigned char)(y * 20), rgb[2] = 77;
}

static void put(const char *dir, const char *name, const void *data, size_t n) {
    char path[4096];
    FL_CHECKF(ds_write_file(ds_join(path, sizeof path, dir, name), data, n), "cannot write %s", path);
}

static void put_str(const char *dir, const char *name, const char *text) {
    put(dir, name, text, strlen(text));
}

static void put_bmp(const char *dir, const char *name, int w, int h) {
    size_t n;
    unsigned char *b = ds_bmp(w, h, gradient, &n);
    put(dir, name, b, n);
    free(b);
}

static void put_corpus(const char *dir, const char *name, const char *corpus_name) {
    char path[4096];
    size_t n = 0;
    unsigned char *data = ds_read_file(ds_corpus_path(path, sizeof path, corpus_name), &n);
    FL_CHECKF(data != NULL, "missing corpus file %s", corpus_name);
    put(dir, name, data, n);
    free(data);
}

static void test_limits_default(void) {
    fl_imageset_limits l = fl_imageset_limits_default();
    FL_EXPECT(l.min_images == 4 && l.max_images == 100);
    FL_EXPECT(l.max_file_bytes == 25u << 20 && l.max_total_bytes == 256u << 20);
    FL_EXPECT(l.max_pixels == 50000000 && l.max_side == 12000);
    FL_EXPECT(l.max_archive_entries == 2000);
    FL_EXPECT(l.url_max_bytes == 256u << 20 && l.url_timeout_seconds == 60);
    FL_EXPECT(!l.url_allow_private);
}

static void test_folder_with_captions(void) {
#if !defined(FL_HAVE_STB)
    return;
#endif
    char *dir = ds_temp_dir("folder");
    char path[4096];
    put_bmp(dir, "a.bmp", 8, 4);
    put_str(dir, "a.txt", "hello [trigger]  \r\n\n");
    put_bmp(dir, "b.bmp", 3, 3);
    put(dir, "b.txt", "\xff\xfe bad", 6);
    put_bmp(dir, "bom.bmp", 2, 2);
    put_str(dir, "bom.txt", "\xef\xbb\xbf" "caf\xc3\xa9 \t");
    put_corpus(dir, "c.png", "good_rgb.png");
    put_corpus(dir, "d.gif", "good.gif");
    put_bmp(dir, "empty_caption.bmp", 2, 2);
    put_str(dir, "empty_caption.txt", "  \n");
    mkdir(ds_join(path, sizeof path, dir, "sub"), 0755);
    put_bmp(dir, "sub/e.bmp", 2, 2);
    put_str(dir, "sub/e.TXT", "sub caption");
    put_str(dir, "orphan.txt", "nobody's caption");
    put_str(dir, "notes.md", "# notes\n");
    put(dir, "empty.png", "", 0);
    put_corpus(dir, "broken.png", "truncated.png");
    FL_EXPECT(symlink("a.bmp", ds_join(path, sizeof path, dir, "link.png")) == 0);
    FL_EXPECT(mkfifo(ds_join(path, sizeof path, dir, "pipe.png"), 0644) == 0);
    put_str(dir, ".DS_Store", "junk");
    mkdir(ds_join(path, sizeof path, dir, ".git"), 0755);
    put_str(dir, ".git/x.png", "junk");

    fl_imageset *set = NULL;
    fl_error err = {0};
    int rc = fl_imageset_load(dir, NULL, &set, &err);
    FL_EXPECTF(rc == 0, "load failed: %s", err.message);
    if (rc == 0) {
        const char *names[] = {"a.bmp", "b.bmp", "bom.bmp", "c.png", "d.gif", "empty_caption.bmp", "sub/e.bmp"};
        FL_EXPECTF(set->count == 7, "count %zu", set->count);
        for (size_t i = 0; i < 7 && i < set->count; i++)
            FL_EXPECTF(strcmp(set->items[i].name, names[i]) == 0, "item %zu is %s, want %s", i, set->items[i].name, names[i]);
        int a = ds_item(set, "a.bmp");
        if (a >= 0) {
            const fl_imageset_item *it = &set->items[a];
            FL_EXPECT(it->caption && strcmp(it->caption, "hello [trigger]") == 0);
            FL_EXPECT(it->image.width == 8 && it->image.height == 4);
            bool exact = true;
            for (int y = 0; y < 4; y++)
                for (int x = 0; x < 8; x++) {
                    const float *px = it->image.pixels + ((size_t)y * 8 + x) * 3;
                    exact &= px[0] == (float)(x * 10) / 255.0f && px[1] == (float)(y * 20) / 255.0f &&
                             px[2] == 77.0f / 255.0f;
                }
            FL_EXPECT(exact);
        }
        int b = ds_item(set, "b.bmp");
        FL_EXPECT(b >= 0 && set->items[b].caption == NULL);
        int bom = ds_item(set, "bom.bmp");
        FL_EXPECT(bom >= 0 && set->items[bom].caption && strcmp(set->items[bom].caption, "caf\xc3\xa9") == 0);
        int ec = ds_item(set, "empty_caption.bmp");
        FL_EXPECT(ec >= 0 && set->items[ec].caption == NULL);
        int e = ds_item(set, "sub/e.bmp");
        FL_EXPECT(e >= 0 && set->items[e].caption && strcmp(set->items[e].caption, "sub caption") == 0);

        FL_EXPECTF(set->rejected_count == 6, "rejected %zu", set->rejected_count);
        FL_EXPECT(CONTAINS(ds_reason(set, "b.txt"), "caption is not valid UTF-8"));
        FL_EXPECT(CONTAINS(ds_reason(set, "broken.png"), "truncated or corrupt image (the file ends"));
        FL_EXPECT(CONTAINS(ds_reason(set, "empty.png"), "empty file"));
        FL_EXPECT(CONTAINS(ds_reason(set, "link.png"), "symbolic link refused"));
        FL_EXPECT(CONTAINS(ds_reason(set, "notes.md"), "not an image"));
        FL_EXPECT(CONTAINS(ds_reason(set, "pipe.png"), "fifo refused"));
        for (size_t i = 1; i < set->rejected_count; i++)
            FL_EXPECT(strcmp(set->rejected[i - 1].name, set->rejected[i].name) <= 0);
    }
    fl_imageset_free(set);
    ds_remove_tree(dir);
    free(dir);
}

static void test_too_few_message(void) {
#if !defined(FL_HAVE_STB)
    return;
#endif
    char *dir = ds_temp_dir("few");
    put_bmp(dir, "good1.bmp", 2, 2);
    put_bmp(dir, "good2.bmp", 2, 2);
    put(dir, "a_empty.png", "", 0);
    put_str(dir, "b_text.jpg", "hello");
    put_corpus(dir, "c_fake.webp", "fake.webp");
    put(dir, "d_empty.png", "", 0);
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_imageset_load(dir, NULL, &set, &err) != 0 && set == NULL);
    FL_EXPECT(err.code == FL_EINVAL);
    const char *want = "only 2 usable images (need at least 4); rejected: a_empty.png: empty file; b_text.jpg: not "
                       "an image; c_fake.webp: unsupported image format (WebP; use PNG, JPEG, BMP or GIF); and 1 more";
    FL_EXPECTF(strcmp(err.message, want) == 0, "message: %s", err.message);

    /* An empty folder. */
    char *empty = ds_temp_dir("none");
    FL_EXPECT(fl_imageset_load(empty, NULL, &set, &err) != 0);
    FL_EXPECTF(strcmp(err.message, "no images found (need at least 4)") == 0, "message: %s", err.message);
    ds_remove_tree(empty);
    free(empty);
    ds_remove_tree(dir);
    free(dir);
}

static void test_limits(void) {
#if !defined(FL_HAVE_STB)
    return;
#endif
    char *dir = ds_temp_dir("limits");
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "img%d.bmp", i);
        put_bmp(dir, name, 8, 4); /* 54 + 24 * 4 = 150 bytes */
    }
    put_bmp(dir, "wide.bmp", 40, 10); /* 54 + 120 * 10 = 1254 bytes */
    put_str(dir, "img0.txt", "a caption that is too long");
    fl_imageset *set = NULL;
    fl_error err = {0};
    fl_imageset_limits l = fl_imageset_limits_default();

    l.max_file_bytes = 1024;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) == 0);
    FL_EXPECT(CONTAINS(ds_reason(set, "wide.bmp"), "larger than the 1 KiB per-file limit"));
    fl_imageset_free(set);

    l = fl_imageset_limits_default();
    l.max_side = 39;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) == 0);
    FL_EXPECT(CONTAINS(ds_reason(set, "wide.bmp"), "40x10 exceeds the 39-pixel side limit"));
    fl_imageset_free(set);

    l = fl_imageset_limits_default();
    l.max_pixels = 399;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) == 0);
    FL_EXPECT(CONTAINS(ds_reason(set, "wide.bmp"), "40x10 exceeds the 399-pixel limit"));
    fl_imageset_free(set);

    l = fl_imageset_limits_default();
    l.max_caption_bytes = 8;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) == 0);
    FL_EXPECT(CONTAINS(ds_reason(set, "img0.txt"), "caption file too long (the image is kept without it)"));
    FL_EXPECT(set && set->count == 6 && set->items[0].caption == NULL);
    fl_imageset_free(set);

    l = fl_imageset_limits_default();
    l.max_total_pixels = 32 * 4 + 10; /* four 8x4 images fit; not the fifth, nor wide.bmp */
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) == 0);
    FL_EXPECT(set && set->count == 4);
    FL_EXPECT(CONTAINS(ds_reason(set, "img4.bmp"), "decoded-pixel budget (138 pixels)"));
    FL_EXPECT(CONTAINS(ds_reason(set, "wide.bmp"), "decoded-pixel budget"));
    fl_imageset_free(set);

    l = fl_imageset_limits_default();
    l.max_images = 5;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) != 0 && set == NULL);
    FL_EXPECT(err.code == FL_ELIMIT && CONTAINS(err.message, "more than 5 usable images"));

    l = fl_imageset_limits_default();
    l.max_total_bytes = 500;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) != 0);
    FL_EXPECTF(err.code == FL_ELIMIT && CONTAINS(err.message, "the files total more than the 500 bytes limit"), "%s",
               err.message);

    l = fl_imageset_limits_default();
    l.max_archive_entries = 6;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) != 0);
    FL_EXPECTF(err.code == FL_ELIMIT && CONTAINS(err.message, "more than 6 entries"), "%s", err.message);

    l = fl_imageset_limits_default();
    l.min_images = 7;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) != 0);
    FL_EXPECT(err.code == FL_EINVAL && CONTAINS(err.message, "only 6 usable images (need at least 7)"));

    l = fl_imageset_limits_default();
    l.min_images = 10, l.max_images = 5;
    FL_EXPECT(fl_imageset_load(dir, &l, &set, &err) != 0 && CONTAINS(err.message, "invalid image-set limits"));
    ds_remove_tree(dir);
    free(dir);
}

static void test_sources(void) {
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_imageset_load("/nonexistent/flashlora/set", NULL, &set, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_imageset_load("ftp://example.com/set.zip", NULL, &set, &err) != 0 && err.code == FL_EUNSUPPORTED);
    FL_EXPECT(fl_imageset_load("file:///etc", NULL, &set, &err) != 0 && err.code == FL_EUNSUPPORTED);
    FL_EXPECT(fl_imageset_load("", NULL, &set, &err) != 0 && err.code == FL_EINVAL);
    FL_EXPECT(fl_imageset_load_memory(NULL, 0, "up.zip", NULL, &set, &err) != 0);
#if defined(FL_HAVE_ARCHIVE)
    FL_EXPECTF(strcmp(err.message, "up.zip: empty archive") == 0, "%s", err.message);
    char path[4096];
    FL_EXPECT(fl_imageset_load(ds_corpus_path(path, sizeof path, "text.jpg"), NULL, &set, &err) != 0);
    FL_EXPECTF(CONTAINS(err.message, "text.jpg: not a zip or tar archive"), "%s", err.message);
#else
    FL_EXPECT(err.code == FL_EUNSUPPORTED);
#endif
    FL_EXPECT(set == NULL);
}

static void test_clean_name(void) {
    char out[FL_DS_NAME_MAX + 1];
    const char *reason = NULL;
    FL_EXPECT(fl_ds_clean_name("./photos//a.png", out, &reason) == FL_DS_NAME_OK && strcmp(out, "photos/a.png") == 0);
    FL_EXPECT(fl_ds_clean_name("photos/", out, &reason) == FL_DS_NAME_OK && strcmp(out, "photos") == 0);
    FL_EXPECT(fl_ds_clean_name("a/./b.png", out, &reason) == FL_DS_NAME_OK && strcmp(out, "a/b.png") == 0);
    FL_EXPECT(fl_ds_clean_name("caf\xc3\xa9.png", out, &reason) == FL_DS_NAME_OK);
    FL_EXPECT(fl_ds_clean_name(".git/x.png", out, &reason) == FL_DS_NAME_HIDDEN);
    FL_EXPECT(fl_ds_clean_name("a/.x.png", out, &reason) == FL_DS_NAME_HIDDEN);
    FL_EXPECT(fl_ds_clean_name("__MACOSX/a/._b.png", out, &reason) == FL_DS_NAME_HIDDEN);
    FL_EXPECT(fl_ds_clean_name("./", out, &reason) == FL_DS_NAME_HIDDEN);
    struct {
        const char *raw, *reason;
    } refused[] = {
        {"../a.png", "path escapes the archive (..)"},
        {"a/../../b.png", "path escapes the archive (..)"},
        {"a/..", "path escapes the archive (..)"},
        {"..\\a.png", "path escapes the archive (..)"},
        {".hidden/../../a.png", "path escapes the archive (..)"},
        {"/etc/passwd", "absolute path refused"},
        {"\\\\server\\share.png", "absolute path refused"},
        {"C:\\x.png", "absolute path refused"},
        {"a\nb.png", "name contains control characters"},
        {"bad\xff.png", "name is not valid UTF-8"},
        {"over\xc0\xaflong.png", "name is not valid UTF-8"},
        {"", "empty name"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        reason = NULL;
        fl_ds_name_kind k = fl_ds_clean_name(refused[i].raw, out, &reason);
        FL_EXPECTF(k == FL_DS_NAME_REFUSED && reason && strcmp(reason, refused[i].reason) == 0, "case %zu: %s", i,
                   reason ? reason : "(accepted)");
    }
    char longname[FL_DS_NAME_MAX + 8];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    FL_EXPECT(fl_ds_clean_name(longname, out, &reason) == FL_DS_NAME_REFUSED);
}

#if defined(FL_HAVE_ARCHIVE) && defined(FL_HAVE_STB)

/* The same set as zip and tar.gz, from memory and from a file. */
static void check_archive_set(const fl_imageset *set, const char *what) {
    const char *names[] = {"photos/a.bmp", "photos/b.bmp", "photos/c.bmp", "photos/d.bmp"};
    FL_EXPECTF(set->count == 4, "%s: count %zu", what, set->count);
    for (size_t i = 0; i < 4 && i < set->count; i++)
        FL_EXPECTF(strcmp(set->items[i].name, names[i]) == 0, "%s: item %zu is %s", what, i, set->items[i].name);
    FL_EXPECT(set->count > 0 && set->items[0].caption && strcmp(set->items[0].caption, "the [trigger] logo") == 0);
    FL_EXPECTF(set->rejected_count == 2, "%s: rejected %zu", what, set->rejected_count);
    FL_EXPECT(CONTAINS(ds_reason(set, "photos/link.png"), "symbolic link refused"));
    FL_EXPECT(CONTAINS(ds_reason(set, "photos/../../evil.png"), "path escapes the archive (..)"));
}

static void test_archives(void) {
    size_t n;
    unsigned char *bmp = ds_bmp(8, 4, gradient, &n);
    const char *caption = "the [trigger] logo\n";
    ds_entry entries[] = {
        {"photos/", NULL, 0, DS_DIR, NULL},
        {"photos/a.bmp", bmp, n, DS_FILE, NULL},
        {"photos/a.txt", caption, strlen(caption), DS_FILE, NULL},
        {"photos/b.bmp", bmp, n, DS_FILE, NULL},
        {"./photos/c.bmp", bmp, n, DS_FILE, NULL},
        {"photos/d.bmp", bmp, n, DS_FILE, NULL},
        {"photos/.hidden.png", "x", 1, DS_FILE, NULL},
        {"__MACOSX/photos/._a.bmp", "x", 1, DS_FILE, NULL},
        {"photos/link.png", NULL, 0, DS_SYMLINK, "/etc/passwd"},
        {"photos/../../evil.png", bmp, n, DS_FILE, NULL},
    };
    const struct {
        ds_archive_format format;
        const char *file;
    } kinds[] = {{DS_ZIP, "set.zip"}, {DS_ZIP_STORED, "stored.zip"}, {DS_TAR, "set.tar"}, {DS_TAR_GZ, "set.tgz"}};
    char *dir = ds_temp_dir("archives");
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        size_t size;
        unsigned char *archive = ds_archive(entries, sizeof entries / sizeof entries[0], kinds[k].format, &size);
        fl_imageset *set = NULL;
        fl_error err = {0};
        int rc = fl_imageset_load_memory(archive, size, kinds[k].file, NULL, &set, &err);
        FL_EXPECTF(rc == 0, "%s from memory: %s", kinds[k].file, err.message);
        if (rc == 0) check_archive_set(set, kinds[k].file);
        fl_imageset_free(set);

        char path[4096];
        put(dir, kinds[k].file, archive, size);
        rc = fl_imageset_load(ds_join(path, sizeof path, dir, kinds[k].file), NULL, &set, &err);
        FL_EXPECTF(rc == 0, "%s from a file: %s", kinds[k].file, err.message);
        if (rc == 0) check_archive_set(set, kinds[k].file);
        fl_imageset_free(set);

        /* Any prefix of the archive fails cleanly or loads fewer images; never crashes. */
        for (size_t cut = 0; cut < size; cut += size / 7 + 1) {
            rc = fl_imageset_load_memory(archive, cut, "cut", NULL, &set, &err);
            FL_EXPECT((rc == 0) == (set != NULL));
            fl_imageset_free(set);
        }
        free(archive);
    }
    ds_remove_tree(dir);
    free(dir);
    free(bmp);
}

static void test_many_entries(void) {
    enum { COUNT = 20000 };
    ds_entry *entries = fl_xcalloc(COUNT, sizeof *entries);
    char(*names)[16] = fl_xmalloc(COUNT * sizeof *names);
    for (int i = 0; i < COUNT; i++) {
        snprintf(names[i], sizeof names[i], "f%05d.txt", i);
        entries[i] = (ds_entry){names[i], "x", 1, DS_FILE, NULL};
    }
    size_t size;
    unsigned char *archive = ds_archive(entries, COUNT, DS_ZIP_STORED, &size);
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_imageset_load_memory(archive, size, "many.zip", NULL, &set, &err) != 0 && set == NULL);
    FL_EXPECTF(err.code == FL_ELIMIT && CONTAINS(err.message, "more than 2000 entries"), "%s", err.message);
    free(archive);
    free(names);
    free(entries);
}

/* In a compressed stream, entries we skip are inflated too, so they count against the total. */
static void test_compressed_skip_budget(void) {
    size_t n;
    unsigned char *bmp = ds_bmp(8, 4, gradient, &n);
    size_t zeros_n = (size_t)16 << 20;
    unsigned char *zeros = fl_xcalloc(1, zeros_n);
    ds_entry entries[] = {
        {"a.bmp", bmp, n, DS_FILE, NULL}, {"b.bmp", bmp, n, DS_FILE, NULL}, {"c.bmp", bmp, n, DS_FILE, NULL},
        {"d.bmp", bmp, n, DS_FILE, NULL}, {"zz.png", zeros, zeros_n, DS_FILE, NULL},
    };
    fl_imageset_limits l = fl_imageset_limits_default();
    l.max_file_bytes = 1 << 20;
    l.max_total_bytes = 4 << 20;
    fl_imageset *set = NULL;
    fl_error err = {0};

    /* zip: the oversized entry is refused after 1 MiB and skipped without inflating the rest. */
    size_t size;
    unsigned char *zip = ds_archive(entries, 5, DS_ZIP, &size);
    FL_EXPECTF(fl_imageset_load_memory(zip, size, "big.zip", &l, &set, &err) == 0, "%s", err.message);
    FL_EXPECT(CONTAINS(ds_reason(set, "zz.png"), "larger than the 1 MiB per-file limit"));
    fl_imageset_free(set);
    free(zip);

    /* tar.gz: the same entry is refused, then drained under the 4 MiB budget, which it exceeds. */
    unsigned char *tgz = ds_archive(entries, 5, DS_TAR_GZ, &size);
    FL_EXPECT(fl_imageset_load_memory(tgz, size, "big.tgz", &l, &set, &err) != 0);
    FL_EXPECTF(err.code == FL_ELIMIT && CONTAINS(err.message, "more than the 4 MiB limit"), "%s", err.message);
    free(tgz);

    /* A hidden entry is skipped silently, but its bytes still count. */
    entries[4].name = ".big";
    tgz = ds_archive(entries, 5, DS_TAR_GZ, &size);
    FL_EXPECT(fl_imageset_load_memory(tgz, size, "hidden.tgz", &l, &set, &err) != 0);
    FL_EXPECTF(err.code == FL_ELIMIT && CONTAINS(err.message, "more than the 4 MiB limit"), "%s", err.message);
    free(tgz);
    free(zeros);
    free(bmp);
}

#endif

int main(void) {
    FL_RUN(test_limits_default);
    FL_RUN(test_folder_with_captions);
    FL_RUN(test_too_few_message);
    FL_RUN(test_limits);
    FL_RUN(test_sources);
    FL_RUN(test_clean_name);
#if defined(FL_HAVE_ARCHIVE) && defined(FL_HAVE_STB)
    FL_RUN(test_archives);
    FL_RUN(test_many_entries);
    FL_RUN(test_compressed_skip_budget);
#endif
    return fl_test_finish();
}
