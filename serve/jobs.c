/*
 * jobs.c — job records, work streams and event streams in Redis (see jobs.h). Each state change
 * is a Lua script run with EVAL so its checks and writes are atomic.
 */
#include "serve/jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/clock.h"
#include "core/rng.h"
#include "core/sha256.h"

/* Shared by every script: terminal states, counters that never go below zero, and the end of a
 * job (state, counters, terminal event, expiry, its images due with it — those its result lists
 * under "images" or, for a training's previews, "previews" —, the tenant's index
 * pruned by count and by age). Numbers are written with %.0f so Lua never prints 1e+12. */
#define LUA_PRELUDE                                                                                               \
    "local function terminal(s) return s == 'succeeded' or s == 'failed' or s == 'canceled' end\n"                \
    "local function queue_of(kind) return kind == 'generate' and 'generate' or 'train' end\n"                     \
    "local function num(x) return string.format('%.0f', x) end\n"                                                 \
    "local function dec(key, field)\n"                                                                            \
    "  if redis.call('HINCRBY', key, field, -1) < 0 then redis.call('HSET', key, field, 0) end\n"                 \
    "end\n"                                                                                                       \
    "local function move(from, to)\n"                                                                             \
    "  if from then dec('fl:jobs:states', from) end\n"                                                            \
    "  redis.call('HINCRBY', 'fl:jobs:states', to, 1)\n"                                                          \
    "end\n"                                                                                                       \
    "local function image_ids(text)\n"                                                                            \
    "  local ids = {}\n"                                                                                          \
    "  if not text then return ids end\n"                                                                         \
    "  local ok, v = pcall(cjson.decode, text)\n"                                                                 \
    "  if not ok or type(v) ~= 'table' then return ids end\n"                                                    \
    "  for _, list in ipairs({v.images, v.previews}) do\n"                                                        \
    "    if type(list) == 'table' then\n"                                                                         \
    "      for _, img in ipairs(list) do\n"                                                                       \
    "        if type(img) == 'table' and type(img.id) == 'string' then ids[#ids + 1] = img.id end\n"              \
    "      end\n"                                                                                                 \
    "    end\n"                                                                                                   \
    "  end\n"                                                                                                     \
    "  return ids\n"                                                                                              \
    "end\n"                                                                                                       \
    "local function drop_images(ids)\n"                                                                           \
    "  for _, img in ipairs(ids) do\n"                                                                            \
    "    redis.call('DEL', 'fl:image:' .. img)\n"                                                                 \
    "    redis.call('ZADD', 'fl:images:due', 0, img)\n"                                                           \
    "  end\n"                                                                                                     \
    "end\n"                                                                                                       \
    "local function remove_finished(job, events, index, id)\n"                                                    \
    "  drop_images(image_ids(redis.call('HGET', job, 'result')))\n"                                               \
    "  dec('fl:jobs:states', redis.call('HGET', job, 'state'))\n"                                                 \
    "  redis.call('DEL', job, events)\n"                                                                          \
    "  redis.call('ZREM', index, id)\n"                                                                           \
    "end\n"                                                                                                       \
    "local function finish(job, events, state, field, value, now, event)\n"                                       \
    "  local from = redis.call('HGET', job, 'state')\n"                                                           \
    "  local id = redis.call('HGET', job, 'id')\n"                                                                \
    "  local kind = redis.call('HGET', job, 'kind') or 'generate'\n"                                              \
    "  local tenant = redis.call('HGET', job, 'tenant') or ''\n"                                                  \
    "  move(from, state)\n"                                                                                       \
    "  redis.call('HSET', job, 'state', state, field, value, 'updated_ms', now, 'finished_ms', now)\n"            \
    "  local q = 'fl:queue:' .. queue_of(kind)\n"                                                                 \
    "  if redis.call('DECR', q) < 0 then redis.call('SET', q, 0) end\n"                                           \
    "  dec('fl:tenant:' .. tenant .. ':pending', queue_of(kind))\n"                                               \
    "  redis.call('XADD', events, 'MAXLEN', '~', 10000, '*', 'data', event)\n"                                    \
    "  local ttl = tonumber(redis.call('HGET', job, 'ttl_s') or '') or 604800\n"                                  \
    "  redis.call('EXPIRE', job, ttl)\n"                                                                          \
    "  redis.call('EXPIRE', events, ttl)\n"                                                                       \
    "  if state == 'succeeded' then\n"                                                                            \
    "    for _, img in ipairs(image_ids(value)) do\n"                                                             \
    "      redis.call('EXPIRE', 'fl:image:' .. img, ttl)\n"                                                       \
    "      redis.call('ZADD', 'fl:images:due', num(tonumber(now) + ttl * 1000), img)\n"                           \
    "    end\n"                                                                                                   \
    "  end\n"                                                                                                     \
    "  local index = 'fl:tenant:' .. tenant .. ':jobs'\n"                                                         \
    "  local keep = tonumber(redis.call('HGET', job, 'keep') or '') or 10000\n"                                   \
    "  local excess = redis.call('ZCARD', index) - keep\n"                                                        \
    "  if excess > 0 then\n"                                                                                      \
    "    for _, old in ipairs(redis.call('ZRANGE', index, 0, math.min(excess, 100) - 1)) do\n"                    \
    "      local key = 'fl:job:' .. old\n"                                                                        \
    "      local s = redis.call('HGET', key, 'state')\n"                                                          \
    "      if old ~= id and (not s or terminal(s)) then\n"                                                        \
    "        drop_images(image_ids(redis.call('HGET', key, 'result')))\n"                                         \
    "        redis.call('DEL', key, key .. ':events')\n"                                                          \
    "        redis.call('ZREM', index, old)\n"                                                                    \
    "      end\n"                                                                                                 \
    "    end\n"                                                                                                   \
    "  end\n"                                                                                                     \
    "  local cutoff = num(tonumber(now) - ttl * 1000)\n"                                                          \
    "  for _, old in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, 100)) do\n"            \
    "    if redis.call('EXISTS', 'fl:job:' .. old) == 0 then redis.call('ZREM', index, old) end\n"                \
    "  end\n"                                                                                                     \
    "  if redis.call('HGET', job, 'deleted') == '1' then remove_finished(job, events, index, id) end\n"           \
    "end\n"                                                                                                       \
    "local function cancel_now(job, events, id, now, message)\n"                                                  \
    "  local e = {code = 'canceled', message = message}\n"                                                        \
    "  local event = cjson.encode({event = 'canceled', job = id, error = e})\n"                                   \
    "  finish(job, events, 'canceled', 'error', cjson.encode(e), now, event)\n"                                  \
    "end\n"

