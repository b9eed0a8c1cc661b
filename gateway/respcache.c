/* respcache.c: the response cache (respcache.h): a chained hash table of entries on
 * XXH3 of the key, seeded at random per cache (keys hold callers' input bytes: unseeded,
 * a caller could precompute colliding inputs and grow one bucket's chain, walked under
 * the cache's lock), with an LRU list and a byte budget.
 * Not for: what may be cached, or reply formats (gateway.c, common/wire.h). */
#include "gateway/respcache.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define RC_MIN_BUCKETS 64

typedef struct rc_entry {
    struct rc_entry *chain;       /* next in the bucket */
    struct rc_entry *prev, *next; /* LRU list: head = most recent */
    uint64_t hash, expires_us;
    size_t key_len, reply_len;
    unsigned char data[]; /* key, then reply */
} rc_entry;

struct gw_respcache {
    pthread_mutex_t mu;
    rc_entry **buckets;
    size_t n_buckets; /* a power of two */
    uint64_t seed;
    rc_entry *head, *tail;
    gw_respcache_stats st;
};

static size_t rc_cost(size_t key_len, size_t reply_len) {
    return sizeof(rc_entry) + key_len + reply_len;
}

int gw_respcache_create(uint64_t max_bytes, gw_respcache **out, aicfn_error *err) {
    *out = NULL;
    if (max_bytes == 0) return aicfn_error_set(err, AICFN_E_INVALID, "response cache: a budget of 0 bytes");
    gw_respcache *c = calloc(1, sizeof *c);
    if (c) c->buckets = calloc(RC_MIN_BUCKETS, sizeof *c->buckets);
    if (!c || !c->buckets) {
        free(c);
        return aicfn_error_set(err, AICFN_E_NOMEM, "response cache");
    }
    c->n_buckets = RC_MIN_BUCKETS;
    c->st.max_bytes = max_bytes;
    if (sodium_init() < 0) {
        free(c->buckets);
        free(c);
        return aicfn_error_set(err, AICFN_E_INTERNAL, "response cache: libsodium failed to initialize");
    }
    randombytes_buf(&c->seed, sizeof c->seed);
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return AICFN_OK;
}

