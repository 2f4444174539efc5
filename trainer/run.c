/*
 * run.c — one training job on a resident model: the image set is loaded and checked, captions
 * resolved, images cropped to the resolution (or their aspect buckets), then the trainer runs
 * with checkpoints, previews and stop and abort requests polled between steps, and the adapter
 * is written with the job's metadata. On a FLUX.1 pipeline every image (and its flip) is encoded
 * once with the autoencoder and every caption (and the empty one) once with T5 + CLIP, through an
 * on-disk cache keyed by content, before the loop. Every event goes to the caller's hook as a JSON object; the model's
 * adapters are detached on every return, so the next job (or a generation) starts clean.
 */
#include "trainer/run.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/device.h"
#include "core/sha256.h"
#include "datasets/captions.h"
#include "datasets/imageset.h"
#include "datasets/preprocess.h"
#include "core/fileio.h"
#include "models/pipeline.h"
#include "models/sampler.h"

fl_train_job fl_train_job_default(void) {
    fl_train_job j;
    memset(&j, 0, sizeof j);
    j.resolution = 64;
    j.min_images = 4;
    j.max_images = 100;
    j.preview_count = 2;
    j.preview_steps = FL_TRAIN_PREVIEW_STEPS;
    j.cfg = fl_train_config_default();
    return j;
}

/* ---- events ------------------------------------------------------------------------------------- */

typedef struct run_state {
    fl_pipeline *pipe;
    fl_flux_model *m;
    const fl_train_job *job;
    const fl_train_hooks *hooks;
    char checkpoint[4096];
    float **pixels;
    char **captions;
    fl_train_example *examples;
    size_t n;
    int text_tokens; /* rows of txt the trainer uses */
    int trainable_set; /* unused by the pixel kind */
} run_state;

/* Hands the event to the hook (if any) and releases it; a NULL event (json_pack failed) is dropped. */
static void emit(const run_state *s, json_t *event) {
    if (event && s->hooks && s->hooks->event) s->hooks->event(s->hooks->arg, event);
    json_decref(event);
}

static bool stop_requested(const run_state *s) {
    return s->hooks && s->hooks->should_stop && s->hooks->should_stop(s->hooks->arg);
}

static bool abort_requested(const run_state *s) {
    return s->hooks && s->hooks->should_abort && s->hooks->should_abort(s->hooks->arg);
}

/* ---- pieces of the run ------------------------------------------------------------------------- */

static int validate_job(const fl_train_job *j, int patch, fl_error *err) {
    if (!j->images || !*j->images) return fl_fail(err, FL_EINVAL, "no image source given");
    if (!j->out || !*j->out) return fl_fail(err, FL_EINVAL, "no adapter path given");
    if (j->trigger && strpbrk(j->trigger, " \t\r\n")) return fl_fail(err, FL_EINVAL, "the trigger must be one word");
    if ((!j->trigger || !*j->trigger) && !j->is_style)
        return fl_fail(err, FL_EINVAL, "a subject adapter needs a trigger word");
    if (j->resolution < patch || j->resolution > 4096 || j->resolution % patch)
        return fl_fail(err, FL_EINVAL, "resolution %d must be a multiple of the patch size %d, at most 4096",
                       j->resolution, patch);
    if (j->min_images < 1 || j->max_images < j->min_images)
        return fl_fail(err, FL_EINVAL, "image limits %d..%d are invalid", j->min_images, j->max_images);
    if (j->checkpoint_every < 0 || j->preview_every < 0)
        return fl_fail(err, FL_EINVAL, "checkpoint and preview intervals must not be negative");
    if (j->preview_dir && (j->preview_count < 1 || j->preview_count > 16 || j->preview_steps < 1 ||
                           j->preview_steps > 1000))
        return fl_fail(err, FL_EINVAL, "previews: count must be in [1, 16] and steps in [1, 1000]");
    return fl_train_config_validate(&j->cfg, err);
}

static bool has_adapters(fl_flux_model *m) {
    for (size_t i = 0; i < fl_flux_linear_count(m); i++)
        if (fl_flux_linear_at(m, i)->n_adapters > 0) return true;
    return false;
}

