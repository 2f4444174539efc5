/*
 * clipart.h — the embedded model's pretraining data, built from clip art installed by Debian
 * packages: `openclipart-png` (public domain) and the Noto emoji of `ruby-tanuki-emoji`
 * (Apache-2.0).
 *
 * A clip-art layer keeps its alpha channel (premultiplied colour + coverage), is trimmed to what
 * it draws, and can be drawn at any size and place onto a canvas; the pretraining set draws each
 * one centred on white at the model's resolution, the bundled demo subjects (datasets/subjects.h)
 * draw them over backgrounds at varied positions and scales.
 *
 * Captions: an openclipart file's caption is the words of its file name followed by the words of
 * its category path ("animals/mammals/happy_monkey_benji_01.png" -> "happy monkey, animals
 * mammals"): CamelCase split, digits dropped, one-letter words dropped, and the names of the most
 * prolific authors (which the package folds into file names) removed. An emoji's caption is its
 * Unicode name from the package's emoji-test.txt followed by "emoji" ("grinning face emoji",
 * "flag japan emoji").
 *
 * fl_clipart_build writes the set: images/NNNNNN.png (RGB, resolution x resolution), one JSON line
 * per image in manifest.jsonl (file, caption, source, package, license, split), and DATASET.json
 * (counts, the files skipped and why, the sources held out for the demo subjects). Sources are
 * visited in sorted order and every choice is deterministic: the same packages give the same set.
 */
#ifndef FL_DATASETS_CLIPART_H
#define FL_DATASETS_CLIPART_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "datasets/image.h"

/* Where Debian installs the two packages. */
#define FL_OPENCLIPART_DIR "/usr/share/openclipart/png"
#define FL_TANUKI_EMOJI_GLOB "/usr/share/rubygems-integration/all/gems/tanuki_emoji-*"
#define FL_OPENCLIPART_LICENSE "public domain (openclipart-png)"
#define FL_EMOJI_LICENSE "Apache-2.0 (Noto Emoji, ruby-tanuki-emoji)"

/* A clip-art layer: colour premultiplied by alpha, and alpha repeated in 3 channels. */
typedef struct fl_clipart {
    fl_image color;
    fl_image alpha;
} fl_clipart;

/* Reads and decodes a PNG/JPEG/BMP/GIF file (at most 64 MiB, 16 MP) and trims it to the bounding
 * box of what it draws (pixels that are neither transparent nor white on white). A blank image is
 * FL_EINVAL "blank image". */
int fl_clipart_load(const char *path, fl_clipart *out, fl_error *err);
/* The same from bytes in memory. */
int fl_clipart_decode(const void *bytes, size_t n, fl_clipart *out, fl_error *err);
void fl_clipart_release(fl_clipart *c);

/* Draws c onto canvas (RGB in [0, 1]) scaled so its longer side is `size` pixels (aspect kept),
 * centred at (cx, cy) in canvas pixels; parts outside the canvas are clipped. size must be in
 * [1, 4096]. */
int fl_clipart_draw(const fl_clipart *c, fl_image *canvas, double cx, double cy, double size, fl_error *err);

/* Caption of an openclipart file from its path relative to the package's png/ directory. Writes
 * at most cap bytes (NUL included); returns the length (0 when nothing is left). */
size_t fl_clipart_caption_openclipart(const char *rel_path, char *out, size_t cap);

/* Emoji names: from the package's emoji-test.txt (lines "1F600 ; fully-qualified # 😀 E1.0
 * grinning face"). Lookups take a tanuki_emoji file name: "emoji_u1f600.png" (code points
 * joined by '_') or a two-letter region "JP.png" (a flag). */
typedef struct fl_emoji_names fl_emoji_names;
int fl_emoji_names_load(const char *emoji_test_path, fl_emoji_names **out, fl_error *err);
void fl_emoji_names_free(fl_emoji_names *names);
/* The caption ("<name> emoji", lower case, punctuation as spaces) or 0 when the file is unknown. */
size_t fl_emoji_caption(const fl_emoji_names *names, const char *file_name, char *out, size_t cap);

typedef struct fl_clipart_build_config {
    const char *openclipart_dir; /* NULL: FL_OPENCLIPART_DIR; "" skips the package */
    const char *emoji_dir;       /* the tanuki_emoji gem directory; NULL: FL_TANUKI_EMOJI_GLOB; "" skips */
    const char *out_dir;
    int resolution;              /* canvas side (default 64) */
    int margin;                  /* pixels left free on each side (default 4) */
    int max_per_dir;             /* openclipart files kept per directory, evenly spaced (default 60; 0 = all) */
    int heldout_every;           /* about one source in N goes to the held-out split (default 50; 0 = none) */
    int limit;                   /* stop after this many images (0 = all; for tests) */
    const char *const *exclude;  /* openclipart paths (relative to png/) held out entirely */
    size_t n_exclude;
    /* Called after every written image (may be NULL). */
    void (*progress)(void *arg, size_t done, size_t total);
    void *progress_arg;
} fl_clipart_build_config;

fl_clipart_build_config fl_clipart_build_config_default(void);

typedef struct fl_clipart_build_stats {
    size_t written, train, heldout, skipped, excluded;
    size_t openclipart, emoji;
} fl_clipart_build_stats;

/* Builds the set into out_dir (created; an existing manifest.jsonl there is replaced). Files that
 * cannot be used are listed in DATASET.json with their reason and skipped; it fails when no image
 * could be written or the output cannot be written. */
int fl_clipart_build(const fl_clipart_build_config *config, fl_clipart_build_stats *stats, fl_error *err);

/* The gem directory matched by FL_TANUKI_EMOJI_GLOB (the newest version), or 0 when absent. */
size_t fl_tanuki_emoji_dir(char *out, size_t cap);

#endif
