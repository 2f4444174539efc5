/*
 * cuda_flash.cu — softmax attention on tensor cores (bf16 in, fp32 accumulate), forward and
 * backward, for BF16 storage and head dims 64 and 128 on sm_80 and newer.
 *
 * Forward (flash-attention style): a block of 4 warps owns 64 query rows, 16 per warp, and keeps
 * their q fragments in registers. Key and value tiles of 64 rows stream through shared memory;
 * per tile each warp computes its 16 x 64 scores with mma.sync.m16n8k16, scales them by
 * scale * log2(e), masks keys past the end, updates the running row maximum and sum (exp2, the
 * maximum shared by the 4 lanes of a row through two shuffles), rescales its output accumulators,
 * and multiplies the probabilities — repacked in registers as the A operand — by the value tile.
 * No score matrix reaches memory. out = acc / sum, lse = (max + log2(sum)) ln 2.
 *
 * Backward, without atomics (bitwise reproducible): delta = rowsum(dout * out) (the CUDA-core
 * kernel of cuda_attention.cu); then a dq kernel per 64 query rows streaming 64-row key/value
 * tiles (S = q k^T, P = exp2(S c - lse log2 e), dP = dout v^T, dS = P (dP - delta), dq += dS k),
 * and a dk/dv kernel per 64 key rows streaming 32-row query tiles (S^T = k q^T, dP^T = v dout^T,
 * dv += P^T dout, dk += dS^T q). Scores and their gradients are recomputed in both, seven
 * products in all against five for a kernel that adds dq with atomics.
 *
 * Fragment and tile index math lives in flash_layout.h, shared with the host emulation test.
 * cuda_attention.cu asks fl_cuda_flash_usable first: operands these kernels do not take (another
 * dtype or head dim, a base address not 16-byte aligned, a GPU before sm_80, too little shared
 * memory, FLASHLORA_CUDA_ATTENTION=simt) run on its CUDA-core kernels.
 */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/flash_layout.h"

typedef __nv_bfloat16 bf16;

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* ---- fragments --------------------------------------------------------------------------------- */

__device__ __forceinline__ uint32_t ld32(const bf16 *p) { return *(const uint32_t *)p; }

/* Two bf16 from two addresses, low half first. */
__device__ __forceinline__ uint32_t pack2(const bf16 *lo, const bf16 *hi) {
    return (uint32_t)(*(const uint16_t *)lo) | ((uint32_t)(*(const uint16_t *)hi) << 16);
}

__device__ __forceinline__ uint32_t pack_f32(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *(uint32_t *)&v;
}

/* c += A B for one 16 x 8 x 16 step. */
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap(); /* never launched below sm_80 (fl_cuda_flash_* checks) */
#endif
}

/* A fragment of k-step kk of the 16-row slice starting at row0 of a [rows][stride] tile whose
 * rows run along k (q, dout, k or v rows, k = head dim). */
__device__ __forceinline__ void load_a(uint32_t a[4], const bf16 *tile, int stride, int row0, int kk, int lane) {
#pragma unroll
    for (int r = 0; r < 4; r++) a[r] = ld32(tile + (row0 + fa_a_row(lane, r)) * stride + kk * 16 + fa_a_col(lane, r, 0));
}

/* B fragment (k = head dim, n = rows nt*8..): element (k, n) is tile[n][k], k-contiguous. */
__device__ __forceinline__ void load_b_rows(uint32_t &b0, uint32_t &b1, const bf16 *tile, int stride, int nt, int kk,
                                            int lane) {
    const bf16 *row = tile + (nt * 8 + fa_b_n(lane)) * stride + kk * 16;
    b0 = ld32(row + fa_b_k(lane, 0, 0));
    b1 = ld32(row + fa_b_k(lane, 1, 0));
}

/* B fragment (k = rows j*16.., n = head dim nt*8..): element (k, n) is tile[k][n], two rows per
 * register. */
__device__ __forceinline__ void load_b_cols(uint32_t &b0, uint32_t &b1, const bf16 *tile, int stride, int j, int nt,
                                            int lane) {
    const bf16 *col = tile + j * 16 * stride + nt * 8 + fa_b_n(lane);
    b0 = pack2(col + fa_b_k(lane, 0, 0) * stride, col + fa_b_k(lane, 0, 1) * stride);
    b1 = pack2(col + fa_b_k(lane, 1, 0) * stride, col + fa_b_k(lane, 1, 1) * stride);
}

