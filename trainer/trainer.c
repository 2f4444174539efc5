/*
 * trainer.c — the LoRA training loop (see trainer.h).
 */
#include "trainer/trainer.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "kernels/ops.h"
#include "models/codec_pixels.h"
#include "models/text_hash.h"

#define CHECKPOINT_FORMAT "flashlora.checkpoint.v1"

struct fl_trainer {
    fl_flux_model *m;
    fl_ctx *ctx;
    fl_train_config cfg;
    char targets[512];
    int patch, height, width; /* the first example's size (recorded in the configuration) */
    int64_t li, lt, channels, ctx_dim, vec_dim, batch; /* li: the largest image token count */
    size_t n;
    /* Aspect buckets: examples of one size form a bucket; a batch is drawn from one bucket. */
    int *ex_w, *ex_h, *ex_bucket;
    size_t *ex_off; /* offset of an example's tokens in tokens / tokens_flip */
    size_t n_buckets, *bucket_count, **bucket_members;
    /* Host caches: per example tokens (and flipped), text rows and pooled vector; the empty caption. */
    float *tokens, *tokens_flip, *txt, *y, *txt_empty, *y_empty;
    /* Host staging for one batch, and the device tensors it is uploaded into. */
    float *h_x0, *h_noise, *h_txt, *h_y, *h_t, *h_g, *img_ids, *txt_ids;
    fl_tensor d_x0, d_noise, d_txt, d_y, d_t, d_g;
    /* Optimizer state (f32, the length of the trainable parameter buffer). */
    fl_tensor adam_m, adam_v, ema;
    fl_rng rng;
    int step;
    double last_loss;
};

fl_train_config fl_train_config_default(void) {
    fl_train_config c = {
        .steps = 300,
        .batch_size = 1,
        .rank = 16,
        .alpha = 16.0f,
        .targets = "all",
        .lr = 4e-4f,
        .warmup_steps = 10,
        .schedule = FL_LR_CONSTANT,
        .beta1 = 0.9f,
        .beta2 = 0.999f,
        .eps = 1e-8f,
        .weight_decay = 0.0f,
        .max_grad_norm = 1.0f,
        .ema_decay = 0.0f,
        .timestep_shift = true,
        .guidance = 1.0f,
        .flip = true,
        .caption_dropout = 0.05f,
        .max_text_tokens = 32,
        .seed = 0,
    };
    return c;
}

int fl_train_config_validate(const fl_train_config *c, fl_error *err) {
    if (c->steps < 1 || c->steps > 1000000) return fl_fail(err, FL_EINVAL, "steps %d is outside [1, 1000000]", c->steps);
    if (c->batch_size < 1 || c->batch_size > 256)
        return fl_fail(err, FL_EINVAL, "batch size %d is outside [1, 256]", c->batch_size);
    if (c->rank < 1 || c->rank > 1024) return fl_fail(err, FL_EINVAL, "rank %d is outside [1, 1024]", c->rank);
    if (!(c->alpha > 0.0f) || c->alpha > 1e6f) return fl_fail(err, FL_EINVAL, "alpha must be positive");
    if (!(c->lr > 0.0f) || c->lr > 1.0f) return fl_fail(err, FL_EINVAL, "learning rate %g is outside (0, 1]", c->lr);
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
    if (!c->targets || !*c->targets) return fl_fail(err, FL_EINVAL, "no LoRA targets given");
    return 0;
}

/* ---- creation ----------------------------------------------------------------------------------- */

static void flip_tokens(const float *image, int h, int w, int p, float *tokens) {
    float *flipped = fl_xmalloc((size_t)h * (size_t)w * 3 * sizeof(float));
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            memcpy(flipped + ((size_t)y * w + x) * 3, image + ((size_t)y * w + (w - 1 - x)) * 3, 3 * sizeof(float));
    fl_pixels_pack(flipped, h, w, p, tokens);
    free(flipped);
}

static fl_tensor device_tensor(fl_ctx *ctx, fl_dtype dtype, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    int64_t shape[3] = {d0, d1, d2};
    return fl_ctx_tensor(ctx, dtype, ndim, shape);
}

