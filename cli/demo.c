/*
 * demo.c — `flashlora demo`: the whole system once, on the embedded model, on a laptop CPU.
 *
 *   flashlora demo [--subject mascot|logo|product] [--images DIR --trigger WORD --prompt TEXT]
 *                  [--steps N] [--state DIR] [--out PATH.png] [--model BASE.safetensors]
 *
 * 1. trains an adapter on a bundled subject (datasets/demo/<subject>, or the user's own --images)
 *    with a progress bar;
 * 2. starts the service — `flashlora serve` as a child process on a loopback port, whose private
 *    redis-server keeps its data under the state directory (a redis-server already running there
 *    is reused) — creates an API key and registers the adapter through the API;
 * 3. sends one generation request naming the adapter and one without it (same prompt, same seeds,
 *    four images each) and times them;
 * 4. writes both grids side by side in one PNG (with the subject's reference images above them),
 *    prints the identity figures of both grids, where the PNG is, and the commands to try next;
 *    then stops everything it started.
 *
 * The identity figure is the evaluation's (eval/metrics.h, as `flashlora eval` reports it): the
 * share of a grid's images whose nearest subject — by mean cosine, with the built-in image
 * encoder, to the adapter's reference images and to each other bundled subject's — is the
 * adapter's own, with the mean cosine to the references beside it.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "cli/commands.h"
#include "core/figure.h"
#include "core/fileio.h"
#include "core/threads.h"
#include "datasets/captions.h"
#include "datasets/imageset.h"
#include "datasets/preprocess.h"
#include "datasets/subjects.h"
#include "eval/encoders.h"
#include "eval/metrics.h"
#include "models/embedded.h"
#include "serve/auth.h"
#include "serve/redis.h"
#include "trainer/run.h"

#define DEMO_IMAGES 4
#define DEMO_SEED 1

static volatile sig_atomic_t stop_signal = 0;

static void on_signal(int sig) {
    stop_signal = sig;
}

typedef struct demo_args {
    const char *subject, *images, *trigger, *prompt, *state, *out, *model;
    int steps, rank, sample_steps;
    float lr, guidance;
} demo_args;

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora demo [--subject mascot|logo|product] [options]\n\n"
            "Trains an adapter on a bundled subject, registers it with a locally started service, asks the\n"
            "service for the same four images with and without the adapter, and writes them side by side.\n"
            "  --subject NAME          mascot (default), logo or product\n"
            "  --images DIR            your own images instead (a folder or archive; .txt sidecars optional)\n"
            "  --trigger WORD          trigger word for --images (default sks)\n"
            "  --prompt TEXT           generation prompt, with [trigger] (default: the subject's)\n"
            "  --steps N               training steps (default 300)\n"
            "  --rank R                adapter rank (default 16)\n"
            "  --lr LR                 learning rate (default 1e-3)\n"
            "  --sample-steps N        sampling steps per image (default 20)\n"
            "  --guidance G            classifier-free guidance scale of both requests (default 3)\n"
            "  --state DIR             service state: private Redis, adapter store (default ./flashlora-demo)\n"
            "  --out PATH.png          the picture (default ./flashlora-demo-<subject>.png)\n"
            "  --model BASE            base model (default: the embedded model)\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_args(int argc, char **argv, demo_args *a) {
    memset(a, 0, sizeof *a);
    a->state = "flashlora-demo";
    a->steps = 300;
    a->rank = 16;
    a->lr = 1e-3f;
    a->sample_steps = 20;
    a->guidance = 3.0f;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora demo: %s needs a value (see --help)\n", f);
            return -1;
        }
        const char *v = argv[++i];
        const char **str = !strcmp(f, "--subject")  ? &a->subject
                           : !strcmp(f, "--images") ? &a->images
                           : !strcmp(f, "--trigger") ? &a->trigger
                           : !strcmp(f, "--prompt") ? &a->prompt
                           : !strcmp(f, "--state")  ? &a->state
                           : !strcmp(f, "--out")    ? &a->out
                           : !strcmp(f, "--model")  ? &a->model
                                                    : NULL;
        if (str) {
            *str = v;
            continue;
        }
        char *end = NULL;
        errno = 0;
        double x = strtod(v, &end);
        bool number = end != v && !*end && !errno;
        if (!strcmp(f, "--steps") && number && x >= 1 && x <= 5000) a->steps = (int)x;
        else if (!strcmp(f, "--rank") && number && x >= 1 && x <= 128) a->rank = (int)x;
        else if (!strcmp(f, "--sample-steps") && number && x >= 1 && x <= 100) a->sample_steps = (int)x;
        else if (!strcmp(f, "--lr") && number && x > 0 && x <= 1) a->lr = (float)x;
        else if (!strcmp(f, "--guidance") && number && x >= 0 && x <= 20) a->guidance = (float)x;
        else if (!strcmp(f, "--steps") || !strcmp(f, "--rank") || !strcmp(f, "--lr") || !strcmp(f, "--sample-steps") ||
                 !strcmp(f, "--guidance")) {
            fprintf(stderr, "flashlora demo: %s: '%s' is out of range (see --help)\n", f, v);
            return -1;
        } else {
            fprintf(stderr, "flashlora demo: unknown argument '%s' (see --help)\n", f);
            return -1;
        }
    }
    if (a->subject && a->images) {
        fprintf(stderr, "flashlora demo: --subject and --images exclude each other\n");
        return -1;
    }
    if (a->trigger && (!*a->trigger || strpbrk(a->trigger, " \t\r\n"))) {
        fprintf(stderr, "flashlora demo: --trigger must be one word\n");
        return -1;
    }
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------------------------- */

