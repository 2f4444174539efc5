/*
 * clipart.c — clip-art layers (decode with alpha, trim, draw), the captions of openclipart files
 * and emoji, and the builder of the embedded model's pretraining set (see clipart.h).
 */
#include "datasets/clipart.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/fileio.h"
#include "datasets/preprocess.h"
#include "models/sampler.h"

#define CLIPART_MAX_FILE_BYTES (64u << 20)
#define CLIPART_MAX_PIXELS 16000000
#define CLIPART_MAX_SIDE 8192

/* ---- layers ------------------------------------------------------------------------------------ */

void fl_clipart_release(fl_clipart *c) {
    if (!c) return;
    fl_image_release(&c->color);
    fl_image_release(&c->alpha);
}

/* Copies the w x h region at (x0, y0) of src into a new image. */
static int crop(const fl_image *src, int x0, int y0, int w, int h, fl_image *out, fl_error *err) {
    if (fl_image_init(out, w, h, err) != 0) return -1;
    for (int y = 0; y < h; y++)
        memcpy(out->pixels + (size_t)y * w * 3, src->pixels + ((size_t)(y0 + y) * src->width + x0) * 3,
               (size_t)w * 3 * sizeof(float));
    return 0;
}

int fl_clipart_decode(const void *bytes, size_t n, fl_clipart *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    fl_clipart full;
    if (fl_image_decode_layers(bytes, n, CLIPART_MAX_PIXELS, CLIPART_MAX_SIDE, &full.color, &full.alpha, err) != 0)
        return -1;
    /* A pixel draws something when, composited on white, some channel is visibly below white:
     * (color + 1 - alpha) < 0.97, i.e. alpha - color > 0.03. */
    int w = full.color.width, h = full.color.height, x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const float *c = full.color.pixels + ((size_t)y * w + x) * 3, a = full.alpha.pixels[((size_t)y * w + x) * 3];
            if (a - c[0] > 0.03f || a - c[1] > 0.03f || a - c[2] > 0.03f) {
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
                if (y < y0) y0 = y;
                if (y > y1) y1 = y;
            }
        }
    int rc = 0;
    if (x1 < 0) rc = fl_fail(err, FL_EINVAL, "blank image");
    if (rc == 0) rc = crop(&full.color, x0, y0, x1 - x0 + 1, y1 - y0 + 1, &out->color, err);
    if (rc == 0) rc = crop(&full.alpha, x0, y0, x1 - x0 + 1, y1 - y0 + 1, &out->alpha, err);
    fl_clipart_release(&full);
    if (rc != 0) fl_clipart_release(out);
    return rc;
}

int fl_clipart_load(const char *path, fl_clipart *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    unsigned char *bytes = NULL;
    size_t n = 0;
    if (fl_read_file(path, CLIPART_MAX_FILE_BYTES, &bytes, &n, err) != 0) return -1;
    int rc = fl_clipart_decode(bytes, n, out, err);
    free(bytes);
    return rc;
}

int fl_clipart_draw(const fl_clipart *c, fl_image *canvas, double cx, double cy, double size, fl_error *err) {
    if (!(size >= 1.0 && size <= 4096.0)) return fl_fail(err, FL_EINVAL, "clip-art size %g is outside [1, 4096]", size);
    if (!isfinite(cx) || !isfinite(cy)) return fl_fail(err, FL_EINVAL, "clip-art position is not finite");
    int cw = c->color.width, ch = c->color.height, tw, th;
    if (cw >= ch) {
        tw = (int)lround(size);
        th = (int)lround(size * ch / cw);
    } else {
        th = (int)lround(size);
        tw = (int)lround(size * cw / ch);
    }
    if (tw < 1) tw = 1;
    if (th < 1) th = 1;
    fl_image color, alpha;
    if (fl_image_resample(&c->color, tw, th, &color, err) != 0) return -1;
    if (fl_image_resample(&c->alpha, tw, th, &alpha, err) != 0) {
        fl_image_release(&color);
        return -1;
    }
    long ox = lround(cx - tw / 2.0), oy = lround(cy - th / 2.0);
    for (int y = 0; y < th; y++) {
        long py = oy + y;
        if (py < 0 || py >= canvas->height) continue;
        for (int x = 0; x < tw; x++) {
            long px = ox + x;
            if (px < 0 || px >= canvas->width) continue;
            float *dst = canvas->pixels + ((size_t)py * canvas->width + (size_t)px) * 3;
            const float *src = color.pixels + ((size_t)y * tw + x) * 3, *a = alpha.pixels + ((size_t)y * tw + x) * 3;
            for (int k = 0; k < 3; k++) {
                float v = src[k] + (1.0f - a[k]) * dst[k];
                dst[k] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
            }
        }
    }
    fl_image_release(&color);
    fl_image_release(&alpha);
    return 0;
}

