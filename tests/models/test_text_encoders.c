/*
 * test_text_encoders.c — the CLIP and T5 text encoders against the Hugging Face models.
 *
 * Goldens (tests/reference/make_text_fixtures.py, float64 references on f32-rounded weights):
 * a tiny CLIPTextModel (causal, quick_gelu, argmax-EOS pooling with EOS-padded inputs) and a tiny
 * T5EncoderModel (gated-gelu, block-0 position bias over 512 tokens, so every bucket is used;
 * unscaled attention, no mask) must agree within 1e-5 (atol and rtol) on the CPU; the bucket
 * function equals the reference's for every relative position of 512 tokens. The FLUX-style tiny
 * folder (text_encoder/, text_encoder_2/, tokenizer/ vocab.json + merges.txt,
 * tokenizer_2/spiece.model) encodes prompts to the reference pipeline's txt and y. The manifests
 * of the real CLIP-L and T5-XXL bind (and give their memory figures); a missing or misshaped
 * tensor is named; bad input — missing or truncated weights, a tokenizer file that is not JSON, a
 * tokenizer with more ids than the embedding, a 1 MB prompt, invalid UTF-8 — is one clear error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/text/clip_text.h"
#include "models/text/t5_encoder.h"
#include "models/text/text_encoders.h"
#include "models/text/tokenizers.h"

/* The goldens' tolerance: relative error ||got - want|| / ||want|| at most 1e-5 over each output,
 * and every element within 1e-4 (atol and rtol: PyTorch's own fp32 run of the tiny T5 differs from
 * its float64 run by up to 1.9e-5 on a few elements). */
#define REL_TOL 1e-5
#define TOL 1e-4

static fl_ctx *ctx;
static double worst_rel;

static void expect_close_at(int line, const char *what, const float *got, const float *want, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        den += (double)want[i] * want[i];
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (rel > worst_rel) worst_rel = rel;
    if (!(rel <= REL_TOL)) fl_test_fail_at(__FILE__, line, "%s: relative error %.3g > %g", what, rel, REL_TOL);
    fl_test_close_at(__FILE__, line, what, got, want, n, TOL, TOL);
}
#undef FL_EXPECT_CLOSE
#define FL_EXPECT_CLOSE(what, got, want, n, atol, rtol) expect_close_at(__LINE__, what, got, want, n)

static const char *data(const char *rel) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    return fl_test_data_path(rel, buf[k], sizeof buf[k]);
}

static int32_t *load_ids(const char *path, const char *name, int64_t *n) {
    float *f = fl_test_load_f32(path, name, n, NULL, NULL);
    if (!f) return NULL;
    int32_t *ids = malloc((size_t)*n * sizeof *ids);
    for (int64_t i = 0; i < *n; i++) ids[i] = (int32_t)f[i];
    free(f);
    return ids;
}

static float *download(const fl_tensor *t) {
    size_t n = (size_t)fl_tensor_numel(t);
    float *h = malloc(n * sizeof *h);
    fl_ctx_download_f32(ctx, h, t, n);
    return h;
}

