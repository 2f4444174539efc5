/*
 * lora.c — reading LoRA files (canonical, kohya and PEFT/diffusers layouts) into host f32 pairs on
 * the original Flux modules, fusing split diffusers parts back into their fused Linears.
 */
#include "adapters/lora.h"

#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora_formats.h"
#include "core/safetensors.h"
#include "core/tensor.h"

#define KOHYA_PREFIX "lora_unet_"
#define KEY_MAX (FL_SAFETENSORS_MAX_NAME + 32)

typedef enum file_kind { KIND_CANONICAL, KIND_KOHYA, KIND_PEFT } file_kind;

/* What a load knows besides the tensors. */
typedef struct reader {
    const fl_safetensors *st;
    file_kind kind;
    const char *a_suffix, *b_suffix;
    const char *const *paths; /* the model's Linears, or NULL */
    const fl_lora_dims *path_dims; /* their shapes, or NULL */
    size_t n_paths;
    float meta_alpha;   /* canonical: the "alpha" metadata entry; 0 when absent */
    json_t *peft;       /* peft: the lora_adapter_metadata object, or NULL */
    bool rslora;        /* peft: scale alpha / sqrt(r) */
    bool alpha_tensors; /* peft: the file has "<path>.alpha" tensors */
    float common_alpha; /* peft: their most frequent value */
} reader;

/* One LoRA key pair of the file, resolved to a module (and part of it). */
typedef struct entry {
    const fl_safetensors_info *ia, *ib;
    char module[FL_FLUX_NAME_MAX];
    fl_lora_diffusers_map map;
    int part; /* index into map.parts; -1 when the key names the module itself */
    float alpha;
    bool used;
} entry;

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static bool starts_with(const char *s, const char *prefix) {
    return !strncmp(s, prefix, strlen(prefix));
}

/* s without the container prefixes other tools put in front of module paths. */
static const char *strip_prefixes(const char *s) {
    static const char *const prefixes[] = {"base_model.model.", "model.diffusion_model.", "diffusion_model.",
                                           "transformer."};
    for (bool again = true; again;) {
        again = false;
        for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
            if (starts_with(s, prefixes[i])) {
                s += strlen(prefixes[i]);
                again = true;
            }
    }
    return s;
}

/* name without suffix, into buf (KEY_MAX bytes). */
static const char *stem_of(const char *name, const char *suffix, char *buf) {
    size_t n = strlen(name) - strlen(suffix);
    memcpy(buf, name, n);
    buf[n] = '\0';
    return buf;
}

/* Host f32 copy of a tensor of a computable dtype; a NaN or an infinity in it is an error naming
 * the tensor (such an adapter would turn every image it touches into noise or NaN). */
static float *to_f32(const fl_safetensors *st, const fl_safetensors_info *info, fl_error *err) {
    fl_tensor src;
    if (fl_safetensors_tensor_view(st, info, fl_device_cpu(), &src, err) != 0) {
        fl_fail_prefix(err, "tensor '%s'", info->name);
        return NULL;
    }
    int64_t n = fl_tensor_numel(&src);
    float *out = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!out) {
        fl_fail(err, FL_ENOMEM, "out of memory reading '%s'", info->name);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        if (src.dtype == FL_F32) out[i] = ((const float *)src.data)[i];
        else if (src.dtype == FL_BF16) out[i] = fl_bf16_to_f32(((const uint16_t *)src.data)[i]);
        else out[i] = fl_f16_to_f32(((const uint16_t *)src.data)[i]);
        if (!isfinite(out[i])) {
            fl_fail(err, FL_EINVAL, "tensor '%s' holds a non-finite value (%s at element %lld)", info->name,
                    isnan(out[i]) ? "NaN" : "infinity", (long long)i);
            free(out);
            return NULL;
        }
    }
    return out;
}

