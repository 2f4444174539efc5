/*
 * test_pipeline_cli.c — `flashlora generate` on the tiny FLUX.1 pipelines against diffusers'
 * FluxPipeline (tests/fixtures/pipeline, made by tests/reference/make_pipeline_fixtures.py):
 *
 *   flashlora generate --model DIR --prompt P --width 64 --height 48 --steps 3 --seed 0
 *                      --latents NOISE --save-tensors OUT
 *
 * must give diffusers' float image (output_type="pt", mapped back to [-1, 1]) and final latents
 * within 1e-4 of the image's scale, for the dev-like model in the diffusers folder form (sharded
 * transformer and T5, guidance 3.5 by default, shifted schedule, T5 over 512 tokens, packed noise)
 * and the schnell-like model as BFL single files (no guidance, no shift, 256 T5 tokens, planar
 * noise, the text encoders named with --clip and --t5). The autoencoder in the BFL layout gives
 * bitwise the image of the diffusers one. Bad input — a truncated shard, an index missing a
 * tensor, a tokenizer file that is not JSON, a 1 MB prompt, invalid UTF-8, noise of the wrong
 * shape, a size not a multiple of 16 — answers one line on stderr and exit status 1.
 *
 * The binary's path is argv[1].
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "models/pipeline.h"

static const char *binary;
static char tmpdir[] = "/tmp/fl_pipeline_cli_XXXXXX";
static const char prompt[] = "A mug with the sks logo, studio lighting";

static const char *fixture(const char *name, char *buf, size_t size) {
    char rel[256];
    snprintf(rel, sizeof rel, "fixtures/pipeline/%s", name);
    return fl_test_data_path(rel, buf, size);
}

/* Runs `flashlora generate ARGS`; returns the exit code, the number of stderr lines and (when
 * message is not NULL) the last of them. */
