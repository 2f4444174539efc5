/*
 * test_metrics.c — identity scores on synthetic embeddings whose answers are known by hand: the
 * nearest subject with ties going to a distractor, tau as the interpolated 95th percentile, the
 * verification and retrieval rates, the Mann-Whitney AUC with ties, similarity, diversity, copy
 * rate, the reference ceiling, and the prompt bootstrap (reproducible, collapsing to the point
 * estimate with one prompt); inconsistent input refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/metrics.h"
#include "harness.h"

#define NEAR(a, b) (fabs((a) - (b)) < 1e-6)

static void test_quantile_auc(void) {
    double v[5] = {5, 1, 4, 2, 3};
    FL_EXPECT(NEAR(fl_eval_quantile(v, 5, 0.95), 4.8));
    FL_EXPECT(NEAR(fl_eval_quantile(v, 5, 0.0), 1.0));
    FL_EXPECT(NEAR(fl_eval_quantile(v, 5, 1.0), 5.0));
    FL_EXPECT(NEAR(fl_eval_quantile(v, 1, 0.95), 5.0));
    FL_EXPECT(isnan(fl_eval_quantile(v, 0, 0.5)));
    double a[3] = {1, 2, 3}, b[3] = {2, 2, 0};
    /* 1: beats 0 (1), loses twice; 2: ties twice (1), beats 0 (1); 3: beats all (3) -> 6/9 */
    FL_EXPECT(NEAR(fl_eval_auc(a, 3, b, 3), 6.0 / 9.0));
    FL_EXPECT(NEAR(fl_eval_auc(a, 3, a, 3), 0.5));
}

/* Unit vector (c, sqrt(1 - c^2), 0). */
static void unit(float *x, double c) {
    x[0] = (float)c;
    x[1] = (float)sqrt(1 - c * c);
    x[2] = 0;
}

static void test_known_scores(void) {
    float target[3] = {1, 0, 0}, other[3] = {0, 1, 0};
    float gen[4 * 3], base[5 * 3];
    unit(gen + 0, 1.0);
    unit(gen + 3, 0.8);
    unit(gen + 6, 0.0);
    gen[9] = gen[10] = 0.70710678f, gen[11] = 0; /* equally near both subjects: a distractor wins */
    const double cs[5] = {0.0, 0.1, 0.2, 0.3, 0.9};
    for (int i = 0; i < 5; i++) unit(base + 3 * i, cs[i]);
    int gp[4] = {0, 0, 1, 1}, bp[5] = {0, 0, 1, 1, 1};
    fl_eval_embeddings subj[2] = {{target, 1}, {other, 1}};
    fl_eval_score_input in = {.dim = 3, .gen = {gen, 4}, .base = {base, 5}, .gen_prompt = gp, .base_prompt = bp,
                              .n_prompts = 2, .subjects = subj, .n_subjects = 2, .train = {target, 1}, .bootstrap = 0};
    fl_eval_scores s;
    fl_error err = {0};
    FL_EXPECT(fl_eval_score(&in, &s, &err) == 0);
    FL_EXPECTF(NEAR(s.retrieval, 0.5), "retrieval %f", s.retrieval);
    FL_EXPECT(s.confusion[0] == 2 && s.confusion[1] == 2);
    FL_EXPECT(s.gen_nearest[3] == 1);
    FL_EXPECTF(NEAR(s.base_retrieval, 0.2), "base retrieval %f", s.base_retrieval);
    FL_EXPECTF(fabs(s.tau - 0.78) < 1e-6, "tau %f", s.tau); /* 0.3 + 0.8 * (0.9 - 0.3) */
    FL_EXPECTF(NEAR(s.verification, 0.5), "verification %f", s.verification);
    FL_EXPECTF(NEAR(s.base_pass, 0.2), "base pass %f", s.base_pass);
    FL_EXPECTF(fabs(s.auc - 13.5 / 20.0) < 1e-6, "auc %f", s.auc);
    FL_EXPECTF(fabs(s.sim_gen - (1 + 0.8 + 0 + 0.70710678) / 4) < 1e-6, "sim %f", s.sim_gen);
    FL_EXPECTF(fabs(s.sim_base - 1.5 / 5) < 1e-6, "base sim %f", s.sim_base);
    FL_EXPECTF(NEAR(s.copy_rate, 0.25), "copy %f", s.copy_rate);
    /* diversity: mean of 1 - cos over the 6 pairs of generations */
    double want = 0;
    int pairs = 0;
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++, pairs++)
            want += 1.0 - ((double)gen[3 * i] * gen[3 * j] + (double)gen[3 * i + 1] * gen[3 * j + 1]);
    FL_EXPECTF(fabs(s.diversity_gen - want / pairs) < 1e-6, "diversity %f vs %f", s.diversity_gen, want / pairs);
    FL_EXPECT(isnan(s.ref_ceiling)); /* one reference: no leave-one-out */
    FL_EXPECT(isnan(s.ci_retrieval.lo));
    fl_eval_scores_clear(&s);
}