/* The value of a scalar alpha tensor (one element of a float dtype), checked positive. */
static int read_alpha(const fl_safetensors_info *info, float *alpha, fl_error *err) {
    if (info->numel != 1) return fl_fail(err, FL_EINVAL, "'%s' must hold one value (it is not a scalar)", info->name);
    double v = 0;
    if (info->dtype == FL_ST_F32) {
        float f;
        memcpy(&f, info->data, sizeof f);
        v = f;
    } else if (info->dtype == FL_ST_F64) {
        memcpy(&v, info->data, sizeof v);
    } else if (info->dtype == FL_ST_BF16 || info->dtype == FL_ST_F16) {
        uint16_t h;
        memcpy(&h, info->data, sizeof h);
        v = info->dtype == FL_ST_BF16 ? fl_bf16_to_f32(h) : fl_f16_to_f32(h);
    } else {
        return fl_fail(err, FL_EINVAL, "'%s' has dtype %s; an alpha must be a float", info->name,
                       fl_st_dtype_name(info->dtype));
    }
    if (!isfinite(v) || !(v > 0.0) || v > 1e6)
        return fl_fail(err, FL_EINVAL, "'%s' is not a positive alpha", info->name);
    *alpha = (float)v;
    return 0;
}

static void add_unmatched(fl_lora *l, const char *key) {
    l->unmatched = fl_xrealloc(l->unmatched, (l->n_unmatched + 1) * sizeof *l->unmatched);
    l->unmatched[l->n_unmatched++] = fl_xstrdup(key);
}

/* Appends a pair, taking ownership of a and b. */
static void push_pair(fl_lora *l, const char *module, int64_t rank, int64_t in, int64_t out, float *a, float *b,
                      float alpha) {
    l->pairs = fl_xrealloc(l->pairs, (l->n_pairs + 1) * sizeof *l->pairs);
    l->dims = fl_xrealloc(l->dims, (l->n_pairs + 1) * sizeof *l->dims);
    l->pairs[l->n_pairs] = (fl_flux_lora_pair){fl_xstrdup(module), rank, a, b, alpha};
    l->dims[l->n_pairs] = (fl_lora_dims){in, out};
    l->n_pairs++;
}

fl_lora *fl_lora_new(void) {
    fl_lora *l = fl_xcalloc(1, sizeof *l);
    l->format = "canonical";
    return l;
}

int fl_lora_add(fl_lora *l, const char *module, int64_t rank, int64_t in, int64_t out, const float *a,
                const float *b, float alpha, fl_error *err) {
    if (!module || !*module || rank < 1 || in < 1 || out < 1 || !a || !b)
        return fl_fail(err, FL_EINVAL, "LoRA pair '%s': empty name, matrices or sizes", module ? module : "");
    for (size_t i = 0; i < l->n_pairs; i++)
        if (!strcmp(l->pairs[i].module, module)) return fl_fail(err, FL_EINVAL, "module '%s' added twice", module);
    float *ca = fl_xmalloc((size_t)(rank * in) * sizeof *ca), *cb = fl_xmalloc((size_t)(out * rank) * sizeof *cb);
    memcpy(ca, a, (size_t)(rank * in) * sizeof *ca);
    memcpy(cb, b, (size_t)(out * rank) * sizeof *cb);
    push_pair(l, module, rank, in, out, ca, cb, alpha);
    return 0;
}

void fl_lora_free(fl_lora *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n_pairs; i++) {
        free((void *)l->pairs[i].module);
        free((void *)l->pairs[i].a);
        free((void *)l->pairs[i].b);
    }
    for (size_t i = 0; i < l->n_unmatched; i++) free(l->unmatched[i]);
    free(l->unmatched);
    free(l->pairs);
    free(l->dims);
    free(l);
}

/* ---- the file's layout and alpha sources -------------------------------------------------------- */

static file_kind detect_kind(const fl_safetensors *st) {
    size_t n = fl_safetensors_count(st);
    for (size_t i = 0; i < n; i++)
        if (starts_with(fl_safetensors_at(st, i)->name, KOHYA_PREFIX)) return KIND_KOHYA;
    if (fl_safetensors_metadata_get(st, "lora_adapter_metadata")) return KIND_PEFT;
    char buf[KEY_MAX];
    fl_lora_diffusers_map map;
    int part;
    for (size_t i = 0; i < n; i++) {
        const char *name = fl_safetensors_at(st, i)->name;
        const char *suffix = ends_with(name, ".lora_A.weight") ? ".lora_A.weight"
                             : ends_with(name, ".lora_B.weight") ? ".lora_B.weight"
                                                                 : NULL;
        if (suffix && fl_lora_diffusers_source(strip_prefixes(stem_of(name, suffix, buf)), &map, &part))
            return KIND_PEFT;
    }
    return KIND_CANONICAL;
}

