/*
 * text_util.c — helpers shared by the tokenizers (see text_internal.h): UTF-8 decoding and
 * encoding, the prompt checks, and the string -> int32 hash map (FNV-1a, linear probing).
 */
#include <stdlib.h>
#include <string.h>

#include "core/utf8.h"
#include "models/text/text_encoders.h"
#include "models/text/text_internal.h"

long fl_text_decode_utf8(const char *text, size_t len, uint32_t *cps, fl_error *err) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    long n = 0;
    while (i < len) {
        size_t k = fl_utf8_sequence(s + i, len - i);
        if (k == 0) return fl_fail(err, FL_EINVAL, "prompt is not valid UTF-8 (byte %zu)", i);
        uint32_t cp;
        if (k == 1) cp = s[i];
        else if (k == 2) cp = (uint32_t)(s[i] & 0x1F) << 6 | (s[i + 1] & 0x3F);
        else if (k == 3) cp = (uint32_t)(s[i] & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
        else
            cp = (uint32_t)(s[i] & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 | (uint32_t)(s[i + 2] & 0x3F) << 6 |
                 (s[i + 3] & 0x3F);
        cps[n++] = cp;
        i += k;
    }
    return n;
}

int fl_text_encode_utf8(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int fl_text_check_prompt(const char *text, size_t len, fl_error *err) {
    if (len > FL_TEXT_MAX_PROMPT_BYTES)
        return fl_fail(err, FL_ELIMIT, "prompt is %zu bytes, more than the %zu accepted", len,
                       (size_t)FL_TEXT_MAX_PROMPT_BYTES);
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        size_t k = fl_utf8_sequence(s + i, len - i);
        if (k == 0) return fl_fail(err, FL_EINVAL, "prompt is not valid UTF-8 (byte %zu)", i);
        i += k;
    }
    return 0;
}

static uint64_t hash_bytes(const char *key, size_t len) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ull;
    }
    return h;
}

void fl_strmap_init(fl_strmap *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2) cap *= 2;
    m->cap = cap;
    m->count = 0;
    m->keys = fl_xcalloc(cap, sizeof *m->keys);
    m->lens = fl_xcalloc(cap, sizeof *m->lens);
    m->values = fl_xcalloc(cap, sizeof *m->values);
}

void fl_strmap_free(fl_strmap *m) {
    if (!m->keys) return;
    for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
    free(m->keys);
    free(m->lens);
    free(m->values);
    memset(m, 0, sizeof *m);
}

static void grow(fl_strmap *m) {
    fl_strmap bigger;
    fl_strmap_init(&bigger, m->cap);
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) {
            size_t j = hash_bytes(m->keys[i], m->lens[i]) & (bigger.cap - 1);
            while (bigger.keys[j]) j = (j + 1) & (bigger.cap - 1);
            bigger.keys[j] = m->keys[i];
            bigger.lens[j] = m->lens[i];
            bigger.values[j] = m->values[i];
            bigger.count++;
        }
    free(m->keys);
    free(m->lens);
    free(m->values);
    *m = bigger;
}

void fl_strmap_put(fl_strmap *m, const char *key, size_t len, int32_t value) {
    if ((m->count + 1) * 2 > m->cap) grow(m);
    size_t j = hash_bytes(key, len) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->lens[j] == len && !memcmp(m->keys[j], key, len)) {
            m->values[j] = value;
            return;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = fl_xmalloc(len + 1);
    memcpy(m->keys[j], key, len);
    m->keys[j][len] = 0;
    m->lens[j] = (uint32_t)len;
    m->values[j] = value;
    m->count++;
}

int32_t fl_strmap_get(const fl_strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t j = hash_bytes(key, len) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->lens[j] == len && !memcmp(m->keys[j], key, len)) return m->values[j];
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}