/* ---- captions ---------------------------------------------------------------------------------- */

/* Authors' names the package folds into file names ("happy_monkey_benji_01"): dropped. */
static const char *const author_words[] = {
    "aj",     "ashton",  "bali",   "benji",   "buculei", "dan",    "desig",   "design", "di",     "enrique",
    "fr",     "fra",     "fran",   "franc",   "frederic", "ganson", "ger",     "gerald", "guillou", "jarno",
    "jean",   "jon",     "jonathan", "juliane", "kim",    "krug",   "linda",   "lumen",  "luiz",   "matthew",
    "md",     "meza",    "michael", "mimooh", "mo",     "nicu",   "pa",      "park",   "peterm", "phillips",
    "sergio", "svg",     "victor", "yves",    "png",    "jpg",
};
/* Long names truncated at any length in file names ("architetto_frances_01"): any prefix of
 * three letters or more is dropped. */
static const char *const author_stems[] = {"architetto", "francesco", "rollandin", "buculei", "vasamaa", "guillou",
                                           "tunnicliffe"};
/* Directory names that say nothing about the picture. */
static const char *const generic_dirs[] = {"unsorted", "special", "examples", "misc", "duplicates", "png"};

static bool in_list(const char *w, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(w, list[i])) return true;
    return false;
}

static bool dropped_word(const char *w) {
    size_t len = strlen(w);
    if (len < 2) return true;
    if (in_list(w, author_words, sizeof author_words / sizeof author_words[0])) return true;
    if (len >= 3)
        for (size_t i = 0; i < sizeof author_stems / sizeof author_stems[0]; i++)
            if (!strncmp(author_stems[i], w, len)) return true;
    return false;
}

typedef struct word_buf {
    char *out;
    size_t cap, len;
    char seen[64][32]; /* words already written (no repeats) */
    int n_seen;
} word_buf;

static void emit_word(word_buf *b, const char *w, bool comma_before) {
    if (dropped_word(w)) return;
    for (int i = 0; i < b->n_seen; i++)
        if (!strcmp(b->seen[i], w)) return;
    if (b->n_seen < 64) snprintf(b->seen[b->n_seen++], sizeof b->seen[0], "%s", w);
    const char *sep = b->len == 0 ? "" : comma_before ? ", " : " ";
    size_t need = strlen(sep) + strlen(w);
    if (b->len + need + 1 > b->cap) return;
    memcpy(b->out + b->len, sep, strlen(sep));
    memcpy(b->out + b->len + strlen(sep), w, strlen(w));
    b->len += need;
    b->out[b->len] = '\0';
}

/* Splits text[0, n) into lower-case words: letters only (digits and punctuation separate words),
 * a lower-to-upper case change starts a new word ("BasseTemperature" -> basse, temperature).
 * Returns whether anything was emitted. */
static bool emit_words(word_buf *b, const char *text, size_t n, bool comma_first) {
    size_t before = b->len;
    char w[32];
    size_t wl = 0;
    bool first = comma_first;
    for (size_t i = 0; i <= n; i++) {
        unsigned char ch = i < n ? (unsigned char)text[i] : 0;
        bool letter = ch && isalpha(ch);
        bool camel = letter && wl > 0 && isupper(ch) && i > 0 && islower((unsigned char)text[i - 1]);
        if ((!letter || camel) && wl > 0) {
            w[wl] = '\0';
            size_t len_before = b->len;
            emit_word(b, w, first && b->len > 0);
            if (b->len != len_before) first = false;
            wl = 0;
        }
        if (letter && wl + 1 < sizeof w) w[wl++] = (char)tolower(ch);
    }
    return b->len != before;
}

