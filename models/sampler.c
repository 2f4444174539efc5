/*
 * sampler.c — Euler sampling on the shifted schedule, for one request or a batch of requests
 * with per-sample adapters, and PNG encoding (see sampler.h).
 */
#include "models/sampler.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/rng.h"
#include "fl_build_config.h"
#include "kernels/ops.h"
#include "models/codec_pixels.h"
#include "models/flux_internal.h"
#include "models/text_hash.h"

#ifdef FL_HAVE_STB
#include <stb_image_write.h>
#endif

double fl_flux_time_shift_mu(int64_t image_tokens) {
    double slope = (1.15 - 0.5) / (4096.0 - 256.0);
    return 0.5 + slope * ((double)image_tokens - 256.0);
}

double fl_flux_time_shift(double mu, double t) {
    if (t <= 0.0) return 0.0;
    if (t >= 1.0) return 1.0;
    return exp(mu) / (exp(mu) + (1.0 / t - 1.0));
}

int fl_flux_sample_tokens(fl_flux_model *m, const fl_token_batch *b, int steps, bool shift,
                          const fl_sample_hooks *hooks, fl_error *err) {
    const fl_flux_params *p = fl_flux_get_params(m);
    if (steps < 1 || steps > 1000) return fl_fail(err, FL_EINVAL, "steps %d is outside [1, 1000]", steps);
    if (b->n < 1 || b->image_tokens < 1 || b->text_tokens < 1 || !b->x || !b->txt || !b->y || !b->img_ids)
        return fl_fail(err, FL_EINVAL, "a token batch needs samples, image and text tokens");
    fl_ctx *ctx = fl_flux_get_ctx(m);
    int64_t li = b->image_tokens, c = p->in_channels, lt = b->text_tokens;
    int64_t cd = p->context_in_dim, vd = p->vec_in_dim, nb = b->n;
    size_t all = (size_t)(nb * li * c);
    float *x = b->x, *v = fl_xmalloc(all * sizeof(float));
    float *img_ids = fl_xmalloc((size_t)(nb * li * 3) * sizeof(float));
    float *txt_ids = fl_xcalloc((size_t)(nb * lt * 3), sizeof(float));
    float *t = fl_xmalloc((size_t)nb * sizeof(float)), *g = fl_xmalloc((size_t)nb * sizeof(float));
    for (int64_t r = 0; r < nb; r++) {
        memcpy(img_ids + r * li * 3, b->img_ids, (size_t)(li * 3) * sizeof(float));
        g[r] = b->guidance ? b->guidance[r] : 1.0f;
    }
    fl_dtype storage = fl_ctx_storage_dtype(ctx);
    int64_t s_img[3] = {nb, li, c}, s_txt[3] = {nb, lt, cd}, s_y[2] = {nb, vd}, s_b[1] = {nb};
    fl_tensor d_img = fl_ctx_tensor(ctx, storage, 3, s_img), d_txt = fl_ctx_tensor(ctx, storage, 3, s_txt);
    fl_tensor d_y = fl_ctx_tensor(ctx, storage, 2, s_y), d_t = fl_ctx_tensor(ctx, FL_F32, 1, s_b);
    fl_tensor d_g = fl_ctx_tensor(ctx, FL_F32, 1, s_b);
    fl_ctx_upload_f32(ctx, &d_txt, b->txt, (size_t)(nb * lt * cd));
    fl_ctx_upload_f32(ctx, &d_y, b->y, (size_t)(nb * vd));
    fl_ctx_upload_f32(ctx, &d_g, g, (size_t)nb);
    fl_flux_inputs in = {&d_img, &d_txt, &d_y, &d_t, p->guidance_embed ? &d_g : NULL, img_ids, txt_ids};

    /* Classifier-free guidance: a model trained with caption dropout and without a guidance
     * embedding takes a sample's guidance g != 1 as the CFG scale, v = v_u + g (v_c - v_u), with a
     * second forward per step on the empty caption (same rows, same adapters). A sample with g == 1
     * keeps v_c exactly, so its image does not depend on its batch neighbours. */
    bool cfg = false;
    if (!p->guidance_embed && fl_flux_cfg_capable(m))
        for (int64_t r = 0; r < nb; r++) cfg = cfg || g[r] != 1.0f;
    float *v_u = cfg ? fl_xmalloc(all * sizeof(float)) : NULL;
    fl_tensor d_txt_u = {0}, d_y_u = {0};
    if (cfg) {
        d_txt_u = fl_ctx_tensor(ctx, storage, 3, s_txt);
        d_y_u = fl_ctx_tensor(ctx, storage, 2, s_y);
        if (b->txt_uncond && b->y_uncond) {
            float *tu = fl_xmalloc((size_t)(nb * lt * cd) * sizeof(float)), *yu = fl_xmalloc((size_t)(nb * vd) * sizeof(float));
            for (int64_t r = 0; r < nb; r++) {
                memcpy(tu + r * lt * cd, b->txt_uncond, (size_t)(lt * cd) * sizeof(float));
                memcpy(yu + r * vd, b->y_uncond, (size_t)vd * sizeof(float));
            }
            fl_ctx_upload_f32(ctx, &d_txt_u, tu, (size_t)(nb * lt * cd));
            fl_ctx_upload_f32(ctx, &d_y_u, yu, (size_t)(nb * vd));
            free(tu), free(yu);
        } else { /* the hashed-word encoder's empty caption: zeros */
            fl_op_fill(ctx, &d_txt_u, 0.0f);
            fl_op_fill(ctx, &d_y_u, 0.0f);
        }
    }
    fl_flux_inputs in_u = {&d_img, &d_txt_u, &d_y_u, &d_t, NULL, img_ids, txt_ids};
    double mu = fl_flux_time_shift_mu(li);
    int rc = 0;
    for (int i = 0; i < steps && rc == 0; i++) {
        if (hooks && hooks->before_step && hooks->before_step(hooks->arg, i, steps)) {
            rc = fl_fail(err, FL_EUNAVAILABLE, "stopped at step %d of %d", i, steps);
            break;
        }
        double u_cur = 1.0 - (double)i / steps, u_next = 1.0 - (double)(i + 1) / steps;
        float t_cur = (float)(shift ? fl_flux_time_shift(mu, u_cur) : u_cur);
        float t_next = (float)(shift ? fl_flux_time_shift(mu, u_next) : u_next);
        for (int64_t r = 0; r < nb; r++) t[r] = t_cur;
        fl_ctx_upload_f32(ctx, &d_img, x, all);
        fl_ctx_upload_f32(ctx, &d_t, t, (size_t)nb);
        fl_tensor out;
        rc = fl_flux_forward(m, &in, &out, err);
        if (rc == 0) fl_ctx_download_f32(ctx, v, &out, all);
        if (rc == 0 && cfg) {
            rc = fl_flux_forward(m, &in_u, &out, err);
            if (rc == 0) fl_ctx_download_f32(ctx, v_u, &out, all);
            size_t tok = (size_t)(li * c);
            for (int64_t r = 0; r < nb && rc == 0; r++) {
                if (g[r] == 1.0f) continue;
                float *vr = v + (size_t)r * tok, *ur = v_u + (size_t)r * tok;
                for (size_t k = 0; k < tok; k++) vr[k] = ur[k] + g[r] * (vr[k] - ur[k]);
            }
        }
        if (rc == 0)
            for (size_t k = 0; k < all; k++) x[k] += (t_next - t_cur) * v[k];
    }
    fl_tensor *dev[] = {&d_img, &d_txt, &d_y, &d_t, &d_g, &d_txt_u, &d_y_u};
    for (int i = 0; i < 7; i++)
        if (dev[i]->data) fl_ctx_tensor_free(ctx, dev[i]);
    free(v), free(v_u), free(img_ids), free(txt_ids), free(t), free(g);
    return rc;
}

