/*
 * service.c — the service's subcommands:
 *
 *   flashlora serve  [--model BASE] [--state DIR] [--redis ADDR] [--listen HOST:PORT] [--workers N] ...
 *   flashlora worker [--model BASE] [--state DIR] [--redis ADDR] [--name NAME] ...
 *   flashlora keys create --tenant T [--label L] | keys revoke KEY   [--state DIR] [--redis ADDR]
 *
 * Without --redis, `serve` starts a private redis-server (AOF on) under DIR/redis and stops it on
 * exit; `worker` and `keys` then use that server's socket (and `keys` starts it briefly when no
 * service is running). Workers on other machines name the shared Redis with --redis and the
 * shared state directory with --state. Without --model, serve and worker use the embedded default
 * model (one line on stderr says so).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "models/embedded.h"
#include "models/flux.h"
#include "serve/api.h"
#include "serve/auth.h"
#include "serve/http.h"
#include "serve/jobs.h"
#include "serve/redis.h"
#include "serve/worker.h"

static volatile sig_atomic_t stop_requested = 0;

static void on_stop_signal(int sig) {
    stop_requested = sig;
}

static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

typedef struct service_args {
    const char *model, *state, *redis, *listen, *device, *name, *port_file;
    bool allow_private_urls;
    long workers, max_queue, max_train_queue, max_body, max_upload, claim_timeout_s, max_deliveries, batch,
        batch_wait_ms, cache_mb, checkpoint_every, sync_timeout_s, max_connections;
} service_args;

static void serve_usage(FILE *out) {
    fprintf(out,
            "usage: flashlora serve [--model BASE.safetensors] [options]\n\n"
            "  --model BASE           the base model (default: the embedded model, %s)\n"
            "  --state DIR            service data: adapter store, images, uploads, checkpoints, private Redis\n"
            "                         (default ./flashlora-state)\n"
            "  --redis ADDR           shared Redis (host:port, redis://host:port, unix:/path); default: start a\n"
            "                         private redis-server under DIR/redis with AOF on\n"
            "  --listen HOST:PORT     (default 127.0.0.1:8080; port 0 picks a free one)\n"
            "  --port-file PATH       write the port listened on to PATH once ready\n"
            "  --workers N            in-process workers, each with the model resident (default 1; 0 = API only)\n"
            "  --device cpu|cuda|auto (default cpu)\n"
            "limits:\n"
            "  --max-queue N          generation jobs queued or running before 429 (default 64)\n"
            "  --max-train-queue N    training jobs (default 8)\n"
            "  --max-body BYTES       JSON body limit (default 1048576)\n"
            "  --max-upload BYTES     multipart upload limit (default 268435456)\n"
            "  --max-connections N    (default 256)\n"
            "  --sync-timeout S       longest wait of a \"sync\": true generation (default 120)\n"
            "  --allow-private-urls   fetch images_url and adapter URLs on loopback/private networks too\n"
            "                         (off by default: requests cannot make the service probe its own network)\n"
            "workers:\n"
            "  --batch N              images per generation batch (default 8)\n"
            "  --batch-wait-ms N      wait for more requests to batch (default 5)\n"
            "  --claim-timeout S      idle seconds before a dead worker's job is taken over (default 60)\n"
            "  --max-deliveries N     deliveries before a job fails (default 3)\n"
            "  --cache-mb N           adapter cache budget per worker (default 1024)\n"
            "  --checkpoint-every N   training checkpoint period in steps (default 10)\n",
            FL_EMBEDDED_MODEL_REL);
}

static void worker_usage(FILE *out) {
    fprintf(out,
            "usage: flashlora worker [--model BASE.safetensors] [--state DIR] [--redis ADDR] [--name NAME]\n"
            "                        [--device cpu|cuda|auto] [--batch N] [--batch-wait-ms N] [--claim-timeout S]\n"
            "                        [--max-deliveries N] [--cache-mb N] [--checkpoint-every N]\n"
            "                        [--allow-private-urls]\n\n"
            "Runs jobs from the shared Redis until SIGINT/SIGTERM. Without --redis it joins the private\n"
            "Redis of a `flashlora serve` running on the same --state directory. Without --model it uses\n"
            "the embedded model (%s).\n",
            FL_EMBEDDED_MODEL_REL);
}

static int parse_long(const char *flag, const char *text, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "flashlora: %s: '%s' is not an integer in [%ld, %ld]\n", flag, text, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses the options serve and worker share; returns 1 for --help, -1 for an error. */
static int parse_service_args(int argc, char **argv, service_args *a, bool is_serve) {
    memset(a, 0, sizeof *a);
    a->state = "flashlora-state";
    a->listen = "127.0.0.1:8080";
    a->device = "cpu";
    a->workers = 1;
    a->max_queue = 64;
    a->max_train_queue = 8;
    a->max_body = 1 << 20;
    a->max_upload = 256L << 20;
    a->claim_timeout_s = 60;
    a->max_deliveries = 3;
    a->batch = 8;
    a->batch_wait_ms = 5;
    a->cache_mb = 1024;
    a->checkpoint_every = 10;
    a->sync_timeout_s = 120;
    a->max_connections = 256;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) return 1;
        if (!strcmp(f, "--allow-private-urls")) {
            a->allow_private_urls = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora: %s needs a value (see --help)\n", f);
            return -1;
        }
        const char *v = argv[++i];
        const char **str = !strcmp(f, "--model")    ? &a->model
                           : !strcmp(f, "--state")  ? &a->state
                           : !strcmp(f, "--redis")  ? &a->redis
                           : !strcmp(f, "--device") ? &a->device
                           : !strcmp(f, "--name") && !is_serve ? &a->name
                           : !strcmp(f, "--listen") && is_serve ? &a->listen
                           : !strcmp(f, "--port-file") && is_serve ? &a->port_file
                                                      : NULL;
        if (str) {
            *str = v;
            continue;
        }
        struct {
            const char *flag;
            long lo, hi;
            long *out;
            bool serve_only;
        } nums[] = {
            {"--workers", 0, 64, &a->workers, true},
            {"--max-queue", 1, 1000000, &a->max_queue, true},
            {"--max-train-queue", 1, 100000, &a->max_train_queue, true},
            {"--max-body", 1024, 1L << 30, &a->max_body, true},
            {"--max-upload", 1024, 1L << 40, &a->max_upload, true},
            {"--max-connections", 4, 100000, &a->max_connections, true},
            {"--sync-timeout", 1, 86400, &a->sync_timeout_s, true},
            {"--batch", 1, 64, &a->batch, false},
            {"--batch-wait-ms", 0, 10000, &a->batch_wait_ms, false},
            {"--claim-timeout", 1, 86400, &a->claim_timeout_s, false},
            {"--max-deliveries", 1, 1000, &a->max_deliveries, false},
            {"--cache-mb", 1, 1 << 20, &a->cache_mb, false},
            {"--checkpoint-every", 0, 1000000, &a->checkpoint_every, false},
        };
        bool found = false;
        for (size_t k = 0; k < sizeof nums / sizeof nums[0] && !found; k++) {
            if (strcmp(f, nums[k].flag) != 0 || (nums[k].serve_only && !is_serve)) continue;
            if (parse_long(f, v, nums[k].lo, nums[k].hi, nums[k].out) != 0) return -1;
            found = true;
        }
        if (!found) {
            fprintf(stderr, "flashlora: unknown option %s (see --help)\n", f);
            return -1;
        }
    }
    return 0;
}

