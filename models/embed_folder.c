/*
 * embed_folder.c — a folder of images to one embedding per image (see models/image_encoder.h):
 * the walk (sorted names, hidden entries skipped, every count bounded), decoding one image at a
 * time with the hardened decoder, and the embeddings file flashlora embed writes.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/fileio.h"
#include "core/safetensors.h"
#include "models/image_encoder.h"

#define MAX_DEPTH 16

fl_embed_folder_limits fl_embed_folder_limits_default(void) {
    fl_embed_folder_limits l = {.max_images = 100000, .max_entries = 200000, .max_file_bytes = (size_t)64 << 20,
                                .max_pixels = 50000000, .max_side = 12000};
    return l;
}

typedef struct names {
    char **v;
    size_t n, cap, entries;
} names;

static void push(names *ns, char *s) {
    if (ns->n == ns->cap) {
        ns->cap = ns->cap ? 2 * ns->cap : 64;
        ns->v = fl_xrealloc(ns->v, ns->cap * sizeof *ns->v);
    }
    ns->v[ns->n++] = s;
}

static int walk(const char *root, const char *rel, int depth, const fl_embed_folder_limits *lim, names *ns,
                fl_error *err) {
    char path[8192];
    snprintf(path, sizeof path, "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d) return fl_fail_errno(err, errno, "%s: cannot read the folder", path);
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* ., .., hidden */
        if (++ns->entries > lim->max_entries) {
            rc = fl_fail(err, FL_ELIMIT, "%s: more than %zu entries", root, lim->max_entries);
            break;
        }
        char child[8192];
        int k = snprintf(child, sizeof child, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        if (k < 0 || (size_t)k >= sizeof child - 1) continue;
        char full[8192 + 8];
        snprintf(full, sizeof full, "%s/%s", root, child);
        struct stat st;
        if (lstat(full, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth + 1 < MAX_DEPTH && strcmp(e->d_name, "__MACOSX")) rc = walk(root, child, depth + 1, lim, ns, err);
        } else if (S_ISREG(st.st_mode)) {
            push(ns, fl_xstrdup(child));
        }
    }
    closedir(d);
    return rc;
}

static int by_bytes(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void fl_embedded_set_free(fl_embedded_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->count; i++) free(s->names[i]);
    for (size_t i = 0; i < s->rejected_count; i++) free(s->rejected_names[i]), free(s->rejected_reasons[i]);
    free(s->names);
    free(s->embeddings);
    free(s->info);
    free(s->rejected_names);
    free(s->rejected_reasons);
    free(s);
}

static void reject(fl_embedded_set *s, const char *name, const char *reason, fl_embed_progress_fn progress,
                   void *arg, size_t done, size_t total) {
    s->rejected_names = fl_xrealloc(s->rejected_names, (s->rejected_count + 1) * sizeof(char *));
    s->rejected_reasons = fl_xrealloc(s->rejected_reasons, (s->rejected_count + 1) * sizeof(char *));
    s->rejected_names[s->rejected_count] = fl_xstrdup(name);
    s->rejected_reasons[s->rejected_count] = fl_xstrdup(reason);
    s->rejected_count++;
    if (progress) progress(arg, done, total, name, reason);
}

