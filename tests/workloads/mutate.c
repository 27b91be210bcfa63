/* Tries every kind of change under DIR (argv[1]) and reports each outcome as
 * "<what>: ok" or "<what>: refused <errno>". Used on a read-only preopen. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char path_buffer[4][512];

static const char *in(int slot, const char *dir, const char *name) {
    snprintf(path_buffer[slot], sizeof path_buffer[slot], "%s/%s", dir, name);
    return path_buffer[slot];
}

static void report(const char *what, int result) {
    if (result < 0)
        printf("%s: refused %s\n", what, strerror(errno));
    else
        printf("%s: ok\n", what);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/data";
    int fd = open(in(0, dir, "new.txt"), O_WRONLY | O_CREAT, 0644);
    report("create", fd);
    if (fd >= 0)
        close(fd);
    fd = open(in(0, dir, "existing.txt"), O_WRONLY);
    report("open for writing", fd);
    if (fd >= 0)
        close(fd);
    fd = open(in(0, dir, "existing.txt"), O_RDONLY | O_TRUNC);
    report("truncate on open", fd);
    if (fd >= 0)
        close(fd);
    report("mkdir", mkdir(in(0, dir, "newdir"), 0755));
    report("unlink", unlink(in(0, dir, "existing.txt")));
    report("rename", rename(in(0, dir, "existing.txt"), in(1, dir, "moved.txt")));
    report("symlink", symlink("existing.txt", in(0, dir, "link")));
    report("link", link(in(0, dir, "existing.txt"), in(1, dir, "hardlink")));
    report("rmdir", rmdir(in(0, dir, "subdir")));
    fd = open(in(0, dir, "existing.txt"), O_RDONLY);
    char buffer[64] = {0};
    report("read", fd < 0 ? -1 : (int)read(fd, buffer, sizeof buffer - 1));
    if (fd >= 0)
        close(fd);
    printf("content: %s\n", buffer);
    return 0;
}
