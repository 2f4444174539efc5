/*
 * bench_adapters.c — what a generation batch pays for its adapters: the worker's former way
 * (detach every adapter, attach the batch's adapters again from the host cache, plan the forward,
 * sample) against adapters resident on the model (acquire: select sets already attached, sample).
 *
 * Model: random Flux of hidden 512, 8 heads (head dim 64, axes 8/28/28), MLP ratio 4, 4 double +
 * 8 single blocks, pixel space with patch 2 (12 channels), text 512 wide, pooled 256, guidance
 * embedding. Adapters: 8 random rank-16 (alpha 16) adapters on every Linear of the model, stored
 * as canonical files and loaded through the worker's adapter cache (adapters/cache.h). A batch:
 * 8 requests of one image each, request r naming adapter r, WxW pixels, S steps.
 *
 * Each mode runs one warm-up batch and then `batches` timed ones; prints one JSON line per mode
 * with medians in milliseconds: the adapter phase before sampling (attach / acquire), the
 * sampling (which includes planning when the forward plans), the phase after (detach / release),
 * the whole batch, and plans per batch. Checks the two modes give bitwise the same images.
 *
 * Mode "select" isolates what selecting the batch's adapters costs the forward: the 8 adapters
 * attached once, then 20 times a per-sample selection of them followed by one forward of 8
 * samples of one image token and one text token each (compute small next to planning). Where
 * a new selection makes the forward plan again (the former model) the difference is the cost of
 * a plan; where it does not, none.
 *
 *   bench_adapters [batches=5] [steps=1] [width=16] [modes=detach,resident]   threads: FLASHLORA_THREADS
 *
 * modes: which of detach, resident, select run, in that order (the image check needs the first two).
 *
 * Built against a tree without the device tier (no FL_FLUX_MAX_ATTACHED), only the detach mode
 * runs, which is how the "before" figures in benchmarks/RESULTS.md were taken.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapters/cache.h"
#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "core/rng.h"
#include "core/threads.h"
#include "models/flux.h"
#include "models/sampler.h"
#include "benchmarks/bench_clock.h"

enum { N_ADAPTERS = 8, RANK = 16, TEXT_TOKENS = 16 };

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static char dir[256];

static int locate(void *arg, const char *sha256, char *path, size_t cap, fl_error *err) {
    (void)arg;
    if ((size_t)snprintf(path, cap, "%s/%s.safetensors", dir, sha256) >= cap)
        return fl_fail(err, FL_EINVAL, "path too long");
    return 0;
}

/* Adapter i: rank RANK on every Linear, written to dir under the name hash[i]. */
static int write_adapter(fl_flux_model *m, int i, char hash[65], fl_error *err) {
    snprintf(hash, 65, "%064x", i + 1);
    fl_rng rng;
    fl_rng_seed(&rng, 1000 + (uint64_t)i);
    fl_lora *l = fl_lora_new();
    int rc = 0;
    for (size_t k = 0; k < fl_flux_linear_count(m) && rc == 0; k++) {
        const fl_flux_linear *lin = fl_flux_linear_at(m, k);
        float *a = malloc((size_t)(RANK * lin->in) * sizeof(float)), *b = malloc((size_t)(RANK * lin->out) * sizeof(float));
        fl_rng_fill_normal(&rng, a, (size_t)(RANK * lin->in), 0.0f, 0.02f);
        fl_rng_fill_normal(&rng, b, (size_t)(RANK * lin->out), 0.0f, 0.02f);
        rc = fl_lora_add(l, lin->name, RANK, lin->in, lin->out, a, b, (float)RANK, err);
        free(a);
        free(b);
    }
    char path[512];
    locate(NULL, hash, path, sizeof path, err);
    if (rc == 0) rc = fl_lora_save(l, FL_LORA_CANONICAL, path, NULL, 0, err);
    fl_lora_free(l);
    return rc;
}

typedef struct timing {
    double before, sample, after, total;
    double plans;
} timing;

/* The former worker: clear the model's adapters, attach each adapter of the batch from the host
 * cache, sample, clear again. */
