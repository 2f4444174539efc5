/*
 * attention_dev.c — the attention kernels' versions side by side: validated against the CPU
 * reference on random inputs, timed at the Flux shapes, one table. The per-kernel development
 * loop of benchmarks/cuda_dev/README.md: change a kernel, run this one command on the GPU.
 *
 * Versions (each a CUDA context configured to run it; see kernels/cuda/README.md):
 *   1 simt   the CUDA-core kernels (fp32 math, 32-key tiles; FLASHLORA_CUDA_ATTENTION=simt)
 *   2 mma    the tensor-core kernels (mma.sync bf16, 64 x 64 tiles; the default for BF16, D 64/128)
 * Every version runs in BF16 storage. Validation: B=1, H=2, Lq=Lk=700 (ragged tiles), D=128 and
 * D=64, every output element against the reference on the same bf16 inputs (forward out and lse,
 * backward dq, dk, dv); outputs are poisoned with NaN first so an unwritten element fails.
 * Timing: the Flux joint attention, 24 heads of 128, L = 512 text + 1024 or 4096 image tokens
 * (512^2 and 1024^2), batch 1; median of 5 after a warm-up; FLOPs 4 B H L^2 D forward and 2.5x
 * that backward.
 *
 *   attention_dev [--dry-run]    --dry-run: no GPU; validates the CPU path at a tiny size only
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/rng.h"
#include "kernels/ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct version {
    const char *name, *env; /* FLASHLORA_CUDA_ATTENTION for its context */
    fl_ctx *ctx;
} version;

typedef struct operands {
    int64_t b, h, lq, lk, d;
    fl_tensor q, k, v, out, lse, dout, dq, dk, dv;
} operands;

static float bf(float x) {
    return fl_bf16_to_f32(fl_f32_to_bf16(x));
}

/* host arrays (bf16-rounded) -> tensors of ctx in dtype */
static void make(fl_ctx *ctx, fl_dtype dt, operands *o, const float *hq, const float *hk, const float *hv,
                 const float *hdo) {
    int64_t qs[4] = {o->b, o->h, o->lq, o->d}, ks[4] = {o->b, o->h, o->lk, o->d}, ls[3] = {o->b, o->h, o->lq};
    fl_tensor *qlike[4] = {&o->q, &o->out, &o->dout, &o->dq}, *klike[4] = {&o->k, &o->v, &o->dk, &o->dv};
    for (int i = 0; i < 4; i++) *qlike[i] = fl_ctx_tensor(ctx, dt, 4, qs), *klike[i] = fl_ctx_tensor(ctx, dt, 4, ks);
    o->lse = fl_ctx_tensor(ctx, FL_F32, 3, ls);
    int64_t nq = fl_tensor_numel(&o->q), nk = fl_tensor_numel(&o->k);
    fl_ctx_upload_f32(ctx, &o->q, hq, (size_t)nq);
    fl_ctx_upload_f32(ctx, &o->k, hk, (size_t)nk);
    fl_ctx_upload_f32(ctx, &o->v, hv, (size_t)nk);
    fl_ctx_upload_f32(ctx, &o->dout, hdo, (size_t)nq);
    fl_tensor *outs[5] = {&o->out, &o->lse, &o->dq, &o->dk, &o->dv};
    for (int i = 0; i < 5; i++) fl_op_fill(ctx, outs[i], NAN);
}

static void release(fl_ctx *ctx, operands *o) {
    fl_tensor *all[9] = {&o->q, &o->k, &o->v, &o->out, &o->lse, &o->dout, &o->dq, &o->dk, &o->dv};
    for (int i = 0; i < 9; i++) fl_ctx_tensor_free(ctx, all[i]);
}

static float *fetch(fl_ctx *ctx, const fl_tensor *t) {
    int64_t n = fl_tensor_numel(t);
    float *h = malloc((size_t)n * sizeof(float));
    fl_ctx_download_f32(ctx, h, t, (size_t)n);
    return h;
}

/* max |got - want| / (1 + |want|) over the tensor; Inf when anything is NaN. */
static double worst(const float *got, const float *want, int64_t n) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]) / (1.0 + fabs(want[i]));
        if (!(e <= w)) w = isnan(e) ? INFINITY : e;
    }
    return w;
}

