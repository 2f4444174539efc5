/*
 * test_builtin_vit.c — the built-in image encoder: its forward against a PyTorch reference (a
 * tiny random model in the file layout, tests/fixtures/builtin_vit/, float64 goldens), the
 * backward of every parameter kind against central differences of the contrastive loss, the
 * NT-Xent loss and gradient against a direct double-precision computation, save/load round
 * trips (f32 and bf16), and files of other layouts refused with one line.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/rng.h"
#include "core/safetensors.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/builtin_vit.h"
#include "models/builtin_vit_internal.h"

static fl_ctx *cpu;

static fl_bvit_config tiny(void) {
    fl_bvit_config c = {8, 4, 8, 2, 2, 12, 10, 6};
    return c;
}

/* ---- NT-Xent ------------------------------------------------------------------------------------ */

/* The loss written out directly (no shared code with fl_bvit_ntxent beyond the definition). */
static double ntxent_direct(const double *z, int n, int k, double t) {
    int R = 2 * n;
    double loss = 0;
    for (int i = 0; i < R; i++) {
        double ni = 0;
        for (int q = 0; q < k; q++) ni += z[i * k + q] * z[i * k + q];
        ni = sqrt(ni);
        double denom = 0, pos = 0;
        for (int j = 0; j < R; j++) {
            if (j == i) continue;
            double nj = 0, d = 0;
            for (int q = 0; q < k; q++) {
                nj += z[j * k + q] * z[j * k + q];
                d += z[i * k + q] * z[j * k + q];
            }
            double s = d / (ni * sqrt(nj)) / t;
            denom += exp(s);
            if (j == (i < n ? i + n : i - n)) pos = s;
        }
        loss += log(denom) - pos;
    }
    return loss / R;
}

static void test_ntxent(void) {
    const int n = 4, k = 5;
    float *z = fl_test_randn((size_t)2 * n * k, 7, 1.0f);
    float dz[40];
    double top1 = -1;
    double loss = fl_bvit_ntxent(z, n, k, 0.3f, dz, &top1);
    double zd[40];
    for (int i = 0; i < 2 * n * k; i++) zd[i] = z[i];
    double want = ntxent_direct(zd, n, k, (double)0.3f);
    FL_EXPECTF(fabs(loss - want) < 1e-9, "loss %.12f, direct %.12f", loss, want);
    FL_EXPECT(top1 >= 0 && top1 <= 1);
    double worst = 0;
    for (int i = 0; i < 2 * n * k; i++) {
        const double h = 1e-6;
        zd[i] += h;
        double lp = ntxent_direct(zd, n, k, (double)0.3f);
        zd[i] -= 2 * h;
        double lm = ntxent_direct(zd, n, k, (double)0.3f);
        zd[i] += h;
        double fd = (lp - lm) / (2 * h), err = fabs(fd - dz[i]);
        if (err > worst) worst = err;
    }
    FL_EXPECTF(worst < 1e-6, "NT-Xent gradient differs from central differences by %.3g", worst);
    /* identical partners and orthogonal others: top-1 is 1 and the loss is at its floor */
    float zz[2 * 3 * 3] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1};
    double t1 = 0;
    double l2 = fl_bvit_ntxent(zz, 3, 3, 1.0f, NULL, &t1);
    double floor_ = -1.0 + log(exp(1.0) + 4.0); /* partner cos 1, four others cos 0 */
    FL_EXPECTF(fabs(l2 - floor_) < 1e-9 && t1 == 1.0, "loss %.9f (want %.9f), top1 %.3f", l2, floor_, t1);
    free(z);
}

/* ---- the backward against central differences ------------------------------------------------ */

static double loss_of(fl_bvit *m, const float *views, int n, float *z, float *dz) {
    const fl_bvit_config *c = fl_bvit_get_config(m);
    fl_bvit_forward_train(m, views, 2 * n, z);
    return fl_bvit_ntxent(z, n, c->head_out, 0.5f, dz, NULL);
}

