/*
 * pretrain_encoder.c — `flashlora pretrain-encoder`: trains the built-in image encoder
 * (trainer/encoder_pretrain.h) on the packaged clip art, resumably, and `flashlora retrieval`:
 * the cross-style emoji retrieval of an encoder beside the colour-histogram baseline
 * (eval/retrieval.h).
 *
 *   flashlora pretrain-encoder --out DIR [--steps N --batch N --max-images N --seed S
 *                              --eval-every N --eval-pairs N --json]
 *   flashlora retrieval [--encoder FILE] [--pairs N] [--json]
 *
 * pretrain-encoder continues from DIR/checkpoint.safetensors when it exists (the same command
 * again resumes; Ctrl-C stops after the next checkpoint). With --eval-every it scores the
 * held-out retrieval every N steps into DIR/retrieval.csv. retrieval scores the shipped encoder
 * unless --encoder names another file.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/figure.h"
#include "core/fileio.h"
#include "core/threads.h"
#include "eval/retrieval.h"
#include "models/image_encoder.h"
#include "trainer/encoder_pretrain.h"

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct run_state {
    bool json, tty;
    int eval_every;
    const char *out_dir;
    fl_emoji_benchmark bench;
    bool have_bench;
} run_state;

static bool on_log(void *arg, int step, int steps, double loss, double top1, double lr, double seconds) {
    run_state *s = arg;
    if (s->json)
        printf("{\"event\":\"progress\",\"step\":%d,\"steps\":%d,\"loss\":%.5f,\"top1\":%.4f,\"lr\":%.3g,\"seconds\":%.1f}\n",
               step, steps, loss, top1, lr, seconds);
    else
        fprintf(stderr, "%sstep %d/%d  loss %.4f  in-batch top-1 %.3f  lr %.2e  %.0f s%s", s->tty ? "\r" : "", step,
                steps, loss, top1, lr, seconds, s->tty ? "   " : "\n");
    fflush(stdout);
    return !g_stop;
}

static bool on_checkpoint(void *arg, int step, fl_bvit *model) {
    run_state *s = arg;
    if (s->have_bench && s->eval_every > 0 && step % s->eval_every == 0) {
        fl_retrieval_score sc;
        fl_error err = {0};
        if (fl_emoji_benchmark_encoder(&s->bench, model, &sc, &err) == 0) {
            char path[4096];
            snprintf(path, sizeof path, "%s/retrieval.csv", s->out_dir);
            bool fresh = access(path, F_OK) != 0;
            FILE *f = fopen(path, "a");
            if (f) {
                if (fresh) fputs("step,pairs,top1,top1_noto_to_emojione,top1_emojione_to_noto,top5\n", f);
                fprintf(f, "%d,%zu,%.4f,%.4f,%.4f,%.4f\n", step, sc.n, sc.top1, sc.top1_ab, sc.top1_ba, sc.top5);
                fclose(f);
            }
            if (s->json) printf("{\"event\":\"retrieval\",\"step\":%d,\"pairs\":%zu,\"top1\":%.4f}\n", step, sc.n, sc.top1);
            else fprintf(stderr, "%sstep %d: held-out cross-style top-1 %.3f over %zu pairs\n", s->tty ? "\n" : "", step, sc.top1, sc.n);
        }
    }
    return !g_stop;
}

static int parse_long(const char *cmd, const char *flag, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "flashlora %s: %s: '%s' is not an integer in [%ld, %ld]\n", cmd, flag, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static void pretrain_usage(FILE *f) {
    fprintf(f,
            "usage: flashlora pretrain-encoder --out DIR [options]\n\n"
            "Trains the built-in image encoder (a small ViT) self-supervised on the packaged clip art\n"
            "(openclipart-png and the Noto emoji of ruby-tanuki-emoji, held-out code points excluded).\n\n"
            "  --steps N        optimizer steps (default 3000)\n"
            "  --batch N        images per step, two views each (default 64)\n"
            "  --max-images N   use at most N source images, evenly spaced (default: all)\n"
            "  --seed S         (default 1)\n"
            "  --image-size PX, --patch PX, --dim N, --depth N, --heads N, --mlp N\n"
            "                   the encoder's shape (default 64, 8, 128, 6, 4, 512)\n"
            "  --eval-every N   score held-out cross-style retrieval every N steps (a multiple of 100)\n"
            "  --eval-pairs N   pairs used for that score (default 400)\n"
            "  --json           progress as JSON lines on stdout\n\n"
            "Checkpoints every 100 steps to DIR/checkpoint.safetensors; the same command resumes.\n"
            "Writes DIR/encoder.safetensors (f32, with the projection head), DIR/flashlora-vit.safetensors\n"
            "(bf16, the shipped form), DIR/loss.csv and, at the end, its plot DIR/loss.png.\n");
}

/* DIR/loss.png from DIR/loss.csv (step,loss,top1,...): the NT-Xent loss (EMA of the logged
 * values, 0.9) and the in-batch top-1 accuracy of the two views, against the step. */
