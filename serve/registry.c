/*
 * registry.c — the adapter registry in Redis (key layout in registry.h) and the import of
 * uploaded or downloaded adapter files.
 *
 * Creation and deletion are Lua scripts, so each is atomic: a name already taken is refused in
 * the same step that would claim it, and an entry is never half written or half removed.
 *
 * The file reference count fl:blob:<sha256> and file removal: when a deletion takes the count to
 * zero, the script sets the key to "-1" (a removal in progress, expiring after a minute should the
 * deleting process die) and the file is unlinked; then the marker is cleared. A creation that
 * finds the marker is refused as retryable (FL_EUNAVAILABLE), and an import retries it after
 * storing the file again and checks the file after its entry exists, so an entry never ends up
 * pointing at a file that a concurrent deletion removed.
 */
#include "serve/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/utf8.h"
#include "datasets/fetch.h"
#include "datasets/imageset.h"

#define KEY_MAX 256
#define CREATE_RETRIES 100                /* waits of 20 ms for a concurrent file removal */

/* KEYS: adapter hash, tenant's sorted set, tenant's names hash, blob count.
 * ARGV: id, name, trigger, created_ms, then the hash's field/value pairs. */
static const char CREATE_SCRIPT[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 'id' end\n"
    "if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 'name' end\n"
    "if redis.call('GET', KEYS[4]) == '-1' then return 'busy' end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 5))\n"
    "redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])\n"
    "redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])\n"
    "if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], 'trigger:' .. ARGV[3], ARGV[1]) end\n"
    "redis.call('INCR', KEYS[4])\n"
    "return 'ok'\n";

/* KEYS as above. ARGV: id, tenant, sha256. Returns -2 when the entry is not (or no longer) the
 * tenant's with that file, 0 when the file's last user is gone (marker set), else the count. */
static const char DELETE_SCRIPT[] =
    "local e = redis.call('HMGET', KEYS[1], 'tenant', 'sha256', 'name', 'trigger')\n"
    "if e[1] ~= ARGV[2] or e[2] ~= ARGV[3] then return -2 end\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "if e[3] and redis.call('HGET', KEYS[3], e[3]) == ARGV[1] then redis.call('HDEL', KEYS[3], e[3]) end\n"
    "if e[4] and e[4] ~= '' then\n"
    "  local k = 'trigger:' .. e[4]\n"
    "  if redis.call('HGET', KEYS[3], k) == ARGV[1] then redis.call('HDEL', KEYS[3], k) end\n"
    "end\n"
    "local n = redis.call('DECR', KEYS[4])\n"
    "if n <= 0 then redis.call('SET', KEYS[4], '-1', 'PX', 60000) return 0 end\n"
    "return n\n";

/* KEYS: blob count. Clears a removal marker. */
static const char CLEAR_SCRIPT[] =
    "if redis.call('GET', KEYS[1]) == '-1' then redis.call('DEL', KEYS[1]) end\n"
    "return 1\n";

/* ---- validation ------------------------------------------------------------------------------ */

static bool is_hex64(const char *s) {
    size_t i = 0;
    for (; s[i]; i++)
        if (i >= 64 || !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return i == 64;
}

/* An id or tenant: 1..cap-1 bytes of [A-Za-z0-9._-]. */
static int check_token(const char *field, const char *s, size_t cap, fl_error *err) {
    size_t n = s ? strnlen(s, cap) : 0;
    if (n == 0) return fl_fail(err, FL_EINVAL, "%s is empty", field);
    if (n >= cap) return fl_fail(err, FL_EINVAL, "%s is longer than %zu bytes", field, cap - 1);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return fl_fail(err, FL_EINVAL, "%s may hold only letters, digits, '.', '_' and '-'", field);
    }
    return 0;
}

/* A name, trigger or source: valid UTF-8 without control characters, shorter than cap. */
static int check_text(const char *field, const char *s, size_t cap, bool allow_empty, fl_error *err) {
    size_t n = s ? strnlen(s, cap) : 0;
    if (n == 0 && !allow_empty) return fl_fail(err, FL_EINVAL, "%s is empty", field);
    if (n >= cap) return fl_fail(err, FL_EINVAL, "%s is longer than %zu bytes", field, cap - 1);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return fl_fail(err, FL_EINVAL, "%s contains a control character", field);
    if (n && !fl_utf8_valid(s, n))
        return fl_fail(err, FL_EINVAL, "%s is not valid UTF-8", field);
    return 0;
}

static int check_name(const char *field, const char *s, bool allow_empty, fl_error *err) {
    if (check_text(field, s, FL_NAME_MAX, allow_empty, err) != 0) return -1;
    if (!strncmp(s, "trigger:", 8)) return fl_fail(err, FL_EINVAL, "%s may not begin with 'trigger:'", field);
    return 0;
}

int fl_registry_check_name(const char *field, const char *name, fl_error *err) {
    return check_name(field, name, false, err);
}

/* The fields every entry needs, checked before anything is written. with_file: also the fields
 * an import fills in (sha256, format, rank, alpha, bytes). */
static int check_info(const fl_adapter_info *a, bool with_file, fl_error *err) {
    if (a->id[0] && check_token("id", a->id, sizeof a->id, err) != 0) return -1;
    if (check_token("tenant", a->tenant, sizeof a->tenant, err) != 0) return -1;
    if (check_name("name", a->name, true, err) != 0) return -1;
    if (check_text("trigger", a->trigger, sizeof a->trigger, true, err) != 0) return -1;
    if (check_text("source", a->source, sizeof a->source, true, err) != 0) return -1;
    if (strnlen(a->base_model, sizeof a->base_model) >= sizeof a->base_model ||
        (a->base_model[0] && !is_hex64(a->base_model)))
        return fl_fail(err, FL_EINVAL, "base_model is not a SHA-256 (64 lower-case hex digits)");
    if (!with_file) return 0;
    if (!a->id[0]) return fl_fail(err, FL_EINVAL, "id is empty");
    if (strnlen(a->sha256, sizeof a->sha256) >= sizeof a->sha256 || !is_hex64(a->sha256))
        return fl_fail(err, FL_EINVAL, "sha256 is not a SHA-256 (64 lower-case hex digits)");
    if (check_token("format", a->format, sizeof a->format, err) != 0) return -1;
    if (a->rank < 1) return fl_fail(err, FL_EINVAL, "rank must be at least 1");
    if (!isfinite(a->alpha) || !(a->alpha > 0.0)) return fl_fail(err, FL_EINVAL, "alpha must be a positive number");
    if (a->bytes < 0) return fl_fail(err, FL_EINVAL, "bytes is negative");
    if (a->created_ms < 0) return fl_fail(err, FL_EINVAL, "created_ms is negative");
    if (a->metadata_json) {
        json_t *j = json_loads(a->metadata_json, 0, NULL);
        bool ok = json_is_object(j);
        json_decref(j);
        if (!ok) return fl_fail(err, FL_EINVAL, "metadata is not a JSON object");
    }
    return 0;
}

/* ---- small helpers ------------------------------------------------------------------------------ */

void fl_adapter_info_clear(fl_adapter_info *a) {
    if (!a) return;
    free(a->metadata_json);
    a->metadata_json = NULL;
}

void fl_registry_new_id(char id[FL_ID_MAX]) {
    fl_random_id("ad_", 12, id, FL_ID_MAX);
}

typedef struct keys {
    char adapter[KEY_MAX], adapters[KEY_MAX], names[KEY_MAX], blob[KEY_MAX];
} keys;

static void make_keys(keys *k, const char *tenant, const char *id, const char *sha256) {
    snprintf(k->adapter, sizeof k->adapter, "fl:adapter:%s", id);
    snprintf(k->adapters, sizeof k->adapters, "fl:tenant:%s:adapters", tenant);
    snprintf(k->names, sizeof k->names, "fl:tenant:%s:names", tenant);
    snprintf(k->blob, sizeof k->blob, "fl:blob:%s", sha256);
}

static void copy_field(char *dst, size_t cap, const redisReply *v) {
    size_t n = v->len < cap - 1 ? v->len : cap - 1;
    memcpy(dst, v->str, n);
    dst[n] = '\0';
}

/* An HGETALL reply into out (which is cleared first); false for an empty reply. */
static bool parse_entry(const redisReply *reply, fl_adapter_info *out) {
    memset(out, 0, sizeof *out);
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2) return false;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        const char *key = k->str;
        if (!strcmp(key, "id")) copy_field(out->id, sizeof out->id, v);
        else if (!strcmp(key, "tenant")) copy_field(out->tenant, sizeof out->tenant, v);
        else if (!strcmp(key, "name")) copy_field(out->name, sizeof out->name, v);
        else if (!strcmp(key, "trigger")) copy_field(out->trigger, sizeof out->trigger, v);
        else if (!strcmp(key, "base_model")) copy_field(out->base_model, sizeof out->base_model, v);
        else if (!strcmp(key, "sha256")) copy_field(out->sha256, sizeof out->sha256, v);
        else if (!strcmp(key, "format")) copy_field(out->format, sizeof out->format, v);
        else if (!strcmp(key, "source")) copy_field(out->source, sizeof out->source, v);
        else if (!strcmp(key, "rank")) out->rank = (int)strtol(v->str, NULL, 10);
        else if (!strcmp(key, "alpha")) out->alpha = strtod(v->str, NULL);
        else if (!strcmp(key, "bytes")) out->bytes = strtoll(v->str, NULL, 10);
        else if (!strcmp(key, "created_ms")) out->created_ms = strtoll(v->str, NULL, 10);
        else if (!strcmp(key, "metadata")) {
            free(out->metadata_json);
            out->metadata_json = fl_xmalloc(v->len + 1);
            memcpy(out->metadata_json, v->str, v->len);
            out->metadata_json[v->len] = '\0';
        }
    }
    return true;
}

