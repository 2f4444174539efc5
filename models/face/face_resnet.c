/*
 * face_resnet.c — dlib's face descriptor network on a chip (see face_parts.h): the chip becomes
 * (pixel - mean) / 256 per channel, as input_rgb_image_sized computes it, and runs through the
 * parsed ResNet (models/face/dlib_net.h) to its 128 outputs.
 */
#include <stdlib.h>
#include <string.h>

#include "models/face/dlib_net.h"
#include "models/face/face_parts.h"

struct fl_face_resnet {
    fl_dlib_model *model;
    int size, dim;
    float avg[3];
    double threshold;
    float *input;
};

void fl_face_resnet_free(fl_face_resnet *r) {
    if (!r) return;
    fl_dlib_model_free(r->model);
    free(r->input);
    free(r);
}

int fl_face_resnet_from_net(fl_ctx *ctx, const fl_dlib_net *net, fl_face_resnet **out, fl_error *err) {
    *out = NULL;
    if (net->input != FL_DLIB_INPUT_SIZED || net->input_rows != net->input_cols || net->n_layers == 0 ||
        net->layers[net->n_layers - 1].kind != FL_DLIB_FC)
        return fl_fail(err, FL_EINVAL, "not a face descriptor network");
    fl_face_resnet *r = fl_xcalloc(1, sizeof *r);
    if (fl_dlib_model_build(ctx, net, &r->model, err) != 0) {
        free(r);
        return -1;
    }
    r->size = net->input_rows;
    r->dim = net->layers[net->n_layers - 1].out_channels;
    memcpy(r->avg, net->avg, sizeof r->avg);
    r->threshold = net->dist_thresh;
    r->input = fl_xmalloc((size_t)3 * r->size * r->size * sizeof(float));
    /* one run checks the spatial sizes and the fc layer's inputs once, at load */
    float *o = NULL;
    int64_t shape[4];
    memset(r->input, 0, (size_t)3 * r->size * r->size * sizeof(float));
    if (fl_dlib_model_run(r->model, r->input, r->size, r->size, &o, shape, err) != 0) {
        fl_face_resnet_free(r);
        return -1;
    }
    free(o);
    *out = r;
    return 0;
}

int fl_face_resnet_load(fl_ctx *ctx, const char *path, fl_face_resnet **out, fl_error *err) {
    fl_dlib_entry layout[256];
    size_t n = fl_dlib_resnet_layout(layout, 256);
    fl_dlib_net *net = NULL;
    *out = NULL;
    if (fl_dlib_net_load(path, layout, n, FL_DLIB_LOSS_METRIC, &net, err) != 0) return -1;
    int rc = fl_face_resnet_from_net(ctx, net, out, err);
    fl_dlib_net_free(net);
    return rc ? fl_fail_prefix(err, "%s", path) : 0;
}

int fl_face_resnet_dim(const fl_face_resnet *r) { return r->dim; }
int fl_face_resnet_chip_size(const fl_face_resnet *r) { return r->size; }
double fl_face_resnet_threshold(const fl_face_resnet *r) { return r->threshold; }

int fl_face_resnet_describe(fl_face_resnet *r, const uint8_t *chip, float *desc, fl_error *err) {
    const int S = r->size;
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < S * S; i++) r->input[(size_t)c * S * S + i] = (float)(((float)chip[i * 3 + c] - r->avg[c]) / 256.0);
    float *o = NULL;
    int64_t shape[4];
    if (fl_dlib_model_run(r->model, r->input, S, S, &o, shape, err) != 0) return -1;
    memcpy(desc, o, (size_t)r->dim * sizeof(float));
    free(o);
    return 0;
}
