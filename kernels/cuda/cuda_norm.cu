/*
 * cuda_norm.cu — normalization and modulation on CUDA: LayerNorm (no affine), the fused
 * LayerNorm + adaLN modulation of Flux, RMSNorm with a learned scale, the gated residual, and
 * their backwards. Row kernels give each row one warp (8 rows per 256-thread block) and do all
 * statistics in fp32 with warp-shuffle reductions; per-sample and per-feature gradients
 * (dshift, dscale, dgate, dweight) are deterministic column sums (fl_cuda_colsum).
 */
#include "kernels/cuda/cuda_common.cuh"

#define ROWS_PER_BLOCK 8 /* one warp per row */

static unsigned row_blocks(int64_t rows) {
    const int64_t blocks = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    FL_CHECKF(blocks <= 0x7fffffff, "%lld rows exceed the grid limit", (long long)rows);
    return (unsigned)blocks;
}

/* The row of the calling warp, or -1 past the end (the whole warp leaves together). */
__device__ __forceinline__ int64_t warp_row(int64_t rows) {
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    return row < rows ? row : -1;
}

/* Mean and rstd = 1 / sqrt(biased var + eps) of one row, two passes, valid in every lane. */
template <typename T>
__device__ __forceinline__ void row_moments(const T *xr, int64_t d, float eps, int lane, float *mean, float *rstd) {
    float sum = 0.0f;
    for (int64_t j = lane; j < d; j += 32) sum += fl_to_f32(xr[j]);
    const float mu = fl_warp_sum(sum) / (float)d;
    float sq = 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
        const float t = fl_to_f32(xr[j]) - mu;
        sq += t * t;
    }
    const float var = fl_warp_sum(sq) / (float)d;
    *mean = mu;
    *rstd = 1.0f / sqrtf(var + eps);
}

/* ---- LayerNorm and the modulated LayerNorm ---------------------------------------------------- */

/* y = (x - mean) * rstd [* (1 + scale[b]) + shift[b]] with b = row / t_len when modulated. */
template <typename T, bool MODULATE>
__global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
    layernorm_kernel(const T *x, T *y, float *mean, float *rstd, int64_t rows, int64_t d, float eps, const T *shift,
                     int64_t shift_ld, const T *scale, int64_t scale_ld, int64_t t_len) {
    const int64_t row = warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % 32;
    const T *xr = x + row * d;
    T *yr = y + row * d;
    float mu, rs;
    row_moments(xr, d, eps, lane, &mu, &rs);
    if (MODULATE) {
        const int64_t b = row / t_len;
        const T *sh = shift + b * shift_ld, *sc = scale + b * scale_ld;
        for (int64_t j = lane; j < d; j += 32)
            yr[j] = fl_from_f32<T>((fl_to_f32(xr[j]) - mu) * rs * (1.0f + fl_to_f32(sc[j])) + fl_to_f32(sh[j]));
    } else {
        for (int64_t j = lane; j < d; j += 32) yr[j] = fl_from_f32<T>((fl_to_f32(xr[j]) - mu) * rs);
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy [* (1 + scale[b])]. */
template <typename T, bool MODULATE>
__global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
    layernorm_backward_kernel(const T *dy, const T *x, const float *mean, const float *rstd, T *dx, int64_t rows,
                              int64_t d, const T *scale, int64_t scale_ld, int64_t t_len) {
    const int64_t row = warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % 32;
    const T *dyr = dy + row * d, *xr = x + row * d;
    const T *sc = MODULATE ? scale + (row / t_len) * scale_ld : NULL;
    T *dxr = dx + row * d;
    const float mu = mean[row], rs = rstd[row];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
        float g = fl_to_f32(dyr[j]);
        if (MODULATE) g *= 1.0f + fl_to_f32(sc[j]);
        sum_g += g;
        sum_gx += g * ((fl_to_f32(xr[j]) - mu) * rs);
    }
    const float mean_g = fl_warp_sum(sum_g) / (float)d, mean_gx = fl_warp_sum(sum_gx) / (float)d;
    for (int64_t j = lane; j < d; j += 32) {
        float g = fl_to_f32(dyr[j]);
        if (MODULATE) g *= 1.0f + fl_to_f32(sc[j]);
        const float xhat = (fl_to_f32(xr[j]) - mu) * rs;
        dxr[j] = fl_from_f32<T>(rs * (g - mean_g - xhat * mean_gx));
    }
}

void fl_cuda_layernorm(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t rows = fl_tensor_numel(mean), d = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (rows == 0 || d == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     layernorm_kernel<T, false><<<row_blocks(rows), ROWS_PER_BLOCK * 32, 0, s->stream>>>(
                         (const T *)x->data, (T *)y->data, (float *)mean->data, (float *)rstd->data, rows, d, eps,
                         NULL, 0, NULL, 0, 1));
    CHECK_LAUNCH();
}

void fl_cuda_layernorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *mean,
                                const fl_tensor *rstd, fl_tensor *dx) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t rows = fl_tensor_numel(mean), d = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (rows == 0 || d == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     layernorm_backward_kernel<T, false><<<row_blocks(rows), ROWS_PER_BLOCK * 32, 0, s->stream>>>(
                         (const T *)dy->data, (const T *)x->data, (const float *)mean->data,
                         (const float *)rstd->data, (T *)dx->data, rows, d, NULL, 0, 1));
    CHECK_LAUNCH();
}

