/*
 * pipeline.c — the model a user runs (see pipeline.h): finding its files, the transformer with
 * its text side and image side for both kinds (pixels; FLUX.1 with T5 + CLIP and the
 * autoencoder), the prompt-embedding cache, and generation of a batch down to float images.
 */
#include "models/pipeline.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/rng.h"
#include "core/sha256.h"
#include "kernels/ops.h"
#include "models/codec_pixels.h"
#include "models/flux_internal.h"
#include "models/text_hash.h"
#include "models/weights.h"
#include "models/ae.h"
#include "models/text/clip_text.h"
#include "models/text/t5_encoder.h"
#include "models/text/text_encoders.h"

#define DEFAULT_PROMPT_CACHE ((size_t)256 << 20)

/* One cached prompt embedding. */
typedef struct prompt_entry {
    char *prompt;
    int text_tokens;
    float *txt, *y;
    size_t bytes;
    uint64_t used; /* LRU clock */
} prompt_entry;

struct fl_pipeline {
    fl_ctx *ctx;
    fl_pipeline_info info;
    fl_pipeline_paths paths;
    fl_flux_model *model;
    bool owns_model;
    char fingerprint[65];
    char text_fingerprint[65];
    char ae_fingerprint[65];
    fl_text_encoders *text;
    fl_ae *ae;
    prompt_entry *cache;
    size_t n_cache, cache_bytes, cache_budget;
    uint64_t clock, hits, misses;
};

/* ---- files ---------------------------------------------------------------------------------------- */

static bool is_file(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

static bool is_dir(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISDIR(s.st_mode);
}

static int copy_path(char *dst, const char *src, const char *what, fl_error *err) {
    if (strlen(src) >= FL_PIPELINE_PATH_MAX) return fl_fail(err, FL_EINVAL, "%s: path too long", what);
    snprintf(dst, FL_PIPELINE_PATH_MAX, "%s", src);
    return 0;
}

/* dir/name when it exists as a file (want_dir false) or folder (true). */
static bool try_child(const char *dir, const char *name, bool want_dir, char *out) {
    char p[FL_PIPELINE_PATH_MAX + 256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (strlen(p) >= FL_PIPELINE_PATH_MAX || !(want_dir ? is_dir(p) : is_file(p))) return false;
    snprintf(out, FL_PIPELINE_PATH_MAX, "%s", p);
    return true;
}

/* The first file in dir whose name starts with prefix and ends in .safetensors (sorted by name). */
static bool try_pattern(const char *dir, const char *prefix, char *out) {
    DIR *d = opendir(dir);
    if (!d) return false;
    char best[256] = "";
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name), pl = strlen(prefix);
        if (n >= sizeof best || n < pl + 12 || strncmp(e->d_name, prefix, pl) ||
            strcmp(e->d_name + n - 12, ".safetensors"))
            continue;
        if (!best[0] || strcmp(e->d_name, best) < 0) snprintf(best, sizeof best, "%s", e->d_name);
    }
    closedir(d);
    return best[0] && try_child(dir, best, false, out);
}

