/* test_router_scaling.c: replicas in gw_route_decide (a function's scaling.max_workers):
 * a busy holder makes a replica only below max_holders, a LOADING replica is joined,
 * at the limit calls wait on the least-loaded holder, keep-warm placement (new_replica)
 * and functions without a model (any_worker). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/router.h"

#define MiB (1ull << 20)

static gw_route_worker worker(uint32_t in_flight, const gw_route_model *m, size_t n) {
    gw_route_worker w = {.usable = true,
                         .in_flight = in_flight,
                         .budget_bytes = 100 * MiB,
                         .free_bytes = 100 * MiB,
                         .models = m,
                         .n_models = n};
    for (size_t i = 0; i < n; i++)
        w.free_bytes -= m[i].bytes;
    return w;
}

/* A function with a 10 MiB model, max_batch 1 (busy at 1 call in flight). */
static gw_route_request request(uint32_t max_holders, bool grow) {
    gw_route_request r = {.key = "mlp:1",
                          .model_bytes = 10 * MiB,
                          .pool_may_grow = grow,
                          .new_worker_budget = 100 * MiB,
                          .max_holders = max_holders,
                          .busy_in_flight = 1};
    return r;
}

static void max_one_never_replicates(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 1, 5, false}};
    /* Worker 0 holds it with 5 calls in flight; worker 1 is empty and idle. */
    gw_route_worker ws[] = {worker(5, a, 1), worker(0, NULL, 0)};
    gw_route_request r = request(1, true);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    assert_int_equal(gw_route_holders(ws, 2, &r), 1);
    /* Even with the pool able to grow and no other worker at all. */
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    /* A holder that is only LOADING is joined, busy or not. */
    a[0].state = GW_MODEL_LOADING;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 0);
}

static void max_two_replicates_only_when_busy(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 0, 5, false}};
    gw_route_worker ws[] = {worker(0, a, 1), worker(0, NULL, 0)};
    gw_route_request r = request(2, true);
    gw_route_decision d;
    /* Not busy: the holder. */
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    /* Busy (in flight >= busy_in_flight): a replica on the worker with free budget. */
    ws[0].in_flight = 1;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 1);
    /* No other worker: a new one when the pool may grow... */
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_SPAWN);
    assert_int_equal(d.worker, -1);
    /* ...else the call waits on the busy holder rather than in the gateway's queue. */
    r.pool_may_grow = false;
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    /* A larger max_batch raises the threshold: 1 call in flight of 4 is not busy. */
    r.pool_may_grow = true;
    r.busy_in_flight = 4;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    ws[0].in_flight = 4;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 1);
    /* busy_in_flight 0: never busy (no replicas, as before scaling existed). */
    r.busy_in_flight = 0;
    ws[0].in_flight = 100;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
}

static void replica_by_eviction(void **state) {
    (void)state;
    /* Worker 1 is full of an old unpinned model: the replica evicts it. */
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 1, 5, false}};
    gw_route_model b[] = {{"old:1", GW_MODEL_READY, 95 * MiB, 0, 1, false}};
    gw_route_worker ws[] = {worker(3, a, 1), worker(0, b, 1)};
    gw_route_request r = request(2, false);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_EVICT);
    assert_int_equal(d.worker, 1);
    assert_int_equal(d.n_victims, 1);
    /* The only other model pinned: nowhere to put a replica, so the busy holder. */
    b[0].pinned = 1;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
}

static void loading_replica_is_joined(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 1, 5, false}};
    gw_route_model b[] = {{"mlp:1", GW_MODEL_LOADING, 10 * MiB, 1, 9, false}};
    gw_route_worker ws[] = {worker(1, a, 1), worker(0, b, 1), worker(0, NULL, 0)};
    gw_route_request r = request(3, true);
    gw_route_decision d;
    /* The READY holder is busy; the replica loading on worker 1 is not: join it. */
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 1);
    /* A replica still starting (spawned for the model) is joined the same way. */
    ws[1].usable = false;
    ws[1].starting = true;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 1);
    /* Both busy, 2 holders < 3: a third replica on the free worker. */
    ws[1].in_flight = 2;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 2);
    /* A READY holder not busy is preferred to joining a load. */
    ws[0].in_flight = 0;
    ws[1].in_flight = 0;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
}

