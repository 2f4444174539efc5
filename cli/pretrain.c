/*
 * pretrain.c — `flashlora pretrain`: full-parameter training of a pixel-space Flux model on a
 * captioned set from `flashlora data pretrain` (how the embedded default model is made), and
 * `flashlora pretrain report`: the model card's figures from a run.
 *
 *   flashlora pretrain --data DIR --out MODEL.safetensors [--steps N] [--resume] [--init MODEL]
 *                      [--checkpoint PATH] [--checkpoint-every N] [--log PATH] [--eval-every N]
 *                      [--sample-every N] [--sample-dir DIR] [training options]
 *   flashlora pretrain report --log LOG.jsonl --model MODEL.safetensors --data DIR --out-dir DIR
 *
 * Training writes a JSON line per step to the log (step, loss, grad_norm, lr, samples, seconds)
 * and a line {step, heldout_loss} at every evaluation; a checkpoint (weights, AdamW moments, EMA,
 * RNG) and the shipped model file (EMA weights, BF16) every --checkpoint-every steps and when
 * SIGINT/SIGTERM stops it. --resume continues from the checkpoint exactly (same thread count);
 * --init starts from a shipped model (its step count continues, optimizer moments start fresh).
 * The report draws loss.png (training loss, smoothed, and held-out loss against step) and
 * samples.png (a grid of images for held-out captions, with the captions).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/commands.h"
#include "core/device.h"
#include "core/figure.h"
#include "core/fileio.h"
#include "core/threads.h"
#include "models/sampler.h"
#include "trainer/pretrain.h"

static volatile sig_atomic_t stop_signal = 0;

static void on_signal(int sig) {
    stop_signal = sig;
}

typedef struct pretrain_args {
    const char *data, *out, *init, *checkpoint, *log, *sample_dir, *config_json;
    int checkpoint_every, eval_every, sample_every, eval_examples, max_images;
    float sample_guidance;
    bool resume, f32;
    fl_pretrain_config cfg;
} pretrain_args;

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora pretrain --data DIR --out MODEL.safetensors [options]\n"
            "       flashlora pretrain report --log LOG --model MODEL --data DIR --out-dir DIR\n"
            "                                 [--samples N (16)] [--guidance G (3)]\n\n"
            "Full-parameter training of a pixel-space Flux model on a set from `flashlora data pretrain`.\n"
            "model:\n"
            "  --config FILE.json      FluxParams of a new model (default: the embedded model's architecture)\n"
            "  --init MODEL            start from a model file instead; its step count continues\n"
            "run:\n"
            "  --steps N               stop when the step count reaches N (default 20000)\n"
            "  --resume                continue from the checkpoint exactly (when it exists)\n"
            "  --checkpoint PATH       (default OUT.ckpt); written with the model every --checkpoint-every N\n"
            "                          steps (default 250) and on SIGINT/SIGTERM\n"
            "  --log PATH              JSON lines, one per step (default OUT.log.jsonl)\n"
            "  --eval-every N          held-out loss every N steps (default 500, 0 = never)\n"
            "  --eval-examples N       held-out images used (default 64)\n"
            "  --sample-every N        a grid of held-out captions into --sample-dir (default 0 = never),\n"
            "                          at --sample-guidance G (classifier-free guidance scale, default 3)\n"
            "  --max-images N          use only the first N images of the set (default all)\n"
            "  --f32                   write the model in F32 instead of BF16\n"
            "training:\n"
            "  --batch N (16)  --lr LR (3e-4)  --warmup N (500)  --beta2 B (0.99)  --weight-decay WD (0)\n"
            "  --clip NORM (1.0)  --ema DECAY (0.999)  --caption-dropout P (0.1)  --no-flip  --seed S (0)\n"
            "  --max-text-tokens N (32)\n"
            "Threads: FLASHLORA_THREADS (an exact resume needs the same count).\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_number(const char *flag, const char *text, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !(v >= lo && v <= hi)) {
        fprintf(stderr, "flashlora pretrain: %s: '%s' is not a number in [%g, %g]\n", flag, text, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, pretrain_args *a) {
    memset(a, 0, sizeof *a);
    a->cfg = fl_pretrain_config_default();
    a->checkpoint_every = 250;
    a->eval_every = 500;
    a->eval_examples = 64;
    a->sample_guidance = 3.0f;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(f, "--resume")) { a->resume = true; continue; }
        if (!strcmp(f, "--f32")) { a->f32 = true; continue; }
        if (!strcmp(f, "--no-flip")) { a->cfg.flip = false; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora pretrain: %s needs a value (see --help)\n", f);
            return -1;
        }
        const char *v = argv[++i];
        const char **str = !strcmp(f, "--data")         ? &a->data
                           : !strcmp(f, "--out")        ? &a->out
                           : !strcmp(f, "--init")       ? &a->init
                           : !strcmp(f, "--checkpoint") ? &a->checkpoint
                           : !strcmp(f, "--log")        ? &a->log
                           : !strcmp(f, "--sample-dir") ? &a->sample_dir
                           : !strcmp(f, "--config")     ? &a->config_json
                                                        : NULL;
        if (str) { *str = v; continue; }
        struct { const char *flag; double lo, hi; int *as_int; float *as_float; } num[] = {
            {"--steps", 1, 1e8, &a->cfg.steps, NULL},           {"--batch", 1, 1024, &a->cfg.batch_size, NULL},
            {"--warmup", 0, 1e8, &a->cfg.warmup_steps, NULL},   {"--checkpoint-every", 0, 1e8, &a->checkpoint_every, NULL},
            {"--eval-every", 0, 1e8, &a->eval_every, NULL},     {"--sample-every", 0, 1e8, &a->sample_every, NULL},
            {"--eval-examples", 1, 1e6, &a->eval_examples, NULL}, {"--max-images", 0, 1e8, &a->max_images, NULL},
            {"--max-text-tokens", 1, 512, &a->cfg.max_text_tokens, NULL},
            {"--lr", 1e-9, 1, NULL, &a->cfg.lr},                {"--beta2", 0, 0.999999, NULL, &a->cfg.beta2},
            {"--weight-decay", 0, 10, NULL, &a->cfg.weight_decay}, {"--clip", 0, 1e6, NULL, &a->cfg.max_grad_norm},
            {"--ema", 0, 0.999999, NULL, &a->cfg.ema_decay},    {"--caption-dropout", 0, 1, NULL, &a->cfg.caption_dropout},
            {"--sample-guidance", 0, 100, NULL, &a->sample_guidance},
        };
        bool matched = false;
        for (size_t k = 0; k < sizeof num / sizeof num[0] && !matched; k++) {
            if (strcmp(f, num[k].flag)) continue;
            matched = true;
            double x = 0;
            if (parse_number(f, v, num[k].lo, num[k].hi, &x) != 0) return -1;
            if (num[k].as_int) *num[k].as_int = (int)x;
            else *num[k].as_float = (float)x;
        }
        if (matched) continue;
        if (!strcmp(f, "--seed")) {
            char *end = NULL;
            a->cfg.seed = strtoull(v, &end, 10);
            if (end == v || *end || *v == '-') {
                fprintf(stderr, "flashlora pretrain: --seed: '%s' is not a non-negative integer\n", v);
                return -1;
            }
            continue;
        }
        fprintf(stderr, "flashlora pretrain: unknown argument '%s' (see --help)\n", f);
        return -1;
    }
    if (!a->data || !a->out) {
        fprintf(stderr, "flashlora pretrain: --data and --out are required (see --help)\n");
        return -1;
    }
    if (a->init && a->config_json) {
        fprintf(stderr, "flashlora pretrain: --init and --config exclude each other\n");
        return -1;
    }
    return 0;
}

/* ---- the loss log ---------------------------------------------------------------------------- */

