/*
 * flux_model.c — building a Flux model: the parameter table, weight binding from a checkpoint
 * (original key names, optional "model.diffusion_model." prefix, dtype conversion), random
 * initialization, adapters (attach, remove, per-sample selection), gradient buffers, and the
 * planned entry points for forward and training steps.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/family.h"
#include "models/flux_internal.h"
#include "models/weights.h"

static const char checkpoint_prefix[] = "model.diffusion_model.";

/* ---- structure ------------------------------------------------------------------------------------ */

static fl_flux_linear *find_linear(fl_flux_model *m, const char *path) {
    for (size_t i = 0; i < m->n_linears; i++)
        if (!strcmp(m->linears[i].name, path)) return &m->linears[i];
    return NULL;
}

static fl_flux_linear *need_linear(fl_flux_model *m, const char *fmt, int index) {
    char path[FL_FLUX_NAME_MAX];
    snprintf(path, sizeof path, fmt, index);
    fl_flux_linear *lin = find_linear(m, path);
    FL_CHECKF(lin, "model structure lacks %s", path);
    return lin;
}

static size_t find_param(const fl_flux_model *m, const char *name) {
    for (size_t i = 0; i < m->n_params; i++)
        if (!strcmp(m->decls[i].name, name)) return i;
    return (size_t)-1;
}

static void need_scale(fl_flux_model *m, const char *fmt, int index, fl_tensor **value, fl_tensor **grad) {
    char name[FL_FLUX_NAME_MAX];
    snprintf(name, sizeof name, fmt, index);
    size_t i = find_param(m, name);
    FL_CHECKF(i != (size_t)-1, "model structure lacks %s", name);
    *value = m->values[i];
    *grad = m->grads[i];
}

/* Builds linears, blocks and the parameter table from the declarations; no memory for values. */
static fl_flux_model *model_new(fl_ctx *ctx, const fl_flux_params *p) {
    fl_flux_model *m = fl_xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->p = *p;
    m->dtype = fl_ctx_storage_dtype(ctx);
    m->n_params = fl_flux_param_decls(p, NULL);
    m->decls = fl_xcalloc(m->n_params, sizeof *m->decls);
    fl_flux_param_decls(p, m->decls);
    m->values = fl_xcalloc(m->n_params, sizeof *m->values);
    m->grads = fl_xcalloc(m->n_params, sizeof *m->grads);

    size_t n_linears = 0, n_scales = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        if (m->decls[i].ndim == 2) n_linears++;
        else if (strstr(m->decls[i].name, "_norm.scale")) n_scales++;
    }
    m->linears = fl_xcalloc(n_linears, sizeof *m->linears);
    m->norm_scales = fl_xcalloc(n_scales ? n_scales : 1, sizeof *m->norm_scales);
    m->norm_scale_grads = fl_xcalloc(n_scales ? n_scales : 1, sizeof *m->norm_scale_grads);
    for (size_t i = 0; i < m->n_params; i++) {
        fl_flux_param_decl *d = &m->decls[i];
        size_t len = strlen(d->name);
        if (d->ndim == 2) {
            fl_flux_linear *lin = &m->linears[m->n_linears++];
            memcpy(lin->name, d->name, len - strlen(".weight"));
            lin->out = d->shape[0];
            lin->in = d->shape[1];
            lin->trainable = -1;
            m->values[i] = &lin->weight;
            m->grads[i] = &lin->grad_weight;
        } else if (len > 5 && !strcmp(d->name + len - 5, ".bias")) {
            fl_flux_linear *lin = &m->linears[m->n_linears - 1];
            FL_CHECK(!strncmp(d->name, lin->name, strlen(lin->name)));
            m->values[i] = &lin->bias;
            m->grads[i] = &lin->grad_bias;
        } else {
            m->values[i] = &m->norm_scales[m->n_norm_scales];
            m->grads[i] = &m->norm_scale_grads[m->n_norm_scales];
            m->n_norm_scales++;
        }
    }

    m->img_in = need_linear(m, "img_in", 0);
    m->txt_in = need_linear(m, "txt_in", 0);
    m->time_in[0] = need_linear(m, "time_in.in_layer", 0);
    m->time_in[1] = need_linear(m, "time_in.out_layer", 0);
    m->vector_in[0] = need_linear(m, "vector_in.in_layer", 0);
    m->vector_in[1] = need_linear(m, "vector_in.out_layer", 0);
    if (p->guidance_embed) {
        m->guidance_in[0] = need_linear(m, "guidance_in.in_layer", 0);
        m->guidance_in[1] = need_linear(m, "guidance_in.out_layer", 0);
    }
    m->final_linear = need_linear(m, "final_layer.linear", 0);
    m->final_mod = need_linear(m, "final_layer.adaLN_modulation.1", 0);
    m->dbl = fl_xcalloc(p->depth ? (size_t)p->depth : 1, sizeof *m->dbl);
    m->sgl = fl_xcalloc(p->depth_single_blocks ? (size_t)p->depth_single_blocks : 1, sizeof *m->sgl);
    static const char *const stream_fmt[2][7] = {
        {"double_blocks.%d.img_mod.lin", "double_blocks.%d.img_attn.qkv", "double_blocks.%d.img_attn.proj",
         "double_blocks.%d.img_mlp.0", "double_blocks.%d.img_mlp.2", "double_blocks.%d.img_attn.norm.query_norm.scale",
         "double_blocks.%d.img_attn.norm.key_norm.scale"},
        {"double_blocks.%d.txt_mod.lin", "double_blocks.%d.txt_attn.qkv", "double_blocks.%d.txt_attn.proj",
         "double_blocks.%d.txt_mlp.0", "double_blocks.%d.txt_mlp.2", "double_blocks.%d.txt_attn.norm.query_norm.scale",
         "double_blocks.%d.txt_attn.norm.key_norm.scale"}};
    for (int i = 0; i < p->depth; i++) {
        for (int s = 0; s < 2; s++) {
            flux_stream *st = &m->dbl[i].s[s];
            const char *const *f = stream_fmt[s];
            st->mod = need_linear(m, f[0], i);
            st->qkv = need_linear(m, f[1], i);
            st->proj = need_linear(m, f[2], i);
            st->mlp0 = need_linear(m, f[3], i);
            st->mlp2 = need_linear(m, f[4], i);
            need_scale(m, f[5], i, &st->q_scale, &st->q_scale_grad);
            need_scale(m, f[6], i, &st->k_scale, &st->k_scale_grad);
        }
    }
    for (int i = 0; i < p->depth_single_blocks; i++) {
        flux_single *sb = &m->sgl[i];
        sb->linear1 = need_linear(m, "single_blocks.%d.linear1", i);
        sb->linear2 = need_linear(m, "single_blocks.%d.linear2", i);
        sb->mod = need_linear(m, "single_blocks.%d.modulation.lin", i);
        need_scale(m, "single_blocks.%d.norm.query_norm.scale", i, &sb->q_scale, &sb->q_scale_grad);
        need_scale(m, "single_blocks.%d.norm.key_norm.scale", i, &sb->k_scale, &sb->k_scale_grad);
    }
    return m;
}

