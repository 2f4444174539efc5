/*
 * captions.h — the caption a training image is paired with, and caption dropout.
 *
 * Captions come from sidecar files (see imageset.h) or from a default template such as
 * "a photo of [trigger]". fl_caption_resolve substitutes the adapter's trigger word for the
 * `[trigger]` placeholder and makes sure a subject adapter (logo, product, mascot, character)
 * always sees its trigger word; a style adapter gets no trigger insertion and its placeholders
 * are removed cleanly. fl_caption_dropout draws whether a step trains on the empty caption.
 */
#ifndef FL_DATASETS_CAPTIONS_H
#define FL_DATASETS_CAPTIONS_H

#include <stdbool.h>

#include "core/rng.h"

/* The placeholder replaced by the trigger word. */
#define FL_CAPTION_PLACEHOLDER "[trigger]"
/* Used when default_caption is NULL. */
#define FL_CAPTION_DEFAULT "a photo of [trigger]"

/* Build the caption to train with (malloc'ed; the caller frees it):
 *  - raw is the image's own caption; NULL or all-whitespace uses default_caption (NULL uses
 *    FL_CAPTION_DEFAULT);
 *  - subject adapters (is_style false) with a non-empty trigger: every `[trigger]` becomes the
 *    trigger, and when the trigger does not then appear as a whole word (case-sensitive; a word
 *    boundary is anything but an ASCII letter, digit, '_' or a non-ASCII byte) "TRIGGER, " is
 *    prepended;
 *  - style adapters (is_style true), or an empty/NULL trigger: every `[trigger]` is removed and the
 *    text tidied (runs of spaces collapsed, no space before , . ; : ! ?, no doubled commas, no
 *    leading or trailing separators); nothing is inserted.
 * Leading and trailing whitespace is trimmed in every case. */
char *fl_caption_resolve(const char *raw, const char *trigger, const char *default_caption, bool is_style);

/* True with probability p (clamped to [0, 1]; NaN counts as 0): train this step on the empty
 * caption. Always consumes exactly one draw from rng, so enabling dropout does not shift the
 * random stream of anything drawn after it. */
bool fl_caption_dropout(fl_rng *rng, float p);

#endif
