/* test_batcher.c: batch formation (max_batch, max_delay since the OLDEST request, never
 * past half of a request's time left),
 * deadline expiry while a batch runs, queue limits, flush, close and drain (worker/batcher.c). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "common/clock.h"
#include "worker/batcher.h"

typedef struct item {
    worker_batch_item link;
    int id;
    int executed;
    int expired;
    uint32_t batch;
    uint64_t done_us;
} item;

typedef struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int batches;
    uint32_t sizes[64];
    long sleep_ms_first; /* the first batch sleeps this long */
} rec;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void on_exec(void *ctx, worker_batch_item **items, uint32_t n) {
    rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    int first = r->batches == 0;
    if (r->batches < 64) r->sizes[r->batches] = n;
    r->batches++;
    pthread_mutex_unlock(&r->mu);
    if (first && r->sleep_ms_first) sleep_ms(r->sleep_ms_first);
    pthread_mutex_lock(&r->mu);
    for (uint32_t i = 0; i < n; i++) {
        item *it = (item *)items[i];
        it->executed = 1;
        it->batch = n;
        it->done_us = clock_now_us();
        r->done++;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void on_expire(void *ctx, worker_batch_item *w) {
    rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    item *it = (item *)w;
    it->expired = 1;
    it->done_us = clock_now_us();
    r->done++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Waits (bounded, 5 s) until `n` items are done. */
static void wait_done(rec *r, int n) {
    uint64_t until = clock_now_us() + 5000000;
    pthread_mutex_lock(&r->mu);
    while (r->done < n && clock_now_us() < until) {
        struct timespec ts;
        clock_deadline_to_timespec(clock_now_us() + 10000, &ts);
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    int done = r->done;
    pthread_mutex_unlock(&r->mu);
    assert_int_equal(done, n);
}

/* The batcher counts a batch after its callback returns: poll (bounded, 5 s) until it has. */
static void wait_stats(worker_batcher *b, uint64_t executed, uint64_t expired, worker_batcher_stats *st) {
    uint64_t until = clock_now_us() + 5000000;
    do {
        worker_batcher_get_stats(b, st);
        if (st->executed == executed && st->expired == expired) return;
        sleep_ms(1);
    } while (clock_now_us() < until);
}

static void rec_init(rec *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    clock_cond_init(&r->cv);
}

static void rec_fini(rec *r) {
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static void submit(worker_batcher *b, item *it, int id, uint64_t arrival, uint64_t deadline) {
    memset(it, 0, sizeof *it);
    it->id = id;
    it->link.arrival_us = arrival;
    it->link.deadline_us = deadline;
    assert_int_equal(worker_batcher_submit(b, &it->link, NULL), 0);
}

static void full_batches_leave_at_once(void **state) {
    (void)state;
    rec r;
    rec_init(&r);
    worker_batcher *b;
    worker_batcher_config cfg = {.max_batch = 4, .max_delay_us = 10000000, .name = "t"};
    /* The first batch is held for 100 ms so that all 8 items queue behind it. */
    r.sleep_ms_first = 100;
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, &r, &b, NULL), 0);
    item its[9];
    uint64_t t0 = clock_now_us();
    for (int i = 0; i < 4; i++)
        submit(b, &its[i], i, clock_now_us(), 0);
    for (int i = 4; i < 8; i++)
        submit(b, &its[i], i, clock_now_us(), 0);
    wait_done(&r, 8);
    /* Two full batches, long before the 10 s delay. */
    assert_true(clock_now_us() - t0 < 2000000);
    assert_int_equal(r.batches, 2);
    assert_int_equal(r.sizes[0], 4);
    assert_int_equal(r.sizes[1], 4);
    for (int i = 0; i < 8; i++)
        assert_true(its[i].executed && !its[i].expired);
    worker_batcher_stats st;
    wait_stats(b, 8, 0, &st);
    assert_int_equal(st.batches, 2);
    assert_int_equal(st.executed, 8);
    worker_batcher_destroy(b);
    rec_fini(&r);
}

static void partial_batch_waits_max_delay(void **state) {
    (void)state;
    rec r;
    rec_init(&r);
    worker_batcher *b;
    worker_batcher_config cfg = {.max_batch = 8, .max_delay_us = 30000, .name = "t"};
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, &r, &b, NULL), 0);
    item its[3];
    uint64_t t0 = clock_now_us();
    submit(b, &its[0], 0, t0, 0);
    sleep_ms(10);
    submit(b, &its[1], 1, clock_now_us(), 0);
    submit(b, &its[2], 2, clock_now_us(), 0);
    wait_done(&r, 3);
    /* All three in one batch that left about 30 ms after the OLDEST arrived. */
    assert_int_equal(r.batches, 1);
    assert_int_equal(r.sizes[0], 3);
    assert_true(its[0].link.dequeued_us - t0 >= 30000);
    assert_true(its[0].link.dequeued_us - t0 < 1000000);
    worker_batcher_destroy(b);

    /* An item that arrived long ago (by its arrival time) leaves at once. */
    rec_init(&r);
    cfg.max_delay_us = 5000000;
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, &r, &b, NULL), 0);
    uint64_t now = clock_now_us();
    submit(b, &its[0], 0, now - 6000000, 0);
    wait_done(&r, 1);
    assert_true(clock_now_us() - now < 1000000);
    worker_batcher_destroy(b);
    rec_fini(&r);
}

