/*
 * test_train_run.c — fl_train_run, the library form of `flashlora train`, on one resident model
 * (tests/fixtures/flux_b.model.safetensors: pixel image space, patch 2) used for several jobs.
 *
 *  - Events arrive in order with their fields: rejected, start, progress 1..N (step, total, loss,
 *    lr, grad_norm, it_per_s, eta_s), checkpoints and previews between the steps they follow,
 *    done last with the adapter's hash; the result agrees with them and with the file.
 *  - should_stop answering true after step k: a checkpoint at k, FL_EUNAVAILABLE, no adapter;
 *    resuming on the same model reaches the byte-identical adapter of the uninterrupted run.
 *  - should_abort answering true: the run ends at once without a checkpoint (FL_EUNAVAILABLE);
 *    resuming from the last periodic checkpoint still gives the same adapter.
 *  - After every run, successful or not, the model has no adapters attached; a model that comes
 *    in with one is refused; bad jobs fail with FL_EINVAL.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/device.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "fl_build_config.h"
#include "harness.h"
#include "models/sampler.h"
#include "trainer/run.h"

enum { SIZE = 32, N_IMAGES = 6, STEPS = 12, STOP_AT = 7 };

static fl_ctx *cpu;
static fl_flux_model *model;
static char model_path[4096], model_hash[65];
static char tmpdir[] = "/tmp/fl_train_run_XXXXXX";
static char images_dir[4200];

/* ---- fixtures --------------------------------------------------------------------------------- */

static void path_in_tmp(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", tmpdir, name);
}

/* The set make_images.py draws: a red disc with a yellow square on blue, shifted per image, one
 * sidecar caption, plus a file that is not an image (rejected). */
static void write_images(void) {
    snprintf(images_dir, sizeof images_dir, "%s/images", tmpdir);
    FL_EXPECT(mkdir(images_dir, 0755) == 0);
    float *img = malloc(SIZE * SIZE * 3 * sizeof(float));
    fl_error err = {0};
    for (int i = 0; i < N_IMAGES; i++) {
        int dx = i % 3 - 1, dy = i / 3;
        for (int y = 0; y < SIZE; y++)
            for (int x = 0; x < SIZE; x++) {
                int r = 30, g = 50, b = 200;
                if ((x - 12 - 2 * dx) * (x - 12 - 2 * dx) + (y - 14 - 2 * dy) * (y - 14 - 2 * dy) <= 40)
                    r = 230, g = 30, b = 30;
                if (x >= 18 + 2 * dx && x < 26 + 2 * dx && y >= 6 + 2 * dy && y < 14 + 2 * dy) r = 240, g = 220, b = 20;
                float *px = img + (y * SIZE + x) * 3;
                px[0] = r / 127.5f - 1.0f, px[1] = g / 127.5f - 1.0f, px[2] = b / 127.5f - 1.0f;
            }
        char path[4300];
        snprintf(path, sizeof path, "%s/subject%d.png", images_dir, i);
        FL_EXPECTF(fl_png_write(path, img, SIZE, SIZE, &err) == 0, "%s", err.message);
    }
    free(img);
    char path[4300];
    snprintf(path, sizeof path, "%s/subject0.txt", images_dir);
    FILE *f = fopen(path, "w");
    fputs("[trigger] mascot on a blue background\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/notes.png", images_dir);
    f = fopen(path, "w");
    fputs("not an image", f);
    fclose(f);
}

static fl_train_job base_job(const char *out) {
    fl_train_job j = fl_train_job_default();
    j.images = images_dir;
    j.trigger = "sks";
    j.resolution = 16;
    j.out = out;
    j.base_model_hash = model_hash;
    j.checkpoint_every = 5;
    j.cfg.steps = STEPS;
    j.cfg.seed = 3;
    j.cfg.rank = 4;
    j.cfg.alpha = 4;
    j.cfg.lr = 1e-3f;
    j.cfg.ema_decay = 0.9f;
    j.cfg.schedule = FL_LR_COSINE;
    return j;
}

