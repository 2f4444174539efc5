/*
 * backend.h — the table a backend fills to implement kernels/ops.h (internal to kernels/).
 *
 * fl_op_* in ops.c validate operands, then call the entry of ctx->backend with the same
 * arguments; a backend may therefore assume shapes, dtypes and layouts are as ops.h documents.
 * The CPU table is always present; the CUDA table exists when FL_HAVE_CUDA is defined.
 */
#ifndef FL_KERNELS_BACKEND_H
#define FL_KERNELS_BACKEND_H

#include "fl_build_config.h"
#include "kernels/ops.h"

struct fl_backend {
    const char *name;
    /* Sets up ctx->impl for ctx->device; returns -1 with err filled when the device is unusable. */
    int (*init)(fl_ctx *ctx, fl_error *err);
    void (*destroy)(fl_ctx *ctx);
    void *(*alloc)(fl_ctx *ctx, size_t bytes);
    void (*free)(fl_ctx *ctx, void *ptr);
    void (*upload)(fl_ctx *ctx, void *dst, const void *src, size_t bytes);
    void (*download)(fl_ctx *ctx, void *dst, const void *src, size_t bytes);
    void (*synchronize)(fl_ctx *ctx);

    void (*gemm)(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b, fl_tensor *c,
                 float alpha, float beta);
    void (*linear)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y);
    /* ops.h, fl_op_linear_rows; NULL when the backend has no batch-invariant product. */
    void (*linear_rows)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y);
    void (*bias_grad)(fl_ctx *ctx, const fl_tensor *dy, fl_tensor *db);
    void (*copy)(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst);
    void (*fill)(fl_ctx *ctx, fl_tensor *t, float value);
    void (*add)(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, float alpha, fl_tensor *out);
    void (*scale)(fl_ctx *ctx, fl_tensor *x, float alpha);
    void (*gelu_tanh)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
    void (*gelu_tanh_backward)(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);
    void (*silu)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
    void (*silu_backward)(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);
    void (*layernorm)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, fl_tensor *mean, fl_tensor *rstd,
                      float eps);
    void (*layernorm_backward)(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *mean,
                               const fl_tensor *rstd, fl_tensor *dx);
    void (*ln_modulate)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *shift, const fl_tensor *scale,
                        fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps);
    void (*ln_modulate_backward)(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *scale,
                                 const fl_tensor *mean, const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dshift,
                                 fl_tensor *dscale);
    void (*rmsnorm)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, fl_tensor *y, fl_tensor *rstd,
                    float eps);
    void (*rmsnorm_backward)(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *weight,
                             const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dweight);
    void (*gated_residual)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *gate, const fl_tensor *y,
                           fl_tensor *out);
    void (*gated_residual_backward)(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *gate,
                                    const fl_tensor *y, fl_tensor *dy, fl_tensor *dgate);
    void (*rope)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y);
    void (*rope_backward)(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *pe, fl_tensor *dx);
    void (*attention)(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                      fl_tensor *lse, float scale);
    void (*attention_backward)(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                               const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                               fl_tensor *dk, fl_tensor *dv, float scale);
    void (*timestep_embedding)(fl_ctx *ctx, const fl_tensor *t, fl_tensor *out, float time_factor,
                               float max_period);
    void (*flow_mix)(fl_ctx *ctx, const fl_tensor *x0, const fl_tensor *noise, const fl_tensor *t, fl_tensor *xt,
                     fl_tensor *target);
    double (*mse_loss)(fl_ctx *ctx, const fl_tensor *pred, const fl_tensor *target, fl_tensor *dpred);
    double (*sum_squares)(fl_ctx *ctx, const fl_tensor *x);
    void (*adamw)(fl_ctx *ctx, fl_tensor *param, const fl_tensor *grad, fl_tensor *m, fl_tensor *v,
                  const fl_adamw_params *p);

    /* text encoders (forward only) */
    void (*embedding)(fl_ctx *ctx, const fl_tensor *table, const int32_t *ids, int64_t n, fl_tensor *out);
    void (*layernorm_affine)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                             fl_tensor *y, float eps);
    void (*attention_masked)(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                             const fl_tensor *bias, bool causal, fl_tensor *out, float scale);
    void (*quick_gelu)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
    void (*gelu_erf)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
    void (*mul)(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);

    /* images: convolution, group normalization, upsampling (the autoencoder) */
    void (*conv2d)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y,
                   int stride, fl_conv2d_pad pad);
    void (*group_norm)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                       fl_tensor *y, int groups, float eps, bool silu);
    void (*upsample_nearest2x)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);

    /* face networks (dlib): pooling, per-channel affine, relu, padded residual add */
    void (*pool2d)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, int kh, int kw, int stride_y, int stride_x,
                   int pad_y, int pad_x, bool max);
    void (*channel_affine)(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *scale, const fl_tensor *shift,
                           fl_tensor *y, bool relu);
    void (*relu)(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
    void (*add_padded)(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);
};

const fl_backend *fl_cpu_backend(void);
#ifdef FL_HAVE_CUDA
const fl_backend *fl_cuda_backend(void);
#endif

#endif