typedef struct http_buf {
    char *data;
    size_t len;
} http_buf;

static size_t http_collect(char *ptr, size_t size, size_t nmemb, void *arg) {
    http_buf *b = arg;
    size_t n = size * nmemb;
    if (b->len + n > (64u << 20)) return 0; /* a demo response is never this large */
    b->data = fl_xrealloc(b->data, b->len + n + 1);
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* One request; body is JSON (or NULL), mime a multipart form (or NULL). The response body is
 * parsed as JSON into *reply when it is JSON. */
static int http_call(const char *method, const char *url, const char *key, const char *body, curl_mime *mime,
                     long timeout_s, long *status, json_t **reply, fl_error *err) {
    CURL *c = curl_easy_init();
    if (!c) return fl_fail(err, FL_ENOMEM, "curl_easy_init failed");
    struct curl_slist *headers = NULL;
    char auth[FL_API_KEY_MAX + 32];
    if (key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        headers = curl_slist_append(headers, auth);
    }
    if (body) headers = curl_slist_append(headers, "Content-Type: application/json");
    http_buf buf = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, http_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &buf);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (mime) curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    CURLcode rc = curl_easy_perform(c);
    *status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        free(buf.data);
        return fl_fail(err, FL_EUNAVAILABLE, "%s %s: %s", method, url, curl_easy_strerror(rc));
    }
    if (reply) *reply = buf.data ? json_loads(buf.data, 0, NULL) : NULL;
    free(buf.data);
    return 0;
}

/* The message of an {"error": {"message"}} reply, or a placeholder. */
static const char *error_message(json_t *reply) {
    const char *m = json_string_value(json_object_get(json_object_get(reply, "error"), "message"));
    return m ? m : "(no message)";
}

/* ---- base64 ------------------------------------------------------------------------------------ */

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static unsigned char *b64_decode(const char *s, size_t *out_len) {
    size_t n = strlen(s);
    unsigned char *out = fl_xmalloc(n / 4 * 3 + 3);
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) continue; /* padding, whitespace */
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    *out_len = o;
    return out;
}

/* ---- the service child ------------------------------------------------------------------------- */

typedef struct service_child {
    pid_t pid;
    int port;
} service_child;

/* Starts `flashlora serve` (this executable) with its output in state/serve.log; waits for the
 * port file (up to 60 s). */