/* The embedded model when no --model was given; buf receives its path. */
static int resolve_model(service_args *a, const char *command, char *buf, size_t cap) {
    if (a->model) return 0;
    fl_error err = {0};
    if (fl_default_model(command, buf, cap, &err) != 0) {
        fprintf(stderr, "%s: %s\n", command, err.message);
        return -1;
    }
    a->model = buf;
    return 0;
}

/* The private server's address under the state directory. */
static void private_address(const char *state, char *addr, size_t cap) {
    snprintf(addr, cap, "unix:%s/redis/redis.sock", state);
}

static fl_worker_config worker_config_of(const service_args *a, const char *redis_address) {
    fl_worker_config wc = fl_worker_config_default();
    wc.redis_address = redis_address;
    wc.state_dir = a->state;
    wc.model_path = a->model;
    wc.device = a->device;
    wc.name = a->name;
    wc.max_batch = (int)a->batch;
    wc.batch_wait_ms = (int)a->batch_wait_ms;
    wc.claim_timeout_ms = (int)(a->claim_timeout_s * 1000);
    wc.max_deliveries = (int)a->max_deliveries;
    wc.cache_bytes = (size_t)a->cache_mb << 20;
    wc.checkpoint_every = (int)a->checkpoint_every;
    wc.allow_private_urls = a->allow_private_urls;
    return wc;
}

