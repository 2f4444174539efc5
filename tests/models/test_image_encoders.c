/*
 * test_image_encoders.c — DINOv2 and CLIP vision (with CLIP-T) against Hugging Face, and the
 * references' preprocessing against Pillow.
 *
 * Goldens (tests/reference/make_vision_fixtures.py; float64 references on f32-rounded weights):
 *  - PIL's bicubic resize of a small 8-bit image to six sizes (up, down, mixed): bit-exact;
 *  - a tiny Dinov2Model at its native grid (19x19, 266 pixels) and at 224 (position table resized
 *    by bicubic interpolation), its resized table, and a SwiGLU variant: CLS and last hidden state;
 *  - a tiny CLIPModel: the projected image embedding, the encoder output, and the projected text
 *    embedding of three prompts (the tokenizer beside the weights gives Hugging Face's ids);
 *  - end to end through fl_image_encoder_open/embed: PNG files decoded, preprocessed (resize,
 *    center crop, mean/std; the 224x224 one not resampled) and embedded, against the processors +
 *    models, L2-normalized.
 * Each within relative error 1e-5 (||got - want|| / ||want||) and 1e-4 per element. Bad input —
 * a file of another layout, the wrong kind for the spec, a missing path, an unknown spec, the
 * built-in encoder before it exists, an image with no pixels — is one clear error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/fileio.h"
#include "datasets/image.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/image_encoder.h"
#include "models/text/tokenizers.h"
#include "models/text/weights.h"
#include "models/vision/vit.h"

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
#define EXPECT_CLOSE(what, got, want, n) expect_close_at(__LINE__, what, got, want, n)

static const char *data(const char *rel) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    return fl_test_data_path(rel, buf[k], sizeof buf[k]);
}

#define GOLDEN "fixtures/vision/vision_golden.safetensors"

static float *golden(const char *name, int64_t *n) {
    int64_t count = 0;
    float *v = fl_test_load_f32(data(GOLDEN), name, &count, NULL, NULL);
    if (n) *n = count;
    return v;
}

/* The generator's pattern(size, seed): small integers / 50 - 1, exact in float. */
static float *pattern(int size, int seed) {
    float *px = malloc((size_t)3 * size * size * sizeof *px);
    for (long c = 0; c < 3; c++)
        for (long y = 0; y < size; y++)
            for (long x = 0; x < size; x++) {
                long v = (x * x * 7 + y * 13 + x * y * 3 + c * 29 + seed * 31 + (y * y * 5) % 17) % 101;
                px[(c * size + y) * size + x] = (float)((double)v / 50.0 - 1.0);
            }
    return px;
}

static fl_vit *load_vit(const char *folder, fl_weight_files **w) {
    fl_error err = {0};
    *w = NULL;
    FL_EXPECTF(fl_weight_files_open(data(folder), w, &err) == 0, "%s", err.message);
    if (!*w) return NULL;
    fl_vit *m = NULL;
    FL_EXPECTF(fl_vit_load(ctx, *w, NULL, &m, &err) == 0, "%s", err.message);
    return m;
}

static void test_resize_matches_pil(void) {
    int64_t n;
    float *src = golden("resize_src", &n);
    if (!src) return;
    uint8_t s8[23 * 37 * 3];
    for (int i = 0; i < 23 * 37 * 3; i++) s8[i] = (uint8_t)src[i];
    static const int sizes[][2] = {{64, 48}, {13, 9}, {37, 50}, {20, 23}, {37, 23}, {5, 100}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int w = sizes[k][0], h = sizes[k][1];
        char name[32];
        snprintf(name, sizeof name, "resize_%dx%d", w, h);
        float *want = golden(name, &n);
        uint8_t *got = malloc((size_t)w * h * 3);
        fl_error err = {0};
        FL_EXPECTF(fl_resize_bicubic_u8(s8, 37, 23, got, w, h, &err) == 0, "%s", err.message);
        int bad = 0, worst = 0;
        for (int64_t i = 0; want && i < n; i++) {
            int d = abs((int)got[i] - (int)want[i]);
            bad += d != 0;
            worst = d > worst ? d : worst;
        }
        FL_EXPECTF(want && n == (int64_t)w * h * 3 && bad == 0, "%s: %d values differ from PIL (by up to %d)", name,
                   bad, worst);
        free(got);
        free(want);
    }
    free(src);
}

