/*
 * service.c — the service's subcommands:
 *
 *   flashlora serve  [--model BASE] [--state DIR] [--redis ADDR] [--listen HOST:PORT] [--workers N] ...
 *   flashlora worker [--model BASE] [--state DIR] [--redis ADDR] [--name NAME] ...
 *   flashlora keys create --tenant T [--label L] | keys revoke KEY   [--state DIR] [--redis ADDR]
 *
 * Without --redis, `serve` starts a private redis-server (AOF on) under DIR/redis, supervises it
 * (restarted with backoff when it exits) and stops it on exit; `worker` and `keys` then use that
 * server's socket (and `keys` starts it briefly when no
 * service is running). Workers on other machines name the shared Redis with --redis and the
 * shared state directory with --state.
 *
 * SIGINT/SIGTERM stop `serve` and `worker` gracefully within --shutdown-timeout (new requests
 * refused, running jobs finished or handed back to the queue); a second signal exits at once.
 * Without --model, serve and worker use the embedded default model (one line on stderr says so).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/clock.h"
#include "core/fileio.h"
#include "core/device.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "models/embedded.h"
#include "models/flux.h"
#include "models/pipeline.h"
#include "serve/api.h"
#include "serve/auth.h"
#include "serve/http.h"
#include "serve/jobs.h"
#include "serve/redis.h"
#include "serve/worker.h"

static volatile sig_atomic_t stop_requested = 0;

/* The first SIGINT/SIGTERM asks for a graceful stop; a second one exits at once (what is
 * accepted stays in Redis, and other workers take over what this process held after
 * --claim-timeout). */
static void on_stop_signal(int sig) {
    if (stop_requested) {
        static const char msg[] = "flashlora: second signal: exiting now\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(128 + sig);
    }
    stop_requested = sig;
}

/* Ends the process when a graceful stop outlives --shutdown-timeout (a step that takes longer,
 * a handler that does not return). */
static void *shutdown_watchdog(void *arg) {
    long timeout_s = (long)(intptr_t)arg;
    while (!stop_requested) usleep(100 * 1000);
    int64_t deadline = fl_monotonic_ms() + timeout_s * 1000;
    while (fl_monotonic_ms() < deadline) usleep(50 * 1000);
    fl_log_error("shutdown took longer than --shutdown-timeout %ld s: exiting now (other workers take over what "
                 "this process still held after --claim-timeout)", timeout_s);
    _exit(1);
    return NULL;
}

static void start_shutdown_watchdog(long timeout_s) {
    pthread_t t;
    if (pthread_create(&t, NULL, shutdown_watchdog, (void *)(intptr_t)timeout_s) == 0) pthread_detach(t);
}

static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit (RLIMIT_FSIZE) makes a write fail with EFBIG — a full disk to the service, a
     * clear 507 — instead of killing the process; redis-server inherits this too. */
    signal(SIGXFSZ, SIG_IGN);
}

