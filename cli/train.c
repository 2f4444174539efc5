/*
 * train.c — `flashlora train`: image set in, adapter out.
 *
 *   flashlora train --images DIR|ARCHIVE|URL --trigger WORD --out ADAPTER.safetensors
 *                   [--model DIR|BASE.safetensors] [options]
 *
 * Parses the flags, loads the base model (the embedded default model when neither --model nor
 * --transformer is given, with one line saying so) as a pipeline (models/pipeline.h: a pixel-space Flux
 * file, or FLUX.1-dev / schnell from a folder or single files) and hands the job to
 * fl_train_run_pipeline (trainer/run.h), which on FLUX.1 encodes the set once through the cache
 * (--cache-dir, default OUT.cache) and frees the text encoders and the encoder half of the
 * autoencoder before the loop, and which
 * loads and validates the image set, trains the LoRA, checkpoints every N steps and when a
 * SIGINT/SIGTERM asks it to stop (exit 128 + signal), resumes with --resume, and writes the
 * canonical adapter and optional preview images; kohya / PEFT exports follow on request.
 * Progress: a bar on a terminal, JSON lines on stdout with --json (one object per event: start,
 * rejected, progress, checkpoint, preview, done, error).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "cli/commands.h"
#include "core/clock.h"
#include "core/device.h"
#include "core/sha256.h"
#include "core/threads.h"
#include "models/pipeline.h"
#include "models/embedded.h"
#include "trainer/run.h"

static volatile sig_atomic_t stop_signal = 0;

static void on_signal(int sig) {
    stop_signal = sig;
}

typedef struct train_args {
    const char *images, *trigger, *out, *model, *device, *checkpoint, *caption, *export_kohya, *export_peft;
    const char *preview_dir, *preview_prompt, *cache_dir;
    const char *transformer, *ae, *clip, *t5, *tokenizer, *tokenizer_2;
    int resolution, checkpoint_every, preview_every, preview_count, preview_steps, min_images, max_images;
    bool resume, json, is_style, buckets;
    fl_train_config cfg;
} train_args;

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora train --images DIR|ARCHIVE|URL --trigger WORD --out ADAPTER.safetensors\n"
            "                       [--model DIR|BASE.safetensors] [options]\n\n"
            "model:\n"
            "  --model DIR|FILE        a folder laid out like the FLUX.1 repositories, or one transformer file\n"
            "                          (default: the embedded model, %s)\n"
            "  --transformer F, --ae F, --clip F, --t5 F, --tokenizer D, --tokenizer-2 D   parts on their own\n"
            "  --cache-dir DIR         FLUX.1: encoded latents and captions, reused by content (default OUT.cache)\n"
            "data:\n"
            "  --resolution PX         training size, a multiple of the patch size (16 for FLUX.1; default 512\n"
            "                          for FLUX.1, a pixel model's \"resolution\" metadata, else 64)\n"
            "  --buckets               keep aspect ratios: each image goes to the bucket of about PX^2 pixels\n"
            "                          closest to its shape (default: center-crop to PX x PX)\n"
            "  --caption TEXT          caption for images without a .txt sidecar (default \"a photo of [trigger]\")\n"
            "  --style                 a style adapter: no trigger insertion into captions\n"
            "  --caption-dropout P     probability of the empty caption (default 0.05)\n"
            "  --no-flip               no random horizontal flips\n"
            "  --min-images N, --max-images N   set size limits (default 4 and 100)\n"
            "training:\n"
            "  --steps N (300)  --rank R (16)  --alpha A (= rank)  --lr LR (4e-4)  --batch N (1)\n"
            "  --warmup N (10)  --schedule constant|cosine  --clip NORM (1.0, 0 = off)  --ema DECAY (0 = off)\n"
            "  --weight-decay WD (0)  --targets all|attention|no_modulation|REGEX (all)  --seed S (0)\n"
            "  --guidance G (1.0, for guidance-distilled bases)  --device cpu|cuda|auto (cpu)\n"
            "checkpoints:\n"
            "  --checkpoint PATH       (default OUT.ckpt) written every --checkpoint-every N steps and on\n"
            "                          SIGINT/SIGTERM; --resume continues from it exactly\n"
            "output:\n"
            "  --export-kohya PATH, --export-peft PATH   the adapter in those layouts too\n"
            "  --preview-dir DIR       sample --preview-count K (2) images every --preview-every N steps\n"
            "                          (0 = only at the end) with --preview-prompt (the first caption)\n"
            "  --json                  JSON-lines progress on stdout\n",
            FL_EMBEDDED_MODEL_REL);
}

/* ---- output ------------------------------------------------------------------------------------- */