/* KEYS: job, work stream, tenant index, events. ARGV: id, tenant, kind, request, now, max pending,
 * max pending of the tenant (<= 0: none), ttl_s, keep. 1 accepted, 0 queue full, -2 tenant quota,
 * -1 the id exists with other content. The same submission again (the connection's retry after
 * Redis applied the script but the reply was lost) is accepted once more and changes nothing:
 * ids are random, so an existing job of the same tenant, kind and request can only be this one. */
static const char *const enqueue_script = LUA_PRELUDE
    "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  local was = redis.call('HMGET', KEYS[1], 'tenant', 'kind', 'request')\n"
    "  if was[1] == ARGV[2] and was[2] == ARGV[3] and was[3] == ARGV[4] then return 1 end\n"
    "  return -1\n"
    "end\n"
    "local q = 'fl:queue:' .. queue_of(ARGV[3])\n"
    "if tonumber(redis.call('GET', q) or '0') >= tonumber(ARGV[6]) then return 0 end\n"
    "local tp = 'fl:tenant:' .. ARGV[2] .. ':pending'\n"
    "if tonumber(ARGV[7]) > 0 and tonumber(redis.call('HGET', tp, queue_of(ARGV[3])) or '0') >= tonumber(ARGV[7]) then\n"
    "  return -2\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'id', ARGV[1], 'tenant', ARGV[2], 'kind', ARGV[3], 'state', 'queued',\n"
    "  'request', ARGV[4], 'created_ms', ARGV[5], 'updated_ms', ARGV[5], 'attempts', 0, 'step', 0, 'total', 0,\n"
    "  'ttl_s', ARGV[8], 'keep', ARGV[9])\n"
    "redis.call('INCR', q)\n"
    "redis.call('HINCRBY', tp, queue_of(ARGV[3]), 1)\n"
    "redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])\n"
    "move(false, 'queued')\n"
    "redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'data', cjson.encode({event = 'queued', job = ARGV[1]}))\n"
    "redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])\n"
    "return 1\n";

/* KEYS: job, events. ARGV: worker, now, id. The attempt number, 0 when finished (or canceled
 * here because the client asked to), -1 when missing. */
static const char *const start_script = LUA_PRELUDE
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return -1 end\n"
    "if terminal(st) then return 0 end\n"
    "if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then\n"
    "  cancel_now(KEYS[1], KEYS[2], ARGV[3], ARGV[2], 'canceled by the client')\n"
    "  return 0\n"
    "end\n"
    "if st ~= 'running' then move(st, 'running') end\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'updated_ms', ARGV[2])\n"
    "local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'data',\n"
    "  cjson.encode({event = 'running', attempt = n, worker = ARGV[1]}))\n"
    "return n\n";

