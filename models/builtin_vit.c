/*
 * builtin_vit.c — the built-in ViT encoder (models/builtin_vit.h): its parameter table over one
 * flat buffer, loading and saving in the file layout, and the forward pass, with or without the
 * projection head and the saved activations the backward (builtin_vit_train.c) reads.
 *
 * Every parameter is a view into one flat buffer on the device, laid out decayed matrices first
 * (so AdamW runs on two contiguous slices) and mirrored by a flat gradient buffer of the same
 * layout when training. LayerNorm weights are held as (weight - 1): the norms then run on
 * fl_op_ln_modulate, LayerNorm fused with `(1 + scale) * x + shift`, whose backward exists, with
 * a batch of one "sample" spanning every row.
 */
#include "models/builtin_vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "kernels/ops.h"
#include "models/builtin_vit_internal.h"
#include "models/text/weights.h"

fl_bvit_config fl_bvit_config_default(void) {
    fl_bvit_config c = {64, 8, 128, 6, 4, 512, 512, 128};
    return c;
}

int fl_bvit_config_validate(const fl_bvit_config *c, fl_error *err) {
    if (c->image_size < 1 || c->image_size > 512) return fl_fail(err, FL_EINVAL, "image_size %d outside [1, 512]", c->image_size);
    if (c->patch < 1 || c->image_size % c->patch)
        return fl_fail(err, FL_EINVAL, "patch size %d does not divide the image size %d", c->patch, c->image_size);
    if (c->dim < 1 || c->dim > 2048) return fl_fail(err, FL_EINVAL, "dim %d outside [1, 2048]", c->dim);
    if (c->heads < 1 || c->dim % c->heads) return fl_fail(err, FL_EINVAL, "%d heads do not divide dim %d", c->heads, c->dim);
    if (c->depth < 1 || c->depth > 48) return fl_fail(err, FL_EINVAL, "depth %d outside [1, 48]", c->depth);
    if (c->mlp_hidden < 1 || c->mlp_hidden > 16384) return fl_fail(err, FL_EINVAL, "mlp width %d outside [1, 16384]", c->mlp_hidden);
    if (c->head_hidden < 0 || c->head_hidden > 16384 || (c->head_hidden > 0 && (c->head_out < 1 || c->head_out > 16384)))
        return fl_fail(err, FL_EINVAL, "projection head %d -> %d out of range", c->head_hidden, c->head_out);
    int64_t tokens = (int64_t)(c->image_size / c->patch) * (c->image_size / c->patch);
    if (tokens > 4096) return fl_fail(err, FL_EINVAL, "%lld patches: more than 4096", (long long)tokens);
    return 0;
}

/* ---- the parameter table ----------------------------------------------------------------------- */

