/* cache.h: the model cache of one worker: which models are resident on its device
 * (design.md §6).
 *
 * The budget is in bytes, charged with what the device actually allocated. Entries are
 * LOADING, READY or EVICTING, each with a refcount (pins) and a last-use tick.
 *   acquire(key): READY -> pin and return at once (a hit never waits behind a load);
 *                 LOADING -> wait on that same load (single-flight);
 *                 missing -> evict unpinned READY entries chosen by the policy (LRU by
 *                 default) until the model fits, then load it on the calling thread.
 *   release: unpin. A pinned model is never evicted.
 *   keep: load if needed and keep resident: the policy never evicts a kept model (a
 *         function's scaling.min_workers); unkeep makes it an ordinary entry again.
 * Loads of different models run in parallel; the cache lock is never held during I/O,
 * decompression, copies or device frees. A model larger than the whole budget fails at
 * once (AICFN_E_TOO_LARGE, naming both sizes); when everything is pinned, acquire waits
 * until its deadline and fails with AICFN_E_CAPACITY; each call by its own deadline,
 * also when it joined another's load (that load's caller may give up first: the
 * joined call then tries on its own). A failed load wakes all its waiters with the
 * same error and leaves nothing behind.
 *
 * The loading itself is pluggable (loader_cache_load_ops): the worker plugs in the
 * snapshot pipeline (loader_pipeline_cache_ops in pipeline.h); tests plug in fakes.
 * The cache itself knows nothing of snapshots or devices.
 * Thread-safety: every function may be called from any thread at once, except
 * loader_cache_destroy. Not for: routing or reporting (the worker and gateway). */
#ifndef AICFN_LOADER_CACHE_H
#define AICFN_LOADER_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/tunables.h"
#include "loader/device.h"
#include "loader/pipeline.h"

typedef struct loader_cache loader_cache;
/* A pinned, READY entry, returned by acquire; give it back with loader_cache_release. */
typedef struct loader_cache_entry loader_cache_entry;

typedef enum loader_entry_state {
    LOADER_ENTRY_LOADING = 0,
    LOADER_ENTRY_READY = 1,
    LOADER_ENTRY_EVICTING = 2,
} loader_entry_state;

/* "LOADING", "READY", "EVICTING". */
const char *loader_entry_state_name(loader_entry_state s);

/* ---- Pluggable loading ----
 * prepare runs first (outside the cache lock): it opens the source and says how many
 * device bytes the load will reserve, so the cache can make room before loading.
 * load then loads within `max_bytes` (what the cache reserved) and reports the bytes
 * actually reserved (<= max_bytes). load consumes `prep` whether it succeeds or not;
 * abort frees a prep that never reaches load (too large, capacity, deadline).
 * unload frees a model (outside the cache lock). All may run concurrently for
 * different keys. */
typedef struct loader_cache_load_ops {
    int (*prepare)(void *arg, const char *key, const char *path, void **prep, uint64_t *bytes,
                   aicfn_error *err);
    int (*load)(void *arg, void *prep, uint64_t max_bytes, void **model, uint64_t *alloc_bytes,
                loader_timing *timing, aicfn_error *err);
    void (*abort)(void *arg, void *prep);
    void (*unload)(void *arg, void *model);
} loader_cache_load_ops;

/* ---- Eviction policy ----
 * choose picks victims among the candidates (READY, refcount 0) to free at least
 * `need` bytes, writing their indexes into `victims` (capacity n) and returning how
 * many; the cache has already checked that all candidates together free enough. The
 * default is LRU (oldest last_use first). Called under the cache lock: must not block. */
typedef struct loader_evict_candidate {
    const char *key;
    uint64_t bytes;
    uint64_t last_use_us;   /* monotonic */
    uint64_t last_use_tick; /* the cache's logical clock: strictly orders uses */
    uint64_t loaded_at_us;  /* monotonic, when it became READY */
    uint64_t hits;          /* acquires served since it became READY */
} loader_evict_candidate;

typedef struct loader_evict_policy {
    const char *name;
    size_t (*choose)(void *arg, const loader_evict_candidate *cands, size_t n, uint64_t need,
                     size_t *victims);
    void *arg;
} loader_evict_policy;

