/*
 * safetensors.h — reading and writing .safetensors files, the format model weights and LoRA
 * adapters travel in.
 *
 * Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON (one object mapping tensor
 * names to {"dtype", "shape", "data_offsets"} plus an optional "__metadata__" object of strings),
 * then the data buffer; data_offsets are relative to the start of that buffer.
 *
 * The reader treats every file as hostile input: each inconsistency (lengths, JSON, dtypes,
 * shapes, offsets, overlaps, metadata) is reported through fl_error with a one-line reason that
 * names the tensor at fault; nothing a file contains can make it crash or read out of bounds.
 * Header parsing works over any byte range: fl_safetensors_open maps a file read-only and
 * fl_safetensors_open_memory reads a caller's buffer (uploads, the fuzzer) without copying it.
 * A mapped file must not be truncated while it is open: the OS faults on pages past the new end.
 *
 * Dtypes: F32, BF16 and F16 are computable (they map onto fl_dtype and can be viewed as an
 * fl_tensor). F64, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3 and F8_E5M2 are readable:
 * they are listed and their bytes are reachable, but fl_safetensors_tensor_view refuses them.
 *
 * The writer emits "__metadata__" first and the tensors in the order given, pads the header
 * with spaces so the data buffer starts 8-byte aligned, and stores the data contiguously, with
 * no gaps (larger element sizes first, given order within one size, so every tensor starts
 * aligned to its element size). It writes to "<path>.tmp.<pid>", fsyncs, renames over path and
 * fsyncs the directory: a failure never leaves a partial file at path.
 */
#ifndef FL_CORE_SAFETENSORS_H
#define FL_CORE_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"

#define FL_SAFETENSORS_MAX_DIMS 8
#define FL_SAFETENSORS_MAX_HEADER (100u << 20) /* bytes of JSON header accepted */
#define FL_SAFETENSORS_MAX_NAME 1024           /* bytes in a tensor name */

/* Every dtype the reader accepts. The first three are the computable ones. */
typedef enum fl_st_dtype {
    FL_ST_F32 = 0,
    FL_ST_BF16,
    FL_ST_F16,
    FL_ST_F64,
    FL_ST_I64,
    FL_ST_I32,
    FL_ST_I16,
    FL_ST_I8,
    FL_ST_U64,
    FL_ST_U32,
    FL_ST_U16,
    FL_ST_U8,
    FL_ST_BOOL,
    FL_ST_F8_E4M3,
    FL_ST_F8_E5M2,
    FL_ST_DTYPE_COUNT
} fl_st_dtype;

const char *fl_st_dtype_name(fl_st_dtype dtype);               /* "F32", "BOOL", ... */
size_t fl_st_dtype_size(fl_st_dtype dtype);                    /* bytes per element */
int fl_st_dtype_from_name(const char *name, fl_st_dtype *out); /* 0, or -1 if unknown */
/* True for F32/BF16/F16, filling *out (may be NULL) with the matching fl_dtype. */
bool fl_st_dtype_computable(fl_st_dtype dtype, fl_dtype *out);
fl_st_dtype fl_st_dtype_from_fl(fl_dtype dtype);

/* ---- reader ------------------------------------------------------------------------------ */

typedef struct fl_safetensors fl_safetensors; /* an open file or buffer; opaque */

/* One tensor of an open file. Pointers stay valid until fl_safetensors_close. */
typedef struct fl_safetensors_info {
    const char *name; /* UTF-8, no NUL bytes inside, 1..FL_SAFETENSORS_MAX_NAME bytes */
    fl_st_dtype dtype;
    int ndim; /* 0..FL_SAFETENSORS_MAX_DIMS; 0 is a scalar */
    int64_t shape[FL_SAFETENSORS_MAX_DIMS];
    int64_t numel;
    const void *data; /* first byte, inside the mapping; read-only */
    uint64_t nbytes;  /* numel * element size == end - begin */
    uint64_t begin;   /* data_offsets, relative to the data buffer */
    uint64_t end;
} fl_safetensors_info;

/* Map path read-only and validate it. On failure *out is NULL, err holds the reason (without
 * the path; callers add it), and the code is FL_EIO (cannot open/map), FL_ELIMIT (header larger
 * than FL_SAFETENSORS_MAX_HEADER) or FL_EINVAL (malformed). */
int fl_safetensors_open(const char *path, fl_safetensors **out, fl_error *err);
/* The same over data[0, size); the buffer is not copied and must outlive the handle. */
int fl_safetensors_open_memory(const void *data, size_t size, fl_safetensors **out, fl_error *err);
void fl_safetensors_close(fl_safetensors *file); /* NULL is fine */

/* Tensors in the order the header lists them; i < fl_safetensors_count. */
size_t fl_safetensors_count(const fl_safetensors *file);
const fl_safetensors_info *fl_safetensors_at(const fl_safetensors *file, size_t i);
/* NULL when no tensor has that name. */
const fl_safetensors_info *fl_safetensors_find(const fl_safetensors *file, const char *name);

/* Sizes of the parts of the file: JSON header (N) and data buffer (everything after it). */
uint64_t fl_safetensors_header_size(const fl_safetensors *file);
uint64_t fl_safetensors_data_size(const fl_safetensors *file);

/* "__metadata__" entries in header order; every value is a string. */
size_t fl_safetensors_metadata_count(const fl_safetensors *file);
void fl_safetensors_metadata_at(const fl_safetensors *file, size_t i, const char **key, const char **value);
const char *fl_safetensors_metadata_get(const fl_safetensors *file, const char *key); /* NULL if absent */

/* An fl_tensor over the tensor's bytes in place (contiguous, no copy). The bytes are read-only
 * (a file mapping is PROT_READ): never write through the view. Fails (FL_EUNSUPPORTED) for a
 * non-computable dtype, more than FL_MAX_DIMS dimensions, data not aligned to the element size,
 * or a device other than the CPU (the bytes live in host memory; upload them to use a GPU). */
int fl_safetensors_tensor_view(const fl_safetensors *file, const fl_safetensors_info *info, fl_device device,
                               fl_tensor *out, fl_error *err);

/* ---- writer ------------------------------------------------------------------------------ */

/* One tensor to write: numel(shape) * element size bytes at data (may be NULL when that is 0). */
typedef struct fl_safetensors_entry {
    const char *name;
    fl_st_dtype dtype;
    int ndim;
    int64_t shape[FL_SAFETENSORS_MAX_DIMS];
    const void *data;
} fl_safetensors_entry;

typedef struct fl_safetensors_kv {
    const char *key;
    const char *value;
} fl_safetensors_kv;

/* An entry for a contiguous CPU tensor (FL_CHECKs both: passing anything else is a bug). */
fl_safetensors_entry fl_safetensors_entry_from_tensor(const char *name, const fl_tensor *t);

/* Write tensors[0, n) and metadata[0, n_metadata) to path atomically (see the top comment).
 * Names must be valid UTF-8, non-empty, at most FL_SAFETENSORS_MAX_NAME bytes, unique and not
 * "__metadata__"; metadata keys unique; ndim in [0, FL_SAFETENSORS_MAX_DIMS], extents >= 0.
 * Bad arguments fail with FL_EINVAL before anything is created; I/O failures with FL_EIO. */
int fl_safetensors_write(const char *path, const fl_safetensors_entry *tensors, size_t n,
                         const fl_safetensors_kv *metadata, size_t n_metadata, fl_error *err);

#endif
