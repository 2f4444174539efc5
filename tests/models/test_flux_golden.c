/*
 * test_flux_golden.c — the C Flux model against the PyTorch reference (tests/reference/).
 *
 * For the two tiny configurations of tests/fixtures (a: guidance embedding + qkv bias, non-square
 * grid; b: neither), checks the forward output, the output with a canonical LoRA, with the same
 * LoRA in kohya's layout, with two stacked adapters, the flow-matching loss and the gradients of
 * every LoRA A and B, and (config b) the gradients of every base weight. The reference ran in
 * float64; this model runs in float32, so every comparison allows max |error| <= 1e-4 of the
 * tensor's scale (its largest magnitude).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/flux.h"

#define REL_TOL 1e-4

static fl_ctx *cpu;

typedef struct fixture_inputs {
    float *img, *txt, *y, *timesteps, *guidance, *img_ids, *txt_ids;
    int64_t img_shape[8], txt_shape[8], y_shape[8], batch;
    fl_tensor img_t, txt_t, y_t, t_t, g_t;
    fl_flux_inputs in;
} fixture_inputs;

static const char *fixture(const char *config, const char *part, char *buf, size_t size) {
    char rel[128];
    snprintf(rel, sizeof rel, "fixtures/flux_%s.%s.safetensors", config, part);
    return fl_test_data_path(rel, buf, size);
}

static bool load_inputs(const char *config, bool guidance, fixture_inputs *fi) {
    memset(fi, 0, sizeof *fi);
    char path[512];
    fixture(config, "inputs", path, sizeof path);
    int nd;
    fi->img = fl_test_load_f32(path, "img", NULL, fi->img_shape, &nd);
    fi->txt = fl_test_load_f32(path, "txt", NULL, fi->txt_shape, &nd);
    fi->y = fl_test_load_f32(path, "y", NULL, fi->y_shape, &nd);
    fi->timesteps = fl_test_load_f32(path, "timesteps", NULL, NULL, NULL);
    fi->img_ids = fl_test_load_f32(path, "img_ids", NULL, NULL, NULL);
    fi->txt_ids = fl_test_load_f32(path, "txt_ids", NULL, NULL, NULL);
    if (guidance) fi->guidance = fl_test_load_f32(path, "guidance", NULL, NULL, NULL);
    if (!fi->img || !fi->txt || !fi->y || !fi->timesteps || !fi->img_ids || !fi->txt_ids || (guidance && !fi->guidance))
        return false;
    fi->batch = fi->img_shape[0];
    fi->img_t = fl_tensor_f32_3d(fi->img, fi->img_shape[0], fi->img_shape[1], fi->img_shape[2]);
    fi->txt_t = fl_tensor_f32_3d(fi->txt, fi->txt_shape[0], fi->txt_shape[1], fi->txt_shape[2]);
    fi->y_t = fl_tensor_f32_2d(fi->y, fi->y_shape[0], fi->y_shape[1]);
    fi->t_t = fl_tensor_f32_1d(fi->timesteps, fi->batch);
    fi->in.img = &fi->img_t;
    fi->in.txt = &fi->txt_t;
    fi->in.y = &fi->y_t;
    fi->in.timesteps = &fi->t_t;
    fi->in.img_ids = fi->img_ids;
    fi->in.txt_ids = fi->txt_ids;
    if (guidance) {
        fi->g_t = fl_tensor_f32_1d(fi->guidance, fi->batch);
        fi->in.guidance = &fi->g_t;
    }
    return true;
}

static void free_inputs(fixture_inputs *fi) {
    free(fi->img);
    free(fi->txt);
    free(fi->y);
    free(fi->timesteps);
    free(fi->guidance);
    free(fi->img_ids);
    free(fi->txt_ids);
}

/* max |got - want| <= REL_TOL * max |want|; prints the achieved relative error. */
static void compare_scaled(const char *what, const float *got, const float *want, int64_t n) {
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
    printf("  %-40s max |err| / scale = %.2e (scale %.3g)\n", what, scale > 0 ? worst / scale : worst, scale);
    FL_EXPECT_CLOSE(what, got, want, (size_t)n, REL_TOL * (scale > 0 ? scale : 1.0), 0.0);
}

static fl_flux_model *load_model(const char *config) {
    char path[512];
    fl_error err = {0};
    fl_flux_model *m = NULL;
    if (fl_flux_load(cpu, fixture(config, "model", path, sizeof path), NULL, &m, &err) != 0) {
        FL_EXPECTF(0, "load: %s", err.message);
        return NULL;
    }
    return m;
}