static void test_dinov2(void) {
    fl_weight_files *w;
    fl_vit *m = load_vit("fixtures/vision/dinov2_tiny", &w);
    if (!m) {
        fl_weight_files_close(w);
        return;
    }
    const fl_vit_params *p = fl_vit_get_params(m);
    FL_EXPECT(p->kind == FL_VIT_DINOV2 && p->hidden_size == 32 && p->num_layers == 2 && p->num_heads == 2 &&
              p->patch_size == 14 && p->num_positions == 1 + 19 * 19 && p->native_size == 266 &&
              p->intermediate_size == 64 && p->layer_scale && !p->swiglu && fl_vit_dim(m) == 32);
    static const struct {
        const char *tag;
        int size, seed;
    } cases[] = {{"native", 266, 1}, {"224", 224, 2}};
    for (int c = 0; c < 2; c++) {
        int S = cases[c].size, L = 1 + (S / 14) * (S / 14);
        float *px = pattern(S, cases[c].seed), cls[32], *hidden = malloc((size_t)L * 32 * sizeof(float));
        fl_error err = {0};
        FL_EXPECTF(fl_vit_forward_hidden(m, px, S, cls, hidden, &err) == 0, "%s", err.message);
        char name[64];
        int64_t n;
        snprintf(name, sizeof name, "dinov2_cls_%s", cases[c].tag);
        float *want = golden(name, &n);
        if (want) EXPECT_CLOSE(name, cls, want, 32);
        free(want);
        snprintf(name, sizeof name, "dinov2_hidden_%s", cases[c].tag);
        want = golden(name, &n);
        if (want && n == (int64_t)L * 32) EXPECT_CLOSE(name, hidden, want, (size_t)n);
        else FL_EXPECTF(false, "%s: %lld values, expected %d", name, (long long)n, L * 32);
        free(want);
        free(hidden);
        free(px);
    }
    fl_vit_free(m);
    fl_weight_files_close(w);
}

static void test_position_interpolation(void) {
    fl_weight_files *w = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_weight_files_open(data("fixtures/vision/dinov2_tiny"), &w, &err) == 0, "%s", err.message);
    if (!w) return;
    float *table = malloc((size_t)362 * 32 * sizeof(float)), *got = malloc((size_t)361 * 32 * sizeof(float));
    FL_EXPECTF(fl_weight_files_read_f32(w, "embeddings.position_embeddings", table, 362 * 32, &err) == 0, "%s",
               err.message);
    fl_vit_interpolate_positions(table + 32, 19, 32, 16, got);
    int64_t n;
    float *want = golden("dinov2_pos_224", &n);
    if (want) EXPECT_CLOSE("position table 19x19 -> 16x16", got, want, 256 * 32);
    /* the native grid is left as it is */
    fl_vit_interpolate_positions(table + 32, 19, 32, 19, got);
    EXPECT_CLOSE("position table 19x19 -> 19x19", got, table + 32, 361 * 32);
    free(want);
    free(got);
    free(table);
    fl_weight_files_close(w);
}

static void test_dinov2_swiglu(void) {
    fl_weight_files *w;
    fl_vit *m = load_vit("fixtures/vision/dinov2_swiglu_tiny", &w);
    if (m) {
        const fl_vit_params *p = fl_vit_get_params(m);
        FL_EXPECT(p->swiglu && p->num_heads == 4 && p->intermediate_size == 88 && p->native_size == 98);
        float *px = pattern(224, 3), cls[32];
        fl_error err = {0};
        FL_EXPECTF(fl_vit_forward(m, px, 224, cls, &err) == 0, "%s", err.message);
        float *want = golden("swiglu_cls", NULL);
        if (want) EXPECT_CLOSE("DINOv2 SwiGLU CLS at 224", cls, want, 32);
        free(want);
        free(px);
    }
    fl_vit_free(m);
    fl_weight_files_close(w);
}

static void test_clip_vision(void) {
    fl_weight_files *w;
    fl_vit *m = load_vit("fixtures/vision/clip_tiny", &w);
    if (m) {
        const fl_vit_params *p = fl_vit_get_params(m);
        FL_EXPECT(p->kind == FL_VIT_CLIP && p->hidden_size == 32 && p->num_heads == 2 && p->native_size == 224 &&
                  p->projection_dim == 16 && p->act == FL_VIT_QUICK_GELU && fl_vit_dim(m) == 16);
        float *px = pattern(224, 4), emb[16], *hidden = malloc((size_t)257 * 32 * sizeof(float));
        fl_error err = {0};
        FL_EXPECTF(fl_vit_forward_hidden(m, px, 224, emb, hidden, &err) == 0, "%s", err.message);
        float *want = golden("clip_image_embeds", NULL);
        if (want) EXPECT_CLOSE("CLIP image embeds", emb, want, 16);
        free(want);
        want = golden("clip_hidden", NULL);
        if (want) EXPECT_CLOSE("CLIP vision last_hidden_state", hidden, want, 257 * 32);
        free(want);
        free(hidden);
        free(px);
    }
    fl_vit_free(m);
    fl_weight_files_close(w);
}

