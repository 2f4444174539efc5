/*
 * fuzz_multipart.c — libFuzzer target for multipart/form-data (serve/multipart.c). The input is a
 * Content-Type value, a newline, and a body. When the boundary parses, the body (copied into its
 * own buffer with one spare byte, as the HTTP layer keeps it) is split with small limits (16
 * parts, 256-byte part headers). Every part must then lie inside the body, start on a 16-byte
 * boundary of it, be followed by a NUL, and have a NUL-terminated name; a refusal must come with
 * a code and a one-line reason. The same file is linked into replay_multipart to replay the
 * committed corpus as a regression test.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "serve/multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nl = memchr(data, '\n', size < 512 ? size : 512);
    if (!nl) return 0;
    char ctype[513];
    size_t clen = (size_t)(nl - data);
    memcpy(ctype, data, clen);
    ctype[clen] = '\0';
    fl_error err = {0};
    char boundary[FL_MULTIPART_BOUNDARY_MAX + 1];
    if (fl_multipart_boundary(ctype, boundary, &err) != 0) {
        FL_CHECK(err.code != FL_OK && err.message[0] && !strchr(err.message, '\n'));
        return 0;
    }
    FL_CHECK(boundary[0] != '\0' && strlen(boundary) <= FL_MULTIPART_BOUNDARY_MAX);
    size_t n = size - clen - 1;
    unsigned char *body = malloc(n + 1);
    FL_CHECK(body != NULL);
    if (n) memcpy(body, nl + 1, n);
    body[n] = '\0';
    fl_multipart_limits lim = {.max_parts = 16, .max_part_header_bytes = 256};
    fl_http_part *parts = NULL;
    size_t count = 0;
    fl_error_clear(&err);
    if (fl_multipart_parse(body, n, boundary, &lim, &parts, &count, &err) != 0) {
        FL_CHECK(parts == NULL && count == 0);
        FL_CHECK(err.code != FL_OK && err.message[0] && !strchr(err.message, '\n'));
    } else {
        FL_CHECK(count <= lim.max_parts);
        for (size_t i = 0; i < count; i++) {
            const fl_http_part *p = &parts[i];
            FL_CHECK(p->data >= body && p->data + p->size <= body + n && p->data[p->size] == '\0');
            FL_CHECK((size_t)(p->data - body) % FL_MULTIPART_ALIGN == 0);
            FL_CHECK(p->name != NULL && strlen(p->name) <= lim.max_part_header_bytes);
            if (p->filename) FL_CHECK(strlen(p->filename) <= lim.max_part_header_bytes);
            if (p->content_type) FL_CHECK(strlen(p->content_type) <= lim.max_part_header_bytes);
        }
        free(parts);
    }
    free(body);
    return 0;
}
