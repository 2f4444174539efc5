/*
 * generate.c — `flashlora generate`: a prompt in, PNG images out, with any number of LoRA
 * adapters stacked on the base model.
 *
 *   flashlora generate [--model DIR|BASE.safetensors] --prompt TEXT --out PATH.png
 *                      [--transformer F --ae F --clip F --t5 F --tokenizer D --tokenizer-2 D]
 *                      [--adapter FILE[:SCALE]]... [--width --height --steps --guidance --seed 0
 *                       --num-images 1 --max-text-tokens 32 --device cpu]
 *                      [--latents NOISE.safetensors] [--save-tensors OUT.safetensors]
 *
 * The model is a pipeline (models/pipeline.h): a pixel-space Flux file, or FLUX.1-dev / schnell
 * from a folder in the FLUX.1 layout or single files; the variant sets the defaults (dev: 28 steps,
 * guidance 3.5, 1024 x 1024; schnell: 4 steps; pixels: 20 steps, guidance 1, 64 x 64). Adapters
 * (canonical, kohya or PEFT files) are matched against the transformer's Linears and attached with
 * their scale; keys that adapt no module are listed on stderr. The same arguments give the same
 * bytes. With --num-images N > 1 image i (seed + i) goes to PATH_i.png.
 *
 * For parity checks: --latents reads the initial noise (tensor "latents": packed [B, N, C] or, for
 * latent models, [B, z, H/8, W/8]; B = the number of images) instead of drawing it from the seed;
 * --save-tensors writes "image" [B, 3, H, W] (the decoded float image in [-1, 1], before
 * quantization) and "latents" [B, N, C] (the final packed tokens). Any error is one line on stderr
 * and exit status 1.
 *
 * Without --model (and without --transformer) the embedded default model is used (one line on
 * stderr says so); a pixel-space model's default size is the one it was trained at (its
 * "resolution" metadata).
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
#include "core/fileio.h"
#include "core/threads.h"
#include "kernels/ops.h"
#include "models/embedded.h"
#include "models/flux.h"
#include "models/pipeline.h"
#include "models/sampler.h"

#define MAX_ADAPTERS FL_FLUX_MAX_ADAPTERS
#define MAX_UNMATCHED_SHOWN 20

typedef struct generate_args {
    const char *model, *prompt, *prompt_file, *out, *device, *latents, *save_tensors;
    const char *transformer, *ae, *clip, *t5, *tokenizer, *tokenizer_2;
    const char *adapters[MAX_ADAPTERS];
    int n_adapters;
    int width, height, steps, num_images, max_text_tokens; /* 0: the model's default */
    float guidance;                                        /* < 0: the model's default */
    uint64_t seed;
} generate_args;

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora generate [--model DIR|BASE.safetensors] --prompt TEXT --out PATH.png [options]\n\n"
            "  --model DIR|FILE        a folder laid out like the FLUX.1 repositories (flux1-dev.safetensors or\n"
            "                          transformer/, ae.safetensors or vae/, text_encoder/, text_encoder_2/,\n"
            "                          tokenizer/, tokenizer_2/), or one transformer file (default: the\n"
            "                          embedded model, %s)\n"
            "  --transformer F, --ae F, --clip F, --t5 F   single files (or folders) for each part\n"
            "  --tokenizer D, --tokenizer-2 D             CLIP and T5 tokenizer files (default: the model's,\n"
            "                          else the built-in vocabularies)\n"
            "  --adapter FILE[:SCALE]  a LoRA (canonical, kohya or PEFT layout) at SCALE (default 1);\n"
            "                          repeat to stack up to %d\n"
            "  --width PX, --height PX image size, multiples of 16 for FLUX.1, of the patch size for pixel\n"
            "                          models (default 1024 x 1024; a pixel model's \"resolution\" metadata, else 64)\n"
            "  --steps N               sampling steps (default 28 dev, 4 schnell, 20 pixel models)\n"
            "  --guidance G            guidance value for guidance-distilled bases (default 3.5 dev), or the\n"
            "                          classifier-free guidance scale for models trained with caption dropout\n"
            "                          such as the embedded model (two forwards per step; default 1 = none)\n"
            "  --prompt-file FILE      the prompt read from a file (UTF-8) instead of --prompt\n"
            "  --latents FILE          initial noise: tensor 'latents', [B, N, C] packed or [B, z, H/8, W/8]\n"
            "  --save-tensors FILE     write 'image' [B, 3, H, W] in [-1, 1] and 'latents' [B, N, C]\n"
            "  --seed S                noise seed (default 0); image i uses S + i\n"
            "  --num-images N          images to write (default 1); N > 1 writes PATH_0.png, PATH_1.png, ...\n"
            "  --max-text-tokens N     prompt length in tokens for pixel models (default 32; FLUX.1 uses T5's\n"
            "                          512 for dev, 256 for schnell)\n"
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
    a->guidance = -1.0f;
    a->max_text_tokens = 32;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        static const char *const known[] = {"--model", "--prompt", "--out", "--device", "--adapter", "--width",
                                            "--height", "--steps", "--guidance", "--seed", "--num-images",
                                            "--max-text-tokens", "--latents", "--save-tensors", "--transformer",
                                            "--ae", "--clip", "--t5", "--tokenizer", "--tokenizer-2",
                                            "--prompt-file"};
        bool is_known = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) is_known = is_known || !strcmp(f, known[k]);
        if (!is_known) return bad("unknown argument '%s' (see --help)", f);
        if (i + 1 >= argc) return bad("%s needs a value (see --help)", f);
        const char *v = argv[++i];
        const char **str = !strcmp(f, "--model")          ? &a->model
                           : !strcmp(f, "--prompt")       ? &a->prompt
                           : !strcmp(f, "--prompt-file")  ? &a->prompt_file
                           : !strcmp(f, "--out")          ? &a->out
                           : !strcmp(f, "--device")       ? &a->device
                           : !strcmp(f, "--latents")      ? &a->latents
                           : !strcmp(f, "--save-tensors") ? &a->save_tensors
                           : !strcmp(f, "--transformer")  ? &a->transformer
                           : !strcmp(f, "--ae")           ? &a->ae
                           : !strcmp(f, "--clip")         ? &a->clip
                           : !strcmp(f, "--t5")           ? &a->t5
                           : !strcmp(f, "--tokenizer")    ? &a->tokenizer
                           : !strcmp(f, "--tokenizer-2")  ? &a->tokenizer_2
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
    if ((!a->prompt && !a->prompt_file) || (!a->out && !a->save_tensors))
        return bad("--prompt and --out (or --save-tensors) are required (see --help)");
    if (a->prompt && a->prompt_file) return bad("--prompt and --prompt-file exclude each other");
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

