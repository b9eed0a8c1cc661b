/* keys.c: API keys stored as hashes (create, authenticate, list, revoke), and the
 * in-memory per-tenant token bucket and daily quota.
 *
 * Not for: the transport of keys (the fronts read them from requests). */
#include "gateway/keys.h"

#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "gateway/ledger.h"

/* Domain separation for the stored hash: exactly crypto_generichash_KEYBYTES_MIN (16). */
static const unsigned char key_hash_domain[16] = {'a', 'i', 'c', 'f', 'n', '-', 'a', 'p',
                                                  'i', '-', 'k', 'e', 'y', '-', 'v', '1'};

#define KEY_US_PER_DAY (86400ull * 1000000ull)

bool gw_tenant_name_valid(const char *t) {
    if (!t || !t[0]) return false;
    size_t n = strlen(t);
    if (n > AICFN_TENANT_MAX_BYTES) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!(isalnum(c) || c == '_' || c == '.' || c == '@' || c == '-')) return false;
    }
    return true;
}

static bool key_is_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

static void key_hash(const unsigned char secret[32], unsigned char out[32]) {
    crypto_generichash(out, 32, secret, 32, key_hash_domain, sizeof key_hash_domain);
}

static void key_row(sqlite3_stmt *st, gw_key_info *k) {
    memset(k, 0, sizeof *k);
    gw_db_column_text(st, 0, k->key_id, sizeof k->key_id);
    gw_db_column_text(st, 1, k->tenant, sizeof k->tenant);
    k->role = sqlite3_column_int(st, 2) != 0   ? GW_KEY_ADMIN
              : sqlite3_column_int(st, 7) != 0 ? GW_KEY_WORKER
                                               : GW_KEY_TENANT;
    k->rate_per_s = (uint32_t)sqlite3_column_int64(st, 3);
    k->quota_per_day = (uint64_t)sqlite3_column_int64(st, 4);
    k->created_us = (uint64_t)sqlite3_column_int64(st, 5);
    k->revoked_us = (uint64_t)sqlite3_column_int64(st, 6);
}

const char *gw_key_role_name(gw_key_role role) {
    switch (role) {
    case GW_KEY_TENANT:
        return "tenant";
    case GW_KEY_ADMIN:
        return "admin";
    case GW_KEY_WORKER:
        return "worker";
    }
    return "unknown";
}