/* A LoraConfig field, under the "transformer." prefix (diffusers' pipeline files) or bare. */
static json_t *peft_field(const reader *r, const char *key) {
    char prefixed[128];
    snprintf(prefixed, sizeof prefixed, "transformer.%s", key);
    json_t *v = json_object_get(r->peft, prefixed);
    return v ? v : json_object_get(r->peft, key);
}

static int read_peft_metadata(reader *r, fl_error *err) {
    const char *text = fl_safetensors_metadata_get(r->st, "lora_adapter_metadata");
    if (!text) return 0;
    json_error_t je;
    r->peft = json_loads(text, 0, &je);
    if (!json_is_object(r->peft))
        return fl_fail(err, FL_EINVAL, "metadata lora_adapter_metadata is not a JSON object%s%s", r->peft ? "" : ": ",
                       r->peft ? "" : je.text);
    if (json_is_true(peft_field(r, "use_dora")))
        return fl_fail(err, FL_EUNSUPPORTED,
                       "metadata lora_adapter_metadata: DoRA adapters (use_dora) are not supported");
    r->rslora = json_is_true(peft_field(r, "use_rslora"));
    return 0;
}

/* PEFT files: every alpha tensor is checked, and the most frequent value (the first on ties) is
 * what diffusers gives the keys that have none. */
static int scan_alpha_tensors(reader *r, fl_error *err) {
    size_t n = fl_safetensors_count(r->st), n_values = 0;
    float *values = fl_xmalloc((n ? n : 1) * sizeof *values);
    for (size_t i = 0; i < n; i++) {
        const fl_safetensors_info *info = fl_safetensors_at(r->st, i);
        if (!ends_with(info->name, ".alpha")) continue;
        if (read_alpha(info, &values[n_values], err) != 0) {
            free(values);
            return -1;
        }
        n_values++;
    }
    size_t best_count = 0;
    for (size_t i = 0; i < n_values; i++) {
        size_t count = 0;
        for (size_t j = 0; j < n_values; j++) count += values[j] == values[i];
        if (count > best_count) {
            best_count = count;
            r->common_alpha = values[i];
        }
    }
    r->alpha_tensors = n_values > 0;
    free(values);
    return 0;
}

/* PEFT's pattern match: the key equals the path or matches ^(.*\.)?(key)$. */
static int pattern_matches(const char *key, const char *path, bool *match, fl_error *err) {
    if (!strcmp(key, path)) {
        *match = true;
        return 0;
    }
    char *re_text = NULL;
    if (asprintf(&re_text, "^(.*\\.)?(%s)$", key) < 0) return fl_fail(err, FL_ENOMEM, "out of memory");
    regex_t re;
    int rc = regcomp(&re, re_text, REG_EXTENDED | REG_NOSUB);
    free(re_text);
    if (rc != 0)
        return fl_fail(err, FL_EINVAL, "metadata lora_adapter_metadata: alpha_pattern key '%s' is not a usable "
                                       "regular expression", key);
    *match = regexec(&re, path, 0, NULL, 0) == 0;
    regfree(&re);
    return 0;
}

/* Alpha of a peft key from lora_adapter_metadata: alpha_pattern, else lora_alpha, else rank. */
static int peft_config_alpha(const reader *r, const char *path, int64_t rank, float *alpha, fl_error *err) {
    json_t *value = NULL, *patterns = peft_field(r, "alpha_pattern");
    const char *what = "alpha_pattern";
    if (json_is_object(patterns)) {
        value = json_object_get(patterns, path);
        const char *key;
        json_t *v;
        json_object_foreach(patterns, key, v) {
            if (value) break;
            bool match = false;
            if (pattern_matches(key, path, &match, err) != 0) return -1;
            if (match) value = v;
        }
    }
    if (!value) {
        value = peft_field(r, "lora_alpha");
        what = "lora_alpha";
    }
    if (!value) {
        *alpha = (float)rank;
        return 0;
    }
    double v = json_number_value(value);
    if (!json_is_number(value) || !isfinite(v) || !(v > 0.0) || v > 1e6)
        return fl_fail(err, FL_EINVAL, "metadata lora_adapter_metadata: %s for '%s' is not a positive number", what,
                       path);
    *alpha = (float)v;
    return 0;
}