static int service_start(const char *state, const char *model, const char *redis, service_child *sc, fl_error *err) {
    char port_file[4200], log_path[4200];
    snprintf(port_file, sizeof port_file, "%s/serve.port", state);
    snprintf(log_path, sizeof log_path, "%s/serve.log", state);
    unlink(port_file);
    int logfd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (logfd < 0) return fl_fail(err, FL_EIO, "%s: %s", log_path, strerror(errno));
    const char *argv[20];
    int n = 0;
    argv[n++] = "flashlora";
    argv[n++] = "serve";
    argv[n++] = "--model", argv[n++] = model;
    argv[n++] = "--state", argv[n++] = state;
    argv[n++] = "--listen", argv[n++] = "127.0.0.1:0";
    argv[n++] = "--port-file", argv[n++] = port_file;
    argv[n++] = "--workers", argv[n++] = "1";
    argv[n++] = "--batch-wait-ms", argv[n++] = "0";
    if (redis) argv[n++] = "--redis", argv[n++] = redis;
    argv[n] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(logfd);
        return fl_fail(err, FL_EIO, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the demo */
        if (getppid() != parent) _exit(1);
        dup2(logfd, STDOUT_FILENO);
        dup2(logfd, STDERR_FILENO);
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    close(logfd);
    sc->pid = pid;
    sc->port = 0;
    for (int i = 0; i < 600 && !stop_signal; i++) {
        unsigned char *text = NULL;
        size_t len = 0;
        fl_error ignore = {0};
        if (fl_read_file(port_file, 64, &text, &len, &ignore) == 0) {
            sc->port = atoi((char *)text);
            free(text);
            if (sc->port > 0) return 0;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            sc->pid = 0;
            return fl_fail(err, FL_EUNAVAILABLE, "the service exited during start-up (see %s)", log_path);
        }
        usleep(100 * 1000);
    }
    return fl_fail(err, FL_EUNAVAILABLE, "the service did not start within 60 s (see %s)", log_path);
}

static void service_stop(service_child *sc) {
    if (sc->pid <= 0) return;
    kill(sc->pid, SIGTERM);
    for (int i = 0; i < 150; i++) { /* 15 s for the service and its redis-server to stop */
        int status;
        if (waitpid(sc->pid, &status, WNOHANG) == sc->pid) {
            sc->pid = 0;
            return;
        }
        usleep(100 * 1000);
    }
    kill(sc->pid, SIGKILL);
    waitpid(sc->pid, NULL, 0);
    sc->pid = 0;
}

typedef struct grid {
    fl_image images[DEMO_IMAGES];
    int count;
    double seconds;
} grid;

/* ---- identity ------------------------------------------------------------------------------------ */

/* The evaluation's measure (eval/metrics.h) on the demo's two grids: identity accuracy by
 * retrieval — the share of images whose nearest subject, by mean cosine to each subject's images
 * with the built-in encoder, is the adapter's own — among the adapter's references and the other
 * bundled subjects, and the mean cosine to the references. */
typedef struct identity {
    bool measured;
    char why[512];   /* when not measured */
    int subjects;    /* the adapter's own and the distractors */
    double retrieval[2], similarity[2]; /* [0] base, [1] adapter */
} identity;

static int embed_images(fl_eval_encoder *enc, const fl_image *images, int n, float **out, fl_error *err) {
    *out = fl_xmalloc((size_t)(n > 0 ? n : 1) * (size_t)fl_eval_encoder_dim(enc) * sizeof(float));
    return fl_eval_encoder_embed(enc, images, n, *out, NULL, err);
}

static int embed_set(fl_eval_encoder *enc, const fl_imageset *set, float **out, fl_error *err) {
    fl_image *images = fl_xmalloc((set->count ? set->count : 1) * sizeof *images);
    for (size_t i = 0; i < set->count; i++) images[i] = set->items[i].image;
    int rc = embed_images(enc, images, (int)set->count, out, err);
    free(images);
    return rc;
}

static void measure_identity(const fl_imageset *refs, const fl_subject *own, const grid grids[2], identity *id) {
    memset(id, 0, sizeof *id);
    fl_error err = {0};
    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), &err);
    fl_eval_encoder *enc = NULL;
    if (!ctx || fl_eval_encoder_open(ctx, "builtin", &enc, &err) != 0) {
        snprintf(id->why, sizeof id->why, "%s", err.message);
        fl_ctx_destroy(ctx);
        return;
    }
    enum { MAX_SUBJECTS = 8 };
    float *emb[MAX_SUBJECTS] = {0}, *gen[2] = {0};
    fl_eval_embeddings subjects[MAX_SUBJECTS];
    int n_subjects = 0, rc = embed_set(enc, refs, &emb[0], &err);
    subjects[n_subjects++] = (fl_eval_embeddings){emb[0], (int)refs->count};
    /* the distractors: every other bundled subject */
    for (size_t i = 0; rc == 0 && i < fl_subject_count() && n_subjects < MAX_SUBJECTS; i++) {
        const fl_subject *s = fl_subject_at(i);
        if (s == own) continue;
        char rel[256], dir[4200];
        snprintf(rel, sizeof rel, "%s/%s", FL_DEMO_SUBJECTS_REL, s->name);
        fl_imageset_limits limits = fl_imageset_limits_default();
        limits.min_images = 1;
        fl_imageset *set = NULL;
        rc = fl_data_path(rel, dir, sizeof dir, &err);
        if (rc == 0) rc = fl_imageset_load(dir, &limits, &set, &err);
        if (rc == 0) rc = embed_set(enc, set, &emb[n_subjects], &err);
        if (rc == 0) subjects[n_subjects] = (fl_eval_embeddings){emb[n_subjects], (int)set->count};
        n_subjects++;
        fl_imageset_free(set);
    }
    for (int g = 0; g < 2 && rc == 0; g++) rc = embed_images(enc, grids[g].images, grids[g].count, &gen[g], &err);
    if (rc == 0) {
        int prompt_of[DEMO_IMAGES] = {0};
        fl_eval_score_input in = {.dim = fl_eval_encoder_dim(enc),
                                  .gen = {gen[1], grids[1].count},
                                  .base = {gen[0], grids[0].count},
                                  .gen_prompt = prompt_of,
                                  .base_prompt = prompt_of,
                                  .n_prompts = 1,
                                  .subjects = subjects,
                                  .n_subjects = n_subjects,
                                  .train = subjects[0]};
        fl_eval_scores sc;
        memset(&sc, 0, sizeof sc);
        rc = fl_eval_score(&in, &sc, &err);
        if (rc == 0) {
            id->measured = true;
            id->subjects = n_subjects;
            id->retrieval[0] = sc.base_retrieval, id->retrieval[1] = sc.retrieval;
            id->similarity[0] = sc.sim_base, id->similarity[1] = sc.sim_gen;
        }
        fl_eval_scores_clear(&sc);
    }
    if (rc != 0) snprintf(id->why, sizeof id->why, "%s", err.message);
    for (int i = 0; i < n_subjects; i++) free(emb[i]);
    free(gen[0]), free(gen[1]);
    fl_eval_encoder_close(enc);
    fl_ctx_destroy(ctx);
}

