/* test_router_view.c: the gateway's view of a worker (workerlink.c) that routing reads:
 * summaries replace it, gateway-added LOADING entries survive summaries that do not list
 * them yet (single flight across calls sent before the worker reports), a note_load
 * marks the LRU victims EVICTING, and the router decides on the resulting view. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/router.h"
#include "gateway/workerlink.h"

#define MiB (1ull << 20)

static const gw_route_model *find(const gw_worker *w, const char *key) {
    for (size_t i = 0; i < w->n_models; i++)
        if (strcmp(w->models[i].key, key) == 0) return &w->models[i];
    return NULL;
}

static void summary_replaces_view(void **state) {
    (void)state;
    gw_worker *w = gw_worker_new("w1", "ipc:///tmp/x", 1, 123, 1000);
    assert_non_null(w);
    assert_int_equal(w->state, GW_WORKER_STARTING);
    wire_model_status ms[] = {{"aaa", "a", 1, WIRE_MODEL_READY, 10 * MiB, 2000, 0, true},
                              {"bbb", "b", 1, WIRE_MODEL_LOADING, 20 * MiB, 0, 1, false}};
    wire_worker_summary s = {.budget_bytes = 100 * MiB, .free_bytes = 70 * MiB, .n_models = 2, .models = ms};
    uint64_t now = 10000000;
    assert_int_equal(gw_worker_apply_summary(w, &s, now), 0);
    assert_int_equal(w->n_models, 2);
    assert_int_equal(w->budget_bytes, 100 * MiB);
    assert_int_equal(w->free_bytes, 70 * MiB);
    const gw_route_model *a = find(w, "aaa");
    assert_non_null(a);
    assert_int_equal(a->state, GW_MODEL_READY);
    assert_int_equal(a->last_use_us, now - 2000 * 1000);
    assert_true(a->kept);
    assert_int_equal(find(w, "bbb")->state, GW_MODEL_LOADING);
    assert_false(find(w, "bbb")->kept);
    /* Same models again: updated in place (the fast path), new values visible. */
    ms[1].state = WIRE_MODEL_READY;
    ms[0].kept = false;
    s.free_bytes = 60 * MiB;
    assert_int_equal(gw_worker_apply_summary(w, &s, now + 1), 0);
    assert_int_equal(find(w, "bbb")->state, GW_MODEL_READY);
    assert_false(find(w, "aaa")->kept);
    assert_int_equal(w->free_bytes, 60 * MiB);
    /* A model gone from the summary is gone from the view. */
    s.n_models = 1;
    assert_int_equal(gw_worker_apply_summary(w, &s, now + 2), 0);
    assert_int_equal(w->n_models, 1);
    assert_null(find(w, "bbb"));
    gw_worker_destroy(w);
}

/* A worker holding more models than a reply lists: the reply's partial summary updates
 * and adds what it lists and keeps the rest; the next full one (a status) is the view. */
