/*
 * runtime.cu — CUDA device discovery. A machine without a driver makes cudaGetDeviceCount fail;
 * that means "no GPU", never an error.
 */
#include <cuda_runtime.h>

extern "C" int fl_cuda_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error */
        return 0;
    }
    return count;
}
