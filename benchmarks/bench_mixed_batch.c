/*
 * bench_mixed_batch.c — mixed-adapter generation in one process: the throughput of batches of B
 * requests naming B different adapters against the same requests sampled one at a time, and a
 * check that every batch image is bitwise the request's solo image.
 *
 *   bench_mixed_batch MODEL [rounds=5] [size=32] [steps=8] [batch=8] [rank=2] [linears=4]
 *       threads: FLASHLORA_THREADS (default: all cores)
 *
 * MODEL: a Flux transformer in the pixel image space (the load test's is
 * tests/fixtures/flux_b.model.safetensors). Adapters: `batch` random adapters of the given rank,
 * each on `linears` block Linears picked at random (0: on every Linear), as the load test imports
 * them (benchmarks/load_test.py). Requests: request r names adapter r at multiplier 1, its own
 * prompt and seed; 32 text tokens (the service's default).
 *
 * A round samples the `batch` requests one by one (batch 1) and then all together (batch B);
 * rounds alternate so that load on a shared machine hits both alike. Prints one JSON line: the
 * median over rounds of the milliseconds per image at batch 1 and at batch B, their ratio (the
 * throughput gain of batching) and whether every image matched.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "core/threads.h"
#include "kernels/context.h"
#include "models/flux.h"
#include "models/sampler.h"
#include "benchmarks/bench_clock.h"

enum { TEXT_TOKENS = 32 };

static float *randn(fl_rng *rng, size_t n, float stddev) {
    float *x = malloc(n * sizeof(float));
    fl_rng_fill_normal(rng, x, n, 0.0f, stddev);
    return x;
}

/* A random adapter on `linears` block Linears (0: every Linear); returns its set id or -1. */
static int attach_random(fl_flux_model *m, int rank, int linears, uint64_t seed) {
    size_t n = fl_flux_linear_count(m), k = 0;
    fl_flux_lora_pair *pairs = calloc(n, sizeof *pairs);
    size_t *order = malloc(n * sizeof *order);
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    size_t eligible = 0;
    for (size_t i = 0; i < n; i++)
        if (linears == 0 || strstr(fl_flux_linear_at(m, i)->name, "blocks")) order[eligible++] = i;
    for (size_t i = eligible; i > 1; i--) { /* shuffle */
        size_t j = (size_t)(fl_rng_next(&rng) % i), t = order[i - 1];
        order[i - 1] = order[j], order[j] = t;
    }
    size_t take = linears == 0 || (size_t)linears > eligible ? eligible : (size_t)linears;
    for (; k < take; k++) {
        fl_flux_linear *lin = fl_flux_linear_at(m, order[k]);
        pairs[k].module = lin->name;
        pairs[k].rank = rank;
        pairs[k].a = randn(&rng, (size_t)(rank * lin->in), 0.05f);
        pairs[k].b = randn(&rng, (size_t)(rank * lin->out), 0.05f);
        pairs[k].alpha = (float)rank;
    }
    fl_error err = {0};
    int id = fl_flux_add_adapter(m, pairs, k, 1.0f, false, &err);
    if (id < 0) fprintf(stderr, "bench_mixed_batch: attach: %s\n", err.message);
    for (size_t i = 0; i < k; i++) free((float *)pairs[i].a), free((float *)pairs[i].b);
    free(pairs), free(order);
    return id;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_mixed_batch MODEL [rounds] [size] [steps] [batch] [rank] [linears]\n");
        return 2;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 5, size = argc > 3 ? atoi(argv[3]) : 32;
    int steps = argc > 4 ? atoi(argv[4]) : 8, batch = argc > 5 ? atoi(argv[5]) : 8;
    int rank = argc > 6 ? atoi(argv[6]) : 2, linears = argc > 7 ? atoi(argv[7]) : 4;
    if (rounds < 1 || size < 1 || steps < 1 || batch < 1 || batch > 64 || rank < 1 || linears < 0) {
        fprintf(stderr, "bench_mixed_batch: bad arguments\n");
        return 2;
    }
    int threads = fl_threads_init_from_env();
    fl_error err = {0};
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    fl_flux_model *m = NULL;
    if (!ctx || fl_flux_load(ctx, argv[1], NULL, &m, &err) != 0) {
        fprintf(stderr, "bench_mixed_batch: %s\n", err.message);
        return 1;
    }
    fl_sample_request *reqs = calloc((size_t)batch, sizeof *reqs);
    char (*prompts)[64] = calloc((size_t)batch, sizeof *prompts);
    size_t floats = (size_t)size * (size_t)size * 3;
    float **solo = calloc((size_t)batch, sizeof *solo), **together = calloc((size_t)batch, sizeof *together);
    for (int r = 0; r < batch; r++) {
        int id = attach_random(m, rank, linears, 1000 + (uint64_t)r);
        if (id < 0) return 1;
        snprintf(prompts[r], sizeof prompts[r], "load test %d", r);
        reqs[r].prompt = prompts[r];
        reqs[r].seed = (uint64_t)r;
        reqs[r].guidance = 3.5f;
        reqs[r].adapters.n = 1;
        reqs[r].adapters.set_ids[0] = id;
        reqs[r].adapters.multipliers[0] = 1.0f;
        solo[r] = malloc(floats * sizeof(float));
        together[r] = malloc(floats * sizeof(float));
    }
    double *t1 = malloc((size_t)(rounds + 1) * sizeof(double)), *tb = malloc((size_t)(rounds + 1) * sizeof(double));
    bool equal = true;
    for (int round = 0; round <= rounds; round++) { /* round 0 warms up (plans) */
        double t0 = bench_now_ms();
        for (int r = 0; r < batch; r++)
            if (fl_flux_sample_pixels_batch(m, size, size, steps, TEXT_TOKENS, &reqs[r], 1, &solo[r], &err) != 0) {
                fprintf(stderr, "bench_mixed_batch: %s\n", err.message);
                return 1;
            }
        double t_mid = bench_now_ms();
        if (fl_flux_sample_pixels_batch(m, size, size, steps, TEXT_TOKENS, reqs, batch, together, &err) != 0) {
            fprintf(stderr, "bench_mixed_batch: %s\n", err.message);
            return 1;
        }
        double t_end = bench_now_ms();
        t1[round] = (t_mid - t0) / batch;
        tb[round] = (t_end - t_mid) / batch;
        for (int r = 0; r < batch; r++) equal &= memcmp(solo[r], together[r], floats * sizeof(float)) == 0;
    }
    qsort(t1 + 1, (size_t)rounds, sizeof(double), bench_cmp_double);
    qsort(tb + 1, (size_t)rounds, sizeof(double), bench_cmp_double);
    double a = t1[1 + rounds / 2], b = tb[1 + rounds / 2];
    printf("{\"threads\": %d, \"size\": %d, \"steps\": %d, \"batch\": %d, \"rank\": %d, \"linears\": %d, "
           "\"ms_per_image_batch1\": %.2f, \"ms_per_image_batchB\": %.2f, \"gain\": %.2f, \"bitwise_equal\": %s}\n",
           threads, size, steps, batch, rank, linears, a, b, a / b, equal ? "true" : "false");
    for (int r = 0; r < batch; r++) free(solo[r]), free(together[r]);
    free(solo), free(together), free(reqs), free(prompts), free(t1), free(tb);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    return equal ? 0 : 1;
}