/* KEYS: job, events. ARGV: state, field, value, now, event. 1 finished now, 0 already finished,
 * -1 missing; a result that was not stored gives its images up. */
static const char *const finish_script = LUA_PRELUDE
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st or terminal(st) then\n"
    "  if ARGV[1] == 'succeeded' then drop_images(image_ids(ARGV[3])) end\n"
    "  return st and 0 or -1\n"
    "end\n"
    "finish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])\n"
    "return 1\n";

/* KEYS: job, events. ARGV: tenant, now, id. 1 canceled, 2 cancel requested, 0 already finished,
 * -1 missing or another tenant's. */
static const char *const cancel_script = LUA_PRELUDE
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st or redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return -1 end\n"
    "if redis.call('HGET', KEYS[1], 'deleted') == '1' then return -1 end\n"
    "if terminal(st) then return 0 end\n"
    "if st == 'queued' then\n"
    "  cancel_now(KEYS[1], KEYS[2], ARGV[3], ARGV[2], 'canceled by the client before it started')\n"
    "  return 1\n"
    "end\n"
    "if redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1' then\n"
    "  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_ms', ARGV[2])\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'data',\n"
    "    cjson.encode({event = 'cancel_requested', job = ARGV[3]}))\n"
    "end\n"
    "return 2\n";

/* KEYS: job, events, tenant index. ARGV: tenant, id, now. 1 removed now (a finished job, or a queued
 * one, canceled first: the record, its events, its images' keys; their files are made due for the
 * sweep), 2 removed from the client's view and asked to stop (a running job: its worker stops it
 * at the next step, and it is removed as it ends), -1 missing, deleted already or another
 * tenant's. */
static const char *const delete_script = LUA_PRELUDE
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st or redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return -1 end\n"
    "if redis.call('HGET', KEYS[1], 'deleted') == '1' then return -1 end\n"
    "redis.call('HSET', KEYS[1], 'deleted', '1')\n"
    "if st == 'queued' then\n"
    "  cancel_now(KEYS[1], KEYS[2], ARGV[2], ARGV[3], 'deleted by the client before it started')\n"
    "  return 1\n"
    "end\n"
    "if terminal(st) then\n"
    "  remove_finished(KEYS[1], KEYS[2], KEYS[3], ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_ms', ARGV[3])\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'data',\n"
    "  cjson.encode({event = 'cancel_requested', job = ARGV[2]}))\n"
    "return 2\n";

/* KEYS: work stream, job. ARGV: group, worker, entry. See fl_claim. */
static const char *const keep_claim_script = LUA_PRELUDE
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end\n"
    "local st = redis.call('HGET', KEYS[2], 'state')\n"
    "if not st or terminal(st) then return 3 end\n"
    "if st ~= 'running' or redis.call('HGET', KEYS[2], 'worker') ~= ARGV[2] then return 0 end\n"
    "redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')\n"
    "if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return 2 end\n"
    "return 1\n";

/* KEYS: work stream, job, events. ARGV: group, worker, entry, now, id. See fl_requeue_outcome. An
 * entry held but not started yet (the job is queued: the entry is its only live one) is handed
 * back as it is. */
static const char *const requeue_script = LUA_PRELUDE
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end\n"
    "local st = redis.call('HGET', KEYS[2], 'state')\n"
    "if not st or terminal(st) then\n"
    "  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "  return 0\n"
    "end\n"
    "if st == 'queued' then\n"
    "  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "  redis.call('XADD', KEYS[1], '*', 'job', ARGV[5])\n"
    "  return 1\n"
    "end\n"
    "if st ~= 'running' or redis.call('HGET', KEYS[2], 'worker') ~= ARGV[2] then return 0 end\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then\n"
    "  cancel_now(KEYS[2], KEYS[3], ARGV[5], ARGV[4], 'canceled by the client')\n"
    "  return 2\n"
    "end\n"
    "move('running', 'queued')\n"
    "redis.call('HSET', KEYS[2], 'state', 'queued', 'worker', '', 'updated_ms', ARGV[4])\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'data',\n"
    "  cjson.encode({event = 'requeued', job = ARGV[5], reason = 'the worker running it stopped'}))\n"
    "redis.call('XADD', KEYS[1], '*', 'job', ARGV[5])\n"
    "return 1\n";

/* KEYS: work stream. Trims what every group is done with: entries older than both its oldest
 * pending entry and the first entry after its last delivered one. Returns how many went. */
