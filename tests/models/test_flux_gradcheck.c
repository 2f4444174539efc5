/*
 * test_flux_gradcheck.c — finite-difference checks of the whole Flux backward at tiny scale:
 * the analytic gradient of the flow-matching loss with respect to LoRA A/B entries and (full
 * mode) base parameters of every kind — block linears, biases, q/k norm scales, embedders,
 * final layer — against central differences of the loss.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/flux.h"

static fl_ctx *cpu;
static int total_checked, total_live;

typedef struct problem {
    fl_flux_params p;
    int64_t batch, li, lt;
    float *img_ids, *txt_ids, *txt, *y, *t, *g, *x0, *noise;
    fl_tensor txt_t, y_t, t_t, g_t, x0_t, noise_t;
    fl_flux_inputs in;
} problem;

static void make_problem(problem *pr, bool guidance) {
    memset(pr, 0, sizeof *pr);
    fl_flux_params p = {.in_channels = 6, .out_channels = 6, .vec_in_dim = 5, .context_in_dim = 7, .hidden_size = 16,
                        .mlp_ratio = 2.0, .num_heads = 2, .depth = 1, .depth_single_blocks = 1,
                        .axes_dim = {2, 2, 4}, .n_axes = 3, .theta = 10000, .qkv_bias = guidance,
                        .guidance_embed = guidance};
    pr->p = p;
    pr->batch = 2, pr->li = 6, pr->lt = 3;
    fl_rng rng;
    fl_rng_seed(&rng, guidance ? 11 : 12);
    int64_t b = pr->batch;
    pr->img_ids = calloc((size_t)(b * pr->li * 3), sizeof(float));
    pr->txt_ids = calloc((size_t)(b * pr->lt * 3), sizeof(float));
    for (int64_t i = 0; i < b * pr->li; i++) {
        pr->img_ids[i * 3 + 1] = (float)((i % pr->li) / 3);
        pr->img_ids[i * 3 + 2] = (float)((i % pr->li) % 3);
    }
    pr->txt = fl_test_randn((size_t)(b * pr->lt * p.context_in_dim), 21, 1.0f);
    pr->y = fl_test_randn((size_t)(b * p.vec_in_dim), 22, 1.0f);
    pr->x0 = fl_test_randn((size_t)(b * pr->li * p.in_channels), 23, 1.0f);
    pr->noise = fl_test_randn((size_t)(b * pr->li * p.in_channels), 24, 1.0f);
    pr->t = malloc(2 * sizeof(float));
    pr->g = malloc(2 * sizeof(float));
    pr->t[0] = 0.35f, pr->t[1] = 0.7f, pr->g[0] = 2.0f, pr->g[1] = 4.0f;
    pr->txt_t = fl_tensor_f32_3d(pr->txt, b, pr->lt, p.context_in_dim);
    pr->y_t = fl_tensor_f32_2d(pr->y, b, p.vec_in_dim);
    pr->t_t = fl_tensor_f32_1d(pr->t, b);
    pr->g_t = fl_tensor_f32_1d(pr->g, b);
    pr->x0_t = fl_tensor_f32_3d(pr->x0, b, pr->li, p.in_channels);
    pr->noise_t = fl_tensor_f32_3d(pr->noise, b, pr->li, p.in_channels);
    pr->in = (fl_flux_inputs){.txt = &pr->txt_t, .y = &pr->y_t, .timesteps = &pr->t_t,
                              .guidance = guidance ? &pr->g_t : NULL, .img_ids = pr->img_ids, .txt_ids = pr->txt_ids};
    (void)rng;
}

static void free_problem(problem *pr) {
    free(pr->img_ids), free(pr->txt_ids), free(pr->txt), free(pr->y), free(pr->t), free(pr->g);
    free(pr->x0), free(pr->noise);
}

static double loss_of(fl_flux_model *m, problem *pr) {
    double loss = 0;
    fl_error err = {0};
    fl_flux_zero_grads(m);
    FL_CHECK(fl_flux_loss_and_grads(m, &pr->in, &pr->x0_t, &pr->noise_t, &loss, &err) == 0);
    return loss;
}

/* Compares grad[i] with (L(x+h) - L(x-h)) / 2h for `count` entries of x chosen by stride. */
static void check_entries(fl_flux_model *m, problem *pr, const char *what, float *x, const float *grad, int64_t n,
                          int count) {
    const float h = 1e-2f;
    int64_t step = n / count > 0 ? n / count : 1;
    float *analytic = malloc((size_t)n * sizeof(float));
    memcpy(analytic, grad, (size_t)n * sizeof(float));
    int checked = 0, live = 0;
    for (int64_t i = step / 2; i < n; i += step) {
        float saved = x[i];
        x[i] = saved + h;
        double up = loss_of(m, pr);
        x[i] = saved - h;
        double down = loss_of(m, pr);
        x[i] = saved;
        double fd = (up - down) / (2.0 * h);
        double tol = 2e-4 + 2e-2 * fabs(fd);
        FL_EXPECTF(fabs(fd - analytic[i]) <= tol, "%s[%lld]: analytic %.6g, finite difference %.6g", what,
                   (long long)i, (double)analytic[i], fd);
        checked++;
        live += fabs(fd) > 2e-3;
    }
    total_checked += checked;
    total_live += live;
    free(analytic);
}