/* After a flush a partial batch leaves at once, and items are still accepted (a function
 * being removed finishes the calls it accepted, worker_remove_function). */
static void flush_sends_partial_batches_and_still_accepts(void **state) {
    (void)state;
    rec r;
    rec_init(&r);
    worker_batcher *b;
    worker_batcher_config cfg = {.max_batch = 8, .max_delay_us = 10000000, .name = "t"};
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, &r, &b, NULL), 0);
    item its[2];
    uint64_t t0 = clock_now_us();
    submit(b, &its[0], 0, t0, 0);
    worker_batcher_flush(b);
    wait_done(&r, 1);
    submit(b, &its[1], 1, clock_now_us(), 0);
    wait_done(&r, 2);
    /* Two batches of one, long before the 10 s delay. */
    assert_true(clock_now_us() - t0 < 2000000);
    assert_int_equal(r.batches, 2);
    assert_true(its[0].executed && its[1].executed);
    worker_batcher_close(b);
    assert_int_equal(worker_batcher_submit(b, &its[0].link, NULL), AICFN_E_UNAVAILABLE);
    worker_batcher_destroy(b);
    rec_fini(&r);
}

/* A lone request whose deadline comes before max_delay_us runs out is sent, not expired:
 * waiting for company takes at most half of the time it had left on arrival. */
static void lone_request_leaves_before_its_deadline(void **state) {
    (void)state;
    rec r;
    rec_init(&r);
    worker_batcher *b;
    worker_batcher_config cfg = {.max_batch = 8, .max_delay_us = 2000000, .name = "t"};
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, &r, &b, NULL), 0);
    item it;
    uint64_t t0 = clock_now_us(), deadline = t0 + 400000;
    submit(b, &it, 0, t0, deadline);
    wait_done(&r, 1);
    assert_true(it.executed);
    assert_false(it.expired);
    assert_int_equal(r.batches, 1);
    /* It left at the halfway point, not at once: it still waited for company. */
    assert_true(it.link.dequeued_us >= t0 + 200000);
    assert_true(it.link.dequeued_us < deadline);
    worker_batcher_destroy(b);
    rec_fini(&r);
}

/* A batcher of max_batch 1 whose first batch (`first`, submitted here at *t0) runs
 * `first_ms`; returns once the executor is inside it. */
static worker_batcher *start_busy(rec *r, long first_ms, item *first, uint64_t *t0) {
    rec_init(r);
    r->sleep_ms_first = first_ms;
    worker_batcher *b;
    worker_batcher_config cfg = {.max_batch = 1, .max_delay_us = 0, .name = "t"};
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, r, &b, NULL), 0);
    *t0 = clock_now_us();
    submit(b, first, 0, *t0, 0);
    sleep_ms(20);
    return b;
}

static void deadline_expires_while_busy(void **state) {
    (void)state;
    rec r;
    item its[3];
    uint64_t t0;
    worker_batcher *b = start_busy(&r, 300, &its[0], &t0);
    submit(b, &its[1], 1, clock_now_us(), clock_now_us() + 30000);
    submit(b, &its[2], 2, clock_now_us(), 0);
    wait_done(&r, 3);
    assert_true(its[0].executed);
    assert_true(its[1].expired);
    assert_false(its[1].executed);
    assert_true(its[2].executed);
    /* The expiry happened while the first batch still ran (reaper), not after it. */
    assert_true(its[1].done_us - t0 < 250000);
    worker_batcher_stats st;
    wait_stats(b, 2, 1, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.executed, 2);
    worker_batcher_destroy(b);

    /* An item already past its deadline when submitted never runs either. */
    rec_fini(&r);
    rec_init(&r);
    worker_batcher_config cfg = {.max_batch = 1, .max_delay_us = 0, .name = "t"};
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, &r, &b, NULL), 0);
    uint64_t now = clock_now_us();
    submit(b, &its[0], 0, now, now - 1);
    wait_done(&r, 1);
    assert_true(its[0].expired && !its[0].executed);
    worker_batcher_destroy(b);
    rec_fini(&r);
}

