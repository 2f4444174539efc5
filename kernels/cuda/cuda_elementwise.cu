/*
 * cuda_elementwise.cu — layout and elementwise ops on CUDA: strided copy with dtype conversion
 * (F32, BF16, F16; up to FL_MAX_DIMS dims), strided fill, and the matrix-view ops add, scale,
 * GELU (tanh) and SiLU with their backwards. Every kernel is a grid-stride loop with 64-bit
 * indices, reads in the storage dtype and computes in fp32.
 */
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

/* ---- strided copy and fill -------------------------------------------------------------------- */

/* A tensor walk with dims of extent 1 dropped and adjacent dims merged where both operands allow. */
typedef struct strided_walk {
    int ndim;
    int64_t shape[FL_MAX_DIMS];
    int64_t src_stride[FL_MAX_DIMS];
    int64_t dst_stride[FL_MAX_DIMS];
} strided_walk;

/* src may be NULL (fill): then only dst's strides decide the merging. */
static strided_walk make_walk(const fl_tensor *src, const fl_tensor *dst) {
    strided_walk w;
    memset(&w, 0, sizeof w);
    for (int i = 0; i < dst->ndim; i++) {
        const int64_t extent = dst->shape[i];
        if (extent == 1) continue;
        const int64_t ss = src ? src->stride[i] : 0, ds = dst->stride[i];
        if (w.ndim > 0 && w.src_stride[w.ndim - 1] == ss * extent && w.dst_stride[w.ndim - 1] == ds * extent) {
            w.shape[w.ndim - 1] *= extent; /* the outer dim steps exactly over the inner one */
            w.src_stride[w.ndim - 1] = ss;
            w.dst_stride[w.ndim - 1] = ds;
        } else {
            w.shape[w.ndim] = extent;
            w.src_stride[w.ndim] = ss;
            w.dst_stride[w.ndim] = ds;
            w.ndim++;
        }
    }
    return w;
}

template <typename S, typename D>
__global__ void copy_kernel(const S *src, D *dst, strided_walk w, int64_t n) {
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        int64_t rest = i, so = 0, dof = 0;
        for (int d = w.ndim - 1; d >= 0; d--) {
            const int64_t idx = rest % w.shape[d];
            rest /= w.shape[d];
            so += idx * w.src_stride[d];
            dof += idx * w.dst_stride[d];
        }
        dst[dof] = fl_from_f32<D>(fl_to_f32(src[so]));
    }
}

template <typename T> __global__ void fill_kernel(T *dst, strided_walk w, int64_t n, float value) {
    const T v = fl_from_f32<T>(value);
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        int64_t rest = i, dof = 0;
        for (int d = w.ndim - 1; d >= 0; d--) {
            const int64_t idx = rest % w.shape[d];
            rest /= w.shape[d];
            dof += idx * w.dst_stride[d];
        }
        dst[dof] = v;
    }
}

template <typename S>
static void copy_from(fl_cuda_state *s, const S *src, const fl_tensor *dst, const strided_walk &w, int64_t n) {
    const unsigned grid = fl_cuda_grid(s, n, FL_CUDA_THREADS);
    switch (dst->dtype) {
    case FL_F32: copy_kernel<S, float><<<grid, FL_CUDA_THREADS, 0, s->stream>>>(src, (float *)dst->data, w, n); break;
    case FL_BF16:
        copy_kernel<S, __nv_bfloat16><<<grid, FL_CUDA_THREADS, 0, s->stream>>>(src, (__nv_bfloat16 *)dst->data, w, n);
        break;
    case FL_F16:
        copy_kernel<S, __half><<<grid, FL_CUDA_THREADS, 0, s->stream>>>(src, (__half *)dst->data, w, n);
        break;
    }
    CHECK_LAUNCH();
}

static void check_dtype(fl_dtype dtype) {
    FL_CHECKF(dtype == FL_F32 || dtype == FL_BF16 || dtype == FL_F16, "CUDA copy/fill: unknown dtype %d",
              (int)dtype);
}

void fl_cuda_copy(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    check_dtype(src->dtype);
    check_dtype(dst->dtype);
    const int64_t n = fl_tensor_numel(dst);
    if (n == 0) return;
    const strided_walk w = make_walk(src, dst);
    if (src->dtype == dst->dtype && (w.ndim == 0 || (w.ndim == 1 && w.src_stride[0] == 1 && w.dst_stride[0] == 1))) {
        CHECK_CUDA(cudaMemcpyAsync(dst->data, src->data, (size_t)n * fl_dtype_size(dst->dtype),
                                   cudaMemcpyDeviceToDevice, s->stream));
        return;
    }
    switch (src->dtype) {
    case FL_F32: copy_from(s, (const float *)src->data, dst, w, n); break;
    case FL_BF16: copy_from(s, (const __nv_bfloat16 *)src->data, dst, w, n); break;
    case FL_F16: copy_from(s, (const __half *)src->data, dst, w, n); break;
    }
}