static int not_found(fl_error *err, const char *id) {
    return fl_fail(err, FL_ENOTFOUND, "adapter '%s' not found", id);
}

/* The entry of id if it belongs to tenant (id and tenant already checked). */
static int get_entry(fl_redis *r, const char *tenant, const char *id, fl_adapter_info *out, fl_error *err) {
    char key[KEY_MAX];
    snprintf(key, sizeof key, "fl:adapter:%s", id);
    const char *argv[] = {"HGETALL", key};
    redisReply *reply = fl_redis_argv(r, err, 2, argv, NULL);
    if (!reply) return -1;
    fl_adapter_info tmp;
    bool found = parse_entry(reply, &tmp);
    freeReplyObject(reply);
    if (!found || strcmp(tmp.tenant, tenant)) {
        fl_adapter_info_clear(&tmp);
        return not_found(err, id);
    }
    *out = tmp;
    return 0;
}

/* ---- create, read, list, delete ------------------------------------------------------------------ */

/* 0 created; 1 the file is being removed (retry after storing it again); -1 failed. */
static int create_once(fl_redis *r, const fl_adapter_info *a, fl_error *err) {
    const char *name = a->name[0] ? a->name : a->id;
    char rank[32], alpha[64], bytes[32], created[32];
    snprintf(rank, sizeof rank, "%d", a->rank);
    snprintf(alpha, sizeof alpha, "%.17g", a->alpha);
    snprintf(bytes, sizeof bytes, "%" PRId64, a->bytes);
    snprintf(created, sizeof created, "%" PRId64, a->created_ms > 0 ? a->created_ms : fl_now_ms());
    keys k;
    make_keys(&k, a->tenant, a->id, a->sha256);
    const char *argv[] = {"EVAL", CREATE_SCRIPT, "4", k.adapter, k.adapters, k.names, k.blob,
                          a->id, name, a->trigger, created,
                          "id", a->id, "tenant", a->tenant, "name", name, "trigger", a->trigger,
                          "base_model", a->base_model, "sha256", a->sha256, "format", a->format,
                          "source", a->source, "rank", rank, "alpha", alpha, "bytes", bytes,
                          "created_ms", created, "metadata", a->metadata_json ? a->metadata_json : "{}"};
    redisReply *reply = fl_redis_argv(r, err, (int)(sizeof argv / sizeof argv[0]), argv, NULL);
    if (!reply) return fl_fail_prefix(err, "registering adapter '%s'", a->id);
    int rc = -1;
    const char *what = reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS ? reply->str : "";
    if (!strcmp(what, "ok")) rc = 0;
    else if (!strcmp(what, "busy")) rc = 1;
    else if (!strcmp(what, "id")) fl_fail(err, FL_ECONFLICT, "adapter id '%s' already exists", a->id);
    else if (!strcmp(what, "name")) fl_fail(err, FL_ECONFLICT, "an adapter named '%s' already exists", name);
    else fl_fail(err, FL_EIO, "registering adapter '%s': unexpected reply from Redis", a->id);
    freeReplyObject(reply);
    return rc;
}

