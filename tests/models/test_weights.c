/*
 * test_weights.c — loading what users have (models/weights.h): dtype conversion and fp8
 * dequantization with per-tensor scales, sharded files behind an index and folders, prefixes,
 * the diffusers transformer mapped onto the original Flux names, and every kind of bad input
 * answered with one clear line.
 *
 * The diffusers mapping is checked on a synthetic state dict made from a fixture transformer:
 * every original tensor is cut into its diffusers parts (q/k/v, proj_mlp, swapped halves, norm
 * scales) and written under diffusers names; the model loaded from it must hold bitwise the
 * weights of the model loaded from the original file, and a file missing one part must be
 * refused naming that part.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/tensor.h"
#include "harness.h"
#include "kernels/context.h"
#include "models/flux.h"
#include "models/flux_names.h"
#include "models/weights.h"

static char tmpdir[256];

static const char *tmp_path(const char *name, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s", tmpdir, name);
    return buf;
}

static void write_text(const char *name, const char *text) {
    char p[512];
    FILE *f = fopen(tmp_path(name, p, sizeof p), "w");
    FL_CHECK(f);
    fputs(text, f);
    fclose(f);
}

static void test_fp8_decoding(void) {
    FL_EXPECT(fl_f8_e4m3_to_f32(0x38) == 1.0f);
    FL_EXPECT(fl_f8_e4m3_to_f32(0xb8) == -1.0f);
    FL_EXPECT(fl_f8_e4m3_to_f32(0x7e) == 448.0f);              /* the largest finite value */
    FL_EXPECT(fl_f8_e4m3_to_f32(0x01) == ldexpf(1.0f, -9));    /* the smallest subnormal */
    FL_EXPECT(fl_f8_e4m3_to_f32(0x08) == ldexpf(1.0f, -6));    /* the smallest normal */
    FL_EXPECT(fl_f8_e4m3_to_f32(0x3c) == 1.5f);
    FL_EXPECT(isnan(fl_f8_e4m3_to_f32(0x7f)) && isnan(fl_f8_e4m3_to_f32(0xff)));
    FL_EXPECT(fl_f8_e5m2_to_f32(0x3c) == 1.0f);
    FL_EXPECT(fl_f8_e5m2_to_f32(0x7b) == 57344.0f);
    FL_EXPECT(fl_f8_e5m2_to_f32(0x01) == ldexpf(1.0f, -16));
    FL_EXPECT(isinf(fl_f8_e5m2_to_f32(0x7c)));
    /* Every E4M3 code against the definition. */
    for (int c = 0; c < 256; c++) {
        int e = (c >> 3) & 15, m = c & 7;
        if (e == 15 && m == 7) continue;
        double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
        if (c & 0x80) v = -v;
        FL_EXPECTF(fl_f8_e4m3_to_f32((uint8_t)c) == (float)v, "E4M3 0x%02x", c);
    }
}

/* A file with one tensor of each float dtype, an fp8 weight with its scale, and the marker. */
static void test_dtypes_and_scales(void) {
    float f32[4] = {1.5f, -2.0f, 0.25f, 3.0f};
    uint16_t f16[4], bf16[4];
    for (int i = 0; i < 4; i++) f16[i] = fl_f32_to_f16(f32[i]), bf16[i] = fl_f32_to_bf16(f32[i]);
    double f64[4] = {1.5, -2.0, 0.25, 3.0};
    uint8_t e4m3[4] = {0x3c, 0xc0, 0x28, 0x44}; /* 1.5, -2, 0.25, 3 */
    uint8_t e5m2[4] = {0x3e, 0xc0, 0x34, 0x42}; /* 1.5, -2, 0.25, 3 */
    float scale = 0.5f, marker = 0.0f;
    fl_safetensors_entry e[] = {
        {"a.f32", FL_ST_F32, 2, {2, 2}, f32},          {"a.f16", FL_ST_F16, 1, {4}, f16},
        {"a.bf16", FL_ST_BF16, 1, {4}, bf16},          {"a.f64", FL_ST_F64, 1, {4}, f64},
        {"q.weight", FL_ST_F8_E4M3, 2, {2, 2}, e4m3},  {"q.scale_weight", FL_ST_F32, 0, {0}, &scale},
        {"r.weight", FL_ST_F8_E5M2, 1, {4}, e5m2},     {"scaled_fp8", FL_ST_F32, 0, {0}, &marker},
    };
    char path[512];
    fl_error err = {0};
    FL_CHECK(fl_safetensors_write(tmp_path("dtypes.safetensors", path, sizeof path), e, 8, NULL, 0, &err) == 0);
    fl_weights *w = NULL;
    FL_EXPECTF(fl_weights_open(path, &w, &err) == 0, "%s", err.message);
    if (!w) return;
    FL_EXPECTF(fl_weights_count(w) == 6, "%zu tensors (scales and the marker are not listed)", fl_weights_count(w));
    FL_EXPECT(!fl_weights_find(w, "q.scale_weight") && !fl_weights_find(w, "scaled_fp8"));
    const char *names[] = {"a.f32", "a.f16", "a.bf16", "a.f64", "q.weight", "r.weight"};
    for (int k = 0; k < 6; k++) {
        const fl_weight *t = fl_weights_find(w, names[k]);
        float got[4] = {0};
        FL_EXPECTF(t && fl_weights_read_f32(w, t, got, &err) == 0, "%s", names[k]);
        float want_scale = k == 4 ? 0.5f : 1.0f;
        for (int i = 0; i < 4; i++)
            FL_EXPECTF(got[i] == f32[i] * want_scale, "%s[%d] = %g, want %g", names[k], i, got[i], f32[i] * want_scale);
    }
    fl_weights_close(w);
}

