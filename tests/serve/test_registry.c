/*
 * test_registry.c — the adapter registry in Redis (adapters/registry.h), the Redis connection and
 * private server it runs on (serve/redis.h), and imports of adapter files.
 *
 * A real redis-server is started in a temporary directory with fl_redis_server_start (it must be
 * installed: the test fails, not skips, without it). Covered: create/get, validation of ids,
 * tenants and names, name conflicts, lookup by name and by trigger word, pagination oldest first,
 * tenant isolation (another tenant's adapter is "not found" exactly like a missing one), deletion
 * (the stored file goes only with its last user), Redis down (FL_EUNAVAILABLE) and restarted on
 * the same directory (the AOF keeps the entries and the same connection carries on), imports of
 * the golden adapter b in the canonical and kohya layouts against model b's parameters, refusals
 * listing unknown modules and wrong shapes, and garbage that leaves neither entry nor file behind.
 */
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "serve/registry.h"
#include "serve/store.h"
#include "core/safetensors.h"
#include "harness.h"
#include "models/flux.h"
#include "serve/redis.h"

static char tmp_dir[256], redis_dir[300];
static fl_redis_server *server;
static fl_redis *redis;
static fl_store *store;
static fl_flux_params params_b;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static size_t counted_files;

static int count_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)path;
    (void)st;
    (void)ftw;
    if (flag == FTW_F) counted_files++;
    return 0;
}

/* Files in the store (stored adapters and any temporary file). */
static size_t store_files(void) {
    char blobs[512];
    snprintf(blobs, sizeof blobs, "%s/blobs", fl_store_root(store));
    counted_files = 0;
    nftw(blobs, count_entry, 16, FTW_PHYS);
    return counted_files;
}

static char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    *size = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

/* An entry whose file is the stored bytes `content`. */
static fl_adapter_info make_info(const char *tenant, const char *id, const char *name, const char *trigger,
                                 const char *content, int64_t created_ms) {
    fl_adapter_info a;
    memset(&a, 0, sizeof a);
    snprintf(a.tenant, sizeof a.tenant, "%s", tenant);
    snprintf(a.id, sizeof a.id, "%s", id);
    snprintf(a.name, sizeof a.name, "%s", name);
    snprintf(a.trigger, sizeof a.trigger, "%s", trigger);
    snprintf(a.base_model, sizeof a.base_model, "%064d", 7);
    snprintf(a.format, sizeof a.format, "canonical");
    snprintf(a.source, sizeof a.source, "training:job_1");
    a.rank = 8;
    a.alpha = 12.5;
    a.bytes = (int64_t)strlen(content);
    a.created_ms = created_ms;
    fl_error err = {0};
    FL_EXPECTF(fl_store_put_bytes(store, content, strlen(content), a.sha256, &err) == 0, "%s", err.message);
    return a;
}

static void test_redis_basics(void) {
    fl_error err = {0};
    fl_redis *r = NULL;
    FL_EXPECT(fl_redis_connect("", &r, &err) != 0 && err.code == FL_EINVAL && !r);
    FL_EXPECT(fl_redis_connect("localhost", &r, &err) != 0 && err.code == FL_EINVAL);
    FL_EXPECT(fl_redis_connect("host:99999", &r, &err) != 0 && err.code == FL_EINVAL);
    char missing[512];
    snprintf(missing, sizeof missing, "unix:%s/nothing.sock", tmp_dir);
    FL_EXPECT(fl_redis_connect(missing, &r, &err) != 0 && err.code == FL_EUNAVAILABLE);

    redisReply *reply = fl_redis_cmd(redis, &err, "SET %s %b", "fl:test:key", "v\0w", (size_t)3);
    FL_EXPECTF(reply, "%s", err.message);
    if (reply) freeReplyObject(reply);
    const char *argv[] = {"GET", "fl:test:key"};
    reply = fl_redis_argv(redis, &err, 2, argv, NULL);
    FL_EXPECT(reply && reply->type == REDIS_REPLY_STRING && reply->len == 3 && !memcmp(reply->str, "v\0w", 3));
    if (reply) freeReplyObject(reply);
    reply = fl_redis_cmd(redis, &err, "HGET %s x", "fl:test:key"); /* wrong type: an error reply */
    FL_EXPECT(!reply && err.code == FL_EIO && strstr(err.message, "WRONGTYPE"));
    reply = fl_redis_cmd(redis, &err, "DEL %s", "fl:test:key");
    if (reply) freeReplyObject(reply);

    /* A second server on the same directory is refused. */
    fl_redis_server *second = NULL;
    FL_EXPECT(fl_redis_server_start(redis_dir, &second, &err) != 0 && err.code == FL_ECONFLICT && !second);
}

