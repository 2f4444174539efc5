/*
 * flux_params.c — FluxParams: JSON in and out, validation, and the list of every tensor a
 * checkpoint of a given configuration holds (names and shapes in the original BFL layout).
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "models/flux.h"

int fl_flux_params_from_json(const char *json_text, fl_flux_params *out, fl_error *err) {
    json_t *root = fl_config_load_string(json_text, strlen(json_text), err);
    if (!root) return fl_fail_prefix(err, "flux_params");
    fl_flux_params p;
    memset(&p, 0, sizeof p);
    int64_t v = 0;
    int64_t axes[FL_FLUX_MAX_AXES + 1];
    size_t n_axes = 0;
    int rc = 0;
#define GET_INT(field, lo, hi)                                                                    \
    do {                                                                                          \
        if (rc == 0 && (rc = fl_config_get_int(root, #field, true, lo, hi, &v, err)) == 0)        \
            p.field = (int)v;                                                                     \
    } while (0)
    GET_INT(in_channels, 1, 1 << 16);
    GET_INT(out_channels, 1, 1 << 16);
    GET_INT(vec_in_dim, 1, 1 << 16);
    GET_INT(context_in_dim, 1, 1 << 16);
    GET_INT(hidden_size, 1, 1 << 16);
    GET_INT(num_heads, 1, 1024);
    GET_INT(depth, 0, 1024);
    GET_INT(depth_single_blocks, 0, 1024);
    GET_INT(theta, 1, 1 << 30);
#undef GET_INT
    if (rc == 0) rc = fl_config_get_double(root, "mlp_ratio", true, 0.0, 64.0, &p.mlp_ratio, err);
    if (rc == 0) rc = fl_config_get_bool(root, "qkv_bias", true, &p.qkv_bias, err);
    if (rc == 0) rc = fl_config_get_bool(root, "guidance_embed", true, &p.guidance_embed, err);
    if (rc == 0) rc = fl_config_get_int_array(root, "axes_dim", true, 1, 4096, axes, FL_FLUX_MAX_AXES, &n_axes, err);
    json_decref(root);
    if (rc != 0) return fl_fail_prefix(err, "flux_params");
    p.n_axes = (int)n_axes;
    for (size_t i = 0; i < n_axes; i++) p.axes_dim[i] = (int)axes[i];
    if (fl_flux_params_validate(&p, err) != 0) return -1;
    *out = p;
    return 0;
}

int fl_flux_params_validate(const fl_flux_params *p, fl_error *err) {
    if (p->in_channels < 1 || p->out_channels < 1 || p->vec_in_dim < 1 || p->context_in_dim < 1 ||
        p->hidden_size < 1 || p->num_heads < 1 || p->depth < 0 || p->depth_single_blocks < 0 || p->theta < 1)
        return fl_fail(err, FL_EINVAL, "flux_params: sizes must be positive");
    if (!(p->mlp_ratio > 0.0) || fl_flux_mlp_hidden(p) < 1)
        return fl_fail(err, FL_EINVAL, "flux_params: mlp_ratio %g gives an empty MLP", p->mlp_ratio);
    if (p->hidden_size % p->num_heads)
        return fl_fail(err, FL_EINVAL, "flux_params: hidden_size %d is not divisible by num_heads %d",
                       p->hidden_size, p->num_heads);
    if (p->n_axes < 1 || p->n_axes > FL_FLUX_MAX_AXES)
        return fl_fail(err, FL_EINVAL, "flux_params: axes_dim needs 1..%d entries", FL_FLUX_MAX_AXES);
    int sum = 0;
    for (int i = 0; i < p->n_axes; i++) {
        if (p->axes_dim[i] < 2 || p->axes_dim[i] % 2)
            return fl_fail(err, FL_EINVAL, "flux_params: axes_dim[%d] = %d is not a positive even number", i,
                           p->axes_dim[i]);
        sum += p->axes_dim[i];
    }
    if (sum != fl_flux_head_dim(p))
        return fl_fail(err, FL_EINVAL, "flux_params: axes_dim sums to %d, the head dim is %d", sum,
                       fl_flux_head_dim(p));
    return 0;
}

char *fl_flux_params_to_json(const fl_flux_params *p) {
    json_t *axes = json_array();
    for (int i = 0; i < p->n_axes; i++) json_array_append_new(axes, json_integer(p->axes_dim[i]));
    json_t *root = json_pack("{s:i, s:i, s:i, s:i, s:i, s:f, s:i, s:i, s:i, s:o, s:i, s:b, s:b}", "in_channels",
                             p->in_channels, "out_channels", p->out_channels, "vec_in_dim", p->vec_in_dim,
                             "context_in_dim", p->context_in_dim, "hidden_size", p->hidden_size, "mlp_ratio",
                             p->mlp_ratio, "num_heads", p->num_heads, "depth", p->depth, "depth_single_blocks",
                             p->depth_single_blocks, "axes_dim", axes, "theta", p->theta, "qkv_bias",
                             (int)p->qkv_bias, "guidance_embed", (int)p->guidance_embed);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}

int fl_flux_mlp_hidden(const fl_flux_params *p) {
    /* Python's int() truncates toward zero; the product is exact for the ratios in use. */
    return (int)floor(p->hidden_size * p->mlp_ratio + 1e-9);
}

