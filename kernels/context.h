/*
 * context.h — a device context: where ops run and how memory moves there.
 *
 * An fl_ctx binds one device to its backend (the table of op implementations in backend.h) and
 * to that backend's state: for CUDA a stream, a cuBLASLt handle and a workspace; for the CPU the
 * thread count. All ops in kernels/ops.h take the context first and run on its device, in order
 * (CUDA ops are asynchronous on the context's stream; fl_ctx_synchronize waits).
 *
 * Planning mode: while ctx->planning is set, ops validate their operands and return without
 * computing anything, so a model can run its whole step once against a measuring arena
 * (core/arena.h) to learn how much activation memory a shape needs.
 *
 * Storage dtype: weights and activations are F32 on the CPU and BF16 on CUDA unless
 * fl_ctx_set_storage_dtype chooses otherwise: F32 on CUDA (reference-precision runs of the GPU
 * kernels), or BF16 on the CPU, which computes nothing in BF16: such a context only checks, in
 * planning mode, that a model's step obeys the operand contract of the CUDA dtype policy (an op
 * that would compute on it aborts), so that a dtype mismatch of the GPU path shows on any machine.
 *
 * FLOP count: every matrix op (gemm, linear, attention and its backward, masked attention,
 * conv2d) adds its multiply-add FLOPs (2 per multiply-add) to ctx->flops when its operands pass
 * the checks, in planning mode too, so a planning run of a step counts exactly the matrix work
 * the real step does.
 *
 * Profile: when ctx->profile points at an fl_op_profile, every op that computes adds its wall
 * time (and its matrix FLOPs) to the entry of its kind; CUDA ops are timed as they are issued,
 * so the figures mean something on the CPU backend only. Products issued while
 * ctx->profile_lora is set (a model's adapter products) count as FL_OPK_LORA instead of GEMM.
 * NULL (the default) costs one test per op.
 */
#ifndef FL_KERNELS_CONTEXT_H
#define FL_KERNELS_CONTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"

typedef struct fl_backend fl_backend;

/* Kinds of op a profile sums time over. */
typedef enum fl_op_kind {
    FL_OPK_GEMM,        /* gemm, linear, bias gradient */
    FL_OPK_ATTENTION,   /* attention and its backward, masked attention */
    FL_OPK_NORM,        /* layer/RMS/group norm, LayerNorm + modulate, and their backwards */
    FL_OPK_ROPE,        /* rotary embedding and its backward */
    FL_OPK_ELEMENTWISE, /* copies, fills, adds, activations, gated residuals */
    FL_OPK_LORA,        /* adapter products (see profile_lora) */
    FL_OPK_OPTIMIZER,   /* AdamW */
    FL_OPK_OTHER,       /* embeddings, loss, convolution, everything else */
    FL_OPK_COUNT
} fl_op_kind;

typedef struct fl_op_profile {
    double seconds[FL_OPK_COUNT];
    double flops[FL_OPK_COUNT];
    uint64_t calls[FL_OPK_COUNT];
    double pending_flops; /* the FLOPs counted by the op being run (internal to ops.c) */
} fl_op_profile;

/* The kind's name, for printing ("gemm", "attention", ...). */
const char *fl_op_kind_name(fl_op_kind kind);

typedef struct fl_ctx {
    fl_device device;
    const fl_backend *backend;
    void *impl;    /* backend state; NULL for the CPU */
    bool planning; /* validate only, compute nothing */
    bool storage_set; /* storage chosen by fl_ctx_set_storage_dtype, else the device's default */
    fl_dtype storage;
    uint64_t flops;   /* matrix FLOPs of the ops checked so far (the caller resets it) */
    fl_op_profile *profile; /* time per op kind when not NULL (see the header comment) */
    bool profile_lora;      /* products count as FL_OPK_LORA while set */
} fl_ctx;

/* Creates a context for dev (see core/device.h for choosing one). NULL + err on failure. */
fl_ctx *fl_ctx_create(fl_device dev, fl_error *err);
void fl_ctx_destroy(fl_ctx *ctx);

/* Device memory. fl_ctx_alloc returns NULL when the device is out of memory. */
void *fl_ctx_alloc(fl_ctx *ctx, size_t bytes);
void fl_ctx_free(fl_ctx *ctx, void *ptr);
/* Contiguous byte copies between host memory and the context's device (synchronous). */
void fl_ctx_upload(fl_ctx *ctx, void *device_dst, const void *host_src, size_t bytes);
void fl_ctx_download(fl_ctx *ctx, void *host_dst, const void *device_src, size_t bytes);
void fl_ctx_synchronize(fl_ctx *ctx);

/* The dtype weights and activations are stored in on the context's device: F32 on the CPU (the
 * reference), BF16 on CUDA (fp32 accumulation inside the kernels). */
fl_dtype fl_ctx_storage_dtype(const fl_ctx *ctx);
/* Chooses the storage dtype of a context (see the header comment): F32 or BF16 on CUDA; F32 or
 * BF16 on the CPU, where BF16 is a checking policy only, usable while ctx->planning is set.
 * FL_EINVAL for any other dtype. Models built on the context afterwards use it. */
int fl_ctx_set_storage_dtype(fl_ctx *ctx, fl_dtype dtype, fl_error *err);

/* A contiguous tensor allocated on the context's device; fl_ctx_tensor_free releases it. */
fl_tensor fl_ctx_tensor(fl_ctx *ctx, fl_dtype dtype, int ndim, const int64_t *shape);
/* The same for a size that outside input decides: FL_ENOMEM (and out->data NULL) when the device
 * has no memory for it, instead of an abort. */
int fl_ctx_tensor_alloc(fl_ctx *ctx, fl_dtype dtype, int ndim, const int64_t *shape, fl_tensor *out, fl_error *err);
void fl_ctx_tensor_free(fl_ctx *ctx, fl_tensor *t);

/* Copy a host f32 array into a device tensor of any storage dtype (converted), and back.
 * The tensor must be contiguous and have exactly `count` elements. */
void fl_ctx_upload_f32(fl_ctx *ctx, fl_tensor *dst, const float *host_src, size_t count);
void fl_ctx_download_f32(fl_ctx *ctx, float *host_dst, const fl_tensor *src, size_t count);

#endif
