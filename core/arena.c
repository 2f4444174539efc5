/*
 * arena.c — bump allocation with a measuring mode (see arena.h).
 */
#include "core/arena.h"

#include <stdint.h>
#include <string.h>

#include "core/error.h"

/* Placeholder addresses handed out while measuring start here, so they are never NULL. */
#define FL_ARENA_MEASURE_BASE ((uintptr_t)1 << 20)

void fl_arena_init_measure(fl_arena *arena, fl_device device) {
    memset(arena, 0, sizeof *arena);
    arena->capacity = SIZE_MAX;
    arena->device = device;
}

void fl_arena_init(fl_arena *arena, void *base, size_t capacity, fl_device device) {
    FL_CHECK(base != NULL || capacity == 0);
    memset(arena, 0, sizeof *arena);
    arena->base = base;
    arena->capacity = capacity;
    arena->device = device;
}

int fl_arena_is_measuring(const fl_arena *arena) {
    return arena->base == NULL && arena->capacity == SIZE_MAX;
}

void *fl_arena_alloc(fl_arena *arena, size_t bytes) {
    size_t start = (arena->offset + FL_ARENA_ALIGN - 1) & ~(size_t)(FL_ARENA_ALIGN - 1);
    FL_CHECKF(bytes <= SIZE_MAX - start, "arena allocation overflows");
    size_t end = start + bytes;
    FL_CHECKF(end <= arena->capacity, "arena exhausted: need %zu bytes, planned %zu", end, arena->capacity);
    arena->offset = end;
    if (end > arena->peak) arena->peak = end;
    if (fl_arena_is_measuring(arena)) return (void *)(FL_ARENA_MEASURE_BASE + start);
    return arena->base + start;
}

fl_tensor fl_arena_tensor(fl_arena *arena, fl_dtype dtype, int ndim, const int64_t *shape) {
    fl_tensor t = fl_tensor_make(NULL, dtype, arena->device, ndim, shape);
    t.data = fl_arena_alloc(arena, fl_tensor_nbytes(&t));
    return t;
}

size_t fl_arena_mark(const fl_arena *arena) {
    return arena->offset;
}

void fl_arena_reset(fl_arena *arena, size_t mark) {
    FL_CHECK(mark <= arena->offset);
    arena->offset = mark;
}

size_t fl_arena_peak(const fl_arena *arena) {
    return arena->peak;
}
