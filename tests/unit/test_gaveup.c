/* test_gaveup.c: the book of calls that timed out at a worker (gateway/gaveup.h): a call
 * is billed only for its own worker, function and version, once, and only while the
 * ring still holds it; a share listed before the call's timeout is held for it, and one
 * worker cannot push out another's; a charge is capped at the time left. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/gaveup.h"

#define NOW 2000 /* wall clock of the takes: just after the calls (row_us 1000 + gid) */

/* Workers are the serials of the gateway's records of them (gw_worker.serial). */
static gw_gaveup_call call_of(uint64_t gid, uint64_t worker, const char *fn, uint32_t ver) {
    gw_gaveup_call c = {.gid = gid, .row_us = 1000 + gid, .sent_us = 500 + gid, .worker = worker, .ver = ver};
    snprintf(c.fn, sizeof c.fn, "%s", fn);
    return c;
}

static void a_call_is_taken_once_for_its_own_worker_and_function(void **state) {
    (void)state;
    gw_gaveup *g = gw_gaveup_create(8);
    assert_non_null(g);
    gw_gaveup_call c = call_of(5, 1, "big", 2);
    gw_gaveup_note(g, &c);
    gw_gaveup_call out;
    assert_int_equal(gw_gaveup_take(g, 5, 2, "big", 2, NOW, 0, &out),
                     GW_GAVEUP_NONE); /* another worker's word */
    assert_int_equal(gw_gaveup_take(g, 5, 1, "big", 1, NOW, 0, &out), GW_GAVEUP_NONE); /* another version */
    assert_int_equal(gw_gaveup_take(g, 5, 1, "bog", 2, NOW, 0, &out), GW_GAVEUP_NONE); /* another function */
    assert_int_equal(gw_gaveup_take(g, 6, 1, "big", 2, NOW, 0, &out),
                     GW_GAVEUP_NONE); /* a call not seen to time out */
    assert_int_equal(gw_gaveup_take(g, 0, 1, "big", 2, NOW, 0, &out), GW_GAVEUP_NONE);
    assert_int_equal(gw_gaveup_take(g, 5, 1, "big", 2, NOW, 0, &out), GW_GAVEUP_TAKEN);
    assert_int_equal(out.row_us, 1005);
    assert_int_equal(out.sent_us, 505);
    assert_int_equal(gw_gaveup_take(g, 5, 1, "big", 2, NOW, 0, &out), GW_GAVEUP_NONE); /* billed: gone */
    /* Listed long after the call timed out: not taken (what a worker could claim grows
     * with the time since). */
    gw_gaveup_note(g, &c);
    assert_int_equal(
        gw_gaveup_take(g, 5, 1, "big", 2, 1005 + AICFN_GW_GAVE_UP_MAX_AGE_MS * 1000ull + 1, 0, &out),
        GW_GAVEUP_NONE);
    assert_int_equal(gw_gaveup_take(g, 5, 1, "big", 2, 1005 + AICFN_GW_GAVE_UP_MAX_AGE_MS * 1000ull, 0, &out),
                     GW_GAVEUP_TAKEN);
    gw_gaveup_destroy(g);
}

static void the_ring_forgets_the_oldest(void **state) {
    (void)state;
    gw_gaveup *g = gw_gaveup_create(4);
    for (uint64_t gid = 1; gid <= 6; gid++) {
        gw_gaveup_call c = call_of(gid, 1, "f", 1);
        gw_gaveup_note(g, &c);
    }
    assert_int_equal(gw_gaveup_take(g, 1, 1, "f", 1, NOW, 0, NULL), GW_GAVEUP_NONE);
    assert_int_equal(gw_gaveup_take(g, 2, 1, "f", 1, NOW, 0, NULL), GW_GAVEUP_NONE);
    for (uint64_t gid = 3; gid <= 6; gid++)
        assert_int_equal(gw_gaveup_take(g, gid, 1, "f", 1, NOW, 0, NULL), GW_GAVEUP_TAKEN);
    /* A call noted twice (sent on to a second worker, timed out there too) is taken for each. */
    gw_gaveup_call a = call_of(9, 1, "f", 1), b = call_of(9, 2, "f", 1);
    gw_gaveup_note(g, &a);
    gw_gaveup_note(g, &b);
    assert_int_equal(gw_gaveup_take(g, 9, 2, "f", 1, NOW, 0, NULL), GW_GAVEUP_TAKEN);
    assert_int_equal(gw_gaveup_take(g, 9, 1, "f", 1, NOW, 0, NULL), GW_GAVEUP_TAKEN);
    /* Not noted: no id, or a function name not NUL-terminated within its field. */
    gw_gaveup_call z = call_of(0, 1, "f", 1), bad = call_of(11, 1, "f", 1);
    memset(bad.fn, 'x', sizeof bad.fn);
    gw_gaveup_note(g, &z);
    gw_gaveup_note(g, &bad);
    gw_gaveup_note(NULL, &a);
    assert_int_equal(gw_gaveup_take(g, 11, 1, "f", 1, NOW, 0, NULL), GW_GAVEUP_NONE);
    assert_int_equal(gw_gaveup_take(NULL, 9, 1, "f", 1, NOW, 0, NULL), GW_GAVEUP_NONE);
    gw_gaveup_destroy(g);
    gw_gaveup_destroy(NULL);
}

