/*
 * vit.c — DINOv2 and CLIP vision transformers (see vit.h): layout detection from tensor names and
 * shapes, config.json, binding (with LayerScale folded into its projections), the position-table
 * resize, and the forward pass over ops with one arena planned per input size.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/arena.h"
#include "core/fileio.h"
#include "kernels/ops.h"
#include "models/vision/vit.h"

#define NAME_MAX_LEN 192
#define MAX_LAYERS 256

static const char DINO_ANCHOR[] = "embeddings.patch_embeddings.projection.weight";
static const char CLIP_ANCHOR[] = "vision_model.embeddings.patch_embedding.weight";

typedef struct vit_layer {
    fl_tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} vit_layer;

struct fl_vit {
    fl_ctx *ctx;
    fl_vit_params p;
    char prefix[FL_VIT_PREFIX_MAX];
    fl_dtype dtype;
    fl_tensor patch_w, patch_b, cls, pre_w, pre_b, final_w, final_b, proj;
    vit_layer *layers;
    float *pos_host;   /* [num_positions, D], as stored */
    fl_tensor pos;     /* [1 + grid^2, D] for the planned size */
    fl_arena arena;
    void *arena_memory;
    int planned_size;
};

/* ---- names and parameters ---------------------------------------------------------------------- */

static const fl_tensor_header *find(const fl_tensor_header *e, size_t n, const char *prefix, const char *name) {
    size_t lp = strlen(prefix);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(e[i].name, prefix, lp) && !strcmp(e[i].name + lp, name)) return &e[i];
    return NULL;
}

/* The tensor whose name ends with anchor (the shortest prefix wins); prefix gets what precedes. */
static const fl_tensor_header *find_anchor(const fl_tensor_header *e, size_t n, const char *anchor, char *prefix) {
    const fl_tensor_header *best = NULL;
    size_t la = strlen(anchor), best_len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(e[i].name);
        if (l < la || strcmp(e[i].name + l - la, anchor) || l - la >= FL_VIT_PREFIX_MAX) continue;
        if (l - la > 0 && e[i].name[l - la - 1] != '.') continue;
        if (!best || l - la < best_len) best = &e[i], best_len = l - la;
    }
    if (best) {
        memcpy(prefix, best->name, best_len);
        prefix[best_len] = 0;
    }
    return best;
}

int fl_vit_params_validate(const fl_vit_params *p, fl_error *err) {
    if (p->hidden_size < 1 || p->hidden_size > 65536 || p->num_layers < 1 || p->num_layers > MAX_LAYERS ||
        p->num_heads < 1 || p->intermediate_size < 1 || p->intermediate_size > 1 << 20 || p->patch_size < 1 ||
        p->patch_size > 1024 || p->num_positions < 2 || p->projection_dim < 0 || p->projection_dim > 65536)
        return fl_fail(err, FL_EINVAL, "vision transformer parameters out of range (hidden %d, layers %d, heads %d, "
                                       "mlp %d, patch %d, positions %d)", p->hidden_size, p->num_layers, p->num_heads,
                       p->intermediate_size, p->patch_size, p->num_positions);
    if (p->hidden_size % p->num_heads)
        return fl_fail(err, FL_EINVAL, "hidden size %d is not divisible by %d heads", p->hidden_size, p->num_heads);
    int grid = (int)lround(sqrt((double)(p->num_positions - 1)));
    if (grid * grid != p->num_positions - 1)
        return fl_fail(err, FL_EINVAL, "%d position embeddings are not 1 + a square grid", p->num_positions);
    if (!(p->layer_norm_eps > 0.0f) || !isfinite(p->layer_norm_eps))
        return fl_fail(err, FL_EINVAL, "layer_norm_eps must be positive");
    return 0;
}

