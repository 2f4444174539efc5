/*
 * unicode.c — lookups over the generated tables of unicode_data.c: character classes by binary
 * search over ranges, Python's str.lower() with the final-sigma rule, and NFC (canonical
 * decomposition, canonical ordering, canonical composition; Hangul syllables algorithmically).
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "models/text/unicode_data.h"

static bool in_ranges(const fl_uni_range *r, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return true;
    }
    return false;
}

bool fl_uni_is_letter(uint32_t cp) { return in_ranges(fl_uni_letter, fl_uni_letter_count, cp); }
bool fl_uni_is_number(uint32_t cp) { return in_ranges(fl_uni_number, fl_uni_number_count, cp); }
bool fl_uni_is_removed(uint32_t cp) { return in_ranges(fl_uni_removed, fl_uni_removed_count, cp); }
bool fl_uni_is_space(uint32_t cp) { return in_ranges(fl_uni_space, fl_uni_space_count, cp); }

bool fl_uni_is_cjk(uint32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* ---- lower case ----------------------------------------------------------------------------- */

static const fl_uni_lower *find_lower(uint32_t cp) {
    size_t lo = 0, hi = fl_uni_lower_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (fl_uni_lower_map[mid].cp < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < fl_uni_lower_count && fl_uni_lower_map[lo].cp == cp ? &fl_uni_lower_map[lo] : NULL;
}

static bool is_cased(uint32_t cp) { return in_ranges(fl_uni_cased, fl_uni_cased_count, cp); }
static bool is_ignorable(uint32_t cp) { return in_ranges(fl_uni_case_ignorable, fl_uni_case_ignorable_count, cp); }

/* U+03A3 at i is final: a cased character before it and none after it (case-ignorable ones
 * skipped both ways), as CPython decides. */
static bool final_sigma(const uint32_t *cps, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && is_ignorable(cps[j - 1])) j--;
    if (j == 0 || !is_cased(cps[j - 1])) return false;
    size_t k = i + 1;
    while (k < n && is_ignorable(cps[k])) k++;
    return k == n || !is_cased(cps[k]);
}

size_t fl_uni_lower_str(const uint32_t *cps, size_t n, uint32_t *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = cps[i];
        if (cp == 0x3A3) {
            out[o++] = final_sigma(cps, n, i) ? 0x3C2 : 0x3C3;
            continue;
        }
        const fl_uni_lower *m = cp < 0x80 ? NULL : find_lower(cp);
        if (cp < 0x80) out[o++] = cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
        else if (!m) out[o++] = cp;
        else
            for (uint32_t k = 0; k < m->len; k++) out[o++] = m->out[k];
    }
    return o;
}

/* ---- NFC ------------------------------------------------------------------------------------ */

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28,
       NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static uint32_t ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = fl_uni_ccc_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < fl_uni_ccc_map[mid].lo) hi = mid;
        else if (cp > fl_uni_ccc_map[mid].hi) lo = mid + 1;
        else return fl_uni_ccc_map[mid].ccc;
    }
    return 0;
}

static const fl_uni_decomp *find_decomp(uint32_t cp) {
    size_t lo = 0, hi = fl_uni_decomp_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (fl_uni_decomp_map[mid].cp < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < fl_uni_decomp_count && fl_uni_decomp_map[lo].cp == cp ? &fl_uni_decomp_map[lo] : NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = fl_uni_compose_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const fl_uni_compose *c = &fl_uni_compose_map[mid];
        if (c->first < a || (c->first == a && c->second < b)) lo = mid + 1;
        else hi = mid;
    }
    if (lo < fl_uni_compose_count && fl_uni_compose_map[lo].first == a && fl_uni_compose_map[lo].second == b)
        return fl_uni_compose_map[lo].composite;
    return 0;
}

size_t fl_uni_nfc(const uint32_t *cps, size_t n, uint32_t *out) {
    /* decomposition: at most 4 code points per input (Hangul: 3) */
    uint32_t *d = fl_xmalloc((n ? n : 1) * 4 * sizeof(uint32_t));
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = cps[i];
        if (cp >= SBASE && cp < SBASE + SCOUNT) {
            uint32_t s = cp - SBASE;
            d[m++] = LBASE + s / NCOUNT;
            d[m++] = VBASE + (s % NCOUNT) / TCOUNT;
            if (s % TCOUNT) d[m++] = TBASE + s % TCOUNT;
            continue;
        }
        const fl_uni_decomp *dec = cp < 0xC0 ? NULL : find_decomp(cp);
        if (!dec) d[m++] = cp;
        else
            for (uint32_t k = 0; k < dec->len; k++) d[m++] = dec->out[k];
    }
    /* canonical ordering: stable insertion sort of each run of non-starters by class */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = ccc_of(d[i]);
        if (c == 0) continue;
        size_t j = i;
        uint32_t cp = d[i];
        while (j > 0 && ccc_of(d[j - 1]) > c) {
            d[j] = d[j - 1];
            j--;
        }
        d[j] = cp;
    }
    /* composition */
    size_t o = 0;
    long starter = -1; /* index in out of the last starter */
    uint32_t last_ccc = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t cp = d[i], c = ccc_of(cp);
        if (starter >= 0) {
            bool blocked = o > (size_t)starter + 1 && (last_ccc == 0 || last_ccc >= c);
            uint32_t comp = blocked ? 0 : compose_pair(out[starter], cp);
            if (comp) {
                out[starter] = comp;
                continue;
            }
        }
        if (c == 0) {
            starter = (long)o;
            last_ccc = 0;
        } else {
            last_ccc = c;
        }
        out[o++] = cp;
    }
    free(d);
    return o;
}
