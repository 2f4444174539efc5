/*
 * cuda_common.cuh — what the CUDA backend's files share: the per-context state (device, stream,
 * cuBLASLt handle and workspace, scratch memory), the error-check macros, conversion between the
 * storage dtypes and fp32, dtype dispatch, launch sizing, warp reductions, a deterministic
 * column-sum helper used by every bias/weight/modulation gradient, and the fl_cuda_* entry points
 * each .cu file of kernels/cuda provides to the backend table in cuda_backend.cu.
 *
 * Internal to kernels/cuda. Only declarations, macros, inline functions and templates live here.
 */
#ifndef FL_KERNELS_CUDA_COMMON_CUH
#define FL_KERNELS_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "kernels/backend.h"
}

/* ---- error checks ----------------------------------------------------------------------------- */

/* A failing CUDA or cuBLAS call here is a broken invariant: abort with file:line. */
#define CHECK_CUDA(expr)                                                                                   \
    do {                                                                                                   \
        cudaError_t fl_cuda_status_ = (expr);                                                              \
        if (fl_cuda_status_ != cudaSuccess)                                                                \
            fl_abort_at(__FILE__, __LINE__, "CUDA error %s (%s) in %s", cudaGetErrorName(fl_cuda_status_), \
                        cudaGetErrorString(fl_cuda_status_), #expr);                                       \
    } while (0)

#define CHECK_CUBLAS(expr)                                                                                 \
    do {                                                                                                   \
        cublasStatus_t fl_cublas_status_ = (expr);                                                         \
        if (fl_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                                    \
            fl_abort_at(__FILE__, __LINE__, "cuBLAS error %s (%d) in %s",                                  \
                        cublasLtGetStatusName(fl_cublas_status_), (int)fl_cublas_status_, #expr);          \
    } while (0)

/* After every kernel launch: a bad launch configuration shows up here. */
#define CHECK_LAUNCH() CHECK_CUDA(cudaGetLastError())

/* ---- per-context state ------------------------------------------------------------------------ */

#define FL_CUDA_THREADS 256                          /* default block size of elementwise kernels */
#define FL_CUDA_MAX_PARTIALS 1024                    /* blocks (partial sums) of a full reduction */
#define FL_CUDA_WORKSPACE_BYTES ((size_t)32 << 20)   /* cuBLASLt workspace */

typedef struct fl_cuda_gemm_cache fl_cuda_gemm_cache; /* defined in cuda_gemm.cu */

typedef struct fl_cuda_state {
    int device;           /* CUDA ordinal */
    int sm_count;         /* multiprocessors, for sizing grid-stride launches */
    size_t smem_optin;    /* most dynamic shared memory a block may opt in to */
    int cc_major;         /* compute capability (major) */
    bool attention_simt;  /* FLASHLORA_CUDA_ATTENTION=simt: the CUDA-core attention kernels only */
    cudaStream_t stream;  /* every op of the context runs here, in order */
    cublasLtHandle_t lt;
    void *workspace;      /* cuBLASLt workspace, FL_CUDA_WORKSPACE_BYTES */
    void *scratch;        /* temporary device memory, see fl_cuda_scratch */
    size_t scratch_bytes;
    float *host_partials; /* pinned host buffer of FL_CUDA_MAX_PARTIALS floats */
    fl_cuda_gemm_cache *gemm_cache; /* cuBLASLt plans per product shape (cuda_gemm.cu) */
    uint64_t gemm_fallbacks;        /* products the tiled fallback kernel computed */
} fl_cuda_state;

/* Makes the context's device current on the calling thread and returns its state. */
fl_cuda_state *fl_cuda_enter(fl_ctx *ctx);

/* Device scratch of at least `bytes`, ordered on the context's stream. The pointer stays valid
 * only until the next fl_cuda_scratch call (growing it synchronizes the stream and reallocates),
 * so an op requests all the scratch it needs at once, and helpers that take scratch themselves
 * (fl_cuda_colsum) must not run while a caller still uses an earlier scratch pointer. */
void *fl_cuda_scratch(fl_cuda_state *s, size_t bytes);

/* Blocks for a grid-stride loop over n items with `threads` threads per block (n > 0). */
unsigned fl_cuda_grid(const fl_cuda_state *s, int64_t n, int threads);

/* Matrix view of an operand ops.c has already checked to have one. */
fl_matrix fl_cuda_matrix(const fl_tensor *t);

/* ---- storage dtypes --------------------------------------------------------------------------- */

__device__ __forceinline__ float fl_to_f32(float x) { return x; }
__device__ __forceinline__ float fl_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float fl_to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T fl_from_f32(float x);
template <> __device__ __forceinline__ float fl_from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 fl_from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half fl_from_f32<__half>(float x) { return __float2half_rn(x); }

/* Runs the statements in ... with T bound to the C++ type of a storage dtype (F32 or BF16, the
 * dtypes ops.c admits for activations and weights on CUDA). */
#define FL_CUDA_DISPATCH(dtype, T, ...)                                                                   \
    do {                                                                                                  \
        switch (dtype) {                                                                                  \
        case FL_F32: {                                                                                    \
            typedef float T;                                                                              \
            __VA_ARGS__;                                                                                  \
        } break;                                                                                          \
        case FL_BF16: {                                                                                   \
            typedef __nv_bfloat16 T;                                                                      \
            __VA_ARGS__;                                                                                  \
        } break;                                                                                          \
        default: fl_abort_at(__FILE__, __LINE__, "CUDA backend: unsupported storage dtype %s",           \
                             fl_dtype_name(dtype));                                                       \
        }                                                                                                 \
    } while (0)

/* ---- reductions ------------------------------------------------------------------------------- */

#define FL_FULL_MASK 0xffffffffu

__device__ __forceinline__ float fl_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FL_FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float fl_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FL_FULL_MASK, v, offset));
    return v;
}

