/*
 * test_ae.c — the C autoencoder against the PyTorch reference (tests/reference/ae_reference.py,
 * fixtures from make_ae_fixtures.py), and loading it from what users have.
 *
 * Goldens (tiny random AE: ch 32, ch_mult [1, 2], one resnet block per level, z 4, a 24x40 image,
 * batch 2, BF16 weights; the reference ran in float64): encode to packed tokens and to latents,
 * decode from tokens and from latents, encode-then-decode; every comparison allows max |error|
 * <= 1e-5 of the tensor's largest magnitude. Packing and unpacking are exact permutations.
 * Layouts: the same weights written under diffusers' AutoencoderKL names (taken from diffusers
 * itself, tests/fixtures/ae_tiny.diffusers.json, with its attention projections as Linear [C, C])
 * into a vae/ folder with diffusers' config.json, in a FLUX.1-style folder, split into shards
 * named by an index, and under a first_stage_model. prefix inside a combined checkpoint, give
 * bitwise the outputs of the BFL file. Also: loading one half, releasing
 * a half, planning once per size, the memory estimate against the arena a real pass plans, and bad
 * input (truncated file, missing / misshaped / unexpected / F8 tensor, a file with no autoencoder,
 * sizes and shapes that do not fit) answered with one clear error and no crash.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/safetensors.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/ae.h"

#define REL_TOL 1e-5

static fl_ctx *cpu;
static char tmpdir[] = "/tmp/fl_ae_test_XXXXXX";

static const char *fixture(const char *name, char *buf, size_t size) {
    char rel[128];
    snprintf(rel, sizeof rel, "fixtures/%s", name);
    return fl_test_data_path(rel, buf, size);
}

typedef struct golden {
    float *image, *latents, *tokens, *dec_latents, *dec_tokens, *decoded, *roundtrip;
    int64_t image_shape[8], lat_shape[8], tok_shape[8];
    int64_t n_image, n_lat, n_tok;
} golden;

static golden G;

static bool load_golden(void) {
    char path[512];
    fixture("ae_tiny.io.safetensors", path, sizeof path);
    int nd;
    G.image = fl_test_load_f32(path, "image", &G.n_image, G.image_shape, &nd);
    G.latents = fl_test_load_f32(path, "latents", &G.n_lat, G.lat_shape, &nd);
    G.tokens = fl_test_load_f32(path, "tokens", &G.n_tok, G.tok_shape, &nd);
    G.dec_latents = fl_test_load_f32(path, "dec_latents", NULL, NULL, NULL);
    G.dec_tokens = fl_test_load_f32(path, "dec_tokens", NULL, NULL, NULL);
    G.decoded = fl_test_load_f32(path, "decoded", NULL, NULL, NULL);
    G.roundtrip = fl_test_load_f32(path, "roundtrip", NULL, NULL, NULL);
    return G.image && G.latents && G.tokens && G.dec_latents && G.dec_tokens && G.decoded && G.roundtrip;
}

static double max_abs(const float *x, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static void expect_close(const char *what, const float *got, const float *want, int64_t n) {
    double scale = max_abs(want, n);
    FL_EXPECT_CLOSE(what, got, want, (size_t)n, REL_TOL * (scale > 0 ? scale : 1.0), 0.0);
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
    printf("     %s: max |error| %.2e (%.2e of max |ref| %.3f)\n", what, worst, worst / scale, scale);
}

static fl_ae *load_ok(const char *path, unsigned parts) {
    fl_error err = {0};
    fl_ae *ae = NULL;
    FL_EXPECTF(fl_ae_load(cpu, path, parts, &ae, &err) == 0, "load %s: %s", path, err.message);
    return ae;
}

static fl_ae *load_fixture(unsigned parts) {
    char path[512];
    return load_ok(fixture("ae_tiny.safetensors", path, sizeof path), parts);
}

/* Outputs of one model on the golden inputs: tokens, latents, decoded (from tokens), roundtrip. */
typedef struct outputs {
    float *tokens, *latents, *decoded, *decoded_lat, *roundtrip;
} outputs;

