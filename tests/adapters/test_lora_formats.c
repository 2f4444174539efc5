/*
 * test_lora_formats.c — LoRA files in the canonical, kohya and PEFT/diffusers layouts
 * (adapters/lora_formats.h writes them, adapters/lora.h reads them).
 *
 * On a tiny random Flux model (golden config a: hidden 32, 2 heads, depth 2 + 2, MLP 80) an
 * adapter with different ranks and alpha != rank on every Linear is saved in each layout and
 * loaded back; every module's effective ΔW = (alpha / rank) · B · A (host, double) must match
 * the original within 1e-6 relative, and the model's output with the imported adapter must match
 * the output with the original. Hand-written files check the names each layout uses, kohya's
 * alpha, PEFT alpha sources, fusion of q/k/v parts (shared A, different A's, absent parts), the
 * final layer's half swap, unmatched keys, and malformed files (errors naming the key).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "core/safetensors.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/flux.h"

#define H 32   /* hidden size */
#define MLP 80 /* int(32 * 2.5) */

static fl_ctx *cpu;
static char tmp_dir[256];

static const char *tmp_path(const char *name, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s", tmp_dir, name);
    return buf;
}

static void remove_tmp_dir(void) {
    DIR *d = opendir(tmp_dir);
    char path[512];
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(tmp_path(e->d_name, path, sizeof path));
    if (d) closedir(d);
    rmdir(tmp_dir);
}

static fl_flux_params config_a(void) {
    fl_flux_params p = {.in_channels = 16, .out_channels = 16, .vec_in_dim = 12, .context_in_dim = 20,
                        .hidden_size = H, .mlp_ratio = 2.5, .num_heads = 2, .depth = 2, .depth_single_blocks = 2,
                        .axes_dim = {4, 6, 6}, .n_axes = 3, .theta = 10000, .qkv_bias = true,
                        .guidance_embed = true};
    return p;
}

static fl_flux_model *make_model(void) {
    fl_flux_params p = config_a();
    return fl_flux_create_random(cpu, &p, 77);
}

/* An adapter on every Linear of m: ranks 1..4 and alpha != rank, or (uniform) rank 4, alpha 6. */
static fl_lora *random_lora(fl_flux_model *m, uint64_t seed, bool uniform) {
    fl_lora *l = fl_lora_new();
    fl_error err = {0};
    for (size_t i = 0; i < fl_flux_linear_count(m); i++) {
        const fl_flux_linear *lin = fl_flux_linear_at(m, i);
        int64_t rank = uniform ? 4 : 1 + (int64_t)(i * 7 % 4);
        float alpha = uniform ? 6.0f : 1.5f * (float)rank + 0.25f * (float)(i % 3);
        float *a = fl_test_randn((size_t)(rank * lin->in), seed + 2 * i, 0.5f);
        float *b = fl_test_randn((size_t)(lin->out * rank), seed + 2 * i + 1, 0.5f);
        FL_EXPECTF(fl_lora_add(l, lin->name, rank, lin->in, lin->out, a, b, alpha, &err) == 0, "%s", err.message);
        free(a);
        free(b);
    }
    return l;
}

static const fl_flux_lora_pair *find_pair(const fl_lora *l, const char *module, size_t *index) {
    for (size_t i = 0; i < l->n_pairs; i++)
        if (!strcmp(l->pairs[i].module, module)) {
            if (index) *index = i;
            return &l->pairs[i];
        }
    return NULL;
}

/* (alpha / rank) · B · A in double, [out, in]. */
static double *delta_w(const fl_flux_lora_pair *p, int64_t in, int64_t out) {
    double *d = calloc((size_t)(in * out), sizeof *d);
    double scale = p->alpha / (double)p->rank;
    for (int64_t o = 0; o < out; o++)
        for (int64_t r = 0; r < p->rank; r++)
            for (int64_t i = 0; i < in; i++) d[o * in + i] += scale * p->b[o * p->rank + r] * p->a[r * in + i];
    return d;
}

/* max |got - want| / max |want| over one module's ΔW. */
static double delta_error(const double *got, const double *want, int64_t n) {
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(want[i]));
        worst = fmax(worst, fabs(got[i] - want[i]));
    }
    return scale > 0 ? worst / scale : worst;
}

/* Every module of want is in got with the same shape and the same ΔW (1e-6 relative). */
static void expect_same_deltas(const char *what, const fl_lora *got, const fl_lora *want, bool same_ranks) {
    FL_EXPECTF(got->n_pairs == want->n_pairs, "%s: %zu pairs, expected %zu", what, got->n_pairs, want->n_pairs);
    double worst = 0;
    for (size_t i = 0; i < want->n_pairs; i++) {
        const fl_flux_lora_pair *w = &want->pairs[i];
        size_t j = 0;
        const fl_flux_lora_pair *g = find_pair(got, w->module, &j);
        FL_EXPECTF(g, "%s: %s missing", what, w->module);
        if (!g) continue;
        int64_t in = want->dims[i].in, out = want->dims[i].out;
        FL_EXPECTF(got->dims[j].in == in && got->dims[j].out == out, "%s: %s shape", what, w->module);
        if (same_ranks) FL_EXPECTF(g->rank == w->rank, "%s: %s rank %lld vs %lld", what, w->module,
                                   (long long)g->rank, (long long)w->rank);
        double *dg = delta_w(g, in, out), *dw = delta_w(w, in, out);
        double e = delta_error(dg, dw, in * out);
        FL_EXPECTF(e <= 1e-6, "%s: %s ΔW differs by %.3g relative", what, w->module, e);
        worst = fmax(worst, e);
        free(dg);
        free(dw);
    }
    printf("  %-34s %zu modules, max ΔW error %.2e\n", what, want->n_pairs, worst);
}

/* ---- hand-written files ---------------------------------------------------------------------- */

typedef struct tfile {
    fl_safetensors_entry t[48];
    size_t n;
    fl_safetensors_kv kv[8];
    size_t n_kv;
} tfile;

static void put(tfile *f, const char *name, fl_st_dtype dtype, const void *data, int ndim, int64_t d0, int64_t d1) {
    fl_safetensors_entry *e = &f->t[f->n++];
    memset(e, 0, sizeof *e);
    e->name = name;
    e->dtype = dtype;
    e->data = data;
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
}

static void put_mat(tfile *f, const char *name, const float *data, int64_t d0, int64_t d1) {
    put(f, name, FL_ST_F32, data, 2, d0, d1);
}

static void put_meta(tfile *f, const char *key, const char *value) {
    f->kv[f->n_kv].key = key;
    f->kv[f->n_kv].value = value;
    f->n_kv++;
}

static const char *write_tfile(const tfile *f, const char *name, char *buf, size_t size) {
    fl_error err = {0};
    tmp_path(name, buf, size);
    FL_EXPECTF(fl_safetensors_write(buf, f->t, f->n, f->kv, f->n_kv, &err) == 0, "write %s: %s", name, err.message);
    return buf;
}

/* Loads path; on failure, returns NULL with the message in err. */
static fl_lora *load_with(const char *path, fl_flux_model *m, fl_error *err) {
    fl_lora *l = NULL;
    int rc = m ? fl_lora_load_for_model(path, m, &l, err) : fl_lora_load(path, NULL, 0, &l, err);
    return rc == 0 ? l : NULL;
}

