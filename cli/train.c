/*
 * train.c — `flashlora train`: image set in, adapter out.
 *
 *   flashlora train --images DIR|ARCHIVE|URL --trigger WORD --out ADAPTER.safetensors
 *                   --model BASE.safetensors [options]
 *
 * Loads and validates the image set (datasets/), resolves captions, crops and resizes to the
 * training resolution, trains a LoRA (trainer/), checkpoints every N steps and on SIGINT/SIGTERM,
 * resumes with --resume, writes the canonical adapter (and kohya / PEFT exports on request) and
 * optional preview images. Progress: a bar on a terminal, JSON lines on stdout with --json (one
 * object per event: start, rejected, progress, checkpoint, preview, done, error).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "cli/commands.h"
#include "core/device.h"
#include "core/sha256.h"
#include "core/threads.h"
#include "datasets/captions.h"
#include "datasets/imageset.h"
#include "datasets/preprocess.h"
#include "models/sampler.h"
#include "trainer/trainer.h"

static volatile sig_atomic_t stop_signal = 0;

static void on_signal(int sig) {
    stop_signal = sig;
}

typedef struct train_args {
    const char *images, *trigger, *out, *model, *device, *checkpoint, *caption, *export_kohya, *export_peft;
    const char *preview_dir, *preview_prompt;
    int resolution, checkpoint_every, preview_every, preview_count, preview_steps, min_images, max_images;
    bool resume, json, is_style, buckets;
    fl_train_config cfg;
} train_args;

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora train --images DIR|ARCHIVE|URL --trigger WORD --out ADAPTER.safetensors\n"
            "                       --model BASE.safetensors [options]\n\n"
            "data:\n"
            "  --resolution PX         training size, a multiple of the patch size (default 64)\n"
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
            "  --json                  JSON-lines progress on stdout\n");
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

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void show_progress(const train_args *a, const fl_train_progress *p, double elapsed, int steps_this_run) {
    double rate = elapsed > 0 ? steps_this_run / elapsed : 0.0;
    double eta = rate > 0 ? (p->total - p->step) / rate : 0.0;
    if (a->json) {
        emit_json(json_pack("{s:s, s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "event", "progress", "step", p->step, "total",
                            p->total, "loss", p->loss, "lr", p->lr, "grad_norm", p->grad_norm, "it_per_s", rate,
                            "eta_s", eta));
        return;
    }
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
    a->resolution = 64;
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
    if (!a->images || !a->trigger || !a->out || !a->model) {
        fprintf(stderr, "flashlora train: --images, --trigger, --out and --model are required (see --help)\n");
        return -1;
    }
    if (!*a->trigger || strpbrk(a->trigger, " \t\r\n")) {
        fprintf(stderr, "flashlora train: --trigger must be one word\n");
        return -1;
    }
    if (!alpha_given) a->cfg.alpha = (float)a->cfg.rank;
    return 0;
}

/* ---- pieces of the run ------------------------------------------------------------------------- */

typedef struct prepared_set {
    float **pixels;
    char **captions;
    fl_train_example *examples;
    size_t n;
} prepared_set;

static void free_prepared(prepared_set *ps) {
    for (size_t i = 0; i < ps->n; i++) {
        free(ps->pixels[i]);
        free(ps->captions[i]);
    }
    free(ps->pixels);
    free(ps->captions);
    free(ps->examples);
}

/* Loads, reports rejections, resolves captions and crops to the resolution (or to each image's
 * aspect bucket, sides multiples of patch). */
static int prepare_images(const train_args *a, int patch, prepared_set *ps, fl_error *err) {
    memset(ps, 0, sizeof *ps);
    fl_imageset_limits limits = fl_imageset_limits_default();
    limits.min_images = (size_t)a->min_images;
    limits.max_images = (size_t)a->max_images;
    fl_imageset *set = NULL;
    if (fl_imageset_load(a->images, &limits, &set, err) != 0) return -1;
    for (size_t i = 0; i < set->rejected_count; i++) {
        if (a->json)
            emit_json(json_pack("{s:s, s:s, s:s}", "event", "rejected", "name", set->rejected[i].name, "reason",
                                set->rejected[i].reason));
        else
            fprintf(stderr, "skipped %s: %s\n", set->rejected[i].name, set->rejected[i].reason);
    }
    ps->n = set->count;
    ps->pixels = fl_xcalloc(ps->n, sizeof *ps->pixels);
    ps->captions = fl_xcalloc(ps->n, sizeof *ps->captions);
    ps->examples = fl_xcalloc(ps->n, sizeof *ps->examples);
    int rc = 0;
    for (size_t i = 0; i < ps->n && rc == 0; i++) {
        ps->captions[i] = fl_caption_resolve(set->items[i].caption, a->trigger, a->caption, a->is_style);
        const fl_image *img = &set->items[i].image;
        int w = a->resolution, h = a->resolution;
        if (a->buckets && fl_bucket_choose(img->width, img->height, a->resolution, patch, &w, &h) != 0)
            rc = fl_fail(err, FL_EINVAL, "--resolution %d has no buckets with sides a multiple of %d", a->resolution,
                         patch);
        ps->pixels[i] = fl_xmalloc((size_t)w * (size_t)h * 3 * sizeof(float));
        if (rc == 0) rc = fl_preprocess_sample(img, w, h, false, ps->pixels[i], err);
        ps->examples[i] = (fl_train_example){ps->pixels[i], w, h, ps->captions[i]};
    }
    fl_imageset_free(set);
    return rc;
}

