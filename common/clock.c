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

int clock_cond_init(pthread_cond_t *cv) {
    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc) return rc;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    rc = pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
    return rc;
}

void clock_deadline_to_timespec(uint64_t deadline_mono_us, struct timespec *out) {
    uint64_t target = deadline_mono_us ? deadline_mono_us : clock_now_us() + 3600ull * 24 * 365 * 1000000ull;
    out->tv_sec = (time_t)(target / 1000000u);
    out->tv_nsec = (long)(target % 1000000u) * 1000;
}
