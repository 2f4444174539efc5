/*
 * redis.c — the shared Redis connection (hiredis) with one reconnect-and-retry on socket
 * failures, the private redis-server the service runs under its state directory, and its
 * supervisor (restart with backoff, the reason of each exit, a full disk told apart).
 *
 * Writing to a socket whose server went away raises SIGPIPE; every command runs with SIGPIPE
 * blocked in the calling thread and a SIGPIPE it caused is consumed, so a Redis restart never
 * kills the process and the disposition of SIGPIPE (a process-wide setting) is left alone.
 */
#include "serve/redis.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

#define CONNECT_TIMEOUT_MS 5000
#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 10000
#define LOADING_WAIT_MS 5000

struct fl_redis {
    char *address;
    char *shown;     /* the address as messages show it: a unix socket by its file name only */
    char *unix_path; /* set for "unix:" addresses */
    char *host;      /* otherwise */
    int port;
    redisContext *ctx; /* NULL after a failed reconnect */
};

#define LOG_ROTATE_BYTES (8L << 20)
#define LOG_TAIL_BYTES 16384
#define SUPERVISE_TICK_MS 100

typedef enum server_state { SERVER_UP, SERVER_STARTING, SERVER_DOWN } server_state;

struct fl_redis_server {
    pid_t pid;     /* 0 while no process runs */
    char *dir;
    char *address; /* "unix:<dir>/redis.sock" */
    char *sock, *exe, *log_path;
    long log_offset; /* the log's size when the running process started */
    /* Supervision: the fields below are guarded by mu once the thread runs. */
    bool supervised, stopping;
    fl_redis_supervision cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    server_state state;
    long long restarts;
    int failures;
    bool storage_full;
    char last_error[320];
    long long last_failure_ms;
    int64_t up_since, restart_at; /* monotonic */
};

/* ---- addresses and connecting ------------------------------------------------------------------ */

static int parse_address(fl_redis *r, const char *address, fl_error *err) {
    if (!address || !*address) return fl_fail(err, FL_EINVAL, "empty Redis address");
    if (!strncmp(address, "unix:", 5)) {
        const char *path = address + 5;
        if (!strncmp(path, "//", 2)) path += 2; /* unix:///path */
        if (!*path) return fl_fail(err, FL_EINVAL, "Redis address '%s' has no socket path", address);
        if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return fl_fail(err, FL_EINVAL, "Redis socket path is longer than a unix socket allows: %s", path);
        r->unix_path = fl_xstrdup(path);
        const char *slash = strrchr(path, '/');
        if (asprintf(&r->shown, "unix:%s", slash ? slash + 1 : path) < 0) FL_CHECK(!"out of memory");
        return 0;
    }
    const char *hostport = address;
    if (!strncmp(address, "redis://", 8)) hostport = address + 8;
    if (strchr(hostport, '@'))
        return fl_fail(err, FL_EUNSUPPORTED, "Redis addresses with credentials are not supported");
    size_t len = strcspn(hostport, "/");
    if (hostport[len] && strcmp(hostport + len, "/") && strcmp(hostport + len, "/0"))
        return fl_fail(err, FL_EUNSUPPORTED, "Redis address '%s': only database 0 is supported", address);
    char *hp = fl_xmalloc(len + 1);
    memcpy(hp, hostport, len);
    hp[len] = '\0';
    char *host = hp, *colon = NULL;
    if (hp[0] == '[') { /* [IPv6]:port */
        char *close = strchr(hp, ']');
        if (!close) {
            free(hp);
            return fl_fail(err, FL_EINVAL, "Redis address '%s': unclosed '['", address);
        }
        *close = '\0';
        host = hp + 1;
        colon = close[1] == ':' ? close + 1 : NULL;
        if (!colon && close[1]) {
            free(hp);
            return fl_fail(err, FL_EINVAL, "Redis address '%s' is not host:port", address);
        }
    } else {
        colon = strrchr(hp, ':');
    }
    long port = 6379;
    if (colon) {
        *colon = '\0';
        char *end = NULL;
        errno = 0;
        port = strtol(colon + 1, &end, 10);
        if (errno || end == colon + 1 || *end || port < 1 || port > 65535) {
            free(hp);
            return fl_fail(err, FL_EINVAL, "Redis address '%s' has no valid port", address);
        }
    } else if (hostport == address) {
        free(hp);
        return fl_fail(err, FL_EINVAL, "Redis address '%s' is not unix:/path, host:port or redis://host:port",
                       address);
    }
    if (!*host) {
        free(hp);
        return fl_fail(err, FL_EINVAL, "Redis address '%s' has no host", address);
    }
    r->host = fl_xstrdup(host);
    r->port = (int)port;
    r->shown = fl_xstrdup(address);
    free(hp);
    return 0;
}

