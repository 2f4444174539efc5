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
#define FL_NAME_MAX 512       /* bytes: a name of FL_NAME_MAX_CHARS characters fits */
#define FL_NAME_MAX_CHARS 127 /* an adapter's name or trigger, in characters */

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
/* The same, ending the page early once its entries' size (fl_registry_entry_bytes) passes
 * max_bytes (0: no bound); a page holds at least one entry, so *n < limit with offset + *n <
 * *total means "more from offset + *n". */
int fl_registry_list_bounded(fl_redis *r, const char *tenant, size_t offset, size_t limit, size_t max_bytes,
                             fl_adapter_info **items, size_t *n, size_t *total, fl_error *err);
/* About how many bytes an entry takes shown as JSON (its metadata and fields). */
size_t fl_registry_entry_bytes(const fl_adapter_info *a);
/* Deletes the entry, then its file if no other entry uses it. */
int fl_registry_delete(fl_redis *r, fl_store *store, const char *tenant, const char *id, fl_error *err);

/* What an import accepts. */
typedef struct fl_import_limits {
    size_t max_metadata_bytes; /* the file's metadata as JSON (default 64 KiB): more is FL_ELIMIT */
    size_t max_download_bytes; /* a URL's body (default 2 GiB: a rank-128 adapter on every Linear of
                                * FLUX.1-dev is about 1.3 GB in bf16); more is FL_ELIMIT */
    long timeout_seconds;      /* a URL's whole transfer (default 60) */
    bool allow_private;        /* fetch from loopback, private and link-local addresses */
    bool (*progress)(void *arg); /* called about once a second while downloading (may be NULL);
                                  * false stops the download (FL_EUNAVAILABLE) */
    void *progress_arg;
} fl_import_limits;

fl_import_limits fl_import_limits_default(void);

/* Import: the file bytes in any layout, checked against the base model with parameters p (every
 * value finite: a NaN or infinity is FL_EINVAL naming the tensor). Fills out->id (when empty),
 * sha256, format, rank, alpha, bytes, created_ms, metadata_json; the caller sets tenant, name,
 * trigger, base_model and source before calling. On success the canonical file is stored and the
 * entry created. Messages never name a path of the server. The first form uses the default
 * limits. */
int fl_registry_import_bytes(fl_redis *r, fl_store *store, const fl_flux_params *p, const void *data, size_t size,
                             fl_adapter_info *inout, fl_error *err);
int fl_registry_import_bytes_limited(fl_redis *r, fl_store *store, const fl_flux_params *p, const void *data,
                                     size_t size, const fl_import_limits *limits, fl_adapter_info *inout,
                                     fl_error *err);
/* The same from a file (mapped, not read into memory). */
int fl_registry_import_file(fl_redis *r, fl_store *store, const fl_flux_params *p, const char *path,
                            const fl_import_limits *limits, fl_adapter_info *inout, fl_error *err);
/* The same after downloading url (datasets/fetch.h) into a temporary file of the store, never
 * into memory: at most limits->max_download_bytes, within limits->timeout_seconds, and loopback,
 * private and link-local addresses only with limits->allow_private. inout->source, when empty,
 * gets the URL without its query or fragment. */
int fl_registry_import_url(fl_redis *r, fl_store *store, const fl_flux_params *p, const char *url,
                           const fl_import_limits *limits, fl_adapter_info *inout, fl_error *err);

#endif
