/*
 * flux_step.c — the Flux forward and backward as sequences of kernels/ops.h calls.
 *
 * The forward saves what the backward needs into the model's activation arena (flux_acts); the
 * backward walks the blocks in reverse, producing gradients of the trainable adapter and, in
 * full mode, of every base parameter. Both run unchanged in planning mode, where ops only check
 * shapes and the arena measures how much memory the step needs.
 *
 * Sequence layout follows the reference: the joint attention runs over [txt; img], so text
 * tokens come first (offset 0) and image tokens after them (offset Lt).
 *
 * An inference forward (fl_flux_forward: nothing will run backward) keeps only each block's
 * output: the block runs, its output is copied to one of two buffers allocated before the
 * blocks, and everything else the block allocated is released, so the arena holds one block's
 * activations instead of every block's (at 1024 x 1024 on FLUX.1-dev, about 1 GB instead of
 * 36 GB in bf16). The ops and their operands are the same, so the output is bitwise the same.
 *
 * With per-sample adapters (flux.h) only the Linears change: the base product runs once over the
 * whole batch through the batch-invariant linear (fl_op_linear_rows; on a backend without it, once
 * per sample's row segment with the shapes a batch of one would use), then each sample's adapters
 * run on its segment. Every other op here is already computed per row, per sample or per
 * (sample, head), so the whole forward of a sample does not depend on its batch neighbours.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "kernels/ops.h"
#include "models/flux_internal.h"

/* ---- small helpers ------------------------------------------------------------------------- */

static fl_tensor act(fl_flux_model *m, fl_dtype dtype, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return fl_arena_tensor(&m->arena, dtype, ndim, shape);
}
#define ACT2(m, a, b) act(m, (m)->dtype, 2, a, b, 0, 0)
#define ACT3(m, a, b, c) act(m, (m)->dtype, 3, a, b, c, 0)
#define ACT4(m, a, b, c, d) act(m, (m)->dtype, 4, a, b, c, d)
#define F32_1(m, a) act(m, FL_F32, 1, a, 0, 0, 0)
#define F32_3(m, a, b, c) act(m, FL_F32, 3, a, b, c, 0)

/* A [B, heads, L, D] view of columns [col, col + heads*D) of a contiguous [B, L, row] tensor:
 * head h, dim d is column col + h*D + d (the "B L (H D)" layout of the reference). */
static fl_tensor heads_view(const fl_tensor *base, int64_t heads, int64_t d, int64_t col) {
    FL_CHECK(base->ndim == 3 && fl_tensor_is_contiguous(base));
    fl_tensor v = *base;
    int64_t batch = base->shape[0], len = base->shape[1], row = base->shape[2];
    v.ndim = 4;
    v.shape[0] = batch, v.shape[1] = heads, v.shape[2] = len, v.shape[3] = d;
    v.stride[0] = len * row, v.stride[1] = d, v.stride[2] = row, v.stride[3] = 1;
    v.data = (char *)base->data + (size_t)col * fl_dtype_size(base->dtype);
    return v;
}

/* Column chunk i (width h) of a [B, n*h] modulation output: a [B, h] matrix view. */
static fl_tensor chunk(const fl_tensor *mod, int i, int64_t h) {
    return fl_tensor_slice(mod, 1, i * h, h);
}

/* Rows [start, start + len) of dim 1 of a [B, L, ...] tensor (a strided view when B > 1). */
static fl_tensor seq_slice(const fl_tensor *t, int64_t start, int64_t len) {
    return fl_tensor_slice(t, 1, start, len);
}

static fl_tensor as_matrix(const fl_tensor *t) {
    int64_t cols = t->shape[t->ndim - 1];
    int64_t shape[2] = {fl_tensor_numel(t) / (cols ? cols : 1), cols};
    return fl_tensor_reshape(t, 2, shape);
}

static bool needs_grad(const fl_flux_model *m, const fl_flux_linear *lin) {
    return m->full_grads || lin->trainable >= 0;
}

/* ---- Linear with adapters -------------------------------------------------------------------- */

/* Rows [start, start + rows) of a matrix-view operand, as a 2-d view with its row stride. */
static fl_tensor row_segment(const fl_tensor *t, const fl_matrix *mt, int64_t start, int64_t rows) {
    int64_t shape[2] = {rows, mt->cols};
    fl_tensor v = fl_tensor_make((char *)t->data + (size_t)(start * mt->ld) * fl_dtype_size(t->dtype), t->dtype,
                                 t->device, 2, shape);
    v.stride[0] = mt->ld;
    return v;
}

static int find_adapter(const fl_flux_linear *lin, int set_id) {
    for (int k = 0; k < lin->n_adapters; k++)
        if (lin->adapters[k].set_id == set_id) return k;
    return -1;
}

/* Whether the base products of this forward go through the batch-invariant linear: every
 * forward on a backend that has one (the CPU), per-sample or not, so that a request's image is
 * produced by the same arithmetic alone, in a batch, or by the single-request sampler. Training
 * forwards use it too, for speed alone: at the model shapes here it is faster than the BLAS
 * product (the LoRA step of bench_flux_cpu's bench config, 2 threads: 158 -> 139 ms). */
static bool base_rows_invariant(const fl_flux_model *m) {
    return fl_op_has_linear_rows(m->ctx);
}

