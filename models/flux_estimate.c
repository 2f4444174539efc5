/*
 * flux_estimate.c — how much memory one step of a job will take, found before any of it is
 * allocated (see fl_flux_estimate_memory in flux.h).
 *
 * A skeleton model is built from the parameters alone: every Linear, norm scale and adapter has
 * its shape and no storage. The step is then run in planning mode against a measuring arena on a
 * context that has the job's device kind (so the storage dtype is the one the workers use) and no
 * backend at all: in planning mode ops check shapes and compute nothing, so nothing ever touches
 * the missing storage. The arena's peak is exactly what the real step's arena will be, because it
 * is the same code making the same allocations. Weights, adapters and optimizer state are counted
 * from their shapes; the kernels' own scratch outside the arena (CPU attention) and the step's
 * input tensors are added as computed from the shapes.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/flux_internal.h"

#define ALIGNED(n) (((size_t)(n) + 255) & ~(size_t)255)

/* Attaches an adapter set of rank `rank` to the selected Linears of a skeleton, without memory,
 * trainable or not, with the dtypes the real attach gives them (flux_model.c): frozen matrices
 * in the storage dtype; a trainable adapter's gradients f32, and its matrices f32 master weights
 * or, with 16-bit storage, views of the 16-bit copy the products read. What the real buffers
 * take is counted by the caller from the element count returned. */
static int64_t skeleton_attach(fl_flux_model *m, const bool *selected, int rank, bool trainable) {
    int set_id = m->next_set_id++;
    m->sets = fl_xrealloc(m->sets, (m->n_sets + 1) * sizeof *m->sets);
    m->sets[m->n_sets++] = (flux_adapter_set){set_id, trainable, NULL};
    fl_dtype dtype = m->dtype;
    fl_device dev = m->ctx->device;
    int64_t total = 0;
    for (size_t i = 0; i < m->n_linears; i++) {
        fl_flux_linear *lin = &m->linears[i];
        if (!selected[i] || lin->n_adapters >= FL_FLUX_MAX_ADAPTERS) continue;
        int64_t a_shape[2] = {rank, lin->in}, b_shape[2] = {lin->out, rank};
        fl_flux_adapter *ad = &lin->adapters[lin->n_adapters];
        ad->a = fl_tensor_make(NULL, dtype, dev, 2, a_shape);
        ad->b = fl_tensor_make(NULL, dtype, dev, 2, b_shape);
        ad->scale = 1.0f;
        ad->set_id = set_id;
        if (trainable) {
            lin->grad_a = fl_tensor_make(NULL, FL_F32, dev, 2, a_shape);
            lin->grad_b = fl_tensor_make(NULL, FL_F32, dev, 2, b_shape);
            lin->trainable = lin->n_adapters;
        }
        lin->n_adapters++;
        total += (int64_t)rank * (lin->in + lin->out);
    }
    if (trainable) {
        m->n_train = total;
        m->train_shadow = dtype != FL_F32;
    }
    if (rank > m->rank_reserve) m->rank_reserve = rank; /* the per-sample scratch, as a real attach widens it */
    return total;
}

/* The step of the real entry points (fl_flux_forward, fl_flux_loss_and_grads) in planning mode
 * against a measuring arena; returns the arena's peak. */
static size_t measure_step(fl_flux_model *m, const fl_flux_inputs *in, const fl_tensor *x0, const fl_tensor *noise,
                           bool training) {
    flux_acts *a = &m->acts;
    m->per_sample = !training && m->sample_batch > 0;
    m->inference = !training;
    a->batch = in->img->shape[0];
    a->li = in->img->shape[1];
    a->lt = in->txt->shape[1];
    a->dbl = fl_xcalloc(m->p.depth ? (size_t)m->p.depth : 1, sizeof *a->dbl);
    a->sgl = fl_xcalloc(m->p.depth_single_blocks ? (size_t)m->p.depth_single_blocks : 1, sizeof *a->sgl);
    fl_arena_init_measure(&m->arena, m->ctx->device);
    if (training) { /* as training_step in flux_model.c */
        a->xt = fl_arena_tensor(&m->arena, m->dtype, x0->ndim, x0->shape);
        a->target = fl_arena_tensor(&m->arena, m->dtype, x0->ndim, x0->shape);
        fl_op_flow_mix(m->ctx, x0, noise, in->timesteps, &a->xt, &a->target);
        flux_run_forward(m, in, &a->xt);
        a->dpred = fl_arena_tensor(&m->arena, m->dtype, a->out.ndim, a->out.shape);
        fl_op_mse_loss(m->ctx, &a->out, &a->target, &a->dpred);
        flux_run_backward(m);
    } else {
        flux_run_forward(m, in, in->img);
    }
    return fl_arena_peak(&m->arena);
}

