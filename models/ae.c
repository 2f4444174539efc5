/*
 * ae.c — building the FLUX.1 autoencoder: its parameters, the structure of its two halves, the
 * parameter table (one walk over the structure names every tensor, so the declarations, the
 * binding of weights and the manifests can never disagree), random initialization, and loading
 * weights from a file or directory in either layout (models/ae_names.c maps diffusers names).
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/config.h"
#include "core/rng.h"
#include "models/ae_internal.h"
#include "models/text/weights.h"

#define ALIGNED(n) (((size_t)(n) + 255) & ~(size_t)255)
/* Skeleton weights point here: never dereferenced (planning mode computes nothing). */
#define AE_PLACEHOLDER_BASE ((uintptr_t)1 << 20)

/* ---- parameters --------------------------------------------------------------------------------- */

void fl_ae_params_flux1(fl_ae_params *out) {
    memset(out, 0, sizeof *out);
    out->in_channels = 3;
    out->out_ch = 3;
    out->ch = 128;
    out->n_levels = 4;
    out->ch_mult[0] = 1;
    out->ch_mult[1] = 2;
    out->ch_mult[2] = 4;
    out->ch_mult[3] = 4;
    out->num_res_blocks = 2;
    out->z_channels = 16;
    out->scale_factor = 0.3611f;
    out->shift_factor = 0.1159f;
}

int fl_ae_params_validate(const fl_ae_params *p, fl_error *err) {
    if (p->in_channels < 1 || p->in_channels > 64 || p->out_ch < 1 || p->out_ch > 64)
        return fl_fail(err, FL_EINVAL, "autoencoder: %d input / %d output image channels out of range [1, 64]",
                       p->in_channels, p->out_ch);
    if (p->ch < AE_GROUPS || p->ch > 8192 || p->ch % AE_GROUPS)
        return fl_fail(err, FL_EINVAL, "autoencoder: width ch = %d must be a multiple of %d in [%d, 8192]", p->ch,
                       AE_GROUPS, AE_GROUPS);
    if (p->n_levels < 1 || p->n_levels > FL_AE_MAX_LEVELS)
        return fl_fail(err, FL_EINVAL, "autoencoder: %d levels out of range [1, %d]", p->n_levels, FL_AE_MAX_LEVELS);
    for (int i = 0; i < p->n_levels; i++)
        if (p->ch_mult[i] < 1 || (int64_t)p->ch * p->ch_mult[i] > 8192)
            return fl_fail(err, FL_EINVAL, "autoencoder: ch_mult[%d] = %d out of range", i, p->ch_mult[i]);
    if (p->num_res_blocks < 1 || p->num_res_blocks > 16)
        return fl_fail(err, FL_EINVAL, "autoencoder: num_res_blocks %d out of range [1, 16]", p->num_res_blocks);
    if (p->z_channels < 1 || p->z_channels > 1024)
        return fl_fail(err, FL_EINVAL, "autoencoder: z_channels %d out of range [1, 1024]", p->z_channels);
    if (!isfinite(p->scale_factor) || p->scale_factor == 0.0f || !isfinite(p->shift_factor))
        return fl_fail(err, FL_EINVAL, "autoencoder: scale_factor %g / shift_factor %g are not usable",
                       (double)p->scale_factor, (double)p->shift_factor);
    return 0;
}

int fl_ae_downscale(const fl_ae_params *p) {
    return 1 << (p->n_levels - 1);
}

int fl_ae_token_channels(const fl_ae_params *p) {
    return 4 * p->z_channels;
}

/* ---- structure ---------------------------------------------------------------------------------- */

static fl_tensor shape_only(const fl_ae *ae, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t shape[4] = {a, b, c, d};
    return fl_tensor_make(NULL, ae->dtype, ae->ctx->device, ndim, shape);
}

static void make_conv(const fl_ae *ae, ae_conv *cv, int64_t cin, int64_t cout, int64_t k) {
    cv->w = shape_only(ae, 4, cout, cin, k, k);
    cv->b = shape_only(ae, 1, cout, 0, 0, 0);
}