/* The per-sample form of linear_forward: sample b's rows get the base product plus sample b's
 * adapters, at scale (attach scale) * (multiplier), in the listed order. The base product is one
 * batch-invariant call over all rows where the backend has it (each row's bits do not depend on
 * its neighbours), else one call per segment with the GEMM shapes of a batch of one; the adapters
 * always run per segment with those shapes. Inference only: nothing is saved for a backward.
 *
 * Each adapter's x A^T goes to one scratch of [rows, rank_reserve] (the largest rank attached so
 * far), allocated whatever is attached or selected, so this path's plan does not depend on the
 * adapters: a contiguous [rows, rank] view at its start is exactly the matrix a dedicated
 * allocation would be. */
static void linear_forward_per_sample(fl_flux_model *m, fl_flux_linear *lin, const fl_tensor *x, fl_tensor *y) {
    fl_ctx *ctx = m->ctx;
    const int64_t batch = m->acts.batch;
    fl_matrix mx, my;
    FL_CHECK(fl_tensor_matrix(x, &mx) && fl_tensor_matrix(y, &my));
    FL_CHECKF(mx.rows == my.rows && mx.rows % batch == 0, "%s: %lld rows do not split into %lld samples", lin->name,
              (long long)mx.rows, (long long)batch);
    const int64_t rows = mx.rows / batch;
    lin->saved_x = *x;
    size_t mark = fl_arena_mark(&m->arena);
    fl_tensor scratch = {0};
    if (m->rank_reserve > 0) scratch = act(m, m->dtype, 2, rows, m->rank_reserve, 0, 0);
    const fl_tensor *bias = lin->bias.data ? &lin->bias : NULL;
    const bool shared = base_rows_invariant(m);
    if (shared) fl_op_linear_rows(ctx, x, &lin->weight, bias, y); /* one product for the whole batch */
    for (int64_t b = 0; b < batch; b++) {
        fl_tensor xs = row_segment(x, &mx, b * rows, rows), ys = row_segment(y, &my, b * rows, rows);
        if (!shared) fl_op_linear(ctx, &xs, &lin->weight, bias, &ys);
        const fl_flux_sample_adapters *sel = &m->sample_sel[b];
        ctx->profile_lora = true;
        for (int j = 0; j < sel->n; j++) {
            int k = find_adapter(lin, sel->set_ids[j]);
            if (k < 0) continue; /* this set does not adapt this Linear */
            fl_flux_adapter *ad = &lin->adapters[k];
            float scale = ad->scale * sel->multipliers[j];
            if (scale == 0.0f) continue;
            int64_t rank = ad->a.shape[0], shape[2] = {rows, rank};
            FL_CHECKF(rank <= m->rank_reserve, "%s: rank %lld exceeds the planned scratch of %lld", lin->name,
                      (long long)rank, (long long)m->rank_reserve);
            fl_tensor h = fl_tensor_make(scratch.data, m->dtype, scratch.device, 2, shape);
            fl_op_gemm(ctx, &xs, false, &ad->a, true, &h, 1.0f, 0.0f);
            fl_op_gemm(ctx, &h, false, &ad->b, true, &ys, scale, 1.0f);
        }
        ctx->profile_lora = false;
    }
    fl_arena_reset(&m->arena, mark);
}

/* y = x W^T + b + sum_k s_k (x A_k^T) B_k^T; saves x and every x A_k^T for the backward. */
static void linear_forward(fl_flux_model *m, fl_flux_linear *lin, const fl_tensor *x, fl_tensor *y) {
    if (m->per_sample) {
        linear_forward_per_sample(m, lin, x, y);
        return;
    }
    fl_ctx *ctx = m->ctx;
    const fl_tensor *bias = lin->bias.data ? &lin->bias : NULL;
    if (base_rows_invariant(m)) fl_op_linear_rows(ctx, x, &lin->weight, bias, y);
    else fl_op_linear(ctx, x, &lin->weight, bias, y);
    lin->saved_x = *x;
    fl_matrix mx;
    FL_CHECK(fl_tensor_matrix(x, &mx));
    ctx->profile_lora = true;
    for (int k = 0; k < lin->n_adapters; k++) {
        fl_flux_adapter *ad = &lin->adapters[k];
        fl_tensor h = act(m, m->dtype, 2, mx.rows, ad->a.shape[0], 0, 0);
        fl_op_gemm(ctx, x, false, &ad->a, true, &h, 1.0f, 0.0f);
        fl_op_gemm(ctx, &h, false, &ad->b, true, y, ad->scale, 1.0f);
        lin->saved_h[k] = h;
    }
    ctx->profile_lora = false;
}

/* Given dy, writes (or with accumulate adds) dx = dy W + sum_k s_k (dy B_k) A_k when dx is not
 * NULL, accumulates the trainable adapter's gradients and, in full mode, dW and db. */
