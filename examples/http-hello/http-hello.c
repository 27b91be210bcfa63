/* A small HTTP/1.1 server: every GET answers "Hello from inside a keep!".
 * Many clients at once on one thread (a poll() loop over non-blocking
 * sockets), keep-alive and pipelined requests.
 *
 * The keep terminates TLS and hands over the listening socket as a preopened
 * fd named in FD_NAMES, so the workload speaks plain HTTP and never calls
 * socket(), bind() or listen(). With examples/http-hello/Enarx.toml:
 *
 *     [[files]]
 *     kind = "listen"
 *     name = "LISTEN"
 *     prot = "tls"
 *     addr = "127.0.0.1"
 *     port = 8443
 *
 *   wasmkeep run --config examples/http-hello/Enarx.toml examples/build/http-hello.wasm
 *   curl -k https://127.0.0.1:8443/
 *
 * or natively, plain HTTP: python3 examples/native_launcher.py
 *   --listen LISTEN=127.0.0.1:8080 -- ./http-hello; curl http://127.0.0.1:8080/
 *
 * Usage: http-hello [NAME] [--max-requests N]
 *   NAME  the listening socket's name in FD_NAMES (default LISTEN)
 *   --max-requests N  exit 0 once N responses have been sent
 *
 * What it answers: GET and HEAD of any path: 200 (text/plain); other methods:
 * 405; a malformed request line or header: 400 and close; a request head over
 * MAX_HEAD bytes: 431 and close. HTTP/1.1 keeps the connection unless asked
 * "Connection: close"; HTTP/1.0 closes unless asked "Connection: keep-alive".
 * A body announced by Content-Length is skipped; one sent with
 * Transfer-Encoding cannot be framed here, so the connection closes after the
 * answer. Deliberately small: no Host check, no timeouts.
 *
 * Exit status: 0; 1 if the listening socket is missing or fails; 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 1024
#define MAX_HEAD 8192              /* request line and headers, blank line included */
#define OUT_CAP 16384              /* responses waiting to be sent, per client */
#define MAX_RESPONSE 512           /* the longest response built here */
#define MAX_DRAIN (64 * 1024)      /* input discarded after the last response */
#define RETRY_ACCEPT_MS 100        /* after running out of fds, accept again after this */

static const char HELLO[] = "Hello from inside a keep!\n";

/* Writing to a socket the peer has closed raises SIGPIPE on Linux unless
 * MSG_NOSIGNAL is given; wasi-libc's send() refuses every flag (EOPNOTSUPP),
 * and WASI has no signals to begin with. */
#ifdef __wasi__
#define SEND_FLAGS 0
#else
#define SEND_FLAGS MSG_NOSIGNAL
#endif

enum phase {
    READING,  /* reading and answering requests */
    CLOSING,  /* the last response is queued: send it, then half-close */
    DRAINING, /* half-closed: discard input until the client closes too */
};

struct client {
    int fd;                       /* -1 once closed, until removed from the table */
    enum phase phase;
    int eof;                      /* the client has sent everything it will send */
    unsigned long long body_left; /* request body bytes still to skip */
    size_t drained;
    char in[MAX_HEAD];            /* received, not yet handled: in[in_start, +in_len) */
    size_t in_start, in_len;
    char out[OUT_CAP];            /* responses not yet sent: out[out_start, +out_len) */
    size_t out_start, out_len;
};

struct server {
    int listen_fd;
    struct client *clients[MAX_CLIENTS];
    size_t count;
    unsigned long responses;
    unsigned long max_requests; /* 0: no limit */
    int accept_paused;          /* out of fds or memory: wait before accepting */
};

struct request {
    int head_only;                  /* HEAD: headers without the body */
    int http10;                     /* HTTP/1.0 */
    int keep_alive;                 /* the client may send another request */
    unsigned long long body_length; /* Content-Length */
};

/* ---- portable helpers ---------------------------------------------------- */

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

