/* A TCP echo server for many clients at once, on one thread: a poll() loop
 * over non-blocking sockets, as a WASI workload has no threads to spare.
 *
 * The keep gives the workload its listening socket, already bound, as a
 * preopened fd, and names it in FD_NAMES (Enarx's convention); the workload
 * never calls socket(), bind() or listen(), which WASI preview1 does not have.
 * With examples/tcp-echo/Enarx.toml:
 *
 *     [[files]]
 *     kind = "listen"
 *     name = "LISTEN"
 *     prot = "tcp"
 *     addr = "127.0.0.1"
 *     port = 12345
 *
 *   wasmkeep run --config examples/tcp-echo/Enarx.toml examples/build/tcp-echo.wasm
 *   python3 examples/native_launcher.py --listen LISTEN=127.0.0.1:12345 -- ./tcp-echo
 *
 * Usage: tcp-echo [NAME] [--max-connections N]
 *   NAME  the listening socket's name in FD_NAMES (default LISTEN)
 *   --max-connections N  exit 0 once N connections have been served to the end
 * Set ECHO_VERBOSE to log one line per event to stderr.
 *
 * Every client is on its own: one that sends garbage, stalls, or vanishes
 * mid-message is closed or left waiting, and the others carry on. At most
 * MAX_CLIENTS at a time (more are accepted and closed at once); at most
 * MAX_PENDING bytes wait to be echoed to one client, and while that much waits
 * nothing more is read from it (backpressure: TCP then slows the sender).
 *
 * Exit status: 0; 1 if the listening socket is missing or fails; 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 1024
#define MAX_PENDING (1024 * 1024) /* bytes waiting to be echoed, per client */
#define READ_CHUNK (64 * 1024)    /* most bytes read from one client per turn */
#define RETRY_ACCEPT_MS 100       /* after running out of fds, accept again after this */

/* Writing to a socket the peer has closed raises SIGPIPE on Linux unless
 * MSG_NOSIGNAL is given; wasi-libc's send() refuses every flag (EOPNOTSUPP),
 * and WASI has no signals to begin with. */
#ifdef __wasi__
#define SEND_FLAGS 0
#else
#define SEND_FLAGS MSG_NOSIGNAL
#endif

struct client {
    int fd;            /* -1 once closed, until removed from the table */
    unsigned long id;  /* serial number, for the log */
    int eof;           /* the client has sent everything it will send */
    char *out;         /* bytes read and not yet echoed: out[head, head + len) */
    size_t cap, head, len;
};

struct server {
    int listen_fd;
    struct client *clients[MAX_CLIENTS];
    size_t count;
    unsigned long accepted;
    unsigned long max_connections; /* 0: no limit */
    int accept_paused;             /* out of fds or memory: wait before accepting */
    int verbose;
};

/* ---- portable helpers ---------------------------------------------------- */

