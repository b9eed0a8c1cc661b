/* test_batcher_concurrent.c: many threads submit to one batcher at once, some with
 * deadlines that pass; every item ends exactly once (executed or expired), batches never
 * overlap and never exceed max_batch. Runs under TSan too. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "common/clock.h"
#include "worker/batcher.h"

enum { THREADS = 8, PER_THREAD = 200, MAX_BATCH = 16 };

typedef struct item {
    worker_batch_item link;
    atomic_int ends; /* executed or expired: must end at 1 */
    atomic_int executed;
} item;

static atomic_int running, overlap, too_big, total_executed, total_expired, batches;
static item items[THREADS * PER_THREAD];

static void on_exec(void *ctx, worker_batch_item **its, uint32_t n) {
    (void)ctx;
    if (atomic_fetch_add(&running, 1) != 0) atomic_store(&overlap, 1);
    if (n > MAX_BATCH || n == 0) atomic_store(&too_big, 1);
    struct timespec ts = {0, 200000}; /* 0.2 ms of "work" */
    nanosleep(&ts, NULL);
    for (uint32_t i = 0; i < n; i++) {
        item *it = (item *)its[i];
        atomic_fetch_add(&it->ends, 1);
        atomic_fetch_add(&it->executed, 1);
    }
    atomic_fetch_add(&total_executed, (int)n);
    atomic_fetch_add(&batches, 1);
    atomic_fetch_sub(&running, 1);
}

static void on_expire(void *ctx, worker_batch_item *w) {
    (void)ctx;
    item *it = (item *)w;
    atomic_fetch_add(&it->ends, 1);
    atomic_fetch_add(&total_expired, 1);
}

typedef struct targ {
    worker_batcher *b;
    int t;
    int refused;
} targ;

static void *producer(void *p) {
    targ *a = p;
    for (int i = 0; i < PER_THREAD; i++) {
        item *it = &items[a->t * PER_THREAD + i];
        uint64_t now = clock_now_us();
        it->link.arrival_us = now;
        /* One in four has a deadline of 1 ms: some of those expire; one in a hundred
         * arrives with its deadline already past: it must expire, never run. */
        it->link.deadline_us = (i % 100 == 0) ? now - 1 : (i % 4 == 0) ? now + 1000 : 0;
        if (worker_batcher_submit(a->b, &it->link, NULL) != AICFN_OK) {
            atomic_fetch_add(&it->ends, 1); /* refused: it never entered */
            a->refused++;
        }
        if (i % 16 == 0) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static void many_producers_one_executor(void **state) {
    (void)state;
    worker_batcher *b;
    worker_batcher_config cfg = {
        .max_batch = MAX_BATCH, .max_delay_us = 500, .max_queue = 100000, .name = "c"};
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, NULL, &b, NULL), 0);
    pthread_t th[THREADS];
    targ args[THREADS];
    for (int t = 0; t < THREADS; t++) {
        args[t] = (targ){.b = b, .t = t};
        assert_int_equal(pthread_create(&th[t], NULL, producer, &args[t]), 0);
    }
    int refused = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        refused += args[t].refused;
    }
    worker_batcher_destroy(b); /* drains */
    assert_int_equal(refused, 0);
    assert_int_equal(atomic_load(&overlap), 0);
    assert_int_equal(atomic_load(&too_big), 0);
    assert_int_equal(atomic_load(&total_executed) + atomic_load(&total_expired), THREADS * PER_THREAD);
    for (int i = 0; i < THREADS * PER_THREAD; i++)
        assert_int_equal(atomic_load(&items[i].ends), 1);
    /* Items without a deadline are always executed. */
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++)
            if (i % 4 != 0) assert_int_equal(atomic_load(&items[t * PER_THREAD + i].executed), 1);
    /* Those already past their deadline expired, unrun. */
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i += 100)
            assert_int_equal(atomic_load(&items[t * PER_THREAD + i].executed), 0);
    assert_true(atomic_load(&total_expired) >= THREADS * ((PER_THREAD + 99) / 100));
    /* With 8 producers and a 0.5 ms delay, batching actually happens: two items per
     * batch at least, on average (a batcher running batches of one fails this). */
    assert_true(atomic_load(&total_executed) >= 2 * atomic_load(&batches));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(many_producers_one_executor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
