/* test_rpc.c: NNG plumbing (common/rpc.h) on loopback: the design §4 rules (socket
 * options, refused schemes, no resend after a dropped connection), malformed and
 * oversized messages, a hostile SP length header, peers dropping during the handshake
 * (tcp and ipc), timeouts, async calls and reply forwarding. Every loop is bounded. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/bounded_close.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/wire.h"

#include <nng/protocol/reqrep0/req.h>

/* ---- a configurable test server ------------------------------------------------------ */

enum { MODE_ECHO = 0, MODE_CODEC, MODE_HOLD };

typedef struct tsrv {
    int mode;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rpc_call *held[16];
    unsigned n_held;
    unsigned calls;     /* handler invocations */
    int last_codec_rc;  /* MODE_CODEC: status of the last decode */
    unsigned lost_seen; /* requests "lost?" received */
} tsrv;

static void tsrv_init(tsrv *t, int mode) {
    memset(t, 0, sizeof *t);
    t->mode = mode;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
}

static void tsrv_fini(tsrv *t) {
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
}

/* MODE_CODEC: decode as an invoke request; reply with an error reply naming the decode
 * status, or an ok reply echoing the id. This is what the worker and gateway do. */
static void codec_reply(tsrv *t, rpc_call *call, const uint8_t *msg, size_t len) {
    wire_doc doc;
    aicfn_error e;
    aicfn_error_clear(&e);
    wire_invoke_req req;
    int rc = wire_doc_parse(&doc, msg, len, NULL, &e);
    bool parsed = rc == AICFN_OK;
    if (parsed) rc = wire_decode_invoke_req(&doc, &req, &e);
    pthread_mutex_lock(&t->mu);
    t->last_codec_rc = rc;
    pthread_mutex_unlock(&t->mu);
    wire_writer w;
    wire_writer_init(&w);
    if (rc != AICFN_OK) {
        wire_encode_error_reply(&w, wire_peek_id(msg, len), rc, e.msg, NULL);
    } else {
        wire_invoke_reply rep;
        memset(&rep, 0, sizeof rep);
        rep.head.id = req.id;
        rep.head.ok = true;
        rep.n_outputs = req.n_inputs;
        rep.outputs = req.inputs; /* zero copy: points into msg, valid until the reply */
        wire_encode_invoke_reply(&w, &rep, NULL);
    }
    if (parsed) wire_doc_fini(&doc);
    assert_int_equal(wire_writer_status(&w, NULL), AICFN_OK);
    rpc_reply(call, w.data, w.len);
    wire_writer_fini(&w);
}

static void tsrv_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    tsrv *t = user;
    pthread_mutex_lock(&t->mu);
    t->calls++;
    if (len == 5 && memcmp(msg, "lost?", 5) == 0) t->lost_seen++;
    int mode = t->mode;
    if (mode == MODE_HOLD && t->n_held < 16) {
        t->held[t->n_held++] = call;
        pthread_cond_broadcast(&t->cv);
        pthread_mutex_unlock(&t->mu);
        return;
    }
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (mode == MODE_CODEC)
        codec_reply(t, call, msg, len);
    else
        rpc_reply(call, msg, len);
}

/* tsrv_init(t, mode), a server on `url` (options `so`, may be NULL) answering with
 * tsrv_handler, and a client connected to it. */
static void tsrv_start(tsrv *t, int mode, const char *url, const rpc_server_opts *so, rpc_server **s,
                       rpc_client **c) {
    tsrv_init(t, mode);
    aicfn_error e;
    assert_int_equal(rpc_server_start(s, url, so, tsrv_handler, t, &e), AICFN_OK);
    assert_int_equal(rpc_client_open(c, rpc_server_url(*s), NULL, &e), AICFN_OK);
}

/* Waits until at least n calls are held (bounded: 5 s). */
static void tsrv_wait_held(tsrv *t, unsigned n) {
    uint64_t end = clock_now_us() + 5000000;
    pthread_mutex_lock(&t->mu);
    while (t->n_held < n && clock_now_us() < end) {
        pthread_mutex_unlock(&t->mu);
        usleep(2000);
        pthread_mutex_lock(&t->mu);
    }
    unsigned got = t->n_held;
    pthread_mutex_unlock(&t->mu);
    assert_true(got >= n);
}

static void tsrv_drop_held(tsrv *t) {
    pthread_mutex_lock(&t->mu);
    unsigned n = t->n_held;
    rpc_call *held[16];
    memcpy(held, t->held, sizeof held);
    t->n_held = 0;
    pthread_mutex_unlock(&t->mu);
    for (unsigned i = 0; i < n; i++)
        rpc_call_drop(held[i]);
}

static unsigned tsrv_calls(tsrv *t) {
    pthread_mutex_lock(&t->mu);
    unsigned n = t->calls;
    pthread_mutex_unlock(&t->mu);
    return n;
}

static char ipc_url_buf[8][128];
static const char *ipc_url(int slot) {
    snprintf(ipc_url_buf[slot], sizeof ipc_url_buf[slot], "ipc:///tmp/aicfn-test-rpc-%d-%d.sock",
             (int)getpid(), slot);
    return ipc_url_buf[slot];
}

/* One echo round trip with a unique payload; returns the status. */
static int echo_once(rpc_client *c, uint32_t timeout_ms, int tag) {
    char payload[64];
    int n = snprintf(payload, sizeof payload, "hello %d", tag);
    rpc_msg *rep = NULL;
    aicfn_error e;
    int rc = rpc_call_sync(c, payload, (size_t)n, timeout_ms, &rep, &e);
    if (rc != AICFN_OK) return rc;
    assert_int_equal(rpc_msg_len(rep), (size_t)n);
    assert_memory_equal(rpc_msg_data(rep), payload, (size_t)n);
    rpc_msg_free(rep);
    return AICFN_OK;
}

/* ---- rules ----------------------------------------------------------------------------- */

static void refused_schemes(void **state) {
    (void)state;
    static const char *bad[] = {"http://127.0.0.1:0",
                                "ws://127.0.0.1:0/x",
                                "wss://127.0.0.1:0",
                                "tls+tcp://127.0.0.1:0",
                                "zt://1.2",
                                "",
                                "tcp://",
                                "127.0.0.1:80"};
    tsrv t;
    tsrv_init(&t, MODE_ECHO);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rpc_server *s = (rpc_server *)1;
        aicfn_error e;
        assert_int_equal(rpc_server_start(&s, bad[i], NULL, tsrv_handler, &t, &e), AICFN_E_INVALID);
        assert_null(s);
        rpc_client *c = (rpc_client *)1;
        assert_int_equal(rpc_client_open(&c, bad[i], NULL, &e), AICFN_E_INVALID);
        assert_null(c);
    }
    aicfn_error e;
    assert_int_equal(rpc_check_url("http://127.0.0.1:8080/%2", &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "http"));
    assert_int_equal(rpc_check_url("tcp://127.0.0.1:1", NULL), AICFN_OK);
    assert_int_equal(rpc_check_url("ipc:///tmp/x", NULL), AICFN_OK);
    tsrv_fini(&t);
}

