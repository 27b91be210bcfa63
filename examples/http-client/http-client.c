/* An HTTP client over a connection the keep opened for it: sends one GET and
 * prints the whole response, status line and headers included, to stdout.
 *
 * WASI preview1 has no connect(): the keep connects (and speaks TLS, when the
 * config says so) and hands over the connected socket as a preopened fd named
 * in FD_NAMES. With examples/http-client/Enarx.toml:
 *
 *     [[files]]
 *     kind = "connect"
 *     name = "SERVER"
 *     host = "127.0.0.1"
 *     port = 8443
 *     prot = "tls"
 *
 *   wasmkeep run --config examples/http-client/Enarx.toml \
 *       examples/build/http-client.wasm SERVER / localhost
 *
 * (http-hello with its own Enarx.toml answers on that port), or natively:
 *   python3 examples/native_launcher.py --connect SERVER=127.0.0.1:8080 -- ./http-client
 *
 * Usage: http-client [NAME [PATH [HOST]]]
 *   NAME  the connected socket's name in FD_NAMES (default SERVER)
 *   PATH  what to GET (default /);  HOST  the Host header (default localhost)
 *
 * Exit status: 0 once the server has closed the connection after a response;
 * 1 if the socket is missing or the connection fails; 2 on bad usage.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_REQUEST 8192

/* Writing to a socket the peer has closed raises SIGPIPE on Linux unless
 * MSG_NOSIGNAL is given; wasi-libc's send() refuses every flag (EOPNOTSUPP),
 * and WASI has no signals to begin with. */
#ifdef __wasi__
#define SEND_FLAGS 0
#else
#define SEND_FLAGS MSG_NOSIGNAL
#endif

/* The fd of the file called NAME in FD_NAMES (fd 0 is the first name), or -1. */
static int find_fd(const char *name) {
    const char *names = getenv("FD_NAMES");
    const char *count = getenv("FD_COUNT");
    int limit = count ? atoi(count) : INT_MAX;
    size_t name_len = strlen(name);
    if (!names)
        return -1;
    for (int fd = 0; fd < limit; fd++) {
        const char *end = strchr(names, ':');
        size_t len = end ? (size_t)(end - names) : strlen(names);
        if (len == name_len && memcmp(names, name, len) == 0)
            return fd;
        if (!end)
            break;
        names = end + 1;
    }
    return -1;
}

/* A request-target or Host value must not end the request line or a header
 * early: no spaces, no control characters. */
static int is_clean(const char *text) {
    if (!*text)
        return 0;
    for (; *text; text++)
        if ((unsigned char)*text <= ' ' || *text == 0x7f)
            return 0;
    return 1;
}

/* The socket may come non-blocking: then wait until it is ready. */
static int wait_ready(int fd, short events) {
    struct pollfd pfd = {.fd = fd, .events = events};
    int n;
    while ((n = poll(&pfd, 1, -1)) < 0 && errno == EINTR)
        continue;
    return n < 0 ? -1 : 0;
}

static int send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, SEND_FLAGS);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_ready(fd, POLLOUT) < 0)
                return -1;
        } else if (n == 0 || errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

enum relay { RELAYED, RECV_FAILED, WRITE_FAILED };

/* Copies everything the server sends to stdout, until it closes the
 * connection; counts the bytes in *TOTAL. On failure errno says why. */
static enum relay relay_response(int fd, long long *total) {
    static char buf[64 * 1024];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0)
            return fflush(stdout) == 0 ? RELAYED : WRITE_FAILED;
        if (n > 0) {
            if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
                return WRITE_FAILED;
            *total += n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_ready(fd, POLLIN) < 0)
                return RECV_FAILED;
        } else if (errno != EINTR) {
            return RECV_FAILED;
        }
    }
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "SERVER";
    const char *path = argc > 2 ? argv[2] : "/";
    const char *host = argc > 3 ? argv[3] : "localhost";
    char request[MAX_REQUEST];
    int len = snprintf(request, sizeof request,
                       "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
    if (argc > 4 || !is_clean(path) || !is_clean(host) || len < 0 ||
        (size_t)len >= sizeof request) {
        fprintf(stderr, "usage: http-client [NAME [PATH [HOST]]] (PATH and HOST without "
                        "spaces or control characters, together under %d bytes)\n", MAX_REQUEST);
        return 2;
    }
    int fd = find_fd(name);
    if (fd < 0) {
        fprintf(stderr, "http-client: no socket named %s in FD_NAMES (give the workload a "
                        "[[files]] entry of kind \"connect\" with name = \"%s\")\n", name, name);
        return 1;
    }
    if (send_all(fd, request, (size_t)len) < 0) {
        fprintf(stderr, "http-client: sending the request to %s failed: %s\n", name,
                strerror(errno));
        return 1;
    }
    long long received = 0;
    switch (relay_response(fd, &received)) {
    case RELAYED:
        break;
    case RECV_FAILED:
        fprintf(stderr, "http-client: reading the response from %s failed: %s\n", name,
                strerror(errno));
        return 1;
    case WRITE_FAILED:
        fprintf(stderr, "http-client: writing to stdout failed: %s\n", strerror(errno));
        return 1;
    }
    if (received == 0) {
        fprintf(stderr, "http-client: %s closed the connection without a response\n", name);
        return 1;
    }
    close(fd);
    return 0;
}
