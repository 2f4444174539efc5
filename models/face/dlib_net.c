/*
 * dlib_net.c — the executor of parsed dlib networks (see dlib_net.h): weights uploaded once,
 * shapes inferred per input size, one activation buffer per size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/face/dlib_net.h"

#define MAX_TAGS 16

typedef struct mlayer {
    fl_dlib_kind kind;
    int id;
    int kr, kc, sy, sx, py, px;
    int out_channels, in_channels;
    bool relu_after, disabled, fuse_relu; /* fuse_relu: an affine whose next layer is a ReLU */
    bool skip;                            /* a ReLU already fused into the affine below it */
    fl_tensor w, b, scale, shift;
} mlayer;

struct fl_dlib_model {
    fl_ctx *ctx;
    fl_dtype dtype;
    mlayer *layers;
    size_t n;
    bool has_tags;
    /* the buffer planned for one input size */
    int planned_h, planned_w;
    void *buffer;
    size_t buffer_bytes;
    int64_t (*shapes)[4]; /* per layer output, [n + 1] with the input first */
    size_t *offsets;      /* per layer output, bytes into buffer; SIZE_MAX: an alias */
    int *alias;           /* per layer: the layer (index + 1, 0 = input) whose output it is */
};

static void free_t(fl_ctx *ctx, fl_tensor *t) {
    if (t->data) fl_ctx_tensor_free(ctx, t);
    memset(t, 0, sizeof *t);
}

void fl_dlib_model_free(fl_dlib_model *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) {
        free_t(m->ctx, &m->layers[i].w);
        free_t(m->ctx, &m->layers[i].b);
        free_t(m->ctx, &m->layers[i].scale);
        free_t(m->ctx, &m->layers[i].shift);
    }
    if (m->buffer) fl_ctx_free(m->ctx, m->buffer);
    free(m->layers);
    free(m->shapes);
    free(m->offsets);
    free(m->alias);
    free(m);
}

static int upload(fl_dlib_model *m, const float *host, int ndim, const int64_t *shape, fl_tensor *t, fl_error *err) {
    if (fl_ctx_tensor_alloc(m->ctx, m->dtype, ndim, shape, t, err) != 0) return -1;
    fl_ctx_upload_f32(m->ctx, t, host, (size_t)fl_tensor_numel(t));
    return 0;
}