/* A fresh context; NULL with *why filled when the connection fails. */
static redisContext *open_context(const fl_redis *r, char *why, size_t why_size) {
    struct timeval tv = {CONNECT_TIMEOUT_MS / 1000, (CONNECT_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = r->unix_path ? redisConnectUnixWithTimeout(r->unix_path, tv)
                                   : redisConnectWithTimeout(r->host, r->port, tv);
    if (!c) {
        snprintf(why, why_size, "out of memory");
        return NULL;
    }
    if (c->err) {
        snprintf(why, why_size, "%s", c->errstr);
        redisFree(c);
        return NULL;
    }
    if (!r->unix_path) redisEnableKeepAlive(c);
    return c;
}

static bool await_restart(const char *address, int64_t *deadline);
static bool settle(const char *address);
static void fail_down(const fl_redis *r, fl_error *err, bool connecting, const char *why);

int fl_redis_connect(const char *address, fl_redis **out, fl_error *err) {
    *out = NULL;
    fl_redis *r = fl_xcalloc(1, sizeof *r);
    if (parse_address(r, address, err) != 0) {
        fl_redis_close(r);
        return -1;
    }
    r->address = fl_xstrdup(address);
    char why[256];
    int64_t restart_deadline = -1;
    r->ctx = open_context(r, why, sizeof why);
    while (!r->ctx && await_restart(r->address, &restart_deadline)) r->ctx = open_context(r, why, sizeof why);
    if (!r->ctx) {
        fail_down(r, err, true, why);
        fl_redis_close(r);
        return -1;
    }
    *out = r;
    return 0;
}

void fl_redis_close(fl_redis *r) {
    if (!r) return;
    if (r->ctx) redisFree(r->ctx);
    free(r->address);
    free(r->shown);
    free(r->unix_path);
    free(r->host);
    free(r);
}

const char *fl_redis_address(const fl_redis *r) {
    return r->address;
}

/* ---- commands ------------------------------------------------------------------------------------ */

/* SIGPIPE blocked in this thread around socket writes; a SIGPIPE raised meanwhile is consumed
 * (unless one was already pending before, which is not ours to take). */
typedef struct pipe_guard {
    sigset_t pipe_set, old_set;
    bool was_pending;
} pipe_guard;

static void pipe_guard_begin(pipe_guard *g) {
    sigset_t pending;
    sigemptyset(&g->pipe_set);
    sigaddset(&g->pipe_set, SIGPIPE);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &g->pipe_set, &g->old_set);
}

static void pipe_guard_end(pipe_guard *g) {
    sigset_t pending;
    sigpending(&pending);
    if (!g->was_pending && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&g->pipe_set, NULL, &zero) < 0 && errno == EINTR) {}
    }
    pthread_sigmask(SIG_SETMASK, &g->old_set, NULL);
}

typedef enum send_kind { SEND_FORMAT, SEND_ARGV } send_kind;

typedef struct send_args {
    send_kind kind;
    const char *fmt;
    va_list *ap;
    int argc;
    const char **argv;
    size_t *lengths;
} send_args;

/* One attempt on the current context, with SIGPIPE blocked in this thread for its duration. */
static redisReply *send_once(redisContext *c, const send_args *a) {
    pipe_guard g;
    pipe_guard_begin(&g);
    void *reply;
    if (a->kind == SEND_FORMAT) {
        va_list copy; /* a va_list is consumed by one use; every attempt takes a fresh copy */
        va_copy(copy, *a->ap);
        reply = redisvCommand(c, a->fmt, copy);
        va_end(copy);
    } else {
        reply = redisCommandArgv(c, a->argc, a->argv, a->lengths);
    }
    pipe_guard_end(&g);
    return reply;
}

static bool is_loading(const redisReply *reply) {
    return reply->type == REDIS_REPLY_ERROR && reply->str && !strncmp(reply->str, "LOADING", 7);
}

