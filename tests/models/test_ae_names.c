/*
 * test_ae_names.c — the autoencoder's names, layouts and memory at the real FLUX.1 shapes,
 * without weights: tests/fixtures/ae.manifest.json lists every tensor of BFL's ae.safetensors
 * (from the reference model at the published parameters) and ae-diffusers.manifest.json every
 * tensor of diffusers' AutoencoderKL at the FLUX.1 config (from diffusers itself).
 *
 * Checks: fl_ae_param_decls reproduces the BFL manifest (names, order, shapes, 244 tensors,
 * 83,819,683 parameters); both manifests are detected (layout, prefix, halves) with the FLUX.1
 * parameters and bind; the diffusers -> BFL map sends the diffusers manifest one-to-one onto the
 * BFL one with equal shapes (Linear [C, C] for the attention projections); older diffusers
 * attention names map too; names without a BFL counterpart do not; a missing, misshaped or
 * unexpected tensor is named in the file's own layout; a decoder-only or prefixed list is
 * recognised; hostile shapes are refused. The memory estimate at real shapes is reported and
 * checked for its order of magnitude and its scaling with the image.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "harness.h"
#include "models/ae.h"

typedef struct manifest {
    fl_tensor_header *entries;
    char **names;
    size_t n;
    int64_t parameters;
} manifest;

static bool load_manifest(const char *file, const char *prefix, manifest *out) {
    memset(out, 0, sizeof *out);
    char rel[96], path[512];
    snprintf(rel, sizeof rel, "fixtures/%s", file);
    fl_error err = {0};
    json_t *root = fl_config_load_file(fl_test_data_path(rel, path, sizeof path), &err);
    FL_EXPECTF(root != NULL, "%s", err.message);
    if (!root) return false;
    out->parameters = json_integer_value(json_object_get(root, "parameters"));
    json_t *tensors = json_object_get(root, "tensors");
    out->n = json_array_size(tensors);
    out->entries = calloc(out->n + 4, sizeof *out->entries);
    out->names = calloc(out->n + 4, sizeof *out->names);
    for (size_t i = 0; i < out->n; i++) {
        json_t *t = json_array_get(tensors, i), *shape = json_array_get(t, 1);
        const char *name = json_string_value(json_array_get(t, 0));
        size_t len = strlen(prefix) + strlen(name) + 1;
        out->names[i] = malloc(len);
        snprintf(out->names[i], len, "%s%s", prefix, name);
        out->entries[i].name = out->names[i];
        out->entries[i].ndim = (int)json_array_size(shape);
        for (int k = 0; k < out->entries[i].ndim; k++)
            out->entries[i].shape[k] = json_integer_value(json_array_get(shape, (size_t)k));
    }
    json_decref(root);
    return out->n > 0;
}

static void free_manifest(manifest *m) {
    for (size_t i = 0; i < m->n; i++) free(m->names[i]);
    free(m->names);
    free(m->entries);
}

static bool same_params(const fl_ae_params *a, const fl_ae_params *b) {
    bool ok = a->in_channels == b->in_channels && a->out_ch == b->out_ch && a->ch == b->ch &&
              a->n_levels == b->n_levels && a->num_res_blocks == b->num_res_blocks && a->z_channels == b->z_channels &&
              a->scale_factor == b->scale_factor && a->shift_factor == b->shift_factor;
    for (int i = 0; ok && i < a->n_levels; i++) ok = a->ch_mult[i] == b->ch_mult[i];
    return ok;
}

static void test_decls_match_bfl_manifest(void) {
    manifest m;
    if (!load_manifest("ae.manifest.json", "", &m)) return;
    fl_ae_params p;
    fl_ae_params_flux1(&p);
    size_t n = fl_ae_param_decls(&p, FL_AE_BOTH, NULL);
    FL_EXPECTF(n == 244 && m.n == 244, "%zu declarations, %zu in the manifest", n, m.n);
    fl_ae_param_decl *d = calloc(n, sizeof *d);
    fl_ae_param_decls(&p, FL_AE_BOTH, d);
    int64_t total = 0, enc = 0;
    for (size_t i = 0; i < n && i < m.n; i++) {
        FL_EXPECTF(!strcmp(d[i].name, m.entries[i].name), "decl %zu is %s, the manifest has %s", i, d[i].name,
                   m.entries[i].name);
        bool same = d[i].ndim == m.entries[i].ndim;
        for (int k = 0; same && k < d[i].ndim; k++) same = d[i].shape[k] == m.entries[i].shape[k];
        FL_EXPECTF(same, "%s: shape differs from the manifest", d[i].name);
        int64_t numel = 1;
        for (int k = 0; k < d[i].ndim; k++) numel *= d[i].shape[k];
        total += numel;
        if (!strncmp(d[i].name, "encoder.", 8)) enc += numel;
    }
    FL_EXPECTF(total == 83819683 && m.parameters == total, "%lld parameters", (long long)total);
    FL_EXPECTF(enc == 34274208, "encoder has %lld parameters", (long long)enc);
    FL_EXPECT(fl_ae_param_decls(&p, FL_AE_DECODER, NULL) + fl_ae_param_decls(&p, FL_AE_ENCODER, NULL) == 244);
    free(d);
    free_manifest(&m);
}

static void check_manifest(const char *file, const char *prefix, fl_ae_layout layout) {
    manifest m;
    if (!load_manifest(file, prefix, &m)) return;
    fl_ae_source src;
    fl_error err = {0};
    FL_EXPECTF(fl_ae_detect(m.entries, m.n, &src, &err) == 0, "%s: %s", file, err.message);
    FL_EXPECT(src.layout == layout && !strcmp(src.prefix, prefix) && src.parts == FL_AE_BOTH);
    fl_ae_params p;
    fl_ae_params_flux1(&p);
    FL_EXPECTF(same_params(&src.params, &p), "%s: inferred parameters differ from FLUX.1's", file);
    FL_EXPECTF(fl_ae_check_entries(m.entries, m.n, &src, FL_AE_BOTH, &err) == 0, "%s: %s", file, err.message);
    free_manifest(&m);
}

static void test_manifests_detected_and_bound(void) {
    check_manifest("ae.manifest.json", "", FL_AE_LAYOUT_BFL);
    check_manifest("ae.manifest.json", "first_stage_model.", FL_AE_LAYOUT_BFL);
    check_manifest("ae-diffusers.manifest.json", "", FL_AE_LAYOUT_DIFFUSERS);
    check_manifest("ae-diffusers.manifest.json", "vae.", FL_AE_LAYOUT_DIFFUSERS);
}

static void test_diffusers_map_onto_bfl(void) {
    manifest bfl, dif;
    if (!load_manifest("ae.manifest.json", "", &bfl) || !load_manifest("ae-diffusers.manifest.json", "", &dif)) return;
    FL_EXPECT(bfl.n == dif.n);
    bool *hit = calloc(bfl.n, sizeof *hit);
    size_t linear = 0;
    for (size_t i = 0; i < dif.n; i++) {
        char out[FL_AE_NAME_MAX];
        bool lin = false;
        if (fl_ae_diffusers_to_bfl(dif.entries[i].name, 4, out, sizeof out, &lin) != 0) {
            FL_EXPECTF(false, "%s does not map", dif.entries[i].name);
            continue;
        }
        size_t k = 0;
        while (k < bfl.n && strcmp(bfl.entries[k].name, out)) k++;
        FL_EXPECTF(k < bfl.n, "%s maps to %s, not in the BFL manifest", dif.entries[i].name, out);
        if (k == bfl.n) continue;
        FL_EXPECTF(!hit[k], "%s is the image of two diffusers names", out);
        hit[k] = true;
        const fl_tensor_header *a = &dif.entries[i], *b = &bfl.entries[k];
        bool same = lin ? a->ndim == 2 && b->ndim == 4 && a->shape[0] == b->shape[0] && a->shape[1] == b->shape[1] &&
                              b->shape[2] == 1 && b->shape[3] == 1
                        : a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim);
        FL_EXPECTF(same, "%s -> %s: shapes differ", a->name, out);
        linear += lin;
    }
    FL_EXPECTF(linear == 8, "%zu Linear attention projections (expected 8: q, k, v, out in both halves)", linear);
    free(hit);
    free_manifest(&bfl);
    free_manifest(&dif);
}

static void expect_map(const char *from, int levels, const char *to, bool linear) {
    char out[FL_AE_NAME_MAX];
    bool lin = !linear;
    int rc = fl_ae_diffusers_to_bfl(from, levels, out, sizeof out, &lin);
    if (!to) {
        FL_EXPECTF(rc == -1, "%s should not map (got %s)", from, rc == 0 ? out : "");
        return;
    }
    FL_EXPECTF(rc == 0 && !strcmp(out, to) && lin == linear, "%s -> %s (linear %d), expected %s (%d)", from,
               rc == 0 ? out : "(none)", lin, to, linear);
}

static void test_name_map_cases(void) {
    expect_map("decoder.up_blocks.0.resnets.2.conv_shortcut.weight", 4, "decoder.up.3.block.2.nin_shortcut.weight", false);
    /* names only: up.0 has no upsample, which the binding check reports (unexpected tensor) */
    expect_map("decoder.up_blocks.3.upsamplers.0.conv.bias", 4, "decoder.up.0.upsample.conv.bias", false);
    expect_map("decoder.up_blocks.2.upsamplers.0.conv.bias", 4, "decoder.up.1.upsample.conv.bias", false);
    expect_map("encoder.down_blocks.2.downsamplers.0.conv.weight", 4, "encoder.down.2.downsample.conv.weight", false);
    expect_map("encoder.mid_block.attentions.0.query.weight", 4, "encoder.mid.attn_1.q.weight", true); /* older */
    expect_map("encoder.mid_block.attentions.0.proj_attn.bias", 4, "encoder.mid.attn_1.proj_out.bias", false);
    expect_map("decoder.mid_block.attentions.0.group_norm.weight", 4, "decoder.mid.attn_1.norm.weight", false);
    expect_map("decoder.mid_block.resnets.1.norm2.bias", 4, "decoder.mid.block_2.norm2.bias", false);
    expect_map("encoder.conv_norm_out.weight", 4, "encoder.norm_out.weight", false);
    expect_map("decoder.conv_in.weight", 4, "decoder.conv_in.weight", false);
    expect_map("decoder.up_blocks.1.resnets.0.conv1.weight", 2, "decoder.up.0.block.0.conv1.weight", false);
    /* no BFL counterpart, or malformed */
    static const char *const bad[] = {
        "quant_conv.weight", "post_quant_conv.bias", "encoder.up_blocks.0.resnets.0.conv1.weight",
        "decoder.up_blocks.4.resnets.0.conv1.weight", "decoder.up_blocks.01.resnets.0.conv1.weight",
        "decoder.up_blocks.-1.resnets.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv3.weight",
        "decoder.up_blocks.0.resnets.0.conv1.weight.x", "decoder.mid_block.resnets.2.conv1.weight",
        "decoder.mid_block.attentions.1.to_q.weight", "decoder.mid_block.attentions.0.to_out.1.weight",
        "decoder.conv_in.scale", "encoder.", "", "decoder.up_blocks.99999999999999999999.resnets.0.conv1.weight"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) expect_map(bad[i], 4, NULL, false);
    char tiny[8];
    bool lin;
    FL_EXPECT(fl_ae_diffusers_to_bfl("decoder.conv_norm_out.weight", 4, tiny, sizeof tiny, &lin) == -1);
}

