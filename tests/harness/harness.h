/*
 * harness.h — the tiny test harness every C test binary uses.
 *
 * A test is a void function; checks inside it record failures and carry on. main() runs tests
 * with FL_RUN(fn) and returns fl_test_finish(), which prints the closing line
 * "N passed, N failed" and returns 0 only when nothing failed. A binary that cannot run where it
 * is (no GPU) calls fl_test_skip_all(reason), which prints why and exits 77 (meson: skipped).
 */
#ifndef FL_TESTS_HARNESS_H
#define FL_TESTS_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void fl_test_run(const char *name, void (*fn)(void));
int fl_test_finish(void);
_Noreturn void fl_test_skip_all(const char *reason);

/* Record a failure of the running test (with file:line and a message). */
void fl_test_fail_at(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Number of failures recorded by the running test so far. */
int fl_test_current_failures(void);

/* Compare arrays element by element with |got - want| <= atol + rtol * |want|; on mismatch,
 * records a failure naming the worst element and returns false. NaN anywhere is a mismatch. */
bool fl_test_close_at(const char *file, int line, const char *what, const float *got, const float *want,
                      size_t n, double atol, double rtol);

/* Deterministic test data. */
float *fl_test_randn(size_t n, uint64_t seed, float stddev); /* malloc'ed; caller frees */
float *fl_test_rand_uniform(size_t n, uint64_t seed, float lo, float hi);
/* A tensor of a safetensors file as a malloc'ed host f32 array (F32/BF16/F16 converted);
 * *numel gets its element count and shape (may be NULL) its extents (up to 8). Returns NULL
 * after recording a test failure when the file or tensor is missing. */
float *fl_test_load_f32(const char *path, const char *name, int64_t *numel, int64_t *shape, int *ndim);

/* Path of a test data file: $FL_TEST_DATA_DIR/relative (set by meson), else relative. */
const char *fl_test_data_path(const char *relative, char *buf, size_t size);

#define FL_RUN(fn) fl_test_run(#fn, fn)
#define FL_EXPECT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) fl_test_fail_at(__FILE__, __LINE__, "expected: %s", #cond);                   \
    } while (0)
#define FL_EXPECTF(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) fl_test_fail_at(__FILE__, __LINE__, __VA_ARGS__);                             \
    } while (0)
#define FL_EXPECT_CLOSE(what, got, want, n, atol, rtol)                                           \
    fl_test_close_at(__FILE__, __LINE__, what, got, want, n, atol, rtol)

#endif
