/*
 * ae_run.c — running the autoencoder: the encoder and decoder passes over one image, the
 * activation pool they allocate from, planning (measure a pass once per image size and
 * direction, then size the arena), the public encode/decode/pack entry points with their input
 * checks, and the memory estimate on a skeleton.
 *
 * The pool is a first-fit allocator over the arena with explicit frees: a pass frees every tensor
 * as soon as it is dead (a block's input once its output exists, a convolution's input once it
 * has run), so the plan holds the live set at its largest, about three activations of the widest
 * stage, instead of the sum over the network. The allocation sequence of a pass depends only on
 * the image size, so the offsets a measuring run hands out are exactly those of the real run, and
 * the measured high-water mark is the arena's size.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/ae_internal.h"

#define ALIGNED(n) (((size_t)(n) + 255) & ~(size_t)255)
#define POOL_MEASURE_BASE ((uintptr_t)1 << 20) /* placeholder addresses while measuring: never NULL */

static const fl_conv2d_pad pad_same = {1, 1, 1, 1}; /* conv3x3, stride 1 */
static const fl_conv2d_pad pad_down = {0, 1, 0, 1}; /* BFL's Downsample: right and bottom only */
static const fl_conv2d_pad pad_none = {0, 0, 0, 0};

/* ---- the activation pool ------------------------------------------------------------------------ */

static void pool_init_measure(ae_pool *p, fl_device device) {
    memset(p, 0, sizeof *p);
    p->capacity = SIZE_MAX;
    p->device = device;
}

static void pool_init(ae_pool *p, void *base, size_t capacity, fl_device device) {
    memset(p, 0, sizeof *p);
    p->base = base;
    p->capacity = capacity;
    p->device = device;
}

static uintptr_t pool_origin(const ae_pool *p) {
    return p->base ? (uintptr_t)p->base : POOL_MEASURE_BASE;
}

static void *pool_alloc(ae_pool *p, size_t bytes) {
    const size_t size = ALIGNED(bytes ? bytes : 1);
    FL_CHECKF(p->n_live < AE_POOL_MAX_LIVE, "autoencoder pool: more than %d live tensors", AE_POOL_MAX_LIVE);
    size_t off = 0;
    int at = 0;
    for (; at < p->n_live; at++) { /* first gap that fits */
        if (p->live[at].off - off >= size) break;
        off = p->live[at].off + p->live[at].size;
    }
    FL_CHECKF(off + size <= p->capacity, "autoencoder pool exhausted: need %zu bytes, planned %zu", off + size,
              p->capacity);
    memmove(&p->live[at + 1], &p->live[at], (size_t)(p->n_live - at) * sizeof *p->live);
    p->live[at] = (ae_block){off, size};
    p->n_live++;
    if (off + size > p->peak) p->peak = off + size;
    return (void *)(pool_origin(p) + off);
}

static void pool_free(ae_pool *p, void *ptr) {
    const size_t off = (size_t)((uintptr_t)ptr - pool_origin(p));
    int at = 0;
    while (at < p->n_live && p->live[at].off != off) at++;
    FL_CHECKF(at < p->n_live, "autoencoder pool: freeing a block it did not hand out");
    memmove(&p->live[at], &p->live[at + 1], (size_t)(p->n_live - at - 1) * sizeof *p->live);
    p->n_live--;
}

static fl_tensor act(fl_ae *ae, fl_dtype dtype, int ndim, const int64_t *shape) {
    fl_tensor t = fl_tensor_make(NULL, dtype, ae->ctx->device, ndim, shape);
    t.data = pool_alloc(&ae->pool, fl_tensor_nbytes(&t));
    return t;
}

/* An image-shaped activation [1, c, h, w] in the storage dtype. */
static fl_tensor act4(fl_ae *ae, int64_t c, int64_t h, int64_t w) {
    const int64_t shape[4] = {1, c, h, w};
    return act(ae, ae->dtype, 4, shape);
}

static void drop(fl_ae *ae, fl_tensor *t) {
    pool_free(&ae->pool, t->data);
    t->data = NULL;
}

/* ---- blocks ------------------------------------------------------------------------------------- */

