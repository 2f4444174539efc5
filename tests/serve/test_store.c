/*
 * test_store.c — the content-addressed adapter store (adapters/store.h) and a worker's adapter
 * cache (adapters/cache.h).
 *
 * Store: bytes and files land under their SHA-256, a second put of the same bytes changes
 * nothing, no temporary file is left behind, a hash that is not 64 lower-case hex digits ("../x",
 * upper case, short) never becomes a path, and removal is idempotent. Cache: on the golden model b
 * (tests/fixtures/flux_b.model.safetensors), adapters stored in the store are loaded on a miss,
 * served from memory on a hit, evicted least recently used first once their bytes pass the
 * budget, never while pinned, and a file that does not fit the model is refused.
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/cache.h"
#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "serve/store.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "harness.h"
#include "kernels/context.h"
#include "models/flux.h"

static char tmp_dir[256];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tree(const char *dir) {
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static size_t counted_files, counted_temps;

static int count_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    if (flag == FTW_F) {
        counted_files++;
        if (!strncmp(path + ftw->base, ".tmp", 4)) counted_temps++;
    }
    return 0;
}

/* Regular files under dir; *temps gets how many are temporary files. */
static size_t count_files(const char *dir, size_t *temps) {
    counted_files = counted_temps = 0;
    nftw(dir, count_entry, 16, FTW_PHYS);
    if (temps) *temps = counted_temps;
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

static fl_store *open_store(const char *name) {
    char root[512];
    snprintf(root, sizeof root, "%s/%s", tmp_dir, name);
    fl_store *s = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_store_open(root, &s, &err) == 0, "%s", err.message);
    return s;
}

