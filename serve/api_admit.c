/*
 * api_admit.c — admission: what a training or generation job will cost, decided before it is
 * accepted (DESIGN.md §10: every request's cost is bounded before work starts).
 *
 * Two limits, each named with its figure in the refusal:
 *   memory  the job's step planned on a skeleton of the base model (fl_flux_estimate_memory:
 *           weights, adapters, optimizer state, activations, inputs) plus the host buffers the
 *           worker fills for it (decoded images, prepared examples and token caches for a
 *           training; noise, velocity and image buffers for a generation), against
 *           --max-job-memory;
 *   work    pixels x steps x images (generation) or pixels x steps x batch (training), against
 *           --max-generation-work / --max-training-work, which bound a job's time.
 * On a FLUX.1 model the workers also hold the text encoders and the autoencoder, and a job runs
 * T5 + CLIP and autoencoder passes beside the transformer's step: their weights and the larger of
 * those passes (models/pipeline.h fl_pipeline_costs) are added to the memory figure, and text rows
 * are the model's T5 length.
 * A refusal is HTTP 422 with code "limit_exceeded". An uploaded set is sized from its images'
 * headers; a set behind a URL is sized for the most images the loader accepts, and its decoding
 * gets a pixel budget: what the memory limit leaves after everything else. Either way the budget
 * is stored in the request for the worker (max_decoded_pixels). A generation request records how
 * many images of its size a batch may hold within the limit (batch_images), so that batching
 * never takes a worker past it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/threads.h"
#include "serve/api_internal.h"
#include "trainer/run.h"

#define TEXT_TOKENS_TRAINING 32 /* trainer/trainer.h's default, which the workers use */
#define DECODED_PIXEL_BYTES 12  /* RGB floats of a decoded image */
#define MIN_DECODE_PIXELS ((int64_t)4 << 20) /* a URL set gets at least this budget or is refused */

size_t fl_api_default_job_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return (size_t)4 << 30;
    return (size_t)pages * (size_t)page / 2;
}

static const char *human(size_t bytes, char *buf, size_t cap) {
    if (bytes >= (size_t)1 << 30) snprintf(buf, cap, "%.1f GiB", (double)bytes / (double)(1u << 30));
    else if (bytes >= (size_t)1 << 20) snprintf(buf, cap, "%.1f MiB", (double)bytes / (double)(1u << 20));
    else snprintf(buf, cap, "%.1f KiB", (double)bytes / 1024.0);
    return buf;
}

/* The refusal for memory: the total, its parts, and the limit. */
static int over_memory(const fl_api *api, const fl_flux_memory *m, size_t host, size_t need, fl_error *err) {
    char t[32], lim[32], w[32], a[32], act[32], h[32];
    return fl_fail(err, FL_ELIMIT,
                   "the job needs %s of memory (weights %s, adapters and optimizer %s, activations %s, images and "
                   "buffers %s), over the %s limit (--max-job-memory)",
                   human(need, t, sizeof t), human(m->weights, w, sizeof w), human(m->adapters + m->optimizer, a, sizeof a),
                   human(m->activations, act, sizeof act), human(host + m->inputs, h, sizeof h),
                   human(api->cfg.max_job_memory, lim, sizeof lim));
}

/* What the worker's device must hold plus, on a CPU worker (one memory), the host buffers. */
static size_t needed(const fl_api *api, const fl_flux_memory *m, size_t host) {
    return m->total + (api->cfg.job_device == FL_DEVICE_CPU ? host : 0);
}

/* FLUX.1: the text encoders' and autoencoder's weights and the larger of a prompt's encoding and
 * one autoencoder pass (encode for training, decode for generation) at width x height; 0 for a
 * pixel model. Folded into the step's weights and activations so the refusal names them. */
static void add_pipeline(const fl_api *api, bool decode, int width, int height, fl_flux_memory *m) {
    const fl_pipeline_costs *c = &api->cfg.pipeline_costs;
    size_t pass = fl_pipeline_costs_ae(c, decode, width, height);
    size_t extra = c->text_activations > pass ? c->text_activations : pass;
    m->weights += c->text_weights + c->ae_weights;
    if (extra > m->activations) {
        m->total += extra - m->activations;
        m->activations = extra;
    }
    m->total += c->text_weights + c->ae_weights;
}

