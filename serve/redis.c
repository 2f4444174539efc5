/*
 * redis.c — the shared Redis connection (hiredis) with one reconnect-and-retry on socket
 * failures, and the private redis-server the service runs under its state directory.
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

#define CONNECT_TIMEOUT_MS 5000
#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 10000
#define LOADING_WAIT_MS 5000

struct fl_redis {
    char *address;
    char *unix_path; /* set for "unix:" addresses */
    char *host;      /* otherwise */
    int port;
    redisContext *ctx; /* NULL after a failed reconnect */
};

struct fl_redis_server {
    pid_t pid;
    char *dir;
    char *address; /* "unix:<dir>/redis.sock" */
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

int fl_redis_connect(const char *address, fl_redis **out, fl_error *err) {
    *out = NULL;
    fl_redis *r = fl_xcalloc(1, sizeof *r);
    if (parse_address(r, address, err) != 0) {
        fl_redis_close(r);
        return -1;
    }
    r->address = fl_xstrdup(address);
    char why[256];
    r->ctx = open_context(r, why, sizeof why);
    if (!r->ctx) {
        fl_fail(err, FL_EUNAVAILABLE, "cannot connect to Redis at %s: %s", address, why);
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

static redisReply *run(fl_redis *r, fl_error *err, const send_args *a) {
    char why[256] = "not connected";
    int64_t loading_deadline = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!r->ctx || r->ctx->err) {
            if (r->ctx) redisFree(r->ctx);
            r->ctx = open_context(r, why, sizeof why);
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
                fl_fail(err, FL_EIO, "Redis: %.*s", (int)(reply->len > 400 ? 400 : reply->len),
                        reply->str ? reply->str : "error");
                freeReplyObject(reply);
                return NULL;
            }
            return reply;
        }
        snprintf(why, sizeof why, "%s", r->ctx->errstr[0] ? r->ctx->errstr : "connection lost");
        redisFree(r->ctx);
        r->ctx = NULL;
    }
    fl_fail(err, FL_EUNAVAILABLE, "Redis at %s is unreachable: %s", r->address, why);
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

/* The last non-empty line of the log, for an error message. */
static void last_log_line(const char *log_path, char *out, size_t size) {
    out[0] = '\0';
    FILE *f = fopen(log_path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = '\0';
        if (n) snprintf(out, size, "%s", line);
    }
    fclose(f);
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

int fl_redis_server_start(const char *dir, fl_redis_server **out, fl_error *err) {
    *out = NULL;
    if (!dir || !*dir) return fl_fail(err, FL_EINVAL, "no directory for the private redis-server");
    char *abs_dir = NULL;
    if (make_dirs(dir, err) != 0) return -1;
    abs_dir = realpath(dir, NULL);
    if (!abs_dir) return fl_fail(err, FL_EIO, "%s: %s", dir, strerror(errno));
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int n = snprintf(sock, sizeof sock, "%s/redis.sock", abs_dir);
    if (n < 0 || (size_t)n >= sizeof sock) {
        fl_fail(err, FL_EINVAL, "redis-server directory path is too long for a unix socket: %s", abs_dir);
        free(abs_dir);
        return -1;
    }
    if (answers_ping(sock)) {
        fl_fail(err, FL_ECONFLICT, "a Redis server is already running on %s", sock);
        free(abs_dir);
        return -1;
    }
    if (unlink(sock) != 0 && errno != ENOENT) { /* a stale socket of a server that died */
        fl_fail(err, FL_EIO, "cannot remove stale socket %s: %s", sock, strerror(errno));
        free(abs_dir);
        return -1;
    }
    char *exe = find_server(err);
    if (!exe) {
        free(abs_dir);
        return -1;
    }
    char log_path[PATH_MAX + 16];
    snprintf(log_path, sizeof log_path, "%s/redis.log", abs_dir);
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int report[2] = {-1, -1};
    if (log_fd < 0 || pipe2(report, O_CLOEXEC) != 0) {
        fl_fail(err, FL_EIO, "cannot prepare redis-server (%s): %s", log_path, strerror(errno));
        if (log_fd >= 0) close(log_fd);
        free(exe);
        free(abs_dir);
        return -1;
    }
    char *argv[] = {exe,
                    "--port", "0", /* no TCP listener */
                    "--unixsocket", sock,
                    "--unixsocketperm", "700",
                    "--dir", abs_dir,
                    "--appendonly", "yes",
                    "--appendfsync", "always", /* an accepted job (202) is on disk */
                    "--save", "", /* the AOF is the persistence; no RDB snapshots */
                    "--daemonize", "no",
                    "--logfile", log_path,
                    "--protected-mode", "yes",
                    NULL};
    long max_fd = sysconf(_SC_OPEN_MAX);
    if (max_fd < 0 || max_fd > 65536) max_fd = 65536;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fl_fail(err, FL_EIO, "cannot start redis-server: %s", strerror(errno));
        close(log_fd);
        close(report[0]);
        close(report[1]);
        free(exe);
        free(abs_dir);
        return -1;
    }
    if (pid == 0) child_exec(exe, argv, log_fd, report[1], parent, max_fd);
    close(log_fd);
    close(report[1]);
    free(exe);
    int exec_errno = 0;
    ssize_t got;
    while ((got = read(report[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {}
    close(report[0]);
    if (got == (ssize_t)sizeof exec_errno) {
        waitpid(pid, NULL, 0);
        fl_fail(err, FL_EUNAVAILABLE, "cannot run redis-server: %s", strerror(exec_errno));
        free(abs_dir);
        return -1;
    }
    fl_redis_server *s = fl_xcalloc(1, sizeof *s);
    s->pid = pid;
    s->dir = abs_dir;
    if (asprintf(&s->address, "unix:%s", sock) < 0) FL_CHECK(!"out of memory");
    int64_t deadline = fl_monotonic_ms() + START_TIMEOUT_MS;
    for (;;) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            char line[400];
            last_log_line(log_path, line, sizeof line);
            fl_fail(err, FL_EUNAVAILABLE, "redis-server exited at startup (%s %d): %s",
                    WIFEXITED(status) ? "status" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                    line[0] ? line : "no log output");
            s->pid = 0;
            fl_redis_server_stop(s);
            return -1;
        }
        if (answers_ping(sock)) break;
        if (fl_monotonic_ms() >= deadline) {
            char line[400];
            last_log_line(log_path, line, sizeof line);
            fl_fail(err, FL_EUNAVAILABLE, "redis-server did not answer within %d s: %s", START_TIMEOUT_MS / 1000,
                    line[0] ? line : "no log output");
            fl_redis_server_stop(s);
            return -1;
        }
        fl_sleep_ms(20);
    }
    *out = s;
    return 0;
}

const char *fl_redis_server_address(const fl_redis_server *s) {
    return s->address;
}

void fl_redis_server_stop(fl_redis_server *s) {
    if (!s) return;
    if (s->pid > 0) {
        bool asked = false;
        fl_redis *r = NULL;
        if (fl_redis_connect(s->address, &r, NULL) == 0) {
            /* SHUTDOWN closes the connection instead of replying: a NULL reply is success. An
             * error reply (the AOF could not be written) falls through to SIGTERM below. */
            pipe_guard g;
            pipe_guard_begin(&g);
            redisReply *reply = redisCommand(r->ctx, "SHUTDOWN");
            pipe_guard_end(&g);
            asked = reply == NULL;
            if (reply) freeReplyObject(reply);
            fl_redis_close(r);
        }
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
    }
    free(s->dir);
    free(s->address);
    free(s);
}