static int write_previews(const train_args *a, fl_flux_model *m, const prepared_set *ps, int step, fl_error *err) {
    if (!a->preview_dir) return 0;
    if (mkdir(a->preview_dir, 0755) != 0 && errno != EEXIST)
        return fl_fail(err, FL_EIO, "%s: %s", a->preview_dir, strerror(errno));
    float *img = fl_xmalloc((size_t)a->resolution * (size_t)a->resolution * 3 * sizeof(float));
    int rc = 0;
    for (int k = 0; k < a->preview_count && rc == 0; k++) {
        fl_sample_params sp = {a->preview_prompt ? a->preview_prompt : ps->captions[0], a->resolution, a->resolution,
                               a->preview_steps, a->cfg.guidance, (uint64_t)k + 1, a->cfg.max_text_tokens};
        char path[4096];
        snprintf(path, sizeof path, "%s/step%06d_%d.png", a->preview_dir, step, k);
        rc = fl_flux_sample_pixels(m, &sp, img, err);
        if (rc == 0) rc = fl_png_write(path, img, a->resolution, a->resolution, err);
        if (rc == 0 && a->json) emit_json(json_pack("{s:s, s:i, s:s}", "event", "preview", "step", step, "path", path));
    }
    free(img);
    return rc;
}

static int save_checkpoint(const train_args *a, fl_trainer *t, const char *path, fl_error *err) {
    if (fl_trainer_save_checkpoint(t, path, err) != 0) return -1;
    if (a->json)
        emit_json(json_pack("{s:s, s:i, s:s}", "event", "checkpoint", "step", fl_trainer_steps_done(t), "path", path));
    return 0;
}

/* Re-reads the canonical file and writes it in another layout, carrying its metadata along. */
static int export_layout(const char *canonical, fl_lora_layout layout, const char *path, fl_error *err) {
    fl_lora *lora = NULL;
    fl_safetensors *st = NULL;
    if (fl_lora_load(canonical, NULL, 0, &lora, err) != 0) return -1;
    if (fl_safetensors_open(canonical, &st, err) != 0) {
        fl_lora_free(lora);
        return fl_fail_prefix(err, "%s", canonical);
    }
    size_t n = fl_safetensors_metadata_count(st);
    fl_safetensors_kv *meta = fl_xcalloc(n ? n : 1, sizeof *meta);
    for (size_t i = 0; i < n; i++) fl_safetensors_metadata_at(st, i, &meta[i].key, &meta[i].value);
    int rc = fl_lora_save(lora, layout, path, meta, n, err);
    free(meta);
    fl_safetensors_close(st);
    fl_lora_free(lora);
    return rc;
}