static void log_event(const struct server *s, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static void log_event(const struct server *s, const char *format, ...) {
    if (!s->verbose)
        return;
    va_list args;
    va_start(args, format);
    fputs("tcp-echo: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

static int would_block(int error) {
    return error == EAGAIN || error == EWOULDBLOCK;
}

static int set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

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

#ifdef __wasi__
#include <wasi/api.h>

/* wasi-libc's poll() builds its 2n+1 WASI subscriptions in arrays on the
 * stack: for 1025 fds that is about 160 KiB, against the 64 KiB stack wasm-ld
 * gives a module, and a WebAssembly stack overflow runs over static data or
 * traps instead of failing cleanly. So in WebAssembly poll() is done here,
 * with static arrays; it reports what wasi-libc's would. */
static __wasi_subscription_t subscriptions[2 * (MAX_CLIENTS + 1) + 1];
static __wasi_event_t events[2 * (MAX_CLIENTS + 1) + 1];

static int wait_for_events(struct pollfd *fds, size_t count, int timeout_ms) {
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        fds[i].revents = 0;
        if (fds[i].fd < 0)
            continue;
        if (fds[i].events & POLLIN)
            subscriptions[n++] = (__wasi_subscription_t){
                .userdata = i,
                .u.tag = __WASI_EVENTTYPE_FD_READ,
                .u.u.fd_read.file_descriptor = (__wasi_fd_t)fds[i].fd,
            };
        if (fds[i].events & POLLOUT)
            subscriptions[n++] = (__wasi_subscription_t){
                .userdata = i,
                .u.tag = __WASI_EVENTTYPE_FD_WRITE,
                .u.u.fd_write.file_descriptor = (__wasi_fd_t)fds[i].fd,
            };
    }
    if (timeout_ms >= 0)
        subscriptions[n++] = (__wasi_subscription_t){
            .userdata = count,
            .u.tag = __WASI_EVENTTYPE_CLOCK,
            .u.u.clock.id = __WASI_CLOCKID_MONOTONIC,
            .u.u.clock.timeout = (__wasi_timestamp_t)timeout_ms * 1000000,
        };
    __wasi_size_t ready = 0;
    __wasi_errno_t error = __wasi_poll_oneoff(subscriptions, events, n, &ready);
    if (error != 0) {
        errno = error;
        return -1;
    }
    for (size_t i = 0; i < ready; i++) {
        const __wasi_event_t *event = &events[i];
        if (event->type == __WASI_EVENTTYPE_CLOCK || event->userdata >= count)
            continue;
        struct pollfd *fd = &fds[event->userdata];
        if (event->error != 0)
            fd->revents |= POLLERR;
        else if (event->type == __WASI_EVENTTYPE_FD_WRITE)
            fd->revents |= POLLOUT;
        else if (event->fd_readwrite.flags & __WASI_EVENTRWFLAGS_FD_READWRITE_HANGUP)
            fd->revents |= POLLIN | POLLHUP;
        else
            fd->revents |= POLLIN;
    }
    return (int)ready;
}
#else
static int wait_for_events(struct pollfd *fds, size_t count, int timeout_ms) {
    return poll(fds, (nfds_t)count, timeout_ms);
}
#endif

/* ---- one client ---------------------------------------------------------- */

/* Room for WANT more bytes after the pending output; 0 if out of memory. */
static int reserve(struct client *c, size_t want) {
    if (c->head + c->len + want <= c->cap)
        return 1;
    if (c->head > 0) {
        memmove(c->out, c->out + c->head, c->len);
        c->head = 0;
    }
    if (c->len + want <= c->cap)
        return 1;
    size_t cap = c->cap ? c->cap : READ_CHUNK;
    while (cap < c->len + want)
        cap *= 2;
    if (cap > MAX_PENDING)
        cap = MAX_PENDING;
    char *out = realloc(c->out, cap);
    if (!out)
        return 0;
    c->out = out;
    c->cap = cap;
    return 1;
}

static int wants_input(const struct client *c) {
    return !c->eof && c->len < MAX_PENDING;
}

/* Reads one chunk into the pending output. -1 on a connection error. */
static int client_read(struct client *c) {
    size_t want = MAX_PENDING - c->len;
    if (want > READ_CHUNK)
        want = READ_CHUNK;
    if (!reserve(c, want)) {
        errno = ENOMEM;
        return -1;
    }
    ssize_t n = recv(c->fd, c->out + c->head + c->len, want, 0);
    if (n > 0)
        c->len += (size_t)n;
    else if (n == 0)
        c->eof = 1;
    else if (!would_block(errno) && errno != EINTR)
        return -1;
    return 0;
}

/* Sends as much pending output as the socket takes. -1 on a connection error. */
static int client_flush(struct client *c) {
    while (c->len > 0) {
        ssize_t n = send(c->fd, c->out + c->head, c->len, SEND_FLAGS);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && would_block(errno))
            return 0;
        if (n == 0)
            errno = EPIPE; /* a socket that takes nothing is not coming back */
        if (n <= 0)
            return -1;
        c->head += (size_t)n;
        c->len -= (size_t)n;
    }
    /* Idle: give the buffer back, so that memory follows the clients in flight. */
    free(c->out);
    c->out = NULL;
    c->cap = c->head = 0;
    return 0;
}

static void client_close(const struct server *s, struct client *c, const char *why) {
    log_event(s, "client %lu: closed (%s)", c->id, why);
    close(c->fd);
    c->fd = -1;
}

/* Acts on what poll() reported for one client. */
static void client_serve(const struct server *s, struct client *c, short revents) {
    if (revents & (POLLERR | POLLNVAL)) {
        client_close(s, c, "connection error");
        return;
    }
    if ((revents & (POLLIN | POLLHUP)) && wants_input(c)) {
        if (client_read(c) < 0) {
            client_close(s, c, strerror(errno));
            return;
        }
    } else if (revents & POLLHUP) {
        client_close(s, c, "hung up"); /* gone both ways: nothing to echo to */
        return;
    }
    if (c->len > 0 && client_flush(c) < 0) {
        client_close(s, c, strerror(errno));
        return;
    }
    if (c->eof && c->len == 0)
        client_close(s, c, "done");
}

/* ---- the server ---------------------------------------------------------- */

static int accepting(const struct server *s) {
    return s->max_connections == 0 || s->accepted < s->max_connections;
}

static void add_client(struct server *s, int fd) {
    struct client *c = NULL;
    if (s->count == MAX_CLIENTS) {
        log_event(s, "refused a client: %d already connected", MAX_CLIENTS);
    } else if (set_nonblocking(fd) < 0) {
        log_event(s, "refused a client: fcntl: %s", strerror(errno));
    } else if (!(c = calloc(1, sizeof *c))) {
        log_event(s, "refused a client: out of memory");
        s->accept_paused = 1;
    }
    if (!c) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->id = ++s->accepted;
    s->clients[s->count++] = c;
    log_event(s, "client %lu: connected (%zu clients)", c->id, s->count);
}

/* Accepts every client waiting. -1 if the listening socket itself fails. */
static int accept_clients(struct server *s) {
    while (accepting(s) && !s->accept_paused) {
        /* Not NULL, NULL: wasi-libc's accept() stores an (AF_UNSPEC) address
         * through both pointers whatever they are. */
        struct sockaddr_storage address;
        socklen_t length = sizeof address;
        int fd = accept(s->listen_fd, (struct sockaddr *)&address, &length);
        if (fd >= 0) {
            add_client(s, fd);
        } else if (would_block(errno)) {
            return 0;
        } else if (errno == EBADF || errno == EINVAL || errno == ENOTSOCK ||
                   errno == EOPNOTSUPP) {
            return -1;
        } else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                   errno == ENOMEM) {
            /* The client stays in the backlog; polling the listener now would
             * spin, so wait for a client to leave or RETRY_ACCEPT_MS. */
            log_event(s, "accept: %s; pausing", strerror(errno));
            s->accept_paused = 1;
        } else if (errno != EINTR) {
            /* ECONNABORTED and the network errors Linux passes on from the
             * new connection concern that client only. */
            log_event(s, "accept: %s", strerror(errno));
        }
    }
    return 0;
}

