/*
 * ae.h — the FLUX.1 autoencoder: images to the latents Flux works in and back, and the 2x2
 * packing of latents into the transformer's tokens.
 *
 * The network is BFL's AutoEncoder (flux/modules/autoencoder.py) in its checkpoint layout
 * (`ae.safetensors`: encoder.conv_in, encoder.down.N.block.M.*, encoder.mid.{block_1,attn_1,
 * block_2}, encoder.norm_out, encoder.conv_out, decoder.* likewise with up blocks). Files in
 * the diffusers AutoencoderKL layout (`vae/diffusion_pytorch_model.safetensors`) are mapped onto
 * those names once, at load (fl_ae_diffusers_to_bfl, a pure function over names).
 *
 *   encode: image [B, 3, H, W] in [-1, 1] -> encoder -> the mean of the diagonal Gaussian (the
 *           first z channels; the latents are never sampled) -> (mean - shift) * scale
 *           -> latents [B, z, H/8, W/8] -> packed tokens [B, (H/16)(W/16), 4z]
 *   decode: tokens -> latents -> z / scale + shift -> decoder -> image [B, 3, H, W] (not clamped)
 *
 * Packing is Flux's "b c (h ph) (w pw) -> b (h w) (c ph pw)": token row * (W/16) + col holds
 * channel c * 4 + ph * 2 + pw; position ids are (0, row, col) as fl_pixels_ids(H/8, W/8, 2)
 * gives them (models/codec_pixels.h).
 *
 * Memory: weights are uploaded once in the context's storage dtype, the encoder and the decoder
 * separately (a training job drops the encoder after caching its latents; a generation worker
 * loads only the decoder). Images go through the network one at a time, so activations do not
 * grow with the batch. They live in one arena per model, planned per image size and direction:
 * the first call with a new (H, W, encode/decode) runs the pass in planning mode to measure it
 * (tensors are freed as soon as they are dead, so the plan holds about three of the largest
 * activations, not the whole network), grows the arena when it needs more, and later calls
 * allocate and plan nothing. fl_ae_estimate_memory measures the same pass on a skeleton (no
 * weights, no data) so the service can bound a decode before admitting it.
 */
#ifndef FL_MODELS_AE_H
#define FL_MODELS_AE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "kernels/context.h"
#include "models/family.h"

#define FL_AE_MAX_LEVELS 8
#define FL_AE_NAME_MAX 96
#define FL_AE_MAX_SIDE 16384 /* pixels on one side of an image the AE accepts */

/* The parameters of BFL's AutoEncoderParams that shape the network. GroupNorm always has 32
 * groups and eps 1e-6; the mid-block attention is single-head over the C channels. */
typedef struct fl_ae_params {
    int in_channels;               /* image channels: 3 */
    int out_ch;                    /* decoded image channels: 3 */
    int ch;                        /* base width: 128 */
    int n_levels;                  /* len(ch_mult): 4 */
    int ch_mult[FL_AE_MAX_LEVELS]; /* 1, 2, 4, 4 */
    int num_res_blocks;            /* 2 (the decoder has one more per level) */
    int z_channels;                /* latent channels: 16 */
    float scale_factor;            /* 0.3611 */
    float shift_factor;            /* 0.1159 */
} fl_ae_params;

/* The FLUX.1 (dev and schnell) autoencoder. */
void fl_ae_params_flux1(fl_ae_params *out);
/* Positive sizes, channel counts divisible by 32 (GroupNorm), finite non-zero scale. */
int fl_ae_params_validate(const fl_ae_params *p, fl_error *err);
/* Pixels per latent along one side: 2^(n_levels - 1) (8 for FLUX.1). */
int fl_ae_downscale(const fl_ae_params *p);
/* Channels of a packed token: 4 * z_channels (64 for FLUX.1). */
int fl_ae_token_channels(const fl_ae_params *p);

