/*
 * report.c — the evaluation's HTML report (eval/report.h): a growable string, HTML escaping,
 * base64 PNGs, the scores table, the SVG bar chart and the image grids.
 */
#include "eval/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "models/sampler.h"

void fl_strbuf_add(fl_strbuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap) cap *= 2;
        b->data = realloc(b->data, cap);
        FL_CHECK(b->data);
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n + 1);
    b->len += n;
}

void fl_strbuf_addf(fl_strbuf *b, const char *fmt, ...) {
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        fl_strbuf_add(b, small);
        return;
    }
    char *big = fl_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    fl_strbuf_add(b, big);
    free(big);
}

void fl_strbuf_add_escaped(fl_strbuf *b, const char *s) {
    char one[2] = {0, 0};
    for (; *s; s++) {
        switch (*s) {
        case '&': fl_strbuf_add(b, "&amp;"); break;
        case '<': fl_strbuf_add(b, "&lt;"); break;
        case '>': fl_strbuf_add(b, "&gt;"); break;
        case '"': fl_strbuf_add(b, "&quot;"); break;
        case '\'': fl_strbuf_add(b, "&#39;"); break;
        default:
            one[0] = *s;
            fl_strbuf_add(b, one);
        }
    }
}

void fl_strbuf_add_base64(fl_strbuf *b, const unsigned char *d, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char chunk[4097];
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (i + 1 < n ? (unsigned)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        chunk[k++] = tab[(v >> 18) & 63];
        chunk[k++] = tab[(v >> 12) & 63];
        chunk[k++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        chunk[k++] = i + 2 < n ? tab[v & 63] : '=';
        if (k >= 4092) {
            chunk[k] = '\0';
            fl_strbuf_add(b, chunk);
            k = 0;
        }
    }
    chunk[k] = '\0';
    fl_strbuf_add(b, chunk);
}

/* <img> of PNG bytes, shown `shown` pixels wide (height from the PNG's header). */
static void add_png_bytes(fl_strbuf *b, const unsigned char *png, size_t n, int shown, const char *cls) {
    int w = 0, h = 0;
    if (n >= 24 && !memcmp(png + 12, "IHDR", 4)) {
        w = (int)((unsigned)png[16] << 24 | (unsigned)png[17] << 16 | (unsigned)png[18] << 8 | png[19]);
        h = (int)((unsigned)png[20] << 24 | (unsigned)png[21] << 16 | (unsigned)png[22] << 8 | png[23]);
    }
    int sh = w > 0 && h > 0 ? (int)((long)shown * h / w) : shown;
    fl_strbuf_addf(b, "<img class=\"%s\" width=\"%d\" height=\"%d\" src=\"data:image/png;base64,", cls, shown, sh);
    fl_strbuf_add_base64(b, png, n);
    fl_strbuf_add(b, "\">");
}

/* The image (adapter, kind, index) from the provider; a missing one shows as a note. */
static int add_image(fl_strbuf *b, fl_eval_png_fn png, void *arg, int adapter, fl_eval_image_kind kind, int index,
                     int shown, const char *cls, fl_error *err) {
    unsigned char *data = NULL;
    size_t n = 0;
    int rc = png(arg, adapter, kind, index, &data, &n, err);
    if (rc < 0) return -1;
    if (rc > 0 || !data) {
        fl_strbuf_addf(b, "<span class=\"small\">(image no longer stored)</span>");
        return 0;
    }
    add_png_bytes(b, data, n, shown, cls);
    free(data);
    return 0;
}

static void fmt_num(char *out, size_t cap, json_t *v, const char *fmt) {
    if (json_is_number(v)) snprintf(out, cap, fmt, json_number_value(v));
    else snprintf(out, cap, "&ndash;");
}

static void fmt_ci(char *out, size_t cap, json_t *v) {
    if (json_is_array(v) && json_array_size(v) == 2)
        snprintf(out, cap, " <span class=\"ci\">[%.2f, %.2f]</span>", json_number_value(json_array_get(v, 0)),
                 json_number_value(json_array_get(v, 1)));
    else
        out[0] = '\0';
}

/* One bar with an optional interval whisker; value in [0, 1] of the plot height. */
static void bar(fl_strbuf *b, double x, double w, double v, json_t *ci_v, const char *color, int top, int height,
                const char *label) {
    double vv = isfinite(v) ? (v < 0 ? 0 : v > 1 ? 1 : v) : 0;
    double y = top + height * (1 - vv);
    fl_strbuf_addf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>", x, y, w,
                   top + height - y, color);
    fl_strbuf_add_escaped(b, label);
    fl_strbuf_addf(b, " %.3f</title></rect>", v);
    if (json_is_array(ci_v) && json_array_size(ci_v) == 2) {
        double lo = json_number_value(json_array_get(ci_v, 0)), hi = json_number_value(json_array_get(ci_v, 1));
        lo = lo < 0 ? 0 : lo > 1 ? 1 : lo;
        hi = hi < 0 ? 0 : hi > 1 ? 1 : hi;
        double cx = x + w / 2, y0 = top + height * (1 - lo), y1 = top + height * (1 - hi);
        fl_strbuf_addf(b,
                       "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#222\"/>"
                       "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#222\"/>"
                       "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#222\"/>",
                       cx, y0, cx, y1, cx - 3, y0, cx + 3, y0, cx - 3, y1, cx + 3, y1);
    }
    if (isfinite(v))
        fl_strbuf_addf(b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" text-anchor=\"middle\">%.2f</text>", x + w / 2,
                       y - 3 < top + 8 ? top + 8 : y - 3, v);
}