static void free_prepared(run_state *s) {
    for (size_t i = 0; i < s->n; i++) {
        if (s->pixels) free(s->pixels[i]);
        if (s->captions) free(s->captions[i]);
    }
    free(s->pixels);
    free(s->captions);
    free(s->examples);
}

/* Loads, reports rejections, resolves captions and crops to the resolution (or to each image's
 * aspect bucket, sides multiples of patch). */
static int prepare_images(run_state *s, int patch, fl_error *err) {
    const fl_train_job *j = s->job;
    fl_imageset_limits limits = fl_imageset_limits_default();
    limits.min_images = (size_t)j->min_images;
    limits.max_images = (size_t)j->max_images;
    limits.url_allow_private = j->url_allow_private;
    if (j->max_decoded_pixels > 0 && j->max_decoded_pixels < limits.max_total_pixels)
        limits.max_total_pixels = j->max_decoded_pixels;
    /* Images are cropped and resized to the resolution: four times it on the longer side keeps
     * every crop (aspects up to 4:1) from being upscaled, and the set holds no full-size photos. */
    limits.fit_side = 4 * j->resolution;
    fl_imageset *set = NULL;
    if (fl_imageset_load(j->images, &limits, &set, err) != 0) return -1;
    for (size_t i = 0; i < set->rejected_count; i++)
        emit(s, json_pack("{s:s, s:s, s:s}", "event", "rejected", "name", set->rejected[i].name, "reason",
                          set->rejected[i].reason));
    s->n = set->count;
    s->pixels = fl_xcalloc(s->n, sizeof *s->pixels);
    s->captions = fl_xcalloc(s->n, sizeof *s->captions);
    s->examples = fl_xcalloc(s->n, sizeof *s->examples);
    const char *caption = j->caption ? j->caption : "a photo of [trigger]";
    int rc = 0;
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        s->captions[i] = fl_caption_resolve(set->items[i].caption, j->trigger, caption, j->is_style);
        const fl_image *img = &set->items[i].image;
        int w = j->resolution, h = j->resolution;
        if (j->buckets && fl_bucket_choose(img->width, img->height, j->resolution, patch, &w, &h) != 0)
            rc = fl_fail(err, FL_EINVAL, "resolution %d has no buckets with sides a multiple of %d", j->resolution,
                         patch);
        s->pixels[i] = fl_xmalloc((size_t)w * (size_t)h * 3 * sizeof(float));
        if (rc == 0) rc = fl_preprocess_sample(img, w, h, false, s->pixels[i], err);
        s->examples[i] = (fl_train_example){s->pixels[i], w, h, s->captions[i]};
    }
    fl_imageset_free(set);
    return rc;
}

/* ---- encoding once, through the cache ---------------------------------------------------------- */

typedef struct cache_counts {
    int latents_reused, latents_encoded, texts_reused, texts_encoded;
} cache_counts;

static void cache_file(const char *dir, const char *kind, const char *key, char *path, size_t size) {
    snprintf(path, size, "%s/%s-%s.safetensors", dir, kind, key);
}

/* Reads the F32 tensors names[k] of exactly counts[k] elements from a cache file; false when the
 * file is absent or not what this key should hold (it is then written again). */
static bool cache_read(const char *path, const char *const *names, const size_t *counts, float **dst, int n) {
    if (access(path, F_OK) != 0) return false;
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, NULL) != 0) return false;
    bool ok = true;
    for (int k = 0; k < n && ok; k++) {
        const fl_safetensors_info *info = fl_safetensors_find(st, names[k]);
        ok = info && info->dtype == FL_ST_F32 && (size_t)info->numel == counts[k];
        if (ok) memcpy(dst[k], info->data, counts[k] * sizeof(float));
    }
    fl_safetensors_close(st);
    return ok;
}

static int cache_write(const char *path, const char *const *names, const size_t *counts, float **src, int n,
                       fl_error *err) {
    fl_safetensors_entry e[2];
    memset(e, 0, sizeof e);
    for (int k = 0; k < n; k++) {
        e[k].name = names[k];
        e[k].dtype = FL_ST_F32;
        e[k].ndim = 1;
        e[k].shape[0] = (int64_t)counts[k];
        e[k].data = src[k];
    }
    return fl_safetensors_write(path, e, (size_t)n, NULL, 0, err);
}

