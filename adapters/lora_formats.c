/*
 * lora_formats.c — writing LoRA adapters in the canonical, kohya and PEFT/diffusers layouts, and
 * the module-name lookups adapters use (over the table of models/flux_names.c).
 */
#include "adapters/lora_formats.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- module names (the table lives in models/flux_names.c) ------------------------------------ */

static bool find_original(const char *name, char sep, fl_lora_diffusers_map *out) {
    return fl_flux_diffusers_lookup(name, sep, out);
}

bool fl_lora_diffusers_names(const char *module, fl_lora_diffusers_map *out) {
    return find_original(module, '.', out);
}

bool fl_lora_diffusers_source(const char *path, fl_lora_diffusers_map *out, int *part) {
    return fl_flux_diffusers_source(path, out, part);
}

int fl_lora_part_rows(const fl_lora_diffusers_map *map, int part, int64_t in, int64_t out, int64_t *row0,
                      int64_t *rows) {
    return fl_flux_diffusers_part_rows(map, part, in, out, row0, rows);
}

bool fl_lora_is_flux_module(const char *module) {
    return find_original(module, '.', NULL);
}

void fl_lora_kohya_name(const char *module, char *buf, size_t size) {
    int n = snprintf(buf, size, "lora_unet_%s", module);
    for (int i = 0; i < n && (size_t)i < size; i++)
        if (buf[i] == '.') buf[i] = '_';
}

bool fl_lora_kohya_resolve(const char *stem, char *module, size_t size) {
    const char *prefix = "lora_unet_";
    if (strncmp(stem, prefix, strlen(prefix))) return false;
    fl_lora_diffusers_map map;
    if (!find_original(stem + strlen(prefix), '_', &map)) return false;
    snprintf(module, size, "%s", map.module);
    return true;
}

const char *fl_lora_layout_name(fl_lora_layout layout) {
    switch (layout) {
    case FL_LORA_CANONICAL: return "canonical";
    case FL_LORA_KOHYA: return "kohya";
    case FL_LORA_PEFT: return "peft";
    }
    return "unknown";
}

int fl_lora_layout_from_name(const char *name, fl_lora_layout *out) {
    if (!strcmp(name, "canonical")) *out = FL_LORA_CANONICAL;
    else if (!strcmp(name, "kohya")) *out = FL_LORA_KOHYA;
    else if (!strcmp(name, "peft") || !strcmp(name, "diffusers")) *out = FL_LORA_PEFT;
    else return -1;
    return 0;
}

/* ---- writing ----------------------------------------------------------------------------------- */

/* Tensors and metadata being assembled, with the memory they point into. */
typedef struct file_builder {
    fl_safetensors_entry *tensors;
    size_t n_tensors;
    fl_safetensors_kv *meta;
    size_t n_meta;
    void **owned;
    size_t n_owned;
} file_builder;

static void *keep(file_builder *fb, void *p) {
    fb->owned = fl_xrealloc(fb->owned, (fb->n_owned + 1) * sizeof *fb->owned);
    fb->owned[fb->n_owned++] = p;
    return p;
}

static const char *keep_str(file_builder *fb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *keep_str(file_builder *fb, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    FL_CHECK(s);
    return keep(fb, s);
}

/* An F32 tensor: a matrix [d0, d1], or a scalar (ndim 0) when d0 < 0. */
static void add_tensor(file_builder *fb, const char *name, const float *data, int64_t d0, int64_t d1) {
    fb->tensors = fl_xrealloc(fb->tensors, (fb->n_tensors + 1) * sizeof *fb->tensors);
    fl_safetensors_entry *e = &fb->tensors[fb->n_tensors++];
    memset(e, 0, sizeof *e);
    e->name = name;
    e->dtype = FL_ST_F32;
    e->data = data;
    if (d0 >= 0) {
        e->ndim = 2;
        e->shape[0] = d0;
        e->shape[1] = d1;
    }
}

static void add_meta(file_builder *fb, const char *key, const char *value) {
    fb->meta = fl_xrealloc(fb->meta, (fb->n_meta + 1) * sizeof *fb->meta);
    fb->meta[fb->n_meta].key = key;
    fb->meta[fb->n_meta].value = value;
    fb->n_meta++;
}

static const float *keep_scalar(file_builder *fb, float v) {
    float *p = keep(fb, fl_xmalloc(sizeof *p));
    *p = v;
    return p;
}

static void builder_free(file_builder *fb) {
    for (size_t i = 0; i < fb->n_owned; i++) free(fb->owned[i]);
    free(fb->owned);
    free(fb->tensors);
    free(fb->meta);
}

static const char *const owned_keys[] = {"format", "rank", "alpha", "lora_adapter_metadata",
                                         "ss_network_module", "ss_network_dim", "ss_network_alpha"};

static void copy_caller_meta(file_builder *fb, const fl_safetensors_kv *metadata, size_t n) {
    for (size_t i = 0; i < n; i++) {
        bool owned = false;
        for (size_t k = 0; k < COUNT(owned_keys) && !owned; k++) owned = !strcmp(metadata[i].key, owned_keys[k]);
        if (!owned) add_meta(fb, metadata[i].key, metadata[i].value);
    }
}

static int check_pairs(const fl_lora *l, fl_error *err) {
    for (size_t i = 0; i < l->n_pairs; i++) {
        const fl_flux_lora_pair *p = &l->pairs[i];
        const char *name = p->module ? p->module : "(unnamed)";
        if (!p->module || !*p->module) return fl_fail(err, FL_EINVAL, "pair %zu has no module name", i);
        if (!l->dims || p->rank < 1 || l->dims[i].in < 1 || l->dims[i].out < 1 || !p->a || !p->b)
            return fl_fail(err, FL_EINVAL, "module '%s': rank, shape or matrices missing", name);
        if (!isfinite(p->alpha) || !(p->alpha > 0.0f))
            return fl_fail(err, FL_EINVAL, "module '%s': alpha %g is not a positive number", name, (double)p->alpha);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(l->pairs[j].module, p->module))
                return fl_fail(err, FL_EINVAL, "module '%s' appears twice", name);
    }
    return 0;
}