int fl_registry_create(fl_redis *r, const fl_adapter_info *a, fl_error *err) {
    if (check_info(a, true, err) != 0) return -1;
    int rc = create_once(r, a, err);
    if (rc == 1)
        return fl_fail(err, FL_EUNAVAILABLE, "adapter file %s is being removed; store it again and retry", a->sha256);
    return rc;
}

int fl_registry_get(fl_redis *r, const char *tenant, const char *id, fl_adapter_info *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (check_token("tenant", tenant, FL_TENANT_MAX, err) != 0) return -1;
    if (check_token("id", id, FL_ID_MAX, err) != 0) return -1;
    return get_entry(r, tenant, id, out, err);
}

int fl_registry_lookup(fl_redis *r, const char *tenant, const char *name_or_trigger, fl_adapter_info *out,
                       fl_error *err) {
    memset(out, 0, sizeof *out);
    if (check_token("tenant", tenant, FL_TENANT_MAX, err) != 0) return -1;
    if (check_name("name", name_or_trigger, false, err) != 0) return -1;
    char names[KEY_MAX], trigger_field[FL_NAME_MAX + 16];
    snprintf(names, sizeof names, "fl:tenant:%s:names", tenant);
    snprintf(trigger_field, sizeof trigger_field, "trigger:%s", name_or_trigger);
    const char *argv[] = {"HMGET", names, name_or_trigger, trigger_field};
    redisReply *reply = fl_redis_argv(r, err, 4, argv, NULL);
    if (!reply) return -1;
    char id[FL_ID_MAX] = "";
    for (size_t i = 0; reply->type == REDIS_REPLY_ARRAY && i < reply->elements && !id[0]; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING) copy_field(id, sizeof id, reply->element[i]);
    freeReplyObject(reply);
    if (!id[0]) return fl_fail(err, FL_ENOTFOUND, "no adapter named '%s'", name_or_trigger);
    if (get_entry(r, tenant, id, out, err) != 0) /* removed meanwhile */
        return fl_fail(err, FL_ENOTFOUND, "no adapter named '%s'", name_or_trigger);
    return 0;
}

