/*
 * clip_tokenizer.c — the CLIP byte-level BPE tokenizer (see tokenizers.h for the behaviour it
 * reproduces).
 *
 * Tables: every string that appears as a merge part, a merge result or an initial byte symbol is
 * interned as a symbol; merges map a pair of symbols to (rank, result); each symbol knows its
 * vocabulary id (or none: it then becomes the unknown id, <|endoftext|>, as the reference does).
 * The built-in vocabulary is derived from the merges alone: the 256 byte characters, the same with
 * "</w>", each merge's concatenation in order, then <|startoftext|> and <|endoftext|>.
 *
 * A word is merged with a heap of candidate pairs ordered by (rank, position), applied leftmost
 * first and checked lazily against the current symbols: the same result as merging every
 * occurrence of the lowest-ranked pair left to right, round after round.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/fileio.h"
#include "core/sha256.h"
#include "core/utf8.h"
#include "models/text/text_encoders.h"
#include "models/text/text_internal.h"
#include "models/text/tokenizers.h"
#include "models/text/unicode_data.h"

#define CLIP_MERGES_USED (49152 - 256 - 2) /* the reference reads this many merge lines */
#define CLIP_MAX_FILE ((size_t)64 << 20)
static const char BOS_TEXT[] = "<|startoftext|>", EOS_TEXT[] = "<|endoftext|>";
/* sha256 of the built-in tables in canonical form (checked by the tokenizer tests) */
static const char BUILTIN_HASH[] = "8ab0d5b851777760ecaf50b3dc9787eda01976c3eefa9d71bd29a385ad8c3823";

struct fl_clip_tokenizer {
    fl_strmap vocab;   /* token -> id */
    fl_strmap symbols; /* symbol string -> symbol index */
    int32_t *sym_id;   /* vocabulary id of each symbol, or -1 */
    size_t n_syms, cap_syms;
    fl_strmap pairs;     /* (left, right) symbol indices as 8 bytes -> rank */
    int32_t *merge_out;  /* rank -> result symbol */
    size_t n_merges;
    int32_t byte_sym[256], byte_sym_end[256];
    int32_t bos, eos, unk, vocab_size;
    char hash[65];
    bool builtin;
};

/* ---- the GPT-2 byte alphabet ------------------------------------------------------------------ */

static uint32_t byte_char(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return (uint32_t)(256 + n);
}

/* The byte characters in vocabulary order: the printable bytes, then the others. */
static void byte_order(int order[256]) {
    int k = 0;
    for (int b = 0; b < 256; b++)
        if (byte_char(b) == (uint32_t)b) order[k++] = b;
    for (int b = 0; b < 256; b++)
        if (byte_char(b) != (uint32_t)b) order[k++] = b;
}

/* ---- tables ----------------------------------------------------------------------------------- */

static int32_t intern(fl_clip_tokenizer *t, const char *s, size_t len) {
    int32_t got = fl_strmap_get(&t->symbols, s, len);
    if (got >= 0) return got;
    if (t->n_syms == t->cap_syms) {
        t->cap_syms = t->cap_syms ? t->cap_syms * 2 : 1024;
        t->sym_id = fl_xrealloc(t->sym_id, t->cap_syms * sizeof *t->sym_id);
    }
    int32_t idx = (int32_t)t->n_syms++;
    t->sym_id[idx] = fl_strmap_get(&t->vocab, s, len);
    fl_strmap_put(&t->symbols, s, len, idx);
    return idx;
}

static int32_t pair_rank(const fl_clip_tokenizer *t, int32_t a, int32_t b) {
    int32_t key[2] = {a, b};
    return fl_strmap_get(&t->pairs, (const char *)key, sizeof key);
}

/* Builds the symbol and merge tables once t->vocab is filled. merges: the text of merges.txt (a
 * "#version" first line is skipped), or NULL with lines given as an array of "a b" strings. */
static int add_merge(fl_clip_tokenizer *t, const char *a, size_t la, const char *b, size_t lb) {
    char *joined = fl_xmalloc(la + lb + 1);
    memcpy(joined, a, la);
    memcpy(joined + la, b, lb);
    int32_t sa = intern(t, a, la), sb = intern(t, b, lb), sab = intern(t, joined, la + lb);
    free(joined);
    int32_t key[2] = {sa, sb};
    if (fl_strmap_get(&t->pairs, (const char *)key, sizeof key) < 0) {
        t->merge_out = fl_xrealloc(t->merge_out, (t->n_merges + 1) * sizeof *t->merge_out);
        t->merge_out[t->n_merges] = sab;
        fl_strmap_put(&t->pairs, (const char *)key, sizeof key, (int32_t)t->n_merges);
        t->n_merges++;
    }
    return 0;
}

