/*
 * test_core.c — unit tests of the core runtime: tensor views and matrix views, 16-bit float
 * conversions, the planning arena, device names, errors, the RNG and thread settings.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/device.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "core/sha256.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "harness.h"

static void test_tensor_make_and_strides(void) {
    int64_t shape[3] = {2, 3, 4};
    fl_tensor t = fl_tensor_make(NULL, FL_F32, fl_device_cpu(), 3, shape);
    FL_EXPECT(t.stride[0] == 12 && t.stride[1] == 4 && t.stride[2] == 1);
    FL_EXPECT(fl_tensor_numel(&t) == 24);
    FL_EXPECT(fl_tensor_nbytes(&t) == 96);
    FL_EXPECT(fl_tensor_is_contiguous(&t));
    char buf[64];
    FL_EXPECT(!strcmp(fl_tensor_shape_str(&t, buf, sizeof buf), "[2, 3, 4]"));

    fl_tensor scalar = fl_tensor_make(NULL, FL_BF16, fl_device_cpu(), 0, NULL);
    FL_EXPECT(fl_tensor_numel(&scalar) == 1 && fl_tensor_nbytes(&scalar) == 2);

    int64_t empty_shape[2] = {0, 5};
    fl_tensor empty = fl_tensor_make(NULL, FL_F16, fl_device_cpu(), 2, empty_shape);
    FL_EXPECT(fl_tensor_numel(&empty) == 0 && fl_tensor_is_contiguous(&empty));
    int64_t empty_last[2] = {5, 0};
    fl_tensor empty2 = fl_tensor_make(NULL, FL_F32, fl_device_cpu(), 2, empty_last);
    FL_EXPECT(fl_tensor_is_contiguous(&empty2)); /* [5, 0]: nothing out of place */
}

static void test_tensor_slice_permute_reshape(void) {
    float data[24];
    for (int i = 0; i < 24; i++) data[i] = (float)i;
    fl_tensor t = fl_tensor_f32_3d(data, 2, 3, 4);

    fl_tensor s = fl_tensor_slice(&t, 2, 1, 2); /* columns 1..2 */
    FL_EXPECT(s.shape[2] == 2 && ((float *)s.data)[0] == 1.0f);
    FL_EXPECT(!fl_tensor_is_contiguous(&s));

    int perm[3] = {2, 0, 1};
    fl_tensor p = fl_tensor_permute(&t, perm);
    FL_EXPECT(p.shape[0] == 4 && p.shape[1] == 2 && p.shape[2] == 3);
    FL_EXPECT(p.stride[0] == 1 && p.stride[1] == 12 && p.stride[2] == 4);
    /* element p[3, 1, 2] is t[1, 2, 3] = 1*12 + 2*4 + 3 = 23 */
    float *base = p.data;
    FL_EXPECT(base[3 * p.stride[0] + 1 * p.stride[1] + 2 * p.stride[2]] == 23.0f);

    int64_t flat[2] = {6, 4};
    fl_tensor r = fl_tensor_reshape(&t, 2, flat);
    FL_EXPECT(r.shape[0] == 6 && r.stride[0] == 4);
}

static void test_tensor_matrix_views(void) {
    float data[2 * 5 * 12];
    fl_tensor t = fl_tensor_f32_3d(data, 2, 5, 12);
    fl_matrix m;
    FL_EXPECT(fl_tensor_matrix(&t, &m) && m.rows == 10 && m.cols == 12 && m.ld == 12);

    /* A column chunk of a modulation output [B, 6D] is a matrix view with ld = 6D. */
    float mod[3 * 24];
    fl_tensor mod_t = fl_tensor_f32_2d(mod, 3, 24);
    fl_tensor chunk = fl_tensor_slice(&mod_t, 1, 8, 4);
    FL_EXPECT(fl_tensor_matrix(&chunk, &m) && m.rows == 3 && m.cols == 4 && m.ld == 24);

    /* A column slice of a 3-d tensor still collapses (uniform row stride). */
    fl_tensor cols = fl_tensor_slice(&t, 2, 4, 8);
    FL_EXPECT(fl_tensor_matrix(&cols, &m) && m.rows == 10 && m.cols == 8 && m.ld == 12);

    /* A slice in a middle dim breaks the uniform row stride. */
    fl_tensor mid = fl_tensor_slice(&t, 1, 0, 3);
    FL_EXPECT(!fl_tensor_matrix(&mid, &m));

    /* A transposed view has no matrix view (last dim not contiguous). */
    int perm[3] = {0, 2, 1};
    fl_tensor tr = fl_tensor_permute(&t, perm);
    FL_EXPECT(!fl_tensor_matrix(&tr, &m));
}

