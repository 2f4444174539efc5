/*
 * data.c — `flashlora data`: the builders of the embedded model's data, from Debian packages.
 *
 *   flashlora data pretrain --out DIR [--resolution 64] [--margin 4] [--max-per-dir 60]
 *                           [--heldout-every 50] [--limit N] [--openclipart DIR] [--emoji DIR]
 *       the captioned pretraining set (datasets/clipart.h) from openclipart-png and
 *       ruby-tanuki-emoji, holding out the demo subjects' sources
 *   flashlora data subjects --out DIR [--subject NAME | --distractors] [--count 16] [--size 128]
 *                           [--openclipart DIR]
 *       the bundled demo subjects' image sets (datasets/subjects.h), one folder per subject, or the
 *       distractor subjects identity evaluation uses
 *
 * Errors are one line on stderr and exit status 1 (2 for bad arguments).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "datasets/clipart.h"
#include "datasets/subjects.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora data pretrain --out DIR [options]\n"
            "       flashlora data subjects --out DIR [options]\n\n"
            "pretrain: the embedded model's pretraining set, from the Debian packages openclipart-png\n"
            "(public domain) and ruby-tanuki-emoji (Apache-2.0): each picture trimmed, drawn centred on\n"
            "white, captioned; images/NNNNNN.png, manifest.jsonl and DATASET.json in DIR\n"
            "  --resolution PX      canvas side (default 64)\n"
            "  --margin PX          free border on each side (default 4)\n"
            "  --max-per-dir N      openclipart files kept per directory, evenly spaced (default 60, 0 = all)\n"
            "  --heldout-every N    about one source in N goes to the held-out split (default 50)\n"
            "  --limit N            stop after N images (default: all)\n"
            "  --openclipart DIR    the package's png/ directory (default %s)\n"
            "  --emoji DIR          the tanuki_emoji gem directory (default %s)\n"
            "  (an empty DIR skips that package)\n\n"
            "subjects: the bundled demo subjects (held out of the pretraining set), DIR/<name>/NN.png + .txt\n"
            "  --subject NAME       only this one (mascot, logo or product)\n"
            "  --distractors        the seven distractor subjects identity evaluation tells them apart from\n"
            "  --count N            images per subject (default 16)\n"
            "  --size PX            image side (default 128)\n"
            "  --openclipart DIR    as above\n",
            FL_OPENCLIPART_DIR, FL_TANUKI_EMOJI_GLOB);
}

static int parse_int(const char *flag, const char *text, long lo, long hi, int *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "flashlora data: %s: '%s' is not an integer in [%ld, %ld]\n", flag, text, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static void show_progress(void *arg, size_t done, size_t total) {
    (void)arg;
    if (done % 250 == 0 || done == total) {
        fprintf(stderr, "\r%zu / %zu sources", done, total);
        if (isatty(STDERR_FILENO)) fflush(stderr);
        else fputc('\n', stderr);
    }
}

static int cmd_pretrain(int argc, char **argv) {
    fl_clipart_build_config c = fl_clipart_build_config_default();
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora data: %s needs a value (see --help)\n", f);
            return 2;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(f, "--out")) c.out_dir = v;
        else if (!strcmp(f, "--openclipart")) c.openclipart_dir = v;
        else if (!strcmp(f, "--emoji")) c.emoji_dir = v;
        else if (!strcmp(f, "--resolution")) rc = parse_int(f, v, 8, 1024, &c.resolution);
        else if (!strcmp(f, "--margin")) rc = parse_int(f, v, 0, 500, &c.margin);
        else if (!strcmp(f, "--max-per-dir")) rc = parse_int(f, v, 0, 1000000, &c.max_per_dir);
        else if (!strcmp(f, "--heldout-every")) rc = parse_int(f, v, 0, 1000000, &c.heldout_every);
        else if (!strcmp(f, "--limit")) rc = parse_int(f, v, 0, 10000000, &c.limit);
        else {
            fprintf(stderr, "flashlora data: unknown option %s (see --help)\n", f);
            return 2;
        }
        if (rc != 0) return 2;
    }
    if (!c.out_dir) {
        fprintf(stderr, "flashlora data pretrain: --out is required (see --help)\n");
        return 2;
    }
    const char *held_out[16];
    c.n_exclude = fl_subject_held_out(held_out, 16);
    c.exclude = held_out;
    c.progress = show_progress;
    fl_clipart_build_stats st;
    fl_error err = {0};
    if (fl_clipart_build(&c, &st, &err) != 0) {
        fprintf(stderr, "\nflashlora data pretrain: %s\n", err.message);
        return 1;
    }
    fprintf(stderr,
            "\n%s: %zu images (%zu train, %zu held out; %zu openclipart, %zu emoji), %zu skipped, %zu held out "
            "for the demo subjects\n",
            c.out_dir, st.written, st.train, st.heldout, st.openclipart, st.emoji, st.skipped, st.excluded);
    return 0;
}

static int cmd_subjects(int argc, char **argv) {
    const char *out = NULL, *only = NULL, *clip_dir = FL_OPENCLIPART_DIR;
    int count = 16, size = 128;
    bool distractors = false;
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--distractors")) {
            distractors = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora data: %s needs a value (see --help)\n", f);
            return 2;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(f, "--out")) out = v;
        else if (!strcmp(f, "--subject")) only = v;
        else if (!strcmp(f, "--openclipart")) clip_dir = v;
        else if (!strcmp(f, "--count")) rc = parse_int(f, v, 1, 64, &count);
        else if (!strcmp(f, "--size")) rc = parse_int(f, v, 16, 1024, &size);
        else {
            fprintf(stderr, "flashlora data: unknown option %s (see --help)\n", f);
            return 2;
        }
        if (rc != 0) return 2;
    }
    if (!out) {
        fprintf(stderr, "flashlora data subjects: --out is required (see --help)\n");
        return 2;
    }
    if (only && (distractors || !fl_subject_find(only))) {
        fprintf(stderr, "flashlora data subjects: %s\n",
                distractors ? "--subject and --distractors exclude each other" : "no such subject (mascot, logo, product)");
        return 2;
    }
    size_t n = distractors ? fl_distractor_count() : fl_subject_count();
    for (size_t i = 0; i < n; i++) {
        const fl_subject *s = distractors ? fl_distractor_at(i) : fl_subject_at(i);
        if (only && strcmp(only, s->name)) continue;
        char src[4200], dir[4200];
        snprintf(src, sizeof src, "%s/%s", clip_dir, s->source);
        snprintf(dir, sizeof dir, "%s/%s", out, s->name);
        fl_error err = {0};
        if (fl_subject_build(s, src, dir, count, size, 1000 + i, &err) != 0) {
            fprintf(stderr, "flashlora data subjects: %s: %s\n", s->name, err.message);
            return 1;
        }
        fprintf(stderr, "%s: %d images of %s (trigger \"%s\")\n", dir, count, s->class_words,
                s->trigger ? s->trigger : "none");
    }
    return 0;
}

int fl_cmd_data(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    if (!strcmp(argv[1], "pretrain")) return cmd_pretrain(argc, argv);
    if (!strcmp(argv[1], "subjects")) return cmd_subjects(argc, argv);
    fprintf(stderr, "flashlora data: unknown action '%s' (pretrain or subjects)\n", argv[1]);
    return 2;
}
