/*
 * device.c — device names and run-time GPU availability (see device.h).
 * fl_cuda_device_count comes from kernels/cuda when the CUDA backend is compiled, and from the
 * stub at the end of this file otherwise.
 */
#include "core/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_build_config.h"

bool fl_cuda_compiled(void) {
#ifdef FL_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

#ifndef FL_HAVE_CUDA
int fl_cuda_device_count(void) {
    return 0;
}

int fl_cuda_describe(int index, char *buf, int size) {
    (void)index;
    if (size > 0) buf[0] = '\0';
    return -1;
}

int fl_cuda_memory_used(int index, size_t *used, size_t *total) {
    (void)index;
    *used = *total = 0;
    return -1;
}
#endif

int fl_device_parse(const char *spec, fl_device *out, fl_error *err) {
    if (!spec || !*spec || !strcmp(spec, "auto")) {
        if (fl_cuda_device_count() > 0) {
            out->kind = FL_DEVICE_CUDA;
            out->index = 0;
        } else {
            *out = fl_device_cpu();
        }
        return 0;
    }
    if (!strcmp(spec, "cpu")) {
        *out = fl_device_cpu();
        return 0;
    }
    if (!strncmp(spec, "cuda", 4) && (spec[4] == '\0' || spec[4] == ':')) {
        long index = 0;
        if (spec[4] == ':') {
            char *end = NULL;
            index = strtol(spec + 5, &end, 10);
            if (end == spec + 5 || *end != '\0' || index < 0 || index > 1023)
                return fl_fail(err, FL_EINVAL, "bad device '%s': expected cuda:N", spec);
        }
        if (!fl_cuda_compiled())
            return fl_fail(err, FL_EUNSUPPORTED,
                           "device '%s': this build has no CUDA backend (nvcc was not found at configure time)",
                           spec);
        int count = fl_cuda_device_count();
        if (index >= count)
            return fl_fail(err, FL_ENOTFOUND, "device '%s': %d usable CUDA device(s) on this machine", spec,
                           count);
        out->kind = FL_DEVICE_CUDA;
        out->index = (int)index;
        return 0;
    }
    return fl_fail(err, FL_EINVAL, "unknown device '%s' (expected cpu, cuda, cuda:N or auto)", spec);
}

char *fl_device_str(fl_device dev, char *buf, int size) {
    if (dev.kind == FL_DEVICE_CPU) snprintf(buf, (size_t)size, "cpu");
    else snprintf(buf, (size_t)size, "cuda:%d", dev.index);
    return buf;
}
