/*
 * cpu_vexp.c — exp over arrays for the CPU backend: the softmax of attention and the GELU/SiLU
 * gates spend most of their time in exp.
 *
 * On a CPU with AVX-512F (checked at run time; the build needs no -march flag) sixteen lanes at a
 * time compute exp(x) = 2^n * p(r) with n = round(x log2 e), r = x - n ln 2 (ln 2 split in two
 * for exactness) and the degree-7 polynomial of Cephes' expf (max relative error about 2 ulp);
 * the tail runs masked through the same instructions, so every element's result depends only on
 * its own input, never on its position or the array's length. Inputs are clamped to [-104, 100]
 * first (2^n then saturates to 0 or infinity exactly as expf does) and NaN passes through.
 * Elsewhere the loops call expf.
 */
#include <math.h>

#include "kernels/cpu/cpu_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FL_VEXP_AVX512 1
#include <immintrin.h>

__attribute__((target("avx512f"))) static inline __m512 exp16(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f), c1 = _mm512_set1_ps(0.693359375f),
                 c2 = _mm512_set1_ps(-2.12194440e-4f);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(100.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, c1, xc);
    r = _mm512_fnmadd_ps(n, c2, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_mask_mov_ps(_mm512_scalef_ps(p, n), nan, x);
}

__attribute__((target("avx512f"))) static float exp_sub_avx512(const float *x, float *y, int64_t n, float sub) {
    const __m512 s = _mm512_set1_ps(sub);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
        _mm512_storeu_ps(y + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
        _mm512_mask_storeu_ps(y + i, m, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
    }
    return _mm512_reduce_add_ps(acc);
}

static bool have_avx512(void) {
    return __builtin_cpu_supports("avx512f");
}
#endif

float fl_cpu_exp_sub(const float *x, float *y, int64_t n, float sub) {
#ifdef FL_VEXP_AVX512
    if (have_avx512()) return exp_sub_avx512(x, y, n, sub);
#endif
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        y[i] = expf(x[i] - sub);
        sum += y[i];
    }
    return (float)sum;
}

bool fl_cpu_exp_is_vector(void) {
#ifdef FL_VEXP_AVX512
    return have_avx512();
#else
    return false;
#endif
}