/* Adds an entry at *offset (elements) of the flat layout; the compute view has shape vshape. */
static void add_entry(fl_bvit *m, const char *name, int fndim, const int64_t *fshape, int vndim, const int64_t *vshape,
                      int layer, size_t slot, bool norm_scale, bool head, int64_t *offset) {
    FL_CHECK(m->n_entries < BVIT_MAX_ENTRIES);
    bvit_entry *e = &m->entries[m->n_entries++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->file_ndim = fndim;
    int64_t numel = 1;
    for (int i = 0; i < fndim; i++) {
        e->file_shape[i] = fshape[i];
        numel *= fshape[i];
    }
    e->view_ndim = vndim;
    int64_t vnumel = 1;
    for (int i = 0; i < vndim; i++) {
        e->view_shape[i] = vshape[i];
        vnumel *= vshape[i];
    }
    FL_CHECK(vnumel == numel);
    e->numel = numel;
    e->offset = *offset;
    e->layer = layer;
    e->slot = slot;
    e->norm_scale = norm_scale;
    e->head = head;
    *offset += numel;
}

#define SLOT(field) -1, offsetof(bvit_weights, field)
#define LSLOT(i, field) (i), offsetof(bvit_layer, field)

static void build_table(fl_bvit *m) {
    const fl_bvit_config *c = &m->c;
    const int64_t D = c->dim, P = c->patch, M = c->mlp_hidden, L = m->tokens;
    int64_t off = 0;
    char name[BVIT_NAME_MAX];
    m->n_entries = 0;
    /* decayed matrices */
    add_entry(m, "patch_embed.weight", 4, (int64_t[]){D, 3, P, P}, 2, (int64_t[]){D, 3 * P * P}, SLOT(pe_w), false, false,
              &off);
    for (int i = 0; i < c->depth; i++) {
        snprintf(name, sizeof name, "blocks.%d.attn.qkv.weight", i);
        add_entry(m, name, 2, (int64_t[]){3 * D, D}, 2, (int64_t[]){3 * D, D}, LSLOT(i, qkv_w), false, false, &off);
        snprintf(name, sizeof name, "blocks.%d.attn.proj.weight", i);
        add_entry(m, name, 2, (int64_t[]){D, D}, 2, (int64_t[]){D, D}, LSLOT(i, proj_w), false, false, &off);
        snprintf(name, sizeof name, "blocks.%d.mlp.fc1.weight", i);
        add_entry(m, name, 2, (int64_t[]){M, D}, 2, (int64_t[]){M, D}, LSLOT(i, fc1_w), false, false, &off);
        snprintf(name, sizeof name, "blocks.%d.mlp.fc2.weight", i);
        add_entry(m, name, 2, (int64_t[]){D, M}, 2, (int64_t[]){D, M}, LSLOT(i, fc2_w), false, false, &off);
    }
    if (c->head_hidden > 0) {
        const int64_t Hh = c->head_hidden, Z = c->head_out;
        add_entry(m, "head.fc1.weight", 2, (int64_t[]){Hh, D}, 2, (int64_t[]){Hh, D}, SLOT(hw1), false, true, &off);
        add_entry(m, "head.fc2.weight", 2, (int64_t[]){Z, Hh}, 2, (int64_t[]){Z, Hh}, SLOT(hw2), false, true, &off);
    }
    m->n_decay = off;
    /* the rest */
    add_entry(m, "patch_embed.bias", 1, (int64_t[]){D}, 1, (int64_t[]){D}, SLOT(pe_b), false, false, &off);
    add_entry(m, "cls_token", 3, (int64_t[]){1, 1, D}, 2, (int64_t[]){1, D}, SLOT(cls), false, false, &off);
    add_entry(m, "pos_embed", 3, (int64_t[]){1, L, D}, 2, (int64_t[]){L, D}, SLOT(pos), false, false, &off);
    for (int i = 0; i < c->depth; i++) {
        static const char *const names[8] = {"norm1.weight", "norm1.bias", "attn.qkv.bias", "attn.proj.bias",
                                             "norm2.weight", "norm2.bias", "mlp.fc1.bias", "mlp.fc2.bias"};
        const size_t slots[8] = {offsetof(bvit_layer, n1s), offsetof(bvit_layer, n1b), offsetof(bvit_layer, qkv_b),
                                 offsetof(bvit_layer, proj_b), offsetof(bvit_layer, n2s), offsetof(bvit_layer, n2b),
                                 offsetof(bvit_layer, fc1_b), offsetof(bvit_layer, fc2_b)};
        const int64_t widths[8] = {D, D, 3 * D, D, D, D, M, D};
        for (int k = 0; k < 8; k++) {
            snprintf(name, sizeof name, "blocks.%d.%s", i, names[k]);
            /* norms are [1, D] views: the per-sample operand of ln_modulate with one sample */
            bool norm = k == 0 || k == 1 || k == 4 || k == 5;
            add_entry(m, name, 1, &widths[k], norm ? 2 : 1, norm ? (int64_t[]){1, widths[k]} : &widths[k], i, slots[k],
                      k == 0 || k == 4, false, &off);
        }
    }
    add_entry(m, "norm.weight", 1, (int64_t[]){D}, 2, (int64_t[]){1, D}, SLOT(nf_s), true, false, &off);
    add_entry(m, "norm.bias", 1, (int64_t[]){D}, 2, (int64_t[]){1, D}, SLOT(nf_b), false, false, &off);
    if (c->head_hidden > 0) {
        add_entry(m, "head.fc1.bias", 1, (int64_t[]){c->head_hidden}, 1, (int64_t[]){c->head_hidden}, SLOT(hb1), false,
                  true, &off);
        add_entry(m, "head.fc2.bias", 1, (int64_t[]){c->head_out}, 1, (int64_t[]){c->head_out}, SLOT(hb2), false, true,
                  &off);
    }
    m->n_params = off;
}

/* Points every tensor of w into the flat buffer base (device memory of dtype). */
static void bind_weights(fl_bvit *m, bvit_weights *w, void *base, fl_dtype dtype) {
    for (int i = 0; i < m->n_entries; i++) {
        const bvit_entry *e = &m->entries[i];
        fl_tensor *t = bvit_slot(w, e);
        *t = fl_tensor_make((char *)base + (size_t)e->offset * fl_dtype_size(dtype), dtype, m->ctx->device, e->view_ndim,
                            e->view_shape);
    }
}

int64_t fl_bvit_param_count(const fl_bvit_config *c, bool with_head) {
    const int64_t D = c->dim, P = c->patch, M = c->mlp_hidden, L = 1 + (int64_t)(c->image_size / c->patch) * (c->image_size / c->patch);
    int64_t n = D * 3 * P * P + D + D + L * D + 2 * D;
    n += (int64_t)c->depth * (3 * D * D + 3 * D + D * D + D + M * D + M + D * M + D + 4 * D);
    if (with_head && c->head_hidden > 0)
        n += (int64_t)c->head_hidden * D + c->head_hidden + (int64_t)c->head_out * c->head_hidden + c->head_out;
    return n;
}

static fl_bvit *bvit_alloc(fl_ctx *ctx, const fl_bvit_config *c) {
    fl_bvit *m = fl_xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->c = *c;
    m->dtype = fl_ctx_storage_dtype(ctx);
    m->grid = c->image_size / c->patch;
    m->tokens = 1 + m->grid * m->grid;
    m->w.layers = fl_xcalloc((size_t)c->depth, sizeof(bvit_layer));
    m->g.layers = fl_xcalloc((size_t)c->depth, sizeof(bvit_layer));
    m->entries = fl_xcalloc(BVIT_MAX_ENTRIES, sizeof(bvit_entry));
    build_table(m);
    m->param_buf = fl_ctx_alloc(ctx, (size_t)m->n_params * fl_dtype_size(m->dtype));
    FL_CHECKF(m->param_buf, "builtin ViT: no device memory for %lld parameters", (long long)m->n_params);
    bind_weights(m, &m->w, m->param_buf, m->dtype);
    return m;
}

/* Uploads host values of entry e (file semantics: a norm weight is the weight itself). */
static void upload_entry(fl_bvit *m, const bvit_entry *e, float *host) {
    if (e->norm_scale)
        for (int64_t k = 0; k < e->numel; k++) host[k] -= 1.0f;
    fl_tensor *t = bvit_slot(&m->w, e);
    fl_ctx_upload_f32(m->ctx, t, host, (size_t)e->numel);
}

fl_bvit *fl_bvit_create(fl_ctx *ctx, const fl_bvit_config *c, uint64_t seed) {
    fl_error err = {0};
    FL_CHECKF(fl_bvit_config_validate(c, &err) == 0, "builtin ViT config: %s", err.message);
    fl_bvit *m = bvit_alloc(ctx, c);
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_entries; i++) {
        const bvit_entry *e = &m->entries[i];
        float *h = fl_xmalloc((size_t)e->numel * sizeof(float));
        size_t len = strlen(e->name);
        bool is_bias = len > 5 && !strcmp(e->name + len - 5, ".bias");
        bool is_weight_matrix = e->file_ndim >= 2 && strcmp(e->name, "cls_token") && strcmp(e->name, "pos_embed");
        if (e->norm_scale) {
            for (int64_t k = 0; k < e->numel; k++) h[k] = 1.0f;
        } else if (is_bias || !strcmp(e->name, "cls_token")) {
            for (int64_t k = 0; k < e->numel; k++) h[k] = 0.0f;
            if (!strcmp(e->name, "cls_token")) fl_rng_fill_normal(&rng, h, (size_t)e->numel, 0.0f, 1e-6f);
        } else if (is_weight_matrix || !strcmp(e->name, "pos_embed")) {
            /* normal, std 0.02, clipped at 2 std (timm's trunc_normal_) */
            for (int64_t k = 0; k < e->numel; k++) {
                float v;
                do v = fl_rng_normal(&rng);
                while (fabsf(v) > 2.0f);
                h[k] = 0.02f * v;
            }
        } else {
            for (int64_t k = 0; k < e->numel; k++) h[k] = 0.0f;
        }
        upload_entry(m, e, h);
        free(h);
    }
    return m;
}

