/* test_rpc_link_concurrency.c: the socketpair transport (rpc_server_start_link,
 * rpc_client_open_link) under concurrency, also run under TSan: 8 threads of sync and
 * async calls of mixed sizes (up to 256 KiB, so the writer thread finishes some frames)
 * answered out of order by 3 replier threads, every reply checked against its request;
 * a storm of short-deadline calls racing fail_inflight, the server's shutdown and the
 * client's close, where every call must complete exactly once; and checked echoes
 * answered on the link's reader itself, one in eight after sleeping past the 2 ms that
 * makes the standby take the reading over (the roles swap back and forth). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/rpc.h"

/* ---- a server whose handler enqueues; repliers answer in any order -------------------- */

#define QCAP 256

typedef struct deferred {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rpc_call *q[QCAP];
    unsigned count;
    bool stop;
    pthread_t repliers[3];
    unsigned seed;
} deferred;

static void deferred_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    (void)msg;
    (void)len;
    deferred *d = user;
    pthread_mutex_lock(&d->mu);
    assert_true(d->count < QCAP); /* at most `contexts` calls are ever out */
    d->q[d->count++] = call;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void *replier(void *arg) {
    deferred *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (d->count == 0 && !d->stop)
            pthread_cond_wait(&d->cv, &d->mu);
        if (d->count == 0 && d->stop) break;
        d->seed = d->seed * 1103515245u + 12345u;
        unsigned i = (d->seed >> 8) % d->count; /* any of the waiting calls */
        rpc_call *c = d->q[i];
        d->q[i] = d->q[--d->count];
        pthread_mutex_unlock(&d->mu);
        rpc_reply_msg(c, rpc_call_take_request(c)); /* echo, no copy */
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void deferred_start(deferred *d) {
    memset(d, 0, sizeof *d);
    d->seed = 7;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&d->repliers[i], NULL, replier, d), 0);
}

static void deferred_stop(deferred *d) {
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (int i = 0; i < 3; i++)
        pthread_join(d->repliers[i], NULL);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
}

/* ---- 8 threads, checked echoes ---------------------------------------------------------- */

typedef struct caller {
    rpc_client *c;
    unsigned id;
    unsigned ok;
} caller;

typedef struct await {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    rpc_msg *reply;
} await;

static void await_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    await *a = user;
    pthread_mutex_lock(&a->mu);
    assert_false(a->done); /* exactly once */
    a->done = true;
    a->status = status;
    a->reply = reply;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static size_t msg_fill(uint8_t *buf, unsigned who, unsigned k) {
    size_t len = 16 + ((size_t)(who * 7919u + k * 104729u) % 4) * ((k % 5 == 0) ? 65536 : 97);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(who * 31 + k * 17 + i);
    return len;
}

static void *caller_main(void *arg) {
    caller *cl = arg;
    uint8_t *buf = malloc(4 * 65536 + 64);
    assert_non_null(buf);
    for (unsigned k = 0; k < 150; k++) {
        size_t len = msg_fill(buf, cl->id, k);
        rpc_msg *r = NULL;
        aicfn_error e;
        int rc;
        if (k % 2) {
            rc = rpc_call_sync(cl->c, buf, len, 10000, &r, &e);
        } else {
            await a = {.done = false};
            pthread_mutex_init(&a.mu, NULL);
            pthread_cond_init(&a.cv, NULL);
            rc = rpc_call_async(cl->c, buf, len, 10000, await_done, &a, &e);
            if (rc == AICFN_OK) {
                pthread_mutex_lock(&a.mu);
                while (!a.done)
                    pthread_cond_wait(&a.cv, &a.mu); /* the 10 s deadline bounds it */
                pthread_mutex_unlock(&a.mu);
                rc = a.status;
                r = a.reply;
            }
            pthread_cond_destroy(&a.cv);
            pthread_mutex_destroy(&a.mu);
        }
        assert_int_equal(rc, AICFN_OK);
        assert_int_equal(rpc_msg_len(r), len);
        assert_memory_equal(rpc_msg_data(r), buf, len);
        rpc_msg_free(r);
        cl->ok++;
    }
    free(buf);
    return NULL;
}