static void test_create_get(void) {
    fl_error err = {0};
    fl_adapter_info a = make_info("acme", "ad_one", "Logo v1", "sks", "file one", 0);
    a.metadata_json = strdup("{\"steps\":\"300\"}");
    FL_EXPECTF(fl_registry_create(redis, &a, &err) == 0, "%s", err.message);
    fl_adapter_info got;
    FL_EXPECTF(fl_registry_get(redis, "acme", "ad_one", &got, &err) == 0, "%s", err.message);
    FL_EXPECT(!strcmp(got.id, "ad_one") && !strcmp(got.tenant, "acme") && !strcmp(got.name, "Logo v1"));
    FL_EXPECT(!strcmp(got.trigger, "sks") && !strcmp(got.base_model, a.base_model) && !strcmp(got.sha256, a.sha256));
    FL_EXPECT(!strcmp(got.format, "canonical") && !strcmp(got.source, "training:job_1"));
    FL_EXPECT(got.rank == 8 && got.alpha == 12.5 && got.bytes == 8 && got.created_ms > 1600000000000LL);
    FL_EXPECT(got.metadata_json && !strcmp(got.metadata_json, "{\"steps\":\"300\"}"));
    fl_adapter_info_clear(&got);

    /* Conflicts: the id, and the name within the tenant. */
    fl_adapter_info dup = make_info("acme", "ad_one", "Other", "", "file one", 0);
    FL_EXPECT(fl_registry_create(redis, &dup, &err) != 0 && err.code == FL_ECONFLICT);
    fl_adapter_info same_name = make_info("acme", "ad_two", "Logo v1", "", "file one", 0);
    FL_EXPECT(fl_registry_create(redis, &same_name, &err) != 0 && err.code == FL_ECONFLICT);
    FL_EXPECTF(strstr(err.message, "Logo v1"), "%s", err.message);
    /* Another tenant may use the name. */
    fl_adapter_info other = make_info("globex", "ad_two", "Logo v1", "", "file one", 0);
    FL_EXPECTF(fl_registry_create(redis, &other, &err) == 0, "%s", err.message);

    /* The name defaults to the id. */
    fl_adapter_info unnamed = make_info("acme", "ad_three", "", "", "file three", 0);
    FL_EXPECT(fl_registry_create(redis, &unnamed, &err) == 0);
    FL_EXPECT(fl_registry_lookup(redis, "acme", "ad_three", &got, &err) == 0 && !strcmp(got.name, "ad_three"));
    fl_adapter_info_clear(&got);

    /* Lookup by name, then by trigger word. */
    FL_EXPECT(fl_registry_lookup(redis, "acme", "Logo v1", &got, &err) == 0 && !strcmp(got.id, "ad_one"));
    fl_adapter_info_clear(&got);
    FL_EXPECT(fl_registry_lookup(redis, "acme", "sks", &got, &err) == 0 && !strcmp(got.id, "ad_one"));
    fl_adapter_info_clear(&got);
    FL_EXPECT(fl_registry_lookup(redis, "acme", "nothing", &got, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_registry_lookup(redis, "globex", "sks", &got, &err) != 0 && err.code == FL_ENOTFOUND);

    /* Validation names the field. */
    fl_adapter_info bad = make_info("ac me", "ad_x", "n", "", "file one", 0);
    FL_EXPECT(fl_registry_create(redis, &bad, &err) != 0 && err.code == FL_EINVAL && strstr(err.message, "tenant"));
    bad = make_info("acme", "../x", "n", "", "file one", 0);
    FL_EXPECT(fl_registry_create(redis, &bad, &err) != 0 && err.code == FL_EINVAL && strstr(err.message, "id"));
    bad = make_info("acme", "ad_x", "two\nlines", "", "file one", 0);
    FL_EXPECT(fl_registry_create(redis, &bad, &err) != 0 && err.code == FL_EINVAL && strstr(err.message, "name"));
    bad = make_info("acme", "ad_x", "n", "", "file one", 0);
    snprintf(bad.sha256, sizeof bad.sha256, "../../etc/passwd");
    FL_EXPECT(fl_registry_create(redis, &bad, &err) != 0 && err.code == FL_EINVAL && strstr(err.message, "sha256"));
    bad = make_info("acme", "ad_x", "n", "", "file one", 0);
    bad.metadata_json = "[1]";
    FL_EXPECT(fl_registry_create(redis, &bad, &err) != 0 && err.code == FL_EINVAL && strstr(err.message, "metadata"));
    FL_EXPECT(fl_registry_get(redis, "acme", "a/b", &got, &err) != 0 && err.code == FL_EINVAL);
    FL_EXPECT(fl_registry_get(redis, "", "ad_one", &got, &err) != 0 && err.code == FL_EINVAL);
    fl_adapter_info_clear(&a);

    /* Clean up for the tests that follow. */
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_one", &err) == 0);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_three", &err) == 0);
    FL_EXPECT(fl_registry_delete(redis, store, "globex", "ad_two", &err) == 0);
}

