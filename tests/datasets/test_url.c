/*
 * test_url.c — loading an image set from an http:// URL. The test starts `python3 -m http.server`
 * bound to 127.0.0.1 on a free port, serving a temporary folder, and fetches a good zip, a missing
 * file (404), a file larger than a small url_max_bytes, and the good zip again with the default
 * limits, which refuse loopback addresses. The server is stopped at the end (and dies with the
 * test if the test dies). Without python3 the server cases are skipped with a note.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "datasets/imageset.h"
#include "ds_test_util.h"
#include "fl_build_config.h"
#include "harness.h"

#define CONTAINS(hay, needle) ((hay) != NULL && strstr((hay), (needle)) != NULL)

#if defined(FL_HAVE_CURL) && defined(FL_HAVE_ARCHIVE) && defined(FL_HAVE_STB)

static pid_t server_pid = -1;
static int server_port = 0;
static char *served_dir = NULL;

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static bool port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

static bool start_server(const char *dir) {
    server_port = free_port();
    if (!server_port) return false;
    char port[16];
    snprintf(port, sizeof port, "%d", server_port);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) dup2(null, 1), dup2(null, 2);
        char *argv[] = {"python3", "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", (char *)dir, NULL};
        execvp(argv[0], argv);
        _exit(127);
    }
    server_pid = pid;
    for (int i = 0; i < 200; i++) { /* up to 20 s on a busy machine */
        if (port_open(server_port)) return true;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            server_pid = -1;
            return false;
        }
        nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
    }
    return false;
}

static void stop_server(void) {
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        waitpid(server_pid, NULL, 0);
        server_pid = -1;
    }
}

static void url(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "http://127.0.0.1:%d/%s", server_port, name);
}

static void gradient(int x, int y, unsigned char rgb[3]) {
    rgb[0] = (unsigned char)(x * 10), rgb[1] = (unsigned char)(y * 20), rgb[2] = 77;
}

static void prepare_served_dir(void) {
    served_dir = ds_temp_dir("url");
    size_t n;
    unsigned char *bmp = ds_bmp(8, 4, gradient, &n);
    ds_entry entries[] = {
        {"a.bmp", bmp, n, DS_FILE, NULL},
        {"b.bmp", bmp, n, DS_FILE, NULL},
        {"c.bmp", bmp, n, DS_FILE, NULL},
        {"d.bmp", bmp, n, DS_FILE, NULL},
    };
    size_t size;
    unsigned char *zip = ds_archive(entries, 4, DS_ZIP, &size);
    char path[4096];
    if (zip) FL_CHECK(ds_write_file(ds_join(path, sizeof path, served_dir, "good.zip"), zip, size));
    size_t big_n = 200 << 10;
    unsigned char *big = fl_xcalloc(1, big_n);
    FL_CHECK(ds_write_file(ds_join(path, sizeof path, served_dir, "big.bin"), big, big_n));
    free(big);
    free(zip);
    free(bmp);
}

static fl_imageset_limits local_limits(void) {
    fl_imageset_limits l = fl_imageset_limits_default();
    l.url_allow_private = true;
    l.url_timeout_seconds = 20;
    return l;
}

static void test_good_zip(void) {
    char u[256];
    url(u, sizeof u, "good.zip");
    fl_imageset_limits l = local_limits();
    fl_imageset *set = NULL;
    fl_error err = {0};
    int rc = fl_imageset_load(u, &l, &set, &err);
    FL_EXPECTF(rc == 0, "%s", err.message);
    FL_EXPECT(rc != 0 || (set->count == 4 && strcmp(set->items[0].name, "a.bmp") == 0 && set->items[0].image.width == 8));
    fl_imageset_free(set);
}

static void test_not_found(void) {
    char u[256];
    url(u, sizeof u, "missing.zip");
    fl_imageset_limits l = local_limits();
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_imageset_load(u, &l, &set, &err) != 0 && set == NULL);
    FL_EXPECTF(err.code == FL_ENOTFOUND && strcmp(err.message, "download failed: HTTP 404") == 0, "%s", err.message);
    FL_EXPECT(!CONTAINS(err.message, "missing.zip")); /* URLs are not echoed */
}

static void test_too_large(void) {
    char u[256];
    url(u, sizeof u, "big.bin");
    fl_imageset_limits l = local_limits();
    l.url_max_bytes = 64 << 10;
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_imageset_load(u, &l, &set, &err) != 0 && set == NULL);
    FL_EXPECTF(err.code == FL_ELIMIT && strcmp(err.message, "download is larger than the 64 KiB limit") == 0, "%s",
               err.message);
}

static void test_loopback_refused_by_default(void) {
    char u[256];
    url(u, sizeof u, "good.zip");
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_imageset_load(u, NULL, &set, &err) != 0 && set == NULL);
    FL_EXPECTF(err.code == FL_EINVAL && CONTAINS(err.message, "loopback, private or link-local"), "%s", err.message);
}

#endif

static void test_bad_urls(void) {
    fl_imageset_limits l = fl_imageset_limits_default();
    l.url_allow_private = true;
    fl_imageset *set = NULL;
    fl_error err = {0};
    FL_EXPECT(fl_imageset_load("http://exa mple.com/x.zip", &l, &set, &err) != 0);
#if defined(FL_HAVE_CURL)
    FL_EXPECTF(err.code == FL_EINVAL && CONTAINS(err.message, "not a well-formed"), "%s", err.message);
#else
    FL_EXPECT(err.code == FL_EUNSUPPORTED);
#endif
    FL_EXPECT(fl_imageset_load("gopher://example.com/x.zip", &l, &set, &err) != 0 && err.code == FL_EUNSUPPORTED);
}

int main(void) {
    setenv("no_proxy", "127.0.0.1,localhost", 1);
    setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    FL_RUN(test_bad_urls);
#if defined(FL_HAVE_CURL) && defined(FL_HAVE_ARCHIVE) && defined(FL_HAVE_STB)
    prepare_served_dir();
    if (start_server(served_dir)) {
        FL_RUN(test_good_zip);
        FL_RUN(test_not_found);
        FL_RUN(test_too_large);
        FL_RUN(test_loopback_refused_by_default);
    } else {
        printf("note: could not start python3 -m http.server; the server cases are skipped\n");
    }
    stop_server();
    ds_remove_tree(served_dir);
    free(served_dir);
#endif
    return fl_test_finish();
}
