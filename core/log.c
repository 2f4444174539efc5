/*
 * log.c — leveled logging to stderr; the level is read once from FLASHLORA_LOG.
 */
#include "core/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t log_mutex = PTHREAD_MUTEX_INITIALIZER;
static int log_level = FL_LOG_INFO;

static void log_init_from_env(void) {
    const char *env = getenv("FLASHLORA_LOG");
    if (!env) return;
    if (!strcmp(env, "error")) log_level = FL_LOG_ERROR;
    else if (!strcmp(env, "warn")) log_level = FL_LOG_WARN;
    else if (!strcmp(env, "info")) log_level = FL_LOG_INFO;
    else if (!strcmp(env, "debug")) log_level = FL_LOG_DEBUG;
}

void fl_log_set_level(fl_log_level level) {
    pthread_once(&log_once, log_init_from_env);
    log_level = level;
}

fl_log_level fl_log_get_level(void) {
    pthread_once(&log_once, log_init_from_env);
    return (fl_log_level)log_level;
}

void fl_log(fl_log_level level, const char *fmt, ...) {
    if ((int)level > (int)fl_log_get_level()) return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_mutex);
    fprintf(stderr, "[%s] %s\n", names[level], line);
    pthread_mutex_unlock(&log_mutex);
}
