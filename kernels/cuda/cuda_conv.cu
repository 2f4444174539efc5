/*
 * cuda_conv.cu — the image ops on CUDA: 2-D convolution, GroupNorm (optionally fused with SiLU)
 * and nearest 2x upsampling over NCHW tensors (the autoencoder's layout).
 *
 * conv2d follows the CPU backend's plan (kernels/cpu/cpu_conv.c) so both bound their memory the
 * same way: per image, tiles of output rows; for each tile an im2col kernel writes the column
 * matrix [C*KH*KW, rows*Wo] into the context's scratch (at most fl_conv2d_scratch_elements
 * elements) and cuBLASLt multiplies w [O, C*KH*KW] by it straight into those rows of y (a matrix
 * view with row stride Ho*Wo), accumulating in fp32 onto the bias written there first. A 1x1
 * kernel with stride 1 and no padding multiplies by the image itself.
 *
 * group_norm makes three passes: (1) per chunk of a group's contiguous span, fp32 sums of x - K
 * and (x - K)^2 with K the group's first element (a shift that keeps the variance from cancelling
 * when the mean is large); (2) per group, the chunks' sums added in double into the mean and
 * 1 / sqrt(var + eps); (3) the elementwise normalization, affine and SiLU.
 */
#include "kernels/cuda/cuda_common.cuh"

/* ---- conv2d ----------------------------------------------------------------------------------- */

/* col[k, r * Wo + j] = xp[c, (i0 + r) * stride + u, j * stride + v] for k = (c, u, v) over one
 * image x [C, H, W]; xp is x zero-padded (pad_top rows above, pad_left columns to the left). */
template <typename T>
__global__ void im2col_kernel(const T *x, int64_t H, int64_t W, int KH, int KW, int stride, int pad_left,
                              int pad_top, int64_t i0, int64_t P, int64_t Wo, int64_t total, T *col) {
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t k = idx / P, p = idx - k * P;
        const int64_t r = p / Wo, j = p - r * Wo;
        const int64_t c = k / (KH * KW), u = (k / KW) % KH, v = k % KW;
        const int64_t hi = (i0 + r) * stride + u - pad_top, wi = j * stride + v - pad_left;
        col[idx] = hi >= 0 && hi < H && wi >= 0 && wi < W ? x[(c * H + hi) * W + wi] : fl_from_f32<T>(0.0f);
    }
}

/* y[o, p0 + p] = bias[o] for o < O, p < n; y has row stride ld. */
template <typename T>
__global__ void bias_rows_kernel(const T *bias, int64_t O, int64_t n, int64_t ld, int64_t p0, T *y) {
    const int64_t total = O * n;
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t o = idx / n, p = idx - o * n;
        y[o * ld + p0 + p] = bias[o];
    }
}

/* y rows [p0, p0 + n) of every output channel = bias (none: the GEMM overwrites). Returns beta. */
static float prefill_bias(fl_cuda_state *s, const fl_tensor *bias, fl_dtype dtype, int64_t O, int64_t ld, int64_t p0,
                          int64_t n, void *y) {
    if (!bias || O * n == 0) return 0.0f;
    FL_CUDA_DISPATCH(dtype, T,
                     bias_rows_kernel<T><<<fl_cuda_grid(s, O * n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)bias->data, O, n, ld, p0, (T *)y));
    CHECK_LAUNCH();
    return 1.0f;
}

