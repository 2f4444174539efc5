/*
 * cuda_attention.cu — rotary embedding and softmax attention on CUDA.
 *
 * rope: one thread per (2i, 2i+1) pair of the head dim.
 *
 * attention forward: one block of ATT_WARPS warps per (batch*head, tile of query rows), each warp
 * owning `rpw` query rows. Keys and values stream through shared memory in tiles of 32 rows
 * (fp32, the key tile padded to an odd row stride so lane j reading key j is free of bank
 * conflicts). Lane j scores key j against each of its warp's query rows, the row maximum and sum
 * are updated online (never materializing the score matrix), and the output accumulators stay in
 * registers, lane l holding head-dim elements l, l + 32, ... . Writes out and
 * lse = max + log(sum) per row.
 *
 * attention backward, without atomics: (1) D_i = rowsum(dout_i * out_i) into fp32 scratch;
 * (2) per query tile, stream key/value tiles, recompute P = exp(scale q k^T - lse) and
 * dS = P (dout v^T - D), accumulate dq = scale dS k; (3) per key tile, stream query/dout tiles
 * (lane i = query i) and accumulate dv = P^T dout and dk = scale dS^T q.
 *
 * BF16 operands with head dims 64 and 128 run on the tensor-core kernels of cuda_flash.cu
 * instead, where they apply (fl_cuda_flash_usable); these kernels cover every other case.
 *
 * The kernels are templated on the accumulator count per lane (head dims up to 32 x that: 32,
 * 64, 128, 256, 512) and use fp32 CUDA-core math. For head dims above 128 a second variant reads
 * the streamed tiles from global memory instead of shared memory; it runs where the GPU's
 * shared-memory opt-in limit cannot hold the tiles (head dims above 256 on ~100 KiB GPUs), so a
 * valid input never aborts for want of shared memory.
 */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

extern "C" {
#include "core/log.h"
}

/* ---- rope ------------------------------------------------------------------------------------- */

/* Pairs p over [B, H, L, D/2]; sign = +1 rotates by the angle, -1 by its opposite (backward).
 * y may alias x: each thread reads its pair before writing it. */
template <typename T>
__global__ void rope_kernel(const T *x, const float *pe, T *y, int64_t pairs, int64_t heads, int64_t len,
                            int64_t half, float sign) {
    for (int64_t p = fl_global_thread(); p < pairs; p += fl_global_stride()) {
        const int64_t i = p % half, row = p / half; /* row over [B, H, L] */
        const int64_t l = row % len, b = row / (len * heads);
        const float *cs = pe + ((b * len + l) * half + i) * 2;
        const float c = cs[0], s = sign * cs[1];
        const float x0 = fl_to_f32(x[2 * p]), x1 = fl_to_f32(x[2 * p + 1]);
        y[2 * p] = fl_from_f32<T>(c * x0 - s * x1);
        y[2 * p + 1] = fl_from_f32<T>(s * x0 + c * x1);
    }
}

static void launch_rope(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y, float sign) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t heads = x->shape[1], len = x->shape[2], half = x->shape[3] / 2;
    const int64_t pairs = fl_tensor_numel(x) / 2;
    if (pairs == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     rope_kernel<T><<<fl_cuda_grid(s, pairs, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)x->data, (const float *)pe->data, (T *)y->data, pairs, heads, len, half, sign));
    CHECK_LAUNCH();
}

void fl_cuda_rope(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *pe, fl_tensor *y) {
    launch_rope(ctx, x, pe, y, 1.0f);
}

void fl_cuda_rope_backward(fl_ctx *ctx, const fl_tensor *dy, const fl_tensor *pe, fl_tensor *dx) {
    launch_rope(ctx, dy, pe, dx, -1.0f);
}

/* ---- attention: shared pieces ----------------------------------------------------------------- */

#define ATT_BK 32    /* key (forward, dq) or query (dk/dv) rows per shared-memory tile: one per lane */
#define ATT_WARPS 4  /* warps per block */
#define ATT_MAX_DPL 16
#define ATT_MAX_D (32 * ATT_MAX_DPL)