static void flip_image(const float *image, int w, int h, float *out) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            memcpy(out + ((size_t)y * w + x) * 3, image + ((size_t)y * w + (w - 1 - x)) * 3, 3 * sizeof(float));
}

/* The latent tokens of one image (flipped or not), from the cache or the autoencoder. */
static int encode_latents(run_state *s, const char *dir, const fl_train_example *ex, bool flip, float *tokens,
                          cache_counts *cc, fl_error *err) {
    fl_pipeline *p = s->pipe;
    size_t hw = (size_t)ex->width * (size_t)ex->height;
    size_t count = (size_t)fl_pipeline_image_tokens(p, ex->width, ex->height) * (size_t)fl_pipeline_token_channels(p);
    float *img = fl_xmalloc(hw * 3 * sizeof(float));
    if (flip) flip_image(ex->pixels, ex->width, ex->height, img);
    else memcpy(img, ex->pixels, hw * 3 * sizeof(float));
    fl_sha256 h;
    fl_sha256_init(&h);
    int32_t dims[2] = {ex->width, ex->height};
    fl_sha256_update(&h, "flashlora.latents.v1", 21);
    fl_sha256_update(&h, fl_pipeline_ae_fingerprint(p), 64);
    fl_sha256_update(&h, dims, sizeof dims);
    fl_sha256_update(&h, img, hw * 3 * sizeof(float));
    uint8_t digest[32];
    char key[65], path[4200];
    fl_sha256_final(&h, digest);
    fl_sha256_digest_hex(digest, key);
    cache_file(dir, "latents", key, path, sizeof path);
    const char *names[1] = {"tokens"};
    float *dst[1] = {tokens};
    int rc = 0;
    if (cache_read(path, names, &count, dst, 1)) {
        cc->latents_reused++;
    } else {
        rc = fl_pipeline_encode_image(p, img, ex->width, ex->height, tokens, err);
        if (rc == 0) rc = cache_write(path, names, &count, dst, 1, err);
        if (rc == 0) cc->latents_encoded++;
    }
    free(img);
    return rc;
}

/* A caption's text rows and pooled vector, from the cache or the text encoders. */
static int encode_caption(run_state *s, const char *dir, const char *caption, float *txt, float *y, cache_counts *cc,
                          fl_error *err) {
    fl_pipeline *p = s->pipe;
    size_t counts[2] = {(size_t)s->text_tokens * (size_t)fl_pipeline_context_dim(p), (size_t)fl_pipeline_vec_dim(p)};
    fl_sha256 h;
    fl_sha256_init(&h);
    int32_t lt = s->text_tokens;
    fl_sha256_update(&h, "flashlora.text.v1", 18);
    fl_sha256_update(&h, fl_pipeline_text_fingerprint(p), 64);
    fl_sha256_update(&h, &lt, sizeof lt);
    fl_sha256_update(&h, caption, strlen(caption) + 1);
    uint8_t digest[32];
    char key[65], path[4200];
    fl_sha256_final(&h, digest);
    fl_sha256_digest_hex(digest, key);
    cache_file(dir, "text", key, path, sizeof path);
    const char *names[2] = {"txt", "y"};
    float *dst[2] = {txt, y};
    if (cache_read(path, names, counts, dst, 2)) {
        cc->texts_reused++;
        return 0;
    }
    if (fl_pipeline_encode_prompt(p, caption, s->text_tokens, txt, y, err) != 0) return -1;
    if (cache_write(path, names, counts, dst, 2, err) != 0) return -1;
    cc->texts_encoded++;
    return 0;
}

