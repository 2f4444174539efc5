/*
 * report.h — the picture report of an evaluation: one self-contained HTML page (every image is
 * an embedded PNG, the chart is inline SVG; no script, no network) that opens from disk.
 *
 * It shows the settings (encoder, model, sampler, prompts, seeds), a table of the scores per
 * adapter with their 95% intervals, a bar chart of identity accuracy (retrieval and
 * verification), AUC and similarity for each adapter beside the base model, and per adapter its
 * reference images and a grid of its generations (rows: prompts; columns: seeds), each with the
 * base model's image for the same prompt and seed, the nearest subject and the similarity.
 * Everything that came from a user (labels, prompts, subject names) is HTML-escaped.
 */
#ifndef FL_EVAL_REPORT_H
#define FL_EVAL_REPORT_H

#include <jansson.h>

#include "core/error.h"
#include "eval/evaluate.h"

#define FL_EVAL_REPORT_MAX_REFS 24 /* reference thumbnails shown per adapter */

typedef enum fl_eval_image_kind { FL_EVAL_IMAGE_GEN = 0, FL_EVAL_IMAGE_BASE = 1, FL_EVAL_IMAGE_REF = 2 } fl_eval_image_kind;

/* Gives the PNG bytes of image `index` of an adapter (its generations and base images in the
 * evaluation JSON's order, or its references): *png malloc'ed. Returns 0, 1 when the image is
 * gone (the page says so), -1 with err on failure. */
typedef int (*fl_eval_png_fn)(void *arg, int adapter, fl_eval_image_kind kind, int index, unsigned char **png,
                              size_t *n, fl_error *err);

/* The page of an evaluation JSON (eval/evaluate.h) with its images from png, as a malloc'ed
 * NUL-terminated string; NULL with err when an image cannot be had. */
char *fl_eval_report_render(json_t *evaluation, fl_eval_png_fn png, void *arg, fl_error *err);

/* The page of a run in memory. */
char *fl_eval_report_html(const fl_eval_result *r, const fl_eval_config *cfg, fl_error *err);
/* Writes the page atomically to path. */
int fl_eval_report_write(const fl_eval_result *r, const fl_eval_config *cfg, const char *path, fl_error *err);

/* Appends s to buf HTML-escaped (& < > " '); exposed for tests. */
typedef struct fl_strbuf {
    char *data;
    size_t len, cap;
} fl_strbuf;
void fl_strbuf_add(fl_strbuf *b, const char *s);
void fl_strbuf_addf(fl_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fl_strbuf_add_escaped(fl_strbuf *b, const char *s);
void fl_strbuf_add_base64(fl_strbuf *b, const unsigned char *data, size_t n);

#endif
