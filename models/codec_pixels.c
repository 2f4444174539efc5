/*
 * codec_pixels.c — packing RGB images into p x p patch tokens and back (see codec_pixels.h).
 */
#include "models/codec_pixels.h"

#include <stddef.h>

#include "core/error.h"

/* Index of pixel (y, x, c) of an [h, w, 3] image in the [tokens, 3 p^2] layout. */
static size_t token_index(int y, int x, int c, int w, int p) {
    int token = (y / p) * (w / p) + x / p;
    int channel = c * p * p + (y % p) * p + x % p;
    return (size_t)token * (size_t)(3 * p * p) + (size_t)channel;
}

void fl_pixels_pack(const float *image, int h, int w, int p, float *tokens) {
    FL_CHECK(p > 0 && h % p == 0 && w % p == 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) tokens[token_index(y, x, c, w, p)] = image[(y * w + x) * 3 + c];
}

void fl_pixels_unpack(const float *tokens, int h, int w, int p, float *image) {
    FL_CHECK(p > 0 && h % p == 0 && w % p == 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) image[(y * w + x) * 3 + c] = tokens[token_index(y, x, c, w, p)];
}

void fl_pixels_ids(int h, int w, int p, float *ids) {
    int gh = h / p, gw = w / p;
    for (int r = 0; r < gh; r++)
        for (int c = 0; c < gw; c++) {
            float *id = ids + (r * gw + c) * 3;
            id[0] = 0.0f;
            id[1] = (float)r;
            id[2] = (float)c;
        }
}
