/*
 * run.h — one training job from an image source to an adapter file: the whole of
 * `flashlora train`, as a library function the CLI and the service's workers share.
 *
 * Loads and validates the image set (datasets/), resolves captions, crops and resizes to the
 * resolution (or aspect buckets), trains on a model the caller already has resident (its adapters
 * must be detached; they are detached again on return), checkpoints every N steps and when asked
 * to stop, resumes from the checkpoint when asked, writes the canonical adapter atomically, and
 * reports every event as a JSON object: start, rejected, progress, checkpoint, preview, done.
 * The adapter is byte-identical whether or not the run was interrupted and resumed.
 */
#ifndef FL_TRAINER_RUN_H
#define FL_TRAINER_RUN_H
#include <stdbool.h>

#include <jansson.h>

#include "core/error.h"
#include "models/flux.h"
#include "trainer/trainer.h"

typedef struct fl_train_job {
    const char *images;          /* folder, archive file, or http(s) URL */
    bool url_allow_private;      /* fetch URLs on loopback and private networks too (default false) */
    const char *trigger;         /* one word (may be NULL or empty for a style adapter) */
    const char *caption;         /* for images without a sidecar; NULL: "a photo of [trigger]" */
    bool is_style;
    bool buckets;
    int resolution;              /* a multiple of the patch size */
    int min_images, max_images;
    const char *out;             /* the adapter file */
    const char *checkpoint;      /* NULL: "<out>.ckpt" */
    int checkpoint_every;        /* 0: only when stopped */
    bool resume;                 /* continue from the checkpoint when it exists */
    const char *base_model_hash; /* sha256 of the model file, recorded in the adapter (NULL: not recorded) */
    const char *device;          /* named in the start event; NULL: the model's device ("cpu", "cuda:0") */
    const char *preview_dir;     /* NULL: no previews */
    const char *preview_prompt;  /* NULL: the first image's caption */
    /* Previews: preview_count images (seeds 1..count, preview_steps sampling steps, resolution
     * square) as preview_dir/stepNNNNNN_K.png every preview_every steps (0: only at the end). */
    int preview_every, preview_count, preview_steps; /* preview_steps default FL_TRAIN_PREVIEW_STEPS */
    int64_t max_decoded_pixels;  /* decoding budget of the image set, in pixels (0: the loader's default) */
    /* FLUX.1 pipelines: encoded latents and captions are cached in cache_dir (NULL: "<out>.cache"),
     * one safetensors file per image (and flip) and per caption, named by the sha256 of what decides
     * its contents (the encoder's fingerprint, the size, the pixels or the caption), so a rerun or a
     * resume encodes nothing. With release_encoders the text encoders and the autoencoder's encoder
     * are freed once the set is encoded (a CLI run; a serving worker keeps them). */
    const char *cache_dir;
    bool release_encoders;
    fl_train_config cfg;
} fl_train_job;

/* Sampling steps of a preview image by default (the service's admission counts them). */
enum { FL_TRAIN_PREVIEW_STEPS = 20 };

/* The preview rounds fl_train_run samples for a job of `steps` steps with preview_every `every`
 * (> 0): one at each multiple of every before the last step, and one at the end. 0 when every
 * is 0 (the service's setting for no previews). */
static inline int fl_train_preview_rounds(int steps, int every) {
    return every > 0 ? (steps - 1) / every + 1 : 0;
}

/* Defaults as `flashlora train` documents them (resolution 64, 4..100 images, ...). */
fl_train_job fl_train_job_default(void);

typedef struct fl_train_hooks {
    /* Each event (borrowed: the callee must not keep it). */
    void (*event)(void *arg, json_t *event);
    /* Polled between steps: true stops the run after writing a checkpoint (FL_EUNAVAILABLE). */
    bool (*should_stop)(void *arg);
    void *arg;
    /* Polled between steps, before should_stop (may be NULL): true ends the run at once without
     * writing a checkpoint (FL_EUNAVAILABLE): the job was canceled, or another worker runs it
     * now and owns its checkpoint. */
    bool (*should_abort)(void *arg);
} fl_train_hooks;

typedef struct fl_train_result {
    int steps;
    double final_loss;
    int images;
    char sha256[65];     /* of the adapter file */
    double training_s;   /* the loop's wall time in this run */
    double total_s;
    int resumed_at;      /* step the run started from */
} fl_train_result;

/* Runs the job on m. hooks and result may be NULL. A stop request returns -1 with FL_EUNAVAILABLE
 * after writing the checkpoint (an abort, without writing it); the checkpoint is removed once
 * the adapter is written. A model that
 * already has adapters attached is refused (FL_EINVAL). On every return, success or failure, m has
 * no adapters attached. result is filled as far as the run got (sha256 only on success).
 *
 * Events (each has "event" naming it; the same objects `flashlora train --json` prints):
 *   rejected    name, reason                    a file of the set that cannot be used
 *   cache       dir, latents_reused, latents_encoded, texts_reused, texts_encoded (FLUX.1 pipelines)
 *   start       images, steps, resumed_at, device, resolution
 *   progress    step, total, loss, lr, grad_norm, it_per_s, eta_s    after every step
 *   checkpoint  step, path
 *   preview     step, path, seed
 *   done        adapter, sha256, steps, final_loss, training_time_s, total_time_s */
int fl_train_run(fl_flux_model *m, const fl_train_job *job, const fl_train_hooks *hooks, fl_train_result *result,
                 fl_error *err);

/* The same on a pipeline (models/pipeline.h): the pixel kind as above; a FLUX.1 pipeline trains on
 * the autoencoder's latents (the scaled mean) and T5 + CLIP encodings of the captions (after
 * [trigger]), the empty caption's for dropout, all taken from the cache or encoded once before the
 * loop ("cache" event: dir, latents_reused, latents_encoded, texts_reused, texts_encoded). The
 * trainer's text length is the pipeline's T5 length (512 dev, 256 schnell). */
struct fl_pipeline;
int fl_train_run_pipeline(struct fl_pipeline *p, const fl_train_job *job, const fl_train_hooks *hooks,
                          fl_train_result *result, fl_error *err);

#endif