/* Encodes the prepared set for a FLUX.1 pipeline and creates the trainer over it. */
static fl_trainer *create_latent_trainer(run_state *s, fl_error *err) {
    const fl_train_job *j = s->job;
    fl_pipeline *p = s->pipe;
    char dir[4096];
    if (j->cache_dir) snprintf(dir, sizeof dir, "%s", j->cache_dir);
    else snprintf(dir, sizeof dir, "%s.cache", j->out);
    if (fl_mkdirs(dir, err) != 0) return NULL;
    size_t txt = (size_t)s->text_tokens * (size_t)fl_pipeline_context_dim(p), vec = (size_t)fl_pipeline_vec_dim(p);
    fl_train_encoded *enc = fl_xcalloc(s->n, sizeof *enc);
    float **bufs = fl_xcalloc(s->n * 4, sizeof *bufs);
    float *txt_empty = fl_xmalloc(txt * sizeof(float)), *y_empty = fl_xmalloc(vec * sizeof(float));
    cache_counts cc = {0};
    int rc = 0;
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        const fl_train_example *ex = &s->examples[i];
        if (fl_pipeline_check_size(p, ex->width, ex->height, err) != 0) {
            rc = -1;
            break;
        }
        size_t count = (size_t)fl_pipeline_image_tokens(p, ex->width, ex->height) * (size_t)fl_pipeline_token_channels(p);
        bufs[4 * i] = fl_xmalloc(count * sizeof(float));
        bufs[4 * i + 1] = j->cfg.flip ? fl_xmalloc(count * sizeof(float)) : NULL;
        bufs[4 * i + 2] = fl_xmalloc(txt * sizeof(float));
        bufs[4 * i + 3] = fl_xmalloc(vec * sizeof(float));
        rc = encode_latents(s, dir, ex, false, bufs[4 * i], &cc, err);
        if (rc == 0 && j->cfg.flip) rc = encode_latents(s, dir, ex, true, bufs[4 * i + 1], &cc, err);
        /* Captions repeat: an earlier example's rows are reused as they are. */
        size_t same = 0;
        while (same < i && strcmp(s->examples[same].caption, ex->caption)) same++;
        if (rc == 0 && same < i) {
            memcpy(bufs[4 * i + 2], bufs[4 * same + 2], txt * sizeof(float));
            memcpy(bufs[4 * i + 3], bufs[4 * same + 3], vec * sizeof(float));
        } else if (rc == 0) {
            rc = encode_caption(s, dir, ex->caption, bufs[4 * i + 2], bufs[4 * i + 3], &cc, err);
        }
        enc[i] = (fl_train_encoded){bufs[4 * i], bufs[4 * i + 1], ex->width, ex->height, bufs[4 * i + 2], bufs[4 * i + 3]};
    }
    if (rc == 0) rc = encode_caption(s, dir, "", txt_empty, y_empty, &cc, err);
    /* The preview prompt stays in the pipeline's prompt cache for when the encoders are gone. */
    if (rc == 0 && j->preview_dir && j->preview_prompt) {
        float *pt = fl_xmalloc(txt * sizeof(float)), *py = fl_xmalloc(vec * sizeof(float));
        rc = fl_pipeline_encode_prompt(p, j->preview_prompt, s->text_tokens, pt, py, err);
        free(pt), free(py);
    } else if (rc == 0 && j->preview_dir && s->n > 0) {
        float *pt = fl_xmalloc(txt * sizeof(float)), *py = fl_xmalloc(vec * sizeof(float));
        rc = fl_pipeline_encode_prompt(p, s->captions[0], s->text_tokens, pt, py, err);
        free(pt), free(py);
    }
    if (rc == 0) {
        emit(s, json_pack("{s:s, s:s, s:i, s:i, s:i, s:i}", "event", "cache", "dir", dir, "latents_reused",
                          cc.latents_reused, "latents_encoded", cc.latents_encoded, "texts_reused", cc.texts_reused,
                          "texts_encoded", cc.texts_encoded));
        if (j->release_encoders) fl_pipeline_release(p, FL_PIPELINE_TEXT | FL_PIPELINE_AE_ENCODER);
    }
    fl_trainer *t = NULL;
    if (rc == 0) {
        fl_train_config cfg = j->cfg;
        cfg.max_text_tokens = s->text_tokens;
        t = fl_trainer_create_encoded(s->m, &cfg, fl_pipeline_get_info(p)->patch, enc, s->n, txt_empty, y_empty, err);
    }
    for (size_t i = 0; i < s->n * 4; i++) free(bufs[i]);
    free(bufs), free(enc), free(txt_empty), free(y_empty);
    return t;
}

