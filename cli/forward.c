/*
 * forward.c — `flashlora forward`: run the Flux model once on tensors from a file.
 *
 *   flashlora forward --model M.safetensors --inputs IN.safetensors --out OUT.safetensors
 *                     [--lora FILE[:SCALE] ...] [--config PARAMS.json] [--device D]
 *
 * IN holds img [B, Li, in_channels], img_ids [B, Li, axes], txt [B, Lt, context_in_dim],
 * txt_ids [B, Lt, axes], timesteps [B], y [B, vec_in_dim] and, for guidance-distilled models,
 * guidance [B]. OUT gets the tensor `out` [B, Li, out_channels] (F32). A tool for checking
 * parity with other implementations and for debugging adapters: it reports which adapter keys
 * applied and which did not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "cli/commands.h"
#include "core/config.h"
#include "core/device.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "kernels/ops.h"
#include "models/flux.h"

#define MAX_LORAS 8

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora forward --model M.safetensors --inputs IN.safetensors --out OUT.safetensors\n"
            "                         [--lora FILE[:SCALE] ...] [--config PARAMS.json] [--device cpu|cuda|auto]\n\n"
            "Runs the Flux transformer once. IN holds img, img_ids, txt, txt_ids, timesteps, y (and guidance\n"
            "for guidance-distilled models); OUT receives `out`. --lora (up to %d; canonical, kohya or PEFT files)\n"
            "stacks adapters, each with its scale (default 1). --config gives FluxParams when the checkpoint\n"
            "has no flux_params metadata and its shapes do not determine them.\n",
            MAX_LORAS);
}

/* One named input as host f32, with its shape. */
typedef struct input_tensor {
    float *data;
    int ndim;
    int64_t shape[FL_SAFETENSORS_MAX_DIMS];
} input_tensor;

static int read_input(const fl_safetensors *st, const char *name, bool required, input_tensor *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    const fl_safetensors_info *info = fl_safetensors_find(st, name);
    if (!info) return required ? fl_fail(err, FL_EINVAL, "inputs: no tensor '%s'", name) : 0;
    fl_tensor view;
    if (fl_safetensors_tensor_view(st, info, fl_device_cpu(), &view, err) != 0)
        return fl_fail_prefix(err, "inputs: tensor '%s'", name);
    int64_t n = fl_tensor_numel(&view);
    out->data = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!out->data) return fl_fail(err, FL_ENOMEM, "inputs: out of memory for '%s'", name);
    fl_tensor dst = fl_tensor_make(out->data, FL_F32, fl_device_cpu(), view.ndim, view.shape);
    fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), err);
    fl_op_copy(cpu, &view, &dst);
    fl_ctx_destroy(cpu);
    out->ndim = view.ndim;
    memcpy(out->shape, view.shape, sizeof(int64_t) * (size_t)view.ndim);
    return 0;
}

static bool shape_is(const input_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    int64_t want[3] = {d0, d1, d2};
    if (t->ndim != ndim) return false;
    for (int i = 0; i < ndim; i++)
        if (want[i] >= 0 && t->shape[i] != want[i]) return false;
    return true;
}

/* Uploads a host f32 array as a device tensor of the given dtype. */
static fl_tensor device_tensor(fl_ctx *ctx, fl_dtype dtype, const input_tensor *t) {
    fl_tensor d = fl_ctx_tensor(ctx, dtype, t->ndim, t->shape);
    int64_t n = fl_tensor_numel(&d);
    fl_ctx_upload_f32(ctx, &d, t->data, (size_t)n);
    return d;
}

typedef struct forward_args {
    const char *model, *inputs, *out, *config, *device;
    const char *loras[MAX_LORAS];
    int n_loras;
} forward_args;

