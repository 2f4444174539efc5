/*
 * pretrain.h — full-parameter training of a Flux-architecture model in the pixel image space:
 * how the embedded default model is made.
 *
 * Data: a folder written by `flashlora data pretrain` (datasets/clipart.h): manifest.jsonl lines
 * {file, caption, split} naming square PNGs of one size. Training examples are the "train" split;
 * the "heldout" split measures the loss on captions and pictures never trained on.
 *
 * Each step draws a batch uniformly from the train split with one seeded RNG (example, horizontal
 * flip unless the caption says left or right, caption dropout for classifier-free guidance,
 * timestep t = shift(sigmoid(N(0, 1))) with Flux's resolution-dependent shift, noise), runs the
 * flow-matching loss and the full backward (fl_flux_enable_full_grads), clips the global gradient
 * norm, and applies AdamW per parameter tensor (no weight decay on biases and norm scales). An
 * exponential moving average of the weights is kept; the EMA weights are what gets shipped.
 *
 * Checkpoints hold the f32 weights, both AdamW moments, the EMA, the step, the RNG state, the
 * accumulated training time and the configuration; resuming from one reaches exactly the
 * parameters of an uninterrupted run (for a given thread count on the CPU). A shipped model can
 * also seed a new run (fl_pretrainer_init_from): its step count continues and its weights start
 * both the live and the EMA copies, with fresh optimizer moments.
 *
 * Full training keeps f32 master weights and updates them in place, so it runs on contexts whose
 * storage dtype is F32 (the CPU backend); a BF16 context is refused with that reason.
 */
#ifndef FL_TRAINER_PRETRAIN_H
#define FL_TRAINER_PRETRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "models/flux.h"

/* ---- data ------------------------------------------------------------------------------------ */

typedef struct fl_pretrain_example {
    char *caption;
    char *file;
    unsigned char *rgb; /* [size, size, 3] */
} fl_pretrain_example;

typedef struct fl_pretrain_data {
    int size;                        /* every image is size x size */
    fl_pretrain_example *train, *heldout;
    size_t n_train, n_heldout;
    char fingerprint[17];            /* FNV-1a of the manifest, hex: a resume needs the same data */
} fl_pretrain_data;

/* Loads dir/manifest.jsonl and every image it names (at most max_images in all when > 0). Errors
 * name the manifest line or the file. */
int fl_pretrain_data_load(const char *dir, size_t max_images, fl_pretrain_data **out, fl_error *err);
void fl_pretrain_data_free(fl_pretrain_data *d);

/* ---- training -------------------------------------------------------------------------------- */

typedef struct fl_pretrain_config {
    int steps;             /* the run stops when the step count reaches this */
    int batch_size;
    float lr;
    int warmup_steps;      /* linear warmup from 0, counted from the run's first step */
    float beta1, beta2, eps, weight_decay;
    float max_grad_norm;   /* 0 disables clipping */
    float ema_decay;       /* effective decay min(ema_decay, (1 + n) / (10 + n)) after n updates */
    float caption_dropout;
    bool flip;
    int max_text_tokens;
    uint64_t seed;
} fl_pretrain_config;

/* Defaults: batch 16, lr 3e-4 with 500 warmup steps, AdamW (0.9, 0.99, 1e-8, weight decay 0),
 * clipping at 1.0, EMA 0.999, caption dropout 0.1, flips on, 32 text tokens, seed 0. */
fl_pretrain_config fl_pretrain_config_default(void);
int fl_pretrain_config_validate(const fl_pretrain_config *c, fl_error *err);

/* The embedded default model's architecture (FluxParams): pixel patches of 4 (48 channels),
 * hidden 256 in 4 heads, 2 double + 4 single blocks, MLP ratio 4, 128-dimensional hashed-word
 * text rows and pooled vector, no guidance embedding. */
fl_flux_params fl_embedded_flux_params(void);
/* Zero the modulation Linears and the final projection (adaLN-Zero): every block starts as the
 * identity and the model predicts zero velocity. For freshly created models. */
void fl_pretrain_init_adaln_zero(fl_flux_model *m);

typedef struct fl_pretrainer fl_pretrainer;

/* The model must be in the pixel space with images of data->size (a multiple of the patch) and
 * have no adapters. Enables full gradients on it. */
fl_pretrainer *fl_pretrainer_create(fl_flux_model *m, const fl_pretrain_config *config, const fl_pretrain_data *data,
                                    fl_error *err);
void fl_pretrainer_free(fl_pretrainer *t);

/* Seeds a fresh trainer from a shipped model's metadata: continues its step count, sample count
 * and training time ("pretrain_steps", "pretrain_samples", "train_seconds"). The model must have
 * been loaded from that file before fl_pretrainer_create, so weights and EMA start from it. */
int fl_pretrainer_continue_from(fl_pretrainer *t, const fl_safetensors *shipped, fl_error *err);

typedef struct fl_pretrain_progress {
    int step;
    double loss, grad_norm, lr;
    int64_t samples;
    double step_seconds;
} fl_pretrain_progress;

int fl_pretrainer_step(fl_pretrainer *t, fl_pretrain_progress *progress, fl_error *err);
int fl_pretrainer_steps_done(const fl_pretrainer *t);
/* Adds wall time to the accumulated training time (the caller measures its loop). */
void fl_pretrainer_add_seconds(fl_pretrainer *t, double seconds);
double fl_pretrainer_seconds(const fl_pretrainer *t);
int64_t fl_pretrainer_samples(const fl_pretrainer *t);

/* Mean loss of the EMA weights over the held-out split (at most max_examples of it), each at the
 * given timesteps with noise from a fixed seed: comparable across steps and runs. */
double fl_pretrainer_heldout_loss(fl_pretrainer *t, const float *timesteps, int n_timesteps, size_t max_examples);

/* Swap the live weights with the EMA weights (call twice to undo): sample from the EMA model. */
void fl_pretrainer_swap_ema(fl_pretrainer *t);

int fl_pretrainer_save_checkpoint(fl_pretrainer *t, const char *path, fl_error *err);
int fl_pretrainer_load_checkpoint(fl_pretrainer *t, const char *path, fl_error *err);

/* The EMA weights in the checkpoint layout as BF16 (or F32), with metadata: flux_params, the
 * pixel image space and patch, resolution, text encoder, step and sample counts, training time,
 * the configuration, caption_dropout (which makes the sampler offer classifier-free guidance),
 * plus extra entries. Written atomically. */
int fl_pretrainer_save_model(fl_pretrainer *t, const char *path, bool bf16, const fl_safetensors_kv *extra,
                             size_t n_extra, fl_error *err);

#endif
