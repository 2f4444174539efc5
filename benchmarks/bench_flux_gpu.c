/*
 * bench_flux_gpu.c — the Flux model at the real FLUX.1-dev shapes on a GPU: speed against the
 * hardware limit and the published figures.
 *
 * Random weights (bf16 storage on CUDA), FLUX.1-dev's parameters (19 double + 38 single blocks,
 * hidden 3072), 512 text tokens, latent tokens (resolution / 16)^2. Phases (--only, comma list):
 *   peak       bf16 GEMM 8192^3 through the backend's cuBLASLt path (the MFU denominator, measured
 *              in every run) and a device-to-device copy (bytes read + written)
 *   forward    forward at 1024^2, batch 1
 *   train512   LoRA training step (rank 16 on every block Linear, AdamW) at 512^2, batch 1
 *   train1024  the same at 1024^2
 *   generate   28 Euler steps at 1024^2 on the device (the denoiser; no text encoder, no decoder)
 *   attach     attaching and detaching a rank-16 adapter on every block Linear: host-cached (pairs
 *              in host memory) and cold (a canonical file evicted from the page cache, loaded,
 *              converted and attached)
 *   mixed      batch 8 at 512^2: the plain forward without adapters, the per-sample forward with
 *              no adapter selected, and with 8 different adapters (one per sample)
 * Each timed figure is the median of --reps runs after a warm-up run (which also plans), with the
 * FLOPs the ops counted during one run (kernels/context.h; cross-checked against
 * benchmarks/flux_flops.c), achieved TFLOP/s and MFU against the measured GEMM peak. Outputs,
 * losses and gradient norms are checked for NaN/Inf; device memory in use is sampled after each
 * phase (the high-water mark is the largest sample, activation arenas included).
 *
 *   bench_flux_gpu [--device cuda|cpu] [--config dev|tiny] [--only LIST] [--reps N] [--json FILE]
 *                  [--estimate]
 *
 * Every run first prints the memory each phase's step plans (the service's estimate, computed on
 * the host); --estimate prints only that, on any machine.
 * --config tiny --device cpu is the dry run of every phase on a small model (hidden 64, tokens of
 * 64^2 and 128^2 "images", 16 text tokens), for checking this program without a GPU. Each result
 * is printed and, with --json, appended to FILE as one JSON object per line. Exit status: 0 when
 * every phase ran and every value was finite; 1 otherwise.
 */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "benchmarks/flux_flops.h"
#include "core/device.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/flux.h"
#include "benchmarks/bench_clock.h"

#define POOL_ELEMS ((int64_t)1 << 25)

typedef struct bench {
    fl_ctx *ctx;
    fl_device dev;
    bool tiny;
    fl_flux_params p;
    int reps;
    int64_t lt, res_small, res_large; /* text tokens; the two resolutions */
    FILE *json;
    double peak_tflops;
    size_t mem_peak;
    float *host_pool;    /* POOL_ELEMS normal values */
    float *adapter_pool; /* the same scaled by 0.02, for adapter matrices */
    fl_tensor pool;      /* host_pool on the device, storage dtype */
    int failures;
} bench;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static const char *dev_name(const bench *b) {
    return b->dev.kind == FL_DEVICE_CUDA ? "cuda" : "cpu";
}

static void fail(bench *b, const char *what, const char *why) {
    printf("FAILED   %s: %s\n", what, why);
    if (b->json)
        fprintf(b->json, "{\"what\": \"%s\", \"device\": \"%s\", \"failed\": \"%s\"}\n", what, dev_name(b), why);
    b->failures++;
}

/* One timed figure: ms per run, the FLOPs of one run (0: none), and free-form JSON fields. */
static void report(bench *b, const char *what, double ms, double flops, const char *extra) {
    double tflops = flops > 0 && ms > 0 ? flops / (ms * 1e-3) / 1e12 : 0;
    double mfu = b->peak_tflops > 0 ? tflops / b->peak_tflops : 0;
    if (flops > 0)
        printf("%-44s %10.2f ms  %8.2f TFLOP  %7.1f TFLOP/s  MFU %5.1f%%  %s\n", what, ms, flops / 1e12, tflops,
               100 * mfu, extra ? extra : "");
    else
        printf("%-44s %10.2f ms  %s\n", what, ms, extra ? extra : "");
    if (b->json)
        fprintf(b->json,
                "{\"what\": \"%s\", \"device\": \"%s\", \"config\": \"%s\", \"ms\": %.4f, \"flops\": %.6e, "
                "\"tflops\": %.3f, \"mfu\": %.4f, \"peak_tflops\": %.2f, \"note\": \"%s\"}\n",
                what, dev_name(b), b->tiny ? "tiny" : "FLUX.1-dev", ms, flops, tflops, mfu, b->peak_tflops,
                extra ? extra : "");
    fflush(stdout);
    if (b->json) fflush(b->json);
}

