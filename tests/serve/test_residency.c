/*
 * test_residency.c — adapters resident on the model: the device tier of a worker's adapter cache
 * (adapters/cache.h) over a real content-addressed store and the golden model b
 * (tests/fixtures/flux_b.model.safetensors).
 *
 * Checked: an adapter is attached once and later acquires return the same set (no attach, no
 * detach, no plan for a batch over resident adapters); the device tier evicts least recently used
 * sets once their bytes pass its budget, never a set a batch has pinned (the batch still samples
 * after others were evicted around it), and never holds more than FL_FLUX_MAX_ATTACHED sets
 * (FL_ELIMIT when all are pinned, leaving what was attached); the host tier may drop an adapter
 * that stays attached; sets detached behind the cache's back are attached again; detach_all
 * leaves the bare model; bad hashes and misfit files attach nothing. Through all of it every
 * image is bitwise the image the same request gets from a fresh model with nothing else attached.
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/cache.h"
#include "adapters/lora.h"
#include "adapters/lora_formats.h"
#include "harness.h"
#include "kernels/context.h"
#include "models/flux.h"
#include "models/sampler.h"
#include "serve/store.h"

enum { WIDTH = 8, HEIGHT = 8, STEPS = 2, TEXT_TOKENS = 5, N_ADAPTERS = 6 };

static char tmp_dir[256];
static fl_ctx *cpu;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static fl_flux_model *load_model(void) {
    char path[1024];
    fl_test_data_path("fixtures/flux_b.model.safetensors", path, sizeof path);
    fl_flux_model *m = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_flux_load(cpu, path, NULL, &m, &err) == 0, "%s", err.message);
    return m;
}

static fl_store *open_store(const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmp_dir, name);
    fl_store *s = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_store_open(dir, &s, &err) == 0, "%s", err.message);
    return s;
}

/* A random adapter of the given rank on every other Linear of the model from `first`, stored;
 * hex gets its hash. */
static int store_random_lora(fl_store *s, fl_flux_model *m, size_t first, int64_t rank, uint64_t seed, char hex[65]) {
    fl_lora *l = fl_lora_new();
    fl_error err = {0};
    int rc = 0;
    for (size_t i = first; i < fl_flux_linear_count(m) && rc == 0; i += 2) {
        const fl_flux_linear *lin = fl_flux_linear_at(m, i);
        float *a = fl_test_randn((size_t)(rank * lin->in), seed + 2 * i, 0.5f);
        float *b = fl_test_randn((size_t)(lin->out * rank), seed + 2 * i + 1, 0.5f);
        rc = fl_lora_add(l, lin->name, rank, lin->in, lin->out, a, b, (float)rank, &err);
        free(a);
        free(b);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/random_%llu.safetensors", tmp_dir, (unsigned long long)seed);
    if (rc == 0) rc = fl_lora_save(l, FL_LORA_CANONICAL, path, NULL, 0, &err);
    fl_lora_free(l);
    if (rc == 0) rc = fl_store_put_file(s, path, hex, &err);
    FL_EXPECTF(rc == 0, "%s", err.message);
    return rc;
}

static size_t image_floats(void) {
    return (size_t)WIDTH * HEIGHT * 3;
}

/* Request r of the tests: adapters `which` (indexes into hashes) at scales 1, 0.5, ... */
typedef struct request {
    int n;
    int which[4];
    uint64_t seed;
} request;

static const request requests[] = {
    {2, {0, 1}, 1}, {1, {2}, 2}, {3, {3, 4, 5}, 3}, {0, {0}, 4}, {2, {5, 0}, 5},
};
enum { N_REQUESTS = sizeof requests / sizeof requests[0] };

/* Acquires the adapters of requests [0, n) through the cache and samples them as one batch;
 * images[r] gets request r's image. Releases the cache's pins afterwards unless keep_pinned. */
static int sample_through(fl_adapter_cache *c, fl_flux_model *m, char hashes[][65], const request *reqs, int n,
                          float **images, bool keep_pinned) {
    fl_sample_request sr[N_REQUESTS];
    memset(sr, 0, sizeof sr);
    fl_error err = {0};
    for (int r = 0; r < n; r++) {
        sr[r].prompt = "a small test image";
        sr[r].seed = reqs[r].seed;
        sr[r].guidance = 3.5f;
        sr[r].adapters.n = reqs[r].n;
        for (int k = 0; k < reqs[r].n; k++) {
            if (fl_adapter_cache_acquire(c, hashes[reqs[r].which[k]], &sr[r].adapters.set_ids[k], &err) != 0) {
                FL_EXPECTF(0, "acquire: %s", err.message);
                return -1;
            }
            sr[r].adapters.multipliers[k] = 1.0f / (float)(k + 1);
        }
    }
    int rc = fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, sr, n, images, &err);
    FL_EXPECTF(rc == 0, "sample: %s", err.message);
    if (!keep_pinned) fl_adapter_cache_release_all(c);
    return rc;
}

