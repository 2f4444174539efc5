/*
 * cuda_train.cu — training-side ops on CUDA: Flux's sinusoidal timestep embedding (angles in
 * double, as the CPU reference computes them), the rectified-flow interpolation, the MSE loss with
 * its gradient and the sum of squares (fp32 per-block partial sums, finished in double on the
 * host; both synchronize), and the AdamW step as one launch over the flat parameter buffer.
 */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

/* ---- timestep embedding ----------------------------------------------------------------------- */

template <typename T>
__global__ void timestep_embedding_kernel(const float *t, T *out, int64_t batch, int64_t dim, double time_factor,
                                          double log_period) {
    const int64_t half = dim / 2, n = batch * dim;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const int64_t b = i / dim, c = i - b * dim;
        float value = 0.0f; /* the last column when dim is odd */
        if (c < 2 * half) {
            const int64_t f = c < half ? c : c - half;
            const double arg = time_factor * (double)t[b] * exp(-log_period * (double)f / (double)half);
            value = (float)(c < half ? cos(arg) : sin(arg));
        }
        out[i] = fl_from_f32<T>(value);
    }
}

void fl_cuda_timestep_embedding(fl_ctx *ctx, const fl_tensor *t, fl_tensor *out, float time_factor,
                                float max_period) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t batch = out->shape[0], dim = out->shape[1], n = batch * dim;
    if (n == 0) return;
    FL_CUDA_DISPATCH(out->dtype, T,
                     timestep_embedding_kernel<T><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0,
                                                    s->stream>>>((const float *)t->data, (T *)out->data, batch, dim,
                                                                 (double)time_factor, log((double)max_period)));
    CHECK_LAUNCH();
}

/* ---- rectified-flow interpolation ------------------------------------------------------------- */

template <typename T>
__global__ void flow_mix_kernel(const T *x0, const T *noise, const float *t, T *xt, T *target, int64_t n,
                                int64_t per_sample) {
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const float tb = t[i / per_sample], x = fl_to_f32(x0[i]), e = fl_to_f32(noise[i]);
        xt[i] = fl_from_f32<T>((1.0f - tb) * x + tb * e);
        target[i] = fl_from_f32<T>(e - x);
    }
}

void fl_cuda_flow_mix(fl_ctx *ctx, const fl_tensor *x0, const fl_tensor *noise, const fl_tensor *t, fl_tensor *xt,
                      fl_tensor *target) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t n = fl_tensor_numel(x0), batch = x0->shape[0];
    if (n == 0) return;
    const int64_t per_sample = n / batch;
    FL_CUDA_DISPATCH(x0->dtype, T,
                     flow_mix_kernel<T><<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
                         (const T *)x0->data, (const T *)noise->data, (const float *)t->data, (T *)xt->data,
                         (T *)target->data, n, per_sample));
    CHECK_LAUNCH();
}

/* ---- reductions ------------------------------------------------------------------------------- */

#define REDUCE_THREADS 256

/* Sum of v over the block, valid in thread 0. */
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[REDUCE_THREADS / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = fl_warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = 0.0f;
    if (warp == 0) {
        v = lane < REDUCE_THREADS / 32 ? warp_sums[lane] : 0.0f;
        v = fl_warp_sum(v);
    }
    return v;
}