/* Records every event (copies: the hook must not keep what it is given); stops after stop_at. */
typedef struct recorder {
    json_t *events;
    int last_step;
    int stop_at; /* 0: never */
    int polls;
} recorder;

static void record_event(void *arg, json_t *ev) {
    recorder *r = arg;
    json_array_append_new(r->events, json_deep_copy(ev));
    const char *kind = json_string_value(json_object_get(ev, "event"));
    if (kind && !strcmp(kind, "progress")) r->last_step = (int)json_integer_value(json_object_get(ev, "step"));
}

static bool stop_after(void *arg) {
    recorder *r = arg;
    r->polls++;
    return r->stop_at > 0 && r->last_step >= r->stop_at;
}

static void recorder_init(recorder *r, int stop_at) {
    memset(r, 0, sizeof *r);
    r->events = json_array();
    r->stop_at = stop_at;
}

static const char *kind_of(json_t *ev) {
    const char *k = json_string_value(json_object_get(ev, "event"));
    return k ? k : "";
}

static bool model_is_bare(void) {
    for (size_t i = 0; i < fl_flux_linear_count(model); i++)
        if (fl_flux_linear_at(model, i)->n_adapters != 0) return false;
    return fl_flux_trainable_params(model).data == NULL;
}

static bool files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = false;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static const char *str_of(json_t *ev, const char *key) {
    const char *v = json_string_value(json_object_get(ev, key));
    return v ? v : "";
}

static bool has_number(json_t *ev, const char *key) {
    json_t *v = json_object_get(ev, key);
    return v && json_is_number(v) && isfinite(json_number_value(v));
}

/* ---- tests ------------------------------------------------------------------------------------- */

static char straight[4200];

