/*
 * cuda_backend.cu — the CUDA backend's table and its context plumbing: init (device, stream,
 * cuBLASLt handle, workspace, pinned reduction buffer) and destroy, device memory, host transfers
 * ordered on the context's stream, synchronization, and the shared helpers declared in
 * cuda_common.cuh (device entry, scratch memory, launch sizing, matrix views). The op kernels
 * live in the themed files next to this one.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

/* An empty kernel: asking for its attributes tells whether this binary has code for the GPU. */
__global__ void fl_cuda_probe_kernel(void) {}

/* ---- shared helpers --------------------------------------------------------------------------- */

fl_cuda_state *fl_cuda_enter(fl_ctx *ctx) {
    fl_cuda_state *s = (fl_cuda_state *)ctx->impl;
    int current = -1;
    CHECK_CUDA(cudaGetDevice(&current));
    if (current != s->device) CHECK_CUDA(cudaSetDevice(s->device));
    return s;
}

void *fl_cuda_scratch(fl_cuda_state *s, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (bytes > s->scratch_bytes) {
        /* Work queued earlier may still use the old buffer. */
        CHECK_CUDA(cudaStreamSynchronize(s->stream));
        if (s->scratch) CHECK_CUDA(cudaFree(s->scratch));
        s->scratch = NULL;
        s->scratch_bytes = 0;
        size_t grown = bytes + bytes / 4;
        grown = (grown + 255) & ~(size_t)255;
        cudaError_t e = cudaMalloc(&s->scratch, grown);
        FL_CHECKF(e == cudaSuccess, "CUDA scratch: cannot allocate %zu bytes: %s", grown, cudaGetErrorString(e));
        s->scratch_bytes = grown;
    }
    return s->scratch;
}

unsigned fl_cuda_grid(const fl_cuda_state *s, int64_t n, int threads) {
    int64_t blocks = (n + threads - 1) / threads;
    const int64_t cap = (int64_t)s->sm_count * 32;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    return (unsigned)blocks;
}

fl_matrix fl_cuda_matrix(const fl_tensor *t) {
    fl_matrix m = {0, 0, 0};
    FL_CHECK(fl_tensor_matrix(t, &m));
    return m;
}

/* ---- context ---------------------------------------------------------------------------------- */

static void release_state(fl_cuda_state *s) {
    /* Best effort: a context torn down after a failure must not abort here. */
    if (s->stream) (void)cudaStreamSynchronize(s->stream);
    fl_cuda_gemm_cache_destroy(s);
    if (s->host_partials) (void)cudaFreeHost(s->host_partials);
    if (s->scratch) (void)cudaFree(s->scratch);
    if (s->workspace) (void)cudaFree(s->workspace);
    if (s->lt) (void)cublasLtDestroy(s->lt);
    if (s->stream) (void)cudaStreamDestroy(s->stream);
    (void)cudaGetLastError();
    free(s);
}

static int cuda_init(fl_ctx *ctx, fl_error *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return fl_fail(err, FL_EUNSUPPORTED, "CUDA is not usable here: %s", cudaGetErrorString(e));
    }
    const int dev = ctx->device.index;
    if (dev < 0 || dev >= count)
        return fl_fail(err, FL_EUNSUPPORTED, "cuda:%d does not exist (%d usable CUDA device(s))", dev, count);
    e = cudaSetDevice(dev);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return fl_fail(err, FL_EUNSUPPORTED, "cuda:%d cannot be used: %s", dev, cudaGetErrorString(e));
    }
    cudaFuncAttributes probe;
    e = cudaFuncGetAttributes(&probe, (const void *)fl_cuda_probe_kernel);
    if (e != cudaSuccess && e != cudaErrorInvalidDeviceFunction && e != cudaErrorNoKernelImageForDevice) {
        (void)cudaGetLastError();
        return fl_fail(err, FL_EUNSUPPORTED, "cuda:%d cannot be used: %s", dev, cudaGetErrorString(e));
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        int major = 0, minor = 0;
        (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
        (void)cudaGetLastError();
        return fl_fail(err, FL_EUNSUPPORTED,
                       "cuda:%d (compute capability %d.%d) has no kernels in this build (%s); "
                       "reconfigure with -Dgpu_arch=%d%d",
                       dev, major, minor, cudaGetErrorString(e), major, minor);
    }

    fl_cuda_state *s = (fl_cuda_state *)calloc(1, sizeof *s);
    if (!s) return fl_fail(err, FL_ENOMEM, "cuda:%d: out of host memory", dev);
    s->device = dev;
    const char *what = NULL;
    int sms = 0, optin = 0, major = 0;
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess) {
        what = "querying the device";
    } else if ((e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        what = "creating a stream";
    } else if ((st = cublasLtCreate(&s->lt)) != CUBLAS_STATUS_SUCCESS) {
        s->lt = NULL;
        what = "creating the cuBLASLt handle";
    } else if ((e = cudaMalloc(&s->workspace, FL_CUDA_WORKSPACE_BYTES)) != cudaSuccess) {
        s->workspace = NULL;
        what = "allocating the cuBLASLt workspace";
    } else if ((e = cudaMallocHost((void **)&s->host_partials, FL_CUDA_MAX_PARTIALS * sizeof(float))) !=
               cudaSuccess) {
        s->host_partials = NULL;
        what = "allocating pinned host memory";
    }
    if (what) {
        const char *why = st != CUBLAS_STATUS_SUCCESS ? cublasLtGetStatusName(st) : cudaGetErrorString(e);
        (void)cudaGetLastError();
        release_state(s);
        return fl_fail(err, FL_EIO, "cuda:%d: %s failed: %s", dev, what, why);
    }
    s->sm_count = sms > 0 ? sms : 1;
    s->smem_optin = (size_t)(optin > 0 ? optin : 48 * 1024);
    s->cc_major = major;
    const char *attention = getenv("FLASHLORA_CUDA_ATTENTION");
    s->attention_simt = attention && !strcmp(attention, "simt");
    /* Tests and benchmarks take the code paths of GPUs with less shared memory by lowering it. */
    const char *limit = getenv("FLASHLORA_CUDA_SMEM_LIMIT");
    if (limit && *limit) {
        char *end = NULL;
        unsigned long long v = strtoull(limit, &end, 10);
        if (end && !*end && v >= 48 * 1024 && v < s->smem_optin) s->smem_optin = (size_t)v;
    }
    ctx->impl = s;
    return 0;
}

