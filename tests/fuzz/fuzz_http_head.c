/*
 * fuzz_http_head.c — libFuzzer target for the request-head check of the HTTP front door
 * (serve/http_head.c). The first input byte picks the head limit (64 bytes to 16 KiB), the rest is
 * what a client sent. Whatever the bytes, the result must be one of the three outcomes with its
 * invariants: a complete head lies inside the input and the limit, names a method and a target
 * starting with '/' inside it, and a path no longer than the target; an invalid head has a status
 * the front door sends and a one-line reason; an incomplete one is shorter than the limit. The
 * same file is linked into replay_http_head to replay the committed corpus as a regression test.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "serve/http_head.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t max = 64 + (size_t)data[0] * 64;
    const char *buf = (const char *)data + 1;
    size_t n = size - 1;
    fl_http_head h;
    int status = -1;
    char message[256];
    fl_http_head_result r = fl_http_head_parse(buf, n, max, &h, &status, message, sizeof message);
    switch (r) {
    case FL_HTTP_HEAD_COMPLETE:
        FL_CHECK(h.size > 0 && h.size <= n && h.size <= max);
        FL_CHECK(h.method == buf && h.method_len > 0 && h.method_len <= 32);
        FL_CHECK(h.target > buf && h.target + h.target_len <= buf + h.size && h.target[0] == '/');
        FL_CHECK(h.path_len <= h.target_len);
        FL_CHECK(h.minor_version == 0 || h.minor_version == 1);
        FL_CHECK(h.content_length >= -1 && h.content_length <= FL_HTTP_HEAD_MAX_LENGTH);
        FL_CHECK(!(h.chunked && h.content_length >= 0));
        FL_CHECK(buf[h.size - 1] == '\n');
        break;
    case FL_HTTP_HEAD_INVALID:
        FL_CHECKF(status == 400 || status == 413 || status == 414 || status == 431 || status == 501 || status == 505,
                  "status %d", status);
        FL_CHECK(message[0] != '\0' && strchr(message, '\n') == NULL);
        break;
    case FL_HTTP_HEAD_INCOMPLETE:
        FL_CHECK(n < max);
        break;
    default: FL_CHECK(!"an outcome that does not exist");
    }
    return 0;
}
