/* rpc.c: NNG REQ/REP plumbing (see rpc.h for the contract and the NNG 1.5.2 rules).
 *
 * Server: one REP socket, N contexts, each a small state machine driven by its aio
 * callback: RECV -> (handler) CALL -> (rpc_reply) SEND -> RECV. No thread per request.
 * Client: one REQ socket; a sync call opens its own context and waits on a callback-less
 * aio; async calls use a pool of reusable (context, aio) slots, so no aio is ever freed
 * from its own callback. A pipe-removed notification aborts every call in flight, since
 * NNG would otherwise resend it on the next connection.
 * Link servers and clients (rpc_server_start_link, rpc_client_open_link) run the same
 * calls over a socketpair (rpc_link.h): a server's calls are slots handed out by the
 * link's reader thread; a client's replies find their call by the frame id (slot and
 * generation) and are finished on NNG's task threads, and its deadlines and aborts are
 * applied by the reader's tick.
 * Not for: message contents (wire.c). */
#include "common/rpc.h"

#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/bounded_close.h"
#include "common/rpc_link.h"
#include "common/tunables.h"

/* ---------------------------------------------------------------------------------
 * Errors, URLs, messages
 * --------------------------------------------------------------------------------- */

int rpc_status_from_nng(int rv) {
    switch (rv) {
    case 0:
        return AICFN_OK;
    case NNG_ETIMEDOUT:
        return AICFN_E_TIMEOUT;
    case NNG_ECONNRESET:
        return AICFN_E_WORKER_LOST;
    case NNG_ECONNREFUSED:
    case NNG_ECONNSHUT:
    case NNG_ECLOSED:
    case NNG_ENOENT:
    case NNG_EUNREACHABLE:
    case NNG_EAGAIN:
        return AICFN_E_UNAVAILABLE;
    case NNG_EADDRINUSE:
    case NNG_EADDRINVAL:
    case NNG_EINVAL:
    case NNG_ENOTSUP:
    case NNG_EPROTO:
        return AICFN_E_INVALID;
    case NNG_ENOMEM:
        return AICFN_E_NOMEM;
    case NNG_EMSGSIZE:
        return AICFN_E_TOO_LARGE;
    case NNG_ECANCELED:
        return AICFN_E_CANCELED;
    default:
        return AICFN_E_IO;
    }
}

int rpc_error_nng(aicfn_error *err, int rv, const char *fmt, ...) {
    int code = rpc_status_from_nng(rv);
    if (err == NULL) return code;
    char what[AICFN_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return aicfn_error_set(err, code, "%s: %s", what, nng_strerror(rv));
}

int rpc_check_url(const char *url, aicfn_error *err) {
    static const char *const ok[] = {"tcp://", "tcp4://", "tcp6://", "ipc://", "inproc://"};
    if (url == NULL || url[0] == 0) return aicfn_error_set(err, AICFN_E_INVALID, "empty address");
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t n = strlen(ok[i]);
        if (strncmp(url, ok[i], n) == 0) {
            if (url[n] == 0)
                return aicfn_error_set(err, AICFN_E_INVALID, "address '%s' has no host or path", url);
            return AICFN_OK;
        }
    }
    const char *colon = strstr(url, "://");
    int slen = colon ? (int)(colon - url) : (int)strlen(url);
    if (slen > 32) slen = 32;
    return aicfn_error_set(
        err, AICFN_E_INVALID,
        "address '%.200s': scheme '%.*s' refused (only tcp://, ipc:// and inproc://; NNG's "
        "http/ws servers are never used)",
        url, slen, url);
}

const uint8_t *rpc_msg_data(const rpc_msg *m) {
    return nng_msg_body((nng_msg *)m);
}
size_t rpc_msg_len(const rpc_msg *m) {
    return nng_msg_len((nng_msg *)m);
}
void rpc_msg_free(rpc_msg *m) {
    if (m) nng_msg_free((nng_msg *)m);
}

/* A message holding a copy of `len` bytes: one allocation, one copy (no insert). */
static int rpc_msg_copy(nng_msg **out, const void *p, size_t len) {
    nng_msg *m;
    int rv = nng_msg_alloc(&m, len);
    if (rv != 0) return rv;
    if (len) memcpy(nng_msg_body(m), p, len);
    *out = m;
    return 0;
}