int fl_vit_detect(const fl_tensor_header *e, size_t n, fl_vit_params *p, char *prefix, fl_error *err) {
    memset(p, 0, sizeof *p);
    prefix[0] = 0;
    char name[NAME_MAX_LEN];
    const fl_tensor_header *anchor = find_anchor(e, n, CLIP_ANCHOR, prefix);
    if (anchor) {
        p->kind = FL_VIT_CLIP;
        const fl_tensor_header *pos = find(e, n, prefix, "vision_model.embeddings.position_embedding.weight");
        const fl_tensor_header *fc1 = find(e, n, prefix, "vision_model.encoder.layers.0.mlp.fc1.weight");
        const fl_tensor_header *proj = find(e, n, prefix, "visual_projection.weight");
        if (anchor->ndim != 4 || anchor->shape[1] != 3 || anchor->shape[2] != anchor->shape[3] || !pos ||
            pos->ndim != 2 || !fc1 || fc1->ndim != 2)
            return fl_fail(err, FL_EINVAL, "CLIP vision: the embeddings or layer 0 are missing or misshaped");
        p->hidden_size = (int)anchor->shape[0];
        p->patch_size = (int)anchor->shape[2];
        p->num_positions = (int)pos->shape[0];
        p->intermediate_size = (int)fc1->shape[0];
        if (proj && proj->ndim == 2) p->projection_dim = (int)proj->shape[0];
        for (p->num_layers = 0; p->num_layers < MAX_LAYERS; p->num_layers++) {
            snprintf(name, sizeof name, "vision_model.encoder.layers.%d.mlp.fc1.weight", p->num_layers);
            if (!find(e, n, prefix, name)) break;
        }
        p->layer_norm_eps = 1e-5f;
        p->act = FL_VIT_QUICK_GELU;
    } else if ((anchor = find_anchor(e, n, DINO_ANCHOR, prefix))) {
        p->kind = FL_VIT_DINOV2;
        const fl_tensor_header *pos = find(e, n, prefix, "embeddings.position_embeddings");
        const fl_tensor_header *fc1 = find(e, n, prefix, "encoder.layer.0.mlp.fc1.weight");
        const fl_tensor_header *win = find(e, n, prefix, "encoder.layer.0.mlp.weights_in.weight");
        if (!find(e, n, prefix, "encoder.layer.0.layer_scale1.lambda1"))
            return fl_fail(err, FL_EINVAL, "not a DINOv2 model: '%sencoder.layer.0.layer_scale1.lambda1' is missing "
                                           "(a ViT without LayerScale, such as DINO v1, is another layout)", prefix);
        if (anchor->ndim != 4 || anchor->shape[1] != 3 || anchor->shape[2] != anchor->shape[3] || !pos ||
            pos->ndim != 3 || pos->shape[0] != 1 || (!fc1 && !win) || (fc1 ? fc1 : win)->ndim != 2)
            return fl_fail(err, FL_EINVAL, "DINOv2: the embeddings or layer 0 are missing or misshaped");
        p->hidden_size = (int)anchor->shape[0];
        p->patch_size = (int)anchor->shape[2];
        p->num_positions = (int)pos->shape[1];
        p->swiglu = !fc1;
        p->intermediate_size = fc1 ? (int)fc1->shape[0] : (int)(win->shape[0] / 2);
        for (p->num_layers = 0; p->num_layers < MAX_LAYERS; p->num_layers++) {
            snprintf(name, sizeof name, "encoder.layer.%d.norm1.weight", p->num_layers);
            if (!find(e, n, prefix, name)) break;
        }
        p->layer_scale = true;
        p->layer_norm_eps = 1e-6f;
        p->act = FL_VIT_GELU;
    } else {
        return fl_fail(err, FL_ENOTFOUND, "not a DINOv2 or CLIP vision model: no tensor '%s' or '%s'", DINO_ANCHOR,
                       CLIP_ANCHOR);
    }
    p->num_heads = p->hidden_size % 64 == 0 ? p->hidden_size / 64 : 1;
    int grid = (int)lround(sqrt((double)(p->num_positions - 1)));
    p->native_size = grid * p->patch_size;
    return fl_vit_params_validate(p, err);
}

int fl_vit_apply_config(const char *text, size_t len, fl_vit_params *p, fl_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root) return fl_fail(err, FL_EINVAL, "config.json: not JSON (line %d: %s)", jerr.line, jerr.text);
    json_t *c = json_object_get(root, "vision_config");
    if (!json_is_object(c)) c = root;
    int rc = 0;
    json_t *v;
    if ((v = json_object_get(c, "num_attention_heads")) && json_is_integer(v)) {
        json_int_t h = json_integer_value(v);
        p->num_heads = h > 0 && h <= 65536 ? (int)h : -1;
    }
    if ((v = json_object_get(c, "layer_norm_eps")) && json_is_number(v)) p->layer_norm_eps = (float)json_number_value(v);
    if ((v = json_object_get(c, "hidden_act")) && json_is_string(v)) {
        const char *a = json_string_value(v);
        if (!strcmp(a, "quick_gelu")) p->act = FL_VIT_QUICK_GELU;
        else if (!strcmp(a, "gelu")) p->act = FL_VIT_GELU;
        else if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh")) p->act = FL_VIT_GELU_TANH;
        else rc = fl_fail(err, FL_EUNSUPPORTED, "config.json: hidden_act '%.40s' is not supported", a);
    }
    json_decref(root);
    return rc ? rc : fl_vit_params_validate(p, err);
}

/* ---- binding ----------------------------------------------------------------------------------- */

