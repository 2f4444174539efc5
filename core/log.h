/*
 * log.h — leveled logging to stderr.
 *
 * The level comes from FLASHLORA_LOG (error, warn, info, debug; default info) or fl_log_set_level.
 * Messages are one line each, prefixed with the level; safe to call from several threads.
 */
#ifndef FL_CORE_LOG_H
#define FL_CORE_LOG_H

typedef enum fl_log_level { FL_LOG_ERROR = 0, FL_LOG_WARN, FL_LOG_INFO, FL_LOG_DEBUG } fl_log_level;

void fl_log_set_level(fl_log_level level);
fl_log_level fl_log_get_level(void);
void fl_log(fl_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define fl_log_error(...) fl_log(FL_LOG_ERROR, __VA_ARGS__)
#define fl_log_warn(...) fl_log(FL_LOG_WARN, __VA_ARGS__)
#define fl_log_info(...) fl_log(FL_LOG_INFO, __VA_ARGS__)
#define fl_log_debug(...) fl_log(FL_LOG_DEBUG, __VA_ARGS__)

#endif
