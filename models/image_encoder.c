/*
 * image_encoder.c — the encoder interface of models/image_encoder.h: the spec string, the wrapper
 * that normalizes every embedding, and the two transformer encoders (DINOv2, CLIP vision with
 * CLIP-T) over models/vision/vit.h and the CLIP text encoder of models/text. The face pipeline
 * lives in models/face; the built-in encoder in the evaluation layer.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/face/face.h"
#include "models/image_encoder.h"
#include "models/text/clip_text.h"
#include "models/text/tokenizers.h"
#include "models/text/weights.h"
#include "models/vision/vit.h"

struct fl_image_encoder {
    fl_image_encoder_info info;
    const fl_image_encoder_impl *impl;
    void *state;
};

fl_image_encoder *fl_image_encoder_wrap(const fl_image_encoder_info *info, const fl_image_encoder_impl *impl,
                                        void *state) {
    fl_image_encoder *e = fl_xcalloc(1, sizeof *e);
    e->info = *info;
    e->impl = impl;
    e->state = state;
    return e;
}

void fl_image_encoder_close(fl_image_encoder *enc) {
    if (!enc) return;
    if (enc->impl && enc->impl->free) enc->impl->free(enc->state);
    free(enc);
}

const fl_image_encoder_info *fl_image_encoder_get_info(const fl_image_encoder *enc) { return &enc->info; }
int fl_image_encoder_dim(const fl_image_encoder *enc) { return enc->info.dim; }
bool fl_image_encoder_has_text(const fl_image_encoder *enc) { return enc->info.text_dim > 0 && enc->impl->text; }

/* Normalizes v[0, n) in place (double accumulation); returns the norm (0 leaves zeros). */
static float normalize(float *v, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)v[i] * v[i];
    double norm = sqrt(s);
    if (norm > 0.0)
        for (int i = 0; i < n; i++) v[i] = (float)(v[i] / norm);
    return (float)norm;
}

int fl_image_encoder_embed(fl_image_encoder *enc, const fl_image *images, size_t n, float *out, fl_embed_info *info,
                           fl_error *err) {
    int D = enc->info.dim;
    for (size_t i = 0; i < n; i++) {
        const fl_image *im = &images[i];
        if (!im->pixels || im->width < 1 || im->height < 1)
            return fl_fail(err, FL_EINVAL, "image %zu has no pixels (%dx%d)", i, im->width, im->height);
    }
    if (n == 0) return 0;
    /* One call for all n images: an encoder runs them in batches of its own (the built-in ViT 64
     * per forward), each row computed as it would be alone. */
    fl_embed_info *inf = info ? info : fl_xcalloc(n, sizeof *inf);
    for (size_t i = 0; i < n; i++) inf[i] = (fl_embed_info){.face_found = true};
    int rc = enc->impl->embed(enc->state, images, n, out, inf, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        float *row = out + i * (size_t)D;
        int k = 0;
        while (k < D && isfinite(row[k])) k++;
        if (k < D) {
            rc = fl_fail(err, FL_EINVAL, "image %zu: the embedding is not finite", i);
            break;
        }
        inf[i].norm = normalize(row, D);
        if (!inf[i].face_found) {
            memset(row, 0, (size_t)D * sizeof *row);
            inf[i].norm = 0.0f;
        }
    }
    if (inf != info) free(inf);
    return rc;
}

int fl_image_encoder_text(fl_image_encoder *enc, const char *prompt, float *out, fl_error *err) {
    if (!fl_image_encoder_has_text(enc))
        return fl_fail(err, FL_EUNSUPPORTED, "the %s encoder has no text side (CLIP-T needs a full CLIPModel file)",
                       enc->info.kind);
    if (enc->impl->text(enc->state, prompt, out, err) != 0) return -1;
    normalize(out, enc->info.text_dim);
    return 0;
}

/* ---- DINOv2 and CLIP ------------------------------------------------------------------------- */

typedef struct vit_encoder {
    fl_ctx *ctx;
    fl_weight_files *w;
    fl_vit *vit;
    fl_image_preprocess pp;
    int size;
    float *pixels;
    /* CLIP-T */
    fl_clip_text *text;
    fl_clip_tokenizer *tok;
    float *text_proj; /* [dim, text hidden] */
    int text_hidden;
} vit_encoder;

static void vit_encoder_free(void *state) {
    vit_encoder *e = state;
    if (!e) return;
    fl_vit_free(e->vit);
    fl_clip_text_free(e->text);
    fl_clip_tokenizer_free(e->tok);
    fl_weight_files_close(e->w);
    free(e->text_proj);
    free(e->pixels);
    free(e);
}