/* Which half of the network: the encoder, the decoder, or both. */
enum { FL_AE_ENCODER = 1u, FL_AE_DECODER = 2u, FL_AE_BOTH = 3u };

/* ---- names and layouts (pure functions over names and shapes) ---------------------------------- */

typedef struct fl_ae_param_decl {
    char name[FL_AE_NAME_MAX]; /* BFL key, e.g. "decoder.up.3.block.0.conv1.weight" */
    int ndim;                  /* 1 (norms, biases) or 4 (convolutions) */
    int64_t shape[4];
} fl_ae_param_decl;

/* Every tensor of the given parts for p, in a fixed order (encoder first). Returns the count;
 * fills decls when it is not NULL (call once with NULL to size the array). */
size_t fl_ae_param_decls(const fl_ae_params *p, unsigned parts, fl_ae_param_decl *decls);

typedef enum fl_ae_layout { FL_AE_LAYOUT_BFL = 0, FL_AE_LAYOUT_DIFFUSERS } fl_ae_layout;

/* Maps a diffusers AutoencoderKL key (no prefix) onto its BFL name for a network of n_levels
 * levels: down_blocks.i.resnets.j -> down.i.block.j, up_blocks.i -> up.(n_levels - 1 - i),
 * {down,up}samplers.0 -> {down,up}sample, mid_block.resnets.{0,1} -> mid.block_{1,2},
 * mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} (or the older query, key, value,
 * proj_attn) -> mid.attn_1.{norm,q,k,v,proj_out}, conv_shortcut -> nin_shortcut,
 * conv_norm_out -> norm_out. *linear_to_conv is set for the attention projections' weights,
 * which diffusers stores as Linear [C, C] and BFL as 1x1 convolutions [C, C, 1, 1]. Returns 0,
 * or -1 (out untouched) for a name with no BFL counterpart (quant_conv, post_quant_conv, ...). */
int fl_ae_diffusers_to_bfl(const char *name, int n_levels, char *out, size_t size, bool *linear_to_conv);

/* Where an autoencoder sits in a list of tensors and what shape it has. */
typedef struct fl_ae_source {
    fl_ae_layout layout;
    char prefix[32];     /* "", "first_stage_model.", "vae.", "ae." */
    unsigned parts;      /* the halves present (FL_AE_ENCODER | FL_AE_DECODER) */
    fl_ae_params params; /* inferred from shapes; scale and shift are FLUX.1's (not in the file) */
} fl_ae_source;

/* Finds the autoencoder in entries (either layout, any of the prefixes above) and infers its
 * parameters from the shapes. FL_EUNSUPPORTED when there is none; FL_EINVAL naming the tensor
 * when its shapes are inconsistent. */
int fl_ae_detect(const fl_tensor_header *entries, size_t n, fl_ae_source *out, fl_error *err);

/* Every tensor the given parts need is present under src's prefix and layout with its exact
 * shape, and no tensor under that prefix is unknown. The error names the first tensor missing,
 * misshaped or unexpected, by its name in the file. */
int fl_ae_check_entries(const fl_tensor_header *entries, size_t n, const fl_ae_source *src, unsigned parts,
                        fl_error *err);

/* ---- the model ---------------------------------------------------------------------------------- */

typedef struct fl_ae fl_ae;

/* Loads the given parts onto ctx's device. path is a .safetensors file (either layout, with or
 * without a prefix), a model.safetensors.index.json with its shards, or a directory: a FLUX.1
 * model folder (`ae.safetensors` at its root, else its `vae/` folder) or a vae folder itself (its
 * one .safetensors file or its index); files are read through models/text/weights.h. A diffusers
 * `config.json` next to the weights supplies scaling_factor and shift_factor. F32, BF16 and F16
 * tensors are converted to the storage dtype. Every failure (no such file, a truncated or
 * malformed file, a missing shard, a missing or misshaped tensor, a part not in the file) is an
 * fl_error naming the file and the tensor. */
