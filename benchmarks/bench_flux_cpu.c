/*
 * bench_flux_cpu.c — CPU timing of the Flux forward and the LoRA training step.
 *
 * Config (issue figures): hidden 256, 4 heads (head dim 64, axes 8/28/28), MLP ratio 4,
 * 2 double + 4 single blocks, 16x16 image tokens of 64 channels, 16 text tokens of 4096,
 * pooled 768, batch 4, guidance embedding; LoRA rank 16 (alpha 16) on every block Linear.
 * Prints one JSON line per measurement (median of the timed repetitions, milliseconds), so
 * benchmarks/run_flux_cpu.sh can compare with the PyTorch reference measured in the same run.
 *
 *   bench_flux_cpu [repetitions]      threads: FLASHLORA_THREADS (default: all cores)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "core/threads.h"
#include "kernels/ops.h"
#include "models/flux.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *randn(fl_rng *rng, size_t n, float std) {
    float *x = malloc(n * sizeof(float));
    fl_rng_fill_normal(rng, x, n, 0.0f, std);
    return x;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1) reps = 1;
    int threads = fl_threads_init_from_env();
    fl_flux_params p = {.in_channels = 64, .out_channels = 64, .vec_in_dim = 768, .context_in_dim = 4096,
                        .hidden_size = 256, .mlp_ratio = 4.0, .num_heads = 4, .depth = 2, .depth_single_blocks = 4,
                        .axes_dim = {8, 28, 28}, .n_axes = 3, .theta = 10000, .qkv_bias = true, .guidance_embed = true};
    const int64_t batch = 4, grid = 16, li = grid * grid, lt = 16, rank = 16;
    fl_error err = {0};
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    fl_flux_model *m = fl_flux_create_random(ctx, &p, 1);
    fl_rng rng;
    fl_rng_seed(&rng, 2);

    float *img_ids = calloc((size_t)(batch * li * 3), sizeof(float)), *txt_ids = calloc((size_t)(batch * lt * 3), sizeof(float));
    for (int64_t i = 0; i < batch * li; i++) {
        img_ids[i * 3 + 1] = (float)((i % li) / grid);
        img_ids[i * 3 + 2] = (float)((i % li) % grid);
    }
    float *x0 = randn(&rng, (size_t)(batch * li * p.in_channels), 1.0f);
    float *noise = randn(&rng, (size_t)(batch * li * p.in_channels), 1.0f);
    float *txt = randn(&rng, (size_t)(batch * lt * p.context_in_dim), 1.0f);
    float *y = randn(&rng, (size_t)(batch * p.vec_in_dim), 1.0f);
    float t[4] = {0.2f, 0.4f, 0.6f, 0.8f}, g[4] = {3.5f, 3.5f, 3.5f, 3.5f};
    fl_tensor x0_t = fl_tensor_f32_3d(x0, batch, li, p.in_channels), noise_t = fl_tensor_f32_3d(noise, batch, li, p.in_channels);
    fl_tensor txt_t = fl_tensor_f32_3d(txt, batch, lt, p.context_in_dim), y_t = fl_tensor_f32_2d(y, batch, p.vec_in_dim);
    fl_tensor t_t = fl_tensor_f32_1d(t, batch), g_t = fl_tensor_f32_1d(g, batch);
    fl_flux_inputs in = {&x0_t, &txt_t, &y_t, &t_t, &g_t, img_ids, txt_ids};

    /* Forward without adapters. */
    double *times = malloc((size_t)reps * sizeof(double));
    fl_tensor out;
    fl_flux_forward(m, &in, &out, &err); /* plans the arena */
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        fl_flux_forward(m, &in, &out, &err);
        times[r] = now_ms() - t0;
    }
    qsort(times, (size_t)reps, sizeof(double), cmp_double);
    printf("{\"impl\": \"flashlora\", \"what\": \"forward\", \"threads\": %d, \"ms\": %.2f}\n", threads, times[reps / 2]);

    /* LoRA rank 16 on every block Linear, trainable. */
    size_t n = fl_flux_linear_count(m), n_pairs = 0;
    fl_flux_lora_pair *pairs = calloc(n, sizeof *pairs);
    for (size_t i = 0; i < n; i++) {
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        if (strncmp(lin->name, "double_blocks.", 14) && strncmp(lin->name, "single_blocks.", 14)) continue;
        float *a = randn(&rng, (size_t)(rank * lin->in), 0.01f), *b = calloc((size_t)(rank * lin->out), sizeof(float));
        pairs[n_pairs++] = (fl_flux_lora_pair){lin->name, rank, a, b, (float)rank};
    }
    if (fl_flux_add_adapter(m, pairs, n_pairs, 1.0f, true, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    double loss = 0;
    fl_flux_zero_grads(m);
    fl_flux_loss_and_grads(m, &in, &x0_t, &noise_t, &loss, &err); /* plans the arena */
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        fl_flux_zero_grads(m);
        fl_flux_loss_and_grads(m, &in, &x0_t, &noise_t, &loss, &err);
        times[r] = now_ms() - t0;
    }
    qsort(times, (size_t)reps, sizeof(double), cmp_double);
    printf("{\"impl\": \"flashlora\", \"what\": \"lora_step\", \"threads\": %d, \"ms\": %.2f, \"loss\": %.5f, "
           "\"activation_mib\": %.1f}\n",
           threads, times[reps / 2], loss, fl_flux_activation_bytes(m) / 1048576.0);
    for (size_t i = 0; i < n_pairs; i++) free((void *)pairs[i].a), free((void *)pairs[i].b);
    free(pairs);
    free(times);
    free(img_ids), free(txt_ids), free(x0), free(noise), free(txt), free(y);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    return 0;
}