/* Grid-stride loop index helpers. */
__device__ __forceinline__ int64_t fl_global_thread(void) {
    return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t fl_global_stride(void) { return (int64_t)gridDim.x * blockDim.x; }

/* ---- deterministic column sums ---------------------------------------------------------------- */

/*
 * dst[g, c] = (accumulate ? dst[g, c] : 0) + sum over r < rows of f(g, r, c), for g < groups and
 * c < cols, with dst a [groups, cols] matrix of storage type T and row stride ld. f is a functor
 * with `__device__ float operator()(int64_t g, int64_t r, int64_t c) const`.
 *
 * Stage 1 splits the rows of each group into chunks: block (32 columns x 8 row lanes) per
 * (column block, chunk, group) writes one fp32 partial per column. Stage 2 adds the partials of
 * each column in chunk order. No atomics, so results are bitwise reproducible.
 */
#define FL_COLSUM_COLS 32
#define FL_COLSUM_ROWS 8

template <class F>
__global__ void __launch_bounds__(FL_COLSUM_COLS *FL_COLSUM_ROWS)
    fl_colsum_partial_kernel(F f, int64_t rows, int64_t cols, int64_t rows_per_chunk, float *partial) {
    __shared__ float red[FL_COLSUM_ROWS][FL_COLSUM_COLS + 1];
    const int64_t c = (int64_t)blockIdx.x * FL_COLSUM_COLS + threadIdx.x;
    const int64_t chunk = blockIdx.y, g = blockIdx.z;
    const int64_t r0 = chunk * rows_per_chunk;
    const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float acc = 0.0f;
    if (c < cols)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += FL_COLSUM_ROWS) acc += f(g, r, c);
    red[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float sum = 0.0f;
        for (int i = 0; i < FL_COLSUM_ROWS; i++) sum += red[i][threadIdx.x];
        partial[(g * gridDim.y + chunk) * cols + c] = sum;
    }
}

