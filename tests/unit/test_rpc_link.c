/* test_rpc_link.c: the socketpair transport (common/rpc_link.h) behind
 * rpc_server_start_link / rpc_client_open_link: calls and replies matched by id (replies
 * out of order), messages larger than the socket buffers both ways, deadlines, a late
 * reply after its call timed out, the peer's death with calls in flight, calls after it,
 * fail_inflight / cancel, a server with every slot taken, hostile bytes on the link
 * (bad magic, a length over the limit, a frame cut short), and destroy with calls held.
 * Every wait is bounded. */
#include <errno.h>
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
#include "common/rpc_link.h"

/* ---- a server that echoes, or holds calls for the test to answer ---------------------- */

typedef struct lsrv {
    pthread_mutex_t mu;
    bool hold;
    rpc_call *held[64];
    unsigned n_held;
    unsigned calls;
    unsigned one_reader; /* calls rpc_call_one_reader said came on a link */
} lsrv;

/* Set by a test: "slow" requests sleep this long in the handler (on the link's reader). */
static unsigned g_slow_ms;

static void lsrv_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    lsrv *t = user;
    pthread_mutex_lock(&t->mu);
    t->calls++;
    if (rpc_call_one_reader(call)) t->one_reader++;
    if (t->hold && t->n_held < 64) {
        t->held[t->n_held++] = call;
        pthread_mutex_unlock(&t->mu);
        return;
    }
    pthread_mutex_unlock(&t->mu);
    if (len == 4 && memcmp(msg, "slow", 4) == 0 && g_slow_ms) usleep(g_slow_ms * 1000u);
    rpc_reply(call, msg, len);
}

static unsigned lsrv_count(lsrv *t, bool held) {
    pthread_mutex_lock(&t->mu);
    unsigned n = held ? t->n_held : t->calls;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Waits (at most 5 s) until the server saw at least n calls (held: holds n). */
static void lsrv_wait(lsrv *t, unsigned n, bool held) {
    uint64_t end = clock_now_us() + 5000000;
    while (lsrv_count(t, held) < n && clock_now_us() < end)
        usleep(1000);
    assert_true(lsrv_count(t, held) >= n);
}

typedef struct pair {
    lsrv t;
    rpc_server *s;
    rpc_client *c;
    int sv[2];
} pair;

static void pair_start(pair *p, unsigned contexts, bool hold) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->t.mu, NULL);
    p->t.hold = hold;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->sv), 0);
    aicfn_error e;
    rpc_server_opts so = {.contexts = contexts, .recv_max = 16u << 20};
    assert_int_equal(rpc_server_start_link(&p->s, p->sv[1], &so, lsrv_handler, &p->t, &e), AICFN_OK);
    rpc_client_opts co = {.recv_max = 16u << 20, .send_max = 16u << 20};
    assert_int_equal(rpc_client_open_link(&p->c, p->sv[0], &co, &e), AICFN_OK);
}

static void pair_stop(pair *p) {
    rpc_client_close(p->c);
    rpc_server_destroy(p->s);
    pthread_mutex_destroy(&p->t.mu);
}

/* ---- async completions ---------------------------------------------------------------- */

typedef struct done_box {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned n;
    int status[64];
    size_t len[64];
    uint8_t first[64]; /* the reply's first byte */
} done_box;

typedef struct done_ref {
    done_box *box;
    unsigned i;
} done_ref;

static void box_init(done_box *b) {
    memset(b, 0, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    for (int i = 0; i < 64; i++)
        b->status[i] = -1;
}

static void box_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    done_ref *r = user;
    done_box *b = r->box;
    pthread_mutex_lock(&b->mu);
    assert_int_equal(b->status[r->i], -1); /* exactly once */
    b->status[r->i] = status;
    if (reply) {
        b->len[r->i] = rpc_msg_len(reply);
        b->first[r->i] = rpc_msg_len(reply) ? rpc_msg_data(reply)[0] : 0;
    }
    b->n++;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    rpc_msg_free(reply);
}