static int batch_detach(fl_flux_model *m, fl_adapter_cache *c, char hashes[][65], fl_sample_request *reqs, int n,
                        int width, int steps, float **images, timing *t, fl_error *err) {
    double t0 = bench_now_ms();
    fl_flux_clear_adapters(m);
    fl_adapter_cache_unpin_all(c);
    for (int r = 0; r < n; r++) {
        const fl_lora *l = NULL;
        if (fl_adapter_cache_get(c, hashes[r], &l, err) != 0) return -1;
        fl_adapter_cache_pin(c, hashes[r]);
        int id = fl_flux_add_adapter(m, l->pairs, l->n_pairs, 1.0f, false, err);
        if (id < 0) return -1;
        reqs[r].adapters.n = 1;
        reqs[r].adapters.set_ids[0] = id;
        reqs[r].adapters.multipliers[0] = 1.0f;
    }
    double t1 = bench_now_ms();
    int rc = fl_flux_sample_pixels_batch(m, width, width, steps, TEXT_TOKENS, reqs, n, images, err);
    double t2 = bench_now_ms();
    fl_flux_clear_adapters(m);
    fl_adapter_cache_unpin_all(c);
    double t3 = bench_now_ms();
    *t = (timing){t1 - t0, t2 - t1, t3 - t2, t3 - t0, 0};
    return rc;
}

#ifdef FL_FLUX_MAX_ATTACHED
/* Resident: acquire each adapter (attached once, then a set already there), sample, release. */
static int batch_resident(fl_flux_model *m, fl_adapter_cache *c, char hashes[][65], fl_sample_request *reqs, int n,
                          int width, int steps, float **images, timing *t, fl_error *err) {
    double t0 = bench_now_ms();
    for (int r = 0; r < n; r++) {
        if (fl_adapter_cache_acquire(c, hashes[r], &reqs[r].adapters.set_ids[0], err) != 0) return -1;
        reqs[r].adapters.n = 1;
        reqs[r].adapters.multipliers[0] = 1.0f;
    }
    double t1 = bench_now_ms();
    int rc = fl_flux_sample_pixels_batch(m, width, width, steps, TEXT_TOKENS, reqs, n, images, err);
    double t2 = bench_now_ms();
    fl_adapter_cache_release_all(c);
    double t3 = bench_now_ms();
    *t = (timing){t1 - t0, t2 - t1, t3 - t2, t3 - t0, 0};
    return rc;
}
#endif