int gw_keys_create(gw_db *db, const char *tenant, gw_key_role role, uint32_t rate_per_s,
                   uint64_t quota_per_day, char key_out[GW_KEY_STRING_MAX], gw_key_info *info_out,
                   aicfn_error *err) {
    key_out[0] = '\0';
    if (!gw_tenant_name_valid(tenant))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "invalid tenant name (want 1..%d bytes of [A-Za-z0-9_.@-])",
                               AICFN_TENANT_MAX_BYTES);
    if (quota_per_day > INT64_MAX) return aicfn_error_set(err, AICFN_E_INVALID, "quota out of range");
    if (role != GW_KEY_TENANT && role != GW_KEY_ADMIN && role != GW_KEY_WORKER)
        return aicfn_error_set(err, AICFN_E_INVALID, "unknown key role %d", (int)role);
    if (sodium_init() < 0) return aicfn_error_set(err, AICFN_E_INTERNAL, "libsodium failed to initialize");
    unsigned char id[GW_KEY_ID_LEN / 2], secret[32], hash[32];
    char id_hex[GW_KEY_ID_LEN + 1], secret_hex[GW_KEY_SECRET_HEX_LEN + 1];
    uint64_t now = clock_wall_us();
    int rc = AICFN_E_INTERNAL;
    gw_db_lock(db);
    /* A 48-bit random id collides with negligible probability; retry a few times anyway. */
    for (int attempt = 0; attempt < 4; attempt++) {
        randombytes_buf(id, sizeof id);
        randombytes_buf(secret, sizeof secret);
        sodium_bin2hex(id_hex, sizeof id_hex, id, sizeof id);
        sodium_bin2hex(secret_hex, sizeof secret_hex, secret, sizeof secret);
        key_hash(secret, hash);
        sqlite3_stmt *st = NULL;
        rc = gw_db_stmt(db,
                        "INSERT INTO tenants(key_id, tenant, key_hash, admin, rate_per_s, quota_per_day, "
                        "created_us, revoked_us, worker) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
                        &st, err);
        if (rc) break;
        gw_db_bind_text(st, 1, id_hex);
        gw_db_bind_text(st, 2, tenant);
        sqlite3_bind_blob(st, 3, hash, sizeof hash, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 4, role == GW_KEY_ADMIN);
        sqlite3_bind_int64(st, 5, rate_per_s);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)quota_per_day);
        sqlite3_bind_int64(st, 7, (sqlite3_int64)now);
        sqlite3_bind_int(st, 8, role == GW_KEY_WORKER);
        int s = sqlite3_step(st);
        rc = s == SQLITE_DONE ? AICFN_OK : gw_db_error(db, s, err, "creating a key");
        gw_db_done(st);
        if (rc != AICFN_E_EXISTS) break;
    }
    gw_db_unlock(db);
    if (!rc) {
        snprintf(key_out, GW_KEY_STRING_MAX, "aicfn_%s_%s", id_hex, secret_hex);
        if (info_out) {
            memset(info_out, 0, sizeof *info_out);
            memcpy(info_out->key_id, id_hex, sizeof info_out->key_id);
            snprintf(info_out->tenant, sizeof info_out->tenant, "%s", tenant);
            info_out->role = role;
            info_out->rate_per_s = rate_per_s;
            info_out->quota_per_day = quota_per_day;
            info_out->created_us = now;
        }
    }
    sodium_memzero(secret, sizeof secret);
    sodium_memzero(secret_hex, sizeof secret_hex);
    return rc;
}

int gw_keys_authenticate(gw_db *db, const char *key, gw_key_info *out, aicfn_error *err) {
    memset(out, 0, sizeof *out);
    if (!key || strnlen(key, GW_KEY_STRING_LEN + 1) != GW_KEY_STRING_LEN || strncmp(key, "aicfn_", 6) != 0 ||
        key[6 + GW_KEY_ID_LEN] != '_' || !key_is_hex(key + 6, GW_KEY_ID_LEN) ||
        !key_is_hex(key + 7 + GW_KEY_ID_LEN, GW_KEY_SECRET_HEX_LEN))
        return aicfn_error_set(err, AICFN_E_UNAUTHENTICATED, "malformed API key (want aicfn_<id>_<secret>)");
    if (sodium_init() < 0) return aicfn_error_set(err, AICFN_E_INTERNAL, "libsodium failed to initialize");
    char id[GW_KEY_ID_LEN + 1];
    memcpy(id, key + 6, GW_KEY_ID_LEN);
    id[GW_KEY_ID_LEN] = '\0';
    unsigned char secret[32], hash[32], stored[32];
    size_t bin_len = 0;
    if (sodium_hex2bin(secret, sizeof secret, key + 7 + GW_KEY_ID_LEN, GW_KEY_SECRET_HEX_LEN, NULL, &bin_len,
                       NULL) != 0 ||
        bin_len != sizeof secret)
        return aicfn_error_set(err, AICFN_E_UNAUTHENTICATED, "malformed API key");
    key_hash(secret, hash);
    sodium_memzero(secret, sizeof secret);

    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(
        db,
        "SELECT key_id, tenant, admin, rate_per_s, quota_per_day, created_us, revoked_us, worker, key_hash "
        "FROM tenants WHERE key_id = ?1",
        &st, err);
    bool found = false;
    if (!rc) {
        gw_db_bind_text(st, 1, id);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW && sqlite3_column_bytes(st, 8) == 32) {
            key_row(st, out);
            memcpy(stored, sqlite3_column_blob(st, 8), 32);
            found = true;
        } else if (s != SQLITE_ROW && s != SQLITE_DONE) {
            rc = gw_db_error(db, s, err, "looking up a key");
        }
        gw_db_done(st);
    }
    gw_db_unlock(db);
    if (rc) return rc;
    if (!found) {
        memset(out, 0, sizeof *out);
        return aicfn_error_set(err, AICFN_E_UNAUTHENTICATED, "unknown API key %s", id);
    }
    if (sodium_memcmp(hash, stored, sizeof hash) != 0) {
        memset(out, 0, sizeof *out);
        return aicfn_error_set(err, AICFN_E_UNAUTHENTICATED, "wrong secret for API key %s", id);
    }
    if (out->revoked_us) {
        memset(out, 0, sizeof *out);
        return aicfn_error_set(err, AICFN_E_UNAUTHENTICATED, "API key %s is revoked", id);
    }
    return AICFN_OK;
}