static void run_all(fl_ae *ae, outputs *o) {
    fl_error err = {0};
    const int64_t *is = G.image_shape, *ls = G.lat_shape, *ts = G.tok_shape;
    o->tokens = calloc((size_t)G.n_tok, sizeof(float));
    o->latents = calloc((size_t)G.n_lat, sizeof(float));
    o->decoded = calloc((size_t)G.n_image, sizeof(float));
    o->decoded_lat = calloc((size_t)G.n_image, sizeof(float));
    o->roundtrip = calloc((size_t)G.n_image, sizeof(float));
    fl_tensor image = fl_tensor_f32_4d(G.image, is[0], is[1], is[2], is[3]);
    fl_tensor tokens = fl_tensor_f32_3d(o->tokens, ts[0], ts[1], ts[2]);
    fl_tensor latents = fl_tensor_f32_4d(o->latents, ls[0], ls[1], ls[2], ls[3]);
    FL_EXPECTF(fl_ae_encode(ae, &image, &tokens, &err) == 0, "encode: %s", err.message);
    FL_EXPECTF(fl_ae_encode_latents(ae, &image, &latents, &err) == 0, "encode_latents: %s", err.message);
    fl_tensor dec_tokens = fl_tensor_f32_3d(G.dec_tokens, ts[0], ts[1], ts[2]);
    fl_tensor dec_latents = fl_tensor_f32_4d(G.dec_latents, ls[0], ls[1], ls[2], ls[3]);
    fl_tensor out = fl_tensor_f32_4d(o->decoded, is[0], is[1], is[2], is[3]);
    FL_EXPECTF(fl_ae_decode(ae, &dec_tokens, &out, &err) == 0, "decode: %s", err.message);
    out.data = o->decoded_lat;
    FL_EXPECTF(fl_ae_decode_latents(ae, &dec_latents, &out, &err) == 0, "decode_latents: %s", err.message);
    out.data = o->roundtrip;
    FL_EXPECTF(fl_ae_decode_latents(ae, &latents, &out, &err) == 0, "roundtrip: %s", err.message);
}

static void free_outputs(outputs *o) {
    free(o->tokens);
    free(o->latents);
    free(o->decoded);
    free(o->decoded_lat);
    free(o->roundtrip);
}

static outputs reference_outputs; /* of the BFL file, for the layout tests */
static void expect_load_error(const char *path, unsigned parts, const char *needle);

/* ---- goldens -------------------------------------------------------------------------------------- */

static void test_golden(void) {
    fl_ae *ae = load_fixture(FL_AE_BOTH);
    if (!ae) return;
    const fl_ae_params *p = fl_ae_get_params(ae);
    FL_EXPECT(p->ch == 32 && p->n_levels == 2 && p->ch_mult[0] == 1 && p->ch_mult[1] == 2 && p->num_res_blocks == 1 &&
              p->z_channels == 4 && p->in_channels == 3 && p->out_ch == 3);
    FL_EXPECT(fabsf(p->scale_factor - 0.3611f) == 0.0f && fabsf(p->shift_factor - 0.1159f) == 0.0f);
    FL_EXPECT(fl_ae_downscale(p) == 2 && fl_ae_token_channels(p) == 16);
    outputs *o = &reference_outputs;
    run_all(ae, o);
    expect_close("encode -> tokens", o->tokens, G.tokens, G.n_tok);
    expect_close("encode -> latents", o->latents, G.latents, G.n_lat);
    expect_close("decode tokens", o->decoded, G.decoded, G.n_image);
    expect_close("decode latents", o->decoded_lat, G.decoded, G.n_image);
    expect_close("encode then decode", o->roundtrip, G.roundtrip, G.n_image);
    FL_EXPECTF(memcmp(o->decoded, o->decoded_lat, (size_t)G.n_image * sizeof(float)) == 0,
               "decoding tokens and their latents differ");
    fl_ae_free(ae);
}

static void test_pack_unpack(void) {
    fl_error err = {0};
    const int64_t *ls = G.lat_shape, *ts = G.tok_shape;
    float *tok = calloc((size_t)G.n_tok, sizeof(float)), *lat = calloc((size_t)G.n_lat, sizeof(float));
    fl_tensor l = fl_tensor_f32_4d(G.dec_latents, ls[0], ls[1], ls[2], ls[3]);
    fl_tensor t = fl_tensor_f32_3d(tok, ts[0], ts[1], ts[2]);
    FL_EXPECTF(fl_ae_pack(cpu, &l, &t, &err) == 0, "%s", err.message);
    FL_EXPECT(memcmp(tok, G.dec_tokens, (size_t)G.n_tok * sizeof(float)) == 0);
    fl_tensor back = fl_tensor_f32_4d(lat, ls[0], ls[1], ls[2], ls[3]);
    FL_EXPECTF(fl_ae_unpack(cpu, &t, &back, &err) == 0, "%s", err.message);
    FL_EXPECT(memcmp(lat, G.dec_latents, (size_t)G.n_lat * sizeof(float)) == 0);
    /* odd latents and a token count that does not match are refused */
    fl_tensor odd = fl_tensor_f32_4d(lat, 1, 4, 3, 2);
    FL_EXPECT(fl_ae_pack(cpu, &odd, &t, &err) == -1 && strstr(err.message, "not even"));
    fl_tensor short_t = fl_tensor_f32_3d(tok, ts[0], ts[1] - 1, ts[2]);
    FL_EXPECT(fl_ae_pack(cpu, &l, &short_t, &err) == -1 && strstr(err.message, "tokens has shape"));
    free(tok);
    free(lat);
}