static void lora_case(bool guidance) {
    problem pr;
    make_problem(&pr, guidance);
    fl_flux_model *m = fl_flux_create_random(cpu, &pr.p, guidance ? 5 : 6);
    /* A trainable adapter on every Linear, with non-zero B so every gradient path is live. */
    size_t n = fl_flux_linear_count(m);
    fl_flux_lora_pair *pairs = calloc(n, sizeof *pairs);
    for (size_t i = 0; i < n; i++) {
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        pairs[i] = (fl_flux_lora_pair){lin->name, 2, fl_test_randn((size_t)(2 * lin->in), 100 + i, 0.3f),
                                       fl_test_randn((size_t)(2 * lin->out), 200 + i, 0.3f), 3.0f};
    }
    fl_error err = {0};
    FL_EXPECTF(fl_flux_add_adapter(m, pairs, n, 1.0f, true, &err) >= 0, "%s", err.message);
    loss_of(m, &pr);
    fl_tensor params = fl_flux_trainable_params(m), grads = fl_flux_trainable_grads(m);
    float *grad_copy = malloc((size_t)fl_tensor_numel(&grads) * sizeof(float));
    memcpy(grad_copy, grads.data, (size_t)fl_tensor_numel(&grads) * sizeof(float));
    check_entries(m, &pr, "lora", params.data, grad_copy, fl_tensor_numel(&params), 60);
    free(grad_copy);
    for (size_t i = 0; i < n; i++) free((void *)pairs[i].a), free((void *)pairs[i].b);
    free(pairs);
    fl_flux_free(m);
    free_problem(&pr);
}

static void full_case(bool guidance) {
    problem pr;
    make_problem(&pr, guidance);
    fl_flux_model *m = fl_flux_create_random(cpu, &pr.p, guidance ? 7 : 8);
    fl_flux_enable_full_grads(m);
    /* Non-zero biases and scales so their roles are visible. */
    fl_rng rng;
    fl_rng_seed(&rng, 3);
    for (size_t i = 0; i < fl_flux_param_count(m); i++) {
        const char *name;
        fl_tensor *v;
        fl_flux_param_at(m, i, &name, &v, NULL);
        if (v->ndim == 1)
            for (int64_t j = 0; j < fl_tensor_numel(v); j++) ((float *)v->data)[j] += 0.1f * fl_rng_normal(&rng);
    }
    loss_of(m, &pr);
    size_t count = fl_flux_param_count(m);
    float **grads = calloc(count, sizeof *grads);
    for (size_t i = 0; i < count; i++) {
        fl_tensor *g;
        fl_flux_param_at(m, i, NULL, NULL, &g);
        grads[i] = malloc((size_t)fl_tensor_numel(g) * sizeof(float));
        memcpy(grads[i], g->data, (size_t)fl_tensor_numel(g) * sizeof(float));
    }
    for (size_t i = 0; i < count; i++) {
        const char *name;
        fl_tensor *v;
        fl_flux_param_at(m, i, &name, &v, NULL);
        check_entries(m, &pr, name, v->data, grads[i], fl_tensor_numel(v), 3);
        free(grads[i]);
    }
    free(grads);
    fl_flux_free(m);
    free_problem(&pr);
}

static void test_lora_gradcheck_guidance(void) { lora_case(true); }
static void test_lora_gradcheck_plain(void) { lora_case(false); }
static void test_full_gradcheck_guidance(void) { full_case(true); }
static void test_full_gradcheck_plain(void) { full_case(false); }

static void test_most_gradients_live(void) {
    FL_EXPECTF(total_live * 10 >= total_checked * 7, "only %d of %d checked gradients exceed 2e-3", total_live,
               total_checked);
}

int main(void) {
    fl_error err = {0};
    cpu = fl_ctx_create(fl_device_cpu(), &err);
    FL_RUN(test_lora_gradcheck_guidance);
    FL_RUN(test_lora_gradcheck_plain);
    FL_RUN(test_full_gradcheck_guidance);
    FL_RUN(test_full_gradcheck_plain);
    /* The check means something only if most gradients are well above the tolerance floor. */
    FL_RUN(test_most_gradients_live);
    fl_ctx_destroy(cpu);
    printf("%d gradient entries checked, %d of them above 2e-3 (10x the absolute tolerance)\n", total_checked,
           total_live);
    return fl_test_finish();
}