/* The sizes the file implies; FL_EINVAL naming what does not fit the layout. */
static int config_from_file(const fl_weight_files *wf, fl_bvit_config *c, fl_error *err) {
    const fl_safetensors_info *pe = fl_weight_files_find(wf, "patch_embed.weight", NULL);
    const fl_safetensors_info *pos = fl_weight_files_find(wf, "pos_embed", NULL);
    const fl_safetensors_info *fc1 = fl_weight_files_find(wf, "blocks.0.mlp.fc1.weight", NULL);
    if (!pe || !pos || !fc1)
        return fl_fail(err, FL_EINVAL,
                       "not a %s file: tensor '%s' is missing (is this another encoder's layout?)", FL_BVIT_FORMAT,
                       !pe ? "patch_embed.weight" : !pos ? "pos_embed" : "blocks.0.mlp.fc1.weight");
    if (pe->ndim != 4 || pe->shape[1] != 3 || pe->shape[2] != pe->shape[3] || pe->shape[0] < 1 || pe->shape[2] < 1)
        return fl_fail(err, FL_EINVAL, "patch_embed.weight must be [D, 3, P, P]");
    if (pos->ndim != 3 || pos->shape[0] != 1 || pos->shape[2] != pe->shape[0])
        return fl_fail(err, FL_EINVAL, "pos_embed must be [1, L, D] with D = %lld", (long long)pe->shape[0]);
    if (fc1->ndim != 2 || fc1->shape[1] != pe->shape[0]) return fl_fail(err, FL_EINVAL, "blocks.0.mlp.fc1.weight must be [M, D]");
    if (pe->shape[0] > 2048 || pe->shape[2] > 512 || fc1->shape[0] > 16384)
        return fl_fail(err, FL_EINVAL, "sizes out of range for a built-in encoder");
    int64_t grid = (int64_t)llround(sqrt((double)(pos->shape[1] - 1)));
    if (grid < 1 || grid * grid + 1 != pos->shape[1] || grid > 64)
        return fl_fail(err, FL_EINVAL, "pos_embed has %lld positions: not 1 + a square grid", (long long)pos->shape[1]);
    memset(c, 0, sizeof *c);
    c->dim = (int)pe->shape[0];
    c->patch = (int)pe->shape[2];
    c->image_size = (int)(grid * c->patch);
    c->mlp_hidden = (int)fc1->shape[0];
    int depth = 0;
    char name[BVIT_NAME_MAX];
    for (;; depth++) {
        snprintf(name, sizeof name, "blocks.%d.attn.qkv.weight", depth);
        if (!fl_weight_files_find(wf, name, NULL) || depth > 48) break;
    }
    if (depth == 0) return fl_fail(err, FL_EINVAL, "tensor 'blocks.0.attn.qkv.weight' is missing");
    c->depth = depth;
    c->heads = 0;
    const fl_safetensors_info *h1 = fl_weight_files_find(wf, "head.fc1.weight", NULL);
    const fl_safetensors_info *h2 = fl_weight_files_find(wf, "head.fc2.weight", NULL);
    if (h1 && h2 && h1->ndim == 2 && h2->ndim == 2) {
        c->head_hidden = (int)(h1->shape[0] > 16384 ? 0 : h1->shape[0]);
        c->head_out = (int)(h2->shape[0] > 16384 ? 0 : h2->shape[0]);
    }
    return 0;
}