static void chart(fl_strbuf *b, json_t *adapters) {
    static const char *const metrics[4] = {"retrieval", "verification", "auc", "similarity"};
    static const char *const titles[4] = {"identity (retrieval)", "identity (verification)", "AUC vs base",
                                          "mean cosine to refs"};
    const int A = (int)json_array_size(adapters);
    const int top = 20, height = 180, left = 40, group_w = 46, gap = 30;
    const int span = A * group_w < 120 ? 120 : A * group_w; /* room for the group's title */
    const int width = left + 4 * (span + gap) + 10 < 640 ? 640 : left + 4 * (span + gap) + 10;
    fl_strbuf_addf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" class=\"chart\">", width,
                   top + height + 60);
    for (int t = 0; t <= 4; t++) {
        double y = top + height * (1 - t / 4.0);
        fl_strbuf_addf(b,
                       "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%d\" y=\"%.1f\" "
                       "font-size=\"10\" text-anchor=\"end\">%.2f</text>",
                       left, y, width - 10, y, left - 4, y + 3, t / 4.0);
    }
    for (int k = 0; k < 4; k++) {
        double gx = left + k * (span + gap) + gap / 2.0 + (span - A * group_w) / 2.0;
        for (int a = 0; a < A; a++) {
            json_t *aj = json_array_get(adapters, (size_t)a), *ia = json_object_get(aj, "identity_accuracy");
            json_t *base = json_object_get(aj, "base");
            json_t *v = NULL, *vci = NULL, *bv = NULL, *bci = NULL;
            if (k == 0) {
                v = json_object_get(ia, "retrieval"), vci = json_object_get(ia, "retrieval_ci");
                bv = json_object_get(base, "retrieval"), bci = json_object_get(base, "retrieval_ci");
            } else if (k == 1) {
                v = json_object_get(ia, "verification"), vci = json_object_get(ia, "verification_ci");
                bv = json_object_get(base, "pass_rate");
            } else if (k == 2) {
                v = json_object_get(ia, "auc"), vci = json_object_get(ia, "auc_ci");
            } else {
                v = json_object_get(aj, "similarity"), vci = json_object_get(aj, "similarity_ci");
                bv = json_object_get(base, "similarity"), bci = json_object_get(base, "similarity_ci");
            }
            double x = gx + a * group_w;
            const char *label = json_string_value(json_object_get(aj, "adapter"));
            bar(b, x, 20, json_is_number(v) ? json_number_value(v) : NAN, vci, "#3b6fd4", top, height, label ? label : "");
            if (bv) bar(b, x + 21, 20, json_is_number(bv) ? json_number_value(bv) : NAN, bci, "#a0a0a0", top, height, "base");
        }
        fl_strbuf_addf(b, "<text x=\"%.1f\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">%s</text>",
                       left + k * (span + gap) + gap / 2.0 + span / 2.0, top + height + 16, titles[k]);
        (void)metrics;
    }
    fl_strbuf_addf(b,
                   "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#3b6fd4\"/><text x=\"%d\" y=\"%d\" "
                   "font-size=\"11\">adapter (bars in adapter order; whiskers: 95%% bootstrap interval over prompts)</text>"
                   "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#a0a0a0\"/><text x=\"%d\" y=\"%d\" "
                   "font-size=\"11\">base model, same prompts and seeds</text></svg>",
                   left, top + height + 30, left + 14, top + height + 39, left, top + height + 44, left + 14,
                   top + height + 53);
}
/* CLIP-T (encoders with a text side) and the face rates (the face encoder), when the run has them. */
static void text_and_face_table(fl_strbuf *b, json_t *adapters) {
    bool text = false, face = false;
    for (size_t a = 0; a < json_array_size(adapters); a++) {
        json_t *aj = json_array_get(adapters, a);
        text |= json_is_number(json_object_get(aj, "clip_t"));
        face |= json_is_true(json_object_get(json_object_get(aj, "face"), "applicable"));
    }
    if (!text && !face) return;
    fl_strbuf_add(b, "<h2>Text and faces</h2><table><tr><th class=\"l\">adapter</th>");
    if (text) fl_strbuf_add(b, "<th>CLIP-T</th><th>base</th>");
    if (face) fl_strbuf_add(b, "<th>face detected</th><th>base</th><th>face ID match</th><th>base</th>");
    fl_strbuf_add(b, "</tr>");
    for (size_t a = 0; a < json_array_size(adapters); a++) {
        json_t *aj = json_array_get(adapters, a), *bj = json_object_get(aj, "base"), *f = json_object_get(aj, "face");
        json_t *fb = json_object_get(f, "base");
        char v[6][64];
        fmt_num(v[0], 64, json_object_get(aj, "clip_t"), "%.3f");
        fmt_num(v[1], 64, json_object_get(bj, "clip_t"), "%.3f");
        fmt_num(v[2], 64, json_object_get(f, "detection_rate"), "%.3f");
        fmt_num(v[3], 64, json_object_get(fb, "detection_rate"), "%.3f");
        fmt_num(v[4], 64, json_object_get(f, "match_rate"), "%.3f");
        fmt_num(v[5], 64, json_object_get(fb, "match_rate"), "%.3f");
        fl_strbuf_add(b, "<tr><td class=\"l\">");
        fl_strbuf_add_escaped(b, json_string_value(json_object_get(aj, "adapter")));
        fl_strbuf_add(b, "</td>");
        if (text) fl_strbuf_addf(b, "<td>%s</td><td>%s</td>", v[0], v[1]);
        if (face) fl_strbuf_addf(b, "<td>%s</td><td>%s</td><td>%s</td><td>%s</td>", v[2], v[3], v[4], v[5]);
        fl_strbuf_add(b, "</tr>");
    }
    fl_strbuf_add(b, "</table><p class=\"small\">CLIP-T: mean cosine between each image and the text embedding of its "
                     "prompt; face detected: share of images where the detector found a face; face ID match: share "
                     "whose face is within dlib's distance 0.6 of at least half of the reference faces.</p>");
}