static void cuda_destroy(fl_ctx *ctx) {
    fl_cuda_state *s = (fl_cuda_state *)ctx->impl;
    if (!s) return;
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current != s->device) (void)cudaSetDevice(s->device);
    release_state(s);
    ctx->impl = NULL;
}

static void *cuda_alloc(fl_ctx *ctx, size_t bytes) {
    fl_cuda_enter(ctx);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return NULL;
    }
    CHECK_CUDA(e);
    return p;
}

static void cuda_free(fl_ctx *ctx, void *ptr) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    /* Kernels queued on the stream may still read or write the buffer. */
    CHECK_CUDA(cudaStreamSynchronize(s->stream));
    CHECK_CUDA(cudaFree(ptr));
}

/* Transfers go through the context's stream (a non-blocking stream does not order with the
 * legacy default stream that plain cudaMemcpy uses) and wait for completion. */
static void cuda_upload(fl_ctx *ctx, void *dst, const void *src, size_t bytes) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s->stream));
    CHECK_CUDA(cudaStreamSynchronize(s->stream));
}

static void cuda_download(fl_ctx *ctx, void *dst, const void *src, size_t bytes) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s->stream));
    CHECK_CUDA(cudaStreamSynchronize(s->stream));
}

static void cuda_synchronize(fl_ctx *ctx) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    CHECK_CUDA(cudaStreamSynchronize(s->stream));
}

/* ---- the table -------------------------------------------------------------------------------- */

/* A new entry in struct fl_backend must be filled below: this fails to compile until then. */
static_assert(sizeof(fl_backend) == 50 * sizeof(void *), "struct fl_backend changed: update the CUDA table");

static fl_backend make_table(void) {
    fl_backend b;
    memset(&b, 0, sizeof b);
    b.name = "cuda";
    b.init = cuda_init;
    b.destroy = cuda_destroy;
    b.alloc = cuda_alloc;
    b.free = cuda_free;
    b.upload = cuda_upload;
    b.download = cuda_download;
    b.synchronize = cuda_synchronize;
    b.gemm = fl_cuda_gemm;
    b.linear = fl_cuda_linear;
    b.linear_rows = NULL; /* no batch-invariant product: per-sample Linears run per segment */
    b.bias_grad = fl_cuda_bias_grad;
    b.copy = fl_cuda_copy;
    b.fill = fl_cuda_fill;
    b.add = fl_cuda_add;
    b.scale = fl_cuda_scale;
    b.gelu_tanh = fl_cuda_gelu_tanh;
    b.gelu_tanh_backward = fl_cuda_gelu_tanh_backward;
    b.silu = fl_cuda_silu;
    b.silu_backward = fl_cuda_silu_backward;
    b.layernorm = fl_cuda_layernorm;
    b.layernorm_backward = fl_cuda_layernorm_backward;
    b.ln_modulate = fl_cuda_ln_modulate;
    b.ln_modulate_backward = fl_cuda_ln_modulate_backward;
    b.rmsnorm = fl_cuda_rmsnorm;
    b.rmsnorm_backward = fl_cuda_rmsnorm_backward;
    b.gated_residual = fl_cuda_gated_residual;
    b.gated_residual_backward = fl_cuda_gated_residual_backward;
    b.rope = fl_cuda_rope;
    b.rope_backward = fl_cuda_rope_backward;
    b.attention = fl_cuda_attention;
    b.attention_backward = fl_cuda_attention_backward;
    b.timestep_embedding = fl_cuda_timestep_embedding;
    b.flow_mix = fl_cuda_flow_mix;
    b.mse_loss = fl_cuda_mse_loss;
    b.sum_squares = fl_cuda_sum_squares;
    b.adamw = fl_cuda_adamw;
    /* text encoders */
    b.embedding = fl_cuda_embedding;
    b.layernorm_affine = fl_cuda_layernorm_affine;
    b.attention_masked = fl_cuda_attention_masked;
    b.quick_gelu = fl_cuda_quick_gelu;
    b.gelu_erf = fl_cuda_gelu_erf;
    b.mul = fl_cuda_mul;

    /* images (the autoencoder) */
    b.conv2d = fl_cuda_conv2d;
    b.group_norm = fl_cuda_group_norm;
    b.upsample_nearest2x = fl_cuda_upsample_nearest2x;
    /* face networks (dlib) */
    b.pool2d = fl_cuda_pool2d;
    b.channel_affine = fl_cuda_channel_affine;
    b.relu = fl_cuda_relu;
    b.add_padded = fl_cuda_add_padded;
    return b;
}

extern "C" const fl_backend *fl_cuda_backend(void) {
    static const fl_backend table = make_table();
    return &table;
}