static const char *const trim_script =
    "local function parse(id)\n"
    "  local a, b = string.match(id, '^(%d+)-(%d+)$')\n"
    "  return tonumber(a), tonumber(b)\n"
    "end\n"
    "local function less(x, y)\n"
    "  local a1, b1 = parse(x)\n"
    "  local a2, b2 = parse(y)\n"
    "  return a1 < a2 or (a1 == a2 and b1 < b2)\n"
    "end\n"
    "local minid = nil\n"
    "for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do\n"
    "  local name, last\n"
    "  for i = 1, #g, 2 do\n"
    "    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end\n"
    "  end\n"
    "  if not name or not last then return 0 end\n"
    "  local a, b = parse(last)\n"
    "  local bound = string.format('%.0f-%.0f', a, b + 1)\n"
    "  local pend = redis.call('XPENDING', KEYS[1], name)\n"
    "  if pend[1] > 0 and less(pend[2], bound) then bound = pend[2] end\n"
    "  if not minid or less(bound, minid) then minid = bound end\n"
    "end\n"
    "if not minid then return 0 end\n"
    "return redis.call('XTRIM', KEYS[1], 'MINID', minid)\n";

/* KEYS: image keys. An image key without an expiry whose job is finished or gone and whose
 * job's result does not name it is made due now; one that the result names gets the job's
 * expiry (jobs finished before images expired with them). Returns how many were orphans. */
static const char *const orphan_images_script = LUA_PRELUDE
    "local n = 0\n"
    "for _, key in ipairs(KEYS) do\n"
    "  if redis.call('TTL', key) == -1 then\n"
    "    local img = string.sub(key, 10)\n"
    "    local job = redis.call('HGET', key, 'job')\n"
    "    local jk = job and ('fl:job:' .. job) or ''\n"
    "    local st = job and redis.call('HGET', jk, 'state')\n"
    "    if not st then\n"
    "      drop_images({img})\n"
    "      n = n + 1\n"
    "    elseif terminal(st) then\n"
    "      local named = false\n"
    "      for _, id in ipairs(image_ids(redis.call('HGET', jk, 'result'))) do named = named or id == img end\n"
    "      local ttl = redis.call('TTL', jk)\n"
    "      if not named then\n"
    "        drop_images({img})\n"
    "        n = n + 1\n"
    "      elseif ttl > 0 then\n"
    "        redis.call('EXPIRE', key, ttl)\n"
    "        redis.call('ZADD', 'fl:images:due', num(tonumber(ARGV[1]) + ttl * 1000), img)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return n\n";

const char *fl_job_kind_name(fl_job_kind kind) {
    return kind == FL_JOB_TRAIN    ? "train"
           : kind == FL_JOB_IMPORT ? "import"
           : kind == FL_JOB_EVAL   ? "evaluate"
                                   : "generate";
}

const char *fl_job_stream_key(fl_job_kind kind) {
    return kind == FL_JOB_GENERATE ? "fl:stream:generate" : "fl:stream:train";
}

static const char *queue_key(fl_job_kind kind) {
    return kind == FL_JOB_GENERATE ? "fl:queue:generate" : "fl:queue:train";
}

void fl_job_clear(fl_job *job) {
    free(job->request_json);
    free(job->result_json);
    free(job->error_json);
    memset(job, 0, sizeof *job);
}

bool fl_job_state_terminal(const char *state) {
    return !strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "canceled");
}

void fl_jobs_new_id(const char *prefix, char id[FL_ID_MAX]) {
    char full[16];
    snprintf(full, sizeof full, "%.10s_", prefix);
    fl_random_id(full, 12, id, FL_ID_MAX);
}

/* Ids the service made ("job_...", "img_..."): letters, digits and '_' only, so one is safe in
 * a key and in a file name. */
static bool plain_id(const char *id) {
    size_t n = strlen(id);
    return n > 0 && n < FL_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == n;
}

static void job_keys(const char *id, char job_key[128], char events_key[160]) {
    snprintf(job_key, 128, "fl:job:%.100s", id);
    snprintf(events_key, 160, "fl:job:%.100s:events", id);
}

int fl_jobs_init(fl_redis *r, fl_error *err) {
    for (int k = 0; k < 2; k++) {
        fl_error e = {0};
        /* From the stream's start, not "$": entries can only come from an accepted job, so a stream
         * without the group (Redis flushed or replaced, then a job accepted before any worker
         * recreated the group) holds jobs nobody has read yet. */
        redisReply *rep = fl_redis_cmd(r, &e, "XGROUP CREATE %s %s 0 MKSTREAM", fl_job_stream_key((fl_job_kind)k),
                                       FL_JOBS_GROUP);
        if (rep) {
            freeReplyObject(rep);
        } else if (!strstr(e.message, "BUSYGROUP")) {
            if (err) *err = e;
            return -1;
        }
    }
    return 0;
}

