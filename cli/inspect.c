/* inspect.c — placeholder until the safetensors reader lands. */
#include <stdio.h>
#include "cli/commands.h"
int fl_cmd_inspect(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flashlora inspect: not built yet\n");
    return 1;
}