static int read_model_params(const char *path, fl_flux_params *p, fl_error *err) {
    fl_safetensors *st = NULL;
    if (fl_safetensors_open(path, &st, err) != 0) return fl_fail_prefix(err, "%s", path);
    int rc = fl_flux_params_of_checkpoint(st, p, err);
    fl_safetensors_close(st);
    return rc;
}

static int serve_run(const service_args *a, fl_error *err) {
    char addr[4200], path[4200];
    fl_redis_server *private_server = NULL;
    fl_redis *r = NULL;
    fl_metrics *metrics = fl_metrics_create();
    fl_api *api = NULL;
    fl_http_server *http = NULL;
    fl_worker *workers[64] = {0};
    int rc = fl_mkdirs(a->state, err);
    if (rc == 0 && !a->redis) {
        snprintf(path, sizeof path, "%s/redis", a->state);
        rc = fl_redis_server_start(path, &private_server, err);
        if (rc == 0) snprintf(addr, sizeof addr, "%s", fl_redis_server_address(private_server));
        if (rc == 0) fl_log_info("private redis-server at %s (AOF on)", addr);
    } else if (rc == 0) {
        snprintf(addr, sizeof addr, "%s", a->redis);
    }
    if (rc == 0) rc = fl_redis_connect(addr, &r, err);
    if (rc == 0) rc = fl_jobs_init(r, err);
    fl_api_config ac = fl_api_config_default();
    ac.redis_address = addr;
    ac.state_dir = a->state;
    ac.metrics = metrics;
    ac.max_pending_generate = a->max_queue;
    ac.max_pending_train = a->max_train_queue;
    ac.sync_timeout_s = (int)a->sync_timeout_s;
    ac.allow_private_urls = a->allow_private_urls;
    if (rc == 0) rc = read_model_params(a->model, &ac.params, err);
    if (rc == 0) rc = fl_model_hash_cached(r, a->model, ac.base_model_hash, err);
    if (rc == 0) rc = fl_api_create(&ac, &api, err);
    fl_http_config hc = fl_http_config_default();
    char host[256] = "127.0.0.1";
    long port = 8080;
    if (rc == 0) {
        const char *colon = strrchr(a->listen, ':');
        if (!colon || colon == a->listen || (size_t)(colon - a->listen) >= sizeof host ||
            parse_long("--listen", colon + 1, 0, 65535, &port) != 0)
            rc = fl_fail(err, FL_EINVAL, "--listen: expected HOST:PORT, got '%s'", a->listen);
        else
            snprintf(host, sizeof host, "%.*s", (int)(colon - a->listen), a->listen);
    }
    hc.bind_address = host;
    hc.port = (int)port;
    hc.max_body_bytes = (size_t)a->max_body;
    hc.max_upload_bytes = (size_t)a->max_upload;
    hc.max_connections = (int)a->max_connections;
    fl_worker_config wc = worker_config_of(a, addr);
    wc.metrics = metrics;
    for (long i = 0; rc == 0 && i < a->workers; i++) rc = fl_worker_start(&wc, &workers[i], err);
    if (rc == 0) rc = fl_http_start(&hc, fl_api_handle, api, &http, err);
    if (rc == 0) {
        fl_log_info("flashlora serve: listening on http://%s:%d (%ld workers, state %s)", host, fl_http_port(http),
                    a->workers, a->state);
        if (a->port_file) {
            char port_text[16];
            int n = snprintf(port_text, sizeof port_text, "%d\n", fl_http_port(http));
            fl_error perr = {0};
            if (fl_write_file_atomic(a->port_file, port_text, (size_t)n, &perr) != 0) fl_log_warn("%s", perr.message);
        }
        while (!stop_requested) usleep(100 * 1000);
        fl_log_info("flashlora serve: stopping (signal %d)", (int)stop_requested);
    }
    fl_http_stop(http);
    for (long i = 0; i < a->workers; i++) fl_worker_stop(workers[i]);
    fl_api_free(api);
    fl_redis_close(r);
    if (private_server) fl_redis_server_stop(private_server);
    fl_metrics_free(metrics);
    return rc;
}