static int resolve(const fl_pipeline_files *f, fl_pipeline_paths *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    const char *given[4] = {f->transformer, f->ae, f->clip, f->t5};
    char *slot[4] = {out->transformer, out->ae, out->clip, out->t5};
    static const char *const what[4] = {"--transformer", "--ae", "--clip", "--t5"};
    for (int k = 0; k < 4; k++) {
        if (!given[k]) continue;
        if (!is_file(given[k]) && !is_dir(given[k])) return fl_fail(err, FL_ENOTFOUND, "%s: not found", given[k]);
        if (copy_path(slot[k], given[k], what[k], err) != 0) return -1;
    }
    if (f->clip_tokenizer && copy_path(out->clip_tokenizer, f->clip_tokenizer, "tokenizer", err) != 0) return -1;
    if (f->t5_tokenizer && copy_path(out->t5_tokenizer, f->t5_tokenizer, "tokenizer_2", err) != 0) return -1;
    const char *m = f->model;
    if (!m) {
        if (!out->transformer[0]) return fl_fail(err, FL_EINVAL, "no model given (a folder or a transformer file)");
        return 0;
    }
    if (is_file(m)) {
        if (!out->transformer[0] && copy_path(out->transformer, m, "--model", err) != 0) return -1;
        return 0;
    }
    if (!is_dir(m)) return fl_fail(err, FL_ENOTFOUND, "%s: not found", m);
    if (strlen(m) > FL_PIPELINE_PATH_MAX - 300) return fl_fail(err, FL_EINVAL, "--model: path too long");
    if (!out->transformer[0] && !try_child(m, "flux1-dev.safetensors", false, out->transformer) &&
        !try_child(m, "flux1-schnell.safetensors", false, out->transformer) &&
        !try_child(m, "transformer", true, out->transformer))
        return fl_fail(err, FL_ENOTFOUND, "%s: no transformer (flux1-dev.safetensors, flux1-schnell.safetensors or "
                                          "transformer/)", m);
    if (!out->ae[0] && !try_child(m, "ae.safetensors", false, out->ae)) try_child(m, "vae", true, out->ae);
    if (!out->clip[0] && !try_child(m, "text_encoder", true, out->clip))
        try_child(m, "clip_l.safetensors", false, out->clip);
    if (!out->t5[0] && !try_child(m, "text_encoder_2", true, out->t5)) try_pattern(m, "t5xxl", out->t5);
    if (!out->clip_tokenizer[0]) try_child(m, "tokenizer", true, out->clip_tokenizer);
    if (!out->t5_tokenizer[0]) try_child(m, "tokenizer_2", true, out->t5_tokenizer);
    return 0;
}

/* The model's folder for messages: --model, else the transformer's path. */
static const char *where(const fl_pipeline_files *f, const fl_pipeline_paths *p) {
    return f->model ? f->model : p->transformer;
}

static void fill_info(fl_pipeline_info *info, const fl_flux_params *fp) {
    memset(info, 0, sizeof *info);
    info->flux = *fp;
    int patch = fl_flux_pixel_patch(fp);
    if (patch > 0) {
        info->kind = FL_PIPELINE_PIXELS;
        info->variant = "pixels";
        info->patch = patch;
        info->default_steps = 20;
        info->default_guidance = 1.0f;
        info->shift = true;
        return;
    }
    bool dev = fp->guidance_embed;
    info->kind = FL_PIPELINE_FLUX1;
    info->variant = dev ? "dev" : "schnell";
    info->patch = 16;
    info->text_tokens = dev ? 512 : 256;
    info->default_steps = dev ? 28 : 4;
    info->default_guidance = dev ? 3.5f : 0.0f;
    info->shift = dev;
}

/* The transformer's parameters: metadata, else config.json beside a diffusers folder (its rotary
 * axes), else the shapes. */
static int transformer_params(const fl_weights *w, const char *path, fl_flux_params *out, fl_error *err) {
    int rc = fl_flux_params_of_weights(w, out, err);
    if (rc == 0 || !is_dir(path)) return rc;
    /* A diffusers folder whose head dim is not FLUX.1's: its config.json names the axes. */
    char cfg[FL_PIPELINE_PATH_MAX + 32];
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    if (!is_file(cfg)) return rc;
    fl_error inner = {0};
    size_t n = 0;
    fl_tensor_header *h = fl_weights_headers(w, &n);
    fl_family_info fam;
    memset(&fam, 0, sizeof fam);
    /* Detection fills everything but the axes before it complains about them. */
    fl_detect_family(h, n, &fam, &inner);
    free(h);
    if (fam.family != FL_FAMILY_FLUX) return rc;
    json_error_t jerr;
    json_t *root = json_load_file(cfg, JSON_REJECT_DUPLICATES, &jerr);
    json_t *axes = root ? json_object_get(root, "axes_dims_rope") : NULL;
    int a[FL_FLUX_MAX_AXES], na = 0;
    if (json_is_array(axes) && json_array_size(axes) <= FL_FLUX_MAX_AXES) {
        for (size_t i = 0; i < json_array_size(axes); i++) {
            json_t *v = json_array_get(axes, i);
            if (!json_is_integer(v) || json_integer_value(v) < 2 || json_integer_value(v) > 4096) {
                na = 0;
                break;
            }
            a[na++] = (int)json_integer_value(v);
        }
    }
    json_decref(root);
    if (na < 1) return rc;
    fl_flux_params p = fam.flux;
    int head = 0;
    for (int i = 0; i < na; i++) head += a[i];
    const fl_weight *qn = fl_weights_find(w, "double_blocks.0.img_attn.norm.query_norm.scale");
    if (!qn) qn = fl_weights_find(w, "single_blocks.0.norm.query_norm.scale");
    if (!qn || head != qn->shape[0] || head <= 0) return rc;
    p.num_heads = p.hidden_size / head;
    p.n_axes = na;
    for (int i = 0; i < na; i++) p.axes_dim[i] = a[i];
    p.theta = 10000;
    if (fl_flux_params_validate(&p, err) != 0) return -1;
    *out = p;
    return 0;
}

