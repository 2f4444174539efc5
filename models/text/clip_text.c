/*
 * clip_text.c — the CLIP text encoder (see clip_text.h): parameters from shapes and config.json,
 * binding in the Hugging Face key layout, the forward pass over ops, and its memory from the
 * parameters alone (the same forward in planning mode on a skeleton without weights).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/fileio.h"
#include "kernels/ops.h"
#include "models/text/text_internal.h"

static const char ANCHOR[] = "text_model.embeddings.token_embedding.weight";

typedef struct clip_layer {
    fl_tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} clip_layer;

struct fl_clip_text {
    fl_ctx *ctx;
    fl_clip_params p;
    fl_dtype dtype;
    fl_tensor tok, pos, final_w, final_b;
    clip_layer *layers;
    fl_arena arena;
    void *arena_memory;
    int planned_length;
};

/* ---- parameters ------------------------------------------------------------------------------- */

static void decl(fl_text_param_decl *d, size_t *n, const char *name, int64_t a, int64_t b) {
    if (d) {
        snprintf(d[*n].name, sizeof d[*n].name, "%s", name);
        d[*n].ndim = b ? 2 : 1;
        d[*n].shape[0] = a;
        d[*n].shape[1] = b;
    }
    (*n)++;
}

size_t fl_clip_param_decls(const fl_clip_params *p, fl_text_param_decl *d) {
    size_t n = 0;
    int64_t D = p->hidden_size, I = p->intermediate_size;
    char name[FL_TEXT_NAME_MAX];
    decl(d, &n, "text_model.embeddings.token_embedding.weight", p->vocab_size, D);
    decl(d, &n, "text_model.embeddings.position_embedding.weight", p->max_positions, D);
    for (int i = 0; i < p->num_layers; i++) {
        static const char *const proj[4] = {"k_proj", "v_proj", "q_proj", "out_proj"};
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%s.weight", i, proj[k]);
            decl(d, &n, name, D, D);
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%s.bias", i, proj[k]);
            decl(d, &n, name, D, 0);
        }
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm1.weight", i);
        decl(d, &n, name, D, 0);
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm1.bias", i);
        decl(d, &n, name, D, 0);
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc1.weight", i);
        decl(d, &n, name, I, D);
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc1.bias", i);
        decl(d, &n, name, I, 0);
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc2.weight", i);
        decl(d, &n, name, D, I);
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc2.bias", i);
        decl(d, &n, name, D, 0);
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm2.weight", i);
        decl(d, &n, name, D, 0);
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm2.bias", i);
        decl(d, &n, name, D, 0);
    }
    decl(d, &n, "text_model.final_layer_norm.weight", D, 0);
    decl(d, &n, "text_model.final_layer_norm.bias", D, 0);
    return n;
}

int fl_clip_params_validate(const fl_clip_params *p, fl_error *err) {
    if (p->vocab_size < 1 || p->hidden_size < 1 || p->intermediate_size < 1 || p->num_layers < 1 ||
        p->num_heads < 1 || p->max_positions < 2 || p->vocab_size > (1 << 24) || p->hidden_size > 65536 ||
        p->intermediate_size > 262144 || p->num_layers > 256 || p->max_positions > 65536)
        return fl_fail(err, FL_EINVAL, "CLIP parameters out of range (vocab %d, hidden %d, mlp %d, layers %d, heads %d, "
                                       "positions %d)", p->vocab_size, p->hidden_size, p->intermediate_size,
                       p->num_layers, p->num_heads, p->max_positions);
    if (p->hidden_size % p->num_heads)
        return fl_fail(err, FL_EINVAL, "CLIP hidden size %d is not divisible by %d heads", p->hidden_size, p->num_heads);
    if (!(p->layer_norm_eps > 0.0f) || !isfinite(p->layer_norm_eps))
        return fl_fail(err, FL_EINVAL, "CLIP layer_norm_eps must be positive");
    return 0;
}

static const fl_tensor_header *find(const fl_tensor_header *e, size_t n, const char *prefix, const char *name) {
    size_t lp = strlen(prefix);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(e[i].name, prefix, lp) && !strcmp(e[i].name + lp, name)) return &e[i];
    return NULL;
}

