/*
 * cpu_internal.h — shared declarations of the CPU fp32 reference backend (internal to kernels/cpu).
 *
 * The backend table in cpu_backend.c points at the fl_cpu_* functions declared here; each is
 * implemented in the file for its theme (GEMM, elementwise and layout, normalization, attention,
 * training). ops.c has validated every operand before these run, so they only compute.
 * Loops are parallelized with OpenMP through FL_OMP, which expands to nothing in builds without it.
 */
#ifndef FL_KERNELS_CPU_INTERNAL_H
#define FL_KERNELS_CPU_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "fl_build_config.h"
#include "kernels/backend.h"

#ifdef FL_HAVE_OPENMP
#include <omp.h>
#define FL_OMP(directive) _Pragma(#directive)
static inline int fl_cpu_thread_count(void) { return omp_get_max_threads(); }
static inline int fl_cpu_thread_id(void) { return omp_get_thread_num(); }
#else
#define FL_OMP(directive)
static inline int fl_cpu_thread_count(void) { return 1; }
static inline int fl_cpu_thread_id(void) { return 0; }
#endif

/* Lets GCC vectorize a floating-point reduction loop (it may reorder the sum). Clang is left to
 * its own judgment: it warns when a requested vectorization cannot be done (e.g. under
 * sanitizers). */
#if defined(FL_HAVE_OPENMP) && defined(__GNUC__) && !defined(__clang__)
#define FL_SIMD_REDUCTION(clause) _Pragma(#clause)
#else
#define FL_SIMD_REDUCTION(clause)
#endif

/* Work (in elements or multiply-adds) below which a loop runs on one thread. */
#define FL_CPU_PARALLEL_MIN 32768

/* Matrix view of an operand that ops.c has already checked to have one. */
static inline fl_matrix fl_cpu_matrix(const fl_tensor *t) {
    fl_matrix m = {0, 0, 0};
    FL_CHECK(fl_tensor_matrix(t, &m));
    return m;
}

/* C = alpha * op(A) * op(B) + beta * C on raw row-major f32 arrays with row strides (BLAS
 * semantics; with beta == 0 C is not read). Uses OpenBLAS when available; call from one thread. */
void fl_cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* C[m, n] += alpha * A * B on one thread, where A(i, p) = a[i * a_rs + p * a_cs] (so either
 * layout of A works) and B is row-major [k, n] with row stride ldb. C must not overlap A or B. */
void fl_cpu_gemm_acc_serial(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t a_rs,
                            int64_t a_cs, const float *b, int64_t ldb, float *c, int64_t ldc);

/* cpu_vexp.c: y[i] = exp(x[i] - sub) for i < n (x and y may be the same array); returns the sum
 * of the y[i]. Each y[i] depends only on x[i] and sub. */
float fl_cpu_exp_sub(const float *x, float *y, int64_t n, float sub);
/* Whether fl_cpu_exp_sub runs its vector path on this CPU (else it calls expf). */
bool fl_cpu_exp_is_vector(void);

/* cpu_gemm.c */
void fl_cpu_gemm(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b, fl_tensor *c,
                 float alpha, float beta);
void fl_cpu_linear(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y);
void fl_cpu_bias_grad(fl_ctx *ctx, const fl_tensor *dy, fl_tensor *db);

/* cpu_gemm_rows.c: the batch-invariant linear (ops.h, fl_op_linear_rows). Every element of
 * y[m, n] = x[m, k] w[n, k]^T + bias[n] is the chain acc = bias[j] (or 0), then
 * acc = fma(x[i][p], w[j][p], acc) for p = 0 .. k-1, stored as is: the same bits for any m, any
 * row position, any thread count and any of the instruction sets below. */
typedef enum fl_cpu_rows_isa { FL_CPU_ROWS_SCALAR, FL_CPU_ROWS_AVX2, FL_CPU_ROWS_AVX512 } fl_cpu_rows_isa;
const char *fl_cpu_rows_isa_name(fl_cpu_rows_isa isa);
bool fl_cpu_rows_isa_supported(fl_cpu_rows_isa isa);
fl_cpu_rows_isa fl_cpu_rows_isa_best(void); /* what fl_cpu_linear_rows uses */
/* Raw form: x row stride ldx, w [n, k] with row stride ldw, bias [n] or NULL, y row stride ldy.
 * Threads with OpenMP; call from one thread. isa must be supported. */