/* Keeps the lines of an existing log whose step is at most keep_to (a resume drops what the
 * checkpoint does not include), or none when keep_to < 0; returns the file opened for appending. */
static FILE *open_log(const char *path, int keep_to, fl_error *err) {
    char *kept = NULL;
    size_t kept_len = 0;
    if (keep_to >= 0) {
        unsigned char *text = NULL;
        size_t n = 0;
        fl_error ignore = {0};
        if (fl_read_file(path, 1u << 30, &text, &n, &ignore) == 0) {
            kept = fl_xmalloc(n + 1);
            for (char *line = (char *)text; line && *line;) {
                char *next = strchr(line, '\n');
                if (next) *next++ = '\0';
                json_t *obj = json_loads(line, 0, NULL);
                json_t *step = json_object_get(obj, "step");
                if (json_is_integer(step) && json_integer_value(step) <= keep_to) {
                    size_t len = strlen(line);
                    memcpy(kept + kept_len, line, len);
                    kept[kept_len + len] = '\n';
                    kept_len += len + 1;
                }
                json_decref(obj);
                line = next;
            }
            free(text);
        }
    }
    if (fl_write_file_atomic(path, kept ? kept : "", kept_len, err) != 0) {
        free(kept);
        return NULL;
    }
    free(kept);
    FILE *f = fopen(path, "a");
    if (!f) fl_fail(err, FL_EIO, "%s: %s", path, strerror(errno));
    return f;
}