/* ---- parsing a request head (RFC 9112, sections 2-3 and 5) --------------- */

/* The length of the head at the start of BUF, through its blank line (lines
 * end in CRLF or a bare LF), or 0 if the blank line has not arrived yet. */
static size_t head_length(const char *buf, size_t len) {
    for (const char *nl = buf; (nl = memchr(nl, '\n', len - (size_t)(nl - buf))); nl++) {
        size_t rest = len - (size_t)(nl - buf) - 1;
        if (rest >= 1 && nl[1] == '\n')
            return (size_t)(nl - buf) + 2;
        if (rest >= 2 && nl[1] == '\r' && nl[2] == '\n')
            return (size_t)(nl - buf) + 3;
    }
    return 0;
}

static int is_tchar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* One line of the head: [*line, *next) without its line end; 0 at the end. */
static int next_line(const char **line, const char **next, size_t *len, const char *end) {
    *line = *next;
    const char *nl = memchr(*line, '\n', (size_t)(end - *line));
    if (!nl)
        return 0;
    *next = nl + 1;
    *len = (size_t)(nl - *line) - (nl > *line && nl[-1] == '\r');
    return 1;
}

/* request-line = method SP request-target SP HTTP-version. 0 or 400. */
static int parse_request_line(const char *line, size_t len, struct request *req) {
    size_t i = 0, method_len, target_len = 0;
    while (i < len && is_tchar(line[i]))
        i++;
    method_len = i;
    if (method_len == 0 || i == len || line[i++] != ' ')
        return 400;
    while (i < len && line[i] > ' ' && line[i] < 0x7f)
        i++, target_len++;
    if (target_len == 0 || i == len || line[i++] != ' ')
        return 400;
    /* HTTP/1.x: 1.0 closes by default, any later 1.x behaves as 1.1. */
    if (len - i != 8 || memcmp(line + i, "HTTP/1.", 7) != 0 || line[i + 7] < '0' ||
        line[i + 7] > '9')
        return 400;
    req->http10 = line[i + 7] == '0';
    req->keep_alive = !req->http10;
    req->head_only = method_len == 4 && memcmp(line, "HEAD", 4) == 0;
    if (!req->head_only && !(method_len == 3 && memcmp(line, "GET", 3) == 0))
        return 405;
    return 0;
}

static const char *trim(const char *start, size_t *len) {
    while (*len && (*start == ' ' || *start == '\t'))
        start++, (*len)--;
    while (*len && (start[*len - 1] == ' ' || start[*len - 1] == '\t'))
        (*len)--;
    return start;
}

/* Connection: a comma-separated list of options; "close" and "keep-alive" matter. */
static void parse_connection(const char *value, size_t len, struct request *req) {
    const char *end = value + len;
    for (;;) {
        const char *comma = memchr(value, ',', (size_t)(end - value));
        size_t item_len = (size_t)((comma ? comma : end) - value);
        const char *item = trim(value, &item_len);
        if (item_len == 5 && strncasecmp(item, "close", 5) == 0)
            req->keep_alive = 0;
        else if (item_len == 10 && strncasecmp(item, "keep-alive", 10) == 0 && req->http10)
            req->keep_alive = 1;
        if (!comma)
            return;
        value = comma + 1;
    }
}

/* Content-Length = 1*DIGIT; 0 or 400. */
static int parse_length(const char *value, size_t len, unsigned long long *out) {
    unsigned long long n = 0;
    if (len == 0)
        return 400;
    for (size_t i = 0; i < len; i++) {
        if (value[i] < '0' || value[i] > '9' || n > (ULLONG_MAX - 9) / 10)
            return 400;
        n = n * 10 + (unsigned long long)(value[i] - '0');
    }
    if (*out != ULLONG_MAX && *out != n) /* two different lengths */
        return 400;
    *out = n;
    return 0;
}

