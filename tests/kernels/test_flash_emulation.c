/*
 * test_flash_emulation.c — the tensor-core attention kernels (kernels/cuda/cuda_flash.cu) run on
 * the host, warp by warp and lane by lane, against the CPU reference attention.
 *
 * Each kernel's steps are replayed here with the index functions of kernels/cuda/flash_layout.h:
 * the same tiles and zero-filled tails, the same fragment loads from the padded shared-memory
 * tiles (as 32-bit pairs or as two 16-bit halves), the accumulators reused as A operands, the
 * quad shuffles, exp2 with the folded scale, bf16 rounding wherever the kernels round (operands,
 * repacked probabilities and score gradients, outputs). The warp's product mma.m16n8k16 is
 * emulated from its PTX fragment definition: A, B and C are gathered from the 32 lanes' registers
 * through the layout functions, multiplied in fp32 and scattered back. So this test checks the
 * algorithm and every index the kernels compute — tiling, masking of rows and keys past the end,
 * the online softmax recurrence, the backward's recomputation — without a GPU; the CUDA parity
 * test checks the device specifics (that the hardware's layout is the one written down here).
 *
 * Shapes: head dims 64 and 128; query and key lengths that are and are not multiples of the
 * tiles, Lq != Lk, a single key. Also a check that the layout functions form bijections.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/cuda/flash_layout.h"
#include "kernels/ops.h"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

static fl_ctx *cpu;

static float bf(float x) {
    return fl_bf16_to_f32(fl_f32_to_bf16(x));
}

/* ---- one warp --------------------------------------------------------------------------------- */

typedef float areg[4][2]; /* A fragment of a lane: 4 registers x 2 halves */
typedef float breg[2][2];
typedef float creg[4];

/* c += A B from the 32 lanes' fragments, per the PTX definition. */
static void emu_mma(creg c[32], areg a[32], breg b[32]) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; lane++) {
        for (int r = 0; r < 4; r++)
            for (int h = 0; h < 2; h++) A[fa_a_row(lane, r)][fa_a_col(lane, r, h)] = a[lane][r][h];
        for (int r = 0; r < 2; r++)
            for (int h = 0; h < 2; h++) B[fa_b_k(lane, r, h)][fa_b_n(lane)] = b[lane][r][h];
    }
    for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 4; r++) {
            float acc = 0.0f;
            for (int kk = 0; kk < 16; kk++) acc += A[fa_c_row(lane, r)][kk] * B[kk][fa_c_col(lane, r)];
            c[lane][r] += acc;
        }
}

/* A fragment of k-step kk of rows row0.. of a tile (the kernel's load_a: one 32-bit word at the
 * half-0 column). */
static void load_a(areg a[32], const float *tile, int stride, int row0, int kk) {
    for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 4; r++)
            for (int h = 0; h < 2; h++)
                a[lane][r][h] = tile[(row0 + fa_a_row(lane, r)) * stride + kk * 16 + fa_a_col(lane, r, 0) + h];
}

/* B with k along a tile row (load_b_rows: 32-bit words). */
static void load_b_rows(breg b[32], const float *tile, int stride, int nt, int kk) {
    for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 2; r++)
            for (int h = 0; h < 2; h++)
                b[lane][r][h] = tile[(nt * 8 + fa_b_n(lane)) * stride + kk * 16 + fa_b_k(lane, r, 0) + h];
}

/* B with k across tile rows (load_b_cols: two 16-bit halves). */
static void load_b_cols(breg b[32], const float *tile, int stride, int j, int nt) {
    for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 2; r++)
            for (int h = 0; h < 2; h++)
                b[lane][r][h] = tile[(j * 16 + fa_b_k(lane, r, h)) * stride + nt * 8 + fa_b_n(lane)];
}