static void test_put_bytes(void) {
    fl_store *s = open_store("bytes");
    if (!s) return;
    fl_error err = {0};
    char hex[65], again[65], path[1024];
    FL_EXPECTF(fl_store_put_bytes(s, "hello", 5, hex, &err) == 0, "%s", err.message);
    FL_EXPECT(!strcmp(hex, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"));
    FL_EXPECT(fl_store_has(s, hex));
    FL_EXPECT(fl_store_path(s, hex, path, sizeof path, &err) == 0);
    char want[1024];
    snprintf(want, sizeof want, "%s/blobs/2c/%s.safetensors", fl_store_root(s), hex);
    FL_EXPECTF(!strcmp(path, want), "path %s", path);
    size_t n = 0;
    char *data = read_file(path, &n);
    FL_EXPECT(data && n == 5 && !memcmp(data, "hello", 5));
    free(data);
    struct stat before, after;
    stat(path, &before);
    FL_EXPECT(fl_store_put_bytes(s, "hello", 5, again, &err) == 0); /* idempotent: nothing rewritten */
    stat(path, &after);
    FL_EXPECT(!strcmp(hex, again));
    FL_EXPECT(before.st_ino == after.st_ino);
    FL_EXPECT(fl_store_put_bytes(s, NULL, 0, hex, &err) == 0); /* empty is a valid content */
    FL_EXPECT(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    size_t temps = 0;
    char blobs[1024];
    snprintf(blobs, sizeof blobs, "%s/blobs", fl_store_root(s));
    FL_EXPECT(count_files(blobs, &temps) == 2);
    FL_EXPECT(temps == 0);
    fl_store_close(s);
}

static void test_put_file(void) {
    fl_store *s = open_store("file");
    if (!s) return;
    fl_error err = {0};
    char src[512], hex[65], from_bytes[65], fixture[1024];
    snprintf(src, sizeof src, "%s/upload.bin", tmp_dir);
    FILE *f = fopen(src, "wb");
    unsigned char buf[3000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 31 + 7);
    fwrite(buf, 1, sizeof buf, f);
    fclose(f);
    FL_EXPECTF(fl_store_put_file(s, src, hex, &err) == 0, "%s", err.message);
    FL_EXPECT(fl_store_put_bytes(s, buf, sizeof buf, from_bytes, &err) == 0);
    FL_EXPECT(!strcmp(hex, from_bytes));
    char want[65];
    fl_sha256_hex(buf, sizeof buf, want);
    FL_EXPECT(!strcmp(hex, want));

    /* A real adapter file, and its hash as the whole-file digest computes it. */
    fl_test_data_path("fixtures/flux_b.lora.safetensors", fixture, sizeof fixture);
    FL_EXPECTF(fl_store_put_file(s, fixture, hex, &err) == 0, "%s", err.message);
    FL_EXPECT(fl_sha256_file(fixture, want, &err) == 0 && !strcmp(hex, want));

    snprintf(src, sizeof src, "%s/missing.bin", tmp_dir);
    FL_EXPECT(fl_store_put_file(s, src, hex, &err) != 0 && err.code == FL_EIO);
    FL_EXPECT(fl_store_put_file(s, tmp_dir, hex, &err) != 0 && err.code == FL_EINVAL); /* a directory */
    size_t temps = 0;
    char blobs[1024];
    snprintf(blobs, sizeof blobs, "%s/blobs", fl_store_root(s));
    FL_EXPECT(count_files(blobs, &temps) == 2);
    FL_EXPECT(temps == 0);
    fl_store_close(s);
}

static void test_path_validation(void) {
    fl_store *s = open_store("paths");
    if (!s) return;
    fl_error err = {0};
    char path[1024];
    const char *bad[] = {"../x", "", "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
                         "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982",
                         "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98240",
                         "../../../../../../../../../../../../../../../../../../../etc/passwd",
                         "zzf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                         "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98/4"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = (fl_error){0};
        FL_EXPECTF(fl_store_path(s, bad[i], path, sizeof path, &err) != 0 && err.code == FL_EINVAL, "'%s' accepted",
                   bad[i]);
        FL_EXPECT(!fl_store_has(s, bad[i]));
        FL_EXPECT(fl_store_remove(s, bad[i], &err) != 0 && err.code == FL_EINVAL);
    }
    FL_EXPECT(fl_store_path(s, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", path, 8, &err) !=
              0); /* too small a buffer */
    fl_store_close(s);
}

static void test_remove(void) {
    fl_store *s = open_store("remove");
    if (!s) return;
    fl_error err = {0};
    char hex[65];
    FL_EXPECT(fl_store_put_bytes(s, "abc", 3, hex, &err) == 0);
    FL_EXPECT(fl_store_has(s, hex));
    FL_EXPECTF(fl_store_remove(s, hex, &err) == 0, "%s", err.message);
    FL_EXPECT(!fl_store_has(s, hex));
    FL_EXPECT(fl_store_remove(s, hex, &err) == 0); /* absent: not an error */
    FL_EXPECT(fl_store_put_bytes(s, "abc", 3, hex, &err) == 0 && fl_store_has(s, hex));
    fl_store_close(s);

    /* Reopening finds what was stored. */
    fl_store *again = open_store("remove");
    FL_EXPECT(again && fl_store_has(again, hex));
    fl_store_close(again);
}

/* ---- cache ------------------------------------------------------------------------------------- */

/* A random adapter of the given rank on the model's first n Linears, stored; hex gets its hash. */
static int store_random_lora(fl_store *s, fl_flux_model *m, size_t n, int64_t rank, uint64_t seed, char hex[65]) {
    fl_lora *l = fl_lora_new();
    fl_error err = {0};
    for (size_t i = 0; i < n && i < fl_flux_linear_count(m); i++) {
        const fl_flux_linear *lin = fl_flux_linear_at(m, i);
        float *a = fl_test_randn((size_t)(rank * lin->in), seed + 2 * i, 0.5f);
        float *b = fl_test_randn((size_t)(lin->out * rank), seed + 2 * i + 1, 0.5f);
        FL_EXPECTF(fl_lora_add(l, lin->name, rank, lin->in, lin->out, a, b, (float)rank, &err) == 0, "%s",
                   err.message);
        free(a);
        free(b);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/random_%llu.safetensors", tmp_dir, (unsigned long long)seed);
    int rc = fl_lora_save(l, FL_LORA_CANONICAL, path, NULL, 0, &err);
    FL_EXPECTF(rc == 0, "%s", err.message);
    fl_lora_free(l);
    if (rc == 0) rc = fl_store_put_file(s, path, hex, &err);
    FL_EXPECTF(rc == 0, "%s", err.message);
    return rc;
}

static size_t adapter_bytes(const fl_lora *l) {
    size_t bytes = 0;
    for (size_t i = 0; i < l->n_pairs; i++)
        bytes += (size_t)(l->pairs[i].rank * (l->dims[i].in + l->dims[i].out)) * sizeof(float);
    return bytes;
}

static void test_cache(void) {
    fl_error err = {0};
    fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), &err);
    FL_EXPECTF(cpu, "%s", err.message);
    if (!cpu) return;
    char model_path[1024];
    fl_test_data_path("fixtures/flux_b.model.safetensors", model_path, sizeof model_path);
    fl_flux_model *m = NULL;
    FL_EXPECTF(fl_flux_load(cpu, model_path, NULL, &m, &err) == 0, "%s", err.message);
    fl_store *s = open_store("cache");
    if (!m || !s) {
        fl_flux_free(m);
        fl_store_close(s);
        fl_ctx_destroy(cpu);
        return;
    }
    char h[3][65];
    FL_EXPECT(store_random_lora(s, m, 4, 2, 100, h[0]) == 0);
    FL_EXPECT(store_random_lora(s, m, 4, 2, 200, h[1]) == 0);
    FL_EXPECT(store_random_lora(s, m, 4, 2, 300, h[2]) == 0);

    /* Sizes, from an unbounded cache. */
    fl_adapter_cache *big = fl_adapter_cache_create(fl_store_locate, s, m, SIZE_MAX);
    const fl_lora *l = NULL;
    FL_EXPECTF(fl_adapter_cache_get(big, h[0], &l, &err) == 0, "%s", err.message);
    size_t one = l ? adapter_bytes(l) : 0;
    FL_EXPECT(one > 0 && l->n_pairs == 4);
    FL_EXPECT(fl_adapter_cache_get(big, h[0], &l, &err) == 0);
    fl_adapter_cache_stats st = fl_adapter_cache_get_stats(big);
    FL_EXPECT(st.hits == 1 && st.misses == 1 && st.evictions == 0 && st.resident == 1 && st.resident_bytes == one);
    fl_adapter_cache_free(big);

    /* Room for two. */
    fl_adapter_cache *c = fl_adapter_cache_create(fl_store_locate, s, m, 2 * one);
    const fl_lora *a0 = NULL, *a1 = NULL, *again = NULL;
    FL_EXPECT(fl_adapter_cache_get(c, h[0], &a0, &err) == 0);
    FL_EXPECT(fl_adapter_cache_get(c, h[1], &a1, &err) == 0);
    FL_EXPECT(fl_adapter_cache_get(c, h[0], &again, &err) == 0 && again == a0); /* hit: same object */
    FL_EXPECT(fl_adapter_cache_get(c, h[2], &l, &err) == 0); /* evicts h[1], the least recent */
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.misses == 3 && st.hits == 1 && st.evictions == 1 && st.resident == 2 && st.resident_bytes == 2 * one);
    FL_EXPECT(st.budget_bytes == 2 * one);
    const char *res[4] = {0};
    FL_EXPECT(fl_adapter_cache_resident(c, res, 4) == 2);
    FL_EXPECT(res[0] && res[1] && !strcmp(res[0], h[2]) && !strcmp(res[1], h[0]));
    FL_EXPECT(fl_adapter_cache_resident(c, res, 1) == 1);

    /* Pinned: h[0] (least recent) stays; h[2] goes instead. */
    fl_adapter_cache_pin(c, h[0]);
    FL_EXPECT(fl_adapter_cache_get(c, h[1], &l, &err) == 0);
    FL_EXPECT(fl_adapter_cache_resident(c, res, 4) == 2);
    FL_EXPECT(!strcmp(res[0], h[1]) && !strcmp(res[1], h[0]));
    /* Everything else pinned too: over budget rather than dropping a pinned adapter. */
    fl_adapter_cache_pin(c, h[1]);
    FL_EXPECT(fl_adapter_cache_get(c, h[2], &l, &err) == 0);
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.resident == 3 && st.resident_bytes == 3 * one);
    fl_adapter_cache_unpin_all(c);
    FL_EXPECT(fl_adapter_cache_get(c, h[2], &l, &err) == 0); /* a hit; now trims to the budget */
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.resident == 2 && st.evictions == 3);
    FL_EXPECT(fl_adapter_cache_resident(c, res, 4) == 2 && !strcmp(res[0], h[2]) && !strcmp(res[1], h[1]));

    /* Errors: not a hash, not stored, not fitting the model. */
    FL_EXPECT(fl_adapter_cache_get(c, "../x", &l, &err) != 0 && err.code == FL_EINVAL && !l);
    FL_EXPECT(fl_adapter_cache_get(c, "0000000000000000000000000000000000000000000000000000000000000000", &l, &err) !=
                  0 &&
              err.code == FL_ENOTFOUND);
    fl_lora *bad = fl_lora_new();
    float a[2 * 5] = {0}, b[7 * 2] = {0};
    FL_EXPECT(fl_lora_add(bad, "img_in", 2, 5, 7, a, b, 2.0f, &err) == 0);
    char bad_path[512], bad_hex[65];
    snprintf(bad_path, sizeof bad_path, "%s/misfit.safetensors", tmp_dir);
    FL_EXPECT(fl_lora_save(bad, FL_LORA_CANONICAL, bad_path, NULL, 0, &err) == 0);
    fl_lora_free(bad);
    FL_EXPECT(fl_store_put_file(s, bad_path, bad_hex, &err) == 0);
    FL_EXPECT(fl_adapter_cache_get(c, bad_hex, &l, &err) != 0 && err.code == FL_EINVAL);
    FL_EXPECTF(strstr(err.message, "img_in"), "%s", err.message);
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.resident == 2);
    fl_adapter_cache_free(c);

    /* One adapter larger than the budget is still served. */
    fl_adapter_cache *tiny = fl_adapter_cache_create(fl_store_locate, s, m, 1);
    FL_EXPECT(fl_adapter_cache_get(tiny, h[0], &l, &err) == 0 && l);
    FL_EXPECT(fl_adapter_cache_get(tiny, h[1], &l, &err) == 0 && l);
    st = fl_adapter_cache_get_stats(tiny);
    FL_EXPECT(st.resident == 1 && st.evictions == 1);
    fl_adapter_cache_free(tiny);

    fl_store_close(s);
    fl_flux_free(m);
    fl_ctx_destroy(cpu);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/fl_test_store_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    FL_RUN(test_put_bytes);
    FL_RUN(test_put_file);
    FL_RUN(test_path_validation);
    FL_RUN(test_remove);
    FL_RUN(test_cache);
    remove_tree(tmp_dir);
    return fl_test_finish();
}