static void add_byte_symbols(fl_clip_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char s[12];
        int n = fl_text_encode_utf8(byte_char(b), s);
        t->byte_sym[b] = intern(t, s, (size_t)n);
        memcpy(s + n, "</w>", 4);
        t->byte_sym_end[b] = intern(t, s, (size_t)n + 4);
    }
}

/* Parses merges text: the reference keeps lines 1 .. 48,894 after the header. */
static int parse_merges(fl_clip_tokenizer *t, const char *text, size_t len, const char *name, fl_error *err) {
    size_t pos = 0, line_no = 0, used = 0;
    /* the reference strips the whole text first */
    while (pos < len && (text[pos] == ' ' || text[pos] == '\n' || text[pos] == '\r' || text[pos] == '\t')) pos++;
    while (pos < len && used < CLIP_MERGES_USED) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        line_no++;
        if (line_no > 1) {
            const char *p = text + pos, *e = text + end;
            while (e > p && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) e--;
            while (p < e && (*p == ' ' || *p == '\t')) p++;
            const char *sp = p;
            while (sp < e && *sp != ' ' && *sp != '\t') sp++;
            const char *b = sp;
            while (b < e && (*b == ' ' || *b == '\t')) b++;
            const char *be = b;
            while (be < e && *be != ' ' && *be != '\t') be++;
            if (sp == p || b == e || be != e)
                return fl_fail(err, FL_EINVAL, "%s: line %zu is not a merge of two symbols", name, line_no);
            if (!fl_utf8_valid(p, (size_t)(e - p)))
                return fl_fail(err, FL_EINVAL, "%s: line %zu is not valid UTF-8", name, line_no);
            add_merge(t, p, (size_t)(sp - p), b, (size_t)(be - b));
            used++;
        }
        pos = end + 1;
    }
    if (used == 0) return fl_fail(err, FL_EINVAL, "%s: no merges", name);
    return 0;
}

static void compute_hash(fl_clip_tokenizer *t) {
    /* vocabulary by id, then merges by rank: "id string\n" and "left right\n" */
    size_t n = t->vocab.count;
    const char **by_id = fl_xcalloc((size_t)t->vocab_size + 1, sizeof *by_id);
    uint32_t *lens = fl_xcalloc((size_t)t->vocab_size + 1, sizeof *lens);
    for (size_t i = 0; i < t->vocab.cap; i++)
        if (t->vocab.keys[i] && t->vocab.values[i] < t->vocab_size) {
            by_id[t->vocab.values[i]] = t->vocab.keys[i];
            lens[t->vocab.values[i]] = t->vocab.lens[i];
        }
    fl_sha256 h;
    fl_sha256_init(&h);
    char num[32];
    for (int32_t id = 0; id < t->vocab_size; id++) {
        if (!by_id[id]) continue;
        int k = snprintf(num, sizeof num, "%d ", (int)id);
        fl_sha256_update(&h, num, (size_t)k);
        fl_sha256_update(&h, by_id[id], lens[id]);
        fl_sha256_update(&h, "\n", 1);
    }
    /* merges: symbol strings by index */
    const char **sym_str = fl_xcalloc(t->n_syms + 1, sizeof *sym_str);
    uint32_t *sym_len = fl_xcalloc(t->n_syms + 1, sizeof *sym_len);
    for (size_t i = 0; i < t->symbols.cap; i++)
        if (t->symbols.keys[i]) {
            sym_str[t->symbols.values[i]] = t->symbols.keys[i];
            sym_len[t->symbols.values[i]] = t->symbols.lens[i];
        }
    int32_t **by_rank = fl_xcalloc(t->n_merges + 1, sizeof *by_rank);
    for (size_t i = 0; i < t->pairs.cap; i++)
        if (t->pairs.keys[i]) by_rank[t->pairs.values[i]] = (int32_t *)t->pairs.keys[i];
    for (size_t r = 0; r < t->n_merges; r++) {
        int32_t a = by_rank[r][0], b = by_rank[r][1];
        fl_sha256_update(&h, sym_str[a], sym_len[a]);
        fl_sha256_update(&h, " ", 1);
        fl_sha256_update(&h, sym_str[b], sym_len[b]);
        fl_sha256_update(&h, "\n", 1);
    }
    uint8_t digest[32];
    fl_sha256_final(&h, digest);
    fl_sha256_digest_hex(digest, t->hash);
    (void)n;
    free(by_id);
    free(lens);
    free(sym_str);
    free(sym_len);
    free(by_rank);
}

