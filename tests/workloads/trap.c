/* Traps in a function whose name the tests expect in the error message. */
#include <stdio.h>

__attribute__((noinline)) void crash_here(volatile int *where) {
    *where = 1;
    __builtin_trap();
}

int main(void) {
    volatile int x = 0;
    puts("before the trap");
    fflush(stdout);
    crash_here(&x);
    return 0;
}
