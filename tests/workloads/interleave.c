/* Alternates small writes to stdout and stderr: with both on one pipe the
 * reader must see them in the order written, despite the keep's buffering. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    char line[32];
    for (int i = 0; i < 200; i++) {
        int n = snprintf(line, sizeof line, "%s %d\n", i % 3 ? "out" : "err", i);
        if (write(i % 3 ? 1 : 2, line, (size_t)n) != n)
            return 1;
    }
    return 0;
}
