/*
 * test_flux_flops.c — the benchmarks' FLOP count of a Flux step (benchmarks/flux_flops.c) against
 * the count the ops themselves make while the model plans the same step (fl_flux_memory.flops).
 *
 * Checked exactly, on the tiny test configuration and at the real FLUX.1-dev shapes (skeleton
 * model, nothing allocated): a forward without adapters, a forward with one and with three
 * rank-16 adapters on every block Linear, and a LoRA training step, at 512x512 and 1024x1024
 * (1024 and 4096 image tokens, 512 text tokens). Also a hand count of the FLUX.1-dev forward at
 * 1024x1024 from its parameter count, and the attention share.
 */
#include <math.h>
#include <stdio.h>

#include "benchmarks/flux_flops.h"
#include "harness.h"
#include "models/flux.h"

static const fl_flux_params dev = {.in_channels = 64, .out_channels = 64, .vec_in_dim = 768,
                                   .context_in_dim = 4096, .hidden_size = 3072, .mlp_ratio = 4.0, .num_heads = 24,
                                   .depth = 19, .depth_single_blocks = 38, .axes_dim = {16, 56, 56}, .n_axes = 3,
                                   .theta = 10000, .qkv_bias = true, .guidance_embed = true};

static const fl_flux_params tiny = {.in_channels = 12, .out_channels = 12, .vec_in_dim = 24, .context_in_dim = 20,
                                    .hidden_size = 64, .mlp_ratio = 2.5, .num_heads = 2, .depth = 2,
                                    .depth_single_blocks = 3, .axes_dim = {8, 12, 12}, .n_axes = 3, .theta = 10000,
                                    .qkv_bias = false, .guidance_embed = false};

/* The planned count of one step against the formula. */
static void check(const char *what, const fl_flux_params *p, int batch, int64_t li, int64_t lt, int rank,
                  int adapters, bool training) {
    fl_flux_job_shape s = {.device = FL_DEVICE_CUDA, .batch = batch, .image_tokens = li, .text_tokens = lt,
                           .training = training, .targets = "all"};
    if (training) s.lora_rank = rank;
    else if (rank > 0) {
        s.n_adapters = adapters;
        s.adapter_rank = rank;
        s.adapter_params = 1;
    }
    fl_flux_memory mem;
    fl_error err = {0};
    if (fl_flux_estimate_memory(p, &s, &mem, &err) != 0) {
        FL_EXPECTF(0, "%s: %s", what, err.message);
        return;
    }
    flux_flops f = flux_step_flops(p, batch, li, lt, rank, adapters, training);
    printf("  %-44s %.6g TFLOP (linear %.4g, lora %.4g, attention %.4g); planned %.6g\n", what, f.total / 1e12,
           f.linear / 1e12, f.lora / 1e12, f.attention / 1e12, (double)mem.flops / 1e12);
    FL_EXPECTF(f.total == (double)mem.flops, "%s: formula %.17g, planned %llu", what, f.total,
               (unsigned long long)mem.flops);
}

static void test_tiny(void) {
    check("tiny forward", &tiny, 2, 12, 5, 0, 0, false);
    check("tiny forward, 1 adapter r4", &tiny, 2, 12, 5, 4, 1, false);
    check("tiny forward, 3 adapters r4", &tiny, 3, 12, 5, 4, 3, false);
    check("tiny LoRA step r4", &tiny, 2, 12, 5, 4, 1, true);
}

static void test_flux_dev(void) {
    check("FLUX.1-dev forward 1024x1024", &dev, 1, 4096, 512, 0, 0, false);
    check("FLUX.1-dev forward 1024x1024, 1 adapter r16", &dev, 1, 4096, 512, 16, 1, false);
    check("FLUX.1-dev forward 512x512 x8, 1 adapter r16", &dev, 8, 1024, 512, 16, 1, false);
    check("FLUX.1-dev LoRA step 512x512 r16", &dev, 1, 1024, 512, 16, 1, true);
    check("FLUX.1-dev LoRA step 1024x1024 r16", &dev, 1, 4096, 512, 16, 1, true);
}

/* By hand: every Linear weight of the blocks multiplies each token once (2 FLOPs per weight per
 * token), the embedders and final layer their own rows, plus 4 L^2 H per block for attention. */
static void test_hand_count(void) {
    const double h = 3072, m = 12288, li = 4096, lt = 512, l = li + lt;
    const double dbl = 19 * (2 * (h * 3 * h + h * h + 2 * h * m) * l + 2 * 2 * h * 6 * h);
    const double sgl = 38 * (2 * (h * (3 * h + m) + (h + m) * h) * l + 2 * h * 3 * h);
    const double emb = 2 * (2 * (256 * h + h * h) + 768 * h + h * h) + 2 * (64 * h * li + 4096 * h * lt);
    const double fin = 2 * (h * 2 * h + h * 64 * li);
    const double att = 57 * 4 * l * l * h;
    flux_flops f = flux_step_flops(&dev, 1, 4096, 512, 0, 0, false);
    FL_EXPECTF(fabs(f.total - (dbl + sgl + emb + fin + att)) < 1.0, "hand %.17g vs %.17g", dbl + sgl + emb + fin + att,
               f.total);
    FL_EXPECTF(fabs(f.attention - att) < 1.0, "attention %.17g vs %.17g", f.attention, att);
    /* about 74 TFLOP, a fifth of it attention */
    FL_EXPECTF(f.total > 73e12 && f.total < 76e12, "%.4g", f.total);
    FL_EXPECTF(f.attention / f.total > 0.18 && f.attention / f.total < 0.22, "%.3f", f.attention / f.total);
}

int main(void) {
    FL_RUN(test_tiny);
    FL_RUN(test_flux_dev);
    FL_RUN(test_hand_count);
    return fl_test_finish();
}
