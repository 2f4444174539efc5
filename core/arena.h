/*
 * arena.h — a bump allocator for activations, planned once per shape.
 *
 * Use it in two passes: first in measuring mode (fl_arena_init_measure), run the same sequence
 * of allocations the real pass will make (a model does this with its context in planning mode,
 * where ops check shapes but compute nothing) and read fl_arena_peak(); then allocate that many
 * bytes once on the device and fl_arena_init() over them. Allocations are 256-byte aligned (what
 * vectorized CPU loops and CUDA kernels want). Running past the planned capacity is a broken
 * invariant and aborts. mark/reset frees everything allocated after a mark, for scratch space.
 */
#ifndef FL_CORE_ARENA_H
#define FL_CORE_ARENA_H

#include <stddef.h>

#include "core/tensor.h"

#define FL_ARENA_ALIGN 256

typedef struct fl_arena {
    char *base;      /* NULL while measuring */
    size_t capacity; /* bytes; unbounded while measuring */
    size_t offset;   /* bytes in use */
    size_t peak;     /* highest offset seen */
    fl_device device;
} fl_arena;

void fl_arena_init_measure(fl_arena *arena, fl_device device);
void fl_arena_init(fl_arena *arena, void *base, size_t capacity, fl_device device);
int fl_arena_is_measuring(const fl_arena *arena);

/* Returns aligned memory (a placeholder address while measuring: never dereference it then). */
void *fl_arena_alloc(fl_arena *arena, size_t bytes);
/* A contiguous tensor of the arena's device. */
fl_tensor fl_arena_tensor(fl_arena *arena, fl_dtype dtype, int ndim, const int64_t *shape);

size_t fl_arena_mark(const fl_arena *arena);
void fl_arena_reset(fl_arena *arena, size_t mark);
size_t fl_arena_peak(const fl_arena *arena);

#endif
