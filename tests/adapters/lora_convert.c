/*
 * lora_convert.c — test helper: reads a LoRA file in any layout flashlora knows and writes it in
 * another, so scripts can check the files against other tools' semantics.
 *   lora_convert IN canonical|kohya|peft OUT
 * Prints the number of pairs and of unmatched keys; exits 1 on any error.
 */
#include <stdio.h>

#include "adapters/lora.h"
#include "adapters/lora_formats.h"

int main(int argc, char **argv) {
    fl_lora_layout layout;
    if (argc != 4 || fl_lora_layout_from_name(argv[2], &layout) != 0) {
        fprintf(stderr, "usage: lora_convert IN canonical|kohya|peft OUT\n");
        return 2;
    }
    fl_error err = {0};
    fl_lora *lora = NULL;
    if (fl_lora_load(argv[1], NULL, 0, &lora, &err) != 0 || fl_lora_save(lora, layout, argv[3], NULL, 0, &err) != 0) {
        fprintf(stderr, "lora_convert: %s\n", err.message);
        fl_lora_free(lora);
        return 1;
    }
    printf("%s: %zu pairs, %zu unmatched keys\n", lora->format, lora->n_pairs, lora->n_unmatched);
    fl_lora_free(lora);
    return 0;
}
