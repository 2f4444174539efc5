/*
 * evaluate.c — the identity evaluation run (eval/evaluate.h): references, prompts, batched
 * generation of every adapter and of the base model, embeddings, scores and the JSON result.
 */
#include "eval/evaluate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/lora.h"
#include "core/fileio.h"
#include "core/utf8.h"
#include "datasets/captions.h"
#include "models/sampler.h"

#define PROMPT_FILE_MAX_BYTES (1u << 20)
#define REF_FIT_SIDE 256

/* ---- references ---------------------------------------------------------------------------------- */

static fl_imageset_limits refs_limits(void) {
    fl_imageset_limits l = fl_imageset_limits_default();
    l.min_images = 1;
    l.max_images = FL_EVAL_MAX_REFS;
    l.fit_side = REF_FIT_SIDE;
    return l;
}

static int refs_from_set(const char *name, const char *source, fl_imageset *set, fl_eval_refs *out, fl_error *err) {
    (void)err;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name);
    snprintf(out->source, sizeof out->source, "%s", source);
    out->n = (int)set->count;
    out->images = fl_xcalloc(set->count, sizeof *out->images);
    out->names = fl_xcalloc(set->count, sizeof *out->names);
    for (size_t i = 0; i < set->count; i++) {
        out->images[i] = set->items[i].image; /* taken over */
        memset(&set->items[i].image, 0, sizeof set->items[i].image);
        out->names[i] = strdup(set->items[i].name);
        FL_CHECK(out->names[i]);
    }
    return 0;
}

/* "no usable image" with the first refusal's reason, when there is one. */
static int no_usable(const char *name, const char *source, fl_error *err) {
    char why[300];
    snprintf(why, sizeof why, "%.299s", err->message);
    return fl_fail(err, FL_EINVAL, "%s: no usable reference image in %s (%s)", name, source, why);
}

int fl_eval_refs_load(const char *name, const char *source, fl_eval_refs *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    fl_imageset_limits l = refs_limits();
    fl_imageset *set = NULL;
    if (fl_imageset_load(source, &l, &set, err) != 0) {
        if (err->code == FL_EINVAL || err->code == FL_ENOTFOUND) return no_usable(name, source, err);
        return fl_fail_prefix(err, "%s: references %s", name, source);
    }
    int rc = refs_from_set(name, source, set, out, err);
    fl_imageset_free(set);
    return rc;
}

int fl_eval_refs_load_memory(const char *name, const void *bytes, size_t n, fl_eval_refs *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    fl_imageset_limits l = refs_limits();
    fl_imageset *set = NULL;
    if (fl_imageset_load_memory(bytes, n, "upload", &l, &set, err) != 0) {
        if (err->code == FL_EINVAL || err->code == FL_ENOTFOUND) return no_usable(name, "the upload", err);
        return fl_fail_prefix(err, "%s: references", name);
    }
    int rc = refs_from_set(name, "upload", set, out, err);
    fl_imageset_free(set);
    return rc;
}

void fl_eval_refs_free(fl_eval_refs *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        fl_image_release(&r->images[i]);
        free(r->names[i]);
    }
    free(r->images);
    free(r->names);
    memset(r, 0, sizeof *r);
}

/* ---- prompts ------------------------------------------------------------------------------------- */

static const char *const default_prompts[] = {
    "a photo of [trigger]",
    "[trigger] on a white background",
    "a drawing of [trigger]",
    "[trigger] on a red background",
    "a large [trigger] in the center",
    "a small [trigger] in the corner",
    "a sticker of [trigger]",
    "[trigger] on a blue background, simple",
};

const char *const *fl_eval_default_prompts(int *n) {
    *n = (int)(sizeof default_prompts / sizeof default_prompts[0]);
    return default_prompts;
}

void fl_eval_free_prompts(char **prompts, int n) {
    if (!prompts) return;
    for (int i = 0; i < n; i++) free(prompts[i]);
    free(prompts);
}

