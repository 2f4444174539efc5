/*
 * text_internal.h — what the files of models/text share and nothing else needs: the built-in
 * vocabulary blobs (compiled in from models/text/vocab by the build), UTF-8 decoding into code
 * points, and a small open-addressing hash map from byte strings to integers used by both
 * tokenizers.
 */
#ifndef FL_MODELS_TEXT_TEXT_INTERNAL_H
#define FL_MODELS_TEXT_TEXT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* models/text/vocab/clip_merges.txt and t5_vocab.bin (each followed by one NUL byte). */
extern const unsigned char fl_vocab_clip_merges[];
extern const size_t fl_vocab_clip_merges_size;
extern const unsigned char fl_vocab_t5[];
extern const size_t fl_vocab_t5_size;

/* Decodes valid UTF-8 text[0, len) into cps (capacity len); returns the count, or -1 with err
 * naming the byte offset of the first invalid sequence. */
long fl_text_decode_utf8(const char *text, size_t len, uint32_t *cps, fl_error *err);
/* Appends the UTF-8 encoding of cp to out (4 bytes of room needed); returns bytes written. */
int fl_text_encode_utf8(uint32_t cp, char *out);
/* The checks every prompt passes before a tokenizer sees it: at most FL_TEXT_MAX_PROMPT_BYTES,
 * valid UTF-8. */
int fl_text_check_prompt(const char *text, size_t len, fl_error *err);

/* String -> int32 map; keys are copied. */
typedef struct fl_strmap {
    size_t cap, count; /* cap a power of two */
    char **keys;
    uint32_t *lens;
    int32_t *values;
} fl_strmap;

void fl_strmap_init(fl_strmap *m, size_t expected);
void fl_strmap_free(fl_strmap *m);
/* Inserts or replaces. */
void fl_strmap_put(fl_strmap *m, const char *key, size_t len, int32_t value);
/* The value, or -1 when absent (values stored are >= 0). */
int32_t fl_strmap_get(const fl_strmap *m, const char *key, size_t len);

#endif
