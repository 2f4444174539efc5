/*
 * weights.c — a model component's tensors from a file, an index of shards or a folder; dtype
 * conversion and fp8 dequantization to f32; prefix views; the diffusers transformer seen under
 * the original Flux names (see weights.h).
 */
#include "models/weights.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/fileio.h"
#include "core/sha256.h"
#include "models/flux_names.h"

#define INDEX_MAX_BYTES ((size_t)64 << 20)

struct fl_weights {
    char *path;
    fl_safetensors **files;
    char **file_names;
    size_t n_files;
    fl_weight *t;
    size_t n;
    char **owned; /* names made here (mapped names) */
    size_t n_owned;
};

/* ---- messages ----------------------------------------------------------------------------------- */

/* s (at most 160 bytes of it) for a one-line message: control bytes become '?', so a name or a
 * parser's excerpt of a file can never break the line. Each call uses its own buffer slot. */
static const char *shown(const char *s) {
    static _Thread_local char bufs[4][176];
    static _Thread_local int next;
    char *b = bufs[next];
    next = (next + 1) % 4;
    size_t n = 0;
    for (; s && *s && n < 160; s++) b[n++] = (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s;
    if (s && *s) b[n++] = '.', b[n++] = '.', b[n++] = '.';
    b[n] = '\0';
    return b;
}

/* ---- dtypes ------------------------------------------------------------------------------------ */

float fl_f8_e4m3_to_f32(uint8_t x) {
    int sign = x >> 7, exp = (x >> 3) & 0xf, man = x & 0x7;
    float v;
    if (exp == 0xf && man == 0x7) return NAN; /* the fn variant: no infinities, one NaN pattern */
    if (exp == 0) v = ldexpf((float)man, -9); /* subnormal: man / 8 * 2^-6 */
    else v = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return sign ? -v : v;
}

float fl_f8_e5m2_to_f32(uint8_t x) {
    return fl_f16_to_f32((uint16_t)((uint16_t)x << 8)); /* E5M2 is the top byte of an IEEE half */
}

static bool float_dtype(fl_st_dtype d) {
    return d == FL_ST_F32 || d == FL_ST_F16 || d == FL_ST_BF16 || d == FL_ST_F64 || d == FL_ST_F8_E4M3 ||
           d == FL_ST_F8_E5M2;
}

static float element(const uint8_t *p, fl_st_dtype d, int64_t i) {
    switch (d) {
    case FL_ST_F32: {
        float v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case FL_ST_F64: {
        double v;
        memcpy(&v, p + 8 * i, 8);
        return (float)v;
    }
    case FL_ST_F16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return fl_f16_to_f32(v);
    }
    case FL_ST_BF16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return fl_bf16_to_f32(v);
    }
    case FL_ST_F8_E4M3: return fl_f8_e4m3_to_f32(p[i]);
    case FL_ST_F8_E5M2: return fl_f8_e5m2_to_f32(p[i]);
    default: break;
    }
    FL_CHECKF(0, "dtype %s is not a float", fl_st_dtype_name(d));
}

/* ---- building ---------------------------------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static bool is_scale_tensor(const char *name) {
    return !strcmp(name, "scaled_fp8") || ends_with(name, ".scale_weight") || ends_with(name, ".weight_scale") ||
           ends_with(name, ".scale_input") || ends_with(name, ".input_scale");
}

static const fl_safetensors_info *find_in_files(const fl_weights *w, const char *name) {
    for (size_t f = 0; f < w->n_files; f++) {
        const fl_safetensors_info *info = fl_safetensors_find(w->files[f], name);
        if (info) return info;
    }
    return NULL;
}

static void add_plain(fl_weights *w, const fl_safetensors_info *info) {
    w->t = fl_xrealloc(w->t, (w->n + 1) * sizeof *w->t);
    fl_weight *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    t->name = info->name;
    t->ndim = info->ndim;
    memcpy(t->shape, info->shape, sizeof t->shape);
    t->dtype = info->dtype;
    t->n_parts = 1;
    t->parts[0] = info;
    t->scales[0] = 1.0f;
}

/* The per-tensor scale of an fp8 "<stem>.weight", if the files carry one. */
static int find_scale(const fl_weights *w, fl_weight *t, fl_error *err) {
    if (t->dtype != FL_ST_F8_E4M3 && t->dtype != FL_ST_F8_E5M2) return 0;
    if (!ends_with(t->name, ".weight")) return 0;
    size_t stem = strlen(t->name) - strlen(".weight");
    static const char *const suffixes[] = {".scale_weight", ".weight_scale"};
    for (int k = 0; k < 2; k++) {
        char name[FL_SAFETENSORS_MAX_NAME + 32];
        snprintf(name, sizeof name, "%.*s%s", (int)stem, t->name, suffixes[k]);
        const fl_safetensors_info *s = find_in_files(w, name);
        if (!s) continue;
        if (s->numel != 1 || !float_dtype(s->dtype))
            return fl_fail(err, FL_EUNSUPPORTED, "tensor '%s': scale '%s' is not one float (%lld elements of %s)",
                           shown(t->name), shown(name), (long long)s->numel, fl_st_dtype_name(s->dtype));
        float v = element(s->data, s->dtype, 0);
        if (!isfinite(v)) return fl_fail(err, FL_EINVAL, "tensor '%s': scale '%s' is not finite", shown(t->name), shown(name));
        t->scales[0] = v;
        return 0;
    }
    return 0;
}

