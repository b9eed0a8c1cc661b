/* gaveup.h: the calls this gateway sent to a worker that the worker answered without
 * running them (their deadline passed: AICFN_E_TIMEOUT), remembered for a while so that
 * a load they made and gave up on can be billed to them.
 *
 * A worker lists such a load in a later status reply (wire_unreported_load) with the
 * gateway ids of the calls of the batch that made it. The gateway bills only what it can
 * match here: a call of its own, sent to that worker, for that function version, that
 * timed out. So a worker (a remote one may be hostile) cannot charge a tenant for calls
 * the tenant never made, nor a call twice: a call is taken from the book when billed.
 * "That worker" is the gateway's record of it (gw_worker.serial), not its name: a worker
 * registered under the name of one that died cannot bill its predecessor's calls.
 * The book is a ring of the last AICFN_GW_GAVE_UP_CALLS such calls: a load reported
 * after its calls left the ring is billed to no one (logged).
 * A status reply can be handled before the timeout reply of a call it lists (they come on
 * different threads). Such a call's share is held (a second ring, as large) for
 * AICFN_GW_GAVE_UP_HOLD_MS: when the call's timeout is noted, the note hands the share
 * back to be billed then, under the same checks.
 * Not for: the billing itself (gateway.c, ledger.h gw_ledger_submit_load_charge). */
#ifndef AICFN_GATEWAY_GAVEUP_H
#define AICFN_GATEWAY_GAVEUP_H

#include <stdbool.h>
#include <stdint.h>

#include "common/tunables.h"

typedef struct gw_gaveup gw_gaveup;

/* A call as remembered. */
typedef struct gw_gaveup_call {
    uint64_t gid;     /* the gateway's id for the call (0: an empty slot) */
    uint64_t row_us;  /* wall clock: its ledger row's time */
    uint64_t sent_us; /* wall clock: when it went to the worker (no load it made is older) */
    uint64_t worker;  /* the serial of the gateway's record of the worker it went to */
    uint32_t ver;
    char fn[AICFN_FN_NAME_MAX_BYTES + 1];
} gw_gaveup_call;

/* A book of `cap` calls (0: AICFN_GW_GAVE_UP_CALLS); NULL when out of memory. */
gw_gaveup *gw_gaveup_create(uint32_t cap);
void gw_gaveup_destroy(gw_gaveup *g);

/* Notes that call c timed out at its worker, at wall clock c->row_us. When a share for
 * it is held (listed before this note; gw_gaveup_take), returns that share (> 0), taken
 * out of the book, for the caller to bill now; the call is then not remembered (it is
 * billed once). Otherwise remembers c (the oldest is forgotten when the book is full)
 * and returns 0. A function name longer than the field is not remembered (no function
 * has one). Thread-safe. */
uint64_t gw_gaveup_note(gw_gaveup *g, const gw_gaveup_call *c);

/* Takes call `gid` out of the book when it is there for that worker, function and
 * version, and timed out at most AICFN_GW_GAVE_UP_MAX_AGE_MS before now_us (wall clock):
 * true, and *out its record. (A worker that lists a load long after cannot bill it: what
 * it may claim is bounded by the time since the call.) Otherwise, when hold_share_us > 0,
 * holds that share for the call's timeout, should it be noted within
 * AICFN_GW_GAVE_UP_HOLD_MS of now_us (a share already held for the call is replaced), and
 * returns false. Thread-safe. */
bool gw_gaveup_take(gw_gaveup *g, uint64_t gid, uint64_t worker, const char *fn, uint32_t ver,
                    uint64_t now_us, uint64_t hold_share_us, gw_gaveup_call *out);

#endif