/* Text rows per sample: the FLUX.1 T5 length the API encodes every request to, else the trainer's. */
static int training_text_tokens(const fl_api *api) {
    return api->cfg.pipeline_costs.text_weights ? api->cfg.max_text_tokens : TEXT_TOKENS_TRAINING;
}

int fl_api_admit_training(fl_api *api, fl_train_request *tr, const fl_imageset_summary *set, fl_error *err) {
    const fl_flux_params *p = &api->cfg.params;
    int patch = api->limits.patch;
    int64_t pixels = (int64_t)tr->resolution * tr->resolution;
    int rounds = fl_train_preview_rounds(tr->steps, tr->preview_every);
    if (rounds > FL_REQ_MAX_PREVIEWS)
        return fl_fail(err, FL_ELIMIT,
                       "field 'preview_every': %d steps give %d preview rounds, at most %d (preview_every %d or more)",
                       tr->steps, rounds, FL_REQ_MAX_PREVIEWS, (tr->steps - 1) / FL_REQ_MAX_PREVIEWS + 1);
    /* Each preview image is FL_TRAIN_PREVIEW_STEPS sampling steps of one image, counted as
     * training steps (a sampling step is a forward only: an overestimate, never an under-). */
    int64_t preview_steps = (int64_t)rounds * tr->preview_count * FL_TRAIN_PREVIEW_STEPS;
    int64_t work = pixels * ((int64_t)tr->steps * tr->batch_size + preview_steps);
    if (work > api->cfg.max_training_work)
        return fl_fail(err, FL_ELIMIT,
                       "the training's work is %" PRId64 " pixel-steps (%dx%d x (%d steps x batch %d + %" PRId64
                       " preview sampling steps)), over the limit of %" PRId64 " (--max-training-work)",
                       work, tr->resolution, tr->resolution, tr->steps, tr->batch_size, preview_steps,
                       api->cfg.max_training_work);
    fl_flux_job_shape shape = {.device = api->cfg.job_device,
                               .batch = tr->batch_size,
                               .image_tokens = (int64_t)(tr->resolution / patch) * (tr->resolution / patch),
                               .text_tokens = training_text_tokens(api),
                               .training = true,
                               .lora_rank = tr->rank,
                               .targets = tr->targets,
                               .threads = fl_threads_get()};
    fl_flux_memory m;
    if (fl_flux_estimate_memory(p, &shape, &m, err) != 0) {
        if (err && err->code == FL_EINVAL && tr->targets) return fl_fail_prefix(err, "field 'targets'");
        return -1;
    }
    add_pipeline(api, false, tr->resolution, tr->resolution, &m);
    /* Host buffers of the worker (trainer/run.c, trainer.c): the prepared examples (float RGB at
     * the resolution), their token caches and flipped copies, text rows, and one batch staged. */
    fl_imageset_limits defaults = fl_imageset_limits_default();
    size_t images = set ? set->images : defaults.max_images;
    size_t example = (size_t)pixels * 3 * sizeof(float);
    size_t text = (size_t)training_text_tokens(api) * (size_t)(p->context_in_dim + p->vec_in_dim) * sizeof(float);
    size_t host = images * (3 * example + text) + (size_t)tr->batch_size * (2 * example + text);
    /* The decoded set: known from the headers of an upload; a URL's gets what is left as its budget. */
    size_t base = needed(api, &m, host);
    if (set) {
        size_t decoded = (size_t)set->total_pixels * DECODED_PIXEL_BYTES + (size_t)set->largest_pixels * 24;
        if (base + decoded > api->cfg.max_job_memory) return over_memory(api, &m, host + decoded, base + decoded, err);
        tr->max_decoded_pixels = set->total_pixels;
        return 0;
    }
    int64_t budget = base < api->cfg.max_job_memory
                         ? (int64_t)((api->cfg.max_job_memory - base) / (DECODED_PIXEL_BYTES + 24))
                         : 0;
    if (budget > defaults.max_total_pixels) budget = defaults.max_total_pixels;
    if (budget < MIN_DECODE_PIXELS) {
        size_t need = base + (size_t)MIN_DECODE_PIXELS * (DECODED_PIXEL_BYTES + 24);
        return over_memory(api, &m, host + (size_t)MIN_DECODE_PIXELS * DECODED_PIXEL_BYTES, need, err);
    }
    tr->max_decoded_pixels = budget;
    return 0;
}