int rpc_msg_new(const void *p, size_t len, rpc_msg **out, aicfn_error *err) {
    nng_msg *m = NULL;
    int rv = rpc_msg_copy(&m, p, len);
    if (rv != 0) {
        *out = NULL;
        return aicfn_error_set(err, AICFN_E_NOMEM, "message of %zu bytes: %s", len, nng_strerror(rv));
    }
    *out = (rpc_msg *)m;
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * Server
 * --------------------------------------------------------------------------------- */

enum { SRV_IDLE = 0, SRV_RECV, SRV_CALL, SRV_SEND, SRV_STOPPED };

struct rpc_call {
    rpc_server *srv;
    nng_ctx ctx;
    nng_aio *aio;
    nng_msg *req;   /* held until answered, so handlers can decode in place */
    size_t req_len; /* its length, counted in srv->held_bytes until answered */
    nng_pipe pipe;  /* the connection the request came on (closed when its reply times out) */
    uint64_t recv_us;
    int state; /* protected by srv->mu */
    uint64_t link_id;           /* link servers: the request frame's id */
    struct rpc_call *next_free; /* link servers: the free slots */
};

struct rpc_server {
    nng_socket sock;
    nng_listener listener;
    bool sock_open;
    char url[320];
    rpc_handler_fn fn;
    void *user;
    unsigned n;
    struct rpc_call *calls;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned outstanding; /* handed to the handler, not yet answered */
    uint64_t held_bytes;  /* their requests' bytes */
    /* Threads inside nng_ctx_send/nng_ctx_recv on our contexts. rpc_server_destroy waits
     * for none before it closes anything: a reply's nng_ctx_send beside nng_close panicked
     * NNG 1.5.2 ("pthread_mutex_lock: Invalid argument", 1 in 80 runs of a standalone
     * reproducer). Taken only while !closing. */
    unsigned busy;
    bool closing;
    /* ipc listener watchdog (nng #1518), see srv_watchdog */
    bool is_ipc;
    size_t recv_max;
    pthread_t watchdog;
    bool watchdog_running;
    uint64_t pipes_added; /* NNG_PIPE_EV_ADD_POST count */
    uint32_t *live;       /* ids of the pipes added and not yet removed (REM_POST may also
                             come for a pipe never added: only these ids count) */
    size_t n_live, cap_live;
    bool keep_peers;         /* rpc_server_opts' */
    nng_duration reply_timeout; /* rpc_server_opts' reply_timeout_ms, or NNG_DURATION_INFINITE */
    unsigned probe_failures; /* failed probes in a row (the watchdog's) */
    unsigned restarts;       /* listener restarts by the watchdog */
    rpc_link *link;          /* a link server (no socket, contexts or listener) */
    struct rpc_call *free_calls;
    unsigned slot_waiters; /* the link's reader waits for a free slot */
    bool destroyer_gone;   /* a stuck close's destroyer returned (srv_free_after_stuck_close) */
};

/* A context operation ended (see `busy`). */
static void srv_leave(rpc_server *s) {
    pthread_mutex_lock(&s->mu);
    s->busy--;
    if (s->closing && s->busy == 0) pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Resumes receiving on c, unless the server is closing (lock held; drops it). Only
 * rpc_server_destroy waits on s->cv, and only after setting closing: a broadcast per
 * message would also wake the ipc watchdog, which sleeps on the same condition. */
static void srv_rearm_unlock(struct rpc_call *c) {
    rpc_server *s = c->srv;
    bool closing = s->closing;
    c->state = closing ? SRV_STOPPED : SRV_RECV;
    if (closing)
        pthread_cond_broadcast(&s->cv);
    else
        s->busy++;
    pthread_mutex_unlock(&s->mu);
    if (closing) return;
    nng_aio_set_timeout(c->aio, NNG_DURATION_INFINITE); /* waiting for a request: no limit */
    nng_ctx_recv(c->ctx, c->aio);
    srv_leave(s);
}

/* The call is answered (or its reply failed): count it and resume receiving. */
static void srv_done(struct rpc_call *c) {
    rpc_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    s->outstanding--;
    s->held_bytes -= c->req_len;
    c->req_len = 0;
    if (s->link) { /* the slot is free for the next request */
        c->state = SRV_IDLE;
        c->next_free = s->free_calls;
        s->free_calls = c;
        if (s->slot_waiters || s->closing) pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    srv_rearm_unlock(c);
}

/* c takes request m for its handler (lock held): counted outstanding until answered. */
static void srv_take_request_locked(rpc_server *s, struct rpc_call *c, nng_msg *m) {
    c->req = m;
    c->recv_us = clock_now_us();
    c->state = SRV_CALL;
    c->req_len = nng_msg_len(m);
    s->outstanding++;
    s->held_bytes += c->req_len;
}

static void srv_cb(void *arg) {
    struct rpc_call *c = arg;
    rpc_server *s = c->srv;
    int rv = nng_aio_result(c->aio);
    pthread_mutex_lock(&s->mu);
    int state = c->state;
    bool closing = s->closing;
    pthread_mutex_unlock(&s->mu);

    if (state == SRV_SEND) {
        if (rv != 0) {
            nng_msg_free(nng_aio_get_msg(c->aio));
            nng_aio_set_msg(c->aio, NULL);
            if (rv == NNG_ETIMEDOUT) {
                /* Its peer does not read its replies: the connection goes, and with it
                 * every other reply queued behind this one (their contexts come back). */
                log_warn("rpc %s: a reply waited %d ms for its connection to take it: closing that "
                         "connection",
                         s->url, (int)s->reply_timeout);
                nng_pipe_close(c->pipe);
            } else if (rv != NNG_ECLOSED) {
                log_debug("rpc %s: reply not sent: %s", s->url, nng_strerror(rv));
            }
        }
        srv_done(c);
        return;
    }
    if (state != SRV_RECV) return;
    if (rv != 0) {
        if (rv != NNG_ECLOSED && !closing) log_warn("rpc %s: receive failed: %s", s->url, nng_strerror(rv));
        pthread_mutex_lock(&s->mu);
        if (rv != NNG_ECLOSED) {
            srv_rearm_unlock(c);
            return;
        }
        c->state = SRV_STOPPED; /* the context is closed: nothing to receive on */
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    nng_msg *m = nng_aio_get_msg(c->aio);
    nng_aio_set_msg(c->aio, NULL);
    pthread_mutex_lock(&s->mu);
    if (s->closing) { /* received as the server closed: nobody will answer it */
        c->state = SRV_STOPPED;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        nng_msg_free(m);
        return;
    }
    srv_take_request_locked(s, c, m);
    c->pipe = nng_msg_get_pipe(m);
    pthread_mutex_unlock(&s->mu);
    s->fn(s->user, c, nng_msg_body(m), nng_msg_len(m));
    /* c may already be answered and re-armed by now: touch nothing. */
}

/* Takes the call out of CALL state; returns false if it was not in it (misuse). With
 * `send`, *send is set when the reply may go out (the server is not closing; `busy` is
 * then taken: srv_leave after the send). */
static bool srv_take(struct rpc_call *c, int next, bool *send) {
    rpc_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    bool ok = c->state == SRV_CALL;
    nng_msg *req = c->req;
    if (ok) {
        c->state = next;
        c->req = NULL;
    }
    if (send) {
        *send = ok && !s->closing;
        if (*send) s->busy++;
    }
    pthread_mutex_unlock(&s->mu);
    if (!ok)
        log_error("rpc %s: call answered twice or not outstanding", s->url);
    else if (req) /* NULL: rpc_call_take_request took it */
        nng_msg_free(req);
    return ok;
}

static int srv_send(struct rpc_call *c, nng_msg *m) {
    bool send = false;
    if (!srv_take(c, SRV_SEND, &send)) {
        nng_msg_free(m);
        return AICFN_E_INTERNAL;
    }
    if (!send) { /* the server is closing: the answer is discarded */
        nng_msg_free(m);
        srv_done(c);
        return AICFN_OK;
    }
    if (c->srv->link) {
        int rc = rpc_link_send(c->srv->link, c->link_id, m, NULL);
        if (rc != AICFN_OK) log_debug("rpc %s: reply not sent: %s", c->srv->url, aicfn_status_name(rc));
        srv_leave(c->srv);
        srv_done(c);
        return AICFN_OK;
    }
    nng_msg_header_clear(m);
    nng_aio_set_msg(c->aio, m);
    nng_aio_set_timeout(c->aio, c->srv->reply_timeout);
    nng_ctx_send(c->ctx, c->aio);
    srv_leave(c->srv);
    return AICFN_OK;
}

int rpc_reply(rpc_call *c, const void *bytes, size_t len) {
    nng_msg *m;
    int rv = rpc_msg_copy(&m, bytes, len);
    if (rv != 0) {
        log_error("rpc %s: reply of %zu bytes: %s", c->srv->url, len, nng_strerror(rv));
        rpc_call_drop(c);
        return rpc_status_from_nng(rv);
    }
    return srv_send(c, m);
}

int rpc_reply_msg(rpc_call *c, rpc_msg *reply) {
    if (reply == NULL) {
        rpc_call_drop(c);
        return AICFN_E_INVALID;
    }
    return srv_send(c, (nng_msg *)reply);
}

void rpc_call_drop(rpc_call *c) {
    if (!srv_take(c, SRV_IDLE, NULL)) return;
    srv_done(c);
}

void rpc_call_server_load(const rpc_call *c, unsigned *outstanding, uint64_t *held_bytes) {
    rpc_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    *outstanding = s->outstanding;
    *held_bytes = s->held_bytes;
    pthread_mutex_unlock(&s->mu);
}

bool rpc_call_one_reader(const rpc_call *c) {
    return c->srv->link != NULL;
}

uint64_t rpc_call_received_us(const rpc_call *c) {
    return c->recv_us;
}

rpc_msg *rpc_call_take_request(rpc_call *c) {
    rpc_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    nng_msg *m = c->state == SRV_CALL ? c->req : NULL;
    if (m) c->req = NULL;
    pthread_mutex_unlock(&s->mu);
    return (rpc_msg *)m;
}

nng_socket rpc_server_socket(const rpc_server *s) {
    return s->sock;
}

const char *rpc_server_url(const rpc_server *s) {
    return s->url;
}

unsigned rpc_server_outstanding(rpc_server *s) {
    pthread_mutex_lock(&s->mu);
    unsigned n = s->outstanding;
    pthread_mutex_unlock(&s->mu);
    return n;
}

unsigned rpc_server_listener_restarts(rpc_server *s) {
    pthread_mutex_lock(&s->mu);
    unsigned n = s->restarts;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* NNG_PIPE_EV_ADD_POST and REM_POST of an ipc server: the probe's count and the live
 * connections (by id: NNG also posts REM_POST for a pipe removed before ADD_POST). */
static void srv_pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg) {
    rpc_server *s = arg;
    uint32_t id = (uint32_t)nng_pipe_id(p);
    pthread_mutex_lock(&s->mu);
    if (ev == NNG_PIPE_EV_ADD_POST) {
        s->pipes_added++;
        pthread_cond_broadcast(&s->cv);
        if (s->n_live == s->cap_live) {
            size_t cap = s->cap_live ? 2 * s->cap_live : 16;
            uint32_t *n = realloc(s->live, cap * sizeof *n);
            if (n) s->live = n, s->cap_live = cap;
        }
        if (s->n_live < s->cap_live) s->live[s->n_live++] = id; /* else uncounted: out of memory */
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        for (size_t i = 0; i < s->n_live; i++)
            if (s->live[i] == id) {
                s->live[i] = s->live[--s->n_live];
                break;
            }
    }
    pthread_mutex_unlock(&s->mu);
}

static int srv_listen(rpc_server *s, const char *url) {
    int rv = nng_listener_create(&s->listener, s->sock, url);
    if (rv == 0)
        rv = nng_listener_set_size(s->listener, NNG_OPT_RECVMAXSZ, s->recv_max + RPC_SP_HEADER_SLACK);
    if (rv == 0) rv = nng_listener_start(s->listener, 0);
    return rv;
}

static void rpc_close_socket(void *arg) {
    nng_close(*(nng_socket *)arg);
}

/* Closes a socket nothing else refers to, waiting for it at most
 * AICFN_NNG_CLOSE_BOUND_MS (bounded_close.h); a stuck one is left to its closing thread. */
static void rpc_close_socket_bounded(nng_socket sock, const char *what) {
    nng_socket *p = malloc(sizeof *p);
    if (p == NULL) {
        nng_close(sock);
        return;
    }
    *p = sock;
    if (bounded_close_run(rpc_close_socket, free, p, AICFN_NNG_CLOSE_BOUND_MS, what)) free(p);
}

/* Dials the server's own ipc address and waits for the new connection to reach the
 * socket. Returns true when it did (the listener is healthy). */
static bool srv_probe(rpc_server *s) {
    nng_socket p;
    if (nng_req0_open(&p) != 0) return true; /* cannot probe: assume healthy */
    bool healthy = false;
    pthread_mutex_lock(&s->mu);
    uint64_t before = s->pipes_added;
    pthread_mutex_unlock(&s->mu);
    if (nng_socket_set_size(p, NNG_OPT_RECVMAXSZ, 1024) == 0 &&
        nng_socket_set_ms(p, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE) == 0 &&
        nng_dial(p, s->url, NULL, 0) == 0) {
        struct timespec ts;
        clock_deadline_to_timespec(clock_now_us() + (uint64_t)AICFN_IPC_PROBE_WAIT_MS * 1000, &ts);
        pthread_mutex_lock(&s->mu);
        while (s->pipes_added == before && !s->closing)
            if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0) break;
        healthy = s->pipes_added != before || s->closing;
        pthread_mutex_unlock(&s->mu);
    }
    char what[sizeof s->url + 32];
    snprintf(what, sizeof what, "rpc server %s: probe", s->url);
    rpc_close_socket_bounded(p, what); /* a wedged reaper must not hold the watchdog */
    return healthy;
}

/* NNG 1.5.2's ipc listener stops handing connections to the socket once a peer
 * disconnects during the SP handshake (nng #1518): connections are accepted and
 * negotiated but never reach the socket. This thread (one per ipc server, not per
 * request) probes the listener every AICFN_IPC_PROBE_MS and, when the probe's
 * connection does not arrive AICFN_IPC_PROBE_FAILURES times in a row, replaces the
 * listener (connections stuck in the broken one are closed, and so are the healthy ones
 * it accepted before: REQ peers redial and reach the new one; see keep_peers). */
static void *srv_watchdog(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:ipc-watch");
    rpc_server *s = arg;
    for (;;) {
        struct timespec ts;
        clock_deadline_to_timespec(clock_now_us() + (uint64_t)AICFN_IPC_PROBE_MS * 1000, &ts);
        pthread_mutex_lock(&s->mu);
        while (!s->closing)
            if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0) break;
        bool closing = s->closing;
        pthread_mutex_unlock(&s->mu);
        if (closing) break;
        if (bounded_close_stuck() > 0) {
            /* NNG's reaper is wedged (bounded_close.h): each probe's close would hang its
             * bound and leave a thread behind, and a restarted listener would not help. */
            log_error("rpc server %s: an NNG close is stuck in this process: the ipc listener is no "
                      "longer probed (restart the process)",
                      s->url);
            break;
        }
        if (srv_probe(s)) {
            s->probe_failures = 0;
            continue;
        }
        /* One late probe may be a loaded machine; a broken listener fails every time. And
         * a restart closes every connection the listener accepted: with keep_peers, not
         * while one is up (a local worker's one peer, the gateway, must keep its link;
         * the listener matters again only once no connection is left). */
        if (++s->probe_failures < AICFN_IPC_PROBE_FAILURES) continue;
        pthread_mutex_lock(&s->mu);
        size_t live = s->n_live;
        pthread_mutex_unlock(&s->mu);
        if (s->keep_peers && live > 0) {
            if (s->probe_failures == AICFN_IPC_PROBE_FAILURES)
                log_warn("rpc %s: ipc listener not delivering new connections (nng #1518); restart deferred "
                         "while %zu connection(s) are up",
                         s->url, live);
            continue;
        }
        log_warn("rpc %s: ipc listener stopped delivering connections (nng #1518); restarting it", s->url);
        s->probe_failures = 0;
        nng_listener_close(s->listener);
        int rv = srv_listen(s, s->url);
        if (rv != 0) log_error("rpc %s: restarting the listener: %s", s->url, nng_strerror(rv));
        pthread_mutex_lock(&s->mu);
        s->restarts++;
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

/* Rewrites a tcp URL with port 0 to the port actually bound. */
static void srv_resolve_url(rpc_server *s, const char *url) {
    snprintf(s->url, sizeof s->url, "%s", url);
    if (strncmp(url, "tcp", 3) != 0) return;
    int port = 0;
    if (nng_listener_get_int(s->listener, NNG_OPT_TCP_BOUND_PORT, &port) != 0 || port <= 0) return;
    nng_url *u = NULL;
    if (nng_url_parse(&u, url) != 0) return;
    const char *host = u->u_hostname && u->u_hostname[0] ? u->u_hostname : "0.0.0.0";
    if (strchr(host, ':'))
        snprintf(s->url, sizeof s->url, "%s://[%s]:%d", u->u_scheme, host, port);
    else
        snprintf(s->url, sizeof s->url, "%s://%s:%d", u->u_scheme, host, port);
    nng_url_free(u);
}

static void srv_free(rpc_server *s) {
    if (s->calls) {
        for (unsigned i = 0; i < s->n; i++) {
            struct rpc_call *c = &s->calls[i];
            if (c->aio) {
                nng_aio_stop(c->aio);
                nng_msg_free(nng_aio_get_msg(c->aio));
                nng_aio_free(c->aio);
            }
            if (c->req) nng_msg_free(c->req);
        }
        free(s->calls);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->live);
    free(s);
}

int rpc_server_start(rpc_server **out, const char *url, const rpc_server_opts *opts, rpc_handler_fn fn,
                     void *user, aicfn_error *err) {
    *out = NULL;
    int rc = rpc_check_url(url, err);
    if (rc) return rc;
    if (fn == NULL) return aicfn_error_set(err, AICFN_E_INVALID, "rpc server %s: no handler", url);
    size_t recv_max = opts && opts->recv_max ? opts->recv_max : AICFN_MAX_MESSAGE_BYTES;
    unsigned n = opts && opts->contexts ? opts->contexts : AICFN_NNG_CONTEXTS;
    rpc_server *s = calloc(1, sizeof *s);
    if (s == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "rpc server %s", url);
    pthread_mutex_init(&s->mu, NULL);
    clock_cond_init(&s->cv);
    s->fn = fn;
    s->user = user;
    snprintf(s->url, sizeof s->url, "%s", url);
    s->calls = calloc(n, sizeof *s->calls);
    if (s->calls == NULL) {
        srv_free(s);
        return aicfn_error_set(err, AICFN_E_NOMEM, "rpc server %s: %u contexts", url, n);
    }
    s->n = n;
    int rv;
    if ((rv = nng_rep0_open(&s->sock)) != 0) {
        srv_free(s);
        return rpc_error_nng(err, rv, "rpc server %s: opening REP socket", url);
    }
    s->sock_open = true;
    if ((rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, recv_max + RPC_SP_HEADER_SLACK)) != 0)
        goto fail_sock;
    for (unsigned i = 0; i < n; i++) {
        struct rpc_call *c = &s->calls[i];
        c->srv = s;
        if ((rv = nng_aio_alloc(&c->aio, srv_cb, c)) != 0) goto fail_sock;
        if ((rv = nng_ctx_open(&c->ctx, s->sock)) != 0) goto fail_sock;
    }
    s->recv_max = recv_max;
    s->is_ipc = strncmp(url, "ipc://", 6) == 0;
    s->keep_peers = opts && opts->keep_peers;
    s->reply_timeout = opts && opts->reply_timeout_ms ? (nng_duration)opts->reply_timeout_ms : NNG_DURATION_INFINITE;
    if (s->is_ipc && ((rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_POST, srv_pipe_event, s)) != 0 ||
                      (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, srv_pipe_event, s)) != 0))
        goto fail_sock;
    if ((rv = srv_listen(s, url)) != 0) goto fail_sock;
    srv_resolve_url(s, url);
    pthread_mutex_lock(&s->mu);
    for (unsigned i = 0; i < n; i++)
        s->calls[i].state = SRV_RECV;
    pthread_mutex_unlock(&s->mu);
    for (unsigned i = 0; i < n; i++) /* not yet shared: no `busy` needed */
        nng_ctx_recv(s->calls[i].ctx, s->calls[i].aio);
    if (s->is_ipc) {
        if (pthread_create(&s->watchdog, NULL, srv_watchdog, s) == 0)
            s->watchdog_running = true;
        else
            log_warn("rpc %s: no ipc listener watchdog (pthread_create failed)", s->url);
    }
    *out = s;
    return AICFN_OK;

fail_sock:
    rc = rpc_error_nng(err, rv, "rpc server %s", url);
    nng_close(s->sock);
    srv_free(s);
    return rc;
}

/* A link server's replies waiting to be sent, in bytes, beyond which it reads no more
 * requests: one reply of the largest size may always wait, and every slot a small one. */
#define RPC_LINK_SERVER_QUEUE_MAX (AICFN_MAX_MESSAGE_BYTES + (1u << 20))
/* A handler running this long on a link server's reader hands the reading over to the
 * standby (rpc_link_ops.takeover_ms): the requests behind a slow call wait at most this. */
#define RPC_LINK_SERVER_TAKEOVER_MS 2

/* A request frame from the link (its reader thread): waits for a free slot, as an NNG
 * server's requests wait in the socket while every context is taken. */
static void srv_link_recv(void *user, uint64_t id, nng_msg *m) {
    rpc_server *s = user;
    pthread_mutex_lock(&s->mu);
    while (s->free_calls == NULL && !s->closing) {
        s->slot_waiters++;
        pthread_cond_wait(&s->cv, &s->mu);
        s->slot_waiters--;
    }
    if (s->closing) { /* nobody will answer it */
        pthread_mutex_unlock(&s->mu);
        nng_msg_free(m);
        return;
    }
    struct rpc_call *c = s->free_calls;
    s->free_calls = c->next_free;
    c->next_free = NULL;
    srv_take_request_locked(s, c, m);
    c->link_id = id;
    pthread_mutex_unlock(&s->mu);
    s->fn(s->user, c, nng_msg_body(m), nng_msg_len(m));
}

static void srv_link_end(void *user, const char *why) {
    rpc_server *s = user;
    pthread_mutex_lock(&s->mu);
    bool closing = s->closing;
    pthread_mutex_unlock(&s->mu);
    if (!closing) log_info("rpc %s: link ended: %s", s->url, why);
}

int rpc_server_start_link(rpc_server **out, int fd, const rpc_server_opts *opts, rpc_handler_fn fn, void *user,
                          aicfn_error *err) {
    *out = NULL;
    if (fn == NULL) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_INVALID, "rpc link server: no handler");
    }
    unsigned n = opts && opts->contexts ? opts->contexts : AICFN_NNG_CONTEXTS;
    rpc_server *s = calloc(1, sizeof *s);
    struct rpc_call *calls = s ? calloc(n, sizeof *calls) : NULL;
    if (calls == NULL) {
        free(s);
        close(fd);
        return aicfn_error_set(err, AICFN_E_NOMEM, "rpc link server: %u slots", n);
    }
    pthread_mutex_init(&s->mu, NULL);
    clock_cond_init(&s->cv);
    s->fn = fn;
    s->user = user;
    snprintf(s->url, sizeof s->url, "socketpair:%d", fd);
    s->calls = calls;
    s->n = n;
    for (unsigned i = n; i-- > 0;) {
        calls[i].srv = s;
        calls[i].next_free = s->free_calls;
        s->free_calls = &calls[i];
    }
    s->recv_max = opts && opts->recv_max ? opts->recv_max : AICFN_MAX_MESSAGE_BYTES;
    rpc_link_ops lo = {.recv = srv_link_recv,
                       .end = srv_link_end,
                       .user = s,
                       .recv_max = s->recv_max,
                       .stall_ms = opts ? opts->reply_timeout_ms : 0,
                       .queue_max = opts && opts->link_queue_max ? opts->link_queue_max
                                                                 : RPC_LINK_SERVER_QUEUE_MAX,
                       .takeover_ms = RPC_LINK_SERVER_TAKEOVER_MS,
                       .name = s->url};
    int rc = rpc_link_open(&s->link, fd, &lo, err);
    if (rc != AICFN_OK) {
        srv_free(s);
        return rc;
    }
    *out = s;
    return AICFN_OK;
}