int fl_cmd_serve(int argc, char **argv) {
    service_args a;
    int p = parse_service_args(argc, argv, &a, true);
    if (p != 0) {
        if (p > 0) serve_usage(stdout);
        return p > 0 ? 0 : 2;
    }
    char model[4200];
    if (resolve_model(&a, "flashlora serve", model, sizeof model) != 0) return 1;
    fl_threads_init_from_env();
    install_stop_handlers();
    fl_error err = {0};
    if (serve_run(&a, &err) != 0) {
        fprintf(stderr, "flashlora serve: %s\n", err.message);
        return 1;
    }
    return 0;
}

int fl_cmd_worker(int argc, char **argv) {
    service_args a;
    int p = parse_service_args(argc, argv, &a, false);
    if (p != 0) {
        if (p > 0) worker_usage(stdout);
        return p > 0 ? 0 : 2;
    }
    char model[4200];
    if (resolve_model(&a, "flashlora worker", model, sizeof model) != 0) return 1;
    fl_threads_init_from_env();
    install_stop_handlers();
    char addr[4200];
    if (a.redis) snprintf(addr, sizeof addr, "%s", a.redis);
    else private_address(a.state, addr, sizeof addr);
    fl_worker_config wc = worker_config_of(&a, addr);
    fl_error err = {0};
    if (fl_worker_run(&wc, &stop_requested, &err) != 0) {
        fprintf(stderr, "flashlora worker: %s\n", err.message);
        return 1;
    }
    return 0;
}

/* ---- keys ---------------------------------------------------------------------------------------- */

static void keys_usage(FILE *out) {
    fprintf(out,
            "usage: flashlora keys create --tenant TENANT [--label TEXT] [--state DIR] [--redis ADDR]\n"
            "       flashlora keys revoke KEY [--state DIR] [--redis ADDR]\n\n"
            "create prints a new API key for the tenant (shown only once; Redis keeps its SHA-256).\n");
}

int fl_cmd_keys(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        keys_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *action = argv[1], *tenant = NULL, *label = NULL, *state = "flashlora-state", *redis = NULL,
               *key = NULL;
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (f[0] != '-' && !key && !strcmp(action, "revoke")) {
            key = f;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora keys: %s needs a value\n", f);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(f, "--tenant")) tenant = v;
        else if (!strcmp(f, "--label")) label = v;
        else if (!strcmp(f, "--state")) state = v;
        else if (!strcmp(f, "--redis")) redis = v;
        else {
            fprintf(stderr, "flashlora keys: unknown option %s\n", f);
            return 2;
        }
    }
    bool create = !strcmp(action, "create");
    if ((!create && strcmp(action, "revoke") != 0) || (create && !tenant) || (!create && !key)) {
        keys_usage(stderr);
        return 2;
    }
    char addr[4200];
    fl_error err = {0};
    fl_redis_server *temporary = NULL;
    fl_redis *r = NULL;
    int rc = 0;
    if (redis) {
        snprintf(addr, sizeof addr, "%s", redis);
    } else {
        private_address(state, addr, sizeof addr);
        /* No service running on this state directory: start its Redis for the moment. */
        fl_error probe = {0};
        if (fl_redis_connect(addr, &r, &probe) == 0) {
            redisReply *rep = fl_redis_cmd(r, &probe, "PING");
            if (rep) freeReplyObject(rep);
            else {
                fl_redis_close(r);
                r = NULL;
            }
        }
        if (!r) {
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/redis", state);
            rc = fl_mkdirs(state, &err);
            if (rc == 0) rc = fl_redis_server_start(dir, &temporary, &err);
        }
    }
    if (rc == 0 && !r) rc = fl_redis_connect(addr, &r, &err);
    if (rc == 0 && create) {
        char new_key[FL_API_KEY_MAX];
        rc = fl_auth_create_key(r, tenant, label, new_key, &err);
        if (rc == 0) printf("%s\n", new_key);
    } else if (rc == 0) {
        rc = fl_auth_revoke_key(r, key, &err);
        if (rc == 0) printf("revoked\n");
    }
    fl_redis_close(r);
    if (temporary) fl_redis_server_stop(temporary);
    if (rc != 0) {
        fprintf(stderr, "flashlora keys: %s\n", err.message);
        return 1;
    }
    return 0;
}
