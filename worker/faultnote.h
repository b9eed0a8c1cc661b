/* faultnote.h: which calls a worker was running when a handler crashed it.
 *
 * A worker started by the gateway's pool gets a fault note file (--fault-note). Around
 * each handler call (init and invoke) the executing thread names the calls it serves;
 * when that thread faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT), a signal handler
 * appends one line to the file before the process dies with the signal's default
 * action:
 *     fault <signo> <function> <version> <n> <id> <id> ...\n
 * The gateway reads the note (gateway/pool.h gw_pool_read_fault_note) when the worker is gone and charges the
 * crash to those calls alone (its crash back-off), not to every call that was in flight on the worker (other
 * functions' calls, batch-mates of another function). A death without a note (a SIGKILL, the OOM killer,
 * exit(), a stack overflow, a remote worker) says nothing of who caused it.
 *
 * Not for: reporting the crash (the gateway logs the exit status) or core dumps. */
#ifndef AICFN_WORKER_FAULTNOTE_H
#define AICFN_WORKER_FAULTNOTE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* The most call ids one line names (a larger batch names its first ones). */
#define WORKER_FAULT_NOTE_MAX_IDS 4096

/* Opens (truncating) `path` and installs the signal handlers. Once per process; a second
 * call is AICFN_E_INVALID. AICFN_E_IO when the file cannot be opened. */
int worker_fault_note_open(const char *path, aicfn_error *err);

/* Names the calls the calling thread is about to run function `fn` version `ver`'s
 * handler for (fn and ids[0..n) borrowed until worker_fault_note_leave; n is capped at
 * WORKER_FAULT_NOTE_MAX_IDS). The function goes in the note because call ids are the
 * clients' (two calls in flight may share one). Cheap (thread-local stores); a no-op
 * when no note is open. */
void worker_fault_note_enter(const char *fn, uint32_t ver, const uint64_t *ids, uint32_t n);
void worker_fault_note_leave(void);

#endif