static void box_wait(done_box *b, unsigned n) {
    uint64_t end = clock_now_us() + 5000000;
    pthread_mutex_lock(&b->mu);
    while (b->n < n && clock_now_us() < end) {
        struct timespec ts;
        clock_deadline_to_timespec(clock_now_us() + 10000, &ts);
        pthread_cond_timedwait(&b->cv, &b->mu, &ts);
    }
    unsigned got = b->n;
    pthread_mutex_unlock(&b->mu);
    assert_int_equal(got, n);
}

/* Starts calls refs[from..from+n) of `msg` (len bytes, timeout_ms), each completing into b. */
static void start_calls(rpc_client *c, done_box *b, done_ref *refs, unsigned from, unsigned n, const void *msg,
                        size_t len, uint32_t timeout_ms) {
    for (unsigned i = from; i < from + n; i++) {
        refs[i] = (done_ref){b, i};
        aicfn_error e;
        assert_int_equal(rpc_call_async(c, msg, len, timeout_ms, box_done, &refs[i], &e), AICFN_OK);
    }
}

/* ---- tests ------------------------------------------------------------------------------ */

static void sync_echo_and_server_url(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 8, false);
    assert_non_null(strstr(rpc_server_url(p.s), "socketpair"));
    for (int i = 0; i < 50; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "hello %d", i);
        rpc_msg *r = NULL;
        aicfn_error e;
        assert_int_equal(rpc_call_sync(p.c, msg, (size_t)n, 2000, &r, &e), AICFN_OK);
        assert_int_equal(rpc_msg_len(r), (size_t)n);
        assert_memory_equal(rpc_msg_data(r), msg, (size_t)n);
        rpc_msg_free(r);
    }
    /* An empty message is a frame too. */
    rpc_msg *r = NULL;
    aicfn_error e;
    assert_int_equal(rpc_call_sync(p.c, "", 0, 2000, &r, &e), AICFN_OK);
    assert_int_equal(rpc_msg_len(r), 0);
    rpc_msg_free(r);
    assert_int_equal(p.t.one_reader, 51); /* every call came on the link's one reader */
    pair_stop(&p);
    /* An NNG server's calls do not. */
    lsrv t;
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    rpc_server *s = NULL;
    rpc_client *c = NULL;
    assert_int_equal(rpc_server_start(&s, "inproc://link-test-nng", NULL, lsrv_handler, &t, &e), AICFN_OK);
    assert_int_equal(rpc_client_open(&c, "inproc://link-test-nng", NULL, &e), AICFN_OK);
    assert_int_equal(rpc_call_sync(c, "n", 1, 2000, &r, &e), AICFN_OK);
    rpc_msg_free(r);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.one_reader, 0);
    rpc_client_close(c);
    rpc_server_destroy(s);
    pthread_mutex_destroy(&t.mu);
}

/* Replies in the reverse order of the requests reach the right calls. */
static void replies_out_of_order_find_their_calls(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 64, true);
    done_box b;
    box_init(&b);
    done_ref refs[32];
    for (unsigned i = 0; i < 32; i++) {
        uint8_t msg[4] = {(uint8_t)i, 1, 2, 3};
        refs[i] = (done_ref){&b, i};
        aicfn_error e;
        assert_int_equal(rpc_call_async(p.c, msg, 1 + i % 4, 5000, box_done, &refs[i], &e), AICFN_OK);
    }
    lsrv_wait(&p.t, 32, true);
    assert_int_equal(rpc_client_inflight(p.c), 32);
    for (unsigned i = 32; i-- > 0;)
        rpc_reply_msg(p.t.held[i], rpc_call_take_request(p.t.held[i]));
    box_wait(&b, 32);
    for (unsigned i = 0; i < 32; i++) {
        assert_int_equal(b.status[i], AICFN_OK);
        assert_int_equal(b.first[i], i);
        assert_int_equal(b.len[i], 1 + i % 4);
    }
    assert_int_equal(rpc_client_inflight(p.c), 0);
    pair_stop(&p);
}