static void partial_summary_keeps_the_unlisted(void **state) {
    (void)state;
    gw_worker *w = gw_worker_new("w1", "ipc:///tmp/x", 1, 123, 0);
    w->state = GW_WORKER_READY;
    wire_model_status all[] = {{"m1", "a", 1, WIRE_MODEL_READY, 10 * MiB, 9000, 0, false},
                               {"m2", "b", 1, WIRE_MODEL_READY, 10 * MiB, 8000, 0, false},
                               {"m3", "c", 1, WIRE_MODEL_READY, 10 * MiB, 7000, 0, false}};
    wire_worker_summary s = {.budget_bytes = 100 * MiB, .free_bytes = 70 * MiB, .n_models = 3, .models = all};
    uint64_t now = 100000000;
    assert_int_equal(gw_worker_apply_summary(w, &s, now), 0);
    assert_int_equal(w->n_models, 3);
    wire_model_status recent[] = {{"m3", "c", 1, WIRE_MODEL_READY, 10 * MiB, 0, 1, false},
                                  {"m4", "d", 1, WIRE_MODEL_LOADING, 20 * MiB, 0, 1, false}};
    wire_worker_summary p = {
        .budget_bytes = 100 * MiB, .free_bytes = 50 * MiB, .n_models = 2, .models = recent, .partial = true};
    assert_int_equal(gw_worker_apply_summary(w, &p, now + 1000), 0);
    assert_int_equal(w->n_models, 4);
    assert_non_null(find(w, "m1"));
    assert_non_null(find(w, "m2"));
    assert_int_equal(find(w, "m3")->pinned, 1);
    assert_int_equal(find(w, "m3")->last_use_us, now + 1000);
    assert_int_equal(find(w, "m4")->state, GW_MODEL_LOADING);
    assert_int_equal(w->free_bytes, 50 * MiB);
    /* The router still finds a model the reply did not list, READY where it was. */
    gw_route_worker v;
    gw_worker_route_view(w, &v);
    gw_route_request r = {.key = "m1", .model_bytes = 10 * MiB};
    gw_route_decision d;
    assert_int_equal(gw_route_decide(&v, 1, &r, &d), GW_ROUTE_READY);
    /* A full summary that no longer lists m1 and m2 (evicted): gone. */
    wire_model_status now_all[] = {{"m3", "c", 1, WIRE_MODEL_READY, 10 * MiB, 0, 0, false},
                                   {"m4", "d", 1, WIRE_MODEL_READY, 20 * MiB, 0, 0, false}};
    wire_worker_summary f = {
        .budget_bytes = 100 * MiB, .free_bytes = 70 * MiB, .n_models = 2, .models = now_all};
    assert_int_equal(gw_worker_apply_summary(w, &f, now + 2000), 0);
    assert_int_equal(w->n_models, 2);
    assert_null(find(w, "m1"));
    assert_null(find(w, "m2"));
    gw_worker_destroy(w);
}

static void note_load_is_held_until_confirmed(void **state) {
    (void)state;
    gw_worker *w = gw_worker_new("w1", "ipc:///tmp/x", 1, 123, 0);
    w->state = GW_WORKER_READY;
    wire_model_status ms[] = {{"old", "o", 1, WIRE_MODEL_READY, 40 * MiB, 9000, 0, false},
                              {"mid", "m", 1, WIRE_MODEL_READY, 40 * MiB, 5000, 0, false}};
    wire_worker_summary s = {.budget_bytes = 100 * MiB, .free_bytes = 20 * MiB, .n_models = 2, .models = ms};
    uint64_t now = 100000000;
    assert_int_equal(gw_worker_apply_summary(w, &s, now), 0);
    /* The gateway sends a call for "new" (30 MiB): the oldest model is the victim. */
    assert_int_equal(gw_worker_note_load(w, "new", 30 * MiB, now, 2000000), 0);
    assert_int_equal(find(w, "old")->state, GW_MODEL_EVICTING);
    assert_int_equal(find(w, "mid")->state, GW_MODEL_READY);
    assert_int_equal(find(w, "new")->state, GW_MODEL_LOADING);
    assert_int_equal(w->free_bytes, 30 * MiB); /* 20 + 40 freed - 30 */
    /* The next call for "new" joins the load on this worker (router level 2). */
    gw_route_worker v;
    gw_worker_route_view(w, &v);
    gw_route_request r = {
        .key = "new", .model_bytes = 30 * MiB, .pool_may_grow = true, .new_worker_budget = 100 * MiB};
    gw_route_decision d;
    assert_int_equal(gw_route_decide(&v, 1, &r, &d), GW_ROUTE_LOADING);
    /* A summary produced before the worker saw the call does not erase it... */
    assert_int_equal(gw_worker_apply_summary(w, &s, now + 1000), 0);
    assert_non_null(find(w, "new"));
    assert_int_equal(find(w, "new")->state, GW_MODEL_LOADING);
    assert_int_equal(w->free_bytes, 0); /* 20 reported - 30 held: clamped at zero */
    /* ...until the hold time passes. */
    assert_int_equal(gw_worker_apply_summary(w, &s, now + 3000000), 0);
    assert_null(find(w, "new"));
    /* Once the worker lists it, the worker's word is the view. */
    wire_model_status ms2[] = {{"mid", "m", 1, WIRE_MODEL_READY, 40 * MiB, 10, 0, false},
                               {"new", "n", 1, WIRE_MODEL_READY, 30 * MiB, 0, 0, false}};
    wire_worker_summary s2 = {
        .budget_bytes = 100 * MiB, .free_bytes = 30 * MiB, .n_models = 2, .models = ms2};
    assert_int_equal(gw_worker_note_load(w, "new", 30 * MiB, now + 3000001, 2000000), 0);
    assert_int_equal(gw_worker_apply_summary(w, &s2, now + 3000002), 0);
    assert_int_equal(w->n_models, 2);
    assert_int_equal(find(w, "new")->state, GW_MODEL_READY);
    assert_int_equal(w->free_bytes, 30 * MiB);
    gw_worker_destroy(w);
}

