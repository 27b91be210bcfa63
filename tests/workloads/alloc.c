/* Allocates 1 MiB blocks until malloc fails (or argv[1] MiB); prints how many
 * MiB it got. Under a memory ceiling the guest sees allocation fail. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *volatile blocks[4096];

int main(int argc, char **argv) {
    long limit_mib = argc > 1 ? atol(argv[1]) : 4096;
    long got = 0;
    while (got < limit_mib && got < 4096) {
        char *block = malloc(1 << 20);
        if (!block)
            break;
        memset(block, (int)got, 1 << 20);
        blocks[got++] = block;
    }
    long check = 0;
    for (long i = 0; i < got; i++)
        check += blocks[i][i % (1 << 20)];
    printf("allocated %ld MiB (check %ld)\n", got, check);
    return 0;
}