static bool attach(fl_flux_model *m, const char *config, const char *part, float multiplier, bool trainable) {
    char path[512];
    fl_error err = {0};
    size_t n_paths;
    const char **paths = fl_lora_model_paths(m, &n_paths);
    fl_lora *lora = NULL;
    int rc = fl_lora_load(fixture(config, part, path, sizeof path), paths, n_paths, &lora, &err);
    free(paths);
    FL_EXPECTF(rc == 0, "lora %s: %s", part, err.message);
    if (rc != 0) return false;
    FL_EXPECTF(lora->n_unmatched == 0, "lora %s: %zu keys did not apply", part, lora->n_unmatched);
    rc = fl_flux_add_adapter(m, lora->pairs, lora->n_pairs, multiplier, trainable, &err);
    FL_EXPECTF(rc >= 0, "attach %s: %s", part, err.message);
    fl_lora_free(lora);
    return rc >= 0;
}

static void check_forward(const char *config, const char *expected_name, const char *lora1, const char *lora2) {
    fl_flux_model *m = load_model(config);
    if (!m) return;
    fixture_inputs fi;
    bool ok = load_inputs(config, fl_flux_get_params(m)->guidance_embed, &fi);
    if (ok && lora1) ok = attach(m, config, lora1, 0.8f, false);
    if (ok && lora2) ok = attach(m, config, lora2, -0.5f, false);
    char path[512];
    int64_t n = 0;
    float *want = fl_test_load_f32(fixture(config, "expected", path, sizeof path), expected_name, &n, NULL, NULL);
    if (ok && want) {
        fl_tensor out;
        fl_error err = {0};
        FL_EXPECTF(fl_flux_forward(m, &fi.in, &out, &err) == 0, "forward: %s", err.message);
        FL_EXPECT(fl_tensor_numel(&out) == n);
        char what[96];
        snprintf(what, sizeof what, "flux_%s %s", config, expected_name);
        if (fl_tensor_numel(&out) == n) compare_scaled(what, out.data, want, n);
    }
    free(want);
    free_inputs(&fi);
    fl_flux_free(m);
}

static void test_forward_a(void) { check_forward("a", "out", NULL, NULL); }
static void test_forward_b(void) { check_forward("b", "out", NULL, NULL); }
static void test_lora_canonical_a(void) { check_forward("a", "out_lora", "lora", NULL); }
static void test_lora_canonical_b(void) { check_forward("b", "out_lora", "lora", NULL); }
static void test_lora_kohya_a(void) { check_forward("a", "out_lora", "lora_kohya", NULL); }
static void test_lora_kohya_b(void) { check_forward("b", "out_lora", "lora_kohya", NULL); }
static void test_two_adapters_a(void) { check_forward("a", "out_lora2", "lora", "lora2"); }
static void test_two_adapters_b(void) { check_forward("b", "out_lora2", "lora", "lora2"); }