/* The Euler loop over n requests of one size in the pixel image space, one forward per step for
 * all of them. Request r owns rows [r*L, (r+1)*L) of every input, so with n == 1 this is exactly
 * the single-request sampler. With per_sample the requests' adapters are installed as per-sample
 * adapters for the run (the caller restores the model's selection); otherwise the model's
 * adapters apply as set. hooks (may be NULL) are asked before every step whether to stop. */
static int sample_run(fl_flux_model *m, int width, int height, int steps, int max_text_tokens,
                      const fl_sample_request *reqs, int n, bool per_sample, const fl_sample_hooks *hooks,
                      float **images, fl_error *err) {
    const fl_flux_params *p = fl_flux_get_params(m);
    int patch = fl_flux_pixel_patch(p);
    if (patch == 0)
        return fl_fail(err, FL_EUNSUPPORTED, "sampling needs the pixel image space (3 p^2 channels)");
    if (width < patch || height < patch || width % patch || height % patch)
        return fl_fail(err, FL_EINVAL, "size %dx%d is not a positive multiple of %d", width, height, patch);
    if (steps < 1 || steps > 1000) return fl_fail(err, FL_EINVAL, "steps %d is outside [1, 1000]", steps);
    if (max_text_tokens < 1 || max_text_tokens > 512)
        return fl_fail(err, FL_EINVAL, "max text tokens %d is outside [1, 512]", max_text_tokens);
    if (n < 1 || !reqs || !images) return fl_fail(err, FL_EINVAL, "a batch needs at least one request");
    for (int r = 0; r < n; r++)
        if (!images[r]) return fl_fail(err, FL_EINVAL, "request %d has no image buffer", r);
    if (per_sample) {
        fl_flux_sample_adapters *sel = fl_xmalloc((size_t)n * sizeof *sel);
        for (int r = 0; r < n; r++) sel[r] = reqs[r].adapters;
        int rc = fl_flux_set_sample_adapters(m, n, sel, err);
        free(sel);
        if (rc != 0) return -1;
    }
    int64_t li = (int64_t)(width / patch) * (height / patch), c = p->in_channels, lt = max_text_tokens;
    int64_t cd = p->context_in_dim, vd = p->vec_in_dim, nb = n;
    size_t tok = (size_t)(li * c), all = (size_t)nb * tok;
    float *x = fl_xmalloc(all * sizeof(float));
    float *txt = fl_xmalloc((size_t)(nb * lt * cd) * sizeof(float)), *y = fl_xmalloc((size_t)(nb * vd) * sizeof(float));
    float *img_ids = fl_xmalloc((size_t)(li * 3) * sizeof(float));
    float *g = fl_xmalloc((size_t)nb * sizeof(float));
    fl_pixels_ids(height, width, patch, img_ids);
    for (int r = 0; r < n; r++) {
        fl_text_hash_encode(reqs[r].prompt, (int)lt, (int)cd, (int)vd, txt + (size_t)(r * lt * cd), y + (size_t)(r * vd));
        fl_rng rng;
        fl_rng_seed(&rng, reqs[r].seed);
        fl_rng_fill_normal(&rng, x + (size_t)r * tok, tok, 0.0f, 1.0f);
        g[r] = reqs[r].guidance;
    }
    fl_token_batch tb = {n, li, img_ids, lt, txt, y, g, x, NULL, NULL};
    int rc = fl_flux_sample_tokens(m, &tb, steps, true, hooks, err);
    if (rc == 0) {
        for (size_t k = 0; k < all; k++) x[k] = x[k] < -1.0f ? -1.0f : x[k] > 1.0f ? 1.0f : x[k];
        for (int r = 0; r < n; r++) fl_pixels_unpack(x + (size_t)r * tok, height, width, patch, images[r]);
    }
    free(x), free(txt), free(y), free(img_ids), free(g);
    return rc;
}