fl_trainer *fl_trainer_create(fl_flux_model *m, const fl_train_config *config, const fl_train_example *examples,
                              size_t n_examples, fl_error *err) {
    if (fl_train_config_validate(config, err) != 0) return NULL;
    const fl_flux_params *p = fl_flux_get_params(m);
    int patch = fl_flux_pixel_patch(p);
    if (patch == 0) {
        fl_fail(err, FL_EUNSUPPORTED,
                "the model takes %d input channels: this entry point trains in the pixel image space (3 p^2 "
                "channels); latent models are trained from encoded examples (fl_trainer_create_encoded)",
                p->in_channels);
        return NULL;
    }
    if (n_examples < 1) {
        fl_fail(err, FL_EINVAL, "no training images");
        return NULL;
    }
    for (size_t i = 0; i < n_examples; i++) {
        int eh = examples[i].height, ew = examples[i].width;
        if (eh % patch || ew % patch || eh < patch || ew < patch) {
            fl_fail(err, FL_EINVAL, "training image sizes must be multiples of %d (image %zu is %dx%d)", patch, i, ew,
                    eh);
            return NULL;
        }
    }
    /* Encode: pixel patches (and flipped), hashed-word text rows; then train as from any encoding. */
    int64_t lt = config->max_text_tokens, cd = p->context_in_dim, vd = p->vec_in_dim, c = p->in_channels;
    size_t txt = (size_t)(lt * cd), vec = (size_t)vd;
    fl_train_encoded *enc = fl_xcalloc(n_examples, sizeof *enc);
    float **bufs = fl_xcalloc(n_examples * 4, sizeof *bufs);
    bool ok = true;
    for (size_t i = 0; i < n_examples && ok; i++) {
        int eh = examples[i].height, ew = examples[i].width;
        size_t tok = (size_t)((eh / patch) * (ew / patch) * c);
        float *tk = bufs[4 * i] = malloc(tok * sizeof(float));
        float *tf = bufs[4 * i + 1] = malloc(tok * sizeof(float));
        float *tx = bufs[4 * i + 2] = fl_xmalloc(txt * sizeof(float));
        float *ty = bufs[4 * i + 3] = fl_xmalloc(vec * sizeof(float));
        if (!tk || !tf) {
            ok = false;
            break;
        }
        fl_pixels_pack(examples[i].pixels, eh, ew, patch, tk);
        flip_tokens(examples[i].pixels, eh, ew, patch, tf);
        fl_text_hash_encode(examples[i].caption, (int)lt, (int)cd, (int)vd, tx, ty);
        enc[i] = (fl_train_encoded){tk, tf, ew, eh, tx, ty};
    }
    float *txt_empty = fl_xmalloc(txt * sizeof(float)), *y_empty = fl_xmalloc(vec * sizeof(float));
    fl_text_hash_encode("", (int)lt, (int)cd, (int)vd, txt_empty, y_empty);
    fl_trainer *t = NULL;
    if (!ok) fl_fail(err, FL_ENOMEM, "out of memory for the training set's tokens");
    else t = fl_trainer_create_encoded(m, config, patch, enc, n_examples, txt_empty, y_empty, err);
    for (size_t i = 0; i < n_examples * 4; i++) free(bufs[i]);
    free(bufs), free(enc), free(txt_empty), free(y_empty);
    return t;
}

