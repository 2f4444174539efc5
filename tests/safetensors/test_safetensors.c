/*
 * test_safetensors.c — the safetensors reader and writer: exact round trips (several dtypes,
 * 0-dim, zero-size and 8-dim tensors, metadata), lookup, tensor views, atomic-write failure
 * behaviour, and one test per reader rejection rule over a hand-built buffer, each asserting the
 * error code and a fragment of the one-line reason.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "harness.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static char tmp_dir[256];

static const char *tmp_path(const char *name, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s", tmp_dir, name);
    return buf;
}

/* 8-byte length (header_len, or the JSON's length when header_len is UINT64_MAX), JSON, data. */
static uint8_t *frame_n(uint64_t header_len, const char *json, size_t json_len, const void *data, size_t data_len,
                        size_t *size) {
    *size = 8 + json_len + data_len;
    uint8_t *buf = fl_xmalloc(*size);
    uint64_t n = header_len == UINT64_MAX ? json_len : header_len;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, json, json_len);
    if (data_len) memcpy(buf + 8 + json_len, data, data_len);
    return buf;
}

static uint8_t *frame(const char *json, size_t data_len, size_t *size) {
    uint8_t *zeros = fl_xcalloc(data_len ? data_len : 1, 1);
    uint8_t *buf = frame_n(UINT64_MAX, json, strlen(json), zeros, data_len, size);
    free(zeros);
    return buf;
}

#define EXPECT_REJECT(buf, size, code, fragment) expect_reject_at(__FILE__, __LINE__, buf, size, code, fragment)

static void expect_reject_at(const char *file, int line, const uint8_t *buf, size_t size, fl_error_code code,
                             const char *fragment) {
    fl_error err;
    fl_error_clear(&err);
    fl_safetensors *f = (fl_safetensors *)&err; /* must be reset to NULL */
    int rc = fl_safetensors_open_memory(buf, size, &f, &err);
    if (rc == 0) {
        fl_test_fail_at(file, line, "accepted; expected rejection with '%s'", fragment);
        fl_safetensors_close(f);
        return;
    }
    if (f != NULL) fl_test_fail_at(file, line, "handle not reset to NULL on failure");
    if (err.code != code)
        fl_test_fail_at(file, line, "code %s, expected %s (%s)", fl_error_code_name(err.code),
                        fl_error_code_name(code), err.message);
    if (!strstr(err.message, fragment))
        fl_test_fail_at(file, line, "message '%s' lacks '%s'", err.message, fragment);
    if (strchr(err.message, '\n')) fl_test_fail_at(file, line, "message spans lines: '%s'", err.message);
}

static void reject_json(const char *json, size_t data_len, const char *fragment) {
    size_t size;
    uint8_t *buf = frame(json, data_len, &size);
    EXPECT_REJECT(buf, size, FL_EINVAL, fragment);
    free(buf);
}

static fl_safetensors *open_json(const char *json, size_t data_len, uint8_t **keep) {
    size_t size;
    *keep = frame(json, data_len, &size);
    fl_error err;
    fl_safetensors *f = NULL;
    if (fl_safetensors_open_memory(*keep, size, &f, &err)) {
        fl_test_fail_at(__FILE__, __LINE__, "rejected: %s", err.message);
        return NULL;
    }
    return f;
}

static fl_safetensors_entry entry(const char *name, fl_st_dtype dtype, int ndim, const int64_t *shape,
                                  const void *data) {
    fl_safetensors_entry e;
    memset(&e, 0, sizeof e);
    e.name = name;
    e.dtype = dtype;
    e.ndim = ndim;
    for (int i = 0; i < ndim; i++) e.shape[i] = shape[i];
    e.data = data;
    return e;
}

static bool dir_has_tmp_files(void) {
    DIR *d = opendir(tmp_dir);
    bool found = false;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strstr(e->d_name, ".tmp.")) found = true;
    if (d) closedir(d);
    return found;
}

/* ---- writer + reader round trips ------------------------------------------------------------- */

