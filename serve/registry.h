/*
 * registry.h — the adapter registry in Redis: what every adapter is, who owns it, where its file is.
 *
 * Keys (prefix fl:):
 *   fl:adapter:<id>              hash: the fields of fl_adapter_info
 *   fl:tenant:<tenant>:adapters  sorted set of ids scored by creation time (listing, pagination)
 *   fl:tenant:<tenant>:names     hash name -> id, and trigger word -> id under "trigger:<word>"
 *                                (a trigger word names the tenant's latest adapter that has it)
 *   fl:blob:<sha256>             number of registry entries using that stored file ("-1" while
 *                                the file of a last deleted entry is being removed)
 * Creation happens only after the file is durably in the store (adapters/store.h) and is one
 * atomic step (a Lua script), so an entry never exists without its file. Deletion removes the
 * entry first (one atomic step), then the file when no other entry uses it. Every read takes the
 * caller's tenant: an adapter of another tenant is FL_ENOTFOUND, exactly like a missing one.
 *
 * Import: an uploaded or downloaded file in any layout adapters/lora.h reads is converted once to
 * the canonical layout, checked against the base model's Linears (unknown modules or wrong shapes
 * fail with an error listing them), stored, and registered.
 */
#ifndef FL_SERVE_REGISTRY_H
#define FL_SERVE_REGISTRY_H
#include <stddef.h>
#include <stdint.h>

#include "serve/store.h"
#include "core/error.h"
#include "models/flux.h"
#include "serve/redis.h"

#define FL_ID_MAX 64
#define FL_TENANT_MAX 64
#define FL_NAME_MAX 128

typedef struct fl_adapter_info {
    char id[FL_ID_MAX];         /* "ad_" + 24 hex digits, or given by the caller */
    char tenant[FL_TENANT_MAX];
    char name[FL_NAME_MAX];     /* unique per tenant; defaults to the id */
    char trigger[FL_NAME_MAX];  /* may be empty */
    char base_model[65];        /* sha256 of the base model file */
    char sha256[65];            /* of the adapter file in the store */
    char format[16];            /* layout it arrived in: canonical, kohya, peft */
    char source[160];           /* "training:<job id>", "upload", or the URL it came from */
    int rank;
    double alpha;
    int64_t bytes;
    int64_t created_ms;         /* Unix time in milliseconds */
    char *metadata_json;        /* the file's metadata and training metrics, a JSON object (malloc'ed) */
} fl_adapter_info;

void fl_adapter_info_clear(fl_adapter_info *a); /* frees metadata_json */

/* An adapter name a client may give: valid UTF-8 without control characters, shorter than
 * FL_NAME_MAX, not beginning with "trigger:". Errors name the field as `field`. */
int fl_registry_check_name(const char *field, const char *name, fl_error *err);

/* A fresh random id "ad_<24 hex>" (from /dev/urandom). */
void fl_registry_new_id(char id[FL_ID_MAX]);

/* Registers a; its file (a->sha256) must already be in the store. Fails with FL_ECONFLICT when
 * the id exists or the tenant already has the name. */
int fl_registry_create(fl_redis *r, const fl_adapter_info *a, fl_error *err);
int fl_registry_get(fl_redis *r, const char *tenant, const char *id, fl_adapter_info *out, fl_error *err);
/* By name, or by trigger word. */
int fl_registry_lookup(fl_redis *r, const char *tenant, const char *name_or_trigger, fl_adapter_info *out,
                       fl_error *err);
/* The tenant's adapters, oldest first, from offset; *items (malloc'ed, free each with
 * fl_adapter_info_clear then free the array) holds at most limit; *total is the tenant's count. */
int fl_registry_list(fl_redis *r, const char *tenant, size_t offset, size_t limit, fl_adapter_info **items,
                     size_t *n, size_t *total, fl_error *err);
/* Deletes the entry, then its file if no other entry uses it. */
int fl_registry_delete(fl_redis *r, fl_store *store, const char *tenant, const char *id, fl_error *err);

/* Import: the file bytes in any layout, checked against the base model with parameters p.
 * Fills out->id (when empty), sha256, format, rank, alpha, bytes, created_ms, metadata_json;
 * the caller sets tenant, name, trigger, base_model and source before calling. On success the
 * canonical file is stored and the entry created. */
int fl_registry_import_bytes(fl_redis *r, fl_store *store, const fl_flux_params *p, const void *data, size_t size,
                             fl_adapter_info *inout, fl_error *err);
/* The same after downloading url with libcurl (limits of datasets/imageset.h's URL fetcher;
 * loopback, private and link-local addresses only with allow_private). */
int fl_registry_import_url(fl_redis *r, fl_store *store, const fl_flux_params *p, const char *url,
                           bool allow_private, fl_adapter_info *inout, fl_error *err);

#endif