/* Two shards behind an index; the folder form; then every broken variant. */
static void test_shards(void) {
    float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {7, 8, 9};
    fl_safetensors_entry s1[] = {{"enc.a", FL_ST_F32, 2, {2, 3}, a}};
    fl_safetensors_entry s2[] = {{"enc.b", FL_ST_F32, 1, {3}, b}, {"enc.extra", FL_ST_F32, 1, {3}, b}};
    char path[512], dir[512];
    fl_error err = {0};
    snprintf(dir, sizeof dir, "%s/sharded", tmpdir);
    FL_CHECK(fl_mkdirs(dir, &err) == 0);
    FL_CHECK(fl_safetensors_write(tmp_path("sharded/model-00001-of-00002.safetensors", path, sizeof path), s1, 1, NULL,
                                  0, &err) == 0);
    FL_CHECK(fl_safetensors_write(tmp_path("sharded/model-00002-of-00002.safetensors", path, sizeof path), s2, 2, NULL,
                                  0, &err) == 0);
    write_text("sharded/model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 36}, \"weight_map\": {\"enc.a\": \"model-00001-of-00002.safetensors\", "
               "\"enc.b\": \"model-00002-of-00002.safetensors\"}}");
    for (int form = 0; form < 2; form++) {
        fl_weights *w = NULL;
        const char *p = form ? dir : tmp_path("sharded/model.safetensors.index.json", path, sizeof path);
        FL_EXPECTF(fl_weights_open(p, &w, &err) == 0, "%s", err.message);
        if (!w) continue;
        FL_EXPECT(fl_weights_file_count(w) == 2);
        FL_EXPECTF(fl_weights_count(w) == 2, "the index is authoritative: %zu tensors", fl_weights_count(w));
        const fl_weight *t = fl_weights_find(w, "enc.b");
        float got[3];
        FL_EXPECT(t && fl_weights_read_f32(w, t, got, &err) == 0 && got[2] == 9.0f);
        FL_EXPECT(fl_weights_strip_prefix(w, "enc.", &err) == 0 && fl_weights_find(w, "a") && fl_weights_count(w) == 2);
        FL_EXPECT(fl_weights_strip_prefix(w, "nothing.", &err) != 0);
        fl_weights_close(w);
    }

    struct {
        const char *index, *expect;
    } bad[] = {
        {"{\"weight_map\": {\"enc.a\": \"model-00001-of-00002.safetensors\", \"enc.c\": "
         "\"model-00002-of-00002.safetensors\"}}",
         "tensor 'enc.c' is listed in shard 'model-00002-of-00002.safetensors' but not there"},
        {"{\"weight_map\": {\"enc.a\": \"model-00003-of-00003.safetensors\"}}",
         "shard 'model-00003-of-00003.safetensors' (listed for 'enc.a')"},
        {"{\"weight_map\": {\"enc.a\": \"../model-00001-of-00002.safetensors\"}}", "is not a .safetensors file name"},
        {"{\"weight_map\": {}}", "no \"weight_map\""},
        {"{\"weight_map\": ", "not JSON"},
        {"not json at all", "not JSON"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        write_text("sharded/bad.index.json", bad[k].index);
        fl_weights *w = NULL;
        int rc = fl_weights_open(tmp_path("sharded/bad.index.json", path, sizeof path), &w, &err);
        FL_EXPECTF(rc != 0 && !w && strstr(err.message, bad[k].expect) && strstr(err.message, "bad.index.json"),
                   "case %zu: got '%s'", k, err.message);
    }
    /* A truncated shard names the index, the shard and what is wrong. */
    char shard[512];
    tmp_path("sharded/model-00002-of-00002.safetensors", shard, sizeof shard);
    unsigned char *bytes = NULL;
    size_t size = 0;
    FL_CHECK(fl_read_file(shard, 1 << 20, &bytes, &size, &err) == 0);
    FL_CHECK(fl_write_file_atomic(shard, bytes, size - 5, &err) == 0);
    free(bytes);
    fl_weights *w = NULL;
    int rc = fl_weights_open(dir, &w, &err);
    FL_EXPECTF(rc != 0 && strstr(err.message, "shard 'model-00002-of-00002.safetensors'"), "got '%s'", err.message);
    FL_EXPECTF(!strchr(err.message, '\n'), "one line: '%s'", err.message);
    /* Missing files and empty folders. */
    rc = fl_weights_open(tmp_path("nothing.safetensors", path, sizeof path), &w, &err);
    FL_EXPECTF(rc != 0 && strstr(err.message, "nothing.safetensors: not found"), "got '%s'", err.message);
    snprintf(path, sizeof path, "%s/empty", tmpdir);
    FL_CHECK(fl_mkdirs(path, &err) == 0);
    rc = fl_weights_open(path, &w, &err);
    FL_EXPECTF(rc != 0 && strstr(err.message, "no model.safetensors"), "got '%s'", err.message);
}

/* ---- the diffusers transformer ----------------------------------------------------------------- */

typedef struct diff_tensor {
    char name[160];
    int ndim;
    int64_t shape[2];
    float *data;
} diff_tensor;

/* Cuts the original tensors of a fixture into diffusers tensors. */
static size_t to_diffusers(fl_flux_model *m, diff_tensor *out) {
    size_t n = 0;
    for (size_t i = 0; i < fl_flux_param_count(m); i++) {
        const char *name;
        fl_tensor *value;
        fl_flux_param_at(m, i, &name, &value, NULL);
        const float *src = value->data;
        int64_t rows = value->shape[0], cols = value->ndim == 2 ? value->shape[1] : 1;
        const char *leaf = strrchr(name, '.');
        char module[FL_FLUX_NAME_MAX];
        snprintf(module, sizeof module, "%.*s", (int)(leaf - name), name);
        fl_flux_diffusers_map map;
        if (strstr(name, "_norm.scale")) {
            /* double_blocks.N.img_attn.norm.query_norm.scale -> transformer_blocks.N.attn.norm_q.weight */
            int idx = atoi(strchr(name, '.') + 1);
            bool single = !strncmp(name, "single", 6), txt = strstr(name, "txt_attn") != NULL;
            bool q = strstr(name, "query_norm") != NULL;
            snprintf(out[n].name, sizeof out[n].name, "%s.%d.attn.norm_%s%s.weight",
                     single ? "single_transformer_blocks" : "transformer_blocks", idx, txt ? "added_" : "", q ? "q" : "k");
            out[n].ndim = 1;
            out[n].shape[0] = rows;
            out[n].data = fl_xmalloc((size_t)rows * sizeof(float));
            memcpy(out[n].data, src, (size_t)rows * sizeof(float));
            n++;
            continue;
        }
        FL_CHECKF(fl_flux_diffusers_lookup(module, '.', &map), "no diffusers name for %s", module);
        for (int j = 0; j < map.n_parts; j++) {
            int64_t in = value->ndim == 2 ? cols : 0, row0 = 0, r = rows;
            fl_flux_linear *lin = fl_flux_find_linear(m, module);
            FL_CHECK(fl_flux_diffusers_part_rows(&map, j, lin->in, lin->out, &row0, &r) == 0);
            (void)in;
            diff_tensor *d = &out[n++];
            snprintf(d->name, sizeof d->name, "%s%s", map.parts[j], leaf);
            d->ndim = value->ndim;
            d->shape[0] = r;
            d->shape[1] = cols;
            d->data = fl_xmalloc((size_t)(r * cols) * sizeof(float));
            if (map.split == FL_FLUX_SPLIT_SWAP_HALVES) {
                size_t half = (size_t)(r * cols / 2);
                memcpy(d->data, src + half, half * sizeof(float));
                memcpy(d->data + half, src, half * sizeof(float));
            } else {
                memcpy(d->data, src + row0 * cols, (size_t)(r * cols) * sizeof(float));
            }
        }
    }
    return n;
}

static int write_diffusers(const char *path, diff_tensor *t, size_t n, size_t skip, bool prefix) {
    fl_safetensors_entry *e = fl_xcalloc(n, sizeof *e);
    char (*names)[192] = fl_xcalloc(n, sizeof *names);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (i == skip) continue;
        snprintf(names[k], sizeof names[k], "%s%s", prefix ? "transformer." : "", t[i].name);
        e[k].name = names[k];
        /* Half the tensors in BF16 would lose bits; F32 keeps the comparison bitwise. */
        e[k].dtype = FL_ST_F32;
        e[k].ndim = t[i].ndim;
        e[k].shape[0] = t[i].shape[0];
        e[k].shape[1] = t[i].shape[1];
        e[k].data = t[i].data;
        k++;
    }
    fl_error err = {0};
    int rc = fl_safetensors_write(path, e, k, NULL, 0, &err);
    free(e);
    free(names);
    return rc;
}

