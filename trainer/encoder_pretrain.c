/*
 * encoder_pretrain.c — the built-in encoder's self-supervised training (trainer/encoder_pretrain.h):
 * rendering the packaged clip art into canvases with a coverage mask, the random views, the
 * contrastive training loop with AdamW, and its checkpoints.
 */
#include "trainer/encoder_pretrain.h"

#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/clock.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "datasets/emoji_styles.h"
#include "datasets/subjects.h"
#include "datasets/image.h"
#include "datasets/preprocess.h"
#include "kernels/ops.h"

#define CKPT_FORMAT "flashlora.encoder-checkpoint.v1"
#define SOURCE_MAX_BYTES (64u << 20)
#define SOURCE_MAX_PIXELS (16LL << 20)
#define SOURCE_FIT_SIDE 512
#define WHITE_LEVEL 0.94f

fl_encoder_pretrain_config fl_encoder_pretrain_config_default(void) {
    fl_encoder_pretrain_config c;
    memset(&c, 0, sizeof c);
    c.model = fl_bvit_config_default();
    c.steps = 3000;
    c.batch = 64;
    c.lr = 1e-3f;
    c.min_lr = 1e-5f;
    c.weight_decay = 0.05f;
    c.temperature = 0.2f;
    c.warmup_steps = 200;
    c.clip_norm = 1.0f;
    c.seed = 1;
    c.log_every = 10;
    c.checkpoint_every = 100;
    c.canvas = 72;
    return c;
}

/* ---- rendering the sources ---------------------------------------------------------------------- */

void fl_clip_source_release(fl_clip_source *s) {
    if (!s) return;
    free(s->rgb);
    free(s->alpha);
    memset(s, 0, sizeof *s);
}

int fl_clip_source_render_image(const float *rgb, int w, int h, int side, int margin, fl_clip_source *out,
                                fl_error *err) {
    memset(out, 0, sizeof *out);
    if (side < 4 || margin < 0 || side - 2 * margin < 2) return fl_fail(err, FL_EINVAL, "canvas %d with margin %d", side, margin);
    const size_t np = (size_t)w * (size_t)h;
    /* background: near-white pixels 4-connected to the border (a flood fill) */
    unsigned char *bg = fl_xcalloc(np, 1);
    int *stack = fl_xmalloc(np * sizeof(int));
    size_t top = 0;
#define WHITE(i) (rgb[3 * (size_t)(i)] >= WHITE_LEVEL && rgb[3 * (size_t)(i) + 1] >= WHITE_LEVEL && rgb[3 * (size_t)(i) + 2] >= WHITE_LEVEL)
#define PUSH(i)                                                                                    \
    do {                                                                                           \
        if (!bg[i] && WHITE(i)) {                                                                  \
            bg[i] = 1;                                                                             \
            stack[top++] = (int)(i);                                                               \
        }                                                                                          \
    } while (0)
    for (int x = 0; x < w; x++) {
        PUSH(x);
        PUSH((size_t)(h - 1) * w + x);
    }
    for (int y = 0; y < h; y++) {
        PUSH((size_t)y * w);
        PUSH((size_t)y * w + (w - 1));
    }
    while (top > 0) {
        int i = stack[--top], x = i % w, y = i / w;
        if (x > 0) PUSH(i - 1);
        if (x + 1 < w) PUSH(i + 1);
        if (y > 0) PUSH(i - w);
        if (y + 1 < h) PUSH(i + w);
    }
#undef PUSH
#undef WHITE
    free(stack);
    int x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (!bg[(size_t)y * w + x]) {
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
                if (y < y0) y0 = y;
                if (y > y1) y1 = y;
            }
    if (x1 < 0) {
        free(bg);
        return fl_fail(err, FL_EINVAL, "blank image");
    }
    const int cw = x1 - x0 + 1, ch = y1 - y0 + 1;
    fl_image crop = {0}, mask = {0}, rc = {0}, rm = {0};
    int rcode = fl_image_init(&crop, cw, ch, err);
    if (rcode == 0) rcode = fl_image_init(&mask, cw, ch, err);
    if (rcode == 0) {
        for (int y = 0; y < ch; y++)
            for (int x = 0; x < cw; x++) {
                size_t s = (size_t)(y + y0) * w + (size_t)(x + x0), d = (size_t)y * cw + (size_t)x;
                for (int c = 0; c < 3; c++) {
                    crop.pixels[3 * d + c] = rgb[3 * s + c];
                    mask.pixels[3 * d + c] = bg[s] ? 0.0f : 1.0f;
                }
            }
        const int fit = side - 2 * margin, longer = cw > ch ? cw : ch;
        int tw = (int)lround((double)cw * fit / longer), th = (int)lround((double)ch * fit / longer);
        tw = tw < 1 ? 1 : tw;
        th = th < 1 ? 1 : th;
        rcode = fl_image_resample(&crop, tw, th, &rc, err);
        if (rcode == 0) rcode = fl_image_resample(&mask, tw, th, &rm, err);
        if (rcode == 0) {
            out->side = side;
            out->rgb = fl_xmalloc((size_t)side * side * 3);
            out->alpha = fl_xcalloc((size_t)side * side, 1);
            memset(out->rgb, 255, (size_t)side * side * 3);
            const int ox = (side - tw) / 2, oy = (side - th) / 2;
            for (int y = 0; y < th; y++)
                for (int x = 0; x < tw; x++) {
                    size_t s = (size_t)y * tw + (size_t)x, d = (size_t)(y + oy) * side + (size_t)(x + ox);
                    float a = rm.pixels[3 * s];
                    a = a < 0 ? 0 : a > 1 ? 1 : a;
                    out->alpha[d] = (unsigned char)lroundf(a * 255.0f);
                    for (int c = 0; c < 3; c++) {
                        float v = rc.pixels[3 * s + c];
                        v = v < 0 ? 0 : v > 1 ? 1 : v;
                        out->rgb[3 * d + c] = (unsigned char)lroundf(v * 255.0f);
                    }
                }
        }
    }
    fl_image_release(&crop);
    fl_image_release(&mask);
    fl_image_release(&rc);
    fl_image_release(&rm);
    free(bg);
    return rcode;
}

