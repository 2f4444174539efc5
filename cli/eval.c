/*
 * eval.c — `flashlora eval`: identity evaluation of LoRA adapters (eval/evaluate.h) from the
 * command line, with the JSON result and the HTML report written to a folder.
 *
 *   flashlora eval [--model BASE.safetensors] --adapter FILE --refs DIR [--trigger W --scale S]
 *                  [--adapter FILE --refs DIR ...] [--distractor DIR]... [--distractors PARENT]
 *                  [--prompts FILE] [--seeds 1,2,3,4] [--encoder builtin|builtin:PATH]
 *                  [--width 64 --height 64 --steps 20 --guidance 1 --batch 8 --bootstrap 1000]
 *                  --out DIR [--json]
 *
 * --refs, --trigger and --scale apply to the --adapter before them. The trigger defaults to the
 * adapter file's "trigger" metadata. Distractors are subjects the adapter's images must not be
 * mistaken for: a folder each (--distractor), or every sub-folder of PARENT (--distractors); the
 * other adapters' references are distractors too. Progress is a bar on a terminal, JSON lines on
 * stdout with --json. Errors are one line on stderr and exit status 1.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/device.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "core/threads.h"
#include "eval/evaluate.h"
#include "adapters/lora.h"
#include "eval/report.h"
#include "models/embedded.h"
#include "models/flux.h"

typedef struct eval_args {
    const char *model, *out, *prompts, *encoder, *device;
    const char *adapter[FL_EVAL_MAX_ADAPTERS], *refs[FL_EVAL_MAX_ADAPTERS], *trigger[FL_EVAL_MAX_ADAPTERS];
    float scale[FL_EVAL_MAX_ADAPTERS];
    int n_adapters;
    const char *distractor[FL_EVAL_MAX_DISTRACTORS];
    int n_distractors;
    const char *distractor_parent;
    uint64_t seeds[FL_EVAL_MAX_SEEDS];
    int n_seeds;
    int width, height, steps, batch, bootstrap, max_text_tokens;
    float guidance;
    bool json, no_base;
} eval_args;

static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("flashlora eval: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return -1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: flashlora eval [--model BASE.safetensors] --adapter FILE --refs DIR [adapter options]\n"
            "                      [--adapter FILE --refs DIR ...] --out DIR [options]\n\n"
            "Generates with each adapter and with the base model on the same prompts and seeds, embeds every\n"
            "image and reference, and reports identity accuracy (retrieval among subjects, and verification\n"
            "against the base model at 5%% false accepts, with its AUC), similarity to the references,\n"
            "diversity and copy rate, with 95%% bootstrap intervals over prompts.\n\n"
            "  --model BASE          the base model (default: the embedded model)\n"
            "  --adapter FILE        a LoRA (canonical, kohya or PEFT); up to %d\n"
            "    --refs DIR          its reference images (folder or archive; its training images)\n"
            "    --trigger WORD      replaces [trigger] in the prompts (default: the file's metadata)\n"
            "    --scale S           adapter multiplier (default 1)\n"
            "  --distractor DIR      another subject's images (repeat); --distractors PARENT: each sub-folder\n"
            "  --prompts FILE        one prompt per line with [trigger] (default: 8 built-in prompts)\n"
            "  --seeds LIST          comma-separated seeds (default 1,2,3,4)\n"
            "  --encoder SPEC        builtin (default), builtin:PATH, dinov2:PATH, clip:PATH or face:DIR\n"
            "  --width, --height PX  (default: the model's \"resolution\" metadata, else 64); --steps N (20);\n"
            "                        --guidance G (1); --max-text-tokens N (32)\n"
            "  --batch N             images per sampling batch (default 8)\n"
            "  --bootstrap N         resamples for the intervals (default 1000; 0: none)\n"
            "  --no-base             skip the base model's images (no tau, AUC or base figures)\n"
            "  --device cpu|cuda|auto (default cpu)\n"
            "  --out DIR             writes DIR/evaluation.json and DIR/report.html\n"
            "  --json                progress and the result as JSON lines on stdout\n",
            FL_EVAL_MAX_ADAPTERS);
}

static int parse_int(const char *flag, const char *v, long lo, long hi, int *out) {
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) return bad("%s: '%s' is not an integer in [%ld, %ld]", flag, v, lo, hi);
    *out = (int)x;
    return 0;
}

static int parse_float(const char *flag, const char *v, double lo, double hi, float *out) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !(x >= lo && x <= hi)) return bad("%s: '%s' is not a number in [%g, %g]", flag, v, lo, hi);
    *out = (float)x;
    return 0;
}

static int parse_seeds(const char *v, eval_args *a) {
    a->n_seeds = 0;
    const char *p = v;
    while (*p) {
        if (a->n_seeds == FL_EVAL_MAX_SEEDS) return bad("--seeds: at most %d seeds", FL_EVAL_MAX_SEEDS);
        char *end = NULL;
        errno = 0;
        if (*p == '-') return bad("--seeds: '%s' is not a list of non-negative integers", v);
        unsigned long long s = strtoull(p, &end, 10);
        if (end == p || errno || (*end && *end != ',')) return bad("--seeds: '%s' is not a list of non-negative integers", v);
        a->seeds[a->n_seeds++] = s;
        p = *end ? end + 1 : end;
    }
    if (a->n_seeds == 0) return bad("--seeds: no seed given");
    return 0;
}

static int parse_args(int argc, char **argv, eval_args *a) {
    memset(a, 0, sizeof *a);
    a->encoder = "builtin";
    a->device = "cpu";
    a->width = a->height = 0; /* the model's own size */
    a->steps = 20;
    a->batch = 8;
    a->bootstrap = 1000;
    a->max_text_tokens = 32;
    a->guidance = 1.0f;
    for (int s = 0; s < 4; s++) a->seeds[s] = (uint64_t)s + 1;
    a->n_seeds = 4;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(f, "--json")) {
            a->json = true;
            continue;
        }
        if (!strcmp(f, "--no-base")) {
            a->no_base = true;
            continue;
        }
        static const char *const known[] = {"--model", "--adapter", "--refs", "--trigger", "--scale", "--distractor",
                                            "--distractors", "--prompts", "--seeds", "--encoder", "--width", "--height",
                                            "--steps", "--guidance", "--batch", "--bootstrap", "--out", "--device",
                                            "--max-text-tokens"};
        bool ok = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) ok = ok || !strcmp(f, known[k]);
        if (!ok) return bad("unknown argument '%s' (see --help)", f);
        if (i + 1 >= argc) return bad("%s needs a value (see --help)", f);
        const char *v = argv[++i];
        const int cur = a->n_adapters - 1;
        if (!strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--out")) a->out = v;
        else if (!strcmp(f, "--prompts")) a->prompts = v;
        else if (!strcmp(f, "--encoder")) a->encoder = v;
        else if (!strcmp(f, "--device")) a->device = v;
        else if (!strcmp(f, "--distractors")) a->distractor_parent = v;
        else if (!strcmp(f, "--adapter")) {
            if (a->n_adapters == FL_EVAL_MAX_ADAPTERS) return bad("at most %d --adapter", FL_EVAL_MAX_ADAPTERS);
            a->adapter[a->n_adapters] = v;
            a->scale[a->n_adapters] = 1.0f;
            a->n_adapters++;
        } else if (!strcmp(f, "--refs") || !strcmp(f, "--trigger") || !strcmp(f, "--scale")) {
            if (cur < 0) return bad("%s applies to an --adapter given before it", f);
            if (!strcmp(f, "--refs")) a->refs[cur] = v;
            else if (!strcmp(f, "--trigger")) a->trigger[cur] = v;
            else if (parse_float(f, v, -8, 8, &a->scale[cur])) return -1;
        } else if (!strcmp(f, "--distractor")) {
            if (a->n_distractors == FL_EVAL_MAX_DISTRACTORS) return bad("at most %d --distractor", FL_EVAL_MAX_DISTRACTORS);
            a->distractor[a->n_distractors++] = v;
        } else if (!strcmp(f, "--seeds")) {
            if (parse_seeds(v, a)) return -1;
        } else if (!strcmp(f, "--guidance")) {
            if (parse_float(f, v, 0, 100, &a->guidance)) return -1;
        } else {
            struct { const char *flag; long lo, hi; int *dst; } ints[] = {
                {"--width", 1, 4096, &a->width},        {"--height", 1, 4096, &a->height},
                {"--steps", 1, 1000, &a->steps},        {"--batch", 1, 256, &a->batch},
                {"--bootstrap", 0, 100000, &a->bootstrap}, {"--max-text-tokens", 1, 512, &a->max_text_tokens}};
            for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
                if (!strcmp(f, ints[k].flag) && parse_int(f, v, ints[k].lo, ints[k].hi, ints[k].dst)) return -1;
        }
    }
    if (!a->out) return bad("--out is required (see --help)");
    if (a->n_adapters == 0) return bad("no --adapter given (see --help)");
    for (int k = 0; k < a->n_adapters; k++)
        if (!a->refs[k]) return bad("adapter %s: --refs DIR (its reference images, e.g. its training set) is required", a->adapter[k]);
    return 0;
}

