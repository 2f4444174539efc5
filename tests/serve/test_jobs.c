/*
 * test_jobs.c — the job state machine's Lua scripts (serve/jobs.h) against a real redis-server
 * this test starts in a temporary directory (it must be installed: the test fails without it).
 *
 * Covered: admission (the queue bound and the per-tenant quota, each refusal writing nothing,
 * duplicate ids), start and its attempt count, finishing exactly once, cancel in every state
 * (queued: canceled at once and never started; running: requested, seen by the claim check,
 * finished by the worker, or by the next worker to take it; finished: a conflict naming the
 * state; another tenant's: not found), counters that never go below zero, claims that a worker
 * renews only while the entry and the job are still its own (never taking an entry back from
 * the worker that took it over), requeue by a stopping worker, expiry set when a job ends, its
 * images following it, the tenant index pruned by count, work streams trimmed of acknowledged
 * entries only, the sweep of due and orphaned images, and the removal of a job's files.
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "harness.h"
#include "serve/jobs.h"
#include "serve/redis.h"

static char tmp_dir[256], redis_dir[300], state_dir[300];
static fl_redis_server *server;
static fl_redis *redis;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- small Redis readers ------------------------------------------------------------------------ */

static redisReply *cmd(const char *fmt, const char *a, const char *b) {
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(redis, &err, fmt, a, b);
    FL_EXPECTF(rep, "%s", err.message);
    return rep;
}

static long long int_of(const char *fmt, const char *a, const char *b) {
    redisReply *rep = cmd(fmt, a, b);
    long long v = -999;
    if (rep && rep->type == REDIS_REPLY_INTEGER) v = rep->integer;
    else if (rep && rep->type == REDIS_REPLY_STRING) v = atoll(rep->str);
    else if (rep && rep->type == REDIS_REPLY_NIL) v = 0;
    if (rep) freeReplyObject(rep);
    return v;
}

static long long state_count(const char *state) {
    return int_of("HGET fl:jobs:states %s", state, "");
}

static long long queue_count(const char *kind) {
    return int_of("GET fl:queue:%s", kind, "");
}

static long long tenant_pending(const char *tenant, const char *kind) {
    return int_of("HGET fl:tenant:%s:pending %s", tenant, kind);
}

static long long ttl_of(const char *key) {
    return int_of("TTL %s", key, "");
}

static bool exists(const char *key) {
    return int_of("EXISTS %s", key, "") == 1;
}

static void flush(void) {
    redisReply *rep = cmd("FLUSHALL", "", "");
    if (rep) freeReplyObject(rep);
    fl_error err = {0};
    FL_EXPECTF(fl_jobs_init(redis, &err) == 0, "%s", err.message);
}

/* The job's event names in order, comma-separated. */
static void event_names(const char *id, char *out, size_t cap) {
    char key[160];
    snprintf(key, sizeof key, "fl:job:%s:events", id);
    redisReply *rep = cmd("XRANGE %s - +", key, "");
    out[0] = '\0';
    size_t off = 0;
    for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const char *data = rep->element[i]->element[1]->element[1]->str;
        const char *ev = strstr(data, "\"event\":\"");
        if (!ev) continue;
        ev += 9;
        size_t n = strcspn(ev, "\"");
        off += (size_t)snprintf(out + off, cap - off, "%s%.*s", off ? "," : "", (int)n, ev);
    }
    if (rep) freeReplyObject(rep);
}

static fl_job_policy policy(long max_pending, long max_tenant) {
    fl_job_policy p = {max_pending, max_tenant, 0, 0};
    return p;
}

static fl_admission submit(fl_job_kind kind, const char *id, const char *tenant, const fl_job_policy *p) {
    fl_error err = {0};
    fl_admission a = FL_ADMIT_QUEUE_FULL;
    FL_EXPECTF(fl_jobs_submit(redis, kind, id, tenant, "{\"prompt\":\"x\"}", p, &a, &err) == 0, "%s: %s", id,
               err.message);
    return a;
}

static const char *state_of(const char *id) {
    static char state[16];
    fl_job job;
    fl_error err = {0};
    if (fl_jobs_get(redis, NULL, id, &job, &err) != 0) return "missing";
    snprintf(state, sizeof state, "%s", job.state);
    fl_job_clear(&job);
    return state;
}

static int start(const char *id, const char *worker, bool *finished) {
    int attempts = -1;
    fl_error err = {0};
    FL_EXPECTF(fl_jobs_start(redis, id, worker, &attempts, finished, &err) == 0, "%s: %s", id, err.message);
    return attempts;
}

static bool finish(const char *id, const char *state, const char *json) {
    bool changed = false;
    fl_error err = {0};
    FL_EXPECTF(fl_jobs_finish_as(redis, id, state, json, &changed, &err) == 0, "%s: %s", id, err.message);
    return changed;
}

/* Reads one new entry of a work stream as consumer worker; its entry id into entry. */
static bool read_entry(fl_job_kind kind, const char *worker, char *entry, size_t cap, char *job, size_t job_cap) {
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(redis, &err, "XREADGROUP GROUP %s %s COUNT 1 STREAMS %s >", FL_JOBS_GROUP, worker,
                                   fl_job_stream_key(kind));
    bool ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1;
    if (ok) {
        const redisReply *e = rep->element[0]->element[1]->element[0];
        snprintf(entry, cap, "%s", e->element[0]->str);
        if (job) snprintf(job, job_cap, "%s", e->element[1]->element[1]->str);
    }
    if (rep) freeReplyObject(rep);
    return ok;
}

