/*
 * text_hash.c — hashed-word text embeddings (see text_hash.h).
 */
#include "models/text_hash.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

#include "core/rng.h"

uint64_t fl_text_hash_word(const char *word, size_t length) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < length; i++) {
        h ^= (uint64_t)(unsigned char)tolower((unsigned char)word[i]);
        h *= 0x100000001b3ull;
    }
    return h;
}

static int is_word_char(unsigned char c) {
    return isalnum(c) || c == '_' || c == '-' || c >= 0x80; /* UTF-8 bytes belong to words */
}

int fl_text_hash_encode(const char *caption, int max_tokens, int context_dim, int vec_dim, float *txt, float *y) {
    memset(txt, 0, (size_t)max_tokens * (size_t)context_dim * sizeof(float));
    memset(y, 0, (size_t)vec_dim * sizeof(float));
    int words = 0;
    const char *p = caption ? caption : "";
    fl_rng rng;
    while (*p) {
        while (*p && !is_word_char((unsigned char)*p)) p++;
        const char *start = p;
        while (*p && is_word_char((unsigned char)*p)) p++;
        size_t len = (size_t)(p - start);
        if (len == 0) break;
        if (words == max_tokens) break;
        uint64_t h = fl_text_hash_word(start, len);
        fl_rng_seed(&rng, h);
        fl_rng_fill_normal(&rng, txt + (size_t)words * (size_t)context_dim, (size_t)context_dim, 0.0f, 1.0f);
        fl_rng_seed(&rng, h ^ 0x9e3779b97f4a7c15ull);
        for (int i = 0; i < vec_dim; i++) y[i] += fl_rng_normal(&rng);
        words++;
    }
    if (words > 0)
        for (int i = 0; i < vec_dim; i++) y[i] /= sqrtf((float)words); /* unit variance per entry */
    return words;
}