static int write_loss_plot(const char *dir, fl_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/loss.csv", dir);
    unsigned char *bytes = NULL;
    size_t len = 0;
    if (fl_read_file(path, 64u << 20, &bytes, &len, err) != 0) return -1;
    char *text = fl_xmalloc(len + 1);
    memcpy(text, bytes, len);
    text[len] = '\0';
    free(bytes);
    size_t cap = 1024, n = 0;
    double *x = fl_xmalloc(cap * sizeof(double)), *loss = fl_xmalloc(cap * sizeof(double));
    double *top1 = fl_xmalloc(cap * sizeof(double)), smooth = NAN;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        double step, l, t;
        if (sscanf(line, "%lf,%lf,%lf", &step, &l, &t) == 3) {
            if (n == cap) {
                cap *= 2;
                x = fl_xrealloc(x, cap * sizeof(double)), loss = fl_xrealloc(loss, cap * sizeof(double));
                top1 = fl_xrealloc(top1, cap * sizeof(double));
            }
            smooth = isnan(smooth) ? l : 0.9 * smooth + 0.1 * l;
            x[n] = step, loss[n] = smooth, top1[n++] = t;
        }
        line = next;
    }
    free(text);
    fl_figure fig;
    int rc = fl_figure_init(&fig, 800, 720, (fl_rgb){255, 255, 255}, err);
    if (rc == 0) {
        fl_plot_series sl = {x, loss, n, {31, 119, 180}, "NT-Xent loss (EMA 0.9 of logged steps)"};
        fl_plot_series st = {x, top1, n, {214, 39, 40}, "in-batch top-1 of the two views"};
        fl_figure_text(&fig, 10, 6, "built-in image encoder: SimCLR pretraining", 2, (fl_rgb){20, 20, 20});
        fl_figure_plot(&fig, 0, 34, 800, 340, &sl, 1, "step", "loss", 0);
        fl_figure_plot(&fig, 0, 380, 800, 340, &st, 1, "step", "top-1", 0);
        snprintf(path, sizeof path, "%s/loss.png", dir);
        rc = fl_figure_write_png(&fig, path, err);
        fl_figure_release(&fig);
    }
    free(x), free(loss), free(top1);
    return rc;
}

