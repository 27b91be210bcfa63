/* File processing on a preopened directory: counts lines, words and bytes of
 * every regular file in DIR (like `wc`), prints one line per file and a total,
 * and with a second argument writes the report to that file as well.
 *
 *   wasmkeep run --dir-ro ./texts::/data --dir ./out::/out wordcount.wasm /data /out/report.txt
 *
 * Exit status: 0 on success, 1 if DIR cannot be read, 2 on bad usage.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct counts {
    long long lines, words, bytes;
};

static int count_file(const char *path, struct counts *out) {
    FILE *file = fopen(path, "rb");
    if (!file)
        return -1;
    int in_word = 0, c;
    while ((c = getc(file)) != EOF) {
        out->bytes++;
        if (c == '\n')
            out->lines++;
        if (isspace(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            out->words++;
        }
    }
    int failed = ferror(file);
    fclose(file);
    return failed ? -1 : 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s DIR [REPORT]\n", argv[0]);
        return 2;
    }
    const char *dir_path = argv[1];
    DIR *dir = opendir(dir_path);
    if (!dir) {
        fprintf(stderr, "wordcount: cannot open %s: %s\n", dir_path, strerror(errno));
        return 1;
    }
    char *names[4096];
    size_t count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) && count < sizeof names / sizeof *names) {
        if (entry->d_type == DT_REG)
            names[count++] = strdup(entry->d_name);
    }
    closedir(dir);
    qsort(names, count, sizeof *names, by_name);

    FILE *report = argc == 3 ? fopen(argv[2], "w") : NULL;
    if (argc == 3 && !report) {
        fprintf(stderr, "wordcount: cannot write %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    struct counts total = {0, 0, 0};
    for (size_t i = 0; i < count; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir_path, names[i]);
        struct counts one = {0, 0, 0};
        if (count_file(path, &one) != 0) {
            fprintf(stderr, "wordcount: cannot read %s: %s\n", path, strerror(errno));
            continue;
        }
        total.lines += one.lines;
        total.words += one.words;
        total.bytes += one.bytes;
        printf("%8lld %8lld %10lld %s\n", one.lines, one.words, one.bytes, names[i]);
        if (report)
            fprintf(report, "%lld %lld %lld %s\n", one.lines, one.words, one.bytes, names[i]);
        free(names[i]);
    }
    printf("%8lld %8lld %10lld total (%zu files)\n", total.lines, total.words, total.bytes, count);
    if (report) {
        fprintf(report, "%lld %lld %lld total\n", total.lines, total.words, total.bytes);
        fclose(report);
    }
    return 0;
}