static void test_clip_text(void) {
    char spec[600];
    snprintf(spec, sizeof spec, "clip:%s", data("fixtures/vision/clip_tiny"));
    fl_image_encoder *enc = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_image_encoder_open(ctx, spec, &enc, &err) == 0, "%s", err.message);
    if (!enc) return;
    const fl_image_encoder_info *info = fl_image_encoder_get_info(enc);
    FL_EXPECT(fl_image_encoder_has_text(enc) && info->text_dim == 16 && info->dim == 16 && info->input_size == 224 &&
              !strcmp(info->kind, "clip") && strlen(info->fingerprint) == 64);
    static const char *prompts[] = {"a photo of sks dog", "an illustration of the sks logo on a mug", ""};
    fl_clip_tokenizer *tok = NULL;
    FL_EXPECTF(fl_clip_tokenizer_load(data("fixtures/vision/clip_tiny"), &tok, &err) == 0, "%s", err.message);
    for (int k = 0; k < 3; k++) {
        char name[64];
        int64_t n;
        snprintf(name, sizeof name, "clip_text_ids_%d", k);
        float *ids_want = golden(name, &n);
        int32_t ids[77];
        int count = tok ? fl_clip_tokenize(tok, prompts[k], strlen(prompts[k]), ids, 77, 0, &err) : -1;
        bool same = ids_want && count == n;
        for (int i = 0; same && i < count; i++) same = ids[i] == (int32_t)ids_want[i];
        FL_EXPECTF(same, "prompt %d: the tokenizer's ids differ from Hugging Face's", k);
        free(ids_want);
        float got[16];
        FL_EXPECTF(fl_image_encoder_text(enc, prompts[k], got, &err) == 0, "%s", err.message);
        snprintf(name, sizeof name, "clip_text_embeds_%d", k);
        float *want = golden(name, NULL);
        if (want) {
            double s = 0;
            for (int i = 0; i < 16; i++) s += (double)want[i] * want[i];
            for (int i = 0; i < 16; i++) want[i] = (float)(want[i] / sqrt(s));
            EXPECT_CLOSE(name, got, want, 16);
        }
        free(want);
    }
    /* bad prompts: one line, nothing crashes */
    float out[16];
    FL_EXPECT(fl_image_encoder_text(enc, "\xff\xfe broken", out, &err) != 0 && strlen(err.message) > 0);
    size_t big = (size_t)1 << 20;
    char *huge = malloc(big + 1);
    memset(huge, 'a', big);
    huge[big] = 0;
    FL_EXPECT(fl_image_encoder_text(enc, huge, out, &err) != 0 && !strchr(err.message, '\n'));
    free(huge);
    fl_clip_tokenizer_free(tok);
    fl_image_encoder_close(enc);
}

static int load_image(const char *name, fl_image *img) {
    char rel[256];
    snprintf(rel, sizeof rel, "fixtures/vision/images/%s", name);
    unsigned char *bytes = NULL;
    size_t size = 0;
    fl_error err = {0};
    memset(img, 0, sizeof *img);
    if (fl_read_file(data(rel), (size_t)1 << 24, &bytes, &size, &err) != 0 ||
        fl_image_decode(bytes, size, (int64_t)1 << 26, 8192, img, &err) != 0) {
        fl_test_fail_at(__FILE__, __LINE__, "%s: %s", name, err.message);
        free(bytes);
        return -1;
    }
    free(bytes);
    return 0;
}