void gw_respcache_destroy(gw_respcache *c) {
    if (!c) return;
    for (rc_entry *e = c->head, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* ---- Keys ----------------------------------------------------------------------- */

typedef struct rc_keybuf {
    uint8_t *p;
    size_t len, cap, max;
    bool over;
} rc_keybuf;

static void rc_put(rc_keybuf *b, const void *src, size_t n) {
    if (b->over || n > b->max - b->len) {
        b->over = true;
        return;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void rc_put_u64(rc_keybuf *b, uint64_t v) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    rc_put(b, le, sizeof le);
}

/* Every variable-length field is preceded by its length, so that two different requests
 * can never serialize to the same bytes. */
static void rc_put_str(rc_keybuf *b, const char *s) {
    size_t n = s ? strlen(s) : 0;
    rc_put_u64(b, n);
    rc_put(b, s, n);
}

int gw_respcache_key(const char *tenant, const char *fn, uint32_t ver, const wire_invoke_req *req,
                     size_t max_len, uint8_t **key, size_t *key_len, aicfn_error *err) {
    *key = NULL;
    *key_len = 0;
    /* Size first (one allocation), then fill. */
    uint64_t need =
        8 + (tenant ? strlen(tenant) : 0) + 8 + (fn ? strlen(fn) : 0) + 8 + 8 + 8 + req->params_len;
    for (uint32_t i = 0; i < req->n_inputs; i++) {
        const wire_tensor *t = &req->inputs[i];
        need += 8 + strlen(t->name) + 8 + 8 + 8 * (uint64_t)t->ndim + 8 + t->nbytes;
    }
    if (need > max_len)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "response cache key of %llu bytes, at most %zu",
                               (unsigned long long)need, max_len);
    rc_keybuf b = {.p = malloc(need ? (size_t)need : 1), .max = (size_t)need};
    if (!b.p)
        return aicfn_error_set(err, AICFN_E_NOMEM, "response cache key (%llu bytes)",
                               (unsigned long long)need);
    rc_put_str(&b, tenant);
    rc_put_str(&b, fn);
    rc_put_u64(&b, ver);
    rc_put_u64(&b, req->n_inputs);
    for (uint32_t i = 0; i < req->n_inputs; i++) {
        const wire_tensor *t = &req->inputs[i];
        rc_put_str(&b, t->name);
        rc_put_u64(&b, (uint64_t)t->dtype);
        rc_put_u64(&b, t->ndim);
        for (uint32_t d = 0; d < t->ndim; d++)
            rc_put_u64(&b, (uint64_t)t->shape[d]);
        rc_put_u64(&b, t->nbytes);
        rc_put(&b, t->data, (size_t)t->nbytes);
    }
    rc_put_u64(&b, req->params ? req->params_len : 0);
    if (req->params) rc_put(&b, req->params, req->params_len);
    if (b.over || b.len != need) { /* cannot happen: the sizes above match the writes */
        free(b.p);
        return aicfn_error_set(err, AICFN_E_INTERNAL, "response cache key: size mismatch");
    }
    *key = b.p;
    *key_len = b.len;
    return AICFN_OK;
}

/* ---- Table ---------------------------------------------------------------------- */

static rc_entry **rc_slot(gw_respcache *c, uint64_t h, const uint8_t *key, size_t key_len) {
    rc_entry **pp = &c->buckets[h & (c->n_buckets - 1)];
    for (; *pp; pp = &(*pp)->chain)
        if ((*pp)->hash == h && (*pp)->key_len == key_len && memcmp((*pp)->data, key, key_len) == 0) break;
    return pp;
}

static void rc_lru_unlink(gw_respcache *c, rc_entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void rc_lru_push(gw_respcache *c, rc_entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

/* Unlinks e from its bucket and the LRU list and frees it. */
static void rc_remove(gw_respcache *c, rc_entry *e) {
    rc_entry **pp = &c->buckets[e->hash & (c->n_buckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->chain;
    if (*pp) *pp = e->chain;
    rc_lru_unlink(c, e);
    c->st.entries--;
    c->st.bytes -= rc_cost(e->key_len, e->reply_len);
    free(e);
}

/* Doubles the bucket array when entries outnumber buckets (no-op when out of memory). */
static void rc_maybe_grow(gw_respcache *c) {
    if (c->st.entries < c->n_buckets || c->n_buckets > SIZE_MAX / 2 / sizeof(rc_entry *)) return;
    size_t n = c->n_buckets * 2;
    rc_entry **nb = calloc(n, sizeof *nb);
    if (!nb) return;
    for (size_t i = 0; i < c->n_buckets; i++) {
        for (rc_entry *e = c->buckets[i], *next; e; e = next) {
            next = e->chain;
            e->chain = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
        }
    }
    free(c->buckets);
    c->buckets = nb;
    c->n_buckets = n;
}

bool gw_respcache_get(gw_respcache *c, const uint8_t *key, size_t key_len, uint64_t now_us, uint8_t **reply,
                      size_t *reply_len) {
    *reply = NULL;
    *reply_len = 0;
    uint64_t h = XXH3_64bits_withSeed(key, key_len, c->seed);
    pthread_mutex_lock(&c->mu);
    rc_entry *e = *rc_slot(c, h, key, key_len);
    if (e && e->expires_us <= now_us) {
        rc_remove(c, e);
        c->st.expirations++;
        e = NULL;
    }
    uint8_t *copy = e ? malloc(e->reply_len ? e->reply_len : 1) : NULL;
    if (copy) {
        memcpy(copy, e->data + e->key_len, e->reply_len);
        *reply = copy;
        *reply_len = e->reply_len;
        rc_lru_unlink(c, e);
        rc_lru_push(c, e);
        c->st.hits++;
    } else {
        c->st.misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return copy != NULL;
}

void gw_respcache_put(gw_respcache *c, const uint8_t *key, size_t key_len, const uint8_t *reply,
                      size_t reply_len, uint64_t expires_us) {
    size_t cost = rc_cost(key_len, reply_len);
    if (key_len > c->st.max_bytes || reply_len > c->st.max_bytes || cost > c->st.max_bytes / 8) {
        pthread_mutex_lock(&c->mu);
        c->st.too_large++;
        pthread_mutex_unlock(&c->mu);
        return;
    }
    rc_entry *n = malloc(cost);
    if (!n) return;
    n->hash = XXH3_64bits_withSeed(key, key_len, c->seed);
    n->expires_us = expires_us;
    n->key_len = key_len;
    n->reply_len = reply_len;
    n->chain = n->prev = n->next = NULL;
    memcpy(n->data, key, key_len);
    memcpy(n->data + key_len, reply, reply_len);
    pthread_mutex_lock(&c->mu);
    rc_entry *old = *rc_slot(c, n->hash, key, key_len);
    if (old) rc_remove(c, old);
    while (c->tail && c->st.bytes + cost > c->st.max_bytes) {
        rc_remove(c, c->tail);
        c->st.evictions++;
    }
    rc_maybe_grow(c);
    rc_entry **b = &c->buckets[n->hash & (c->n_buckets - 1)];
    n->chain = *b;
    *b = n;
    rc_lru_push(c, n);
    c->st.entries++;
    c->st.bytes += cost;
    c->st.inserts++;
    pthread_mutex_unlock(&c->mu);
}

gw_respcache_stats gw_respcache_get_stats(gw_respcache *c) {
    pthread_mutex_lock(&c->mu);
    gw_respcache_stats s = c->st;
    pthread_mutex_unlock(&c->mu);
    return s;
}
