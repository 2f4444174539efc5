/*
 * rng.h — a small deterministic random generator (xoshiro256**, seeded through splitmix64) with
 * uniform and standard-normal draws. Same seed, same sequence, on every machine: training noise,
 * timestep draws and test data all come from here so runs are reproducible.
 */
#ifndef FL_CORE_RNG_H
#define FL_CORE_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_rng {
    uint64_t s[4];
} fl_rng;

void fl_rng_seed(fl_rng *rng, uint64_t seed);
uint64_t fl_rng_next(fl_rng *rng);
/* Uniform in [0, 1), 24 bits of precision. */
float fl_rng_uniform(fl_rng *rng);
/* Standard normal (Box-Muller on doubles). */
float fl_rng_normal(fl_rng *rng);
void fl_rng_fill_normal(fl_rng *rng, float *out, size_t n, float mean, float stddev);
void fl_rng_fill_uniform(fl_rng *rng, float *out, size_t n, float lo, float hi);

/* Unpredictable identifiers (not the deterministic generator above): prefix, then n_bytes bytes
 * from the kernel's random source as lower-case hex, into out (cap bytes, truncated safely). */
void fl_random_id(const char *prefix, size_t n_bytes, char *out, size_t cap);

#endif
