/*
 * metrics.c — identity scores from embeddings (eval/metrics.h). Per-image figures (similarity to
 * every subject, nearest subject, largest cosine to a training image, pairwise distances) are
 * computed once; the point estimates and every bootstrap resample are sums over them.
 */
#include "eval/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double fl_eval_quantile(const double *v, int n, double q) {
    if (n <= 0) return NAN;
    double *s = fl_xmalloc((size_t)n * sizeof(double));
    memcpy(s, v, (size_t)n * sizeof(double));
    qsort(s, (size_t)n, sizeof(double), cmp_double);
    double pos = q * (n - 1);
    int lo = (int)floor(pos);
    if (lo >= n - 1) lo = n - 1;
    double frac = pos - lo, r = lo + 1 < n ? s[lo] + frac * (s[lo + 1] - s[lo]) : s[lo];
    free(s);
    return r;
}

double fl_eval_auc(const double *a, int na, const double *b, int nb) {
    if (na <= 0 || nb <= 0) return NAN;
    double wins = 0;
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++) wins += a[i] > b[j] ? 1.0 : a[i] == b[j] ? 0.5 : 0.0;
    return wins / ((double)na * nb);
}

static double dot(const float *a, const float *b, int d) {
    double s = 0;
    for (int k = 0; k < d; k++) s += (double)a[k] * b[k];
    return s;
}

/* Mean cosine of x to the rows of refs. */
static double mean_sim(const float *x, const fl_eval_embeddings *refs, int d) {
    double s = 0;
    for (int r = 0; r < refs->n; r++) s += dot(x, refs->x + (size_t)r * d, d);
    return s / refs->n;
}

/* Per-image figures of one set. */
typedef struct set_stats {
    int n;
    int *nearest;
    double *sim0;      /* s(x, 0) */
    double *max_train; /* largest cosine to a training image */
    double *dist;      /* [n, n] cosine distances */
} set_stats;

static void set_stats_compute(const fl_eval_score_input *in, const fl_eval_embeddings *set, set_stats *st) {
    const int d = in->dim, n = set->n;
    st->n = n;
    st->nearest = fl_xcalloc((size_t)(n ? n : 1), sizeof(int));
    st->sim0 = fl_xcalloc((size_t)(n ? n : 1), sizeof(double));
    st->max_train = fl_xcalloc((size_t)(n ? n : 1), sizeof(double));
    st->dist = fl_xcalloc((size_t)(n ? n : 1) * (size_t)(n ? n : 1), sizeof(double));
    for (int i = 0; i < n; i++) {
        const float *x = set->x + (size_t)i * d;
        double best = -INFINITY;
        int arg = 0;
        for (int k = 0; k < in->n_subjects; k++) {
            double s = mean_sim(x, &in->subjects[k], d);
            if (k == 0) st->sim0[i] = s;
            /* ties go to a distractor: the target must win strictly */
            if (s > best || (s == best && k > 0)) {
                best = s;
                arg = k;
            }
        }
        st->nearest[i] = arg;
        double mt = -INFINITY;
        for (int t = 0; t < in->train.n; t++) {
            double c = dot(x, in->train.x + (size_t)t * d, d);
            if (c > mt) mt = c;
        }
        st->max_train[i] = in->train.n ? mt : NAN;
        for (int j = 0; j < n; j++) st->dist[(size_t)i * n + j] = 1.0 - dot(x, set->x + (size_t)j * d, d);
    }
}

/* The scores over a selection of images (idx into each set, possibly repeated). */
typedef struct point {
    double retrieval, base_retrieval, tau, verification, base_pass, auc, sim_gen, sim_base, copy_rate, base_copy_rate,
        diversity_gen, diversity_base;
} point;

static double diversity(const set_stats *st, const int *idx, int n) {
    double s = 0;
    long pairs = 0;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++) {
            if (idx[a] == idx[b]) continue; /* the same image drawn twice is not a pair */
            s += st->dist[(size_t)idx[a] * st->n + idx[b]];
            pairs++;
        }
    return pairs ? s / pairs : NAN;
}

