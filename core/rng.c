/*
 * rng.c — xoshiro256** with splitmix64 seeding; normals by Box-Muller.
 */
#include "core/rng.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "core/error.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

void fl_rng_seed(fl_rng *rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

uint64_t fl_rng_next(fl_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float fl_rng_uniform(fl_rng *rng) {
    return (float)(fl_rng_next(rng) >> 40) * (1.0f / 16777216.0f);
}

float fl_rng_normal(fl_rng *rng) {
    double u1 = ((double)(fl_rng_next(rng) >> 11) + 1.0) * (1.0 / 9007199254740993.0); /* (0, 1] */
    double u2 = (double)(fl_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

void fl_rng_fill_normal(fl_rng *rng, float *out, size_t n, float mean, float stddev) {
    for (size_t i = 0; i < n; i++) out[i] = mean + stddev * fl_rng_normal(rng);
}

void fl_rng_fill_uniform(fl_rng *rng, float *out, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) out[i] = lo + (hi - lo) * fl_rng_uniform(rng);
}

void fl_random_id(const char *prefix, size_t n_bytes, char *out, size_t cap) {
    unsigned char raw[64];
    FL_CHECK(n_bytes <= sizeof raw && cap > 0);
    size_t got = 0;
    while (got < n_bytes) {
        ssize_t n = getrandom(raw + got, n_bytes - got, 0);
        if (n < 0 && errno == EINTR) continue;
        FL_CHECKF(n > 0, "getrandom failed: %s", strerror(errno));
        got += (size_t)n;
    }
    static const char digits[] = "0123456789abcdef";
    size_t off = (size_t)snprintf(out, cap, "%s", prefix);
    for (size_t i = 0; i < n_bytes && off + 2 < cap; i++) {
        out[off++] = digits[raw[i] >> 4];
        out[off++] = digits[raw[i] & 15];
    }
    out[off < cap ? off : cap - 1] = '\0';
}