int fl_flux_estimate_memory(const fl_flux_params *p, const fl_flux_job_shape *s, fl_flux_memory *out,
                            fl_error *err) {
    memset(out, 0, sizeof *out);
    if (fl_flux_params_validate(p, err) != 0) return -1;
    if (s->batch < 1 || s->batch > 4096 || s->image_tokens < 1 || s->image_tokens > ((int64_t)1 << 32) ||
        s->text_tokens < 1 || s->text_tokens > 65536)
        return fl_fail(err, FL_EINVAL, "memory estimate: batch %d, %lld image tokens and %lld text tokens are out of "
                                       "range", s->batch, (long long)s->image_tokens, (long long)s->text_tokens);
    int rank = s->training ? s->lora_rank : s->adapter_rank;
    if (rank < 0 || rank > 4096 || (s->training && rank < 1))
        return fl_fail(err, FL_EINVAL, "memory estimate: rank %d is out of range", rank);
    if (s->n_adapters < 0 || s->n_adapters > FL_FLUX_MAX_ADAPTERS)
        return fl_fail(err, FL_EINVAL, "memory estimate: %d adapters is out of range", s->n_adapters);

    fl_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.device.kind = s->device;
    ctx.planning = true; /* no backend: nothing may compute or allocate */
    fl_flux_model *m = flux_model_skeleton(&ctx, p);
    size_t esize = fl_dtype_size(m->dtype);
    for (size_t i = 0; i < m->n_params; i++) {
        const fl_flux_param_decl *d = &m->decls[i];
        out->weights += ALIGNED((size_t)(d->ndim == 2 ? d->shape[0] * d->shape[1] : d->shape[0]) * esize);
    }
    bool *selected = fl_xcalloc(m->n_linears ? m->n_linears : 1, sizeof *selected);
    int rc = 0;
    if (s->training) {
        if (fl_flux_select_targets(m, s->targets && *s->targets ? s->targets : "all", selected, err) < 0) rc = -1;
        if (rc == 0) {
            int64_t n = skeleton_attach(m, selected, rank, true);
            out->adapters = 2 * ALIGNED((size_t)n * sizeof(float)); /* parameters and gradients */
            if (m->train_shadow) out->adapters += ALIGNED((size_t)n * esize); /* the 16-bit copy */
            out->optimizer = 2 * ALIGNED((size_t)n * sizeof(float)); /* AdamW m and v */
        }
    } else if (s->n_adapters > 0 && rank > 0) {
        /* Per-sample adapters on every Linear of the blocks (the widest any adapter can reach). */
        if (fl_flux_select_targets(m, "all", selected, err) < 0) rc = -1;
        fl_flux_sample_adapters *sel = fl_xcalloc((size_t)s->batch, sizeof *sel);
        for (int k = 0; rc == 0 && k < s->n_adapters; k++) {
            skeleton_attach(m, selected, rank, false);
            for (int b = 0; b < s->batch; b++) {
                sel[b].set_ids[k] = m->sets[m->n_sets - 1].set_id;
                sel[b].multipliers[k] = 1.0f;
                sel[b].n = k + 1;
            }
        }
        if (rc == 0) rc = fl_flux_set_sample_adapters(m, s->batch, sel, err);
        free(sel);
        out->adapters = ALIGNED((size_t)s->adapter_params * esize);
    } else {
        out->adapters = ALIGNED((size_t)s->adapter_params * esize);
    }
    free(selected);
    if (rc != 0) {
        fl_flux_free(m);
        return -1;
    }

    /* The step's inputs, shaped as the sampler and the trainer make them (no storage). */
    int64_t b = s->batch, li = s->image_tokens, lt = s->text_tokens;
    int64_t img_shape[3] = {b, li, p->in_channels}, txt_shape[3] = {b, lt, p->context_in_dim},
            y_shape[2] = {b, p->vec_in_dim}, t_shape[1] = {b};
    fl_tensor img = fl_tensor_make(NULL, m->dtype, ctx.device, 3, img_shape);
    fl_tensor noise = img;
    fl_tensor txt = fl_tensor_make(NULL, m->dtype, ctx.device, 3, txt_shape);
    fl_tensor y = fl_tensor_make(NULL, m->dtype, ctx.device, 2, y_shape);
    fl_tensor t = fl_tensor_make(NULL, FL_F32, ctx.device, 1, t_shape);
    fl_flux_inputs in = {&img, &txt, &y, &t, p->guidance_embed ? &t : NULL, NULL, NULL};
    ctx.flops = 0;
    out->activations = measure_step(m, &in, &img, &noise, s->training);
    out->flops = ctx.flops;

    /* Inputs on the device (image or x0 and noise, text, pooled text, timesteps, guidance), and
     * the CPU attention's scratch outside the arena: the keys transposed for every (sample, head)
     * (in the backward, keys and values) and per thread a block of scores. */
    size_t inputs = ALIGNED(fl_tensor_nbytes(&img)) * (s->training ? 2 : 1) + ALIGNED(fl_tensor_nbytes(&txt)) +
                    ALIGNED(fl_tensor_nbytes(&y)) + 2 * ALIGNED((size_t)b * sizeof(float));
    size_t scratch = 0;
    if (s->device == FL_DEVICE_CPU) { /* kernels/cpu/cpu_attention.c */
        size_t l = (size_t)(li + lt), bh = (size_t)b * (size_t)p->num_heads, d = (size_t)fl_flux_head_dim(p);
        size_t threads = s->threads > 0 ? (size_t)s->threads : 1, forward = (bh * d * l + threads * 32 * l) * sizeof(float);
        size_t backward = threads * (2 * d + 64) * l * sizeof(float);
        scratch = s->training && backward > forward ? backward : forward;
    }
    out->inputs = inputs + scratch;
    out->total = out->weights + out->adapters + out->optimizer + out->activations + out->inputs;
    fl_flux_free(m);
    return 0;
}
