/*
 * threads.h — CPU parallelism. flashlora uses OpenMP for its own loops and OpenBLAS's threads for
 * GEMM; fl_threads_set keeps both at the same count (FLASHLORA_THREADS or the core count).
 */
#ifndef FL_CORE_THREADS_H
#define FL_CORE_THREADS_H

void fl_threads_set(int count);
int fl_threads_get(void);
/* Reads FLASHLORA_THREADS (if set and valid) and applies it; returns the count in effect. */
int fl_threads_init_from_env(void);

#endif