int fl_eval_read_prompts(const char *path, int max_prompts, char ***out, int *n, fl_error *err) {
    *out = NULL;
    *n = 0;
    unsigned char *data = NULL;
    size_t size = 0;
    if (fl_read_file(path, PROMPT_FILE_MAX_BYTES, &data, &size, err) != 0) {
        if (err->code == FL_ELIMIT)
            return fl_fail(err, FL_ELIMIT, "prompt file %s is larger than %u bytes (at most %d prompts)", path,
                           PROMPT_FILE_MAX_BYTES, max_prompts);
        return -1;
    }
    if (!fl_utf8_valid((const char *)data, size)) {
        free(data);
        return fl_fail(err, FL_EINVAL, "prompt file %s is not valid UTF-8", path);
    }
    char **v = fl_xcalloc((size_t)max_prompts + 1, sizeof *v);
    int count = 0, line_no = 0, rc = 0;
    char *p = (char *)data, *end = (char *)data + size;
    while (p < end && rc == 0) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        line_no++;
        char *a = p, *b = le;
        while (a < b && (*a == ' ' || *a == '\t' || *a == '\r')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r')) b--;
        if (a < b && *a != '#') {
            if (memchr(a, '\0', (size_t)(b - a))) rc = fl_fail(err, FL_EINVAL, "prompt file %s: line %d holds a NUL byte", path, line_no);
            else if (b - a > FL_EVAL_MAX_PROMPT_BYTES)
                rc = fl_fail(err, FL_ELIMIT, "prompt file %s: line %d is %ld bytes long (at most %d)", path, line_no,
                             (long)(b - a), FL_EVAL_MAX_PROMPT_BYTES);
            else if (count == max_prompts) {
                int more = 1;
                for (char *q = nl ? nl + 1 : end; q < end;) { /* count the rest for the message */
                    char *e2 = memchr(q, '\n', (size_t)(end - q));
                    char *s2 = q;
                    while (s2 < (e2 ? e2 : end) && (*s2 == ' ' || *s2 == '\t' || *s2 == '\r')) s2++;
                    if (s2 < (e2 ? e2 : end) && *s2 != '#') more++;
                    q = e2 ? e2 + 1 : end;
                }
                rc = fl_fail(err, FL_ELIMIT, "prompt file %s has %d prompts: at most %d are accepted", path,
                             max_prompts + more, max_prompts);
            } else {
                v[count] = fl_xmalloc((size_t)(b - a) + 1);
                memcpy(v[count], a, (size_t)(b - a));
                v[count][b - a] = '\0';
                count++;
            }
        }
        p = nl ? nl + 1 : end;
    }
    free(data);
    if (rc == 0 && count == 0) rc = fl_fail(err, FL_EINVAL, "prompt file %s has no prompt", path);
    if (rc != 0) {
        fl_eval_free_prompts(v, count);
        return -1;
    }
    *out = v;
    *n = count;
    return 0;
}

fl_eval_config fl_eval_config_default(void) {
    fl_eval_config c;
    memset(&c, 0, sizeof c);
    c.width = c.height = 64;
    c.steps = 20;
    c.max_text_tokens = 32;
    c.guidance = 1.0f;
    c.batch = 8;
    c.with_base = true;
    c.bootstrap = 1000;
    c.bootstrap_seed = 12345;
    return c;
}

/* ---- the run ------------------------------------------------------------------------------------- */

static bool before_step(void *arg, int done, int steps) {
    (void)done, (void)steps;
    const fl_eval_config *c = arg;
    return c->should_stop && c->should_stop(c->arg);
}

static void progress(const fl_eval_config *c, const char *stage, int done, int total) {
    if (c->progress) c->progress(c->arg, stage, done, total);
}

