/*
 * cuda_gemm.cu — matrix products on CUDA: gemm and linear through cuBLASLt (fp32 compute for F32
 * and BF16 storage, BF16 operands with an F32 result for gradients, bias epilogue for linear),
 * and bias_grad as a deterministic column sum.
 *
 * flashlora's matrices are row-major with a row stride; cuBLASLt is column-major. A row-major
 * [r, c] matrix with row stride ld is the column-major [c, r] matrix with leading dimension ld, so
 * row-major C = op(A) op(B) is computed as column-major C^T = op(B)^T op(A)^T: B's memory is the
 * first cuBLASLt operand, A's the second, and each keeps its own transpose flag.
 *
 * Plans are cached: the matmul descriptor, the three layouts and the algorithm the heuristic
 * picked are kept per context for each key (dtypes, transposes, m, n, k, leading dimensions,
 * operand alignment clamped to 16 bytes, bias epilogue or not), so a training step's ~2.5k
 * products query the heuristic once per distinct shape, and a shape always runs the same
 * algorithm in a context (the reproducibility rules are in README.md). When cuBLASLt offers no
 * algorithm for a layout (unusual alignment or strides), the key remembers that and a plain
 * tiled kernel computes the same product, 50-100x slower: the first time a context takes it, it
 * says so in the log with the shape. linear falls back to a separate bias pass when the bias
 * epilogue is unavailable.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

extern "C" {
#include "core/log.h"
}

/* ---- fallback kernels ------------------------------------------------------------------------- */

#define GEMM_TILE 16

/* C[M, N] = alpha * op(A) op(B) + beta * C (+ bias[n]); C is read only when beta != 0. A and B
 * have storage type TI, C and the bias TO. */
template <typename TI, typename TO>
__global__ void __launch_bounds__(GEMM_TILE *GEMM_TILE)
    gemm_fallback_kernel(const TI *a, int64_t lda, bool ta, const TI *b, int64_t ldb, bool tb, TO *c, int64_t ldc,
                         int64_t m, int64_t n, int64_t k, float alpha, float beta, const TO *bias) {
    __shared__ float as[GEMM_TILE][GEMM_TILE + 1]; /* as[i][p] = op(A)(row i, col p) */
    __shared__ float bs[GEMM_TILE][GEMM_TILE + 1]; /* bs[p][j] = op(B)(row p, col j) */
    const int tx = threadIdx.x, ty = threadIdx.y;
    /* The tile loops are uniform across the block, so the barriers inside are safe. */
    for (int64_t mt = blockIdx.y; mt * GEMM_TILE < m; mt += gridDim.y) {
        for (int64_t nt = blockIdx.x; nt * GEMM_TILE < n; nt += gridDim.x) {
            const int64_t row = mt * GEMM_TILE + ty, col = nt * GEMM_TILE + tx;
            float acc = 0.0f;
            for (int64_t k0 = 0; k0 < k; k0 += GEMM_TILE) {
                const int64_t ak = k0 + tx, bk = k0 + ty;
                float av = 0.0f, bv = 0.0f;
                if (row < m && ak < k) av = fl_to_f32(ta ? a[ak * lda + row] : a[row * lda + ak]);
                if (bk < k && col < n) bv = fl_to_f32(tb ? b[col * ldb + bk] : b[bk * ldb + col]);
                as[ty][tx] = av;
                bs[ty][tx] = bv;
                __syncthreads();
#pragma unroll
                for (int p = 0; p < GEMM_TILE; p++) acc += as[ty][p] * bs[p][tx];
                __syncthreads();
            }
            if (row < m && col < n) {
                float v = alpha * acc;
                TO *out = c + row * ldc + col;
                if (beta != 0.0f) v += beta * fl_to_f32(*out);
                if (bias) v += fl_to_f32(bias[col]);
                *out = fl_from_f32<TO>(v);
            }
        }
    }
}