/* An odd row stride >= d: lanes reading the same column of 32 different rows hit 32 banks. */
__host__ __device__ __forceinline__ int padded_stride(int d) { return d % 2 ? d : d + 1; }

/* Loads rows [row0, row0 + nrows) of a [len, d] matrix into smem[nrows][stride] as fp32, zeros
 * past len; optionally multiplied by mul. */
template <typename T>
__device__ __forceinline__ void load_tile(float *smem, int stride, const T *src, int64_t row0, int nrows, int64_t len,
                                          int d, float mul) {
    for (int idx = threadIdx.x; idx < nrows * d; idx += blockDim.x) {
        const int r = idx / d, c = idx - r * d;
        const int64_t row = row0 + r;
        smem[r * stride + c] = row < len ? mul * fl_to_f32(src[row * d + c]) : 0.0f;
    }
}

/* A tile of 32 streamed rows (keys and values, or queries and output gradients): with SMEM, an
 * fp32 copy in shared memory with row stride `stride`; without, the rows read straight from
 * global memory (multiplied by mul, zero past len) — the variant for GPUs whose shared memory
 * cannot hold the tiles of wide heads. */
template <typename T, bool SMEM> struct tile_ref {
    const float *smem;
    int stride;
    const T *g; /* the [len, d] matrix of this (batch, head) */
    int64_t row0, len;
    int d;
    float mul;
    __device__ __forceinline__ float at(int r, int c) const {
        if (SMEM) return smem[r * stride + c];
        const int64_t row = row0 + r;
        return row < len ? mul * fl_to_f32(g[row * d + c]) : 0.0f;
    }
};

template <typename T, bool SMEM>
__device__ __forceinline__ tile_ref<T, SMEM> make_tile(const float *smem, int stride, const T *g, int64_t row0,
                                                       int64_t len, int d, float mul) {
    tile_ref<T, SMEM> t = {smem, stride, g, row0, len, d, mul};
    return t;
}

/* Dot product of a broadcast vector (every lane reads the same address) with row `lane` of a
 * tile. */
template <typename T, bool SMEM>
__device__ __forceinline__ float dot_row(const float *vec, const tile_ref<T, SMEM> &tile, int lane, int d) {
    float acc = 0.0f;
#pragma unroll 4
    for (int c = 0; c < d; c++) acc += vec[c] * tile.at(lane, c);
    return acc;
}

/* Opts a kernel in to more than 48 KiB of dynamic shared memory when it needs it. Callers pick
 * the variant that fits (the streaming tiles in shared memory or not), so failing here is a bug. */
static void prepare_smem(const fl_cuda_state *s, const void *kernel, size_t smem, int d) {
    FL_CHECKF(smem <= s->smem_optin, "attention head dim %d needs %zu bytes of shared memory, the GPU allows %zu", d,
              smem, s->smem_optin);
    if (smem > 48 * 1024)
        CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
}

/* Wide heads (DPL >= 8, head dims 129..512) have a variant that streams keys and values (or
 * queries and output gradients) from global memory, taken when the shared-memory variant does
 * not fit the GPU's opt-in limit (about 99 KiB on sm_86/89/120 against 227 KiB on sm_90):
 * slower, never an abort on a valid input. Narrower heads fit everywhere (<= 50 KiB). */
template <int DPL> struct has_global_variant {
    static constexpr bool value = DPL >= 8;
};

static bool logged_global_variant = false;
static void note_global_variant(const char *which, int d, size_t smem, size_t optin) {
    if (logged_global_variant) return;
    logged_global_variant = true;
    fl_log_info("cuda: attention %s at head dim %d would need %zu bytes of shared memory (the GPU allows %zu): "
                "streaming keys and values from global memory instead (logged once)",
                which, d, smem, optin);
}

