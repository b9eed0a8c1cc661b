/* cache.c: the model cache (cache.h): residency, pins, single-flight loads, eviction.
 *
 * One mutex guards the table; it is held only for bookkeeping, never during a load,
 * a prepare or an unload (those run on the acquiring thread with the lock dropped).
 * One condition variable (CLOCK_MONOTONIC, for deadline waits) is broadcast whenever a
 * load finishes or fails, or a pin or reservation is given back.
 * Accounting: `used` is what READY entries were charged plus what LOADING entries
 * reserved. Evicting moves the victims' bytes to the load that chose them; that load
 * frees the victims before it allocates, so the device never holds more than the
 * budget. Not for: loading itself (pluggable, see pipeline.h) or policy (below). */
#include "loader/cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

struct loader_cache_entry {
    char key[AICFN_MAX_NAME_BYTES];
    loader_entry_state state;
    uint32_t refcount; /* pins (READY) */
    uint32_t waiters;  /* calls waiting on this LOADING entry */
    int failed;        /* the load failed; err holds why */
    int no_room;       /* it failed because no room came before its loader's deadline (a
                          joined call with time left tries again; any other failure, a
                          device out of memory included, is every waiter's error) */
    int reserving;     /* LOADING, its loader still waiting for room (nothing reserved yet) */
    int in_table;      /* still findable by key */
    int kept;          /* kept resident (loader_cache_keep): never a victim of the policy */
    aicfn_error err;
    uint64_t bytes; /* charged or reserved */
    uint64_t last_use_us, last_use_tick, loaded_at_us, hits;
    void *model;
    loader_timing timing;
};

typedef struct cache_evicted {
    char key[AICFN_MAX_NAME_BYTES];
    uint64_t at_us;
} cache_evicted;

#define CACHE_EVICTED_MAX 1024

struct loader_cache {
    uint64_t budget;
    uint64_t used;     /* charged to READY entries + reserved by LOADING ones */
    uint64_t evicting; /* victims chosen but not yet freed: still on the device */
    uint64_t overlap;  /* of `used`, the reservations of loads whose own victims are still in
                          `evicting`, up to those victims' bytes: such a load allocates only
                          after freeing them, so these bytes are never on the device twice */
    uint64_t tick;
    loader_cache_load_ops ops;
    void *ops_arg;
    loader_evict_policy policy;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    loader_cache_entry **table; /* LOADING and READY entries, findable by key */
    size_t n, cap;
    loader_cache_entry **evicting_list; /* chosen victims not yet freed */
    size_t n_evicting, cap_evicting;
    cache_evicted *recent; /* recently evicted keys, for thrash accounting */
    size_t n_recent;
    loader_cache_counters ctr;
};

const char *loader_entry_state_name(loader_entry_state s) {
    switch (s) {
    case LOADER_ENTRY_LOADING:
        return "LOADING";
    case LOADER_ENTRY_READY:
        return "READY";
    case LOADER_ENTRY_EVICTING:
        return "EVICTING";
    }
    return "UNKNOWN";
}

/* ---- LRU ---- */
typedef struct lru_rank {
    uint64_t tick;
    size_t i;
} lru_rank;