static void a_share_listed_before_the_timeout_is_held_for_it(void **state) {
    (void)state;
    gw_gaveup *g = gw_gaveup_create(4);
    gw_gaveup_call out;
    /* Listed (at 1000) before call 5 timed out: held, handed back at the note, once. */
    assert_int_equal(gw_gaveup_take(g, 5, 1, "f", 1, 1000, 700, &out), GW_GAVEUP_HELD);
    gw_gaveup_call c = call_of(5, 1, "f", 1); /* row_us 1005 */
    assert_int_equal(gw_gaveup_note(g, &c), 700);
    assert_int_equal(gw_gaveup_take(g, 5, 1, "f", 1, NOW, 0, &out),
                     GW_GAVEUP_NONE); /* billed at the note: not in the book */
    gw_gaveup_note(g, &c);
    assert_int_equal(gw_gaveup_take(g, 5, 1, "f", 1, NOW, 0, &out),
                     GW_GAVEUP_TAKEN); /* a second timeout is remembered */
    /* Held only for the worker, function and version that listed it. */
    assert_int_equal(gw_gaveup_take(g, 6, 1, "f", 1, 1000, 300, NULL), GW_GAVEUP_HELD);
    gw_gaveup_call other[3] = {call_of(6, 2, "f", 1), call_of(6, 1, "g", 1), call_of(6, 1, "f", 2)};
    for (int i = 0; i < 3; i++)
        assert_int_equal(gw_gaveup_note(g, &other[i]), 0);
    /* A second listing replaces the share; a hold of 0 holds nothing. */
    assert_int_equal(gw_gaveup_take(g, 6, 1, "f", 1, 1000, 400, NULL), GW_GAVEUP_HELD);
    assert_int_equal(gw_gaveup_take(g, 7, 1, "f", 1, 1000, 0, NULL), GW_GAVEUP_NONE);
    gw_gaveup_call six = call_of(6, 1, "f", 1), seven = call_of(7, 1, "f", 1);
    assert_int_equal(gw_gaveup_note(g, &six), 400);
    assert_int_equal(gw_gaveup_note(g, &seven), 0);
    /* A timeout noted after the hold lapsed finds nothing (and is remembered as usual). */
    assert_int_equal(gw_gaveup_take(g, 8, 1, "f", 1, 10, 900, NULL), GW_GAVEUP_HELD);
    gw_gaveup_call late = call_of(8, 1, "f", 1);
    late.row_us = 10 + AICFN_GW_GAVE_UP_HOLD_MS * 1000ull + 1;
    assert_int_equal(gw_gaveup_note(g, &late), 0);
    assert_int_equal(gw_gaveup_take(g, 8, 1, "f", 1, late.row_us, 0, NULL), GW_GAVEUP_TAKEN);
    /* A call in the book but too old to bill holds nothing either. */
    gw_gaveup_call old = call_of(9, 1, "f", 1);
    gw_gaveup_note(g, &old);
    uint64_t later = old.row_us + AICFN_GW_GAVE_UP_MAX_AGE_MS * 1000ull + 1;
    assert_int_equal(gw_gaveup_take(g, 9, 1, "f", 1, later, 500, NULL), GW_GAVEUP_NONE);
    assert_int_equal(gw_gaveup_note(g, &old), 0);
    /* A full table holds nothing more, and never pushes out a share held for another call. */
    for (uint64_t gid = 20; gid < 26; gid++)
        assert_int_equal(gw_gaveup_take(g, gid, 1, "f", 1, 1000, gid, NULL),
                         gid < 24 ? GW_GAVEUP_HELD : GW_GAVEUP_NONE);
    for (uint64_t gid = 20; gid < 26; gid++) {
        gw_gaveup_call k = call_of(gid, 1, "f", 1);
        assert_int_equal(gw_gaveup_note(g, &k), gid < 24 ? gid : 0);
    }
    /* Lapsed shares free their slots. */
    for (uint64_t gid = 30; gid < 34; gid++)
        assert_int_equal(gw_gaveup_take(g, gid, 1, "f", 1, 1000, 1, NULL), GW_GAVEUP_HELD);
    uint64_t lapsed = 1000 + AICFN_GW_GAVE_UP_HOLD_MS * 1000ull + 1;
    assert_int_equal(gw_gaveup_take(g, 34, 1, "f", 1, lapsed, 77, NULL), GW_GAVEUP_HELD);
    gw_gaveup_call k34 = call_of(34, 1, "f", 1);
    k34.row_us = lapsed;
    assert_int_equal(gw_gaveup_note(g, &k34), 77);
    gw_gaveup_destroy(g);
}