static void queue_limit_close_and_drain(void **state) {
    (void)state;
    rec r;
    rec_init(&r);
    r.sleep_ms_first = 100;
    worker_batcher *b;
    worker_batcher_config cfg = {.max_batch = 2, .max_delay_us = 10000000, .max_queue = 3, .name = "t"};
    assert_int_equal(worker_batcher_create(&cfg, on_exec, on_expire, &r, &b, NULL), 0);
    item its[6];
    submit(b, &its[0], 0, clock_now_us(), 0);
    submit(b, &its[1], 1, clock_now_us(), 0);
    sleep_ms(20); /* batch {0,1} runs for 100 ms */
    submit(b, &its[2], 2, clock_now_us(), 0);
    submit(b, &its[3], 3, clock_now_us(), 0);
    submit(b, &its[4], 4, clock_now_us(), 0);
    aicfn_error err;
    memset(&its[5], 0, sizeof its[5]);
    its[5].link.arrival_us = clock_now_us();
    assert_int_equal(worker_batcher_submit(b, &its[5].link, &err), AICFN_E_OVERLOADED);
    worker_batcher_close(b);
    assert_int_equal(worker_batcher_submit(b, &its[5].link, &err), AICFN_E_UNAVAILABLE);
    /* Destroy drains: the queued items run without waiting for the 10 s delay. */
    uint64_t t0 = clock_now_us();
    worker_batcher_destroy(b);
    assert_true(clock_now_us() - t0 < 2000000);
    assert_int_equal(r.done, 5);
    for (int i = 0; i < 5; i++)
        assert_true(its[i].executed);
    assert_false(its[5].executed);
    rec_fini(&r);

    assert_int_equal(
        worker_batcher_create(&(worker_batcher_config){.max_batch = 0}, on_exec, on_expire, &r, &b, &err),
        AICFN_E_INVALID);
    worker_batcher_destroy(NULL);
}

/* run_inline: with nothing queued or running, the batch of one runs inside
 * worker_batcher_submit on the caller's thread; while it runs, later items queue and
 * run on the executor after it, never concurrently with it. */
typedef struct inl {
    rec r;
    pthread_t ran_on[4];
    int running, max_running;
    worker_batcher *b;
    item its[4];
} inl;

static void inl_exec(void *ctx, worker_batch_item **items, uint32_t n) {
    inl *x = ctx;
    pthread_mutex_lock(&x->r.mu);
    int id = ((item *)items[0])->id;
    if (id >= 0 && id < 4) x->ran_on[id] = pthread_self();
    if (++x->running > x->max_running) x->max_running = x->running;
    pthread_mutex_unlock(&x->r.mu);
    if (id == 1) sleep_ms(150);
    pthread_mutex_lock(&x->r.mu);
    x->running--;
    pthread_mutex_unlock(&x->r.mu);
    on_exec(&x->r, items, n);
}

static void inl_expire(void *ctx, worker_batch_item *w) {
    on_expire(&((inl *)ctx)->r, w);
}

/* A batcher of max_batch 1 with run_inline, recording into a new inl. */
static inl *inl_new(void) {
    inl *x = calloc(1, sizeof *x);
    assert_non_null(x);
    rec_init(&x->r);
    worker_batcher_config cfg = {.max_batch = 1, .max_delay_us = 0, .name = "t", .run_inline = true};
    assert_int_equal(worker_batcher_create(&cfg, inl_exec, inl_expire, x, &x->b, NULL), 0);
    return x;
}

static void *inl_submit_1(void *arg) {
    inl *x = arg;
    submit(x->b, &x->its[1], 1, clock_now_us(), 0);
    return NULL;
}

/* Submits item 1 from a new thread (returned) and waits until it runs there, inline,
 * for 150 ms (inl_exec). */
static pthread_t inl_start_1(inl *x) {
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, inl_submit_1, x), 0);
    uint64_t until = clock_now_us() + 5000000;
    for (;;) {
        pthread_mutex_lock(&x->r.mu);
        int running = x->running;
        pthread_mutex_unlock(&x->r.mu);
        if (running || clock_now_us() > until) break;
        sleep_ms(1);
    }
    return t;
}

