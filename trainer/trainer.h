/*
 * trainer.h — the LoRA training loop: cached inputs, flow matching, AdamW, schedules, clipping,
 * EMA, checkpoints and resume.
 *
 * The caller hands over prepared examples (images already cropped to the training resolution,
 * captions already resolved); the trainer encodes them once (pixel patches, hashed-word text
 * embeddings, and the flipped and caption-dropped variants) and keeps them on the model's device.
 * Each step draws a batch, timesteps t = shift(sigmoid(N(0, 1))) with Flux's resolution-dependent
 * shift, and noise, all from one seeded RNG whose state is part of every checkpoint: a resumed run
 * reaches exactly the parameters of an uninterrupted one (for a given thread count on the CPU).
 * Memory for the step is allocated once at creation; the loop allocates nothing.
 */
#ifndef FL_TRAINER_TRAINER_H
#define FL_TRAINER_TRAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "models/flux.h"
#include "models/sampler.h"

typedef enum fl_lr_schedule { FL_LR_CONSTANT = 0, FL_LR_COSINE } fl_lr_schedule;

typedef struct fl_train_config {
    int steps;              /* total optimizer steps */
    int batch_size;
    int rank;
    float alpha;            /* LoRA alpha; the update is scaled by alpha / rank */
    const char *targets;    /* target set or regular expression (models/flux.h) */
    float lr;
    int warmup_steps;       /* linear warmup from 0 */
    fl_lr_schedule schedule; /* after warmup: constant, or cosine decay to 0 at the last step */
    float beta1, beta2, eps, weight_decay;
    float max_grad_norm;    /* global L2 clipping; 0 disables */
    float ema_decay;        /* 0 disables the EMA of the LoRA weights */
    bool timestep_shift;    /* Flux's sequence-length-dependent shift of the sampled timesteps */
    float guidance;         /* guidance embedding value for guidance-distilled bases */
    bool flip;              /* random horizontal flips */
    float caption_dropout;  /* probability of training on the empty caption */
    int max_text_tokens;
    uint64_t seed;
} fl_train_config;

/* Defaults for a subject LoRA: rank 16, alpha 16, targets "all", lr 4e-4, constant after 10 warmup
 * steps, AdamW (0.9, 0.999, 1e-8, weight decay 0), clipping at 1.0, no EMA, shift on, guidance 1,
 * flips on, caption dropout 0.05, 32 text tokens, batch 1, 300 steps, seed 0. */
fl_train_config fl_train_config_default(void);
int fl_train_config_validate(const fl_train_config *c, fl_error *err);

/* One prepared training image: RGB [height, width, 3] in [-1, 1] and its resolved caption. */
typedef struct fl_train_example {
    const float *pixels;
    int width, height;
    const char *caption;
} fl_train_example;

typedef struct fl_trainer fl_trainer;

/* The model must use the pixel image space (in_channels = 3 p^2 for an integer p) and have no
 * adapters attached; a trainable adapter is added on config->targets. All examples must share
 * one size, a multiple of p. */
fl_trainer *fl_trainer_create(fl_flux_model *m, const fl_train_config *config, const fl_train_example *examples,
                              size_t n_examples, fl_error *err);
/* One encoded training example: its tokens [(height/patch) * (width/patch), in_channels] and those
 * of its horizontal flip (NULL: the same tokens), for an image of width x height pixels whose
 * tokens each cover patch x patch pixels (p for pixels, 16 for packed latents), and its caption's
 * text rows [max_text_tokens, context_in_dim] and pooled vector [vec_in_dim]. */
typedef struct fl_train_encoded {
    const float *tokens, *tokens_flip;
    int width, height;
    const float *txt, *y;
} fl_train_encoded;

/* The trainer over examples already encoded (any image space; the caller encodes, e.g. with the
 * autoencoder and T5 + CLIP), with the empty caption's encoding for caption dropout. Everything is
 * copied. fl_trainer_create is this over pixel patches and hashed-word text. */
fl_trainer *fl_trainer_create_encoded(fl_flux_model *m, const fl_train_config *config, int patch,
                                      const fl_train_encoded *examples, size_t n_examples, const float *txt_empty,
                                      const float *y_empty, fl_error *err);
void fl_trainer_free(fl_trainer *t);

typedef struct fl_train_progress {
    int step;        /* steps completed */
    int total;
    double loss;     /* loss of the step just taken */
    double grad_norm;
    double lr;
} fl_train_progress;

/* One optimizer step. */
int fl_trainer_step(fl_trainer *t, fl_train_progress *progress, fl_error *err);
int fl_trainer_steps_done(const fl_trainer *t);
/* Loss of the last step taken (restored by a resume). */
double fl_trainer_last_loss(const fl_trainer *t);

/* Mean flow-matching loss of the current adapter (EMA weights when enabled) over every example,
 * each at the given fixed timesteps with noise from a fixed seed (independent of training's
 * RNG): the held-out measure of how well the adapter models the subject. */
double fl_trainer_eval_loss(fl_trainer *t, const float *timesteps, int n_timesteps, uint64_t noise_seed);

/* Checkpoint: adapter parameters, AdamW moments, EMA, step, RNG state and the configuration
 * (a resume with a different configuration is refused). Written atomically. */
int fl_trainer_save_checkpoint(fl_trainer *t, const char *path, fl_error *err);
int fl_trainer_load_checkpoint(fl_trainer *t, const char *path, fl_error *err);

/* The adapter in the canonical layout (EMA weights when enabled) with metadata: format,
 * base_model, rank, alpha, targets, steps, final_loss, the training configuration, plus extra. */
int fl_trainer_save_adapter(fl_trainer *t, const char *path, const fl_safetensors_kv *extra, size_t n_extra,
                            fl_error *err);

#endif
