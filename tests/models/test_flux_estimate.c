/*
 * test_flux_estimate.c — a job's memory known before it runs, and a step that cannot get its
 * memory failing instead of aborting.
 *
 * fl_flux_estimate_memory runs the step in planning mode on a skeleton model: its activation
 * figure must equal the arena the real model plans for the same step (forward, per-sample forward
 * with adapters, LoRA training step) on fixture b, and its weight figure the model's parameters.
 * Shapes far beyond any machine (a 1024x1024 training batch of 16, the case that used to abort
 * the service, and FLUX.1-dev sizes in bf16) are estimated in milliseconds without allocating
 * them. Bad targets are FL_EINVAL naming them. A forward whose activations cannot be allocated
 * returns FL_ENOMEM and the model still runs the next, smaller step.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "harness.h"
#include "kernels/ops.h"
#include "models/flux.h"

/* An allocation far beyond the machine must come back as NULL under AddressSanitizer too (it
 * reports and aborts by default). ASAN_OPTIONS from the environment still apply on top. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
    return "allocator_may_return_null=1";
}

static fl_ctx *cpu;

static fl_flux_model *load_b(void) {
    char path[512];
    fl_error err = {0};
    fl_flux_model *m = NULL;
    FL_EXPECTF(fl_flux_load(cpu, fl_test_data_path("fixtures/flux_b.model.safetensors", path, sizeof path), NULL, &m,
                            &err) == 0,
               "load: %s", err.message);
    return m;
}

typedef struct inputs {
    fl_tensor img, noise, txt, y, t, g;
    float *img_ids, *txt_ids;
    fl_flux_inputs in;
} inputs;

static void make_inputs(fl_flux_model *m, int64_t b, int64_t li, int64_t lt, inputs *x) {
    const fl_flux_params *p = fl_flux_get_params(m);
    int64_t s_img[3] = {b, li, p->in_channels}, s_txt[3] = {b, lt, p->context_in_dim}, s_y[2] = {b, p->vec_in_dim},
            s_b[1] = {b};
    x->img = fl_ctx_tensor(cpu, FL_F32, 3, s_img);
    x->noise = fl_ctx_tensor(cpu, FL_F32, 3, s_img);
    x->txt = fl_ctx_tensor(cpu, FL_F32, 3, s_txt);
    x->y = fl_ctx_tensor(cpu, FL_F32, 2, s_y);
    x->t = fl_ctx_tensor(cpu, FL_F32, 1, s_b);
    x->g = fl_ctx_tensor(cpu, FL_F32, 1, s_b);
    fl_tensor *all[] = {&x->img, &x->noise, &x->txt, &x->y, &x->g};
    for (int i = 0; i < 5; i++) fl_op_fill(cpu, all[i], 0.25f);
    fl_op_fill(cpu, &x->t, 0.5f);
    x->img_ids = calloc((size_t)(b * li * p->n_axes), sizeof(float));
    x->txt_ids = calloc((size_t)(b * lt * p->n_axes), sizeof(float));
    x->in = (fl_flux_inputs){&x->img, &x->txt, &x->y, &x->t, p->guidance_embed ? &x->g : NULL, x->img_ids, x->txt_ids};
}

static void free_inputs(inputs *x) {
    fl_tensor *all[] = {&x->img, &x->noise, &x->txt, &x->y, &x->t, &x->g};
    for (int i = 0; i < 6; i++) fl_ctx_tensor_free(cpu, all[i]);
    free(x->img_ids);
    free(x->txt_ids);
}

static size_t param_bytes(fl_flux_model *m) {
    size_t total = 0;
    for (size_t i = 0; i < fl_flux_param_count(m); i++) {
        fl_tensor *v = NULL;
        fl_flux_param_at(m, i, NULL, &v, NULL);
        total += (fl_tensor_nbytes(v) + 255) & ~(size_t)255;
    }
    return total;
}

static void test_forward_matches_the_plan(void) {
    fl_flux_model *m = load_b();
    if (!m) return;
    inputs x;
    make_inputs(m, 3, 40, 7, &x);
    fl_tensor out;
    fl_error err = {0};
    FL_EXPECTF(fl_flux_forward(m, &x.in, &out, &err) == 0, "%s", err.message);
    fl_flux_job_shape s = {.device = FL_DEVICE_CPU, .batch = 3, .image_tokens = 40, .text_tokens = 7};
    fl_flux_memory est;
    FL_EXPECTF(fl_flux_estimate_memory(fl_flux_get_params(m), &s, &est, &err) == 0, "%s", err.message);
    FL_EXPECTF(est.activations == fl_flux_activation_bytes(m), "forward: estimate %zu, planned %zu", est.activations,
               fl_flux_activation_bytes(m));
    FL_EXPECTF(est.weights == param_bytes(m), "weights: estimate %zu, model %zu", est.weights, param_bytes(m));
    FL_EXPECT(est.adapters == 0 && est.optimizer == 0 && est.inputs > 0);
    FL_EXPECT(est.total == est.weights + est.adapters + est.optimizer + est.activations + est.inputs);
    free_inputs(&x);
    fl_flux_free(m);
}

static void test_per_sample_forward_is_covered(void) {
    fl_flux_model *m = load_b();
    if (!m) return;
    fl_error err = {0};
    /* Two frozen adapters of rank 3 on every block Linear, each sample applying both. */
    size_t n_lin = fl_flux_linear_count(m);
    bool *sel = calloc(n_lin, sizeof *sel);
    int count = fl_flux_select_targets(m, "all", sel, &err);
    FL_EXPECT(count > 0);
    fl_flux_lora_pair *pairs = calloc((size_t)count, sizeof *pairs);
    int64_t adapter_params = 0;
    size_t k = 0;
    for (size_t i = 0; i < n_lin; i++) {
        if (!sel[i]) continue;
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        float *a = calloc((size_t)(3 * lin->in), sizeof(float)), *b = calloc((size_t)(3 * lin->out), sizeof(float));
        pairs[k++] = (fl_flux_lora_pair){lin->name, 3, a, b, 3.0f};
        adapter_params += 3 * (lin->in + lin->out);
    }
    fl_flux_sample_adapters per[2];
    memset(per, 0, sizeof per);
    for (int j = 0; j < 2; j++) {
        int id = fl_flux_add_adapter(m, pairs, k, 1.0f, false, &err);
        FL_EXPECTF(id >= 0, "%s", err.message);
        for (int b = 0; b < 2; b++) {
            per[b].set_ids[j] = id;
            per[b].multipliers[j] = 1.0f;
            per[b].n = j + 1;
        }
    }
    for (size_t i = 0; i < k; i++) {
        free((void *)pairs[i].a);
        free((void *)pairs[i].b);
    }
    free(pairs);
    free(sel);
    FL_EXPECTF(fl_flux_set_sample_adapters(m, 2, per, &err) == 0, "%s", err.message);
    inputs x;
    make_inputs(m, 2, 24, 5, &x);
    fl_tensor out;
    FL_EXPECTF(fl_flux_forward(m, &x.in, &out, &err) == 0, "%s", err.message);
    fl_flux_job_shape s = {.device = FL_DEVICE_CPU, .batch = 2, .image_tokens = 24, .text_tokens = 5,
                           .n_adapters = 2, .adapter_rank = 3, .adapter_params = 2 * adapter_params};
    fl_flux_memory est;
    FL_EXPECTF(fl_flux_estimate_memory(fl_flux_get_params(m), &s, &est, &err) == 0, "%s", err.message);
    FL_EXPECTF(est.activations >= fl_flux_activation_bytes(m), "per-sample: estimate %zu < planned %zu",
               est.activations, fl_flux_activation_bytes(m));
    FL_EXPECTF(est.adapters >= (size_t)(2 * adapter_params) * sizeof(float), "adapters: %zu", est.adapters);
    free_inputs(&x);
    fl_flux_free(m);
}

