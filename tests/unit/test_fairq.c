/* test_fairq.c: which queued call gives way when a function's full queue is shared
 * between tenants (gateway/fairq.h). */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>
// clang-format on

#include "gateway/fairq.h"

enum { A = 1, B = 2, C = 3 };

static void lone_tenant_is_refused_never_pushed_out(void **state) {
    (void)state;
    uint64_t q[8] = {A, A, A, A, A, A, A, A};
    assert_int_equal(gw_fairq_victim(q, 8, A), -1);
}

static void newcomer_pushes_out_the_hogs_newest_call(void **state) {
    (void)state;
    uint64_t q[8] = {A, A, B, A, A, A, B, A};
    assert_int_equal(gw_fairq_victim(q, 8, C), 7); /* A holds 6, C none: A's newest */
    assert_int_equal(gw_fairq_victim(q, 8, B), 7); /* B holds 2: 6 >= 2 + 2 */
}

static void no_push_out_below_a_margin_of_two(void **state) {
    (void)state;
    uint64_t even[4] = {A, B, A, B};
    assert_int_equal(gw_fairq_victim(even, 4, A), -1); /* B holds 2, A 2 */
    assert_int_equal(gw_fairq_victim(even, 4, B), -1);
    uint64_t one_more[5] = {A, B, A, B, A};
    assert_int_equal(gw_fairq_victim(one_more, 5, B), -1); /* A 3, B 2: A would keep 2 < B's 3 */
    uint64_t two_more[6] = {A, B, A, A, B, A};
    assert_int_equal(gw_fairq_victim(two_more, 6, B), 5); /* A 4, B 2: A keeps 3 = B's 3 */
}

static void a_tie_gives_way_with_the_newest_call(void **state) {
    (void)state;
    uint64_t q[6] = {A, A, A, B, B, B};
    assert_int_equal(gw_fairq_victim(q, 6, C), 5); /* A and B hold 3: B's newest is newer */
    uint64_t r[6] = {B, B, A, A, B, A};
    assert_int_equal(gw_fairq_victim(r, 6, C), 5); /* A's newest (5) is newer than B's (4) */
}

/* Repeated arrivals of a second tenant into a queue one tenant filled: the queue ends
 * with about equal parts, and every arrival of the first tenant is then refused. */
static void arrivals_converge_to_equal_parts(void **state) {
    (void)state;
    enum { N = 256 };
    uint64_t q[N];
    for (int i = 0; i < N; i++)
        q[i] = A;
    int admitted = 0;
    for (int k = 0; k < N; k++) {
        long v = gw_fairq_victim(q, N, B);
        if (v < 0) break;
        for (long i = v; i + 1 < N; i++) /* the victim leaves, the arrival joins the tail */
            q[i] = q[i + 1];
        q[N - 1] = B;
        admitted++;
    }
    assert_int_equal(admitted, N / 2);
    int a = 0;
    for (int i = 0; i < N; i++)
        a += q[i] == A;
    assert_int_equal(a, N / 2);
    assert_int_equal(gw_fairq_victim(q, N, A), -1);
    assert_int_equal(gw_fairq_victim(q, N, B), -1);
    assert_true(gw_fairq_victim(q, N, C) >= 0); /* a third tenant still gets in */
}

static void tenant_ids_tell_names_apart(void **state) {
    (void)state;
    assert_int_equal(gw_fairq_tenant_id("acme"), gw_fairq_tenant_id("acme"));
    assert_true(gw_fairq_tenant_id("acme") != gw_fairq_tenant_id("acme2"));
    assert_true(gw_fairq_tenant_id("") != gw_fairq_tenant_id("a"));
    assert_int_equal(gw_fairq_tenant_id(NULL), gw_fairq_tenant_id(""));
}

static void empty_queue_refuses(void **state) {
    (void)state;
    assert_int_equal(gw_fairq_victim(NULL, 0, A), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lone_tenant_is_refused_never_pushed_out),
        cmocka_unit_test(newcomer_pushes_out_the_hogs_newest_call),
        cmocka_unit_test(no_push_out_below_a_margin_of_two),
        cmocka_unit_test(a_tie_gives_way_with_the_newest_call),
        cmocka_unit_test(arrivals_converge_to_equal_parts),
        cmocka_unit_test(tenant_ids_tell_names_apart),
        cmocka_unit_test(empty_queue_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
