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

/* Refuse a file too short for the width x height its header claims (cut off, or crafted to make
 * a decoder size its buffers by the claim), from the file's structure alone: FL_EINVAL with
 * "truncated or corrupt image (...)". PNG: every chunk complete through IEND and the compressed
 * pixel data at least deflate's floor for the raw scanlines; JPEG: complete segments and an
 * end-of-image marker after the scan, at least a bit per 8x8 block; BMP: the pixel offset plus
 * the rows of uncompressed pixels; GIF: the first image's data complete, at least LZW's floor. */
int fl_image_check_data(const void *bytes, size_t n, int width, int height, fl_error *err);

/* Decode bytes into out (RGB float, alpha on white). The header is probed and checked with
 * fl_image_check_size and fl_image_check_data before decoding. On failure out is left zeroed. */
int fl_image_decode(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *out,
                    fl_error *err);
/* The same, shrunk as it is decoded: when the longer side is over fit_side (> 0) the image comes
 * out with that longer side (the other one rounded, at least 1), each pixel the mean of its box of
 * composited source pixels, so a full-size float copy never exists. fit_side 0 is fl_image_decode. */
int fl_image_decode_fit(const void *bytes, size_t n, int64_t max_pixels, int max_side, int fit_side, fl_image *out,
                        fl_error *err);

/* The same checks, keeping the alpha channel for compositing: color receives the colour
 * premultiplied by alpha (RGB in [0, 1]) and alpha the coverage in [0, 1], repeated in all three
 * channels (so both layers resample with the same functions). Compositing over a background b is
 * then color + (1 - alpha) * b. On failure both are left zeroed. */
int fl_image_decode_layers(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *color,
                           fl_image *alpha, fl_error *err);

#endif
