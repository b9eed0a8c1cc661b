/* clock.h: the clocks every timing and deadline uses. Monotonic microseconds for
 * durations and deadlines; wall-clock microseconds for records. Thread-safe. */
#ifndef AICFN_COMMON_CLOCK_H
#define AICFN_COMMON_CLOCK_H

#include <stdint.h>

/* Microseconds on CLOCK_MONOTONIC: for durations and deadlines within one process. */
uint64_t clock_now_us(void);

/* Microseconds since the Unix epoch (CLOCK_REALTIME): for records and logs. */
uint64_t clock_wall_us(void);

/* Condition variables whose timed waits run on CLOCK_MONOTONIC, so that a step of the
 * wall clock (NTP, an operator) never makes a wait late or early. Every condition
 * variable of the project is made with clock_cond_init and waited with the timespec of
 * clock_deadline_to_timespec. Returns pthread_cond_init's result. */
#include <pthread.h>
int clock_cond_init(pthread_cond_t *cv);

/* Fills a struct timespec (CLOCK_MONOTONIC) for pthread_cond_timedwait on a condition
 * variable made by clock_cond_init, from a monotonic deadline in µs; 0 means "no
 * deadline" and gives a point far in the future. */
struct timespec;
void clock_deadline_to_timespec(uint64_t deadline_mono_us, struct timespec *out);

#endif