/* An error reply as an fl_error: a refusal to write for want of room is FL_ENOSPACE. */
static void fail_reply(fl_error *err, const redisReply *reply) {
    const char *text = reply->str ? reply->str : "error";
    int n = (int)(reply->len > 300 ? 300 : reply->len);
    if (strstr(text, "MISCONF"))
        fl_fail(err, FL_ENOSPACE,
                "the service's disk is full or failing: Redis cannot persist and refuses writes (%.*s)", n, text);
    else if (!strncmp(text, "OOM", 3))
        fl_fail(err, FL_ENOSPACE, "Redis is out of memory and refuses writes (%.*s)", n, text);
    else
        fl_fail(err, FL_EIO, "Redis: %.*s", n, text);
}

static redisReply *run(fl_redis *r, fl_error *err, const send_args *a) {
    char why[256] = "not connected";
    int64_t loading_deadline = -1, restart_deadline = -1;
    int attempts = 2;
    for (int attempt = 0; attempt < attempts; attempt++) {
        if (!r->ctx || r->ctx->err) {
            if (r->ctx) redisFree(r->ctx);
            r->ctx = open_context(r, why, sizeof why);
            while (!r->ctx && await_restart(r->address, &restart_deadline)) r->ctx = open_context(r, why, sizeof why);
            if (!r->ctx) continue;
        }
        redisReply *reply = send_once(r->ctx, a);
        if (reply && is_loading(reply)) { /* a restarted server replaying its AOF: wait for it */
            if (loading_deadline < 0) loading_deadline = fl_monotonic_ms() + LOADING_WAIT_MS;
            if (fl_monotonic_ms() < loading_deadline) {
                freeReplyObject(reply);
                fl_sleep_ms(50);
                attempt--;
                continue;
            }
        }
        if (reply) {
            if (reply->type == REDIS_REPLY_ERROR) {
                fail_reply(err, reply);
                freeReplyObject(reply);
                return NULL;
            }
            return reply;
        }
        snprintf(why, sizeof why, "%s", r->ctx->errstr[0] ? r->ctx->errstr : "connection lost");
        redisFree(r->ctx);
        r->ctx = NULL;
        /* A connection made while a supervised server was exiting fails too: once the supervisor has
         * seen the exit, wait for the restart and try a last time (unless its disk is full). */
        if (attempt == 1 && attempts == 2 && settle(r->address)) attempts = 3;
    }
    fail_down(r, err, false, why);
    return NULL;
}

redisReply *fl_redis_vcmd(fl_redis *r, fl_error *err, const char *fmt, va_list ap) {
    va_list copy;
    va_copy(copy, ap);
    send_args a = {.kind = SEND_FORMAT, .fmt = fmt, .ap = &copy};
    redisReply *reply = run(r, err, &a);
    va_end(copy);
    return reply;
}

redisReply *fl_redis_cmd(fl_redis *r, fl_error *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = fl_redis_vcmd(r, err, fmt, ap);
    va_end(ap);
    return reply;
}

redisReply *fl_redis_argv(fl_redis *r, fl_error *err, int argc, const char **argv, const size_t *lengths) {
    if (argc < 1 || !argv) {
        fl_fail(err, FL_EINVAL, "empty Redis command");
        return NULL;
    }
    size_t *lens = fl_xmalloc((size_t)argc * sizeof *lens);
    for (int i = 0; i < argc; i++) lens[i] = lengths ? lengths[i] : strlen(argv[i]);
    send_args a = {.kind = SEND_ARGV, .argc = argc, .argv = argv, .lengths = lens};
    redisReply *reply = run(r, err, &a);
    free(lens);
    return reply;
}

/* ---- the private server ------------------------------------------------------------------------- */

/* True when something answers PING on the unix socket at path. */
static bool answers_ping(const char *path) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectUnixWithTimeout(path, tv);
    if (!c) return false;
    bool ok = false;
    if (!c->err) {
        redisSetTimeout(c, tv);
        pipe_guard g;
        pipe_guard_begin(&g);
        redisReply *reply = redisCommand(c, "PING");
        pipe_guard_end(&g);
        ok = reply && reply->type == REDIS_REPLY_STATUS && reply->str && !strcmp(reply->str, "PONG");
        if (reply) freeReplyObject(reply);
    }
    redisFree(c);
    return ok;
}

static int make_dirs(const char *dir, fl_error *err) {
    char *p = fl_xstrdup(dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            fl_fail(err, FL_EIO, "cannot create %s: %s", p, strerror(errno));
            free(p);
            return -1;
        }
        *s = '/';
    }
    free(p);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return fl_fail(err, FL_EIO, "cannot create %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return fl_fail(err, FL_EIO, "%s is not a directory", dir);
    return 0;
}

