/* worker.h: the worker process (`aicfn worker`, design.md §2, §4, §6): it owns one
 * device and its model cache, hosts functions (handler + optional snapshot + batching
 * config), listens on its own NNG address, and answers `invoke` and `status`.
 *
 * Invocation path: the NNG callback decodes and validates the request, builds the
 * handler's view of it, and queues it in the function's batcher; the batcher's
 * executor thread acquires the model from the cache (a cold load runs there, never on
 * an NNG thread), (re)creates the handler instance when the model became resident
 * again, calls invoke on the batch, releases the model and replies to each call with
 * its outputs, `cold`, its timings, the batch size and the piggybacked summary.
 * Requests past their deadline are dropped with AICFN_E_TIMEOUT and never executed.
 * The model's load and the handler's init each run on a thread of their own while the
 * executor answers every call whose deadline passes meanwhile (a load or an init may
 * outlast a call's timeout); one that outlives all its calls goes on, and the next
 * batch uses what it made.
 *
 * Functions are added at start (--function) or at run time: worker_add_function, or an
 * invoke that carries a `spec` (the gateway's registration of a function version on
 * this worker) for a function the worker does not hold yet. A spec names a handler
 * library (an absolute path) that the worker dlopens: whoever can reach the worker's
 * address can run code in it, so the address must be reachable by the gateway only
 * (an ipc:// path in a private directory, or a private network), or specs refused.
 * A remote worker (worker_config.fetcher) never opens the spec's paths: it fetches the
 * artifacts they name by hash from the gateway (worker/fetch.h).
 *
 * Not for: routing, the registry or records (the gateway). */
#ifndef AICFN_WORKER_WORKER_H
#define AICFN_WORKER_WORKER_H

#include <stdint.h>

#include "aicfn.h"
#include "common/error.h"
#include "worker/fetch.h"

typedef struct worker worker;

/* Exit status of a worker its gateway ended with `exit` (worker_config.exit_token): a
 * call ran past its timeout, or it stopped answering. A supervisor should restart it. */
#define WORKER_EXIT_ORDERED 3

typedef struct worker_config {
    const char *listen;    /* NNG URL (ipc:// or tcp://); required */
    int link_fd;           /* > 0: also serve the socketpair its gateway made when it spawned this
                              worker (rpc_server_start_link; the gateway's calls come there); taken
                              by worker_start (closed by worker_destroy); 0 or less: none */
    const char *device;    /* "auto", "host", "cuda", "cuda:N"; NULL = "auto" */
    uint64_t memory_bytes; /* cache budget; 0 = the device's free memory (host: AICFN_DEFAULT_HOST_BUDGET) */
    uint32_t load_threads; /* 0 = cores */
    const char *id;        /* worker id in status ("w1"); NULL = "w<pid>" */
    uint32_t overrun_grace_ms;  /* a bundle's part still running this long past its deadline is
                                   answered as an overrun (bundle.h); 0 = AICFN_CALL_GRACE_MS, the
                                   gateway's grace for a call of its own */
    int refuse_specs;           /* 1: an invoke carrying a `spec` for an unknown function is refused
                                   (AICFN_E_FORBIDDEN) instead of loading its handler */
    worker_fetcher *fetcher;    /* NULL: the artifact paths in specs and preloads are opened as they
                                   are (a local worker, or --shared-artifacts). Else a remote worker:
                                   each such path is the gateway's and only its last component, the
                                   artifact's hash, is used: the handler is fetched into the
                                   fetcher's cache when a spec first names the function (off the
                                   NNG callback thread; the call waits for it until its deadline,
                                   then gets AICFN_E_TIMEOUT while the download goes on), the snapshot when
                                   its model is loaded (in the cache's load, single-flight). Borrowed:
                                   it must outlive the worker. */
    const char *exit_token;     /* a registered (remote) worker's secret, sent in its `register`:
                                   an `exit` message carrying it ends the process at once (exit
                                   status WORKER_EXIT_ORDERED), which is how its gateway kills a
                                   worker stuck in a call. NULL/"": `exit` is refused (a local
                                   worker, which its gateway kills with SIGKILL). Copied. */
    uint32_t fn_idle_retire_ms; /* a function registered by a spec and not called for this long is
                                   removed (its handler, instance and threads; not its model, which
                                   the cache's LRU keeps or evicts), checked at each status request;
                                   the next call's spec registers it again. 0 =
                                   AICFN_WORKER_FN_IDLE_RETIRE_MS */
} worker_config;

/* One function to host. Strings are copied. */
typedef struct worker_fn_config {
    const char *name;      /* 1..AICFN_MAX_NAME_BYTES-1 bytes */
    uint32_t version;      /* 0 = unversioned */
    const char *handler;   /* path of the handler .so */
    const char *snapshot;  /* snapshot path, NULL/"" = no model */
    const char *model_key; /* cache identity; NULL = the snapshot path */
    uint32_t max_batch;    /* 0 = AICFN_DEFAULT_MAX_BATCH */
    uint64_t max_delay_us;
    uint64_t timeout_us; /* default deadline; 0 = AICFN_DEFAULT_TIMEOUT_MS */
    uint32_t max_queue;  /* 0 = AICFN_DEFAULT_QUEUE_PER_FUNCTION */
    uint32_t n_params;   /* handler config params */
    const aicfn_param *params;
} worker_fn_config;

/* Opens the device and the cache. Does not listen yet. Blocking (device open). */
int worker_create(const worker_config *cfg, worker **out, aicfn_error *err);

/* Adds a function: loads its handler (the ABI check happens here: AICFN_E_ABI with
 * both versions named) and starts its batcher. AICFN_E_EXISTS when a function of that
 * name and version exists. Thread-safe; may be called while serving (the seam for the
 * gateway registering functions on a worker). */
int worker_add_function(worker *w, const worker_fn_config *fn, aicfn_error *err);

/* Removes function `name` at `version`: new calls get AICFN_E_NOT_FOUND at once, calls
 * already accepted finish (or expire) first, then fini runs and the handler is unloaded;
 * its model is evicted when no other function uses it and nothing pins it. Waits at most
 * the function's timeout plus AICFN_CALL_GRACE_MS for its calls; past that the function
 * is retired and freed by worker_destroy. AICFN_E_NOT_FOUND when it is not loaded.
 * Thread-safe; blocks. Not from a handler or an NNG callback. */
int worker_remove_function(worker *w, const char *name, uint32_t version, aicfn_error *err);

/* Starts listening, and serving the link when config's link_fd was given. AICFN_E_INVALID
 * for a refused or busy address. */
int worker_start(worker *w, aicfn_error *err);

/* The URL bound (real port for tcp port 0); NULL before worker_start. */
const char *worker_url(const worker *w);

/* Drains: from now on new invocations are refused with AICFN_E_UNAVAILABLE; waits
 * until every call in flight has been answered (each is bounded by its deadline), at
 * most `max_wait_ms` (0 = the longest function or preload timeout plus AICFN_CALL_GRACE_MS); then,
 * if loads no reply carried are still unreported (protocol.md section 5, w.loads), up to
 * 3 x AICFN_WORKER_POLL_MS for a status request to take them, within the same bound.
 * Returns the number of calls still in flight (0 on a clean drain). Thread-safe; blocks. */
unsigned worker_drain(worker *w, uint32_t max_wait_ms);

/* Stops serving, calls every instance's fini, frees the device memory and everything
 * else. Call after worker_drain for a graceful exit. NULL accepted. Blocks. */
void worker_destroy(worker *w);

#endif