static void linear_backward(fl_flux_model *m, fl_flux_linear *lin, const fl_tensor *dy, fl_tensor *dx,
                            bool accumulate) {
    fl_ctx *ctx = m->ctx;
    const fl_tensor *x = &lin->saved_x;
    if (dx) fl_op_gemm(ctx, dy, false, &lin->weight, false, dx, 1.0f, accumulate ? 1.0f : 0.0f);
    fl_matrix my;
    FL_CHECK(fl_tensor_matrix(dy, &my));
    ctx->profile_lora = true;
    for (int k = 0; k < lin->n_adapters; k++) {
        bool trainable = k == lin->trainable;
        if (!dx && !trainable) continue;
        fl_flux_adapter *ad = &lin->adapters[k];
        size_t mark = fl_arena_mark(&m->arena);
        fl_tensor dh = act(m, m->dtype, 2, my.rows, ad->a.shape[0], 0, 0);
        fl_op_gemm(ctx, dy, false, &ad->b, false, &dh, ad->scale, 0.0f); /* s dy B */
        if (trainable) {
            fl_op_gemm(ctx, dy, true, &lin->saved_h[k], false, &lin->grad_b, ad->scale, 1.0f); /* s dy^T h */
            fl_op_gemm(ctx, &dh, true, x, false, &lin->grad_a, 1.0f, 1.0f);                  /* dh^T x */
        }
        if (dx) fl_op_gemm(ctx, &dh, false, &ad->a, false, dx, 1.0f, 1.0f);
        fl_arena_reset(&m->arena, mark);
    }
    ctx->profile_lora = false;
    if (m->full_grads) {
        fl_op_gemm(ctx, dy, true, x, false, &lin->grad_weight, 1.0f, 1.0f);
        if (lin->bias.data) fl_op_bias_grad(ctx, dy, &lin->grad_bias);
    }
}

/* ---- q/k normalization and RoPE ---------------------------------------------------------------- */

/* dst [B, heads, L, D] contiguous = RoPE(RMSNorm(src) * scale); saves rstd. src is contiguous. */
static void qk_norm_rope(fl_flux_model *m, const fl_tensor *src, const fl_tensor *scale, const fl_tensor *pe,
                         fl_tensor *rstd, fl_tensor *dst) {
    fl_tensor src2 = as_matrix(src), dst2 = as_matrix(dst);
    fl_op_rmsnorm(m->ctx, &src2, scale, &dst2, rstd, 1e-6f);
    fl_op_rope(m->ctx, dst, pe, dst);
}

/* Backward of qk_norm_rope: d (contiguous, overwritten in place through RoPE) -> dsrc. */
static void qk_norm_rope_backward(fl_flux_model *m, fl_tensor *d, const fl_tensor *src, const fl_tensor *scale,
                                  fl_tensor *grad_scale, const fl_tensor *pe, const fl_tensor *rstd, fl_tensor *dsrc) {
    fl_op_rope_backward(m->ctx, d, pe, d);
    fl_tensor d2 = as_matrix(d), src2 = as_matrix(src), dsrc2 = as_matrix(dsrc);
    fl_op_rmsnorm_backward(m->ctx, &d2, &src2, scale, rstd, &dsrc2, m->full_grads ? grad_scale : NULL);
}

/* ---- forward ------------------------------------------------------------------------------------ */

static void mlp_embed_forward(fl_flux_model *m, fl_flux_linear *pair[2], const fl_tensor *x, fl_tensor *h,
                              fl_tensor *hs, fl_tensor *out) {
    int64_t batch = x->shape[0], hidden = m->p.hidden_size;
    *h = ACT2(m, batch, hidden);
    *hs = ACT2(m, batch, hidden);
    *out = ACT2(m, batch, hidden);
    linear_forward(m, pair[0], x, h);
    fl_op_silu(m->ctx, h, hs);
    linear_forward(m, pair[1], hs, out);
}

static void rope_tables(fl_flux_model *m, const fl_flux_inputs *in, flux_acts *a) {
    const fl_flux_params *p = &m->p;
    int64_t batch = a->batch, lt = a->lt, li = a->li, l = lt + li, half = fl_flux_head_dim(p) / 2;
    a->pe = act(m, FL_F32, 4, batch, l, half, 2);
    a->pe_txt = act(m, FL_F32, 4, batch, lt, half, 2);
    a->pe_img = act(m, FL_F32, 4, batch, li, half, 2);
    if (m->ctx->planning) return;
    int n = p->n_axes;
    float *ids = fl_xmalloc((size_t)(batch * l * n) * sizeof(float));
    for (int64_t b = 0; b < batch; b++) {
        memcpy(ids + (b * l) * n, in->txt_ids + b * lt * n, (size_t)(lt * n) * sizeof(float));
        memcpy(ids + (b * l + lt) * n, in->img_ids + b * li * n, (size_t)(li * n) * sizeof(float));
    }
    size_t row = (size_t)half * 2;
    float *pe = fl_xmalloc((size_t)(batch * l) * row * sizeof(float));
    fl_rope_table_host(ids, batch, l, p->axes_dim, n, p->theta, pe);
    fl_ctx_upload(m->ctx, a->pe.data, pe, (size_t)(batch * l) * row * sizeof(float));
    /* per-stream tables are the txt and img rows of the joint one */
    float *part = fl_xmalloc((size_t)(batch * (lt > li ? lt : li)) * row * sizeof(float));
    for (int s = 0; s < 2; s++) {
        int64_t off = s == 0 ? 0 : lt, len = s == 0 ? lt : li;
        for (int64_t b = 0; b < batch; b++)
            memcpy(part + b * len * row, pe + (b * l + off) * row, (size_t)len * row * sizeof(float));
        fl_ctx_upload(m->ctx, (s == 0 ? a->pe_txt : a->pe_img).data, part, (size_t)(batch * len) * row * sizeof(float));
    }
    free(part);
    free(pe);
    free(ids);
}