/* 8 MiB each way: far beyond the socket buffers, so the writer thread finishes frames
 * the sender could not, and the reader reads bodies straight into their messages. */
static void large_messages_both_ways(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 8, false);
    size_t n = 8u << 20;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(i * 131 + (i >> 13));
    done_box b;
    box_init(&b);
    done_ref refs[3];
    for (unsigned i = 0; i < 3; i++) { /* three at once: queued behind one another */
        refs[i] = (done_ref){&b, i};
        big[0] = (uint8_t)(0xa0 + i);
        aicfn_error e;
        assert_int_equal(rpc_call_async(p.c, big, n, 10000, box_done, &refs[i], &e), AICFN_OK);
    }
    box_wait(&b, 3);
    for (unsigned i = 0; i < 3; i++) {
        assert_int_equal(b.status[i], AICFN_OK);
        assert_int_equal(b.len[i], n);
        assert_int_equal(b.first[i], 0xa0 + i);
    }
    rpc_msg *r = NULL;
    aicfn_error e;
    big[0] = 7;
    assert_int_equal(rpc_call_sync(p.c, big, n, 10000, &r, &e), AICFN_OK);
    assert_int_equal(rpc_msg_len(r), n);
    assert_memory_equal(rpc_msg_data(r), big, n);
    rpc_msg_free(r);
    free(big);
    pair_stop(&p);
}

/* A call the server holds times out at its deadline; its late reply is dropped and the
 * next call gets its own reply. */
static void deadline_then_late_reply_is_dropped(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 8, true);
    rpc_msg *r = NULL;
    aicfn_error e;
    uint64_t t0 = clock_now_us();
    assert_int_equal(rpc_call_sync(p.c, "slow", 4, 150, &r, &e), AICFN_E_TIMEOUT);
    uint64_t took = clock_now_us() - t0;
    assert_true(took >= 140000);
    assert_true(took < 2000000);
    assert_null(r);
    lsrv_wait(&p.t, 1, true);
    pthread_mutex_lock(&p.t.mu);
    p.t.hold = false;
    rpc_call *late = p.t.held[0];
    pthread_mutex_unlock(&p.t.mu);
    rpc_reply(late, "late", 4);
    assert_int_equal(rpc_call_sync(p.c, "next", 4, 2000, &r, &e), AICFN_OK);
    assert_int_equal(rpc_msg_len(r), 4);
    assert_memory_equal(rpc_msg_data(r), "next", 4);
    rpc_msg_free(r);
    pair_stop(&p);
}

/* The worker's end goes away with calls in flight: they fail as lost, and every later
 * call is refused at once (a socketpair never comes back). */
static void peer_gone_fails_inflight_and_later_calls(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 8, true);
    done_box b;
    box_init(&b);
    done_ref refs[4];
    start_calls(p.c, &b, refs, 0, 4, "x", 1, 30000);
    lsrv_wait(&p.t, 4, true);
    uint64_t t0 = clock_now_us();
    shutdown(p.sv[1], SHUT_RDWR); /* as the worker's exit does */
    box_wait(&b, 4);
    assert_true(clock_now_us() - t0 < 2000000); /* not at the 30 s deadline */
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(b.status[i], AICFN_E_WORKER_LOST);
    rpc_msg *r = NULL;
    aicfn_error e;
    assert_int_equal(rpc_call_sync(p.c, "y", 1, 30000, &r, &e), AICFN_E_WORKER_LOST);
    assert_int_equal(rpc_call_async(p.c, "y", 1, 30000, box_done, &refs[0], &e), AICFN_E_WORKER_LOST);
    /* The held calls are still the server's to answer: the answers go nowhere. */
    pthread_mutex_lock(&p.t.mu);
    unsigned n = p.t.n_held;
    pthread_mutex_unlock(&p.t.mu);
    for (unsigned i = 0; i < n; i++)
        rpc_call_drop(p.t.held[i]);
    pair_stop(&p);
}