static void memory_sample(bench *b, const fl_flux_model *m, const char *after) {
    size_t used = 0, total = 0;
    if (b->dev.kind == FL_DEVICE_CUDA && fl_cuda_memory_used(b->dev.index, &used, &total) == 0) {
        if (used > b->mem_peak) b->mem_peak = used;
        printf("  memory after %s: %.2f GiB in use of %.1f (high-water %.2f GiB); activation arena %.2f GiB\n", after,
               used / 1073741824.0, total / 1073741824.0, b->mem_peak / 1073741824.0,
               m ? fl_flux_activation_bytes(m) / 1073741824.0 : 0.0);
        if (b->json)
            fprintf(b->json, "{\"what\": \"memory after %s\", \"device\": \"%s\", \"used_bytes\": %zu, "
                             "\"high_water_bytes\": %zu, \"arena_bytes\": %zu}\n",
                    after, dev_name(b), used, b->mem_peak, m ? fl_flux_activation_bytes(m) : (size_t)0);
    } else if (m) {
        printf("  activation arena after %s: %.2f MiB\n", after, fl_flux_activation_bytes(m) / 1048576.0);
    }
}

/* ---- device data ----------------------------------------------------------------------------- */

/* Fills a contiguous tensor with pool values (rotating start) times std. */
static void fill_random(bench *b, fl_tensor *t, float std, int64_t salt) {
    int64_t n = fl_tensor_numel(t);
    fl_tensor flat = fl_tensor_reshape(t, 1, &n);
    int64_t start = (salt * 7919) % (POOL_ELEMS / 2), done = 0;
    while (done < n) {
        int64_t take = n - done < POOL_ELEMS - start ? n - done : POOL_ELEMS - start;
        fl_tensor src = fl_tensor_slice(&b->pool, 0, start, take), dst = fl_tensor_slice(&flat, 0, done, take);
        fl_op_copy(b->ctx, &src, &dst); /* converts when dst is f32 */
        done += take;
        start = 0;
    }
    if (std != 1.0f && n > 0) fl_op_scale(b->ctx, &flat, std);
}

static fl_flux_model *make_model(bench *b) {
    fl_flux_model *m = fl_flux_create_empty(b->ctx, &b->p);
    for (size_t i = 0; i < fl_flux_param_count(m); i++) {
        const char *name;
        fl_tensor *v;
        fl_flux_param_at(m, i, &name, &v, NULL);
        size_t len = strlen(name);
        if (strstr(name, "_norm.scale")) fl_op_fill(b->ctx, v, 1.0f);
        else if (len > 5 && !strcmp(name + len - 5, ".bias")) fl_op_fill(b->ctx, v, 0.0f);
        else fill_random(b, v, 1.0f / sqrtf((float)v->shape[1]), (int64_t)i);
    }
    fl_ctx_synchronize(b->ctx);
    return m;
}

typedef struct inputs {
    int64_t batch, li, lt;
    fl_tensor x0, noise, txt, y, t, g;
    float *img_ids, *txt_ids;
    fl_flux_inputs in;
} inputs;

static void make_inputs(bench *b, inputs *x, int64_t batch, int64_t res) {
    memset(x, 0, sizeof *x);
    fl_dtype s = fl_ctx_storage_dtype(b->ctx);
    int64_t side = res / 16, li = side * side, lt = b->lt;
    x->batch = batch, x->li = li, x->lt = lt;
    int64_t si[3] = {batch, li, b->p.in_channels}, st[3] = {batch, lt, b->p.context_in_dim};
    int64_t sy[2] = {batch, b->p.vec_in_dim};
    x->x0 = fl_ctx_tensor(b->ctx, s, 3, si);
    x->noise = fl_ctx_tensor(b->ctx, s, 3, si);
    x->txt = fl_ctx_tensor(b->ctx, s, 3, st);
    x->y = fl_ctx_tensor(b->ctx, s, 2, sy);
    x->t = fl_ctx_tensor(b->ctx, FL_F32, 1, &batch);
    x->g = fl_ctx_tensor(b->ctx, FL_F32, 1, &batch);
    fill_random(b, &x->x0, 1.0f, 11);
    fill_random(b, &x->noise, 1.0f, 12);
    fill_random(b, &x->txt, 0.5f, 13);
    fill_random(b, &x->y, 0.5f, 14);
    float *h = malloc((size_t)batch * sizeof(float));
    for (int64_t i = 0; i < batch; i++) h[i] = 0.3f + 0.4f * (float)i / (float)batch;
    fl_ctx_upload_f32(b->ctx, &x->t, h, (size_t)batch);
    for (int64_t i = 0; i < batch; i++) h[i] = 3.5f;
    fl_ctx_upload_f32(b->ctx, &x->g, h, (size_t)batch);
    free(h);
    x->img_ids = calloc((size_t)(batch * li * 3), sizeof(float));
    x->txt_ids = calloc((size_t)(batch * lt * 3), sizeof(float));
    for (int64_t i = 0; i < batch * li; i++) {
        x->img_ids[i * 3 + 1] = (float)((i % li) / side);
        x->img_ids[i * 3 + 2] = (float)((i % li) % side);
    }
    x->in = (fl_flux_inputs){&x->x0, &x->txt, &x->y, &x->t, b->p.guidance_embed ? &x->g : NULL, x->img_ids,
                             x->txt_ids};
}

