/*
 * cpu_backend.c — the CPU fp32 reference backend's table: host memory management and the op
 * entries implemented in the other files of kernels/cpu.
 *
 * "Device" memory is ordinary host memory aligned to 64 bytes (one cache line, the widest SIMD
 * load), so uploads and downloads are plain copies and nothing is asynchronous.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#define CPU_ALIGN ((size_t)64)

static int cpu_init(fl_ctx *ctx, fl_error *err) {
    (void)err;
    ctx->impl = NULL;
    return 0;
}

static void cpu_destroy(fl_ctx *ctx) {
    ctx->impl = NULL;
}

static void *cpu_alloc(fl_ctx *ctx, size_t bytes) {
    (void)ctx;
    if (bytes > SIZE_MAX - CPU_ALIGN) return NULL;
    size_t rounded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    return aligned_alloc(CPU_ALIGN, rounded ? rounded : CPU_ALIGN);
}

static void cpu_free(fl_ctx *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

static void cpu_memcpy(fl_ctx *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    if (bytes) memcpy(dst, src, bytes);
}

static void cpu_synchronize(fl_ctx *ctx) {
    (void)ctx;
}

static const fl_backend cpu_backend = {
    .name = "cpu",
    .init = cpu_init,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .synchronize = cpu_synchronize,
    .gemm = fl_cpu_gemm,
    .linear = fl_cpu_linear,
    .linear_rows = fl_cpu_linear_rows,
    .bias_grad = fl_cpu_bias_grad,
    .copy = fl_cpu_copy,
    .fill = fl_cpu_fill,
    .add = fl_cpu_add,
    .scale = fl_cpu_scale,
    .gelu_tanh = fl_cpu_gelu_tanh,
    .gelu_tanh_backward = fl_cpu_gelu_tanh_backward,
    .silu = fl_cpu_silu,
    .silu_backward = fl_cpu_silu_backward,
    .layernorm = fl_cpu_layernorm,
    .layernorm_backward = fl_cpu_layernorm_backward,
    .ln_modulate = fl_cpu_ln_modulate,
    .ln_modulate_backward = fl_cpu_ln_modulate_backward,
    .rmsnorm = fl_cpu_rmsnorm,
    .rmsnorm_backward = fl_cpu_rmsnorm_backward,
    .gated_residual = fl_cpu_gated_residual,
    .gated_residual_backward = fl_cpu_gated_residual_backward,
    .rope = fl_cpu_rope,
    .rope_backward = fl_cpu_rope_backward,
    .attention = fl_cpu_attention,
    .attention_backward = fl_cpu_attention_backward,
    .timestep_embedding = fl_cpu_timestep_embedding,
    .flow_mix = fl_cpu_flow_mix,
    .mse_loss = fl_cpu_mse_loss,
    .sum_squares = fl_cpu_sum_squares,
    .adamw = fl_cpu_adamw,
    /* text encoders */
    .embedding = fl_cpu_embedding,
    .layernorm_affine = fl_cpu_layernorm_affine,
    .attention_masked = fl_cpu_attention_masked,
    .quick_gelu = fl_cpu_quick_gelu,
    .gelu_erf = fl_cpu_gelu_erf,
    .mul = fl_cpu_mul,

    /* images (the autoencoder) */
    .conv2d = fl_cpu_conv2d,
    .group_norm = fl_cpu_group_norm,
    .upsample_nearest2x = fl_cpu_upsample_nearest2x,
    /* face networks (dlib) */
    .pool2d = fl_cpu_pool2d,
    .channel_affine = fl_cpu_channel_affine,
    .relu = fl_cpu_relu,
    .add_padded = fl_cpu_add_padded,
};

const fl_backend *fl_cpu_backend(void) {
    return &cpu_backend;
}