static int lru_rank_cmp(const void *a, const void *b) {
    const lru_rank *x = a, *y = b;
    if (x->tick != y->tick) return x->tick < y->tick ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* Picks the least recently used candidates until `need` bytes are freed: one sort,
 * O(n log n) (the call holds the cache lock: a worker with thousands of small models
 * making room for a big one must not stall its warm calls for long); a selection,
 * O(n·k), when the sort's memory cannot be had. */
static size_t lru_choose(void *arg, const loader_evict_candidate *cands, size_t n, uint64_t need,
                         size_t *victims) {
    (void)arg;
    uint64_t freed = 0;
    size_t k = 0;
    lru_rank *rank = n ? malloc(n * sizeof *rank) : NULL;
    if (rank) {
        for (size_t i = 0; i < n; i++)
            rank[i] = (lru_rank){.tick = cands[i].last_use_tick, .i = i};
        qsort(rank, n, sizeof *rank, lru_rank_cmp);
        for (; freed < need && k < n; k++) {
            victims[k] = rank[k].i;
            freed += cands[rank[k].i].bytes;
        }
        free(rank);
        return k;
    }
    while (freed < need && k < n) {
        size_t best = n;
        for (size_t i = 0; i < n; i++) {
            int taken = 0;
            for (size_t j = 0; j < k && !taken; j++)
                taken = victims[j] == i;
            if (taken) continue;
            if (best == n || cands[i].last_use_tick < cands[best].last_use_tick) best = i;
        }
        if (best == n) break;
        victims[k++] = best;
        freed += cands[best].bytes;
    }
    return k;
}

const loader_evict_policy loader_evict_lru = {.name = "lru", .choose = lru_choose, .arg = NULL};

/* ---- Table helpers (under c->mu) ---- */
/* READY, unpinned, and no joined waiter still to wake up and pin it: loader_cache_evict
 * may take it. */
static int cache_unused(const loader_cache_entry *e) {
    return e->state == LOADER_ENTRY_READY && e->refcount == 0 && e->waiters == 0;
}

/* Unused and not kept: the policy may take it to make room. */
static int cache_evictable(const loader_cache_entry *e) {
    return cache_unused(e) && !e->kept;
}

/* Bytes of the READY entries kept resident (loader_cache_keep). */
static uint64_t cache_kept_bytes_locked(const loader_cache *c) {
    uint64_t kept = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->table[i]->kept) kept += c->table[i]->bytes;
    return kept;
}

static loader_cache_entry *cache_find(loader_cache *c, const char *key) {
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->table[i]->key, key) == 0) return c->table[i];
    return NULL;
}

static int cache_is_evicting(loader_cache *c, const char *key) {
    for (size_t i = 0; i < c->n_evicting; i++)
        if (strcmp(c->evicting_list[i]->key, key) == 0) return 1;
    return 0;
}

static int cache_push(loader_cache_entry ***arr, size_t *n, size_t *cap, loader_cache_entry *e) {
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        loader_cache_entry **na = realloc(*arr, nc * sizeof *na);
        if (!na) return AICFN_E_NOMEM;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = e;
    return AICFN_OK;
}

static void cache_remove(loader_cache_entry **arr, size_t *n, loader_cache_entry *e) {
    for (size_t i = 0; i < *n; i++) {
        if (arr[i] == e) {
            arr[i] = arr[--*n];
            return;
        }
    }
}

static void cache_note_evicted(loader_cache *c, const char *key, uint64_t now) {
    size_t w = 0; /* drop records older than the window, and any of the same key */
    for (size_t i = 0; i < c->n_recent; i++)
        if (now - c->recent[i].at_us < AICFN_THRASH_WINDOW_US && strcmp(c->recent[i].key, key) != 0)
            c->recent[w++] = c->recent[i];
    c->n_recent = w;
    if (c->n_recent == CACHE_EVICTED_MAX) { /* full: drop the oldest (index 0, kept in order) */
        memmove(c->recent, c->recent + 1, (CACHE_EVICTED_MAX - 1) * sizeof *c->recent);
        c->n_recent--;
    }
    snprintf(c->recent[c->n_recent].key, sizeof c->recent[0].key, "%s", key);
    c->recent[c->n_recent].at_us = now;
    c->n_recent++;
}

/* 1 when `key` was evicted within the thrash window (and forgets the record). */
static int cache_take_thrash(loader_cache *c, const char *key, uint64_t now) {
    for (size_t i = 0; i < c->n_recent; i++) {
        if (strcmp(c->recent[i].key, key) == 0) {
            int hit = now - c->recent[i].at_us < AICFN_THRASH_WINDOW_US;
            memmove(c->recent + i, c->recent + i + 1, (c->n_recent - i - 1) * sizeof *c->recent);
            c->n_recent--;
            return hit;
        }
    }
    return 0;
}

/* Marks a LOADING entry failed with `rc` and *err, takes it out of the table and wakes
 * its waiters; frees it when nobody waits. *err is completed first (its code is rc, and
 * a message when the load op left none), for the entry's waiters and its maker alike.
 * Under c->mu. */