static int check_config(fl_flux_model *m, const fl_eval_config *c, fl_error *err) {
    if (c->n_adapters < 1) return fl_fail(err, FL_EINVAL, "no adapter to evaluate");
    if (c->n_adapters > FL_EVAL_MAX_ADAPTERS)
        return fl_fail(err, FL_ELIMIT, "%d adapters: at most %d per evaluation", c->n_adapters, FL_EVAL_MAX_ADAPTERS);
    if (c->n_distractors > FL_EVAL_MAX_DISTRACTORS)
        return fl_fail(err, FL_ELIMIT, "%d distractor subjects: at most %d", c->n_distractors, FL_EVAL_MAX_DISTRACTORS);
    if (c->n_prompts < 1 || c->n_prompts > FL_EVAL_MAX_PROMPTS)
        return fl_fail(err, FL_ELIMIT, "%d prompts: between 1 and %d are accepted", c->n_prompts, FL_EVAL_MAX_PROMPTS);
    if (c->n_seeds < 1 || c->n_seeds > FL_EVAL_MAX_SEEDS)
        return fl_fail(err, FL_ELIMIT, "%d seeds: between 1 and %d are accepted", c->n_seeds, FL_EVAL_MAX_SEEDS);
    const int patch = fl_flux_pixel_patch(fl_flux_get_params(m));
    if (patch < 1) return fl_fail(err, FL_EUNSUPPORTED, "evaluation generates in the pixel image space; this model is not");
    if (c->width < patch || c->height < patch || c->width % patch || c->height % patch || c->width > 4096 || c->height > 4096)
        return fl_fail(err, FL_EINVAL, "image size %dx%d: multiples of the patch size %d up to 4096", c->width, c->height, patch);
    if (c->steps < 1 || c->steps > 1000) return fl_fail(err, FL_EINVAL, "steps %d outside [1, 1000]", c->steps);
    if (c->batch < 1) return fl_fail(err, FL_EINVAL, "batch %d < 1", c->batch);
    for (int a = 0; a < c->n_adapters; a++) {
        const fl_eval_adapter *ad = &c->adapters[a];
        if (!ad->refs || ad->refs->n < 1) return fl_fail(err, FL_EINVAL, "%s: no reference image", ad->label);
        if (!ad->path && ad->set_id < 0) return fl_fail(err, FL_EINVAL, "%s: no adapter file", ad->label);
        if (!isfinite(ad->scale)) return fl_fail(err, FL_EINVAL, "%s: scale is not finite", ad->label);
    }
    for (int d = 0; d < c->n_distractors; d++)
        if (c->distractors[d].n < 1) return fl_fail(err, FL_EINVAL, "distractor %s: no reference image", c->distractors[d].name);
    for (int p = 0; p < c->n_prompts; p++)
        if (!c->prompts[p] || !*c->prompts[p]) return fl_fail(err, FL_EINVAL, "prompt %d is empty", p + 1);
    return 0;
}

/* Embeds images given in the sampler's layout ([-1, 1]). */
static int embed_generated(fl_eval_encoder *enc, float **imgs, int n, int w, int h, float *out, fl_embed_info *info,
                           fl_error *err) {
    fl_image *v = fl_xcalloc((size_t)(n ? n : 1), sizeof *v);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = fl_image_init(&v[i], w, h, err);
        for (size_t k = 0; rc == 0 && k < (size_t)w * h * 3; k++) {
            float x = 0.5f * (imgs[i][k] + 1.0f);
            v[i].pixels[k] = x < 0 ? 0 : x > 1 ? 1 : x;
        }
    }
    if (rc == 0) rc = fl_eval_encoder_embed(enc, v, n, out, info, err);
    for (int i = 0; i < n; i++) fl_image_release(&v[i]);
    free(v);
    return rc;
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }
static json_t *ci(fl_ci c) {
    if (!isfinite(c.lo) || !isfinite(c.hi)) return json_null();
    return json_pack("[o, o]", json_real(c.lo), json_real(c.hi));
}