static void draining_summary_and_names(void **state) {
    (void)state;
    gw_worker *w = gw_worker_new("w2", "ipc:///tmp/y", 2, 1, 0);
    w->state = GW_WORKER_READY;
    wire_worker_summary s = {.budget_bytes = MiB, .free_bytes = MiB, .draining = true};
    assert_int_equal(gw_worker_apply_summary(w, &s, 5), 0);
    assert_int_equal(w->state, GW_WORKER_DRAINING);
    gw_route_worker v;
    gw_worker_route_view(w, &v);
    assert_false(v.usable);
    assert_string_equal(gw_worker_state_name(GW_WORKER_DEAD), "gone");
    assert_string_equal(gw_worker_state_name(GW_WORKER_STARTING), "starting");
    /* An empty key (no model) is never noted. */
    assert_int_equal(gw_worker_note_load(w, "", 0, 5, 10), 0);
    assert_int_equal(w->n_models, 0);
    gw_worker_destroy(w);
    gw_worker_destroy(NULL);
}

/* The load routing weighs (replicas: the busy mark): calls sent less preloads, plus the
 * calls waiting for a starting worker. */
static void view_load_counts_pending_not_preloads(void **state) {
    (void)state;
    gw_worker *w = gw_worker_new("w3", "ipc:///tmp/z", 3, 1, 0);
    gw_route_worker v;
    w->pending_calls = 2; /* routed here while it starts */
    gw_worker_route_view(w, &v);
    assert_true(v.starting);
    assert_int_equal(v.in_flight, 2);
    w->state = GW_WORKER_READY;
    w->pending_calls = 0;
    w->in_flight = 3;
    w->preloads = 1; /* a keep-warm or repository load: no handler call */
    gw_worker_route_view(w, &v);
    assert_int_equal(v.in_flight, 2);
    w->in_flight = 1;
    gw_worker_route_view(w, &v);
    assert_int_equal(v.in_flight, 0);
    gw_worker_destroy(w);
}

/* Noting a model already LOADING extends its hold: a call sent once a spawned worker
 * answered its first status (which does not list the model yet) keeps the load in view. */
static void note_load_extends_a_loading_hold(void **state) {
    (void)state;
    gw_worker *w = gw_worker_new("w4", "ipc:///tmp/q", 4, 1, 0);
    w->state = GW_WORKER_READY;
    wire_worker_summary empty = {.budget_bytes = 100 * MiB, .free_bytes = 100 * MiB};
    uint64_t now = 50000000;
    assert_int_equal(gw_worker_apply_summary(w, &empty, now), 0);
    assert_int_equal(gw_worker_note_load(w, "m", 10 * MiB, now, 2000000), 0);
    assert_int_equal(w->free_bytes, 90 * MiB);
    /* 1.5 s later the call is sent: noted again, the hold runs 2 s from then. */
    assert_int_equal(gw_worker_note_load(w, "m", 10 * MiB, now + 1500000, 2000000), 0);
    assert_int_equal(w->n_models, 1);
    assert_int_equal(w->free_bytes, 90 * MiB); /* not counted twice */
    assert_int_equal(gw_worker_apply_summary(w, &empty, now + 2500000), 0);
    assert_non_null(find(w, "m"));
    assert_int_equal(find(w, "m")->state, GW_MODEL_LOADING);
    assert_int_equal(gw_worker_apply_summary(w, &empty, now + 3600000), 0);
    assert_null(find(w, "m"));
    gw_worker_destroy(w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(summary_replaces_view),
        cmocka_unit_test(partial_summary_keeps_the_unlisted),
        cmocka_unit_test(note_load_is_held_until_confirmed),
        cmocka_unit_test(draining_summary_and_names),
        cmocka_unit_test(view_load_counts_pending_not_preloads),
        cmocka_unit_test(note_load_extends_a_loading_hold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