size_t fl_clipart_caption_openclipart(const char *rel_path, char *out, size_t cap) {
    if (cap == 0) return 0;
    out[0] = '\0';
    word_buf b = {out, cap, 0, {{0}}, 0};
    const char *slash = strrchr(rel_path, '/');
    const char *file = slash ? slash + 1 : rel_path;
    const char *dot = strrchr(file, '.');
    size_t file_len = dot ? (size_t)(dot - file) : strlen(file);
    emit_words(&b, file, file_len, false);
    bool first_dir = true;
    for (const char *p = rel_path; slash && p < slash;) {
        const char *end = memchr(p, '/', (size_t)(slash - p + 1));
        if (!end) end = slash;
        size_t len = (size_t)(end - p);
        char dir[128];
        snprintf(dir, sizeof dir, "%.*s", (int)(len < sizeof dir ? len : sizeof dir - 1), p);
        for (char *q = dir; *q; q++) *q = (char)tolower((unsigned char)*q);
        if (!in_list(dir, generic_dirs, sizeof generic_dirs / sizeof generic_dirs[0]) && !strstr(dir, "theme")) {
            if (emit_words(&b, p, len, first_dir)) first_dir = false;
        }
        p = end + 1;
    }
    return b.len;
}

/* ---- emoji names ------------------------------------------------------------------------------- */

typedef struct emoji_entry {
    char key[96];   /* code points, lower-case hex joined by '_', without fe0f */
    char name[96];
} emoji_entry;

struct fl_emoji_names {
    emoji_entry *entries;
    size_t count;
};

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const emoji_entry *)a)->key, ((const emoji_entry *)b)->key);
}

/* Appends code point text (hex) to key, skipping fe0f; returns false when it does not fit. */
static bool key_add(char *key, size_t cap, const char *hex, size_t len) {
    char cp[16];
    if (len == 0 || len >= sizeof cp) return false;
    for (size_t i = 0; i < len; i++) cp[i] = (char)tolower((unsigned char)hex[i]);
    cp[len] = '\0';
    while (cp[0] == '0' && cp[1]) memmove(cp, cp + 1, strlen(cp)); /* "0023" and "23" are one key */
    if (!strcmp(cp, "fe0f")) return true;
    size_t have = strlen(key);
    if (have + len + 2 > cap) return false;
    snprintf(key + have, cap - have, "%s%s", have ? "_" : "", cp);
    return true;
}

int fl_emoji_names_load(const char *emoji_test_path, fl_emoji_names **out, fl_error *err) {
    *out = NULL;
    unsigned char *text = NULL;
    size_t n = 0;
    if (fl_read_file(emoji_test_path, 16u << 20, &text, &n, err) != 0) return fl_fail_prefix(err, "%s", emoji_test_path);
    fl_emoji_names *names = fl_xcalloc(1, sizeof *names);
    size_t cap = 0;
    for (char *line = (char *)text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *semi = strchr(line, ';'), *hash = strchr(line, '#');
        if (line[0] != '#' && semi && hash && hash > semi) {
            emoji_entry e;
            memset(&e, 0, sizeof e);
            bool ok = true;
            for (char *p = line; p < semi && ok;) {
                while (p < semi && *p == ' ') p++;
                char *q = p;
                while (q < semi && isxdigit((unsigned char)*q)) q++;
                if (q > p) ok = key_add(e.key, sizeof e.key, p, (size_t)(q - p));
                p = q;
                while (p < semi && *p != ' ' && !isxdigit((unsigned char)*p)) p++;
            }
            /* "# 😀 E1.0 grinning face": skip the emoji and the version. */
            char *p = hash + 1;
            while (*p == ' ') p++;
            while (*p && *p != ' ') p++;
            while (*p == ' ') p++;
            if (*p == 'E' && isdigit((unsigned char)p[1])) {
                while (*p && *p != ' ') p++;
                while (*p == ' ') p++;
            }
            if (ok && e.key[0] && *p) {
                snprintf(e.name, sizeof e.name, "%s", p);
                if (names->count == cap) {
                    cap = cap ? 2 * cap : 1024;
                    names->entries = fl_xrealloc(names->entries, cap * sizeof *names->entries);
                }
                names->entries[names->count++] = e;
            }
        }
        line = next;
    }
    free(text);
    if (names->count == 0) {
        fl_emoji_names_free(names);
        return fl_fail(err, FL_EINVAL, "%s: no emoji names found", emoji_test_path);
    }
    /* Duplicate keys (a fully-qualified form and its unqualified twin) carry the same name, so
     * which one a lookup finds does not matter. */
    qsort(names->entries, names->count, sizeof *names->entries, entry_cmp);
    *out = names;
    return 0;
}

