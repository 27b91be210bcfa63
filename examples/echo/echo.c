/* Prints its arguments and environment, as the keep handed them over.
 * Try: wasmkeep run --env GREETING=hi echo.wasm one "two words"
 */
#include <stdio.h>

extern char **environ;

int main(int argc, char **argv) {
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    for (char **entry = environ; *entry; entry++)
        printf("env %s\n", *entry);
    return 0;
}
