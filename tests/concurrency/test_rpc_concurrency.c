/* test_rpc_concurrency.c: common/rpc under concurrency (also run under TSan): replies
 * deferred to another thread, 200 sync calls from 8 threads on one client, more callers
 * than server contexts, an async storm, and closing a client while threads call (once,
 * and 30 times over). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/rpc.h"

/* ---- a server whose handler only enqueues; replier threads answer later ---------- */

#define QCAP 1024

typedef struct deferred {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rpc_call *q[QCAP];
    const uint8_t *msg[QCAP];
    size_t len[QCAP];
    unsigned head, count;
    bool stop;
    unsigned handled;
    pthread_t repliers[2];
} deferred;

static void deferred_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    deferred *d = user;
    pthread_mutex_lock(&d->mu);
    assert_true(d->count < QCAP);
    unsigned i = (d->head + d->count) % QCAP;
    d->q[i] = call;
    d->msg[i] = msg; /* valid until the call is answered */
    d->len[i] = len;
    d->count++;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void *replier(void *p) {
    deferred *d = p;
    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (d->count == 0 && !d->stop)
            pthread_cond_wait(&d->cv, &d->mu);
        if (d->count == 0 && d->stop) {
            pthread_mutex_unlock(&d->mu);
            return NULL;
        }
        unsigned i = d->head;
        d->head = (d->head + 1) % QCAP;
        d->count--;
        rpc_call *call = d->q[i];
        const uint8_t *msg = d->msg[i];
        size_t len = d->len[i];
        d->handled++;
        pthread_mutex_unlock(&d->mu);
        /* reply "re:" + request, built from the request bytes still held by the call */
        uint8_t buf[256];
        assert_true(len + 3 <= sizeof buf);
        memcpy(buf, "re:", 3);
        memcpy(buf + 3, msg, len);
        assert_int_equal(rpc_reply(call, buf, len + 3), AICFN_OK);
    }
}

static void deferred_start(deferred *d) {
    memset(d, 0, sizeof *d);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    for (int i = 0; i < 2; i++)
        pthread_create(&d->repliers[i], NULL, replier, d);
}

static void deferred_stop(deferred *d) {
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (int i = 0; i < 2; i++)
        pthread_join(d->repliers[i], NULL);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
}

/* ---- callers -------------------------------------------------------------------- */

typedef struct caller {
    rpc_client *c;
    int id;
    int calls;
    int ok;
    int canceled;
    int other;
    int last_rc; /* the last call's status */
} caller;

static void *sync_caller(void *p) {
    caller *a = p;
    for (int i = 0; i < a->calls; i++) {
        char req[64];
        int n = snprintf(req, sizeof req, "t%d-c%d", a->id, i);
        rpc_msg *rep = NULL;
        aicfn_error e;
        int rc = rpc_call_sync(a->c, req, (size_t)n, 10000, &rep, &e);
        a->last_rc = rc;
        if (rc == AICFN_OK) {
            char want[80];
            int wn = snprintf(want, sizeof want, "re:%s", req);
            if (rpc_msg_len(rep) == (size_t)wn && memcmp(rpc_msg_data(rep), want, (size_t)wn) == 0)
                a->ok++;
            else
                a->other++;
            rpc_msg_free(rep);
        } else if (rc == AICFN_E_CANCELED || rc == AICFN_E_UNAVAILABLE) {
            a->canceled++;
        } else {
            a->other++;
        }
    }
    return NULL;
}

static void run_sync_storm(const char *url, unsigned contexts, int threads, int per_thread) {
    deferred d;
    deferred_start(&d);
    rpc_server *s;
    aicfn_error e;
    rpc_server_opts so = {.contexts = contexts};
    assert_int_equal(rpc_server_start(&s, url, &so, deferred_handler, &d, &e), AICFN_OK);
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, rpc_server_url(s), NULL, &e), AICFN_OK);
    pthread_t th[16];
    caller a[16];
    assert_true(threads <= 16);
    uint64_t t0 = clock_now_us();
    for (int i = 0; i < threads; i++) {
        a[i] = (caller){.c = c, .id = i, .calls = per_thread};
        pthread_create(&th[i], NULL, sync_caller, &a[i]);
    }
    int ok = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        ok += a[i].ok;
        assert_int_equal(a[i].other, 0);
        assert_int_equal(a[i].canceled, 0);
    }
    assert_int_equal(ok, threads * per_thread);
    pthread_mutex_lock(&d.mu);
    assert_int_equal(d.handled, (unsigned)(threads * per_thread));
    pthread_mutex_unlock(&d.mu);
    print_message("# %s contexts=%u: %d calls from %d threads in %.3f s\n", url, contexts, ok, threads,
                  (double)(clock_now_us() - t0) / 1e6);
    assert_int_equal(rpc_client_inflight(c), 0);
    /* a reply can reach the client before the server's send completion has run */
    uint64_t end = clock_now_us() + 2000000;
    while (rpc_server_outstanding(s) != 0 && clock_now_us() < end)
        usleep(1000);
    assert_int_equal(rpc_server_outstanding(s), 0);
    rpc_client_close(c);
    rpc_server_destroy(s);
    deferred_stop(&d);
}