static void test_diffusers_transformer(void) {
    fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), NULL);
    const char *configs[] = {"a", "b"};
    for (int c = 0; c < 2; c++) {
        char rel[128], path[512], dpath[512];
        snprintf(rel, sizeof rel, "fixtures/flux_%s.model.safetensors", configs[c]);
        fl_error err = {0};
        fl_flux_model *orig = NULL, *mapped = NULL;
        FL_EXPECTF(fl_flux_load(cpu, fl_test_data_path(rel, path, sizeof path), NULL, &orig, &err) == 0, "%s",
                   err.message);
        if (!orig) continue;
        fl_flux_params p = *fl_flux_get_params(orig);
        size_t cap = fl_flux_param_count(orig) * FL_FLUX_MAX_PARTS;
        diff_tensor *t = fl_xcalloc(cap, sizeof *t);
        size_t n = to_diffusers(orig, t);
        /* The pure mapping over names and shapes. */
        fl_tensor_header *h = fl_xcalloc(n, sizeof *h);
        for (size_t i = 0; i < n; i++) {
            h[i].name = t[i].name;
            h[i].ndim = t[i].ndim;
            h[i].shape[0] = t[i].shape[0];
            h[i].shape[1] = t[i].shape[1];
        }
        FL_EXPECT(fl_flux_is_diffusers(h, n));
        fl_flux_mapped *mp = NULL;
        size_t n_mapped = 0;
        FL_EXPECTF(fl_flux_map_diffusers(h, n, &mp, &n_mapped, &err) == 0, "%s", err.message);
        FL_EXPECTF(n_mapped == fl_flux_param_count(orig), "%zu mapped tensors for %zu", n_mapped,
                   fl_flux_param_count(orig));
        free(mp);
        /* Loaded through the file, with and without the "transformer." prefix. */
        for (int prefix = 0; prefix < 2; prefix++) {
            FL_CHECK(write_diffusers(tmp_path("diffusers.safetensors", dpath, sizeof dpath), t, n, (size_t)-1,
                                     prefix) == 0);
            FL_EXPECTF(fl_flux_load(cpu, dpath, &p, &mapped, &err) == 0, "%s", err.message);
            for (size_t i = 0; mapped && i < fl_flux_param_count(orig); i++) {
                const char *name;
                fl_tensor *a, *b;
                fl_flux_param_at(orig, i, &name, &a, NULL);
                fl_flux_param_at(mapped, i, NULL, &b, NULL);
                FL_EXPECTF(!memcmp(a->data, b->data, fl_tensor_nbytes(a)), "config %s: %s differs", configs[c], name);
            }
            fl_flux_free(mapped);
            mapped = NULL;
        }
        /* A missing part is named. */
        size_t skip = 0;
        while (skip < n && strcmp(t[skip].name, "single_transformer_blocks.0.attn.to_k.bias")) skip++;
        FL_CHECK(skip < n);
        FL_CHECK(write_diffusers(dpath, t, n, skip, false) == 0);
        FL_EXPECT(fl_flux_load(cpu, dpath, &p, &mapped, &err) != 0 && !mapped);
        FL_EXPECTF(strstr(err.message, "'single_transformer_blocks.0.attn.to_k.bias' is missing (a part of "
                                       "'single_blocks.0.linear1.bias')"),
                   "got '%s'", err.message);
        /* An unknown diffusers tensor is named too. */
        snprintf(t[0].name, sizeof t[0].name, "transformer_blocks.0.attn.to_z.weight");
        h[0].name = t[0].name;
        FL_EXPECT(fl_flux_map_diffusers(h, n, &mp, &n_mapped, &err) != 0);
        FL_EXPECTF(strstr(err.message, "'transformer_blocks.0.attn.to_z.weight' has no counterpart"), "got '%s'",
                   err.message);
        free(h);
        for (size_t i = 0; i < n; i++) free(t[i].data);
        free(t);
        fl_flux_free(orig);
    }
    fl_ctx_destroy(cpu);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fl_test_weights_%d", (int)getpid());
    fl_error err = {0};
    FL_CHECK(fl_mkdirs(tmpdir, &err) == 0);
    FL_RUN(test_fp8_decoding);
    FL_RUN(test_dtypes_and_scales);
    FL_RUN(test_shards);
    FL_RUN(test_diffusers_transformer);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_finish();
}