/* Loading path fails and the message names `key`. */
static void expect_error_naming(const char *path, fl_flux_model *m, const char *key) {
    fl_error err = {0};
    fl_lora *l = load_with(path, m, &err);
    FL_EXPECTF(!l && strstr(err.message, key), "expected an error naming '%s', got: %s", key,
               l ? "(loaded)" : err.message);
    fl_lora_free(l);
}

/* ---- round trips ------------------------------------------------------------------------------ */

static void roundtrip(fl_lora_layout layout, bool uniform) {
    fl_flux_model *m = make_model();
    fl_lora *orig = random_lora(m, 100, uniform);
    char path[512], name[64], what[96];
    snprintf(name, sizeof name, "rt_%s_%d.safetensors", fl_lora_layout_name(layout), (int)uniform);
    tmp_path(name, path, sizeof path);
    fl_error err = {0};
    const fl_safetensors_kv meta[] = {{"targets", "all"}, {"trigger", "tok"}, {"format", "not-this"}};
    FL_EXPECTF(fl_lora_save(orig, layout, path, meta, 3, &err) == 0, "save: %s", err.message);
    for (int with_model = 1; with_model >= 0; with_model--) {
        fl_lora *back = load_with(path, with_model ? m : NULL, &err);
        FL_EXPECTF(back, "load: %s", err.message);
        if (!back) continue;
        FL_EXPECTF(!strcmp(back->format, fl_lora_layout_name(layout)), "format %s", back->format);
        FL_EXPECTF(back->n_unmatched == 0, "%zu unmatched, first %s", back->n_unmatched,
                   back->n_unmatched ? back->unmatched[0] : "");
        snprintf(what, sizeof what, "%s%s%s", fl_lora_layout_name(layout), uniform ? " uniform" : "",
                 with_model ? "" : " (no model)");
        expect_same_deltas(what, back, orig, true);
        fl_lora_free(back);
    }
    /* Caller metadata passes through; the keys the layout owns do not. */
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, &err) == 0) {
        const char *fmt = fl_safetensors_metadata_get(st, "format");
        FL_EXPECT(!fmt || strcmp(fmt, "not-this"));
        const char *trigger = fl_safetensors_metadata_get(st, "trigger");
        FL_EXPECT(trigger && !strcmp(trigger, "tok"));
        fl_safetensors_close(st);
    }
    fl_lora_free(orig);
    fl_flux_free(m);
}

static void test_roundtrip_canonical(void) { roundtrip(FL_LORA_CANONICAL, false); }
static void test_roundtrip_canonical_uniform(void) { roundtrip(FL_LORA_CANONICAL, true); }
static void test_roundtrip_kohya(void) { roundtrip(FL_LORA_KOHYA, false); }
static void test_roundtrip_peft(void) { roundtrip(FL_LORA_PEFT, false); }
static void test_roundtrip_peft_uniform(void) { roundtrip(FL_LORA_PEFT, true); }

/* Canonical alpha: metadata when uniform, per-module scalar tensors otherwise. */
static void test_canonical_alpha_storage(void) {
    fl_flux_model *m = make_model();
    char path[512];
    fl_error err = {0};
    for (int uniform = 0; uniform < 2; uniform++) {
        fl_lora *l = random_lora(m, 5, uniform);
        tmp_path("canon_alpha.safetensors", path, sizeof path);
        FL_EXPECT(fl_lora_save(l, FL_LORA_CANONICAL, path, NULL, 0, &err) == 0);
        fl_safetensors *st = NULL;
        FL_EXPECT(fl_safetensors_open(path, &st, &err) == 0);
        if (st) {
            const char *fmt = fl_safetensors_metadata_get(st, "format");
            FL_EXPECT(fmt && !strcmp(fmt, "flashlora.lora.v1"));
            const char *alpha = fl_safetensors_metadata_get(st, "alpha");
            const fl_safetensors_info *t = fl_safetensors_find(st, "double_blocks.1.txt_mlp.2.alpha");
            if (uniform) {
                FL_EXPECT(alpha && !strcmp(alpha, "6") && !t);
                FL_EXPECT(fl_safetensors_metadata_get(st, "rank") &&
                          !strcmp(fl_safetensors_metadata_get(st, "rank"), "4"));
            } else {
                FL_EXPECT(!alpha && t && t->ndim == 0 && t->dtype == FL_ST_F32);
                const fl_flux_lora_pair *p = find_pair(l, "double_blocks.1.txt_mlp.2", NULL);
                if (t && p) FL_EXPECT(*(const float *)t->data == p->alpha);
            }
            fl_safetensors_close(st);
        }
        fl_lora_free(l);
    }
    fl_flux_free(m);
}

/* ---- kohya -------------------------------------------------------------------------------------- */

static void test_kohya_names(void) {
    fl_flux_model *m = make_model();
    fl_lora *l = random_lora(m, 9, false);
    char path[512];
    fl_error err = {0};
    tmp_path("kohya_names.safetensors", path, sizeof path);
    FL_EXPECT(fl_lora_save(l, FL_LORA_KOHYA, path, NULL, 0, &err) == 0);
    fl_safetensors *st = NULL;
    FL_EXPECT(fl_safetensors_open(path, &st, &err) == 0);
    if (st) {
        const fl_flux_lora_pair *qkv = find_pair(l, "double_blocks.0.img_attn.qkv", NULL);
        const char *stem = "lora_unet_double_blocks_0_img_attn_qkv";
        char key[96];
        snprintf(key, sizeof key, "%s.lora_down.weight", stem);
        const fl_safetensors_info *a = fl_safetensors_find(st, key);
        snprintf(key, sizeof key, "%s.lora_up.weight", stem);
        const fl_safetensors_info *b = fl_safetensors_find(st, key);
        snprintf(key, sizeof key, "%s.alpha", stem);
        const fl_safetensors_info *al = fl_safetensors_find(st, key);
        FL_EXPECT(a && a->shape[0] == qkv->rank && a->shape[1] == H);
        FL_EXPECT(b && b->shape[0] == 3 * H && b->shape[1] == qkv->rank);
        FL_EXPECT(al && al->ndim == 0 && al->dtype == FL_ST_F32 && *(const float *)al->data == qkv->alpha);
        FL_EXPECT(fl_safetensors_find(st, "lora_unet_single_blocks_1_linear1.lora_up.weight"));
        FL_EXPECT(fl_safetensors_find(st, "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight"));
        FL_EXPECT(fl_safetensors_find(st, "lora_unet_time_in_in_layer.alpha"));
        FL_EXPECT(fl_safetensors_count(st) == 3 * l->n_pairs);
        fl_safetensors_close(st);
    }
    fl_lora_free(l);
    fl_flux_free(m);
}