/* Alpha of the pair whose keys start with stem; path is its module path (prefixes stripped). */
static int entry_alpha(const reader *r, const char *stem, const char *path, int64_t rank, float *alpha,
                       fl_error *err) {
    char key[KEY_MAX + 32];
    snprintf(key, sizeof key, "%s.alpha", stem);
    const fl_safetensors_info *info = fl_safetensors_find(r->st, key);
    if (info) {
        if (read_alpha(info, alpha, err) != 0) return -1;
    } else if (r->kind == KIND_PEFT && r->alpha_tensors) {
        *alpha = r->common_alpha;
    } else if (r->kind == KIND_PEFT && r->peft) {
        if (peft_config_alpha(r, path, rank, alpha, err) != 0) return -1;
    } else if (r->kind == KIND_CANONICAL && r->meta_alpha > 0.0f) {
        *alpha = r->meta_alpha;
    } else {
        *alpha = (float)rank;
    }
    if (r->kind == KIND_PEFT && r->rslora) *alpha = (float)(*alpha * sqrt((double)rank)); /* alpha / sqrt(r) */
    return 0;
}

/* ---- keys to modules ------------------------------------------------------------------------------ */

static const fl_lora_dims *model_dims(const reader *r, const char *module) {
    for (size_t i = 0; i < r->n_paths; i++)
        if (!strcmp(r->paths[i], module)) return r->path_dims ? &r->path_dims[i] : NULL;
    return NULL;
}

static bool model_has(const reader *r, const char *module) {
    for (size_t i = 0; i < r->n_paths; i++)
        if (!strcmp(r->paths[i], module)) return true;
    return false;
}

/* Module path for a kohya stem matched against the model's paths. */
static const char *kohya_in_model(const reader *r, const char *stem) {
    if (!starts_with(stem, KOHYA_PREFIX)) return NULL;
    const char *rest = stem + strlen(KOHYA_PREFIX);
    for (size_t i = 0; i < r->n_paths; i++) {
        const char *p = r->paths[i];
        size_t j = 0;
        for (; p[j] && rest[j]; j++)
            if (rest[j] != (p[j] == '.' ? '_' : p[j])) break;
        if (!p[j] && !rest[j]) return p;
    }
    return NULL;
}

/* Fills e's module (and part); false when the key adapts no known module. *path gets the module
 * path as the file names it (prefixes stripped). */
static bool resolve(const reader *r, const char *stem, entry *e, const char **path) {
    e->part = -1;
    *path = stem;
    if (r->kind == KIND_KOHYA) {
        if (r->paths) {
            const char *m = kohya_in_model(r, stem);
            if (!m) return false;
            snprintf(e->module, sizeof e->module, "%s", m);
            return true;
        }
        return fl_lora_kohya_resolve(stem, e->module, sizeof e->module);
    }
    const char *s = strip_prefixes(stem);
    *path = s;
    if (r->kind == KIND_PEFT && fl_lora_diffusers_source(s, &e->map, &e->part)) {
        snprintf(e->module, sizeof e->module, "%s", e->map.module);
    } else {
        if (strlen(s) >= sizeof e->module) return false;
        snprintf(e->module, sizeof e->module, "%s", s);
        if (r->kind == KIND_PEFT && !r->paths && !fl_lora_is_flux_module(s)) return false;
    }
    return !r->paths || model_has(r, e->module);
}

/* Checks the pair whose A key is ia; fills *ib. */
static int check_pair(const reader *r, const fl_safetensors_info *ia, const char *stem,
                      const fl_safetensors_info **ib, fl_error *err) {
    char key[KEY_MAX + 32];
    snprintf(key, sizeof key, "%s%s", stem, r->b_suffix);
    *ib = fl_safetensors_find(r->st, key);
    if (!*ib) return fl_fail(err, FL_EINVAL, "'%s' has no matching '%s'", ia->name, key);
    const fl_safetensors_info *both[2] = {ia, *ib};
    for (int k = 0; k < 2; k++)
        if (!fl_st_dtype_computable(both[k]->dtype, NULL))
            return fl_fail(err, FL_EINVAL, "'%s' has dtype %s; LoRA matrices must be F32, BF16 or F16",
                           both[k]->name, fl_st_dtype_name(both[k]->dtype));
    if (ia->ndim != 2 || (*ib)->ndim != 2 || ia->shape[0] != (*ib)->shape[1] || ia->shape[0] < 1 ||
        ia->shape[1] < 1 || (*ib)->shape[0] < 1)
        return fl_fail(err, FL_EINVAL, "'%s' and '%s' are not [r, in] and [out, r] with one rank r", ia->name, key);
    return 0;
}

