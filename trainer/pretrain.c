/*
 * pretrain.c — full-parameter flow-matching training of a pixel-space Flux model: the data
 * loader for `flashlora data pretrain` folders, the step (batch draw, loss, full backward,
 * clipping, AdamW per tensor, EMA), held-out loss, exact checkpoints, and the shipped model file
 * (see pretrain.h).
 */
#include "trainer/pretrain.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/fileio.h"
#include "core/rng.h"
#include "datasets/image.h"
#include "kernels/ops.h"
#include "models/codec_pixels.h"
#include "models/sampler.h"
#include "models/text_hash.h"

#define CHECKPOINT_FORMAT "flashlora.pretrain-checkpoint.v1"
#define MODEL_FORMAT "flashlora.model.v1"
#define MAX_MANIFEST_BYTES (256u << 20)
#define MAX_IMAGE_FILE_BYTES (16u << 20)

/* ---- data -------------------------------------------------------------------------------------- */

static uint64_t fnv1a(const void *data, size_t n, uint64_t h) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

void fl_pretrain_data_free(fl_pretrain_data *d) {
    if (!d) return;
    fl_pretrain_example *sets[2] = {d->train, d->heldout};
    size_t counts[2] = {d->n_train, d->n_heldout};
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < counts[s]; i++) {
            free(sets[s][i].caption);
            free(sets[s][i].file);
            free(sets[s][i].rgb);
        }
        free(sets[s]);
    }
    free(d);
}

/* Decodes one square PNG of the set into 8-bit RGB. */
static int load_rgb(const char *path, int *size, unsigned char **rgb, fl_error *err) {
    unsigned char *bytes = NULL;
    size_t n = 0;
    if (fl_read_file(path, MAX_IMAGE_FILE_BYTES, &bytes, &n, err) != 0) return -1;
    fl_image img;
    int rc = fl_image_decode(bytes, n, 4096 * 4096, 4096, &img, err);
    free(bytes);
    if (rc != 0) return -1;
    if (img.width != img.height || (*size && img.width != *size)) {
        rc = fl_fail(err, FL_EINVAL, "image is %dx%d; the set's images are %dx%d squares", img.width, img.height,
                     *size ? *size : img.width, *size ? *size : img.width);
    } else {
        *size = img.width;
        size_t count = (size_t)img.width * img.height * 3;
        *rgb = fl_xmalloc(count);
        for (size_t i = 0; i < count; i++) (*rgb)[i] = (unsigned char)lrintf(img.pixels[i] * 255.0f);
    }
    fl_image_release(&img);
    return rc;
}

int fl_pretrain_data_load(const char *dir, size_t max_images, fl_pretrain_data **out, fl_error *err) {
    *out = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/manifest.jsonl", dir);
    unsigned char *text = NULL;
    size_t n = 0;
    if (fl_read_file(path, MAX_MANIFEST_BYTES, &text, &n, err) != 0) return fl_fail_prefix(err, "%s", path);
    fl_pretrain_data *d = fl_xcalloc(1, sizeof *d);
    snprintf(d->fingerprint, sizeof d->fingerprint, "%016" PRIx64, fnv1a(text, n, 0xcbf29ce484222325ull));
    size_t cap[2] = {0, 0};
    int rc = 0, line_no = 0;
    for (char *line = (char *)text; line && *line && rc == 0;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        line_no++;
        if (*line == '\0') {
            line = next;
            continue;
        }
        if (max_images > 0 && d->n_train + d->n_heldout >= max_images) break;
        json_error_t jerr;
        json_t *obj = json_loads(line, 0, &jerr);
        const char *file = json_string_value(json_object_get(obj, "file"));
        const char *caption = json_string_value(json_object_get(obj, "caption"));
        const char *split = json_string_value(json_object_get(obj, "split"));
        if (!obj || !file || !caption || !split || (strcmp(split, "train") && strcmp(split, "heldout")))
            rc = fl_fail(err, FL_EINVAL, "%s line %d: expected {\"file\", \"caption\", \"split\": train|heldout}",
                         path, line_no);
        else if (strstr(file, "..") || file[0] == '/')
            rc = fl_fail(err, FL_EINVAL, "%s line %d: file '%s' leaves the data folder", path, line_no, file);
        if (rc == 0) {
            fl_pretrain_example ex = {fl_xstrdup(caption), fl_xstrdup(file), NULL};
            char image_path[4200];
            snprintf(image_path, sizeof image_path, "%s/%s", dir, file);
            if (load_rgb(image_path, &d->size, &ex.rgb, err) != 0) {
                rc = fl_fail_prefix(err, "%s", image_path);
                free(ex.caption);
                free(ex.file);
            } else {
                int s = strcmp(split, "train") == 0 ? 0 : 1;
                fl_pretrain_example **set = s == 0 ? &d->train : &d->heldout;
                size_t *count = s == 0 ? &d->n_train : &d->n_heldout;
                if (*count == cap[s]) {
                    cap[s] = cap[s] ? 2 * cap[s] : 1024;
                    *set = fl_xrealloc(*set, cap[s] * sizeof **set);
                }
                (*set)[(*count)++] = ex;
            }
        }
        json_decref(obj);
        line = next;
    }
    free(text);
    if (rc == 0 && d->n_train == 0) rc = fl_fail(err, FL_EINVAL, "%s: no training images", path);
    if (rc != 0) {
        fl_pretrain_data_free(d);
        return -1;
    }
    *out = d;
    return 0;
}

