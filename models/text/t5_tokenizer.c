/*
 * t5_tokenizer.c — the T5 SentencePiece unigram tokenizer (see tokenizers.h for the behaviour it
 * reproduces: the slow Hugging Face T5Tokenizer, i.e. sentencepiece, after the Hugging Face split
 * of literal special tokens).
 *
 * Normalization follows sentencepiece's normalizer: at each position the longest match of the
 * precompiled character map (a Darts-clone double-array trie whose values are offsets of
 * NUL-terminated replacements) or else one character unchanged; leading spaces dropped, "▁"
 * prepended, runs of spaces collapsed, spaces escaped as "▁", trailing "▁" removed. Every trie
 * step is bounds-checked: a hostile character map cannot read outside its bytes.
 *
 * Encoding is sentencepiece's Viterbi: for each character boundary, every piece starting there
 * extends the best path ending there (ties keep the earlier, longer candidate); a character that
 * no single-character piece covers costs (lowest normal score - 10) as <unk>; scores add in float
 * as sentencepiece adds them. Adjacent unknown pieces merge into one <unk>, as sentencepiece does.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/fileio.h"
#include "core/sha256.h"
#include "core/utf8.h"
#include "models/text/text_encoders.h"
#include "models/text/text_internal.h"
#include "models/text/tokenizers.h"

#define T5_MAX_FILE ((size_t)64 << 20)
#define T5_MAX_PIECES (1 << 22)
#define T5_MAX_ADDED 4096
static const char SPACE_SYMBOL[] = "\xe2\x96\x81"; /* U+2581 */
/* sha256 of the built-in tables in canonical form (checked by the tokenizer tests) */
static const char BUILTIN_HASH[] = "9634d29a6b2848aca3589d6e979589300bf45a6e66346ce33080b5e54c7a80cc";

enum { PIECE_NORMAL = 1, PIECE_UNKNOWN = 2, PIECE_CONTROL = 3, PIECE_USER = 4, PIECE_UNUSED = 5, PIECE_BYTE = 6 };

typedef struct added_token {
    char *text;
    size_t len;
    int32_t id;
    bool lstrip, rstrip;
} added_token;

struct fl_t5_tokenizer {
    int32_t n_pieces;
    char **piece;
    uint32_t *plen;
    float *score;
    uint8_t *type;
    fl_strmap map; /* piece -> id */
    size_t max_piece_bytes;
    float min_score, max_score;
    int32_t unk_id, eos_id, pad_id, vocab_size;
    unsigned char *charsmap; /* owned copy; NULL: no character map */
    size_t charsmap_len;
    const unsigned char *trie; /* units, little-endian uint32 */
    size_t trie_units;
    const char *strings;
    size_t strings_len;
    bool add_dummy_prefix, remove_extra_ws, escape_ws;
    added_token *added;
    int n_added;
    char hash[65];
    bool builtin;
};

/* ---- construction ----------------------------------------------------------------------------- */

static fl_t5_tokenizer *tok_new(int32_t n) {
    fl_t5_tokenizer *t = fl_xcalloc(1, sizeof *t);
    t->n_pieces = n;
    t->piece = fl_xcalloc((size_t)n + 1, sizeof *t->piece);
    t->plen = fl_xcalloc((size_t)n + 1, sizeof *t->plen);
    t->score = fl_xcalloc((size_t)n + 1, sizeof *t->score);
    t->type = fl_xcalloc((size_t)n + 1, sizeof *t->type);
    t->unk_id = t->eos_id = t->pad_id = -1;
    t->add_dummy_prefix = t->remove_extra_ws = t->escape_ws = true;
    return t;
}

void fl_t5_tokenizer_free(fl_t5_tokenizer *t) {
    if (!t) return;
    for (int32_t i = 0; i < t->n_pieces; i++) free(t->piece[i]);
    free(t->piece);
    free(t->plen);
    free(t->score);
    free(t->type);
    fl_strmap_free(&t->map);
    free(t->charsmap);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].text);
    free(t->added);
    free(t);
}