static void emit_json(json_t *obj) {
    char *text = json_dumps(obj, JSON_COMPACT);
    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(text);
    }
    json_decref(obj);
}

static void say(const train_args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const train_args *a, const char *fmt, ...) {
    if (a->json) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

/* The bar on a terminal; a line every 10 steps otherwise. */
static void show_progress(const fl_train_progress *p, double rate, double eta) {
    if (!isatty(STDERR_FILENO)) {
        if (p->step % 10 == 0 || p->step == p->total)
            fprintf(stderr, "step %d/%d loss %.4f %.2f it/s\n", p->step, p->total, p->loss, rate);
        return;
    }
    int width = 30, filled = (int)((double)p->step / p->total * width);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[width] = '\0';
    fprintf(stderr, "\rstep %5d/%d [%s] loss %.4f  %.2f it/s  ETA %02d:%02d ", p->step, p->total, bar, p->loss, rate,
            (int)eta / 60, (int)eta % 60);
    if (p->step == p->total) fputc('\n', stderr);
    fflush(stderr);
}

/* ---- arguments -------------------------------------------------------------------------------- */

static int parse_number(const char *flag, const char *text, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !(v >= lo && v <= hi)) {
        fprintf(stderr, "flashlora train: %s: '%s' is not a number in [%g, %g]\n", flag, text, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, train_args *a) {
    memset(a, 0, sizeof *a);
    a->cfg = fl_train_config_default();
    a->device = "cpu";
    a->preview_count = 2;
    a->preview_steps = 20;
    a->min_images = 4;
    a->max_images = 100;
    a->caption = "a photo of [trigger]";
    bool alpha_given = false;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(f, "--resume")) { a->resume = true; continue; }
        if (!strcmp(f, "--json")) { a->json = true; continue; }
        if (!strcmp(f, "--style")) { a->is_style = true; continue; }
        if (!strcmp(f, "--no-flip")) { a->cfg.flip = false; continue; }
        if (!strcmp(f, "--buckets")) { a->buckets = true; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora train: %s needs a value (see --help)\n", f);
            return -1;
        }
        const char *v = argv[++i];
        double x = 0;
        const char **str = !strcmp(f, "--images")         ? &a->images
                           : !strcmp(f, "--trigger")      ? &a->trigger
                           : !strcmp(f, "--out")          ? &a->out
                           : !strcmp(f, "--model")        ? &a->model
                           : !strcmp(f, "--device")       ? &a->device
                           : !strcmp(f, "--checkpoint")   ? &a->checkpoint
                           : !strcmp(f, "--caption")      ? &a->caption
                           : !strcmp(f, "--export-kohya") ? &a->export_kohya
                           : !strcmp(f, "--export-peft")  ? &a->export_peft
                           : !strcmp(f, "--preview-dir")  ? &a->preview_dir
                           : !strcmp(f, "--preview-prompt") ? &a->preview_prompt
                           : !strcmp(f, "--targets")      ? &a->cfg.targets
                           : !strcmp(f, "--cache-dir")    ? &a->cache_dir
                           : !strcmp(f, "--transformer")  ? &a->transformer
                           : !strcmp(f, "--ae")           ? &a->ae
                           : !strcmp(f, "--clip")         ? &a->clip
                           : !strcmp(f, "--t5")           ? &a->t5
                           : !strcmp(f, "--tokenizer")    ? &a->tokenizer
                           : !strcmp(f, "--tokenizer-2")  ? &a->tokenizer_2
                                                          : NULL;
        if (str) { *str = v; continue; }
        struct { const char *flag; double lo, hi; int *as_int; float *as_float; } num[] = {
            {"--steps", 1, 1e6, &a->cfg.steps, NULL},          {"--rank", 1, 1024, &a->cfg.rank, NULL},
            {"--batch", 1, 256, &a->cfg.batch_size, NULL},     {"--warmup", 0, 1e6, &a->cfg.warmup_steps, NULL},
            {"--resolution", 1, 4096, &a->resolution, NULL},   {"--checkpoint-every", 0, 1e6, &a->checkpoint_every, NULL},
            {"--preview-every", 0, 1e6, &a->preview_every, NULL}, {"--preview-count", 1, 16, &a->preview_count, NULL},
            {"--preview-steps", 1, 200, &a->preview_steps, NULL}, {"--min-images", 1, 10000, &a->min_images, NULL},
            {"--max-images", 1, 10000, &a->max_images, NULL},  {"--alpha", 1e-6, 1e6, NULL, &a->cfg.alpha},
            {"--lr", 1e-9, 1, NULL, &a->cfg.lr},               {"--clip", 0, 1e6, NULL, &a->cfg.max_grad_norm},
            {"--ema", 0, 0.999999, NULL, &a->cfg.ema_decay},   {"--weight-decay", 0, 10, NULL, &a->cfg.weight_decay},
            {"--caption-dropout", 0, 1, NULL, &a->cfg.caption_dropout}, {"--guidance", 0, 100, NULL, &a->cfg.guidance},
        };
        bool matched = false;
        for (size_t k = 0; k < sizeof num / sizeof num[0] && !matched; k++) {
            if (strcmp(f, num[k].flag)) continue;
            matched = true;
            if (parse_number(f, v, num[k].lo, num[k].hi, &x) != 0) return -1;
            if (num[k].as_int) *num[k].as_int = (int)x;
            else *num[k].as_float = (float)x;
            if (!strcmp(f, "--alpha")) alpha_given = true;
        }
        if (matched) continue;
        if (!strcmp(f, "--seed")) {
            char *end = NULL;
            a->cfg.seed = strtoull(v, &end, 10);
            if (end == v || *end) {
                fprintf(stderr, "flashlora train: --seed: '%s' is not a non-negative integer\n", v);
                return -1;
            }
            continue;
        }
        if (!strcmp(f, "--schedule")) {
            if (!strcmp(v, "constant")) a->cfg.schedule = FL_LR_CONSTANT;
            else if (!strcmp(v, "cosine")) a->cfg.schedule = FL_LR_COSINE;
            else {
                fprintf(stderr, "flashlora train: --schedule must be constant or cosine\n");
                return -1;
            }
            continue;
        }
        fprintf(stderr, "flashlora train: unknown argument '%s' (see --help)\n", f);
        return -1;
    }
    if (!a->images || !a->trigger || !a->out) {
        fprintf(stderr, "flashlora train: --images, --trigger and --out are required (see --help)\n");
        return -1;
    }
    if (!*a->trigger || strpbrk(a->trigger, " \t\r\n")) {
        fprintf(stderr, "flashlora train: --trigger must be one word\n");
        return -1;
    }
    if (!alpha_given) a->cfg.alpha = (float)a->cfg.rank;
    return 0;
}