static void test_events_and_result(void) {
    path_in_tmp(straight, sizeof straight, "straight.safetensors");
    char previews[4200];
    path_in_tmp(previews, sizeof previews, "previews");
    fl_train_job job = base_job(straight);
    job.preview_dir = previews;
    job.preview_every = 6;
    job.preview_count = 1;
    job.preview_steps = 2;
    recorder rec;
    recorder_init(&rec, 0);
    fl_train_hooks hooks = {record_event, stop_after, &rec, NULL};
    fl_train_result res;
    fl_error err = {0};
    FL_EXPECTF(fl_train_run(model, &job, &hooks, &res, &err) == 0, "%s", err.message);
    FL_EXPECT(model_is_bare());
    FL_EXPECT(rec.polls == STEPS);

    /* The sequence: rejected, start, then steps with their checkpoints and previews, done. */
    size_t n = json_array_size(rec.events), i = 0;
    FL_EXPECT(n > 0 && !strcmp(kind_of(json_array_get(rec.events, 0)), "rejected"));
    json_t *rej = json_array_get(rec.events, 0);
    FL_EXPECT(!strcmp(str_of(rej, "name"), "notes.png"));
    FL_EXPECT(json_string_value(json_object_get(rej, "reason")) != NULL);
    i = 1;
    json_t *start = json_array_get(rec.events, i++);
    FL_EXPECT(!strcmp(kind_of(start), "start"));
    FL_EXPECT(json_integer_value(json_object_get(start, "images")) == N_IMAGES);
    FL_EXPECT(json_integer_value(json_object_get(start, "steps")) == STEPS);
    FL_EXPECT(json_integer_value(json_object_get(start, "resumed_at")) == 0);
    FL_EXPECT(json_integer_value(json_object_get(start, "resolution")) == 16);
    FL_EXPECT(!strcmp(str_of(start, "device"), "cpu"));
    for (int step = 1; step <= STEPS; step++) {
        json_t *ev = json_array_get(rec.events, i++);
        FL_EXPECTF(!strcmp(kind_of(ev), "progress") && json_integer_value(json_object_get(ev, "step")) == step,
                   "event %zu: expected progress %d, got %s", i - 1, step, kind_of(ev));
        FL_EXPECT(json_integer_value(json_object_get(ev, "total")) == STEPS);
        const char *keys[] = {"loss", "lr", "grad_norm", "it_per_s", "eta_s"};
        for (size_t k = 0; k < 5; k++) FL_EXPECTF(has_number(ev, keys[k]), "progress %d: no %s", step, keys[k]);
        FL_EXPECT(json_object_size(ev) == 8);
        if (step % 5 == 0 && step < STEPS) {
            json_t *ck = json_array_get(rec.events, i++);
            char want[4300];
            snprintf(want, sizeof want, "%s.ckpt", straight);
            FL_EXPECTF(!strcmp(kind_of(ck), "checkpoint"), "expected a checkpoint after step %d", step);
            FL_EXPECT(json_integer_value(json_object_get(ck, "step")) == step);
            FL_EXPECT(!strcmp(str_of(ck, "path"), want));
        }
        if (step % 6 == 0) { /* every 6 steps, and the final previews at step 12 */
            json_t *pv = json_array_get(rec.events, i++);
            FL_EXPECTF(!strcmp(kind_of(pv), "preview"), "expected a preview after step %d", step);
            FL_EXPECT(json_integer_value(json_object_get(pv, "step")) == step);
            const char *path = json_string_value(json_object_get(pv, "path"));
            FL_EXPECT(path && access(path, R_OK) == 0);
        }
    }
    json_t *done = json_array_get(rec.events, i++);
    FL_EXPECT(!strcmp(kind_of(done), "done"));
    FL_EXPECT(i == n);
    char hash[65] = "";
    FL_EXPECTF(fl_sha256_file(straight, hash, &err) == 0, "%s", err.message);
    FL_EXPECT(!strcmp(res.sha256, hash));
    FL_EXPECT(!strcmp(str_of(done, "sha256"), hash));
    FL_EXPECT(!strcmp(str_of(done, "adapter"), straight));
    FL_EXPECT(json_integer_value(json_object_get(done, "steps")) == STEPS);
    FL_EXPECT(has_number(done, "final_loss") && has_number(done, "training_time_s") && has_number(done, "total_time_s"));
    FL_EXPECT(res.steps == STEPS && res.images == N_IMAGES && res.resumed_at == 0);
    FL_EXPECT(isfinite(res.final_loss) && res.final_loss > 0);
    FL_EXPECT(res.training_s >= 0 && res.total_s >= res.training_s);

    /* The checkpoint is gone; the adapter carries the job's metadata. */
    char ckpt[4300];
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", straight);
    FL_EXPECT(access(ckpt, F_OK) != 0);
    fl_safetensors *st = NULL;
    FL_EXPECTF(fl_safetensors_open(straight, &st, &err) == 0, "%s", err.message);
    if (st) {
        const char *trigger = fl_safetensors_metadata_get(st, "trigger");
        const char *base = fl_safetensors_metadata_get(st, "base_model");
        const char *images = fl_safetensors_metadata_get(st, "images");
        FL_EXPECT(trigger && !strcmp(trigger, "sks"));
        FL_EXPECT(base && !strcmp(base, model_hash));
        FL_EXPECT(images && !strcmp(images, "6"));
        fl_safetensors_close(st);
    }
    json_decref(rec.events);
}