/* 3. of rpc_server_destroy: calls in the handlers' hands are answered by their owners
 * (discarded now); then everything goes (srv_free: nng_aio_stop on each aio before
 * nng_aio_free). */
static void srv_await_answers_and_free(rpc_server *s) {
    pthread_mutex_lock(&s->mu);
    while (s->outstanding > 0)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    srv_free(s);
}

/* The socket's close in rpc_server_destroy (see there); bounded by its caller. */
static void srv_close_nng(void *arg) {
    rpc_server *s = arg;
    nng_close(s->sock);
}

/* The closing thread's part once a stuck close returns after all: it frees the server
 * when the destroyer has stopped waiting for the answers too. */
static void srv_free_after_stuck_close(void *arg) {
    rpc_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->destroyer_gone || s->outstanding > 0)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    srv_free(s);
}

void rpc_server_destroy(rpc_server *s) {
    if (s == NULL) return;
    /* 1. No new context operation starts; wait out those in progress (see `busy`).
     * Answers given from now on are discarded. A link server's reader hands out no new
     * request either (it drops what arrives, or stops waiting for a slot). */
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    pthread_cond_broadcast(&s->cv);
    while (s->busy > 0)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    if (s->link) {
        rpc_link_close(s->link); /* 2. for a link server: the link goes */
        srv_await_answers_and_free(s);
        return;
    }
    if (s->watchdog_running) pthread_join(s->watchdog, NULL);
    if (s->is_ipc) {
        nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_POST, NULL, NULL);
        nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, NULL, NULL);
    }
    /* 2. Stop every context's receive or reply and close the contexts before the socket.
     * NNG 1.5.2's nng_close can hang for ever (its reaper waits on a task that never
     * runs, nng #1813) when it tears down pipes that still read because receives keep
     * being re-armed; stopped contexts leave each pipe idle after at most one message.
     * Measured with a standalone reproducer (requests queued beyond the contexts,
     * clients in another process): nng_close alone hung 31 of 80 times, this order 0 of
     * 160. Closing the listener first made it worse. The stopped callbacks re-arm
     * nothing (closing is set). nng_close still hangs now and then (test_rpc's
     * destroy_with_requests_queued: about once in a thousand closes under load), so the
     * wait for it, and for it alone, is bounded (bounded_close.h): nng_aio_stop waits for
     * a callback that may be running a handler inline, which is no hang. */
    for (unsigned i = 0; i < s->n; i++)
        nng_aio_stop(s->calls[i].aio);
    for (unsigned i = 0; i < s->n; i++)
        nng_ctx_close(s->calls[i].ctx);
    char what[sizeof s->url + 16];
    snprintf(what, sizeof what, "rpc server %s", s->url);
    if (bounded_close_run(srv_close_nng, srv_free_after_stuck_close, s, AICFN_NNG_CLOSE_BOUND_MS, what)) {
        srv_await_answers_and_free(s);
        return;
    }
    /* Stuck: the closing thread keeps s. Every callback has returned (the aios are
     * stopped), so only the calls in the handlers' hands can still touch `user`: wait for
     * those as ever (not for replies on their way out: a stuck NNG may never finish
     * them). The polling is a safety net: an answer while closing signals cv. */
    pthread_mutex_lock(&s->mu);
    for (;;) {
        unsigned in_hands = 0;
        for (unsigned i = 0; i < s->n; i++)
            in_hands += s->calls[i].state == SRV_CALL;
        if (!in_hands) break;
        struct timespec ts;
        clock_deadline_to_timespec(clock_now_us() + 10000, &ts);
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    s->destroyer_gone = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---------------------------------------------------------------------------------
 * Client
 * --------------------------------------------------------------------------------- */

enum { OP_SEND = 1, OP_RECV = 2 };

typedef struct rpc_op {
    rpc_client *c;
    nng_ctx ctx;
    bool ctx_open;
    nng_aio *aio;
    int phase;
    int aborted; /* NNG error set by the disconnect notification (under c->mu) */
    bool listed; /* on the in-flight list */
    uint64_t deadline_us;
    rpc_done_fn done;
    void *user;
    struct rpc_op *prev, *next; /* in-flight list */
    struct rpc_op *next_free;
    struct rpc_op *next_all;
    uint32_t slot;           /* link clients: index in c->slots */
    uint32_t gen;            /* link clients: uses of this slot (the id's high half) */
    uint64_t link_id;        /* link clients: the id of the frame in flight */
    bool queued;             /* link clients: its frame went to the link's queue (cancellable) */
    struct rpc_op *next_end; /* link clients: ops a tick or the link's end completes */
    nng_aio *handoff;        /* link clients: runs `done` for a reply on NNG's task threads */
    nng_msg *handoff_reply;  /* the reply it hands over */
} rpc_op;

struct rpc_client {
    nng_socket sock;
    nng_dialer dialer;
    char url[320];
    size_t send_max;
    unsigned max_async;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool closing;
    bool single_peer;
    bool dropped;  /* single_peer: the connection dropped; every later call is refused */
    bool canceled; /* rpc_client_cancel: every later call is refused */
    bool dial_awaited; /* opts->await_listen: the dialer waits for rpc_client_dial */
    rpc_op *inflight_head;
    unsigned inflight;
    rpc_op *free_ops;
    rpc_op *all_ops;
    unsigned n_ops;
    rpc_link *link;    /* a link client (no socket) */
    rpc_op **slots;    /* link clients: ops by slot (max_async of them) */
    uint64_t next_due; /* link clients: no deadline or abort is due before this (0: none) */
};

static void cli_list_add(rpc_client *c, rpc_op *op) {
    op->prev = NULL;
    op->next = c->inflight_head;
    if (c->inflight_head) c->inflight_head->prev = op;
    c->inflight_head = op;
    op->listed = true;
    op->aborted = 0;
    c->inflight++;
}

static void cli_list_del(rpc_client *c, rpc_op *op) {
    if (!op->listed) return;
    if (op->prev)
        op->prev->next = op->next;
    else
        c->inflight_head = op->next;
    if (op->next) op->next->prev = op->prev;
    op->listed = false;
    c->inflight--;
    pthread_cond_broadcast(&c->cv);
}

/* NNG_PIPE_EV_REM_POST: the connection dropped. Every call in flight may have been sent
 * on it; NNG 1.5.2 would resend those on the next connection (even with an infinite
 * resend time), so fail them now instead. */
/* Fails every call in flight with the NNG error `code` (lock held): a call between its
 * send and its receive sees `aborted` when it arms the receive (cli_arm_recv). */
static void cli_abort_locked(rpc_client *c, int code) {
    for (rpc_op *op = c->inflight_head; op; op = op->next) {
        if (op->aborted == 0) op->aborted = code;
        if (op->aio) nng_aio_abort(op->aio, code);
    }
    if (c->link && c->inflight_head) { /* the link's reader completes them (never here: locks) */
        c->next_due = 1;
        rpc_link_due(c->link, 0);
    }
}

static void cli_pipe_removed(nng_pipe p, nng_pipe_ev ev, void *arg) {
    (void)p;
    (void)ev;
    rpc_client *c = arg;
    pthread_mutex_lock(&c->mu);
    if (c->single_peer) c->dropped = true;
    if (!c->closing) cli_abort_locked(c, NNG_ECONNRESET);
    pthread_mutex_unlock(&c->mu);
}

void rpc_client_fail_inflight(rpc_client *c) {
    pthread_mutex_lock(&c->mu);
    if (!c->closing) cli_abort_locked(c, NNG_ECONNRESET);
    pthread_mutex_unlock(&c->mu);
}

void rpc_client_cancel(rpc_client *c) {
    pthread_mutex_lock(&c->mu);
    c->canceled = true;
    if (!c->closing) cli_abort_locked(c, NNG_ECANCELED);
    pthread_mutex_unlock(&c->mu);
}

static int cli_ctx_open(rpc_client *c, nng_ctx *ctx) {
    int rv = nng_ctx_open(ctx, c->sock);
    if (rv != 0) return rv;
    rv = nng_ctx_set_ms(*ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    if (rv != 0) nng_ctx_close(*ctx);
    return rv;
}

static uint32_t cli_timeout(uint32_t timeout_ms) {
    return timeout_ms ? timeout_ms : AICFN_DEFAULT_TIMEOUT_MS;
}

/* Milliseconds left until deadline, at least 1; 0 when passed. */
static nng_duration cli_left(uint64_t deadline_us) {
    uint64_t now = clock_now_us();
    if (now >= deadline_us) return 0;
    uint64_t ms = (deadline_us - now + 999) / 1000;
    return ms > INT32_MAX ? INT32_MAX : (nng_duration)ms;
}

static int cli_status(rpc_client *c, int rv, aicfn_error *err, const char *phase) {
    if (rv == NNG_ECLOSED || rv == NNG_ECONNRESET || rv == NNG_ECANCELED) {
        pthread_mutex_lock(&c->mu);
        bool closing = c->closing;
        pthread_mutex_unlock(&c->mu);
        if (closing) return aicfn_error_set(err, AICFN_E_CANCELED, "rpc %s: client closed", c->url);
    }
    if (rv == NNG_ECONNRESET)
        return aicfn_error_set(err, AICFN_E_WORKER_LOST,
                               "rpc %s: connection lost with the call in flight (%s)", c->url, phase);
    if (rv == NNG_ETIMEDOUT)
        return aicfn_error_set(err, AICFN_E_TIMEOUT, "rpc %s: no reply before the deadline (%s)", c->url,
                               phase);
    return rpc_error_nng(err, rv, "rpc %s: %s", c->url, phase);
}

int rpc_client_open(rpc_client **out, const char *url, const rpc_client_opts *opts, aicfn_error *err) {
    *out = NULL;
    int rc = rpc_check_url(url, err);
    if (rc) return rc;
    rpc_client *c = calloc(1, sizeof *c);
    if (c == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "rpc client %s", url);
    size_t recv_max = opts && opts->recv_max ? opts->recv_max : AICFN_MAX_MESSAGE_BYTES;
    c->send_max = opts && opts->send_max ? opts->send_max : AICFN_MAX_MESSAGE_BYTES;
    c->max_async = opts && opts->max_async ? opts->max_async : AICFN_RPC_MAX_ASYNC;
    c->single_peer = opts && opts->single_peer;
    bool background = opts && opts->background;
    c->dial_awaited = background && opts->await_listen;
    snprintf(c->url, sizeof c->url, "%s", url);
    pthread_mutex_init(&c->mu, NULL);
    clock_cond_init(&c->cv);
    int rv;
    if ((rv = nng_req0_open(&c->sock)) != 0) {
        rc = rpc_error_nng(err, rv, "rpc client %s: opening REQ socket", url);
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        free(c);
        return rc;
    }
    const char *what = "setting options";
    if ((rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, recv_max + RPC_SP_HEADER_SLACK)) != 0)
        goto fail;
    if ((rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) != 0) goto fail;
    /* NNG waits a random time below the reconnect interval, which doubles from MINT to
     * MAXT, between dials. A background dial usually races a process that is starting
     * (a worker the gateway just spawned listens 5-15 ms later): between 2 and 20 ms,
     * the dial that connects follows its listen by 10 ms at most, where 50..1000 ms made
     * it up to 100 ms later (half of a cold start's spawn time). A peer that stays down
     * costs at most a failed dial per 10 ms on average until its link is closed. */
    if ((rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, background ? 2 : 50)) != 0) goto fail;
    if ((rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, background ? 20 : 1000)) != 0) goto fail;
    if ((rv = nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, cli_pipe_removed, c)) != 0) goto fail;
    what = "dialing";
    if ((rv = nng_dialer_create(&c->dialer, c->sock, url)) != 0) goto fail;
    if ((rv = nng_dialer_set_size(c->dialer, NNG_OPT_RECVMAXSZ, recv_max + RPC_SP_HEADER_SLACK)) != 0)
        goto fail;
    if (!c->dial_awaited && (rv = nng_dialer_start(c->dialer, background ? NNG_FLAG_NONBLOCK : 0)) != 0)
        goto fail;
    *out = c;
    return AICFN_OK;