/* field-line = field-name ":" OWS field-value OWS. 0 or 400. */
static int parse_header(const char *line, size_t len, struct request *req, int *chunked) {
    size_t name_len = 0;
    while (name_len < len && is_tchar(line[name_len]))
        name_len++;
    if (name_len == 0 || name_len == len || line[name_len] != ':')
        return 400; /* also obs-fold and whitespace before ':' (RFC 9112, 5.1-5.2) */
    size_t value_len = len - name_len - 1;
    const char *value = trim(line + name_len + 1, &value_len);
    for (size_t i = 0; i < value_len; i++)
        if ((unsigned char)value[i] < ' ' && value[i] != '\t')
            return 400;
    if (name_len == 10 && strncasecmp(line, "Connection", 10) == 0)
        parse_connection(value, value_len, req);
    else if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0)
        return parse_length(value, value_len, &req->body_length);
    else if (name_len == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0)
        *chunked = 1;
    return 0;
}

/* The status to answer the head [head, head + len) with: 200, 400 or 405. */
static int parse_request(const char *head, size_t len, struct request *req) {
    const char *end = head + len, *next = head, *line;
    size_t line_len = 0;
    int method_status, transfer_encoding = 0;
    *req = (struct request){.body_length = ULLONG_MAX};
    if (!next_line(&line, &next, &line_len, end))
        return 400;
    method_status = parse_request_line(line, line_len, req);
    if (method_status == 400)
        return 400;
    while (next_line(&line, &next, &line_len, end) && line_len > 0)
        if (parse_header(line, line_len, req, &transfer_encoding) != 0)
            return 400;
    if (req->body_length == ULLONG_MAX)
        req->body_length = 0;
    if (transfer_encoding)
        req->keep_alive = 0; /* a body this server cannot frame: answer, then close */
    return method_status ? method_status : 200;
}

/* ---- one client ---------------------------------------------------------- */

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 405: return "Method Not Allowed";
    default: return "Request Header Fields Too Large";
    }
}

static int limit_reached(const struct server *s) {
    return s->max_requests && s->responses >= s->max_requests;
}

/* Queues a response (the caller saw MAX_RESPONSE bytes of room). REQ is NULL
 * when the request could not be parsed: then the connection closes. */
static void respond(struct server *s, struct client *c, int status, const struct request *req) {
    s->responses++;
    int keep_alive = req && req->keep_alive && !limit_reached(s);
    char body[64];
    int body_len = status == 200 ? snprintf(body, sizeof body, "%s", HELLO)
                                 : snprintf(body, sizeof body, "%s\n", reason(status));
    if (c->out_start + c->out_len + MAX_RESPONSE > OUT_CAP) {
        memmove(c->out, c->out + c->out_start, c->out_len);
        c->out_start = 0;
    }
    int n = snprintf(c->out + c->out_start + c->out_len, MAX_RESPONSE,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %d\r\n"
                     "%s%s"
                     "\r\n"
                     "%s",
                     status, reason(status), body_len,
                     status == 405 ? "Allow: GET, HEAD\r\n" : "",
                     !keep_alive ? "Connection: close\r\n"
                     : req->http10 ? "Connection: keep-alive\r\n" : "",
                     req && req->head_only ? "" : body);
    c->out_len += (size_t)n;
    if (!keep_alive)
        c->phase = CLOSING;
}

static size_t out_room(const struct client *c) {
    return OUT_CAP - c->out_len;
}

/* Skips request body bytes still owed by an earlier request. */
static void skip_body(struct client *c) {
    size_t n = c->body_left < c->in_len ? (size_t)c->body_left : c->in_len;
    c->body_left -= n;
    c->in_start += n;
    c->in_len -= n;
}

/* Takes the next request head off the input. Returns its status (200, 400,
 * 405; 431 for a head too long to complete) or 0 if it has not all arrived. */