typedef struct decl {
    char name[NAME_MAX_LEN];
    int ndim;
    int64_t shape[4];
    fl_tensor *slot;
    int view_ndim; /* the shape the model uses (a [1, 1, D] token bound as [1, D]); 0: same */
    int64_t view[4];
} decl;

typedef struct decls {
    decl *d;
    size_t n, cap;
} decls;

static decl *add(decls *ds, fl_tensor *slot, int ndim, int64_t a, int64_t b, int64_t c, int64_t dd, const char *fmt,
                 ...) __attribute__((format(printf, 8, 9)));
static decl *add(decls *ds, fl_tensor *slot, int ndim, int64_t a, int64_t b, int64_t c, int64_t dd, const char *fmt,
                 ...) {
    if (ds->n == ds->cap) {
        ds->cap = ds->cap ? 2 * ds->cap : 64;
        ds->d = fl_xrealloc(ds->d, ds->cap * sizeof *ds->d);
    }
    decl *x = &ds->d[ds->n++];
    memset(x, 0, sizeof *x);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->ndim = ndim;
    int64_t s[4] = {a, b, c, dd};
    memcpy(x->shape, s, sizeof s);
    x->slot = slot;
    return x;
}

/* Every tensor the model binds, in checkpoint order. pos_slot is bound on the host. */
static void declare(fl_vit *m, decls *ds) {
    const fl_vit_params *p = &m->p;
    int64_t D = p->hidden_size, I = p->intermediate_size, P = p->patch_size;
    if (p->kind == FL_VIT_DINOV2) {
        decl *c = add(ds, &m->cls, 3, 1, 1, D, 0, "embeddings.cls_token");
        c->view_ndim = 2, c->view[0] = 1, c->view[1] = D;
        add(ds, NULL, 3, 1, p->num_positions, D, 0, "embeddings.position_embeddings");
        add(ds, &m->patch_w, 4, D, 3, P, P, "embeddings.patch_embeddings.projection.weight");
        add(ds, &m->patch_b, 1, D, 0, 0, 0, "embeddings.patch_embeddings.projection.bias");
        for (int i = 0; i < p->num_layers; i++) {
            vit_layer *l = &m->layers[i];
            add(ds, &l->ln1_w, 1, D, 0, 0, 0, "encoder.layer.%d.norm1.weight", i);
            add(ds, &l->ln1_b, 1, D, 0, 0, 0, "encoder.layer.%d.norm1.bias", i);
            add(ds, &l->q_w, 2, D, D, 0, 0, "encoder.layer.%d.attention.attention.query.weight", i);
            add(ds, &l->q_b, 1, D, 0, 0, 0, "encoder.layer.%d.attention.attention.query.bias", i);
            add(ds, &l->k_w, 2, D, D, 0, 0, "encoder.layer.%d.attention.attention.key.weight", i);
            add(ds, &l->k_b, 1, D, 0, 0, 0, "encoder.layer.%d.attention.attention.key.bias", i);
            add(ds, &l->v_w, 2, D, D, 0, 0, "encoder.layer.%d.attention.attention.value.weight", i);
            add(ds, &l->v_b, 1, D, 0, 0, 0, "encoder.layer.%d.attention.attention.value.bias", i);
            add(ds, &l->o_w, 2, D, D, 0, 0, "encoder.layer.%d.attention.output.dense.weight", i);
            add(ds, &l->o_b, 1, D, 0, 0, 0, "encoder.layer.%d.attention.output.dense.bias", i);
            add(ds, NULL, 1, D, 0, 0, 0, "encoder.layer.%d.layer_scale1.lambda1", i);
            add(ds, &l->ln2_w, 1, D, 0, 0, 0, "encoder.layer.%d.norm2.weight", i);
            add(ds, &l->ln2_b, 1, D, 0, 0, 0, "encoder.layer.%d.norm2.bias", i);
            if (p->swiglu) {
                add(ds, &l->fc1_w, 2, 2 * I, D, 0, 0, "encoder.layer.%d.mlp.weights_in.weight", i);
                add(ds, &l->fc1_b, 1, 2 * I, 0, 0, 0, "encoder.layer.%d.mlp.weights_in.bias", i);
                add(ds, &l->fc2_w, 2, D, I, 0, 0, "encoder.layer.%d.mlp.weights_out.weight", i);
                add(ds, &l->fc2_b, 1, D, 0, 0, 0, "encoder.layer.%d.mlp.weights_out.bias", i);
            } else {
                add(ds, &l->fc1_w, 2, I, D, 0, 0, "encoder.layer.%d.mlp.fc1.weight", i);
                add(ds, &l->fc1_b, 1, I, 0, 0, 0, "encoder.layer.%d.mlp.fc1.bias", i);
                add(ds, &l->fc2_w, 2, D, I, 0, 0, "encoder.layer.%d.mlp.fc2.weight", i);
                add(ds, &l->fc2_b, 1, D, 0, 0, 0, "encoder.layer.%d.mlp.fc2.bias", i);
            }
            add(ds, NULL, 1, D, 0, 0, 0, "encoder.layer.%d.layer_scale2.lambda1", i);
        }
        add(ds, &m->final_w, 1, D, 0, 0, 0, "layernorm.weight");
        add(ds, &m->final_b, 1, D, 0, 0, 0, "layernorm.bias");
    } else {
        decl *c = add(ds, &m->cls, 1, D, 0, 0, 0, "vision_model.embeddings.class_embedding");
        c->view_ndim = 2, c->view[0] = 1, c->view[1] = D;
        add(ds, &m->patch_w, 4, D, 3, P, P, "vision_model.embeddings.patch_embedding.weight");
        add(ds, NULL, 2, p->num_positions, D, 0, 0, "vision_model.embeddings.position_embedding.weight");
        add(ds, &m->pre_w, 1, D, 0, 0, 0, "vision_model.pre_layrnorm.weight");
        add(ds, &m->pre_b, 1, D, 0, 0, 0, "vision_model.pre_layrnorm.bias");
        for (int i = 0; i < p->num_layers; i++) {
            vit_layer *l = &m->layers[i];
            const char *L = "vision_model.encoder.layers";
            add(ds, &l->k_w, 2, D, D, 0, 0, "%s.%d.self_attn.k_proj.weight", L, i);
            add(ds, &l->k_b, 1, D, 0, 0, 0, "%s.%d.self_attn.k_proj.bias", L, i);
            add(ds, &l->v_w, 2, D, D, 0, 0, "%s.%d.self_attn.v_proj.weight", L, i);
            add(ds, &l->v_b, 1, D, 0, 0, 0, "%s.%d.self_attn.v_proj.bias", L, i);
            add(ds, &l->q_w, 2, D, D, 0, 0, "%s.%d.self_attn.q_proj.weight", L, i);
            add(ds, &l->q_b, 1, D, 0, 0, 0, "%s.%d.self_attn.q_proj.bias", L, i);
            add(ds, &l->o_w, 2, D, D, 0, 0, "%s.%d.self_attn.out_proj.weight", L, i);
            add(ds, &l->o_b, 1, D, 0, 0, 0, "%s.%d.self_attn.out_proj.bias", L, i);
            add(ds, &l->ln1_w, 1, D, 0, 0, 0, "%s.%d.layer_norm1.weight", L, i);
            add(ds, &l->ln1_b, 1, D, 0, 0, 0, "%s.%d.layer_norm1.bias", L, i);
            add(ds, &l->fc1_w, 2, I, D, 0, 0, "%s.%d.mlp.fc1.weight", L, i);
            add(ds, &l->fc1_b, 1, I, 0, 0, 0, "%s.%d.mlp.fc1.bias", L, i);
            add(ds, &l->fc2_w, 2, D, I, 0, 0, "%s.%d.mlp.fc2.weight", L, i);
            add(ds, &l->fc2_b, 1, D, 0, 0, 0, "%s.%d.mlp.fc2.bias", L, i);
            add(ds, &l->ln2_w, 1, D, 0, 0, 0, "%s.%d.layer_norm2.weight", L, i);
            add(ds, &l->ln2_b, 1, D, 0, 0, 0, "%s.%d.layer_norm2.bias", L, i);
        }
        add(ds, &m->final_w, 1, D, 0, 0, 0, "vision_model.post_layernorm.weight");
        add(ds, &m->final_b, 1, D, 0, 0, 0, "vision_model.post_layernorm.bias");
        if (p->projection_dim) add(ds, &m->proj, 2, p->projection_dim, D, 0, 0, "visual_projection.weight");
    }
}