/* The resolved prompt of adapter a: [trigger] -> its trigger word. */
static char *resolve(const char *prompt, const char *trigger) {
    return fl_caption_resolve(prompt, trigger && *trigger ? trigger : NULL, prompt, false);
}

/* CLIP-T: the mean cosine between each image (row i of emb, prompt i / n_seeds) and the text
 * embedding of the prompt it was generated from (text [n_prompts, dim]). */
static double text_cosine(const float *emb, int n, int n_seeds, const float *text, int dim) {
    double sum = 0;
    for (int i = 0; i < n; i++) {
        const float *a = emb + (size_t)i * dim, *t = text + (size_t)(i / n_seeds) * dim;
        double dot = 0;
        for (int k = 0; k < dim; k++) dot += (double)a[k] * t[k];
        sum += dot;
    }
    return n ? sum / n : NAN;
}

/* Face rates of n images against a subject's references, by dlib's own rule on raw descriptors
 * (normalized row x its norm): a face matches a reference face when their Euclidean distance is
 * below match_distance, and the image matches the subject when its face matches at least half
 * of the reference faces. Images without a detected face count as not matching. */
typedef struct face_rates {
    double detection; /* fraction of images with a face */
    double match;     /* fraction of images whose face matches the subject (NaN: no reference face) */
} face_rates;

static face_rates face_scores(const float *emb, const fl_embed_info *info, int n, const float *ref,
                              const fl_embed_info *ref_info, int n_ref, int dim, float match_distance) {
    int found = 0, matched = 0, ref_faces = 0;
    for (int r = 0; r < n_ref; r++) ref_faces += ref_info[r].face_found;
    for (int i = 0; i < n; i++) {
        if (!info[i].face_found) continue;
        found++;
        int close = 0;
        for (int r = 0; r < n_ref; r++) {
            if (!ref_info[r].face_found) continue;
            double d2 = 0;
            for (int k = 0; k < dim; k++) {
                double d = (double)emb[(size_t)i * dim + k] * info[i].norm - (double)ref[(size_t)r * dim + k] * ref_info[r].norm;
                d2 += d * d;
            }
            close += sqrt(d2) < match_distance;
        }
        matched += ref_faces > 0 && 2 * close >= ref_faces;
    }
    face_rates f = {n ? (double)found / n : NAN, ref_faces && n ? (double)matched / n : NAN};
    return f;
}