static void socket_options_are_set(void **state) {
    (void)state;
    tsrv t;
    tsrv_init(&t, MODE_ECHO);
    rpc_server *s;
    aicfn_error e;
    rpc_server_opts so = {.recv_max = 123456, .contexts = 4};
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", &so, tsrv_handler, &t, &e), AICFN_OK);
    size_t sz = 0;
    assert_int_equal(nng_socket_get_size(rpc_server_socket(s), NNG_OPT_RECVMAXSZ, &sz), 0);
    assert_int_equal(sz, 123456 + RPC_SP_HEADER_SLACK); /* the body limit plus the SP header */

    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, rpc_server_url(s), NULL, &e), AICFN_OK);
    nng_socket cs = rpc_client_socket(c);
    assert_int_equal(nng_socket_get_size(cs, NNG_OPT_RECVMAXSZ, &sz), 0);
    assert_int_equal(sz, AICFN_MAX_MESSAGE_BYTES + RPC_SP_HEADER_SLACK);
    nng_duration d = 0;
    assert_int_equal(nng_socket_get_ms(cs, NNG_OPT_REQ_RESENDTIME, &d), 0);
    assert_int_equal(d, NNG_DURATION_INFINITE);
    /* contexts inherit the socket's resend time */
    nng_ctx ctx;
    assert_int_equal(nng_ctx_open(&ctx, cs), 0);
    d = 0;
    assert_int_equal(nng_ctx_get_ms(ctx, NNG_OPT_REQ_RESENDTIME, &d), 0);
    assert_int_equal(d, NNG_DURATION_INFINITE);
    nng_ctx_close(ctx);
    /* and a default server uses the protocol limit */
    rpc_server *s2;
    assert_int_equal(rpc_server_start(&s2, "tcp://127.0.0.1:0", NULL, tsrv_handler, &t, &e), AICFN_OK);
    assert_int_equal(nng_socket_get_size(rpc_server_socket(s2), NNG_OPT_RECVMAXSZ, &sz), 0);
    assert_int_equal(sz, AICFN_MAX_MESSAGE_BYTES + RPC_SP_HEADER_SLACK);
    assert_int_equal(echo_once(c, 5000, 1), AICFN_OK);
    rpc_client_close(c);
    rpc_server_destroy(s2);
    rpc_server_destroy(s);
    tsrv_fini(&t);
}

static void echo_tcp_and_ipc(void **state) {
    (void)state;
    const char *urls[] = {"tcp://127.0.0.1:0", ipc_url(0)};
    for (int u = 0; u < 2; u++) {
        tsrv t;
        tsrv_init(&t, MODE_ECHO);
        rpc_server *s;
        aicfn_error e;
        assert_int_equal(rpc_server_start(&s, urls[u], NULL, tsrv_handler, &t, &e), AICFN_OK);
        if (u == 0) assert_null(strstr(rpc_server_url(s), ":0"));
        rpc_client *c;
        assert_int_equal(rpc_client_open(&c, rpc_server_url(s), NULL, &e), AICFN_OK);
        for (int i = 0; i < 20; i++)
            assert_int_equal(echo_once(c, 5000, i), AICFN_OK);
        /* an empty message is a valid transport message */
        rpc_msg *rep;
        assert_int_equal(rpc_call_sync(c, "", 0, 5000, &rep, &e), AICFN_OK);
        assert_int_equal(rpc_msg_len(rep), 0);
        rpc_msg_free(rep);
        assert_int_equal(tsrv_calls(&t), 21);
        rpc_client_close(c);
        rpc_server_destroy(s);
        tsrv_fini(&t);
    }
}

static void connect_to_nobody(void **state) {
    (void)state;
    rpc_client *c;
    aicfn_error e;
    assert_int_equal(rpc_client_open(&c, "tcp://127.0.0.1:1", NULL, &e), AICFN_E_UNAVAILABLE);
    assert_non_null(strstr(e.msg, "refused"));
    assert_int_equal(rpc_client_open(&c, ipc_url(1), NULL, &e), AICFN_E_UNAVAILABLE);
    /* in the background the open succeeds and a call times out */
    rpc_client_opts o = {.background = true};
    assert_int_equal(rpc_client_open(&c, "tcp://127.0.0.1:1", &o, &e), AICFN_OK);
    uint64_t t0 = clock_now_us();
    rpc_msg *rep;
    assert_int_equal(rpc_call_sync(c, "x", 1, 200, &rep, &e), AICFN_E_TIMEOUT);
    uint64_t dt = clock_now_us() - t0;
    assert_true(dt >= 150000 && dt < 3000000);
    rpc_client_close(c);
}

typedef struct lost_call {
    atomic_int status; /* -1 until done runs */
} lost_call;

static void lost_call_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    rpc_msg_free(reply);
    atomic_store(&((lost_call *)user)->status, status);
}

/* A call queued for a connection that never forms sees no dropped connection: it waits
 * for its timeout, unless the owner, knowing the peer is gone, fails it
 * (rpc_client_fail_inflight). The gateway does so for a dead worker's link. */
static void fail_inflight_ends_calls_queued_before_connecting(void **state) {
    (void)state;
    rpc_client *c;
    aicfn_error e;
    rpc_client_opts o = {.background = true, .single_peer = true};
    assert_int_equal(rpc_client_open(&c, "tcp://127.0.0.1:1", &o, &e), AICFN_OK);
    lost_call lc;
    atomic_init(&lc.status, -1);
    assert_int_equal(rpc_call_async(c, "x", 1, 30000, lost_call_done, &lc, &e), AICFN_OK);
    usleep(50000);
    assert_int_equal(atomic_load(&lc.status), -1); /* queued, waiting */
    uint64_t t0 = clock_now_us();
    rpc_client_fail_inflight(c);
    for (int ms = 0; ms < 5000 && atomic_load(&lc.status) == -1; ms++)
        usleep(1000);
    assert_int_equal(atomic_load(&lc.status), AICFN_E_WORKER_LOST);
    assert_true(clock_now_us() - t0 < 5000000);
    rpc_client_close(c);
}

/* rpc_client_cancel ends the calls in flight and refuses every later one at once, so
 * that none can start after it and wait for its timeout (a worker's fetcher at exit). */
