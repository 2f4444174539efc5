/*
 * cpu_train.c — training-side ops of the CPU backend: Flux's sinusoidal timestep embedding, the
 * rectified-flow interpolation, the MSE loss and its gradient, sums of squares for gradient
 * clipping, and the AdamW step.
 *
 * Reductions (loss, sum of squares) accumulate in double; AdamW follows torch.optim.AdamW
 * (decoupled weight decay applied before the moment update, bias corrections folded into the
 * step size and the denominator as torch does).
 */
#include <math.h>

#include "kernels/cpu/cpu_internal.h"

void fl_cpu_timestep_embedding(fl_ctx *ctx, const fl_tensor *t, fl_tensor *out, float time_factor,
                               float max_period) {
    (void)ctx;
    int64_t B = out->shape[0], dim = out->shape[1], half = dim / 2;
    const float *td = t->data;
    float *od = out->data;
    double log_period = log((double)max_period);
    for (int64_t b = 0; b < B; b++) {
        double u = (double)time_factor * (double)td[b];
        float *row = od + b * dim;
        for (int64_t i = 0; i < half; i++) {
            double arg = u * exp(-log_period * (double)i / (double)half);
            row[i] = (float)cos(arg);
            row[half + i] = (float)sin(arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
}

void fl_cpu_flow_mix(fl_ctx *ctx, const fl_tensor *x0, const fl_tensor *noise, const fl_tensor *t, fl_tensor *xt,
                     fl_tensor *target) {
    (void)ctx;
    int64_t B = x0->shape[0], n = B ? fl_tensor_numel(x0) / B : 0;
    const float *x0d = x0->data, *nd = noise->data, *td = t->data;
    float *xtd = xt->data, *tgd = target->data;
    FL_OMP(omp parallel for collapse(2) schedule(static) if (B * n > FL_CPU_PARALLEL_MIN))
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < n; i++) {
            float tb = td[b], x = x0d[b * n + i], e = nd[b * n + i];
            xtd[b * n + i] = (1.0f - tb) * x + tb * e;
            tgd[b * n + i] = e - x;
        }
    }
}

double fl_cpu_mse_loss(fl_ctx *ctx, const fl_tensor *pred, const fl_tensor *target, fl_tensor *dpred) {
    (void)ctx;
    int64_t n = fl_tensor_numel(pred);
    if (n == 0) return 0.0;
    const float *p = pred->data, *t = target->data;
    float *g = dpred ? dpred->data : NULL;
    float gscale = (float)(2.0 / (double)n);
    double sum = 0.0;
    if (g) {
        FL_OMP(omp parallel for schedule(static) reduction(+ : sum) if (n > FL_CPU_PARALLEL_MIN))
        for (int64_t i = 0; i < n; i++) {
            float d = p[i] - t[i];
            sum += (double)d * d;
            g[i] = gscale * d;
        }
    } else {
        FL_OMP(omp parallel for schedule(static) reduction(+ : sum) if (n > FL_CPU_PARALLEL_MIN))
        for (int64_t i = 0; i < n; i++) {
            float d = p[i] - t[i];
            sum += (double)d * d;
        }
    }
    return sum / (double)n;
}

double fl_cpu_sum_squares(fl_ctx *ctx, const fl_tensor *x) {
    (void)ctx;
    int64_t n = fl_tensor_numel(x);
    const float *xd = x->data;
    double sum = 0.0;
    FL_OMP(omp parallel for schedule(static) reduction(+ : sum) if (n > FL_CPU_PARALLEL_MIN))
    for (int64_t i = 0; i < n; i++) sum += (double)xd[i] * xd[i];
    return sum;
}

void fl_cpu_adamw(fl_ctx *ctx, fl_tensor *param, const fl_tensor *grad, fl_tensor *m, fl_tensor *v,
                  const fl_adamw_params *p) {
    (void)ctx;
    int64_t n = fl_tensor_numel(param);
    float *pd = param->data, *md = m->data, *vd = v->data;
    const float *gd = grad->data;
    double bc1 = 1.0 - pow((double)p->beta1, (double)p->step);
    double bc2 = 1.0 - pow((double)p->beta2, (double)p->step);
    const float step_size = (float)((double)p->lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = 1.0f - p->lr * p->weight_decay;
    const float b1 = p->beta1, b2 = p->beta2, eps = p->eps, gs = p->grad_scale;
    FL_OMP(omp parallel for schedule(static) if (n > FL_CPU_PARALLEL_MIN))
    for (int64_t i = 0; i < n; i++) {
        float g = gd[i] * gs;
        float mi = b1 * md[i] + (1.0f - b1) * g;
        float vi = b2 * vd[i] + (1.0f - b2) * g * g;
        md[i] = mi;
        vd[i] = vi;
        pd[i] = pd[i] * decay - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}
