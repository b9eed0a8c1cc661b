/* test_bounded_close.c: closes waited for with a bound (common/bounded_close.h). The
 * close functions here stand in for NNG's: one returns at once, one blocks until the
 * test lets it go (as NNG 1.5.2's nng_close does when its reaper is stuck, for ever). */
// clang-format off
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>
// clang-format on

#include "common/bounded_close.h"
#include "common/clock.h"

typedef struct fake_sock {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int let_go;
    _Atomic int closed, released;
    _Atomic uint64_t released_after_us; /* when release ran (clock_now_us) */
} fake_sock;

static void fake_init(fake_sock *f, int let_go) {
    pthread_mutex_init(&f->mu, NULL);
    clock_cond_init(&f->cv);
    f->let_go = let_go;
    atomic_init(&f->closed, 0);
    atomic_init(&f->released, 0);
    atomic_init(&f->released_after_us, 0);
}

static void fake_fini(fake_sock *f) {
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
}

static void fake_close(void *arg) {
    fake_sock *f = arg;
    pthread_mutex_lock(&f->mu);
    while (!f->let_go)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    atomic_fetch_add(&f->closed, 1);
}

static void fake_release(void *arg) {
    fake_sock *f = arg;
    atomic_store(&f->released_after_us, clock_now_us());
    atomic_fetch_add(&f->released, 1);
}

/* A close that returns: the caller gets true at once and keeps its object (no release). */
static void close_that_returns_is_waited_for(void **state) {
    (void)state;
    fake_sock f;
    fake_init(&f, 1);
    uint64_t stuck = bounded_close_stuck();
    uint64_t t0 = clock_now_us();
    assert_true(bounded_close_run(fake_close, fake_release, &f, 10000, "test close"));
    assert_true(clock_now_us() - t0 < 5000000);
    assert_int_equal(atomic_load(&f.closed), 1); /* done before the call returned */
    assert_int_equal(atomic_load(&f.released), 0);
    assert_int_equal(bounded_close_stuck(), stuck);
    fake_fini(&f);
}

/* A close that hangs: the caller gets false once the bound has passed (not before, not
 * much after), the stuck count goes up, and the object is the closing thread's: it is
 * released when the close returns at last, and not before. */
static void close_that_hangs_is_left_after_the_bound(void **state) {
    (void)state;
    enum { BOUND_MS = 200 };
    fake_sock f;
    fake_init(&f, 0);
    uint64_t stuck = bounded_close_stuck();
    uint64_t t0 = clock_now_us();
    assert_false(bounded_close_run(fake_close, fake_release, &f, BOUND_MS, "test close"));
    uint64_t waited = clock_now_us() - t0;
    assert_true(waited >= BOUND_MS * 1000);
    assert_true(waited < BOUND_MS * 1000 + 3000000);
    assert_int_equal(bounded_close_stuck(), stuck + 1);
    usleep(50000);
    assert_int_equal(atomic_load(&f.closed), 0);
    assert_int_equal(atomic_load(&f.released), 0);
    uint64_t let_go_us = clock_now_us();
    pthread_mutex_lock(&f.mu);
    f.let_go = 1;
    pthread_cond_broadcast(&f.cv);
    pthread_mutex_unlock(&f.mu);
    for (int ms = 0; ms < 5000 && !atomic_load(&f.released); ms += 5)
        usleep(5000);
    assert_int_equal(atomic_load(&f.closed), 1);
    assert_int_equal(atomic_load(&f.released), 1);
    assert_true(atomic_load(&f.released_after_us) >= let_go_us);
    assert_int_equal(bounded_close_stuck(), stuck + 1);
    fake_fini(&f);
}

/* Many teardowns at once, half of them stuck for a while: each caller's answer matches
 * its close, and every stuck one is released exactly once. */
typedef struct many_arg {
    fake_sock f;
    int hang;
    int result;
} many_arg;

static void *many_thread(void *p) {
    many_arg *a = p;
    a->result = bounded_close_run(fake_close, fake_release, &a->f, a->hang ? 100 : 10000, "test close");
    return NULL;
}

static void many_teardowns_at_once(void **state) {
    (void)state;
    enum { N = 16 };
    static many_arg args[N];
    pthread_t th[N];
    uint64_t stuck = bounded_close_stuck();
    for (int i = 0; i < N; i++) {
        args[i].hang = i % 2;
        fake_init(&args[i].f, !args[i].hang);
        assert_int_equal(pthread_create(&th[i], NULL, many_thread, &args[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(bounded_close_stuck(), stuck + N / 2);
    for (int i = 0; i < N; i++) {
        assert_int_equal(args[i].result, !args[i].hang);
        if (!args[i].hang) continue;
        pthread_mutex_lock(&args[i].f.mu);
        args[i].f.let_go = 1;
        pthread_cond_broadcast(&args[i].f.cv);
        pthread_mutex_unlock(&args[i].f.mu);
    }
    for (int i = 0; i < N; i++) {
        for (int ms = 0; ms < 5000 && args[i].hang && !atomic_load(&args[i].f.released); ms += 5)
            usleep(5000);
        assert_int_equal(atomic_load(&args[i].f.closed), 1);
        assert_int_equal(atomic_load(&args[i].f.released), args[i].hang);
    }
    for (int i = 0; i < N; i++)
        fake_fini(&args[i].f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(close_that_returns_is_waited_for),
        cmocka_unit_test(close_that_hangs_is_left_after_the_bound),
        cmocka_unit_test(many_teardowns_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
