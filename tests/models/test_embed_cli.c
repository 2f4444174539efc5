/*
 * test_embed_cli.c — `flashlora embed` end to end (the binary's path in argv[1]): a folder of
 * images with a non-image file, a WebP and a truncated PNG in it gives embeddings [4, D] in
 * sorted-name order equal to the Hugging Face goldens (relative 1e-5), names and refusals in the
 * metadata, and --json events; bad input — a folder without a usable image, an encoder file of
 * another layout, a missing folder, an unknown encoder, missing flags — exits non-zero with one
 * line on stderr and writes no file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/safetensors.h"
#include "harness.h"

static const char *binary;
static char tmpdir[] = "/tmp/fl_embed_cli_XXXXXX";

static const char *data(const char *rel) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    return fl_test_data_path(rel, buf[k], sizeof buf[k]);
}

/* Runs `flashlora embed ARGS`; returns the exit code, the number of stderr lines and the first. */
static int run(const char *args, int *stderr_lines, char *first_line, size_t size) {
    char cmd[4096], errfile[256], outfile[256];
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", tmpdir);
    snprintf(outfile, sizeof outfile, "%s/stdout.txt", tmpdir);
    snprintf(cmd, sizeof cmd, "'%s' embed %s >'%s' 2>'%s'", binary, args, outfile, errfile);
    int status = system(cmd);
    int lines = 0;
    FILE *f = fopen(errfile, "r");
    if (f) {
        char line[1024];
        while (fgets(line, sizeof line, f)) {
            if (lines == 0 && first_line) snprintf(first_line, size, "%s", line);
            lines++;
        }
        fclose(f);
    }
    if (stderr_lines) *stderr_lines = lines;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void copy_file(const char *from, const char *to, size_t keep) {
    unsigned char *bytes = NULL;
    size_t size = 0;
    fl_error err = {0};
    if (fl_read_file(from, (size_t)1 << 24, &bytes, &size, &err) != 0) {
        fl_test_fail_at(__FILE__, __LINE__, "%s", err.message);
        return;
    }
    FILE *f = fopen(to, "wb");
    if (f) {
        fwrite(bytes, 1, keep && keep < size ? keep : size, f);
        fclose(f);
    }
    free(bytes);
}

static void write_bytes(const char *path, const char *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(bytes, 1, n, f);
        fclose(f);
    }
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

static char images[300];

static void make_folder(void) {
    static const char *names[] = {"a_cat_180x120.png", "b_coffee_150x100.png", "c_rocket_224x224.png",
                                  "d_astronaut_90x190.png"};
    snprintf(images, sizeof images, "%s/images", tmpdir);
    mkdir(images, 0755);
    char sub[400];
    snprintf(sub, sizeof sub, "%s/sub", images);
    mkdir(sub, 0755);
    for (int i = 0; i < 4; i++) {
        char rel[128], to[512];
        snprintf(rel, sizeof rel, "fixtures/vision/images/%s", names[i]);
        /* the last one sits in a subfolder: its name sorts as "sub/..." after the others */
        if (i == 3) snprintf(to, sizeof to, "%s/sub/%s", images, names[i]);
        else snprintf(to, sizeof to, "%s/%s", images, names[i]);
        copy_file(data(rel), to, 0);
    }
    char p[512];
    snprintf(p, sizeof p, "%s/caption.txt", images);
    write_text(p, "not an image\n");
    snprintf(p, sizeof p, "%s/.hidden.png", images);
    write_text(p, "hidden files are skipped\n");
    snprintf(p, sizeof p, "%s/e.webp", images);
    write_bytes(p, "RIFF\x10\x00\x00\x00WEBPVP8 ", 16);
    snprintf(p, sizeof p, "%s/f_truncated.png", images);
    copy_file(data("fixtures/vision/images/a_cat_180x120.png"), p, 1000);
}

static void check_embeddings(const char *kind, const char *folder, int dim) {
    char out[400], args[1500], first[1024] = "";
    snprintf(out, sizeof out, "%s/%s.safetensors", tmpdir, kind);
    snprintf(args, sizeof args, "--encoder '%s:%s' --images '%s' --out '%s'", kind, data(folder), images, out);
    int lines = 0;
    FL_EXPECTF(run(args, &lines, first, sizeof first) == 0, "embed failed: %s", first);
    int64_t n = 0, shape[8];
    int nd = 0;
    float *got = fl_test_load_f32(out, "embeddings", &n, shape, &nd);
    FL_EXPECT(got && nd == 2 && shape[0] == 4 && shape[1] == dim);
    /* the goldens are in fixture order: cat, coffee, rocket, astronaut = rows 0, 1, 2, 3 (sub/...) */
    for (int i = 0; got && i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "img_%d_%s", i, kind);
        float *want = fl_test_load_f32(data("fixtures/vision/vision_golden.safetensors"), name, NULL, NULL, NULL);
        double num = 0, den = 0;
        for (int k = 0; want && k < dim; k++) {
            num += (got[i * dim + k] - want[k]) * (double)(got[i * dim + k] - want[k]);
            den += (double)want[k] * want[k];
        }
        FL_EXPECTF(want && sqrt(num / den) < 1e-5, "%s row %d: relative error %.3g", kind, i, sqrt(num / den));
        free(want);
    }
    free(got);
    fl_safetensors *st = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_safetensors_open(out, &st, &err) == 0, "%s", err.message);
    if (st) {
        const char *names = fl_safetensors_metadata_get(st, "names");
        const char *rejected = fl_safetensors_metadata_get(st, "rejected");
        const char *enc = fl_safetensors_metadata_get(st, "encoder");
        FL_EXPECTF(names && !strcmp(names, "[\"a_cat_180x120.png\",\"b_coffee_150x100.png\",\"c_rocket_224x224.png\","
                                           "\"sub/d_astronaut_90x190.png\"]"),
                   "names: %s", names ? names : "(none)");
        FL_EXPECT(rejected && strstr(rejected, "e.webp") && strstr(rejected, "f_truncated.png") &&
                  !strstr(rejected, "caption.txt") && !strstr(rejected, "hidden"));
        FL_EXPECT(enc && !strcmp(enc, kind) && fl_safetensors_metadata_get(st, "encoder_fingerprint"));
        fl_safetensors_close(st);
    }
}

