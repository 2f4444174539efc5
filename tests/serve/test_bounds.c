/*
 * test_bounds.c — the service's bounded inputs and outputs below the HTTP layer, against a private
 * redis-server this test starts (redis-server must be installed: the test fails without it).
 *
 * Covered: imports refuse NaN and infinite weights (naming the tensor) and metadata over the
 * limit, leaving neither entry nor stored file; list pages end at a byte budget with at least one
 * entry and every entry reachable page by page; URLs checked before any network access
 * (malformed, not http(s), loopback / private / link-local literals and localhost, unless
 * allowed); the request codec keeps the API-filled fields (batch_images, max_decoded_pixels, an
 * import's limits) out of clients' hands and round-trips them from storage. (Server paths are
 * taken out of every reply by the HTTP layer: tests/serve/test_http.c.)
 */
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "core/safetensors.h"
#include "datasets/fetch.h"
#include "harness.h"
#include "serve/redis.h"
#include "serve/registry.h"
#include "serve/requests.h"
#include "serve/store.h"

#define CONTAINS(hay, needle) ((hay) != NULL && strstr((hay), (needle)) != NULL)

static char tmp_dir[256];
static fl_redis_server *server;
static fl_redis *redis;
static fl_store *store;
static fl_flux_params params_b;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static size_t counted;
static int count_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)path, (void)st, (void)ftw;
    if (flag == FTW_F) counted++;
    return 0;
}

static size_t store_files(void) {
    char blobs[512];
    snprintf(blobs, sizeof blobs, "%s/blobs", fl_store_root(store));
    counted = 0;
    nftw(blobs, count_entry, 16, FTW_PHYS);
    return counted;
}

/* A canonical adapter file (its bytes, malloc'ed) with one pair on a block Linear of model b,
 * B holding `poison` at one element, and a metadata entry "notes" of notes_bytes bytes. */
static unsigned char *adapter_bytes(float poison, size_t notes_bytes, size_t *size) {
    size_t n_decls = fl_flux_param_decls(&params_b, NULL);
    fl_flux_param_decl *decls = calloc(n_decls, sizeof *decls);
    fl_flux_param_decls(&params_b, decls);
    char module[FL_FLUX_NAME_MAX] = "";
    int64_t in = 0, out = 0;
    for (size_t i = 0; i < n_decls && !module[0]; i++) {
        if (decls[i].ndim != 2 || !strstr(decls[i].name, "blocks")) continue;
        snprintf(module, sizeof module, "%.*s", (int)(strlen(decls[i].name) - 7), decls[i].name);
        out = decls[i].shape[0], in = decls[i].shape[1];
    }
    free(decls);
    float *a = calloc((size_t)in, sizeof(float)), *b = calloc((size_t)out, sizeof(float));
    for (int64_t i = 0; i < in; i++) a[i] = 0.01f;
    for (int64_t i = 0; i < out; i++) b[i] = 0.02f;
    b[out / 2] = poison;
    fl_lora *l = fl_lora_new();
    fl_error err = {0};
    FL_EXPECTF(fl_lora_add(l, module, 1, in, out, a, b, 1.0f, &err) == 0, "%s", err.message);
    char *notes = malloc(notes_bytes + 1);
    memset(notes, 'n', notes_bytes);
    notes[notes_bytes] = '\0';
    fl_safetensors_kv meta[1] = {{"notes", notes}};
    char path[512];
    snprintf(path, sizeof path, "%s/adapter.safetensors", tmp_dir);
    FL_EXPECTF(fl_lora_save(l, FL_LORA_CANONICAL, path, meta, 1, &err) == 0, "%s", err.message);
    FILE *f = fopen(path, "rb");
    unsigned char *data = NULL;
    *size = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        data = malloc((size_t)n);
        *size = fread(data, 1, (size_t)n, f);
        fclose(f);
    }
    unlink(path);
    free(notes);
    free(a);
    free(b);
    fl_lora_free(l);
    return data;
}

static fl_adapter_info info_for(const char *tenant, const char *name) {
    fl_adapter_info a;
    memset(&a, 0, sizeof a);
    snprintf(a.tenant, sizeof a.tenant, "%s", tenant);
    snprintf(a.name, sizeof a.name, "%s", name);
    snprintf(a.source, sizeof a.source, "upload");
    return a;
}

static void test_non_finite_weights_are_refused(void) {
    const float poisons[] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 3; k++) {
        size_t size = 0;
        unsigned char *data = adapter_bytes(poisons[k], 10, &size);
        fl_adapter_info a = info_for("nan", "poisoned");
        fl_error err = {0};
        size_t before = store_files();
        FL_EXPECTF(fl_registry_import_bytes(redis, store, &params_b, data, size, &a, &err) != 0 &&
                       err.code == FL_EINVAL && CONTAINS(err.message, ".lora_B.weight' holds a non-finite value"),
                   "poison %d: %s", k, err.message);
        FL_EXPECT(store_files() == before);
        fl_adapter_info got;
        FL_EXPECT(fl_registry_lookup(redis, "nan", "poisoned", &got, &err) != 0 && err.code == FL_ENOTFOUND);
        fl_adapter_info_clear(&a);
        free(data);
    }
}