/* ---- configuration ------------------------------------------------------------------------------ */

fl_pretrain_config fl_pretrain_config_default(void) {
    fl_pretrain_config c = {
        .steps = 20000,
        .batch_size = 16,
        .lr = 3e-4f,
        .warmup_steps = 500,
        .beta1 = 0.9f,
        .beta2 = 0.99f,
        .eps = 1e-8f,
        .weight_decay = 0.0f,
        .max_grad_norm = 1.0f,
        .ema_decay = 0.999f,
        .caption_dropout = 0.1f,
        .flip = true,
        .max_text_tokens = 32,
        .seed = 0,
    };
    return c;
}

int fl_pretrain_config_validate(const fl_pretrain_config *c, fl_error *err) {
    if (c->steps < 1 || c->steps > 100000000) return fl_fail(err, FL_EINVAL, "steps %d is outside [1, 1e8]", c->steps);
    if (c->batch_size < 1 || c->batch_size > 1024)
        return fl_fail(err, FL_EINVAL, "batch size %d is outside [1, 1024]", c->batch_size);
    if (!(c->lr > 0.0f && c->lr <= 1.0f)) return fl_fail(err, FL_EINVAL, "learning rate %g is outside (0, 1]", c->lr);
    if (c->warmup_steps < 0) return fl_fail(err, FL_EINVAL, "warmup steps must be >= 0");
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f) || !(c->eps > 0.0f))
        return fl_fail(err, FL_EINVAL, "AdamW betas must be in [0, 1) and eps positive");
    if (!(c->weight_decay >= 0.0f) || !(c->max_grad_norm >= 0.0f))
        return fl_fail(err, FL_EINVAL, "weight decay and max grad norm must be >= 0");
    if (!(c->ema_decay >= 0.0f && c->ema_decay < 1.0f)) return fl_fail(err, FL_EINVAL, "EMA decay must be in [0, 1)");
    if (!(c->caption_dropout >= 0.0f && c->caption_dropout <= 1.0f))
        return fl_fail(err, FL_EINVAL, "caption dropout must be in [0, 1]");
    if (c->max_text_tokens < 1 || c->max_text_tokens > 512)
        return fl_fail(err, FL_EINVAL, "max text tokens %d is outside [1, 512]", c->max_text_tokens);
    return 0;
}

fl_flux_params fl_embedded_flux_params(void) {
    fl_flux_params p = {.in_channels = 48,
                        .out_channels = 48,
                        .vec_in_dim = 128,
                        .context_in_dim = 128,
                        .hidden_size = 256,
                        .mlp_ratio = 4.0,
                        .num_heads = 4,
                        .depth = 2,
                        .depth_single_blocks = 4,
                        .axes_dim = {8, 28, 28},
                        .n_axes = 3,
                        .theta = 10000,
                        .qkv_bias = true,
                        .guidance_embed = false};
    return p;
}

static bool is_zero_init(const char *name) {
    return strstr(name, "_mod.lin.") || strstr(name, "modulation.lin.") || strstr(name, "adaLN_modulation.") ||
           !strncmp(name, "final_layer.linear.", 19);
}

void fl_pretrain_init_adaln_zero(fl_flux_model *m) {
    fl_ctx *ctx = fl_flux_get_ctx(m);
    for (size_t i = 0; i < fl_flux_param_count(m); i++) {
        const char *name;
        fl_tensor *value;
        fl_flux_param_at(m, i, &name, &value, NULL);
        if (is_zero_init(name)) fl_op_fill(ctx, value, 0.0f);
    }
}

/* ---- the trainer -------------------------------------------------------------------------------- */

struct fl_pretrainer {
    fl_flux_model *m;
    fl_ctx *ctx;
    fl_pretrain_config cfg;
    const fl_pretrain_data *data;
    int patch, size;
    int64_t li, lt, channels, ctx_dim, vec_dim, batch;
    size_t n_params;
    fl_tensor *adam_m, *adam_v, *ema; /* per parameter tensor, f32 on the model's device */
    bool *decay;                      /* weight decay applies (2-d weights only) */
    fl_tensor scratch;                /* the largest parameter's size, for swaps */
    float *h_x0, *h_noise, *h_txt, *h_y, *h_t, *img_ids, *txt_ids, *pixels;
    fl_tensor d_x0, d_noise, d_txt, d_y, d_t;
    fl_rng rng;
    int step, run_start;
    int64_t samples, ema_updates;
    double seconds, last_loss;
};

static fl_tensor device_tensor(fl_ctx *ctx, fl_dtype dtype, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    int64_t shape[3] = {d0, d1, d2};
    return fl_ctx_tensor(ctx, dtype, ndim, shape);
}