void fl_cpu_sgemm_rows(fl_cpu_rows_isa isa, int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx,
                       const float *w, int64_t ldw, const float *bias, float *y, int64_t ldy);
void fl_cpu_linear_rows(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y);

/* cpu_elementwise.c */
void fl_cpu_copy(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst);
void fl_cpu_fill(fl_ctx *ctx, fl_tensor *t, float value);
void fl_cpu_add(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, float alpha, fl_tensor *out);
void fl_cpu_scale(fl_ctx *ctx, fl_tensor *x, float alpha);
void fl_cpu_gelu_tanh(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cpu_gelu_tanh_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);
void fl_cpu_silu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cpu_silu_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);
void fl_cpu_gated_residual(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *gate, const fl_tensor *y,
                           fl_tensor *out);
void fl_cpu_gated_residual_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *gate, const fl_tensor *y,
                                    fl_tensor *dy, fl_tensor *dgate);

/* cpu_norm.c */
void fl_cpu_layernorm(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps);
void fl_cpu_layernorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *mean,
                               const fl_tensor *rstd, fl_tensor *dx);
void fl_cpu_ln_modulate(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *shift, const fl_tensor *scale,
                        fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps);
void fl_cpu_ln_modulate_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *scale,
                                 const fl_tensor *mean, const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dshift,
                                 fl_tensor *dscale);
void fl_cpu_rmsnorm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, fl_tensor *y, fl_tensor *rstd,
                    float eps);
void fl_cpu_rmsnorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *weight,
                             const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dweight);

/* cpu_attention.c */
void fl_cpu_rope(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y);
void fl_cpu_rope_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *pe, fl_tensor *dx);
void fl_cpu_attention(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                      fl_tensor *lse, float scale);
void fl_cpu_attention_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                               const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                               fl_tensor *dk, fl_tensor *dv, float scale);

/* cpu_train.c */
void fl_cpu_timestep_embedding(fl_ctx *ctx, const fl_tensor *t, fl_tensor *out, float time_factor,
                               float max_period);
void fl_cpu_flow_mix(fl_ctx *ctx, const fl_tensor *x0, const fl_tensor *noise, const fl_tensor *t, fl_tensor *xt,
                     fl_tensor *target);
double fl_cpu_mse_loss(fl_ctx *ctx, const fl_tensor *pred, const fl_tensor *target, fl_tensor *dpred);
double fl_cpu_sum_squares(fl_ctx *ctx, const fl_tensor *x);
void fl_cpu_adamw(fl_ctx *ctx, fl_tensor *param, const fl_tensor *grad, fl_tensor *m, fl_tensor *v,
                  const fl_adamw_params *p);

/* cpu_text.c (text encoders, forward only) */
void fl_cpu_embedding(fl_ctx *ctx, const fl_tensor *table, const int32_t *ids, int64_t n, fl_tensor *out);
void fl_cpu_layernorm_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                             fl_tensor *y, float eps);
void fl_cpu_attention_masked(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                             const fl_tensor *bias, bool causal, fl_tensor *out, float scale);
void fl_cpu_quick_gelu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cpu_gelu_erf(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cpu_mul(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);

/* cpu_conv.c: images (the autoencoder) */
void fl_cpu_conv2d(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y,
                   int stride, fl_conv2d_pad pad);
void fl_cpu_group_norm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias, fl_tensor *y,
                       int groups, float eps, bool silu);
void fl_cpu_upsample_nearest2x(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);

/* cpu_face.c (dlib's face networks) */
void fl_cpu_pool2d(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, int kh, int kw, int stride_y, int stride_x,
                   int pad_y, int pad_x, bool max);
void fl_cpu_channel_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *scale, const fl_tensor *shift,
                           fl_tensor *y, bool relu);
void fl_cpu_relu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cpu_add_padded(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);

#endif