/* Selection then forward, repeated; tiny inputs so planning is not hidden by compute. */
static int run_select(fl_flux_model *m, char hashes[][65], int threads) {
    enum { REPS = 20 };
    fl_error err = {0};
    fl_adapter_cache *c = fl_adapter_cache_create(locate, NULL, m, (size_t)1 << 30);
    const fl_flux_params *p = fl_flux_get_params(m);
    fl_flux_sample_adapters sel[N_ADAPTERS];
    memset(sel, 0, sizeof sel);
    fl_flux_clear_adapters(m);
    int rc = 0;
    for (int r = 0; r < N_ADAPTERS && rc == 0; r++) {
        const fl_lora *l = NULL;
        rc = fl_adapter_cache_get(c, hashes[r], &l, &err);
        if (rc == 0) sel[r].set_ids[0] = fl_flux_add_adapter(m, l->pairs, l->n_pairs, 1.0f, false, &err);
        if (rc == 0 && sel[r].set_ids[0] < 0) rc = -1;
        sel[r].n = 1;
        sel[r].multipliers[0] = 1.0f;
    }
    const int64_t b = N_ADAPTERS;
    float *img = calloc((size_t)(b * p->in_channels), sizeof(float)), *txt = calloc((size_t)(b * p->context_in_dim), sizeof(float));
    float *y = calloc((size_t)(b * p->vec_in_dim), sizeof(float)), *t = calloc((size_t)b, sizeof(float));
    float *g = calloc((size_t)b, sizeof(float)), *ids = calloc((size_t)(b * 3), sizeof(float));
    for (int64_t i = 0; i < b; i++) t[i] = 0.5f, g[i] = 3.5f;
    fl_tensor img_t = fl_tensor_f32_3d(img, b, 1, p->in_channels), txt_t = fl_tensor_f32_3d(txt, b, 1, p->context_in_dim);
    fl_tensor y_t = fl_tensor_f32_2d(y, b, p->vec_in_dim), t_t = fl_tensor_f32_1d(t, b), g_t = fl_tensor_f32_1d(g, b);
    fl_flux_inputs in = {&img_t, &txt_t, &y_t, &t_t, &g_t, ids, ids};
    double times[REPS];
    fl_tensor out;
    uint64_t p0 = 0;
    for (int i = -1; i < REPS && rc == 0; i++) { /* i = -1: warm-up */
#ifdef FL_FLUX_MAX_ATTACHED
        if (i == 0) p0 = fl_flux_plan_count(m);
#endif
        double t0 = bench_now_ms();
        rc = fl_flux_set_sample_adapters(m, (int)b, sel, &err);
        if (rc == 0) rc = fl_flux_forward(m, &in, &out, &err);
        if (i >= 0) times[i] = bench_now_ms() - t0;
    }
    if (rc != 0) {
        fprintf(stderr, "select: %s\n", err.message);
    } else {
#ifdef FL_FLUX_MAX_ATTACHED
        double plans = (double)(fl_flux_plan_count(m) - p0) / REPS;
#else
        double plans = -1; /* not counted by this tree */
#endif
        printf("{\"mode\": \"select\", \"threads\": %d, \"forwards\": %d, \"samples\": %d, \"forward_ms\": %.3f, "
               "\"plans_per_forward\": %.2f}\n",
               threads, REPS, N_ADAPTERS, median(times, REPS), plans);
    }
    fl_flux_clear_sample_adapters(m);
    fl_flux_clear_adapters(m);
    fl_adapter_cache_free(c);
    free(img), free(txt), free(y), free(t), free(g), free(ids);
    (void)p0;
    return rc;
}

typedef int (*batch_fn)(fl_flux_model *, fl_adapter_cache *, char[][65], fl_sample_request *, int, int, int, float **,
                        timing *, fl_error *);

static int run_mode(const char *name, batch_fn fn, fl_flux_model *m, char hashes[][65], int batches, int steps,
                    int width, float **images, int threads) {
    fl_error err = {0};
    fl_adapter_cache *c = fl_adapter_cache_create(locate, NULL, m, (size_t)1 << 30);
    fl_sample_request reqs[N_ADAPTERS];
    memset(reqs, 0, sizeof reqs);
    static const char *const prompts[4] = {"a red logo", "a blue mascot", "a product shot", "a character"};
    for (int r = 0; r < N_ADAPTERS; r++) {
        reqs[r].prompt = prompts[r % 4];
        reqs[r].seed = 100 + (uint64_t)r;
        reqs[r].guidance = 3.5f;
    }
    double *v[4];
    for (int k = 0; k < 4; k++) v[k] = malloc((size_t)batches * sizeof(double));
    double plans = 0;
    int rc = 0;
    for (int b = -1; b < batches && rc == 0; b++) { /* b = -1: warm-up (loads the files, first plan) */
        timing t = {0};
#ifdef FL_FLUX_MAX_ATTACHED
        uint64_t p0 = fl_flux_plan_count(m);
#endif
        rc = fn(m, c, hashes, reqs, N_ADAPTERS, width, steps, images, &t, &err);
        if (rc != 0 || b < 0) continue;
#ifdef FL_FLUX_MAX_ATTACHED
        plans += (double)(fl_flux_plan_count(m) - p0);
#else
        plans = -1; /* not counted by this tree */
#endif
        v[0][b] = t.before, v[1][b] = t.sample, v[2][b] = t.after, v[3][b] = t.total;
    }
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", name, err.message);
    } else {
        printf("{\"mode\": \"%s\", \"threads\": %d, \"batches\": %d, \"images\": %d, \"size\": %d, \"steps\": %d, "
               "\"before_ms\": %.3f, \"sample_ms\": %.2f, \"after_ms\": %.3f, \"batch_ms\": %.2f, "
               "\"plans_per_batch\": %.2f}\n",
               name, threads, batches, N_ADAPTERS, width, steps, median(v[0], batches), median(v[1], batches),
               median(v[2], batches), median(v[3], batches), plans < 0 ? -1.0 : plans / batches);
    }
    for (int k = 0; k < 4; k++) free(v[k]);
    fl_adapter_cache_free(c);
    return rc;
}

