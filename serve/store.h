/*
 * store.h — the content-addressed adapter store on disk.
 *
 * An adapter file lives at <root>/blobs/<first two hex digits>/<sha256>.safetensors, named by the
 * SHA-256 of its bytes, so identical uploads share one file and a path can never hold the wrong
 * content. Every put is durable before it returns: the bytes go to a temporary file in the same
 * directory, are fsync'ed, renamed into place, and the directory is fsync'ed. Only then may a
 * registry entry point at the hash (DESIGN §6). A put of bytes already stored is a no-op.
 */
#ifndef FL_SERVE_STORE_H
#define FL_SERVE_STORE_H
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

typedef struct fl_store fl_store;

/* Opens (creating the directories) the store at root. */
int fl_store_open(const char *root, fl_store **out, fl_error *err);
void fl_store_close(fl_store *s);
const char *fl_store_root(const fl_store *s);

/* Stores bytes; hex receives their SHA-256 (64 hex digits and a NUL). */
int fl_store_put_bytes(fl_store *s, const void *data, size_t size, char hex[65], fl_error *err);
/* Stores a copy of the file at src. */
int fl_store_put_file(fl_store *s, const char *src, char hex[65], fl_error *err);
/* The path of a stored hash (whether or not it exists). Fails for a string that is not 64 hex
 * digits, so a client-supplied value can never name a path outside the store. */
int fl_store_path(const fl_store *s, const char *hex, char *path, size_t cap, fl_error *err);
bool fl_store_has(const fl_store *s, const char *hex);
/* The path of a stored hash that exists: FL_ENOTFOUND when it is not stored, FL_EINVAL for a
 * string that is not 64 hex digits. Its signature is adapters/cache.h's fl_adapter_locate_fn
 * (arg is the fl_store). */
int fl_store_locate(void *store, const char *hex, char *path, size_t cap, fl_error *err);
/* Removes a stored file (absent is not an error). */
int fl_store_remove(fl_store *s, const char *hex, fl_error *err);

#endif
