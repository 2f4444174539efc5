/*
 * unicode_data.h — the Unicode tables the CLIP tokenizer needs (generated into unicode_data.c by
 * scripts/make_unicode_tables.py; see there for what each holds) and the lookups over them:
 * character classes, Python's str.lower() (final sigma included) and NFC.
 */
#ifndef FL_MODELS_TEXT_UNICODE_DATA_H
#define FL_MODELS_TEXT_UNICODE_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fl_uni_range {
    uint32_t lo, hi; /* inclusive */
} fl_uni_range;

typedef struct fl_uni_lower {
    uint32_t cp;
    uint32_t len;
    uint32_t out[3];
} fl_uni_lower;

typedef struct fl_uni_ccc {
    uint32_t lo, hi;
    uint32_t ccc;
} fl_uni_ccc;

typedef struct fl_uni_decomp {
    uint32_t cp;
    uint32_t len;
    uint32_t out[4];
} fl_uni_decomp;

typedef struct fl_uni_compose {
    uint32_t first, second, composite;
} fl_uni_compose;

extern const char fl_uni_version[];
extern const fl_uni_range fl_uni_letter[], fl_uni_number[], fl_uni_removed[], fl_uni_space[], fl_uni_cased[],
    fl_uni_case_ignorable[];
extern const size_t fl_uni_letter_count, fl_uni_number_count, fl_uni_removed_count, fl_uni_space_count,
    fl_uni_cased_count, fl_uni_case_ignorable_count;
extern const fl_uni_lower fl_uni_lower_map[];
extern const size_t fl_uni_lower_count;
extern const fl_uni_ccc fl_uni_ccc_map[];
extern const size_t fl_uni_ccc_count;
extern const fl_uni_decomp fl_uni_decomp_map[];
extern const size_t fl_uni_decomp_count;
extern const fl_uni_compose fl_uni_compose_map[];
extern const size_t fl_uni_compose_count;

bool fl_uni_is_letter(uint32_t cp);  /* \p{L} */
bool fl_uni_is_number(uint32_t cp);  /* \p{N} */
bool fl_uni_is_removed(uint32_t cp); /* dropped by the text cleaning */
bool fl_uni_is_space(uint32_t cp);   /* a word separator after cleaning */
bool fl_uni_is_cjk(uint32_t cp);     /* the CJK ideograph blocks the reference puts spaces around */

/* NFC of cps[0, n) into out (capacity at least 4 n: composition exclusions stay decomposed, so
 * NFC can lengthen a string). Returns the new length. */
size_t fl_uni_nfc(const uint32_t *cps, size_t n, uint32_t *out);
/* Python's str.lower() of cps[0, n) into out (capacity at least 3 n). Returns the new length. */
size_t fl_uni_lower_str(const uint32_t *cps, size_t n, uint32_t *out);

#endif
