/*
 * ops.h — every numeric op flashlora's models are built from: one interface, two backends.
 *
 * Each fl_op_* checks its operands (shapes, dtypes, devices, layouts; a mismatch is a programming
 * error and aborts with file:line) and then runs the implementation of the context's backend:
 * kernels/cpu (the fp32 reference) or kernels/cuda (bf16 or f32 storage, fp32 accumulation).
 * In planning mode (kernels/context.h) the checks run and nothing is computed.
 *
 * Conventions used below:
 *  - Shapes are row-major; [B, T, D] means D varies fastest.
 *  - "matrix view": rows x cols with a row stride (core/tensor.h, fl_tensor_matrix). Operands
 *    described as matrix views may be column slices of a wider tensor (e.g. one chunk of a
 *    modulation output); everything else must be contiguous.
 *  - Activations and weights use the context's storage dtype (F32 on the CPU; F32 or BF16 on
 *    CUDA). Operands named "(f32)" are always F32: statistics, per-row scalars, optimizer state.
 *  - Backward ops overwrite the gradients they produce, except those marked "(accumulates)",
 *    which add into the destination (parameter gradients summed over a batch).
 *  - Unless stated, an output may not alias an input.
 */
#ifndef FL_KERNELS_OPS_H
#define FL_KERNELS_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"
#include "kernels/context.h"

/* ---- matrix products ------------------------------------------------------------------------ */

/* C = alpha * op(A) * op(B) + beta * C, where op(X) is X or its transpose, on matrix views.
 * op(A) is [M, K], op(B) is [K, N], C is [M, N]. With beta == 0, C's old contents are ignored.
 * A and B share the storage dtype; C has it too, or is F32 when A and B are BF16.
 *
 * Mixed precision (the CUDA policy, BF16 storage): products always accumulate in fp32. A LoRA
 * adapter being trained keeps f32 master weights, gradients and optimizer state; the model's
 * products read a BF16 copy of the master weights made at the start of every forward (one cast
 * of the flat buffer, models/flux_model.c), so every product of the forward and of the input
 * gradients has BF16 operands like the rest of the step. The weight gradients (dy^T h, dh^T x)
 * have BF16 operands too and are written to the f32 gradient buffer through the F32-output form
 * above, which accumulates (beta = 1) across a batch's Linears in fp32 and never rounds a
 * gradient to BF16. Why not F32 operands in the products: cuBLASLt runs a matrix product only
 * on operands of one type, so an F32 adapter next to BF16 activations would need a cast of the
 * activations (much larger than the adapter) at every adapted Linear. */
void fl_op_gemm(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b,
                fl_tensor *c, float alpha, float beta);

/* y = x * w^T + bias. x: matrix view [N, in]; w: [out, in] contiguous; bias: [out] or NULL;
 * y: matrix view [N, out]. This is PyTorch's nn.Linear with the original [out, in] weight layout. */
void fl_op_linear(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y);

/* fl_op_linear, batch-invariant: row i of y depends only on row i of x (with w and bias), bitwise,
 * whatever the number of rows in the call, the row's position among them and the thread count,
 * so one call over a batch gives each sample the bits a call over that sample alone gives. Its
 * results may differ from fl_op_linear's in the last bits (another summation order). Only where
 * fl_op_has_linear_rows says so (the CPU backend; CUDA has none yet). */
bool fl_op_has_linear_rows(const fl_ctx *ctx);
void fl_op_linear_rows(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y);

/* db[out] += sum over rows of dy[N, out] (accumulates). dy: matrix view. */
void fl_op_bias_grad(fl_ctx *ctx, const fl_tensor *dy, fl_tensor *db);

/* ---- layout and elementwise ----------------------------------------------------------------- */

/* dst = src for tensors of the same shape with any strides (permuted and sliced views included),
 * converting between storage dtypes. Used for every permutation, split and concatenation
 * (patch packing, [txt; img] joins, head split/merge) and for f32 <-> bf16 conversion. */
void fl_op_copy(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst);

/* Every element of t (any strides) = value. */
void fl_op_fill(fl_ctx *ctx, fl_tensor *t, float value);

/* out = a + alpha * b on matrix views of equal shape. out may alias a or b. */
void fl_op_add(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, float alpha, fl_tensor *out);

/* x *= alpha on a matrix view, in place. */
void fl_op_scale(fl_ctx *ctx, fl_tensor *x, float alpha);

/* y = GELU with the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
 * x, y: matrix views of equal shape; y may alias x. */
void fl_op_gelu_tanh(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
/* dx = dy * GELU'(x). dx may alias dy. */
void fl_op_gelu_tanh_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);