fl_trainer *fl_trainer_create_encoded(fl_flux_model *m, const fl_train_config *config, int patch,
                                      const fl_train_encoded *examples, size_t n_examples, const float *txt_empty,
                                      const float *y_empty, fl_error *err) {
    if (fl_train_config_validate(config, err) != 0) return NULL;
    const fl_flux_params *p = fl_flux_get_params(m);
    if (n_examples < 1) {
        fl_fail(err, FL_EINVAL, "no training images");
        return NULL;
    }
    if (patch < 1) {
        fl_fail(err, FL_EINVAL, "patch %d is not positive", patch);
        return NULL;
    }
    int h = examples[0].height, w = examples[0].width;
    int64_t max_li = 0;
    for (size_t i = 0; i < n_examples; i++) {
        int eh = examples[i].height, ew = examples[i].width;
        if (eh % patch || ew % patch || eh < patch || ew < patch) {
            fl_fail(err, FL_EINVAL, "training image sizes must be multiples of %d (image %zu is %dx%d)", patch, i, ew,
                    eh);
            return NULL;
        }
        int64_t li = (int64_t)(eh / patch) * (ew / patch);
        if (li > max_li) max_li = li;
    }
    if (fl_flux_add_trainable_lora(m, config->targets, config->rank, config->alpha, config->seed ^ 0x5a5a5a5aull, err) < 0)
        return NULL;

    fl_trainer *t = fl_xcalloc(1, sizeof *t);
    t->m = m;
    t->ctx = fl_flux_get_ctx(m);
    t->cfg = *config;
    snprintf(t->targets, sizeof t->targets, "%s", config->targets);
    t->cfg.targets = t->targets;
    t->patch = patch, t->height = h, t->width = w;
    t->li = max_li;
    t->lt = config->max_text_tokens;
    t->channels = p->in_channels;
    t->ctx_dim = p->context_in_dim;
    t->vec_dim = p->vec_in_dim;
    t->batch = config->batch_size;
    t->n = n_examples;

    size_t tok = (size_t)(t->li * t->channels), txt = (size_t)(t->lt * t->ctx_dim), vec = (size_t)t->vec_dim;
    t->ex_w = fl_xcalloc(n_examples, sizeof(int));
    t->ex_h = fl_xcalloc(n_examples, sizeof(int));
    t->ex_bucket = fl_xcalloc(n_examples, sizeof(int));
    t->ex_off = fl_xcalloc(n_examples, sizeof(size_t));
    t->bucket_count = fl_xcalloc(n_examples, sizeof(size_t));
    t->bucket_members = fl_xcalloc(n_examples, sizeof(size_t *));
    size_t total_tokens = 0;
    for (size_t i = 0; i < n_examples; i++) {
        t->ex_w[i] = examples[i].width, t->ex_h[i] = examples[i].height;
        t->ex_off[i] = total_tokens;
        total_tokens += (size_t)((examples[i].height / patch) * (examples[i].width / patch) * t->channels);
        size_t b = 0;
        while (b < t->n_buckets && !(t->ex_w[t->bucket_members[b][0]] == t->ex_w[i] &&
                                     t->ex_h[t->bucket_members[b][0]] == t->ex_h[i]))
            b++;
        if (b == t->n_buckets) t->bucket_members[t->n_buckets++] = fl_xcalloc(n_examples, sizeof(size_t));
        t->bucket_members[b][t->bucket_count[b]++] = i;
        t->ex_bucket[i] = (int)b;
    }
    /* The large buffers are sized by the request: running out of memory fails the job. */
    t->tokens = malloc(total_tokens * sizeof(float));
    t->tokens_flip = malloc(total_tokens * sizeof(float));
    t->h_x0 = malloc((size_t)t->batch * tok * sizeof(float));
    t->h_noise = malloc((size_t)t->batch * tok * sizeof(float));
    if (!t->tokens || !t->tokens_flip || !t->h_x0 || !t->h_noise) {
        fl_fail(err, FL_ENOMEM, "out of memory for the training set's %zu tokens", total_tokens / (size_t)t->channels);
        fl_trainer_free(t);
        return NULL;
    }
    t->txt = fl_xmalloc(n_examples * txt * sizeof(float));
    t->y = fl_xmalloc(n_examples * vec * sizeof(float));
    t->txt_empty = fl_xmalloc(txt * sizeof(float));
    t->y_empty = fl_xmalloc(vec * sizeof(float));
    for (size_t i = 0; i < n_examples; i++) {
        size_t ntok = (size_t)((t->ex_h[i] / patch) * (t->ex_w[i] / patch) * t->channels);
        memcpy(t->tokens + t->ex_off[i], examples[i].tokens, ntok * sizeof(float));
        memcpy(t->tokens_flip + t->ex_off[i], examples[i].tokens_flip ? examples[i].tokens_flip : examples[i].tokens,
               ntok * sizeof(float));
        memcpy(t->txt + i * txt, examples[i].txt, txt * sizeof(float));
        memcpy(t->y + i * vec, examples[i].y, vec * sizeof(float));
    }
    memcpy(t->txt_empty, txt_empty, txt * sizeof(float));
    memcpy(t->y_empty, y_empty, vec * sizeof(float));

    int64_t b = t->batch;
    t->h_txt = fl_xmalloc((size_t)b * txt * sizeof(float));
    t->h_y = fl_xmalloc((size_t)b * vec * sizeof(float));
    t->h_t = fl_xmalloc((size_t)b * sizeof(float));
    t->h_g = fl_xmalloc((size_t)b * sizeof(float));
    t->img_ids = fl_xmalloc((size_t)(b * t->li * 3) * sizeof(float));
    t->txt_ids = fl_xcalloc((size_t)(b * t->lt * 3), sizeof(float));
    for (int64_t i = 0; i < b; i++) t->h_g[i] = config->guidance;

    fl_dtype storage = fl_ctx_storage_dtype(t->ctx);
    int64_t shape_x[3] = {b, t->li, t->channels};
    if (fl_ctx_tensor_alloc(t->ctx, storage, 3, shape_x, &t->d_x0, err) != 0 ||
        fl_ctx_tensor_alloc(t->ctx, storage, 3, shape_x, &t->d_noise, err) != 0) {
        fl_trainer_free(t);
        return NULL;
    }
    t->d_txt = device_tensor(t->ctx, storage, 3, b, t->lt, t->ctx_dim);
    t->d_y = device_tensor(t->ctx, storage, 2, b, t->vec_dim, 0);
    t->d_t = device_tensor(t->ctx, FL_F32, 1, b, 0, 0);
    t->d_g = device_tensor(t->ctx, FL_F32, 1, b, 0, 0);
    fl_ctx_upload_f32(t->ctx, &t->d_g, t->h_g, (size_t)b);

    fl_tensor params = fl_flux_trainable_params(m);
    int64_t np = fl_tensor_numel(&params);
    t->adam_m = device_tensor(t->ctx, FL_F32, 1, np, 0, 0);
    t->adam_v = device_tensor(t->ctx, FL_F32, 1, np, 0, 0);
    fl_op_fill(t->ctx, &t->adam_m, 0.0f);
    fl_op_fill(t->ctx, &t->adam_v, 0.0f);
    if (config->ema_decay > 0.0f) {
        t->ema = device_tensor(t->ctx, FL_F32, 1, np, 0, 0);
        fl_op_copy(t->ctx, &params, &t->ema);
    }
    fl_rng_seed(&t->rng, config->seed);
    return t;
}