/* A kohya .alpha different from the rank scales by alpha / rank; no .alpha means alpha = rank. */
static void test_kohya_alpha(void) {
    fl_flux_model *m = make_model();
    float *a = fl_test_randn(2 * (H + MLP), 1, 1.0f), *b = fl_test_randn(H * 2, 2, 1.0f);
    float *a2 = fl_test_randn(3 * H, 3, 1.0f), *b2 = fl_test_randn(6 * H * 3, 4, 1.0f);
    uint16_t alpha_bf16 = fl_f32_to_bf16(3.0f);
    tfile f = {0};
    put_mat(&f, "lora_unet_single_blocks_1_linear2.lora_down.weight", a, 2, H + MLP);
    put_mat(&f, "lora_unet_single_blocks_1_linear2.lora_up.weight", b, H, 2);
    put(&f, "lora_unet_single_blocks_1_linear2.alpha", FL_ST_BF16, &alpha_bf16, 0, 0, 0);
    put_mat(&f, "lora_unet_double_blocks_1_txt_mod_lin.lora_down.weight", a2, 3, H);
    put_mat(&f, "lora_unet_double_blocks_1_txt_mod_lin.lora_up.weight", b2, 6 * H, 3);
    char path[512];
    write_tfile(&f, "kohya_alpha.safetensors", path, sizeof path);
    fl_error err = {0};
    for (int with_model = 0; with_model < 2; with_model++) {
        fl_lora *l = load_with(path, with_model ? m : NULL, &err);
        FL_EXPECTF(l, "%s", err.message);
        if (!l) continue;
        const fl_flux_lora_pair *p = find_pair(l, "single_blocks.1.linear2", NULL);
        const fl_flux_lora_pair *q = find_pair(l, "double_blocks.1.txt_mod.lin", NULL);
        FL_EXPECT(p && p->rank == 2 && p->alpha == 3.0f && p->alpha / p->rank == 1.5f);
        FL_EXPECT(q && q->rank == 3 && q->alpha == 3.0f);
        FL_EXPECT(l->n_pairs == 2 && !strcmp(l->format, "kohya"));
        fl_lora_free(l);
    }
    free(a);
    free(b);
    free(a2);
    free(b2);
    fl_flux_free(m);
}

/* ---- PEFT / diffusers --------------------------------------------------------------------------- */

/* The alpha PEFT gives path from the saved LoraConfig JSON. */
static double config_alpha(json_t *cfg, const char *path) {
    json_t *pattern = json_object_get(json_object_get(cfg, "transformer.alpha_pattern"), path);
    return json_number_value(pattern ? pattern : json_object_get(cfg, "transformer.lora_alpha"));
}

static void expect_part(const fl_safetensors *st, json_t *cfg, const fl_lora *l, const char *module, const char *path,
                        int64_t row0, int64_t rows) {
    size_t i = 0;
    const fl_flux_lora_pair *p = find_pair(l, module, &i);
    char ka[160], kb[160];
    snprintf(ka, sizeof ka, "transformer.%s.lora_A.weight", path);
    snprintf(kb, sizeof kb, "transformer.%s.lora_B.weight", path);
    const fl_safetensors_info *a = fl_safetensors_find(st, ka), *b = fl_safetensors_find(st, kb);
    FL_EXPECTF(p && a && b, "%s / %s missing", ka, kb);
    if (!p || !a || !b) return;
    FL_EXPECTF(a->shape[0] == p->rank && a->shape[1] == l->dims[i].in, "%s shape", ka);
    FL_EXPECTF(b->shape[0] == rows && b->shape[1] == p->rank, "%s shape", kb);
    FL_EXPECTF(!memcmp(a->data, p->a, (size_t)(p->rank * l->dims[i].in) * sizeof(float)), "%s differs", ka);
    FL_EXPECTF(!memcmp(b->data, p->b + row0 * p->rank, (size_t)(rows * p->rank) * sizeof(float)), "%s rows", kb);
    FL_EXPECTF(config_alpha(cfg, path) == p->alpha, "%s: alpha %g in the config, %g in the adapter", path,
               config_alpha(cfg, path), (double)p->alpha);
}