/* ---- the picture ---------------------------------------------------------------------------------- */


static void to_signed(const fl_image *img, float *out) {
    for (size_t i = 0; i < (size_t)img->width * img->height * 3; i++) out[i] = 2.0f * img->pixels[i] - 1.0f;
}

static int write_picture(const char *path, const char *title, const char *prompt, const fl_imageset *refs,
                         const grid *base, const grid *tuned, const identity *id, const char *adapter_name,
                         fl_error *err) {
    const int img = base->images[0].width, scale = img < 192 ? 192 / img : 1, cell = img * scale, gap = 8;
    const int panel = 2 * cell + gap;
    const int margin = 16, width = 2 * panel + 3 * margin + 8;
    const int ref_n = refs->count < 8 ? (int)refs->count : 8, ref_side = (width - 2 * margin - 7 * gap) / 8;
    const int top = 44, refs_y = top + 18, panels_y = refs_y + ref_side + 40, height = panels_y + 20 + panel + 56;
    fl_figure fig;
    if (fl_figure_init(&fig, width, height, (fl_rgb){255, 255, 255}, err) != 0) return -1;
    const fl_rgb ink = {25, 25, 25}, soft = {90, 90, 90};
    fl_figure_text(&fig, margin, 10, title, 2, ink);
    char line[512];
    snprintf(line, sizeof line, "reference images the adapter was trained on (%zu in all):", refs->count);
    fl_figure_text(&fig, margin, top, line, 1, soft);
    float *buf = fl_xmalloc((size_t)(ref_side > img ? ref_side : img) * (ref_side > img ? ref_side : img) * 3 * sizeof(float));
    int rc = 0;
    for (int i = 0; i < ref_n && rc == 0; i++) {
        fl_image small;
        rc = fl_image_resize_crop(&refs->items[i].image, ref_side, ref_side, &small, err);
        if (rc != 0) break;
        to_signed(&small, buf);
        fl_figure_blit(&fig, buf, ref_side, ref_side, margin + i * (ref_side + gap), refs_y, 1);
        fl_image_release(&small);
    }
    snprintf(line, sizeof line, "prompt \"%s\", seeds %d-%d, the same request with and without the adapter:", prompt,
             DEMO_SEED, DEMO_SEED + DEMO_IMAGES - 1);
    fl_figure_text(&fig, margin, panels_y - 22, line, 1, soft);
    const grid *grids[2] = {base, tuned};
    for (int g = 0; g < 2 && rc == 0; g++) {
        int x0 = margin + g * (panel + margin + 8);
        if (g == 0) snprintf(line, sizeof line, "base model (no adapter)");
        else snprintf(line, sizeof line, "with adapter %s", adapter_name);
        fl_figure_text(&fig, x0, panels_y, line, 1, ink);
        for (int i = 0; i < grids[g]->count; i++) {
            to_signed(&grids[g]->images[i], buf);
            fl_figure_blit(&fig, buf, img, img, x0 + (i % 2) * (cell + gap), panels_y + 16 + (i / 2) * (cell + gap), scale);
        }
        if (id->measured) snprintf(line, sizeof line, "identity %.2f", id->retrieval[g]);
        else snprintf(line, sizeof line, "identity not measured");
        fl_figure_text(&fig, x0, panels_y + 20 + panel + 4, line, 2, g == 0 ? soft : (fl_rgb){20, 110, 40});
    }
    if (id->measured)
        snprintf(line, sizeof line,
                 "identity: share of images nearest to the references among %d subjects (built-in image encoder)",
                 id->subjects);
    else
        snprintf(line, sizeof line, "identity not measured: %.90s", id->why);
    fl_figure_text(&fig, margin, height - 14, line, 1, soft);
    free(buf);
    if (rc == 0) rc = fl_figure_write_png(&fig, path, err);
    fl_figure_release(&fig);
    return rc;
}