/* Frees the clients closed in this turn and closes the table's gaps. */
static void remove_closed(struct server *s) {
    size_t kept = 0;
    for (size_t i = 0; i < s->count; i++) {
        struct client *c = s->clients[i];
        if (c->fd >= 0) {
            s->clients[kept++] = c;
        } else {
            free(c->out);
            free(c);
        }
    }
    s->count = kept;
}

static int serve(struct server *s, const char *name) {
    static struct pollfd fds[MAX_CLIENTS + 1];
    while (accepting(s) || s->count > 0) {
        int paused = s->accept_paused;
        fds[0] = (struct pollfd){.fd = accepting(s) && !paused ? s->listen_fd : -1,
                                 .events = POLLIN};
        for (size_t i = 0; i < s->count; i++) {
            const struct client *c = s->clients[i];
            short events = (short)((wants_input(c) ? POLLIN : 0) | (c->len ? POLLOUT : 0));
            fds[i + 1] = (struct pollfd){.fd = c->fd, .events = events};
        }
        if (wait_for_events(fds, s->count + 1, paused ? RETRY_ACCEPT_MS : -1) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "tcp-echo: poll: %s\n", strerror(errno));
            return 1;
        }
        s->accept_paused = 0;
        for (size_t i = 0; i < s->count; i++)
            if (fds[i + 1].revents)
                client_serve(s, s->clients[i], fds[i + 1].revents);
        remove_closed(s);
        if ((fds[0].revents || paused) && accept_clients(s) < 0) {
            fprintf(stderr, "tcp-echo: accept on %s: %s\n", name, strerror(errno));
            return 1;
        }
    }
    log_event(s, "served %lu connections; exiting", s->accepted);
    return 0;
}

/* ---- command line -------------------------------------------------------- */

static int parse_count(const char *text, unsigned long *out) {
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || value == 0)
        return -1;
    *out = value;
    return 0;
}

int main(int argc, char **argv) {
    static struct server server;
    const char *name = "LISTEN";
    int named = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max-connections") == 0 && i + 1 < argc) {
            if (parse_count(argv[++i], &server.max_connections) < 0) {
                fprintf(stderr, "tcp-echo: --max-connections wants a positive number\n");
                return 2;
            }
        } else if (argv[i][0] != '-' && !named) {
            name = argv[i];
            named = 1;
        } else {
            fprintf(stderr, "usage: tcp-echo [NAME] [--max-connections N]\n");
            return 2;
        }
    }
    server.verbose = getenv("ECHO_VERBOSE") != NULL;
    server.listen_fd = find_fd(name);
    if (server.listen_fd < 0) {
        fprintf(stderr, "tcp-echo: no socket named %s in FD_NAMES (give the workload a "
                        "[[files]] entry of kind \"listen\" with name = \"%s\")\n", name, name);
        return 1;
    }
    if (set_nonblocking(server.listen_fd) < 0) {
        fprintf(stderr, "tcp-echo: %s (fd %d): %s\n", name, server.listen_fd, strerror(errno));
        return 1;
    }
    log_event(&server, "listening on %s (fd %d)", name, server.listen_fd);
    return serve(&server, name);
}
