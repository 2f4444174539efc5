/*
 * ae_names.c — where an autoencoder sits in a checkpoint and what its tensors are called: the
 * diffusers AutoencoderKL -> BFL name map (and its inverse, for messages), detection of the
 * prefix, layout and parameters from names and shapes alone, and the binding check. All of it is
 * pure functions over (name, shape) lists, so a manifest without data can be checked, and every
 * shape read from a file is range-checked before it becomes a parameter.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/ae.h"

static const char *const prefixes[] = {"", "first_stage_model.", "vae.", "ae."};

/* ---- diffusers <-> BFL names ---------------------------------------------------------------------- */

/* Parses a decimal index (no sign, no leading zeros but "0") followed by '.'; advances *s past
 * the dot. -1 when absent or > max. */
static int take_index(const char **s, int max) {
    const char *p = *s;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.')) return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        if (v > max) return -1;
        p++;
    }
    if (*p != '.') return -1;
    *s = p + 1;
    return (int)v;
}

static bool take(const char **s, const char *word) {
    size_t n = strlen(word);
    if (strncmp(*s, word, n)) return false;
    *s += n;
    return true;
}

static bool is_leaf(const char *s) {
    return !strcmp(s, "weight") || !strcmp(s, "bias");
}

/* A resnet's "<module>.<weight|bias>": module one of norm1, norm2, conv1, conv2 and the shortcut
 * (from_name in the source layout, to_name in the target). */
static int map_resnet_leaf(const char *s, const char *from_shortcut, const char *to_shortcut, char *out,
                           size_t size) {
    static const char *const plain[] = {"norm1.", "norm2.", "conv1.", "conv2."};
    for (size_t i = 0; i < 4; i++)
        if (!strncmp(s, plain[i], strlen(plain[i])) && is_leaf(s + strlen(plain[i])))
            return snprintf(out, size, "%s", s) < (int)size ? 0 : -1;
    size_t n = strlen(from_shortcut);
    if (!strncmp(s, from_shortcut, n) && s[n] == '.' && is_leaf(s + n + 1))
        return snprintf(out, size, "%s.%s", to_shortcut, s + n + 1) < (int)size ? 0 : -1;
    return -1;
}

int fl_ae_diffusers_to_bfl(const char *name, int n_levels, char *out, size_t size, bool *linear_to_conv) {
    *linear_to_conv = false;
    const char *s = name;
    const char *half = take(&s, "encoder.") ? "encoder" : take(&s, "decoder.") ? "decoder" : NULL;
    if (!half || n_levels < 1 || n_levels > FL_AE_MAX_LEVELS) return -1;
    const bool enc = half[0] == 'e';
    char leaf[FL_AE_NAME_MAX], buf[FL_AE_NAME_MAX];
    int len = -1;
    if (take(&s, "conv_in.") || take(&s, "conv_out.")) {
        if (!is_leaf(s)) return -1;
        len = snprintf(buf, sizeof buf, "%s", name); /* the same name in both layouts */
    } else if (take(&s, "conv_norm_out.")) {
        if (!is_leaf(s)) return -1;
        len = snprintf(buf, sizeof buf, "%s.norm_out.%s", half, s);
    } else if (take(&s, enc ? "down_blocks." : "up_blocks.")) {
        int i = take_index(&s, n_levels - 1);
        if (i < 0) return -1;
        int level = enc ? i : n_levels - 1 - i;
        if (take(&s, "resnets.")) {
            int j = take_index(&s, 63);
            if (j < 0 || map_resnet_leaf(s, "conv_shortcut", "nin_shortcut", leaf, sizeof leaf) != 0) return -1;
            len = snprintf(buf, sizeof buf, "%s.%s.%d.block.%d.%s", half, enc ? "down" : "up", level, j, leaf);
        } else if (take(&s, enc ? "downsamplers.0.conv." : "upsamplers.0.conv.")) {
            if (!is_leaf(s)) return -1;
            len = snprintf(buf, sizeof buf, "%s.%s.%d.%s.conv.%s", half, enc ? "down" : "up", level,
                           enc ? "downsample" : "upsample", s);
        } else {
            return -1;
        }
    } else if (take(&s, "mid_block.resnets.")) {
        int k = take_index(&s, 1);
        if (k < 0 || map_resnet_leaf(s, "conv_shortcut", "nin_shortcut", leaf, sizeof leaf) != 0) return -1;
        len = snprintf(buf, sizeof buf, "%s.mid.block_%d.%s", half, k + 1, leaf);
    } else if (take(&s, "mid_block.attentions.0.")) {
        static const char *const from[] = {"group_norm.", "to_q.", "to_k.", "to_v.", "to_out.0.",
                                           "query.",      "key.",  "value.", "proj_attn."};
        static const char *const to[] = {"norm", "q", "k", "v", "proj_out", "q", "k", "v", "proj_out"};
        size_t m = 0;
        while (m < sizeof from / sizeof *from && !take(&s, from[m])) m++;
        if (m == sizeof from / sizeof *from || !is_leaf(s)) return -1;
        *linear_to_conv = m != 0 && !strcmp(s, "weight");
        len = snprintf(buf, sizeof buf, "%s.mid.attn_1.%s.%s", half, to[m], s);
    } else {
        return -1;
    }
    if (len < 0 || (size_t)len >= sizeof buf || (size_t)len >= size) {
        *linear_to_conv = false;
        return -1;
    }
    memcpy(out, buf, (size_t)len + 1);
    return 0;
}