/* A worker listing ids it made up (or many calls) churns only its own held shares: at
 * AICFN_GW_GAVE_UP_HOLDS_PER_WORKER, each new one replaces its oldest. */
static void one_worker_cannot_push_out_anothers_held_shares(void **state) {
    (void)state;
    const uint32_t quota = AICFN_GW_GAVE_UP_HOLDS_PER_WORKER;
    gw_gaveup *g = gw_gaveup_create(quota + 8);
    assert_int_equal(gw_gaveup_take(g, 5, 1, "f", 1, 1000, 700, NULL), GW_GAVEUP_HELD); /* the honest one */
    for (uint64_t k = 0; k < 10 * quota; k++) /* later listings are held later: newer */
        assert_int_equal(gw_gaveup_take(g, 1000 + k, 2, "f", 1, 1001 + k, 1, NULL), GW_GAVEUP_HELD);
    gw_gaveup_call honest = call_of(5, 1, "f", 1);
    assert_int_equal(gw_gaveup_note(g, &honest), 700);
    /* The flooder keeps its newest `quota`; the others are gone. */
    gw_gaveup_call newest = call_of(1000 + 10 * quota - 1, 2, "f", 1), oldest = call_of(1000, 2, "f", 1);
    assert_int_equal(gw_gaveup_note(g, &newest), 1);
    assert_int_equal(gw_gaveup_note(g, &oldest), 0);
    /* Room is left for others: 8 slots beyond one worker's quota. */
    for (uint64_t gid = 40; gid < 47; gid++)
        assert_int_equal(gw_gaveup_take(g, gid, 3, "f", 1, 1000, 9, NULL), GW_GAVEUP_HELD);
    gw_gaveup_destroy(g);
}

/* What a call may be billed: the share, capped at its time since it was sent less what
 * its row already bills. */
static void a_charge_is_capped_at_the_time_left(void **state) {
    (void)state;
    gw_gaveup_call c = call_of(5, 1, "f", 1); /* sent_us 505 */
    c.charged_us = 100;
    assert_int_equal(gw_gaveup_charge(&c, 300, 1505), 300); /* 1000 since sent, 900 left */
    assert_int_equal(gw_gaveup_charge(&c, 3000, 1505), 900);
    assert_int_equal(gw_gaveup_charge(&c, 3000, 600), 0); /* 95 since sent: all billed already */
    assert_int_equal(gw_gaveup_charge(&c, 3000, 400), 0); /* a clock before the sending */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_call_is_taken_once_for_its_own_worker_and_function),
        cmocka_unit_test(the_ring_forgets_the_oldest),
        cmocka_unit_test(a_share_listed_before_the_timeout_is_held_for_it),
        cmocka_unit_test(one_worker_cannot_push_out_anothers_held_shares),
        cmocka_unit_test(a_charge_is_capped_at_the_time_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