/* acc_to_a: n-tiles 2j (lo) and 2j+1 (hi) as the A fragment, rounded to bf16. */
static void acc_to_a(areg a[32], creg lo[32], creg hi[32]) {
    for (int lane = 0; lane < 32; lane++) {
        a[lane][0][0] = bf(lo[lane][0]), a[lane][0][1] = bf(lo[lane][1]);
        a[lane][1][0] = bf(lo[lane][2]), a[lane][1][1] = bf(lo[lane][3]);
        a[lane][2][0] = bf(hi[lane][0]), a[lane][2][1] = bf(hi[lane][1]);
        a[lane][3][0] = bf(hi[lane][2]), a[lane][3][1] = bf(hi[lane][3]);
    }
}

/* The four lanes of a row (one group) exchange values: max or sum over them, for every lane. */
static void quad_reduce(float v[32], bool max) {
    float out[32];
    for (int lane = 0; lane < 32; lane++) {
        float acc = v[lane & ~3];
        for (int o = 1; o < 4; o++) acc = max ? fmaxf(acc, v[(lane & ~3) + o]) : acc + v[(lane & ~3) + o];
        out[lane] = acc;
    }
    memcpy(v, out, sizeof out);
}

/* load_tile: rows row0.. of a [len, d] matrix into tile[rows][stride], zeros past len. */
static void load_tile(float *tile, const float *src, int64_t row0, int rows, int64_t len, int d) {
    int stride = fa_stride(d);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < d; c++) tile[r * stride + c] = row0 + r < len ? src[(row0 + r) * d + c] : 0.0f;
}

/* ---- the kernels, replayed -------------------------------------------------------------------- */

typedef struct problem {
    int64_t bh, lq, lk;
    int d;
    float scale;
    const float *q, *k, *v, *dout, *lse, *delta; /* bf16-valued inputs; lse and delta f32 */
} problem;

