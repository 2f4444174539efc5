/*
 * tokenizers.h — the two tokenizers of FLUX.1, in C with no Python at run time.
 *
 * CLIP (FLUX tokenizer/ = openai/clip-vit-large-patch14): byte-level BPE as the Hugging Face
 * CLIPTokenizer computes it without ftfy: text cleaning (control characters dropped, whitespace
 * to spaces), spaces around CJK ideographs, NFC, lower-casing, words split by the pattern
 * <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (the
 * Unicode classes come from models/text/unicode_data.c), each word's UTF-8 bytes mapped through
 * the GPT-2 byte alphabet and merged by rank with "</w>" on its last symbol; then BOS + at most
 * max_length - 2 tokens + EOS, padded with the pad id (<|endoftext|> for FLUX).
 *
 * T5 (FLUX tokenizer_2/ = google/t5-v1_1-xxl): SentencePiece unigram as the slow T5Tokenizer
 * (sentencepiece) computes it: the precompiled nmt_nfkc character map (longest match in its
 * double-array trie), extra whitespace removed (leading, trailing, runs), a "▁" prefix and every
 * space as "▁", then the Viterbi path over the pieces' scores (an unknown character costs the
 * lowest score - 10 and becomes <unk>). Literal special tokens in the text (</s>, <pad>, <unk>,
 * <extra_id_N>) are kept as single ids, as the Hugging Face tokenizer splits them out first.
 * Then at most max_length - 1 ids + </s>, padded with <pad> = 0.
 *
 * The slow and fast Hugging Face T5 tokenizers differ on trailing spaces (the fast one keeps a
 * final "▁"); flashlora follows the slow one, which is what the BFL reference runs.
 *
 * Sources: the built-in vocabularies (models/text/vocab, see its README for their origin,
 * licenses and sha256), or the files users have: vocab.json + merges.txt or tokenizer.json
 * (CLIP); tokenizer.json or spiece.model (T5). Every file is outside input: a malformed one is an
 * error naming it, never a crash.
 *
 * Prompts must be valid UTF-8 and at most FL_TEXT_MAX_PROMPT_BYTES long; time is linear in the
 * prompt (words past the ones that fit in max_length are not merged).
 */
#ifndef FL_MODELS_TEXT_TOKENIZERS_H
#define FL_MODELS_TEXT_TOKENIZERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define FL_CLIP_MAX_LENGTH 77

typedef struct fl_clip_tokenizer fl_clip_tokenizer;
typedef struct fl_t5_tokenizer fl_t5_tokenizer;

/* ---- CLIP ------------------------------------------------------------------------------------ */

/* The built-in vocabulary (49,408 ids; the merges of OpenAI's bpe_simple_vocab_16e6). */
int fl_clip_tokenizer_builtin(fl_clip_tokenizer **out, fl_error *err);
/* From a directory with vocab.json + merges.txt (or tokenizer.json), or one tokenizer.json. */
int fl_clip_tokenizer_load(const char *path, fl_clip_tokenizer **out, fl_error *err);
/* From the contents of vocab.json and merges.txt (names are for messages). */
int fl_clip_tokenizer_from_memory(const char *vocab_json, size_t vocab_len, const char *merges, size_t merges_len,
                                  const char *name, fl_clip_tokenizer **out, fl_error *err);
void fl_clip_tokenizer_free(fl_clip_tokenizer *tok);

int32_t fl_clip_tokenizer_vocab_size(const fl_clip_tokenizer *tok); /* largest id + 1 */
int32_t fl_clip_tokenizer_bos(const fl_clip_tokenizer *tok);
int32_t fl_clip_tokenizer_eos(const fl_clip_tokenizer *tok);
/* Whether the loaded tables equal the built-in ones (a user's copy of the FLUX vocabulary). */
bool fl_clip_tokenizer_is_builtin_vocab(const fl_clip_tokenizer *tok);
/* sha256 (hex) of the tables in a canonical form: equal tables, equal hash. */
const char *fl_clip_tokenizer_hash(const fl_clip_tokenizer *tok);

/* Tokenizes text[0, len) into ids[max_length]: BOS, tokens, EOS, then pad_id. Returns the count
 * before padding (2 .. max_length), or -1 with err set (invalid UTF-8, too long). max_length >= 2. */
int fl_clip_tokenize(const fl_clip_tokenizer *tok, const char *text, size_t len, int32_t *ids, int max_length,
                     int32_t pad_id, fl_error *err);

/* ---- T5 -------------------------------------------------------------------------------------- */

/* The built-in vocabulary (32,000 pieces + 100 <extra_id_N>, the nmt_nfkc character map). */
int fl_t5_tokenizer_builtin(fl_t5_tokenizer **out, fl_error *err);
/* From a directory with tokenizer.json or spiece.model, or one such file. */
int fl_t5_tokenizer_load(const char *path, fl_t5_tokenizer **out, fl_error *err);
/* From the contents of a tokenizer.json (Hugging Face fast format) or an spiece.model. */
int fl_t5_tokenizer_from_json(const char *json, size_t len, const char *name, fl_t5_tokenizer **out, fl_error *err);
int fl_t5_tokenizer_from_spiece(const unsigned char *data, size_t len, const char *name, fl_t5_tokenizer **out,
                                fl_error *err);
void fl_t5_tokenizer_free(fl_t5_tokenizer *tok);

int32_t fl_t5_tokenizer_vocab_size(const fl_t5_tokenizer *tok); /* largest id + 1 (32,100) */
bool fl_t5_tokenizer_is_builtin_vocab(const fl_t5_tokenizer *tok);
const char *fl_t5_tokenizer_hash(const fl_t5_tokenizer *tok);

/* Tokenizes text[0, len) into ids[max_length]: tokens, </s>, then <pad>. Returns the count before
 * padding (1 .. max_length), or -1 with err set. max_length >= 1. */
int fl_t5_tokenize(const fl_t5_tokenizer *tok, const char *text, size_t len, int32_t *ids, int max_length,
                   fl_error *err);

#endif
