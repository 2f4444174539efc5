/*
 * lora.c — LoRA file reading (canonical and kohya layouts) into host f32 pairs.
 */
#include "adapters/lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "kernels/ops.h"

#define KOHYA_PREFIX "lora_unet_"

/* Host f32 copy of a float tensor of any computable dtype. */
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
    }
    return out;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Module path for a kohya stem ("lora_unet_double_blocks_0_img_attn_qkv"), or NULL. */
static const char *resolve_kohya(const char *stem, const char *const *paths, size_t n_paths) {
    if (strncmp(stem, KOHYA_PREFIX, strlen(KOHYA_PREFIX))) return NULL;
    const char *rest = stem + strlen(KOHYA_PREFIX);
    for (size_t i = 0; i < n_paths; i++) {
        const char *p = paths[i];
        size_t j = 0;
        for (; p[j] && rest[j]; j++)
            if (rest[j] != (p[j] == '.' ? '_' : p[j])) break;
        if (!p[j] && !rest[j]) return p;
    }
    return NULL;
}

static void add_unmatched(fl_lora *l, const char *key) {
    l->unmatched = realloc(l->unmatched, (l->n_unmatched + 1) * sizeof *l->unmatched);
    l->unmatched[l->n_unmatched++] = strdup(key);
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
    free(l);
}

int fl_lora_load(const char *path, const char *const *module_paths, size_t n_paths, fl_lora **out, fl_error *err) {
    *out = NULL;
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    fl_lora *l = calloc(1, sizeof *l);
    size_t n = fl_safetensors_count(st);
    bool kohya = false;
    for (size_t i = 0; i < n; i++)
        if (!strncmp(fl_safetensors_at(st, i)->name, KOHYA_PREFIX, strlen(KOHYA_PREFIX))) kohya = true;
    l->format = kohya ? "kohya" : "canonical";
    const char *a_suffix = kohya ? ".lora_down.weight" : ".lora_A.weight";
    const char *b_suffix = kohya ? ".lora_up.weight" : ".lora_B.weight";

    float file_alpha = 0.0f;
    const char *alpha_meta = fl_safetensors_metadata_get(st, "alpha");
    if (alpha_meta && !kohya) {
        char *end = NULL;
        file_alpha = strtof(alpha_meta, &end);
        if (end == alpha_meta || *end || !(file_alpha > 0.0f)) {
            fl_fail(err, FL_EINVAL, "metadata alpha '%s' is not a positive number", alpha_meta);
            goto fail;
        }
    }
    l->pairs = calloc(n ? n : 1, sizeof *l->pairs);
    char key[FL_SAFETENSORS_MAX_NAME + 32];
    for (size_t i = 0; i < n; i++) {
        const fl_safetensors_info *ia = fl_safetensors_at(st, i);
        if (ends_with(ia->name, b_suffix) || (kohya && ends_with(ia->name, ".alpha"))) continue; /* seen with A */
        if (!ends_with(ia->name, a_suffix)) {
            add_unmatched(l, ia->name);
            continue;
        }
        size_t stem_len = strlen(ia->name) - strlen(a_suffix);
        char stem[FL_SAFETENSORS_MAX_NAME + 1];
        memcpy(stem, ia->name, stem_len);
        stem[stem_len] = '\0';
        const char *module = stem;
        if (kohya) {
            module = resolve_kohya(stem, module_paths, n_paths);
            if (!module) {
                add_unmatched(l, ia->name);
                continue;
            }
        } else if (module_paths) {
            bool known = false;
            for (size_t j = 0; j < n_paths && !known; j++) known = !strcmp(module_paths[j], stem);
            if (!known) {
                add_unmatched(l, ia->name);
                continue;
            }
        }
        snprintf(key, sizeof key, "%s%s", stem, b_suffix);
        const fl_safetensors_info *ib = fl_safetensors_find(st, key);
        if (!ib) {
            fl_fail(err, FL_EINVAL, "'%s' has no matching '%s'", ia->name, key);
            goto fail;
        }
        if (ia->ndim != 2 || ib->ndim != 2 || ia->shape[0] != ib->shape[1] || ia->shape[0] < 1) {
            fl_fail(err, FL_EINVAL, "'%s' and '%s' are not [r, in] and [out, r] with one rank r", ia->name, key);
            goto fail;
        }
        fl_flux_lora_pair *pr = &l->pairs[l->n_pairs];
        pr->rank = ia->shape[0];
        pr->alpha = file_alpha > 0.0f ? file_alpha : (float)pr->rank;
        if (kohya) {
            snprintf(key, sizeof key, "%s.alpha", stem);
            const fl_safetensors_info *ial = fl_safetensors_find(st, key);
            if (ial) {
                if (ial->numel != 1) {
                    fl_fail(err, FL_EINVAL, "'%s' must hold one value", key);
                    goto fail;
                }
                float *v = to_f32(st, ial, err);
                if (!v) goto fail;
                pr->alpha = v[0];
                free(v);
                if (!(pr->alpha > 0.0f) || pr->alpha > 1e6f) {
                    fl_fail(err, FL_EINVAL, "'%s' is not a positive alpha", key);
                    goto fail;
                }
            }
        }
        pr->a = to_f32(st, ia, err);
        pr->b = pr->a ? to_f32(st, ib, err) : NULL;
        pr->module = strdup(module);
        l->n_pairs++;
        if (!pr->a || !pr->b) goto fail;
    }
    fl_safetensors_close(st);
    *out = l;
    return 0;
fail:
    fl_safetensors_close(st);
    fl_lora_free(l);
    return fl_fail_prefix(err, "%s", path);
}

const char **fl_lora_model_paths(fl_flux_model *m, size_t *n) {
    *n = fl_flux_linear_count(m);
    const char **paths = malloc((*n ? *n : 1) * sizeof *paths);
    for (size_t i = 0; i < *n; i++) paths[i] = fl_flux_linear_at(m, i)->name;
    return paths;
}