static int64_t decl_numel(const fl_flux_param_decl *d) {
    return d->ndim == 2 ? d->shape[0] * d->shape[1] : d->shape[0];
}

/* One device allocation for every parameter (or gradient) of the table; *views[i] point into it. */
static void *alloc_table(fl_flux_model *m, fl_tensor **views, fl_dtype dtype) {
    size_t total = 0, esize = fl_dtype_size(dtype);
    for (size_t i = 0; i < m->n_params; i++) total += ((size_t)decl_numel(&m->decls[i]) * esize + 255) & ~(size_t)255;
    char *base = fl_ctx_alloc(m->ctx, total ? total : 1);
    FL_CHECKF(base, "out of device memory for %zu bytes of parameters", total);
    size_t off = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        fl_flux_param_decl *d = &m->decls[i];
        *views[i] = fl_tensor_make(base + off, dtype, m->ctx->device, d->ndim, d->shape);
        off += ((size_t)decl_numel(d) * esize + 255) & ~(size_t)255;
    }
    return base;
}

/* ---- construction ------------------------------------------------------------------------------- */

fl_flux_model *fl_flux_create_random(fl_ctx *ctx, const fl_flux_params *p, uint64_t seed) {
    FL_CHECK(fl_flux_params_validate(p, NULL) == 0);
    fl_flux_model *m = model_new(ctx, p);
    m->weight_memory = alloc_table(m, m->values, m->dtype);
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    for (size_t i = 0; i < m->n_params; i++) {
        fl_flux_param_decl *d = &m->decls[i];
        int64_t n = decl_numel(d);
        float *host = fl_xmalloc((size_t)(n ? n : 1) * sizeof(float));
        if (d->ndim == 2) fl_rng_fill_normal(&rng, host, (size_t)n, 0.0f, 1.0f / sqrtf((float)d->shape[1]));
        else if (strstr(d->name, "_norm.scale")) for (int64_t j = 0; j < n; j++) host[j] = 1.0f;
        else memset(host, 0, (size_t)n * sizeof(float));
        fl_ctx_upload_f32(ctx, m->values[i], host, (size_t)n);
        free(host);
    }
    return m;
}

fl_flux_model *fl_flux_create_empty(fl_ctx *ctx, const fl_flux_params *p) {
    FL_CHECK(fl_flux_params_validate(p, NULL) == 0);
    fl_flux_model *m = model_new(ctx, p);
    m->weight_memory = alloc_table(m, m->values, m->dtype);
    return m;
}