int fl_flux_sample_pixels(fl_flux_model *m, const fl_sample_params *sp, float *image, fl_error *err) {
    fl_sample_request req;
    memset(&req, 0, sizeof req);
    req.prompt = sp->prompt;
    req.seed = sp->seed;
    req.guidance = sp->guidance;
    return sample_run(m, sp->width, sp->height, sp->steps, sp->max_text_tokens, &req, 1, false, NULL, &image, err);
}

int fl_flux_sample_pixels_batch(fl_flux_model *m, int width, int height, int steps, int max_text_tokens,
                                const fl_sample_request *reqs, int n, float **images, fl_error *err) {
    return fl_flux_sample_pixels_batch_hooked(m, width, height, steps, max_text_tokens, reqs, n, NULL, images, err);
}

int fl_flux_sample_pixels_batch_hooked(fl_flux_model *m, int width, int height, int steps, int max_text_tokens,
                                       const fl_sample_request *reqs, int n, const fl_sample_hooks *hooks,
                                       float **images, fl_error *err) {
    /* Keep the caller's selection to put it back afterwards. */
    int prev_batch = m->sample_batch;
    fl_flux_sample_adapters *prev = NULL;
    if (prev_batch) {
        prev = fl_xmalloc((size_t)prev_batch * sizeof *prev);
        memcpy(prev, m->sample_sel, (size_t)prev_batch * sizeof *prev);
    }
    int rc = sample_run(m, width, height, steps, max_text_tokens, reqs, n, true, hooks, images, err);
    if (prev) {
        if (fl_flux_set_sample_adapters(m, prev_batch, prev, NULL) != 0) fl_flux_clear_sample_adapters(m);
        free(prev);
    } else {
        fl_flux_clear_sample_adapters(m);
    }
    return rc;
}