static void run(fl_ctx *ctx, operands *o, bool backward) {
    const float scale = 1.0f / sqrtf((float)o->d);
    fl_op_attention(ctx, &o->q, &o->k, &o->v, &o->out, &o->lse, scale);
    if (backward)
        fl_op_attention_backward(ctx, &o->dout, &o->q, &o->k, &o->v, &o->out, &o->lse, &o->dq, &o->dk, &o->dv, scale);
}

/* Validation of one version at (lq, lk, d): returns the worst error over its outputs. */
static double validate(version *ver, fl_ctx *cpu, int64_t lq, int64_t lk, int64_t d, uint64_t seed) {
    operands g = {.b = 1, .h = 2, .lq = lq, .lk = lk, .d = d}, r = g;
    int64_t nq = g.b * g.h * lq * d, nk = g.b * g.h * lk * d;
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    float *h[4];
    int64_t sizes[4] = {nq, nk, nk, nq};
    for (int i = 0; i < 4; i++) {
        h[i] = malloc((size_t)sizes[i] * sizeof(float));
        fl_rng_fill_normal(&rng, h[i], (size_t)sizes[i], 0.0f, 1.0f);
        for (int64_t j = 0; j < sizes[i]; j++) h[i][j] = bf(h[i][j]);
    }
    make(cpu, FL_F32, &r, h[0], h[1], h[2], h[3]);
    make(ver->ctx, ver->ctx == cpu ? FL_F32 : FL_BF16, &g, h[0], h[1], h[2], h[3]);
    run(cpu, &r, false);
    run(ver->ctx, &g, false);
    /* The backward of both sides takes the reference out and lse (out as bf16 stores it). */
    float *ref_out = fetch(cpu, &r.out), *ref_lse = fetch(cpu, &r.lse), *got_out = fetch(ver->ctx, &g.out);
    float *got_lse = fetch(ver->ctx, &g.lse);
    double e = fmax(worst(got_out, ref_out, nq), worst(got_lse, ref_lse, g.b * g.h * lq));
    for (int64_t j = 0; j < nq; j++) ref_out[j] = bf(ref_out[j]);
    fl_ctx_upload_f32(cpu, &r.out, ref_out, (size_t)nq);
    fl_ctx_upload_f32(ver->ctx, &g.out, ref_out, (size_t)nq);
    fl_ctx_upload_f32(ver->ctx, &g.lse, ref_lse, (size_t)(g.b * g.h * lq));
    const float scale = 1.0f / sqrtf((float)d);
    fl_op_attention_backward(cpu, &r.dout, &r.q, &r.k, &r.v, &r.out, &r.lse, &r.dq, &r.dk, &r.dv, scale);
    fl_op_attention_backward(ver->ctx, &g.dout, &g.q, &g.k, &g.v, &g.out, &g.lse, &g.dq, &g.dk, &g.dv, scale);
    fl_tensor *gs[3] = {&g.dq, &g.dk, &g.dv}, *rs[3] = {&r.dq, &r.dk, &r.dv};
    for (int i = 0; i < 3; i++) {
        float *a = fetch(ver->ctx, gs[i]), *b = fetch(cpu, rs[i]);
        e = fmax(e, worst(a, b, fl_tensor_numel(gs[i])));
        free(a), free(b);
    }
    free(ref_out), free(ref_lse), free(got_out), free(got_lse);
    for (int i = 0; i < 4; i++) free(h[i]);
    release(cpu, &r);
    release(ver->ctx, &g);
    return e;
}

