/*
 * generate.c — `flashlora generate`: a prompt in, PNG images out, with any number of LoRA
 * adapters stacked on the base model.
 *
 *   flashlora generate [--model BASE.safetensors] --prompt TEXT --out PATH.png
 *                      [--adapter FILE[:SCALE]]... [--width W --height H --steps 20 --guidance 1
 *                       --seed 0 --num-images 1 --max-text-tokens 32 --device cpu]
 *
 * Without --model the embedded default model is used (one line on stderr says so). Adapters
 * (canonical, kohya or PEFT files) are matched against the model's Linears and attached
 * with their scale; keys that adapt no module are listed on stderr. Sampling is the Euler sampler
 * of models/sampler.h in the pixel image space; the same arguments give the same bytes. With
 * --num-images N > 1 image i (seed + i) goes to PATH_i.png. Any error is one line on stderr and
 * exit status 1.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "adapters/lora.h"
#include "cli/commands.h"
#include "core/device.h"
#include "core/threads.h"
#include "models/embedded.h"
#include "models/flux.h"
#include "models/sampler.h"

#define MAX_ADAPTERS FL_FLUX_MAX_ADAPTERS
#define MAX_UNMATCHED_SHOWN 20

typedef struct generate_args {
    const char *model, *prompt, *out, *device;
    const char *adapters[MAX_ADAPTERS];
    int n_adapters;
    int width, height, steps, num_images, max_text_tokens;
    float guidance;
    uint64_t seed;
} generate_args;

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora generate [--model BASE.safetensors] --prompt TEXT --out PATH.png [options]\n\n"
            "  --model BASE            the base model (default: the embedded model, %s)\n"
            "  --adapter FILE[:SCALE]  a LoRA (canonical, kohya or PEFT layout) at SCALE (default 1);\n"
            "                          repeat to stack up to %d\n"
            "  --width PX, --height PX image size, multiples of the patch size (default: the size the\n"
            "                          model was trained at, its \"resolution\" metadata, else 64)\n"
            "  --steps N               sampling steps (default 20)\n"
            "  --guidance G            guidance value for guidance-distilled bases, or the classifier-free\n"
            "                          guidance scale for models trained with caption dropout such as the\n"
            "                          embedded model (two forwards per step; default 1 = none)\n"
            "  --seed S                noise seed (default 0); image i uses S + i\n"
            "  --num-images N          images to write (default 1); N > 1 writes PATH_0.png, PATH_1.png, ...\n"
            "  --max-text-tokens N     prompt length in tokens (default 32)\n"
            "  --device cpu|cuda|auto  (default cpu)\n\n"
            "Keys of an adapter that adapt no module of the model are listed on stderr. Errors: one line\n"
            "on stderr, exit status 1.\n",
            FL_EMBEDDED_MODEL_REL, MAX_ADAPTERS);
}

/* One line on stderr; returns -1. */
static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("flashlora generate: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return -1;
}

static int parse_int(const char *flag, const char *text, long lo, long hi, int *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end || errno || v < lo || v > hi) {
        return bad("%s: '%s' is not an integer in [%ld, %ld]", flag, text, lo, hi);
    }
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, generate_args *a) {
    memset(a, 0, sizeof *a);
    a->device = "cpu";
    a->width = a->height = 0; /* the model's resolution */
    a->steps = 20;
    a->guidance = 1.0f;
    a->num_images = 1;
    a->max_text_tokens = 32;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        static const char *const known[] = {"--model", "--prompt", "--out", "--device", "--adapter", "--width",
                                            "--height", "--steps", "--guidance", "--seed", "--num-images",
                                            "--max-text-tokens"};
        bool is_known = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) is_known = is_known || !strcmp(f, known[k]);
        if (!is_known) return bad("unknown argument '%s' (see --help)", f);
        if (i + 1 >= argc) return bad("%s needs a value (see --help)", f);
        const char *v = argv[++i];
        const char **str = !strcmp(f, "--model")    ? &a->model
                           : !strcmp(f, "--prompt") ? &a->prompt
                           : !strcmp(f, "--out")    ? &a->out
                           : !strcmp(f, "--device") ? &a->device
                                                    : NULL;
        if (str) {
            *str = v;
            continue;
        }
        struct { const char *flag; long lo, hi; int *dst; } ints[] = {
            {"--width", 1, 4096, &a->width},           {"--height", 1, 4096, &a->height},
            {"--steps", 1, 1000, &a->steps},           {"--num-images", 1, 64, &a->num_images},
            {"--max-text-tokens", 1, 512, &a->max_text_tokens},
        };
        bool matched = false;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !matched; k++) {
            if (strcmp(f, ints[k].flag)) continue;
            matched = true;
            if (parse_int(f, v, ints[k].lo, ints[k].hi, ints[k].dst) != 0) return -1;
        }
        if (matched) continue;
        if (!strcmp(f, "--adapter")) {
            if (a->n_adapters == MAX_ADAPTERS) return bad("at most %d --adapter", MAX_ADAPTERS);
            a->adapters[a->n_adapters++] = v;
        } else if (!strcmp(f, "--guidance")) {
            char *end = NULL;
            errno = 0;
            double g = strtod(v, &end);
            if (end == v || *end || errno || !(g >= 0 && g <= 100))
                return bad("--guidance: '%s' is not a number in [0, 100]", v);
            a->guidance = (float)g;
        } else if (!strcmp(f, "--seed")) {
            char *end = NULL;
            errno = 0;
            a->seed = strtoull(v, &end, 10);
            if (end == v || *end || errno || *v == '-')
                return bad("--seed: '%s' is not a non-negative integer", v);
        }
    }
    if (!a->prompt || !a->out) return bad("--prompt and --out are required (see --help)");
    return 0;
}