/* The redis-server executable: $FL_REDIS_SERVER, else the first on PATH. */
static char *find_server(fl_error *err) {
    const char *env = getenv("FL_REDIS_SERVER");
    if (env && *env) {
        if (access(env, X_OK) == 0) return fl_xstrdup(env);
        fl_fail(err, FL_EUNAVAILABLE, "FL_REDIS_SERVER=%s is not an executable: %s", env, strerror(errno));
        return NULL;
    }
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t len = strcspn(path, ":");
        char *candidate = NULL;
        if (len && asprintf(&candidate, "%.*s/redis-server", (int)len, path) >= 0) {
            if (access(candidate, X_OK) == 0) return candidate;
            free(candidate);
        }
        path += len;
        if (*path == ':') path++;
    }
    fl_fail(err, FL_EUNAVAILABLE, "redis-server is not installed (not on PATH; set FL_REDIS_SERVER)");
    return NULL;
}

/* The message of a redis-server log line ("pid:M 01 Jan 2024 00:00:00.000 # text" -> "text"). */
static const char *log_message(const char *line) {
    static const char *const marks[] = {" # ", " * ", " - ", " . "};
    const char *best = NULL;
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
        const char *m = strstr(line, marks[i]);
        if (m && (!best || m < best)) best = m;
    }
    return best ? best + 3 : line;
}

/* Replaces every absolute path in s by its last component (a message may reach a client). */
static void scrub_paths(char *s) {
    char *out = s;
    for (const char *p = s; *p;) {
        bool starts = *p == '/' && (p == s || strchr(" \t'\"(=:,[", p[-1]));
        if (!starts) {
            *out++ = *p++;
            continue;
        }
        const char *end = p + strcspn(p, " \t'\"),]");
        const char *last = p;
        for (const char *q = p; q < end; q++)
            if (*q == '/' && q + 1 < end) last = q + 1;
        if (*last == '/') last++;
        size_t n = (size_t)(end - last);
        memmove(out, last, n);
        out += n;
        p = end;
    }
    *out = '\0';
}

/* True when a log message tells of a failed write of the append-only file for want of room. */
static bool is_storage_failure(const char *msg) {
    static const char *const signs[] = {"writing to the AOF file", "AOF write error", "No space left on device",
                                        "File too large", "Disk quota exceeded"};
    for (size_t i = 0; i < sizeof signs / sizeof signs[0]; i++)
        if (strstr(msg, signs[i])) return true;
    return false;
}

/* Reads the log written since offset (its last LOG_TAIL_BYTES at most): the first message telling of
 * a storage failure (*storage set), else the last message. */
static void log_reason(const char *log_path, long offset, char *out, size_t cap, bool *storage) {
    out[0] = '\0';
    *storage = false;
    FILE *f = fopen(log_path, "r");
    if (!f) return;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        long from = size - LOG_TAIL_BYTES > offset ? size - LOG_TAIL_BYTES : offset;
        if (from < 0 || from > size) from = 0;
        fseek(f, from, SEEK_SET);
    }
    char line[512], last[320] = "";
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = '\0';
        if (!n) continue;
        const char *msg = log_message(line);
        if (!*storage && is_storage_failure(msg)) {
            *storage = true;
            snprintf(out, cap, "%s", msg);
        }
        snprintf(last, sizeof last, "%s", msg);
    }
    fclose(f);
    if (!*storage) snprintf(out, cap, "%s", last);
    scrub_paths(out);
}

/* The last message the current process wrote to the log (or its storage failure). */
static void last_log_line(const fl_redis_server *s, char *out, size_t size) {
    bool storage;
    log_reason(s->log_path, s->log_offset, out, size, &storage);
}

/* Waits up to ms for pid to exit; true when it did (reaped). */
static bool wait_exit(pid_t pid, int ms, int *status) {
    int64_t deadline = fl_monotonic_ms() + ms;
    for (;;) {
        pid_t got = waitpid(pid, status, WNOHANG);
        if (got == pid || (got < 0 && errno == ECHILD)) return true;
        if (fl_monotonic_ms() >= deadline) return false;
        fl_sleep_ms(10);
    }
}