void fl_emoji_names_free(fl_emoji_names *names) {
    if (!names) return;
    free(names->entries);
    free(names);
}

size_t fl_emoji_caption(const fl_emoji_names *names, const char *file_name, char *out, size_t cap) {
    if (cap == 0) return 0;
    out[0] = '\0';
    char key[96] = "";
    const char *dot = strrchr(file_name, '.');
    size_t len = dot ? (size_t)(dot - file_name) : strlen(file_name);
    if (len == 2 && isupper((unsigned char)file_name[0]) && isupper((unsigned char)file_name[1])) {
        /* A region flag: two regional indicator symbols. */
        snprintf(key, sizeof key, "%x_%x", 0x1f1e6 + (file_name[0] - 'A'), 0x1f1e6 + (file_name[1] - 'A'));
    } else if (len > 7 && !strncmp(file_name, "emoji_u", 7)) {
        const char *p = file_name + 7, *end = file_name + len;
        while (p < end) {
            const char *q = memchr(p, '_', (size_t)(end - p));
            if (!q) q = end;
            if (!key_add(key, sizeof key, p, (size_t)(q - p))) return 0;
            p = q + 1;
        }
    } else {
        return 0;
    }
    emoji_entry probe;
    memset(&probe, 0, sizeof probe);
    snprintf(probe.key, sizeof probe.key, "%s", key);
    const emoji_entry *e = bsearch(&probe, names->entries, names->count, sizeof *names->entries, entry_cmp);
    if (!e) return 0;
    /* Lower case, punctuation to spaces, spaces collapsed, then " emoji". */
    size_t n = 0;
    bool space = false;
    for (const char *p = e->name; *p && n + 8 < cap; p++) {
        unsigned char ch = (unsigned char)*p;
        if (isalnum(ch) || ch >= 0x80) {
            if (space && n > 0) out[n++] = ' ';
            space = false;
            out[n++] = (char)tolower(ch);
        } else {
            space = true;
        }
    }
    if (n == 0) return 0;
    n += (size_t)snprintf(out + n, cap - n, " emoji");
    return n < cap ? n : cap - 1;
}

/* ---- the builder -------------------------------------------------------------------------------- */

fl_clipart_build_config fl_clipart_build_config_default(void) {
    fl_clipart_build_config c;
    memset(&c, 0, sizeof c);
    c.resolution = 64;
    c.margin = 4;
    c.max_per_dir = 60;
    c.heldout_every = 50;
    return c;
}

size_t fl_tanuki_emoji_dir(char *out, size_t cap) {
    glob_t g;
    size_t n = 0;
    if (glob(FL_TANUKI_EMOJI_GLOB, GLOB_ONLYDIR, NULL, &g) == 0 && g.gl_pathc > 0) {
        /* glob sorts; the last is the newest version in byte order, good enough for one package. */
        n = (size_t)snprintf(out, cap, "%s", g.gl_pathv[g.gl_pathc - 1]);
        if (n >= cap) n = 0;
    }
    globfree(&g);
    if (n == 0 && cap) out[0] = '\0';
    return n;
}

typedef struct str_list {
    char **items;
    size_t count, cap;
} str_list;

static void list_add(str_list *l, const char *s) {
    if (l->count == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->items = fl_xrealloc(l->items, l->cap * sizeof *l->items);
    }
    l->items[l->count++] = fl_xstrdup(s);
}