static int key_fill(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    (void)arg;
    (void)err;
    key_row(st, elem);
    return AICFN_OK;
}

int gw_keys_list(gw_db *db, gw_key_info **out, size_t *n, aicfn_error *err) {
    *out = NULL;
    *n = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc =
        gw_db_stmt(db,
                   "SELECT key_id, tenant, admin, rate_per_s, quota_per_day, created_us, revoked_us, worker "
                   "FROM tenants ORDER BY tenant, created_us, key_id",
                   &st, err);
    void *arr = NULL;
    size_t cnt = 0, cap = 0;
    if (!rc)
        rc =
            gw_db_collect(db, st, sizeof(gw_key_info), key_fill, NULL, &arr, &cnt, &cap, "listing keys", err);
    gw_db_unlock(db);
    if (rc) {
        free(arr);
        return rc;
    }
    *out = arr;
    *n = cnt;
    return AICFN_OK;
}

int gw_keys_is_active(gw_db *db, const char *key_id, bool *active, aicfn_error *err) {
    *active = false;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db, "SELECT revoked_us IS NULL FROM tenants WHERE key_id = ?1", &st, err);
    if (!rc) {
        gw_db_bind_text(st, 1, key_id);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW)
            *active = sqlite3_column_int(st, 0) != 0;
        else if (s != SQLITE_DONE)
            rc = gw_db_error(db, s, err, "reading a key");
        gw_db_done(st);
    }
    gw_db_unlock(db);
    return rc;
}

int gw_keys_revoke(gw_db *db, const char *key_id, aicfn_error *err) {
    char id[GW_KEY_ID_LEN + 1];
    if (key_id && strncmp(key_id, "aicfn_", 6) == 0) key_id += 6; /* a full key string */
    if (!key_id || strnlen(key_id, GW_KEY_ID_LEN + 1) < GW_KEY_ID_LEN || !key_is_hex(key_id, GW_KEY_ID_LEN) ||
        (key_id[GW_KEY_ID_LEN] != '\0' && key_id[GW_KEY_ID_LEN] != '_'))
        return aicfn_error_set(err, AICFN_E_INVALID, "invalid key id (want %d lowercase hex characters)",
                               GW_KEY_ID_LEN);
    memcpy(id, key_id, GW_KEY_ID_LEN);
    id[GW_KEY_ID_LEN] = '\0';
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db, "UPDATE tenants SET revoked_us = coalesce(revoked_us, ?2) WHERE key_id = ?1", &st,
                        err);
    if (!rc) {
        gw_db_bind_text(st, 1, id);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)clock_wall_us());
        int s = sqlite3_step(st);
        if (s != SQLITE_DONE)
            rc = gw_db_error(db, s, err, "revoking a key");
        else if (sqlite3_changes(gw_db_sqlite(db)) == 0)
            rc = aicfn_error_set(err, AICFN_E_NOT_FOUND, "API key %s not found", id);
        gw_db_done(st);
    }
    gw_db_unlock(db);
    return rc;
}

int gw_keys_count_admins(gw_db *db, uint64_t *out, aicfn_error *err) {
    *out = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db, "SELECT count(*) FROM tenants WHERE admin = 1 AND revoked_us IS NULL", &st, err);
    if (!rc) {
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW)
            *out = (uint64_t)sqlite3_column_int64(st, 0);
        else
            rc = gw_db_error(db, s, err, "counting admin keys");
        gw_db_done(st);
    }
    gw_db_unlock(db);
    return rc;
}