size_t fl_registry_entry_bytes(const fl_adapter_info *a) {
    return sizeof *a + (a->metadata_json ? strlen(a->metadata_json) : 0);
}

int fl_registry_list(fl_redis *r, const char *tenant, size_t offset, size_t limit, fl_adapter_info **items,
                     size_t *n, size_t *total, fl_error *err) {
    return fl_registry_list_bounded(r, tenant, offset, limit, 0, items, n, total, err);
}

int fl_registry_list_bounded(fl_redis *r, const char *tenant, size_t offset, size_t limit, size_t max_bytes,
                             fl_adapter_info **items, size_t *n, size_t *total, fl_error *err) {
    *items = NULL;
    *n = 0;
    *total = 0;
    if (check_token("tenant", tenant, FL_TENANT_MAX, err) != 0) return -1;
    char key[KEY_MAX];
    snprintf(key, sizeof key, "fl:tenant:%s:adapters", tenant);
    const char *card_argv[] = {"ZCARD", key};
    redisReply *reply = fl_redis_argv(r, err, 2, card_argv, NULL);
    if (!reply) return -1;
    *total = reply->type == REDIS_REPLY_INTEGER && reply->integer > 0 ? (size_t)reply->integer : 0;
    freeReplyObject(reply);
    if (limit == 0 || offset >= *total) return 0;
    if (limit > *total - offset) limit = *total - offset;
    char start[32], stop[32];
    snprintf(start, sizeof start, "%zu", offset);
    snprintf(stop, sizeof stop, "%zu", offset + limit - 1);
    const char *range_argv[] = {"ZRANGE", key, start, stop};
    reply = fl_redis_argv(r, err, 4, range_argv, NULL);
    if (!reply) return -1;
    size_t count = reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
    fl_adapter_info *out = fl_xcalloc(count ? count : 1, sizeof *out);
    size_t got = 0, bytes = 0;
    int rc = 0;
    for (size_t i = 0; i < count && !(max_bytes && got > 0 && bytes >= max_bytes); i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len >= FL_ID_MAX) continue;
        fl_error one = {0};
        if (get_entry(r, tenant, e->str, &out[got], &one) == 0) {
            size_t more = fl_registry_entry_bytes(&out[got]);
            if (max_bytes && got > 0 && bytes + more > max_bytes) { /* the next page starts with it */
                fl_adapter_info_clear(&out[got]);
                break;
            }
            bytes += more;
            got++;
        } else if (one.code != FL_ENOTFOUND) { /* deleted since ZRANGE: skip; Redis gone: fail */
            if (err) *err = one;
            rc = -1;
            break;
        }
    }
    freeReplyObject(reply);
    if (rc != 0) {
        for (size_t i = 0; i < got; i++) fl_adapter_info_clear(&out[i]);
        free(out);
        return -1;
    }
    *items = out;
    *n = got;
    return 0;
}