static void conv_into(fl_ae *ae, const fl_tensor *w, const fl_tensor *b, const fl_tensor *x, fl_tensor *y, int stride,
                      fl_conv2d_pad pad) {
    int64_t s = fl_conv2d_scratch_elements(x->shape[1], w->shape[2], w->shape[3], y->shape[2], y->shape[3], stride, pad);
    if (s > ae->max_conv_scratch) ae->max_conv_scratch = s;
    fl_op_conv2d(ae->ctx, x, w, b, y, stride, pad);
}

static fl_tensor conv(fl_ae *ae, const ae_conv *cv, const fl_tensor *x, int stride, fl_conv2d_pad pad) {
    const int64_t k = cv->w.shape[2];
    const int64_t ho = (x->shape[2] + pad.top + pad.bottom - k) / stride + 1;
    const int64_t wo = (x->shape[3] + pad.left + pad.right - k) / stride + 1;
    fl_tensor y = act4(ae, cv->w.shape[0], ho, wo);
    conv_into(ae, &cv->w, &cv->b, x, &y, stride, pad);
    return y;
}

static void group_norm(fl_ae *ae, const ae_norm *n, const fl_tensor *x, fl_tensor *y, bool silu) {
    fl_op_group_norm(ae->ctx, x, &n->w, &n->b, y, AE_GROUPS, AE_EPS, silu);
}

/* ResnetBlock; consumes x, returns the block's output. When the width changes, the shortcut
 * nin(x) is taken first, so x itself can then be normalized in place: the block holds x, its
 * shortcut and conv1's output instead of x, norm1(x) and conv1's output (at 1024x1024 the
 * decoder's 256 -> 128 block holds 2.15 GB in f32 instead of 2.7; the decode's peak is then the
 * upsampled image and its convolution, 2.7 GB with the pool's fragmentation, down from 2.95). */
static fl_tensor res_block(fl_ae *ae, const ae_res *r, fl_tensor x) {
    fl_tensor s = {0}, h1;
    const bool shortcut = r->cin != r->cout;
    if (shortcut) {
        s = conv(ae, &r->nin, &x, 1, pad_none);
        group_norm(ae, &r->norm1, &x, &x, true);
        h1 = x;
    } else {
        h1 = act4(ae, r->cin, x.shape[2], x.shape[3]);
        group_norm(ae, &r->norm1, &x, &h1, true);
    }
    fl_tensor h2 = conv(ae, &r->conv1, &h1, 1, pad_same);
    drop(ae, &h1);
    group_norm(ae, &r->norm2, &h2, &h2, true);
    fl_tensor h3 = conv(ae, &r->conv2, &h2, 1, pad_same);
    drop(ae, &h2);
    fl_op_add(ae->ctx, shortcut ? &s : &x, &h3, 1.0f, &h3); /* x + h, as the reference adds */
    if (shortcut) drop(ae, &s);
    else drop(ae, &x);
    return h3;
}

/* The mid-block AttnBlock, in place on x [1, C, H, W]: one head over the H*W positions. The
 * 1x1 q/k/v/proj_out convolutions run as Linears on the transposed image [H*W, C], which is the
 * [B, 1, L, D] layout the attention op takes. */
