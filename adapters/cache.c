/*
 * cache.c — a worker's adapters in two tiers (see cache.h): loaded fl_lora by file hash in host
 * memory, and the model's attached sets by file hash on its device, each least recently used
 * evicted first once its bytes pass its budget, pinned ones never.
 *
 * Each tier is an array ordered most recent first; a worker holds a few dozen adapters at most,
 * so linear search and shifting are cheaper than any index.
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

/* An adapter attached to the model. */
typedef struct device_slot {
    char sha256[65];
    int set_id;
    size_t bytes;
    bool pinned;
} device_slot;

struct fl_adapter_cache {
    fl_adapter_locate_fn locate;
    void *locate_arg;
    fl_flux_model *model;
    const char **paths; /* the model's Linears and their shapes, for checking loaded files */
    fl_lora_dims *dims;
    size_t n_paths;
    slot *slots; /* host tier, most recently used first */
    size_t count, cap;
    device_slot *dev; /* device tier, most recently used first */
    size_t n_dev, dev_cap;
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
    c->stats.device_budget_bytes = budget_bytes;
    return c;
}

void fl_adapter_cache_free(fl_adapter_cache *c) {
    if (!c) return;
    fl_adapter_cache_detach_all(c);
    for (size_t i = 0; i < c->count; i++) fl_lora_free(c->slots[i].lora);
    free(c->slots);
    free(c->dev);
    free(c->paths);
    free(c->dims);
    free(c);
}

void fl_adapter_cache_set_device_budget(fl_adapter_cache *c, size_t bytes) {
    c->stats.device_budget_bytes = bytes;
}

/* ---- host tier ---------------------------------------------------------------------------------- */

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

/* ---- device tier -------------------------------------------------------------------------------- */

static ptrdiff_t find_dev(const fl_adapter_cache *c, const char *sha256) {
    for (size_t i = 0; i < c->n_dev; i++)
        if (!strcmp(c->dev[i].sha256, sha256)) return (ptrdiff_t)i;
    return -1;
}

/* Forgets device slot i; detaches its set when it is still attached. */
static void drop_dev(fl_adapter_cache *c, size_t i) {
    if (fl_flux_adapter_attached(c->model, c->dev[i].set_id)) {
        FL_CHECK(fl_flux_remove_adapter(c->model, c->dev[i].set_id, NULL) == 0);
        c->stats.detaches++;
    }
    c->stats.attached_bytes -= c->dev[i].bytes;
    memmove(&c->dev[i], &c->dev[i + 1], (c->n_dev - i - 1) * sizeof *c->dev);
    c->n_dev--;
    c->stats.attached = c->n_dev;
}

/* Detaches unpinned sets from the least recent end until `incoming` more bytes fit the budget
 * and at most max_sets are attached (or nothing unpinned is left). */
static void evict_dev(fl_adapter_cache *c, size_t incoming, size_t max_sets) {
    for (size_t i = c->n_dev; i-- > 0;) {
        bool over_bytes = c->stats.attached_bytes + incoming > c->stats.device_budget_bytes ||
                          c->stats.attached_bytes + incoming < incoming; /* overflow: certainly over */
        if (!over_bytes && c->n_dev <= max_sets) break;
        if (!c->dev[i].pinned) drop_dev(c, i);
    }
}

int fl_adapter_cache_acquire(fl_adapter_cache *c, const char *sha256, int *set_id, fl_error *err) {
    *set_id = -1;
    ptrdiff_t at = find_dev(c, sha256);
    if (at >= 0 && !fl_flux_adapter_attached(c->model, c->dev[at].set_id)) {
        drop_dev(c, (size_t)at); /* detached behind the cache's back: attach it again */
        at = -1;
    }
    if (at >= 0) {
        c->stats.hits++;
        device_slot d = c->dev[at];
        memmove(&c->dev[1], &c->dev[0], (size_t)at * sizeof *c->dev);
        d.pinned = true;
        c->dev[0] = d;
        evict_dev(c, 0, FL_FLUX_MAX_ATTACHED); /* a budget made smaller since */
        *set_id = d.set_id;
        return 0;
    }
    const fl_lora *l = NULL;
    if (fl_adapter_cache_get(c, sha256, &l, err) != 0) return -1;
    size_t bytes = fl_flux_adapter_device_bytes(c->model, l->pairs, l->n_pairs);
    evict_dev(c, bytes, FL_FLUX_MAX_ATTACHED - 1);
    if (c->n_dev >= FL_FLUX_MAX_ATTACHED)
        return fl_fail(err, FL_ELIMIT, "adapter %s: %zu adapters are attached, all in use", sha256, c->n_dev);
    fl_error e = {0};
    int id = fl_flux_add_adapter(c->model, l->pairs, l->n_pairs, 1.0f, false, &e);
    if (id < 0 && (e.code == FL_ENOMEM || e.code == FL_ELIMIT)) {
        evict_dev(c, SIZE_MAX, 0); /* every unpinned set, then once more */
        id = fl_flux_add_adapter(c->model, l->pairs, l->n_pairs, 1.0f, false, &e);
    }
    if (id < 0) return fl_fail(err, e.code, "adapter %s: %s", sha256, e.message);
    if (c->n_dev == c->dev_cap) {
        c->dev_cap = c->dev_cap ? 2 * c->dev_cap : 8;
        c->dev = fl_xrealloc(c->dev, c->dev_cap * sizeof *c->dev);
    }
    memmove(&c->dev[1], &c->dev[0], c->n_dev * sizeof *c->dev);
    device_slot *d = &c->dev[0];
    memset(d, 0, sizeof *d);
    memcpy(d->sha256, sha256, 65);
    d->set_id = id;
    d->bytes = bytes;
    d->pinned = true;
    c->n_dev++;
    c->stats.attached = c->n_dev;
    c->stats.attached_bytes += bytes;
    c->stats.attaches++;
    *set_id = id;
    return 0;
}

void fl_adapter_cache_release_all(fl_adapter_cache *c) {
    for (size_t i = 0; i < c->n_dev; i++) c->dev[i].pinned = false;
}

void fl_adapter_cache_detach_all(fl_adapter_cache *c) {
    while (c->n_dev > 0) drop_dev(c, c->n_dev - 1);
}

fl_adapter_cache_stats fl_adapter_cache_get_stats(const fl_adapter_cache *c) {
    return c->stats;
}

size_t fl_adapter_cache_resident(const fl_adapter_cache *c, const char **hashes, size_t max) {
    size_t n = c->count < max ? c->count : max;
    for (size_t i = 0; i < n; i++) hashes[i] = c->slots[i].sha256;
    return n;
}

size_t fl_adapter_cache_attached(const fl_adapter_cache *c, const char **hashes, size_t max) {
    size_t n = c->n_dev < max ? c->n_dev : max;
    for (size_t i = 0; i < n; i++) hashes[i] = c->dev[i].sha256;
    return n;
}