fl_pretrainer *fl_pretrainer_create(fl_flux_model *m, const fl_pretrain_config *config, const fl_pretrain_data *data,
                                    fl_error *err) {
    if (fl_pretrain_config_validate(config, err) != 0) return NULL;
    const fl_flux_params *p = fl_flux_get_params(m);
    fl_ctx *ctx = fl_flux_get_ctx(m);
    int patch = (int)lround(sqrt(p->in_channels / 3.0));
    if (patch < 1 || 3 * patch * patch != p->in_channels || p->out_channels != p->in_channels) {
        fl_fail(err, FL_EUNSUPPORTED, "pretraining needs the pixel image space (3 p^2 channels, equal in and out)");
        return NULL;
    }
    if (data->size % patch) {
        fl_fail(err, FL_EINVAL, "the data's %dx%d images are not a multiple of the patch size %d", data->size,
                data->size, patch);
        return NULL;
    }
    if (p->guidance_embed) {
        fl_fail(err, FL_EUNSUPPORTED, "pretraining a guidance-distilled model is not supported");
        return NULL;
    }
    const char *name0;
    fl_tensor *v0;
    fl_flux_param_at(m, 0, &name0, &v0, NULL);
    if (v0->dtype != FL_F32) {
        fl_fail(err, FL_EUNSUPPORTED,
                "full training keeps f32 master weights: run it on the CPU backend (this device stores %s)",
                fl_dtype_name(v0->dtype));
        return NULL;
    }
    for (size_t i = 0; i < fl_flux_linear_count(m); i++)
        if (fl_flux_linear_at(m, i)->n_adapters > 0) {
            fl_fail(err, FL_EINVAL, "the model has adapters attached");
            return NULL;
        }
    fl_flux_enable_full_grads(m);
    fl_pretrainer *t = fl_xcalloc(1, sizeof *t);
    t->m = m;
    t->ctx = ctx;
    t->cfg = *config;
    t->data = data;
    t->patch = patch;
    t->size = data->size;
    t->li = (int64_t)(data->size / patch) * (data->size / patch);
    t->lt = config->max_text_tokens;
    t->channels = p->in_channels;
    t->ctx_dim = p->context_in_dim;
    t->vec_dim = p->vec_in_dim;
    t->batch = config->batch_size;
    t->n_params = fl_flux_param_count(m);
    t->adam_m = fl_xcalloc(t->n_params, sizeof *t->adam_m);
    t->adam_v = fl_xcalloc(t->n_params, sizeof *t->adam_v);
    t->ema = fl_xcalloc(t->n_params, sizeof *t->ema);
    t->decay = fl_xcalloc(t->n_params, sizeof *t->decay);
    int64_t largest = 1;
    for (size_t i = 0; i < t->n_params; i++) {
        fl_tensor *value;
        fl_flux_param_at(m, i, NULL, &value, NULL);
        int64_t n = fl_tensor_numel(value);
        if (n > largest) largest = n;
        t->adam_m[i] = device_tensor(ctx, FL_F32, 1, n, 0, 0);
        t->adam_v[i] = device_tensor(ctx, FL_F32, 1, n, 0, 0);
        t->ema[i] = device_tensor(ctx, FL_F32, 1, n, 0, 0);
        fl_op_fill(ctx, &t->adam_m[i], 0.0f);
        fl_op_fill(ctx, &t->adam_v[i], 0.0f);
        fl_tensor flat = fl_tensor_make(value->data, value->dtype, value->device, 1, &n);
        fl_op_copy(ctx, &flat, &t->ema[i]);
        t->decay[i] = value->ndim == 2;
    }
    t->scratch = device_tensor(ctx, FL_F32, 1, largest, 0, 0);
    size_t tok = (size_t)(t->batch * t->li * t->channels);
    t->h_x0 = fl_xmalloc(tok * sizeof(float));
    t->h_noise = fl_xmalloc(tok * sizeof(float));
    t->h_txt = fl_xmalloc((size_t)(t->batch * t->lt * t->ctx_dim) * sizeof(float));
    t->h_y = fl_xmalloc((size_t)(t->batch * t->vec_dim) * sizeof(float));
    t->h_t = fl_xmalloc((size_t)t->batch * sizeof(float));
    t->img_ids = fl_xmalloc((size_t)(t->batch * t->li * 3) * sizeof(float));
    t->txt_ids = fl_xcalloc((size_t)(t->batch * t->lt * 3), sizeof(float));
    t->pixels = fl_xmalloc((size_t)data->size * data->size * 3 * sizeof(float));
    for (int64_t b = 0; b < t->batch; b++) fl_pixels_ids(data->size, data->size, patch, t->img_ids + b * t->li * 3);
    t->d_x0 = device_tensor(ctx, FL_F32, 3, t->batch, t->li, t->channels);
    t->d_noise = device_tensor(ctx, FL_F32, 3, t->batch, t->li, t->channels);
    t->d_txt = device_tensor(ctx, FL_F32, 3, t->batch, t->lt, t->ctx_dim);
    t->d_y = device_tensor(ctx, FL_F32, 2, t->batch, t->vec_dim, 0);
    t->d_t = device_tensor(ctx, FL_F32, 1, t->batch, 0, 0);
    fl_rng_seed(&t->rng, config->seed);
    return t;
}