static void cancel_ends_calls_and_refuses_later_ones(void **state) {
    (void)state;
    tsrv t;
    rpc_server *s;
    rpc_client *c;
    aicfn_error e;
    tsrv_start(&t, MODE_HOLD, "tcp://127.0.0.1:0", NULL, &s, &c);
    lost_call lc;
    atomic_init(&lc.status, -1);
    assert_int_equal(rpc_call_async(c, "x", 1, 30000, lost_call_done, &lc, &e), AICFN_OK);
    for (int ms = 0; ms < 5000 && rpc_server_outstanding(s) == 0; ms++)
        usleep(1000);
    assert_int_equal(rpc_server_outstanding(s), 1); /* held by the server */
    uint64_t t0 = clock_now_us();
    rpc_client_cancel(c);
    for (int ms = 0; ms < 5000 && atomic_load(&lc.status) == -1; ms++)
        usleep(1000);
    assert_int_equal(atomic_load(&lc.status), AICFN_E_CANCELED);
    rpc_msg *rep = NULL;
    assert_int_equal(rpc_call_sync(c, "y", 1, 30000, &rep, &e), AICFN_E_CANCELED);
    assert_int_equal(rpc_call_async(c, "z", 1, 30000, lost_call_done, &lc, &e), AICFN_E_CANCELED);
    assert_true(clock_now_us() - t0 < 2000000);
    rpc_client_close(c);
    tsrv_drop_held(&t);
    rpc_server_destroy(s);
    tsrv_fini(&t);
}

/* ---- malformed, oversized, hostile ----------------------------------------------------- */

static void malformed_msgpack_gets_protocol_error(void **state) {
    (void)state;
    tsrv t;
    rpc_server *s;
    rpc_client *c;
    aicfn_error e;
    tsrv_start(&t, MODE_CODEC, "tcp://127.0.0.1:0", NULL, &s, &c);
    const uint8_t junk[] = {0xdd, 0x7f, 0xff, 0xff, 0xff, 0xc1, 0x00};
    rpc_msg *rep;
    assert_int_equal(rpc_call_sync(c, junk, sizeof junk, 5000, &rep, &e), AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, rpc_msg_data(rep), rpc_msg_len(rep), NULL, &e), AICFN_OK);
    wire_invoke_reply r;
    assert_int_equal(wire_decode_invoke_reply(&doc, &r, &e), AICFN_OK);
    assert_false(r.head.ok);
    assert_int_equal(r.head.code, AICFN_E_PROTOCOL);
    assert_non_null(strstr(r.head.message, "offset 0"));
    wire_doc_fini(&doc);
    rpc_msg_free(rep);
    assert_int_equal(t.last_codec_rc, AICFN_E_PROTOCOL);

    /* a valid call right after works, and its tensors come back */
    float v[3] = {1, 2, 3};
    wire_tensor in = {.name = "x",
                      .dtype = AICFN_DTYPE_FP32,
                      .ndim = 1,
                      .shape = {3},
                      .data = (uint8_t *)v,
                      .nbytes = sizeof v};
    wire_invoke_req q = {.id = 42, .fn = "echo", .n_inputs = 1, .inputs = &in};
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_invoke_req(&w, &q, &e), AICFN_OK);
    assert_int_equal(rpc_call_sync(c, w.data, w.len, 5000, &rep, &e), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, rpc_msg_data(rep), rpc_msg_len(rep), NULL, &e), AICFN_OK);
    assert_int_equal(wire_decode_invoke_reply(&doc, &r, &e), AICFN_OK);
    assert_true(r.head.ok);
    assert_int_equal(r.head.id, 42);
    assert_int_equal(r.n_outputs, 1);
    assert_memory_equal(r.outputs[0].data, v, sizeof v);
    wire_doc_fini(&doc);
    rpc_msg_free(rep);
    wire_writer_fini(&w);
    rpc_client_close(c);
    rpc_server_destroy(s);
    tsrv_fini(&t);
}

static void oversized_message_dropped_server_keeps_serving(void **state) {
    (void)state;
    const char *urls[] = {"tcp://127.0.0.1:0", ipc_url(6)};
    for (int u = 0; u < 2; u++) {
        tsrv t;
        rpc_server *s;
        rpc_client *c;
        aicfn_error e;
        rpc_server_opts so = {.recv_max = 4096};
        tsrv_start(&t, MODE_ECHO, urls[u], &so, &s, &c);
        assert_int_equal(echo_once(c, 5000, 1), AICFN_OK);
        /* A body of exactly the limit passes: NNG also counts the SP header. */
        static uint8_t edge[4096];
        rpc_msg *edge_rep = NULL;
        assert_int_equal(rpc_call_sync(c, edge, sizeof edge, 5000, &edge_rep, &e), AICFN_OK);
        assert_int_equal(rpc_msg_len(edge_rep), sizeof edge);
        rpc_msg_free(edge_rep);
        static uint8_t big[8192];
        rpc_msg *rep = NULL;
        int rc = rpc_call_sync(c, big, sizeof big, 1000, &rep, &e);
        assert_true(rc == AICFN_E_WORKER_LOST || rc == AICFN_E_TIMEOUT);
        assert_null(rep);
        assert_int_equal(tsrv_calls(&t), 2); /* the handler never saw it */
        /* the same client (after NNG redials) and a fresh one both work */
        int ok = 0;
        for (int i = 0; i < 50 && !ok; i++) {
            ok = echo_once(c, 1000, 2) == AICFN_OK;
            if (!ok) usleep(20000);
        }
        assert_true(ok);
        rpc_client *c2;
        assert_int_equal(rpc_client_open(&c2, rpc_server_url(s), NULL, &e), AICFN_OK);
        assert_int_equal(echo_once(c2, 5000, 3), AICFN_OK);
        /* the client refuses to send over its own limit */
        rpc_client *c3;
        rpc_client_opts co = {.send_max = 100};
        assert_int_equal(rpc_client_open(&c3, rpc_server_url(s), &co, &e), AICFN_OK);
        assert_int_equal(rpc_call_sync(c3, big, 101, 1000, &rep, &e), AICFN_E_TOO_LARGE);
        rpc_client_close(c3);
        rpc_client_close(c2);
        rpc_client_close(c);
        rpc_server_destroy(s);
        tsrv_fini(&t);
    }
}

static int tcp_port(const char *url) {
    const char *p = strrchr(url, ':');
    return p ? atoi(p + 1) : -1;
}

/* A plain socket connected to `url` (tcp or ipc); with rcvbuf > 0, a tcp socket's
 * receive buffer is set to it before connecting. -1 when the connection fails. */
static int raw_connect_rcvbuf(const char *url, int rcvbuf) {
    if (strncmp(url, "tcp://", 6) == 0) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tcp_port(url))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", url + strlen("ipc://"));
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int raw_connect(const char *url) {
    return raw_connect_rcvbuf(url, 0);
}