int main(int argc, char **argv) {
    int batches = argc > 1 ? atoi(argv[1]) : 5, steps = argc > 2 ? atoi(argv[2]) : 1, width = argc > 3 ? atoi(argv[3]) : 16;
    const char *modes = argc > 4 ? argv[4] : "detach,resident";
    if (batches < 1 || steps < 1 || width < 2 || width % 2) {
        fprintf(stderr, "usage: bench_adapters [batches>=1] [steps>=1] [even width] [modes]\n");
        return 2;
    }
    int threads = fl_threads_init_from_env();
    fl_flux_params p = {.in_channels = 12, .out_channels = 12, .vec_in_dim = 256, .context_in_dim = 512,
                        .hidden_size = 512, .mlp_ratio = 4.0, .num_heads = 8, .depth = 4, .depth_single_blocks = 8,
                        .axes_dim = {8, 28, 28}, .n_axes = 3, .theta = 10000, .qkv_bias = true, .guidance_embed = true};
    fl_error err = {0};
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    if (!ctx) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    fl_flux_model *m = fl_flux_create_random(ctx, &p, 1);
    snprintf(dir, sizeof dir, "/tmp/fl_bench_adapters_XXXXXX");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    char hashes[N_ADAPTERS][65];
    int rc = 0;
    for (int i = 0; i < N_ADAPTERS && rc == 0; i++) rc = write_adapter(m, i, hashes[i], &err);
    if (rc != 0) fprintf(stderr, "%s\n", err.message);
    size_t floats = (size_t)width * (size_t)width * 3;
    float *a[N_ADAPTERS], *b[N_ADAPTERS];
    for (int r = 0; r < N_ADAPTERS; r++) {
        a[r] = calloc(floats, sizeof(float));
        b[r] = calloc(floats, sizeof(float));
    }
    bool ran_detach = false, ran_resident = false;
    for (const char *mode = modes; rc == 0 && *mode; mode += strcspn(mode, ",") + (mode[strcspn(mode, ",")] == ',')) {
        size_t len = strcspn(mode, ",");
        if (len == 6 && !strncmp(mode, "select", 6)) {
            rc = run_select(m, hashes, threads);
        } else if (len == 6 && !strncmp(mode, "detach", 6)) {
            rc = run_mode("detach", batch_detach, m, hashes, batches, steps, width, a, threads);
            ran_detach = true;
#ifdef FL_FLUX_MAX_ATTACHED
        } else if (len == 8 && !strncmp(mode, "resident", 8)) {
            rc = run_mode("resident", batch_resident, m, hashes, batches, steps, width, b, threads);
            ran_resident = true;
#endif
        } else {
            fprintf(stderr, "unknown mode '%.*s'\n", (int)len, mode);
            rc = 2;
        }
    }
    (void)ran_detach;
    (void)ran_resident;
#ifdef FL_FLUX_MAX_ATTACHED
    if (rc == 0 && ran_detach && ran_resident) {
        bool same = true;
        for (int r = 0; r < N_ADAPTERS; r++) same = same && !memcmp(a[r], b[r], floats * sizeof(float));
        printf("{\"images_bitwise_equal\": %s}\n", same ? "true" : "false");
        if (!same) rc = 1;
    }
#endif
    for (int r = 0; r < N_ADAPTERS; r++) {
        char path[512];
        locate(NULL, hashes[r], path, sizeof path, NULL);
        unlink(path);
        free(a[r]);
        free(b[r]);
    }
    rmdir(dir);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    return rc == 0 ? 0 : 1;
}