static int finish(fl_clip_tokenizer *t, const char *name, fl_error *err) {
    t->bos = fl_strmap_get(&t->vocab, BOS_TEXT, strlen(BOS_TEXT));
    t->eos = fl_strmap_get(&t->vocab, EOS_TEXT, strlen(EOS_TEXT));
    if (t->bos < 0 || t->eos < 0)
        return fl_fail(err, FL_EINVAL, "%s: the vocabulary lacks %s", name, t->bos < 0 ? BOS_TEXT : EOS_TEXT);
    t->unk = t->eos;
    add_byte_symbols(t);
    compute_hash(t);
    t->builtin = BUILTIN_HASH[0] && !strcmp(t->hash, BUILTIN_HASH);
    return 0;
}

static fl_clip_tokenizer *tokenizer_new(size_t vocab_hint) {
    fl_clip_tokenizer *t = fl_xcalloc(1, sizeof *t);
    fl_strmap_init(&t->vocab, vocab_hint);
    fl_strmap_init(&t->symbols, vocab_hint * 2);
    fl_strmap_init(&t->pairs, vocab_hint);
    return t;
}

void fl_clip_tokenizer_free(fl_clip_tokenizer *t) {
    if (!t) return;
    fl_strmap_free(&t->vocab);
    fl_strmap_free(&t->symbols);
    fl_strmap_free(&t->pairs);
    free(t->sym_id);
    free(t->merge_out);
    free(t);
}

int fl_clip_tokenizer_builtin(fl_clip_tokenizer **out, fl_error *err) {
    *out = NULL;
    fl_clip_tokenizer *t = tokenizer_new(49408);
    int order[256];
    byte_order(order);
    int32_t id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < 256; k++) {
            char s[12];
            int n = fl_text_encode_utf8(byte_char(order[k]), s);
            if (pass) memcpy(s + n, "</w>", 4), n += 4;
            fl_strmap_put(&t->vocab, s, (size_t)n, id++);
        }
    /* merges: vocabulary entries are their concatenations, in order */
    const char *text = (const char *)fl_vocab_clip_merges;
    size_t len = fl_vocab_clip_merges_size, pos = 0, line = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        if (line++ > 0 && end > pos) {
            const char *sp = memchr(text + pos, ' ', end - pos);
            FL_CHECK(sp);
            size_t la = (size_t)(sp - text) - pos, lb = end - (size_t)(sp - text) - 1;
            char buf[256];
            FL_CHECK(la + lb < sizeof buf);
            memcpy(buf, text + pos, la);
            memcpy(buf + la, sp + 1, lb);
            fl_strmap_put(&t->vocab, buf, la + lb, id++);
        }
        pos = end + 1;
    }
    fl_strmap_put(&t->vocab, BOS_TEXT, strlen(BOS_TEXT), id++);
    fl_strmap_put(&t->vocab, EOS_TEXT, strlen(EOS_TEXT), id++);
    FL_CHECKF(id == 49408, "built-in CLIP vocabulary has %d entries", (int)id);
    t->vocab_size = id;
    fl_error e2;
    FL_CHECK(parse_merges(t, text, len, "built-in merges", &e2) == 0);
    FL_CHECK(finish(t, "built-in vocabulary", &e2) == 0);
    t->builtin = true;
    *out = t;
    (void)err;
    return 0;
}