/* y = x * sigmoid(x). Same layout rules as GELU. */
void fl_op_silu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_op_silu_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);

/* ---- normalization and modulation ----------------------------------------------------------- */

/* LayerNorm without affine parameters over the last dim: y = (x - mean) * rstd,
 * rstd = 1 / sqrt(var + eps), var the biased variance. x, y: [R, D] contiguous;
 * mean, rstd: [R] (f32), saved for the backward. */
void fl_op_layernorm(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, fl_tensor *mean, fl_tensor *rstd,
                     float eps);
void fl_op_layernorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *mean,
                              const fl_tensor *rstd, fl_tensor *dx);

/* Fused LayerNorm (no affine) and adaLN modulation, Flux's `(1 + scale) * norm(x) + shift`:
 *   y[b,t,:] = LN(x[b,t,:]) * (1 + scale[b,:]) + shift[b,:]
 * x, y: [B, T, D] contiguous; shift, scale: matrix views [B, D] (typically column chunks of a
 * modulation linear's output); mean, rstd: [B, T] (f32). */
void fl_op_ln_modulate(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *shift, const fl_tensor *scale,
                       fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps);
/* Gradients of fl_op_ln_modulate: dx [B, T, D]; dshift, dscale: matrix views [B, D] (either may be
 * NULL to skip). All overwrite. */
void fl_op_ln_modulate_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *scale,
                                const fl_tensor *mean, const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dshift,
                                fl_tensor *dscale);

/* RMSNorm over the last dim with a learned scale, computed in fp32 (Flux's q/k norm, applied per
 * head): y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
 * x, y: [R, D] contiguous; weight: [D]; rstd: [R] (f32). */
void fl_op_rmsnorm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, fl_tensor *y, fl_tensor *rstd,
                   float eps);
/* dx overwrites; dweight (accumulates) may be NULL. */
void fl_op_rmsnorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *weight,
                            const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dweight);

/* Gated residual: out[b,t,:] = x[b,t,:] + gate[b,:] * y[b,t,:].
 * x, y, out: [B, T, D] contiguous (out may alias x); gate: matrix view [B, D]. */
void fl_op_gated_residual(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *gate, const fl_tensor *y,
                          fl_tensor *out);
/* dy = gate * dout; dgate[b,:] = sum_t dout[b,t,:] * y[b,t,:] (matrix view, may be NULL).
 * The gradient with respect to x is dout itself. Both overwrite. */
void fl_op_gated_residual_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *gate,
                                   const fl_tensor *y, fl_tensor *dy, fl_tensor *dgate);

/* ---- positions and attention ---------------------------------------------------------------- */

/* Flux's rotary embedding table, computed on the host in double precision:
 * for each token (b, l) and each axis a with ids[b, l, a] = p and axis width axes_dim[a] (even),
 * pairs i = 0 .. axes_dim[a]/2 - 1 get angle p * theta^(-2i / axes_dim[a]); the axes' pairs are
 * concatenated in order. pe_out: [B, L, D/2, 2] host floats holding (cos, sin) per pair, with
 * D = sum(axes_dim). ids: [B, L, n_axes] host floats. */
void fl_rope_table_host(const float *ids, int64_t batch, int64_t length, const int *axes_dim, int n_axes,
                        double theta, float *pe_out);

/* Rotary embedding on adjacent pairs (2i, 2i+1) of the head dim:
 *   y[2i]   = cos * x[2i] - sin * x[2i+1]
 *   y[2i+1] = sin * x[2i] + cos * x[2i+1]
 * x, y: [B, H, L, D] contiguous (y may alias x); pe: [B, L, D/2, 2] (f32), as above. */
void fl_op_rope(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y);
/* dx = rotation by the opposite angle of dy. dx may alias dy. */
void fl_op_rope_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *pe, fl_tensor *dx);

/* Softmax attention without a mask, per batch and head:
 *   out = softmax(scale * q k^T) v,  lse[b,h,i] = log sum_j exp(scale * q_i . k_j)
 * q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; out: [B, H, Lq, D]; lse: [B, H, Lq] (f32), kept for the
 * backward. All contiguous. Flux passes scale = 1/sqrt(D). The CUDA kernels take D <= 512. */
void fl_op_attention(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                     fl_tensor *lse, float scale);
void fl_op_attention_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                              const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                              fl_tensor *dk, fl_tensor *dv, float scale);

/* Sinusoidal timestep embedding of Flux: with u = time_factor * t[b], half = dim / 2 and
 * f_i = exp(-ln(max_period) * i / half):
 *   out[b, i] = cos(u f_i), out[b, half + i] = sin(u f_i)   (cosine half first)
 * and a zero last column when dim is odd. t: [B] (f32); out: [B, dim]. Flux uses
 * time_factor = 1000 and max_period = 10000. */