static void test_tenant_isolation(void) {
    fl_error err = {0}, missing = {0};
    fl_adapter_info a = make_info("acme", "ad_private", "Secret", "zz", "private file", 0);
    FL_EXPECT(fl_registry_create(redis, &a, &err) == 0);
    fl_adapter_info got;
    FL_EXPECT(fl_registry_get(redis, "globex", "ad_private", &got, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_registry_get(redis, "acme", "ad_private_nope", &got, &missing) != 0);
    /* The same message as for a missing id (only the id differs). */
    char want[256];
    snprintf(want, sizeof want, "adapter '%s' not found", "ad_private");
    FL_EXPECTF(!strcmp(err.message, want), "%s", err.message);
    snprintf(want, sizeof want, "adapter '%s' not found", "ad_private_nope");
    FL_EXPECTF(!strcmp(missing.message, want), "%s", missing.message);
    FL_EXPECT(fl_registry_delete(redis, store, "globex", "ad_private", &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_registry_lookup(redis, "globex", "Secret", &got, &err) != 0 && err.code == FL_ENOTFOUND);
    fl_adapter_info *items = NULL;
    size_t n = 0, total = 0;
    FL_EXPECT(fl_registry_list(redis, "globex", 0, 10, &items, &n, &total, &err) == 0 && n == 0 && total == 0);
    free(items);
    FL_EXPECT(fl_registry_get(redis, "acme", "ad_private", &got, &err) == 0); /* still there for its owner */
    fl_adapter_info_clear(&got);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_private", &err) == 0);
}

static void test_list_pagination(void) {
    fl_error err = {0};
    char id[FL_ID_MAX], name[32], content[32];
    for (int i = 0; i < 5; i++) { /* created out of order; listed by creation time */
        int k = (i * 3) % 5;
        snprintf(id, sizeof id, "ad_page_%d", k);
        snprintf(name, sizeof name, "page %d", k);
        snprintf(content, sizeof content, "page content %d", k);
        fl_adapter_info a = make_info("pager", id, name, "", content, 1700000000000LL + k * 1000);
        FL_EXPECTF(fl_registry_create(redis, &a, &err) == 0, "%s", err.message);
    }
    fl_adapter_info other = make_info("someone", "ad_page_x", "x", "", "page content 9", 1);
    FL_EXPECT(fl_registry_create(redis, &other, &err) == 0);
    fl_adapter_info *items = NULL;
    size_t n = 0, total = 0;
    FL_EXPECTF(fl_registry_list(redis, "pager", 0, 2, &items, &n, &total, &err) == 0, "%s", err.message);
    FL_EXPECT(n == 2 && total == 5);
    FL_EXPECT(n == 2 && !strcmp(items[0].id, "ad_page_0") && !strcmp(items[1].id, "ad_page_1"));
    FL_EXPECT(n == 2 && items[0].created_ms == 1700000000000LL && !strcmp(items[1].name, "page 1"));
    for (size_t i = 0; i < n; i++) fl_adapter_info_clear(&items[i]);
    free(items);
    FL_EXPECT(fl_registry_list(redis, "pager", 2, 2, &items, &n, &total, &err) == 0);
    FL_EXPECT(n == 2 && !strcmp(items[0].id, "ad_page_2") && !strcmp(items[1].id, "ad_page_3"));
    for (size_t i = 0; i < n; i++) fl_adapter_info_clear(&items[i]);
    free(items);
    FL_EXPECT(fl_registry_list(redis, "pager", 4, 100, &items, &n, &total, &err) == 0);
    FL_EXPECT(n == 1 && !strcmp(items[0].id, "ad_page_4") && total == 5);
    for (size_t i = 0; i < n; i++) fl_adapter_info_clear(&items[i]);
    free(items);
    FL_EXPECT(fl_registry_list(redis, "pager", 5, 100, &items, &n, &total, &err) == 0 && n == 0 && total == 5);
    free(items);
    FL_EXPECT(fl_registry_list(redis, "pager", 0, 0, &items, &n, &total, &err) == 0 && n == 0 && total == 5);
    free(items);
    for (int k = 0; k < 5; k++) {
        snprintf(id, sizeof id, "ad_page_%d", k);
        FL_EXPECT(fl_registry_delete(redis, store, "pager", id, &err) == 0);
    }
    FL_EXPECT(fl_registry_delete(redis, store, "someone", "ad_page_x", &err) == 0);
}

static long long blob_count(const char *sha256) {
    fl_error err = {0};
    redisReply *reply = fl_redis_cmd(redis, &err, "GET fl:blob:%s", sha256);
    long long v = reply && reply->type == REDIS_REPLY_STRING ? atoll(reply->str) : -100;
    if (reply) freeReplyObject(reply);
    return v;
}

static void test_delete_shared_file(void) {
    fl_error err = {0};
    fl_adapter_info a = make_info("acme", "ad_share_a", "Shared A", "shr", "shared bytes", 0);
    fl_adapter_info b = make_info("acme", "ad_share_b", "Shared B", "", "shared bytes", 0);
    FL_EXPECT(!strcmp(a.sha256, b.sha256));
    FL_EXPECT(fl_registry_create(redis, &a, &err) == 0);
    FL_EXPECT(fl_registry_create(redis, &b, &err) == 0);
    FL_EXPECT(blob_count(a.sha256) == 2);
    FL_EXPECTF(fl_registry_delete(redis, store, "acme", "ad_share_a", &err) == 0, "%s", err.message);
    FL_EXPECT(fl_store_has(store, a.sha256)); /* b still uses it */
    FL_EXPECT(blob_count(a.sha256) == 1);
    fl_adapter_info got;
    FL_EXPECT(fl_registry_get(redis, "acme", "ad_share_a", &got, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_registry_lookup(redis, "acme", "Shared A", &got, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_registry_lookup(redis, "acme", "shr", &got, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_share_a", &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_share_b", &err) == 0);
    FL_EXPECT(!fl_store_has(store, a.sha256)); /* the last user is gone */
    FL_EXPECT(blob_count(a.sha256) == -100);   /* no count, no removal marker left */
    /* The name is free again. */
    fl_adapter_info again = make_info("acme", "ad_share_c", "Shared A", "", "shared bytes", 0);
    FL_EXPECT(fl_registry_create(redis, &again, &err) == 0);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_share_c", &err) == 0);
    FL_EXPECT(store_files() == 0);
}

static void test_restart(void) {
    fl_error err = {0};
    fl_adapter_info a = make_info("acme", "ad_durable", "Durable", "dur", "durable bytes", 0);
    FL_EXPECT(fl_registry_create(redis, &a, &err) == 0);
    fl_redis_server_stop(server);
    server = NULL;
    fl_adapter_info got;
    FL_EXPECT(fl_registry_get(redis, "acme", "ad_durable", &got, &err) != 0 && err.code == FL_EUNAVAILABLE);
    FL_EXPECTF(fl_redis_server_start(redis_dir, &server, &err) == 0, "%s", err.message);
    if (!server) return;
    /* The same connection reconnects; the AOF brought the entry back. */
    FL_EXPECTF(fl_registry_get(redis, "acme", "ad_durable", &got, &err) == 0, "%s", err.message);
    FL_EXPECT(!strcmp(got.name, "Durable") && !strcmp(got.sha256, a.sha256));
    fl_adapter_info_clear(&got);
    FL_EXPECT(fl_registry_lookup(redis, "acme", "dur", &got, &err) == 0);
    fl_adapter_info_clear(&got);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_durable", &err) == 0);
    FL_EXPECT(!fl_store_has(store, a.sha256));
}

/* ---- imports ------------------------------------------------------------------------------------- */

static fl_adapter_info import_request(const char *tenant, const char *name) {
    fl_adapter_info a;
    memset(&a, 0, sizeof a);
    snprintf(a.tenant, sizeof a.tenant, "%s", tenant);
    snprintf(a.name, sizeof a.name, "%s", name);
    snprintf(a.source, sizeof a.source, "upload");
    return a;
}

static int import_fixture(const char *fixture, fl_adapter_info *a, fl_error *err) {
    char path[1024];
    fl_test_data_path(fixture, path, sizeof path);
    size_t size = 0;
    char *data = read_file(path, &size);
    FL_EXPECTF(data, "cannot read %s", path);
    if (!data) return -1;
    int rc = fl_registry_import_bytes(redis, store, &params_b, data, size, a, err);
    free(data);
    return rc;
}

/* Largest |ΔW| difference between two adapters over the modules of x ((alpha / r) B A each). */
static double max_delta_diff(const fl_lora *x, const fl_lora *y) {
    double worst = 0;
    for (size_t i = 0; i < x->n_pairs; i++) {
        const fl_flux_lora_pair *p = &x->pairs[i];
        size_t j = 0;
        while (j < y->n_pairs && strcmp(y->pairs[j].module, p->module)) j++;
        if (j == y->n_pairs) return 1e30;
        const fl_flux_lora_pair *q = &y->pairs[j];
        int64_t in = x->dims[i].in, out = x->dims[i].out;
        if (y->dims[j].in != in || y->dims[j].out != out) return 1e30;
        for (int64_t o = 0; o < out; o++)
            for (int64_t c = 0; c < in; c++) {
                double dp = 0, dq = 0;
                for (int64_t k = 0; k < p->rank; k++) dp += (double)p->b[o * p->rank + k] * p->a[k * in + c];
                for (int64_t k = 0; k < q->rank; k++) dq += (double)q->b[o * q->rank + k] * q->a[k * in + c];
                dp *= p->alpha / (double)p->rank;
                dq *= q->alpha / (double)q->rank;
                double d = dp > dq ? dp - dq : dq - dp;
                if (d > worst) worst = d;
            }
    }
    return worst;
}

static void test_import_fixtures(void) {
    fl_error err = {0};
    fl_adapter_info a = import_request("acme", "Imported canonical");
    FL_EXPECTF(import_fixture("fixtures/flux_b.lora.safetensors", &a, &err) == 0, "%s", err.message);
    FL_EXPECT(!strncmp(a.id, "ad_", 3) && strlen(a.id) == 27);
    FL_EXPECT(!strcmp(a.format, "canonical") && a.rank == 4 && a.alpha == 6.0 && a.bytes > 0);
    FL_EXPECT(a.created_ms > 1600000000000LL && fl_store_has(store, a.sha256));
    json_t *meta = a.metadata_json ? json_loads(a.metadata_json, 0, NULL) : NULL;
    FL_EXPECT(json_is_object(meta) && !strcmp(json_string_value(json_object_get(meta, "targets")), "all"));
    json_decref(meta);

    fl_adapter_info got;
    FL_EXPECT(fl_registry_get(redis, "acme", a.id, &got, &err) == 0);
    FL_EXPECT(!strcmp(got.sha256, a.sha256) && got.rank == 4 && got.bytes == a.bytes && !strcmp(got.source, "upload"));
    fl_adapter_info_clear(&got);

    /* The stored file is canonical and carries the same adapter. */
    char stored[1024], fixture[1024];
    FL_EXPECT(fl_store_path(store, a.sha256, stored, sizeof stored, &err) == 0);
    fl_test_data_path("fixtures/flux_b.lora.safetensors", fixture, sizeof fixture);
    fl_lora *orig = NULL, *back = NULL;
    FL_EXPECT(fl_lora_load(fixture, NULL, 0, &orig, &err) == 0);
    FL_EXPECTF(fl_lora_load(stored, NULL, 0, &back, &err) == 0, "%s", err.message);
    if (orig && back) {
        FL_EXPECT(!strcmp(back->format, "canonical") && back->n_pairs == orig->n_pairs);
        FL_EXPECT(max_delta_diff(orig, back) == 0.0);
    }
    fl_safetensors *st = NULL;
    FL_EXPECT(fl_safetensors_open(stored, &st, &err) == 0);
    if (st) {
        const char *v = fl_safetensors_metadata_get(st, "format");
        FL_EXPECT(v && !strcmp(v, "flashlora.lora.v1"));
        v = fl_safetensors_metadata_get(st, "targets");
        FL_EXPECT(v && !strcmp(v, "all"));
        v = fl_safetensors_metadata_get(st, "source_format");
        FL_EXPECT(v && !strcmp(v, "canonical"));
        fl_safetensors_close(st);
    }
    fl_lora_free(back);
    back = NULL;

    /* The kohya file of the same adapter. */
    fl_adapter_info k = import_request("acme", "Imported kohya");
    snprintf(k.trigger, sizeof k.trigger, "kohya_word");
    FL_EXPECTF(import_fixture("fixtures/flux_b.lora_kohya.safetensors", &k, &err) == 0, "%s", err.message);
    FL_EXPECT(!strcmp(k.format, "kohya") && k.rank == 4 && strcmp(k.sha256, a.sha256));
    FL_EXPECT(fl_store_path(store, k.sha256, stored, sizeof stored, &err) == 0);
    FL_EXPECTF(fl_lora_load(stored, NULL, 0, &back, &err) == 0, "%s", err.message);
    if (orig && back)
        FL_EXPECTF(max_delta_diff(orig, back) < 1e-6, "kohya import differs: %g", max_delta_diff(orig, back));
    fl_lora_free(orig);
    fl_lora_free(back);
    FL_EXPECT(fl_registry_lookup(redis, "acme", "kohya_word", &got, &err) == 0 && !strcmp(got.id, k.id));
    fl_adapter_info_clear(&got);

    /* Importing under a taken name: refused, and the new file does not stay behind. */
    size_t files = store_files();
    fl_adapter_info taken = import_request("acme", "Imported canonical");
    FL_EXPECT(import_fixture("fixtures/flux_b.lora_kohya.safetensors", &taken, &err) != 0 && err.code == FL_ECONFLICT);
    FL_EXPECT(!taken.id[0] && !taken.metadata_json);
    FL_EXPECT(store_files() == files); /* the kohya file is the other entry's: kept */
    FL_EXPECT(fl_store_has(store, k.sha256));

    FL_EXPECT(fl_registry_delete(redis, store, "acme", a.id, &err) == 0);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", k.id, &err) == 0);
    fl_adapter_info_clear(&a);
    fl_adapter_info_clear(&k);
    FL_EXPECT(store_files() == 0);

    /* With the name free but the file new: a conflict on the id leaves no file either. */
    fl_adapter_info first = import_request("acme", "First");
    snprintf(first.id, sizeof first.id, "ad_fixed");
    FL_EXPECT(import_fixture("fixtures/flux_b.lora.safetensors", &first, &err) == 0);
    fl_adapter_info clash = import_request("acme", "Second");
    snprintf(clash.id, sizeof clash.id, "ad_fixed");
    FL_EXPECT(import_fixture("fixtures/flux_b.lora_kohya.safetensors", &clash, &err) != 0 && err.code == FL_ECONFLICT);
    FL_EXPECT(!strcmp(clash.id, "ad_fixed")); /* the caller's id stays */
    FL_EXPECT(store_files() == 1);
    FL_EXPECT(fl_registry_delete(redis, store, "acme", "ad_fixed", &err) == 0);
    fl_adapter_info_clear(&first);
    FL_EXPECT(store_files() == 0);
}

/* A canonical file with a pair of the wrong shape and a pair on a module model b lacks. */
static void test_import_refusals(void) {
    float a_bad[2 * 7] = {0}, b_bad[32 * 2] = {0}, a_unk[2 * 32] = {0}, b_unk[32 * 2] = {0};
    float a_ok[2 * 32] = {0}, b_ok[96 * 2] = {0};
    fl_safetensors_entry t[] = {
        {"img_in.lora_A.weight", FL_ST_F32, 2, {2, 7}, a_bad}, /* img_in has 12 inputs */
        {"img_in.lora_B.weight", FL_ST_F32, 2, {32, 2}, b_bad},
        {"double_blocks.7.img_attn.proj.lora_A.weight", FL_ST_F32, 2, {2, 32}, a_unk}, /* depth is 1 */
        {"double_blocks.7.img_attn.proj.lora_B.weight", FL_ST_F32, 2, {32, 2}, b_unk},
        {"double_blocks.0.img_attn.qkv.lora_A.weight", FL_ST_F32, 2, {2, 32}, a_ok},
        {"double_blocks.0.img_attn.qkv.lora_B.weight", FL_ST_F32, 2, {96, 2}, b_ok},
    };
    char path[512];
    snprintf(path, sizeof path, "%s/refused.safetensors", tmp_dir);
    fl_error err = {0};
    FL_EXPECTF(fl_safetensors_write(path, t, 6, NULL, 0, &err) == 0, "%s", err.message);
    size_t size = 0;
    char *data = read_file(path, &size);
    fl_adapter_info a = import_request("acme", "Refused");
    FL_EXPECT(data && fl_registry_import_bytes(redis, store, &params_b, data, size, &a, &err) != 0);
    FL_EXPECT(err.code == FL_EINVAL);
    FL_EXPECTF(strstr(err.message, "img_in") && strstr(err.message, "double_blocks.7.img_attn.proj"), "%s",
               err.message);
    FL_EXPECTF(!strstr(err.message, "img_attn.qkv"), "%s", err.message);
    FL_EXPECT(!a.id[0] && !a.sha256[0]);
    free(data);

    /* Garbage, and a truncated real file: errors, nothing registered, nothing stored. */
    const char garbage[] = "this is not a safetensors file at all";
    a = import_request("acme", "Garbage");
    FL_EXPECT(fl_registry_import_bytes(redis, store, &params_b, garbage, sizeof garbage, &a, &err) != 0);
    FL_EXPECTF(err.code == FL_EINVAL || err.code == FL_ELIMIT, "%s: %s", fl_error_code_name(err.code), err.message);
    char fixture[1024];
    fl_test_data_path("fixtures/flux_b.lora.safetensors", fixture, sizeof fixture);
    data = read_file(fixture, &size);
    FL_EXPECT(data && fl_registry_import_bytes(redis, store, &params_b, data, size / 2, &a, &err) != 0);
    free(data);
    FL_EXPECT(fl_registry_import_bytes(redis, store, &params_b, garbage, 0, &a, &err) != 0 && err.code == FL_EINVAL);
    /* Bad caller fields are refused before anything is read. */
    fl_adapter_info bad_tenant = import_request("a/b", "x");
    FL_EXPECT(fl_registry_import_bytes(redis, store, &params_b, garbage, sizeof garbage, &bad_tenant, &err) != 0 &&
              err.code == FL_EINVAL && strstr(err.message, "tenant"));

    fl_adapter_info *items = NULL;
    size_t n = 0, total = 0;
    FL_EXPECT(fl_registry_list(redis, "acme", 0, 10, &items, &n, &total, &err) == 0 && total == 0);
    free(items);
    FL_EXPECT(store_files() == 0);
    fl_adapter_info got;
    FL_EXPECT(fl_registry_lookup(redis, "acme", "Garbage", &got, &err) != 0 && err.code == FL_ENOTFOUND);
}

static int load_params_b(void) {
    char path[1024];
    fl_test_data_path("fixtures/flux_b.model.safetensors", path, sizeof path);
    fl_safetensors *st = NULL;
    fl_error err = {0};
    if (fl_safetensors_open(path, &st, &err) != 0) {
        fprintf(stderr, "%s: %s\n", path, err.message);
        return -1;
    }
    const char *json = fl_safetensors_metadata_get(st, "flux_params");
    int rc = json ? fl_flux_params_from_json(json, &params_b, &err) : -1;
    if (rc != 0) fprintf(stderr, "%s: no usable flux_params metadata: %s\n", path, err.message);
    fl_safetensors_close(st);
    return rc;
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/fl_test_registry_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    snprintf(redis_dir, sizeof redis_dir, "%s/redis", tmp_dir);
    char store_dir[320];
    snprintf(store_dir, sizeof store_dir, "%s/store", tmp_dir);
    fl_error err = {0};
    int rc = 1;
    if (load_params_b() != 0) goto out;
    if (fl_store_open(store_dir, &store, &err) != 0) {
        fprintf(stderr, "store: %s\n", err.message);
        goto out;
    }
    /* No redis-server is a failure, not a skip: CI installs it. */
    if (fl_redis_server_start(redis_dir, &server, &err) != 0) {
        fprintf(stderr, "FAIL: cannot start redis-server: %s\n", err.message);
        goto out;
    }
    if (fl_redis_connect(fl_redis_server_address(server), &redis, &err) != 0) {
        fprintf(stderr, "FAIL: %s\n", err.message);
        goto out;
    }
    FL_RUN(test_redis_basics);
    FL_RUN(test_create_get);
    FL_RUN(test_tenant_isolation);
    FL_RUN(test_list_pagination);
    FL_RUN(test_delete_shared_file);
    FL_RUN(test_restart);
    FL_RUN(test_import_fixtures);
    FL_RUN(test_import_refusals);
    rc = fl_test_finish();
out:
    fl_redis_close(redis);
    fl_redis_server_stop(server);
    fl_store_close(store);
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