/* In the child: only async-signal-safe calls. Reports an exec failure's errno on report_fd. */
static _Noreturn void child_exec(const char *exe, char *const *argv, int log_fd, int report_fd, pid_t parent,
                                 long max_fd) {
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the server never outlives the thread that started it */
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    for (long fd = 3; fd < max_fd; fd++) /* keep the service's sockets and files out of redis-server */
        if (fd != report_fd) close((int)fd);
    execv(exe, argv);
    int e = errno;
    ssize_t unused = write(report_fd, &e, sizeof e);
    (void)unused;
    _exit(127);
}

/* Starts one redis-server process for s (s->pid set); does not wait for it to answer. The log is
 * rotated first when it grew past LOG_ROTATE_BYTES, and s->log_offset remembers where this
 * process's lines begin. */
static int spawn(fl_redis_server *s, fl_error *err) {
    if (answers_ping(s->sock)) return fl_fail(err, FL_ECONFLICT, "a Redis server is already running on %s", s->sock);
    if (unlink(s->sock) != 0 && errno != ENOENT) /* a stale socket of a server that died */
        return fl_fail(err, FL_EIO, "cannot remove stale socket %s: %s", s->sock, strerror(errno));
    struct stat st;
    if (stat(s->log_path, &st) == 0 && st.st_size > LOG_ROTATE_BYTES) {
        char old[PATH_MAX + 32];
        snprintf(old, sizeof old, "%s.1", s->log_path);
        rename(s->log_path, old);
    }
    s->log_offset = stat(s->log_path, &st) == 0 ? (long)st.st_size : 0;
    int log_fd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int report[2] = {-1, -1};
    if (log_fd < 0 || pipe2(report, O_CLOEXEC) != 0) {
        int e = errno;
        if (log_fd >= 0) close(log_fd);
        return fl_fail_errno(err, e, "cannot prepare redis-server (%s)", s->log_path);
    }
    char *argv[] = {s->exe,
                    "--port", "0", /* no TCP listener */
                    "--unixsocket", s->sock,
                    "--unixsocketperm", "700",
                    "--dir", s->dir,
                    "--appendonly", "yes",
                    "--appendfsync", "always", /* an accepted job (202) is on disk */
                    "--save", "", /* the AOF is the persistence; no RDB snapshots */
                    "--daemonize", "no",
                    "--logfile", s->log_path,
                    "--protected-mode", "yes",
                    NULL};
    long max_fd = sysconf(_SC_OPEN_MAX);
    if (max_fd < 0 || max_fd > 65536) max_fd = 65536;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(log_fd);
        close(report[0]);
        close(report[1]);
        return fl_fail(err, FL_EIO, "cannot start redis-server: %s", strerror(e));
    }
    if (pid == 0) child_exec(s->exe, argv, log_fd, report[1], parent, max_fd);
    close(log_fd);
    close(report[1]);
    int exec_errno = 0;
    ssize_t got;
    while ((got = read(report[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {}
    close(report[0]);
    if (got == (ssize_t)sizeof exec_errno) {
        waitpid(pid, NULL, 0);
        return fl_fail(err, FL_EUNAVAILABLE, "cannot run redis-server: %s", strerror(exec_errno));
    }
    s->pid = pid;
    return 0;
}

/* "killed by signal 9", "exited with status 1". */
static void describe_status(int status, char *out, size_t cap) {
    if (WIFSIGNALED(status)) snprintf(out, cap, "killed by signal %d", WTERMSIG(status));
    else snprintf(out, cap, "exited with status %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void free_server(fl_redis_server *s) {
    if (s->supervised) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->wake);
    }
    free(s->dir);
    free(s->address);
    free(s->sock);
    free(s->exe);
    free(s->log_path);
    free(s);
}

/* SHUTDOWN (the AOF is written), else SIGTERM, else SIGKILL; reaps the process. */
static void stop_process(fl_redis_server *s) {
    if (s->pid <= 0) return;
    bool asked = false;
    struct timeval tv = {CONNECT_TIMEOUT_MS / 1000, 0};
    redisContext *c = redisConnectUnixWithTimeout(s->sock, tv);
    if (c && !c->err) {
        /* SHUTDOWN closes the connection instead of replying: a NULL reply is success. An error
         * reply (the AOF could not be written) falls through to SIGTERM below. */
        pipe_guard g;
        pipe_guard_begin(&g);
        redisReply *reply = redisCommand(c, "SHUTDOWN");
        pipe_guard_end(&g);
        asked = reply == NULL;
        if (reply) freeReplyObject(reply);
    }
    if (c) redisFree(c);
    int status;
    bool done = asked && wait_exit(s->pid, STOP_TIMEOUT_MS, &status);
    if (!done) {
        kill(s->pid, SIGTERM); /* redis-server shuts down cleanly on SIGTERM too */
        done = wait_exit(s->pid, STOP_TIMEOUT_MS, &status);
    }
    if (!done) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
    }
    s->pid = 0;
}

int fl_redis_server_start(const char *dir, fl_redis_server **out, fl_error *err) {
    *out = NULL;
    if (!dir || !*dir) return fl_fail(err, FL_EINVAL, "no directory for the private redis-server");
    if (make_dirs(dir, err) != 0) return -1;
    char *abs_dir = realpath(dir, NULL);
    if (!abs_dir) return fl_fail(err, FL_EIO, "%s: %s", dir, strerror(errno));
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int n = snprintf(sock, sizeof sock, "%s/redis.sock", abs_dir);
    if (n < 0 || (size_t)n >= sizeof sock) {
        fl_fail(err, FL_EINVAL, "redis-server directory path is too long for a unix socket: %s", abs_dir);
        free(abs_dir);
        return -1;
    }
    char *exe = find_server(err);
    if (!exe) {
        free(abs_dir);
        return -1;
    }
    fl_redis_server *s = fl_xcalloc(1, sizeof *s);
    s->dir = abs_dir;
    s->exe = exe;
    s->sock = fl_xstrdup(sock);
    if (asprintf(&s->address, "unix:%s", sock) < 0 || asprintf(&s->log_path, "%s/redis.log", abs_dir) < 0)
        FL_CHECK(!"out of memory");
    if (spawn(s, err) != 0) {
        free_server(s);
        return -1;
    }
    int64_t deadline = fl_monotonic_ms() + START_TIMEOUT_MS;
    for (;;) {
        int status = 0;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            char line[320], how[64];
            last_log_line(s, line, sizeof line);
            describe_status(status, how, sizeof how);
            fl_fail(err, FL_EUNAVAILABLE, "redis-server %s at startup: %s", how, line[0] ? line : "no log output");
            s->pid = 0;
            free_server(s);
            return -1;
        }
        if (answers_ping(s->sock)) break;
        if (fl_monotonic_ms() >= deadline) {
            char line[320];
            last_log_line(s, line, sizeof line);
            fl_fail(err, FL_EUNAVAILABLE, "redis-server did not answer within %d s: %s", START_TIMEOUT_MS / 1000,
                    line[0] ? line : "no log output");
            stop_process(s);
            free_server(s);
            return -1;
        }
        fl_sleep_ms(20);
    }
    s->state = SERVER_UP;
    *out = s;
    return 0;
}

