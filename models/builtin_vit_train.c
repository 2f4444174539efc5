/*
 * builtin_vit_train.c — training the built-in ViT: the flat parameter and gradient buffers, the
 * forward with the projection head, the backward through every block from the ops' own backward
 * kernels (Linear as two GEMMs and a bias reduction, LayerNorm through ln_modulate_backward,
 * attention_backward, gelu_tanh_backward, copies for the head split and merge), and the NT-Xent
 * contrastive loss with its gradient, computed on the host in double precision.
 *
 * Gradients overwrite: every parameter is used once per step, so each backward op writes its
 * parameter's gradient (GEMM with beta 0), except the bias reductions, which accumulate into a
 * buffer zeroed at the start of the backward.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/builtin_vit_internal.h"

static void ensure_grads(fl_bvit *m) {
    if (m->grad_buf) return;
    FL_CHECKF(m->dtype == FL_F32 && m->ctx->device.kind == FL_DEVICE_CPU,
              "builtin ViT training runs on CPU f32 contexts only");
    m->grad_buf = fl_ctx_alloc(m->ctx, (size_t)m->n_params * sizeof(float));
    FL_CHECK(m->grad_buf);
    memset(m->grad_buf, 0, (size_t)m->n_params * sizeof(float));
    for (int i = 0; i < m->n_entries; i++) {
        const bvit_entry *e = &m->entries[i];
        fl_tensor *t = bvit_slot(&m->g, e);
        *t = fl_tensor_make((char *)m->grad_buf + (size_t)e->offset * sizeof(float), FL_F32, m->ctx->device,
                            e->view_ndim, e->view_shape);
    }
}

fl_tensor fl_bvit_params(fl_bvit *m) {
    FL_CHECK(m->dtype == FL_F32);
    return fl_tensor_make(m->param_buf, FL_F32, m->ctx->device, 1, (int64_t[]){m->n_params});
}

fl_tensor fl_bvit_grads(fl_bvit *m) {
    ensure_grads(m);
    return fl_tensor_make(m->grad_buf, FL_F32, m->ctx->device, 1, (int64_t[]){m->n_params});
}

int64_t fl_bvit_decay_count(const fl_bvit *m) { return m->n_decay; }

void fl_bvit_forward_train(fl_bvit *m, const float *images, int n, float *z) {
    FL_CHECKF(m->c.head_hidden > 0, "builtin ViT: training needs the projection head");
    ensure_grads(m);
    bvit_forward(m, images, n, true);
    fl_tensor zt = fl_tensor_slice(&m->z, 0, 0, n);
    fl_ctx_download_f32(m->ctx, z, &zt, (size_t)n * (size_t)m->c.head_out);
}

/* Rows [0, rows) of a tensor as a matrix [rows, last dim]. */
static fl_tensor rows_of(const fl_tensor *t, int64_t rows) {
    int64_t cols = t->shape[t->ndim - 1];
    fl_tensor v = fl_tensor_reshape(t, 2, (int64_t[]){fl_tensor_numel(t) / cols, cols});
    return fl_tensor_slice(&v, 0, 0, rows);
}

/* The backward of y = x W^T + b over R rows: dx = dy W (when dx is not NULL), dW = dy^T x,
 * db += sum of dy's rows. */
static void linear_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *w, fl_tensor *dx,
                            fl_tensor *dw, fl_tensor *db, int64_t R) {
    fl_tensor dyv = rows_of(dy, R), xv = rows_of(x, R);
    if (dx) {
        fl_tensor dxv = rows_of(dx, R);
        fl_op_gemm(ctx, &dyv, false, w, false, &dxv, 1.0f, 0.0f);
    }
    fl_op_gemm(ctx, &dyv, true, &xv, false, dw, 1.0f, 0.0f);
    fl_op_bias_grad(ctx, &dyv, db);
}

static fl_tensor btd(const fl_bvit *m, const fl_tensor *t, int B) { return fl_tensor_slice(t, 1, 0, (int64_t)B * m->tokens); }