void fl_pretrainer_free(fl_pretrainer *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_params; i++) {
        fl_ctx_tensor_free(t->ctx, &t->adam_m[i]);
        fl_ctx_tensor_free(t->ctx, &t->adam_v[i]);
        fl_ctx_tensor_free(t->ctx, &t->ema[i]);
    }
    free(t->adam_m), free(t->adam_v), free(t->ema), free(t->decay);
    fl_ctx_tensor_free(t->ctx, &t->scratch);
    fl_tensor *dev[] = {&t->d_x0, &t->d_noise, &t->d_txt, &t->d_y, &t->d_t};
    for (int i = 0; i < 5; i++) fl_ctx_tensor_free(t->ctx, dev[i]);
    free(t->h_x0), free(t->h_noise), free(t->h_txt), free(t->h_y), free(t->h_t), free(t->img_ids), free(t->txt_ids);
    free(t->pixels);
    free(t);
}

static long meta_long(const fl_safetensors *st, const char *key) {
    const char *v = fl_safetensors_metadata_get(st, key);
    return v ? strtol(v, NULL, 10) : 0;
}

int fl_pretrainer_continue_from(fl_pretrainer *t, const fl_safetensors *shipped, fl_error *err) {
    long step = meta_long(shipped, "pretrain_steps");
    const char *samples = fl_safetensors_metadata_get(shipped, "pretrain_samples");
    const char *seconds = fl_safetensors_metadata_get(shipped, "train_seconds");
    if (step < 0 || step > 100000000) return fl_fail(err, FL_EINVAL, "pretrain_steps '%ld' is invalid", step);
    if (step >= t->cfg.steps)
        return fl_fail(err, FL_EINVAL, "the model has %ld steps already: ask for more than that with --steps", step);
    t->step = t->run_start = (int)step;
    t->samples = samples ? strtoll(samples, NULL, 10) : 0;
    t->seconds = seconds ? strtod(seconds, NULL) : 0.0;
    if (!(t->seconds >= 0)) t->seconds = 0;
    return 0;
}

int fl_pretrainer_steps_done(const fl_pretrainer *t) {
    return t->step;
}

void fl_pretrainer_add_seconds(fl_pretrainer *t, double seconds) {
    t->seconds += seconds;
}

double fl_pretrainer_seconds(const fl_pretrainer *t) {
    return t->seconds;
}

int64_t fl_pretrainer_samples(const fl_pretrainer *t) {
    return t->samples;
}

/* True when the caption names a side (a flip would contradict it). */
static bool names_a_side(const char *caption) {
    const char *words[] = {"left", "right"};
    for (int k = 0; k < 2; k++)
        for (const char *p = caption; (p = strstr(p, words[k])) != NULL; p++) {
            bool start = p == caption || !isalpha((unsigned char)p[-1]);
            bool end = !isalpha((unsigned char)p[strlen(words[k])]);
            if (start && end) return true;
        }
    return false;
}

/* The example's pixels in [-1, 1], mirrored when flip, packed into tokens. */
static void example_tokens(fl_pretrainer *t, const fl_pretrain_example *ex, bool flip, float *tokens) {
    int s = t->size;
    for (int y = 0; y < s; y++)
        for (int x = 0; x < s; x++) {
            int sx = flip ? s - 1 - x : x;
            for (int c = 0; c < 3; c++)
                t->pixels[((size_t)y * s + x) * 3 + c] = ex->rgb[((size_t)y * s + sx) * 3 + c] / 127.5f - 1.0f;
        }
    fl_pixels_pack(t->pixels, s, s, t->patch, tokens);
}

static double lr_at(const fl_pretrainer *t) {
    int into = t->step - t->run_start;
    if (t->cfg.warmup_steps > 0 && into < t->cfg.warmup_steps)
        return t->cfg.lr * (double)(into + 1) / (double)t->cfg.warmup_steps;
    return t->cfg.lr;
}