/* After a deletion took a file's count to zero: removes the file, then the removal marker. */
static void remove_unused_file(fl_redis *r, fl_store *store, const char *sha256) {
    fl_error err = {0};
    if (fl_store_remove(store, sha256, &err) != 0)
        fl_log_warn("adapter file %s stays in the store: %s", sha256, err.message);
    char key[KEY_MAX];
    snprintf(key, sizeof key, "fl:blob:%s", sha256);
    const char *argv[] = {"EVAL", CLEAR_SCRIPT, "1", key};
    redisReply *reply = fl_redis_argv(r, &err, 4, argv, NULL);
    if (reply) freeReplyObject(reply); /* else the marker expires by itself */
}

int fl_registry_delete(fl_redis *r, fl_store *store, const char *tenant, const char *id, fl_error *err) {
    if (check_token("tenant", tenant, FL_TENANT_MAX, err) != 0) return -1;
    if (check_token("id", id, FL_ID_MAX, err) != 0) return -1;
    fl_adapter_info a;
    if (get_entry(r, tenant, id, &a, err) != 0) return -1;
    fl_adapter_info_clear(&a);
    keys k;
    make_keys(&k, tenant, id, a.sha256);
    const char *argv[] = {"EVAL", DELETE_SCRIPT, "4", k.adapter, k.adapters, k.names, k.blob, id, tenant, a.sha256};
    redisReply *reply = fl_redis_argv(r, err, (int)(sizeof argv / sizeof argv[0]), argv, NULL);
    if (!reply) return fl_fail_prefix(err, "deleting adapter '%s'", id);
    long long left = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -2;
    freeReplyObject(reply);
    if (left == -2) return not_found(err, id); /* deleted meanwhile */
    if (left == 0 && store) remove_unused_file(r, store, a.sha256);
    return 0;
}

/* ---- import ------------------------------------------------------------------------------------ */