static const char *owner_of(fl_job_kind kind, const char *entry) {
    static char owner[64];
    fl_error err = {0};
    redisReply *rep = fl_redis_cmd(redis, &err, "XPENDING %s %s %s %s 1", fl_job_stream_key(kind), FL_JOBS_GROUP,
                                   entry, entry);
    snprintf(owner, sizeof owner, "%s",
             rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 ? rep->element[0]->element[1]->str : "");
    if (rep) freeReplyObject(rep);
    return owner;
}

static fl_claim keep_claim(fl_job_kind kind, const char *id, const char *entry, const char *worker) {
    fl_claim c = FL_CLAIM_HELD;
    fl_error err = {0};
    FL_EXPECTF(fl_jobs_keep_claim(redis, kind, id, entry, worker, &c, &err) == 0, "%s", err.message);
    return c;
}

/* ---- tests ------------------------------------------------------------------------------------------ */

static void test_admission(void) {
    flush();
    fl_job_policy p = policy(3, 2);
    FL_EXPECT(submit(FL_JOB_GENERATE, "job_a1", "alpha", &p) == FL_ADMITTED);
    FL_EXPECT(submit(FL_JOB_GENERATE, "job_a2", "alpha", &p) == FL_ADMITTED);
    /* The tenant's quota: refused, nothing written. */
    FL_EXPECT(submit(FL_JOB_GENERATE, "job_a3", "alpha", &p) == FL_ADMIT_TENANT_QUOTA);
    FL_EXPECT(!exists("fl:job:job_a3") && !exists("fl:job:job_a3:events"));
    FL_EXPECT(queue_count("generate") == 2 && tenant_pending("alpha", "generate") == 2);
    FL_EXPECT(state_count("queued") == 2);
    FL_EXPECT(int_of("XLEN %s", fl_job_stream_key(FL_JOB_GENERATE), "") == 2);
    FL_EXPECT(int_of("ZCARD fl:tenant:%s:jobs", "alpha", "") == 2);
    /* The quota is per kind: a training of the same tenant is accepted. */
    FL_EXPECT(submit(FL_JOB_TRAIN, "job_t1", "alpha", &p) == FL_ADMITTED);
    FL_EXPECT(tenant_pending("alpha", "train") == 1 && queue_count("train") == 1);
    /* Another tenant fits until the queue as a whole is full. */
    FL_EXPECT(submit(FL_JOB_GENERATE, "job_b1", "beta", &p) == FL_ADMITTED);
    FL_EXPECT(submit(FL_JOB_GENERATE, "job_b2", "beta", &p) == FL_ADMIT_QUEUE_FULL);
    FL_EXPECT(!exists("fl:job:job_b2") && queue_count("generate") == 3 && tenant_pending("beta", "generate") == 1);
    /* The same submission again (a retry whose first reply was lost) is accepted and changes
     * nothing; the same id with other content is a conflict, and changes nothing. */
    FL_EXPECT(submit(FL_JOB_GENERATE, "job_a1", "alpha", &p) == FL_ADMITTED);
    FL_EXPECT(queue_count("generate") == 3 && tenant_pending("alpha", "generate") == 2);
    FL_EXPECT(int_of("XLEN %s", fl_job_stream_key(FL_JOB_GENERATE), "") == 3);
    fl_error err = {0};
    fl_admission a;
    fl_job_policy wide = policy(100, 0);
    FL_EXPECT(fl_jobs_submit(redis, FL_JOB_GENERATE, "job_a1", "alpha", "{}", &wide, &a, &err) != 0 &&
              err.code == FL_ECONFLICT);
    FL_EXPECT(queue_count("generate") == 3);
    /* A malformed id never reaches Redis. */
    FL_EXPECT(fl_jobs_submit(redis, FL_JOB_GENERATE, "job:x", "alpha", "{}", &wide, &a, &err) != 0 &&
              err.code == FL_EINVAL);
    /* Finishing one of alpha's frees a place of its quota and of the queue. */
    FL_EXPECT(finish("job_a1", "succeeded", "{\"images\":[]}"));
    FL_EXPECT(tenant_pending("alpha", "generate") == 1 && queue_count("generate") == 2);
    FL_EXPECT(submit(FL_JOB_GENERATE, "job_a3", "alpha", &p) == FL_ADMITTED);
    /* The compatibility form: the queue bound only. */
    bool full = false;
    FL_EXPECT(fl_jobs_enqueue(redis, FL_JOB_GENERATE, "job_c1", "gamma", "{}", 3, &full, &err) == 0 && full);
    FL_EXPECT(fl_jobs_enqueue(redis, FL_JOB_TRAIN, "job_c2", "gamma", "{}", 3, &full, &err) == 0 && !full);
}