/* Median ms of the forward and of the backward at (b, h, l, d). */
static void time_version(version *ver, int64_t b, int64_t h, int64_t l, int64_t d, double *fwd_ms, double *bwd_ms) {
    operands g = {.b = b, .h = h, .lq = l, .lk = l, .d = d};
    int64_t n = b * h * l * d;
    float *x = malloc((size_t)n * sizeof(float));
    fl_rng rng;
    fl_rng_seed(&rng, 5);
    fl_rng_fill_normal(&rng, x, (size_t)n, 0.0f, 1.0f);
    make(ver->ctx, FL_BF16, &g, x, x, x, x);
    free(x);
    const float scale = 1.0f / sqrtf((float)d);
    double tf[5], tb[5];
    run(ver->ctx, &g, true); /* warm-up */
    for (int r = 0; r < 5; r++) {
        fl_ctx_synchronize(ver->ctx);
        double t0 = now_s();
        fl_op_attention(ver->ctx, &g.q, &g.k, &g.v, &g.out, &g.lse, scale);
        fl_ctx_synchronize(ver->ctx);
        double t1 = now_s();
        fl_op_attention_backward(ver->ctx, &g.dout, &g.q, &g.k, &g.v, &g.out, &g.lse, &g.dq, &g.dk, &g.dv, scale);
        fl_ctx_synchronize(ver->ctx);
        tf[r] = (t1 - t0) * 1e3, tb[r] = (now_s() - t1) * 1e3;
    }
    qsort(tf, 5, sizeof(double), cmp_double);
    qsort(tb, 5, sizeof(double), cmp_double);
    *fwd_ms = tf[2], *bwd_ms = tb[2];
    release(ver->ctx, &g);
}

int main(int argc, char **argv) {
    bool dry = argc > 1 && !strcmp(argv[1], "--dry-run");
    fl_error err = {0};
    fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), &err);
    version versions[2] = {{"simt", "simt", NULL}, {"mma", "", NULL}};
    int n_versions = 0;
    if (!dry && fl_cuda_device_count() > 0) {
        fl_device gpu = {FL_DEVICE_CUDA, 0};
        for (int i = 0; i < 2; i++) {
            setenv("FLASHLORA_CUDA_ATTENTION", versions[i].env, 1); /* read when the context is created */
            versions[i].ctx = fl_ctx_create(gpu, &err);
            if (!versions[i].ctx) {
                fprintf(stderr, "attention_dev: %s\n", err.message);
                return 1;
            }
            fl_ctx_set_storage_dtype(versions[i].ctx, FL_BF16, &err);
        }
        unsetenv("FLASHLORA_CUDA_ATTENTION");
        n_versions = 2;
        char desc[256];
        fl_cuda_describe(0, desc, sizeof desc);
        printf("attention_dev on %s\n", desc);
    } else {
        printf("skipped: no GPU (%s); the CPU reference alone:\n", dry ? "dry run" : "no usable CUDA device");
        versions[0] = (version){"cpu", "", cpu};
        n_versions = 1;
    }
    int failures = 0;
    printf("version  validation (max |err|/(1+|ref|), B=1 H=2 L=700): D=128      D=64\n");
    for (int i = 0; i < n_versions; i++) {
        double e128 = validate(&versions[i], cpu, 700, 700, 128, 1), e64 = validate(&versions[i], cpu, 700, 650, 64, 2);
        bool ok = e128 <= 3e-2 && e64 <= 3e-2;
        failures += !ok;
        printf("%-8s %50.2e %9.2e  %s\n", versions[i].name, e128, e64, ok ? "ok" : "FAILED");
    }
    if (versions[0].ctx != cpu) {
        const int64_t lens[2] = {1536, 4608};
        printf("shape (B, H, L, D)       version   forward ms  TFLOP/s   backward ms  TFLOP/s\n");
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < n_versions; i++) {
                double f, b;
                time_version(&versions[i], 1, 24, lens[s], 128, &f, &b);
                double flops = 4.0 * 24 * (double)lens[s] * lens[s] * 128;
                printf("(1, 24, %4lld, 128)       %-8s %10.3f %8.1f %13.3f %8.1f\n", (long long)lens[s],
                       versions[i].name, f, flops / (f * 1e-3) / 1e12, b, 2.5 * flops / (b * 1e-3) / 1e12);
            }
        for (int i = 0; i < n_versions; i++) fl_ctx_destroy(versions[i].ctx);
    }
    fl_ctx_destroy(cpu);
    printf("attention_dev: %s\n", failures ? "VALIDATION FAILED" : "every version valid");
    return failures ? 1 : 0;
}