/* The base model's Linears from its parameter list: every 2-D "<module>.weight" is one. */
static size_t model_linears(const fl_flux_params *p, char ***paths, fl_lora_dims **dims) {
    size_t n = fl_flux_linear_decls(p, NULL);
    fl_flux_linear_decl *decls = fl_xmalloc((n ? n : 1) * sizeof *decls);
    fl_flux_linear_decls(p, decls);
    *paths = fl_xmalloc((n ? n : 1) * sizeof **paths);
    *dims = fl_xmalloc((n ? n : 1) * sizeof **dims);
    for (size_t i = 0; i < n; i++) {
        (*paths)[i] = fl_xstrdup(decls[i].name);
        (*dims)[i] = (fl_lora_dims){.in = decls[i].in, .out = decls[i].out};
    }
    free(decls);
    return n;
}

/* A positive number in a metadata string, or 0. */
static double metadata_number(const fl_safetensors *st, const char *key) {
    const char *v = fl_safetensors_metadata_get(st, key);
    if (!v) return 0;
    char *end = NULL;
    double x = strtod(v, &end);
    return end != v && !*end && isfinite(x) && x > 0 ? x : 0;
}

fl_import_limits fl_import_limits_default(void) {
    return (fl_import_limits){
        .max_metadata_bytes = (size_t)64 << 10,
        .max_download_bytes = (size_t)2 << 30,
        .timeout_seconds = 60,
        .allow_private = false,
    };
}

/* The file's metadata as a JSON object (text malloc'ed), at most max_bytes of it. */
static int metadata_to_json(const fl_safetensors *st, size_t max_bytes, char **out, fl_error *err) {
    json_t *obj = json_object();
    for (size_t i = 0; i < fl_safetensors_metadata_count(st); i++) {
        const char *key, *value;
        fl_safetensors_metadata_at(st, i, &key, &value);
        json_object_set_new(obj, key, json_string(value));
    }
    *out = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    FL_CHECK(*out);
    size_t n = strlen(*out);
    if (n > max_bytes) {
        free(*out);
        *out = NULL;
        return fl_fail(err, FL_ELIMIT, "the file's metadata is %zu bytes as JSON, over the %zu-byte limit", n,
                       max_bytes);
    }
    return 0;
}

/* A failure of the store's files becomes a message without its paths (they are logged). */
static int store_failed(fl_error *err, const char *what) {
    if (!err) return -1;
    fl_log_warn("import: %s: %s", what, err->message);
    if (err->code == FL_EINVAL || err->code == FL_ELIMIT) return -1; /* about the adapter, not the store */
    if (err->code == FL_ENOSPACE)
        return fl_fail(err, FL_ENOSPACE, "the adapter store could not keep the file (%s): the service's disk is full", what);
    return fl_fail(err, FL_EIO, "the adapter store could not keep the file (%s); retry later", what);
}

/* Writes the canonical file for l to a new temporary path under the store (malloc'ed). */
static char *write_canonical(fl_store *store, const fl_lora *l, const fl_safetensors *st, fl_error *err) {
    char *tmp = NULL;
    if (asprintf(&tmp, "%s/blobs/.tmp-import-XXXXXX", fl_store_root(store)) < 0) FL_CHECK(!"out of memory");
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        fl_log_warn("import: cannot create a file under %s: %s", fl_store_root(store), strerror(errno));
        fl_fail(err, FL_EIO, "the adapter store cannot take a file now (%s); retry later", strerror(errno));
        free(tmp);
        return NULL;
    }
    close(fd);
    size_t n_meta = fl_safetensors_metadata_count(st);
    fl_safetensors_kv *meta = fl_xmalloc((n_meta + 1) * sizeof *meta);
    size_t m = 0;
    bool has_source = false;
    for (size_t i = 0; i < n_meta; i++) {
        fl_safetensors_metadata_at(st, i, &meta[m].key, &meta[m].value);
        has_source = has_source || !strcmp(meta[m].key, "source_format");
        m++;
    }
    if (!has_source) meta[m++] = (fl_safetensors_kv){"source_format", l->format};
    int rc = fl_lora_save(l, FL_LORA_CANONICAL, tmp, meta, m, err);
    free(meta);
    if (rc != 0) {
        store_failed(err, "writing the canonical file");
        unlink(tmp);
        free(tmp);
        return NULL;
    }
    return tmp;
}

/* Registers a (its file stored from canonical_path), waiting out a concurrent removal of the same
 * file, and stores the file again should that removal have taken it before the entry existed. */