static void test_training_matches_the_plan(void) {
    fl_flux_model *m = load_b();
    if (!m) return;
    fl_error err = {0};
    FL_EXPECTF(fl_flux_add_trainable_lora(m, "attention", 4, 4.0f, 3, &err) >= 0, "%s", err.message);
    inputs x;
    make_inputs(m, 2, 16, 6, &x);
    double loss = 0;
    FL_EXPECTF(fl_flux_loss_and_grads(m, &x.in, &x.img, &x.noise, &loss, &err) == 0, "%s", err.message);
    fl_flux_job_shape s = {.device = FL_DEVICE_CPU, .batch = 2, .image_tokens = 16, .text_tokens = 6,
                           .training = true, .lora_rank = 4, .targets = "attention"};
    fl_flux_memory est;
    FL_EXPECTF(fl_flux_estimate_memory(fl_flux_get_params(m), &s, &est, &err) == 0, "%s", err.message);
    FL_EXPECTF(est.activations == fl_flux_activation_bytes(m), "training: estimate %zu, planned %zu", est.activations,
               fl_flux_activation_bytes(m));
    fl_tensor params = fl_flux_trainable_params(m);
    size_t n = (size_t)fl_tensor_numel(&params) * sizeof(float);
    FL_EXPECTF(est.adapters >= 2 * n && est.adapters < 2 * n + 512, "adapter %zu for %zu parameter bytes",
               est.adapters, n);
    FL_EXPECT(est.optimizer >= 2 * n);
    free_inputs(&x);
    fl_flux_free(m);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long peak_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void test_huge_jobs_are_estimated_not_allocated(void) {
    fl_flux_model *m = load_b();
    if (!m) return;
    fl_flux_params pb = *fl_flux_get_params(m);
    fl_flux_free(m);
    long rss0 = peak_rss_kb();
    double t0 = now_s();
    /* The request that used to abort the service: resolution 1024 (patch 2), batch 16. */
    fl_flux_job_shape s = {.device = FL_DEVICE_CPU, .batch = 16, .image_tokens = 512 * 512, .text_tokens = 32,
                           .training = true, .lora_rank = 16, .targets = "all"};
    fl_flux_memory est;
    fl_error err = {0};
    FL_EXPECTF(fl_flux_estimate_memory(&pb, &s, &est, &err) == 0, "%s", err.message);
    FL_EXPECTF(est.activations > ((size_t)32 << 30), "1024x1024 x16 training: only %zu bytes?", est.activations);
    /* FLUX.1-dev in bf16: 12B parameters, a 1024x1024 image is 4096 latent tokens. */
    fl_flux_params dev = {.in_channels = 64, .out_channels = 64, .vec_in_dim = 768, .context_in_dim = 4096,
                          .hidden_size = 3072, .mlp_ratio = 4.0, .num_heads = 24, .depth = 19,
                          .depth_single_blocks = 38, .axes_dim = {16, 56, 56}, .n_axes = 3, .theta = 10000,
                          .qkv_bias = true, .guidance_embed = true};
    fl_flux_job_shape g = {.device = FL_DEVICE_CUDA, .batch = 1, .image_tokens = 4096, .text_tokens = 512};
    FL_EXPECTF(fl_flux_estimate_memory(&dev, &g, &est, &err) == 0, "%s", err.message);
    FL_EXPECTF(est.weights > (size_t)23e9 && est.weights < (size_t)24e9, "FLUX.1-dev weights %zu",
               est.weights);
    /* A forward for generation keeps one block's activations at a time (flux_step.c): about
     * 0.6 GB for the widest single block over 4608 tokens, not the 36 GB a training step saves. */
    FL_EXPECTF(est.activations > ((size_t)256 << 20) && est.activations < ((size_t)2 << 30) &&
                   est.inputs < ((size_t)1 << 30),
               "FLUX.1-dev 1024x1024 forward: activations %zu, inputs %zu", est.activations, est.inputs);
    fl_flux_job_shape gt = g;
    gt.training = true;
    gt.lora_rank = 16;
    fl_flux_memory train;
    FL_EXPECTF(fl_flux_estimate_memory(&dev, &gt, &train, &err) == 0, "%s", err.message);
    FL_EXPECTF(train.activations > 20 * est.activations, "training %zu vs forward %zu", train.activations,
               est.activations);
    /* A bf16 training step and a per-sample forward with adapters plan without tripping the ops'
     * dtype checks (the API estimates CUDA jobs on any machine). */
    fl_flux_job_shape t = {.device = FL_DEVICE_CUDA, .batch = 1, .image_tokens = 1024, .text_tokens = 512,
                           .training = true, .lora_rank = 16, .targets = "attention"};
    FL_EXPECTF(fl_flux_estimate_memory(&dev, &t, &est, &err) == 0 && est.optimizer > 0, "%s", err.message);
    fl_flux_job_shape ga = {.device = FL_DEVICE_CUDA, .batch = 2, .image_tokens = 1024, .text_tokens = 512,
                            .n_adapters = 3, .adapter_rank = 32, .adapter_params = 1000000};
    FL_EXPECTF(fl_flux_estimate_memory(&dev, &ga, &est, &err) == 0 && est.adapters >= 2000000, "%s", err.message);
    double seconds = now_s() - t0;
    long grew_kb = peak_rss_kb() - rss0;
    FL_EXPECTF(seconds < 5.0, "estimates took %.2f s", seconds);
    FL_EXPECTF(grew_kb < 64 * 1024, "estimating grew the peak RSS by %ld KiB", grew_kb);
}

static void test_bad_shapes_and_targets_are_errors(void) {
    fl_flux_model *m = load_b();
    if (!m) return;
    fl_flux_params pb = *fl_flux_get_params(m);
    fl_flux_free(m);
    fl_flux_memory est;
    fl_error err = {0};
    fl_flux_job_shape s = {.device = FL_DEVICE_CPU, .batch = 1, .image_tokens = 16, .text_tokens = 4,
                           .training = true, .lora_rank = 4, .targets = "^nothing_matches$"};
    FL_EXPECT(fl_flux_estimate_memory(&pb, &s, &est, &err) != 0 && err.code == FL_EINVAL &&
              strstr(err.message, "^nothing_matches$"));
    s.targets = "(unclosed";
    FL_EXPECT(fl_flux_estimate_memory(&pb, &s, &est, &err) != 0 && err.code == FL_EINVAL &&
              strstr(err.message, "(unclosed"));
    s.targets = "attention";
    s.batch = 0;
    FL_EXPECT(fl_flux_estimate_memory(&pb, &s, &est, &err) != 0 && err.code == FL_EINVAL);
    s.batch = 1;
    s.lora_rank = 0;
    FL_EXPECT(fl_flux_estimate_memory(&pb, &s, &est, &err) != 0 && err.code == FL_EINVAL);
}

static int overcommit_mode(void) {
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    int mode = 0;
    if (f) {
        if (fscanf(f, "%d", &mode) != 1) mode = 0;
        fclose(f);
    }
    return mode;
}

static void test_activations_out_of_memory_fail_the_step(void) {
    if (overcommit_mode() == 1) {
        printf("  (skipped: vm.overcommit_memory = 1 grants any allocation)\n");
        return;
    }
    fl_flux_model *m = load_b();
    if (!m) return;
    const fl_flux_params *p = fl_flux_get_params(m);
    /* Inputs with shapes only: the step fails at its arena, before any input is read. */
    int64_t b = 1, li = (int64_t)1 << 31, lt = 4;
    int64_t s_img[3] = {b, li, p->in_channels}, s_txt[3] = {b, lt, p->context_in_dim}, s_y[2] = {b, p->vec_in_dim},
            s_b[1] = {b};
    fl_tensor img = fl_tensor_make(NULL, FL_F32, cpu->device, 3, s_img);
    fl_tensor txt = fl_tensor_make(NULL, FL_F32, cpu->device, 3, s_txt);
    fl_tensor y = fl_tensor_make(NULL, FL_F32, cpu->device, 2, s_y);
    fl_tensor t = fl_tensor_make(NULL, FL_F32, cpu->device, 1, s_b);
    static float ids[1]; /* never read: the step stops at its arena */
    fl_flux_inputs in = {&img, &txt, &y, &t, p->guidance_embed ? &t : NULL, ids, ids};
    fl_tensor out;
    fl_error err = {0};
    FL_EXPECTF(fl_flux_forward(m, &in, &out, &err) != 0 && err.code == FL_ENOMEM, "code %d: %s", err.code,
               err.message);
    /* The model is still usable for a step that fits. */
    inputs x;
    make_inputs(m, 1, 16, 4, &x);
    FL_EXPECTF(fl_flux_forward(m, &x.in, &out, &err) == 0, "%s", err.message);
    free_inputs(&x);
    fl_flux_free(m);
}

int main(void) {
    cpu = fl_ctx_create(fl_device_cpu(), NULL);
    FL_RUN(test_forward_matches_the_plan);
    FL_RUN(test_per_sample_forward_is_covered);
    FL_RUN(test_training_matches_the_plan);
    FL_RUN(test_huge_jobs_are_estimated_not_allocated);
    FL_RUN(test_bad_shapes_and_targets_are_errors);
    FL_RUN(test_activations_out_of_memory_fail_the_step);
    fl_ctx_destroy(cpu);
    return fl_test_finish();
}