/* Every LoRA pair of the file as an entry; other keys go to unmatched. */
static int collect(reader *r, fl_lora *l, entry **out, size_t *n_out, fl_error *err) {
    size_t n = fl_safetensors_count(r->st);
    entry *es = fl_xcalloc(n ? n : 1, sizeof *es);
    size_t count = 0;
    char stem[KEY_MAX], key[KEY_MAX + 32];
    for (size_t i = 0; i < n; i++) {
        const fl_safetensors_info *info = fl_safetensors_at(r->st, i);
        const char *name = info->name;
        if (ends_with(name, r->b_suffix) || ends_with(name, ".alpha")) { /* read with their A */
            const char *suffix = ends_with(name, ".alpha") ? ".alpha" : r->b_suffix;
            snprintf(key, sizeof key, "%s%s", stem_of(name, suffix, stem), r->a_suffix);
            if (fl_safetensors_find(r->st, key)) continue;
            if (suffix == r->b_suffix) {
                free(es);
                return fl_fail(err, FL_EINVAL, "'%s' has no matching '%s'", name, key);
            }
            add_unmatched(l, name);
            continue;
        }
        if (!ends_with(name, r->a_suffix)) {
            add_unmatched(l, name);
            continue;
        }
        stem_of(name, r->a_suffix, stem);
        entry *e = &es[count];
        const char *path = NULL;
        if (check_pair(r, info, stem, &e->ib, err) != 0) {
            free(es);
            return -1;
        }
        e->ia = info;
        if (!resolve(r, stem, e, &path)) {
            add_unmatched(l, name);
            continue;
        }
        if (entry_alpha(r, stem, path, info->shape[0], &e->alpha, err) != 0) {
            free(es);
            return -1;
        }
        count++;
    }
    *out = es;
    *n_out = count;
    return 0;
}

/* ---- entries to pairs ----------------------------------------------------------------------------- */

/* The MLP width as the file shows it (a proj_mlp part, or an MLP Linear), or 0. */
static int64_t mlp_width(const entry *es, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const entry *e = &es[i];
        if (e->part == 3 && e->map.split == FL_LORA_SPLIT_QKV_MLP) return e->ib->shape[0];
        if (ends_with(e->module, "_mlp.0")) return e->ib->shape[0];
        if (ends_with(e->module, "_mlp.2")) return e->ia->shape[1];
    }
    return 0;
}

/* A module named by one key pair (an original path, or a diffusers path of a whole Linear). */
static int build_whole(const reader *r, fl_lora *l, const entry *e, fl_error *err) {
    int64_t rank = e->ia->shape[0], in = e->ia->shape[1], out = e->ib->shape[0];
    bool swap = e->part >= 0 && e->map.split == FL_LORA_SPLIT_SWAP_HALVES;
    if (swap && out % 2)
        return fl_fail(err, FL_EINVAL, "'%s' has %lld rows; %s needs an even count", e->ib->name, (long long)out,
                       e->map.parts[0]);
    float *a = to_f32(r->st, e->ia, err);
    float *b = a ? to_f32(r->st, e->ib, err) : NULL;
    if (!a || !b) {
        free(a);
        return -1;
    }
    if (swap) { /* diffusers (scale, shift) -> original (shift, scale) */
        size_t half = (size_t)(out / 2 * rank);
        float *tmp = fl_xmalloc(half * sizeof *tmp);
        memcpy(tmp, b, half * sizeof *tmp);
        memmove(b, b + half, half * sizeof *tmp);
        memcpy(b + half, tmp, half * sizeof *tmp);
        free(tmp);
    }
    push_pair(l, e->module, rank, in, out, a, b, e->alpha);
    return 0;
}

