/*
 * sampler.c — Euler sampling on the shifted schedule and PNG encoding (see sampler.h).
 */
#include "models/sampler.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/rng.h"
#include "fl_build_config.h"
#include "kernels/ops.h"
#include "models/codec_pixels.h"
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

int fl_flux_sample_pixels(fl_flux_model *m, const fl_sample_params *sp, float *image, fl_error *err) {
    const fl_flux_params *p = fl_flux_get_params(m);
    int patch = (int)lround(sqrt(p->in_channels / 3.0));
    if (3 * patch * patch != p->in_channels || p->out_channels != p->in_channels)
        return fl_fail(err, FL_EUNSUPPORTED, "sampling needs the pixel image space (3 p^2 channels)");
    if (sp->width < patch || sp->height < patch || sp->width % patch || sp->height % patch)
        return fl_fail(err, FL_EINVAL, "size %dx%d is not a positive multiple of %d", sp->width, sp->height, patch);
    if (sp->steps < 1 || sp->steps > 1000) return fl_fail(err, FL_EINVAL, "steps %d is outside [1, 1000]", sp->steps);
    if (sp->max_text_tokens < 1 || sp->max_text_tokens > 512)
        return fl_fail(err, FL_EINVAL, "max text tokens %d is outside [1, 512]", sp->max_text_tokens);
    fl_ctx *ctx = fl_flux_get_ctx(m);
    int64_t li = (int64_t)(sp->width / patch) * (sp->height / patch), c = p->in_channels, lt = sp->max_text_tokens;
    size_t tok = (size_t)(li * c);
    float *x = fl_xmalloc(tok * sizeof(float)), *v = fl_xmalloc(tok * sizeof(float));
    float *txt = fl_xmalloc((size_t)(lt * p->context_in_dim) * sizeof(float)), *y = fl_xmalloc((size_t)p->vec_in_dim * sizeof(float));
    float *img_ids = fl_xmalloc((size_t)(li * 3) * sizeof(float)), *txt_ids = fl_xcalloc((size_t)(lt * 3), sizeof(float));
    fl_pixels_ids(sp->height, sp->width, patch, img_ids);
    fl_text_hash_encode(sp->prompt, (int)lt, p->context_in_dim, p->vec_in_dim, txt, y);
    fl_rng rng;
    fl_rng_seed(&rng, sp->seed);
    fl_rng_fill_normal(&rng, x, tok, 0.0f, 1.0f);

    fl_dtype storage = ctx->device.kind == FL_DEVICE_CUDA ? FL_BF16 : FL_F32;
    int64_t s_img[3] = {1, li, c}, s_txt[3] = {1, lt, p->context_in_dim}, s_y[2] = {1, p->vec_in_dim}, s_one[1] = {1};
    fl_tensor d_img = fl_ctx_tensor(ctx, storage, 3, s_img), d_txt = fl_ctx_tensor(ctx, storage, 3, s_txt);
    fl_tensor d_y = fl_ctx_tensor(ctx, storage, 2, s_y), d_t = fl_ctx_tensor(ctx, FL_F32, 1, s_one);
    fl_tensor d_g = fl_ctx_tensor(ctx, FL_F32, 1, s_one);
    fl_ctx_upload_f32(ctx, &d_txt, txt, (size_t)(lt * p->context_in_dim));
    fl_ctx_upload_f32(ctx, &d_y, y, (size_t)p->vec_in_dim);
    fl_ctx_upload_f32(ctx, &d_g, &sp->guidance, 1);
    fl_flux_inputs in = {&d_img, &d_txt, &d_y, &d_t, p->guidance_embed ? &d_g : NULL, img_ids, txt_ids};
    double mu = fl_flux_time_shift_mu(li);
    int rc = 0;
    for (int i = 0; i < sp->steps && rc == 0; i++) {
        float t_cur = (float)fl_flux_time_shift(mu, 1.0 - (double)i / sp->steps);
        float t_next = (float)fl_flux_time_shift(mu, 1.0 - (double)(i + 1) / sp->steps);
        fl_ctx_upload_f32(ctx, &d_img, x, tok);
        fl_ctx_upload_f32(ctx, &d_t, &t_cur, 1);
        fl_tensor out;
        rc = fl_flux_forward(m, &in, &out, err);
        if (rc == 0) {
            fl_ctx_download_f32(ctx, v, &out, tok);
            for (size_t k = 0; k < tok; k++) x[k] += (t_next - t_cur) * v[k];
        }
    }
    if (rc == 0) {
        for (size_t k = 0; k < tok; k++) x[k] = x[k] < -1.0f ? -1.0f : x[k] > 1.0f ? 1.0f : x[k];
        fl_pixels_unpack(x, sp->height, sp->width, patch, image);
    }
    fl_tensor *dev[] = {&d_img, &d_txt, &d_y, &d_t, &d_g};
    for (int i = 0; i < 5; i++) fl_ctx_tensor_free(ctx, dev[i]);
    free(x), free(v), free(txt), free(y), free(img_ids), free(txt_ids);
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
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = 0;
    if (fd < 0) rc = fl_fail(err, FL_EIO, "%s: %s", tmp, strerror(errno));
    else {
        size_t done = 0;
        while (done < size && rc == 0) {
            ssize_t n = write(fd, png + done, size - done);
            if (n <= 0) rc = fl_fail(err, FL_EIO, "%s: %s", tmp, strerror(errno));
            else done += (size_t)n;
        }
        if (rc == 0 && fsync(fd) != 0) rc = fl_fail(err, FL_EIO, "%s: %s", tmp, strerror(errno));
        close(fd);
        if (rc == 0 && rename(tmp, path) != 0) rc = fl_fail(err, FL_EIO, "%s: %s", path, strerror(errno));
        if (rc != 0) unlink(tmp);
    }
    free(png);
    return rc;
}
