/*
 * flux_flops.c — the matrix FLOPs of one Flux step from the model's shapes (see flux_flops.h).
 *
 * Mirrors models/flux_step.c: which Linears run on how many rows, which of them the backward
 * gives an input gradient (every block Linear but the modulations, whose input — the
 * conditioning vector — needs none while the embedders are frozen; the final Linear; not the
 * embedders), and what each adapter costs.
 */
#include "benchmarks/flux_flops.h"

typedef struct counter {
    flux_flops f;
    int rank, adapters;
    bool training;
} counter;

/* A Linear of `rows` rows. adapted: it carries the adapters; dx: the backward computes its input
 * gradient. */
static void linear(counter *c, double rows, double in, double out, bool adapted, bool dx) {
    c->f.linear += 2 * rows * in * out;
    if (c->training && dx) c->f.linear += 2 * rows * in * out; /* dx = dy W */
    if (!adapted || c->rank <= 0) return;
    const double r = c->rank;
    c->f.lora += c->adapters * 2 * rows * r * (in + out); /* h = x A^T, y += s h B^T */
    if (c->training) {
        c->f.lora += 2 * rows * out * r + 2 * out * r * rows + 2 * r * in * rows; /* dh = s dy B, dB, dA */
        if (dx) c->f.lora += 2 * rows * r * in;                                   /* dx += dh A */
    }
}

static void attention(counter *c, double batch, double heads, double len, double d) {
    const double fwd = 4 * batch * heads * len * len * d;
    c->f.attention += fwd;
    if (c->training) c->f.attention += 2.5 * fwd;
}

flux_flops flux_step_flops(const fl_flux_params *p, int64_t batch, int64_t image_tokens, int64_t text_tokens,
                           int lora_rank, int adapters, bool training) {
    counter c = {{0, 0, 0, 0}, lora_rank, training ? 1 : adapters, training};
    const double b = (double)batch, li = (double)image_tokens, lt = (double)text_tokens, l = li + lt;
    const double h = p->hidden_size, m = fl_flux_mlp_hidden(p), heads = p->num_heads, d = fl_flux_head_dim(p);

    /* conditioning and embedders: frozen, no input gradient */
    linear(&c, b, 256, h, false, false); /* time_in */
    linear(&c, b, h, h, false, false);
    if (p->guidance_embed) {
        linear(&c, b, 256, h, false, false);
        linear(&c, b, h, h, false, false);
    }
    linear(&c, b, p->vec_in_dim, h, false, false); /* vector_in */
    linear(&c, b, h, h, false, false);
    linear(&c, b * li, p->in_channels, h, false, false);    /* img_in */
    linear(&c, b * lt, p->context_in_dim, h, false, false); /* txt_in */

    for (int i = 0; i < p->depth; i++) {
        const double rows[2] = {b * li, b * lt};
        for (int s = 0; s < 2; s++) {
            linear(&c, b, h, 6 * h, true, false);        /* img_mod / txt_mod */
            linear(&c, rows[s], h, 3 * h, true, true);  /* qkv */
            linear(&c, rows[s], h, h, true, true);      /* proj */
            linear(&c, rows[s], h, m, true, true);      /* mlp.0 */
            linear(&c, rows[s], m, h, true, true);      /* mlp.2 */
        }
        attention(&c, b, heads, l, d);
    }
    for (int i = 0; i < p->depth_single_blocks; i++) {
        linear(&c, b, h, 3 * h, true, false);          /* modulation */
        linear(&c, b * l, h, 3 * h + m, true, true);   /* linear1 */
        linear(&c, b * l, h + m, h, true, true);       /* linear2 */
        attention(&c, b, heads, l, d);
    }
    linear(&c, b, h, 2 * h, false, false);                /* final_layer.adaLN_modulation.1 */
    linear(&c, b * li, h, p->out_channels, false, true); /* final_layer.linear */
    c.f.total = c.f.linear + c.f.lora + c.f.attention;
    return c.f;
}
