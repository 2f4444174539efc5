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
    m->dtype = ctx->device.kind == FL_DEVICE_CUDA ? FL_BF16 : FL_F32;
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

int fl_flux_params_of_checkpoint(const fl_safetensors *st, fl_flux_params *out, fl_error *err) {
    const char *meta = fl_safetensors_metadata_get(st, "flux_params");
    int rc = meta ? fl_flux_params_from_json(meta, out, err) : fl_flux_params_from_safetensors(st, out, err);
    return rc == 0 ? fl_flux_params_validate(out, err) : rc;
}

int fl_flux_load(fl_ctx *ctx, const char *path, const fl_flux_params *p_in, fl_flux_model **out, fl_error *err) {
    *out = NULL;
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    fl_flux_params p;
    const char *prefix = "";
    if (fl_safetensors_find(st, "img_in.weight") == NULL &&
        fl_safetensors_find(st, "model.diffusion_model.img_in.weight") != NULL)
        prefix = checkpoint_prefix;
    int rc = 0;
    if (p_in) {
        p = *p_in;
        rc = fl_flux_params_validate(&p, err);
    } else {
        rc = fl_flux_params_of_checkpoint(st, &p, err);
    }
    if (rc == 0) rc = fl_flux_check_safetensors(st, &p, err);
    if (rc != 0) {
        fl_safetensors_close(st);
        return fl_fail_prefix(err, "%s", path);
    }
    fl_flux_model *m = model_new(ctx, &p);
    m->weight_memory = alloc_table(m, m->values, m->dtype);
    const char *dropout = fl_safetensors_metadata_get(st, "caption_dropout");
    m->cfg_capable = dropout && strtod(dropout, NULL) > 0.0;
    char name[FL_FLUX_NAME_MAX + sizeof checkpoint_prefix];
    for (size_t i = 0; i < m->n_params; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, m->decls[i].name);
        const fl_safetensors_info *info = fl_safetensors_find(st, name);
        fl_tensor src;
        FL_CHECK(info != NULL); /* fl_flux_check_safetensors guaranteed presence, shape and dtype */
        FL_CHECK(fl_safetensors_tensor_view(st, info, fl_device_cpu(), &src, NULL) == 0);
        int64_t n = fl_tensor_numel(&src);
        if (src.dtype == FL_F32) {
            fl_ctx_upload_f32(ctx, m->values[i], src.data, (size_t)n);
        } else {
            /* Convert 16-bit storage on the host through the CPU copy op. */
            float *host = fl_xmalloc((size_t)(n ? n : 1) * sizeof(float));
            fl_tensor dst = fl_tensor_make(host, FL_F32, fl_device_cpu(), src.ndim, src.shape);
            fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), NULL);
            fl_op_copy(cpu, &src, &dst);
            fl_ctx_destroy(cpu);
            fl_ctx_upload_f32(ctx, m->values[i], host, (size_t)n);
            free(host);
        }
    }
    fl_safetensors_close(st);
    *out = m;
    return 0;
}

