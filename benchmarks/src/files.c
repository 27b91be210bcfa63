/* File-system work in one directory, as a build or a mail server does it:
 * COUNT small files (1 KiB each) are created, stat'ed, read back, listed,
 * renamed and deleted. Under Wasm every step is a WASI path call on a
 * preopened directory, so this measures path resolution and host calls.
 *
 * Usage: files DIR [COUNT]   (DIR must exist and be empty; default 2000)
 * Prints what each phase saw and a checksum, identical everywhere. */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_SIZE 1024
#define PATH_MAX_LEN 4096

static const char *dir;

static void fail(const char *what, const char *path) {
    fprintf(stderr, "files: %s %s: ", what, path);
    perror(NULL);
    exit(1);
}

static void path_of(char *out, char prefix, int i) {
    snprintf(out, PATH_MAX_LEN, "%s/%c%05d", dir, prefix, i);
}

static void fill(unsigned char *buf, int i) {
    for (int k = 0; k < FILE_SIZE; k++) {
        buf[k] = (unsigned char)((i * 131 + k * 7) & 0xff);
    }
}

static uint64_t fnv1a(uint64_t hash, const unsigned char *data, size_t len) {
    for (size_t k = 0; k < len; k++) {
        hash ^= data[k];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

static void create_files(int count) {
    char path[PATH_MAX_LEN];
    unsigned char buf[FILE_SIZE];
    for (int i = 0; i < count; i++) {
        path_of(path, 'f', i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            fail("create", path);
        }
        fill(buf, i);
        if (write(fd, buf, FILE_SIZE) != FILE_SIZE) {
            fail("write", path);
        }
        close(fd);
    }
}

static long long stat_files(int count) {
    char path[PATH_MAX_LEN];
    long long total = 0;
    for (int i = 0; i < count; i++) {
        path_of(path, 'f', i);
        struct stat st;
        if (stat(path, &st) != 0) {
            fail("stat", path);
        }
        total += (long long)st.st_size;
    }
    return total;
}

static uint64_t read_files(int count) {
    char path[PATH_MAX_LEN];
    unsigned char buf[FILE_SIZE];
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (int i = 0; i < count; i++) {
        path_of(path, 'f', i);
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            fail("open", path);
        }
        if (read(fd, buf, FILE_SIZE) != FILE_SIZE) {
            fail("read", path);
        }
        close(fd);
        hash = fnv1a(hash, buf, FILE_SIZE);
    }
    return hash;
}

/* Directory order differs between file systems, so the names are combined
 * with a sum, which does not depend on it. */
static uint64_t list_files(int *entries) {
    DIR *d = opendir(dir);
    if (d == NULL) {
        fail("opendir", dir);
    }
    uint64_t sum = 0;
    *entries = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (entry->d_name[0] == '.') {
            continue;
        }
        (*entries)++;
        sum += fnv1a(0xcbf29ce484222325ULL, (const unsigned char *)entry->d_name,
                     strlen(entry->d_name));
    }
    closedir(d);
    return sum;
}

static void rename_files(int count) {
    char from[PATH_MAX_LEN], to[PATH_MAX_LEN];
    for (int i = 0; i < count; i++) {
        path_of(from, 'f', i);
        path_of(to, 'g', i);
        if (rename(from, to) != 0) {
            fail("rename", from);
        }
    }
}

static void delete_files(int count) {
    char path[PATH_MAX_LEN];
    for (int i = 0; i < count; i++) {
        path_of(path, 'g', i);
        if (unlink(path) != 0) {
            fail("unlink", path);
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: files DIR [COUNT]\n");
        return 2;
    }
    dir = argv[1];
    int count = argc > 2 ? atoi(argv[2]) : 2000;
    if (count < 1 || count > 99999) {
        fprintf(stderr, "files: COUNT must be 1..99999\n");
        return 2;
    }
    int listed, left;
    create_files(count);
    long long bytes = stat_files(count);
    uint64_t content = read_files(count);
    uint64_t names = list_files(&listed);
    rename_files(count);
    delete_files(count);
    list_files(&left);
    printf("files %d bytes %lld listed %d left %d\n", count, bytes, listed, left);
    printf("content %016llx names %016llx\n", (unsigned long long)content,
           (unsigned long long)names);
    return 0;
}
