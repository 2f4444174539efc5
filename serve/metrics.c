/*
 * metrics.c — counters and fixed-bucket histograms behind one mutex (see metrics.h).
 */
#include "serve/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define N_BUCKETS 14
static const double bucket_bounds[N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,  0.5,    1,     2.5,  5,     10,  60};
#define MAX_SERIES 512 /* routes x statuses: every label set the API can produce fits */

typedef struct histogram {
    char labels[128]; /* rendered label set, e.g. route="GET /healthz" */
    unsigned long long buckets[N_BUCKETS];
    unsigned long long count;
    double sum;
} histogram;

typedef struct counter {
    char labels[128];
    unsigned long long value;
} counter;

struct fl_metrics {
    pthread_mutex_t lock;
    histogram http[MAX_SERIES];
    int n_http;
    counter http_status[MAX_SERIES];
    int n_status;
    histogram jobs[2];
    histogram batch_seconds;
    unsigned long long batch_items, batches;
};

fl_metrics *fl_metrics_create(void) {
    fl_metrics *m = fl_xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->lock, NULL);
    snprintf(m->jobs[0].labels, sizeof m->jobs[0].labels, "kind=\"train\"");
    snprintf(m->jobs[1].labels, sizeof m->jobs[1].labels, "kind=\"generate\"");
    return m;
}

void fl_metrics_free(fl_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static void observe(histogram *h, double seconds) {
    for (int i = 0; i < N_BUCKETS; i++)
        if (seconds <= bucket_bounds[i]) h->buckets[i]++;
    h->count++;
    h->sum += seconds;
}

void fl_metrics_observe_http(fl_metrics *m, const char *route, int status, double seconds) {
    char labels[128], status_labels[128];
    snprintf(labels, sizeof labels, "route=\"%s\"", route);
    snprintf(status_labels, sizeof status_labels, "route=\"%s\",status=\"%d\"", route, status);
    pthread_mutex_lock(&m->lock);
    histogram *h = NULL;
    for (int i = 0; i < m->n_http && !h; i++)
        if (!strcmp(m->http[i].labels, labels)) h = &m->http[i];
    if (!h && m->n_http < MAX_SERIES) {
        h = &m->http[m->n_http++];
        snprintf(h->labels, sizeof h->labels, "%s", labels);
    }
    if (h) observe(h, seconds);
    counter *c = NULL;
    for (int i = 0; i < m->n_status && !c; i++)
        if (!strcmp(m->http_status[i].labels, status_labels)) c = &m->http_status[i];
    if (!c && m->n_status < MAX_SERIES) {
        c = &m->http_status[m->n_status++];
        snprintf(c->labels, sizeof c->labels, "%s", status_labels);
    }
    if (c) c->value++;
    pthread_mutex_unlock(&m->lock);
}

void fl_metrics_observe_job(fl_metrics *m, const char *kind, double seconds) {
    pthread_mutex_lock(&m->lock);
    observe(&m->jobs[strcmp(kind, "train") == 0 ? 0 : 1], seconds);
    pthread_mutex_unlock(&m->lock);
}

void fl_metrics_observe_batch(fl_metrics *m, int size, double seconds) {
    pthread_mutex_lock(&m->lock);
    observe(&m->batch_seconds, seconds);
    m->batch_items += (unsigned long long)size;
    m->batches++;
    pthread_mutex_unlock(&m->lock);
}

void fl_metrics_appendf(char **text, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*text ? *text + *len : NULL, *text ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        FL_CHECK(n >= 0);
        if (*text && *len + (size_t)n < *cap) {
            *len += (size_t)n;
            return;
        }
        *cap = (*cap + (size_t)n + 1) * 2;
        *text = fl_xrealloc(*text, *cap);
    }
}

static void render_histogram(char **t, size_t *len, size_t *cap, const char *name, const histogram *h) {
    const char *sep = h->labels[0] ? "," : "";
    for (int i = 0; i < N_BUCKETS; i++)
        fl_metrics_appendf(t, len, cap, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, h->labels, sep, bucket_bounds[i],
                           h->buckets[i]);
    fl_metrics_appendf(t, len, cap, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, h->labels, sep, h->count);
    char labels[140] = "";
    if (h->labels[0]) snprintf(labels, sizeof labels, "{%s}", h->labels);
    fl_metrics_appendf(t, len, cap, "%s_sum%s %.6f\n%s_count%s %llu\n", name, labels, h->sum, name, labels, h->count);
}

void fl_metrics_render(fl_metrics *m, char **t, size_t *len, size_t *cap) {
    pthread_mutex_lock(&m->lock);
    fl_metrics_appendf(t, len, cap,
                       "# HELP flashlora_http_request_duration_seconds Time from request to response, by route.\n"
                       "# TYPE flashlora_http_request_duration_seconds histogram\n");
    for (int i = 0; i < m->n_http; i++) render_histogram(t, len, cap, "flashlora_http_request_duration_seconds", &m->http[i]);
    fl_metrics_appendf(t, len, cap,
                       "# HELP flashlora_http_requests_total Requests answered, by route and status.\n"
                       "# TYPE flashlora_http_requests_total counter\n");
    for (int i = 0; i < m->n_status; i++)
        fl_metrics_appendf(t, len, cap, "flashlora_http_requests_total{%s} %llu\n", m->http_status[i].labels,
                           m->http_status[i].value);
    fl_metrics_appendf(t, len, cap,
                       "# HELP flashlora_job_duration_seconds Time from acceptance to result of jobs finished by "
                       "this process's workers.\n# TYPE flashlora_job_duration_seconds histogram\n");
    for (int i = 0; i < 2; i++) render_histogram(t, len, cap, "flashlora_job_duration_seconds", &m->jobs[i]);
    fl_metrics_appendf(t, len, cap,
                       "# HELP flashlora_batch_duration_seconds Sampling time of generation batches.\n"
                       "# TYPE flashlora_batch_duration_seconds histogram\n");
    render_histogram(t, len, cap, "flashlora_batch_duration_seconds", &m->batch_seconds);
    fl_metrics_appendf(t, len, cap,
                       "# HELP flashlora_batch_images_total Images generated in batches.\n"
                       "# TYPE flashlora_batch_images_total counter\nflashlora_batch_images_total %llu\n"
                       "# HELP flashlora_batches_total Generation batches run.\n"
                       "# TYPE flashlora_batches_total counter\nflashlora_batches_total %llu\n",
                       m->batch_items, m->batches);
    pthread_mutex_unlock(&m->lock);
}
