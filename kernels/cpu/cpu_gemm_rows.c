/*
 * cpu_gemm_rows.c — the batch-invariant linear of the CPU backend: y = x w^T + bias where every
 * output element is computed by one fixed sequence of operations, whatever the number of rows in
 * the call, the row's position in it, the thread count or the instruction set.
 *
 * Why: a BLAS GEMM picks kernels and blockings by problem size, so a row's rounding changes with
 * the batch it sits in. Generation batches requests that must each get bitwise the image they get
 * alone; with this product one call serves a whole mixed batch (models/flux_step.c).
 *
 * The arithmetic of y[i][j]: acc = bias[j] (0 without bias); for p = 0 .. k-1 in order,
 * acc = fma(x[i][p], w[j][p], acc); y[i][j] = acc. One fused multiply-add per step is exactly
 * rounded, so every implementation of that chain gives the same bits: the scalar reference below
 * (fmaf), and the AVX2 and AVX-512 kernels that run it for many (i, j) at once. The depth is
 * never split (not across threads, not into partial sums), so the partition of the work over
 * threads and tiles changes nothing.
 *
 * Layout: w [n, k] is packed per call into panels of ROWS_NR = 32 output columns, panel q holding
 * w[q*32 + c][p] at [p*32 + c] (zero past n), so a kernel reads one contiguous 32-wide row of the
 * panel per depth step and broadcasts x[i][p] against it. A kernel tile is up to ROWS_MR rows by
 * one panel; the tasks (a chunk of rows by a group of panels) are shared among the OpenMP threads.
 * The instruction set is chosen once at run time from the CPU's features (cpuid through the
 * compiler's builtin); the scalar kernel is the portable fallback and the reference.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ROWS_X86 1
#include <immintrin.h>
#endif

enum {
    ROWS_NR = 32,   /* output columns per packed panel */
    ROWS_MR = 12,   /* rows per kernel tile (AVX-512: 24 accumulators) */
    ROWS_MC = 96,   /* rows per task */
    ROWS_NG = 4,    /* panels per task */
};
/* Multiply-adds below which one thread does the whole product (about 20 us of work). */
#define ROWS_PARALLEL_MIN ((int64_t)1 << 22)

static int64_t imin(int64_t a, int64_t b) {
    return a < b ? a : b;
}

const char *fl_cpu_rows_isa_name(fl_cpu_rows_isa isa) {
    switch (isa) {
    case FL_CPU_ROWS_SCALAR: return "scalar";
    case FL_CPU_ROWS_AVX2: return "avx2+fma";
    case FL_CPU_ROWS_AVX512: return "avx512f";
    }
    return "?";
}

bool fl_cpu_rows_isa_supported(fl_cpu_rows_isa isa) {
    switch (isa) {
    case FL_CPU_ROWS_SCALAR: return true;
#ifdef ROWS_X86
    case FL_CPU_ROWS_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case FL_CPU_ROWS_AVX512: return __builtin_cpu_supports("avx512f");
#else
    default: return false;
#endif
    }
    return false;
}

fl_cpu_rows_isa fl_cpu_rows_isa_best(void) {
    if (fl_cpu_rows_isa_supported(FL_CPU_ROWS_AVX512)) return FL_CPU_ROWS_AVX512;
    if (fl_cpu_rows_isa_supported(FL_CPU_ROWS_AVX2)) return FL_CPU_ROWS_AVX2;
    return FL_CPU_ROWS_SCALAR;
}

/* ---- packing ----------------------------------------------------------------------------- */

/* Panel q of w: packed[q*k*32 + p*32 + c] = w[(q*32 + c) * ldw + p], zero past n. */
static void pack_panel(int64_t q, int64_t n, int64_t k, const float *w, int64_t ldw, float *packed) {
    int64_t j0 = q * ROWS_NR, cols = imin(ROWS_NR, n - j0);
    float *dst = packed + q * k * ROWS_NR;
    if (cols < ROWS_NR) memset(dst, 0, (size_t)(k * ROWS_NR) * sizeof(float));
    enum { PB = 64 }; /* depth block: 32 rows of w x 64 floats are read, 64 x 32 written */
    for (int64_t p0 = 0; p0 < k; p0 += PB) {
        int64_t pb = imin(PB, k - p0);
        for (int64_t c = 0; c < cols; c++) {
            const float *src = w + (j0 + c) * ldw + p0;
            float *d = dst + p0 * ROWS_NR + c;
            for (int64_t p = 0; p < pb; p++) d[p * ROWS_NR] = src[p];
        }
    }
}