static void test_ceiling_and_bootstrap(void) {
    /* three references: cosines 1/2 between each pair -> ceiling 0.5 */
    float refs[9];
    unit(refs, 1.0);
    unit(refs + 3, 0.5);
    refs[6] = 0.5f, refs[7] = (float)(-0.5 / sqrt(3.0) + 0.5 * 0), refs[8] = 0;
    /* third: cos to r0 = 0.5, cos to r1 = 0.5 -> (0.5, y, z): 0.25 + y*0.866 = 0.5 -> y = 0.2887 */
    refs[7] = (float)(0.25 / sqrt(0.75));
    refs[8] = (float)sqrt(1 - 0.25 - (double)refs[7] * refs[7]);
    float other[3] = {0, 0, 1};
    float gen[6 * 3], base[6 * 3];
    int gp[6], bp[6];
    for (int i = 0; i < 6; i++) {
        unit(gen + 3 * i, 0.9 - 0.1 * i);
        unit(base + 3 * i, 0.1 * i);
        gp[i] = bp[i] = i / 2;
    }
    fl_eval_embeddings subj[2] = {{refs, 3}, {other, 1}};
    fl_eval_score_input in = {.dim = 3, .gen = {gen, 6}, .base = {base, 6}, .gen_prompt = gp, .base_prompt = bp,
                              .n_prompts = 3, .subjects = subj, .n_subjects = 2, .train = {refs, 3}, .bootstrap = 500,
                              .seed = 7};
    fl_eval_scores a, b;
    fl_error err = {0};
    FL_EXPECT(fl_eval_score(&in, &a, &err) == 0);
    FL_EXPECT(fl_eval_score(&in, &b, &err) == 0);
    FL_EXPECTF(fabs(a.ref_ceiling - 0.5) < 1e-5, "ceiling %f", a.ref_ceiling);
    FL_EXPECT(NEAR(a.normalized_identity, (a.sim_gen - a.sim_base) / (a.ref_ceiling - a.sim_base)));
    FL_EXPECT(a.ci_auc.lo <= a.auc + 1e-12 && a.auc <= a.ci_auc.hi + 1e-12);
    FL_EXPECT(a.ci_sim_gen.lo <= a.sim_gen && a.sim_gen <= a.ci_sim_gen.hi);
    FL_EXPECT(a.ci_sim_gen.lo < a.ci_sim_gen.hi); /* the prompts differ, so resamples do */
    FL_EXPECT(a.ci_verification.lo == b.ci_verification.lo && a.ci_sim_gen.hi == b.ci_sim_gen.hi); /* reproducible */
    fl_eval_scores_clear(&a);
    fl_eval_scores_clear(&b);
    /* one prompt: every resample is the whole set */
    for (int i = 0; i < 6; i++) gp[i] = bp[i] = 0;
    in.n_prompts = 1;
    FL_EXPECT(fl_eval_score(&in, &a, &err) == 0);
    FL_EXPECT(NEAR(a.ci_sim_gen.lo, a.sim_gen) && NEAR(a.ci_sim_gen.hi, a.sim_gen));
    FL_EXPECT(NEAR(a.ci_retrieval.lo, a.retrieval) && NEAR(a.ci_auc.hi, a.auc));
    fl_eval_scores_clear(&a);
}

static void test_bad_input(void) {
    float x[3] = {1, 0, 0};
    int p0[1] = {0}, p5[1] = {5};
    fl_eval_embeddings subj[1] = {{x, 1}}, none[1] = {{x, 0}};
    fl_eval_scores s;
    fl_error err = {0};
    fl_eval_score_input in = {.dim = 3, .gen = {x, 1}, .gen_prompt = p5, .n_prompts = 1, .subjects = subj,
                              .n_subjects = 1, .train = {x, 1}};
    FL_EXPECT(fl_eval_score(&in, &s, &err) != 0 && strstr(err.message, "prompt index"));
    in.gen_prompt = p0;
    in.subjects = none;
    FL_EXPECT(fl_eval_score(&in, &s, &err) != 0 && strstr(err.message, "no reference image"));
    in.subjects = subj;
    in.gen.n = 0;
    FL_EXPECT(fl_eval_score(&in, &s, &err) != 0);
    /* no base model images: the base-relative scores are NaN, the others are there */
    in.gen.n = 1;
    FL_EXPECT(fl_eval_score(&in, &s, &err) == 0);
    FL_EXPECT(isnan(s.tau) && isnan(s.auc) && isnan(s.verification) && s.retrieval == 1.0);
    fl_eval_scores_clear(&s);
}

int main(void) {
    FL_RUN(test_quantile_auc);
    FL_RUN(test_known_scores);
    FL_RUN(test_ceiling_and_bootstrap);
    FL_RUN(test_bad_input);
    return fl_test_finish();
}