/* C = beta * C (+ bias; zero when beta == 0, whatever C held): the product when k == 0 or
 * alpha == 0. */
template <typename T>
__global__ void scale_or_bias_kernel(T *c, int64_t ldc, int64_t m, int64_t n, float beta, const T *bias) {
    const int64_t total = m * n;
    for (int64_t i = fl_global_thread(); i < total; i += fl_global_stride()) {
        const int64_t r = i / n, col = i - r * n;
        T *out = c + r * ldc + col;
        float v = beta != 0.0f ? beta * fl_to_f32(*out) : 0.0f;
        if (bias) v += fl_to_f32(bias[col]);
        *out = fl_from_f32<T>(v);
    }
}

template <typename T>
__global__ void add_bias_kernel(T *y, int64_t ldy, int64_t m, int64_t n, const T *bias) {
    const int64_t total = m * n;
    for (int64_t i = fl_global_thread(); i < total; i += fl_global_stride()) {
        const int64_t r = i / n, col = i - r * n;
        T *out = y + r * ldy + col;
        *out = fl_from_f32<T>(fl_to_f32(*out) + fl_to_f32(bias[col]));
    }
}

/* ---- cuBLASLt plans ---------------------------------------------------------------------------- */

static cudaDataType_t lt_type(fl_dtype dtype) {
    switch (dtype) {
    case FL_F32: return CUDA_R_32F;
    case FL_BF16: return CUDA_R_16BF;
    default: fl_abort_at(__FILE__, __LINE__, "CUDA gemm: unsupported dtype %s", fl_dtype_name(dtype));
    }
}

/* Largest power of two dividing the address, clamped to 16 bytes: what cuBLASLt's kernels need
 * for their widest loads. Clamping keeps the algorithm choice of a shape independent of whether
 * its buffers happen to be 16- or 256-byte aligned. */
static uint32_t address_alignment(const void *p) {
    const uintptr_t addr = (uintptr_t)p;
    uint32_t align = 16;
    while (align > 1 && addr % align) align >>= 1;
    return align;
}

/* A stored operand in column-major terms: rows x cols with leading dimension ld. */
typedef struct lt_operand {
    const void *ptr;
    uint64_t rows, cols;
    int64_t ld;
} lt_operand;

/* What decides a plan. Every field is compared; padding is zeroed by memset. */
typedef struct lt_key {
    int32_t in_type, out_type, op_first, op_second;
    uint64_t m, n, k;
    int64_t ld_first, ld_second, ldd;
    uint32_t align_first, align_second, align_d;
    int32_t bias; /* 0: no epilogue; else the bias epilogue */
} lt_key;