/* Parts of one fused module (qkv or linear1), fused into one pair; absent parts are zero rows. */
static int build_fused(const reader *r, fl_lora *l, entry **parts, int n, int64_t mlp_hint, fl_error *err) {
    const fl_lora_diffusers_map *map = &parts[0]->map;
    const entry *by_part[FL_LORA_MAX_PARTS] = {0};
    int64_t hidden = parts[0]->ia->shape[1];
    for (int k = 0; k < n; k++) {
        by_part[parts[k]->part] = parts[k];
        if (parts[k]->ia->shape[1] != hidden)
            return fl_fail(err, FL_EINVAL, "'%s' has %lld inputs, '%s' %lld: parts of %s must agree",
                           parts[k]->ia->name, (long long)parts[k]->ia->shape[1], parts[0]->ia->name,
                           (long long)hidden, map->module);
    }
    int64_t rows[FL_LORA_MAX_PARTS], row0[FL_LORA_MAX_PARTS], out = 0;
    for (int j = 0; j < map->n_parts; j++) {
        rows[j] = hidden;
        if (j == 3) {
            const fl_lora_dims *d = model_dims(r, map->module);
            rows[j] = by_part[j] ? by_part[j]->ib->shape[0] : d ? d->out - 3 * hidden : mlp_hint;
            if (rows[j] < 1)
                return fl_fail(err, FL_EINVAL, "%s: %s is absent and its width is unknown (load against the model)",
                               map->module, map->parts[j]);
        } else if (by_part[j] && by_part[j]->ib->shape[0] != hidden) {
            return fl_fail(err, FL_EINVAL, "'%s' has %lld rows; %s needs %lld (its input width)", by_part[j]->ib->name,
                           (long long)by_part[j]->ib->shape[0], map->parts[j], (long long)hidden);
        }
        row0[j] = out;
        out += rows[j];
    }
    /* Load every part; note whether they share one A and one scale. */
    float *pa[FL_LORA_MAX_PARTS] = {0}, *pb[FL_LORA_MAX_PARTS] = {0};
    bool same_a = true, same_scale = true;
    int rc = 0, first = 0;
    while (!by_part[first]) first++; /* the lowest part present: loaded first below */
    double scale0 = by_part[first]->alpha / (double)by_part[first]->ia->shape[0];
    for (int j = 0; j < map->n_parts && rc == 0; j++) {
        if (!by_part[j]) continue;
        pa[j] = to_f32(r->st, by_part[j]->ia, err);
        pb[j] = pa[j] ? to_f32(r->st, by_part[j]->ib, err) : NULL;
        if (!pa[j] || !pb[j]) {
            rc = -1;
            break;
        }
        int64_t rk = by_part[j]->ia->shape[0];
        same_a = same_a && rk == by_part[first]->ia->shape[0] &&
                 !memcmp(pa[j], pa[first], (size_t)(rk * hidden) * sizeof(float));
        same_scale = same_scale && by_part[j]->alpha / (double)rk == scale0;
    }
    if (rc == 0) {
        /* Shared A: rank unchanged, B stacked. Otherwise A concatenated, B block-diagonal. */
        int64_t rank = 0;
        for (int j = 0; j < map->n_parts; j++)
            if (by_part[j]) rank = same_a ? by_part[j]->ia->shape[0] : rank + by_part[j]->ia->shape[0];
        float *a = fl_xcalloc((size_t)(rank * hidden), sizeof *a);
        float *b = fl_xcalloc((size_t)(out * rank), sizeof *b);
        int64_t col = 0;
        for (int j = 0; j < map->n_parts; j++) {
            if (!by_part[j]) continue;
            int64_t rk = by_part[j]->ia->shape[0];
            double factor = same_scale ? 1.0 : by_part[j]->alpha / (double)rk;
            memcpy(a + col * hidden, pa[j], (size_t)(rk * hidden) * sizeof *a);
            for (int64_t i = 0; i < rows[j]; i++)
                for (int64_t c = 0; c < rk; c++)
                    b[(row0[j] + i) * rank + col + c] = (float)(pb[j][i * rk + c] * factor);
            if (!same_a) col += rk;
        }
        float alpha = same_scale ? (same_a ? by_part[first]->alpha : (float)(scale0 * (double)rank)) : (float)rank;
        push_pair(l, map->module, rank, hidden, out, a, b, alpha);
    }
    for (int j = 0; j < FL_LORA_MAX_PARTS; j++) {
        free(pa[j]);
        free(pb[j]);
    }
    return rc;
}