static unsigned attention_grid(int64_t bh, int64_t len, int rows_per_block) {
    const int64_t blocks = bh * ((len + rows_per_block - 1) / rows_per_block);
    FL_CHECKF(blocks <= 0x7fffffff, "attention grid of %lld blocks exceeds the limit", (long long)blocks);
    return (unsigned)blocks;
}

/* ---- attention forward ------------------------------------------------------------------------ */

/* Shared memory: qs [rows][d] (pre-scaled q), and with SMEM ks [32][padded], vs [32][d]. */
template <typename T, int DPL, int RPW, bool SMEM>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_forward_kernel(const T *q, const T *k, const T *v, T *out, float *lse, int64_t lq, int64_t lk, int d,
                             float scale) {
    extern __shared__ float smem[];
    constexpr int ROWS = ATT_WARPS * RPW;
    const int ks_stride = padded_stride(d);
    float *qs = smem;
    float *ks = qs + ROWS * d;
    float *vs = ks + ATT_BK * ks_stride;

    const int64_t q_tiles = (lq + ROWS - 1) / ROWS;
    const int64_t bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const T *qb = q + bh * lq * d, *kb = k + bh * lk * d, *vb = v + bh * lk * d;

    load_tile(qs, d, qb, q0, ROWS, lq, d, scale);

    float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
    }

    for (int64_t k0 = 0; k0 < lk; k0 += ATT_BK) {
        __syncthreads(); /* the previous tile is consumed (and qs is loaded) */
        if (SMEM) {
            load_tile(ks, ks_stride, kb, k0, ATT_BK, lk, d, 1.0f);
            load_tile(vs, d, vb, k0, ATT_BK, lk, d, 1.0f);
        }
        __syncthreads();
        const tile_ref<T, SMEM> kt = make_tile<T, SMEM>(ks, ks_stride, kb, k0, lk, d, 1.0f);
        const tile_ref<T, SMEM> vt = make_tile<T, SMEM>(vs, d, vb, k0, lk, d, 1.0f);
        const bool valid = k0 + lane < lk; /* lane 0 is always valid, so tile maxima are finite */
        float p[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            const float sc = valid ? dot_row(qs + (warp * RPW + r) * d, kt, lane, d) : -INFINITY;
            const float m_new = fmaxf(m[r], fl_warp_max(sc));
            const float corr = expf(m[r] - m_new); /* 0 on the first tile */
            p[r] = valid ? expf(sc - m_new) : 0.0f;
            l[r] = l[r] * corr + fl_warp_sum(p[r]);
            m[r] = m_new;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
        }
        for (int j = 0; j < ATT_BK; j++) {
            float pj[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) pj[r] = __shfl_sync(FL_FULL_MASK, p[r], j);
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int c = lane + 32 * i;
                if (c < d) {
                    const float vv = vt.at(j, c);
#pragma unroll
                    for (int r = 0; r < RPW; r++) acc[r][i] += pj[r] * vv;
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const int64_t row = q0 + warp * RPW + r;
        if (row >= lq) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        T *o = out + (bh * lq + row) * d;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            const int c = lane + 32 * i;
            if (c < d) o[c] = fl_from_f32<T>(acc[r][i] * inv);
        }
        if (lane == 0) lse[bh * lq + row] = m[r] + logf(l[r]);
    }
}

template <typename T, int DPL, int RPW, bool SMEM>
static void run_forward(fl_cuda_state *s, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                        fl_tensor *lse, float scale, size_t smem) {
    const int64_t bh = q->shape[0] * q->shape[1], lq = q->shape[2], lk = k->shape[2];
    const int d = (int)q->shape[3];
    constexpr int ROWS = ATT_WARPS * RPW;
    prepare_smem(s, (const void *)attention_forward_kernel<T, DPL, RPW, SMEM>, smem, d);
    attention_forward_kernel<T, DPL, RPW, SMEM><<<attention_grid(bh, lq, ROWS), ATT_WARPS * 32, smem, s->stream>>>(
        (const T *)q->data, (const T *)k->data, (const T *)v->data, (T *)out->data, (float *)lse->data, lq, lk, d,
        scale);
    CHECK_LAUNCH();
}

