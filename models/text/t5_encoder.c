/*
 * t5_encoder.c — the T5 v1.1 encoder (see t5_encoder.h): parameters from shapes and config.json,
 * binding in the Hugging Face key layout, the relative position bias, the forward pass over ops,
 * and its memory from the parameters alone.
 *
 * The position bias [heads, L, L] (f32) is computed on the host from block 0's table once per
 * sequence length and kept on the device beside the weights; every block adds it to its scores.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/fileio.h"
#include "kernels/ops.h"
#include "models/text/t5_encoder.h"
#include "models/text/text_internal.h"

static const char ANCHOR[] = "encoder.final_layer_norm.weight";

typedef struct t5_block {
    fl_tensor ln1, q, k, v, o, ln2, wi0, wi1, wo;
} t5_block;

struct fl_t5_encoder {
    fl_ctx *ctx;
    fl_t5_params p;
    fl_dtype dtype;
    fl_tensor shared, rel_bias, final_ln;
    t5_block *blocks;
    float *rel_host; /* [buckets, heads] */
    fl_tensor bias;  /* [heads, L, L] f32 for planned_length */
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

size_t fl_t5_param_decls(const fl_t5_params *p, fl_text_param_decl *d) {
    size_t n = 0;
    int64_t D = p->d_model, inner = (int64_t)p->num_heads * p->d_kv, F = p->d_ff;
    char name[FL_TEXT_NAME_MAX];
    decl(d, &n, "shared.weight", p->vocab_size, D);
    for (int i = 0; i < p->num_layers; i++) {
        static const char *const qkvo[4] = {"q", "k", "v", "o"};
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.%s.weight", i, qkvo[k]);
            decl(d, &n, name, k == 3 ? D : inner, k == 3 ? inner : D);
        }
        if (i == 0) decl(d, &n, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", p->num_buckets,
                         p->num_heads);
        snprintf(name, sizeof name, "encoder.block.%d.layer.0.layer_norm.weight", i);
        decl(d, &n, name, D, 0);
        snprintf(name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", i);
        decl(d, &n, name, F, D);
        snprintf(name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", i);
        decl(d, &n, name, F, D);
        snprintf(name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wo.weight", i);
        decl(d, &n, name, D, F);
        snprintf(name, sizeof name, "encoder.block.%d.layer.1.layer_norm.weight", i);
        decl(d, &n, name, D, 0);
    }
    decl(d, &n, "encoder.final_layer_norm.weight", D, 0);
    return n;
}

int fl_t5_params_validate(const fl_t5_params *p, fl_error *err) {
    if (p->vocab_size < 1 || p->d_model < 1 || p->d_kv < 1 || p->num_heads < 1 || p->d_ff < 1 || p->num_layers < 1 ||
        p->num_buckets < 2 || p->max_distance < 1 || p->vocab_size > (1 << 24) || p->d_model > 65536 ||
        p->d_kv > 4096 || p->num_heads > 1024 || p->d_ff > 262144 || p->num_layers > 256 || p->num_buckets > 4096)
        return fl_fail(err, FL_EINVAL, "T5 parameters out of range (vocab %d, d_model %d, d_kv %d, heads %d, d_ff %d, "
                                       "layers %d, buckets %d)", p->vocab_size, p->d_model, p->d_kv, p->num_heads,
                       p->d_ff, p->num_layers, p->num_buckets);
    if (!(p->layer_norm_eps > 0.0f) || !isfinite(p->layer_norm_eps))
        return fl_fail(err, FL_EINVAL, "T5 layer_norm_epsilon must be positive");
    return 0;
}

static const fl_tensor_header *find(const fl_tensor_header *e, size_t n, const char *prefix, const char *name) {
    size_t lp = strlen(prefix);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(e[i].name, prefix, lp) && !strcmp(e[i].name + lp, name)) return &e[i];
    return NULL;
}

int fl_t5_params_infer(const fl_tensor_header *e, size_t n, fl_t5_params *p, char *prefix, fl_error *err) {
    memset(p, 0, sizeof *p);
    prefix[0] = 0;
    const fl_tensor_header *fin = NULL;
    size_t la = strlen(ANCHOR);
    for (size_t i = 0; i < n && !fin; i++) {
        size_t l = strlen(e[i].name);
        if (l >= la && !strcmp(e[i].name + l - la, ANCHOR) && l - la < FL_TEXT_PREFIX_MAX &&
            (l == la || e[i].name[l - la - 1] == '.')) {
            fin = &e[i];
            memcpy(prefix, e[i].name, l - la);
            prefix[l - la] = 0;
        }
    }
    if (!fin) return fl_fail(err, FL_ENOTFOUND, "not a T5 encoder: no tensor '%s'", ANCHOR);
    const fl_tensor_header *emb = find(e, n, prefix, "shared.weight");
    if (!emb) emb = find(e, n, prefix, "encoder.embed_tokens.weight");
    const fl_tensor_header *q = find(e, n, prefix, "encoder.block.0.layer.0.SelfAttention.q.weight");
    const fl_tensor_header *rel = find(e, n, prefix, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    const fl_tensor_header *wi = find(e, n, prefix, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
    if (!emb) return fl_fail(err, FL_ENOTFOUND, "missing tensor '%sshared.weight'", prefix);
    if (!q || !rel || !wi)
        return fl_fail(err, FL_ENOTFOUND, "missing tensor '%s%s'", prefix,
                       !q ? "encoder.block.0.layer.0.SelfAttention.q.weight"
                          : !rel ? "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
                                 : "encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
    if (emb->ndim != 2 || q->ndim != 2 || rel->ndim != 2 || wi->ndim != 2 || rel->shape[1] < 1)
        return fl_fail(err, FL_EINVAL, "T5 encoder: block 0 tensors are misshaped");
    p->vocab_size = (int)emb->shape[0];
    p->d_model = (int)emb->shape[1];
    p->num_buckets = (int)rel->shape[0];
    p->num_heads = (int)rel->shape[1];
    if (q->shape[0] % p->num_heads)
        return fl_fail(err, FL_EINVAL, "T5 encoder: q has %lld rows, not a multiple of %d heads", (long long)q->shape[0],
                       p->num_heads);
    p->d_kv = (int)(q->shape[0] / p->num_heads);
    p->d_ff = (int)wi->shape[0];
    char name[FL_TEXT_NAME_MAX];
    for (p->num_layers = 0; p->num_layers < 256; p->num_layers++) {
        snprintf(name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.q.weight", p->num_layers);
        if (!find(e, n, prefix, name)) break;
    }
    p->max_distance = 128;
    p->layer_norm_eps = 1e-6f;
    return fl_t5_params_validate(p, err);
}

int fl_t5_params_apply_config(const char *text, size_t len, fl_t5_params *p, fl_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root) return fl_fail(err, FL_EINVAL, "config.json: not JSON (line %d: %s)", jerr.line, jerr.text);
    int rc = 0;
    json_t *v;
    if ((v = json_object_get(root, "relative_attention_max_distance")) && json_is_integer(v))
        p->max_distance = (int)json_integer_value(v);
    if ((v = json_object_get(root, "layer_norm_epsilon")) && json_is_number(v))
        p->layer_norm_eps = (float)json_number_value(v);
    if ((v = json_object_get(root, "feed_forward_proj")) && json_is_string(v) &&
        strcmp(json_string_value(v), "gated-gelu"))
        rc = fl_fail(err, FL_EUNSUPPORTED, "config.json: feed_forward_proj '%.40s' is not supported (gated-gelu is)",
                     json_string_value(v));
    if ((v = json_object_get(root, "is_gated_act")) && json_is_false(v))
        rc = fl_fail(err, FL_EUNSUPPORTED, "config.json: only the gated feed-forward of T5 v1.1 is supported");
    json_decref(root);
    return rc ? rc : fl_t5_params_validate(p, err);
}

int fl_t5_check_entries(const fl_tensor_header *e, size_t n, const char *prefix, const fl_t5_params *p, fl_error *err) {
    size_t count = fl_t5_param_decls(p, NULL);
    fl_text_param_decl *d = fl_xcalloc(count, sizeof *d);
    fl_t5_param_decls(p, d);
    int rc = fl_text_check_decls(e, n, prefix, d, count, err);
    free(d);
    return rc;
}

int fl_t5_relative_bucket(int rel, int num_buckets, int max_distance) {
    int nb = num_buckets / 2, bucket = rel > 0 ? nb : 0;
    int a = rel < 0 ? -rel : rel, max_exact = nb / 2;
    if (a < max_exact) return bucket + a;
    /* float32 throughout, truncated, as the reference computes it */
    float v = logf((float)a / (float)max_exact) / (float)log((double)max_distance / (double)max_exact) *
              (float)(nb - max_exact);
    int large = max_exact + (int)v;
    return bucket + (large < nb - 1 ? large : nb - 1);
}

/* ---- model ------------------------------------------------------------------------------------ */

static size_t tensor_slots(fl_t5_encoder *m, fl_tensor **slots) {
    size_t n = 0;
    slots[n++] = &m->shared;
    for (int i = 0; i < m->p.num_layers; i++) {
        t5_block *b = &m->blocks[i];
        slots[n++] = &b->q;
        slots[n++] = &b->k;
        slots[n++] = &b->v;
        slots[n++] = &b->o;
        if (i == 0) slots[n++] = &m->rel_bias;
        slots[n++] = &b->ln1;
        slots[n++] = &b->wi0;
        slots[n++] = &b->wi1;
        slots[n++] = &b->wo;
        slots[n++] = &b->ln2;
    }
    slots[n++] = &m->final_ln;
    return n;
}

static fl_t5_encoder *model_new(fl_ctx *ctx, const fl_t5_params *p) {
    fl_t5_encoder *m = fl_xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->p = *p;
    m->dtype = fl_ctx_storage_dtype(ctx);
    m->blocks = fl_xcalloc((size_t)p->num_layers, sizeof *m->blocks);
    return m;
}

void fl_t5_encoder_free(fl_t5_encoder *m) {
    if (!m) return;
    size_t count = fl_t5_param_decls(&m->p, NULL);
    fl_tensor **slots = fl_xcalloc(count, sizeof *slots);
    tensor_slots(m, slots);
    for (size_t i = 0; i < count; i++)
        if (slots[i]->data) fl_ctx_tensor_free(m->ctx, slots[i]);
    free(slots);
    if (m->bias.data) fl_ctx_tensor_free(m->ctx, &m->bias);
    if (m->arena_memory) fl_ctx_free(m->ctx, m->arena_memory);
    free(m->rel_host);
    free(m->blocks);
    free(m);
}

const fl_t5_params *fl_t5_encoder_params(const fl_t5_encoder *m) { return &m->p; }

int fl_t5_encoder_load(fl_ctx *ctx, const fl_weight_files *w, const fl_t5_params *p_in, fl_t5_encoder **out,
                       fl_error *err) {
    *out = NULL;
    size_t n_headers = 0;
    const fl_tensor_header *h = fl_weight_files_headers(w, &n_headers);
    fl_t5_params p, inferred;
    char prefix[FL_TEXT_PREFIX_MAX];
    if (fl_t5_params_infer(h, n_headers, &inferred, prefix, err) != 0) return fl_fail_prefix(err, "%s", fl_weight_files_dir(w));
    if (p_in) {
        p = *p_in;
    } else {
        p = inferred;
        size_t size = 0;
        unsigned char *text = fl_text_read_config(w, &size);
        if (text) {
            int rc = fl_t5_params_apply_config((const char *)text, size, &p, err);
            free(text);
            if (rc) return fl_fail_prefix(err, "%s", fl_weight_files_dir(w));
        }
    }
    if (fl_t5_params_validate(&p, err) != 0) return -1;
    fl_t5_encoder *m = model_new(ctx, &p);
    size_t count = fl_t5_param_decls(&p, NULL);
    fl_text_param_decl *d = fl_xcalloc(count, sizeof *d);
    fl_t5_param_decls(&p, d);
    fl_tensor **slots = fl_xcalloc(count, sizeof *slots);
    tensor_slots(m, slots);
    int rc = fl_text_check_decls(h, n_headers, prefix, d, count, err);
    for (size_t i = 0; rc == 0 && i < count; i++)
        rc = fl_text_bind(ctx, w, prefix, &d[i], i == 0 ? "encoder.embed_tokens.weight" : NULL, slots[i], err);
    if (rc == 0) { /* the bias table on the host, for the position bias */
        char name[FL_TEXT_PREFIX_MAX + FL_TEXT_NAME_MAX];
        snprintf(name, sizeof name, "%sencoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", prefix);
        size_t nb = (size_t)p.num_buckets * (size_t)p.num_heads;
        m->rel_host = fl_xmalloc(nb * sizeof(float));
        rc = fl_weight_files_read_f32(w, name, m->rel_host, nb, err);
    }
    free(d);
    free(slots);
    if (rc) {
        fl_t5_encoder_free(m);
        return fl_fail_prefix(err, "T5 encoder");
    }
    *out = m;
    return 0;
}

/* ---- forward ---------------------------------------------------------------------------------- */

static void run(fl_t5_encoder *m, const int32_t *ids, int L, fl_tensor *out) {
    fl_ctx *ctx = m->ctx;
    fl_arena *a = &m->arena;
    const fl_t5_params *p = &m->p;
    int64_t D = p->d_model, H = p->num_heads, dk = p->d_kv, inner = H * dk, F = p->d_ff;
    int64_t ld[2] = {L, D}, lin[2] = {L, inner}, lf[2] = {L, F}, lh[4] = {1, H, L, dk}, l1[1] = {L};
    fl_tensor x = fl_arena_tensor(a, m->dtype, 2, ld), h = fl_arena_tensor(a, m->dtype, 2, ld);
    fl_tensor t = fl_arena_tensor(a, m->dtype, 2, lin), att = fl_arena_tensor(a, m->dtype, 2, lin);
    fl_tensor f0 = fl_arena_tensor(a, m->dtype, 2, lf), f1 = fl_arena_tensor(a, m->dtype, 2, lf);
    fl_tensor q = fl_arena_tensor(a, m->dtype, 4, lh), k = fl_arena_tensor(a, m->dtype, 4, lh);
    fl_tensor v = fl_arena_tensor(a, m->dtype, 4, lh), o = fl_arena_tensor(a, m->dtype, 4, lh);
    fl_tensor rstd = fl_arena_tensor(a, FL_F32, 1, l1);
    fl_op_embedding(ctx, &m->shared, ids, L, &x);
    for (int i = 0; i < p->num_layers; i++) {
        t5_block *b = &m->blocks[i];
        fl_op_rmsnorm(ctx, &x, &b->ln1, &h, &rstd, p->layer_norm_eps);
        fl_op_linear(ctx, &h, &b->q, NULL, &t);
        fl_text_split_heads(ctx, &t, (int)H, &q);
        fl_op_linear(ctx, &h, &b->k, NULL, &t);
        fl_text_split_heads(ctx, &t, (int)H, &k);
        fl_op_linear(ctx, &h, &b->v, NULL, &t);
        fl_text_split_heads(ctx, &t, (int)H, &v);
        fl_op_attention_masked(ctx, &q, &k, &v, &m->bias, false, &o, 1.0f);
        fl_text_merge_heads(ctx, &o, &att);
        fl_op_linear(ctx, &att, &b->o, NULL, &h);
        fl_op_add(ctx, &x, &h, 1.0f, &x);
        fl_op_rmsnorm(ctx, &x, &b->ln2, &h, &rstd, p->layer_norm_eps);
        fl_op_linear(ctx, &h, &b->wi0, NULL, &f0);
        fl_op_gelu_tanh(ctx, &f0, &f0);
        fl_op_linear(ctx, &h, &b->wi1, NULL, &f1);
        fl_op_mul(ctx, &f0, &f1, &f0);
        fl_op_linear(ctx, &f0, &b->wo, NULL, &h);
        fl_op_add(ctx, &x, &h, 1.0f, &x);
    }
    fl_op_rmsnorm(ctx, &x, &m->final_ln, out, &rstd, p->layer_norm_eps);
}

static void plan(fl_t5_encoder *m, int L) {
    if (m->planned_length == L) return;
    const fl_t5_params *p = &m->p;
    /* the position bias for L */
    if (m->bias.data) fl_ctx_tensor_free(m->ctx, &m->bias);
    int64_t bshape[3] = {p->num_heads, L, L};
    m->bias = fl_ctx_tensor(m->ctx, FL_F32, 3, bshape);
    size_t n = (size_t)p->num_heads * (size_t)L * (size_t)L;
    float *host = fl_xmalloc(n * sizeof(float));
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) {
            int bucket = fl_t5_relative_bucket(j - i, p->num_buckets, p->max_distance);
            for (int hh = 0; hh < p->num_heads; hh++)
                host[((size_t)hh * (size_t)L + (size_t)i) * (size_t)L + (size_t)j] = m->rel_host[bucket * p->num_heads + hh];
        }
    fl_ctx_upload_f32(m->ctx, &m->bias, host, n);
    free(host);
    /* the activations */
    int64_t ld[2] = {L, p->d_model};
    fl_tensor outp = fl_tensor_make(NULL, m->dtype, m->ctx->device, 2, ld);
    bool was = m->ctx->planning;
    m->ctx->planning = true;
    fl_arena_init_measure(&m->arena, m->ctx->device);
    run(m, NULL, L, &outp);
    size_t peak = fl_arena_peak(&m->arena);
    m->ctx->planning = was;
    if (m->arena_memory) fl_ctx_free(m->ctx, m->arena_memory);
    m->arena_memory = fl_ctx_alloc(m->ctx, peak ? peak : 1);
    FL_CHECKF(m->arena_memory, "out of device memory for %zu bytes of T5 activations", peak);
    fl_arena_init(&m->arena, m->arena_memory, peak ? peak : 1, m->ctx->device);
    m->planned_length = L;
}

void fl_t5_encoder_forward(fl_t5_encoder *m, const int32_t *ids, int length, fl_tensor *out) {
    FL_CHECKF(length >= 1 && length <= 65536, "T5 input of %d tokens", length);
    plan(m, length);
    fl_arena_reset(&m->arena, 0);
    run(m, ids, length, out);
}

void fl_t5_encoder_memory(const fl_t5_params *p, int length, fl_device_kind kind, size_t *weight_bytes,
                          size_t *activation_bytes) {
    fl_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.device.kind = kind;
    ctx.planning = true;
    fl_t5_encoder *m = model_new(&ctx, p);
    size_t count = fl_t5_param_decls(p, NULL);
    fl_text_param_decl *d = fl_xcalloc(count, sizeof *d);
    fl_t5_param_decls(p, d);
    fl_tensor **slots = fl_xcalloc(count, sizeof *slots);
    tensor_slots(m, slots);
    for (size_t i = 0; i < count; i++) *slots[i] = fl_tensor_make(NULL, m->dtype, ctx.device, d[i].ndim, d[i].shape);
    int64_t bshape[3] = {p->num_heads, length, length};
    m->bias = fl_tensor_make(NULL, FL_F32, ctx.device, 3, bshape);
    *weight_bytes = fl_text_decl_bytes(d, count, m->dtype);
    int64_t ld[2] = {length, p->d_model};
    fl_tensor outp = fl_tensor_make(NULL, m->dtype, ctx.device, 2, ld);
    fl_arena_init_measure(&m->arena, ctx.device);
    run(m, NULL, length, &outp);
    /* the activations plus the position bias kept beside the weights */
    *activation_bytes = fl_arena_peak(&m->arena) + ((fl_tensor_nbytes(&m->bias) + 255) & ~(size_t)255);
    free(d);
    free(slots);
    free(m->blocks);
    free(m);
}