static void emu_forward(const problem *p, float *out, float *lse) {
    const int d = p->d, S = fa_stride(d), KS = d / 16, NT = FA_BN / 8, DT = d / 8;
    const float scale_log2 = p->scale * LOG2E;
    float *qs = calloc((size_t)FA_BM * S, sizeof(float)), *ks = calloc((size_t)FA_BN * S, sizeof(float));
    float *vs = calloc((size_t)FA_BN * S, sizeof(float));
    areg(*qf)[32] = malloc((size_t)KS * sizeof *qf), pa[32];
    creg(*o)[32] = malloc((size_t)DT * sizeof *o), s[8][32];
    breg b[32];
    const int64_t q_tiles = (p->lq + FA_BM - 1) / FA_BM;
    for (int64_t block = 0; block < p->bh * q_tiles; block++) {
        const int64_t bh = block / q_tiles, q0 = (block % q_tiles) * FA_BM;
        const float *kb = p->k + bh * p->lk * d, *vb = p->v + bh * p->lk * d;
        load_tile(qs, p->q + bh * p->lq * d, q0, FA_BM, p->lq, d);
        for (int warp = 0; warp < FA_WARPS; warp++) { /* warps touch only their own rows */
            const int wrow = warp * 16;
            for (int kk = 0; kk < KS; kk++) load_a(qf[kk], qs, S, wrow, kk);
            float m[2][32], l[2][32];
            for (int lane = 0; lane < 32; lane++) m[0][lane] = m[1][lane] = -INFINITY, l[0][lane] = l[1][lane] = 0;
            memset(o, 0, (size_t)DT * sizeof *o);
            for (int64_t k0 = 0; k0 < p->lk; k0 += FA_BN) {
                load_tile(ks, kb, k0, FA_BN, p->lk, d);
                load_tile(vs, vb, k0, FA_BN, p->lk, d);
                memset(s, 0, sizeof s);
                for (int nt = 0; nt < NT; nt++)
                    for (int kk = 0; kk < KS; kk++) {
                        load_b_rows(b, ks, S, nt, kk);
                        emu_mma(s[nt], qf[kk], b);
                    }
                float mx[2][32];
                for (int lane = 0; lane < 32; lane++) {
                    mx[0][lane] = mx[1][lane] = -INFINITY;
                    for (int nt = 0; nt < NT; nt++)
                        for (int r = 0; r < 4; r++) {
                            bool valid = k0 + nt * 8 + fa_c_col(lane, r) < p->lk;
                            s[nt][lane][r] = valid ? s[nt][lane][r] * scale_log2 : -INFINITY;
                            mx[r >> 1][lane] = fmaxf(mx[r >> 1][lane], s[nt][lane][r]);
                        }
                }
                quad_reduce(mx[0], true);
                quad_reduce(mx[1], true);
                float corr[2][32];
                for (int lane = 0; lane < 32; lane++)
                    for (int i = 0; i < 2; i++) {
                        float m_new = fmaxf(m[i][lane], mx[i][lane]);
                        corr[i][lane] = exp2f(m[i][lane] - m_new);
                        m[i][lane] = m_new;
                        l[i][lane] *= corr[i][lane];
                    }
                for (int lane = 0; lane < 32; lane++)
                    for (int nt = 0; nt < NT; nt++)
                        for (int r = 0; r < 4; r++) {
                            s[nt][lane][r] = exp2f(s[nt][lane][r] - m[r >> 1][lane]);
                            l[r >> 1][lane] += s[nt][lane][r];
                        }
                for (int i = 0; i < DT; i++)
                    for (int lane = 0; lane < 32; lane++) {
                        o[i][lane][0] *= corr[0][lane], o[i][lane][1] *= corr[0][lane];
                        o[i][lane][2] *= corr[1][lane], o[i][lane][3] *= corr[1][lane];
                    }
                for (int j = 0; j < FA_BN / 16; j++) {
                    acc_to_a(pa, s[2 * j], s[2 * j + 1]);
                    for (int nt = 0; nt < DT; nt++) {
                        load_b_cols(b, vs, S, j, nt);
                        emu_mma(o[nt], pa, b);
                    }
                }
            }
            quad_reduce(l[0], false);
            quad_reduce(l[1], false);
            for (int lane = 0; lane < 32; lane++)
                for (int i = 0; i < 2; i++) {
                    int64_t row = q0 + wrow + fa_c_row(lane, 2 * i);
                    if (row >= p->lq) continue;
                    float inv = 1.0f / l[i][lane];
                    float *dst = out + (bh * p->lq + row) * d + fa_c_col(lane, 0);
                    for (int nt = 0; nt < DT; nt++) {
                        dst[nt * 8] = bf(o[nt][lane][2 * i] * inv);
                        dst[nt * 8 + 1] = bf(o[nt][lane][2 * i + 1] * inv);
                    }
                    if (fa_thread(lane) == 0) lse[bh * p->lq + row] = (m[i][lane] + log2f(l[i][lane])) * LN2;
                }
        }
    }
    free(qs), free(ks), free(vs), free(qf), free(o);
}

