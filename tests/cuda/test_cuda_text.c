/*
 * test_cuda_text.c — parity of the CUDA text-encoder ops with the CPU reference, in F32 and BF16
 * storage: embedding gather into a strided view, LayerNorm with weight and bias (in place too),
 * attention with a shared [H, L, L] or per-batch bias, a causal mask, both and neither, at head
 * dims 16 to 512 and lengths that are not multiples of the tiles (77 and 512 as CLIP and T5 use),
 * quick-GELU, exact GELU and the product on strided views. Exits 77 where no CUDA device is usable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "parity.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static void test_embedding(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t V = 50, D = 96, N = 77;
        int32_t ids[77];
        for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 37 + 11) % V);
        pt_pair table = pt_randn(dt, 2, SHAPE(V, D), 1, 1.0f);
        pt_pair out = pt_randn(dt, 2, SHAPE(N, D + 8), 2, 1.0f);
        fl_tensor ov[2];
        pt_slice(&out, 1, 3, D, ov);
        for (int s = 0; s < 2; s++) fl_op_embedding(pt_ctx(s), &table.t[s], ids, N, &ov[s]);
        PT_CHECK("embedding", &out, (pt_tol){0, 0});
        pt_free(&table);
        pt_free(&out);
    }
}

static void test_layernorm_affine(void) {
    const int64_t shapes[3][2] = {{77, 768}, {5, 33}, {300, 64}};
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < 3; i++) {
            fl_dtype dt = pt_dtypes[di];
            const int64_t R = shapes[i][0], D = shapes[i][1];
            pt_pair x = pt_randn(dt, 2, SHAPE(R, D), 10 + i, 2.0f), w = pt_randn(dt, 1, SHAPE(D), 20 + i, 1.0f);
            pt_pair b = pt_randn(dt, 1, SHAPE(D), 30 + i, 1.0f), y = pt_full(dt, 2, SHAPE(R, D), NAN);
            for (int s = 0; s < 2; s++) fl_op_layernorm_affine(pt_ctx(s), &x.t[s], &w.t[s], &b.t[s], &y.t[s], 1e-5f);
            const pt_tol tol = pt_tol_for(dt, 1e-5, 1e-4, 2e-2, 2e-2);
            PT_CHECK("layernorm_affine", &y, tol);
            for (int s = 0; s < 2; s++) fl_op_layernorm_affine(pt_ctx(s), &x.t[s], &w.t[s], &b.t[s], &x.t[s], 1e-5f);
            PT_CHECK("layernorm_affine in place", &x, tol);
            pt_free(&x);
            pt_free(&w);
            pt_free(&b);
            pt_free(&y);
        }
}

static void attention_case(fl_dtype dt, int64_t B, int64_t H, int64_t L, int64_t D, int bias_dims, bool causal,
                           float scale, uint64_t seed) {
    const int64_t *qs = SHAPE(B, H, L, D);
    pt_pair q = pt_randn(dt, 4, qs, seed, 1.0f), k = pt_randn(dt, 4, qs, seed + 1, 1.0f);
    pt_pair v = pt_randn(dt, 4, qs, seed + 2, 1.0f), out = pt_full(dt, 4, qs, NAN);
    pt_pair bias = bias_dims == 3 ? pt_randn(FL_F32, 3, SHAPE(H, L, L), seed + 3, 2.0f)
                                  : pt_randn(FL_F32, 4, SHAPE(B, H, L, L), seed + 3, 2.0f);
    for (int s = 0; s < 2; s++)
        fl_op_attention_masked(pt_ctx(s), &q.t[s], &k.t[s], &v.t[s], bias_dims ? &bias.t[s] : NULL, causal, &out.t[s],
                               scale);
    char what[128];
    snprintf(what, sizeof what, "attention_masked B=%lld H=%lld L=%lld D=%lld bias=%d causal=%d", (long long)B,
             (long long)H, (long long)L, (long long)D, bias_dims, causal);
    PT_CHECK(what, &out, pt_tol_for(dt, 1e-4, 1e-3, 1e-2, 1e-2));
    pt_free(&q);
    pt_free(&k);
    pt_free(&v);
    pt_free(&out);
    pt_free(&bias);
}

static void test_attention_masked(void) {
    uint64_t seed = 100;
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        for (int bias_dims = 0; bias_dims <= 4; bias_dims++) {
            if (bias_dims == 1 || bias_dims == 2) continue;
            for (int causal = 0; causal < 2; causal++) {
                attention_case(dt, 2, 3, 45, 16, bias_dims, causal, 0.25f, seed += 4);
                attention_case(dt, 1, 4, 77, 64, bias_dims, causal, 0.125f, seed += 4);
            }
        }
        attention_case(dt, 1, 4, 512, 64, 3, false, 1.0f, seed += 4); /* T5 */
        attention_case(dt, 1, 2, 40, 128, 3, true, 0.1f, seed += 4);
        attention_case(dt, 1, 1, 33, 256, 0, true, 0.06f, seed += 4);
        attention_case(dt, 1, 1, 9, 512, 4, true, 0.04f, seed += 4); /* wide heads: opt-in shared memory */
        attention_case(dt, 1, 1, 1, 8, 3, true, 1.0f, seed += 4);    /* one token */
    }
}

static void test_activations_and_mul(void) {
    for (int di = 0; di < 2; di++) {
        fl_dtype dt = pt_dtypes[di];
        const int64_t R = 37, C = 300;
        pt_pair x = pt_randn(dt, 2, SHAPE(R, C + 5), 40, 3.0f), y = pt_full(dt, 2, SHAPE(R, C + 5), 0.0f);
        pt_pair b = pt_randn(dt, 2, SHAPE(R, C), 41, 1.0f);
        fl_tensor xv[2], yv[2];
        pt_slice(&x, 1, 1, C, xv);
        pt_slice(&y, 1, 2, C, yv);
        const pt_tol tol = pt_tol_for(dt, 1e-6, 1e-5, 1e-2, 1e-2);
        for (int s = 0; s < 2; s++) fl_op_quick_gelu(pt_ctx(s), &xv[s], &yv[s]);
        PT_CHECK("quick_gelu", &y, tol);
        for (int s = 0; s < 2; s++) fl_op_gelu_erf(pt_ctx(s), &xv[s], &yv[s]);
        PT_CHECK("gelu_erf", &y, tol);
        for (int s = 0; s < 2; s++) fl_op_mul(pt_ctx(s), &yv[s], &b.t[s], &yv[s]);
        PT_CHECK("mul", &y, tol);
        pt_free(&x);
        pt_free(&y);
        pt_free(&b);
    }
}

int main(void) {
    pt_setup();
    FL_RUN(test_embedding);
    FL_RUN(test_layernorm_affine);
    FL_RUN(test_attention_masked);
    FL_RUN(test_activations_and_mul);
    pt_teardown();
    return fl_test_finish();
}