static void log_json(FILE *f, json_t *obj) {
    char *text = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(7));
    if (text) {
        fputs(text, f);
        fputc('\n', f);
        fflush(f);
        free(text);
    }
    json_decref(obj);
}

/* ---- sample grids ------------------------------------------------------------------------------ */

/* n images of `size` for n held-out captions spread evenly over the split (seed 1000 + i), 20
 * Euler steps at the given guidance (classifier-free for models trained with caption dropout),
 * drawn 2x in a grid of 4 columns with their captions under them. */
static int sample_grid(fl_flux_model *m, const fl_pretrain_data *d, int n, int size, int max_text_tokens,
                       float guidance, const char *path, fl_error *err) {
    if ((size_t)n > d->n_heldout) n = (int)d->n_heldout;
    if (n < 1) return 0;
    const int cols = 4, scale = 2, cell_w = size * scale + 16, text_lines = 3;
    const int cell_h = size * scale + 8 + text_lines * FL_FONT_H + 6;
    int rows = (n + cols - 1) / cols;
    fl_figure fig;
    if (fl_figure_init(&fig, cols * cell_w + 8, rows * cell_h + 8, (fl_rgb){255, 255, 255}, err) != 0) return -1;
    float *img = fl_xmalloc((size_t)size * size * 3 * sizeof(float));
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const char *caption = d->heldout[(size_t)i * d->n_heldout / (size_t)n].caption;
        fl_sample_params sp = {caption, size, size, 20, guidance, 1000 + (uint64_t)i, max_text_tokens};
        rc = fl_flux_sample_pixels(m, &sp, img, err);
        if (rc != 0) break;
        int x = 8 + (i % cols) * cell_w, y = 8 + (i / cols) * cell_h;
        fl_figure_blit(&fig, img, size, size, x, y, scale);
        /* The caption, wrapped to the cell width. */
        int per_line = (cell_w - 8) / FL_FONT_W;
        const char *p = caption;
        for (int line = 0; line < text_lines && *p; line++) {
            char buf[128];
            int len = (int)strlen(p);
            if (len > per_line) {
                len = per_line;
                while (len > 0 && p[len] != ' ') len--;
                if (len == 0) len = per_line;
            }
            snprintf(buf, sizeof buf, "%.*s", len, p);
            fl_figure_text(&fig, x, y + size * scale + 4 + line * FL_FONT_H, buf, 1, (fl_rgb){60, 60, 60});
            p += len;
            while (*p == ' ') p++;
        }
    }
    free(img);
    if (rc == 0) rc = fl_figure_write_png(&fig, path, err);
    fl_figure_release(&fig);
    return rc;
}

/* ---- training ------------------------------------------------------------------------------------ */

static int load_params_json(const char *path, fl_flux_params *p, fl_error *err) {
    unsigned char *text = NULL;
    size_t n = 0;
    if (fl_read_file(path, 1u << 20, &text, &n, err) != 0) return fl_fail_prefix(err, "%s", path);
    int rc = fl_flux_params_from_json((const char *)text, p, err);
    free(text);
    return rc == 0 ? 0 : fl_fail_prefix(err, "%s", path);
}

static int save_all(fl_pretrainer *t, const pretrain_args *a, const char *checkpoint, fl_error *err) {
    if (fl_pretrainer_save_checkpoint(t, checkpoint, err) != 0) return -1;
    fl_safetensors_kv extra[] = {
        {"name", "flashlora-embedded"},
        {"data", "openclipart-png (public domain) and ruby-tanuki-emoji (Apache-2.0) via flashlora data pretrain"},
    };
    return fl_pretrainer_save_model(t, a->out, !a->f32, extra, 2, err);
}

