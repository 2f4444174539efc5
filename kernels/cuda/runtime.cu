/*
 * runtime.cu — CUDA device discovery and description (core/device.h). A machine without a driver
 * makes cudaGetDeviceCount fail; that means "no GPU", never an error.
 */
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int fl_cuda_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error */
        return 0;
    }
    return count;
}

extern "C" int fl_cuda_describe(int index, char *buf, int size) {
    if (size > 0) buf[0] = '\0';
    cudaDeviceProp p;
    if (index < 0 || index >= fl_cuda_device_count() || cudaGetDeviceProperties(&p, index) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    cudaGetLastError();
    snprintf(buf, (size_t)size, "%s, sm_%d%d, %d SMs, %.1f GiB, %zu KiB shared memory per block (opt-in), L2 %d MiB, "
             "driver %d.%d, runtime %d.%d",
             p.name, p.major, p.minor, p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30),
             p.sharedMemPerBlockOptin / 1024, p.l2CacheSize >> 20, driver / 1000, driver % 1000 / 10, runtime / 1000,
             runtime % 1000 / 10);
    return 0;
}

extern "C" int fl_cuda_memory_used(int index, size_t *used, size_t *total) {
    *used = *total = 0;
    int current = 0;
    if (index < 0 || index >= fl_cuda_device_count() || cudaGetDevice(&current) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    size_t free_bytes = 0, all = 0;
    bool ok = cudaSetDevice(index) == cudaSuccess && cudaMemGetInfo(&free_bytes, &all) == cudaSuccess;
    cudaSetDevice(current);
    cudaGetLastError();
    if (!ok) return -1;
    *used = all - free_bytes;
    *total = all;
    return 0;
}
