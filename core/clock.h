/*
 * clock.h — the two clocks of the project and a sleep that survives signals.
 *
 * Wall time (fl_now_ms) is for records people read and for ages that outlive a process (job
 * creation, retention); it may jump. Monotonic time (fl_monotonic_ms) is for deadlines, timeouts
 * and rates inside one process; it never goes back.
 */
#ifndef FL_CORE_CLOCK_H
#define FL_CORE_CLOCK_H
#include <stdint.h>

/* Unix time in milliseconds. */
int64_t fl_now_ms(void);
/* Milliseconds since an arbitrary start (CLOCK_MONOTONIC). */
int64_t fl_monotonic_ms(void);
/* The same in seconds, with sub-millisecond resolution (for measuring durations). */
double fl_monotonic_s(void);
/* Sleeps ms milliseconds, resuming after signal interruptions. */
void fl_sleep_ms(int ms);

#endif
