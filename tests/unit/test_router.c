/* test_router.c: each preference level of gw_route_decide (design.md §6), and the
 * tie-breaks and refusals between them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/router.h"

#define MiB (1ull << 20)

static gw_route_worker worker(uint64_t budget, uint64_t free_bytes, uint32_t in_flight,
                              const gw_route_model *m, size_t n) {
    gw_route_worker w = {.usable = true,
                         .in_flight = in_flight,
                         .budget_bytes = budget,
                         .free_bytes = free_bytes,
                         .models = m,
                         .n_models = n};
    return w;
}

static gw_route_request request(const char *key, uint64_t bytes, bool grow) {
    gw_route_request r = {
        .key = key, .model_bytes = bytes, .pool_may_grow = grow, .new_worker_budget = 100 * MiB};
    return r;
}

static void ready_fewest_in_flight(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 1, 5, false}};
    gw_route_model b[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 0, 9, false}};
    gw_route_model c[] = {{"echo:1", GW_MODEL_READY, 1 * MiB, 0, 1, false}};
    gw_route_worker ws[] = {worker(100 * MiB, 90 * MiB, 3, a, 1), worker(100 * MiB, 90 * MiB, 1, b, 1),
                            worker(100 * MiB, 99 * MiB, 0, c, 1)};
    gw_route_request r = request("mlp:1", 10 * MiB, true);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 1);
    /* Equal in flight: the lowest index wins. */
    ws[0].in_flight = 1;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 0);
    /* An unusable worker is never chosen, READY or not. */
    ws[0].usable = false;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 1);
}

static void ready_beats_loading_and_free(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_LOADING, 10 * MiB, 1, 5, false}};
    gw_route_model b[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 0, 9, false}};
    gw_route_worker ws[] = {worker(100 * MiB, 90 * MiB, 0, a, 1), worker(100 * MiB, 0, 50, b, 1),
                            worker(100 * MiB, 100 * MiB, 0, NULL, 0)};
    gw_route_request r = request("mlp:1", 10 * MiB, true);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 3, &r, &d), GW_ROUTE_READY);
    assert_int_equal(d.worker, 1);
}

static void loading_joins_the_load(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_LOADING, 10 * MiB, 1, 5, false}};
    gw_route_worker ws[] = {worker(100 * MiB, 100 * MiB, 0, NULL, 0), worker(100 * MiB, 90 * MiB, 4, a, 1)};
    gw_route_request r = request("mlp:1", 10 * MiB, true);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 1);
    /* A worker still starting, spawned for this model, is joined as well. */
    ws[1].usable = false;
    ws[1].starting = true;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 1);
    /* A model being evicted is not joined: the call goes to free budget elsewhere. */
    a[0].state = GW_MODEL_EVICTING;
    ws[1].usable = true;
    ws[1].starting = false;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 0);
}

static void free_budget_fewest_then_most_free(void **state) {
    (void)state;
    /* Worker 0: 5 MiB free beside an unpinned 10 MiB model, enough to take mlp by evicting it. */
    gw_route_model other[] = {{"echo:1", GW_MODEL_READY, 10 * MiB, 0, 1, false}};
    gw_route_worker ws[] = {worker(100 * MiB, 5 * MiB, 0, other, 1), worker(100 * MiB, 40 * MiB, 2, NULL, 0),
                            worker(100 * MiB, 20 * MiB, 1, NULL, 0), worker(100 * MiB, 60 * MiB, 1, NULL, 0)};
    gw_route_request r = request("mlp:1", 10 * MiB, true);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 4, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 3); /* in flight 1 (ties with 2), more free bytes */
    /* Free budget is preferred to evicting, even with fewer calls on the full worker... */
    ws[0].in_flight = 0;
    ws[1].in_flight = ws[2].in_flight = ws[3].in_flight = 7;
    assert_int_equal(gw_route_decide(ws, 4, &r, &d), GW_ROUTE_FREE);
    assert_int_not_equal(d.worker, 0);
    /* ... which is chosen, evicting, once no worker has the room free. */
    ws[1].free_bytes = ws[2].free_bytes = ws[3].free_bytes = 5 * MiB;
    assert_int_equal(gw_route_decide(ws, 4, &r, &d), GW_ROUTE_EVICT);
    assert_int_equal(d.worker, 0);
}