/* ---- layouts ------------------------------------------------------------------------------------- */

static void expect_same_outputs(const char *what, fl_ae *ae) {
    if (!ae) return;
    outputs o;
    run_all(ae, &o);
    const outputs *r = &reference_outputs;
    FL_EXPECTF(memcmp(o.tokens, r->tokens, (size_t)G.n_tok * sizeof(float)) == 0, "%s: tokens differ", what);
    FL_EXPECTF(memcmp(o.latents, r->latents, (size_t)G.n_lat * sizeof(float)) == 0, "%s: latents differ", what);
    FL_EXPECTF(memcmp(o.decoded, r->decoded, (size_t)G.n_image * sizeof(float)) == 0, "%s: decode differs", what);
    FL_EXPECTF(memcmp(o.roundtrip, r->roundtrip, (size_t)G.n_image * sizeof(float)) == 0, "%s: roundtrip differs",
               what);
    free_outputs(&o);
}

/* Writes the tiny weights renamed by `rename` (NULL: unchanged) plus `extra` entries. */
typedef struct renamed {
    char *name;
    int64_t shape[8];
    int ndim;
    const char *source; /* BFL name */
} renamed;

static bool write_weights(const char *path, const renamed *r, size_t n, const char *prefix,
                          const fl_safetensors_entry *extra, size_t n_extra) {
    char src_path[512];
    fl_error err = {0};
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(fixture("ae_tiny.safetensors", src_path, sizeof src_path), &st, &err) != 0) {
        FL_EXPECTF(false, "%s", err.message);
        return false;
    }
    size_t count = r ? n : fl_safetensors_count(st);
    fl_safetensors_entry *entries = calloc(count + n_extra, sizeof *entries);
    char **names = calloc(count, sizeof *names);
    for (size_t i = 0; i < count; i++) {
        const fl_safetensors_info *info = r ? fl_safetensors_find(st, r[i].source) : fl_safetensors_at(st, i);
        FL_EXPECTF(info != NULL, "fixture lacks %s", r ? r[i].source : "?");
        if (!info) return false;
        const char *name = r ? r[i].name : info->name;
        size_t len = strlen(prefix) + strlen(name) + 1;
        names[i] = malloc(len);
        snprintf(names[i], len, "%s%s", prefix, name);
        entries[i].name = names[i];
        entries[i].dtype = info->dtype;
        entries[i].ndim = r ? r[i].ndim : info->ndim;
        memcpy(entries[i].shape, r ? r[i].shape : info->shape, sizeof entries[i].shape);
        entries[i].data = info->data;
    }
    for (size_t i = 0; i < n_extra; i++) entries[count + i] = extra[i];
    bool ok = fl_safetensors_write(path, entries, count + n_extra, NULL, 0, &err) == 0;
    FL_EXPECTF(ok, "write %s: %s", path, err.message);
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
    free(entries);
    fl_safetensors_close(st);
    return ok;
}

/* The diffusers names of the tiny weights, from diffusers itself (tests/fixtures). */
static renamed *diffusers_names(size_t *n, char **config_text) {
    char path[512];
    fl_error err = {0};
    json_t *root = fl_config_load_file(fixture("ae_tiny.diffusers.json", path, sizeof path), &err);
    FL_EXPECTF(root != NULL, "%s", err.message);
    if (!root) return NULL;
    json_t *tensors = json_object_get(root, "tensors");
    *n = json_array_size(tensors);
    renamed *r = calloc(*n, sizeof *r);
    for (size_t i = 0; i < *n; i++) {
        json_t *t = json_array_get(tensors, i), *shape = json_array_get(t, 1);
        r[i].name = strdup(json_string_value(json_array_get(t, 0)));
        r[i].source = strdup(json_string_value(json_array_get(t, 2)));
        r[i].ndim = (int)json_array_size(shape);
        for (int k = 0; k < r[i].ndim; k++) r[i].shape[k] = json_integer_value(json_array_get(shape, (size_t)k));
    }
    *config_text = json_dumps(json_object_get(root, "config"), JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    return r;
}

static void free_renamed(renamed *r, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(r[i].name);
        free((char *)r[i].source);
    }
    free(r);
}