const char *fl_redis_server_address(const fl_redis_server *s) {
    return s->address;
}

/* ---- supervision ------------------------------------------------------------------------------------ */

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static fl_redis_server *registry[FL_REDIS_MAX_SUPERVISED]; /* supervised servers of this process */

fl_redis_supervision fl_redis_supervision_default(void) {
    return (fl_redis_supervision){.backoff_ms = 250, .max_backoff_ms = 30000};
}

static const char *state_name(server_state st) {
    return st == SERVER_UP ? "up" : st == SERVER_STARTING ? "starting" : "down";
}

/* With s->mu held. */
static void status_locked(const fl_redis_server *s, fl_redis_server_status *out) {
    memset(out, 0, sizeof *out);
    out->state = state_name(s->state);
    out->restarts = s->restarts;
    out->failures = s->failures;
    out->storage_full = s->storage_full;
    snprintf(out->last_error, sizeof out->last_error, "%s", s->last_error);
    out->last_failure_ms = s->last_failure_ms;
    if (s->state == SERVER_DOWN) {
        int64_t left = s->restart_at - fl_monotonic_ms();
        out->next_restart_in_ms = left > 0 ? left : 0;
    }
}

bool fl_redis_supervised_status(const char *address, fl_redis_server_status *out) {
    bool found = false;
    if (!address) return false;
    pthread_mutex_lock(&registry_mu);
    for (int i = 0; i < FL_REDIS_MAX_SUPERVISED && !found; i++) {
        fl_redis_server *s = registry[i];
        if (!s || strcmp(s->address, address) != 0) continue;
        pthread_mutex_lock(&s->mu);
        status_locked(s, out);
        pthread_mutex_unlock(&s->mu);
        found = true;
    }
    pthread_mutex_unlock(&registry_mu);
    return found;
}