int fl_dlib_model_build(fl_ctx *ctx, const fl_dlib_net *net, fl_dlib_model **out, fl_error *err) {
    *out = NULL;
    fl_dlib_model *m = fl_xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->dtype = fl_ctx_storage_dtype(ctx);
    m->n = net->n_layers;
    m->layers = fl_xcalloc(m->n ? m->n : 1, sizeof *m->layers);
    int channels = 3, tag_channels[MAX_TAGS];
    bool tag_set[MAX_TAGS] = {false};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const fl_dlib_layer *s = &net->layers[i];
        mlayer *l = &m->layers[i];
        l->kind = s->kind, l->id = s->id, l->kr = s->k_rows, l->kc = s->k_cols, l->sy = s->stride_y;
        l->sx = s->stride_x, l->py = s->pad_y, l->px = s->pad_x, l->out_channels = s->out_channels;
        l->in_channels = s->in_channels, l->relu_after = s->relu_after, l->disabled = s->disabled;
        switch (s->kind) {
        case FL_DLIB_CON:
            if (s->in_channels != channels) {
                rc = fl_fail(err, FL_EINVAL, "layer %zu: a convolution over %d channels where the input has %d", i + 1,
                             s->in_channels, channels);
                break;
            }
            if (s->stride_y != s->stride_x) {
                rc = fl_fail(err, FL_EUNSUPPORTED, "layer %zu: different row and column strides", i + 1);
                break;
            }
            rc = upload(m, s->weights, 4, (int64_t[]){s->out_channels, s->in_channels, s->k_rows, s->k_cols}, &l->w,
                        err);
            if (!rc) rc = upload(m, s->bias, 1, (int64_t[]){s->out_channels}, &l->b, err);
            channels = s->out_channels;
            break;
        case FL_DLIB_AFFINE:
            if (s->disabled) break;
            if (s->out_channels != channels) {
                rc = fl_fail(err, FL_EINVAL, "layer %zu: an affine layer of %d channels where the input has %d", i + 1,
                             s->out_channels, channels);
                break;
            }
            rc = upload(m, s->scale, 1, (int64_t[]){channels}, &l->scale, err);
            if (!rc) rc = upload(m, s->shift, 1, (int64_t[]){channels}, &l->shift, err);
            if (i + 1 < m->n && net->layers[i + 1].kind == FL_DLIB_RELU && !net->layers[i + 1].disabled) {
                l->fuse_relu = true;
                m->layers[i + 1].skip = true; /* set again below when the loop reaches it */
            }
            break;
        case FL_DLIB_TAG:
        case FL_DLIB_SKIP:
        case FL_DLIB_ADD_PREV:
            if (s->id < 0 || s->id >= MAX_TAGS) {
                rc = fl_fail(err, FL_EINVAL, "layer %zu: tag %d out of range", i + 1, s->id);
                break;
            }
            m->has_tags = true;
            if (s->kind == FL_DLIB_TAG) {
                tag_set[s->id] = true;
                tag_channels[s->id] = channels;
            } else if (!tag_set[s->id]) {
                rc = fl_fail(err, FL_EINVAL, "layer %zu: tag %d is used before it is set", i + 1, s->id);
            } else if (s->kind == FL_DLIB_SKIP) {
                channels = tag_channels[s->id];
            } else if (tag_channels[s->id] > channels) {
                channels = tag_channels[s->id];
            }
            break;
        case FL_DLIB_FC:
            rc = upload(m, s->weights, 2, (int64_t[]){s->out_channels, s->in_channels}, &l->w, err);
            if (!rc && s->bias) rc = upload(m, s->bias, 1, (int64_t[]){s->out_channels}, &l->b, err);
            channels = s->out_channels;
            break;
        default:
            break;
        }
        if (i > 0 && m->layers[i - 1].fuse_relu && s->kind == FL_DLIB_RELU) l->skip = true;
    }
    if (rc) {
        fl_dlib_model_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

/* Output shapes for an H x W input; fails when a size runs out. */
static int infer(fl_dlib_model *m, int H, int W, fl_error *err) {
    free(m->shapes);
    free(m->alias);
    m->shapes = fl_xcalloc(m->n + 1, sizeof *m->shapes);
    m->alias = fl_xcalloc(m->n + 1, sizeof *m->alias);
    int64_t *s0 = m->shapes[0];
    s0[0] = 1, s0[1] = 3, s0[2] = H, s0[3] = W;
    int tags[MAX_TAGS];
    for (int t = 0; t < MAX_TAGS; t++) tags[t] = -1;
    int cur = 0; /* index into shapes of the current output */
    for (size_t i = 0; i < m->n; i++) {
        mlayer *l = &m->layers[i];
        int64_t *in = m->shapes[cur], *o = m->shapes[i + 1];
        memcpy(o, in, sizeof(int64_t) * 4);
        m->alias[i + 1] = cur; /* in place unless a new tensor is made below */
        bool fresh = false;
        switch (l->kind) {
        case FL_DLIB_CON:
            o[1] = l->out_channels;
            o[2] = in[2] + 2 * l->py - l->kr < 0 ? 0 : 1 + (in[2] + 2 * l->py - l->kr) / l->sy;
            o[3] = in[3] + 2 * l->px - l->kc < 0 ? 0 : 1 + (in[3] + 2 * l->px - l->kc) / l->sx;
            fresh = true;
            break;
        case FL_DLIB_MAX_POOL:
        case FL_DLIB_AVG_POOL:
            if (l->kr == 0) {
                o[2] = o[3] = 1;
            } else {
                o[2] = in[2] + 2 * l->py - l->kr < 0 ? 0 : 1 + (in[2] + 2 * l->py - l->kr) / l->sy;
                o[3] = in[3] + 2 * l->px - l->kc < 0 ? 0 : 1 + (in[3] + 2 * l->px - l->kc) / l->sx;
            }
            fresh = true;
            break;
        case FL_DLIB_TAG:
            tags[l->id] = cur;
            break;
        case FL_DLIB_SKIP:
            if (tags[l->id] < 0) return fl_fail(err, FL_EINVAL, "layer %zu: tag %d is not set", i + 1, l->id);
            memcpy(o, m->shapes[tags[l->id]], sizeof(int64_t) * 4);
            m->alias[i + 1] = tags[l->id];
            break;
        case FL_DLIB_ADD_PREV: {
            if (tags[l->id] < 0) return fl_fail(err, FL_EINVAL, "layer %zu: tag %d is not set", i + 1, l->id);
            const int64_t *t = m->shapes[tags[l->id]];
            for (int d = 1; d < 4; d++) o[d] = in[d] > t[d] ? in[d] : t[d];
            fresh = true;
            break;
        }
        case FL_DLIB_FC:
            if (in[1] * in[2] * in[3] != l->in_channels)
                return fl_fail(err, FL_EINVAL, "layer %zu: a fully connected layer of %d inputs over [%lld, %lld, %lld]",
                               i + 1, l->in_channels, (long long)in[1], (long long)in[2], (long long)in[3]);
            o[1] = l->out_channels, o[2] = o[3] = 1;
            fresh = true;
            break;
        default: /* affine, relu: in place, unless a tag still needs what they would overwrite */
            if (l->skip || l->disabled) break; /* a ReLU fused into the affine below: the same output */
            for (int t = 0; t < MAX_TAGS; t++) fresh = fresh || tags[t] == cur;
            fresh = fresh || cur == 0;
            break;
        }
        if (o[2] < 1 || o[3] < 1)
            return fl_fail(err, FL_EINVAL, "an input of %dx%d is too small for this network (layer %zu)", W, H, i + 1);
        if (fresh) m->alias[i + 1] = (int)i + 1;
        cur = m->alias[i + 1];
    }
    return 0;
}

static size_t bytes_of(const fl_dlib_model *m, int k) {
    const int64_t *s = m->shapes[k];
    size_t b = (size_t)(s[0] * s[1] * s[2] * s[3]) * fl_dtype_size(m->dtype);
    return (b + 255) & ~(size_t)255;
}

static int plan(fl_dlib_model *m, int H, int W, fl_error *err) {
    if (m->planned_h == H && m->planned_w == W) return 0;
    m->planned_h = m->planned_w = 0;
    if (infer(m, H, W, err) != 0) return -1;
    free(m->offsets);
    m->offsets = fl_xcalloc(m->n + 1, sizeof *m->offsets);
    size_t total = bytes_of(m, 0);
    if (m->has_tags) { /* every fresh output kept (tags may point back at any of them) */
        for (size_t k = 1; k <= m->n; k++)
            if (m->alias[k] == (int)k) {
                m->offsets[k] = total;
                total += bytes_of(m, (int)k);
            }
    } else { /* two alternating buffers after the input */
        size_t biggest = 0;
        for (size_t k = 1; k <= m->n; k++)
            if (m->alias[k] == (int)k && bytes_of(m, (int)k) > biggest) biggest = bytes_of(m, (int)k);
        size_t base = total;
        int flip = 0;
        for (size_t k = 1; k <= m->n; k++)
            if (m->alias[k] == (int)k) {
                m->offsets[k] = base + (size_t)flip * biggest;
                flip ^= 1;
            }
        total = base + 2 * biggest;
    }
    if (total > m->buffer_bytes) {
        if (m->buffer) fl_ctx_free(m->ctx, m->buffer);
        m->buffer = fl_ctx_alloc(m->ctx, total);
        m->buffer_bytes = m->buffer ? total : 0;
        if (!m->buffer)
            return fl_fail(err, FL_ENOMEM, "no memory for %zu bytes of activations (a %dx%d input)", total, W, H);
    }
    m->planned_h = H, m->planned_w = W;
    return 0;
}

static fl_tensor act(fl_dlib_model *m, int k) {
    int owner = k;
    while (m->alias[owner] != owner && owner != 0) owner = m->alias[owner];
    return fl_tensor_make((char *)m->buffer + m->offsets[owner], m->dtype, m->ctx->device, 4, m->shapes[k]);
}

int fl_dlib_model_run(fl_dlib_model *m, const float *input, int H, int W, float **out, int64_t shape[4],
                      fl_error *err) {
    *out = NULL;
    if (H < 1 || W < 1 || H > 16384 || W > 16384)
        return fl_fail(err, FL_EINVAL, "an input of %dx%d pixels", W, H);
    if (plan(m, H, W, err) != 0) return -1;
    fl_ctx *ctx = m->ctx;
    fl_tensor x0 = act(m, 0);
    fl_ctx_upload_f32(ctx, &x0, input, (size_t)3 * H * W);
    int tags[MAX_TAGS] = {0};
    int cur = 0;
    for (size_t i = 0; i < m->n; i++) {
        mlayer *l = &m->layers[i];
        int k = (int)i + 1;
        fl_tensor x = act(m, cur), y = act(m, k);
        switch (l->kind) {
        case FL_DLIB_CON:
            fl_op_conv2d(ctx, &x, &l->w, &l->b, &y, l->sy, (fl_conv2d_pad){l->px, l->px, l->py, l->py});
            if (l->relu_after) {
                fl_tensor f = fl_tensor_reshape(&y, 2, (int64_t[]){y.shape[0] * y.shape[1], y.shape[2] * y.shape[3]});
                fl_op_relu(ctx, &f, &f);
            }
            break;
        case FL_DLIB_AFFINE:
            if (!l->disabled) fl_op_channel_affine(ctx, &x, &l->scale, &l->shift, &y, l->fuse_relu);
            break;
        case FL_DLIB_RELU:
            if (!l->skip && !l->disabled) {
                int64_t rc2[2] = {y.shape[0] * y.shape[1], y.shape[2] * y.shape[3]};
                fl_tensor fx = fl_tensor_reshape(&x, 2, rc2), fy = fl_tensor_reshape(&y, 2, rc2);
                fl_op_relu(ctx, &fx, &fy);
            }
            break;
        case FL_DLIB_MAX_POOL:
        case FL_DLIB_AVG_POOL:
            fl_op_pool2d(ctx, &x, &y, l->kr, l->kc, l->sy, l->sx, l->py, l->px, l->kind == FL_DLIB_MAX_POOL);
            break;
        case FL_DLIB_TAG:
            tags[l->id] = cur;
            break;
        case FL_DLIB_SKIP:
            break;
        case FL_DLIB_ADD_PREV: {
            fl_tensor t = act(m, tags[l->id]);
            fl_op_add_padded(ctx, &x, &t, &y);
            break;
        }
        case FL_DLIB_FC: {
            fl_tensor xf = fl_tensor_reshape(&x, 2, (int64_t[]){1, l->in_channels});
            fl_tensor yf = fl_tensor_reshape(&y, 2, (int64_t[]){1, l->out_channels});
            fl_op_linear(ctx, &xf, &l->w, l->b.data ? &l->b : NULL, &yf);
            break;
        }
        default:
            break;
        }
        cur = m->alias[k];
    }
    fl_tensor y = act(m, cur);
    size_t count = (size_t)fl_tensor_numel(&y);
    *out = malloc(count * sizeof(float));
    if (!*out) return fl_fail(err, FL_ENOMEM, "no memory for the network's output");
    fl_ctx_download_f32(ctx, *out, &y, count);
    memcpy(shape, y.shape, 4 * sizeof(int64_t));
    return 0;
}
