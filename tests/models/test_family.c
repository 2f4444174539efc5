/*
 * test_family.c — model-family detection and binding checks against the manifests of the real
 * FLUX.1-dev and FLUX.1-schnell checkpoints (tests/fixtures/flux1-*.manifest.json: every tensor
 * name and shape, no data), with and without the "model.diffusion_model." prefix; a missing,
 * misshaped or unexpected tensor must be named in the error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "harness.h"
#include "models/family.h"

typedef struct manifest {
    fl_tensor_header *entries;
    char **names;
    size_t n;
    fl_flux_params params;
} manifest;

static bool load_manifest(const char *variant, const char *prefix, manifest *out) {
    memset(out, 0, sizeof *out);
    char rel[96], path[512];
    snprintf(rel, sizeof rel, "fixtures/flux1-%s.manifest.json", variant);
    fl_error err = {0};
    json_t *root = fl_config_load_file(fl_test_data_path(rel, path, sizeof path), &err);
    FL_EXPECTF(root != NULL, "%s", err.message);
    if (!root) return false;
    char *params_text = json_dumps(json_object_get(root, "flux_params"), JSON_COMPACT);
    FL_EXPECTF(fl_flux_params_from_json(params_text, &out->params, &err) == 0, "%s", err.message);
    free(params_text);
    json_t *tensors = json_object_get(root, "tensors");
    out->n = json_array_size(tensors);
    out->entries = calloc(out->n, sizeof *out->entries);
    out->names = calloc(out->n, sizeof *out->names);
    for (size_t i = 0; i < out->n; i++) {
        json_t *t = json_array_get(tensors, i);
        const char *name = json_string_value(json_array_get(t, 0));
        json_t *shape = json_array_get(t, 1);
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

static bool same_params(const fl_flux_params *a, const fl_flux_params *b) {
    bool ok = a->in_channels == b->in_channels && a->out_channels == b->out_channels &&
              a->vec_in_dim == b->vec_in_dim && a->context_in_dim == b->context_in_dim &&
              a->hidden_size == b->hidden_size && a->mlp_ratio == b->mlp_ratio && a->num_heads == b->num_heads &&
              a->depth == b->depth && a->depth_single_blocks == b->depth_single_blocks && a->n_axes == b->n_axes &&
              a->theta == b->theta && a->qkv_bias == b->qkv_bias && a->guidance_embed == b->guidance_embed;
    for (int i = 0; ok && i < a->n_axes; i++) ok = a->axes_dim[i] == b->axes_dim[i];
    return ok;
}

static void check_variant(const char *variant, const char *prefix, size_t expected_count) {
    manifest m;
    if (!load_manifest(variant, prefix, &m)) return;
    FL_EXPECTF(m.n == expected_count, "%s manifest has %zu tensors", variant, m.n);
    fl_error err = {0};
    fl_family_info info;
    FL_EXPECTF(fl_detect_family(m.entries, m.n, &info, &err) == 0, "detect: %s", err.message);
    FL_EXPECT(info.family == FL_FAMILY_FLUX);
    FL_EXPECT(info.variant && !strcmp(info.variant, variant));
    FL_EXPECT(!strcmp(info.prefix, prefix));
    FL_EXPECTF(same_params(&info.flux, &m.params), "inferred FluxParams differ from the published ones");
    FL_EXPECTF(fl_flux_check_entries(m.entries, m.n, prefix, &m.params, &err) == 0, "bind: %s", err.message);
    FL_EXPECT(fl_flux_param_decls(&m.params, NULL) == m.n);
    free_manifest(&m);
}

static void test_dev_recognised(void) { check_variant("dev", "", 780); }
static void test_schnell_recognised(void) { check_variant("schnell", "", 776); }
static void test_prefixed_checkpoint(void) { check_variant("dev", "model.diffusion_model.", 780); }

static void test_missing_tensor_named(void) {
    manifest m;
    if (!load_manifest("dev", "", &m)) return;
    /* drop single_blocks.20.linear2.weight */
    size_t k = 0;
    for (; k < m.n && strcmp(m.entries[k].name, "single_blocks.20.linear2.weight"); k++) {}
    FL_EXPECT(k < m.n);
    m.entries[k] = m.entries[m.n - 1];
    fl_error err = {0};
    FL_EXPECT(fl_flux_check_entries(m.entries, m.n - 1, "", &m.params, &err) == -1);
    FL_EXPECTF(strstr(err.message, "missing tensor 'single_blocks.20.linear2.weight'") != NULL, "got '%s'",
               err.message);
    free_manifest(&m);
}

static void test_misshaped_tensor_named(void) {
    manifest m;
    if (!load_manifest("dev", "", &m)) return;
    for (size_t i = 0; i < m.n; i++)
        if (!strcmp(m.entries[i].name, "double_blocks.7.txt_attn.qkv.weight")) m.entries[i].shape[0] = 9215;
    fl_error err = {0};
    FL_EXPECT(fl_flux_check_entries(m.entries, m.n, "", &m.params, &err) == -1);
    FL_EXPECTF(strstr(err.message, "'double_blocks.7.txt_attn.qkv.weight' has shape [9215, 3072], expected [9216, 3072]"),
               "got '%s'", err.message);
    free_manifest(&m);
}

static void test_unexpected_tensor_named(void) {
    manifest m;
    if (!load_manifest("schnell", "", &m)) return;
    m.entries = realloc(m.entries, (m.n + 1) * sizeof *m.entries);
    m.entries[m.n] = m.entries[0];
    m.entries[m.n].name = "double_blocks.19.img_mod.lin.weight";
    fl_error err = {0};
    FL_EXPECT(fl_flux_check_entries(m.entries, m.n + 1, "", &m.params, &err) == -1);
    FL_EXPECTF(strstr(err.message, "unexpected tensor 'double_blocks.19.img_mod.lin.weight'"), "got '%s'",
               err.message);
    free_manifest(&m);
}

static void test_not_flux(void) {
    fl_tensor_header h[2] = {{"model.diffusion_model.input_blocks.0.0.weight", 4, {320, 4, 3, 3}},
                             {"first_stage_model.decoder.conv_in.weight", 4, {512, 4, 3, 3}}};
    fl_family_info info;
    fl_error err = {0};
    FL_EXPECT(fl_detect_family(h, 2, &info, &err) == -1 && err.code == FL_EUNSUPPORTED);
    FL_EXPECT(info.family == FL_FAMILY_UNKNOWN);
    FL_EXPECT(fl_detect_family(NULL, 0, &info, &err) == -1);
}

int main(void) {
    FL_RUN(test_dev_recognised);
    FL_RUN(test_schnell_recognised);
    FL_RUN(test_prefixed_checkpoint);
    FL_RUN(test_missing_tensor_named);
    FL_RUN(test_misshaped_tensor_named);
    FL_RUN(test_unexpected_tensor_named);
    FL_RUN(test_not_flux);
    return fl_test_finish();
}
