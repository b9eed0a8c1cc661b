/* fairq.h: sharing a function's queue between tenants, as pure functions: the order of
 * service, and who gives way when it is full.
 *
 * Order (gw_fairq_place). A function's calls wait in one queue of at most
 * AICFN_DEFAULT_QUEUE_PER_FUNCTION calls, served from its head. In arrival order, a
 * tenant that sent a hundred calls at once would hold every other tenant's call back
 * behind all of them. So the queue is kept in start-time fair order: each call gets a
 * tag one past the later of the queue's clock (the tag of the last call served from it)
 * and the tag of its tenant's newest queued call, and waits behind every call with a
 * tag at most its own. Tenants with calls waiting are so served in turn, one call each
 * (round-robin), each tenant's own calls in the order they came; a tenant with none
 * waiting joins the next round at once, with no credit for the time it sent nothing.
 * Preloads (repository loads, keep-warm) take turns as a tenant of their own.
 *
 * Share (gw_fairq_victim). Without a share, one tenant sending faster than the workers serve fills it, and
 * every other tenant's call to that function is refused (AICFN_E_OVERLOADED) for as long
 * as it keeps sending. So a full queue pushes out: when a call arrives and some other
 * tenant holds at least two calls more of it than the arriving call's tenant holds now,
 * that tenant's newest queued call gives way (it is refused with AICFN_E_OVERLOADED,
 * retryable, as an arriving call would have been) and the arriving call takes its place
 * at the tail. Otherwise the arriving call is refused.
 * A tenant alone may so use the whole queue, as before; with several, a full queue ends
 * in about equal parts, so a tenant gets in while another holds two more than it does
 * (not when the queue is spread one call per tenant over as many tenants as it holds).
 * Calls a worker already holds (up to AICFN_WORKER_MAX_CALL_MSGS messages each) are
 * past the queue: neither applies to them.
 * Not for: the queue itself, locking or refusing (gateway.c). */
#ifndef AICFN_GATEWAY_FAIRQ_H
#define AICFN_GATEWAY_FAIRQ_H

#include <stddef.h>
#include <stdint.h>

/* The tenant of a queued or arriving call as fairq compares it (a 64-bit hash of the
 * tenant name; "" is a tenant like any other). */
uint64_t gw_fairq_tenant_id(const char *tenant);

/* The queue holds n calls whose tenants are tenant[0..n), in the order of service (each
 * tenant's calls in the order they came). A call of tenant `arriving` finds it full.
 * Returns the index of the queued call that gives way to it: the newest call of the
 * tenant that holds the most of the queue (of those tied, the one whose newest call is
 * served last), when that tenant is not `arriving` and holds at least
 * two calls more than `arriving` holds, so that it still holds as many after the swap.
 * Returns -1 when the arriving call is to be refused instead (and when its scratch
 * memory cannot be had). */
long gw_fairq_victim(const uint64_t *tenant, size_t n, uint64_t arriving);

/* The queue holds n calls in the order of service (index 0 is served next): tenant[i]
 * and its tag tag[i], nondecreasing. The last call served from it had tag `clock` (every
 * queued tag is at least that: calls of one round share a tag); calls that left it
 * unserved since (timed out, canceled) may have left the head's tag further on: the clock
 * is then taken as one before it. A call of tenant `arriving` joins it:
 * *tag_out gets its tag, one past the later of clock and the largest tag of arriving's queued calls, and the
 * return is the index it takes (0..n): after every call with a tag at most its own. */
size_t gw_fairq_place(const uint64_t *tenant, const uint64_t *tag, size_t n, uint64_t clock,
                      uint64_t arriving, uint64_t *tag_out);

#endif
