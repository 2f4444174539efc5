/*
 * test_flux_golden_device.c — the Flux goldens of tests/fixtures through a device backend.
 *
 *   test_flux_golden_device cpu    the CPU backend (F32): proves this test itself here
 *   test_flux_golden_device cuda   the CUDA backend in F32 and in BF16 storage; exits 77 (skipped)
 *                                  where no CUDA device is usable
 *
 * For both tiny configurations (a: guidance embedding and qkv bias; b: neither) it checks the
 * forward output, the output with a canonical LoRA and with two stacked adapters, the same LoRA
 * applied through per-sample adapters, the flow-matching loss and the gradients of every LoRA A
 * and B, and in F32 storage (config b) the gradients of every base weight, against the float64
 * PyTorch reference. Everything is uploaded to and downloaded from the device through the context,
 * as a worker does.
 *
 * Tolerances, with scale = the largest magnitude of the reference tensor (for gradients, of the
 * whole set) and rel = ||got - ref|| / ||ref||:
 *   F32 storage:  max |err| <= 1e-4 scale (as the CPU golden test); loss within 1e-4 relative.
 *   BF16 storage: rel <= 3e-2 and max |err| <= 0.1 scale for outputs; rel <= 6e-2 and
 *                 max |err| <= 0.25 scale for gradients; loss within 3e-2 relative. Rounding only
 *                 the weights and inputs to bf16 already moves the CPU forward by rel 5.6e-3
 *                 (config a) and 4.6e-3 (b), max 6.7e-3 of scale; storing every activation in
 *                 bf16 between ops, through 2 double and 2 single blocks, adds errors of that
 *                 order, about 1e-2 in all — the bounds leave 2-3x; a wrong kernel is off by
 *                 O(1). Set before any GPU run: the achieved figures are printed for every check
 *                 so the first run can tighten them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "core/device.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/flux.h"

static fl_ctx *ctx;
static fl_dtype storage;

typedef struct tol {
    double rel, max_scaled, loss;
} tol;

static tol out_tol(void) {
    return storage == FL_F32 ? (tol){1.0, 1e-4, 1e-4} : (tol){3e-2, 0.1, 3e-2};
}
static tol grad_tol(void) {
    return storage == FL_F32 ? (tol){1.0, 1e-4, 1e-4} : (tol){6e-2, 0.25, 3e-2};
}

static const char *fixture(const char *config, const char *part, char *buf, size_t size) {
    char rel[128];
    snprintf(rel, sizeof rel, "fixtures/flux_%s.%s.safetensors", config, part);
    return fl_test_data_path(rel, buf, size);
}

/* ---- device inputs ----------------------------------------------------------------------------- */

typedef struct dev_inputs {
    float *img_ids, *txt_ids;
    fl_tensor img, txt, y, t, g;
    int64_t img_shape[8], batch;
    bool guidance;
    fl_flux_inputs in;
} dev_inputs;

static fl_tensor upload(const float *host, fl_dtype dtype, int ndim, const int64_t *shape) {
    fl_tensor t = fl_ctx_tensor(ctx, dtype, ndim, shape);
    fl_ctx_upload_f32(ctx, &t, host, (size_t)fl_tensor_numel(&t));
    return t;
}

