/*
 * cache.c — a worker's host-side adapter cache: loaded fl_lora by file hash, least recently used
 * evicted first once their matrices' bytes pass the budget, pinned ones never.
 *
 * Entries live in an array ordered most recent first; a worker holds a few dozen adapters at
 * most, so linear search and shifting are cheaper than any index.
 */
#include "adapters/cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct slot {
    char sha256[65];
    fl_lora *lora;
    size_t bytes;
    bool pinned;
} slot;

struct fl_adapter_cache {
    fl_adapter_locate_fn locate;
    void *locate_arg;
    fl_flux_model *model;
    const char **paths; /* the model's Linears and their shapes, for checking loaded files */
    fl_lora_dims *dims;
    size_t n_paths;
    slot *slots; /* most recently used first */
    size_t count, cap;
    fl_adapter_cache_stats stats;
};

fl_adapter_cache *fl_adapter_cache_create(fl_adapter_locate_fn locate, void *locate_arg, fl_flux_model *m,
                                          size_t budget_bytes) {
    fl_adapter_cache *c = fl_xcalloc(1, sizeof *c);
    c->locate = locate;
    c->locate_arg = locate_arg;
    c->model = m;
    c->paths = fl_lora_model_paths(m, &c->n_paths);
    c->dims = fl_xmalloc((c->n_paths ? c->n_paths : 1) * sizeof *c->dims);
    for (size_t i = 0; i < c->n_paths; i++) {
        const fl_flux_linear *lin = fl_flux_linear_at(m, i);
        c->dims[i] = (fl_lora_dims){lin->in, lin->out};
    }
    c->stats.budget_bytes = budget_bytes;
    return c;
}

void fl_adapter_cache_free(fl_adapter_cache *c) {
    if (!c) return;
    for (size_t i = 0; i < c->count; i++) fl_lora_free(c->slots[i].lora);
    free(c->slots);
    free(c->paths);
    free(c->dims);
    free(c);
}

static size_t lora_bytes(const fl_lora *l) {
    size_t bytes = 0;
    for (size_t i = 0; i < l->n_pairs; i++)
        bytes += (size_t)(l->pairs[i].rank * (l->dims[i].in + l->dims[i].out)) * sizeof(float);
    return bytes;
}

static ptrdiff_t find(const fl_adapter_cache *c, const char *sha256) {
    for (size_t i = 0; i < c->count; i++)
        if (!strcmp(c->slots[i].sha256, sha256)) return (ptrdiff_t)i;
    return -1;
}

/* Moves slot i to the front (most recent). */
static void touch(fl_adapter_cache *c, size_t i) {
    if (i == 0) return;
    slot s = c->slots[i];
    memmove(&c->slots[1], &c->slots[0], i * sizeof *c->slots);
    c->slots[0] = s;
}

/* Evicts unpinned slots from the least recent end, never the front one (just obtained), until
 * the resident bytes fit the budget. */
static void evict(fl_adapter_cache *c) {
    for (size_t i = c->count; i-- > 1 && c->stats.resident_bytes > c->stats.budget_bytes;) {
        if (c->slots[i].pinned) continue;
        c->stats.resident_bytes -= c->slots[i].bytes;
        c->stats.evictions++;
        fl_lora_free(c->slots[i].lora);
        memmove(&c->slots[i], &c->slots[i + 1], (c->count - i - 1) * sizeof *c->slots);
        c->count--;
    }
    c->stats.resident = c->count;
}

int fl_adapter_cache_get(fl_adapter_cache *c, const char *sha256, const fl_lora **out, fl_error *err) {
    *out = NULL;
    char path[4096];
    ptrdiff_t at = find(c, sha256);
    if (at >= 0) {
        c->stats.hits++;
        touch(c, (size_t)at);
    } else {
        c->stats.misses++;
        fl_lora *l = NULL;
        if (c->locate(c->locate_arg, sha256, path, sizeof path, err) != 0) return -1;
        if (fl_lora_load_for_model(path, c->model, &l, err) != 0) return -1;
        if (fl_lora_check_dims(l, c->paths, c->dims, c->n_paths, err) != 0) {
            fl_lora_free(l);
            return fl_fail_prefix(err, "adapter %s", sha256);
        }
        if (c->count == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 8;
            c->slots = fl_xrealloc(c->slots, c->cap * sizeof *c->slots);
        }
        memmove(&c->slots[1], &c->slots[0], c->count * sizeof *c->slots);
        slot *s = &c->slots[0];
        memset(s, 0, sizeof *s);
        memcpy(s->sha256, sha256, 65);
        s->lora = l;
        s->bytes = lora_bytes(l);
        c->count++;
        c->stats.resident_bytes += s->bytes;
    }
    evict(c);
    *out = c->slots[0].lora;
    return 0;
}

void fl_adapter_cache_pin(fl_adapter_cache *c, const char *sha256) {
    ptrdiff_t at = sha256 ? find(c, sha256) : -1;
    if (at >= 0) c->slots[at].pinned = true;
}

void fl_adapter_cache_unpin_all(fl_adapter_cache *c) {
    for (size_t i = 0; i < c->count; i++) c->slots[i].pinned = false;
}

fl_adapter_cache_stats fl_adapter_cache_get_stats(const fl_adapter_cache *c) {
    return c->stats;
}

size_t fl_adapter_cache_resident(const fl_adapter_cache *c, const char **hashes, size_t max) {
    size_t n = c->count < max ? c->count : max;
    for (size_t i = 0; i < n; i++) hashes[i] = c->slots[i].sha256;
    return n;
}