/* EVAL script with keys then args; returns the integer reply in *result. */
static int eval_int(fl_redis *r, const char *script, int n_keys, const char **keys, int n_args, const char **args,
                    long long *result, fl_error *err) {
    const char *argv[40];
    char nk[16];
    FL_CHECK(3 + n_keys + n_args <= 40);
    snprintf(nk, sizeof nk, "%d", n_keys);
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = script;
    argv[argc++] = nk;
    for (int i = 0; i < n_keys; i++) argv[argc++] = keys[i];
    for (int i = 0; i < n_args; i++) argv[argc++] = args[i];
    redisReply *rep = fl_redis_argv(r, err, argc, argv, NULL);
    if (!rep) return -1;
    int rc = 0;
    if (rep->type == REDIS_REPLY_INTEGER)
        *result = rep->integer;
    else
        rc = fl_fail(err, FL_EIO, "unexpected reply type %d from a job script", rep->type);
    freeReplyObject(rep);
    return rc;
}

int fl_jobs_submit(fl_redis *r, fl_job_kind kind, const char *id, const char *tenant, const char *request_json,
                   const fl_job_policy *policy, fl_admission *admission, fl_error *err) {
    *admission = FL_ADMIT_QUEUE_FULL;
    if (!plain_id(id)) return fl_fail(err, FL_EINVAL, "job id '%.64s' is malformed", id);
    char job_key[128], events_key[160], tenant_key[160], max[32], max_tenant[32], ttl[32], keep[32], now[32];
    job_keys(id, job_key, events_key);
    snprintf(tenant_key, sizeof tenant_key, "fl:tenant:%.100s:jobs", tenant);
    snprintf(max, sizeof max, "%ld", policy->max_pending);
    snprintf(max_tenant, sizeof max_tenant, "%ld", policy->max_pending_tenant > 0 ? policy->max_pending_tenant : 0);
    snprintf(ttl, sizeof ttl, "%ld", policy->retention_s > 0 ? policy->retention_s : FL_JOBS_RETENTION_S_DEFAULT);
    snprintf(keep, sizeof keep, "%ld",
             policy->keep_per_tenant > 0 ? policy->keep_per_tenant : FL_JOBS_KEEP_PER_TENANT_DEFAULT);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *keys[4] = {job_key, fl_job_stream_key(kind), tenant_key, events_key};
    const char *args[9] = {id, tenant, fl_job_kind_name(kind), request_json, now, max, max_tenant, ttl, keep};
    long long res = 0;
    if (eval_int(r, enqueue_script, 4, keys, 9, args, &res, err) != 0) return -1;
    if (res == -1) return fl_fail(err, FL_ECONFLICT, "job %s already exists", id);
    *admission = res == 1 ? FL_ADMITTED : res == -2 ? FL_ADMIT_TENANT_QUOTA : FL_ADMIT_QUEUE_FULL;
    return 0;
}

int fl_jobs_enqueue(fl_redis *r, fl_job_kind kind, const char *id, const char *tenant, const char *request_json,
                    long max_pending, bool *full, fl_error *err) {
    fl_job_policy policy = {max_pending, 0, 0, 0};
    fl_admission admission = FL_ADMIT_QUEUE_FULL;
    *full = false;
    if (fl_jobs_submit(r, kind, id, tenant, request_json, &policy, &admission, err) != 0) return -1;
    *full = admission != FL_ADMITTED;
    return 0;
}

static char *dup_field(const redisReply *v) {
    return v && v->type == REDIS_REPLY_STRING ? fl_xstrdup(v->str) : NULL;
}

static void copy_field(char *dst, size_t cap, const redisReply *v) {
    snprintf(dst, cap, "%s", v && v->type == REDIS_REPLY_STRING ? v->str : "");
}