static void emu_dq(const problem *p, float *dq) {
    const int d = p->d, S = fa_stride(d), KS = d / 16, NT = FA_BN / 8, DT = d / 8;
    const float scale_log2 = p->scale * LOG2E;
    float *qs = calloc((size_t)FA_BM * S, sizeof(float)), *dos = calloc((size_t)FA_BM * S, sizeof(float));
    float *ks = calloc((size_t)FA_BN * S, sizeof(float)), *vs = calloc((size_t)FA_BN * S, sizeof(float));
    creg(*acc)[32] = malloc((size_t)DT * sizeof *acc), s[8][32], dp[8][32];
    areg qa[32], da[32], a[32];
    breg b[32];
    const int64_t q_tiles = (p->lq + FA_BM - 1) / FA_BM;
    for (int64_t block = 0; block < p->bh * q_tiles; block++) {
        const int64_t bh = block / q_tiles, q0 = (block % q_tiles) * FA_BM;
        load_tile(qs, p->q + bh * p->lq * d, q0, FA_BM, p->lq, d);
        load_tile(dos, p->dout + bh * p->lq * d, q0, FA_BM, p->lq, d);
        for (int warp = 0; warp < FA_WARPS; warp++) {
            const int wrow = warp * 16;
            float row_lse[2][32], row_delta[2][32];
            for (int lane = 0; lane < 32; lane++)
                for (int i = 0; i < 2; i++) {
                    int64_t row = q0 + wrow + fa_c_row(lane, 2 * i);
                    row_lse[i][lane] = row < p->lq ? p->lse[bh * p->lq + row] * LOG2E : 0.0f;
                    row_delta[i][lane] = row < p->lq ? p->delta[bh * p->lq + row] : 0.0f;
                }
            memset(acc, 0, (size_t)DT * sizeof *acc);
            for (int64_t k0 = 0; k0 < p->lk; k0 += FA_BN) {
                load_tile(ks, p->k + bh * p->lk * d, k0, FA_BN, p->lk, d);
                load_tile(vs, p->v + bh * p->lk * d, k0, FA_BN, p->lk, d);
                memset(s, 0, sizeof s);
                memset(dp, 0, sizeof dp);
                for (int kk = 0; kk < KS; kk++) {
                    load_a(qa, qs, S, wrow, kk);
                    load_a(da, dos, S, wrow, kk);
                    for (int nt = 0; nt < NT; nt++) {
                        load_b_rows(b, ks, S, nt, kk);
                        emu_mma(s[nt], qa, b);
                        load_b_rows(b, vs, S, nt, kk);
                        emu_mma(dp[nt], da, b);
                    }
                }
                for (int lane = 0; lane < 32; lane++)
                    for (int nt = 0; nt < NT; nt++)
                        for (int r = 0; r < 4; r++) {
                            bool valid = k0 + nt * 8 + fa_c_col(lane, r) < p->lk;
                            float pr = valid ? exp2f(s[nt][lane][r] * scale_log2 - row_lse[r >> 1][lane]) : 0.0f;
                            s[nt][lane][r] = pr * (dp[nt][lane][r] - row_delta[r >> 1][lane]);
                        }
                for (int j = 0; j < FA_BN / 16; j++) {
                    acc_to_a(a, s[2 * j], s[2 * j + 1]);
                    for (int nt = 0; nt < DT; nt++) {
                        load_b_cols(b, ks, S, j, nt);
                        emu_mma(acc[nt], a, b);
                    }
                }
            }
            for (int lane = 0; lane < 32; lane++)
                for (int i = 0; i < 2; i++) {
                    int64_t row = q0 + wrow + fa_c_row(lane, 2 * i);
                    if (row >= p->lq) continue;
                    float *dst = dq + (bh * p->lq + row) * d + fa_c_col(lane, 0);
                    for (int nt = 0; nt < DT; nt++) {
                        dst[nt * 8] = bf(acc[nt][lane][2 * i] * p->scale);
                        dst[nt * 8 + 1] = bf(acc[nt][lane][2 * i + 1] * p->scale);
                    }
                }
        }
    }
    free(qs), free(dos), free(ks), free(vs), free(acc);
}

