/* clock.c: monotonic and wall clocks in microseconds. */
#include "common/clock.h"

#include <time.h>

uint64_t clock_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t clock_wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void clock_deadline_to_realtime(uint64_t deadline_mono_us, struct timespec *out) {
    uint64_t now_mono = clock_now_us();
    uint64_t wall = clock_wall_us();
    uint64_t target;
    if (deadline_mono_us == 0)
        target = wall + 3600ull * 24 * 365 * 1000000ull;
    else if (deadline_mono_us <= now_mono)
        target = wall;
    else
        target = wall + (deadline_mono_us - now_mono);
    out->tv_sec = (time_t)(target / 1000000u);
    out->tv_nsec = (long)(target % 1000000u) * 1000;
}
