/* gateway.h: the gateway process (design.md §2, §6): its configuration and lifecycle,
 * and THE call execution path that every front (NNG, HTTP) submits invocations to.
 *
 * gw_start opens aicfn.db and the artifact store under the data directory, starts the
 * ledger writer, the local worker pool, a maintenance thread (status polls, idle
 * timeouts, queue deadlines, min_workers, and each function's scaling: keep-warm loads
 * and idle unloads, docs/manifest.md) and the NNG client front on `listen`.
 * gw_invoke_submit resolves the function, checks its queue and crash back-off, routes
 * the call (router.h) to a worker (starting one when the pool may grow, or queueing it
 * until its deadline), forwards it with the function's spec, retries an idempotent
 * call once on another worker when its worker dies, records one ledger row per call and
 * one cold_starts row per cold start (and counts each in the gateway's one metrics
 * registry, metrics.h: calls, cold starts with their phases, evictions, thrash reloads,
 * worker restarts), and reports the outcome through a callback.
 *
 * Not for: wire encoding details (common/wire.h), SQLite statements (registry/ledger),
 * process spawning (pool.h), the routing rule itself (router.h), HTTP (http.c). */
#ifndef AICFN_GATEWAY_GATEWAY_H
#define AICFN_GATEWAY_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/rpc.h"
#include "common/wire.h"

typedef struct gw_gateway gw_gateway;

/* Bundles (docs/protocol.md §9): several short calls per message to a busy worker. They
 * pay where a message is costly: NNG's REQ/REP (remote workers) moves each through four
 * or five thread hand-offs; a local worker's socketpair link (rpc_link.h) adds one
 * wake-up, and there holding calls back cost more than it saved (bench-invoke's
 * "bundles" case: 0.84-0.95 of the calls/s without, 16 clients, this stop's runs). */
typedef enum gw_bundle_mode {
    GW_BUNDLES_AUTO = 0, /* on NNG links only (remote workers) */
    GW_BUNDLES_ALWAYS,   /* on every link */
    GW_BUNDLES_NEVER,    /* every call alone */
} gw_bundle_mode;

typedef struct gw_config {
    const char *listen;            /* client front; NULL = AICFN_DEFAULT_GATEWAY */
    const char *data_dir;          /* aicfn.db + artifacts/ + run/; NULL = AICFN_DEFAULT_DATA_DIR */
    uint32_t min_workers;          /* local workers kept running */
    uint32_t max_workers;          /* local workers at most (0: none; remote ones only) */
    uint64_t idle_timeout_us;      /* local worker without calls this long: drained (0 = default),
                                      unless a function's scaling.min_workers needs it */
    uint64_t worker_memory;        /* each local worker's cache budget; 0 = the worker's default */
    const char *device;            /* local workers' --device: auto, host, cuda; NULL = auto */
    const char *worker_exe;        /* aicfn binary for workers; NULL = this process */
    bool insecure_local;           /* no API keys required (callers are tenant "local") */
    uint64_t response_cache_bytes; /* response cache budget (respcache.h); 0 = the default,
                                      AICFN_DEFAULT_RESPONSE_CACHE_BYTES */
    gw_bundle_mode bundles;        /* when calls go to a busy worker in bundles (docs/protocol.md §9) */
    uint64_t upload_idle_us;       /* an upload without a chunk this long is aborted and its
                                      temporary file removed (0 = AICFN_UPLOAD_IDLE_TIMEOUT_MS) */
    uint32_t max_requests;         /* client requests the NNG front holds at once (tunables.h);
                                      0 = AICFN_GW_FRONT_MAX_REQUESTS, else at least 16 */
    uint32_t max_remote_workers;   /* registered workers at once; 0 = the room max_workers leaves of
                                      AICFN_GW_MAX_LIVE_WORKERS (gw_start refuses more) */
    uint64_t fn_cache_idle_us;     /* a function version's cached entry (its config, paths, queue,
                                      crash records) not called for this long is dropped and read
                                      again from aicfn.db when next called; 0 = AICFN_GW_FN_CACHE_IDLE_MS */
} gw_config;

/* Starts a gateway. Returns AICFN_OK with *out, or the error of the first step that
 * failed (database, artifact store, listen address) with everything undone. */
int gw_start(const gw_config *cfg, gw_gateway **out, aicfn_error *err);

/* Stops the front, fails queued calls with AICFN_E_CANCELED, waits for calls in flight
 * (bounded by their timeouts), drains local workers, flushes the ledger and frees
 * everything. NULL accepted. Blocks. */
void gw_stop(gw_gateway *gw);

/* The client front's bound URL (the real port when listen used port 0). */
const char *gw_listen_url(const gw_gateway *gw);

/* The outcome of one invocation, given to the done callback. */
typedef struct gw_invoke_result {
    uint64_t id;                      /* the request's id */
    int code;                         /* AICFN_OK, or the call's error */
    const char *message;              /* error text ("" when ok); valid during the callback */
    rpc_msg *reply;                   /* the worker's reply message (msgpack, the request's id), or NULL
                                         when the gateway failed the call itself. Owned by the callback:
                                         forward it (rpc_reply_msg) or free it (rpc_msg_free). */
    const wire_invoke_reply *decoded; /* that reply decoded (outputs, cold, timing); valid during
                                         the callback; NULL when reply is NULL */
    bool cold;
    uint32_t version; /* the version that ran (0 when not resolved) */
} gw_invoke_result;

/* Called exactly once per accepted submit, from a gateway or NNG thread. Must not block.
 * A reply served from the response cache (functions with cache.responses) is delivered
 * on the submitting thread before gw_invoke_submit returns AICFN_OK; every other outcome
 * comes later, from another thread. */
typedef void (*gw_invoke_done_fn)(void *user, const gw_invoke_result *res);

/* Submits one invocation. `req` (a decoded request: fn, ver, inputs, params, deadline)
 * and `tenant` are copied before this returns, so the caller may release them at once.
 * Returns AICFN_OK when accepted (done will run exactly once; *call_id, when call_id is
 * not NULL, names the call for gw_invoke_cancel), or an error without
 * running done: AICFN_E_NOT_FOUND (function/version), AICFN_E_OVERLOADED (the
 * function's queue is full), AICFN_E_UNAVAILABLE (backing off after crashes, or
 * stopping), AICFN_E_TOO_LARGE (request or model over a limit), AICFN_E_INVALID.
 * Thread-safe; never blocks on I/O (function resolution is cached in memory after the
 * first SQLite lookup). */
int gw_invoke_submit(gw_gateway *gw, const wire_invoke_req *req, const char *tenant, gw_invoke_done_fn done,
                     void *user, uint64_t *call_id, aicfn_error *err);

/* Cancels accepted call `call_id` (gw_invoke_submit's; unique in this gateway) while it
 * waits: in its function's queue, or for a worker that is starting. It leaves there and
 * its done runs with AICFN_E_CANCELED (the message ends with `why`), recorded in the
 * ledger; it is not run (again: a call waiting for its one retry after its worker died
 * ran once). Returns whether it did; false for a call sent to a worker or held in its
 * outbox for a bundle (it runs to its end), or finished. Thread-safe; costs a pass over
 * the waiting calls under the gateway's lock. */
bool gw_invoke_cancel(gw_gateway *gw, uint64_t call_id, const char *why);

#endif
