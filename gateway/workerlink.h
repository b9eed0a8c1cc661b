/* workerlink.h: the gateway's link to one worker and its view of that worker.
 *
 * A gw_worker is what the gateway knows of one worker process, local (spawned by the
 * pool) or remote (registered): the REQ client that DIALS the worker's address (workers
 * listen, nng #1518), its state, its budget and free bytes, the models it holds (as
 * router.h's gw_route_model, refreshed from the summary piggybacked on every reply and
 * from periodic status polls), and the calls waiting for it to finish starting.
 *
 * Locking: every function here is called with the gateway's mutex held, except
 * gw_worker_destroy (which closes the NNG client and waits for its callbacks, so it
 * must run WITHOUT that mutex, after the worker was unlinked and has no callbacks
 * outstanding). Not for: routing policy (router.c), process control (pool.c). */
#ifndef AICFN_GATEWAY_WORKERLINK_H
#define AICFN_GATEWAY_WORKERLINK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/error.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/wire.h"
#include "gateway/router.h"

typedef enum gw_worker_state {
    GW_WORKER_STARTING = 0, /* spawned or registered, first status not yet answered */
    GW_WORKER_READY = 1,
    GW_WORKER_DRAINING = 2, /* SIGTERM sent (idle) or the worker says it drains */
    GW_WORKER_DEAD = 3,     /* exited, lost, or killed: unlinked once no callback is outstanding */
} gw_worker_state;

struct gw_call;

typedef struct gw_worker {
    uint64_t serial; /* this record's number, unique in the gateway's life: a name is given
                        again (a worker registered after one of that name died), a serial never */
    char name[64];
    char addr[256];
    char device[128];
    uint32_t pool_id; /* 0 for a remote worker */
    pid_t pid;
    gw_worker_state state;
    rpc_client *client;
    bool linked; /* client is a socketpair link (a worker the pool started), not NNG */

    uint64_t budget_bytes;
    uint64_t free_bytes;
    gw_route_model *models; /* keys owned (malloc'd) */
    uint64_t *hold_until;   /* per model: gateway-added entry kept until this time */
    size_t n_models, cap_models;

    uint32_t in_flight;     /* calls sent, not completed (preloads included) */
    uint32_t preloads;      /* of those, model preloads (repository load, keep-warm): no handler call */
    uint32_t pending_calls; /* calls (not preloads) in pending_head: routed here while STARTING */
    uint32_t callbacks;     /* async callbacks outstanding (calls + polls) */
    uint32_t call_msgs;     /* messages of calls in flight on the link (a call alone, a bundle,
                               a preload): at most AICFN_WORKER_MAX_CALL_MSGS, so that the
                               worker always has a context free for a status poll */
    bool poll_pending;
    uint64_t last_poll_us;
    uint64_t last_call_us;      /* last call sent or completed (idle timer) */
    uint64_t started_us;        /* spawn (or registration) time */
    uint64_t started_wall_us;   /* the same, wall clock (the workers table's started_us) */
    uint64_t last_seen_wall_us; /* wall clock of its last status answer; 0 = none yet */
    uint64_t spawn_us;          /* start to first status reply; 0 for remote */
    bool spawn_attributed;      /* spawn_us already given to a cold-start record */
    uint32_t consecutive_poll_failures;
    uint64_t loads_recorded; /* the highest w.loads seq recorded (each poll acknowledges it);
                                written under the gateway's lock, read atomically by polls */
    bool killed;             /* the gateway ended it (a call past its timeout, failed polls): the calls
                                that fail with it did not crash it and are not charged as crashes */
    const char *kill_reason; /* why, when killed (a static string) */
    bool settling;           /* dead with a fault note and calls in flight whose failures are not
                                yet counted (gw_crash_settling_locked) */
    bool doomed;             /* a bundle part came back overran: the worker is killed once that part
                                is handed out; until then the router sends it nothing */
    /* A registered worker's exit token (its `register` carried `ctl`): a killed one is sent
     * `exit` with it (a local one gets SIGKILL). "" = none. */
    char exit_token[AICFN_WORKER_EXIT_TOKEN_MAX + 1];
    uint64_t death; /* set when it dies: the gateway's count of worker deaths (a crash is
                       charged to a request once per death) */
    /* Its fault note (pool.h), when a handler crashed it: the function and the calls of
     * that handler call, charged alone; NULL when it died otherwise (then every call in
     * flight is). */
    struct gw_fault_note *fault;

    struct gw_call *pending_head, *pending_tail; /* routed here while STARTING */

    /* Bundling (gateway.c, docs/protocol.md §9): calls of short functions routed here
     * while AICFN_BUNDLE_WINDOW short messages are already in flight wait in the outbox
     * (counted in in_flight and callbacks) and leave together, as one bundle, when one
     * of those messages comes back. */
    struct gw_call *outbox_head, *outbox_tail;
    uint32_t outbox_n;
    uint64_t outbox_since_us; /* when the oldest held call was routed */
    uint32_t short_msgs;      /* messages of short calls (single or bundle) in flight */
    struct gw_worker *next;
} gw_worker;