#ifdef ROWS_X86
/* 16 x 16 transpose in registers: r[i] holds row i on entry, column i on return. */
__attribute__((target("avx512f"), always_inline)) static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4g + s], lane L: column 4L + s of rows 4g .. 4g+3 */
    for (int g = 0; g < 4; g++) {
        __m512 a = t[4 * g], b = t[4 * g + 1], c = t[4 * g + 2], d = t[4 * g + 3];
        u[4 * g + 0] = _mm512_shuffle_ps(a, c, 0x44);
        u[4 * g + 1] = _mm512_shuffle_ps(a, c, 0xEE);
        u[4 * g + 2] = _mm512_shuffle_ps(b, d, 0x44);
        u[4 * g + 3] = _mm512_shuffle_ps(b, d, 0xEE);
    }
    for (int s = 0; s < 4; s++) {
        __m512 v02 = _mm512_shuffle_f32x4(u[s], u[4 + s], 0x88), v13 = _mm512_shuffle_f32x4(u[s], u[4 + s], 0xDD);
        __m512 w02 = _mm512_shuffle_f32x4(u[8 + s], u[12 + s], 0x88), w13 = _mm512_shuffle_f32x4(u[8 + s], u[12 + s], 0xDD);
        r[s] = _mm512_shuffle_f32x4(v02, w02, 0x88);      /* column s      (lane 0) */
        r[8 + s] = _mm512_shuffle_f32x4(v02, w02, 0xDD);  /* column 8 + s  (lane 2) */
        r[4 + s] = _mm512_shuffle_f32x4(v13, w13, 0x88);  /* column 4 + s  (lane 1) */
        r[12 + s] = _mm512_shuffle_f32x4(v13, w13, 0xDD); /* column 12 + s (lane 3) */
    }
}

/* pack_panel through 16 x 16 register transposes; the ragged edges (columns past n, depth past
 * a multiple of 16) are copied element by element. Same result as pack_panel. */
__attribute__((target("avx512f"))) static void pack_panel_avx512(int64_t q, int64_t n, int64_t k, const float *w,
                                                                  int64_t ldw, float *packed) {
    int64_t j0 = q * ROWS_NR, cols = imin(ROWS_NR, n - j0), k16 = k / 16 * 16;
    float *dst = packed + q * k * ROWS_NR;
    if (cols < ROWS_NR) memset(dst, 0, (size_t)(k * ROWS_NR) * sizeof(float));
    int64_t c16 = cols / 16 * 16;
    for (int64_t c0 = 0; c0 < c16; c0 += 16)
        for (int64_t p0 = 0; p0 < k16; p0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(w + (j0 + c0 + i) * ldw + p0);
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + (p0 + i) * ROWS_NR + c0, r[i]);
        }
    for (int64_t c = 0; c < cols; c++) {
        const float *src = w + (j0 + c) * ldw;
        for (int64_t p = c < c16 ? k16 : 0; p < k; p++) dst[p * ROWS_NR + c] = src[p];
    }
}
#endif

/* ---- kernels: rows x one panel ------------------------------------------------------------ */

/* The reference: the chain of the header for a rows x cols tile. */
static void tile_scalar(int rows, int cols, int64_t k, const float *x, int64_t ldx, const float *panel,
                        const float *bias, float *y, int64_t ldy) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            float acc = bias ? bias[c] : 0.0f;
            const float *xr = x + r * ldx;
            for (int64_t p = 0; p < k; p++) acc = fmaf(xr[p], panel[p * ROWS_NR + c], acc);
            y[r * ldy + c] = acc;
        }
}

#ifdef ROWS_X86
/* AVX-512: ROWS rows x 32 columns in 2*ROWS zmm accumulators. Inlined with a constant ROWS so the
 * accumulators live in registers. */