static void double_forward(fl_flux_model *m, flux_double *blk, double_acts *a, const fl_tensor *img,
                           const fl_tensor *txt) {
    fl_ctx *ctx = m->ctx;
    flux_acts *fa = &m->acts;
    const int64_t batch = fa->batch, hd = m->p.hidden_size, heads = m->p.num_heads, d = hd / heads;
    const int64_t mlp = fl_flux_mlp_hidden(&m->p), l = fa->lt + fa->li;
    const fl_tensor *inputs[2] = {img, txt};
    const int64_t lens[2] = {fa->li, fa->lt}, offs[2] = {fa->lt, 0};
    const fl_tensor *pes[2] = {&fa->pe_img, &fa->pe_txt};

    a->q = ACT4(m, batch, heads, l, d);
    a->k = ACT4(m, batch, heads, l, d);
    a->v = ACT4(m, batch, heads, l, d);
    a->o = ACT4(m, batch, heads, l, d);
    a->lse = F32_3(m, batch, heads, l);
    for (int s = 0; s < 2; s++) {
        flux_stream *st = &blk->s[s];
        stream_acts *sa = &a->s[s];
        int64_t ls = lens[s];
        sa->x_in = *inputs[s];
        sa->mod = ACT2(m, batch, 6 * hd);
        linear_forward(m, st->mod, &fa->vec_silu, &sa->mod);
        fl_tensor shift1 = chunk(&sa->mod, 0, hd), scale1 = chunk(&sa->mod, 1, hd);
        sa->xm1 = ACT3(m, batch, ls, hd);
        sa->mean1 = F32_1(m, batch * ls);
        sa->rstd1 = F32_1(m, batch * ls);
        fl_op_ln_modulate(ctx, &sa->x_in, &shift1, &scale1, &sa->xm1, &sa->mean1, &sa->rstd1, 1e-6f);
        sa->qkv = ACT3(m, batch, ls, 3 * hd);
        linear_forward(m, st->qkv, &sa->xm1, &sa->qkv);
        sa->q = ACT4(m, batch, heads, ls, d);
        sa->k = ACT4(m, batch, heads, ls, d);
        fl_tensor qv = heads_view(&sa->qkv, heads, d, 0), kv = heads_view(&sa->qkv, heads, d, hd),
                  vv = heads_view(&sa->qkv, heads, d, 2 * hd);
        fl_op_copy(ctx, &qv, &sa->q);
        fl_op_copy(ctx, &kv, &sa->k);
        sa->rstd_q = F32_1(m, batch * heads * ls);
        sa->rstd_k = F32_1(m, batch * heads * ls);
        size_t mark = fl_arena_mark(&m->arena);
        fl_tensor tmp = ACT4(m, batch, heads, ls, d);
        qk_norm_rope(m, &sa->q, st->q_scale, pes[s], &sa->rstd_q, &tmp);
        fl_tensor dst = fl_tensor_slice(&a->q, 2, offs[s], ls);
        fl_op_copy(ctx, &tmp, &dst);
        qk_norm_rope(m, &sa->k, st->k_scale, pes[s], &sa->rstd_k, &tmp);
        dst = fl_tensor_slice(&a->k, 2, offs[s], ls);
        fl_op_copy(ctx, &tmp, &dst);
        dst = fl_tensor_slice(&a->v, 2, offs[s], ls);
        fl_op_copy(ctx, &vv, &dst);
        fl_arena_reset(&m->arena, mark);
    }
    fl_op_attention(ctx, &a->q, &a->k, &a->v, &a->o, &a->lse, 1.0f / sqrtf((float)d));
    for (int s = 0; s < 2; s++) {
        flux_stream *st = &blk->s[s];
        stream_acts *sa = &a->s[s];
        int64_t ls = lens[s];
        sa->attn = ACT3(m, batch, ls, hd);
        fl_tensor src = fl_tensor_slice(&a->o, 2, offs[s], ls), dst = heads_view(&sa->attn, heads, d, 0);
        fl_op_copy(ctx, &src, &dst);
        sa->proj = ACT3(m, batch, ls, hd);
        linear_forward(m, st->proj, &sa->attn, &sa->proj);
        fl_tensor gate1 = chunk(&sa->mod, 2, hd);
        sa->x1 = ACT3(m, batch, ls, hd);
        fl_op_gated_residual(ctx, &sa->x_in, &gate1, &sa->proj, &sa->x1);
        fl_tensor shift2 = chunk(&sa->mod, 3, hd), scale2 = chunk(&sa->mod, 4, hd), gate2 = chunk(&sa->mod, 5, hd);
        sa->xm2 = ACT3(m, batch, ls, hd);
        sa->mean2 = F32_1(m, batch * ls);
        sa->rstd2 = F32_1(m, batch * ls);
        fl_op_ln_modulate(ctx, &sa->x1, &shift2, &scale2, &sa->xm2, &sa->mean2, &sa->rstd2, 1e-6f);
        sa->h = ACT3(m, batch, ls, mlp);
        linear_forward(m, st->mlp0, &sa->xm2, &sa->h);
        sa->g = ACT3(m, batch, ls, mlp);
        fl_op_gelu_tanh(ctx, &sa->h, &sa->g);
        sa->m = ACT3(m, batch, ls, hd);
        linear_forward(m, st->mlp2, &sa->g, &sa->m);
        sa->x_out = ACT3(m, batch, ls, hd);
        fl_op_gated_residual(ctx, &sa->x1, &gate2, &sa->m, &sa->x_out);
    }
}