void fl_cuda_conv2d(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y,
                    int stride, fl_conv2d_pad pad) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t O = w->shape[0], KH = w->shape[2], KW = w->shape[3], Ho = y->shape[2], Wo = y->shape[3];
    const int64_t K = C * KH * KW, HWo = Ho * Wo;
    if (B == 0 || O == 0 || HWo == 0) return;
    const fl_dtype dt = x->dtype;
    const size_t esize = fl_dtype_size(dt);
    const int64_t wshape[2] = {O, K}, yshape[2] = {O, HWo};
    fl_tensor wm = fl_tensor_make(w->data, dt, ctx->device, 2, wshape);
    const int64_t scratch = fl_conv2d_scratch_elements(C, KH, KW, Ho, Wo, stride, pad);
    void *col = scratch > 0 ? fl_cuda_scratch(s, (size_t)scratch * esize) : NULL;
    const int64_t tile_rows = scratch > 0 ? scratch / (K * Wo) : Ho;
    for (int64_t b = 0; b < B; b++) {
        const char *xb = (const char *)x->data + (size_t)(b * C * H * W) * esize;
        char *yb = (char *)y->data + (size_t)(b * O * HWo) * esize;
        fl_tensor ym = fl_tensor_make(yb, dt, ctx->device, 2, yshape);
        for (int64_t i0 = 0; i0 < Ho; i0 += tile_rows) {
            const int64_t rows = Ho - i0 < tile_rows ? Ho - i0 : tile_rows, P = rows * Wo;
            const int64_t cshape[2] = {K, P};
            fl_tensor cm;
            if (scratch == 0) { /* 1x1, stride 1, no padding: the image is the column matrix */
                cm = fl_tensor_make((void *)xb, dt, ctx->device, 2, cshape);
            } else {
                const int64_t total = K * P;
                FL_CUDA_DISPATCH(dt, T,
                                 im2col_kernel<T><<<fl_cuda_grid(s, total, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                    s->stream>>>((const T *)xb, H, W, (int)KH, (int)KW, stride,
                                                                 pad.left, pad.top, i0, P, Wo, total, (T *)col));
                CHECK_LAUNCH();
                cm = fl_tensor_make(col, dt, ctx->device, 2, cshape);
            }
            fl_tensor yt = fl_tensor_slice(&ym, 1, i0 * Wo, P);
            const float beta = prefill_bias(s, bias, dt, O, HWo, i0 * Wo, P, yb);
            fl_cuda_gemm(ctx, &wm, false, &cm, false, &yt, 1.0f, beta);
        }
    }
}

/* ---- group_norm ------------------------------------------------------------------------------- */

#define GN_THREADS 256
#define GN_PER_THREAD 16
#define GN_CHUNK (GN_THREADS * GN_PER_THREAD) /* elements of one group per stage-1 block */

/* Block (chunk, group g over [B * groups]): partial[(g * chunks + chunk) * 2 + {0, 1}] =
 * sums of d and d^2 with d = x - x[group start], over the chunk's elements. */
template <typename T>
__global__ void __launch_bounds__(GN_THREADS)
    group_norm_partial_kernel(const T *x, int64_t n, int64_t chunks, float *partial) {
    const int64_t g = blockIdx.y, chunk = blockIdx.x;
    const T *xg = x + g * n;
    const float shift = fl_to_f32(xg[0]);
    const int64_t begin = chunk * GN_CHUNK, end = begin + GN_CHUNK < n ? begin + GN_CHUNK : n;
    float sum = 0.0f, sq = 0.0f;
    for (int64_t i = begin + threadIdx.x; i < end; i += GN_THREADS) {
        const float d = fl_to_f32(xg[i]) - shift;
        sum += d;
        sq += d * d;
    }
    __shared__ float red[2][GN_THREADS / 32];
    sum = fl_warp_sum(sum);
    sq = fl_warp_sum(sq);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        red[0][warp] = sum;
        red[1][warp] = sq;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 0.0f, b = 0.0f;
        for (int i = 0; i < GN_THREADS / 32; i++) {
            a += red[0][i];
            b += red[1][i];
        }
        partial[(g * chunks + chunk) * 2] = a;
        partial[(g * chunks + chunk) * 2 + 1] = b;
    }
}

/* stats[g * 2] = mean, stats[g * 2 + 1] = rstd of each of the n_groups groups. */
template <typename T>
__global__ void group_norm_stats_kernel(const T *x, int64_t n, int64_t chunks, int64_t n_groups, float eps,
                                        const float *partial, float *stats) {
    for (int64_t g = fl_global_thread(); g < n_groups; g += fl_global_stride()) {
        double sum = 0.0, sq = 0.0;
        for (int64_t k = 0; k < chunks; k++) {
            sum += partial[(g * chunks + k) * 2];
            sq += partial[(g * chunks + k) * 2 + 1];
        }
        const double mean_d = sum / (double)n;
        double var = sq / (double)n - mean_d * mean_d;
        if (var < 0.0) var = 0.0;
        stats[g * 2] = (float)((double)fl_to_f32(x[g * n]) + mean_d);
        stats[g * 2 + 1] = (float)(1.0 / sqrt(var + (double)eps));
    }
}