fail:
    rc = rpc_error_nng(err, rv, "rpc client %s: %s", url, what);
    if (rc == AICFN_E_IO && rv == NNG_ECONNREFUSED) rc = AICFN_E_UNAVAILABLE;
    nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, NULL, NULL);
    nng_close(c->sock);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
    return rc;
}

int rpc_client_dial(rpc_client *c, aicfn_error *err) {
    int rv = 0;
    pthread_mutex_lock(&c->mu);
    bool closing = c->closing || c->canceled;
    if (c->dial_awaited && !closing) {
        /* Under c->mu, so that rpc_client_close cannot close the socket meanwhile. */
        c->dial_awaited = false;
        rv = nng_dialer_start(c->dialer, NNG_FLAG_NONBLOCK);
    }
    pthread_mutex_unlock(&c->mu);
    if (closing) return aicfn_error_set(err, AICFN_E_CANCELED, "rpc %s: client closed", c->url);
    return rv ? rpc_error_nng(err, rv, "rpc client %s: dialing", c->url) : AICFN_OK;
}

static void cli_free(void *arg);

/* The socket's close in rpc_client_close; bounded by its caller. */
static void cli_close_nng(void *arg) {
    rpc_client *c = arg;
    nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, NULL, NULL);
    nng_close(c->sock);
}

