/*
 * tensor.c — tensor views: construction, shape queries, slicing/permuting, matrix views, and
 * host-side conversion between f32 and bf16/f16.
 */
#include "core/tensor.h"

#include <stdio.h>
#include <string.h>

#include "core/error.h"

size_t fl_dtype_size(fl_dtype dtype) {
    switch (dtype) {
    case FL_F32: return 4;
    case FL_BF16: return 2;
    case FL_F16: return 2;
    }
    FL_CHECKF(0, "unknown dtype %d", (int)dtype);
}

const char *fl_dtype_name(fl_dtype dtype) {
    switch (dtype) {
    case FL_F32: return "F32";
    case FL_BF16: return "BF16";
    case FL_F16: return "F16";
    }
    return "?";
}

int fl_dtype_from_name(const char *name, fl_dtype *out) {
    if (!strcmp(name, "F32")) *out = FL_F32;
    else if (!strcmp(name, "BF16")) *out = FL_BF16;
    else if (!strcmp(name, "F16")) *out = FL_F16;
    else return -1;
    return 0;
}

fl_device fl_device_cpu(void) {
    fl_device d = {FL_DEVICE_CPU, 0};
    return d;
}

bool fl_device_equal(fl_device a, fl_device b) {
    return a.kind == b.kind && a.index == b.index;
}

const char *fl_device_kind_name(fl_device_kind kind) {
    return kind == FL_DEVICE_CUDA ? "cuda" : "cpu";
}

fl_tensor fl_tensor_make(void *data, fl_dtype dtype, fl_device device, int ndim, const int64_t *shape) {
    FL_CHECKF(ndim >= 0 && ndim <= FL_MAX_DIMS, "ndim %d out of range", ndim);
    fl_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        FL_CHECKF(shape[i] >= 0, "negative extent %lld", (long long)shape[i]);
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        stride *= shape[i] > 0 ? shape[i] : 1;
    }
    return t;
}

fl_tensor fl_tensor_f32_1d(float *data, int64_t n0) {
    int64_t s[1] = {n0};
    return fl_tensor_make(data, FL_F32, fl_device_cpu(), 1, s);
}

fl_tensor fl_tensor_f32_2d(float *data, int64_t n0, int64_t n1) {
    int64_t s[2] = {n0, n1};
    return fl_tensor_make(data, FL_F32, fl_device_cpu(), 2, s);
}

fl_tensor fl_tensor_f32_3d(float *data, int64_t n0, int64_t n1, int64_t n2) {
    int64_t s[3] = {n0, n1, n2};
    return fl_tensor_make(data, FL_F32, fl_device_cpu(), 3, s);
}

fl_tensor fl_tensor_f32_4d(float *data, int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
    int64_t s[4] = {n0, n1, n2, n3};
    return fl_tensor_make(data, FL_F32, fl_device_cpu(), 4, s);
}

int64_t fl_tensor_numel(const fl_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t fl_tensor_nbytes(const fl_tensor *t) {
    return (size_t)fl_tensor_numel(t) * fl_dtype_size(t->dtype);
}

bool fl_tensor_is_contiguous(const fl_tensor *t) {
    if (fl_tensor_numel(t) == 0) return true; /* no element to be out of place */
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect) return false;
        expect *= t->shape[i];
    }
    return true;
}

bool fl_tensor_same_shape(const fl_tensor *a, const fl_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

char *fl_tensor_shape_str(const fl_tensor *t, char *buf, size_t size) {
    size_t used = 0;
    used += (size_t)snprintf(buf + used, size - used, "[");
    for (int i = 0; i < t->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

fl_tensor fl_tensor_slice(const fl_tensor *t, int dim, int64_t start, int64_t length) {
    FL_CHECKF(dim >= 0 && dim < t->ndim, "slice dim %d of a %d-d tensor", dim, t->ndim);
    FL_CHECKF(start >= 0 && length >= 0 && start + length <= t->shape[dim],
              "slice [%lld, +%lld) of extent %lld", (long long)start, (long long)length,
              (long long)t->shape[dim]);
    fl_tensor v = *t;
    v.data = (char *)t->data + (size_t)(start * t->stride[dim]) * fl_dtype_size(t->dtype);
    v.shape[dim] = length;
    return v;
}

fl_tensor fl_tensor_permute(const fl_tensor *t, const int *perm) {
    fl_tensor v = *t;
    int seen = 0;
    for (int i = 0; i < t->ndim; i++) {
        FL_CHECKF(perm[i] >= 0 && perm[i] < t->ndim && !(seen & (1 << perm[i])), "bad permutation");
        seen |= 1 << perm[i];
        v.shape[i] = t->shape[perm[i]];
        v.stride[i] = t->stride[perm[i]];
    }
    return v;
}

fl_tensor fl_tensor_reshape(const fl_tensor *t, int ndim, const int64_t *shape) {
    FL_CHECKF(fl_tensor_is_contiguous(t), "reshape of a non-contiguous tensor");
    fl_tensor v = fl_tensor_make(t->data, t->dtype, t->device, ndim, shape);
    FL_CHECKF(fl_tensor_numel(&v) == fl_tensor_numel(t), "reshape changes the element count");
    return v;
}

bool fl_tensor_matrix(const fl_tensor *t, fl_matrix *out) {
    if (t->ndim == 0) {
        out->rows = out->cols = out->ld = 1;
        return true;
    }
    int last = t->ndim - 1;
    int64_t cols = t->shape[last];
    if (cols != 1 && t->stride[last] != 1) return false;
    int64_t rows = 1;
    for (int i = 0; i < last; i++) rows *= t->shape[i];
    int64_t ld = cols;
    if (last >= 1) {
        /* Find the innermost leading dim with extent > 1: its stride is the row stride. */
        int inner = -1;
        for (int i = last - 1; i >= 0; i--)
            if (t->shape[i] != 1) { inner = i; break; }
        if (inner >= 0) {
            ld = t->stride[inner];
            int64_t expect = ld * t->shape[inner];
            for (int i = inner - 1; i >= 0; i--) {
                if (t->shape[i] == 1) continue;
                if (t->stride[i] != expect) return false;
                expect *= t->shape[i];
            }
        }
    }
    if (ld < cols && rows > 1) return false;
    out->rows = rows;
    out->cols = cols;
    out->ld = ld < cols ? cols : ld;
    return true;
}

uint16_t fl_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float fl_bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t fl_f32_to_f16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);          /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);         /* overflow → inf */
    if (absu < 0x38800000u) {                                           /* subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign;
        uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
        int shift = 113 - (int)(absu >> 23) + 13;
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((absu >> 13) - (112u << 10));
    uint32_t rem = absu & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float fl_f16_to_f32(uint16_t x) {
    uint32_t sign = ((uint32_t)x & 0x8000u) << 16;
    uint32_t exp = (x >> 10) & 0x1fu;
    uint32_t mant = x & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) u = sign;
        else {
            exp = 113;
            while (!(mant & 0x400u)) { mant <<= 1; exp--; }
            mant &= 0x3ffu;
            u = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