static int build_pairs(const reader *r, fl_lora *l, entry *es, size_t n, fl_error *err) {
    int64_t mlp_hint = mlp_width(es, n);
    entry **group = fl_xmalloc((n ? n : 1) * sizeof *group);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (es[i].used) continue;
        int ng = 0;
        for (size_t j = i; j < n; j++)
            if (!es[j].used && !strcmp(es[j].module, es[i].module)) {
                es[j].used = true;
                group[ng++] = &es[j];
            }
        for (int x = 0; x < ng && rc == 0; x++)
            for (int y = x + 1; y < ng && rc == 0; y++)
                if (group[x]->part < 0 || group[y]->part < 0 || group[x]->part == group[y]->part)
                    rc = fl_fail(err, FL_EINVAL, "'%s' and '%s' both adapt %s", group[x]->ia->name,
                                 group[y]->ia->name, es[i].module);
        if (rc != 0) break;
        if (es[i].part < 0 || es[i].map.n_parts == 1) rc = build_whole(r, l, &es[i], err);
        else rc = build_fused(r, l, group, ng, mlp_hint, err);
    }
    free(group);
    return rc;
}

/* ---- loading ------------------------------------------------------------------------------------ */

/* Reads an open file; label names it in errors (a path, or "upload"). */
static int load_open(fl_safetensors *st, const char *label, const char *const *paths, const fl_lora_dims *dims,
                     size_t n_paths, fl_lora **out, fl_error *err) {
    fl_lora *l = fl_lora_new();
    reader r = {.st = st, .paths = paths, .path_dims = dims, .n_paths = paths ? n_paths : 0};
    r.kind = detect_kind(st);
    bool kohya = r.kind == KIND_KOHYA;
    l->format = kohya ? "kohya" : r.kind == KIND_PEFT ? "peft" : "canonical";
    r.a_suffix = kohya ? ".lora_down.weight" : ".lora_A.weight";
    r.b_suffix = kohya ? ".lora_up.weight" : ".lora_B.weight";
    entry *es = NULL;
    size_t n = 0;
    int rc = 0;
    const char *alpha_meta = fl_safetensors_metadata_get(st, "alpha");
    if (alpha_meta && r.kind == KIND_CANONICAL) {
        char *end = NULL;
        r.meta_alpha = strtof(alpha_meta, &end);
        if (end == alpha_meta || *end || !(r.meta_alpha > 0.0f) || !isfinite(r.meta_alpha))
            rc = fl_fail(err, FL_EINVAL, "metadata alpha '%s' is not a positive number", alpha_meta);
    }
    if (rc == 0 && r.kind == KIND_PEFT) rc = read_peft_metadata(&r, err);
    if (rc == 0 && r.kind == KIND_PEFT) rc = scan_alpha_tensors(&r, err);
    if (rc == 0) rc = collect(&r, l, &es, &n, err);
    if (rc == 0) rc = build_pairs(&r, l, es, n, err);
    free(es);
    json_decref(r.peft);
    if (rc != 0) {
        fl_lora_free(l);
        return fl_fail_prefix(err, "%s", label);
    }
    *out = l;
    return 0;
}

static int load(const char *path, const char *const *paths, const fl_lora_dims *dims, size_t n_paths, fl_lora **out,
                fl_error *err) {
    *out = NULL;
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    int rc = load_open(st, path, paths, dims, n_paths, out, err);
    fl_safetensors_close(st);
    return rc;
}

int fl_lora_load_memory(const void *data, size_t size, const char *label, const char *const *module_paths,
                        const fl_lora_dims *dims, size_t n_paths, fl_lora **out, fl_error *err) {
    *out = NULL;
    if (!label) label = "adapter";
    fl_safetensors *st = NULL;
    if (fl_safetensors_open_memory(data, size, &st, err) != 0) return fl_fail_prefix(err, "%s", label);
    int rc = load_open(st, label, module_paths, dims, n_paths, out, err);
    fl_safetensors_close(st);
    return rc;
}

