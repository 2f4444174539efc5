/*
 * encoders.h — the image encoder identity evaluation embeds with: any spec of
 * models/image_encoder.h ("builtin" for the shipped encoder, "builtin:PATH", "dinov2:PATH",
 * "clip:PATH", "face:DIR"), images in, L2-normalized embeddings out, each encoder's own
 * preprocessing applied, with what the report records about the encoder.
 */
#ifndef FL_EVAL_ENCODERS_H
#define FL_EVAL_ENCODERS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "datasets/image.h"
#include "kernels/context.h"
#include "models/image_encoder.h"

typedef struct fl_eval_encoder fl_eval_encoder;

/* Opens the encoder a spec names. A spec of another form, a missing file or a file of another
 * layout is FL_EINVAL / FL_ENOTFOUND with one line naming it. */
int fl_eval_encoder_open(fl_ctx *ctx, const char *spec, fl_eval_encoder **out, fl_error *err);
void fl_eval_encoder_close(fl_eval_encoder *e);

int fl_eval_encoder_dim(const fl_eval_encoder *e);
/* "builtin", "dinov2", "clip", "face" */
const char *fl_eval_encoder_kind(const fl_eval_encoder *e);
/* What the report records: the file or folder the spec names, and the fingerprint of what decides
 * the output (models/image_encoder.h). */
const char *fl_eval_encoder_file(const fl_eval_encoder *e);
const char *fl_eval_encoder_sha256(const fl_eval_encoder *e);
/* The encoder's input side in pixels. */
int fl_eval_encoder_input_size(const fl_eval_encoder *e);
/* True when the encoder can embed text in the same space (CLIP-T). */
bool fl_eval_encoder_has_text(const fl_eval_encoder *e);
/* The face encoder's same-person distance between raw descriptors (0.6); 0 for other encoders. */
float fl_eval_encoder_match_distance(const fl_eval_encoder *e);

/* Embeds n images (any sizes, RGB in [0, 1]) into out [n, dim], each row L2-normalized (all
 * zeros for a face image without a face). info (may be NULL) gets n entries: the raw norm and,
 * for the face encoder, whether a face was found (models/image_encoder.h). */
int fl_eval_encoder_embed(fl_eval_encoder *e, const fl_image *images, int n, float *out, fl_embed_info *info,
                          fl_error *err);
/* Embeds a prompt into out [dim], L2-normalized; FL_EUNSUPPORTED without a text side. */
int fl_eval_encoder_text(fl_eval_encoder *e, const char *prompt, float *out, fl_error *err);

#endif