static int run_prompt(generate_args *a, fl_error *err);

/* Reads --latents: [B, N, C] packed, or [B, z, H/8, W/8] packed here as Flux packs latents. */
static float *read_noise(const generate_args *a, fl_pipeline *p, int n_images, fl_error *err) {
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(a->latents, &st, err) != 0) {
        fl_fail_prefix(err, "%s", a->latents);
        return NULL;
    }
    const fl_safetensors_info *info = fl_safetensors_find(st, "latents");
    int64_t li = fl_pipeline_image_tokens(p, a->width, a->height), c = fl_pipeline_token_channels(p);
    int64_t h8 = a->height / 8, w8 = a->width / 8, z = c / 4;
    float *noise = NULL;
    bool packed = info && info->ndim == 3 && info->shape[0] == n_images && info->shape[1] == li && info->shape[2] == c;
    bool planar = info && fl_pipeline_get_info(p)->kind == FL_PIPELINE_FLUX1 && info->ndim == 4 &&
                  info->shape[0] == n_images && info->shape[1] == z && info->shape[2] == h8 && info->shape[3] == w8;
    fl_dtype dt;
    if (!info) {
        fl_fail(err, FL_EINVAL, "%s: no tensor 'latents'", a->latents);
    } else if (!fl_st_dtype_computable(info->dtype, &dt)) {
        fl_fail(err, FL_EINVAL, "%s: tensor 'latents' is %s, not F32, BF16 or F16", a->latents,
                fl_st_dtype_name(info->dtype));
    } else if (!packed && !planar) {
        fl_fail(err, FL_EINVAL, "%s: tensor 'latents' must be [%d, %lld, %lld] or [%d, %lld, %lld, %lld] for %d image(s) "
                                "of %dx%d", a->latents, n_images, (long long)li, (long long)c, n_images, (long long)z,
                (long long)h8, (long long)w8, n_images, a->width, a->height);
    } else {
        fl_tensor src;
        FL_CHECK(fl_safetensors_tensor_view(st, info, fl_device_cpu(), &src, NULL) == 0 || info->numel == 0);
        float *flat = fl_xmalloc((size_t)info->numel * sizeof(float));
        fl_tensor dst = fl_tensor_make(flat, FL_F32, fl_device_cpu(), src.ndim, src.shape);
        fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), NULL);
        fl_op_copy(cpu, &src, &dst);
        fl_ctx_destroy(cpu);
        if (packed) {
            noise = flat;
        } else {
            noise = fl_xmalloc((size_t)info->numel * sizeof(float));
            int64_t tw = w8 / 2;
            for (int64_t b = 0; b < n_images; b++)
                for (int64_t ch = 0; ch < z; ch++)
                    for (int64_t y = 0; y < h8; y++)
                        for (int64_t x = 0; x < w8; x++) {
                            int64_t tok = (y / 2) * tw + x / 2, chan = ch * 4 + (y % 2) * 2 + x % 2;
                            noise[(b * li + tok) * c + chan] = flat[((b * z + ch) * h8 + y) * w8 + x];
                        }
            free(flat);
        }
    }
    fl_safetensors_close(st);
    return noise;
}

