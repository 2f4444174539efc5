/*
 * subjects.h — the bundled demo subjects: three brand-like subjects (a mascot, a logo mark and a
 * product) made from public-domain openclipart files that the pretraining set holds out, so the
 * embedded model has never seen them and an adapter has something to teach it.
 *
 * Beside them, seven distractor subjects (a duck, a cat, a house, a bus, a mushroom, a hazard sign,
 * a cactus) from other openclipart files: identity evaluation tells an adapter's subject apart from
 * them (`flashlora data subjects --distractors` renders them; they are not committed). The built-in
 * image encoder never trains on any of these sources.
 *
 * Each subject is a folder of small PNGs with `.txt` sidecar captions (the image-set layout
 * `flashlora train --images` reads): the source drawn at varied positions and scales over
 * varied backgrounds, a few partly occluded. fl_subject_build renders one from its source file;
 * the rendered folders are committed (datasets/demo/), so neither the demo nor the tests need the
 * clip-art package.
 */
#ifndef FL_DATASETS_SUBJECTS_H
#define FL_DATASETS_SUBJECTS_H

#include <stddef.h>

#include "core/error.h"

typedef struct fl_subject {
    const char *name;        /* "mascot", "logo", "product": the folder and --subject name */
    const char *trigger;     /* the adapter's trigger word, a made-up brand name */
    const char *class_words; /* what it is, for captions: "pig mascot" */
    const char *source;      /* openclipart-png path (relative to png/) it is drawn from */
    const char *also_held_out; /* another source held out with it (a variant of the same art), or NULL */
    const char *prompt;      /* demo prompt, with [trigger] */
} fl_subject;

/* The bundled subjects, in a fixed order. */
size_t fl_subject_count(void);
const fl_subject *fl_subject_at(size_t i);
const fl_subject *fl_subject_find(const char *name);

/* Every openclipart path the pretraining set must hold out (the sources and their variants);
 * returns the count and fills paths when not NULL. */
size_t fl_subject_held_out(const char **paths, size_t cap);

/* The distractor subjects (trigger NULL: captions name only what they are), in a fixed order. */
size_t fl_distractor_count(void);
const fl_subject *fl_distractor_at(size_t i);

/* Every openclipart path the built-in image encoder holds out: the demo subjects' (as
 * fl_subject_held_out) and the distractors' sources. */
size_t fl_eval_held_out(const char **paths, size_t cap);

/* Renders subject s from the clip-art file at source_path into out_dir/NN.png + NN.txt: count
 * images (at most 64) of size x size pixels, deterministic for a given seed, and SOURCE.txt
 * naming the source and its license. */
int fl_subject_build(const fl_subject *s, const char *source_path, const char *out_dir, int count, int size,
                     unsigned long long seed, fl_error *err);

#endif
