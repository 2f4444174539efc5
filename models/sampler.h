/*
 * sampler.h — generation with the Flux model: Euler integration of the rectified-flow ODE from
 * noise (t = 1) to an image (t = 0) on Flux's shifted schedule, in the pixel image space.
 *
 * The schedule is t_i = shift(1 - i / steps) with the sequence-length-dependent shift of
 * trainer.h; each step does x += (t_{i+1} - t_i) * v(x, t_i). Guidance-distilled models get the
 * guidance value as an embedding (one forward per step). Models without a guidance embedding that
 * were trained with caption dropout (fl_flux_cfg_capable, e.g. the embedded model) take a guidance
 * g != 1 as the classifier-free guidance scale: v = v(empty caption) + g (v(prompt) - v(empty
 * caption)), two forwards per step; other models ignore the value. Noise comes from the seed
 * alone, so the same request gives the same image.
 *
 * The batch sampler runs several requests — each with its own prompt, seed, guidance and
 * adapters — through one forward per step; per-sample adapters (flux.h) make each request's
 * image bitwise the image it gets when sampled alone. A callback before every step lets the
 * caller stop a run between steps (a canceled job, a stopping worker).
 */
#ifndef FL_MODELS_SAMPLER_H
#define FL_MODELS_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "models/flux.h"

typedef struct fl_sample_params {
    const char *prompt;
    int width, height; /* multiples of the patch size */
    int steps;
    float guidance;
    uint64_t seed;
    int max_text_tokens;
} fl_sample_params;

/* Flux's timestep shift: shift(t) = e^mu / (e^mu + 1/t - 1), with mu interpolated linearly from
 * 0.5 at 256 image tokens to 1.15 at 4096 (training samples t through it, sampling walks it). */
double fl_flux_time_shift_mu(int64_t image_tokens);
double fl_flux_time_shift(double mu, double t);

/* Writes the generated image [height, width, 3] (values clamped to [-1, 1]) into image. Applies
 * whatever adapters the model has: every attached one on every row, or a per-sample selection
 * set for batch 1. */
int fl_flux_sample_pixels(fl_flux_model *m, const fl_sample_params *sp, float *image, fl_error *err);

/* One request of a batch: its prompt, noise seed, guidance (for guidance-distilled models) and
 * its adapters (set ids of fl_flux_add_adapter with multipliers; n == 0 for the base model). */
typedef struct fl_sample_request {
    const char *prompt;
    uint64_t seed;
    float guidance;
    fl_flux_sample_adapters adapters;
} fl_sample_request;

/* Samples n requests of one size in one batch: images[r] ([height, width, 3], clamped to
 * [-1, 1]) gets request r's image, bitwise the image the same request gives alone (n == 1) and,
 * when its adapters list every attached set in attach order with multiplier 1, the image of
 * fl_flux_sample_pixels. Each request's noise is drawn from its own seed as
 * fl_flux_sample_pixels draws it. The requests' adapters apply through the per-sample mode; the
 * model's previous per-sample selection is restored afterwards. Errors: FL_EINVAL for bad
 * sizes, n < 1, a request's adapters naming a set not attached; FL_EUNSUPPORTED outside the
 * pixel image space. */
int fl_flux_sample_pixels_batch(fl_flux_model *m, int width, int height, int steps, int max_text_tokens,
                                const fl_sample_request *reqs, int n, float **images, fl_error *err);

/* A batch sampler's per-step callback: called before each step with the steps done so far
 * (0 .. steps - 1); returning true stops the run there (FL_EUNAVAILABLE, "stopped at step k of
 * n"), before that step's forward, with no image written and every buffer of the run freed. */
typedef struct fl_sample_hooks {
    bool (*before_step)(void *arg, int done, int steps);
    void *arg;
} fl_sample_hooks;

/* fl_flux_sample_pixels_batch with a per-step callback (hooks may be NULL). */
int fl_flux_sample_pixels_batch_hooked(fl_flux_model *m, int width, int height, int steps, int max_text_tokens,
                                       const fl_sample_request *reqs, int n, const fl_sample_hooks *hooks,
                                       float **images, fl_error *err);

/* The Euler loop itself, on packed tokens in any image space (pixels packed p x p, or the
 * autoencoder's latents packed 2 x 2): n samples of image_tokens tokens each, with their text
 * rows, pooled vectors and guidance values given as host f32 arrays. x holds the initial noise
 * [n, image_tokens, in_channels] and receives the final tokens (not clamped). With shift the
 * schedule is Flux's shifted one (mu from image_tokens, as FLUX.1-dev samples); without it the
 * plain t_i = 1 - i / steps (FLUX.1-schnell). Applies the model's adapters as they are set
 * (every attached one on every row, or a per-sample selection for batch n). */
typedef struct fl_token_batch {
    int n;
    int64_t image_tokens;  /* per sample */
    const float *img_ids;  /* [image_tokens, 3], the same for every sample */
    int64_t text_tokens;
    const float *txt;      /* [n, text_tokens, context_in_dim] */
    const float *y;        /* [n, vec_in_dim] */
    const float *guidance; /* [n], or NULL (1.0) */
    float *x;              /* [n, image_tokens, in_channels], in and out */
    /* The empty caption's rows for classifier-free guidance ([text_tokens, context_in_dim] and
     * [vec_in_dim], shared by every sample), or NULL: zeros, the hashed-word encoder's empty
     * caption. Used only by models that are fl_flux_cfg_capable, for samples with guidance != 1. */
    const float *txt_uncond, *y_uncond;
} fl_token_batch;

int fl_flux_sample_tokens(fl_flux_model *m, const fl_token_batch *b, int steps, bool shift,
                          const fl_sample_hooks *hooks, fl_error *err);

/* Encodes an image [height, width, 3] in [-1, 1] as 8-bit PNG: into a malloc'ed buffer, or into a
 * file written atomically. Needs stb (FL_HAVE_STB); otherwise FL_EUNSUPPORTED. */
int fl_png_encode(const float *image, int width, int height, unsigned char **png, size_t *size, fl_error *err);
int fl_png_write(const char *path, const float *image, int width, int height, fl_error *err);

#endif
