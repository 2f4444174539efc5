/*
 * text_encoders.h — the text side of the real FLUX.1 pipeline behind one call: a prompt becomes
 * what the Flux transformer takes, txt [L, context_dim] (the T5 encoder's last hidden state over
 * all L = 512 (dev) or 256 (schnell) positions, pads included, as the references compute it) and
 * y [vec_dim] (CLIP's pooled output: the final-norm hidden state at the first end-of-text token).
 *
 * Parts: the CLIP BPE tokenizer (77 tokens, padded with <|endoftext|>) and the CLIP-L text
 * encoder (models/text/clip_text.h); the T5 SentencePiece unigram tokenizer (</s> appended, padded
 * with <pad> = 0) and the T5-XXL v1.1 encoder (models/text/t5_encoder.h); the tokenizers are in
 * models/text/tokenizers.h. Both vocabularies are built into the binary; a user's tokenizer/ and
 * tokenizer_2/ files replace them when given.
 *
 * Weights load from safetensors in the layouts users have: the HF folders text_encoder/ and
 * text_encoder_2/ (model.safetensors, or shards with model.safetensors.index.json, and
 * config.json) or single files such as clip_l.safetensors and t5xxl_fp16.safetensors (with or
 * without the all-in-one prefixes). F32, BF16 and F16 weights convert to the context's storage
 * dtype at load; F8 weights (t5xxl_fp8_e4m3fn, scaled fp8) are dequantized. Every failure is one line naming the file or tensor (missing, misshaped, wrong
 * dtype), the tokenizer file that is not what it claims, or the prompt that cannot be encoded
 * (more than FL_TEXT_MAX_PROMPT_BYTES, invalid UTF-8): nothing from outside aborts.
 *
 * A loaded fl_text_encoders keeps its weights on the context's device until freed; a training job
 * encodes its captions once and frees it. Encoding is deterministic: the same prompt gives the
 * same bits on the same build and device.
 */
#ifndef FL_MODELS_TEXT_TEXT_ENCODERS_H
#define FL_MODELS_TEXT_TEXT_ENCODERS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/context.h"

/* Longest prompt accepted, in bytes: far more than 512 tokens can use. */
#define FL_TEXT_MAX_PROMPT_BYTES ((size_t)64 * 1024)
/* The T5 sequence lengths of FLUX.1: dev and schnell. */
#define FL_T5_LENGTH_DEV 512
#define FL_T5_LENGTH_SCHNELL 256

typedef struct fl_text_encoders fl_text_encoders;

/* Where each part comes from. A weights path is a .safetensors file, a
 * model.safetensors.index.json (shards), or a directory holding either (plus config.json, read
 * when present). A tokenizer path is a directory (CLIP: vocab.json + merges.txt, or
 * tokenizer.json; T5: tokenizer.json or spiece.model) or one of those files; NULL uses the
 * built-in vocabulary. */
typedef struct fl_text_encoders_files {
    const char *clip;           /* CLIP-L text encoder weights (required) */
    const char *t5;             /* T5 encoder weights (required) */
    const char *clip_tokenizer; /* NULL: built-in */
    const char *t5_tokenizer;   /* NULL: built-in */
    int t5_max_length;          /* L: FL_T5_LENGTH_DEV or FL_T5_LENGTH_SCHNELL; 0 means dev */
} fl_text_encoders_files;

/* Loads both encoders onto ctx's device. */
int fl_text_encoders_load(fl_ctx *ctx, const fl_text_encoders_files *files, fl_text_encoders **out,
                          fl_error *err);
/* The same from a directory laid out like the FLUX.1 repositories: text_encoder/,
 * text_encoder_2/, and tokenizer/ and tokenizer_2/ when present (else the built-in vocabularies). */
int fl_text_encoders_load_dir(fl_ctx *ctx, const char *dir, int t5_max_length, fl_text_encoders **out,
                              fl_error *err);
void fl_text_encoders_free(fl_text_encoders *te); /* NULL is fine */

int fl_text_encoders_context_dim(const fl_text_encoders *te); /* T5 d_model: 4096 for T5-XXL */
int fl_text_encoders_vec_dim(const fl_text_encoders *te);     /* CLIP hidden size: 768 for CLIP-L */
int fl_text_encoders_length(const fl_text_encoders *te);      /* L, the rows of txt */

/* A hex string that changes when anything that decides the output changes (tokenizer tables, L,
 * the weights' names, shapes, dtypes and sampled bytes): a key for caches of encoded prompts.
 * Owned by te. */
const char *fl_text_encoders_fingerprint(const fl_text_encoders *te);

/* Encodes prompt (UTF-8, NUL-terminated; "" is the empty caption) into txt [L, context_dim] and
 * y [vec_dim]: contiguous tensors of ctx's storage dtype on its device, allocated by the caller.
 * Fails (FL_ELIMIT, FL_EINVAL) with one line for a prompt over FL_TEXT_MAX_PROMPT_BYTES or not
 * valid UTF-8, leaving txt and y untouched. */
int fl_text_encoders_encode(fl_text_encoders *te, const char *prompt, fl_tensor *txt, fl_tensor *y,
                            fl_error *err);
/* The same into host f32 arrays of L * context_dim and vec_dim floats. */
int fl_text_encoders_encode_host(fl_text_encoders *te, const char *prompt, float *txt, float *y, fl_error *err);

#endif
