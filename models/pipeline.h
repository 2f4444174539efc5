/*
 * pipeline.h — the model a user runs: the Flux transformer together with what turns prompts and
 * images into its inputs and its outputs back into images, loaded from the files users have.
 *
 * Two kinds, one interface:
 *   pixels  a Flux-architecture model in the pixel image space (3 p^2 channels: the embedded
 *           default and the test models), with the weight-free hashed-word text encoder
 *           (models/text_hash.h) and p x p pixel patches (models/codec_pixels.h);
 *   flux1   FLUX.1-dev or FLUX.1-schnell: T5-XXL + CLIP-L conditioning (models/text/), the
 *           16-channel autoencoder's latents packed 2 x 2 (models/ae.h).
 * The variant is read from the transformer's tensors (guidance_in present: dev) and decides the
 * defaults: dev samples 28 steps with guidance 3.5 on the schedule shifted by image token count and
 * runs T5 over 512 tokens; schnell 4 steps, no shift, no guidance, 256 T5 tokens. Latent images
 * have sides that are multiples of 16.
 *
 * Files. --model names a folder laid out like the FLUX.1 repositories, or one transformer file.
 * In a folder: the transformer is flux1-dev.safetensors or flux1-schnell.safetensors at the root,
 * else transformer/ (diffusers layout, shards allowed); the autoencoder ae.safetensors, else vae/;
 * CLIP-L text_encoder/, else clip_l.safetensors; T5 text_encoder_2/, else a t5xxl*.safetensors at
 * the root; the tokenizers tokenizer/ and tokenizer_2/ when present, else the built-in
 * vocabularies. Each part can be named on its own (transformer, ae, clip, t5), which also makes a
 * single transformer file usable. A missing part is an error naming the file or folder looked for.
 *
 * Prompt embeddings are cached (least recently used first out, by bytes) under the prompt and the
 * text length (a pipeline has one set of encoders), so a serving worker encodes a repeated prompt
 * once.
 */
#ifndef FL_MODELS_PIPELINE_H
#define FL_MODELS_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/context.h"
#include "models/flux.h"
#include "models/sampler.h"

#define FL_PIPELINE_PATH_MAX 4096

typedef enum fl_pipeline_kind { FL_PIPELINE_PIXELS = 0, FL_PIPELINE_FLUX1 } fl_pipeline_kind;

/* What the user named; NULL fields are found from model (see above). */
typedef struct fl_pipeline_files {
    const char *model; /* a folder in the FLUX.1 layout, or one transformer file */
    const char *transformer, *ae, *clip, *t5;
    const char *clip_tokenizer, *t5_tokenizer; /* folders or files; NULL: the model's, else built-in */
} fl_pipeline_files;

/* The files found ("" where a part is absent). */
typedef struct fl_pipeline_paths {
    char transformer[FL_PIPELINE_PATH_MAX];
    char ae[FL_PIPELINE_PATH_MAX];
    char clip[FL_PIPELINE_PATH_MAX];
    char t5[FL_PIPELINE_PATH_MAX];
    char clip_tokenizer[FL_PIPELINE_PATH_MAX];
    char t5_tokenizer[FL_PIPELINE_PATH_MAX];
} fl_pipeline_paths;

typedef struct fl_pipeline_info {
    fl_pipeline_kind kind;
    const char *variant;    /* "pixels", "dev" or "schnell" */
    fl_flux_params flux;
    int patch;              /* image pixels per token side: p, or 16 for latents */
    int text_tokens;        /* T5 length of flux1 (512 dev, 256 schnell); 0 for pixels (the caller's) */
    int default_steps;      /* 20 (pixels), 28 (dev), 4 (schnell) */
    float default_guidance; /* 1 (pixels), 3.5 (dev), 0 (schnell: no guidance input) */
    bool shift;             /* the shifted schedule (pixels, dev) or the plain one (schnell) */
} fl_pipeline_info;

/* Finds the files and reads the transformer's header (no weights) to fill info. */
int fl_pipeline_describe(const fl_pipeline_files *files, fl_pipeline_paths *paths, fl_pipeline_info *info,
                         fl_error *err);

/* An identity for the transformer, recorded as an adapter's base model: the sha256 of a single
 * pixel-model file (as flashlora always recorded it), else a fingerprint of the transformer's
 * weights (names, shapes and sampled bytes: hashing 24 GB would take minutes). */
int fl_pipeline_base_id(const fl_pipeline_paths *paths, const fl_pipeline_info *info, char hex[65], fl_error *err);

/* What FLUX.1's conditioning and image parts cost on a device kind (its storage dtype), from their
 * files' headers (no weights read), for admission: the resident weights of the text encoders and
 * the autoencoder, one prompt through T5 and CLIP, and an autoencoder pass as a linear function of
 * the image's pixels (fitted to two planned sizes: every activation of the network is per pixel).
 * All zero for a pixel model. */
typedef struct fl_pipeline_costs {
    size_t text_weights, ae_weights;
    size_t text_activations;
    double ae_decode_per_pixel, ae_encode_per_pixel;
    size_t ae_decode_fixed, ae_encode_fixed;
} fl_pipeline_costs;

