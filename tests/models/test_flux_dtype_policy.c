/*
 * test_flux_dtype_policy.c — the Flux model under the CUDA dtype policy, on a machine without a GPU.
 *
 * A CPU context whose storage dtype is set to BF16 (kernels/context.h) checks every op's operands
 * as a CUDA context with BF16 storage does, in planning mode, and computes nothing. On it a tiny
 * pixel-space Flux runs everything the GPU path runs: a forward; a LoRA training step (loss and
 * gradients, gradient norm, AdamW on the f32 master weights) by hand and through the trainer
 * (steps, evaluation, checkpoint, adapter file); a forward with the trainable adapter attached;
 * a per-sample forward with two frozen adapters; the batch sampler with per-sample adapters; and
 * the memory estimate of a CUDA training job, which plans the same step on a skeleton. Any
 * operand whose dtype breaks the contract (for instance an f32 adapter next to BF16 activations
 * in a product) aborts the binary, so the run passing is the check. The dtypes the mixed-precision
 * contract promises are checked explicitly, and a CPU context under the policy that leaves
 * planning mode must abort rather than compute on 16-bit data (checked in a child process).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kernels/ops.h"
#include "models/flux.h"
#include "models/sampler.h"
#include "trainer/trainer.h"

enum { BATCH = 2, GRID_W = 4, GRID_H = 3, PATCH = 2, TEXT = 5 };

static const fl_flux_params params = {.in_channels = 3 * PATCH * PATCH, .out_channels = 3 * PATCH * PATCH,
                                      .vec_in_dim = 24, .context_in_dim = 20, .hidden_size = 64, .mlp_ratio = 2.0,
                                      .num_heads = 2, .depth = 2, .depth_single_blocks = 2,
                                      .axes_dim = {8, 12, 12}, .n_axes = 3, .theta = 10000, .qkv_bias = true,
                                      .guidance_embed = true};

/* A CPU context under the BF16 checking policy, in planning mode. */
static fl_ctx *policy_ctx(void) {
    fl_error err = {0};
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    FL_EXPECTF(ctx && fl_ctx_set_storage_dtype(ctx, FL_BF16, &err) == 0, "%s", err.message);
    if (ctx) ctx->planning = true;
    return ctx;
}

typedef struct step_inputs {
    fl_tensor img, txt, y, t, g;
    float *img_ids, *txt_ids;
    fl_flux_inputs in;
} step_inputs;

static void make_inputs(fl_ctx *ctx, step_inputs *si) {
    fl_dtype s = fl_ctx_storage_dtype(ctx);
    int64_t li = GRID_W * GRID_H;
    int64_t img[3] = {BATCH, li, params.in_channels}, txt[3] = {BATCH, TEXT, params.context_in_dim};
    int64_t y[2] = {BATCH, params.vec_in_dim}, b[1] = {BATCH};
    si->img = fl_ctx_tensor(ctx, s, 3, img);
    si->txt = fl_ctx_tensor(ctx, s, 3, txt);
    si->y = fl_ctx_tensor(ctx, s, 2, y);
    si->t = fl_ctx_tensor(ctx, FL_F32, 1, b);
    si->g = fl_ctx_tensor(ctx, FL_F32, 1, b);
    si->img_ids = calloc((size_t)(BATCH * li * 3), sizeof(float));
    si->txt_ids = calloc((size_t)(BATCH * TEXT * 3), sizeof(float));
    for (int64_t i = 0; i < BATCH * li; i++) {
        si->img_ids[i * 3 + 1] = (float)((i % li) / GRID_W);
        si->img_ids[i * 3 + 2] = (float)((i % li) % GRID_W);
    }
    si->in = (fl_flux_inputs){&si->img, &si->txt, &si->y, &si->t, &si->g, si->img_ids, si->txt_ids};
}

static void free_inputs(fl_ctx *ctx, step_inputs *si) {
    fl_tensor *t[] = {&si->img, &si->txt, &si->y, &si->t, &si->g};
    for (int i = 0; i < 5; i++) fl_ctx_tensor_free(ctx, t[i]);
    free(si->img_ids);
    free(si->txt_ids);
}

static void test_policy_is_set(void) {
    fl_ctx *ctx = policy_ctx();
    if (!ctx) return;
    FL_EXPECT(fl_ctx_storage_dtype(ctx) == FL_BF16);
    fl_error err = {0};
    FL_EXPECT(fl_ctx_set_storage_dtype(ctx, FL_F16, &err) == FL_EINVAL || err.code == FL_EINVAL);
    fl_flux_model *m = fl_flux_create_random(ctx, &params, 1);
    fl_tensor *w = NULL;
    fl_flux_param_at(m, 0, NULL, &w, NULL);
    FL_EXPECT(w->dtype == FL_BF16);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
}