static void test_roundtrip_dtypes(void) {
    float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    uint16_t bf16[5] = {0x3f80, 0x4000, 0xbf80, 0x7f80, 0x0001}; /* odd count: next tensor misaligned if packed */
    uint16_t f16[3] = {0x3c00, 0xc000, 0x7c00};
    int64_t i64[2] = {INT64_MIN, INT64_MAX};
    uint8_t u8[3] = {0, 127, 255};
    uint8_t flag[1] = {1};
    float scalar = 42.0f;
    float eight[2] = {7.0f, 8.0f};
    int64_t s23[] = {2, 3}, s5[] = {5}, s113[] = {1, 1, 3}, s2[] = {2}, s3[] = {3}, s04[] = {0, 4},
            s8[] = {1, 1, 1, 1, 1, 1, 1, 2};
    fl_safetensors_entry es[] = {
        entry("bf16", FL_ST_BF16, 1, s5, bf16),   entry("f32", FL_ST_F32, 2, s23, f32),
        entry("u8", FL_ST_U8, 1, s3, u8),         entry("f16", FL_ST_F16, 3, s113, f16),
        entry("i64", FL_ST_I64, 1, s2, i64),      entry("scalar", FL_ST_F32, 0, NULL, &scalar),
        entry("flag", FL_ST_BOOL, 0, NULL, flag), entry("empty", FL_ST_F32, 2, s04, NULL),
        entry("eight_dims", FL_ST_F32, 8, s8, eight),
    };
    size_t n = sizeof es / sizeof es[0];
    char path[512];
    tmp_path("roundtrip.safetensors", path, sizeof path);
    fl_error err;
    FL_EXPECTF(fl_safetensors_write(path, es, n, NULL, 0, &err) == 0, "write: %s", err.message);
    fl_safetensors *f = NULL;
    if (fl_safetensors_open(path, &f, &err)) {
        fl_test_fail_at(__FILE__, __LINE__, "open: %s", err.message);
        return;
    }
    FL_EXPECT(fl_safetensors_count(f) == n);
    FL_EXPECT(fl_safetensors_metadata_count(f) == 0);
    FL_EXPECT((8 + fl_safetensors_header_size(f)) % 8 == 0);
    uint64_t total = 0;
    for (size_t i = 0; i < n && i < fl_safetensors_count(f); i++) {
        const fl_safetensors_info *t = fl_safetensors_at(f, i);
        FL_EXPECTF(!strcmp(t->name, es[i].name), "tensor %zu is '%s', wrote '%s'", i, t->name, es[i].name);
        FL_EXPECT(t->dtype == es[i].dtype);
        FL_EXPECT(t->ndim == es[i].ndim);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            FL_EXPECT(t->shape[d] == es[i].shape[d]);
            numel *= es[i].shape[d];
        }
        FL_EXPECT(t->numel == numel);
        FL_EXPECT(t->nbytes == (uint64_t)numel * fl_st_dtype_size(t->dtype));
        FL_EXPECTF(t->begin % fl_st_dtype_size(t->dtype) == 0, "'%s' starts unaligned at %llu", t->name,
                   (unsigned long long)t->begin);
        if (t->nbytes) FL_EXPECTF(!memcmp(t->data, es[i].data, t->nbytes), "'%s' bytes differ", t->name);
        total += t->nbytes;
    }
    FL_EXPECTF(fl_safetensors_data_size(f) == total, "data buffer %llu bytes, tensors %llu (gaps?)",
               (unsigned long long)fl_safetensors_data_size(f), (unsigned long long)total);
    fl_safetensors_close(f);
    FL_EXPECT(!dir_has_tmp_files());
}

static void test_roundtrip_metadata(void) {
    float w[2] = {1.0f, 2.0f};
    int64_t s2[] = {2};
    fl_safetensors_entry es[] = {entry("w", FL_ST_F32, 1, s2, w)};
    fl_safetensors_kv kv[] = {
        {"format", "pt"},
        {"quotes", "say \"hi\"\tand\nnewline \\ backslash"},
        {"unicode", "r\xc3\xa9sum\xc3\xa9 \xe2\x9c\x93"},
        {"empty", ""},
        {"", "empty key"},
    };
    char path[512];
    tmp_path("metadata.safetensors", path, sizeof path);
    fl_error err;
    FL_EXPECTF(fl_safetensors_write(path, es, 1, kv, 5, &err) == 0, "write: %s", err.message);
    fl_safetensors *f = NULL;
    if (fl_safetensors_open(path, &f, &err)) {
        fl_test_fail_at(__FILE__, __LINE__, "open: %s", err.message);
        return;
    }
    FL_EXPECT(fl_safetensors_metadata_count(f) == 5);
    for (size_t i = 0; i < 5 && i < fl_safetensors_metadata_count(f); i++) {
        const char *key, *value;
        fl_safetensors_metadata_at(f, i, &key, &value);
        FL_EXPECTF(!strcmp(key, kv[i].key), "metadata %zu key '%s'", i, key);
        FL_EXPECTF(!strcmp(value, kv[i].value), "metadata %zu value '%s'", i, value);
        const char *got = fl_safetensors_metadata_get(f, kv[i].key);
        FL_EXPECT(got && !strcmp(got, kv[i].value));
    }
    FL_EXPECT(fl_safetensors_metadata_get(f, "absent") == NULL);
    FL_EXPECT(fl_safetensors_count(f) == 1);
    fl_safetensors_close(f);

    /* "__metadata__" comes first in the header. */
    FILE *fp = fopen(path, "rb");
    char head[32] = {0};
    FL_EXPECT(fp && fread(head, 1, 24, fp) == 24);
    if (fp) fclose(fp);
    FL_EXPECTF(!memcmp(head + 8, "{\"__metadata__\"", 15), "header starts '%.15s'", head + 8);
}

