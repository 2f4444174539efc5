/*
 * cpu_face.c — the ops of dlib's face networks on the CPU reference backend: max/average pooling
 * with clipped windows, the per-channel affine (with an optional ReLU), ReLU, and the residual
 * add of NCHW tensors of different shapes. Straight loops, parallel over planes; the average
 * sums in fp32 in row order as dlib does.
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

void fl_cpu_pool2d(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y, int kh, int kw, int stride_y, int stride_x,
                   int pad_y, int pad_x, bool max) {
    (void)ctx;
    const int64_t planes = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Ho = y->shape[2], Wo = y->shape[3];
    if (kh == 0 && kw == 0) kh = (int)H, kw = (int)W, stride_y = stride_x = 1, pad_y = pad_x = 0;
    const float *xd = x->data;
    float *yd = y->data;
    bool parallel = planes * Ho * Wo * kh * kw > FL_CPU_PARALLEL_MIN;
    (void)parallel;
    FL_OMP(omp parallel for schedule(static) if (parallel))
    for (int64_t p = 0; p < planes; p++) {
        const float *src = xd + p * H * W;
        float *dst = yd + p * Ho * Wo;
        for (int64_t i = 0; i < Ho; i++) {
            int64_t r0 = i * stride_y - pad_y, r1 = r0 + kh;
            r0 = r0 < 0 ? 0 : r0;
            r1 = r1 > H ? H : r1;
            for (int64_t j = 0; j < Wo; j++) {
                int64_t c0 = j * stride_x - pad_x, c1 = c0 + kw;
                c0 = c0 < 0 ? 0 : c0;
                c1 = c1 > W ? W : c1;
                float acc = max ? -INFINITY : 0.0f;
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < c1; c++) {
                        float v = src[r * W + c];
                        if (max) acc = v > acc ? v : acc;
                        else acc += v;
                    }
                int64_t count = (r1 - r0) * (c1 - c0);
                if (count <= 0) acc = 0.0f;
                else if (!max) acc /= (float)count;
                dst[i * Wo + j] = acc;
            }
        }
    }
}

void fl_cpu_channel_affine(fl_ctx *ctx, const fl_tensor *x, const fl_tensor *scale, const fl_tensor *shift,
                           fl_tensor *y, bool relu) {
    (void)ctx;
    const int64_t B = x->shape[0], C = x->shape[1], inner = C ? fl_tensor_numel(x) / (B * C) : 0;
    const float *xd = x->data, *sd = scale->data, *hd = shift->data;
    float *yd = y->data;
    bool parallel = B * C * inner > FL_CPU_PARALLEL_MIN;
    (void)parallel;
    FL_OMP(omp parallel for schedule(static) if (parallel))
    for (int64_t p = 0; p < B * C; p++) {
        const float s = sd[p % C], h = hd[p % C];
        const float *src = xd + p * inner;
        float *dst = yd + p * inner;
        for (int64_t k = 0; k < inner; k++) {
            float v = src[k] * s + h;
            dst[k] = relu && !(v > 0.0f) ? 0.0f : v;
        }
    }
}

void fl_cpu_relu(fl_ctx *ctx, const fl_tensor *x, fl_tensor *y) {
    (void)ctx;
    fl_matrix mx = fl_cpu_matrix(x), my = fl_cpu_matrix(y);
    const float *xd = x->data;
    float *yd = y->data;
    for (int64_t r = 0; r < mx.rows; r++)
        for (int64_t c = 0; c < mx.cols; c++) {
            float v = xd[r * mx.ld + c];
            yd[r * my.ld + c] = v > 0.0f ? v : 0.0f;
        }
}

void fl_cpu_add_padded(fl_ctx *ctx, const fl_tensor *a, const fl_tensor *b, fl_tensor *out) {
    (void)ctx;
    const int64_t B = out->shape[0], C = out->shape[1], H = out->shape[2], W = out->shape[3];
    const float *ad = a->data, *bd = b->data;
    float *od = out->data;
    const int64_t Ca = a->shape[1], Ha = a->shape[2], Wa = a->shape[3];
    const int64_t Cb = b->shape[1], Hb = b->shape[2], Wb = b->shape[3];
    bool parallel = B * C * H * W > FL_CPU_PARALLEL_MIN;
    (void)parallel;
    FL_OMP(omp parallel for schedule(static) if (parallel))
    for (int64_t p = 0; p < B * C; p++) {
        const int64_t n = p / C, c = p % C;
        float *dst = od + p * H * W;
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < W; j++) {
                float va = c < Ca && i < Ha && j < Wa ? ad[((n * Ca + c) * Ha + i) * Wa + j] : 0.0f;
                float vb = c < Cb && i < Hb && j < Wb ? bd[((n * Cb + c) * Hb + i) * Wb + j] : 0.0f;
                dst[i * W + j] = va + vb;
            }
    }
}