int fl_cmd_pretrain_encoder(int argc, char **argv) {
    fl_encoder_pretrain_config cfg = fl_encoder_pretrain_config_default();
    run_state s = {0};
    long v = 0, eval_pairs = 400;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            pretrain_usage(stdout);
            return 0;
        }
        if (!strcmp(f, "--json")) {
            s.json = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora pretrain-encoder: unknown or incomplete argument '%s' (see --help)\n", f);
            return 1;
        }
        const char *val = argv[++i];
        if (!strcmp(f, "--out")) cfg.out_dir = val;
        else if (!strcmp(f, "--steps")) {
            if (parse_long("pretrain-encoder", f, val, 1, 10000000, &v)) return 1;
            cfg.steps = (int)v;
        } else if (!strcmp(f, "--batch")) {
            if (parse_long("pretrain-encoder", f, val, 2, 4096, &v)) return 1;
            cfg.batch = (int)v;
        } else if (!strcmp(f, "--max-images")) {
            if (parse_long("pretrain-encoder", f, val, 2, 100000000, &v)) return 1;
            cfg.max_images = (int)v;
        } else if (!strcmp(f, "--seed")) {
            if (parse_long("pretrain-encoder", f, val, 0, 1L << 62, &v)) return 1;
            cfg.seed = (uint64_t)v;
        } else if (!strcmp(f, "--dim") || !strcmp(f, "--depth") || !strcmp(f, "--heads") || !strcmp(f, "--mlp") ||
                   !strcmp(f, "--image-size") || !strcmp(f, "--patch")) {
            if (parse_long("pretrain-encoder", f, val, 1, 16384, &v)) return 1;
            int *dst = !strcmp(f, "--dim")     ? &cfg.model.dim
                       : !strcmp(f, "--depth") ? &cfg.model.depth
                       : !strcmp(f, "--heads") ? &cfg.model.heads
                       : !strcmp(f, "--mlp")   ? &cfg.model.mlp_hidden
                       : !strcmp(f, "--patch") ? &cfg.model.patch
                                               : &cfg.model.image_size;
            *dst = (int)v;
        } else if (!strcmp(f, "--eval-every")) {
            if (parse_long("pretrain-encoder", f, val, 100, 10000000, &v) || v % 100) {
                if (v % 100) fprintf(stderr, "flashlora pretrain-encoder: --eval-every must be a multiple of 100\n");
                return 1;
            }
            s.eval_every = (int)v;
        } else if (!strcmp(f, "--eval-pairs")) {
            if (parse_long("pretrain-encoder", f, val, 2, 100000, &eval_pairs)) return 1;
        } else {
            fprintf(stderr, "flashlora pretrain-encoder: unknown argument '%s' (see --help)\n", f);
            return 1;
        }
    }
    if (!cfg.out_dir) {
        fprintf(stderr, "flashlora pretrain-encoder: --out is required (see --help)\n");
        return 1;
    }
    fl_threads_init_from_env();
    s.tty = isatty(2) && !s.json;
    s.out_dir = cfg.out_dir;
    fl_error err = {0};
    if (s.eval_every > 0) {
        if (fl_emoji_benchmark_load(NULL, NULL, cfg.model.image_size, (size_t)eval_pairs, &s.bench, &err) == 0)
            s.have_bench = true;
        else
            fprintf(stderr, "flashlora pretrain-encoder: no retrieval scores: %s\n", err.message);
    }
    cfg.on_log = on_log;
    cfg.on_checkpoint = on_checkpoint;
    cfg.arg = &s;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fl_encoder_pretrain_stats st;
    int rc = fl_encoder_pretrain(&cfg, &st, &err);
    if (s.have_bench) fl_emoji_benchmark_free(&s.bench);
    if (s.tty) fputc('\n', stderr);
    if (rc != 0) {
        fprintf(stderr, "flashlora pretrain-encoder: %s\n", err.message);
        return 1;
    }
    if (write_loss_plot(cfg.out_dir, &err) != 0)
        fprintf(stderr, "flashlora pretrain-encoder: no loss plot: %s\n", err.message);
    if (s.json)
        printf("{\"event\":\"done\",\"images\":%zu,\"clipart\":%zu,\"emoji\":%zu,\"skipped\":%zu,\"start_step\":%d,"
               "\"end_step\":%d,\"seconds\":%.1f,\"loss\":%.5f}\n",
               st.images, st.clipart, st.emoji, st.skipped, st.start_step, st.end_step, st.seconds, st.last_loss);
    else
        fprintf(stderr,
                "flashlora pretrain-encoder: %zu images (%zu clip art, %zu emoji, %zu skipped, %zu held out); steps %d -> %d "
                "in %.0f s; loss %.4f%s\n",
                st.images, st.clipart, st.emoji, st.skipped, st.excluded, st.start_step, st.end_step, st.seconds, st.last_loss,
                st.end_step == cfg.steps ? "" : " (stopped; run the same command to resume)");
    return 0;
}

static void retrieval_usage(FILE *f) {
    fprintf(f,
            "usage: flashlora retrieval [--encoder FILE] [--pairs N] [--json]\n\n"
            "Cross-style retrieval: each held-out emoji drawn by Noto (ruby-tanuki-emoji) is matched against\n"
            "the same code points drawn by EmojiOne (ruby-gemojione), and back; prints the encoder's top-1\n"
            "accuracy beside a colour-histogram baseline (4, 8 and 16 bins per channel). --encoder names a\n"
            "built-in-layout file (default: the shipped encoder).\n");
}

