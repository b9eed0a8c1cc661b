/* rpc.h: NNG request/reply plumbing shared by the worker, the gateway and the CLI
 * (design.md §4): an aio-driven REP server with many contexts and deferred replies, and
 * a REQ client with synchronous and asynchronous calls over one socket.
 *
 * Not for: message contents (see common/wire.h) or any routing policy.
 *
 * Rules enforced here for NNG 1.5.2 (each guarded by a test):
 *  - NNG_OPT_RECVMAXSZ is set on every socket (server and client), to the body limit plus
 *    RPC_SP_HEADER_SLACK: NNG compares the whole frame, the SP header (REQ's request id)
 *    included, so a body of exactly the limit must still pass.
 *  - REQ sockets and every REQ context use NNG_OPT_REQ_RESENDTIME = infinite: a request
 *    is never resent by NNG; retries are the router's decision alone. NNG 1.5.2 still
 *    re-queues a request when its pipe closes, so a client aborts its in-flight calls
 *    with AICFN_E_WORKER_LOST as soon as its connection drops (see rpc_client_open).
 *  - Only tcp://, tcp4://, tcp6://, ipc:// and inproc:// addresses are accepted; http://,
 *    ws://, wss://, tls+tcp:// and anything else is refused with AICFN_E_INVALID.
 *  - Messages are built with nng_msg_alloc + one copy (never the nng_msg insert functions: nng #1541, #1808).
 *  - Every aio is stopped (nng_aio_stop) before it is freed.
 *  - No context is closed beside or after the close of its socket (NNG 1.5.2 panics in
 *    nng_ctx_close): a client fails and waits out its calls before nng_close
 *    (test_rpc_concurrency close_while_calls_in_flight_repeatedly).
 *  - A server's socket is closed only once no thread is inside a context operation on
 *    it (a reply's nng_ctx_send beside nng_close panics) and after every context's aio
 *    is stopped and every context closed: nng_close can otherwise hang for ever while
 *    peers keep requests queued (nng #1813) (test_rpc destroy_with_requests_queued).
 * NNG errors are mapped to aicfn codes with nng_strerror's text in the message. */
#ifndef AICFN_COMMON_RPC_H
#define AICFN_COMMON_RPC_H

#include <nng/nng.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* Bytes NNG_OPT_RECVMAXSZ allows beyond a body limit for the SP header of a REQ/REP
 * message (4 bytes per hop; a message with more than this is not ours). */
#define RPC_SP_HEADER_SLACK 64

/* Maps an NNG error number to an aicfn status: NNG_ETIMEDOUT -> AICFN_E_TIMEOUT,
 * NNG_ECONNREFUSED/ECLOSED/ECONNSHUT/EADDRINUSE... -> AICFN_E_UNAVAILABLE (EADDRINUSE,
 * EADDRINVAL, EINVAL -> AICFN_E_INVALID), NNG_ECONNRESET -> AICFN_E_WORKER_LOST,
 * NNG_ENOMEM -> AICFN_E_NOMEM, NNG_EMSGSIZE -> AICFN_E_TOO_LARGE, NNG_ECANCELED ->
 * AICFN_E_CANCELED, others -> AICFN_E_IO. */
int rpc_status_from_nng(int nng_rv);

/* Fills err with rpc_status_from_nng(rv) and "<what>: <nng_strerror(rv)>"; returns the
 * code. */