static void test_start_and_attempts(void) {
    flush();
    fl_job_policy p = policy(10, 0);
    submit(FL_JOB_TRAIN, "job_s1", "alpha", &p);
    bool finished = true;
    FL_EXPECT(start("job_s1", "w1", &finished) == 1 && !finished);
    FL_EXPECT(!strcmp(state_of("job_s1"), "running") && state_count("queued") == 0 && state_count("running") == 1);
    /* Another worker takes it over: attempt 2, still counted once. */
    FL_EXPECT(start("job_s1", "w2", &finished) == 2 && !finished);
    FL_EXPECT(state_count("running") == 1);
    fl_job job;
    fl_error err = {0};
    FL_EXPECT(fl_jobs_get(redis, "alpha", "job_s1", &job, &err) == 0 && !strcmp(job.worker, "w2") &&
              job.attempts == 2);
    fl_job_clear(&job);
    FL_EXPECT(fl_jobs_get(redis, "beta", "job_s1", &job, &err) != 0 && err.code == FL_ENOTFOUND);
    int attempts = 0;
    FL_EXPECT(fl_jobs_start(redis, "job_missing", "w1", &attempts, &finished, &err) != 0 && err.code == FL_ENOTFOUND);
    char names[256];
    event_names("job_s1", names, sizeof names);
    FL_EXPECTF(!strcmp(names, "queued,running,running"), "events: %s", names);
}

static void test_finish_once(void) {
    flush();
    fl_job_policy p = policy(10, 0);
    submit(FL_JOB_GENERATE, "job_f1", "alpha", &p);
    bool finished = false;
    start("job_f1", "w1", &finished);
    FL_EXPECT(finish("job_f1", "succeeded", "{\"images\":[]}"));
    /* A late worker cannot finish it again, in any state. */
    FL_EXPECT(!finish("job_f1", "failed", "{\"code\":\"x\",\"message\":\"late\"}"));
    FL_EXPECT(!finish("job_f1", "canceled", "{\"code\":\"canceled\",\"message\":\"late\"}"));
    FL_EXPECT(!finish("job_f1", "succeeded", "{\"images\":[]}"));
    FL_EXPECT(!strcmp(state_of("job_f1"), "succeeded"));
    FL_EXPECT(state_count("running") == 0 && state_count("succeeded") == 1 && state_count("failed") == 0 &&
              state_count("canceled") == 0);
    FL_EXPECT(queue_count("generate") == 0 && tenant_pending("alpha", "generate") == 0);
    char names[256];
    event_names("job_f1", names, sizeof names);
    FL_EXPECTF(!strcmp(names, "queued,running,succeeded"), "events: %s", names);
    /* A finished job is never started again. */
    FL_EXPECT(start("job_f1", "w2", &finished) == 0 && finished);
    fl_error err = {0};
    bool changed;
    FL_EXPECT(fl_jobs_finish(redis, "job_nothing", true, "{}", &changed, &err) != 0 && err.code == FL_ENOTFOUND);
}

static void test_cancel_each_state(void) {
    flush();
    fl_job_policy p = policy(10, 0);
    fl_error err = {0};
    fl_cancel_outcome out = 0;
    /* Queued: canceled at once, with a terminal event; a worker reading it never starts it. */
    submit(FL_JOB_GENERATE, "job_q", "alpha", &p);
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_q", &out, &err) == 0 && out == FL_CANCEL_DONE);
    FL_EXPECT(!strcmp(state_of("job_q"), "canceled"));
    fl_job job;
    FL_EXPECT(fl_jobs_get(redis, NULL, "job_q", &job, &err) == 0 && job.error_json &&
              strstr(job.error_json, "\"code\":\"canceled\"") && job.finished_ms > 0);
    fl_job_clear(&job);
    char entry[64], job_id[64];
    FL_EXPECT(read_entry(FL_JOB_GENERATE, "w1", entry, sizeof entry, job_id, sizeof job_id) &&
              !strcmp(job_id, "job_q"));
    bool finished = false;
    FL_EXPECT(start("job_q", "w1", &finished) == 0 && finished);
    fl_jobs_ack(redis, FL_JOB_GENERATE, entry, &err);
    char names[256];
    event_names("job_q", names, sizeof names);
    FL_EXPECTF(!strcmp(names, "queued,canceled"), "events: %s", names);
    FL_EXPECT(queue_count("generate") == 0 && tenant_pending("alpha", "generate") == 0);
    FL_EXPECT(state_count("queued") == 0 && state_count("canceled") == 1);

    /* Running: requested; the claim check reports it; the worker finishes it as canceled. */
    submit(FL_JOB_GENERATE, "job_r", "alpha", &p);
    FL_EXPECT(read_entry(FL_JOB_GENERATE, "w1", entry, sizeof entry, job_id, sizeof job_id) &&
              !strcmp(job_id, "job_r"));
    start("job_r", "w1", &finished);
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_r", entry, "w1") == FL_CLAIM_HELD);
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_r", &out, &err) == 0 && out == FL_CANCEL_REQUESTED);
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_r", &out, &err) == 0 && out == FL_CANCEL_REQUESTED);
    FL_EXPECT(!strcmp(state_of("job_r"), "running"));
    FL_EXPECT(fl_jobs_get(redis, NULL, "job_r", &job, &err) == 0 && job.cancel_requested);
    fl_job_clear(&job);
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_r", entry, "w1") == FL_CLAIM_CANCEL);
    FL_EXPECT(finish("job_r", "canceled", "{\"code\":\"canceled\",\"message\":\"canceled by the client\"}"));
    event_names("job_r", names, sizeof names);
    FL_EXPECTF(!strcmp(names, "queued,running,cancel_requested,canceled"), "events: %s", names);
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_r", entry, "w1") == FL_CLAIM_FINISHED);

    /* Finished: a conflict that names the state. */
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_r", &out, &err) != 0 && err.code == FL_ECONFLICT &&
              strstr(err.message, "canceled"));
    submit(FL_JOB_GENERATE, "job_done", "alpha", &p);
    start("job_done", "w1", &finished);
    finish("job_done", "succeeded", "{\"images\":[]}");
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_done", &out, &err) != 0 && err.code == FL_ECONFLICT &&
              strstr(err.message, "succeeded"));
    FL_EXPECT(!strcmp(state_of("job_done"), "succeeded"));

    /* Another tenant's job, or none: not found, and nothing changes. */
    submit(FL_JOB_GENERATE, "job_other", "beta", &p);
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_other", &out, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(!strcmp(state_of("job_other"), "queued"));
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_nope", &out, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "../x", &out, &err) != 0 && err.code == FL_ENOTFOUND);

    /* Running on a worker that died: the worker that takes it over finishes it as canceled. */
    submit(FL_JOB_TRAIN, "job_dead", "alpha", &p);
    start("job_dead", "w_dead", &finished);
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_dead", &out, &err) == 0 && out == FL_CANCEL_REQUESTED);
    FL_EXPECT(start("job_dead", "w2", &finished) == 0 && finished);
    FL_EXPECT(!strcmp(state_of("job_dead"), "canceled"));
    FL_EXPECT(queue_count("train") == 0 && tenant_pending("alpha", "train") == 0);
    FL_EXPECT(state_count("running") == 0 && state_count("canceled") == 3 && state_count("succeeded") == 1 &&
              state_count("queued") == 1);
}