/* Appends ", item" (or "item" first) to a list message while it has room; counts every item. */
static void list_item(char *buf, size_t size, size_t *shown, size_t *count, const char *item) {
    (*count)++;
    if (*shown >= 5) return;
    size_t used = strlen(buf);
    int n = snprintf(buf + used, size - used, "%s%s", *shown ? ", " : "", item);
    if (n < 0 || (size_t)n >= size - used) {
        buf[used] = '\0';
        return;
    }
    for (char *c = buf + used; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?'; /* keys come from outside: keep one line */
    (*shown)++;
}

int fl_lora_check_dims(const fl_lora *l, const char *const *module_paths, const fl_lora_dims *dims, size_t n_paths,
                       fl_error *err) {
    char unknown[320] = "", shapes[320] = "", item[256];
    size_t n_unknown = 0, shown_unknown = 0, n_shapes = 0, shown_shapes = 0;
    for (size_t i = 0; i < l->n_unmatched; i++)
        list_item(unknown, sizeof unknown, &shown_unknown, &n_unknown, l->unmatched[i]);
    for (size_t i = 0; i < l->n_pairs; i++) {
        const char *module = l->pairs[i].module;
        size_t k = 0;
        while (k < n_paths && strcmp(module_paths[k], module)) k++;
        if (k == n_paths) {
            list_item(unknown, sizeof unknown, &shown_unknown, &n_unknown, module);
            continue;
        }
        if (l->dims[i].in != dims[k].in || l->dims[i].out != dims[k].out) {
            snprintf(item, sizeof item, "%s is [%lld, %lld], the model's [%lld, %lld]", module,
                     (long long)l->dims[i].out, (long long)l->dims[i].in, (long long)dims[k].out,
                     (long long)dims[k].in);
            list_item(shapes, sizeof shapes, &shown_shapes, &n_shapes, item);
        }
    }
    if (!n_unknown && !n_shapes) {
        if (l->n_pairs == 0) return fl_fail(err, FL_EINVAL, "the file holds no LoRA pairs");
        return 0;
    }
    char more_unknown[48] = "", more_shapes[48] = "";
    if (n_unknown > shown_unknown)
        snprintf(more_unknown, sizeof more_unknown, " and %zu more", n_unknown - shown_unknown);
    if (n_shapes > shown_shapes)
        snprintf(more_shapes, sizeof more_shapes, " and %zu more", n_shapes - shown_shapes);
    if (n_unknown && n_shapes)
        return fl_fail(err, FL_EINVAL, "%zu key(s) adapt no Linear of the model (%s%s); %zu pair(s) have the wrong "
                                       "shape (%s%s)",
                       n_unknown, unknown, more_unknown, n_shapes, shapes, more_shapes);
    if (n_unknown)
        return fl_fail(err, FL_EINVAL, "%zu key(s) adapt no Linear of the model: %s%s", n_unknown, unknown,
                       more_unknown);
    return fl_fail(err, FL_EINVAL, "%zu pair(s) have the wrong shape: %s%s", n_shapes, shapes, more_shapes);
}

int fl_lora_load(const char *path, const char *const *module_paths, size_t n_paths, fl_lora **out, fl_error *err) {
    return load(path, module_paths, NULL, n_paths, out, err);
}

int fl_lora_load_for_model(const char *path, fl_flux_model *m, fl_lora **out, fl_error *err) {
    size_t n = 0;
    const char **paths = fl_lora_model_paths(m, &n);
    fl_lora_dims *dims = fl_xmalloc((n ? n : 1) * sizeof *dims);
    for (size_t i = 0; i < n; i++) {
        const fl_flux_linear *lin = fl_flux_linear_at(m, i);
        dims[i] = (fl_lora_dims){lin->in, lin->out};
    }
    int rc = load(path, paths, dims, n, out, err);
    free(dims);
    free(paths);
    return rc;
}

const char **fl_lora_model_paths(fl_flux_model *m, size_t *n) {
    *n = fl_flux_linear_count(m);
    const char **paths = fl_xmalloc((*n ? *n : 1) * sizeof *paths);
    for (size_t i = 0; i < *n; i++) paths[i] = fl_flux_linear_at(m, i)->name;
    return paths;
}
