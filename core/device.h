/*
 * device.h — choosing where to run: parsing a device name and asking which GPUs exist.
 *
 * "cpu" always works. "cuda" / "cuda:N" need the CUDA backend compiled in (meson found nvcc)
 * and a usable GPU at run time; on a machine without a driver cudaGetDeviceCount fails and that
 * simply means zero GPUs. "auto" picks cuda:0 when one is usable, else the CPU.
 */
#ifndef FL_CORE_DEVICE_H
#define FL_CORE_DEVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "core/tensor.h"

/* True when this binary was built with the CUDA backend. */
bool fl_cuda_compiled(void);

/* Number of usable CUDA devices: 0 when not compiled in, when no driver is loaded, or on error. */
int fl_cuda_device_count(void);

/* One line describing cuda:index ("NVIDIA H200, sm_90, 132 SMs, 139.8 GiB, driver 13.0, runtime
 * 13.0") into buf; returns -1 (buf "") when it does not exist or CUDA is not compiled in. */
int fl_cuda_describe(int index, char *buf, int size);
/* Bytes of cuda:index's memory in use by anyone (total - free) and its total; -1 without it. */
int fl_cuda_memory_used(int index, size_t *used, size_t *total);

/* Parse "cpu", "cuda", "cuda:N" or "auto" into a device that is usable now. */
int fl_device_parse(const char *spec, fl_device *out, fl_error *err);

/* Writes "cpu" or "cuda:N" into buf; returns buf. */
char *fl_device_str(fl_device dev, char *buf, int size);

#endif