/* A message-only name: truncation is harmless. */
static void put(char *out, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void put(char *out, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, size, fmt, ap);
    va_end(ap);
}

/* The inverse, for naming a missing tensor in the file's own layout (names come from
 * fl_ae_param_decls, so they are well formed). */
static void bfl_to_diffusers(const char *name, int n_levels, char *out, size_t size) {
    const char *s = name;
    const char *half = take(&s, "encoder.") ? "encoder" : take(&s, "decoder.") ? "decoder" : "";
    char leaf[FL_AE_NAME_MAX / 2];
    int i, j;
    if (take(&s, "norm_out.")) {
        put(out, size, "%s.conv_norm_out.%s", half, s);
    } else if (take(&s, "down.") || take(&s, "up.")) {
        bool enc = half[0] == 'e';
        i = take_index(&s, FL_AE_MAX_LEVELS - 1);
        int idx = enc ? i : n_levels - 1 - i;
        if (take(&s, "block.") && (j = take_index(&s, 63)) >= 0 &&
            map_resnet_leaf(s, "nin_shortcut", "conv_shortcut", leaf, sizeof leaf) == 0)
            put(out, size, "%s.%s_blocks.%d.resnets.%d.%s", half, enc ? "down" : "up", idx, j, leaf);
        else if (take(&s, enc ? "downsample.conv." : "upsample.conv."))
            put(out, size, "%s.%s_blocks.%d.%ssamplers.0.conv.%s", half, enc ? "down" : "up", idx,
                     enc ? "down" : "up", s);
        else
            put(out, size, "%s", name);
    } else if (take(&s, "mid.block_")) {
        int k = *s == '1' ? 0 : 1;
        s += *s ? 1 : 0;
        if (take(&s, ".") && map_resnet_leaf(s, "nin_shortcut", "conv_shortcut", leaf, sizeof leaf) == 0)
            put(out, size, "%s.mid_block.resnets.%d.%s", half, k, leaf);
        else
            put(out, size, "%s", name);
    } else if (take(&s, "mid.attn_1.")) {
        static const char *const from[] = {"norm.", "q.", "k.", "v.", "proj_out."};
        static const char *const to[] = {"group_norm", "to_q", "to_k", "to_v", "to_out.0"};
        size_t m = 0;
        while (m < 5 && !take(&s, from[m])) m++;
        if (m < 5) put(out, size, "%s.mid_block.attentions.0.%s.%s", half, to[m], s);
        else put(out, size, "%s", name);
    } else {
        put(out, size, "%s", name); /* conv_in, conv_out */
    }
}

/* ---- detection ------------------------------------------------------------------------------------ */

static const fl_tensor_header *find(const fl_tensor_header *e, size_t n, const char *prefix, const char *name) {
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(e[i].name, prefix, plen) && !strcmp(e[i].name + plen, name)) return &e[i];
    return NULL;
}

static bool has_head(const fl_tensor_header *e, size_t n, const char *prefix, const char *head) {
    size_t plen = strlen(prefix), hlen = strlen(head);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(e[i].name, prefix, plen) && !strncmp(e[i].name + plen, head, hlen)) return true;
    return false;
}

/* Largest i + 1 with "<prefix><head><i>." starting some name (0 when none). */
static int count_index(const fl_tensor_header *e, size_t n, const char *prefix, const char *head) {
    size_t plen = strlen(prefix), hlen = strlen(head);
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(e[i].name, prefix, plen) || strncmp(e[i].name + plen, head, hlen)) continue;
        const char *s = e[i].name + plen + hlen;
        int idx = take_index(&s, 4095);
        if (idx >= 0 && idx + 1 > count) count = idx + 1;
    }
    return count;
}

/* Extent `dim` of a tensor that must be 4-d (or 1-d for dim 0 of a bias), positive and small
 * enough to become a parameter. -1 with err naming the tensor otherwise. */