static void test_delete_each_state(void) {
    flush();
    fl_job_policy p = policy(10, 0);
    fl_error err = {0};
    fl_delete_outcome out = 0;
    fl_job job;
    bool finished = false;
    char entry[64], job_id[64];
    /* Finished: removed now, record, events and index entry; its state no longer counted. */
    submit(FL_JOB_GENERATE, "job_f", "alpha", &p);
    start("job_f", "w1", &finished);
    finish("job_f", "succeeded", "{\"images\":[]}");
    FL_EXPECT(fl_jobs_delete(redis, "alpha", "job_f", &out, &err) == 0 && out == FL_DELETE_DONE);
    FL_EXPECT(!exists("fl:job:job_f") && !exists("fl:job:job_f:events"));
    FL_EXPECT(int_of("ZSCORE fl:tenant:%s:jobs %s", "alpha", "job_f") == 0);
    FL_EXPECT(state_count("succeeded") == 0);
    FL_EXPECT(fl_jobs_delete(redis, "alpha", "job_f", &out, &err) != 0 && err.code == FL_ENOTFOUND);

    /* Queued: canceled first (it never starts), removed now, its queue place freed. */
    flush();
    submit(FL_JOB_GENERATE, "job_q", "alpha", &p);
    FL_EXPECT(fl_jobs_delete(redis, "alpha", "job_q", &out, &err) == 0 && out == FL_DELETE_DONE);
    FL_EXPECT(!exists("fl:job:job_q") && queue_count("generate") == 0 && tenant_pending("alpha", "generate") == 0);
    FL_EXPECT(read_entry(FL_JOB_GENERATE, "w1", entry, sizeof entry, job_id, sizeof job_id) &&
              !strcmp(job_id, "job_q"));
    int attempts = 0; /* a worker that read it finds nothing to run */
    FL_EXPECT(fl_jobs_start(redis, "job_q", "w1", &attempts, &finished, &err) != 0 && err.code == FL_ENOTFOUND);
    fl_jobs_ack(redis, FL_JOB_GENERATE, entry, &err);
    FL_EXPECT(state_count("queued") == 0 && state_count("canceled") == 0);

    /* Running: gone for the client at once, asked to stop; removed when its worker finishes it. */
    flush();
    submit(FL_JOB_GENERATE, "job_r", "alpha", &p);
    FL_EXPECT(read_entry(FL_JOB_GENERATE, "w1", entry, sizeof entry, job_id, sizeof job_id) &&
              !strcmp(job_id, "job_r"));
    start("job_r", "w1", &finished);
    FL_EXPECT(fl_jobs_delete(redis, "alpha", "job_r", &out, &err) == 0 && out == FL_DELETE_STOPPING);
    FL_EXPECT(fl_jobs_get(redis, "alpha", "job_r", &job, &err) != 0 && err.code == FL_ENOTFOUND);
    fl_cancel_outcome co;
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_r", &co, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_jobs_delete(redis, "alpha", "job_r", &out, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(fl_jobs_get(redis, NULL, "job_r", &job, &err) == 0 && job.cancel_requested && job.deleted);
    fl_job_clear(&job);
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_r", entry, "w1") == FL_CLAIM_CANCEL);
    FL_EXPECT(finish("job_r", "canceled", "{\"code\":\"canceled\",\"message\":\"canceled by the client\"}"));
    FL_EXPECT(!exists("fl:job:job_r") && !exists("fl:job:job_r:events"));
    FL_EXPECT(queue_count("generate") == 0 && state_count("running") == 0 && state_count("canceled") == 0);

    /* Another tenant's job, or none: not found, and nothing changes. */
    submit(FL_JOB_GENERATE, "job_other", "beta", &p);
    FL_EXPECT(fl_jobs_delete(redis, "alpha", "job_other", &out, &err) != 0 && err.code == FL_ENOTFOUND);
    FL_EXPECT(!strcmp(state_of("job_other"), "queued"));
    FL_EXPECT(fl_jobs_delete(redis, "alpha", "job_nope", &out, &err) != 0 && err.code == FL_ENOTFOUND);
}

