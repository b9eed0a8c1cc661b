/* bundle.h: the replies of a bundle, several invocations the gateway sent in one message
 * (t:"bundle", docs/protocol.md §9). worker.c accepts each invocation like a single call;
 * each finished invocation puts its encoded reply in its slot, and whoever fills the last
 * slot sends them all, in order, as the bundle's one reply.
 *
 * One reply for all means the slowest invocation holds the others' replies. So that one
 * stuck past its deadline does not take them down with it (the gateway would time the
 * whole bundle out), a watch thread answers a slot still empty at its expiry with
 * AICFN_E_TIMEOUT marked `overran` (the gateway then replaces the worker, as for a call of
 * its own past its timeout), and the bundle leaves with the others' replies; the late
 * reply, when it comes, is dropped. This works for invocations that run on their
 * function's executor; one that runs on the thread that received the bundle (worker.c
 * runs there only functions known to be quick) holds the acceptance of the rest, and the
 * reply, while it runs. */
#ifndef AICFN_WORKER_BUNDLE_H
#define AICFN_WORKER_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/rpc.h"

typedef struct worker_bundle worker_bundle;
typedef struct worker_bundle_watch worker_bundle_watch;

/* The watch (one thread) of a worker's bundles. destroy: no bundle may be open; NULL is
 * accepted. */
int worker_bundle_watch_create(worker_bundle_watch **out, aicfn_error *err);
void worker_bundle_watch_destroy(worker_bundle_watch *w);

/* A bundle of `n` slots (1..AICFN_BUNDLE_MAX_CALLS) answering `call` (request `id`),
 * watched by `watch` (NULL: not watched). The creator holds it open (so that a fast
 * invocation finishing while the others are still being accepted cannot answer the
 * call) until worker_bundle_release. The request's bytes, which the invocations point
 * into, become the bundle's (rpc_call_take_request), freed once every slot was put,
 * overrun or not, so a part still running after the reply left reads valid memory.
 * NULL when out of memory. */
worker_bundle *worker_bundle_new(worker_bundle_watch *watch, rpc_call *call, uint64_t id, uint32_t n);

/* Slot `slot` (request `call_id`) is answered with an overrun at `expire_us`
 * (clock_now_us) if it is still empty then. Once per slot, before its put. */
void worker_bundle_expire_at(worker_bundle *b, uint32_t slot, uint64_t call_id, uint64_t expire_us);

/* Slot `slot`'s reply: `reply` (malloc'd, ownership taken) of `len` bytes, or NULL when
 * it could not be encoded (the slot then gets an AICFN_E_NOMEM error reply). Each slot is
 * put exactly once, from any thread (after an overrun the reply is dropped). A reply
 * that cannot fit in the bundle's message after the slots before it (room kept for those
 * after) is replaced, and freed, as soon as the slots put show it, by an AICFN_E_TOO_LARGE
 * error reply. Filling the last slot (after the release) sends the bundle's reply; the
 * bundle is freed once every slot was put and it was sent. */
void worker_bundle_put(worker_bundle *b, uint32_t slot, uint8_t *reply, size_t len);

/* Drops the creator's hold; sends the reply if every slot is filled. */
void worker_bundle_release(worker_bundle *b);

/* When the bundle's message was received (clock_now_us): each invocation's receipt.
 * While the creator holds it. */
uint64_t worker_bundle_received_us(const worker_bundle *b);

#endif