static int write_previews(const run_state *s, int step, fl_error *err) {
    const fl_train_job *j = s->job;
    if (!j->preview_dir) return 0;
    if (mkdir(j->preview_dir, 0755) != 0 && errno != EEXIST)
        return fl_fail(err, FL_EIO, "%s: %s", j->preview_dir, strerror(errno));
    float *img = fl_xmalloc((size_t)j->resolution * (size_t)j->resolution * 3 * sizeof(float));
    int rc = 0;
    for (int k = 0; k < j->preview_count && rc == 0; k++) {
        fl_sample_params sp = {j->preview_prompt ? j->preview_prompt : s->captions[0], j->resolution, j->resolution,
                               j->preview_steps, j->cfg.guidance, (uint64_t)k + 1, s->text_tokens};
        char path[4096];
        snprintf(path, sizeof path, "%s/step%06d_%d.png", j->preview_dir, step, k);
        if (fl_pipeline_get_info(s->pipe)->kind == FL_PIPELINE_PIXELS) {
            rc = fl_flux_sample_pixels(s->m, &sp, img, err);
        } else {
            fl_sample_request req;
            memset(&req, 0, sizeof req);
            req.prompt = sp.prompt;
            req.seed = sp.seed;
            req.guidance = sp.guidance;
            float *images[1] = {img};
            fl_pipeline_output po = {images, NULL, NULL, true};
            rc = fl_pipeline_generate(s->pipe, j->resolution, j->resolution, j->preview_steps, s->text_tokens, &req, 1,
                                      NULL, NULL, &po, err);
        }
        if (rc == 0) rc = fl_png_write(path, img, j->resolution, j->resolution, err);
        if (rc == 0)
            emit(s, json_pack("{s:s, s:i, s:s, s:I}", "event", "preview", "step", step, "path", path, "seed",
                              (json_int_t)sp.seed));
    }
    free(img);
    return rc;
}

static int save_checkpoint(const run_state *s, fl_trainer *t, fl_error *err) {
    if (fl_trainer_save_checkpoint(t, s->checkpoint, err) != 0) return -1;
    emit(s, json_pack("{s:s, s:i, s:s}", "event", "checkpoint", "step", fl_trainer_steps_done(t), "path",
                      s->checkpoint));
    return 0;
}

static int save_adapter(const run_state *s, fl_trainer *t, fl_error *err) {
    const fl_train_job *j = s->job;
    char images[32], resolution[32];
    snprintf(images, sizeof images, "%zu", s->n);
    snprintf(resolution, sizeof resolution, "%d", j->resolution);
    fl_safetensors_kv extra[5];
    size_t n = 0;
    if (j->base_model_hash) extra[n++] = (fl_safetensors_kv){"base_model", j->base_model_hash};
    extra[n++] = (fl_safetensors_kv){"trigger", j->trigger ? j->trigger : ""};
    extra[n++] = (fl_safetensors_kv){"images", images};
    extra[n++] = (fl_safetensors_kv){"resolution", resolution};
    extra[n++] = (fl_safetensors_kv){"is_style", j->is_style ? "true" : "false"};
    return fl_trainer_save_adapter(t, j->out, extra, n, err);
}

/* ---- the run ------------------------------------------------------------------------------------ */