int fl_clip_source_render(const char *path, int side, int margin, fl_clip_source *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    unsigned char *bytes = NULL;
    size_t n = 0;
    if (fl_read_file(path, SOURCE_MAX_BYTES, &bytes, &n, err) != 0) return -1;
    fl_image img = {0};
    int rc = fl_image_decode_fit(bytes, n, SOURCE_MAX_PIXELS, 1 << 15, SOURCE_FIT_SIDE, &img, err);
    free(bytes);
    if (rc == 0) rc = fl_clip_source_render_image(img.pixels, img.width, img.height, side, margin, out, err);
    fl_image_release(&img);
    return rc;
}

/* ---- random views ------------------------------------------------------------------------------- */

static float uniform(fl_rng *rng, float lo, float hi) { return lo + (hi - lo) * fl_rng_uniform(rng); }

void fl_encoder_augment(const fl_clip_source *src, int size, fl_rng *rng, float *out) {
    const int S = src->side;
    float bgc[3] = {1, 1, 1};
    if (fl_rng_uniform(rng) >= 0.5f)
        for (int c = 0; c < 3; c++) bgc[c] = fl_rng_uniform(rng);
    /* crop: area fraction, aspect, centre, rotation; output pixel (u, v) in [-1, 1]^2 maps to
     * canvas point centre + R(theta) * (u * half_w, v * half_h) */
    float area = uniform(rng, 0.35f, 1.0f);
    float log_r = uniform(rng, logf(3.0f / 4.0f), logf(4.0f / 3.0f));
    float r = expf(log_r);
    float hw = fminf(1.0f, sqrtf(area * r)), hh = fminf(1.0f, sqrtf(area / r)); /* half sizes in canvas units [-1, 1] */
    float cx = uniform(rng, -1.0f, 1.0f) * (1.0f - hw), cy = uniform(rng, -1.0f, 1.0f) * (1.0f - hh);
    float th = uniform(rng, -1.0f, 1.0f) * (float)(M_PI / 12.0);
    float ct = cosf(th), st = sinf(th);
    for (int y = 0; y < size; y++) {
        float v = ((float)y + 0.5f) / (float)size * 2.0f - 1.0f;
        for (int x = 0; x < size; x++) {
            float u = ((float)x + 0.5f) / (float)size * 2.0f - 1.0f;
            float px = cx + ct * u * hw - st * v * hh, py = cy + st * u * hw + ct * v * hh;
            /* canvas pixel coordinates (centres at k + 0.5) */
            float fx = (px + 1.0f) * 0.5f * (float)S - 0.5f, fy = (py + 1.0f) * 0.5f * (float)S - 0.5f;
            int ix = (int)floorf(fx), iy = (int)floorf(fy);
            float ax = fx - (float)ix, ay = fy - (float)iy;
            float acc[3] = {0, 0, 0};
            for (int k = 0; k < 4; k++) {
                int sx = ix + (k & 1), sy = iy + (k >> 1);
                float wgt = ((k & 1) ? ax : 1.0f - ax) * ((k >> 1) ? ay : 1.0f - ay);
                if (wgt == 0.0f) continue;
                if (sx < 0 || sy < 0 || sx >= S || sy >= S) {
                    for (int c = 0; c < 3; c++) acc[c] += wgt * bgc[c];
                    continue;
                }
                size_t i = (size_t)sy * S + (size_t)sx;
                float a = src->alpha[i] / 255.0f;
                for (int c = 0; c < 3; c++) acc[c] += wgt * (a * (src->rgb[3 * i + c] / 255.0f) + (1.0f - a) * bgc[c]);
            }
            float *o = out + ((size_t)y * size + (size_t)x) * 3;
            for (int c = 0; c < 3; c++) o[c] = acc[c];
        }
    }
    const size_t np = (size_t)size * size;
    float bright = uniform(rng, 0.7f, 1.3f), contrast = uniform(rng, 0.7f, 1.3f), sat = uniform(rng, 0.6f, 1.4f);
    bool gray = fl_rng_uniform(rng) < 0.2f, blur = fl_rng_uniform(rng) < 0.3f;
    double mean = 0;
    for (size_t i = 0; i < np * 3; i++) {
        out[i] *= bright;
        mean += out[i];
    }
    mean /= (double)(np * 3);
    for (size_t i = 0; i < np; i++) {
        float *p = out + 3 * i;
        for (int c = 0; c < 3; c++) p[c] = (p[c] - (float)mean) * contrast + (float)mean;
        float g = (p[0] + p[1] + p[2]) / 3.0f;
        for (int c = 0; c < 3; c++) p[c] = gray ? g : (p[c] - g) * sat + g;
    }
    if (blur) {
        float *tmp = fl_xmalloc(np * 3 * sizeof(float));
        memcpy(tmp, out, np * 3 * sizeof(float));
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                for (int c = 0; c < 3; c++) {
                    float s = 0;
                    for (int dy = -1; dy <= 1; dy++)
                        for (int dx = -1; dx <= 1; dx++) {
                            int yy = y + dy < 0 ? 0 : y + dy >= size ? size - 1 : y + dy;
                            int xx = x + dx < 0 ? 0 : x + dx >= size ? size - 1 : x + dx;
                            s += tmp[((size_t)yy * size + (size_t)xx) * 3 + c];
                        }
                    out[((size_t)y * size + (size_t)x) * 3 + c] = s / 9.0f;
                }
        free(tmp);
    }
    for (size_t i = 0; i < np * 3; i++) out[i] = out[i] < 0 ? 0 : out[i] > 1 ? 1 : out[i];
}

