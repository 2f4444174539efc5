/*
 * bench_flux_cpu.c — CPU timing of the Flux forward and the LoRA training step, with a per-op
 * profile and a dump of the exact problem for the PyTorch peer (benchmarks/run_flux_cpu.sh).
 *
 * Configs (--config, default "bench"):
 *   bench     hidden 256, 4 heads (head dim 64, axes 8/28/28), MLP ratio 4, 2 double + 4 single
 *             blocks, 16x16 image tokens of 64 channels, 16 text tokens of 4096, pooled 768,
 *             guidance embedding, batch 4 (the figures of the first RESULTS rows)
 *   embedded  the embedded default model's shape (models/embedded/README.md): hidden 256, 4 heads,
 *             2 + 4 blocks, 48 channels (4x4 RGB patches), text and pooled 128, no guidance;
 *             64x64 pixels = 16x16 tokens, 32 text tokens, batch 1 (flashlora train's default)
 *   mid       hidden 1024, 8 heads (head dim 128, axes 16/56/56), 4 double + 8 single blocks,
 *             32x32 image tokens of 64 channels, 32 text tokens of 4096, pooled 768, guidance,
 *             batch 1
 * LoRA rank 16 (alpha 16) on every block Linear, trainable. The LoRA step is zero_grad, the
 * flow-matching loss, the backward to every LoRA A/B and one AdamW step on them (lr 1e-4, weight
 * decay 0.01: torch.optim.AdamW's defaults but the rate). Prints one JSON line per measurement
 * (median of the timed repetitions and their minimum, milliseconds).
 *
 *   bench_flux_cpu [--config NAME] [--profile] [--dump FILE] [repetitions]
 *     threads: FLASHLORA_THREADS (default: all cores)
 *   --profile  also prints, for each of the forward and the LoRA step, the time per op kind
 *              (kernels/context.h) and its GFLOP/s against the machine's sgemm peak, measured
 *              first with a 2048^3 sgemm through the backend (OpenBLAS where built with it)
 *   --dump     writes the weights (checkpoint names), the LoRA A/B, the inputs and flashlora's
 *              results (forward output, step loss, two LoRA B gradients) as safetensors, so the
 *              peer can check it computes the same thing before timing it
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "kernels/ops.h"
#include "models/flux.h"
#include "benchmarks/bench_clock.h"

typedef struct bench_config {
    const char *name;
    fl_flux_params p;
    int64_t batch, grid, lt;
} bench_config;

static const bench_config configs[] = {
    {"bench",
     {.in_channels = 64, .out_channels = 64, .vec_in_dim = 768, .context_in_dim = 4096, .hidden_size = 256,
      .mlp_ratio = 4.0, .num_heads = 4, .depth = 2, .depth_single_blocks = 4, .axes_dim = {8, 28, 28}, .n_axes = 3,
      .theta = 10000, .qkv_bias = true, .guidance_embed = true},
     4, 16, 16},
    {"embedded",
     {.in_channels = 48, .out_channels = 48, .vec_in_dim = 128, .context_in_dim = 128, .hidden_size = 256,
      .mlp_ratio = 4.0, .num_heads = 4, .depth = 2, .depth_single_blocks = 4, .axes_dim = {8, 28, 28}, .n_axes = 3,
      .theta = 10000, .qkv_bias = true, .guidance_embed = false},
     1, 16, 32},
    {"mid",
     {.in_channels = 64, .out_channels = 64, .vec_in_dim = 768, .context_in_dim = 4096, .hidden_size = 1024,
      .mlp_ratio = 4.0, .num_heads = 8, .depth = 4, .depth_single_blocks = 8, .axes_dim = {16, 56, 56},
      .n_axes = 3, .theta = 10000, .qkv_bias = true, .guidance_embed = true},
     1, 32, 32},
};

enum { RANK = 16 };

static float *randn(fl_rng *rng, size_t n, float std) {
    float *x = fl_xmalloc(n * sizeof(float));
    fl_rng_fill_normal(rng, x, n, 0.0f, std);
    return x;
}

/* GFLOP/s of the best of three C[n,n] = A[n,n] B[n,n] through the backend: the sgemm peak the
 * profile compares against. */