static int run(train_args *a, fl_error *err) {
    double t_start = now_s();
    char checkpoint[4096];
    snprintf(checkpoint, sizeof checkpoint, "%s", a->checkpoint ? a->checkpoint : "");
    if (!a->checkpoint) snprintf(checkpoint, sizeof checkpoint, "%s.ckpt", a->out);
    if (fl_train_config_validate(&a->cfg, err) != 0) return -1;

    prepared_set ps;
    memset(&ps, 0, sizeof ps);
    fl_device dev;
    fl_ctx *ctx = NULL;
    fl_flux_model *m = NULL;
    fl_trainer *t = NULL;
    char base_hash[65] = "";
    int rc = fl_device_parse(a->device, &dev, err);
    if (rc == 0 && !(ctx = fl_ctx_create(dev, err))) rc = -1;
    if (rc == 0) rc = fl_flux_load(ctx, a->model, NULL, &m, err);
    if (rc == 0) rc = fl_sha256_file(a->model, base_hash, err);
    if (rc == 0) {
        int patch = (int)lround(sqrt(fl_flux_get_params(m)->in_channels / 3.0));
        rc = prepare_images(a, patch > 0 ? patch : 1, &ps, err);
    }
    if (rc == 0 && !(t = fl_trainer_create(m, &a->cfg, ps.examples, ps.n, err))) rc = -1;
    if (rc == 0 && a->resume) {
        if (access(checkpoint, F_OK) == 0) {
            rc = fl_trainer_load_checkpoint(t, checkpoint, err);
            if (rc == 0) say(a, "resumed from %s at step %d\n", checkpoint, fl_trainer_steps_done(t));
        } else {
            say(a, "no checkpoint at %s: starting from step 0\n", checkpoint);
        }
    }
    if (rc == 0) {
        if (a->json)
            emit_json(json_pack("{s:s, s:i, s:i, s:i, s:s, s:i}", "event", "start", "images", (int)ps.n, "steps",
                                a->cfg.steps, "resumed_at", fl_trainer_steps_done(t), "device", a->device, "resolution",
                                a->resolution));
        else
            fprintf(stderr, "training on %zu images at %dx%d, %d steps, rank %d, targets %s\n", ps.n, a->resolution,
                    a->resolution, a->cfg.steps, a->cfg.rank, a->cfg.targets);
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    double t_loop = now_s();
    int first_step = t ? fl_trainer_steps_done(t) : 0;
    fl_train_progress pr = {0};
    while (rc == 0 && fl_trainer_steps_done(t) < a->cfg.steps && !stop_signal) {
        rc = fl_trainer_step(t, &pr, err);
        if (rc != 0) break;
        show_progress(a, &pr, now_s() - t_loop, pr.step - first_step);
        if (a->checkpoint_every > 0 && pr.step % a->checkpoint_every == 0 && pr.step < a->cfg.steps)
            rc = save_checkpoint(a, t, checkpoint, err);
        if (rc == 0 && a->preview_every > 0 && pr.step % a->preview_every == 0 && pr.step < a->cfg.steps)
            rc = write_previews(a, m, &ps, pr.step, err);
    }
    if (rc == 0 && stop_signal) {
        rc = save_checkpoint(a, t, checkpoint, err);
        if (rc == 0) {
            say(a, "\ninterrupted at step %d: checkpoint %s (continue with --resume)\n", fl_trainer_steps_done(t),
                checkpoint);
            rc = fl_fail(err, FL_EINVAL, "interrupted by signal %d at step %d", (int)stop_signal,
                         fl_trainer_steps_done(t));
        }
    }
    if (rc == 0) {
        char images[32], resolution[32];
        snprintf(images, sizeof images, "%zu", ps.n);
        snprintf(resolution, sizeof resolution, "%d", a->resolution);
        fl_safetensors_kv extra[5] = {{"base_model", base_hash}, {"trigger", a->trigger}, {"images", images},
                                      {"resolution", resolution}, {"is_style", a->is_style ? "true" : "false"}};
        rc = fl_trainer_save_adapter(t, a->out, extra, 5, err);
    }
    if (rc == 0 && a->export_kohya) rc = export_layout(a->out, FL_LORA_KOHYA, a->export_kohya, err);
    if (rc == 0 && a->export_peft) rc = export_layout(a->out, FL_LORA_PEFT, a->export_peft, err);
    if (rc == 0) rc = write_previews(a, m, &ps, fl_trainer_steps_done(t), err);
    if (rc == 0) {
        char adapter_hash[65];
        rc = fl_sha256_file(a->out, adapter_hash, err);
        double total = now_s() - t_start, loop = now_s() - t_loop;
        if (rc == 0 && a->json)
            emit_json(json_pack("{s:s, s:s, s:s, s:i, s:f, s:f, s:f}", "event", "done", "adapter", a->out, "sha256",
                                adapter_hash, "steps", fl_trainer_steps_done(t), "final_loss", fl_trainer_last_loss(t),
                                "training_time_s", loop, "total_time_s", total));
        else if (rc == 0)
            fprintf(stderr, "done: %s (sha256 %.16s…), %d steps, final loss %.4f, %.1f s training, %.1f s total\n",
                    a->out, adapter_hash, fl_trainer_steps_done(t), fl_trainer_last_loss(t), loop, total);
        if (rc == 0) unlink(checkpoint); /* the adapter supersedes it */
    }
    fl_trainer_free(t);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    free_prepared(&ps);
    return rc;
}

int fl_cmd_train(int argc, char **argv) {
    train_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    fl_threads_init_from_env();
    fl_error err = {0};
    if (run(&a, &err) != 0) {
        if (a.json)
            emit_json(json_pack("{s:s, s:s, s:s}", "event", "error", "code", fl_error_code_name(err.code), "message",
                                err.message));
        fprintf(stderr, "flashlora train: %s\n", err.message);
        return stop_signal ? 128 + (int)stop_signal : 1;
    }
    return 0;
}