/* ---- progress ----------------------------------------------------------------------------------- */

typedef struct progress_state {
    bool json, tty;
    char last_stage[16];
} progress_state;

static void on_progress(void *arg, const char *stage, int done, int total) {
    progress_state *p = arg;
    if (p->json) {
        printf("{\"event\":\"progress\",\"stage\":\"%s\",\"done\":%d,\"total\":%d}\n", stage, done, total);
        fflush(stdout);
        return;
    }
    if (!p->tty) {
        if (strcmp(p->last_stage, stage)) fprintf(stderr, "flashlora eval: %s (%d)\n", stage, total);
        snprintf(p->last_stage, sizeof p->last_stage, "%s", stage);
        return;
    }
    const int width = 30;
    int fill = total > 0 ? (int)((long)done * width / total) : width;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%-9s [%s] %d/%d", stage, bar, done, total);
    if (done >= total) fputc('\n', stderr);
    fflush(stderr);
}

/* Sub-folders of parent (sorted) as distractor sources. */
static int list_subfolders(const char *parent, char ***out, int *n, fl_error *err) {
    DIR *d = opendir(parent);
    if (!d) return fl_fail(err, FL_ENOTFOUND, "--distractors: cannot read the folder %s", parent);
    char **v = NULL;
    int count = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", parent, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        if (count == FL_EVAL_MAX_DISTRACTORS) {
            closedir(d);
            for (int i = 0; i < count; i++) free(v[i]);
            free(v);
            return fl_fail(err, FL_ELIMIT, "--distractors: more than %d sub-folders in %s", FL_EVAL_MAX_DISTRACTORS, parent);
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            v = realloc(v, (size_t)cap * sizeof *v);
            FL_CHECK(v);
        }
        v[count++] = strdup(p);
    }
    closedir(d);
    for (int i = 1; i < count; i++)
        for (int j = i; j > 0 && strcmp(v[j - 1], v[j]) > 0; j--) {
            char *t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    *out = v;
    *n = count;
    return 0;
}

