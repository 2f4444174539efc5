/*
 * emoji_styles.c — code-point keys of the two packaged emoji sets, the held-out split, and the
 * pairs of files that draw the same emoji (datasets/emoji_styles.h).
 */
#include "datasets/emoji_styles.h"

#include <ctype.h>
#include <dirent.h>
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends code point cp to key (dropping FE0F and 200D); false when it does not fit. */
static bool append_cp(char key[FL_EMOJI_KEY_MAX], size_t *len, unsigned long cp) {
    if (cp == 0xfe0f || cp == 0x200d) return true;
    int w = snprintf(key + *len, FL_EMOJI_KEY_MAX - *len, "%s%lx", *len ? "-" : "", cp);
    if (w < 0 || (size_t)w >= FL_EMOJI_KEY_MAX - *len) return false;
    *len += (size_t)w;
    return true;
}

/* Hex code points separated by sep, up to a ".png" ending. */
static bool parse_hex_list(const char *s, char sep, char key[FL_EMOJI_KEY_MAX]) {
    size_t n = strlen(s), len = 0;
    if (n < 5 || strcmp(s + n - 4, ".png")) return false;
    n -= 4;
    key[0] = '\0';
    size_t i = 0;
    while (i < n) {
        unsigned long cp = 0;
        size_t digits = 0;
        while (i < n && isxdigit((unsigned char)s[i]) && digits < 8) {
            char c = (char)tolower((unsigned char)s[i]);
            cp = cp * 16 + (unsigned long)(c <= '9' ? c - '0' : c - 'a' + 10);
            i++;
            digits++;
        }
        if (digits == 0 || cp > 0x10ffff) return false;
        if (!append_cp(key, &len, cp)) return false;
        if (i < n) {
            if (s[i] != sep) return false;
            i++;
            if (i == n) return false;
        }
    }
    return len > 0;
}

bool fl_emoji_key_tanuki(const char *file_name, char key[FL_EMOJI_KEY_MAX]) {
    if (!strncmp(file_name, "emoji_u", 7)) return parse_hex_list(file_name + 7, '_', key);
    /* a flag: two letters */
    if (strlen(file_name) == 6 && !strcmp(file_name + 2, ".png") && isalpha((unsigned char)file_name[0]) &&
        isalpha((unsigned char)file_name[1])) {
        size_t len = 0;
        key[0] = '\0';
        for (int k = 0; k < 2; k++)
            append_cp(key, &len, 0x1f1e6 + (unsigned long)(toupper((unsigned char)file_name[k]) - 'A'));
        return true;
    }
    return false;
}

bool fl_emoji_key_gemojione(const char *file_name, char key[FL_EMOJI_KEY_MAX]) {
    return parse_hex_list(file_name, '-', key);
}

bool fl_emoji_heldout(const char *key) {
    uint32_t h = 0x811c9dc5u;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 0x01000193u;
    }
    return h % 2 == 0;
}

bool fl_emoji_find_dir(const char *gem_glob, const char *images_subdir, char *out, size_t cap) {
    glob_t g;
    memset(&g, 0, sizeof g);
    bool ok = false;
    if (glob(gem_glob, 0, NULL, &g) == 0 && g.gl_pathc > 0) {
        /* glob sorts: the last match is the newest version by name */
        int w = snprintf(out, cap, "%s/%s", g.gl_pathv[g.gl_pathc - 1], images_subdir);
        ok = w > 0 && (size_t)w < cap;
        if (ok) {
            DIR *d = opendir(out);
            ok = d != NULL;
            if (d) closedir(d);
        }
    }
    globfree(&g);
    return ok;
}

typedef struct keyed {
    char key[FL_EMOJI_KEY_MAX];
    char *path;
} keyed;

static int keyed_cmp(const void *a, const void *b) { return strcmp(((const keyed *)a)->key, ((const keyed *)b)->key); }

static int list_dir(const char *dir, bool tanuki, keyed **out, size_t *n, fl_error *err) {
    DIR *d = opendir(dir);
    if (!d) return fl_fail(err, FL_ENOTFOUND, "cannot read the emoji folder %s", dir);
    size_t cap = 256, count = 0;
    keyed *v = fl_xmalloc(cap * sizeof *v);
    struct dirent *e;
    while ((e = readdir(d))) {
        char key[FL_EMOJI_KEY_MAX];
        bool ok = tanuki ? fl_emoji_key_tanuki(e->d_name, key) : fl_emoji_key_gemojione(e->d_name, key);
        if (!ok) continue;
        if (count == cap) {
            cap *= 2;
            v = realloc(v, cap * sizeof *v);
            FL_CHECK(v);
        }
        snprintf(v[count].key, sizeof v[count].key, "%s", key);
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        v[count].path = fl_xmalloc(len);
        snprintf(v[count].path, len, "%s/%s", dir, e->d_name);
        count++;
    }
    closedir(d);
    qsort(v, count, sizeof *v, keyed_cmp);
    *out = v;
    *n = count;
    return 0;
}

static void free_keyed(keyed *v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i].path);
    free(v);
}

int fl_emoji_pairs(const char *noto_dir, const char *emojione_dir, bool heldout_only, fl_emoji_pair **out, size_t *n,
                   fl_error *err) {
    *out = NULL;
    *n = 0;
    keyed *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    if (list_dir(noto_dir, true, &a, &na, err) != 0) return -1;
    if (list_dir(emojione_dir, false, &b, &nb, err) != 0) {
        free_keyed(a, na);
        return -1;
    }
    fl_emoji_pair *p = fl_xcalloc(na ? na : 1, sizeof *p);
    size_t count = 0, j = 0;
    for (size_t i = 0; i < na; i++) {
        if (i > 0 && !strcmp(a[i].key, a[i - 1].key)) continue; /* two files, one key: the first */
        while (j < nb && strcmp(b[j].key, a[i].key) < 0) j++;
        if (j == nb || strcmp(b[j].key, a[i].key)) continue;
        if (heldout_only && !fl_emoji_heldout(a[i].key)) continue;
        snprintf(p[count].key, sizeof p[count].key, "%s", a[i].key);
        p[count].noto_path = strdup(a[i].path);
        p[count].emojione_path = strdup(b[j].path);
        FL_CHECK(p[count].noto_path && p[count].emojione_path);
        count++;
    }
    free_keyed(a, na);
    free_keyed(b, nb);
    *out = p;
    *n = count;
    return 0;
}

void fl_emoji_pairs_free(fl_emoji_pair *pairs, size_t n) {
    if (!pairs) return;
    for (size_t i = 0; i < n; i++) {
        free(pairs[i].noto_path);
        free(pairs[i].emojione_path);
    }
    free(pairs);
}