int fl_flux_params_of_checkpoint(const fl_safetensors *st, fl_flux_params *out, fl_error *err) {
    const char *meta = fl_safetensors_metadata_get(st, "flux_params");
    int rc = meta ? fl_flux_params_from_json(meta, out, err) : fl_flux_params_from_safetensors(st, out, err);
    return rc == 0 ? fl_flux_params_validate(out, err) : rc;
}

int fl_flux_load_weights(fl_ctx *ctx, const fl_weights *w, const fl_flux_params *p, fl_flux_model **out,
                         fl_error *err) {
    *out = NULL;
    if (fl_flux_params_validate(p, err) != 0) return -1;
    size_t n = 0;
    fl_tensor_header *h = fl_weights_headers(w, &n);
    int rc = fl_flux_check_entries(h, n, "", p, err);
    free(h);
    for (size_t i = 0; i < fl_weights_count(w) && rc == 0; i++) {
        const fl_weight *t = fl_weights_at(w, i);
        for (int j = 0; j < t->n_parts && rc == 0; j++) {
            fl_st_dtype d = t->parts[j]->dtype;
            if (!fl_st_dtype_computable(d, NULL) && d != FL_ST_F8_E4M3 && d != FL_ST_F8_E5M2 && d != FL_ST_F64)
                rc = fl_fail(err, FL_EUNSUPPORTED, "tensor '%s' has dtype %s; weights must be F32, BF16, F16 or F8",
                             t->name, fl_st_dtype_name(d));
        }
    }
    if (rc != 0) return -1;
    fl_flux_model *m = model_new(ctx, p);
    m->weight_memory = alloc_table(m, m->values, m->dtype);
    const char *dropout = fl_weights_metadata_get(w, "caption_dropout");
    m->cfg_capable = dropout && strtod(dropout, NULL) > 0.0;
    for (size_t i = 0; i < m->n_params && rc == 0; i++) {
        const fl_weight *t = fl_weights_find(w, m->decls[i].name);
        FL_CHECK(t != NULL); /* fl_flux_check_entries guaranteed presence and shape */
        int64_t count = decl_numel(&m->decls[i]);
        float *host = fl_xmalloc((size_t)(count ? count : 1) * sizeof(float));
        rc = fl_weights_read_f32(w, t, host, err);
        if (rc == 0) fl_ctx_upload_f32(ctx, m->values[i], host, (size_t)count);
        free(host);
    }
    if (rc != 0) {
        fl_flux_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

int fl_flux_params_of_weights(const fl_weights *w, fl_flux_params *out, fl_error *err) {
    const char *meta = fl_weights_metadata_get(w, "flux_params");
    int rc;
    if (meta) {
        rc = fl_flux_params_from_json(meta, out, err);
    } else {
        size_t n = 0;
        fl_tensor_header *h = fl_weights_headers(w, &n);
        fl_family_info info;
        rc = fl_detect_family(h, n, &info, err);
        free(h);
        if (rc == 0) *out = info.flux;
    }
    return rc == 0 ? fl_flux_params_validate(out, err) : rc;
}

int fl_flux_open_weights(const char *path, fl_weights **out, fl_error *err) {
    fl_weights *w = NULL;
    if (fl_weights_open(path, &w, err) != 0) return -1;
    int rc = 0;
    if (!fl_weights_find(w, "img_in.weight") && fl_weights_has_prefix(w, checkpoint_prefix))
        rc = fl_weights_strip_prefix(w, checkpoint_prefix, err);
    if (rc == 0) {
        size_t n = 0;
        fl_tensor_header *h = fl_weights_headers(w, &n);
        bool diffusers = fl_flux_is_diffusers(h, n);
        free(h);
        if (diffusers) rc = fl_weights_map_flux_diffusers(w, err);
    }
    if (rc != 0) {
        fl_weights_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

int fl_flux_load(fl_ctx *ctx, const char *path, const fl_flux_params *p_in, fl_flux_model **out, fl_error *err) {
    *out = NULL;
    fl_weights *w = NULL;
    if (fl_flux_open_weights(path, &w, err) != 0) return -1;
    fl_flux_params p;
    int rc = 0;
    if (p_in) p = *p_in;
    else rc = fl_flux_params_of_weights(w, &p, err);
    if (rc == 0) rc = fl_flux_load_weights(ctx, w, &p, out, err);
    fl_weights_close(w);
    return rc == 0 ? 0 : fl_fail_prefix(err, "%s", path);
}

void fl_flux_free(fl_flux_model *m) {
    if (!m) return;
    fl_ctx_free(m->ctx, m->weight_memory);
    fl_ctx_free(m->ctx, m->grad_memory);
    fl_ctx_free(m->ctx, m->train_param_memory);
    fl_ctx_free(m->ctx, m->train_grad_memory);
    fl_ctx_free(m->ctx, m->train_shadow_memory);
    for (size_t i = 0; i < m->n_sets; i++) fl_ctx_free(m->ctx, m->sets[i].memory);
    free(m->sets);
    free(m->sample_sel);
    fl_ctx_free(m->ctx, m->arena_memory);
    free(m->acts.dbl);
    free(m->acts.sgl);
    free(m->linears);
    free(m->norm_scales);
    free(m->norm_scale_grads);
    free(m->decls);
    free(m->values);
    free(m->grads);
    free(m->dbl);
    free(m->sgl);
    free(m);
}

const fl_flux_params *fl_flux_get_params(const fl_flux_model *m) {
    return &m->p;
}

bool fl_flux_cfg_capable(const fl_flux_model *m) {
    return m->cfg_capable;
}

void fl_flux_set_cfg_capable(fl_flux_model *m, bool capable) {
    m->cfg_capable = capable;
}

fl_ctx *fl_flux_get_ctx(const fl_flux_model *m) {
    return m->ctx;
}

size_t fl_flux_linear_count(const fl_flux_model *m) {
    return m->n_linears;
}

fl_flux_linear *fl_flux_linear_at(fl_flux_model *m, size_t i) {
    FL_CHECK(i < m->n_linears);
    return &m->linears[i];
}

fl_flux_linear *fl_flux_find_linear(fl_flux_model *m, const char *module_path) {
    return find_linear(m, module_path);
}

size_t fl_flux_param_count(const fl_flux_model *m) {
    return m->n_params;
}

void fl_flux_param_at(fl_flux_model *m, size_t i, const char **name, fl_tensor **value, fl_tensor **grad) {
    FL_CHECK(i < m->n_params);
    if (name) *name = m->decls[i].name;
    if (value) *value = m->values[i];
    if (grad) *grad = m->full_grads ? m->grads[i] : NULL;
}

/* ---- adapters -------------------------------------------------------------------------------------- */

/* An adapter's matrices go to its flat device buffer in order, gathered on the host into chunks
 * of STAGE_ELEMS values: a few large uploads (each a conversion with a staging buffer of its own
 * size on a 16-bit device) instead of two small ones per Linear. */
#define STAGE_ELEMS ((int64_t)1 << 22)

typedef struct upload_stage {
    fl_ctx *ctx;
    char *device; /* the flat buffer */
    fl_dtype dtype;
    float *host;  /* STAGE_ELEMS values */
    int64_t used, flushed; /* values in host; values already uploaded */
} upload_stage;

static void stage_flush(upload_stage *st) {
    if (st->used == 0) return;
    int64_t n = st->used;
    fl_tensor dst = fl_tensor_make(st->device + (size_t)st->flushed * fl_dtype_size(st->dtype), st->dtype,
                                   st->ctx->device, 1, &n);
    fl_ctx_upload_f32(st->ctx, &dst, st->host, (size_t)n);
    st->flushed += n;
    st->used = 0;
}

static void stage_put(upload_stage *st, const float *src, int64_t n) {
    if (!st->host) st->host = fl_xmalloc((size_t)STAGE_ELEMS * sizeof(float));
    while (n > 0) {
        int64_t take = STAGE_ELEMS - st->used < n ? STAGE_ELEMS - st->used : n;
        memcpy(st->host + st->used, src, (size_t)take * sizeof(float));
        st->used += take;
        src += take;
        n -= take;
        if (st->used == STAGE_ELEMS) stage_flush(st);
    }
}

int fl_flux_add_adapter(fl_flux_model *m, const fl_flux_lora_pair *pairs, size_t n, float multiplier, bool trainable,
                        fl_error *err) {
    if (trainable && m->train_param_memory)
        return fl_fail(err, FL_EINVAL, "the model already has a trainable adapter");
    /* Validate everything before touching the model. */
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const fl_flux_lora_pair *pr = &pairs[i];
        fl_flux_linear *lin = find_linear(m, pr->module);
        if (!lin) return fl_fail(err, FL_EINVAL, "adapter module '%s' is not a Linear of this model", pr->module);
        if (pr->rank < 1 || pr->rank > 4096)
            return fl_fail(err, FL_EINVAL, "adapter module '%s': rank %lld out of range", pr->module,
                           (long long)pr->rank);
        if (lin->n_adapters >= FL_FLUX_MAX_ATTACHED)
            return fl_fail(err, FL_ELIMIT, "adapter module '%s': more than %d adapters", pr->module,
                           FL_FLUX_MAX_ATTACHED);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(pairs[j].module, pr->module))
                return fl_fail(err, FL_EINVAL, "adapter module '%s' appears twice", pr->module);
        total += pr->rank * (lin->in + lin->out);
    }
    /* A trainable adapter: f32 master weights and gradients, and with 16-bit storage a copy of
     * the weights in that dtype for the products (kernels/ops.h, fl_op_gemm: mixed precision). */
    fl_dtype dtype = trainable ? FL_F32 : m->dtype;
    bool shadow = trainable && m->dtype != FL_F32;
    size_t esize = fl_dtype_size(dtype), bytes = (size_t)(total ? total : 1) * esize;
    size_t ssize = fl_dtype_size(m->dtype), shadow_bytes = (size_t)(total ? total : 1) * ssize;
    char *memory = fl_ctx_alloc(m->ctx, bytes);
    if (!memory) return fl_fail(err, FL_ENOMEM, "out of device memory for an adapter of %zu bytes", bytes);
    char *grad_memory = NULL, *shadow_memory = NULL;
    if (trainable) {
        grad_memory = fl_ctx_alloc(m->ctx, bytes);
        if (shadow && grad_memory) shadow_memory = fl_ctx_alloc(m->ctx, shadow_bytes);
        if (!grad_memory || (shadow && !shadow_memory)) {
            fl_ctx_free(m->ctx, grad_memory);
            fl_ctx_free(m->ctx, memory);
            return fl_fail(err, FL_ENOMEM, "out of device memory for adapter gradients of %zu bytes",
                           bytes + (shadow ? shadow_bytes : 0));
        }
        m->train_param_memory = memory;
        m->train_grad_memory = grad_memory;
        m->train_shadow_memory = shadow_memory;
        m->train_shadow = shadow;
        m->n_train = total;
    }
    int set_id = m->next_set_id++;
    m->sets = fl_xrealloc(m->sets, (m->n_sets + 1) * sizeof *m->sets);
    m->sets[m->n_sets++] = (flux_adapter_set){set_id, trainable, trainable ? NULL : memory};
    size_t off = 0;
    upload_stage stage = {m->ctx, memory, dtype, NULL, 0, 0};
    for (size_t i = 0; i < n; i++) {
        const fl_flux_lora_pair *pr = &pairs[i];
        fl_flux_linear *lin = find_linear(m, pr->module);
        fl_flux_adapter *ad = &lin->adapters[lin->n_adapters];
        int64_t a_shape[2] = {pr->rank, lin->in}, b_shape[2] = {lin->out, pr->rank};
        size_t off_b = off + (size_t)(pr->rank * lin->in);
        fl_tensor a = fl_tensor_make(memory + off * esize, dtype, m->ctx->device, 2, a_shape);
        fl_tensor b = fl_tensor_make(memory + off_b * esize, dtype, m->ctx->device, 2, b_shape);
        ad->a = shadow ? fl_tensor_make(shadow_memory + off * ssize, m->dtype, m->ctx->device, 2, a_shape) : a;
        ad->b = shadow ? fl_tensor_make(shadow_memory + off_b * ssize, m->dtype, m->ctx->device, 2, b_shape) : b;
        if (trainable) {
            lin->grad_a = fl_tensor_make(grad_memory + off * esize, dtype, m->ctx->device, 2, a_shape);
            lin->grad_b = fl_tensor_make(grad_memory + off_b * esize, dtype, m->ctx->device, 2, b_shape);
        }
        off = off_b + (size_t)(pr->rank * lin->out);
        ad->scale = multiplier * pr->alpha / (float)pr->rank;
        ad->set_id = set_id;
        stage_put(&stage, pr->a, pr->rank * lin->in);
        stage_put(&stage, pr->b, pr->rank * lin->out);
        if (trainable) lin->trainable = lin->n_adapters;
        lin->n_adapters++;
        if (pr->rank > m->rank_reserve) m->rank_reserve = pr->rank; /* a wider per-sample scratch */
    }
    stage_flush(&stage);
    free(stage.host);
    if (shadow) flux_refresh_trainable_shadow(m);
    m->adapters_version++; /* every-row steps save each adapter's x A^T */
    return set_id;
}

void flux_refresh_trainable_shadow(fl_flux_model *m) {
    if (!m->train_shadow) return;
    fl_tensor master = fl_flux_trainable_params(m);
    int64_t n = m->n_train;
    fl_tensor copy = fl_tensor_make(m->train_shadow_memory, m->dtype, m->ctx->device, 1, &n);
    fl_op_copy(m->ctx, &master, &copy);
}

size_t fl_flux_adapter_device_bytes(const fl_flux_model *m, const fl_flux_lora_pair *pairs, size_t n) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const fl_flux_linear *lin = NULL;
        for (size_t j = 0; j < m->n_linears && !lin; j++)
            if (!strcmp(m->linears[j].name, pairs[i].module)) lin = &m->linears[j];
        if (lin && pairs[i].rank > 0) total += (size_t)(pairs[i].rank * (lin->in + lin->out));
    }
    return (total ? total : 1) * fl_dtype_size(m->dtype);
}