void fl_trainer_free(fl_trainer *t) {
    if (!t) return;
    fl_tensor *dev[] = {&t->d_x0, &t->d_noise, &t->d_txt, &t->d_y, &t->d_t, &t->d_g, &t->adam_m, &t->adam_v, &t->ema};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]->data) fl_ctx_tensor_free(t->ctx, dev[i]);
    float *host[] = {t->tokens, t->tokens_flip, t->txt, t->y, t->txt_empty, t->y_empty, t->h_x0,
                     t->h_noise, t->h_txt, t->h_y, t->h_t, t->h_g, t->img_ids, t->txt_ids};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    for (size_t b = 0; b < t->n_buckets; b++) free(t->bucket_members[b]);
    free(t->bucket_members), free(t->bucket_count), free(t->ex_w), free(t->ex_h), free(t->ex_bucket), free(t->ex_off);
    free(t);
}

int fl_trainer_steps_done(const fl_trainer *t) {
    return t->step;
}

double fl_trainer_last_loss(const fl_trainer *t) {
    return t->last_loss;
}

/* ---- the step ------------------------------------------------------------------------------------- */

static double lr_at(const fl_train_config *c, int step) {
    if (step < c->warmup_steps) return c->lr * (double)(step + 1) / c->warmup_steps;
    if (c->schedule == FL_LR_CONSTANT) return c->lr;
    int span = c->steps - c->warmup_steps;
    double progress = span > 0 ? (double)(step - c->warmup_steps) / span : 1.0;
    return c->lr * 0.5 * (1.0 + cos(M_PI * progress));
}

/* [B, li, C] over the front of a device buffer sized for the largest bucket. */
static fl_tensor bucket_view(const fl_tensor *full, int64_t li) {
    int64_t shape[3] = {full->shape[0], li, full->shape[2]};
    return fl_tensor_make(full->data, full->dtype, full->device, 3, shape);
}

static void upload_batch(fl_trainer *t, fl_tensor *x0, fl_tensor *noise, int64_t li) {
    size_t tok = (size_t)(li * t->channels);
    fl_ctx_upload_f32(t->ctx, x0, t->h_x0, (size_t)t->batch * tok);
    fl_ctx_upload_f32(t->ctx, noise, t->h_noise, (size_t)t->batch * tok);
    fl_ctx_upload_f32(t->ctx, &t->d_txt, t->h_txt, (size_t)(t->batch * t->lt * t->ctx_dim));
    fl_ctx_upload_f32(t->ctx, &t->d_y, t->h_y, (size_t)(t->batch * t->vec_dim));
    fl_ctx_upload_f32(t->ctx, &t->d_t, t->h_t, (size_t)t->batch);
}

