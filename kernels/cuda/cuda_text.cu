/*
 * cuda_text.cu — the forward-only ops of the text encoders on CUDA: embedding gather (ids copied
 * to device scratch), LayerNorm with weight and bias (one warp per row, fp32 statistics),
 * attention with an additive f32 bias and/or a causal mask, quick-GELU, exact GELU and the
 * elementwise product (grid-stride loops over matrix views).
 *
 * Attention: one block of TXT_WARPS warps per (batch*head, tile of query rows), each warp owning
 * RPW rows. Keys and values stream through shared memory in tiles of 32 rows (fp32, the key tile
 * padded to an odd stride); lane j scores key j against its warp's rows, adds the bias, masks
 * keys after the row under the causal mask, and the softmax is accumulated online, so the score
 * matrix is never stored. Under the causal mask a block stops at the last key its last row sees.
 * Templated on the accumulators per lane: head dims up to 32 x 16 = 512.
 */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

/* ---- embedding -------------------------------------------------------------------------------- */

template <typename T>
__global__ void embedding_kernel(const T *table, const int32_t *ids, T *out, int64_t ld, int64_t n, int64_t d) {
    const int64_t total = n * d;
    for (int64_t i = fl_global_thread(); i < total; i += fl_global_stride()) {
        const int64_t r = i / d, c = i - r * d;
        out[r * ld + c] = table[(int64_t)ids[r] * d + c];
    }
}

void fl_cuda_embedding(fl_ctx *ctx, const fl_tensor *table, const int32_t *ids, int64_t n, fl_tensor *out) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t d = table->shape[1];
    if (n == 0 || d == 0) return;
    const fl_matrix mo = fl_cuda_matrix(out);
    int32_t *dev_ids = (int32_t *)fl_cuda_scratch(s, (size_t)n * sizeof(int32_t));
    /* pageable source: the call returns once the ids are staged, so the caller may reuse them */
    CHECK_CUDA(cudaMemcpyAsync(dev_ids, ids, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, s->stream));
    FL_CUDA_DISPATCH(table->dtype, T,
                     embedding_kernel<T><<<fl_cuda_grid(s, n * d, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)table->data, dev_ids, (T *)out->data, mo.ld, n, d));
    CHECK_LAUNCH();
}

/* ---- LayerNorm with weight and bias ----------------------------------------------------------- */

#define TXT_ROWS_PER_BLOCK 8

template <typename T>
__global__ void __launch_bounds__(TXT_ROWS_PER_BLOCK * 32)
    layernorm_affine_kernel(const T *x, const T *w, const T *b, T *y, int64_t rows, int64_t d, float eps) {
    const int64_t row = (int64_t)blockIdx.x * TXT_ROWS_PER_BLOCK + threadIdx.x / 32;
    if (row >= rows) return;
    const int lane = threadIdx.x % 32;
    const T *xr = x + row * d;
    T *yr = y + row * d;
    float sum = 0.0f;
    for (int64_t j = lane; j < d; j += 32) sum += fl_to_f32(xr[j]);
    const float mu = fl_warp_sum(sum) / (float)d;
    float sq = 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
        const float t = fl_to_f32(xr[j]) - mu;
        sq += t * t;
    }
    const float rs = 1.0f / sqrtf(fl_warp_sum(sq) / (float)d + eps);
    for (int64_t j = lane; j < d; j += 32)
        yr[j] = fl_from_f32<T>((fl_to_f32(xr[j]) - mu) * rs * fl_to_f32(w[j]) + fl_to_f32(b[j]));
}

void fl_cuda_layernorm_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *weight, const fl_tensor *bias,
                              fl_tensor *y, float eps) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t d = x->shape[x->ndim - 1], rows = d ? fl_tensor_numel(x) / d : 0;
    if (rows == 0) return;
    const int64_t blocks = (rows + TXT_ROWS_PER_BLOCK - 1) / TXT_ROWS_PER_BLOCK;
    FL_CHECKF(blocks <= 0x7fffffff, "%lld rows exceed the grid limit", (long long)rows);
    FL_CUDA_DISPATCH(x->dtype, T,
                     layernorm_affine_kernel<T><<<(unsigned)blocks, TXT_ROWS_PER_BLOCK * 32, 0, s->stream>>>(
                         (const T *)x->data, (const T *)weight->data, (const T *)bias->data, (T *)y->data, rows, d,
                         eps));
    CHECK_LAUNCH();
}