template <typename T>
__global__ void fl_colsum_finish_kernel(const float *partial, int64_t groups, int64_t chunks, int64_t cols, T *dst,
                                        int64_t ld, bool accumulate) {
    const int64_t n = groups * cols;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const int64_t g = i / cols, c = i - g * cols;
        const float *p = partial + g * chunks * cols + c;
        float sum = 0.0f;
        for (int64_t k = 0; k < chunks; k++) sum += p[k * cols];
        T *d = dst + g * ld + c;
        *d = fl_from_f32<T>(accumulate ? fl_to_f32(*d) + sum : sum);
    }
}

template <typename T, class F>
void fl_cuda_colsum(fl_cuda_state *s, F f, int64_t groups, int64_t rows, int64_t cols, T *dst, int64_t ld,
                    bool accumulate) {
    if (groups == 0 || cols == 0) return;
    FL_CHECKF(groups <= 65535, "column sum over %lld groups exceeds the grid limit", (long long)groups);
    const int64_t col_blocks = (cols + FL_COLSUM_COLS - 1) / FL_COLSUM_COLS;
    /* Enough blocks to fill the GPU a few times over, at least 32 rows per chunk, at most 1024 chunks. */
    const int64_t want_blocks = (int64_t)s->sm_count * 8;
    int64_t chunks = want_blocks / (col_blocks * groups);
    const int64_t max_chunks = (rows + 31) / 32;
    if (chunks > max_chunks) chunks = max_chunks;
    if (chunks > 1024) chunks = 1024;
    if (chunks < 1) chunks = 1;
    int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
    if (rows_per_chunk < 1) rows_per_chunk = 1;
    chunks = rows > 0 ? (rows + rows_per_chunk - 1) / rows_per_chunk : 1;
    float *partial = (float *)fl_cuda_scratch(s, (size_t)(groups * chunks * cols) * sizeof(float));
    dim3 grid((unsigned)col_blocks, (unsigned)chunks, (unsigned)groups);
    dim3 block(FL_COLSUM_COLS, FL_COLSUM_ROWS);
    fl_colsum_partial_kernel<F><<<grid, block, 0, s->stream>>>(f, rows, cols, rows_per_chunk, partial);
    CHECK_LAUNCH();
    fl_colsum_finish_kernel<T><<<fl_cuda_grid(s, groups * cols, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
        partial, groups, chunks, cols, dst, ld, accumulate);
    CHECK_LAUNCH();
}

/* ---- entry points (one backend table slot each) ---------------------------------------------- */

/* cuda_gemm.cu */
void fl_cuda_gemm_cache_destroy(fl_cuda_state *s);
/* Lookups and misses of the plan cache (a miss builds a plan) and the plans held now. */
void fl_cuda_gemm_cache_stats(const fl_cuda_state *s, uint64_t *lookups, uint64_t *misses, int *plans);
void fl_cuda_gemm(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b, fl_tensor *c,
                  float alpha, float beta);
void fl_cuda_linear(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y);
void fl_cuda_bias_grad(fl_ctx *ctx, const fl_tensor *dy, fl_tensor *db);

/* cuda_elementwise.cu */
void fl_cuda_copy(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst);
void fl_cuda_fill(fl_ctx *ctx, fl_tensor *t, float value);
void fl_cuda_add(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, float alpha, fl_tensor *out);
void fl_cuda_scale(fl_ctx *ctx, fl_tensor *x, float alpha);
void fl_cuda_gelu_tanh(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cuda_gelu_tanh_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);
void fl_cuda_silu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cuda_silu_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, fl_tensor *dx);

/* cuda_norm.cu */
void fl_cuda_layernorm(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps);
void fl_cuda_layernorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *mean,
                                const fl_tensor *rstd, fl_tensor *dx);