static void fail_inflight_and_cancel(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 8, true);
    done_box b;
    box_init(&b);
    done_ref refs[4];
    aicfn_error e;
    start_calls(p.c, &b, refs, 0, 2, "a", 1, 30000);
    lsrv_wait(&p.t, 2, true);
    rpc_client_fail_inflight(p.c);
    box_wait(&b, 2);
    assert_int_equal(b.status[0], AICFN_E_WORKER_LOST);
    assert_int_equal(b.status[1], AICFN_E_WORKER_LOST);
    /* The client stays open: a later call goes out (and is held). */
    start_calls(p.c, &b, refs, 2, 1, "b", 1, 30000);
    lsrv_wait(&p.t, 3, true);
    rpc_client_cancel(p.c);
    box_wait(&b, 3);
    assert_int_equal(b.status[2], AICFN_E_CANCELED);
    refs[3] = (done_ref){&b, 3};
    assert_int_equal(rpc_call_async(p.c, "c", 1, 30000, box_done, &refs[3], &e), AICFN_E_CANCELED);
    for (unsigned i = 0; i < 3; i++)
        rpc_call_drop(p.t.held[i]);
    pair_stop(&p);
}

/* With its 2 slots taken, the server hands out no third request until one is answered. */
static void server_with_every_slot_taken_waits(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 2, true);
    done_box b;
    box_init(&b);
    done_ref refs[3];
    aicfn_error e;
    for (unsigned i = 0; i < 3; i++) {
        refs[i] = (done_ref){&b, i};
        uint8_t m = (uint8_t)i;
        assert_int_equal(rpc_call_async(p.c, &m, 1, 5000, box_done, &refs[i], &e), AICFN_OK);
    }
    lsrv_wait(&p.t, 2, true);
    usleep(50000);
    assert_int_equal(lsrv_count(&p.t, false), 2);
    pthread_mutex_lock(&p.t.mu);
    p.t.hold = false;
    rpc_call *first = p.t.held[0];
    pthread_mutex_unlock(&p.t.mu);
    rpc_reply_msg(first, rpc_call_take_request(first));
    lsrv_wait(&p.t, 3, false); /* the third came once a slot was free, and was echoed */
    rpc_reply_msg(p.t.held[1], rpc_call_take_request(p.t.held[1]));
    box_wait(&b, 3);
    for (unsigned i = 0; i < 3; i++) {
        assert_int_equal(b.status[i], AICFN_OK);
        assert_int_equal(b.first[i], i);
    }
    pair_stop(&p);
}

/* Bytes that are not frames end the link: the handler never runs, nothing crashes or
 * leaks (ASan), and the server can still be destroyed. */