static int run(const generate_args *a_in, fl_error *err) {
    generate_args args = *a_in, *a = &args;
    unsigned char *prompt_text = NULL;
    if (a->prompt_file) { /* read whole (bounded), so the encoders' own limit answers a long one */
        size_t size = 0;
        if (fl_read_file(a->prompt_file, (size_t)16 << 20, &prompt_text, &size, err) != 0)
            return fl_fail_prefix(err, "--prompt-file %s", a->prompt_file);
        unsigned char *z = fl_xrealloc(prompt_text, size + 1);
        z[size] = '\0';
        prompt_text = z;
        if (strlen((const char *)z) != size) {
            free(z);
            return fl_fail(err, FL_EINVAL, "--prompt-file %s: the prompt contains a NUL byte", a->prompt_file);
        }
        a->prompt = (const char *)z;
    }
    int result = run_prompt(a, err);
    free(prompt_text);
    return result;
}

static int run_prompt(generate_args *a, fl_error *err) {
    if (a->out && strlen(a->out) > 4000) return fl_fail(err, FL_EINVAL, "--out: path too long");
    fl_device dev;
    if (fl_device_parse(a->device, &dev, err) != 0) return -1;
    fl_ctx *ctx = fl_ctx_create(dev, err);
    if (!ctx) return -1;
    fl_pipeline_files files = {a->model, a->transformer, a->ae, a->clip, a->t5, a->tokenizer, a->tokenizer_2};
    fl_pipeline *p = NULL;
    int rc = fl_pipeline_open(ctx, &files, &p, err);
    fl_flux_model *m = rc == 0 ? fl_pipeline_model(p) : NULL;
    const fl_pipeline_info *info = rc == 0 ? fl_pipeline_get_info(p) : NULL;
    if (rc == 0) {
        bool latent = info->kind == FL_PIPELINE_FLUX1;
        if (!a->width) a->width = latent ? 1024 : 64;
        if (!a->height) a->height = latent ? 1024 : 64;
        if (!a->steps) a->steps = info->default_steps;
        if (a->guidance < 0) a->guidance = info->default_guidance;
        rc = fl_pipeline_check_size(p, a->width, a->height, err);
    }
    if (rc == 0) rc = attach_adapters(m, a, err);
    float *noise = NULL;
    if (rc == 0 && a->latents) {
        /* The file decides how many images when --num-images is not given. */
        if (!a->num_images) {
            fl_safetensors *st = NULL;
            if (fl_safetensors_open(a->latents, &st, NULL) == 0) {
                const fl_safetensors_info *in = fl_safetensors_find(st, "latents");
                if (in && in->ndim >= 3 && in->shape[0] >= 1 && in->shape[0] <= 64) a->num_images = (int)in->shape[0];
                fl_safetensors_close(st);
            }
        }
        if (!a->num_images) a->num_images = 1;
        noise = read_noise(a, p, a->num_images, err);
        if (!noise) rc = -1;
    }
    if (!a->num_images) a->num_images = 1;
    int64_t li = rc == 0 ? fl_pipeline_image_tokens(p, a->width, a->height) : 0;
    int64_t c = rc == 0 ? fl_pipeline_token_channels(p) : 0;
    size_t hw = (size_t)a->width * (size_t)a->height, tok = (size_t)(li * c);
    float *img = rc == 0 ? fl_xmalloc(hw * 3 * sizeof(float)) : NULL;
    float *chw = rc == 0 && a->save_tensors ? fl_xmalloc((size_t)a->num_images * hw * 3 * sizeof(float)) : NULL;
    float *tokens = rc == 0 && a->save_tensors ? fl_xmalloc((size_t)a->num_images * tok * sizeof(float)) : NULL;
    int lt = rc == 0 ? fl_pipeline_text_tokens(p, a->max_text_tokens) : 0;
    /* One image at a time with the model's adapters on every row: each image is what it is alone. */
    for (int i = 0; i < a->num_images && rc == 0; i++) {
        fl_sample_request req;
        memset(&req, 0, sizeof req);
        req.prompt = a->prompt;
        req.seed = a->seed + (uint64_t)i;
        req.guidance = a->guidance;
        float *images[1] = {img};
        fl_pipeline_output po = {a->out ? images : NULL, chw ? chw + (size_t)i * hw * 3 : NULL,
                                 tokens ? tokens + (size_t)i * tok : NULL, true};
        rc = fl_pipeline_generate(p, a->width, a->height, a->steps, lt, &req, 1, noise ? noise + (size_t)i * tok : NULL,
                                  NULL, &po, err);
        if (rc == 0 && a->out) {
            char path[4096];
            image_path(a, i, path, sizeof path);
            rc = fl_png_write(path, img, a->width, a->height, err);
            if (rc == 0) printf("%s\n", path);
        }
    }
    if (rc == 0 && a->save_tensors) {
        fl_safetensors_entry e[2] = {
            {"image", FL_ST_F32, 4, {a->num_images, 3, a->height, a->width}, chw},
            {"latents", FL_ST_F32, 3, {a->num_images, li, c}, tokens},
        };
        char steps[16], seed[32];
        snprintf(steps, sizeof steps, "%d", a->steps);
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)a->seed);
        fl_safetensors_kv meta[3] = {{"variant", info->variant}, {"steps", steps}, {"seed", seed}};
        rc = fl_safetensors_write(a->save_tensors, e, 2, meta, 3, err);
        if (rc != 0) fl_fail_prefix(err, "%s", a->save_tensors);
        else printf("%s\n", a->save_tensors);
    }
    free(img), free(chw), free(tokens), free(noise);
    fl_pipeline_free(p);
    fl_ctx_destroy(ctx);
    return rc;
}

int fl_cmd_generate(int argc, char **argv) {
    generate_args a;
    if (parse_args(argc, argv, &a) != 0) return 1;
    fl_threads_init_from_env();
    fl_error err = {0};
    char model[4200];
    if (!a.model && !a.transformer) {
        if (fl_default_model("flashlora generate", model, sizeof model, &err) != 0) {
            fprintf(stderr, "flashlora generate: %s\n", err.message);
            return 1;
        }
        a.model = model;
    }
    /* a pixel-space model file's own size; 0 (the variant's default) for anything else */
    int native = a.model ? fl_model_resolution(a.model, 0) : 0;
    if (a.width == 0) a.width = native;
    if (a.height == 0) a.height = native;
    if (run(&a, &err) != 0) {
        fprintf(stderr, "flashlora generate: %s\n", err.message);
        return 1;
    }
    return 0;
}
