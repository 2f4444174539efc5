/*
 * flux_flops.h — the matrix FLOPs of one Flux step, counted from the model's shapes, for the
 * benchmarks' achieved TFLOP/s and MFU.
 *
 * The count follows the ops the model runs (models/flux_step.c) and the FLOP convention of
 * kernels/context.h: 2 per multiply-add of every product (Linears, LoRA products, attention), the
 * attention backward counted as 2.5x its forward (five products of the same size), elementwise
 * work and norms not counted. tests/models/test_flux_flops.c checks it against the count the ops
 * themselves make in a planning run of the step (fl_flux_memory.flops).
 */
#ifndef FL_BENCHMARKS_FLUX_FLOPS_H
#define FL_BENCHMARKS_FLUX_FLOPS_H

#include <stdbool.h>
#include <stdint.h>

#include "models/flux.h"

typedef struct flux_flops {
    double linear;    /* base Linears: forward products, and in training the input gradients */
    double lora;      /* adapter products (forward; in training also dh, dx += dh A and the A/B gradients) */
    double attention; /* joint attention of every block (forward; in training also the backward) */
    double total;
} flux_flops;

/* One step on a batch of `batch` samples of `image_tokens` + `text_tokens` tokens. Adapters: with
 * lora_rank > 0, `adapters` adapters of that rank on every Linear inside the blocks (the "all"
 * target set) apply to every row — a forward over per-sample adapters, one per sample, counts as
 * adapters = 1. training: a LoRA training step (forward, loss, backward to the one trainable
 * adapter's A and B; the base model frozen), adapters is then 1. */
flux_flops flux_step_flops(const fl_flux_params *p, int64_t batch, int64_t image_tokens, int64_t text_tokens,
                           int lora_rank, int adapters, bool training);

#endif