static void emu_dkv(const problem *p, float *dk, float *dv) {
    const int d = p->d, S = fa_stride(d), KS = d / 16, NT = FA_BQ / 8, DT = d / 8;
    const float scale_log2 = p->scale * LOG2E;
    float *ks = calloc((size_t)FA_BM * S, sizeof(float)), *vs = calloc((size_t)FA_BM * S, sizeof(float));
    float *qs = calloc((size_t)FA_BQ * S, sizeof(float)), *dos = calloc((size_t)FA_BQ * S, sizeof(float));
    float lse_s[FA_BQ], delta_s[FA_BQ];
    creg(*dka)[32] = malloc((size_t)DT * sizeof *dka), (*dva)[32] = malloc((size_t)DT * sizeof *dva);
    creg st[4][32], dpt[4][32];
    areg ka[32], va[32], pa[32], dsa[32];
    breg b[32];
    const int64_t k_tiles = (p->lk + FA_BM - 1) / FA_BM;
    for (int64_t block = 0; block < p->bh * k_tiles; block++) {
        const int64_t bh = block / k_tiles, k0 = (block % k_tiles) * FA_BM;
        load_tile(ks, p->k + bh * p->lk * d, k0, FA_BM, p->lk, d);
        load_tile(vs, p->v + bh * p->lk * d, k0, FA_BM, p->lk, d);
        for (int warp = 0; warp < FA_WARPS; warp++) {
            const int wrow = warp * 16;
            memset(dka, 0, (size_t)DT * sizeof *dka);
            memset(dva, 0, (size_t)DT * sizeof *dva);
            for (int64_t i0 = 0; i0 < p->lq; i0 += FA_BQ) {
                load_tile(qs, p->q + bh * p->lq * d, i0, FA_BQ, p->lq, d);
                load_tile(dos, p->dout + bh * p->lq * d, i0, FA_BQ, p->lq, d);
                for (int t = 0; t < FA_BQ; t++) {
                    int64_t row = i0 + t;
                    lse_s[t] = row < p->lq ? p->lse[bh * p->lq + row] * LOG2E : 0.0f;
                    delta_s[t] = row < p->lq ? p->delta[bh * p->lq + row] : 0.0f;
                }
                memset(st, 0, sizeof st);
                memset(dpt, 0, sizeof dpt);
                for (int kk = 0; kk < KS; kk++) {
                    load_a(ka, ks, S, wrow, kk);
                    load_a(va, vs, S, wrow, kk);
                    for (int nt = 0; nt < NT; nt++) {
                        load_b_rows(b, qs, S, nt, kk);
                        emu_mma(st[nt], ka, b);
                        load_b_rows(b, dos, S, nt, kk);
                        emu_mma(dpt[nt], va, b);
                    }
                }
                for (int lane = 0; lane < 32; lane++)
                    for (int nt = 0; nt < NT; nt++)
                        for (int r = 0; r < 4; r++) {
                            int col = nt * 8 + fa_c_col(lane, r);
                            bool valid = i0 + col < p->lq;
                            float pr = valid ? exp2f(st[nt][lane][r] * scale_log2 - lse_s[col]) : 0.0f;
                            st[nt][lane][r] = pr;
                            dpt[nt][lane][r] = pr * (dpt[nt][lane][r] - delta_s[col]);
                        }
                for (int j = 0; j < FA_BQ / 16; j++) {
                    acc_to_a(pa, st[2 * j], st[2 * j + 1]);
                    acc_to_a(dsa, dpt[2 * j], dpt[2 * j + 1]);
                    for (int nt = 0; nt < DT; nt++) {
                        load_b_cols(b, dos, S, j, nt);
                        emu_mma(dva[nt], pa, b);
                        load_b_cols(b, qs, S, j, nt);
                        emu_mma(dka[nt], dsa, b);
                    }
                }
            }
            for (int lane = 0; lane < 32; lane++)
                for (int i = 0; i < 2; i++) {
                    int64_t row = k0 + wrow + fa_c_row(lane, 2 * i);
                    if (row >= p->lk) continue;
                    float *dkr = dk + (bh * p->lk + row) * d + fa_c_col(lane, 0);
                    float *dvr = dv + (bh * p->lk + row) * d + fa_c_col(lane, 0);
                    for (int nt = 0; nt < DT; nt++) {
                        dkr[nt * 8] = bf(dka[nt][lane][2 * i] * p->scale);
                        dkr[nt * 8 + 1] = bf(dka[nt][lane][2 * i + 1] * p->scale);
                        dvr[nt * 8] = bf(dva[nt][lane][2 * i]);
                        dvr[nt * 8 + 1] = bf(dva[nt][lane][2 * i + 1]);
                    }
                }
        }
    }
    free(ks), free(vs), free(qs), free(dos), free(dka), free(dva);
}

/* ---- against the reference -------------------------------------------------------------------- */

static float *rand_bf16(size_t n, uint64_t seed, float std) {
    float *x = fl_test_randn(n, seed, std);
    for (size_t i = 0; i < n; i++) x[i] = bf(x[i]);
    return x;
}