int fl_eval_run(fl_flux_model *m, fl_eval_encoder *enc, const fl_eval_config *c, fl_eval_result *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (check_config(m, c, err) != 0) return -1;
    const int A = c->n_adapters, P = c->n_prompts, S = c->n_seeds, per = P * S;
    const int W = c->width, H = c->height, D = fl_eval_encoder_dim(enc);
    const size_t px = (size_t)W * H * 3;
    int rc = 0;

    /* attach the adapters given as files */
    int set_of[FL_EVAL_MAX_ADAPTERS], attached[FL_EVAL_MAX_ADAPTERS];
    int n_attached = 0;
    for (int a = 0; a < A && rc == 0; a++) {
        const fl_eval_adapter *ad = &c->adapters[a];
        if (!ad->path) {
            set_of[a] = ad->set_id;
            continue;
        }
        fl_lora *lora = NULL;
        if (fl_lora_load_for_model(ad->path, m, &lora, err) != 0) {
            rc = fl_fail_prefix(err, "%s", ad->label);
            break;
        }
        if (lora->n_pairs == 0) rc = fl_fail(err, FL_EINVAL, "%s: no key adapts a module of this model", ad->label);
        else {
            int id = fl_flux_add_adapter(m, lora->pairs, lora->n_pairs, 1.0f, false, err);
            if (id < 0) rc = fl_fail_prefix(err, "%s", ad->label);
            else set_of[a] = attached[n_attached++] = id;
        }
        fl_lora_free(lora);
    }

    out->n_adapters = A;
    out->width = W;
    out->height = H;
    out->adapters = fl_xcalloc((size_t)A, sizeof *out->adapters);
    /* every request: adapter images first, then base images, adapter by adapter */
    const int n_req = A * per * (c->with_base ? 2 : 1);
    fl_sample_request *reqs = fl_xcalloc((size_t)n_req, sizeof *reqs);
    float **images = fl_xcalloc((size_t)n_req, sizeof *images);
    char **texts = fl_xcalloc((size_t)A * P, sizeof *texts);
    int r = 0;
    for (int a = 0; a < A && rc == 0; a++) {
        fl_eval_adapter_result *ar = &out->adapters[a];
        ar->n_images = per;
        ar->gen = images + r;
        for (int p = 0; p < P; p++) texts[a * P + p] = resolve(c->prompts[p], c->adapters[a].trigger);
        for (int k = 0; k < per; k++, r++) {
            reqs[r].prompt = texts[a * P + k / S];
            reqs[r].seed = c->seeds[k % S];
            reqs[r].guidance = c->guidance;
            reqs[r].adapters.n = 1;
            reqs[r].adapters.set_ids[0] = set_of[a];
            reqs[r].adapters.multipliers[0] = c->adapters[a].scale;
        }
        if (c->with_base) {
            ar->base = images + r;
            for (int k = 0; k < per; k++, r++) {
                reqs[r].prompt = texts[a * P + k / S];
                reqs[r].seed = c->seeds[k % S];
                reqs[r].guidance = c->guidance;
                reqs[r].adapters.n = 0;
            }
        }
    }
    for (int i = 0; i < n_req && rc == 0; i++) images[i] = fl_xmalloc(px * sizeof(float));
    /* generate in batches */
    fl_sample_hooks hooks = {before_step, (void *)c};
    progress(c, "generate", 0, n_req);
    for (int i0 = 0; i0 < n_req && rc == 0; i0 += c->batch) {
        int nb = n_req - i0 < c->batch ? n_req - i0 : c->batch;
        rc = fl_flux_sample_pixels_batch_hooked(m, W, H, c->steps, c->max_text_tokens, reqs + i0, nb, &hooks,
                                                images + i0, err);
        if (rc != 0 && err->code == FL_EUNAVAILABLE) rc = fl_fail(err, FL_EUNAVAILABLE, "stopped");
        if (rc == 0) progress(c, "generate", i0 + nb, n_req);
    }
    for (int k = 0; k < n_attached; k++) {
        fl_error e2 = {0};
        fl_flux_remove_adapter(m, attached[k], &e2);
    }

    /* embeddings: references of every subject, generations */
    const int n_subj = A + c->n_distractors;
    const fl_eval_refs **subj = fl_xcalloc((size_t)n_subj, sizeof *subj);
    for (int a = 0; a < A; a++) subj[a] = c->adapters[a].refs;
    for (int d = 0; d < c->n_distractors; d++) subj[A + d] = &c->distractors[d];
    float **subj_emb = fl_xcalloc((size_t)n_subj, sizeof *subj_emb);
    float **train_emb = fl_xcalloc((size_t)A, sizeof *train_emb);
    float *gen_emb = fl_xmalloc((size_t)(n_req ? n_req : 1) * D * sizeof(float));
    /* per-image facts (faces found, raw norms) for the generations and each adapter's subject */
    const float match_distance = fl_eval_encoder_match_distance(enc);
    const bool has_text = fl_eval_encoder_has_text(enc);
    fl_embed_info *gen_info = fl_xcalloc((size_t)(n_req ? n_req : 1), sizeof *gen_info);
    fl_embed_info **subj_info = fl_xcalloc((size_t)A, sizeof *subj_info);
    float *text_emb = has_text ? fl_xmalloc((size_t)A * P * D * sizeof(float)) : NULL;
    int embed_total = n_req, embed_done = 0;
    for (int k = 0; k < n_subj; k++) embed_total += subj[k]->n;
    if (rc == 0) progress(c, "embed", 0, embed_total);
    for (int k = 0; k < n_subj && rc == 0; k++) {
        subj_emb[k] = fl_xmalloc((size_t)subj[k]->n * D * sizeof(float));
        if (k < A) subj_info[k] = fl_xcalloc((size_t)subj[k]->n, sizeof *subj_info[k]);
        rc = fl_eval_encoder_embed(enc, subj[k]->images, subj[k]->n, subj_emb[k], k < A ? subj_info[k] : NULL, err);
        if (rc != 0) fl_fail_prefix(err, "references of %s", subj[k]->name);
        embed_done += subj[k]->n;
        progress(c, "embed", embed_done, embed_total);
    }
    for (int a = 0; a < A && rc == 0; a++) {
        const fl_eval_refs *t = c->adapters[a].train;
        if (!t || t == c->adapters[a].refs) continue;
        train_emb[a] = fl_xmalloc((size_t)t->n * D * sizeof(float));
        rc = fl_eval_encoder_embed(enc, t->images, t->n, train_emb[a], NULL, err);
    }
    if (rc == 0) rc = embed_generated(enc, images, n_req, W, H, gen_emb, gen_info, err);
    for (int i = 0; i < A * P && rc == 0 && has_text; i++) {
        rc = fl_eval_encoder_text(enc, texts[i], text_emb + (size_t)i * D, err);
        if (rc != 0) fl_fail_prefix(err, "text embedding of prompt %d", i % P + 1);
    }
    if (rc == 0) progress(c, "embed", embed_total, embed_total);

    /* scores */
    int *prompt_of = fl_xmalloc((size_t)per * sizeof(int));
    for (int k = 0; k < per; k++) prompt_of[k] = k / S;
    fl_eval_embeddings *se = fl_xcalloc((size_t)n_subj, sizeof *se);
    json_t *adapters_json = json_array();
    double sum_ret = 0, sum_ver = 0, sum_auc = 0, sum_base_ret = 0;
    int n_auc = 0;
    for (int a = 0; a < A && rc == 0; a++) {
        progress(c, "score", a, A);
        const fl_eval_adapter *ad = &c->adapters[a];
        fl_eval_adapter_result *ar = &out->adapters[a];
        /* subject 0 is the adapter's own; the others in their order */
        se[0] = (fl_eval_embeddings){subj_emb[a], subj[a]->n};
        int k2 = 1;
        for (int k = 0; k < n_subj; k++)
            if (k != a) se[k2++] = (fl_eval_embeddings){subj_emb[k], subj[k]->n};
        const int gen_off = (int)(ar->gen - images);
        fl_eval_score_input in = {.dim = D,
                                  .gen = {gen_emb + (size_t)gen_off * D, per},
                                  .base = {c->with_base ? gen_emb + (size_t)(ar->base - images) * D : NULL,
                                           c->with_base ? per : 0},
                                  .gen_prompt = prompt_of,
                                  .base_prompt = prompt_of,
                                  .n_prompts = P,
                                  .subjects = se,
                                  .n_subjects = n_subj,
                                  .train = train_emb[a] ? (fl_eval_embeddings){train_emb[a], ad->train->n}
                                                        : (fl_eval_embeddings){subj_emb[a], subj[a]->n},
                                  .bootstrap = c->bootstrap,
                                  .seed = c->bootstrap_seed + (uint64_t)a};
        rc = fl_eval_score(&in, &ar->scores, err);
        if (rc != 0) break;
        const fl_eval_scores *s = &ar->scores;
        const float *base_emb = c->with_base ? gen_emb + (size_t)(ar->base - images) * D : NULL;
        json_t *clip_t = json_null(), *base_clip_t = json_null();
        if (has_text) {
            const float *t = text_emb + (size_t)a * P * D;
            clip_t = num(text_cosine(gen_emb + (size_t)gen_off * D, per, S, t, D));
            if (base_emb) base_clip_t = num(text_cosine(base_emb, per, S, t, D));
        }
        json_t *face;
        if (match_distance > 0) {
            face_rates g = face_scores(gen_emb + (size_t)gen_off * D, gen_info + gen_off, per, subj_emb[a], subj_info[a],
                                       subj[a]->n, D, match_distance);
            int ref_faces = 0;
            for (int k = 0; k < subj[a]->n; k++) ref_faces += subj_info[a][k].face_found;
            face = json_pack("{s:b, s:f, s:i, s:o, s:o}", "applicable", 1, "match_distance", (double)match_distance,
                             "reference_faces", ref_faces, "detection_rate", num(g.detection), "match_rate",
                             num(g.match));
            if (base_emb) {
                const int base_off = (int)(ar->base - images);
                face_rates b = face_scores(base_emb, gen_info + base_off, per, subj_emb[a], subj_info[a], subj[a]->n, D,
                                           match_distance);
                json_object_set_new(face, "base", json_pack("{s:o, s:o}", "detection_rate", num(b.detection),
                                                            "match_rate", num(b.match)));
            }
        } else
            face = json_pack("{s:b}", "applicable", 0);
        /* subject names in the scored order */
        const char **names = fl_xcalloc((size_t)n_subj, sizeof *names);
        names[0] = subj[a]->name;
        k2 = 1;
        for (int k = 0; k < n_subj; k++)
            if (k != a) names[k2++] = subj[k]->name;
        json_t *conf = json_object();
        for (int k = 0; k < n_subj; k++) json_object_set_new(conf, names[k], json_integer(s->confusion[k]));
        json_t *imgs = json_array(), *bimgs = json_array();
        for (int i = 0; i < per; i++) {
            json_array_append_new(imgs, json_pack("{s:i, s:I, s:s, s:o, s:o}", "prompt", i / S, "seed",
                                                  (json_int_t)c->seeds[i % S], "nearest", names[s->gen_nearest[i]],
                                                  "similarity", num(s->gen_sim[i]), "max_train_cosine",
                                                  num(s->gen_max_train[i])));
            if (c->with_base)
                json_array_append_new(bimgs, json_pack("{s:i, s:I, s:s, s:o}", "prompt", i / S, "seed",
                                                       (json_int_t)c->seeds[i % S], "nearest", names[s->base_nearest[i]],
                                                       "similarity", num(s->base_sim[i])));
        }
        json_t *aj = json_pack(
            "{s:s, s:s, s:f, s:i, s:i, s:i, s:i, s:b, s:s, s:s,"
            " s:{s:o, s:o, s:o, s:o, s:o, s:o, s:o},"
            " s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o,"
            " s:{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o},"
            " s:o, s:o, s:o}",
            "adapter", ad->label, "trigger", ad->trigger, "scale", (double)ad->scale, "n_gen", s->n_gen, "n_base",
            s->n_base, "n_refs", s->n_refs, "n_distractors", n_subj - 1, "refs_in_training", ad->refs_in_training,
            "references", subj[a]->source, "subject", subj[a]->name,
            "identity_accuracy", "retrieval", num(s->retrieval), "retrieval_ci", ci(s->ci_retrieval), "verification",
            num(s->verification), "verification_ci", ci(s->ci_verification), "tau", num(s->tau), "auc", num(s->auc),
            "auc_ci", ci(s->ci_auc),
            "similarity", num(s->sim_gen), "similarity_ci", ci(s->ci_sim_gen), "ref_ceiling", num(s->ref_ceiling),
            "normalized_identity", num(s->normalized_identity), "diversity", num(s->diversity_gen), "diversity_ci",
            ci(s->ci_diversity_gen), "copy_rate", num(s->copy_rate), "copy_rate_ci", ci(s->ci_copy_rate), "clip_t",
            clip_t, "face", face,
            "base", "retrieval", num(s->base_retrieval), "retrieval_ci", ci(s->ci_base_retrieval), "pass_rate",
            num(s->base_pass), "similarity", num(s->sim_base), "similarity_ci", ci(s->ci_sim_base), "diversity",
            num(s->diversity_base), "copy_rate", num(s->base_copy_rate), "clip_t", base_clip_t,
            "confusion", conf, "images", imgs, "base_images", bimgs);
        FL_CHECKF(aj, "evaluation JSON");
        json_array_append_new(adapters_json, aj);
        free(names);
        sum_ret += s->retrieval;
        sum_base_ret += s->base_retrieval;
        sum_ver += s->verification;
        if (isfinite(s->auc)) {
            sum_auc += s->auc;
            n_auc++;
        }
    }
    if (rc == 0) {
        progress(c, "score", A, A);
        json_t *prompts = json_array(), *seeds = json_array(), *distr = json_array();
        for (int p = 0; p < P; p++) json_array_append_new(prompts, json_string(c->prompts[p]));
        for (int s = 0; s < S; s++) json_array_append_new(seeds, json_integer((json_int_t)c->seeds[s]));
        for (int d = 0; d < c->n_distractors; d++)
            json_array_append_new(distr, json_pack("{s:s, s:s, s:i}", "name", c->distractors[d].name, "source",
                                                   c->distractors[d].source, "images", c->distractors[d].n));
        out->json = json_pack(
            "{s:s, s:{s:s, s:s, s:s, s:i, s:i}, s:{s:s, s:s}, s:{s:i, s:i, s:i, s:f, s:i}, s:o, s:o, s:o, s:o,"
            " s:{s:i, s:o, s:o, s:o, s:o}, s:i}",
            "format", "flashlora.evaluation.v1", "encoder", "kind", fl_eval_encoder_kind(enc), "file",
            fl_eval_encoder_file(enc), "sha256", fl_eval_encoder_sha256(enc), "dim", D, "input_size",
            fl_eval_encoder_input_size(enc), "model", "file", c->model_label ? c->model_label : "", "sha256",
            c->model_sha256 ? c->model_sha256 : "", "sampler", "width", W, "height", H, "steps", c->steps,
            "guidance", (double)c->guidance, "max_text_tokens", c->max_text_tokens, "prompts", prompts, "seeds",
            seeds, "distractors", distr, "adapters", adapters_json, "summary", "adapters", A, "retrieval",
            num(sum_ret / A), "base_retrieval", c->with_base ? num(sum_base_ret / A) : json_null(), "verification",
            c->with_base ? num(sum_ver / A) : json_null(), "auc", n_auc ? num(sum_auc / n_auc) : json_null(),
            "bootstrap", c->bootstrap);
        FL_CHECKF(out->json, "evaluation JSON");
        adapters_json = NULL;
    }
    json_decref(adapters_json);
    free(se);
    free(prompt_of);
    for (int k = 0; k < n_subj; k++) free(subj_emb[k]);
    for (int a = 0; a < A; a++) free(train_emb[a]);
    free(subj_emb);
    free(train_emb);
    free(subj);
    free(gen_emb);
    free(gen_info);
    for (int a = 0; a < A; a++) free(subj_info[a]);
    free(subj_info);
    free(text_emb);
    for (int i = 0; i < A * P; i++) free(texts[i]);
    free(texts);
    free(reqs);
    out->images_all = images;
    out->n_images_all = n_req;
    if (rc != 0) {
        fl_eval_result_free(out);
        return -1;
    }
    return 0;
}

void fl_eval_result_free(fl_eval_result *r) {
    if (!r) return;
    for (int a = 0; a < r->n_adapters && r->adapters; a++) fl_eval_scores_clear(&r->adapters[a].scores);
    for (int i = 0; i < r->n_images_all; i++) free(r->images_all[i]);
    free(r->images_all);
    free(r->adapters);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}