static void test_errors_name_the_tensor(void) {
    manifest m;
    if (!load_manifest("ae-diffusers.manifest.json", "vae.", &m)) return;
    fl_ae_source src;
    fl_error err = {0};
    FL_EXPECT(fl_ae_detect(m.entries, m.n, &src, &err) == 0);
    /* missing: named as diffusers names it */
    size_t k = 0;
    while (k < m.n && strcmp(m.entries[k].name, "vae.decoder.up_blocks.1.resnets.2.conv2.bias")) k++;
    FL_EXPECT(k < m.n);
    fl_tensor_header saved = m.entries[k];
    m.entries[k] = m.entries[m.n - 1];
    FL_EXPECT(fl_ae_check_entries(m.entries, m.n - 1, &src, FL_AE_BOTH, &err) == -1);
    FL_EXPECTF(strstr(err.message, "missing tensor 'vae.decoder.up_blocks.1.resnets.2.conv2.bias'"), "got '%s'",
               err.message);
    FL_EXPECT(fl_ae_check_entries(m.entries, m.n - 1, &src, FL_AE_ENCODER, &err) == 0); /* not needed */
    m.entries[m.n - 1] = m.entries[k];
    m.entries[k] = saved;
    /* misshaped */
    for (size_t i = 0; i < m.n; i++)
        if (!strcmp(m.entries[i].name, "vae.encoder.mid_block.attentions.0.to_k.weight")) m.entries[i].shape[1] = 511;
    FL_EXPECT(fl_ae_check_entries(m.entries, m.n, &src, FL_AE_BOTH, &err) == -1);
    FL_EXPECTF(strstr(err.message, "'vae.encoder.mid_block.attentions.0.to_k.weight' has shape [512, 511], expected "
                                   "[512, 512]"), "got '%s'", err.message);
    for (size_t i = 0; i < m.n; i++)
        if (!strcmp(m.entries[i].name, "vae.encoder.mid_block.attentions.0.to_k.weight")) {
            m.entries[i].shape[1] = 512; /* the conv form [C, C, 1, 1] is accepted too */
            m.entries[i].ndim = 4;
            m.entries[i].shape[2] = m.entries[i].shape[3] = 1;
        }
    FL_EXPECTF(fl_ae_check_entries(m.entries, m.n, &src, FL_AE_BOTH, &err) == 0, "%s", err.message);
    /* unexpected and duplicated */
    m.entries[m.n] = m.entries[0];
    m.entries[m.n].name = "vae.post_quant_conv.weight";
    FL_EXPECT(fl_ae_check_entries(m.entries, m.n + 1, &src, FL_AE_BOTH, &err) == -1);
    FL_EXPECTF(strstr(err.message, "unexpected tensor 'vae.post_quant_conv.weight'"), "got '%s'", err.message);
    m.entries[m.n].name = "vae.encoder.mid_block.attentions.0.key.weight"; /* the same tensor under its old name */
    m.entries[m.n].ndim = 2;
    m.entries[m.n].shape[0] = m.entries[m.n].shape[1] = 512;
    FL_EXPECT(fl_ae_check_entries(m.entries, m.n + 1, &src, FL_AE_BOTH, &err) == -1);
    FL_EXPECTF(strstr(err.message, "are the same autoencoder tensor"), "got '%s'", err.message);
    /* other models' tensors in a combined checkpoint are not the autoencoder's business */
    m.entries[m.n].name = "model.diffusion_model.img_in.weight";
    FL_EXPECTF(fl_ae_check_entries(m.entries, m.n + 1, &src, FL_AE_BOTH, &err) == 0, "%s", err.message);
    free_manifest(&m);
}

