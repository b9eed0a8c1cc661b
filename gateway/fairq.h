/* fairq.h: sharing a function's full queue between tenants, as a pure function.
 *
 * A function's calls wait in one FIFO queue of at most AICFN_DEFAULT_QUEUE_PER_FUNCTION
 * calls. Without a share, one tenant sending faster than the workers serve fills it, and
 * every other tenant's call to that function is refused (AICFN_E_OVERLOADED) for as long
 * as it keeps sending. So a full queue pushes out: when a call arrives and some other
 * tenant holds at least two calls more of it than the arriving call's tenant holds now,
 * that tenant's newest queued call gives way (it is refused with AICFN_E_OVERLOADED,
 * retryable, as an arriving call would have been) and the arriving call takes its place
 * at the tail. Otherwise the arriving call is refused.
 * A tenant alone may so use the whole queue, as before; with several, a full queue ends
 * in about equal parts, so a tenant gets in while another holds two more than it does
 * (not when the queue is spread one call per tenant over as many tenants as it holds).
 * The order of service stays first come, first served.
 * Not for: the queue itself, locking or refusing (gateway.c). */
#ifndef AICFN_GATEWAY_FAIRQ_H
#define AICFN_GATEWAY_FAIRQ_H

#include <stddef.h>
#include <stdint.h>

/* The tenant of a queued or arriving call as fairq compares it (a 64-bit hash of the
 * tenant name; "" is a tenant like any other). */
uint64_t gw_fairq_tenant_id(const char *tenant);

/* The queue holds n calls whose tenants are tenant[0..n), oldest first. A call of tenant
 * `arriving` finds it full. Returns the index of the queued call that gives way to it:
 * the newest call of the tenant that holds the most of the queue (of those tied, the one
 * whose newest call is newest), when that tenant is not `arriving` and holds at least
 * two calls more than `arriving` holds, so that it still holds as many after the swap.
 * Returns -1 when the arriving call is to be refused instead (and when its scratch
 * memory cannot be had). */
long gw_fairq_victim(const uint64_t *tenant, size_t n, uint64_t arriving);

#endif
