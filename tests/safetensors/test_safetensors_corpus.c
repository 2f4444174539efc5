/*
 * test_safetensors_corpus.c — opens every file of the committed fuzz corpus
 * (tests/fuzz/corpus/safetensors) through the file path, as `flashlora inspect` does, and checks
 * the outcome listed in its EXPECTED.txt: "(valid)" files must open, every other file must be
 * rejected with a one-line reason containing the listed fragment. Every corpus file must have an
 * entry, so an input added by hand (a fuzzer find) cannot go unchecked.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "harness.h"

#define MAX_ENTRIES 512

typedef struct expectation {
    char name[256];
    char fragment[512];
    bool seen;
} expectation;

static expectation entries[MAX_ENTRIES];
static size_t n_entries;
static char corpus_dir[1024];

static void load_expected(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/EXPECTED.txt", corpus_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fl_test_fail_at(__FILE__, __LINE__, "cannot open %s", path);
        return;
    }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0') continue;
        char *tab = strchr(line, '\t');
        if (!tab || n_entries == MAX_ENTRIES) {
            fl_test_fail_at(__FILE__, __LINE__, "EXPECTED.txt: bad line '%s'", line);
            continue;
        }
        *tab = '\0';
        size_t name_len = strlen(line), fragment_len = strlen(tab + 1);
        if (name_len >= sizeof entries[0].name || fragment_len >= sizeof entries[0].fragment) {
            fl_test_fail_at(__FILE__, __LINE__, "EXPECTED.txt: entry for '%.64s' too long", line);
            continue;
        }
        expectation *e = &entries[n_entries++];
        memcpy(e->name, line, name_len + 1);
        memcpy(e->fragment, tab + 1, fragment_len + 1);
    }
    fclose(f);
    FL_EXPECTF(n_entries >= 25, "only %zu entries in EXPECTED.txt", n_entries);
}

static void check_file(const expectation *e) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", corpus_dir, e->name);
    fl_error err;
    fl_error_clear(&err);
    fl_safetensors *f = NULL;
    int rc = fl_safetensors_open(path, &f, &err);
    if (!strcmp(e->fragment, "(valid)")) {
        FL_EXPECTF(rc == 0, "%s: expected to open, got '%s'", e->name, err.message);
        if (rc == 0) {
            for (size_t i = 0; i < fl_safetensors_count(f); i++)
                FL_EXPECT(fl_safetensors_find(f, fl_safetensors_at(f, i)->name) == fl_safetensors_at(f, i));
        }
        fl_safetensors_close(f);
        return;
    }
    if (rc == 0) {
        fl_test_fail_at(__FILE__, __LINE__, "%s: opened; expected '%s'", e->name, e->fragment);
        fl_safetensors_close(f);
        return;
    }
    FL_EXPECTF(strstr(err.message, e->fragment), "%s: reason '%s' lacks '%s'", e->name, err.message, e->fragment);
    FL_EXPECTF(!strchr(err.message, '\n'), "%s: reason spans lines", e->name);
    FL_EXPECTF(err.code != FL_OK, "%s: no error code", e->name);
}

static void test_corpus_expectations(void) {
    load_expected();
    size_t valid = 0;
    for (size_t i = 0; i < n_entries; i++) {
        check_file(&entries[i]);
        if (!strcmp(entries[i].fragment, "(valid)")) valid++;
    }
    FL_EXPECTF(valid >= 3 && valid < n_entries, "%zu valid of %zu files", valid, n_entries);
}

static void test_every_file_listed(void) {
    DIR *d = opendir(corpus_dir);
    if (!d) {
        fl_test_fail_at(__FILE__, __LINE__, "cannot open %s", corpus_dir);
        return;
    }
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "EXPECTED.txt")) continue;
        bool found = false;
        for (size_t i = 0; i < n_entries; i++) {
            if (!strcmp(entries[i].name, de->d_name)) {
                FL_EXPECTF(!entries[i].seen, "%s listed twice", de->d_name);
                entries[i].seen = found = true;
            }
        }
        FL_EXPECTF(found, "%s is not listed in EXPECTED.txt", de->d_name);
    }
    closedir(d);
    for (size_t i = 0; i < n_entries; i++) FL_EXPECTF(entries[i].seen, "%s listed but missing", entries[i].name);
}

int main(void) {
    fl_test_data_path("fuzz/corpus/safetensors", corpus_dir, sizeof corpus_dir);
    FL_RUN(test_corpus_expectations);
    FL_RUN(test_every_file_listed);
    return fl_test_finish();
}
