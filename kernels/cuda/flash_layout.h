/*
 * flash_layout.h — the index math of the tensor-core attention kernels (cuda_flash.cu), shared
 * with their host emulation (tests/kernels/test_flash_emulation.c) so the emulation checks the
 * very formulas the kernels use.
 *
 * Fragments of the warp-level product mma.sync.m16n8k16 (bf16 inputs, fp32 accumulators), as the
 * PTX ISA defines them, with g = lane / 4 and t = lane % 4:
 *   A (16 x 16, row-major), 4 registers of 2 bf16: register r, half h holds
 *     A[g + 8 (r & 1)][2t + h + 8 (r >> 1)]
 *   B (16 x 8, k x n), 2 registers of 2 bf16: register r, half h holds B[2t + h + 8 r][g]
 *   C (16 x 8 fp32), 4 registers: register r holds C[g + 8 (r >> 1)][2t + (r & 1)]
 * The two halves of an A or B register are adjacent along k, so a register loads as one 32-bit
 * word where the matrix is stored k-contiguous. An accumulator tile pair (n-tiles 2j and 2j+1 of
 * a 16 x 16 block) holds exactly the A fragment of k-step j: registers (c0, c1) of tile 2j are A
 * register 0, (c2, c3) register 1, those of tile 2j+1 registers 2 and 3 — how scores become the
 * A operand of the next product without leaving registers.
 *
 * Tiles: a block of FA_WARPS warps owns FA_BM rows (16 per warp) and streams FA_BN rows of the
 * other operand per step; shared-memory rows of D bf16 are padded to D + FA_PAD elements so the
 * 32-bit fragment loads of a warp hit 32 different banks.
 */
#ifndef FL_KERNELS_CUDA_FLASH_LAYOUT_H
#define FL_KERNELS_CUDA_FLASH_LAYOUT_H

#ifdef __CUDACC__
#define FA_FN __host__ __device__ __forceinline__
#else
#define FA_FN static inline
#endif

#define FA_WARPS 4
#define FA_BM (16 * FA_WARPS) /* rows a block owns */
#define FA_BN 64              /* streamed rows per step (forward, dq) */
#define FA_BQ 32              /* streamed query rows per step of the dk/dv kernel */
#define FA_PAD 8              /* bf16 elements of padding per shared-memory row (16 bytes) */

FA_FN int fa_group(int lane) { return lane >> 2; }
FA_FN int fa_thread(int lane) { return lane & 3; }

/* Row and column inside the 16 x 16 A tile of register r (0..3), half h (0, 1). */
FA_FN int fa_a_row(int lane, int r) { return fa_group(lane) + 8 * (r & 1); }
FA_FN int fa_a_col(int lane, int r, int h) { return 2 * fa_thread(lane) + h + 8 * (r >> 1); }

/* k and n inside the 16 x 8 B tile of register r (0, 1), half h. */
FA_FN int fa_b_k(int lane, int r, int h) { return 2 * fa_thread(lane) + h + 8 * r; }
FA_FN int fa_b_n(int lane) { return fa_group(lane); }

/* Row and column inside the 16 x 8 C tile of register r (0..3). */
FA_FN int fa_c_row(int lane, int r) { return fa_group(lane) + 8 * (r >> 1); }
FA_FN int fa_c_col(int lane, int r) { return 2 * fa_thread(lane) + (r & 1); }

/* Shared-memory row stride (elements) of a tile of D-wide rows. */
FA_FN int fa_stride(int d) { return d + FA_PAD; }

/* Shared-memory bytes of the kernels for head dim d: forward (q, k, v tiles), dq (q, dout, k, v
 * tiles), dk/dv (k, v tiles of the block; q, dout tiles of a step; lse and delta of a step). */
FA_FN int fa_smem_forward(int d) { return (FA_BM + 2 * FA_BN) * fa_stride(d) * 2; }
FA_FN int fa_smem_dq(int d) { return (2 * FA_BM + 2 * FA_BN) * fa_stride(d) * 2; }
FA_FN int fa_smem_dkv(int d) { return (2 * FA_BM + 2 * FA_BQ) * fa_stride(d) * 2 + 2 * FA_BQ * 4; }

#endif
