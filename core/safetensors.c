/*
 * safetensors.c — the .safetensors reader (header validation over a byte range, plus read-only
 * file mapping) and the atomic writer. See safetensors.h for the format and the guarantees.
 *
 * Validation order, each with its own one-line reason: total size, header length (zero, over
 * the limit, past the end), JSON syntax (jansson, duplicate keys rejected), top-level object,
 * then per entry in header order: name, entry type, field set, dtype, shape, data_offsets, byte
 * count; then "__metadata__"; finally overlaps between tensors (gaps are allowed).
 */
#include "core/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "core/fileio.h"

/* ---- dtypes ------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtype_table[FL_ST_DTYPE_COUNT] = {
    [FL_ST_F32] = {"F32", 4},         [FL_ST_BF16] = {"BF16", 2},       [FL_ST_F16] = {"F16", 2},
    [FL_ST_F64] = {"F64", 8},         [FL_ST_I64] = {"I64", 8},         [FL_ST_I32] = {"I32", 4},
    [FL_ST_I16] = {"I16", 2},         [FL_ST_I8] = {"I8", 1},           [FL_ST_U64] = {"U64", 8},
    [FL_ST_U32] = {"U32", 4},         [FL_ST_U16] = {"U16", 2},         [FL_ST_U8] = {"U8", 1},
    [FL_ST_BOOL] = {"BOOL", 1},       [FL_ST_F8_E4M3] = {"F8_E4M3", 1}, [FL_ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *fl_st_dtype_name(fl_st_dtype dtype) {
    return (unsigned)dtype < FL_ST_DTYPE_COUNT ? dtype_table[dtype].name : "?";
}

size_t fl_st_dtype_size(fl_st_dtype dtype) {
    FL_CHECKF((unsigned)dtype < FL_ST_DTYPE_COUNT, "unknown safetensors dtype %d", (int)dtype);
    return dtype_table[dtype].size;
}

int fl_st_dtype_from_name(const char *name, fl_st_dtype *out) {
    for (int i = 0; i < FL_ST_DTYPE_COUNT; i++) {
        if (!strcmp(name, dtype_table[i].name)) {
            *out = (fl_st_dtype)i;
            return 0;
        }
    }
    return -1;
}

bool fl_st_dtype_computable(fl_st_dtype dtype, fl_dtype *out) {
    fl_dtype d;
    switch (dtype) {
    case FL_ST_F32: d = FL_F32; break;
    case FL_ST_BF16: d = FL_BF16; break;
    case FL_ST_F16: d = FL_F16; break;
    default: return false;
    }
    if (out) *out = d;
    return true;
}

fl_st_dtype fl_st_dtype_from_fl(fl_dtype dtype) {
    switch (dtype) {
    case FL_F32: return FL_ST_F32;
    case FL_BF16: return FL_ST_BF16;
    case FL_F16: return FL_ST_F16;
    }
    FL_CHECKF(0, "unknown dtype %d", (int)dtype);
}

/* ---- message helpers ---------------------------------------------------------------------- */

/* Bytes of a quoted string kept in a message, so two names and some numbers fit in fl_error. */
#define QUOTE_MAX 140

/* Copy s into buf for a one-line message: control bytes become \xNN, and with ascii_only every
 * byte >= 0x80 does too (for text that may not be valid UTF-8). Long strings end in "...";
 * UTF-8 sequences are never split. */
