/* Many small writes: COUNT calls of write(1, buf, 16), no stdio buffering,
 * so each one is a system call natively and a WASI fd_write under Wasm.
 * This measures the fixed cost of a host call.
 *
 * Usage: small_writes [COUNT]   (default 1000000)
 * Each record is a 15-digit counter and a newline, so the output is checkable. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define RECORD 16

int main(int argc, char **argv) {
    long long count = argc > 1 ? atoll(argv[1]) : 1000000;
    if (count < 0) {
        fprintf(stderr, "usage: small_writes [COUNT]\n");
        return 2;
    }
    char buf[RECORD];
    for (long long i = 0; i < count; i++) {
        /* Fill the digits by hand: snprintf would cost more than the write. */
        long long n = i;
        for (int d = RECORD - 2; d >= 0; d--) {
            buf[d] = (char)('0' + n % 10);
            n /= 10;
        }
        buf[RECORD - 1] = '\n';
        if (write(1, buf, RECORD) != RECORD) {
            perror("write");
            return 1;
        }
    }
    return 0;
}