typedef struct lt_plan {
    lt_key key;
    bool used;
    bool supported; /* false: no algorithm fits, take the tiled kernel */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

/* Open addressing over a power-of-two table; full at 3/4, then it is emptied (after a warning)
 * rather than grown: a workload with that many distinct shapes is not one step repeated. */
#define LT_PLAN_SLOTS 4096

struct fl_cuda_gemm_cache {
    lt_plan slots[LT_PLAN_SLOTS];
    int count;
    uint64_t lookups, misses;
    bool warned_fallback, warned_full;
};

static uint64_t key_hash(const lt_key *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void plan_release(lt_plan *p) {
    if (p->ld) cublasLtMatrixLayoutDestroy(p->ld);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
}

void fl_cuda_gemm_cache_destroy(fl_cuda_state *s) {
    if (!s->gemm_cache) return;
    for (int i = 0; i < LT_PLAN_SLOTS; i++)
        if (s->gemm_cache->slots[i].used) plan_release(&s->gemm_cache->slots[i]);
    free(s->gemm_cache);
    s->gemm_cache = NULL;
}

void fl_cuda_gemm_cache_stats(const fl_cuda_state *s, uint64_t *lookups, uint64_t *misses, int *plans) {
    const fl_cuda_gemm_cache *c = s->gemm_cache;
    *lookups = c ? c->lookups : 0;
    *misses = c ? c->misses : 0;
    *plans = c ? c->count : 0;
}

/* Builds the plan of key k: descriptor, layouts and the heuristic's first algorithm that needs no
 * more than the context's workspace (none: unsupported). */
static void plan_build(fl_cuda_state *s, lt_plan *p, const lt_key *k) {
    memset(p, 0, sizeof *p);
    p->key = *k;
    p->used = true;
    const cudaDataType_t in_type = (cudaDataType_t)k->in_type, out_type = (cudaDataType_t)k->out_type;
    CHECK_CUBLAS(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &k->op_first, sizeof k->op_first));
    CHECK_CUBLAS(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &k->op_second, sizeof k->op_second));
    if (k->bias) {
        const int32_t epilogue = (int32_t)CUBLASLT_EPILOGUE_BIAS, bias_type = k->out_type;
        CHECK_CUBLAS(
            cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                    sizeof bias_type));
    }
    const uint64_t first_rows = k->op_first == CUBLAS_OP_N ? k->m : k->k, first_cols = k->op_first == CUBLAS_OP_N ? k->k : k->m;
    const uint64_t second_rows = k->op_second == CUBLAS_OP_N ? k->k : k->n,
                   second_cols = k->op_second == CUBLAS_OP_N ? k->n : k->k;
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->la, in_type, first_rows, first_cols, k->ld_first));
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->lb, in_type, second_rows, second_cols, k->ld_second));
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&p->ld, out_type, k->m, k->n, k->ldd));

    cublasLtMatmulPreference_t pref = NULL;
    CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t workspace = FL_CUDA_WORKSPACE_BYTES;
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                      sizeof workspace));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &k->align_first, sizeof k->align_first));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &k->align_second, sizeof k->align_second));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k->align_d,
                                                      sizeof k->align_d));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k->align_d,
                                                      sizeof k->align_d));
    cublasLtMatmulHeuristicResult_t heuristics[4];
    int found = 0;
    cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(s->lt, p->desc, p->la, p->lb, p->ld, p->ld, pref, 4, heuristics, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) CHECK_CUBLAS(st);
    for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found && !p->supported; i++) {
        if (heuristics[i].state != CUBLAS_STATUS_SUCCESS || heuristics[i].workspaceSize > workspace) continue;
        p->algo = heuristics[i].algo;
        p->supported = true;
    }
}

/* The plan of key k, built on first use. */
static lt_plan *plan_get(fl_cuda_state *s, const lt_key *k) {
    if (!s->gemm_cache) {
        s->gemm_cache = (fl_cuda_gemm_cache *)calloc(1, sizeof *s->gemm_cache);
        FL_CHECKF(s->gemm_cache, "out of host memory for the cuBLASLt plan cache");
    }
    fl_cuda_gemm_cache *c = s->gemm_cache;
    c->lookups++;
    const uint64_t mask = LT_PLAN_SLOTS - 1;
    uint64_t i = key_hash(k) & mask;
    for (; c->slots[i].used; i = (i + 1) & mask)
        if (!memcmp(&c->slots[i].key, k, sizeof *k)) return &c->slots[i];
    if (c->count >= LT_PLAN_SLOTS * 3 / 4) {
        if (!c->warned_full)
            fl_log_warn("cuda: %d distinct matrix-product shapes in one context; the cuBLASLt plan cache starts over",
                        c->count);
        c->warned_full = true;
        for (int j = 0; j < LT_PLAN_SLOTS; j++)
            if (c->slots[j].used) plan_release(&c->slots[j]);
        c->count = 0;
        i = key_hash(k) & mask;
    }
    c->misses++;
    c->count++;
    plan_build(s, &c->slots[i], k);
    return &c->slots[i];
}

/* Column-major D[m, n] = alpha * op(first) op(second) + beta * D (+ bias[m] per row of D, i.e.
 * per column of the row-major result). Returns false when cuBLASLt has no algorithm for the
 * problem; any failure of a planned product aborts. */