/* Forward, training step by hand, forward with the trainable adapter. */
static void test_forward_and_training_step(void) {
    fl_ctx *ctx = policy_ctx();
    if (!ctx) return;
    fl_flux_model *m = fl_flux_create_random(ctx, &params, 2);
    step_inputs si;
    make_inputs(ctx, &si);
    fl_error err = {0};
    fl_tensor out;
    FL_EXPECTF(fl_flux_forward(m, &si.in, &out, &err) == 0, "forward: %s", err.message);
    FL_EXPECT(out.dtype == FL_BF16);

    FL_EXPECTF(fl_flux_add_trainable_lora(m, "all", 4, 4.0f, 3, &err) >= 0, "%s", err.message);
    fl_tensor params_t = fl_flux_trainable_params(m), grads = fl_flux_trainable_grads(m);
    FL_EXPECT(params_t.dtype == FL_F32 && grads.dtype == FL_F32);
    int adapted = 0;
    for (size_t i = 0; i < fl_flux_linear_count(m); i++) {
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        if (lin->trainable < 0) continue;
        adapted++;
        const fl_flux_adapter *ad = &lin->adapters[lin->trainable];
        FL_EXPECTF(ad->a.dtype == FL_BF16 && ad->b.dtype == FL_BF16, "%s: the products read BF16 A and B", lin->name);
        FL_EXPECTF(lin->grad_a.dtype == FL_F32 && lin->grad_b.dtype == FL_F32, "%s: f32 gradients", lin->name);
    }
    FL_EXPECT(adapted == 2 * 2 * 5 + 2 * 3);

    fl_tensor x0 = si.img, noise = si.img; /* shapes only: nothing is computed */
    double loss = -1;
    fl_flux_zero_grads(m);
    FL_EXPECTF(fl_flux_loss_and_grads(m, &si.in, &x0, &noise, &loss, &err) == 0, "training step: %s", err.message);
    (void)fl_op_sum_squares(ctx, &grads);
    int64_t n = fl_tensor_numel(&params_t);
    fl_tensor am = fl_ctx_tensor(ctx, FL_F32, 1, &n), av = fl_ctx_tensor(ctx, FL_F32, 1, &n);
    fl_adamw_params ap = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, 1};
    fl_op_adamw(ctx, &params_t, &grads, &am, &av, &ap);
    FL_EXPECTF(fl_flux_forward(m, &si.in, &out, &err) == 0, "forward with the trainable adapter: %s", err.message);
    fl_ctx_tensor_free(ctx, &am);
    fl_ctx_tensor_free(ctx, &av);
    free_inputs(ctx, &si);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
}

/* Host pairs of a random frozen adapter of rank r on the first n Linears of a kind. */
static int attach_frozen(fl_flux_model *m, int rank, const char *spec, uint64_t seed) {
    size_t count = fl_flux_linear_count(m);
    bool *sel = calloc(count, sizeof *sel);
    fl_error err = {0};
    int n = fl_flux_select_targets(m, spec, sel, &err);
    fl_flux_lora_pair *pairs = calloc((size_t)(n > 0 ? n : 1), sizeof *pairs);
    int k = 0;
    for (size_t i = 0; i < count && n > 0; i++) {
        if (!sel[i]) continue;
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        pairs[k] = (fl_flux_lora_pair){lin->name, rank, fl_test_randn((size_t)(rank * lin->in), seed + i, 0.1f),
                                       fl_test_randn((size_t)(rank * lin->out), seed + 1000 + i, 0.1f), (float)rank};
        k++;
    }
    int id = fl_flux_add_adapter(m, pairs, (size_t)k, 1.0f, false, &err);
    FL_EXPECTF(id >= 0, "attach: %s", err.message);
    for (int i = 0; i < k; i++) {
        free((void *)pairs[i].a);
        free((void *)pairs[i].b);
    }
    free(pairs);
    free(sel);
    return id;
}

/* Per-sample adapters: a forward and the batch sampler. */
static void test_per_sample_adapters(void) {
    fl_ctx *ctx = policy_ctx();
    if (!ctx) return;
    fl_flux_model *m = fl_flux_create_random(ctx, &params, 4);
    int s1 = attach_frozen(m, 3, "all", 10), s2 = attach_frozen(m, 2, "attention", 20);
    for (size_t i = 0; i < fl_flux_linear_count(m); i++) {
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        for (int k = 0; k < lin->n_adapters; k++)
            FL_EXPECTF(lin->adapters[k].a.dtype == FL_BF16, "%s: frozen adapters are stored BF16", lin->name);
    }
    fl_flux_sample_adapters sel[BATCH] = {{1, {s1}, {0.8f}}, {2, {s1, s2}, {1.0f, -0.5f}}};
    fl_error err = {0};
    FL_EXPECTF(fl_flux_set_sample_adapters(m, BATCH, sel, &err) == 0, "%s", err.message);
    step_inputs si;
    make_inputs(ctx, &si);
    fl_tensor out;
    FL_EXPECTF(fl_flux_forward(m, &si.in, &out, &err) == 0, "per-sample forward: %s", err.message);
    free_inputs(ctx, &si);
    fl_flux_clear_sample_adapters(m);

    fl_sample_request reqs[BATCH] = {{"a red mug", 1, 3.5f, {1, {s1}, {1.0f}}}, {"a blue cup", 2, 3.5f, {0, {0}, {0}}}};
    float *images[BATCH];
    for (int r = 0; r < BATCH; r++) images[r] = calloc(GRID_W * PATCH * GRID_H * PATCH * 3, sizeof(float));
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, GRID_W * PATCH, GRID_H * PATCH, 2, TEXT, reqs, BATCH, images, &err) == 0,
               "sampler: %s", err.message);
    for (int r = 0; r < BATCH; r++) free(images[r]);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
}

