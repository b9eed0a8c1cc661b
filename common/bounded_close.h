/* bounded_close.h: closing NNG sockets with a bound on the wait.
 *
 * NNG 1.5.2's nng_close can hang for ever: its reaper thread waits on a pipe's task
 * that never runs (nng #1813, fixed upstream after 1.5.2). rpc_server_destroy's order
 * (every context stopped and closed first) makes it rare, not impossible: a server
 * closed while a peer keeps sending hangs about once in a thousand closes under load.
 * The reaper is one thread per process, so after one hang every later close in the
 * process hangs as well, and with it whoever called it: a gateway dropping a worker, a
 * worker or gateway shutting down with acknowledged rows still to write.
 *
 * So rpc_server_destroy and rpc_client_close run their NNG close through
 * bounded_close_run: on a thread of its own, waited for at most a bound
 * (AICFN_NNG_CLOSE_BOUND_MS). Past the bound the caller goes on; the closing thread
 * keeps what it closes (and frees it if NNG ever returns), and the process counts the
 * close as stuck and logs an error naming it. A process with a stuck close has a wedged
 * NNG: the gateway then fails /v2/health/live and counts aicfn_nng_stuck_closes_total,
 * so that it is restarted.
 * Not for: closing rpc_link sockets (plain file descriptors, no reaper). */
#ifndef AICFN_COMMON_BOUNDED_CLOSE_H
#define AICFN_COMMON_BOUNDED_CLOSE_H

#include <stdbool.h>
#include <stdint.h>

typedef void (*bounded_close_fn)(void *arg);

/* Runs close(arg) on a new thread and waits up to bound_ms for it to return.
 * true: it returned; the caller goes on with arg as before (release is not called).
 * false: it did not: the error is logged (naming `what`), the stuck count goes up, and
 * arg now belongs to that thread, which calls release(arg) once close returns, if ever.
 * When no thread can be made, close(arg) runs on the caller's thread (unbounded) and the
 * result is true. */
bool bounded_close_run(bounded_close_fn close, bounded_close_fn release, void *arg, unsigned bound_ms,
                       const char *what);

/* Closes in this process that passed their bound (their close may have returned since:
 * a wedged reaper is not known to have recovered). */
uint64_t bounded_close_stuck(void);

#endif