static size_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (size_t)sysconf(_SC_PAGESIZE);
}

/* Waits (bounded) for the peer to close: returns 1 when read() sees EOF or an error. */
static int wait_closed(int fd, int ms) {
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint64_t end = clock_now_us() + (uint64_t)ms * 1000;
    uint8_t b[64];
    while (clock_now_us() < end) {
        ssize_t n = read(fd, b, sizeof b);
        if (n == 0) return 1;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    }
    return 0;
}

static void huge_sp_length_refused_without_allocation(void **state) {
    (void)state;
    const char *urls[] = {"tcp://127.0.0.1:0", ipc_url(2)};
    for (int u = 0; u < 2; u++) {
        tsrv t;
        rpc_server *s;
        rpc_client *c;
        tsrv_start(&t, MODE_ECHO, urls[u], NULL, &s, &c);
        assert_int_equal(echo_once(c, 5000, 0), AICFN_OK);
        size_t before = rss_bytes();
        for (int k = 0; k < 4; k++) {
            int fd = raw_connect(rpc_server_url(s));
            assert_true(fd >= 0);
            /* SP handshake as a REQ peer (protocol 0x30) */
            const uint8_t hello[8] = {0, 'S', 'P', 0, 0x00, 0x30, 0, 0};
            assert_int_equal(write(fd, hello, 8), 8);
            uint8_t frame[9 + 16];
            size_t flen;
            if (u == 0) {                                         /* tcp: 8-byte big-endian length */
                const uint8_t h[8] = {0, 0, 0x01, 0, 0, 0, 0, 0}; /* 2^40 */
                memcpy(frame, h, 8);
                flen = 8;
            } else { /* ipc: a 1-byte type, then the length */
                const uint8_t h[9] = {1, 0, 0, 0x01, 0, 0, 0, 0, 0};
                memcpy(frame, h, 9);
                flen = 9;
            }
            memset(frame + flen, 0xab, 16);
            ssize_t wn = write(fd, frame, flen + 16);
            (void)wn;
            assert_int_equal(wait_closed(fd, 3000), 1); /* NNG drops the peer */
            close(fd);
            /* the real client keeps working meanwhile */
            assert_int_equal(echo_once(c, 5000, k + 1), AICFN_OK);
        }
        size_t after = rss_bytes();
        assert_true(after < before + (32u << 20));
        rpc_client_close(c);
        rpc_server_destroy(s);
        tsrv_fini(&t);
    }
}