static void single_forward(fl_flux_model *m, flux_single *blk, single_acts *a, const fl_tensor *x) {
    fl_ctx *ctx = m->ctx;
    flux_acts *fa = &m->acts;
    const int64_t batch = fa->batch, hd = m->p.hidden_size, heads = m->p.num_heads, d = hd / heads;
    const int64_t mlp = fl_flux_mlp_hidden(&m->p), l = fa->lt + fa->li;
    a->x_in = *x;
    a->mod = ACT2(m, batch, 3 * hd);
    linear_forward(m, blk->mod, &fa->vec_silu, &a->mod);
    fl_tensor shift = chunk(&a->mod, 0, hd), scale = chunk(&a->mod, 1, hd), gate = chunk(&a->mod, 2, hd);
    a->xm = ACT3(m, batch, l, hd);
    a->mean = F32_1(m, batch * l);
    a->rstd = F32_1(m, batch * l);
    fl_op_ln_modulate(ctx, x, &shift, &scale, &a->xm, &a->mean, &a->rstd, 1e-6f);
    a->y1 = ACT3(m, batch, l, 3 * hd + mlp);
    linear_forward(m, blk->linear1, &a->xm, &a->y1);
    a->q = ACT4(m, batch, heads, l, d);
    a->k = ACT4(m, batch, heads, l, d);
    a->v = ACT4(m, batch, heads, l, d);
    fl_tensor qv = heads_view(&a->y1, heads, d, 0), kv = heads_view(&a->y1, heads, d, hd),
              vv = heads_view(&a->y1, heads, d, 2 * hd);
    fl_op_copy(ctx, &qv, &a->q);
    fl_op_copy(ctx, &kv, &a->k);
    fl_op_copy(ctx, &vv, &a->v);
    a->rstd_q = F32_1(m, batch * heads * l);
    a->rstd_k = F32_1(m, batch * heads * l);
    a->qr = ACT4(m, batch, heads, l, d);
    a->kr = ACT4(m, batch, heads, l, d);
    qk_norm_rope(m, &a->q, blk->q_scale, &fa->pe, &a->rstd_q, &a->qr);
    qk_norm_rope(m, &a->k, blk->k_scale, &fa->pe, &a->rstd_k, &a->kr);
    a->o = ACT4(m, batch, heads, l, d);
    a->lse = F32_3(m, batch, heads, l);
    fl_op_attention(ctx, &a->qr, &a->kr, &a->v, &a->o, &a->lse, 1.0f / sqrtf((float)d));
    a->cat = ACT3(m, batch, l, hd + mlp);
    fl_tensor attn_dst = heads_view(&a->cat, heads, d, 0);
    fl_op_copy(ctx, &a->o, &attn_dst);
    fl_tensor mlp_src = fl_tensor_slice(&a->y1, 2, 3 * hd, mlp), mlp_dst = fl_tensor_slice(&a->cat, 2, hd, mlp);
    fl_op_gelu_tanh(ctx, &mlp_src, &mlp_dst);
    a->y2 = ACT3(m, batch, l, hd);
    linear_forward(m, blk->linear2, &a->cat, &a->y2);
    a->x_out = ACT3(m, batch, l, hd);
    fl_op_gated_residual(ctx, x, &gate, &a->y2, &a->x_out);
}

void flux_run_forward(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *img) {
    fl_ctx *ctx = m->ctx;
    const fl_flux_params *p = &m->p;
    flux_acts *a = &m->acts;
    const int64_t batch = a->batch, hd = p->hidden_size, li = a->li, lt = a->lt, l = li + lt;

    flux_refresh_trainable_shadow(m); /* the products read the 16-bit copy of a trained adapter */

    /* conditioning vector: time (+ guidance) + pooled text */
    a->temb = ACT2(m, batch, 256);
    fl_op_timestep_embedding(ctx, in->timesteps, &a->temb, 1000.0f, 10000.0f);
    mlp_embed_forward(m, m->time_in, &a->temb, &a->time_h, &a->time_hs, &a->time_out);
    a->vec = ACT2(m, batch, hd);
    if (p->guidance_embed) {
        a->gemb = ACT2(m, batch, 256);
        fl_op_timestep_embedding(ctx, in->guidance, &a->gemb, 1000.0f, 10000.0f);
        mlp_embed_forward(m, m->guidance_in, &a->gemb, &a->guid_h, &a->guid_hs, &a->guid_out);
        fl_op_add(ctx, &a->time_out, &a->guid_out, 1.0f, &a->vec);
    } else {
        fl_op_copy(ctx, &a->time_out, &a->vec);
    }
    mlp_embed_forward(m, m->vector_in, in->y, &a->vec_h, &a->vec_hs, &a->vecy_out);
    fl_op_add(ctx, &a->vec, &a->vecy_out, 1.0f, &a->vec);
    a->vec_silu = ACT2(m, batch, hd);
    fl_op_silu(ctx, &a->vec, &a->vec_silu);

    a->img_h = ACT3(m, batch, li, hd);
    linear_forward(m, m->img_in, img, &a->img_h);
    a->txt_h = ACT3(m, batch, lt, hd);
    linear_forward(m, m->txt_in, in->txt, &a->txt_h);
    rope_tables(m, in, a);

    const fl_tensor *x_img = &a->img_h, *x_txt = &a->txt_h;
    /* Inference: block outputs alternate between two kept buffers (see the top comment). */
    fl_tensor keep_img[2], keep_txt[2];
    if (m->inference && p->depth > 0) {
        for (int k = 0; k < 2; k++) keep_img[k] = ACT3(m, batch, li, hd), keep_txt[k] = ACT3(m, batch, lt, hd);
    }
    for (int i = 0; i < p->depth; i++) {
        size_t mark = fl_arena_mark(&m->arena);
        double_forward(m, &m->dbl[i], &a->dbl[i], x_img, x_txt);
        x_img = &a->dbl[i].s[FLUX_IMG].x_out;
        x_txt = &a->dbl[i].s[FLUX_TXT].x_out;
        if (m->inference) {
            fl_op_copy(ctx, x_img, &keep_img[i % 2]);
            fl_op_copy(ctx, x_txt, &keep_txt[i % 2]);
            x_img = &keep_img[i % 2];
            x_txt = &keep_txt[i % 2];
            fl_arena_reset(&m->arena, mark);
        }
    }

    fl_tensor joint = ACT3(m, batch, l, hd);
    fl_tensor txt_part = seq_slice(&joint, 0, lt), img_part = seq_slice(&joint, lt, li);
    fl_op_copy(ctx, x_txt, &txt_part);
    fl_op_copy(ctx, x_img, &img_part);
    const fl_tensor *x = &joint;
    fl_tensor keep[2];
    if (m->inference && p->depth_single_blocks > 0) keep[0] = joint, keep[1] = ACT3(m, batch, l, hd);
    for (int i = 0; i < p->depth_single_blocks; i++) {
        size_t mark = fl_arena_mark(&m->arena);
        single_forward(m, &m->sgl[i], &a->sgl[i], x);
        x = &a->sgl[i].x_out;
        if (m->inference) {
            fl_tensor *dst = &keep[(i + 1) % 2]; /* the block's input is keep[i % 2] */
            fl_op_copy(ctx, x, dst);
            x = dst;
            fl_arena_reset(&m->arena, mark);
        }
    }

    a->x_img = ACT3(m, batch, li, hd);
    fl_tensor tail = seq_slice(x, lt, li);
    fl_op_copy(ctx, &tail, &a->x_img);
    a->final_mod = ACT2(m, batch, 2 * hd);
    linear_forward(m, m->final_mod, &a->vec_silu, &a->final_mod);
    fl_tensor shift = chunk(&a->final_mod, 0, hd), scale = chunk(&a->final_mod, 1, hd);
    a->xf = ACT3(m, batch, li, hd);
    a->meanf = F32_1(m, batch * li);
    a->rstdf = F32_1(m, batch * li);
    fl_op_ln_modulate(ctx, &a->x_img, &shift, &scale, &a->xf, &a->meanf, &a->rstdf, 1e-6f);
    a->out = ACT3(m, batch, li, p->out_channels);
    linear_forward(m, m->final_linear, &a->xf, &a->out);
}

