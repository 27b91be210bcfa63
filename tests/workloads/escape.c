/* Hostile: tries to read each path given as an argument and reports what
 * happened, one line per path: "PATH: refused <errno>" or "PATH: READ <bytes>".
 * Then guesses fds 0..127 and reports any it can read from.
 * The tests run it with a preopened /sandbox and assert nothing was read. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void try_read(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("%s: refused %s\n", path, strerror(errno));
        return;
    }
    char buffer[64] = {0};
    ssize_t n = read(fd, buffer, sizeof buffer - 1);
    if (n < 0)
        printf("%s: refused on read %s\n", path, strerror(errno));
    else
        printf("%s: READ %.*s\n", path, (int)n, buffer);
    close(fd);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        try_read(argv[i]);
    for (int fd = 3; fd < 128; fd++) {
        char buffer[64];
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n > 0)
            printf("fd %d: READ %.*s\n", fd, (int)n, buffer);
    }
    puts("done");
    return 0;
}
