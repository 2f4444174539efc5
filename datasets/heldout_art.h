/*
 * heldout_art.h — clip art of Debian's openclipart-png that the built-in image encoder never
 * trains on, because identity evaluation measures with it: the sources of the bundled demo
 * subjects (datasets/demo/: a pig mascot, a logo mark, a drink bottle and its black-and-white
 * variant) and the distractor subjects the demo subjects are told apart from in the demo-subject
 * acceptance (benchmarks/eval_demo_subjects.sh). Paths are relative to the package's png/ folder.
 */
#ifndef FL_DATASETS_HELDOUT_ART_H
#define FL_DATASETS_HELDOUT_ART_H

#include <stddef.h>

/* The demo subjects' sources. */
size_t fl_heldout_demo_sources(const char *const **out);
/* The distractor subjects' sources. */
size_t fl_heldout_distractor_sources(const char *const **out);

#endif