int fl_flux_pixel_patch(const fl_flux_params *p) {
    int patch = (int)lround(sqrt(p->in_channels / 3.0));
    if (patch < 1 || 3 * patch * patch != p->in_channels || p->out_channels != p->in_channels) return 0;
    return patch;
}

int fl_flux_head_dim(const fl_flux_params *p) {
    return p->hidden_size / p->num_heads;
}

/* ---- the parameter list ---------------------------------------------------------------------- */

typedef struct decl_list {
    fl_flux_param_decl *decls;
    size_t count;
} decl_list;

static void add_decl(decl_list *list, int ndim, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void add_decl(decl_list *list, int ndim, int64_t d0, int64_t d1, const char *fmt, ...) {
    if (list->decls) {
        fl_flux_param_decl *d = &list->decls[list->count];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->name, sizeof d->name, fmt, ap);
        va_end(ap);
        d->ndim = ndim;
        d->shape[0] = d0;
        d->shape[1] = d1;
    }
    list->count++;
}

/* weight [out, in] and, when has_bias, bias [out], under "<path>.weight" / "<path>.bias". */
static void add_linear(decl_list *list, const char *path, int64_t in, int64_t out, bool has_bias) {
    add_decl(list, 2, out, in, "%s.weight", path);
    if (has_bias) add_decl(list, 1, out, 0, "%s.bias", path);
}

size_t fl_flux_param_decls(const fl_flux_params *p, fl_flux_param_decl *decls) {
    decl_list list = {decls, 0};
    const int64_t h = p->hidden_size, mlp = fl_flux_mlp_hidden(p), d = fl_flux_head_dim(p);
    char path[FL_FLUX_NAME_MAX];
    add_linear(&list, "img_in", p->in_channels, h, true);
    add_linear(&list, "time_in.in_layer", 256, h, true);
    add_linear(&list, "time_in.out_layer", h, h, true);
    add_linear(&list, "vector_in.in_layer", p->vec_in_dim, h, true);
    add_linear(&list, "vector_in.out_layer", h, h, true);
    if (p->guidance_embed) {
        add_linear(&list, "guidance_in.in_layer", 256, h, true);
        add_linear(&list, "guidance_in.out_layer", h, h, true);
    }
    add_linear(&list, "txt_in", p->context_in_dim, h, true);
    static const char *const streams[2] = {"img", "txt"};
    for (int i = 0; i < p->depth; i++) {
        for (int s = 0; s < 2; s++) {
            snprintf(path, sizeof path, "double_blocks.%d.%s_mod.lin", i, streams[s]);
            add_linear(&list, path, h, 6 * h, true);
            snprintf(path, sizeof path, "double_blocks.%d.%s_attn.qkv", i, streams[s]);
            add_linear(&list, path, h, 3 * h, p->qkv_bias);
            add_decl(&list, 1, d, 0, "double_blocks.%d.%s_attn.norm.query_norm.scale", i, streams[s]);
            add_decl(&list, 1, d, 0, "double_blocks.%d.%s_attn.norm.key_norm.scale", i, streams[s]);
            snprintf(path, sizeof path, "double_blocks.%d.%s_attn.proj", i, streams[s]);
            add_linear(&list, path, h, h, true);
            snprintf(path, sizeof path, "double_blocks.%d.%s_mlp.0", i, streams[s]);
            add_linear(&list, path, h, mlp, true);
            snprintf(path, sizeof path, "double_blocks.%d.%s_mlp.2", i, streams[s]);
            add_linear(&list, path, mlp, h, true);
        }
    }
    for (int i = 0; i < p->depth_single_blocks; i++) {
        snprintf(path, sizeof path, "single_blocks.%d.linear1", i);
        add_linear(&list, path, h, 3 * h + mlp, true);
        snprintf(path, sizeof path, "single_blocks.%d.linear2", i);
        add_linear(&list, path, h + mlp, h, true);
        add_decl(&list, 1, d, 0, "single_blocks.%d.norm.query_norm.scale", i);
        add_decl(&list, 1, d, 0, "single_blocks.%d.norm.key_norm.scale", i);
        snprintf(path, sizeof path, "single_blocks.%d.modulation.lin", i);
        add_linear(&list, path, h, 3 * h, true);
    }
    add_linear(&list, "final_layer.linear", h, p->out_channels, true);
    add_linear(&list, "final_layer.adaLN_modulation.1", h, 2 * h, true);
    return list.count;
}

size_t fl_flux_linear_decls(const fl_flux_params *p, fl_flux_linear_decl *decls) {
    size_t n_params = fl_flux_param_decls(p, NULL);
    fl_flux_param_decl *params = fl_xmalloc((n_params ? n_params : 1) * sizeof *params);
    fl_flux_param_decls(p, params);
    size_t n = 0;
    for (size_t i = 0; i < n_params; i++) {
        const fl_flux_param_decl *d = &params[i];
        size_t len = strlen(d->name);
        if (d->ndim != 2 || len <= 7 || strcmp(d->name + len - 7, ".weight") != 0) continue;
        if (decls) {
            memset(&decls[n], 0, sizeof decls[n]);
            memcpy(decls[n].name, d->name, len - 7);
            decls[n].in = d->shape[1];
            decls[n].out = d->shape[0];
        }
        n++;
    }
    free(params);
    return n;
}
