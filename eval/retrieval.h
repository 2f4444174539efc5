/*
 * retrieval.h — cross-style retrieval, the check that an image encoder recognizes a subject
 * drawn another way: the held-out emoji of the Noto set (queries) against the same code points
 * drawn by EmojiOne (gallery), datasets/emoji_styles.h. A query is a hit when its most similar
 * gallery image (cosine of the embeddings) is its own emoji; top-1 accuracy is the fraction of
 * hits, reported in both directions (Noto -> EmojiOne and back) and averaged.
 *
 * Both sets are rendered the same way before any method sees them: trimmed to what they draw,
 * scaled so the longer side fills the image less a 4-pixel margin, centred on white.
 *
 * The baseline is a colour histogram of the drawn pixels (coverage-weighted; the white surround
 * is not counted): bins^3 RGB cells, L1-normalized, compared by the Bhattacharyya coefficient
 * (the cosine of the square roots). It is scored at 4, 8 and 16 bins per channel and the best
 * reported, so the encoder is compared with the strongest of them.
 */
#ifndef FL_EVAL_RETRIEVAL_H
#define FL_EVAL_RETRIEVAL_H

#include <stddef.h>

#include "core/error.h"
#include "models/builtin_vit.h"
#include "trainer/encoder_pretrain.h"

typedef struct fl_retrieval_score {
    size_t n;
    double top1_ab, top1_ba; /* queries from set a against gallery b, and back */
    double top1;             /* their mean */
    double top5;             /* mean of both directions */
} fl_retrieval_score;

/* Scores n pairs: a[i] and b[i] ([n, dim] each) embed the same subject. Rows are L2-normalized
 * here (a zero row stays zero). Ties count as misses. */
void fl_retrieval_score_pairs(const float *a, const float *b, size_t n, int dim, fl_retrieval_score *out);

/* The coverage-weighted colour histogram (sqrt of the L1-normalized counts; bins^3 values) of a
 * rendered source; an image without drawn pixels gives zeros. */
void fl_color_histogram(const fl_clip_source *src, int bins, float *out);

/* Composites a rendered source on white into rgb [side, side, 3] in [0, 1]. */
void fl_clip_source_on_white(const fl_clip_source *src, float *rgb);

/* The held-out emoji pairs rendered at side x side. */
typedef struct fl_emoji_benchmark {
    size_t n;
    int side;
    char (*keys)[96];
    fl_clip_source *noto, *emojione;
} fl_emoji_benchmark;

/* Finds the installed sets (or the given folders; NULL: the installed gems), keeps the held-out
 * pairs (at most max_pairs, evenly spaced; 0: all) and renders them. FL_ENOTFOUND when a set is
 * not installed. */
int fl_emoji_benchmark_load(const char *noto_dir, const char *emojione_dir, int side, size_t max_pairs,
                            fl_emoji_benchmark *out, fl_error *err);
void fl_emoji_benchmark_free(fl_emoji_benchmark *b);

/* The encoder's score on the benchmark (images fed at the encoder's input size, which must equal
 * the benchmark's side). */
int fl_emoji_benchmark_encoder(const fl_emoji_benchmark *b, fl_bvit *m, fl_retrieval_score *out, fl_error *err);
/* The histogram baseline at one bin count. */
void fl_emoji_benchmark_histogram(const fl_emoji_benchmark *b, int bins, fl_retrieval_score *out);

#endif