void fl_cuda_fill(fl_ctx *ctx, fl_tensor *t, float value) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    check_dtype(t->dtype);
    const int64_t n = fl_tensor_numel(t);
    if (n == 0) return;
    const strided_walk w = make_walk(NULL, t);
    const unsigned grid = fl_cuda_grid(s, n, FL_CUDA_THREADS);
    switch (t->dtype) {
    case FL_F32: fill_kernel<float><<<grid, FL_CUDA_THREADS, 0, s->stream>>>((float *)t->data, w, n, value); break;
    case FL_BF16:
        fill_kernel<__nv_bfloat16><<<grid, FL_CUDA_THREADS, 0, s->stream>>>((__nv_bfloat16 *)t->data, w, n, value);
        break;
    case FL_F16: fill_kernel<__half><<<grid, FL_CUDA_THREADS, 0, s->stream>>>((__half *)t->data, w, n, value); break;
    }
    CHECK_LAUNCH();
}

/* ---- matrix-view elementwise ops -------------------------------------------------------------- */

enum { OP_SCALE, OP_GELU, OP_SILU, OP_ADD, OP_GELU_BACKWARD, OP_SILU_BACKWARD };

#define GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K1 0.044715f

template <int OP> __device__ __forceinline__ float unary_op(float x, float alpha) {
    if (OP == OP_SCALE) return alpha * x;
    if (OP == OP_GELU) return 0.5f * x * (1.0f + tanhf(GELU_K0 * (x + GELU_K1 * x * x * x)));
    /* OP_SILU */
    return x / (1.0f + expf(-x));
}

/* a, b: the two inputs (add: a + alpha b; backwards: a = dy, b = x). */
template <int OP> __device__ __forceinline__ float binary_op(float a, float b, float alpha) {
    if (OP == OP_ADD) return a + alpha * b;
    if (OP == OP_GELU_BACKWARD) {
        const float x = b, x2 = x * x;
        const float t = tanhf(GELU_K0 * (x + GELU_K1 * x2 * x));
        const float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * x2);
        return a * grad;
    }
    /* OP_SILU_BACKWARD */
    const float x = b, sig = 1.0f / (1.0f + expf(-x));
    return a * sig * (1.0f + x * (1.0f - sig));
}

/* y[r, c] = f(x[r, c]); y may alias x (same view). */
template <typename T, int OP>
__global__ void unary_kernel(const T *x, int64_t ldx, T *y, int64_t ldy, int64_t rows, int64_t cols, float alpha) {
    const int64_t n = rows * cols;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const int64_t r = i / cols, c = i - r * cols;
        y[r * ldy + c] = fl_from_f32<T>(unary_op<OP>(fl_to_f32(x[r * ldx + c]), alpha));
    }
}

/* out[r, c] = f(a[r, c], b[r, c]); out may alias a or b (same view). */
template <typename T, int OP>
__global__ void binary_kernel(const T *a, int64_t lda, const T *b, int64_t ldb, T *out, int64_t ldo, int64_t rows,
                              int64_t cols, float alpha) {
    const int64_t n = rows * cols;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const int64_t r = i / cols, c = i - r * cols;
        const float av = fl_to_f32(a[r * lda + c]), bv = fl_to_f32(b[r * ldb + c]);
        out[r * ldo + c] = fl_from_f32<T>(binary_op<OP>(av, bv, alpha));
    }
}

template <int OP> static void launch_unary(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, float alpha) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix mx = fl_cuda_matrix(x), my = fl_cuda_matrix(y);
    const int64_t n = mx.rows * mx.cols;
    if (n == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     unary_kernel<T, OP><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)x->data, mx.ld, (T *)y->data, my.ld, mx.rows, mx.cols, alpha));
    CHECK_LAUNCH();
}

template <int OP>
static void launch_binary(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out, float alpha) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix ma = fl_cuda_matrix(a), mb = fl_cuda_matrix(b), mo = fl_cuda_matrix(out);
    const int64_t n = ma.rows * ma.cols;
    if (n == 0) return;
    FL_CUDA_DISPATCH(a->dtype, T,
                     binary_kernel<T, OP><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)a->data, ma.ld, (const T *)b->data, mb.ld, (T *)out->data, mo.ld, ma.rows,
                         ma.cols, alpha));
    CHECK_LAUNCH();
}

void fl_cuda_add(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, float alpha, fl_tensor *out) {
    launch_binary<OP_ADD>(ctx, a, b, out, alpha);
}

void fl_cuda_scale(fl_ctx *ctx, fl_tensor *x, float alpha) {
    launch_unary<OP_SCALE>(ctx, x, x, alpha);
}

void fl_cuda_gelu_tanh(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    launch_unary<OP_GELU>(ctx, x, y, 0.0f);
}

void fl_cuda_gelu_tanh_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx) {
    launch_binary<OP_GELU_BACKWARD>(ctx, dy, x, dx, 0.0f);
}

void fl_cuda_silu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    launch_unary<OP_SILU>(ctx, x, y, 0.0f);
}

void fl_cuda_silu_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx) {
    launch_binary<OP_SILU_BACKWARD>(ctx, dy, x, dx, 0.0f);
}