static fl_flux_inputs batch_inputs(fl_trainer *t, const fl_tensor *x0) {
    fl_flux_inputs in = {x0, &t->d_txt, &t->d_y, &t->d_t,
                         fl_flux_get_params(t->m)->guidance_embed ? &t->d_g : NULL, t->img_ids, t->txt_ids};
    return in;
}

int fl_trainer_step(fl_trainer *t, fl_train_progress *progress, fl_error *err) {
    if (t->step >= t->cfg.steps) return fl_fail(err, FL_EINVAL, "training already finished (%d steps)", t->step);
    size_t txt = (size_t)(t->lt * t->ctx_dim), vec = (size_t)t->vec_dim;
    /* The first draw picks an example (and so its bucket); the rest of the batch comes from it. */
    size_t first = (size_t)(fl_rng_next(&t->rng) % t->n), bucket = (size_t)t->ex_bucket[first];
    int bw = t->ex_w[first], bh = t->ex_h[first];
    int64_t li = (int64_t)(bh / t->patch) * (bw / t->patch);
    size_t tok = (size_t)(li * t->channels);
    double mu = fl_flux_time_shift_mu(li);
    for (int64_t b = 0; b < t->batch; b++) {
        size_t idx = b == 0 ? first
                            : t->bucket_members[bucket][fl_rng_next(&t->rng) % t->bucket_count[bucket]];
        fl_pixels_ids(bh, bw, t->patch, t->img_ids + b * li * 3);
        bool flip = t->cfg.flip && fl_rng_uniform(&t->rng) < 0.5f;
        bool drop = fl_rng_uniform(&t->rng) < t->cfg.caption_dropout;
        memcpy(t->h_x0 + b * tok, (flip ? t->tokens_flip : t->tokens) + t->ex_off[idx], tok * sizeof(float));
        memcpy(t->h_txt + b * txt, drop ? t->txt_empty : t->txt + idx * txt, txt * sizeof(float));
        memcpy(t->h_y + b * vec, drop ? t->y_empty : t->y + idx * vec, vec * sizeof(float));
        double u = 1.0 / (1.0 + exp(-(double)fl_rng_normal(&t->rng)));
        t->h_t[b] = (float)(t->cfg.timestep_shift ? fl_flux_time_shift(mu, u) : u);
    }
    fl_rng_fill_normal(&t->rng, t->h_noise, (size_t)t->batch * tok, 0.0f, 1.0f);
    fl_tensor x0 = bucket_view(&t->d_x0, li), noise = bucket_view(&t->d_noise, li);
    upload_batch(t, &x0, &noise, li);

    fl_flux_inputs in = batch_inputs(t, &x0);
    fl_flux_zero_grads(t->m);
    double loss = 0;
    if (fl_flux_loss_and_grads(t->m, &in, &x0, &noise, &loss, err) != 0) return -1;
    if (!isfinite(loss)) return fl_fail(err, FL_EINVAL, "the loss is not finite at step %d", t->step + 1);

    fl_tensor params = fl_flux_trainable_params(t->m), grads = fl_flux_trainable_grads(t->m);
    double norm = sqrt(fl_op_sum_squares(t->ctx, &grads));
    float grad_scale = 1.0f;
    if (t->cfg.max_grad_norm > 0.0f && norm > t->cfg.max_grad_norm) grad_scale = (float)(t->cfg.max_grad_norm / (norm + 1e-6));
    double lr = lr_at(&t->cfg, t->step);
    fl_adamw_params ap = {(float)lr, t->cfg.beta1, t->cfg.beta2, t->cfg.eps, t->cfg.weight_decay, grad_scale,
                          t->step + 1};
    fl_op_adamw(t->ctx, &params, &grads, &t->adam_m, &t->adam_v, &ap);
    if (t->ema.data) {
        fl_op_scale(t->ctx, &t->ema, t->cfg.ema_decay);
        fl_op_add(t->ctx, &t->ema, &params, 1.0f - t->cfg.ema_decay, &t->ema);
    }
    t->step++;
    t->last_loss = loss;
    if (progress) {
        progress->step = t->step;
        progress->total = t->cfg.steps;
        progress->loss = loss;
        progress->grad_norm = norm;
        progress->lr = lr;
    }
    return 0;
}

/* ---- evaluation ----------------------------------------------------------------------------------- */