static void test_write_empty(void) {
    char path[512];
    tmp_path("empty.safetensors", path, sizeof path);
    fl_error err;
    FL_EXPECTF(fl_safetensors_write(path, NULL, 0, NULL, 0, &err) == 0, "write: %s", err.message);
    fl_safetensors *f = NULL;
    FL_EXPECTF(fl_safetensors_open(path, &f, &err) == 0, "open: %s", err.message);
    if (!f) return;
    FL_EXPECT(fl_safetensors_count(f) == 0);
    FL_EXPECT(fl_safetensors_header_size(f) == 8);
    FL_EXPECT(fl_safetensors_data_size(f) == 0);
    fl_safetensors_close(f);
}

static void test_overwrite_replaces(void) {
    char path[512];
    tmp_path("replace.safetensors", path, sizeof path);
    float a = 1.0f, b[3] = {2, 3, 4};
    int64_t s3[] = {3};
    fl_safetensors_entry e1 = entry("a", FL_ST_F32, 0, NULL, &a), e2 = entry("b", FL_ST_F32, 1, s3, b);
    fl_error err;
    FL_EXPECT(fl_safetensors_write(path, &e1, 1, NULL, 0, &err) == 0);
    FL_EXPECT(fl_safetensors_write(path, &e2, 1, NULL, 0, &err) == 0);
    fl_safetensors *f = NULL;
    FL_EXPECT(fl_safetensors_open(path, &f, &err) == 0);
    if (!f) return;
    FL_EXPECT(fl_safetensors_count(f) == 1 && fl_safetensors_find(f, "b") && !fl_safetensors_find(f, "a"));
    fl_safetensors_close(f);
}

static void test_lookup(void) {
    uint8_t *buf;
    fl_safetensors *f = open_json("{\"layer.1\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                                  "\"layer\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                                  "\"layer.10\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
                                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4]}}",
                                  4, &buf);
    if (!f) {
        free(buf);
        return;
    }
    const char *names[] = {"layer.1", "layer", "layer.10", "a"};
    for (size_t i = 0; i < 4; i++) {
        const fl_safetensors_info *t = fl_safetensors_find(f, names[i]);
        FL_EXPECTF(t == fl_safetensors_at(f, i), "find('%s') is not tensor %zu", names[i], i);
        FL_EXPECT(t && t->begin == i && t->data == buf + 8 + fl_safetensors_header_size(f) + i);
    }
    FL_EXPECT(fl_safetensors_find(f, "layer.2") == NULL);
    FL_EXPECT(fl_safetensors_find(f, "") == NULL);
    FL_EXPECT(fl_safetensors_find(f, "__metadata__") == NULL);
    fl_safetensors_close(f);
    free(buf);
}