static void test_bf16_f16_conversions(void) {
    /* Exactly representable values survive. */
    const float exact[] = {0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 65504.0f, 6.103515625e-05f};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        if (exact[i] != 65504.0f) /* needs 10 mantissa bits; bf16 has 7 */
            FL_EXPECTF(fl_bf16_to_f32(fl_f32_to_bf16(exact[i])) == exact[i], "bf16 round trip of %g",
                       (double)exact[i]);
        FL_EXPECTF(fl_f16_to_f32(fl_f32_to_f16(exact[i])) == exact[i], "f16 round trip of %g", (double)exact[i]);
    }
    /* bf16: round to nearest even on the 16 dropped bits. */
    FL_EXPECT(fl_f32_to_bf16(1.0f) == 0x3f80);
    FL_EXPECT(fl_f32_to_bf16(1.00390625f) == 0x3f80);  /* halfway (1 + 2^-8) → even (down) */
    FL_EXPECT(fl_f32_to_bf16(1.01171875f) == 0x3f82);  /* halfway (1 + 3*2^-8) → even (up) */
    FL_EXPECT(isnan(fl_bf16_to_f32(fl_f32_to_bf16(NAN))));
    FL_EXPECT(isinf(fl_bf16_to_f32(fl_f32_to_bf16(INFINITY))));
    /* f16: overflow to inf, subnormals, NaN. */
    FL_EXPECT(isinf(fl_f16_to_f32(fl_f32_to_f16(70000.0f))));
    FL_EXPECT(fl_f16_to_f32(fl_f32_to_f16(5.9604645e-08f)) == 5.9604645e-08f); /* smallest subnormal */
    FL_EXPECT(fl_f16_to_f32(fl_f32_to_f16(1e-9f)) == 0.0f);
    FL_EXPECT(isnan(fl_f16_to_f32(fl_f32_to_f16(NAN))));
    /* Relative error bounds over a sweep: bf16 2^-9, f16 2^-11 in the normal range. */
    fl_rng rng;
    fl_rng_seed(&rng, 7);
    for (int i = 0; i < 10000; i++) {
        float x = fl_rng_normal(&rng) * 100.0f;
        float b = fl_bf16_to_f32(fl_f32_to_bf16(x));
        float h = fl_f16_to_f32(fl_f32_to_f16(x));
        if (fabsf(x) > 1e-3f) {
            FL_EXPECTF(fabsf(b - x) <= fabsf(x) * 0.00391f, "bf16 of %g gave %g", (double)x, (double)b);
            FL_EXPECTF(fabsf(h - x) <= fabsf(x) * 0.000489f, "f16 of %g gave %g", (double)x, (double)h);
        }
    }
}

static void test_dtype_names(void) {
    fl_dtype d;
    FL_EXPECT(fl_dtype_from_name("BF16", &d) == 0 && d == FL_BF16);
    FL_EXPECT(fl_dtype_from_name("F16", &d) == 0 && d == FL_F16);
    FL_EXPECT(fl_dtype_from_name("F32", &d) == 0 && d == FL_F32);
    FL_EXPECT(fl_dtype_from_name("I64", &d) == -1);
    FL_EXPECT(!strcmp(fl_dtype_name(FL_BF16), "BF16"));
}

