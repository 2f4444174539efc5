/*
 * threads.c — one knob for OpenMP and OpenBLAS thread counts.
 */
#include "core/threads.h"

#include <stdlib.h>

#include "fl_build_config.h"

#ifdef FL_HAVE_OPENMP
#include <omp.h>
#endif

#ifdef FL_HAVE_OPENBLAS
void openblas_set_num_threads(int num_threads);
#endif

static int thread_count = 0;

void fl_threads_set(int count) {
    if (count < 1) count = 1;
    thread_count = count;
#ifdef FL_HAVE_OPENMP
    omp_set_num_threads(count);
#endif
#ifdef FL_HAVE_OPENBLAS
    openblas_set_num_threads(count);
#endif
}

int fl_threads_get(void) {
    if (thread_count > 0) return thread_count;
#ifdef FL_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int fl_threads_init_from_env(void) {
    const char *env = getenv("FLASHLORA_THREADS");
    if (env) {
        char *end = NULL;
        long n = strtol(env, &end, 10);
        if (end != env && *end == '\0' && n >= 1 && n <= 4096) fl_threads_set((int)n);
    }
    return fl_threads_get();
}