static int add_file(fl_weights *w, const char *name, fl_safetensors *st) {
    w->files = fl_xrealloc(w->files, (w->n_files + 1) * sizeof *w->files);
    w->file_names = fl_xrealloc(w->file_names, (w->n_files + 1) * sizeof *w->file_names);
    w->files[w->n_files] = st;
    w->file_names[w->n_files] = fl_xstrdup(name);
    return (int)w->n_files++;
}

static int open_single(fl_weights *w, const char *path, fl_error *err) {
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    add_file(w, path, st);
    for (size_t i = 0; i < fl_safetensors_count(st); i++) {
        const fl_safetensors_info *info = fl_safetensors_at(st, i);
        if (!is_scale_tensor(info->name)) add_plain(w, info);
    }
    return 0;
}

static bool safe_shard_name(const char *s) {
    return *s && *s != '.' && !strchr(s, '/') && !strchr(s, '\\') && ends_with(s, ".safetensors");
}

int fl_weights_parse_index(const char *json, size_t len, const char *what, fl_weights_index *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return fl_fail(err, FL_EINVAL, "%s: not JSON (line %d: %s)", what, jerr.line, shown(jerr.text));
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        json_decref(root);
        return fl_fail(err, FL_EINVAL, "%s: no \"weight_map\" object listing tensors and their shards", what);
    }
    size_t n = json_object_size(map), i = 0;
    out->tensors = fl_xcalloc(n, sizeof *out->tensors);
    out->shards = fl_xcalloc(n, sizeof *out->shards);
    out->json = root;
    const char *key;
    json_t *value;
    json_object_foreach(map, key, value) {
        const char *shard = json_string_value(value);
        if (!shard || !safe_shard_name(shard) || !*key) {
            fl_fail(err, FL_EINVAL, "%s: the shard of tensor '%s' is not a .safetensors file name beside the index",
                    what, shown(key));
            fl_weights_index_free(out);
            return -1;
        }
        out->tensors[i] = key;
        out->shards[i] = shard;
        i++;
    }
    out->n = i;
    return 0;
}

void fl_weights_index_free(fl_weights_index *index) {
    free(index->tensors);
    free(index->shards);
    json_decref(index->json);
    memset(index, 0, sizeof *index);
}

static int open_index(fl_weights *w, const char *path, fl_error *err) {
    unsigned char *text = NULL;
    size_t size = 0;
    if (fl_read_file(path, INDEX_MAX_BYTES, &text, &size, err) != 0) return fl_fail_prefix(err, "%s", path);
    fl_weights_index index;
    int rc = fl_weights_parse_index((const char *)text, size, path, &index, err);
    free(text);
    if (rc != 0) return -1;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = '\0';
    else dir[0] = '\0';
    for (size_t i = 0; i < index.n && rc == 0; i++) {
        const char *key = index.tensors[i], *shard = index.shards[i];
        int f = -1;
        for (size_t k = 0; k < w->n_files; k++)
            if (!strcmp(w->file_names[k], shard)) f = (int)k;
        if (f < 0) {
            if (w->n_files >= FL_WEIGHTS_MAX_SHARDS) {
                rc = fl_fail(err, FL_ELIMIT, "%s: more than %d shards", path, FL_WEIGHTS_MAX_SHARDS);
                break;
            }
            char shard_path[8192];
            snprintf(shard_path, sizeof shard_path, "%s%s", dir, shard);
            fl_safetensors *st = NULL;
            if (fl_safetensors_open(shard_path, &st, err) != 0) {
                rc = fl_fail_prefix(err, "%s: shard '%s' (listed for '%s')", path, shown(shard), shown(key));
                break;
            }
            f = add_file(w, shard, st);
        }
        const fl_safetensors_info *info = fl_safetensors_find(w->files[f], key);
        if (!info) {
            rc = fl_fail(err, FL_EINVAL, "%s: tensor '%s' is listed in shard '%s' but not there", path, shown(key),
                         shown(shard));
            break;
        }
        if (!is_scale_tensor(info->name)) add_plain(w, info);
    }
    fl_weights_index_free(&index);
    return rc;
}