static void attn_block(fl_ae *ae, const ae_attn *a, fl_tensor *x) {
    fl_ctx *ctx = ae->ctx;
    const int64_t C = a->c, L = x->shape[2] * x->shape[3];
    const int64_t cl[2] = {C, L}, lc[2] = {L, C}, cc[2] = {C, C}, blc[4] = {1, 1, L, C}, bl[3] = {1, 1, L};
    const int t2[2] = {1, 0};
    if (L > ae->max_attn_positions) ae->max_attn_positions = L;

    fl_tensor hn = act4(ae, C, x->shape[2], x->shape[3]);
    group_norm(ae, &a->norm, x, &hn, false);
    fl_tensor ht = act(ae, ae->dtype, 2, lc);
    fl_tensor hn_cl = fl_tensor_reshape(&hn, 2, cl);
    fl_tensor hn_lc = fl_tensor_permute(&hn_cl, t2);
    fl_op_copy(ctx, &hn_lc, &ht);
    drop(ae, &hn);
    fl_tensor qkv[3];
    const ae_conv *proj[3] = {&a->q, &a->k, &a->v};
    for (int i = 0; i < 3; i++) {
        qkv[i] = act(ae, ae->dtype, 4, blc);
        fl_tensor w = fl_tensor_reshape(&proj[i]->w, 2, cc);
        fl_op_linear(ctx, &ht, &w, &proj[i]->b, &qkv[i]);
    }
    drop(ae, &ht);
    fl_tensor o = act(ae, ae->dtype, 4, blc);
    fl_tensor lse = act(ae, FL_F32, 3, bl);
    fl_op_attention(ctx, &qkv[0], &qkv[1], &qkv[2], &o, &lse, (float)(1.0 / sqrt((double)C)));
    drop(ae, &lse);
    for (int i = 2; i >= 0; i--) drop(ae, &qkv[i]);
    fl_tensor p = act(ae, ae->dtype, 2, lc);
    fl_tensor w = fl_tensor_reshape(&a->proj_out.w, 2, cc);
    fl_op_linear(ctx, &o, &w, &a->proj_out.b, &p);
    drop(ae, &o);
    fl_tensor pt = act4(ae, C, x->shape[2], x->shape[3]);
    fl_tensor pt_cl = fl_tensor_reshape(&pt, 2, cl);
    fl_tensor p_cl = fl_tensor_permute(&p, t2);
    fl_op_copy(ctx, &p_cl, &pt_cl);
    drop(ae, &p);
    fl_op_add(ctx, x, &pt, 1.0f, x);
    drop(ae, &pt);
}

static fl_tensor mid_blocks(fl_ae *ae, const ae_half *h, fl_tensor x) {
    x = res_block(ae, &h->mid1, x);
    attn_block(ae, &h->attn, &x);
    return res_block(ae, &h->mid2, x);
}

/* lat = (lat - shift) * scale (encode) or lat / scale + shift (decode), in place, as the reference
 * orders the two operations. */
static void scale_shift(fl_ae *ae, fl_tensor *lat, bool decode) {
    fl_tensor shift = act(ae, ae->dtype, lat->ndim, lat->shape);
    fl_op_fill(ae->ctx, &shift, ae->p.shift_factor);
    if (decode) {
        fl_op_scale(ae->ctx, lat, 1.0f / ae->p.scale_factor);
        fl_op_add(ae->ctx, lat, &shift, 1.0f, lat);
    } else {
        fl_op_add(ae->ctx, lat, &shift, -1.0f, lat);
        fl_op_scale(ae->ctx, lat, ae->p.scale_factor);
    }
    drop(ae, &shift);
}

/* image [1, in, H, W] -> lat [1, z, H/f, W/f]: the scaled, shifted mean. */
static void encoder_pass(fl_ae *ae, const fl_tensor *image, fl_tensor *lat) {
    const ae_half *e = &ae->half[0];
    fl_tensor h = conv(ae, &e->conv_in, image, 1, pad_same);
    for (int i = 0; i < ae->p.n_levels; i++) {
        const ae_level *lv = &e->levels[i];
        for (int j = 0; j < lv->n_blocks; j++) h = res_block(ae, &lv->blocks[j], h);
        if (lv->has_sample) {
            fl_tensor d = conv(ae, &lv->sample, &h, 2, pad_down);
            drop(ae, &h);
            h = d;
        }
    }
    h = mid_blocks(ae, e, h);
    group_norm(ae, &e->norm_out, &h, &h, true);
    /* Only the mean's channels of conv_out (the first z; the rest are the log-variance). */
    fl_tensor w = fl_tensor_slice(&e->conv_out.w, 0, 0, ae->p.z_channels);
    fl_tensor b = fl_tensor_slice(&e->conv_out.b, 0, 0, ae->p.z_channels);
    conv_into(ae, &w, &b, &h, lat, 1, pad_same);
    drop(ae, &h);
    scale_shift(ae, lat, false);
}

