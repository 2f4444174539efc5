/*
 * fuzz_replay.c — runs LLVMFuzzerTestOneInput over every regular file in the directories given
 * on the command line, so a fuzz corpus replays as an ordinary test under any compiler and
 * sanitizer. Files run in name order; each one processed without crashing counts as passed, one
 * that cannot be read counts as failed. Prints "N passed, N failed"; exits 1 on any failure.
 * Arguments starting with '-' (libFuzzer flags) are ignored, so it takes a fuzzer's command line.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads path into a fresh malloc'ed buffer (never NULL on success, even for an empty file). */
static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, used = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + used, 1, cap - used, f);
        used += got;
        if (used < cap) break;
        uint8_t *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *size = used;
    return buf;
}

static void replay_dir(const char *dir, int *passed, int *failed) {
    DIR *d = opendir(dir);
    if (!d) {
        printf("FAIL %s: cannot open directory: %s\n", dir, strerror(errno));
        (*failed)++;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        names[n] = strdup(e->d_name);
        if (names[n]) n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(dir) + strlen(names[i]) + 2;
        char *path = malloc(len);
        struct stat st;
        if (path) snprintf(path, len, "%s/%s", dir, names[i]);
        if (path && stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
            free(path);
            free(names[i]);
            continue;
        }
        size_t size = 0;
        uint8_t *data = path ? read_file(path, &size) : NULL;
        if (!data) {
            printf("FAIL %s: cannot read\n", path ? path : names[i]);
            (*failed)++;
        } else {
            printf("%s (%zu bytes) ", names[i], size);
            fflush(stdout); /* the file name is on record if the input crashes */
            LLVMFuzzerTestOneInput(data, size);
            printf("ok\n");
            (*passed)++;
        }
        free(data);
        free(path);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR...\n", argv[0]);
        return 2;
    }
    int passed = 0, failed = 0, dirs = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-') continue;
        replay_dir(argv[i], &passed, &failed);
        dirs++;
    }
    if (dirs == 0) {
        fprintf(stderr, "usage: %s CORPUS_DIR...\n", argv[0]);
        return 2;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