/* Reads exactly n bytes (SO_RCVTIMEO bounds each read); returns 0 on success. */
static int read_exact(int fd, uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int run_bounded(char *const argv[], int seconds);

/* rpc_server_destroy on another thread, so a test can bound how long it takes. */
typedef struct destroy_arg {
    rpc_server *s;
    atomic_int done;
} destroy_arg;

static void *destroy_thread(void *p) {
    destroy_arg *a = p;
    rpc_server_destroy(a->s);
    atomic_store(&a->done, 1);
    return NULL;
}

/* Destroying a server while a peer keeps requests queued beyond its contexts and
 * replies keep re-arming receives. NNG 1.5.2's nng_close can then hang for ever tearing
 * down the pipe (its reaper waits on a task that never runs, nng #1813);
 * rpc_server_destroy stops and closes every context first, which makes it rare, and
 * bounds its wait for the close (bounded_close.h), which makes a hang cost the caller
 * AICFN_NNG_CLOSE_BOUND_MS instead of for ever. The peer is raw TCP speaking SP as a REQ
 * socket, so no NNG client shares the process's reaper.
 * Runs `rounds` rounds in this process, plain checks (it runs in a child, see below).
 * Returns 0 when every destroy finished its close, 3 when one was stuck (and bounded:
 * the process's NNG is wedged then, so it stops there), 1 on any other failure. */
static int destroy_rounds(int rounds) {
    enum { REQUESTS = 400 };
    static uint8_t frames[REQUESTS][20];
    for (uint32_t i = 0; i < REQUESTS; i++) { /* 8-byte length, request id (high bit set), payload */
        uint8_t *f = frames[i];
        memset(f, 0, 8);
        f[7] = 12;
        uint32_t id = 0x80000000u | (i + 1);
        f[8] = (uint8_t)(id >> 24), f[9] = (uint8_t)(id >> 16), f[10] = (uint8_t)(id >> 8), f[11] = (uint8_t)id;
        memcpy(f + 12, "queued!!", 8);
    }
    for (int round = 0; round < rounds; round++) {
        tsrv t;
        tsrv_init(&t, MODE_ECHO);
        rpc_server *s;
        aicfn_error e;
        rpc_server_opts so = {.contexts = 4};
        if (rpc_server_start(&s, "tcp://127.0.0.1:0", &so, tsrv_handler, &t, &e) != AICFN_OK) {
            fprintf(stderr, "round %d: start: %s\n", round, e.msg);
            return 1;
        }
        int fd = raw_connect(rpc_server_url(s));
        if (fd < 0) {
            fprintf(stderr, "round %d: connect failed\n", round);
            return 1;
        }
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        const uint8_t hello[8] = {0, 'S', 'P', 0, 0x00, 0x30, 0, 0}; /* REQ */
        uint8_t peer[8];
        if (write(fd, hello, 8) != 8 || read_exact(fd, peer, 8) != 0 || peer[5] != 0x31 /* REP */ ||
            write(fd, frames, sizeof frames) != (ssize_t)sizeof frames) {
            fprintf(stderr, "round %d: handshake or requests failed\n", round);
            return 1;
        }
        for (int got = 0; got < REQUESTS / 4; got++) { /* replies are flowing */
            uint8_t h[8], body[64];
            if (read_exact(fd, h, 8) != 0 || h[7] > sizeof body || read_exact(fd, body, h[7]) != 0) {
                fprintf(stderr, "round %d: reply %d not read\n", round, got);
                return 1;
            }
        }
        uint64_t stuck = bounded_close_stuck(), t0 = clock_now_us();
        rpc_server_destroy(s);
        uint64_t took_ms = (clock_now_us() - t0) / 1000;
        if (took_ms > AICFN_NNG_CLOSE_BOUND_MS + 5000) {
            fprintf(stderr, "round %d: rpc_server_destroy took %llu ms (bound %d ms)\n", round,
                    (unsigned long long)took_ms, AICFN_NNG_CLOSE_BOUND_MS);
            return 1;
        }
        if (bounded_close_stuck() != stuck) {
            fprintf(stderr, "round %d: NNG's close stuck; rpc_server_destroy returned after %llu ms\n", round,
                    (unsigned long long)took_ms);
            return 3; /* NNG is wedged: this process ends now, with what it holds */
        }
        close(fd);
        tsrv_fini(&t);
    }
    return 0;
}

/* Children of 20 rounds each (this binary with --destroy-rounds), so a wedged NNG takes
 * only its own process with it (before, one stuck close hung the next test's close too,
 * and the binary until the suite's limit). Each child must end with 0 or 3 within its
 * time: every destroy returned, at worst after the bound. At most half of them may have
 * met a stuck close: it is rare here (2 of 120 children with two copies of this binary
 * running side by side; 3 of 60 with the contexts left running at close), so many would
 * mean a new cause. */
static void destroy_with_requests_queued(void **state) {
    (void)state;
    enum { CHILDREN = 10 };
    char *argv[] = {"/proc/self/exe", "--destroy-rounds", "20", NULL};
    int stuck = 0;
    for (int i = 0; i < CHILDREN; i++) {
        int rc = run_bounded(argv, 60 + AICFN_NNG_CLOSE_BOUND_MS / 1000);
        if (rc != 0 && rc != 3) fail_msg("child %d: exit %d (see its stderr above)", i, rc);
        stuck += rc == 3;
    }
    if (stuck) fprintf(stderr, "# %d of %d children met a stuck NNG close (bounded)\n", stuck, CHILDREN);
    assert_true(stuck <= CHILDREN / 2);
}

/* A peer that sends requests and never reads its replies (rpc_server_opts.reply_timeout_ms):
 * its 1 MiB echo replies fill the socket, every further reply waits in NNG holding its
 * context, and with all 4 contexts held nobody else was served, for ever. The first reply
 * to wait past the timeout closes that connection, the contexts come back, and another
 * client is served. */
static void peer_that_never_reads_is_cut_off(void **state) {
    (void)state;
    enum { REQUESTS = 100, PAYLOAD = 1 << 20 };
    tsrv t;
    tsrv_init(&t, MODE_ECHO);
    rpc_server *s;
    aicfn_error e;
    rpc_server_opts so = {.contexts = 4, .reply_timeout_ms = 300};
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", &so, tsrv_handler, &t, &e), AICFN_OK);
    /* A small receive buffer, set before connecting: the replies cannot hide in it. */
    int fd = raw_connect_rcvbuf(rpc_server_url(s), 64 << 10);
    assert_true(fd >= 0);
    const uint8_t hello[8] = {0, 'S', 'P', 0, 0x00, 0x30, 0, 0}; /* REQ */
    uint8_t peer[8];
    assert_int_equal(write(fd, hello, 8), 8);
    assert_int_equal(read_exact(fd, peer, 8), 0);
    /* 100 requests of 1 MiB, written as far as the server takes them (it stops reading
     * once its contexts are held, and the connection is closed on it), never reading a
     * reply. */
    size_t frame_len = 8 + 4 + PAYLOAD;
    uint8_t *frame = calloc(1, frame_len);
    assert_non_null(frame);
    uint64_t body = 4 + PAYLOAD;
    for (int i = 0; i < 8; i++)
        frame[i] = (uint8_t)(body >> (56 - 8 * i));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    uint64_t end = clock_now_us() + 3000000;
    for (uint32_t i = 0; i < REQUESTS && clock_now_us() < end; i++) {
        uint32_t id = 0x80000000u | (i + 1);
        frame[8] = (uint8_t)(id >> 24), frame[9] = (uint8_t)(id >> 16), frame[10] = (uint8_t)(id >> 8),
        frame[11] = (uint8_t)id;
        size_t off = 0;
        while (off < frame_len && clock_now_us() < end) {
            ssize_t n = send(fd, frame + off, frame_len - off, MSG_NOSIGNAL); /* it may be closed */
            if (n > 0)
                off += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                break;
            else
                usleep(1000);
        }
        if (off < frame_len) break;
    }
    free(frame);
    assert_true(tsrv_calls(&t) >= 4); /* every context took a request */
    /* Another client is served: the deaf peer's connection was closed. */
    rpc_client *c = NULL;
    assert_int_equal(rpc_client_open(&c, rpc_server_url(s), NULL, &e), AICFN_OK);
    assert_int_equal(echo_once(c, 5000, 7), AICFN_OK);
    rpc_client_close(c);
    /* ... and that peer sees its connection end once it reads what reached it. */
    int closed = 0;
    static uint8_t drain[1 << 16];
    for (end = clock_now_us() + 5000000; !closed && clock_now_us() < end;) {
        ssize_t n = read(fd, drain, sizeof drain);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) closed = 1;
        if (n < 0 && errno == EAGAIN) usleep(1000);
    }
    assert_true(closed);
    close(fd);
    rpc_server_destroy(s);
    tsrv_fini(&t);
}

/* Runs argv with a time bound; returns the exit status, or -1 when killed/not exited. */
static int run_bounded(char *const argv[], int seconds) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    uint64_t end = clock_now_us() + (uint64_t)seconds * 1000000;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (clock_now_us() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(10000);
    }
}

/* Drops 100 raw peers during the SP handshake, then checks that a real client is served.
 * Returns 0 on success, 1 with a message on stderr. Plain checks (no cmocka asserts):
 * it also runs in a child process, see below. */