/* lat [1, z, h, w] (overwritten) -> image [1, out_ch, h*f, w*f]. */
static void decoder_pass(fl_ae *ae, fl_tensor *lat, fl_tensor *image) {
    const ae_half *d = &ae->half[1];
    scale_shift(ae, lat, true);
    fl_tensor h = conv(ae, &d->conv_in, lat, 1, pad_same);
    h = mid_blocks(ae, d, h);
    for (int i = ae->p.n_levels - 1; i >= 0; i--) {
        const ae_level *lv = &d->levels[i];
        for (int j = 0; j < lv->n_blocks; j++) h = res_block(ae, &lv->blocks[j], h);
        if (lv->has_sample) {
            fl_tensor u = act4(ae, h.shape[1], 2 * h.shape[2], 2 * h.shape[3]);
            fl_op_upsample_nearest2x(ae->ctx, &h, &u);
            drop(ae, &h);
            h = conv(ae, &lv->sample, &u, 1, pad_same);
            drop(ae, &u);
        }
    }
    group_norm(ae, &d->norm_out, &h, &h, true);
    conv_into(ae, &d->conv_out.w, &d->conv_out.b, &h, image, 1, pad_same);
    drop(ae, &h);
}

/* ---- packing ------------------------------------------------------------------------------------ */

/* latents [B, C, h, w] -> tokens [B, (h/2)(w/2), 4C] or back, as one strided copy. */
static void pack_copy(fl_ctx *ctx, const fl_tensor *latents, const fl_tensor *tokens, bool to_tokens) {
    const int64_t B = latents->shape[0], C = latents->shape[1], h2 = latents->shape[2] / 2, w2 = latents->shape[3] / 2;
    const int64_t lat6[6] = {B, C, h2, 2, w2, 2}, tok6[6] = {B, h2, w2, C, 2, 2};
    fl_tensor l = fl_tensor_reshape(latents, 6, lat6), t = fl_tensor_reshape(tokens, 6, tok6);
    if (to_tokens) {
        const int perm[6] = {0, 2, 4, 1, 3, 5}; /* b c h ph w pw -> b h w c ph pw */
        fl_tensor src = fl_tensor_permute(&l, perm);
        fl_op_copy(ctx, &src, &t);
    } else {
        const int perm[6] = {0, 3, 1, 4, 2, 5}; /* b h w c ph pw -> b c h ph w pw */
        fl_tensor src = fl_tensor_permute(&t, perm);
        fl_op_copy(ctx, &src, &l);
    }
}

/* ---- input checks ------------------------------------------------------------------------------- */

static int check_operand(fl_ctx *ctx, fl_dtype dtype, const fl_tensor *t, const char *what, int ndim,
                         const int64_t *want, fl_error *err) {
    if (!t || !t->data) return fl_fail(err, FL_EINVAL, "autoencoder: %s is missing", what);
    if (!fl_device_equal(t->device, ctx->device))
        return fl_fail(err, FL_EINVAL, "autoencoder: %s is on %s, the model on %s", what,
                       fl_device_kind_name(t->device.kind), fl_device_kind_name(ctx->device.kind));
    if (t->dtype != dtype)
        return fl_fail(err, FL_EINVAL, "autoencoder: %s has dtype %s, expected %s", what, fl_dtype_name(t->dtype),
                       fl_dtype_name(dtype));
    if (!fl_tensor_is_contiguous(t)) return fl_fail(err, FL_EINVAL, "autoencoder: %s is not contiguous", what);
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || t->shape[i] == want[i];
    if (!ok) {
        char got[96], exp[96];
        fl_tensor e = *t;
        e.ndim = ndim;
        for (int i = 0; i < ndim; i++) e.shape[i] = want[i] < 0 ? (i < t->ndim ? t->shape[i] : 0) : want[i];
        return fl_fail(err, FL_EINVAL, "autoencoder: %s has shape %s, expected %s", what,
                       fl_tensor_shape_str(t, got, sizeof got), fl_tensor_shape_str(&e, exp, sizeof exp));
    }
    return 0;
}

static int check_size(const fl_ae *ae, int64_t height, int64_t width, int64_t multiple, fl_error *err) {
    if (height < multiple || width < multiple || height > FL_AE_MAX_SIDE || width > FL_AE_MAX_SIDE ||
        height % multiple || width % multiple)
        return fl_fail(err, FL_EINVAL, "autoencoder: image size %lldx%lld must be multiples of %lld in [%lld, %d]",
                       (long long)width, (long long)height, (long long)multiple, (long long)multiple, FL_AE_MAX_SIDE);
    /* The CUDA attention kernels take head dims up to 512 (the FLUX.1 autoencoder's width). */
    int64_t top = (int64_t)ae->p.ch * ae->p.ch_mult[ae->p.n_levels - 1];
    if (ae->ctx->device.kind == FL_DEVICE_CUDA && top > 512)
        return fl_fail(err, FL_EUNSUPPORTED, "autoencoder: a %lld-channel mid-block attention exceeds the CUDA "
                                             "kernels' 512", (long long)top);
    return 0;
}