static void free_inputs(bench *b, inputs *x) {
    fl_tensor *t[] = {&x->x0, &x->noise, &x->txt, &x->y, &x->t, &x->g};
    for (int i = 0; i < 6; i++) fl_ctx_tensor_free(b->ctx, t[i]);
    free(x->img_ids);
    free(x->txt_ids);
}

/* Every element of a device tensor finite (downloaded as f32). */
static bool all_finite(bench *b, const fl_tensor *t) {
    int64_t n = fl_tensor_numel(t);
    float *h = malloc((size_t)(n ? n : 1) * sizeof(float));
    fl_ctx_download_f32(b->ctx, h, t, (size_t)n);
    bool ok = true;
    for (int64_t i = 0; i < n && ok; i++) ok = isfinite(h[i]);
    free(h);
    return ok;
}

/* ---- phases ------------------------------------------------------------------------------------ */

static void phase_peak(bench *b, bool print) {
    const int64_t n = b->tiny || b->dev.kind == FL_DEVICE_CPU ? 512 : 8192;
    fl_dtype s = fl_ctx_storage_dtype(b->ctx);
    int64_t shape[2] = {n, n};
    fl_tensor a = fl_ctx_tensor(b->ctx, s, 2, shape), w = fl_ctx_tensor(b->ctx, s, 2, shape);
    fl_tensor c = fl_ctx_tensor(b->ctx, s, 2, shape);
    fill_random(b, &a, 1.0f, 1);
    fill_random(b, &w, 1.0f, 2);
    for (int i = 0; i < 3; i++) fl_op_gemm(b->ctx, &a, false, &w, true, &c, 1.0f, 0.0f);
    fl_ctx_synchronize(b->ctx);
    const int reps = b->dev.kind == FL_DEVICE_CUDA ? 20 : 3;
    double t0 = now_s();
    for (int i = 0; i < reps; i++) fl_op_gemm(b->ctx, &a, false, &w, true, &c, 1.0f, 0.0f);
    fl_ctx_synchronize(b->ctx);
    double ms = (now_s() - t0) * 1e3 / reps, flops = 2.0 * n * n * n;
    b->peak_tflops = flops / (ms * 1e-3) / 1e12;
    if (print) {
        char what[96], note[96];
        snprintf(what, sizeof what, "peak: %s GEMM %lld^3 (random data)", fl_dtype_name(s), (long long)n);
        snprintf(note, sizeof note, "mean of %d after 3 warm-ups; the MFU denominator", reps);
        report(b, what, ms, flops, note);
    }
    fl_ctx_tensor_free(b->ctx, &a);
    fl_ctx_tensor_free(b->ctx, &w);
    fl_ctx_tensor_free(b->ctx, &c);
    if (!print) return;

    int64_t elems = b->dev.kind == FL_DEVICE_CUDA ? ((int64_t)1 << 30) : ((int64_t)1 << 24);
    fl_tensor src = fl_ctx_tensor(b->ctx, s, 1, &elems), dst = fl_ctx_tensor(b->ctx, s, 1, &elems);
    fill_random(b, &src, 1.0f, 3);
    fl_op_copy(b->ctx, &src, &dst);
    fl_ctx_synchronize(b->ctx);
    t0 = now_s();
    for (int i = 0; i < 5; i++) fl_op_copy(b->ctx, &src, &dst);
    fl_ctx_synchronize(b->ctx);
    ms = (now_s() - t0) * 1e3 / 5;
    double bytes = 2.0 * (double)elems * fl_dtype_size(s);
    char note[128];
    snprintf(note, sizeof note, "copy of %.2f GB: %.0f GB/s (read + written)", bytes / 2e9, bytes / (ms * 1e-3) / 1e9);
    report(b, "peak: device copy (fl_op_copy)", ms, 0, note);
    fl_ctx_tensor_free(b->ctx, &src);
    fl_ctx_tensor_free(b->ctx, &dst);
}