static void test_metadata_is_bounded(void) {
    fl_import_limits limits = fl_import_limits_default();
    FL_EXPECT(limits.max_metadata_bytes == 65536 && limits.max_download_bytes == (size_t)2 << 30);
    size_t size = 0;
    unsigned char *fat = adapter_bytes(0.0f, 70000, &size);
    fl_adapter_info a = info_for("meta", "fat");
    fl_error err = {0};
    size_t before = store_files();
    FL_EXPECTF(fl_registry_import_bytes_limited(redis, store, &params_b, fat, size, &limits, &a, &err) != 0 &&
                   err.code == FL_ELIMIT && CONTAINS(err.message, "over the 65536-byte limit"),
               "%s", err.message);
    FL_EXPECT(store_files() == before);
    fl_adapter_info_clear(&a);
    limits.max_metadata_bytes = 100000;
    a = info_for("meta", "fat");
    FL_EXPECTF(fl_registry_import_bytes_limited(redis, store, &params_b, fat, size, &limits, &a, &err) == 0, "%s",
               err.message);
    fl_adapter_info_clear(&a);
    free(fat);
}

static void test_pages_are_bounded(void) {
    fl_error err = {0};
    for (int i = 0; i < 7; i++) {
        size_t size = 0;
        unsigned char *data = adapter_bytes(0.0f, 20000 + (size_t)i, &size); /* distinct files */
        char name[32];
        snprintf(name, sizeof name, "paged%d", i);
        fl_adapter_info a = info_for("pages", name);
        FL_EXPECTF(fl_registry_import_bytes(redis, store, &params_b, data, size, &a, &err) == 0, "%s", err.message);
        fl_adapter_info_clear(&a);
        free(data);
    }
    fl_adapter_info *items = NULL;
    size_t n = 0, total = 0;
    FL_EXPECT(fl_registry_list_bounded(redis, "pages", 0, 500, 50000, &items, &n, &total, &err) == 0);
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += fl_registry_entry_bytes(&items[i]);
    FL_EXPECTF(total == 7 && n == 2 && bytes <= 50000, "page of %zu (of %zu), %zu bytes", n, total, bytes);
    for (size_t i = 0; i < n; i++) fl_adapter_info_clear(&items[i]);
    free(items);
    /* A budget below one entry still gives one entry per page; every entry comes once. */
    size_t seen = 0, offset = 0;
    for (int pages = 0; offset < 7 && pages < 20; pages++) {
        FL_EXPECT(fl_registry_list_bounded(redis, "pages", offset, 500, 100, &items, &n, &total, &err) == 0);
        FL_EXPECT(n == 1);
        char want[32];
        snprintf(want, sizeof want, "paged%zu", offset);
        FL_EXPECTF(n == 1 && !strcmp(items[0].name, want), "page at %zu holds %s", offset, n ? items[0].name : "-");
        for (size_t i = 0; i < n; i++) fl_adapter_info_clear(&items[i]);
        free(items);
        seen += n;
        offset += n ? n : 1;
    }
    FL_EXPECT(seen == 7);
    FL_EXPECT(fl_registry_list_bounded(redis, "pages", 0, 500, 0, &items, &n, &total, &err) == 0 && n == 7);
    for (size_t i = 0; i < n; i++) fl_adapter_info_clear(&items[i]);
    free(items);
}

static void test_urls_checked_before_fetching(void) {
    static const char *const malformed[] = {"http://[::1/a", "http://:80/a", "https://exa mple.com/a", "ftp://host/a",
                                            "file:///etc/passwd", "http://", "", "http:/x"};
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        fl_error err = {0};
        FL_EXPECTF(fl_fetch_check_url(malformed[i], true, &err) != 0 && err.code == FL_EINVAL, "'%s' passed",
                   malformed[i]);
    }
    static const char *const internal[] = {"http://127.0.0.1/a", "http://10.1.2.3:8080/a", "http://[::1]/a",
                                           "http://169.254.169.254/latest", "https://localhost/a",
                                           "http://LOCALHOST./a", "http://api.localhost/a", "http://[::ffff:192.168.1.1]/a",
                                           "http://0.0.0.0/a"};
    for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++) {
        fl_error err = {0};
        FL_EXPECTF(fl_fetch_check_url(internal[i], false, &err) != 0 && CONTAINS(err.message, "private"), "'%s': %s",
                   internal[i], err.message);
        FL_EXPECTF(fl_fetch_check_url(internal[i], true, &err) == 0, "'%s' with private allowed: %s", internal[i],
                   err.message);
    }
    static const char *const fine[] = {"https://example.com/a.safetensors?sig=x", "http://93.184.216.34:8080/a",
                                       "https://[2606:2800:220:1::]/a"};
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        fl_error err = {0};
        FL_EXPECTF(fl_fetch_check_url(fine[i], false, &err) == 0, "'%s': %s", fine[i], err.message);
    }
}