static bool is_file(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

static bool is_dir(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISDIR(s.st_mode);
}

int fl_weights_open(const char *path, fl_weights **out, fl_error *err) {
    *out = NULL;
    if (!path || !*path) return fl_fail(err, FL_EINVAL, "no weights path given");
    if (strlen(path) > 4000) return fl_fail(err, FL_EINVAL, "weights path too long");
    fl_weights *w = fl_xcalloc(1, sizeof *w);
    w->path = fl_xstrdup(path);
    int rc;
    if (is_dir(path)) {
        static const char *const names[] = {"diffusion_pytorch_model.safetensors", "model.safetensors",
                                            "diffusion_pytorch_model.safetensors.index.json",
                                            "model.safetensors.index.json"};
        rc = fl_fail(err, FL_ENOTFOUND, "%s: no model.safetensors, diffusion_pytorch_model.safetensors or their "
                                        ".index.json", path);
        for (int k = 0; k < 4; k++) {
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", path, names[k]);
            if (!is_file(p)) continue;
            rc = k < 2 ? open_single(w, p, err) : open_index(w, p, err);
            break;
        }
    } else if (!is_file(path)) {
        rc = fl_fail(err, FL_ENOTFOUND, "%s: not found", path);
    } else if (ends_with(path, ".json")) {
        rc = open_index(w, path, err);
    } else {
        rc = open_single(w, path, err);
    }
    for (size_t i = 0; rc == 0 && i < w->n; i++) rc = find_scale(w, &w->t[i], err);
    if (rc == 0 && w->n == 0) rc = fl_fail(err, FL_EINVAL, "%s: no tensors", path);
    if (rc != 0) {
        fl_weights_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

void fl_weights_close(fl_weights *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_files; i++) {
        fl_safetensors_close(w->files[i]);
        free(w->file_names[i]);
    }
    for (size_t i = 0; i < w->n_owned; i++) free(w->owned[i]);
    free(w->owned);
    free(w->files);
    free(w->file_names);
    free(w->t);
    free(w->path);
    free(w);
}

const char *fl_weights_path(const fl_weights *w) {
    return w->path;
}

size_t fl_weights_file_count(const fl_weights *w) {
    return w->n_files;
}

const fl_safetensors *fl_weights_file_at(const fl_weights *w, size_t i) {
    FL_CHECK(i < w->n_files);
    return w->files[i];
}

size_t fl_weights_count(const fl_weights *w) {
    return w->n;
}

const fl_weight *fl_weights_at(const fl_weights *w, size_t i) {
    FL_CHECK(i < w->n);
    return &w->t[i];
}

const fl_weight *fl_weights_find(const fl_weights *w, const char *name) {
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) return &w->t[i];
    return NULL;
}

const char *fl_weights_metadata_get(const fl_weights *w, const char *key) {
    return w->n_files ? fl_safetensors_metadata_get(w->files[0], key) : NULL;
}

static int64_t numel_of(const fl_weight *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

uint64_t fl_weights_f32_bytes(const fl_weights *w) {
    uint64_t total = 0;
    for (size_t i = 0; i < w->n; i++) total += (uint64_t)numel_of(&w->t[i]) * 4;
    return total;
}

bool fl_weights_has_prefix(const fl_weights *w, const char *prefix) {
    size_t n = strlen(prefix);
    for (size_t i = 0; i < w->n; i++)
        if (!strncmp(w->t[i].name, prefix, n) && w->t[i].name[n]) return true;
    return false;
}

int fl_weights_strip_prefix(fl_weights *w, const char *prefix, fl_error *err) {
    size_t plen = strlen(prefix), kept = 0;
    if (!fl_weights_has_prefix(w, prefix))
        return fl_fail(err, FL_EINVAL, "%s: no tensor is under '%s'", w->path, shown(prefix));
    for (size_t i = 0; i < w->n; i++) {
        if (strncmp(w->t[i].name, prefix, plen) || !w->t[i].name[plen]) continue;
        w->t[kept] = w->t[i];
        w->t[kept].name += plen;
        kept++;
    }
    w->n = kept;
    return 0;
}

fl_tensor_header *fl_weights_headers(const fl_weights *w, size_t *n) {
    fl_tensor_header *h = fl_xcalloc(w->n ? w->n : 1, sizeof *h);
    for (size_t i = 0; i < w->n; i++) {
        h[i].name = w->t[i].name;
        h[i].ndim = w->t[i].ndim;
        memcpy(h[i].shape, w->t[i].shape, sizeof h[i].shape);
    }
    *n = w->n;
    return h;
}

int fl_weights_read_f32(const fl_weights *w, const fl_weight *t, float *dst, fl_error *err) {
    (void)w;
    int64_t off = 0;
    for (int p = 0; p < t->n_parts; p++) {
        const fl_safetensors_info *s = t->parts[p];
        if (!float_dtype(s->dtype))
            return fl_fail(err, FL_EUNSUPPORTED, "tensor '%s' is %s, not a float dtype", shown(t->name),
                           fl_st_dtype_name(s->dtype));
        const uint8_t *src = s->data;
        float scale = t->scales[p];
        if (s->dtype == FL_ST_F32 && scale == 1.0f) {
            memcpy(dst + off, src, (size_t)s->numel * sizeof(float));
        } else {
            for (int64_t i = 0; i < s->numel; i++) dst[off + i] = element(src, s->dtype, i) * scale;
        }
        off += s->numel;
    }
    FL_CHECK(off == numel_of(t));
    if (t->swap_halves && t->ndim >= 1 && t->shape[0] % 2 == 0) {
        size_t half = (size_t)(off / 2);
        float *tmp = fl_xmalloc((half ? half : 1) * sizeof(float));
        memcpy(tmp, dst, half * sizeof(float));
        memmove(dst, dst + half, half * sizeof(float));
        memcpy(dst + half, tmp, half * sizeof(float));
        free(tmp);
    }
    return 0;
}

void fl_weights_fingerprint(const fl_weights *w, char hex[65]) {
    fl_sha256 h;
    fl_sha256_init(&h);
    for (size_t f = 0; f < w->n_files; f++) {
        const fl_safetensors *st = w->files[f];
        uint64_t sizes[2] = {fl_safetensors_header_size(st), fl_safetensors_data_size(st)};
        fl_sha256_update(&h, sizes, sizeof sizes);
        const uint8_t *data = NULL;
        for (size_t i = 0; i < fl_safetensors_count(st); i++) {
            const fl_safetensors_info *in = fl_safetensors_at(st, i);
            fl_sha256_update(&h, in->name, strlen(in->name) + 1);
            int64_t desc[3 + FL_SAFETENSORS_MAX_DIMS] = {in->dtype, in->ndim, (int64_t)in->begin};
            memcpy(desc + 3, in->shape, sizeof in->shape);
            fl_sha256_update(&h, desc, sizeof desc);
            if (!data && in->nbytes) data = (const uint8_t *)in->data - in->begin;
        }
        uint64_t n = sizes[1], chunk = (uint64_t)1 << 20;
        if (data && n) {
            fl_sha256_update(&h, data, (size_t)(n < chunk ? n : chunk));
            if (n > chunk) fl_sha256_update(&h, data + (n - (n < 2 * chunk ? n - chunk : chunk)),
                                            (size_t)(n < 2 * chunk ? n - chunk : chunk));
        }
    }
    uint8_t digest[32];
    fl_sha256_final(&h, digest);
    fl_sha256_digest_hex(digest, hex);
}

/* ---- the diffusers transformer ------------------------------------------------------------------- */

static const fl_tensor_header *hfind(const fl_tensor_header *e, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(e[i].name, name)) return &e[i];
    return NULL;
}

bool fl_flux_is_diffusers(const fl_tensor_header *entries, size_t n) {
    for (int k = 0; k < 2; k++) {
        const char *prefix = k ? "transformer." : "";
        char a[64], b[96], c[96];
        snprintf(a, sizeof a, "%sx_embedder.weight", prefix);
        snprintf(b, sizeof b, "%stransformer_blocks.0.attn.to_q.weight", prefix);
        snprintf(c, sizeof c, "%ssingle_transformer_blocks.0.attn.to_q.weight", prefix);
        if (hfind(entries, n, a) && (hfind(entries, n, b) || hfind(entries, n, c))) return true;
    }
    return false;
}

/* The per-head q/k norm scales, which are no Linear: diffusers suffix -> original suffix. */
static const struct {
    const char *block, *diff, *orig;
} norm_rules[] = {
    {"transformer_blocks", "attn.norm_q.weight", "img_attn.norm.query_norm.scale"},
    {"transformer_blocks", "attn.norm_k.weight", "img_attn.norm.key_norm.scale"},
    {"transformer_blocks", "attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"},
    {"transformer_blocks", "attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"},
    {"single_transformer_blocks", "attn.norm_q.weight", "norm.query_norm.scale"},
    {"single_transformer_blocks", "attn.norm_k.weight", "norm.key_norm.scale"},
};

/* The original name of a diffusers tensor and its part index; false when it is none. */
static bool original_of(const char *name, char *orig, size_t size, int *part, int *n_parts, bool *swap) {
    *swap = false;
    for (size_t r = 0; r < sizeof norm_rules / sizeof norm_rules[0]; r++) {
        size_t bl = strlen(norm_rules[r].block);
        if (strncmp(name, norm_rules[r].block, bl) || name[bl] != '.') continue;
        const char *d = name + bl + 1;
        size_t digits = strspn(d, "0123456789");
        if (!digits || digits > 6 || (digits > 1 && d[0] == '0') || d[digits] != '.') continue;
        if (strcmp(d + digits + 1, norm_rules[r].diff)) continue;
        long idx = strtol(d, NULL, 10);
        snprintf(orig, size, "%s.%ld.%s", r < 4 ? "double_blocks" : "single_blocks", idx, norm_rules[r].orig);
        *part = 0;
        *n_parts = 1;
        return true;
    }
    const char *dot = strrchr(name, '.');
    if (!dot || (strcmp(dot, ".weight") && strcmp(dot, ".bias"))) return false;
    char module[FL_FLUX_NAME_MAX];
    if ((size_t)(dot - name) >= sizeof module) return false;
    memcpy(module, name, (size_t)(dot - name));
    module[dot - name] = '\0';
    fl_flux_diffusers_map map;
    if (!fl_flux_diffusers_source(module, &map, part)) return false;
    snprintf(orig, size, "%s%s", map.module, dot);
    *n_parts = map.n_parts;
    *swap = map.split == FL_FLUX_SPLIT_SWAP_HALVES;
    return true;
}

int fl_flux_map_diffusers(const fl_tensor_header *entries, size_t n, fl_flux_mapped **out, size_t *n_out,
                          fl_error *err) {
    *out = NULL;
    *n_out = 0;
    fl_flux_mapped *m = fl_xcalloc(n ? n : 1, sizeof *m);
    size_t count = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char orig[FL_FLUX_NAME_MAX + 16];
        int part = 0, n_parts = 0;
        bool swap = false;
        if (!original_of(entries[i].name, orig, sizeof orig, &part, &n_parts, &swap)) {
            rc = fl_fail(err, FL_EINVAL, "diffusers transformer: tensor '%s' has no counterpart in the Flux "
                                         "checkpoint layout", shown(entries[i].name));
            break;
        }
        if (entries[i].ndim < 1 || entries[i].ndim > 2) {
            rc = fl_fail(err, FL_EINVAL, "diffusers transformer: tensor '%s' has %d dimensions", shown(entries[i].name),
                         entries[i].ndim);
            break;
        }
        size_t k = 0;
        while (k < count && strcmp(m[k].name, orig)) k++;
        if (k == count) {
            count++;
            snprintf(m[k].name, sizeof m[k].name, "%s", orig);
            m[k].n_parts = n_parts;
            m[k].swap_halves = swap;
            m[k].ndim = entries[i].ndim;
            for (int j = 0; j < FL_WEIGHTS_MAX_PARTS; j++) m[k].parts[j] = (size_t)-1;
        }
        if (m[k].parts[part] != (size_t)-1) {
            rc = fl_fail(err, FL_EINVAL, "diffusers transformer: tensor '%s' appears twice", shown(entries[i].name));
            break;
        }
        m[k].parts[part] = i;
    }
    for (size_t k = 0; k < count && rc == 0; k++) {
        int64_t rows = 0, cols = -1;
        for (int j = 0; j < m[k].n_parts && rc == 0; j++) {
            if (m[k].parts[j] == (size_t)-1) {
                fl_flux_diffusers_map map;
                char module[FL_FLUX_NAME_MAX];
                const char *leaf = strrchr(m[k].name, '.'); /* ".weight" or ".bias": fused tensors are Linears' */
                if (!leaf) leaf = m[k].name + strlen(m[k].name);
                snprintf(module, sizeof module, "%.*s", (int)(leaf - m[k].name), m[k].name);
                if (fl_flux_diffusers_lookup(module, '.', &map))
                    rc = fl_fail(err, FL_EINVAL, "diffusers transformer: tensor '%s%s' is missing (a part of '%s')",
                                 map.parts[j], leaf, m[k].name);
                else rc = fl_fail(err, FL_EINVAL, "diffusers transformer: a part of '%s' is missing", m[k].name);
                break;
            }
            const fl_tensor_header *e = &entries[m[k].parts[j]];
            bool negative = false;
            for (int d = 0; d < e->ndim; d++) negative |= e->shape[d] < 0;
            if (negative) {
                rc = fl_fail(err, FL_EINVAL, "diffusers transformer: tensor '%s' has a negative dimension",
                             shown(e->name));
                break;
            }
            if (e->ndim != m[k].ndim || (e->ndim == 2 && cols >= 0 && e->shape[1] != cols)) {
                rc = fl_fail(err, FL_EINVAL, "diffusers transformer: tensor '%s' does not stack with the other "
                                             "parts of '%s'", shown(e->name), m[k].name);
                break;
            }
            if (e->ndim == 2) cols = e->shape[1];
            if (e->shape[0] > INT64_MAX - rows) {
                rc = fl_fail(err, FL_EINVAL, "diffusers transformer: the parts of '%s' have more rows than fit in "
                                             "64 bits", m[k].name);
                break;
            }
            rows += e->shape[0];
        }
        m[k].shape[0] = rows;
        m[k].shape[1] = cols;
    }
    if (rc != 0) {
        free(m);
        return -1;
    }
    *out = m;
    *n_out = count;
    return 0;
}