static int check_shape(const fl_safetensors_info *info, const decl *d, const char *name, fl_error *err) {
    bool ok = info->ndim == d->ndim;
    for (int i = 0; ok && i < d->ndim; i++) ok = info->shape[i] == d->shape[i];
    if (ok) return 0;
    char got[128] = "[", want[128] = "[";
    for (int i = 0; i < info->ndim; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)info->shape[i]);
    for (int i = 0; i < d->ndim; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "", (long long)d->shape[i]);
    return fl_fail(err, FL_EINVAL, "tensor '%s' has shape %s], expected %s]", name, got, want);
}

static size_t decl_numel(const decl *d) {
    size_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= (size_t)d->shape[i];
    return n;
}

static int read_decl(const fl_weight_files *w, const char *prefix, const decl *d, float **out, fl_error *err) {
    char name[FL_VIT_PREFIX_MAX + NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s%s", prefix, d->name);
    const char *file = NULL;
    const fl_safetensors_info *info = fl_weight_files_find(w, name, &file);
    if (!info) return fl_fail(err, FL_ENOTFOUND, "missing tensor '%s'", name);
    if (check_shape(info, d, name, err)) return fl_fail_prefix(err, "%s", file);
    size_t n = decl_numel(d);
    float *host = fl_xmalloc(n * sizeof(float));
    if (fl_weight_files_read_f32(w, name, host, n, err) != 0) {
        free(host);
        return -1;
    }
    *out = host;
    return 0;
}

static void free_tensor(fl_ctx *ctx, fl_tensor *t) {
    if (t->data) fl_ctx_tensor_free(ctx, t);
    memset(t, 0, sizeof *t);
}

void fl_vit_free(fl_vit *m) {
    if (!m) return;
    fl_tensor *top[] = {&m->patch_w, &m->patch_b, &m->cls, &m->pre_w, &m->pre_b, &m->final_w, &m->final_b, &m->proj,
                        &m->pos};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) free_tensor(m->ctx, top[i]);
    for (int i = 0; m->layers && i < m->p.num_layers; i++) {
        vit_layer *l = &m->layers[i];
        fl_tensor *ts[] = {&l->ln1_w, &l->ln1_b, &l->q_w, &l->q_b, &l->k_w, &l->k_b, &l->v_w, &l->v_b,
                           &l->o_w,   &l->o_b,   &l->ln2_w, &l->ln2_b, &l->fc1_w, &l->fc1_b, &l->fc2_w, &l->fc2_b};
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) free_tensor(m->ctx, ts[k]);
    }
    if (m->arena_memory) fl_ctx_free(m->ctx, m->arena_memory);
    free(m->layers);
    free(m->pos_host);
    free(m);
}

