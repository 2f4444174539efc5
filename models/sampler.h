/*
 * sampler.h — generation with the Flux model: Euler integration of the rectified-flow ODE from
 * noise (t = 1) to an image (t = 0) on Flux's shifted schedule, in the pixel image space.
 *
 * The schedule is t_i = shift(1 - i / steps) with the sequence-length-dependent shift of
 * trainer.h; each step does x += (t_{i+1} - t_i) * v(x, t_i). Guidance-distilled models get the
 * guidance value as an embedding (one forward per step). Noise comes from the seed alone, so the
 * same request gives the same image.
 */
#ifndef FL_MODELS_SAMPLER_H
#define FL_MODELS_SAMPLER_H

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

/* Writes the generated image [height, width, 3] (values clamped to [-1, 1]) into image. */
int fl_flux_sample_pixels(fl_flux_model *m, const fl_sample_params *sp, float *image, fl_error *err);

/* Encodes an image [height, width, 3] in [-1, 1] as 8-bit PNG: into a malloc'ed buffer, or into a
 * file written atomically. Needs stb (FL_HAVE_STB); otherwise FL_EUNSUPPORTED. */
int fl_png_encode(const float *image, int width, int height, unsigned char **png, size_t *size, fl_error *err);
int fl_png_write(const char *path, const float *image, int width, int height, fl_error *err);

#endif