int fl_ae_load(fl_ctx *ctx, const char *path, unsigned parts, fl_ae **out, fl_error *err);
/* The same from an open file; p NULL infers the parameters (fl_ae_detect), else p must match. */
int fl_ae_load_safetensors(fl_ctx *ctx, const fl_safetensors *st, const fl_ae_params *p, unsigned parts,
                           fl_ae **out, fl_error *err);
/* Random weights (convolutions normal with std 1/sqrt(fan_in), biases small, norms around 1),
 * for tests and benchmarks. */
fl_ae *fl_ae_create_random(fl_ctx *ctx, const fl_ae_params *p, unsigned parts, uint64_t seed);
void fl_ae_free(fl_ae *ae);
/* Frees the weights of the given parts (e.g. the encoder once a training set is encoded). */
void fl_ae_release(fl_ae *ae, unsigned parts);

const fl_ae_params *fl_ae_get_params(const fl_ae *ae);
fl_ctx *fl_ae_get_ctx(const fl_ae *ae);
unsigned fl_ae_parts(const fl_ae *ae); /* the parts whose weights are resident */

/* ---- running ------------------------------------------------------------------------------------ */

/* Tensors are contiguous, in the storage dtype, on the model's device. H and W are multiples of
 * 2 * fl_ae_downscale (16) and at most FL_AE_MAX_SIDE; shapes that disagree with the model are
 * FL_EINVAL, a part not loaded FL_EINVAL, an arena the device cannot hold FL_ENOMEM (the model
 * stays usable). */

/* image [B, in_channels, H, W] -> tokens [B, (H/16)(W/16), 4z] (scaled and shifted mean). */
int fl_ae_encode(fl_ae *ae, const fl_tensor *image, fl_tensor *tokens, fl_error *err);
/* tokens [B, (H/16)(W/16), 4z] -> image [B, out_ch, H, W]; H and W come from image's shape. */
int fl_ae_decode(fl_ae *ae, const fl_tensor *tokens, fl_tensor *image, fl_error *err);

/* The same without packing: latents [B, z, H/8, W/8] (H, W multiples of 8 here). */
int fl_ae_encode_latents(fl_ae *ae, const fl_tensor *image, fl_tensor *latents, fl_error *err);
int fl_ae_decode_latents(fl_ae *ae, const fl_tensor *latents, fl_tensor *image, fl_error *err);

/* latents [B, C, h, w] <-> tokens [B, (h/2)(w/2), 4C] on ctx's device (h, w even). */
int fl_ae_pack(fl_ctx *ctx, const fl_tensor *latents, fl_tensor *tokens, fl_error *err);
int fl_ae_unpack(fl_ctx *ctx, const fl_tensor *tokens, fl_tensor *latents, fl_error *err);

/* Bytes of the activation arena (the largest plan so far) and how many passes were planned. */
size_t fl_ae_activation_bytes(const fl_ae *ae);
uint64_t fl_ae_plan_count(const fl_ae *ae);

/* ---- memory, before any is allocated ---------------------------------------------------------- */

typedef struct fl_ae_memory {
    size_t weights;     /* the resident parts in the storage dtype */
    size_t activations; /* the pass's arena, measured in planning mode */
    size_t scratch;     /* the kernels' scratch outside the arena (convolution tiles, attention) */
    size_t io;          /* one image and its latents/tokens (the pass's input and output) */
    size_t total;
} fl_ae_memory;

/* The memory of encoding (decode false) or decoding one height x width image with a model of
 * parameters p whose `parts` are resident, on a device of the given kind (its storage dtype),
 * found on a skeleton without allocating: the same pass runs in planning mode against a
 * measuring arena. threads: CPU threads (their scratch; 0 counts one). */
int fl_ae_estimate_memory(const fl_ae_params *p, fl_device_kind device, unsigned parts, bool decode, int height,
                          int width, int threads, fl_ae_memory *out, fl_error *err);

#endif