static void phase_forward(bench *b, fl_flux_model *m, int64_t res) {
    char what[96];
    snprintf(what, sizeof what, "forward %lldx%lld, batch 1", (long long)res, (long long)res);
    inputs x;
    make_inputs(b, &x, 1, res);
    fl_error err = {0};
    fl_tensor out;
    if (fl_flux_forward(m, &x.in, &out, &err) != 0) {
        fail(b, what, err.message);
        free_inputs(b, &x);
        return;
    }
    double *t = calloc((size_t)b->reps, sizeof *t);
    uint64_t flops = 0;
    for (int r = 0; r < b->reps; r++) {
        fl_ctx_synchronize(b->ctx);
        uint64_t f0 = b->ctx->flops;
        double t0 = now_s();
        fl_flux_forward(m, &x.in, &out, &err);
        fl_ctx_synchronize(b->ctx);
        t[r] = (now_s() - t0) * 1e3;
        flops = b->ctx->flops - f0;
    }
    flux_flops f = flux_step_flops(&b->p, 1, x.li, x.lt, 0, 0, false);
    char note[160];
    snprintf(note, sizeof note, "counted %.4g TFLOP = formula %.4g; diffusers H100 bf16 282 ms/step", flops / 1e12,
             f.total / 1e12);
    report(b, what, median(t, b->reps), (double)flops, note);
    if ((double)flops != f.total) fail(b, what, "the ops' FLOP count differs from benchmarks/flux_flops.c");
    if (!all_finite(b, &out)) fail(b, what, "the output has NaN or Inf");
    memory_sample(b, m, what);
    free(t);
    free_inputs(b, &x);
}

static void phase_train(bench *b, fl_flux_model *m, int64_t res) {
    char what[96];
    snprintf(what, sizeof what, "LoRA step %lldx%lld, rank 16, all block Linears", (long long)res, (long long)res);
    fl_error err = {0};
    int set = fl_flux_add_trainable_lora(m, "all", 16, 16.0f, 7, &err);
    if (set < 0) {
        fail(b, what, err.message);
        return;
    }
    inputs x;
    make_inputs(b, &x, 1, res);
    fl_tensor params = fl_flux_trainable_params(m), grads = fl_flux_trainable_grads(m);
    int64_t np = fl_tensor_numel(&params);
    fl_tensor am = fl_ctx_tensor(b->ctx, FL_F32, 1, &np), av = fl_ctx_tensor(b->ctx, FL_F32, 1, &np);
    fl_op_fill(b->ctx, &am, 0.0f);
    fl_op_fill(b->ctx, &av, 0.0f);
    double *t = calloc((size_t)b->reps + 1, sizeof *t);
    uint64_t flops = 0;
    bool finite = true, ok = true;
    for (int r = 0; r <= b->reps && ok; r++) { /* run 0 warms up and plans */
        fl_ctx_synchronize(b->ctx);
        uint64_t f0 = b->ctx->flops;
        double t0 = now_s(), loss = 0;
        fl_flux_zero_grads(m);
        ok = fl_flux_loss_and_grads(m, &x.in, &x.x0, &x.noise, &loss, &err) == 0;
        double norm = ok ? sqrt(fl_op_sum_squares(b->ctx, &grads)) : 0;
        fl_adamw_params ap = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, norm > 1.0 ? (float)(1.0 / norm) : 1.0f, r + 1};
        if (ok) fl_op_adamw(b->ctx, &params, &grads, &am, &av, &ap);
        fl_ctx_synchronize(b->ctx);
        if (r > 0) t[r - 1] = (now_s() - t0) * 1e3;
        flops = b->ctx->flops - f0;
        finite = finite && isfinite(loss) && isfinite(norm);
        if (r == b->reps) printf("  loss %.5f, gradient norm %.4g\n", loss, norm);
    }
    if (!ok) fail(b, what, err.message);
    else {
        flux_flops f = flux_step_flops(&b->p, 1, x.li, x.lt, 16, 1, true);
        char note[192];
        snprintf(note, sizeof note, "counted %.4g TFLOP = formula %.4g (attention %.3g); %lld trainable parameters",
                 flops / 1e12, f.total / 1e12, f.attention / 1e12, (long long)np);
        report(b, what, median(t, b->reps), (double)flops, note);
        if ((double)flops != f.total) fail(b, what, "the ops' FLOP count differs from benchmarks/flux_flops.c");
        if (!finite) fail(b, what, "a loss or gradient norm is NaN or Inf");
        if (!all_finite(b, &params)) fail(b, what, "the adapter's weights have NaN or Inf");
    }
    memory_sample(b, m, what);
    free(t);
    fl_ctx_tensor_free(b->ctx, &am);
    fl_ctx_tensor_free(b->ctx, &av);
    free_inputs(b, &x);
    fl_flux_remove_adapter(m, set, &err);
}

