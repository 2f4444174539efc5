/*
 * multipart.h — multipart/form-data bodies (RFC 7578) parsed in place.
 *
 * The HTTP layer buffers a multipart body whole (up to its limit) and then splits it here. No
 * part gets a buffer of its own: each part's data stays in the body (moved back by less than
 * FL_MULTIPART_ALIGN bytes, into its own header block, so that it starts aligned, and followed by
 * a NUL), and the names, filenames and content types are copied into one block together with
 * the array of parts. So a request costs its body plus, per part, one small struct and its
 * strings (at most its header block); the number of parts and the size of each part's header
 * block are capped. Boundaries may be quoted (boundary="a b"). Two passes over the body, each
 * linear. A pure function over bytes: fuzzed by tests/fuzz/fuzz_multipart.c.
 */
#ifndef FL_SERVE_MULTIPART_H
#define FL_SERVE_MULTIPART_H
#include <stddef.h>

#include "core/error.h"
#include "serve/http.h"

#define FL_MULTIPART_BOUNDARY_MAX 70 /* RFC 2046 */
#define FL_MULTIPART_ALIGN 16         /* of each part's data, relative to the body */

/* The boundary parameter of a multipart Content-Type value, unquoted, into out. FL_EINVAL when
 * there is none or it is not 1-70 characters of RFC 2046's boundary alphabet. */
int fl_multipart_boundary(const char *content_type, char out[FL_MULTIPART_BOUNDARY_MAX + 1], fl_error *err);

typedef struct fl_multipart_limits {
    size_t max_parts;             /* more is FL_ELIMIT */
    size_t max_part_header_bytes; /* of one part's header block; more is FL_ELIMIT */
} fl_multipart_limits;

/* Split body (size bytes; body[size] must exist and be writable) into parts, in order. *parts is
 * malloc'ed with the strings (free it with free()); each part's data points into body, which
 * must outlive it. *n_parts entries. Every part needs Content-Disposition: form-data with a name.
 * Errors: FL_EINVAL for a malformed body, FL_ELIMIT over a limit, FL_ENOMEM. */
int fl_multipart_parse(unsigned char *body, size_t size, const char *boundary, const fl_multipart_limits *limits,
                       fl_http_part **parts, size_t *n_parts, fl_error *err);

#endif