static void at_max_least_loaded_holder(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 1, 5, false}};
    gw_route_model b[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 1, 9, false}};
    gw_route_model c[] = {{"mlp:1", GW_MODEL_LOADING, 10 * MiB, 1, 9, false}};
    gw_route_worker ws[] = {worker(4, a, 1), worker(2, b, 1), worker(0, NULL, 0)};
    gw_route_request r = request(2, true);
    gw_route_decision d;
    /* Two holders, both busy, at the limit: the less loaded one, never worker 2. */
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 1);
    assert_int_equal(gw_route_holders(ws, 3, &r), 2);
    /* A busy READY holder is preferred to a LOADING one with fewer calls (those wait for
     * the load)... */
    ws[1] = worker(3, c, 1);
    ws[1].in_flight = 2;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    /* ...which takes the call when no holder is READY. */
    a[0].state = GW_MODEL_LOADING;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 1);
    a[0].state = GW_MODEL_READY;
    ws[0].in_flight = 2;
    /* A copy being evicted is no holder: below the limit again, a replica. */
    c[0].state = GW_MODEL_EVICTING;
    assert_int_equal(gw_route_holders(ws, 3, &r), 1);
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 2);
    /* Draining/dead workers (neither usable nor starting) are no holders either. */
    c[0].state = GW_MODEL_READY;
    ws[1].usable = false;
    assert_int_equal(gw_route_holders(ws, 3, &r), 1);
}

static void keep_warm_new_replica(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 0, 5, false}};
    gw_route_worker ws[] = {worker(0, a, 1), worker(3, NULL, 0)};
    gw_route_request r = request(2, false);
    r.new_replica = true;
    gw_route_decision d;
    /* Never the idle holder: a worker without the model. */
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 1);
    /* Nowhere to put it and the pool cannot grow: QUEUE (try later), not a holder. */
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_QUEUE);
    r.pool_may_grow = true;
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_SPAWN);
    /* At max_holders: no more replicas even for keep-warm. */
    r.max_holders = 1;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_QUEUE);
    /* A model too large for any worker is refused. */
    r.max_holders = 2;
    r.model_bytes = 200 * MiB;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_TOO_LARGE);
}

static void no_model_function(void **state) {
    (void)state;
    /* Workers hold other models; the function has none (any_worker). */
    gw_route_model other[] = {{"big:1", GW_MODEL_READY, 90 * MiB, 0, 5, false}};
    gw_route_worker ws[] = {worker(2, other, 1), worker(1, NULL, 0)};
    gw_route_request r = {.key = "(no-model)",
                          .model_bytes = 0,
                          .pool_may_grow = true,
                          .new_worker_budget = 100 * MiB,
                          .max_holders = 1,
                          .busy_in_flight = 1,
                          .any_worker = true};
    gw_route_decision d;
    /* Every usable worker serves it: two holders already (>= max 1), least loaded. */
    assert_int_equal(gw_route_holders(ws, 2, &r), 2);
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 1);
    /* One worker, busy, max 1: it waits there; max 2: a second worker is started. */
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    r.max_holders = 2;
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_SPAWN);
    /* Not busy: no spawn. */
    ws[0].in_flight = 0;
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_READY);
    /* A worker still starting is a LOADING holder: calls join its start. */
    ws[0].usable = false;
    ws[0].starting = true;
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 0);
    /* No worker at all: spawn. */
    assert_int_equal(gw_route_decide(ws, 0, &r, &d), GW_ROUTE_SPAWN);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(max_one_never_replicates),   cmocka_unit_test(max_two_replicates_only_when_busy),
        cmocka_unit_test(replica_by_eviction),        cmocka_unit_test(loading_replica_is_joined),
        cmocka_unit_test(at_max_least_loaded_holder), cmocka_unit_test(keep_warm_new_replica),
        cmocka_unit_test(no_model_function),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
