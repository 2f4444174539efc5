/*
 * fuzz_dlib_dat.c — libFuzzer target for the dlib .dat reader (models/face/dlib_dat.c): the face
 * models are files users install, so any bytes must parse into a network or a shape predictor,
 * or fail with a one-line reason, and a parsed network must build (weights uploaded, channel
 * counts checked) or fail the same way.
 *
 * Input: one selector byte (0: the face ResNet's layout, 1: the MMOD detector's, 2: a shape
 * predictor; taken modulo 3), then the file. The corpus (tests/fuzz/corpus/dlib_dat, written by
 * tests/reference/make_face_fixtures.py) holds the smallest valid file of each kind and damaged
 * copies: cut short, a count made huge, a negative count, a text-format float, a wrong tag, a
 * layer of the wrong kernel size. Linked into the replay driver, it is a regression test on every
 * build.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/context.h"
#include "models/face/dlib_dat.h"
#include "models/face/dlib_net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(int rc, const fl_error *err) {
    if (rc == 0) return;
    FL_CHECKF(err->code != FL_OK && err->message[0] != '\0', "rejection without a reason");
    FL_CHECKF(strchr(err->message, '\n') == NULL, "multi-line error message: %s", err->message);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fl_ctx *ctx;
    if (!ctx) {
        fl_error e;
        ctx = fl_ctx_create(fl_device_cpu(), &e);
        FL_CHECK(ctx);
    }
    if (size < 1) return 0;
    int which = data[0] % 3;
    /* a copy of exactly the file's bytes, so the sanitizers see any read past them */
    uint8_t *file = malloc(size - 1 ? size - 1 : 1);
    memcpy(file, data + 1, size - 1);
    fl_error err = {0};
    if (which == 2) {
        fl_shape_predictor *sp = NULL;
        int rc = fl_shape_predictor_parse(file, size - 1, &sp, &err);
        check_error(rc, &err);
        fl_shape_predictor_free(sp);
    } else {
        fl_dlib_entry layout[256];
        size_t n = which == 0 ? fl_dlib_resnet_layout(layout, 256) : fl_dlib_mmod_layout(layout, 256);
        fl_dlib_net *net = NULL;
        int rc = fl_dlib_net_parse(file, size - 1, layout, n, which == 0 ? FL_DLIB_LOSS_METRIC : FL_DLIB_LOSS_MMOD,
                                   &net, &err);
        check_error(rc, &err);
        if (rc == 0) {
            fl_dlib_model *m = NULL;
            rc = fl_dlib_model_build(ctx, net, &m, &err);
            check_error(rc, &err);
            fl_dlib_model_free(m);
        }
        fl_dlib_net_free(net);
    }
    free(file);
    return 0;
}
