/*
 * test_face.c — the dlib face pipeline against dlib itself (tests/reference/make_face_fixtures.py,
 * dlib-bin 20.0.1).
 *
 * Always (committed tiny files in dlib's layouts, written by the generator and read back by dlib):
 *  - the .dat reader on the tiny ResNet, MMOD detector and shape predictor, and on every prefix of
 *    the smallest file of each layout (each cut is one clear error, never a crash), on a file of
 *    the wrong layout and on trailing bytes;
 *  - descriptors of three 150x150 chips with the tiny ResNet: within 1e-5 relative of dlib's;
 *  - the tiny shape predictor's 5 points in a given box: equal to dlib's;
 *  - dlib.get_face_chip for those points: every pixel within 1 level of dlib's;
 *  - the tiny MMOD detector's boxes (all of them: random weights fire everywhere): equal, scores
 *    within 1e-4.
 * Where scripts/install-face-models.sh has run (else those tests are skipped and say so):
 *  - the real files parse exactly to their last byte, with the counts dlib's types imply;
 *  - descriptors of the chips within 1e-4 of dlib's; the full pipeline (detect, landmarks,
 *    align, describe) on three photos: the same box and points, descriptors within 1e-4;
 *  - cuts of the real files at sampled positions fail cleanly.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h"
#include "datasets/image.h"
#include "harness.h"
#include "models/face/dlib_dat.h"
#include "models/face/face.h"
#include "models/face/face_parts.h"
#include "models/image_encoder.h"

static fl_ctx *ctx;
static char real_dir[4096];
static bool have_real;

static const char *data(const char *rel) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    return fl_test_data_path(rel, buf[k], sizeof buf[k]);
}

#define GOLDEN "fixtures/face/face_golden.safetensors"

static float *golden(const char *name, int64_t *n, int64_t *shape) {
    int64_t count = 0;
    int nd = 0;
    float *v = fl_test_load_f32(data(GOLDEN), name, &count, shape, &nd);
    if (n) *n = count;
    return v;
}

static uint8_t *read_all(const char *path, size_t *size) {
    unsigned char *bytes = NULL;
    fl_error err = {0};
    if (fl_read_file(path, (size_t)1 << 28, &bytes, size, &err) != 0) {
        fl_test_fail_at(__FILE__, __LINE__, "%s", err.message);
        return NULL;
    }
    return bytes;
}

/* An 8-bit RGB image from a PNG fixture. */
static uint8_t *load_rgb(const char *rel, int *w, int *h) {
    size_t size = 0;
    uint8_t *bytes = read_all(data(rel), &size);
    if (!bytes) return NULL;
    fl_image img;
    fl_error err = {0};
    int rc = fl_image_decode(bytes, size, (int64_t)1 << 26, 8192, &img, &err);
    free(bytes);
    if (rc) {
        fl_test_fail_at(__FILE__, __LINE__, "%s: %s", rel, err.message);
        return NULL;
    }
    size_t n = (size_t)img.width * img.height * 3;
    uint8_t *rgb = malloc(n);
    for (size_t i = 0; i < n; i++) rgb[i] = (uint8_t)lrintf(img.pixels[i] * 255.0f);
    *w = img.width, *h = img.height;
    fl_image_release(&img);
    return rgb;
}

static double rel_error(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        den += (double)want[i] * want[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double max_abs(const float *got, const float *want, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)got[i] - want[i]));
    return m;
}

/* ---- the reader ------------------------------------------------------------------------------ */

static size_t layout_of(int which, fl_dlib_entry *e, fl_dlib_loss *loss) {
    *loss = which == 0 ? FL_DLIB_LOSS_METRIC : FL_DLIB_LOSS_MMOD;
    return which == 0 ? fl_dlib_resnet_layout(e, 256) : fl_dlib_mmod_layout(e, 256);
}

static void count_kinds(const fl_dlib_net *net, int *counts) {
    memset(counts, 0, sizeof(int) * 16);
    for (size_t i = 0; i < net->n_layers; i++) counts[net->layers[i].kind]++;
}

