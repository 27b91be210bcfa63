/* Copies stdin to stdout. */
#include <unistd.h>

int main(void) {
    char buffer[65536];
    ssize_t n;
    while ((n = read(0, buffer, sizeof buffer)) > 0) {
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(1, buffer + done, (size_t)(n - done));
            if (w < 0)
                return 1;
            done += w;
        }
    }
    return n < 0 ? 1 : 0;
}
