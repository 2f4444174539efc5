/*
 * utf8.c — UTF-8 validation and display-safe copies of untrusted text (see utf8.h).
 */
#include "core/utf8.h"

#include <string.h>

size_t fl_utf8_sequence(const unsigned char *s, size_t n) {
    unsigned char b = s[0];
    if (b < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) len = 2;
    else if (b >= 0xe0 && b <= 0xef) len = 3, lo = b == 0xe0 ? 0xa0 : 0x80, hi = b == 0xed ? 0x9f : 0xbf;
    else if (b >= 0xf0 && b <= 0xf4) len = 4, lo = b == 0xf0 ? 0x90 : 0x80, hi = b == 0xf4 ? 0x8f : 0xbf;
    else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if (s[k] < 0x80 || s[k] > 0xbf) return 0;
    return len;
}

bool fl_utf8_valid(const void *text, size_t n) {
    const unsigned char *s = text;
    for (size_t i = 0; i < n;) {
        size_t len = fl_utf8_sequence(s + i, n - i);
        if (!len) return false;
        i += len;
    }
    return true;
}

void fl_utf8_display(const char *raw, size_t max_bytes, char *out, size_t size) {
    const unsigned char *s = (const unsigned char *)raw;
    size_t n = strlen(raw), o = 0, limit = size - 1 < max_bytes ? size - 1 : max_bytes;
    for (size_t i = 0; i < n && o < limit;) {
        size_t len = fl_utf8_sequence(s + i, n - i);
        if (len == 1 && (s[i] < 0x20 || s[i] == 0x7f)) len = 0;
        if (len == 0 || o + len > limit) {
            out[o++] = '?';
            i += len ? len : 1;
            continue;
        }
        memcpy(out + o, s + i, len);
        o += len;
        i += len;
    }
    out[o] = '\0';
}
