/*
 * encoders.h — the image encoders identity evaluation embeds with, behind one small interface:
 * an encoder named by a spec, images in, L2-normalized embeddings out, with each encoder's own
 * preprocessing applied here.
 *
 * Specs: "builtin" (the shipped encoder, models/builtin_vit.h, found in the project's data) or
 * "builtin:PATH" (a file in its layout). The encoders users supply (DINOv2, CLIP vision, the dlib
 * face network) plug in here through models/image_encoder.h.
 *
 * Preprocessing of the built-in encoder: the centred crop of the image's aspect to a square,
 * resampled to the encoder's input (datasets/preprocess.h, area averaging down, bilinear up); an
 * image already at the input size is used as it is, without resampling.
 */
#ifndef FL_EVAL_ENCODERS_H
#define FL_EVAL_ENCODERS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "datasets/image.h"
#include "kernels/context.h"

/* The shipped built-in encoder's path: $FLASHLORA_DATA_DIR/<rel>, then
 * <executable dir>/../share/flashlora/<rel>, then the source tree the binary was built from;
 * FL_ENOTFOUND naming the places tried. */
int fl_builtin_encoder_path(char *out, size_t cap, fl_error *err);

typedef struct fl_eval_encoder fl_eval_encoder;

/* Opens the encoder a spec names. A spec of another form, a missing file or a file of another
 * layout is FL_EINVAL / FL_ENOTFOUND with one line naming it. */
int fl_eval_encoder_open(fl_ctx *ctx, const char *spec, fl_eval_encoder **out, fl_error *err);
void fl_eval_encoder_close(fl_eval_encoder *e);

int fl_eval_encoder_dim(const fl_eval_encoder *e);
/* "builtin", ... */
const char *fl_eval_encoder_kind(const fl_eval_encoder *e);
/* What the report records: the file and its sha256 ("" when not a single file). */
const char *fl_eval_encoder_file(const fl_eval_encoder *e);
const char *fl_eval_encoder_sha256(const fl_eval_encoder *e);
/* The encoder's input side in pixels. */
int fl_eval_encoder_input_size(const fl_eval_encoder *e);
/* True when the encoder can embed text in the same space (CLIP-T). */
bool fl_eval_encoder_has_text(const fl_eval_encoder *e);

/* Embeds n images (any sizes, RGB in [0, 1]) into out [n, dim], each row L2-normalized. */
int fl_eval_encoder_embed(fl_eval_encoder *e, const fl_image *images, int n, float *out, fl_error *err);

#endif