static void make_norm(const fl_ae *ae, ae_norm *n, int64_t c) {
    n->w = shape_only(ae, 1, c, 0, 0, 0);
    n->b = shape_only(ae, 1, c, 0, 0, 0);
}

static void make_res(const fl_ae *ae, ae_res *r, int64_t cin, int64_t cout) {
    r->cin = cin;
    r->cout = cout;
    make_norm(ae, &r->norm1, cin);
    make_conv(ae, &r->conv1, cin, cout, 3);
    make_norm(ae, &r->norm2, cout);
    make_conv(ae, &r->conv2, cout, cout, 3);
    if (cin != cout) make_conv(ae, &r->nin, cin, cout, 1);
}

static void make_attn(const fl_ae *ae, ae_attn *a, int64_t c) {
    a->c = c;
    make_norm(ae, &a->norm, c);
    make_conv(ae, &a->q, c, c, 1);
    make_conv(ae, &a->k, c, c, 1);
    make_conv(ae, &a->v, c, c, 1);
    make_conv(ae, &a->proj_out, c, c, 1);
}

fl_ae *ae_model_new(fl_ctx *ctx, const fl_ae_params *p) {
    fl_ae *ae = fl_xcalloc(1, sizeof *ae);
    ae->ctx = ctx;
    ae->p = *p;
    ae->dtype = fl_ctx_storage_dtype(ctx);
    const int n = p->n_levels, nrb = p->num_res_blocks;
    const int64_t ch = p->ch, top = ch * p->ch_mult[n - 1];

    ae_half *enc = &ae->half[0];
    make_conv(ae, &enc->conv_in, p->in_channels, ch, 3);
    int64_t block_in = ch;
    for (int i = 0; i < n; i++) {
        ae_level *lv = &enc->levels[i];
        block_in = ch * (i == 0 ? 1 : p->ch_mult[i - 1]);
        const int64_t block_out = ch * p->ch_mult[i];
        lv->n_blocks = nrb;
        lv->blocks = fl_xcalloc((size_t)nrb, sizeof *lv->blocks);
        for (int j = 0; j < nrb; j++) {
            make_res(ae, &lv->blocks[j], block_in, block_out);
            block_in = block_out;
        }
        lv->has_sample = i != n - 1;
        if (lv->has_sample) make_conv(ae, &lv->sample, block_in, block_in, 3);
    }
    make_res(ae, &enc->mid1, block_in, block_in);
    make_attn(ae, &enc->attn, block_in);
    make_res(ae, &enc->mid2, block_in, block_in);
    make_norm(ae, &enc->norm_out, block_in);
    make_conv(ae, &enc->conv_out, block_in, 2 * (int64_t)p->z_channels, 3);

    ae_half *dec = &ae->half[1];
    block_in = top;
    make_conv(ae, &dec->conv_in, p->z_channels, block_in, 3);
    make_res(ae, &dec->mid1, block_in, block_in);
    make_attn(ae, &dec->attn, block_in);
    make_res(ae, &dec->mid2, block_in, block_in);
    for (int i = n - 1; i >= 0; i--) {
        ae_level *lv = &dec->levels[i];
        const int64_t block_out = ch * p->ch_mult[i];
        lv->n_blocks = nrb + 1;
        lv->blocks = fl_xcalloc((size_t)(nrb + 1), sizeof *lv->blocks);
        for (int j = 0; j < nrb + 1; j++) {
            make_res(ae, &lv->blocks[j], block_in, block_out);
            block_in = block_out;
        }
        lv->has_sample = i != 0;
        if (lv->has_sample) make_conv(ae, &lv->sample, block_in, block_in, 3);
    }
    make_norm(ae, &dec->norm_out, block_in);
    make_conv(ae, &dec->conv_out, block_in, p->out_ch, 3);
    return ae;
}

void ae_model_free_structure(fl_ae *ae) {
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < FL_AE_MAX_LEVELS; i++) free(ae->half[h].levels[i].blocks);
    free(ae->plans);
    free(ae);
}

/* ---- the parameter walk ------------------------------------------------------------------------- */

typedef struct walker {
    void (*visit)(const char *name, fl_tensor *t, void *user);
    void *user;
    char name[FL_AE_NAME_MAX];
} walker;