/* Loss and gradients: LoRA (every A and B) or full (every base parameter). */
static void check_grads(const char *config, bool full) {
    fl_flux_model *m = load_model(config);
    if (!m) return;
    fixture_inputs fi;
    char path[512];
    fixture(config, "expected", path, sizeof path);
    bool ok = load_inputs(config, fl_flux_get_params(m)->guidance_embed, &fi);
    if (ok && !full) ok = attach(m, config, "lora", 1.0f, true);
    if (full) fl_flux_enable_full_grads(m);
    int64_t n_x0 = 0;
    float *x0 = fl_test_load_f32(path, "train.x0", &n_x0, NULL, NULL);
    float *noise = fl_test_load_f32(path, "train.noise", NULL, NULL, NULL);
    float *t = fl_test_load_f32(path, "train.t", NULL, NULL, NULL);
    float *want_loss = fl_test_load_f32(path, full ? "train_full.loss" : "train.loss", NULL, NULL, NULL);
    if (!ok || !x0 || !noise || !t || !want_loss) goto done;
    fl_tensor x0_t = fi.img_t, noise_t = fi.img_t, t_t = fl_tensor_f32_1d(t, fi.batch);
    x0_t.data = x0;
    noise_t.data = noise;
    fl_flux_inputs in = fi.in;
    in.timesteps = &t_t;
    fl_flux_zero_grads(m);
    double loss = 0;
    fl_error err = {0};
    FL_EXPECTF(fl_flux_loss_and_grads(m, &in, &x0_t, &noise_t, &loss, &err) == 0, "step: %s", err.message);
    printf("  flux_%s loss %.7f (reference %.7f)\n", config, loss, (double)want_loss[0]);
    FL_EXPECTF(fabs(loss - want_loss[0]) <= REL_TOL * fabs(want_loss[0]), "loss %.8f vs %.8f", loss,
               (double)want_loss[0]);

    /* Gradients, tensor by tensor; the tolerance scale is the largest gradient of the whole set. */
    char key[256];
    size_t count = full ? fl_flux_param_count(m) : fl_flux_linear_count(m);
    double scale = 0, worst = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < count; i++) {
            for (int part = 0; part < (full ? 1 : 2); part++) {
                fl_tensor *got = NULL;
                if (full) {
                    const char *name;
                    fl_flux_param_at(m, i, &name, NULL, &got);
                    snprintf(key, sizeof key, "grad_full.%s", name);
                } else {
                    fl_flux_linear *lin = fl_flux_linear_at(m, i);
                    if (lin->trainable < 0) continue;
                    got = part == 0 ? &lin->grad_a : &lin->grad_b;
                    snprintf(key, sizeof key, "grad.%s.%s", lin->name, part == 0 ? "lora_A.weight" : "lora_B.weight");
                }
                int64_t n = 0;
                float *want = fl_test_load_f32(path, key, &n, NULL, NULL);
                if (!want) continue;
                FL_EXPECTF(n == fl_tensor_numel(got), "%s: %lld elements vs %lld", key, (long long)n,
                           (long long)fl_tensor_numel(got));
                const float *g = got->data;
                for (int64_t j = 0; j < n && n == fl_tensor_numel(got); j++) {
                    if (pass == 0) scale = fmax(scale, fabs(want[j]));
                    else worst = fmax(worst, fabs((double)g[j] - want[j]));
                }
                if (pass == 1 && n == fl_tensor_numel(got))
                    FL_EXPECT_CLOSE(key, g, want, (size_t)n, REL_TOL * scale, 0.0);
                free(want);
            }
        }
    }
    printf("  flux_%s %s gradients: max |err| / scale = %.2e (scale %.3g)\n", config, full ? "full" : "LoRA",
           worst / (scale > 0 ? scale : 1), scale);
    FL_EXPECT(scale > 0);
done:
    free(x0);
    free(noise);
    free(t);
    free(want_loss);
    free_inputs(&fi);
    fl_flux_free(m);
}

static void test_lora_grads_a(void) { check_grads("a", false); }
static void test_lora_grads_b(void) { check_grads("b", false); }
static void test_full_grads_b(void) { check_grads("b", true); }

/* A second forward with the same shape reuses the planned arena and gives identical output. */
static void test_plan_reuse(void) {
    fl_flux_model *m = load_model("a");
    if (!m) return;
    fixture_inputs fi;
    if (load_inputs("a", true, &fi)) {
        fl_tensor out;
        fl_error err = {0};
        FL_EXPECT(fl_flux_forward(m, &fi.in, &out, &err) == 0);
        size_t bytes = fl_flux_activation_bytes(m);
        int64_t n = fl_tensor_numel(&out);
        float *first = malloc((size_t)n * sizeof(float));
        memcpy(first, out.data, (size_t)n * sizeof(float));
        FL_EXPECT(fl_flux_forward(m, &fi.in, &out, &err) == 0);
        FL_EXPECT(fl_flux_activation_bytes(m) == bytes);
        FL_EXPECT(memcmp(first, out.data, (size_t)n * sizeof(float)) == 0);
        FL_EXPECT(bytes > 0);
        free(first);
    }
    free_inputs(&fi);
    fl_flux_free(m);
}

/* Bad inputs are errors, not aborts. */
static void test_bad_inputs(void) {
    fl_flux_model *m = load_model("a");
    if (!m) return;
    fixture_inputs fi;
    if (load_inputs("a", true, &fi)) {
        fl_tensor out;
        fl_error err = {0};
        fl_flux_inputs in = fi.in;
        in.guidance = NULL;
        FL_EXPECT(fl_flux_forward(m, &in, &out, &err) == -1 && strstr(err.message, "guidance"));
        fl_tensor wrong = fl_tensor_f32_3d(fi.img, fi.img_shape[0], fi.img_shape[1] * 2, fi.img_shape[2] / 2);
        in = fi.in;
        in.img = &wrong;
        FL_EXPECT(fl_flux_forward(m, &in, &out, &err) == -1 && strstr(err.message, "img must be"));
    }
    free_inputs(&fi);
    fl_flux_free(m);
}