static bool lt_matmul(fl_cuda_state *s, cudaDataType_t in_type, cudaDataType_t out_type, cublasOperation_t op_first,
                      lt_operand first, cublasOperation_t op_second, lt_operand second, void *d, uint64_t m,
                      uint64_t n, uint64_t k, int64_t ldd, float alpha, float beta, const void *bias) {
    lt_key key;
    memset(&key, 0, sizeof key);
    key.in_type = (int32_t)in_type;
    key.out_type = (int32_t)out_type;
    key.op_first = (int32_t)op_first;
    key.op_second = (int32_t)op_second;
    key.m = m, key.n = n, key.k = k;
    key.ld_first = first.ld, key.ld_second = second.ld, key.ldd = ldd;
    key.align_first = address_alignment(first.ptr);
    key.align_second = address_alignment(second.ptr);
    key.align_d = address_alignment(d);
    key.bias = bias != NULL;
    lt_plan *p = plan_get(s, &key);
    if (!p->supported) return false;
    if (bias) CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    const cublasStatus_t st = cublasLtMatmul(s->lt, p->desc, &alpha, first.ptr, p->la, second.ptr, p->lb, &beta, d,
                                             p->ld, d, p->ld, &p->algo, s->workspace, FL_CUDA_WORKSPACE_BYTES, s->stream);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED) { /* the heuristic's pick refused to run: never offer it again */
        p->supported = false;
        return false;
    }
    CHECK_CUBLAS(st);
    return true;
}

/* ---- the shared driver ------------------------------------------------------------------------ */

/* Runs the statements in ... with TI, TO bound to the storage types of the operands and of the
 * result: (F32, F32), (BF16, BF16) or (BF16, F32), the pairs ops.c admits. */
#define GEMM_DISPATCH(in, out, ...)                                                                      \
    do {                                                                                                 \
        if ((in) == FL_BF16 && (out) == FL_F32) {                                                        \
            typedef __nv_bfloat16 TI;                                                                    \
            typedef float TO;                                                                            \
            __VA_ARGS__;                                                                                 \
        } else {                                                                                         \
            FL_CHECKF((in) == (out), "CUDA gemm: operands %s with result %s", fl_dtype_name(in),        \
                      fl_dtype_name(out));                                                               \
            FL_CUDA_DISPATCH(in, TI, {                                                                   \
                typedef TI TO;                                                                           \
                __VA_ARGS__;                                                                             \
            });                                                                                          \
        }                                                                                                \
    } while (0)

/* Row-major C[M, N] = alpha * op(A)[M, K] op(B)[K, N] + beta * C (+ bias[N]); A and B stored as
 * in_dtype, C and the bias as out_dtype. */
