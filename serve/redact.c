/*
 * redact.c — the server's paths replaced in client-facing messages (see redact.h). A path runs
 * from a registered root to the next character that cannot be part of a path in our messages:
 * whitespace, a quote, a comma, a parenthesis, or a colon followed by a space ("cannot write
 * /state/images/x.png: No space left on device").
 */
#include "serve/redact.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROOTS 16
#define SHOWN "(a server file)"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char roots[MAX_ROOTS][PATH_MAX];
static size_t n_roots;

static void add_root(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    if (n < 2 || n >= PATH_MAX) return; /* "/" or "." would match everything */
    for (size_t i = 0; i < n_roots; i++)
        if (strlen(roots[i]) == n && !strncmp(roots[i], path, n)) return;
    if (n_roots == MAX_ROOTS) return;
    memcpy(roots[n_roots], path, n);
    roots[n_roots][n] = '\0';
    n_roots++;
}

void fl_redact_register(const char *path) {
    if (!path || !*path) return;
    char real[PATH_MAX];
    pthread_mutex_lock(&lock);
    add_root(path);
    if (realpath(path, real)) add_root(real);
    pthread_mutex_unlock(&lock);
}

static bool path_char(const char *p) {
    char c = *p;
    if (!c || c == ' ' || c == '\t' || c == '\n' || c == '\'' || c == '"' || c == ',' || c == '(' || c == ')')
        return false;
    return !(c == ':' && (p[1] == ' ' || !p[1]));
}

bool fl_redact_paths(char *msg, size_t cap) {
    static const char shown[] = SHOWN;
    const size_t sn = sizeof shown - 1;
    bool changed = false;
    if (!msg || cap <= sn + 1) return false;
    pthread_mutex_lock(&lock);
    for (size_t r = 0; r < n_roots; r++) {
        size_t rn = strlen(roots[r]);
        char *at = msg;
        while ((at = strstr(at, roots[r])) != NULL) {
            /* a root counts where a path can begin, and as whole components ("/state", not "/stat") */
            bool starts = at == msg || strchr(" \t\n'\"(=", at[-1]) != NULL;
            if (!starts || (at[rn] != '/' && path_char(at + rn))) {
                at += rn;
                continue;
            }
            char *end = at + rn;
            while (path_char(end)) end++;
            size_t head = (size_t)(at - msg), tail = strlen(end);
            if (head + sn >= cap) { /* no room even for the replacement: cut the message there */
                *at = '\0';
                changed = true;
                break;
            }
            if (head + sn + tail >= cap) tail = cap - 1 - head - sn;
            memmove(at + sn, end, tail);
            memcpy(at, shown, sn);
            at[sn + tail] = '\0';
            at += sn;
            changed = true;
        }
    }
    pthread_mutex_unlock(&lock);
    return changed;
}