static const char style[] =
    "<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
    "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right}th{background:#f2f2f2}"
    "td.l,th.l{text-align:left}.ci{color:#777;font-size:11px}.grid td{text-align:center;vertical-align:top}"
    "img{image-rendering:pixelated;margin:1px}img.hit{outline:3px solid #2a2}img.miss{outline:3px solid #d33}"
    "img.base{outline:1px solid #999}.cap{font-size:10px;color:#555;max-width:150px}h2{margin-top:32px}"
    ".small{font-size:12px;color:#555}</style>";

char *fl_eval_report_render(json_t *j, fl_eval_png_fn png, void *arg, fl_error *err) {
    fl_strbuf b = {0};
    fl_strbuf_add(&b, "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>flashlora identity evaluation</title>");
    fl_strbuf_add(&b, style);
    fl_strbuf_add(&b, "</head><body><h1>Identity evaluation</h1>");
    json_t *enc = json_object_get(j, "encoder"), *smp = json_object_get(j, "sampler");
    fl_strbuf_add(&b, "<p class=\"small\">encoder: ");
    fl_strbuf_add_escaped(&b, json_string_value(json_object_get(enc, "kind")));
    fl_strbuf_addf(&b, " (%lld-D, %lld px input, sha256 ", (long long)json_integer_value(json_object_get(enc, "dim")),
                   (long long)json_integer_value(json_object_get(enc, "input_size")));
    fl_strbuf_add_escaped(&b, json_string_value(json_object_get(enc, "sha256")));
    fl_strbuf_add(&b, ")<br>model: ");
    fl_strbuf_add_escaped(&b, json_string_value(json_object_get(json_object_get(j, "model"), "file")));
    fl_strbuf_addf(&b, "<br>sampler: %lldx%lld, %lld steps, guidance %.3g; %zu prompts x %zu seeds; %lld bootstrap resamples over prompts</p>",
                   (long long)json_integer_value(json_object_get(smp, "width")),
                   (long long)json_integer_value(json_object_get(smp, "height")),
                   (long long)json_integer_value(json_object_get(smp, "steps")),
                   json_number_value(json_object_get(smp, "guidance")), json_array_size(json_object_get(j, "prompts")),
                   json_array_size(json_object_get(j, "seeds")),
                   (long long)json_integer_value(json_object_get(j, "bootstrap")));
    json_t *adapters = json_object_get(j, "adapters");
    /* the scores table */
    fl_strbuf_add(&b,
                  "<h2>Scores</h2><table><tr><th class=\"l\">adapter</th><th>identity (retrieval)</th><th>base</th>"
                  "<th>identity (verification)</th><th>&tau;</th><th>AUC</th><th>similarity</th><th>base</th>"
                  "<th>ceiling</th><th>diversity</th><th>copy rate</th><th>subjects</th></tr>");
    for (size_t a = 0; a < json_array_size(adapters); a++) {
        json_t *aj = json_array_get(adapters, a), *ia = json_object_get(aj, "identity_accuracy"), *bj = json_object_get(aj, "base");
        char v[12][64], c[12][96];
        fmt_num(v[0], 64, json_object_get(ia, "retrieval"), "%.3f");
        fmt_ci(c[0], 96, json_object_get(ia, "retrieval_ci"));
        fmt_num(v[1], 64, json_object_get(bj, "retrieval"), "%.3f");
        fmt_ci(c[1], 96, json_object_get(bj, "retrieval_ci"));
        fmt_num(v[2], 64, json_object_get(ia, "verification"), "%.3f");
        fmt_ci(c[2], 96, json_object_get(ia, "verification_ci"));
        fmt_num(v[3], 64, json_object_get(ia, "tau"), "%.3f");
        fmt_num(v[4], 64, json_object_get(ia, "auc"), "%.3f");
        fmt_ci(c[4], 96, json_object_get(ia, "auc_ci"));
        fmt_num(v[5], 64, json_object_get(aj, "similarity"), "%.3f");
        fmt_ci(c[5], 96, json_object_get(aj, "similarity_ci"));
        fmt_num(v[6], 64, json_object_get(bj, "similarity"), "%.3f");
        fmt_num(v[7], 64, json_object_get(aj, "ref_ceiling"), "%.3f");
        fmt_num(v[8], 64, json_object_get(aj, "diversity"), "%.3f");
        fmt_num(v[9], 64, json_object_get(aj, "copy_rate"), "%.3f");
        fl_strbuf_add(&b, "<tr><td class=\"l\">");
        fl_strbuf_add_escaped(&b, json_string_value(json_object_get(aj, "adapter")));
        fl_strbuf_addf(&b,
                       "</td><td>%s%s</td><td>%s%s</td><td>%s%s</td><td>%s</td><td>%s%s</td><td>%s%s</td><td>%s</td>"
                       "<td>%s</td><td>%s</td><td>%s</td><td>%lld</td></tr>",
                       v[0], c[0], v[1], c[1], v[2], c[2], v[3], v[4], c[4], v[5], c[5], v[6], v[7], v[8], v[9],
                       (long long)json_integer_value(json_object_get(aj, "n_distractors")) + 1);
    }
    fl_strbuf_add(&b,
                  "</table><p class=\"small\">identity (retrieval): share of the adapter's images whose nearest subject "
                  "(mean cosine to each subject's references) is its own; identity (verification): share above &tau;, "
                  "the base model's 95th percentile of similarity to the references; AUC: adapter vs base images; "
                  "diversity: mean cosine distance between the adapter's images; copy rate: share with cosine &gt; 0.95 "
                  "to a training image.</p>");
    text_and_face_table(&b, adapters);
    chart(&b, adapters);
    /* per adapter: references and the grid */
    json_t *prompts = json_object_get(j, "prompts"), *seeds = json_object_get(j, "seeds");
    const int P = (int)json_array_size(prompts), S = (int)json_array_size(seeds);
    const int W = (int)json_integer_value(json_object_get(smp, "width"));
    const int shown = W <= 96 ? 2 * W : W <= 256 ? W : 256;
    for (size_t a = 0; a < json_array_size(adapters); a++) {
        json_t *aj = json_array_get(adapters, a);
        fl_strbuf_add(&b, "<h2>");
        fl_strbuf_add_escaped(&b, json_string_value(json_object_get(aj, "adapter")));
        fl_strbuf_add(&b, "</h2><p class=\"small\">trigger &ldquo;");
        fl_strbuf_add_escaped(&b, json_string_value(json_object_get(aj, "trigger")));
        int n_refs = (int)json_integer_value(json_object_get(aj, "n_refs"));
        fl_strbuf_addf(&b, "&rdquo;, scale %.3g; references (%d, ", json_number_value(json_object_get(aj, "scale")), n_refs);
        fl_strbuf_add_escaped(&b, json_string_value(json_object_get(aj, "references")));
        fl_strbuf_add(&b, "):</p><div>");
        for (int i = 0; i < n_refs && i < FL_EVAL_REPORT_MAX_REFS; i++)
            if (add_image(&b, png, arg, (int)a, FL_EVAL_IMAGE_REF, i, 64, "ref", err) != 0) goto fail;
        fl_strbuf_add(&b, "</div><table class=\"grid\"><tr><th class=\"l\">prompt</th>");
        for (int s = 0; s < S; s++)
            fl_strbuf_addf(&b, "<th>seed %lld<br><span class=\"small\">adapter | base</span></th>",
                           (long long)json_integer_value(json_array_get(seeds, (size_t)s)));
        fl_strbuf_add(&b, "</tr>");
        json_t *imgs = json_object_get(aj, "images"), *bimgs = json_object_get(aj, "base_images");
        for (int p = 0; p < P; p++) {
            fl_strbuf_add(&b, "<tr><td class=\"l\">");
            fl_strbuf_add_escaped(&b, json_string_value(json_array_get(prompts, (size_t)p)));
            fl_strbuf_add(&b, "</td>");
            for (int s = 0; s < S; s++) {
                int i = p * S + s;
                json_t *ij = json_array_get(imgs, (size_t)i), *bj = json_array_get(bimgs, (size_t)i);
                const char *nearest = json_string_value(json_object_get(ij, "nearest"));
                bool hit = nearest && !strcmp(nearest, json_string_value(json_object_get(aj, "subject")));
                fl_strbuf_add(&b, "<td>");
                if (add_image(&b, png, arg, (int)a, FL_EVAL_IMAGE_GEN, i, shown, hit ? "hit" : "miss", err) != 0) goto fail;
                if (bj && add_image(&b, png, arg, (int)a, FL_EVAL_IMAGE_BASE, i, shown, "base", err) != 0) goto fail;
                fl_strbuf_add(&b, "<div class=\"cap\">nearest: ");
                fl_strbuf_add_escaped(&b, nearest ? nearest : "?");
                fl_strbuf_addf(&b, ", s=%.2f", json_number_value(json_object_get(ij, "similarity")));
                if (bj) {
                    fl_strbuf_add(&b, " | base: ");
                    fl_strbuf_add_escaped(&b, json_string_value(json_object_get(bj, "nearest")));
                    fl_strbuf_addf(&b, ", s=%.2f", json_number_value(json_object_get(bj, "similarity")));
                }
                fl_strbuf_add(&b, "</div></td>");
            }
            fl_strbuf_add(&b, "</tr>");
        }
        fl_strbuf_add(&b, "</table><p class=\"small\">green outline: the nearest subject is the adapter's own; red: another subject.</p>");
    }
    fl_strbuf_add(&b, "</body></html>\n");
    return b.data;
fail:
    free(b.data);
    return NULL;
}