static int parse_args(int argc, char **argv, forward_args *a) {
    memset(a, 0, sizeof *a);
    a->device = "cpu";
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            exit(0);
        }
        const char **slot = !strcmp(arg, "--model")    ? &a->model
                            : !strcmp(arg, "--inputs") ? &a->inputs
                            : !strcmp(arg, "--out")    ? &a->out
                            : !strcmp(arg, "--config") ? &a->config
                            : !strcmp(arg, "--device") ? &a->device
                            : NULL;
        bool is_lora = !strcmp(arg, "--lora");
        if (!slot && !is_lora) {
            fprintf(stderr, "flashlora forward: unknown argument '%s'\n", arg);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora forward: %s needs a value\n", arg);
            return -1;
        }
        if (is_lora) {
            if (a->n_loras == MAX_LORAS) {
                fprintf(stderr, "flashlora forward: at most %d --lora\n", MAX_LORAS);
                return -1;
            }
            a->loras[a->n_loras++] = argv[++i];
        } else {
            *slot = argv[++i];
        }
    }
    if (!a->model || !a->inputs || !a->out) {
        fprintf(stderr, "flashlora forward: --model, --inputs and --out are required (see --help)\n");
        return -1;
    }
    return 0;
}

/* "FILE[:SCALE]": the scale is the text after the last ':' when it parses as a number. */
static void split_lora(const char *spec, char *path, size_t size, float *scale) {
    snprintf(path, size, "%s", spec);
    *scale = 1.0f;
    char *colon = strrchr(path, ':');
    if (!colon) return;
    char *end = NULL;
    float v = strtof(colon + 1, &end);
    if (end != colon + 1 && *end == '\0') {
        *scale = v;
        *colon = '\0';
    }
}

static int attach_loras(fl_flux_model *m, const forward_args *a, fl_error *err) {
    int rc = 0;
    for (int i = 0; i < a->n_loras && rc == 0; i++) {
        char path[4096];
        float scale;
        split_lora(a->loras[i], path, sizeof path, &scale);
        fl_lora *lora = NULL;
        if (fl_lora_load_for_model(path, m, &lora, err) != 0) {
            rc = -1;
            break;
        }
        if (lora->n_pairs == 0) {
            rc = fl_fail(err, FL_EINVAL, "%s: no key adapts a module of this model (%zu keys not applied)", path,
                         lora->n_unmatched);
        } else if (fl_flux_add_adapter(m, lora->pairs, lora->n_pairs, scale, false, err) < 0) {
            rc = fl_fail_prefix(err, "%s", path);
        } else {
            fprintf(stderr, "flashlora forward: %s (%s layout): %zu modules adapted at scale %g, %zu keys not applied\n",
                    path, lora->format, lora->n_pairs, (double)scale, lora->n_unmatched);
            for (size_t k = 0; k < lora->n_unmatched && k < 20; k++)
                fprintf(stderr, "  not applied: %s\n", lora->unmatched[k]);
        }
        fl_lora_free(lora);
    }
    return rc;
}