/* The default policy: least recently used first. */
extern const loader_evict_policy loader_evict_lru;

typedef struct loader_cache_config {
    uint64_t budget_bytes;             /* required, > 0 */
    const loader_cache_load_ops *ops;  /* required; e.g. &loader_pipeline_cache_ops */
    void *ops_arg;                     /* passed to every op; e.g. a loader_pipeline_source * */
    const loader_evict_policy *policy; /* NULL = LRU */
} loader_cache_config;

/* Creates a cache. Copies the config (the device and ops must outlive the cache).
 * Returns AICFN_E_INVALID on a bad config. */
int loader_cache_create(const loader_cache_config *cfg, loader_cache **out, aicfn_error *err);

/* Unloads every entry and frees the cache. All entries must be released and no
 * acquire may be in progress. NULL is accepted. */
void loader_cache_destroy(loader_cache *c);

/* ---- Acquire ---- */
#define LOADER_MAX_REPORTED_EVICTIONS 16

typedef struct loader_eviction {
    char key[AICFN_MAX_NAME_BYTES];
    uint64_t bytes;
    uint64_t idle_us;     /* since its last use */
    uint64_t resident_us; /* since it became READY */
} loader_eviction;

typedef struct loader_acquire_info {
    int cold;             /* 1 when this call loaded the model or joined a load */
    int joined;           /* 1 when it joined a load another call started */
    int thrash;           /* 1 when this call's load reloaded a model evicted less than
                             AICFN_THRASH_WINDOW_US ago */
    uint64_t wait_us;     /* wall time inside acquire */
    loader_timing timing; /* the load's record when cold (joined calls get a copy) */
    uint64_t model_bytes; /* bytes charged for the entry */
    uint32_t n_evictions; /* evictions made for this call's load (all of them) */
    loader_eviction evictions[LOADER_MAX_REPORTED_EVICTIONS]; /* the first ones */
} loader_acquire_info;

/* Returns model `key` pinned, loading it from `path` if needed. `deadline_us` is a
 * monotonic time (clock_now_us) after which waiting stops; 0 = wait forever. On
 * success *out is pinned until loader_cache_release; `info` (may be NULL) says whether
 * it was cold, the timing and the evictions made.
 * Errors: AICFN_E_TOO_LARGE (model > budget, at once), AICFN_E_CAPACITY (everything
 * pinned until this call's deadline, whether it loads or joined a load still waiting
 * for room), AICFN_E_TIMEOUT (a joined load not done by the deadline; the load goes
 * on), or the load's own error (every waiter gets the same one; a load that found no
 * room before its caller's deadline is not one: a joined call with time left tries
 * again).
 * Blocking; thread-safe. `key` is at most AICFN_MAX_NAME_BYTES - 1 bytes. */
int loader_cache_acquire(loader_cache *c, const char *key, const char *path, uint64_t deadline_us,
                         loader_cache_entry **out, loader_acquire_info *info, aicfn_error *err);

/* acquire of a model that is READY now, never loading nor waiting: AICFN_OK with *out
 * pinned (a hit), else AICFN_E_NOT_FOUND (missing, loading or being evicted; nothing is
 * counted). Thread-safe; never blocks on I/O. */
int loader_cache_acquire_ready(loader_cache *c, const char *key, loader_cache_entry **out);

/* 1 when `key` is being loaded by an acquire still waiting for room (the rest of the
 * budget pinned or loading), else 0: a call that gives up on it now ran out of
 * capacity, not time (design.md §6: AICFN_E_CAPACITY at the deadline). */
int loader_cache_waits_for_room(loader_cache *c, const char *key);

/* Unpins. The entry stays resident (READY) until evicted. Thread-safe; never blocks on I/O. */
void loader_cache_release(loader_cache *c, loader_cache_entry *e);

/* Loads `key` if needed and releases it at once (a preload). Same errors as acquire. */
int loader_cache_preload(loader_cache *c, const char *key, const char *path, uint64_t deadline_us,
                         loader_acquire_info *info, aicfn_error *err);