static void test_one_half_and_hostile_shapes(void) {
    manifest m;
    if (!load_manifest("ae.manifest.json", "", &m)) return;
    /* the decoder alone (what a generation worker loads) */
    size_t nd = 0;
    for (size_t i = 0; i < m.n; i++)
        if (!strncmp(m.entries[i].name, "decoder.", 8)) m.entries[nd++] = m.entries[i];
    fl_ae_source src;
    fl_error err = {0};
    FL_EXPECTF(fl_ae_detect(m.entries, nd, &src, &err) == 0, "%s", err.message);
    fl_ae_params p;
    fl_ae_params_flux1(&p);
    FL_EXPECT(src.parts == FL_AE_DECODER && same_params(&src.params, &p));
    FL_EXPECT(fl_ae_check_entries(m.entries, nd, &src, FL_AE_DECODER, &err) == 0);
    FL_EXPECT(fl_ae_check_entries(m.entries, nd, &src, FL_AE_BOTH, &err) == -1 &&
              strstr(err.message, "missing tensor 'encoder.conv_in.weight'"));
    free_manifest(&m);

    /* shapes a hostile file could claim */
    fl_tensor_header h[4] = {{"decoder.conv_in.weight", 4, {512, 16, 3, 3}},
                             {"decoder.up.0.block.0.conv1.weight", 4, {(int64_t)1 << 40, 512, 3, 3}},
                             {"decoder.up.0.block.1.conv1.weight", 4, {128, 128, 3, 3}},
                             {"decoder.conv_out.weight", 4, {3, 128, 3, 3}}};
    FL_EXPECT(fl_ae_detect(h, 4, &src, &err) == -1);
    FL_EXPECTF(strstr(err.message, "'decoder.up.0.block.0.conv1.weight' is not a convolution weight of a usable size"),
               "got '%s'", err.message);
    h[1].shape[0] = 100; /* not a multiple of GroupNorm's 32 groups */
    FL_EXPECT(fl_ae_detect(h, 4, &src, &err) == -1 && strstr(err.message, "multiple of 32"));
    h[1].ndim = 2;
    FL_EXPECT(fl_ae_detect(h, 4, &src, &err) == -1);
    h[1].ndim = 4;
    h[1].shape[0] = 128;
    FL_EXPECTF(fl_ae_detect(h, 4, &src, &err) == 0 && src.params.n_levels == 1 && src.params.ch == 128,
               "a one-level decoder: %s", err.message);
    h[0].shape[1] = 0; /* zero latent channels */
    FL_EXPECT(fl_ae_detect(h, 4, &src, &err) == -1);
    fl_tensor_header none[1] = {{"encoder.block.0.layer.0.SelfAttention.q.weight", 2, {4096, 4096}}};
    FL_EXPECT(fl_ae_detect(none, 1, &src, &err) == -1 && err.code == FL_EUNSUPPORTED);
    FL_EXPECT(fl_ae_detect(NULL, 0, &src, &err) == -1);
    fl_tensor_header mixed[3] = {{"decoder.conv_in.weight", 4, {512, 16, 3, 3}},
                                 {"decoder.up.0.block.0.conv1.weight", 4, {128, 256, 3, 3}},
                                 {"decoder.up_blocks.0.resnets.0.conv1.weight", 4, {512, 512, 3, 3}}};
    FL_EXPECT(fl_ae_detect(mixed, 3, &src, &err) == -1 && strstr(err.message, "mixes"));
}

