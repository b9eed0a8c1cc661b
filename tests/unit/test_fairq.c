/* test_fairq.c: the order in which a function's queue serves its tenants, and which
 * queued call gives way when the full queue is shared between them (gateway/fairq.h). */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
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

/* A queue as gateway.c keeps it: calls in the order of service, with their tags. */
typedef struct fq_model {
    uint64_t tenant[64], tag[64], seq[64];
    size_t n;
    uint64_t clock, arrivals;
} fq_model;

static void fq_join(fq_model *q, uint64_t tenant) {
    uint64_t tag = 0;
    size_t at = gw_fairq_place(q->tenant, q->tag, q->n, q->clock, tenant, &tag);
    assert_true(at <= q->n && q->n < 64);
    for (size_t i = q->n; i > at; i--) {
        q->tenant[i] = q->tenant[i - 1];
        q->tag[i] = q->tag[i - 1];
        q->seq[i] = q->seq[i - 1];
    }
    q->tenant[at] = tenant;
    q->tag[at] = tag;
    q->seq[at] = q->arrivals++;
    q->n++;
}

/* Serves the head: returns its tenant (and its arrival number in *seq). */
static uint64_t fq_serve(fq_model *q, uint64_t *seq) {
    assert_true(q->n > 0);
    uint64_t t = q->tenant[0];
    if (seq) *seq = q->seq[0];
    q->clock = q->tag[0];
    for (size_t i = 1; i < q->n; i++) {
        q->tenant[i - 1] = q->tenant[i];
        q->tag[i - 1] = q->tag[i];
        q->seq[i - 1] = q->seq[i];
    }
    q->n--;
    return t;
}

static void tenants_are_served_in_turn(void **state) {
    (void)state;
    fq_model q = {0};
    for (int i = 0; i < 5; i++)
        fq_join(&q, A);
    fq_join(&q, B);
    fq_join(&q, B);
    fq_join(&q, C);
    uint64_t want[] = {A, B, C, A, B, A, A, A};
    for (size_t i = 0; i < 8; i++)
        assert_int_equal(fq_serve(&q, NULL), want[i]);
    assert_int_equal(q.n, 0);
}

static void a_lone_tenant_is_served_in_arrival_order(void **state) {
    (void)state;
    fq_model q = {0};
    for (int i = 0; i < 10; i++)
        fq_join(&q, A);
    for (uint64_t i = 0; i < 10; i++) {
        uint64_t seq;
        assert_int_equal(fq_serve(&q, &seq), A);
        assert_int_equal(seq, i);
    }
}

/* A tenant that sent nothing while another was served gets the next turn, not a burst
 * of turns for the time it was away. */
static void an_idle_tenant_earns_no_credit(void **state) {
    (void)state;
    fq_model q = {0};
    for (int i = 0; i < 40; i++)
        fq_join(&q, A);
    for (int i = 0; i < 30; i++)
        assert_int_equal(fq_serve(&q, NULL), A);
    for (int i = 0; i < 3; i++)
        fq_join(&q, B);
    uint64_t want[] = {A, B, A, B, A, B, A, A};
    for (size_t i = 0; i < 8; i++)
        assert_int_equal(fq_serve(&q, NULL), want[i]);
}

/* Takes the call at index i out unserved (its deadline passed, or its caller left). */
static void fq_drop(fq_model *q, size_t i) {
    assert_true(i < q->n);
    for (; i + 1 < q->n; i++) {
        q->tenant[i] = q->tenant[i + 1];
        q->tag[i] = q->tag[i + 1];
        q->seq[i] = q->seq[i + 1];
    }
    q->n--;
}

/* Calls that leave unserved give no one credit: A's ten calls time out at the head while
 * its eleventh waits, then B sends ten; A's waiting call keeps its turn (A, B, B...), as
 * it does when A's calls between its first and its last are canceled. Before, the clock
 * stayed at the last call served, and B's ten all went ahead of A's. */
static void calls_that_leave_unserved_give_no_credit(void **state) {
    (void)state;
    fq_model q = {0};
    for (int i = 0; i < 11; i++)
        fq_join(&q, A);
    for (int i = 0; i < 10; i++)
        fq_drop(&q, 0);
    for (int i = 0; i < 10; i++)
        fq_join(&q, B);
    assert_int_equal(fq_serve(&q, NULL), A);
    for (int i = 0; i < 10; i++)
        assert_int_equal(fq_serve(&q, NULL), B);

    fq_model r = {0};
    for (int i = 0; i < 11; i++)
        fq_join(&r, A);
    for (int i = 0; i < 9; i++)
        fq_drop(&r, 1);                      /* A's 2nd to 10th */
    assert_int_equal(fq_serve(&r, NULL), A); /* its 1st: the clock is 1, its 11th has tag 11 */
    fq_join(&r, B);
    fq_join(&r, B);
    uint64_t want[] = {A, B, B};
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(fq_serve(&r, NULL), want[i]);
}

/* Random arrivals and services of four tenants: tags stay in order, each tenant's calls
 * are served in the order they came, and two tenants that both keep calls waiting are
 * never more than one call apart in what they are served. */
static void random_arrivals_keep_turns_and_order(void **state) {
    (void)state;
    fq_model q = {0};
    uint64_t rnd = 42, last_seq[5] = {0}, served[5] = {0};
    bool seen[5] = {false};
    for (int step = 0; step < 20000; step++) {
        rnd = rnd * 6364136223846793005ull + 1442695040888963407ull;
        if (q.n < 60 && ((rnd >> 33) % 3 != 0 || q.n == 0)) {
            fq_join(&q, 1 + (rnd >> 40) % 4);
        } else {
            uint64_t before[5] = {0};
            for (size_t i = 0; i < q.n; i++)
                before[q.tenant[i]]++;
            uint64_t seq, t = fq_serve(&q, &seq);
            if (seen[t]) assert_true(seq > last_seq[t]);
            seen[t] = true;
            last_seq[t] = seq;
            served[t]++;
            /* Every other tenant still waiting is served in this round or the next. */
            for (uint64_t u = 1; u <= 4; u++)
                if (u != t && before[u] > 0)
                    for (size_t i = 0; i < q.n; i++)
                        if (q.tenant[i] == u) {
                            uint64_t tu = q.tag[i]; /* u's next tag */
                            assert_true(tu <= q.clock + 1);
                            break;
                        }
        }
        for (size_t i = 1; i < q.n; i++)
            assert_true(q.tag[i - 1] <= q.tag[i]);
        for (size_t i = 0; i < q.n; i++) /* a call of the round being served shares its tag */
            assert_true(q.tag[i] >= q.clock);
    }
    for (int t = 1; t <= 4; t++)
        assert_true(served[t] > 1000);
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
        cmocka_unit_test(tenants_are_served_in_turn),
        cmocka_unit_test(a_lone_tenant_is_served_in_arrival_order),
        cmocka_unit_test(an_idle_tenant_earns_no_credit),
        cmocka_unit_test(calls_that_leave_unserved_give_no_credit),
        cmocka_unit_test(random_arrivals_keep_turns_and_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