static int drop_peers_then_serve(const char *url) {
    tsrv t;
    tsrv_init(&t, MODE_ECHO);
    rpc_server *s;
    aicfn_error e;
    int fail = 0;
    if (rpc_server_start(&s, url, NULL, tsrv_handler, &t, &e) != AICFN_OK) {
        fprintf(stderr, "start %s: %s\n", url, e.msg);
        return 1;
    }
    static const uint8_t part[3] = {0, 'S', 'P'};
    static const uint8_t junk[8] = {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T'};
    static const uint8_t bad[8] = {0, 'S', 'P', 0, 0x00, 0x70, 0, 0};   /* wrong protocol */
    static const uint8_t hello[8] = {0, 'S', 'P', 0, 0x00, 0x30, 0, 0}; /* full header, then gone */
    uint64_t end = clock_now_us() + 20000000;                           /* 20 s bound for the whole loop */
    int dropped = 0;
    for (int i = 0; i < 100 && clock_now_us() < end && !fail; i++) {
        int fd = raw_connect(rpc_server_url(s));
        if (fd < 0) {
            fprintf(stderr, "raw connect %d to %s failed\n", i, rpc_server_url(s));
            fail = 1;
            break;
        }
        ssize_t n = 0, want = 0;
        switch (i % 5) {
        case 0:
            break; /* nothing at all */
        case 1:
            want = 3, n = write(fd, part, 3);
            break;
        case 2:
            want = 8, n = write(fd, junk, 8);
            break;
        case 3:
            want = 8, n = write(fd, bad, 8);
            break;
        case 4:
            want = 8, n = write(fd, hello, 8);
            break;
        }
        if (n != want) fprintf(stderr, "raw peer %d: short write (peer already gone)\n", i);
        close(fd);
        dropped++;
    }
    if (!fail && dropped != 100) {
        fprintf(stderr, "%s: only %d of 100 raw peers dropped within 20 s\n", url, dropped);
        fail = 1;
    }
    /* A real client still gets in and is served. Over ipc, NNG 1.5.2 stops delivering
     * connections after such drops (nng #1518); the server's watchdog replaces the
     * listener within AICFN_IPC_PROBE_MS + AICFN_IPC_PROBE_WAIT_MS, so retry for about
     * twice that (bounded). tcp has no such defect and no watchdog (its listener is
     * never restarted), so there the first call must be served. */
    int is_ipc = strncmp(url, "ipc", 3) == 0;
    rpc_client *c = NULL;
    if (!fail && rpc_client_open(&c, rpc_server_url(s), NULL, &e) != AICFN_OK) {
        fprintf(stderr, "client open %s: %s\n", rpc_server_url(s), e.msg);
        fail = 1;
    }
    uint64_t t0 = clock_now_us();
    if (!fail) {
        uint64_t bound = is_ipc ? (AICFN_IPC_PROBE_FAILURES + 1ull) *
                                          (AICFN_IPC_PROBE_MS + AICFN_IPC_PROBE_WAIT_MS) * 1000 +
                                      2000000
                                : 0;
        int ok = echo_once(c, is_ipc ? 500 : 5000, 99) == AICFN_OK;
        while (!ok && clock_now_us() - t0 < bound)
            ok = echo_once(c, 500, 99) == AICFN_OK;
        for (int i = 0; i < 5 && ok; i++)
            ok = echo_once(c, 5000, i) == AICFN_OK;
        if (!ok) {
            fprintf(stderr, "%s: not served again %s\n", url,
                    is_ipc ? "within the bound" : "at the first call");
            fail = 1;
        }
    }
    fprintf(stderr, "# %s: served again after %.2f s, listener restarts %u\n", url,
            (double)(clock_now_us() - t0) / 1e6, rpc_server_listener_restarts(s));
    rpc_client_close(c);
    rpc_server_destroy(s);
    tsrv_fini(&t);
    return fail;
}

/* tcp runs in this process. The ipc case runs in a fresh child process (this binary with
 * --ipc-drop-child) that exits with _exit: once nng #1518 has broken a listener, NNG
 * 1.5.2 can never free that listener's endpoint and stuck pipes (a few KiB inside
 * libnng), which LeakSanitizer would report at exit. Everything else stays leak-checked. */
static void handshake_drops_then_listener_still_accepts(void **state) {
    (void)state;
    assert_int_equal(drop_peers_then_serve("tcp://127.0.0.1:0"), 0);
    /* The child's own bounds add up to about 60 s (drops, the retry, six calls, destroy);
     * one that hangs beyond is killed and fails the test (-1). */
    char *argv[] = {"/proc/self/exe", "--ipc-drop-child", NULL};
    assert_int_equal(run_bounded(argv, 120), 0);
}

/* ---- deadlines, lost connections, async, forwarding ---------------------------------- */

static void timeout_when_no_reply(void **state) {
    (void)state;
    tsrv t;
    rpc_server *s;
    rpc_client *c;
    aicfn_error e;
    tsrv_start(&t, MODE_HOLD, "tcp://127.0.0.1:0", NULL, &s, &c);
    uint64_t t0 = clock_now_us();
    rpc_msg *rep;
    assert_int_equal(rpc_call_sync(c, "x", 1, 300, &rep, &e), AICFN_E_TIMEOUT);
    uint64_t dt = clock_now_us() - t0;
    assert_true(dt >= 250000 && dt < 3000000);
    assert_int_equal(rpc_server_outstanding(s), 1);
    unsigned held = 0;
    uint64_t held_bytes = 0;
    pthread_mutex_lock(&t.mu); /* the handler stored it under this lock, on NNG's thread */
    rpc_call *first = t.held[0];
    pthread_mutex_unlock(&t.mu);
    rpc_call_server_load(first, &held, &held_bytes);
    assert_int_equal(held, 1);
    assert_int_equal(held_bytes, 1);
    tsrv_drop_held(&t);
    assert_int_equal(rpc_server_outstanding(s), 0);
    rpc_client_close(c);
    rpc_server_destroy(s);
    tsrv_fini(&t);
}

/* rpc_server_destroy waits for calls still held by the handler, and returns once the
 * last one is answered (srv_done wakes it only while closing), on ipc too (where the
 * listener watchdog shares the server's lock). */
static void async_ignore(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)user;
    (void)status;
    (void)err;
    rpc_msg_free(reply);
}

static void destroy_waits_for_held_calls(void **state) {
    (void)state;
    const char *url = ipc_url(7);
    tsrv t;
    tsrv_init(&t, MODE_HOLD);
    rpc_server *s;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s, url, NULL, tsrv_handler, &t, &e), AICFN_OK);
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, url, NULL, &e), AICFN_OK);
    assert_int_equal(rpc_call_async(c, "a", 1, 5000, async_ignore, NULL, &e), AICFN_OK);
    assert_int_equal(rpc_call_async(c, "bcd", 3, 5000, async_ignore, NULL, &e), AICFN_OK);
    tsrv_wait_held(&t, 2);
    assert_int_equal(rpc_server_outstanding(s), 2);
    /* The load the front's bound reads (front_nng.c): both calls and their 4 bytes. */
    unsigned held = 0;
    uint64_t held_bytes = 0;
    rpc_call_server_load(t.held[0], &held, &held_bytes);
    assert_int_equal(held, 2);
    assert_int_equal(held_bytes, 4);
    destroy_arg a = {.s = s};
    atomic_init(&a.done, 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, destroy_thread, &a), 0);
    usleep(100000);
    assert_int_equal(atomic_load(&a.done), 0); /* still waiting for the held calls */
    tsrv_drop_held(&t);
    uint64_t end = clock_now_us() + 5000000;
    while (!atomic_load(&a.done) && clock_now_us() < end)
        usleep(2000);
    assert_int_equal(atomic_load(&a.done), 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    rpc_client_close(c);
    tsrv_fini(&t);
}

typedef struct sync_arg {
    rpc_client *c;
    int rc;
    uint64_t dt_us;
} sync_arg;

static void *sync_thread(void *p) {
    sync_arg *a = p;
    uint64_t t0 = clock_now_us();
    rpc_msg *rep = NULL;
    a->rc = rpc_call_sync(a->c, "lost?", 5, 10000, &rep, NULL);
    a->dt_us = clock_now_us() - t0;
    rpc_msg_free(rep);
    return NULL;
}