static void test_end_to_end(void) {
    static const char *names[] = {"a_cat_180x120.png", "b_coffee_150x100.png", "c_rocket_224x224.png",
                                  "d_astronaut_90x190.png"};
    fl_image imgs[4];
    for (int i = 0; i < 4; i++)
        if (load_image(names[i], &imgs[i])) return;
    static const char *kinds[] = {"dinov2", "clip"};
    static const char *folders[] = {"fixtures/vision/dinov2_tiny", "fixtures/vision/clip_tiny"};
    for (int k = 0; k < 2; k++) {
        char spec[600];
        snprintf(spec, sizeof spec, "%s:%s", kinds[k], data(folders[k]));
        fl_image_encoder *enc = NULL;
        fl_error err = {0};
        FL_EXPECTF(fl_image_encoder_open(ctx, spec, &enc, &err) == 0, "%s", err.message);
        if (!enc) continue;
        int D = fl_image_encoder_dim(enc);
        FL_EXPECT(fl_image_encoder_get_info(enc)->input_size == 224 && (k == 1 || !fl_image_encoder_has_text(enc)));
        float *got = malloc((size_t)4 * D * sizeof(float));
        fl_embed_info info[4];
        FL_EXPECTF(fl_image_encoder_embed(enc, imgs, 4, got, info, &err) == 0, "%s", err.message);
        for (int i = 0; i < 4; i++) {
            char name[64];
            snprintf(name, sizeof name, "img_%d_%s", i, kinds[k]);
            float *want = golden(name, NULL);
            if (want) EXPECT_CLOSE(name, got + (size_t)i * D, want, (size_t)D);
            FL_EXPECT(info[i].face_found && info[i].norm > 0);
            free(want);
        }
        free(got);
        fl_image_encoder_close(enc);
    }
    for (int i = 0; i < 4; i++) fl_image_release(&imgs[i]);
}

/* The shipped built-in encoder behind the common interface: its description, and each image's
 * embedding the same alone as in a batch, unit length. */
static void test_builtin(void) {
    fl_image_encoder *enc = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_image_encoder_open(ctx, "builtin", &enc, &err) == 0, "%s", err.message);
    if (!enc) return;
    const fl_image_encoder_info *info = fl_image_encoder_get_info(enc);
    FL_EXPECT(!strcmp(info->kind, "builtin") && info->dim == 128 && info->input_size == 64 && strlen(info->fingerprint) == 64);
    FL_EXPECT(!fl_image_encoder_has_text(enc));
    fl_image imgs[2];
    for (int i = 0; i < 2; i++) {
        FL_EXPECT(fl_image_init(&imgs[i], i ? 64 : 90, i ? 64 : 50, &err) == 0);
        for (size_t k = 0; k < (size_t)imgs[i].width * imgs[i].height * 3; k++)
            imgs[i].pixels[k] = (float)((k * (7 + i)) % 17) / 16.0f;
    }
    float both[256], one[128];
    FL_EXPECTF(fl_image_encoder_embed(enc, imgs, 2, both, NULL, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_image_encoder_embed(enc, &imgs[1], 1, one, NULL, &err) == 0, "%s", err.message);
    double norm = 0;
    for (int k = 0; k < 128; k++) norm += (double)both[128 + k] * both[128 + k];
    FL_EXPECTF(fabs(norm - 1.0) < 1e-5, "squared norm %g", norm);
    FL_EXPECT(memcmp(one, both + 128, sizeof one) == 0);
    for (int i = 0; i < 2; i++) fl_image_release(&imgs[i]);
    /* One call embeds a set in batches (64 per forward): rows in the first and second batch are
     * bitwise the rows each image gets alone. */
    enum { N = 70 };
    fl_image many[N];
    for (int i = 0; i < N; i++) {
        FL_EXPECT(fl_image_init(&many[i], 64, 64, &err) == 0);
        for (size_t k = 0; k < (size_t)64 * 64 * 3; k++) many[i].pixels[k] = (float)((k * (3 + i)) % 23) / 22.0f;
    }
    float *all = malloc((size_t)N * 128 * sizeof(float));
    double t0 = fl_monotonic_s();
    FL_EXPECTF(fl_image_encoder_embed(enc, many, N, all, NULL, &err) == 0, "%s", err.message);
    double batched = fl_monotonic_s() - t0;
    bool same = true;
    t0 = fl_monotonic_s();
    for (int i = 0; i < N; i++) {
        FL_EXPECTF(fl_image_encoder_embed(enc, &many[i], 1, one, NULL, &err) == 0, "%s", err.message);
        same &= memcmp(one, all + (size_t)i * 128, sizeof one) == 0;
    }
    double alone = fl_monotonic_s() - t0;
    FL_EXPECTF(same, "a row embedded in a batch of %d differs from the same image alone", N);
    printf("  %d images: %.1f ms in one call, %.1f ms one at a time\n", N, batched * 1e3, alone * 1e3);
    for (int i = 0; i < N; i++) fl_image_release(&many[i]);
    free(all);
    fl_image_encoder_close(enc);
}