/* ---- backward ------------------------------------------------------------------------------------ */

/* Backward of a modulation Linear: accumulate its input gradient into dvec_silu when the
 * conditioning path needs gradients (dvec_silu.data non-NULL), else only parameter gradients. */
static void modulation_backward(fl_flux_model *m, fl_flux_linear *lin, const fl_tensor *dmod, fl_tensor *dvec_silu) {
    linear_backward(m, lin, dmod, dvec_silu->data ? dvec_silu : NULL, true);
}

/* Backward of a double block. dx_img and dx_txt hold the gradients at the block's outputs and
 * are overwritten with the gradients at its inputs; modulation gradients flow into dvec_silu. */
static void double_backward(fl_flux_model *m, flux_double *blk, double_acts *a, fl_tensor *dx_img, fl_tensor *dx_txt,
                            fl_tensor *dvec_silu) {
    fl_ctx *ctx = m->ctx;
    flux_acts *fa = &m->acts;
    const int64_t batch = fa->batch, hd = m->p.hidden_size, heads = m->p.num_heads, d = hd / heads;
    const int64_t mlp = fl_flux_mlp_hidden(&m->p), l = fa->lt + fa->li;
    const int64_t lens[2] = {fa->li, fa->lt}, offs[2] = {fa->lt, 0};
    const fl_tensor *pes[2] = {&fa->pe_img, &fa->pe_txt};
    fl_tensor *dx[2] = {dx_img, dx_txt}; /* in: gradient at the block output; out: at its input */
    size_t mark = fl_arena_mark(&m->arena);

    fl_tensor dmod[2], dx1[2];
    fl_tensor dq = ACT4(m, batch, heads, l, d), dk = ACT4(m, batch, heads, l, d), dv = ACT4(m, batch, heads, l, d);
    fl_tensor dout = ACT4(m, batch, heads, l, d);
    for (int s = 0; s < 2; s++) {
        flux_stream *st = &blk->s[s];
        stream_acts *sa = &a->s[s];
        int64_t ls = lens[s];
        dmod[s] = ACT2(m, batch, 6 * hd);
        fl_tensor gate2 = chunk(&sa->mod, 5, hd), dgate2 = chunk(&dmod[s], 5, hd);
        fl_tensor dm = ACT3(m, batch, ls, hd);
        fl_op_gated_residual_backward(ctx, dx[s], &gate2, &sa->m, &dm, &dgate2);
        fl_tensor dg = ACT3(m, batch, ls, mlp);
        linear_backward(m, st->mlp2, &dm, &dg, false);
        fl_op_gelu_tanh_backward(ctx, &dg, &sa->h, &dg);
        fl_tensor dxm2 = ACT3(m, batch, ls, hd);
        linear_backward(m, st->mlp0, &dg, &dxm2, false);
        fl_tensor scale2 = chunk(&sa->mod, 4, hd), dshift2 = chunk(&dmod[s], 3, hd), dscale2 = chunk(&dmod[s], 4, hd);
        dx1[s] = ACT3(m, batch, ls, hd);
        fl_op_ln_modulate_backward(ctx, &dxm2, &sa->x1, &scale2, &sa->mean2, &sa->rstd2, &dx1[s], &dshift2, &dscale2);
        fl_op_add(ctx, &dx1[s], dx[s], 1.0f, &dx1[s]);
        fl_tensor gate1 = chunk(&sa->mod, 2, hd), dgate1 = chunk(&dmod[s], 2, hd);
        fl_tensor dproj = ACT3(m, batch, ls, hd);
        fl_op_gated_residual_backward(ctx, &dx1[s], &gate1, &sa->proj, &dproj, &dgate1);
        fl_tensor dattn = ACT3(m, batch, ls, hd);
        linear_backward(m, st->proj, &dproj, &dattn, false);
        fl_tensor src = heads_view(&dattn, heads, d, 0), dst = fl_tensor_slice(&dout, 2, offs[s], ls);
        fl_op_copy(ctx, &src, &dst);
    }
    fl_op_attention_backward(ctx, &dout, &a->q, &a->k, &a->v, &a->o, &a->lse, &dq, &dk, &dv,
                             1.0f / sqrtf((float)d));
    for (int s = 0; s < 2; s++) {
        flux_stream *st = &blk->s[s];
        stream_acts *sa = &a->s[s];
        int64_t ls = lens[s];
        fl_tensor dqkv = ACT3(m, batch, ls, 3 * hd);
        fl_tensor tmp = ACT4(m, batch, heads, ls, d), dpre = ACT4(m, batch, heads, ls, d);
        fl_tensor part = fl_tensor_slice(&dq, 2, offs[s], ls), dst = heads_view(&dqkv, heads, d, 0);
        fl_op_copy(ctx, &part, &tmp);
        qk_norm_rope_backward(m, &tmp, &sa->q, st->q_scale, st->q_scale_grad, pes[s],
                              &sa->rstd_q, &dpre);
        fl_op_copy(ctx, &dpre, &dst);
        part = fl_tensor_slice(&dk, 2, offs[s], ls);
        dst = heads_view(&dqkv, heads, d, hd);
        fl_op_copy(ctx, &part, &tmp);
        qk_norm_rope_backward(m, &tmp, &sa->k, st->k_scale, st->k_scale_grad, pes[s], &sa->rstd_k, &dpre);
        fl_op_copy(ctx, &dpre, &dst);
        part = fl_tensor_slice(&dv, 2, offs[s], ls);
        dst = heads_view(&dqkv, heads, d, 2 * hd);
        fl_op_copy(ctx, &part, &dst);
        fl_tensor dxm1 = ACT3(m, batch, ls, hd);
        linear_backward(m, st->qkv, &dqkv, &dxm1, false);
        fl_tensor scale1 = chunk(&sa->mod, 1, hd), dshift1 = chunk(&dmod[s], 0, hd), dscale1 = chunk(&dmod[s], 1, hd);
        fl_op_ln_modulate_backward(ctx, &dxm1, &sa->x_in, &scale1, &sa->mean1, &sa->rstd1, dx[s], &dshift1, &dscale1);
        fl_op_add(ctx, dx[s], &dx1[s], 1.0f, dx[s]);
        modulation_backward(m, st->mod, &dmod[s], dvec_silu);
    }
    fl_arena_reset(&m->arena, mark);
}