__attribute__((target("avx512f"), always_inline)) static inline void
tile512(const int rows, int cols, int64_t k, const float *x, int64_t ldx, const float *panel, const float *bias,
        float *y, int64_t ldy) {
    __m512 acc[ROWS_MR][2];
    __mmask16 m0 = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1u);
    __mmask16 m1 = cols >= 32 ? (__mmask16)0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1u);
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < rows; r++) acc[r][0] = b0, acc[r][1] = b1;
    for (int64_t p = 0; p < k; p++) {
        __m512 w0 = _mm512_loadu_ps(panel + p * ROWS_NR), w1 = _mm512_loadu_ps(panel + p * ROWS_NR + 16);
        for (int r = 0; r < rows; r++) {
            __m512 xv = _mm512_set1_ps(x[r * ldx + p]);
            acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
        _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
    }
}

__attribute__((target("avx512f"))) static void tile_avx512(int rows, int cols, int64_t k, const float *x,
                                                            int64_t ldx, const float *panel, const float *bias,
                                                            float *y, int64_t ldy) {
    switch (rows) {
#define ROWS_CASE(R) \
    case R: tile512(R, cols, k, x, ldx, panel, bias, y, ldy); break;
        ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4) ROWS_CASE(5) ROWS_CASE(6)
        ROWS_CASE(7) ROWS_CASE(8) ROWS_CASE(9) ROWS_CASE(10) ROWS_CASE(11) ROWS_CASE(12)
#undef ROWS_CASE
    default: FL_CHECKF(0, "tile of %d rows", rows);
    }
}

/* AVX2: ROWS rows (at most 3) x 32 columns in 4*ROWS ymm accumulators. Partial columns go through
 * a zero-padded copy of the tile: the panel is already zero past n, only the stores are partial. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
tile256(const int rows, int cols, int64_t k, const float *x, int64_t ldx, const float *panel, const float *bias,
        float *y, int64_t ldy) {
    __m256 acc[3][4];
    float init[ROWS_NR] = {0};
    if (bias) memcpy(init, bias, (size_t)cols * sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) acc[r][v] = _mm256_loadu_ps(init + 8 * v);
    for (int64_t p = 0; p < k; p++) {
        const float *wp = panel + p * ROWS_NR;
        __m256 w0 = _mm256_loadu_ps(wp), w1 = _mm256_loadu_ps(wp + 8), w2 = _mm256_loadu_ps(wp + 16),
               w3 = _mm256_loadu_ps(wp + 24);
        for (int r = 0; r < rows; r++) {
            __m256 xv = _mm256_broadcast_ss(x + r * ldx + p);
            acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(xv, w2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(xv, w3, acc[r][3]);
        }
    }
    for (int r = 0; r < rows; r++) {
        if (cols == ROWS_NR) {
            for (int v = 0; v < 4; v++) _mm256_storeu_ps(y + r * ldy + 8 * v, acc[r][v]);
        } else {
            float out[ROWS_NR];
            for (int v = 0; v < 4; v++) _mm256_storeu_ps(out + 8 * v, acc[r][v]);
            memcpy(y + r * ldy, out, (size_t)cols * sizeof(float));
        }
    }
}

__attribute__((target("avx2,fma"))) static void tile_avx2(int rows, int cols, int64_t k, const float *x,
                                                          int64_t ldx, const float *panel, const float *bias,
                                                          float *y, int64_t ldy) {
    int r = 0;
    for (; r + 3 <= rows; r += 3) tile256(3, cols, k, x + r * ldx, ldx, panel, bias, y + r * ldy, ldy);
    if (rows - r == 2) tile256(2, cols, k, x + r * ldx, ldx, panel, bias, y + r * ldy, ldy);
    else if (rows - r == 1) tile256(1, cols, k, x + r * ldx, ldx, panel, bias, y + r * ldy, ldy);
}
#endif

typedef void (*tile_fn)(int rows, int cols, int64_t k, const float *x, int64_t ldx, const float *panel,
                        const float *bias, float *y, int64_t ldy);

static tile_fn tile_for(fl_cpu_rows_isa isa) {
#ifdef ROWS_X86
    if (isa == FL_CPU_ROWS_AVX512) return tile_avx512;
    if (isa == FL_CPU_ROWS_AVX2) return tile_avx2;
#endif
    (void)isa;
    return tile_scalar;
}

/* ---- the product ------------------------------------------------------------------------- */

