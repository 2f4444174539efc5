/*
 * flux_targets.c — choosing which Linears get a LoRA: named target sets or a regular
 * expression over module paths, and a freshly initialized trainable adapter on them.
 */
#include <math.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "models/flux.h"

static const struct {
    const char *name;
    const char *pattern;
} named_sets[] = {
    {"all", "^(double_blocks\\.[0-9]+\\.(img|txt)_(attn\\.(qkv|proj)|mlp\\.[02]|mod\\.lin)"
            "|single_blocks\\.[0-9]+\\.(linear1|linear2|modulation\\.lin))$"},
    {"attention", "^(double_blocks\\.[0-9]+\\.(img|txt)_attn\\.(qkv|proj)|single_blocks\\.[0-9]+\\.linear1)$"},
    {"no_modulation", "^(double_blocks\\.[0-9]+\\.(img|txt)_(attn\\.(qkv|proj)|mlp\\.[02])"
                      "|single_blocks\\.[0-9]+\\.(linear1|linear2))$"},
};

int fl_flux_select_targets(fl_flux_model *m, const char *spec, bool *selected, fl_error *err) {
    if (!spec || !*spec) return fl_fail(err, FL_EINVAL, "targets: empty specification");
    const char *pattern = spec;
    for (size_t i = 0; i < sizeof named_sets / sizeof named_sets[0]; i++)
        if (!strcmp(spec, named_sets[i].name)) pattern = named_sets[i].pattern;
    regex_t re;
    int rc = regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char why[128];
        regerror(rc, &re, why, sizeof why);
        return fl_fail(err, FL_EINVAL, "targets '%s': not a target set (all, attention, no_modulation) nor a valid "
                                       "regular expression: %s", spec, why);
    }
    int count = 0;
    for (size_t i = 0; i < fl_flux_linear_count(m); i++) {
        selected[i] = regexec(&re, fl_flux_linear_at(m, i)->name, 0, NULL, 0) == 0;
        count += selected[i];
    }
    regfree(&re);
    if (count == 0) return fl_fail(err, FL_EINVAL, "targets '%s' select no Linear of this model", spec);
    return count;
}

int fl_flux_add_trainable_lora(fl_flux_model *m, const char *spec, int rank, float alpha, uint64_t seed,
                               fl_error *err) {
    if (rank < 1 || rank > 1024) return fl_fail(err, FL_EINVAL, "rank %d is outside [1, 1024]", rank);
    if (!(alpha > 0.0f)) return fl_fail(err, FL_EINVAL, "alpha must be positive");
    size_t n = fl_flux_linear_count(m);
    bool *selected = calloc(n, sizeof *selected);
    int count = fl_flux_select_targets(m, spec, selected, err);
    if (count < 0) {
        free(selected);
        return -1;
    }
    fl_flux_lora_pair *pairs = calloc((size_t)count, sizeof *pairs);
    fl_rng rng;
    fl_rng_seed(&rng, seed);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!selected[i]) continue;
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        float bound = 1.0f / sqrtf((float)lin->in);
        float *a = malloc((size_t)(rank * lin->in) * sizeof(float));
        fl_rng_fill_uniform(&rng, a, (size_t)(rank * lin->in), -bound, bound);
        float *b = calloc((size_t)(rank * lin->out), sizeof(float));
        pairs[k++] = (fl_flux_lora_pair){lin->name, rank, a, b, alpha};
    }
    int id = fl_flux_add_adapter(m, pairs, k, 1.0f, true, err);
    for (size_t i = 0; i < k; i++) {
        free((void *)pairs[i].a);
        free((void *)pairs[i].b);
    }
    free(pairs);
    free(selected);
    return id;
}