static void test_parse_tiny(void) {
    fl_dlib_entry e[256];
    fl_dlib_loss loss;
    fl_error err = {0};
    fl_dlib_net *net = NULL;
    size_t n = layout_of(0, e, &loss);
    FL_EXPECTF(fl_dlib_net_load(data("fixtures/face/resnet_tiny.dat"), e, n, loss, &net, &err) == 0, "%s", err.message);
    if (net) {
        int k[16];
        count_kinds(net, k);
        FL_EXPECT(k[FL_DLIB_CON] == 29 && k[FL_DLIB_AFFINE] == 29 && k[FL_DLIB_RELU] == 29 && k[FL_DLIB_ADD_PREV] == 14 &&
                  k[FL_DLIB_AVG_POOL] == 5 && k[FL_DLIB_MAX_POOL] == 1 && k[FL_DLIB_FC] == 1 && k[FL_DLIB_TAG] == 18 &&
                  k[FL_DLIB_SKIP] == 4);
        FL_EXPECT(net->input_rows == 150 && fabs(net->dist_thresh - 0.6) < 1e-7 && fabsf(net->avg[0] - 122.782f) < 1e-3f);
        fl_dlib_net_free(net);
    }
    n = layout_of(1, e, &loss);
    FL_EXPECTF(fl_dlib_net_load(data("fixtures/face/mmod_tiny.dat"), e, n, loss, &net, &err) == 0, "%s", err.message);
    if (net) {
        FL_EXPECT(net->n_windows == 1 && net->windows[0].width == 40 && net->pyramid_padding == 10 &&
                  net->pyramid_outer == 11 && net->n_layers == 19);
        fl_dlib_net_free(net);
    }
    fl_shape_predictor *sp = NULL;
    FL_EXPECTF(fl_shape_predictor_load(data("fixtures/face/sp_tiny.dat"), &sp, &err) == 0, "%s", err.message);
    if (sp) FL_EXPECT(sp->num_parts == 5 && sp->cascades == 3 && sp->trees == 20 && sp->splits == 7 && sp->pixels == 40);
    fl_shape_predictor_free(sp);
    /* a file of the other layout, and bytes after the end */
    n = layout_of(1, e, &loss);
    FL_EXPECT(fl_dlib_net_load(data("fixtures/face/resnet_tiny.dat"), e, n, loss, &net, &err) != 0 &&
              strstr(err.message, "resnet_tiny.dat") && strstr(err.message, "loss"));
    size_t size = 0;
    uint8_t *bytes = read_all(data("fixtures/face/sp_min.dat"), &size);
    if (bytes) {
        bytes = realloc(bytes, size + 1);
        bytes[size] = 0x01;
        FL_EXPECT(fl_shape_predictor_parse(bytes, size + 1, &sp, &err) != 0 && strstr(err.message, "after the end"));
        n = layout_of(0, e, &loss);
        FL_EXPECT(fl_dlib_net_parse(bytes, size, e, n, loss, &net, &err) != 0 && err.message[0]);
        free(bytes);
    }
}

/* Every prefix of a file is refused with one line; the whole file parses. */
static void cut_everywhere(const char *rel, int which) {
    size_t size = 0;
    uint8_t *bytes = read_all(data(rel), &size);
    if (!bytes) return;
    fl_dlib_entry e[256];
    fl_dlib_loss loss;
    size_t n = which < 2 ? layout_of(which, e, &loss) : 0;
    int accepted = 0, bad_msg = 0;
    for (size_t cut = 0; cut <= size; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1); /* exactly cut bytes: ASan sees any read past them */
        memcpy(copy, bytes, cut);
        fl_error err = {0};
        int rc;
        if (which < 2) {
            fl_dlib_net *net = NULL;
            rc = fl_dlib_net_parse(copy, cut, e, n, loss, &net, &err);
            fl_dlib_net_free(net);
        } else {
            fl_shape_predictor *sp = NULL;
            rc = fl_shape_predictor_parse(copy, cut, &sp, &err);
            fl_shape_predictor_free(sp);
        }
        free(copy);
        if (rc == 0) accepted++;
        else if (!err.message[0] || strchr(err.message, '\n')) bad_msg++;
        if (cut < size && rc == 0) fl_test_fail_at(__FILE__, __LINE__, "%s cut at %zu of %zu was accepted", rel, cut, size);
    }
    FL_EXPECTF(accepted == 1 && bad_msg == 0, "%s: %d prefixes accepted (want 1, the whole file), %d bad messages", rel,
               accepted, bad_msg);
    free(bytes);
}