/* vocab: a JSON object token -> id. */
static int fill_vocab(fl_clip_tokenizer *t, json_t *vocab, const char *name, fl_error *err) {
    if (!json_is_object(vocab)) return fl_fail(err, FL_EINVAL, "%s: the vocabulary is not a JSON object", name);
    const char *key;
    json_t *value;
    int32_t max_id = -1;
    json_object_foreach(vocab, key, value) {
        if (!json_is_integer(value) || json_integer_value(value) < 0 || json_integer_value(value) >= (1 << 24))
            return fl_fail(err, FL_EINVAL, "%s: token '%.40s' has no valid id", name, key);
        int32_t id = (int32_t)json_integer_value(value);
        fl_strmap_put(&t->vocab, key, strlen(key), id);
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return fl_fail(err, FL_EINVAL, "%s: the vocabulary is empty", name);
    t->vocab_size = max_id + 1;
    return 0;
}

int fl_clip_tokenizer_from_memory(const char *vocab_json, size_t vocab_len, const char *merges, size_t merges_len,
                                  const char *name, fl_clip_tokenizer **out, fl_error *err) {
    *out = NULL;
    json_error_t jerr;
    json_t *vocab = json_loadb(vocab_json, vocab_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!vocab) return fl_fail(err, FL_EINVAL, "%s: vocab.json is not JSON (line %d: %s)", name, jerr.line, jerr.text);
    fl_clip_tokenizer *t = tokenizer_new(json_object_size(vocab) + 16);
    int rc = fill_vocab(t, vocab, name, err);
    json_decref(vocab);
    if (rc == 0) rc = parse_merges(t, merges, merges_len, name, err);
    if (rc == 0) rc = finish(t, name, err);
    if (rc != 0) {
        fl_clip_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* tokenizer.json (fast format): model.vocab and model.merges ("a b" strings or [a, b] pairs). */
static int from_tokenizer_json(const char *path, fl_clip_tokenizer **out, fl_error *err) {
    unsigned char *data = NULL;
    size_t size = 0;
    if (fl_read_file(path, CLIP_MAX_FILE, &data, &size, err) != 0) return fl_fail_prefix(err, "%s", path);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)data, size, 0, &jerr);
    free(data);
    if (!root) return fl_fail(err, FL_EINVAL, "%s: not JSON (line %d: %s)", path, jerr.line, jerr.text);
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    int rc = 0;
    fl_clip_tokenizer *t = NULL;
    if (!json_is_object(vocab) || !json_is_array(merges)) {
        rc = fl_fail(err, FL_EINVAL, "%s: no BPE model (model.vocab and model.merges)", path);
    } else {
        t = tokenizer_new(json_object_size(vocab) + 16);
        rc = fill_vocab(t, vocab, path, err);
        size_t n = json_array_size(merges);
        for (size_t i = 0; rc == 0 && i < n && i < CLIP_MERGES_USED; i++) {
            json_t *m = json_array_get(merges, i);
            const char *a = NULL, *b = NULL;
            size_t la = 0, lb = 0;
            if (json_is_string(m)) {
                const char *s = json_string_value(m), *sp = strchr(s, ' ');
                if (sp && sp != s && sp[1] && !strchr(sp + 1, ' ')) {
                    a = s, la = (size_t)(sp - s), b = sp + 1, lb = strlen(sp + 1);
                }
            } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                       json_is_string(json_array_get(m, 1))) {
                a = json_string_value(json_array_get(m, 0)), la = strlen(a);
                b = json_string_value(json_array_get(m, 1)), lb = strlen(b);
            }
            if (!a || !la || !lb) rc = fl_fail(err, FL_EINVAL, "%s: merge %zu is not a pair of symbols", path, i);
            else add_merge(t, a, la, b, lb);
        }
        if (rc == 0 && t->n_merges == 0) rc = fl_fail(err, FL_EINVAL, "%s: no merges", path);
        if (rc == 0) rc = finish(t, path, err);
    }
    json_decref(root);
    if (rc != 0) {
        fl_clip_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

static bool is_dir(const char *path);
static bool exists(const char *path);

int fl_clip_tokenizer_load(const char *path, fl_clip_tokenizer **out, fl_error *err) {
    *out = NULL;
    char vocab[4096], merges[4096], tj[4096];
    if (!is_dir(path)) {
        if (!exists(path)) return fl_fail(err, FL_ENOTFOUND, "%s: no such tokenizer file", path);
        return from_tokenizer_json(path, out, err);
    }
    snprintf(vocab, sizeof vocab, "%s/vocab.json", path);
    snprintf(merges, sizeof merges, "%s/merges.txt", path);
    snprintf(tj, sizeof tj, "%s/tokenizer.json", path);
    if (!exists(vocab) || !exists(merges)) {
        if (exists(tj)) return from_tokenizer_json(tj, out, err);
        return fl_fail(err, FL_ENOTFOUND, "%s: no vocab.json + merges.txt or tokenizer.json", path);
    }
    unsigned char *vd = NULL, *md = NULL;
    size_t vs = 0, ms = 0;
    if (fl_read_file(vocab, CLIP_MAX_FILE, &vd, &vs, err) != 0) return fl_fail_prefix(err, "%s", vocab);
    if (fl_read_file(merges, CLIP_MAX_FILE, &md, &ms, err) != 0) {
        free(vd);
        return fl_fail_prefix(err, "%s", merges);
    }
    int rc = fl_clip_tokenizer_from_memory((const char *)vd, vs, (const char *)md, ms, path, out, err);
    free(vd);
    free(md);
    return rc;
}

int32_t fl_clip_tokenizer_vocab_size(const fl_clip_tokenizer *t) { return t->vocab_size; }
int32_t fl_clip_tokenizer_bos(const fl_clip_tokenizer *t) { return t->bos; }
int32_t fl_clip_tokenizer_eos(const fl_clip_tokenizer *t) { return t->eos; }
bool fl_clip_tokenizer_is_builtin_vocab(const fl_clip_tokenizer *t) { return t->builtin; }
const char *fl_clip_tokenizer_hash(const fl_clip_tokenizer *t) { return t->hash; }

/* ---- BPE of one word -------------------------------------------------------------------------- */

typedef struct heap_item {
    int32_t rank, pos;
} heap_item;

typedef struct token_list {
    int32_t *ids;
    size_t n, cap, limit;
} token_list;

static void push_token(token_list *l, int32_t id) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 128;
        l->ids = fl_xrealloc(l->ids, l->cap * sizeof *l->ids);
    }
    l->ids[l->n++] = id;
}