/* True when every pair has the same alpha (same rank with ranks). */
static bool uniform(const fl_lora *l, bool ranks) {
    for (size_t i = 1; i < l->n_pairs; i++) {
        if (ranks && l->pairs[i].rank != l->pairs[0].rank) return false;
        if (!ranks && l->pairs[i].alpha != l->pairs[0].alpha) return false;
    }
    return l->n_pairs > 0;
}

static void build_canonical(file_builder *fb, const fl_lora *l) {
    bool same_alpha = uniform(l, false);
    for (size_t i = 0; i < l->n_pairs; i++) {
        const fl_flux_lora_pair *p = &l->pairs[i];
        add_tensor(fb, keep_str(fb, "%s.lora_A.weight", p->module), p->a, p->rank, l->dims[i].in);
        add_tensor(fb, keep_str(fb, "%s.lora_B.weight", p->module), p->b, l->dims[i].out, p->rank);
        if (!same_alpha) add_tensor(fb, keep_str(fb, "%s.alpha", p->module), keep_scalar(fb, p->alpha), -1, 0);
    }
    add_meta(fb, "format", "flashlora.lora.v1");
    if (uniform(l, true)) add_meta(fb, "rank", keep_str(fb, "%lld", (long long)l->pairs[0].rank));
    if (same_alpha) add_meta(fb, "alpha", keep_str(fb, "%.9g", (double)l->pairs[0].alpha));
}

static void build_kohya(file_builder *fb, const fl_lora *l) {
    char stem[FL_FLUX_NAME_MAX + 16];
    for (size_t i = 0; i < l->n_pairs; i++) {
        const fl_flux_lora_pair *p = &l->pairs[i];
        fl_lora_kohya_name(p->module, stem, sizeof stem);
        add_tensor(fb, keep_str(fb, "%s.lora_down.weight", stem), p->a, p->rank, l->dims[i].in);
        add_tensor(fb, keep_str(fb, "%s.lora_up.weight", stem), p->b, l->dims[i].out, p->rank);
        add_tensor(fb, keep_str(fb, "%s.alpha", stem), keep_scalar(fb, p->alpha), -1, 0);
    }
    add_meta(fb, "ss_network_module", "networks.lora_flux");
    if (uniform(l, true)) add_meta(fb, "ss_network_dim", keep_str(fb, "%lld", (long long)l->pairs[0].rank));
    if (uniform(l, false)) add_meta(fb, "ss_network_alpha", keep_str(fb, "%.9g", (double)l->pairs[0].alpha));
}

/* One diffusers part of a pair, as written. */
typedef struct peft_part {
    const char *path; /* diffusers module path, no prefix */
    int64_t rank;
    float alpha;
} peft_part;

/* The most frequent value among parts (the first on ties), of ranks or of alphas. */
static size_t most_frequent(const peft_part *parts, size_t n, bool ranks) {
    size_t best = 0, best_count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t count = 0;
        for (size_t j = 0; j < n; j++)
            count += ranks ? parts[j].rank == parts[i].rank : parts[j].alpha == parts[i].alpha;
        if (count > best_count) {
            best = i;
            best_count = count;
        }
    }
    return best;
}

/* The LoraConfig JSON diffusers stores under "lora_adapter_metadata". */
static const char *peft_config_json(file_builder *fb, const peft_part *parts, size_t n) {
    size_t ref_rank = most_frequent(parts, n, true), ref_alpha = most_frequent(parts, n, false);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(parts[i].path, "proj_out")) ref_rank = ref_alpha = i; /* see lora_formats.h */
    int64_t r = parts[ref_rank].rank;
    float alpha = parts[ref_alpha].alpha;
    json_t *rank_pattern = json_object(), *alpha_pattern = json_object(), *targets = json_array();
    for (size_t i = 0; i < n; i++) {
        if (parts[i].rank != r) json_object_set_new(rank_pattern, parts[i].path, json_integer(parts[i].rank));
        if (parts[i].alpha != alpha) json_object_set_new(alpha_pattern, parts[i].path, json_real(parts[i].alpha));
        json_array_append_new(targets, json_string(parts[i].path));
    }
    json_t *root = json_object();
    json_object_set_new(root, "transformer.r", json_integer(r));
    json_object_set_new(root, "transformer.lora_alpha", json_real(alpha));
    json_object_set_new(root, "transformer.rank_pattern", rank_pattern);
    json_object_set_new(root, "transformer.alpha_pattern", alpha_pattern);
    json_object_set_new(root, "transformer.target_modules", targets);
    json_object_set_new(root, "transformer.lora_dropout", json_real(0.0));
    json_object_set_new(root, "transformer.bias", json_string("none"));
    json_object_set_new(root, "transformer.use_rslora", json_false());
    json_object_set_new(root, "transformer.use_dora", json_false());
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    FL_CHECK(text);
    return keep(fb, text);
}