/* Backward of a single block; dx holds the gradient at the output and becomes the gradient at
 * the input. */
static void single_backward(fl_flux_model *m, flux_single *blk, single_acts *a, fl_tensor *dx, fl_tensor *dvec_silu) {
    fl_ctx *ctx = m->ctx;
    flux_acts *fa = &m->acts;
    const int64_t batch = fa->batch, hd = m->p.hidden_size, heads = m->p.num_heads, d = hd / heads;
    const int64_t mlp = fl_flux_mlp_hidden(&m->p), l = fa->lt + fa->li;
    size_t mark = fl_arena_mark(&m->arena);

    fl_tensor dmod = ACT2(m, batch, 3 * hd);
    fl_tensor gate = chunk(&a->mod, 2, hd), dgate = chunk(&dmod, 2, hd);
    fl_tensor dy2 = ACT3(m, batch, l, hd);
    fl_op_gated_residual_backward(ctx, dx, &gate, &a->y2, &dy2, &dgate);
    fl_tensor dcat = ACT3(m, batch, l, hd + mlp);
    linear_backward(m, blk->linear2, &dy2, &dcat, false);

    fl_tensor dy1 = ACT3(m, batch, l, 3 * hd + mlp);
    fl_tensor dcat_mlp = fl_tensor_slice(&dcat, 2, hd, mlp), y1_mlp = fl_tensor_slice(&a->y1, 2, 3 * hd, mlp),
              dy1_mlp = fl_tensor_slice(&dy1, 2, 3 * hd, mlp);
    fl_op_gelu_tanh_backward(ctx, &dcat_mlp, &y1_mlp, &dy1_mlp);

    fl_tensor dout = ACT4(m, batch, heads, l, d);
    fl_tensor src = heads_view(&dcat, heads, d, 0);
    fl_op_copy(ctx, &src, &dout);
    fl_tensor dq = ACT4(m, batch, heads, l, d), dk = ACT4(m, batch, heads, l, d), dv = ACT4(m, batch, heads, l, d);
    fl_op_attention_backward(ctx, &dout, &a->qr, &a->kr, &a->v, &a->o, &a->lse, &dq, &dk, &dv, 1.0f / sqrtf((float)d));
    fl_tensor dpre = ACT4(m, batch, heads, l, d);
    fl_tensor dst = heads_view(&dy1, heads, d, 0);
    qk_norm_rope_backward(m, &dq, &a->q, blk->q_scale, blk->q_scale_grad, &fa->pe, &a->rstd_q, &dpre);
    fl_op_copy(ctx, &dpre, &dst);
    dst = heads_view(&dy1, heads, d, hd);
    qk_norm_rope_backward(m, &dk, &a->k, blk->k_scale, blk->k_scale_grad, &fa->pe, &a->rstd_k, &dpre);
    fl_op_copy(ctx, &dpre, &dst);
    dst = heads_view(&dy1, heads, d, 2 * hd);
    fl_op_copy(ctx, &dv, &dst);

    fl_tensor dxm = ACT3(m, batch, l, hd);
    linear_backward(m, blk->linear1, &dy1, &dxm, false);
    fl_tensor scale = chunk(&a->mod, 1, hd), dshift = chunk(&dmod, 0, hd), dscale = chunk(&dmod, 1, hd);
    fl_tensor dx_part = ACT3(m, batch, l, hd);
    fl_op_ln_modulate_backward(ctx, &dxm, &a->x_in, &scale, &a->mean, &a->rstd, &dx_part, &dshift, &dscale);
    fl_op_add(ctx, dx, &dx_part, 1.0f, dx);
    modulation_backward(m, blk->mod, &dmod, dvec_silu);
    fl_arena_reset(&m->arena, mark);
}