void fl_flux_clear_adapters(fl_flux_model *m) {
    for (size_t i = 0; i < m->n_linears; i++) {
        m->linears[i].n_adapters = 0;
        m->linears[i].trainable = -1;
    }
    for (size_t i = 0; i < m->n_sets; i++) fl_ctx_free(m->ctx, m->sets[i].memory);
    m->n_sets = 0;
    fl_ctx_free(m->ctx, m->train_param_memory);
    fl_ctx_free(m->ctx, m->train_grad_memory);
    fl_ctx_free(m->ctx, m->train_shadow_memory);
    m->train_param_memory = m->train_grad_memory = m->train_shadow_memory = NULL;
    m->train_shadow = false;
    m->n_train = 0;
    m->adapters_version++;
}

static flux_adapter_set *find_set(fl_flux_model *m, int set_id) {
    for (size_t i = 0; i < m->n_sets; i++)
        if (m->sets[i].set_id == set_id) return &m->sets[i];
    return NULL;
}

bool fl_flux_adapter_attached(const fl_flux_model *m, int set_id) {
    for (size_t i = 0; i < m->n_sets; i++)
        if (m->sets[i].set_id == set_id) return true;
    return false;
}

int fl_flux_remove_adapter(fl_flux_model *m, int set_id, fl_error *err) {
    flux_adapter_set *set = find_set(m, set_id);
    if (!set) return fl_fail(err, FL_EINVAL, "adapter set %d is not attached", set_id);
    for (size_t i = 0; i < m->n_linears; i++) {
        fl_flux_linear *lin = &m->linears[i];
        int kept = 0;
        for (int k = 0; k < lin->n_adapters; k++) {
            if (lin->adapters[k].set_id == set_id) {
                if (k == lin->trainable) lin->trainable = -1;
                continue;
            }
            if (k == lin->trainable) lin->trainable = kept;
            lin->adapters[kept++] = lin->adapters[k];
        }
        lin->n_adapters = kept;
        if (set->trainable) {
            memset(&lin->grad_a, 0, sizeof lin->grad_a);
            memset(&lin->grad_b, 0, sizeof lin->grad_b);
        }
    }
    if (set->trainable) {
        fl_ctx_free(m->ctx, m->train_param_memory);
        fl_ctx_free(m->ctx, m->train_grad_memory);
        fl_ctx_free(m->ctx, m->train_shadow_memory);
        m->train_param_memory = m->train_grad_memory = m->train_shadow_memory = NULL;
        m->train_shadow = false;
        m->n_train = 0;
    }
    fl_ctx_free(m->ctx, set->memory);
    size_t at = (size_t)(set - m->sets);
    memmove(&m->sets[at], &m->sets[at + 1], (m->n_sets - at - 1) * sizeof *m->sets);
    m->n_sets--;
    m->adapters_version++;
    return 0;
}