/* ---- attention with bias and causal mask ------------------------------------------------------ */

#define TXT_BK 32
#define TXT_WARPS 4

__host__ __device__ __forceinline__ int txt_padded(int d) { return d % 2 ? d : d + 1; }

template <typename T>
__device__ __forceinline__ void txt_load_tile(float *smem, int stride, const T *src, int64_t row0, int nrows,
                                              int64_t len, int d, float mul) {
    for (int idx = threadIdx.x; idx < nrows * d; idx += blockDim.x) {
        const int r = idx / d, c = idx - r * d;
        const int64_t row = row0 + r;
        smem[r * stride + c] = row < len ? mul * fl_to_f32(src[row * d + c]) : 0.0f;
    }
}

/* Shared memory: qs [rows][d] (pre-scaled q), ks [32][padded], vs [32][d].
 * bias: NULL or the [Lq, Lk] table of this (batch, head) located by bias_bstride / bias_hstride. */
template <typename T, int DPL, int RPW>
__global__ void __launch_bounds__(TXT_WARPS * 32)
    attention_masked_kernel(const T *q, const T *k, const T *v, const float *bias, int64_t bias_bstride,
                            int heads, bool causal, T *out, int64_t lq, int64_t lk, int d, float scale) {
    extern __shared__ float smem[];
    constexpr int ROWS = TXT_WARPS * RPW;
    const int ks_stride = txt_padded(d);
    float *qs = smem;
    float *ks = qs + ROWS * d;
    float *vs = ks + TXT_BK * ks_stride;

    const int64_t q_tiles = (lq + ROWS - 1) / ROWS;
    const int64_t bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const T *qb = q + bh * lq * d, *kb = k + bh * lk * d, *vb = v + bh * lk * d;
    const float *bb = bias ? bias + (bh / heads) * bias_bstride + (bh % heads) * lq * lk : NULL;

    txt_load_tile(qs, d, qb, q0, ROWS, lq, d, scale);

    float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
    }

    int64_t k_end = lk;
    if (causal) {
        const int64_t last = q0 + ROWS < lq ? q0 + ROWS : lq; /* one past the block's last row */
        k_end = last < lk ? last : lk;
    }
    for (int64_t k0 = 0; k0 < k_end; k0 += TXT_BK) {
        __syncthreads();
        txt_load_tile(ks, ks_stride, kb, k0, TXT_BK, lk, d, 1.0f);
        txt_load_tile(vs, d, vb, k0, TXT_BK, lk, d, 1.0f);
        __syncthreads();
        const int64_t key = k0 + lane;
        float p[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            const int64_t row = q0 + warp * RPW + r;
            const bool valid = key < lk && row < lq && !(causal && key > row);
            float sc = -INFINITY;
            if (valid) {
                const float *qr = qs + (warp * RPW + r) * d, *kr = ks + lane * ks_stride;
                float dot = 0.0f;
#pragma unroll 4
                for (int c = 0; c < d; c++) dot += qr[c] * kr[c];
                sc = dot + (bb ? bb[row * lk + key] : 0.0f);
            }
            const float m_new = fmaxf(m[r], fl_warp_max(sc));
            /* rows past the end (or not yet seeing a key) keep m = -inf: guard the exponentials */
            const float corr = m_new == -INFINITY ? 1.0f : expf(m[r] - m_new);
            p[r] = valid ? expf(sc - m_new) : 0.0f;
            l[r] = l[r] * corr + fl_warp_sum(p[r]);
            m[r] = m_new;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
        }
        for (int j = 0; j < TXT_BK; j++) {
            float pj[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) pj[r] = __shfl_sync(FL_FULL_MASK, p[r], j);
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int c = lane + 32 * i;
                if (c < d) {
                    const float vv = vs[j * d + c];
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
    }
}

template <typename T, int DPL, int RPW>
static void launch_masked(fl_cuda_state *s, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                          const fl_tensor *bias, bool causal, fl_tensor *out, float scale) {
    const int64_t heads = q->shape[1], bh = q->shape[0] * heads, lq = q->shape[2], lk = k->shape[2];
    const int d = (int)q->shape[3];
    constexpr int ROWS = TXT_WARPS * RPW;
    const size_t smem = sizeof(float) * ((size_t)ROWS * d + (size_t)TXT_BK * txt_padded(d) + (size_t)TXT_BK * d);
    FL_CHECKF(smem <= s->smem_optin, "attention head dim %d needs %zu bytes of shared memory, the GPU allows %zu", d,
              smem, s->smem_optin);
    if (smem > 48 * 1024)
        CHECK_CUDA(cudaFuncSetAttribute((const void *)attention_masked_kernel<T, DPL, RPW>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const int64_t blocks = bh * ((lq + ROWS - 1) / ROWS);
    FL_CHECKF(blocks <= 0x7fffffff, "attention grid of %lld blocks exceeds the limit", (long long)blocks);
    const int64_t bias_bstride = bias && bias->ndim == 4 ? heads * lq * lk : 0;
    attention_masked_kernel<T, DPL, RPW><<<(unsigned)blocks, TXT_WARPS * 32, smem, s->stream>>>(
        (const T *)q->data, (const T *)k->data, (const T *)v->data, bias ? (const float *)bias->data : NULL,
        bias_bstride, (int)heads, causal, (T *)out->data, lq, lk, d, scale);
    CHECK_LAUNCH();
}

void fl_cuda_attention_masked(fl_ctx *ctx, const fl_tensor *q, const fl_tensor *k, const fl_tensor *v,
                              const fl_tensor *bias, bool causal, fl_tensor *out, float scale) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t d = q->shape[3];
    if (fl_tensor_numel(q) == 0) return;
    FL_CHECKF(d <= 512, "CUDA attention supports head dims up to 512, got %lld", (long long)d);
    FL_CUDA_DISPATCH(q->dtype, T, {
        if (d <= 32) launch_masked<T, 1, 4>(s, q, k, v, bias, causal, out, scale);
        else if (d <= 64) launch_masked<T, 2, 4>(s, q, k, v, bias, causal, out, scale);
        else if (d <= 128) launch_masked<T, 4, 4>(s, q, k, v, bias, causal, out, scale);
        else if (d <= 256) launch_masked<T, 8, 2>(s, q, k, v, bias, causal, out, scale);
        else launch_masked<T, 16, 1>(s, q, k, v, bias, causal, out, scale);
    });
}

/* ---- activations and product ------------------------------------------------------------------ */

enum { TXT_QUICK_GELU, TXT_GELU_ERF };

template <typename T, int OP>
__global__ void txt_unary_kernel(const T *x, int64_t ldx, T *y, int64_t ldy, int64_t rows, int64_t cols) {
    const int64_t n = rows * cols;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const int64_t r = i / cols, c = i - r * cols;
        const float v = fl_to_f32(x[r * ldx + c]);
        const float out = OP == TXT_QUICK_GELU ? v / (1.0f + expf(-1.702f * v))
                                               : 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        y[r * ldy + c] = fl_from_f32<T>(out);
    }
}

template <int OP> static void txt_unary(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix mx = fl_cuda_matrix(x), my = fl_cuda_matrix(y);
    const int64_t n = mx.rows * mx.cols;
    if (n == 0) return;
    FL_CUDA_DISPATCH(x->dtype, T,
                     txt_unary_kernel<T, OP><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)x->data, mx.ld, (T *)y->data, my.ld, mx.rows, mx.cols));
    CHECK_LAUNCH();
}

void fl_cuda_quick_gelu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) { txt_unary<TXT_QUICK_GELU>(ctx, x, y); }

void fl_cuda_gelu_erf(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) { txt_unary<TXT_GELU_ERF>(ctx, x, y); }

template <typename T>
__global__ void txt_mul_kernel(const T *a, int64_t lda, const T *b, int64_t ldb, T *out, int64_t ldo, int64_t rows,
                               int64_t cols) {
    const int64_t n = rows * cols;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const int64_t r = i / cols, c = i - r * cols;
        out[r * ldo + c] = fl_from_f32<T>(fl_to_f32(a[r * lda + c]) * fl_to_f32(b[r * ldb + c]));
    }
}

void fl_cuda_mul(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix ma = fl_cuda_matrix(a), mb = fl_cuda_matrix(b), mo = fl_cuda_matrix(out);
    const int64_t n = ma.rows * ma.cols;
    if (n == 0) return;
    FL_CUDA_DISPATCH(a->dtype, T,
                     txt_mul_kernel<T><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)a->data, ma.ld, (const T *)b->data, mb.ld, (T *)out->data, mo.ld, ma.rows,
                         ma.cols));
    CHECK_LAUNCH();
}