static void test_stop_and_resume(void) {
    char out[4200], ckpt[4300];
    path_in_tmp(out, sizeof out, "stopped.safetensors");
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", out);
    fl_train_job job = base_job(out);
    recorder rec;
    recorder_init(&rec, STOP_AT);
    fl_train_hooks hooks = {record_event, stop_after, &rec, NULL};
    fl_train_result res;
    fl_error err = {0};
    FL_EXPECT(fl_train_run(model, &job, &hooks, &res, &err) != 0);
    FL_EXPECTF(err.code == FL_EUNAVAILABLE, "code %d: %s", err.code, err.message);
    FL_EXPECT(model_is_bare());
    FL_EXPECT(res.steps == STOP_AT && res.sha256[0] == '\0');
    FL_EXPECT(access(ckpt, F_OK) == 0 && access(out, F_OK) != 0);
    json_t *last = json_array_get(rec.events, json_array_size(rec.events) - 1);
    FL_EXPECT(!strcmp(kind_of(last), "checkpoint") && json_integer_value(json_object_get(last, "step")) == STOP_AT);
    size_t dones = 0;
    for (size_t i = 0; i < json_array_size(rec.events); i++) dones += !strcmp(kind_of(json_array_get(rec.events, i)), "done");
    FL_EXPECT(dones == 0);
    json_decref(rec.events);

    /* Resume on the same resident model. */
    job.resume = true;
    recorder_init(&rec, 0);
    FL_EXPECTF(fl_train_run(model, &job, &hooks, &res, &err) == 0, "%s", err.message);
    FL_EXPECT(model_is_bare());
    FL_EXPECT(res.resumed_at == STOP_AT && res.steps == STEPS);
    json_t *start = NULL;
    for (size_t i = 0; i < json_array_size(rec.events) && !start; i++)
        if (!strcmp(kind_of(json_array_get(rec.events, i)), "start")) start = json_array_get(rec.events, i);
    FL_EXPECT(start && json_integer_value(json_object_get(start, "resumed_at")) == STOP_AT);
    json_t *first_progress = NULL;
    for (size_t i = 0; i < json_array_size(rec.events) && !first_progress; i++)
        if (!strcmp(kind_of(json_array_get(rec.events, i)), "progress")) first_progress = json_array_get(rec.events, i);
    FL_EXPECT(first_progress && json_integer_value(json_object_get(first_progress, "step")) == STOP_AT + 1);
    FL_EXPECTF(files_equal(out, straight), "stop at %d + resume differs from the uninterrupted run", STOP_AT);
    FL_EXPECT(access(ckpt, F_OK) != 0);
    json_decref(rec.events);
}

static void test_stop_before_first_step(void) {
    /* A stop requested before anything ran still leaves a (step 0) checkpoint. */
    char out[4200], ckpt[4300];
    path_in_tmp(out, sizeof out, "early.safetensors");
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", out);
    fl_train_job job = base_job(out);
    recorder rec;
    recorder_init(&rec, 1);
    rec.last_step = 1; /* as if step 1 had run: the first poll already asks to stop */
    fl_train_hooks hooks = {record_event, stop_after, &rec, NULL};
    fl_train_result res;
    fl_error err = {0};
    FL_EXPECT(fl_train_run(model, &job, &hooks, &res, &err) != 0 && err.code == FL_EUNAVAILABLE);
    FL_EXPECT(res.steps == 0 && access(ckpt, F_OK) == 0 && access(out, F_OK) != 0);
    FL_EXPECT(model_is_bare());
    unlink(ckpt);
    json_decref(rec.events);
}

static bool abort_after(void *arg) {
    recorder *r = arg;
    return r->last_step >= r->stop_at;
}

static void test_abort_writes_no_checkpoint(void) {
    /* An abort (a canceled job, or one another worker took over) ends the run at the next step
     * without a checkpoint: the one on disk, if any, is left as it was. */
    char out[4200], ckpt[4300];
    path_in_tmp(out, sizeof out, "aborted.safetensors");
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", out);
    fl_train_job job = base_job(out);
    job.checkpoint_every = 2;
    recorder rec;
    recorder_init(&rec, 3);
    fl_train_hooks hooks = {record_event, stop_after, &rec, abort_after};
    rec.stop_at = 3;
    fl_train_result res;
    fl_error err = {0};
    FL_EXPECT(fl_train_run(model, &job, &hooks, &res, &err) != 0 && err.code == FL_EUNAVAILABLE);
    FL_EXPECTF(strstr(err.message, "aborted at step 3") != NULL, "%s", err.message);
    FL_EXPECT(res.steps == 3 && access(out, F_OK) != 0);
    FL_EXPECT(model_is_bare());
    /* the checkpoint of step 2 is the last one: no checkpoint event after step 3 */
    json_t *last = json_array_get(rec.events, json_array_size(rec.events) - 1);
    FL_EXPECT(!strcmp(kind_of(last), "progress") && json_integer_value(json_object_get(last, "step")) == 3);
    FL_EXPECT(rec.polls == 3); /* asked before steps 1..3, not at the abort: the abort is asked first */
    json_decref(rec.events);
    fl_train_job resume = job;
    resume.resume = true;
    recorder_init(&rec, 0);
    hooks.should_abort = NULL;
    FL_EXPECTF(fl_train_run(model, &resume, &hooks, &res, &err) == 0, "%s", err.message);
    FL_EXPECT(res.resumed_at == 2);
    FL_EXPECTF(files_equal(out, straight), "abort at 3 + resume from 2 differs from the uninterrupted run");
    json_decref(rec.events);
}