/* Answers on the reader itself; every eighth request first sleeps 3 ms (a takeover). */
static atomic_uint g_inline_calls;
static void inline_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    (void)user;
    if (atomic_fetch_add(&g_inline_calls, 1) % 8 == 7) usleep(3000);
    rpc_reply(call, msg, len);
}

static void checked_echoes(rpc_handler_fn fn, void *user) {
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    rpc_server *s = NULL;
    rpc_client *c = NULL;
    aicfn_error e;
    rpc_server_opts so = {.contexts = 16};
    assert_int_equal(rpc_server_start_link(&s, sv[1], &so, fn, user, &e), AICFN_OK);
    assert_int_equal(rpc_client_open_link(&c, sv[0], NULL, &e), AICFN_OK);
    caller cl[8];
    pthread_t th[8];
    for (unsigned i = 0; i < 8; i++) {
        cl[i] = (caller){.c = c, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, caller_main, &cl[i]), 0);
    }
    for (unsigned i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(cl[i].ok, 150);
    }
    rpc_client_close(c);
    rpc_server_destroy(s);
}

static void eight_threads_checked_echoes(void **state) {
    (void)state;
    deferred d;
    deferred_start(&d);
    checked_echoes(deferred_handler, &d);
    deferred_stop(&d);
}

static void checked_echoes_with_takeovers(void **state) {
    (void)state;
    checked_echoes(inline_handler, NULL);
    assert_true(atomic_load(&g_inline_calls) == 8 * 150);
}

/* ---- a storm that ends badly: every call completes once ---------------------------------- */

typedef struct storm {
    rpc_client *c;
    atomic_uint started, completed;
    atomic_bool stop;
} storm;

static void storm_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)status;
    (void)err;
    storm *st = user;
    rpc_msg_free(reply);
    atomic_fetch_add(&st->completed, 1);
}

static void *storm_caller(void *arg) {
    storm *st = arg;
    for (unsigned k = 0; k < 400 && !atomic_load(&st->stop); k++) {
        aicfn_error e;
        uint8_t m[64] = {(uint8_t)k};
        if (rpc_call_async(st->c, m, sizeof m, 1 + k % 30, storm_done, st, &e) == AICFN_OK)
            atomic_fetch_add(&st->started, 1);
    }
    return NULL;
}

static void storm_races_fail_shutdown_and_close(void **state) {
    (void)state;
    for (int round = 0; round < 5; round++) {
        deferred d;
        deferred_start(&d);
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        rpc_server *s = NULL;
        aicfn_error e;
        rpc_server_opts so = {.contexts = 8};
        assert_int_equal(rpc_server_start_link(&s, sv[1], &so, deferred_handler, &d, &e), AICFN_OK);
        storm st;
        memset(&st, 0, sizeof st);
        assert_int_equal(rpc_client_open_link(&st.c, sv[0], NULL, &e), AICFN_OK);
        pthread_t th[4];
        for (int i = 0; i < 4; i++)
            assert_int_equal(pthread_create(&th[i], NULL, storm_caller, &st), 0);
        usleep(2000 + 3000 * (useconds_t)round);
        rpc_client_fail_inflight(st.c);
        if (round % 2) rpc_server_destroy(s), s = NULL; /* the worker goes away mid-storm */
        usleep(2000);
        atomic_store(&st.stop, true);
        for (int i = 0; i < 4; i++)
            pthread_join(th[i], NULL);
        rpc_client_close(st.c); /* every started call has completed when this returns */
        assert_int_equal(atomic_load(&st.completed), atomic_load(&st.started));
        rpc_server_destroy(s);
        deferred_stop(&d);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(eight_threads_checked_echoes),
        cmocka_unit_test(checked_echoes_with_takeovers),
        cmocka_unit_test(storm_races_fail_shutdown_and_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
