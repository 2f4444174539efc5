/*
 * codec_pixels.h — the image space of the embedded model: RGB pixels packed into p x p patches.
 *
 * An image [H, W, 3] (values in [-1, 1]) becomes (H/p)*(W/p) tokens of 3*p*p channels in the
 * order Flux packs latents: token (row, col), channel (c, ph, pw) — the reference's
 * "b c (h ph) (w pw) -> b (h w) (c ph pw)". Position ids are (0, row, col). Real checkpoints use
 * VAE latents packed 2x2 instead; the model sees the same [L, C] token layout either way.
 */
#ifndef FL_MODELS_CODEC_PIXELS_H
#define FL_MODELS_CODEC_PIXELS_H

/* image [h, w, 3] -> tokens [(h/p)*(w/p), 3*p*p]; h and w must be multiples of p. */
void fl_pixels_pack(const float *image, int h, int w, int p, float *tokens);
/* The inverse. */
void fl_pixels_unpack(const float *tokens, int h, int w, int p, float *image);
/* ids [(h/p)*(w/p), 3] = (0, row, col). */
void fl_pixels_ids(int h, int w, int p, float *ids);

#endif