static void list_free(str_list *l) {
    for (size_t i = 0; i < l->count; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_png_ext(const char *name) {
    size_t n = strlen(name);
    return n > 4 && !strcmp(name + n - 4, ".png");
}

/* Every *.png under root/rel (depth-limited), as paths relative to root. */
static void walk_png(const char *root, const char *rel, int depth, str_list *out) {
    if (depth > 12) return;
    char path[4096];
    snprintf(path, sizeof path, "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char child_rel[4096], child[8192];
        snprintf(child_rel, sizeof child_rel, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        snprintf(child, sizeof child, "%s/%s", root, child_rel);
        struct stat st;
        if (lstat(child, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) walk_png(root, child_rel, depth + 1, out);
        else if (S_ISREG(st.st_mode) && has_png_ext(e->d_name)) list_add(out, child_rel);
    }
    closedir(d);
}

/* Keeps at most max files per directory, evenly spaced in sorted order. list must be sorted. */
static void cap_per_dir(str_list *l, int max) {
    if (max <= 0) return;
    size_t w = 0;
    for (size_t i = 0; i < l->count;) {
        const char *slash = strrchr(l->items[i], '/');
        size_t dir_len = slash ? (size_t)(slash - l->items[i]) : 0;
        size_t j = i;
        while (j < l->count) {
            const char *s2 = strrchr(l->items[j], '/');
            size_t len2 = s2 ? (size_t)(s2 - l->items[j]) : 0;
            if (len2 != dir_len || strncmp(l->items[i], l->items[j], dir_len)) break;
            j++;
        }
        size_t count = j - i, keep = count > (size_t)max ? (size_t)max : count;
        char **group = l->items + i;
        bool *kept = fl_xcalloc(count, sizeof *kept);
        for (size_t k = 0; k < keep; k++) kept[k * count / keep] = true;
        for (size_t k = 0; k < count; k++) {
            if (kept[k]) l->items[w++] = group[k];
            else free(group[k]);
        }
        free(kept);
        i = j;
    }
    l->count = w;
}

static uint64_t fnv1a(const void *data, size_t n, uint64_t h) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

typedef struct build_state {
    const fl_clipart_build_config *c;
    json_t *manifest_lines; /* array of line objects */
    json_t *skipped;
    uint64_t *hashes;
    char **hash_sources;
    size_t n_hashes, cap_hashes;
    fl_clipart_build_stats stats;
    size_t total;
} build_state;

/* Renders one source and writes it; a source that cannot be used is recorded and skipped. */
static int build_one(build_state *s, const char *path, const char *source_id, const char *package,
                     const char *license, const char *caption, fl_error *err) {
    const fl_clipart_build_config *c = s->c;
    fl_error why = {0};
    fl_clipart art;
    fl_image canvas;
    int res = c->resolution;
    if (fl_clipart_load(path, &art, &why) != 0) {
        json_array_append_new(s->skipped, json_pack("{s:s, s:s}", "source", source_id, "reason", why.message));
        s->stats.skipped++;
        return 0;
    }
    if (fl_image_init(&canvas, res, res, err) != 0) {
        fl_clipart_release(&art);
        return -1;
    }
    for (size_t i = 0; i < (size_t)res * res * 3; i++) canvas.pixels[i] = 1.0f;
    int rc = fl_clipart_draw(&art, &canvas, res / 2.0, res / 2.0, res - 2.0 * c->margin, err);
    fl_clipart_release(&art);
    if (rc != 0) {
        fl_image_release(&canvas);
        return -1;
    }
    /* 8-bit pixels: identical renders (the package ships duplicates) are kept once. */
    size_t n_px = (size_t)res * res * 3;
    float *signed_px = fl_xmalloc(n_px * sizeof(float));
    unsigned char *bytes = fl_xmalloc(n_px);
    for (size_t i = 0; i < n_px; i++) {
        long v = lrintf(canvas.pixels[i] * 255.0f);
        bytes[i] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
        signed_px[i] = bytes[i] / 127.5f - 1.0f;
    }
    fl_image_release(&canvas);
    uint64_t h = fnv1a(bytes, n_px, 0xcbf29ce484222325ull);
    free(bytes);
    for (size_t i = 0; i < s->n_hashes; i++)
        if (s->hashes[i] == h) {
            char reason[512];
            snprintf(reason, sizeof reason, "same picture as %s", s->hash_sources[i]);
            json_array_append_new(s->skipped, json_pack("{s:s, s:s}", "source", source_id, "reason", reason));
            s->stats.skipped++;
            free(signed_px);
            return 0;
        }
    if (s->n_hashes == s->cap_hashes) {
        s->cap_hashes = s->cap_hashes ? 2 * s->cap_hashes : 1024;
        s->hashes = fl_xrealloc(s->hashes, s->cap_hashes * sizeof *s->hashes);
        s->hash_sources = fl_xrealloc(s->hash_sources, s->cap_hashes * sizeof *s->hash_sources);
    }
    s->hashes[s->n_hashes] = h;
    s->hash_sources[s->n_hashes++] = fl_xstrdup(source_id);

    char file[64], out_path[4200];
    snprintf(file, sizeof file, "images/%06zu.png", s->stats.written);
    snprintf(out_path, sizeof out_path, "%s/%s", c->out_dir, file);
    unsigned char *png = NULL;
    size_t png_size = 0;
    rc = fl_png_encode(signed_px, res, res, &png, &png_size, err);
    free(signed_px);
    if (rc != 0) return -1;
    FILE *f = fopen(out_path, "wb");
    bool ok = f && fwrite(png, 1, png_size, f) == png_size;
    if (f && fclose(f) != 0) ok = false;
    free(png);
    if (!ok) return fl_fail(err, FL_EIO, "%s: %s", out_path, strerror(errno));
    bool heldout = c->heldout_every > 0 &&
                   fnv1a(source_id, strlen(source_id), 0xcbf29ce484222325ull) % (uint64_t)c->heldout_every == 0;
    json_array_append_new(s->manifest_lines,
                          json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "file", file, "caption", caption, "source",
                                    source_id, "package", package, "license", license, "split",
                                    heldout ? "heldout" : "train"));
    s->stats.written++;
    if (heldout) s->stats.heldout++;
    else s->stats.train++;
    if (c->progress) c->progress(c->progress_arg, s->stats.written, s->total);
    return 0;
}

static int write_outputs(build_state *s, const char *emoji_dir, fl_error *err) {
    const fl_clipart_build_config *c = s->c;
    size_t cap = 1 << 20, len = 0;
    char *text = fl_xmalloc(cap);
    for (size_t i = 0; i < json_array_size(s->manifest_lines); i++) {
        char *line = json_dumps(json_array_get(s->manifest_lines, i), JSON_COMPACT | JSON_ENSURE_ASCII);
        size_t n = strlen(line);
        if (len + n + 2 > cap) {
            while (len + n + 2 > cap) cap *= 2;
            text = fl_xrealloc(text, cap);
        }
        memcpy(text + len, line, n);
        text[len + n] = '\n';
        len += n + 1;
        free(line);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/manifest.jsonl", c->out_dir);
    int rc = fl_write_file_atomic(path, text, len, err);
    free(text);
    if (rc != 0) return -1;
    json_t *excluded = json_array();
    for (size_t i = 0; i < c->n_exclude; i++) json_array_append_new(excluded, json_string(c->exclude[i]));
    json_t *summary = json_pack(
        "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:{s:{s:s, s:s, s:i}, s:{s:s, s:s, s:i}}, s:o, s:O}", "format",
        "flashlora.pretrain-data.v1", "resolution", c->resolution, "margin", c->margin, "max_per_dir", c->max_per_dir,
        "heldout_every", c->heldout_every, "images", (int)s->stats.written, "train", (int)s->stats.train, "heldout",
        (int)s->stats.heldout, "skipped", (int)s->stats.skipped, "packages", "openclipart-png", "license",
        FL_OPENCLIPART_LICENSE, "path", c->openclipart_dir ? c->openclipart_dir : FL_OPENCLIPART_DIR, "images",
        (int)s->stats.openclipart, "ruby-tanuki-emoji", "license", FL_EMOJI_LICENSE, "path", emoji_dir, "images",
        (int)s->stats.emoji, "held_out_for_demo_subjects", excluded, "skipped_sources", s->skipped);
    char *summary_text = json_dumps(summary, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    json_decref(summary);
    snprintf(path, sizeof path, "%s/DATASET.json", c->out_dir);
    rc = fl_write_file_atomic(path, summary_text, strlen(summary_text), err);
    free(summary_text);
    return rc;
}

int fl_clipart_build(const fl_clipart_build_config *c, fl_clipart_build_stats *stats, fl_error *err) {
    if (!c->out_dir || !*c->out_dir) return fl_fail(err, FL_EINVAL, "no output directory given");
    if (c->resolution < 8 || c->resolution > 1024)
        return fl_fail(err, FL_EINVAL, "resolution %d is outside [8, 1024]", c->resolution);
    if (c->margin < 0 || 2 * c->margin >= c->resolution)
        return fl_fail(err, FL_EINVAL, "margin %d leaves nothing of a %d-pixel canvas", c->margin, c->resolution);
    char images_dir[4200];
    snprintf(images_dir, sizeof images_dir, "%s/images", c->out_dir);
    if (fl_mkdirs(images_dir, err) != 0) return -1;

    const char *clip_dir = c->openclipart_dir ? c->openclipart_dir : FL_OPENCLIPART_DIR;
    char emoji_gem[4096] = "";
    if (c->emoji_dir) snprintf(emoji_gem, sizeof emoji_gem, "%s", c->emoji_dir);
    else fl_tanuki_emoji_dir(emoji_gem, sizeof emoji_gem);

    str_list clip = {0}, emoji = {0};
    if (*clip_dir) {
        walk_png(clip_dir, "", 0, &clip);
        if (clip.count) qsort(clip.items, clip.count, sizeof *clip.items, str_cmp);
        cap_per_dir(&clip, c->max_per_dir);
    }
    fl_emoji_names *names = NULL;
    char emoji_images[4200] = "";
    if (*emoji_gem) {
        char test_path[4200];
        snprintf(test_path, sizeof test_path, "%s/vendor/unicode/emoji-test.txt", emoji_gem);
        snprintf(emoji_images, sizeof emoji_images, "%s/app/assets/images/tanuki_emoji", emoji_gem);
        if (fl_emoji_names_load(test_path, &names, err) != 0) {
            list_free(&clip);
            return -1;
        }
        DIR *d = opendir(emoji_images);
        if (!d) {
            fl_emoji_names_free(names);
            list_free(&clip);
            return fl_fail(err, FL_EIO, "%s: %s", emoji_images, strerror(errno));
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.' && has_png_ext(e->d_name)) list_add(&emoji, e->d_name);
        closedir(d);
        if (emoji.count) qsort(emoji.items, emoji.count, sizeof *emoji.items, str_cmp);
    }
    if (clip.count == 0 && emoji.count == 0) {
        fl_emoji_names_free(names);
        list_free(&clip);
        list_free(&emoji);
        return fl_fail(err, FL_EINVAL,
                       "no clip art found (install the Debian packages openclipart-png and ruby-tanuki-emoji)");
    }

    build_state s;
    memset(&s, 0, sizeof s);
    s.c = c;
    s.manifest_lines = json_array();
    s.skipped = json_array();
    s.total = clip.count + emoji.count;
    if (c->limit > 0 && s.total > (size_t)c->limit) s.total = (size_t)c->limit;
    int rc = 0;
    char path[8400], source[4200], caption[512];
    for (size_t i = 0; i < clip.count && rc == 0; i++) {
        if (c->limit > 0 && s.stats.written >= (size_t)c->limit) break;
        const char *rel = clip.items[i];
        if (in_list(rel, c->exclude, c->n_exclude)) {
            s.stats.excluded++;
            continue;
        }
        snprintf(source, sizeof source, "openclipart-png:%s", rel);
        if (fl_clipart_caption_openclipart(rel, caption, sizeof caption) == 0) {
            json_array_append_new(s.skipped, json_pack("{s:s, s:s}", "source", source, "reason", "no caption words"));
            s.stats.skipped++;
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", clip_dir, rel);
        size_t before = s.stats.written;
        rc = build_one(&s, path, source, "openclipart-png", FL_OPENCLIPART_LICENSE, caption, err);
        if (s.stats.written > before) s.stats.openclipart++;
    }
    for (size_t i = 0; i < emoji.count && rc == 0; i++) {
        if (c->limit > 0 && s.stats.written >= (size_t)c->limit) break;
        snprintf(source, sizeof source, "ruby-tanuki-emoji:%s", emoji.items[i]);
        if (fl_emoji_caption(names, emoji.items[i], caption, sizeof caption) == 0) {
            json_array_append_new(s.skipped, json_pack("{s:s, s:s}", "source", source, "reason", "no emoji name"));
            s.stats.skipped++;
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", emoji_images, emoji.items[i]);
        size_t before = s.stats.written;
        rc = build_one(&s, path, source, "ruby-tanuki-emoji", FL_EMOJI_LICENSE, caption, err);
        if (s.stats.written > before) s.stats.emoji++;
    }
    if (rc == 0 && s.stats.written == 0) rc = fl_fail(err, FL_EINVAL, "no usable image among %zu sources", s.total);
    if (rc == 0) rc = write_outputs(&s, emoji_gem, err);
    if (stats) *stats = s.stats;
    json_decref(s.manifest_lines);
    json_decref(s.skipped);
    for (size_t i = 0; i < s.n_hashes; i++) free(s.hash_sources[i]);
    free(s.hashes);
    free(s.hash_sources);
    fl_emoji_names_free(names);
    list_free(&clip);
    list_free(&emoji);
    return rc;
}