void fl_op_timestep_embedding(fl_ctx *ctx, const fl_tensor *t, fl_tensor *out, float time_factor,
                              float max_period);

/* ---- objective and optimizer ---------------------------------------------------------------- */

/* Rectified-flow interpolation for training: for each sample b with time t[b],
 *   xt[b] = (1 - t[b]) * x0[b] + t[b] * noise[b],  target[b] = noise[b] - x0[b]
 * x0, noise, xt, target: [B, ...] contiguous, same shape; t: [B] (f32). */
void fl_op_flow_mix(fl_ctx *ctx, const fl_tensor *x0, const fl_tensor *noise, const fl_tensor *t,
                    fl_tensor *xt, fl_tensor *target);

/* Mean squared error over all elements: returns mean((pred - target)^2) (accumulated in double on
 * the CPU, fp32 blocks + double on CUDA) and, when dpred is not NULL, writes
 * dpred = 2 (pred - target) / numel. pred, target, dpred: contiguous, same shape. Synchronizes. */
double fl_op_mse_loss(fl_ctx *ctx, const fl_tensor *pred, const fl_tensor *target, fl_tensor *dpred);

/* Sum of squares of a contiguous f32 tensor (for global gradient-norm clipping). Synchronizes. */
double fl_op_sum_squares(fl_ctx *ctx, const fl_tensor *x);

typedef struct fl_adamw_params {
    float lr;
    float beta1, beta2;
    float eps;
    float weight_decay;
    float grad_scale; /* gradients are multiplied by this first (1, or the clipping factor) */
    int64_t step;     /* 1-based step number, for bias correction */
} fl_adamw_params;

/* One AdamW step over flat f32 buffers of equal length, as torch.optim.AdamW does it:
 *   g = grad * grad_scale; param *= 1 - lr * weight_decay;
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
 *   param -= lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)
 * All LoRA parameters live in one buffer so a training step updates them in one call. */
void fl_op_adamw(fl_ctx *ctx, fl_tensor *param, const fl_tensor *grad, fl_tensor *m, fl_tensor *v,
                 const fl_adamw_params *p);

/* ---- text encoders (CLIP, T5): forward-only ops ----------------------------------------------- */

/* Embedding gather: out[r, :] = table[ids[r], :] for r < n. table: [V, D] contiguous; out: matrix
 * view [n, D]; ids: n host int32 values, each in [0, V) (an id outside is a bug: it aborts). In
 * planning mode ids may be NULL. */
void fl_op_embedding(fl_ctx *ctx, const fl_tensor *table, const int32_t *ids, int64_t n, fl_tensor *out);

/* LayerNorm with affine parameters over the last dim (CLIP): y = (x - mean) * rstd * weight + bias,
 * rstd = 1 / sqrt(var + eps), var the biased variance, statistics in fp32 or better.
 * x, y: [R, D] contiguous (y may alias x); weight, bias: [D]. */
void fl_op_layernorm_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                            fl_tensor *y, float eps);

/* Softmax attention with an additive bias and/or a causal mask, per batch and head:
 *   s_ij = scale * q_i . k_j + bias[b?, h, i, j];  s_ij = -inf where causal and j > i
 *   out_i = sum_j softmax_j(s_i) v_j
 * q, k, v, out: [B, H, L, D] contiguous with Lq == Lk == L (q and k may have different L when
 * neither the bias nor the mask is used); bias: NULL, [H, Lq, Lk] (the same for every batch, T5's
 * position bias) or [B, H, Lq, Lk], always f32 and contiguous. T5 passes scale = 1 and its bias;
 * CLIP scale = 1/sqrt(D) and causal. The CUDA kernel takes D <= 512. */
void fl_op_attention_masked(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                            const fl_tensor *bias, bool causal, fl_tensor *out, float scale);

/* y = x * sigmoid(1.702 x) (CLIP's quick_gelu). x, y: matrix views of equal shape; y may alias x. */
void fl_op_quick_gelu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);

/* y = 0.5 x (1 + erf(x / sqrt(2))), the exact GELU. Same layout rules. */
void fl_op_gelu_erf(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);

/* out = a * b elementwise (T5's gated feed-forward) on matrix views of equal shape; out may alias
 * a or b. */
void fl_op_mul(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);

/* ---- images: convolution, group normalization, upsampling (the autoencoder) ----------------- */