static int need_part(const fl_ae *ae, unsigned part, fl_error *err) {
    if (ae->parts & part) return 0;
    return fl_fail(err, FL_EINVAL, "autoencoder: the %s is not loaded", part == FL_AE_ENCODER ? "encoder" : "decoder");
}

/* ---- passes and planning ------------------------------------------------------------------------ */

/* One image: in_b and out_b are the caller's [1, ...] slices (image, latents or tokens). */
static void run_pass(fl_ae *ae, bool decode, bool packed, const fl_tensor *in_b, fl_tensor *out_b, int64_t height,
                     int64_t width) {
    const int64_t f = fl_ae_downscale(&ae->p);
    fl_tensor lat = act4(ae, ae->p.z_channels, height / f, width / f);
    if (!decode) {
        encoder_pass(ae, in_b, &lat);
        if (packed) pack_copy(ae->ctx, &lat, out_b, true);
        else fl_op_copy(ae->ctx, &lat, out_b);
    } else {
        if (packed) pack_copy(ae->ctx, &lat, in_b, false);
        else fl_op_copy(ae->ctx, in_b, &lat);
        decoder_pass(ae, &lat, out_b);
    }
    drop(ae, &lat);
    FL_CHECKF(ae->pool.n_live == 0, "autoencoder pass left %d tensors live", ae->pool.n_live);
}

static bool plan_known(const fl_ae *ae, int64_t height, int64_t width, bool decode) {
    for (size_t i = 0; i < ae->n_plans; i++)
        if (ae->plans[i].height == height && ae->plans[i].width == width && ae->plans[i].decode == decode) return true;
    return false;
}

/* Makes the pool ready for passes of this size: measures the pass the first time, growing the
 * arena when it needs more. */
static int prepare(fl_ae *ae, bool decode, bool packed, const fl_tensor *in_b, fl_tensor *out_b, int64_t height,
                   int64_t width, fl_error *err) {
    if (ae->arena_memory && plan_known(ae, height, width, decode)) {
        pool_init(&ae->pool, ae->arena_memory, ae->arena_bytes, ae->ctx->device);
        return 0;
    }
    pool_init_measure(&ae->pool, ae->ctx->device);
    bool was_planning = ae->ctx->planning;
    ae->ctx->planning = true;
    run_pass(ae, decode, packed, in_b, out_b, height, width);
    ae->ctx->planning = was_planning;
    ae->plan_count++;
    if (was_planning) return 0; /* a caller measuring its own job: measure, allocate nothing */
    const size_t need = ae->pool.peak;
    if (need > ae->arena_bytes || !ae->arena_memory) {
        fl_ctx_free(ae->ctx, ae->arena_memory);
        ae->arena_memory = fl_ctx_alloc(ae->ctx, need ? need : 1);
        if (!ae->arena_memory) { /* the pass fails; the model stays usable */
            ae->arena_bytes = 0;
            ae->n_plans = 0;
            return fl_fail(err, FL_ENOMEM, "autoencoder: out of device memory for %zu bytes of activations (%lldx%lld "
                                           "image)", need, (long long)width, (long long)height);
        }
        ae->arena_bytes = need;
    }
    ae->plans = fl_xrealloc(ae->plans, (ae->n_plans + 1) * sizeof *ae->plans);
    ae->plans[ae->n_plans++] = (ae_plan){height, width, decode};
    pool_init(&ae->pool, ae->arena_memory, ae->arena_bytes, ae->ctx->device);
    return 0;
}

