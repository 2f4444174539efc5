/*
 * text_hash.h — the weight-free text encoder of the embedded model.
 *
 * Each lower-cased word (a run of letters, digits, '_' or '-'; any other byte separates words)
 * maps to a deterministic pseudo-random unit-variance vector seeded by a hash of the word, so any
 * trigger word — including ones never seen before — gets its own stable embedding with no
 * vocabulary. txt is one row per word, truncated or padded with zero rows to a fixed length;
 * the pooled vector y is the mean of the words' vectors in a second, independent hash space.
 * Real checkpoints use T5 + CLIP instead; both produce the same (txt, y) shapes.
 */
#ifndef FL_MODELS_TEXT_HASH_H
#define FL_MODELS_TEXT_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Encodes caption into txt [max_tokens, context_dim] and y [vec_dim] (caller-allocated host
 * arrays). Returns the number of words used (<= max_tokens); words past max_tokens are dropped.
 * An empty caption gives zero rows and a zero y. */
int fl_text_hash_encode(const char *caption, int max_tokens, int context_dim, int vec_dim, float *txt, float *y);

/* The 64-bit FNV-1a hash of a lower-cased word (exposed for tests). */
uint64_t fl_text_hash_word(const char *word, size_t length);

#endif
