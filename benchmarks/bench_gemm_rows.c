/*
 * bench_gemm_rows.c — the batch-invariant linear (fl_op_linear_rows) against fl_op_linear
 * (OpenBLAS sgemm when built with it) at the Linear shapes of the models generation runs.
 *
 *   bench_gemm_rows [repetitions]      threads: FLASHLORA_THREADS (default: all cores)
 *
 * Shapes (M rows x N outputs x K inputs): the embedded model and the CPU benchmark config
 * (hidden 256, MLP 1024, single-block linear1 1792 / linear2 1280 inputs; modulation 1536 or 768
 * outputs at one row per sample) at M = 96 (one 32x32 image: 64 image + 32 text tokens), 768 (a
 * batch of 8 of them), 1088 (the benchmark's batch of 4 x 272); and the load test's fixture
 * (hidden 32) at one request (256 image tokens and a few text tokens: 264 rows) and 8 of them.
 * Prints one JSON line per shape: median ms of each product and linear_rows' speed relative to
 * linear (> 1: faster).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/rng.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "kernels/context.h"
#include "kernels/ops.h"
#include "benchmarks/bench_clock.h"

typedef struct shape {
    const char *what;
    int64_t m, n, k;
} shape;

/* Median ms of one product over reps runs (each run repeated until it lasts >= 2 ms). */
static double time_linear(fl_ctx *ctx, bool rows, fl_tensor *x, fl_tensor *w, fl_tensor *b, fl_tensor *y, int reps) {
    int inner = 1;
    for (;;) {
        double t0 = bench_now_ms();
        for (int i = 0; i < inner; i++) rows ? fl_op_linear_rows(ctx, x, w, b, y) : fl_op_linear(ctx, x, w, b, y);
        if (bench_now_ms() - t0 >= 2.0 || inner >= 1 << 16) break;
        inner *= 2;
    }
    double *t = malloc((size_t)reps * sizeof(double)), med;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now_ms();
        for (int i = 0; i < inner; i++) rows ? fl_op_linear_rows(ctx, x, w, b, y) : fl_op_linear(ctx, x, w, b, y);
        t[r] = (bench_now_ms() - t0) / inner;
    }
    qsort(t, (size_t)reps, sizeof(double), bench_cmp_double);
    med = t[reps / 2];
    free(t);
    return med;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 7;
    if (reps < 1) reps = 1;
    int threads = fl_threads_init_from_env();
    static const shape shapes[] = {
        {"h256 qkv", 96, 768, 256},      {"h256 qkv", 768, 768, 256},      {"h256 qkv", 1088, 768, 256},
        {"h256 proj", 96, 256, 256},     {"h256 proj", 768, 256, 256},     {"h256 mlp0", 96, 1024, 256},
        {"h256 mlp0", 768, 1024, 256},   {"h256 mlp2", 96, 256, 1024},     {"h256 mlp2", 768, 256, 1024},
        {"h256 linear1", 96, 1792, 256}, {"h256 linear1", 768, 1792, 256}, {"h256 linear1", 1088, 1792, 256},
        {"h256 linear2", 96, 256, 1280}, {"h256 linear2", 768, 256, 1280}, {"h256 linear2", 1088, 256, 1280},
        {"h256 mod", 1, 1536, 256},      {"h256 mod", 8, 1536, 256},       {"h32 linear1", 264, 160, 32},
        {"h32 linear1", 2112, 160, 32},  {"h32 qkv", 264, 96, 32},         {"h32 linear2", 2112, 32, 96},
    };
    fl_error err = {0};
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    if (!ctx) {
        fprintf(stderr, "bench_gemm_rows: %s\n", err.message);
        return 1;
    }
    fl_rng rng;
    fl_rng_seed(&rng, 1);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const shape *sh = &shapes[s];
        float *xd = malloc((size_t)(sh->m * sh->k) * sizeof(float)), *wd = malloc((size_t)(sh->n * sh->k) * sizeof(float));
        float *bd = malloc((size_t)sh->n * sizeof(float)), *yd = malloc((size_t)(sh->m * sh->n) * sizeof(float));
        fl_rng_fill_normal(&rng, xd, (size_t)(sh->m * sh->k), 0.0f, 1.0f);
        fl_rng_fill_normal(&rng, wd, (size_t)(sh->n * sh->k), 0.0f, 0.05f);
        fl_rng_fill_normal(&rng, bd, (size_t)sh->n, 0.0f, 0.05f);
        fl_tensor x = fl_tensor_f32_2d(xd, sh->m, sh->k), w = fl_tensor_f32_2d(wd, sh->n, sh->k);
        fl_tensor b = fl_tensor_f32_2d(bd, 1, sh->n), y = fl_tensor_f32_2d(yd, sh->m, sh->n);
        double blas = time_linear(ctx, false, &x, &w, &b, &y, reps);
        double rows = time_linear(ctx, true, &x, &w, &b, &y, reps);
        double gflop = 2.0 * sh->m * sh->n * sh->k / 1e9;
        printf("{\"shape\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"threads\": %d, \"linear_ms\": %.4f, "
               "\"linear_rows_ms\": %.4f, \"linear_gflops\": %.1f, \"linear_rows_gflops\": %.1f, \"speed\": %.2f}\n",
               sh->what, (long long)sh->m, (long long)sh->n, (long long)sh->k, threads, blas, rows, gflop / blas * 1e3,
               gflop / rows * 1e3, blas / rows);
        free(xd), free(wd), free(bd), free(yd);
    }
    fl_ctx_destroy(ctx);
    return 0;
}