int fl_clip_params_infer(const fl_tensor_header *e, size_t n, fl_clip_params *p, char *prefix, fl_error *err) {
    memset(p, 0, sizeof *p);
    prefix[0] = 0;
    const fl_tensor_header *tok = NULL;
    size_t la = strlen(ANCHOR);
    for (size_t i = 0; i < n && !tok; i++) {
        size_t l = strlen(e[i].name);
        if (l >= la && !strcmp(e[i].name + l - la, ANCHOR) && l - la < FL_TEXT_PREFIX_MAX) {
            tok = &e[i];
            memcpy(prefix, e[i].name, l - la);
            prefix[l - la] = 0;
        }
    }
    if (!tok) return fl_fail(err, FL_ENOTFOUND, "not a CLIP text encoder: no tensor '%s'", ANCHOR);
    const fl_tensor_header *pos = find(e, n, prefix, "text_model.embeddings.position_embedding.weight");
    const fl_tensor_header *fc1 = find(e, n, prefix, "text_model.encoder.layers.0.mlp.fc1.weight");
    if (tok->ndim != 2 || !pos || pos->ndim != 2 || !fc1 || fc1->ndim != 2)
        return fl_fail(err, FL_EINVAL, "CLIP text encoder: the embeddings or layer 0 are missing or misshaped");
    p->vocab_size = (int)tok->shape[0];
    p->hidden_size = (int)tok->shape[1];
    p->max_positions = (int)pos->shape[0];
    p->intermediate_size = (int)fc1->shape[0];
    char name[FL_TEXT_NAME_MAX];
    for (p->num_layers = 0; p->num_layers < 256; p->num_layers++) {
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc1.weight", p->num_layers);
        if (!find(e, n, prefix, name)) break;
    }
    p->num_heads = p->hidden_size % 64 == 0 ? p->hidden_size / 64 : 1; /* head dim 64 unless config.json says */
    p->layer_norm_eps = 1e-5f;
    p->act = FL_TEXT_ACT_QUICK_GELU;
    return fl_clip_params_validate(p, err);
}

int fl_clip_params_apply_config(const char *text, size_t len, fl_clip_params *p, fl_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root) return fl_fail(err, FL_EINVAL, "config.json: not JSON (line %d: %s)", jerr.line, jerr.text);
    json_t *c = json_object_get(root, "text_config");
    if (!json_is_object(c)) c = root;
    int rc = 0;
    json_t *v;
    if ((v = json_object_get(c, "num_attention_heads")) && json_is_integer(v)) p->num_heads = (int)json_integer_value(v);
    if ((v = json_object_get(c, "layer_norm_eps")) && json_is_number(v)) p->layer_norm_eps = (float)json_number_value(v);
    if ((v = json_object_get(c, "hidden_act")) && json_is_string(v)) {
        const char *a = json_string_value(v);
        if (!strcmp(a, "quick_gelu")) p->act = FL_TEXT_ACT_QUICK_GELU;
        else if (!strcmp(a, "gelu")) p->act = FL_TEXT_ACT_GELU;
        else if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh")) p->act = FL_TEXT_ACT_GELU_TANH;
        else rc = fl_fail(err, FL_EUNSUPPORTED, "config.json: hidden_act '%.40s' is not supported", a);
    }
    json_decref(root);
    return rc ? rc : fl_clip_params_validate(p, err);
}

int fl_clip_check_entries(const fl_tensor_header *e, size_t n, const char *prefix, const fl_clip_params *p,
                          fl_error *err) {
    size_t count = fl_clip_param_decls(p, NULL);
    fl_text_param_decl *d = fl_xcalloc(count, sizeof *d);
    fl_clip_param_decls(p, d);
    int rc = fl_text_check_decls(e, n, prefix, d, count, err);
    free(d);
    return rc;
}

/* ---- model ------------------------------------------------------------------------------------ */

/* The model's tensors in declaration order (for binding and skeletons). */
static size_t tensor_slots(fl_clip_text *m, fl_tensor **slots) {
    size_t n = 0;
    slots[n++] = &m->tok;
    slots[n++] = &m->pos;
    for (int i = 0; i < m->p.num_layers; i++) {
        clip_layer *l = &m->layers[i];
        fl_tensor *order[] = {&l->k_w, &l->k_b, &l->v_w, &l->v_b, &l->q_w, &l->q_b, &l->o_w, &l->o_b, &l->ln1_w,
                              &l->ln1_b, &l->fc1_w, &l->fc1_b, &l->fc2_w, &l->fc2_b, &l->ln2_w, &l->ln2_b};
        for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) slots[n++] = order[k];
    }
    slots[n++] = &m->final_w;
    slots[n++] = &m->final_b;
    return n;
}

static fl_clip_text *model_new(fl_ctx *ctx, const fl_clip_params *p) {
    fl_clip_text *m = fl_xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->p = *p;
    m->dtype = fl_ctx_storage_dtype(ctx);
    m->layers = fl_xcalloc((size_t)p->num_layers, sizeof *m->layers);
    return m;
}

