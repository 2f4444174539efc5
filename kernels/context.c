/*
 * context.c — device contexts: binding a device to its backend, memory and host transfers.
 */
#include "kernels/context.h"

#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

fl_ctx *fl_ctx_create(fl_device dev, fl_error *err) {
    const fl_backend *backend = NULL;
    if (dev.kind == FL_DEVICE_CPU) {
        backend = fl_cpu_backend();
    } else {
#ifdef FL_HAVE_CUDA
        backend = fl_cuda_backend();
#else
        fl_fail(err, FL_EUNSUPPORTED, "this build has no CUDA backend");
        return NULL;
#endif
    }
    fl_ctx *ctx = fl_xcalloc(1, sizeof *ctx);
    ctx->device = dev;
    ctx->backend = backend;
    if (backend->init && backend->init(ctx, err) != 0) {
        free(ctx);
        return NULL;
    }
    return ctx;
}

fl_dtype fl_ctx_storage_dtype(const fl_ctx *ctx) {
    if (ctx->storage_set) return ctx->storage;
    return ctx->device.kind == FL_DEVICE_CUDA ? FL_BF16 : FL_F32;
}

int fl_ctx_set_storage_dtype(fl_ctx *ctx, fl_dtype dtype, fl_error *err) {
    if (dtype != FL_F32 && dtype != FL_BF16)
        return fl_fail(err, FL_EINVAL, "storage dtype %s is not supported (F32 or BF16)", fl_dtype_name(dtype));
    ctx->storage_set = true;
    ctx->storage = dtype;
    return 0;
}

void fl_ctx_destroy(fl_ctx *ctx) {
    if (!ctx) return;
    if (ctx->backend->destroy) ctx->backend->destroy(ctx);
    free(ctx);
}

void *fl_ctx_alloc(fl_ctx *ctx, size_t bytes) {
    return ctx->backend->alloc(ctx, bytes);
}

void fl_ctx_free(fl_ctx *ctx, void *ptr) {
    if (ptr) ctx->backend->free(ctx, ptr);
}

void fl_ctx_upload(fl_ctx *ctx, void *device_dst, const void *host_src, size_t bytes) {
    if (bytes) ctx->backend->upload(ctx, device_dst, host_src, bytes);
}

void fl_ctx_download(fl_ctx *ctx, void *host_dst, const void *device_src, size_t bytes) {
    if (bytes) ctx->backend->download(ctx, host_dst, device_src, bytes);
}

void fl_ctx_synchronize(fl_ctx *ctx) {
    if (ctx->backend->synchronize) ctx->backend->synchronize(ctx);
}

fl_tensor fl_ctx_tensor(fl_ctx *ctx, fl_dtype dtype, int ndim, const int64_t *shape) {
    fl_tensor t = fl_tensor_make(NULL, dtype, ctx->device, ndim, shape);
    size_t bytes = fl_tensor_nbytes(&t);
    t.data = fl_ctx_alloc(ctx, bytes ? bytes : 1);
    FL_CHECKF(t.data, "out of device memory allocating %zu bytes", bytes);
    return t;
}

int fl_ctx_tensor_alloc(fl_ctx *ctx, fl_dtype dtype, int ndim, const int64_t *shape, fl_tensor *out, fl_error *err) {
    *out = fl_tensor_make(NULL, dtype, ctx->device, ndim, shape);
    size_t bytes = fl_tensor_nbytes(out);
    out->data = fl_ctx_alloc(ctx, bytes ? bytes : 1);
    if (!out->data) return fl_fail(err, FL_ENOMEM, "out of device memory allocating %zu bytes", bytes);
    return 0;
}

void fl_ctx_tensor_free(fl_ctx *ctx, fl_tensor *t) {
    fl_ctx_free(ctx, t->data);
    t->data = NULL;
}

void fl_ctx_upload_f32(fl_ctx *ctx, fl_tensor *dst, const float *host_src, size_t count) {
    FL_CHECK(fl_tensor_is_contiguous(dst) && (size_t)fl_tensor_numel(dst) == count);
    FL_CHECK(fl_device_equal(dst->device, ctx->device));
    if (dst->dtype == FL_F32) {
        fl_ctx_upload(ctx, dst->data, host_src, count * sizeof(float));
        return;
    }
    fl_tensor staged = fl_ctx_tensor(ctx, FL_F32, dst->ndim, dst->shape);
    fl_ctx_upload(ctx, staged.data, host_src, count * sizeof(float));
    bool planning = ctx->planning; /* a transfer is data movement, never skipped by planning */
    ctx->planning = false;
    fl_op_copy(ctx, &staged, dst);
    ctx->planning = planning;
    fl_ctx_synchronize(ctx);
    fl_ctx_tensor_free(ctx, &staged);
}

void fl_ctx_download_f32(fl_ctx *ctx, float *host_dst, const fl_tensor *src, size_t count) {
    FL_CHECK(fl_tensor_is_contiguous(src) && (size_t)fl_tensor_numel(src) == count);
    FL_CHECK(fl_device_equal(src->device, ctx->device));
    if (src->dtype == FL_F32) {
        fl_ctx_synchronize(ctx);
        fl_ctx_download(ctx, host_dst, src->data, count * sizeof(float));
        return;
    }
    fl_tensor staged = fl_ctx_tensor(ctx, FL_F32, src->ndim, src->shape);
    bool planning = ctx->planning;
    ctx->planning = false;
    fl_op_copy(ctx, src, &staged);
    ctx->planning = planning;
    fl_ctx_synchronize(ctx);
    fl_ctx_download(ctx, host_dst, staged.data, count * sizeof(float));
    fl_ctx_tensor_free(ctx, &staged);
}