static int create_stored(fl_redis *r, fl_store *store, const fl_adapter_info *a, const char *canonical_path,
                         fl_error *err) {
    char hex[65];
    for (int attempt = 0;; attempt++) {
        int rc = create_once(r, a, err);
        if (rc < 0) return -1;
        if (rc == 0) break;
        if (attempt == CREATE_RETRIES)
            return fl_fail(err, FL_EUNAVAILABLE, "adapter file %s is being removed; retry", a->sha256);
        fl_sleep_ms(20);
        if (fl_store_put_file(store, canonical_path, hex, err) != 0) return store_failed(err, "storing the file");
    }
    if (!fl_store_has(store, a->sha256) && fl_store_put_file(store, canonical_path, hex, err) != 0)
        return store_failed(err, "storing the file");
    return 0;
}

/* Removes a file stored for an import whose entry could not be created, unless an entry uses it. */
static void drop_if_unused(fl_redis *r, fl_store *store, const char *sha256) {
    char key[KEY_MAX];
    snprintf(key, sizeof key, "fl:blob:%s", sha256);
    const char *argv[] = {"GET", key};
    fl_error ignored = {0};
    redisReply *reply = fl_redis_argv(r, &ignored, 2, argv, NULL);
    if (!reply) return; /* cannot tell: keep the file */
    bool unused = reply->type == REDIS_REPLY_NIL ||
                  (reply->type == REDIS_REPLY_STRING && strtoll(reply->str, NULL, 10) <= 0);
    freeReplyObject(reply);
    if (unused) fl_store_remove(store, sha256, &ignored);
}

int fl_registry_import_bytes(fl_redis *r, fl_store *store, const fl_flux_params *p, const void *data, size_t size,
                             fl_adapter_info *inout, fl_error *err) {
    fl_import_limits limits = fl_import_limits_default();
    return fl_registry_import_bytes_limited(r, store, p, data, size, &limits, inout, err);
}

int fl_registry_import_bytes_limited(fl_redis *r, fl_store *store, const fl_flux_params *p, const void *data,
                                     size_t size, const fl_import_limits *limits, fl_adapter_info *inout,
                                     fl_error *err) {
    if (check_info(inout, false, err) != 0) return -1;
    if (fl_flux_params_validate(p, err) != 0) return fl_fail_prefix(err, "base model parameters");
    if (!data || size == 0) return fl_fail(err, FL_EINVAL, "the adapter file is empty");

    char **paths = NULL;
    fl_lora_dims *dims = NULL;
    size_t n_paths = model_linears(p, &paths, &dims);
    fl_lora *l = NULL;
    fl_safetensors *st = NULL;
    char *canonical = NULL, *metadata = NULL;
    bool generated_id = false;
    int rc = -1;
    if (fl_lora_load_memory(data, size, "adapter file", (const char *const *)paths, dims, n_paths, &l, err) != 0) {
        /* The bytes already passed the upload limits: a size the file's own header claims beyond
         * them is a malformed file (400), not an oversized request (413). */
        if (err && err->code == FL_ELIMIT) err->code = FL_EINVAL;
        goto done;
    }
    if (fl_lora_check_dims(l, (const char *const *)paths, dims, n_paths, err) != 0) {
        fl_fail_prefix(err, "adapter file");
        goto done;
    }
    if (fl_safetensors_open_memory(data, size, &st, err) != 0) goto done; /* parsed above: cannot fail */
    if (metadata_to_json(st, limits->max_metadata_bytes, &metadata, err) != 0) goto done;
    canonical = write_canonical(store, l, st, err);
    if (!canonical) goto done;
    char hex[65];
    if (fl_store_put_file(store, canonical, hex, err) != 0) {
        store_failed(err, "storing the file");
        goto done;
    }
    struct stat sb;
    if (stat(canonical, &sb) != 0) {
        fl_fail(err, FL_EIO, "the stored file cannot be read back (%s)", strerror(errno));
        store_failed(err, "reading the file back");
        goto done;
    }

    int64_t rank = 0;
    for (size_t i = 0; i < l->n_pairs; i++)
        if (l->pairs[i].rank > rank) rank = l->pairs[i].rank;
    double alpha = metadata_number(st, "alpha");
    if (alpha <= 0) alpha = metadata_number(st, "ss_network_alpha");
    if (alpha <= 0) alpha = l->pairs[0].alpha;
    if (!inout->id[0]) {
        fl_registry_new_id(inout->id);
        generated_id = true;
    }
    memcpy(inout->sha256, hex, sizeof hex);
    snprintf(inout->format, sizeof inout->format, "%s", l->format);
    inout->rank = (int)rank;
    inout->alpha = alpha;
    inout->bytes = (int64_t)sb.st_size;
    inout->created_ms = fl_now_ms();
    free(inout->metadata_json);
    inout->metadata_json = metadata;
    metadata = NULL;
    if (check_info(inout, true, err) != 0 || create_stored(r, store, inout, canonical, err) != 0) {
        drop_if_unused(r, store, hex);
        if (generated_id) inout->id[0] = '\0';
        fl_adapter_info_clear(inout);
        goto done;
    }
    rc = 0;
done:
    if (canonical) {
        unlink(canonical);
        free(canonical);
    }
    free(metadata);
    fl_safetensors_close(st);
    fl_lora_free(l);
    for (size_t i = 0; i < n_paths; i++) free(paths[i]);
    free(paths);
    free(dims);
    return rc;
}