static void test_truncated_everywhere(void) {
    cut_everywhere("fixtures/face/resnet_min.dat", 0);
    cut_everywhere("fixtures/face/mmod_min.dat", 1);
    cut_everywhere("fixtures/face/sp_min.dat", 2);
}

/* ---- descriptors ------------------------------------------------------------------------------ */

static void test_tiny_descriptors(void) {
    fl_face_resnet *r = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_face_resnet_load(ctx, data("fixtures/face/resnet_tiny.dat"), &r, &err) == 0, "%s", err.message);
    if (!r) return;
    FL_EXPECT(fl_face_resnet_dim(r) == 8 && fl_face_resnet_chip_size(r) == 150);
    for (int k = 0; k < 3; k++) {
        char rel[64], name[32];
        int w, h;
        snprintf(rel, sizeof rel, "fixtures/face/chips/chip_%d.png", k);
        uint8_t *chip = load_rgb(rel, &w, &h);
        snprintf(name, sizeof name, "tiny_desc_%d", k);
        float *want = golden(name, NULL, NULL), got[8];
        if (chip && want && w == 150 && h == 150) {
            FL_EXPECTF(fl_face_resnet_describe(r, chip, got, &err) == 0, "%s", err.message);
            double rel_e = rel_error(got, want, 8);
            FL_EXPECTF(rel_e < 1e-5, "%s: relative error %.3g", name, rel_e);
        }
        free(chip);
        free(want);
    }
    fl_face_resnet_free(r);
}

static void test_real_descriptors(void) {
    if (!have_real) {
        printf("  (skipped: the real face models are not installed; scripts/install-face-models.sh)\n");
        return;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", real_dir, FL_FACE_RESNET_FILE);
    fl_face_resnet *r = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_face_resnet_load(ctx, path, &r, &err) == 0, "%s", err.message);
    if (!r) return;
    FL_EXPECT(fl_face_resnet_dim(r) == 128 && fabs(fl_face_resnet_threshold(r) - 0.6) < 1e-6);
    double worst = 0;
    for (int k = 0; k < 3; k++) {
        char rel[64], name[32];
        int w, h;
        snprintf(rel, sizeof rel, "fixtures/face/chips/chip_%d.png", k);
        uint8_t *chip = load_rgb(rel, &w, &h);
        snprintf(name, sizeof name, "real_chipdesc_%d", k);
        float *want = golden(name, NULL, NULL), got[128];
        if (chip && want) {
            FL_EXPECTF(fl_face_resnet_describe(r, chip, got, &err) == 0, "%s", err.message);
            double d = max_abs(got, want, 128);
            worst = fmax(worst, d);
            FL_EXPECTF(d < 1e-4, "%s: max difference %.3g from dlib", name, d);
        }
        free(chip);
        free(want);
    }
    printf("  real descriptors of the chips: max difference from dlib %.3g\n", worst);
    fl_face_resnet_free(r);
}


/* ---- landmarks, chips, detections --------------------------------------------------------------- */

#define PHOTOS 3