static void mlp_embed_backward(fl_flux_model *m, fl_flux_linear *pair[2], const fl_tensor *h, const fl_tensor *dout) {
    if (!needs_grad(m, pair[0]) && !needs_grad(m, pair[1])) return;
    size_t mark = fl_arena_mark(&m->arena);
    fl_tensor dhs = ACT2(m, h->shape[0], h->shape[1]);
    linear_backward(m, pair[1], dout, &dhs, false);
    fl_op_silu_backward(m->ctx, &dhs, h, &dhs);
    linear_backward(m, pair[0], &dhs, NULL, false);
    fl_arena_reset(&m->arena, mark);
}

void flux_run_backward(fl_flux_model *m) {
    FL_CHECKF(!m->per_sample, "the per-sample forward saves nothing for a backward");
    fl_ctx *ctx = m->ctx;
    const fl_flux_params *p = &m->p;
    flux_acts *a = &m->acts;
    const int64_t batch = a->batch, hd = p->hidden_size, li = a->li, lt = a->lt, l = li + lt;

    bool cond_grads = needs_grad(m, m->time_in[0]) || needs_grad(m, m->time_in[1]) ||
                      needs_grad(m, m->vector_in[0]) || needs_grad(m, m->vector_in[1]) ||
                      (p->guidance_embed && (needs_grad(m, m->guidance_in[0]) || needs_grad(m, m->guidance_in[1])));
    fl_tensor dvec_silu;
    memset(&dvec_silu, 0, sizeof dvec_silu);
    if (cond_grads) {
        dvec_silu = ACT2(m, batch, hd);
        fl_op_fill(ctx, &dvec_silu, 0.0f);
    }

    /* final layer */
    fl_tensor dxf = ACT3(m, batch, li, hd);
    linear_backward(m, m->final_linear, &a->dpred, &dxf, false);
    fl_tensor dfinal_mod = ACT2(m, batch, 2 * hd);
    fl_tensor scale = chunk(&a->final_mod, 1, hd), dshift = chunk(&dfinal_mod, 0, hd), dscale = chunk(&dfinal_mod, 1, hd);
    fl_tensor dx = ACT3(m, batch, l, hd);
    fl_tensor dx_txt_part = seq_slice(&dx, 0, lt), dx_img_part = seq_slice(&dx, lt, li);
    fl_tensor dx_img_final = ACT3(m, batch, li, hd);
    fl_op_ln_modulate_backward(ctx, &dxf, &a->x_img, &scale, &a->meanf, &a->rstdf, &dx_img_final, &dshift, &dscale);
    modulation_backward(m, m->final_mod, &dfinal_mod, &dvec_silu);
    fl_op_fill(ctx, &dx_txt_part, 0.0f);
    fl_op_copy(ctx, &dx_img_final, &dx_img_part);

    for (int i = p->depth_single_blocks - 1; i >= 0; i--) single_backward(m, &m->sgl[i], &a->sgl[i], &dx, &dvec_silu);

    fl_tensor dx_img = ACT3(m, batch, li, hd), dx_txt = ACT3(m, batch, lt, hd);
    fl_op_copy(ctx, &dx_img_part, &dx_img);
    fl_op_copy(ctx, &dx_txt_part, &dx_txt);
    for (int i = p->depth - 1; i >= 0; i--) double_backward(m, &m->dbl[i], &a->dbl[i], &dx_img, &dx_txt, &dvec_silu);

    if (needs_grad(m, m->img_in)) linear_backward(m, m->img_in, &dx_img, NULL, false);
    if (needs_grad(m, m->txt_in)) linear_backward(m, m->txt_in, &dx_txt, NULL, false);
    if (cond_grads) {
        fl_tensor dvec = ACT2(m, batch, hd);
        fl_op_silu_backward(ctx, &dvec_silu, &a->vec, &dvec);
        mlp_embed_backward(m, m->time_in, &a->time_h, &dvec);
        if (p->guidance_embed) mlp_embed_backward(m, m->guidance_in, &a->guid_h, &dvec);
        mlp_embed_backward(m, m->vector_in, &a->vec_h, &dvec);
    }
}