int fl_pipeline_describe(const fl_pipeline_files *files, fl_pipeline_paths *paths, fl_pipeline_info *info,
                         fl_error *err) {
    if (resolve(files, paths, err) != 0) return -1;
    fl_weights *w = NULL;
    if (fl_flux_open_weights(paths->transformer, &w, err) != 0) return -1;
    fl_flux_params fp;
    int rc = transformer_params(w, paths->transformer, &fp, err);
    fl_weights_close(w);
    if (rc != 0) return fl_fail_prefix(err, "%s", paths->transformer);
    fill_info(info, &fp);
    if (info->kind == FL_PIPELINE_PIXELS) return 0;
    const char *m = where(files, paths);
    if (!paths->ae[0])
        return fl_fail(err, FL_ENOTFOUND, "%s: no autoencoder (ae.safetensors or vae/; or give --ae FILE)", m);
    if (!paths->clip[0])
        return fl_fail(err, FL_ENOTFOUND, "%s: no CLIP-L text encoder (text_encoder/ or clip_l.safetensors; or give "
                                          "--clip FILE)", m);
    if (!paths->t5[0])
        return fl_fail(err, FL_ENOTFOUND, "%s: no T5 text encoder (text_encoder_2/ or t5xxl*.safetensors; or give "
                                          "--t5 FILE)", m);
    if (fp.in_channels % 4 || fp.out_channels != fp.in_channels)
        return fl_fail(err, FL_EINVAL, "%s: a latent transformer takes and gives 2 x 2 packed latents (in_channels %d, "
                                       "out_channels %d)", paths->transformer, fp.in_channels, fp.out_channels);
    return 0;
}

int fl_pipeline_base_id(const fl_pipeline_paths *paths, const fl_pipeline_info *info, char hex[65], fl_error *err) {
    if (info->kind == FL_PIPELINE_PIXELS && is_file(paths->transformer))
        return fl_sha256_file(paths->transformer, hex, err);
    fl_weights *w = NULL;
    if (fl_flux_open_weights(paths->transformer, &w, err) != 0) return -1;
    fl_weights_fingerprint(w, hex);
    fl_weights_close(w);
    return 0;
}

size_t fl_pipeline_costs_ae(const fl_pipeline_costs *c, bool decode, int width, int height) {
    double px = (double)width * (double)height;
    double v = decode ? (double)c->ae_decode_fixed + c->ae_decode_per_pixel * px
                      : (double)c->ae_encode_fixed + c->ae_encode_per_pixel * px;
    return v > 0 ? (size_t)v : 0;
}