static point score_selection(const set_stats *g, const int *gi, int ng, const set_stats *b, const int *bi, int nb) {
    point p;
    double *gs = fl_xmalloc((size_t)(ng ? ng : 1) * sizeof(double)), *bs = fl_xmalloc((size_t)(nb ? nb : 1) * sizeof(double));
    int hit = 0, copies = 0;
    double sum = 0;
    for (int i = 0; i < ng; i++) {
        gs[i] = g->sim0[gi[i]];
        hit += g->nearest[gi[i]] == 0;
        copies += g->max_train[gi[i]] > FL_EVAL_COPY_THRESHOLD;
        sum += gs[i];
    }
    p.retrieval = ng ? (double)hit / ng : NAN;
    p.sim_gen = ng ? sum / ng : NAN;
    p.copy_rate = ng ? (double)copies / ng : NAN;
    p.diversity_gen = diversity(g, gi, ng);
    hit = copies = 0;
    sum = 0;
    for (int i = 0; i < nb; i++) {
        bs[i] = b->sim0[bi[i]];
        hit += b->nearest[bi[i]] == 0;
        copies += b->max_train[bi[i]] > FL_EVAL_COPY_THRESHOLD;
        sum += bs[i];
    }
    p.base_retrieval = nb ? (double)hit / nb : NAN;
    p.sim_base = nb ? sum / nb : NAN;
    p.base_copy_rate = nb ? (double)copies / nb : NAN;
    p.diversity_base = diversity(b, bi, nb);
    p.tau = fl_eval_quantile(bs, nb, 1.0 - FL_EVAL_FAR);
    if (nb > 0) {
        int pass = 0, bpass = 0;
        for (int i = 0; i < ng; i++) pass += gs[i] > p.tau;
        for (int i = 0; i < nb; i++) bpass += bs[i] > p.tau;
        p.verification = ng ? (double)pass / ng : NAN;
        p.base_pass = (double)bpass / nb;
    } else {
        p.verification = p.base_pass = NAN;
    }
    p.auc = fl_eval_auc(gs, ng, bs, nb);
    free(gs);
    free(bs);
    return p;
}

static fl_ci ci_of(double *v, int n) {
    fl_ci c = {NAN, NAN};
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(v[i])) v[m++] = v[i];
    if (m == 0) return c;
    c.lo = fl_eval_quantile(v, m, 0.025);
    c.hi = fl_eval_quantile(v, m, 0.975);
    return c;
}