int fl_jobs_get(fl_redis *r, const char *tenant, const char *id, fl_job *out, fl_error *err) {
    memset(out, 0, sizeof *out);
    if (!plain_id(id)) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    redisReply *rep = fl_redis_cmd(r, err, "HGETALL fl:job:%s", id);
    if (!rep) return -1;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0) {
        freeReplyObject(rep);
        return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    }
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *k = rep->element[i]->str;
        const redisReply *v = rep->element[i + 1];
        const char *s = v->type == REDIS_REPLY_STRING ? v->str : "";
        if (!strcmp(k, "id")) copy_field(out->id, sizeof out->id, v);
        else if (!strcmp(k, "tenant")) copy_field(out->tenant, sizeof out->tenant, v);
        else if (!strcmp(k, "kind"))
            out->kind = !strcmp(s, "train")      ? FL_JOB_TRAIN
                        : !strcmp(s, "import")   ? FL_JOB_IMPORT
                        : !strcmp(s, "evaluate") ? FL_JOB_EVAL
                                                 : FL_JOB_GENERATE;
        else if (!strcmp(k, "state")) copy_field(out->state, sizeof out->state, v);
        else if (!strcmp(k, "worker")) copy_field(out->worker, sizeof out->worker, v);
        else if (!strcmp(k, "request")) out->request_json = dup_field(v);
        else if (!strcmp(k, "result")) out->result_json = dup_field(v);
        else if (!strcmp(k, "error")) out->error_json = dup_field(v);
        else if (!strcmp(k, "step")) out->step = atoi(s);
        else if (!strcmp(k, "total")) out->total = atoi(s);
        else if (!strcmp(k, "attempts")) out->attempts = atoi(s);
        else if (!strcmp(k, "loss")) out->loss = atof(s);
        else if (!strcmp(k, "eta_s")) out->eta_s = atof(s);
        else if (!strcmp(k, "cancel_requested")) out->cancel_requested = !strcmp(s, "1");
        else if (!strcmp(k, "deleted")) out->deleted = !strcmp(s, "1");
        else if (!strcmp(k, "created_ms")) out->created_ms = atoll(s);
        else if (!strcmp(k, "updated_ms")) out->updated_ms = atoll(s);
        else if (!strcmp(k, "finished_ms")) out->finished_ms = atoll(s);
    }
    freeReplyObject(rep);
    if (tenant && (strcmp(tenant, out->tenant) != 0 || out->deleted)) { /* a deleted job is gone for clients */
        fl_job_clear(out);
        return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    }
    return 0;
}

int fl_jobs_start(fl_redis *r, const char *id, const char *worker, int *attempts, bool *finished, fl_error *err) {
    char job_key[128], events_key[160], now[32];
    if (!plain_id(id)) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    job_keys(id, job_key, events_key);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *keys[2] = {job_key, events_key};
    const char *args[3] = {worker, now, id};
    long long res = 0;
    if (eval_int(r, start_script, 2, keys, 3, args, &res, err) != 0) return -1;
    if (res < 0) return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    *finished = res == 0;
    *attempts = (int)res;
    return 0;
}