static void test_counters_never_negative(void) {
    flush();
    fl_job_policy p = policy(10, 0);
    submit(FL_JOB_GENERATE, "job_n1", "alpha", &p);
    bool finished = false;
    start("job_n1", "w1", &finished);
    /* Counters that drifted (an operator reset them): ending the job leaves them at zero. */
    redisReply *rep = cmd("SET fl:queue:generate 0", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("HSET fl:jobs:states running 0", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("HSET fl:tenant:alpha:pending generate 0", "", "");
    if (rep) freeReplyObject(rep);
    finish("job_n1", "failed", "{\"code\":\"x\",\"message\":\"y\"}");
    FL_EXPECT(queue_count("generate") == 0 && state_count("running") == 0 && tenant_pending("alpha", "generate") == 0);
    FL_EXPECT(state_count("failed") == 1);
    submit(FL_JOB_GENERATE, "job_n2", "alpha", &p);
    rep = cmd("HSET fl:jobs:states queued 0", "", "");
    if (rep) freeReplyObject(rep);
    fl_cancel_outcome out;
    fl_error err = {0};
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_n2", &out, &err) == 0 && out == FL_CANCEL_DONE);
    FL_EXPECT(state_count("queued") == 0 && queue_count("generate") == 0);
}

static void test_claims_and_requeue(void) {
    flush();
    fl_job_policy p = policy(10, 0);
    submit(FL_JOB_GENERATE, "job_c", "alpha", &p);
    char entry[64];
    FL_EXPECT(read_entry(FL_JOB_GENERATE, "w1", entry, sizeof entry, NULL, 0));
    bool finished = false;
    start("job_c", "w1", &finished);
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_c", entry, "w1") == FL_CLAIM_HELD);
    /* w2 takes the entry over (as XAUTOCLAIM does after the claim timeout) and starts the job. */
    redisReply *rep = NULL;
    fl_error err = {0};
    rep = fl_redis_cmd(redis, &err, "XCLAIM %s %s w2 0 %s JUSTID", fl_job_stream_key(FL_JOB_GENERATE), FL_JOBS_GROUP,
                       entry);
    if (rep) freeReplyObject(rep);
    FL_EXPECT(!strcmp(owner_of(FL_JOB_GENERATE, entry), "w2"));
    /* Before w2 started the job w1 already sees it lost the entry, and does not take it back. */
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_c", entry, "w1") == FL_CLAIM_LOST);
    FL_EXPECT(!strcmp(owner_of(FL_JOB_GENERATE, entry), "w2"));
    FL_EXPECT(start("job_c", "w2", &finished) == 2);
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_c", entry, "w1") == FL_CLAIM_LOST);
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_c", entry, "w2") == FL_CLAIM_HELD);
    /* The job's worker changed but the entry came back to w1 somehow: still lost for w1. */
    fl_requeue_outcome rq;
    FL_EXPECT(fl_jobs_requeue(redis, FL_JOB_GENERATE, "job_c", entry, "w1", &rq, &err) == 0 &&
              rq == FL_REQUEUE_NOT_HELD);
    FL_EXPECT(!strcmp(state_of("job_c"), "running"));
    /* w2 stops and hands it back: queued again, its entry acknowledged, a new entry for others. */
    FL_EXPECT(fl_jobs_requeue(redis, FL_JOB_GENERATE, "job_c", entry, "w2", &rq, &err) == 0 && rq == FL_REQUEUED);
    FL_EXPECT(!strcmp(state_of("job_c"), "queued") && state_count("queued") == 1 && state_count("running") == 0);
    FL_EXPECT(!strcmp(owner_of(FL_JOB_GENERATE, entry), ""));
    FL_EXPECT(queue_count("generate") == 1);
    char entry2[64], job_id[64];
    FL_EXPECT(read_entry(FL_JOB_GENERATE, "w3", entry2, sizeof entry2, job_id, sizeof job_id) &&
              !strcmp(job_id, "job_c") && strcmp(entry2, entry) != 0);
    FL_EXPECT(start("job_c", "w3", &finished) == 3 && !finished);
    char names[256];
    event_names("job_c", names, sizeof names);
    FL_EXPECTF(!strcmp(names, "queued,running,running,requeued,running"), "events: %s", names);
    /* A requeue of a job marked for cancel ends it as canceled. */
    fl_cancel_outcome out;
    FL_EXPECT(fl_jobs_cancel(redis, "alpha", "job_c", &out, &err) == 0 && out == FL_CANCEL_REQUESTED);
    FL_EXPECT(fl_jobs_requeue(redis, FL_JOB_GENERATE, "job_c", entry2, "w3", &rq, &err) == 0 &&
              rq == FL_REQUEUE_CANCELED);
    FL_EXPECT(!strcmp(state_of("job_c"), "canceled") && queue_count("generate") == 0);
    FL_EXPECT(!strcmp(owner_of(FL_JOB_GENERATE, entry2), ""));
    /* An entry nobody holds any more: lost. */
    FL_EXPECT(keep_claim(FL_JOB_GENERATE, "job_c", entry2, "w3") == FL_CLAIM_LOST);

    /* An entry read but not started (a worker stopping right after reading it) goes back as it
     * is: still queued, counted once, one live entry. */
    submit(FL_JOB_TRAIN, "job_u", "alpha", &p);
    char entry3[64], entry4[64];
    FL_EXPECT(read_entry(FL_JOB_TRAIN, "w4", entry3, sizeof entry3, NULL, 0));
    FL_EXPECT(fl_jobs_requeue(redis, FL_JOB_TRAIN, "job_u", entry3, "w4", &rq, &err) == 0 && rq == FL_REQUEUED);
    FL_EXPECT(!strcmp(state_of("job_u"), "queued") && state_count("queued") == 1 && queue_count("train") == 1);
    FL_EXPECT(!strcmp(owner_of(FL_JOB_TRAIN, entry3), ""));
    FL_EXPECT(read_entry(FL_JOB_TRAIN, "w5", entry4, sizeof entry4, job_id, sizeof job_id) &&
              !strcmp(job_id, "job_u"));
    FL_EXPECT(!read_entry(FL_JOB_TRAIN, "w5", entry3, sizeof entry3, NULL, 0));
    /* Another worker's entry is not handed back by this one. */
    FL_EXPECT(fl_jobs_requeue(redis, FL_JOB_TRAIN, "job_u", entry4, "w4", &rq, &err) == 0 &&
              rq == FL_REQUEUE_NOT_HELD);
    FL_EXPECT(!strcmp(owner_of(FL_JOB_TRAIN, entry4), "w5"));
}

static void test_expiry_and_images(void) {
    flush();
    fl_job_policy p = {10, 0, 100, 0};
    submit(FL_JOB_GENERATE, "job_e", "alpha", &p);
    FL_EXPECT(ttl_of("fl:job:job_e") == -1 && ttl_of("fl:job:job_e:events") == -1);
    bool finished = false;
    start("job_e", "w1", &finished);
    redisReply *rep = cmd("HSET fl:image:img_e1 tenant alpha job job_e", "", "");
    if (rep) freeReplyObject(rep);
    int64_t before = fl_now_ms();
    FL_EXPECT(finish("job_e", "succeeded", "{\"images\":[{\"id\":\"img_e1\",\"url\":\"/v1/images/img_e1.png\"}]}"));
    long long t = ttl_of("fl:job:job_e");
    FL_EXPECTF(t > 90 && t <= 100, "job ttl %lld", t);
    t = ttl_of("fl:job:job_e:events");
    FL_EXPECTF(t > 90 && t <= 100, "events ttl %lld", t);
    t = ttl_of("fl:image:img_e1");
    FL_EXPECTF(t > 90 && t <= 100, "image ttl %lld", t);
    long long due = int_of("ZSCORE fl:images:due %s", "img_e1", "");
    FL_EXPECTF(due >= before + 99000 && due <= fl_now_ms() + 100000, "due %lld", due);

    /* A result that arrives after the job ended belongs to nothing: its images go now. */
    rep = cmd("HSET fl:image:img_late tenant alpha job job_e", "", "");
    if (rep) freeReplyObject(rep);
    FL_EXPECT(!finish("job_e", "succeeded", "{\"images\":[{\"id\":\"img_late\"}]}"));
    FL_EXPECT(!exists("fl:image:img_late") && int_of("ZSCORE fl:images:due %s", "img_late", "") == 0);
    FL_EXPECT(int_of("ZSCORE fl:images:due %s", "img_e1", "") == due);

    /* The default retention applies when the policy names none. */
    fl_job_policy d = policy(10, 0);
    submit(FL_JOB_GENERATE, "job_d", "alpha", &d);
    fl_cancel_outcome out;
    fl_error err = {0};
    fl_jobs_cancel(redis, "alpha", "job_d", &out, &err);
    t = ttl_of("fl:job:job_d");
    FL_EXPECTF(t > FL_JOBS_RETENTION_S_DEFAULT - 10 && t <= FL_JOBS_RETENTION_S_DEFAULT, "default ttl %lld", t);
}

static void test_tenant_index_prune(void) {
    flush();
    fl_job_policy p = {100, 0, 3600, 3};
    char id[32];
    for (int i = 1; i <= 5; i++) {
        snprintf(id, sizeof id, "job_p%d", i);
        submit(FL_JOB_GENERATE, id, "alpha", &p);
    }
    redisReply *rep = cmd("HSET fl:image:img_p1 tenant alpha job job_p1", "", "");
    if (rep) freeReplyObject(rep);
    bool finished = false;
    start("job_p1", "w1", &finished);
    finish("job_p1", "succeeded", "{\"images\":[{\"id\":\"img_p1\"}]}");
    for (int i = 2; i <= 4; i++) {
        snprintf(id, sizeof id, "job_p%d", i);
        start(id, "w1", &finished);
        finish(id, "failed", "{\"code\":\"x\",\"message\":\"y\"}");
    }
    /* 5 jobs, keep 3: the two oldest finished ones are gone with their events and images. */
    FL_EXPECT(int_of("ZCARD fl:tenant:%s:jobs", "alpha", "") == 3);
    FL_EXPECT(!exists("fl:job:job_p1") && !exists("fl:job:job_p1:events") && !exists("fl:job:job_p2"));
    FL_EXPECT(exists("fl:job:job_p3") && exists("fl:job:job_p4") && exists("fl:job:job_p5"));
    FL_EXPECT(!exists("fl:image:img_p1") && int_of("ZSCORE fl:images:due %s", "img_p1", "") == 0);
    /* Unfinished jobs are never removed, even beyond the count. */
    fl_job_policy tight = {100, 0, 3600, 1};
    submit(FL_JOB_GENERATE, "job_p6", "alpha", &tight);
    submit(FL_JOB_GENERATE, "job_p7", "alpha", &tight);
    start("job_p6", "w1", &finished);
    finish("job_p6", "failed", "{\"code\":\"x\",\"message\":\"y\"}");
    FL_EXPECT(exists("fl:job:job_p5") && exists("fl:job:job_p7") && exists("fl:job:job_p6"));
    FL_EXPECT(!exists("fl:job:job_p3") && !exists("fl:job:job_p4"));
    /* Entries whose record is gone (expired) are dropped from the index once they are old. */
    rep = cmd("ZADD fl:tenant:alpha:jobs 1 job_ghost", "", "");
    if (rep) freeReplyObject(rep);
    submit(FL_JOB_GENERATE, "job_p8", "alpha", &p);
    fl_cancel_outcome out;
    fl_error err = {0};
    fl_jobs_cancel(redis, "alpha", "job_p8", &out, &err);
    FL_EXPECT(int_of("ZSCORE fl:tenant:%s:jobs %s", "alpha", "job_ghost") == 0);
}

static void test_trim_streams(void) {
    flush();
    fl_job_policy p = policy(100, 0);
    char id[32], entries[5][64];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "job_x%d", i);
        submit(FL_JOB_GENERATE, id, "alpha", &p);
        FL_EXPECT(read_entry(FL_JOB_GENERATE, "w1", entries[i], sizeof entries[i], NULL, 0));
    }
    fl_error err = {0};
    long long trimmed = -1;
    FL_EXPECT(fl_jobs_trim_stream(redis, FL_JOB_GENERATE, &trimmed, &err) == 0 && trimmed == 0);
    fl_jobs_ack(redis, FL_JOB_GENERATE, entries[0], &err);
    fl_jobs_ack(redis, FL_JOB_GENERATE, entries[1], &err);
    fl_jobs_ack(redis, FL_JOB_GENERATE, entries[3], &err);
    /* Entry 2 is still pending: only what is older than it goes. */
    FL_EXPECTF(fl_jobs_trim_stream(redis, FL_JOB_GENERATE, &trimmed, &err) == 0 && trimmed == 2, "%lld %s", trimmed,
               err.message);
    FL_EXPECT(int_of("XLEN %s", fl_job_stream_key(FL_JOB_GENERATE), "") == 3);
    /* Entries nobody has read yet stay, however old. */
    submit(FL_JOB_GENERATE, "job_y0", "alpha", &p);
    submit(FL_JOB_GENERATE, "job_y1", "alpha", &p);
    fl_jobs_ack(redis, FL_JOB_GENERATE, entries[2], &err);
    fl_jobs_ack(redis, FL_JOB_GENERATE, entries[4], &err);
    FL_EXPECT(fl_jobs_trim_stream(redis, FL_JOB_GENERATE, &trimmed, &err) == 0 && trimmed == 3);
    FL_EXPECT(int_of("XLEN %s", fl_job_stream_key(FL_JOB_GENERATE), "") == 2);
    char entry[64], job_id[64];
    FL_EXPECT(read_entry(FL_JOB_GENERATE, "w1", entry, sizeof entry, job_id, sizeof job_id) &&
              !strcmp(job_id, "job_y0"));
    /* An empty stream, and one nobody has read: nothing to trim. */
    FL_EXPECT(fl_jobs_trim_stream(redis, FL_JOB_TRAIN, &trimmed, &err) == 0 && trimmed == 0);
}

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    FL_EXPECTF(f, "%s: %s", path, strerror(errno));
    if (f) {
        fputs("x", f);
        fclose(f);
    }
}

