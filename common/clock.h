/* clock.h: the clocks every timing and deadline uses. Monotonic microseconds for
 * durations and deadlines; wall-clock microseconds for records. Thread-safe. */
#ifndef AICFN_COMMON_CLOCK_H
#define AICFN_COMMON_CLOCK_H

#include <stdint.h>

/* Microseconds on CLOCK_MONOTONIC: for durations and deadlines within one process. */
uint64_t clock_now_us(void);

/* Microseconds since the Unix epoch (CLOCK_REALTIME): for records and logs. */
uint64_t clock_wall_us(void);

/* Fills a struct timespec (CLOCK_REALTIME) for pthread_cond_timedwait from a monotonic
 * deadline in µs; 0 means "no deadline" and gives a point far in the future. */
struct timespec;
void clock_deadline_to_realtime(uint64_t deadline_mono_us, struct timespec *out);

#endif