static void test_dinov2(void) { check_embeddings("dinov2", "fixtures/vision/dinov2_tiny", 32); }
static void test_clip(void) { check_embeddings("clip", "fixtures/vision/clip_tiny", 16); }

/* The shipped built-in encoder without a path: 128 floats per image, unit rows, its name and
 * fingerprint in the metadata. */
static void test_builtin(void) {
    char out[400], args[1500], first[1024] = "";
    snprintf(out, sizeof out, "%s/builtin.safetensors", tmpdir);
    snprintf(args, sizeof args, "--encoder builtin --images '%s' --out '%s'", images, out);
    FL_EXPECTF(run(args, NULL, first, sizeof first) == 0, "embed --encoder builtin failed: %s", first);
    int64_t n = 0, shape[8];
    int nd = 0;
    float *got = fl_test_load_f32(out, "embeddings", &n, shape, &nd);
    FL_EXPECT(got && nd == 2 && shape[0] == 4 && shape[1] == 128);
    for (int i = 0; got && i < 4; i++) {
        double s = 0;
        for (int k = 0; k < 128; k++) s += (double)got[i * 128 + k] * got[i * 128 + k];
        FL_EXPECTF(fabs(s - 1.0) < 1e-5, "row %d: squared norm %g", i, s);
    }
    free(got);
    fl_safetensors *st = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_safetensors_open(out, &st, &err) == 0, "%s", err.message);
    if (st) {
        const char *enc = fl_safetensors_metadata_get(st, "encoder");
        FL_EXPECT(enc && !strcmp(enc, "builtin") && fl_safetensors_metadata_get(st, "encoder_fingerprint"));
        fl_safetensors_close(st);
    }
}

static void test_json_events(void) {
    char out[400], args[1500], path[400];
    snprintf(out, sizeof out, "%s/json.safetensors", tmpdir);
    snprintf(args, sizeof args, "--encoder 'clip:%s' --images '%s' --out '%s' --json",
             data("fixtures/vision/clip_tiny"), images, out);
    FL_EXPECT(run(args, NULL, NULL, 0) == 0);
    snprintf(path, sizeof path, "%s/stdout.txt", tmpdir);
    unsigned char *text = NULL;
    size_t size = 0;
    fl_error err = {0};
    FL_EXPECT(fl_read_file(path, 1 << 20, &text, &size, &err) == 0);
    const char *t = (const char *)text;
    FL_EXPECT(t && !strncmp(t, "{\"event\":\"start\"", 16) && strstr(t, "\"event\":\"rejected\"") &&
              strstr(t, "\"event\":\"progress\",\"done\":6,\"total\":6") && strstr(t, "{\"event\":\"done\""));
    free(text);
}

static void expect_fails(const char *args, int code, const char *needle) {
    int lines = 0;
    char first[1024] = "";
    int rc = run(args, &lines, first, sizeof first);
    FL_EXPECTF(rc == code && lines == 1 && strstr(first, needle), "'%s': exit %d (want %d), %d lines: %s", args, rc,
               code, lines, first);
}

