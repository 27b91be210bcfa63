/* Accepts one connection on fd 3, writes argv[1] bytes to it without
 * blocking (waiting with poll when the socket is full), closes it at once and
 * exits: the last bytes are still on their way when the fd is closed. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long total = argc > 1 ? atol(argv[1]) : 1 << 22;
    int connection = accept(3, NULL, NULL);
    if (connection < 0)
        return 1;
    fcntl(connection, F_SETFL, fcntl(connection, F_GETFL) | O_NONBLOCK);
    static char chunk[65536];
    for (int i = 0; i < (int)sizeof chunk; i++)
        chunk[i] = (char)('a' + i % 26);
    long sent = 0;
    while (sent < total) {
        long want = total - sent < (long)sizeof chunk ? total - sent : (long)sizeof chunk;
        ssize_t n = send(connection, chunk, (size_t)want, 0);
        if (n > 0) {
            sent += n;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd wait = {.fd = connection, .events = POLLOUT};
            poll(&wait, 1, -1);
        } else {
            return 2;
        }
    }
    close(connection);
    return 0;
}