static int take_request(struct client *c, struct request *req) {
    skip_body(c);
    /* RFC 9112, 2.2: ignore empty lines before a request line. */
    while (c->in_len && (c->in[c->in_start] == '\r' || c->in[c->in_start] == '\n'))
        c->in_start++, c->in_len--;
    if (c->body_left || c->in_len == 0)
        return 0;
    size_t len = head_length(c->in + c->in_start, c->in_len);
    if (len == 0)
        return c->in_len == MAX_HEAD ? 431 : 0;
    int status = parse_request(c->in + c->in_start, len, req);
    c->in_start += len;
    c->in_len -= len;
    c->body_left = status == 400 ? 0 : req->body_length;
    return status;
}

/* Answers the complete requests received, as far as the output room allows;
 * returns how many. */
static int handle_requests(struct server *s, struct client *c) {
    int answered = 0, status;
    struct request req;
    while (c->phase == READING && !limit_reached(s) && out_room(c) >= MAX_RESPONSE &&
           (status = take_request(c, &req)) != 0) {
        respond(s, c, status, status == 400 || status == 431 ? NULL : &req);
        answered++;
    }
    return answered;
}

static int wants_input(const struct client *c) {
    if (c->phase == DRAINING)
        return 1;
    return c->phase == READING && !c->eof && c->in_len < MAX_HEAD;
}

/* Reads what is there. -1 on a connection error. */
static int client_read(struct client *c) {
    if (c->in_start > 0) {
        memmove(c->in, c->in + c->in_start, c->in_len);
        c->in_start = 0;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, MAX_HEAD - c->in_len, 0);
    if (n == 0)
        c->eof = 1;
    else if (n < 0)
        return would_block(errno) || errno == EINTR ? 0 : -1;
    else if (c->phase == DRAINING)
        c->drained += (size_t)n; /* and dropped */
    else
        c->in_len += (size_t)n;
    return 0;
}

/* Sends as much output as the socket takes. -1 on a connection error. */
static int client_flush(struct client *c) {
    while (c->out_len > 0) {
        ssize_t n = send(c->fd, c->out + c->out_start, c->out_len, SEND_FLAGS);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && would_block(errno))
            return 0;
        if (n == 0)
            errno = EPIPE; /* a socket that takes nothing is not coming back */
        if (n <= 0)
            return -1;
        c->out_start += (size_t)n;
        c->out_len -= (size_t)n;
    }
    c->out_start = 0;
    return 0;
}

static void client_close(struct client *c) {
    close(c->fd);
    c->fd = -1;
}

/* Acts on what poll() reported for one client. */
static void client_serve(struct server *s, struct client *c, short revents) {
    if (revents & (POLLERR | POLLNVAL)) {
        client_close(c);
        return;
    }
    if ((revents & (POLLIN | POLLHUP)) && wants_input(c)) {
        if (client_read(c) < 0) {
            client_close(c);
            return;
        }
    } else if (revents & POLLHUP) {
        client_close(c); /* gone both ways */
        return;
    }
    /* Answer and send until the socket is full or no complete request is
     * left: requests held back for want of output room are answered as soon
     * as the output is out. */
    while (handle_requests(s, c) > 0 || c->out_len > 0) {
        if (client_flush(c) < 0) {
            client_close(c);
            return;
        }
        if (c->out_len > 0)
            return; /* the rest on POLLOUT */
    }
}

/* Moves a client on once its output is out; closes it when it is done. */
static void client_settle(const struct server *s, struct client *c) {
    if (c->fd < 0 || c->out_len > 0)
        return;
    int stopping = limit_reached(s);
    if (c->phase == CLOSING && !stopping) {
        /* Half-close and read on until the client closes: closing with its
         * data unread would send a reset, which can destroy the response. */
        shutdown(c->fd, SHUT_WR);
        c->phase = DRAINING;
        c->in_start = c->in_len = 0; /* unanswered input: dropped too */
    }
    if (stopping || c->eof || c->drained > MAX_DRAIN)
        client_close(c);
}

/* ---- the server ---------------------------------------------------------- */

