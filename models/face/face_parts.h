/*
 * face_parts.h — the four stages of dlib's face pipeline, each as dlib computes it, on 8-bit RGB
 * images (rows of width * 3 bytes):
 *
 *   detect    the MMOD CNN (mmod_human_face_detector.dat): the image and its pyramid_down<6>
 *             levels tiled into one tensor ((pixel - mean) / 256, the levels by bilinear resize),
 *             the network, every output above the threshold mapped back through the layers and
 *             the tiling to a box of the detector window's size, sorted by score, then
 *             non-maximum suppression (IoU and covered-fraction thresholds from the file);
 *   landmarks the 5-point shape predictor: a cascade of regression trees on intensity
 *             differences ((R + G + B) / 3) of feature pixels placed relative to the current shape
 *             in the box's frame, points rounded to whole pixels;
 *   align     get_face_chip_details(shape, 150, 0.25) and extract_image_chip: a similarity
 *             transform from dlib's mean 5-point face, bilinear sampling (through a 2x pyramid
 *             when the face is much larger than the chip), black outside the image;
 *   describe  the ResNet on the chip: 128 floats, same person when closer than 0.6.
 */
#ifndef FL_MODELS_FACE_FACE_PARTS_H
#define FL_MODELS_FACE_FACE_PARTS_H

#include <stdint.h>

#include "core/error.h"
#include "kernels/context.h"
#include "models/face/dlib_dat.h"

/* dlib's rectangle: inclusive integer corners. */
typedef struct fl_face_rect {
    long left, top, right, bottom;
} fl_face_rect;

typedef struct fl_face_detection {
    fl_face_rect rect;
    double score;
} fl_face_detection;

/* ---- describe ------------------------------------------------------------------------------- */

typedef struct fl_face_resnet fl_face_resnet;

int fl_face_resnet_load(fl_ctx *ctx, const char *path, fl_face_resnet **out, fl_error *err);
/* The same from a parsed network (the fuzz and truncation tests parse from memory). */
int fl_face_resnet_from_net(fl_ctx *ctx, const fl_dlib_net *net, fl_face_resnet **out, fl_error *err);
void fl_face_resnet_free(fl_face_resnet *r);
int fl_face_resnet_dim(const fl_face_resnet *r);       /* 128 */
int fl_face_resnet_chip_size(const fl_face_resnet *r); /* 150 */
double fl_face_resnet_threshold(const fl_face_resnet *r); /* the loss's distance threshold: 0.6 */
/* chip: size x size x 3 bytes; desc: dim floats. */
int fl_face_resnet_describe(fl_face_resnet *r, const uint8_t *chip, float *desc, fl_error *err);

/* ---- detect --------------------------------------------------------------------------------- */

typedef struct fl_face_detector fl_face_detector;

int fl_face_detector_load(fl_ctx *ctx, const char *path, fl_face_detector **out, fl_error *err);
int fl_face_detector_from_net(fl_ctx *ctx, const fl_dlib_net *net, fl_face_detector **out, fl_error *err);
void fl_face_detector_free(fl_face_detector *d);
/* Detections in the image, best first (at most max; *count gets how many), with dlib's default
 * threshold 0 (adjust: added to it). */
int fl_face_detect(fl_face_detector *d, const uint8_t *rgb, int width, int height, double adjust,
                   fl_face_detection *out, int max, int *count, fl_error *err);

/* ---- landmarks ------------------------------------------------------------------------------ */

/* parts: 2 * num_parts values (x0, y0, ...), whole pixels as dlib's points. */
void fl_shape_predict(const fl_shape_predictor *sp, const uint8_t *rgb, int width, int height, fl_face_rect box,
                      long *parts);

/* ---- align ---------------------------------------------------------------------------------- */

/* The size x size chip for a 5-point shape with dlib's padding (0.25 for the descriptor). */
void fl_face_chip(const uint8_t *rgb, int width, int height, const long *parts5, int size, double padding,
                  uint8_t *chip);

#endif
