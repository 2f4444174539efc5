/*
 * cache.h — the host-side adapter cache of a worker: loaded adapters (adapters/lora.h) kept in
 * memory, least recently used evicted first once their bytes pass a budget.
 *
 * Keyed by the adapter file's SHA-256, so two registry entries with one file share one slot.
 * A miss asks the owner where that file is (the service's content-addressed store) and loads it
 * against the worker's model (shapes checked). Counts hits,
 * misses and evictions for /metrics. One cache belongs to one worker thread (no locking); an
 * adapter obtained by fl_adapter_cache_get stays valid until the next get that may evict it, so
 * a batch pins what it uses with fl_adapter_cache_pin / fl_adapter_cache_unpin_all.
 */
#ifndef FL_ADAPTERS_CACHE_H
#define FL_ADAPTERS_CACHE_H
#include <stddef.h>
#include <stdint.h>

#include "adapters/lora.h"
#include "serve/store.h"
#include "core/error.h"
#include "models/flux.h"

typedef struct fl_adapter_cache fl_adapter_cache;

typedef struct fl_adapter_cache_stats {
    uint64_t hits, misses, evictions;
    size_t resident;       /* adapters in memory */
    size_t resident_bytes; /* their matrices' bytes */
    size_t budget_bytes;
} fl_adapter_cache_stats;

/* Where the file of an adapter is: writes the path of the file whose SHA-256 is sha256 (64 hex
 * digits) into path; FL_ENOTFOUND when there is none, FL_EINVAL for a malformed hash. */
typedef int (*fl_adapter_locate_fn)(void *arg, const char *sha256, char *path, size_t cap, fl_error *err);

/* budget_bytes: evict beyond this (a single adapter larger than the budget is still loaded). */
fl_adapter_cache *fl_adapter_cache_create(fl_adapter_locate_fn locate, void *locate_arg, fl_flux_model *m,
                                          size_t budget_bytes);
void fl_adapter_cache_free(fl_adapter_cache *c);

/* The adapter stored under sha256 (64 hex digits), loading it on a miss. The pointer stays
 * valid while pinned, or until the next get. */
int fl_adapter_cache_get(fl_adapter_cache *c, const char *sha256, const fl_lora **out, fl_error *err);
void fl_adapter_cache_pin(fl_adapter_cache *c, const char *sha256);
void fl_adapter_cache_unpin_all(fl_adapter_cache *c);
fl_adapter_cache_stats fl_adapter_cache_get_stats(const fl_adapter_cache *c);
/* The hashes in memory, most recent first (up to max); returns how many. */
size_t fl_adapter_cache_resident(const fl_adapter_cache *c, const char **hashes, size_t max);

#endif