/* Every name is a short fixed pattern; one that does not fit is a bug. */
#define NAME_PRINTF(buf, ...) FL_CHECK(snprintf(buf, sizeof buf, __VA_ARGS__) < (int)sizeof buf)

static void emit(walker *wk, const char *prefix, const char *leaf, fl_tensor *t) {
    NAME_PRINTF(wk->name, "%s.%s", prefix, leaf);
    wk->visit(wk->name, t, wk->user);
}

static void walk_conv(walker *wk, const char *prefix, ae_conv *cv) {
    emit(wk, prefix, "weight", &cv->w);
    emit(wk, prefix, "bias", &cv->b);
}

static void walk_norm(walker *wk, const char *prefix, ae_norm *n) {
    emit(wk, prefix, "weight", &n->w);
    emit(wk, prefix, "bias", &n->b);
}

static void walk_sub(walker *wk, const char *prefix, const char *sub, void (*fn)(walker *, const char *, void *),
                     void *obj) {
    char path[FL_AE_NAME_MAX];
    NAME_PRINTF(path, "%s.%s", prefix, sub);
    fn(wk, path, obj);
}

static void walk_conv_v(walker *wk, const char *prefix, void *obj) { walk_conv(wk, prefix, obj); }
static void walk_norm_v(walker *wk, const char *prefix, void *obj) { walk_norm(wk, prefix, obj); }

static void walk_res(walker *wk, const char *prefix, ae_res *r) {
    walk_sub(wk, prefix, "norm1", walk_norm_v, &r->norm1);
    walk_sub(wk, prefix, "conv1", walk_conv_v, &r->conv1);
    walk_sub(wk, prefix, "norm2", walk_norm_v, &r->norm2);
    walk_sub(wk, prefix, "conv2", walk_conv_v, &r->conv2);
    if (r->cin != r->cout) walk_sub(wk, prefix, "nin_shortcut", walk_conv_v, &r->nin);
}

static void walk_mid(walker *wk, const char *half, ae_half *h) {
    char path[FL_AE_NAME_MAX];
    NAME_PRINTF(path, "%s.mid.block_1", half);
    walk_res(wk, path, &h->mid1);
    NAME_PRINTF(path, "%s.mid.attn_1", half);
    walk_sub(wk, path, "norm", walk_norm_v, &h->attn.norm);
    walk_sub(wk, path, "q", walk_conv_v, &h->attn.q);
    walk_sub(wk, path, "k", walk_conv_v, &h->attn.k);
    walk_sub(wk, path, "v", walk_conv_v, &h->attn.v);
    walk_sub(wk, path, "proj_out", walk_conv_v, &h->attn.proj_out);
    NAME_PRINTF(path, "%s.mid.block_2", half);
    walk_res(wk, path, &h->mid2);
}

static void walk_levels(walker *wk, const char *half, ae_half *h, int n_levels, bool encoder) {
    char path[FL_AE_NAME_MAX];
    for (int i = 0; i < n_levels; i++) {
        ae_level *lv = &h->levels[i];
        for (int j = 0; j < lv->n_blocks; j++) {
            NAME_PRINTF(path, "%s.%s.%d.block.%d", half, encoder ? "down" : "up", i, j);
            walk_res(wk, path, &lv->blocks[j]);
        }
        if (lv->has_sample) {
            NAME_PRINTF(path, "%s.%s.%d.%s.conv", half, encoder ? "down" : "up", i,
                        encoder ? "downsample" : "upsample");
            walk_conv(wk, path, &lv->sample);
        }
    }
}

void ae_visit(fl_ae *ae, unsigned parts, void (*visit)(const char *name, fl_tensor *t, void *user), void *user) {
    walker wk = {visit, user, {0}};
    if (parts & FL_AE_ENCODER) { /* BFL's state_dict order */
        ae_half *h = &ae->half[0];
        walk_conv(&wk, "encoder.conv_in", &h->conv_in);
        walk_levels(&wk, "encoder", h, ae->p.n_levels, true);
        walk_mid(&wk, "encoder", h);
        walk_norm(&wk, "encoder.norm_out", &h->norm_out);
        walk_conv(&wk, "encoder.conv_out", &h->conv_out);
    }
    if (parts & FL_AE_DECODER) {
        ae_half *h = &ae->half[1];
        walk_conv(&wk, "decoder.conv_in", &h->conv_in);
        walk_mid(&wk, "decoder", h);
        walk_levels(&wk, "decoder", h, ae->p.n_levels, false);
        walk_norm(&wk, "decoder.norm_out", &h->norm_out);
        walk_conv(&wk, "decoder.conv_out", &h->conv_out);
    }
}

