/* pool.h: the gateway's local worker processes (`aicfn worker` children).
 *
 * The pool starts workers on their own ipc:// addresses under a run directory, each
 * with `--device` and a cache budget of `worker_memory` bytes, reaps them when they
 * exit, and stops them: gently (SIGTERM: the worker drains its calls, says goodbye and
 * exits) with a SIGKILL once a grace period has passed, or at once (SIGKILL, for a
 * worker stuck past its call's timeout). One thread owns the children: it forks them
 * (so their PR_SET_PDEATHSIG follows a thread that lives as long as the pool, and a
 * gateway killed with -9 takes its workers with it (SIGKILL)), reaps them with waitpid and
 * escalates overdue SIGTERMs. A worker that outlives its SIGKILL (asleep uninterruptibly,
 * in a GPU driver say) is logged; destroying the pool gives up on it after
 * reap_give_up_us, so a stopping gateway is never held by it.
 *
 * Not for: deciding when to start or stop a worker (gateway.c does, from the router's
 * decisions and its idle timer), talking to workers (workerlink.c), or remote workers
 * (they register themselves; the pool never sees them). */
#ifndef AICFN_GATEWAY_POOL_H
#define AICFN_GATEWAY_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/error.h"
#include "common/tunables.h"

#define GW_POOL_ADDR_MAX 256

typedef struct gw_pool gw_pool;

typedef struct gw_pool_config {
    const char *exe;               /* the aicfn binary; NULL = this process's own (/proc/self/exe) */
    const char *run_dir;           /* directory for the workers' ipc sockets (must exist) */
    const char *device;            /* "auto", "host" or "cuda"; NULL = "auto" */
    uint64_t worker_memory;        /* each worker's cache budget in bytes; 0 = the worker's default */
    uint64_t kill_grace_us;        /* SIGTERM -> SIGKILL escalation; 0 = AICFN_WORKER_KILL_GRACE_MS */
    uint64_t reap_give_up_us;      /* SIGKILL -> given up on; 0 = AICFN_WORKER_REAP_GIVE_UP_MS */
    const char *const *extra_args; /* NULL-terminated extra arguments for every worker, or NULL */
    uint32_t first_id;             /* id (and name w<id>) of the first worker started; 0 = 1 */
} gw_pool_config;

/* Called from the pool's thread, with no pool lock held, once per worker that exited
 * (after it was reaped). `wait_status` is waitpid's. May call gw_pool_* (not destroy).
 * A worker given up on while the pool is destroyed gets no call. */
typedef void (*gw_pool_exit_fn)(void *arg, uint32_t id, pid_t pid, int wait_status);

/* Called from the pool's thread, with no pool lock held, once per worker that says it
 * listens (it wrote to the pipe it got as --ready-fd); never for one that exited first.
 * May call gw_pool_* (not destroy). */
typedef void (*gw_pool_ready_fn)(void *arg, uint32_t id);

/* Creates the pool and starts its thread. The config strings are copied. on_exit and
 * on_ready may be NULL; both get `arg`.
 * Returns AICFN_OK, AICFN_E_INVALID or AICFN_E_NOMEM/AICFN_E_IO. */
int gw_pool_create(const gw_pool_config *cfg, gw_pool_exit_fn on_exit, gw_pool_ready_fn on_ready, void *arg,
                   gw_pool **out, aicfn_error *err);

/* Starts one worker. On success fills *id (unique for the pool's life, never 0), the
 * ipc:// address it will listen on (addr, addr_len >= GW_POOL_ADDR_MAX), and its pid.
 * Returns once the child exists (not once it listens: on_ready says so, or
 * gw_pool_ready, then dial it). Thread-safe, on_exit included; blocks for the fork only.
 * Fails with AICFN_E_IO when the process cannot be started (the message names the
 * errno), AICFN_E_CANCELED once the pool is being destroyed. */
int gw_pool_spawn(gw_pool *p, uint32_t *id, char *addr, size_t addr_len, pid_t *pid, aicfn_error *err);

/* gw_pool_spawn, and the worker also gets one end of a new socketpair (--link-fd), which
 * carries the gateway's calls (rpc_client_open_link on *link_fd, the caller's to close). */
int gw_pool_spawn_linked(gw_pool *p, uint32_t *id, char *addr, size_t addr_len, pid_t *pid, int *link_fd,
                         aicfn_error *err);

/* Asks worker `id` to drain and exit (SIGTERM); SIGKILL follows after the grace period
 * if it is still alive. Returns AICFN_OK, or AICFN_E_NOT_FOUND when it already exited.
 * Thread-safe, never blocks. */
int gw_pool_terminate(gw_pool *p, uint32_t id);

/* Kills worker `id` now (SIGKILL). Same returns as gw_pool_terminate. */
int gw_pool_kill(gw_pool *p, uint32_t id);

/* Workers started and not yet reaped (terminating ones included). Thread-safe. */
unsigned gw_pool_live(gw_pool *p);

/* True once worker `id` said it listens (on_ready has been or is being called), and
 * until it is reaped. Thread-safe. */
bool gw_pool_ready(gw_pool *p, uint32_t id);

/* The pid of worker `id`, or -1 when it has been reaped. Thread-safe. */
pid_t gw_pool_pid(gw_pool *p, uint32_t id);

/* ---- Fault notes (worker/faultnote.h) ----
 * Each worker the pool starts gets --fault-note DIR/wP-N.fault beside its ipc socket
 * DIR/wP-N.ipc: when a handler crashes it, the worker appends
 *     fault <signo> <function> <version> <n> <id> <id> ...\n
 * naming the function and the calls that handler call served. */
#define GW_FAULT_NOTE_MAX_IDS 4096 /* WORKER_FAULT_NOTE_MAX_IDS */

typedef struct gw_fault_note {
    int signo;
    char fn[AICFN_MAX_NAME_BYTES];
    uint32_t ver;
    uint32_t n; /* ids in ids[] (the first GW_FAULT_NOTE_MAX_IDS) */
    uint64_t ids[GW_FAULT_NOTE_MAX_IDS];
} gw_fault_note;

/* The fault note path of the pool's worker at `addr` (ipc://DIR/wP-N.ipc). False when
 * addr is not such an address or out is too small. */
bool gw_pool_fault_note_path(const char *addr, char *out, size_t cap);

/* Reads and removes the fault note of the worker at `addr` into *out. False when there
 * is none (the worker did not fault, or died otherwise), or its first line is not
 * exactly the format above (the note is the worker's: untrusted). Blocks on a small read. */
bool gw_pool_take_fault_note(const char *addr, gw_fault_note *out);

/* SIGTERMs every worker, waits up to the grace period for them to exit, SIGKILLs the
 * rest, reaps all (calling on_exit for each), stops the thread and frees the pool.
 * NULL is accepted. Must not be called from on_exit. Blocks up to the grace period. */
void gw_pool_destroy(gw_pool *p);

#endif
