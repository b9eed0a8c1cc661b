/* router.h: the gateway's routing decision (design.md §6) as a pure function.
 *
 * The router looks at the gateway's view of its workers (the models each one holds
 * READY or LOADING, its budget and free bytes, the calls the gateway has in flight on
 * it, and the last-use time of each resident model) and picks where one call goes:
 *   1. a worker with the model READY, fewest calls in flight;
 *   2. a worker already LOADING it (the call joins that load);
 *   3. a worker with enough free budget for the model;
 *   4. the worker whose eviction victims (unpinned, unkept READY models, oldest first, just
 *      enough of them to make room) are the oldest;
 *   5. a new worker, when the pool may grow;
 *   6. otherwise queue the call until a worker frees up or its deadline passes.
 * A model larger than every budget in view (and than a new worker's) is refused.
 *
 * Replicas (a function's scaling.max_workers). The workers that hold the model READY or
 * LOADING are its holders. Levels 1 and 2 take a holder only while it is not busy (its
 * calls in flight below req->busy_in_flight). When every holder is busy and there are
 * fewer holders than req->max_holders, levels 3-5 place one more replica; otherwise
 * (at the limit, or nowhere to put a replica) the call goes to the least-loaded READY
 * holder, else the least-loaded LOADING one, and waits in that worker's queue. A `full` worker is
 * never chosen at any level (it still counts as a holder); when every holder is full and
 * no replica can be placed, the call queues (level 6). So a function never
 * has more than max_holders holders because of routing, and max_holders 1 never
 * replicates. A function without a model (req->any_worker) has nothing to load: every
 * usable worker is a READY holder and every starting one a LOADING holder, so the same
 * rule spreads it over the workers there are and spawns one more (level 5) only when
 * all are busy and there are fewer than max_holders.
 *
 * Not for: keeping the view up to date, locking, or sending anything. The caller
 * (gateway.c) owns the view, holds its lock while it calls gw_route_decide, and applies
 * the decision (for levels 3-5 it marks the model LOADING in its view so the next
 * call for the same model joins the same load: single flight across the gateway). */
#ifndef AICFN_GATEWAY_ROUTER_H
#define AICFN_GATEWAY_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* State of one model on one worker, as the gateway last saw it. */
typedef enum gw_model_state {
    GW_MODEL_LOADING = 1,
    GW_MODEL_READY = 2,
    GW_MODEL_EVICTING = 3, /* leaving: never routed to, never counted as free */
} gw_model_state;

/* One resident model in the view. `key` identifies the model ("name:version"). */
typedef struct gw_route_model {
    const char *key;
    gw_model_state state;
    uint64_t bytes;       /* device bytes it holds */
    uint32_t pinned;      /* calls using it now (refcount); pinned models are never victims */
    uint64_t last_use_us; /* monotonic time of its last use; smaller = older */
    bool kept;            /* kept resident for a scaling.min_workers: never a victim either */
} gw_route_model;

/* One worker in the view. Workers that are not `usable` (starting, draining, dead,
 * or backing off) are skipped, except that a `starting` worker whose `models` list the
 * requested model as LOADING counts at level 2 (calls join the spawn in progress). */
typedef struct gw_route_worker {
    bool usable;
    bool starting;
    uint32_t in_flight;    /* calls the gateway has sent and not yet seen replied */
    bool full;             /* takes no call now (as many messages in flight as it receives at
                              once): still a holder, but never chosen; calls queue meanwhile */
    uint64_t budget_bytes; /* the worker's whole cache budget */
    uint64_t free_bytes;   /* budget not held by any model */
    const gw_route_model *models;
    size_t n_models;
} gw_route_worker;

typedef enum gw_route_kind {
    GW_ROUTE_READY = 1,     /* level 1: send to `worker` */
    GW_ROUTE_LOADING = 2,   /* level 2: send to `worker`, joining its load */
    GW_ROUTE_FREE = 3,      /* level 3: send to `worker`, which loads into free bytes */
    GW_ROUTE_EVICT = 4,     /* level 4: send to `worker`, which evicts `n_victims` models */
    GW_ROUTE_SPAWN = 5,     /* level 5: start a new worker and send the call there */
    GW_ROUTE_QUEUE = 6,     /* level 6: wait for a worker (until the call's deadline) */
    GW_ROUTE_TOO_LARGE = 7, /* no worker, present or new, could ever hold the model */
} gw_route_kind;

typedef struct gw_route_request {
    const char *key;            /* model key, compared with gw_route_model.key */
    uint64_t model_bytes;       /* bytes the model needs on a device */
    bool pool_may_grow;         /* a new local worker may be started now */
    uint64_t new_worker_budget; /* the budget a new worker would get */
    uint32_t max_holders;       /* most holders (replicas) the model may have; 0 = no limit */
    uint32_t busy_in_flight;    /* a holder with this many calls in flight is busy; 0 = never busy */
    bool any_worker;            /* no model: every usable worker holds it READY, a starting one LOADING */
    bool new_replica;           /* keep-warm: place one more replica (levels 3-5 only, never a holder,
                                   and only below max_holders); QUEUE when it cannot be placed now */
} gw_route_request;

typedef struct gw_route_decision {
    gw_route_kind kind;
    int worker;              /* index into the workers array, -1 for SPAWN/QUEUE/TOO_LARGE */
    uint32_t n_victims;      /* GW_ROUTE_EVICT: how many models the worker will evict */
    uint64_t victims_age_us; /* GW_ROUTE_EVICT: last_use of the newest victim (the tie-breaker) */
} gw_route_decision;

/* Decides where one call goes. Pure: reads `workers` (n of them) and `req`, writes
 * `*out`, and returns out->kind. Never allocates; thread-safe for distinct views.
 * Ties at every level go to the lowest index, so the decision is deterministic. */
gw_route_kind gw_route_decide(const gw_route_worker *workers, size_t n, const gw_route_request *req,
                              gw_route_decision *out);

/* How many workers in view hold req's model: usable or starting, with req->key READY or
 * LOADING (any_worker: every usable or starting worker). Pure, like gw_route_decide. */
uint32_t gw_route_holders(const gw_route_worker *workers, size_t n, const gw_route_request *req);

/* The name of a decision kind ("ready", "loading", "free", "evict", "spawn", "queue",
 * "too_large"), for logs and tests. Never NULL. */
const char *gw_route_kind_name(gw_route_kind kind);

#endif
