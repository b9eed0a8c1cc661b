/* keys.h: tenants' API keys (create, authenticate, list, revoke) stored as hashes in
 * aicfn.db, and the per-tenant rate limit (token bucket) and daily quota.
 *
 * A key reads `aicfn_<keyid>_<secret>`: keyid is 12 lowercase hex characters (6 random
 * bytes, public: it names the key in lists and logs), secret is 64 lowercase hex
 * characters (32 bytes from randombytes_buf). Only BLAKE2b-256 (crypto_generichash,
 * keyed with a fixed domain-separation key) of the secret's bytes is stored. A fast
 * hash is the right tool here: a password hash (argon2) is slow on purpose to make
 * guessing low-entropy human passwords expensive, but a 256-bit random secret cannot be
 * guessed at any hash speed, and the check runs on every request. The stored and
 * computed hashes are compared with sodium_memcmp (constant time). The plaintext
 * secret exists only in the string gw_keys_create returns, once.
 *
 * Not for: deciding what a role may do (the fronts check it).
 *
 * Thread-safety: the gw_db functions lock the handle per call. A gw_limits may be used
 * from any thread (one mutex; each check is O(1)). */
#ifndef AICFN_GATEWAY_KEYS_H
#define AICFN_GATEWAY_KEYS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/tunables.h"
#include "gateway/db.h"

#define GW_KEY_ID_LEN 12
#define GW_KEY_SECRET_HEX_LEN 64
/* "aicfn_" + id + "_" + secret + NUL */
#define GW_KEY_STRING_LEN (6 + GW_KEY_ID_LEN + 1 + GW_KEY_SECRET_HEX_LEN)
#define GW_KEY_STRING_MAX (GW_KEY_STRING_LEN + 1)

/* What a key is for. The fronts decide what each may do: a tenant's key invokes (its
 * tenant is charged) and reads status; an admin key may do everything; a worker key is a
 * remote worker's (`aicfn worker --gateway --key`): it registers its worker, fetches
 * artifacts and reads status, and nothing else, so a compromised GPU host holds no key
 * that deploys code or makes calls. (The workers it registers do receive calls: it is a
 * secret of the GPU fleet.) */
typedef enum { GW_KEY_TENANT = 0, GW_KEY_ADMIN = 1, GW_KEY_WORKER = 2 } gw_key_role;

/* "tenant", "admin", "worker". */
const char *gw_key_role_name(gw_key_role role);

/* A key's record, without any secret. */
typedef struct gw_key_info {
    char key_id[GW_KEY_ID_LEN + 1];
    char tenant[AICFN_TENANT_MAX_BYTES + 1];
    gw_key_role role;
    uint32_t rate_per_s;    /* 0 = unlimited */
    uint64_t quota_per_day; /* 0 = unlimited */
    uint64_t created_us;
    uint64_t revoked_us; /* 0 = active */
} gw_key_info;

/* True when `tenant` is 1..AICFN_TENANT_MAX_BYTES bytes of [A-Za-z0-9_.@-]. */
bool gw_tenant_name_valid(const char *tenant);

/* Creates a key for `tenant`. Writes the full key string (GW_KEY_STRING_LEN chars +
 * NUL) into key_out: show it to the user once, it cannot be recovered. info_out (may be
 * NULL) gets the stored record. AICFN_E_INVALID for a bad tenant name or role; AICFN_E_DB. */
int gw_keys_create(gw_db *db, const char *tenant, gw_key_role role, uint32_t rate_per_s,
                   uint64_t quota_per_day, char key_out[GW_KEY_STRING_MAX], gw_key_info *info_out,
                   aicfn_error *err);

/* Checks a presented key: parses it, looks its id up, hashes the secret and compares in
 * constant time. AICFN_OK with *out filled; AICFN_E_UNAUTHENTICATED for a malformed,
 * unknown, wrong or revoked key (the message says which, never echoing the secret). */
int gw_keys_authenticate(gw_db *db, const char *key, gw_key_info *out, aicfn_error *err);

/* The BLAKE2b digest (GW_KEY_DIGEST_BYTES) by which a key string is remembered without
 * keeping it: the key cache's entries, the key that opened an upload. */
#define GW_KEY_DIGEST_BYTES 32
void gw_key_digest(const char *key, unsigned char out[GW_KEY_DIGEST_BYTES]);

/* A front's cache of recent successful authentications, so a call does not read SQLite
 * (GW_KEY_CACHE_ENTRIES keys, each trusted for GW_KEY_CACHE_TTL_US: a revoked key keeps
 * working that long). Entries hold the BLAKE2b digest of the key string, compared in
 * constant time, never the key. Thread-safe. The NNG front uses one; the HTTP front
 * reads the database per request, so a revocation is seen at once there. */