static void set_piece(fl_t5_tokenizer *t, int32_t i, const char *s, size_t len, float score, int type) {
    t->piece[i] = fl_xmalloc(len + 1);
    memcpy(t->piece[i], s, len);
    t->piece[i][len] = 0;
    t->plen[i] = (uint32_t)len;
    t->score[i] = score;
    t->type[i] = (uint8_t)type;
}

static void add_token(fl_t5_tokenizer *t, const char *s, size_t len, int32_t id, bool lstrip, bool rstrip) {
    t->added = fl_xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof *t->added);
    added_token *a = &t->added[t->n_added++];
    a->text = fl_xmalloc(len + 1);
    memcpy(a->text, s, len);
    a->text[len] = 0;
    a->len = len;
    a->id = id;
    a->lstrip = lstrip;
    a->rstrip = rstrip;
}

static uint32_t unit_at(const fl_t5_tokenizer *t, size_t i) {
    const unsigned char *p = t->trie + 4 * i;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Takes a copy of a precompiled charsmap and checks its framing. */
static int set_charsmap(fl_t5_tokenizer *t, const unsigned char *data, size_t len, const char *name, fl_error *err) {
    if (len == 0) return 0;
    if (len < 4) return fl_fail(err, FL_EINVAL, "%s: character map of %zu bytes is truncated", name, len);
    uint32_t trie_bytes = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
    if (trie_bytes % 4 || trie_bytes == 0 || (size_t)trie_bytes > len - 4)
        return fl_fail(err, FL_EINVAL, "%s: character map declares a %u-byte trie in %zu bytes", name, trie_bytes,
                       len);
    t->charsmap = fl_xmalloc(len);
    memcpy(t->charsmap, data, len);
    t->charsmap_len = len;
    t->trie = t->charsmap + 4;
    t->trie_units = trie_bytes / 4;
    t->strings = (const char *)t->charsmap + 4 + trie_bytes;
    t->strings_len = len - 4 - trie_bytes;
    return 0;
}

static void compute_hash(fl_t5_tokenizer *t) {
    fl_sha256 h;
    fl_sha256_init(&h);
    for (int32_t i = 0; i < t->n_pieces; i++) {
        char head[64];
        uint32_t bits;
        memcpy(&bits, &t->score[i], 4);
        int k = snprintf(head, sizeof head, "%d %d %08x ", (int)i, (int)t->type[i], bits);
        fl_sha256_update(&h, head, (size_t)k);
        fl_sha256_update(&h, t->piece[i], t->plen[i]);
        fl_sha256_update(&h, "\n", 1);
    }
    for (int i = 0; i < t->n_added; i++) {
        char head[64];
        int k = snprintf(head, sizeof head, "added %d %d %d ", (int)t->added[i].id, t->added[i].lstrip,
                         t->added[i].rstrip);
        fl_sha256_update(&h, head, (size_t)k);
        fl_sha256_update(&h, t->added[i].text, t->added[i].len);
        fl_sha256_update(&h, "\n", 1);
    }
    char flags[32];
    int k = snprintf(flags, sizeof flags, "flags %d %d %d\n", t->add_dummy_prefix, t->remove_extra_ws, t->escape_ws);
    fl_sha256_update(&h, flags, (size_t)k);
    if (t->charsmap) fl_sha256_update(&h, t->charsmap, t->charsmap_len);
    uint8_t digest[32];
    fl_sha256_final(&h, digest);
    fl_sha256_digest_hex(digest, t->hash);
}

/* Lookup tables and ids, once pieces and added tokens are set. */
static int finish(fl_t5_tokenizer *t, const char *name, fl_error *err) {
    fl_strmap_init(&t->map, (size_t)t->n_pieces);
    t->min_score = INFINITY;
    t->max_score = -INFINITY;
    bool any_normal = false;
    for (int32_t i = 0; i < t->n_pieces; i++) {
        if (t->plen[i] == 0) return fl_fail(err, FL_EINVAL, "%s: piece %d is empty", name, (int)i);
        if (!fl_utf8_valid(t->piece[i], t->plen[i]))
            return fl_fail(err, FL_EINVAL, "%s: piece %d is not valid UTF-8", name, (int)i);
        if (!isfinite(t->score[i])) return fl_fail(err, FL_EINVAL, "%s: piece %d has a score that is not finite", name, (int)i);
        if (t->type[i] < PIECE_NORMAL || t->type[i] > PIECE_BYTE)
            return fl_fail(err, FL_EINVAL, "%s: piece %d has unknown type %d", name, (int)i, (int)t->type[i]);
        if (fl_strmap_get(&t->map, t->piece[i], t->plen[i]) < 0) fl_strmap_put(&t->map, t->piece[i], t->plen[i], i);
        if (t->type[i] == PIECE_UNKNOWN && t->unk_id < 0) t->unk_id = i;
        if (t->type[i] == PIECE_NORMAL) {
            any_normal = true;
            if (t->score[i] < t->min_score) t->min_score = t->score[i];
            if (t->score[i] > t->max_score) t->max_score = t->score[i];
        }
        if (t->plen[i] > t->max_piece_bytes) t->max_piece_bytes = t->plen[i];
    }
    if (!any_normal) return fl_fail(err, FL_EINVAL, "%s: no pieces", name);
    if (t->unk_id < 0) return fl_fail(err, FL_EINVAL, "%s: no unknown piece (<unk>)", name);
    t->eos_id = fl_strmap_get(&t->map, "</s>", 4);
    t->pad_id = fl_strmap_get(&t->map, "<pad>", 5);
    if (t->eos_id < 0 || t->pad_id < 0) return fl_fail(err, FL_EINVAL, "%s: no %s piece", name, t->eos_id < 0 ? "</s>" : "<pad>");
    t->vocab_size = t->n_pieces;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > t->vocab_size) t->vocab_size = t->added[i].id + 1;
    compute_hash(t);
    t->builtin = BUILTIN_HASH[0] && !strcmp(t->hash, BUILTIN_HASH);
    return 0;
}