static void test_peft_names(void) {
    fl_flux_model *m = make_model();
    fl_lora *l = random_lora(m, 21, false);
    char path[512];
    fl_error err = {0};
    tmp_path("peft_names.safetensors", path, sizeof path);
    FL_EXPECT(fl_lora_save(l, FL_LORA_PEFT, path, NULL, 0, &err) == 0);
    fl_safetensors *st = NULL;
    FL_EXPECT(fl_safetensors_open(path, &st, &err) == 0);
    if (!st) goto done;
    const char *fmt = fl_safetensors_metadata_get(st, "format");
    FL_EXPECT(fmt && !strcmp(fmt, "pt"));
    json_t *cfg = json_loads(fl_safetensors_metadata_get(st, "lora_adapter_metadata"), 0, NULL);
    FL_EXPECT(json_is_object(cfg));
    if (!cfg) cfg = json_object();
    const fl_flux_lora_pair *fin = find_pair(l, "final_layer.linear", NULL);
    FL_EXPECT(json_integer_value(json_object_get(cfg, "transformer.r")) == fin->rank);
    FL_EXPECT(json_number_value(json_object_get(cfg, "transformer.lora_alpha")) == fin->alpha);
    FL_EXPECT(!json_object_get(json_object_get(cfg, "transformer.alpha_pattern"), "proj_out"));
    static const struct {
        const char *module, *path;
        int64_t row0, rows;
    } parts[] = {
        {"double_blocks.0.img_attn.qkv", "transformer_blocks.0.attn.to_q", 0, H},
        {"double_blocks.0.img_attn.qkv", "transformer_blocks.0.attn.to_k", H, H},
        {"double_blocks.0.img_attn.qkv", "transformer_blocks.0.attn.to_v", 2 * H, H},
        {"double_blocks.1.txt_attn.qkv", "transformer_blocks.1.attn.add_q_proj", 0, H},
        {"double_blocks.1.txt_attn.qkv", "transformer_blocks.1.attn.add_k_proj", H, H},
        {"double_blocks.1.txt_attn.qkv", "transformer_blocks.1.attn.add_v_proj", 2 * H, H},
        {"double_blocks.0.img_attn.proj", "transformer_blocks.0.attn.to_out.0", 0, H},
        {"double_blocks.0.txt_attn.proj", "transformer_blocks.0.attn.to_add_out", 0, H},
        {"double_blocks.1.img_mlp.0", "transformer_blocks.1.ff.net.0.proj", 0, MLP},
        {"double_blocks.1.img_mlp.2", "transformer_blocks.1.ff.net.2", 0, H},
        {"double_blocks.0.txt_mlp.0", "transformer_blocks.0.ff_context.net.0.proj", 0, MLP},
        {"double_blocks.0.txt_mlp.2", "transformer_blocks.0.ff_context.net.2", 0, H},
        {"double_blocks.1.img_mod.lin", "transformer_blocks.1.norm1.linear", 0, 6 * H},
        {"double_blocks.1.txt_mod.lin", "transformer_blocks.1.norm1_context.linear", 0, 6 * H},
        {"single_blocks.1.linear1", "single_transformer_blocks.1.attn.to_q", 0, H},
        {"single_blocks.1.linear1", "single_transformer_blocks.1.attn.to_k", H, H},
        {"single_blocks.1.linear1", "single_transformer_blocks.1.attn.to_v", 2 * H, H},
        {"single_blocks.1.linear1", "single_transformer_blocks.1.proj_mlp", 3 * H, MLP},
        {"single_blocks.0.linear2", "single_transformer_blocks.0.proj_out", 0, H},
        {"single_blocks.0.modulation.lin", "single_transformer_blocks.0.norm.linear", 0, 3 * H},
        {"img_in", "x_embedder", 0, H},
        {"txt_in", "context_embedder", 0, H},
        {"final_layer.linear", "proj_out", 0, 16},
        {"time_in.in_layer", "time_text_embed.timestep_embedder.linear_1", 0, H},
        {"time_in.out_layer", "time_text_embed.timestep_embedder.linear_2", 0, H},
        {"guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1", 0, H},
        {"guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2", 0, H},
        {"vector_in.in_layer", "time_text_embed.text_embedder.linear_1", 0, H},
        {"vector_in.out_layer", "time_text_embed.text_embedder.linear_2", 0, H},
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        expect_part(st, cfg, l, parts[i].module, parts[i].path, parts[i].row0, parts[i].rows);
    /* Every module: 2 keys, fused ones 2 per part (2 x 2 qkv x 3, 2 linear1 x 4); no alpha tensors. */
    FL_EXPECT(fl_safetensors_count(st) == 2 * (l->n_pairs + 2 * 2 * 2 + 2 * 3));
    for (size_t i = 0; i < fl_safetensors_count(st); i++) {
        const char *name = fl_safetensors_at(st, i)->name;
        FL_EXPECTF(!strncmp(name, "transformer.", 12) && !strstr(name, ".alpha"), "unexpected key %s", name);
    }
    json_decref(cfg);
    fl_safetensors_close(st);
done:
    fl_lora_free(l);
    fl_flux_free(m);
}

/* final_layer.adaLN_modulation.1 is (shift, scale); diffusers' norm_out.linear (scale, shift). */
static void test_peft_final_layer_swap(void) {
    fl_flux_model *m = make_model();
    char path[512];
    fl_error err = {0};
    /* Export: the file's first half of rows is the adapter's second half. */
    float *a = fl_test_randn(2 * H, 31, 1.0f), *b = fl_test_randn(2 * H * 2, 32, 1.0f);
    fl_lora *l = fl_lora_new();
    FL_EXPECT(fl_lora_add(l, "final_layer.adaLN_modulation.1", 2, H, 2 * H, a, b, 5.0f, &err) == 0);
    tmp_path("swap_out.safetensors", path, sizeof path);
    FL_EXPECT(fl_lora_save(l, FL_LORA_PEFT, path, NULL, 0, &err) == 0);
    fl_safetensors *st = NULL;
    FL_EXPECT(fl_safetensors_open(path, &st, &err) == 0);
    const fl_safetensors_info *fb = st ? fl_safetensors_find(st, "transformer.norm_out.linear.lora_B.weight") : NULL;
    FL_EXPECT(fb && fb->shape[0] == 2 * H);
    if (fb) {
        const float *rows = fb->data;
        FL_EXPECT(!memcmp(rows, b + H * 2, H * 2 * sizeof(float)));
        FL_EXPECT(!memcmp(rows + H * 2, b, H * 2 * sizeof(float)));
    }
    fl_safetensors_close(st);
    /* Import of a hand-written diffusers file: the halves come back in the original order. */
    tfile f = {0};
    put_mat(&f, "transformer.norm_out.linear.lora_A.weight", a, 2, H);
    put_mat(&f, "transformer.norm_out.linear.lora_B.weight", b, 2 * H, 2);
    write_tfile(&f, "swap_in.safetensors", path, sizeof path);
    fl_lora *in = load_with(path, m, &err);
    FL_EXPECTF(in, "%s", err.message);
    const fl_flux_lora_pair *p = in ? find_pair(in, "final_layer.adaLN_modulation.1", NULL) : NULL;
    FL_EXPECT(p && p->rank == 2 && p->alpha == 2.0f);
    if (p) {
        FL_EXPECT(!memcmp(p->b, b + H * 2, H * 2 * sizeof(float)));
        FL_EXPECT(!memcmp(p->b + H * 2, b, H * 2 * sizeof(float)));
    }
    fl_lora_free(in);
    fl_lora_free(l);
    free(a);
    free(b);
    fl_flux_free(m);
}

/* Rows [row0, row0 + rows) of got's ΔW equal scale · B · A, and rows listed as zero are zero. */
static void expect_block(const char *what, const double *got, int64_t in, int64_t row0, int64_t rows, double scale,
                         const float *a, const float *b, int64_t rank) {
    double worst = 0, norm = 0;
    for (int64_t o = 0; o < rows; o++)
        for (int64_t i = 0; i < in; i++) {
            double want = 0;
            for (int64_t r = 0; r < rank && b; r++) want += scale * b[o * rank + r] * a[r * in + i];
            norm = fmax(norm, fabs(want));
            worst = fmax(worst, fabs(got[(row0 + o) * in + i] - want));
        }
    FL_EXPECTF(b ? worst <= 1e-6 * norm : worst == 0.0, "%s: error %.3g (scale %.3g)", what, worst, norm);
}

/* Only to_q and to_v adapted (different A's, ranks and alphas); linear1 with only to_k and
 * proj_mlp. Fused by rank concatenation with zero blocks for the absent parts. */
static void write_partial_peft(const char *name, char *path, size_t size, float **bufs) {
    for (int i = 0; i < 8; i++) bufs[i] = NULL;
    bufs[0] = fl_test_randn(2 * H, 41, 1.0f);   /* A_q [2, H] */
    bufs[1] = fl_test_randn(H * 2, 42, 1.0f);   /* B_q [H, 2] */
    bufs[2] = fl_test_randn(3 * H, 43, 1.0f);   /* A_v [3, H] */
    bufs[3] = fl_test_randn(H * 3, 44, 1.0f);   /* B_v [H, 3] */
    bufs[4] = fl_test_randn(2 * H, 45, 1.0f);   /* A_k (single 0) [2, H] */
    bufs[5] = fl_test_randn(H * 2, 46, 1.0f);   /* B_k [H, 2] */
    bufs[6] = fl_test_randn(1 * H, 47, 1.0f);   /* A_mlp [1, H] */
    bufs[7] = fl_test_randn(MLP * 1, 48, 1.0f); /* B_mlp [MLP, 1] */
    tfile f = {0};
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", bufs[0], 2, H);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", bufs[1], H, 2);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_v.lora_A.weight", bufs[2], 3, H);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_v.lora_B.weight", bufs[3], H, 3);
    put_mat(&f, "transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight", bufs[4], 2, H);
    put_mat(&f, "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight", bufs[5], H, 2);
    put_mat(&f, "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight", bufs[6], 1, H);
    put_mat(&f, "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight", bufs[7], MLP, 1);
    put_meta(&f, "lora_adapter_metadata",
             "{\"transformer.r\": 2, \"transformer.lora_alpha\": 4.0, \"transformer.alpha_pattern\": "
             "{\"transformer_blocks.0.attn.to_v\": 1.5, \"proj_mlp\": 3.0}}");
    write_tfile(&f, name, path, size);
}