static void cache_fail_locked(loader_cache *c, loader_cache_entry *e, int rc, aicfn_error *err) {
    err->code = rc != AICFN_OK ? rc : AICFN_E_INTERNAL;
    if (err->msg[0] == '\0')
        snprintf(err->msg, sizeof err->msg, "model '%s': its load failed (%s)", e->key,
                 aicfn_status_name(err->code));
    e->failed = 1;
    e->err = *err;
    if (e->in_table) {
        cache_remove(c->table, &c->n, e);
        e->in_table = 0;
    }
    pthread_cond_broadcast(&c->cv);
    if (e->waiters == 0) free(e);
}

static int cache_wait(loader_cache *c, uint64_t deadline_us) {
    if (deadline_us == 0) {
        pthread_cond_wait(&c->cv, &c->mu);
        return 0;
    }
    if (clock_now_us() >= deadline_us) return ETIMEDOUT;
    struct timespec ts;
    clock_deadline_to_timespec(deadline_us, &ts);
    return pthread_cond_timedwait(&c->cv, &c->mu, &ts);
}

/* ---- Create / destroy ---- */
int loader_cache_create(const loader_cache_config *cfg, loader_cache **out, aicfn_error *err) {
    if (!out) return aicfn_error_set(err, AICFN_E_INVALID, "model cache: no output");
    *out = NULL;
    if (!cfg || cfg->budget_bytes == 0)
        return aicfn_error_set(err, AICFN_E_INVALID, "model cache: the budget must be > 0 bytes");
    if (!cfg->ops || !cfg->ops->prepare || !cfg->ops->load || !cfg->ops->abort || !cfg->ops->unload)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "model cache: load ops (prepare, load, abort, unload) required");
    if (cfg->policy && !cfg->policy->choose)
        return aicfn_error_set(err, AICFN_E_INVALID, "model cache: eviction policy without choose");
    loader_cache *c = calloc(1, sizeof *c);
    cache_evicted *recent = calloc(CACHE_EVICTED_MAX, sizeof *recent);
    if (!c || !recent) {
        free(c);
        free(recent);
        return aicfn_error_set(err, AICFN_E_NOMEM, "model cache: out of memory");
    }
    c->budget = cfg->budget_bytes;
    c->ops = *cfg->ops;
    c->ops_arg = cfg->ops_arg;
    c->policy = cfg->policy ? *cfg->policy : loader_evict_lru;
    c->recent = recent;
    pthread_mutex_init(&c->mu, NULL);
    clock_cond_init(&c->cv);
    *out = c;
    return AICFN_OK;
}

void loader_cache_destroy(loader_cache *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        loader_cache_entry *e = c->table[i];
        if (e->state == LOADER_ENTRY_READY) {
            if (e->refcount) log_warn("model cache: destroying '%s' with %u pins", e->key, e->refcount);
            c->ops.unload(c->ops_arg, e->model);
        }
        free(e);
    }
    free(c->table);
    free(c->evicting_list);
    free(c->recent);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

uint64_t loader_cache_budget(const loader_cache *c) {
    return c ? c->budget : 0;
}

static void cache_touch(loader_cache *c, loader_cache_entry *e) {
    e->last_use_us = clock_now_us();
    e->last_use_tick = ++c->tick;
}