int fl_weights_map_flux_diffusers(fl_weights *w, fl_error *err) {
    if (fl_weights_has_prefix(w, "transformer.") && fl_weights_strip_prefix(w, "transformer.", err) != 0) return -1;
    size_t n = 0, n_out = 0;
    fl_tensor_header *h = fl_weights_headers(w, &n);
    fl_flux_mapped *m = NULL;
    int rc = fl_flux_map_diffusers(h, n, &m, &n_out, err);
    free(h);
    if (rc != 0) return fl_fail_prefix(err, "%s", w->path);
    fl_weight *t = fl_xcalloc(n_out ? n_out : 1, sizeof *t);
    w->owned = fl_xrealloc(w->owned, (w->n_owned + n_out) * sizeof *w->owned);
    for (size_t k = 0; k < n_out; k++) {
        char *name = fl_xstrdup(m[k].name);
        w->owned[w->n_owned++] = name;
        t[k].name = name;
        t[k].ndim = m[k].ndim;
        t[k].shape[0] = m[k].shape[0];
        t[k].shape[1] = m[k].ndim == 2 ? m[k].shape[1] : 0;
        t[k].n_parts = m[k].n_parts;
        t[k].swap_halves = m[k].swap_halves;
        for (int j = 0; j < m[k].n_parts; j++) {
            const fl_weight *src = &w->t[m[k].parts[j]];
            FL_CHECK(src->n_parts == 1);
            t[k].parts[j] = src->parts[0];
            t[k].scales[j] = src->scales[0];
        }
        t[k].dtype = t[k].parts[0]->dtype;
    }
    free(m);
    free(w->t);
    w->t = t;
    w->n = n_out;
    return 0;
}