static void test_bad_input(void) {
    char args[2000], empty[400], out[400];
    snprintf(empty, sizeof empty, "%s/no_images", tmpdir);
    mkdir(empty, 0755);
    char p[512];
    snprintf(p, sizeof p, "%s/readme.txt", empty);
    write_text(p, "nothing to see\n");
    snprintf(p, sizeof p, "%s/broken.jpg", empty);
    write_text(p, "\xff\xd8\xff\xe0 not really a jpeg");
    snprintf(out, sizeof out, "%s/never.safetensors", tmpdir);
    const char *dino = data("fixtures/vision/dinov2_tiny");
    snprintf(args, sizeof args, "--encoder 'dinov2:%s' --images '%s' --out '%s'", dino, empty, out);
    expect_fails(args, 1, "no usable image");
    snprintf(args, sizeof args, "--encoder 'dinov2:%s' --images '%s/missing' --out '%s'", dino, tmpdir, out);
    expect_fails(args, 1, "missing");
    snprintf(args, sizeof args, "--encoder 'dinov2:%s' --images '%s' --out '%s'",
             data("fixtures/text/clip_tiny.safetensors"), images, out);
    expect_fails(args, 1, "not a DINOv2 or CLIP vision model");
    snprintf(args, sizeof args, "--encoder 'vgg:x' --images '%s' --out '%s'", images, out);
    expect_fails(args, 1, "unknown encoder");
    snprintf(args, sizeof args, "--encoder 'builtin:%s' --images '%s' --out '%s'",
             data("fixtures/flux_a.model.safetensors"), images, out);
    expect_fails(args, 1, "flashlora-builtin-vit");
    snprintf(args, sizeof args, "--images '%s' --out '%s'", images, out);
    expect_fails(args, 2, "required");
    expect_fails("--encoder", 2, "needs a value");
    FL_EXPECT(access(out, F_OK) != 0);
}


/* The face encoder over the three tiny networks (named as the real files): a face_found column,
 * boxes and scores; the coffee photo has no face under dlib's threshold... with random weights
 * every photo may, so only the columns and their agreement are checked. */
static void test_face(void) {
    char dir[400], p[600], out[400], args[1500], first[1024] = "";
    snprintf(dir, sizeof dir, "%s/face-models", tmpdir);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/dlib_face_recognition_resnet_model_v1.dat", dir);
    copy_file(data("fixtures/face/resnet_tiny.dat"), p, 0);
    snprintf(p, sizeof p, "%s/mmod_human_face_detector.dat", dir);
    copy_file(data("fixtures/face/mmod_tiny.dat"), p, 0);
    snprintf(p, sizeof p, "%s/shape_predictor_5_face_landmarks.dat", dir);
    copy_file(data("fixtures/face/sp_tiny.dat"), p, 0);
    char faces[400];
    snprintf(faces, sizeof faces, "%s/faces", tmpdir);
    mkdir(faces, 0755);
    for (int k = 0; k < 3; k++) {
        char rel[64];
        snprintf(rel, sizeof rel, "fixtures/face/photos/photo_%d.png", k);
        snprintf(p, sizeof p, "%s/photo_%d.png", faces, k);
        copy_file(data(rel), p, 0);
    }
    snprintf(out, sizeof out, "%s/faces.safetensors", tmpdir);
    snprintf(args, sizeof args, "--encoder 'face:%s' --images '%s' --out '%s'", dir, faces, out);
    int lines = 0;
    FL_EXPECTF(run(args, &lines, first, sizeof first) == 0, "embed --encoder face failed: %s", first);
    int64_t n = 0, shape[8];
    int nd = 0;
    float *emb = fl_test_load_f32(out, "embeddings", &n, shape, &nd);
    float *found = fl_test_load_f32(out, "face_found", &n, NULL, NULL);
    float *boxes = fl_test_load_f32(out, "face_boxes", &n, NULL, NULL);
    float *norms = fl_test_load_f32(out, "norms", &n, NULL, NULL);
    FL_EXPECT(emb && nd == 2 && shape[0] == 3 && shape[1] == 8 && found && boxes && norms);
    for (int i = 0; emb && found && norms && i < 3; i++) {
        double s = 0;
        for (int k = 0; k < 8; k++) s += (double)emb[i * 8 + k] * emb[i * 8 + k];
        FL_EXPECTF(found[i] == 1.0f ? fabs(s - 1.0) < 1e-5 && norms[i] > 0 : s == 0.0 && norms[i] == 0.0f,
                   "row %d: found %g, squared norm %g", i, found[i], s);
    }
    free(emb), free(found), free(boxes), free(norms);
    /* a folder without one of the files: one line naming it */
    snprintf(p, sizeof p, "%s/shape_predictor_5_face_landmarks.dat", dir);
    unlink(p);
    snprintf(args, sizeof args, "--encoder 'face:%s' --images '%s' --out '%s/never2.safetensors'", dir, faces, tmpdir);
    expect_fails(args, 1, "shape_predictor_5_face_landmarks.dat");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_embed_cli FLASHLORA_BINARY\n");
        return 2;
    }
    binary = argv[1];
    if (!mkdtemp(tmpdir)) return 1;
    make_folder();
    FL_RUN(test_dinov2);
    FL_RUN(test_clip);
    FL_RUN(test_builtin);
    FL_RUN(test_json_events);
    FL_RUN(test_bad_input);
    FL_RUN(test_face);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_finish();
}
