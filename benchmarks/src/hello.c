/* Cold start: the smallest useful program. What is timed is everything
 * around it: process start, runtime start, module load, instantiation. */
#include <stdio.h>

int main(void) {
    puts("hello, world");
    return 0;
}