void fl_bvit_backward(fl_bvit *m, const float *dz_host) {
    fl_ctx *ctx = m->ctx;
    const fl_bvit_config *c = &m->c;
    const int B = m->last_batch;
    FL_CHECKF(m->cap_train && B > 0, "builtin ViT: backward without a training forward");
    const int64_t D = c->dim, L = m->tokens, N = (int64_t)m->grid * m->grid, H = c->heads, hd = D / H;
    const int64_t R = (int64_t)B * L;
    bvit_weights *w = &m->w, *g = &m->g;
    memset(m->grad_buf, 0, (size_t)m->n_params * sizeof(float)); /* the bias reductions accumulate */

    /* head */
    fl_tensor dz = fl_tensor_slice(&m->dz, 0, 0, B);
    fl_ctx_upload_f32(ctx, &dz, dz_host, (size_t)B * (size_t)c->head_out);
    fl_tensor hg = fl_tensor_slice(&m->hg, 0, 0, B), hh = fl_tensor_slice(&m->hh, 0, 0, B);
    fl_tensor dhh = fl_tensor_slice(&m->dhh, 0, 0, B), dcls = fl_tensor_slice(&m->dcls, 0, 0, B);
    fl_tensor cls_out = fl_tensor_slice(&m->cls_out, 0, 0, B);
    linear_backward(ctx, &dz, &hg, &w->hw2, &dhh, &g->hw2, &g->hb2, B);
    fl_op_gelu_tanh_backward(ctx, &dhh, &hh, &dhh);
    linear_backward(ctx, &dhh, &cls_out, &w->hw1, &dcls, &g->hw1, &g->hb1, B);

    /* final norm: only the CLS rows have a gradient */
    fl_tensor dxf = btd(m, &m->dtmp, B);
    fl_op_fill(ctx, &dxf, 0.0f);
    fl_tensor dxf3 = fl_tensor_reshape(&dxf, 3, (int64_t[]){B, L, D});
    fl_tensor dcls_rows = fl_tensor_slice(&dxf3, 1, 0, 1);
    fl_tensor dcls3 = fl_tensor_reshape(&dcls, 3, (int64_t[]){B, 1, D});
    fl_op_copy(ctx, &dcls3, &dcls_rows);
    fl_tensor xlast = btd(m, &m->xs[c->depth], B);
    fl_tensor meanf = fl_tensor_slice(&m->meanf, 1, 0, R), rstdf = fl_tensor_slice(&m->rstdf, 1, 0, R);
    fl_tensor dx = btd(m, &m->dx, B); /* gradient of the residual stream at the current depth */
    fl_op_ln_modulate_backward(ctx, &dxf, &xlast, &w->nf_s, &meanf, &rstdf, &dx, &g->nf_b, &g->nf_s);

    fl_tensor dx2 = btd(m, &m->dx2, B), dtmp = btd(m, &m->dtmp, B);
    fl_tensor dx_2d = rows_of(&dx, R), dx2_2d = rows_of(&dx2, R), dtmp_2d = rows_of(&dtmp, R);
    fl_tensor dmlp = fl_tensor_slice(&m->dmlp, 0, 0, R), dqkv = fl_tensor_slice(&m->dqkv, 0, 0, R);
    fl_tensor dqkvh = fl_tensor_slice(&m->dqkvh, 1, 0, B), dov = fl_tensor_slice(&m->dov, 0, 0, B);
    for (int l = c->depth - 1; l >= 0; l--) {
        bvit_acts *a = &m->acts[l];
        const bvit_layer *ly = &w->layers[l];
        bvit_layer *gl = &g->layers[l];
        /* MLP branch: x_out = x_mid + fc2(gelu(fc1(LN2(x_mid)))); dx holds d x_out */
        fl_tensor gact = fl_tensor_slice(&a->g, 0, 0, R), f1 = fl_tensor_slice(&a->f1, 0, 0, R);
        linear_backward(ctx, &dx_2d, &gact, &ly->fc2_w, &dmlp, &gl->fc2_w, &gl->fc2_b, R);
        fl_op_gelu_tanh_backward(ctx, &dmlp, &f1, &dmlp);
        fl_tensor h2 = btd(m, &a->h2, B);
        linear_backward(ctx, &dmlp, &h2, &ly->fc1_w, &dtmp, &gl->fc1_w, &gl->fc1_b, R);
        fl_tensor xmid = btd(m, &a->xmid, B);
        fl_tensor mean2 = fl_tensor_slice(&a->mean2, 1, 0, R), rstd2 = fl_tensor_slice(&a->rstd2, 1, 0, R);
        fl_op_ln_modulate_backward(ctx, &dtmp, &xmid, &ly->n2s, &mean2, &rstd2, &dx2, &gl->n2b, &gl->n2s);
        fl_op_add(ctx, &dx_2d, &dx2_2d, 1.0f, &dx_2d); /* dx = d x_mid */

        /* attention branch: x_mid = x_in + proj(attn(LN1(x_in))) */
        fl_tensor om = fl_tensor_slice(&a->om, 0, 0, R);
        linear_backward(ctx, &dx_2d, &om, &ly->proj_w, &dtmp_2d, &gl->proj_w, &gl->proj_b, R);
        fl_tensor dom4 = fl_tensor_reshape(&dtmp_2d, 4, (int64_t[]){B, L, H, hd});
        fl_tensor dom4p = fl_tensor_permute(&dom4, (int[]){0, 2, 1, 3});
        fl_op_copy(ctx, &dom4p, &dov);
        fl_tensor qkvh = fl_tensor_slice(&a->qkvh, 1, 0, B);
        fl_tensor q = fl_tensor_slice(&qkvh, 0, 0, 1), k = fl_tensor_slice(&qkvh, 0, 1, 1), v = fl_tensor_slice(&qkvh, 0, 2, 1);
        fl_tensor dq = fl_tensor_slice(&dqkvh, 0, 0, 1), dk = fl_tensor_slice(&dqkvh, 0, 1, 1), dv = fl_tensor_slice(&dqkvh, 0, 2, 1);
        const int64_t shp[4] = {B, H, L, hd};
        q = fl_tensor_reshape(&q, 4, shp);
        k = fl_tensor_reshape(&k, 4, shp);
        v = fl_tensor_reshape(&v, 4, shp);
        dq = fl_tensor_reshape(&dq, 4, shp);
        dk = fl_tensor_reshape(&dk, 4, shp);
        dv = fl_tensor_reshape(&dv, 4, shp);
        fl_tensor o = fl_tensor_slice(&a->o, 0, 0, B), lse = fl_tensor_slice(&a->lse, 0, 0, B);
        fl_op_attention_backward(ctx, &dov, &q, &k, &v, &o, &lse, &dq, &dk, &dv, 1.0f / sqrtf((float)hd));
        /* [3, B, H, L, hd] -> [B, L, 3, H, hd] */
        fl_tensor dq5 = fl_tensor_reshape(&dqkv, 5, (int64_t[]){B, L, 3, H, hd});
        fl_tensor dq5p = fl_tensor_permute(&dq5, (int[]){2, 0, 3, 1, 4});
        fl_op_copy(ctx, &dqkvh, &dq5p);
        fl_tensor h1 = btd(m, &a->h1, B);
        linear_backward(ctx, &dqkv, &h1, &ly->qkv_w, &dtmp_2d, &gl->qkv_w, &gl->qkv_b, R);
        fl_tensor xin = btd(m, &m->xs[l], B);
        fl_tensor mean1 = fl_tensor_slice(&a->mean1, 1, 0, R), rstd1 = fl_tensor_slice(&a->rstd1, 1, 0, R);
        fl_op_ln_modulate_backward(ctx, &dtmp, &xin, &ly->n1s, &mean1, &rstd1, &dx2, &gl->n1b, &gl->n1s);
        fl_op_add(ctx, &dx_2d, &dx2_2d, 1.0f, &dx_2d); /* dx = d x_in */
    }

    /* embeddings: x0 = [cls; tok] + pos */
    fl_tensor dx3 = fl_tensor_reshape(&dx, 3, (int64_t[]){B, L, D});
    for (int b = 0; b < B; b++) {
        fl_tensor xb = fl_tensor_slice(&dx3, 0, b, 1);
        fl_tensor xbv = fl_tensor_reshape(&xb, 2, (int64_t[]){L, D});
        fl_op_add(ctx, &g->pos, &xbv, 1.0f, &g->pos);
        fl_tensor row0 = fl_tensor_slice(&xbv, 0, 0, 1);
        fl_op_add(ctx, &g->cls, &row0, 1.0f, &g->cls);
    }
    fl_tensor dtok_src = fl_tensor_slice(&dx3, 1, 1, N);
    fl_tensor dtok = fl_tensor_slice(&m->dtok, 0, 0, (int64_t)B * N);
    fl_tensor dtok3 = fl_tensor_reshape(&dtok, 3, (int64_t[]){B, N, D});
    fl_op_copy(ctx, &dtok_src, &dtok3);
    fl_tensor patches = fl_tensor_slice(&m->patches, 0, 0, (int64_t)B * N);
    linear_backward(ctx, &dtok, &patches, &w->pe_w, NULL, &g->pe_w, &g->pe_b, (int64_t)B * N);
}

