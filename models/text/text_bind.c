/*
 * text_bind.c — what the CLIP and T5 encoders share to bind and run: checking declared tensors
 * against a checkpoint's headers, uploading one tensor in the storage dtype, and the head
 * split/merge copies around attention.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "kernels/ops.h"
#include "models/text/text_internal.h"

static const fl_tensor_header *find_header(const fl_tensor_header *e, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(e[i].name, name)) return &e[i];
    return NULL;
}

static int shape_error(const char *name, int ndim, const int64_t *shape, const fl_text_param_decl *d, fl_error *err) {
    char got[128] = "[", want[128] = "[";
    for (int i = 0; i < ndim; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)shape[i]);
    for (int i = 0; i < d->ndim; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "", (long long)d->shape[i]);
    return fl_fail(err, FL_EINVAL, "tensor '%s' has shape %s], expected %s]", name, got, want);
}

static bool same_shape(int ndim, const int64_t *shape, const fl_text_param_decl *d) {
    if (ndim != d->ndim) return false;
    for (int i = 0; i < ndim; i++)
        if (shape[i] != d->shape[i]) return false;
    return true;
}

int fl_text_check_decls(const fl_tensor_header *entries, size_t n, const char *prefix, const fl_text_param_decl *decls,
                        size_t count, fl_error *err) {
    char name[FL_TEXT_PREFIX_MAX + FL_TEXT_NAME_MAX];
    for (size_t i = 0; i < count; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, decls[i].name);
        const fl_tensor_header *h = find_header(entries, n, name);
        if (!h && !strcmp(decls[i].name, "shared.weight")) {
            snprintf(name, sizeof name, "%sencoder.embed_tokens.weight", prefix);
            h = find_header(entries, n, name);
        }
        if (!h) return fl_fail(err, FL_ENOTFOUND, "missing tensor '%s%s'", prefix, decls[i].name);
        if (!same_shape(h->ndim, h->shape, &decls[i])) return shape_error(name, h->ndim, h->shape, &decls[i], err);
    }
    return 0;
}

size_t fl_text_decl_bytes(const fl_text_param_decl *decls, size_t count, fl_dtype dtype) {
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        size_t n = (size_t)decls[i].shape[0] * (decls[i].ndim == 2 ? (size_t)decls[i].shape[1] : 1);
        total += (n * fl_dtype_size(dtype) + 255) & ~(size_t)255;
    }
    return total;
}

unsigned char *fl_text_read_config(const fl_weight_files *w, size_t *size) {
    char path[8192];
    snprintf(path, sizeof path, "%s/config.json", fl_weight_files_dir(w));
    unsigned char *text = NULL;
    fl_error ignored;
    *size = 0;
    return fl_read_file(path, (size_t)1 << 20, &text, size, &ignored) == 0 ? text : NULL;
}

int fl_text_bind(fl_ctx *ctx, const fl_weight_files *w, const char *prefix, const fl_text_param_decl *d,
                 const char *alt, fl_tensor *out, fl_error *err) {
    char name[FL_TEXT_PREFIX_MAX + FL_TEXT_NAME_MAX];
    snprintf(name, sizeof name, "%s%s", prefix, d->name);
    const char *file = NULL;
    const fl_safetensors_info *info = fl_weight_files_find(w, name, &file);
    if (!info && alt) {
        snprintf(name, sizeof name, "%s%s", prefix, alt);
        info = fl_weight_files_find(w, name, &file);
    }
    if (!info) return fl_fail(err, FL_ENOTFOUND, "missing tensor '%s%s'", prefix, d->name);
    if (!same_shape(info->ndim, info->shape, d)) {
        shape_error(name, info->ndim, info->shape, d, err);
        return fl_fail_prefix(err, "%s", file);
    }
    size_t n = (size_t)info->numel;
    float *host = fl_xmalloc((n ? n : 1) * sizeof(float));
    if (fl_weight_files_read_f32(w, name, host, n, err) != 0) {
        free(host);
        return -1;
    }
    if (fl_ctx_tensor_alloc(ctx, fl_ctx_storage_dtype(ctx), d->ndim, d->shape, out, err) != 0) {
        free(host);
        return fl_fail_prefix(err, "tensor '%s'", name);
    }
    fl_ctx_upload_f32(ctx, out, host, n);
    free(host);
    return 0;
}

void fl_text_split_heads(fl_ctx *ctx, const fl_tensor *src, int heads, fl_tensor *dst) {
    int64_t L = src->shape[0], D = src->shape[1] / heads;
    int64_t shape[4] = {1, L, heads, D};
    fl_tensor v = fl_tensor_reshape(src, 4, shape);
    int perm[4] = {0, 2, 1, 3};
    fl_tensor p = fl_tensor_permute(&v, perm);
    fl_op_copy(ctx, &p, dst);
}

void fl_text_merge_heads(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst) {
    int64_t H = src->shape[1], L = src->shape[2], D = src->shape[3];
    int64_t shape[4] = {1, L, H, D};
    fl_tensor v = fl_tensor_reshape(dst, 4, shape);
    int perm[4] = {0, 2, 1, 3};
    fl_tensor p = fl_tensor_permute(&v, perm);
    fl_op_copy(ctx, src, &p);
}
