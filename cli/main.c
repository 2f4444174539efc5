/*
 * main.c — the `flashlora` binary: a table of subcommands and the top-level --help.
 */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "fl_build_config.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
#if FL_HAVE_SERVICE && FL_HAVE_CURL
    {"demo", fl_cmd_demo, "train an adapter on a bundled subject, serve it, and compare with the base model"},
#endif
    {"inspect", fl_cmd_inspect, "list the tensors and metadata of a .safetensors file"},
    {"train", fl_cmd_train, "train a LoRA adapter on an image set (folder, archive or URL)"},
    {"generate", fl_cmd_generate, "generate PNG images from a prompt, with LoRA adapters stacked on the base"},
    {"pretrain", fl_cmd_pretrain, "full-parameter training of a pixel-space model (how the embedded model is made)"},
    {"forward", fl_cmd_forward, "run the Flux transformer once on tensors from a file (parity, debugging)"},
    {"data", fl_cmd_data, "build the embedded model's pretraining set and the demo subjects (Debian clip art)"},
    {"devices", fl_cmd_devices, "list the compiled backends and the usable devices"},
    /* identity evaluation: image encoders */
    {"embed", fl_cmd_embed, "embed a folder of images with an image encoder (DINOv2, CLIP, face, built-in)"},
    /* identity evaluation */
    {"eval", fl_cmd_eval, "identity evaluation of adapters against the base model: JSON and an HTML report"},
    {"pretrain-encoder", fl_cmd_pretrain_encoder, "train the built-in image encoder on the packaged clip art"},
    {"retrieval", fl_cmd_retrieval, "cross-style emoji retrieval of an image encoder beside a colour-histogram baseline"},
#if FL_HAVE_SERVICE
    {"serve", fl_cmd_serve, "run the HTTP API with in-process workers (private Redis unless --redis)"},
    {"worker", fl_cmd_worker, "run training and generation jobs from the shared Redis"},
    {"keys", fl_cmd_keys, "create or revoke API keys of a tenant"},
#endif
};

static void usage(FILE *out) {
    fprintf(out, "flashlora %s — LoRA training and adapter serving for diffusion image models\n\n", FL_VERSION);
    fprintf(out, "usage: flashlora <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'flashlora <command> --help' describes a command.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("flashlora %s\n", FL_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "flashlora: unknown command '%s' (see 'flashlora --help')\n", argv[1]);
    return 2;
}