static void evict_oldest_victims(void **state) {
    (void)state;
    /* Worker 0: its oldest victim is older, but two are needed and the second is new.
     * Worker 1: one victim of middling age suffices. The newest victim decides. */
    gw_route_model a[] = {{"a:1", GW_MODEL_READY, 30 * MiB, 0, 10, false},
                          {"b:1", GW_MODEL_READY, 30 * MiB, 0, 900, false},
                          {"c:1", GW_MODEL_READY, 30 * MiB, 0, 1000, false}};
    gw_route_model b[] = {{"d:1", GW_MODEL_READY, 50 * MiB, 0, 500, false},
                          {"e:1", GW_MODEL_READY, 40 * MiB, 0, 800, false}};
    gw_route_worker ws[] = {worker(100 * MiB, 10 * MiB, 0, a, 3), worker(100 * MiB, 10 * MiB, 0, b, 2)};
    gw_route_request r = request("mlp:1", 50 * MiB, false);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_EVICT);
    assert_int_equal(d.worker, 1);
    assert_int_equal(d.n_victims, 1);
    assert_int_equal(d.victims_age_us, 500);
    /* Smaller model: worker 0 needs only its oldest (age 10). */
    r.model_bytes = 35 * MiB;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_EVICT);
    assert_int_equal(d.worker, 0);
    assert_int_equal(d.n_victims, 1);
    assert_int_equal(d.victims_age_us, 10);
}

static void evict_never_pinned_kept_or_loading(void **state) {
    (void)state;
    gw_route_model a[] = {{"a:1", GW_MODEL_READY, 45 * MiB, 2, 1, false},
                          {"b:1", GW_MODEL_LOADING, 45 * MiB, 1, 2, false}};
    gw_route_model b[] = {{"c:1", GW_MODEL_READY, 45 * MiB, 0, 700, false},
                          {"d:1", GW_MODEL_READY, 45 * MiB, 1, 3, false}};
    gw_route_worker ws[] = {worker(100 * MiB, 10 * MiB, 0, a, 2), worker(100 * MiB, 10 * MiB, 5, b, 2)};
    gw_route_request r = request("mlp:1", 50 * MiB, false);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_EVICT);
    assert_int_equal(d.worker, 1);
    assert_int_equal(d.victims_age_us, 700);
    /* A kept model (scaling.min_workers) is no victim either, however old. */
    b[0].kept = true;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_QUEUE);
    b[0].kept = false;
    /* Everything pinned and the pool cannot grow: queue. */
    b[0].pinned = 1;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_QUEUE);
    assert_int_equal(d.worker, -1);
    /* ...and if it may grow, spawn. */
    r.pool_may_grow = true;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_SPAWN);
}

static void spawn_when_nothing_fits(void **state) {
    (void)state;
    gw_route_request r = request("mlp:1", 10 * MiB, true);
    gw_route_decision d;
    /* An empty pool (scaled to zero) grows. */
    assert_int_equal(gw_route_decide(NULL, 0, &r, &d), GW_ROUTE_SPAWN);
    /* An empty pool that may not grow right now queues. */
    r.pool_may_grow = false;
    assert_int_equal(gw_route_decide(NULL, 0, &r, &d), GW_ROUTE_QUEUE);
    /* Draining workers are not candidates. */
    gw_route_worker ws[] = {worker(100 * MiB, 100 * MiB, 0, NULL, 0)};
    ws[0].usable = false;
    r.pool_may_grow = true;
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_SPAWN);
}