typedef struct decl_sink {
    fl_ae_param_decl *decls;
    size_t n;
} decl_sink;

static void collect_decl(const char *name, fl_tensor *t, void *user) {
    decl_sink *s = user;
    if (s->decls) {
        fl_ae_param_decl *d = &s->decls[s->n];
        memset(d, 0, sizeof *d);
        snprintf(d->name, sizeof d->name, "%s", name);
        d->ndim = t->ndim;
        for (int i = 0; i < t->ndim; i++) d->shape[i] = t->shape[i];
    }
    s->n++;
}

size_t fl_ae_param_decls(const fl_ae_params *p, unsigned parts, fl_ae_param_decl *decls) {
    FL_CHECK(fl_ae_params_validate(p, NULL) == 0);
    fl_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.device = fl_device_cpu();
    ctx.planning = true;
    fl_ae *ae = ae_model_new(&ctx, p);
    decl_sink sink = {decls, 0};
    ae_visit(ae, parts, collect_decl, &sink);
    ae_model_free_structure(ae);
    return sink.n;
}

/* ---- weight memory -------------------------------------------------------------------------------- */

typedef struct placer {
    char *base;
    size_t off;
} placer;

static void place(const char *name, fl_tensor *t, void *user) {
    (void)name;
    placer *pl = user;
    t->data = pl->base + pl->off;
    pl->off += ALIGNED(fl_tensor_nbytes(t));
}

static void measure(const char *name, fl_tensor *t, void *user) {
    (void)name;
    *(size_t *)user += ALIGNED(fl_tensor_nbytes(t));
}

/* Allocates (or, for a skeleton, lays out over a placeholder) the weights of the given parts. */
int ae_alloc_parts(fl_ae *ae, unsigned parts, fl_error *err) {
    for (int h = 0; h < 2; h++) {
        unsigned part = h == 0 ? FL_AE_ENCODER : FL_AE_DECODER;
        if (!(parts & part)) continue;
        size_t bytes = 0;
        ae_visit(ae, part, measure, &bytes);
        ae->weight_bytes[h] = bytes;
        char *base = NULL;
        if (ae->skeleton) {
            base = (char *)AE_PLACEHOLDER_BASE;
        } else {
            base = fl_ctx_alloc(ae->ctx, bytes ? bytes : 1);
            if (!base)
                return fl_fail(err, FL_ENOMEM, "out of device memory for the autoencoder's %s (%zu bytes)",
                               h == 0 ? "encoder" : "decoder", bytes);
            ae->memory[h] = base;
        }
        placer pl = {base, 0};
        ae_visit(ae, part, place, &pl);
        ae->parts |= part;
    }
    return 0;
}

void fl_ae_release(fl_ae *ae, unsigned parts) {
    if (!ae) return;
    for (int h = 0; h < 2; h++) {
        unsigned part = h == 0 ? FL_AE_ENCODER : FL_AE_DECODER;
        if (!(parts & part) || !(ae->parts & part)) continue;
        if (!ae->skeleton) fl_ctx_free(ae->ctx, ae->memory[h]);
        ae->memory[h] = NULL;
        ae->weight_bytes[h] = 0;
        ae->parts &= ~part;
    }
}

void fl_ae_free(fl_ae *ae) {
    if (!ae) return;
    fl_ae_release(ae, FL_AE_BOTH);
    if (!ae->skeleton) fl_ctx_free(ae->ctx, ae->arena_memory);
    ae_model_free_structure(ae);
}

const fl_ae_params *fl_ae_get_params(const fl_ae *ae) {
    return &ae->p;
}

fl_ctx *fl_ae_get_ctx(const fl_ae *ae) {
    return ae->ctx;
}