static void phase_generate(bench *b, fl_flux_model *m, int64_t res, int steps) {
    char what[96];
    snprintf(what, sizeof what, "generation %lldx%lld, %d steps, batch 1", (long long)res, (long long)res, steps);
    inputs x;
    make_inputs(b, &x, 1, res);
    fl_error err = {0};
    fl_tensor out;
    if (fl_flux_forward(m, &x.in, &out, &err) != 0) { /* plans */
        fail(b, what, err.message);
        free_inputs(b, &x);
        return;
    }
    /* x_t starts as noise in x0's buffer; x += (t_next - t) v each step, on the device. */
    fl_op_copy(b->ctx, &x.noise, &x.x0);
    fl_ctx_synchronize(b->ctx);
    uint64_t f0 = b->ctx->flops;
    double t0 = now_s();
    for (int i = 0; i < steps; i++) {
        float tc = 1.0f - (float)i / steps, tn = 1.0f - (float)(i + 1) / steps;
        fl_ctx_upload_f32(b->ctx, &x.t, &tc, 1);
        if (fl_flux_forward(m, &x.in, &out, &err) != 0) break;
        fl_op_add(b->ctx, &x.x0, &out, tn - tc, &x.x0);
    }
    fl_ctx_synchronize(b->ctx);
    double ms = (now_s() - t0) * 1e3;
    double flops = (double)(b->ctx->flops - f0);
    char note[160];
    snprintf(note, sizeof note, "%.1f ms/step; diffusers FLUX.1-dev on an H100: 7.89 s bf16, 3.55 s FP8+compile+FA3",
             ms / steps);
    report(b, what, ms, flops, note);
    if (!all_finite(b, &x.x0)) fail(b, what, "the latents have NaN or Inf");
    memory_sample(b, m, what);
    free_inputs(b, &x);
}

/* A rank-16 adapter on every block Linear, its matrices pointing into the adapter pool. */
static fl_flux_lora_pair *adapter_pairs(bench *b, fl_flux_model *m, int salt, size_t *n_out) {
    size_t count = fl_flux_linear_count(m);
    bool *sel = calloc(count, sizeof *sel);
    fl_error err = {0};
    int n = fl_flux_select_targets(m, "all", sel, &err);
    fl_flux_lora_pair *pairs = calloc((size_t)(n > 0 ? n : 1), sizeof *pairs);
    size_t k = 0;
    int64_t cursor = (int64_t)salt * 1000003 % (POOL_ELEMS / 2);
    for (size_t i = 0; i < count; i++) {
        if (!sel[i]) continue;
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        int64_t need = 16 * (lin->in + lin->out);
        if (cursor + need > POOL_ELEMS) cursor = 0;
        pairs[k++] = (fl_flux_lora_pair){lin->name, 16, b->adapter_pool + cursor, b->adapter_pool + cursor + 16 * lin->in,
                                         16.0f};
        cursor += need;
    }
    free(sel);
    *n_out = k;
    return pairs;
}