static void too_large_everywhere(void **state) {
    (void)state;
    gw_route_worker ws[] = {worker(100 * MiB, 100 * MiB, 0, NULL, 0)};
    gw_route_request r = request("big:1", 200 * MiB, true);
    gw_route_decision d;
    assert_int_equal(gw_route_decide(ws, 1, &r, &d), GW_ROUTE_TOO_LARGE);
    assert_int_equal(gw_route_decide(NULL, 0, &r, &d), GW_ROUTE_TOO_LARGE);
    /* A bigger (remote) worker in view makes it a matter of waiting, not a refusal. */
    gw_route_model m[] = {{"x:1", GW_MODEL_READY, 300 * MiB, 1, 1, false}};
    gw_route_worker ws2[] = {worker(100 * MiB, 100 * MiB, 0, NULL, 0), worker(400 * MiB, 100 * MiB, 1, m, 1)};
    r.pool_may_grow = false;
    assert_int_equal(gw_route_decide(ws2, 2, &r, &d), GW_ROUTE_QUEUE);
    /* No local pool and no worker yet: wait for one to register. */
    r.new_worker_budget = 0;
    assert_int_equal(gw_route_decide(NULL, 0, &r, &d), GW_ROUTE_QUEUE);
    /* A registered worker still starting has no budget yet (0 until its first status):
     * it may hold the model, so the call waits rather than failing. */
    gw_route_worker ws3[] = {worker(0, 0, 0, NULL, 0)};
    ws3[0].usable = false;
    ws3[0].starting = true;
    assert_int_equal(gw_route_decide(ws3, 1, &r, &d), GW_ROUTE_QUEUE);
}

/* A full worker (as many messages in flight as it receives at once) is never chosen at
 * any level, but still counts as a holder: its calls queue, or go to a replica the
 * function may have. */
static void full_worker_is_never_chosen(void **state) {
    (void)state;
    gw_route_model a[] = {{"mlp:1", GW_MODEL_READY, 10 * MiB, 0, 5, false}};
    gw_route_worker ws[] = {worker(100 * MiB, 90 * MiB, 56, a, 1), worker(100 * MiB, 100 * MiB, 0, NULL, 0)};
    ws[0].full = true;
    gw_route_request r = request("mlp:1", 10 * MiB, false);
    r.max_holders = 1;
    gw_route_decision d;
    /* At the replica limit: no other holder, so the call waits. */
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_QUEUE);
    assert_int_equal(gw_route_holders(ws, 2, &r), 1);
    /* Below it: a replica where there is room. */
    r.max_holders = 2;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_FREE);
    assert_int_equal(d.worker, 1);
    /* Nor is a full worker a place for a replica (free bytes, then victims). */
    ws[1].full = true;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_QUEUE);
    gw_route_model b[] = {{"old:1", GW_MODEL_READY, 100 * MiB, 0, 1, false}};
    ws[1] = worker(100 * MiB, 0, 0, b, 1);
    ws[1].full = true;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_QUEUE);
    r.pool_may_grow = true;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_SPAWN);
    /* A LOADING holder that is full is not joined either. */
    a[0].state = GW_MODEL_LOADING;
    r.max_holders = 1;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_QUEUE);
    /* Once it has room again it is chosen as before. */
    ws[0].full = false;
    assert_int_equal(gw_route_decide(ws, 2, &r, &d), GW_ROUTE_LOADING);
    assert_int_equal(d.worker, 0);
}

static void kind_names(void **state) {
    (void)state;
    assert_string_equal(gw_route_kind_name(GW_ROUTE_READY), "ready");
    assert_string_equal(gw_route_kind_name(GW_ROUTE_EVICT), "evict");
    assert_string_equal(gw_route_kind_name((gw_route_kind)99), "unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ready_fewest_in_flight),
        cmocka_unit_test(ready_beats_loading_and_free),
        cmocka_unit_test(loading_joins_the_load),
        cmocka_unit_test(free_budget_fewest_then_most_free),
        cmocka_unit_test(evict_oldest_victims),
        cmocka_unit_test(evict_never_pinned_kept_or_loading),
        cmocka_unit_test(spawn_when_nothing_fits),
        cmocka_unit_test(too_large_everywhere),
        cmocka_unit_test(full_worker_is_never_chosen),
        cmocka_unit_test(kind_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