static int64_t extent(const fl_tensor_header *e, size_t n, const char *prefix, const char *name, int dim,
                      fl_error *err) {
    const fl_tensor_header *t = find(e, n, prefix, name);
    if (!t) return fl_fail(err, FL_EINVAL, "autoencoder: missing tensor '%s%s'", prefix, name);
    if (t->ndim != 4 || t->shape[dim] < 1 || t->shape[dim] > (1 << 16))
        return fl_fail(err, FL_EINVAL, "autoencoder: tensor '%s%s' is not a convolution weight of a usable size",
                       prefix, name);
    return t->shape[dim];
}

int fl_ae_detect(const fl_tensor_header *entries, size_t n, fl_ae_source *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    const char *prefix = NULL;
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes && !prefix; i++)
        if (find(entries, n, prefixes[i], "encoder.conv_in.weight") ||
            find(entries, n, prefixes[i], "decoder.conv_in.weight"))
            prefix = prefixes[i];
    if (!prefix)
        return fl_fail(err, FL_EUNSUPPORTED, "no autoencoder: neither encoder.conv_in.weight nor "
                                             "decoder.conv_in.weight (with or without a first_stage_model., vae. "
                                             "or ae. prefix)");
    snprintf(out->prefix, sizeof out->prefix, "%s", prefix);
    bool enc = find(entries, n, prefix, "encoder.conv_in.weight") != NULL;
    bool dec = find(entries, n, prefix, "decoder.conv_in.weight") != NULL;
    out->parts = (enc ? FL_AE_ENCODER : 0u) | (dec ? FL_AE_DECODER : 0u);
    bool diffusers = has_head(entries, n, prefix, "encoder.down_blocks.") ||
                     has_head(entries, n, prefix, "decoder.up_blocks.") ||
                     has_head(entries, n, prefix, "encoder.mid_block.") || has_head(entries, n, prefix, "decoder.mid_block.");
    bool bfl = has_head(entries, n, prefix, "encoder.down.") || has_head(entries, n, prefix, "decoder.up.") ||
               has_head(entries, n, prefix, "encoder.mid.") || has_head(entries, n, prefix, "decoder.mid.");
    if (diffusers && bfl)
        return fl_fail(err, FL_EINVAL, "autoencoder: the file mixes BFL (down/up/mid) and diffusers "
                                       "(down_blocks/up_blocks/mid_block) names");
    if (!diffusers && !bfl) return fl_fail(err, FL_EINVAL, "autoencoder: the file has no down, up or mid blocks");
    out->layout = diffusers ? FL_AE_LAYOUT_DIFFUSERS : FL_AE_LAYOUT_BFL;

    const char *down = diffusers ? "encoder.down_blocks." : "encoder.down.";
    const char *up = diffusers ? "decoder.up_blocks." : "decoder.up.";
    int levels_enc = enc ? count_index(entries, n, prefix, down) : 0;
    int levels_dec = dec ? count_index(entries, n, prefix, up) : 0;
    int levels = enc ? levels_enc : levels_dec;
    if (levels < 1 || levels > FL_AE_MAX_LEVELS || (enc && dec && levels_enc != levels_dec))
        return fl_fail(err, FL_EINVAL, "autoencoder: %d encoder and %d decoder levels (expected equal counts in "
                                       "[1, %d])", levels_enc, levels_dec, FL_AE_MAX_LEVELS);
    fl_ae_params *p = &out->params;
    fl_ae_params_flux1(p);
    p->n_levels = levels;
    char head[FL_AE_NAME_MAX], name[FL_AE_NAME_MAX];
    snprintf(head, sizeof head, diffusers ? "%s0.resnets." : "%s0.block.", enc ? down : up);
    int blocks = count_index(entries, n, prefix, head) - (enc ? 0 : 1);
    if (blocks < 1 || blocks > 16)
        return fl_fail(err, FL_EINVAL, "autoencoder: %d resnet blocks per level out of range [1, 16]", blocks);
    p->num_res_blocks = blocks;
    int64_t widths[FL_AE_MAX_LEVELS];
    for (int i = 0; i < levels; i++) {
        int idx = enc || !diffusers ? i : levels - 1 - i;
        snprintf(name, sizeof name, diffusers ? "%s%d.resnets.0.conv1.weight" : "%s%d.block.0.conv1.weight",
                 enc ? down : up, idx);
        if ((widths[i] = extent(entries, n, prefix, name, 0, err)) < 0) return -1;
    }
    int64_t ch = enc ? extent(entries, n, prefix, "encoder.conv_in.weight", 0, err) : widths[0];
    if (ch < 0) return -1;
    p->ch = (int)ch;
    for (int i = 0; i < levels; i++) {
        if (widths[i] % ch)
            return fl_fail(err, FL_EINVAL, "autoencoder: level %d is %lld channels wide, not a multiple of ch = %lld",
                           i, (long long)widths[i], (long long)ch);
        p->ch_mult[i] = (int)(widths[i] / ch);
    }
    int64_t v;
    if (enc) {
        if ((v = extent(entries, n, prefix, "encoder.conv_in.weight", 1, err)) < 0) return -1;
        p->in_channels = (int)v;
    }
    if (dec) {
        if ((v = extent(entries, n, prefix, "decoder.conv_in.weight", 1, err)) < 0) return -1;
        p->z_channels = (int)v;
        if ((v = extent(entries, n, prefix, "decoder.conv_out.weight", 0, err)) < 0) return -1;
        p->out_ch = (int)v;
    } else {
        if ((v = extent(entries, n, prefix, "encoder.conv_out.weight", 0, err)) < 0) return -1;
        if (v % 2) return fl_fail(err, FL_EINVAL, "autoencoder: encoder.conv_out has an odd channel count %lld", (long long)v);
        p->z_channels = (int)(v / 2);
    }
    return fl_ae_params_validate(p, err);
}