static bool heap_less(heap_item a, heap_item b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(heap_item *h, size_t *n, heap_item it) {
    size_t i = (*n)++;
    h[i] = it;
    while (i > 0 && heap_less(h[i], h[(i - 1) / 2])) {
        heap_item tmp = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
}

static heap_item heap_pop(heap_item *h, size_t *n) {
    heap_item top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && heap_less(h[l], h[m])) m = l;
        if (r < *n && heap_less(h[r], h[m])) m = r;
        if (m == i) break;
        heap_item tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
    return top;
}

static void bpe_word(const fl_clip_tokenizer *t, const unsigned char *w, size_t n, token_list *out) {
    if (n == 0) return;
    int32_t *sym = fl_xmalloc(n * sizeof *sym), *next = fl_xmalloc(n * sizeof *next), *prev = fl_xmalloc(n * sizeof *prev);
    for (size_t i = 0; i < n; i++) {
        sym[i] = i + 1 == n ? t->byte_sym_end[w[i]] : t->byte_sym[w[i]];
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    heap_item *heap = fl_xmalloc((2 * n + 1) * sizeof *heap);
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t r = pair_rank(t, sym[i], sym[i + 1]);
        if (r >= 0) heap_push(heap, &hn, (heap_item){r, (int32_t)i});
    }
    while (hn > 0) {
        heap_item it = heap_pop(heap, &hn);
        int32_t i = it.pos, j = next[i];
        /* stale: the left symbol was merged away, or the pair changed */
        if (sym[i] < 0 || j < 0 || pair_rank(t, sym[i], sym[j]) != it.rank) continue;
        sym[i] = t->merge_out[it.rank];
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        if (prev[i] >= 0) {
            int32_t r = pair_rank(t, sym[prev[i]], sym[i]);
            if (r >= 0) heap_push(heap, &hn, (heap_item){r, prev[i]});
        }
        if (next[i] >= 0) {
            int32_t r = pair_rank(t, sym[i], sym[next[i]]);
            if (r >= 0) heap_push(heap, &hn, (heap_item){r, i});
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i]) push_token(out, t->sym_id[sym[i]] >= 0 ? t->sym_id[sym[i]] : t->unk);
    free(sym);
    free(next);
    free(prev);
    free(heap);
}

/* ---- normalization and the split pattern -------------------------------------------------------- */

static bool at_text(const uint32_t *cps, size_t n, size_t i, const char *s) {
    size_t k = strlen(s);
    if (i + k > n) return false;
    for (size_t j = 0; j < k; j++)
        if (cps[i + j] != (unsigned char)s[j]) return false;
    return true;
}

static void emit_word(const fl_clip_tokenizer *t, const uint32_t *cps, size_t a, size_t b, token_list *out,
                      unsigned char *buf) {
    size_t n = 0;
    for (size_t i = a; i < b; i++) n += (size_t)fl_text_encode_utf8(cps[i], (char *)buf + n);
    bpe_word(t, buf, n, out);
}

/* One piece of text between literal special tokens. */
static void tokenize_chunk(const fl_clip_tokenizer *t, const char *text, size_t len, token_list *out) {
    if (len == 0 || out->n >= out->limit) return;
    uint32_t *cps = fl_xmalloc(len * sizeof *cps);
    long n = fl_text_decode_utf8(text, len, cps, NULL);
    FL_CHECK(n >= 0);
    /* clean and space the CJK ideographs */
    uint32_t *a = fl_xmalloc((size_t)(3 * n + 1) * sizeof *a);
    size_t m = 0;
    for (long i = 0; i < n; i++) {
        uint32_t c = cps[i];
        if (fl_uni_is_removed(c)) continue;
        if (c == '\t' || c == '\n' || c == '\r' || (fl_uni_is_space(c) && c != 0x2028 && c != 0x2029)) c = ' ';
        if (fl_uni_is_cjk(c)) {
            a[m++] = ' ';
            a[m++] = c;
            a[m++] = ' ';
        } else {
            a[m++] = c;
        }
    }
    uint32_t *b = fl_xmalloc((4 * m + 1) * sizeof *b);
    size_t k = fl_uni_nfc(a, m, b);
    uint32_t *l = fl_xmalloc((3 * k + 1) * sizeof *l);
    size_t L = fl_uni_lower_str(b, k, l);
    unsigned char *buf = fl_xmalloc(4 * L + 8);
    size_t i = 0;
    while (i < L && out->n < out->limit) {
        uint32_t c = l[i];
        if (fl_uni_is_space(c) || c == ' ') {
            i++;
            continue;
        }
        if (at_text(l, L, i, BOS_TEXT)) {
            push_token(out, t->bos);
            i += strlen(BOS_TEXT);
            continue;
        }
        if (at_text(l, L, i, EOS_TEXT)) {
            push_token(out, t->eos);
            i += strlen(EOS_TEXT);
            continue;
        }
        if (c == '\'' && i + 1 < L) {
            static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
            size_t hit = 0;
            for (int q = 0; q < 7 && !hit; q++)
                if (at_text(l, L, i, contractions[q])) hit = strlen(contractions[q]);
            if (hit) {
                emit_word(t, l, i, i + hit, out, buf);
                i += hit;
                continue;
            }
        }
        size_t j = i + 1;
        if (fl_uni_is_letter(c)) {
            while (j < L && fl_uni_is_letter(l[j])) j++;
        } else if (!fl_uni_is_number(c)) {
            while (j < L && l[j] != ' ' && !fl_uni_is_space(l[j]) && !fl_uni_is_letter(l[j]) && !fl_uni_is_number(l[j]))
                j++;
        }
        emit_word(t, l, i, j, out, buf);
        i = j;
    }
    free(cps);
    free(a);
    free(b);
    free(l);
    free(buf);
}

int fl_clip_tokenize(const fl_clip_tokenizer *t, const char *text, size_t len, int32_t *ids, int max_length,
                     int32_t pad_id, fl_error *err) {
    FL_CHECK(max_length >= 2);
    if (fl_text_check_prompt(text, len, err) != 0) return -1;
    token_list out = {NULL, 0, 0, (size_t)max_length - 2};
    /* literal special tokens (exact case) split the text first, as the reference does */
    size_t start = 0, i = 0;
    while (i < len && out.n < out.limit) {
        const char *sp = NULL;
        if (text[i] == '<') {
            if (len - i >= strlen(BOS_TEXT) && !memcmp(text + i, BOS_TEXT, strlen(BOS_TEXT))) sp = BOS_TEXT;
            else if (len - i >= strlen(EOS_TEXT) && !memcmp(text + i, EOS_TEXT, strlen(EOS_TEXT))) sp = EOS_TEXT;
        }
        if (!sp) {
            i++;
            continue;
        }
        tokenize_chunk(t, text + start, i - start, &out);
        if (out.n < out.limit) push_token(&out, sp == BOS_TEXT ? t->bos : t->eos);
        i += strlen(sp);
        start = i;
    }
    if (out.n < out.limit) tokenize_chunk(t, text + start, len - start, &out);
    size_t count = out.n < out.limit ? out.n : out.limit;
    ids[0] = t->bos;
    for (size_t k = 0; k < count; k++) ids[1 + k] = out.ids[k];
    ids[1 + count] = t->eos;
    for (int k = (int)count + 2; k < max_length; k++) ids[k] = pad_id;
    free(out.ids);
    return (int)count + 2;
}

/* ---- files ------------------------------------------------------------------------------------ */

#include <sys/stat.h>

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