unsigned fl_ae_parts(const fl_ae *ae) {
    return ae->parts;
}

/* ---- random weights ------------------------------------------------------------------------------- */

typedef struct random_fill {
    fl_ctx *ctx;
    fl_rng rng;
} random_fill;

static void fill_random(const char *name, fl_tensor *t, void *user) {
    random_fill *rf = user;
    size_t n = (size_t)fl_tensor_numel(t);
    float *host = fl_xmalloc((n ? n : 1) * sizeof(float));
    size_t len = strlen(name);
    bool is_norm = strstr(name, ".norm") != NULL;
    if (t->ndim == 4) {
        float fan_in = (float)(t->shape[1] * t->shape[2] * t->shape[3]);
        fl_rng_fill_normal(&rf->rng, host, n, 0.0f, 1.0f / sqrtf(fan_in));
    } else if (is_norm && !strcmp(name + len - 6, "weight")) {
        fl_rng_fill_normal(&rf->rng, host, n, 1.0f, 0.1f);
    } else {
        fl_rng_fill_normal(&rf->rng, host, n, 0.0f, is_norm ? 0.1f : 0.02f);
    }
    fl_ctx_upload_f32(rf->ctx, t, host, n);
    free(host);
}

fl_ae *fl_ae_create_random(fl_ctx *ctx, const fl_ae_params *p, unsigned parts, uint64_t seed) {
    FL_CHECK(fl_ae_params_validate(p, NULL) == 0);
    fl_ae *ae = ae_model_new(ctx, p);
    fl_error err;
    FL_CHECKF(ae_alloc_parts(ae, parts, &err) == 0, "%s", err.message);
    random_fill rf = {ctx, {{0}}};
    fl_rng_seed(&rf.rng, seed);
    ae_visit(ae, parts, fill_random, &rf); /* both halves draw from one sequence, encoder first */
    return ae;
}

/* ---- loading -------------------------------------------------------------------------------------- */

/* Where tensors come from: one open file, or the weights table of models/text/weights.h (a file,
 * a sharded index or a folder). Both give (name, shape) headers and the bytes of each tensor. */
typedef struct reader {
    const fl_safetensors *st;
    const fl_weight_files *w;
    fl_tensor_header *owned; /* headers built from st */
    const fl_tensor_header *headers;
    size_t n;
} reader;

static void reader_from_file(reader *r, const fl_safetensors *st) {
    memset(r, 0, sizeof *r);
    r->st = st;
    r->n = fl_safetensors_count(st);
    r->owned = fl_xcalloc(r->n ? r->n : 1, sizeof *r->owned);
    for (size_t i = 0; i < r->n; i++) {
        const fl_safetensors_info *info = fl_safetensors_at(st, i);
        r->owned[i].name = info->name;
        r->owned[i].ndim = info->ndim;
        memcpy(r->owned[i].shape, info->shape, sizeof r->owned[i].shape);
    }
    r->headers = r->owned;
}

static void reader_from_table(reader *r, const fl_weight_files *w) {
    memset(r, 0, sizeof *r);
    r->w = w;
    r->headers = fl_weight_files_headers(w, &r->n);
}

static const fl_safetensors_info *reader_find(const reader *r, const char *name) {
    return r->st ? fl_safetensors_find(r->st, name) : fl_weight_files_find(r->w, name, NULL);
}

typedef struct binder {
    fl_ae *ae;
    const reader *rd;
    const fl_ae_source *src;
    float *host;
    size_t host_cap;
} binder;

/* The file's tensor for a BFL name (fl_ae_check_entries has guaranteed it exists). */
static const fl_safetensors_info *source_tensor(const binder *b, const char *bfl_name) {
    size_t plen = strlen(b->src->prefix);
    for (size_t i = 0; i < b->rd->n; i++) {
        const char *full = b->rd->headers[i].name;
        if (strncmp(full, b->src->prefix, plen)) continue;
        const char *name = full + plen;
        bool match = false;
        if (b->src->layout == FL_AE_LAYOUT_BFL) {
            match = !strcmp(name, bfl_name);
        } else {
            char mapped[FL_AE_NAME_MAX];
            bool linear = false;
            match = fl_ae_diffusers_to_bfl(name, b->ae->p.n_levels, mapped, sizeof mapped, &linear) == 0 &&
                    !strcmp(mapped, bfl_name);
        }
        if (match) return reader_find(b->rd, full);
    }
    return NULL;
}

