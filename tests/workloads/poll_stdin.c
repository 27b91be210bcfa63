/* Waits up to argv[1] milliseconds for stdin with poll_oneoff, then reports. */
#include <stdio.h>
#include <stdlib.h>
#include <wasi/api.h>

int main(int argc, char **argv) {
    __wasi_timestamp_t timeout_ms = argc > 1 ? (__wasi_timestamp_t)atoll(argv[1]) : 1000;
    __wasi_subscription_t subs[2] = {0};
    subs[0].userdata = 1;
    subs[0].u.tag = __WASI_EVENTTYPE_FD_READ;
    subs[0].u.u.fd_read.file_descriptor = 0;
    subs[1].userdata = 2;
    subs[1].u.tag = __WASI_EVENTTYPE_CLOCK;
    subs[1].u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
    subs[1].u.u.clock.timeout = timeout_ms * 1000000ull;
    __wasi_event_t events[2];
    __wasi_size_t count = 0;
    __wasi_errno_t error = __wasi_poll_oneoff(subs, events, 2, &count);
    if (error) {
        printf("poll error %d\n", error);
        return 1;
    }
    for (__wasi_size_t i = 0; i < count; i++) {
        if (events[i].userdata == 1)
            printf("stdin ready, %llu bytes\n", (unsigned long long)events[i].fd_readwrite.nbytes);
        else
            printf("timeout\n");
    }
    return 0;
}