void fl_cuda_ln_modulate(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *shift, const fl_tensor *scale,
                         fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t t_len = x->shape[1], d = x->shape[2], rows = x->shape[0] * t_len;
    if (rows == 0 || d == 0) return;
    const fl_matrix msh = fl_cuda_matrix(shift), msc = fl_cuda_matrix(scale);
    FL_CUDA_DISPATCH(x->dtype, T,
                     layernorm_kernel<T, true><<<row_blocks(rows), ROWS_PER_BLOCK * 32, 0, s->stream>>>(
                         (const T *)x->data, (T *)y->data, (float *)mean->data, (float *)rstd->data, rows, d, eps,
                         (const T *)shift->data, msh.ld, (const T *)scale->data, msc.ld, t_len));
    CHECK_LAUNCH();
}

/* dshift[b, c] = sum_t dy[b, t, c]. */
template <typename T> struct btd_value {
    const T *p;
    int64_t t_len, d;
    __device__ float operator()(int64_t b, int64_t t, int64_t c) const {
        return fl_to_f32(p[(b * t_len + t) * d + c]);
    }
};

/* dscale[b, c] = sum_t dy[b, t, c] * xhat[b, t, c]. */
template <typename T> struct dy_xhat_value {
    const T *dy, *x;
    const float *mean, *rstd;
    int64_t t_len, d;
    __device__ float operator()(int64_t b, int64_t t, int64_t c) const {
        const int64_t row = b * t_len + t, i = row * d + c;
        return fl_to_f32(dy[i]) * ((fl_to_f32(x[i]) - mean[row]) * rstd[row]);
    }
};

void fl_cuda_ln_modulate_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *scale,
                                  const fl_tensor *mean, const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dshift,
                                  fl_tensor *dscale) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t batch = x->shape[0], t_len = x->shape[1], d = x->shape[2], rows = batch * t_len;
    if (batch == 0 || d == 0) return;
    const fl_matrix msc = fl_cuda_matrix(scale);
    FL_CUDA_DISPATCH(x->dtype, T, {
        if (rows > 0) {
            layernorm_backward_kernel<T, true><<<row_blocks(rows), ROWS_PER_BLOCK * 32, 0, s->stream>>>(
                (const T *)dy->data, (const T *)x->data, (const float *)mean->data, (const float *)rstd->data,
                (T *)dx->data, rows, d, (const T *)scale->data, msc.ld, t_len);
            CHECK_LAUNCH();
        }
        if (dshift) {
            const fl_matrix m = fl_cuda_matrix(dshift);
            const btd_value<T> f = {(const T *)dy->data, t_len, d};
            fl_cuda_colsum(s, f, batch, t_len, d, (T *)dshift->data, m.ld, false);
        }
        if (dscale) {
            const fl_matrix m = fl_cuda_matrix(dscale);
            const dy_xhat_value<T> f = {(const T *)dy->data, (const T *)x->data, (const float *)mean->data,
                                        (const float *)rstd->data, t_len, d};
            fl_cuda_colsum(s, f, batch, t_len, d, (T *)dscale->data, m.ld, false);
        }
    });
}

/* ---- RMSNorm ---------------------------------------------------------------------------------- */

template <typename T>
__global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
    rmsnorm_kernel(const T *x, const T *w, T *y, float *rstd, int64_t rows, int64_t d, float eps) {
    const int64_t row = warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % 32;
    const T *xr = x + row * d;
    T *yr = y + row * d;
    float sq = 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
        const float v = fl_to_f32(xr[j]);
        sq += v * v;
    }
    const float rs = 1.0f / sqrtf(fl_warp_sum(sq) / (float)d + eps);
    for (int64_t j = lane; j < d; j += 32) yr[j] = fl_from_f32<T>(fl_to_f32(xr[j]) * rs * fl_to_f32(w[j]));
    if (lane == 0) rstd[row] = rs;
}

/* dx = rstd * (g - x * rstd^2 * mean(g * x)), g = dy * w. */
template <typename T>
__global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
    rmsnorm_backward_kernel(const T *dy, const T *x, const T *w, const float *rstd, T *dx, int64_t rows, int64_t d) {
    const int64_t row = warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % 32;
    const T *dyr = dy + row * d, *xr = x + row * d;
    T *dxr = dx + row * d;
    const float rs = rstd[row];
    float sum = 0.0f;
    for (int64_t j = lane; j < d; j += 32) sum += fl_to_f32(dyr[j]) * fl_to_f32(w[j]) * fl_to_f32(xr[j]);
    const float c = fl_warp_sum(sum) / (float)d * rs * rs;
    for (int64_t j = lane; j < d; j += 32) {
        const float g = fl_to_f32(dyr[j]) * fl_to_f32(w[j]);
        dxr[j] = fl_from_f32<T>(rs * (g - fl_to_f32(xr[j]) * c));
    }
}

