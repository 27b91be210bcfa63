/* Bulk I/O: copy stdin to stdout in 64 KiB chunks with read()/write() until
 * end of file. This measures the cost of moving bytes through the runtime.
 *
 * Usage: copy < INPUT > OUTPUT */
#include <stdio.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static char buf[CHUNK];

int main(void) {
    for (;;) {
        ssize_t got = read(0, buf, CHUNK);
        if (got == 0) {
            return 0;
        }
        if (got < 0) {
            perror("read");
            return 1;
        }
        for (ssize_t done = 0; done < got;) {
            ssize_t put = write(1, buf + done, (size_t)(got - done));
            if (put <= 0) {
                perror("write");
                return 1;
            }
            done += put;
        }
    }
}