int fl_eval_score(const fl_eval_score_input *in, fl_eval_scores *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (in->n_subjects < 1 || !in->subjects) return fl_fail(err, FL_EINVAL, "no reference subject");
    for (int k = 0; k < in->n_subjects; k++)
        if (in->subjects[k].n < 1) return fl_fail(err, FL_EINVAL, "subject %d has no reference image", k);
    if (in->gen.n < 1) return fl_fail(err, FL_EINVAL, "no generated image to score");
    if (in->n_prompts < 1) return fl_fail(err, FL_EINVAL, "no prompt");
    for (int i = 0; i < in->gen.n; i++)
        if (in->gen_prompt[i] < 0 || in->gen_prompt[i] >= in->n_prompts)
            return fl_fail(err, FL_EINVAL, "generation %d has prompt index %d outside [0, %d)", i, in->gen_prompt[i], in->n_prompts);
    for (int i = 0; i < in->base.n; i++)
        if (in->base_prompt[i] < 0 || in->base_prompt[i] >= in->n_prompts)
            return fl_fail(err, FL_EINVAL, "base image %d has prompt index %d outside [0, %d)", i, in->base_prompt[i], in->n_prompts);
    const int d = in->dim;
    set_stats g, b;
    set_stats_compute(in, &in->gen, &g);
    set_stats_compute(in, &in->base, &b);
    out->n_gen = in->gen.n;
    out->n_base = in->base.n;
    out->n_refs = in->subjects[0].n;
    out->n_subjects = in->n_subjects;

    int *gi = fl_xmalloc((size_t)g.n * sizeof(int)), *bi = fl_xmalloc((size_t)(b.n ? b.n : 1) * sizeof(int));
    for (int i = 0; i < g.n; i++) gi[i] = i;
    for (int i = 0; i < b.n; i++) bi[i] = i;
    point p = score_selection(&g, gi, g.n, &b, bi, b.n);
    out->retrieval = p.retrieval;
    out->base_retrieval = p.base_retrieval;
    out->tau = p.tau;
    out->verification = p.verification;
    out->base_pass = p.base_pass;
    out->auc = p.auc;
    out->sim_gen = p.sim_gen;
    out->sim_base = p.sim_base;
    out->copy_rate = p.copy_rate;
    out->base_copy_rate = p.base_copy_rate;
    out->diversity_gen = p.diversity_gen;
    out->diversity_base = p.diversity_base;

    /* the reference ceiling: leave-one-out mean similarity among the adapter's references */
    const fl_eval_embeddings *r = &in->subjects[0];
    if (r->n >= 2) {
        double s = 0;
        for (int i = 0; i < r->n; i++) {
            double t = 0;
            for (int j = 0; j < r->n; j++)
                if (j != i) t += dot(r->x + (size_t)i * d, r->x + (size_t)j * d, d);
            s += t / (r->n - 1);
        }
        out->ref_ceiling = s / r->n;
    } else {
        out->ref_ceiling = NAN;
    }
    double denom = out->ref_ceiling - out->sim_base;
    out->normalized_identity = isnan(denom) || fabs(denom) < 1e-9 ? NAN : (out->sim_gen - out->sim_base) / denom;

    out->confusion = fl_xcalloc((size_t)in->n_subjects, sizeof(int));
    for (int i = 0; i < g.n; i++) out->confusion[g.nearest[i]]++;

    /* bootstrap over prompts */
    fl_ci none = {NAN, NAN};
    out->ci_retrieval = out->ci_base_retrieval = out->ci_verification = out->ci_auc = none;
    out->ci_sim_gen = out->ci_sim_base = out->ci_copy_rate = out->ci_diversity_gen = none;
    if (in->bootstrap > 0) {
        const int P = in->n_prompts, R = in->bootstrap;
        /* images of each prompt */
        int *gcount = fl_xcalloc((size_t)P, sizeof(int)), *bcount = fl_xcalloc((size_t)P, sizeof(int));
        for (int i = 0; i < g.n; i++) gcount[in->gen_prompt[i]]++;
        for (int i = 0; i < b.n; i++) bcount[in->base_prompt[i]]++;
        int gmax = 0, bmax = 0;
        for (int q = 0; q < P; q++) {
            if (gcount[q] > gmax) gmax = gcount[q];
            if (bcount[q] > bmax) bmax = bcount[q];
        }
        int *sg = fl_xmalloc((size_t)(P * (gmax ? gmax : 1)) * sizeof(int)), *sb = fl_xmalloc((size_t)(P * (bmax ? bmax : 1)) * sizeof(int));
        double *v[8];
        for (int k = 0; k < 8; k++) v[k] = fl_xmalloc((size_t)R * sizeof(double));
        fl_rng rng;
        fl_rng_seed(&rng, in->seed);
        for (int rep = 0; rep < R; rep++) {
            int ng = 0, nb = 0;
            for (int q = 0; q < P; q++) {
                int pick = (int)(fl_rng_next(&rng) % (uint64_t)P);
                for (int i = 0; i < g.n; i++)
                    if (in->gen_prompt[i] == pick) sg[ng++] = i;
                for (int i = 0; i < b.n; i++)
                    if (in->base_prompt[i] == pick) sb[nb++] = i;
            }
            point bp = score_selection(&g, sg, ng, &b, sb, nb);
            v[0][rep] = bp.retrieval;
            v[1][rep] = bp.base_retrieval;
            v[2][rep] = bp.verification;
            v[3][rep] = bp.auc;
            v[4][rep] = bp.sim_gen;
            v[5][rep] = bp.sim_base;
            v[6][rep] = bp.copy_rate;
            v[7][rep] = bp.diversity_gen;
        }
        out->ci_retrieval = ci_of(v[0], R);
        out->ci_base_retrieval = ci_of(v[1], R);
        out->ci_verification = ci_of(v[2], R);
        out->ci_auc = ci_of(v[3], R);
        out->ci_sim_gen = ci_of(v[4], R);
        out->ci_sim_base = ci_of(v[5], R);
        out->ci_copy_rate = ci_of(v[6], R);
        out->ci_diversity_gen = ci_of(v[7], R);
        for (int k = 0; k < 8; k++) free(v[k]);
        free(sg), free(sb), free(gcount), free(bcount);
    }

    /* hand the per-image figures over */
    out->gen_nearest = g.nearest;
    out->gen_sim = g.sim0;
    out->gen_max_train = g.max_train;
    out->base_nearest = b.nearest;
    out->base_sim = b.sim0;
    free(b.max_train);
    free(g.dist);
    free(b.dist);
    free(gi);
    free(bi);
    return 0;
}

void fl_eval_scores_clear(fl_eval_scores *s) {
    if (!s) return;
    free(s->gen_nearest);
    free(s->base_nearest);
    free(s->gen_sim);
    free(s->base_sim);
    free(s->gen_max_train);
    free(s->confusion);
    memset(s, 0, sizeof *s);
}