/* The trainer's whole life on the policy context. */
static void test_trainer(void) {
    fl_ctx *ctx = policy_ctx();
    if (!ctx) return;
    fl_flux_model *m = fl_flux_create_random(ctx, &params, 5);
    enum { SIDE_W = GRID_W * PATCH, SIDE_H = GRID_H * PATCH, N = 3 };
    float *pixels[N];
    fl_train_example ex[N];
    for (int i = 0; i < N; i++) {
        pixels[i] = fl_test_rand_uniform(SIDE_W * SIDE_H * 3, 40 + (uint64_t)i, -1.0f, 1.0f);
        ex[i] = (fl_train_example){pixels[i], SIDE_W, SIDE_H, "sks mascot"};
    }
    fl_train_config c = fl_train_config_default();
    c.steps = 2;
    c.warmup_steps = 1;
    c.batch_size = 2;
    c.rank = 4;
    c.ema_decay = 0.9f;
    c.max_text_tokens = TEXT;
    fl_error err = {0};
    fl_trainer *t = fl_trainer_create(m, &c, ex, N, &err);
    FL_EXPECTF(t, "trainer: %s", err.message);
    for (int s = 0; t && s < c.steps; s++) FL_EXPECTF(fl_trainer_step(t, NULL, &err) == 0, "step: %s", err.message);
    if (t) {
        float ts[2] = {0.3f, 0.7f};
        (void)fl_trainer_eval_loss(t, ts, 2, 7);
        char dir[] = "/tmp/fl_dtype_policy_XXXXXX", path[64];
        if (mkdtemp(dir)) {
            snprintf(path, sizeof path, "%s/ckpt.safetensors", dir);
            FL_EXPECTF(fl_trainer_save_checkpoint(t, path, &err) == 0, "%s", err.message);
            FL_EXPECTF(fl_trainer_load_checkpoint(t, path, &err) == 0, "%s", err.message);
            unlink(path);
            snprintf(path, sizeof path, "%s/adapter.safetensors", dir);
            FL_EXPECTF(fl_trainer_save_adapter(t, path, NULL, 0, &err) == 0, "%s", err.message);
            unlink(path);
            rmdir(dir);
        }
    }
    fl_trainer_free(t);
    for (int i = 0; i < N; i++) free(pixels[i]);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
}

/* The memory estimate of CUDA jobs plans the same steps on a skeleton with the same dtypes; the
 * training estimate counts the 16-bit copy of the adapter's weights. */
static void test_cuda_estimates(void) {
    fl_flux_memory bf16, f32;
    fl_error err = {0};
    fl_flux_job_shape s = {.device = FL_DEVICE_CUDA, .batch = 2, .image_tokens = 12, .text_tokens = TEXT,
                           .training = true, .lora_rank = 4, .targets = "all"};
    FL_EXPECTF(fl_flux_estimate_memory(&params, &s, &bf16, &err) == 0, "%s", err.message);
    s.device = FL_DEVICE_CPU;
    FL_EXPECTF(fl_flux_estimate_memory(&params, &s, &f32, &err) == 0, "%s", err.message);
    FL_EXPECTF(bf16.adapters > f32.adapters, "bf16 %zu vs f32 %zu adapter bytes", bf16.adapters, f32.adapters);
}

/* Leaving planning mode on the policy context aborts at the first op with a BF16 operand. */
static void test_computing_aborts(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        fl_ctx *ctx = policy_ctx();
        int64_t shape[2] = {4, 4};
        fl_tensor x = fl_ctx_tensor(ctx, FL_BF16, 2, shape), y = fl_ctx_tensor(ctx, FL_BF16, 2, shape);
        ctx->planning = false;
        freopen("/dev/null", "w", stderr);
        fl_op_silu(ctx, &x, &y);
        _exit(0);
    }
    int status = 0;
    FL_EXPECT(pid > 0 && waitpid(pid, &status, 0) == pid);
    FL_EXPECTF(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "status %d", status);
}

int main(void) {
    FL_RUN(test_policy_is_set);
    FL_RUN(test_forward_and_training_step);
    FL_RUN(test_per_sample_adapters);
    FL_RUN(test_trainer);
    FL_RUN(test_cuda_estimates);
    FL_RUN(test_computing_aborts);
    return fl_test_finish();
}