/* Named target sets and regular expressions select the expected Linears. */
static void test_target_selection(void) {
    fl_flux_model *m = load_model("a"); /* depth 2, single 2 */
    if (!m) return;
    size_t n = fl_flux_linear_count(m);
    bool *sel = calloc(n, sizeof *sel);
    fl_error err = {0};
    FL_EXPECT(fl_flux_select_targets(m, "all", sel, &err) == 2 * 2 * 5 + 2 * 3);
    FL_EXPECT(fl_flux_select_targets(m, "attention", sel, &err) == 2 * 2 * 2 + 2);
    FL_EXPECT(fl_flux_select_targets(m, "no_modulation", sel, &err) == 2 * 2 * 4 + 2 * 2);
    FL_EXPECT(fl_flux_select_targets(m, "^single_blocks\\.1\\.linear[12]$", sel, &err) == 2);
    FL_EXPECT(sel[fl_flux_find_linear(m, "single_blocks.1.linear2") - fl_flux_linear_at(m, 0)]);
    FL_EXPECT(fl_flux_select_targets(m, "^time_in\\.", sel, &err) == 2);
    FL_EXPECT(fl_flux_select_targets(m, "(", sel, &err) == -1 && strstr(err.message, "regular expression"));
    FL_EXPECT(fl_flux_select_targets(m, "^nothing$", sel, &err) == -1 && strstr(err.message, "select no Linear"));
    free(sel);
    fl_flux_free(m);
}

/* A fresh trainable LoRA (B = 0) leaves the output unchanged and holds rank * (in + out) values
 * per target. */
static void test_fresh_lora_is_identity(void) {
    fl_flux_model *m = load_model("a");
    if (!m) return;
    fixture_inputs fi;
    if (load_inputs("a", true, &fi)) {
        fl_tensor out;
        fl_error err = {0};
        FL_EXPECT(fl_flux_forward(m, &fi.in, &out, &err) == 0);
        int64_t n = fl_tensor_numel(&out);
        float *before = malloc((size_t)n * sizeof(float));
        memcpy(before, out.data, (size_t)n * sizeof(float));
        FL_EXPECTF(fl_flux_add_trainable_lora(m, "attention", 3, 3.0f, 9, &err) >= 0, "%s", err.message);
        int64_t expect = 0;
        for (size_t i = 0; i < fl_flux_linear_count(m); i++) {
            fl_flux_linear *lin = fl_flux_linear_at(m, i);
            if (lin->trainable >= 0) expect += 3 * (lin->in + lin->out);
        }
        fl_tensor params = fl_flux_trainable_params(m);
        FL_EXPECT(fl_tensor_numel(&params) == expect && expect > 0);
        FL_EXPECT(fl_flux_forward(m, &fi.in, &out, &err) == 0);
        FL_EXPECT(memcmp(before, out.data, (size_t)n * sizeof(float)) == 0);
        FL_EXPECT(fl_flux_add_trainable_lora(m, "all", 3, 3.0f, 9, &err) == -1); /* only one trainable */
        free(before);
    }
    free_inputs(&fi);
    fl_flux_free(m);
}

int main(void) {
    fl_error err = {0};
    cpu = fl_ctx_create(fl_device_cpu(), &err);
    FL_RUN(test_forward_a);
    FL_RUN(test_forward_b);
    FL_RUN(test_lora_canonical_a);
    FL_RUN(test_lora_canonical_b);
    FL_RUN(test_lora_kohya_a);
    FL_RUN(test_lora_kohya_b);
    FL_RUN(test_two_adapters_a);
    FL_RUN(test_two_adapters_b);
    FL_RUN(test_lora_grads_a);
    FL_RUN(test_lora_grads_b);
    FL_RUN(test_full_grads_b);
    FL_RUN(test_plan_reuse);
    FL_RUN(test_bad_inputs);
    FL_RUN(test_target_selection);
    FL_RUN(test_fresh_lora_is_identity);
    fl_ctx_destroy(cpu);
    return fl_test_finish();
}
