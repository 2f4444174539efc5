/*
 * console.c — serves the web console's files (console.h) from the table that
 * serve/console/embed.py generates at build time, with the headers that keep the page to itself:
 * a Content-Security-Policy of this origin only, nosniff, no framing, no referrer.
 */
#include "serve/console.h"

#include <string.h>

/* The generated table (console_files.c), ended by an entry with a NULL path. */
extern const fl_console_file fl_console_files[];

/* Scripts, styles and connections of this origin only; images also from blob: and data: URLs
 * (the thumbnails of the files a user drops, and generated images received as base64). */
#define CONSOLE_CSP                                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src "   \
    "'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

const fl_console_file *fl_console_find(const char *path) {
    for (const fl_console_file *f = fl_console_files; f->path; f++)
        if (!strcmp(f->path, path)) return f;
    return NULL;
}

bool fl_console_path(const char *path) {
    return !strcmp(path, "/") || !strncmp(path, "/console/", 9);
}

void fl_console_reply(const char *path, fl_http_response *res) {
    const fl_console_file *f = fl_console_find(path);
    if (!f) {
        fl_http_reply_error(res, 404, "not_found", "no console file %.200s", path);
        return;
    }
    fl_http_reply_bytes(res, 200, f->content_type, f->data, f->size);
    fl_http_add_header(res, "Content-Security-Policy", CONSOLE_CSP);
    fl_http_add_header(res, "X-Content-Type-Options", "nosniff");
    fl_http_add_header(res, "X-Frame-Options", "DENY");
    fl_http_add_header(res, "Referrer-Policy", "no-referrer");
    fl_http_add_header(res, "Cache-Control", "no-cache");
}