static void run_gemm(fl_cuda_state *s, fl_dtype in_dtype, fl_dtype out_dtype, const void *a, fl_matrix ma,
                     bool trans_a, const void *b, fl_matrix mb, bool trans_b, void *c, fl_matrix mc, int64_t k,
                     float alpha, float beta, const void *bias) {
    const int64_t m = mc.rows, n = mc.cols;
    if (m == 0 || n == 0) return;
    if (k == 0 || alpha == 0.0f) { /* BLAS convention: A and B are not read */
        FL_CUDA_DISPATCH(out_dtype, T,
                         scale_or_bias_kernel<T><<<fl_cuda_grid(s, m * n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                   s->stream>>>((T *)c, mc.ld, m, n, beta, (const T *)bias));
        CHECK_LAUNCH();
        return;
    }
    const cudaDataType_t in_type = lt_type(in_dtype), out_type = lt_type(out_dtype);
    const lt_operand first = {b, (uint64_t)mb.cols, (uint64_t)mb.rows, mb.ld};
    const lt_operand second = {a, (uint64_t)ma.cols, (uint64_t)ma.rows, ma.ld};
    const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;

    /* The bias epilogue reads the vector with wide loads: only offer it an aligned one. */
    if (bias && address_alignment(bias) >= 16 &&
        lt_matmul(s, in_type, out_type, op_first, first, op_second, second, c, (uint64_t)n, (uint64_t)m,
                  (uint64_t)k, mc.ld, alpha, beta, bias))
        return;
    if (lt_matmul(s, in_type, out_type, op_first, first, op_second, second, c, (uint64_t)n, (uint64_t)m, (uint64_t)k,
                  mc.ld, alpha, beta, NULL)) {
        if (bias) {
            FL_CUDA_DISPATCH(out_dtype, T,
                             add_bias_kernel<T><<<fl_cuda_grid(s, m * n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                  s->stream>>>((T *)c, mc.ld, m, n, (const T *)bias));
            CHECK_LAUNCH();
        }
        return;
    }
    if (!s->gemm_cache->warned_fallback)
        fl_log_warn("cuda: cuBLASLt has no algorithm for a %s product [%lld x %lld] x [%lld x %lld] (row strides "
                    "%lld, %lld, %lld); the tiled fallback kernel computes it, 50-100x slower (logged once)",
                    fl_dtype_name(in_dtype), (long long)m, (long long)k, (long long)k, (long long)n,
                    (long long)ma.ld, (long long)mb.ld, (long long)mc.ld);
    s->gemm_cache->warned_fallback = true;
    s->gemm_fallbacks++;
    const int64_t m_tiles = (m + GEMM_TILE - 1) / GEMM_TILE, n_tiles = (n + GEMM_TILE - 1) / GEMM_TILE;
    dim3 grid((unsigned)(n_tiles < 65535 ? n_tiles : 65535), (unsigned)(m_tiles < 65535 ? m_tiles : 65535));
    dim3 block(GEMM_TILE, GEMM_TILE);
    GEMM_DISPATCH(in_dtype, out_dtype,
                  gemm_fallback_kernel<TI, TO><<<grid, block, 0, s->stream>>>(
                      (const TI *)a, ma.ld, trans_a, (const TI *)b, mb.ld, trans_b, (TO *)c, mc.ld, m, n, k, alpha,
                      beta, (const TO *)bias));
    CHECK_LAUNCH();
}

/* ---- ops -------------------------------------------------------------------------------------- */

void fl_cuda_gemm(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b, fl_tensor *c,
                  float alpha, float beta) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix ma = fl_cuda_matrix(a), mb = fl_cuda_matrix(b), mc = fl_cuda_matrix(c);
    const int64_t k = trans_a ? ma.rows : ma.cols;
    run_gemm(s, a->dtype, c->dtype, a->data, ma, trans_a, b->data, mb, trans_b, c->data, mc, k, alpha, beta, NULL);
}

void fl_cuda_linear(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix mx = fl_cuda_matrix(x), my = fl_cuda_matrix(y);
    const fl_matrix mw = {w->shape[0], w->shape[1], w->shape[1]}; /* [out, in], contiguous */
    run_gemm(s, x->dtype, y->dtype, x->data, mx, false, w->data, mw, true, y->data, my, mw.cols, 1.0f, 0.0f,
             bias ? bias->data : NULL);
}

template <typename T> struct matrix_value {
    const T *p;
    int64_t ld;
    __device__ float operator()(int64_t, int64_t r, int64_t c) const { return fl_to_f32(p[r * ld + c]); }
};

void fl_cuda_bias_grad(fl_ctx *ctx, const fl_tensor *dy, fl_tensor *db) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix m = fl_cuda_matrix(dy);
    FL_CUDA_DISPATCH(dy->dtype, T, {
        const matrix_value<T> f = {(const T *)dy->data, m.ld};
        fl_cuda_colsum(s, f, 1, m.rows, m.cols, (T *)db->data, m.cols, true);
    });
}