/* ---- training ------------------------------------------------------------------------------------ */

typedef struct train_view {
    double t0;
    bool tty;
} train_view;

static void train_event(void *arg, json_t *ev) {
    train_view *v = arg;
    const char *kind = json_string_value(json_object_get(ev, "event"));
    if (!kind) return;
    if (!strcmp(kind, "rejected")) {
        fprintf(stderr, "      skipped %s: %s\n", json_string_value(json_object_get(ev, "name")),
                json_string_value(json_object_get(ev, "reason")));
        return;
    }
    if (strcmp(kind, "progress")) return;
    int step = (int)json_integer_value(json_object_get(ev, "step"));
    int total = (int)json_integer_value(json_object_get(ev, "total"));
    double loss = json_real_value(json_object_get(ev, "loss"));
    double rate = json_real_value(json_object_get(ev, "it_per_s")), eta = json_real_value(json_object_get(ev, "eta_s"));
    if (!v->tty) {
        if (step % 50 == 0 || step == total)
            fprintf(stderr, "      step %d/%d loss %.4f %.1f it/s\n", step, total, loss, rate);
        return;
    }
    int width = 30, filled = (int)((double)step / total * width);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[width] = '\0';
    fprintf(stderr, "\r      [%s] %d/%d loss %.4f %.1f it/s ETA %2.0f s ", bar, step, total, loss, rate, eta);
    if (step == total) fputc('\n', stderr);
    fflush(stderr);
}

static bool train_stop(void *arg) {
    (void)arg;
    return stop_signal != 0;
}

/* ---- the demo ------------------------------------------------------------------------------------ */

typedef struct demo_state {
    service_child svc;
    fl_redis *redis;
    fl_imageset *refs;
    grid grids[2];
    identity identity;
} demo_state;