static int build_peft(file_builder *fb, const fl_lora *l, fl_error *err) {
    peft_part *parts = fl_xmalloc((l->n_pairs * FL_LORA_MAX_PARTS + 1) * sizeof *parts);
    size_t n_parts = 0;
    fl_lora_diffusers_map map;
    for (size_t i = 0; i < l->n_pairs; i++) {
        const fl_flux_lora_pair *p = &l->pairs[i];
        int64_t in = l->dims[i].in, out = l->dims[i].out, r = p->rank;
        if (!fl_lora_diffusers_names(p->module, &map)) {
            free(parts);
            return fl_fail(err, FL_EINVAL, "module '%s' has no name in the diffusers Flux transformer", p->module);
        }
        for (int j = 0; j < map.n_parts; j++) {
            int64_t row0 = 0, rows = 0;
            if (fl_lora_part_rows(&map, j, in, out, &row0, &rows) != 0) {
                free(parts);
                return fl_fail(err, FL_EINVAL, "module '%s' of shape [%lld, %lld] does not split into %s", p->module,
                               (long long)out, (long long)in, map.parts[j]);
            }
            const float *b = p->b + row0 * r;
            if (map.split == FL_LORA_SPLIT_SWAP_HALVES) { /* (shift, scale) -> (scale, shift) */
                float *swapped = keep(fb, fl_xmalloc((size_t)(out * r) * sizeof *swapped));
                size_t half = (size_t)(out / 2 * r);
                memcpy(swapped, p->b + half, half * sizeof *swapped);
                memcpy(swapped + half, p->b, half * sizeof *swapped);
                b = swapped;
            }
            const char *path = keep_str(fb, "%s", map.parts[j]);
            add_tensor(fb, keep_str(fb, "transformer.%s.lora_A.weight", path), p->a, r, in);
            add_tensor(fb, keep_str(fb, "transformer.%s.lora_B.weight", path), b, rows, r);
            parts[n_parts++] = (peft_part){path, r, p->alpha};
        }
    }
    add_meta(fb, "format", "pt");
    if (n_parts) add_meta(fb, "lora_adapter_metadata", peft_config_json(fb, parts, n_parts));
    free(parts);
    return 0;
}

int fl_lora_save(const fl_lora *lora, fl_lora_layout layout, const char *path, const fl_safetensors_kv *metadata,
                 size_t n_metadata, fl_error *err) {
    if (check_pairs(lora, err) != 0) return fl_fail_prefix(err, "%s", path);
    file_builder fb;
    memset(&fb, 0, sizeof fb);
    int rc = 0;
    switch (layout) {
    case FL_LORA_CANONICAL: build_canonical(&fb, lora); break;
    case FL_LORA_KOHYA: build_kohya(&fb, lora); break;
    case FL_LORA_PEFT: rc = build_peft(&fb, lora, err); break;
    default: rc = fl_fail(err, FL_EINVAL, "unknown LoRA layout %d", (int)layout);
    }
    if (rc != 0) {
        builder_free(&fb);
        return fl_fail_prefix(err, "%s", path);
    }
    copy_caller_meta(&fb, metadata, n_metadata);
    rc = fl_safetensors_write(path, fb.tensors, fb.n_tensors, fb.meta, fb.n_meta, err); /* names path itself */
    builder_free(&fb);
    return rc == 0 ? 0 : -1;
}

int fl_lora_convert_file(const char *src, fl_lora_layout layout, const char *path, fl_error *err) {
    fl_lora *lora = NULL;
    fl_safetensors *st = NULL;
    if (fl_lora_load(src, NULL, 0, &lora, err) != 0) return -1;
    if (fl_safetensors_open(src, &st, err) != 0) {
        fl_lora_free(lora);
        return fl_fail_prefix(err, "%s", src);
    }
    size_t n = fl_safetensors_metadata_count(st);
    fl_safetensors_kv *meta = fl_xcalloc(n ? n : 1, sizeof *meta);
    for (size_t i = 0; i < n; i++) fl_safetensors_metadata_at(st, i, &meta[i].key, &meta[i].value);
    int rc = fl_lora_save(lora, layout, path, meta, n, err);
    free(meta);
    fl_safetensors_close(st);
    fl_lora_free(lora);
    return rc;
}