/* The tensor's values as f32 (little-endian bytes, any alignment: the offsets come from the file). */
static void read_f32(const fl_safetensors_info *info, float *dst) {
    const unsigned char *src = info->data;
    const size_t n = (size_t)info->numel;
    switch (info->dtype) {
    case FL_ST_F32: memcpy(dst, src, n * sizeof(float)); break;
    case FL_ST_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = fl_bf16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        break;
    case FL_ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = fl_f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        break;
    default: FL_CHECKF(false, "dtype %s was not refused before binding", fl_st_dtype_name(info->dtype));
    }
}

static void bind_tensor(const char *name, fl_tensor *t, void *user) {
    binder *b = user;
    const fl_safetensors_info *info = source_tensor(b, name);
    FL_CHECKF(info != NULL, "autoencoder tensor %s vanished after the binding check", name);
    const size_t n = (size_t)info->numel;
    FL_CHECK((int64_t)n == fl_tensor_numel(t));
    if (n > b->host_cap) {
        free(b->host);
        b->host_cap = n;
        b->host = fl_xmalloc(n * sizeof(float));
    }
    read_f32(info, b->host);
    fl_ctx_upload_f32(b->ae->ctx, t, b->host, n);
}

static bool same_shape_params(const fl_ae_params *a, const fl_ae_params *b) {
    bool ok = a->in_channels == b->in_channels && a->out_ch == b->out_ch && a->n_levels == b->n_levels &&
              a->num_res_blocks == b->num_res_blocks && a->z_channels == b->z_channels;
    for (int i = 0; ok && i < a->n_levels; i++) ok = (int64_t)a->ch * a->ch_mult[i] == (int64_t)b->ch * b->ch_mult[i];
    return ok && a->ch == b->ch;
}

static int load_from(fl_ctx *ctx, const reader *rd, const fl_ae_params *p, unsigned parts, fl_ae **out,
                     fl_error *err) {
    *out = NULL;
    if (parts == 0 || (parts & ~FL_AE_BOTH)) return fl_fail(err, FL_EINVAL, "autoencoder: no part to load");
    fl_ae_source src;
    if (fl_ae_detect(rd->headers, rd->n, &src, err) != 0) return -1;
    if (p) {
        if (fl_ae_params_validate(p, err) != 0) return -1;
        if (!same_shape_params(p, &src.params))
            return fl_fail(err, FL_EINVAL, "the autoencoder in the file does not have the expected shape (channels, "
                                           "levels, blocks or latent channels differ)");
        src.params = *p;
    }
    if (parts & ~src.parts)
        return fl_fail(err, FL_EINVAL, "the file holds no autoencoder %s",
                       (parts & ~src.parts) & FL_AE_ENCODER ? "encoder" : "decoder");
    if (fl_ae_check_entries(rd->headers, rd->n, &src, parts, err) != 0) return -1;
    fl_ae *ae = ae_model_new(ctx, &src.params);
    binder b = {ae, rd, &src, NULL, 0};
    /* dtypes: only computable ones, before any memory is taken */
    size_t nd = fl_ae_param_decls(&src.params, parts, NULL);
    fl_ae_param_decl *decls = fl_xcalloc(nd, sizeof *decls);
    fl_ae_param_decls(&src.params, parts, decls);
    int rc = 0;
    for (size_t i = 0; i < nd && rc == 0; i++) {
        const fl_safetensors_info *info = source_tensor(&b, decls[i].name);
        if (!fl_st_dtype_computable(info->dtype, NULL))
            rc = fl_fail(err, FL_EUNSUPPORTED, "tensor '%s' has dtype %s; the autoencoder loads F32, BF16 or F16",
                         info->name, fl_st_dtype_name(info->dtype));
    }
    free(decls);
    if (rc == 0) rc = ae_alloc_parts(ae, parts, err);
    if (rc != 0) {
        fl_ae_free(ae);
        return -1;
    }
    ae_visit(ae, parts, bind_tensor, &b);
    free(b.host);
    *out = ae;
    return 0;
}

