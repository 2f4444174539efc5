/*
 * cuda_face.cu — the ops of dlib's face networks on CUDA (see kernels/ops.h): pooling with
 * clipped windows, the per-channel affine with an optional ReLU, ReLU, and the residual add of
 * NCHW tensors of different shapes. One thread per output element; values are read and written
 * in the storage dtype and computed in fp32 (the average sums in row order, like the CPU).
 */
#include "kernels/cuda/cuda_common.cuh"

template <typename T>
__global__ void pool2d_kernel(const T *x, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int kh, int kw, int sy,
                              int sx, int py, int px, bool is_max, int64_t total, T *y) {
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t plane = idx / (Ho * Wo), rem = idx - plane * Ho * Wo;
        const int64_t i = rem / Wo, j = rem - i * Wo;
        int64_t r0 = i * sy - py, r1 = r0 + kh, c0 = j * sx - px, c1 = c0 + kw;
        r0 = r0 < 0 ? 0 : r0;
        r1 = r1 > H ? H : r1;
        c0 = c0 < 0 ? 0 : c0;
        c1 = c1 > W ? W : c1;
        const T *src = x + plane * H * W;
        float acc = is_max ? -INFINITY : 0.0f;
        for (int64_t r = r0; r < r1; r++)
            for (int64_t c = c0; c < c1; c++) {
                const float v = fl_to_f32(src[r * W + c]);
                if (is_max) acc = v > acc ? v : acc;
                else acc += v;
            }
        const int64_t count = (r1 - r0) * (c1 - c0);
        if (count <= 0) acc = 0.0f;
        else if (!is_max) acc /= (float)count;
        y[idx] = fl_from_f32<T>(acc);
    }
}

void fl_cuda_pool2d(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, int kh, int kw, int stride_y, int stride_x,
                    int pad_y, int pad_x, bool max) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t H = x->shape[2], W = x->shape[3], Ho = y->shape[2], Wo = y->shape[3];
    if (kh == 0 && kw == 0) kh = (int)H, kw = (int)W, stride_y = stride_x = 1, pad_y = pad_x = 0;
    const int64_t total = fl_tensor_numel(y);
    if (total == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     pool2d_kernel<T><<<fl_cuda_grid(s, total, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)x->data, H, W, Ho, Wo, kh, kw, stride_y, stride_x, pad_y, pad_x, max, total,
                         (T *)y->data));
    CHECK_LAUNCH();
}

template <typename T>
__global__ void channel_affine_kernel(const T *x, const T *scale, const T *shift, int64_t C, int64_t inner,
                                      bool relu, int64_t total, T *y) {
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t c = (idx / inner) % C;
        float v = fl_to_f32(x[idx]) * fl_to_f32(scale[c]) + fl_to_f32(shift[c]);
        if (relu && !(v > 0.0f)) v = 0.0f;
        y[idx] = fl_from_f32<T>(v);
    }
}

void fl_cuda_channel_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *scale, const fl_tensor *shift,
                            fl_tensor *y, bool relu) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t total = fl_tensor_numel(x), B = x->shape[0], C = x->shape[1];
    if (total == 0) return;
    const int64_t inner = total / (B * C);
    FL_CUDA_DISPATCH(x->dtype, T,
                     channel_affine_kernel<T><<<fl_cuda_grid(s, total, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                s->stream>>>((const T *)x->data, (const T *)scale->data,
                                                             (const T *)shift->data, C, inner, relu, total,
                                                             (T *)y->data));
    CHECK_LAUNCH();
}

template <typename T>
__global__ void relu_kernel(const T *x, int64_t ldx, T *y, int64_t ldy, int64_t rows, int64_t cols) {
    const int64_t total = rows * cols;
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t r = idx / cols, c = idx - r * cols;
        const float v = fl_to_f32(x[r * ldx + c]);
        y[r * ldy + c] = fl_from_f32<T>(v > 0.0f ? v : 0.0f);
    }
}

void fl_cuda_relu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix mx = fl_cuda_matrix(x), my = fl_cuda_matrix(y);
    const int64_t n = mx.rows * mx.cols;
    if (n == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     relu_kernel<T><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)x->data, mx.ld, (T *)y->data, my.ld, mx.rows, mx.cols));
    CHECK_LAUNCH();
}

template <typename T>
__global__ void add_padded_kernel(const T *a, int64_t Ca, int64_t Ha, int64_t Wa, const T *b, int64_t Cb,
                                  int64_t Hb, int64_t Wb, int64_t C, int64_t H, int64_t W, int64_t total, T *out) {
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t j = idx % W, i = (idx / W) % H, c = (idx / (W * H)) % C, n = idx / (W * H * C);
        const float va = c < Ca && i < Ha && j < Wa ? fl_to_f32(a[((n * Ca + c) * Ha + i) * Wa + j]) : 0.0f;
        const float vb = c < Cb && i < Hb && j < Wb ? fl_to_f32(b[((n * Cb + c) * Hb + i) * Wb + j]) : 0.0f;
        out[idx] = fl_from_f32<T>(va + vb);
    }
}

void fl_cuda_add_padded(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t total = fl_tensor_numel(out);
    if (total == 0) return;
    FL_CUDA_DISPATCH(a->dtype, T,
                     add_padded_kernel<T><<<fl_cuda_grid(s, total, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)a->data, a->shape[1], a->shape[2], a->shape[3], (const T *)b->data, b->shape[1],
                         b->shape[2], b->shape[3], out->shape[1], out->shape[2], out->shape[3], total,
                         (T *)out->data));
    CHECK_LAUNCH();
}