static void test_failures_leave_the_model_bare(void) {
    char out[4200];
    path_in_tmp(out, sizeof out, "bad.safetensors");
    fl_error err = {0};

    fl_train_job job = base_job(out);
    job.resolution = 15; /* not a multiple of the patch */
    FL_EXPECT(fl_train_run(model, &job, NULL, NULL, &err) != 0 && err.code == FL_EINVAL);
    FL_EXPECT(model_is_bare());

    job = base_job(out);
    job.trigger = "two words";
    FL_EXPECT(fl_train_run(model, &job, NULL, NULL, &err) != 0 && err.code == FL_EINVAL);

    job = base_job(out);
    job.cfg.rank = 0;
    FL_EXPECT(fl_train_run(model, &job, NULL, NULL, &err) != 0 && err.code == FL_EINVAL);
    FL_EXPECT(model_is_bare());

    char missing[4300];
    snprintf(missing, sizeof missing, "%s/no-such-folder", tmpdir);
    job = base_job(out);
    job.images = missing;
    FL_EXPECT(fl_train_run(model, &job, NULL, NULL, &err) != 0);
    FL_EXPECT(model_is_bare());

    job = base_job(out);
    job.min_images = 7; /* six usable images */
    FL_EXPECT(fl_train_run(model, &job, NULL, NULL, &err) != 0);
    FL_EXPECT(model_is_bare());

    /* Training fails after the trainer exists: a checkpoint from another configuration. */
    char ckpt[4300];
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", out);
    FILE *f = fopen(ckpt, "w");
    fputs("not a checkpoint", f);
    fclose(f);
    job = base_job(out);
    job.resume = true;
    FL_EXPECT(fl_train_run(model, &job, NULL, NULL, &err) != 0);
    FL_EXPECT(model_is_bare() && access(out, F_OK) != 0);
    unlink(ckpt);

    /* A model that comes in with an adapter is refused, and left bare. */
    FL_EXPECTF(fl_flux_add_trainable_lora(model, "attention", 2, 2, 1, &err) >= 0, "%s", err.message);
    FL_EXPECT(!model_is_bare());
    job = base_job(out);
    FL_EXPECT(fl_train_run(model, &job, NULL, NULL, &err) != 0 && err.code == FL_EINVAL);
    FL_EXPECT(model_is_bare() && access(out, F_OK) != 0);

    /* And the model still trains afterwards. */
    job = base_job(out);
    job.cfg.steps = 2;
    FL_EXPECTF(fl_train_run(model, &job, NULL, NULL, &err) == 0, "%s", err.message);
    FL_EXPECT(model_is_bare() && access(out, F_OK) == 0);
}

int main(void) {
#if !FL_HAVE_STB
    fl_test_skip_all("built without stb: no PNG encoding or decoding");
#endif
    fl_error err = {0};
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    cpu = fl_ctx_create(fl_device_cpu(), &err);
    fl_test_data_path("fixtures/flux_b.model.safetensors", model_path, sizeof model_path);
    if (!cpu || fl_flux_load(cpu, model_path, NULL, &model, &err) != 0 || fl_sha256_file(model_path, model_hash, &err) != 0) {
        fprintf(stderr, "loading %s: %s\n0 passed, 1 failed\n", model_path, err.message);
        return 1;
    }
    write_images();
    FL_RUN(test_events_and_result);
    FL_RUN(test_stop_and_resume);
    FL_RUN(test_stop_before_first_step);
    FL_RUN(test_abort_writes_no_checkpoint);
    FL_RUN(test_failures_leave_the_model_bare);
    fl_flux_free(model);
    fl_ctx_destroy(cpu);
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_finish();
}