/* The special tokens the Hugging Face T5Tokenizer splits out: <pad>, </s>, <unk> and
 * <extra_id_0 .. count-1> at ids n_pieces + count - 1 - i (stripping the spaces around them). */
static void add_t5_specials(fl_t5_tokenizer *t, int extra) {
    static const char *const names[3] = {"<pad>", "</s>", "<unk>"};
    for (int i = 0; i < 3; i++) {
        int32_t id = -1;
        for (int32_t p = 0; p < t->n_pieces && id < 0; p++)
            if (!strcmp(t->piece[p], names[i])) id = p;
        if (id >= 0) add_token(t, names[i], strlen(names[i]), id, false, false);
    }
    for (int i = 0; i < extra; i++) {
        char s[32];
        int k = snprintf(s, sizeof s, "<extra_id_%d>", i);
        add_token(t, s, (size_t)k, t->n_pieces + extra - 1 - i, true, true);
    }
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int fl_t5_tokenizer_builtin(fl_t5_tokenizer **out, fl_error *err) {
    *out = NULL;
    const unsigned char *b = fl_vocab_t5;
    size_t len = fl_vocab_t5_size;
    FL_CHECK(len > 24 && !memcmp(b, "FLT5VOC1", 8));
    uint32_t n = rd32(b + 8), extra = rd32(b + 12), text_bytes = rd32(b + 16), map_bytes = rd32(b + 20);
    size_t off = 24;
    FL_CHECK(off + (size_t)n * 5 + text_bytes + map_bytes == len);
    fl_t5_tokenizer *t = tok_new((int32_t)n);
    const unsigned char *scores = b + off, *types = b + off + 4 * (size_t)n;
    const char *text = (const char *)types + n;
    for (uint32_t i = 0; i < n; i++) {
        size_t l = strlen(text);
        float s;
        memcpy(&s, scores + 4 * i, 4);
        set_piece(t, (int32_t)i, text, l, s, types[i]);
        text += l + 1;
    }
    fl_error e2;
    FL_CHECK(set_charsmap(t, (const unsigned char *)text, map_bytes, "built-in vocabulary", &e2) == 0);
    add_t5_specials(t, (int)extra);
    FL_CHECK(finish(t, "built-in vocabulary", &e2) == 0);
    t->builtin = true;
    *out = t;
    (void)err;
    return 0;
}

/* ---- tokenizer.json ----------------------------------------------------------------------------- */

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static unsigned char *b64_decode(const char *s, size_t *out_len) {
    size_t n = strlen(s);
    unsigned char *out = fl_xmalloc(n / 4 * 3 + 4);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=') break;
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    *out_len = o;
    return out;
}

static const json_t *find_charsmap(const json_t *norm) {
    if (!json_is_object(norm)) return NULL;
    const char *type = json_string_value(json_object_get(norm, "type"));
    if (type && !strcmp(type, "Precompiled")) return json_object_get(norm, "precompiled_charsmap");
    const json_t *list = json_object_get(norm, "normalizers");
    for (size_t i = 0; json_is_array(list) && i < json_array_size(list); i++) {
        const json_t *got = find_charsmap(json_array_get(list, i));
        if (got) return got;
    }
    return NULL;
}

int fl_t5_tokenizer_from_json(const char *json, size_t len, const char *name, fl_t5_tokenizer **out, fl_error *err) {
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) return fl_fail(err, FL_EINVAL, "%s: not JSON (line %d: %s)", name, jerr.line, jerr.text);
    fl_t5_tokenizer *t = NULL;
    int rc = 0;
    json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
    const char *type = json_string_value(json_object_get(model, "type"));
    json_t *unk = json_object_get(model, "unk_id");
    size_t n = json_array_size(vocab);
    if (!type || strcmp(type, "Unigram") || !json_is_array(vocab) || n == 0 || n > T5_MAX_PIECES) {
        rc = fl_fail(err, FL_EINVAL, "%s: no Unigram model (model.type, model.vocab)", name);
        goto done;
    }
    if (!json_is_integer(unk) || json_integer_value(unk) < 0 || (size_t)json_integer_value(unk) >= n) {
        rc = fl_fail(err, FL_EINVAL, "%s: model.unk_id is missing or outside the vocabulary", name);
        goto done;
    }
    t = tok_new((int32_t)n);
    json_t *added = json_object_get(root, "added_tokens");
    if (json_array_size(added) > T5_MAX_ADDED) {
        rc = fl_fail(err, FL_EINVAL, "%s: more than %d added tokens", name, T5_MAX_ADDED);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(vocab, i);
        json_t *p = json_array_get(e, 0), *s = json_array_get(e, 1);
        if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(p) || !json_is_number(s)) {
            rc = fl_fail(err, FL_EINVAL, "%s: model.vocab[%zu] is not [piece, score]", name, i);
            goto done;
        }
        int ptype = (int64_t)i == json_integer_value(unk) ? PIECE_UNKNOWN : PIECE_NORMAL;
        set_piece(t, (int32_t)i, json_string_value(p), json_string_length(p), (float)json_number_value(s), ptype);
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        json_t *content = json_object_get(a, "content"), *id = json_object_get(a, "id");
        if (!json_is_string(content) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (1 << 24) || json_string_length(content) == 0) {
            rc = fl_fail(err, FL_EINVAL, "%s: added_tokens[%zu] has no content or id", name, i);
            goto done;
        }
        int32_t tid = (int32_t)json_integer_value(id);
        /* a special token that is also a piece never matches as text (sentencepiece's control) */
        if (tid < t->n_pieces && t->type[tid] == PIECE_NORMAL) t->type[tid] = PIECE_CONTROL;
        add_token(t, json_string_value(content), json_string_length(content), tid,
                  json_is_true(json_object_get(a, "lstrip")), json_is_true(json_object_get(a, "rstrip")));
    }
    /* the Hugging Face T5Tokenizer strips spaces around <extra_id_N> whatever the file says */
    for (int i = 0; i < t->n_added; i++)
        if (!strncmp(t->added[i].text, "<extra_id_", 10)) t->added[i].lstrip = t->added[i].rstrip = true;
    const json_t *cm = find_charsmap(json_object_get(root, "normalizer"));
    if (cm) {
        size_t blen = 0;
        unsigned char *bytes = json_is_string(cm) ? b64_decode(json_string_value(cm), &blen) : NULL;
        if (!bytes) {
            rc = fl_fail(err, FL_EINVAL, "%s: precompiled_charsmap is not base64", name);
            goto done;
        }
        rc = set_charsmap(t, bytes, blen, name, err);
        free(bytes);
        if (rc) goto done;
    }
    rc = finish(t, name, err);