static bool write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

static void test_diffusers_folder(void) {
    size_t n = 0;
    char *config = NULL;
    renamed *r = diffusers_names(&n, &config);
    if (!r) return;
    size_t linear = 0;
    for (size_t i = 0; i < n; i++) linear += r[i].ndim == 2;
    FL_EXPECTF(linear == 8, "%zu attention projections stored as Linear, expected 8", linear);
    char root[600], vae[640], weights[700], cfg[700];
    snprintf(root, sizeof root, "%s/diffusers", tmpdir);
    snprintf(vae, sizeof vae, "%s/vae", root);
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", vae);
    snprintf(cfg, sizeof cfg, "%s/config.json", vae);
    FL_EXPECT(mkdir(root, 0700) == 0 && mkdir(vae, 0700) == 0);
    FL_EXPECT(write_weights(weights, r, n, "", NULL, 0));
    FL_EXPECT(write_text(cfg, config));
    fl_ae *ae = load_ok(root, FL_AE_BOTH); /* the model folder: finds vae/ */
    expect_same_outputs("diffusers vae/ folder", ae);
    fl_ae_free(ae);
    ae = load_ok(weights, FL_AE_DECODER); /* the weights file itself, one half */
    FL_EXPECT(ae && fl_ae_parts(ae) == FL_AE_DECODER);
    fl_ae_free(ae);

    /* config.json's factors are the ones used */
    char *shifted = strdup(config);
    char *at = strstr(shifted, "\"shift_factor\": 0.1159");
    FL_EXPECT(at != NULL);
    if (at) memcpy(at, "\"shift_factor\": 0.2159", strlen("\"shift_factor\": 0.2159"));
    FL_EXPECT(write_text(cfg, shifted));
    ae = load_ok(vae, FL_AE_BOTH);
    FL_EXPECT(ae && fabsf(fl_ae_get_params(ae)->shift_factor - 0.2159f) < 1e-7f);
    fl_ae_free(ae);
    /* a config.json that is not JSON: one line naming it */
    FL_EXPECT(write_text(cfg, "{\"scaling_factor\": "));
    fl_error err = {0};
    FL_EXPECT(fl_ae_load(cpu, vae, FL_AE_BOTH, &ae, &err) == -1 && ae == NULL);
    FL_EXPECTF(strstr(err.message, "config.json") != NULL, "got '%s'", err.message);
    free(shifted);
    free(config);
    free_renamed(r, n);
}

static void test_bfl_folder(void) {
    /* a FLUX.1 repository's root holds ae.safetensors next to the transformer */
    char root[600], link[700], src[512];
    snprintf(root, sizeof root, "%s/bfl", tmpdir);
    snprintf(link, sizeof link, "%s/ae.safetensors", root);
    char cwd[512];
    fixture("ae_tiny.safetensors", src, sizeof src);
    char abs_src[1100];
    if (src[0] == '/') snprintf(abs_src, sizeof abs_src, "%s", src);
    else snprintf(abs_src, sizeof abs_src, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", src);
    FL_EXPECT(mkdir(root, 0700) == 0 && symlink(abs_src, link) == 0);
    fl_ae *ae = load_ok(root, FL_AE_BOTH);
    expect_same_outputs("BFL folder", ae);
    fl_ae_free(ae);
}

static void test_sharded(void) {
    /* shards named by a model.safetensors.index.json: the encoder in one file, the decoder in
     * another (models/text/weights.h reads them as one table) */
    char src_path[512], dir[600], shard[2][700], index[700];
    fl_error err = {0};
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(fixture("ae_tiny.safetensors", src_path, sizeof src_path), &st, &err) != 0) {
        FL_EXPECTF(false, "%s", err.message);
        return;
    }
    snprintf(dir, sizeof dir, "%s/sharded", tmpdir);
    FL_EXPECT(mkdir(dir, 0700) == 0);
    size_t n = fl_safetensors_count(st);
    fl_safetensors_entry *e = calloc(n, sizeof *e);
    size_t len = 0, cap = 160 * n + 64; /* a name, a file name and quotes per tensor */
    char *json = malloc(cap);
    len += (size_t)snprintf(json + len, cap - len, "{\"weight_map\": {");
    for (int part = 0; part < 2; part++) {
        snprintf(shard[part], sizeof shard[part], "%s/model-0000%d-of-00002.safetensors", dir, part + 1);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            const fl_safetensors_info *info = fl_safetensors_at(st, i);
            if ((info->name[0] == 'e') != (part == 0)) continue;
            e[k] = (fl_safetensors_entry){info->name, info->dtype, info->ndim, {0}, info->data};
            memcpy(e[k].shape, info->shape, sizeof e[k].shape);
            k++;
            len += (size_t)snprintf(json + len, cap - len, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                                    len > 16 ? ", " : "", info->name, part + 1);
        }
        FL_EXPECT(fl_safetensors_write(shard[part], e, k, NULL, 0, &err) == 0);
    }
    snprintf(json + len, cap - len, "}}");
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    FL_EXPECT(write_text(index, json));
    fl_ae *ae = load_ok(dir, FL_AE_BOTH);
    expect_same_outputs("sharded", ae);
    fl_ae_free(ae);
    /* an index naming a shard that is not there */
    FL_EXPECT(unlink(shard[1]) == 0);
    expect_load_error(dir, FL_AE_BOTH, "model-00002-of-00002.safetensors");
    free(json);
    free(e);
    fl_safetensors_close(st);
}