/* partial[block] = sum of (pred - target)^2 over the block's elements; dpred = grad_scale * diff. */
template <typename T>
__global__ void __launch_bounds__(REDUCE_THREADS)
    mse_kernel(const T *pred, const T *target, T *dpred, int64_t n, float grad_scale, float *partial) {
    float acc = 0.0f;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const float diff = fl_to_f32(pred[i]) - fl_to_f32(target[i]);
        acc += diff * diff;
        if (dpred) dpred[i] = fl_from_f32<T>(grad_scale * diff);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(REDUCE_THREADS) sum_squares_kernel(const float *x, int64_t n, float *partial) {
    float acc = 0.0f;
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) acc += x[i] * x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

static unsigned reduce_blocks(int64_t n) {
    int64_t blocks = (n + REDUCE_THREADS - 1) / REDUCE_THREADS;
    if (blocks > FL_CUDA_MAX_PARTIALS) blocks = FL_CUDA_MAX_PARTIALS;
    return (unsigned)(blocks < 1 ? 1 : blocks);
}

/* Waits for the partials and adds them in double, in block order. */
static double finish_partials(fl_cuda_state *s, const float *partial, unsigned blocks) {
    CHECK_CUDA(cudaMemcpyAsync(s->host_partials, partial, blocks * sizeof(float), cudaMemcpyDeviceToHost, s->stream));
    CHECK_CUDA(cudaStreamSynchronize(s->stream));
    double sum = 0.0;
    for (unsigned i = 0; i < blocks; i++) sum += (double)s->host_partials[i];
    return sum;
}

double fl_cuda_mse_loss(fl_ctx *ctx, const fl_tensor *pred, const fl_tensor *target, fl_tensor *dpred) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t n = fl_tensor_numel(pred);
    if (n == 0) {
        CHECK_CUDA(cudaStreamSynchronize(s->stream));
        return 0.0;
    }
    const unsigned blocks = reduce_blocks(n);
    float *partial = (float *)fl_cuda_scratch(s, blocks * sizeof(float));
    const float grad_scale = (float)(2.0 / (double)n);
    FL_CUDA_DISPATCH(pred->dtype, T,
                     mse_kernel<T><<<blocks, REDUCE_THREADS, 0, s->stream>>>(
                         (const T *)pred->data, (const T *)target->data, dpred ? (T *)dpred->data : (T *)NULL, n,
                         grad_scale, partial));
    CHECK_LAUNCH();
    return finish_partials(s, partial, blocks) / (double)n;
}

double fl_cuda_sum_squares(fl_ctx *ctx, const fl_tensor *x) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t n = fl_tensor_numel(x);
    if (n == 0) {
        CHECK_CUDA(cudaStreamSynchronize(s->stream));
        return 0.0;
    }
    const unsigned blocks = reduce_blocks(n);
    float *partial = (float *)fl_cuda_scratch(s, blocks * sizeof(float));
    sum_squares_kernel<<<blocks, REDUCE_THREADS, 0, s->stream>>>((const float *)x->data, n, partial);
    CHECK_LAUNCH();
    return finish_partials(s, partial, blocks);
}

/* ---- AdamW ------------------------------------------------------------------------------------ */

/* torch.optim.AdamW's arithmetic: decoupled decay, then the moments, then
 * param -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps). */
__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, int64_t n, float decay, float beta1,
                             float beta2, float eps, float grad_scale, float step_size, float bc2_sqrt) {
    for (int64_t i = fl_global_thread(); i < n; i += fl_global_stride()) {
        const float g = grad[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = param[i] * decay - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

void fl_cuda_adamw(fl_ctx *ctx, fl_tensor *param, const fl_tensor *grad, fl_tensor *m, fl_tensor *v,
                   const fl_adamw_params *p) {
    fl_cuda_state *s = fl_cuda_enter(ctx);
    const int64_t n = fl_tensor_numel(param);
    if (n == 0) return;
    const double bc1 = 1.0 - pow((double)p->beta1, (double)p->step);
    const double bc2 = 1.0 - pow((double)p->beta2, (double)p->step);
    const float step_size = (float)((double)p->lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = 1.0f - p->lr * p->weight_decay;
    adamw_kernel<<<fl_cuda_grid(s, n, FL_CUDA_THREADS), FL_CUDA_THREADS, 0, s->stream>>>(
        (float *)param->data, (const float *)grad->data, (float *)m->data, (float *)v->data, n, decay, p->beta1,
        p->beta2, p->eps, p->grad_scale, step_size, bc2_sqrt);
    CHECK_LAUNCH();
}
