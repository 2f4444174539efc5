/*
 * cuda_gemm.cu — matrix products on CUDA: gemm and linear through cuBLASLt (fp32 compute for F32
 * and BF16 storage, bias epilogue for linear), and bias_grad as a deterministic column sum.
 *
 * flashlora's matrices are row-major with a row stride; cuBLASLt is column-major. A row-major
 * [r, c] matrix with row stride ld is the column-major [c, r] matrix with leading dimension ld, so
 * row-major C = op(A) op(B) is computed as column-major C^T = op(B)^T op(A)^T: B's memory is the
 * first cuBLASLt operand, A's the second, and each keeps its own transpose flag.
 *
 * When cuBLASLt offers no algorithm for a layout (unusual alignment or strides), a plain tiled
 * kernel computes the same product; linear falls back to a separate bias pass when the bias
 * epilogue is unavailable.
 */
#include "kernels/cuda/cuda_common.cuh"

/* ---- fallback kernels ------------------------------------------------------------------------- */

#define GEMM_TILE 16

/* C[M, N] = alpha * op(A) op(B) + beta * C (+ bias[n]); C is read only when beta != 0. */
template <typename T>
__global__ void __launch_bounds__(GEMM_TILE *GEMM_TILE)
    gemm_fallback_kernel(const T *a, int64_t lda, bool ta, const T *b, int64_t ldb, bool tb, T *c, int64_t ldc,
                         int64_t m, int64_t n, int64_t k, float alpha, float beta, const T *bias) {
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
                T *out = c + row * ldc + col;
                if (beta != 0.0f) v += beta * fl_to_f32(*out);
                if (bias) v += fl_to_f32(bias[col]);
                *out = fl_from_f32<T>(v);
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

/* ---- cuBLASLt --------------------------------------------------------------------------------- */

static cudaDataType_t lt_type(fl_dtype dtype) {
    switch (dtype) {
    case FL_F32: return CUDA_R_32F;
    case FL_BF16: return CUDA_R_16BF;
    default: fl_abort_at(__FILE__, __LINE__, "CUDA gemm: unsupported dtype %s", fl_dtype_name(dtype));
    }
}

/* Largest power of two (up to 256) dividing the address: cuBLASLt must know operand alignment. */
static uint32_t address_alignment(const void *p) {
    const uintptr_t addr = (uintptr_t)p;
    uint32_t align = 256;
    while (align > 1 && addr % align) align >>= 1;
    return align;
}

/* A stored operand in column-major terms: rows x cols with leading dimension ld. */
typedef struct lt_operand {
    const void *ptr;
    uint64_t rows, cols;
    int64_t ld;
} lt_operand;

/* Column-major D[m, n] = alpha * op(first) op(second) + beta * D (+ bias[m] per row of D, i.e.
 * per column of the row-major result). Returns CUBLAS_STATUS_NOT_SUPPORTED when cuBLASLt has no
 * algorithm for the problem; any other failure aborts. */
static cublasStatus_t lt_matmul(fl_cuda_state *s, cudaDataType_t type, cublasOperation_t op_first, lt_operand first,
                                cublasOperation_t op_second, lt_operand second, void *d, uint64_t m, uint64_t n,
                                int64_t ldd, float alpha, float beta, const void *bias) {
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t ta = (int32_t)op_first, tb = (int32_t)op_second;
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (bias) {
        const int32_t epilogue = (int32_t)CUBLASLT_EPILOGUE_BIAS;
        const int32_t bias_type = (int32_t)type;
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        CHECK_CUBLAS(
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type));
    }
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&la, type, first.rows, first.cols, first.ld));
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lb, type, second.rows, second.cols, second.ld));
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&ld, type, m, n, ldd));

    CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t workspace = FL_CUDA_WORKSPACE_BYTES;
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                      sizeof workspace));
    const uint32_t align_a = address_alignment(first.ptr), align_b = address_alignment(second.ptr);
    const uint32_t align_d = address_alignment(d);
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                      sizeof align_a));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                      sizeof align_b));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                      sizeof align_d));
    CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                      sizeof align_d));

    cublasLtMatmulHeuristicResult_t heuristics[4];
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(s->lt, desc, la, lb, ld, ld, pref, 4, heuristics, &found);
    if (st == CUBLAS_STATUS_SUCCESS || st == CUBLAS_STATUS_NOT_SUPPORTED) {
        cublasStatus_t run = CUBLAS_STATUS_NOT_SUPPORTED;
        for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found && run == CUBLAS_STATUS_NOT_SUPPORTED; i++) {
            if (heuristics[i].state != CUBLAS_STATUS_SUCCESS || heuristics[i].workspaceSize > workspace) continue;
            run = cublasLtMatmul(s->lt, desc, &alpha, first.ptr, la, second.ptr, lb, &beta, d, ld, d, ld,
                                 &heuristics[i].algo, s->workspace, FL_CUDA_WORKSPACE_BYTES, s->stream);
        }
        st = run;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(desc);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) CHECK_CUBLAS(st);
    return st;
}

