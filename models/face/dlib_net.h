/*
 * dlib_net.h — runs a parsed dlib network (models/face/dlib_dat.h) with the ops of kernels/ops.h:
 * the face descriptor ResNet and the MMOD detector's convolutional body.
 *
 * Layers run from the input upward as dlib runs them: con (cross-correlation with the stored
 * padding, bias, and the fused ReLU of con_6), affine (per channel; a ReLU right after it is
 * fused in), relu, max/avg pooling with clipped windows (global when the kernel is 0), tag (marks
 * the current output), skip (continues from a tagged output), add_prev (adds a tagged output,
 * zero-padding the smaller operand) and fc (over the flattened [C, H, W] input). Channel counts
 * are checked when the model is built, spatial sizes for each input size; a mismatch from the
 * file is an error, never an abort. Weights live on the context's device in its storage dtype;
 * activations in one buffer sized per input size (every output kept when the network has tags,
 * two alternating buffers otherwise).
 */
#ifndef FL_MODELS_FACE_DLIB_NET_H
#define FL_MODELS_FACE_DLIB_NET_H

#include <stdint.h>

#include "core/error.h"
#include "kernels/context.h"
#include "models/face/dlib_dat.h"

typedef struct fl_dlib_model fl_dlib_model;

/* Uploads net's weights (net may be freed afterwards). */
int fl_dlib_model_build(fl_ctx *ctx, const fl_dlib_net *net, fl_dlib_model **out, fl_error *err);
void fl_dlib_model_free(fl_dlib_model *m); /* NULL is fine */

/* Runs one input: host floats [3, H, W] (already in the network's input scale). *out gets a
 * malloc'ed host copy of the last layer's output and shape its [1, C, Ho, Wo]. Fails (FL_EINVAL)
 * when the input is too small for the network, or FL_ENOMEM. */
int fl_dlib_model_run(fl_dlib_model *m, const float *input, int H, int W, float **out, int64_t shape[4],
                      fl_error *err);

#endif
