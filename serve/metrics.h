/*
 * metrics.h — in-process counters and latency histograms, rendered in the Prometheus text format
 * for GET /metrics together with the figures the API reads from Redis (queue depth, jobs by
 * state, workers' adapter caches). Thread-safe.
 */
#ifndef FL_SERVE_METRICS_H
#define FL_SERVE_METRICS_H
#include <stddef.h>

typedef struct fl_metrics fl_metrics;

fl_metrics *fl_metrics_create(void);
void fl_metrics_free(fl_metrics *m);

/* One HTTP request: route is a fixed label ("POST /v1/generations"), not the raw path. */
void fl_metrics_observe_http(fl_metrics *m, const char *route, int status, double seconds);
/* One finished job: kind "train" or "generate", seconds from acceptance to result. */
void fl_metrics_observe_job(fl_metrics *m, const char *kind, double seconds);
/* One generation batch of the in-process workers: its size and its sampling time. */
void fl_metrics_observe_batch(fl_metrics *m, int size, double seconds);

/* Appends the text of every metric to a malloc'ed buffer *text (of length *len), growing it. */
void fl_metrics_render(fl_metrics *m, char **text, size_t *len, size_t *cap);
/* printf into such a buffer. */
void fl_metrics_appendf(char **text, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