static const char *base_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    const char *s = path + n;
    while (s > path && s[-1] != '/') s--;
    return s;
}

static void name_of(const char *path, char *out, size_t cap) {
    const char *b = base_name(path);
    size_t n = strlen(b);
    while (n > 0 && b[n - 1] == '/') n--;
    snprintf(out, cap, "%.*s", (int)(n < cap - 1 ? n : cap - 1), b);
}

static int run(const eval_args *a, fl_error *err) {
    fl_device dev;
    if (fl_device_parse(a->device, &dev, err) != 0) return -1;
    if (fl_mkdirs(a->out, err) != 0) return -1;
    /* everything from outside is read and checked before the model loads */
    char **file_prompts = NULL;
    int n_prompts = 0;
    const char *const *prompts = NULL;
    if (a->prompts) {
        if (fl_eval_read_prompts(a->prompts, FL_EVAL_MAX_PROMPTS, &file_prompts, &n_prompts, err) != 0) return -1;
        prompts = (const char *const *)file_prompts;
    } else {
        prompts = fl_eval_default_prompts(&n_prompts);
    }
    fl_eval_refs refs[FL_EVAL_MAX_ADAPTERS];
    fl_eval_refs distr[FL_EVAL_MAX_DISTRACTORS];
    fl_eval_adapter ads[FL_EVAL_MAX_ADAPTERS];
    memset(refs, 0, sizeof refs);
    memset(distr, 0, sizeof distr);
    memset(ads, 0, sizeof ads);
    int n_distr = 0, rc = 0;
    char **sub = NULL;
    int n_sub = 0;
    for (int k = 0; k < a->n_adapters && rc == 0; k++) {
        char name[128];
        name_of(a->adapter[k], name, sizeof name);
        rc = fl_eval_refs_load(name, a->refs[k], &refs[k], err);
        fl_eval_adapter *ad = &ads[k];
        snprintf(ad->label, sizeof ad->label, "%s", name);
        ad->path = a->adapter[k];
        ad->set_id = -1;
        ad->scale = a->scale[k];
        ad->refs = &refs[k];
        ad->refs_in_training = true;
        if (a->trigger[k]) snprintf(ad->trigger, sizeof ad->trigger, "%s", a->trigger[k]);
        else {
            fl_safetensors *st = NULL;
            fl_error e2 = {0};
            if (fl_safetensors_open(a->adapter[k], &st, &e2) == 0) {
                const char *t = fl_safetensors_metadata_get(st, "trigger");
                if (t) snprintf(ad->trigger, sizeof ad->trigger, "%s", t);
                fl_safetensors_close(st);
            }
        }
    }
    if (rc == 0 && a->distractor_parent) rc = list_subfolders(a->distractor_parent, &sub, &n_sub, err);
    if (rc == 0 && a->n_distractors + n_sub > FL_EVAL_MAX_DISTRACTORS)
        rc = fl_fail(err, FL_ELIMIT, "%d distractor subjects: at most %d", a->n_distractors + n_sub, FL_EVAL_MAX_DISTRACTORS);
    for (int k = 0; k < a->n_distractors + n_sub && rc == 0; k++) {
        const char *src = k < a->n_distractors ? a->distractor[k] : sub[k - a->n_distractors];
        char name[128];
        name_of(src, name, sizeof name);
        rc = fl_eval_refs_load(name, src, &distr[n_distr], err);
        if (rc == 0) n_distr++;
    }
    fl_ctx *ctx = NULL;
    fl_flux_model *m = NULL;
    fl_eval_encoder *enc = NULL;
    char model_hash[65] = "";
    if (rc == 0) ctx = fl_ctx_create(dev, err);
    if (rc == 0 && !ctx) rc = -1;
    if (rc == 0) rc = fl_eval_encoder_open(ctx, a->encoder, &enc, err);
    if (rc == 0) rc = fl_flux_load(ctx, a->model, NULL, &m, err);
    if (rc == 0) {
        fl_error e2 = {0};
        if (fl_sha256_file(a->model, model_hash, &e2) != 0) model_hash[0] = '\0';
    }
    progress_state ps = {a->json, isatty(2) && !a->json, ""};
    fl_eval_config cfg = fl_eval_config_default();
    cfg.adapters = ads;
    cfg.n_adapters = a->n_adapters;
    cfg.distractors = distr;
    cfg.n_distractors = n_distr;
    cfg.prompts = prompts;
    cfg.n_prompts = n_prompts;
    cfg.seeds = a->seeds;
    cfg.n_seeds = a->n_seeds;
    cfg.width = a->width;
    cfg.height = a->height;
    cfg.steps = a->steps;
    cfg.guidance = a->guidance;
    cfg.max_text_tokens = a->max_text_tokens;
    cfg.batch = a->batch;
    cfg.bootstrap = a->bootstrap;
    cfg.with_base = !a->no_base;
    cfg.model_label = a->model;
    cfg.model_sha256 = model_hash;
    cfg.progress = on_progress;
    cfg.arg = &ps;
    fl_eval_result res;
    memset(&res, 0, sizeof res);
    for (int k = 0; rc == 0 && k < a->n_adapters; k++) { /* every adapter file loads before anything is said */
        fl_lora *lora = NULL;
        if (fl_lora_load_for_model(ads[k].path, m, &lora, err) != 0) rc = fl_fail_prefix(err, "%s", ads[k].label);
        else if (lora->n_pairs == 0) rc = fl_fail(err, FL_EINVAL, "%s: no key adapts a module of this model", ads[k].label);
        fl_lora_free(lora);
    }
    for (int k = 0; rc == 0 && k < a->n_adapters; k++)
        if (!ads[k].trigger[0])
            fprintf(stderr, "flashlora eval: %s: no trigger word in its metadata and no --trigger: [trigger] is dropped from the prompts\n",
                    ads[k].label);
    if (rc == 0) rc = fl_eval_run(m, enc, &cfg, &res, err);
    char jpath[4096], hpath[4096];
    snprintf(jpath, sizeof jpath, "%s/evaluation.json", a->out);
    snprintf(hpath, sizeof hpath, "%s/report.html", a->out);
    if (rc == 0) {
        char *text = json_dumps(res.json, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        rc = fl_write_file_atomic(jpath, text, strlen(text), err);
        free(text);
    }
    if (rc == 0) rc = fl_eval_report_write(&res, &cfg, hpath, err);
    if (rc == 0) {
        json_t *adj = json_object_get(res.json, "adapters");
        for (size_t k = 0; k < json_array_size(adj); k++) {
            json_t *aj = json_array_get(adj, k), *ia = json_object_get(aj, "identity_accuracy"), *bj = json_object_get(aj, "base");
            if (a->json) {
                json_t *ev = json_pack("{s:s, s:O}", "event", "adapter", "scores", aj);
                json_object_del(json_object_get(ev, "scores"), "images");
                json_object_del(json_object_get(ev, "scores"), "base_images");
                char *t = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
                printf("%s\n", t);
                free(t);
                json_decref(ev);
            } else {
                printf("%s: identity accuracy (retrieval, %lld subjects) %.3f vs base %.3f; verification %.3f (tau %.3f, "
                       "AUC %.3f); similarity %.3f vs base %.3f; diversity %.3f; copy rate %.3f\n",
                       json_string_value(json_object_get(aj, "adapter")),
                       (long long)json_integer_value(json_object_get(aj, "n_distractors")) + 1,
                       json_number_value(json_object_get(ia, "retrieval")), json_number_value(json_object_get(bj, "retrieval")),
                       json_number_value(json_object_get(ia, "verification")), json_number_value(json_object_get(ia, "tau")),
                       json_number_value(json_object_get(ia, "auc")), json_number_value(json_object_get(aj, "similarity")),
                       json_number_value(json_object_get(bj, "similarity")), json_number_value(json_object_get(aj, "diversity")),
                       json_number_value(json_object_get(aj, "copy_rate")));
            }
        }
        if (a->json) {
            json_t *ev = json_pack("{s:s, s:s, s:s, s:O}", "event", "done", "json", jpath, "report", hpath, "summary",
                                   json_object_get(res.json, "summary"));
            char *t = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
            printf("%s\n", t);
            free(t);
            json_decref(ev);
        }
        else printf("%s\n%s\n", jpath, hpath);
    }
    fl_eval_result_free(&res);
    fl_flux_free(m);
    fl_eval_encoder_close(enc);
    fl_ctx_destroy(ctx);
    for (int k = 0; k < a->n_adapters; k++) fl_eval_refs_free(&refs[k]);
    for (int k = 0; k < n_distr; k++) fl_eval_refs_free(&distr[k]);
    for (int k = 0; k < n_sub; k++) free(sub[k]);
    free(sub);
    fl_eval_free_prompts(file_prompts, file_prompts ? n_prompts : 0);
    return rc;
}

int fl_cmd_eval(int argc, char **argv) {
    eval_args a;
    if (parse_args(argc, argv, &a) != 0) return 1;
    fl_threads_init_from_env();
    fl_error err = {0};
    char model[4200];
    if (!a.model) {
        if (fl_default_model("flashlora eval", model, sizeof model, &err) != 0) {
            fprintf(stderr, "flashlora eval: %s\n", err.message);
            return 1;
        }
        a.model = model;
    }
    int native = fl_model_resolution(a.model, 64);
    if (!a.width) a.width = native;
    if (!a.height) a.height = native;
    if (run(&a, &err) != 0) {
        fprintf(stderr, "flashlora eval: %s\n", err.message);
        return 1;
    }
    return 0;
}