static void test_api_fields_stay_internal(void) {
    static const char *const client[] = {
        "{\"prompt\": \"x\", \"batch_images\": 64}",
    };
    fl_error err = {0};
    json_t *o = json_loads(client[0], 0, NULL);
    fl_generate_request gr;
    FL_EXPECT(fl_generate_request_decode(o, FL_REQ_CLIENT_JSON, NULL, &gr, &err) != 0 &&
              CONTAINS(err.message, "'batch_images'"));
    fl_generate_request_clear(&gr);
    json_decref(o);
    o = json_loads("{\"trigger_word\": \"sks\", \"max_decoded_pixels\": 1}", 0, NULL);
    fl_train_request tr;
    FL_EXPECT(fl_train_request_decode(o, FL_REQ_CLIENT_JSON, NULL, &tr, &err) != 0 &&
              CONTAINS(err.message, "'max_decoded_pixels'"));
    fl_train_request_clear(&tr);
    json_decref(o);
    o = json_loads("{\"url\": \"https://example.com/a\", \"max_bytes\": 1}", 0, NULL);
    fl_adapter_import_request ir;
    FL_EXPECT(fl_adapter_import_request_decode(o, FL_REQ_CLIENT_JSON, &ir, &err) != 0 &&
              CONTAINS(err.message, "'max_bytes'"));
    fl_adapter_import_request_clear(&ir);
    json_decref(o);

    /* Stored: written by the API, read back by the worker. */
    o = json_loads("{\"prompt\": \"x\", \"width\": 32, \"height\": 32}", 0, NULL);
    FL_EXPECT(fl_generate_request_decode(o, FL_REQ_CLIENT_JSON, NULL, &gr, &err) == 0);
    json_decref(o);
    gr.max_text_tokens = 32;
    gr.batch_images = 5;
    o = fl_generate_request_to_json(&gr);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    fl_generate_request back;
    FL_EXPECTF(fl_generate_request_parse(text, &back, &err) == 0 && back.batch_images == 5, "%s", err.message);
    fl_generate_request_clear(&back);
    fl_generate_request_clear(&gr);
    free(text);
    memset(&tr, 0, sizeof tr);
    snprintf(tr.trigger_word, sizeof tr.trigger_word, "sks");
    tr.images = strdup("/state/uploads/job_1.zip");
    tr.steps = 10, tr.rank = 4, tr.alpha = 4, tr.learning_rate = 1e-3, tr.resolution = 16, tr.batch_size = 1;
    tr.max_decoded_pixels = 123456789;
    o = fl_train_request_to_json(&tr);
    text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    fl_train_request tback;
    FL_EXPECTF(fl_train_request_parse(text, &tback, &err) == 0 && tback.max_decoded_pixels == 123456789, "%s",
               err.message);
    fl_train_request_clear(&tback);
    fl_train_request_clear(&tr);
    free(text);
    memset(&ir, 0, sizeof ir);
    ir.url = strdup("https://example.com/a.safetensors");
    snprintf(ir.name, sizeof ir.name, "imported");
    ir.max_bytes = (int64_t)3 << 30;
    ir.max_metadata_bytes = 4096;
    o = fl_adapter_import_request_to_json(&ir);
    text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    fl_adapter_import_request iback;
    FL_EXPECTF(fl_adapter_import_request_parse(text, &iback, &err) == 0 && iback.max_bytes == ((int64_t)3 << 30) &&
                   iback.max_metadata_bytes == 4096 && !strcmp(iback.name, "imported") &&
                   !strcmp(iback.url, "https://example.com/a.safetensors"),
               "%s", err.message);
    fl_adapter_import_request_clear(&iback);
    fl_adapter_import_request_clear(&ir);
    free(text);
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
    int rc = fl_flux_params_of_checkpoint(st, &params_b, &err);
    if (rc != 0) fprintf(stderr, "%s: %s\n", path, err.message);
    fl_safetensors_close(st);
    return rc;
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/fl_test_bounds_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    char redis_dir[320], store_dir[320];
    snprintf(redis_dir, sizeof redis_dir, "%s/redis", tmp_dir);
    snprintf(store_dir, sizeof store_dir, "%s/store", tmp_dir);
    fl_error err = {0};
    int rc = 1;
    if (load_params_b() != 0) goto out;
    if (fl_store_open(store_dir, &store, &err) != 0) {
        fprintf(stderr, "store: %s\n", err.message);
        goto out;
    }
    if (fl_redis_server_start(redis_dir, &server, &err) != 0) {
        fprintf(stderr, "FAIL: cannot start redis-server: %s\n", err.message);
        goto out;
    }
    if (fl_redis_connect(fl_redis_server_address(server), &redis, &err) != 0) {
        fprintf(stderr, "FAIL: %s\n", err.message);
        goto out;
    }
    FL_RUN(test_non_finite_weights_are_refused);
    FL_RUN(test_metadata_is_bounded);
    FL_RUN(test_pages_are_bounded);
    FL_RUN(test_urls_checked_before_fetching);
    FL_RUN(test_api_fields_stay_internal);
    rc = fl_test_finish();
out:
    fl_redis_close(redis);
    fl_redis_server_stop(server);
    fl_store_close(store);
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