static const char *quote(const char *s, size_t len, bool ascii_only, char *buf, size_t size) {
    size_t o = 0, limit = size - 4; /* room for "..." and the NUL */
    if (limit > QUOTE_MAX) limit = QUOTE_MAX;
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t in = 1, outn;
        if (c < 0x20 || c == 0x7f || (ascii_only && c >= 0x80)) {
            outn = 4;
        } else {
            if (c >= 0xf0) in = 4;
            else if (c >= 0xe0) in = 3;
            else if (c >= 0xc0) in = 2;
            if (in > len - i) in = len - i;
            outn = in;
        }
        if (o + outn > limit) break;
        if (outn == 4 && in == 1) {
            snprintf(buf + o, size - o, "\\x%02x", c);
        } else {
            memcpy(buf + o, s + i, in);
        }
        o += outn;
        i += in;
    }
    if (i < len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

static const char *qname(const char *s, char *buf, size_t size) {
    return quote(s, strlen(s), false, buf, size);
}

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static char *shape_str(const int64_t *shape, int ndim, char *buf, size_t size) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, size - o, "[");
    for (int i = 0; i < ndim && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < size) snprintf(buf + o, size - o, "]");
    return buf;
}

/* numel of shape, or -1 when the product of the non-zero extents times elem_size overflows
 * int64 (such a shape would overflow strides and byte counts even when an extent is 0). */
static int64_t checked_numel(const int64_t *shape, int ndim, size_t elem_size) {
    int64_t nonzero = (int64_t)elem_size, numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0) {
            numel = 0;
            continue;
        }
        if (__builtin_mul_overflow(nonzero, shape[i], &nonzero)) return -1;
    }
    return numel == 0 ? 0 : nonzero / (int64_t)elem_size;
}

/* ---- reader ------------------------------------------------------------------------------- */

struct fl_safetensors {
    void *map; /* non-NULL when we own a file mapping of map_size bytes */
    size_t map_size;
    uint64_t header_size;
    const uint8_t *data; /* the data buffer */
    uint64_t data_size;
    json_t *root; /* owns the names and metadata strings */
    size_t count;
    fl_safetensors_info *tensors;          /* header order */
    const fl_safetensors_info **by_name;   /* sorted by strcmp(name) */
    size_t n_meta;
    const char **meta_keys;
    const char **meta_values;
};