/* A preload that also keeps the model resident: the eviction policy never takes it (a
 * load that cannot fit beside the kept models fails at once with AICFN_E_CAPACITY,
 * naming the kept bytes); loader_cache_unkeep or loader_cache_evict end it. Same
 * errors as acquire. */
int loader_cache_keep(loader_cache *c, const char *key, const char *path, uint64_t deadline_us,
                      loader_acquire_info *info, aicfn_error *err);

/* loader_cache_keep of a model that is READY now, never loading anything:
 * AICFN_E_NOT_FOUND when it is not resident (or still loading). */
int loader_cache_keep_resident(loader_cache *c, const char *key, aicfn_error *err);

/* Ends loader_cache_keep: the model stays resident as an ordinary entry. AICFN_OK also
 * when it was not kept; AICFN_E_NOT_FOUND when it is not in the cache. */
int loader_cache_unkeep(loader_cache *c, const char *key, aicfn_error *err);

/* Evicts `key` now, kept or not. AICFN_E_NOT_FOUND when not resident,
 * AICFN_E_UNAVAILABLE when it is pinned or still loading. Frees the device memory
 * before returning. */
int loader_cache_evict(loader_cache *c, const char *key, aicfn_error *err);

/* Accessors of a pinned entry (valid until release). */
const char *loader_cache_entry_key(const loader_cache_entry *e);
/* What the load function returned: for the default loader a loader_model *. */
void *loader_cache_entry_model(const loader_cache_entry *e);
uint64_t loader_cache_entry_bytes(const loader_cache_entry *e);

/* ---- Counters and status ---- */
typedef struct loader_cache_counters {
    uint64_t hits;              /* acquires that found the model READY */
    uint64_t misses;            /* acquires that started or joined a load */
    uint64_t loads;             /* loads that read the model: its manifest failed, or it had room and
                                   was read (an acquire that gave up for room loaded nothing) */
    uint64_t load_failures;     /* of those, the ones that failed (I/O, corrupt, allocation) */
    uint64_t evictions;         /* by the policy and by loader_cache_evict */
    uint64_t thrash_reloads;    /* loads of a model evicted < AICFN_THRASH_WINDOW_US before */
    uint64_t bytes_loaded;      /* bytes charged by successful loads */
    uint64_t capacity_failures; /* acquires that gave up with AICFN_E_CAPACITY */
    uint64_t too_large;         /* acquires refused with AICFN_E_TOO_LARGE (over the whole budget) */
} loader_cache_counters;

void loader_cache_get_counters(loader_cache *c, loader_cache_counters *out);

typedef struct loader_cache_entry_status {
    char key[AICFN_MAX_NAME_BYTES];
    loader_entry_state state;
    uint64_t bytes;         /* charged (reserved while LOADING) */
    uint32_t refcount;      /* pins (READY) or waiters (LOADING) */
    int kept;               /* kept resident (loader_cache_keep) */
    uint64_t last_use_us;   /* monotonic */
    uint64_t last_use_tick; /* the cache's logical clock: orders uses strictly (the list's order) */
    uint64_t idle_us;       /* now - last_use */
} loader_cache_entry_status;

typedef struct loader_cache_status {
    uint64_t budget_bytes;
    uint64_t used_bytes;     /* charged: READY entries + what LOADING entries reserved */
    uint64_t evicting_bytes; /* EVICTING entries not yet freed. Their bytes went to the load
                                that evicted them, which frees them before it allocates:
                                until then other loads count them as taken, and that load's
                                reservation as taken only past them. */
    uint32_t n_entries;      /* entries that exist (may exceed the array's capacity) */
    uint32_t n_returned;     /* entries written into the caller's array */
    loader_cache_counters counters;
} loader_cache_status;

/* Fills `st` and up to `cap` entries (most recently used first) into `entries` (may be
 * NULL with cap 0). Thread-safe; takes the lock briefly. */
void loader_cache_get_status(loader_cache *c, loader_cache_status *st, loader_cache_entry_status *entries,
                             size_t cap);

/* The budget; and whether a model of `bytes` could ever fit (bytes <= budget). */
uint64_t loader_cache_budget(const loader_cache *c);

#endif