#ifdef FL_HAVE_STB
typedef struct png_buffer {
    unsigned char *data;
    size_t size;
    int failed;
} png_buffer;

static void png_append(void *context, void *data, int size) {
    png_buffer *b = context;
    unsigned char *grown = realloc(b->data, b->size + (size_t)size);
    if (!grown) {
        b->failed = 1;
        return;
    }
    memcpy(grown + b->size, data, (size_t)size);
    b->data = grown;
    b->size += (size_t)size;
}
#endif

int fl_png_encode(const float *image, int width, int height, unsigned char **png, size_t *size, fl_error *err) {
#ifdef FL_HAVE_STB
    unsigned char *rgb = malloc((size_t)width * (size_t)height * 3);
    if (!rgb) return fl_fail(err, FL_ENOMEM, "out of memory encoding a PNG");
    for (size_t i = 0; i < (size_t)width * (size_t)height * 3; i++) {
        float v = (image[i] + 1.0f) * 127.5f;
        rgb[i] = (unsigned char)(v < 0.0f ? 0 : v > 255.0f ? 255 : lrintf(v));
    }
    png_buffer b = {0};
    int ok = stbi_write_png_to_func(png_append, &b, width, height, 3, rgb, width * 3);
    free(rgb);
    if (!ok || b.failed) {
        free(b.data);
        return fl_fail(err, FL_ENOMEM, "PNG encoding failed");
    }
    *png = b.data;
    *size = b.size;
    return 0;
#else
    (void)image, (void)width, (void)height, (void)png, (void)size;
    return fl_fail(err, FL_EUNSUPPORTED, "this build has no PNG encoder (stb was not found)");
#endif
}

int fl_png_write(const char *path, const float *image, int width, int height, fl_error *err) {
    unsigned char *png = NULL;
    size_t size = 0;
    if (fl_png_encode(image, width, height, &png, &size, err) != 0) return -1;
    int rc = fl_write_file_atomic(path, png, size, err);
    free(png);
    return rc;
}