int fl_jobs_event(fl_redis *r, const char *id, const char *event_json, int step, int total, double loss,
                  double eta_s, fl_error *err) {
    redisReply *rep = fl_redis_cmd(r, err, "XADD fl:job:%s:events MAXLEN ~ 10000 * data %s", id, event_json);
    if (!rep) return -1;
    freeReplyObject(rep);
    if (step < 0) return 0;
    char s_step[32], s_total[32], s_loss[64], s_eta[64], s_now[32];
    snprintf(s_step, sizeof s_step, "%d", step);
    snprintf(s_total, sizeof s_total, "%d", total);
    snprintf(s_loss, sizeof s_loss, "%.9g", loss);
    snprintf(s_eta, sizeof s_eta, "%.3f", eta_s);
    snprintf(s_now, sizeof s_now, "%lld", (long long)fl_now_ms());
    rep = fl_redis_cmd(r, err, "HSET fl:job:%s step %s total %s loss %s eta_s %s updated_ms %s", id, s_step, s_total,
                       s_loss, s_eta, s_now);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int fl_jobs_finish_as(fl_redis *r, const char *id, const char *state, const char *json, bool *changed,
                      fl_error *err) {
    FL_CHECK(fl_job_state_terminal(state));
    if (!plain_id(id)) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    char job_key[128], events_key[160], now[32];
    job_keys(id, job_key, events_key);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    bool succeeded = !strcmp(state, "succeeded");
    /* The terminal event carries the result or error itself. */
    json_error_t jerr;
    json_t *payload = json_loads(json, 0, &jerr);
    json_t *event = json_pack("{s:s, s:s}", "event", state, "job", id);
    json_object_set_new(event, succeeded ? "result" : "error", payload ? payload : json_string(json));
    char *event_text = json_dumps(event, JSON_COMPACT);
    json_decref(event);
    FL_CHECK(event_text);
    const char *keys[2] = {job_key, events_key};
    const char *args[5] = {state, succeeded ? "result" : "error", json, now, event_text};
    long long res = 0;
    int rc = eval_int(r, finish_script, 2, keys, 5, args, &res, err);
    free(event_text);
    if (rc != 0) return -1;
    if (res < 0) return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    if (changed) *changed = res == 1;
    return 0;
}

int fl_jobs_finish(fl_redis *r, const char *id, bool succeeded, const char *json, bool *changed, fl_error *err) {
    return fl_jobs_finish_as(r, id, succeeded ? "succeeded" : "failed", json, changed, err);
}

int fl_jobs_cancel(fl_redis *r, const char *tenant, const char *id, fl_cancel_outcome *outcome, fl_error *err) {
    if (!plain_id(id)) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    char job_key[128], events_key[160], now[32];
    job_keys(id, job_key, events_key);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *keys[2] = {job_key, events_key};
    const char *args[3] = {tenant, now, id};
    long long res = 0;
    if (eval_int(r, cancel_script, 2, keys, 3, args, &res, err) != 0) return -1;
    if (res < 0) return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    if (res == 0) {
        fl_job job;
        fl_error ignored = {0};
        char state[16] = "finished";
        if (fl_jobs_get(r, tenant, id, &job, &ignored) == 0) {
            snprintf(state, sizeof state, "%s", job.state);
            fl_job_clear(&job);
        }
        return fl_fail(err, FL_ECONFLICT, "job %s has already %s: there is nothing to cancel", id, state);
    }
    *outcome = res == 1 ? FL_CANCEL_DONE : FL_CANCEL_REQUESTED;
    return 0;
}

int fl_jobs_delete(fl_redis *r, const char *tenant, const char *id, fl_delete_outcome *outcome, fl_error *err) {
    if (!plain_id(id)) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    char job_key[128], events_key[160], index_key[160], now[32];
    job_keys(id, job_key, events_key);
    snprintf(index_key, sizeof index_key, "fl:tenant:%s:jobs", tenant);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *keys[3] = {job_key, events_key, index_key};
    const char *args[3] = {tenant, id, now};
    long long res = 0;
    if (eval_int(r, delete_script, 3, keys, 3, args, &res, err) != 0) return -1;
    if (res < 0) return fl_fail(err, FL_ENOTFOUND, "no job '%s'", id);
    *outcome = res == 1 ? FL_DELETE_DONE : FL_DELETE_STOPPING;
    return 0;
}

int fl_jobs_keep_claim(fl_redis *r, fl_job_kind kind, const char *id, const char *entry, const char *worker,
                       fl_claim *claim, fl_error *err) {
    if (!plain_id(id)) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    char job_key[128], events_key[160];
    job_keys(id, job_key, events_key);
    const char *keys[2] = {fl_job_stream_key(kind), job_key};
    const char *args[3] = {FL_JOBS_GROUP, worker, entry};
    long long res = 0;
    if (eval_int(r, keep_claim_script, 2, keys, 3, args, &res, err) != 0) return -1;
    *claim = res == 1 ? FL_CLAIM_HELD : res == 2 ? FL_CLAIM_CANCEL : res == 3 ? FL_CLAIM_FINISHED : FL_CLAIM_LOST;
    return 0;
}

int fl_jobs_requeue(fl_redis *r, fl_job_kind kind, const char *id, const char *entry, const char *worker,
                    fl_requeue_outcome *outcome, fl_error *err) {
    if (!plain_id(id)) return fl_fail(err, FL_ENOTFOUND, "no job '%.64s'", id);
    char job_key[128], events_key[160], now[32];
    job_keys(id, job_key, events_key);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *keys[3] = {fl_job_stream_key(kind), job_key, events_key};
    const char *args[5] = {FL_JOBS_GROUP, worker, entry, now, id};
    long long res = 0;
    if (eval_int(r, requeue_script, 3, keys, 5, args, &res, err) != 0) return -1;
    *outcome = res == 1 ? FL_REQUEUED : res == 2 ? FL_REQUEUE_CANCELED : FL_REQUEUE_NOT_HELD;
    return 0;
}

int fl_jobs_ack(fl_redis *r, fl_job_kind kind, const char *entry_id, fl_error *err) {
    redisReply *rep = fl_redis_cmd(r, err, "XACK %s %s %s", fl_job_stream_key(kind), FL_JOBS_GROUP, entry_id);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int fl_jobs_trim_stream(fl_redis *r, fl_job_kind kind, long long *trimmed, fl_error *err) {
    const char *keys[1] = {fl_job_stream_key(kind)};
    long long res = 0;
    if (eval_int(r, trim_script, 1, keys, 0, NULL, &res, err) != 0) return -1;
    if (trimmed) *trimmed = res;
    return 0;
}

int fl_jobs_sweep_images(fl_redis *r, const char *state_dir, int max, int *removed, fl_error *err) {
    char now[32], count[16];
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    snprintf(count, sizeof count, "%d", max > 0 ? max : 1);
    *removed = 0;
    redisReply *rep = fl_redis_cmd(r, err, "ZRANGEBYSCORE fl:images:due -inf %s LIMIT 0 %s", now, count);
    if (!rep) return -1;
    int rc = 0;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements && rc == 0; i++) {
        const char *id = rep->element[i]->type == REDIS_REPLY_STRING ? rep->element[i]->str : "";
        if (plain_id(id)) {
            char path[4300];
            snprintf(path, sizeof path, "%s/images/%s.png", state_dir, id);
            if (unlink(path) != 0 && errno != ENOENT) {
                rc = fl_fail(err, FL_EIO, "cannot remove image %s: %s", id, strerror(errno));
                break;
            }
            redisReply *d = fl_redis_cmd(r, err, "DEL fl:image:%s", id);
            if (!d) {
                rc = -1;
                break;
            }
            freeReplyObject(d);
        }
        redisReply *z = fl_redis_cmd(r, err, "ZREM fl:images:due %s", rep->element[i]->str);
        if (!z) {
            rc = -1;
            break;
        }
        freeReplyObject(z);
        ++*removed;
    }
    freeReplyObject(rep);
    return rc;
}

int fl_jobs_sweep_orphan_images(fl_redis *r, unsigned long long *cursor, int count, int *orphans, fl_error *err) {
    char cur[32], n[16];
    snprintf(cur, sizeof cur, "%llu", *cursor);
    snprintf(n, sizeof n, "%d", count > 0 ? count : 1);
    *orphans = 0;
    redisReply *rep = fl_redis_cmd(r, err, "SCAN %s MATCH fl:image:* COUNT %s", cur, n);
    if (!rep) return -1;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        return fl_fail(err, FL_EIO, "unexpected SCAN reply");
    }
    *cursor = strtoull(rep->element[0]->str, NULL, 10);
    const redisReply *keys = rep->element[1];
    int rc = 0;
    const char **k = fl_xcalloc(keys->elements + 1, sizeof *k);
    size_t nk = 0;
    for (size_t i = 0; i < keys->elements; i++)
        if (keys->element[i]->type == REDIS_REPLY_STRING) k[nk++] = keys->element[i]->str;
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    const char *args[1] = {now};
    for (size_t i = 0; i < nk && rc == 0; i += 30) { /* a script call names at most 30 keys */
        long long res = 0;
        int chunk = nk - i < 30 ? (int)(nk - i) : 30;
        rc = eval_int(r, orphan_images_script, chunk, k + i, 1, args, &res, err);
        if (rc == 0) *orphans += (int)res;
    }
    free(k);
    freeReplyObject(rep);
    return rc;
}