static void test_tensor_view(void) {
    float w[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[4] = {0x3f80, 0x4000, 0x4040, 0x4080};
    int32_t ints[2] = {1, 2};
    float seven[1] = {1};
    int64_t s23[] = {2, 3}, s4[] = {4}, s2[] = {2}, s7[] = {1, 1, 1, 1, 1, 1, 1};
    fl_safetensors_entry es[] = {entry("w", FL_ST_F32, 2, s23, w), entry("h", FL_ST_BF16, 1, s4, h),
                                 entry("i", FL_ST_I32, 1, s2, ints), entry("seven", FL_ST_F32, 7, s7, seven)};
    char path[512];
    tmp_path("view.safetensors", path, sizeof path);
    fl_error err;
    FL_EXPECT(fl_safetensors_write(path, es, 4, NULL, 0, &err) == 0);
    fl_safetensors *f = NULL;
    if (fl_safetensors_open(path, &f, &err)) {
        fl_test_fail_at(__FILE__, __LINE__, "open: %s", err.message);
        return;
    }
    fl_tensor t;
    FL_EXPECTF(fl_safetensors_tensor_view(f, fl_safetensors_find(f, "w"), fl_device_cpu(), &t, &err) == 0, "%s",
               err.message);
    FL_EXPECT(t.dtype == FL_F32 && t.ndim == 2 && t.shape[0] == 2 && t.shape[1] == 3 && t.stride[0] == 3);
    FL_EXPECT(fl_tensor_is_contiguous(&t));
    FL_EXPECT_CLOSE("view", (const float *)t.data, w, 6, 0, 0);
    FL_EXPECT(fl_safetensors_tensor_view(f, fl_safetensors_find(f, "h"), fl_device_cpu(), &t, &err) == 0);
    FL_EXPECT(t.dtype == FL_BF16 && t.ndim == 1 && t.shape[0] == 4);
    FL_EXPECT(fl_bf16_to_f32(((const uint16_t *)t.data)[1]) == 2.0f);

    FL_EXPECT(fl_safetensors_tensor_view(f, fl_safetensors_find(f, "i"), fl_device_cpu(), &t, &err) == -1);
    FL_EXPECT(err.code == FL_EUNSUPPORTED && strstr(err.message, "dtype I32 is not computable"));
    FL_EXPECT(fl_safetensors_tensor_view(f, fl_safetensors_find(f, "seven"), fl_device_cpu(), &t, &err) == -1);
    FL_EXPECT(err.code == FL_EUNSUPPORTED && strstr(err.message, "7 dimensions"));
    fl_device gpu = {FL_DEVICE_CUDA, 0};
    FL_EXPECT(fl_safetensors_tensor_view(f, fl_safetensors_find(f, "w"), gpu, &t, &err) == -1);
    FL_EXPECT(err.code == FL_EUNSUPPORTED && strstr(err.message, "host memory"));
    fl_safetensors_close(f);

    /* A file packed by another writer: F32 data at an odd offset cannot be viewed in place. */
    uint8_t *buf;
    f = open_json("{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                  "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}      ",
                  6, &buf);
    if (f) {
        FL_EXPECTF(((uintptr_t)(buf + 8 + fl_safetensors_header_size(f)) % 4) == 0, "test header not padded");
        FL_EXPECT(fl_safetensors_tensor_view(f, fl_safetensors_find(f, "w"), fl_device_cpu(), &t, &err) == -1);
        FL_EXPECTF(err.code == FL_EUNSUPPORTED && strstr(err.message, "not aligned"), "%s", err.message);
        fl_safetensors_close(f);
    }
    free(buf);
}

static void test_entry_from_tensor(void) {
    float data[12];
    for (int i = 0; i < 12; i++) data[i] = (float)i;
    fl_tensor t = fl_tensor_f32_3d(data, 2, 3, 2);
    fl_safetensors_entry e = fl_safetensors_entry_from_tensor("x", &t);
    FL_EXPECT(e.dtype == FL_ST_F32 && e.ndim == 3 && e.shape[0] == 2 && e.shape[2] == 2 && e.data == data);
    char path[512];
    tmp_path("from_tensor.safetensors", path, sizeof path);
    fl_error err;
    FL_EXPECT(fl_safetensors_write(path, &e, 1, NULL, 0, &err) == 0);
    fl_safetensors *f = NULL;
    FL_EXPECT(fl_safetensors_open(path, &f, &err) == 0);
    if (!f) return;
    fl_tensor v;
    FL_EXPECT(fl_safetensors_tensor_view(f, fl_safetensors_at(f, 0), fl_device_cpu(), &v, &err) == 0);
    FL_EXPECT(fl_tensor_same_shape(&v, &t));
    FL_EXPECT_CLOSE("from tensor", (const float *)v.data, data, 12, 0, 0);
    fl_safetensors_close(f);
}