int fl_cmd_retrieval(int argc, char **argv) {
    const char *enc_path = NULL;
    long pairs = 0;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            retrieval_usage(stdout);
            return 0;
        }
        if (!strcmp(f, "--json")) {
            json = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora retrieval: unknown or incomplete argument '%s' (see --help)\n", f);
            return 1;
        }
        const char *val = argv[++i];
        if (!strcmp(f, "--encoder")) enc_path = val;
        else if (!strcmp(f, "--pairs")) {
            if (parse_long("retrieval", f, val, 2, 1000000, &pairs)) return 1;
        } else {
            fprintf(stderr, "flashlora retrieval: unknown argument '%s' (see --help)\n", f);
            return 1;
        }
    }
    fl_threads_init_from_env();
    fl_error err = {0};
    char path[4096];
    if (!enc_path) {
        if (fl_builtin_encoder_path(path, sizeof path, &err) != 0) {
            fprintf(stderr, "flashlora retrieval: %s\n", err.message);
            return 1;
        }
        enc_path = path;
    }
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    fl_bvit *m = NULL;
    if (!ctx || fl_bvit_load(ctx, enc_path, &m, &err) != 0) {
        fprintf(stderr, "flashlora retrieval: %s\n", err.message);
        fl_ctx_destroy(ctx);
        return 1;
    }
    fl_emoji_benchmark b;
    int rc = fl_emoji_benchmark_load(NULL, NULL, fl_bvit_get_config(m)->image_size, (size_t)pairs, &b, &err);
    fl_retrieval_score enc;
    if (rc == 0) rc = fl_emoji_benchmark_encoder(&b, m, &enc, &err);
    if (rc != 0) {
        fprintf(stderr, "flashlora retrieval: %s\n", err.message);
        fl_bvit_free(m);
        fl_ctx_destroy(ctx);
        return 1;
    }
    static const int bins[3] = {4, 8, 16};
    fl_retrieval_score hist[3];
    int best = 0;
    for (int k = 0; k < 3; k++) {
        fl_emoji_benchmark_histogram(&b, bins[k], &hist[k]);
        if (hist[k].top1 > hist[best].top1) best = k;
    }
    if (json) {
        printf("{\"pairs\":%zu,\"encoder\":{\"file\":\"%s\",\"sha256\":\"%s\",\"top1\":%.4f,\"top1_noto_to_emojione\":%.4f,"
               "\"top1_emojione_to_noto\":%.4f,\"top5\":%.4f},\"histogram\":[",
               b.n, enc_path, fl_bvit_file_sha256(m), enc.top1, enc.top1_ab, enc.top1_ba, enc.top5);
        for (int k = 0; k < 3; k++)
            printf("%s{\"bins\":%d,\"top1\":%.4f,\"top1_noto_to_emojione\":%.4f,\"top1_emojione_to_noto\":%.4f,\"top5\":%.4f}",
                   k ? "," : "", bins[k], hist[k].top1, hist[k].top1_ab, hist[k].top1_ba, hist[k].top5);
        printf("],\"best_histogram_bins\":%d}\n", bins[best]);
    } else {
        printf("cross-style retrieval over %zu held-out emoji (Noto <-> EmojiOne), top-1 (top-5):\n", b.n);
        printf("  built-in encoder          %.3f (%.3f)   Noto->EmojiOne %.3f, EmojiOne->Noto %.3f\n", enc.top1, enc.top5,
               enc.top1_ab, enc.top1_ba);
        for (int k = 0; k < 3; k++)
            printf("  colour histogram %2d bins  %.3f (%.3f)   Noto->EmojiOne %.3f, EmojiOne->Noto %.3f%s\n", bins[k],
                   hist[k].top1, hist[k].top5, hist[k].top1_ab, hist[k].top1_ba, k == best ? "  (best baseline)" : "");
    }
    fl_emoji_benchmark_free(&b);
    fl_bvit_free(m);
    fl_ctx_destroy(ctx);
    return 0;
}
