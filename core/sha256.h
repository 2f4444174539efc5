/*
 * sha256.h — SHA-256 (FIPS 180-4), for content addresses of adapter files and fingerprints of
 * base models. Streaming: init, update any number of times, final.
 */
#ifndef FL_CORE_SHA256_H
#define FL_CORE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct fl_sha256 {
    uint32_t state[8];
    uint64_t length; /* bytes hashed so far */
    uint8_t block[64];
    size_t used;
} fl_sha256;

void fl_sha256_init(fl_sha256 *h);
void fl_sha256_update(fl_sha256 *h, const void *data, size_t n);
void fl_sha256_final(fl_sha256 *h, uint8_t digest[32]);
/* Lower-case hex of the digest of data[0, n) into hex[65]. */
void fl_sha256_hex(const void *data, size_t n, char hex[65]);
void fl_sha256_digest_hex(const uint8_t digest[32], char hex[65]);
/* Lower-case hex digest of a whole file, read through a read-only mapping. */
int fl_sha256_file(const char *path, char hex[65], fl_error *err);

#endif