int fl_pretrainer_step(fl_pretrainer *t, fl_pretrain_progress *progress, fl_error *err) {
    if (t->step >= t->cfg.steps) return fl_fail(err, FL_EINVAL, "training already reached %d steps", t->step);
    const fl_pretrain_data *d = t->data;
    size_t tok = (size_t)(t->li * t->channels), txt = (size_t)(t->lt * t->ctx_dim), vec = (size_t)t->vec_dim;
    double mu = fl_flux_time_shift_mu(t->li);
    for (int64_t b = 0; b < t->batch; b++) {
        const fl_pretrain_example *ex = &d->train[fl_rng_next(&t->rng) % d->n_train];
        bool flip = t->cfg.flip && fl_rng_uniform(&t->rng) < 0.5f && !names_a_side(ex->caption);
        bool drop = fl_rng_uniform(&t->rng) < t->cfg.caption_dropout;
        double u = 1.0 / (1.0 + exp(-(double)fl_rng_normal(&t->rng)));
        t->h_t[b] = (float)fl_flux_time_shift(mu, u);
        example_tokens(t, ex, flip, t->h_x0 + b * tok);
        fl_text_hash_encode(drop ? "" : ex->caption, (int)t->lt, (int)t->ctx_dim, (int)t->vec_dim, t->h_txt + b * txt,
                            t->h_y + b * vec);
    }
    fl_rng_fill_normal(&t->rng, t->h_noise, (size_t)t->batch * tok, 0.0f, 1.0f);
    fl_ctx_upload_f32(t->ctx, &t->d_x0, t->h_x0, (size_t)t->batch * tok);
    fl_ctx_upload_f32(t->ctx, &t->d_noise, t->h_noise, (size_t)t->batch * tok);
    fl_ctx_upload_f32(t->ctx, &t->d_txt, t->h_txt, (size_t)t->batch * txt);
    fl_ctx_upload_f32(t->ctx, &t->d_y, t->h_y, (size_t)t->batch * vec);
    fl_ctx_upload_f32(t->ctx, &t->d_t, t->h_t, (size_t)t->batch);
    fl_flux_inputs in = {&t->d_x0, &t->d_txt, &t->d_y, &t->d_t, NULL, t->img_ids, t->txt_ids};
    fl_flux_zero_grads(t->m);
    double loss = 0;
    if (fl_flux_loss_and_grads(t->m, &in, &t->d_x0, &t->d_noise, &loss, err) != 0) return -1;
    if (!isfinite(loss)) return fl_fail(err, FL_EINVAL, "the loss is not finite at step %d", t->step + 1);

    double sq = 0;
    for (size_t i = 0; i < t->n_params; i++) {
        fl_tensor *grad;
        fl_flux_param_at(t->m, i, NULL, NULL, &grad);
        sq += fl_op_sum_squares(t->ctx, grad);
    }
    double norm = sqrt(sq);
    if (!isfinite(norm)) return fl_fail(err, FL_EINVAL, "the gradient is not finite at step %d", t->step + 1);
    float grad_scale = 1.0f;
    if (t->cfg.max_grad_norm > 0.0f && norm > t->cfg.max_grad_norm) grad_scale = (float)(t->cfg.max_grad_norm / (norm + 1e-6));
    double lr = lr_at(t);
    t->ema_updates++;
    float decay = (float)fmin(t->cfg.ema_decay, (1.0 + t->ema_updates) / (10.0 + t->ema_updates));
    for (size_t i = 0; i < t->n_params; i++) {
        fl_tensor *value, *grad;
        fl_flux_param_at(t->m, i, NULL, &value, &grad);
        int64_t n = fl_tensor_numel(value);
        fl_tensor pv = fl_tensor_make(value->data, value->dtype, value->device, 1, &n);
        fl_tensor gv = fl_tensor_make(grad->data, grad->dtype, grad->device, 1, &n);
        fl_adamw_params ap = {(float)lr, t->cfg.beta1, t->cfg.beta2, t->cfg.eps,
                              t->decay[i] ? t->cfg.weight_decay : 0.0f, grad_scale, t->step - t->run_start + 1};
        fl_op_adamw(t->ctx, &pv, &gv, &t->adam_m[i], &t->adam_v[i], &ap);
        fl_op_scale(t->ctx, &t->ema[i], decay);
        fl_op_add(t->ctx, &t->ema[i], &pv, 1.0f - decay, &t->ema[i]);
    }
    t->step++;
    t->samples += t->batch;
    t->last_loss = loss;
    if (progress) {
        progress->step = t->step;
        progress->loss = loss;
        progress->grad_norm = norm;
        progress->lr = lr;
        progress->samples = t->samples;
    }
    return 0;
}

void fl_pretrainer_swap_ema(fl_pretrainer *t) {
    for (size_t i = 0; i < t->n_params; i++) {
        fl_tensor *value;
        fl_flux_param_at(t->m, i, NULL, &value, NULL);
        int64_t n = fl_tensor_numel(value);
        fl_tensor pv = fl_tensor_make(value->data, value->dtype, value->device, 1, &n);
        fl_tensor tmp = fl_tensor_make(t->scratch.data, FL_F32, t->scratch.device, 1, &n);
        fl_op_copy(t->ctx, &pv, &tmp);
        fl_op_copy(t->ctx, &t->ema[i], &pv);
        fl_op_copy(t->ctx, &tmp, &t->ema[i]);
    }
}

