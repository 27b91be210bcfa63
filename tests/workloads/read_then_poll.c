/* Reads one byte of stdin, then asks poll_oneoff whether more is there
 * (timeout 0), then reads the rest: read-ahead in the keep must not hide
 * buffered input from poll, nor lose or reorder it. */
#include <stdio.h>
#include <unistd.h>
#include <wasi/api.h>

int main(void) {
    char first;
    if (read(0, &first, 1) != 1)
        return 1;
    __wasi_subscription_t subs[2] = {0};
    subs[0].userdata = 1;
    subs[0].u.tag = __WASI_EVENTTYPE_FD_READ;
    subs[0].u.u.fd_read.file_descriptor = 0;
    subs[1].userdata = 2;
    subs[1].u.tag = __WASI_EVENTTYPE_CLOCK;
    subs[1].u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
    subs[1].u.u.clock.timeout = 0;
    __wasi_event_t events[2];
    __wasi_size_t count = 0;
    if (__wasi_poll_oneoff(subs, events, 2, &count))
        return 2;
    int ready = 0;
    for (__wasi_size_t i = 0; i < count; i++)
        if (events[i].userdata == 1)
            ready = 1;
    char rest[64];
    ssize_t n = read(0, rest, sizeof rest);
    printf("first=%c ready=%d rest=%.*s", first, ready, (int)(n > 0 ? n : 0), rest);
    return 0;
}