int fl_ae_load_safetensors(fl_ctx *ctx, const fl_safetensors *st, const fl_ae_params *p, unsigned parts,
                           fl_ae **out, fl_error *err) {
    reader rd;
    reader_from_file(&rd, st);
    int rc = load_from(ctx, &rd, p, parts, out, err);
    free(rd.owned);
    return rc;
}

static bool is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Whether dir holds weights of its own (an index or a .safetensors file). */
static bool has_weights(const char *dir) {
    DIR *d = opendir(dir);
    bool found = false;
    for (struct dirent *e; d && !found && (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        found = (n > 12 && !strcmp(e->d_name + n - 12, ".safetensors")) ||
                (n > 11 && !strcmp(e->d_name + n - 11, ".index.json"));
    }
    if (d) closedir(d);
    return found;
}

/* scaling_factor / shift_factor from a diffusers config.json in dir, when there is one. */
static int read_diffusers_config(const char *dir, fl_ae_params *p, fl_error *err) {
    char cfg[4096];
    if (snprintf(cfg, sizeof cfg, "%s/config.json", dir) >= (int)sizeof cfg || !is_file(cfg)) return 0;
    json_t *root = fl_config_load_file(cfg, err);
    if (!root) return -1;
    double scale = p->scale_factor, shift = p->shift_factor;
    int rc = 0;
    if (!json_is_object(root)) rc = fl_fail(err, FL_EINVAL, "%s: not a JSON object", cfg);
    if (rc == 0 && (fl_config_get_double(root, "scaling_factor", false, -1e6, 1e6, &scale, err) != 0 ||
                    fl_config_get_double(root, "shift_factor", false, -1e6, 1e6, &shift, err) != 0))
        rc = fl_fail_prefix(err, "%s", cfg);
    json_decref(root);
    if (rc != 0) return -1;
    p->scale_factor = (float)scale;
    p->shift_factor = (float)shift;
    return 0;
}

int fl_ae_load(fl_ctx *ctx, const char *path, unsigned parts, fl_ae **out, fl_error *err) {
    *out = NULL;
    if (!is_file(path) && !is_dir(path)) return fl_fail(err, FL_EIO, "%s: no such file or directory", path);
    /* A model folder: BFL's ae.safetensors at its root, else diffusers' vae/ folder; a vae folder
     * itself, a file or an index go to the weights table as they are. */
    char where[4096];
    int len = snprintf(where, sizeof where, "%s", path);
    if (is_dir(path)) {
        if (snprintf(where, sizeof where, "%s/ae.safetensors", path) < (int)sizeof where && is_file(where)) {
        } else if (snprintf(where, sizeof where, "%s/vae", path) < (int)sizeof where && is_dir(where)) {
        } else {
            len = snprintf(where, sizeof where, "%s", path);
        }
    }
    if (len < 0 || len >= (int)sizeof where) return fl_fail(err, FL_EINVAL, "path too long");
    fl_weight_files *w = NULL;
    if (fl_weight_files_open(where, &w, err) != 0) {
        if (!is_dir(path) || strcmp(where, path) || has_weights(path)) return -1; /* names the file at fault */
        return fl_fail(err, FL_ENOTFOUND, "%s: no autoencoder (looked for ae.safetensors, vae/, and the weights of "
                                          "a vae folder)", path);
    }
    reader rd;
    reader_from_table(&rd, w);
    fl_ae_source src;
    int rc = fl_ae_detect(rd.headers, rd.n, &src, err);
    if (rc == 0 && src.layout == FL_AE_LAYOUT_DIFFUSERS) {
        if (read_diffusers_config(fl_weight_files_dir(w), &src.params, err) != 0) { /* names its config.json */
            fl_weight_files_close(w);
            return -1;
        }
    }
    if (rc == 0) rc = load_from(ctx, &rd, &src.params, parts, out, err);
    fl_weight_files_close(w);
    return rc == 0 ? 0 : fl_fail_prefix(err, "%s", where);
}