static void test_clip_golden(void) {
    const char *path = data("fixtures/text/clip_tiny.safetensors");
    fl_error err = {0};
    fl_weight_files *w = NULL;
    FL_EXPECTF(fl_weight_files_open(path, &w, &err) == 0, "%s", err.message);
    if (!w) return;
    size_t n = 0;
    const fl_tensor_header *h = fl_weight_files_headers(w, &n);
    fl_clip_params p;
    char prefix[FL_TEXT_PREFIX_MAX];
    FL_EXPECTF(fl_clip_params_infer(h, n, &p, prefix, &err) == 0, "%s", err.message);
    FL_EXPECT(p.vocab_size == 128 && p.hidden_size == 32 && p.intermediate_size == 48 && p.num_layers == 2 &&
              p.max_positions == 77 && !prefix[0]);
    p.num_heads = 2; /* not visible in shapes: config.json gives it */
    fl_clip_text *m = NULL;
    FL_EXPECTF(fl_clip_text_load(ctx, w, &p, &m, &err) == 0, "%s", err.message);
    if (!m) return;
    const char *cases[2] = {"a", "b"};
    for (int c = 0; c < 2; c++) {
        char name[64];
        int64_t L;
        snprintf(name, sizeof name, "ids_%s", cases[c]);
        int32_t *ids = load_ids(path, name, &L);
        int64_t hs[2] = {L, 32}, ps[1] = {32};
        fl_tensor hid = fl_ctx_tensor(ctx, FL_F32, 2, hs), pooled = fl_ctx_tensor(ctx, FL_F32, 1, ps);
        fl_clip_text_forward(m, ids, (int)L, &hid, &pooled);
        int64_t nw;
        snprintf(name, sizeof name, "last_hidden_state_%s", cases[c]);
        float *want = fl_test_load_f32(path, name, &nw, NULL, NULL), *got = download(&hid);
        FL_EXPECT_CLOSE("CLIP last_hidden_state", got, want, (size_t)nw, TOL, TOL);
        free(want);
        free(got);
        snprintf(name, sizeof name, "pooler_output_%s", cases[c]);
        want = fl_test_load_f32(path, name, &nw, NULL, NULL);
        got = download(&pooled);
        FL_EXPECT_CLOSE("CLIP pooler_output", got, want, (size_t)nw, TOL, TOL);
        free(want);
        free(got);
        free(ids);
        fl_ctx_tensor_free(ctx, &hid);
        fl_ctx_tensor_free(ctx, &pooled);
    }
    fl_clip_text_free(m);
    fl_weight_files_close(w);
}

static void test_t5_golden(void) {
    const char *path = data("fixtures/text/t5_tiny.safetensors");
    fl_error err = {0};
    fl_weight_files *w = NULL;
    FL_EXPECTF(fl_weight_files_open(path, &w, &err) == 0, "%s", err.message);
    if (!w) return;
    fl_t5_encoder *m = NULL;
    FL_EXPECTF(fl_t5_encoder_load(ctx, w, NULL, &m, &err) == 0, "%s", err.message);
    if (!m) return;
    const fl_t5_params *p = fl_t5_encoder_params(m);
    FL_EXPECT(p->vocab_size == 128 && p->d_model == 32 && p->d_kv == 8 && p->num_heads == 4 && p->d_ff == 48 &&
              p->num_layers == 3 && p->num_buckets == 32 && p->max_distance == 128);
    /* buckets of every relative position in 512 tokens */
    int64_t nb;
    float *buckets = fl_test_load_f32(path, "buckets", &nb, NULL, NULL);
    int bad = 0;
    for (int64_t i = 0; buckets && i < nb; i++) bad += fl_t5_relative_bucket((int)i - 511, 32, 128) != (int)buckets[i];
    FL_EXPECTF(buckets && nb == 1023 && bad == 0, "%d relative positions get another bucket", bad);
    free(buckets);
    const char *cases[2] = {"long", "short"};
    for (int c = 0; c < 2; c++) {
        char name[64];
        int64_t L;
        snprintf(name, sizeof name, "ids_%s", cases[c]);
        int32_t *ids = load_ids(path, name, &L);
        int64_t os[2] = {L, 32};
        fl_tensor out = fl_ctx_tensor(ctx, FL_F32, 2, os);
        fl_t5_encoder_forward(m, ids, (int)L, &out);
        int64_t nw;
        snprintf(name, sizeof name, "last_hidden_state_%s", cases[c]);
        float *want = fl_test_load_f32(path, name, &nw, NULL, NULL), *got = download(&out);
        FL_EXPECT_CLOSE(c == 0 ? "T5 last_hidden_state (512 tokens)" : "T5 last_hidden_state (7 tokens)", got, want,
                        (size_t)nw, TOL, TOL);
        free(want);
        free(got);
        free(ids);
        fl_ctx_tensor_free(ctx, &out);
    }
    fl_t5_encoder_free(m);
    fl_weight_files_close(w);
}