static void test_tiny_landmarks_and_chips(void) {
    fl_shape_predictor *sp = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_shape_predictor_load(data("fixtures/face/sp_tiny.dat"), &sp, &err) == 0, "%s", err.message);
    if (!sp) return;
    for (int k = 0; k < PHOTOS; k++) {
        char rel[64], name[32];
        int w, h, cw, ch;
        snprintf(rel, sizeof rel, "fixtures/face/photos/photo_%d.png", k);
        uint8_t *img = load_rgb(rel, &w, &h);
        snprintf(name, sizeof name, "tiny_box_%d", k);
        float *box = golden(name, NULL, NULL);
        snprintf(name, sizeof name, "tiny_shape_%d", k);
        float *want = golden(name, NULL, NULL);
        snprintf(rel, sizeof rel, "fixtures/face/dlib_chips/tiny_%d.png", k);
        uint8_t *want_chip = load_rgb(rel, &cw, &ch);
        if (!img || !box || !want || !want_chip) goto next;
        fl_face_rect r = {(long)box[0], (long)box[1], (long)box[2], (long)box[3]};
        long parts[10];
        fl_shape_predict(sp, img, w, h, r, parts);
        int off = 0;
        for (int i = 0; i < 10; i++) off += parts[i] != (long)want[i];
        FL_EXPECTF(off == 0, "photo %d: %d landmark coordinates differ from dlib's", k, off);
        uint8_t chip[150 * 150 * 3];
        fl_face_chip(img, w, h, parts, 150, 0.25, chip);
        int worst = 0, diff = 0;
        for (int i = 0; i < 150 * 150 * 3; i++) {
            int d = abs((int)chip[i] - (int)want_chip[i]);
            worst = d > worst ? d : worst;
            diff += d != 0;
        }
        FL_EXPECTF(worst <= 1, "photo %d: chip differs from dlib.get_face_chip by up to %d (%d values)", k, worst, diff);
        if (diff) printf("  photo %d: %d of %d chip values differ by 1 from dlib's\n", k, diff, 150 * 150 * 3);
    next:
        free(img), free(box), free(want), free(want_chip);
    }
    fl_shape_predictor_free(sp);
}

/* A face much larger than the chip: dlib samples it from its 2x pyramid. */
static void test_big_face_chip(void) {
    int w, h;
    uint8_t *img = load_rgb("fixtures/face/photos/big_synthetic.png", &w, &h);
    for (int k = 0; img && k < 2; k++) {
        char name[32], rel[64];
        int cw, ch;
        snprintf(name, sizeof name, "big_parts_%d", k);
        float *pts = golden(name, NULL, NULL);
        snprintf(rel, sizeof rel, "fixtures/face/dlib_chips/big_%d.png", k);
        uint8_t *want = load_rgb(rel, &cw, &ch);
        if (pts && want) {
            long parts[10];
            for (int i = 0; i < 10; i++) parts[i] = (long)pts[i];
            uint8_t chip[150 * 150 * 3];
            fl_face_chip(img, w, h, parts, 150, 0.25, chip);
            int worst = 0, diff = 0;
            for (int i = 0; i < 150 * 150 * 3; i++) {
                int d = abs((int)chip[i] - (int)want[i]);
                worst = d > worst ? d : worst;
                diff += d != 0;
            }
            FL_EXPECTF(worst <= 1, "big chip %d differs from dlib's by up to %d (%d values)", k, worst, diff);
        }
        free(pts);
        free(want);
    }
    free(img);
}

static int compare_detections(const char *what, const fl_face_detection *got, int n, const float *want, int64_t rows) {
    int mismatched = 0;
    if (n != rows) {
        fl_test_fail_at(__FILE__, __LINE__, "%s: %d detections, dlib has %lld", what, n, (long long)rows);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        const float *w = want + 5 * i;
        bool same = got[i].rect.left == (long)w[0] && got[i].rect.top == (long)w[1] && got[i].rect.right == (long)w[2] &&
                    got[i].rect.bottom == (long)w[3] && fabs(got[i].score - w[4]) < 1e-4;
        if (!same && mismatched++ < 3)
            fl_test_fail_at(__FILE__, __LINE__, "%s #%d: (%ld %ld %ld %ld) %.6f, dlib (%g %g %g %g) %.6f", what, i,
                            got[i].rect.left, got[i].rect.top, got[i].rect.right, got[i].rect.bottom, got[i].score,
                            w[0], w[1], w[2], w[3], w[4]);
    }
    return mismatched;
}

static void test_tiny_detector(void) {
    fl_face_detector *d = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_face_detector_load(ctx, data("fixtures/face/mmod_tiny.dat"), &d, &err) == 0, "%s", err.message);
    if (!d) return;
    fl_face_detection *dets = malloc(4096 * sizeof *dets);
    for (int k = 0; k < PHOTOS; k++) {
        char rel[64], name[32];
        int w, h, n = 0;
        snprintf(rel, sizeof rel, "fixtures/face/photos/photo_%d.png", k);
        uint8_t *img = load_rgb(rel, &w, &h);
        int64_t shape[8] = {0};
        snprintf(name, sizeof name, "tiny_det_%d", k);
        float *want = golden(name, NULL, shape);
        if (img && want) {
            FL_EXPECTF(fl_face_detect(d, img, w, h, 0.0, dets, 4096, &n, &err) == 0, "%s", err.message);
            compare_detections(name, dets, n, want, shape[0]);
        }
        free(img), free(want);
    }
    free(dets);
    fl_face_detector_free(d);
}