template <typename T, int DPL, int RPW>
static void launch_forward(fl_cuda_state *s, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                           fl_tensor *out, fl_tensor *lse, float scale) {
    const int d = (int)q->shape[3];
    constexpr int ROWS = ATT_WARPS * RPW;
    const size_t smem = sizeof(float) * ((size_t)ROWS * d + (size_t)ATT_BK * padded_stride(d) + (size_t)ATT_BK * d);
    if (has_global_variant<DPL>::value && smem > s->smem_optin) {
        note_global_variant("forward", d, smem, s->smem_optin);
        run_forward<T, DPL, RPW, !has_global_variant<DPL>::value>(s, q, k, v, out, lse, scale,
                                                                   sizeof(float) * (size_t)ROWS * d);
        return;
    }
    run_forward<T, DPL, RPW, true>(s, q, k, v, out, lse, scale, smem);
}

/* ---- attention backward ----------------------------------------------------------------------- */

/* delta[row] = sum_c dout[row, c] * out[row, c], one warp per row. */
template <typename T>
__global__ void __launch_bounds__(256) attention_delta_kernel(const T *dout, const T *out, float *delta, int64_t rows,
                                                              int d) {
    const int64_t row = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
    if (row >= rows) return;
    const int lane = threadIdx.x % 32;
    float acc = 0.0f;
    for (int c = lane; c < d; c += 32) acc += fl_to_f32(dout[row * d + c]) * fl_to_f32(out[row * d + c]);
    acc = fl_warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

/* dq for a tile of query rows. Shared memory: qs [rows][d] (pre-scaled q), dos [rows][d], and
 * with SMEM ks [32][padded], vs [32][padded]. */
template <typename T, int DPL, int RPW, bool SMEM>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_dq_kernel(const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta,
                        T *dq, int64_t lq, int64_t lk, int d, float scale) {
    extern __shared__ float smem[];
    constexpr int ROWS = ATT_WARPS * RPW;
    const int stride = padded_stride(d);
    float *qs = smem;
    float *dos = qs + ROWS * d;
    float *ks = dos + ROWS * d;
    float *vs = ks + ATT_BK * stride;

    const int64_t q_tiles = (lq + ROWS - 1) / ROWS;
    const int64_t bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const T *kb = k + bh * lk * d, *vb = v + bh * lk * d;

    load_tile(qs, d, q + bh * lq * d, q0, ROWS, lq, d, scale);
    load_tile(dos, d, dout + bh * lq * d, q0, ROWS, lq, d, 1.0f);

    float row_lse[RPW], row_delta[RPW], acc[RPW][DPL];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const int64_t row = q0 + warp * RPW + r;
        /* Rows past the end have q = dout = 0: with lse = delta = 0 their dS is 0. */
        row_lse[r] = row < lq ? lse[bh * lq + row] : 0.0f;
        row_delta[r] = row < lq ? delta[bh * lq + row] : 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
    }

    for (int64_t k0 = 0; k0 < lk; k0 += ATT_BK) {
        __syncthreads();
        if (SMEM) {
            load_tile(ks, stride, kb, k0, ATT_BK, lk, d, 1.0f);
            load_tile(vs, stride, vb, k0, ATT_BK, lk, d, 1.0f);
        }
        __syncthreads();
        const tile_ref<T, SMEM> kt = make_tile<T, SMEM>(ks, stride, kb, k0, lk, d, 1.0f);
        const tile_ref<T, SMEM> vt = make_tile<T, SMEM>(vs, stride, vb, k0, lk, d, 1.0f);
        const bool valid = k0 + lane < lk;
        float ds[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            ds[r] = 0.0f;
            if (valid) {
                const int qr = warp * RPW + r;
                const float p = expf(dot_row(qs + qr * d, kt, lane, d) - row_lse[r]);
                const float dp = dot_row(dos + qr * d, vt, lane, d);
                ds[r] = p * (dp - row_delta[r]);
            }
        }
        for (int j = 0; j < ATT_BK; j++) {
            float dsj[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) dsj[r] = __shfl_sync(FL_FULL_MASK, ds[r], j);
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int c = lane + 32 * i;
                if (c < d) {
                    const float kv = kt.at(j, c);
#pragma unroll
                    for (int r = 0; r < RPW; r++) acc[r][i] += dsj[r] * kv;
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const int64_t row = q0 + warp * RPW + r;
        if (row >= lq) continue;
        T *o = dq + (bh * lq + row) * d;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            const int c = lane + 32 * i;
            if (c < d) o[c] = fl_from_f32<T>(scale * acc[r][i]);
        }
    }
}

/* dk, dv for a tile of key rows; lane i handles query i of each streamed query tile.
 * Shared memory: kr [rows][d], vr [rows][d], lse_s [32], delta_s [32], and with SMEM
 * qs [32][padded] (pre-scaled q), dos [32][padded]. */
template <typename T, int DPL, int RPW, bool SMEM>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_dkv_kernel(const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta,
                         T *dk, T *dv, int64_t lq, int64_t lk, int d, float scale) {
    extern __shared__ float smem[];
    constexpr int ROWS = ATT_WARPS * RPW;
    const int stride = padded_stride(d);
    float *kr = smem;
    float *vr = kr + ROWS * d;
    float *lse_s = vr + ROWS * d;
    float *delta_s = lse_s + ATT_BK;
    float *qs = delta_s + ATT_BK;
    float *dos = qs + ATT_BK * stride;

    const int64_t k_tiles = (lk + ROWS - 1) / ROWS;
    const int64_t bh = blockIdx.x / k_tiles, k0 = (blockIdx.x % k_tiles) * ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const T *qb = q + bh * lq * d, *dob = dout + bh * lq * d;

    load_tile(kr, d, k + bh * lk * d, k0, ROWS, lk, d, 1.0f);
    load_tile(vr, d, v + bh * lk * d, k0, ROWS, lk, d, 1.0f);

    float dk_acc[RPW][DPL], dv_acc[RPW][DPL];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int i = 0; i < DPL; i++) dk_acc[r][i] = dv_acc[r][i] = 0.0f;

    for (int64_t i0 = 0; i0 < lq; i0 += ATT_BK) {
        __syncthreads();
        if (SMEM) {
            load_tile(qs, stride, qb, i0, ATT_BK, lq, d, scale);
            load_tile(dos, stride, dob, i0, ATT_BK, lq, d, 1.0f);
        }
        const tile_ref<T, SMEM> qt = make_tile<T, SMEM>(qs, stride, qb, i0, lq, d, scale);
        const tile_ref<T, SMEM> dot = make_tile<T, SMEM>(dos, stride, dob, i0, lq, d, 1.0f);
        if (threadIdx.x < ATT_BK) {
            const int64_t row = i0 + threadIdx.x;
            lse_s[threadIdx.x] = row < lq ? lse[bh * lq + row] : 0.0f;
            delta_s[threadIdx.x] = row < lq ? delta[bh * lq + row] : 0.0f;
        }
        __syncthreads();
        const bool valid = i0 + lane < lq;
        float p[RPW], ds[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            p[r] = ds[r] = 0.0f;
            if (valid) {
                const int kr_row = warp * RPW + r;
                /* Broadcast key/value row against query row `lane` of the padded tiles. */
                p[r] = expf(dot_row(kr + kr_row * d, qt, lane, d) - lse_s[lane]);
                const float dp = dot_row(vr + kr_row * d, dot, lane, d);
                ds[r] = p[r] * (dp - delta_s[lane]);
            }
        }
        for (int j = 0; j < ATT_BK; j++) {
            float pj[RPW], dsj[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                pj[r] = __shfl_sync(FL_FULL_MASK, p[r], j);
                dsj[r] = __shfl_sync(FL_FULL_MASK, ds[r], j);
            }
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int c = lane + 32 * i;
                if (c < d) {
                    const float qv = qt.at(j, c), dov = dot.at(j, c);
#pragma unroll
                    for (int r = 0; r < RPW; r++) {
                        dv_acc[r][i] += pj[r] * dov;
                        dk_acc[r][i] += dsj[r] * qv; /* qs holds scale * q */
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const int64_t row = k0 + warp * RPW + r;
        if (row >= lk) continue;
        T *ok = dk + (bh * lk + row) * d, *ov = dv + (bh * lk + row) * d;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            const int c = lane + 32 * i;
            if (c < d) {
                ok[c] = fl_from_f32<T>(dk_acc[r][i]);
                ov[c] = fl_from_f32<T>(dv_acc[r][i]);
            }
        }
    }
}

template <typename T, int DPL, int RPW, bool SMEM>
static void run_dq(fl_cuda_state *s, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                   const fl_tensor *lse, const float *delta, fl_tensor *dq, float scale, size_t smem) {
    const int64_t bh = q->shape[0] * q->shape[1], lq = q->shape[2], lk = k->shape[2];
    const int d = (int)q->shape[3];
    constexpr int ROWS = ATT_WARPS * RPW;
    prepare_smem(s, (const void *)attention_dq_kernel<T, DPL, RPW, SMEM>, smem, d);
    attention_dq_kernel<T, DPL, RPW, SMEM><<<attention_grid(bh, lq, ROWS), ATT_WARPS * 32, smem, s->stream>>>(
        (const T *)q->data, (const T *)k->data, (const T *)v->data, (const T *)dout->data, (const float *)lse->data,
        delta, (T *)dq->data, lq, lk, d, scale);
    CHECK_LAUNCH();
}

template <typename T, int DPL, int RPW, bool SMEM>
static void run_dkv(fl_cuda_state *s, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                    const fl_tensor *lse, const float *delta, fl_tensor *dk, fl_tensor *dv, float scale, size_t smem) {
    const int64_t bh = q->shape[0] * q->shape[1], lq = q->shape[2], lk = k->shape[2];
    const int d = (int)q->shape[3];
    constexpr int ROWS = ATT_WARPS * RPW;
    prepare_smem(s, (const void *)attention_dkv_kernel<T, DPL, RPW, SMEM>, smem, d);
    attention_dkv_kernel<T, DPL, RPW, SMEM><<<attention_grid(bh, lk, ROWS), ATT_WARPS * 32, smem, s->stream>>>(
        (const T *)q->data, (const T *)k->data, (const T *)v->data, (const T *)dout->data, (const float *)lse->data,
        delta, (T *)dk->data, (T *)dv->data, lq, lk, d, scale);
    CHECK_LAUNCH();
}

template <typename T, int DPL, int RPW>
static void launch_backward(fl_cuda_state *s, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                            const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                            fl_tensor *dk, fl_tensor *dv, float scale) {
    const int64_t bh = q->shape[0] * q->shape[1], lq = q->shape[2], lk = k->shape[2];
    const int d = (int)q->shape[3];
    constexpr int ROWS = ATT_WARPS * RPW;
    constexpr bool WIDE = has_global_variant<DPL>::value;
    const size_t stride = (size_t)padded_stride(d);

    float *delta = (float *)fl_cuda_scratch(s, (size_t)(bh * lq) * sizeof(float));
    if (bh * lq > 0) {
        const int64_t blocks = (bh * lq + 7) / 8;
        FL_CHECKF(blocks <= 0x7fffffff, "attention backward: too many rows");
        attention_delta_kernel<T><<<(unsigned)blocks, 256, 0, s->stream>>>((const T *)dout->data, (const T *)out->data,
                                                                          delta, bh * lq, d);
        CHECK_LAUNCH();
    }

    if (lq > 0) {
        const size_t own = sizeof(float) * 2 * (size_t)ROWS * d;
        const size_t smem = own + sizeof(float) * 2 * (size_t)ATT_BK * stride;
        if (WIDE && smem > s->smem_optin) {
            note_global_variant("backward", d, smem, s->smem_optin);
            run_dq<T, DPL, RPW, !WIDE>(s, dout, q, k, v, lse, delta, dq, scale, own);
        } else {
            run_dq<T, DPL, RPW, true>(s, dout, q, k, v, lse, delta, dq, scale, smem);
        }
    }
    if (lk > 0) {
        const size_t own = sizeof(float) * (2 * (size_t)ROWS * d + 2 * ATT_BK);
        const size_t smem = own + sizeof(float) * 2 * (size_t)ATT_BK * stride;
        if (WIDE && smem > s->smem_optin) {
            note_global_variant("backward", d, smem, s->smem_optin);
            run_dkv<T, DPL, RPW, !WIDE>(s, dout, q, k, v, lse, delta, dk, dv, scale, own);
        } else {
            run_dkv<T, DPL, RPW, true>(s, dout, q, k, v, lse, delta, dk, dv, scale, smem);
        }
    }
}

/* Calls FN<T, DPL, RPW>(args...) for the smallest accumulator count covering head dim d; fewer
 * rows per warp for wide heads keep the register count in bounds. */
#define ATT_DISPATCH(FN, dtype, d, ...)                                                                  \
    do {                                                                                                 \
        FL_CHECKF((d) <= ATT_MAX_D, "CUDA attention supports head dims up to %d, got %d", ATT_MAX_D,    \
                  (int)(d));                                                                             \
        FL_CUDA_DISPATCH(dtype, T, {                                                                     \
            if ((d) <= 32) FN<T, 1, 4>(__VA_ARGS__);                                                     \
            else if ((d) <= 64) FN<T, 2, 4>(__VA_ARGS__);                                                \
            else if ((d) <= 128) FN<T, 4, 4>(__VA_ARGS__);                                               \
            else if ((d) <= 256) FN<T, 8, 2>(__VA_ARGS__);                                               \
            else FN<T, 16, 1>(__VA_ARGS__);                                                              \
        });                                                                                              \
    } while (0)

void fl_cuda_attention(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v, fl_tensor *out,
                       fl_tensor *lse, float scale) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t d = q->shape[3];
    if (fl_tensor_numel(q) == 0 && fl_tensor_numel(lse) == 0) return;
    const fl_tensor *operands[4] = {q, k, v, out};
    if (fl_cuda_flash_usable(s, operands, 4)) {
        fl_cuda_flash_attention(s, q, k, v, out, lse, scale);
        return;
    }
    ATT_DISPATCH(launch_forward, q->dtype, d, s, q, k, v, out, lse, scale);
}

void fl_cuda_attention_backward(fl_ctx *ctx, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                                const fl_tensor *v, const fl_tensor *out, const fl_tensor *lse, fl_tensor *dq,
                                fl_tensor *dk, fl_tensor *dv, float scale) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t d = q->shape[3];
    if (q->shape[0] * q->shape[1] == 0 || d == 0) return;
    const fl_tensor *operands[7] = {q, k, v, dout, dq, dk, dv};
    if (fl_cuda_flash_usable(s, operands, 7)) {
        const int64_t rows = q->shape[0] * q->shape[1] * q->shape[2];
        float *delta = (float *)fl_cuda_scratch(s, (size_t)rows * sizeof(float));
        const int64_t blocks = (rows + 7) / 8;
        FL_CHECKF(blocks <= 0x7fffffff, "attention backward: too many rows");
        attention_delta_kernel<__nv_bfloat16><<<(unsigned)blocks, 256, 0, s->stream>>>(
            (const __nv_bfloat16 *)dout->data, (const __nv_bfloat16 *)out->data, delta, rows, (int)d);
        CHECK_LAUNCH();
        fl_cuda_flash_attention_backward(s, dout, q, k, v, lse, delta, dq, dk, dv, scale);
        return;
    }
    ATT_DISPATCH(launch_backward, q->dtype, d, s, dout, q, k, v, out, lse, dq, dk, dv, scale);
}