static double sgemm_peak_gflops(fl_ctx *ctx) {
    const int64_t n = 2048;
    fl_rng rng;
    fl_rng_seed(&rng, 7);
    float *a = randn(&rng, (size_t)(n * n), 1.0f), *b = randn(&rng, (size_t)(n * n), 1.0f);
    float *c = fl_xmalloc((size_t)(n * n) * sizeof(float));
    fl_tensor ta = fl_tensor_f32_2d(a, n, n), tb = fl_tensor_f32_2d(b, n, n), tc = fl_tensor_f32_2d(c, n, n);
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        double t0 = bench_now_ms();
        fl_op_gemm(ctx, &ta, false, &tb, false, &tc, 1.0f, 0.0f);
        double ms = bench_now_ms() - t0;
        if (r > 0 && ms < best) best = ms; /* the first call warms the threads */
    }
    free(a), free(b), free(c);
    return 2.0 * n * n * n / (best * 1e6);
}

static void print_profile(const char *what, const fl_op_profile *prof, int reps, double peak) {
    double total = 0.0, flops = 0.0;
    for (int k = 0; k < FL_OPK_COUNT; k++) total += prof->seconds[k], flops += prof->flops[k];
    printf("profile %s: %.2f ms of ops per run, %.1f GFLOP/s overall (sgemm peak %.1f GFLOP/s)\n", what,
           total * 1e3 / reps, total > 0 ? flops / total / 1e9 : 0.0, peak);
    printf("  %-14s %9s %6s %7s %9s %7s\n", "kind", "ms/run", "share", "calls", "GFLOP/s", "%peak");
    for (int k = 0; k < FL_OPK_COUNT; k++) {
        if (!prof->calls[k]) continue;
        double s = prof->seconds[k], gf = s > 0 && prof->flops[k] > 0 ? prof->flops[k] / s / 1e9 : 0.0;
        printf("  %-14s %9.2f %5.1f%% %7llu", fl_op_kind_name((fl_op_kind)k), s * 1e3 / reps,
               total > 0 ? 100.0 * s / total : 0.0, (unsigned long long)(prof->calls[k] / (uint64_t)reps));
        if (gf > 0) printf(" %9.1f %6.1f%%\n", gf, 100.0 * gf / peak);
        else printf(" %9s %7s\n", "-", "-");
    }
}

/* Host copy of a device tensor (f32). */
static float *download(fl_ctx *ctx, const fl_tensor *t) {
    size_t n = (size_t)fl_tensor_numel(t);
    float *h = fl_xmalloc((n ? n : 1) * sizeof(float));
    fl_ctx_download_f32(ctx, h, t, n);
    return h;
}

static fl_safetensors_entry entry(const char *name, const float *data, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    fl_safetensors_entry e = {.name = name, .dtype = FL_ST_F32, .ndim = ndim, .data = data};
    e.shape[0] = d0, e.shape[1] = d1, e.shape[2] = d2;
    return e;
}