const fl_vit_params *fl_vit_get_params(const fl_vit *m) { return &m->p; }

int fl_vit_dim(const fl_vit *m) { return m->p.projection_dim ? m->p.projection_dim : m->p.hidden_size; }

static int upload(fl_vit *m, const decl *d, const float *host, fl_error *err) {
    int nd = d->view_ndim ? d->view_ndim : d->ndim;
    const int64_t *shape = d->view_ndim ? d->view : d->shape;
    if (fl_ctx_tensor_alloc(m->ctx, m->dtype, nd, shape, d->slot, err) != 0)
        return fl_fail_prefix(err, "tensor '%s%s'", m->prefix, d->name);
    fl_ctx_upload_f32(m->ctx, d->slot, host, decl_numel(d));
    return 0;
}

int fl_vit_load(fl_ctx *ctx, const fl_weight_files *w, const fl_vit_params *p_in, fl_vit **out, fl_error *err) {
    *out = NULL;
    size_t nh = 0;
    const fl_tensor_header *h = fl_weight_files_headers(w, &nh);
    fl_vit_params p;
    char prefix[FL_VIT_PREFIX_MAX];
    if (fl_vit_detect(h, nh, &p, prefix, err) != 0) return -1;
    if (p_in) {
        p = *p_in;
    } else {
        char cfg[4200];
        snprintf(cfg, sizeof cfg, "%s/config.json", fl_weight_files_dir(w));
        unsigned char *text = NULL;
        size_t size = 0;
        fl_error e2;
        if (fl_read_file(cfg, (size_t)1 << 20, &text, &size, &e2) == 0) {
            int rc = fl_vit_apply_config((const char *)text, size, &p, err);
            free(text);
            if (rc) return fl_fail_prefix(err, "%s", fl_weight_files_dir(w));
        }
    }
    if (fl_vit_params_validate(&p, err) != 0) return -1;
    fl_vit *m = fl_xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->p = p;
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->dtype = fl_ctx_storage_dtype(ctx);
    m->layers = fl_xcalloc((size_t)p.num_layers, sizeof *m->layers);
    decls ds = {0};
    declare(m, &ds);
    int rc = 0;
    float *scale = NULL; /* the LayerScale vector waiting for the projection it scales */
    float *held_w = NULL, *held_b = NULL;
    const decl *held_wd = NULL, *held_bd = NULL;
    for (size_t i = 0; rc == 0 && i < ds.n; i++) {
        const decl *d = &ds.d[i];
        float *host = NULL;
        if ((rc = read_decl(w, prefix, d, &host, err)) != 0) break;
        bool is_scale = strstr(d->name, "layer_scale") != NULL;
        bool is_pos = strstr(d->name, "position_embedding") != NULL;
        bool scaled = p.layer_scale && (strstr(d->name, "attention.output.dense.") || strstr(d->name, ".mlp.fc2.") ||
                                        strstr(d->name, ".mlp.weights_out."));
        if (is_pos) {
            m->pos_host = host;
            continue;
        }
        if (scaled) { /* keep until its lambda arrives */
            size_t ln = strlen(d->name);
            if (ln > 7 && !strcmp(d->name + ln - 7, ".weight")) held_w = host, held_wd = d;
            else held_b = host, held_bd = d;
            continue;
        }
        if (is_scale) {
            scale = host;
            int64_t D = p.hidden_size;
            if (!held_w || !held_b) FL_CHECKF(false, "LayerScale before its projection");
            for (int64_t o = 0; o < D; o++) {
                for (int64_t k = 0; k < held_wd->shape[1]; k++) held_w[o * held_wd->shape[1] + k] *= scale[o];
                held_b[o] *= scale[o];
            }
            rc = upload(m, held_wd, held_w, err);
            if (!rc) rc = upload(m, held_bd, held_b, err);
            free(held_w), free(held_b), free(scale);
            held_w = held_b = scale = NULL;
            continue;
        }
        rc = upload(m, d, host, err);
        free(host);
    }
    free(held_w), free(held_b);
    free(ds.d);
    if (rc) {
        fl_vit_free(m);
        return fl_fail_prefix(err, "%s", p.kind == FL_VIT_DINOV2 ? "DINOv2" : "CLIP vision");
    }
    *out = m;
    return 0;
}

