/*
 * redis.h — the Redis connection every part of the service shares, and the private redis-server
 * that `flashlora serve` starts when no Redis address is configured.
 *
 * Addresses: "unix:/path/to/redis.sock", "host:port", or "redis://host:port". A connection
 * reconnects once and retries when a command fails at the socket level (Redis restarted), so a
 * long-running API process or worker survives a redis-server restart. A command that still
 * cannot reach Redis fails with FL_EUNAVAILABLE; an error reply from Redis fails with FL_EIO and
 * the reply's text. One fl_redis belongs to one thread.
 *
 * The private server: redis-server started with its data directory under the service's state
 * directory, AOF on with appendfsync always (a job answered 202, an adapter registered, is on disk
 * even if redis-server is killed), no TCP port, a unix socket in that directory. It is
 * stopped with SHUTDOWN (which writes the AOF) when the service exits. It receives SIGTERM when
 * the thread that started it exits (PR_SET_PDEATHSIG), so a killed service never leaves one behind:
 * start it from the thread that lives as long as the service.
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
/* SHUTDOWN (the AOF is written), then waits for the process; frees s. */
void fl_redis_server_stop(fl_redis_server *s);

#endif