static void phase_attach(bench *b, fl_flux_model *m) {
    size_t n = 0;
    fl_flux_lora_pair *pairs = adapter_pairs(b, m, 1, &n);
    int64_t params = 0;
    for (size_t i = 0; i < n; i++) {
        fl_flux_linear *lin = fl_flux_find_linear(m, pairs[i].module);
        params += 16 * (lin->in + lin->out);
    }
    fl_error err = {0};
    double *ta = calloc((size_t)b->reps + 1, sizeof *ta), *td = calloc((size_t)b->reps + 1, sizeof *td);
    bool ok = true;
    for (int r = 0; r <= b->reps && ok; r++) {
        fl_ctx_synchronize(b->ctx);
        double t0 = now_s();
        int id = fl_flux_add_adapter(m, pairs, n, 1.0f, false, &err);
        fl_ctx_synchronize(b->ctx);
        double t1 = now_s();
        ok = id >= 0 && fl_flux_remove_adapter(m, id, &err) == 0;
        fl_ctx_synchronize(b->ctx);
        if (r > 0) ta[r - 1] = (t1 - t0) * 1e3, td[r - 1] = (now_s() - t1) * 1e3;
    }
    char note[160];
    snprintf(note, sizeof note, "%zu Linears, %lld parameters (%.0f MB as f32 on the host, %.0f MB on the device)", n,
             (long long)params, params * 4 / 1e6, params * fl_dtype_size(fl_ctx_storage_dtype(b->ctx)) / 1e6);
    if (!ok) fail(b, "attach host-cached adapter", err.message);
    else {
        report(b, "attach host-cached rank-16 adapter", median(ta, b->reps), 0, note);
        report(b, "detach rank-16 adapter", median(td, b->reps), 0, NULL);
    }

    /* Cold: a canonical file written once, evicted from the page cache before each load. */
    char dir[] = "/tmp/fl_bench_XXXXXX", path[128];
    if (!mkdtemp(dir)) {
        fail(b, "attach cold adapter", "no temporary directory");
        free(pairs), free(ta), free(td);
        return;
    }
    snprintf(path, sizeof path, "%s/adapter.safetensors", dir);
    fl_safetensors_entry *entries = calloc(2 * n, sizeof *entries);
    char (*names)[FL_FLUX_NAME_MAX + 16] = calloc(2 * n, sizeof *names);
    for (size_t i = 0; i < n; i++) {
        fl_flux_linear *lin = fl_flux_find_linear(m, pairs[i].module);
        snprintf(names[2 * i], sizeof names[0], "%s.lora_A.weight", lin->name);
        snprintf(names[2 * i + 1], sizeof names[0], "%s.lora_B.weight", lin->name);
        entries[2 * i] = (fl_safetensors_entry){names[2 * i], FL_ST_F32, 2, {16, lin->in}, pairs[i].a};
        entries[2 * i + 1] = (fl_safetensors_entry){names[2 * i + 1], FL_ST_F32, 2, {lin->out, 16}, pairs[i].b};
    }
    fl_safetensors_kv meta[2] = {{"format", "flashlora.lora.v1"}, {"alpha", "16"}};
    ok = fl_safetensors_write(path, entries, 2 * n, meta, 2, &err) == 0;
    for (int r = 0; r <= b->reps && ok; r++) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            close(fd);
        }
        fl_ctx_synchronize(b->ctx);
        double t0 = now_s();
        fl_lora *lora = NULL;
        int id = -1;
        ok = fl_lora_load_for_model(path, m, &lora, &err) == 0 &&
             (id = fl_flux_add_adapter(m, lora->pairs, lora->n_pairs, 1.0f, false, &err)) >= 0;
        fl_ctx_synchronize(b->ctx);
        if (r > 0) ta[r - 1] = (now_s() - t0) * 1e3;
        fl_lora_free(lora);
        if (ok) ok = fl_flux_remove_adapter(m, id, &err) == 0;
    }
    struct stat stt;
    snprintf(note, sizeof note, "file of %.0f MB evicted from the page cache (posix_fadvise) before each load",
             stat(path, &stt) == 0 ? stt.st_size / 1e6 : 0.0);
    if (!ok) fail(b, "attach cold adapter", err.message);
    else report(b, "attach rank-16 adapter cold from disk", median(ta, b->reps), 0, note);
    unlink(path);
    rmdir(dir);
    memory_sample(b, m, "attach");
    free(entries), free(names), free(pairs), free(ta), free(td);
}

/* One timed forward (median of reps after a warm-up), its FLOPs into *flops. */
static double timed_forward(bench *b, fl_flux_model *m, inputs *x, const char *what, uint64_t *flops) {
    fl_error err = {0};
    fl_tensor out;
    if (fl_flux_forward(m, &x->in, &out, &err) != 0) {
        fail(b, what, err.message);
        return -1;
    }
    double *t = calloc((size_t)b->reps, sizeof *t);
    for (int r = 0; r < b->reps; r++) {
        fl_ctx_synchronize(b->ctx);
        uint64_t f0 = b->ctx->flops;
        double t0 = now_s();
        fl_flux_forward(m, &x->in, &out, &err);
        fl_ctx_synchronize(b->ctx);
        t[r] = (now_s() - t0) * 1e3;
        *flops = b->ctx->flops - f0;
    }
    double ms = median(t, b->reps);
    free(t);
    if (!all_finite(b, &out)) fail(b, what, "the output has NaN or Inf");
    return ms;
}

static void phase_mixed(bench *b, fl_flux_model *m, int64_t res) {
    enum { N = 8 };
    inputs x;
    make_inputs(b, &x, N, res);
    char what[128];
    uint64_t f_base = 0, f_empty = 0, f_mixed = 0;
    snprintf(what, sizeof what, "forward %lldx%lld batch 8, no adapters", (long long)res, (long long)res);
    double base = timed_forward(b, m, &x, what, &f_base);
    if (base > 0) report(b, what, base, (double)f_base, "the bare base model");

    int ids[N];
    fl_error err = {0};
    bool ok = true;
    for (int i = 0; i < N && ok; i++) {
        size_t n = 0;
        fl_flux_lora_pair *pairs = adapter_pairs(b, m, 10 + i, &n);
        ok = (ids[i] = fl_flux_add_adapter(m, pairs, n, 1.0f, false, &err)) >= 0;
        free(pairs);
    }
    if (!ok) {
        fail(b, "mixed batch", err.message);
        free_inputs(b, &x);
        return;
    }
    fl_flux_sample_adapters sel[N];
    memset(sel, 0, sizeof sel);
    fl_flux_set_sample_adapters(m, N, sel, &err);
    snprintf(what, sizeof what, "forward %lldx%lld batch 8, per-sample, none selected", (long long)res, (long long)res);
    double empty = timed_forward(b, m, &x, what, &f_empty);
    if (empty > 0) report(b, what, empty, (double)f_empty, "each Linear per sample segment");
    for (int i = 0; i < N; i++) sel[i] = (fl_flux_sample_adapters){1, {ids[i]}, {1.0f}};
    fl_flux_set_sample_adapters(m, N, sel, &err);
    snprintf(what, sizeof what, "forward %lldx%lld batch 8, 8 different adapters", (long long)res, (long long)res);
    double mixed = timed_forward(b, m, &x, what, &f_mixed);
    if (mixed > 0 && base > 0) {
        char note[128];
        snprintf(note, sizeof note, "%.3fx the bare base model (target <= 1.15x)", mixed / base);
        report(b, what, mixed, (double)f_mixed, note);
    }
    memory_sample(b, m, "mixed batch");
    fl_flux_clear_sample_adapters(m);
    for (int i = 0; i < N; i++) fl_flux_remove_adapter(m, ids[i], &err);
    free_inputs(b, &x);
}