/* ---- per-sample adapters ----------------------------------------------------------------------- */

/* Checks one sample's list against the attached sets. */
static int check_sample(fl_flux_model *m, int b, const fl_flux_sample_adapters *sa, fl_error *err) {
    if (sa->n < 0 || sa->n > FL_FLUX_MAX_ADAPTERS)
        return fl_fail(err, FL_EINVAL, "sample %d: %d adapters is outside [0, %d]", b, sa->n, FL_FLUX_MAX_ADAPTERS);
    for (int j = 0; j < sa->n; j++) {
        if (!find_set(m, sa->set_ids[j]))
            return fl_fail(err, FL_EINVAL, "sample %d: adapter set %d is not attached", b, sa->set_ids[j]);
        if (!isfinite(sa->multipliers[j]))
            return fl_fail(err, FL_EINVAL, "sample %d: the multiplier of adapter set %d is not finite", b,
                           sa->set_ids[j]);
    }
    return 0;
}

int fl_flux_set_sample_adapters(fl_flux_model *m, int batch, const fl_flux_sample_adapters *per_sample,
                                fl_error *err) {
    if (batch < 1) return fl_fail(err, FL_EINVAL, "per-sample adapters: batch %d is not positive", batch);
    if (!per_sample) return fl_fail(err, FL_EINVAL, "per-sample adapters: no list given");
    for (int b = 0; b < batch; b++)
        if (check_sample(m, b, &per_sample[b], err) != 0) return -1;
    fl_flux_sample_adapters *copy = fl_xmalloc((size_t)batch * sizeof *copy);
    memcpy(copy, per_sample, (size_t)batch * sizeof *copy);
    free(m->sample_sel);
    m->sample_sel = copy;
    m->sample_batch = batch; /* the per-sample forward has plans of its own (mode 3), whatever is selected */
    return 0;
}