static void test_write_rejects_bad_arguments(void) {
    char path[512];
    tmp_path("rejected.safetensors", path, sizeof path);
    float x[2] = {1, 2};
    int64_t s2[] = {2}, sneg[] = {-1}, sbig[] = {INT64_MAX / 2, 4};
    char long_name[FL_SAFETENSORS_MAX_NAME + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    struct {
        fl_safetensors_entry e[2];
        size_t n;
        fl_safetensors_kv kv[2];
        size_t nkv;
        const char *fragment;
    } cases[] = {
        {{entry("", FL_ST_F32, 1, s2, x)}, 1, {{0}}, 0, "empty name"},
        {{entry(long_name, FL_ST_F32, 1, s2, x)}, 1, {{0}}, 0, "longer than the limit of 1024"},
        {{entry("a", FL_ST_F32, 1, s2, x), entry("a", FL_ST_F32, 1, s2, x)}, 2, {{0}}, 0, "'a': name appears twice"},
        {{entry("__metadata__", FL_ST_F32, 1, s2, x)}, 1, {{0}}, 0, "reserved"},
        {{entry("a", FL_ST_F32, 1, sneg, x)}, 1, {{0}}, 0, "shape[0] is -1"},
        {{entry("a", FL_ST_F32, 2, sbig, x)}, 1, {{0}}, 0, "overflows a 64-bit byte count"},
        {{entry("a", FL_ST_F32, 1, s2, NULL)}, 1, {{0}}, 0, "no data for 8 bytes"},
        {{entry("a\xff", FL_ST_F32, 1, s2, x)}, 1, {{0}}, 0, "not valid UTF-8"},
        {{entry("a", FL_ST_F32, 1, s2, x)}, 1, {{"k", "1"}, {"k", "2"}}, 2, "'k': key appears twice"},
        {{entry("a", FL_ST_F32, 1, s2, x)}, 1, {{"k", "\xc3"}}, 1, "not valid UTF-8"},
        {{entry("a", FL_ST_F32, 1, s2, x)}, 1, {{"k", NULL}}, 1, "has no value"},
    };
    fl_safetensors_entry too_many = entry("a", FL_ST_F32, 0, NULL, x);
    too_many.ndim = FL_SAFETENSORS_MAX_DIMS + 1;
    fl_error err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fl_error_clear(&err);
        int rc = fl_safetensors_write(path, cases[i].e, cases[i].n, cases[i].kv, cases[i].nkv, &err);
        FL_EXPECTF(rc == -1 && err.code == FL_EINVAL && strstr(err.message, cases[i].fragment),
                   "case %zu: rc %d, '%s' (want '%s')", i, rc, err.message, cases[i].fragment);
        FL_EXPECTF(access(path, F_OK) != 0, "case %zu left a file", i);
    }
    FL_EXPECT(fl_safetensors_write(path, &too_many, 1, NULL, 0, &err) == -1 && strstr(err.message, "9 dimensions"));
    FL_EXPECT(access(path, F_OK) != 0);
    FL_EXPECT(!dir_has_tmp_files());
}

static void test_write_failure_leaves_nothing(void) {
    float x = 1;
    fl_safetensors_entry e = entry("x", FL_ST_F32, 0, NULL, &x);
    fl_error err;
    char path[512];

    /* Directory missing: nothing can be created. */
    tmp_path("missing/dir/out.safetensors", path, sizeof path);
    FL_EXPECT(fl_safetensors_write(path, &e, 1, NULL, 0, &err) == -1);
    FL_EXPECTF(err.code == FL_EIO && strstr(err.message, "cannot create"), "%s", err.message);

    /* path is a directory: the rename fails and the temporary file is removed. */
    tmp_path("a_directory", path, sizeof path);
    FL_EXPECT(mkdir(path, 0755) == 0);
    FL_EXPECT(fl_safetensors_write(path, &e, 1, NULL, 0, &err) == -1);
    FL_EXPECTF(err.code == FL_EIO && strstr(err.message, "cannot rename"), "%s", err.message);
    struct stat st;
    FL_EXPECT(stat(path, &st) == 0 && S_ISDIR(st.st_mode));
    FL_EXPECT(!dir_has_tmp_files());
    rmdir(path);

    /* A rejected write leaves an existing file untouched. */
    tmp_path("keep.safetensors", path, sizeof path);
    FL_EXPECT(fl_safetensors_write(path, &e, 1, NULL, 0, &err) == 0);
    fl_safetensors_entry bad = entry("", FL_ST_F32, 0, NULL, &x);
    FL_EXPECT(fl_safetensors_write(path, &bad, 1, NULL, 0, &err) == -1);
    fl_safetensors *f = NULL;
    FL_EXPECT(fl_safetensors_open(path, &f, &err) == 0 && f && fl_safetensors_find(f, "x"));
    fl_safetensors_close(f);
}

static void test_open_errors(void) {
    fl_error err;
    fl_safetensors *f = NULL;
    char path[512];
    FL_EXPECT(fl_safetensors_open(tmp_path("does-not-exist.safetensors", path, sizeof path), &f, &err) == -1);
    FL_EXPECTF(err.code == FL_EIO && strstr(err.message, "cannot open: No such file"), "%s", err.message);
    FL_EXPECT(f == NULL);
    FL_EXPECT(fl_safetensors_open(tmp_dir, &f, &err) == -1);
    FL_EXPECTF(err.code == FL_EIO && strstr(err.message, "not a regular file"), "%s", err.message);

    /* Short files go through the same checks as buffers. */
    tmp_path("short.safetensors", path, sizeof path);
    FILE *fp = fopen(path, "wb");
    FL_EXPECT(fp && fwrite("\x01\x02\x03", 1, 3, fp) == 3);
    if (fp) fclose(fp);
    FL_EXPECT(fl_safetensors_open(path, &f, &err) == -1);
    FL_EXPECTF(strstr(err.message, "file is 3 bytes"), "%s", err.message);
}

