/*
 * flux_names.c — the table of module names between the original Flux checkpoint and the diffusers
 * FluxTransformer2DModel (the same correspondence diffusers uses to convert a Flux checkpoint); see
 * flux_names.h.
 */
#include "models/flux_names.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct name_rule {
    const char *orig; /* suffix after the block prefix, or the whole name at the top level */
    const char *parts[FL_FLUX_MAX_PARTS];
    fl_flux_split split;
} name_rule;

static const name_rule double_rules[] = {
    {"img_attn.qkv", {"attn.to_q", "attn.to_k", "attn.to_v"}, FL_FLUX_SPLIT_QKV},
    {"txt_attn.qkv", {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"}, FL_FLUX_SPLIT_QKV},
    {"img_attn.proj", {"attn.to_out.0"}, FL_FLUX_SPLIT_NONE},
    {"txt_attn.proj", {"attn.to_add_out"}, FL_FLUX_SPLIT_NONE},
    {"img_mlp.0", {"ff.net.0.proj"}, FL_FLUX_SPLIT_NONE},
    {"img_mlp.2", {"ff.net.2"}, FL_FLUX_SPLIT_NONE},
    {"txt_mlp.0", {"ff_context.net.0.proj"}, FL_FLUX_SPLIT_NONE},
    {"txt_mlp.2", {"ff_context.net.2"}, FL_FLUX_SPLIT_NONE},
    {"img_mod.lin", {"norm1.linear"}, FL_FLUX_SPLIT_NONE},
    {"txt_mod.lin", {"norm1_context.linear"}, FL_FLUX_SPLIT_NONE},
};

static const name_rule single_rules[] = {
    {"linear1", {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"}, FL_FLUX_SPLIT_QKV_MLP},
    {"linear2", {"proj_out"}, FL_FLUX_SPLIT_NONE},
    {"modulation.lin", {"norm.linear"}, FL_FLUX_SPLIT_NONE},
};

static const name_rule top_rules[] = {
    {"img_in", {"x_embedder"}, FL_FLUX_SPLIT_NONE},
    {"txt_in", {"context_embedder"}, FL_FLUX_SPLIT_NONE},
    {"time_in.in_layer", {"time_text_embed.timestep_embedder.linear_1"}, FL_FLUX_SPLIT_NONE},
    {"time_in.out_layer", {"time_text_embed.timestep_embedder.linear_2"}, FL_FLUX_SPLIT_NONE},
    {"guidance_in.in_layer", {"time_text_embed.guidance_embedder.linear_1"}, FL_FLUX_SPLIT_NONE},
    {"guidance_in.out_layer", {"time_text_embed.guidance_embedder.linear_2"}, FL_FLUX_SPLIT_NONE},
    {"vector_in.in_layer", {"time_text_embed.text_embedder.linear_1"}, FL_FLUX_SPLIT_NONE},
    {"vector_in.out_layer", {"time_text_embed.text_embedder.linear_2"}, FL_FLUX_SPLIT_NONE},
    {"final_layer.linear", {"proj_out"}, FL_FLUX_SPLIT_NONE},
    {"final_layer.adaLN_modulation.1", {"norm_out.linear"}, FL_FLUX_SPLIT_SWAP_HALVES},
};

typedef struct name_group {
    const char *orig_prefix; /* "double_blocks"; NULL for the top level */
    const char *diff_prefix; /* "transformer_blocks" */
    const name_rule *rules;
    size_t n_rules;
} name_group;

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
static const name_group groups[] = {
    {"double_blocks", "transformer_blocks", double_rules, COUNT(double_rules)},
    {"single_blocks", "single_transformer_blocks", single_rules, COUNT(single_rules)},
    {NULL, NULL, top_rules, COUNT(top_rules)},
};

/* For "<prefix><sep><index><sep><rest>": the index (canonical decimal, no leading zeros) and
 * rest; false otherwise. sep is '.' (module paths) or '_' (kohya names). */
static bool split_block(const char *name, const char *prefix, char sep, long *index, const char **rest) {
    size_t n = strlen(prefix);
    for (size_t i = 0; i < n; i++) {
        char want = prefix[i] == '.' ? sep : prefix[i];
        if (name[i] != want) return false;
    }
    if (name[n] != sep) return false;
    const char *d = name + n + 1;
    size_t digits = strspn(d, "0123456789");
    if (digits == 0 || digits > 6 || (digits > 1 && d[0] == '0') || d[digits] != sep) return false;
    *index = strtol(d, NULL, 10);
    *rest = d + digits + 1;
    return true;
}

/* a equals b with every '.' of b read as sep. */
static bool same_name(const char *a, const char *b, char sep) {
    for (; *a && *b; a++, b++)
        if (*a != (*b == '.' ? sep : *b)) return false;
    return !*a && !*b;
}

static void fill_map(fl_flux_diffusers_map *out, const name_group *g, const name_rule *r, long index) {
    memset(out, 0, sizeof *out);
    out->split = r->split;
    if (g->orig_prefix) snprintf(out->module, sizeof out->module, "%s.%ld.%s", g->orig_prefix, index, r->orig);
    else snprintf(out->module, sizeof out->module, "%s", r->orig);
    for (int j = 0; j < FL_FLUX_MAX_PARTS && r->parts[j]; j++, out->n_parts++) {
        if (g->diff_prefix)
            snprintf(out->parts[j], sizeof out->parts[j], "%s.%ld.%s", g->diff_prefix, index, r->parts[j]);
        else snprintf(out->parts[j], sizeof out->parts[j], "%s", r->parts[j]);
    }
}

/* The rule naming `name` in the original layout (sep '.' for paths, '_' for kohya names). */
static bool find_original(const char *name, char sep, fl_flux_diffusers_map *out) {
    for (size_t g = 0; g < COUNT(groups); g++) {
        long index = 0;
        const char *rest = name;
        if (groups[g].orig_prefix && !split_block(name, groups[g].orig_prefix, sep, &index, &rest)) continue;
        for (size_t r = 0; r < groups[g].n_rules; r++) {
            if (!same_name(rest, groups[g].rules[r].orig, sep)) continue;
            if (out) fill_map(out, &groups[g], &groups[g].rules[r], index);
            return true;
        }
    }
    return false;
}

bool fl_flux_diffusers_lookup(const char *name, char sep, fl_flux_diffusers_map *out) {
    return find_original(name, sep, out);
}

bool fl_flux_diffusers_source(const char *path, fl_flux_diffusers_map *out, int *part) {
    for (size_t g = 0; g < COUNT(groups); g++) {
        long index = 0;
        const char *rest = path;
        if (groups[g].diff_prefix && !split_block(path, groups[g].diff_prefix, '.', &index, &rest)) continue;
        for (size_t r = 0; r < groups[g].n_rules; r++) {
            for (int j = 0; j < FL_FLUX_MAX_PARTS && groups[g].rules[r].parts[j]; j++) {
                if (strcmp(rest, groups[g].rules[r].parts[j])) continue;
                fill_map(out, &groups[g], &groups[g].rules[r], index);
                *part = j;
                return true;
            }
        }
    }
    return false;
}

int fl_flux_diffusers_part_rows(const fl_flux_diffusers_map *map, int part, int64_t in, int64_t out, int64_t *row0,
                      int64_t *rows) {
    if (part < 0 || part >= map->n_parts || in < 1 || out < 1) return -1;
    switch (map->split) {
    case FL_FLUX_SPLIT_NONE:
        *row0 = 0;
        *rows = out;
        return 0;
    case FL_FLUX_SPLIT_SWAP_HALVES:
        *row0 = 0;
        *rows = out;
        return out % 2 ? -1 : 0;
    case FL_FLUX_SPLIT_QKV:
        if (out != 3 * in) return -1;
        *row0 = part * in;
        *rows = in;
        return 0;
    case FL_FLUX_SPLIT_QKV_MLP:
        if (out <= 3 * in) return -1;
        *row0 = part * in;
        *rows = part < 3 ? in : out - 3 * in;
        return 0;
    }
    return -1;
}

