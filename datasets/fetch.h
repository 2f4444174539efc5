/*
 * fetch.h — downloading from an http(s) URL given by a client (an image-set archive, an adapter
 * file), bounded every way a hostile server could stretch it.
 *
 * http and https only, for the first request and for redirects (at most 5); a wall-clock timeout
 * and a minimum rate (a transfer slower than 1 KiB/s for 10 s ends);
 * an HTTP status >= 400 is a failure; the body is counted as it arrives and the transfer aborted
 * past max_bytes (a declared Content-Length above it is refused before the body starts). Unless
 * allow_private is set, connections to loopback, private, link-local, CGNAT, multicast and
 * reserved addresses are refused at connect time (redirects and DNS answers included), so a URL
 * cannot reach services inside our network. Messages never repeat the URL, which may carry a
 * signed token.
 */
#ifndef FL_DATASETS_FETCH_H
#define FL_DATASETS_FETCH_H
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

typedef struct fl_fetch_limits {
    size_t max_bytes;       /* body size */
    long timeout_seconds;   /* the whole transfer */
    bool allow_private;     /* allow loopback/private/link-local addresses */
    bool (*progress)(void *arg); /* called about once a second while a transfer runs (may be NULL):
                                  * a job renews its claim there; false stops the transfer, which
                                  * then fails with FL_EUNAVAILABLE */
    void *progress_arg;
} fl_fetch_limits;

/* Downloads url into *data (malloc'ed, *size bytes). A host name that does not resolve and a
 * malformed URL are FL_EINVAL. */
int fl_fetch_url(const char *url, const fl_fetch_limits *limits, unsigned char **data, size_t *size, fl_error *err);
/* The same, writing the body to fd as it arrives (nothing is buffered beyond libcurl's own
 * transfer buffer); *size gets the bytes written. */
int fl_fetch_url_to_fd(const char *url, const fl_fetch_limits *limits, int fd, size_t *size, fl_error *err);
/* What can be known of url before fetching it, without a network access: well-formed, http or
 * https, a host; unless allow_private, a host that is an address literal of an internal network
 * (or "localhost") is refused. FL_EINVAL with the reason (never repeating the URL). */
int fl_fetch_check_url(const char *url, bool allow_private, fl_error *err);

#endif