static void test_prefixed_in_combined_checkpoint(void) {
    char path[600];
    snprintf(path, sizeof path, "%s/combined.safetensors", tmpdir);
    float other[6] = {1, 2, 3, 4, 5, 6};
    fl_safetensors_entry extra[2] = {
        {"model.diffusion_model.img_in.weight", FL_ST_F32, 2, {2, 3}, other},
        {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", FL_ST_F32, 2, {3, 2}, other}};
    FL_EXPECT(write_weights(path, NULL, 0, "first_stage_model.", extra, 2));
    fl_ae *ae = load_ok(path, FL_AE_BOTH);
    expect_same_outputs("first_stage_model. prefix", ae);
    fl_ae_free(ae);
}

/* ---- halves, planning and memory ------------------------------------------------------------------ */

static void test_parts_and_planning(void) {
    fl_ae *ae = load_fixture(FL_AE_DECODER);
    if (!ae) return;
    fl_error err = {0};
    const int64_t *is = G.image_shape, *ts = G.tok_shape;
    float *tok = calloc((size_t)G.n_tok, sizeof(float)), *img = calloc((size_t)G.n_image, sizeof(float));
    fl_tensor image = fl_tensor_f32_4d(G.image, is[0], is[1], is[2], is[3]);
    fl_tensor tokens = fl_tensor_f32_3d(tok, ts[0], ts[1], ts[2]);
    FL_EXPECT(fl_ae_encode(ae, &image, &tokens, &err) == -1 && strstr(err.message, "encoder is not loaded"));
    fl_tensor dec_tokens = fl_tensor_f32_3d(G.dec_tokens, ts[0], ts[1], ts[2]);
    fl_tensor out = fl_tensor_f32_4d(img, is[0], is[1], is[2], is[3]);
    FL_EXPECT(fl_ae_decode(ae, &dec_tokens, &out, &err) == 0);
    FL_EXPECT(memcmp(img, reference_outputs.decoded, (size_t)G.n_image * sizeof(float)) == 0);
    FL_EXPECT(fl_ae_plan_count(ae) == 1);
    size_t planned = fl_ae_activation_bytes(ae);
    FL_EXPECT(fl_ae_decode(ae, &dec_tokens, &out, &err) == 0 && fl_ae_plan_count(ae) == 1); /* known size */

    /* the estimate on a skeleton measures the same arena */
    fl_ae_memory mem;
    FL_EXPECTF(fl_ae_estimate_memory(fl_ae_get_params(ae), FL_DEVICE_CPU, FL_AE_DECODER, true, (int)is[2], (int)is[3],
                                     1, &mem, &err) == 0, "%s", err.message);
    FL_EXPECTF(mem.activations == planned, "estimate %zu bytes, the real pass planned %zu", mem.activations, planned);
    FL_EXPECT(mem.weights > 0 && mem.total == mem.weights + mem.activations + mem.scratch + mem.io);

    /* another size plans again; a smaller one after it fits the grown arena */
    float *big = calloc((size_t)(2 * 3 * 32 * 48), sizeof(float));
    float *big_tok = calloc((size_t)(2 * 8 * 12 * 16), sizeof(float));
    fl_tensor bt = fl_tensor_f32_3d(big_tok, 2, 8 * 12, 16), bo = fl_tensor_f32_4d(big, 2, 3, 32, 48);
    FL_EXPECT(fl_ae_decode(ae, &bt, &bo, &err) == 0 && fl_ae_plan_count(ae) == 2);
    FL_EXPECT(fl_ae_activation_bytes(ae) > planned);
    FL_EXPECT(fl_ae_decode(ae, &dec_tokens, &out, &err) == 0 && fl_ae_plan_count(ae) == 2);
    FL_EXPECT(memcmp(img, reference_outputs.decoded, (size_t)G.n_image * sizeof(float)) == 0);

    fl_ae_release(ae, FL_AE_DECODER);
    FL_EXPECT(fl_ae_parts(ae) == 0);
    FL_EXPECT(fl_ae_decode(ae, &dec_tokens, &out, &err) == -1 && strstr(err.message, "decoder is not loaded"));
    fl_ae_free(ae);
    free(tok);
    free(img);
    free(big);
    free(big_tok);
}

static void test_caller_planning_mode(void) {
    /* a caller measuring a whole job in planning mode: the pass is measured, nothing is computed
     * or allocated */
    fl_ae *ae = load_fixture(FL_AE_DECODER);
    if (!ae) return;
    fl_error err = {0};
    const int64_t *is = G.image_shape, *ts = G.tok_shape;
    float *img = malloc((size_t)G.n_image * sizeof(float));
    for (int64_t i = 0; i < G.n_image; i++) img[i] = NAN;
    fl_tensor tokens = fl_tensor_f32_3d(G.dec_tokens, ts[0], ts[1], ts[2]);
    fl_tensor out = fl_tensor_f32_4d(img, is[0], is[1], is[2], is[3]);
    cpu->planning = true;
    FL_EXPECTF(fl_ae_decode(ae, &tokens, &out, &err) == 0, "%s", err.message);
    cpu->planning = false;
    FL_EXPECT(fl_ae_plan_count(ae) == 1 && fl_ae_activation_bytes(ae) == 0);
    bool untouched = true;
    for (int64_t i = 0; i < G.n_image; i++) untouched = untouched && isnan(img[i]);
    FL_EXPECT(untouched);
    FL_EXPECT(fl_ae_decode(ae, &tokens, &out, &err) == 0 && fl_ae_activation_bytes(ae) > 0);
    FL_EXPECT(memcmp(img, reference_outputs.decoded, (size_t)G.n_image * sizeof(float)) == 0);
    fl_ae_free(ae);
    free(img);
}

static void test_random_model(void) {
    /* create_random gives a usable model of any valid shape (benchmarks use it at real shapes) */
    fl_ae_params p;
    fl_ae_params_flux1(&p);
    p.ch = 32;
    p.ch_mult[0] = p.ch_mult[1] = p.ch_mult[2] = 1;
    p.ch_mult[3] = 2;
    p.num_res_blocks = 1;
    fl_ae *ae = fl_ae_create_random(cpu, &p, FL_AE_BOTH, 7);
    float *img = calloc(3 * 32 * 16, sizeof(float)), *tok = calloc(2 * 64, sizeof(float));
    for (int i = 0; i < 3 * 32 * 16; i++) img[i] = sinf((float)i);
    fl_tensor image = fl_tensor_f32_4d(img, 1, 3, 32, 16), tokens = fl_tensor_f32_3d(tok, 1, 2, 64);
    fl_error err = {0};
    FL_EXPECTF(fl_ae_encode(ae, &image, &tokens, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_ae_decode(ae, &tokens, &image, &err) == 0, "%s", err.message);
    bool finite = true;
    for (int i = 0; i < 3 * 32 * 16; i++) finite = finite && isfinite(img[i]);
    FL_EXPECT(finite);
    fl_ae_free(ae);
    free(img);
    free(tok);
}

/* ---- bad input ------------------------------------------------------------------------------------ */

static void expect_load_error(const char *path, unsigned parts, const char *needle) {
    fl_error err = {0};
    fl_ae *ae = (fl_ae *)1;
    int rc = fl_ae_load(cpu, path, parts, &ae, &err);
    FL_EXPECTF(rc == -1 && ae == NULL, "loading %s succeeded", path);
    FL_EXPECTF(strstr(err.message, needle) != NULL, "expected '%s' in '%s'", needle, err.message);
    FL_EXPECTF(strchr(err.message, '\n') == NULL, "multi-line error '%s'", err.message);
    printf("     error: %s\n", err.message);
    if (rc == 0) fl_ae_free(ae);
}

static void test_bad_files(void) {
    char src[512], path[600];
    fixture("ae_tiny.safetensors", src, sizeof src);
    /* truncated: the header promises more data than the file has */
    snprintf(path, sizeof path, "%s/truncated.safetensors", tmpdir);
    FILE *in = fopen(src, "rb"), *out = fopen(path, "wb");
    FL_EXPECT(in && out);
    if (in && out) {
        char buf[65536];
        size_t got = fread(buf, 1, sizeof buf, in);
        fwrite(buf, 1, got, out);
    }
    if (in) fclose(in);
    if (out) fclose(out);
    expect_load_error(path, FL_AE_BOTH, "truncated.safetensors");

    expect_load_error("/nonexistent/ae.safetensors", FL_AE_BOTH, "/nonexistent/ae.safetensors");
    char empty[600];
    snprintf(empty, sizeof empty, "%s/empty", tmpdir);
    FL_EXPECT(mkdir(empty, 0700) == 0);
    expect_load_error(empty, FL_AE_BOTH, "no autoencoder (looked for ae.safetensors");
    expect_load_error(tmpdir, FL_AE_BOTH, "several .safetensors files"); /* a folder of unrelated files */

    /* a missing, a misshaped, an unexpected and an F8 tensor, each named */
    size_t n = 0;
    char *config = NULL;
    renamed *r = diffusers_names(&n, &config);
    free(config);
    if (!r) return;
    for (size_t i = 0; i < n; i++) { /* back to BFL names */
        free(r[i].name);
        r[i].name = strdup(r[i].source);
        if (r[i].ndim == 2) r[i].shape[r[i].ndim++] = 1, r[i].shape[r[i].ndim++] = 1;
    }
    snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir);
    size_t k = 0;
    while (k < n && strcmp(r[k].name, "decoder.up.1.block.1.conv2.weight")) k++;
    FL_EXPECT(k < n);
    renamed saved = r[k];
    r[k] = r[n - 1];
    FL_EXPECT(write_weights(path, r, n - 1, "", NULL, 0));
    expect_load_error(path, FL_AE_BOTH, "missing tensor 'decoder.up.1.block.1.conv2.weight'");
    fl_error err = {0};
    fl_ae *ae = NULL;
    FL_EXPECTF(fl_ae_load(cpu, path, FL_AE_ENCODER, &ae, &err) == 0, "the encoder alone is complete: %s", err.message);
    fl_ae_free(ae);
    r[n - 1] = r[k];
    r[k] = saved;

    r[k].shape[1] = 32; /* conv2 of a 64-wide block given 32 input channels */
    FL_EXPECT(write_weights(path, r, n, "", NULL, 0));
    expect_load_error(path, FL_AE_BOTH,
                      "tensor 'decoder.up.1.block.1.conv2.weight' has shape [64, 32, 3, 3], expected [64, 64, 3, 3]");
    r[k].shape[1] = 64;

    unsigned char f8[4] = {0};
    fl_safetensors_entry extra = {"decoder.up.1.block.9.conv1.weight", FL_ST_U8, 1, {4}, f8};
    FL_EXPECT(write_weights(path, r, n, "", &extra, 1));
    expect_load_error(path, FL_AE_BOTH, "unexpected tensor 'decoder.up.1.block.9.conv1.weight'");
    fl_safetensors_entry quant = {"quant_conv.weight", FL_ST_U8, 1, {4}, f8};
    FL_EXPECT(write_weights(path, r, n, "", &quant, 1));
    expect_load_error(path, FL_AE_BOTH, "unexpected tensor 'quant_conv.weight'");

    /* an F8 tensor where a weight should be (the same bytes reinterpreted; the shape is right) */
    char src_path[512];
    fl_safetensors *st = NULL;
    FL_EXPECT(fl_safetensors_open(fixture("ae_tiny.safetensors", src_path, sizeof src_path), &st, &err) == 0);
    const fl_safetensors_info *info = st ? fl_safetensors_find(st, "encoder.conv_in.bias") : NULL;
    FL_EXPECT(info != NULL);
    if (info) {
        /* conv_in.bias replaced by an F8 tensor of the right shape */
        size_t b = 0;
        while (b < n && strcmp(r[b].name, "encoder.conv_in.bias")) b++;
        renamed keep = r[b];
        r[b] = r[n - 1];
        fl_safetensors_entry e8 = {"encoder.conv_in.bias", FL_ST_F8_E4M3, 1, {32}, info->data};
        FL_EXPECT(write_weights(path, r, n - 1, "", &e8, 1));
        expect_load_error(path, FL_AE_BOTH, "tensor 'encoder.conv_in.bias' has dtype F8_E4M3");
        r[n - 1] = r[b];
        r[b] = keep;
    }
    fl_safetensors_close(st);

    /* no autoencoder at all */
    float x[2] = {0};
    fl_safetensors_entry only = {"img_in.weight", FL_ST_F32, 2, {1, 2}, x};
    fl_safetensors_entry list[1] = {only};
    FL_EXPECT(fl_safetensors_write(path, list, 1, NULL, 0, &err) == 0);
    expect_load_error(path, FL_AE_BOTH, "no autoencoder");
    free_renamed(r, n);
}

static void test_bad_shapes(void) {
    fl_ae *ae = load_fixture(FL_AE_BOTH);
    if (!ae) return;
    fl_error err = {0};
    float *buf = calloc(3 * 40 * 40 * 2, sizeof(float)), *tok = calloc(2 * 100 * 16, sizeof(float));
    fl_tensor img = fl_tensor_f32_4d(buf, 1, 3, 26, 40), tokens = fl_tensor_f32_3d(tok, 1, 60, 16);
    FL_EXPECT(fl_ae_encode(ae, &img, &tokens, &err) == -1 && strstr(err.message, "multiples of 4"));
    img = fl_tensor_f32_4d(buf, 1, 4, 24, 40);
    FL_EXPECT(fl_ae_encode(ae, &img, &tokens, &err) == -1 && strstr(err.message, "image has shape [1, 4, 24, 40]"));
    img = fl_tensor_f32_4d(buf, 1, 3, 24, 40);
    tokens = fl_tensor_f32_3d(tok, 1, 61, 16);
    FL_EXPECT(fl_ae_encode(ae, &img, &tokens, &err) == -1 && strstr(err.message, "tokens has shape [1, 61, 16]"));
    tokens = fl_tensor_f32_3d(tok, 2, 60, 16); /* batch differs */
    FL_EXPECT(fl_ae_decode(ae, &tokens, &img, &err) == -1 && strstr(err.message, "tokens has shape"));
    fl_tensor huge = fl_tensor_f32_4d(buf, 1, 3, 4, 1 << 20);
    FL_EXPECT(fl_ae_decode(ae, &tokens, &huge, &err) == -1 && strstr(err.message, "image size"));
    fl_tensor f16 = img;
    f16.dtype = FL_F16;
    FL_EXPECT(fl_ae_encode(ae, &f16, &tokens, &err) == -1 && strstr(err.message, "dtype F16"));
    fl_tensor strided = fl_tensor_slice(&img, 3, 0, 20);
    FL_EXPECT(fl_ae_encode(ae, &strided, &tokens, &err) == -1 && strstr(err.message, "not contiguous"));
    fl_ae_memory mem;
    FL_EXPECT(fl_ae_estimate_memory(fl_ae_get_params(ae), FL_DEVICE_CPU, FL_AE_DECODER, true, 30, 40, 1, &mem, &err) ==
              -1);
    fl_ae_free(ae);
    free(buf);
    free(tok);
}

static void remove_tree(const char *dir) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
    cpu = fl_ctx_create(fl_device_cpu(), NULL);
    if (!cpu || !mkdtemp(tmpdir)) return 2;
    if (!load_golden()) {
        fl_test_run("load_golden", test_golden); /* records why */
        return fl_test_finish();
    }
    FL_RUN(test_golden);
    FL_RUN(test_pack_unpack);
    FL_RUN(test_diffusers_folder);
    FL_RUN(test_bfl_folder);
    FL_RUN(test_sharded);
    FL_RUN(test_prefixed_in_combined_checkpoint);
    FL_RUN(test_parts_and_planning);
    FL_RUN(test_caller_planning_mode);
    FL_RUN(test_random_model);
    FL_RUN(test_bad_files);
    FL_RUN(test_bad_shapes);
    remove_tree(tmpdir);
    free_outputs(&reference_outputs);
    fl_ctx_destroy(cpu);
    return fl_test_finish();
}
