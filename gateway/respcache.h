/* respcache.h: the gateway's response cache (design.md §2): successful replies of
 * functions deployed with `cache: {responses: true, ttl: DUR}` (meant for deterministic
 * functions), served again to identical requests for `ttl` without running anything.
 *
 * A key is the exact content of a request: the calling tenant, function name, resolved
 * version, every input (name, dtype, shape, bytes) and the raw params (gw_respcache_key
 * builds it). The tenant is part of it so that a hit never tells one tenant what another
 * sent (the reply, `cached: true`, the latency), though the outputs would match. Lookups
 * hash it with XXH3 and then compare every byte, so two different requests never share
 * an entry. Entries expire at their deadline and are evicted least recently used first
 * when the byte budget (keys + replies + bookkeeping) is short; one entry may take at
 * most an eighth of the budget (a bigger reply is simply not cached).
 *
 * Thread-safety: every function may be called from any thread; one mutex guards the
 * table, held only for the lookup and the copy of one reply.
 * Not for: deciding what may be cached (gateway.c reads the function's config) or
 * re-encoding replies (common/wire.h). */
#ifndef AICFN_GATEWAY_RESPCACHE_H
#define AICFN_GATEWAY_RESPCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/wire.h"

typedef struct gw_respcache gw_respcache;

typedef struct gw_respcache_stats {
    uint64_t hits, misses, inserts, evictions, expirations, too_large;
    uint64_t entries, bytes, max_bytes;
} gw_respcache_stats;

/* A cache holding at most `max_bytes` (> 0). */
int gw_respcache_create(uint64_t max_bytes, gw_respcache **out, aicfn_error *err);
void gw_respcache_destroy(gw_respcache *c); /* NULL is accepted */

/* The key of `req` from `tenant` (NULL: "") for version `ver` of `fn`: a malloc'd buffer
 * the caller frees, and its length. AICFN_E_NOMEM, or AICFN_E_TOO_LARGE when it would
 * exceed `max_len`. */
int gw_respcache_key(const char *tenant, const char *fn, uint32_t ver, const wire_invoke_req *req,
                     size_t max_len, uint8_t **key, size_t *key_len, aicfn_error *err);

/* On a live entry for `key`: true, *reply = a malloc'd copy of the stored reply (the
 * caller frees it) and *reply_len its length; the entry becomes the most recently used.
 * Otherwise (absent, or expired at `now_us`, which removes it) false. A copy that cannot
 * be allocated counts as a miss. */
bool gw_respcache_get(gw_respcache *c, const uint8_t *key, size_t key_len, uint64_t now_us, uint8_t **reply,
                      size_t *reply_len);

/* Stores `reply` for `key` until `expires_us` (monotonic µs), replacing an entry with the
 * same key and evicting least recently used ones as needed. Entries larger than an
 * eighth of the budget are not stored (counted as too_large). Out of memory: nothing is
 * stored. */
void gw_respcache_put(gw_respcache *c, const uint8_t *key, size_t key_len, const uint8_t *reply,
                      size_t reply_len, uint64_t expires_us);

gw_respcache_stats gw_respcache_get_stats(gw_respcache *c);

#endif
