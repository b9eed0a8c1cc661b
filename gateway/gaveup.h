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
 * different threads). Such a call's share is held for AICFN_GW_GAVE_UP_HOLD_MS: when the
 * call's timeout is noted, the note hands the share back to be billed then, under the
 * same checks. Held shares take slots of a table as large as the ring, at most
 * AICFN_GW_GAVE_UP_HOLDS_PER_WORKER per worker (its newest), and never push out another
 * worker's: a worker listing made-up ids churns only its own.
 * A worker reached again at the address of a live record is that record (a renewal keeps
 * it): whoever holds the address answers for it, as for every reply it sends.
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
    uint64_t charged_us; /* what its row already bills (the reply's handler and cold-start shares) */
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

/* What gw_gaveup_take did with a call. */
typedef enum gw_gaveup_taken {
    GW_GAVEUP_TAKEN = 0, /* it was in the book: *out is its record, bill it now */
    GW_GAVEUP_HELD,      /* not (yet): its share is held for its timeout */
    GW_GAVEUP_NONE,      /* not, and nothing held (no share given, too late, or no room) */
} gw_gaveup_taken;

/* Takes call `gid` out of the book when it is there for that worker, function and
 * version, and timed out at most AICFN_GW_GAVE_UP_MAX_AGE_MS before now_us (wall clock):
 * GW_GAVEUP_TAKEN, and *out its record. (A worker that lists a load long after cannot
 * bill it: what it may claim is bounded by the time since the call.) A call not in the
 * book, when hold_share_us > 0, has that share held for its timeout, should it be noted
 * within AICFN_GW_GAVE_UP_HOLD_MS of now_us (a share already held for the call is
 * replaced; a worker at AICFN_GW_GAVE_UP_HOLDS_PER_WORKER gives up its oldest):
 * GW_GAVEUP_HELD, or GW_GAVEUP_NONE when the table has no free slot. Thread-safe. */
gw_gaveup_taken gw_gaveup_take(gw_gaveup *g, uint64_t gid, uint64_t worker, const char *fn, uint32_t ver,
                               uint64_t now_us, uint64_t hold_share_us, gw_gaveup_call *out);

/* What call c may be billed for a load share of `share_us` at wall clock now_us: the
 * share, capped at the time since c was sent less what its row already bills (a worker
 * claims no more time than the call spent there, in all). */
uint64_t gw_gaveup_charge(const gw_gaveup_call *c, uint64_t share_us, uint64_t now_us);

#endif