/* Host buffers of a generation batch of n images (models/sampler.c, worker_generate.c): noise and
 * velocity, text rows, the images as floats and one PNG's bytes being encoded. */
static size_t generation_host(const fl_flux_params *p, const fl_generate_request *gr, int64_t tokens, int n) {
    size_t pixels = (size_t)gr->width * (size_t)gr->height;
    size_t per_image = 2 * (size_t)tokens * (size_t)p->in_channels * sizeof(float) +
                       (size_t)gr->max_text_tokens * (size_t)(p->context_in_dim + 3) * sizeof(float) +
                       pixels * 3 * sizeof(float);
    return (size_t)n * per_image + pixels * 4;
}

int fl_api_admit_generation(fl_api *api, fl_generate_request *gr, const fl_adapter_info *adapters, int n_adapters,
                            fl_error *err) {
    int64_t work = (int64_t)gr->width * gr->height * gr->steps * gr->num_images;
    if (work > api->cfg.max_generation_work)
        return fl_fail(err, FL_ELIMIT,
                       "the generation's work is %" PRId64 " pixel-steps (%dx%d x %d steps x %d images), over the "
                       "limit of %" PRId64 " (--max-generation-work)",
                       work, gr->width, gr->height, gr->steps, gr->num_images, api->cfg.max_generation_work);
    return fl_api_admit_generation_memory(api, gr, adapters, n_adapters, err);
}

int fl_api_admit_generation_memory(fl_api *api, fl_generate_request *gr, const fl_adapter_info *adapters,
                                   int n_adapters, fl_error *err) {
    const fl_flux_params *p = &api->cfg.params;
    int patch = api->limits.patch;
    int rank = 0;
    int64_t params = 0;
    for (int i = 0; i < n_adapters; i++) {
        if (adapters[i].rank > rank) rank = adapters[i].rank;
        params += adapters[i].bytes / (int64_t)sizeof(float); /* canonical files are f32 */
    }
    fl_flux_job_shape shape = {.device = api->cfg.job_device,
                               .batch = gr->num_images,
                               .image_tokens = (int64_t)(gr->width / patch) * (gr->height / patch),
                               .text_tokens = gr->max_text_tokens,
                               .n_adapters = n_adapters,
                               .adapter_rank = rank,
                               .adapter_params = params,
                               .threads = fl_threads_get()};
    fl_flux_memory m;
    if (fl_flux_estimate_memory(p, &shape, &m, err) != 0) return -1;
    add_pipeline(api, true, gr->width, gr->height, &m);
    size_t host = generation_host(p, gr, shape.image_tokens, gr->num_images);
    size_t need = needed(api, &m, host);
    if (need > api->cfg.max_job_memory) return over_memory(api, &m, host, need, err);
    /* How many images of this size one batch may hold: the step grows linearly with the batch
     * (and a batch's adapters are at most FL_FLUX_MAX_ADAPTERS, counted as this request's). */
    fl_flux_memory one, two;
    shape.batch = 1;
    if (fl_flux_estimate_memory(p, &shape, &one, err) != 0) return -1;
    shape.batch = 2;
    if (fl_flux_estimate_memory(p, &shape, &two, err) != 0) return -1;
    add_pipeline(api, true, gr->width, gr->height, &one);
    add_pipeline(api, true, gr->width, gr->height, &two);
    size_t base1 = needed(api, &one, generation_host(p, gr, shape.image_tokens, 1));
    size_t base2 = needed(api, &two, generation_host(p, gr, shape.image_tokens, 2));
    size_t per_image = base2 > base1 ? base2 - base1 : 1;
    size_t fit = base1 <= api->cfg.max_job_memory ? 1 + (api->cfg.max_job_memory - base1) / per_image : 1;
    gr->batch_images = fit > 64 ? 64 : (int)fit;
    if (gr->batch_images < gr->num_images) gr->batch_images = gr->num_images;
    return 0;
}