/* ---- events -------------------------------------------------------------------------------------- */

typedef struct cli_state {
    const train_args *a;
    const char *checkpoint;
    bool checkpoint_existed; /* when --resume was given: whether the run will continue from it */
    double t_start;
    json_t *done;            /* held back until the exports are written */
} cli_state;

static bool stop_hook(void *arg) {
    (void)arg;
    return stop_signal != 0;
}

static void event_hook(void *arg, json_t *ev) {
    cli_state *cs = arg;
    const train_args *a = cs->a;
    const char *kind = json_string_value(json_object_get(ev, "event"));
    if (!kind) return;
    if (!strcmp(kind, "done")) {
        json_decref(cs->done);
        cs->done = json_deep_copy(ev);
        return;
    }
    if (!strcmp(kind, "start")) {
        /* Signals stop the run from here on (a checkpoint, then exit 128 + signal). */
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        int resumed_at = (int)json_integer_value(json_object_get(ev, "resumed_at"));
        if (a->resume && cs->checkpoint_existed) say(a, "resumed from %s at step %d\n", cs->checkpoint, resumed_at);
        else if (a->resume) say(a, "no checkpoint at %s: starting from step 0\n", cs->checkpoint);
    }
    if (a->json) {
        emit_json(json_incref(ev));
        return;
    }
    if (!strcmp(kind, "rejected")) {
        fprintf(stderr, "skipped %s: %s\n", json_string_value(json_object_get(ev, "name")),
                json_string_value(json_object_get(ev, "reason")));
    } else if (!strcmp(kind, "cache")) {
        int lr = (int)json_integer_value(json_object_get(ev, "latents_reused"));
        int le = (int)json_integer_value(json_object_get(ev, "latents_encoded"));
        int tr = (int)json_integer_value(json_object_get(ev, "texts_reused"));
        int te = (int)json_integer_value(json_object_get(ev, "texts_encoded"));
        const char *dir = json_string_value(json_object_get(ev, "dir"));
        if (le + te == 0)
            fprintf(stderr, "cache %s: reused %d latents and %d text encodings, encoded nothing\n", dir, lr, tr);
        else
            fprintf(stderr, "cache %s: reused %d latents and %d text encodings, encoded %d latents and %d captions\n",
                    dir, lr, tr, le, te);
    } else if (!strcmp(kind, "start")) {
        fprintf(stderr, "training on %d images at %dx%d, %d steps, rank %d, targets %s\n",
                (int)json_integer_value(json_object_get(ev, "images")), a->resolution, a->resolution, a->cfg.steps,
                a->cfg.rank, a->cfg.targets);
    } else if (!strcmp(kind, "progress")) {
        fl_train_progress p = {(int)json_integer_value(json_object_get(ev, "step")),
                               (int)json_integer_value(json_object_get(ev, "total")),
                               json_real_value(json_object_get(ev, "loss")),
                               json_real_value(json_object_get(ev, "grad_norm")),
                               json_real_value(json_object_get(ev, "lr"))};
        show_progress(&p, json_real_value(json_object_get(ev, "it_per_s")),
                      json_real_value(json_object_get(ev, "eta_s")));
    }
}