void fl_cuda_ln_modulate(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *shift, const fl_tensor *scale,
                         fl_tensor *y, fl_tensor *mean, fl_tensor *rstd, float eps);
void fl_cuda_ln_modulate_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *scale,
                                  const fl_tensor *mean, const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dshift,
                                  fl_tensor *dscale);
void fl_cuda_rmsnorm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, fl_tensor *y, fl_tensor *rstd,
                     float eps);
void fl_cuda_rmsnorm_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *x, const fl_tensor *weight,
                              const fl_tensor *rstd, fl_tensor *dx, fl_tensor *dweight);
void fl_cuda_gated_residual(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *gate, const fl_tensor *y,
                            fl_tensor *out);
void fl_cuda_gated_residual_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *gate, const fl_tensor *y,
                                     fl_tensor *dy, fl_tensor *dgate);

/* cuda_attention.cu */
void fl_cuda_rope(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y);
void fl_cuda_rope_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *pe, fl_tensor *dx);
void fl_cuda_attention(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                       fl_tensor *lse, float scale);
void fl_cuda_attention_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                                const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                                fl_tensor *dk, fl_tensor *dv, float scale);

/* cuda_train.cu */
void fl_cuda_timestep_embedding(fl_ctx *ctx, const fl_tensor *t, fl_tensor *out, float time_factor,
                                float max_period);
void fl_cuda_flow_mix(fl_ctx *ctx, const fl_tensor *x0, const fl_tensor *noise, const fl_tensor *t, fl_tensor *xt,
                      fl_tensor *target);
double fl_cuda_mse_loss(fl_ctx *ctx, const fl_tensor *pred, const fl_tensor *target, fl_tensor *dpred);
double fl_cuda_sum_squares(fl_ctx *ctx, const fl_tensor *x);
void fl_cuda_adamw(fl_ctx *ctx, fl_tensor *param, const fl_tensor *grad, fl_tensor *m, fl_tensor *v,
                   const fl_adamw_params *p);

/* cuda_flash.cu: tensor-core attention (BF16, head dims 64 and 128, sm_80+). operands: q, k and
 * every other operand of the call, whose base addresses must be 16-byte aligned. delta: rowsum of
 * dout * out per query row (f32). */
bool fl_cuda_flash_usable(const fl_cuda_state *s, const fl_tensor *const *operands, int n);
void fl_cuda_flash_attention(fl_cuda_state *s, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                             fl_tensor *out, fl_tensor *lse, float scale);
void fl_cuda_flash_attention_backward(fl_cuda_state *s, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                                      const fl_tensor *v, const fl_tensor *lse, const float *delta, fl_tensor *dq,
                                      fl_tensor *dk, fl_tensor *dv, float scale);

/* cuda_text.cu (text encoders, forward only) */
void fl_cuda_embedding(fl_ctx *ctx, const fl_tensor *table, const int32_t *ids, int64_t n, fl_tensor *out);
void fl_cuda_layernorm_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                              fl_tensor *y, float eps);
void fl_cuda_attention_masked(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                              const fl_tensor *bias, bool causal, fl_tensor *out, float scale);
void fl_cuda_quick_gelu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cuda_gelu_erf(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cuda_mul(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);

/* cuda_conv.cu: images (the autoencoder) */
void fl_cuda_conv2d(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y,
                    int stride, fl_conv2d_pad pad);
void fl_cuda_group_norm(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias, fl_tensor *y,
                        int groups, float eps, bool silu);
void fl_cuda_upsample_nearest2x(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);

/* cuda_face.cu (dlib's face networks) */
void fl_cuda_pool2d(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, int kh, int kw, int stride_y, int stride_x,
                    int pad_y, int pad_x, bool max);
void fl_cuda_channel_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *scale, const fl_tensor *shift,
                            fl_tensor *y, bool relu);
void fl_cuda_relu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y);
void fl_cuda_add_padded(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out);

#endif