/* The CLI's provider: images from the run in memory. */
typedef struct run_images {
    const fl_eval_result *r;
    const fl_eval_config *cfg;
} run_images;

static int run_png(void *arg, int adapter, fl_eval_image_kind kind, int index, unsigned char **png, size_t *n,
                   fl_error *err) {
    const run_images *ri = arg;
    const fl_eval_adapter_result *ar = &ri->r->adapters[adapter];
    if (kind == FL_EVAL_IMAGE_REF) {
        const fl_eval_refs *refs = ri->cfg->adapters[adapter].refs;
        if (index >= refs->n) return 1;
        const fl_image *im = &refs->images[index];
        size_t np = (size_t)im->width * im->height * 3;
        float *v = fl_xmalloc(np * sizeof(float));
        for (size_t k = 0; k < np; k++) v[k] = im->pixels[k] * 2.0f - 1.0f;
        int rc = fl_png_encode(v, im->width, im->height, png, n, err);
        free(v);
        return rc;
    }
    float **set = kind == FL_EVAL_IMAGE_GEN ? ar->gen : ar->base;
    if (!set || index >= ar->n_images) return 1;
    return fl_png_encode(set[index], ri->r->width, ri->r->height, png, n, err);
}

char *fl_eval_report_html(const fl_eval_result *r, const fl_eval_config *cfg, fl_error *err) {
    run_images ri = {r, cfg};
    return fl_eval_report_render(r->json, run_png, &ri, err);
}

int fl_eval_report_write(const fl_eval_result *r, const fl_eval_config *cfg, const char *path, fl_error *err) {
    char *html = fl_eval_report_html(r, cfg, err);
    if (!html) return -1;
    int rc = fl_write_file_atomic(path, html, strlen(html), err);
    free(html);
    return rc;
}