static void test_memory_at_real_shapes(void) {
    fl_ae_params p;
    fl_ae_params_flux1(&p);
    fl_error err = {0};
    struct {
        fl_device_kind dev;
        bool decode;
        int side;
    } cases[] = {{FL_DEVICE_CPU, false, 512}, {FL_DEVICE_CPU, false, 1024}, {FL_DEVICE_CPU, true, 1024},
                 {FL_DEVICE_CUDA, false, 1024}, {FL_DEVICE_CUDA, true, 512}, {FL_DEVICE_CUDA, true, 1024}};
    fl_ae_memory mem[6];
    for (int i = 0; i < 6; i++) {
        unsigned parts = cases[i].decode ? FL_AE_DECODER : FL_AE_ENCODER;
        FL_EXPECTF(fl_ae_estimate_memory(&p, cases[i].dev, parts, cases[i].decode, cases[i].side, cases[i].side, 2,
                                         &mem[i], &err) == 0, "%s", err.message);
        printf("     %s %s %dx%d: weights %.1f MB, activations %.1f MB, scratch %.1f MB, total %.1f MB\n",
               cases[i].dev == FL_DEVICE_CPU ? "cpu f32 " : "cuda bf16", cases[i].decode ? "decode" : "encode",
               cases[i].side, cases[i].side, mem[i].weights / 1e6, mem[i].activations / 1e6, mem[i].scratch / 1e6,
               mem[i].total / 1e6);
    }
    /* weights: 34.3 M (encoder) and 49.5 M (decoder) parameters, 256-byte aligned per tensor */
    FL_EXPECT(mem[1].weights >= 34274208u * 4 && mem[1].weights < 34274208u * 4 + 244 * 256);
    FL_EXPECT(mem[5].weights >= 49545475u * 2 && mem[5].weights < 49545475u * 2 + 244 * 256);
    /* a 1024x1024 decode holds a few 128- and 256-channel full-size activations: 1.5-3 GB in f32 */
    FL_EXPECTF(mem[2].activations > 1500000000u && mem[2].activations < 3500000000u, "%zu", mem[2].activations);
    FL_EXPECT(mem[5].activations * 2 == mem[2].activations); /* bf16: exactly half the bytes */
    /* activations scale with the pixels (4x from 512 to 1024), up to the 256-byte rounding */
    double ratio = (double)mem[1].activations / (double)mem[0].activations;
    FL_EXPECTF(ratio > 3.99 && ratio < 4.01, "encode 1024 / 512 activations = %.3f", ratio);
    FL_EXPECT(mem[5].scratch > 0 && mem[5].scratch < 64u << 20);
}

int main(void) {
    FL_RUN(test_decls_match_bfl_manifest);
    FL_RUN(test_manifests_detected_and_bound);
    FL_RUN(test_diffusers_map_onto_bfl);
    FL_RUN(test_name_map_cases);
    FL_RUN(test_errors_name_the_tensor);
    FL_RUN(test_one_half_and_hostile_shapes);
    FL_RUN(test_memory_at_real_shapes);
    return fl_test_finish();
}
