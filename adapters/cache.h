/*
 * cache.h — a worker's adapters in two tiers: loaded adapters (adapters/lora.h) in host memory,
 * and adapters attached to the worker's model (sets of models/flux.h on the model's device),
 * each tier bounded by bytes with the least recently used evicted first.
 *
 * Keyed by the adapter file's SHA-256, so two registry entries with one file share one slot.
 * Host tier: a miss asks the owner where that file is (the service's content-addressed store)
 * and loads it against the worker's model (shapes checked). Device tier: the cache owns the
 * model's frozen adapter sets; fl_adapter_cache_acquire attaches an adapter once (from the host
 * tier, loading it on a miss) and later returns the same set id, so a batch over resident
 * adapters only selects per-sample sets (fl_flux_set_sample_adapters): it attaches, detaches and
 * plans nothing. On the CPU backend the device is host memory, so both tiers count against it.
 *
 * Pinning: what a batch acquires stays attached until fl_adapter_cache_release_all, whatever
 * else is acquired meanwhile (a tier then goes over its budget rather than drop a pinned
 * adapter); likewise an adapter obtained by fl_adapter_cache_get stays valid until the next get
 * that may evict it, unless pinned with fl_adapter_cache_pin. Counts hits, misses, evictions,
 * attaches and detaches for /metrics. One cache belongs to one worker thread (no locking) and
 * must be freed before its model; nothing else may detach the sets it attached (should that
 * happen anyway, e.g. fl_flux_clear_adapters, the next acquire attaches the adapter again).
 */
#ifndef FL_ADAPTERS_CACHE_H
#define FL_ADAPTERS_CACHE_H
#include <stddef.h>
#include <stdint.h>

#include "adapters/lora.h"
#include "core/error.h"
#include "models/flux.h"

typedef struct fl_adapter_cache fl_adapter_cache;

typedef struct fl_adapter_cache_stats {
    uint64_t hits;         /* acquires and gets served without reading the store */
    uint64_t misses;       /* adapters loaded from the store */
    uint64_t evictions;    /* host-tier evictions */
    uint64_t attaches;     /* sets attached to the model */
    uint64_t detaches;     /* sets detached from the model (device-tier evictions, fl_adapter_cache_detach_all) */
    size_t resident;       /* adapters in host memory */
    size_t resident_bytes; /* their matrices' bytes (f32) */
    size_t budget_bytes;
    size_t attached;       /* adapters attached to the model */
    size_t attached_bytes; /* their device bytes (storage dtype) */
    size_t device_budget_bytes;
} fl_adapter_cache_stats;

/* Where the file of an adapter is: writes the path of the file whose SHA-256 is sha256 (64 hex
 * digits) into path; FL_ENOTFOUND when there is none, FL_EINVAL for a malformed hash. */
typedef int (*fl_adapter_locate_fn)(void *arg, const char *sha256, char *path, size_t cap, fl_error *err);

/* budget_bytes: the host tier's budget (a single adapter larger than the budget is still
 * loaded). The device tier's budget starts equal to it; see fl_adapter_cache_set_device_budget. */
fl_adapter_cache *fl_adapter_cache_create(fl_adapter_locate_fn locate, void *locate_arg, fl_flux_model *m,
                                          size_t budget_bytes);
/* Detaches every set the cache attached, then frees it (before the model). */
void fl_adapter_cache_free(fl_adapter_cache *c);
/* Device bytes of attached sets to keep; acquiring beyond it first detaches the least recently
 * used unpinned sets (an adapter larger than the budget alone is still attached). Shrinking it
 * takes effect at the next acquire. */
void fl_adapter_cache_set_device_budget(fl_adapter_cache *c, size_t bytes);

/* ---- host tier -------------------------------------------------------------------------------- */

/* The adapter stored under sha256 (64 hex digits), loading it on a miss. The pointer stays
 * valid while pinned, or until the next get or acquire. */
int fl_adapter_cache_get(fl_adapter_cache *c, const char *sha256, const fl_lora **out, fl_error *err);
void fl_adapter_cache_pin(fl_adapter_cache *c, const char *sha256);
void fl_adapter_cache_unpin_all(fl_adapter_cache *c);

/* ---- device tier ------------------------------------------------------------------------------ */

/* The model's set id of the adapter stored under sha256, attached (multiplier 1) unless it is
 * already; pins it until fl_adapter_cache_release_all. Errors: those of get (FL_EINVAL,
 * FL_ENOTFOUND, a misfit file), FL_ENOMEM when the device cannot hold it even after detaching
 * every unpinned set, FL_ELIMIT when FL_FLUX_MAX_ATTACHED sets are attached and all pinned.
 * A failed acquire leaves what was attached before attached. */
int fl_adapter_cache_acquire(fl_adapter_cache *c, const char *sha256, int *set_id, fl_error *err);
/* Unpins every attached set (the batch that used them is done); detaches nothing. */
void fl_adapter_cache_release_all(fl_adapter_cache *c);
/* Detaches every set, pinned or not (between batches, e.g. before a training job needs the bare
 * model; a batch still naming one would fail at its forward, not crash). */
void fl_adapter_cache_detach_all(fl_adapter_cache *c);

fl_adapter_cache_stats fl_adapter_cache_get_stats(const fl_adapter_cache *c);
/* The hashes in host memory, most recent first (up to max); returns how many. */
size_t fl_adapter_cache_resident(const fl_adapter_cache *c, const char **hashes, size_t max);
/* The hashes attached to the model, most recent first (up to max); returns how many. */
size_t fl_adapter_cache_attached(const fl_adapter_cache *c, const char **hashes, size_t max);

#endif