/* ---- positions --------------------------------------------------------------------------------- */

static double cubic1(double x, double A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }
static double cubic2(double x, double A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }

static void cubic_taps(int out_i, int in_n, int out_n, int idx[4], double w[4]) {
    const double A = -0.75;
    double scale = (double)in_n / out_n, src = (out_i + 0.5) * scale - 0.5;
    double f = floor(src), t = src - f;
    int i0 = (int)f;
    w[0] = cubic2(t + 1.0, A);
    w[1] = cubic1(t, A);
    w[2] = cubic1(1.0 - t, A);
    w[3] = cubic2(2.0 - t, A);
    for (int k = 0; k < 4; k++) {
        int i = i0 - 1 + k;
        idx[k] = i < 0 ? 0 : i >= in_n ? in_n - 1 : i;
    }
}

void fl_vit_interpolate_positions(const float *src, int in_grid, int dim, int out_grid, float *dst) {
    for (int oy = 0; oy < out_grid; oy++) {
        int iy[4], ix[4];
        double wy[4], wx[4];
        cubic_taps(oy, in_grid, out_grid, iy, wy);
        for (int ox = 0; ox < out_grid; ox++) {
            cubic_taps(ox, in_grid, out_grid, ix, wx);
            for (int c = 0; c < dim; c++) {
                double acc = 0.0;
                for (int a = 0; a < 4; a++) {
                    double row = 0.0;
                    for (int b = 0; b < 4; b++) row += wx[b] * src[((size_t)iy[a] * in_grid + ix[b]) * dim + c];
                    acc += wy[a] * row;
                }
                dst[((size_t)oy * out_grid + ox) * dim + c] = (float)acc;
            }
        }
    }
}

/* The position table for a grid x grid input, uploaded into m->pos. */
static int make_positions(fl_vit *m, int grid, fl_error *err) {
    int D = m->p.hidden_size, native = (int)lround(sqrt((double)(m->p.num_positions - 1)));
    size_t rows = 1 + (size_t)grid * grid;
    float *table = fl_xmalloc(rows * (size_t)D * sizeof(float));
    memcpy(table, m->pos_host, (size_t)D * sizeof(float));
    if (grid == native) memcpy(table + D, m->pos_host + D, (size_t)grid * grid * D * sizeof(float));
    else fl_vit_interpolate_positions(m->pos_host + D, native, D, grid, table + D);
    free_tensor(m->ctx, &m->pos);
    int64_t shape[2] = {(int64_t)rows, D};
    if (fl_ctx_tensor_alloc(m->ctx, m->dtype, 2, shape, &m->pos, err) != 0) {
        free(table);
        return -1;
    }
    fl_ctx_upload_f32(m->ctx, &m->pos, table, rows * (size_t)D);
    free(table);
    return 0;
}

/* ---- forward ----------------------------------------------------------------------------------- */

static void split_heads(fl_ctx *ctx, const fl_tensor *src, int heads, fl_tensor *dst) {
    int64_t L = src->shape[0], D = src->shape[1] / heads;
    fl_tensor v = fl_tensor_reshape(src, 4, (int64_t[]){1, L, heads, D});
    fl_tensor p = fl_tensor_permute(&v, (int[]){0, 2, 1, 3});
    fl_op_copy(ctx, &p, dst);
}