static void test_tiny_pipeline(void) {
    const char *dir = data("fixtures/text/tiny-flux");
    const char *exp = data("fixtures/text/tiny-flux/expected.safetensors");
    fl_error err = {0};
    fl_text_encoders *te = NULL;
    FL_EXPECTF(fl_text_encoders_load_dir(ctx, dir, 64, &te, &err) == 0, "%s", err.message);
    if (!te) return;
    FL_EXPECT(fl_text_encoders_context_dim(te) == 32 && fl_text_encoders_vec_dim(te) == 32 &&
              fl_text_encoders_length(te) == 64);
    FL_EXPECT(strlen(fl_text_encoders_fingerprint(te)) == 64);
    static const char *prompts[3] = {"a photo of sks dog", "",
                                     "Hello  World!! it's 2024, CAFÉ ünïcode 😀 <extra_id_1> end"};
    fl_clip_tokenizer *ct = NULL;
    fl_t5_tokenizer *tt = NULL;
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/tokenizer", dir);
    snprintf(p2, sizeof p2, "%s/tokenizer_2", dir);
    FL_EXPECTF(fl_clip_tokenizer_load(p1, &ct, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_t5_tokenizer_load(p2, &tt, &err) == 0, "%s", err.message);
    FL_EXPECT(ct && !fl_clip_tokenizer_is_builtin_vocab(ct) && tt && !fl_t5_tokenizer_is_builtin_vocab(tt));
    for (int i = 0; i < 3 && ct && tt; i++) {
        char name[32];
        int64_t n;
        int32_t ids[77];
        snprintf(name, sizeof name, "clip_ids_%d", i);
        int32_t *want = load_ids(exp, name, &n);
        fl_clip_tokenize(ct, prompts[i], strlen(prompts[i]), ids, 77, fl_clip_tokenizer_eos(ct), &err);
        FL_EXPECTF(want && n == 77 && !memcmp(ids, want, sizeof ids), "CLIP ids of prompt %d", i);
        free(want);
        snprintf(name, sizeof name, "t5_ids_%d", i);
        want = load_ids(exp, name, &n);
        fl_t5_tokenize(tt, prompts[i], strlen(prompts[i]), ids, 64, &err);
        FL_EXPECTF(want && n == 64 && !memcmp(ids, want, 64 * sizeof *ids), "T5 ids of prompt %d", i);
        free(want);
        float *txt = malloc(64 * 32 * sizeof *txt), y[32];
        FL_EXPECTF(fl_text_encoders_encode_host(te, prompts[i], txt, y, &err) == 0, "%s", err.message);
        snprintf(name, sizeof name, "txt_%d", i);
        float *wt = fl_test_load_f32(exp, name, &n, NULL, NULL);
        FL_EXPECT_CLOSE("pipeline txt", txt, wt, 64 * 32, TOL, TOL);
        snprintf(name, sizeof name, "y_%d", i);
        float *wy = fl_test_load_f32(exp, name, &n, NULL, NULL);
        FL_EXPECT_CLOSE("pipeline y", y, wy, 32, TOL, TOL);
        free(txt);
        free(wt);
        free(wy);
    }
    fl_clip_tokenizer_free(ct);
    fl_t5_tokenizer_free(tt);
    /* bad prompts: one line each, the outputs untouched */
    size_t big = (size_t)1 << 20;
    char *mb = malloc(big + 1);
    memset(mb, 'x', big);
    mb[big] = 0;
    float txt[64 * 32], y[32];
    FL_EXPECT(fl_text_encoders_encode_host(te, mb, txt, y, &err) == -1 && err.code == FL_ELIMIT);
    FL_EXPECTF(strstr(err.message, "more than the 65536 accepted"), "got '%s'", err.message);
    free(mb);
    FL_EXPECT(fl_text_encoders_encode_host(te, "bad \xc0\xaf utf-8", txt, y, &err) == -1 && err.code == FL_EINVAL);
    FL_EXPECTF(strstr(err.message, "not valid UTF-8 (byte 4)"), "got '%s'", err.message);
    fl_text_encoders_free(te);
}

typedef struct manifest {
    fl_tensor_header *h;
    char **names;
    size_t n;
} manifest;

static bool load_manifest(const char *rel, manifest *m) {
    memset(m, 0, sizeof *m);
    fl_error err = {0};
    json_t *root = fl_config_load_file(data(rel), &err);
    FL_EXPECTF(root != NULL, "%s", err.message);
    if (!root) return false;
    json_t *t = json_object_get(root, "tensors");
    m->n = json_array_size(t);
    m->h = calloc(m->n, sizeof *m->h);
    m->names = calloc(m->n, sizeof *m->names);
    for (size_t i = 0; i < m->n; i++) {
        json_t *e = json_array_get(t, i), *shape = json_array_get(e, 1);
        m->names[i] = strdup(json_string_value(json_array_get(e, 0)));
        m->h[i].name = m->names[i];
        m->h[i].ndim = (int)json_array_size(shape);
        for (int k = 0; k < m->h[i].ndim; k++) m->h[i].shape[k] = json_integer_value(json_array_get(shape, (size_t)k));
    }
    json_decref(root);
    return true;
}

static void free_manifest(manifest *m) {
    for (size_t i = 0; i < m->n; i++) free(m->names[i]);
    free(m->names);
    free(m->h);
}

static void test_real_manifests(void) {
    manifest m;
    fl_error err = {0};
    char prefix[FL_TEXT_PREFIX_MAX];
    if (load_manifest("fixtures/text/clip-l.manifest.json", &m)) {
        fl_clip_params p;
        FL_EXPECTF(fl_clip_params_infer(m.h, m.n, &p, prefix, &err) == 0, "%s", err.message);
        FL_EXPECT(p.vocab_size == 49408 && p.hidden_size == 768 && p.intermediate_size == 3072 && p.num_layers == 12 &&
                  p.num_heads == 12 && p.max_positions == 77);
        FL_EXPECTF(fl_clip_check_entries(m.h, m.n, prefix, &p, &err) == 0, "%s", err.message);
        FL_EXPECT(fl_clip_param_decls(&p, NULL) == m.n);
        size_t wc, ac, wg, ag;
        fl_clip_text_memory(&p, 77, FL_DEVICE_CPU, &wc, &ac);
        fl_clip_text_memory(&p, 77, FL_DEVICE_CUDA, &wg, &ag);
        printf("CLIP-L, 77 tokens: weights %.1f MB (f32) / %.1f MB (bf16), activations %.2f MB / %.2f MB\n", wc / 1e6,
               wg / 1e6, ac / 1e6, ag / 1e6);
        FL_EXPECTF(wc >= 4 * 123060480ull && wc < 4 * 123060480ull + 256 * m.n && wg >= 2 * 123060480ull &&
                       wg < 2 * 123060480ull + 256 * m.n, "CLIP-L weights %zu / %zu bytes", wc, wg);
        /* a misshaped tensor is named */
        for (size_t i = 0; i < m.n; i++)
            if (!strcmp(m.h[i].name, "text_model.encoder.layers.5.mlp.fc2.weight")) m.h[i].shape[1] = 3071;
        FL_EXPECT(fl_clip_check_entries(m.h, m.n, prefix, &p, &err) == -1);
        FL_EXPECTF(strstr(err.message, "'text_model.encoder.layers.5.mlp.fc2.weight' has shape [768, 3071], expected "
                                       "[768, 3072]"), "got '%s'", err.message);
        free_manifest(&m);
    }
    if (load_manifest("fixtures/text/t5-xxl.manifest.json", &m)) {
        fl_t5_params p;
        FL_EXPECTF(fl_t5_params_infer(m.h, m.n, &p, prefix, &err) == 0, "%s", err.message);
        FL_EXPECT(p.vocab_size == 32128 && p.d_model == 4096 && p.d_kv == 64 && p.num_heads == 64 && p.d_ff == 10240 &&
                  p.num_layers == 24 && p.num_buckets == 32);
        FL_EXPECTF(fl_t5_check_entries(m.h, m.n, prefix, &p, &err) == 0, "%s", err.message);
        FL_EXPECT(fl_t5_param_decls(&p, NULL) == m.n);
        size_t wc, ac, wg, ag, wg2, ag2;
        fl_t5_encoder_memory(&p, 512, FL_DEVICE_CPU, &wc, &ac);
        fl_t5_encoder_memory(&p, 512, FL_DEVICE_CUDA, &wg, &ag);
        fl_t5_encoder_memory(&p, 256, FL_DEVICE_CUDA, &wg2, &ag2);
        printf("T5-XXL, 512 tokens: weights %.2f GB (f32) / %.2f GB (bf16), activations %.1f MB / %.1f MB; "
               "256 tokens (bf16): %.1f MB\n", wc / 1e9, wg / 1e9, ac / 1e6, ag / 1e6, ag2 / 1e6);
        FL_EXPECTF(wg >= 2 * 4762310656ull && wg < 2 * 4762310656ull + 256 * m.n, "T5-XXL weights %zu bytes", wg);
        /* a missing tensor is named; a prefixed single file binds */
        m.h[7] = m.h[m.n - 1];
        FL_EXPECT(fl_t5_check_entries(m.h, m.n - 1, prefix, &p, &err) == -1);
        FL_EXPECTF(strstr(err.message, "missing tensor 'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'"),
                   "got '%s'", err.message);
        free_manifest(&m);
    }
}

static void test_bad_inputs(void) {
    fl_error err = {0};
    fl_text_encoders *te = NULL;
    const char *dir = data("fixtures/text/tiny-flux");
    char clip[512], t5[512];
    snprintf(clip, sizeof clip, "%s/text_encoder", dir);
    snprintf(t5, sizeof t5, "%s/text_encoder_2", dir);
    /* the built-in vocabularies have more ids than the tiny embeddings */
    fl_text_encoders_files f = {clip, t5, NULL, NULL, 64};
    FL_EXPECT(fl_text_encoders_load(ctx, &f, &te, &err) == -1 && !te);
    FL_EXPECTF(strstr(err.message, "the CLIP tokenizer has 49408 ids, the encoder's token embedding 814 rows"),
               "got '%s'", err.message);
    /* missing weights */
    FL_EXPECT(fl_text_encoders_load_dir(ctx, "/nonexistent/flux", 64, &te, &err) == -1);
    FL_EXPECTF(strstr(err.message, "/nonexistent/flux: no text_encoder folder"), "got '%s'", err.message);
    /* a truncated shard and a tokenizer.json that is not JSON */
    char tmp[] = "/tmp/fl_text_test_XXXXXX";
    FL_EXPECT(mkdtemp(tmp) != NULL);
    char path[1024], cmd[2048];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    snprintf(cmd, sizeof cmd, "head -c 100000 '%s/model.safetensors' > '%s'", clip, path);
    FL_EXPECT(system(cmd) == 0);
    fl_weight_files *w = NULL;
    FL_EXPECT(fl_weight_files_open(tmp, &w, &err) == -1 && !w);
    FL_EXPECTF(strstr(err.message, "model.safetensors") && strlen(err.message) < 400, "got '%s'", err.message);
    printf("truncated weights: %s\n", err.message);
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
    FILE *fp = fopen(path, "w");
    fputs("{\"model\": [1, 2,", fp);
    fclose(fp);
    fl_text_encoders_files g = {clip, t5, NULL, tmp, 64};
    FL_EXPECT(fl_text_encoders_load(ctx, &g, &te, &err) == -1);
    FL_EXPECTF(strstr(err.message, "tokenizer.json: not JSON"), "got '%s'", err.message);
    printf("bad tokenizer file: %s\n", err.message);
    /* an index naming a tensor its shard lacks */
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
    fp = fopen(path, "w");
    fprintf(fp, "{\"weight_map\": {\"shared.weight\": \"model.safetensors\"}}");
    fclose(fp);
    snprintf(cmd, sizeof cmd, "cp '%s/model.safetensors' '%s/model.safetensors'", t5, tmp);
    FL_EXPECT(system(cmd) == 0);
    FL_EXPECT(fl_weight_files_open(tmp, &w, &err) == 0);
    fl_weight_files_close(w);
    fp = fopen(path, "w");
    fprintf(fp, "{\"weight_map\": {\"encoder.block.9.layer.0.SelfAttention.q.weight\": \"model.safetensors\"}}");
    fclose(fp);
    FL_EXPECT(fl_weight_files_open(tmp, &w, &err) == -1);
    FL_EXPECTF(strstr(err.message, "names tensor 'encoder.block.9.layer.0.SelfAttention.q.weight' in "
                                   "model.safetensors, which lacks it"), "got '%s'", err.message);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    FL_EXPECT(system(cmd) == 0);
}

int main(void) {
    fl_error err;
    ctx = fl_ctx_create(fl_device_cpu(), &err);
    if (!ctx) return 1;
    FL_RUN(test_clip_golden);
    FL_RUN(test_t5_golden);
    FL_RUN(test_tiny_pipeline);
    FL_RUN(test_real_manifests);
    FL_RUN(test_bad_inputs);
    printf("largest relative error of the goldens: %.3g\n", worst_rel);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