/* ---- the source list ------------------------------------------------------------------------------ */

typedef struct path_list {
    char **v;
    size_t n, cap;
} path_list;

static void path_push(path_list *l, const char *p) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        FL_CHECK(l->v);
    }
    l->v[l->n++] = strdup(p);
    FL_CHECK(l->v[l->n - 1]);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every *.png under dir, recursively (depth <= 8); symbolic links are not followed (the package
 * links some drawings under a second name: each is taken once). */
static void walk_png(const char *dir, int depth, path_list *out) {
    if (depth > 8) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        int w = snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (w < 0 || (size_t)w >= sizeof p) continue;
        struct stat st;
        if (lstat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) walk_png(p, depth + 1, out);
        else if (S_ISREG(st.st_mode) && strlen(e->d_name) > 4 && !strcmp(e->d_name + strlen(e->d_name) - 4, ".png"))
            path_push(out, p);
    }
    closedir(d);
}

static void path_list_free(path_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* ---- training ------------------------------------------------------------------------------------- */

static void config_text(const fl_encoder_pretrain_config *c, size_t n_images, char *buf, size_t size) {
    const fl_bvit_config *m = &c->model;
    snprintf(buf, size,
             "{\"image_size\":%d,\"patch\":%d,\"dim\":%d,\"depth\":%d,\"heads\":%d,\"mlp\":%d,\"head\":[%d,%d],"
             "\"steps\":%d,\"batch\":%d,\"lr\":%.9g,\"min_lr\":%.9g,\"weight_decay\":%.9g,\"temperature\":%.9g,"
             "\"warmup\":%d,\"clip\":%.9g,\"seed\":%" PRIu64 ",\"canvas\":%d,\"images\":%zu}",
             m->image_size, m->patch, m->dim, m->depth, m->heads, m->mlp_hidden, m->head_hidden, m->head_out, c->steps,
             c->batch, (double)c->lr, (double)c->min_lr, (double)c->weight_decay, (double)c->temperature,
             c->warmup_steps, (double)c->clip_norm, c->seed, c->canvas, n_images);
}

static double lr_at(const fl_encoder_pretrain_config *c, int step) {
    if (step <= c->warmup_steps) return (double)c->lr * step / (c->warmup_steps > 0 ? c->warmup_steps : 1);
    double p = (double)(step - c->warmup_steps) / (double)(c->steps - c->warmup_steps > 0 ? c->steps - c->warmup_steps : 1);
    return c->min_lr + 0.5 * ((double)c->lr - c->min_lr) * (1.0 + cos(M_PI * (p > 1 ? 1 : p)));
}

typedef struct trainer_state {
    fl_bvit *m;
    fl_tensor adam_m, adam_v;
    fl_rng rng;
    int step;
    double last_loss;
} trainer_state;

static int save_checkpoint(trainer_state *t, const char *path, const char *config, fl_error *err) {
    fl_tensor p = fl_bvit_params(t->m);
    const int64_t n = fl_tensor_numel(&p);
    fl_safetensors_entry e[3] = {{"params", FL_ST_F32, 1, {n}, p.data},
                                 {"adam_m", FL_ST_F32, 1, {n}, t->adam_m.data},
                                 {"adam_v", FL_ST_F32, 1, {n}, t->adam_v.data}};
    char step[32], rng[80], loss[40];
    snprintf(step, sizeof step, "%d", t->step);
    snprintf(rng, sizeof rng, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, t->rng.s[0], t->rng.s[1],
             t->rng.s[2], t->rng.s[3]);
    snprintf(loss, sizeof loss, "%.9g", t->last_loss);
    fl_safetensors_kv meta[5] = {{"format", CKPT_FORMAT}, {"step", step}, {"rng", rng}, {"last_loss", loss}, {"config", config}};
    return fl_safetensors_write(path, e, 3, meta, 5, err);
}

static int load_vec(const fl_safetensors *st, const char *name, fl_tensor *dst, fl_error *err) {
    const fl_safetensors_info *info = fl_safetensors_find(st, name);
    int64_t n = fl_tensor_numel(dst);
    if (!info || info->dtype != FL_ST_F32 || info->ndim != 1 || info->shape[0] != n)
        return fl_fail(err, FL_EINVAL, "checkpoint tensor '%s' is missing or not F32 [%lld]", name, (long long)n);
    memcpy(dst->data, info->data, (size_t)n * sizeof(float));
    return 0;
}

static int load_checkpoint(trainer_state *t, const char *path, const char *config, int steps, fl_error *err) {
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    const char *format = fl_safetensors_metadata_get(st, "format"), *step = fl_safetensors_metadata_get(st, "step");
    const char *rng = fl_safetensors_metadata_get(st, "rng"), *cfg = fl_safetensors_metadata_get(st, "config");
    const char *loss = fl_safetensors_metadata_get(st, "last_loss");
    int rc = 0;
    long done = -1;
    uint64_t s[4];
    if (!format || strcmp(format, CKPT_FORMAT) || !step || !rng || !cfg || !loss)
        rc = fl_fail(err, FL_EINVAL, "not an encoder training checkpoint");
    else if (strcmp(cfg, config))
        rc = fl_fail(err, FL_EINVAL, "the checkpoint was made with another configuration: %s", cfg);
    else if (sscanf(step, "%ld", &done) != 1 || done < 0 || done > steps)
        rc = fl_fail(err, FL_EINVAL, "checkpoint step '%s' is invalid", step);
    else if (strlen(rng) != 64 || sscanf(rng, "%16" SCNx64 "%16" SCNx64 "%16" SCNx64 "%16" SCNx64, &s[0], &s[1], &s[2], &s[3]) != 4)
        rc = fl_fail(err, FL_EINVAL, "checkpoint RNG state '%s' is invalid", rng);
    if (rc == 0) {
        fl_tensor p = fl_bvit_params(t->m);
        rc = load_vec(st, "params", &p, err);
        if (rc == 0) rc = load_vec(st, "adam_m", &t->adam_m, err);
        if (rc == 0) rc = load_vec(st, "adam_v", &t->adam_v, err);
    }
    if (rc == 0) {
        t->step = (int)done;
        memcpy(t->rng.s, s, sizeof s);
        t->last_loss = strtod(loss, NULL);
    }
    fl_safetensors_close(st);
    return rc == 0 ? 0 : fl_fail_prefix(err, "%s", path);
}

/* Keeps the lines of loss.csv up to step (a resumed run rewrites what follows). */
static void truncate_log(const char *path, int step) {
    unsigned char *data = NULL;
    size_t n = 0;
    fl_error err = {0};
    if (fl_read_file(path, 64u << 20, &data, &n, &err) != 0) return;
    size_t keep = 0;
    char *line = (char *)data;
    while (line < (char *)data + n) {
        char *nl = strchr(line, '\n');
        if (!nl) break;
        int s = -1;
        if (sscanf(line, "%d,", &s) == 1 && s > step) break;
        keep = (size_t)(nl + 1 - (char *)data);
        line = nl + 1;
    }
    fl_write_file_atomic(path, data, keep, &err);
    free(data);
}

static int render_all(const fl_encoder_pretrain_config *cfg, fl_clip_source **out, size_t *n_out,
                      fl_encoder_pretrain_stats *stats, fl_error *err) {
    path_list clip = {0}, emoji = {0};
    const char *cdir = cfg->openclipart_dir ? cfg->openclipart_dir : FL_OPENCLIPART_PNG_DIR;
    if (*cdir) {
        path_list all = {0};
        walk_png(cdir, 0, &all);
        /* held out: what evaluation measures with (datasets/subjects.h) */
        const char *held_out[64];
        size_t n_held = fl_eval_held_out(held_out, 64);
        FL_CHECK(n_held <= 64);
        size_t dl = strlen(cdir);
        for (size_t i = 0; i < all.n; i++) {
            const char *rel = all.v[i] + dl + (all.v[i][dl] == '/');
            bool held = false;
            for (size_t k = 0; k < n_held && !held; k++) held = !strcmp(rel, held_out[k]);
            if (held) stats->excluded++;
            else path_push(&clip, all.v[i]);
        }
        path_list_free(&all);
    }
    char edir[4096] = "";
    if (cfg->emoji_dir) snprintf(edir, sizeof edir, "%s", cfg->emoji_dir);
    else if (!fl_emoji_find_dir(FL_TANUKI_GLOB, FL_TANUKI_EMOJI_IMAGES, edir, sizeof edir)) edir[0] = '\0';
    if (*edir) {
        path_list all = {0};
        walk_png(edir, 8, &all); /* the folder itself, no recursion */
        for (size_t i = 0; i < all.n; i++) {
            const char *base = strrchr(all.v[i], '/');
            char key[FL_EMOJI_KEY_MAX];
            if (fl_emoji_key_tanuki(base ? base + 1 : all.v[i], key) && !fl_emoji_heldout(key)) path_push(&emoji, all.v[i]);
        }
        path_list_free(&all);
    }
    qsort(clip.v, clip.n, sizeof *clip.v, cmp_str);
    qsort(emoji.v, emoji.n, sizeof *emoji.v, cmp_str);
    size_t total = clip.n + emoji.n;
    if (total == 0) {
        path_list_free(&clip);
        path_list_free(&emoji);
        return fl_fail(err, FL_ENOTFOUND, "no training images: install openclipart-png and ruby-tanuki-emoji, or name folders");
    }
    size_t want = cfg->max_images > 0 && (size_t)cfg->max_images < total ? (size_t)cfg->max_images : total;
    fl_clip_source *src = fl_xcalloc(want, sizeof *src);
    size_t n = 0;
    for (size_t k = 0; k < want; k++) {
        size_t i = want == total ? k : (size_t)((double)k * total / want);
        bool is_clip = i < clip.n;
        const char *path = is_clip ? clip.v[i] : emoji.v[i - clip.n];
        fl_error e = {0};
        if (fl_clip_source_render(path, cfg->canvas, 4, &src[n], &e) != 0) {
            stats->skipped++;
            continue;
        }
        n++;
        if (is_clip) stats->clipart++;
        else stats->emoji++;
    }
    path_list_free(&clip);
    path_list_free(&emoji);
    if (n < 2) {
        for (size_t i = 0; i < n; i++) fl_clip_source_release(&src[i]);
        free(src);
        return fl_fail(err, FL_EINVAL, "fewer than 2 usable training images");
    }
    stats->images = n;
    *out = src;
    *n_out = n;
    return 0;
}

int fl_encoder_pretrain(const fl_encoder_pretrain_config *cfg, fl_encoder_pretrain_stats *stats, fl_error *err) {
    memset(stats, 0, sizeof *stats);
    if (fl_bvit_config_validate(&cfg->model, err) != 0) return -1;
    if (cfg->model.head_hidden <= 0) return fl_fail(err, FL_EINVAL, "training needs a projection head");
    if (cfg->steps < 1 || cfg->batch < 2 || cfg->canvas < 8 || !(cfg->temperature > 0) || !(cfg->lr > 0))
        return fl_fail(err, FL_EINVAL, "steps >= 1, batch >= 2, canvas >= 8, temperature > 0 and lr > 0 are required");
    if (fl_mkdirs(cfg->out_dir, err) != 0) return -1;
    fl_clip_source *src = NULL;
    size_t n_src = 0;
    if (render_all(cfg, &src, &n_src, stats, err) != 0) return -1;

    fl_ctx *ctx = fl_ctx_create(fl_device_cpu(), err);
    if (!ctx) return -1;
    trainer_state t;
    memset(&t, 0, sizeof t);
    t.m = fl_bvit_create(ctx, &cfg->model, cfg->seed);
    fl_tensor params = fl_bvit_params(t.m), grads = fl_bvit_grads(t.m);
    const int64_t np = fl_tensor_numel(&params), nd = fl_bvit_decay_count(t.m);
    t.adam_m = fl_ctx_tensor(ctx, FL_F32, 1, &np);
    t.adam_v = fl_ctx_tensor(ctx, FL_F32, 1, &np);
    fl_op_fill(ctx, &t.adam_m, 0.0f);
    fl_op_fill(ctx, &t.adam_v, 0.0f);
    fl_rng_seed(&t.rng, cfg->seed ^ 0x5eed5eedULL);

    char config[1024], ckpt[4096], logp[4096];
    config_text(cfg, n_src, config, sizeof config);
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", cfg->out_dir);
    snprintf(logp, sizeof logp, "%s/loss.csv", cfg->out_dir);
    int rc = 0;
    struct stat sst;
    if (stat(ckpt, &sst) == 0) {
        rc = load_checkpoint(&t, ckpt, config, cfg->steps, err);
        if (rc == 0) truncate_log(logp, t.step);
    } else {
        FILE *f = fopen(logp, "w");
        if (f) {
            fputs("step,loss,top1,lr,seconds\n", f);
            fclose(f);
        }
    }
    stats->start_step = t.step;
    const int B = cfg->batch, S = cfg->model.image_size, Z = cfg->model.head_out;
    float *views = fl_xmalloc((size_t)2 * B * S * S * 3 * sizeof(float));
    float *z = fl_xmalloc((size_t)2 * B * Z * sizeof(float)), *dz = fl_xmalloc((size_t)2 * B * Z * sizeof(float));
    const double t0 = fl_monotonic_s();
    double loss_acc = 0, top1_acc = 0;
    int acc_n = 0;
    bool stop = false;
    while (rc == 0 && t.step < cfg->steps && !stop) {
        for (int b = 0; b < B; b++) {
            size_t idx = (size_t)(fl_rng_next(&t.rng) % n_src);
            fl_encoder_augment(&src[idx], S, &t.rng, views + (size_t)b * S * S * 3);
            fl_encoder_augment(&src[idx], S, &t.rng, views + (size_t)(B + b) * S * S * 3);
        }
        fl_bvit_forward_train(t.m, views, 2 * B, z);
        double top1 = 0;
        double loss = fl_bvit_ntxent(z, B, Z, cfg->temperature, dz, &top1);
        if (!isfinite(loss)) {
            rc = fl_fail(err, FL_EINVAL, "the loss is not finite at step %d", t.step + 1);
            break;
        }
        fl_bvit_backward(t.m, dz);
        float scale = 1.0f;
        if (cfg->clip_norm > 0) {
            double norm = sqrt(fl_op_sum_squares(ctx, &grads));
            if (norm > cfg->clip_norm) scale = (float)(cfg->clip_norm / norm);
        }
        t.step++;
        double lr = lr_at(cfg, t.step);
        fl_adamw_params ap = {(float)lr, 0.9f, 0.999f, 1e-8f, cfg->weight_decay, scale, t.step};
        fl_tensor pd = fl_tensor_slice(&params, 0, 0, nd), gd = fl_tensor_slice(&grads, 0, 0, nd);
        fl_tensor md = fl_tensor_slice(&t.adam_m, 0, 0, nd), vd = fl_tensor_slice(&t.adam_v, 0, 0, nd);
        fl_op_adamw(ctx, &pd, &gd, &md, &vd, &ap);
        ap.weight_decay = 0.0f;
        fl_tensor pn = fl_tensor_slice(&params, 0, nd, np - nd), gn = fl_tensor_slice(&grads, 0, nd, np - nd);
        fl_tensor mn = fl_tensor_slice(&t.adam_m, 0, nd, np - nd), vn = fl_tensor_slice(&t.adam_v, 0, nd, np - nd);
        fl_op_adamw(ctx, &pn, &gn, &mn, &vn, &ap);
        t.last_loss = loss;
        loss_acc += loss;
        top1_acc += top1;
        acc_n++;
        if (t.step % cfg->log_every == 0 || t.step == cfg->steps) {
            double secs = fl_monotonic_s() - t0;
            FILE *f = fopen(logp, "a");
            if (f) {
                fprintf(f, "%d,%.6f,%.4f,%.6g,%.1f\n", t.step, loss_acc / acc_n, top1_acc / acc_n, lr, secs);
                fclose(f);
            }
            if (cfg->on_log && !cfg->on_log(cfg->arg, t.step, cfg->steps, loss_acc / acc_n, top1_acc / acc_n, lr, secs))
                stop = true;
            loss_acc = top1_acc = 0;
            acc_n = 0;
        }
        if (t.step % cfg->checkpoint_every == 0 || t.step == cfg->steps || stop) {
            rc = save_checkpoint(&t, ckpt, config, err);
            if (rc == 0 && cfg->on_checkpoint && !cfg->on_checkpoint(cfg->arg, t.step, t.m)) stop = true;
        }
    }
    free(views);
    free(z);
    free(dz);
    stats->end_step = t.step;
    stats->seconds = fl_monotonic_s() - t0;
    stats->last_loss = t.last_loss;
    if (rc == 0 && t.step == cfg->steps) {
        char path[4096], steps_s[16], images_s[32], loss_s[32];
        snprintf(steps_s, sizeof steps_s, "%d", t.step);
        snprintf(images_s, sizeof images_s, "%zu", n_src);
        snprintf(loss_s, sizeof loss_s, "%.4f", t.last_loss);
        const char *kv[] = {"training_steps", steps_s, "training_images", images_s, "final_loss", loss_s,
                            "training_config", config};
        snprintf(path, sizeof path, "%s/encoder.safetensors", cfg->out_dir);
        rc = fl_bvit_save(t.m, path, false, kv, 8, err);
        if (rc == 0) {
            /* the shipped form: bf16, without the projection head */
            fl_bvit_config enc = cfg->model;
            enc.head_hidden = enc.head_out = 0;
            fl_bvit *e = fl_bvit_create(ctx, &enc, 0);
            rc = fl_bvit_copy_weights(e, t.m, err); /* by name: the head-less layout is a subset */
            snprintf(path, sizeof path, "%s/flashlora-vit.safetensors", cfg->out_dir);
            if (rc == 0) rc = fl_bvit_save(e, path, true, kv, 8, err);
            fl_bvit_free(e);
        }
    }
    for (size_t i = 0; i < n_src; i++) fl_clip_source_release(&src[i]);
    free(src);
    fl_ctx_tensor_free(ctx, &t.adam_m);
    fl_ctx_tensor_free(ctx, &t.adam_v);
    fl_bvit_free(t.m);
    fl_ctx_destroy(ctx);
    return rc;
}