static void test_gradcheck(void) {
    fl_bvit_config c = tiny();
    fl_bvit *m = fl_bvit_create(cpu, &c, 5);
    /* perturb every parameter so that no gradient is trivially zero (zero biases, unit norms) */
    fl_tensor p = fl_bvit_params(m);
    float *pd = p.data;
    float *noise = fl_test_randn((size_t)fl_tensor_numel(&p), 9, 0.3f);
    for (int64_t i = 0; i < fl_tensor_numel(&p); i++) pd[i] += noise[i];
    free(noise);
    const int n = 3;
    float *views = fl_test_rand_uniform((size_t)2 * n * c.image_size * c.image_size * 3, 13, 0.0f, 1.0f);
    float *z = malloc((size_t)2 * n * c.head_out * sizeof(float)), *dz = malloc((size_t)2 * n * c.head_out * sizeof(float));
    loss_of(m, views, n, z, dz);
    fl_bvit_backward(m, dz);
    fl_tensor g = fl_bvit_grads(m);
    const int64_t np = fl_tensor_numel(&g);
    float *grad = malloc((size_t)np * sizeof(float));
    memcpy(grad, g.data, (size_t)np * sizeof(float));
    /* every entry kind: check a spread of indices in each tensor */
    int checked = 0, bad = 0;
    double worst = 0;
    char worst_name[160] = "";
    for (int e = 0; e < m->n_entries; e++) {
        const bvit_entry *en = &m->entries[e];
        int count = en->numel < 6 ? (int)en->numel : 6;
        for (int k = 0; k < count; k++) {
            int64_t i = en->offset + (en->numel * k) / count + (k * 7) % (en->numel / count > 0 ? en->numel / count : 1);
            const float h = 2e-3f;
            float keep = pd[i];
            pd[i] = keep + h;
            double lp = loss_of(m, views, n, z, NULL);
            pd[i] = keep - h;
            double lm = loss_of(m, views, n, z, NULL);
            pd[i] = keep;
            double fd = (lp - lm) / (2.0 * h);
            double err = fabs(fd - grad[i]) / (1e-3 + fabs(fd));
            checked++;
            if (err > 2e-2) bad++;
            if (err > worst) {
                worst = err;
                snprintf(worst_name, sizeof worst_name, "%s [%lld]: analytic %.6g, differences %.6g", en->name,
                         (long long)(i - en->offset), grad[i], fd);
            }
        }
    }
    FL_EXPECTF(bad == 0, "%d of %d gradient entries off by more than 2%% (worst %s)", bad, checked, worst_name);
    printf("  gradcheck: %d entries over %d tensors, worst relative error %.2e (%s)\n", checked, m->n_entries, worst,
           worst_name);
    free(grad), free(z), free(dz), free(views);
    fl_bvit_free(m);
}

/* ---- golden against the PyTorch reference ------------------------------------------------------- */

static void golden(const char *model_rel, const char *data_rel) {
    char mpath[4096], dpath[4096];
    fl_test_data_path(model_rel, mpath, sizeof mpath);
    fl_test_data_path(data_rel, dpath, sizeof dpath);
    fl_bvit *m = NULL;
    fl_error err = {0};
    if (fl_bvit_load(cpu, mpath, &m, &err) != 0) {
        fl_test_fail_at(__FILE__, __LINE__, "load: %s", err.message);
        return;
    }
    int64_t n_img = 0, n_out = 0, shape[8];
    int nd = 0;
    float *images = fl_test_load_f32(dpath, "images", &n_img, shape, &nd);
    float *want = fl_test_load_f32(dpath, "embeddings", &n_out, NULL, NULL);
    float *want_z = fl_test_load_f32(dpath, "projections", NULL, NULL, NULL);
    if (!images || !want || !want_z) return;
    const fl_bvit_config *c = fl_bvit_get_config(m);
    int n = (int)shape[0];
    float *got = malloc((size_t)n_out * sizeof(float));
    FL_EXPECT(fl_bvit_embed(m, images, n, got, &err) == 0);
    FL_EXPECT_CLOSE("embeddings", got, want, (size_t)n_out, 1e-5, 1e-5);
    /* the head too (through the training forward) */
    float *z = malloc((size_t)n * c->head_out * sizeof(float));
    fl_bvit_forward_train(m, images, n, z);
    FL_EXPECT_CLOSE("projections", z, want_z, (size_t)n * c->head_out, 1e-5, 1e-5);
    double maxrel = 0;
    for (int64_t i = 0; i < n_out; i++) {
        double r = fabs(got[i] - want[i]) / (fabs(want[i]) + 1e-6);
        if (r > maxrel && fabs(want[i]) > 1e-3) maxrel = r;
    }
    printf("  %s: %d images, max relative error %.2e\n", model_rel, n, maxrel);
    free(got), free(z), free(images), free(want), free(want_z);
    fl_bvit_free(m);
}

