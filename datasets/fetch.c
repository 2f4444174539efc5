/*
 * fetch.c — bounded downloads from client-given http(s) URLs with libcurl (see fetch.h): limits on
 * bytes, time, protocols and redirects, and no connections to internal addresses.
 */
#include "datasets/fetch.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/utf8.h"
#include "datasets/imageset_internal.h" /* fl_ds_format_bytes */
#include "fl_build_config.h"

#if defined(FL_HAVE_CURL)

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct download {
    unsigned char *data;
    size_t size, cap, max;
    int fd; /* >= 0: the body goes to this file instead of memory */
    int write_errno;
    bool too_large, no_memory, write_failed, blocked, allow_private, stopped;
    const fl_fetch_limits *limits;
    time_t last_progress;
} download;

static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    download *d = user;
    time_t now = time(NULL);
    if (now != d->last_progress) {
        d->last_progress = now;
        if (!d->limits->progress(d->limits->progress_arg)) {
            d->stopped = true;
            return 1; /* non-zero aborts the transfer */
        }
    }
    return 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *user) {
    download *d = user;
    size_t n = size * nmemb;
    if (n > d->max - d->size) {
        d->too_large = true;
        return 0; /* anything but n aborts the transfer */
    }
    if (d->fd >= 0) {
        for (size_t done = 0; done < n;) {
            ssize_t w = write(d->fd, ptr + done, n - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                d->write_failed = true;
                d->write_errno = w < 0 ? errno : ENOSPC;
                return 0;
            }
            done += (size_t)w;
        }
        d->size += n;
        return n;
    }
    if (d->size + n > d->cap) {
        size_t grown = d->cap ? d->cap : 1 << 16;
        while (grown < d->size + n) grown = grown > d->max / 2 ? d->max : grown * 2;
        unsigned char *p = realloc(d->data, grown);
        if (!p) {
            d->no_memory = true;
            return 0;
        }
        d->data = p;
        d->cap = grown;
    }
    memcpy(d->data + d->size, ptr, n);
    d->size += n;
    return n;
}

static bool ipv4_internal(uint32_t a) {
    uint32_t b0 = a >> 24, b1 = (a >> 16) & 0xff;
    return b0 == 0 || b0 == 10 || b0 == 127 || b0 >= 224 ||  /* this-net, private, loopback, multicast, reserved */
           (b0 == 100 && (b1 & 0xc0) == 64) ||               /* 100.64/10 carrier-grade NAT */
           (b0 == 169 && b1 == 254) ||                       /* link-local, cloud metadata */
           (b0 == 172 && (b1 & 0xf0) == 16) ||               /* 172.16/12 */
           (b0 == 192 && b1 == 168) ||                       /* 192.168/16 */
           (b0 == 192 && b1 == 0 && ((a >> 8) & 0xff) == 0) || /* 192.0.0/24 protocol assignments */
           (b0 == 198 && (b1 & 0xfe) == 18);                 /* 198.18/15 benchmarking */
}

static bool ipv6_internal(const unsigned char *b) {
    static const unsigned char zero12[12] = {0};
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    if (memcmp(b, zero12, 12) == 0 || memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0) {
        uint32_t v4 = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15];
        return ipv4_internal(v4); /* ::, ::1, and IPv4 embedded in IPv6 */
    }
    return (b[0] & 0xfe) == 0xfc ||               /* fc00::/7 unique local */
           (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) || /* fe80::/10 link-local */
           (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) || /* fec0::/10 site-local (deprecated) */
           b[0] == 0xff;                          /* multicast */
}

static curl_socket_t open_socket(void *user, curlsocktype purpose, struct curl_sockaddr *address) {
    download *d = user;
    if (!d->allow_private) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof ss);
        size_t len = address->addrlen < sizeof ss ? address->addrlen : sizeof ss;
        memcpy(&ss, &address->addr, len);
        bool internal = true; /* unknown families are refused too */
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
            internal = ipv4_internal(ntohl(in->sin_addr.s_addr));
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
            internal = ipv6_internal(in6->sin6_addr.s6_addr);
        }
        if (internal) {
            d->blocked = true;
            return CURL_SOCKET_BAD;
        }
    }
    return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

static bool url_acceptable(const char *url) {
    size_t len = strlen(url);
    if (len == 0 || len > 4096) return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f) return false;
    return strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0;
}

/* host is an address literal (v4, or v6 with or without brackets) of an internal network, or a
 * name that always means this machine. */
static bool host_internal(const char *host) {
    char buf[256];
    size_t n = strlen(host);
    if (n >= sizeof buf) return false;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
    } else {
        memcpy(buf, host, n + 1);
    }
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, buf, &a4) == 1) return ipv4_internal(ntohl(a4.s_addr));
    if (inet_pton(AF_INET6, buf, &a6) == 1) return ipv6_internal(a6.s6_addr);
    size_t len = strlen(buf);
    while (len && buf[len - 1] == '.') buf[--len] = '\0'; /* "localhost." */
    return !strcasecmp(buf, "localhost") || (len > 10 && !strcasecmp(buf + len - 10, ".localhost"));
}

int fl_fetch_check_url(const char *url, bool allow_private, fl_error *err) {
    if (!url_acceptable(url))
        return fl_fail(err, FL_EINVAL, "not a well-formed http:// or https:// URL");
    pthread_once(&curl_once, curl_init_once);
    CURLU *u = curl_url();
    if (!u) return fl_fail(err, FL_ENOMEM, "out of memory parsing a URL");
    char *scheme = NULL, *host = NULL;
    int rc = 0;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK || curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !*host)
        rc = fl_fail(err, FL_EINVAL, "not a well-formed http:// or https:// URL");
    else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        rc = fl_fail(err, FL_EINVAL, "only http:// and https:// URLs are fetched");
    else if (!allow_private && host_internal(host))
        rc = fl_fail(err, FL_EINVAL, "the host is a loopback, private or link-local address");
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return rc;
}