/* The accumulators of n-tiles 2j and 2j+1 as the A fragment of k-step j (flash_layout.h). */
__device__ __forceinline__ void acc_to_a(uint32_t a[4], const float lo[4], const float hi[4]) {
    a[0] = pack_f32(lo[0], lo[1]);
    a[1] = pack_f32(lo[2], lo[3]);
    a[2] = pack_f32(hi[0], hi[1]);
    a[3] = pack_f32(hi[2], hi[3]);
}

/* Rows [row0, row0 + rows) of a [len, D] matrix into tile[rows][stride], zeros past len; 16-byte
 * copies by the whole block. */
template <int D>
__device__ __forceinline__ void load_tile(bf16 *tile, const bf16 *src, int64_t row0, int rows, int64_t len) {
    constexpr int CHUNKS = D / 8;
    const int stride = fa_stride(D);
    for (int c = threadIdx.x; c < rows * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const int64_t row = row0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row < len) v = *(const uint4 *)(src + row * D + col);
        *(uint4 *)(tile + r * stride + col) = v;
    }
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FL_FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(FL_FULL_MASK, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FL_FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FL_FULL_MASK, v, 2);
}

/* ---- forward ---------------------------------------------------------------------------------- */

template <int D>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_forward_kernel(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out, float *lse, int64_t lq, int64_t lk,
                         float scale_log2) {
    extern __shared__ uint4 smem_raw[];
    constexpr int S = D + FA_PAD, KS = D / 16, NT = FA_BN / 8, DT = D / 8;
    bf16 *qs = (bf16 *)smem_raw, *ks = qs + FA_BM * S, *vs = ks + FA_BN * S;
    const int64_t q_tiles = (lq + FA_BM - 1) / FA_BM;
    const int64_t bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * FA_BM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wrow = warp * 16;
    const bf16 *kb = k + bh * lk * D, *vb = v + bh * lk * D;

    load_tile<D>(qs, q + bh * lq * D, q0, FA_BM, lq);
    __syncthreads();
    uint32_t qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; kk++) load_a(qf[kk], qs, S, wrow, kk, lane);

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;

    for (int64_t k0 = 0; k0 < lk; k0 += FA_BN) {
        __syncthreads(); /* the previous tiles are consumed */
        load_tile<D>(ks, kb, k0, FA_BN, lk);
        load_tile<D>(vs, vb, k0, FA_BN, lk);
        __syncthreads();
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                uint32_t b0, b1;
                load_b_rows(b0, b1, ks, S, nt, kk, lane);
                mma16816(s[nt], qf[kk], b0, b1);
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const bool valid = k0 + nt * 8 + fa_c_col(lane, r) < lk;
                s[nt][r] = valid ? s[nt][r] * scale_log2 : -INFINITY;
                mx[r >> 1] = fmaxf(mx[r >> 1], s[nt][r]);
            }
        float corr[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const float m_new = fmaxf(m[i], quad_max(mx[i])); /* finite: key k0 is always valid */
            corr[i] = exp2f(m[i] - m_new);                    /* 0 on the first tile */
            m[i] = m_new;
            l[i] *= corr[i];
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                s[nt][r] = exp2f(s[nt][r] - m[r >> 1]);
                l[r >> 1] += s[nt][r];
            }
#pragma unroll
        for (int i = 0; i < DT; i++) {
            o[i][0] *= corr[0], o[i][1] *= corr[0];
            o[i][2] *= corr[1], o[i][3] *= corr[1];
        }