/* amp scales q and k: large logits make rows peaked and a wrong running maximum overflow. */
static void check_case(int64_t b, int64_t h, int64_t lq, int64_t lk, int d, float amp, uint64_t seed) {
    const int64_t bh = b * h, nq = bh * lq * d, nk = bh * lk * d;
    const float scale = 1.0f / sqrtf((float)d);
    float *q = rand_bf16((size_t)nq, seed, amp), *k = rand_bf16((size_t)nk, seed + 1, amp);
    float *v = rand_bf16((size_t)nk, seed + 2, 1.0f), *dout = rand_bf16((size_t)nq, seed + 3, 1.0f);
    float *ref_out = malloc((size_t)nq * sizeof(float)), *ref_lse = malloc((size_t)(bh * lq) * sizeof(float));
    fl_tensor tq = fl_tensor_f32_4d(q, b, h, lq, d), tk = fl_tensor_f32_4d(k, b, h, lk, d);
    fl_tensor tv = fl_tensor_f32_4d(v, b, h, lk, d), to = fl_tensor_f32_4d(ref_out, b, h, lq, d);
    fl_tensor tl = fl_tensor_f32_3d(ref_lse, b, h, lq);
    fl_op_attention(cpu, &tq, &tk, &tv, &to, &tl, scale);

    float *out = malloc((size_t)nq * sizeof(float)), *lse = malloc((size_t)(bh * lq) * sizeof(float));
    for (int64_t i = 0; i < nq; i++) out[i] = NAN; /* every element must be written */
    for (int64_t i = 0; i < bh * lq; i++) lse[i] = NAN;
    problem p = {bh, lq, lk, d, scale, q, k, v, NULL, NULL, NULL};
    emu_forward(&p, out, lse);
    char what[128];
    snprintf(what, sizeof what, "forward out B=%lld H=%lld Lq=%lld Lk=%lld D=%d", (long long)b, (long long)h,
             (long long)lq, (long long)lk, d);
    FL_EXPECT_CLOSE(what, out, ref_out, (size_t)nq, 1e-2, 1e-2);
    snprintf(what, sizeof what, "forward lse Lq=%lld Lk=%lld D=%d", (long long)lq, (long long)lk, d);
    FL_EXPECT_CLOSE(what, lse, ref_lse, (size_t)(bh * lq), 1e-4, 1e-4);

    /* Backward on the reference out (rounded as stored) and lse, as the parity test does. */
    float *delta = malloc((size_t)(bh * lq) * sizeof(float));
    for (int64_t i = 0; i < nq; i++) ref_out[i] = bf(ref_out[i]);
    for (int64_t r = 0; r < bh * lq; r++) {
        float acc = 0;
        for (int c = 0; c < d; c++) acc += dout[r * d + c] * ref_out[r * d + c];
        delta[r] = acc;
    }
    float *rdq = malloc((size_t)nq * sizeof(float)), *rdk = malloc((size_t)nk * sizeof(float));
    float *rdv = malloc((size_t)nk * sizeof(float));
    fl_tensor tdo = fl_tensor_f32_4d(dout, b, h, lq, d), tdq = fl_tensor_f32_4d(rdq, b, h, lq, d);
    fl_tensor tdk = fl_tensor_f32_4d(rdk, b, h, lk, d), tdv = fl_tensor_f32_4d(rdv, b, h, lk, d);
    fl_op_attention_backward(cpu, &tdo, &tq, &tk, &tv, &to, &tl, &tdq, &tdk, &tdv, scale);
    float *dq = malloc((size_t)nq * sizeof(float)), *dk = malloc((size_t)nk * sizeof(float));
    float *dv = malloc((size_t)nk * sizeof(float));
    for (int64_t i = 0; i < nq; i++) dq[i] = NAN;
    for (int64_t i = 0; i < nk; i++) dk[i] = dv[i] = NAN;
    p.dout = dout, p.lse = ref_lse, p.delta = delta;
    emu_dq(&p, dq);
    emu_dkv(&p, dk, dv);
    const char *names[3] = {"dq", "dk", "dv"};
    float *got[3] = {dq, dk, dv}, *want[3] = {rdq, rdk, rdv};
    int64_t counts[3] = {nq, nk, nk};
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "backward %s Lq=%lld Lk=%lld D=%d", names[i], (long long)lq, (long long)lk, d);
        FL_EXPECT_CLOSE(what, got[i], want[i], (size_t)counts[i], 2e-2, 2e-2);
    }
    free(q), free(k), free(v), free(dout), free(ref_out), free(ref_lse), free(out), free(lse), free(delta);
    free(rdq), free(rdk), free(rdv), free(dq), free(dk), free(dv);
}

