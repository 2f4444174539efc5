/*
 * redact.h — messages leave the service without the server's paths.
 *
 * Errors from deep inside (a file that could not be written, a checkpoint that could not be read)
 * name the path they failed on, which is right for the log and wrong for a client: it tells the
 * layout of the machine. The places where a message leaves for a client (an API error reply, a
 * failed job's stored error) pass it through fl_redact_paths, which replaces every path under a
 * registered root (the state directory, the model, the temporary directory) with "(a server
 * file)"; the original is logged by the caller. Roots are registered once at start.
 */
#ifndef FL_SERVE_REDACT_H
#define FL_SERVE_REDACT_H
#include <stdbool.h>
#include <stddef.h>

/* Registers path (and its resolved absolute form) as a root whose paths are never shown. */
void fl_redact_register(const char *path);
/* Rewrites msg (NUL-terminated, cap bytes) in place; true when something was replaced. */
bool fl_redact_paths(char *msg, size_t cap);

#endif