/* Waits (50 ms, once per call) while a supervised server at address is expected back before
 * *deadline (set on the first call); false when there is nothing to wait for. */
static bool await_restart(const char *address, int64_t *deadline) {
    fl_redis_server_status st;
    if (!fl_redis_supervised_status(address, &st) || st.storage_full) return false;
    int64_t now = fl_monotonic_ms();
    if (*deadline < 0) *deadline = now + FL_REDIS_RESTART_WAIT_MS;
    if (now >= *deadline) return false;
    if (!strcmp(st.state, "down") && now + st.next_restart_in_ms > *deadline) return false;
    fl_sleep_ms(50);
    return true;
}

/* After a failure on a supervised server's socket: waits up to 500 ms for the supervisor to notice
 * an exit. True when the server is then being restarted (worth awaiting), false otherwise. */
static bool settle(const char *address) {
    fl_redis_server_status st;
    int64_t deadline = fl_monotonic_ms() + 500;
    while (fl_redis_supervised_status(address, &st) && !strcmp(st.state, "up") && fl_monotonic_ms() < deadline)
        fl_sleep_ms(20);
    return fl_redis_supervised_status(address, &st) && strcmp(st.state, "up") != 0 && !st.storage_full;
}

static void fail_down(const fl_redis *r, fl_error *err, bool connecting, const char *why) {
    fl_redis_server_status st;
    if (!fl_redis_supervised_status(r->address, &st)) {
        fl_fail(err, FL_EUNAVAILABLE,
                connecting ? "cannot connect to Redis at %s: %s" : "Redis at %s is unreachable: %s", r->shown, why);
    } else if (st.storage_full) {
        fl_fail(err, FL_ENOSPACE, "%s; writes resume once there is room", st.last_error);
    } else {
        fl_fail(err, FL_EUNAVAILABLE, "redis-server is down and being restarted (%lld restarts so far%s%s)",
                st.restarts, st.last_error[0] ? "; last failure: " : "", st.last_error);
    }
}

/* The restarted server answers PING and a write goes through its AOF: 1; not answering yet: 0;
 * answering but refusing the write: -1 with the reply in why. */
static int probe(const fl_redis_server *s, char *why, size_t cap) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectUnixWithTimeout(s->sock, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return 0;
    }
    redisSetTimeout(c, (struct timeval){5, 0});
    pipe_guard g;
    pipe_guard_begin(&g);
    redisReply *reply = redisCommand(c, "PING");
    int rc = 0;
    if (reply && reply->type == REDIS_REPLY_STATUS && reply->str && !strcmp(reply->str, "PONG")) {
        freeReplyObject(reply);
        reply = redisCommand(c, "SET fl:redis:probe %lld", (long long)fl_now_ms());
        if (reply && reply->type == REDIS_REPLY_STATUS) rc = 1;
        else if (reply && reply->type == REDIS_REPLY_ERROR) {
            snprintf(why, cap, "%s", reply->str ? reply->str : "error");
            rc = -1;
        }
    }
    pipe_guard_end(&g);
    if (reply) freeReplyObject(reply);
    redisFree(c);
    return rc;
}

/* With s->mu held: the process ended with status (or failed to start: status < 0, why set). */
static void record_failure(fl_redis_server *s, int status, const char *why) {
    int64_t now = fl_monotonic_ms();
    if (s->state == SERVER_UP && now - s->up_since >= 2LL * s->cfg.max_backoff_ms) s->failures = 0; /* was stable */
    s->failures++;
    char how[64], detail[200];
    bool storage = false;
    if (status >= 0) {
        describe_status(status, how, sizeof how);
        log_reason(s->log_path, s->log_offset, detail, sizeof detail, &storage);
        if (WIFSIGNALED(status) && !storage) detail[0] = '\0'; /* its log tells nothing of a signal */
    } else {
        snprintf(how, sizeof how, "could not start");
        snprintf(detail, sizeof detail, "%s", why);
        scrub_paths(detail);
    }
    if (storage)
        snprintf(s->last_error, sizeof s->last_error,
                 "the service's disk is full: redis-server could not write its append-only file (%s)", detail);
    else
        snprintf(s->last_error, sizeof s->last_error, "redis-server %s%s%s", how, detail[0] ? ": " : "", detail);
    s->storage_full = storage || (s->storage_full && status < 0);
    s->last_failure_ms = fl_now_ms();
    int shift = s->failures - 1 < 20 ? s->failures - 1 : 20;
    long long delay = (long long)s->cfg.backoff_ms << shift;
    if (delay > s->cfg.max_backoff_ms) delay = s->cfg.max_backoff_ms;
    s->restart_at = now + delay;
    s->state = SERVER_DOWN;
    s->pid = 0;
    fl_log_warn("%s; restarting it in %lld ms (failure %d in a row, %lld restarts so far)", s->last_error, delay,
                s->failures, s->restarts);
}