static int cmp_by_name(const void *a, const void *b) {
    const fl_safetensors_info *x = *(const fl_safetensors_info *const *)a;
    const fl_safetensors_info *y = *(const fl_safetensors_info *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_by_offset(const void *a, const void *b) {
    const fl_safetensors_info *x = *(const fl_safetensors_info *const *)a;
    const fl_safetensors_info *y = *(const fl_safetensors_info *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int parse_tensor(fl_safetensors *f, const char *name, const json_t *entry, fl_safetensors_info *info,
                        fl_error *err) {
    char qn[QUOTE_MAX + 8], q2[QUOTE_MAX + 8], sbuf[256];
    size_t name_len = strlen(name);
    if (name_len == 0) return fl_fail(err, FL_EINVAL, "a tensor has an empty name");
    if (name_len > FL_SAFETENSORS_MAX_NAME)
        return fl_fail(err, FL_EINVAL, "tensor '%s': name is %zu bytes, longer than the limit of %d",
                       qname(name, qn, sizeof qn), name_len, FL_SAFETENSORS_MAX_NAME);
    qname(name, qn, sizeof qn);
    if (!json_is_object(entry))
        return fl_fail(err, FL_EINVAL, "tensor '%s': expected an object with dtype, shape and data_offsets, got %s",
                       qn, json_kind(entry));

    const char *key;
    json_t *value;
    json_object_foreach((json_t *)entry, key, value) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return fl_fail(err, FL_EINVAL, "tensor '%s': unexpected field '%s'", qn, qname(key, q2, sizeof q2));
    }
    const json_t *jdtype = json_object_get(entry, "dtype");
    const json_t *jshape = json_object_get(entry, "shape");
    const json_t *joffsets = json_object_get(entry, "data_offsets");
    if (!jdtype) return fl_fail(err, FL_EINVAL, "tensor '%s': missing field 'dtype'", qn);
    if (!jshape) return fl_fail(err, FL_EINVAL, "tensor '%s': missing field 'shape'", qn);
    if (!joffsets) return fl_fail(err, FL_EINVAL, "tensor '%s': missing field 'data_offsets'", qn);

    if (!json_is_string(jdtype))
        return fl_fail(err, FL_EINVAL, "tensor '%s': dtype must be a string, got %s", qn, json_kind(jdtype));
    if (fl_st_dtype_from_name(json_string_value(jdtype), &info->dtype))
        return fl_fail(err, FL_EINVAL, "tensor '%s': unknown dtype '%s'", qn,
                       quote(json_string_value(jdtype), json_string_length(jdtype), false, q2, sizeof q2));

    if (!json_is_array(jshape))
        return fl_fail(err, FL_EINVAL, "tensor '%s': shape must be an array of non-negative integers, got %s", qn,
                       json_kind(jshape));
    size_t ndim = json_array_size(jshape);
    if (ndim > FL_SAFETENSORS_MAX_DIMS)
        return fl_fail(err, FL_EINVAL, "tensor '%s': shape has %zu dimensions; at most %d are supported", qn, ndim,
                       FL_SAFETENSORS_MAX_DIMS);
    info->ndim = (int)ndim;
    for (size_t d = 0; d < ndim; d++) {
        const json_t *v = json_array_get(jshape, d);
        if (!json_is_integer(v))
            return fl_fail(err, FL_EINVAL, "tensor '%s': shape[%zu] is %s; extents must be non-negative integers",
                           qn, d, json_kind(v));
        json_int_t e = json_integer_value(v);
        if (e < 0)
            return fl_fail(err, FL_EINVAL, "tensor '%s': shape[%zu] is %" JSON_INTEGER_FORMAT
                           "; extents must be non-negative integers", qn, d, e);
        info->shape[d] = (int64_t)e;
    }
    size_t elem = fl_st_dtype_size(info->dtype);
    info->numel = checked_numel(info->shape, info->ndim, elem);
    if (info->numel < 0)
        return fl_fail(err, FL_EINVAL, "tensor '%s': shape %s of %s overflows a 64-bit byte count", qn,
                       shape_str(info->shape, info->ndim, sbuf, sizeof sbuf), fl_st_dtype_name(info->dtype));

    if (!json_is_array(joffsets) || json_array_size(joffsets) != 2 ||
        !json_is_integer(json_array_get(joffsets, 0)) || !json_is_integer(json_array_get(joffsets, 1)))
        return fl_fail(err, FL_EINVAL, "tensor '%s': data_offsets must be an array of two non-negative integers",
                       qn);
    json_int_t b = json_integer_value(json_array_get(joffsets, 0));
    json_int_t e = json_integer_value(json_array_get(joffsets, 1));
    if (b < 0 || e < 0)
        return fl_fail(err, FL_EINVAL, "tensor '%s': data_offsets [%" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT
                       "] must be non-negative", qn, b, e);
    if (b > e)
        return fl_fail(err, FL_EINVAL, "tensor '%s': data_offsets [%" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT
                       "] end before they begin", qn, b, e);
    if ((uint64_t)e > f->data_size)
        return fl_fail(err, FL_EINVAL, "tensor '%s': data_offsets [%" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT
                       "] end past the %" PRIu64 "-byte data buffer", qn, b, e, f->data_size);
    info->begin = (uint64_t)b;
    info->end = (uint64_t)e;
    info->nbytes = (uint64_t)info->numel * elem;
    if (info->end - info->begin != info->nbytes)
        return fl_fail(err, FL_EINVAL, "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                       " bytes but shape %s of %s needs %" PRIu64, qn, info->begin, info->end,
                       info->end - info->begin, shape_str(info->shape, info->ndim, sbuf, sizeof sbuf),
                       fl_st_dtype_name(info->dtype), info->nbytes);
    info->name = name;
    info->data = f->data + info->begin;
    return 0;
}

static int parse_metadata(fl_safetensors *f, const json_t *meta, fl_error *err) {
    char q[QUOTE_MAX + 8];
    if (!json_is_object(meta))
        return fl_fail(err, FL_EINVAL, "__metadata__ must be an object of strings, got %s", json_kind(meta));
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_values = calloc(n ? n : 1, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values) return fl_fail(err, FL_ENOMEM, "out of memory for %zu metadata entries", n);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)meta, key, value) {
        if (!json_is_string(value))
            return fl_fail(err, FL_EINVAL, "__metadata__ '%s': value must be a string, got %s",
                           qname(key, q, sizeof q), json_kind(value));
        f->meta_keys[f->n_meta] = key;
        f->meta_values[f->n_meta] = json_string_value(value);
        f->n_meta++;
    }
    return 0;
}

/* Validate base[0, size) as a safetensors file and fill f (whose map fields are already set). */
static int parse(fl_safetensors *f, const uint8_t *base, size_t size, fl_error *err) {
    if (size < 8)
        return fl_fail(err, FL_EINVAL, "file is %zu bytes, shorter than the 8-byte header length", size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | base[i];
    if (n == 0) return fl_fail(err, FL_EINVAL, "header length is 0");
    if (n > FL_SAFETENSORS_MAX_HEADER)
        return fl_fail(err, FL_ELIMIT, "header length %" PRIu64 " exceeds the limit of %u bytes", n,
                       FL_SAFETENSORS_MAX_HEADER);
    if (n > size - 8)
        return fl_fail(err, FL_EINVAL, "header length %" PRIu64 " exceeds the %zu bytes after the length field", n,
                       size - 8);
    f->header_size = n;
    f->data = base + 8 + n;
    f->data_size = size - 8 - n;

    json_error_t jerr;
    f->root = json_loadb((const char *)base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->root) {
        char q[QUOTE_MAX + 8];
        return fl_fail(err, FL_EINVAL, "header is not valid JSON (line %d, column %d): %s", jerr.line, jerr.column,
                       quote(jerr.text, strlen(jerr.text), true, q, sizeof q));
    }
    if (!json_is_object(f->root))
        return fl_fail(err, FL_EINVAL, "header is not a JSON object (got %s)", json_kind(f->root));

    const json_t *meta = json_object_get(f->root, "__metadata__");
    size_t total = json_object_size(f->root) - (meta ? 1 : 0);
    f->tensors = calloc(total ? total : 1, sizeof *f->tensors);
    f->by_name = calloc(total ? total : 1, sizeof *f->by_name);
    if (!f->tensors || !f->by_name) return fl_fail(err, FL_ENOMEM, "out of memory for %zu tensors", total);

    const char *key;
    json_t *value;
    json_object_foreach(f->root, key, value) {
        if (!strcmp(key, "__metadata__")) continue;
        if (parse_tensor(f, key, value, &f->tensors[f->count], err)) return -1;
        f->count++;
    }
    if (meta && parse_metadata(f, meta, err)) return -1;

    /* Overlaps: sort the non-empty ranges by start and compare each with the furthest end so far. */
    size_t nonempty = 0;
    for (size_t i = 0; i < f->count; i++)
        if (f->tensors[i].nbytes) f->by_name[nonempty++] = &f->tensors[i];
    qsort(f->by_name, nonempty, sizeof *f->by_name, cmp_by_offset);
    const fl_safetensors_info *reach = NULL;
    for (size_t i = 0; i < nonempty; i++) {
        const fl_safetensors_info *t = f->by_name[i];
        if (reach && t->begin < reach->end) {
            char q1[QUOTE_MAX + 8], q2[QUOTE_MAX + 8];
            return fl_fail(err, FL_EINVAL, "tensors '%s' [%" PRIu64 ", %" PRIu64 "] and '%s' [%" PRIu64 ", %" PRIu64
                           "] overlap", qname(reach->name, q1, sizeof q1), reach->begin, reach->end,
                           qname(t->name, q2, sizeof q2), t->begin, t->end);
        }
        if (!reach || t->end > reach->end) reach = t;
    }

    for (size_t i = 0; i < f->count; i++) f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, f->count, sizeof *f->by_name, cmp_by_name);
    return 0;
}

void fl_safetensors_close(fl_safetensors *file) {
    if (!file) return;
    if (file->root) json_decref(file->root);
    free(file->tensors);
    free((void *)file->by_name);
    free((void *)file->meta_keys);
    free((void *)file->meta_values);
    if (file->map) munmap(file->map, file->map_size);
    free(file);
}

static int open_bytes(const uint8_t *base, size_t size, void *map, fl_safetensors **out, fl_error *err) {
    fl_safetensors *f = calloc(1, sizeof *f);
    if (!f) {
        if (map) munmap(map, size);
        return fl_fail(err, FL_ENOMEM, "out of memory");
    }
    f->map = map;
    f->map_size = size;
    if (parse(f, base, size, err)) {
        fl_safetensors_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int fl_safetensors_open_memory(const void *data, size_t size, fl_safetensors **out, fl_error *err) {
    *out = NULL;
    static const uint8_t empty[1] = {0};
    return open_bytes(data ? data : empty, data ? size : 0, NULL, out, err);
}

int fl_safetensors_open(const char *path, fl_safetensors **out, fl_error *err) {
    *out = NULL;
    /* O_NONBLOCK so a FIFO cannot hang the open; only regular files are mapped. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return fl_fail(err, FL_EIO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        int e = errno;
        close(fd);
        return fl_fail(err, FL_EIO, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fl_fail(err, FL_EIO, "not a regular file");
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return fl_fail(err, FL_ELIMIT, "file of %lld bytes is too large to map", (long long)st.st_size);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) { /* nothing worth mapping (and mmap refuses 0 bytes) */
        uint8_t small[8];
        ssize_t got = pread(fd, small, size, 0);
        int e = errno;
        close(fd);
        if (got < 0) return fl_fail(err, FL_EIO, "cannot read: %s", strerror(e));
        return open_bytes(small, (size_t)got, NULL, out, err);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return fl_fail(err, FL_EIO, "cannot map %zu bytes: %s", size, strerror(e));
    return open_bytes(map, size, map, out, err);
}

size_t fl_safetensors_count(const fl_safetensors *file) {
    return file->count;
}

const fl_safetensors_info *fl_safetensors_at(const fl_safetensors *file, size_t i) {
    FL_CHECKF(i < file->count, "tensor index %zu out of range (%zu tensors)", i, file->count);
    return &file->tensors[i];
}

const fl_safetensors_info *fl_safetensors_find(const fl_safetensors *file, const char *name) {
    size_t lo = 0, hi = file->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(file->by_name[mid]->name, name);
        if (c == 0) return file->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

uint64_t fl_safetensors_header_size(const fl_safetensors *file) {
    return file->header_size;
}

uint64_t fl_safetensors_data_size(const fl_safetensors *file) {
    return file->data_size;
}

size_t fl_safetensors_metadata_count(const fl_safetensors *file) {
    return file->n_meta;
}

void fl_safetensors_metadata_at(const fl_safetensors *file, size_t i, const char **key, const char **value) {
    FL_CHECKF(i < file->n_meta, "metadata index %zu out of range (%zu entries)", i, file->n_meta);
    if (key) *key = file->meta_keys[i];
    if (value) *value = file->meta_values[i];
}

const char *fl_safetensors_metadata_get(const fl_safetensors *file, const char *key) {
    for (size_t i = 0; i < file->n_meta; i++)
        if (!strcmp(file->meta_keys[i], key)) return file->meta_values[i];
    return NULL;
}

int fl_safetensors_tensor_view(const fl_safetensors *file, const fl_safetensors_info *info, fl_device device,
                               fl_tensor *out, fl_error *err) {
    FL_CHECKF(info >= file->tensors && info < file->tensors + file->count, "tensor info from another file");
    char qn[QUOTE_MAX + 8];
    fl_dtype dtype;
    if (!fl_st_dtype_computable(info->dtype, &dtype))
        return fl_fail(err, FL_EUNSUPPORTED, "tensor '%s': dtype %s is not computable (F32, BF16, F16 are)",
                       qname(info->name, qn, sizeof qn), fl_st_dtype_name(info->dtype));
    if (info->ndim > FL_MAX_DIMS)
        return fl_fail(err, FL_EUNSUPPORTED, "tensor '%s': %d dimensions; tensors have at most %d",
                       qname(info->name, qn, sizeof qn), info->ndim, FL_MAX_DIMS);
    size_t elem = fl_dtype_size(dtype);
    if ((uintptr_t)info->data % elem)
        return fl_fail(err, FL_EUNSUPPORTED, "tensor '%s': data at offset %" PRIu64
                       " is not aligned to its %zu-byte elements; copy it to view it",
                       qname(info->name, qn, sizeof qn), 8 + file->header_size + info->begin, elem);
    if (device.kind != FL_DEVICE_CPU)
        return fl_fail(err, FL_EUNSUPPORTED, "tensor '%s': file data lives in host memory; a %s view needs an upload",
                       qname(info->name, qn, sizeof qn), fl_device_kind_name(device.kind));
    *out = fl_tensor_make((void *)(uintptr_t)info->data, dtype, device, info->ndim, info->shape);
    return 0;
}

/* ---- writer ------------------------------------------------------------------------------- */

fl_safetensors_entry fl_safetensors_entry_from_tensor(const char *name, const fl_tensor *t) {
    FL_CHECKF(t->device.kind == FL_DEVICE_CPU, "safetensors entry '%s': tensor is not on the CPU", name);
    FL_CHECKF(fl_tensor_is_contiguous(t), "safetensors entry '%s': tensor is not contiguous", name);
    fl_safetensors_entry e;
    memset(&e, 0, sizeof e);
    e.name = name;
    e.dtype = fl_st_dtype_from_fl(t->dtype);
    e.ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) e.shape[i] = t->shape[i];
    e.data = t->data;
    return e;
}

typedef struct placed {
    size_t index; /* into tensors[] */
    size_t elem;
} placed;

/* Larger elements first, then given order: keeps every tensor aligned to its element size. */
static int cmp_placement(const void *a, const void *b) {
    const placed *x = a, *y = b;
    if (x->elem != y->elem) return x->elem > y->elem ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int write_all(int fd, const void *buf, uint64_t len) {
    const uint8_t *p = buf;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return -1;
        }
        p += w;
        len -= (uint64_t)w;
    }
    return 0;
}

static int validate_entries(const fl_safetensors_entry *tensors, size_t n, const fl_safetensors_kv *metadata,
                            size_t n_metadata, uint64_t *nbytes, fl_error *err) {
    char qn[QUOTE_MAX + 8], sbuf[256];
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const fl_safetensors_entry *t = &tensors[i];
        if (!t->name) return fl_fail(err, FL_EINVAL, "tensor %zu has no name", i);
        size_t len = strlen(t->name);
        qname(t->name, qn, sizeof qn);
        if (len == 0) return fl_fail(err, FL_EINVAL, "tensor %zu has an empty name", i);
        if (len > FL_SAFETENSORS_MAX_NAME)
            return fl_fail(err, FL_EINVAL, "tensor '%s': name is %zu bytes, longer than the limit of %d", qn, len,
                           FL_SAFETENSORS_MAX_NAME);
        if (!strcmp(t->name, "__metadata__"))
            return fl_fail(err, FL_EINVAL, "tensor '__metadata__': that name is reserved for the metadata");
        if ((unsigned)t->dtype >= FL_ST_DTYPE_COUNT)
            return fl_fail(err, FL_EINVAL, "tensor '%s': unknown dtype %d", qn, (int)t->dtype);
        if (t->ndim < 0 || t->ndim > FL_SAFETENSORS_MAX_DIMS)
            return fl_fail(err, FL_EINVAL, "tensor '%s': %d dimensions; at most %d are supported", qn, t->ndim,
                           FL_SAFETENSORS_MAX_DIMS);
        for (int d = 0; d < t->ndim; d++)
            if (t->shape[d] < 0)
                return fl_fail(err, FL_EINVAL, "tensor '%s': shape[%d] is %" PRId64 "; extents must be non-negative",
                               qn, d, t->shape[d]);
        size_t elem = fl_st_dtype_size(t->dtype);
        int64_t numel = checked_numel(t->shape, t->ndim, elem);
        if (numel < 0)
            return fl_fail(err, FL_EINVAL, "tensor '%s': shape %s of %s overflows a 64-bit byte count", qn,
                           shape_str(t->shape, t->ndim, sbuf, sizeof sbuf), fl_st_dtype_name(t->dtype));
        uint64_t bytes = (uint64_t)numel * elem;
        if (bytes && !t->data) return fl_fail(err, FL_EINVAL, "tensor '%s': no data for %" PRIu64 " bytes", qn, bytes);
        if (__builtin_add_overflow(total, bytes, &total) || total > (uint64_t)INT64_MAX)
            return fl_fail(err, FL_EINVAL, "tensors add up to more than 2^63 bytes");
    }
    for (size_t i = 0; i < n_metadata; i++)
        if (!metadata[i].key || !metadata[i].value)
            return fl_fail(err, FL_EINVAL, "metadata entry %zu has no %s", i, metadata[i].key ? "value" : "key");

    /* Uniqueness of names and of metadata keys. */
    size_t most = n > n_metadata ? n : n_metadata;
    const char **names = fl_xmalloc((most ? most : 1) * sizeof *names);
    int rc = 0;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        size_t count = pass == 0 ? n : n_metadata;
        for (size_t i = 0; i < count; i++) names[i] = pass == 0 ? tensors[i].name : metadata[i].key;
        qsort(names, count, sizeof *names, cmp_str_ptr);
        for (size_t i = 1; i < count && rc == 0; i++)
            if (!strcmp(names[i - 1], names[i]))
                rc = fl_fail(err, FL_EINVAL, pass == 0 ? "tensor '%s': name appears twice" :
                             "__metadata__ '%s': key appears twice", qname(names[i], qn, sizeof qn));
    }
    free((void *)names);
    *nbytes = total;
    return rc;
}

