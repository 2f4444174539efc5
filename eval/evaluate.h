/*
 * evaluate.h — one identity evaluation: for each adapter, generate with fixed prompts and seeds
 * (and the base model on the same prompts and seeds beside it), embed every image and every
 * reference, and score (eval/metrics.h). The whole of `flashlora eval`, as a library call the CLI
 * and the service's evaluation jobs share.
 *
 * Subjects: each adapter's own references (default: its training images) are its subject; the
 * other adapters' references and every distractor folder are the subjects it must be told apart
 * from. Prompts carry `[trigger]`, replaced by the adapter's trigger word for both its images and
 * the base model's (the base model sees the word too, so the comparison is the adapter's doing).
 * Image i of prompt p and seed s is sampled from seed s for adapter and base alike.
 *
 * Generation is batched (models/sampler.h): requests of every adapter and of the base model share
 * batches, each sample applying only its own adapter, so an image is the one it would be alone.
 * Adapters given as files are attached for the run and detached after it; adapters given as set
 * ids are already attached (the service's adapter cache) and left so.
 *
 * The result is a JSON object (described in README's evaluation section and serve/openapi.yaml's
 * Evaluation schema) plus the images, for the HTML report (eval/report.h).
 */
#ifndef FL_EVAL_EVALUATE_H
#define FL_EVAL_EVALUATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/error.h"
#include "datasets/imageset.h"
#include "eval/encoders.h"
#include "eval/metrics.h"
#include "models/flux.h"

#define FL_EVAL_MAX_ADAPTERS FL_FLUX_MAX_ADAPTERS
#define FL_EVAL_MAX_DISTRACTORS 64
#define FL_EVAL_MAX_PROMPTS 256
#define FL_EVAL_MAX_PROMPT_BYTES 2000
#define FL_EVAL_MAX_SEEDS 64
#define FL_EVAL_MAX_REFS 200 /* reference images per subject */

/* Reference images of one subject, decoded. */
typedef struct fl_eval_refs {
    char name[128];   /* shown in the report */
    char source[512]; /* where they came from (a folder, "upload", "training set") */
    fl_image *images;
    char **names;     /* file names, for the report */
    int n;
} fl_eval_refs;

/* Loads a subject's references from a folder or archive (datasets/imageset.h rules, at most
 * FL_EVAL_MAX_REFS images, each shrunk to at most 256 px as it is decoded). A source without a
 * usable image is FL_EINVAL "<name>: no usable reference image in <source> (...)". */
int fl_eval_refs_load(const char *name, const char *source, fl_eval_refs *out, fl_error *err);
/* The same from archive bytes in memory (an upload). */
int fl_eval_refs_load_memory(const char *name, const void *bytes, size_t n, fl_eval_refs *out, fl_error *err);
void fl_eval_refs_free(fl_eval_refs *r);

typedef struct fl_eval_adapter {
    char label[128];     /* what the report calls it: a registry id or name, or the file */
    const char *path;    /* adapter file to attach for the run, or NULL when set_id is given */
    int set_id;          /* an adapter already attached to the model (-1: attach path) */
    char trigger[128];   /* replaces [trigger] in the prompts ("" removes it) */
    float scale;         /* multiplier (1) */
    const fl_eval_refs *refs;  /* its subject (required) */
    const fl_eval_refs *train; /* training images for the copy rate (NULL: refs) */
    bool refs_in_training;     /* recorded in the report */
} fl_eval_adapter;

/* Reads a prompt file: one prompt per line, blank lines and lines starting with '#' skipped,
 * surrounding whitespace trimmed. More than max_prompts prompts, a line over
 * FL_EVAL_MAX_PROMPT_BYTES bytes, a file over 1 MiB, invalid UTF-8 or no prompt at all is
 * FL_EINVAL / FL_ELIMIT with one line (the file is never read past its limits). */
int fl_eval_read_prompts(const char *path, int max_prompts, char ***out, int *n, fl_error *err);
void fl_eval_free_prompts(char **prompts, int n);
/* The default prompt set: 8 templated prompts with [trigger] (recontextualization, style,
 * property change). */
const char *const *fl_eval_default_prompts(int *n);

typedef struct fl_eval_config {
    const fl_eval_adapter *adapters;
    int n_adapters;
    const fl_eval_refs *distractors;
    int n_distractors;
    const char *const *prompts;
    int n_prompts;
    const uint64_t *seeds;
    int n_seeds;
    int width, height, steps, max_text_tokens;
    float guidance;
    int batch;        /* images per sampling batch (default 8) */
    bool with_base;   /* generate the base model's images (default true) */
    int bootstrap;    /* resamples for the intervals (default 1000; 0: none) */
    uint64_t bootstrap_seed;
    const char *model_label;  /* recorded in the JSON: the model file or name */
    const char *model_sha256; /* "" when unknown */
    /* Progress: stage "generate" (images done of total), "embed", "score"; may be NULL. */
    void (*progress)(void *arg, const char *stage, int done, int total);
    /* Polled between sampling steps: true stops the run (FL_EUNAVAILABLE "stopped"). */
    bool (*should_stop)(void *arg);
    void *arg;
} fl_eval_config;

fl_eval_config fl_eval_config_default(void);

/* One adapter's images and scores. */
typedef struct fl_eval_adapter_result {
    float **gen, **base; /* [n_prompts * n_seeds] images [height, width, 3] in [-1, 1]; index p * n_seeds + s */
    int n_images;
    fl_eval_scores scores;
} fl_eval_adapter_result;

typedef struct fl_eval_result {
    json_t *json; /* the report (owned) */
    fl_eval_adapter_result *adapters;
    int n_adapters;
    int width, height;
    float **images_all; /* every image (the adapters' gen/base point into it) */
    int n_images_all;
} fl_eval_result;

/* Runs the evaluation on m with encoder enc. Checks the configuration first (counts, sizes,
 * every adapter's references) and fails with one line before generating anything. */
int fl_eval_run(fl_flux_model *m, fl_eval_encoder *enc, const fl_eval_config *cfg, fl_eval_result *out,
                fl_error *err);
void fl_eval_result_free(fl_eval_result *r);

#endif