static int generate_grid(int port, const char *key, const char *prompt, const char *adapter, int size,
                         int sample_steps, float guidance, grid *g, fl_error *err) {
    json_t *req = json_pack("{s:s, s:i, s:i, s:i, s:f, s:i, s:i, s:b}", "prompt", prompt, "width", size, "height", size,
                            "steps", sample_steps, "guidance", (double)guidance, "seed", DEMO_SEED, "num_images",
                            DEMO_IMAGES, "sync", 1);
    if (adapter) json_object_set_new(req, "adapters", json_pack("[{s:s, s:f}]", "id", adapter, "scale", 1.0));
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/generations", port);
    long status = 0;
    json_t *reply = NULL;
    double t0 = now_s();
    int rc = http_call("POST", url, key, body, NULL, 300, &status, &reply, err);
    g->seconds = now_s() - t0;
    free(body);
    if (rc == 0 && status != 200)
        rc = fl_fail(err, FL_EUNAVAILABLE, "generation request: HTTP %ld: %s", status, error_message(reply));
    json_t *images = json_object_get(reply, "images");
    for (size_t i = 0; rc == 0 && i < json_array_size(images) && g->count < DEMO_IMAGES; i++) {
        const char *b64 = json_string_value(json_object_get(json_array_get(images, i), "png_base64"));
        if (!b64) {
            rc = fl_fail(err, FL_EINVAL, "generation reply: image %zu has no png_base64", i);
            break;
        }
        size_t len = 0;
        unsigned char *png = b64_decode(b64, &len);
        rc = fl_image_decode(png, len, 4096 * 4096, 4096, &g->images[g->count], err);
        free(png);
        if (rc == 0) g->count++;
    }
    if (rc == 0 && g->count != DEMO_IMAGES)
        rc = fl_fail(err, FL_EINVAL, "generation reply: %d images instead of %d", g->count, DEMO_IMAGES);
    json_decref(reply);
    return rc;
}

static int register_adapter(int port, const char *key, const char *path, const char *name, const char *trigger,
                            fl_error *err) {
    char url[512];
    for (int attempt = 0; attempt < 2; attempt++) {
        CURL *c = curl_easy_init();
        if (!c) return fl_fail(err, FL_ENOMEM, "curl_easy_init failed");
        curl_mime *mime = curl_mime_init(c);
        curl_mimepart *part = curl_mime_addpart(mime);
        curl_mime_name(part, "file");
        curl_mime_filedata(part, path);
        part = curl_mime_addpart(mime);
        curl_mime_name(part, "name");
        curl_mime_data(part, name, CURL_ZERO_TERMINATED);
        part = curl_mime_addpart(mime);
        curl_mime_name(part, "trigger_word");
        curl_mime_data(part, trigger, CURL_ZERO_TERMINATED);
        snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/adapters", port);
        long status = 0;
        json_t *reply = NULL;
        int rc = http_call("POST", url, key, NULL, mime, 120, &status, &reply, err);
        curl_mime_free(mime);
        curl_easy_cleanup(c);
        if (rc != 0) return -1;
        if (status == 201) {
            json_decref(reply);
            return 0;
        }
        if (status == 409 && attempt == 0) {
            /* Registered by an earlier run: replace it with this training's adapter. */
            json_decref(reply);
            snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/adapters/%s", port, name);
            reply = NULL;
            if (http_call("DELETE", url, key, NULL, NULL, 60, &status, &reply, err) != 0) return -1;
            json_decref(reply);
            continue;
        }
        rc = fl_fail(err, FL_EINVAL, "registering the adapter: HTTP %ld: %s", status, error_message(reply));
        json_decref(reply);
        return rc;
    }
    return fl_fail(err, FL_ECONFLICT, "the adapter name %s stays taken", name);
}