/* Frees victims chosen under the lock (now unlocked), fills the report. */
static void cache_free_victims(loader_cache *c, loader_cache_entry **v, size_t nv, uint64_t overlap,
                               loader_acquire_info *info) {
    uint64_t now = clock_now_us();
    for (size_t i = 0; i < nv; i++) {
        loader_cache_entry *e = v[i];
        if (info && info->n_evictions < LOADER_MAX_REPORTED_EVICTIONS) {
            loader_eviction *r = &info->evictions[info->n_evictions];
            snprintf(r->key, sizeof r->key, "%s", e->key);
            r->bytes = e->bytes;
            r->idle_us = now - e->last_use_us;
            r->resident_us = now - e->loaded_at_us;
        }
        if (info) info->n_evictions++;
        log_debug("model cache: evicting '%s' (%llu bytes)", e->key, (unsigned long long)e->bytes);
        c->ops.unload(c->ops_arg, e->model);
    }
    pthread_mutex_lock(&c->mu);
    c->overlap -= overlap;
    for (size_t i = 0; i < nv; i++) {
        c->evicting -= v[i]->bytes;
        cache_remove(c->evicting_list, &c->n_evicting, v[i]);
        free(v[i]);
    }
    if (nv) pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Under c->mu: makes room for `need` bytes by choosing victims, or reports that it
 * cannot yet (returns 0 without touching anything). On success reserves `need` and
 * stores the victims (removed from the table, EVICTING) in *victims, and in *overlap the
 * part of the reservation they stand for until cache_free_victims (c->overlap). */
static int cache_reserve_locked(loader_cache *c, uint64_t need, loader_cache_entry ***victims, size_t *nv,
                                uint64_t *overlap, int *nomem) {
    *victims = NULL;
    *nv = 0;
    *overlap = 0;
    *nomem = 0;
    uint64_t held = c->used + c->evicting - c->overlap;
    uint64_t avail = held < c->budget ? c->budget - held : 0;
    if (need <= avail) {
        c->used += need;
        return 1;
    }
    uint64_t evictable = 0;
    size_t nc = 0;
    for (size_t i = 0; i < c->n; i++) {
        loader_cache_entry *e = c->table[i];
        if (cache_evictable(e)) {
            evictable += e->bytes;
            nc++;
        }
    }
    if (need > avail + evictable) return 0;
    loader_evict_candidate *cands = calloc(nc, sizeof *cands);
    loader_cache_entry **ents = calloc(nc, sizeof *ents);
    size_t *idx = calloc(nc, sizeof *idx);
    if (!cands || !ents || !idx) {
        free(cands);
        free(ents);
        free(idx);
        *nomem = 1;
        return 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) {
        loader_cache_entry *e = c->table[i];
        if (!cache_evictable(e)) continue;
        ents[k] = e;
        cands[k] = (loader_evict_candidate){.key = e->key,
                                            .bytes = e->bytes,
                                            .last_use_us = e->last_use_us,
                                            .last_use_tick = e->last_use_tick,
                                            .loaded_at_us = e->loaded_at_us,
                                            .hits = e->hits};
        k++;
    }
    size_t chosen = c->policy.choose(c->policy.arg, cands, nc, need - avail, idx);
    /* Trust but verify the policy: valid, distinct indexes freeing enough; else LRU. */
    uint64_t freed = 0;
    int ok = chosen <= nc;
    unsigned char *seen = ok ? calloc(nc ? nc : 1, 1) : NULL;
    for (size_t i = 0; ok && i < chosen; i++) {
        ok = idx[i] < nc;
        if (ok && seen) {
            ok = !seen[idx[i]];
            seen[idx[i]] = 1;
        }
        for (size_t j = 0; ok && !seen && j < i; j++) /* no memory for the marks */
            ok = idx[j] != idx[i];
        if (ok) freed += cands[idx[i]].bytes;
    }
    free(seen);
    if (!ok || freed < need - avail) {
        log_warn("model cache: policy '%s' chose too little; using LRU", c->policy.name);
        chosen = lru_choose(NULL, cands, nc, need - avail, idx);
    }
    loader_cache_entry **v = calloc(chosen ? chosen : 1, sizeof *v);
    if (!v) {
        free(cands);
        free(ents);
        free(idx);
        *nomem = 1;
        return 0;
    }
    uint64_t now = clock_now_us(), freed_bytes = 0;
    for (size_t i = 0; i < chosen; i++) {
        loader_cache_entry *e = ents[idx[i]];
        freed_bytes += e->bytes;
        if (cache_push(&c->evicting_list, &c->n_evicting, &c->cap_evicting, e) != AICFN_OK) {
            /* Cannot track it for status: still evict (status is best effort). */
        }
        cache_remove(c->table, &c->n, e);
        e->in_table = 0;
        e->state = LOADER_ENTRY_EVICTING;
        c->used -= e->bytes;
        c->evicting += e->bytes;
        c->ctr.evictions++;
        cache_note_evicted(c, e->key, now);
        v[i] = e;
    }
    free(cands);
    free(ents);
    free(idx);
    c->used += need;
    *overlap = need < freed_bytes ? need : freed_bytes;
    c->overlap += *overlap;
    *victims = v;
    *nv = chosen;
    return 1;
}

/* Pins a READY entry for an acquire that found it so (a hit; lock held). */
static void cache_pin_hit(loader_cache *c, loader_cache_entry *e) {
    e->refcount++;
    e->hits++;
    cache_touch(c, e);
    c->ctr.hits++;
}

int loader_cache_waits_for_room(loader_cache *c, const char *key) {
    if (!c || !key) return 0;
    pthread_mutex_lock(&c->mu);
    loader_cache_entry *e = cache_find(c, key);
    int waits = e && e->state == LOADER_ENTRY_LOADING && e->reserving && !e->failed;
    pthread_mutex_unlock(&c->mu);
    return waits;
}

int loader_cache_acquire_ready(loader_cache *c, const char *key, loader_cache_entry **out) {
    *out = NULL;
    if (!c || !key) return AICFN_E_NOT_FOUND;
    pthread_mutex_lock(&c->mu);
    loader_cache_entry *e = cache_find(c, key);
    if (e && e->state == LOADER_ENTRY_READY) {
        cache_pin_hit(c, e);
        *out = e;
    }
    pthread_mutex_unlock(&c->mu);
    return *out ? AICFN_OK : AICFN_E_NOT_FOUND;
}

int loader_cache_acquire(loader_cache *c, const char *key, const char *path, uint64_t deadline_us,
                         loader_cache_entry **out, loader_acquire_info *info, aicfn_error *err) {
    uint64_t t0 = clock_now_us();
    if (info) memset(info, 0, sizeof *info);
    if (!out) return aicfn_error_set(err, AICFN_E_INVALID, "model cache: no output");
    *out = NULL;
    if (!c || !key || !*key) return aicfn_error_set(err, AICFN_E_INVALID, "model cache: no cache or key");
    if (strlen(key) >= AICFN_MAX_NAME_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID, "model cache: key longer than %d bytes",
                               AICFN_MAX_NAME_BYTES - 1);

    pthread_mutex_lock(&c->mu);
    bool counted = false; /* the miss, once however many times this call tries */
again:;
    loader_cache_entry *e = cache_find(c, key);
    /* A residency being freed must be gone before the next one loads. */
    while (!e && cache_is_evicting(c, key)) {
        if (cache_wait(c, deadline_us) == ETIMEDOUT && cache_is_evicting(c, key)) {
            pthread_mutex_unlock(&c->mu);
            return aicfn_error_set(err, AICFN_E_TIMEOUT, "model '%s': still being evicted at the deadline",
                                   key);
        }
        e = cache_find(c, key);
    }
    if (e && e->state == LOADER_ENTRY_READY) {
        cache_pin_hit(c, e);
        pthread_mutex_unlock(&c->mu);
        *out = e;
        if (info) {
            info->model_bytes = e->bytes;
            info->wait_us = clock_now_us() - t0;
        }
        return AICFN_OK;
    }
    if (!counted) c->ctr.misses++;
    counted = true;
    if (e) { /* LOADING: join it */
        e->waiters++;
        if (info) {
            info->cold = 1;
            info->joined = 1;
        }
        int trc = 0;
        while (e->state == LOADER_ENTRY_LOADING && !e->failed && trc != ETIMEDOUT)
            trc = cache_wait(c, deadline_us);
        e->waiters--;
        int rc;
        if (e->failed && e->no_room && (deadline_us == 0 || clock_now_us() < deadline_us)) {
            /* The loader found no room before ITS deadline; this call has time left, so it
             * tries again on its own (loading itself, or joining a newer load). */
            if (e->waiters == 0) free(e);
            goto again;
        }
        if (e->failed) {
            rc = e->err.code;
            if (err) *err = e->err;
            if (e->waiters == 0) free(e);
        } else if (e->reserving) {
            /* Its load still waits for room: what this call ran out of is capacity. */
            c->ctr.capacity_failures++;
            rc = aicfn_error_set(
                err, AICFN_E_CAPACITY,
                "model '%s': no room for it before the deadline (the rest pinned or loading)", key);
        } else if (e->state == LOADER_ENTRY_READY) {
            e->refcount++;
            e->hits++;
            cache_touch(c, e);
            if (info) {
                info->timing = e->timing;
                info->model_bytes = e->bytes;
            }
            *out = e;
            rc = AICFN_OK;
        } else {
            rc = aicfn_error_set(err, AICFN_E_TIMEOUT, "model '%s': still loading at the deadline", key);
        }
        pthread_mutex_unlock(&c->mu);
        if (info) info->wait_us = clock_now_us() - t0;
        return rc;
    }

    /* Missing: this call loads it. */
    e = calloc(1, sizeof *e);
    if (!e || cache_push(&c->table, &c->n, &c->cap, e) != AICFN_OK) {
        pthread_mutex_unlock(&c->mu);
        free(e);
        return aicfn_error_set(err, AICFN_E_NOMEM, "model cache: out of memory");
    }
    snprintf(e->key, sizeof e->key, "%s", key);
    e->state = LOADER_ENTRY_LOADING;
    e->in_table = 1;
    cache_touch(c, e);
    pthread_mutex_unlock(&c->mu);
    if (info) {
        info->cold = 1;
        info->joined = 0; /* this call makes the load, even after joining one that failed */
    }

    aicfn_error lerr;
    aicfn_error_clear(&lerr);
    void *prep = NULL;
    uint64_t need = 0;
    int rc = c->ops.prepare(c->ops_arg, key, path, &prep, &need, &lerr);
    if (rc == AICFN_OK && need == 0) need = 1;

    pthread_mutex_lock(&c->mu);
    loader_cache_entry **victims = NULL;
    size_t nv = 0;
    uint64_t overlap = 0;
    int reserved = 0;
    e->reserving = 1;
    if (rc != AICFN_OK) { /* the model could not be read: a load that failed */
        c->ctr.loads++;
        c->ctr.load_failures++;
    }
    if (rc == AICFN_OK && need > c->budget) {
        c->ctr.too_large++;
        rc = aicfn_error_set(&lerr, AICFN_E_TOO_LARGE,
                             "model '%s' needs %llu bytes, more than the whole budget of %llu bytes", key,
                             (unsigned long long)need, (unsigned long long)c->budget);
    }
    while (rc == AICFN_OK && !reserved) {
        int nomem = 0;
        if (cache_reserve_locked(c, need, &victims, &nv, &overlap, &nomem)) {
            reserved = 1;
            break;
        }
        if (nomem) {
            rc = aicfn_error_set(&lerr, AICFN_E_NOMEM, "model cache: out of memory choosing victims");
            break;
        }
        /* Kept models leave no room: nothing a wait can free. */
        uint64_t kept = cache_kept_bytes_locked(c);
        if (need > c->budget - kept) {
            c->ctr.capacity_failures++;
            rc = aicfn_error_set(&lerr, AICFN_E_CAPACITY,
                                 "model '%s' needs %llu bytes; %llu of the %llu-byte budget are kept "
                                 "resident (scaling.min_workers)",
                                 key, (unsigned long long)need, (unsigned long long)kept,
                                 (unsigned long long)c->budget);
            break;
        }
        if (cache_wait(c, deadline_us) == ETIMEDOUT) {
            c->ctr.capacity_failures++;
            e->no_room = 1;
            rc = aicfn_error_set(
                &lerr, AICFN_E_CAPACITY,
                "model '%s' needs %llu bytes; only %llu of %llu free and the rest pinned or loading "
                "until the deadline",
                key, (unsigned long long)need, (unsigned long long)(c->budget - c->used),
                (unsigned long long)c->budget);
        }
    }
    e->reserving = 0;
    if (rc != AICFN_OK) {
        cache_fail_locked(c, e, rc, &lerr);
        pthread_mutex_unlock(&c->mu);
        if (prep) c->ops.abort(c->ops_arg, prep);
        if (err) *err = lerr;
        if (info) info->wait_us = clock_now_us() - t0;
        return rc;
    }
    e->bytes = need;
    c->ctr.loads++;
    uint64_t reserved_us = clock_now_us(); /* a reload's thrash window is judged from here */
    pthread_mutex_unlock(&c->mu);

    cache_free_victims(c, victims, nv, overlap, info);
    free(victims);

    void *model = NULL;
    uint64_t alloc = 0;
    loader_timing timing;
    memset(&timing, 0, sizeof timing);
    rc = c->ops.load(c->ops_arg, prep, need, &model, &alloc, &timing, &lerr);
    if (rc == AICFN_OK && alloc > need) {
        c->ops.unload(c->ops_arg, model);
        rc = aicfn_error_set(&lerr, AICFN_E_INTERNAL,
                             "model '%s': the load allocated %llu bytes, over the %llu reserved", key,
                             (unsigned long long)alloc, (unsigned long long)need);
    }
    if (rc == AICFN_OK && alloc == 0) alloc = need;

    pthread_mutex_lock(&c->mu);
    if (rc != AICFN_OK) {
        c->used -= need;
        c->ctr.load_failures++;
        cache_fail_locked(c, e, rc, &lerr);
        pthread_mutex_unlock(&c->mu);
        if (err) *err = lerr;
        if (info) info->wait_us = clock_now_us() - t0;
        return rc;
    }
    c->used -= need - alloc;
    /* A reload counts as thrash once it has happened: a failed one leaves the record for
     * the next try. */
    int thrash = cache_take_thrash(c, key, reserved_us);
    if (thrash) c->ctr.thrash_reloads++;
    if (info) info->thrash = thrash;
    e->bytes = alloc;
    e->model = model;
    e->timing = timing;
    e->state = LOADER_ENTRY_READY;
    e->refcount = 1;
    e->loaded_at_us = clock_now_us();
    cache_touch(c, e);
    c->ctr.bytes_loaded += alloc;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (info) {
        info->timing = timing;
        info->model_bytes = alloc;
        info->wait_us = clock_now_us() - t0;
    }
    *out = e;
    return AICFN_OK;
}

void loader_cache_release(loader_cache *c, loader_cache_entry *e) {
    if (!c || !e) return;
    pthread_mutex_lock(&c->mu);
    if (e->refcount == 0) {
        log_error("model cache: release of '%s' without a pin", e->key);
    } else {
        e->refcount--;
        cache_touch(c, e);
        if (e->refcount == 0) pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

int loader_cache_preload(loader_cache *c, const char *key, const char *path, uint64_t deadline_us,
                         loader_acquire_info *info, aicfn_error *err) {
    loader_cache_entry *e = NULL;
    int rc = loader_cache_acquire(c, key, path, deadline_us, &e, info, err);
    if (rc == AICFN_OK) loader_cache_release(c, e);
    return rc;
}

int loader_cache_keep(loader_cache *c, const char *key, const char *path, uint64_t deadline_us,
                      loader_acquire_info *info, aicfn_error *err) {
    loader_cache_entry *e = NULL;
    int rc = loader_cache_acquire(c, key, path, deadline_us, &e, info, err);
    if (rc != AICFN_OK) return rc;
    pthread_mutex_lock(&c->mu);
    e->kept = 1; /* while still pinned: no victim in between */
    pthread_mutex_unlock(&c->mu);
    loader_cache_release(c, e);
    return AICFN_OK;
}

/* Sets the kept mark of `key`: keeping needs it READY, unkeeping only present (a load
 * waiting for room may then evict it). AICFN_E_NOT_FOUND otherwise. */
static int cache_set_kept(loader_cache *c, const char *key, int kept, aicfn_error *err) {
    if (!c || !key) return aicfn_error_set(err, AICFN_E_INVALID, "model cache: no cache or key");
    pthread_mutex_lock(&c->mu);
    loader_cache_entry *e = cache_find(c, key);
    int ok = e && (!kept || e->state == LOADER_ENTRY_READY);
    if (ok) {
        e->kept = kept;
        if (!kept) pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return ok ? AICFN_OK : aicfn_error_set(err, AICFN_E_NOT_FOUND, "model '%s' is not resident", key);
}

int loader_cache_keep_resident(loader_cache *c, const char *key, aicfn_error *err) {
    return cache_set_kept(c, key, 1, err);
}

int loader_cache_unkeep(loader_cache *c, const char *key, aicfn_error *err) {
    return cache_set_kept(c, key, 0, err);
}

int loader_cache_evict(loader_cache *c, const char *key, aicfn_error *err) {
    if (!c || !key) return aicfn_error_set(err, AICFN_E_INVALID, "model cache: no cache or key");
    pthread_mutex_lock(&c->mu);
    loader_cache_entry *e = cache_find(c, key);
    if (!e) {
        pthread_mutex_unlock(&c->mu);
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "model '%s' is not resident", key);
    }
    if (!cache_unused(e)) {
        int loading = e->state == LOADER_ENTRY_LOADING;
        uint32_t pins = e->refcount;
        pthread_mutex_unlock(&c->mu);
        return loading
                   ? aicfn_error_set(err, AICFN_E_UNAVAILABLE, "model '%s' is still loading", key)
                   : aicfn_error_set(err, AICFN_E_UNAVAILABLE, "model '%s' is in use (%u pins)", key, pins);
    }
    cache_remove(c->table, &c->n, e);
    e->in_table = 0;
    e->state = LOADER_ENTRY_EVICTING;
    (void)cache_push(&c->evicting_list, &c->n_evicting, &c->cap_evicting, e);
    c->used -= e->bytes;
    c->evicting += e->bytes;
    c->ctr.evictions++;
    cache_note_evicted(c, e->key, clock_now_us());
    pthread_mutex_unlock(&c->mu);
    c->ops.unload(c->ops_arg, e->model);
    pthread_mutex_lock(&c->mu);
    c->evicting -= e->bytes;
    cache_remove(c->evicting_list, &c->n_evicting, e);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    free(e);
    return AICFN_OK;
}

const char *loader_cache_entry_key(const loader_cache_entry *e) {
    return e ? e->key : NULL;
}
void *loader_cache_entry_model(const loader_cache_entry *e) {
    return e ? e->model : NULL;
}
uint64_t loader_cache_entry_bytes(const loader_cache_entry *e) {
    return e ? e->bytes : 0;
}

void loader_cache_get_counters(loader_cache *c, loader_cache_counters *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    *out = c->ctr;
    pthread_mutex_unlock(&c->mu);
}

/* Most recently used first, by the logical clock (two uses in one microsecond still
 * have an order). */
static int status_cmp(const void *a, const void *b) {
    const loader_cache_entry_status *x = a, *y = b;
    return x->last_use_tick > y->last_use_tick ? -1 : x->last_use_tick < y->last_use_tick;
}

static int entry_recency_cmp(const void *a, const void *b) {
    const loader_cache_entry *x = *(loader_cache_entry *const *)a, *y = *(loader_cache_entry *const *)b;
    return x->last_use_tick > y->last_use_tick ? -1 : x->last_use_tick < y->last_use_tick;
}

void loader_cache_get_status(loader_cache *c, loader_cache_status *st, loader_cache_entry_status *entries,
                             size_t cap) {
    if (!st) return;
    memset(st, 0, sizeof *st);
    if (!c) return;
    uint64_t now = clock_now_us();
    pthread_mutex_lock(&c->mu);
    st->budget_bytes = c->budget;
    st->used_bytes = c->used;
    st->evicting_bytes = c->evicting;
    st->counters = c->ctr;
    size_t total = c->n + c->n_evicting;
    st->n_entries = (uint32_t)total;
    /* Every entry, most recently used first; when there are more than cap, the ones
     * returned are the most recent (a busy worker's summary names what it just used). */
    loader_cache_entry **all = entries && total > cap ? malloc(total * sizeof *all) : NULL;
    if (all) {
        memcpy(all, c->table, c->n * sizeof *all);
        memcpy(all + c->n, c->evicting_list, c->n_evicting * sizeof *all);
        qsort(all, total, sizeof *all, entry_recency_cmp);
    }
    size_t k = 0;
    for (size_t pass = 0; pass < 2; pass++) {
        loader_cache_entry **arr = all ? all : pass == 0 ? c->table : c->evicting_list;
        size_t n = all ? (pass == 0 ? total : 0) : pass == 0 ? c->n : c->n_evicting;
        for (size_t i = 0; i < n && k < cap && entries; i++, k++) {
            loader_cache_entry *e = arr[i];
            loader_cache_entry_status *s = &entries[k];
            snprintf(s->key, sizeof s->key, "%s", e->key);
            s->state = e->state;
            s->bytes = e->bytes;
            s->refcount = e->state == LOADER_ENTRY_LOADING ? e->waiters + 1 : e->refcount;
            s->kept = e->kept;
            s->last_use_us = e->last_use_us;
            s->last_use_tick = e->last_use_tick;
            s->idle_us = now > e->last_use_us ? now - e->last_use_us : 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    free(all);
    st->n_returned = (uint32_t)k;
    if (k > 1) qsort(entries, k, sizeof *entries, status_cmp);
}