done:
    json_decref(root);
    if (rc) {
        fl_t5_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* ---- spiece.model (protobuf) -------------------------------------------------------------------- */

typedef struct pb_reader {
    const unsigned char *p, *end;
} pb_reader;

static bool pb_varint(pb_reader *r, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return false;
        unsigned char b = *r->p++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

/* Next field: number, wire type, and for length-delimited ones the bytes; other values skipped
 * into *value. */
static bool pb_field(pb_reader *r, uint32_t *field, int *wire, const unsigned char **data, size_t *len,
                     uint64_t *value) {
    uint64_t key;
    if (!pb_varint(r, &key)) return false;
    *field = (uint32_t)(key >> 3);
    *wire = (int)(key & 7);
    switch (*wire) {
    case 0: return pb_varint(r, value);
    case 1:
        if (r->end - r->p < 8) return false;
        r->p += 8;
        return true;
    case 2: {
        uint64_t l;
        if (!pb_varint(r, &l) || l > (uint64_t)(r->end - r->p)) return false;
        *data = r->p;
        *len = (size_t)l;
        r->p += l;
        return true;
    }
    case 5:
        if (r->end - r->p < 4) return false;
        *value = rd32(r->p);
        r->p += 4;
        return true;
    default: return false;
    }
}

int fl_t5_tokenizer_from_spiece(const unsigned char *data, size_t len, const char *name, fl_t5_tokenizer **out,
                                fl_error *err) {
    *out = NULL;
    /* pass 1: count pieces */
    pb_reader r = {data, data + len};
    size_t count = 0;
    uint32_t field;
    int wire;
    const unsigned char *sub = NULL;
    size_t sub_len = 0;
    uint64_t value = 0;
    const unsigned char *norm = NULL;
    size_t norm_len = 0;
    while (r.p < r.end) {
        if (!pb_field(&r, &field, &wire, &sub, &sub_len, &value))
            return fl_fail(err, FL_EINVAL, "%s: not a SentencePiece model (malformed protobuf)", name);
        if (field == 1 && wire == 2) count++;
        if (field == 3 && wire == 2) norm = sub, norm_len = sub_len;
    }
    if (count == 0 || count > T5_MAX_PIECES) return fl_fail(err, FL_EINVAL, "%s: not a SentencePiece model (%zu pieces)", name, count);
    fl_t5_tokenizer *t = tok_new((int32_t)count);
    r = (pb_reader){data, data + len};
    int32_t i = 0;
    int rc = 0;
    while (r.p < r.end && rc == 0) {
        pb_field(&r, &field, &wire, &sub, &sub_len, &value);
        if (field != 1 || wire != 2) continue;
        pb_reader pr = {sub, sub + sub_len};
        const unsigned char *text = NULL;
        size_t text_len = 0;
        float score = 0.0f;
        int type = PIECE_NORMAL;
        while (pr.p < pr.end) {
            uint32_t f;
            int w;
            const unsigned char *d = NULL;
            size_t dl = 0;
            uint64_t v = 0;
            if (!pb_field(&pr, &f, &w, &d, &dl, &v)) {
                rc = fl_fail(err, FL_EINVAL, "%s: piece %d is malformed", name, (int)i);
                break;
            }
            if (f == 1 && w == 2) text = d, text_len = dl;
            else if (f == 2 && w == 5) {
                uint32_t bits = (uint32_t)v;
                memcpy(&score, &bits, 4);
            } else if (f == 3 && w == 0) type = (int)(v > 100 ? 0 : v);
        }
        if (rc) break;
        if (!text) rc = fl_fail(err, FL_EINVAL, "%s: piece %d has no text", name, (int)i);
        else set_piece(t, i++, (const char *)text, text_len, score, type);
    }
    if (rc == 0 && norm) {
        pb_reader nr = {norm, norm + norm_len};
        const unsigned char *cm = NULL, *nm = NULL;
        size_t cm_len = 0, nm_len = 0;
        while (nr.p < nr.end && rc == 0) {
            uint32_t f;
            int w;
            const unsigned char *d = NULL;
            size_t dl = 0;
            uint64_t v = 0;
            if (!pb_field(&nr, &f, &w, &d, &dl, &v)) rc = fl_fail(err, FL_EINVAL, "%s: normalizer spec is malformed", name);
            else if (f == 1 && w == 2) nm = d, nm_len = dl;
            else if (f == 2 && w == 2) cm = d, cm_len = dl;
            else if (f == 3 && w == 0) t->add_dummy_prefix = v != 0;
            else if (f == 4 && w == 0) t->remove_extra_ws = v != 0;
            else if (f == 5 && w == 0) t->escape_ws = v != 0;
        }
        if (rc == 0 && cm_len) rc = set_charsmap(t, cm, cm_len, name, err);
        else if (rc == 0 && nm && nm_len == 8 && !memcmp(nm, "nmt_nfkc", 8)) {
            /* a model naming nmt_nfkc without its compiled form: the built-in map is that one */
            fl_t5_tokenizer *b = NULL;
            fl_t5_tokenizer_builtin(&b, NULL);
            rc = set_charsmap(t, b->charsmap, b->charsmap_len, name, err);
            fl_t5_tokenizer_free(b);
        } else if (rc == 0 && nm && !(nm_len == 8 && !memcmp(nm, "identity", 8))) {
            rc = fl_fail(err, FL_EUNSUPPORTED, "%s: normalizer '%.*s' has no precompiled character map", name,
                         (int)(nm_len > 40 ? 40 : nm_len), (const char *)nm);
        }
    }
    if (rc == 0) {
        add_t5_specials(t, 100);
        rc = finish(t, name, err);
    }
    if (rc) {
        fl_t5_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int load_file(const char *path, fl_t5_tokenizer **out, fl_error *err) {
    unsigned char *data = NULL;
    size_t size = 0;
    if (fl_read_file(path, T5_MAX_FILE, &data, &size, err) != 0) return fl_fail_prefix(err, "%s", path);
    size_t n = strlen(path);
    int rc = n >= 5 && !strcmp(path + n - 5, ".json")
                 ? fl_t5_tokenizer_from_json((const char *)data, size, path, out, err)
                 : fl_t5_tokenizer_from_spiece(data, size, path, out, err);
    free(data);
    return rc;
}

int fl_t5_tokenizer_load(const char *path, fl_t5_tokenizer **out, fl_error *err) {
    *out = NULL;
    if (!is_dir(path)) {
        if (!is_file(path)) return fl_fail(err, FL_ENOTFOUND, "%s: no such tokenizer file", path);
        return load_file(path, out, err);
    }
    char p[4096];
    snprintf(p, sizeof p, "%s/spiece.model", path);
    if (is_file(p)) return load_file(p, out, err);
    snprintf(p, sizeof p, "%s/tokenizer.json", path);
    if (is_file(p)) return load_file(p, out, err);
    return fl_fail(err, FL_ENOTFOUND, "%s: no spiece.model or tokenizer.json", path);
}

int32_t fl_t5_tokenizer_vocab_size(const fl_t5_tokenizer *t) { return t->vocab_size; }
bool fl_t5_tokenizer_is_builtin_vocab(const fl_t5_tokenizer *t) { return t->builtin; }
const char *fl_t5_tokenizer_hash(const fl_t5_tokenizer *t) { return t->hash; }

/* ---- normalization ---------------------------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static void buf_add(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = fl_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

/* The replacement for the longest character-map match at s[0, n): returns the bytes consumed and
 * sets *rep / *rep_len (one UTF-8 character unchanged when nothing matches). */
static size_t normalize_prefix(const fl_t5_tokenizer *t, const char *s, size_t n, const char **rep, size_t *rep_len) {
    size_t best_len = 0;
    uint32_t best_value = 0;
    if (t->trie) {
        size_t node = 0;
        uint32_t unit = unit_at(t, 0);
        node ^= (size_t)((unit >> 10) << ((unit & (1u << 9)) >> 6));
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            node ^= c;
            if (node >= t->trie_units) break;
            unit = unit_at(t, node);
            if ((unit & ((1u << 31) | 0xFF)) != c) break;
            node ^= (size_t)((unit >> 10) << ((unit & (1u << 9)) >> 6));
            if (node >= t->trie_units) break;
            if ((unit >> 8) & 1) {
                best_len = i + 1;
                best_value = unit_at(t, node) & ((1u << 31) - 1);
            }
        }
    }
    if (best_len > 0 && best_value < t->strings_len) {
        const char *r = t->strings + best_value;
        const char *nul = memchr(r, 0, t->strings_len - best_value);
        if (nul) {
            *rep = r;
            *rep_len = (size_t)(nul - r);
            return best_len;
        }
    }
    size_t k = fl_utf8_sequence((const unsigned char *)s, n);
    if (k == 0) k = 1; /* not reached: prompts are checked */
    *rep = s;
    *rep_len = k;
    return k;
}

static void normalize(const fl_t5_tokenizer *t, const char *s, size_t n, buf *out) {
    const char *space = t->escape_ws ? SPACE_SYMBOL : " ";
    size_t space_len = strlen(space);
    size_t pos = 0;
    const char *rep;
    size_t rep_len;
    if (t->remove_extra_ws)
        while (pos < n) {
            size_t k = normalize_prefix(t, s + pos, n - pos, &rep, &rep_len);
            if (!(rep_len == 1 && rep[0] == ' ')) break;
            pos += k;
        }
    if (pos >= n) return;
    if (t->add_dummy_prefix) buf_add(out, space, space_len);
    bool prev_space = t->remove_extra_ws;
    while (pos < n) {
        size_t k = normalize_prefix(t, s + pos, n - pos, &rep, &rep_len);
        if (prev_space)
            while (rep_len > 0 && rep[0] == ' ') rep++, rep_len--;
        if (rep_len > 0) {
            for (size_t i = 0; i < rep_len; i++) {
                if (t->escape_ws && rep[i] == ' ') buf_add(out, SPACE_SYMBOL, 3);
                else buf_add(out, rep + i, 1);
            }
            prev_space = rep[rep_len - 1] == ' ';
        }
        pos += k;
        if (!t->remove_extra_ws) prev_space = false;
    }
    if (t->remove_extra_ws)
        while (out->n >= space_len && !memcmp(out->p + out->n - space_len, space, space_len)) out->n -= space_len;
}

/* ---- Viterbi -------------------------------------------------------------------------------- */

typedef struct ids_list {
    int32_t *v;
    size_t n, cap;
} ids_list;

static void ids_add(ids_list *l, int32_t id) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->v = fl_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = id;
}

static void encode_normalized(const fl_t5_tokenizer *t, const char *s, size_t n, ids_list *out) {
    if (n == 0) return;
    typedef struct node {
        int32_t id;
        float score;
        long start;
    } node;
    node *best = fl_xmalloc((n + 1) * sizeof *best);
    for (size_t i = 0; i <= n; i++) best[i] = (node){-1, 0.0f, -1};
    best[0].start = 0;
    const float unk_score = t->min_score - 10.0f;
    size_t start = 0;
    while (start < n) {
        float here = best[start].score;
        size_t mblen = fl_utf8_sequence((const unsigned char *)s + start, n - start);
        if (mblen == 0) mblen = 1;
        bool single = false;
        for (size_t end = start + mblen; end <= n && end - start <= t->max_piece_bytes;) {
            int32_t id = fl_strmap_get(&t->map, s + start, end - start);
            if (id >= 0 && (t->type[id] == PIECE_NORMAL || t->type[id] == PIECE_USER)) {
                float sc = t->type[id] == PIECE_USER ? (float)(end - start) * t->max_score - 0.1f : t->score[id];
                float cand = sc + here;
                node *tn = &best[end];
                if (tn->start < 0 || cand > tn->score) *tn = (node){id, cand, (long)start};
                if (end - start == mblen) single = true;
            }
            size_t k = end < n ? fl_utf8_sequence((const unsigned char *)s + end, n - end) : 0;
            if (k == 0) break;
            end += k;
        }
        if (!single) {
            float cand = unk_score + here;
            node *tn = &best[start + mblen];
            if (tn->start < 0 || cand > tn->score) *tn = (node){t->unk_id, cand, (long)start};
        }
        start += mblen;
    }
    /* backtrack, then merge adjacent unknowns */
    size_t count = 0;
    for (size_t e = n; e > 0; e = (size_t)best[e].start) count++;
    int32_t *path = fl_xmalloc((count ? count : 1) * sizeof *path);
    size_t k = count;
    for (size_t e = n; e > 0; e = (size_t)best[e].start) path[--k] = best[e].id;
    for (size_t i = 0; i < count; i++) {
        if (path[i] == t->unk_id && out->n > 0 && i > 0 && path[i - 1] == t->unk_id) continue;
        ids_add(out, path[i]);
    }
    free(path);
    free(best);
}

static void encode_chunk(const fl_t5_tokenizer *t, const char *s, size_t n, ids_list *out) {
    buf norm = {NULL, 0, 0};
    normalize(t, s, n, &norm);
    encode_normalized(t, norm.p, norm.n, out);
    free(norm.p);
}

/* Python's str.isspace() over the ASCII and common Unicode spaces, for the strips around special
 * tokens. */
static size_t space_len_at(const char *s, size_t n) {
    unsigned char c = (unsigned char)s[0];
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
    uint32_t cp;
    long k = fl_text_decode_utf8(s, fl_utf8_sequence((const unsigned char *)s, n), &cp, NULL);
    if (k != 1) return 0;
    size_t len = fl_utf8_sequence((const unsigned char *)s, n);
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
        cp == 0x202F || cp == 0x205F || cp == 0x3000)
        return len;
    return 0;
}

static size_t rstrip_len(const char *s, size_t n) {
    /* length of s without trailing spaces */
    size_t end = n;
    while (end > 0) {
        size_t b = end - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        if (space_len_at(s + b, end - b) != end - b) break;
        end = b;
    }
    return end;
}

static size_t lstrip_skip(const char *s, size_t n) {
    size_t i = 0, k;
    while (i < n && (k = space_len_at(s + i, n - i)) > 0) i += k;
    return i;
}

static const added_token *added_at(const fl_t5_tokenizer *t, const char *s, size_t n) {
    const added_token *best = NULL;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len <= n && !memcmp(s, t->added[i].text, t->added[i].len) &&
            (!best || t->added[i].len > best->len))
            best = &t->added[i];
    return best;
}