static int vit_encoder_embed(void *state, const fl_image *images, size_t n, float *out, fl_embed_info *info,
                             fl_error *err) {
    vit_encoder *e = state;
    int D = fl_vit_dim(e->vit);
    for (size_t i = 0; i < n; i++) {
        if (fl_image_preprocess_run(&e->pp, &images[i], e->pixels, err) != 0 ||
            fl_vit_forward(e->vit, e->pixels, e->size, out + i * (size_t)D, err) != 0)
            return fl_fail_prefix(err, "image %zu", i);
        if (info) info[i].face_found = true;
    }
    return 0;
}

static int vit_encoder_text(void *state, const char *prompt, float *out, fl_error *err) {
    vit_encoder *e = state;
    size_t len = strlen(prompt); /* the tokenizer refuses a prompt too long or not UTF-8 */
    int32_t ids[FL_CLIP_MAX_LENGTH];
    int count = fl_clip_tokenize(e->tok, prompt, len, ids, FL_CLIP_MAX_LENGTH, fl_clip_tokenizer_eos(e->tok), err);
    if (count < 0) return -1;
    const fl_clip_params *tp = fl_clip_text_params(e->text);
    for (int i = 0; i < count; i++)
        if (ids[i] >= tp->vocab_size)
            return fl_fail(err, FL_EINVAL, "the tokenizer gives id %d but the text encoder has %d", ids[i],
                           tp->vocab_size);
    if (count > tp->max_positions) count = tp->max_positions;
    fl_ctx *ctx = e->ctx;
    int64_t shape[1] = {tp->hidden_size};
    fl_tensor pooled;
    if (fl_ctx_tensor_alloc(ctx, fl_ctx_storage_dtype(ctx), 1, shape, &pooled, err) != 0) return -1;
    fl_clip_text_forward(e->text, ids, count, NULL, &pooled);
    float *h = fl_xmalloc((size_t)tp->hidden_size * sizeof *h);
    fl_ctx_download_f32(ctx, h, &pooled, (size_t)tp->hidden_size);
    fl_ctx_tensor_free(ctx, &pooled);
    int P = fl_vit_dim(e->vit);
    for (int o = 0; o < P; o++) {
        double s = 0.0;
        for (int k = 0; k < e->text_hidden; k++) s += (double)e->text_proj[(size_t)o * e->text_hidden + k] * h[k];
        out[o] = (float)s;
    }
    free(h);
    return 0;
}

static const fl_image_encoder_impl VIT_IMPL = {vit_encoder_embed, vit_encoder_text, vit_encoder_free};
static const fl_image_encoder_impl VIT_IMPL_NO_TEXT = {vit_encoder_embed, NULL, vit_encoder_free};

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The CLIP tokenizer beside the weights (tokenizer/ or the folder itself), else the built-in one. */
static int open_tokenizer(const char *dir, fl_clip_tokenizer **tok, fl_error *err) {
    const char *files[] = {"tokenizer/vocab.json", "tokenizer/tokenizer.json", "vocab.json", "tokenizer.json"};
    const char *dirs[] = {"tokenizer", "tokenizer", "", ""};
    char path[4200];
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        struct stat st;
        if (stat(path, &st) == 0) {
            snprintf(path, sizeof path, "%s%s%s", dir, dirs[i][0] ? "/" : "", dirs[i]);
            return fl_clip_tokenizer_load(path, tok, err);
        }
    }
    return fl_clip_tokenizer_builtin(tok, err);
}

static int open_text_side(vit_encoder *e, fl_error *err) {
    size_t nh = 0;
    const fl_tensor_header *h = fl_weight_files_headers(e->w, &nh);
    const fl_vit_params *vp = fl_vit_get_params(e->vit);
    const fl_tensor_header *proj = NULL;
    bool has_text = false;
    for (size_t i = 0; i < nh; i++) {
        const char *s = strstr(h[i].name, "text_projection.weight");
        if (s && (s == h[i].name || s[-1] == '.')) proj = &h[i];
        if (strstr(h[i].name, "text_model.embeddings.token_embedding.weight")) has_text = true;
    }
    if (!proj || !has_text || !vp->projection_dim) return 0; /* no text side: fine */
    if (fl_clip_text_load(e->ctx, e->w, NULL, &e->text, err) != 0) return -1;
    const fl_clip_params *tp = fl_clip_text_params(e->text);
    if (proj->ndim != 2 || proj->shape[0] != vp->projection_dim || proj->shape[1] != tp->hidden_size)
        return fl_fail(err, FL_EINVAL, "tensor '%s' is not [%d, %d]", proj->name, vp->projection_dim, tp->hidden_size);
    e->text_hidden = tp->hidden_size;
    size_t n = (size_t)vp->projection_dim * tp->hidden_size;
    e->text_proj = fl_xmalloc(n * sizeof(float));
    if (fl_weight_files_read_f32(e->w, proj->name, e->text_proj, n, err) != 0) return -1;
    if (open_tokenizer(fl_weight_files_dir(e->w), &e->tok, err) != 0) return -1;
    return 0;
}