/* Zero padding of a 2-D convolution, in torch.nn.functional.pad's order. The FLUX.1 autoencoder
 * uses {1, 1, 1, 1} (3x3, stride 1) and {0, 1, 0, 1} (its stride-2 downsampling). */
typedef struct fl_conv2d_pad {
    int left, right, top, bottom;
} fl_conv2d_pad;

/* Most elements of the im2col tile one fl_op_conv2d call holds outside its operands (in the
 * storage dtype), unless a single output row needs more (then one row's worth:
 * C * KH * KW * Wo). See fl_conv2d_scratch_elements. */
#define FL_CONV2D_TILE_ELEMS ((int64_t)1 << 23)

/* 2-D cross-correlation over NCHW images, as torch.nn.functional.conv2d after zero padding:
 *   y[b, o, i, j] = bias[o] + sum over c, u, v of w[o, c, u, v] * xp[b, c, i*stride + u, j*stride + v]
 * with xp = x padded with zeros by pad. x: [B, C, H, W]; w: [O, C, KH, KW]; bias: [O] or NULL;
 * y: [B, O, Ho, Wo] with Ho = (H + top + bottom - KH) / stride + 1 and Wo likewise (floor), all
 * contiguous; y may not alias x. A 1x1 kernel with stride 1 and no padding is one GEMM per image;
 * every other shape is a GEMM per tile of output rows over an im2col tile of at most
 * FL_CONV2D_TILE_ELEMS elements (never a whole-image im2col). */
void fl_op_conv2d(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y,
                  int stride, fl_conv2d_pad pad);

/* Elements of the im2col scratch fl_op_conv2d takes for these shapes (0 for the direct 1x1
 * case): channels C, kernel KH x KW, output Ho x Wo. */
int64_t fl_conv2d_scratch_elements(int64_t channels, int64_t kh, int64_t kw, int64_t out_h, int64_t out_w,
                                   int stride, fl_conv2d_pad pad);

/* GroupNorm (torch.nn.GroupNorm with affine parameters): for each sample b and each group of
 * C / groups consecutive channels, the mean and biased variance over those channels and every
 * position (computed in fp32 or wider from the stored values), then
 *   y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]
 * followed by SiLU (y * sigmoid(y)) when silu is set. x, y: [B, C, ...] contiguous with at least
 * two dims, same shape; y may alias x. weight, bias: [C]; groups divides C. */
void fl_op_group_norm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias, fl_tensor *y,
                      int groups, float eps, bool silu);

/* Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2, mode="nearest")):
 *   y[b, c, i, j] = x[b, c, i / 2, j / 2]. x: [B, C, H, W]; y: [B, C, 2H, 2W]; contiguous. */
void fl_op_upsample_nearest2x(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);

/* ---- face networks (dlib's ResNet and MMOD detector): pooling, per-channel affine, residual
 *      add of tensors of different shapes ------------------------------------------------------- */

/* Max or average pooling over NCHW images as dlib computes it: x [B, C, H, W] ->
 * y [B, C, Ho, Wo] with Ho = 1 + (H + 2 * pad_y - kh) / stride_y and Wo likewise; output (i, j)
 * reads the window of rows i * stride_y - pad_y .. + kh - 1 and columns j * stride_x - pad_x ..
 * + kw - 1 clipped to the image (the padding is never read): its maximum, or the mean of the
 * elements inside (summed in fp32 in row order, then divided by their count). kh = kw = 0 pools
 * each whole plane (y [B, C, 1, 1]). Requires 0 <= pad < kernel and a kernel that fits the padded
 * image. Contiguous; y may not alias x. */
void fl_op_pool2d(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, int kh, int kw, int stride_y, int stride_x,
                  int pad_y, int pad_x, bool max);

/* y[b, c, ...] = x[b, c, ...] * scale[c] + shift[c], then max(0, y) when relu is set (dlib's
 * affine layer in its per-channel mode, batch norm folded into one). x, y: [B, C, ...]
 * contiguous, same shape, y may alias x; scale, shift: [C]. */
void fl_op_channel_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *scale, const fl_tensor *shift,
                          fl_tensor *y, bool relu);

/* y = max(0, x) on matrix views of equal shape; y may alias x. */
void fl_op_relu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);

/* dlib's add_prev: out = a + b for NCHW tensors of different channel counts and sizes. a, b:
 * [B, Ca, Ha, Wa] and [B, Cb, Hb, Wb]; out: [B, max C, max H, max W]; an element missing from an
 * operand counts as 0 (indices aligned at 0, so the padding is the high channels and the
 * bottom/right). Contiguous; out may alias an operand of its own shape. */
void fl_op_add_padded(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);

#endif