/* The server goes away with a call in flight: the call fails at once with WORKER_LOST,
 * and it is NOT resent to the server that takes over the address (NNG 1.5.2 would). */
static void lost_connection_fails_call_and_never_resends(void **state) {
    (void)state;
    const char *url = ipc_url(4);
    tsrv t1;
    tsrv_init(&t1, MODE_HOLD);
    rpc_server *s1;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s1, url, NULL, tsrv_handler, &t1, &e), AICFN_OK);
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, url, NULL, &e), AICFN_OK);
    sync_arg a = {.c = c};
    pthread_t th;
    pthread_create(&th, NULL, sync_thread, &a);
    tsrv_wait_held(&t1, 1);
    tsrv_drop_held(&t1);
    rpc_server_destroy(s1); /* closes the connection with the call in flight */
    pthread_join(th, NULL);
    assert_int_equal(a.rc, AICFN_E_WORKER_LOST);
    assert_true(a.dt_us < 5000000);

    tsrv t2;
    tsrv_init(&t2, MODE_ECHO);
    rpc_server *s2;
    assert_int_equal(rpc_server_start(&s2, url, NULL, tsrv_handler, &t2, &e), AICFN_OK);
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        ok = echo_once(c, 500, 7) == AICFN_OK;
        if (!ok) usleep(20000);
    }
    assert_true(ok);
    usleep(200000);
    /* t2 saw only echo calls, never the lost "lost?" request */
    assert_true(tsrv_calls(&t2) >= 1);
    pthread_mutex_lock(&t2.mu);
    assert_int_equal(t2.lost_seen, 0);
    pthread_mutex_unlock(&t2.mu);
    assert_int_equal(t1.lost_seen, 1);
    rpc_client_close(c);
    rpc_server_destroy(s2);
    tsrv_fini(&t2);
    tsrv_fini(&t1);
}

typedef struct async_box {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int status;
    char data[64];
    size_t len;
} async_box;

static void async_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    async_box *b = user;
    pthread_mutex_lock(&b->mu);
    b->status = status;
    if (reply) {
        b->len = rpc_msg_len(reply) < sizeof b->data ? rpc_msg_len(reply) : sizeof b->data;
        memcpy(b->data, rpc_msg_data(reply), b->len);
        rpc_msg_free(reply);
    }
    b->done++;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void async_wait(async_box *b, int n) {
    uint64_t end = clock_now_us() + 10000000;
    pthread_mutex_lock(&b->mu);
    while (b->done < n && clock_now_us() < end) {
        pthread_mutex_unlock(&b->mu);
        usleep(1000);
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    assert_true(b->done >= n);
}

static void async_calls_and_limits(void **state) {
    (void)state;
    tsrv t;
    tsrv_init(&t, MODE_ECHO);
    rpc_server *s;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", NULL, tsrv_handler, &t, &e), AICFN_OK);
    rpc_client_opts co = {.max_async = 1};
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, rpc_server_url(s), &co, &e), AICFN_OK);
    async_box b = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    for (int i = 1; i <= 3; i++) { /* the one slot is reused */
        assert_int_equal(rpc_call_async(c, "ping", 4, 5000, async_done, &b, &e), AICFN_OK);
        async_wait(&b, i);
        assert_int_equal(b.status, AICFN_OK);
        assert_int_equal(b.len, 4);
        assert_memory_equal(b.data, "ping", 4);
    }
    /* hold the next call at the server: a second async call is refused */
    pthread_mutex_lock(&t.mu);
    t.mode = MODE_HOLD;
    pthread_mutex_unlock(&t.mu);
    assert_int_equal(rpc_call_async(c, "held", 4, 300, async_done, &b, &e), AICFN_OK);
    tsrv_wait_held(&t, 1);
    assert_int_equal(rpc_call_async(c, "more", 4, 300, async_done, &b, &e), AICFN_E_OVERLOADED);
    async_wait(&b, 4); /* the held one times out */
    assert_int_equal(b.status, AICFN_E_TIMEOUT);
    tsrv_drop_held(&t);
    /* closing with an async call in flight cancels it */
    assert_int_equal(rpc_call_async(c, "held", 4, 10000, async_done, &b, &e), AICFN_OK);
    tsrv_wait_held(&t, 1);
    rpc_client_close(c);
    assert_int_equal(b.done, 5);
    assert_int_equal(b.status, AICFN_E_CANCELED);
    tsrv_drop_held(&t);
    rpc_server_destroy(s);
    tsrv_fini(&t);
}

/* A proxy: server A forwards each request to server B asynchronously and answers with
 * B's reply message unchanged (rpc_reply_msg): the gateway's pattern. */
typedef struct proxy {
    rpc_client *to;
} proxy;

static void proxy_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    rpc_call *call = user;
    if (status == AICFN_OK)
        rpc_reply_msg(call, reply);
    else
        rpc_reply(call, "ERR", 3);
}

static void proxy_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    proxy *p = user;
    if (rpc_call_async(p->to, msg, len, 5000, proxy_done, call, NULL) != AICFN_OK) rpc_reply(call, "BUSY", 4);
}

static void forwarding_with_reply_msg(void **state) {
    (void)state;
    tsrv tb;
    tsrv_init(&tb, MODE_ECHO);
    rpc_server *b;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&b, ipc_url(5), NULL, tsrv_handler, &tb, &e), AICFN_OK);
    proxy p;
    assert_int_equal(rpc_client_open(&p.to, rpc_server_url(b), NULL, &e), AICFN_OK);
    rpc_server *a;
    assert_int_equal(rpc_server_start(&a, "tcp://127.0.0.1:0", NULL, proxy_handler, &p, &e), AICFN_OK);
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, rpc_server_url(a), NULL, &e), AICFN_OK);
    for (int i = 0; i < 20; i++)
        assert_int_equal(echo_once(c, 5000, i), AICFN_OK);
    assert_int_equal(tsrv_calls(&tb), 20);
    rpc_client_close(c);
    rpc_server_destroy(a);
    rpc_client_close(p.to);
    rpc_server_destroy(b);
    tsrv_fini(&tb);
}

/* ---- cross-language: the Python client written from docs/protocol.md ----------- */

static int is_repo_root(const char *dir) {
    char p[1024];
    snprintf(p, sizeof p, "%s/tests/e2e/protocol_client.py", dir);
    if (access(p, R_OK) != 0) return 0;
    snprintf(p, sizeof p, "%s/build.zig", dir);
    return access(p, R_OK) == 0;
}

/* $AICFN_SOURCE_DIR, else the first ancestor of the working directory or of this
 * executable holding build.zig and tests/e2e/protocol_client.py. */