static int run(const forward_args *a, fl_error *err) {
    fl_device dev;
    if (fl_device_parse(a->device, &dev, err) != 0) return -1;
    fl_ctx *ctx = fl_ctx_create(dev, err);
    if (!ctx) return -1;
    fl_flux_params params, *pp = NULL;
    int rc = 0;
    if (a->config) {
        json_t *cfg = fl_config_load_file(a->config, err);
        char *text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
        json_decref(cfg);
        rc = text ? fl_flux_params_from_json(text, &params, err) : -1;
        free(text);
        pp = &params;
    }
    fl_flux_model *m = NULL;
    if (rc == 0) rc = fl_flux_load(ctx, a->model, pp, &m, err);
    if (rc == 0) rc = attach_loras(m, a, err);

    fl_safetensors *st = NULL;
    input_tensor img = {0}, img_ids = {0}, txt = {0}, txt_ids = {0}, ts = {0}, y = {0}, guid = {0};
    if (rc == 0 && fl_safetensors_open(a->inputs, &st, err) != 0) rc = fl_fail_prefix(err, "%s", a->inputs);
    if (rc == 0) {
        const fl_flux_params *p = fl_flux_get_params(m);
        rc = read_input(st, "img", true, &img, err);
        if (rc == 0) rc = read_input(st, "img_ids", true, &img_ids, err);
        if (rc == 0) rc = read_input(st, "txt", true, &txt, err);
        if (rc == 0) rc = read_input(st, "txt_ids", true, &txt_ids, err);
        if (rc == 0) rc = read_input(st, "timesteps", true, &ts, err);
        if (rc == 0) rc = read_input(st, "y", true, &y, err);
        if (rc == 0) rc = read_input(st, "guidance", p->guidance_embed, &guid, err);
        if (rc == 0) {
            int64_t b = img.ndim == 3 ? img.shape[0] : -1;
            if (!shape_is(&img, 3, -1, -1, p->in_channels) || b < 1)
                rc = fl_fail(err, FL_EINVAL, "inputs: img must be [B, L, %d]", p->in_channels);
            else if (!shape_is(&img_ids, 3, b, img.shape[1], p->n_axes))
                rc = fl_fail(err, FL_EINVAL, "inputs: img_ids must be [%lld, %lld, %d]", (long long)b,
                             (long long)img.shape[1], p->n_axes);
            else if (!shape_is(&txt, 3, b, -1, p->context_in_dim) || txt.shape[1] < 1)
                rc = fl_fail(err, FL_EINVAL, "inputs: txt must be [%lld, L, %d]", (long long)b, p->context_in_dim);
            else if (!shape_is(&txt_ids, 3, b, txt.shape[1], p->n_axes))
                rc = fl_fail(err, FL_EINVAL, "inputs: txt_ids must be [%lld, %lld, %d]", (long long)b,
                             (long long)txt.shape[1], p->n_axes);
            else if (!shape_is(&ts, 1, b, 0, 0))
                rc = fl_fail(err, FL_EINVAL, "inputs: timesteps must be [%lld]", (long long)b);
            else if (p->guidance_embed && !shape_is(&guid, 1, b, 0, 0))
                rc = fl_fail(err, FL_EINVAL, "inputs: guidance must be [%lld]", (long long)b);
            else if (!shape_is(&y, 2, b, p->vec_in_dim, 0))
                rc = fl_fail(err, FL_EINVAL, "inputs: y must be [%lld, %d]", (long long)b, p->vec_in_dim);
        }
    }
    if (rc == 0) {
        fl_dtype dtype = dev.kind == FL_DEVICE_CUDA ? FL_BF16 : FL_F32;
        fl_tensor img_t = device_tensor(ctx, dtype, &img), txt_t = device_tensor(ctx, dtype, &txt),
                  y_t = device_tensor(ctx, dtype, &y), ts_t = device_tensor(ctx, FL_F32, &ts);
        fl_tensor guid_t = {0};
        if (guid.data) guid_t = device_tensor(ctx, FL_F32, &guid);
        fl_flux_inputs in = {&img_t, &txt_t, &y_t, &ts_t, guid.data ? &guid_t : NULL, img_ids.data, txt_ids.data};
        fl_tensor out;
        rc = fl_flux_forward(m, &in, &out, err);
        if (rc == 0) {
            int64_t n = fl_tensor_numel(&out);
            float *host = malloc((size_t)n * sizeof(float));
            fl_ctx_download_f32(ctx, host, &out, (size_t)n);
            fl_tensor host_t = fl_tensor_make(host, FL_F32, fl_device_cpu(), out.ndim, out.shape);
            fl_safetensors_entry entry = fl_safetensors_entry_from_tensor("out", &host_t);
            fl_safetensors_kv meta[1] = {{"producer", "flashlora forward"}};
            rc = fl_safetensors_write(a->out, &entry, 1, meta, 1, err);
            free(host);
        }
        fl_ctx_tensor_free(ctx, &img_t);
        fl_ctx_tensor_free(ctx, &txt_t);
        fl_ctx_tensor_free(ctx, &y_t);
        fl_ctx_tensor_free(ctx, &ts_t);
        if (guid.data) fl_ctx_tensor_free(ctx, &guid_t);
    }
    input_tensor *all[7] = {&img, &img_ids, &txt, &txt_ids, &ts, &y, &guid};
    for (int i = 0; i < 7; i++) free(all[i]->data);
    fl_safetensors_close(st);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    return rc;
}

int fl_cmd_forward(int argc, char **argv) {
    forward_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    fl_threads_init_from_env();
    fl_error err = {0};
    if (run(&a, &err) != 0) {
        fprintf(stderr, "flashlora forward: %s\n", err.message);
        return 1;
    }
    return 0;
}