/* ---- the shared driver ------------------------------------------------------------------------ */

/* Row-major C[M, N] = alpha * op(A)[M, K] op(B)[K, N] + beta * C (+ bias[N]). */
static void run_gemm(fl_cuda_state *s, fl_dtype dtype, const void *a, fl_matrix ma, bool trans_a, const void *b,
                     fl_matrix mb, bool trans_b, void *c, fl_matrix mc, int64_t k, float alpha, float beta,
                     const void *bias) {
    const int64_t m = mc.rows, n = mc.cols;
    if (m == 0 || n == 0) return;
    if (k == 0 || alpha == 0.0f) { /* BLAS convention: A and B are not read */
        FL_CUDA_DISPATCH(dtype, T,
                         scale_or_bias_kernel<T><<<fl_cuda_grid(s, m * n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                   s->stream>>>((T *)c, mc.ld, m, n, beta, (const T *)bias));
        CHECK_LAUNCH();
        return;
    }
    const cudaDataType_t type = lt_type(dtype);
    const lt_operand first = {b, (uint64_t)mb.cols, (uint64_t)mb.rows, mb.ld};
    const lt_operand second = {a, (uint64_t)ma.cols, (uint64_t)ma.rows, ma.ld};
    const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;

    /* The bias epilogue reads the vector with wide loads: only offer it an aligned one. */
    if (bias && address_alignment(bias) >= 16 &&
        lt_matmul(s, type, op_first, first, op_second, second, c, (uint64_t)n, (uint64_t)m, mc.ld, alpha, beta,
                  bias) == CUBLAS_STATUS_SUCCESS)
        return;
    if (lt_matmul(s, type, op_first, first, op_second, second, c, (uint64_t)n, (uint64_t)m, mc.ld, alpha, beta,
                  NULL) == CUBLAS_STATUS_SUCCESS) {
        if (bias) {
            FL_CUDA_DISPATCH(dtype, T,
                             add_bias_kernel<T><<<fl_cuda_grid(s, m * n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                  s->stream>>>((T *)c, mc.ld, m, n, (const T *)bias));
            CHECK_LAUNCH();
        }
        return;
    }
    const int64_t m_tiles = (m + GEMM_TILE - 1) / GEMM_TILE, n_tiles = (n + GEMM_TILE - 1) / GEMM_TILE;
    dim3 grid((unsigned)(n_tiles < 65535 ? n_tiles : 65535), (unsigned)(m_tiles < 65535 ? m_tiles : 65535));
    dim3 block(GEMM_TILE, GEMM_TILE);
    FL_CUDA_DISPATCH(dtype, T,
                     gemm_fallback_kernel<T><<<grid, block, 0, s->stream>>>(
                         (const T *)a, ma.ld, trans_a, (const T *)b, mb.ld, trans_b, (T *)c, mc.ld, m, n, k, alpha,
                         beta, (const T *)bias));
    CHECK_LAUNCH();
}

/* ---- ops -------------------------------------------------------------------------------------- */

void fl_cuda_gemm(fl_ctx *ctx, const fl_tensor *a, bool trans_a, const fl_tensor *b, bool trans_b, fl_tensor *c,
                  float alpha, float beta) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix ma = fl_cuda_matrix(a), mb = fl_cuda_matrix(b), mc = fl_cuda_matrix(c);
    const int64_t k = trans_a ? ma.rows : ma.cols;
    run_gemm(s, c->dtype, a->data, ma, trans_a, b->data, mb, trans_b, c->data, mc, k, alpha, beta, NULL);
}

void fl_cuda_linear(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const fl_matrix mx = fl_cuda_matrix(x), my = fl_cuda_matrix(y);
    const fl_matrix mw = {w->shape[0], w->shape[1], w->shape[1]}; /* [out, in], contiguous */
    run_gemm(s, y->dtype, x->data, mx, false, w->data, mw, true, y->data, my, mw.cols, 1.0f, 0.0f,
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
