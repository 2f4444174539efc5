/*
 * embedded.h — where the embedded default model and the bundled demo subjects are found.
 *
 * The repository ships the embedded model (models/embedded/flashlora-embedded.safetensors, a
 * small Flux-architecture model in the pixel space trained by `flashlora pretrain`) and the demo
 * subjects (datasets/demo/). A built binary finds them without a path: fl_data_path looks in
 *   1. $FLASHLORA_DATA_DIR/<rel>                 (an explicit override)
 *   2. <dir of the executable>/../share/flashlora/<rel>   (an installed flashlora)
 *   3. <the source tree the binary was built from>/<rel>  (a build directory of a checkout)
 * and returns the first that exists. Commands that take --model use the embedded model when it
 * is not given and say so in one line.
 */
#ifndef FL_MODELS_EMBEDDED_H
#define FL_MODELS_EMBEDDED_H

#include <stddef.h>

#include "core/error.h"

#define FL_EMBEDDED_MODEL_REL "models/embedded/flashlora-embedded.safetensors"
#define FL_DEMO_SUBJECTS_REL "datasets/demo"

/* The path of rel (a file or folder of the project's data) in the first place that has it, into
 * out (cap bytes); FL_ENOTFOUND naming the places tried when none has it. */
int fl_data_path(const char *rel, char *out, size_t cap, fl_error *err);

/* fl_data_path of the embedded model. */
int fl_embedded_model_path(char *out, size_t cap, fl_error *err);

/* The image side a model was trained at: its "resolution" metadata (1..4096), else fallback (a
 * file without it, or one that cannot be read). */
int fl_model_resolution(const char *path, int fallback);

/* For a command given no --model: resolves the embedded model into out and prints the one line
 * "<command>: no --model given: using the embedded model <path> (<summary>)" on stderr. */
int fl_default_model(const char *command, char *out, size_t cap, fl_error *err);

#endif