void fl_flux_clear_sample_adapters(fl_flux_model *m) {
    if (!m->sample_batch) return;
    free(m->sample_sel);
    m->sample_sel = NULL;
    m->sample_batch = 0;
}

int fl_flux_sample_adapters_batch(const fl_flux_model *m) {
    return m->sample_batch;
}

fl_tensor fl_flux_trainable_params(fl_flux_model *m) {
    int64_t n = m->n_train;
    return fl_tensor_make(m->train_param_memory, FL_F32, m->ctx->device, 1, &n);
}

fl_tensor fl_flux_trainable_grads(fl_flux_model *m) {
    int64_t n = m->n_train;
    return fl_tensor_make(m->train_grad_memory, FL_F32, m->ctx->device, 1, &n);
}

void fl_flux_enable_full_grads(fl_flux_model *m) {
    if (m->full_grads) return;
    m->grad_memory = alloc_table(m, m->grads, m->dtype);
    m->full_grads = true;
    m->adapters_version++; /* the backward allocates differently */
    fl_flux_zero_grads(m);
}

void fl_flux_zero_grads(fl_flux_model *m) {
    if (m->train_grad_memory) {
        fl_tensor g = fl_flux_trainable_grads(m);
        fl_op_fill(m->ctx, &g, 0.0f);
    }
    if (m->full_grads)
        for (size_t i = 0; i < m->n_params; i++) fl_op_fill(m->ctx, m->grads[i], 0.0f);
}