int fl_pipeline_estimate_costs(const fl_pipeline_paths *paths, const fl_pipeline_info *info, fl_device_kind device,
                               int threads, fl_pipeline_costs *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (info->kind == FL_PIPELINE_PIXELS) return 0;
    /* Text encoders: their parameters from the headers, their memory from planning mode. */
    const char *files[2] = {paths->clip, paths->t5};
    for (int k = 0; k < 2; k++) {
        fl_weights *w = NULL;
        if (fl_weights_open(files[k], &w, err) != 0) return -1;
        size_t n = 0;
        fl_tensor_header *h = fl_weights_headers(w, &n);
        char prefix[FL_TEXT_PREFIX_MAX];
        size_t wb = 0, ab = 0;
        int rc;
        if (k == 0) {
            fl_clip_params cp;
            rc = fl_clip_params_infer(h, n, &cp, prefix, err);
            if (rc == 0) fl_clip_text_memory(&cp, 77, device, &wb, &ab);
        } else {
            fl_t5_params tp;
            rc = fl_t5_params_infer(h, n, &tp, prefix, err);
            if (rc == 0) fl_t5_encoder_memory(&tp, info->text_tokens, device, &wb, &ab);
        }
        free(h);
        fl_weights_close(w);
        if (rc != 0) return fl_fail_prefix(err, "%s", files[k]);
        out->text_weights += wb;
        if (ab > out->text_activations) out->text_activations = ab; /* one encoder runs at a time */
    }
    /* The autoencoder at two sizes: weights, and the pass as a line through them. */
    fl_weights *w = NULL;
    if (fl_weights_open(paths->ae, &w, err) != 0) return -1;
    size_t n = 0;
    fl_tensor_header *h = fl_weights_headers(w, &n);
    fl_ae_source src;
    int rc = fl_ae_detect(h, n, &src, err);
    free(h);
    fl_weights_close(w);
    if (rc != 0) return fl_fail_prefix(err, "%s", paths->ae);
    for (int decode = 0; decode < 2; decode++) {
        fl_ae_memory a, b;
        if (fl_ae_estimate_memory(&src.params, device, FL_AE_BOTH, decode, 256, 256, threads, &a, err) != 0 ||
            fl_ae_estimate_memory(&src.params, device, FL_AE_BOTH, decode, 512, 512, threads, &b, err) != 0)
            return -1;
        out->ae_weights = a.weights;
        size_t pa = a.total - a.weights, pb = b.total - b.weights;
        double slope = ((double)pb - (double)pa) / (512.0 * 512.0 - 256.0 * 256.0);
        double fixed = (double)pa - slope * 256.0 * 256.0;
        if (decode) out->ae_decode_per_pixel = slope, out->ae_decode_fixed = fixed > 0 ? (size_t)fixed : 0;
        else out->ae_encode_per_pixel = slope, out->ae_encode_fixed = fixed > 0 ? (size_t)fixed : 0;
    }
    return 0;
}

/* ---- building ------------------------------------------------------------------------------------- */

static fl_pipeline *pipeline_new(fl_ctx *ctx) {
    fl_pipeline *p = fl_xcalloc(1, sizeof *p);
    p->ctx = ctx;
    p->cache_budget = DEFAULT_PROMPT_CACHE;
    return p;
}

