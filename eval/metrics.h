/*
 * metrics.h — the identity scores of one adapter from embeddings alone (no model, no images):
 * what `flashlora eval` and the evaluation job report.
 *
 * Inputs: L2-normalized embeddings of the adapter's generations G (one per prompt x seed), of the
 * base model's generations B on the same prompts and seeds, of the reference images of each
 * subject (subject 0 is the adapter's own; the others are distractors), and of the training
 * images (for the copy rate). s(x, k) is the mean cosine of x to subject k's references.
 *
 *   retrieval identity accuracy: the fraction of G whose nearest subject — by s(x, k) over every
 *       subject — is subject 0 (ties go to the other subject); the same fraction of B is beside it.
 *   tau: the 95th percentile of { s(b, 0) : b in B } by linear interpolation between order
 *       statistics (position 0.95 (n - 1) in the sorted values), so 5% of the base model's images
 *       pass (exactly when 0.95 (n - 1) is a whole number).
 *   verification identity accuracy: the fraction of G with s(g, 0) > tau (strictly).
 *   AUC: P(s(g, 0) > s(b, 0)) over G x B with ties counted 1/2 (Mann-Whitney).
 *   mean cosine to the references: the mean of s(g, 0) over G (DreamBooth's DINO / CLIP-I score
 *       with this encoder) and over B.
 *   reference ceiling: the mean over references of their mean cosine to the other references
 *       (leave one out); normalized identity = (sim_G - sim_B) / (ceiling - sim_B).
 *   diversity: the mean cosine distance (1 - cos) over all pairs of G (and of B).
 *   copy rate: the fraction of G whose largest cosine to any single training image is > 0.95.
 *
 * Confidence intervals: a percentile bootstrap over prompts (prompts drawn with replacement,
 * every image of a drawn prompt — G and B alike — taken each time it is drawn; tau and every score
 * recomputed per resample), 2.5th and 97.5th percentiles of `bootstrap` resamples from a fixed
 * seed, so a report is reproducible.
 */
#ifndef FL_EVAL_METRICS_H
#define FL_EVAL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define FL_EVAL_COPY_THRESHOLD 0.95
#define FL_EVAL_FAR 0.05 /* the base model's pass rate tau is set to */

typedef struct fl_eval_embeddings {
    const float *x; /* [n, dim], rows L2-normalized */
    int n;
} fl_eval_embeddings;

typedef struct fl_eval_score_input {
    int dim;
    fl_eval_embeddings gen, base;   /* base may be empty (n = 0): the base-relative scores are NaN */
    const int *gen_prompt;          /* prompt index of each generation, in [0, n_prompts) */
    const int *base_prompt;
    int n_prompts;
    const fl_eval_embeddings *subjects; /* [0] the adapter's references, then distractors */
    int n_subjects;
    fl_eval_embeddings train;       /* for the copy rate (may equal subjects[0]) */
    int bootstrap;                  /* resamples (0: no intervals) */
    uint64_t seed;
} fl_eval_score_input;

typedef struct fl_ci {
    double lo, hi; /* NaN when not computed */
} fl_ci;

typedef struct fl_eval_scores {
    int n_gen, n_base, n_refs, n_subjects;
    double retrieval, base_retrieval;
    double tau, verification, base_pass, auc;
    double sim_gen, sim_base, ref_ceiling, normalized_identity;
    double diversity_gen, diversity_base;
    double copy_rate, base_copy_rate;
    fl_ci ci_retrieval, ci_base_retrieval, ci_verification, ci_auc, ci_sim_gen, ci_sim_base, ci_copy_rate,
        ci_diversity_gen;
    /* per image: the nearest subject and s(x, 0); malloc'ed, freed by fl_eval_scores_clear */
    int *gen_nearest, *base_nearest;
    double *gen_sim, *base_sim, *gen_max_train;
    /* confusion[k] = generations whose nearest subject is k (n_subjects entries) */
    int *confusion;
} fl_eval_scores;

/* Computes every score. FL_EINVAL for inconsistent input (no subject, a subject without
 * references, a prompt index out of range, no generation). */
int fl_eval_score(const fl_eval_score_input *in, fl_eval_scores *out, fl_error *err);
void fl_eval_scores_clear(fl_eval_scores *s);

/* The q-quantile of v[0, n) by linear interpolation between order statistics (sorts a copy). */
double fl_eval_quantile(const double *v, int n, double q);
/* P(a > b) + P(a == b) / 2 over all pairs. */
double fl_eval_auc(const double *a, int na, const double *b, int nb);

#endif