static void expect_open_error(const char *spec, const char *needle) {
    fl_image_encoder *enc = NULL;
    fl_error err = {0};
    int rc = fl_image_encoder_open(ctx, spec, &enc, &err);
    FL_EXPECTF(rc != 0 && !enc && err.message[0] && !strchr(err.message, '\n') && strstr(err.message, needle),
               "'%s': expected an error mentioning '%s', got rc %d: %s", spec, needle, rc, err.message);
    fl_image_encoder_close(enc);
}

static void test_bad_input(void) {
    char spec[700];
    /* another layout: a CLIP text encoder alone, a Flux transformer, a DINOv2 file as CLIP */
    snprintf(spec, sizeof spec, "clip:%s", data("fixtures/text/clip_tiny.safetensors"));
    expect_open_error(spec, "not a DINOv2 or CLIP vision model");
    snprintf(spec, sizeof spec, "dinov2:%s", data("fixtures/flux_a.model.safetensors"));
    expect_open_error(spec, "not a DINOv2 or CLIP vision model");
    snprintf(spec, sizeof spec, "clip:%s", data("fixtures/vision/dinov2_tiny"));
    expect_open_error(spec, "DINOv2 model, not CLIP");
    snprintf(spec, sizeof spec, "dinov2:%s", data("fixtures/vision/clip_tiny"));
    expect_open_error(spec, "CLIP vision model, not DINOv2");
    snprintf(spec, sizeof spec, "dinov2:%s", data("fixtures/vision/no_such_model.safetensors"));
    expect_open_error(spec, "no_such_model");
    expect_open_error("dinov2:", "needs a path");
    expect_open_error("resnet50:/x", "unknown encoder");
    expect_open_error("", "no encoder");
    /* the built-in encoder from a file of another layout, or from no file */
    snprintf(spec, sizeof spec, "builtin:%s", data("fixtures/flux_a.model.safetensors"));
    expect_open_error(spec, "flashlora-builtin-vit");
    expect_open_error("builtin:/nonexistent/encoder.safetensors", "/nonexistent/encoder.safetensors");
    expect_open_error("face:/nonexistent/face-models", "face models");
    /* a file of the right kind with a tensor cut short: a truncated copy */
    const char *src = data("fixtures/vision/dinov2_tiny/model.safetensors");
    unsigned char *bytes = NULL;
    size_t size = 0;
    fl_error err = {0};
    if (fl_read_file(src, (size_t)1 << 24, &bytes, &size, &err) == 0) {
        char tmp[] = "/tmp/fl_vit_truncXXXXXX";
        int fd = mkstemp(tmp);
        if (fd >= 0) {
            FL_EXPECT(write(fd, bytes, size / 2) == (ssize_t)(size / 2));
            close(fd);
            snprintf(spec, sizeof spec, "dinov2:%s", tmp);
            expect_open_error(spec, tmp);
            unlink(tmp);
        }
        free(bytes);
    }
    /* an image with no pixels */
    snprintf(spec, sizeof spec, "dinov2:%s", data("fixtures/vision/dinov2_tiny"));
    fl_image_encoder *enc = NULL;
    if (fl_image_encoder_open(ctx, spec, &enc, &err) == 0) {
        fl_image empty = {0};
        float out[32];
        FL_EXPECT(fl_image_encoder_embed(enc, &empty, 1, out, NULL, &err) != 0 && strstr(err.message, "image 0"));
        FL_EXPECT(fl_image_encoder_text(enc, "a prompt", out, &err) != 0 && err.code == FL_EUNSUPPORTED);
        fl_image_encoder_close(enc);
    }
}

int main(void) {
    fl_error err = {0};
    ctx = fl_ctx_create(fl_device_cpu(), &err);
    if (!ctx) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    FL_RUN(test_resize_matches_pil);
    FL_RUN(test_dinov2);
    FL_RUN(test_position_interpolation);
    FL_RUN(test_dinov2_swiglu);
    FL_RUN(test_clip_vision);
    FL_RUN(test_clip_text);
    FL_RUN(test_end_to_end);
    FL_RUN(test_builtin);
    FL_RUN(test_bad_input);
    printf("worst relative error against the references: %.3g\n", worst_rel);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
