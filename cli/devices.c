/*
 * devices.c — `flashlora devices`: which backends this build has and which devices are usable.
 */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "core/device.h"
#include "core/threads.h"

int fl_cmd_devices(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: flashlora devices\n\nPrints the compiled backends and the devices usable now.\n");
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "flashlora devices: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    printf("cpu      fp32 reference backend, %d threads\n", fl_threads_init_from_env());
    if (!fl_cuda_compiled()) {
        printf("cuda     not compiled (nvcc was not found when this build was configured)\n");
        return 0;
    }
    int count = fl_cuda_device_count();
    if (count == 0) printf("cuda     compiled; no usable GPU on this machine\n");
    for (int i = 0; i < count; i++) printf("cuda:%d   usable\n", i);
    return 0;
}