static void inline_runs_on_submitting_thread(void **state) {
    (void)state;
    inl *x = inl_new();
    /* Idle batcher: executed before submit returns, on this thread. */
    submit(x->b, &x->its[0], 0, clock_now_us(), 0);
    assert_true(x->its[0].executed);
    assert_true(pthread_equal(x->ran_on[0], pthread_self()));
    /* Item 1 runs inline on another thread for 150 ms; item 2 queues behind it. */
    pthread_t t = inl_start_1(x);
    submit(x->b, &x->its[2], 2, clock_now_us(), 0);
    pthread_mutex_lock(&x->r.mu);
    int ran2 = x->its[2].executed;
    pthread_mutex_unlock(&x->r.mu);
    assert_false(ran2);
    wait_done(&x->r, 3);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(pthread_equal(x->ran_on[1], t));
    assert_false(pthread_equal(x->ran_on[2], pthread_self()));
    assert_false(pthread_equal(x->ran_on[2], t));
    assert_int_equal(x->max_running, 1);
    assert_true(x->its[2].done_us >= x->its[1].done_us);
    /* Past its deadline when submitted: expired, never run. */
    uint64_t now = clock_now_us();
    submit(x->b, &x->its[3], 3, now, now - 1);
    wait_done(&x->r, 4);
    assert_true(x->its[3].expired && !x->its[3].executed);
    worker_batcher_stats st;
    wait_stats(x->b, 3, 1, &st);
    assert_int_equal(st.executed, 3);
    assert_int_equal(st.expired, 1);
    worker_batcher_destroy(x->b);
    rec_fini(&x->r);
    free(x);
}

/* The reaper is woken only for a deadline earlier than the one it sleeps towards: while
 * a batch runs, an item with a later deadline queued after one with an earlier deadline
 * (and the reverse) must both expire on time. Once on the executor, once while a batch
 * runs inline (the reaper is not watching yet when the first item queues). */
static void reaper_wakes_for_earlier_deadlines(void **state) {
    (void)state;
    rec r;
    item its[4];
    uint64_t t0;
    worker_batcher *b = start_busy(&r, 900, &its[0], &t0);
    submit(b, &its[1], 1, clock_now_us(), clock_now_us() + 400000);   /* the reaper sleeps towards this */
    submit(b, &its[2], 2, clock_now_us(), clock_now_us() + 10000000); /* later: no wake-up needed */
    sleep_ms(30); /* the reaper now sleeps towards item 1's deadline */
    submit(b, &its[3], 3, clock_now_us(), clock_now_us() + 40000); /* earlier: must wake it */
    wait_done(&r, 4);
    assert_true(its[1].expired && its[3].expired);
    assert_true(its[2].executed);
    assert_true(its[3].done_us - t0 < 300000); /* at its own deadline, not item 1's */
    assert_true(its[1].done_us - t0 < 800000); /* before the running batch ended */
    assert_true(its[3].done_us <= its[1].done_us);
    worker_batcher_destroy(b);
    rec_fini(&r);

    inl *x = inl_new();
    t0 = clock_now_us();
    pthread_t t = inl_start_1(x); /* item 1 runs inline for 150 ms */
    submit(x->b, &x->its[2], 2, clock_now_us(), clock_now_us() + 30000);
    wait_done(&x->r, 1);
    pthread_mutex_lock(&x->r.mu);
    int expired2 = x->its[2].expired, ran1 = x->its[1].executed;
    pthread_mutex_unlock(&x->r.mu);
    assert_true(expired2);
    assert_false(ran1); /* expired while the inline batch still ran */
    wait_done(&x->r, 2);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(x->its[1].executed);
    worker_batcher_destroy(x->b);
    rec_fini(&x->r);
    free(x);
}

/* Closing while a batch runs inline: the executor, waiting for it, is woken once it
 * ends and exits (it is not woken after inline calls otherwise, so this wake-up must
 * not be lost), and destroy returns. */
typedef struct destroyer {
    worker_batcher *b;
    atomic_int done;
} destroyer;

static void *destroy_main(void *arg) {
    destroyer *d = arg;
    worker_batcher_destroy(d->b);
    atomic_store(&d->done, 1);
    return NULL;
}

static void close_while_inline_runs(void **state) {
    (void)state;
    inl *x = inl_new();
    pthread_t t = inl_start_1(x);
    destroyer d = {.b = x->b};
    atomic_init(&d.done, 0);
    pthread_t dt;
    assert_int_equal(pthread_create(&dt, NULL, destroy_main, &d), 0);
    uint64_t until = clock_now_us() + 5000000;
    while (!atomic_load(&d.done) && clock_now_us() < until)
        sleep_ms(5);
    assert_true(atomic_load(&d.done)); /* else the executor slept through the close */
    assert_int_equal(pthread_join(dt, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(x->its[1].executed);
    rec_fini(&x->r);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_batches_leave_at_once),
        cmocka_unit_test(partial_batch_waits_max_delay),
        cmocka_unit_test(flush_sends_partial_batches_and_still_accepts),
        cmocka_unit_test(lone_request_leaves_before_its_deadline),
        cmocka_unit_test(deadline_expires_while_busy),
        cmocka_unit_test(queue_limit_close_and_drain),
        cmocka_unit_test(reaper_wakes_for_earlier_deadlines),
        cmocka_unit_test(inline_runs_on_submitting_thread),
        cmocka_unit_test(close_while_inline_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