static void test_memory_is_not_copied(void) {
    uint8_t *buf;
    fl_safetensors *f = open_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}      ", 8, &buf);
    if (f) {
        const fl_safetensors_info *t = fl_safetensors_at(f, 0);
        FL_EXPECT((const uint8_t *)t->data == buf + 8 + fl_safetensors_header_size(f));
        fl_safetensors_close(f);
    }
    free(buf);
}

static void test_accepts_gaps_and_empty_ranges(void) {
    uint8_t *buf;
    /* A gap [4, 8), trailing bytes after the last tensor, and a zero-byte tensor inside another's range. */
    fl_safetensors *f = open_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                                  "\"z\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[12,12]}}",
                                  20, &buf);
    if (f) {
        FL_EXPECT(fl_safetensors_count(f) == 3);
        FL_EXPECT(fl_safetensors_find(f, "z")->nbytes == 0 && fl_safetensors_find(f, "z")->numel == 0);
        fl_safetensors_close(f);
    }
    free(buf);
    /* Header padded with spaces, as writers do. */
    f = open_json("{}      ", 0, &buf);
    fl_safetensors_close(f);
    free(buf);
}

/* ---- one test per rejection rule -------------------------------------------------------------- */

static void test_reject_short_file(void) {
    EXPECT_REJECT((const uint8_t *)"", 0, FL_EINVAL, "file is 0 bytes, shorter than the 8-byte header length");
    EXPECT_REJECT((const uint8_t *)"\x02\0\0\0\0\0\0", 7, FL_EINVAL, "file is 7 bytes");
}

static void test_reject_header_length_zero(void) {
    size_t size;
    uint8_t *buf = frame_n(0, "{}", 2, NULL, 0, &size);
    EXPECT_REJECT(buf, size, FL_EINVAL, "header length is 0");
    free(buf);
}

static void test_reject_header_length_over_limit(void) {
    size_t size;
    uint8_t *buf = frame_n((uint64_t)FL_SAFETENSORS_MAX_HEADER + 1, "{}", 2, NULL, 0, &size);
    EXPECT_REJECT(buf, size, FL_ELIMIT, "header length 104857601 exceeds the limit of 104857600 bytes");
    free(buf);
    buf = frame_n(UINT64_MAX - 1, "{}", 2, NULL, 0, &size);
    EXPECT_REJECT(buf, size, FL_ELIMIT, "exceeds the limit");
    free(buf);
}

static void test_reject_header_length_past_end(void) {
    size_t size;
    uint8_t *buf = frame_n(100, "{}", 2, NULL, 0, &size);
    EXPECT_REJECT(buf, size, FL_EINVAL, "header length 100 exceeds the 2 bytes after the length field");
    free(buf);
}

static void test_reject_invalid_json(void) {
    reject_json("{\"w\": ", 0, "header is not valid JSON (line 1");
    reject_json("{} trailing", 0, "header is not valid JSON");
    reject_json("\"just a string\"", 0, "header is not valid JSON");
}

static void test_reject_top_level_not_object(void) {
    reject_json("[1, 2]", 0, "header is not a JSON object (got an array)");
}

static void test_reject_duplicate_names(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                2, "duplicate object key");
}