int fl_pipeline_estimate_costs(const fl_pipeline_paths *paths, const fl_pipeline_info *info, fl_device_kind device,
                               int threads, fl_pipeline_costs *out, fl_error *err);
/* Bytes of an autoencoder pass over a width x height image by those costs. */
size_t fl_pipeline_costs_ae(const fl_pipeline_costs *c, bool decode, int width, int height);

typedef struct fl_pipeline fl_pipeline;

/* What fl_pipeline_release can drop. */
enum { FL_PIPELINE_TEXT = 1u, FL_PIPELINE_AE_ENCODER = 2u };

/* Loads every part onto ctx's device (ctx must outlive the pipeline). */
int fl_pipeline_open(fl_ctx *ctx, const fl_pipeline_files *files, fl_pipeline **out, fl_error *err);
/* A pipeline around a pixel-space model already loaded (not owned: freeing the pipeline leaves it). */
int fl_pipeline_wrap(fl_flux_model *m, fl_pipeline **out, fl_error *err);
void fl_pipeline_free(fl_pipeline *p); /* NULL is fine */
/* Frees the text encoders and/or the autoencoder's encoder (a training job once its inputs are
 * cached); cached prompt embeddings stay usable. */
void fl_pipeline_release(fl_pipeline *p, unsigned parts);

const fl_pipeline_info *fl_pipeline_get_info(const fl_pipeline *p);
fl_flux_model *fl_pipeline_model(fl_pipeline *p);
fl_ctx *fl_pipeline_ctx(const fl_pipeline *p);
/* A hex fingerprint of the transformer's weights (names, shapes and sampled bytes; cheap). */
const char *fl_pipeline_fingerprint(const fl_pipeline *p);
/* Fingerprints of the text encoders and the autoencoder ("" for pixels), for cache keys. */
const char *fl_pipeline_text_fingerprint(const fl_pipeline *p);
const char *fl_pipeline_ae_fingerprint(const fl_pipeline *p);

/* Rows of txt for a request: flux1's fixed T5 length, or requested for pixels. */
int fl_pipeline_text_tokens(const fl_pipeline *p, int requested);
int fl_pipeline_context_dim(const fl_pipeline *p);
int fl_pipeline_vec_dim(const fl_pipeline *p);
/* Tokens of a width x height image and channels per token. */
int64_t fl_pipeline_image_tokens(const fl_pipeline *p, int width, int height);
int fl_pipeline_token_channels(const fl_pipeline *p);
/* width and height are positive multiples of the patch (16 for flux1), at most 4096. */
int fl_pipeline_check_size(const fl_pipeline *p, int width, int height, fl_error *err);

/* Prompt cache budget in bytes (default 256 MiB; 0 turns it off), and its counters. */
void fl_pipeline_set_prompt_cache(fl_pipeline *p, size_t bytes);
void fl_pipeline_prompt_cache_stats(const fl_pipeline *p, uint64_t *hits, uint64_t *misses);

/* Encodes prompt into txt [text_tokens, context_dim] and y [vec_dim] (host f32), through the
 * cache. text_tokens must be fl_pipeline_text_tokens(p, text_tokens). Fails with one line for a
 * prompt the encoders refuse (too long, invalid UTF-8), or when the text encoders were released
 * and the prompt is not cached. */
int fl_pipeline_encode_prompt(fl_pipeline *p, const char *prompt, int text_tokens, float *txt, float *y,
                              fl_error *err);

/* An image [height, width, 3] in [-1, 1] to its tokens [image_tokens, token_channels] (pixels:
 * packed patches; flux1: the autoencoder's scaled mean, packed 2 x 2). */
int fl_pipeline_encode_image(fl_pipeline *p, const float *image, int width, int height, float *tokens,
                             fl_error *err);
/* Tokens to an image [3, height, width] (planar, as the references give it), not clamped. */
int fl_pipeline_decode(fl_pipeline *p, const float *tokens, int width, int height, float *image_chw, fl_error *err);

/* Generation of n requests of one size in one batch (each request's adapters applied to its rows
 * only, as fl_flux_sample_pixels_batch does). noise: [n, image_tokens, token_channels] initial
 * tokens, or NULL to draw each request's from its seed. Outputs (each may be NULL):
 * images[r] [height, width, 3] clamped to [-1, 1]; image_chw [n, 3, height, width] clamped to
 * [-1, 1] (the float image before quantization); tokens [n, image_tokens, token_channels] the final
 * tokens. The pixel kind without noise gives bitwise what fl_flux_sample_pixels_batch gives. */
typedef struct fl_pipeline_output {
    float **images;
    float *image_chw;
    float *tokens;
    bool model_adapters; /* apply the model's adapters as they are set (every attached one on every
                          * row: a training preview) instead of each request's */
} fl_pipeline_output;

int fl_pipeline_generate(fl_pipeline *p, int width, int height, int steps, int text_tokens,
                         const fl_sample_request *reqs, int n, const float *noise, const fl_sample_hooks *hooks,
                         const fl_pipeline_output *out, fl_error *err);

#endif