typedef struct gw_key_cache gw_key_cache;
#define GW_KEY_CACHE_ENTRIES 64
#define GW_KEY_CACHE_TTL_US (5ull * 1000 * 1000)
int gw_key_cache_create(gw_key_cache **out, aicfn_error *err);
void gw_key_cache_destroy(gw_key_cache *c); /* NULL is accepted */

/* gw_keys_authenticate through the cache: a hit answers at once; a miss reads db and
 * caches a success (failures are not cached). */
int gw_key_cache_authenticate(gw_key_cache *c, gw_db *db, const char *key, gw_key_info *out,
                              aicfn_error *err);

/* Every key (active and revoked), sorted by tenant then creation, in a new malloc'd
 * array (caller frees; NULL/0 when none). */
int gw_keys_list(gw_db *db, gw_key_info **out, size_t *n, aicfn_error *err);

/* Whether key `key_id` (its id) exists and is not revoked: *active. A read of db. */
int gw_keys_is_active(gw_db *db, const char *key_id, bool *active, aicfn_error *err);

/* Revokes key `key_id` (its id, or a full key string). AICFN_E_NOT_FOUND when absent;
 * revoking a revoked key is AICFN_OK and keeps the first revocation time. */
int gw_keys_revoke(gw_db *db, const char *key_id, aicfn_error *err);

/* Number of active admin keys (for bootstrapping the first admin). */
int gw_keys_count_admins(gw_db *db, uint64_t *out, aicfn_error *err);

/* [{"key_id","tenant","role","admin","rate_per_s","quota_per_day","created_us","revoked_us"}]
 * ("admin": role is admin, kept for readers of the older form).
 * New reference or NULL. */
json_t *gw_keys_to_json(const gw_key_info *k, size_t n);

/* ---- Rate limit and daily quota -------------------------------------------------- */

typedef struct gw_limits gw_limits;

int gw_limits_create(gw_limits **out, aicfn_error *err);
void gw_limits_destroy(gw_limits *l); /* NULL accepted */

/* Admits one call of `tenant` at monotonic time mono_us (clock_now_us) and wall time
 * wall_us (µs since the epoch):
 *  - daily quota: at most quota_per_day admitted calls per UTC day of wall_us (0 =
 *    unlimited); the day only moves forward, so a wall clock stepping back across
 *    midnight does not grant a second day;
 *  - rate: a token bucket of capacity max(rate_per_s, 1), refilled at rate_per_s tokens
 *    per second of mono_us (0 = unlimited), so wall clock steps neither stall nor
 *    speed it; each call takes one token.
 * AICFN_OK (the call is counted), or AICFN_E_QUOTA with *retry_after_s (>= 1) set to the
 * seconds until a token is back (rate) or until the next UTC midnight (quota), and a
 * message naming the tenant and which limit. */
int gw_limits_check(gw_limits *l, const char *tenant, uint32_t rate_per_s, uint64_t quota_per_day,
                    uint64_t mono_us, uint64_t wall_us, uint32_t *retry_after_s, aicfn_error *err);

/* Undoes one gw_limits_check that admitted a call of `tenant` (with these limits) which
 * then never reached the gateway for the gateway's own reason (its buffers full, it is
 * stopping) or because its client left before its body: the token goes back to the
 * bucket (up to its capacity) and the call out of the day's count (if still that day). */
void gw_limits_refund(gw_limits *l, const char *tenant, uint32_t rate_per_s, uint64_t wall_us);

/* Whether a refusal of `tenant`'s call over its limits (AICFN_E_QUOTA) at monotonic
 * mono_us gets its ledger row: true at most AICFN_GW_REFUSED_ROWS_PER_S times a second
 * per tenant (a bucket of that many). *unrecorded (may be NULL): the tenant's refusals
 * not recorded since they were last reported, when this one is recorded and they were
 * last reported at least AICFN_GW_REFUSED_REPORT_MS before (0 otherwise), so the caller
 * can say how many went unwritten without a line per row. */
bool gw_limits_refusal_recorded(gw_limits *l, const char *tenant, uint64_t mono_us, uint64_t *unrecorded);

/* Sets tenant's count of calls already admitted on the UTC day of now_us (seeding from
 * the ledger at start, so a restart does not reset quotas). */
void gw_limits_seed(gw_limits *l, const char *tenant, uint64_t calls_today, uint64_t now_us);

/* Seeds every tenant from the ledger's invocations since the start of now_us's UTC day. */
int gw_limits_seed_from_ledger(gw_limits *l, gw_db *db, uint64_t now_us, aicfn_error *err);

#endif