int fl_pipeline_open(fl_ctx *ctx, const fl_pipeline_files *files, fl_pipeline **out, fl_error *err) {
    *out = NULL;
    fl_pipeline *p = pipeline_new(ctx);
    p->owns_model = true;
    int rc = fl_pipeline_describe(files, &p->paths, &p->info, err);
    fl_weights *w = NULL;
    if (rc == 0) rc = fl_flux_open_weights(p->paths.transformer, &w, err);
    if (rc == 0) {
        fl_weights_fingerprint(w, p->fingerprint);
        rc = fl_flux_load_weights(ctx, w, &p->info.flux, &p->model, err);
        if (rc != 0) fl_fail_prefix(err, "%s", p->paths.transformer);
    }
    fl_weights_close(w);
    if (rc == 0 && p->info.kind == FL_PIPELINE_FLUX1) {
        fl_text_encoders_files tf = {p->paths.clip, p->paths.t5, p->paths.clip_tokenizer[0] ? p->paths.clip_tokenizer : NULL,
                                     p->paths.t5_tokenizer[0] ? p->paths.t5_tokenizer : NULL, p->info.text_tokens};
        rc = fl_text_encoders_load(ctx, &tf, &p->text, err);
        if (rc == 0 && (fl_text_encoders_context_dim(p->text) != p->info.flux.context_in_dim ||
                        fl_text_encoders_vec_dim(p->text) != p->info.flux.vec_in_dim))
            rc = fl_fail(err, FL_EINVAL, "the text encoders give %d-wide rows and a %d-wide pooled vector; the "
                                         "transformer takes %d and %d", fl_text_encoders_context_dim(p->text),
                         fl_text_encoders_vec_dim(p->text), p->info.flux.context_in_dim, p->info.flux.vec_in_dim);
        if (rc == 0) snprintf(p->text_fingerprint, sizeof p->text_fingerprint, "%.64s", fl_text_encoders_fingerprint(p->text));
        if (rc == 0) rc = fl_ae_load(ctx, p->paths.ae, FL_AE_BOTH, &p->ae, err);
        if (rc == 0 && fl_ae_token_channels(fl_ae_get_params(p->ae)) != p->info.flux.in_channels)
            rc = fl_fail(err, FL_EINVAL, "%s: the autoencoder's tokens have %d channels; the transformer takes %d",
                         p->paths.ae, fl_ae_token_channels(fl_ae_get_params(p->ae)), p->info.flux.in_channels);
        if (rc == 0 && fl_ae_downscale(fl_ae_get_params(p->ae)) != 8)
            rc = fl_fail(err, FL_EINVAL, "%s: the autoencoder scales images by %d, not 8", p->paths.ae,
                         fl_ae_downscale(fl_ae_get_params(p->ae)));
        fl_weights *aw = NULL;
        if (rc == 0 && fl_weights_open(p->paths.ae, &aw, NULL) == 0) fl_weights_fingerprint(aw, p->ae_fingerprint);
        else if (rc == 0) fl_sha256_hex(p->paths.ae, strlen(p->paths.ae), p->ae_fingerprint);
        fl_weights_close(aw);
    }
    if (rc != 0) {
        fl_pipeline_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

int fl_pipeline_wrap(fl_flux_model *m, fl_pipeline **out, fl_error *err) {
    *out = NULL;
    const fl_flux_params *fp = fl_flux_get_params(m);
    if (fl_flux_pixel_patch(fp) == 0)
        return fl_fail(err, FL_EUNSUPPORTED, "only a pixel-space model can be used without its pipeline files");
    fl_pipeline *p = pipeline_new(fl_flux_get_ctx(m));
    fill_info(&p->info, fp);
    p->model = m;
    *out = p;
    return 0;
}

static void cache_clear(fl_pipeline *p) {
    for (size_t i = 0; i < p->n_cache; i++) {
        free(p->cache[i].prompt);
        free(p->cache[i].txt);
        free(p->cache[i].y);
    }
    free(p->cache);
    p->cache = NULL;
    p->n_cache = 0;
    p->cache_bytes = 0;
}

void fl_pipeline_free(fl_pipeline *p) {
    if (!p) return;
    if (p->owns_model) fl_flux_free(p->model);
    fl_text_encoders_free(p->text);
    fl_ae_free(p->ae);
    cache_clear(p);
    free(p);
}

void fl_pipeline_release(fl_pipeline *p, unsigned parts) {
    if ((parts & FL_PIPELINE_TEXT) && p->text) {
        fl_text_encoders_free(p->text);
        p->text = NULL;
    }
    if ((parts & FL_PIPELINE_AE_ENCODER) && p->ae && (fl_ae_parts(p->ae) & FL_AE_ENCODER))
        fl_ae_release(p->ae, FL_AE_ENCODER);
}

const fl_pipeline_info *fl_pipeline_get_info(const fl_pipeline *p) {
    return &p->info;
}

fl_flux_model *fl_pipeline_model(fl_pipeline *p) {
    return p->model;
}

fl_ctx *fl_pipeline_ctx(const fl_pipeline *p) {
    return p->ctx;
}

const char *fl_pipeline_fingerprint(const fl_pipeline *p) {
    return p->fingerprint;
}

const char *fl_pipeline_text_fingerprint(const fl_pipeline *p) {
    return p->text_fingerprint;
}

const char *fl_pipeline_ae_fingerprint(const fl_pipeline *p) {
    return p->ae_fingerprint;
}

int fl_pipeline_text_tokens(const fl_pipeline *p, int requested) {
    return p->info.kind == FL_PIPELINE_FLUX1 ? p->info.text_tokens : requested;
}

int fl_pipeline_context_dim(const fl_pipeline *p) {
    return p->info.flux.context_in_dim;
}

int fl_pipeline_vec_dim(const fl_pipeline *p) {
    return p->info.flux.vec_in_dim;
}

int64_t fl_pipeline_image_tokens(const fl_pipeline *p, int width, int height) {
    return (int64_t)(width / p->info.patch) * (height / p->info.patch);
}

int fl_pipeline_token_channels(const fl_pipeline *p) {
    return p->info.flux.in_channels;
}

int fl_pipeline_check_size(const fl_pipeline *p, int width, int height, fl_error *err) {
    int q = p->info.patch;
    if (width < q || height < q || width % q || height % q || width > 4096 || height > 4096)
        return fl_fail(err, FL_EINVAL, "size %dx%d: width and height must be positive multiples of %d, at most 4096",
                       width, height, q);
    return 0;
}

/* ---- prompts -------------------------------------------------------------------------------------- */

void fl_pipeline_set_prompt_cache(fl_pipeline *p, size_t bytes) {
    p->cache_budget = bytes;
    if (bytes == 0) cache_clear(p);
}

void fl_pipeline_prompt_cache_stats(const fl_pipeline *p, uint64_t *hits, uint64_t *misses) {
    if (hits) *hits = p->hits;
    if (misses) *misses = p->misses;
}

static void cache_put(fl_pipeline *p, const char *prompt, int lt, const float *txt, const float *y) {
    size_t ntxt = (size_t)lt * (size_t)fl_pipeline_context_dim(p), ny = (size_t)fl_pipeline_vec_dim(p);
    size_t bytes = (ntxt + ny) * sizeof(float) + strlen(prompt) + 64;
    if (bytes > p->cache_budget) return;
    while (p->n_cache && p->cache_bytes + bytes > p->cache_budget) { /* evict the least recently used */
        size_t lru = 0;
        for (size_t i = 1; i < p->n_cache; i++)
            if (p->cache[i].used < p->cache[lru].used) lru = i;
        p->cache_bytes -= p->cache[lru].bytes;
        free(p->cache[lru].prompt), free(p->cache[lru].txt), free(p->cache[lru].y);
        p->cache[lru] = p->cache[--p->n_cache];
    }
    p->cache = fl_xrealloc(p->cache, (p->n_cache + 1) * sizeof *p->cache);
    prompt_entry *e = &p->cache[p->n_cache++];
    e->prompt = fl_xstrdup(prompt);
    e->text_tokens = lt;
    e->txt = fl_xmalloc(ntxt * sizeof(float));
    e->y = fl_xmalloc((ny ? ny : 1) * sizeof(float));
    memcpy(e->txt, txt, ntxt * sizeof(float));
    memcpy(e->y, y, ny * sizeof(float));
    e->bytes = bytes;
    e->used = ++p->clock;
    p->cache_bytes += bytes;
}

int fl_pipeline_encode_prompt(fl_pipeline *p, const char *prompt, int text_tokens, float *txt, float *y,
                              fl_error *err) {
    if (!prompt) prompt = "";
    int lt = fl_pipeline_text_tokens(p, text_tokens);
    if (lt != text_tokens || lt < 1 || lt > 512)
        return fl_fail(err, FL_EINVAL, "text length %d: this model takes %d", text_tokens, lt);
    size_t ntxt = (size_t)lt * (size_t)fl_pipeline_context_dim(p), ny = (size_t)fl_pipeline_vec_dim(p);
    for (size_t i = 0; i < p->n_cache; i++) {
        prompt_entry *e = &p->cache[i];
        if (e->text_tokens != lt || strcmp(e->prompt, prompt)) continue;
        memcpy(txt, e->txt, ntxt * sizeof(float));
        memcpy(y, e->y, ny * sizeof(float));
        e->used = ++p->clock;
        p->hits++;
        return 0;
    }
    p->misses++;
    if (p->info.kind == FL_PIPELINE_PIXELS) {
        fl_text_hash_encode(prompt, lt, (int)fl_pipeline_context_dim(p), (int)ny, txt, y);
        return 0; /* the hash is cheaper than a cache lookup: nothing to keep */
    }
    if (!p->text) return fl_fail(err, FL_EINVAL, "the text encoders were released and this prompt is not cached");
    if (fl_text_encoders_encode_host(p->text, prompt, txt, y, err) != 0) return -1;
    cache_put(p, prompt, lt, txt, y);
    return 0;
}

/* ---- images --------------------------------------------------------------------------------------- */

int fl_pipeline_encode_image(fl_pipeline *p, const float *image, int width, int height, float *tokens,
                             fl_error *err) {
    if (fl_pipeline_check_size(p, width, height, err) != 0) return -1;
    if (p->info.kind == FL_PIPELINE_PIXELS) {
        fl_pixels_pack(image, height, width, p->info.patch, tokens);
        return 0;
    }
    if (!p->ae || !(fl_ae_parts(p->ae) & FL_AE_ENCODER))
        return fl_fail(err, FL_EINVAL, "the autoencoder's encoder was released");
    size_t hw = (size_t)width * (size_t)height;
    float *chw = fl_xmalloc(hw * 3 * sizeof(float));
    for (size_t i = 0; i < hw; i++)
        for (int c = 0; c < 3; c++) chw[(size_t)c * hw + i] = image[i * 3 + (size_t)c];
    fl_dtype storage = fl_ctx_storage_dtype(p->ctx);
    int64_t s_img[4] = {1, 3, height, width};
    int64_t s_tok[3] = {1, fl_pipeline_image_tokens(p, width, height), fl_pipeline_token_channels(p)};
    fl_tensor d_img, d_tok;
    int rc = fl_ctx_tensor_alloc(p->ctx, storage, 4, s_img, &d_img, err);
    if (rc == 0 && fl_ctx_tensor_alloc(p->ctx, storage, 3, s_tok, &d_tok, err) != 0) {
        fl_ctx_tensor_free(p->ctx, &d_img);
        rc = -1;
    }
    if (rc == 0) {
        fl_ctx_upload_f32(p->ctx, &d_img, chw, hw * 3);
        rc = fl_ae_encode(p->ae, &d_img, &d_tok, err);
        if (rc == 0) fl_ctx_download_f32(p->ctx, tokens, &d_tok, (size_t)(s_tok[1] * s_tok[2]));
        fl_ctx_tensor_free(p->ctx, &d_img);
        fl_ctx_tensor_free(p->ctx, &d_tok);
    }
    free(chw);
    return rc;
}

int fl_pipeline_decode(fl_pipeline *p, const float *tokens, int width, int height, float *image_chw, fl_error *err) {
    if (fl_pipeline_check_size(p, width, height, err) != 0) return -1;
    size_t hw = (size_t)width * (size_t)height;
    if (p->info.kind == FL_PIPELINE_PIXELS) {
        float *hwc = fl_xmalloc(hw * 3 * sizeof(float));
        fl_pixels_unpack(tokens, height, width, p->info.patch, hwc);
        for (size_t i = 0; i < hw; i++)
            for (int c = 0; c < 3; c++) image_chw[(size_t)c * hw + i] = hwc[i * 3 + (size_t)c];
        free(hwc);
        return 0;
    }
    if (!p->ae || !(fl_ae_parts(p->ae) & FL_AE_DECODER)) return fl_fail(err, FL_EINVAL, "no autoencoder decoder");
    fl_dtype storage = fl_ctx_storage_dtype(p->ctx);
    int64_t s_img[4] = {1, 3, height, width};
    int64_t s_tok[3] = {1, fl_pipeline_image_tokens(p, width, height), fl_pipeline_token_channels(p)};
    fl_tensor d_img, d_tok;
    int rc = fl_ctx_tensor_alloc(p->ctx, storage, 4, s_img, &d_img, err);
    if (rc == 0 && fl_ctx_tensor_alloc(p->ctx, storage, 3, s_tok, &d_tok, err) != 0) {
        fl_ctx_tensor_free(p->ctx, &d_img);
        rc = -1;
    }
    if (rc == 0) {
        fl_ctx_upload_f32(p->ctx, &d_tok, tokens, (size_t)(s_tok[1] * s_tok[2]));
        rc = fl_ae_decode(p->ae, &d_tok, &d_img, err);
        if (rc == 0) fl_ctx_download_f32(p->ctx, image_chw, &d_img, hw * 3);
        fl_ctx_tensor_free(p->ctx, &d_img);
        fl_ctx_tensor_free(p->ctx, &d_tok);
    }
    return rc;
}

/* ---- generation ----------------------------------------------------------------------------------- */

int fl_pipeline_generate(fl_pipeline *p, int width, int height, int steps, int text_tokens,
                         const fl_sample_request *reqs, int n, const float *noise, const fl_sample_hooks *hooks,
                         const fl_pipeline_output *out, fl_error *err) {
    if (fl_pipeline_check_size(p, width, height, err) != 0) return -1;
    if (steps < 1 || steps > 1000) return fl_fail(err, FL_EINVAL, "steps %d is outside [1, 1000]", steps);
    if (n < 1 || !reqs) return fl_fail(err, FL_EINVAL, "a batch needs at least one request");
    int lt = fl_pipeline_text_tokens(p, text_tokens);
    if (lt < 1 || lt > 512) return fl_fail(err, FL_EINVAL, "max text tokens %d is outside [1, 512]", lt);
    fl_flux_model *m = p->model;
    /* The pixel kind from seeds is exactly the batch sampler (and so bitwise its images). */
    if (p->info.kind == FL_PIPELINE_PIXELS && !noise && out->images && !out->image_chw && !out->tokens &&
        !out->model_adapters)
        return fl_flux_sample_pixels_batch_hooked(m, width, height, steps, lt, reqs, n, hooks, out->images, err);

    int64_t li = fl_pipeline_image_tokens(p, width, height), c = fl_pipeline_token_channels(p);
    int64_t cd = fl_pipeline_context_dim(p), vd = fl_pipeline_vec_dim(p);
    size_t tok = (size_t)(li * c), all = (size_t)n * tok, hw = (size_t)width * (size_t)height;
    float *x = malloc(all * sizeof(float)), *txt = malloc((size_t)n * (size_t)(lt * cd) * sizeof(float));
    float *y = fl_xmalloc((size_t)n * (size_t)vd * sizeof(float)), *g = fl_xmalloc((size_t)n * sizeof(float));
    float *img_ids = fl_xmalloc((size_t)li * 3 * sizeof(float));
    float *chw = malloc(hw * 3 * sizeof(float));
    int rc = 0;
    if (!x || !txt || !chw) rc = fl_fail(err, FL_ENOMEM, "out of memory for a batch of %d images", n);
    fl_pixels_ids(height, width, p->info.patch, img_ids);
    for (int r = 0; r < n && rc == 0; r++) {
        rc = fl_pipeline_encode_prompt(p, reqs[r].prompt, lt, txt + (size_t)r * (size_t)(lt * cd), y + (size_t)r * (size_t)vd,
                                       err);
        if (noise) {
            memcpy(x + (size_t)r * tok, noise + (size_t)r * tok, tok * sizeof(float));
        } else {
            fl_rng rng;
            fl_rng_seed(&rng, reqs[r].seed);
            fl_rng_fill_normal(&rng, x + (size_t)r * tok, tok, 0.0f, 1.0f);
        }
        g[r] = reqs[r].guidance;
    }
    /* The requests' adapters on their own rows; the model's selection is put back afterwards. */
    int prev_batch = m->sample_batch;
    fl_flux_sample_adapters *prev = NULL;
    if (rc == 0 && prev_batch && !out->model_adapters) {
        prev = fl_xmalloc((size_t)prev_batch * sizeof *prev);
        memcpy(prev, m->sample_sel, (size_t)prev_batch * sizeof *prev);
    }
    if (rc == 0 && !out->model_adapters) {
        fl_flux_sample_adapters *sel = fl_xmalloc((size_t)n * sizeof *sel);
        for (int r = 0; r < n; r++) sel[r] = reqs[r].adapters;
        rc = fl_flux_set_sample_adapters(m, n, sel, err);
        free(sel);
    }
    if (rc == 0) {
        fl_token_batch tb = {n, li, img_ids, lt, txt, y, g, x, NULL, NULL};
        rc = fl_flux_sample_tokens(m, &tb, steps, p->info.shift, hooks, err);
        if (!out->model_adapters && prev) {
            if (fl_flux_set_sample_adapters(m, prev_batch, prev, NULL) != 0) fl_flux_clear_sample_adapters(m);
        } else if (!out->model_adapters) {
            fl_flux_clear_sample_adapters(m);
        }
    }
    free(prev);
    if (rc == 0 && out->tokens) memcpy(out->tokens, x, all * sizeof(float));
    for (int r = 0; r < n && rc == 0 && (out->images || out->image_chw); r++) {
        rc = fl_pipeline_decode(p, x + (size_t)r * tok, width, height, chw, err);
        if (rc != 0) break;
        for (size_t i = 0; i < hw * 3; i++) chw[i] = chw[i] < -1.0f ? -1.0f : chw[i] > 1.0f ? 1.0f : chw[i];
        if (out->image_chw) memcpy(out->image_chw + (size_t)r * hw * 3, chw, hw * 3 * sizeof(float));
        if (out->images && out->images[r])
            for (size_t i = 0; i < hw; i++)
                for (int k = 0; k < 3; k++) out->images[r][i * 3 + (size_t)k] = chw[(size_t)k * hw + i];
    }
    free(x), free(txt), free(y), free(g), free(img_ids), free(chw);
    return rc;
}