static void add_client(struct server *s, int fd) {
    struct client *c = NULL;
    if (s->count < MAX_CLIENTS && set_nonblocking(fd) == 0)
        c = calloc(1, sizeof *c);
    if (!c) {
        close(fd); /* refused: full, or out of memory */
        return;
    }
    c->fd = fd;
    s->clients[s->count++] = c;
}

/* Accepts every client waiting. -1 if the listening socket itself fails. */
static int accept_clients(struct server *s) {
    while (!limit_reached(s) && !s->accept_paused) {
        /* Not NULL, NULL: wasi-libc's accept() stores an (AF_UNSPEC) address
         * through both pointers whatever they are. */
        struct sockaddr_storage address;
        socklen_t length = sizeof address;
        int fd = accept(s->listen_fd, (struct sockaddr *)&address, &length);
        if (fd >= 0)
            add_client(s, fd);
        else if (would_block(errno))
            return 0;
        else if (errno == EBADF || errno == EINVAL || errno == ENOTSOCK || errno == EOPNOTSUPP)
            return -1;
        else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            s->accept_paused = 1; /* the client waits in the backlog */
        /* else ECONNABORTED or a network error that concerns that client only */
    }
    return 0;
}

/* Frees the clients closed in this turn and closes the table's gaps. */
static void remove_closed(struct server *s) {
    size_t kept = 0;
    for (size_t i = 0; i < s->count; i++) {
        if (s->clients[i]->fd >= 0)
            s->clients[kept++] = s->clients[i];
        else
            free(s->clients[i]);
    }
    s->count = kept;
}

static int serve(struct server *s, const char *name) {
    static struct pollfd fds[MAX_CLIENTS + 1];
    while (!limit_reached(s) || s->count > 0) {
        int paused = s->accept_paused;
        fds[0] = (struct pollfd){.fd = !limit_reached(s) && !paused ? s->listen_fd : -1,
                                 .events = POLLIN};
        for (size_t i = 0; i < s->count; i++) {
            const struct client *c = s->clients[i];
            short events = (short)((wants_input(c) ? POLLIN : 0) | (c->out_len ? POLLOUT : 0));
            fds[i + 1] = (struct pollfd){.fd = c->fd, .events = events};
        }
        if (wait_for_events(fds, s->count + 1, paused ? RETRY_ACCEPT_MS : -1) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "http-hello: poll: %s\n", strerror(errno));
            return 1;
        }
        s->accept_paused = 0;
        for (size_t i = 0; i < s->count; i++)
            if (fds[i + 1].revents)
                client_serve(s, s->clients[i], fds[i + 1].revents);
        for (size_t i = 0; i < s->count; i++)
            client_settle(s, s->clients[i]);
        remove_closed(s);
        if ((fds[0].revents || paused) && accept_clients(s) < 0) {
            fprintf(stderr, "http-hello: accept on %s: %s\n", name, strerror(errno));
            return 1;
        }
    }
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
        if (strcmp(argv[i], "--max-requests") == 0 && i + 1 < argc) {
            if (parse_count(argv[++i], &server.max_requests) < 0) {
                fprintf(stderr, "http-hello: --max-requests wants a positive number\n");
                return 2;
            }
        } else if (argv[i][0] != '-' && !named) {
            name = argv[i];
            named = 1;
        } else {
            fprintf(stderr, "usage: http-hello [NAME] [--max-requests N]\n");
            return 2;
        }
    }
    server.listen_fd = find_fd(name);
    if (server.listen_fd < 0) {
        fprintf(stderr, "http-hello: no socket named %s in FD_NAMES (give the workload a "
                        "[[files]] entry of kind \"listen\" with name = \"%s\")\n", name, name);
        return 1;
    }
    if (set_nonblocking(server.listen_fd) < 0) {
        fprintf(stderr, "http-hello: %s (fd %d): %s\n", name, server.listen_fd, strerror(errno));
        return 1;
    }
    return serve(&server, name);
}