static int run(run_state *s, fl_train_result *r, fl_error *err) {
    const fl_train_job *j = s->job;
    double t_start = fl_monotonic_s();
    if (has_adapters(s->m)) return fl_fail(err, FL_EINVAL, "the model has adapters attached: detach them first");
    const fl_pipeline_info *info = fl_pipeline_get_info(s->pipe);
    int patch = info->patch;
    s->text_tokens = fl_pipeline_text_tokens(s->pipe, j->cfg.max_text_tokens);
    if (validate_job(j, patch, err) != 0) return -1;
    snprintf(s->checkpoint, sizeof s->checkpoint, "%s", j->checkpoint ? j->checkpoint : "");
    if (!j->checkpoint) snprintf(s->checkpoint, sizeof s->checkpoint, "%s.ckpt", j->out);

    if (prepare_images(s, patch, err) != 0) return -1;
    r->images = (int)s->n;
    fl_trainer *t = info->kind == FL_PIPELINE_PIXELS ? fl_trainer_create(s->m, &j->cfg, s->examples, s->n, err)
                                                     : create_latent_trainer(s, err);
    if (!t) return -1;
    int rc = 0;
    if (j->resume && access(s->checkpoint, F_OK) == 0) rc = fl_trainer_load_checkpoint(t, s->checkpoint, err);
    r->resumed_at = fl_trainer_steps_done(t);
    r->steps = r->resumed_at;
    if (rc == 0) {
        char device[32];
        const char *dev = j->device ? j->device : fl_device_str(fl_flux_get_ctx(s->m)->device, device, sizeof device);
        emit(s, json_pack("{s:s, s:i, s:i, s:i, s:s, s:i}", "event", "start", "images", (int)s->n, "steps",
                          j->cfg.steps, "resumed_at", r->resumed_at, "device", dev, "resolution", j->resolution));
    }
    double t_loop = fl_monotonic_s();
    bool stopped = false, aborted = false;
    fl_train_progress pr = {0};
    while (rc == 0 && fl_trainer_steps_done(t) < j->cfg.steps) {
        if (abort_requested(s)) {
            aborted = true;
            break;
        }
        if (stop_requested(s)) {
            stopped = true;
            break;
        }
        rc = fl_trainer_step(t, &pr, err);
        if (rc != 0) break;
        r->steps = pr.step;
        r->final_loss = pr.loss;
        double elapsed = fl_monotonic_s() - t_loop;
        double rate = elapsed > 0 ? (pr.step - r->resumed_at) / elapsed : 0.0;
        double eta = rate > 0 ? (pr.total - pr.step) / rate : 0.0;
        emit(s, json_pack("{s:s, s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "event", "progress", "step", pr.step, "total",
                          pr.total, "loss", pr.loss, "lr", pr.lr, "grad_norm", pr.grad_norm, "it_per_s", rate,
                          "eta_s", eta));
        if (j->checkpoint_every > 0 && pr.step % j->checkpoint_every == 0 && pr.step < j->cfg.steps)
            rc = save_checkpoint(s, t, err);
        if (rc == 0 && j->preview_every > 0 && pr.step % j->preview_every == 0 && pr.step < j->cfg.steps)
            rc = write_previews(s, pr.step, err);
    }
    r->steps = fl_trainer_steps_done(t);
    r->final_loss = fl_trainer_last_loss(t);
    if (rc == 0 && aborted) rc = fl_fail(err, FL_EUNAVAILABLE, "aborted at step %d", r->steps);
    if (rc == 0 && stopped) {
        rc = save_checkpoint(s, t, err);
        if (rc == 0)
            rc = fl_fail(err, FL_EUNAVAILABLE, "stopped at step %d: checkpoint %s", r->steps, s->checkpoint);
    }
    if (rc == 0) rc = save_adapter(s, t, err);
    if (rc == 0) rc = write_previews(s, r->steps, err);
    if (rc == 0) rc = fl_sha256_file(j->out, r->sha256, err);
    r->training_s = fl_monotonic_s() - t_loop;
    r->total_s = fl_monotonic_s() - t_start;
    if (rc == 0) {
        emit(s, json_pack("{s:s, s:s, s:s, s:i, s:f, s:f, s:f}", "event", "done", "adapter", j->out, "sha256",
                          r->sha256, "steps", r->steps, "final_loss", r->final_loss, "training_time_s", r->training_s,
                          "total_time_s", r->total_s));
        unlink(s->checkpoint); /* the adapter supersedes it */
    }
    fl_trainer_free(t);
    return rc;
}

int fl_train_run(fl_flux_model *m, const fl_train_job *job, const fl_train_hooks *hooks, fl_train_result *result,
                 fl_error *err) {
    fl_pipeline *p = NULL;
    if (fl_pipeline_wrap(m, &p, err) != 0) {
        if (result) memset(result, 0, sizeof *result);
        return -1;
    }
    int rc = fl_train_run_pipeline(p, job, hooks, result, err);
    fl_pipeline_free(p);
    return rc;
}

int fl_train_run_pipeline(fl_pipeline *pipe, const fl_train_job *job, const fl_train_hooks *hooks,
                          fl_train_result *result, fl_error *err) {
    fl_flux_model *m = fl_pipeline_model(pipe);
    fl_train_result scratch;
    fl_train_result *r = result ? result : &scratch;
    memset(r, 0, sizeof *r);
    run_state s;
    memset(&s, 0, sizeof s);
    s.pipe = pipe;
    s.m = m;
    s.job = job;
    s.hooks = hooks;
    int rc = run(&s, r, err);
    free_prepared(&s);
    fl_flux_clear_adapters(m); /* success or failure: the next job starts from the bare model */
    return rc;
}