typedef struct service_args {
    const char *model, *state, *redis, *listen, *device, *name, *port_file;
    bool allow_private_urls;
    long workers, max_queue, max_train_queue, max_body, max_upload, claim_timeout_s, max_deliveries, batch,
        batch_wait_ms, cache_mb, checkpoint_every, sync_timeout_s, max_connections, redis_backoff_ms,
        redis_backoff_max_ms;
    long device_cache_mb;
    long header_timeout_s, max_header_bytes, max_client_connections, ops_reserve, max_pending_heads, max_parts;
    /* admission and bounded inputs; -1: the default of the device (api_config_of) */
    long max_job_memory, max_generation_work, max_training_work, max_resolution, max_adapter_bytes,
        max_metadata_bytes, max_page_bytes;
    long max_evaluation_work;
    long max_queue_tenant, max_train_queue_tenant, shutdown_timeout_s, job_retention_s, jobs_per_tenant,
        sweep_interval_s;
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
            "  --max-queue-per-tenant N        generation jobs one tenant may have queued or running\n"
            "                         before 429 tenant_quota (default 16; 0 = no quota)\n"
            "  --max-train-queue-per-tenant N  training jobs of one tenant (default 2; 0 = no quota)\n"
            "  --max-body BYTES       JSON body limit (default 1048576)\n"
            "  --max-upload BYTES     multipart upload limit (default 268435456)\n"
            "  --max-connections N    requests served at once; more get 503 (default 256)\n"
            "  --ops-reserve N        more connections for /healthz and /metrics only (default 4)\n"
            "  --max-client-connections N  connections of one client address, waiting or served;\n"
            "                         more get 429 (default 32; raise it behind a proxy)\n"
            "  --max-pending-heads N  connections waiting for their request head (default 1024)\n"
            "  --header-timeout S     the request head must arrive within S seconds, else 408 (default 10)\n"
            "  --max-header-bytes N   request line and headers (default 16384; more is 414/431)\n"
            "  --max-parts N          parts of a multipart/form-data body (default 64)\n"
            "  --sync-timeout S       longest wait of a \"sync\": true generation (default 120)\n"
            "  --allow-private-urls   fetch images_url and adapter URLs on loopback/private networks too\n"
            "                         (off by default: requests cannot make the service probe its own network)\n"
            "  --shutdown-timeout S   after SIGTERM/SIGINT: stop accepting, let running work finish or hand\n"
            "                         it back, and exit within S seconds (default 30); a second signal exits\n"
            "                         at once\n"
            "private redis-server (supervised: restarted when it exits, its state in /healthz and /metrics):\n"
            "  --redis-backoff-ms N   delay before restarting it after a failure (default 250)\n"
            "  --redis-backoff-max-ms N  the delay doubles per failure in a row up to N (default 30000)\n"
            "admission (a job over a limit is refused with 422, naming the limit and the figure):\n"
            "  --max-job-memory BYTES memory one job may take on its worker, from the planning-mode estimate\n"
            "                         (default: half the physical memory; with --device cuda set it to the GPU's)\n"
            "  --max-generation-work N  width x height x steps x images of a generation (default 1310720\n"
            "                         on cpu: 8 images of 64x64 at 40 steps, or one 256x256 at 20; 209715200 on\n"
            "                         cuda: 4 images of 1024x1024 at 50 steps)\n"
            "  --max-training-work N  resolution^2 x steps x batch of a training (default 16384000 on cpu:\n"
            "                         64x64 x 1000 steps x batch 4; 8388608000 on cuda)\n"
            "  --max-evaluation-work N  width x height x steps x images of an evaluation, its base images\n"
            "                         included (default 8 x the generation default: 10485760 on cpu, two\n"
            "                         adapters at 8 prompts x 4 seeds of 64x64 at 20 steps; 1677721600 on cuda)\n"
            "  --max-resolution PX    largest width, height or training resolution (default 256 on cpu,\n"
            "                         1024 on cuda)\n"
            "  --max-adapter-bytes BYTES  an adapter file imported from a URL (default 2147483648: a rank-128\n"
            "                         adapter on every Linear of FLUX.1-dev is about 1.3 GB in bf16)\n"
            "  --max-metadata-bytes BYTES  an imported adapter's metadata as JSON (default 65536)\n"
            "  --max-page-bytes BYTES one page of GET /v1/adapters; the page ends early, with next_offset\n"
            "                         (default 1048576)\n"
            "retention:\n"
            "  --job-retention S      a finished job, its events and its images are removed S seconds after\n"
            "                         it ends (default 604800, a week)\n"
            "  --jobs-per-tenant N    finished jobs kept per tenant; the oldest go first (default 10000)\n"
            "  --sweep-interval S     how often workers trim the work streams and remove due images and\n"
            "                         orphaned files (default 10)\n"
            "workers:\n"
            "  --batch N              images per generation batch (default 8)\n"
            "  --batch-wait-ms N      wait for more requests to batch (default 5)\n"
            "  --claim-timeout S      idle seconds before a dead worker's job is taken over (default 60)\n"
            "  --max-deliveries N     deliveries before a job fails (default 3)\n"
            "  --cache-mb N           adapter cache budget per worker (default 1024)\n"
            "  --device-cache-mb N    adapters kept attached to a worker's model, on its device (default 1024;\n"
            "                         on the CPU backend this is host memory too)\n"
            "  --checkpoint-every N   training checkpoint period in steps (default 10)\n",
            FL_EMBEDDED_MODEL_REL);
}