static void test_reject_nul_in_name(void) {
    reject_json("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                "header is not valid JSON");
    size_t size;
    static const char raw[] = "{\"a\0b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    uint8_t *buf = frame_n(UINT64_MAX, raw, sizeof raw - 1, "x", 1, &size);
    EXPECT_REJECT(buf, size, FL_EINVAL, "header is not valid JSON");
    free(buf);
}

static void test_reject_invalid_utf8(void) {
    reject_json("{\"\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                "header is not valid JSON");
    /* The raw bytes are escaped in the reason so it stays printable ASCII. */
    size_t size;
    uint8_t *buf = frame("{\"\xff\xfe\":1}", 0, &size);
    fl_error err;
    fl_safetensors *f;
    FL_EXPECT(fl_safetensors_open_memory(buf, size, &f, &err) == -1);
    for (const char *p = err.message; *p; p++) FL_EXPECTF((unsigned char)*p < 0x80, "raw byte in '%s'", err.message);
    free(buf);
}

static void test_reject_deep_nesting(void) {
    enum { depth = 100000 };
    static const char prefix[] = "{\"__metadata__\":";
    size_t o = sizeof prefix - 1;
    char *json = fl_xmalloc(o + 2 * depth + 2);
    memcpy(json, prefix, o);
    for (size_t i = 0; i < depth; i++) {
        json[o + i] = '[';
        json[o + depth + i] = ']';
    }
    memcpy(json + o + 2 * depth, "}", 2);
    reject_json(json, 0, "header is not valid JSON");
    free(json);
}

static void test_reject_empty_name(void) {
    reject_json("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "a tensor has an empty name");
}

static void test_reject_long_name(void) {
    char json[2048];
    char name[FL_SAFETENSORS_MAX_NAME + 2];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    snprintf(json, sizeof json, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", name);
    reject_json(json, 1, "name is 1025 bytes, longer than the limit of 1024");
    /* Exactly at the limit is fine. */
    name[FL_SAFETENSORS_MAX_NAME] = '\0';
    snprintf(json, sizeof json, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", name);
    uint8_t *buf;
    fl_safetensors *f = open_json(json, 1, &buf);
    fl_safetensors_close(f);
    free(buf);
}

static void test_reject_entry_not_object(void) {
    reject_json("{\"w\":[0,1]}", 1, "tensor 'w': expected an object with dtype, shape and data_offsets, got an array");
    reject_json("{\"w\":\"F32\"}", 1, "got a string");
}

static void test_reject_missing_field(void) {
    reject_json("{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor 'w': missing field 'dtype'");
    reject_json("{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "tensor 'w': missing field 'shape'");
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "tensor 'w': missing field 'data_offsets'");
}

static void test_reject_extra_field(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"stride\":[1]}}", 1,
                "tensor 'w': unexpected field 'stride'");
}

static void test_reject_dtype_not_string(void) {
    reject_json("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                "tensor 'w': dtype must be a string, got an integer");
}

static void test_reject_unknown_dtype(void) {
    reject_json("{\"w\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w': unknown dtype 'F31'");
    reject_json("{\"w\":{\"dtype\":\"bf16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2, "unknown dtype 'bf16'");
    reject_json("{\"w\":{\"dtype\":\"\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2, "unknown dtype ''");
}

static void test_reject_shape_not_array(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":{},\"data_offsets\":[0,1]}}", 1,
                "tensor 'w': shape must be an array of non-negative integers, got an object");
}

static void test_reject_shape_negative(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[2,-1],\"data_offsets\":[0,1]}}", 1,
                "tensor 'w': shape[1] is -1; extents must be non-negative integers");
}

static void test_reject_shape_not_integer(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", 1, "shape[0] is a real number");
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1, "shape[0] is a string");
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}", 1,
                "too big integer");
}

static void test_reject_too_many_dims(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
                "tensor 'w': shape has 9 dimensions; at most 8 are supported");
}

static void test_reject_shape_overflow(void) {
    reject_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
                "tensor 'w': shape [4294967296, 4294967296] of F32 overflows a 64-bit byte count");
    /* Elements fit in int64 but bytes do not. */
    reject_json("{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}", 8,
                "overflows a 64-bit byte count");
    /* A zero extent does not excuse the others: strides would still overflow. */
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[0,4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
                "overflows a 64-bit byte count");
}

static void test_reject_offsets_malformed(void) {
    const char *bad[] = {"[0]", "[0,1,2]", "{}", "[\"0\",\"1\"]", "[0,1.5]", "null"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":%s}}", bad[i]);
        reject_json(json, 2, "tensor 'w': data_offsets must be an array of two non-negative integers");
    }
}

static void test_reject_offsets_negative(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
                "tensor 'w': data_offsets [-1, 0] must be non-negative");
}

static void test_reject_offsets_reversed(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,1]}}", 4,
                "tensor 'w': data_offsets [2, 1] end before they begin");
}

static void test_reject_offsets_past_end(void) {
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 3,
                "tensor 'w': data_offsets [0, 4] end past the 3-byte data buffer");
    reject_json("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,9223372036854775807]}}",
                3, "end past the 3-byte data buffer");
}