static void hostile_bytes_end_the_link(void **state) {
    (void)state;
    static const struct {
        const char *what;
        unsigned char bytes[24];
        size_t len;
    } cases[] = {
        {"bad magic", {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P', '/', '1', '.', '1', '\r', '\n'}, 16},
        /* "AIL1", length 0xffffffff (over recv_max: refused before any allocation) */
        {"huge length", {0x41, 0x49, 0x4c, 0x31, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0}, 16},
        /* "AIL1", length 100, then 4 of its bytes and the end of the stream */
        {"cut short", {0x41, 0x49, 0x4c, 0x31, 100, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, 20},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        lsrv t;
        memset(&t, 0, sizeof t);
        pthread_mutex_init(&t.mu, NULL);
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        rpc_server *s = NULL;
        aicfn_error e;
        rpc_server_opts so = {.contexts = 4, .recv_max = 1u << 20};
        assert_int_equal(rpc_server_start_link(&s, sv[1], &so, lsrv_handler, &t, &e), AICFN_OK);
        assert_int_equal(write(sv[0], cases[k].bytes, cases[k].len), (ssize_t)cases[k].len);
        if (k == 2) shutdown(sv[0], SHUT_WR);
        /* The server ends the link: our end reads end of file (bounded wait). */
        char c;
        ssize_t got = -1;
        uint64_t end = clock_now_us() + 5000000;
        while (clock_now_us() < end) {
            got = recv(sv[0], &c, 1, MSG_DONTWAIT);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) break;
            usleep(1000);
        }
        if (got != 0) print_error("case '%s': the link did not end (recv %zd)\n", cases[k].what, got);
        assert_int_equal(got, 0);
        assert_int_equal(lsrv_count(&t, false), 0);
        rpc_server_destroy(s);
        close(sv[0]);
        pthread_mutex_destroy(&t.mu);
    }
}

/* destroy waits for held calls; their answers after the close are discarded. */
static void *answer_later(void *arg) {
    lsrv *t = arg;
    usleep(100000);
    pthread_mutex_lock(&t->mu);
    unsigned n = t->n_held;
    pthread_mutex_unlock(&t->mu);
    for (unsigned i = 0; i < n; i++)
        rpc_reply(t->held[i], "z", 1);
    return NULL;
}

static void destroy_waits_for_held_calls(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 8, true);
    done_box b;
    box_init(&b);
    done_ref refs[2];
    start_calls(p.c, &b, refs, 0, 2, "h", 1, 30000);
    lsrv_wait(&p.t, 2, true);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, answer_later, &p.t), 0);
    uint64_t t0 = clock_now_us();
    rpc_server_destroy(p.s); /* returns once both were answered */
    assert_true(clock_now_us() - t0 >= 90000);
    pthread_join(th, NULL);
    box_wait(&b, 2); /* the client sees the link end */
    assert_int_equal(b.status[0], AICFN_E_WORKER_LOST);
    rpc_client_close(p.c);
    pthread_mutex_destroy(&p.t.mu);
}

/* Closing the client with calls in flight completes them (CANCELED) before it returns. */
static void close_completes_inflight(void **state) {
    (void)state;
    pair p;
    pair_start(&p, 8, true);
    done_box b;
    box_init(&b);
    done_ref refs[3];
    start_calls(p.c, &b, refs, 0, 3, "q", 1, 30000);
    lsrv_wait(&p.t, 3, true);
    rpc_client_close(p.c);
    assert_int_equal(b.n, 3);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(b.status[i], AICFN_E_CANCELED);
    for (unsigned i = 0; i < 3; i++)
        rpc_call_drop(p.t.held[i]);
    rpc_server_destroy(p.s);
    pthread_mutex_destroy(&p.t.mu);
}

/* A request already waiting in the socket when the server starts (the gateway writes its
 * first status poll right after the spawn) is answered over the link: the server is a
 * link server from its first callback on. 200 rounds. */
static void request_waiting_before_the_server_starts(void **state) {
    (void)state;
    for (int round = 0; round < 200; round++) {
        lsrv t;
        memset(&t, 0, sizeof t);
        pthread_mutex_init(&t.mu, NULL);
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        unsigned char frame[RPC_LINK_HEADER_BYTES + 3] = {0x41, 0x49, 0x4c, 0x31, 3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
                                                         'a', 'b', 'c'};
        assert_int_equal(write(sv[0], frame, sizeof frame), (ssize_t)sizeof frame);
        rpc_server *s = NULL;
        aicfn_error e;
        rpc_server_opts so = {.contexts = 4};
        assert_int_equal(rpc_server_start_link(&s, sv[1], &so, lsrv_handler, &t, &e), AICFN_OK);
        unsigned char got[sizeof frame];
        size_t have = 0;
        uint64_t end = clock_now_us() + 5000000;
        while (have < sizeof got && clock_now_us() < end) {
            ssize_t n = recv(sv[0], got + have, sizeof got - have, MSG_DONTWAIT);
            if (n > 0)
                have += (size_t)n;
            else
                usleep(500);
        }
        assert_int_equal(have, sizeof got);
        assert_memory_equal(got, frame, sizeof frame); /* same id, echoed body */
        assert_int_equal(t.one_reader, 1);
        rpc_server_destroy(s);
        close(sv[0]);
        pthread_mutex_destroy(&t.mu);
    }
}