static void worker_usage(FILE *out) {
    fprintf(out,
            "usage: flashlora worker [--model BASE.safetensors] [--state DIR] [--redis ADDR] [--name NAME]\n"
            "                        [--device cpu|cuda|auto] [--batch N] [--batch-wait-ms N] [--claim-timeout S]\n"
            "                        [--max-deliveries N] [--cache-mb N] [--device-cache-mb N]\n"
            "                        [--checkpoint-every N] [--shutdown-timeout S] [--sweep-interval S]\n"
            "                        [--allow-private-urls]\n\n"
            "Runs jobs from the shared Redis until SIGINT/SIGTERM. Without --redis it joins the private\n"
            "Redis of a `flashlora serve` running on the same --state directory. Without --model it uses\n"
            "the embedded model (%s).\n\n"
            "On SIGINT/SIGTERM it takes no new work: a running training writes a checkpoint and goes back\n"
            "to the queue at once, a running generation batch finishes if its pace lets it within half of\n"
            "--shutdown-timeout (default 30 s) and otherwise goes back to the queue at its next step, and\n"
            "the process exits within --shutdown-timeout; a second signal exits at once.\n"
            "--sweep-interval S (default 10): how often the retention sweep runs (retention itself is set\n"
            "by `flashlora serve`).\n",
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
    a->device_cache_mb = 1024;
    a->checkpoint_every = 10;
    a->sync_timeout_s = 120;
    a->max_connections = 256;
    a->redis_backoff_ms = 250;
    a->redis_backoff_max_ms = 30000;
    a->header_timeout_s = 10;
    a->max_header_bytes = 16384;
    a->max_client_connections = 32;
    a->ops_reserve = 4;
    a->max_pending_heads = 1024;
    a->max_parts = 64;
    a->max_job_memory = a->max_generation_work = a->max_training_work = a->max_resolution = -1;
    a->max_evaluation_work = -1;
    a->max_adapter_bytes = 2L << 30;
    a->max_metadata_bytes = 64L << 10;
    a->max_page_bytes = 1L << 20;
    a->max_queue_tenant = 16;
    a->max_train_queue_tenant = 2;
    a->shutdown_timeout_s = 30;
    a->job_retention_s = 7L * 24 * 3600;
    a->jobs_per_tenant = 10000;
    a->sweep_interval_s = 10;
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
            {"--redis-backoff-ms", 1, 600000, &a->redis_backoff_ms, true},
            {"--redis-backoff-max-ms", 1, 3600000, &a->redis_backoff_max_ms, true},
            {"--ops-reserve", 0, 1000, &a->ops_reserve, true},
            {"--max-client-connections", 1, 100000, &a->max_client_connections, true},
            {"--max-pending-heads", 1, 100000, &a->max_pending_heads, true},
            {"--header-timeout", 1, 3600, &a->header_timeout_s, true},
            {"--max-header-bytes", 1024, 1 << 20, &a->max_header_bytes, true},
            {"--max-parts", 1, 100000, &a->max_parts, true},
            {"--max-job-memory", 1L << 20, 1L << 50, &a->max_job_memory, true},
            {"--max-generation-work", 1, 1L << 50, &a->max_generation_work, true},
            {"--max-training-work", 1, 1L << 50, &a->max_training_work, true},
            {"--max-evaluation-work", 1, 1L << 50, &a->max_evaluation_work, true},
            {"--max-resolution", 1, 16384, &a->max_resolution, true},
            {"--max-adapter-bytes", 1024, 1L << 40, &a->max_adapter_bytes, true},
            {"--max-metadata-bytes", 1024, 1L << 26, &a->max_metadata_bytes, true},
            {"--max-page-bytes", 4096, 1L << 30, &a->max_page_bytes, true},
            {"--max-queue-per-tenant", 0, 1000000, &a->max_queue_tenant, true},
            {"--max-train-queue-per-tenant", 0, 100000, &a->max_train_queue_tenant, true},
            {"--job-retention", 1, 10L * 366 * 24 * 3600, &a->job_retention_s, true},
            {"--jobs-per-tenant", 1, 100000000, &a->jobs_per_tenant, true},
            {"--shutdown-timeout", 1, 3600, &a->shutdown_timeout_s, false},
            {"--sweep-interval", 1, 86400, &a->sweep_interval_s, false},
            {"--batch", 1, 64, &a->batch, false},
            {"--batch-wait-ms", 0, 10000, &a->batch_wait_ms, false},
            {"--claim-timeout", 1, 86400, &a->claim_timeout_s, false},
            {"--max-deliveries", 1, 1000, &a->max_deliveries, false},
            {"--cache-mb", 1, 1 << 20, &a->cache_mb, false},
            {"--device-cache-mb", 1, 1 << 20, &a->device_cache_mb, false},
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
    if (a->redis_backoff_max_ms < a->redis_backoff_ms) {
        fprintf(stderr, "flashlora: --redis-backoff-max-ms must be at least --redis-backoff-ms\n");
        return -1;
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

/* The state directory as an absolute path when it exists (else as given): paths built from it
 * then start with '/', which the HTTP layer removes from every error a client sees. */
static const char *state_path(const char *state, char *buf, size_t cap) {
    char *abs = realpath(state, NULL);
    if (abs && strlen(abs) < cap) snprintf(buf, cap, "%s", abs);
    else snprintf(buf, cap, "%s", state);
    free(abs);
    return buf;
}

static fl_worker_config worker_config_of(const service_args *a, const char *redis_address, const char *state_dir) {
    fl_worker_config wc = fl_worker_config_default();
    wc.redis_address = redis_address;
    wc.state_dir = state_dir;
    wc.model_path = a->model;
    wc.device = a->device;
    wc.name = a->name;
    wc.max_batch = (int)a->batch;
    wc.batch_wait_ms = (int)a->batch_wait_ms;
    wc.claim_timeout_ms = (int)(a->claim_timeout_s * 1000);
    wc.max_deliveries = (int)a->max_deliveries;
    wc.cache_bytes = (size_t)a->cache_mb << 20;
    wc.device_cache_bytes = (size_t)a->device_cache_mb << 20;
    wc.checkpoint_every = (int)a->checkpoint_every;
    wc.allow_private_urls = a->allow_private_urls;
    wc.shutdown_timeout_ms = (int)(a->shutdown_timeout_s * 1000);
    wc.sweep_interval_ms = (int)(a->sweep_interval_s * 1000);
    return wc;
}

/* The base model as the API sees it (no weights read): its transformer's parameters, the image
 * patch, the text length and defaults of its variant, its identity, and for FLUX.1 what its text
 * encoders and autoencoder cost the workers. */
static int describe_model(const char *path, fl_redis *r, fl_api_config *ac, fl_error *err) {
    fl_pipeline_files files = {.model = path};
    fl_pipeline_paths paths;
    fl_pipeline_info info;
    if (fl_pipeline_describe(&files, &paths, &info, err) != 0) return -1;
    ac->params = info.flux;
    ac->patch = info.patch;
    ac->default_steps = info.default_steps;
    ac->default_guidance = info.default_guidance;
    if (info.kind == FL_PIPELINE_PIXELS) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return fl_model_hash_cached(r, path, ac->base_model_hash, err);
        return fl_pipeline_base_id(&paths, &info, ac->base_model_hash, err);
    }
    ac->max_text_tokens = info.text_tokens;
    ac->default_size = 1024; /* FLUX.1's native size; requests without one get at most --max-resolution */
    if (fl_pipeline_estimate_costs(&paths, &info, ac->job_device, fl_threads_get(), &ac->pipeline_costs, err) != 0)
        return -1;
    return fl_pipeline_base_id(&paths, &info, ac->base_model_hash, err);
}

/* The admission limits: given ones, else the defaults of the workers' device. */
static void admission_config(const service_args *a, fl_api_config *ac) {
    bool cuda = !strncmp(a->device, "cuda", 4) || (!strcmp(a->device, "auto") && fl_cuda_device_count() > 0);
    ac->job_device = cuda ? FL_DEVICE_CUDA : FL_DEVICE_CPU;
    ac->max_job_memory = a->max_job_memory > 0 ? (size_t)a->max_job_memory : fl_api_default_job_memory();
    ac->max_generation_work = a->max_generation_work > 0 ? a->max_generation_work : cuda ? 209715200 : 1310720;
    ac->max_training_work = a->max_training_work > 0 ? a->max_training_work : cuda ? 8388608000L : 16384000;
    ac->max_evaluation_work = a->max_evaluation_work > 0 ? a->max_evaluation_work : 8 * ac->max_generation_work;
    ac->max_resolution = a->max_resolution > 0 ? (int)a->max_resolution : cuda ? 1024 : 256;
    ac->max_adapter_bytes = (size_t)a->max_adapter_bytes;
    ac->max_metadata_bytes = (size_t)a->max_metadata_bytes;
    ac->max_page_bytes = (size_t)a->max_page_bytes;
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
        fl_redis_supervision sup = {(int)a->redis_backoff_ms, (int)a->redis_backoff_max_ms};
        if (rc == 0) rc = fl_redis_server_supervise(private_server, &sup, err);
        if (rc == 0) snprintf(addr, sizeof addr, "%s", fl_redis_server_address(private_server));
        if (rc == 0) fl_log_info("private redis-server at %s (AOF on, supervised)", addr);
    } else if (rc == 0) {
        snprintf(addr, sizeof addr, "%s", a->redis);
    }
    if (rc == 0) rc = fl_redis_connect(addr, &r, err);
    if (rc == 0) rc = fl_jobs_init(r, err);
    fl_api_config ac = fl_api_config_default();
    ac.redis_address = addr;
    char state[4096];
    ac.state_dir = state_path(a->state, state, sizeof state);
    ac.metrics = metrics;
    ac.max_pending_generate = a->max_queue;
    ac.max_pending_train = a->max_train_queue;
    ac.max_pending_generate_tenant = a->max_queue_tenant;
    ac.max_pending_train_tenant = a->max_train_queue_tenant;
    ac.job_retention_s = a->job_retention_s;
    ac.jobs_per_tenant = a->jobs_per_tenant;
    ac.sync_timeout_s = (int)a->sync_timeout_s;
    ac.allow_private_urls = a->allow_private_urls;
    admission_config(a, &ac);
    if (rc == 0) rc = describe_model(a->model, r, &ac, err);
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
    hc.ops_reserve = (int)a->ops_reserve;
    hc.max_client_connections = (int)a->max_client_connections;
    hc.max_pending_heads = (int)a->max_pending_heads;
    hc.header_timeout_s = (int)a->header_timeout_s;
    hc.max_header_bytes = (size_t)a->max_header_bytes;
    hc.max_parts = (size_t)a->max_parts;
    hc.admit = fl_api_admit;
    fl_worker_config wc = worker_config_of(a, addr, ac.state_dir);
    wc.metrics = metrics;
    for (long i = 0; rc == 0 && i < a->workers; i++) rc = fl_worker_start(&wc, &workers[i], err);
    if (rc == 0) rc = fl_http_start(&hc, fl_api_handle, api, &http, err);
    if (rc == 0) fl_api_set_http(api, http);
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
        fl_log_info("flashlora serve: stopping (signal %d): no new requests; running jobs finish or go back to the "
                    "queue within %ld s", (int)stop_requested, a->shutdown_timeout_s);
    }
    /* Workers first (they hand their jobs back while the HTTP layer drains), then the HTTP layer:
     * waiting handlers ("sync" generations) answer at once. */
    if (api) fl_api_begin_shutdown(api);
    for (long i = 0; i < a->workers; i++) fl_worker_request_stop(workers[i]);
    for (int i = 0; api && fl_api_waiting(api) > 0 && i < 40; i++) usleep(50 * 1000);
    if (api) usleep(100 * 1000); /* their answers leave before the connections close */
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
    start_shutdown_watchdog(a.shutdown_timeout_s);
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
    start_shutdown_watchdog(a.shutdown_timeout_s);
    char addr[4200];
    if (a.redis) snprintf(addr, sizeof addr, "%s", a.redis);
    else private_address(a.state, addr, sizeof addr);
    char state[4096];
    fl_worker_config wc = worker_config_of(&a, addr, state_path(a.state, state, sizeof state));
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
