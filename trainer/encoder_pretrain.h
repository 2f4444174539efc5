/*
 * encoder_pretrain.h — self-supervised training of the built-in image encoder
 * (models/builtin_vit.h) on the packaged clip art: Debian `openclipart-png` (public domain) and
 * the Noto emoji of `ruby-tanuki-emoji` (Apache-2.0) whose code points are not held out
 * (datasets/emoji_styles.h), so the cross-style retrieval measured on the held-out half is about
 * emoji the encoder never saw in any style. The clip art that identity evaluation measures with
 * (the demo subjects' sources and the distractor subjects', datasets/subjects.h) is held out too.
 *
 * Objective: SimCLR's contrastive loss (NT-Xent). Each step draws `batch` images, makes two random
 * views of each, and trains the encoder and its projection head so that the two views of one
 * image are each other's nearest neighbours among all 2 x batch views. Chosen over DINO-style
 * self-distillation because it needs no teacher network, no centring or sharpening schedule and
 * no multi-crop, cannot collapse (the other views are explicit negatives), and works with the
 * batches two CPU cores can afford; its invariances are set by the augmentations, which are
 * chosen for what evaluation asks of the encoder (the same mark drawn differently, placed and
 * scaled differently, over another background):
 *   - the drawing is separated from its white surround (the white region connected to the border)
 *     and composited over white (half of the views) or a random solid colour;
 *   - a random crop of 35-100% of the canvas area, aspect 3:4-4:3, rotated up to 15 degrees,
 *     resampled bilinearly to the encoder's input; no mirroring (emoji arrows and hands have a
 *     side);
 *   - brightness and contrast x0.7-1.3, saturation x0.6-1.4, grey in 20% of views, a 3x3 blur in
 *     30%.
 * Optimizer: AdamW (betas 0.9 / 0.999, weight decay on matrices only), linear warmup then cosine
 * decay, global gradient-norm clipping at 1.
 *
 * Runs are resumable: every checkpoint_every steps the parameters, optimizer moments, step and
 * RNG state go atomically to out_dir/checkpoint.safetensors; running the same command again
 * continues from it to the same result as an uninterrupted run. out_dir/loss.csv holds one line
 * per logged step (step, loss, in-batch top-1, learning rate, seconds).
 */
#ifndef FL_TRAINER_ENCODER_PRETRAIN_H
#define FL_TRAINER_ENCODER_PRETRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "models/builtin_vit.h"

#define FL_OPENCLIPART_PNG_DIR "/usr/share/openclipart/png"

typedef struct fl_encoder_pretrain_config {
    const char *out_dir;
    const char *openclipart_dir; /* NULL: FL_OPENCLIPART_PNG_DIR; "" skips clip art */
    const char *emoji_dir;       /* tanuki_emoji images; NULL: the installed gem; "" skips emoji */
    int max_images;              /* 0: every source; else at most this many (evenly spaced) */
    fl_bvit_config model;
    int steps;
    int batch;                   /* images per step (2 views each) */
    float lr, min_lr, weight_decay, temperature;
    int warmup_steps;
    float clip_norm;             /* <= 0: no clipping */
    uint64_t seed;
    int log_every, checkpoint_every;
    int canvas;                  /* side of the rendered sources the views are cropped from */
    /* Called after every logged step and after each checkpoint (may be NULL); returning false
     * stops the run after a checkpoint. model is the encoder being trained. */
    bool (*on_log)(void *arg, int step, int steps, double loss, double top1, double lr, double seconds);
    bool (*on_checkpoint)(void *arg, int step, fl_bvit *model);
    void *arg;
} fl_encoder_pretrain_config;

fl_encoder_pretrain_config fl_encoder_pretrain_config_default(void);

typedef struct fl_encoder_pretrain_stats {
    size_t images, clipart, emoji, skipped;
    size_t excluded; /* clip art held out (fl_eval_held_out) */
    int start_step, end_step;
    double seconds; /* of this invocation */
    double last_loss;
} fl_encoder_pretrain_stats;

/* Renders the sources, resumes from out_dir's checkpoint when present (its configuration must
 * match), trains to `steps`, and writes out_dir/encoder.safetensors (f32, with the head) and
 * out_dir/flashlora-vit.safetensors (bf16, the encoder alone, the shipped form). */
int fl_encoder_pretrain(const fl_encoder_pretrain_config *cfg, fl_encoder_pretrain_stats *stats, fl_error *err);

/* ---- pieces, exposed for tests ------------------------------------------------------------------ */

/* A rendered source: an 8-bit RGB canvas (side x side) and its coverage (0 = background). */
typedef struct fl_clip_source {
    int side;
    unsigned char *rgb;   /* side * side * 3 */
    unsigned char *alpha; /* side * side */
} fl_clip_source;

/* Decodes an image file (white-composited), finds its background (near-white pixels connected to
 * the border), trims to what it draws, scales its longer side to side - 2 * margin and centres it.
 * A blank image is FL_EINVAL "blank image". */
int fl_clip_source_render(const char *path, int side, int margin, fl_clip_source *out, fl_error *err);
/* The same from an image already decoded: rgb [h, w, 3] in [0, 1]. */
int fl_clip_source_render_image(const float *rgb, int w, int h, int side, int margin, fl_clip_source *out,
                                fl_error *err);
void fl_clip_source_release(fl_clip_source *s);

/* Draws one random view of src (the augmentations above) into out [size, size, 3] in [0, 1]. */
struct fl_rng;
void fl_encoder_augment(const fl_clip_source *src, int size, struct fl_rng *rng, float *out);

#endif
