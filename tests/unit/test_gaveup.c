/* test_gaveup.c: the book of calls that timed out at a worker (gateway/gaveup.h): a call
 * is billed only for its own worker, function and version, once, and only while the
 * ring still holds it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/gaveup.h"

#define NOW 2000 /* wall clock of the takes: just after the calls (row_us 1000 + gid) */

static gw_gaveup_call call_of(uint64_t gid, const char *worker, const char *fn, uint32_t ver) {
    gw_gaveup_call c = {.gid = gid, .row_us = 1000 + gid, .sent_us = 500 + gid, .ver = ver};
    snprintf(c.worker, sizeof c.worker, "%s", worker);
    snprintf(c.fn, sizeof c.fn, "%s", fn);
    return c;
}

static void a_call_is_taken_once_for_its_own_worker_and_function(void **state) {
    (void)state;
    gw_gaveup *g = gw_gaveup_create(8);
    assert_non_null(g);
    gw_gaveup_call c = call_of(5, "w1", "big", 2);
    gw_gaveup_note(g, &c);
    gw_gaveup_call out;
    assert_false(gw_gaveup_take(g, 5, "w2", "big", 2, NOW, &out)); /* another worker's word */
    assert_false(gw_gaveup_take(g, 5, "w1", "big", 1, NOW, &out)); /* another version */
    assert_false(gw_gaveup_take(g, 5, "w1", "bog", 2, NOW, &out)); /* another function */
    assert_false(gw_gaveup_take(g, 6, "w1", "big", 2, NOW, &out)); /* a call not seen to time out */
    assert_false(gw_gaveup_take(g, 0, "w1", "big", 2, NOW, &out));
    assert_true(gw_gaveup_take(g, 5, "w1", "big", 2, NOW, &out));
    assert_int_equal(out.row_us, 1005);
    assert_int_equal(out.sent_us, 505);
    assert_false(gw_gaveup_take(g, 5, "w1", "big", 2, NOW, &out)); /* billed: gone */
    /* Listed long after the call timed out: not taken (what a worker could claim grows
     * with the time since). */
    gw_gaveup_note(g, &c);
    assert_false(
        gw_gaveup_take(g, 5, "w1", "big", 2, 1005 + AICFN_GW_GAVE_UP_MAX_AGE_MS * 1000ull + 1, &out));
    assert_true(gw_gaveup_take(g, 5, "w1", "big", 2, 1005 + AICFN_GW_GAVE_UP_MAX_AGE_MS * 1000ull, &out));
    gw_gaveup_destroy(g);
}

static void the_ring_forgets_the_oldest(void **state) {
    (void)state;
    gw_gaveup *g = gw_gaveup_create(4);
    for (uint64_t gid = 1; gid <= 6; gid++) {
        gw_gaveup_call c = call_of(gid, "w1", "f", 1);
        gw_gaveup_note(g, &c);
    }
    assert_false(gw_gaveup_take(g, 1, "w1", "f", 1, NOW, NULL));
    assert_false(gw_gaveup_take(g, 2, "w1", "f", 1, NOW, NULL));
    for (uint64_t gid = 3; gid <= 6; gid++)
        assert_true(gw_gaveup_take(g, gid, "w1", "f", 1, NOW, NULL));
    /* A call noted twice (sent on to a second worker, timed out there too) is taken for each. */
    gw_gaveup_call a = call_of(9, "w1", "f", 1), b = call_of(9, "w2", "f", 1);
    gw_gaveup_note(g, &a);
    gw_gaveup_note(g, &b);
    assert_true(gw_gaveup_take(g, 9, "w2", "f", 1, NOW, NULL));
    assert_true(gw_gaveup_take(g, 9, "w1", "f", 1, NOW, NULL));
    /* Not noted: no id, or names not NUL-terminated within their fields. */
    gw_gaveup_call z = call_of(0, "w1", "f", 1), bad = call_of(11, "w1", "f", 1);
    memset(bad.fn, 'x', sizeof bad.fn);
    gw_gaveup_note(g, &z);
    gw_gaveup_note(g, &bad);
    gw_gaveup_note(NULL, &a);
    assert_false(gw_gaveup_take(g, 11, "w1", "f", 1, NOW, NULL));
    assert_false(gw_gaveup_take(NULL, 9, "w1", "f", 1, NOW, NULL));
    gw_gaveup_destroy(g);
    gw_gaveup_destroy(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_call_is_taken_once_for_its_own_worker_and_function),
        cmocka_unit_test(the_ring_forgets_the_oldest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