static void test_reject_byte_count_mismatch(void) {
    reject_json("{\"double_blocks.0.img_attn.qkv.weight\":{\"dtype\":\"BF16\",\"shape\":[9216,3072],"
                "\"data_offsets\":[0,100]}}",
                100,
                "tensor 'double_blocks.0.img_attn.qkv.weight': data_offsets [0, 100] hold 100 bytes but shape "
                "[9216, 3072] of BF16 needs 56623104");
    reject_json("{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", 4,
                "data_offsets [0, 0] hold 0 bytes but shape [] of F32 needs 4");
}

static void test_reject_overlap(void) {
    reject_json("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
                6, "tensors 'a' [0, 4] and 'b' [2, 6] overlap");
    /* Same range twice, listed in reverse offset order. */
    reject_json("{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
                "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
                "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
                6, "overlap");
    /* One tensor inside a big one, not adjacent to it after sorting. */
    reject_json("{\"big\":{\"dtype\":\"U8\",\"shape\":[10],\"data_offsets\":[0,10]},"
                "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
                "\"y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[8,9]}}",
                10, "tensors 'big' [0, 10] and 'x' [2, 3] overlap");
}

static void test_reject_metadata_not_object(void) {
    reject_json("{\"__metadata__\":\"pt\"}", 0, "__metadata__ must be an object of strings, got a string");
}

static void test_reject_metadata_non_string(void) {
    reject_json("{\"__metadata__\":{\"ok\":\"yes\",\"rank\":16}}", 0,
                "__metadata__ 'rank': value must be a string, got an integer");
    reject_json("{\"__metadata__\":{\"n\":null}}", 0, "__metadata__ 'n': value must be a string, got null");
}

static void test_reason_is_one_line(void) {
    /* A name with control characters is escaped in the message. */
    reject_json("{\"a\\nb\\u001b\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                "tensor 'a\\x0ab\\x1b': unknown dtype 'X'");
    /* A very long name is shortened in the message. */
    char json[2048], name[1001];
    memset(name, 'y', 1000);
    name[1000] = '\0';
    snprintf(json, sizeof json, "{\"%s\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,1]}}", name);
    reject_json(json, 1, "yyy...': unknown dtype 'X'");
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/fl_safetensors_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        printf("cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    FL_RUN(test_roundtrip_dtypes);
    FL_RUN(test_roundtrip_metadata);
    FL_RUN(test_write_empty);
    FL_RUN(test_overwrite_replaces);
    FL_RUN(test_lookup);
    FL_RUN(test_tensor_view);
    FL_RUN(test_entry_from_tensor);
    FL_RUN(test_write_rejects_bad_arguments);
    FL_RUN(test_write_failure_leaves_nothing);
    FL_RUN(test_open_errors);
    FL_RUN(test_memory_is_not_copied);
    FL_RUN(test_accepts_gaps_and_empty_ranges);
    FL_RUN(test_reject_short_file);
    FL_RUN(test_reject_header_length_zero);
    FL_RUN(test_reject_header_length_over_limit);
    FL_RUN(test_reject_header_length_past_end);
    FL_RUN(test_reject_invalid_json);
    FL_RUN(test_reject_top_level_not_object);
    FL_RUN(test_reject_duplicate_names);
    FL_RUN(test_reject_nul_in_name);
    FL_RUN(test_reject_invalid_utf8);
    FL_RUN(test_reject_deep_nesting);
    FL_RUN(test_reject_empty_name);
    FL_RUN(test_reject_long_name);
    FL_RUN(test_reject_entry_not_object);
    FL_RUN(test_reject_missing_field);
    FL_RUN(test_reject_extra_field);
    FL_RUN(test_reject_dtype_not_string);
    FL_RUN(test_reject_unknown_dtype);
    FL_RUN(test_reject_shape_not_array);
    FL_RUN(test_reject_shape_negative);
    FL_RUN(test_reject_shape_not_integer);
    FL_RUN(test_reject_too_many_dims);
    FL_RUN(test_reject_shape_overflow);
    FL_RUN(test_reject_offsets_malformed);
    FL_RUN(test_reject_offsets_negative);
    FL_RUN(test_reject_offsets_reversed);
    FL_RUN(test_reject_offsets_past_end);
    FL_RUN(test_reject_byte_count_mismatch);
    FL_RUN(test_reject_overlap);
    FL_RUN(test_reject_metadata_not_object);
    FL_RUN(test_reject_metadata_non_string);
    FL_RUN(test_reason_is_one_line);

    /* Remove what the tests wrote (flat directory). */
    DIR *d = opendir(tmp_dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[512];
        unlink(tmp_path(e->d_name, path, sizeof path));
    }
    if (d) closedir(d);
    rmdir(tmp_dir);
    return fl_test_finish();
}