void rpc_client_close(rpc_client *c) {
    if (c == NULL) return;
    /* Fail the calls in flight and wait for them before closing the socket: a sync call
     * closes its context on the way out, which must not meet nng_close (see
     * rpc_call_sync). */
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    cli_abort_locked(c, NNG_ECLOSED);
    while (c->inflight > 0)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    if (c->link) {
        rpc_link_close(c->link);
    } else {
        char what[sizeof c->url + 16];
        snprintf(what, sizeof what, "rpc client %s", c->url);
        if (!bounded_close_run(cli_close_nng, cli_free, c, AICFN_NNG_CLOSE_BOUND_MS, what))
            return; /* stuck (bounded_close.h): the closing thread frees c if NNG returns */
    }
    cli_free(c);
}

/* The rest of rpc_client_close once the socket is closed: every op's aio, then c. */
static void cli_free(void *arg) {
    rpc_client *c = arg;
    pthread_mutex_lock(&c->mu);
    rpc_op *all = c->all_ops;
    c->all_ops = NULL;
    pthread_mutex_unlock(&c->mu);
    while (all) {
        rpc_op *next = all->next_all;
        if (all->aio) {
            nng_aio_stop(all->aio);
            nng_msg_free(nng_aio_get_msg(all->aio));
            nng_aio_free(all->aio);
        }
        if (all->handoff) { /* its callback may still be returning */
            nng_aio_stop(all->handoff);
            nng_aio_free(all->handoff);
        }
        free(all);
        all = next;
    }
    free(c->slots);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

nng_socket rpc_client_socket(const rpc_client *c) {
    return c->sock;
}

unsigned rpc_client_inflight(rpc_client *c) {
    pthread_mutex_lock(&c->mu);
    unsigned n = c->inflight;
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* Starts the receive phase unless the call was aborted meanwhile; under c->mu so the
 * disconnect notification cannot slip in between the check and the arm. Returns 0 or
 * the abort error. */
/* Arms op's receive after its send completed; the receive's completion ends the call.
 * A call aborted meanwhile (the connection dropped, the client fails its calls) or out
 * of time has its receive armed all the same and aborted at once: only a cancelled
 * receive resets a REQ context, and a context left holding its request would send it
 * again on NNG's next connection (NNG 1.5.2 resends on a pipe's close whatever the
 * resend time), running a call that was already reported failed. */
static void cli_arm_recv(rpc_client *c, rpc_op *op) {
    pthread_mutex_lock(&c->mu);
    int ab = op->aborted;
    nng_duration left = cli_left(op->deadline_us);
    if (ab == 0 && left == 0) ab = NNG_ETIMEDOUT;
    op->phase = OP_RECV;
    nng_aio_set_timeout(op->aio, left ? left : 1);
    nng_ctx_recv(op->ctx, op->aio);
    if (ab != 0) nng_aio_abort(op->aio, ab);
    pthread_mutex_unlock(&c->mu);
}

static int cli_dropped(rpc_client *c, aicfn_error *err) {
    return aicfn_error_set(err, AICFN_E_WORKER_LOST,
                           "rpc %s: the connection to the peer dropped (call not sent)", c->url);
}

static int cli_precheck(rpc_client *c, size_t len, aicfn_error *err) {
    if (len > c->send_max)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE,
                               "rpc %s: request of %zu bytes exceeds the limit of %zu", c->url, len,
                               c->send_max);
    return AICFN_OK;
}

/* rpc_call_sync on a link client: an async call and a wait. */
typedef struct cli_sync_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    rpc_msg *reply;
    aicfn_error err;
} cli_sync_wait;