/* "FILE[:SCALE]": the scale is the text after the last ':' when it parses as a number. */
static int split_adapter(const char *spec, char *path, size_t size, float *scale, fl_error *err) {
    *scale = 1.0f;
    if (strlen(spec) >= size) return fl_fail(err, FL_EINVAL, "--adapter: path too long");
    snprintf(path, size, "%s", spec);
    char *colon = strrchr(path, ':');
    if (colon) {
        char *end = NULL;
        errno = 0;
        double v = strtod(colon + 1, &end);
        if (end != colon + 1 && *end == '\0') {
            if (errno || !(v >= -100 && v <= 100))
                return fl_fail(err, FL_EINVAL, "--adapter %s: scale must be a number in [-100, 100]", spec);
            *scale = (float)v;
            *colon = '\0';
        }
    }
    if (!*path) return fl_fail(err, FL_EINVAL, "--adapter '%s': no file named", spec);
    return 0;
}

static int attach_adapters(fl_flux_model *m, const generate_args *a, fl_error *err) {
    for (int i = 0; i < a->n_adapters; i++) {
        char path[4096];
        float scale;
        if (split_adapter(a->adapters[i], path, sizeof path, &scale, err) != 0) return -1;
        fl_lora *lora = NULL;
        if (fl_lora_load_for_model(path, m, &lora, err) != 0) return -1;
        int rc = 0;
        if (lora->n_pairs == 0)
            rc = fl_fail(err, FL_EINVAL, "%s: no key adapts a module of this model (%zu keys not applied)", path,
                         lora->n_unmatched);
        else if (fl_flux_add_adapter(m, lora->pairs, lora->n_pairs, scale, false, err) < 0)
            rc = fl_fail_prefix(err, "%s", path);
        if (rc == 0) {
            fprintf(stderr, "flashlora generate: %s (%s layout): %zu modules adapted at scale %g, %zu keys not applied\n",
                    path, lora->format, lora->n_pairs, (double)scale, lora->n_unmatched);
            for (size_t k = 0; k < lora->n_unmatched && k < MAX_UNMATCHED_SHOWN; k++)
                fprintf(stderr, "  not applied: %s\n", lora->unmatched[k]);
            if (lora->n_unmatched > MAX_UNMATCHED_SHOWN)
                fprintf(stderr, "  ... and %zu more\n", lora->n_unmatched - MAX_UNMATCHED_SHOWN);
        }
        fl_lora_free(lora);
        if (rc != 0) return -1;
    }
    return 0;
}

/* PATH itself for one image; else PATH with "_i" before a ".png" ending (or appended). */
static void image_path(const generate_args *a, int i, char *buf, size_t size) {
    if (a->num_images == 1) {
        snprintf(buf, size, "%s", a->out);
        return;
    }
    size_t len = strlen(a->out);
    bool png = len >= 4 && !strcasecmp(a->out + len - 4, ".png");
    int stem = (int)(png ? len - 4 : len);
    snprintf(buf, size, "%.*s_%d%s", stem, a->out, i, png ? a->out + len - 4 : "");
}

static int run(const generate_args *a, fl_error *err) {
    if (strlen(a->out) > 4000) return fl_fail(err, FL_EINVAL, "--out: path too long");
    fl_device dev;
    if (fl_device_parse(a->device, &dev, err) != 0) return -1;
    fl_ctx *ctx = fl_ctx_create(dev, err);
    if (!ctx) return -1;
    fl_flux_model *m = NULL;
    int rc = fl_flux_load(ctx, a->model, NULL, &m, err);
    if (rc == 0) rc = attach_adapters(m, a, err);
    float *img = rc == 0 ? fl_xmalloc((size_t)a->width * (size_t)a->height * 3 * sizeof(float)) : NULL;
    for (int i = 0; i < a->num_images && rc == 0; i++) {
        fl_sample_params sp = {a->prompt, a->width, a->height, a->steps, a->guidance, a->seed + (uint64_t)i,
                               a->max_text_tokens};
        char path[4096];
        image_path(a, i, path, sizeof path);
        rc = fl_flux_sample_pixels(m, &sp, img, err);
        if (rc == 0) rc = fl_png_write(path, img, a->width, a->height, err);
        if (rc == 0) printf("%s\n", path);
    }
    free(img);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    return rc;
}

int fl_cmd_generate(int argc, char **argv) {
    generate_args a;
    if (parse_args(argc, argv, &a) != 0) return 1;
    fl_threads_init_from_env();
    fl_error err = {0};
    char model[4200];
    if (!a.model) {
        if (fl_default_model("flashlora generate", model, sizeof model, &err) != 0) {
            fprintf(stderr, "flashlora generate: %s\n", err.message);
            return 1;
        }
        a.model = model;
    }
    int native = fl_model_resolution(a.model, 64);
    if (a.width == 0) a.width = native;
    if (a.height == 0) a.height = native;
    if (run(&a, &err) != 0) {
        fprintf(stderr, "flashlora generate: %s\n", err.message);
        return 1;
    }
    return 0;
}