static void test_arena_plan_then_run(void) {
    fl_arena plan;
    fl_arena_init_measure(&plan, fl_device_cpu());
    FL_EXPECT(fl_arena_is_measuring(&plan));
    int64_t shape[2] = {3, 5};
    fl_tensor a = fl_arena_tensor(&plan, FL_F32, 2, shape);
    size_t mark = fl_arena_mark(&plan);
    void *scratch = fl_arena_alloc(&plan, 1000);
    FL_EXPECT(a.data != NULL && scratch != NULL);
    fl_arena_reset(&plan, mark);
    void *b = fl_arena_alloc(&plan, 10);
    FL_EXPECT(b == scratch); /* reset reuses the space */
    size_t peak = fl_arena_peak(&plan);
    FL_EXPECT(peak >= 60 + 1000 && peak <= 60 + 1000 + 2 * FL_ARENA_ALIGN);

    void *memory = aligned_alloc(FL_ARENA_ALIGN, (peak + FL_ARENA_ALIGN - 1) / FL_ARENA_ALIGN * FL_ARENA_ALIGN);
    fl_arena run;
    fl_arena_init(&run, memory, peak, fl_device_cpu());
    FL_EXPECT(!fl_arena_is_measuring(&run));
    fl_tensor ra = fl_arena_tensor(&run, FL_F32, 2, shape);
    size_t run_mark = fl_arena_mark(&run);
    void *rs = fl_arena_alloc(&run, 1000);
    FL_EXPECT(((uintptr_t)ra.data % FL_ARENA_ALIGN) == 0 && ((uintptr_t)rs % FL_ARENA_ALIGN) == 0);
    /* The same sequence lands at the same offsets as planned. */
    FL_EXPECT((char *)rs - (char *)ra.data == (char *)scratch - (char *)a.data);
    fl_arena_reset(&run, run_mark);
    FL_EXPECT(fl_arena_alloc(&run, 1000) == rs);
    free(memory);
}

static void test_device_parse(void) {
    fl_error err = {0};
    fl_device d;
    FL_EXPECT(fl_device_parse("cpu", &d, &err) == 0 && d.kind == FL_DEVICE_CPU);
    FL_EXPECT(fl_device_parse("auto", &d, &err) == 0);
    FL_EXPECT(d.kind == (fl_cuda_device_count() > 0 ? FL_DEVICE_CUDA : FL_DEVICE_CPU));
    FL_EXPECT(fl_device_parse("tpu", &d, &err) == -1 && err.code == FL_EINVAL);
    FL_EXPECT(strstr(err.message, "unknown device 'tpu'") != NULL);
    FL_EXPECT(fl_device_parse("cuda:x", &d, &err) == -1 && err.code == FL_EINVAL);
    FL_EXPECT(fl_device_parse("cuda:-1", &d, &err) == -1);
    int rc = fl_device_parse("cuda:0", &d, &err);
    if (fl_cuda_device_count() > 0) FL_EXPECT(rc == 0 && d.kind == FL_DEVICE_CUDA);
    else FL_EXPECT(rc == -1 && (err.code == FL_EUNSUPPORTED || err.code == FL_ENOTFOUND));
    char buf[32];
    fl_device g = {FL_DEVICE_CUDA, 3};
    FL_EXPECT(!strcmp(fl_device_str(g, buf, sizeof buf), "cuda:3"));
}

static void test_errors(void) {
    fl_error err = {0};
    FL_EXPECT(fl_fail(&err, FL_ELIMIT, "too many images: %d > %d", 40, 30) == -1);
    FL_EXPECT(err.code == FL_ELIMIT && !strcmp(err.message, "too many images: 40 > 30"));
    fl_fail_prefix(&err, "upload %s", "set.zip");
    FL_EXPECT(!strcmp(err.message, "upload set.zip: too many images: 40 > 30"));
    FL_EXPECT(!strcmp(fl_error_code_name(FL_ELIMIT), "limit_exceeded"));
    FL_EXPECT(fl_fail(NULL, FL_EINVAL, "ignored") == -1);
    fl_error_clear(&err);
    FL_EXPECT(err.code == FL_OK && err.message[0] == '\0');
}

static void test_fileio(void) {
    char dir[] = "/tmp/fl-fileio-XXXXXX", path[600], nested[512];
    FL_EXPECT(mkdtemp(dir) != NULL);
    snprintf(nested, sizeof nested, "%s/a/b/c", dir);
    fl_error err = {0};
    FL_EXPECT(fl_mkdirs(nested, &err) == 0 && fl_mkdirs(nested, &err) == 0);
    snprintf(path, sizeof path, "%s/file.bin", nested);
    FL_EXPECT(fl_write_file_atomic(path, "hello", 5, &err) == 0);
    FL_EXPECT(fl_write_file_atomic(path, "bye", 3, &err) == 0); /* replaces */
    unsigned char *data = NULL;
    size_t size = 0;
    FL_EXPECT(fl_read_file(path, 100, &data, &size, &err) == 0 && size == 3 && !memcmp(data, "bye", 4));
    free(data);
    FL_EXPECT(fl_read_file(path, 2, &data, &size, &err) != 0 && err.code == FL_ELIMIT && !data);
    FL_EXPECT(fl_mkdirs(path, &err) != 0); /* a file is in the way */
    snprintf(nested, sizeof nested, "%s/missing", dir);
    FL_EXPECT(fl_read_file(nested, 100, &data, &size, &err) != 0 && err.code == FL_ENOTFOUND);
    unlink(path);
    const char *levels[] = {"a/b/c", "a/b", "a"};
    for (int i = 0; i < 3; i++) {
        snprintf(nested, sizeof nested, "%s/%s", dir, levels[i]);
        rmdir(nested);
    }
    FL_EXPECT(rmdir(dir) == 0);
}