template <typename T, bool SILU>
__global__ void group_norm_apply_kernel(const T *x, const T *weight, const T *bias, const float *stats, int64_t total,
                                        int64_t channels, int64_t spatial, int64_t per_group, T *y) {
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t plane = idx / spatial, c = plane % channels, g = idx / per_group;
        const float mean = stats[g * 2], rstd = stats[g * 2 + 1];
        float v = (fl_to_f32(x[idx]) - mean) * (rstd * fl_to_f32(weight[c])) + fl_to_f32(bias[c]);
        if (SILU) v = v / (1.0f + __expf(-v));
        y[idx] = fl_from_f32<T>(v);
    }
}

void fl_cuda_group_norm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias, fl_tensor *y,
                        int groups, float eps, bool silu) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t B = x->shape[0], C = x->shape[1], total = fl_tensor_numel(x);
    if (total == 0) return;
    const int64_t spatial = total / (B * C), n = (C / groups) * spatial, n_groups = B * groups;
    const int64_t chunks = (n + GN_CHUNK - 1) / GN_CHUNK;
    FL_CHECKF(n_groups <= 65535, "group_norm over %lld (sample, group) pairs exceeds the grid limit",
              (long long)n_groups);
    FL_CHECKF(chunks <= 0x7fffffff, "group_norm group of %lld elements exceeds the grid limit", (long long)n);
    float *partial = (float *)fl_cuda_scratch(s, (size_t)(n_groups * chunks * 2 + n_groups * 2) * sizeof(float));
    float *stats = partial + n_groups * chunks * 2;
    FL_CUDA_DISPATCH(x->dtype, T, {
        group_norm_partial_kernel<T><<<dim3((unsigned)chunks, (unsigned)n_groups), GN_THREADS, 0, s->stream>>>(
            (const T *)x->data, n, chunks, partial);
        CHECK_LAUNCH();
        group_norm_stats_kernel<T><<<fl_cuda_grid(s, n_groups, 128), 128, 0, s->stream>>>(
            (const T *)x->data, n, chunks, n_groups, eps, partial, stats);
        CHECK_LAUNCH();
        const unsigned grid = fl_cuda_grid(s, total, FL_CUDA_THREADS);
        if (silu)
            group_norm_apply_kernel<T, true><<<grid, FL_CUDA_THREADS, 0, s->stream>>>(
                (const T *)x->data, (const T *)weight->data, (const T *)bias->data, stats, total, C, spatial, n,
                (T *)y->data);
        else
            group_norm_apply_kernel<T, false><<<grid, FL_CUDA_THREADS, 0, s->stream>>>(
                (const T *)x->data, (const T *)weight->data, (const T *)bias->data, stats, total, C, spatial, n,
                (T *)y->data);
        CHECK_LAUNCH();
    });
}

/* ---- upsample_nearest2x ----------------------------------------------------------------------- */

template <typename T>
__global__ void upsample_nearest2x_kernel(const T *x, int64_t H, int64_t W, int64_t total, T *y) {
    const int64_t W2 = 2 * W, plane_out = 4 * H * W;
    for (int64_t idx = fl_global_thread(); idx < total; idx += fl_global_stride()) {
        const int64_t plane = idx / plane_out, rem = idx - plane * plane_out;
        const int64_t i = rem / W2, j = rem - i * W2;
        y[idx] = x[(plane * H + i / 2) * W + j / 2];
    }
}

void fl_cuda_upsample_nearest2x(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t total = fl_tensor_numel(y);
    if (total == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     upsample_nearest2x_kernel<T><<<fl_cuda_grid(s, total, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                    s->stream>>>((const T *)x->data, x->shape[2], x->shape[3], total,
                                                                 (T *)y->data));
    CHECK_LAUNCH();
}