/* A peer that keeps sending and never reads its replies: the server stops reading once
 * link_queue_max bytes of replies wait (the peer's writes then block), and serves the
 * rest once the peer reads. */
static void peer_that_never_reads_is_not_answered_without_bound(void **state) {
    (void)state;
    lsrv t;
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    rpc_server *s = NULL;
    aicfn_error e;
    rpc_server_opts so = {.contexts = 8, .link_queue_max = 64 * 1024};
    assert_int_equal(rpc_server_start_link(&s, sv[1], &so, lsrv_handler, &t, &e), AICFN_OK);
    /* 4,000 requests of 1 KiB: 4 MiB of echoes, far beyond the socket buffers and the cap. */
    enum { N = 4000, BODY = 1024 };
    static unsigned char frame[RPC_LINK_HEADER_BYTES + BODY];
    memcpy(frame, (unsigned char[]){0x41, 0x49, 0x4c, 0x31, 0x00, 0x04, 0, 0}, 8);
    size_t sent_frames = 0, off = 0;
    uint64_t end = clock_now_us() + 3000000;
    while (sent_frames < N && clock_now_us() < end) { /* until the server stops reading */
        ssize_t n = send(sv[0], frame + off, sizeof frame - off, MSG_DONTWAIT);
        if (n > 0) {
            off += (size_t)n;
            if (off == sizeof frame) sent_frames++, off = 0;
        } else {
            usleep(1000);
        }
    }
    usleep(100000);
    unsigned handled = lsrv_count(&t, false);
    /* Bounded: the cap, the socket buffers and the slots, far below N. */
    assert_true(sent_frames < N);
    assert_true(handled < N / 2);
    /* Read everything: the server goes on, and every request sent is answered. */
    size_t replies = 0, roff = 0;
    static unsigned char rbuf[RPC_LINK_HEADER_BYTES + BODY];
    end = clock_now_us() + 20000000;
    while (clock_now_us() < end && (sent_frames < N || replies < N)) {
        if (sent_frames < N) {
            ssize_t n = send(sv[0], frame + off, sizeof frame - off, MSG_DONTWAIT);
            if (n > 0) {
                off += (size_t)n;
                if (off == sizeof frame) sent_frames++, off = 0;
            }
        }
        ssize_t n = recv(sv[0], rbuf + roff, sizeof rbuf - roff, MSG_DONTWAIT);
        if (n > 0) {
            roff += (size_t)n;
            if (roff == sizeof rbuf) replies++, roff = 0;
        } else if (n < 0) {
            usleep(100);
        }
    }
    assert_int_equal(replies, N);
    assert_int_equal(lsrv_count(&t, false), N);
    rpc_server_destroy(s);
    close(sv[0]);
    pthread_mutex_destroy(&t.mu);
}

/* A call whose request is still queued behind a peer that reads nothing when its
 * deadline passes is dropped from the queue: the peer never sees it (it was reported
 * failed, so it must never run). */