double fl_bvit_ntxent(const float *z, int n, int k, float temperature, float *dz, double *top1) {
    const int R = 2 * n;
    double *u = fl_xmalloc((size_t)R * (size_t)k * sizeof(double));
    double *norm = fl_xmalloc((size_t)R * sizeof(double));
    double *s = fl_xmalloc((size_t)R * (size_t)R * sizeof(double));
    for (int i = 0; i < R; i++) {
        double ss = 0;
        for (int j = 0; j < k; j++) ss += (double)z[(size_t)i * k + j] * z[(size_t)i * k + j];
        norm[i] = sqrt(ss) > 1e-12 ? sqrt(ss) : 1e-12;
        for (int j = 0; j < k; j++) u[(size_t)i * k + j] = z[(size_t)i * k + j] / norm[i];
    }
    const double inv_t = 1.0 / temperature;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < R; j++) {
            double d = 0;
            for (int q = 0; q < k; q++) d += u[(size_t)i * k + q] * u[(size_t)j * k + q];
            s[(size_t)i * R + j] = d * inv_t;
        }
    double loss = 0;
    int hits = 0;
    /* s becomes dL/ds (softmax minus the partner's one-hot, over 2n rows), diagonal 0 */
    for (int i = 0; i < R; i++) {
        int p = i < n ? i + n : i - n;
        double *row = s + (size_t)i * R;
        double mx = -INFINITY;
        int best = -1;
        for (int j = 0; j < R; j++)
            if (j != i && row[j] > mx) {
                mx = row[j];
                best = j;
            }
        hits += best == p;
        double sum = 0;
        for (int j = 0; j < R; j++)
            if (j != i) sum += exp(row[j] - mx);
        double lse = mx + log(sum);
        loss += lse - row[p];
        for (int j = 0; j < R; j++) row[j] = j == i ? 0.0 : (exp(row[j] - lse) - (j == p)) / R;
    }
    loss /= R;
    if (top1) *top1 = (double)hits / R;
    if (dz) {
        for (int i = 0; i < R; i++) {
            double du[1024];
            double *dd = k <= 1024 ? du : fl_xmalloc((size_t)k * sizeof(double));
            for (int q = 0; q < k; q++) dd[q] = 0;
            for (int j = 0; j < R; j++) {
                double coef = (s[(size_t)i * R + j] + s[(size_t)j * R + i]) * inv_t;
                if (coef == 0) continue;
                for (int q = 0; q < k; q++) dd[q] += coef * u[(size_t)j * k + q];
            }
            double dot = 0;
            for (int q = 0; q < k; q++) dot += dd[q] * u[(size_t)i * k + q];
            for (int q = 0; q < k; q++) dz[(size_t)i * k + q] = (float)((dd[q] - dot * u[(size_t)i * k + q]) / norm[i]);
            if (dd != du) free(dd);
        }
    }
    free(u);
    free(norm);
    free(s);
    return loss;
}