void fl_clip_text_free(fl_clip_text *m) {
    if (!m) return;
    size_t count = fl_clip_param_decls(&m->p, NULL);
    fl_tensor **slots = fl_xcalloc(count, sizeof *slots);
    tensor_slots(m, slots);
    for (size_t i = 0; i < count; i++)
        if (slots[i]->data) fl_ctx_tensor_free(m->ctx, slots[i]);
    free(slots);
    if (m->arena_memory) fl_ctx_free(m->ctx, m->arena_memory);
    free(m->layers);
    free(m);
}

const fl_clip_params *fl_clip_text_params(const fl_clip_text *m) { return &m->p; }

int fl_clip_text_load(fl_ctx *ctx, const fl_weight_files *w, const fl_clip_params *p_in, fl_clip_text **out,
                      fl_error *err) {
    *out = NULL;
    size_t n_headers = 0;
    const fl_tensor_header *h = fl_weight_files_headers(w, &n_headers);
    fl_clip_params p;
    char prefix[FL_TEXT_PREFIX_MAX];
    fl_clip_params inferred;
    if (fl_clip_params_infer(h, n_headers, &inferred, prefix, err) != 0) return fl_fail_prefix(err, "%s", fl_weight_files_dir(w));
    if (p_in) {
        p = *p_in;
    } else {
        p = inferred;
        size_t size = 0;
        unsigned char *text = fl_text_read_config(w, &size);
        if (text) {
            int rc = fl_clip_params_apply_config((const char *)text, size, &p, err);
            free(text);
            if (rc) return fl_fail_prefix(err, "%s", fl_weight_files_dir(w));
        }
    }
    if (fl_clip_params_validate(&p, err) != 0) return -1;
    fl_clip_text *m = model_new(ctx, &p);
    size_t count = fl_clip_param_decls(&p, NULL);
    fl_text_param_decl *d = fl_xcalloc(count, sizeof *d);
    fl_clip_param_decls(&p, d);
    fl_tensor **slots = fl_xcalloc(count, sizeof *slots);
    tensor_slots(m, slots);
    int rc = fl_text_check_decls(h, n_headers, prefix, d, count, err);
    for (size_t i = 0; rc == 0 && i < count; i++) rc = fl_text_bind(ctx, w, prefix, &d[i], NULL, slots[i], err);
    free(d);
    free(slots);
    if (rc) {
        fl_clip_text_free(m);
        return fl_fail_prefix(err, "CLIP text encoder");
    }
    *out = m;
    return 0;
}

/* ---- forward ---------------------------------------------------------------------------------- */

static void run(fl_clip_text *m, const int32_t *ids, int L, fl_tensor *hidden, fl_tensor *pooled) {
    fl_ctx *ctx = m->ctx;
    fl_arena *a = &m->arena;
    const fl_clip_params *p = &m->p;
    int64_t D = p->hidden_size, H = p->num_heads, hd = D / H, I = p->intermediate_size;
    int64_t ld[2] = {L, D}, li[2] = {L, I}, lh[4] = {1, H, L, hd};
    fl_tensor x = fl_arena_tensor(a, m->dtype, 2, ld), h = fl_arena_tensor(a, m->dtype, 2, ld);
    fl_tensor t = fl_arena_tensor(a, m->dtype, 2, ld), f = fl_arena_tensor(a, m->dtype, 2, li);
    fl_tensor q = fl_arena_tensor(a, m->dtype, 4, lh), k = fl_arena_tensor(a, m->dtype, 4, lh);
    fl_tensor v = fl_arena_tensor(a, m->dtype, 4, lh), o = fl_arena_tensor(a, m->dtype, 4, lh);
    fl_op_embedding(ctx, &m->tok, ids, L, &x);
    fl_tensor pos = fl_tensor_slice(&m->pos, 0, 0, L);
    fl_op_add(ctx, &x, &pos, 1.0f, &x);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int i = 0; i < p->num_layers; i++) {
        clip_layer *l = &m->layers[i];
        fl_op_layernorm_affine(ctx, &x, &l->ln1_w, &l->ln1_b, &h, p->layer_norm_eps);
        fl_op_linear(ctx, &h, &l->q_w, &l->q_b, &t);
        fl_text_split_heads(ctx, &t, (int)H, &q);
        fl_op_linear(ctx, &h, &l->k_w, &l->k_b, &t);
        fl_text_split_heads(ctx, &t, (int)H, &k);
        fl_op_linear(ctx, &h, &l->v_w, &l->v_b, &t);
        fl_text_split_heads(ctx, &t, (int)H, &v);
        fl_op_attention_masked(ctx, &q, &k, &v, NULL, true, &o, scale);
        fl_text_merge_heads(ctx, &o, &h);
        fl_op_linear(ctx, &h, &l->o_w, &l->o_b, &t);
        fl_op_add(ctx, &x, &t, 1.0f, &x);
        fl_op_layernorm_affine(ctx, &x, &l->ln2_w, &l->ln2_b, &h, p->layer_norm_eps);
        fl_op_linear(ctx, &h, &l->fc1_w, &l->fc1_b, &f);
        if (p->act == FL_TEXT_ACT_QUICK_GELU) fl_op_quick_gelu(ctx, &f, &f);
        else if (p->act == FL_TEXT_ACT_GELU) fl_op_gelu_erf(ctx, &f, &f);
        else fl_op_gelu_tanh(ctx, &f, &f);
        fl_op_linear(ctx, &f, &l->fc2_w, &l->fc2_b, &t);
        fl_op_add(ctx, &x, &t, 1.0f, &x);
    }
    fl_tensor *outh = hidden ? hidden : &h;
    fl_op_layernorm_affine(ctx, &x, &m->final_w, &m->final_b, outh, p->layer_norm_eps);
    if (pooled) {
        int at = 0;
        for (int i = 1; ids && i < L; i++)
            if (ids[i] > ids[at]) at = i;
        fl_tensor row = fl_tensor_slice(outh, 0, at, 1);
        fl_tensor dst = fl_tensor_reshape(pooled, 2, (int64_t[]){1, D});
        fl_op_copy(ctx, &row, &dst);
    }
}