static void test_sweeps(void) {
    flush();
    char path[600];
    snprintf(path, sizeof path, "%s/images", state_dir);
    mkdir(path, 0755);
    const char *names[] = {"img_due", "img_later", "img_orphan", "img_running", "img_named"};
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "%s/images/%s.png", state_dir, names[i]);
        touch(path);
    }
    redisReply *rep = cmd("HSET fl:image:img_due job job_gone", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("ZADD fl:images:due 5 img_due", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("ZADD fl:images:due 99999999999999 img_later", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("ZADD fl:images:due 0 %s", "../../etc/passwd", "");
    if (rep) freeReplyObject(rep);
    int removed = -1;
    fl_error err = {0};
    FL_EXPECT(fl_jobs_sweep_images(redis, state_dir, 100, &removed, &err) == 0 && removed == 2);
    snprintf(path, sizeof path, "%s/images/img_due.png", state_dir);
    FL_EXPECT(access(path, F_OK) != 0 && !exists("fl:image:img_due"));
    snprintf(path, sizeof path, "%s/images/img_later.png", state_dir);
    FL_EXPECT(access(path, F_OK) == 0);
    FL_EXPECT(int_of("ZCARD fl:images:due", "", "") == 1);

    /* Orphans: an image of a finished job that its result does not name, of no job at all; an
     * image of a running job stays; one its finished job names (from before images expired
     * with their jobs) gets the job's expiry. */
    fl_job_policy p = {10, 0, 500, 0};
    submit(FL_JOB_GENERATE, "job_run", "alpha", &p);
    submit(FL_JOB_GENERATE, "job_end", "alpha", &p);
    bool finished;
    start("job_run", "w1", &finished);
    start("job_end", "w1", &finished);
    finish("job_end", "succeeded", "{\"images\":[]}");
    rep = cmd("HSET fl:job:job_end result %s", "{\"images\":[{\"id\":\"img_named\"}]}", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("HSET fl:image:img_orphan job job_end", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("HSET fl:image:img_nojob tenant alpha", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("HSET fl:image:img_running job job_run", "", "");
    if (rep) freeReplyObject(rep);
    rep = cmd("HSET fl:image:img_named job job_end", "", "");
    if (rep) freeReplyObject(rep);
    unsigned long long cursor = 0;
    int orphans = 0, total = 0, rounds = 0;
    do {
        FL_EXPECTF(fl_jobs_sweep_orphan_images(redis, &cursor, 2, &orphans, &err) == 0, "%s", err.message);
        total += orphans;
    } while (cursor != 0 && ++rounds < 100);
    FL_EXPECTF(total == 2, "orphans %d", total);
    FL_EXPECT(!exists("fl:image:img_orphan") && !exists("fl:image:img_nojob"));
    FL_EXPECT(exists("fl:image:img_running") && ttl_of("fl:image:img_running") == -1);
    long long t = ttl_of("fl:image:img_named");
    FL_EXPECTF(t > 400 && t <= 500, "named ttl %lld", t);
    FL_EXPECT(fl_jobs_sweep_images(redis, state_dir, 100, &removed, &err) == 0 && removed == 2);
    snprintf(path, sizeof path, "%s/images/img_orphan.png", state_dir);
    FL_EXPECT(access(path, F_OK) != 0);
    snprintf(path, sizeof path, "%s/images/img_running.png", state_dir);
    FL_EXPECT(access(path, F_OK) == 0);
    /* The sweep removes at most what it is given per pass. */
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "img_b%d", i);
        rep = cmd("ZADD fl:images:due 1 %s", id, "");
        if (rep) freeReplyObject(rep);
    }
    FL_EXPECT(fl_jobs_sweep_images(redis, state_dir, 3, &removed, &err) == 0 && removed == 3);
    FL_EXPECT(fl_jobs_sweep_images(redis, state_dir, 3, &removed, &err) == 0 && removed == 2);
}

static void test_remove_files(void) {
    char path[700];
    snprintf(path, sizeof path, "%s/jobs", state_dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/jobs/job_rm", state_dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/jobs/job_rm/adapter.safetensors.ckpt", state_dir);
    touch(path);
    snprintf(path, sizeof path, "%s/uploads", state_dir);
    mkdir(path, 0755);
    const char *uploads[] = {"job_rm.zip", "job_rm.tar.gz", "job_rmx.zip", "job_other.zip"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/uploads/%s", state_dir, uploads[i]);
        touch(path);
    }
    fl_jobs_remove_files(state_dir, "job_rm");
    fl_jobs_remove_files(state_dir, "../uploads"); /* not an id: nothing happens */
    snprintf(path, sizeof path, "%s/jobs/job_rm", state_dir);
    FL_EXPECT(access(path, F_OK) != 0);
    bool expect[] = {false, false, true, true};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/uploads/%s", state_dir, uploads[i]);
        FL_EXPECTF((access(path, F_OK) == 0) == expect[i], "%s", uploads[i]);
    }
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/fl_test_jobs_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    snprintf(redis_dir, sizeof redis_dir, "%s/redis", tmp_dir);
    snprintf(state_dir, sizeof state_dir, "%s/state", tmp_dir);
    mkdir(state_dir, 0755);
    fl_error err = {0};
    int rc = 1;
    /* No redis-server is a failure, not a skip: CI installs it. */
    if (fl_redis_server_start(redis_dir, &server, &err) != 0) {
        fprintf(stderr, "FAIL: cannot start redis-server: %s\n", err.message);
        goto out;
    }
    if (fl_redis_connect(fl_redis_server_address(server), &redis, &err) != 0) {
        fprintf(stderr, "FAIL: %s\n", err.message);
        goto out;
    }
    FL_RUN(test_admission);
    FL_RUN(test_start_and_attempts);
    FL_RUN(test_finish_once);
    FL_RUN(test_cancel_each_state);
    FL_RUN(test_delete_each_state);
    FL_RUN(test_counters_never_negative);
    FL_RUN(test_claims_and_requeue);
    FL_RUN(test_expiry_and_images);
    FL_RUN(test_tenant_index_prune);
    FL_RUN(test_trim_streams);
    FL_RUN(test_sweeps);
    FL_RUN(test_remove_files);
    rc = fl_test_finish();
out:
    fl_redis_close(redis);
    fl_redis_server_stop(server);
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
