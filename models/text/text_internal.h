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

/* ---- binding encoder weights ----------------------------------------------------------------- */

#include "core/arena.h"
#include "kernels/context.h"
#include "models/text/clip_text.h"
#include "models/text/weights.h"

/* Checks that prefix + d->name (or prefix + alt when the first is absent and alt is not NULL)
 * exists with d's shape, then allocates it on ctx's device and uploads it converted to the storage
 * dtype. Errors name the file and tensor. */
/* The config.json beside the weight files, read whole (at most 1 MiB; *size its length), or NULL
 * when there is none; the caller frees it. */
unsigned char *fl_text_read_config(const fl_weight_files *w, size_t *size);

int fl_text_bind(fl_ctx *ctx, const fl_weight_files *w, const char *prefix, const fl_text_param_decl *d,
                 const char *alt, fl_tensor *out, fl_error *err);
/* Checks presence and shapes only, over headers. */
int fl_text_check_decls(const fl_tensor_header *entries, size_t n, const char *prefix, const fl_text_param_decl *decls,
                        size_t count, fl_error *err);
/* Bytes of the declared tensors in dtype, each rounded up to 256. */
size_t fl_text_decl_bytes(const fl_text_param_decl *decls, size_t count, fl_dtype dtype);
/* A head split: src [L, H * D] viewed as [1, H, L, D] and copied into dst [1, H, L, D]; and back. */
void fl_text_split_heads(fl_ctx *ctx, const fl_tensor *src, int heads, fl_tensor *dst);
void fl_text_merge_heads(fl_ctx *ctx, const fl_tensor *src, fl_tensor *dst);

#endif