/* Every element of A, B and C belongs to exactly one (lane, register, half); the halves of a
 * register are adjacent along k (what lets the kernels load a register as one 32-bit word). */
static void test_layout_bijections(void) {
    int a[16][16] = {{0}}, b[16][8] = {{0}}, c[16][8] = {{0}};
    for (int lane = 0; lane < 32; lane++) {
        for (int r = 0; r < 4; r++) {
            for (int h = 0; h < 2; h++) a[fa_a_row(lane, r)][fa_a_col(lane, r, h)]++;
            FL_EXPECT(fa_a_col(lane, r, 1) == fa_a_col(lane, r, 0) + 1);
            c[fa_c_row(lane, r)][fa_c_col(lane, r)]++;
        }
        for (int r = 0; r < 2; r++) {
            for (int h = 0; h < 2; h++) b[fa_b_k(lane, r, h)][fa_b_n(lane)]++;
            FL_EXPECT(fa_b_k(lane, r, 1) == fa_b_k(lane, r, 0) + 1);
        }
        /* The accumulator pair of n-tiles (2j, 2j+1) is the A fragment of k-step j. */
        for (int r = 0; r < 4; r++) {
            int tile = r >> 1, creg_lo = 2 * (r & 1); /* A register r <- tile (r>>1), C registers 2(r&1), +1 */
            FL_EXPECT(fa_a_row(lane, r) == fa_c_row(lane, creg_lo));
            FL_EXPECT(fa_a_col(lane, r, 0) == tile * 8 + fa_c_col(lane, creg_lo));
            FL_EXPECT(fa_a_col(lane, r, 1) == tile * 8 + fa_c_col(lane, creg_lo + 1));
        }
    }
    bool ok = true;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) ok = ok && a[i][j] == 1 && (j >= 8 || (b[i][j] == 1 && c[i][j] == 1));
    FL_EXPECT(ok);
    /* 32-bit fragment loads of a warp from a padded tile hit 32 different banks. */
    for (int d = 64; d <= 128; d += 64) {
        int banks[32] = {0};
        for (int lane = 0; lane < 32; lane++) banks[((fa_b_n(lane) * fa_stride(d) + fa_b_k(lane, 0, 0)) / 2) % 32]++;
        for (int i = 0; i < 32; i++) FL_EXPECTF(banks[i] == 1, "d=%d: bank %d used %d times", d, i, banks[i]);
    }
}

static void test_d64(void) {
    check_case(1, 2, 70, 45, 64, 1.0f, 100);  /* ragged tiles, Lq != Lk */
    check_case(2, 1, 5, 1, 64, 1.0f, 110);    /* a single key */
    check_case(1, 1, 64, 128, 64, 1.0f, 120); /* whole tiles */
    check_case(1, 1, 40, 300, 64, 12.0f, 130); /* logits of a few hundred over five key tiles */
}

static void test_d128(void) {
    check_case(1, 1, 130, 200, 128, 1.0f, 200);
    check_case(1, 2, 33, 65, 128, 1.0f, 210);
    check_case(1, 1, 20, 150, 128, 4.0f, 220);
}

int main(void) {
    fl_error err = {0};
    cpu = fl_ctx_create(fl_device_cpu(), &err);
    FL_RUN(test_layout_bijections);
    FL_RUN(test_d64);
    FL_RUN(test_d128);
    fl_ctx_destroy(cpu);
    return fl_test_finish();
}