void fl_cpu_sgemm_rows(fl_cpu_rows_isa isa, int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx,
                       const float *w, int64_t ldw, const float *bias, float *y, int64_t ldy) {
    if (m <= 0 || n <= 0) return;
    FL_CHECKF(fl_cpu_rows_isa_supported(isa), "the CPU lacks %s", fl_cpu_rows_isa_name(isa));
    tile_fn tile = tile_for(isa);
    void (*pack)(int64_t, int64_t, int64_t, const float *, int64_t, float *) = pack_panel;
#ifdef ROWS_X86
    if (isa == FL_CPU_ROWS_AVX512) pack = pack_panel_avx512;
#endif
    int64_t panels = (n + ROWS_NR - 1) / ROWS_NR;
    float *packed = NULL;
    if (k > 0) {
        packed = aligned_alloc(64, (size_t)(panels * k * ROWS_NR) * sizeof(float));
        FL_CHECKF(packed != NULL, "out of memory packing a %lld x %lld weight", (long long)n, (long long)k);
    }
    int64_t row_chunks = (m + ROWS_MC - 1) / ROWS_MC, groups = (panels + ROWS_NG - 1) / ROWS_NG;
    int64_t tasks = row_chunks * groups;
    /* One parallel region for packing and products; small products stay on the calling thread,
     * where a region's start and barrier would cost more than they save. */
    FL_OMP(omp parallel if (m * n * k >= ROWS_PARALLEL_MIN && (tasks > 1 || panels > 1)))
    {
        if (k > 0) {
            FL_OMP(omp for schedule(static))
            for (int64_t q = 0; q < panels; q++) pack(q, n, k, w, ldw, packed);
        }
        FL_OMP(omp for schedule(dynamic))
        for (int64_t t = 0; t < tasks; t++) {
            int64_t i0 = (t / groups) * ROWS_MC, i1 = imin(m, i0 + ROWS_MC);
            int64_t q0 = (t % groups) * ROWS_NG, q1 = imin(panels, q0 + ROWS_NG);
            for (int64_t q = q0; q < q1; q++) {
                int64_t j0 = q * ROWS_NR;
                int cols = (int)imin(ROWS_NR, n - j0);
                const float *bq = bias ? bias + j0 : NULL;
                if (k == 0) { /* the chain is empty: y is the bias */
                    for (int64_t i = i0; i < i1; i++)
                        for (int c = 0; c < cols; c++) y[i * ldy + j0 + c] = bq ? bq[c] : 0.0f;
                    continue;
                }
                const float *panel = packed + q * k * ROWS_NR;
                for (int64_t i = i0; i < i1; i += ROWS_MR) {
                    int rows = (int)imin(ROWS_MR, i1 - i);
                    tile(rows, cols, k, x + i * ldx, ldx, panel, bq, y + i * ldy + j0, ldy);
                }
            }
        }
    }
    free(packed);
}

static fl_cpu_rows_isa cpu_isa(fl_ctx *ctx) {
    (void)ctx;
    static int chosen = -1; /* the CPU does not change under a running process */
    int isa = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (isa < 0) {
        isa = (int)fl_cpu_rows_isa_best();
        __atomic_store_n(&chosen, isa, __ATOMIC_RELAXED);
    }
    return (fl_cpu_rows_isa)isa;
}

void fl_cpu_linear_rows(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *w, const fl_tensor *bias, fl_tensor *y) {
    fl_matrix mx = fl_cpu_matrix(x), my = fl_cpu_matrix(y);
    int64_t out = w->shape[0], in = w->shape[1];
    fl_cpu_sgemm_rows(cpu_isa(ctx), my.rows, out, in, x->data, mx.ld, w->data, in, bias ? bias->data : NULL,
                      y->data, my.ld);
}
