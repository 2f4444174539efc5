/*
 * redis.h — the Redis connection every part of the service shares, and the private redis-server
 * that `flashlora serve` starts when no Redis address is configured.
 *
 * Addresses: "unix:/path/to/redis.sock", "host:port", or "redis://host:port". A connection
 * reconnects once and retries when a command fails at the socket level (Redis restarted), so a
 * long-running API process or worker survives a redis-server restart. A command that still
 * cannot reach Redis fails with FL_EUNAVAILABLE; an error reply from Redis fails with FL_EIO and
 * the reply's text, except a refusal to write because Redis cannot persist (MISCONF: its disk is
 * full) or is out of memory (OOM), which fails with FL_ENOSPACE. Messages name a unix socket by
 * its file name only (they may reach a client). One fl_redis belongs to one thread.
 *
 * When the address is that of a private server supervised in this process (below) and the server
 * is down, a connection waits up to FL_REDIS_RESTART_WAIT_MS for a restart due within that time,
 * so a killed redis-server costs a request some latency, not an error; otherwise it fails at once
 * with FL_ENOSPACE when the server stopped because its disk is full, else FL_EUNAVAILABLE naming
 * the restart in progress.
 *
 * The private server: redis-server started with its data directory under the service's state
 * directory, AOF on with appendfsync always (a job answered 202, an adapter registered, is on disk
 * even if redis-server is killed), no TCP port, a unix socket in that directory. It is
 * stopped with SHUTDOWN (which writes the AOF) when the service exits. It receives SIGTERM when
 * the thread that started it exits (PR_SET_PDEATHSIG), so a killed service never leaves one behind:
 * start it from the thread that lives as long as the service. Its log, <dir>/redis.log, is rotated
 * to redis.log.1 at a (re)start once it exceeds 8 MiB.
 *
 * Supervision (fl_redis_server_supervise): a thread of this process notices the server's exit
 * within 100 ms, records why (signal or exit status, and the reason from its log: a failed write of
 * the append-only file — ENOSPC, EFBIG from a file-size limit, EDQUOT — is a full disk), and starts
 * it again on the same socket and data after a delay that doubles with each failure in a row, from
 * backoff_ms up to max_backoff_ms: a crash loop is slow and visible (restarts, last error), never
 * hot. A restarted server is up once it answers PING and has written a probe key (fl:redis:probe)
 * through its AOF, so a disk found full stays reported until a write succeeds again. A server up
 * for twice max_backoff_ms is stable: its next failure waits backoff_ms again. Nothing accepted is
 * lost across a restart: every acknowledged write is in the AOF (appendfsync always), and with
 * that policy redis-server exits rather than acknowledge a write it could not persist.
 */
#ifndef FL_SERVE_REDIS_H
#define FL_SERVE_REDIS_H
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

#include "core/error.h"

typedef struct fl_redis fl_redis;

/* Connects (timeout 5 s). */
int fl_redis_connect(const char *address, fl_redis **out, fl_error *err);
void fl_redis_close(fl_redis *r);
const char *fl_redis_address(const fl_redis *r);

/* Runs one command (hiredis printf-style format: %s strings, %b binary with size_t length).
 * Returns the reply (free with freeReplyObject) or NULL with err set. An error reply is a failure. */
redisReply *fl_redis_cmd(fl_redis *r, fl_error *err, const char *fmt, ...);
redisReply *fl_redis_vcmd(fl_redis *r, fl_error *err, const char *fmt, va_list ap);
/* The same with an argument vector (lengths may be NULL for C strings). */
redisReply *fl_redis_argv(fl_redis *r, fl_error *err, int argc, const char **argv, const size_t *lengths);

/* A private redis-server. */
typedef struct fl_redis_server fl_redis_server;
/* Starts redis-server (found on PATH, or FL_REDIS_SERVER) with data under dir (created), and waits
 * until it answers PING (up to 10 s). Fails if one is already listening on dir's socket. */
int fl_redis_server_start(const char *dir, fl_redis_server **out, fl_error *err);
/* "unix:<dir>/redis.sock" */
const char *fl_redis_server_address(const fl_redis_server *s);
/* Stops the supervision (when started), then SHUTDOWN (the AOF is written) and waits for the
 * process; frees s. */
void fl_redis_server_stop(fl_redis_server *s);

#define FL_REDIS_RESTART_WAIT_MS 2000
#define FL_REDIS_MAX_SUPERVISED 8 /* supervised servers in one process */

typedef struct fl_redis_supervision {
    int backoff_ms;     /* delay before the first restart after a failure (default 250) */
    int max_backoff_ms; /* longest delay between restarts of a crash loop (default 30000) */
} fl_redis_supervision;

fl_redis_supervision fl_redis_supervision_default(void);
/* Starts supervising s on a thread of its own (see above); s must not be supervised yet. */
int fl_redis_server_supervise(fl_redis_server *s, const fl_redis_supervision *cfg, fl_error *err);

typedef struct fl_redis_server_status {
    const char *state;        /* "up", "starting" (running, not yet answering or not yet written
                               * to), "down" (waiting for its restart) */
    long long restarts;       /* restarts by the supervisor */
    int failures;             /* exits or failed starts since it was last stable */
    bool storage_full;        /* it last stopped because it could not write its AOF (disk full),
                               * and no write has succeeded since */
    char last_error[320];     /* why it last stopped or failed to start; "" when it never did */
    long long last_failure_ms; /* wall clock of that, 0 when never */
    long long next_restart_in_ms; /* while down */
} fl_redis_server_status;

/* The status of the supervised server at address in this process; false when there is none (an
 * external Redis, or a server not supervised). */
bool fl_redis_supervised_status(const char *address, fl_redis_server_status *out);

#endif