double fl_pretrainer_heldout_loss(fl_pretrainer *t, const float *timesteps, int n_timesteps, size_t max_examples) {
    const fl_pretrain_data *d = t->data;
    size_t n = d->n_heldout;
    if (max_examples > 0 && n > max_examples) n = max_examples;
    if (n == 0 || n_timesteps < 1) return NAN;
    fl_pretrainer_swap_ema(t);
    size_t tok = (size_t)(t->li * t->channels), txt = (size_t)(t->lt * t->ctx_dim), vec = (size_t)t->vec_dim;
    fl_rng rng;
    fl_rng_seed(&rng, 0x5eed5eedull);
    float *pred = fl_xmalloc((size_t)t->batch * tok * sizeof(float));
    float *target = fl_xmalloc((size_t)t->batch * tok * sizeof(float));
    float *tv = fl_xmalloc((size_t)t->batch * sizeof(float));
    double total = 0;
    size_t count = 0;
    for (int k = 0; k < n_timesteps; k++) {
        for (size_t start = 0; start < n; start += (size_t)t->batch) {
            int64_t b_n = (int64_t)(n - start < (size_t)t->batch ? n - start : (size_t)t->batch);
            for (int64_t b = 0; b < b_n; b++) {
                const fl_pretrain_example *ex = &d->heldout[start + (size_t)b];
                float *x0 = t->h_x0 + b * tok, *noise = t->h_noise + b * tok;
                example_tokens(t, ex, false, x0);
                fl_rng_fill_normal(&rng, noise, tok, 0.0f, 1.0f);
                for (size_t i = 0; i < tok; i++) {
                    target[b * tok + i] = noise[i] - x0[i];
                    x0[i] = (1.0f - timesteps[k]) * x0[i] + timesteps[k] * noise[i];
                }
                fl_text_hash_encode(ex->caption, (int)t->lt, (int)t->ctx_dim, (int)t->vec_dim, t->h_txt + b * txt,
                                    t->h_y + b * vec);
                tv[b] = timesteps[k];
            }
            int64_t s_img[3] = {b_n, t->li, t->channels}, s_txt[3] = {b_n, t->lt, t->ctx_dim}, s_y[2] = {b_n, t->vec_dim};
            fl_tensor img = fl_tensor_make(t->d_x0.data, FL_F32, t->d_x0.device, 3, s_img);
            fl_tensor dtxt = fl_tensor_make(t->d_txt.data, FL_F32, t->d_txt.device, 3, s_txt);
            fl_tensor dy = fl_tensor_make(t->d_y.data, FL_F32, t->d_y.device, 2, s_y);
            fl_tensor dt = fl_tensor_make(t->d_t.data, FL_F32, t->d_t.device, 1, &b_n);
            fl_ctx_upload_f32(t->ctx, &img, t->h_x0, (size_t)b_n * tok);
            fl_ctx_upload_f32(t->ctx, &dtxt, t->h_txt, (size_t)b_n * txt);
            fl_ctx_upload_f32(t->ctx, &dy, t->h_y, (size_t)b_n * vec);
            fl_ctx_upload_f32(t->ctx, &dt, tv, (size_t)b_n);
            fl_flux_inputs in = {&img, &dtxt, &dy, &dt, NULL, t->img_ids, t->txt_ids};
            fl_tensor out;
            FL_CHECK(fl_flux_forward(t->m, &in, &out, NULL) == 0);
            fl_ctx_download_f32(t->ctx, pred, &out, (size_t)b_n * tok);
            for (int64_t b = 0; b < b_n; b++) {
                double sum = 0;
                for (size_t i = 0; i < tok; i++) {
                    double e = (double)pred[b * tok + i] - target[b * tok + i];
                    sum += e * e;
                }
                total += sum / (double)tok;
                count++;
            }
        }
    }
    free(pred), free(target), free(tv);
    fl_pretrainer_swap_ema(t);
    return total / (double)count;
}

/* ---- checkpoints and the model file --------------------------------------------------------------- */

/* Everything a resume must match: the configuration without the step target (a run may be
 * extended), the model's parameters and the data. */
static void config_text(const fl_pretrainer *t, char *buf, size_t size) {
    const fl_pretrain_config *c = &t->cfg;
    char *params = fl_flux_params_to_json(fl_flux_get_params(t->m));
    snprintf(buf, size,
             "{\"batch_size\":%d,\"lr\":%.9g,\"warmup_steps\":%d,\"beta1\":%.9g,\"beta2\":%.9g,\"eps\":%.9g,"
             "\"weight_decay\":%.9g,\"max_grad_norm\":%.9g,\"ema_decay\":%.9g,\"caption_dropout\":%.9g,\"flip\":%s,"
             "\"max_text_tokens\":%d,\"seed\":%" PRIu64 ",\"data\":\"%s\",\"train_images\":%zu,\"resolution\":%d,"
             "\"flux_params\":%s}",
             c->batch_size, (double)c->lr, c->warmup_steps, (double)c->beta1, (double)c->beta2, (double)c->eps,
             (double)c->weight_decay, (double)c->max_grad_norm, (double)c->ema_decay, (double)c->caption_dropout,
             c->flip ? "true" : "false", c->max_text_tokens, c->seed, t->data->fingerprint, t->data->n_train, t->size,
             params ? params : "null");
    free(params);
}

/* Host f32 copy of a device tensor. */
static float *host_copy(fl_ctx *ctx, const fl_tensor *d) {
    int64_t n = fl_tensor_numel(d);
    float *h = fl_xmalloc((size_t)(n ? n : 1) * sizeof(float));
    fl_ctx_download_f32(ctx, h, d, (size_t)n);
    return h;
}