int rpc_error_nng(aicfn_error *err, int nng_rv, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* AICFN_OK when `url` uses an allowed scheme (tcp, tcp4, tcp6, ipc, inproc) and is not
 * empty; AICFN_E_INVALID naming the scheme otherwise. */
int rpc_check_url(const char *url, aicfn_error *err);

/* A received message or reply: a thin wrapper of an nng_msg body. */
typedef struct rpc_msg rpc_msg;
const uint8_t *rpc_msg_data(const rpc_msg *m);
size_t rpc_msg_len(const rpc_msg *m);
/* Frees a message. NULL accepted. */
void rpc_msg_free(rpc_msg *m);
/* A message holding a copy of `len` bytes at `p` (to hand to rpc_reply_msg like a
 * received one). AICFN_E_NOMEM when it cannot be allocated. */
int rpc_msg_new(const void *p, size_t len, rpc_msg **out, aicfn_error *err);

/* ===================================================================================
 * Server: REP socket, AICFN_NNG_CONTEXTS contexts, aio callbacks, deferred replies
 * =================================================================================== */

typedef struct rpc_server rpc_server;

/* One received request awaiting its reply. Owned by the server; valid from the handler
 * callback until it is answered with rpc_reply / rpc_reply_msg / rpc_call_drop
 * (exactly one of them, exactly once, from any thread). */
typedef struct rpc_call rpc_call;

/* Called for every received request, on an NNG callback thread, possibly many at once
 * (one per context). `msg`/`len` are the request bytes, valid (and unchanged) until the
 * call is answered, so decoded tensors may point into them without a copy. The handler
 * must return quickly (decode, enqueue); it may answer the call inside the callback or
 * later from any thread. It must not call rpc_server_destroy. */
typedef void (*rpc_handler_fn)(void *user, rpc_call *call, const uint8_t *msg, size_t len);

typedef struct rpc_server_opts {
    size_t recv_max;   /* NNG_OPT_RECVMAXSZ; 0 = AICFN_MAX_MESSAGE_BYTES */
    unsigned contexts; /* concurrent unanswered requests; 0 = AICFN_NNG_CONTEXTS */
    bool keep_peers;   /* ipc: the listener watchdog (rpc_server_listener_restarts) never
                          replaces a listener while a connection is up, since that closes
                          them all: for a server whose one peer must not lose its link (a
                          local worker: the gateway's link is single-peer) */
    uint32_t reply_timeout_ms; /* a reply not taken by its connection within this is dropped
                          and that connection closed (0: wait for ever). A peer that sends
                          requests but never reads its replies would otherwise hold one
                          context per reply until every context is taken: for servers
                          whose peers are untrusted (the gateway's client front) */
    size_t link_queue_max; /* link servers: the reader reads no more requests while more than
                          this many bytes of replies wait to be sent; 0 = 64 MiB + 1 MiB */
} rpc_server_opts;

/* Opens a REP socket listening on `url` and starts `contexts` receive contexts. When all
 * contexts hold unanswered calls, further requests wait queued inside NNG (in the
 * socket and the peers' pipes) until a context is answered; nothing is dropped.
 * A tcp URL with port 0 binds an ephemeral port (see rpc_server_url).
 * `opts` may be NULL. Errors: AICFN_E_INVALID (refused scheme, bad URL, address in
 * use), AICFN_E_NOMEM, AICFN_E_IO. Blocks only for the bind. */
int rpc_server_start(rpc_server **out, const char *url, const rpc_server_opts *opts, rpc_handler_fn fn,
                     void *user, aicfn_error *err);

/* A server on one connected stream socket (socketpair) instead of a listener: the
 * worker's end of the link a gateway made when it spawned it (rpc_link.h). Takes `fd`
 * (closed on failure too). Requests come from the link's reader thread, which calls the
 * handler (a handler still running after 2 ms hands the reading over to a standby thread,
 * which then calls the handler for the next requests); when every one of the `contexts`
 * slots holds an unanswered call, the reader waits for one (the requests wait in the
 * socket). reply_timeout_ms
 * ends the link when the peer takes no reply bytes for that long. Everything else is as
 * for rpc_server_start; rpc_server_url is "socketpair:FD". */
int rpc_server_start_link(rpc_server **out, int fd, const rpc_server_opts *opts, rpc_handler_fn fn, void *user,
                          aicfn_error *err);

/* The URL actually bound, with the real port for tcp port 0 ("tcp://127.0.0.1:41234").
 * Owned by the server. */
const char *rpc_server_url(const rpc_server *s);

/* Calls handed to the handler and not yet answered. Thread-safe. */
unsigned rpc_server_outstanding(rpc_server *s);

/* Stops listening and receiving, closes the socket (peers see their connection drop),
 * then waits until every outstanding call has been answered (answers after the close are
 * discarded, but each call must still be answered once by its owner) and every callback
 * has returned, and frees everything. NULL accepted. Blocks. When NNG's close does not
 * return within AICFN_NNG_CLOSE_BOUND_MS (NNG 1.5.2's reaper deadlock,
 * common/bounded_close.h), it still waits for the calls in the handlers' hands, then
 * returns, leaving the socket and the server to the thread closing it. */
void rpc_server_destroy(rpc_server *s);

/* Sends `len` bytes (copied) as the reply to `call`, then the call's context resumes
 * receiving. The call and its request bytes are invalid after this returns. Any thread.
 * Returns AICFN_OK, or AICFN_E_NOMEM (the reply was not sent: the peer times out) — the
 * call is finished either way. */
int rpc_reply(rpc_call *call, const void *bytes, size_t len);

/* Like rpc_reply but takes ownership of an rpc_msg (no copy): forwards a reply received
 * with rpc_call_sync/async unchanged. */
int rpc_reply_msg(rpc_call *call, rpc_msg *reply);

/* Finishes `call` without replying (the peer's request times out). Any thread. */
void rpc_call_drop(rpc_call *call);

/* The load on the server that received `call`: calls handed to the handler and not yet
 * answered (this one included), and the bytes of their requests. Thread-safe. */
void rpc_call_server_load(const rpc_call *call, unsigned *outstanding, uint64_t *held_bytes);

/* Whether `call` came on a link server (rpc_server_start_link), whose handler runs on the
 * thread that reads the link's requests: one that runs 2 ms hands the reading to a
 * standby thread, so a slow handler holds up the requests behind it that long, but work
 * known to take long (a download, dlopen) belongs on a thread of its own (an NNG server
 * has several callback threads). */
bool rpc_call_one_reader(const rpc_call *call);

/* Monotonic time (clock_now_us) when the request was received. */
uint64_t rpc_call_received_us(const rpc_call *call);

/* Takes the request's bytes away from `call` (before it is answered): they then outlive
 * the answer, and the caller frees them with rpc_msg_free (a bundle whose part may still
 * run, on pointers into them, after the bundle's reply left). rpc_msg_data/len read them.
 * NULL when the call holds none (taken already, or answered). Any thread. */
rpc_msg *rpc_call_take_request(rpc_call *call);

/* For tests: the server's socket (read options only; never close it). */
nng_socket rpc_server_socket(const rpc_server *s);

/* ipc:// servers only: how many times the listener watchdog replaced a listener that
 * NNG 1.5.2 left unable to deliver connections after a peer dropped during the SP
 * handshake (nng #1518). An ipc server runs one watchdog thread that dials its own
 * address every AICFN_IPC_PROBE_MS; a listener whose probe connection does not arrive
 * within AICFN_IPC_PROBE_WAIT_MS, AICFN_IPC_PROBE_FAILURES times in a row (one late
 * probe on a loaded machine is not a breakage), is replaced, which closes every
 * connection it accepted (REQ peers redial; with keep_peers it waits until none is
 * up). Until then a peer's dial to the broken listener still succeeds but its calls
 * time out. NNG cannot free a broken listener's endpoint and
 * stuck pipes: each restart leaks a few KiB inside libnng. Thread-safe. */
unsigned rpc_server_listener_restarts(rpc_server *s);

/* ===================================================================================
 * Client: REQ dialer; many concurrent calls on one socket
 * =================================================================================== */

typedef struct rpc_client rpc_client;

typedef struct rpc_client_opts {
    size_t recv_max;    /* NNG_OPT_RECVMAXSZ; 0 = AICFN_MAX_MESSAGE_BYTES */
    size_t send_max;    /* requests larger are refused locally; 0 = AICFN_MAX_MESSAGE_BYTES */
    bool background;    /* dial in the background and keep retrying (gateway -> worker);
                           false: the first dial must succeed (CLI: clear error) */
    unsigned max_async; /* in-flight rpc_call_async limit; 0 = AICFN_RPC_MAX_ASYNC */
    bool single_peer;   /* the peer is one process whose connection never comes back once
                           dropped (the gateway's link to a worker): from the drop on, every
                           call fails at once with AICFN_E_WORKER_LOST instead of waiting in
                           the socket for a reconnection until its timeout */
    bool await_listen;  /* with background: the first dial waits for rpc_client_dial (the
                           peer, a process just started, says when it listens); calls made
                           meanwhile wait in the socket */
} rpc_client_opts;

/* Opens a REQ socket dialing `url` (NNG reconnects by itself after a drop). In-flight
 * calls fail with AICFN_E_WORKER_LOST when the connection they may have been sent on
 * drops, instead of being resent on the next connection (a call started in the instant
 * between the drop and its notification may fail so without having been sent; only
 * idempotent calls may be retried). With opts->single_peer, calls started after the
 * drop's notification are refused by rpc_call_sync / rpc_call_async themselves with
 * AICFN_E_WORKER_LOST (so they were certainly not sent). `opts` may be NULL.
 * Errors: AICFN_E_INVALID (refused scheme, bad URL), AICFN_E_UNAVAILABLE (not
 * background and nobody listens), AICFN_E_NOMEM, AICFN_E_IO. Blocks for the first dial
 * unless background. The client may be shared by any number of threads. */
int rpc_client_open(rpc_client **out, const char *url, const rpc_client_opts *opts, aicfn_error *err);

/* A client on one connected stream socket (socketpair): the gateway's end of the link
 * to a worker it spawned (rpc_link.h). Takes `fd` (closed on failure too). Always
 * single-peer: when the link ends (the worker exited or closed it), the calls in flight
 * fail with AICFN_E_WORKER_LOST and later ones are refused so. An async callback runs
 * on an NNG task thread for a reply (as for a REQ client), on the link's reader thread
 * for a failure (deadline, abort, the link's end). A request is written by the calling
 * thread when the socket takes it whole, else by the link's writer thread
 * (rpc_call_async never blocks on the peer). recv_max, send_max and max_async are as for
 * rpc_client_open; rpc_client_dial does nothing. */
int rpc_client_open_link(rpc_client **out, int fd, const rpc_client_opts *opts, aicfn_error *err);

/* Starts the dial of a client opened with opts->await_listen (once; later calls and
 * other clients do nothing). Returns AICFN_OK, or the dialer's error (AICFN_E_IO,
 * AICFN_E_NOMEM); AICFN_E_CANCELED once the client is closing. Never blocks on the peer. */
int rpc_client_dial(rpc_client *c, aicfn_error *err);

/* Closes the socket; in-flight calls complete with AICFN_E_CANCELED (async callbacks
 * run before this returns). Waits for them, frees everything. NULL accepted. Must not be
 * called from an async completion callback. Blocks. An NNG close that does not return
 * within AICFN_NNG_CLOSE_BOUND_MS (common/bounded_close.h) is left, with the client, to
 * the thread closing it. */
void rpc_client_close(rpc_client *c);

/* Sends `len` bytes (copied) and waits for the reply, at most timeout_ms
 * (0 = AICFN_DEFAULT_TIMEOUT_MS) for the whole round trip. Uses its own nng_ctx, so any
 * number of threads may call at once. On AICFN_OK *reply is the reply (free it with
 * rpc_msg_free). Errors: AICFN_E_TIMEOUT, AICFN_E_WORKER_LOST (connection dropped
 * with the call in flight), AICFN_E_TOO_LARGE (over send_max), AICFN_E_CANCELED
 * (client closing), AICFN_E_NOMEM, AICFN_E_IO. Blocks. */
int rpc_call_sync(rpc_client *c, const void *req, size_t len, uint32_t timeout_ms, rpc_msg **reply,
                  aicfn_error *err);

/* Completion of an async call. status is AICFN_OK with `reply` (the callee owns it:
 * free with rpc_msg_free or forward with rpc_reply_msg), or an error with reply NULL
 * and `err` describing it (err is valid only during the callback). Runs on an NNG
 * callback thread, or for a link client's failure on the link's reader thread (which
 * then reads nothing else meanwhile): it must not block long, must not call
 * rpc_client_close, nor rpc_call_sync on the same client. */
typedef void (*rpc_done_fn)(void *user, int status, rpc_msg *reply, const aicfn_error *err);

/* Starts a call and returns at once; `done` runs exactly once when the reply arrives or
 * the call fails (timeout_ms as in rpc_call_sync). Returns AICFN_OK (done will run), or an
 * error without running done: AICFN_E_OVERLOADED (max_async calls in flight),
 * AICFN_E_TOO_LARGE, AICFN_E_CANCELED (closing), AICFN_E_NOMEM. Thread-safe. */
int rpc_call_async(rpc_client *c, const void *req, size_t len, uint32_t timeout_ms, rpc_done_fn done,
                   void *user, aicfn_error *err);

/* Calls currently in flight (sync and async). Thread-safe. */
unsigned rpc_client_inflight(rpc_client *c);

/* Fails every call in flight now with AICFN_E_WORKER_LOST, as a dropped connection
 * does, for a peer known to be gone: a request still queued for a connection that never
 * formed (or one the peer will never answer) would otherwise wait for its timeout. The
 * client stays open; later calls go out as usual. Thread-safe. */
void rpc_client_fail_inflight(rpc_client *c);

/* Fails every call in flight with AICFN_E_CANCELED and refuses every later one the same
 * way (a client whose owner is shutting down: no call may start after this returns and
 * wait for its timeout). Cannot be undone; rpc_client_close still frees it. Thread-safe. */
void rpc_client_cancel(rpc_client *c);

/* For tests: the client's socket (read options only; never close it). */
nng_socket rpc_client_socket(const rpc_client *c);

#endif