static int repo_root(char *out, size_t cap) {
    const char *env = getenv("AICFN_SOURCE_DIR");
    if (env && is_repo_root(env)) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    char starts[2][1024];
    if (!getcwd(starts[0], sizeof starts[0])) starts[0][0] = 0;
    ssize_t n = readlink("/proc/self/exe", starts[1], sizeof starts[1] - 1);
    starts[1][n > 0 ? n : 0] = 0;
    for (int s = 0; s < 2; s++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", starts[s]);
        for (int up = 0; up < 16 && dir[0]; up++) {
            if (is_repo_root(dir)) {
                snprintf(out, cap, "%s", dir);
                return 0;
            }
            char *slash = strrchr(dir, '/');
            if (!slash || slash == dir) break;
            *slash = 0;
        }
    }
    return -1;
}

/* tests/e2e/protocol_client.py (pynng + msgpack, written only from docs/protocol.md)
 * invokes an in-process C server that decodes with common/wire.h and echoes the inputs:
 * FP32 and BYTES tensors and params cross the language boundary both ways, and a bad
 * tensor comes back as AICFN_E_PROTOCOL naming it. Fails when no Python with pynng,
 * msgpack and numpy is found ($AICFN_PYTHON, else the repository's .venv, which
 * scripts/bootstrap.sh makes). */
static void python_protocol_client_interop(void **state) {
    (void)state;
    char root[1024], py[1200], script[1200];
    if (repo_root(root, sizeof root) != 0) fail_msg("the repository root (build.zig) was not found");
    const char *envpy = getenv("AICFN_PYTHON");
    snprintf(py, sizeof py, "%s", envpy ? envpy : "");
    if (!envpy) snprintf(py, sizeof py, "%s/.venv/bin/python", root);
    if (access(py, X_OK) != 0)
        fail_msg("no Python at %s (run scripts/bootstrap.sh, or set AICFN_PYTHON)", py);
    char *probe[] = {py, "-c", "import pynng, msgpack, numpy", NULL};
    if (run_bounded(probe, 60) != 0) fail_msg("%s lacks pynng, msgpack or numpy (scripts/bootstrap.sh)", py);
    snprintf(script, sizeof script, "%s/tests/e2e/protocol_client.py", root);
    tsrv t;
    tsrv_init(&t, MODE_CODEC);
    rpc_server *s;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s, "tcp://127.0.0.1:0", NULL, tsrv_handler, &t, &e), AICFN_OK);
    char url[128];
    snprintf(url, sizeof url, "%s", rpc_server_url(s));
    char *argv[] = {py, script, url, "echo", NULL};
    assert_int_equal(run_bounded(argv, 120), 0);
    assert_true(tsrv_calls(&t) >= 2);
    rpc_server_destroy(s);
    tsrv_fini(&t);
}

/* single_peer (the gateway's link to a worker): once the connection drops, a call is
 * refused at once with WORKER_LOST, never queued in the socket until its timeout, and
 * that stays so when another server takes over the address (a plain client reconnects
 * there: lost_connection_fails_call_and_never_resends). */
static void single_peer_refuses_calls_after_a_drop(void **state) {
    (void)state;
    const char *url = ipc_url(6);
    tsrv t1;
    tsrv_init(&t1, MODE_ECHO);
    rpc_server *s1;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&s1, url, NULL, tsrv_handler, &t1, &e), AICFN_OK);
    rpc_client_opts o = {.background = true, .single_peer = true};
    rpc_client *c;
    assert_int_equal(rpc_client_open(&c, url, &o, &e), AICFN_OK);
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        ok = echo_once(c, 500, i) == AICFN_OK;
        if (!ok) usleep(20000);
    }
    assert_true(ok);
    rpc_server_destroy(s1);
    int rc = AICFN_OK;
    uint64_t dt = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t t0 = clock_now_us();
        rc = echo_once(c, 200, i);
        dt = clock_now_us() - t0;
        if (rc == AICFN_E_WORKER_LOST && dt < 100000) break;
        usleep(10000);
    }
    assert_int_equal(rc, AICFN_E_WORKER_LOST);
    assert_true(dt < 100000);

    tsrv t2;
    tsrv_init(&t2, MODE_ECHO);
    rpc_server *s2;
    assert_int_equal(rpc_server_start(&s2, url, NULL, tsrv_handler, &t2, &e), AICFN_OK);
    usleep(300000); /* time to redial, were it to */
    uint64_t t0 = clock_now_us();
    assert_int_equal(echo_once(c, 2000, 99), AICFN_E_WORKER_LOST);
    assert_true(clock_now_us() - t0 < 100000);
    async_box b;
    memset(&b, 0, sizeof b);
    assert_int_equal(rpc_call_async(c, "x", 1, 1000, async_done, &b, &e), AICFN_E_WORKER_LOST);
    assert_non_null(strstr(e.msg, "not sent"));
    assert_int_equal(tsrv_calls(&t2), 0);
    rpc_client_close(c);
    rpc_server_destroy(s2);
    tsrv_fini(&t2);
    tsrv_fini(&t1);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--ipc-drop-child") == 0) _exit(drop_peers_then_serve(ipc_url(3)));
    if (argc == 3 && strcmp(argv[1], "--destroy-rounds") == 0) {
        int rc = destroy_rounds(atoi(argv[2]));
        if (rc == 0) exit(0); /* leak-checked at exit */
        _exit(rc);            /* a wedged NNG keeps what it holds */
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refused_schemes),
        cmocka_unit_test(socket_options_are_set),
        cmocka_unit_test(echo_tcp_and_ipc),
        cmocka_unit_test(connect_to_nobody),
        cmocka_unit_test(fail_inflight_ends_calls_queued_before_connecting),
        cmocka_unit_test(cancel_ends_calls_and_refuses_later_ones),
        cmocka_unit_test(malformed_msgpack_gets_protocol_error),
        cmocka_unit_test(oversized_message_dropped_server_keeps_serving),
        cmocka_unit_test(huge_sp_length_refused_without_allocation),
        cmocka_unit_test(destroy_with_requests_queued),
        cmocka_unit_test(handshake_drops_then_listener_still_accepts),
        cmocka_unit_test(peer_that_never_reads_is_cut_off),
        cmocka_unit_test(timeout_when_no_reply),
        cmocka_unit_test(destroy_waits_for_held_calls),
        cmocka_unit_test(lost_connection_fails_call_and_never_resends),
        cmocka_unit_test(async_calls_and_limits),
        cmocka_unit_test(forwarding_with_reply_msg),
        cmocka_unit_test(python_protocol_client_interop),
        cmocka_unit_test(single_peer_refuses_calls_after_a_drop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