#pragma unroll
        for (int j = 0; j < FA_BN / 16; j++) {
            uint32_t pa[4];
            acc_to_a(pa, s[2 * j], s[2 * j + 1]);
#pragma unroll
            for (int nt = 0; nt < DT; nt++) {
                uint32_t b0, b1;
                load_b_cols(b0, b1, vs, S, j, nt, lane);
                mma16816(o[nt], pa, b0, b1);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 2; i++) l[i] = quad_sum(l[i]);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t row = q0 + wrow + fa_c_row(lane, 2 * i);
        if (row >= lq) continue;
        const float inv = 1.0f / l[i];
        bf16 *dst = out + (bh * lq + row) * D + fa_c_col(lane, 0);
#pragma unroll
        for (int nt = 0; nt < DT; nt++) {
            const uint32_t pair = pack_f32(o[nt][2 * i] * inv, o[nt][2 * i + 1] * inv);
            *(uint32_t *)(dst + nt * 8) = pair;
        }
        if (fa_thread(lane) == 0) lse[bh * lq + row] = (m[i] + log2f(l[i])) * LN2;
    }
}

/* ---- backward: dq ----------------------------------------------------------------------------- */

template <int D>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_dq_kernel(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
                    const float *delta, bf16 *dq, int64_t lq, int64_t lk, float scale_log2, float scale) {
    extern __shared__ uint4 smem_raw[];
    constexpr int S = D + FA_PAD, KS = D / 16, NT = FA_BN / 8, DT = D / 8;
    bf16 *qs = (bf16 *)smem_raw, *dos = qs + FA_BM * S, *ks = dos + FA_BM * S, *vs = ks + FA_BN * S;
    const int64_t q_tiles = (lq + FA_BM - 1) / FA_BM;
    const int64_t bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * FA_BM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wrow = warp * 16;
    const bf16 *kb = k + bh * lk * D, *vb = v + bh * lk * D;

    load_tile<D>(qs, q + bh * lq * D, q0, FA_BM, lq);
    load_tile<D>(dos, dout + bh * lq * D, q0, FA_BM, lq);
    float row_lse[2], row_delta[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        /* Rows past the end have q = dout = 0, so with lse = delta = 0 their dS is 0. */
        const int64_t row = q0 + wrow + fa_c_row(lane, 2 * i);
        row_lse[i] = row < lq ? lse[bh * lq + row] * LOG2E : 0.0f;
        row_delta[i] = row < lq ? delta[bh * lq + row] : 0.0f;
    }
    float acc[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

    for (int64_t k0 = 0; k0 < lk; k0 += FA_BN) {
        __syncthreads();
        load_tile<D>(ks, kb, k0, FA_BN, lk);
        load_tile<D>(vs, vb, k0, FA_BN, lk);
        __syncthreads();
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            uint32_t qa[4], da[4];
            load_a(qa, qs, S, wrow, kk, lane);
            load_a(da, dos, S, wrow, kk, lane);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                uint32_t b0, b1;
                load_b_rows(b0, b1, ks, S, nt, kk, lane);
                mma16816(s[nt], qa, b0, b1);
                load_b_rows(b0, b1, vs, S, nt, kk, lane);
                mma16816(dp[nt], da, b0, b1);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const bool valid = k0 + nt * 8 + fa_c_col(lane, r) < lk;
                const float p = valid ? exp2f(s[nt][r] * scale_log2 - row_lse[r >> 1]) : 0.0f;
                s[nt][r] = p * (dp[nt][r] - row_delta[r >> 1]); /* dS */
            }
#pragma unroll
        for (int j = 0; j < FA_BN / 16; j++) {
            uint32_t a[4];
            acc_to_a(a, s[2 * j], s[2 * j + 1]);
#pragma unroll
            for (int nt = 0; nt < DT; nt++) {
                uint32_t b0, b1;
                load_b_cols(b0, b1, ks, S, j, nt, lane);
                mma16816(acc[nt], a, b0, b1);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t row = q0 + wrow + fa_c_row(lane, 2 * i);
        if (row >= lq) continue;
        bf16 *dst = dq + (bh * lq + row) * D + fa_c_col(lane, 0);
#pragma unroll
        for (int nt = 0; nt < DT; nt++)
            *(uint32_t *)(dst + nt * 8) = pack_f32(acc[nt][2 * i] * scale, acc[nt][2 * i + 1] * scale);
    }
}

/* ---- backward: dk, dv ------------------------------------------------------------------------- */

template <int D>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_dkv_kernel(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
                     const float *delta, bf16 *dk, bf16 *dv, int64_t lq, int64_t lk, float scale_log2, float scale) {
    extern __shared__ uint4 smem_raw[];
    constexpr int S = D + FA_PAD, KS = D / 16, NT = FA_BQ / 8, DT = D / 8;
    bf16 *ks = (bf16 *)smem_raw, *vs = ks + FA_BM * S, *qs = vs + FA_BM * S, *dos = qs + FA_BQ * S;
    float *lse_s = (float *)(dos + FA_BQ * S), *delta_s = lse_s + FA_BQ;
    const int64_t k_tiles = (lk + FA_BM - 1) / FA_BM;
    const int64_t bh = blockIdx.x / k_tiles, k0 = (blockIdx.x % k_tiles) * FA_BM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wrow = warp * 16;
    const bf16 *qb = q + bh * lq * D, *dob = dout + bh * lq * D;

    load_tile<D>(ks, k + bh * lk * D, k0, FA_BM, lk);
    load_tile<D>(vs, v + bh * lk * D, k0, FA_BM, lk);
    float dk_acc[DT][4], dv_acc[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++)
#pragma unroll
        for (int r = 0; r < 4; r++) dk_acc[i][r] = dv_acc[i][r] = 0.0f;

    for (int64_t i0 = 0; i0 < lq; i0 += FA_BQ) {
        __syncthreads();
        load_tile<D>(qs, qb, i0, FA_BQ, lq);
        load_tile<D>(dos, dob, i0, FA_BQ, lq);
        if (threadIdx.x < FA_BQ) {
            const int64_t row = i0 + threadIdx.x;
            lse_s[threadIdx.x] = row < lq ? lse[bh * lq + row] * LOG2E : 0.0f;
            delta_s[threadIdx.x] = row < lq ? delta[bh * lq + row] : 0.0f;
        }
        __syncthreads();
        float st[NT][4], dpt[NT][4]; /* rows: this warp's 16 keys; columns: the tile's queries */
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            st[nt][0] = st[nt][1] = st[nt][2] = st[nt][3] = 0.0f;
            dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            uint32_t ka[4], va[4];
            load_a(ka, ks, S, wrow, kk, lane);
            load_a(va, vs, S, wrow, kk, lane);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                uint32_t b0, b1;
                load_b_rows(b0, b1, qs, S, nt, kk, lane);
                mma16816(st[nt], ka, b0, b1);
                load_b_rows(b0, b1, dos, S, nt, kk, lane);
                mma16816(dpt[nt], va, b0, b1);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int col = nt * 8 + fa_c_col(lane, r);
                const bool valid = i0 + col < lq;
                const float p = valid ? exp2f(st[nt][r] * scale_log2 - lse_s[col]) : 0.0f;
                st[nt][r] = p;                                /* P^T */
                dpt[nt][r] = p * (dpt[nt][r] - delta_s[col]); /* dS^T */
            }
#pragma unroll
        for (int j = 0; j < FA_BQ / 16; j++) {
            uint32_t pa[4], da[4];
            acc_to_a(pa, st[2 * j], st[2 * j + 1]);
            acc_to_a(da, dpt[2 * j], dpt[2 * j + 1]);
#pragma unroll
            for (int nt = 0; nt < DT; nt++) {
                uint32_t b0, b1;
                load_b_cols(b0, b1, dos, S, j, nt, lane);
                mma16816(dv_acc[nt], pa, b0, b1);
                load_b_cols(b0, b1, qs, S, j, nt, lane);
                mma16816(dk_acc[nt], da, b0, b1);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t row = k0 + wrow + fa_c_row(lane, 2 * i);
        if (row >= lk) continue;
        bf16 *dkr = dk + (bh * lk + row) * D + fa_c_col(lane, 0), *dvr = dv + (bh * lk + row) * D + fa_c_col(lane, 0);
#pragma unroll
        for (int nt = 0; nt < DT; nt++) {
            *(uint32_t *)(dkr + nt * 8) = pack_f32(dk_acc[nt][2 * i] * scale, dk_acc[nt][2 * i + 1] * scale);
            *(uint32_t *)(dvr + nt * 8) = pack_f32(dv_acc[nt][2 * i], dv_acc[nt][2 * i + 1]);
        }
    }
}

/* ---- launchers ---------------------------------------------------------------------------------- */

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

bool fl_cuda_flash_usable(const fl_cuda_state *s, const fl_tensor *const *operands, int n) {
    const fl_tensor *q = operands[0], *k = operands[1];
    const int64_t d = q->shape[3];
    if (s->attention_simt || q->dtype != FL_BF16 || (d != 64 && d != 128) || s->cc_major < 8) return false;
    if (q->shape[2] == 0 || k->shape[2] == 0) return false;
    for (int i = 0; i < n; i++)
        if (!aligned16(operands[i]->data)) return false;
    const size_t most = (size_t)fa_smem_dq((int)d) > (size_t)fa_smem_dkv((int)d) ? (size_t)fa_smem_dq((int)d)
                                                                                 : (size_t)fa_smem_dkv((int)d);
    return most <= s->smem_optin;
}

static unsigned flash_grid(int64_t bh, int64_t len) {
    const int64_t blocks = bh * ((len + FA_BM - 1) / FA_BM);
    FL_CHECKF(blocks <= 0x7fffffff, "attention grid of %lld blocks exceeds the limit", (long long)blocks);
    return (unsigned)blocks;
}

static void opt_in(const void *kernel, int smem) {
    if (smem > 48 * 1024) CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
}

template <int D>
static void launch_flash_forward(fl_cuda_state *s, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                                 fl_tensor *out, fl_tensor *lse, float scale) {
    const int64_t bh = q->shape[0] * q->shape[1], lq = q->shape[2], lk = k->shape[2];
    const int smem = fa_smem_forward(D);
    opt_in((const void *)flash_forward_kernel<D>, smem);
    flash_forward_kernel<D><<<flash_grid(bh, lq), FA_WARPS * 32, smem, s->stream>>>(
        (const bf16 *)q->data, (const bf16 *)k->data, (const bf16 *)v->data, (bf16 *)out->data, (float *)lse->data,
        lq, lk, scale * LOG2E);
    CHECK_LAUNCH();
}

template <int D>
static void launch_flash_backward(fl_cuda_state *s, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                                  const fl_tensor *v, const fl_tensor *lse, const float *delta, fl_tensor *dq,
                                  fl_tensor *dk, fl_tensor *dv, float scale) {
    const int64_t bh = q->shape[0] * q->shape[1], lq = q->shape[2], lk = k->shape[2];
    int smem = fa_smem_dq(D);
    opt_in((const void *)flash_dq_kernel<D>, smem);
    flash_dq_kernel<D><<<flash_grid(bh, lq), FA_WARPS * 32, smem, s->stream>>>(
        (const bf16 *)q->data, (const bf16 *)k->data, (const bf16 *)v->data, (const bf16 *)dout->data,
        (const float *)lse->data, delta, (bf16 *)dq->data, lq, lk, scale * LOG2E, scale);
    CHECK_LAUNCH();
    smem = fa_smem_dkv(D);
    opt_in((const void *)flash_dkv_kernel<D>, smem);
    flash_dkv_kernel<D><<<flash_grid(bh, lk), FA_WARPS * 32, smem, s->stream>>>(
        (const bf16 *)q->data, (const bf16 *)k->data, (const bf16 *)v->data, (const bf16 *)dout->data,
        (const float *)lse->data, delta, (bf16 *)dk->data, (bf16 *)dv->data, lq, lk, scale * LOG2E, scale);
    CHECK_LAUNCH();
}

void fl_cuda_flash_attention(fl_cuda_state *s, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                             fl_tensor *out, fl_tensor *lse, float scale) {
    if (q->shape[3] == 64) launch_flash_forward<64>(s, q, k, v, out, lse, scale);
    else launch_flash_forward<128>(s, q, k, v, out, lse, scale);
}

void fl_cuda_flash_attention_backward(fl_cuda_state *s, const fl_tensor *dout, const fl_tensor *q, const fl_tensor *k,
                                      const fl_tensor *v, const fl_tensor *lse, const float *delta, fl_tensor *dq,
                                      fl_tensor *dk, fl_tensor *dv, float scale) {
    if (q->shape[3] == 64) launch_flash_backward<64>(s, dout, q, k, v, lse, delta, dq, dk, dv, scale);
    else launch_flash_backward<128>(s, dout, q, k, v, lse, delta, dq, dk, dv, scale);
}