static int run(const pretrain_args *a, fl_error *err) {
    char checkpoint[4200], log_path[4200];
    snprintf(checkpoint, sizeof checkpoint, "%s", a->checkpoint ? a->checkpoint : "");
    if (!a->checkpoint) snprintf(checkpoint, sizeof checkpoint, "%s.ckpt", a->out);
    snprintf(log_path, sizeof log_path, "%s", a->log ? a->log : "");
    if (!a->log) snprintf(log_path, sizeof log_path, "%s.log.jsonl", a->out);
    bool resuming = a->resume && access(checkpoint, F_OK) == 0;
    if (resuming) { /* the same command again after the run finished: nothing to do */
        fl_safetensors *ck = NULL;
        fl_error ignore = {0};
        if (fl_safetensors_open(checkpoint, &ck, &ignore) == 0) {
            const char *step = fl_safetensors_metadata_get(ck, "step");
            long done = step ? strtol(step, NULL, 10) : -1;
            fl_safetensors_close(ck);
            if (done >= a->cfg.steps) {
                fprintf(stderr, "%s is at step %ld already (--steps %d): nothing to do\n", checkpoint, done,
                        a->cfg.steps);
                return 0;
            }
        }
    }

    fl_pretrain_data *data = NULL;
    fl_ctx *ctx = NULL;
    fl_flux_model *m = NULL;
    fl_pretrainer *t = NULL;
    fl_safetensors *init = NULL;
    FILE *log = NULL;
    int rc = fl_pretrain_config_validate(&a->cfg, err);
    if (rc == 0) rc = fl_pretrain_data_load(a->data, (size_t)a->max_images, &data, err);
    if (rc == 0) {
        fprintf(stderr, "data: %zu training images, %zu held out, %dx%d\n", data->n_train, data->n_heldout, data->size,
                data->size);
        if (!(ctx = fl_ctx_create(fl_device_cpu(), err))) rc = -1;
    }
    if (rc == 0 && a->init) {
        rc = fl_flux_load(ctx, a->init, NULL, &m, err);
        if (rc == 0 && fl_safetensors_open(a->init, &init, err) != 0) rc = fl_fail_prefix(err, "%s", a->init);
    } else if (rc == 0) {
        fl_flux_params p = fl_embedded_flux_params();
        if (a->config_json) rc = load_params_json(a->config_json, &p, err);
        if (rc == 0 && fl_flux_params_validate(&p, err) != 0) rc = -1;
        if (rc == 0) {
            m = fl_flux_create_random(ctx, &p, a->cfg.seed ^ 0x1234abcdull);
            fl_pretrain_init_adaln_zero(m);
        }
    }
    /* Trained with caption dropout, it takes classifier-free guidance (the training sample grids). */
    if (m) fl_flux_set_cfg_capable(m, a->cfg.caption_dropout > 0.0f);
    if (rc == 0 && !(t = fl_pretrainer_create(m, &a->cfg, data, err))) rc = -1;
    if (rc == 0 && init && !resuming) rc = fl_pretrainer_continue_from(t, init, err);
    if (rc == 0 && resuming) rc = fl_pretrainer_load_checkpoint(t, checkpoint, err);
    if (rc == 0 && !resuming && fl_pretrainer_steps_done(t) >= a->cfg.steps)
        rc = fl_fail(err, FL_EINVAL, "already at step %d", fl_pretrainer_steps_done(t));
    int start = t ? fl_pretrainer_steps_done(t) : 0;
    if (rc == 0 && !(log = open_log(log_path, resuming || a->init ? start : -1, err))) rc = -1;
    if (rc == 0) {
        fprintf(stderr, "%s at step %d of %d (batch %d, lr %g, %d threads); log %s\n",
                resuming ? "resumed" : a->init ? "continuing a shipped model" : "new model", start, a->cfg.steps,
                a->cfg.batch_size, (double)a->cfg.lr, fl_threads_get(), log_path);
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    const float eval_t[4] = {0.2f, 0.4f, 0.6f, 0.8f};
    double t_loop = now_s(), t_last = t_loop, smooth = NAN;
    while (rc == 0 && fl_pretrainer_steps_done(t) < a->cfg.steps && !stop_signal) {
        fl_pretrain_progress pr;
        double t0 = now_s();
        rc = fl_pretrainer_step(t, &pr, err);
        if (rc != 0) break;
        double t1 = now_s();
        fl_pretrainer_add_seconds(t, t1 - t0);
        smooth = isnan(smooth) ? pr.loss : 0.98 * smooth + 0.02 * pr.loss;
        log_json(log, json_pack("{s:i, s:f, s:f, s:f, s:I, s:f}", "step", pr.step, "loss", pr.loss, "grad_norm",
                                pr.grad_norm, "lr", pr.lr, "samples", (json_int_t)pr.samples, "seconds",
                                fl_pretrainer_seconds(t)));
        if (pr.step % 10 == 0 || t1 - t_last > 30) {
            fprintf(stderr, "step %d/%d loss %.4f (avg %.4f) grad %.3f lr %.2e %.2f s/step %.1f h total\n", pr.step,
                    a->cfg.steps, pr.loss, smooth, pr.grad_norm, pr.lr, t1 - t0, fl_pretrainer_seconds(t) / 3600);
            t_last = t1;
        }
        if (a->eval_every > 0 && pr.step % a->eval_every == 0) {
            double hl = fl_pretrainer_heldout_loss(t, eval_t, 4, (size_t)a->eval_examples);
            log_json(log, json_pack("{s:i, s:f}", "step", pr.step, "heldout_loss", hl));
            fprintf(stderr, "step %d: held-out loss %.4f\n", pr.step, hl);
        }
        if (a->sample_every > 0 && a->sample_dir && pr.step % a->sample_every == 0) {
            char path[4200];
            snprintf(path, sizeof path, "%s/step%07d.png", a->sample_dir, pr.step);
            rc = fl_mkdirs(a->sample_dir, err);
            fl_pretrainer_swap_ema(t);
            if (rc == 0)
                rc = sample_grid(m, data, 8, data->size, a->cfg.max_text_tokens, a->sample_guidance, path, err);
            fl_pretrainer_swap_ema(t);
        }
        if (rc == 0 && a->checkpoint_every > 0 && pr.step % a->checkpoint_every == 0) rc = save_all(t, a, checkpoint, err);
    }
    if (t && rc == 0) {
        rc = save_all(t, a, checkpoint, err);
        if (rc == 0)
            fprintf(stderr, "%s at step %d: %s (checkpoint %s), %.0f s this run, %.2f h in all\n",
                    stop_signal ? "stopped" : "done", fl_pretrainer_steps_done(t), a->out, checkpoint, now_s() - t_loop,
                    fl_pretrainer_seconds(t) / 3600);
    }
    if (log) fclose(log);
    fl_safetensors_close(init);
    fl_pretrainer_free(t);
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    fl_pretrain_data_free(data);
    return rc;
}

/* ---- the report ------------------------------------------------------------------------------- */

static int report(int argc, char **argv) {
    const char *log_path = NULL, *model = NULL, *data_dir = NULL, *out_dir = NULL;
    int n_samples = 16;
    float guidance = 3.0f;
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora pretrain report: %s needs a value\n", f);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(f, "--log")) log_path = v;
        else if (!strcmp(f, "--model")) model = v;
        else if (!strcmp(f, "--data")) data_dir = v;
        else if (!strcmp(f, "--out-dir")) out_dir = v;
        else if (!strcmp(f, "--samples")) n_samples = atoi(v) > 0 && atoi(v) <= 64 ? atoi(v) : 16;
        else if (!strcmp(f, "--guidance")) guidance = strtof(v, NULL) >= 0 && strtof(v, NULL) <= 100 ? strtof(v, NULL) : 3.0f;
        else {
            fprintf(stderr, "flashlora pretrain report: unknown option %s\n", f);
            return 2;
        }
    }
    if (!log_path || !model || !data_dir || !out_dir) {
        fprintf(stderr, "flashlora pretrain report: --log, --model, --data and --out-dir are required\n");
        return 2;
    }
    fl_error err = {0};
    unsigned char *text = NULL;
    size_t n = 0;
    if (fl_read_file(log_path, 1u << 30, &text, &n, &err) != 0) {
        fprintf(stderr, "flashlora pretrain report: %s: %s\n", log_path, err.message);
        return 1;
    }
    size_t cap = 1024, nt = 0, nh = 0;
    double *tx = fl_xmalloc(cap * sizeof(double)), *ty = fl_xmalloc(cap * sizeof(double));
    double *hx = fl_xmalloc(cap * sizeof(double)), *hy = fl_xmalloc(cap * sizeof(double));
    double smooth = NAN;
    for (char *line = (char *)text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        json_t *obj = json_loads(line, 0, NULL);
        json_t *step = json_object_get(obj, "step"), *loss = json_object_get(obj, "loss");
        json_t *held = json_object_get(obj, "heldout_loss");
        if (nt == cap || nh == cap) {
            cap *= 2;
            tx = fl_xrealloc(tx, cap * sizeof(double)), ty = fl_xrealloc(ty, cap * sizeof(double));
            hx = fl_xrealloc(hx, cap * sizeof(double)), hy = fl_xrealloc(hy, cap * sizeof(double));
        }
        if (json_is_integer(step) && json_is_number(loss)) {
            double v = json_number_value(loss);
            smooth = isnan(smooth) ? v : 0.99 * smooth + 0.01 * v;
            tx[nt] = (double)json_integer_value(step), ty[nt++] = smooth;
        }
        if (json_is_integer(step) && json_is_number(held)) {
            hx[nh] = (double)json_integer_value(step), hy[nh++] = json_number_value(held);
        }
        json_decref(obj);
        line = next;
    }
    free(text);
    int rc = fl_mkdirs(out_dir, &err);
    fl_figure fig;
    if (rc == 0) rc = fl_figure_init(&fig, 800, 480, (fl_rgb){255, 255, 255}, &err);
    if (rc == 0) {
        fl_plot_series s[2] = {{tx, ty, nt, {31, 119, 180}, "training loss (EMA of steps, 0.99)"},
                               {hx, hy, nh, {214, 39, 40}, "held-out loss (EMA weights)"}};
        fl_figure_text(&fig, 10, 6, "flashlora-embedded pretraining: flow-matching loss", 2, (fl_rgb){20, 20, 20});
        fl_figure_plot(&fig, 0, 34, 800, 446, s, nh ? 2 : 1, "step", "loss", 1);
        char path[4200];
        snprintf(path, sizeof path, "%s/loss.png", out_dir);
        rc = fl_figure_write_png(&fig, path, &err);
        fl_figure_release(&fig);
        if (rc == 0) fprintf(stderr, "%s: %zu steps, %zu evaluations\n", path, nt, nh);
    }
    free(tx), free(ty), free(hx), free(hy);
    fl_pretrain_data *data = NULL;
    fl_ctx *ctx = NULL;
    fl_flux_model *m = NULL;
    if (rc == 0) rc = fl_pretrain_data_load(data_dir, 0, &data, &err);
    if (rc == 0 && !(ctx = fl_ctx_create(fl_device_cpu(), &err))) rc = -1;
    if (rc == 0) rc = fl_flux_load(ctx, model, NULL, &m, &err);
    if (rc == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/samples.png", out_dir);
        rc = sample_grid(m, data, n_samples, data->size, 32, guidance, path, &err);
        if (rc == 0) fprintf(stderr, "%s: %d held-out captions, guidance %g\n", path, n_samples, (double)guidance);
    }
    fl_flux_free(m);
    fl_ctx_destroy(ctx);
    fl_pretrain_data_free(data);
    if (rc != 0) {
        fprintf(stderr, "flashlora pretrain report: %s\n", err.message);
        return 1;
    }
    return 0;
}

int fl_cmd_pretrain(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "report")) {
        fl_threads_init_from_env();
        return report(argc, argv);
    }
    pretrain_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    fl_threads_init_from_env();
    fl_error err = {0};
    if (run(&a, &err) != 0) {
        fprintf(stderr, "flashlora pretrain: %s\n", err.message);
        return stop_signal ? 128 + (int)stop_signal : 1;
    }
    return stop_signal ? 128 + (int)stop_signal : 0;
}