static int run(const char *args, int *lines, char *message, size_t size) {
    char cmd[8192], errfile[256];
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", tmpdir);
    snprintf(cmd, sizeof cmd, "'%s' generate %s >/dev/null 2>'%s'", binary, args, errfile);
    int status = system(cmd);
    int n = 0;
    FILE *f = fopen(errfile, "r");
    char line[2048] = "";
    if (f) {
        char buf[2048];
        while (fgets(buf, sizeof buf, f)) {
            n++;
            snprintf(line, sizeof line, "%s", buf);
        }
        fclose(f);
    }
    if (lines) *lines = n;
    if (message) snprintf(message, size, "%s", line);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Compares OUT's tensor with the expected file's, within tol times the largest reference value. */
static void compare(const char *out, const char *expected, const char *name, double tol) {
    int64_t n_got = 0, n_want = 0;
    float *got = fl_test_load_f32(out, name, &n_got, NULL, NULL);
    float *want = fl_test_load_f32(expected, name, &n_want, NULL, NULL);
    if (got && want && n_got == n_want) {
        double scale = 0, worst = 0;
        for (int64_t i = 0; i < n_want; i++) {
            scale = fmax(scale, fabs(want[i]));
            worst = fmax(worst, fabs((double)got[i] - want[i]));
        }
        printf("  %s: max |diff| %.3g, %.3g of the largest value\n", name, worst, worst / scale);
        FL_EXPECT_CLOSE(name, got, want, (size_t)n_want, tol * scale, 0.0);
    } else {
        FL_EXPECTF(0, "%s: missing or of the wrong size (%lld vs %lld)", name, (long long)n_got, (long long)n_want);
    }
    free(got);
    free(want);
}

static void test_dev_diffusers_form(void) {
    char model[512], noise[512], expected[512], out[512], args[4096];
    fixture("dev", model, sizeof model);
    fixture("dev.noise.safetensors", noise, sizeof noise);
    fixture("dev.expected.safetensors", expected, sizeof expected);
    snprintf(out, sizeof out, "%s/dev.safetensors", tmpdir);
    snprintf(args, sizeof args,
             "--model '%s' --prompt '%s' --width 64 --height 48 --steps 3 --seed 0 --latents '%s' --save-tensors '%s'",
             model, prompt, noise, out);
    FL_EXPECT(run(args, NULL, NULL, 0) == 0);
    compare(out, expected, "image", 1e-4);
    compare(out, expected, "latents", 1e-4);
    /* The same model with the autoencoder from the BFL file: bitwise the same image. */
    char ae[512], out2[512];
    fixture("schnell/ae.safetensors", ae, sizeof ae);
    snprintf(out2, sizeof out2, "%s/dev_bfl_ae.safetensors", tmpdir);
    snprintf(args, sizeof args,
             "--model '%s' --ae '%s' --prompt '%s' --width 64 --height 48 --steps 3 --seed 0 --latents '%s' "
             "--save-tensors '%s'", model, ae, prompt, noise, out2);
    FL_EXPECT(run(args, NULL, NULL, 0) == 0);
    compare(out2, out, "image", 0.0);
}

static void test_schnell_bfl_files(void) {
    char model[512], clip[512], t5[512], noise[512], expected[512], out[512], args[4096];
    fixture("schnell", model, sizeof model);
    fixture("dev/text_encoder", clip, sizeof clip);
    fixture("dev/text_encoder_2", t5, sizeof t5);
    fixture("schnell.noise.safetensors", noise, sizeof noise);
    fixture("schnell.expected.safetensors", expected, sizeof expected);
    snprintf(out, sizeof out, "%s/schnell.safetensors", tmpdir);
    snprintf(args, sizeof args,
             "--model '%s' --clip '%s' --t5 '%s' --prompt '%s' --width 64 --height 48 --steps 3 --seed 0 --latents '%s' "
             "--save-tensors '%s'", model, clip, t5, prompt, noise, out);
    FL_EXPECT(run(args, NULL, NULL, 0) == 0);
    compare(out, expected, "image", 1e-4);
    compare(out, expected, "latents", 1e-4);
    /* Without its text encoders the folder is refused, naming what is missing. */
    char msg[2048];
    int lines = 0;
    snprintf(args, sizeof args, "--model '%s' --prompt x --out '%s/x.png'", model, tmpdir);
    FL_EXPECT(run(args, &lines, msg, sizeof msg) == 1 && lines == 1);
    FL_EXPECTF(strstr(msg, "no CLIP-L text encoder"), "got '%s'", msg);
}

/* A copy of the dev folder to break. */
static void copy_dev(const char *name, char *dst, size_t size) {
    char src[512], cmd[2048];
    fixture("dev", src, sizeof src);
    snprintf(dst, size, "%s/%s", tmpdir, name);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", src, dst);
    FL_CHECK(system(cmd) == 0);
}

static void expect_refused(const char *what, const char *args, const char *needle) {
    char msg[2048];
    int lines = 0;
    int rc = run(args, &lines, msg, sizeof msg);
    FL_EXPECTF(rc == 1 && lines == 1, "%s: exit %d with %d lines ('%s')", what, rc, lines, msg);
    FL_EXPECTF(strstr(msg, needle), "%s: got '%s', wanted '%s'", what, msg, needle);
}

static void test_bad_input(void) {
    char dir[512], args[8192], cmd[4096], noise[512];
    /* A truncated shard. */
    copy_dev("truncated", dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "truncate -s -100 '%s/transformer/diffusion_pytorch_model-00002-of-00002.safetensors'",
             dir);
    FL_CHECK(system(cmd) == 0);
    snprintf(args, sizeof args, "--model '%s' --prompt x --out '%s/x.png' --width 64 --height 48 --steps 1", dir, tmpdir);
    expect_refused("truncated shard", args, "shard 'diffusion_pytorch_model-00002-of-00002.safetensors'");
    /* An index that does not list a tensor the model needs. */
    copy_dev("missing", dir, sizeof dir);
    snprintf(cmd, sizeof cmd,
             "sed -i '/\"transformer_blocks.0.attn.to_k.weight\"/d' "
             "'%s/transformer/diffusion_pytorch_model.safetensors.index.json'", dir);
    FL_CHECK(system(cmd) == 0);
    snprintf(args, sizeof args, "--model '%s' --prompt x --out '%s/x.png' --width 64 --height 48 --steps 1", dir, tmpdir);
    expect_refused("missing index entry", args,
                   "'transformer_blocks.0.attn.to_k.weight' is missing (a part of 'double_blocks.0.img_attn.qkv.weight')");
    /* A tokenizer file that is not JSON. */
    copy_dev("tokenizer", dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/tokenizer_2' && printf 'not json' > '%s/tokenizer_2/tokenizer.json'", dir, dir);
    FL_CHECK(system(cmd) == 0);
    snprintf(args, sizeof args, "--model '%s' --prompt x --out '%s/x.png' --width 64 --height 48 --steps 1", dir, tmpdir);
    expect_refused("tokenizer not JSON", args, "tokenizer.json");
    /* Prompts: 1 MB, and invalid UTF-8. */
    char model[512];
    fixture("dev", model, sizeof model);
    char *big = fl_xmalloc((1 << 20) + 1);
    memset(big, 'a', 1 << 20);
    big[1 << 20] = '\0';
    for (size_t i = 5; i < (1u << 20); i += 6) big[i] = ' ';
    char bigfile[512];
    snprintf(bigfile, sizeof bigfile, "%s/big.txt", tmpdir);
    FILE *f = fopen(bigfile, "w");
    FL_CHECK(f && fwrite(big, 1, 1 << 20, f) == 1u << 20);
    fclose(f);
    free(big);
    snprintf(args, sizeof args, "--model '%s' --prompt-file '%s' --out '%s/x.png' --width 64 --height 48 --steps 1",
             model, bigfile, tmpdir);
    expect_refused("1 MB prompt", args, "prompt");
    snprintf(args, sizeof args, "--model '%s' --prompt \"$(printf 'a \\377\\376 b')\" --out '%s/x.png' --width 64 "
             "--height 48 --steps 1", model, tmpdir);
    expect_refused("invalid UTF-8", args, "UTF-8");
    /* Noise of the wrong shape; a size that is not a multiple of 16. */
    fixture("dev.noise.safetensors", noise, sizeof noise);
    snprintf(args, sizeof args, "--model '%s' --prompt x --save-tensors '%s/x.st' --width 64 --height 64 --steps 1 "
             "--latents '%s'", model, tmpdir, noise);
    expect_refused("noise shape", args, "tensor 'latents' must be");
    snprintf(args, sizeof args, "--model '%s' --prompt x --out '%s/x.png' --width 60 --height 48 --steps 1", model,
             tmpdir);
    expect_refused("size", args, "multiples of 16");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_pipeline_cli FLASHLORA\n");
        return 2;
    }
    binary = argv[1];
    FL_CHECK(mkdtemp(tmpdir));
    FL_RUN(test_dev_diffusers_form);
    FL_RUN(test_schnell_bfl_files);
    FL_RUN(test_bad_input);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_finish();
}
