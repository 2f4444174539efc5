/*
 * test_cuda_attention.c — parity of the CUDA rotary embedding and attention (forward and
 * backward) with the CPU reference, in F32 and BF16 storage: head dims 16, 64, 80, 128, 256 and
 * 512, query and key lengths that are not multiples of the kernels' tiles, Lq != Lk, a single
 * key, in-place rope, logits of hundreds, the Flux head layout; BF16 head dims 64 and 128 on both
 * the tensor-core kernels (cuda_flash.cu, the default) and the CUDA-core ones
 * (FLASHLORA_CUDA_ATTENTION=simt); wide heads on a context limited to the shared memory of
 * ~100 KiB GPUs. Exits 77 where no CUDA device is usable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parity.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* ---- rope ------------------------------------------------------------------------------------- */

static void rope_case(fl_dtype dt, int64_t b, int64_t h, int64_t l, const int *axes, uint64_t seed) {
    const int64_t d = axes[0] + axes[1] + axes[2];
    float *ids = fl_test_rand_uniform((size_t)(b * l * 3), seed, 0.0f, 64.0f);
    for (int64_t i = 0; i < b * l * 3; i++) ids[i] = floorf(ids[i]);
    float *table = malloc((size_t)(b * l * d) * sizeof(float));
    fl_rope_table_host(ids, b, l, axes, 3, 10000.0, table);
    pt_pair pe = pt_new(FL_F32, 4, SHAPE(b, l, d / 2, 2), table);
    pt_pair x = pt_randn(dt, 4, SHAPE(b, h, l, d), seed + 1, 1.0f), y = pt_full(dt, 4, SHAPE(b, h, l, d), NAN);
    const pt_tol tol = pt_tol_for(dt, 1e-5, 1e-5, 1e-2, 1e-2);
    char what[64];
    for (int s = 0; s < 2; s++) fl_op_rope(pt_ctx(s), &x.t[s], &pe.t[s], &y.t[s]);
    snprintf(what, sizeof what, "rope d=%lld", (long long)d);
    PT_CHECK(what, &y, tol);
    for (int s = 0; s < 2; s++) fl_op_rope_backward(pt_ctx(s), &x.t[s], &pe.t[s], &y.t[s]);
    snprintf(what, sizeof what, "rope_backward d=%lld", (long long)d);
    PT_CHECK(what, &y, tol);
    for (int s = 0; s < 2; s++) {
        fl_op_rope(pt_ctx(s), &x.t[s], &pe.t[s], &x.t[s]);
        fl_op_rope_backward(pt_ctx(s), &y.t[s], &pe.t[s], &y.t[s]);
    }
    snprintf(what, sizeof what, "rope in place d=%lld", (long long)d);
    PT_CHECK(what, &x, tol);
    snprintf(what, sizeof what, "rope_backward in place d=%lld", (long long)d);
    PT_CHECK(what, &y, tol);
    free(ids);
    free(table);
    pt_free(&pe);
    pt_free(&x);
    pt_free(&y);
}

static void test_rope(void) {
    static const int axes16[3] = {4, 6, 6}, axes64[3] = {8, 28, 28}, axes128[3] = {16, 56, 56};
    for (int di = 0; di < 2; di++) {
        rope_case(pt_dtypes[di], 2, 3, 37, axes16, 100);
        rope_case(pt_dtypes[di], 1, 4, 50, axes64, 110);
        rope_case(pt_dtypes[di], 2, 3, 41, axes128, 120);
    }
}

/* ---- attention -------------------------------------------------------------------------------- */

typedef struct att_shape {
    int64_t b, h, lq, lk, d;
} att_shape;

/* amp: the standard deviation of q and k (large values make peaked rows and logits of hundreds). */
static void attention_case_amp(fl_dtype dt, att_shape sh, float amp, uint64_t seed) {
    const int64_t *qs = SHAPE(sh.b, sh.h, sh.lq, sh.d), *ks = SHAPE(sh.b, sh.h, sh.lk, sh.d);
    const int64_t *ls = SHAPE(sh.b, sh.h, sh.lq);
    const float scale = 1.0f / sqrtf((float)sh.d);
    pt_pair q = pt_randn(dt, 4, qs, seed, amp), k = pt_randn(dt, 4, ks, seed + 1, amp);
    pt_pair v = pt_randn(dt, 4, ks, seed + 2, 1.0f);
    pt_pair out = pt_full(dt, 4, qs, NAN), lse = pt_full(FL_F32, 3, ls, NAN);
    for (int s = 0; s < 2; s++) fl_op_attention(pt_ctx(s), &q.t[s], &k.t[s], &v.t[s], &out.t[s], &lse.t[s], scale);
    char what[128];
    snprintf(what, sizeof what, "attention B=%lld H=%lld Lq=%lld Lk=%lld D=%lld", (long long)sh.b, (long long)sh.h,
             (long long)sh.lq, (long long)sh.lk, (long long)sh.d);
    char name[160];
    snprintf(name, sizeof name, "%s out", what);
    PT_CHECK(name, &out, pt_tol_for(dt, 1e-4, 1e-3, 1e-2, 1e-2));
    snprintf(name, sizeof name, "%s lse", what);
    PT_CHECK(name, &lse, (pt_tol){1e-4, 1e-5});

    /* The backward takes the reference out and lse (out rounded to the storage dtype). */
    float *ref_out = pt_get(&out, PT_CPU), *ref_lse = pt_get(&lse, PT_CPU);
    pt_set(&out, ref_out);
    pt_set(&lse, ref_lse);
    pt_pair dout = pt_randn(dt, 4, qs, seed + 3, 1.0f);
    pt_pair dq = pt_full(dt, 4, qs, NAN), dk = pt_full(dt, 4, ks, NAN), dv = pt_full(dt, 4, ks, NAN);
    for (int s = 0; s < 2; s++)
        fl_op_attention_backward(pt_ctx(s), &dout.t[s], &q.t[s], &k.t[s], &v.t[s], &out.t[s], &lse.t[s], &dq.t[s],
                                 &dk.t[s], &dv.t[s], scale);
    const pt_tol grad_tol = pt_tol_for(dt, 2e-4, 1e-3, 2e-2, 2e-2);
    snprintf(name, sizeof name, "%s dq", what);
    PT_CHECK(name, &dq, grad_tol);
    snprintf(name, sizeof name, "%s dk", what);
    PT_CHECK(name, &dk, grad_tol);
    snprintf(name, sizeof name, "%s dv", what);
    PT_CHECK(name, &dv, grad_tol);
    free(ref_out);
    free(ref_lse);
    pt_free(&q);
    pt_free(&k);
    pt_free(&v);
    pt_free(&out);
    pt_free(&lse);
    pt_free(&dout);
    pt_free(&dq);
    pt_free(&dk);
    pt_free(&dv);
}