static void cli_sync_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    cli_sync_wait *w = user;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->reply = reply;
    if (err) w->err = *err;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int cli_link_sync(rpc_client *c, const void *req, size_t len, uint32_t timeout_ms, rpc_msg **reply,
                         aicfn_error *err) {
    cli_sync_wait w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    aicfn_error_clear(&w.err);
    int rc = rpc_call_async(c, req, len, timeout_ms, cli_sync_done, &w, err);
    if (rc == AICFN_OK) {
        pthread_mutex_lock(&w.mu);
        while (!w.done) /* the link's tick ends it by its deadline */
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        rc = w.status;
        *reply = w.reply;
        if (rc != AICFN_OK && err) *err = w.err;
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

int rpc_call_sync(rpc_client *c, const void *req, size_t len, uint32_t timeout_ms, rpc_msg **reply,
                  aicfn_error *err) {
    *reply = NULL;
    int rc = cli_precheck(c, len, err);
    if (rc) return rc;
    if (c->link) return cli_link_sync(c, req, len, timeout_ms, reply, err);
    rpc_op op;
    memset(&op, 0, sizeof op);
    op.c = c;
    op.deadline_us = clock_now_us() + (uint64_t)cli_timeout(timeout_ms) * 1000;
    nng_msg *m = NULL;
    int rv = rpc_msg_copy(&m, req, len);
    if (rv != 0) return rpc_error_nng(err, rv, "rpc %s: request of %zu bytes", c->url, len);
    if ((rv = nng_aio_alloc(&op.aio, NULL, NULL)) != 0) {
        nng_msg_free(m);
        return rpc_error_nng(err, rv, "rpc %s: aio", c->url);
    }
    /* Counted in flight before its context exists, so that everything it does with the
     * context (open, send, receive, close) comes before rpc_client_close's nng_close:
     * NNG 1.5.2 panics when a context operation meets the close of its socket. */
    pthread_mutex_lock(&c->mu);
    if (c->closing || c->dropped || c->canceled) {
        bool closing = c->closing || c->canceled;
        pthread_mutex_unlock(&c->mu);
        nng_msg_free(m);
        nng_aio_free(op.aio); /* never started */
        if (closing) return aicfn_error_set(err, AICFN_E_CANCELED, "rpc %s: client closed", c->url);
        return cli_dropped(c, err);
    }
    cli_list_add(c, &op);
    pthread_mutex_unlock(&c->mu);
    bool ctx_open = false;
    if ((rv = cli_ctx_open(c, &op.ctx)) != 0) {
        nng_msg_free(m);
        rc = cli_status(c, rv, err, "opening a context");
        goto out;
    }
    ctx_open = true;
    pthread_mutex_lock(&c->mu);
    if (op.aborted) { /* closing, or the connection dropped, meanwhile */
        int ab = op.aborted;
        pthread_mutex_unlock(&c->mu);
        nng_msg_free(m);
        rc = ab == NNG_ECONNRESET ? cli_dropped(c, err) : cli_status(c, ab, err, "not sent");
        goto out;
    }
    op.phase = OP_SEND;
    nng_aio_set_msg(op.aio, m);
    nng_aio_set_timeout(op.aio, cli_left(op.deadline_us) ? cli_left(op.deadline_us) : 1);
    nng_ctx_send(op.ctx, op.aio);
    pthread_mutex_unlock(&c->mu);
    nng_aio_wait(op.aio);
    rv = nng_aio_result(op.aio);
    if (rv != 0) {
        nng_msg_free(nng_aio_get_msg(op.aio));
        nng_aio_set_msg(op.aio, NULL);
        rc = cli_status(c, rv, err, "sending");
    } else {
        cli_arm_recv(c, &op);
        nng_aio_wait(op.aio);
        rv = nng_aio_result(op.aio);
        if (rv != 0) {
            rc = cli_status(c, rv, err, "waiting for the reply");
        } else {
            *reply = (rpc_msg *)nng_aio_get_msg(op.aio);
            nng_aio_set_msg(op.aio, NULL);
            rc = AICFN_OK;
        }
    }
out:
    /* Still counted in flight: the context closes before rpc_client_close may close the
     * socket, and c may be freed as soon as the call leaves the list. */
    nng_aio_stop(op.aio);
    if (ctx_open) nng_ctx_close(op.ctx);
    pthread_mutex_lock(&c->mu);
    cli_list_del(c, &op);
    pthread_mutex_unlock(&c->mu);
    nng_aio_free(op.aio);
    return rc;
}

/* Takes op out of the in-flight list to complete it (lock held), still counted in
 * c->inflight (rpc_client_close may not free the slot before `done` returned); false
 * when another path took it first (link clients: a reply, a tick, the link's end). */
static bool cli_claim_locked(rpc_client *c, rpc_op *op) {
    if (!op->listed) return false;
    cli_list_del(c, op);
    c->inflight++;
    return true;
}

static void cli_finish(rpc_op *op, int rv, nng_msg *reply, const char *phase);

/* Finishes an async call: runs `done`, then returns the slot to the pool. */
static void cli_complete(rpc_op *op, int rv, nng_msg *reply, const char *phase) {
    rpc_client *c = op->c;
    pthread_mutex_lock(&c->mu);
    cli_list_del(c, op);
    c->inflight++;
    pthread_mutex_unlock(&c->mu);
    cli_finish(op, rv, reply, phase);
}

/* Runs a claimed op's `done`, then returns it to the pool. */
static void cli_finish(rpc_op *op, int rv, nng_msg *reply, const char *phase) {
    rpc_client *c = op->c;
    aicfn_error e;
    aicfn_error_clear(&e);
    int status = AICFN_OK;
    if (rv != 0) status = cli_status(c, rv, &e, phase);
    rpc_done_fn done = op->done;
    void *user = op->user;
    done(user, status, (rpc_msg *)reply, &e);
    pthread_mutex_lock(&c->mu);
    op->done = NULL;
    op->next_free = c->free_ops;
    c->free_ops = op;
    c->inflight--;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void cli_async_cb(void *arg) {
    rpc_op *op = arg;
    int rv = nng_aio_result(op->aio);
    if (op->phase == OP_SEND) {
        if (rv != 0) {
            nng_msg_free(nng_aio_get_msg(op->aio));
            nng_aio_set_msg(op->aio, NULL);
            cli_complete(op, rv, NULL, "sending");
            return;
        }
        cli_arm_recv(op->c, op);
        return;
    }
    if (rv != 0) {
        cli_complete(op, rv, NULL, "waiting for the reply");
        return;
    }
    nng_msg *m = nng_aio_get_msg(op->aio);
    nng_aio_set_msg(op->aio, NULL);
    cli_complete(op, 0, m, "reply");
}

/* ---- Link clients ---- */

/* A reply handed over to an NNG task thread (cli_link_recv). */
static void cli_link_handoff_cb(void *arg) {
    rpc_op *op = arg;
    nng_msg *m = op->handoff_reply;
    op->handoff_reply = NULL;
    cli_finish(op, 0, m, "reply");
}

/* A reply frame (the link's reader thread): completes its call, unless that call ended
 * already (timed out, aborted: the late reply is dropped). `done` runs on one of NNG's
 * task threads, as a REQ client's does, not here: a reply's `done` typically sends on
 * an NNG socket (the gateway answers its client), and NNG's task threads, busy under
 * load, take such follow-up work without a wake-up where the reader would pay one per
 * call (measured, 16 clients through the gateway: 15,500-16,500 calls/s finished here,
 * 20,000-22,600 handed over). The reader moves on to the next frame meanwhile. */
static void cli_link_recv(void *user, uint64_t id, nng_msg *m) {
    rpc_client *c = user;
    uint32_t slot = (uint32_t)id;
    pthread_mutex_lock(&c->mu);
    rpc_op *op = slot < c->n_ops ? c->slots[slot] : NULL;
    bool mine = op && op->link_id == id && cli_claim_locked(c, op);
    pthread_mutex_unlock(&c->mu);
    if (!mine) {
        nng_msg_free(m);
        return;
    }
    if (op->handoff && nng_aio_begin(op->handoff)) {
        op->handoff_reply = m;
        nng_aio_finish(op->handoff, 0);
        return;
    }
    cli_finish(op, 0, m, "reply"); /* no aio (out of memory when the slot was made) */
}

/* Completes the ops chained on next_end with their abort error, or `rv`. */
static void cli_link_finish_all(rpc_op *list, int rv, const char *phase) {
    while (list) {
        rpc_op *next = list->next_end;
        list->next_end = NULL;
        cli_finish(list, list->aborted ? list->aborted : rv, NULL, phase);
        list = next;
    }
}

/* The reader's tick: fails the calls aborted or past their deadline; returns when the
 * next deadline falls (0: no call in flight). */
static uint64_t cli_link_tick(void *user, uint64_t now) {
    rpc_client *c = user;
    pthread_mutex_lock(&c->mu);
    if (c->next_due == 0 || now < c->next_due) {
        uint64_t due = c->next_due;
        pthread_mutex_unlock(&c->mu);
        return due;
    }
    rpc_op *ended = NULL, *op = c->inflight_head;
    uint64_t next = 0;
    while (op) {
        rpc_op *after = op->next;
        if (op->aborted || op->deadline_us <= now) {
            if (op->aborted == 0) op->aborted = NNG_ETIMEDOUT;
            (void)cli_claim_locked(c, op);
            /* A request still queued behind a worker that does not read is dropped: the
             * call is reported failed, so it must never run (as NNG drops an unsent one). */
            if (op->queued) (void)rpc_link_cancel(c->link, op->link_id);
            op->next_end = ended;
            ended = op;
        } else if (next == 0 || op->deadline_us < next) {
            next = op->deadline_us;
        }
        op = after;
    }
    c->next_due = next;
    pthread_mutex_unlock(&c->mu);
    cli_link_finish_all(ended, NNG_ETIMEDOUT, "waiting for the reply");
    return next;
}

/* The link ended (its reader thread): the peer is gone for good. Every call in flight
 * fails, and every later one is refused (as a single-peer NNG client's). */
static void cli_link_end(void *user, const char *why) {
    rpc_client *c = user;
    pthread_mutex_lock(&c->mu);
    c->dropped = true;
    int rv = c->closing ? NNG_ECLOSED : NNG_ECONNRESET;
    rpc_op *ended = NULL;
    while (c->inflight_head) {
        rpc_op *op = c->inflight_head;
        (void)cli_claim_locked(c, op);
        op->next_end = ended;
        ended = op;
    }
    c->next_due = 0;
    bool closing = c->closing;
    pthread_mutex_unlock(&c->mu);
    if (!closing) log_debug("rpc %s: link ended: %s", c->url, why);
    cli_link_finish_all(ended, rv, "waiting for the reply");
}

/* rpc_call_async on a link client, with c->mu held (released here) and the request in m. */
static int cli_link_async(rpc_client *c, nng_msg *m, uint32_t timeout_ms, rpc_done_fn done, void *user,
                          aicfn_error *err) {
    rpc_op *op = c->free_ops;
    if (op) {
        c->free_ops = op->next_free;
    } else {
        if (c->n_ops >= c->max_async || (op = calloc(1, sizeof *op)) == NULL) {
            bool full = c->n_ops >= c->max_async;
            pthread_mutex_unlock(&c->mu);
            nng_msg_free(m);
            if (full)
                return aicfn_error_set(err, AICFN_E_OVERLOADED, "rpc %s: %u calls already in flight", c->url,
                                       c->max_async);
            return aicfn_error_set(err, AICFN_E_NOMEM, "rpc %s: async call slot", c->url);
        }
        op->c = c;
        if (nng_aio_alloc(&op->handoff, cli_link_handoff_cb, op) != 0) op->handoff = NULL;
        op->slot = c->n_ops;
        c->slots[c->n_ops++] = op;
        op->next_all = c->all_ops;
        c->all_ops = op;
    }
    op->done = done;
    op->user = user;
    op->phase = OP_RECV;
    op->deadline_us = clock_now_us() + (uint64_t)cli_timeout(timeout_ms) * 1000;
    op->gen++;
    uint64_t id = (uint64_t)op->gen << 32 | op->slot;
    op->link_id = id;
    cli_list_add(c, op);
    if (c->next_due == 0 || op->deadline_us < c->next_due) c->next_due = op->deadline_us;
    rpc_link_due(c->link, op->deadline_us);
    /* Sent under c->mu (rpc_link_send never blocks on the peer; the link never takes
     * c->mu under its own lock): the client cannot be closed, nor the call completed and
     * its slot reused, before its frame is queued. */
    int rc = rpc_link_send(c->link, id, m, &op->queued);
    if (rc != AICFN_OK) { /* not sent: refused here, and `done` never runs */
        cli_list_del(c, op);
        op->done = NULL;
        op->next_free = c->free_ops;
        c->free_ops = op;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc == AICFN_OK) return AICFN_OK;
    if (rc == AICFN_E_UNAVAILABLE) return cli_dropped(c, err);
    return aicfn_error_set(err, rc, "rpc %s: request not sent", c->url);
}

int rpc_client_open_link(rpc_client **out, int fd, const rpc_client_opts *opts, aicfn_error *err) {
    *out = NULL;
    rpc_client *c = calloc(1, sizeof *c);
    size_t recv_max = opts && opts->recv_max ? opts->recv_max : AICFN_MAX_MESSAGE_BYTES;
    if (c) {
        c->max_async = opts && opts->max_async ? opts->max_async : AICFN_RPC_MAX_ASYNC;
        c->slots = calloc(c->max_async, sizeof *c->slots);
    }
    if (c == NULL || c->slots == NULL) {
        if (c) free(c);
        close(fd);
        return aicfn_error_set(err, AICFN_E_NOMEM, "rpc link client");
    }
    c->send_max = opts && opts->send_max ? opts->send_max : AICFN_MAX_MESSAGE_BYTES;
    c->single_peer = true; /* a socketpair never comes back */
    snprintf(c->url, sizeof c->url, "socketpair:%d", fd);
    pthread_mutex_init(&c->mu, NULL);
    clock_cond_init(&c->cv);
    rpc_link_ops lo = {.recv = cli_link_recv,
                       .end = cli_link_end,
                       .tick = cli_link_tick,
                       .user = c,
                       .recv_max = recv_max,
                       .name = c->url};
    int rc = rpc_link_open(&c->link, fd, &lo, err);
    if (rc != AICFN_OK) {
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        free(c->slots);
        free(c);
        return rc;
    }
    *out = c;
    return AICFN_OK;
}

int rpc_call_async(rpc_client *c, const void *req, size_t len, uint32_t timeout_ms, rpc_done_fn done,
                   void *user, aicfn_error *err) {
    if (done == NULL) return aicfn_error_set(err, AICFN_E_INVALID, "rpc_call_async: no completion callback");
    int rc = cli_precheck(c, len, err);
    if (rc) return rc;
    nng_msg *m = NULL;
    int rv = rpc_msg_copy(&m, req, len);
    if (rv != 0) return rpc_error_nng(err, rv, "rpc %s: request of %zu bytes", c->url, len);

    pthread_mutex_lock(&c->mu);
    if (c->closing || c->canceled) {
        pthread_mutex_unlock(&c->mu);
        nng_msg_free(m);
        return aicfn_error_set(err, AICFN_E_CANCELED, "rpc %s: client closed", c->url);
    }
    if (c->dropped) {
        pthread_mutex_unlock(&c->mu);
        nng_msg_free(m);
        return cli_dropped(c, err);
    }
    if (c->link) return cli_link_async(c, m, timeout_ms, done, user, err); /* unlocks */
    rpc_op *op = c->free_ops;
    if (op) {
        c->free_ops = op->next_free;
    } else {
        if (c->n_ops >= c->max_async) {
            pthread_mutex_unlock(&c->mu);
            nng_msg_free(m);
            return aicfn_error_set(err, AICFN_E_OVERLOADED, "rpc %s: %u calls already in flight", c->url,
                                   c->max_async);
        }
        op = calloc(1, sizeof *op);
        if (op == NULL || nng_aio_alloc(&op->aio, cli_async_cb, op) != 0) {
            free(op);
            pthread_mutex_unlock(&c->mu);
            nng_msg_free(m);
            return aicfn_error_set(err, AICFN_E_NOMEM, "rpc %s: async call slot", c->url);
        }
        if ((rv = cli_ctx_open(c, &op->ctx)) != 0) {
            nng_aio_free(op->aio); /* never started */
            free(op);
            pthread_mutex_unlock(&c->mu);
            nng_msg_free(m);
            return cli_status(c, rv, err, "opening a context");
        }
        op->c = c;
        op->ctx_open = true;
        op->next_all = c->all_ops;
        c->all_ops = op;
        c->n_ops++;
    }
    op->done = done;
    op->user = user;
    op->phase = OP_SEND;
    op->deadline_us = clock_now_us() + (uint64_t)cli_timeout(timeout_ms) * 1000;
    cli_list_add(c, op);
    nng_aio_set_msg(op->aio, m);
    nng_aio_set_timeout(op->aio, cli_left(op->deadline_us) ? cli_left(op->deadline_us) : 1);
    nng_ctx_send(op->ctx, op->aio);
    pthread_mutex_unlock(&c->mu);
    return AICFN_OK;
}