void fl_jobs_remove_files(const char *state_dir, const char *id) {
    if (!plain_id(id)) return;
    char path[4400];
    snprintf(path, sizeof path, "%s/jobs/%s", state_dir, id);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char file[4700];
            snprintf(file, sizeof file, "%s/%s", path, e->d_name);
            unlink(file);
        }
        closedir(d);
        rmdir(path);
    }
    snprintf(path, sizeof path, "%s/uploads", state_dir);
    size_t n = strlen(id);
    if ((d = opendir(path))) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, id, n) != 0 || (e->d_name[n] != '\0' && e->d_name[n] != '.')) continue;
            char file[4700];
            snprintf(file, sizeof file, "%s/%s", path, e->d_name);
            unlink(file);
        }
        closedir(d);
    }
}

int fl_jobs_pending(fl_redis *r, fl_job_kind kind, long long *n, fl_error *err) {
    redisReply *rep = fl_redis_cmd(r, err, "GET %s", queue_key(kind));
    if (!rep) return -1;
    *n = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : 0;
    freeReplyObject(rep);
    return 0;
}

int fl_model_hash_cached(fl_redis *r, const char *path, char hex[65], fl_error *err) {
    struct stat st;
    char real[4096];
    if (!realpath(path, real) || stat(real, &st) != 0) return fl_fail(err, FL_EIO, "%s: cannot stat", path);
    char key[4300];
    snprintf(key, sizeof key, "fl:modelhash:%s:%lld:%lld.%09ld", real, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
             st.st_mtim.tv_nsec);
    fl_error ignored = {0};
    redisReply *rep = r ? fl_redis_cmd(r, &ignored, "GET %s", key) : NULL;
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len == 64) {
        memcpy(hex, rep->str, 65);
        freeReplyObject(rep);
        return 0;
    }
    if (rep) freeReplyObject(rep);
    if (fl_sha256_file(real, hex, err) != 0) return -1;
    if (r && (rep = fl_redis_cmd(r, &ignored, "SET %s %s", key, hex))) freeReplyObject(rep);
    return 0;
}