/* The JSON header for the given placement; NULL with err set when a string is not UTF-8. */
static char *build_header(const fl_safetensors_entry *tensors, size_t n, const fl_safetensors_kv *metadata,
                          size_t n_metadata, const uint64_t *begin, fl_error *err) {
    char qn[QUOTE_MAX + 8];
    json_t *root = json_object();
    FL_CHECK(root);
    if (n_metadata) {
        json_t *meta = json_object();
        FL_CHECK(meta);
        json_object_set_new(root, "__metadata__", meta);
        for (size_t i = 0; i < n_metadata; i++) {
            json_t *v = json_string(metadata[i].value);
            if (!v || json_object_set_new(meta, metadata[i].key, v)) {
                json_decref(root);
                fl_fail(err, FL_EINVAL, "__metadata__ '%s': key or value is not valid UTF-8",
                        quote(metadata[i].key, strlen(metadata[i].key), true, qn, sizeof qn));
                return NULL;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        const fl_safetensors_entry *t = &tensors[i];
        json_t *shape = json_array();
        FL_CHECK(shape);
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        uint64_t bytes = (uint64_t)checked_numel(t->shape, t->ndim, fl_st_dtype_size(t->dtype)) *
                         fl_st_dtype_size(t->dtype);
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", fl_st_dtype_name(t->dtype), "shape", shape,
                                  "data_offsets", (json_int_t)begin[i], (json_int_t)(begin[i] + bytes));
        FL_CHECK(entry);
        if (json_object_set_new(root, t->name, entry)) {
            json_decref(root);
            fl_fail(err, FL_EINVAL, "tensor '%s': name is not valid UTF-8",
                    quote(t->name, strlen(t->name), true, qn, sizeof qn));
            return NULL;
        }
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    FL_CHECK(text);
    return text;
}

int fl_safetensors_write(const char *path, const fl_safetensors_entry *tensors, size_t n,
                         const fl_safetensors_kv *metadata, size_t n_metadata, fl_error *err) {
    if (!path || !*path) return fl_fail(err, FL_EINVAL, "no output path");
    if (n && !tensors) return fl_fail(err, FL_EINVAL, "no tensor list");
    if (n_metadata && !metadata) return fl_fail(err, FL_EINVAL, "no metadata list");
    uint64_t total = 0;
    if (validate_entries(tensors, n, metadata, n_metadata, &total, err)) return -1;

    placed *order = fl_xmalloc((n ? n : 1) * sizeof *order);
    uint64_t *begin = fl_xmalloc((n ? n : 1) * sizeof *begin);
    for (size_t i = 0; i < n; i++) {
        order[i].index = i;
        order[i].elem = fl_st_dtype_size(tensors[i].dtype);
    }
    qsort(order, n, sizeof *order, cmp_placement);
    uint64_t offset = 0;
    for (size_t k = 0; k < n; k++) {
        const fl_safetensors_entry *t = &tensors[order[k].index];
        begin[order[k].index] = offset;
        offset += (uint64_t)checked_numel(t->shape, t->ndim, order[k].elem) * order[k].elem;
    }

    int rc = -1;
    char *tmp = NULL;
    int fd = -1;
    char *header = build_header(tensors, n, metadata, n_metadata, begin, err);
    if (!header) goto done;
    size_t len = strlen(header);
    size_t padded = (len + 8 + 7) / 8 * 8 - 8;
    if (padded > FL_SAFETENSORS_MAX_HEADER) {
        fl_fail(err, FL_ELIMIT, "header of %zu bytes exceeds the limit of %u", padded, FL_SAFETENSORS_MAX_HEADER);
        goto done;
    }
    header = fl_xrealloc(header, padded + 8);
    memmove(header + 8, header, len);
    memset(header + 8 + len, ' ', padded - len);
    for (int i = 0; i < 8; i++) header[i] = (char)(uint8_t)((uint64_t)padded >> (8 * i));

    size_t tmp_size = strlen(path) + 32;
    tmp = fl_xmalloc(tmp_size);
    snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST && unlink(tmp) == 0) /* left by an earlier crash of this pid */
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        fl_fail_errno(err, errno, "cannot create %s", tmp);
        goto done;
    }
    bool ok = write_all(fd, header, padded + 8) == 0;
    for (size_t k = 0; ok && k < n; k++) {
        const fl_safetensors_entry *t = &tensors[order[k].index];
        uint64_t bytes = (uint64_t)checked_numel(t->shape, t->ndim, order[k].elem) * order[k].elem;
        if (bytes) ok = write_all(fd, t->data, bytes) == 0;
    }
    if (!ok || fsync(fd)) {
        fl_fail_errno(err, errno, "cannot write %s", tmp);
        goto fail_unlink;
    }
    int close_rc = close(fd);
    fd = -1;
    if (close_rc) {
        fl_fail_errno(err, errno, "cannot write %s", tmp);
        goto fail_unlink;
    }
    if (rename(tmp, path)) {
        fl_fail_errno(err, errno, "cannot rename %s to %s", tmp, path);
        goto fail_unlink;
    }
    rc = fl_fsync_parent_dir(path, err);
    goto done;

fail_unlink:
    if (fd >= 0) close(fd);
    fd = -1;
    unlink(tmp);
done:
    if (fd >= 0) close(fd);
    free(tmp);
    free(header);
    free(order);
    free(begin);
    return rc;
}