/* Elements of a rank-r adapter on every Linear inside the blocks: r (in + out) summed. */
static int64_t adapter_elems(const fl_flux_params *p, int rank) {
    const int64_t h = p->hidden_size, m = fl_flux_mlp_hidden(p);
    const int64_t per_stream = (h + 6 * h) + (h + 3 * h) + 2 * h + (h + m) + (m + h);
    const int64_t per_single = (h + 3 * h) + (h + 3 * h + m) + (h + m + h);
    return rank * (2 * per_stream * p->depth + per_single * p->depth_single_blocks);
}

/* The memory each phase's step plans on a CUDA device, from the estimate (no device needed). */
static void print_estimates(const bench *b) {
    struct {
        const char *what;
        int batch;
        int64_t res;
        bool training;
        int adapters;
    } phases[4] = {{"forward", 1, b->res_large, false, 0},
                   {"train512", 1, b->res_small, true, 0},
                   {"train1024", 1, b->res_large, true, 0},
                   {"mixed (8 adapters, per-sample)", 8, b->res_small, false, 8}};
    for (int i = 0; i < 4; i++) {
        int64_t side = phases[i].res / 16;
        fl_flux_job_shape s = {.device = FL_DEVICE_CUDA, .batch = phases[i].batch, .image_tokens = side * side,
                               .text_tokens = b->lt, .training = phases[i].training, .lora_rank = 16,
                               .targets = "all"};
        if (phases[i].adapters) {
            s.n_adapters = 1; /* one per sample */
            s.adapter_rank = 16;
            s.adapter_params = phases[i].adapters * adapter_elems(&b->p, 16); /* all 8 resident */
        }
        fl_flux_memory mem;
        fl_error err = {0};
        if (fl_flux_estimate_memory(&b->p, &s, &mem, &err) != 0) {
            printf("  estimate %-32s %s\n", phases[i].what, err.message);
            continue;
        }
        printf("  estimate %-32s %6.1f GiB on the GPU (weights %.1f, adapters %.2f, optimizer %.2f, "
               "activations %.1f, inputs %.2f); %.1f TFLOP\n",
               phases[i].what, mem.total / 1073741824.0, mem.weights / 1073741824.0, mem.adapters / 1073741824.0,
               mem.optimizer / 1073741824.0, mem.activations / 1073741824.0, mem.inputs / 1073741824.0,
               (double)mem.flops / 1e12);
    }
}

/* ---- main -------------------------------------------------------------------------------------- */