static bool load_inputs(const char *config, bool guidance, dev_inputs *di) {
    memset(di, 0, sizeof *di);
    char path[512];
    fixture(config, "inputs", path, sizeof path);
    int64_t txt_shape[8], y_shape[8];
    int nd = 0;
    float *img = fl_test_load_f32(path, "img", NULL, di->img_shape, &nd);
    float *txt = fl_test_load_f32(path, "txt", NULL, txt_shape, &nd);
    float *y = fl_test_load_f32(path, "y", NULL, y_shape, &nd);
    float *t = fl_test_load_f32(path, "timesteps", NULL, NULL, NULL);
    float *g = guidance ? fl_test_load_f32(path, "guidance", NULL, NULL, NULL) : NULL;
    di->img_ids = fl_test_load_f32(path, "img_ids", NULL, NULL, NULL);
    di->txt_ids = fl_test_load_f32(path, "txt_ids", NULL, NULL, NULL);
    bool ok = img && txt && y && t && di->img_ids && di->txt_ids && (!guidance || g);
    if (ok) {
        di->batch = di->img_shape[0];
        di->guidance = guidance;
        di->img = upload(img, storage, 3, di->img_shape);
        di->txt = upload(txt, storage, 3, txt_shape);
        di->y = upload(y, storage, 2, y_shape);
        di->t = upload(t, FL_F32, 1, &di->batch);
        if (guidance) di->g = upload(g, FL_F32, 1, &di->batch);
        di->in = (fl_flux_inputs){&di->img, &di->txt, &di->y, &di->t, guidance ? &di->g : NULL, di->img_ids,
                                  di->txt_ids};
    }
    free(img), free(txt), free(y), free(t), free(g);
    return ok;
}

static void free_inputs(dev_inputs *di) {
    fl_tensor *t[] = {&di->img, &di->txt, &di->y, &di->t, &di->g};
    for (int i = 0; i < 5; i++)
        if (t[i]->data) fl_ctx_tensor_free(ctx, t[i]);
    free(di->img_ids);
    free(di->txt_ids);
}

/* ---- comparisons ------------------------------------------------------------------------------- */

typedef struct errors {
    double worst, scale, diff2, ref2;
} errors;

static void accumulate(errors *e, const float *got, const float *want, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        if (!(fabs(d) <= e->worst)) e->worst = isnan(d) ? INFINITY : fmax(e->worst, fabs(d));
        e->scale = fmax(e->scale, fabs(want[i]));
        e->diff2 += d * d;
        e->ref2 += (double)want[i] * want[i];
    }
}

static void judge(const char *what, const errors *e, tol t) {
    double scaled = e->worst / (e->scale > 0 ? e->scale : 1), rel = sqrt(e->diff2 / (e->ref2 > 0 ? e->ref2 : 1));
    printf("  [%s] %-44s max |err| / scale = %.2e, rel = %.2e (scale %.3g)\n", fl_dtype_name(storage), what, scaled,
           rel, e->scale);
    FL_EXPECTF(scaled <= t.max_scaled && rel <= t.rel, "[%s] %s: max |err| / scale %.3e (limit %.1e), rel %.3e (limit %.1e)",
               fl_dtype_name(storage), what, scaled, t.max_scaled, rel, t.rel);
}

static float *download(const fl_tensor *t) {
    int64_t n = fl_tensor_numel(t);
    float *h = malloc((size_t)(n ? n : 1) * sizeof(float));
    fl_ctx_download_f32(ctx, h, t, (size_t)n);
    return h;
}

/* ---- model and adapters ------------------------------------------------------------------------- */

static fl_flux_model *load_model(const char *config) {
    char path[512];
    fl_error err = {0};
    fl_flux_model *m = NULL;
    FL_EXPECTF(fl_flux_load(ctx, fixture(config, "model", path, sizeof path), NULL, &m, &err) == 0, "load: %s",
               err.message);
    return m;
}

static int attach(fl_flux_model *m, const char *config, const char *part, float multiplier, bool trainable) {
    char path[512];
    fl_error err = {0};
    fl_lora *lora = NULL;
    if (fl_lora_load_for_model(fixture(config, part, path, sizeof path), m, &lora, &err) != 0) {
        FL_EXPECTF(0, "lora %s: %s", part, err.message);
        return -1;
    }
    int id = fl_flux_add_adapter(m, lora->pairs, lora->n_pairs, multiplier, trainable, &err);
    FL_EXPECTF(id >= 0, "attach %s: %s", part, err.message);
    fl_lora_free(lora);
    return id;
}

/* ---- checks ------------------------------------------------------------------------------------- */