static void merge_heads(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst) {
    int64_t H = src->shape[1], L = src->shape[2], D = src->shape[3];
    fl_tensor v = fl_tensor_reshape(dst, 4, (int64_t[]){1, L, H, D});
    fl_tensor p = fl_tensor_permute(&v, (int[]){0, 2, 1, 3});
    fl_op_copy(ctx, src, &p);
}

/* One image: img [1, 3, S, S] -> hidden [L, D] (final norm applied) and out [1, dim]. */
static void run(fl_vit *m, const fl_tensor *img, int S, fl_tensor *hidden, fl_tensor *out) {
    fl_ctx *ctx = m->ctx;
    fl_arena *a = &m->arena;
    const fl_vit_params *p = &m->p;
    int64_t D = p->hidden_size, H = p->num_heads, hd = D / H, I = p->intermediate_size;
    int64_t g = S / p->patch_size, L = 1 + g * g, I1 = p->swiglu ? 2 * I : I;
    fl_dtype dt = m->dtype;
    fl_tensor x = fl_arena_tensor(a, dt, 2, (int64_t[]){L, D}), h = fl_arena_tensor(a, dt, 2, (int64_t[]){L, D});
    fl_tensor t = fl_arena_tensor(a, dt, 2, (int64_t[]){L, D}), f = fl_arena_tensor(a, dt, 2, (int64_t[]){L, I1});
    int64_t lh[4] = {1, H, L, hd};
    fl_tensor q = fl_arena_tensor(a, dt, 4, lh), k = fl_arena_tensor(a, dt, 4, lh);
    fl_tensor v = fl_arena_tensor(a, dt, 4, lh), o = fl_arena_tensor(a, dt, 4, lh);
    /* patch embedding: conv [1, D, g, g] -> rows 1.. of x */
    size_t mark = fl_arena_mark(a);
    fl_tensor pe = fl_arena_tensor(a, dt, 4, (int64_t[]){1, D, g, g});
    fl_op_conv2d(ctx, img, &m->patch_w, p->kind == FL_VIT_DINOV2 ? &m->patch_b : NULL, &pe, p->patch_size,
                 (fl_conv2d_pad){0, 0, 0, 0});
    fl_tensor pe2 = fl_tensor_reshape(&pe, 2, (int64_t[]){D, g * g});
    fl_tensor pet = fl_tensor_permute(&pe2, (int[]){1, 0});
    fl_tensor rows = fl_tensor_slice(&x, 0, 1, g * g);
    fl_op_copy(ctx, &pet, &rows);
    fl_arena_reset(a, mark);
    fl_tensor row0 = fl_tensor_slice(&x, 0, 0, 1);
    fl_op_copy(ctx, &m->cls, &row0);
    fl_op_add(ctx, &x, &m->pos, 1.0f, &x);
    if (p->kind == FL_VIT_CLIP) fl_op_layernorm_affine(ctx, &x, &m->pre_w, &m->pre_b, &x, p->layer_norm_eps);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int i = 0; i < p->num_layers; i++) {
        vit_layer *l = &m->layers[i];
        fl_op_layernorm_affine(ctx, &x, &l->ln1_w, &l->ln1_b, &h, p->layer_norm_eps);
        fl_op_linear(ctx, &h, &l->q_w, &l->q_b, &t);
        split_heads(ctx, &t, (int)H, &q);
        fl_op_linear(ctx, &h, &l->k_w, &l->k_b, &t);
        split_heads(ctx, &t, (int)H, &k);
        fl_op_linear(ctx, &h, &l->v_w, &l->v_b, &t);
        split_heads(ctx, &t, (int)H, &v);
        fl_op_attention_masked(ctx, &q, &k, &v, NULL, false, &o, scale);
        merge_heads(ctx, &o, &h);
        fl_op_linear(ctx, &h, &l->o_w, &l->o_b, &t); /* LayerScale folded in */
        fl_op_add(ctx, &x, &t, 1.0f, &x);
        fl_op_layernorm_affine(ctx, &x, &l->ln2_w, &l->ln2_b, &h, p->layer_norm_eps);
        fl_op_linear(ctx, &h, &l->fc1_w, &l->fc1_b, &f);
        fl_tensor act = f;
        if (p->swiglu) {
            fl_tensor a1 = fl_tensor_slice(&f, 1, 0, I), a2 = fl_tensor_slice(&f, 1, I, I);
            fl_op_silu(ctx, &a1, &a1);
            fl_op_mul(ctx, &a1, &a2, &a1);
            act = a1;
        } else if (p->act == FL_VIT_QUICK_GELU) {
            fl_op_quick_gelu(ctx, &f, &f);
        } else if (p->act == FL_VIT_GELU) {
            fl_op_gelu_erf(ctx, &f, &f);
        } else {
            fl_op_gelu_tanh(ctx, &f, &f);
        }
        fl_op_linear(ctx, &act, &l->fc2_w, &l->fc2_b, &t);
        fl_op_add(ctx, &x, &t, 1.0f, &x);
    }
    if (p->kind == FL_VIT_DINOV2) {
        /* last_hidden_state = layernorm(x); the embedding is its CLS row */
        fl_tensor *hs = hidden ? hidden : &h;
        fl_op_layernorm_affine(ctx, &x, &m->final_w, &m->final_b, hs, p->layer_norm_eps);
        fl_tensor r0 = fl_tensor_slice(hs, 0, 0, 1);
        fl_op_copy(ctx, &r0, out);
    } else {
        if (hidden) fl_op_copy(ctx, &x, hidden);
        fl_tensor x0 = fl_tensor_slice(&x, 0, 0, 1), h0 = fl_tensor_slice(&h, 0, 0, 1);
        if (p->projection_dim) {
            fl_op_layernorm_affine(ctx, &x0, &m->final_w, &m->final_b, &h0, p->layer_norm_eps);
            fl_op_linear(ctx, &h0, &m->proj, NULL, out);
        } else {
            fl_op_layernorm_affine(ctx, &x0, &m->final_w, &m->final_b, out, p->layer_norm_eps);
        }
    }
}