/* Swaps the live parameters with the EMA copy (no-op without EMA). */
static void swap_ema(fl_trainer *t) {
    if (!t->ema.data) return;
    fl_tensor params = fl_flux_trainable_params(t->m);
    int64_t n = fl_tensor_numel(&params);
    fl_tensor tmp = device_tensor(t->ctx, FL_F32, 1, n, 0, 0);
    fl_op_copy(t->ctx, &params, &tmp);
    fl_op_copy(t->ctx, &t->ema, &params);
    fl_op_copy(t->ctx, &tmp, &t->ema);
    fl_ctx_tensor_free(t->ctx, &tmp);
}

double fl_trainer_eval_loss(fl_trainer *t, const float *timesteps, int n_timesteps, uint64_t noise_seed) {
    swap_ema(t);
    size_t max_tok = (size_t)(t->li * t->channels), txt = (size_t)(t->lt * t->ctx_dim), vec = (size_t)t->vec_dim;
    fl_rng rng;
    fl_rng_seed(&rng, noise_seed);
    float *xt = fl_xmalloc(max_tok * sizeof(float)), *target = fl_xmalloc(max_tok * sizeof(float));
    float *noise = fl_xmalloc(max_tok * sizeof(float)), *pred = fl_xmalloc(max_tok * sizeof(float));
    fl_dtype storage = t->d_x0.dtype;
    fl_tensor d_full = device_tensor(t->ctx, storage, 3, 1, t->li, t->channels);
    fl_tensor d_txt = device_tensor(t->ctx, storage, 3, 1, t->lt, t->ctx_dim);
    fl_tensor d_y = device_tensor(t->ctx, storage, 2, 1, t->vec_dim, 0);
    fl_tensor d_t = device_tensor(t->ctx, FL_F32, 1, 1, 0, 0), d_g = device_tensor(t->ctx, FL_F32, 1, 1, 0, 0);
    fl_ctx_upload_f32(t->ctx, &d_g, &t->cfg.guidance, 1);
    double total = 0;
    for (size_t e = 0; e < t->n; e++) {
        int64_t li = (int64_t)(t->ex_h[e] / t->patch) * (t->ex_w[e] / t->patch);
        size_t tok = (size_t)(li * t->channels);
        fl_tensor d_img = bucket_view(&d_full, li);
        fl_pixels_ids(t->ex_h[e], t->ex_w[e], t->patch, t->img_ids);
        for (int k = 0; k < n_timesteps; k++) {
            float tv = timesteps[k];
            fl_rng_fill_normal(&rng, noise, tok, 0.0f, 1.0f);
            const float *x0 = t->tokens + t->ex_off[e];
            for (size_t i = 0; i < tok; i++) {
                xt[i] = (1.0f - tv) * x0[i] + tv * noise[i];
                target[i] = noise[i] - x0[i];
            }
            fl_ctx_upload_f32(t->ctx, &d_img, xt, tok);
            fl_ctx_upload_f32(t->ctx, &d_txt, t->txt + e * txt, txt);
            fl_ctx_upload_f32(t->ctx, &d_y, t->y + e * vec, vec);
            fl_ctx_upload_f32(t->ctx, &d_t, &tv, 1);
            fl_flux_inputs in = {&d_img, &d_txt, &d_y, &d_t, fl_flux_get_params(t->m)->guidance_embed ? &d_g : NULL,
                                 t->img_ids, t->txt_ids};
            fl_tensor out;
            FL_CHECK(fl_flux_forward(t->m, &in, &out, NULL) == 0);
            fl_ctx_download_f32(t->ctx, pred, &out, tok);
            double sum = 0;
            for (size_t i = 0; i < tok; i++) sum += ((double)pred[i] - target[i]) * ((double)pred[i] - target[i]);
            total += sum / (double)tok;
        }
    }
    fl_tensor *dev[] = {&d_full, &d_txt, &d_y, &d_t, &d_g};
    for (int i = 0; i < 5; i++) fl_ctx_tensor_free(t->ctx, dev[i]);
    free(xt), free(target), free(noise), free(pred);
    swap_ema(t);
    return total / (double)(t->n * (size_t)n_timesteps);
}

/* ---- checkpoints and the adapter file ------------------------------------------------------------ */