json_t *gw_keys_to_json(const gw_key_info *k, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I}", "key_id", k[i].key_id, "tenant",
                              k[i].tenant, "role", gw_key_role_name(k[i].role), "admin",
                              k[i].role == GW_KEY_ADMIN, "rate_per_s", (json_int_t)k[i].rate_per_s,
                              "quota_per_day", (json_int_t)k[i].quota_per_day, "created_us",
                              (json_int_t)k[i].created_us, "revoked_us", (json_int_t)k[i].revoked_us);
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* ---- Limits --------------------------------------------------------------------- */

#define LIM_BUCKETS 256
#define LIM_TOKEN 1000000ull /* one call = 1e6 micro-tokens */

typedef struct lim_entry {
    struct lim_entry *next;
    uint64_t micro_tokens; /* available, in 1e-6 tokens */
    uint64_t last_us;      /* last refill */
    uint64_t day;          /* UTC day number of `used` */
    uint64_t used;         /* calls admitted on `day` */
    bool fresh;            /* bucket not yet initialized */
    uint64_t refusal_rows; /* micro-tokens of refusal rows (gw_limits_refusal_recorded) */
    uint64_t refusal_last_us; /* their last refill; 0: never */
    uint64_t unrecorded;      /* refusals without a row, not yet reported */
    uint64_t reported_us;     /* when they were last reported (0: never) */
    char tenant[];
} lim_entry;

struct gw_limits {
    pthread_mutex_t mu;
    lim_entry *buckets[LIM_BUCKETS];
};

int gw_limits_create(gw_limits **out, aicfn_error *err) {
    gw_limits *l = calloc(1, sizeof *l);
    if (!l) return aicfn_error_set(err, AICFN_E_NOMEM, "allocating rate limits");
    pthread_mutex_init(&l->mu, NULL);
    *out = l;
    return AICFN_OK;
}