/* per_sample: the first adapter goes through per-sample adapters (every sample selects it). */
static void check_forward(const char *config, const char *expected, const char *lora1, const char *lora2,
                          bool per_sample) {
    fl_flux_model *m = load_model(config);
    if (!m) return;
    dev_inputs di;
    bool ok = load_inputs(config, fl_flux_get_params(m)->guidance_embed, &di);
    int id1 = -1;
    if (ok && lora1) ok = (id1 = attach(m, config, lora1, per_sample ? 1.0f : 0.8f, false)) >= 0;
    if (ok && lora2) ok = attach(m, config, lora2, -0.5f, false) >= 0;
    if (ok && per_sample) {
        fl_flux_sample_adapters sel[16];
        memset(sel, 0, sizeof sel);
        for (int b = 0; b < di.batch && b < 16; b++) sel[b] = (fl_flux_sample_adapters){1, {id1}, {0.8f}};
        fl_error err = {0};
        ok = fl_flux_set_sample_adapters(m, (int)di.batch, sel, &err) == 0;
        FL_EXPECTF(ok, "%s", err.message);
    }
    char path[512];
    int64_t n = 0;
    float *want = fl_test_load_f32(fixture(config, "expected", path, sizeof path), expected, &n, NULL, NULL);
    if (ok && want) {
        fl_tensor out;
        fl_error err = {0};
        if (fl_flux_forward(m, &di.in, &out, &err) == 0 && fl_tensor_numel(&out) == n) {
            float *got = download(&out);
            errors e = {0, 0, 0, 0};
            accumulate(&e, got, want, n);
            char what[96];
            snprintf(what, sizeof what, "flux_%s %s%s", config, expected, per_sample ? " (per-sample)" : "");
            judge(what, &e, out_tol());
            free(got);
        } else {
            FL_EXPECTF(0, "forward: %s", err.message);
        }
    }
    free(want);
    free_inputs(&di);
    fl_flux_free(m);
}

static void check_grads(const char *config, bool full) {
    fl_flux_model *m = load_model(config);
    if (!m) return;
    dev_inputs di;
    char path[512];
    fixture(config, "expected", path, sizeof path);
    bool ok = load_inputs(config, fl_flux_get_params(m)->guidance_embed, &di);
    if (ok && !full) ok = attach(m, config, "lora", 1.0f, true) >= 0;
    if (full) fl_flux_enable_full_grads(m);
    float *x0 = fl_test_load_f32(path, "train.x0", NULL, NULL, NULL);
    float *noise = fl_test_load_f32(path, "train.noise", NULL, NULL, NULL);
    float *t = fl_test_load_f32(path, "train.t", NULL, NULL, NULL);
    float *want_loss = fl_test_load_f32(path, full ? "train_full.loss" : "train.loss", NULL, NULL, NULL);
    if (ok && x0 && noise && t && want_loss) {
        fl_tensor d_x0 = upload(x0, storage, 3, di.img_shape), d_noise = upload(noise, storage, 3, di.img_shape);
        fl_tensor d_t = upload(t, FL_F32, 1, &di.batch);
        fl_flux_inputs in = di.in;
        in.timesteps = &d_t;
        fl_flux_zero_grads(m);
        double loss = 0;
        fl_error err = {0};
        FL_EXPECTF(fl_flux_loss_and_grads(m, &in, &d_x0, &d_noise, &loss, &err) == 0, "step: %s", err.message);
        tol gt = grad_tol();
        printf("  [%s] flux_%s loss %.7f (reference %.7f)\n", fl_dtype_name(storage), config, loss, (double)want_loss[0]);
        FL_EXPECTF(fabs(loss - want_loss[0]) <= gt.loss * fabs(want_loss[0]), "[%s] loss %.8f vs %.8f",
                   fl_dtype_name(storage), loss, (double)want_loss[0]);
        errors e = {0, 0, 0, 0};
        size_t count = full ? fl_flux_param_count(m) : fl_flux_linear_count(m);
        int compared = 0;
        char key[256];
        for (size_t i = 0; i < count; i++) {
            for (int part = 0; part < (full ? 1 : 2); part++) {
                fl_tensor *g = NULL;
                if (full) {
                    const char *name;
                    fl_flux_param_at(m, i, &name, NULL, &g);
                    snprintf(key, sizeof key, "grad_full.%s", name);
                } else {
                    fl_flux_linear *lin = fl_flux_linear_at(m, i);
                    if (lin->trainable < 0) continue;
                    g = part == 0 ? &lin->grad_a : &lin->grad_b;
                    snprintf(key, sizeof key, "grad.%s.%s", lin->name, part == 0 ? "lora_A.weight" : "lora_B.weight");
                }
                int64_t n = 0;
                float *want = fl_test_load_f32(path, key, &n, NULL, NULL);
                if (!want) continue;
                FL_EXPECTF(n == fl_tensor_numel(g), "%s: %lld elements vs %lld", key, (long long)n,
                           (long long)fl_tensor_numel(g));
                if (n == fl_tensor_numel(g)) {
                    float *got = download(g);
                    accumulate(&e, got, want, n);
                    free(got);
                    compared++;
                }
                free(want);
            }
        }
        char what[96];
        snprintf(what, sizeof what, "flux_%s %s gradients (%d tensors)", config, full ? "full" : "LoRA", compared);
        judge(what, &e, gt);
        FL_EXPECT(compared > 0 && e.scale > 0);
        fl_ctx_tensor_free(ctx, &d_x0);
        fl_ctx_tensor_free(ctx, &d_noise);
        fl_ctx_tensor_free(ctx, &d_t);
    }
    free(x0), free(noise), free(t), free(want_loss);
    free_inputs(&di);
    fl_flux_free(m);
}

