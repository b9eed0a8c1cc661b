/* rpc_link.h: the socketpair transport of rpc.h: framed messages over one connected
 * stream socket, for the gateway's link to a worker it spawned (rpc_client_open_link on
 * the gateway's end, rpc_server_start_link on the worker's).
 *
 * Why: NNG 1.5.2 moves every message through four or five task-queue hops (about ten
 * thread switches for a request and its reply); a worker on the same host needs none of
 * its routing or reconnection. A frame read by the link's reader thread is handed to its
 * owner right there, and a frame is written by the sending thread itself whenever the
 * socket takes it whole (the common case): the link itself adds one wake-up per message
 * (its reader's), where NNG adds four or five.
 *
 * Frame: a 16-byte header, little-endian { u32 magic "AIL1", u32 body length, u64 id },
 * then the body (the same msgpack bytes an NNG message would carry). The id pairs a
 * reply with its request. A header with another magic, or a body over the link's
 * recv_max, ends the link (the stream cannot be resynchronised).
 *
 * Threads: a reader (reads frames, calls `recv` and `tick`), a writer (finishes the
 * frames the socket did not take at once, in order, so that no sender ever blocks), and
 * with takeover_ms a standby that takes the reading over from a `recv` running that long
 * (the two then swap roles; `recv` may so run on either, and on both at once). The link
 * ends on end of file, a socket error, a bad header, a writer stalled past stall_ms, or
 * rpc_link_shutdown: `end` is then called once, on the thread reading then.
 * Not for: request/reply semantics (rpc.c). */
#ifndef AICFN_COMMON_RPC_LINK_H
#define AICFN_COMMON_RPC_LINK_H

#include <nng/nng.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define RPC_LINK_MAGIC 0x314c4941u /* "AIL1" */
#define RPC_LINK_HEADER_BYTES 16

typedef struct rpc_link rpc_link;

typedef struct rpc_link_ops {
    /* A frame arrived (reader thread): `msg` (its body) is the callee's. */
    void (*recv)(void *user, uint64_t id, nng_msg *msg);
    /* The link ended (reader thread, once, after the last recv); `why` says how. */
    void (*end)(void *user, const char *why);
    /* Optional. The reader's wait timed out, or it is about to wait: returns the next
     * time (clock_now_us) it must be called, 0 for none. */
    uint64_t (*tick)(void *user, uint64_t now_us);
    void *user;
    size_t recv_max;   /* largest body accepted */
    uint32_t stall_ms; /* the writer ends the link after this long without progress (0: never) */
    size_t queue_max;  /* the reader stops reading while more than this many bytes wait to be
                          sent (a server: a peer that does not read its replies is not
                          answered without bound); 0: never stops */
    uint32_t takeover_ms; /* a standby thread takes the reading over from a `recv` that has run
                          this long (the owner may then run calls inline in `recv`: a slow
                          one holds up the frames behind it this long at most); 0: none */
    const char *name;  /* for messages */
} rpc_link_ops;

/* Takes `fd` (a connected SOCK_STREAM socket; closed by rpc_link_close, or here on
 * failure) and starts the writer and reader threads. *out is set before the reader
 * starts (a callback may already use it), and back to NULL on failure. AICFN_E_NOMEM,
 * AICFN_E_IO. */
int rpc_link_open(rpc_link **out, int fd, const rpc_link_ops *ops, aicfn_error *err);

/* Sends `msg` (taken in every case) as a frame with `id`. Written here when the socket
 * takes it whole, else queued for the writer thread: never blocks on the peer. Any
 * thread, the reader's included. *queued (may be NULL) says whether it was queued (only
 * such a frame can be cancelled). AICFN_E_UNAVAILABLE once the link ended (nothing
 * sent); AICFN_E_NOMEM. */
int rpc_link_send(rpc_link *l, uint64_t id, nng_msg *msg, bool *queued);

/* Drops the queued frame with `id` if none of it was written yet (a call given up before
 * its request left: the peer never runs it). True when dropped. Any thread. */
bool rpc_link_cancel(rpc_link *l, uint64_t id);

/* A tick is due at `when_us` (clock_now_us): wakes the reader if it would wait past
 * that (cheap otherwise: an idle reader wakes at least every second anyway). */
void rpc_link_due(rpc_link *l, uint64_t when_us);

/* Ends the link now (both directions; queued frames are dropped); `end` follows on the
 * reader thread. Any thread. */
void rpc_link_shutdown(rpc_link *l);

/* Shuts the link down, joins its threads (`end` has run when this returns), closes the
 * socket, frees everything (`end` never runs for a link whose open failed). Must not
 * be called from `recv`, `end` or `tick`. NULL accepted. */
void rpc_link_close(rpc_link *l);

#endif