static void request_still_queued_at_its_deadline_never_leaves(void **state) {
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    rpc_client *c = NULL;
    aicfn_error e;
    assert_int_equal(rpc_client_open_link(&c, sv[0], NULL, &e), AICFN_OK);
    size_t big = 4u << 20; /* more than the socket takes: it stays queued, partly written */
    uint8_t *a = calloc(1, big);
    assert_non_null(a);
    done_box b;
    box_init(&b);
    done_ref refs[2] = {{&b, 0}, {&b, 1}};
    assert_int_equal(rpc_call_async(c, a, big, 30000, box_done, &refs[0], &e), AICFN_OK);
    assert_int_equal(rpc_call_async(c, "B", 1, 100, box_done, &refs[1], &e), AICFN_OK);
    box_wait(&b, 1); /* B's deadline */
    assert_int_equal(b.status[1], AICFN_E_TIMEOUT);
    /* Now read what the client sent: A's frame whole, and nothing after it. */
    size_t want = RPC_LINK_HEADER_BYTES + big, got = 0;
    uint8_t *rx = malloc(want + 64);
    assert_non_null(rx);
    uint64_t end = clock_now_us() + 10000000;
    while (got < want && clock_now_us() < end) {
        ssize_t n = recv(sv[1], rx + got, want + 64 - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
        else
            usleep(500);
    }
    assert_int_equal(got, want);
    usleep(100000);
    assert_true(recv(sv[1], rx, 64, MSG_DONTWAIT) < 0); /* B never left */
    rpc_client_close(c);
    assert_int_equal(b.status[0], AICFN_E_CANCELED);
    close(sv[1]);
    free(rx);
    free(a);
}

/* A handler that runs long on the link's reader does not hold up the requests behind it:
 * the standby takes the reading over (after 2 ms) and they are answered meanwhile. */
static void slow_handler_does_not_hold_up_the_next_requests(void **state) {
    (void)state;
    g_slow_ms = 400;
    pair p;
    pair_start(&p, 8, false);
    done_box b;
    box_init(&b);
    done_ref refs[4];
    uint64_t t0 = clock_now_us();
    start_calls(p.c, &b, refs, 0, 1, "slow", 4, 5000);
    usleep(20000); /* the slow one is running */
    start_calls(p.c, &b, refs, 1, 3, "fast", 4, 5000);
    box_wait(&b, 3);
    uint64_t fast_done = clock_now_us() - t0;
    pthread_mutex_lock(&b.mu);
    int slow_status = b.status[0];
    pthread_mutex_unlock(&b.mu);
    assert_int_equal(slow_status, -1); /* still running */
    assert_true(fast_done < 300000);   /* not after the slow one's 400 ms */
    box_wait(&b, 4);
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(b.status[i], AICFN_OK);
    assert_true(clock_now_us() - t0 >= 400000);
    /* And again, on the thread that was replaced (now the standby) and back. */
    box_init(&b);
    t0 = clock_now_us();
    start_calls(p.c, &b, refs, 0, 1, "slow", 4, 5000);
    usleep(20000);
    start_calls(p.c, &b, refs, 1, 3, "fast", 4, 5000);
    box_wait(&b, 3);
    assert_true(clock_now_us() - t0 < 300000);
    box_wait(&b, 4);
    g_slow_ms = 0;
    pair_stop(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sync_echo_and_server_url),
        cmocka_unit_test(replies_out_of_order_find_their_calls),
        cmocka_unit_test(large_messages_both_ways),
        cmocka_unit_test(deadline_then_late_reply_is_dropped),
        cmocka_unit_test(peer_gone_fails_inflight_and_later_calls),
        cmocka_unit_test(fail_inflight_and_cancel),
        cmocka_unit_test(server_with_every_slot_taken_waits),
        cmocka_unit_test(hostile_bytes_end_the_link),
        cmocka_unit_test(destroy_waits_for_held_calls),
        cmocka_unit_test(close_completes_inflight),
        cmocka_unit_test(request_waiting_before_the_server_starts),
        cmocka_unit_test(peer_that_never_reads_is_not_answered_without_bound),
        cmocka_unit_test(request_still_queued_at_its_deadline_never_leaves),
        cmocka_unit_test(slow_handler_does_not_hold_up_the_next_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
