/*
 * tensor.h — the tensor view used everywhere: a data pointer, a dtype, a device, a shape and
 * element strides. A tensor does not own its memory; buffers come from an arena, a mapped file
 * or an explicit allocation through the device context (kernels/context.h).
 *
 * Shapes are row-major: the last dimension varies fastest. Weights follow PyTorch's [out, in].
 * A "matrix view" of a tensor collapses every dimension but the last into rows; it exists when
 * the last dimension is contiguous (stride 1) and the leading dimensions collapse into a single
 * row stride. Ops that accept strided operands say so; see fl_tensor_matrix().
 */
#ifndef FL_CORE_TENSOR_H
#define FL_CORE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FL_MAX_DIMS 6

typedef enum fl_dtype { FL_F32 = 0, FL_BF16, FL_F16 } fl_dtype;

typedef enum fl_device_kind { FL_DEVICE_CPU = 0, FL_DEVICE_CUDA } fl_device_kind;

typedef struct fl_device {
    fl_device_kind kind;
    int index; /* GPU ordinal; 0 for the CPU */
} fl_device;

typedef struct fl_tensor {
    void *data; /* first element, already offset for views */
    fl_dtype dtype;
    fl_device device;
    int ndim;
    int64_t shape[FL_MAX_DIMS];
    int64_t stride[FL_MAX_DIMS]; /* in elements */
} fl_tensor;

/* A matrix view: rows x cols with row stride ld (elements), last dimension contiguous. */
typedef struct fl_matrix {
    int64_t rows, cols, ld;
} fl_matrix;

size_t fl_dtype_size(fl_dtype dtype);
const char *fl_dtype_name(fl_dtype dtype);          /* "F32", "BF16", "F16" (safetensors names) */
int fl_dtype_from_name(const char *name, fl_dtype *out); /* 0 on success, -1 if unknown */

fl_device fl_device_cpu(void);
bool fl_device_equal(fl_device a, fl_device b);
const char *fl_device_kind_name(fl_device_kind kind);

/* A contiguous tensor over data. ndim in [0, FL_MAX_DIMS]; every extent >= 0. */
fl_tensor fl_tensor_make(void *data, fl_dtype dtype, fl_device device, int ndim, const int64_t *shape);
/* Short forms for CPU f32 tensors, the common case in tests and the reference backend. */
fl_tensor fl_tensor_f32_1d(float *data, int64_t n0);
fl_tensor fl_tensor_f32_2d(float *data, int64_t n0, int64_t n1);
fl_tensor fl_tensor_f32_3d(float *data, int64_t n0, int64_t n1, int64_t n2);
fl_tensor fl_tensor_f32_4d(float *data, int64_t n0, int64_t n1, int64_t n2, int64_t n3);

int64_t fl_tensor_numel(const fl_tensor *t);
size_t fl_tensor_nbytes(const fl_tensor *t); /* numel * dtype size (contiguous extent) */
bool fl_tensor_is_contiguous(const fl_tensor *t);
bool fl_tensor_same_shape(const fl_tensor *a, const fl_tensor *b);
/* Writes "[2, 3, 4]" into buf; returns buf. */
char *fl_tensor_shape_str(const fl_tensor *t, char *buf, size_t size);

/* Views (no copies). Each FL_CHECKs its arguments: they are programming errors when wrong. */
fl_tensor fl_tensor_slice(const fl_tensor *t, int dim, int64_t start, int64_t length);
fl_tensor fl_tensor_permute(const fl_tensor *t, const int *perm);
fl_tensor fl_tensor_reshape(const fl_tensor *t, int ndim, const int64_t *shape); /* contiguous only */

/* Matrix view of t; returns false when t has none (see the header comment). */
bool fl_tensor_matrix(const fl_tensor *t, fl_matrix *out);

/* Host conversions between f32 and the 16-bit storage types (round to nearest even). */
uint16_t fl_f32_to_bf16(float x);
float fl_bf16_to_f32(uint16_t x);
uint16_t fl_f32_to_f16(float x);
float fl_f16_to_f32(uint16_t x);

#endif