static void test_random_id(void) {
    char a[64], b[64], small[8];
    fl_random_id("job_", 12, a, sizeof a);
    fl_random_id("job_", 12, b, sizeof b);
    FL_EXPECT(strlen(a) == 4 + 24 && !strncmp(a, "job_", 4));
    FL_EXPECT(strspn(a + 4, "0123456789abcdef") == 24);
    FL_EXPECT(strcmp(a, b) != 0);
    fl_random_id("ad_", 12, small, sizeof small); /* truncated, still terminated */
    FL_EXPECT(strlen(small) < sizeof small && !strncmp(small, "ad_", 3));
}

static void test_rng(void) {
    fl_rng a, b;
    fl_rng_seed(&a, 42);
    fl_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) FL_EXPECT(fl_rng_next(&a) == fl_rng_next(&b));
    fl_rng_seed(&a, 1);
    double sum = 0, sum2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = fl_rng_normal(&a);
        sum += x;
        sum2 += x * x;
    }
    double mean = sum / n, var = sum2 / n - mean * mean;
    FL_EXPECTF(fabs(mean) < 0.01 && fabs(var - 1.0) < 0.02, "normal mean %g var %g", mean, var);
    for (int i = 0; i < 1000; i++) {
        float u = fl_rng_uniform(&a);
        FL_EXPECT(u >= 0.0f && u < 1.0f);
    }
}

static void test_threads(void) {
    fl_threads_set(1);
    FL_EXPECT(fl_threads_get() == 1);
    fl_threads_set(2);
    FL_EXPECT(fl_threads_get() == 2);
}

/* FIPS 180-4 / NIST test vectors, and streaming in odd pieces equals one shot. */
static void test_sha256(void) {
    char hex[65];
    fl_sha256_hex("", 0, hex);
    FL_EXPECT(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    fl_sha256_hex("abc", 3, hex);
    FL_EXPECT(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    fl_sha256_hex(two, strlen(two), hex);
    FL_EXPECT(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
    char *million = malloc(1000000);
    memset(million, 'a', 1000000);
    fl_sha256 h;
    uint8_t digest[32];
    fl_sha256_init(&h);
    for (size_t off = 0; off < 1000000;) {
        size_t piece = (off * 7 + 13) % 997 + 1;
        if (piece > 1000000 - off) piece = 1000000 - off;
        fl_sha256_update(&h, million + off, piece);
        off += piece;
    }
    fl_sha256_final(&h, digest);
    fl_sha256_digest_hex(digest, hex);
    FL_EXPECT(!strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
    char path[] = "/tmp/fl_sha256_XXXXXX";
    int fd = mkstemp(path);
    FL_EXPECT(fd >= 0 && write(fd, million, 1000000) == 1000000);
    close(fd);
    fl_error err = {0};
    char file_hex[65];
    FL_EXPECT(fl_sha256_file(path, file_hex, &err) == 0 && !strcmp(file_hex, hex));
    unlink(path);
    FL_EXPECT(fl_sha256_file("/nonexistent/file", file_hex, &err) == -1 && err.code == FL_EIO);
    free(million);
}

int main(void) {
    FL_RUN(test_tensor_make_and_strides);
    FL_RUN(test_tensor_slice_permute_reshape);
    FL_RUN(test_tensor_matrix_views);
    FL_RUN(test_bf16_f16_conversions);
    FL_RUN(test_dtype_names);
    FL_RUN(test_arena_plan_then_run);
    FL_RUN(test_device_parse);
    FL_RUN(test_errors);
    FL_RUN(test_rng);
    FL_RUN(test_random_id);
    FL_RUN(test_fileio);
    FL_RUN(test_threads);
    FL_RUN(test_sha256);
    return fl_test_finish();
}