/* Allocates a worker record (state STARTING, no client yet; started_wall_us = now on the
 * wall clock; the next serial). NULL when out of memory. Thread-safe. */
gw_worker *gw_worker_new(const char *name, const char *addr, uint32_t pool_id, pid_t pid, uint64_t now_us);

/* Opens w's client: on link_fd (>= 0, taken: the socketpair the pool made for a worker
 * it spawned, rpc_client_open_link), else a REQ client dialing w->addr in the background
 * (RECVMAXSZ set, resend infinite: rpc.h); with await_listen (a worker the pool just
 * started) the dial waits for rpc_client_dial, once the worker says it listens. Never
 * blocks on the network. */
int gw_worker_connect(gw_worker *w, int link_fd, bool await_listen, aicfn_error *err);

/* Replaces the view of models, budget and free bytes with a worker's summary. Models
 * the gateway added itself (gw_worker_note_load) and that the summary does not list yet
 * are kept until their hold time passes. A partial summary (wire.h: a reply's, of a
 * worker holding more models than it lists) updates and adds the models it lists and
 * keeps the others. Returns AICFN_OK or AICFN_E_NOMEM. */
int gw_worker_apply_summary(gw_worker *w, const wire_worker_summary *s, uint64_t now_us);

/* Records in the view that the gateway just sent a call for model `key` (`bytes` big)
 * which the worker will load (router level 3/4, or a spawn): the model is LOADING and
 * its bytes are no longer free; for an eviction, the unpinned READY models the worker
 * will evict (oldest first) are marked EVICTING. A later summary confirms or corrects
 * it. `hold_us` bounds how long the entry survives summaries that omit it; noting a
 * model already LOADING extends its hold (a call sent once a spawned worker is ready). */
int gw_worker_note_load(gw_worker *w, const char *key, uint64_t bytes, uint64_t now_us, uint64_t hold_us);

/* Marks model `key` used now (a READY route): keeps LRU ages in the view current. */
void gw_worker_note_use(gw_worker *w, const char *key, uint64_t now_us);

/* Fills a router view entry (pointing into w: valid while the lock is held, and until
 * the next change to w's models). Its in_flight is the load routing weighs: calls sent
 * and not completed, less preloads, plus the calls pending on a starting worker. */
void gw_worker_route_view(const gw_worker *w, gw_route_worker *out);

/* Closes the client (waiting for its callbacks) and frees the record. The worker must be
 * unlinked, with callbacks == 0 and no pending calls. NULL accepted. */
void gw_worker_destroy(gw_worker *w);

/* "starting", "ready", "draining", "gone" (the live view's names; the workers table's
 * row states are ledger.h's gw_worker_row_state). */
const char *gw_worker_state_name(gw_worker_state s);

#endif