static void test_golden_tiny(void) { golden("fixtures/builtin_vit/tiny.safetensors", "fixtures/builtin_vit/tiny_io.safetensors"); }

/* ---- files ------------------------------------------------------------------------------------- */

static void test_save_load(void) {
    fl_bvit_config c = tiny();
    fl_bvit *m = fl_bvit_create(cpu, &c, 3);
    char dir[] = "/tmp/fl_bvit_XXXXXX";
    FL_EXPECT(mkdtemp(dir) != NULL);
    char f32p[256], bf16p[256];
    snprintf(f32p, sizeof f32p, "%s/m32.safetensors", dir);
    snprintf(bf16p, sizeof bf16p, "%s/m16.safetensors", dir);
    fl_error err = {0};
    const char *kv[] = {"note", "test"};
    FL_EXPECT(fl_bvit_save(m, f32p, false, kv, 2, &err) == 0);
    FL_EXPECT(fl_bvit_save(m, bf16p, true, NULL, 0, &err) == 0);
    const int n = 4;
    float *img = fl_test_rand_uniform((size_t)n * c.image_size * c.image_size * 3, 17, 0.0f, 1.0f);
    float a[64], b[64], d[64];
    FL_EXPECT(fl_bvit_embed(m, img, n, a, &err) == 0);
    fl_bvit *m2 = NULL, *m3 = NULL;
    FL_EXPECTF(fl_bvit_load(cpu, f32p, &m2, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_bvit_load(cpu, bf16p, &m3, &err) == 0, "%s", err.message);
    if (m2 && m3) {
        FL_EXPECT(fl_bvit_get_config(m2)->head_hidden == c.head_hidden && fl_bvit_get_config(m2)->heads == c.heads);
        FL_EXPECT(fl_bvit_embed(m2, img, n, b, &err) == 0);
        FL_EXPECT_CLOSE("f32 round trip", b, a, (size_t)n * c.dim, 0, 0);
        FL_EXPECT(fl_bvit_embed(m3, img, n, d, &err) == 0);
        FL_EXPECT_CLOSE("bf16 round trip", d, a, (size_t)n * c.dim, 0.05, 0.05);
        FL_EXPECT(strlen(fl_bvit_file_sha256(m2)) == 64);
    }
    /* copying into a head-less model keeps the encoder's output */
    fl_bvit_config enc = c;
    enc.head_hidden = enc.head_out = 0;
    fl_bvit *e = fl_bvit_create(cpu, &enc, 99);
    FL_EXPECT(fl_bvit_copy_weights(e, m, &err) == 0);
    FL_EXPECT(fl_bvit_embed(e, img, n, b, &err) == 0);
    FL_EXPECT_CLOSE("copied encoder", b, a, (size_t)n * c.dim, 0, 0);
    fl_bvit *back = fl_bvit_create(cpu, &c, 1);
    FL_EXPECT(fl_bvit_copy_weights(back, e, &err) != 0 && strstr(err.message, "head"));
    fl_bvit_free(back);
    fl_bvit_free(e);
    fl_bvit_free(m), fl_bvit_free(m2), fl_bvit_free(m3);
    free(img);
    unlink(f32p), unlink(bf16p), rmdir(dir);
}

static void write_file(const char *path, const fl_safetensors_entry *e, size_t n, const fl_safetensors_kv *kv, size_t nkv) {
    fl_error err = {0};
    FL_CHECK(fl_safetensors_write(path, e, n, kv, nkv, &err) == 0);
}

static void test_bad_files(void) {
    char dir[] = "/tmp/fl_bvit_bad_XXXXXX";
    FL_EXPECT(mkdtemp(dir) != NULL);
    char p[256];
    fl_error err = {0};
    fl_bvit *m = NULL;
    float buf[4096] = {0};
    /* another encoder's layout (a DINOv2 key) */
    snprintf(p, sizeof p, "%s/dino.safetensors", dir);
    fl_safetensors_entry dino = {"embeddings.cls_token", FL_ST_F32, 3, {1, 1, 8}, buf};
    write_file(p, &dino, 1, NULL, 0);
    FL_EXPECT(fl_bvit_load(cpu, p, &m, &err) != 0 && m == NULL);
    FL_EXPECTF(strstr(err.message, "not a flashlora-builtin-vit file") && !strchr(err.message, '\n'), "%s", err.message);
    /* the right anchors, a wrong shape */
    snprintf(p, sizeof p, "%s/shape.safetensors", dir);
    fl_safetensors_entry ents[3] = {{"patch_embed.weight", FL_ST_F32, 4, {8, 3, 4, 5}, buf},
                                    {"pos_embed", FL_ST_F32, 3, {1, 5, 8}, buf},
                                    {"blocks.0.mlp.fc1.weight", FL_ST_F32, 2, {12, 8}, buf}};
    write_file(p, ents, 3, NULL, 0);
    FL_EXPECT(fl_bvit_load(cpu, p, &m, &err) != 0);
    FL_EXPECTF(strstr(err.message, "patch_embed.weight must be"), "%s", err.message);
    /* consistent anchors but the blocks missing */
    ents[0].shape[3] = 4;
    write_file(p, ents, 3, NULL, 0);
    FL_EXPECT(fl_bvit_load(cpu, p, &m, &err) != 0);
    FL_EXPECTF(strstr(err.message, "blocks.0.attn.qkv.weight' is missing"), "%s", err.message);
    fl_safetensors_kv kv = {"heads", "2"};
    write_file(p, ents, 3, &kv, 1);
    FL_EXPECT(fl_bvit_load(cpu, p, &m, &err) != 0);
    FL_EXPECTF(strstr(err.message, "is missing"), "%s", err.message);
    /* a non-finite weight */
    fl_bvit_config c = tiny();
    fl_bvit *good = fl_bvit_create(cpu, &c, 1);
    snprintf(p, sizeof p, "%s/nan.safetensors", dir);
    FL_EXPECT(fl_bvit_save(good, p, false, NULL, 0, &err) == 0);
    fl_tensor params = fl_bvit_params(good);
    ((float *)params.data)[3] = NAN;
    FL_EXPECT(fl_bvit_save(good, p, false, NULL, 0, &err) == 0);
    FL_EXPECT(fl_bvit_load(cpu, p, &m, &err) != 0);
    FL_EXPECTF(strstr(err.message, "non-finite"), "%s", err.message);
    /* truncated: not a safetensors file any more */
    FILE *f = fopen(p, "r+");
    if (f) {
        FL_EXPECT(ftruncate(fileno(f), 100) == 0);
        fclose(f);
    }
    FL_EXPECT(fl_bvit_load(cpu, p, &m, &err) != 0);
    /* a folder with nothing in it */
    FL_EXPECT(fl_bvit_load(cpu, dir, &m, &err) != 0);
    fl_bvit_free(good);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    FL_EXPECT(system(cmd) == 0);
}

static void test_config(void) {
    fl_error err = {0};
    fl_bvit_config c = fl_bvit_config_default();
    FL_EXPECT(fl_bvit_config_validate(&c, &err) == 0);
    /* the shipped encoder stays small: under 10 MB in bf16 */
    FL_EXPECT(fl_bvit_param_count(&c, false) * 2 < 10 * 1000 * 1000);
    c.patch = 7;
    FL_EXPECT(fl_bvit_config_validate(&c, &err) != 0);
    c = fl_bvit_config_default();
    c.heads = 5;
    FL_EXPECT(fl_bvit_config_validate(&c, &err) != 0);
}

int main(void) {
    fl_error err = {0};
    cpu = fl_ctx_create(fl_device_cpu(), &err);
    FL_RUN(test_config);
    FL_RUN(test_ntxent);
    FL_RUN(test_gradcheck);
    FL_RUN(test_save_load);
    FL_RUN(test_bad_files);
    FL_RUN(test_golden_tiny);
    fl_ctx_destroy(cpu);
    return fl_test_finish();
}
