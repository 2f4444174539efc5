/*
 * emoji_styles.h — the same emoji drawn by two packaged sets, matched by code point: the Noto
 * emoji of Debian's `ruby-tanuki-emoji` (Apache-2.0) and the EmojiOne 2 art of `ruby-gemojione`
 * (CC-BY 4.0). The built-in encoder trains on part of the Noto set and is measured on the rest:
 * for a held-out code point, is the nearest EmojiOne drawing (among every held-out one) the same
 * emoji? (cross-style retrieval, eval/retrieval.h).
 *
 * Keys: a file's code-point sequence in lower-case hex without leading zeros, joined by '-', with
 * the presentation selector FE0F and the zero-width joiner 200D dropped (the two sets spell them
 * differently): tanuki "emoji_u1f468_200d_1f469.png" and gemojione "1F468-1F469.png" are both
 * "1f468-1f469"; a tanuki flag "JP.png" is its regional-indicator pair "1f1ef-1f1f5".
 *
 * Split: a key is held out of training when the 32-bit FNV-1a hash of its text is even: about
 * half of the code points, fixed by the key alone.
 */
#ifndef FL_DATASETS_EMOJI_STYLES_H
#define FL_DATASETS_EMOJI_STYLES_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

#define FL_TANUKI_EMOJI_IMAGES "app/assets/images/tanuki_emoji"
#define FL_GEMOJIONE_GLOB "/usr/share/rubygems-integration/all/gems/gemojione-*"
#define FL_GEMOJIONE_IMAGES "assets/png"
#define FL_TANUKI_GLOB "/usr/share/rubygems-integration/all/gems/tanuki_emoji-*"
#define FL_EMOJI_KEY_MAX 96

/* The key of a tanuki_emoji file name ("emoji_u1f600.png", "JP.png") or a gemojione one
 * ("1F600.png", "0023-20E3.png"); false when the name is neither. */
bool fl_emoji_key_tanuki(const char *file_name, char key[FL_EMOJI_KEY_MAX]);
bool fl_emoji_key_gemojione(const char *file_name, char key[FL_EMOJI_KEY_MAX]);
/* The split (see above). */
bool fl_emoji_heldout(const char *key);

/* The image folder of the newest installed version of a gem (glob of the gem directory, then
 * the images' subfolder), or false when absent. */
bool fl_emoji_find_dir(const char *gem_glob, const char *images_subdir, char *out, size_t cap);

/* One emoji in both styles. */
typedef struct fl_emoji_pair {
    char key[FL_EMOJI_KEY_MAX];
    char *noto_path;     /* malloc'ed */
    char *emojione_path; /* malloc'ed */
} fl_emoji_pair;

/* Every key present in both folders (sorted by key), restricted to the held-out split when
 * heldout_only. FL_ENOTFOUND when a folder cannot be read. */
int fl_emoji_pairs(const char *noto_dir, const char *emojione_dir, bool heldout_only, fl_emoji_pair **out, size_t *n,
                   fl_error *err);
void fl_emoji_pairs_free(fl_emoji_pair *pairs, size_t n);

#endif
