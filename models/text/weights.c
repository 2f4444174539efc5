/*
 * weights.c — one table of tensors over the files a text encoder comes in (see weights.h): a
 * single safetensors file, or the shards a model.safetensors.index.json names, each mapped
 * read-only and validated by core/safetensors.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/fileio.h"
#include "core/sha256.h"
#include "models/text/weights.h"

#include "models/weights.h" /* the fp8 decoders */

#define MAX_SHARDS 256

struct fl_weight_files {
    char dir[4096];
    int n_files;
    fl_safetensors *files[MAX_SHARDS];
    char *names[MAX_SHARDS];
    fl_tensor_header *headers;
    size_t n_headers;
};

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int add_file(fl_weight_files *w, const char *path, fl_error *err) {
    if (w->n_files == MAX_SHARDS) return fl_fail(err, FL_ELIMIT, "%s: more than %d shards", path, MAX_SHARDS);
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    w->files[w->n_files] = st;
    w->names[w->n_files] = fl_xstrdup(path);
    w->n_files++;
    return 0;
}

static int open_index(fl_weight_files *w, const char *index, fl_error *err) {
    json_error_t jerr;
    json_t *root = json_load_file(index, 0, &jerr);
    if (!root) return fl_fail(err, FL_EINVAL, "%s: not JSON (line %d: %s)", index, jerr.line, jerr.text);
    json_t *map = json_object_get(root, "weight_map");
    int rc = 0;
    if (!json_is_object(map) || json_object_size(map) == 0) rc = fl_fail(err, FL_EINVAL, "%s: no weight_map", index);
    const char *name;
    json_t *shard;
    json_object_foreach(map, name, shard) {
        if (rc) break;
        const char *file = json_string_value(shard);
        if (!file || !*file || strchr(file, '/') || !strcmp(file, "..")) {
            rc = fl_fail(err, FL_EINVAL, "%s: the shard of '%s' is not a file name", index, name);
            break;
        }
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", w->dir, file);
        int found = -1;
        for (int i = 0; i < w->n_files && found < 0; i++)
            if (!strcmp(w->names[i], path)) found = i;
        if (found < 0) {
            if (!is_file(path)) {
                rc = fl_fail(err, FL_ENOTFOUND, "%s: shard %s is missing", index, file);
                break;
            }
            if ((rc = add_file(w, path, err)) != 0) break;
            found = w->n_files - 1;
        }
        if (!fl_safetensors_find(w->files[found], name))
            rc = fl_fail(err, FL_EINVAL, "%s: names tensor '%s' in %s, which lacks it", index, name, file);
    }
    json_decref(root);
    return rc;
}

static void dir_of(const char *path, char *dir, size_t size) {
    snprintf(dir, size, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, size, ".");
}

