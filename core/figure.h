/*
 * figure.h — small raster figures written as PNG: image grids with captions, side-by-side
 * comparisons and line plots (the model card's loss curve and sample grid, the demo's picture).
 *
 * An fl_figure is an 8-bit RGB canvas. Text uses a built-in 6x10 bitmap font (the public-domain
 * X11 misc-fixed 6x10 glyphs for printable ASCII; other bytes draw as '?'), scaled by whole
 * pixels. Nothing here allocates after fl_figure_init except fl_figure_write_png.
 */
#ifndef FL_CORE_FIGURE_H
#define FL_CORE_FIGURE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define FL_FONT_W 6
#define FL_FONT_H 10

typedef struct fl_figure {
    int width, height;
    unsigned char *rgb; /* [height][width][3] */
} fl_figure;

typedef struct fl_rgb {
    unsigned char r, g, b;
} fl_rgb;

/* A width x height canvas filled with bg. Sizes must be in [1, 16384]. */
int fl_figure_init(fl_figure *f, int width, int height, fl_rgb bg, fl_error *err);
void fl_figure_release(fl_figure *f);

void fl_figure_fill_rect(fl_figure *f, int x, int y, int w, int h, fl_rgb c);
/* An image [h][w][3] with values in [-1, 1] (the sampler's layout) at (x, y), each pixel drawn as
 * a scale x scale block; clipped to the canvas. */
void fl_figure_blit(fl_figure *f, const float *image, int w, int h, int x, int y, int scale);
/* Text with its top-left corner at (x, y), glyphs scale times the font size; '\n' starts a new
 * line. Returns the width drawn of the longest line, in pixels. */
int fl_figure_text(fl_figure *f, int x, int y, const char *text, int scale, fl_rgb c);
/* Width in pixels text would take on one line at scale. */
int fl_figure_text_width(const char *text, int scale);
/* A one-pixel line (Bresenham), clipped. */
void fl_figure_line(fl_figure *f, int x0, int y0, int x1, int y1, fl_rgb c);

/* A line plot of up to 4 series over a shared x axis into the rectangle (x, y, w, h) of f: axes,
 * ticks with numbers, axis titles, a legend; log_y plots log10 of the values (positive only).
 * Non-finite points are skipped. */
typedef struct fl_plot_series {
    const double *x, *y;
    size_t n;
    fl_rgb color;
    const char *label;
} fl_plot_series;
void fl_figure_plot(fl_figure *f, int x, int y, int w, int h, const fl_plot_series *series, int n_series,
                    const char *x_title, const char *y_title, int log_y);

/* Encodes the canvas as PNG and writes it atomically. FL_EUNSUPPORTED without stb. */
int fl_figure_write_png(const fl_figure *f, const char *path, fl_error *err);

#endif
