/*
 * weights.h — the weights of a text encoder as users have them on disk: one .safetensors file, a
 * set of shards named by a model.safetensors.index.json, or a directory holding either, seen as
 * one table of tensors. Names may carry a prefix (all-in-one checkpoints); the encoders find
 * theirs from an anchor tensor name.
 *
 * Every file is outside input: a shard that is missing, truncated or malformed, an index that is
 * not JSON or names a tensor its shard lacks, or a tensor whose dtype cannot be converted fails
 * with one line naming the file and tensor. F32, BF16 and F16 convert to f32 on the host, one
 * tensor at a time; F8_E4M3 and F8_E5M2 are dequantized, times the tensor's scale when the file
 * has one ("<stem>.scale_weight" or "<stem>.weight_scale" for "<stem>.weight", as scaled-fp8 files
 * carry them).
 */
#ifndef FL_MODELS_TEXT_WEIGHTS_H
#define FL_MODELS_TEXT_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "models/family.h"

typedef struct fl_weight_files fl_weight_files;

/* Opens path: a .safetensors file, a *.index.json, or a directory with model.safetensors.index.json
 * or exactly one .safetensors file (model.safetensors preferred). */
int fl_weight_files_open(const char *path, fl_weight_files **out, fl_error *err);
void fl_weight_files_close(fl_weight_files *w); /* NULL is fine */

/* The directory the weights came from (for a config.json beside them). */
const char *fl_weight_files_dir(const fl_weight_files *w);

/* Every tensor as (name, shape) headers, for parameter inference and binding checks; valid
 * while w is open. */
const fl_tensor_header *fl_weight_files_headers(const fl_weight_files *w, size_t *n);
/* The tensor called name, or NULL; *file gets the file holding it (for messages). */
const fl_safetensors_info *fl_weight_files_find(const fl_weight_files *w, const char *name, const char **file);

/* The tensor's values as f32 into dst (numel floats). FL_EUNSUPPORTED names a dtype that does
 * not convert. */
int fl_weight_files_read_f32(const fl_weight_files *w, const char *name, float *dst, size_t numel, fl_error *err);

/* sha256 (hex) over every tensor's name, dtype, shape and a sample of its bytes: what
 * fl_text_encoders_fingerprint folds in. */
void fl_weight_files_fingerprint(const fl_weight_files *w, char hex[65]);

#endif
