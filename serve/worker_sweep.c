/*
 * worker_sweep.c — the retention sweep a worker runs between jobs (see worker.h): at most every
 * sweep interval, and by one worker at a time (a Redis lock that expires with the interval), it
 * trims the work streams of the entries every consumer is done with, removes the images that
 * are due (key and PNG) and the image keys no job result names, and removes the files no live
 * job owns: uploads and checkpoint directories of jobs that ended or never existed, PNGs without
 * a key, and temporary files of interrupted writes and conversions. Every part of a pass is
 * bounded, so a pass takes milliseconds however much has piled up; what is left waits for the
 * next pass.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "serve/jobs.h"
#include "serve/worker_internal.h"

enum {
    SWEEP_IMAGES = 500,          /* due images removed per pass */
    SWEEP_IMAGE_KEYS = 200,      /* image keys looked at per pass */
    SWEEP_DIR_ENTRIES = 200,     /* directory entries looked at per directory per pass */
    ORPHAN_GRACE_S = 3600,       /* a file no job owns is removed once it is this old */
};

static const char *const sweep_dir_names[3] = {"uploads", "jobs", "images"};

/* The state of the job a file belongs to: 1 running or queued, 0 finished, -1 no such job,
 * -2 Redis could not say. */
static int job_liveness(worker_state *w, const char *id) {
    fl_job job;
    fl_error err = {0};
    if (fl_jobs_get(w->r, NULL, id, &job, &err) != 0) return err.code == FL_ENOTFOUND ? -1 : -2;
    int live = fl_job_state_terminal(job.state) ? 0 : 1;
    fl_job_clear(&job);
    return live;
}

static bool older_than(const char *path, int seconds) {
    struct stat st;
    return lstat(path, &st) == 0 && time(NULL) - st.st_mtime > seconds;
}

/* uploads/.export-*: the converted copy of an adapter download (serve/api_adapters.c), which
 * the request unlinks once it holds it open; one left behind is a dead process's. */
static bool is_export_copy(int dir, const char *name) {
    return dir == 0 && strncmp(name, ".export-", 8) == 0;
}

/* One directory entry of uploads/, jobs/ or images/. */
static void sweep_entry(worker_state *w, int dir, const char *name) {
    char path[4400];
    snprintf(path, sizeof path, "%s/%s/%s", w->cfg.state_dir, sweep_dir_names[dir], name);
    if (strstr(name, ".tmp.") || is_export_copy(dir, name)) { /* an unfinished write or conversion */
        if (older_than(path, ORPHAN_GRACE_S)) unlink(path);
        return;
    }
    char id[FL_ID_MAX];
    size_t n = strcspn(name, ".");
    if (n == 0 || n >= sizeof id) return;
    memcpy(id, name, n);
    id[n] = '\0';
    if (dir == 2) { /* images/<id>.png: kept while its key exists */
        if (strcmp(name + n, ".png") != 0) return;
        fl_error err = {0};
        redisReply *rep = fl_redis_cmd(w->r, &err, "EXISTS fl:image:%s", id);
        bool known = !rep || rep->type != REDIS_REPLY_INTEGER || rep->integer != 0;
        if (rep) freeReplyObject(rep);
        if (!known && older_than(path, ORPHAN_GRACE_S)) unlink(path);
        return;
    }
    /* uploads/<job id>.<ext> and jobs/<job id>/: kept while the job lives. A file of no job at
     * all may be an upload whose job is being accepted right now: only an old one goes. */
    int live = job_liveness(w, id);
    if (live == 0 || (live == -1 && older_than(path, ORPHAN_GRACE_S))) fl_jobs_remove_files(w->cfg.state_dir, id);
}

/* Reads up to SWEEP_DIR_ENTRIES entries of one directory, going on where the last pass stopped. */
static void sweep_dir(worker_state *w, int dir) {
    if (!w->sweep_dirs[dir]) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", w->cfg.state_dir, sweep_dir_names[dir]);
        if (!(w->sweep_dirs[dir] = opendir(path))) return;
    }
    for (int i = 0; i < SWEEP_DIR_ENTRIES; i++) {
        errno = 0;
        struct dirent *e = readdir(w->sweep_dirs[dir]);
        if (!e) {
            closedir(w->sweep_dirs[dir]); /* the next pass starts over with a fresh listing */
            w->sweep_dirs[dir] = NULL;
            return;
        }
        if (e->d_name[0] == '.' && !is_export_copy(dir, e->d_name)) continue;
        sweep_entry(w, dir, e->d_name);
    }
}

void fl_worker_sweep(worker_state *w) {
    int64_t now = fl_monotonic_ms();
    if (w->cfg.sweep_interval_ms <= 0) return;
    if (w->last_sweep_ms && now - w->last_sweep_ms < w->cfg.sweep_interval_ms) return;
    w->last_sweep_ms = now;
    fl_error err = {0};
    char px[32];
    snprintf(px, sizeof px, "%d", w->cfg.sweep_interval_ms);
    redisReply *rep = fl_redis_cmd(w->r, &err, "SET fl:sweep:lock %s NX PX %s", w->name, px);
    bool mine = rep && rep->type == REDIS_REPLY_STATUS;
    if (rep) freeReplyObject(rep);
    if (!mine) return;
    long long trimmed[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        if (fl_jobs_trim_stream(w->r, (fl_job_kind)k, &trimmed[k], &err) != 0)
            fl_log_warn("worker %s: trimming %s: %s", w->name, fl_job_stream_key((fl_job_kind)k), err.message);
    int orphans = 0, removed = 0;
    if (fl_jobs_sweep_orphan_images(w->r, &w->image_cursor, SWEEP_IMAGE_KEYS, &orphans, &err) != 0)
        fl_log_warn("worker %s: image keys: %s", w->name, err.message);
    if (fl_jobs_sweep_images(w->r, w->cfg.state_dir, SWEEP_IMAGES, &removed, &err) != 0)
        fl_log_warn("worker %s: removing due images: %s", w->name, err.message);
    for (int d = 0; d < 3; d++) sweep_dir(w, d);
    fl_worker_sweep_refs(w, SWEEP_DIR_ENTRIES); /* kept training images of deleted adapters */
    if (trimmed[0] + trimmed[1] + orphans + removed > 0)
        fl_log_info("worker %s: retention: %lld stream entries trimmed, %d images removed (%d orphaned)", w->name,
                    trimmed[0] + trimmed[1], removed, orphans);
}

void fl_worker_sweep_close(worker_state *w) {
    for (int d = 0; d < 3; d++)
        if (w->sweep_dirs[d]) {
            closedir(w->sweep_dirs[d]);
            w->sweep_dirs[d] = NULL;
        }
}