static int run_batch(fl_ae *ae, bool decode, bool packed, const fl_tensor *in, fl_tensor *out, int64_t height,
                     int64_t width, fl_error *err) {
    const int64_t batch = in->shape[0];
    if (batch == 0) return 0;
    for (int64_t b = 0; b < batch; b++) {
        fl_tensor in_b = fl_tensor_slice(in, 0, b, 1), out_b = fl_tensor_slice(out, 0, b, 1);
        if (b == 0 && prepare(ae, decode, packed, &in_b, &out_b, height, width, err) != 0) return -1;
        if (ae->ctx->planning) continue; /* a caller measuring its own job: nothing to compute */
        run_pass(ae, decode, packed, &in_b, &out_b, height, width);
    }
    return 0;
}

/* ---- public entry points ------------------------------------------------------------------------ */

static int encode(fl_ae *ae, const fl_tensor *image, fl_tensor *out, bool packed, fl_error *err) {
    if (need_part(ae, FL_AE_ENCODER, err) != 0) return -1;
    const int64_t any4[4] = {-1, ae->p.in_channels, -1, -1};
    if (check_operand(ae->ctx, ae->dtype, image, "image", 4, any4, err) != 0) return -1;
    const int64_t B = image->shape[0], H = image->shape[2], W = image->shape[3], f = fl_ae_downscale(&ae->p);
    if (check_size(ae, H, W, packed ? 2 * f : f, err) != 0) return -1;
    int rc;
    if (packed) {
        const int64_t want[3] = {B, (H / (2 * f)) * (W / (2 * f)), fl_ae_token_channels(&ae->p)};
        rc = check_operand(ae->ctx, ae->dtype, out, "tokens", 3, want, err);
    } else {
        const int64_t want[4] = {B, ae->p.z_channels, H / f, W / f};
        rc = check_operand(ae->ctx, ae->dtype, out, "latents", 4, want, err);
    }
    return rc != 0 ? -1 : run_batch(ae, false, packed, image, out, H, W, err);
}

static int decode(fl_ae *ae, const fl_tensor *in, fl_tensor *image, bool packed, fl_error *err) {
    if (need_part(ae, FL_AE_DECODER, err) != 0) return -1;
    const int64_t any4[4] = {-1, ae->p.out_ch, -1, -1};
    if (check_operand(ae->ctx, ae->dtype, image, "image", 4, any4, err) != 0) return -1;
    const int64_t B = image->shape[0], H = image->shape[2], W = image->shape[3], f = fl_ae_downscale(&ae->p);
    if (check_size(ae, H, W, packed ? 2 * f : f, err) != 0) return -1;
    int rc;
    if (packed) {
        const int64_t want[3] = {B, (H / (2 * f)) * (W / (2 * f)), fl_ae_token_channels(&ae->p)};
        rc = check_operand(ae->ctx, ae->dtype, in, "tokens", 3, want, err);
    } else {
        const int64_t want[4] = {B, ae->p.z_channels, H / f, W / f};
        rc = check_operand(ae->ctx, ae->dtype, in, "latents", 4, want, err);
    }
    return rc != 0 ? -1 : run_batch(ae, true, packed, in, image, H, W, err);
}

int fl_ae_encode(fl_ae *ae, const fl_tensor *image, fl_tensor *tokens, fl_error *err) {
    return encode(ae, image, tokens, true, err);
}

int fl_ae_encode_latents(fl_ae *ae, const fl_tensor *image, fl_tensor *latents, fl_error *err) {
    return encode(ae, image, latents, false, err);
}

int fl_ae_decode(fl_ae *ae, const fl_tensor *tokens, fl_tensor *image, fl_error *err) {
    return decode(ae, tokens, image, true, err);
}

int fl_ae_decode_latents(fl_ae *ae, const fl_tensor *latents, fl_tensor *image, fl_error *err) {
    return decode(ae, latents, image, false, err);
}

static int check_pack(fl_ctx *ctx, const fl_tensor *latents, const fl_tensor *tokens, fl_error *err) {
    const int64_t any4[4] = {-1, -1, -1, -1};
    if (!latents || check_operand(ctx, latents->dtype, latents, "latents", 4, any4, err) != 0) return -1;
    const int64_t B = latents->shape[0], C = latents->shape[1], h = latents->shape[2], w = latents->shape[3];
    if (h % 2 || w % 2)
        return fl_fail(err, FL_EINVAL, "packing: latents of %lldx%lld are not even", (long long)w, (long long)h);
    const int64_t want[3] = {B, (h / 2) * (w / 2), 4 * C};
    return tokens ? check_operand(ctx, tokens->dtype, tokens, "tokens", 3, want, err)
                  : fl_fail(err, FL_EINVAL, "packing: tokens are missing");
}

