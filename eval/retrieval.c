/*
 * retrieval.c — cross-style retrieval scoring, the colour-histogram baseline and the emoji
 * benchmark (eval/retrieval.h).
 */
#include "eval/retrieval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/emoji_styles.h"

static float *normalized_rows(const float *x, size_t n, int dim) {
    float *y = fl_xmalloc((n ? n : 1) * (size_t)dim * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int k = 0; k < dim; k++) s += (double)x[i * dim + k] * x[i * dim + k];
        double inv = s > 0 ? 1.0 / sqrt(s) : 0.0;
        for (int k = 0; k < dim; k++) y[i * dim + k] = (float)(x[i * dim + k] * inv);
    }
    return y;
}

/* Fraction of queries whose own gallery item is the most similar (strictly), and within the 5
 * most similar. */
static void one_direction(const float *q, const float *g, size_t n, int dim, double *top1, double *top5) {
    size_t hit1 = 0, hit5 = 0;
    double *sim = fl_xmalloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double d = 0;
            for (int k = 0; k < dim; k++) d += (double)q[i * dim + k] * g[j * dim + k];
            sim[j] = d;
        }
        size_t above = 0; /* gallery items at least as similar as the right one, itself excluded */
        for (size_t j = 0; j < n; j++)
            if (j != i && sim[j] >= sim[i]) above++;
        hit1 += above == 0;
        hit5 += above < 5;
    }
    free(sim);
    *top1 = n ? (double)hit1 / (double)n : 0;
    *top5 = n ? (double)hit5 / (double)n : 0;
}

void fl_retrieval_score_pairs(const float *a, const float *b, size_t n, int dim, fl_retrieval_score *out) {
    memset(out, 0, sizeof *out);
    out->n = n;
    float *na = normalized_rows(a, n, dim), *nb = normalized_rows(b, n, dim);
    double t5a, t5b;
    one_direction(na, nb, n, dim, &out->top1_ab, &t5a);
    one_direction(nb, na, n, dim, &out->top1_ba, &t5b);
    out->top1 = 0.5 * (out->top1_ab + out->top1_ba);
    out->top5 = 0.5 * (t5a + t5b);
    free(na);
    free(nb);
}

void fl_color_histogram(const fl_clip_source *src, int bins, float *out) {
    const size_t nb = (size_t)bins * bins * bins, np = (size_t)src->side * src->side;
    double *h = fl_xcalloc(nb, sizeof(double));
    double total = 0;
    for (size_t i = 0; i < np; i++) {
        double a = src->alpha[i] / 255.0;
        if (a <= 0) continue;
        int idx[3];
        for (int c = 0; c < 3; c++) {
            int v = src->rgb[3 * i + c] * bins / 256;
            idx[c] = v >= bins ? bins - 1 : v;
        }
        h[((size_t)idx[0] * bins + idx[1]) * bins + idx[2]] += a;
        total += a;
    }
    for (size_t k = 0; k < nb; k++) out[k] = total > 0 ? (float)sqrt(h[k] / total) : 0.0f;
    free(h);
}

void fl_clip_source_on_white(const fl_clip_source *src, float *rgb) {
    const size_t np = (size_t)src->side * src->side;
    for (size_t i = 0; i < np; i++) {
        float a = src->alpha[i] / 255.0f;
        for (int c = 0; c < 3; c++) rgb[3 * i + c] = a * (src->rgb[3 * i + c] / 255.0f) + (1.0f - a);
    }
}