int main(int argc, char **argv) {
    const char *config = "bench", *dump = NULL;
    bool profile = false;
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) config = argv[++i];
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump = argv[++i];
        else if (!strcmp(argv[i], "--profile")) profile = true;
        else if (argv[i][0] != '-') reps = atoi(argv[i]);
        else {
            fprintf(stderr, "usage: bench_flux_cpu [--config bench|embedded|mid] [--profile] [--dump FILE] [reps]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    const bench_config *cfg = NULL;
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        if (!strcmp(configs[i].name, config)) cfg = &configs[i];
    if (!cfg) {
        fprintf(stderr, "unknown config %s (bench, embedded, mid)\n", config);
        return 2;
    }
    int threads = fl_threads_init_from_env();
    const fl_flux_params p = cfg->p;
    const int64_t batch = cfg->batch, grid = cfg->grid, li = grid * grid, lt = cfg->lt, rank = RANK;
    fl_error err = {0};
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    if (!ctx) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    double peak = profile ? sgemm_peak_gflops(ctx) : 0.0;
    fl_flux_model *m = fl_flux_create_random(ctx, &p, 1);
    fl_rng rng;
    fl_rng_seed(&rng, 2);

    float *img_ids = fl_xcalloc((size_t)(batch * li * 3), sizeof(float));
    float *txt_ids = fl_xcalloc((size_t)(batch * lt * 3), sizeof(float));
    for (int64_t i = 0; i < batch * li; i++) {
        img_ids[i * 3 + 1] = (float)((i % li) / grid);
        img_ids[i * 3 + 2] = (float)((i % li) % grid);
    }
    float *x0 = randn(&rng, (size_t)(batch * li * p.in_channels), 1.0f);
    float *noise = randn(&rng, (size_t)(batch * li * p.in_channels), 1.0f);
    float *txt = randn(&rng, (size_t)(batch * lt * p.context_in_dim), 1.0f);
    float *y = randn(&rng, (size_t)(batch * p.vec_in_dim), 1.0f);
    float *t = fl_xmalloc((size_t)batch * sizeof(float)), *g = fl_xmalloc((size_t)batch * sizeof(float));
    for (int64_t b = 0; b < batch; b++) t[b] = (float)(b + 1) / (float)(batch + 1), g[b] = 3.5f;
    fl_tensor x0_t = fl_tensor_f32_3d(x0, batch, li, p.in_channels);
    fl_tensor noise_t = fl_tensor_f32_3d(noise, batch, li, p.in_channels);
    fl_tensor txt_t = fl_tensor_f32_3d(txt, batch, lt, p.context_in_dim), y_t = fl_tensor_f32_2d(y, batch, p.vec_in_dim);
    fl_tensor t_t = fl_tensor_f32_1d(t, batch), g_t = fl_tensor_f32_1d(g, batch);
    fl_flux_inputs in = {&x0_t, &txt_t, &y_t, &t_t, p.guidance_embed ? &g_t : NULL, img_ids, txt_ids};
    fl_op_profile prof;

    /* Forward without adapters. */
    double *times = fl_xmalloc((size_t)reps * sizeof(double));
    fl_tensor out;
    if (fl_flux_forward(m, &in, &out, &err) < 0) { /* plans the arena */
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    float *out_host = download(ctx, &out);
    memset(&prof, 0, sizeof prof);
    ctx->profile = profile ? &prof : NULL;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now_ms();
        fl_flux_forward(m, &in, &out, &err);
        times[r] = bench_now_ms() - t0;
    }
    ctx->profile = NULL;
    qsort(times, (size_t)reps, sizeof(double), bench_cmp_double);
    printf("{\"impl\": \"flashlora\", \"config\": \"%s\", \"what\": \"forward\", \"threads\": %d, \"ms\": %.2f, "
           "\"min_ms\": %.2f}\n",
           cfg->name, threads, times[reps / 2], times[0]);
    if (profile) print_profile("forward", &prof, reps, peak);

    /* LoRA rank 16 on every block Linear, trainable. */
    size_t n = fl_flux_linear_count(m), n_pairs = 0;
    fl_flux_lora_pair *pairs = fl_xcalloc(n, sizeof *pairs);
    for (size_t i = 0; i < n; i++) {
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        if (strncmp(lin->name, "double_blocks.", 14) && strncmp(lin->name, "single_blocks.", 14)) continue;
        float *a = randn(&rng, (size_t)(rank * lin->in), 0.01f);
        float *b = fl_xcalloc((size_t)(rank * lin->out), sizeof(float));
        pairs[n_pairs++] = (fl_flux_lora_pair){lin->name, rank, a, b, (float)rank};
    }
    if (fl_flux_add_adapter(m, pairs, n_pairs, 1.0f, true, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    fl_tensor params = fl_flux_trainable_params(m), grads = fl_flux_trainable_grads(m);
    int64_t np = fl_tensor_numel(&params);
    fl_tensor adam_m = fl_ctx_tensor(ctx, FL_F32, 1, &np), adam_v = fl_ctx_tensor(ctx, FL_F32, 1, &np);
    fl_op_fill(ctx, &adam_m, 0.0f);
    fl_op_fill(ctx, &adam_v, 0.0f);
    int64_t step = 0;
    double loss = 0;
    fl_flux_zero_grads(m);
    if (fl_flux_loss_and_grads(m, &in, &x0_t, &noise_t, &loss, &err) < 0) { /* plans the arena */
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    double first_loss = loss;
    /* The peer checks two gradients of this first step (before any update). */
    const char *checked[2] = {"double_blocks.0.img_mlp.2", "single_blocks.0.linear2"};
    float *grad_host[2] = {NULL, NULL};
    int64_t grad_shape[2][2] = {{0, 0}, {0, 0}};
    for (int k = 0; k < 2; k++) {
        fl_flux_linear *lin = fl_flux_find_linear(m, checked[k]);
        if (lin) {
            grad_host[k] = download(ctx, &lin->grad_b);
            grad_shape[k][0] = lin->grad_b.shape[0], grad_shape[k][1] = lin->grad_b.shape[1];
        }
    }
    memset(&prof, 0, sizeof prof);
    ctx->profile = profile ? &prof : NULL;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now_ms();
        fl_flux_zero_grads(m);
        fl_flux_loss_and_grads(m, &in, &x0_t, &noise_t, &loss, &err);
        fl_adamw_params ap = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f, ++step};
        fl_op_adamw(ctx, &params, &grads, &adam_m, &adam_v, &ap);
        times[r] = bench_now_ms() - t0;
    }
    ctx->profile = NULL;
    qsort(times, (size_t)reps, sizeof(double), bench_cmp_double);
    printf("{\"impl\": \"flashlora\", \"config\": \"%s\", \"what\": \"lora_step\", \"threads\": %d, \"ms\": %.2f, "
           "\"min_ms\": %.2f, \"loss\": %.5f, \"activation_mib\": %.1f}\n",
           cfg->name, threads, times[reps / 2], times[0], first_loss, fl_flux_activation_bytes(m) / 1048576.0);
    if (profile) print_profile("lora_step", &prof, reps, peak);

    int rc = 0;
    if (dump) {
        size_t n_params = fl_flux_param_count(m), n_entries = 0, cap = n_params + 2 * n_pairs + 16;
        fl_safetensors_entry *e = fl_xcalloc(cap, sizeof *e);
        char **names = fl_xcalloc(cap, sizeof *names);
        float **owned = fl_xcalloc(cap, sizeof *owned);
        for (size_t i = 0; i < n_params; i++) {
            const char *name;
            fl_tensor *value, *grad;
            fl_flux_param_at(m, i, &name, &value, &grad);
            owned[n_entries] = download(ctx, value);
            e[n_entries] = entry(name, owned[n_entries], value->ndim, value->shape[0],
                                 value->ndim > 1 ? value->shape[1] : 0, 0);
            n_entries++;
        }
        for (size_t i = 0; i < n_pairs; i++) {
            fl_flux_linear *lin = fl_flux_find_linear(m, pairs[i].module);
            size_t len = strlen(pairs[i].module) + 16;
            names[2 * i] = fl_xmalloc(len), names[2 * i + 1] = fl_xmalloc(len);
            snprintf(names[2 * i], len, "lora.%s.a", pairs[i].module);
            snprintf(names[2 * i + 1], len, "lora.%s.b", pairs[i].module);
            e[n_entries++] = entry(names[2 * i], pairs[i].a, 2, rank, lin->in, 0);
            e[n_entries++] = entry(names[2 * i + 1], pairs[i].b, 2, lin->out, rank, 0);
        }
        e[n_entries++] = entry("in.x0", x0, 3, batch, li, p.in_channels);
        e[n_entries++] = entry("in.noise", noise, 3, batch, li, p.in_channels);
        e[n_entries++] = entry("in.txt", txt, 3, batch, lt, p.context_in_dim);
        e[n_entries++] = entry("in.y", y, 2, batch, p.vec_in_dim, 0);
        e[n_entries++] = entry("in.t", t, 1, batch, 0, 0);
        e[n_entries++] = entry("in.guidance", g, 1, batch, 0, 0);
        e[n_entries++] = entry("in.img_ids", img_ids, 3, batch, li, 3);
        e[n_entries++] = entry("in.txt_ids", txt_ids, 3, batch, lt, 3);
        e[n_entries++] = entry("out.forward", out_host, 3, batch, li, p.out_channels);
        float loss_f = (float)first_loss;
        e[n_entries++] = entry("out.loss", &loss_f, 1, 1, 0, 0);
        char grad_names[2][FL_FLUX_NAME_MAX + 16];
        for (int k = 0; k < 2; k++) {
            if (!grad_host[k]) continue;
            snprintf(grad_names[k], sizeof grad_names[k], "out.grad_b.%s", checked[k]);
            e[n_entries++] = entry(grad_names[k], grad_host[k], 2, grad_shape[k][0], grad_shape[k][1], 0);
        }
        char *params_json = fl_flux_params_to_json(&p), rank_text[16];
        snprintf(rank_text, sizeof rank_text, "%d", RANK);
        fl_safetensors_kv meta[3] = {{"flux_params", params_json}, {"config", cfg->name}, {"lora_rank", rank_text}};
        if (fl_safetensors_write(dump, e, n_entries, meta, 3, &err) < 0) {
            fprintf(stderr, "%s\n", err.message);
            rc = 1;
        }
        free(params_json);
        for (size_t i = 0; i < cap; i++) free(names[i]), free(owned[i]);
        free(names), free(owned), free(e);
    }

    for (int k = 0; k < 2; k++) free(grad_host[k]);
    for (size_t i = 0; i < n_pairs; i++) free((void *)pairs[i].a), free((void *)pairs[i].b);
    free(pairs);
    free(times), free(out_host);
    free(img_ids), free(txt_ids), free(x0), free(noise), free(txt), free(y), free(t), free(g);
    fl_ctx_tensor_free(ctx, &adam_m);
    fl_ctx_tensor_free(ctx, &adam_v);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    return rc;
}