static void test_forward(void) {
    check_forward("a", "out", NULL, NULL, false);
    check_forward("b", "out", NULL, NULL, false);
}
static void test_lora(void) {
    check_forward("a", "out_lora", "lora", NULL, false);
    check_forward("b", "out_lora", "lora", NULL, false);
    check_forward("b", "out_lora", "lora_kohya", NULL, false);
}
static void test_two_adapters(void) {
    check_forward("a", "out_lora2", "lora", "lora2", false);
    check_forward("b", "out_lora2", "lora", "lora2", false);
}
static void test_per_sample(void) {
    check_forward("a", "out_lora", "lora", NULL, true);
    check_forward("b", "out_lora", "lora", NULL, true);
}
static void test_lora_grads(void) {
    check_grads("a", false);
    check_grads("b", false);
}
/* Full training keeps its gradients in the storage dtype: checked in F32 storage only. */
static void test_full_grads(void) {
    if (storage == FL_F32) check_grads("b", true);
}

static void run_all(void) {
    FL_RUN(test_forward);
    FL_RUN(test_lora);
    FL_RUN(test_two_adapters);
    FL_RUN(test_per_sample);
    FL_RUN(test_lora_grads);
    FL_RUN(test_full_grads);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "cpu";
    fl_error err = {0};
    if (!strcmp(mode, "cpu")) {
        ctx = fl_ctx_create(fl_device_cpu(), &err);
        storage = FL_F32;
        run_all();
    } else if (!strcmp(mode, "cuda")) {
        if (fl_cuda_device_count() == 0) fl_test_skip_all("no usable CUDA device");
        fl_device gpu = {FL_DEVICE_CUDA, 0};
        ctx = fl_ctx_create(gpu, &err);
        if (!ctx) {
            if (err.code == FL_EUNSUPPORTED) fl_test_skip_all(err.message);
            fprintf(stderr, "cannot create a CUDA context: %s\n", err.message);
            return 1;
        }
        const fl_dtype order[2] = {FL_F32, FL_BF16};
        for (int i = 0; i < 2; i++) {
            storage = order[i];
            FL_EXPECT(fl_ctx_set_storage_dtype(ctx, storage, &err) == 0);
            run_all();
        }
    } else {
        fprintf(stderr, "usage: %s cpu|cuda\n", argv[0]);
        return 2;
    }
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