static void test_peft_partial_parts(void) {
    fl_flux_model *m = make_model();
    float *bufs[8];
    char path[512];
    write_partial_peft("partial.safetensors", path, sizeof path, bufs);
    fl_error err = {0};
    for (int with_model = 0; with_model < 2; with_model++) {
        fl_lora *l = load_with(path, with_model ? m : NULL, &err);
        FL_EXPECTF(l, "%s", err.message);
        if (!l) continue;
        FL_EXPECT(!strcmp(l->format, "peft") && l->n_pairs == 2 && l->n_unmatched == 0);
        size_t i = 0;
        const fl_flux_lora_pair *qkv = find_pair(l, "double_blocks.0.img_attn.qkv", &i);
        FL_EXPECT(qkv && qkv->rank == 5 && l->dims[i].in == H && l->dims[i].out == 3 * H);
        if (qkv) {
            double *d = delta_w(qkv, H, 3 * H);
            expect_block("to_q", d, H, 0, H, 4.0 / 2, bufs[0], bufs[1], 2);
            expect_block("to_k (absent)", d, H, H, H, 0, NULL, NULL, 0);
            expect_block("to_v", d, H, 2 * H, H, 1.5 / 3, bufs[2], bufs[3], 3);
            free(d);
        }
        const fl_flux_lora_pair *l1 = find_pair(l, "single_blocks.0.linear1", &i);
        FL_EXPECT(l1 && l1->rank == 3 && l->dims[i].out == 3 * H + MLP);
        if (l1) {
            double *d = delta_w(l1, H, 3 * H + MLP);
            expect_block("linear1 q (absent)", d, H, 0, H, 0, NULL, NULL, 0);
            expect_block("linear1 k", d, H, H, H, 4.0 / 2, bufs[4], bufs[5], 2);
            expect_block("linear1 v (absent)", d, H, 2 * H, H, 0, NULL, NULL, 0);
            expect_block("proj_mlp", d, H, 3 * H, MLP, 3.0 / 1, bufs[6], bufs[7], 1);
            free(d);
        }
        fl_lora_free(l);
    }
    for (int k = 0; k < 8; k++) free(bufs[k]);
    fl_flux_free(m);
}

/* Parts with different A's and one scale: rank concatenated, B unscaled, alpha = scale · rank.
 * Parts sharing one A with different alphas: rank kept, scales folded into B. */
static void test_peft_fusion_cases(void) {
    fl_flux_model *m = make_model();
    float *a1 = fl_test_randn(2 * H, 51, 1.0f), *a2 = fl_test_randn(2 * H, 52, 1.0f);
    float *b1 = fl_test_randn(H * 2, 53, 1.0f), *b2 = fl_test_randn(H * 2, 54, 1.0f);
    float *b3 = fl_test_randn(H * 2, 55, 1.0f);
    float alpha_k = 1.0f;
    tfile f = {0};
    put_mat(&f, "transformer.transformer_blocks.1.attn.add_q_proj.lora_A.weight", a1, 2, H);
    put_mat(&f, "transformer.transformer_blocks.1.attn.add_q_proj.lora_B.weight", b1, H, 2);
    put_mat(&f, "transformer.transformer_blocks.1.attn.add_k_proj.lora_A.weight", a2, 2, H);
    put_mat(&f, "transformer.transformer_blocks.1.attn.add_k_proj.lora_B.weight", b2, H, 2);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", a1, 2, H);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", b1, H, 2);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_k.lora_A.weight", a1, 2, H);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_k.lora_B.weight", b2, H, 2);
    put(&f, "transformer.transformer_blocks.0.attn.to_k.alpha", FL_ST_F32, &alpha_k, 0, 0, 0);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_v.lora_A.weight", a1, 2, H);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_v.lora_B.weight", b3, H, 2);
    char path[512];
    write_tfile(&f, "fusion.safetensors", path, sizeof path);
    fl_error err = {0};
    fl_lora *l = load_with(path, m, &err);
    FL_EXPECTF(l, "%s", err.message);
    if (l) {
        /* One alpha tensor (1.0): diffusers gives its value to every key without one. */
        const fl_flux_lora_pair *txt = find_pair(l, "double_blocks.1.txt_attn.qkv", NULL);
        FL_EXPECT(txt && txt->rank == 4 && fabsf(txt->alpha - 2.0f) < 1e-6f); /* scale 1/2 times rank 4 */
        if (txt) {
            double *d = delta_w(txt, H, 3 * H);
            expect_block("add_q", d, H, 0, H, 0.5, a1, b1, 2);
            expect_block("add_k", d, H, H, H, 0.5, a2, b2, 2);
            expect_block("add_v (absent)", d, H, 2 * H, H, 0, NULL, NULL, 0);
            free(d);
        }
        const fl_flux_lora_pair *img = find_pair(l, "double_blocks.0.img_attn.qkv", NULL);
        FL_EXPECT(img && img->rank == 2 && img->alpha == 1.0f && !memcmp(img->a, a1, 2 * H * sizeof(float)));
        if (img) {
            double *d = delta_w(img, H, 3 * H);
            expect_block("shared-A q", d, H, 0, H, 0.5, a1, b1, 2);
            expect_block("shared-A k", d, H, H, H, 0.5, a1, b2, 2);
            expect_block("shared-A v", d, H, 2 * H, H, 0.5, a1, b3, 2);
            free(d);
        }
    }
    fl_lora_free(l);
    /* Shared A, different alphas (metadata pattern on to_k): folded, alpha = rank. */
    tfile g = {0};
    for (size_t i = 4; i < 11; i++)
        if (i != 8) g.t[g.n++] = f.t[i];
    put_meta(&g, "lora_adapter_metadata", "{\"lora_alpha\": 8, \"alpha_pattern\": {\"to_k\": 2}}");
    write_tfile(&g, "fusion_fold.safetensors", path, sizeof path);
    l = load_with(path, m, &err);
    FL_EXPECTF(l, "%s", err.message);
    const fl_flux_lora_pair *img = l ? find_pair(l, "double_blocks.0.img_attn.qkv", NULL) : NULL;
    FL_EXPECT(img && img->rank == 2 && img->alpha == 2.0f);
    if (img) {
        double *d = delta_w(img, H, 3 * H);
        expect_block("folded q", d, H, 0, H, 4.0, a1, b1, 2);
        expect_block("folded k", d, H, H, H, 1.0, a1, b2, 2);
        expect_block("folded v", d, H, 2 * H, H, 4.0, a1, b3, 2);
        free(d);
    }
    fl_lora_free(l);
    free(a1);
    free(a2);
    free(b1);
    free(b2);
    free(b3);
    fl_flux_free(m);
}