/* The configuration as JSON-ish text; a checkpoint only resumes under the identical text. */
static void config_text(const fl_trainer *t, char *buf, size_t size) {
    const fl_train_config *c = &t->cfg;
    snprintf(buf, size,
             "{\"steps\":%d,\"batch_size\":%d,\"rank\":%d,\"alpha\":%.9g,\"targets\":\"%s\",\"lr\":%.9g,"
             "\"warmup_steps\":%d,\"schedule\":\"%s\",\"beta1\":%.9g,\"beta2\":%.9g,\"eps\":%.9g,"
             "\"weight_decay\":%.9g,\"max_grad_norm\":%.9g,\"ema_decay\":%.9g,\"timestep_shift\":%s,"
             "\"guidance\":%.9g,\"flip\":%s,\"caption_dropout\":%.9g,\"max_text_tokens\":%d,\"seed\":%" PRIu64
             ",\"examples\":%zu,\"resolution\":[%d,%d],\"buckets\":%zu}",
             c->steps, c->batch_size, c->rank, (double)c->alpha, c->targets, (double)c->lr, c->warmup_steps,
             c->schedule == FL_LR_COSINE ? "cosine" : "constant", (double)c->beta1, (double)c->beta2, (double)c->eps,
             (double)c->weight_decay, (double)c->max_grad_norm, (double)c->ema_decay, c->timestep_shift ? "true" : "false",
             (double)c->guidance, c->flip ? "true" : "false", (double)c->caption_dropout, c->max_text_tokens, c->seed,
             t->n, t->width, t->height, t->n_buckets);
}

/* Device f32 tensor -> malloc'ed host copy. */
static float *host_copy(fl_trainer *t, const fl_tensor *d) {
    int64_t n = fl_tensor_numel(d);
    float *h = fl_xmalloc((size_t)(n ? n : 1) * sizeof(float));
    fl_ctx_download_f32(t->ctx, h, d, (size_t)n);
    return h;
}

int fl_trainer_save_checkpoint(fl_trainer *t, const char *path, fl_error *err) {
    fl_tensor params = fl_flux_trainable_params(t->m);
    float *hp = host_copy(t, &params), *hm = host_copy(t, &t->adam_m), *hv = host_copy(t, &t->adam_v);
    float *he = t->ema.data ? host_copy(t, &t->ema) : NULL;
    int64_t n = fl_tensor_numel(&params);
    fl_safetensors_entry entries[4] = {
        {"params", FL_ST_F32, 1, {n}, hp}, {"adam_m", FL_ST_F32, 1, {n}, hm}, {"adam_v", FL_ST_F32, 1, {n}, hv},
        {"ema", FL_ST_F32, 1, {n}, he}};
    char step[32], rng[80], loss[40], config[2048];
    snprintf(step, sizeof step, "%d", t->step);
    snprintf(rng, sizeof rng, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, t->rng.s[0], t->rng.s[1],
             t->rng.s[2], t->rng.s[3]);
    snprintf(loss, sizeof loss, "%.9g", t->last_loss);
    config_text(t, config, sizeof config);
    fl_safetensors_kv meta[5] = {{"format", CHECKPOINT_FORMAT}, {"step", step}, {"rng", rng}, {"last_loss", loss},
                                 {"config", config}};
    int rc = fl_safetensors_write(path, entries, he ? 4 : 3, meta, 5, err);
    free(hp), free(hm), free(hv), free(he);
    return rc;
}

static int load_vector(fl_trainer *t, const fl_safetensors *st, const char *name, fl_tensor *dst, fl_error *err) {
    const fl_safetensors_info *info = fl_safetensors_find(st, name);
    int64_t n = fl_tensor_numel(dst);
    if (!info || info->dtype != FL_ST_F32 || info->ndim != 1 || info->shape[0] != n)
        return fl_fail(err, FL_EINVAL, "checkpoint tensor '%s' is missing or not F32 [%lld]", name, (long long)n);
    fl_ctx_upload_f32(t->ctx, dst, info->data, (size_t)n);
    return 0;
}