static int metadata_int(const fl_weight_files *wf, const char *key, int *out) {
    /* metadata lives in the (single) file the table came from: look it up through an anchor */
    const char *file = NULL;
    if (!fl_weight_files_find(wf, "patch_embed.weight", &file) || !file) return -1;
    fl_safetensors *st = NULL;
    fl_error err = {0};
    if (fl_safetensors_open(file, &st, &err) != 0) return -1;
    const char *v = fl_safetensors_metadata_get(st, key);
    int rc = -1;
    if (v) {
        char *end = NULL;
        long x = strtol(v, &end, 10);
        if (end != v && *end == '\0' && x > 0 && x < 100000) {
            *out = (int)x;
            rc = 0;
        }
    }
    fl_safetensors_close(st);
    return rc;
}

int fl_bvit_load(fl_ctx *ctx, const char *path, fl_bvit **out, fl_error *err) {
    *out = NULL;
    fl_weight_files *wf = NULL;
    if (fl_weight_files_open(path, &wf, err) != 0) return -1;
    fl_bvit_config c;
    int rc = config_from_file(wf, &c, err);
    if (rc == 0 && metadata_int(wf, "heads", &c.heads) != 0)
        rc = fl_fail(err, FL_EINVAL, "not a %s file: no 'heads' in its metadata", FL_BVIT_FORMAT);
    if (rc == 0) rc = fl_bvit_config_validate(&c, err);
    if (rc != 0) {
        fl_weight_files_close(wf);
        return fl_fail_prefix(err, "%s", path);
    }
    fl_bvit *m = bvit_alloc(ctx, &c);
    for (int i = 0; i < m->n_entries && rc == 0; i++) {
        const bvit_entry *e = &m->entries[i];
        const fl_safetensors_info *info = fl_weight_files_find(wf, e->name, NULL);
        if (!info) {
            rc = fl_fail(err, FL_EINVAL, "%s: tensor '%s' is missing", path, e->name);
            break;
        }
        bool same = info->ndim == e->file_ndim;
        for (int k = 0; same && k < info->ndim; k++) same = info->shape[k] == e->file_shape[k];
        if (!same) {
            char want[96] = "[", tmp[24];
            for (int k = 0; k < e->file_ndim; k++) {
                snprintf(tmp, sizeof tmp, "%s%lld", k ? ", " : "", (long long)e->file_shape[k]);
                strncat(want, tmp, sizeof want - strlen(want) - 2);
            }
            strcat(want, "]");
            rc = fl_fail(err, FL_EINVAL, "%s: tensor '%s' has the wrong shape (expected %s)", path, e->name, want);
            break;
        }
        float *h = fl_xmalloc((size_t)e->numel * sizeof(float));
        rc = fl_weight_files_read_f32(wf, e->name, h, (size_t)e->numel, err);
        for (int64_t k = 0; rc == 0 && k < e->numel; k++)
            if (!isfinite(h[k])) rc = fl_fail(err, FL_EINVAL, "%s: tensor '%s' holds a non-finite value", path, e->name);
        if (rc == 0) upload_entry(m, e, h);
        free(h);
    }
    fl_weight_files_close(wf);
    if (rc == 0) {
        fl_error herr = {0};
        if (fl_sha256_file(path, m->sha256, &herr) != 0) m->sha256[0] = '\0'; /* a directory: no single hash */
    }
    if (rc != 0) {
        fl_bvit_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

static void free_acts(fl_bvit *m) {
    fl_tensor **all = m->act_list;
    for (int i = 0; i < m->n_act; i++)
        if (all[i]->data) fl_ctx_tensor_free(m->ctx, all[i]);
    m->n_act = 0;
    free(m->acts);
    m->acts = NULL;
    m->cap_batch = 0;
}

void fl_bvit_free(fl_bvit *m) {
    if (!m) return;
    free_acts(m);
    if (m->param_buf) fl_ctx_free(m->ctx, m->param_buf);
    if (m->grad_buf) fl_ctx_free(m->ctx, m->grad_buf);
    free(m->w.layers);
    free(m->g.layers);
    free(m->entries);
    free(m->host_patches);
    free(m);
}

const fl_bvit_config *fl_bvit_get_config(const fl_bvit *m) { return &m->c; }
fl_ctx *fl_bvit_get_ctx(const fl_bvit *m) { return m->ctx; }
const char *fl_bvit_file_sha256(const fl_bvit *m) { return m->sha256; }

int fl_bvit_save(const fl_bvit *m, const char *path, bool bf16, const char *const *extra_kv, size_t n_extra,
                 fl_error *err) {
    fl_safetensors_entry *ents = fl_xcalloc((size_t)m->n_entries, sizeof *ents);
    void **bufs = fl_xcalloc((size_t)m->n_entries, sizeof *bufs);
    for (int i = 0; i < m->n_entries; i++) {
        const bvit_entry *e = &m->entries[i];
        const fl_tensor *t = bvit_slot(&m->w, e);
        float *h = fl_xmalloc((size_t)e->numel * sizeof(float));
        fl_ctx_download_f32(m->ctx, h, t, (size_t)e->numel);
        if (e->norm_scale)
            for (int64_t k = 0; k < e->numel; k++) h[k] += 1.0f;
        ents[i].name = e->name;
        ents[i].ndim = e->file_ndim;
        memcpy(ents[i].shape, e->file_shape, sizeof(int64_t) * (size_t)e->file_ndim);
        if (bf16) {
            uint16_t *b = fl_xmalloc((size_t)e->numel * sizeof(uint16_t));
            for (int64_t k = 0; k < e->numel; k++) b[k] = fl_f32_to_bf16(h[k]);
            free(h);
            bufs[i] = b;
            ents[i].dtype = FL_ST_BF16;
        } else {
            bufs[i] = h;
            ents[i].dtype = FL_ST_F32;
        }
        ents[i].data = bufs[i];
    }
    char s_img[16], s_patch[16], s_dim[16], s_depth[16], s_heads[16];
    snprintf(s_img, sizeof s_img, "%d", m->c.image_size);
    snprintf(s_patch, sizeof s_patch, "%d", m->c.patch);
    snprintf(s_dim, sizeof s_dim, "%d", m->c.dim);
    snprintf(s_depth, sizeof s_depth, "%d", m->c.depth);
    snprintf(s_heads, sizeof s_heads, "%d", m->c.heads);
    fl_safetensors_kv *kv = fl_xcalloc(6 + n_extra / 2, sizeof *kv);
    size_t nkv = 0;
    kv[nkv++] = (fl_safetensors_kv){"format", FL_BVIT_FORMAT};
    kv[nkv++] = (fl_safetensors_kv){"image_size", s_img};
    kv[nkv++] = (fl_safetensors_kv){"patch_size", s_patch};
    kv[nkv++] = (fl_safetensors_kv){"dim", s_dim};
    kv[nkv++] = (fl_safetensors_kv){"depth", s_depth};
    kv[nkv++] = (fl_safetensors_kv){"heads", s_heads};
    for (size_t i = 0; i + 1 < n_extra; i += 2) kv[nkv++] = (fl_safetensors_kv){extra_kv[i], extra_kv[i + 1]};
    int rc = fl_safetensors_write(path, ents, (size_t)m->n_entries, kv, nkv, err);
    for (int i = 0; i < m->n_entries; i++) free(bufs[i]);
    free(bufs);
    free(ents);
    free(kv);
    return rc;
}

int fl_bvit_copy_weights(fl_bvit *dst, const fl_bvit *src, fl_error *err) {
    for (int i = 0; i < dst->n_entries; i++) {
        const bvit_entry *e = &dst->entries[i];
        const bvit_entry *f = NULL;
        for (int k = 0; k < src->n_entries && !f; k++)
            if (!strcmp(src->entries[k].name, e->name) && src->entries[k].numel == e->numel) f = &src->entries[k];
        if (!f) return fl_fail(err, FL_EINVAL, "tensor '%s' has no counterpart to copy", e->name);
        float *h = fl_xmalloc((size_t)e->numel * sizeof(float));
        const fl_tensor *st = bvit_slot(&src->w, f);
        fl_tensor *dt = bvit_slot(&dst->w, e);
        fl_ctx_download_f32(src->ctx, h, st, (size_t)e->numel);
        fl_ctx_upload_f32(dst->ctx, dt, h, (size_t)e->numel);
        free(h);
    }
    return 0;
}

/* ---- activations --------------------------------------------------------------------------------- */

static fl_tensor *track(fl_bvit *m, fl_tensor *t, fl_dtype dtype, int ndim, const int64_t *shape) {
    *t = fl_ctx_tensor(m->ctx, dtype, ndim, shape);
    FL_CHECK(m->n_act < BVIT_MAX_ACTS);
    m->act_list[m->n_act++] = t;
    return t;
}

/* Buffers for batches of up to B images; every layer's own set when training. */
static void ensure_acts(fl_bvit *m, int B, bool train) {
    if (m->cap_batch >= B && (m->cap_train || !train)) return;
    free_acts(m);
    const fl_bvit_config *c = &m->c;
    const int64_t D = c->dim, L = m->tokens, N = (int64_t)m->grid * m->grid, H = c->heads, hd = D / H, M = c->mlp_hidden;
    const int sets = train ? c->depth : 1;
    m->acts = fl_xcalloc((size_t)sets, sizeof(bvit_acts));
    fl_dtype dt = m->dtype;
    track(m, &m->patches, dt, 2, (int64_t[]){(int64_t)B * N, 3LL * c->patch * c->patch});
    track(m, &m->tok, dt, 2, (int64_t[]){(int64_t)B * N, D});
    for (int l = 0; l <= c->depth; l++)
        if (train || l < 2) track(m, &m->xs[l], dt, 3, (int64_t[]){1, (int64_t)B * L, D});
    for (int s = 0; s < sets; s++) {
        bvit_acts *a = &m->acts[s];
        track(m, &a->mean1, FL_F32, 2, (int64_t[]){1, (int64_t)B * L});
        track(m, &a->rstd1, FL_F32, 2, (int64_t[]){1, (int64_t)B * L});
        track(m, &a->h1, dt, 3, (int64_t[]){1, (int64_t)B * L, D});
        track(m, &a->qkvh, dt, 5, (int64_t[]){3, B, H, L, hd});
        track(m, &a->o, dt, 4, (int64_t[]){B, H, L, hd});
        track(m, &a->lse, FL_F32, 3, (int64_t[]){B, H, L});
        track(m, &a->om, dt, 2, (int64_t[]){(int64_t)B * L, D});
        track(m, &a->xmid, dt, 3, (int64_t[]){1, (int64_t)B * L, D});
        track(m, &a->mean2, FL_F32, 2, (int64_t[]){1, (int64_t)B * L});
        track(m, &a->rstd2, FL_F32, 2, (int64_t[]){1, (int64_t)B * L});
        track(m, &a->h2, dt, 3, (int64_t[]){1, (int64_t)B * L, D});
        track(m, &a->f1, dt, 2, (int64_t[]){(int64_t)B * L, M});
        track(m, &a->g, dt, 2, (int64_t[]){(int64_t)B * L, M});
    }
    track(m, &m->qkv, dt, 2, (int64_t[]){(int64_t)B * L, 3 * D});
    track(m, &m->tmp, dt, 2, (int64_t[]){(int64_t)B * L, D});
    track(m, &m->meanf, FL_F32, 2, (int64_t[]){1, (int64_t)B * L});
    track(m, &m->rstdf, FL_F32, 2, (int64_t[]){1, (int64_t)B * L});
    track(m, &m->xf, dt, 3, (int64_t[]){1, (int64_t)B * L, D});
    track(m, &m->cls_out, dt, 2, (int64_t[]){B, D});
    if (train && c->head_hidden > 0) {
        track(m, &m->hh, dt, 2, (int64_t[]){B, c->head_hidden});
        track(m, &m->hg, dt, 2, (int64_t[]){B, c->head_hidden});
        track(m, &m->z, dt, 2, (int64_t[]){B, c->head_out});
        /* backward scratch */
        track(m, &m->dx, dt, 3, (int64_t[]){1, (int64_t)B * L, D});
        track(m, &m->dx2, dt, 3, (int64_t[]){1, (int64_t)B * L, D});
        track(m, &m->dtmp, dt, 3, (int64_t[]){1, (int64_t)B * L, D});
        track(m, &m->dmlp, dt, 2, (int64_t[]){(int64_t)B * L, M});
        track(m, &m->dqkv, dt, 2, (int64_t[]){(int64_t)B * L, 3 * D});
        track(m, &m->dqkvh, dt, 5, (int64_t[]){3, B, H, L, hd});
        track(m, &m->dov, dt, 4, (int64_t[]){B, H, L, hd});
        track(m, &m->dcls, dt, 2, (int64_t[]){B, D});
        track(m, &m->dhh, dt, 2, (int64_t[]){B, c->head_hidden});
        track(m, &m->dz, dt, 2, (int64_t[]){B, c->head_out});
        track(m, &m->dtok, dt, 2, (int64_t[]){(int64_t)B * N, D});
    }
    free(m->host_patches);
    m->host_patches = fl_xmalloc((size_t)B * (size_t)N * 3 * (size_t)c->patch * (size_t)c->patch * sizeof(float));
    m->cap_batch = B;
    m->cap_train = train;
}

/* ---- forward ------------------------------------------------------------------------------------- */

/* A view of the first B samples of a batch-major activation allocated for cap_batch. */
static fl_tensor first_rows(const fl_tensor *t, int dim, int64_t rows) { return fl_tensor_slice(t, dim, 0, rows); }

/* Host images [B, S, S, 3] in [0, 1] -> patches [B * N, 3 * P * P] in (channel, row, column) order,
 * the flattening of the patch embedding's [D, 3, P, P] weight, as 2x - 1. */
static void patchify(const fl_bvit *m, const float *images, int B, float *out) {
    const int S = m->c.image_size, P = m->c.patch, G = m->grid;
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < G; gy++)
            for (int gx = 0; gx < G; gx++) {
                float *o = out + (((size_t)b * G + gy) * G + gx) * 3 * P * P;
                for (int ch = 0; ch < 3; ch++)
                    for (int py = 0; py < P; py++)
                        for (int px = 0; px < P; px++) {
                            size_t src = (((size_t)b * S + (size_t)(gy * P + py)) * S + (size_t)(gx * P + px)) * 3 + ch;
                            o[(ch * P + py) * P + px] = 2.0f * images[src] - 1.0f;
                        }
            }
}

/* y[0..R) = x * W^T + b on the first R rows of x and y. */
static void linear_rows(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *b, fl_tensor *y,
                        int64_t rows) {
    fl_tensor xv = fl_tensor_reshape(x, 2, (int64_t[]){fl_tensor_numel(x) / x->shape[x->ndim - 1], x->shape[x->ndim - 1]});
    fl_tensor yv = fl_tensor_reshape(y, 2, (int64_t[]){fl_tensor_numel(y) / y->shape[y->ndim - 1], y->shape[y->ndim - 1]});
    xv = first_rows(&xv, 0, rows);
    yv = first_rows(&yv, 0, rows);
    fl_op_linear(ctx, &xv, w, b, &yv);
}

/* The [1, B*L, D] view of a [1, cap*L, D] activation. */
static fl_tensor btd(const fl_bvit *m, const fl_tensor *t, int B) {
    return fl_tensor_slice(t, 1, 0, (int64_t)B * m->tokens);
}

void bvit_forward(fl_bvit *m, const float *images, int B, bool train) {
    fl_ctx *ctx = m->ctx;
    const fl_bvit_config *c = &m->c;
    const int64_t D = c->dim, L = m->tokens, N = (int64_t)m->grid * m->grid, H = c->heads, hd = D / H;
    const int64_t R = (int64_t)B * L;
    ensure_acts(m, B, train);
    bvit_weights *w = &m->w;

    patchify(m, images, B, m->host_patches);
    fl_tensor patches = first_rows(&m->patches, 0, (int64_t)B * N);
    fl_ctx_upload_f32(ctx, &patches, m->host_patches, (size_t)fl_tensor_numel(&patches));
    fl_tensor tok = first_rows(&m->tok, 0, (int64_t)B * N);
    fl_op_linear(ctx, &patches, &w->pe_w, &w->pe_b, &tok);

    /* x0 = [cls; tokens] + pos */
    fl_tensor x0 = btd(m, &m->xs[0], B);
    fl_tensor x0b = fl_tensor_reshape(&x0, 3, (int64_t[]){B, L, D});
    fl_tensor dst_tok = fl_tensor_slice(&x0b, 1, 1, N);
    fl_tensor src_tok = fl_tensor_reshape(&tok, 3, (int64_t[]){B, N, D});
    fl_op_copy(ctx, &src_tok, &dst_tok);
    for (int b = 0; b < B; b++) {
        fl_tensor xb = fl_tensor_slice(&x0b, 0, b, 1);
        fl_tensor row0 = fl_tensor_slice(&xb, 1, 0, 1);
        fl_tensor row0v = fl_tensor_reshape(&row0, 2, (int64_t[]){1, D});
        fl_op_copy(ctx, &w->cls, &row0v);
        fl_tensor xbv = fl_tensor_reshape(&xb, 2, (int64_t[]){L, D});
        fl_op_add(ctx, &xbv, &w->pos, 1.0f, &xbv);
    }

    for (int l = 0; l < c->depth; l++) {
        bvit_acts *a = &m->acts[train ? l : 0];
        const bvit_layer *ly = &w->layers[l];
        fl_tensor xin = btd(m, &m->xs[train ? l : (l & 1)], B);
        fl_tensor xout = btd(m, &m->xs[train ? l + 1 : ((l + 1) & 1)], B);
        fl_tensor mean1 = first_rows(&a->mean1, 1, R), rstd1 = first_rows(&a->rstd1, 1, R);
        fl_tensor h1 = btd(m, &a->h1, B);
        fl_op_ln_modulate(ctx, &xin, &ly->n1b, &ly->n1s, &h1, &mean1, &rstd1, FL_BVIT_EPS);
        fl_tensor qkv = first_rows(&m->qkv, 0, R);
        linear_rows(ctx, &h1, &ly->qkv_w, &ly->qkv_b, &qkv, R);
        /* [B, L, 3, H, hd] -> [3, B, H, L, hd] */
        fl_tensor q5 = fl_tensor_reshape(&qkv, 5, (int64_t[]){B, L, 3, H, hd});
        fl_tensor q5p = fl_tensor_permute(&q5, (int[]){2, 0, 3, 1, 4});
        fl_tensor qkvh = first_rows(&a->qkvh, 1, B);
        fl_op_copy(ctx, &q5p, &qkvh);
        fl_tensor q = fl_tensor_slice(&qkvh, 0, 0, 1), k = fl_tensor_slice(&qkvh, 0, 1, 1), v = fl_tensor_slice(&qkvh, 0, 2, 1);
        q = fl_tensor_reshape(&q, 4, (int64_t[]){B, H, L, hd});
        k = fl_tensor_reshape(&k, 4, (int64_t[]){B, H, L, hd});
        v = fl_tensor_reshape(&v, 4, (int64_t[]){B, H, L, hd});
        fl_tensor o = first_rows(&a->o, 0, B), lse = first_rows(&a->lse, 0, B);
        fl_op_attention(ctx, &q, &k, &v, &o, &lse, 1.0f / sqrtf((float)hd));
        /* [B, H, L, hd] -> [B, L, H, hd] */
        fl_tensor op = fl_tensor_permute(&o, (int[]){0, 2, 1, 3});
        fl_tensor om = first_rows(&a->om, 0, R);
        fl_tensor om4 = fl_tensor_reshape(&om, 4, (int64_t[]){B, L, H, hd});
        fl_op_copy(ctx, &op, &om4);
        fl_tensor tmp = first_rows(&m->tmp, 0, R);
        fl_op_linear(ctx, &om, &ly->proj_w, &ly->proj_b, &tmp);
        fl_tensor xmid = btd(m, &a->xmid, B);
        fl_tensor xin2 = fl_tensor_reshape(&xin, 2, (int64_t[]){R, D}), xmid2 = fl_tensor_reshape(&xmid, 2, (int64_t[]){R, D});
        fl_op_add(ctx, &xin2, &tmp, 1.0f, &xmid2);
        fl_tensor mean2 = first_rows(&a->mean2, 1, R), rstd2 = first_rows(&a->rstd2, 1, R);
        fl_tensor h2 = btd(m, &a->h2, B);
        fl_op_ln_modulate(ctx, &xmid, &ly->n2b, &ly->n2s, &h2, &mean2, &rstd2, FL_BVIT_EPS);
        fl_tensor f1 = first_rows(&a->f1, 0, R), g = first_rows(&a->g, 0, R);
        linear_rows(ctx, &h2, &ly->fc1_w, &ly->fc1_b, &f1, R);
        fl_op_gelu_tanh(ctx, &f1, &g);
        fl_op_linear(ctx, &g, &ly->fc2_w, &ly->fc2_b, &tmp);
        fl_tensor xout2 = fl_tensor_reshape(&xout, 2, (int64_t[]){R, D});
        fl_op_add(ctx, &xmid2, &tmp, 1.0f, &xout2);
    }
    fl_tensor xlast = btd(m, &m->xs[train ? c->depth : (c->depth & 1)], B);
    fl_tensor meanf = first_rows(&m->meanf, 1, R), rstdf = first_rows(&m->rstdf, 1, R);
    fl_tensor xf = btd(m, &m->xf, B);
    fl_op_ln_modulate(ctx, &xlast, &w->nf_b, &w->nf_s, &xf, &meanf, &rstdf, FL_BVIT_EPS);
    fl_tensor xf3 = fl_tensor_reshape(&xf, 3, (int64_t[]){B, L, D});
    fl_tensor cls_rows = fl_tensor_slice(&xf3, 1, 0, 1);
    fl_tensor cls_out = first_rows(&m->cls_out, 0, B);
    fl_tensor cls_out3 = fl_tensor_reshape(&cls_out, 3, (int64_t[]){B, 1, D});
    fl_op_copy(ctx, &cls_rows, &cls_out3);
    if (train && c->head_hidden > 0) {
        fl_tensor hh = first_rows(&m->hh, 0, B), hg = first_rows(&m->hg, 0, B), z = first_rows(&m->z, 0, B);
        fl_op_linear(ctx, &cls_out, &w->hw1, &w->hb1, &hh);
        fl_op_gelu_tanh(ctx, &hh, &hg);
        fl_op_linear(ctx, &hg, &w->hw2, &w->hb2, &z);
    }
    m->last_batch = B;
}

int fl_bvit_embed(fl_bvit *m, const float *images, int n, float *out, fl_error *err) {
    const int S = m->c.image_size, D = m->c.dim;
    if (n < 0) return fl_fail(err, FL_EINVAL, "negative image count");
    for (int i0 = 0; i0 < n; i0 += BVIT_EMBED_BATCH) {
        int B = n - i0 < BVIT_EMBED_BATCH ? n - i0 : BVIT_EMBED_BATCH;
        const float *img = images + (size_t)i0 * S * S * 3;
        for (size_t k = 0; k < (size_t)B * S * S * 3; k++)
            if (!isfinite(img[k])) return fl_fail(err, FL_EINVAL, "image %d holds a non-finite value", i0 + (int)(k / ((size_t)S * S * 3)));
        bvit_forward(m, img, B, m->cap_train);
        fl_tensor cls = first_rows(&m->cls_out, 0, B);
        fl_ctx_download_f32(m->ctx, out + (size_t)i0 * D, &cls, (size_t)B * D);
    }
    return 0;
}