int fl_pretrainer_save_checkpoint(fl_pretrainer *t, const char *path, fl_error *err) {
    size_t n_entries = 4 * t->n_params;
    fl_safetensors_entry *entries = fl_xcalloc(n_entries, sizeof *entries);
    char (*names)[FL_FLUX_NAME_MAX + 16] = fl_xcalloc(n_entries, sizeof *names);
    float **hosts = fl_xcalloc(n_entries, sizeof *hosts);
    static const char *const kinds[4] = {"param", "adam_m", "adam_v", "ema"};
    for (size_t i = 0; i < t->n_params; i++) {
        const char *name;
        fl_tensor *value;
        fl_flux_param_at(t->m, i, &name, &value, NULL);
        const fl_tensor *src[4] = {value, &t->adam_m[i], &t->adam_v[i], &t->ema[i]};
        for (int k = 0; k < 4; k++) {
            size_t e = 4 * i + (size_t)k;
            snprintf(names[e], sizeof names[0], "%s/%s", kinds[k], name);
            hosts[e] = host_copy(t->ctx, src[k]);
            entries[e] = (fl_safetensors_entry){names[e], FL_ST_F32, 1, {fl_tensor_numel(src[k])}, hosts[e]};
        }
    }
    char step[32], run_start[32], rng[80], loss[40], samples[32], seconds[40], ema_updates[32], config[4096];
    snprintf(step, sizeof step, "%d", t->step);
    snprintf(run_start, sizeof run_start, "%d", t->run_start);
    snprintf(rng, sizeof rng, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, t->rng.s[0], t->rng.s[1],
             t->rng.s[2], t->rng.s[3]);
    snprintf(loss, sizeof loss, "%.9g", t->last_loss);
    snprintf(samples, sizeof samples, "%" PRId64, t->samples);
    snprintf(seconds, sizeof seconds, "%.3f", t->seconds);
    snprintf(ema_updates, sizeof ema_updates, "%" PRId64, t->ema_updates);
    config_text(t, config, sizeof config);
    fl_safetensors_kv meta[] = {{"format", CHECKPOINT_FORMAT}, {"step", step},       {"run_start", run_start},
                                {"rng", rng},                  {"last_loss", loss},   {"samples", samples},
                                {"train_seconds", seconds},    {"ema_updates", ema_updates}, {"config", config}};
    int rc = fl_safetensors_write(path, entries, n_entries, meta, sizeof meta / sizeof meta[0], err);
    for (size_t e = 0; e < n_entries; e++) free(hosts[e]);
    free(hosts), free(names), free(entries);
    return rc;
}

int fl_pretrainer_load_checkpoint(fl_pretrainer *t, const char *path, fl_error *err) {
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    const char *format = fl_safetensors_metadata_get(st, "format");
    const char *step = fl_safetensors_metadata_get(st, "step");
    const char *run_start = fl_safetensors_metadata_get(st, "run_start");
    const char *rng = fl_safetensors_metadata_get(st, "rng");
    const char *config = fl_safetensors_metadata_get(st, "config");
    const char *loss = fl_safetensors_metadata_get(st, "last_loss");
    const char *samples = fl_safetensors_metadata_get(st, "samples");
    const char *seconds = fl_safetensors_metadata_get(st, "train_seconds");
    const char *ema_updates = fl_safetensors_metadata_get(st, "ema_updates");
    char mine[4096];
    config_text(t, mine, sizeof mine);
    long steps_done = -1, start = -1;
    uint64_t state[4];
    int rc = 0;
    if (!format || strcmp(format, CHECKPOINT_FORMAT) || !step || !run_start || !rng || !config || !loss || !samples ||
        !seconds || !ema_updates)
        rc = fl_fail(err, FL_EINVAL, "not a flashlora pretraining checkpoint");
    else if (strcmp(config, mine))
        rc = fl_fail(err, FL_EINVAL, "the checkpoint was made with another configuration or data: %s", config);
    else if (sscanf(step, "%ld", &steps_done) != 1 || steps_done < 0 || steps_done > 100000000 ||
             sscanf(run_start, "%ld", &start) != 1 || start < 0 || start > steps_done)
        rc = fl_fail(err, FL_EINVAL, "checkpoint step '%s' is invalid", step);
    else if (steps_done >= t->cfg.steps)
        rc = fl_fail(err, FL_EINVAL, "the checkpoint is at step %ld already: ask for more steps", steps_done);
    else if (strlen(rng) != 64 ||
             sscanf(rng, "%16" SCNx64 "%16" SCNx64 "%16" SCNx64 "%16" SCNx64, &state[0], &state[1], &state[2], &state[3]) != 4)
        rc = fl_fail(err, FL_EINVAL, "checkpoint RNG state '%s' is invalid", rng);
    static const char *const kinds[4] = {"param", "adam_m", "adam_v", "ema"};
    for (size_t i = 0; i < t->n_params && rc == 0; i++) {
        const char *name;
        fl_tensor *value;
        fl_flux_param_at(t->m, i, &name, &value, NULL);
        int64_t n = fl_tensor_numel(value);
        fl_tensor pv = fl_tensor_make(value->data, value->dtype, value->device, 1, &n);
        fl_tensor *dst[4] = {&pv, &t->adam_m[i], &t->adam_v[i], &t->ema[i]};
        for (int k = 0; k < 4 && rc == 0; k++) {
            char key[FL_FLUX_NAME_MAX + 16];
            snprintf(key, sizeof key, "%s/%s", kinds[k], name);
            const fl_safetensors_info *info = fl_safetensors_find(st, key);
            if (!info || info->dtype != FL_ST_F32 || info->ndim != 1 || info->shape[0] != n)
                rc = fl_fail(err, FL_EINVAL, "checkpoint tensor '%s' is missing or not F32 [%lld]", key, (long long)n);
            else
                fl_ctx_upload_f32(t->ctx, dst[k], info->data, (size_t)n);
        }
    }
    if (rc == 0) {
        t->step = (int)steps_done;
        t->run_start = (int)start;
        memcpy(t->rng.s, state, sizeof state);
        t->last_loss = strtod(loss, NULL);
        t->samples = strtoll(samples, NULL, 10);
        t->seconds = strtod(seconds, NULL);
        t->ema_updates = strtoll(ema_updates, NULL, 10);
    }
    fl_safetensors_close(st);
    return rc == 0 ? 0 : fl_fail_prefix(err, "%s", path);
}