static int run(const demo_args *a, demo_state *ds, fl_error *err) {
    double t_start = now_s();
    char model[4200], images[4200], state_abs[4096], adapter_path[4300], name[64], out[4200];
    const fl_subject *subject = NULL;
    if (a->model) snprintf(model, sizeof model, "%s", a->model);
    else if (fl_default_model("flashlora demo", model, sizeof model, err) != 0) return -1;
    if (a->images) {
        snprintf(images, sizeof images, "%s", a->images);
    } else {
        subject = fl_subject_find(a->subject ? a->subject : "mascot");
        if (!subject) return fl_fail(err, FL_EINVAL, "no bundled subject named '%s' (mascot, logo, product)", a->subject);
        char rel[256];
        snprintf(rel, sizeof rel, "%s/%s", FL_DEMO_SUBJECTS_REL, subject->name);
        if (fl_data_path(rel, images, sizeof images, err) != 0) return -1;
    }
    const char *trigger = a->trigger ? a->trigger : subject ? subject->trigger : "sks";
    const char *prompt_template = a->prompt ? a->prompt : subject ? subject->prompt : "a photo of [trigger]";
    char *prompt = fl_caption_resolve(prompt_template, trigger, prompt_template, false);
    snprintf(name, sizeof name, "demo-%s", subject ? subject->name : "images");
    if (a->out) snprintf(out, sizeof out, "%s", a->out);
    else snprintf(out, sizeof out, "flashlora-demo-%s.png", subject ? subject->name : "images");
    if (fl_mkdirs(a->state, err) != 0) {
        free(prompt);
        return -1;
    }
    if (!realpath(a->state, state_abs)) {
        free(prompt);
        return fl_fail(err, FL_EIO, "state directory %s: %s", a->state, strerror(errno));
    }
    snprintf(adapter_path, sizeof adapter_path, "%s/%s.safetensors", state_abs, name);
    int size = fl_model_resolution(model, 64); /* train and generate at the model's own size */

    /* 1. train */
    fl_imageset_limits limits = fl_imageset_limits_default();
    limits.min_images = 1;
    int rc = fl_imageset_load(images, &limits, &ds->refs, err);
    if (rc == 0)
        fprintf(stderr, "[1/4] training adapter %s on %zu images (%s), trigger \"%s\", %d steps\n", name,
                ds->refs->count, images, trigger, a->steps);
    fl_train_result tr = {0};
    if (rc == 0) {
        fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), err);
        fl_flux_model *m = NULL;
        if (!ctx) rc = -1;
        if (rc == 0) rc = fl_flux_load(ctx, model, NULL, &m, err);
        if (rc == 0) {
            fl_train_job job = fl_train_job_default();
            job.images = images;
            job.trigger = trigger;
            job.min_images = 1;
            job.out = adapter_path;
            job.resolution = size;
            job.cfg.steps = a->steps;
            job.cfg.rank = a->rank;
            job.cfg.alpha = (float)a->rank;
            job.cfg.lr = a->lr;
            job.cfg.flip = false; /* logos and lettering do not mirror */
            train_view view = {now_s(), isatty(STDERR_FILENO) != 0};
            fl_train_hooks hooks = {train_event, train_stop, &view, NULL};
            rc = fl_train_run(m, &job, &hooks, &tr, err);
            if (rc == 0)
                fprintf(stderr, "      trained in %.1f s (%d steps, final loss %.4f)\n", tr.training_s, tr.steps,
                        tr.final_loss);
        }
        fl_flux_free(m);
        fl_ctx_destroy(ctx);
    }
    if (rc == 0 && stop_signal) rc = fl_fail(err, FL_EUNAVAILABLE, "interrupted");

    /* 2. the service: reuse a redis-server already running on the state directory */
    char redis_addr[4300] = "";
    const char *reuse = NULL;
    if (rc == 0) {
        snprintf(redis_addr, sizeof redis_addr, "unix:%s/redis/redis.sock", state_abs);
        fl_redis *probe = NULL;
        fl_error ignore = {0};
        if (fl_redis_connect(redis_addr, &probe, &ignore) == 0) {
            redisReply *pong = fl_redis_cmd(probe, &ignore, "PING");
            if (pong) {
                reuse = redis_addr;
                freeReplyObject(pong);
            }
            fl_redis_close(probe);
        }
        rc = service_start(state_abs, model, reuse, &ds->svc, err);
    }
    if (rc == 0) {
        fprintf(stderr, "[2/4] service on http://127.0.0.1:%d, %s redis-server under %s/redis\n", ds->svc.port,
                reuse ? "reusing the" : "private", a->state);
        rc = fl_redis_connect(redis_addr, &ds->redis, err);
    }
    char key[FL_API_KEY_MAX];
    if (rc == 0) rc = fl_auth_create_key(ds->redis, "demo", "flashlora demo", key, err);
    if (rc == 0) rc = register_adapter(ds->svc.port, key, adapter_path, name, trigger, err);
    if (rc == 0) fprintf(stderr, "      registered %s for tenant \"demo\"\n", name);

    /* 3. the same request with and without the adapter */
    if (rc == 0) {
        fprintf(stderr,
                "[3/4] generating %d images of \"%s\" with and without the adapter (%dx%d, %d steps, guidance %g)\n",
                DEMO_IMAGES, prompt, size, size, a->sample_steps, (double)a->guidance);
        rc = generate_grid(ds->svc.port, key, prompt, name, size, a->sample_steps, a->guidance, &ds->grids[1], err);
    }
    if (rc == 0) rc = generate_grid(ds->svc.port, key, prompt, NULL, size, a->sample_steps, a->guidance, &ds->grids[0], err);
    if (rc == 0)
        fprintf(stderr, "      with adapter %.2f s, base %.2f s (4-image grids through the HTTP API)\n",
                ds->grids[1].seconds, ds->grids[0].seconds);

    /* 4. the picture and the figures */
    if (rc == 0) {
        measure_identity(ds->refs, subject, ds->grids, &ds->identity);
        char title[256];
        snprintf(title, sizeof title, "flashlora demo: %s \"%s\"", subject ? subject->class_words : "your images", trigger);
        if (rc == 0)
            rc = write_picture(out, title, prompt, ds->refs, &ds->grids[0], &ds->grids[1], &ds->identity, name, err);
    }
    if (rc == 0) {
        char abs_out[4200];
        if (!realpath(out, abs_out)) snprintf(abs_out, sizeof abs_out, "%s", out);
        fprintf(stderr, "[4/4] wrote %s\n\n", abs_out);
        const identity *id = &ds->identity;
        if (id->measured)
            printf("identity accuracy (retrieval among %d subjects, built-in encoder): base %.2f, adapter %.2f; mean "
                   "cosine to the %zu references: base %.2f, adapter %.2f\n",
                   id->subjects, id->retrieval[0], id->retrieval[1], ds->refs->count, id->similarity[0],
                   id->similarity[1]);
        else
            printf("identity not measured: %s\n", id->why);
        printf("timings on this machine: adapter training %.1f s (%d steps), 4-image grid %.2f s with the adapter, "
               "%.2f s without; demo %.0f s in all\n",
               tr.training_s, tr.steps, ds->grids[1].seconds, ds->grids[0].seconds, now_s() - t_start);
        printf("picture: %s\n\n", abs_out);
        printf("Try next (the adapter and the key stay registered in %s):\n", a->state);
        printf("  build/cli/flashlora serve --state %s &\n", a->state);
        printf("  KEY=%s\n", key);
        printf("  curl -s -H \"Authorization: Bearer $KEY\" http://127.0.0.1:8080/v1/adapters\n");
        printf("  curl -s -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' \\\n"
               "       -d '{\"prompt\": \"%s\", \"adapters\": [{\"id\": \"%s\", \"scale\": 1.0}],\n"
               "            \"num_images\": 4, \"seed\": 7, \"sync\": true}' http://127.0.0.1:8080/v1/generations\n",
               prompt, name);
        printf("  build/cli/flashlora demo --subject logo      # or product, or --images DIR for your own\n");
    }
    free(prompt);
    return rc;
}

int fl_cmd_demo(int argc, char **argv) {
    demo_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    fl_threads_init_from_env();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    demo_state ds;
    memset(&ds, 0, sizeof ds);
    fl_error err = {0};
    int rc = run(&a, &ds, &err);
    /* Stop everything started, success or not. */
    fl_redis_close(ds.redis);
    service_stop(&ds.svc);
    for (int g = 0; g < 2; g++)
        for (int i = 0; i < ds.grids[g].count; i++) fl_image_release(&ds.grids[g].images[i]);
    fl_imageset_free(ds.refs);
    curl_global_cleanup();
    if (rc != 0) {
        fprintf(stderr, "\nflashlora demo: %s\n", err.message);
        return stop_signal ? 128 + (int)stop_signal : 1;
    }
    return 0;
}
