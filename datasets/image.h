/*
 * image.h — the decoded training image and the hardened decoder behind it.
 *
 * An fl_image is RGB float in [0, 1], row-major [height][width][3]; alpha is composited on white
 * when decoding. fl_image_decode turns untrusted file bytes (PNG, JPEG, BMP, GIF first frame) into
 * one: the format is recognised by its magic bytes, the dimensions are read from the header and
 * checked against the caller's limits before any pixel memory is allocated, and the decoder
 * (stb_image) runs under a per-call memory cap so a small file cannot make it allocate gigabytes.
 * Every failure is an fl_error whose message is a short reason fit to show a user ("empty file",
 * "not an image", "30000x30000 exceeds the 50 MP limit", "truncated or corrupt image (stb: ...)").
 * Without stb compiled in, probing and decoding return FL_EUNSUPPORTED.
 */
#ifndef FL_DATASETS_IMAGE_H
#define FL_DATASETS_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct fl_image {
    int width;
    int height;
    float *pixels; /* width * height * 3 floats, RGB in [0, 1]; owned */
} fl_image;

/* Allocate a zeroed width x height image. Fails with FL_EINVAL for non-positive or overflowing
 * sizes and FL_ENOMEM when the allocation fails. */
int fl_image_init(fl_image *img, int width, int height, fl_error *err);
/* Free the pixels and zero the struct (safe on a zeroed or already released image). */
void fl_image_release(fl_image *img);

/* The format named by the leading bytes: "PNG", "JPEG", "BMP", "GIF" (decodable), or a known
 * format we do not decode ("WebP", "HEIC/AVIF", "TIFF", "PDF", "SVG", ...), or NULL. */
const char *fl_image_sniff(const void *bytes, size_t n, int *decodable);

/* Read the dimensions from the header without decoding pixels. */
int fl_image_probe(const void *bytes, size_t n, int *width, int *height, fl_error *err);

/* Refuse width x height when it exceeds max_pixels (checked first) or max_side; FL_ELIMIT with
 * "WxH exceeds the 50 MP limit" or "WxH exceeds the 12000-pixel side limit". */
int fl_image_check_size(int width, int height, int64_t max_pixels, int max_side, fl_error *err);

/* Decode bytes into out (RGB float, alpha on white). The header is probed and checked with
 * fl_image_check_size before decoding. On failure out is left zeroed. */
int fl_image_decode(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *out,
                    fl_error *err);

/* The same checks, keeping the alpha channel for compositing: color receives the colour
 * premultiplied by alpha (RGB in [0, 1]) and alpha the coverage in [0, 1], repeated in all three
 * channels (so both layers resample with the same functions). Compositing over a background b is
 * then color + (1 - alpha) * b. On failure both are left zeroed. */
int fl_image_decode_layers(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *color,
                           fl_image *alpha, fl_error *err);

#endif