void fl_flux_free(fl_flux_model *m) {
    if (!m) return;
    fl_ctx_free(m->ctx, m->weight_memory);
    fl_ctx_free(m->ctx, m->grad_memory);
    fl_ctx_free(m->ctx, m->train_param_memory);
    fl_ctx_free(m->ctx, m->train_grad_memory);
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
        if (lin->n_adapters >= FL_FLUX_MAX_ADAPTERS)
            return fl_fail(err, FL_ELIMIT, "adapter module '%s': more than %d adapters", pr->module,
                           FL_FLUX_MAX_ADAPTERS);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(pairs[j].module, pr->module))
                return fl_fail(err, FL_EINVAL, "adapter module '%s' appears twice", pr->module);
        total += pr->rank * (lin->in + lin->out);
    }
    fl_dtype dtype = trainable ? FL_F32 : m->dtype;
    size_t esize = fl_dtype_size(dtype);
    char *memory = fl_ctx_alloc(m->ctx, (size_t)(total ? total : 1) * esize);
    FL_CHECKF(memory, "out of device memory for an adapter");
    char *grad_memory = NULL;
    if (trainable) {
        grad_memory = fl_ctx_alloc(m->ctx, (size_t)(total ? total : 1) * esize);
        FL_CHECKF(grad_memory, "out of device memory for adapter gradients");
        m->train_param_memory = memory;
        m->train_grad_memory = grad_memory;
        m->n_train = total;
    }
    int set_id = m->next_set_id++;
    m->sets = fl_xrealloc(m->sets, (m->n_sets + 1) * sizeof *m->sets);
    m->sets[m->n_sets++] = (flux_adapter_set){set_id, trainable, trainable ? NULL : memory};
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const fl_flux_lora_pair *pr = &pairs[i];
        fl_flux_linear *lin = find_linear(m, pr->module);
        fl_flux_adapter *ad = &lin->adapters[lin->n_adapters];
        int64_t a_shape[2] = {pr->rank, lin->in}, b_shape[2] = {lin->out, pr->rank};
        ad->a = fl_tensor_make(memory + off * esize, dtype, m->ctx->device, 2, a_shape);
        if (trainable) lin->grad_a = fl_tensor_make(grad_memory + off * esize, dtype, m->ctx->device, 2, a_shape);
        off += (size_t)(pr->rank * lin->in);
        ad->b = fl_tensor_make(memory + off * esize, dtype, m->ctx->device, 2, b_shape);
        if (trainable) lin->grad_b = fl_tensor_make(grad_memory + off * esize, dtype, m->ctx->device, 2, b_shape);
        off += (size_t)(pr->rank * lin->out);
        ad->scale = multiplier * pr->alpha / (float)pr->rank;
        ad->set_id = set_id;
        fl_ctx_upload_f32(m->ctx, &ad->a, pr->a, (size_t)(pr->rank * lin->in));
        fl_ctx_upload_f32(m->ctx, &ad->b, pr->b, (size_t)(pr->rank * lin->out));
        if (trainable) lin->trainable = lin->n_adapters;
        lin->n_adapters++;
    }
    m->plan_mode = 0; /* adapters change the activation plan */
    return set_id;
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
    m->train_param_memory = m->train_grad_memory = NULL;
    m->n_train = 0;
    m->plan_mode = 0;
}

static flux_adapter_set *find_set(fl_flux_model *m, int set_id) {
    for (size_t i = 0; i < m->n_sets; i++)
        if (m->sets[i].set_id == set_id) return &m->sets[i];
    return NULL;
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
        m->train_param_memory = m->train_grad_memory = NULL;
        m->n_train = 0;
    }
    fl_ctx_free(m->ctx, set->memory);
    size_t at = (size_t)(set - m->sets);
    memmove(&m->sets[at], &m->sets[at + 1], (m->n_sets - at - 1) * sizeof *m->sets);
    m->n_sets--;
    m->plan_mode = 0;
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
    m->sample_batch = batch;
    m->plan_mode = 0; /* the per-sample path allocates differently */
    return 0;
}

void fl_flux_clear_sample_adapters(fl_flux_model *m) {
    if (!m->sample_batch) return;
    free(m->sample_sel);
    m->sample_sel = NULL;
    m->sample_batch = 0;
    m->plan_mode = 0;
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
    m->plan_mode = 0;
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
static void plan(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise, int mode);

static void begin_step(fl_flux_model *m, const fl_flux_inputs *in, int mode) {
    flux_acts *a = &m->acts;
    m->per_sample = mode == 1 && m->sample_batch > 0;
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

static void plan(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise, int mode) {
    flux_acts *a = &m->acts;
    if (m->plan_mode == mode && m->plan_batch == a->batch && m->plan_li == a->li && m->plan_lt == a->lt) {
        fl_arena_reset(&m->arena, 0);
        return;
    }
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
        FL_CHECKF(m->arena_memory, "out of device memory for %zu bytes of activations", m->arena_bytes);
    }
    fl_arena_init(&m->arena, m->arena_memory, m->arena_bytes, m->ctx->device);
    m->plan_mode = mode;
    m->plan_batch = a->batch;
    m->plan_li = a->li;
    m->plan_lt = a->lt;
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
    plan(m, in, NULL, NULL, 1);
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
    plan(m, &shaped, x0, noise, 2);
    training_step(m, &shaped, x0, noise, loss);
    return 0;
}

size_t fl_flux_activation_bytes(const fl_flux_model *m) {
    return m->arena_bytes;
}