static void sync_200_calls_8_threads_tcp(void **state) {
    (void)state;
    run_sync_storm("tcp://127.0.0.1:0", 0, 8, 25);
}

static void sync_calls_ipc(void **state) {
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "ipc:///tmp/aicfn-test-rpcc-%d.sock", (int)getpid());
    run_sync_storm(url, 0, 8, 25);
}

/* More concurrent callers than contexts: NNG queues the rest; nothing is lost. */
static void more_callers_than_contexts(void **state) {
    (void)state;
    run_sync_storm("tcp://127.0.0.1:0", 2, 8, 10);
}

/* ---- async storm ---------------------------------------------------------------- */

typedef struct storm {
    pthread_mutex_t mu;
    unsigned done, ok, bad;
} storm;

typedef struct storm_req {
    storm *st;
    char req[32];
    size_t len;
} storm_req;

static void storm_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    storm_req *r = user;
    bool good = false;
    if (status == AICFN_OK) {
        good = rpc_msg_len(reply) == r->len + 3 && memcmp(rpc_msg_data(reply) + 3, r->req, r->len) == 0;
        rpc_msg_free(reply);
    }
    pthread_mutex_lock(&r->st->mu);
    r->st->done++;
    if (good)
        r->st->ok++;
    else
        r->st->bad++;
    pthread_mutex_unlock(&r->st->mu);
}

static void async_storm(void **state) {
    (void)state;
    enum { N = 500 };
    deferred d;
    deferred_start(&d);
    rpc_server *s;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", NULL, deferred_handler, &d, &e), AICFN_OK);
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, rpc_server_url(s), NULL, &e), AICFN_OK);
    storm st = {.mu = PTHREAD_MUTEX_INITIALIZER};
    storm_req *reqs = calloc(N, sizeof *reqs);
    for (int i = 0; i < N; i++) {
        reqs[i].st = &st;
        reqs[i].len = (size_t)snprintf(reqs[i].req, sizeof reqs[i].req, "async-%d", i);
        assert_int_equal(rpc_call_async(c, reqs[i].req, reqs[i].len, 10000, storm_done, &reqs[i], &e),
                         AICFN_OK);
    }
    uint64_t end = clock_now_us() + 20000000;
    for (;;) {
        pthread_mutex_lock(&st.mu);
        unsigned done = st.done;
        pthread_mutex_unlock(&st.mu);
        if (done == N || clock_now_us() > end) break;
        usleep(2000);
    }
    pthread_mutex_lock(&st.mu);
    assert_int_equal(st.done, N);
    assert_int_equal(st.ok, N);
    assert_int_equal(st.bad, 0);
    pthread_mutex_unlock(&st.mu);
    rpc_client_close(c);
    rpc_server_destroy(s);
    deferred_stop(&d);
    free(reqs);
}

/* ---- close while busy ------------------------------------------------------------- */

/* A server that never answers until told to; callers block, then the client closes:
 * every blocked call returns (CANCELED), nothing crashes or leaks. */
typedef struct holder {
    pthread_mutex_t mu;
    rpc_call *held[64];
    unsigned n;
} holder;

static void hold_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    (void)msg;
    (void)len;
    holder *h = user;
    pthread_mutex_lock(&h->mu);
    if (h->n < 64) {
        h->held[h->n++] = call;
        pthread_mutex_unlock(&h->mu);
        return;
    }
    pthread_mutex_unlock(&h->mu);
    rpc_call_drop(call);
}

/* Takes the held calls out of h: their number, the calls in out[]. */
static unsigned holder_take(holder *h, rpc_call *out[64]) {
    pthread_mutex_lock(&h->mu);
    unsigned n = h->n;
    h->n = 0;
    memcpy(out, h->held, sizeof h->held);
    pthread_mutex_unlock(&h->mu);
    return n;
}

/* One client, `callers` threads each blocked in a sync call the server holds; the
 * client closes: every call returns CANCELED. The held calls are dropped after. */