int fl_trainer_load_checkpoint(fl_trainer *t, const char *path, fl_error *err) {
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    int rc = 0;
    const char *format = fl_safetensors_metadata_get(st, "format");
    const char *step = fl_safetensors_metadata_get(st, "step");
    const char *rng = fl_safetensors_metadata_get(st, "rng");
    const char *config = fl_safetensors_metadata_get(st, "config");
    const char *loss = fl_safetensors_metadata_get(st, "last_loss");
    char mine[2048];
    config_text(t, mine, sizeof mine);
    long steps_done = -1;
    uint64_t state[4];
    if (!format || strcmp(format, CHECKPOINT_FORMAT) || !step || !rng || !config || !loss)
        rc = fl_fail(err, FL_EINVAL, "not a flashlora training checkpoint");
    else if (strcmp(config, mine))
        rc = fl_fail(err, FL_EINVAL, "the checkpoint was made with another configuration: %s", config);
    else if (sscanf(step, "%ld", &steps_done) != 1 || steps_done < 0 || steps_done > t->cfg.steps)
        rc = fl_fail(err, FL_EINVAL, "checkpoint step '%s' is invalid", step);
    else if (strlen(rng) != 64 ||
             sscanf(rng, "%16" SCNx64 "%16" SCNx64 "%16" SCNx64 "%16" SCNx64, &state[0], &state[1], &state[2], &state[3]) != 4)
        rc = fl_fail(err, FL_EINVAL, "checkpoint RNG state '%s' is invalid", rng);
    if (rc == 0) {
        fl_tensor params = fl_flux_trainable_params(t->m);
        rc = load_vector(t, st, "params", &params, err);
        if (rc == 0) rc = load_vector(t, st, "adam_m", &t->adam_m, err);
        if (rc == 0) rc = load_vector(t, st, "adam_v", &t->adam_v, err);
        if (rc == 0 && t->ema.data) rc = load_vector(t, st, "ema", &t->ema, err);
    }
    if (rc == 0) {
        t->step = (int)steps_done;
        memcpy(t->rng.s, state, sizeof state);
        t->last_loss = strtod(loss, NULL);
    }
    fl_safetensors_close(st);
    return rc == 0 ? 0 : fl_fail_prefix(err, "%s", path);
}

int fl_trainer_save_adapter(fl_trainer *t, const char *path, const fl_safetensors_kv *extra, size_t n_extra,
                            fl_error *err) {
    swap_ema(t);
    fl_tensor params = fl_flux_trainable_params(t->m);
    float *host = host_copy(t, &params);
    swap_ema(t);
    /* One entry per adapted Linear, A then B, in checkpoint order; the flat buffer holds them in
     * the same order (models/flux_model.c). */
    size_t n_lin = fl_flux_linear_count(t->m), n_entries = 0;
    fl_safetensors_entry *entries = fl_xcalloc(2 * n_lin, sizeof *entries);
    char (*names)[FL_FLUX_NAME_MAX + 16] = fl_xcalloc(2 * n_lin, sizeof *names);
    const float *cursor = host;
    for (size_t i = 0; i < n_lin; i++) {
        fl_flux_linear *lin = fl_flux_linear_at(t->m, i);
        if (lin->trainable < 0) continue;
        const fl_flux_adapter *ad = &lin->adapters[lin->trainable];
        for (int part = 0; part < 2; part++) {
            const fl_tensor *src = part == 0 ? &ad->a : &ad->b;
            fl_safetensors_entry *e = &entries[n_entries];
            snprintf(names[n_entries], sizeof names[0], "%s.%s", lin->name, part == 0 ? "lora_A.weight" : "lora_B.weight");
            e->name = names[n_entries];
            e->dtype = FL_ST_F32;
            e->ndim = 2;
            e->shape[0] = src->shape[0];
            e->shape[1] = src->shape[1];
            e->data = cursor;
            cursor += src->shape[0] * src->shape[1];
            n_entries++;
        }
    }
    FL_CHECK(cursor == host + fl_tensor_numel(&params));
    char rank[16], alpha[32], steps[16], loss[40], config[2048];
    snprintf(rank, sizeof rank, "%d", t->cfg.rank);
    snprintf(alpha, sizeof alpha, "%.9g", (double)t->cfg.alpha);
    snprintf(steps, sizeof steps, "%d", t->step);
    snprintf(loss, sizeof loss, "%.6g", t->last_loss);
    config_text(t, config, sizeof config);
    size_t n_meta = 7 + n_extra;
    fl_safetensors_kv *meta = fl_xcalloc(n_meta, sizeof *meta);
    meta[0] = (fl_safetensors_kv){"format", "flashlora.lora.v1"};
    meta[1] = (fl_safetensors_kv){"rank", rank};
    meta[2] = (fl_safetensors_kv){"alpha", alpha};
    meta[3] = (fl_safetensors_kv){"targets", t->cfg.targets};
    meta[4] = (fl_safetensors_kv){"steps", steps};
    meta[5] = (fl_safetensors_kv){"final_loss", loss};
    meta[6] = (fl_safetensors_kv){"training_config", config};
    for (size_t i = 0; i < n_extra; i++) meta[7 + i] = extra[i];
    int rc = fl_safetensors_write(path, entries, n_entries, meta, n_meta, err);
    free(meta);
    free(names);
    free(entries);
    free(host);
    return rc;
}