static void plan(fl_clip_text *m, int L) {
    if (m->planned_length == L) return;
    int64_t ld[2] = {L, m->p.hidden_size}, d1[1] = {m->p.hidden_size};
    fl_tensor hidden = fl_tensor_make(NULL, m->dtype, m->ctx->device, 2, ld);
    fl_tensor pooled = fl_tensor_make(NULL, m->dtype, m->ctx->device, 1, d1);
    bool was = m->ctx->planning;
    m->ctx->planning = true;
    fl_arena_init_measure(&m->arena, m->ctx->device);
    run(m, NULL, L, &hidden, &pooled);
    size_t peak = fl_arena_peak(&m->arena);
    m->ctx->planning = was;
    if (m->arena_memory) fl_ctx_free(m->ctx, m->arena_memory);
    m->arena_memory = fl_ctx_alloc(m->ctx, peak ? peak : 1);
    FL_CHECKF(m->arena_memory, "out of device memory for %zu bytes of CLIP activations", peak);
    fl_arena_init(&m->arena, m->arena_memory, peak ? peak : 1, m->ctx->device);
    m->planned_length = L;
}

void fl_clip_text_forward(fl_clip_text *m, const int32_t *ids, int length, fl_tensor *hidden, fl_tensor *pooled) {
    FL_CHECKF(length >= 1 && length <= m->p.max_positions, "CLIP input of %d tokens (positions: %d)", length,
              m->p.max_positions);
    plan(m, length);
    fl_arena_reset(&m->arena, 0);
    run(m, ids, length, hidden, pooled);
}

void fl_clip_text_memory(const fl_clip_params *p, int length, fl_device_kind kind, size_t *weight_bytes,
                         size_t *activation_bytes) {
    fl_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.device.kind = kind;
    ctx.planning = true;
    fl_clip_text *m = model_new(&ctx, p);
    size_t count = fl_clip_param_decls(p, NULL);
    fl_text_param_decl *d = fl_xcalloc(count, sizeof *d);
    fl_clip_param_decls(p, d);
    fl_tensor **slots = fl_xcalloc(count, sizeof *slots);
    tensor_slots(m, slots);
    for (size_t i = 0; i < count; i++) *slots[i] = fl_tensor_make(NULL, m->dtype, ctx.device, d[i].ndim, d[i].shape);
    *weight_bytes = fl_text_decl_bytes(d, count, m->dtype);
    int64_t ld[2] = {length, p->hidden_size}, d1[1] = {p->hidden_size};
    fl_tensor hidden = fl_tensor_make(NULL, m->dtype, ctx.device, 2, ld);
    fl_tensor pooled = fl_tensor_make(NULL, m->dtype, ctx.device, 1, d1);
    fl_arena_init_measure(&m->arena, ctx.device);
    run(m, NULL, length, &hidden, &pooled);
    *activation_bytes = fl_arena_peak(&m->arena);
    for (size_t i = 0; i < count; i++) slots[i]->data = NULL;
    free(d);
    free(slots);
    free(m->layers);
    free(m);
}