static fl_train_job make_job(const train_args *a, const char *checkpoint, const char *base_hash) {
    fl_train_job job = fl_train_job_default();
    job.images = a->images;
    job.trigger = a->trigger;
    job.caption = a->caption;
    job.is_style = a->is_style;
    job.buckets = a->buckets;
    job.resolution = a->resolution;
    job.min_images = a->min_images;
    job.max_images = a->max_images;
    job.out = a->out;
    job.checkpoint = checkpoint;
    job.checkpoint_every = a->checkpoint_every;
    job.resume = a->resume;
    job.base_model_hash = base_hash;
    job.device = a->device;
    job.preview_dir = a->preview_dir;
    job.preview_prompt = a->preview_prompt;
    job.preview_every = a->preview_every;
    job.preview_count = a->preview_count;
    job.preview_steps = a->preview_steps;
    job.cache_dir = a->cache_dir;
    job.release_encoders = true; /* this process only trains: the encoders go once the set is encoded */
    job.cfg = a->cfg;
    return job;
}

static int run(const train_args *a, fl_error *err) {
    cli_state cs = {.a = a, .t_start = fl_monotonic_s()};
    char checkpoint[4096];
    snprintf(checkpoint, sizeof checkpoint, "%s", a->checkpoint ? a->checkpoint : "");
    if (!a->checkpoint) snprintf(checkpoint, sizeof checkpoint, "%s.ckpt", a->out);
    cs.checkpoint = checkpoint;
    if (fl_train_config_validate(&a->cfg, err) != 0) return -1;

    fl_device dev;
    fl_ctx *ctx = NULL;
    fl_pipeline *p = NULL;
    char base_hash[65] = "";
    fl_train_result result = {0};
    train_args resolved = *a;
    int rc = fl_device_parse(a->device, &dev, err);
    if (rc == 0 && !(ctx = fl_ctx_create(dev, err))) rc = -1;
    fl_pipeline_files files = {a->model, a->transformer, a->ae, a->clip, a->t5, a->tokenizer, a->tokenizer_2};
    if (rc == 0) rc = fl_pipeline_open(ctx, &files, &p, err);
    if (rc == 0) {
        const fl_pipeline_info *info = fl_pipeline_get_info(p);
        if (!resolved.resolution) resolved.resolution = info->kind == FL_PIPELINE_FLUX1 ? 512 : 64;
        /* The adapter records its base: the pixel model's file hash, or FLUX.1's weights fingerprint
         * (hashing 24 GB for every run would take minutes). */
        const char *file = a->transformer ? a->transformer : a->model;
        struct stat st;
        if (info->kind == FL_PIPELINE_PIXELS && stat(file, &st) == 0 && S_ISREG(st.st_mode))
            rc = fl_sha256_file(file, base_hash, err);
        else snprintf(base_hash, sizeof base_hash, "%s", fl_pipeline_fingerprint(p));
    }
    if (rc == 0) {
        fl_train_job job = make_job(&resolved, checkpoint, base_hash);
        fl_train_hooks hooks = {event_hook, stop_hook, &cs, NULL};
        cs.a = &resolved;
        cs.checkpoint_existed = a->resume && access(checkpoint, F_OK) == 0;
        rc = fl_train_run_pipeline(p, &job, &hooks, &result, err);
    }
    if (rc != 0 && stop_signal && err->code == FL_EUNAVAILABLE) {
        say(a, "\ninterrupted at step %d: checkpoint %s (continue with --resume)\n", result.steps, checkpoint);
        fl_fail(err, FL_EINVAL, "interrupted by signal %d at step %d", (int)stop_signal, result.steps);
    }
    if (rc == 0 && a->export_kohya) rc = fl_lora_convert_file(a->out, FL_LORA_KOHYA, a->export_kohya, err);
    if (rc == 0 && a->export_peft) rc = fl_lora_convert_file(a->out, FL_LORA_PEFT, a->export_peft, err);
    if (rc == 0) {
        double total = fl_monotonic_s() - cs.t_start;
        if (a->json) {
            json_object_set_new(cs.done, "total_time_s", json_real(total));
            emit_json(json_incref(cs.done));
        } else {
            fprintf(stderr, "done: %s (sha256 %.16s…), %d steps, final loss %.4f, %.1f s training, %.1f s total\n",
                    a->out, result.sha256, result.steps, result.final_loss, result.training_s, total);
        }
    }
    json_decref(cs.done);
    fl_pipeline_free(p);
    fl_ctx_destroy(ctx);
    return rc;
}

int fl_cmd_train(int argc, char **argv) {
    train_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    fl_threads_init_from_env();
    fl_error err = {0};
    char model[4200];
    if (!a.model && !a.transformer) {
        if (fl_default_model("flashlora train", model, sizeof model, &err) != 0) {
            fprintf(stderr, "flashlora train: %s\n", err.message);
            return 1;
        }
        a.model = model;
    }
    /* a pixel-space model file's own size; 0 (the variant's default) for anything else */
    if (a.resolution == 0 && a.model) a.resolution = fl_model_resolution(a.model, 0);
    if (run(&a, &err) != 0) {
        if (a.json)
            emit_json(json_pack("{s:s, s:s, s:s}", "event", "error", "code", fl_error_code_name(err.code), "message",
                                err.message));
        fprintf(stderr, "flashlora train: %s\n", err.message);
        return stop_signal ? 128 + (int)stop_signal : 1;
    }
    return 0;
}