/* dweight[c] += sum_r dy[r, c] * x[r, c] * rstd[r]. */
template <typename T> struct rms_dweight_value {
    const T *dy, *x;
    const float *rstd;
    int64_t d;
    __device__ float operator()(int64_t, int64_t r, int64_t c) const {
        const int64_t i = r * d + c;
        return fl_to_f32(dy[i]) * fl_to_f32(x[i]) * rstd[r];
    }
};

void fl_cuda_rmsnorm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, fl_tensor *y, fl_tensor *rstd,
                     float eps) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t rows = fl_tensor_numel(rstd), d = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (rows == 0 || d == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     rmsnorm_kernel<T><<<row_blocks(rows), ROWS_PER_BLOCK * 32, 0, s->stream>>>(
                         (const T *)x->data, (const T *)weight->data, (T *)y->data, (float *)rstd->data, rows, d,
                         eps));
    CHECK_LAUNCH();
}

void fl_cuda_rmsnorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *weight,
                              const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dweight) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t rows = fl_tensor_numel(rstd), d = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (rows == 0 || d == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T, {
        rmsnorm_backward_kernel<T><<<row_blocks(rows), ROWS_PER_BLOCK * 32, 0, s->stream>>>(
            (const T *)dy->data, (const T *)x->data, (const T *)weight->data, (const float *)rstd->data,
            (T *)dx->data, rows, d);
        CHECK_LAUNCH();
        if (dweight) {
            const rms_dweight_value<T> f = {(const T *)dy->data, (const T *)x->data, (const float *)rstd->data, d};
            fl_cuda_colsum(s, f, 1, rows, d, (T *)dweight->data, d, true);
        }
    });
}

/* ---- gated residual --------------------------------------------------------------------------- */

/* out = x + gate[b] * y (out may alias x); with BACKWARD: out = gate[b] * y (y = dout). */
template <typename T, bool BACKWARD>
__global__ void gated_residual_kernel(const T *x, const T *gate, int64_t gate_ld, const T *y, T *out, int64_t n,
                                      int64_t t_len, int64_t d) {
    const int64_t per_sample = t_len * d;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const int64_t b = i / per_sample, c = i % d;
        const float g = fl_to_f32(gate[b * gate_ld + c]) * fl_to_f32(y[i]);
        out[i] = fl_from_f32<T>(BACKWARD ? g : fl_to_f32(x[i]) + g);
    }
}

void fl_cuda_gated_residual(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *gate, const fl_tensor *y,
                            fl_tensor *out) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t n = fl_tensor_numel(x), t_len = x->shape[1], d = x->shape[2];
    if (n == 0) return;
    const fl_matrix mg = fl_cuda_matrix(gate);
    FL_CUDA_DISPATCH(x->dtype, T,
                     gated_residual_kernel<T, false><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                       s->stream>>>((const T *)x->data, (const T *)gate->data,
                                                                    mg.ld, (const T *)y->data, (T *)out->data, n,
                                                                    t_len, d));
    CHECK_LAUNCH();
}

/* dgate[b, c] = sum_t dout[b, t, c] * y[b, t, c]. */
template <typename T> struct dout_y_value {
    const T *dout, *y;
    int64_t t_len, d;
    __device__ float operator()(int64_t b, int64_t t, int64_t c) const {
        const int64_t i = (b * t_len + t) * d + c;
        return fl_to_f32(dout[i]) * fl_to_f32(y[i]);
    }
};

void fl_cuda_gated_residual_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *gate, const fl_tensor *y,
                                     fl_tensor *dy, fl_tensor *dgate) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t n = fl_tensor_numel(dout), batch = dout->shape[0], t_len = dout->shape[1], d = dout->shape[2];
    if (batch == 0 || d == 0) return;
    const fl_matrix mg = fl_cuda_matrix(gate);
    FL_CUDA_DISPATCH(dout->dtype, T, {
        if (n > 0) {
            gated_residual_kernel<T, true><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                NULL, (const T *)gate->data, mg.ld, (const T *)dout->data, (T *)dy->data, n, t_len, d);
            CHECK_LAUNCH();
        }
        if (dgate) {
            const fl_matrix m = fl_cuda_matrix(dgate);
            const dout_y_value<T> f = {(const T *)dout->data, (const T *)y->data, t_len, d};
            fl_cuda_colsum(s, f, batch, t_len, d, (T *)dgate->data, m.ld, false);
        }
    });
}