/* ---- binding check ------------------------------------------------------------------------------- */

static char *shape_str(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t off = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && off < size; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < size) snprintf(buf + off, size - off, "]");
    return buf;
}

int fl_ae_check_entries(const fl_tensor_header *entries, size_t n, const fl_ae_source *src, unsigned parts,
                        fl_error *err) {
    if (fl_ae_params_validate(&src->params, err) != 0) return -1;
    size_t nd = fl_ae_param_decls(&src->params, FL_AE_BOTH, NULL);
    fl_ae_param_decl *decls = fl_xcalloc(nd, sizeof *decls);
    fl_ae_param_decls(&src->params, FL_AE_BOTH, decls);
    const fl_tensor_header **found = fl_xcalloc(nd, sizeof *found);
    const size_t plen = strlen(src->prefix);
    const bool diffusers = src->layout == FL_AE_LAYOUT_DIFFUSERS;
    int rc = 0;
    char a[128], b[128];
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *full = entries[i].name;
        if (strncmp(full, src->prefix, plen)) continue;
        const char *name = full + plen;
        if (strncmp(name, "encoder.", 8) && strncmp(name, "decoder.", 8) && strncmp(name, "quant_conv.", 11) &&
            strncmp(name, "post_quant_conv.", 16))
            continue; /* another model's tensor in a combined checkpoint */
        char bfl[FL_AE_NAME_MAX];
        bool linear = false;
        int mapped = diffusers ? fl_ae_diffusers_to_bfl(name, src->params.n_levels, bfl, sizeof bfl, &linear)
                               : snprintf(bfl, sizeof bfl, "%s", name) < (int)sizeof bfl ? 0 : -1;
        size_t k = 0;
        while (mapped == 0 && k < nd && strcmp(decls[k].name, bfl)) k++;
        if (mapped != 0 || k == nd) {
            rc = fl_fail(err, FL_EINVAL, "unexpected tensor '%s' (not part of a FLUX.1-style autoencoder)", full);
            break;
        }
        if (found[k]) {
            rc = fl_fail(err, FL_EINVAL, "tensors '%s' and '%s' are the same autoencoder tensor", found[k]->name, full);
            break;
        }
        found[k] = &entries[i];
        const fl_ae_param_decl *d = &decls[k];
        bool ok = entries[i].ndim == d->ndim;
        for (int j = 0; ok && j < d->ndim; j++) ok = entries[i].shape[j] == d->shape[j];
        if (!ok && linear) /* diffusers stores the attention's 1x1 convolutions as Linear [C, C] */
            ok = entries[i].ndim == 2 && entries[i].shape[0] == d->shape[0] && entries[i].shape[1] == d->shape[1];
        if (!ok)
            rc = fl_fail(err, FL_EINVAL, "tensor '%s' has shape %s, expected %s%s", full,
                         shape_str(entries[i].ndim, entries[i].shape, a, sizeof a),
                         shape_str(linear ? 2 : d->ndim, d->shape, b, sizeof b), linear ? " (or [C, C, 1, 1])" : "");
    }
    for (size_t k = 0; k < nd && rc == 0; k++) {
        bool wanted = (parts & FL_AE_ENCODER && !strncmp(decls[k].name, "encoder.", 8)) ||
                      (parts & FL_AE_DECODER && !strncmp(decls[k].name, "decoder.", 8));
        if (!wanted || found[k]) continue;
        char name[FL_AE_NAME_MAX];
        if (diffusers) bfl_to_diffusers(decls[k].name, src->params.n_levels, name, sizeof name);
        else snprintf(name, sizeof name, "%s", decls[k].name);
        rc = fl_fail(err, FL_EINVAL, "missing tensor '%s%s'", src->prefix, name);
    }
    free(found);
    free(decls);
    return rc;
}
