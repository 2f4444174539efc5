/*
 * test_forward_cli.c — `flashlora forward` end to end on the golden fixtures: the real binary
 * (path in argv[1]) reads the model and inputs, writes `out`, and the result matches the PyTorch
 * reference, without a LoRA and with the kohya-layout LoRA at scale 0.8. Bad inputs answer one
 * line on stderr and exit 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static const char *binary;
static char tmpdir[] = "/tmp/fl_forward_cli_XXXXXX";

static const char *fixture(const char *name, char *buf, size_t size) {
    char rel[128];
    snprintf(rel, sizeof rel, "fixtures/%s", name);
    return fl_test_data_path(rel, buf, size);
}

/* Runs the binary with args (a shell fragment of already-quoted words); returns the exit code
 * and the number of lines it wrote to stderr. */
static int run(const char *args, int *stderr_lines) {
    char cmd[4096], errfile[256];
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", tmpdir);
    snprintf(cmd, sizeof cmd, "'%s' forward %s 2>'%s'", binary, args, errfile);
    int status = system(cmd);
    int lines = 0;
    FILE *f = fopen(errfile, "r");
    if (f) {
        int c;
        while ((c = fgetc(f)) != EOF) lines += c == '\n';
        fclose(f);
    }
    if (stderr_lines) *stderr_lines = lines;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void check_output(const char *config, const char *lora_arg, const char *expected_name) {
    char model[512], inputs[512], expected[512], lora[512], out[512], args[3000];
    char name[64];
    snprintf(name, sizeof name, "flux_%s.model.safetensors", config);
    fixture(name, model, sizeof model);
    snprintf(name, sizeof name, "flux_%s.inputs.safetensors", config);
    fixture(name, inputs, sizeof inputs);
    snprintf(name, sizeof name, "flux_%s.expected.safetensors", config);
    fixture(name, expected, sizeof expected);
    snprintf(out, sizeof out, "%s/out_%s.safetensors", tmpdir, config);
    if (lora_arg) {
        snprintf(name, sizeof name, "flux_%s.%s", config, lora_arg);
        fixture(name, lora, sizeof lora);
        snprintf(args, sizeof args, "--model '%s' --inputs '%s' --out '%s' --lora '%s'", model, inputs, out, lora);
    } else {
        snprintf(args, sizeof args, "--model '%s' --inputs '%s' --out '%s'", model, inputs, out);
    }
    FL_EXPECT(run(args, NULL) == 0);
    int64_t n_got = 0, n_want = 0;
    float *got = fl_test_load_f32(out, "out", &n_got, NULL, NULL);
    float *want = fl_test_load_f32(expected, expected_name, &n_want, NULL, NULL);
    if (got && want && n_got == n_want) {
        double scale = 0;
        for (int64_t i = 0; i < n_want; i++) scale = fmax(scale, fabs(want[i]));
        FL_EXPECT_CLOSE(expected_name, got, want, (size_t)n_want, 1e-4 * scale, 0.0);
    } else {
        FL_EXPECTF(0, "output missing or of the wrong size (%lld vs %lld)", (long long)n_got, (long long)n_want);
    }
    free(got);
    free(want);
}

static void test_forward_plain_a(void) { check_output("a", NULL, "out"); }
static void test_forward_plain_b(void) { check_output("b", NULL, "out"); }
static void test_forward_kohya_lora_a(void) { check_output("a", "lora_kohya.safetensors:0.8", "out_lora"); }
static void test_forward_kohya_lora_b(void) { check_output("b", "lora_kohya.safetensors:0.8", "out_lora"); }
static void test_forward_canonical_lora_a(void) { check_output("a", "lora.safetensors:0.8", "out_lora"); }

static void test_bad_inputs_one_line(void) {
    char model[512], inputs[512], args[2048];
    fixture("flux_a.model.safetensors", model, sizeof model);
    fixture("flux_b.inputs.safetensors", inputs, sizeof inputs); /* no guidance, wrong widths */
    int lines = 0;
    snprintf(args, sizeof args, "--model '%s' --inputs '%s' --out '%s/x.safetensors'", model, inputs, tmpdir);
    FL_EXPECT(run(args, &lines) == 1 && lines == 1);
    snprintf(args, sizeof args, "--model '%s' --inputs '%s' --out '%s/x.safetensors'", inputs, inputs, tmpdir);
    FL_EXPECT(run(args, &lines) == 1 && lines == 1); /* not a model */
    snprintf(args, sizeof args, "--model /nonexistent.safetensors --inputs '%s' --out '%s/x.safetensors'", inputs,
             tmpdir);
    FL_EXPECT(run(args, &lines) == 1 && lines == 1);
    FL_EXPECT(run("--model", &lines) == 2);
    char path[600];
    snprintf(path, sizeof path, "%s/x.safetensors", tmpdir);
    FL_EXPECT(access(path, F_OK) != 0); /* nothing written on failure */
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_forward_cli PATH_TO_FLASHLORA\n");
        return 2;
    }
    binary = argv[1];
    if (!mkdtemp(tmpdir)) return 2;
    FL_RUN(test_forward_plain_a);
    FL_RUN(test_forward_plain_b);
    FL_RUN(test_forward_kohya_lora_a);
    FL_RUN(test_forward_kohya_lora_b);
    FL_RUN(test_forward_canonical_lora_a);
    FL_RUN(test_bad_inputs_one_line);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_finish();
}
