/*
 * console.h — the web console of `flashlora serve`: one page (serve/console/index.html at "/")
 * and its script, style sheet and icon ("/console/<name>"), compiled into the binary at build
 * time (serve/console/embed.py), served without a key. The page talks to the /v1 API of the same
 * origin with the key its user enters. Every answer carries a Content-Security-Policy that allows
 * only this origin's scripts and styles (no inline script, no third party), nosniff, and no
 * framing.
 */
#ifndef FL_SERVE_CONSOLE_H
#define FL_SERVE_CONSOLE_H
#include <stdbool.h>
#include <stddef.h>

#include "serve/http.h"

typedef struct fl_console_file {
    const char *path;         /* the URL path: "/", "/console/app.js" */
    const char *content_type; /* "text/html; charset=utf-8", ... */
    const unsigned char *data;
    size_t size;
} fl_console_file;

/* The file served at path, or NULL. */
const fl_console_file *fl_console_find(const char *path);
/* True for the paths the console owns: "/" and "/console/..." (whether or not a file is there). */
bool fl_console_path(const char *path);
/* Answers a GET of path: the file with its headers, or a 404. */
void fl_console_reply(const char *path, fl_http_response *res);

#endif