static void close_round(const char *url, holder *h, int callers) {
    aicfn_error e;
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, url, NULL, &e), AICFN_OK);
    pthread_t th[8];
    caller a[8];
    assert_true(callers <= 8);
    for (int i = 0; i < callers; i++) {
        a[i] = (caller){.c = c, .id = i, .calls = 1};
        pthread_create(&th[i], NULL, sync_caller, &a[i]);
    }
    uint64_t end = clock_now_us() + 5000000;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        unsigned n = h->n;
        pthread_mutex_unlock(&h->mu);
        if (n == (unsigned)callers || clock_now_us() > end) break;
        usleep(1000);
    }
    assert_int_equal(rpc_client_inflight(c), callers);
    rpc_client_close(c); /* waits for the blocked calls to return */
    for (int i = 0; i < callers; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].canceled, 1);
    }
    rpc_call *held[64];
    unsigned n = holder_take(h, held);
    for (unsigned i = 0; i < n; i++)
        rpc_call_drop(held[i]);
}

static void close_while_calls_in_flight(void **state) {
    (void)state;
    holder h = {.mu = PTHREAD_MUTEX_INITIALIZER};
    rpc_server *s;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", NULL, hold_handler, &h, &e), AICFN_OK);
    close_round(rpc_server_url(s), &h, 4);
    rpc_server_destroy(s);
}

/* The same, 30 times over with 8 callers: the calls' way out (each closes its NNG
 * context) must never meet the socket's close. NNG 1.5.2 panics in nng_ctx_close when
 * it does ("pthread_mutex_unlock: Invalid argument"); rpc_client_close used to close
 * the socket first and crashed a suite run that way. */
static void close_while_calls_in_flight_repeatedly(void **state) {
    (void)state;
    holder h = {.mu = PTHREAD_MUTEX_INITIALIZER};
    rpc_server *s;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", NULL, hold_handler, &h, &e), AICFN_OK);
    for (int round = 0; round < 30; round++)
        close_round(rpc_server_url(s), &h, 8);
    rpc_server_destroy(s);
}

/* Destroying a server while another thread still answers its calls: destroy waits for
 * the answers, which are discarded. */
typedef struct late {
    holder *h;
    unsigned taken;
    atomic_uint begun; /* answers begun: counted just before each rpc_reply */
} late;

static void *late_answers(void *p) {
    late *l = p;
    usleep(100000); /* destroy starts first: one that did not wait would return meanwhile */
    rpc_call *calls[64];
    l->taken = holder_take(l->h, calls);
    for (unsigned i = 0; i < l->taken; i++) {
        atomic_fetch_add(&l->begun, 1);
        rpc_reply(calls[i], "late", 4);
    }
    return NULL;
}

static void destroy_waits_for_outstanding_calls(void **state) {
    (void)state;
    holder h = {.mu = PTHREAD_MUTEX_INITIALIZER};
    rpc_server *s;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", NULL, hold_handler, &h, &e), AICFN_OK);
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, rpc_server_url(s), NULL, &e), AICFN_OK);
    pthread_t th[3];
    caller a[3];
    for (int i = 0; i < 3; i++) {
        a[i] = (caller){.c = c, .id = i, .calls = 1};
        pthread_create(&th[i], NULL, sync_caller, &a[i]);
    }
    uint64_t end = clock_now_us() + 5000000;
    while (rpc_server_outstanding(s) < 3 && clock_now_us() < end)
        usleep(1000);
    assert_int_equal(rpc_server_outstanding(s), 3);
    late l = {.h = &h};
    atomic_init(&l.begun, 0);
    pthread_t lt;
    pthread_create(&lt, NULL, late_answers, &l);
    rpc_server_destroy(s);
    /* It returned only after the last of the three was answered, so every answer had
     * begun (the first waits 100 ms). */
    unsigned begun = atomic_load(&l.begun);
    pthread_join(lt, NULL);
    assert_int_equal(l.taken, 3);
    assert_int_equal(begun, 3);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        /* The answers were discarded (none reached a caller, rc AICFN_OK): each
         * caller lost its call with the connection. */
        assert_int_equal(a[i].last_rc, AICFN_E_WORKER_LOST);
    }
    rpc_client_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sync_200_calls_8_threads_tcp),
        cmocka_unit_test(sync_calls_ipc),
        cmocka_unit_test(more_callers_than_contexts),
        cmocka_unit_test(async_storm),
        cmocka_unit_test(close_while_calls_in_flight),
        cmocka_unit_test(close_while_calls_in_flight_repeatedly),
        cmocka_unit_test(destroy_waits_for_outstanding_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
