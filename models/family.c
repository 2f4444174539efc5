/*
 * family.c — model-family detection and binding checks over tensor names and shapes.
 */
#include "models/family.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char comfy_prefix[] = "model.diffusion_model.";

static const fl_tensor_header *find(const fl_tensor_header *e, size_t n, const char *prefix, const char *name) {
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(e[i].name, prefix, plen) && !strcmp(e[i].name + plen, name)) return &e[i];
    return NULL;
}

/* Number of blocks: the largest i with "<prefix><kind>.<i>.<probe>" present, plus one. */
static int count_blocks(const fl_tensor_header *e, size_t n, const char *prefix, const char *kind) {
    char head[128];
    int len = snprintf(head, sizeof head, "%s%s.", prefix, kind);
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(e[i].name, head, (size_t)len)) continue;
        char *end = NULL;
        long idx = strtol(e[i].name + len, &end, 10);
        if (end == e[i].name + len || *end != '.' || idx < 0 || idx > 4095) continue;
        if (idx + 1 > count) count = (int)idx + 1;
    }
    return count;
}

static bool is_2d(const fl_tensor_header *t) {
    return t && t->ndim == 2 && t->shape[0] > 0 && t->shape[1] > 0;
}

int fl_detect_family(const fl_tensor_header *entries, size_t n, fl_family_info *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    const char *prefix = find(entries, n, "", "img_in.weight") ? "" : comfy_prefix;
    const fl_tensor_header *img_in = find(entries, n, prefix, "img_in.weight");
    const fl_tensor_header *final_mod = find(entries, n, prefix, "final_layer.adaLN_modulation.1.weight");
    if (!img_in || !final_mod ||
        (!find(entries, n, prefix, "double_blocks.0.img_attn.qkv.weight") &&
         !find(entries, n, prefix, "single_blocks.0.linear1.weight")))
        return fl_fail(err, FL_EUNSUPPORTED, "not a recognised model: no Flux transformer tensors (img_in, "
                                             "double_blocks/single_blocks, final_layer)");
    fl_flux_params *p = &out->flux;
    out->family = FL_FAMILY_FLUX;
    out->prefix = prefix;
    const fl_tensor_header *txt_in = find(entries, n, prefix, "txt_in.weight");
    const fl_tensor_header *vec_in = find(entries, n, prefix, "vector_in.in_layer.weight");
    const fl_tensor_header *final_lin = find(entries, n, prefix, "final_layer.linear.weight");
    if (!is_2d(img_in) || !is_2d(txt_in) || !is_2d(vec_in) || !is_2d(final_lin))
        return fl_fail(err, FL_EINVAL, "Flux checkpoint lacks 2-d img_in, txt_in, vector_in.in_layer or "
                                       "final_layer.linear weights");
    p->hidden_size = (int)img_in->shape[0];
    p->in_channels = (int)img_in->shape[1];
    p->context_in_dim = (int)txt_in->shape[1];
    p->vec_in_dim = (int)vec_in->shape[1];
    p->out_channels = (int)final_lin->shape[0];
    p->depth = count_blocks(entries, n, prefix, "double_blocks");
    p->depth_single_blocks = count_blocks(entries, n, prefix, "single_blocks");
    p->guidance_embed = find(entries, n, prefix, "guidance_in.in_layer.weight") != NULL;
    p->qkv_bias = find(entries, n, prefix, "double_blocks.0.img_attn.qkv.bias") != NULL;
    p->theta = 10000;
    out->variant = p->guidance_embed ? "dev" : "schnell";

    const fl_tensor_header *mlp = find(entries, n, prefix, "double_blocks.0.img_mlp.0.weight");
    const fl_tensor_header *lin1 = find(entries, n, prefix, "single_blocks.0.linear1.weight");
    int64_t mlp_hidden = is_2d(mlp) ? mlp->shape[0] : is_2d(lin1) ? lin1->shape[0] - 3 * (int64_t)p->hidden_size : 0;
    if (mlp_hidden < 1) return fl_fail(err, FL_EINVAL, "Flux checkpoint: cannot infer the MLP width");
    p->mlp_ratio = (double)mlp_hidden / p->hidden_size;

    const fl_tensor_header *qn = find(entries, n, prefix, "double_blocks.0.img_attn.norm.query_norm.scale");
    if (!qn) qn = find(entries, n, prefix, "single_blocks.0.norm.query_norm.scale");
    if (!qn || qn->ndim != 1 || qn->shape[0] < 2 || p->hidden_size % qn->shape[0])
        return fl_fail(err, FL_EINVAL, "Flux checkpoint: cannot infer the head dim from the q norm scale");
    int head_dim = (int)qn->shape[0];
    p->num_heads = p->hidden_size / head_dim;
    if (head_dim != 128)
        return fl_fail(err, FL_EINVAL,
                       "Flux checkpoint with head dim %d: its rotary axes are not visible in the shapes; "
                       "give its FluxParams (the file's flux_params metadata or a config)",
                       head_dim);
    p->n_axes = 3;
    p->axes_dim[0] = 16;
    p->axes_dim[1] = 56;
    p->axes_dim[2] = 56;
    return fl_flux_params_validate(p, err);
}

