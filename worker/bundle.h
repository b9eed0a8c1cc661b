/* bundle.h: the replies of a bundle, several invocations the gateway sent in one message
 * (t:"bundle", docs/protocol.md §9). worker.c accepts each invocation like a single call;
 * each finished invocation puts its encoded reply in its slot, and whoever fills the last
 * slot sends them all, in order, as the bundle's one reply. */
#ifndef AICFN_WORKER_BUNDLE_H
#define AICFN_WORKER_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "common/rpc.h"

typedef struct worker_bundle worker_bundle;

/* A bundle of `n` slots (1..AICFN_BUNDLE_MAX_CALLS) answering `call` (request `id`).
 * The creator holds it open (so that a fast invocation finishing while the others are
 * still being accepted cannot answer the call, whose request bytes the others point
 * into) until worker_bundle_release. NULL when out of memory. */
worker_bundle *worker_bundle_new(rpc_call *call, uint64_t id, uint32_t n);

/* Slot `slot`'s reply: `reply` (malloc'd, ownership taken) of `len` bytes, or NULL when
 * it could not be encoded (the slot then gets an AICFN_E_NOMEM error reply). Each slot is
 * filled exactly once, from any thread. Filling the last one (after the release) sends
 * the bundle's reply and frees the bundle. */
void worker_bundle_put(worker_bundle *b, uint32_t slot, uint8_t *reply, size_t len);

/* Drops the creator's hold; sends the reply if every slot is filled. */
void worker_bundle_release(worker_bundle *b);

/* When the bundle's message was received (clock_now_us): each invocation's receipt. */
uint64_t worker_bundle_received_us(const worker_bundle *b);

#endif