void gw_limits_destroy(gw_limits *l) {
    if (!l) return;
    for (int i = 0; i < LIM_BUCKETS; i++) {
        lim_entry *e = l->buckets[i];
        while (e) {
            lim_entry *n = e->next;
            free(e);
            e = n;
        }
    }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static unsigned lim_hash(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % LIM_BUCKETS;
}

/* Finds or adds the entry of `tenant`; NULL when out of memory. Lock held. */
static lim_entry *lim_get(gw_limits *l, const char *tenant) {
    unsigned h = lim_hash(tenant);
    for (lim_entry *e = l->buckets[h]; e; e = e->next)
        if (strcmp(e->tenant, tenant) == 0) return e;
    size_t n = strlen(tenant) + 1;
    lim_entry *e = calloc(1, sizeof *e + n);
    if (!e) return NULL;
    memcpy(e->tenant, tenant, n);
    e->fresh = true;
    e->next = l->buckets[h];
    l->buckets[h] = e;
    return e;
}

int gw_limits_check(gw_limits *l, const char *tenant, uint32_t rate_per_s, uint64_t quota_per_day,
                    uint64_t mono_us, uint64_t wall_us, uint32_t *retry_after_s, aicfn_error *err) {
    *retry_after_s = 0;
    pthread_mutex_lock(&l->mu);
    lim_entry *e = lim_get(l, tenant);
    if (!e) {
        pthread_mutex_unlock(&l->mu);
        return aicfn_error_set(err, AICFN_E_NOMEM, "rate limit entry for %.64s", tenant);
    }
    /* The tenant's bucket belongs to its rated keys: a call through a key without a rate
     * (counted for the daily total below) neither refills nor drains it. */
    uint64_t cap = (uint64_t)rate_per_s * LIM_TOKEN;
    if (rate_per_s && e->fresh) {
        e->micro_tokens = cap;
        e->last_us = mono_us;
        e->fresh = false;
    } else if (rate_per_s && mono_us > e->last_us) {
        uint64_t elapsed = mono_us - e->last_us;
        /* elapsed µs × rate tokens/s = elapsed × rate micro-tokens; saturate at the cap.
         * A second refills the whole bucket, which also keeps the product in range. */
        if (elapsed < LIM_TOKEN) {
            uint64_t add = elapsed * rate_per_s;
            e->micro_tokens = cap - e->micro_tokens <= add ? cap : e->micro_tokens + add;
        } else {
            e->micro_tokens = cap;
        }
        e->last_us = mono_us;
    }
    if (rate_per_s && e->micro_tokens > cap) e->micro_tokens = cap; /* the rate was lowered */
    uint64_t day = wall_us / KEY_US_PER_DAY;
    if (day > e->day) {
        e->day = day;
        e->used = 0;
    }
    int rc = AICFN_OK;
    if (quota_per_day && e->used >= quota_per_day) {
        uint64_t next_day_us = (e->day + 1) * KEY_US_PER_DAY;
        uint64_t left_us = next_day_us > wall_us ? next_day_us - wall_us : 0;
        uint64_t s = (left_us + 999999) / 1000000;
        *retry_after_s = (uint32_t)(s ? s : 1);
        rc = aicfn_error_set(err, AICFN_E_QUOTA,
                             "tenant %.64s used its daily quota of %llu calls; retry in %u s", tenant,
                             (unsigned long long)quota_per_day, *retry_after_s);
    } else if (rate_per_s && e->micro_tokens < LIM_TOKEN) {
        uint64_t need = LIM_TOKEN - e->micro_tokens;             /* micro-tokens */
        uint64_t wait_us = (need + rate_per_s - 1) / rate_per_s; /* µs at rate micro-tokens per µs */
        uint64_t s = (wait_us + 999999) / 1000000;
        *retry_after_s = (uint32_t)(s ? s : 1);
        rc = aicfn_error_set(err, AICFN_E_QUOTA, "tenant %.64s is over its rate of %u calls/s; retry in %u s",
                             tenant, rate_per_s, *retry_after_s);
    } else {
        if (rate_per_s) e->micro_tokens -= LIM_TOKEN;
        e->used++;
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void gw_limits_refund(gw_limits *l, const char *tenant, uint32_t rate_per_s, uint64_t wall_us) {
    pthread_mutex_lock(&l->mu);
    lim_entry *e = lim_get(l, tenant);
    if (e) {
        uint64_t cap = (uint64_t)rate_per_s * LIM_TOKEN;
        if (rate_per_s && !e->fresh)
            e->micro_tokens = cap - e->micro_tokens <= LIM_TOKEN ? cap : e->micro_tokens + LIM_TOKEN;
        if (e->used > 0 && wall_us / KEY_US_PER_DAY == e->day) e->used--;
    }
    pthread_mutex_unlock(&l->mu);
}

bool gw_limits_refusal_recorded(gw_limits *l, const char *tenant, uint64_t mono_us, uint64_t *unrecorded) {
    if (unrecorded) *unrecorded = 0;
    const uint64_t cap = (uint64_t)AICFN_GW_REFUSED_ROWS_PER_S * LIM_TOKEN;
    pthread_mutex_lock(&l->mu);
    lim_entry *e = lim_get(l, tenant);
    if (!e) { /* out of memory: the row is written (the bound is not kept for it) */
        pthread_mutex_unlock(&l->mu);
        return true;
    }
    if (e->refusal_last_us == 0) {
        e->refusal_rows = cap;
        e->refusal_last_us = mono_us;
    } else if (mono_us > e->refusal_last_us) { /* as lim's rate bucket: a second refills it */
        uint64_t elapsed = mono_us - e->refusal_last_us;
        uint64_t add = elapsed < LIM_TOKEN ? elapsed * AICFN_GW_REFUSED_ROWS_PER_S : cap;
        e->refusal_rows = cap - e->refusal_rows <= add ? cap : e->refusal_rows + add;
        e->refusal_last_us = mono_us;
    }
    bool recorded = e->refusal_rows >= LIM_TOKEN;
    if (recorded) {
        e->refusal_rows -= LIM_TOKEN;
        /* Reported at most every AICFN_GW_REFUSED_REPORT_MS: a steady flood is one line a while. */
        if (e->unrecorded &&
            (e->reported_us == 0 || mono_us - e->reported_us >= AICFN_GW_REFUSED_REPORT_MS * 1000ull)) {
            if (unrecorded) *unrecorded = e->unrecorded;
            e->unrecorded = 0;
            e->reported_us = mono_us;
        }
    } else {
        e->unrecorded++;
    }
    pthread_mutex_unlock(&l->mu);
    return recorded;
}

void gw_limits_seed(gw_limits *l, const char *tenant, uint64_t calls_today, uint64_t now_us) {
    pthread_mutex_lock(&l->mu);
    lim_entry *e = lim_get(l, tenant);
    if (e) {
        e->day = now_us / KEY_US_PER_DAY;
        e->used = calls_today;
    }
    pthread_mutex_unlock(&l->mu);
}

typedef struct lim_seed_ctx {
    gw_limits *l;
    uint64_t now_us;
} lim_seed_ctx;

static void lim_seed_one(const char *tenant, uint64_t count, void *ctx) {
    lim_seed_ctx *c = ctx;
    if (tenant) gw_limits_seed(c->l, tenant, count, c->now_us);
}

int gw_limits_seed_from_ledger(gw_limits *l, gw_db *db, uint64_t now_us, aicfn_error *err) {
    lim_seed_ctx c = {l, now_us};
    uint64_t day_start = now_us / KEY_US_PER_DAY * KEY_US_PER_DAY;
    return gw_ledger_count_by_tenant(db, day_start, lim_seed_one, &c, err);
}

/* ---- The fronts' authentication cache ---- */

typedef struct key_cache_slot {
    unsigned char digest[GW_KEY_DIGEST_BYTES]; /* BLAKE2b of the key string */
    gw_key_info info;
    uint64_t until_us; /* 0: empty */
} key_cache_slot;

struct gw_key_cache {
    pthread_mutex_t mu;
    key_cache_slot slots[GW_KEY_CACHE_ENTRIES];
    unsigned next;
};

int gw_key_cache_create(gw_key_cache **out, aicfn_error *err) {
    *out = NULL;
    if (sodium_init() < 0) return aicfn_error_set(err, AICFN_E_INTERNAL, "libsodium failed to initialize");
    gw_key_cache *c = calloc(1, sizeof *c);
    if (!c) return aicfn_error_set(err, AICFN_E_NOMEM, "key cache: out of memory");
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return AICFN_OK;
}

void gw_key_cache_destroy(gw_key_cache *c) {
    if (!c) return;
    pthread_mutex_destroy(&c->mu);
    sodium_memzero(c->slots, sizeof c->slots);
    free(c);
}

void gw_key_digest(const char *key, unsigned char out[GW_KEY_DIGEST_BYTES]) {
    crypto_generichash(out, GW_KEY_DIGEST_BYTES, (const unsigned char *)key, strlen(key), NULL, 0);
}

int gw_key_cache_authenticate(gw_key_cache *c, gw_db *db, const char *key, gw_key_info *out,
                              aicfn_error *err) {
    unsigned char digest[GW_KEY_DIGEST_BYTES];
    gw_key_digest(key, digest);
    uint64_t now = clock_now_us();
    pthread_mutex_lock(&c->mu);
    for (unsigned i = 0; i < GW_KEY_CACHE_ENTRIES; i++)
        if (c->slots[i].until_us > now && sodium_memcmp(c->slots[i].digest, digest, sizeof digest) == 0) {
            *out = c->slots[i].info;
            pthread_mutex_unlock(&c->mu);
            return AICFN_OK;
        }
    pthread_mutex_unlock(&c->mu);
    int rc = gw_keys_authenticate(db, key, out, err);
    if (rc != AICFN_OK) return rc;
    pthread_mutex_lock(&c->mu);
    key_cache_slot *slot = &c->slots[c->next++ % GW_KEY_CACHE_ENTRIES];
    memcpy(slot->digest, digest, sizeof digest);
    slot->info = *out;
    slot->until_us = now + GW_KEY_CACHE_TTL_US;
    pthread_mutex_unlock(&c->mu);
    return AICFN_OK;
}
