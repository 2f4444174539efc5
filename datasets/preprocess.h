/*
 * preprocess.h — from a decoded image to a training sample.
 *
 * An image is assigned an aspect bucket (fl_bucket_choose: about base_resolution² pixels, sides
 * multiples of step, the bucket whose aspect ratio is closest), cropped around its center to the
 * bucket's aspect and resampled to the bucket's size, optionally flipped, and converted to the
 * training layout: float [H, W, 3] in [-1, 1].
 *
 * Resampling is separable, in the image's own (gamma-encoded) values as common training pipelines
 * do: area averaging on an axis that shrinks (each output pixel is the mean of the input area it
 * covers, fractional pixels weighted by coverage), bilinear on an axis that grows (pixel centers
 * aligned, edges clamped), a plain copy on an axis that keeps its size. It runs on
 * stb_image_resize (box filter down, triangle filter up, clamped edges — the same kernels) when
 * built with stb, else on the built-in implementation of those kernels; both agree to float
 * rounding, so results do not depend on the build.
 */
#ifndef FL_DATASETS_PREPROCESS_H
#define FL_DATASETS_PREPROCESS_H

#include <stdbool.h>

#include "core/error.h"
#include "datasets/image.h"

/* Largest target side accepted by the resampling functions. */
#define FL_PREPROCESS_MAX_SIDE 16384
/* Buckets are limited to aspect ratios within 1:4 .. 4:1. */
#define FL_BUCKET_MAX_ASPECT 4

/* Resample all of src to exactly width x height (aspect not kept). out is a new image. */
int fl_image_resample(const fl_image *src, int width, int height, fl_image *out, fl_error *err);
/* The built-in filter alone: what fl_image_resample runs without stb (exposed for tests). */
int fl_image_resample_builtin(const fl_image *src, int width, int height, fl_image *out, fl_error *err);

/* Crop the centered region of src with the aspect ratio of width x height (whole pixels; any odd
 * pixel of the margin goes to the right/bottom), then resample it to exactly width x height. */
int fl_image_resize_crop(const fl_image *src, int width, int height, fl_image *out, fl_error *err);

/* Mirror left-right in place. */
void fl_image_flip_horizontal(fl_image *img);

/* The bucket for a w x h image. The buckets: for every side s that is a positive multiple of step,
 * o = the largest multiple of step with s * o <= base_resolution², giving s x o and its transpose
 * o x s (so portrait and landscape buckets mirror each other), kept when the aspect ratio is within
 * 1:FL_BUCKET_MAX_ASPECT. The chosen one has the log aspect ratio closest to log(w / h) (ties: the
 * larger area, then the smaller width). Returns 0, or -1 when w, h or step is not positive, or
 * base_resolution < step or > FL_PREPROCESS_MAX_SIDE. */
int fl_bucket_choose(int w, int h, int base_resolution, int step, int *out_w, int *out_h);

/* Write img as float [height][width][3] in [-1, 1] (2 * v - 1) to out (width * height * 3 floats). */
void fl_image_to_training(const fl_image *img, float *out);

/* The whole path: resize_crop to width x height, flip if asked, and write the training layout to
 * out (width * height * 3 floats). */
int fl_preprocess_sample(const fl_image *src, int width, int height, bool flip, float *out, fl_error *err);

#endif