static void attention_case(fl_dtype dt, att_shape sh, uint64_t seed) {
    attention_case_amp(dt, sh, 1.0f, seed);
}

static void test_attention_small_heads(void) {
    for (int di = 0; di < 2; di++) {
        attention_case(pt_dtypes[di], (att_shape){1, 2, 37, 45, 16}, 200);
        attention_case(pt_dtypes[di], (att_shape){2, 1, 5, 1, 16}, 210); /* a single key */
        attention_case(pt_dtypes[di], (att_shape){1, 1, 20, 40, 80}, 220);
    }
}

static void test_attention_d64(void) {
    for (int di = 0; di < 2; di++) {
        attention_case(pt_dtypes[di], (att_shape){2, 3, 70, 70, 64}, 300);
        attention_case(pt_dtypes[di], (att_shape){1, 2, 16, 96, 64}, 310);
    }
}

static void test_attention_d128(void) {
    for (int di = 0; di < 2; di++) {
        attention_case(pt_dtypes[di], (att_shape){1, 2, 33, 100, 128}, 400);
        attention_case(pt_dtypes[di], (att_shape){2, 2, 65, 31, 128}, 410);
        attention_case(pt_dtypes[di], (att_shape){1, 3, 300, 300, 128}, 420);
    }
}

/* Wide heads need more than 48 KiB of shared memory (the opt-in path). */
static void test_attention_wide_heads(void) {
    for (int di = 0; di < 2; di++) {
        attention_case(pt_dtypes[di], (att_shape){1, 2, 40, 37, 256}, 500);
        attention_case(pt_dtypes[di], (att_shape){1, 1, 9, 33, 512}, 510);
    }
}

/* Logits of a few hundred over many key tiles: the running maximum of the online softmax must
 * never decrease (an overflow shows as Inf/NaN). */
static void test_attention_large_logits(void) {
    for (int di = 0; di < 2; di++) {
        attention_case_amp(pt_dtypes[di], (att_shape){1, 2, 40, 300, 64}, 12.0f, 600);
        attention_case_amp(pt_dtypes[di], (att_shape){1, 1, 70, 200, 128}, 8.0f, 610);
    }
}

/* The Flux shape at a small sequence: 24 heads of 128 over 300 tokens, batch 2. */
static void test_attention_flux_heads(void) {
    for (int di = 0; di < 2; di++) attention_case(pt_dtypes[di], (att_shape){2, 24, 300, 300, 128}, 620);
}

/* The same on a context that may use only 99 KiB of shared memory per block, as on sm_86, sm_89
 * and sm_120: head dims above 256 take the variant that streams tiles from global memory. */
static void test_attention_wide_heads_small_smem(void) {
    for (int di = 0; di < 2; di++) {
        attention_case(pt_dtypes[di], (att_shape){1, 2, 40, 37, 256}, 520);
        attention_case(pt_dtypes[di], (att_shape){1, 1, 9, 33, 512}, 530);
        attention_case(pt_dtypes[di], (att_shape){1, 2, 70, 45, 384}, 540);
    }
}

int main(void) {
    pt_setup();
    FL_RUN(test_rope);
    FL_RUN(test_attention_small_heads);
    FL_RUN(test_attention_d64);
    FL_RUN(test_attention_d128);
    FL_RUN(test_attention_wide_heads);
    FL_RUN(test_attention_large_logits);
    FL_RUN(test_attention_flux_heads);
    pt_teardown();
    /* BF16 head dims 64 and 128 ran on the tensor-core kernels above; the CUDA-core kernels take
     * them where those do not apply, so they are checked too. */
    setenv("FLASHLORA_CUDA_ATTENTION", "simt", 1); /* read when a CUDA context is created */
    pt_setup();
    FL_RUN(test_attention_d64);
    FL_RUN(test_attention_d128);
    FL_RUN(test_attention_large_logits);
    pt_teardown();
    unsetenv("FLASHLORA_CUDA_ATTENTION");
    setenv("FLASHLORA_CUDA_SMEM_LIMIT", "101376", 1);
    pt_setup();
    FL_RUN(test_attention_wide_heads_small_smem);
    FL_RUN(test_attention_d128); /* the tensor-core kernels fit in 99 KiB */
    pt_teardown();
    return fl_test_finish();
}