static int plan(fl_vit *m, int S, fl_error *err) {
    if (m->planned_size == S) return 0;
    int g = S / m->p.patch_size;
    if (make_positions(m, g, err) != 0) return -1;
    int64_t L = 1 + (int64_t)g * g, D = m->p.hidden_size;
    fl_tensor img = fl_tensor_make(NULL, m->dtype, m->ctx->device, 4, (int64_t[]){1, 3, S, S});
    fl_tensor hidden = fl_tensor_make(NULL, m->dtype, m->ctx->device, 2, (int64_t[]){L, D});
    fl_tensor out = fl_tensor_make(NULL, m->dtype, m->ctx->device, 2, (int64_t[]){1, fl_vit_dim(m)});
    bool was = m->ctx->planning;
    m->ctx->planning = true;
    fl_arena_init_measure(&m->arena, m->ctx->device);
    /* the input and outputs live in the arena too */
    size_t extra = fl_tensor_nbytes(&img) + fl_tensor_nbytes(&hidden) + fl_tensor_nbytes(&out) + 3 * FL_ARENA_ALIGN;
    run(m, &img, S, &hidden, &out);
    size_t peak = fl_arena_peak(&m->arena) + extra;
    m->ctx->planning = was;
    if (m->arena_memory) fl_ctx_free(m->ctx, m->arena_memory);
    m->arena_memory = fl_ctx_alloc(m->ctx, peak);
    m->planned_size = 0;
    if (!m->arena_memory) return fl_fail(err, FL_ENOMEM, "no device memory for %zu bytes of activations", peak);
    fl_arena_init(&m->arena, m->arena_memory, peak, m->ctx->device);
    m->planned_size = S;
    return 0;
}

int fl_vit_forward_hidden(fl_vit *m, const float *pixels, int S, float *out, float *hidden, fl_error *err) {
    if (S < m->p.patch_size || S > 4096 || S % m->p.patch_size)
        return fl_fail(err, FL_EINVAL, "input side %d is not a multiple of the patch size %d in [%d, 4096]", S,
                       m->p.patch_size, m->p.patch_size);
    if (plan(m, S, err) != 0) return -1;
    fl_arena *a = &m->arena;
    fl_arena_reset(a, 0);
    int g = S / m->p.patch_size;
    int64_t L = 1 + (int64_t)g * g, D = m->p.hidden_size;
    fl_tensor img = fl_arena_tensor(a, m->dtype, 4, (int64_t[]){1, 3, S, S});
    fl_tensor hs = fl_arena_tensor(a, m->dtype, 2, (int64_t[]){L, D});
    fl_tensor o = fl_arena_tensor(a, m->dtype, 2, (int64_t[]){1, fl_vit_dim(m)});
    fl_ctx_upload_f32(m->ctx, &img, pixels, (size_t)3 * S * S);
    run(m, &img, S, &hs, &o);
    fl_ctx_download_f32(m->ctx, out, &o, (size_t)fl_vit_dim(m));
    if (hidden) fl_ctx_download_f32(m->ctx, hidden, &hs, (size_t)(L * D));
    return 0;
}

int fl_vit_forward(fl_vit *m, const float *pixels, int S, float *out, fl_error *err) {
    return fl_vit_forward_hidden(m, pixels, S, out, NULL, err);
}