static int open_vit(fl_ctx *ctx, const char *kind, const char *path, fl_image_encoder **out, fl_error *err) {
    vit_encoder *e = fl_xcalloc(1, sizeof *e);
    e->ctx = ctx;
    if (fl_weight_files_open(path, &e->w, err) != 0) {
        vit_encoder_free(e);
        return -1;
    }
    bool want_clip = !strcmp(kind, "clip");
    if (fl_vit_load(ctx, e->w, NULL, &e->vit, err) != 0) {
        vit_encoder_free(e);
        return fl_fail_prefix(err, "%s", path);
    }
    const fl_vit_params *p = fl_vit_get_params(e->vit);
    bool is_clip = p->kind == FL_VIT_CLIP;
    if (is_clip != want_clip) {
        vit_encoder_free(e);
        return fl_fail(err, FL_EINVAL, "%s: the weights are a %s model, not %s (use %s:PATH)", path,
                       is_clip ? "CLIP vision" : "DINOv2", want_clip ? "CLIP" : "DINOv2", is_clip ? "clip" : "dinov2");
    }
    /* CLIP runs at its native size; DINOv2 at 224 (the protocol's size; positions resized) unless
     * its native grid is smaller. */
    e->size = p->kind == FL_VIT_CLIP ? p->native_size : (p->native_size < 224 ? p->native_size : 224);
    e->size -= e->size % p->patch_size;
    e->pp = p->kind == FL_VIT_CLIP ? fl_image_preprocess_clip(e->size) : fl_image_preprocess_dinov2(e->size);
    e->pixels = fl_xmalloc((size_t)3 * e->size * e->size * sizeof(float));
    if (p->kind == FL_VIT_CLIP && open_text_side(e, err) != 0) {
        vit_encoder_free(e);
        return fl_fail_prefix(err, "%s: text side", path);
    }
    fl_image_encoder_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.kind, sizeof info.kind, "%s", want_clip ? "clip" : "dinov2");
    snprintf(info.description, sizeof info.description, "%s ViT hidden %d, %d layers, %d heads, patch %d, %dx%d%s",
             want_clip ? "CLIP vision" : "DINOv2", p->hidden_size, p->num_layers, p->num_heads, p->patch_size, e->size,
             e->size, e->text ? ", with text side" : "");
    fl_weight_files_fingerprint(e->w, info.fingerprint);
    info.dim = fl_vit_dim(e->vit);
    info.text_dim = e->text ? info.dim : 0;
    info.input_size = e->size;
    *out = fl_image_encoder_wrap(&info, e->text ? &VIT_IMPL : &VIT_IMPL_NO_TEXT, e);
    return 0;
}

/* ---- the spec -------------------------------------------------------------------------------- */

int fl_image_encoder_open(fl_ctx *ctx, const char *spec, fl_image_encoder **out, fl_error *err) {
    *out = NULL;
    if (!spec || !*spec) return fl_fail(err, FL_EINVAL, "no encoder given (dinov2:PATH, clip:PATH, face:DIR or builtin)");
    const char *colon = strchr(spec, ':');
    size_t kl = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *arg = colon ? colon + 1 : NULL;
    if (kl == 6 && !strncmp(spec, "dinov2", 6)) {
        if (!arg || !*arg) return fl_fail(err, FL_EINVAL, "dinov2 needs a path: dinov2:PATH");
        return open_vit(ctx, "dinov2", arg, out, err);
    }
    if (kl == 4 && !strncmp(spec, "clip", 4)) {
        if (!arg || !*arg) return fl_fail(err, FL_EINVAL, "clip needs a path: clip:PATH");
        return open_vit(ctx, "clip", arg, out, err);
    }
    if (kl == 4 && !strncmp(spec, "face", 4)) {
        char dir[4096];
        if (arg && *arg) {
            snprintf(dir, sizeof dir, "%s", arg);
        } else if (fl_face_models_default_dir(dir, sizeof dir) != 0) {
            return fl_fail(err, FL_ENOTFOUND, "face models not found: give face:DIR, set FLASHLORA_FACE_MODELS, or "
                                              "run scripts/install-face-models.sh");
        }
        if (!is_dir(dir)) return fl_fail(err, FL_ENOTFOUND, "%s: not a folder of face models", dir);
        return fl_face_encoder_open(ctx, dir, out, err);
    }
    if (kl == 7 && !strncmp(spec, "builtin", 7)) return fl_builtin_encoder_open(ctx, arg && *arg ? arg : NULL, out, err);
    return fl_fail(err, FL_EINVAL, "unknown encoder '%.*s' (dinov2:PATH, clip:PATH, face:DIR or builtin)",
                   (int)(kl > 40 ? 40 : kl), spec);
}
