/*
 * bench_ae.c — the FLUX.1 autoencoder at its real shapes (ch 128, ch_mult 1/2/4/4, 2 resnet
 * blocks, z 16) with random weights: time per image of a decode (or encode) at a given size on
 * the CPU or a GPU, the arena the pass planned next to fl_ae_estimate_memory's figure, and a check
 * that every output is finite. With --estimate-only nothing is allocated: it prints the memory
 * estimates (CPU f32 and CUDA bf16) for encode and decode at the size.
 *
 *   bench_ae [--device cpu|cuda[:N]] [--size PX] [--encode] [--reps N] [--estimate-only]
 *
 * One JSON line per measurement. Threads: FLASHLORA_THREADS (default: all cores).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/threads.h"
#include "kernels/ops.h"
#include "models/ae.h"
#include "benchmarks/bench_clock.h"

static void print_estimate(const fl_ae_params *p, fl_device_kind kind, bool decode, int side, int threads) {
    fl_ae_memory m;
    fl_error err = {0};
    unsigned parts = decode ? FL_AE_DECODER : FL_AE_ENCODER;
    if (fl_ae_estimate_memory(p, kind, parts, decode, side, side, threads, &m, &err) != 0) {
        fprintf(stderr, "estimate: %s\n", err.message);
        exit(1);
    }
    printf("{\"estimate\": \"%s\", \"device\": \"%s\", \"size\": %d, \"weights\": %zu, \"activations\": %zu, "
           "\"scratch\": %zu, \"io\": %zu, \"total\": %zu}\n",
           decode ? "decode" : "encode", kind == FL_DEVICE_CPU ? "cpu-f32" : "cuda-bf16", side, m.weights,
           m.activations, m.scratch, m.io, m.total);
}

int main(int argc, char **argv) {
    const char *device = "cpu";
    int side = 256, reps = 3;
    bool encode = false, estimate_only = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) side = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--encode")) encode = true;
        else if (!strcmp(argv[i], "--estimate-only")) estimate_only = true;
        else {
            fprintf(stderr, "usage: bench_ae [--device cpu|cuda[:N]] [--size PX] [--encode] [--reps N] "
                            "[--estimate-only]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    int threads = fl_threads_init_from_env();
    fl_ae_params p;
    fl_ae_params_flux1(&p);
    if (estimate_only) {
        for (int d = 0; d < 2; d++)
            for (int dec = 0; dec < 2; dec++) print_estimate(&p, d ? FL_DEVICE_CUDA : FL_DEVICE_CPU, dec, side, threads);
        return 0;
    }
    fl_error err = {0};
    fl_device dev;
    if (fl_device_parse(device, &dev, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 2;
    }
    fl_ctx *ctx = fl_ctx_create(dev, &err);
    if (!ctx) {
        fprintf(stderr, "%s: %s\n", device, err.message);
        return 1;
    }
    print_estimate(&p, dev.kind, !encode, side, threads);
    fl_ae *ae = fl_ae_create_random(ctx, &p, encode ? FL_AE_ENCODER : FL_AE_DECODER, 1);
    const int64_t n_tok = (int64_t)(side / 16) * (side / 16), n_img = 3 * (int64_t)side * side;
    fl_dtype dt = fl_ctx_storage_dtype(ctx);
    const int64_t img_shape[4] = {1, 3, side, side}, tok_shape[3] = {1, n_tok, 64};
    fl_tensor image, tokens;
    if (fl_ctx_tensor_alloc(ctx, dt, 4, img_shape, &image, &err) != 0 ||
        fl_ctx_tensor_alloc(ctx, dt, 3, tok_shape, &tokens, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    float *host = malloc((size_t)n_img * sizeof(float));
    for (int64_t i = 0; i < n_img; i++) host[i] = sinf((float)i * 0.001f);
    fl_ctx_upload_f32(ctx, &image, host, (size_t)n_img);
    for (int64_t i = 0; i < n_tok * 64; i++) host[i] = cosf((float)i * 0.01f);
    fl_ctx_upload_f32(ctx, &tokens, host, (size_t)(n_tok * 64));
    double *ms = calloc((size_t)reps + 1, sizeof(double));
    for (int r = 0; r <= reps; r++) { /* the first run plans the arena: not timed */
        double t0 = bench_now_ms();
        int rc = encode ? fl_ae_encode(ae, &image, &tokens, &err) : fl_ae_decode(ae, &tokens, &image, &err);
        fl_ctx_synchronize(ctx);
        if (rc != 0) {
            fprintf(stderr, "%s\n", err.message);
            return 1;
        }
        if (r > 0) ms[r - 1] = bench_now_ms() - t0;
    }
    qsort(ms, (size_t)reps, sizeof *ms, bench_cmp_double);
    int64_t n_out = encode ? n_tok * 64 : n_img;
    fl_ctx_download_f32(ctx, host, encode ? &tokens : &image, (size_t)n_out);
    int64_t bad = 0;
    double amax = 0.0;
    for (int64_t i = 0; i < n_out; i++) {
        if (!isfinite(host[i])) bad++;
        else amax = fmax(amax, fabs(host[i]));
    }
    printf("{\"bench\": \"ae_%s\", \"device\": \"%s\", \"threads\": %d, \"size\": %d, \"ms_median\": %.1f, "
           "\"arena_bytes\": %zu, \"plans\": %llu, \"non_finite\": %lld, \"max_abs\": %.3f}\n",
           encode ? "encode" : "decode", device, threads, side, ms[reps / 2], fl_ae_activation_bytes(ae),
           (unsigned long long)fl_ae_plan_count(ae), (long long)bad, amax);
    free(ms);
    free(host);
    fl_ctx_tensor_free(ctx, &image);
    fl_ctx_tensor_free(ctx, &tokens);
    fl_ae_free(ae);
    fl_ctx_destroy(ctx);
    return bad ? 1 : 0;
}
