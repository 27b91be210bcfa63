/* The smallest workload: one line to stdout. */
#include <stdio.h>

int main(void) {
    puts("Hello from inside a keep!");
    return 0;
}