/* Each request's image alone, on a fresh model with only its own adapters attached. */
static bool reference_images(fl_store *s, char hashes[][65], float **ref) {
    fl_flux_model *m = load_model();
    if (!m) return false;
    bool ok = true;
    for (int r = 0; r < N_REQUESTS && ok; r++) {
        fl_adapter_cache *c = fl_adapter_cache_create(fl_store_locate, s, m, SIZE_MAX);
        ok = sample_through(c, m, hashes, &requests[r], 1, &ref[r], false) == 0;
        fl_adapter_cache_free(c);
        FL_EXPECT(fl_flux_sample_adapters_batch(m) == 0);
    }
    fl_flux_free(m);
    return ok;
}

static bool same_images(float **a, float **b, int n) {
    for (int r = 0; r < n; r++)
        if (memcmp(a[r], b[r], image_floats() * sizeof(float)) != 0) return false;
    return true;
}

static void test_resident(void) {
    fl_store *s = open_store("resident");
    fl_flux_model *m = load_model();
    if (!s || !m) {
        fl_store_close(s);
        fl_flux_free(m);
        return;
    }
    char hashes[N_ADAPTERS][65];
    for (int i = 0; i < N_ADAPTERS; i++)
        if (store_random_lora(s, m, (size_t)i % 2, 2 + i % 3, 100 + 10 * (uint64_t)i, hashes[i]) != 0) goto out;
    float *ref[N_REQUESTS], *img[N_REQUESTS];
    for (int r = 0; r < N_REQUESTS; r++) {
        ref[r] = malloc(image_floats() * sizeof(float));
        img[r] = malloc(image_floats() * sizeof(float));
    }
    if (!reference_images(s, hashes, ref)) goto free_images;

    /* First batch: every adapter attached once. */
    fl_adapter_cache *c = fl_adapter_cache_create(fl_store_locate, s, m, SIZE_MAX);
    fl_adapter_cache_set_device_budget(c, SIZE_MAX);
    FL_EXPECT(sample_through(c, m, hashes, requests, N_REQUESTS, img, false) == 0);
    FL_EXPECT(same_images(img, ref, N_REQUESTS));
    fl_adapter_cache_stats st = fl_adapter_cache_get_stats(c);
    FL_EXPECTF(st.attaches == N_ADAPTERS && st.detaches == 0 && st.attached == N_ADAPTERS && st.misses == N_ADAPTERS,
               "attaches %llu detaches %llu attached %zu misses %llu", (unsigned long long)st.attaches,
               (unsigned long long)st.detaches, st.attached, (unsigned long long)st.misses);
    size_t one_bytes = st.attached_bytes / N_ADAPTERS;
    FL_EXPECT(st.attached_bytes > 0);

    /* The same batch again: nothing attached, detached or planned; the same images. */
    uint64_t plans = fl_flux_plan_count(m);
    FL_EXPECT(sample_through(c, m, hashes, requests, N_REQUESTS, img, false) == 0);
    FL_EXPECT(same_images(img, ref, N_REQUESTS));
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.attaches == N_ADAPTERS && st.detaches == 0 && st.misses == N_ADAPTERS);
    FL_EXPECTF(fl_flux_plan_count(m) == plans, "%llu plans after %llu", (unsigned long long)fl_flux_plan_count(m),
               (unsigned long long)plans);
    int id_a = -1, id_b = -1;
    fl_error err = {0};
    FL_EXPECT(fl_adapter_cache_acquire(c, hashes[0], &id_a, &err) == 0 &&
              fl_adapter_cache_acquire(c, hashes[0], &id_b, &err) == 0 && id_a == id_b && id_a >= 0);
    fl_adapter_cache_release_all(c);

    /* The host tier may drop what stays attached: a budget of one byte keeps only the latest. */
    fl_adapter_cache_free(c);
    FL_EXPECT(fl_flux_plan_count(m) == plans);
    c = fl_adapter_cache_create(fl_store_locate, s, m, 1);
    fl_adapter_cache_set_device_budget(c, SIZE_MAX);
    FL_EXPECT(sample_through(c, m, hashes, requests, N_REQUESTS, img, false) == 0);
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.resident == 1 && st.attached == N_ADAPTERS && st.evictions == N_ADAPTERS - 1);
    FL_EXPECT(sample_through(c, m, hashes, requests, N_REQUESTS, img, false) == 0);
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.misses == N_ADAPTERS && st.attaches == N_ADAPTERS && same_images(img, ref, N_REQUESTS));
    fl_adapter_cache_free(c);

    /* Device budget of two adapters' bytes (the adapters differ in size: three times the
     * smallest holds two or three of them). Pinned sets stay while others come and go. */
    c = fl_adapter_cache_create(fl_store_locate, s, m, SIZE_MAX);
    fl_adapter_cache_set_device_budget(c, 2 * one_bytes);
    int pinned[2];
    FL_EXPECT(fl_adapter_cache_acquire(c, hashes[0], &pinned[0], &err) == 0);
    FL_EXPECT(fl_adapter_cache_acquire(c, hashes[1], &pinned[1], &err) == 0);
    /* A "running batch": requests[0] uses adapters 0 and 1 (pinned above); more acquires around it. */
    for (int i = 2; i < N_ADAPTERS; i++) {
        int id = -1;
        FL_EXPECTF(fl_adapter_cache_acquire(c, hashes[i], &id, &err) == 0, "%s", err.message);
        FL_EXPECT(fl_flux_adapter_attached(m, pinned[0]) && fl_flux_adapter_attached(m, pinned[1]));
    }
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECTF(st.attached == N_ADAPTERS && st.detaches == 0, "attached %zu", st.attached); /* all pinned: over budget */
    fl_adapter_cache_release_all(c);
    /* Released, the next batch trims the tier to its budget, least recent first, keeping what it
     * uses (requests[0]: adapters 0 and 1; attaching 0 again may evict 1, the least recent, first). */
    FL_EXPECT(sample_through(c, m, hashes, requests, 1, img, true) == 0);
    FL_EXPECT(memcmp(img[0], ref[0], image_floats() * sizeof(float)) == 0);
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECTF(st.attached_bytes <= 2 * one_bytes || st.attached == 2, "%zu bytes, %zu sets", st.attached_bytes,
               st.attached);
    FL_EXPECTF(st.attached < N_ADAPTERS && st.detaches == st.attaches - st.attached, "attaches %llu, %zu attached, "
               "detaches %llu", (unsigned long long)st.attaches, st.attached, (unsigned long long)st.detaches);
    const char *att[N_ADAPTERS + 1];
    size_t n_att = fl_adapter_cache_attached(c, att, N_ADAPTERS + 1);
    FL_EXPECT(n_att >= 2 && !strcmp(att[0], hashes[1]) && !strcmp(att[1], hashes[0]));
    FL_EXPECT(fl_flux_adapter_attached(m, pinned[0]));
    fl_adapter_cache_release_all(c);
    /* Batches of one under the tight budget: attaches and detaches, the budget kept unless the
     * batch's own sets alone pass it, and still the same images. */
    for (int r = 0; r < N_REQUESTS; r++) {
        FL_EXPECT(sample_through(c, m, hashes, &requests[r], 1, &img[r], false) == 0);
        st = fl_adapter_cache_get_stats(c);
        FL_EXPECTF(requests[r].n == 0 || st.attached_bytes <= 2 * one_bytes || st.attached <= (size_t)requests[r].n,
                   "request %d: %zu bytes in %zu sets", r, st.attached_bytes, st.attached);
    }
    FL_EXPECT(same_images(img, ref, N_REQUESTS));
    FL_EXPECT(fl_adapter_cache_get_stats(c).detaches > 0);

    /* A batch naming every adapter under that budget: what it acquired first stays attached
     * while it acquires the rest (over budget rather than dropping a set it uses), and every
     * image is its solo image. */
    FL_EXPECT(sample_through(c, m, hashes, requests, 3, img, true) == 0);
    FL_EXPECT(fl_adapter_cache_attached(c, att, N_ADAPTERS + 1) == N_ADAPTERS);
    FL_EXPECT(same_images(img, ref, 3));
    fl_adapter_cache_release_all(c);

    /* Detached behind the cache's back: attached again on the next acquire. */
    fl_flux_clear_adapters(m);
    uint64_t attaches = fl_adapter_cache_get_stats(c).attaches;
    FL_EXPECT(sample_through(c, m, hashes, &requests[0], 1, img, false) == 0);
    FL_EXPECT(fl_adapter_cache_get_stats(c).attaches == attaches + 2);
    FL_EXPECT(memcmp(img[0], ref[0], image_floats() * sizeof(float)) == 0);

    /* Bad hashes and misfit files attach nothing and keep what is attached. */
    st = fl_adapter_cache_get_stats(c);
    int id = 7;
    FL_EXPECT(fl_adapter_cache_acquire(c, "../x", &id, &err) != 0 && err.code == FL_EINVAL && id == -1);
    FL_EXPECT(fl_adapter_cache_acquire(c, "0000000000000000000000000000000000000000000000000000000000000000", &id,
                                       &err) != 0 &&
              err.code == FL_ENOTFOUND);
    fl_lora *bad = fl_lora_new();
    float a[2 * 5] = {0}, b[7 * 2] = {0};
    FL_EXPECT(fl_lora_add(bad, "img_in", 2, 5, 7, a, b, 2.0f, &err) == 0);
    char bad_path[512], bad_hex[65];
    snprintf(bad_path, sizeof bad_path, "%s/misfit.safetensors", tmp_dir);
    FL_EXPECT(fl_lora_save(bad, FL_LORA_CANONICAL, bad_path, NULL, 0, &err) == 0);
    fl_lora_free(bad);
    FL_EXPECT(fl_store_put_file(s, bad_path, bad_hex, &err) == 0);
    FL_EXPECT(fl_adapter_cache_acquire(c, bad_hex, &id, &err) != 0 && err.code == FL_EINVAL);
    fl_adapter_cache_stats after = fl_adapter_cache_get_stats(c);
    FL_EXPECT(after.attached == st.attached && after.attaches == st.attaches && after.detaches == st.detaches);

    /* detach_all: the bare model, every set counted. */
    fl_adapter_cache_release_all(c);
    fl_adapter_cache_detach_all(c);
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.attached == 0 && st.attached_bytes == 0 && st.detaches == after.detaches + after.attached);
    bool bare = true;
    for (size_t i = 0; i < fl_flux_linear_count(m); i++) bare = bare && fl_flux_linear_at(m, i)->n_adapters == 0;
    FL_EXPECT(bare);
    fl_adapter_cache_free(c);