/* The host of a URL (for messages: what could not be reached), "" when it has none. */
static void url_host(const char *url, char *out, size_t cap) {
    out[0] = '\0';
    CURLU *u = curl_url();
    char *host = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK && curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        host)
        fl_utf8_display(host, 200, out, cap);
    curl_free(host);
    curl_url_cleanup(u);
}

static int fetch(const char *url, const fl_fetch_limits *limits, int fd, unsigned char **data, size_t *size,
                 fl_error *err) {
    if (!url_acceptable(url))
        return fl_fail(err, FL_EINVAL, "download refused: not a well-formed http:// or https:// URL");
    pthread_once(&curl_once, curl_init_once);
    CURL *h = curl_easy_init();
    if (!h) return fl_fail(err, FL_ENOMEM, "download failed: cannot create a transfer");

    download d = {.max = limits->max_bytes, .fd = fd, .allow_private = limits->allow_private, .limits = limits};
    char errbuf[CURL_ERROR_SIZE] = "";
    long timeout = limits->timeout_seconds;
    curl_easy_setopt(h, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, timeout < 20 ? timeout : 20L);
    /* a server that trickles holds a worker for the whole timeout: below 1 KiB/s for 10 s it ends */
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 10L);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)limits->max_bytes);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, &d);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "flashlora/" FL_VERSION);
    if (limits->progress) {
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &d);
    }

    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);

    char lim[32], host[256];
    url_host(url, host, sizeof host);
    int result = 0;
    if (d.blocked)
        result = fl_fail(err, FL_EINVAL, "download refused: the host is a loopback, private or link-local address");
    else if (d.stopped)
        result = fl_fail(err, FL_EUNAVAILABLE, "download stopped");
    else if (d.too_large || rc == CURLE_FILESIZE_EXCEEDED)
        result = fl_fail(err, FL_ELIMIT, "download is larger than the %s limit",
                         fl_ds_format_bytes(limits->max_bytes, lim, sizeof lim));
    else if (d.no_memory)
        result = fl_fail(err, FL_ENOMEM, "download failed: not enough memory");
    else if (d.write_failed)
        result = fl_fail(err, FL_EIO, "download failed: the file could not be written (%s)", strerror(d.write_errno));
    else if (rc == CURLE_COULDNT_RESOLVE_HOST)
        result = fl_fail(err, FL_EUNREACHABLE, "download failed: the host '%s' does not resolve", host);
    else if (rc == CURLE_COULDNT_CONNECT)
        result = fl_fail(err, FL_EUNREACHABLE, "download failed: the host '%s' cannot be reached (%s)", host,
                         errbuf[0] ? "no connection" : curl_easy_strerror(rc));
    else if (rc == CURLE_OPERATION_TIMEDOUT && status == 0)
        result = fl_fail(err, FL_EUNREACHABLE, "download failed: the host '%s' did not answer within %ld s", host, timeout);
    else if (rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION)
        result = fl_fail(err, FL_EUNREACHABLE, "download failed: no secure connection to the host '%s' (%s)", host,
                         curl_easy_strerror(rc));
    else if (rc == CURLE_URL_MALFORMAT)
        result = fl_fail(err, FL_EINVAL, "download refused: not a well-formed http:// or https:// URL");
    else if (rc == CURLE_HTTP_RETURNED_ERROR)
        result = fl_fail(err, status == 404 || status == 410 ? FL_ENOTFOUND : FL_EIO, "download failed: HTTP %ld", status);
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        result = fl_fail(err, FL_EIO, "download timed out after %ld s", timeout);
    else if (rc == CURLE_UNSUPPORTED_PROTOCOL)
        result = fl_fail(err, FL_EUNSUPPORTED, "download refused: only http and https are allowed, redirects included");
    else if (rc == CURLE_TOO_MANY_REDIRECTS)
        result = fl_fail(err, FL_EIO, "download failed: more than 5 redirects");
    else if (rc != CURLE_OK)
        result = fl_fail(err, FL_EIO, "download failed (curl: %s)", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    else if (status < 200 || status > 299)
        result = fl_fail(err, FL_EIO, "download failed: HTTP %ld", status);
    if (result) {
        free(d.data);
        return result;
    }
    if (data) *data = d.data;
    *size = d.size;
    return 0;
}

int fl_fetch_url(const char *url, const fl_fetch_limits *limits, unsigned char **data, size_t *size, fl_error *err) {
    *data = NULL;
    *size = 0;
    return fetch(url, limits, -1, data, size, err);
}

int fl_fetch_url_to_fd(const char *url, const fl_fetch_limits *limits, int fd, size_t *size, fl_error *err) {
    *size = 0;
    if (fd < 0) return fl_fail(err, FL_EINVAL, "download: no file to write to");
    return fetch(url, limits, fd, NULL, size, err);
}

#else /* no libcurl */

int fl_fetch_url(const char *url, const fl_fetch_limits *limits, unsigned char **data, size_t *size, fl_error *err) {
    *data = NULL;
    *size = 0;
    return fl_fail(err, FL_EUNSUPPORTED, "downloading needs libcurl, which this build lacks");
}

int fl_fetch_url_to_fd(const char *url, const fl_fetch_limits *limits, int fd, size_t *size, fl_error *err) {
    *size = 0;
    return fl_fail(err, FL_EUNSUPPORTED, "downloading needs libcurl, which this build lacks");
}

int fl_fetch_check_url(const char *url, bool allow_private, fl_error *err) {
    return fl_fail(err, FL_EUNSUPPORTED, "downloading needs libcurl, which this build lacks");
}

#endif