int fl_weight_files_open(const char *path, fl_weight_files **out, fl_error *err) {
    *out = NULL;
    fl_weight_files *w = fl_xcalloc(1, sizeof *w);
    int rc = 0;
    char p[8192];
    if (is_dir(path)) {
        snprintf(w->dir, sizeof w->dir, "%s", path);
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (is_file(p)) {
            rc = open_index(w, p, err);
        } else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            if (is_file(p)) {
                rc = add_file(w, p, err);
            } else {
                /* exactly one .safetensors file */
                DIR *d = opendir(path);
                char found[4096] = "";
                int count = 0;
                for (struct dirent *e; d && (e = readdir(d));)
                    if (ends_with(e->d_name, ".safetensors")) {
                        count++;
                        snprintf(found, sizeof found, "%s", e->d_name);
                    }
                if (d) closedir(d);
                if (count != 1)
                    rc = fl_fail(err, FL_ENOTFOUND, "%s: %s", path,
                                 count ? "several .safetensors files and no model.safetensors.index.json"
                                       : "no model.safetensors (or index) here");
                else {
                    snprintf(p, sizeof p, "%s/%s", path, found);
                    rc = add_file(w, p, err);
                }
            }
        }
    } else if (!is_file(path)) {
        rc = fl_fail(err, FL_ENOTFOUND, "%s: no such file", path);
    } else {
        dir_of(path, w->dir, sizeof w->dir);
        rc = ends_with(path, ".json") ? open_index(w, path, err) : add_file(w, path, err);
    }
    if (rc == 0) {
        for (int i = 0; i < w->n_files; i++) w->n_headers += fl_safetensors_count(w->files[i]);
        w->headers = fl_xcalloc(w->n_headers ? w->n_headers : 1, sizeof *w->headers);
        size_t k = 0;
        for (int i = 0; i < w->n_files; i++)
            for (size_t j = 0; j < fl_safetensors_count(w->files[i]); j++) {
                const fl_safetensors_info *info = fl_safetensors_at(w->files[i], j);
                w->headers[k].name = info->name;
                w->headers[k].ndim = info->ndim;
                memcpy(w->headers[k].shape, info->shape, sizeof info->shape);
                k++;
            }
    }
    if (rc != 0) {
        fl_weight_files_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

void fl_weight_files_close(fl_weight_files *w) {
    if (!w) return;
    for (int i = 0; i < w->n_files; i++) {
        fl_safetensors_close(w->files[i]);
        free(w->names[i]);
    }
    free(w->headers);
    free(w);
}

const char *fl_weight_files_dir(const fl_weight_files *w) { return w->dir; }

const fl_tensor_header *fl_weight_files_headers(const fl_weight_files *w, size_t *n) {
    *n = w->n_headers;
    return w->headers;
}

const fl_safetensors_info *fl_weight_files_find(const fl_weight_files *w, const char *name, const char **file) {
    for (int i = 0; i < w->n_files; i++) {
        const fl_safetensors_info *info = fl_safetensors_find(w->files[i], name);
        if (info) {
            if (file) *file = w->names[i];
            return info;
        }
    }
    return NULL;
}

int fl_weight_files_read_f32(const fl_weight_files *w, const char *name, float *dst, size_t numel, fl_error *err) {
    const char *file = NULL;
    const fl_safetensors_info *info = fl_weight_files_find(w, name, &file);
    if (!info) return fl_fail(err, FL_ENOTFOUND, "missing tensor '%s'", name);
    if ((size_t)info->numel != numel)
        return fl_fail(err, FL_EINVAL, "%s: tensor '%s' has %lld elements, expected %zu", file, name,
                       (long long)info->numel, numel);
    const unsigned char *src = info->data;
    switch (info->dtype) {
    case FL_ST_F32: memcpy(dst, src, numel * sizeof(float)); return 0;
    case FL_ST_BF16:
        for (size_t i = 0; i < numel; i++) dst[i] = fl_bf16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        return 0;
    case FL_ST_F16:
        for (size_t i = 0; i < numel; i++) dst[i] = fl_f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        return 0;
    case FL_ST_F8_E4M3:
    case FL_ST_F8_E5M2: {
        /* fp8 checkpoints (t5xxl_fp8_e4m3fn, scaled-fp8 files): dequantized, times the tensor's
         * scale when the file has one ("<stem>.scale_weight" or "<stem>.weight_scale"). */
        float scale = 1.0f;
        size_t len = strlen(name);
        if (len > 7 && !strcmp(name + len - 7, ".weight")) {
            static const char *const suffixes[] = {".scale_weight", ".weight_scale"};
            for (int k = 0; k < 2; k++) {
                char sname[FL_SAFETENSORS_MAX_NAME + 32];
                snprintf(sname, sizeof sname, "%.*s%s", (int)(len - 7), name, suffixes[k]);
                const fl_safetensors_info *si = fl_weight_files_find(w, sname, NULL);
                if (!si) continue;
                if (si->numel != 1 || (si->dtype != FL_ST_F32 && si->dtype != FL_ST_BF16 && si->dtype != FL_ST_F16))
                    return fl_fail(err, FL_EUNSUPPORTED, "%s: tensor '%s': scale '%s' is not one F32, BF16 or F16 value",
                                   file, name, sname);
                const unsigned char *sp = si->data;
                uint16_t h = (uint16_t)(sp[0] | sp[1] << 8);
                if (si->dtype == FL_ST_F32) memcpy(&scale, sp, sizeof scale);
                else scale = si->dtype == FL_ST_BF16 ? fl_bf16_to_f32(h) : fl_f16_to_f32(h);
                break;
            }
        }
        bool e4m3 = info->dtype == FL_ST_F8_E4M3;
        for (size_t i = 0; i < numel; i++) dst[i] = (e4m3 ? fl_f8_e4m3_to_f32(src[i]) : fl_f8_e5m2_to_f32(src[i])) * scale;
        return 0;
    }
    default:
        return fl_fail(err, FL_EUNSUPPORTED,
                       "%s: tensor '%s' has dtype %s; the text encoders read F32, BF16, F16 and F8", file, name,
                       fl_st_dtype_name(info->dtype));
    }
}

void fl_weight_files_fingerprint(const fl_weight_files *w, char hex[65]) {
    fl_sha256 h;
    fl_sha256_init(&h);
    for (size_t i = 0; i < w->n_headers; i++) {
        const fl_safetensors_info *info = fl_weight_files_find(w, w->headers[i].name, NULL);
        char line[256];
        int k = snprintf(line, sizeof line, "%s %d", fl_st_dtype_name(info->dtype), info->ndim);
        fl_sha256_update(&h, info->name, strlen(info->name));
        fl_sha256_update(&h, line, (size_t)k);
        fl_sha256_update(&h, info->shape, sizeof info->shape[0] * (size_t)info->ndim);
        /* 8 samples of up to 512 bytes spread over the data */
        for (int s = 0; s < 8 && info->nbytes; s++) {
            uint64_t off = info->nbytes * (uint64_t)s / 8, len = info->nbytes - off < 512 ? info->nbytes - off : 512;
            fl_sha256_update(&h, (const unsigned char *)info->data + off, (size_t)len);
        }
    }
    uint8_t d[32];
    fl_sha256_final(&h, d);
    fl_sha256_digest_hex(d, hex);
}
