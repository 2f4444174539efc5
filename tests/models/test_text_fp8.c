/*
 * test_text_fp8.c — T5 files in fp8 (as t5xxl_fp8_e4m3fn.safetensors and the scaled-fp8 files users
 * have): the tiny pipeline's T5 (tests/fixtures/pipeline/dev/text_encoder_2) is quantized to
 * F8_E4M3 with one scale per tensor ("<stem>.scale_weight", plus the "scaled_fp8" marker) and, for
 * the unscaled form, to F8_E5M2; the text encoders loaded from such a file must encode a prompt
 * bitwise as from an F32 file holding the dequantized values.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fileio.h"
#include "harness.h"
#include "models/text/text_encoders.h"
#include "models/weights.h"

static char tmpdir[] = "/tmp/fl_text_fp8_XXXXXX";

/* The code of the nearest representable value (ties to the lower code: any fixed rule will do). */
static uint8_t nearest(float v, bool e4m3) {
    uint8_t best = 0;
    float dist = INFINITY;
    for (int c = 0; c < 256; c++) {
        float q = e4m3 ? fl_f8_e4m3_to_f32((uint8_t)c) : fl_f8_e5m2_to_f32((uint8_t)c);
        if (!isfinite(q)) continue;
        if (fabsf(q - v) < dist) dist = fabsf(q - v), best = (uint8_t)c;
    }
    return best;
}

/* Writes the T5 fixture as fp8 (with per-tensor scales when scaled) and as F32 dequantized. */
static void quantize(const char *fp8_path, const char *f32_path, bool e4m3, bool scaled) {
    char dir[512];
    fl_test_data_path("fixtures/pipeline/dev/text_encoder_2", dir, sizeof dir);
    fl_weights *w = NULL;
    fl_error err = {0};
    FL_CHECKF(fl_weights_open(dir, &w, &err) == 0, "%s", err.message);
    size_t n = fl_weights_count(w);
    fl_safetensors_entry *q = fl_xcalloc(2 * n + 1, sizeof *q), *f = fl_xcalloc(n, sizeof *f);
    char (*names)[160] = fl_xcalloc(n, sizeof *names);
    float *scales = fl_xcalloc(n, sizeof *scales);
    void **owned = fl_xcalloc(2 * n, sizeof *owned);
    size_t nq = 0;
    for (size_t i = 0; i < n; i++) {
        const fl_weight *t = fl_weights_at(w, i);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        float *v = fl_xmalloc((size_t)numel * sizeof(float)), *deq = fl_xmalloc((size_t)numel * sizeof(float));
        uint8_t *codes = fl_xmalloc((size_t)numel);
        FL_CHECK(fl_weights_read_f32(w, t, v, &err) == 0);
        float amax = 0;
        for (int64_t k = 0; k < numel; k++) amax = fmaxf(amax, fabsf(v[k]));
        scales[i] = scaled && amax > 0 ? amax / (e4m3 ? 448.0f : 57344.0f) : 1.0f;
        for (int64_t k = 0; k < numel; k++) {
            codes[k] = nearest(v[k] / scales[i], e4m3);
            deq[k] = (e4m3 ? fl_f8_e4m3_to_f32(codes[k]) : fl_f8_e5m2_to_f32(codes[k])) * scales[i];
        }
        q[nq] = (fl_safetensors_entry){t->name, e4m3 ? FL_ST_F8_E4M3 : FL_ST_F8_E5M2, t->ndim, {0}, codes};
        memcpy(q[nq].shape, t->shape, sizeof q[nq].shape);
        nq++;
        if (scaled) {
            snprintf(names[i], sizeof names[i], "%.*s.scale_weight", (int)(strlen(t->name) - 7), t->name);
            q[nq++] = (fl_safetensors_entry){names[i], FL_ST_F32, 0, {0}, &scales[i]};
        }
        f[i] = (fl_safetensors_entry){t->name, FL_ST_F32, t->ndim, {0}, deq};
        memcpy(f[i].shape, t->shape, sizeof f[i].shape);
        owned[2 * i] = codes, owned[2 * i + 1] = deq;
        free(v);
    }
    static float marker = 0.0f;
    if (scaled) q[nq++] = (fl_safetensors_entry){"scaled_fp8", FL_ST_F32, 0, {0}, &marker};
    FL_CHECKF(fl_safetensors_write(fp8_path, q, nq, NULL, 0, &err) == 0, "%s", err.message);
    FL_CHECKF(fl_safetensors_write(f32_path, f, n, NULL, 0, &err) == 0, "%s", err.message);
    for (size_t i = 0; i < 2 * n; i++) free(owned[i]);
    free(owned), free(scales), free(names), free(f), free(q);
    fl_weights_close(w);
}

static void encode(const char *t5, float *txt, float *y) {
    char clip[512];
    fl_test_data_path("fixtures/pipeline/dev/text_encoder", clip, sizeof clip);
    fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), NULL);
    fl_text_encoders_files files = {clip, t5, NULL, NULL, FL_T5_LENGTH_SCHNELL};
    fl_text_encoders *te = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_text_encoders_load(cpu, &files, &te, &err) == 0, "%s: %s", t5, err.message);
    if (te) FL_EXPECTF(fl_text_encoders_encode_host(te, "a photo of sks", txt, y, &err) == 0, "%s", err.message);
    fl_text_encoders_free(te);
    fl_ctx_destroy(cpu);
}

static void check(bool e4m3, bool scaled) {
    char fp8[256], f32[256], cfg[512], src[512], cmd[4096];
    snprintf(fp8, sizeof fp8, "%s/fp8_%d%d", tmpdir, e4m3, scaled);
    snprintf(f32, sizeof f32, "%s/f32_%d%d", tmpdir, e4m3, scaled);
    /* Each form in a folder of its own with the fixture's config.json (heads, epsilon). */
    fl_test_data_path("fixtures/pipeline/dev/text_encoder_2/config.json", src, sizeof src);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' '%s' && cp '%s' '%s/' && cp '%s' '%s/'", fp8, f32, src, fp8, src, f32);
    FL_CHECK(system(cmd) == 0);
    snprintf(cfg, sizeof cfg, "%s/model.safetensors", fp8);
    char f32file[600];
    snprintf(f32file, sizeof f32file, "%s/model.safetensors", f32);
    quantize(cfg, f32file, e4m3, scaled);
    size_t ntxt = (size_t)FL_T5_LENGTH_SCHNELL * 4, ny = 4;
    float *a = fl_xcalloc(ntxt, sizeof(float)), *b = fl_xcalloc(ntxt, sizeof(float));
    float ya[4] = {0}, yb[4] = {0};
    encode(fp8, a, ya);
    encode(f32, b, yb);
    FL_EXPECTF(!memcmp(a, b, ntxt * sizeof(float)) && !memcmp(ya, yb, ny * sizeof(float)),
               "%s%s: the fp8 file encodes differently from its dequantized F32 copy", e4m3 ? "E4M3" : "E5M2",
               scaled ? " scaled" : "");
    double mag = 0;
    for (size_t i = 0; i < ntxt; i++) mag += fabs(a[i]);
    FL_EXPECT(mag > 0);
    free(a), free(b);
}

static void test_scaled_e4m3(void) { check(true, true); }
static void test_plain_e5m2(void) { check(false, false); }

int main(void) {
    FL_CHECK(mkdtemp(tmpdir));
    FL_RUN(test_scaled_e4m3);
    FL_RUN(test_plain_e5m2);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_finish();
}
