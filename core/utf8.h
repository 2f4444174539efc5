/*
 * utf8.h — checking and cleaning text that came from outside (file names, captions, URLs, JSON
 * strings from clients) before it is stored, matched or shown in a message.
 */
#ifndef FL_CORE_UTF8_H
#define FL_CORE_UTF8_H
#include <stdbool.h>
#include <stddef.h>

/* Length of the valid UTF-8 sequence at s (1..4), or 0: no overlongs, surrogates or code points
 * above U+10FFFF. n is the bytes available (>= 1). */
size_t fl_utf8_sequence(const unsigned char *s, size_t n);
/* True when the n bytes at s are valid UTF-8 (NUL bytes count as valid characters). */
bool fl_utf8_valid(const void *s, size_t n);
/* A printable copy of untrusted text for messages: control bytes and invalid UTF-8 become '?', cut
 * at min(size - 1, max_bytes) bytes on a character boundary. size must be >= 1. */
void fl_utf8_display(const char *raw, size_t max_bytes, char *out, size_t size);

#endif