int fl_flux_check_entries(const fl_tensor_header *entries, size_t n, const char *prefix, const fl_flux_params *p,
                          fl_error *err) {
    size_t count = fl_flux_param_decls(p, NULL);
    fl_flux_param_decl *decls = calloc(count, sizeof *decls);
    if (!decls) return fl_fail(err, FL_ENOMEM, "out of memory");
    fl_flux_param_decls(p, decls);
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        const fl_flux_param_decl *d = &decls[i];
        const fl_tensor_header *t = find(entries, n, prefix, d->name);
        if (!t) {
            rc = fl_fail(err, FL_EINVAL, "missing tensor '%s%s'", prefix, d->name);
            break;
        }
        bool ok = t->ndim == d->ndim && t->shape[0] == d->shape[0] && (d->ndim == 1 || t->shape[1] == d->shape[1]);
        if (!ok) {
            char got[96] = "[", want[64];
            for (int k = 0; k < t->ndim && k < 8; k++) {
                size_t len = strlen(got);
                snprintf(got + len, sizeof got - len, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
            }
            strncat(got, "]", sizeof got - strlen(got) - 1);
            if (d->ndim == 2) snprintf(want, sizeof want, "[%lld, %lld]", (long long)d->shape[0], (long long)d->shape[1]);
            else snprintf(want, sizeof want, "[%lld]", (long long)d->shape[0]);
            rc = fl_fail(err, FL_EINVAL, "tensor '%s%s' has shape %s, expected %s", prefix, d->name, got, want);
        }
    }
    /* Nothing else may sit under the prefix: an unknown weight would be silently ignored. */
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (strncmp(entries[i].name, prefix, plen)) continue;
        bool known = false;
        for (size_t j = 0; j < count && !known; j++) known = !strcmp(entries[i].name + plen, decls[j].name);
        if (!known) rc = fl_fail(err, FL_EINVAL, "unexpected tensor '%s' for this configuration", entries[i].name);
    }
    free(decls);
    return rc;
}

/* The (name, shape) list of an open file; the names point into the file. */
static fl_tensor_header *headers_of(const fl_safetensors *st, size_t *n) {
    *n = fl_safetensors_count(st);
    fl_tensor_header *h = calloc(*n ? *n : 1, sizeof *h);
    if (!h) return NULL;
    for (size_t i = 0; i < *n; i++) {
        const fl_safetensors_info *info = fl_safetensors_at(st, i);
        h[i].name = info->name;
        h[i].ndim = info->ndim;
        memcpy(h[i].shape, info->shape, sizeof h[i].shape);
    }
    return h;
}

int fl_flux_params_from_safetensors(const fl_safetensors *st, fl_flux_params *out, fl_error *err) {
    size_t n;
    fl_tensor_header *h = headers_of(st, &n);
    if (!h) return fl_fail(err, FL_ENOMEM, "out of memory");
    fl_family_info info;
    int rc = fl_detect_family(h, n, &info, err);
    free(h);
    if (rc == 0) *out = info.flux;
    return rc;
}

int fl_flux_check_safetensors(const fl_safetensors *st, const fl_flux_params *p, fl_error *err) {
    size_t n;
    fl_tensor_header *h = headers_of(st, &n);
    if (!h) return fl_fail(err, FL_ENOMEM, "out of memory");
    const char *prefix = find(h, n, "", "img_in.weight") ? "" : comfy_prefix;
    int rc = fl_flux_check_entries(h, n, prefix, p, err);
    for (size_t i = 0; i < n && rc == 0; i++) {
        const fl_safetensors_info *info = fl_safetensors_at(st, i);
        if (strncmp(info->name, prefix, strlen(prefix))) continue;
        if (!fl_st_dtype_computable(info->dtype, NULL))
            rc = fl_fail(err, FL_EUNSUPPORTED, "tensor '%s' has dtype %s; weights must be F32, BF16 or F16",
                         info->name, fl_st_dtype_name(info->dtype));
    }
    free(h);
    return rc;
}