/* ---- running -------------------------------------------------------------------------------------- */

int fl_flux_check_inputs(const fl_flux_model *m, const fl_flux_inputs *in, fl_error *err) {
    const fl_flux_params *p = &m->p;
    if (!in->img || !in->txt || !in->y || !in->timesteps || !in->img_ids || !in->txt_ids)
        return fl_fail(err, FL_EINVAL, "inputs: img, txt, y, timesteps, img_ids and txt_ids are required");
    if (in->img->ndim != 3 || in->img->shape[2] != p->in_channels)
        return fl_fail(err, FL_EINVAL, "inputs: img must be [B, L, %d]", p->in_channels);
    int64_t batch = in->img->shape[0];
    if (batch < 1 || in->img->shape[1] < 1) return fl_fail(err, FL_EINVAL, "inputs: img is empty");
    if (in->txt->ndim != 3 || in->txt->shape[0] != batch || in->txt->shape[2] != p->context_in_dim)
        return fl_fail(err, FL_EINVAL, "inputs: txt must be [%lld, L, %d]", (long long)batch, p->context_in_dim);
    if (in->y->ndim != 2 || in->y->shape[0] != batch || in->y->shape[1] != p->vec_in_dim)
        return fl_fail(err, FL_EINVAL, "inputs: y must be [%lld, %d]", (long long)batch, p->vec_in_dim);
    if (fl_tensor_numel(in->timesteps) != batch || in->timesteps->dtype != FL_F32)
        return fl_fail(err, FL_EINVAL, "inputs: timesteps must be %lld f32 values", (long long)batch);
    if (p->guidance_embed && (!in->guidance || fl_tensor_numel(in->guidance) != batch || in->guidance->dtype != FL_F32))
        return fl_fail(err, FL_EINVAL, "inputs: this model takes guidance, %lld f32 values", (long long)batch);
    const fl_tensor *acts[3] = {in->img, in->txt, in->y};
    for (int i = 0; i < 3; i++)
        if (acts[i]->dtype != m->dtype || !fl_device_equal(acts[i]->device, m->ctx->device) ||
            !fl_tensor_is_contiguous(acts[i]))
            return fl_fail(err, FL_EINVAL, "inputs: img, txt and y must be contiguous %s on the model's device",
                           fl_dtype_name(m->dtype));
    return 0;
}

/* Runs forward (and for training, the backward) once in planning mode when the shape changed,
 * then allocates the arena; afterwards resets it for the real run. */
static int plan(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise, int mode,
                fl_error *err);

static void begin_step(fl_flux_model *m, const fl_flux_inputs *in, int mode) {
    flux_acts *a = &m->acts;
    m->per_sample = mode == 1 && m->sample_batch > 0;
    m->inference = mode == 1;
    a->batch = in->img->shape[0];
    a->li = in->img->shape[1];
    a->lt = in->txt->shape[1];
    if (!a->dbl) {
        a->dbl = fl_xcalloc(m->p.depth ? (size_t)m->p.depth : 1, sizeof *a->dbl);
        a->sgl = fl_xcalloc(m->p.depth_single_blocks ? (size_t)m->p.depth_single_blocks : 1, sizeof *a->sgl);
    }
    (void)mode;
}

static void training_step(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise,
                          double *loss) {
    flux_acts *a = &m->acts;
    a->xt = fl_arena_tensor(&m->arena, m->dtype, x0->ndim, x0->shape);
    a->target = fl_arena_tensor(&m->arena, m->dtype, x0->ndim, x0->shape);
    fl_op_flow_mix(m->ctx, x0, noise, in->timesteps, &a->xt, &a->target);
    flux_run_forward(m, in, &a->xt);
    a->dpred = fl_arena_tensor(&m->arena, m->dtype, a->out.ndim, a->out.shape);
    double value = fl_op_mse_loss(m->ctx, &a->out, &a->target, &a->dpred);
    if (loss) *loss = value;
    flux_run_backward(m);
}

/* Whether a step with this key was measured before (the arena only grows, so it still fits);
 * moves the key to the front. */