int fl_emoji_benchmark_load(const char *noto_dir, const char *emojione_dir, int side, size_t max_pairs,
                            fl_emoji_benchmark *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    char nd[4096], ed[4096];
    if (noto_dir) snprintf(nd, sizeof nd, "%s", noto_dir);
    else if (!fl_emoji_find_dir(FL_TANUKI_GLOB, FL_TANUKI_EMOJI_IMAGES, nd, sizeof nd))
        return fl_fail(err, FL_ENOTFOUND, "the Noto emoji set is not installed (Debian package ruby-tanuki-emoji)");
    if (emojione_dir) snprintf(ed, sizeof ed, "%s", emojione_dir);
    else if (!fl_emoji_find_dir(FL_GEMOJIONE_GLOB, FL_GEMOJIONE_IMAGES, ed, sizeof ed))
        return fl_fail(err, FL_ENOTFOUND, "the EmojiOne set is not installed (Debian package ruby-gemojione)");
    fl_emoji_pair *pairs = NULL;
    size_t n = 0;
    if (fl_emoji_pairs(nd, ed, true, &pairs, &n, err) != 0) return -1;
    size_t want = max_pairs > 0 && max_pairs < n ? max_pairs : n;
    out->keys = fl_xcalloc(want ? want : 1, sizeof *out->keys);
    out->noto = fl_xcalloc(want ? want : 1, sizeof *out->noto);
    out->emojione = fl_xcalloc(want ? want : 1, sizeof *out->emojione);
    out->side = side;
    size_t k = 0;
    for (size_t j = 0; j < want; j++) {
        const fl_emoji_pair *p = &pairs[want == n ? j : (size_t)((double)j * n / want)];
        fl_error e = {0};
        if (fl_clip_source_render(p->noto_path, side, 4, &out->noto[k], &e) != 0) continue;
        if (fl_clip_source_render(p->emojione_path, side, 4, &out->emojione[k], &e) != 0) {
            fl_clip_source_release(&out->noto[k]);
            continue;
        }
        snprintf(out->keys[k], sizeof out->keys[k], "%s", p->key);
        k++;
    }
    out->n = k;
    fl_emoji_pairs_free(pairs, n);
    if (k == 0) {
        fl_emoji_benchmark_free(out);
        return fl_fail(err, FL_ENOTFOUND, "no emoji pair could be rendered");
    }
    return 0;
}

void fl_emoji_benchmark_free(fl_emoji_benchmark *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n; i++) {
        fl_clip_source_release(&b->noto[i]);
        fl_clip_source_release(&b->emojione[i]);
    }
    free(b->noto);
    free(b->emojione);
    free(b->keys);
    memset(b, 0, sizeof *b);
}

int fl_emoji_benchmark_encoder(const fl_emoji_benchmark *b, fl_bvit *m, fl_retrieval_score *out, fl_error *err) {
    const fl_bvit_config *c = fl_bvit_get_config(m);
    if (c->image_size != b->side)
        return fl_fail(err, FL_EINVAL, "the encoder takes %d px images, the benchmark has %d", c->image_size, b->side);
    const size_t px = (size_t)b->side * b->side * 3;
    float *img = fl_xmalloc(b->n * px * sizeof(float));
    float *ea = fl_xmalloc(b->n * (size_t)c->dim * sizeof(float)), *eb = fl_xmalloc(b->n * (size_t)c->dim * sizeof(float));
    int rc = 0;
    for (size_t i = 0; i < b->n; i++) fl_clip_source_on_white(&b->noto[i], img + i * px);
    rc = fl_bvit_embed(m, img, (int)b->n, ea, err);
    for (size_t i = 0; rc == 0 && i < b->n; i++) fl_clip_source_on_white(&b->emojione[i], img + i * px);
    if (rc == 0) rc = fl_bvit_embed(m, img, (int)b->n, eb, err);
    if (rc == 0) fl_retrieval_score_pairs(ea, eb, b->n, c->dim, out);
    free(img);
    free(ea);
    free(eb);
    return rc;
}

void fl_emoji_benchmark_histogram(const fl_emoji_benchmark *b, int bins, fl_retrieval_score *out) {
    const int dim = bins * bins * bins;
    float *ha = fl_xmalloc(b->n * (size_t)dim * sizeof(float)), *hb = fl_xmalloc(b->n * (size_t)dim * sizeof(float));
    for (size_t i = 0; i < b->n; i++) {
        fl_color_histogram(&b->noto[i], bins, ha + i * dim);
        fl_color_histogram(&b->emojione[i], bins, hb + i * dim);
    }
    fl_retrieval_score_pairs(ha, hb, b->n, dim, out);
    free(ha);
    free(hb);
}