/* Alpha sources: none (alpha = rank), bare keys with bare config, rslora, prefixes, DoRA refused. */
static void test_peft_alpha_sources(void) {
    fl_flux_model *m = make_model();
    float *a = fl_test_randn(4 * 16, 61, 1.0f), *b = fl_test_randn(H * 4, 62, 1.0f);
    char path[512];
    fl_error err = {0};
    static const struct {
        const char *a_key, *b_key, *meta;
        float alpha; /* expected; 0 = an error is expected */
    } cases[] = {
        {"transformer.x_embedder.lora_A.weight", "transformer.x_embedder.lora_B.weight", NULL, 4.0f},
        {"x_embedder.lora_A.weight", "x_embedder.lora_B.weight", "{\"lora_alpha\": 6}", 6.0f},
        {"transformer.x_embedder.lora_A.weight", "transformer.x_embedder.lora_B.weight",
         "{\"transformer.lora_alpha\": 3, \"transformer.use_rslora\": true}", 6.0f}, /* 3 / sqrt(4) = 6 / 4 */
        {"base_model.model.x_embedder.lora_A.weight", "base_model.model.x_embedder.lora_B.weight",
         "{\"r\": 4, \"lora_alpha\": 2, \"alpha_pattern\": {\"x_emb.*\": 5}}", 5.0f},
        {"transformer.x_embedder.lora_A.weight", "transformer.x_embedder.lora_B.weight", "{\"use_dora\": true}",
         0.0f},
        {"transformer.x_embedder.lora_A.weight", "transformer.x_embedder.lora_B.weight", "{\"lora_alpha\": \"x\"}",
         0.0f},
        {"transformer.x_embedder.lora_A.weight", "transformer.x_embedder.lora_B.weight", "not json", 0.0f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tfile f = {0};
        put_mat(&f, cases[c].a_key, a, 4, 16);
        put_mat(&f, cases[c].b_key, b, H, 4);
        if (cases[c].meta) put_meta(&f, "lora_adapter_metadata", cases[c].meta);
        write_tfile(&f, "alpha_src.safetensors", path, sizeof path);
        fl_lora *l = load_with(path, m, &err);
        if (cases[c].alpha == 0.0f) {
            FL_EXPECTF(!l && strstr(err.message, "lora_adapter_metadata"), "case %zu: %s", c,
                       l ? "loaded" : err.message);
        } else {
            FL_EXPECTF(l && l->n_pairs == 1 && !strcmp(l->pairs[0].module, "img_in"), "case %zu: %s", c,
                       l ? "wrong module" : err.message);
            if (l && l->n_pairs == 1)
                FL_EXPECTF(fabsf(l->pairs[0].alpha - cases[c].alpha) < 1e-5f, "case %zu: alpha %g, expected %g", c,
                           (double)l->pairs[0].alpha, (double)cases[c].alpha);
        }
        fl_lora_free(l);
    }
    free(a);
    free(b);
    fl_flux_free(m);
}

/* ---- unmatched keys and malformed files ---------------------------------------------------------- */

static void test_unmatched(void) {
    fl_flux_model *m = make_model();
    float *a = fl_test_randn(2 * H, 71, 1.0f), *b = fl_test_randn(H * 2, 72, 1.0f);
    tfile f = {0};
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight", a, 2, H);
    put_mat(&f, "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight", b, H, 2);
    put_mat(&f, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", a, 2, H);
    put_mat(&f, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", b, H, 2);
    put_mat(&f, "transformer.transformer_blocks.7.attn.to_out.0.lora_A.weight", a, 2, H); /* no block 7 */
    put_mat(&f, "transformer.transformer_blocks.7.attn.to_out.0.lora_B.weight", b, H, 2);
    put_mat(&f, "transformer.pos_embed.extra", a, 2, H);
    char path[512];
    write_tfile(&f, "unmatched.safetensors", path, sizeof path);
    fl_error err = {0};
    for (int with_model = 0; with_model < 2; with_model++) {
        fl_lora *l = load_with(path, with_model ? m : NULL, &err);
        FL_EXPECTF(l, "%s", err.message);
        if (!l) continue;
        FL_EXPECT(l->n_pairs == (with_model ? 1u : 2u));
        FL_EXPECT(find_pair(l, "double_blocks.0.img_attn.proj", NULL));
        FL_EXPECT(l->n_unmatched == (with_model ? 3u : 2u));
        bool te = false, other = false, block7 = false;
        for (size_t i = 0; i < l->n_unmatched; i++) {
            te |= strstr(l->unmatched[i], "text_encoder.") != NULL;
            other |= !strcmp(l->unmatched[i], "transformer.pos_embed.extra");
            block7 |= strstr(l->unmatched[i], "blocks.7.") != NULL;
        }
        FL_EXPECT(te && other && block7 == (bool)with_model);
        fl_lora_free(l);
    }
    free(a);
    free(b);
    fl_flux_free(m);
}


/* A canonical adapter on a fused Linear whose rows do not split into the diffusers parts (a qkv
 * of 7 outputs: no q, k, v thirds) converts to kohya but not to PEFT: one clear error naming the
 * module, and no output file (the service answers it with 422 unsupported_layout). */
static void test_peft_unconvertible(void) {
    float *a = fl_test_randn(2 * H, 91, 1.0f), *b = fl_test_randn(7 * 2, 92, 1.0f);
    tfile f = {0};
    put_mat(&f, "double_blocks.0.img_attn.qkv.lora_A.weight", a, 2, H);
    put_mat(&f, "double_blocks.0.img_attn.qkv.lora_B.weight", b, 7, 2);
    char src[512], out[512];
    write_tfile(&f, "odd_qkv.safetensors", src, sizeof src);
    fl_error err = {0};
    tmp_path("odd_qkv_kohya.safetensors", out, sizeof out);
    FL_EXPECTF(fl_lora_convert_file(src, FL_LORA_KOHYA, out, &err) == 0, "kohya: %s", err.message);
    tmp_path("odd_qkv_peft.safetensors", out, sizeof out);
    unlink(out);
    err = (fl_error){0};
    FL_EXPECT(fl_lora_convert_file(src, FL_LORA_PEFT, out, &err) != 0);
    FL_EXPECTF(strstr(err.message, "double_blocks.0.img_attn.qkv") && strstr(err.message, "does not split"),
               "message: %s", err.message);
    FL_EXPECTF(access(out, F_OK) != 0, "a PEFT file was left at %s", out);
    free(a);
    free(b);
}

static void test_malformed(void) {
    fl_flux_model *m = make_model();
    float *a = fl_test_randn(3 * H, 81, 1.0f), *b = fl_test_randn(3 * H * 3, 82, 1.0f), two[2] = {1, 2};
    int32_t ints[3 * H] = {0};
    int64_t alpha_int = 4;
    char path[512];
    const char *qa = "double_blocks.0.img_attn.qkv.lora_A.weight", *qb = "double_blocks.0.img_attn.qkv.lora_B.weight";
    const char *ka = "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight";
    const char *kb = "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight";
    const char *kal = "lora_unet_double_blocks_0_img_attn_qkv.alpha";
    const char *pa = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight";
    const char *pb = "transformer.transformer_blocks.0.attn.to_q.lora_B.weight";
    tfile f;

    f = (tfile){0}; /* A without B */
    put_mat(&f, qa, a, 3, H);
    expect_error_naming(write_tfile(&f, "bad1.safetensors", path, sizeof path), m, qa);
    f = (tfile){0}; /* B without A */
    put_mat(&f, qb, b, 3 * H, 3);
    expect_error_naming(write_tfile(&f, "bad2.safetensors", path, sizeof path), m, qb);
    f = (tfile){0}; /* ranks disagree */
    put_mat(&f, qa, a, 3, H);
    put_mat(&f, qb, b, 3 * H / 2, 6);
    expect_error_naming(write_tfile(&f, "bad3.safetensors", path, sizeof path), m, qa);
    f = (tfile){0}; /* non-scalar alpha, canonical */
    put_mat(&f, qa, a, 3, H);
    put_mat(&f, qb, b, 3 * H, 3);
    put(&f, "double_blocks.0.img_attn.qkv.alpha", FL_ST_F32, two, 1, 2, 0);
    expect_error_naming(write_tfile(&f, "bad4.safetensors", path, sizeof path), m,
                        "double_blocks.0.img_attn.qkv.alpha");
    f = (tfile){0}; /* non-scalar alpha, kohya */
    put_mat(&f, ka, a, 3, H);
    put_mat(&f, kb, b, 3 * H, 3);
    put(&f, kal, FL_ST_F32, two, 1, 2, 0);
    expect_error_naming(write_tfile(&f, "bad5.safetensors", path, sizeof path), m, kal);
    f = (tfile){0}; /* integer alpha */
    put_mat(&f, ka, a, 3, H);
    put_mat(&f, kb, b, 3 * H, 3);
    put(&f, kal, FL_ST_I64, &alpha_int, 0, 0, 0);
    expect_error_naming(write_tfile(&f, "bad6.safetensors", path, sizeof path), m, kal);
    f = (tfile){0}; /* integer matrix */
    put(&f, qa, FL_ST_I32, ints, 2, 3, H);
    put_mat(&f, qb, b, 3 * H, 3);
    expect_error_naming(write_tfile(&f, "bad7.safetensors", path, sizeof path), m, qa);
    f = (tfile){0}; /* kohya B without A */
    put_mat(&f, kb, b, 3 * H, 3);
    expect_error_naming(write_tfile(&f, "bad8.safetensors", path, sizeof path), m, kb);
    f = (tfile){0}; /* PEFT part with the wrong number of rows */
    put_mat(&f, pa, a, 3, H);
    put_mat(&f, pb, b, H - 1, 3);
    expect_error_naming(write_tfile(&f, "bad9.safetensors", path, sizeof path), m, pb);
    f = (tfile){0}; /* the same part twice (with and without the prefix) */
    put_mat(&f, pa, a, 3, H);
    put_mat(&f, pb, b, H, 3);
    put_mat(&f, pa + 12, a, 3, H);
    put_mat(&f, pb + 12, b, H, 3);
    expect_error_naming(write_tfile(&f, "bad10.safetensors", path, sizeof path), m, "both adapt");
    f = (tfile){0}; /* a fused module and one of its parts */
    put_mat(&f, pa, a, 3, H);
    put_mat(&f, pb, b, H, 3);
    put_mat(&f, "transformer.double_blocks.0.img_attn.qkv.lora_A.weight", a, 3, H);
    put_mat(&f, "transformer.double_blocks.0.img_attn.qkv.lora_B.weight", b, 3 * H, 3);
    expect_error_naming(write_tfile(&f, "bad11.safetensors", path, sizeof path), m, "double_blocks.0.img_attn.qkv");
    f = (tfile){0}; /* PEFT alpha tensor with a bad dtype */
    put_mat(&f, pa, a, 3, H);
    put_mat(&f, pb, b, H, 3);
    put(&f, "transformer.transformer_blocks.0.attn.to_q.alpha", FL_ST_I64, &alpha_int, 0, 0, 0);
    expect_error_naming(write_tfile(&f, "bad12.safetensors", path, sizeof path), m,
                        "transformer.transformer_blocks.0.attn.to_q.alpha");

    /* The writer refuses what it cannot express, naming the module. */
    fl_error err = {0};
    fl_lora *l = fl_lora_new();
    FL_EXPECT(fl_lora_add(l, "double_blocks.0.img_attn.qkv", 3, H, 3 * H - 1, a, b, 1.0f, &err) == 0);
    FL_EXPECT(fl_lora_save(l, FL_LORA_PEFT, tmp_path("no.safetensors", path, sizeof path), NULL, 0, &err) == -1 &&
              strstr(err.message, "double_blocks.0.img_attn.qkv"));
    FL_EXPECT(access(path, F_OK) != 0); /* nothing written */
    fl_lora_free(l);
    tmp_path("other.safetensors", path, sizeof path);
    l = fl_lora_new();
    FL_EXPECT(fl_lora_add(l, "not_a_flux.module", 3, H, H, a, b, 1.0f, &err) == 0);
    FL_EXPECT(fl_lora_add(l, "not_a_flux.module", 3, H, H, a, b, 1.0f, &err) == -1);
    FL_EXPECT(fl_lora_save(l, FL_LORA_PEFT, path, NULL, 0, &err) == -1 && strstr(err.message, "not_a_flux.module"));
    FL_EXPECT(fl_lora_save(l, FL_LORA_CANONICAL, path, NULL, 0, &err) == 0);
    l->pairs[0].alpha = -1.0f;
    FL_EXPECT(fl_lora_save(l, FL_LORA_KOHYA, path, NULL, 0, &err) == -1 && strstr(err.message, "not_a_flux.module"));
    fl_lora_free(l);
    free(a);
    free(b);
    fl_flux_free(m);
}

/* ---- the model's output --------------------------------------------------------------------------- */

typedef struct inputs {
    float *img, *txt, *y, t, g, img_ids[6 * 3], txt_ids[4 * 3];
    fl_tensor img_t, txt_t, y_t, t_t, g_t;
    fl_flux_inputs in;
} inputs;

static void make_inputs(inputs *x) {
    memset(x, 0, sizeof *x);
    x->img = fl_test_randn(6 * 16, 91, 1.0f);
    x->txt = fl_test_randn(4 * 20, 92, 1.0f);
    x->y = fl_test_randn(12, 93, 1.0f);
    x->t = 0.4f;
    x->g = 3.0f;
    for (int i = 0; i < 6; i++) {
        x->img_ids[i * 3 + 1] = (float)(i / 3);
        x->img_ids[i * 3 + 2] = (float)(i % 3);
    }
    x->img_t = fl_tensor_f32_3d(x->img, 1, 6, 16);
    x->txt_t = fl_tensor_f32_3d(x->txt, 1, 4, 20);
    x->y_t = fl_tensor_f32_2d(x->y, 1, 12);
    x->t_t = fl_tensor_f32_1d(&x->t, 1);
    x->g_t = fl_tensor_f32_1d(&x->g, 1);
    x->in = (fl_flux_inputs){&x->img_t, &x->txt_t, &x->y_t, &x->t_t, &x->g_t, x->img_ids, x->txt_ids};
}

static void free_inputs(inputs *x) {
    free(x->img);
    free(x->txt);
    free(x->y);
}

/* The model's output (malloc'ed) with adapter l at multiplier (none when l is NULL). */
static float *run(fl_flux_model *m, const inputs *x, const fl_lora *l, float multiplier, int64_t *n) {
    fl_error err = {0};
    fl_flux_clear_adapters(m);
    if (l) FL_EXPECTF(fl_flux_add_adapter(m, l->pairs, l->n_pairs, multiplier, false, &err) >= 0, "%s", err.message);
    fl_tensor out;
    if (fl_flux_forward(m, &x->in, &out, &err) != 0) {
        FL_EXPECTF(0, "forward: %s", err.message);
        return NULL;
    }
    *n = fl_tensor_numel(&out);
    float *copy = malloc((size_t)*n * sizeof *copy);
    memcpy(copy, out.data, (size_t)*n * sizeof *copy);
    return copy;
}

static void compare_outputs(const char *what, const float *got, const float *want, const float *base, int64_t n) {
    double scale = 0, change = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(want[i]));
        change = fmax(change, fabs(want[i] - base[i]));
        worst = fmax(worst, fabs((double)got[i] - want[i]));
    }
    printf("  %-34s max |err| / scale = %.2e (adapter moved the output by %.3g)\n", what, worst / scale, change);
    FL_EXPECTF(change > 1e-3 * scale, "%s: the adapter barely changes the output", what);
    FL_EXPECT_CLOSE(what, got, want, (size_t)n, 1e-5 * scale, 0.0);
}

/* Each layout's import drives the model exactly as the original adapter does. */
static void test_forward_equivalence(void) {
    fl_flux_model *m = make_model();
    fl_lora *orig = random_lora(m, 300, false);
    inputs x;
    make_inputs(&x);
    int64_t n = 0, n2 = 0;
    float *base = run(m, &x, NULL, 0, &n), *want = run(m, &x, orig, 0.7f, &n);
    for (int layout = FL_LORA_CANONICAL; layout <= FL_LORA_PEFT && base && want; layout++) {
        char path[512], what[64];
        fl_error err = {0};
        tmp_path("fwd.safetensors", path, sizeof path);
        FL_EXPECT(fl_lora_save(orig, (fl_lora_layout)layout, path, NULL, 0, &err) == 0);
        fl_lora *back = load_with(path, m, &err);
        FL_EXPECTF(back, "%s", err.message);
        float *got = back ? run(m, &x, back, 0.7f, &n2) : NULL;
        snprintf(what, sizeof what, "forward via %s", fl_lora_layout_name((fl_lora_layout)layout));
        if (got && n2 == n) compare_outputs(what, got, want, base, n);
        free(got);
        fl_lora_free(back);
    }
    free(base);
    free(want);
    free_inputs(&x);
    fl_lora_free(orig);
    fl_flux_free(m);
}

/* W += multiplier · scale · B · A for rows [row0, row0 + rows) of a Linear. */
static void merge_part(fl_flux_model *m, const char *module, int64_t row0, int64_t rows, double scale,
                       const float *a, const float *b, int64_t rank, float multiplier) {
    fl_flux_linear *lin = fl_flux_find_linear(m, module);
    float *w = lin->weight.data;
    for (int64_t o = 0; o < rows; o++)
        for (int64_t i = 0; i < lin->in; i++) {
            double d = 0;
            for (int64_t r = 0; r < rank; r++) d += b[o * rank + r] * (double)a[r * lin->in + i];
            w[(row0 + o) * lin->in + i] += (float)(multiplier * scale * d);
        }
}

/* A fused import of separate parts equals merging each part into its rows of the base weight. */
static void test_forward_fused_parts(void) {
    fl_flux_model *m = make_model();
    float *bufs[8];
    char path[512];
    write_partial_peft("fwd_partial.safetensors", path, sizeof path, bufs);
    fl_error err = {0};
    fl_lora *l = load_with(path, m, &err);
    FL_EXPECTF(l, "%s", err.message);
    inputs x;
    make_inputs(&x);
    int64_t n = 0, n2 = 0;
    float *base = run(m, &x, NULL, 0, &n);
    float *got = l ? run(m, &x, l, 1.3f, &n) : NULL;
    fl_flux_clear_adapters(m);
    merge_part(m, "double_blocks.0.img_attn.qkv", 0, H, 4.0 / 2, bufs[0], bufs[1], 2, 1.3f);
    merge_part(m, "double_blocks.0.img_attn.qkv", 2 * H, H, 1.5 / 3, bufs[2], bufs[3], 3, 1.3f);
    merge_part(m, "single_blocks.0.linear1", H, H, 4.0 / 2, bufs[4], bufs[5], 2, 1.3f);
    merge_part(m, "single_blocks.0.linear1", 3 * H, MLP, 3.0, bufs[6], bufs[7], 1, 1.3f);
    float *want = run(m, &x, NULL, 0, &n2);
    if (got && want && base && n == n2) compare_outputs("fused parts vs merged weights", got, want, base, n);
    free(base);
    free(got);
    free(want);
    for (int k = 0; k < 8; k++) free(bufs[k]);
    free_inputs(&x);
    fl_lora_free(l);
    fl_flux_free(m);
}

/* ---- names ------------------------------------------------------------------------------------------ */

static void test_name_mapping(void) {
    fl_flux_model *m = make_model();
    fl_lora_diffusers_map map, back;
    int part = -1;
    /* Every Linear of the model maps to diffusers names that map back to it. */
    for (size_t i = 0; i < fl_flux_linear_count(m); i++) {
        const fl_flux_linear *lin = fl_flux_linear_at(m, i);
        FL_EXPECTF(fl_lora_is_flux_module(lin->name), "%s", lin->name);
        FL_EXPECTF(fl_lora_diffusers_names(lin->name, &map), "%s has no diffusers name", lin->name);
        int64_t covered = 0;
        for (int j = 0; j < map.n_parts; j++) {
            FL_EXPECT(fl_lora_diffusers_source(map.parts[j], &back, &part) && part == j &&
                      !strcmp(back.module, lin->name));
            int64_t row0 = 0, rows = 0;
            FL_EXPECTF(fl_lora_part_rows(&map, j, lin->in, lin->out, &row0, &rows) == 0 && row0 == covered,
                       "%s part %d", lin->name, j);
            covered += rows;
        }
        FL_EXPECTF(covered == lin->out, "%s: parts cover %lld of %lld rows", lin->name, (long long)covered,
                   (long long)lin->out);
        char kohya[160], module[FL_FLUX_NAME_MAX];
        fl_lora_kohya_name(lin->name, kohya, sizeof kohya);
        FL_EXPECTF(fl_lora_kohya_resolve(kohya, module, sizeof module) && !strcmp(module, lin->name), "%s", kohya);
    }
    FL_EXPECT(fl_lora_diffusers_names("double_blocks.12.txt_mlp.0", &map) &&
              !strcmp(map.parts[0], "transformer_blocks.12.ff_context.net.0.proj"));
    FL_EXPECT(fl_lora_diffusers_source("single_transformer_blocks.37.proj_mlp", &map, &part) && part == 3 &&
              !strcmp(map.module, "single_blocks.37.linear1"));
    FL_EXPECT(!fl_lora_diffusers_source("transformer_blocks.01.attn.to_q", &map, &part));
    FL_EXPECT(!fl_lora_diffusers_source("transformer_blocks.1.attn.to_qx", &map, &part));
    FL_EXPECT(!fl_lora_is_flux_module("double_blocks.x.img_attn.qkv"));
    fl_lora_layout layout;
    FL_EXPECT(fl_lora_layout_from_name("diffusers", &layout) == 0 && layout == FL_LORA_PEFT);
    FL_EXPECT(fl_lora_layout_from_name("pickle", &layout) == -1);
    fl_flux_free(m);
}

int main(void) {
    fl_error err = {0};
    cpu = fl_ctx_create(fl_device_cpu(), &err);
    snprintf(tmp_dir, sizeof tmp_dir, "%s/fl_lora_formats_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!cpu || !mkdtemp(tmp_dir)) {
        fprintf(stderr, "setup failed: %s\n", cpu ? "mkdtemp" : err.message);
        return 1;
    }
    FL_RUN(test_name_mapping);
    FL_RUN(test_roundtrip_canonical);
    FL_RUN(test_roundtrip_canonical_uniform);
    FL_RUN(test_roundtrip_kohya);
    FL_RUN(test_roundtrip_peft);
    FL_RUN(test_roundtrip_peft_uniform);
    FL_RUN(test_canonical_alpha_storage);
    FL_RUN(test_kohya_names);
    FL_RUN(test_kohya_alpha);
    FL_RUN(test_peft_names);
    FL_RUN(test_peft_final_layer_swap);
    FL_RUN(test_peft_partial_parts);
    FL_RUN(test_peft_fusion_cases);
    FL_RUN(test_peft_alpha_sources);
    FL_RUN(test_unmatched);
    FL_RUN(test_peft_unconvertible);
    FL_RUN(test_malformed);
    FL_RUN(test_forward_equivalence);
    FL_RUN(test_forward_fused_parts);
    remove_tmp_dir();
    fl_ctx_destroy(cpu);
    return fl_test_finish();
}