static bool plan_known(fl_flux_model *m, const flux_plan_key *key) {
    for (int i = 0; i < m->n_plans; i++) {
        const flux_plan_key *k = &m->plans[i];
        if (k->mode != key->mode || k->batch != key->batch || k->li != key->li || k->lt != key->lt ||
            k->stamp != key->stamp)
            continue;
        flux_plan_key found = *k;
        memmove(&m->plans[1], &m->plans[0], (size_t)i * sizeof *m->plans);
        m->plans[0] = found;
        return true;
    }
    return false;
}

static void plan_remember(fl_flux_model *m, const flux_plan_key *key) {
    if (m->n_plans < FLUX_PLAN_KEYS) m->n_plans++;
    memmove(&m->plans[1], &m->plans[0], (size_t)(m->n_plans - 1) * sizeof *m->plans);
    m->plans[0] = *key;
}

static int plan(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise, int mode,
                fl_error *err) {
    flux_acts *a = &m->acts;
    flux_plan_key key;
    key.mode = m->per_sample ? 3 : mode;
    key.batch = a->batch;
    key.li = a->li;
    key.lt = a->lt;
    key.stamp = m->per_sample ? (uint64_t)m->rank_reserve : m->adapters_version;
    if (m->arena_memory && plan_known(m, &key)) {
        fl_arena_init(&m->arena, m->arena_memory, m->arena_bytes, m->ctx->device);
        return 0;
    }
    m->plan_count++;
    fl_arena_init_measure(&m->arena, m->ctx->device);
    bool was_planning = m->ctx->planning;
    m->ctx->planning = true;
    if (mode == 2) training_step(m, in, x0, noise, NULL);
    else flux_run_forward(m, in, in->img);
    m->ctx->planning = was_planning;
    size_t need = fl_arena_peak(&m->arena);
    /* Grow only: alternating shapes (aspect buckets, eval and training) reuse the largest plan. */
    if (need > m->arena_bytes || !m->arena_memory) {
        fl_ctx_free(m->ctx, m->arena_memory);
        m->arena_bytes = need;
        m->arena_memory = fl_ctx_alloc(m->ctx, m->arena_bytes ? m->arena_bytes : 1);
        if (!m->arena_memory) { /* the step fails, the model stays usable (it plans again next time) */
            m->arena_bytes = 0;
            m->n_plans = 0; /* every plan measured so far needs the arena again */
            return fl_fail(err, FL_ENOMEM, "out of device memory for %zu bytes of activations", need);
        }
    }
    fl_arena_init(&m->arena, m->arena_memory, m->arena_bytes, m->ctx->device);
    plan_remember(m, &key);
    return 0;
}

int fl_flux_forward(fl_flux_model *m, const fl_flux_inputs *in, fl_tensor *out, fl_error *err) {
    if (fl_flux_check_inputs(m, in, err) != 0) return -1;
    if (m->sample_batch) {
        if (in->img->shape[0] != m->sample_batch)
            return fl_fail(err, FL_EINVAL, "inputs: batch %lld, but per-sample adapters were set for %d samples",
                           (long long)in->img->shape[0], m->sample_batch);
        for (int b = 0; b < m->sample_batch; b++) /* a set may have been removed since */
            if (check_sample(m, b, &m->sample_sel[b], err) != 0) return -1;
    }
    begin_step(m, in, 1);
    if (plan(m, in, NULL, NULL, 1, err) != 0) return -1;
    flux_run_forward(m, in, in->img);
    *out = m->acts.out;
    return 0;
}

int fl_flux_loss_and_grads(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise,
                           double *loss, fl_error *err) {
    fl_flux_inputs shaped = *in;
    shaped.img = x0;
    if (fl_flux_check_inputs(m, &shaped, err) != 0) return -1;
    if (m->sample_batch)
        return fl_fail(err, FL_EINVAL, "training: per-sample adapters are set (clear them to train)");
    if (!fl_tensor_same_shape(x0, noise) || noise->dtype != m->dtype)
        return fl_fail(err, FL_EINVAL, "training: noise must match x0");
    begin_step(m, &shaped, 2);
    if (plan(m, &shaped, x0, noise, 2, err) != 0) return -1;
    training_step(m, &shaped, x0, noise, loss);
    return 0;
}

size_t fl_flux_activation_bytes(const fl_flux_model *m) {
    return m->arena_bytes;
}

uint64_t fl_flux_plan_count(const fl_flux_model *m) {
    return m->plan_count;
}

fl_flux_model *flux_model_skeleton(fl_ctx *ctx, const fl_flux_params *p) {
    fl_flux_model *m = model_new(ctx, p);
    for (size_t i = 0; i < m->n_params; i++) /* shapes for the ops' checks, no storage */
        *m->values[i] = fl_tensor_make(NULL, m->dtype, ctx->device, m->decls[i].ndim, m->decls[i].shape);
    return m;
}