free_images:
    for (int r = 0; r < N_REQUESTS; r++) {
        free(ref[r]);
        free(img[r]);
    }
out:
    fl_flux_free(m);
    fl_store_close(s);
}

/* At most FL_FLUX_MAX_ATTACHED sets: the least recent goes first; with all of them pinned the
 * next acquire is FL_ELIMIT and changes nothing. */
static void test_attached_count(void) {
    fl_store *s = open_store("count");
    fl_flux_model *m = load_model();
    if (!s || !m) {
        fl_store_close(s);
        fl_flux_free(m);
        return;
    }
    enum { N = FL_FLUX_MAX_ATTACHED + 2 };
    static char hashes[N][65];
    for (int i = 0; i < N; i++)
        if (store_random_lora(s, m, 0, 1, 5000 + 7 * (uint64_t)i, hashes[i]) != 0) goto out;
    fl_adapter_cache *c = fl_adapter_cache_create(fl_store_locate, s, m, SIZE_MAX);
    fl_adapter_cache_set_device_budget(c, SIZE_MAX);
    fl_error err = {0};
    int id = -1;
    for (int i = 0; i < FL_FLUX_MAX_ATTACHED; i++)
        FL_EXPECTF(fl_adapter_cache_acquire(c, hashes[i], &id, &err) == 0, "%d: %s", i, err.message);
    FL_EXPECT(fl_adapter_cache_acquire(c, hashes[FL_FLUX_MAX_ATTACHED], &id, &err) != 0 && err.code == FL_ELIMIT);
    fl_adapter_cache_stats st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.attached == FL_FLUX_MAX_ATTACHED && st.detaches == 0);
    fl_adapter_cache_release_all(c);
    FL_EXPECTF(fl_adapter_cache_acquire(c, hashes[FL_FLUX_MAX_ATTACHED], &id, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_adapter_cache_acquire(c, hashes[FL_FLUX_MAX_ATTACHED + 1], &id, &err) == 0, "%s", err.message);
    st = fl_adapter_cache_get_stats(c);
    FL_EXPECT(st.attached == FL_FLUX_MAX_ATTACHED && st.detaches == 2);
    const char *att[N];
    size_t n = fl_adapter_cache_attached(c, att, N);
    bool first_two_gone = n == FL_FLUX_MAX_ATTACHED;
    for (size_t i = 0; i < n; i++) first_two_gone = first_two_gone && strcmp(att[i], hashes[0]) && strcmp(att[i], hashes[1]);
    FL_EXPECT(first_two_gone);
    fl_adapter_cache_free(c);
    FL_EXPECT(fl_flux_linear_at(m, 0)->n_adapters == 0); /* freeing the cache detaches its sets */
out:
    fl_flux_free(m);
    fl_store_close(s);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/fl_test_residency_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    cpu = fl_ctx_create(fl_device_cpu(), NULL);
    FL_RUN(test_resident);
    FL_RUN(test_attached_count);
    fl_ctx_destroy(cpu);
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return fl_test_finish();
}
