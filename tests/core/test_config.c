/*
 * test_config.c — JSON configuration loading: valid files, and every kind of bad field named
 * in a one-line error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "harness.h"

static json_t *load(const char *text, fl_error *err) {
    return fl_config_load_string(text, strlen(text), err);
}

static void test_valid_config(void) {
    fl_error err = {0};
    json_t *c = load("{\"hidden_size\": 64, \"mlp_ratio\": 4.0, \"qkv_bias\": true, \"name\": \"tiny\","
                     " \"axes_dim\": [4, 6, 6]}", &err);
    FL_EXPECTF(c != NULL, "load failed: %s", err.message);
    if (!c) return;
    int64_t hidden = 0, axes[4];
    double ratio = 0;
    bool bias = false;
    const char *name = NULL;
    size_t n_axes = 0;
    FL_EXPECT(fl_config_get_int(c, "hidden_size", true, 1, 65536, &hidden, &err) == 0 && hidden == 64);
    FL_EXPECT(fl_config_get_double(c, "mlp_ratio", true, 0.5, 16, &ratio, &err) == 0 && ratio == 4.0);
    FL_EXPECT(fl_config_get_bool(c, "qkv_bias", true, &bias, &err) == 0 && bias);
    FL_EXPECT(fl_config_get_string(c, "name", true, &name, &err) == 0 && !strcmp(name, "tiny"));
    FL_EXPECT(fl_config_get_int_array(c, "axes_dim", true, 2, 512, axes, 4, &n_axes, &err) == 0 && n_axes == 3 &&
              axes[0] == 4 && axes[2] == 6);
    /* An optional absent field leaves the default. */
    int64_t depth = 7;
    FL_EXPECT(fl_config_get_int(c, "depth", false, 0, 100, &depth, &err) == 0 && depth == 7);
    /* An integer is accepted where a number is expected. */
    FL_EXPECT(fl_config_get_double(c, "hidden_size", true, 0, 1e9, &ratio, &err) == 0 && ratio == 64.0);
    json_decref(c);
}

static void expect_error(const json_t *c, int rc, fl_error *err, const char *fragment) {
    (void)c;
    FL_EXPECTF(rc == -1, "expected failure containing '%s'", fragment);
    FL_EXPECTF(strstr(err->message, fragment) != NULL, "message '%s' lacks '%s'", err->message, fragment);
}

static void test_bad_fields(void) {
    fl_error err = {0};
    json_t *c = load("{\"a\": \"x\", \"b\": 5, \"c\": [1, \"two\"], \"d\": 1.5, \"e\": [1,2,3,4,5]}", &err);
    FL_EXPECT(c != NULL);
    if (!c) return;
    int64_t i;
    double d;
    bool b;
    const char *s;
    int64_t arr[4];
    size_t n;
    expect_error(c, fl_config_get_int(c, "a", true, 0, 10, &i, &err), &err, "field 'a': expected an integer, got a string");
    expect_error(c, fl_config_get_int(c, "b", true, 0, 4, &i, &err), &err, "field 'b': 5 is outside [0, 4]");
    expect_error(c, fl_config_get_int(c, "missing", true, 0, 4, &i, &err), &err, "field 'missing': missing");
    expect_error(c, fl_config_get_int(c, "d", true, 0, 4, &i, &err), &err, "expected an integer, got a number");
    expect_error(c, fl_config_get_double(c, "a", true, 0, 4, &d, &err), &err, "expected a number, got a string");
    expect_error(c, fl_config_get_bool(c, "b", true, &b, &err), &err, "expected a boolean, got an integer");
    expect_error(c, fl_config_get_string(c, "b", true, &s, &err), &err, "expected a string, got an integer");
    expect_error(c, fl_config_get_int_array(c, "c", true, 0, 9, arr, 4, &n, &err), &err,
                 "field 'c[1]': expected an integer, got a string");
    expect_error(c, fl_config_get_int_array(c, "e", true, 0, 9, arr, 4, &n, &err), &err,
                 "5 entries, at most 4 allowed");
    json_decref(c);
}

static void test_bad_documents(void) {
    fl_error err = {0};
    FL_EXPECT(load("{\"a\": 1,}", &err) == NULL);
    FL_EXPECTF(strstr(err.message, "invalid JSON at line 1") != NULL, "got '%s'", err.message);
    FL_EXPECT(load("[1, 2]", &err) == NULL);
    FL_EXPECT(strstr(err.message, "expected a JSON object") != NULL);
    FL_EXPECT(load("{\"a\": 1, \"a\": 2}", &err) == NULL);
    FL_EXPECT(strstr(err.message, "duplicate") != NULL);
    FL_EXPECT(load("", &err) == NULL);
}

static void test_files(void) {
    fl_error err = {0};
    char path[] = "/tmp/fl_test_config_XXXXXX";
    int fd = mkstemp(path);
    FL_EXPECT(fd >= 0);
    if (fd < 0) return;
    const char *text = "{\n  \"depth\": 2\n}\n";
    FL_EXPECT(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    json_t *c = fl_config_load_file(path, &err);
    FL_EXPECTF(c != NULL, "%s", err.message);
    json_decref(c);

    FILE *f = fopen(path, "w");
    fputs("{\n  \"depth\": \n}", f);
    fclose(f);
    FL_EXPECT(fl_config_load_file(path, &err) == NULL);
    FL_EXPECTF(strstr(err.message, "line 3") != NULL && strstr(err.message, "fl_test_config_") != NULL,
               "got '%s'", err.message);
    unlink(path);

    FL_EXPECT(fl_config_load_file("/nonexistent/dir/model.json", &err) == NULL);
    FL_EXPECT(err.code == FL_EIO && strstr(err.message, "cannot open") != NULL);
}

int main(void) {
    FL_RUN(test_valid_config);
    FL_RUN(test_bad_fields);
    FL_RUN(test_bad_documents);
    FL_RUN(test_files);
    return fl_test_finish();
}
