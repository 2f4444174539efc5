/*
 * captions.c — trigger-word substitution, insertion and clean placeholder removal; dropout draws.
 */
#include "datasets/captions.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static bool is_space(char ch) {
    return ch == ' ' || (ch >= '\t' && ch <= '\r');
}

static bool is_word_byte(char ch) {
    unsigned char b = (unsigned char)ch;
    return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') || b == '_' || b >= 0x80;
}

static bool is_blank(const char *s) {
    for (; *s; s++)
        if (!is_space(*s)) return false;
    return true;
}

/* Copy of s with every placeholder replaced by with (which may be ""). */
static char *replace_placeholder(const char *s, const char *with) {
    const size_t plen = strlen(FL_CAPTION_PLACEHOLDER), wlen = strlen(with);
    size_t hits = 0;
    for (const char *p = strstr(s, FL_CAPTION_PLACEHOLDER); p; p = strstr(p + plen, FL_CAPTION_PLACEHOLDER)) hits++;
    size_t len = strlen(s);
    char *out = fl_xmalloc(len - hits * plen + hits * wlen + 1);
    char *o = out;
    for (const char *p = s;;) {
        const char *hit = strstr(p, FL_CAPTION_PLACEHOLDER);
        size_t keep = hit ? (size_t)(hit - p) : strlen(p);
        memcpy(o, p, keep);
        o += keep;
        if (!hit) break;
        memcpy(o, with, wlen);
        o += wlen;
        p = hit + plen;
    }
    *o = '\0';
    return out;
}

static bool has_word(const char *text, const char *word) {
    size_t wlen = strlen(word);
    for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
        bool start = p == text || !is_word_byte(p[-1]);
        bool end = !is_word_byte(p[wlen]);
        if (start && end) return true;
    }
    return false;
}

/* Tidy text in place after placeholders were removed. */
static void tidy(char *s) {
    char *o = s;
    bool pending_space = false;
    for (const char *p = s; *p; p++) {
        char ch = *p;
        if (is_space(ch)) {
            pending_space = o != s;
            continue;
        }
        bool punct = strchr(",.;:!?", ch) != NULL;
        if (o == s && (ch == ',' || ch == ';' || ch == ':')) continue; /* leading separator */
        if (ch == ',' && o > s && o[-1] == ',') continue;             /* doubled comma */
        if (pending_space && !punct) *o++ = ' ';
        pending_space = false;
        *o++ = ch;
    }
    while (o > s && (o[-1] == ',' || o[-1] == ';' || o[-1] == ':' || is_space(o[-1]))) o--;
    *o = '\0';
}

static char *trim_copy(const char *s) {
    while (is_space(*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1])) n--;
    char *out = fl_xmalloc(n + 1);
    memcpy(out, s, n);
    out[n] = '\0';
    return out;
}

char *fl_caption_resolve(const char *raw, const char *trigger, const char *default_caption, bool is_style) {
    const char *base = raw && !is_blank(raw) ? raw : default_caption ? default_caption : FL_CAPTION_DEFAULT;
    bool use_trigger = !is_style && trigger && !is_blank(trigger);
    if (!use_trigger) {
        char *removed = replace_placeholder(base, "");
        tidy(removed);
        return removed;
    }
    char *word = trim_copy(trigger);
    char *replaced = replace_placeholder(base, word);
    char *text = trim_copy(replaced);
    free(replaced);
    if (has_word(text, word)) {
        free(word);
        return text;
    }
    size_t wlen = strlen(word), tlen = strlen(text);
    char *out = fl_xmalloc(wlen + 2 + tlen + 1);
    memcpy(out, word, wlen);
    size_t o = wlen;
    if (tlen) {
        memcpy(out + o, ", ", 2);
        memcpy(out + o + 2, text, tlen);
        o += 2 + tlen;
    }
    out[o] = '\0';
    free(word);
    free(text);
    return out;
}

bool fl_caption_dropout(fl_rng *rng, float p) {
    float u = fl_rng_uniform(rng);
    if (!(p > 0.0f)) return false; /* also NaN */
    return p >= 1.0f || u < p;
}