int fl_pretrainer_save_model(fl_pretrainer *t, const char *path, bool bf16, const fl_safetensors_kv *extra,
                             size_t n_extra, fl_error *err) {
    fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), err);
    if (!cpu) return -1;
    fl_safetensors_entry *entries = fl_xcalloc(t->n_params, sizeof *entries);
    void **hosts = fl_xcalloc(t->n_params, sizeof *hosts);
    for (size_t i = 0; i < t->n_params; i++) {
        const char *name;
        fl_tensor *value;
        fl_flux_param_at(t->m, i, &name, &value, NULL);
        float *f = host_copy(t->ctx, &t->ema[i]);
        int64_t n = fl_tensor_numel(value);
        if (bf16) {
            uint16_t *h = fl_xmalloc((size_t)(n ? n : 1) * sizeof(uint16_t));
            fl_tensor src = fl_tensor_make(f, FL_F32, fl_device_cpu(), 1, &n);
            fl_tensor dst = fl_tensor_make(h, FL_BF16, fl_device_cpu(), 1, &n);
            fl_op_copy(cpu, &src, &dst);
            free(f);
            hosts[i] = h;
        } else {
            hosts[i] = f;
        }
        entries[i] = (fl_safetensors_entry){name, bf16 ? FL_ST_BF16 : FL_ST_F32, value->ndim,
                                            {value->shape[0], value->ndim > 1 ? value->shape[1] : 0}, hosts[i]};
    }
    char *params = fl_flux_params_to_json(fl_flux_get_params(t->m));
    char patch[16], resolution[16], tokens[16], step[32], samples[32], seconds[40], dropout[32], config[4096];
    snprintf(patch, sizeof patch, "%d", t->patch);
    snprintf(resolution, sizeof resolution, "%d", t->size);
    snprintf(tokens, sizeof tokens, "%d", t->cfg.max_text_tokens);
    snprintf(step, sizeof step, "%d", t->step);
    snprintf(samples, sizeof samples, "%" PRId64, t->samples);
    snprintf(seconds, sizeof seconds, "%.0f", t->seconds);
    snprintf(dropout, sizeof dropout, "%.9g", (double)t->cfg.caption_dropout);
    config_text(t, config, sizeof config);
    size_t n_meta = 12 + n_extra;
    fl_safetensors_kv *meta = fl_xcalloc(n_meta, sizeof *meta);
    meta[0] = (fl_safetensors_kv){"format", MODEL_FORMAT};
    meta[1] = (fl_safetensors_kv){"flux_params", params ? params : "{}"};
    meta[2] = (fl_safetensors_kv){"image_space", "pixels"};
    meta[3] = (fl_safetensors_kv){"patch_size", patch};
    meta[4] = (fl_safetensors_kv){"resolution", resolution};
    meta[5] = (fl_safetensors_kv){"text_encoder", "hashed-words"};
    meta[6] = (fl_safetensors_kv){"max_text_tokens", tokens};
    meta[7] = (fl_safetensors_kv){"pretrain_steps", step};
    meta[8] = (fl_safetensors_kv){"pretrain_samples", samples};
    meta[9] = (fl_safetensors_kv){"train_seconds", seconds};
    meta[10] = (fl_safetensors_kv){"pretrain_config", config};
    meta[11] = (fl_safetensors_kv){"caption_dropout", dropout}; /* > 0: classifier-free guidance works */
    for (size_t i = 0; i < n_extra; i++) meta[12 + i] = extra[i];
    int rc = fl_safetensors_write(path, entries, t->n_params, meta, n_meta, err);
    free(meta);
    free(params);
    for (size_t i = 0; i < t->n_params; i++) free(hosts[i]);
    free(hosts);
    free(entries);
    fl_ctx_destroy(cpu);
    return rc;
}
