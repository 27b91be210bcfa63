/* CPU-bound kernel: no system calls in the hot loops, so this measures the
 * quality of the generated code. Three parts, each sized from SCALE:
 *
 *   1. sieve of Eratosthenes up to SCALE * 1,000,000 (byte array, branches);
 *   2. a 64-bit xorshift + FNV-1a hash loop, SCALE * 10,000,000 steps
 *      (64-bit integer arithmetic; note `long` is 32-bit on wasm32);
 *   3. a 160 x 160 matrix multiply in doubles, repeated SCALE times
 *      (floating point, memory access patterns).
 *
 * Usage: compute [SCALE]   (default 30: about 1.2 s natively on a 2-vCPU EPYC VM)
 * Prints one line per part and a combined checksum, identical everywhere. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MATRIX_N 160

static uint64_t count_primes(uint32_t limit) {
    unsigned char *composite = calloc(limit + 1, 1);
    if (composite == NULL) {
        perror("calloc");
        exit(1);
    }
    uint64_t count = 0;
    for (uint32_t i = 2; i <= limit; i++) {
        if (composite[i]) {
            continue;
        }
        count++;
        for (uint64_t j = (uint64_t)i * i; j <= limit; j += i) {
            composite[j] = 1;
        }
    }
    free(composite);
    return count;
}

static uint64_t hash_loop(uint64_t steps) {
    const uint64_t fnv_prime = 0x100000001b3ULL;
    uint64_t state = 0x9e3779b97f4a7c15ULL;
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (uint64_t i = 0; i < steps; i++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for (int byte = 0; byte < 8; byte += 2) {
            hash ^= (state >> (8 * byte)) & 0xff;
            hash *= fnv_prime;
        }
    }
    return hash;
}

static double a[MATRIX_N][MATRIX_N], b[MATRIX_N][MATRIX_N], c[MATRIX_N][MATRIX_N];

/* Returns a checksum of the final product's bits, so that every run has to
 * agree to the last bit (IEEE doubles without FMA contraction are exact
 * across x86-64 and wasm). */
static uint64_t matrix_loop(int rounds) {
    for (int i = 0; i < MATRIX_N; i++) {
        for (int j = 0; j < MATRIX_N; j++) {
            a[i][j] = (double)((i * 7 + j * 3) % 17) / 16.0;
            b[i][j] = (double)((i * 5 + j * 11) % 13) / 12.0;
        }
    }
    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < MATRIX_N; i++) {
            for (int j = 0; j < MATRIX_N; j++) {
                c[i][j] = 0.0;
            }
            for (int k = 0; k < MATRIX_N; k++) {
                double aik = a[i][k];
                for (int j = 0; j < MATRIX_N; j++) {
                    c[i][j] += aik * b[k][j];
                }
            }
        }
        /* Feed the product back, scaled to stay finite. */
        for (int i = 0; i < MATRIX_N; i++) {
            for (int j = 0; j < MATRIX_N; j++) {
                a[i][j] = c[i][j] / (double)MATRIX_N;
            }
        }
    }
    uint64_t sum = 0;
    for (int i = 0; i < MATRIX_N; i++) {
        for (int j = 0; j < MATRIX_N; j++) {
            uint64_t bits;
            memcpy(&bits, &c[i][j], sizeof bits);
            sum = sum * 31 + bits;
        }
    }
    return sum;
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 30;
    if (scale < 1 || scale > 1000) {
        fprintf(stderr, "usage: compute [SCALE 1..1000]\n");
        return 2;
    }
    uint64_t primes = count_primes((uint32_t)scale * 1000000u);
    uint64_t hash = hash_loop((uint64_t)scale * 10000000u);
    uint64_t matrix = matrix_loop(scale);
    printf("primes %llu\n", (unsigned long long)primes);
    printf("hash %016llx\n", (unsigned long long)hash);
    printf("matrix %016llx\n", (unsigned long long)matrix);
    printf("checksum %016llx\n", (unsigned long long)(primes ^ hash ^ matrix));
    return 0;
}