static bool wants(const char *only, const char *phase) {
    if (!only) return true;
    size_t n = strlen(phase);
    for (const char *p = only; (p = strstr(p, phase)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return true;
    return false;
}

int main(int argc, char **argv) {
    bench b;
    memset(&b, 0, sizeof b);
    const char *device = "cuda", *config = "dev", *only = NULL, *json = NULL;
    bool estimate_only = false;
    b.reps = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--device") && v) device = v, i++;
        else if (!strcmp(a, "--config") && v) config = v, i++;
        else if (!strcmp(a, "--only") && v) only = v, i++;
        else if (!strcmp(a, "--reps") && v) b.reps = atoi(v), i++;
        else if (!strcmp(a, "--json") && v) json = v, i++;
        else if (!strcmp(a, "--estimate")) estimate_only = true;
        else {
            fprintf(stderr, "usage: %s [--device cuda|cpu] [--config dev|tiny] [--only peak,forward,train512,"
                            "train1024,generate,attach,mixed] [--reps N] [--json FILE] [--estimate]\n", argv[0]);
            return 2;
        }
    }
    if (b.reps < 1 || b.reps > 100 || (strcmp(config, "dev") && strcmp(config, "tiny"))) {
        fprintf(stderr, "bench_flux_gpu: --reps must be 1..100 and --config dev or tiny\n");
        return 2;
    }
    fl_error err = {0};
    b.tiny = !strcmp(config, "tiny");
    if (b.tiny) {
        b.p = (fl_flux_params){.in_channels = 64, .out_channels = 64, .vec_in_dim = 32, .context_in_dim = 48,
                               .hidden_size = 64, .mlp_ratio = 4.0, .num_heads = 2, .depth = 2,
                               .depth_single_blocks = 2, .axes_dim = {8, 12, 12}, .n_axes = 3, .theta = 10000,
                               .qkv_bias = true, .guidance_embed = true};
        b.lt = 16, b.res_small = 64, b.res_large = 128;
    } else {
        b.p = (fl_flux_params){.in_channels = 64, .out_channels = 64, .vec_in_dim = 768, .context_in_dim = 4096,
                               .hidden_size = 3072, .mlp_ratio = 4.0, .num_heads = 24, .depth = 19,
                               .depth_single_blocks = 38, .axes_dim = {16, 56, 56}, .n_axes = 3, .theta = 10000,
                               .qkv_bias = true, .guidance_embed = true};
        b.lt = 512, b.res_small = 512, b.res_large = 1024;
    }
    printf("bench_flux_gpu: planned memory of the steps (models/flux_estimate.c), %s config:\n",
           b.tiny ? "tiny" : "FLUX.1-dev");
    print_estimates(&b);
    if (estimate_only) return 0;
    if (fl_device_parse(device, &b.dev, &err) != 0) {
        fprintf(stderr, "bench_flux_gpu: %s\n", err.message);
        return 2;
    }
    b.ctx = fl_ctx_create(b.dev, &err);
    if (!b.ctx) {
        fprintf(stderr, "bench_flux_gpu: %s\n", err.message);
        return 1;
    }
    if (json) b.json = fopen(json, "a");
    char desc[256] = "";
    if (b.dev.kind == FL_DEVICE_CUDA) fl_cuda_describe(b.dev.index, desc, sizeof desc);
    const char *att = getenv("FLASHLORA_CUDA_ATTENTION");
    printf("bench_flux_gpu: %s (%s), %s config, storage %s, attention kernels: %s, %d timed runs per figure\n",
           device, *desc ? desc : "host", b.tiny ? "tiny" : "FLUX.1-dev", fl_dtype_name(fl_ctx_storage_dtype(b.ctx)),
           att && *att ? att : "default", b.reps);
    if (b.json)
        fprintf(b.json, "{\"what\": \"device\", \"device\": \"%s\", \"description\": \"%s\", \"config\": \"%s\", "
                        "\"attention\": \"%s\"}\n",
                dev_name(&b), desc, b.tiny ? "tiny" : "FLUX.1-dev", att && *att ? att : "default");

    double t0 = now_s();
    b.host_pool = malloc((size_t)POOL_ELEMS * sizeof(float));
    b.adapter_pool = malloc((size_t)POOL_ELEMS * sizeof(float));
    fl_rng rng;
    fl_rng_seed(&rng, 17);
    fl_rng_fill_normal(&rng, b.host_pool, (size_t)POOL_ELEMS, 0.0f, 1.0f);
    for (int64_t i = 0; i < POOL_ELEMS; i++) b.adapter_pool[i] = 0.02f * b.host_pool[(i * 7 + 3) % POOL_ELEMS];
    int64_t pn = POOL_ELEMS;
    b.pool = fl_ctx_tensor(b.ctx, fl_ctx_storage_dtype(b.ctx), 1, &pn);
    fl_ctx_upload_f32(b.ctx, &b.pool, b.host_pool, (size_t)POOL_ELEMS);
    phase_peak(&b, wants(only, "peak"));

    bool need_model = false;
    const char *model_phases[] = {"forward", "train512", "train1024", "generate", "attach", "mixed"};
    for (int i = 0; i < 6; i++) need_model = need_model || wants(only, model_phases[i]);
    if (need_model) {
        double tm = now_s();
        fl_flux_model *m = make_model(&b);
        printf("  model: %zu tensors filled on the device in %.2f s (setup %.2f s)\n", fl_flux_param_count(m),
               now_s() - tm, now_s() - t0);
        memory_sample(&b, m, "model");
        if (wants(only, "forward")) phase_forward(&b, m, b.res_large);
        if (wants(only, "train512")) phase_train(&b, m, b.res_small);
        if (wants(only, "train1024")) phase_train(&b, m, b.res_large);
        if (wants(only, "generate")) phase_generate(&b, m, b.res_large, 28);
        if (wants(only, "attach")) phase_attach(&b, m);
        if (wants(only, "mixed")) phase_mixed(&b, m, b.res_small);
        fl_flux_free(m);
    }
    fl_ctx_tensor_free(b.ctx, &b.pool);
    free(b.host_pool);
    free(b.adapter_pool);
    fl_ctx_destroy(b.ctx);
    printf("bench_flux_gpu: %s in %.1f s\n", b.failures ? "FAILURES" : "all figures finite", now_s() - t0);
    if (b.json) fclose(b.json);
    return b.failures ? 1 : 0;
}