/* The whole pipeline with the real models: box, points, chip and descriptor, as dlib's API gives them. */
static void test_real_pipeline(void) {
    if (!have_real) {
        printf("  (skipped: the real face models are not installed; scripts/install-face-models.sh)\n");
        return;
    }
    char p1[4200], p2[4200], p3[4200];
    snprintf(p1, sizeof p1, "%s/%s", real_dir, FL_FACE_DETECTOR_FILE);
    snprintf(p2, sizeof p2, "%s/%s", real_dir, FL_FACE_LANDMARKS_FILE);
    snprintf(p3, sizeof p3, "%s/%s", real_dir, FL_FACE_RESNET_FILE);
    fl_face_detector *det = NULL;
    fl_shape_predictor *sp = NULL;
    fl_face_resnet *net = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_face_detector_load(ctx, p1, &det, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_shape_predictor_load(p2, &sp, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_face_resnet_load(ctx, p3, &net, &err) == 0, "%s", err.message);
    if (sp) FL_EXPECT(sp->num_parts == 5 && sp->cascades == 15 && sp->trees == 500 && sp->splits == 15 && sp->pixels == 800);
    double worst = 0;
    for (int k = 0; det && sp && net && k < PHOTOS; k++) {
        char rel[64], name[32];
        int w, h, n = 0, cw, ch;
        snprintf(rel, sizeof rel, "fixtures/face/photos/photo_%d.png", k);
        uint8_t *img = load_rgb(rel, &w, &h);
        int64_t shape[8] = {0};
        snprintf(name, sizeof name, "real_det_%d", k);
        float *want = golden(name, NULL, shape);
        fl_face_detection dets[16];
        if (!img || !want) goto next;
        FL_EXPECTF(fl_face_detect(det, img, w, h, 0.0, dets, 16, &n, &err) == 0, "%s", err.message);
        if (compare_detections(name, dets, n, want, shape[0]) || n < 1) goto next;
        long parts[10];
        fl_shape_predict(sp, img, w, h, dets[0].rect, parts);
        snprintf(name, sizeof name, "real_shape_%d", k);
        float *want_shape = golden(name, NULL, NULL);
        int off = 0;
        for (int i = 0; want_shape && i < 10; i++) off += parts[i] != (long)want_shape[i];
        FL_EXPECTF(want_shape && off == 0, "photo %d: %d landmark coordinates differ from dlib's", k, off);
        free(want_shape);
        uint8_t chip[150 * 150 * 3];
        fl_face_chip(img, w, h, parts, 150, 0.25, chip);
        snprintf(rel, sizeof rel, "fixtures/face/dlib_chips/real_%d.png", k);
        uint8_t *want_chip = load_rgb(rel, &cw, &ch);
        int worst_px = 0;
        for (int i = 0; want_chip && i < 150 * 150 * 3; i++) worst_px = abs((int)chip[i] - want_chip[i]) > worst_px ?
                                                                  abs((int)chip[i] - want_chip[i]) : worst_px;
        FL_EXPECTF(want_chip && worst_px <= 1, "photo %d: chip differs from dlib's by up to %d", k, worst_px);
        free(want_chip);
        float desc[128];
        snprintf(name, sizeof name, "real_desc_%d", k);
        float *want_desc = golden(name, NULL, NULL);
        FL_EXPECTF(fl_face_resnet_describe(net, chip, desc, &err) == 0, "%s", err.message);
        if (want_desc) {
            double dmax = max_abs(desc, want_desc, 128);
            worst = fmax(worst, dmax);
            FL_EXPECTF(dmax < 1e-4, "photo %d: descriptor differs from dlib's by %.3g", k, dmax);
        }
        free(want_desc);
    next:
        free(img), free(want);
    }
    printf("  real pipeline on %d photos: descriptors within %.3g of dlib's\n", PHOTOS, worst);
    fl_face_detector_free(det);
    fl_shape_predictor_free(sp);
    fl_face_resnet_free(net);
}

/* ---- the face encoder (models/image_encoder.h) --------------------------------------------------- */

static int decode_image(const char *rel, fl_image *img) {
    size_t size = 0;
    uint8_t *bytes = read_all(data(rel), &size);
    fl_error err = {0};
    memset(img, 0, sizeof *img);
    int rc = bytes ? fl_image_decode(bytes, size, (int64_t)1 << 26, 8192, img, &err) : -1;
    free(bytes);
    return rc;
}

static void copy_file(const char *from, const char *to, size_t keep) {
    size_t size = 0;
    uint8_t *bytes = read_all(from, &size);
    FILE *f = fopen(to, "wb");
    if (bytes && f) fwrite(bytes, 1, keep && keep < size ? keep : size, f);
    if (f) fclose(f);
    free(bytes);
}

/* A face-models folder of the three tiny networks under the real files' names. */
static void make_tiny_dir(char *dir, size_t size, size_t cut_detector) {
    snprintf(dir, size, "/tmp/fl_face_tinyXXXXXX");
    if (!mkdtemp(dir)) return;
    char p[4300];
    snprintf(p, sizeof p, "%s/%s", dir, FL_FACE_RESNET_FILE);
    copy_file(data("fixtures/face/resnet_tiny.dat"), p, 0);
    snprintf(p, sizeof p, "%s/%s", dir, FL_FACE_DETECTOR_FILE);
    copy_file(data("fixtures/face/mmod_tiny.dat"), p, cut_detector);
    snprintf(p, sizeof p, "%s/%s", dir, FL_FACE_LANDMARKS_FILE);
    copy_file(data("fixtures/face/sp_tiny.dat"), p, 0);
}

static void remove_dir(const char *dir) {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static void check_encoder(const char *dir, const char *prefix, int dim) {
    char spec[4400];
    snprintf(spec, sizeof spec, "face:%s", dir);
    fl_image_encoder *enc = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_image_encoder_open(ctx, spec, &enc, &err) == 0, "%s", err.message);
    if (!enc) return;
    const fl_image_encoder_info *info = fl_image_encoder_get_info(enc);
    FL_EXPECT(info->dim == dim && info->input_size == 150 && fabsf(info->match_distance - 0.6f) < 1e-6f &&
              !strcmp(info->kind, "face") && strlen(info->fingerprint) == 64 && !fl_image_encoder_has_text(enc));
    fl_image imgs[PHOTOS + 1];
    char rel[64];
    for (int k = 0; k < PHOTOS; k++) {
        snprintf(rel, sizeof rel, "fixtures/face/photos/photo_%d.png", k);
        FL_EXPECT(decode_image(rel, &imgs[k]) == 0);
    }
    FL_EXPECT(decode_image("fixtures/vision/images/b_coffee_150x100.png", &imgs[PHOTOS]) == 0);
    float *emb = calloc((size_t)(PHOTOS + 1) * dim, sizeof(float));
    fl_embed_info inf[PHOTOS + 1];
    FL_EXPECTF(fl_image_encoder_embed(enc, imgs, PHOTOS + 1, emb, inf, &err) == 0, "%s", err.message);
    for (int k = 0; k < PHOTOS; k++) {
        char name[32];
        snprintf(name, sizeof name, "%s_%d", prefix, k);
        float *want = golden(name, NULL, NULL);
        if (!want) continue;
        double n2 = 0;
        for (int i = 0; i < dim; i++) n2 += (double)want[i] * want[i];
        float raw[128];
        for (int i = 0; i < dim; i++) raw[i] = emb[k * dim + i] * inf[k].norm;
        FL_EXPECTF(inf[k].face_found && inf[k].faces >= 1 && fabs(inf[k].norm - sqrt(n2)) < 1e-4 * sqrt(n2) &&
                       max_abs(raw, want, (size_t)dim) < 1e-4 * fmax(1.0, sqrt(n2)),
                   "%s: found %d, norm %.6g (dlib %.6g), max difference %.3g", name, inf[k].face_found, inf[k].norm,
                   sqrt(n2), max_abs(raw, want, (size_t)dim));
        free(want);
    }
    if (!strcmp(prefix, "real_desc")) {
        /* a photo of coffee has no face: a zero row, face_found false */
        bool zero = true;
        for (int i = 0; i < dim; i++) zero = zero && emb[PHOTOS * dim + i] == 0.0f;
        FL_EXPECT(!inf[PHOTOS].face_found && inf[PHOTOS].norm == 0.0f && zero);
        /* the same person in all three photos: descriptors closer than 0.6 */
        for (int a = 0; a < PHOTOS; a++)
            for (int b = a + 1; b < PHOTOS; b++) {
                double d2 = 0;
                for (int i = 0; i < dim; i++) {
                    double x = emb[a * dim + i] * inf[a].norm - emb[b * dim + i] * inf[b].norm;
                    d2 += x * x;
                }
                FL_EXPECTF(sqrt(d2) < 0.6, "photos %d and %d: distance %.3f", a, b, sqrt(d2));
            }
    }
    for (int k = 0; k <= PHOTOS; k++) fl_image_release(&imgs[k]);
    free(emb);
    fl_image_encoder_close(enc);
}

static void test_encoder_tiny(void) {
    char dir[64];
    make_tiny_dir(dir, sizeof dir, 0);
    check_encoder(dir, "tinypipe_desc", 8);
    remove_dir(dir);
}

static void test_encoder_real(void) {
    if (!have_real) {
        printf("  (skipped: the real face models are not installed; scripts/install-face-models.sh)\n");
        return;
    }
    check_encoder(real_dir, "real_desc", 128);
}

static void test_encoder_bad_input(void) {
    char dir[64], spec[200], p[300];
    fl_error err = {0};
    fl_image_encoder *enc = NULL;
    /* a truncated detector: one line naming the file */
    make_tiny_dir(dir, sizeof dir, 5000);
    snprintf(spec, sizeof spec, "face:%s", dir);
    FL_EXPECT(fl_image_encoder_open(ctx, spec, &enc, &err) != 0 && !enc && strstr(err.message, FL_FACE_DETECTOR_FILE) &&
              strstr(err.message, "truncated") && !strchr(err.message, '\n'));
    /* a missing file */
    snprintf(p, sizeof p, "%s/%s", dir, FL_FACE_LANDMARKS_FILE);
    unlink(p);
    FL_EXPECT(fl_image_encoder_open(ctx, spec, &enc, &err) != 0 && strstr(err.message, FL_FACE_LANDMARKS_FILE));
    /* files swapped: the shape predictor where the ResNet belongs */
    copy_file(data("fixtures/face/sp_tiny.dat"), p, 0);
    snprintf(p, sizeof p, "%s/%s", dir, FL_FACE_DETECTOR_FILE);
    copy_file(data("fixtures/face/mmod_tiny.dat"), p, 0);
    snprintf(p, sizeof p, "%s/%s", dir, FL_FACE_RESNET_FILE);
    copy_file(data("fixtures/face/sp_tiny.dat"), p, 0);
    FL_EXPECT(fl_image_encoder_open(ctx, spec, &enc, &err) != 0 && strstr(err.message, FL_FACE_RESNET_FILE));
    remove_dir(dir);
}

int main(void) {
    fl_error err = {0};
    ctx = fl_ctx_create(fl_device_cpu(), &err);
    if (!ctx) return 1;
    have_real = fl_face_models_default_dir(real_dir, sizeof real_dir) == 0;
    FL_RUN(test_parse_tiny);
    FL_RUN(test_truncated_everywhere);
    FL_RUN(test_tiny_descriptors);
    FL_RUN(test_real_descriptors);
    FL_RUN(test_tiny_landmarks_and_chips);
    FL_RUN(test_big_face_chip);
    FL_RUN(test_tiny_detector);
    FL_RUN(test_real_pipeline);
    FL_RUN(test_encoder_tiny);
    FL_RUN(test_encoder_real);
    FL_RUN(test_encoder_bad_input);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