int fl_registry_import_file(fl_redis *r, fl_store *store, const fl_flux_params *p, const char *path,
                            const fl_import_limits *limits, fl_adapter_info *inout, fl_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fl_log_warn("import: %s: %s", path, fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0) close(fd);
        return fl_fail(err, FL_EIO, "the adapter file could not be read");
    }
    if (st.st_size == 0) {
        close(fd);
        return fl_fail(err, FL_EINVAL, "the adapter file is empty");
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return fl_fail(err, FL_EIO, "the adapter file could not be read (%s)", strerror(errno));
    int rc = fl_registry_import_bytes_limited(r, store, p, map, (size_t)st.st_size, limits, inout, err);
    munmap(map, (size_t)st.st_size);
    return rc;
}

int fl_registry_import_url(fl_redis *r, fl_store *store, const fl_flux_params *p, const char *url,
                           const fl_import_limits *limits, fl_adapter_info *inout, fl_error *err) {
    if (!url || !*url) return fl_fail(err, FL_EINVAL, "no URL");
    if (check_info(inout, false, err) != 0) return -1;
    char *tmp = NULL;
    if (asprintf(&tmp, "%s/blobs/.tmp-download-XXXXXX", fl_store_root(store)) < 0) FL_CHECK(!"out of memory");
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        fl_log_warn("import: cannot create a file under %s: %s", fl_store_root(store), strerror(errno));
        free(tmp);
        return fl_fail(err, FL_EIO, "the adapter store cannot take a download now (%s); retry later", strerror(errno));
    }
    fl_fetch_limits fetch = {limits->max_download_bytes, limits->timeout_seconds, limits->allow_private,
                             limits->progress, limits->progress_arg};
    size_t size = 0;
    int rc = fl_fetch_url_to_fd(url, &fetch, fd, &size, err);
    close(fd);
    if (rc != 0) {
        fl_fail_prefix(err, "downloading the adapter");
    } else {
        if (!inout->source[0]) { /* the URL without its query or fragment, which may carry a token */
            size_t n = strcspn(url, "?#");
            if (n >= sizeof inout->source) n = sizeof inout->source - 1;
            memcpy(inout->source, url, n);
            inout->source[n] = '\0';
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)inout->source[i] < 0x20 || inout->source[i] == 0x7f) inout->source[i] = '?';
            if (!fl_utf8_valid(inout->source, n)) snprintf(inout->source, sizeof inout->source, "url");
        }
        rc = fl_registry_import_file(r, store, p, tmp, limits, inout, err);
    }
    unlink(tmp);
    free(tmp);
    return rc;
}