static void *supervise(void *arg) {
    fl_redis_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        int64_t now = fl_monotonic_ms();
        int status = 0;
        if (s->pid > 0 && waitpid(s->pid, &status, WNOHANG) == s->pid) {
            record_failure(s, status, NULL);
        } else if (s->pid > 0 && s->state == SERVER_STARTING) {
            char why[256] = "";
            pthread_mutex_unlock(&s->mu);
            int p = probe(s, why, sizeof why);
            pthread_mutex_lock(&s->mu);
            if (p > 0) {
                s->state = SERVER_UP;
                s->up_since = fl_monotonic_ms();
                s->storage_full = false;
                fl_log_info("redis-server is up again (restart %lld)", s->restarts);
            } else if (p < 0) { /* stays "starting" and is probed again */
                snprintf(s->last_error, sizeof s->last_error, "the restarted redis-server refuses writes: %.200s", why);
                s->storage_full = s->storage_full || strstr(why, "MISCONF") != NULL;
            }
        } else if (s->pid > 0 && s->state == SERVER_UP && s->failures > 0 &&
                   now - s->up_since >= 2LL * s->cfg.max_backoff_ms) {
            s->failures = 0; /* stable again */
        } else if (s->pid == 0 && now >= s->restart_at) {
            fl_error e = {0};
            pthread_mutex_unlock(&s->mu);
            int rc = spawn(s, &e); /* only this thread changes pid while supervised */
            pthread_mutex_lock(&s->mu);
            s->restarts++;
            if (rc == 0) s->state = SERVER_STARTING;
            else record_failure(s, -1, e.message);
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        int tick = s->state == SERVER_STARTING ? SUPERVISE_TICK_MS / 2 : SUPERVISE_TICK_MS;
        until.tv_nsec += (long)tick * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (!s->stopping) pthread_cond_timedwait(&s->wake, &s->mu, &until);
    }
    pthread_mutex_unlock(&s->mu);
    stop_process(s); /* from this thread: the process it started is reaped before PDEATHSIG could fire */
    return NULL;
}

int fl_redis_server_supervise(fl_redis_server *s, const fl_redis_supervision *cfg, fl_error *err) {
    FL_CHECK(s && !s->supervised);
    fl_redis_supervision c = cfg ? *cfg : fl_redis_supervision_default();
    if (c.backoff_ms < 1 || c.max_backoff_ms < c.backoff_ms)
        return fl_fail(err, FL_EINVAL, "redis restart delays: need 1 <= backoff (%d ms) <= max backoff (%d ms)",
                       c.backoff_ms, c.max_backoff_ms);
    s->cfg = c;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    s->supervised = true;
    s->up_since = fl_monotonic_ms();
    pthread_mutex_lock(&registry_mu);
    int slot = -1;
    for (int i = 0; i < FL_REDIS_MAX_SUPERVISED && slot < 0; i++)
        if (!registry[i]) slot = i;
    if (slot >= 0) registry[slot] = s;
    pthread_mutex_unlock(&registry_mu);
    if (slot < 0) {
        s->supervised = false;
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->wake);
        return fl_fail(err, FL_ELIMIT, "more than %d supervised Redis servers in one process", FL_REDIS_MAX_SUPERVISED);
    }
    if (pthread_create(&s->thread, NULL, supervise, s) != 0) {
        pthread_mutex_lock(&registry_mu);
        registry[slot] = NULL;
        pthread_mutex_unlock(&registry_mu);
        s->supervised = false;
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->wake);
        return fl_fail(err, FL_EIO, "cannot start the redis-server supervisor thread");
    }
    return 0;
}

void fl_redis_server_stop(fl_redis_server *s) {
    if (!s) return;
    if (s->supervised) {
        pthread_mutex_lock(&registry_mu);
        for (int i = 0; i < FL_REDIS_MAX_SUPERVISED; i++)
            if (registry[i] == s) registry[i] = NULL;
        pthread_mutex_unlock(&registry_mu);
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL); /* the thread stops the process */
    } else {
        stop_process(s);
    }
    free_server(s);
}