int fl_image_encoder_embed_folder(fl_image_encoder *enc, const char *dir, const fl_embed_folder_limits *limits,
                                  fl_embed_progress_fn progress, void *arg, fl_embedded_set **out, fl_error *err) {
    *out = NULL;
    fl_embed_folder_limits lim = limits ? *limits : fl_embed_folder_limits_default();
    struct stat st;
    if (stat(dir, &st) != 0) return fl_fail_errno(err, errno, "%s", dir);
    if (!S_ISDIR(st.st_mode)) return fl_fail(err, FL_EINVAL, "%s: not a folder", dir);
    names ns = {0};
    if (walk(dir, "", 0, &lim, &ns, err) != 0) {
        for (size_t i = 0; i < ns.n; i++) free(ns.v[i]);
        free(ns.v);
        return -1;
    }
    if (ns.n) qsort(ns.v, ns.n, sizeof *ns.v, by_bytes);
    /* which files are images: their first bytes */
    size_t images = 0;
    bool *is_image = fl_xcalloc(ns.n ? ns.n : 1, sizeof *is_image);
    for (size_t i = 0; i < ns.n; i++) {
        char full[8192 + 8];
        snprintf(full, sizeof full, "%s/%s", dir, ns.v[i]);
        FILE *f = fopen(full, "rb");
        unsigned char head[16] = {0};
        size_t got = f ? fread(head, 1, sizeof head, f) : 0;
        if (f) fclose(f);
        int decodable = 0;
        const char *kind = fl_image_sniff(head, got, &decodable);
        is_image[i] = kind != NULL && strcmp(kind, "zip archive") != 0;
        images += is_image[i];
    }
    int D = fl_image_encoder_dim(enc);
    fl_embedded_set *s = fl_xcalloc(1, sizeof *s);
    s->dim = D;
    int rc = 0;
    if (images > lim.max_images) rc = fl_fail(err, FL_ELIMIT, "%s: %zu images, more than %zu", dir, images,
                                              lim.max_images);
    if (rc == 0) {
        s->names = fl_xcalloc(images ? images : 1, sizeof *s->names);
        s->embeddings = fl_xcalloc((images ? images : 1) * (size_t)D, sizeof(float));
        s->info = fl_xcalloc(images ? images : 1, sizeof *s->info);
    }
    size_t done = 0;
    for (size_t i = 0; rc == 0 && i < ns.n; i++) {
        if (!is_image[i]) continue;
        char full[8192 + 8];
        snprintf(full, sizeof full, "%s/%s", dir, ns.v[i]);
        unsigned char *bytes = NULL;
        size_t size = 0;
        fl_error e1 = {0};
        fl_image img = {0};
        done++;
        if (fl_read_file(full, lim.max_file_bytes, &bytes, &size, &e1) != 0 ||
            fl_image_decode(bytes, size, lim.max_pixels, lim.max_side, &img, &e1) != 0) {
            free(bytes);
            const char *reason = e1.message;
            if (e1.code == FL_ELIMIT && !img.pixels && size == 0) reason = "file larger than the limit";
            reject(s, ns.v[i], reason, progress, arg, done, images);
            continue;
        }
        free(bytes);
        float *row = s->embeddings + s->count * (size_t)D;
        if (fl_image_encoder_embed(enc, &img, 1, row, &s->info[s->count], &e1) != 0) {
            fl_image_release(&img);
            if (e1.code == FL_ENOMEM || e1.code == FL_EIO) {
                rc = fl_fail(err, e1.code, "%s: %s", ns.v[i], e1.message);
                break;
            }
            reject(s, ns.v[i], e1.message, progress, arg, done, images);
            continue;
        }
        fl_image_release(&img);
        s->names[s->count++] = fl_xstrdup(ns.v[i]);
        if (progress) progress(arg, done, images, ns.v[i], NULL);
    }
    if (rc == 0 && s->count == 0 && s->rejected_count)
        rc = fl_fail(err, FL_EINVAL, "%s: no usable image (%zu files, %zu images refused; %.100s: %.200s)", dir, ns.n,
                     s->rejected_count, s->rejected_names[0], s->rejected_reasons[0]);
    else if (rc == 0 && s->count == 0)
        rc = fl_fail(err, FL_EINVAL, "%s: no usable image (%zu files, none of them an image)", dir, ns.n);
    for (size_t i = 0; i < ns.n; i++) free(ns.v[i]);
    free(ns.v);
    free(is_image);
    if (rc) {
        fl_embedded_set_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

int fl_embedded_set_write(const fl_embedded_set *s, const fl_image_encoder_info *info, const char *path,
                          fl_error *err) {
    size_t N = s->count;
    bool face = !strcmp(info->kind, "face");
    float *norms = fl_xcalloc(N ? N : 1, sizeof(float)), *found = fl_xcalloc(N ? N : 1, sizeof(float));
    float *boxes = fl_xcalloc((N ? N : 1) * 4, sizeof(float)), *scores = fl_xcalloc(N ? N : 1, sizeof(float));
    for (size_t i = 0; i < N; i++) {
        norms[i] = s->info[i].norm;
        found[i] = s->info[i].face_found ? 1.0f : 0.0f;
        memcpy(boxes + 4 * i, s->info[i].face_box, 4 * sizeof(float));
        scores[i] = s->info[i].face_score;
    }
    fl_safetensors_entry t[5];
    memset(t, 0, sizeof t);
    size_t nt = 0;
    t[nt++] = (fl_safetensors_entry){"embeddings", FL_ST_F32, 2, {(int64_t)N, s->dim}, s->embeddings};
    t[nt++] = (fl_safetensors_entry){"norms", FL_ST_F32, 1, {(int64_t)N}, norms};
    if (face) {
        t[nt++] = (fl_safetensors_entry){"face_found", FL_ST_F32, 1, {(int64_t)N}, found};
        t[nt++] = (fl_safetensors_entry){"face_boxes", FL_ST_F32, 2, {(int64_t)N, 4}, boxes};
        t[nt++] = (fl_safetensors_entry){"face_scores", FL_ST_F32, 1, {(int64_t)N}, scores};
    }
    json_t *jn = json_array(), *jr = json_array();
    for (size_t i = 0; i < N; i++) json_array_append_new(jn, json_string(s->names[i]));
    for (size_t i = 0; i < s->rejected_count; i++)
        json_array_append_new(jr, json_pack("{s:s, s:s}", "name", s->rejected_names[i], "reason",
                                            s->rejected_reasons[i]));
    char *names_text = json_dumps(jn, JSON_COMPACT), *rejected_text = json_dumps(jr, JSON_COMPACT);
    json_decref(jn);
    json_decref(jr);
    char dim[32], count[32];
    snprintf(dim, sizeof dim, "%d", s->dim);
    snprintf(count, sizeof count, "%zu", N);
    fl_safetensors_kv meta[] = {
        {"format", "flashlora-embeddings"},
        {"encoder", info->kind},
        {"encoder_description", info->description},
        {"encoder_fingerprint", info->fingerprint},
        {"dim", dim},
        {"count", count},
        {"normalized", "L2 (rows of images without a face are zero)"},
        {"order", "file names sorted by byte order"},
        {"names", names_text ? names_text : "[]"},
        {"rejected", rejected_text ? rejected_text : "[]"},
    };
    int rc = fl_safetensors_write(path, t, nt, meta, sizeof meta / sizeof meta[0], err);
    if (rc) fl_fail_prefix(err, "%s", path);
    free(names_text);
    free(rejected_text);
    free(norms), free(found), free(boxes), free(scores);
    return rc;
}