int fl_t5_tokenize(const fl_t5_tokenizer *t, const char *text, size_t len, int32_t *ids, int max_length,
                   fl_error *err) {
    FL_CHECK(max_length >= 1);
    if (fl_text_check_prompt(text, len, err) != 0) return -1;
    ids_list out = {NULL, 0, 0};
    const size_t limit = (size_t)max_length - 1;
    /* split on literal special tokens; a token that strips takes the spaces beside it */
    size_t start = 0, i = 0;
    bool strip_next = false;
    while (i <= len && out.n < limit) {
        const added_token *a = i < len && text[i] == '<' ? added_at(t, text + i, len - i) : NULL;
        if (!a && i < len) {
            i++;
            continue;
        }
        const char *chunk = text + start;
        size_t chunk_len = i - start;
        if (strip_next) {
            size_t skip = lstrip_skip(chunk, chunk_len);
            chunk += skip;
            chunk_len -= skip;
        }
        if (a && a->lstrip) chunk_len = rstrip_len(chunk, chunk_len);
        if (chunk_len) encode_chunk(t, chunk, chunk_len, &out);
        if (!a) break;
        ids_add(&out, a->id);
        strip_next = a->rstrip;
        i += a->len;
        start = i;
    }
    size_t count = out.n < limit ? out.n : limit;
    for (size_t k = 0; k < count; k++) ids[k] = out.v[k];
    /* </s> ends the sequence unless it already does */
    if (count == 0 || ids[count - 1] != t->eos_id) ids[count++] = t->eos_id;
    for (size_t k = count; k < (size_t)max_length; k++) ids[k] = t->pad_id;
    free(out.v);
    return (int)count;
}