int fl_ae_pack(fl_ctx *ctx, const fl_tensor *latents, fl_tensor *tokens, fl_error *err) {
    if (check_pack(ctx, latents, tokens, err) != 0) return -1;
    pack_copy(ctx, latents, tokens, true);
    return 0;
}

int fl_ae_unpack(fl_ctx *ctx, const fl_tensor *tokens, fl_tensor *latents, fl_error *err) {
    if (check_pack(ctx, latents, tokens, err) != 0) return -1;
    pack_copy(ctx, latents, tokens, false);
    return 0;
}

size_t fl_ae_activation_bytes(const fl_ae *ae) {
    return ae->arena_bytes;
}

uint64_t fl_ae_plan_count(const fl_ae *ae) {
    return ae->plan_count;
}

/* ---- memory estimate ---------------------------------------------------------------------------- */

int fl_ae_estimate_memory(const fl_ae_params *p, fl_device_kind device, unsigned parts, bool decode_pass, int height,
                          int width, int threads, fl_ae_memory *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (fl_ae_params_validate(p, err) != 0) return -1;
    if (parts == 0 || (parts & ~FL_AE_BOTH)) return fl_fail(err, FL_EINVAL, "memory estimate: no autoencoder part");
    fl_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.device.kind = device;
    ctx.planning = true; /* no backend: nothing may compute or allocate */
    fl_ae *ae = ae_model_new(&ctx, p);
    ae->skeleton = true;
    const int64_t f = fl_ae_downscale(p);
    if (check_size(ae, height, width, 2 * f, err) != 0) {
        ae_model_free_structure(ae);
        return -1;
    }
    FL_CHECK(ae_alloc_parts(ae, parts | (decode_pass ? FL_AE_DECODER : FL_AE_ENCODER), NULL) == 0);
    out->weights = 0;
    for (int h = 0; h < 2; h++)
        if (parts & (h == 0 ? FL_AE_ENCODER : FL_AE_DECODER)) out->weights += ae->weight_bytes[h];

    /* One image through the pass, in and out at placeholder addresses. */
    const size_t esize = fl_dtype_size(ae->dtype);
    const int64_t img_shape[4] = {1, decode_pass ? p->out_ch : p->in_channels, height, width};
    const int64_t lat_shape[4] = {1, p->z_channels, height / f, width / f};
    fl_tensor image = fl_tensor_make((void *)((uintptr_t)1 << 40), ae->dtype, ctx.device, 4, img_shape);
    fl_tensor lat = fl_tensor_make((void *)((uintptr_t)1 << 41), ae->dtype, ctx.device, 4, lat_shape);
    pool_init_measure(&ae->pool, ctx.device);
    if (decode_pass) run_pass(ae, true, false, &lat, &image, height, width);
    else run_pass(ae, false, false, &image, &lat, height, width);
    out->activations = ae->pool.peak;

    /* Scratch outside the arena: the largest im2col tile (CPU: malloc'ed f32; CUDA: the context's
     * scratch in the storage dtype, grown by a quarter), and on the CPU the attention's transposed
     * keys and per-thread score rows (kernels/cpu/cpu_attention.c). */
    const size_t conv_bytes = (size_t)ae->max_conv_scratch * esize;
    if (device == FL_DEVICE_CPU) {
        const size_t L = (size_t)ae->max_attn_positions, D = (size_t)p->ch * (size_t)p->ch_mult[p->n_levels - 1];
        const size_t attn = (L * D + (size_t)(threads > 0 ? threads : 1) * 32 * L) * sizeof(float);
        out->scratch = conv_bytes > attn ? conv_bytes : attn;
    } else {
        out->scratch = ALIGNED(conv_bytes + conv_bytes / 4);
    }
    out->io = ALIGNED(fl_tensor_nbytes(&image)) + 2 * ALIGNED(fl_tensor_nbytes(&lat)); /* latents and tokens */
    out->total = out->weights + out->activations + out->scratch + out->io;
    fl_ae_free(ae);
    return 0;
}
