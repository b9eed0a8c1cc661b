/* gateway.c: the gateway process's core: lifecycle, the in-memory view of functions
 * and workers, and THE call execution path (gw_invoke_submit) that the NNG and HTTP
 * fronts share: resolve, route (router.c), spawn (pool.c), forward over the worker's
 * link (workerlink.c), retry or fail on a worker's death, record (ledger.c). Its
 * maintenance thread applies each function's scaling (docs/manifest.md): min_workers
 * keep-warm preloads (kept resident: never an LRU victim, until no active version keeps
 * them warm), idle_timeout unloads, and no idle drain below a min_workers.
 *
 * Concurrency. One mutex (gw->mu) guards the view: functions and their queues, workers
 * and their pending calls. Decisions are taken under it; anything that may block or call
 * back (NNG sends, spawning, done callbacks, ledger submits) runs after it is released,
 * from "action lists" collected under the lock. NNG completion callbacks, the pool's
 * exit callback and the maintenance thread all follow that pattern. One exception: the
 * rows of the workers table (gw_worker_row_locked) are queued under the lock, because
 * the rows of one worker must reach the ledger in the order its state changed; that
 * submit is a copy into the ledger's bounded in-memory queue (ledger.h), never SQLite,
 * and the ledger never takes gw->mu.
 *
 * Not for: message formats (common/wire.h), the client front (front_nng.c), SQLite
 * statements (registry.c, ledger.c). */
#include "gateway/gateway.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/bounded_close.h"
#include "common/clock.h"
#include "common/durable.h"
#include "common/log.h"
#include "common/owndir.h"
#include "common/tunables.h"
#include "gateway/fairq.h"
#include "gateway/gateway_internal.h"
#include "gateway/gaveup.h"
#include "gateway/keys.h"
#include "gateway/loopback.h"
#include "gateway/metrics.h"
#include "gateway/pool.h"
#include "gateway/registry.h"
#include "gateway/respcache.h"
#include "gateway/router.h"
#include "gateway/workerlink.h"

#define GW_CRASH_SLOTS 32
#define GW_FAIRQ_MEMO 4 /* tenants refused a place in a full queue, remembered until it changes */
#define GW_TICK_MS 20       /* maintenance tick while calls run or queue, or workers start or die */
#define GW_IDLE_TICK_MS 250 /* ...while none do: drains, polls and unloads are due seconds apart */
#define GW_HOLD_US (2ull * 1000 * 1000) /* gateway-added LOADING entries survive summaries this long */
#define GW_POLL_TIMEOUT_MS 5000
/* An `exit` order is given up on after this (its worker exits without answering). */
#define GW_EXIT_TIMEOUT_MS 2000
#define GW_NO_MODEL_KEY "(no-model)"
#define GW_MAX_VIEW AICFN_GW_MAX_LIVE_WORKERS
#define GW_MAX_UNLOADS 32 /* idle unloads sent per maintenance tick; the rest wait a tick */

/* ---- Functions ------------------------------------------------------------------ */

typedef struct gw_crash {
    bool tenant;   /* a tenant's record (hash: gw_call.tenant_id), else a request's (gw_call.hash) */
    uint64_t hash;
    uint32_t crashes;
    uint64_t until_us;
    uint64_t last_us;
    uint64_t death; /* the worker death last charged (gw_worker.death): once per death */
} gw_crash;

typedef struct gw_call gw_call;

typedef struct gw_fn {
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t ver;
    char key[GW_HASH_HEX_LEN + 1]; /* snapshot hash: the model's identity; "" = no model */
    char handler_path[PATH_MAX];
    char snapshot_path[PATH_MAX];
    uint64_t model_bytes;
    gw_fn_config cfg;
    bool stale;   /* re-check the registry before the next use (after deploy/rm) */
    bool removed; /* by an rm (gw_functions_removed): no metrics once its queue is empty */
    gw_call *q_head, *q_tail; /* in the order of service (fairq.h): gw_call.q_tag nondecreasing */
    uint32_t q_len;
    uint64_t q_clock;   /* the tag of the last call served from the queue (fairq.h) */
    uint64_t q_changes; /* calls that joined or left the queue, ever: the refusal memo's clock */
    struct {
        uint64_t tenant, at; /* a tenant refused a place in the full queue at q_changes `at` */
    } fq_refused[GW_FAIRQ_MEMO];
    unsigned fq_next;
    gw_crash crash[GW_CRASH_SLOTS];
    uint32_t n_crash_records; /* slots with crashes > 0 (a successful call looks only then) */
    uint64_t evicted_us;      /* when a worker last evicted this model (0: never): thrash reloads */
    uint64_t load_us_last;    /* how long its model's last load took, as its caller waited (0: none
                                 seen): a call with less time left is not sent to load it */
    /* Scaling (gw_keep_warm_locked, gw_idle_unloads_locked). `warm`: the active version
     * of a function with scaling.min_workers > 0, kept warm (set by gw_scaling_refresh). */
    bool warm;
    bool warm_unmet_logged; /* "min_workers cannot be met" said once, until it is met */
    uint64_t warm_retry_us; /* a keep-warm preload failed: next try not before this */
    /* Moving means of its warm calls' worker time and reply size (gw_fn_is_short). */
    uint64_t svc_mean_us, reply_mean_bytes;
    uint32_t svc_samples;
    /* Who may still use this entry outside the lock: its calls (gw_call.fn), and whoever
     * gw_resolve handed it to until gw_fn_unref. Taken under the lock, or by one already
     * holding a reference; dropped anywhere. An entry without references, queue or
     * keep-warm, unused for the cache's idle time, is freed (gw_trim_fns_locked). */
    _Atomic uint32_t refs;
    uint64_t used_us; /* last resolved */
    struct gw_fn *next;
} gw_fn;

typedef struct gw_alias {
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    gw_fn *fn;                               /* the active version */
    uint32_t canary_version, canary_percent; /* gw_registry_set_canary; percent 0: none */
    uint64_t picks;                          /* calls that could go to the canary (gw_canary_pick) */
    struct gw_alias *next;
} gw_alias;

/* ---- Calls ---------------------------------------------------------------------- */

struct gw_call {
    gw_gateway *gw;
    gw_fn *fn;
    uint64_t id;
    uint64_t gid; /* unique in this gateway: what the worker's fault note names (ids collide) */
    char tenant[AICFN_TENANT_MAX_BYTES + 1];
    uint64_t tenant_id; /* gw_fairq_tenant_id(tenant): its turn and share in a queue */
    uint64_t q_tag;     /* while in its function's queue: its place in the order (fairq.h) */
    uint8_t *wreq; /* the request as the worker gets it (spec, tenant set) */
    size_t wreq_len;
    uint64_t bytes_in;
    uint64_t received_us, deadline_us, dispatched_us;
    uint32_t timeout_ms; /* what the worker was told (deadline_ms) */
    uint64_t hash;       /* of fn + inputs + params: crash back-off identity */
    uint8_t *cache_key;  /* response cache key (cache.responses functions); NULL otherwise */
    size_t cache_key_len;
    int attempts;
    bool spawned; /* routed to a worker still starting: its cold start includes the spawn */
    bool preload; /* a repository load (t:"preload"): routed like an invoke, no handler call, no ledger row */
    bool keepwarm; /* a preload placing a replica for scaling.min_workers (never on a holder) */
    gw_worker *worker;
    /* The worker's name and device for the records, copied under the lock when the call
     * leaves it (gw_call_left_locked, gw_fail_locked): a record is written after the lock
     * is released, when the worker may already be destroyed. "" when none. */
    char worker_name[sizeof((gw_worker *)0)->name];
    char worker_device[sizeof((gw_worker *)0)->device];
    uint64_t worker_serial; /* the record's serial (gw_worker.serial); 0 when none */
    bool short_msg; /* a call of a short function: its message counts in worker->short_msgs */
    int code;       /* for the fail list */
    char message[256];
    gw_invoke_done_fn done;
    void *user;
    gw_call *next;
};

/* Calls of short functions leaving together for one worker in one message
 * (t:"bundle", docs/protocol.md §9). */
typedef struct gw_bundle {
    gw_gateway *gw;
    gw_worker *w;
    uint32_t n;
    gw_call *calls[AICFN_BUNDLE_MAX_CALLS];
    struct gw_bundle *next;
} gw_bundle;

/* What to do once the lock is released. */
typedef struct gw_actions {
    gw_call *sends;
    gw_bundle *bundles;
    gw_call *fails;
    gw_worker *spawns[8];
    size_t n_spawns;
    gw_worker *polls[GW_MAX_VIEW];
    size_t n_polls;
    gw_worker *destroys[GW_MAX_VIEW];
    size_t n_destroys;
    gw_worker *exits[GW_MAX_VIEW]; /* killed registered workers to send `exit` (callbacks++ taken) */
    size_t n_exits;
    struct {
        gw_worker *w; /* callbacks++ taken under the lock */
        char key[GW_HASH_HEX_LEN + 1];
        char fn[AICFN_FN_NAME_MAX_BYTES + 1]; /* for the log line */
        uint32_t ver;
        uint64_t idle_ms;
        bool keep_only;        /* only end the keep (the model no active version keeps warm) */
    } unloads[GW_MAX_UNLOADS]; /* idle models to unload (scaling.idle_timeout), keeps to end */
    size_t n_unloads;
} gw_actions;

struct gw_gateway {
    char *listen;
    char *data_dir;
    int data_lock_fd; /* <data>/gateway.lock, flock'd for the gateway's life; -1: none */
    gw_db *query_db;  /* read-only connection for long reports (coldstarts), NULL: use db */
    gw_db *read_db;   /* read-only connection for the call path's reads (functions, keys), so
                         they never wait behind a write transaction; NULL: use db */
    char run_dir[PATH_MAX];
    bool run_dir_temporary; /* a mkdtemp directory in /tmp (data dir's path too long): removed at stop */
    char *device;
    char *worker_exe;
    uint32_t min_workers, max_workers;
    uint32_t max_remote_workers; /* live registered workers at most (each holds a link and polls) */
    uint64_t idle_timeout_us;
    uint64_t worker_memory;
    uint64_t local_budget_seen; /* the largest budget a local worker reported (0: none yet) */
    bool insecure_local;
    uint64_t upload_idle_us;
    gw_bundle_mode bundles; /* --bundles (gateway.h) */

    gw_db *db;
    gw_artifacts *art;
    gw_ledger *ledger;
    gw_pool *pool;
    gw_front *front;
    gw_metrics *metrics; /* one registry for every front (GET /metrics) */
    gw_stdmetrics std;
    gw_limits *limits;       /* rate limits and daily quotas, shared by every front */
    gw_respcache *respcache; /* replies of cache.responses functions (respcache.h) */
    gw_gaveup *gaveup;       /* calls that timed out at a worker: whom its abandoned loads bill */

    pthread_mutex_t mu;
    gw_fn *fns;
    gw_alias *aliases;
    gw_worker *workers;
    uint32_t next_remote;
    uint64_t next_poll_id;
    uint64_t next_gid; /* gw_call.gid */
    bool stopping;

    pthread_t maint;
    bool maint_started;
    pthread_cond_t maint_cv;
    uint64_t ledger_dropped_shown; /* gw_ledger_stats.dropped already counted (gw_metrics_refresh) */
    uint64_t nng_stuck_shown;      /* bounded_close_stuck() already counted (gw_metrics_refresh) */
    /* Threads inside gw_pool_spawn (they took gw->pool under mu); gw_stop takes the pool
     * away and waits for them (spawn_cv) before it destroys the pool. */
    unsigned spawning;
    pthread_cond_t spawn_cv;
    uint64_t fn_gen;           /* bumped by gw_functions_changed (deploy, rm): see gw_resolve_read */
    uint64_t fn_idle_us;       /* a cached function entry unused this long is freed (gw_trim_fns_locked) */
    uint64_t fn_trim_at_us;    /* the next trim, not before */
    bool maint_idle;           /* the maintenance thread sleeps GW_IDLE_TICK_MS: wake it for work */
    bool scaling_dirty;        /* functions changed: re-read which ones keep workers warm */
    uint64_t scaling_retry_us; /* a failed re-read is tried again from then */
    /* Local workers that died before they were ready, in a row (reset by one that gets
     * ready), and when the next may start: one that cannot start (--device cuda without
     * a GPU, a broken install) is retried with doubling back-off, not at every tick. */
    unsigned start_failures;
    uint64_t last_start_failure_us;
    uint64_t spawn_not_before_us;
    uint64_t deaths; /* workers that died (gw_worker.death) */
    uint32_t settling; /* dead workers settling (gw_worker.settling) */
};

static void gw_process(gw_gateway *gw, gw_actions *a);

/* Something the maintenance thread must see within GW_TICK_MS began (a call queued or
 * held back for a bundle, a worker starting or dead, functions changed): end its idle
 * sleep (lock held). Calls put in flight do not wake it: it ticks fast while any are,
 * but a call's own timeout is NNG's, so the next tick may come GW_IDLE_TICK_MS later. */
static void gw_maint_wake_locked(gw_gateway *gw) {
    if (!gw->maint_idle) return;
    gw->maint_idle = false;
    pthread_cond_signal(&gw->maint_cv);
}
static bool gw_fn_is_short(const gw_fn *f);
static bool gw_bundles_to(const gw_gateway *gw, const gw_worker *w);
static void gw_bundle_cb(void *user, int status, rpc_msg *reply, const aicfn_error *err);
static void gw_route_locked(gw_gateway *gw, gw_call *c, gw_actions *a);
static gw_call *gw_preload_call_new(gw_gateway *gw, gw_fn *f, bool keep, gw_invoke_done_fn done, void *user);
static int gw_send_unload(gw_gateway *gw, gw_worker *w, const char *key, bool keep_only, rpc_done_fn cb,
                          void *user, aicfn_error *err);
static void gw_idle_unload_start(gw_gateway *gw, gw_worker *w, const char *key, const char *fn, uint32_t ver,
                                 uint64_t idle_ms, bool keep_only);

gw_db *gw_gateway_db(gw_gateway *gw) {
    return gw->db;
}
gw_db *gw_gateway_query_db(gw_gateway *gw) {
    return gw->query_db ? gw->query_db : gw->db;
}
gw_db *gw_gateway_read_db(gw_gateway *gw) {
    return gw->read_db ? gw->read_db : gw->db;
}
gw_artifacts *gw_gateway_artifacts(gw_gateway *gw) {
    return gw->art;
}
gw_ledger *gw_gateway_ledger(gw_gateway *gw) {
    return gw->ledger;
}
gw_metrics *gw_gateway_metrics(gw_gateway *gw) {
    return gw->metrics;
}
const gw_stdmetrics *gw_gateway_stdmetrics(gw_gateway *gw) {
    return &gw->std;
}
const char *gw_listen_url(const gw_gateway *gw) {
    return gw->front ? gw_front_url(gw->front) : gw->listen;
}

static void gw_fail_locked(gw_actions *a, gw_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Copies the name, device and serial of w (c's worker, or NULL) into c for its records
 * (lock held). */
static void gw_call_note_worker_locked(gw_call *c, const gw_worker *w) {
    snprintf(c->worker_name, sizeof c->worker_name, "%s", w ? w->name : "");
    snprintf(c->worker_device, sizeof c->worker_device, "%s", w ? w->device : "");
    c->worker_serial = w ? w->serial : 0;
}

static void gw_fail_locked(gw_actions *a, gw_call *c, int code, const char *fmt, ...) {
    gw_call_note_worker_locked(c, c->worker);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof c->message, fmt, ap);
    va_end(ap);
    c->code = code;
    c->next = a->fails;
    a->fails = c;
}

static void gw_fn_ref(gw_fn *f) {
    atomic_fetch_add(&f->refs, 1);
}

static void gw_fn_unref(gw_fn *f) {
    if (f) atomic_fetch_sub(&f->refs, 1);
}

static void gw_call_free(gw_call *c) {
    if (!c) return;
    gw_fn_unref(c->fn); /* the call's reference */
    free(c->wreq);
    free(c->cache_key);
    free(c);
}

/* ---- Worker rows (the workers table) -------------------------------------------- */

/* Queues w's row in the workers table with state `st` (lock held: see the top of the
 * file). A local worker whose fork has not returned yet has no name and gets no row. */
static void gw_worker_row_locked(gw_gateway *gw, const gw_worker *w, gw_worker_row_state st) {
    if (!gw->ledger || (w->pool_id == 0 && w->addr[0] == 0)) return;
    bool seen = w->last_seen_wall_us != 0;
    gw_worker_record r = {.id = w->name,
                          .address = w->addr,
                          .device = w->device,
                          .budget_bytes = seen ? w->budget_bytes : 0,
                          .pid = w->pid,
                          .started_us = w->started_wall_us,
                          .last_seen_us = seen ? w->last_seen_wall_us : w->started_wall_us,
                          .state = st};
    int rc = gw_ledger_submit_worker(gw->ledger, &r);
    if (rc != AICFN_OK && rc != AICFN_E_OVERLOADED) /* a full queue was logged by the ledger */
        log_warn("worker %s: its '%s' row was not queued: %s", w->name, gw_worker_row_state_name(st),
                 aicfn_strerror(rc));
}

/* The row state of a live worker's view. */
static gw_worker_row_state gw_row_state(const gw_worker *w) {
    switch (w->state) {
    case GW_WORKER_STARTING:
        return GW_WROW_STARTING;
    case GW_WORKER_READY:
        return GW_WROW_READY;
    case GW_WORKER_DRAINING:
        return GW_WROW_DRAINING;
    case GW_WORKER_DEAD:
        break;
    }
    return GW_WROW_LOST;
}

/* Applies a worker's piggybacked summary; a worker that says it drains gets its row. (A
 * drain the gateway did not start may take as long as the worker's calls in flight: the
 * pool's SIGKILL grace starts only when the worker closes its link, gw_worker_dead_locked.) */
/* Keeps the largest budget a local worker reported (gw_new_budget). */
static void gw_note_local_budget_locked(gw_gateway *gw, const gw_worker *w, uint64_t budget) {
    if (w->pool_id && budget > gw->local_budget_seen) gw->local_budget_seen = budget;
}

static void gw_apply_summary_locked(gw_gateway *gw, gw_worker *w, const wire_worker_summary *s,
                                    uint64_t now) {
    gw_worker_state before = w->state;
    gw_worker_apply_summary(w, s, now);
    gw_note_local_budget_locked(gw, w, s->budget_bytes);
    if (w->state != before && w->state == GW_WORKER_DRAINING) gw_worker_row_locked(gw, w, GW_WROW_DRAINING);
}

/* ---- Function resolution (cached) ----------------------------------------------- */

static gw_fn *gw_fn_find(gw_gateway *gw, const char *name, uint32_t ver) {
    for (gw_fn *f = gw->fns; f; f = f->next)
        if (f->ver == ver && strcmp(f->name, name) == 0) return f;
    return NULL;
}

static gw_alias *gw_alias_get(gw_gateway *gw, const char *name) {
    for (gw_alias *al = gw->aliases; al; al = al->next)
        if (strcmp(al->name, name) == 0) return al;
    return NULL;
}

static gw_fn *gw_alias_find(gw_gateway *gw, const char *name) {
    gw_alias *al = gw_alias_get(gw, name);
    return al ? al->fn : NULL;
}

/* Whether this call to al's plain NAME goes to its canary (lock held): a low-discrepancy
 * walk over 0..99 per name, so any 100 consecutive calls to NAME send exactly
 * canary_percent of them (61 is prime to 100). */
static bool gw_canary_pick(gw_alias *al) {
    uint64_t k = al->picks++;
    return (k * 61 + 17) % 100 < al->canary_percent;
}

void gw_functions_changed(gw_gateway *gw) {
    pthread_mutex_lock(&gw->mu);
    gw->fn_gen++; /* a resolve reading the registry meanwhile must not cache what it read */
    while (gw->aliases) {
        gw_alias *n = gw->aliases->next;
        free(gw->aliases);
        gw->aliases = n;
    }
    for (gw_fn *f = gw->fns; f; f = f->next)
        f->stale = true;
    gw->scaling_dirty = true; /* the maintenance thread re-reads who keeps workers warm */
    gw->scaling_retry_us = 0;
    gw_maint_wake_locked(gw);
    pthread_mutex_unlock(&gw->mu);
}

void gw_functions_removed(gw_gateway *gw, const char *name, uint32_t version) {
    pthread_mutex_lock(&gw->mu);
    for (gw_fn *f = gw->fns; f; f = f->next)
        if (strcmp(f->name, name) == 0 && (version == 0 || f->ver == version)) f->removed = true;
    pthread_mutex_unlock(&gw->mu);
    gw_stdmetrics_forget(&gw->std, name, version);
}

/* Reads NAME (ver 0: active) from the registry into the cache (lock NOT held; taken
 * inside). `gen`: gw->fn_gen when the cache missed. When functions changed since (a
 * deploy or rm committed while the registry was read, gw_functions_changed), what was
 * read may be old already: then, unless `final`, nothing is marked fresh and *raced is
 * set (the caller resolves again); with `final` the entry is used but still not cached
 * as fresh nor as the active version. */
static int gw_resolve_read(gw_gateway *gw, const char *name, uint32_t ver, uint64_t gen, bool final,
                           gw_fn **out, bool *raced, aicfn_error *err) {
    *raced = false;
    gw_function rec;
    memset(&rec, 0, sizeof rec);
    int rc = gw_registry_get(gw_gateway_read_db(gw), name, ver, &rec, err);
    if (rc != AICFN_OK) return rc;
    uint32_t canary_ver = 0, canary_pct = 0; /* none when it cannot be read */
    if (ver == 0) (void)gw_registry_get_canary(gw_gateway_read_db(gw), name, &canary_ver, &canary_pct, NULL);
    gw_fn *nf = calloc(1, sizeof *nf);
    if (!nf) {
        gw_function_clear(&rec);
        return aicfn_error_set(err, AICFN_E_NOMEM, "resolving %s: out of memory", name);
    }
    snprintf(nf->name, sizeof nf->name, "%s", rec.name);
    nf->ver = rec.version;
    snprintf(nf->key, sizeof nf->key, "%s", rec.snapshot_hash);
    nf->model_bytes = rec.model_raw_bytes;
    rc = gw_artifacts_path(gw->art, rec.handler_hash, nf->handler_path, sizeof nf->handler_path, err);
    if (rc == AICFN_OK && rec.snapshot_hash[0])
        rc = gw_artifacts_path(gw->art, rec.snapshot_hash, nf->snapshot_path, sizeof nf->snapshot_path, err);
    if (rc == AICFN_OK)
        rc = gw_fn_config_from_string(rec.config_json && rec.config_json[0] ? rec.config_json : "{}",
                                      &nf->cfg, err);
    gw_function_clear(&rec);
    if (rc != AICFN_OK) {
        free(nf);
        return aicfn_error_wrap(err, "function %s", name);
    }

    pthread_mutex_lock(&gw->mu);
    bool current = gw->fn_gen == gen;
    if (!current && !final) {
        pthread_mutex_unlock(&gw->mu);
        gw_fn_config_clear(&nf->cfg);
        free(nf);
        *raced = true;
        return AICFN_OK;
    }
    gw_fn *f = gw_fn_find(gw, nf->name, nf->ver);
    if (f) {
        if (current) f->stale = false;
        gw_fn_config_clear(&nf->cfg);
        free(nf);
    } else {
        f = nf;
        f->stale = !current;
        f->next = gw->fns;
        gw->fns = f;
    }
    if (current && ver == 0 && !gw_alias_find(gw, name)) {
        gw_alias *al = calloc(1, sizeof *al);
        if (al) {
            snprintf(al->name, sizeof al->name, "%s", name);
            al->fn = f;
            al->canary_version = canary_ver;
            al->canary_percent = canary_pct;
            al->next = gw->aliases;
            gw->aliases = al;
        }
    }
    gw_fn_ref(f);
    f->used_us = clock_now_us();
    *out = f;
    pthread_mutex_unlock(&gw->mu);
    return AICFN_OK;
}

/* Resolves NAME (ver 0: active; with `canary`, for its share of the calls NAME's canary
 * version) to a cached entry, reading the registry on a miss, and returns it referenced
 * (gw_fn_unref when done, or hand the reference to a call). A read that raced a deploy
 * or rm is read again (at most four times in all: then the last read is used, uncached). */
static int gw_resolve_pick(gw_gateway *gw, const char *name, uint32_t ver, bool canary, gw_fn **out,
                           aicfn_error *err) {
    for (int attempt = 0;; attempt++) {
        pthread_mutex_lock(&gw->mu);
        uint32_t want = ver; /* the version to read on a miss: 0 = the active one */
        gw_fn *f;
        if (ver) {
            f = gw_fn_find(gw, name, ver);
        } else {
            gw_alias *al = gw_alias_get(gw, name);
            f = al ? al->fn : NULL;
            if (canary && al && al->canary_percent && gw_canary_pick(al)) {
                want = al->canary_version;
                f = gw_fn_find(gw, name, want);
            }
        }
        if (f && !f->stale) {
            gw_fn_ref(f);
            f->used_us = clock_now_us();
            *out = f;
            pthread_mutex_unlock(&gw->mu);
            return AICFN_OK;
        }
        uint64_t gen = gw->fn_gen;
        pthread_mutex_unlock(&gw->mu);
        bool raced = false;
        int rc = gw_resolve_read(gw, name, want, gen, attempt >= 3, out, &raced, err);
        if (rc != AICFN_OK || !raced) return rc;
    }
}

/* The version a client's call of NAME[:ver] runs: the canary's, for its share of calls. */
static int gw_resolve_call(gw_gateway *gw, const char *name, uint32_t ver, gw_fn **out, aicfn_error *err) {
    return gw_resolve_pick(gw, name, ver, true, out, err);
}

/* NAME[:ver] for the gateway itself (loads, unloads, records): the active version. */
static int gw_resolve(gw_gateway *gw, const char *name, uint32_t ver, gw_fn **out, aicfn_error *err) {
    return gw_resolve_pick(gw, name, ver, false, out, err);
}

int gw_fn_signature(gw_gateway *gw, const char *name, uint32_t ver, gw_tensor_spec *inputs, size_t *n_inputs,
                    gw_tensor_spec *outputs, size_t *n_outputs, size_t cap, uint32_t *resolved,
                    aicfn_error *err) {
    *n_inputs = *n_outputs = 0;
    if (!gw_fn_name_valid(name))
        return aicfn_error_set(err, AICFN_E_INVALID, "'%.64s' is not a function name", name);
    gw_fn *f = NULL;
    int rc = gw_resolve_call(gw, name, ver, &f, err);
    if (rc != AICFN_OK) return rc;
    /* A cached entry's config never changes (a version is immutable): no lock needed.
     * inputs/outputs are NULL when none are declared. */
    *n_inputs = f->cfg.n_inputs < cap ? f->cfg.n_inputs : cap;
    if (*n_inputs) memcpy(inputs, f->cfg.inputs, *n_inputs * sizeof *inputs);
    *n_outputs = f->cfg.n_outputs < cap ? f->cfg.n_outputs : cap;
    if (*n_outputs) memcpy(outputs, f->cfg.outputs, *n_outputs * sizeof *outputs);
    *resolved = f->ver;
    gw_fn_unref(f);
    return AICFN_OK;
}

/* ---- Crash back-off ------------------------------------------------------------- */

/* The crash record of request `hash` of f (with `tenant`: of the tenant whose
 * gw_call.tenant_id is `hash`), or with create a new one in place of an empty slot or else
 * of the oldest one not backing off (a flood of one-crash records never pushes out a
 * request or tenant being refused), never `keep`; NULL when there is none to take. */
static gw_crash *gw_crash_slot(gw_fn *f, bool tenant, uint64_t hash, bool create, uint64_t now,
                               const gw_crash *keep) {
    gw_crash *victim = NULL;
    for (int i = 0; i < GW_CRASH_SLOTS; i++) {
        gw_crash *s = &f->crash[i];
        if (s->crashes && s->tenant == tenant && s->hash == hash) return s;
        if (s == keep) continue;
        if (s->crashes == 0) {
            if (!victim || victim->crashes) victim = s;
        } else if (s->until_us <= now && (!victim || (victim->crashes && s->last_us < victim->last_us))) {
            victim = s;
        }
    }
    if (!create || !victim) return NULL;
    if (victim->crashes) f->n_crash_records--;
    memset(victim, 0, sizeof *victim);
    victim->tenant = tenant;
    victim->hash = hash;
    victim->last_us = now;
    return victim;
}

/* The crash record refusing call c of f at `now`: its request's (it crashed its worker
 * twice) or its tenant's (AICFN_CRASH_TENANT_MAX crashes), while its back-off runs; NULL
 * when the call may run (lock held). */
static const gw_crash *gw_crash_refusing(gw_fn *f, const gw_call *c, uint64_t now) {
    if (f->n_crash_records == 0) return NULL;
    const gw_crash *cr = gw_crash_slot(f, false, c->hash, false, now, NULL);
    if (cr && cr->until_us > now) return cr;
    cr = gw_crash_slot(f, true, c->tenant_id, false, now, NULL);
    return cr && cr->until_us > now ? cr : NULL;
}

/* The refusal's message for cr (of call c of f) at `now`. */
static void gw_crash_refusal(const gw_fn *f, const gw_call *c, const gw_crash *cr, uint64_t now, char *out,
                             size_t cap) {
    unsigned long long left = (cr->until_us - now) / 1000;
    if (cr->tenant) /* fits gw_call.message with the longest names */
        snprintf(out, cap, "function %s:%u: calls of tenant '%s' crashed its workers %u times; refused for %llu ms more",
                 f->name, f->ver, c->tenant, cr->crashes, left);
    else
        snprintf(out, cap, "function %s:%u: this request crashed its worker %u times; refused for %llu ms more",
                 f->name, f->ver, cr->crashes, left);
}

/* Empties a crash record. */
static void gw_crash_forget(gw_fn *f, gw_crash *cr) {
    if (cr->crashes) f->n_crash_records--;
    memset(cr, 0, sizeof *cr);
}

/* Whether call c is charged with the death of worker w, which it was in flight on (lock
 * held): not when the gateway ended the worker or is stopping; when the worker left a
 * fault note, only a call the note names (the others were bystanders: other functions,
 * other batches); without one, every call in flight (nothing tells them apart). */
static bool gw_crash_charged(gw_gateway *gw, const gw_worker *w, const gw_call *c) {
    if (w->killed || gw->stopping) return false;
    const gw_fault_note *fn = w->fault;
    if (fn == NULL) return true;
    if (fn->ver != c->fn->ver || strcmp(fn->fn, c->fn->name) != 0) return false;
    for (uint32_t i = 0; i < fn->n; i++)
        if (fn->ids[i] == c->gid) return true;
    return false;
}

/* ---- Records -------------------------------------------------------------------- */

/* a + b, UINT64_MAX when that overflows: worker timings are the wire's, so a sum of them
 * must not wrap to a small number before the ledger caps it (AICFN_LEDGER_AMOUNT_MAX). */
static uint64_t gw_add_sat(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static void gw_record_cold_start(gw_gateway *gw, gw_call *c, const wire_timing *t, const wire_coldstart *rc,
                                 uint64_t spawn_us);

static void gw_record(gw_gateway *gw, gw_call *c, int code, const wire_invoke_reply *rep, size_t bytes_out,
                      uint64_t spawn_us) {
    if (c->preload) return; /* not an invocation */
    uint64_t now = clock_now_us();
    char rid[24];
    snprintf(rid, sizeof rid, "%llu", (unsigned long long)c->id);
    uint64_t gw_queue = c->dispatched_us > c->received_us ? c->dispatched_us - c->received_us : 0;
    /* What a worker (a remote one may be hostile) says the call cost is at most the time
     * it spent there: it waited through the load and init it pays a share of, and its
     * batch's handler run. +2 us: a share of each is rounded up. */
    uint64_t at_worker = c->dispatched_us && now > c->dispatched_us ? now - c->dispatched_us + 2 : 0;
    uint64_t exec_us = rep ? rep->timing.exec_us : 0, cold_share_us = rep ? rep->timing.cold_share_us : 0;
    if (exec_us > at_worker || cold_share_us > at_worker)
        log_warn("worker %s: call %llu: reply claims %llu us of handler and %llu us of cold start in %llu us "
                 "there: capped",
                 c->worker_name, (unsigned long long)c->gid, (unsigned long long)exec_us,
                 (unsigned long long)cold_share_us, (unsigned long long)at_worker);
    if (exec_us > at_worker) exec_us = at_worker;
    if (cold_share_us > at_worker) cold_share_us = at_worker;
    gw_invocation_record r = {
        .time_us = clock_wall_us(),
        .call_id = c->gid,
        .request_id = rid,
        .tenant = c->tenant,
        .function = c->fn ? c->fn->name : "",
        .version = c->fn ? c->fn->ver : 0,
        .worker = c->worker_name[0] ? c->worker_name : NULL,
        .device = c->worker_device[0] ? c->worker_device : NULL,
        .status = code,
        .batch_size = rep ? rep->batch : 0,
        .bytes_in = c->bytes_in,
        .bytes_out = bytes_out,
        .queue_us = gw_add_sat(gw_queue, rep ? rep->timing.queue_us : 0),
        .load_us = rep ? rep->timing.load_us : 0,
        .exec_us = exec_us,
        .total_us = now - c->received_us,
        .load_gpu_us = cold_share_us,
        .cold = rep ? rep->cold : false,
    };
    gw_ledger_submit_invocation(gw->ledger, &r);
    gw_stdmetrics_call(&gw->std, r.function, r.version, code, r.total_us);
    if (rep && rep->has_coldstart) gw_record_cold_start(gw, c, &rep->timing, &rep->coldstart, spawn_us);
    if (code == AICFN_E_TIMEOUT && rep && c->worker_name[0] && c->fn &&
        c->dispatched_us) { /* the worker had it and gave it up: it may have made a load */
        uint64_t since_sent = now > c->dispatched_us ? now - c->dispatched_us : 0;
        gw_gaveup_call g = {.gid = c->gid,
                            .row_us = r.time_us,
                            .sent_us = r.time_us - since_sent,
                            .worker = c->worker_serial,
                            .charged_us = gw_add_sat(gw_ledger_gpu_us(exec_us, r.batch_size), cold_share_us),
                            .ver = c->fn->ver};
        snprintf(g.fn, sizeof g.fn, "%s", c->fn->name);
        /* The worker's status may have listed a load this call made before this reply was
         * handled: its share was held for now (gw_bill_abandoned_load). */
        uint64_t held = gw_gaveup_note(gw->gaveup, &g), charge = gw_gaveup_charge(&g, held, r.time_us);
        if (charge) {
            if (gw_ledger_submit_load_charge(gw->ledger, c->gid, r.time_us, charge) == AICFN_OK)
                log_info("worker %s: function %s:%u: call %llu pays its share of an abandoned load listed "
                         "before its timeout (%llu us)",
                         c->worker_name, c->fn->name, c->fn->ver, (unsigned long long)c->gid,
                         (unsigned long long)charge);
        }
    }
}

/* The cold_starts row of one load of function `name`:`ver` (fn: its cached entry, NULL
 * when this gateway has none) on a worker, from the worker's timing t and record rc;
 * gw_queue and spawn_us are the gateway's part (lock NOT held). */
static void gw_record_load(gw_gateway *gw, gw_fn *fn, const char *name, uint32_t ver, const char *worker,
                           const char *device, uint64_t gw_queue, uint64_t spawn_us, const wire_timing *t,
                           const wire_coldstart *rc) {
    const char *ev[WIRE_MAX_EVICTED];
    char evbuf[16][AICFN_FN_NAME_MAX_BYTES + 16];
    size_t n_ev = 0;
    bool thrash = false;
    uint64_t wall = clock_now_us();
    pthread_mutex_lock(&gw->mu);
    /* A reload soon after this model's eviction is a thrash reload. */
    if (fn && fn->evicted_us && wall - fn->evicted_us <= AICFN_THRASH_WINDOW_US) thrash = true;
    if (fn) fn->evicted_us = 0;
    if (fn && t->load_us) fn->load_us_last = t->load_us;
    for (uint32_t i = 0; i < rc->n_evicted && n_ev < WIRE_MAX_EVICTED; i++) {
        const char *key = rc->evicted[i];
        ev[n_ev] = key;
        for (gw_fn *f = gw->fns; f; f = f->next)
            if (key && strcmp(f->key, key) == 0) {
                f->evicted_us = wall;
                if (n_ev < 16 && ev[n_ev] == key) { /* named after the first function using it */
                    snprintf(evbuf[n_ev], sizeof evbuf[n_ev], "%s:%u", f->name, f->ver);
                    ev[n_ev] = evbuf[n_ev];
                }
            }
        n_ev++;
    }
    pthread_mutex_unlock(&gw->mu);
    if (n_ev) {
        const char *wl[] = {worker ? worker : ""};
        gw_metric_add(gw->std.evictions, wl, (double)n_ev);
    }
    if (thrash) {
        const char *fl[] = {name};
        gw_metric_add(gw->std.thrash_reloads, fl, 1);
    }
    /* A call that waited for its worker to start was held for the spawn: not queueing. */
    gw_queue = gw_queue > spawn_us ? gw_queue - spawn_us : 0;
    /* The worker times the handler's init after the model wait, apart from it. */
    uint64_t total = gw_add_sat(gw_add_sat(spawn_us, gw_queue),
                                gw_add_sat(gw_add_sat(t->queue_us, t->load_us), t->init_us));
    gw_cold_start_record cs = {
        .function = name,
        .version = ver,
        .worker = worker,
        .device = device,
        .compressed_bytes = rc->compressed_bytes,
        .raw_bytes = rc->raw_bytes,
        .spawn_us = spawn_us,
        .queue_us = gw_add_sat(gw_queue, t->queue_us),
        .fetch_us = t->fetch_us,
        .read_us = t->read_us,
        .decompress_us = t->decompress_us,
        .filter_us = t->filter_us,
        .copy_us = t->copy_us,
        .init_us = t->init_us,
        .total_us = total,
        .evicted = ev,
        .n_evicted = n_ev,
    };
    gw_ledger_submit_cold_start(gw->ledger, &cs);
    gw_stdmetrics_cold_start(&gw->std, name, t->fetch_us, t->read_us, t->decompress_us, t->filter_us,
                             t->copy_us, total);
}

/* The cold_starts row of the load call (or preload) c made (lock NOT held). */
static void gw_record_cold_start(gw_gateway *gw, gw_call *c, const wire_timing *t, const wire_coldstart *rc,
                                 uint64_t spawn_us) {
    if (!c->fn) return;
    uint64_t gw_queue = c->dispatched_us > c->received_us ? c->dispatched_us - c->received_us : 0;
    gw_record_load(gw, c->fn, c->fn->name, c->fn->ver, c->worker_name[0] ? c->worker_name : NULL,
                   c->worker_device[0] ? c->worker_device : NULL, gw_queue, spawn_us, t, rc);
}

/* The worker a status answer came from, named for gw_record_unreported_loads (copied under
 * the lock: the worker may go once it is released). */
typedef struct gw_load_source {
    char worker[sizeof(((gw_worker *)0)->name)];
    uint64_t worker_serial;
    char device[sizeof(((gw_worker *)0)->device)];
    gw_fn *fns[WIRE_MAX_UNREPORTED_LOADS]; /* per load: its cached function, or NULL */
    bool seen[WIRE_MAX_UNREPORTED_LOADS];  /* per load: recorded from an earlier reply */
} gw_load_source;

/* A worker that numbers its loads lists each until a poll acknowledges it (w.loads in
 * docs/protocol.md): one listed again, seq <= the highest recorded, is not recorded
 * twice; unnumbered ones (seq 0) come once and are always recorded. */
static void gw_load_source_locked(gw_gateway *gw, gw_worker *w, const wire_worker_status *st,
                                  gw_load_source *src) {
    if (st->n_loads == 0) return;
    snprintf(src->worker, sizeof src->worker, "%s", w->name);
    src->worker_serial = w->serial;
    snprintf(src->device, sizeof src->device, "%s", w->device);
    uint64_t recorded = w->loads_recorded;
    for (uint32_t i = 0; i < st->n_loads && i < WIRE_MAX_UNREPORTED_LOADS; i++) {
        uint64_t seq = st->loads[i].seq;
        src->seen[i] = seq != 0 && seq <= w->loads_recorded;
        src->fns[i] = src->seen[i] ? NULL : gw_fn_find(gw, st->loads[i].fn, st->loads[i].ver);
        if (src->fns[i]) gw_fn_ref(src->fns[i]); /* gw_record_unreported_loads drops it */
        if (seq > recorded) recorded = seq;
    }
    __atomic_store_n(&w->loads_recorded, recorded, __ATOMIC_RELAXED);
}

/* Bills load l, which the worker of src made for a batch whose calls all gave up before
 * it ended, to those calls, as their replies would have (wire_timing.cold_share_us: the
 * load's device time split over the batch): each call of the batch that this gateway
 * sent there and saw time out (gaveup.h) pays its share on its ledger row. */
static void gw_bill_abandoned_load(gw_gateway *gw, const gw_load_source *src, const wire_unreported_load *l,
                                   uint32_t *holds_left) {
    if (l->makers == 0 || l->timing.cold_share_us == 0) return; /* a worker that does not say */
    uint64_t share = l->timing.cold_share_us / l->makers + (l->timing.cold_share_us % l->makers != 0);
    uint32_t billed = 0, held = 0;
    for (uint32_t k = 0; k < l->n_calls; k++) {
        gw_gaveup_call g;
        uint64_t now = clock_wall_us();
        /* A call not in the book yet may have its timeout reply still on its way through
         * the gateway: its share is held for it (billed when it is noted, gw_record), a
         * status's worth of calls at most. */
        gw_gaveup_taken t = gw_gaveup_take(gw->gaveup, l->calls[k], src->worker_serial, l->fn, l->ver, now,
                                           *holds_left ? share : 0, &g);
        if (t == GW_GAVEUP_HELD) {
            held++;
            (*holds_left)--;
        }
        if (t != GW_GAVEUP_TAKEN) continue;
        uint64_t charge = gw_gaveup_charge(&g, share, now);
        if (charge && gw_ledger_submit_load_charge(gw->ledger, g.gid, g.row_us, charge) == AICFN_OK) billed++;
    }
    if (billed < l->makers)
        log_info(
            "worker %s: function %s:%u: the abandoned load is billed to %u of the %u calls that made it, "
            "%u held for timeouts not yet seen (%llu us each; the others are not calls this gateway saw "
            "time out there)",
            src->worker, l->fn, l->ver, billed, l->makers, held, (unsigned long long)share);
}

/* The loads a worker's status lists because no reply carried them (every call waiting
 * for the model gave up first): a cold start each all the same (lock NOT held). Drops
 * the references gw_load_source_locked took: it must follow each such call. */
static void gw_record_unreported_loads(gw_gateway *gw, const wire_worker_status *st,
                                       const gw_load_source *src) {
    if (st->n_loads == 0) return;
    uint32_t holds_left = AICFN_GW_GAVE_UP_HOLDS_PER_WORKER;
    for (uint32_t i = 0; i < st->n_loads && i < WIRE_MAX_UNREPORTED_LOADS; i++) {
        const wire_unreported_load *l = &st->loads[i];
        if (src->seen[i]) continue;
        gw_fn *fn = src->fns[i];
        aicfn_error e;
        if (fn == NULL &&
            (!gw_fn_name_valid(l->fn) || l->ver == 0 || gw_resolve(gw, l->fn, l->ver, &fn, &e))) {
            /* Not a version in the registry: no record, and no metric series for it. */
            log_warn("worker %s lists a load of %.64s:%u, not a deployed version: ignored", src->worker,
                     l->fn, l->ver);
            continue;
        }
        log_info("worker %s: function %s:%u: a load its calls gave up on became resident (%llu us)",
                 src->worker, l->fn, l->ver, (unsigned long long)l->timing.load_us);
        gw_record_load(gw, fn, l->fn, l->ver, src->worker, src->device[0] ? src->device : NULL, 0, 0,
                       &l->timing, &l->coldstart);
        gw_bill_abandoned_load(gw, src, l, &holds_left);
        gw_fn_unref(fn);
    }
}

/* ---- Routing and dispatch (lock held) ------------------------------------------- */

/* Local worker processes not yet gone (draining ones, and dead ones not yet reaped: they
 * may still hold their device memory), which --workers MAX bounds. */
static uint32_t gw_local_alive(gw_gateway *gw) {
    uint32_t n = 0;
    for (gw_worker *w = gw->workers; w; w = w->next)
        if (w->pool_id != 0 || (w->state == GW_WORKER_STARTING && w->addr[0] == 0))
            if (w->state != GW_WORKER_DEAD ||
                (w->pool_id && gw->pool && gw_pool_pid(gw->pool, w->pool_id) >= 0))
                n++;
    return n;
}

/* Local workers starting or serving (not draining), which --workers MIN keeps up. */
static uint32_t gw_local_serving(gw_gateway *gw) {
    uint32_t n = 0;
    for (gw_worker *w = gw->workers; w; w = w->next)
        if (w->pool_id != 0 || (w->state == GW_WORKER_STARTING && w->addr[0] == 0))
            if (w->state == GW_WORKER_STARTING || w->state == GW_WORKER_READY) n++;
    return n;
}

/* The budget a new local worker would have: --worker-memory, else (each worker taking its
 * device's free memory) the largest a local worker has reported, so that a model larger
 * than that is AICFN_E_TOO_LARGE rather than a worker spawned to refuse it; before any
 * report, unbounded (the first worker's own answer says). */
static uint64_t gw_new_budget(gw_gateway *gw) {
    if (gw->worker_memory) return gw->worker_memory;
    return gw->local_budget_seen ? gw->local_budget_seen : UINT64_MAX / 4;
}

/* A new local worker (STARTING; the process starts once the lock is released), or NULL
 * when this round has started enough or the start back-off runs. */
static gw_worker *gw_spawn_locked(gw_gateway *gw, gw_actions *a) {
    if (a->n_spawns >= sizeof a->spawns / sizeof a->spawns[0]) return NULL;
    if (gw->start_failures && clock_now_us() < gw->spawn_not_before_us) {
        gw_maint_wake_locked(gw); /* to start it when the back-off ends */
        return NULL;
    }
    gw_worker *w = gw_worker_new("starting", "", 0, 0, clock_now_us());
    if (!w) return NULL;
    w->budget_bytes = w->free_bytes = gw_new_budget(gw);
    w->next = gw->workers;
    gw->workers = w;
    a->spawns[a->n_spawns++] = w;
    gw_maint_wake_locked(gw);
    return w;
}

/* Rewrites the request's deadline_ms in place to the time left at `now` (before
 * c->deadline_us) when that is less than the worker was to be told, keeping its msgpack
 * width (the new value is smaller, so it fits; msgpack allows non-minimal widths). */
static void gw_patch_deadline(gw_call *c, uint64_t now) {
    uint32_t left_ms = (uint32_t)((c->deadline_us - now + 999) / 1000);
    if (left_ms >= c->timeout_ms) return;
    size_t off = 0, len = 0;
    if (wire_raw_find(c->wreq, c->wreq_len, "deadline_ms", &off, &len, NULL) != AICFN_OK) return;
    uint8_t *p = c->wreq + off;
    if (len == 1 && p[0] < 0x80) {
        p[0] = (uint8_t)(left_ms < 0x7f ? left_ms : 0x7f);
    } else if (len == 2 && p[0] == 0xcc) {
        p[1] = (uint8_t)(left_ms < 0xff ? left_ms : 0xff);
    } else if (len == 3 && p[0] == 0xcd) {
        uint32_t v = left_ms < 0xffff ? left_ms : 0xffff;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)v;
    } else if (len == 5 && p[0] == 0xce) {
        p[1] = (uint8_t)(left_ms >> 24);
        p[2] = (uint8_t)(left_ms >> 16);
        p[3] = (uint8_t)(left_ms >> 8);
        p[4] = (uint8_t)left_ms;
    } else {
        return;
    }
    c->timeout_ms = left_ms;
}

/* f's limits.timeout in whole milliseconds, rounded up (at least 1): what workers are
 * told (spec.timeout_ms, deadline_ms) and what the gateway waits by. Truncated, a timeout
 * under 1 ms became 0, which a worker reads as "unset": its default of 30 s. */
static uint32_t gw_fn_timeout_ms(const gw_fn *f) {
    uint64_t ms = (f->cfg.timeout_us + 999) / 1000;
    if (ms == 0) ms = 1;
    return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

/* How long the link waits for c's reply before its worker counts as stuck (killed and
 * replaced): the function's timeout + AICFN_CALL_GRACE_MS. Never the caller's shorter
 * deadline_ms: that only bounds when the call may start (the worker does not start it
 * later); a handler running cannot be cut short, and a caller must not be able to have a
 * healthy worker killed by asking for less time than its function takes. */
static uint32_t gw_link_timeout_ms(const gw_call *c) {
    uint64_t t = gw_fn_timeout_ms(c->fn);
    if (t < c->timeout_ms) t = c->timeout_ms;
    t += AICFN_CALL_GRACE_MS;
    return t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

/* Fails c, whose deadline passed before it could be sent to a worker (lock held). */
static void gw_fail_deadline_locked(gw_actions *a, gw_call *c) {
    gw_fail_locked(a, c, AICFN_E_TIMEOUT, "function %s:%u: deadline of %u ms passed before a worker was free",
                   c->fn->name, c->fn->ver, c->timeout_ms);
}

/* Fails call c when it may not go to a worker now (lock held): its deadline has passed,
 * or (a copy that waited, queued or for a worker to start) its request crashed workers
 * twice meanwhile and is refused like one arriving now, not run a third time. */
static bool gw_refused_locked(gw_call *c, uint64_t now, gw_actions *a) {
    if (now >= c->deadline_us) {
        c->worker = NULL;
        gw_fail_deadline_locked(a, c);
        return true;
    }
    const gw_crash *cr = c->preload ? NULL : gw_crash_refusing(c->fn, c, now);
    if (cr) {
        c->worker = NULL;
        char why[AICFN_ERRMSG_MAX];
        gw_crash_refusal(c->fn, c, cr, now, why, sizeof why);
        gw_fail_locked(a, c, AICFN_E_UNAVAILABLE, "%s", why);
        return true;
    }
    return false;
}

/* `resident`: the router found c's model READY on w (or c needs none), so c may wait
 * in w's outbox for a bundle; a call that will load its model never waits there, nor
 * holds up a bundle behind its load. */
static void gw_assign_locked(gw_call *c, gw_worker *w, gw_actions *a, bool resident) {
    uint64_t now = clock_now_us();
    c->worker = w;
    if (w->state != GW_WORKER_STARTING) {
        /* Time spent queued or waiting for a spawn comes out of the worker's budget. */
        if (gw_refused_locked(c, now, a)) return;
        gw_patch_deadline(c, now);
    }
    if (w->state == GW_WORKER_STARTING) {
        c->spawned = true;
        c->next = NULL;
        if (w->pending_tail)
            w->pending_tail->next = c;
        else
            w->pending_head = c;
        w->pending_tail = c;
        if (!c->preload) w->pending_calls++;
        return;
    }
    w->in_flight++;
    if (c->preload) w->preloads++;
    w->callbacks++;
    w->last_call_us = now;
    c->dispatched_us = now;
    c->next = NULL;
    c->short_msg = !c->preload && gw_fn_is_short(c->fn);
    /* Held at most AICFN_BUNDLE_MAX_HELD per worker: beyond, a call leaves alone (and meets
     * the link's bound on calls in flight, AICFN_RPC_MAX_ASYNC). */
    if (c->short_msg && resident && gw_bundles_to(c->gw, w) && w->short_msgs >= AICFN_BUNDLE_WINDOW &&
        w->state == GW_WORKER_READY && c->wreq_len <= AICFN_BUNDLE_MAX_BYTES &&
        w->outbox_n < AICFN_BUNDLE_MAX_HELD) {
        /* Held: leaves with the others when one of the short messages comes back. */
        if (w->outbox_tail) {
            w->outbox_tail->next = c;
        } else {
            w->outbox_head = c, w->outbox_since_us = now;
            gw_maint_wake_locked(c->gw); /* it sends held calls after AICFN_BUNDLE_HOLD_MAX_US */
        }
        w->outbox_tail = c;
        w->outbox_n++;
        return;
    }
    if (c->short_msg) w->short_msgs++;
    w->call_msgs++;
    c->next = a->sends;
    a->sends = c;
}

/* A call sent to w came back (answered, failed or never sent): lock held. */
static void gw_call_left_locked(gw_gateway *gw, gw_worker *w, gw_call *c) {
    gw_call_note_worker_locked(c, w);
    w->in_flight--;
    if (c->preload) w->preloads--;
    w->callbacks--;
    if (w->settling && w->in_flight == 0) { /* its last call's crash is counted right after, under the lock */
        w->settling = false;
        gw->settling--;
    }
}

/* Whether a worker that died with a fault note naming f still has calls in flight whose
 * failures are not counted yet (lock held). Those failures come one callback at a time,
 * and the crash back-off of the request that crashed it counts only in its own: until
 * then f's calls wait in its queue, or a copy of that request could reach the
 * replacement worker first and crash it too. */
static bool gw_crash_settling_locked(const gw_gateway *gw, const gw_fn *f) {
    if (gw->settling == 0) return false;
    for (const gw_worker *w = gw->workers; w; w = w->next)
        if (w->settling && w->fault->ver == f->ver && strcmp(w->fault->fn, f->name) == 0) return true;
    return false;
}

/* ---- Bundles (docs/protocol.md §9) ------------------------------------------------
 * A busy worker gets the calls of short functions in bundles: while AICFN_BUNDLE_WINDOW
 * messages of short calls are in flight to it, a new short call is held in its outbox,
 * and when one of those messages comes back every held call leaves in one message. The
 * reply comes back soon by definition of short, so holding costs little latency, and
 * under load one message carries many calls: the per-message costs on both ends of the
 * link (NNG's thread hand-offs, the worker's wake-ups) are paid once for all of them. A
 * call on a quiet link, of a function not known to be short, or of a worker that is not
 * ready is sent at once, alone. The maintenance tick sends calls held longer than
 * AICFN_BUNDLE_HOLD_MAX_US (a short function that turned slow). By default only NNG
 * links bundle: a local worker's socketpair makes messages cheap (gw_bundle_mode). */

/* Whether calls to w may be held for bundles (gw_bundle_mode). */
static bool gw_bundles_to(const gw_gateway *gw, const gw_worker *w) {
    return gw->bundles == GW_BUNDLES_ALWAYS || (gw->bundles == GW_BUNDLES_AUTO && !w->linked);
}

/* Short: over at least 4 warm calls, a mean worker time (receipt to reply) of at most
 * AICFN_BUNDLE_SHORT_US and a mean reply of at most AICFN_BUNDLE_SHORT_REPLY bytes. */
static bool gw_fn_is_short(const gw_fn *f) {
    return f->svc_samples >= 4 && f->svc_mean_us <= AICFN_BUNDLE_SHORT_US &&
           f->reply_mean_bytes <= AICFN_BUNDLE_SHORT_REPLY;
}

/* A warm call of f took `us` on its worker and answered `bytes` (lock held). Both come
 * from the worker's reply: capped, so the means' x7 cannot wrap a huge one to small. */
static void gw_fn_note_service(gw_fn *f, uint64_t us, uint64_t bytes) {
    const uint64_t cap = UINT64_MAX / 16;
    if (us > cap) us = cap;
    if (bytes > cap) bytes = cap;
    if (f->svc_samples == 0) {
        f->svc_mean_us = us;
        f->reply_mean_bytes = bytes;
    } else {
        f->svc_mean_us = (f->svc_mean_us * 7 + us) / 8;
        f->reply_mean_bytes = (f->reply_mean_bytes * 7 + bytes) / 8;
    }
    if (f->svc_samples < UINT32_MAX) f->svc_samples++;
}

/* Sends w's held calls (lock held): one bundle of at most AICFN_BUNDLE_MAX_CALLS calls
 * and AICFN_BUNDLE_MAX_BYTES, all of the first held call's function version, or the
 * call alone when only one is held. One bundle's reply waits for its slowest part (up
 * to the parts' timeout + grace), so a bundle never mixes functions: a call is never
 * held up by another function's slow call, nor by another timeout. Calls beyond those
 * bounds, and the other functions' calls, stay held for the next message back, and so
 * do all of them while w has AICFN_WORKER_MAX_CALL_MSGS messages in flight. */
static void gw_outbox_flush_locked(gw_gateway *gw, gw_worker *w, gw_actions *a) {
    if (w->outbox_head == NULL || w->call_msgs >= AICFN_WORKER_MAX_CALL_MSGS) return;
    gw_bundle *b = calloc(1, sizeof *b);
    size_t bytes = 0;
    uint32_t max = b ? AICFN_BUNDLE_MAX_CALLS : 1; /* out of memory: one call alone */
    gw_call *taken[AICFN_BUNDLE_MAX_CALLS];
    uint32_t n = 0;
    uint64_t now = clock_now_us();
    const gw_fn *fn = NULL; /* the bundle's function version: its first call's */
    gw_call **pc = &w->outbox_head, *prev = NULL;
    while (*pc && n < max) {
        gw_call *c = *pc;
        bool expired = now >= c->deadline_us;
        if (!expired && fn && c->fn != fn) { /* another function's: stays held */
            prev = c;
            pc = &c->next;
            continue;
        }
        if (!expired && n > 0 && bytes + c->wreq_len > AICFN_BUNDLE_MAX_BYTES) break;
        *pc = c->next;
        if (w->outbox_tail == c) w->outbox_tail = prev;
        c->next = NULL;
        w->outbox_n--;
        /* Its deadline_ms was set when it was routed: what is left of it now, or nothing. */
        if (expired) {
            gw_call_left_locked(gw, w, c);
            gw_fail_deadline_locked(a, c);
            continue;
        }
        gw_patch_deadline(c, now);
        bytes += c->wreq_len;
        taken[n++] = c;
        fn = c->fn;
    }
    if (w->outbox_head == NULL)
        w->outbox_tail = NULL;
    else
        w->outbox_since_us = now;
    if (n == 0) {
        free(b);
        return;
    }
    w->short_msgs++;
    w->call_msgs++;
    if (n == 1) {
        free(b);
        taken[0]->next = a->sends;
        a->sends = taken[0];
        return;
    }
    b->gw = gw;
    b->w = w;
    b->n = n;
    memcpy(b->calls, taken, n * sizeof taken[0]);
    b->next = a->bundles;
    a->bundles = b;
}

/* One of w's messages came back or was not sent (lock held). `answered`: it came back
 * with a reply, so the link works: below the window, the held calls leave now. After a
 * failure they are not sent on: a lost worker re-routes them (gw_worker_dead_locked);
 * otherwise the maintenance tick sends them (AICFN_BUNDLE_HOLD_MAX_US). */
static void gw_link_msg_done_locked(gw_gateway *gw, gw_worker *w, bool short_msg, bool answered,
                                    gw_actions *a) {
    if (short_msg && w->short_msgs > 0) w->short_msgs--;
    if (w->call_msgs > 0) w->call_msgs--;
    if (answered) w->consecutive_poll_failures = 0; /* it answers: alive, whatever its polls did */
    if (answered && w->outbox_head && w->short_msgs < AICFN_BUNDLE_WINDOW && w->state != GW_WORKER_DEAD &&
        w->state != GW_WORKER_DRAINING && !w->doomed)
        gw_outbox_flush_locked(gw, w, a);
}

/* Takes c, which follows prev (NULL: c is the head), out of f's queue (lock held). */
static void gw_queue_unlink_locked(gw_fn *f, gw_call *prev, gw_call *c) {
    if (prev)
        prev->next = c->next;
    else
        f->q_head = c->next;
    if (f->q_tail == c) f->q_tail = prev;
    f->q_len--;
    f->q_changes++;
}

/* Puts c in f's queue, in its tenant's turn (fairq.h gw_fairq_place; lock held). The
 * common cases take no pass over the queue: an empty one, and a tail of c's own tenant
 * (whose tag is the largest: c goes after it). */
static void gw_enqueue_locked(gw_fn *f, gw_call *c) {
    c->worker = NULL;
    gw_call *prev = f->q_tail; /* c goes after it (NULL: at the head) */
    if (!prev) {
        c->q_tag = f->q_clock + 1;
    } else if (prev->tenant_id == c->tenant_id || f->q_len > AICFN_DEFAULT_QUEUE_PER_FUNCTION) {
        c->q_tag = (prev->q_tag > f->q_clock ? prev->q_tag : f->q_clock) + 1;
    } else {
        uint64_t ids[AICFN_DEFAULT_QUEUE_PER_FUNCTION], tags[AICFN_DEFAULT_QUEUE_PER_FUNCTION];
        gw_call *calls[AICFN_DEFAULT_QUEUE_PER_FUNCTION];
        size_t n = 0;
        for (gw_call *q = f->q_head; q && n < AICFN_DEFAULT_QUEUE_PER_FUNCTION; q = q->next) {
            ids[n] = q->tenant_id;
            tags[n] = q->q_tag;
            calls[n++] = q;
        }
        size_t at = gw_fairq_place(ids, tags, n, f->q_clock, c->tenant_id, &c->q_tag);
        prev = at ? calls[at - 1] : NULL;
    }
    c->next = prev ? prev->next : f->q_head;
    if (prev)
        prev->next = c;
    else
        f->q_head = c;
    if (f->q_tail == prev) f->q_tail = c;
    f->q_len++;
    f->q_changes++;
}

/* The router's view of the pool (lock held): workers that are ready or starting, less
 * `skip` (the worker a retried call died on). view[i] describes ws[i]. */
static size_t gw_view_locked(gw_gateway *gw, const gw_worker *skip, gw_route_worker *view, gw_worker **ws) {
    size_t n = 0;
    for (gw_worker *w = gw->workers; w && n < GW_MAX_VIEW; w = w->next) {
        if (w->state == GW_WORKER_DEAD || w->state == GW_WORKER_DRAINING || w->doomed) continue;
        if (w == skip) continue;
        /* A registered worker that has not answered its first status may never (a wrong
         * address): no call waits on it. A local one starting is the pool's own. */
        if (w->state == GW_WORKER_STARTING && w->pool_id == 0 && w->addr[0]) continue;
        gw_worker_route_view(w, &view[n]);
        ws[n++] = w;
    }
    return n;
}

/* What the router is asked for a call of f (lock held): its model, whether the pool may
 * grow, and its replicas: at most scaling.max_workers holders, a holder busy from
 * batching.max_batch calls in flight. */
static gw_route_request gw_request_locked(gw_gateway *gw, const gw_fn *f) {
    gw_route_request r = {
        .key = f->key[0] ? f->key : GW_NO_MODEL_KEY,
        .model_bytes = f->model_bytes,
        .pool_may_grow = gw->max_workers > 0 && gw_local_alive(gw) < gw->max_workers,
        .new_worker_budget = gw->max_workers > 0 ? gw_new_budget(gw) : 0,
        .max_holders = f->cfg.max_workers ? f->cfg.max_workers : 1,
        .busy_in_flight = f->cfg.max_batch ? f->cfg.max_batch : 1,
        .any_worker = !f->key[0],
    };
    return r;
}

/* Applies a decision of levels 1-5 to call c (lock held). Returns true when c left the
 * gateway (assigned to a worker, maybe pending on a starting one) and false when it
 * could not be placed now (too many spawns in one go: wait for the next pump). */
static bool gw_apply_route_locked(gw_gateway *gw, gw_call *c, gw_worker **ws, const gw_route_decision *d,
                                  gw_actions *a) {
    gw_fn *f = c->fn;
    const char *key = f->key[0] ? f->key : GW_NO_MODEL_KEY;
    uint64_t now = clock_now_us();
    switch (d->kind) {
    case GW_ROUTE_READY:
        gw_worker_note_use(ws[d->worker], key, now);
        gw_assign_locked(c, ws[d->worker], a, true);
        return true;
    case GW_ROUTE_LOADING:
        gw_assign_locked(c, ws[d->worker], a, false);
        return true;
    case GW_ROUTE_FREE:
    case GW_ROUTE_EVICT:
        if (f->key[0]) gw_worker_note_load(ws[d->worker], key, f->model_bytes, now, GW_HOLD_US);
        gw_assign_locked(c, ws[d->worker], a, false);
        return true;
    case GW_ROUTE_SPAWN: {
        gw_worker *w = gw_spawn_locked(gw, a);
        if (!w) return false;
        gw_worker_note_load(w, key, f->model_bytes, now, GW_HOLD_US);
        gw_assign_locked(c, w, a, false);
        return true;
    }
    case GW_ROUTE_QUEUE:
    case GW_ROUTE_TOO_LARGE:
        break;
    }
    return false;
}

/* Routes one call; returns true when it left the gateway's queue (sent, pending on a
 * starting worker, or failed) and false when it must wait in the function's queue. */
static bool gw_try_route_locked(gw_gateway *gw, gw_call *c, gw_actions *a) {
    gw_fn *f = c->fn;
    if (gw->stopping) {
        gw_fail_locked(a, c, AICFN_E_CANCELED, "the gateway is stopping");
        return true;
    }
    /* Refused before routing: a decision marks a load or spawns a worker for the call. */
    if (gw_refused_locked(c, clock_now_us(), a)) return true;
    if (!c->preload && gw_crash_settling_locked(gw, f)) return false;
    gw_route_worker view[GW_MAX_VIEW];
    gw_worker *ws[GW_MAX_VIEW];
    size_t n = gw_view_locked(gw, c->attempts > 1 ? c->worker : NULL, view, ws);
    gw_route_request r = gw_request_locked(gw, f);
    gw_route_decision d;
    if (gw_route_decide(view, n, &r, &d) == GW_ROUTE_TOO_LARGE) {
        gw_fail_locked(a, c, AICFN_E_TOO_LARGE,
                       "function %s:%u: its model needs %llu bytes, more than any worker's budget", f->name,
                       f->ver, (unsigned long long)f->model_bytes);
        return true;
    }
    /* A call that would start a load of its model (into free memory, evicting others, or
     * on a new worker) with less time left than that model's last load took cannot be
     * answered: the load, once started, runs to its end whatever the call, evicting other
     * tenants' models. A caller with a tiny deadline_ms must not be able to make loads
     * happen for nothing. */
    bool loads = d.kind == GW_ROUTE_FREE || d.kind == GW_ROUTE_EVICT || d.kind == GW_ROUTE_SPAWN;
    uint64_t now = clock_now_us();
    bool short_of_a_load = loads && !c->preload && f->key[0] && f->load_us_last &&
                           (c->deadline_us <= now || c->deadline_us - now < f->load_us_last);
    uint32_t holders = short_of_a_load ? gw_route_holders(view, n, &r) : 0;
    if (holders > 0) {
        /* Its model is resident (or loading) on busy workers, the router's choice was one
         * more replica: no replica for this call, it waits for a holder (the least-loaded
         * one, or the queue when every holder is full). */
        r.max_holders = holders;
        gw_route_decide(view, n, &r, &d);
    } else if (short_of_a_load) {
        gw_fail_locked(a, c, AICFN_E_TIMEOUT,
                       "function %s:%u: %llu ms left before the call's deadline, and loading its model took "
                       "%llu ms last time: not loaded for it (its model is not resident)",
                       f->name, f->ver,
                       (unsigned long long)(c->deadline_us > now ? (c->deadline_us - now) / 1000 : 0),
                       (unsigned long long)((f->load_us_last + 999) / 1000));
        return true;
    }
    return gw_apply_route_locked(gw, c, ws, &d, a);
}

/* Whether c may join f's queue (lock held): below its bound, yes; when full, only if a
 * queued call of a tenant holding more of it gives way (fairq.h), refused here. Preloads
 * (repository loads, keep-warm) neither take a tenant's place nor give theirs. A tenant
 * refused since the queue last changed is refused again without a scan, so a flooding
 * tenant's calls cost a comparison each under the lock, not a pass over the queue. */
static bool gw_queue_admit_locked(gw_fn *f, const gw_call *c, gw_actions *a) {
    if (f->q_len < AICFN_DEFAULT_QUEUE_PER_FUNCTION) return true;
    if (c->preload) return false;
    for (unsigned i = 0; i < GW_FAIRQ_MEMO; i++)
        if (f->fq_refused[i].at == f->q_changes && f->fq_refused[i].tenant == c->tenant_id) return false;
    uint64_t ids[AICFN_DEFAULT_QUEUE_PER_FUNCTION];
    gw_call *calls[AICFN_DEFAULT_QUEUE_PER_FUNCTION];
    size_t n = 0;
    for (gw_call *q = f->q_head; q && n < AICFN_DEFAULT_QUEUE_PER_FUNCTION; q = q->next)
        if (!q->preload) {
            ids[n] = q->tenant_id;
            calls[n++] = q;
        }
    long v = gw_fairq_victim(ids, n, c->tenant_id);
    if (v < 0) {
        f->fq_refused[f->fq_next].tenant = c->tenant_id;
        f->fq_refused[f->fq_next].at = f->q_changes;
        f->fq_next = (f->fq_next + 1) % GW_FAIRQ_MEMO;
        return false;
    }
    gw_call *victim = calls[v], *prev = NULL;
    for (gw_call *q = f->q_head; q != victim; q = q->next)
        prev = q;
    gw_queue_unlink_locked(f, prev, victim);
    uint32_t held = 0; /* the victim's tenant's calls left in the queue */
    for (size_t i = 0; i < n; i++)
        held += ids[i] == victim->tenant_id && calls[i] != victim;
    gw_fail_locked(a, victim, AICFN_E_OVERLOADED,
                   "function %s:%u: its queue is full (%u calls) and %u more of them were this tenant's: "
                   "this call, its newest, gave way to another tenant's",
                   f->name, f->ver, AICFN_DEFAULT_QUEUE_PER_FUNCTION, held);
    return true;
}

static void gw_route_locked(gw_gateway *gw, gw_call *c, gw_actions *a) {
    gw_fn *f = c->fn;
    /* A call routed again (a retry, a refusal by a draining worker) waits for no spawn
     * it waited for before: only a start this routing waits for is its cold start's. */
    c->spawned = false;
    /* A new call never overtakes queued ones: it goes straight to a worker only past an
     * empty queue, else it takes its tenant's turn in it (fairq.h). */
    if (f->q_len == 0 && gw_try_route_locked(gw, c, a)) return;
    if (!gw_queue_admit_locked(f, c, a)) {
        gw_fail_locked(a, c, AICFN_E_OVERLOADED, "function %s:%u: %u calls already queued", f->name, f->ver,
                       f->q_len);
        return;
    }
    gw_enqueue_locked(f, c);
    gw_maint_wake_locked(gw);
}

/* Routes queued calls while workers can take them. */
static void gw_pump_locked(gw_gateway *gw, gw_actions *a) {
    for (gw_fn *f = gw->fns; f; f = f->next) {
        while (f->q_head) {
            gw_call *c = f->q_head;
            f->q_head = c->next;
            if (!f->q_head) f->q_tail = NULL;
            f->q_len--;
            uint64_t tag = c->q_tag;
            if (!gw_try_route_locked(gw, c, a)) { /* back in its place: the queue is unchanged */
                c->next = f->q_head;
                f->q_head = c;
                if (!f->q_tail) f->q_tail = c;
                f->q_len++;
                break;
            }
            if (tag > f->q_clock) f->q_clock = tag;
            f->q_changes++;
        }
    }
}

/* Reads (and removes) the fault note a local worker left (pool.h) into w->fault; a
 * worker the gateway killed had its note removed only. */
static void gw_worker_read_fault_note(gw_worker *w) {
    gw_fault_note *note = malloc(sizeof *note);
    if (!note) return;
    if (!gw_pool_take_fault_note(w->addr, note) || w->killed) {
        free(note);
        return;
    }
    log_warn("worker %s: the handler of %s:%u crashed it (signal %d) running %u call(s): the crash is "
             "charged to those",
             w->name, note->fn, note->ver, note->signo, note->n);
    free(w->fault);
    w->fault = note;
}

/* Unlinks the calls of the list (head, tail) whose deadline passed at `now`, and
 * returns them as a list of their own (through next), oldest first. */
static gw_call *gw_take_expired(gw_call **head, gw_call **tail, uint64_t now) {
    gw_call *taken = NULL, **end = &taken;
    gw_call **pc = head, *prev = NULL;
    while (*pc) {
        gw_call *c = *pc;
        if (c->deadline_us > now) {
            prev = c;
            pc = &c->next;
            continue;
        }
        *pc = c->next;
        if (*tail == c) *tail = prev;
        c->next = NULL;
        *end = c;
        end = &c->next;
    }
    return taken;
}

/* Fails the calls waiting for starting worker w whose deadline passed (lock held). */
static void gw_expire_pending_locked(gw_worker *w, uint64_t now, gw_actions *a) {
    gw_call *c = gw_take_expired(&w->pending_head, &w->pending_tail, now);
    while (c) {
        gw_call *next = c->next;
        if (!c->preload) w->pending_calls--;
        c->worker = NULL;
        gw_fail_locked(a, c, AICFN_E_TIMEOUT, "function %s:%u: worker %s was not ready within %u ms",
                       c->fn->name, c->fn->ver, w->name, c->timeout_ms);
        c = next;
    }
}

/* Fails the calls held in w's outbox whose deadline passed (lock held): a flush drops
 * them as it goes, but no flush runs while w has AICFN_WORKER_MAX_CALL_MSGS messages
 * in flight. */
static void gw_expire_outbox_locked(gw_gateway *gw, gw_worker *w, uint64_t now, gw_actions *a) {
    gw_call *c = gw_take_expired(&w->outbox_head, &w->outbox_tail, now);
    while (c) {
        gw_call *next = c->next;
        w->outbox_n--;
        gw_call_left_locked(gw, w, c);
        gw_fail_deadline_locked(a, c);
        c = next;
    }
}

/* The calls held in w's outbox were never sent: routed again, idempotent or not (w is
 * gone or drains; lock held). */
static void gw_outbox_reroute_locked(gw_gateway *gw, gw_worker *w, gw_actions *a) {
    gw_call *h = w->outbox_head;
    w->outbox_head = w->outbox_tail = NULL;
    w->outbox_n = 0;
    while (h) {
        gw_call *next = h->next;
        gw_call_left_locked(gw, w, h);
        h->worker = NULL;
        gw_route_locked(gw, h, a);
        h = next;
    }
}

/* The calls pending on w (never sent: it died or could not start) are routed again: to
 * a ready worker, or queued, the start back-off (gw_start_failed_locked) pacing any new
 * start, until their deadlines (lock held). */
static void gw_pending_reroute_locked(gw_gateway *gw, gw_worker *w, gw_actions *a) {
    gw_call *p = w->pending_head;
    w->pending_head = w->pending_tail = NULL;
    w->pending_calls = 0;
    while (p) {
        gw_call *next = p->next;
        p->worker = NULL;
        gw_route_locked(gw, p, a);
        p = next;
    }
}

/* A local worker could not start: it died before it was ready, or it could not even be
 * spawned (fork failed, out of memory). No local worker starts for a back-off doubling
 * from AICFN_WORKER_RESTART_BACKOFF_MIN_MS to _MAX_MS (reset by a worker that becomes
 * ready), so a failing start is not retried on every maintenance tick (lock held). */
static void gw_start_failed_locked(gw_gateway *gw, const char *what) {
    unsigned shift = gw->start_failures < 16 ? gw->start_failures : 16;
    uint64_t ms = (uint64_t)AICFN_WORKER_RESTART_BACKOFF_MIN_MS << shift;
    if (ms > AICFN_WORKER_RESTART_BACKOFF_MAX_MS) ms = AICFN_WORKER_RESTART_BACKOFF_MAX_MS;
    gw->start_failures++;
    gw->last_start_failure_us = clock_now_us();
    gw->spawn_not_before_us = gw->last_start_failure_us + ms * 1000;
    log_warn("%s (%u in a row): no local worker starts for %llu ms", what, gw->start_failures,
             (unsigned long long)ms);
}

/* A worker is gone: its pending calls (never sent) are routed again. */
static void gw_worker_dead_locked(gw_gateway *gw, gw_worker *w, gw_actions *a) {
    if (w->state == GW_WORKER_DEAD) return;
    gw_maint_wake_locked(gw); /* to unlink it once its callbacks are done */
    bool never_ready = w->state == GW_WORKER_STARTING, draining = w->state == GW_WORKER_DRAINING;
    w->death = ++gw->deaths;
    if (w->pool_id) gw_worker_read_fault_note(w);
    if (w->fault && w->in_flight > 0) {
        w->settling = true;
        gw->settling++;
    }
    /* A local worker that dies while serving (not drained, not stopping) gets replaced. */
    if (w->pool_id && !draining && !gw->stopping) gw_metric_add(gw->std.worker_restarts, NULL, 1);
    /* Workers started together that fail together count as one failure: only a worker
     * started after the last failure was seen doubles the back-off. */
    if (w->pool_id && never_ready && !gw->stopping && w->started_us > gw->last_start_failure_us) {
        char what[96];
        snprintf(what, sizeof what, "worker %s died before it was ready", w->name);
        gw_start_failed_locked(gw, what);
    }
    /* Asked to leave (drained, or the gateway stops): exited; anything else: lost. */
    gw_worker_row_locked(gw, w,
                         w->state == GW_WORKER_DRAINING || gw->stopping ? GW_WROW_EXITED : GW_WROW_LOST);
    w->state = GW_WORKER_DEAD;
    /* A draining worker closes its listener (its calls done) before it runs its handlers'
     * fini and frees its device: from then on it has the pool's grace (SIGTERM, then
     * SIGKILL) to finish, whoever started the drain, and whether or not a status told the
     * gateway of it first (one stopped from outside closes its link within a poll period);
     * a worker that crashed is gone either way. Only one the gateway ended (a call past
     * its timeout, failed polls) is killed at once. */
    if (w->pool_id && gw->pool) {
        if (w->killed)
            gw_pool_kill(gw->pool, w->pool_id);
        else
            gw_pool_terminate(gw->pool, w->pool_id);
    }
    /* A registered worker the gateway ended is ordered to exit (its supervisor restarts
     * it): dropping the link alone would leave its stuck call running there. */
    if (!w->pool_id && w->killed && w->exit_token[0] && w->client && a->n_exits < GW_MAX_VIEW) {
        w->callbacks++;
        a->exits[a->n_exits++] = w;
    }
    /* Its calls and polls in flight fail now (AICFN_E_WORKER_LOST) rather than at their
     * deadlines: one queued before the link connected would see no dropped connection. */
    if (w->client) rpc_client_fail_inflight(w->client);
    gw_pending_reroute_locked(gw, w, a);
    gw_outbox_reroute_locked(gw, w, a);
}

/* ---- Completions ---------------------------------------------------------------- */

/* A call's answer or failure. `own_msg`: it came back in a message of its own (not a
 * bundle), so that message's link accounting is done here too. */
static void gw_call_complete(gw_call *c, int status, rpc_msg *reply, const aicfn_error *err, bool own_msg) {
    gw_gateway *gw = c->gw;
    gw_worker *w = c->worker;
    gw_actions a;
    memset(&a, 0, sizeof a);
    uint64_t now = clock_now_us();

    if (status == AICFN_OK && c->preload) {
        /* A preload's answer is the worker's status after the load. */
        wire_doc doc;
        memset(&doc, 0, sizeof doc);
        wire_status_reply rep;
        aicfn_error e;
        aicfn_error_clear(&e);
        int rc = wire_doc_parse(&doc, rpc_msg_data(reply), rpc_msg_len(reply), NULL, &e);
        if (rc == AICFN_OK) rc = wire_decode_status_reply(&doc, &rep, &e);
        if (rc == AICFN_OK && !rep.head.ok) {
            rc = rep.head.code;
            snprintf(e.msg, sizeof e.msg, "worker %s: %s", w->name, rep.head.message);
        }
        uint64_t spawn_us = 0;
        pthread_mutex_lock(&gw->mu);
        gw_call_left_locked(gw, w, c);
        if (own_msg) gw_link_msg_done_locked(gw, w, c->short_msg, status == AICFN_OK, &a);
        w->last_call_us = now;
        gw_load_source src;
        if (rc == AICFN_OK) {
            gw_apply_summary_locked(gw, w, &rep.w.summary, now);
            gw_load_source_locked(gw, w, &rep.w, &src);
        }
        if (rc == AICFN_OK && rep.load.has_coldstart && c->spawned && !w->spawn_attributed) {
            spawn_us = w->spawn_us;
            w->spawn_attributed = true;
        }
        gw_pump_locked(gw, &a);
        pthread_mutex_unlock(&gw->mu);
        /* A preload's load is a cold start too (keep-warm, repository load). */
        if (rc == AICFN_OK && rep.load.has_coldstart)
            gw_record_cold_start(gw, c, &rep.load.timing, &rep.load.coldstart, spawn_us);
        if (rc == AICFN_OK) gw_record_unreported_loads(gw, &rep.w, &src);
        wire_doc_fini(&doc);
        rpc_msg_free(reply);
        if (rc == AICFN_OK)
            log_info("function %s:%u: model %s loaded on worker %s (%s)", c->fn->name, c->fn->ver, c->fn->key,
                     w->name, c->keepwarm ? "keep-warm, scaling.min_workers" : "repository load");
        gw_invoke_result res = {
            .id = c->id, .code = rc, .message = rc == AICFN_OK ? "" : e.msg, .version = c->fn->ver};
        c->done(c->user, &res);
        gw_call_free(c);
        gw_process(gw, &a);
        return;
    }

    if (status == AICFN_OK) {
        wire_doc doc;
        wire_invoke_reply rep;
        aicfn_error e;
        int rc = wire_doc_parse(&doc, rpc_msg_data(reply), rpc_msg_len(reply), NULL, &e);
        if (rc == AICFN_OK) rc = wire_decode_invoke_reply(&doc, &rep, &e);
        if (rc != AICFN_OK) {
            wire_doc_fini(&doc);
            rpc_msg_free(reply);
            pthread_mutex_lock(&gw->mu);
            gw_call_left_locked(gw, w, c);
            if (own_msg) gw_link_msg_done_locked(gw, w, c->short_msg, status == AICFN_OK, &a);
            gw_fail_locked(&a, c, AICFN_E_PROTOCOL, "worker %s sent a malformed reply: %s", w->name, e.msg);
            gw_pump_locked(gw, &a);
            pthread_mutex_unlock(&gw->mu);
            gw_process(gw, &a);
            return;
        }
        uint64_t spawn_us = 0;
        pthread_mutex_lock(&gw->mu);
        gw_call_left_locked(gw, w, c);
        bool not_run = !rep.head.ok && rep.head.not_run && !gw->stopping;
        if (not_run && w->state == GW_WORKER_READY) {
            /* The worker drains (SIGTERM from outside the gateway, say): no more calls for
             * it, its held ones included (before its message's return would send them). */
            log_info("worker %s drains: calls go to other workers", w->name);
            w->state = GW_WORKER_DRAINING;
            gw_worker_row_locked(gw, w, GW_WROW_DRAINING);
        }
        if (own_msg) gw_link_msg_done_locked(gw, w, c->short_msg, status == AICFN_OK, &a);
        if (!rep.head.ok && rep.head.overran && w->state != GW_WORKER_DEAD) {
            /* A bundle's part still running at its deadline + AICFN_CALL_GRACE_MS, answered
             * so that the others' replies could leave: stuck like a call of its own past its
             * timeout + grace. */
            log_warn("worker %s: call %llu (%s:%u) ran past its deadline in a bundle: killing the worker",
                     w->name, (unsigned long long)c->id, c->fn->name, c->fn->ver);
            w->killed = true;
            w->kill_reason = "a call in a bundle ran past its timeout + grace";
            gw_worker_dead_locked(gw, w, &a);
        }
        if (not_run) {
            /* It did not run the call: another worker gets it, idempotent or not. */
            if (w->state == GW_WORKER_DRAINING) gw_outbox_reroute_locked(gw, w, &a);
            c->worker = NULL;
            gw_route_locked(gw, c, &a);
            gw_pump_locked(gw, &a);
            pthread_mutex_unlock(&gw->mu);
            wire_doc_fini(&doc);
            rpc_msg_free(reply);
            gw_process(gw, &a);
            return;
        }
        w->last_call_us = now;
        if (rep.has_st) gw_apply_summary_locked(gw, w, &rep.st, now);
        if (!rep.cold && rep.head.ok) gw_fn_note_service(c->fn, rep.timing.total_us, rpc_msg_len(reply));
        if (rep.head.ok && c->fn->n_crash_records) {
            /* It ran to its end: a crash it was charged with before is forgiven. */
            gw_crash *cr = gw_crash_slot(c->fn, false, c->hash, false, now, NULL);
            if (cr && cr->until_us <= now) gw_crash_forget(c->fn, cr);
        }
        if (rep.has_coldstart && c->spawned && !w->spawn_attributed) {
            spawn_us = w->spawn_us;
            w->spawn_attributed = true;
        }
        gw_pump_locked(gw, &a);
        pthread_mutex_unlock(&gw->mu);

        int code = rep.head.ok ? AICFN_OK : rep.head.code;
        gw_record(gw, c, code, &rep, rpc_msg_len(reply), spawn_us);
        if (c->cache_key && code == AICFN_OK) {
            uint64_t ttl = c->fn->cfg.cache_ttl_us;
            gw_respcache_put(gw->respcache, c->cache_key, c->cache_key_len, rpc_msg_data(reply),
                             rpc_msg_len(reply), ttl ? now + ttl : UINT64_MAX);
        }
        gw_invoke_result res = {.id = c->id,
                                .code = code,
                                .message = rep.head.ok ? "" : rep.head.message,
                                .reply = reply,
                                .decoded = &rep,
                                .cold = rep.cold,
                                .version = c->fn->ver};
        c->done(c->user, &res);
        wire_doc_fini(&doc);
        gw_call_free(c);
        gw_process(gw, &a);
        return;
    }

    pthread_mutex_lock(&gw->mu);
    gw_call_left_locked(gw, w, c);
    if (own_msg) gw_link_msg_done_locked(gw, w, c->short_msg, status == AICFN_OK, &a);
    if (status == AICFN_E_WORKER_LOST) {
        /* Read again under the lock: the crash records' times, and their window, only move
         * forward even when two deaths are handled at once. */
        now = clock_now_us();
        log_warn("worker %s lost with call %llu (%s:%u) in flight: %s", w->name, (unsigned long long)c->id,
                 c->fn->name, c->fn->ver, err ? err->msg : "");
        gw_worker_dead_locked(gw, w, &a);
        if (c->preload) {
            gw_fail_locked(&a, c, AICFN_E_WORKER_LOST, "worker %s died while loading the model", w->name);
            gw_pump_locked(gw, &a);
            pthread_mutex_unlock(&gw->mu);
            gw_process(gw, &a);
            return;
        }
        /* Charged at most once per death, however many copies of the request it held. */
        bool crashed = gw_crash_charged(gw, w, c);
        gw_crash *cr = gw_crash_slot(c->fn, false, c->hash, crashed, now, NULL);
        if (cr && crashed && cr->death != w->death) {
            cr->death = w->death;
            if (cr->crashes++ == 0) c->fn->n_crash_records++;
            cr->last_us = now;
            if (cr->crashes >= 2) {
                cr->until_us = now + (uint64_t)AICFN_CRASH_BACKOFF_MS * 1000;
                log_warn("function %s:%u: a request crashed its worker %u times: refused for %d ms",
                         c->fn->name, c->fn->ver, cr->crashes, AICFN_CRASH_BACKOFF_MS);
            }
        }
        /* A death it is not charged with (a bystander, a worker the gateway ended) stops no
         * retry, whatever crashes an earlier record of it holds. */
        uint32_t crashes = cr && crashed ? cr->crashes : 0;
        /* The tenant's count too, once per death, when the worker's fault note pins the
         * crash on this call alone (without a note, or with a batch of several, the death
         * may be another tenant's doing). A crash long after its last one starts the
         * count again. */
        bool pinned = crashed && w->fault && w->fault->n == 1;
        gw_crash *tr = pinned ? gw_crash_slot(c->fn, true, c->tenant_id, true, now, cr) : NULL;
        if (tr && tr->death != w->death) {
            if (tr->crashes && now > tr->last_us &&
                now - tr->last_us > (uint64_t)AICFN_CRASH_TENANT_WINDOW_MS * 1000) {
                tr->crashes = 0;
                c->fn->n_crash_records--;
            }
            tr->death = w->death;
            if (tr->crashes++ == 0) c->fn->n_crash_records++;
            tr->last_us = now;
            if (tr->crashes >= AICFN_CRASH_TENANT_MAX) {
                tr->until_us = now + (uint64_t)AICFN_CRASH_BACKOFF_MS * 1000;
                log_warn("function %s:%u: calls of tenant '%s' crashed its workers %u times: its calls are "
                         "refused for %d ms",
                         c->fn->name, c->fn->ver, c->tenant, tr->crashes, AICFN_CRASH_BACKOFF_MS);
            }
        }
        if (c->fn->cfg.idempotent && c->attempts < 2 && crashes < 2 && !gw->stopping) {
            c->attempts++;
            gw_route_locked(gw, c, &a);
        } else {
            gw_fail_locked(&a, c, AICFN_E_WORKER_LOST, "worker %s died with the call in flight%s", w->name,
                           !c->fn->cfg.idempotent ? " (function not idempotent: not retried)"
                           : gw->stopping         ? " (the gateway is stopping: not retried)"
                           : crashes >= 2         ? " (this request crashed its worker twice: not retried)"
                                                  : " (already retried once)");
        }
    } else if (status == AICFN_E_TIMEOUT) {
        log_warn("worker %s: call %llu (%s:%u) got no reply within its timeout + grace: killing the worker",
                 w->name, (unsigned long long)c->id, c->fn->name, c->fn->ver);
        w->killed = true;
        w->kill_reason = "a call got no reply within its timeout + grace";
        gw_worker_dead_locked(gw, w, &a);
        gw_fail_locked(&a, c, AICFN_E_TIMEOUT,
                       "function %s:%u did not answer within %u ms (its timeout + %d ms; worker %s replaced)",
                       c->fn->name, c->fn->ver, gw_link_timeout_ms(c), AICFN_CALL_GRACE_MS, w->name);
    } else {
        gw_fail_locked(&a, c, status, "sending to worker %s: %s", w->name,
                       err ? err->msg : aicfn_strerror(status));
    }
    gw_pump_locked(gw, &a);
    pthread_mutex_unlock(&gw->mu);
    gw_process(gw, &a);
}

static void gw_call_cb(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    gw_call_complete(user, status, reply, err, true);
}

/* A bundle came back: each call completes with its own part of the reply, or with the
 * bundle's failure (a lost worker, a timeout: as if each had been in flight alone). */
/* Whether a bundle part is a reply marked overran (its call stuck past its deadline +
 * grace: the worker is about to be killed). */
static bool gw_part_overran(const wire_part *p) {
    size_t off, vlen;
    if (wire_validate(p->data, p->len, NULL, NULL, NULL) != AICFN_OK ||
        wire_raw_find(p->data, p->len, WIRE_MARK_OVERRAN, &off, &vlen, NULL) != AICFN_OK)
        return false;
    return vlen == 1 && p->data[off] == 0xc3; /* msgpack true */
}

static void gw_bundle_cb(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    gw_bundle *b = user;
    gw_gateway *gw = b->gw;
    aicfn_error e;
    aicfn_error_clear(&e);
    wire_doc doc;
    memset(&doc, 0, sizeof doc);
    wire_part parts[AICFN_BUNDLE_MAX_CALLS];
    uint32_t n = 0;
    if (status == AICFN_OK) {
        wire_reply_head h;
        status = wire_doc_parse(&doc, rpc_msg_data(reply), rpc_msg_len(reply), NULL, &e);
        if (status == AICFN_OK) status = wire_decode_reply_head(&doc, &h, &e);
        if (status == AICFN_OK && !h.ok) {
            status = h.code;
            snprintf(e.msg, sizeof e.msg, "worker %s refused a bundle: %s", b->w->name, h.message);
        } else if (status == AICFN_OK) {
            status = wire_decode_bundle(&doc, "replies", parts, AICFN_BUNDLE_MAX_CALLS, &n, &e);
            if (status == AICFN_OK && n != b->n)
                status = aicfn_error_set(&e, AICFN_E_PROTOCOL,
                                         "worker %s answered a bundle of %u calls with %u replies",
                                         b->w->name, b->n, n);
        } else {
            aicfn_error_wrap(&e, "worker %s sent a malformed bundle reply", b->w->name);
            status = AICFN_E_PROTOCOL;
        }
        if (status != AICFN_OK) err = &e;
    }
    /* The held calls leave before the parts are handed out, unless a part overran: its
     * worker is killed below, and they are routed elsewhere instead (never sent to a
     * worker about to die, where a non-idempotent call would fail as lost). */
    bool overran = false;
    for (uint32_t i = 0; status == AICFN_OK && i < n && !overran; i++)
        overran = gw_part_overran(&parts[i]);
    gw_actions a;
    memset(&a, 0, sizeof a);
    pthread_mutex_lock(&gw->mu);
    /* Parts handed out before the overran one may pump queued calls, and other replies or
     * the tick flush held ones: none to this worker meanwhile. The reference keeps it
     * until the mark is lifted (it stays usable if the overran part did not kill it). */
    if (overran) {
        b->w->doomed = true;
        b->w->callbacks++;
    }
    gw_link_msg_done_locked(gw, b->w, true, status == AICFN_OK && !overran, &a);
    pthread_mutex_unlock(&gw->mu);
    gw_process(gw, &a);
    for (uint32_t i = 0; i < b->n; i++) {
        if (status != AICFN_OK) {
            gw_call_complete(b->calls[i], status, NULL, err, false);
            continue;
        }
        rpc_msg *part = NULL;
        aicfn_error pe;
        /* Parts answer calls in order; one whose id is another's (a worker that reordered
         * them) must not hand a call someone else's outputs. */
        uint64_t part_id = wire_peek_id(parts[i].data, parts[i].len);
        if (part_id != b->calls[i]->id && part_id != 0) { /* 0: an error reply that could not say */
            aicfn_error_set(&pe, AICFN_E_PROTOCOL, "worker %s: bundle part %u answers request %llu, not %llu",
                            b->w->name, i, (unsigned long long)part_id, (unsigned long long)b->calls[i]->id);
            gw_call_complete(b->calls[i], AICFN_E_PROTOCOL, NULL, &pe, false);
        } else if (rpc_msg_new(parts[i].data, parts[i].len, &part, &pe) != AICFN_OK)
            gw_call_complete(b->calls[i], AICFN_E_NOMEM, NULL, &pe, false);
        else
            gw_call_complete(b->calls[i], AICFN_OK, part, NULL, false);
    }
    if (overran) {
        pthread_mutex_lock(&gw->mu);
        b->w->doomed = false;
        b->w->callbacks--;
        pthread_mutex_unlock(&gw->mu);
    }
    wire_doc_fini(&doc);
    rpc_msg_free(reply);
    free(b);
}

typedef struct gw_poll {
    gw_gateway *gw;
    gw_worker *w;
} gw_poll;

static void gw_poll_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    gw_poll *p = user;
    gw_gateway *gw = p->gw;
    gw_worker *w = p->w;
    free(p);
    gw_actions a;
    memset(&a, 0, sizeof a);
    uint64_t now = clock_now_us();
    wire_doc doc;
    memset(&doc, 0, sizeof doc);
    wire_status_reply rep;
    aicfn_error e;
    int rc = status;
    if (rc == AICFN_OK) {
        rc = wire_doc_parse(&doc, rpc_msg_data(reply), rpc_msg_len(reply), NULL, &e);
        if (rc == AICFN_OK) rc = wire_decode_status_reply(&doc, &rep, &e);
        if (rc == AICFN_OK && !rep.head.ok) {
            rc = rep.head.code;
            snprintf(e.msg, sizeof e.msg, "%s", rep.head.message);
        }
    } else if (err) {
        e = *err;
    }
    gw_load_source src;
    pthread_mutex_lock(&gw->mu);
    w->callbacks--;
    w->poll_pending = false;
    w->last_poll_us = now;
    if (rc == AICFN_OK) gw_load_source_locked(gw, w, &rep.w, &src);
    if (rc == AICFN_OK && w->state != GW_WORKER_DEAD) {
        w->consecutive_poll_failures = 0;
        w->last_seen_wall_us = clock_wall_us();
        snprintf(w->device, sizeof w->device, "%s", rep.w.device ? rep.w.device : "");
        gw_worker_apply_summary(w, &rep.w.summary, now);
        gw_note_local_budget_locked(gw, w, rep.w.summary.budget_bytes);
        /* One row per status answer: the state, and last_seen_us refreshed once per poll
         * (AICFN_WORKER_POLL_MS), never per call. */
        if (w->state == GW_WORKER_STARTING)
            gw_worker_row_locked(gw, w, rep.w.summary.draining ? GW_WROW_DRAINING : GW_WROW_READY);
        else
            gw_worker_row_locked(gw, w, gw_row_state(w));
        if (w->state == GW_WORKER_STARTING) {
            w->state = rep.w.summary.draining ? GW_WORKER_DRAINING : GW_WORKER_READY;
            if (w->pool_id) {
                w->spawn_us = now - w->started_us;
                if (gw->start_failures)
                    log_info("worker %s is ready: local workers start without delay again", w->name);
                gw->start_failures = 0;
            }
            log_info("worker %s ready on %s (%s, budget %llu bytes)%s", w->name, w->addr, w->device,
                     (unsigned long long)w->budget_bytes, w->pool_id ? "" : " (remote)");
            if (w->pool_id)
                log_info("worker %s started in %llu us", w->name, (unsigned long long)w->spawn_us);
            gw_call *pc = w->pending_head;
            w->pending_head = w->pending_tail = NULL;
            w->pending_calls = 0;
            while (pc) {
                gw_call *next = pc->next;
                if (w->state == GW_WORKER_READY && w->call_msgs < AICFN_WORKER_MAX_CALL_MSGS &&
                    (pc->preload || !gw_crash_settling_locked(gw, pc->fn))) {
                    if (gw_refused_locked(pc, now, &a)) { /* before the view marks a load for it */
                        pc = next;
                        continue;
                    }
                    /* Its first status does not list the model yet: the load is held. */
                    if (pc->fn->key[0])
                        gw_worker_note_load(w, pc->fn->key, pc->fn->model_bytes, now, GW_HOLD_US);
                    gw_assign_locked(pc, w, &a, false);
                } else { /* draining, as many calls as it takes, or a crash settling */
                    gw_route_locked(gw, pc, &a);
                }
                pc = next;
            }
        }
    } else if (w->state != GW_WORKER_DEAD) {
        w->consecutive_poll_failures++;
        if (w->state == GW_WORKER_STARTING) {
            /* No other poll follows a starting worker's first one (only READY and DRAINING
             * workers are polled), so any failure of it ends the worker: else it would stay
             * STARTING, holding the calls routed to it, for ever (a remote one has no
             * start timeout). */
            if (rc == AICFN_E_TIMEOUT)
                log_warn("worker %s did not answer its first status within %d ms: %s", w->name,
                         AICFN_WORKER_START_TIMEOUT_MS, e.msg);
            else
                log_warn("worker %s: its first status failed (%s): %s", w->name, aicfn_status_name(rc),
                         e.msg);
            gw_worker_dead_locked(gw, w, &a);
        } else if (w->state != GW_WORKER_STARTING && w->consecutive_poll_failures >= 3) {
            log_warn("worker %s failed 3 status polls (%s): dropping it", w->name, e.msg);
            w->killed = true;
            w->kill_reason = "it failed 3 status polls";
            gw_worker_dead_locked(gw, w, &a);
        }
    }
    gw_pump_locked(gw, &a);
    pthread_mutex_unlock(&gw->mu);
    if (rc == AICFN_OK) gw_record_unreported_loads(gw, &rep.w, &src);
    wire_doc_fini(&doc);
    rpc_msg_free(reply);
    gw_process(gw, &a);
}

/* The link to w dropped (rpc_call_async refused a call or a poll with
 * AICFN_E_WORKER_LOST: single_peer, workerlink.c): the worker is gone (lock held). */
static void gw_link_dropped_locked(gw_gateway *gw, gw_worker *w, const char *why, gw_actions *a) {
    if (w->state == GW_WORKER_DEAD) return;
    log_warn("worker %s: its connection dropped (%s): dropping it", w->name, why);
    gw_worker_dead_locked(gw, w, a);
}

/* rpc_call_async refused call c with `rc` before sending it (lock held): a dropped
 * link routes it again, whatever its function (it never ran); anything else fails it. */
static void gw_call_not_sent_locked(gw_gateway *gw, gw_call *c, int rc, const char *why, gw_actions *a) {
    gw_worker *w = c->worker;
    gw_call_left_locked(gw, w, c);
    if (rc == AICFN_E_WORKER_LOST && !c->preload) {
        gw_link_dropped_locked(gw, w, why, a);
        c->worker = NULL;
        gw_route_locked(gw, c, a);
        return;
    }
    if (rc == AICFN_E_WORKER_LOST) gw_link_dropped_locked(gw, w, why, a);
    gw_fail_locked(a, c, rc, "sending to worker %s: %s", w->name, why);
}

static void gw_exit_done(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    gw_poll *p = user; /* the same pair as a poll's */
    gw_gateway *gw = p->gw;
    gw_worker *w = p->w;
    free(p);
    /* No answer is the usual outcome: the worker exits without one (the link drops). */
    if (status == AICFN_OK)
        log_warn("worker %s: answered its exit order instead of exiting", w->name);
    else if (status != AICFN_E_WORKER_LOST && status != AICFN_E_CANCELED)
        log_warn("worker %s: its exit order failed (%s): %s", w->name, aicfn_status_name(status),
                 err ? err->msg : "");
    rpc_msg_free(reply);
    pthread_mutex_lock(&gw->mu);
    w->callbacks--;
    gw_maint_wake_locked(gw); /* to unlink it now that its callbacks are done */
    pthread_mutex_unlock(&gw->mu);
}

/* Orders killed registered worker w to exit (lock NOT held; callbacks++ taken under it). */
static void gw_send_exit(gw_gateway *gw, gw_worker *w) {
    aicfn_error e;
    aicfn_error_clear(&e);
    /* Once sent, w is gw_exit_done's: it may be freed before rpc_call_async returns. */
    char name[sizeof w->name];
    snprintf(name, sizeof name, "%s", w->name);
    const char *reason = w->kill_reason ? w->kill_reason : "the gateway dropped it"; /* static */
    wire_writer wr;
    wire_writer_init(&wr);
    wire_put_map(&wr, 5);
    wire_kv_u64(&wr, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(&wr, "t", "exit");
    wire_kv_u64(&wr, "id", __atomic_add_fetch(&gw->next_poll_id, 1, __ATOMIC_RELAXED));
    wire_kv_str(&wr, "ctl", w->exit_token);
    wire_kv_str(&wr, "reason", reason);
    int rc = wire_writer_status(&wr, &e);
    if (rc == AICFN_OK) log_warn("worker %s: ordering it to exit (%s)", name, reason);
    gw_poll *p = rc == AICFN_OK ? malloc(sizeof *p) : NULL;
    if (p) {
        *p = (gw_poll){.gw = gw, .w = w};
        rc = rpc_call_async(w->client, wr.data, wr.len, GW_EXIT_TIMEOUT_MS, gw_exit_done, p, &e);
        if (rc != AICFN_OK) free(p);
    } else if (rc == AICFN_OK) {
        rc = aicfn_error_set(&e, AICFN_E_NOMEM, "out of memory");
    }
    wire_writer_fini(&wr);
    if (rc == AICFN_OK) return;
    log_warn("worker %s: its exit order could not be sent (%s): %s; the process may still be running", name,
             aicfn_status_name(rc), e.msg);
    pthread_mutex_lock(&gw->mu);
    w->callbacks--;
    gw_maint_wake_locked(gw);
    pthread_mutex_unlock(&gw->mu);
}

/* Sends a status poll (lock NOT held). callbacks/poll_pending were set under the lock. */
static void gw_send_poll(gw_gateway *gw, gw_worker *w) {
    aicfn_error e;
    wire_writer wr;
    wire_writer_init(&wr);
    uint64_t id = __atomic_add_fetch(&gw->next_poll_id, 1, __ATOMIC_RELAXED);
    int rc = wire_encode_status_req(&wr, id, __atomic_load_n(&w->loads_recorded, __ATOMIC_RELAXED), &e);
    gw_poll *p = rc == AICFN_OK ? malloc(sizeof *p) : NULL;
    if (p) {
        p->gw = gw;
        p->w = w;
        uint32_t timeout =
            w->state == GW_WORKER_STARTING ? AICFN_WORKER_START_TIMEOUT_MS : GW_POLL_TIMEOUT_MS;
        rc = rpc_call_async(w->client, wr.data, wr.len, timeout, gw_poll_done, p, &e);
        if (rc != AICFN_OK) free(p);
    } else if (rc == AICFN_OK) {
        rc = AICFN_E_NOMEM;
    }
    wire_writer_fini(&wr);
    if (rc != AICFN_OK) {
        gw_actions a;
        memset(&a, 0, sizeof a);
        pthread_mutex_lock(&gw->mu);
        w->callbacks--;
        w->poll_pending = false;
        if (rc == AICFN_E_WORKER_LOST) {
            gw_link_dropped_locked(gw, w, e.msg, &a);
        } else if (w->state == GW_WORKER_STARTING) {
            /* Only a starting worker's first poll leads it anywhere (gw_poll_done): one that
             * cannot be sent ends it, or it would stay STARTING with its calls for ever. */
            log_warn("worker %s: its first status could not be sent (%s): %s", w->name, aicfn_status_name(rc),
                     e.msg);
            gw_worker_dead_locked(gw, w, &a);
        }
        gw_pump_locked(gw, &a);
        pthread_mutex_unlock(&gw->mu);
        gw_process(gw, &a);
    }
}

/* Sends a bundle (lock NOT held). Returns false when it could not be sent: its calls
 * then failed or were routed again into `next`. */
static bool gw_bundle_send(gw_gateway *gw, gw_bundle *b, gw_actions *next) {
    gw_worker *w = b->w;
    wire_part parts[AICFN_BUNDLE_MAX_CALLS];
    uint32_t timeout = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        parts[i] = (wire_part){b->calls[i]->wreq, b->calls[i]->wreq_len};
        if (gw_link_timeout_ms(b->calls[i]) > timeout) timeout = gw_link_timeout_ms(b->calls[i]);
    }
    wire_writer wr;
    wire_writer_init(&wr);
    aicfn_error e;
    int rc = wire_encode_bundle_req(&wr, b->calls[0]->id, parts, b->n, &e);
    uint32_t n = b->n;
    if (rc == AICFN_OK)
        /* The worker answers a part still running at its timeout + grace as an overrun:
         * its reply must come before this gives up on the whole bundle. */
        rc = rpc_call_async(w->client, wr.data, wr.len, timeout + AICFN_BUNDLE_REPLY_MARGIN_MS, gw_bundle_cb, b,
                            &e);
    wire_writer_fini(&wr);
    if (rc == AICFN_OK) {
        gw_metric_add(gw->std.bundles, NULL, 1); /* b may be freed already */
        gw_metric_add(gw->std.bundled_calls, NULL, n);
        return true;
    }
    pthread_mutex_lock(&gw->mu);
    for (uint32_t i = 0; i < b->n; i++)
        gw_call_not_sent_locked(gw, b->calls[i], rc, e.msg, next);
    gw_link_msg_done_locked(gw, w, true, false, next);
    pthread_mutex_unlock(&gw->mu);
    free(b);
    return false;
}

/* Runs the actions collected under the lock (lock NOT held). May loop: failures of
 * sends and spawns produce more actions. It ends: a send that fails either fails its
 * call or drops its worker (a dropped link) before the call is routed again, and
 * spawns are bounded by the pool, so each further round has fewer places to go. The
 * actions of every round are carried out (never dropped: a dropped call would never be
 * answered). */
static void gw_process(gw_gateway *gw, gw_actions *a) {
    for (unsigned round = 0;; round++) {
        if (round == 64)
            log_warn("gateway: %u rounds of failed sends and spawns in one pass (links dropping in a row?)",
                     round);
        gw_actions next;
        memset(&next, 0, sizeof next);
        bool more = false;

        /* Spawns: fork outside the lock (the pool thread calls us back under it). */
        for (size_t i = 0; i < a->n_spawns; i++) {
            gw_worker *w = a->spawns[i];
            uint32_t id = 0;
            pid_t pid = 0;
            char addr[GW_POOL_ADDR_MAX];
            aicfn_error e;
            uint64_t t0 = clock_now_us();
            pthread_mutex_lock(&gw->mu);
            gw_pool *pool = gw->stopping ? NULL : gw->pool;
            if (pool) gw->spawning++;
            pthread_mutex_unlock(&gw->mu);
            int link_fd = -1;
            int rc = pool ? gw_pool_spawn_linked(pool, &id, addr, sizeof addr, &pid, &link_fd, &e)
                          : aicfn_error_set(&e, AICFN_E_CANCELED, "the gateway is stopping");
            pthread_mutex_lock(&gw->mu);
            if (pool && --gw->spawning == 0) pthread_cond_broadcast(&gw->spawn_cv);
            if (rc == AICFN_OK) {
                snprintf(w->name, sizeof w->name, "w%u", id);
                snprintf(w->addr, sizeof w->addr, "%s", addr);
                w->pool_id = id;
                w->pid = pid;
                w->started_us = t0;
                w->started_wall_us = clock_wall_us();
                if (w->state == GW_WORKER_DEAD) {
                    gw_pool_kill(pool, id); /* pool: still alive while we hold mu (gw_stop waits) */
                    gw_worker_row_locked(gw, w, gw->stopping ? GW_WROW_EXITED : GW_WROW_LOST);
                } else {
                    rc = gw_worker_connect(w, link_fd, true, &e);
                    link_fd = -1; /* taken */
                    /* It may have said it listens before its client existed (gw_on_ready
                     * then found nothing to dial). A link client (every worker the pool
                     * starts has one) needs no dial: its first poll waits in the socket. */
                    if (rc == AICFN_OK && gw_pool_ready(pool, id)) rc = rpc_client_dial(w->client, &e);
                    if (rc == AICFN_OK) {
                        w->callbacks++;
                        w->poll_pending = true;
                        next.polls[next.n_polls++] = w;
                        gw_worker_row_locked(gw, w, GW_WROW_STARTING);
                    } else {
                        gw_pool_kill(pool, id);
                        gw_worker_row_locked(gw, w, GW_WROW_LOST);
                    }
                }
            }
            if (link_fd >= 0) close(link_fd); /* a worker dead before its client existed */
            if (rc != AICFN_OK) {
                log_error("starting a local worker: %s", e.msg);
                if (pool && !gw->stopping) gw_start_failed_locked(gw, "a local worker could not be started");
                w->state = GW_WORKER_DEAD;
                gw_pending_reroute_locked(gw, w, &next);
            }
            pthread_mutex_unlock(&gw->mu);
            more = true;
        }
        for (size_t i = 0; i < a->n_polls; i++)
            gw_send_poll(gw, a->polls[i]);
        for (size_t i = 0; i < a->n_exits; i++)
            gw_send_exit(gw, a->exits[i]);
        for (size_t i = 0; i < a->n_unloads; i++)
            gw_idle_unload_start(gw, a->unloads[i].w, a->unloads[i].key, a->unloads[i].fn, a->unloads[i].ver,
                                 a->unloads[i].idle_ms, a->unloads[i].keep_only);

        /* Sends. */
        gw_call *c = a->sends;
        while (c) {
            gw_call *n2 = c->next;
            aicfn_error e;
            int rc = rpc_call_async(c->worker->client, c->wreq, c->wreq_len, gw_link_timeout_ms(c), gw_call_cb, c,
                                    &e);
            if (rc != AICFN_OK) {
                pthread_mutex_lock(&gw->mu);
                gw_worker *w = c->worker;
                bool short_msg = c->short_msg;
                gw_call_not_sent_locked(gw, c, rc, e.msg, &next);
                gw_link_msg_done_locked(gw, w, short_msg, false, &next);
                pthread_mutex_unlock(&gw->mu);
                more = true;
            }
            c = n2;
        }

        /* Bundles. */
        gw_bundle *b = a->bundles;
        while (b) {
            gw_bundle *nb = b->next;
            if (!gw_bundle_send(gw, b, &next)) more = true;
            b = nb;
        }

        /* Failures: record, answer, free. */
        c = a->fails;
        while (c) {
            gw_call *n2 = c->next;
            gw_record(gw, c, c->code, NULL, 0, 0);
            gw_invoke_result res = {
                .id = c->id, .code = c->code, .message = c->message, .version = c->fn ? c->fn->ver : 0};
            c->done(c->user, &res);
            gw_call_free(c);
            c = n2;
        }

        for (size_t i = 0; i < a->n_destroys; i++) {
            /* Its series goes with it: local names never repeat (w<N>), so kept series
             * would grow with every worker a scale from zero starts. */
            const char *wl[] = {a->destroys[i]->name, NULL};
            gw_metric_remove_where(gw->std.evictions, wl);
            gw_worker_destroy(a->destroys[i]);
        }

        if (!more) return;
        *a = next;
    }
}

/* ---- Submit ---------------------------------------------------------------------- */

static uint64_t gw_request_hash(const char *fn, const wire_invoke_req *req) {
    XXH3_state_t *st = XXH3_createState();
    if (!st) return 0;
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, fn, strlen(fn) + 1);
    for (uint32_t i = 0; i < req->n_inputs; i++) {
        const wire_tensor *t = &req->inputs[i];
        XXH3_64bits_update(st, t->name, strlen(t->name) + 1);
        XXH3_64bits_update(st, &t->dtype, sizeof t->dtype);
        XXH3_64bits_update(st, t->shape, sizeof t->shape[0] * t->ndim);
        if (t->nbytes) XXH3_64bits_update(st, t->data, (size_t)t->nbytes);
    }
    if (req->params) XXH3_64bits_update(st, req->params, req->params_len);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

/* Answers `req` with the reply stored in the response cache (`stored`, taken over):
 * the stored outputs under the request's id, cached: true, no worker fields. Delivered
 * on this thread before gw_invoke_submit returns (gateway.h); one ledger row (cached, no
 * worker, 0 GPU µs) and one counted call. AICFN_E_NOMEM / a decode error: nothing was
 * delivered and the caller fails the submit. */
static int gw_serve_cached(gw_gateway *gw, gw_fn *f, const wire_invoke_req *req, const char *tenant,
                           uint64_t in_bytes, uint64_t received_us, uint8_t *stored, size_t stored_len,
                           gw_invoke_done_fn done, void *user, aicfn_error *err) {
    wire_doc doc;
    wire_invoke_reply rep;
    int rc = wire_doc_parse(&doc, stored, stored_len, NULL, err);
    if (rc == AICFN_OK) rc = wire_decode_invoke_reply(&doc, &rep, err);
    if (rc != AICFN_OK) { /* cannot happen: it was decoded before it was stored */
        wire_doc_fini(&doc);
        free(stored);
        return aicfn_error_wrap(err, "function %s:%u: cached reply", f->name, f->ver);
    }
    rep.head.id = req->id;
    rep.cached = true;
    rep.cold = false;
    rep.batch = 0;
    rep.has_coldstart = false;
    rep.has_st = false;
    memset(&rep.timing, 0, sizeof rep.timing);
    rep.timing.total_us = clock_now_us() - received_us;
    wire_writer w;
    wire_writer_init(&w);
    rpc_msg *msg = NULL;
    rc = wire_encode_invoke_reply(&w, &rep, err);
    if (rc == AICFN_OK) rc = rpc_msg_new(w.data, w.len, &msg, err);
    wire_writer_fini(&w);
    if (rc != AICFN_OK) {
        wire_doc_fini(&doc);
        free(stored);
        return rc;
    }
    char rid[24];
    snprintf(rid, sizeof rid, "%llu", (unsigned long long)req->id);
    gw_invocation_record r = {.request_id = rid,
                              .tenant = tenant ? tenant : "",
                              .function = f->name,
                              .version = f->ver,
                              .status = AICFN_OK,
                              .bytes_in = in_bytes,
                              .bytes_out = rpc_msg_len(msg),
                              .total_us = rep.timing.total_us,
                              .cached = true};
    gw_ledger_submit_invocation(gw->ledger, &r);
    gw_stdmetrics_call(&gw->std, f->name, f->ver, AICFN_OK, r.total_us);
    gw_invoke_result res = {
        .id = req->id, .code = AICFN_OK, .message = "", .reply = msg, .decoded = &rep, .version = f->ver};
    done(user, &res);
    wire_doc_fini(&doc);
    free(stored);
    return AICFN_OK;
}

/* *resolved: the version the call was resolved to (a canary's, for its share), for the
 * record of a refusal; 0 when it was not resolved. */
static int gw_submit(gw_gateway *gw, const wire_invoke_req *req, const char *tenant, gw_invoke_done_fn done,
                     void *user, uint32_t *resolved, uint64_t *gid_out, aicfn_error *err) {
    uint64_t now = clock_now_us();
    *resolved = 0;
    if (!req->fn || !gw_fn_name_valid(req->fn))
        return aicfn_error_set(err, AICFN_E_INVALID, "invalid function name '%s'", req->fn ? req->fn : "");
    gw_fn *f = NULL;
    int rc = gw_resolve_call(gw, req->fn, req->ver, &f, err);
    if (rc != AICFN_OK) return rc;
    *resolved = f->ver;

    uint64_t in_bytes = 0;
    for (uint32_t i = 0; i < req->n_inputs; i++)
        in_bytes += req->inputs[i].nbytes;
    if (in_bytes > f->cfg.max_request_bytes) {
        rc = aicfn_error_set(err, AICFN_E_TOO_LARGE,
                             "function %s:%u: inputs of %llu bytes exceed its limit of %llu", f->name, f->ver,
                             (unsigned long long)in_bytes, (unsigned long long)f->cfg.max_request_bytes);
        gw_fn_unref(f);
        return rc;
    }

    uint8_t *ckey = NULL;
    size_t ckey_len = 0;
    if (f->cfg.cache_responses && gw->respcache) {
        /* A key longer than an entry may be is not worth building. */
        uint64_t max_key = gw_respcache_get_stats(gw->respcache).max_bytes / 8;
        if (gw_respcache_key(tenant, f->name, f->ver, req, (size_t)max_key, &ckey, &ckey_len, NULL) ==
            AICFN_OK) {
            uint8_t *hit = NULL;
            size_t hit_len = 0;
            bool found = gw_respcache_get(gw->respcache, ckey, ckey_len, now, &hit, &hit_len);
            gw_metric_add(gw->std.response_cache, (const char *[]){f->name, found ? "hit" : "miss"}, 1);
            if (found) {
                free(ckey);
                rc = gw_serve_cached(gw, f, req, tenant, in_bytes, now, hit, hit_len, done, user, err);
                gw_fn_unref(f);
                return rc;
            }
        }
    }

    uint64_t timeout_ms = gw_fn_timeout_ms(f);
    if (req->deadline_ms && req->deadline_ms < timeout_ms) timeout_ms = req->deadline_ms;

    gw_call *c = calloc(1, sizeof *c);
    if (!c) {
        free(ckey);
        gw_fn_unref(f);
        return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    }
    c->cache_key = ckey;
    c->cache_key_len = ckey_len;
    c->gw = gw;
    c->fn = f; /* the resolve's reference is the call's now */
    c->id = req->id;
    c->gid = __atomic_add_fetch(&gw->next_gid, 1, __ATOMIC_RELAXED);
    if (gid_out) *gid_out = c->gid;
    snprintf(c->tenant, sizeof c->tenant, "%s", tenant ? tenant : "");
    c->tenant_id = gw_fairq_tenant_id(c->tenant);
    c->received_us = now;
    c->timeout_ms = (uint32_t)timeout_ms;
    c->deadline_us = now + timeout_ms * 1000;
    c->attempts = 1;
    c->done = done;
    c->user = user;
    c->bytes_in = in_bytes;
    c->hash = gw_request_hash(f->name, req);

    wire_invoke_req wr = *req;
    wr.ver = f->ver;
    wr.key = NULL;
    wr.tenant = c->tenant[0] ? c->tenant : NULL;
    wr.gid = c->gid;
    wr.deadline_ms = c->timeout_ms;
    wr.has_spec = true;
    wr.spec = (wire_fn_spec){.handler = f->handler_path,
                             .snapshot = f->snapshot_path[0] ? f->snapshot_path : NULL,
                             .model = f->key[0] ? f->key : NULL,
                             .model_bytes = f->model_bytes,
                             .max_batch = f->cfg.max_batch ? f->cfg.max_batch : 1,
                             .max_delay_us = (uint32_t)f->cfg.max_delay_us,
                             .timeout_ms = gw_fn_timeout_ms(f),
                             .idempotent = f->cfg.idempotent,
                             .n_params = (uint32_t)f->cfg.n_params,
                             .params = f->cfg.params};
    wire_writer w;
    wire_writer_init(&w);
    rc = wire_encode_invoke_req(&w, &wr, err);
    if (rc != AICFN_OK) {
        wire_writer_fini(&w);
        gw_call_free(c); /* with its response-cache key */
        return rc;
    }
    c->wreq = wire_writer_take(&w, &c->wreq_len);
    wire_writer_fini(&w);
    if (!c->wreq) {
        gw_call_free(c);
        return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    }

    gw_actions a;
    memset(&a, 0, sizeof a);
    pthread_mutex_lock(&gw->mu);
    if (gw->stopping) {
        pthread_mutex_unlock(&gw->mu);
        gw_call_free(c);
        return aicfn_error_set(err, AICFN_E_UNAVAILABLE, "the gateway is stopping");
    }
    const gw_crash *cr = gw_crash_refusing(f, c, now);
    if (cr) {
        char why[AICFN_ERRMSG_MAX];
        gw_crash_refusal(f, c, cr, now, why, sizeof why);
        pthread_mutex_unlock(&gw->mu);
        gw_call_free(c);
        return aicfn_error_set(err, AICFN_E_UNAVAILABLE, "%s", why);
    }
    if (!gw_queue_admit_locked(f, c, &a)) { /* refused: nothing was done for it */
        uint32_t q = f->q_len;
        pthread_mutex_unlock(&gw->mu);
        gw_call_free(c);
        return aicfn_error_set(err, AICFN_E_OVERLOADED, "function %s:%u: %u calls already queued", f->name,
                               f->ver, q);
    }
    gw_route_locked(gw, c, &a);
    pthread_mutex_unlock(&gw->mu);
    gw_process(gw, &a);
    return AICFN_OK;
}

/* ---- Pool exits, maintenance ------------------------------------------------------ */

static void gw_on_exit(void *arg, uint32_t id, pid_t pid, int st) {
    (void)pid;
    (void)st;
    gw_gateway *gw = arg;
    gw_actions a;
    memset(&a, 0, sizeof a);
    pthread_mutex_lock(&gw->mu);
    for (gw_worker *w = gw->workers; w; w = w->next)
        if (w->pool_id == id) {
            gw_worker_dead_locked(gw, w, &a);
            break;
        }
    gw_pump_locked(gw, &a);
    pthread_mutex_unlock(&gw->mu);
    gw_process(gw, &a);
}

/* A local worker listens: its link dials it now (its first status poll waits in the
 * link). Until then nothing dials it: a worker that takes seconds to start (a GPU's
 * driver) is not dialed hundreds of times meanwhile, and a fast one is reached as soon
 * as it listens, not at the next of a dial's retries. */
static void gw_on_ready(void *arg, uint32_t id) {
    gw_gateway *gw = arg;
    pthread_mutex_lock(&gw->mu);
    for (gw_worker *w = gw->workers; w; w = w->next) {
        if (w->pool_id != id) continue;
        if (w->client && w->state == GW_WORKER_STARTING) {
            aicfn_error e;
            if (rpc_client_dial(w->client, &e) != AICFN_OK)
                log_warn("worker %s: dialing it: %s (its first status poll will fail)", w->name, e.msg);
        }
        break;
    }
    pthread_mutex_unlock(&gw->mu);
}

/* ---- Scaling: min_workers (keep-warm), idle_timeout (unload) ---------------------- */

typedef struct gw_warm {
    gw_gateway *gw;
    gw_fn *f;
} gw_warm;

/* A keep-warm preload ended: on failure the next try waits AICFN_KEEP_WARM_RETRY_MS. */
static void gw_keepwarm_done(void *user, const gw_invoke_result *res) {
    gw_warm *kw = user;
    gw_fn *f = kw->f;
    if (res->code != AICFN_OK) {
        log_warn("function %s:%u: keep-warm load (scaling.min_workers %u) failed: %s; retrying in %d ms",
                 f->name, f->ver, f->cfg.min_workers, res->message ? res->message : "",
                 AICFN_KEEP_WARM_RETRY_MS);
        pthread_mutex_lock(&kw->gw->mu);
        f->warm_retry_us = clock_now_us() + (uint64_t)AICFN_KEEP_WARM_RETRY_MS * 1000;
        pthread_mutex_unlock(&kw->gw->mu);
    }
    free(kw);
}

/* The holders of f's model in the live pool (lock held): ready or starting workers
 * with it READY or LOADING; for a function without a model, every such worker. */
static uint32_t gw_holders_locked(gw_gateway *gw, const gw_fn *f) {
    gw_route_worker view[GW_MAX_VIEW];
    gw_worker *ws[GW_MAX_VIEW];
    size_t n = gw_view_locked(gw, NULL, view, ws);
    gw_route_request r = gw_request_locked(gw, f);
    return gw_route_holders(view, n, &r);
}

/* True when w holds f's model (as gw_holders_locked counts it). Lock held. */
static bool gw_holds_locked(gw_gateway *gw, const gw_fn *f, const gw_worker *w) {
    if (w->state == GW_WORKER_DEAD || w->state == GW_WORKER_DRAINING) return false;
    gw_route_worker v;
    gw_worker_route_view(w, &v);
    gw_route_request r = gw_request_locked(gw, f);
    return gw_route_holders(&v, 1, &r) == 1;
}

/* A keep-warm preload of f's model (kept resident on the worker) on ws[i]. Lock held. */
static bool gw_keep_on_locked(gw_gateway *gw, gw_fn *f, gw_worker **ws, const gw_route_decision *d,
                              gw_actions *a) {
    gw_warm *kw = malloc(sizeof *kw);
    gw_call *c = kw ? gw_preload_call_new(gw, f, true, gw_keepwarm_done, kw) : NULL;
    if (!c) {
        free(kw);
        return false; /* out of memory: try on a later tick */
    }
    kw->gw = gw;
    kw->f = f;
    c->keepwarm = true;
    if (!gw_apply_route_locked(gw, c, ws, d, a)) {
        gw_call_free(c);
        free(kw);
        return false;
    }
    return true;
}

/* f's model is on enough workers; makes sure scaling.min_workers of them keep it
 * resident (it may have been loaded by calls before f became warm): a keep-warm preload
 * to each READY holder that does not keep it, until enough do. Lock held. */
static void gw_keep_holders_locked(gw_gateway *gw, gw_fn *f, const gw_route_worker *view, gw_worker **ws,
                                   size_t n, gw_actions *a) {
    uint32_t kept = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < view[i].n_models; k++)
            if (strcmp(view[i].models[k].key, f->key) == 0 && view[i].models[k].kept) kept++;
    for (size_t i = 0; i < n && kept < f->cfg.min_workers; i++) {
        /* A full worker (every call context in use) is asked on a later tick: the keep
         * would take a context its status polls need. */
        if (!view[i].usable || view[i].full) continue;
        gw_route_model *m = NULL;
        for (size_t k = 0; k < ws[i]->n_models && !m; k++)
            if (strcmp(ws[i]->models[k].key, f->key) == 0) m = &ws[i]->models[k];
        if (!m || m->state != GW_MODEL_READY || m->kept) continue;
        gw_route_decision d = {.kind = GW_ROUTE_READY, .worker = (int)i};
        if (!gw_keep_on_locked(gw, f, ws, &d, a)) return;
        m->kept = true; /* in the view at once, so the next tick does not ask again; the
                           worker's answer confirms it (or the next status undoes it) */
        kept++;
        log_info("function %s:%u: worker %s keeps its model resident (scaling.min_workers %u)", f->name,
                 f->ver, ws[i]->name, f->cfg.min_workers);
    }
}

/* Keeps f's model on at least scaling.min_workers workers (f is an active version):
 * places the missing replicas with the router (new_replica: free budget, eviction, or
 * a new worker while the pool may grow) and preloads the model there. A function
 * without a model keeps that many workers running. Says once when it cannot. */
static void gw_keep_warm_locked(gw_gateway *gw, gw_fn *f, uint64_t now, gw_actions *a) {
    uint32_t min = f->cfg.min_workers;
    if (!f->warm || min == 0 || gw->stopping || now < f->warm_retry_us) return;
    uint32_t holders = 0;
    for (uint32_t round = 0; round <= min; round++) {
        gw_route_worker view[GW_MAX_VIEW];
        gw_worker *ws[GW_MAX_VIEW];
        size_t n = gw_view_locked(gw, NULL, view, ws);
        gw_route_request r = gw_request_locked(gw, f);
        holders = gw_route_holders(view, n, &r);
        if (holders >= min) {
            if (f->key[0]) gw_keep_holders_locked(gw, f, view, ws, n, a);
            if (f->warm_unmet_logged)
                log_info("function %s:%u: scaling.min_workers %u met again", f->name, f->ver, min);
            f->warm_unmet_logged = false;
            return;
        }
        if (!f->key[0]) {
            /* Nothing to load: a running worker is a warm one. */
            if (!r.pool_may_grow) break;
            if (!gw_spawn_locked(gw, a)) return; /* too many spawns in one tick */
            log_info("function %s:%u: starting a worker (scaling.min_workers %u, %u running)", f->name,
                     f->ver, min, holders);
            continue;
        }
        r.new_replica = true;
        gw_route_decision d;
        gw_route_kind k = gw_route_decide(view, n, &r, &d);
        if (k != GW_ROUTE_FREE && k != GW_ROUTE_EVICT && k != GW_ROUTE_SPAWN) break;
        if (!gw_keep_on_locked(gw, f, ws, &d, a)) return; /* out of memory or too many spawns: next tick */
        log_info("function %s:%u: loading its model on %s%s (scaling.min_workers %u, %u holding it)", f->name,
                 f->ver, k == GW_ROUTE_SPAWN ? "a new worker" : "worker ",
                 k == GW_ROUTE_SPAWN ? "" : ws[d.worker]->name, min, holders);
    }
    if (!f->warm_unmet_logged)
        log_warn("function %s:%u: scaling.min_workers %u cannot be met: %u worker(s) hold it and no other "
                 "worker can take it (pool of at most %u local workers)",
                 f->name, f->ver, min, holders, gw->max_workers);
    f->warm_unmet_logged = true;
}

/* True when stopping w would leave an active function below its min_workers. */
static bool gw_worker_keeps_warm_locked(gw_gateway *gw, const gw_worker *w) {
    for (gw_fn *f = gw->fns; f; f = f->next) {
        if (!f->warm || f->cfg.min_workers == 0 || !gw_holds_locked(gw, f, w)) continue;
        if (gw_holders_locked(gw, f) <= f->cfg.min_workers) return true;
    }
    return false;
}

/* Queues the unload of every READY, unpinned model that has had no call for the
 * scaling.idle_timeout of the functions using it (the longest of them; 0 = never),
 * keeping the scaling.min_workers holders of an active function (the largest). The
 * model is marked EVICTING in the view at once, so no call is routed to it meanwhile;
 * the worker's answer (or its next status) replaces the view. */
static void gw_idle_unloads_locked(gw_gateway *gw, uint64_t now, gw_actions *a) {
    for (gw_worker *w = gw->workers; w; w = w->next) {
        if (w->state != GW_WORKER_READY || !w->client) continue;
        for (size_t i = 0; i < w->n_models && a->n_unloads < GW_MAX_UNLOADS; i++) {
            gw_route_model *m = &w->models[i];
            if (m->state != GW_MODEL_READY || m->pinned || m->kept) continue;
            uint64_t idle = 0;
            bool never = false;
            uint32_t min = 0;
            const gw_fn *named = NULL;
            for (const gw_fn *f = gw->fns; f; f = f->next) {
                if (f->removed || !f->key[0] || strcmp(f->key, m->key) != 0) continue;
                if (!named || f->warm) named = f;
                if (f->cfg.idle_timeout_us == 0) never = true;
                if (f->cfg.idle_timeout_us > idle) idle = f->cfg.idle_timeout_us;
                if (f->warm && f->cfg.min_workers > min) min = f->cfg.min_workers;
            }
            /* A model no known function uses (left by an earlier gateway): the LRU's. */
            if (!named || never || now < m->last_use_us || now - m->last_use_us < idle) continue;
            if (gw_holders_locked(gw, named) <= min) continue;
            m->state = GW_MODEL_EVICTING;
            w->callbacks++;
            a->unloads[a->n_unloads].w = w;
            snprintf(a->unloads[a->n_unloads].key, sizeof a->unloads[a->n_unloads].key, "%s", m->key);
            snprintf(a->unloads[a->n_unloads].fn, sizeof a->unloads[a->n_unloads].fn, "%s", named->name);
            a->unloads[a->n_unloads].ver = named->ver;
            a->unloads[a->n_unloads].idle_ms = (now - m->last_use_us) / 1000;
            a->n_unloads++;
        }
    }
}

/* Queues the end of the keep of every model a worker keeps resident for
 * scaling.min_workers that no active version keeps warm any more (a redeploy, an rm,
 * min_workers back to 0): it stays resident as an ordinary model, for the LRU and
 * scaling.idle_timeout. Not while the warm marks are being re-read. */
static void gw_unkeeps_locked(gw_gateway *gw, gw_actions *a) {
    if (gw->scaling_dirty) return;
    for (gw_worker *w = gw->workers; w; w = w->next) {
        if (w->state != GW_WORKER_READY || !w->client) continue;
        for (size_t i = 0; i < w->n_models && a->n_unloads < GW_MAX_UNLOADS; i++) {
            gw_route_model *m = &w->models[i];
            if (!m->kept || m->state != GW_MODEL_READY) continue;
            const gw_fn *named = NULL;
            bool warm = false;
            for (const gw_fn *f = gw->fns; f; f = f->next) {
                if (!f->key[0] || strcmp(f->key, m->key) != 0) continue;
                if (!named || f->warm) named = f;
                warm = warm || f->warm;
            }
            if (warm) continue;
            m->kept = false; /* in the view at once: asked once; the worker's answer confirms */
            w->callbacks++;
            a->unloads[a->n_unloads].w = w;
            snprintf(a->unloads[a->n_unloads].key, sizeof a->unloads[a->n_unloads].key, "%s", m->key);
            snprintf(a->unloads[a->n_unloads].fn, sizeof a->unloads[a->n_unloads].fn, "%s",
                     named ? named->name : "?");
            a->unloads[a->n_unloads].ver = named ? named->ver : 0;
            a->unloads[a->n_unloads].idle_ms = 0;
            a->unloads[a->n_unloads].keep_only = true;
            a->n_unloads++;
        }
    }
}

/* Re-reads which functions keep workers warm (lock NOT held; the maintenance thread,
 * after a deploy or rm: gw_functions_changed): the active version of every function whose
 * scaling.min_workers is above 0 is resolved (cached) and marked warm; every other
 * cached entry is not. Blocks on SQLite. */
static void gw_scaling_refresh(gw_gateway *gw) {
    gw_function_summary *s = NULL;
    size_t n = 0;
    aicfn_error e;
    int rc = gw_registry_list(gw_gateway_read_db(gw), &s, &n, &e);
    gw_fn **warm = rc == AICFN_OK && n ? calloc(n, sizeof *warm) : NULL;
    if (rc == AICFN_OK && n && !warm) rc = aicfn_error_set(&e, AICFN_E_NOMEM, "out of memory");
    size_t n_warm = 0;
    for (size_t i = 0; rc == AICFN_OK && i < n; i++) {
        if (!s[i].active_version || s[i].min_workers == 0) continue;
        gw_fn *f = NULL;
        aicfn_error fe;
        if (gw_resolve(gw, s[i].name, s[i].active_version, &f, &fe) == AICFN_OK)
            warm[n_warm++] = f;
        else
            log_warn("function %s:%u: scaling.min_workers not applied: %s", s[i].name, s[i].active_version,
                     fe.msg);
    }
    pthread_mutex_lock(&gw->mu);
    if (rc == AICFN_OK) {
        for (gw_fn *f = gw->fns; f; f = f->next) {
            bool was = f->warm;
            f->warm = false;
            for (size_t i = 0; i < n_warm; i++)
                if (warm[i] == f) f->warm = true;
            if (!f->warm) f->warm_unmet_logged = false;
            if (f->warm && !was)
                log_info("function %s:%u: keeping its model on at least %u worker(s) (scaling.min_workers)",
                         f->name, f->ver, f->cfg.min_workers);
        }
    } else {
        gw->scaling_dirty = true;
        gw->scaling_retry_us = clock_now_us() + (uint64_t)AICFN_KEEP_WARM_RETRY_MS * 1000;
    }
    pthread_mutex_unlock(&gw->mu);
    if (rc != AICFN_OK) log_warn("reading the functions' scaling: %s", e.msg);
    for (size_t i = 0; i < n_warm; i++)
        gw_fn_unref(warm[i]);
    free(warm);
    free(s);
}

/* Whether f is the entry that speaks for its resident model in the idle unload (lock
 * held): its model is on a worker of the pool, and no other entry of that model (not
 * removed) was resolved later. Older versions' entries of the model leave the cache as
 * usual, so their idle timeouts stop counting once they are no longer called. */
static bool gw_fn_speaks_for_resident_model(const gw_gateway *gw, const gw_fn *f) {
    if (f->removed || !f->key[0]) return false;
    for (const gw_fn *g = gw->fns; g; g = g->next)
        if (g != f && !g->removed && g->used_us > f->used_us && strcmp(g->key, f->key) == 0) return false;
    for (const gw_worker *w = gw->workers; w; w = w->next)
        for (size_t i = 0; w->state != GW_WORKER_DEAD && i < w->n_models; i++)
            if (strcmp(w->models[i].key, f->key) == 0) return true;
    return false;
}

/* Frees cached function entries nobody uses (lock held): no reference (no call, no
 * resolve in progress), no queue, not kept warm, no crash back-off running, not the one
 * speaking for a resident model (scaling.idle_timeout finds a resident model's functions
 * here), and not resolved for the cache's idle time. A later call reads the registry again. So the
 * cache holds what is in use, not every version ever called. At most once a second. */
static void gw_trim_fns_locked(gw_gateway *gw, uint64_t now) {
    if (now < gw->fn_trim_at_us) return;
    gw->fn_trim_at_us = now + 1000000;
    for (gw_fn **pf = &gw->fns; *pf;) {
        gw_fn *f = *pf;
        bool backing_off = false;
        for (int i = 0; i < GW_CRASH_SLOTS && !backing_off; i++)
            backing_off = f->crash[i].crashes > 0 && f->crash[i].until_us > now;
        if (atomic_load(&f->refs) != 0 || f->q_len || f->warm || backing_off ||
            now - f->used_us < gw->fn_idle_us || gw_fn_speaks_for_resident_model(gw, f)) {
            pf = &f->next;
            continue;
        }
        for (gw_alias **pa = &gw->aliases; *pa;) {
            gw_alias *al = *pa;
            if (al->fn != f) {
                pa = &al->next;
                continue;
            }
            *pa = al->next;
            free(al);
        }
        *pf = f->next;
        gw_fn_config_clear(&f->cfg);
        free(f);
    }
}

static void gw_maintain_locked(gw_gateway *gw, gw_actions *a) {
    uint64_t now = clock_now_us();
    gw_trim_fns_locked(gw, now);
    /* Queue deadlines. */
    for (gw_fn *f = gw->fns; f; f = f->next) {
        gw_call *prev = NULL, *next;
        for (gw_call *c = f->q_head; c; c = next) {
            next = c->next;
            if (c->deadline_us <= now || gw->stopping) {
                gw_queue_unlink_locked(f, prev, c);
                if (gw->stopping)
                    gw_fail_locked(a, c, AICFN_E_CANCELED, "the gateway is stopping");
                else
                    gw_fail_locked(a, c, AICFN_E_TIMEOUT,
                                   "function %s:%u: no worker could take the call within %u ms%s", f->name,
                                   f->ver, c->timeout_ms,
                                   gw->start_failures ? " (local workers die before they are ready: see the "
                                                        "gateway's log)"
                                                      : "");
                continue;
            }
            prev = c;
        }
    }
    /* Workers: start timeouts, idle drains, polls, cleanup. */
    uint32_t alive = gw_local_alive(gw), serving = gw_local_serving(gw);
    for (gw_worker **pw = &gw->workers; *pw;) {
        gw_worker *w = *pw;
        if (w->state == GW_WORKER_STARTING && w->pool_id && gw->pool &&
            (gw_pool_pid(gw->pool, w->pool_id) < 0 ||
             now - w->started_us > (uint64_t)AICFN_WORKER_START_TIMEOUT_MS * 1000)) {
            log_warn("worker %s failed to start", w->name);
            gw_worker_dead_locked(gw, w, a);
        }
        if (w->state == GW_WORKER_STARTING && w->pending_head) gw_expire_pending_locked(w, now, a);
        if (w->state == GW_WORKER_READY && w->pool_id && w->in_flight == 0 && !w->pending_head &&
            now - w->last_call_us >= gw->idle_timeout_us && serving > gw->min_workers && !gw->stopping &&
            !gw_worker_keeps_warm_locked(gw, w)) {
            log_info("worker %s idle for %llu ms: draining it (scale down)", w->name,
                     (unsigned long long)((now - w->last_call_us) / 1000));
            w->state = GW_WORKER_DRAINING;
            gw_worker_row_locked(gw, w, GW_WROW_DRAINING);
            if (gw->pool) gw_pool_terminate(gw->pool, w->pool_id); /* idle: nothing to finish */
            serving--;
        }
        if (w->outbox_head) gw_expire_outbox_locked(gw, w, now, a);
        if (w->outbox_head && w->state == GW_WORKER_DRAINING)
            gw_outbox_reroute_locked(gw, w, a); /* it takes no new calls */
        else if (w->outbox_head && !w->doomed && now - w->outbox_since_us >= AICFN_BUNDLE_HOLD_MAX_US)
            gw_outbox_flush_locked(gw, w, a); /* a short function turned slow */
        if ((w->state == GW_WORKER_READY || w->state == GW_WORKER_DRAINING) && w->client &&
            !w->poll_pending && now - w->last_poll_us >= (uint64_t)AICFN_WORKER_POLL_MS * 1000 &&
            a->n_polls < GW_MAX_VIEW) {
            w->poll_pending = true;
            w->callbacks++;
            a->polls[a->n_polls++] = w;
        }
        if (w->state == GW_WORKER_DEAD && w->callbacks == 0 && !w->pending_head &&
            a->n_destroys < GW_MAX_VIEW &&
            (w->pool_id == 0 || !gw->pool || gw_pool_pid(gw->pool, w->pool_id) < 0)) {
            if (w->settling) { /* cannot be: no callback left means no call in flight */
                w->settling = false;
                gw->settling--;
            }
            *pw = w->next;
            a->destroys[a->n_destroys++] = w;
            continue;
        }
        pw = &w->next;
    }
    /* min_workers: serving ones, within max_workers processes. */
    while (!gw->stopping && gw->max_workers && serving < gw->min_workers && alive < gw->max_workers) {
        if (!gw_spawn_locked(gw, a)) break;
        serving++;
        alive++;
    }
    gw_pump_locked(gw, a);
    /* Functions' scaling, after queued calls had their pick of the workers. */
    if (!gw->stopping) {
        for (gw_fn *f = gw->fns; f; f = f->next)
            gw_keep_warm_locked(gw, f, now, a);
        gw_unkeeps_locked(gw, a);
        gw_idle_unloads_locked(gw, now, a);
    }
}

/* Whether the maintenance thread has work due within GW_TICK_MS: calls queued (their
 * deadlines), held for a bundle or in flight (more may be held), workers starting or dead,
 * min_workers short, scaling to re-read, stopping. Otherwise everything it times (idle
 * drains and unloads, status polls, keep-warm retries) is seconds away, and it sleeps
 * GW_IDLE_TICK_MS, woken early by gw_maint_wake_locked (lock held). */
static bool gw_maint_busy_locked(gw_gateway *gw) {
    if (gw->stopping || gw->scaling_dirty) return true;
    for (gw_fn *f = gw->fns; f; f = f->next)
        if (f->q_head) return true;
    for (gw_worker *w = gw->workers; w; w = w->next)
        if (w->in_flight || w->pending_head || w->outbox_head || w->state == GW_WORKER_STARTING ||
            w->state == GW_WORKER_DEAD)
            return true;
    return gw_local_serving(gw) < gw->min_workers && gw_local_alive(gw) < gw->max_workers;
}

static void *gw_maint_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:maint");
    gw_gateway *gw = arg;
    pthread_mutex_lock(&gw->mu);
    for (;;) {
        gw_actions a;
        memset(&a, 0, sizeof a);
        gw_maintain_locked(gw, &a);
        bool stop = gw->stopping;
        bool refresh = gw->scaling_dirty && !stop && clock_now_us() >= gw->scaling_retry_us;
        if (refresh) gw->scaling_dirty = false;
        bool idle = true;
        for (gw_worker *w = gw->workers; w; w = w->next)
            idle = false;
        pthread_mutex_unlock(&gw->mu);
        gw_process(gw, &a);
        if (refresh) gw_scaling_refresh(gw);
        if (stop && idle) return NULL;
        pthread_mutex_lock(&gw->mu);
        if (gw->stopping && !gw->workers) break;
        gw->maint_idle = !gw_maint_busy_locked(gw);
        uint64_t tick_us = (uint64_t)(gw->maint_idle ? GW_IDLE_TICK_MS : GW_TICK_MS) * 1000;
        struct timespec ts;
        clock_deadline_to_timespec(clock_now_us() + tick_us, &ts);
        pthread_cond_timedwait(&gw->maint_cv, &gw->mu, &ts);
        gw->maint_idle = false;
    }
    pthread_mutex_unlock(&gw->mu);
    return NULL;
}

/* ---- Registration, views ---------------------------------------------------------- */

/* A live worker named `name`, or NULL (lock held). */
static gw_worker *gw_worker_by_name_locked(gw_gateway *gw, const char *name) {
    for (gw_worker *w = gw->workers; w; w = w->next)
        if (w->state != GW_WORKER_DEAD && strcmp(w->name, name) == 0) return w;
    return NULL;
}

/* A registered worker's name: 1..AICFN_WORKER_ID_MAX_BYTES of [A-Za-z0-9_.@-] (it is
 * a label value in /metrics, a key in the workers table and JSON in `aicfn workers`). */
static bool gw_worker_name_valid(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > AICFN_WORKER_ID_MAX_BYTES) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '.' || c == '@' || c == '-';
        if (!ok) return false;
    }
    return true;
}

/* w<digits>: the names of local workers (pool ids), not for remote ones. */
static bool gw_worker_name_reserved(const char *name) {
    if (name[0] != 'w' || !name[1]) return false;
    for (const char *p = name + 1; *p; p++)
        if (*p < '0' || *p > '9') return false;
    return true;
}

int gw_register_worker(gw_gateway *gw, const char *name, const char *addr, const char *exit_token,
                       aicfn_error *err) {
    int rc = rpc_check_url(addr, err);
    if (rc != AICFN_OK) return rc;
    if (exit_token && strlen(exit_token) > AICFN_WORKER_EXIT_TOKEN_MAX)
        return aicfn_error_set(err, AICFN_E_INVALID, "exit token longer than %d bytes",
                               AICFN_WORKER_EXIT_TOKEN_MAX);
    if (strlen(addr) >= sizeof(((gw_worker *)0)->addr))
        return aicfn_error_set(err, AICFN_E_INVALID, "worker address too long");
    gw_actions a;
    memset(&a, 0, sizeof a);
    if (name && name[0] && !gw_worker_name_valid(name))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "worker name: 1 to %d characters of A-Z a-z 0-9 _ . @ - (got %zu bytes)",
                               AICFN_WORKER_ID_MAX_BYTES, strlen(name));
    if (name && name[0] && gw_worker_name_reserved(name))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "worker name '%s': names w<N> are the gateway's local workers'", name);
    pthread_mutex_lock(&gw->mu);
    uint32_t remote = 0;
    for (gw_worker *w = gw->workers; w; w = w->next) {
        if (w->state == GW_WORKER_DEAD) continue;
        if (strcmp(w->addr, addr) == 0) {
            /* A renewal, or a worker restarted at this address (the link reaches it): its
             * token is the one that ends the process there now. */
            if (w->pool_id == 0 && exit_token)
                snprintf(w->exit_token, sizeof w->exit_token, "%s", exit_token);
            pthread_mutex_unlock(&gw->mu);
            return aicfn_error_set(err, AICFN_E_EXISTS, "a worker is already registered at %s", addr);
        }
        remote += w->pool_id == 0 && w->addr[0];
    }
    if (!rc && gw->stopping) rc = aicfn_error_set(err, AICFN_E_UNAVAILABLE, "the gateway is stopping");
    if (!rc && remote >= gw->max_remote_workers)
        rc = aicfn_error_set(err, AICFN_E_CAPACITY,
                             "the gateway keeps %u registered workers, its most (--max-remote-workers; with "
                             "--workers ..%u at most %u)",
                             remote, gw->max_workers, GW_MAX_VIEW - gw->max_workers);
    if (rc) {
        pthread_mutex_unlock(&gw->mu);
        return rc;
    }
    char gen[64];
    if (!name || !name[0]) {
        /* r<N>, skipping names live workers use. */
        for (int tries = 0; tries < GW_MAX_VIEW + 1; tries++) {
            snprintf(gen, sizeof gen, "r%u", ++gw->next_remote);
            if (!gw_worker_by_name_locked(gw, gen)) break;
        }
        name = gen;
    }
    if (gw_worker_by_name_locked(gw, name)) {
        /* Not EXISTS: that answers a worker already registered at its own address (a
         * renewal), and this one is another worker: two with one --id. */
        pthread_mutex_unlock(&gw->mu);
        return aicfn_error_set(err, AICFN_E_INVALID, "a live worker at another address is already named '%s'",
                               name);
    }
    gw_worker *w = gw_worker_new(name, addr, 0, 0, clock_now_us());
    if (!w) {
        pthread_mutex_unlock(&gw->mu);
        return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    }
    if (exit_token) snprintf(w->exit_token, sizeof w->exit_token, "%s", exit_token);
    rc = gw_worker_connect(w, -1, false, err);
    if (rc != AICFN_OK) {
        pthread_mutex_unlock(&gw->mu);
        gw_worker_destroy(w);
        return rc;
    }
    w->next = gw->workers;
    gw->workers = w;
    w->callbacks++;
    w->poll_pending = true;
    a.polls[a.n_polls++] = w;
    gw_worker_row_locked(gw, w, GW_WROW_STARTING);
    pthread_mutex_unlock(&gw->mu);
    log_info("worker %s registered at %s", name, addr);
    gw_process(gw, &a);
    return AICFN_OK;
}

static const gw_fn *gw_fn_by_key(gw_gateway *gw, const char *key) {
    for (gw_fn *f = gw->fns; f; f = f->next)
        if (f->key[0] && strcmp(f->key, key) == 0) return f;
    return NULL;
}

json_t *gw_workers_json(gw_gateway *gw) {
    json_t *arr = json_array();
    if (!arr) return NULL;
    uint64_t now = clock_now_us();
    pthread_mutex_lock(&gw->mu);
    for (gw_worker *w = gw->workers; w; w = w->next) {
        if (w->state == GW_WORKER_DEAD) continue;
        json_t *models = json_array();
        for (size_t i = 0; models && i < w->n_models; i++) {
            const gw_route_model *m = &w->models[i];
            if (strcmp(m->key, GW_NO_MODEL_KEY) == 0) continue;
            const gw_fn *f = gw_fn_by_key(gw, m->key);
            json_array_append_new(
                models,
                json_pack("{s:s, s:s, s:i, s:s, s:I, s:i, s:b, s:I}", "model", m->key, "function",
                          f ? f->name : "", "version", f ? (int)f->ver : 0, "state",
                          m->state == GW_MODEL_READY     ? "READY"
                          : m->state == GW_MODEL_LOADING ? "LOADING"
                                                         : "EVICTING",
                          "bytes", (json_int_t)m->bytes, "pinned", (int)m->pinned, "kept", (int)m->kept,
                          "idle_ms", (json_int_t)(now > m->last_use_us ? (now - m->last_use_us) / 1000 : 0)));
        }
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:b, s:I, s:I, s:i, s:I, s:I, s:I, s:o*}", "name",
                              w->name, "address", w->addr, "pid", (json_int_t)w->pid, "state",
                              gw_worker_state_name(w->state), "device", w->device, "local", w->pool_id != 0,
                              "budget_bytes", (json_int_t)w->budget_bytes, "free_bytes",
                              (json_int_t)w->free_bytes, "in_flight", (int)w->in_flight, "spawn_us",
                              (json_int_t)w->spawn_us, "started_us", (json_int_t)w->started_wall_us,
                              "last_seen_us", (json_int_t)w->last_seen_wall_us, "models", models);
        if (o) json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&gw->mu);
    return arr;
}

json_t *gw_status_json(gw_gateway *gw) {
    uint32_t workers = 0, in_flight = 0, queued = 0, fns = 0;
    pthread_mutex_lock(&gw->mu);
    for (gw_worker *w = gw->workers; w; w = w->next)
        if (w->state != GW_WORKER_DEAD) {
            workers++;
            in_flight += w->in_flight;
        }
    for (gw_fn *f = gw->fns; f; f = f->next) {
        queued += f->q_len;
        fns++;
    }
    pthread_mutex_unlock(&gw->mu);
    gw_ledger_stats ls;
    gw_ledger_get_stats(gw->ledger, &ls);
    /* features: what clients may rely on beyond protocol version 1 (protocol.md §8). */
    return json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:[s, s, s, s]}", "listen",
                     gw->listen, "workers", (int)workers, "in_flight", (int)in_flight, "queued", (int)queued,
                     "functions_cached", (int)fns, "min_workers", (int)gw->min_workers, "max_workers",
                     (int)gw->max_workers, "ledger_committed", (json_int_t)ls.committed, "ledger_dropped",
                     (json_int_t)ls.dropped, "worker_memory", (json_int_t)gw->worker_memory, "features",
                     "deploy_id", "deploy_activate", "worker_keys", "canary");
}

/* ---- Lifecycle -------------------------------------------------------------------- */

/* Removes worker sockets and fault notes left in run_dir by a gateway that died (kill
 * -9): their names carry the gateway's pid (pool.c: w<gateway pid>-<id>.ipc, .fault). */
static void gw_clean_run_dir(const char *run_dir) {
    DIR *d = opendir(run_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid = 0;
        unsigned id = 0;
        char tail[8] = "";
        if (sscanf(e->d_name, "w%ld-%u.%7s", &pid, &id, tail) != 3 ||
            (strcmp(tail, "ipc") != 0 && strcmp(tail, "fault") != 0) || pid <= 0)
            continue;
        if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
        if (unlink(path) == 0) log_info("removed %s, left by a gateway that is gone", path);
    }
    closedir(d);
}

/* A directory the gateway makes (durable_mkdir: a new one's entry is synced into its
 * parent, so a power loss cannot drop a data directory whose deploys were acknowledged). */
static int gw_mkdir(const char *path, aicfn_error *err) {
    return durable_mkdir(path, NULL, NULL, err);
}

/* gw_mkdir for a directory whose files others must not plant or replace (worker sockets,
 * whose address the gateway dials, and fault notes, which workers open for writing): it
 * must be a directory (not a symlink) of this user that nobody else may write. */
static int gw_private_dir(const char *path, aicfn_error *err) {
    int rc = gw_mkdir(path, err);
    return rc == AICFN_OK ? owndir_check(path, "the run directory", err) : rc;
}

/* Empties and removes a temporary run directory (every worker has exited). */
static void gw_remove_run_dir(const char *run_dir) {
    DIR *d = opendir(run_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
        (void)unlink(path);
    }
    closedir(d);
    if (rmdir(run_dir) != 0) log_warn("removing %s: %s", run_dir, strerror(errno));
}

/* One gateway per data directory: a second one would remove the first's uploads in
 * progress (artifacts/tmp), mark its live workers lost and reuse their ids. The lock is
 * an flock on <data>/gateway.lock, released by the kernel however the holder ends (kill
 * -9 included); the file holds the holder's pid, for the message. */
static int gw_lock_data_dir(gw_gateway *gw, aicfn_error *err) {
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/gateway.lock", gw->data_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "opening %s", path);
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[24] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (e == EWOULDBLOCK)
            return aicfn_error_set(err, AICFN_E_UNAVAILABLE,
                                   "data directory %s is in use by another gateway (pid %s; %s)",
                                   gw->data_dir, pid[0] ? pid : "unknown", path);
        return aicfn_error_errno(err, AICFN_E_IO, e, "locking %s", path);
    }
    char pid[24];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        log_warn("writing the pid to %s: %s", path, strerror(errno)); /* the lock holds all the same */
    gw->data_lock_fd = fd;
    return AICFN_OK;
}

/* Makes gw->data_dir absolute, once it exists: the paths of handlers and snapshots built
 * from it go to workers, which take absolute paths only (a worker need not share the
 * gateway's working directory). */
static int gw_absolute_data_dir(gw_gateway *gw, aicfn_error *err) {
    char abs[PATH_MAX];
    if (!realpath(gw->data_dir, abs))
        return aicfn_error_errno(err, AICFN_E_IO, errno, "resolving the data directory %s", gw->data_dir);
    char *d = strdup(abs);
    if (!d) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    free(gw->data_dir);
    gw->data_dir = d;
    return AICFN_OK;
}

/* Deletes the artifacts no function version references: what deploys left that never
 * reached their `deploy` message (Ctrl-C after an upload, a client that timed out, a
 * gateway restart between upload and deploy). At start, before the front listens, so no
 * deploy is between its uploads and its registration here; a client that uploaded to
 * the gateway before a restart gets AICFN_E_NOT_FOUND from `deploy` and uploads again.
 * Failures are logged: the store is only fuller than it needs to be. */
static void gw_sweep_artifacts(gw_gateway *gw) {
    char(*hashes)[65] = NULL;
    size_t n = 0, removed = 0;
    uint64_t bytes = 0;
    aicfn_error e;
    if (gw_artifacts_list(gw->art, &hashes, &n, &e) != AICFN_OK) {
        log_warn("artifacts: not swept for unreferenced files: %s", e.msg);
        return;
    }
    /* A store with files beside a registry of no function is a database that is new or
     * was replaced (moved away, lost, restored without its functions), not a store of
     * leftovers: its files may be all that is left of acknowledged deploys. Kept. */
    gw_function_summary *fns = NULL;
    size_t n_fns = 0;
    if (n > 0 && gw_registry_list(gw->db, &fns, &n_fns, &e) == AICFN_OK && n_fns == 0) {
        log_warn("artifacts: %zu file(s) in the store but aicfn.db registers no function (a new or "
                 "replaced database?): not swept, all kept; remove them by hand once they are not needed",
                 n);
        free(hashes);
        return;
    }
    free(fns);
    for (size_t i = 0; i < n; i++) {
        int used = gw_registry_artifact_in_use(gw->db, hashes[i], &e);
        if (used < 0) {
            log_warn("artifacts: sweep stopped: %s", e.msg);
            break;
        }
        uint64_t size = 0;
        if (used || !gw_artifacts_exists(gw->art, hashes[i], &size)) continue;
        if (gw_artifacts_remove(gw->art, hashes[i], &e) != AICFN_OK) {
            log_warn("artifacts: %s", e.msg);
            continue;
        }
        removed++;
        bytes += size;
    }
    free(hashes);
    if (removed)
        log_info("artifacts: removed %zu file(s), %llu bytes, that no function version references (uploads "
                 "whose deploy never came)",
                 removed, (unsigned long long)bytes);
}

int gw_start(const gw_config *cfg, gw_gateway **out, aicfn_error *err) {
    *out = NULL;
    if (cfg->min_workers > cfg->max_workers)
        return aicfn_error_set(err, AICFN_E_INVALID, "--workers: minimum %u above maximum %u",
                               cfg->min_workers, cfg->max_workers);
    if (cfg->max_workers > AICFN_MAX_WORKERS)
        return aicfn_error_set(err, AICFN_E_INVALID, "--workers: at most %d", AICFN_MAX_WORKERS);
    /* The router sees GW_MAX_VIEW live workers at once: local and registered ones share it. */
    uint32_t remote_room = GW_MAX_VIEW > cfg->max_workers ? GW_MAX_VIEW - cfg->max_workers : 0;
    if (cfg->max_remote_workers > remote_room)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "--max-remote-workers %u: with --workers ..%u at most %u (the router sees %d "
                               "workers, local and registered, at once)",
                               cfg->max_remote_workers, cfg->max_workers, remote_room, GW_MAX_VIEW);
    const char *listen = cfg->listen ? cfg->listen : AICFN_DEFAULT_GATEWAY;
    if (cfg->insecure_local && !gw_addr_is_loopback(listen))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "--insecure-local serves every caller as an administrator without an API key: "
                               "--listen must be ipc:// or a loopback address (tcp://127.0.0.1:PORT, "
                               "tcp://[::1]:PORT), not '%s'",
                               listen);
    gw_gateway *gw = calloc(1, sizeof *gw);
    if (!gw) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    gw->listen = strdup(listen);
    gw->data_dir = strdup(cfg->data_dir ? cfg->data_dir : AICFN_DEFAULT_DATA_DIR);
    gw->device = strdup(cfg->device ? cfg->device : "auto");
    gw->worker_exe = cfg->worker_exe ? strdup(cfg->worker_exe) : NULL;
    gw->min_workers = cfg->min_workers;
    gw->max_workers = cfg->max_workers;
    gw->max_remote_workers = cfg->max_remote_workers ? cfg->max_remote_workers : remote_room;
    gw->idle_timeout_us =
        cfg->idle_timeout_us ? cfg->idle_timeout_us : (uint64_t)AICFN_DEFAULT_IDLE_TIMEOUT_MS * 1000;
    gw->worker_memory = cfg->worker_memory;
    gw->insecure_local = cfg->insecure_local;
    gw->upload_idle_us = cfg->upload_idle_us ? cfg->upload_idle_us : AICFN_UPLOAD_IDLE_TIMEOUT_MS * 1000ull;
    gw->fn_idle_us = cfg->fn_cache_idle_us ? cfg->fn_cache_idle_us : AICFN_GW_FN_CACHE_IDLE_MS * 1000ull;
    gw->bundles = cfg->bundles;
    gw->scaling_dirty = true; /* read which functions keep workers warm once started */
    gw->data_lock_fd = -1;
    pthread_mutex_init(&gw->mu, NULL);
    clock_cond_init(&gw->maint_cv);
    clock_cond_init(&gw->spawn_cv);
    int rc = AICFN_OK;
    gw->gaveup = gw_gaveup_create(0);
    if (!gw->listen || !gw->data_dir || !gw->device || !gw->gaveup)
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    if (rc == AICFN_OK) rc = gw_mkdir(gw->data_dir, err);
    if (rc == AICFN_OK) rc = gw_absolute_data_dir(gw, err);
    if (rc == AICFN_OK) rc = gw_lock_data_dir(gw, err);
    if (rc == AICFN_OK) {
        /* ipc paths must fit sun_path (108 bytes) with the socket's name. */
        int n = snprintf(gw->run_dir, sizeof gw->run_dir, "%s/run", gw->data_dir);
        if (n < 0 || (size_t)n >= sizeof gw->run_dir || strlen(gw->run_dir) > 80) {
            /* Not a predictable name: another local user could make it first, owning it. */
            snprintf(gw->run_dir, sizeof gw->run_dir, "/tmp/aicfn-run-XXXXXX");
            if (mkdtemp(gw->run_dir))
                gw->run_dir_temporary = true;
            else
                rc = aicfn_error_errno(err, AICFN_E_IO, errno, "creating a run directory in /tmp");
        } else {
            rc = gw_private_dir(gw->run_dir, err);
        }
        if (rc == AICFN_OK) gw_clean_run_dir(gw->run_dir);
    }
    if (rc == AICFN_OK) rc = gw_db_open(gw->data_dir, &gw->db, err);
    uint32_t first_local = 1;
    if (rc == AICFN_OK) {
        /* Rows an earlier gateway left live are not ours: before any worker starts. */
        uint64_t n_lost = 0;
        rc = gw_workers_mark_lost(gw->db, &n_lost, err);
        if (rc == AICFN_OK && n_lost)
            log_warn("%llu worker row(s) left live by an earlier gateway process marked lost",
                     (unsigned long long)n_lost);
        if (rc == AICFN_OK) rc = gw_workers_next_local_id(gw->db, &first_local, err);
    }
    if (rc == AICFN_OK) {
        /* Reports that read many rows run on a connection of their own (WAL: readers never
         * block the writers), not holding the registry's, which calls need to resolve. */
        aicfn_error qe;
        if (gw_db_open_existing(gw->data_dir, GW_DB_READ_ONLY, &gw->query_db, &qe) != AICFN_OK)
            log_warn("reports share the registry's database connection: %s", qe.msg);
        /* Likewise the reads calls make (a resolve, a key check): a deploy waiting for
         * the write lock, or committing, holds the registry's connection meanwhile. */
        if (gw_db_open_existing(gw->data_dir, GW_DB_READ_ONLY, &gw->read_db, &qe) != AICFN_OK)
            log_warn("calls read the registry on its own database connection: %s", qe.msg);
    }
    if (rc == AICFN_OK) rc = gw_artifacts_open(gw->data_dir, &gw->art, err);
    if (rc == AICFN_OK) gw_sweep_artifacts(gw);
    if (rc == AICFN_OK) rc = gw_ledger_create(gw->data_dir, 0, 0, 0, &gw->ledger, err);
    if (rc == AICFN_OK) {
        gw->metrics = gw_metrics_create();
        rc = gw->metrics ? gw_stdmetrics_init(gw->metrics, &gw->std, err)
                         : aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    }
    if (rc == AICFN_OK) rc = gw_limits_create(&gw->limits, err);
    if (rc == AICFN_OK)
        rc = gw_respcache_create(cfg->response_cache_bytes ? cfg->response_cache_bytes
                                                           : AICFN_DEFAULT_RESPONSE_CACHE_BYTES,
                                 &gw->respcache, err);
    if (rc == AICFN_OK) {
        aicfn_error le;
        if (gw_limits_seed_from_ledger(gw->limits, gw->db, clock_wall_us(), &le) != AICFN_OK)
            log_warn("daily quotas start from zero: %s", le.msg);
    }
    if (rc == AICFN_OK) {
        gw_pool_config pc = {.exe = gw->worker_exe,
                             .run_dir = gw->run_dir,
                             .device = gw->device,
                             .worker_memory = gw->worker_memory,
                             .first_id = first_local};
        rc = gw_pool_create(&pc, gw_on_exit, gw_on_ready, gw, &gw->pool, err);
    }
    if (rc == AICFN_OK) {
        if (pthread_create(&gw->maint, NULL, gw_maint_main, gw) != 0)
            rc = aicfn_error_set(err, AICFN_E_IO, "starting the maintenance thread");
        else
            gw->maint_started = true;
    }
    if (rc == AICFN_OK) rc = gw_front_start(gw, gw->listen, cfg->max_requests, &gw->front, err);
    if (rc != AICFN_OK) {
        gw_stop(gw);
        return rc;
    }
    log_info("gateway listening on %s (data %s, workers %u..%u, worker memory %llu, idle timeout %llu ms%s)",
             gw_listen_url(gw), gw->data_dir, gw->min_workers, gw->max_workers,
             (unsigned long long)gw->worker_memory, (unsigned long long)(gw->idle_timeout_us / 1000),
             gw->insecure_local ? ", insecure-local: no API keys" : "");
    *out = gw;
    return AICFN_OK;
}

uint64_t gw_upload_idle_us(const gw_gateway *gw) {
    return gw->upload_idle_us;
}

bool gw_insecure_local(const gw_gateway *gw) {
    return gw->insecure_local;
}

void gw_stop(gw_gateway *gw) {
    if (!gw) return;
    gw_actions a;
    memset(&a, 0, sizeof a);
    pthread_mutex_lock(&gw->mu);
    gw->stopping = true;
    for (gw_worker *w = gw->workers; w; w = w->next) {
        gw_call *p = w->pending_head;
        w->pending_head = w->pending_tail = NULL;
        w->pending_calls = 0;
        while (p) {
            gw_call *n = p->next;
            gw_fail_locked(&a, p, AICFN_E_CANCELED, "the gateway is stopping");
            p = n;
        }
    }
    pthread_mutex_unlock(&gw->mu);
    gw_process(gw, &a);
    /* The front waits for every call it handed out to be answered. */
    gw_front_stop(gw->front);
    gw->front = NULL;
    /* Workers drain and exit; their exits mark them dead. The pool is taken away first
     * (nothing uses it after this) and destroyed once no spawn is still inside it. */
    pthread_mutex_lock(&gw->mu);
    gw_pool *pool = gw->pool;
    gw->pool = NULL;
    while (gw->spawning > 0)
        pthread_cond_wait(&gw->spawn_cv, &gw->mu);
    pthread_mutex_unlock(&gw->mu);
    gw_pool_destroy(pool);
    if (gw->maint_started) {
        pthread_mutex_lock(&gw->mu);
        for (gw_worker *w = gw->workers; w; w = w->next)
            if (w->state != GW_WORKER_DEAD) {
                /* Remote workers, unlinked in order; local ones exited with the pool,
                 * but for one the pool gave up on (it outlived its SIGKILL): lost. */
                gw_worker_row_locked(gw, w, w->pool_id ? GW_WROW_LOST : GW_WROW_EXITED);
                w->state = GW_WORKER_DEAD;
                if (w->client) rpc_client_fail_inflight(w->client);
            }
        pthread_cond_signal(&gw->maint_cv);
        pthread_mutex_unlock(&gw->mu);
        pthread_join(gw->maint, NULL);
    }
    while (gw->workers) {
        gw_worker *n = gw->workers->next;
        gw_worker_destroy(gw->workers);
        gw->workers = n;
    }
    while (gw->fns) {
        gw_fn *n = gw->fns->next;
        gw_fn_config_clear(&gw->fns->cfg);
        free(gw->fns);
        gw->fns = n;
    }
    while (gw->aliases) {
        gw_alias *n = gw->aliases->next;
        free(gw->aliases);
        gw->aliases = n;
    }
    gw_ledger_destroy(gw->ledger);
    gw_limits_destroy(gw->limits);
    gw_respcache_destroy(gw->respcache);
    gw_gaveup_destroy(gw->gaveup);
    gw_metrics_destroy(gw->metrics);
    gw_artifacts_close(gw->art);
    gw_db_close(gw->query_db);
    gw_db_close(gw->read_db);
    gw_db_close(gw->db);
    if (gw->run_dir_temporary) gw_remove_run_dir(gw->run_dir);
    if (gw->data_lock_fd >= 0) close(gw->data_lock_fd); /* last: everything in data_dir is closed */
    pthread_mutex_destroy(&gw->mu);
    pthread_cond_destroy(&gw->maint_cv);
    pthread_cond_destroy(&gw->spawn_cv);
    free(gw->listen);
    free(gw->data_dir);
    free(gw->device);
    free(gw->worker_exe);
    free(gw);
}

/* A call refused before it ran (unknown function, queue full, back-off, rate or quota)
 * still happened: it gets one ledger row and one counted call, with status `rc`. */
/* `resolved`: the version the call went to when known (a canary's), else 0. */
static void gw_record_refused(gw_gateway *gw, const wire_invoke_req *req, uint32_t resolved,
                              const char *tenant, int rc) {
    char rid[24];
    snprintf(rid, sizeof rid, "%llu", (unsigned long long)req->id);
    uint64_t in_bytes = 0;
    for (uint32_t i = 0; i < req->n_inputs; i++)
        in_bytes += req->inputs[i].nbytes;
    gw_invocation_record r = {.request_id = rid,
                              .tenant = tenant ? tenant : "",
                              .function = req->fn && gw_fn_name_valid(req->fn) ? req->fn : "",
                              .version = req->ver,
                              .status = rc,
                              .bytes_in = in_bytes,
                              .refused = true};
    /* The metrics label only functions the gateway knows (resolved before): a name or
     * version a client made up would add a series per value, until the registry's series
     * limit drops the real functions' ones. The ledger row keeps the name the client sent,
     * with the version that would have served it when known (as a served call's row). */
    char fn[AICFN_FN_NAME_MAX_BYTES + 1] = "";
    uint32_t ver = 0;
    pthread_mutex_lock(&gw->mu);
    uint32_t want = resolved ? resolved : req->ver;
    const gw_fn *f = !r.function[0] ? NULL
                     : want         ? gw_fn_find(gw, r.function, want)
                                    : gw_alias_find(gw, r.function);
    if (f) {
        snprintf(fn, sizeof fn, "%s", f->name);
        ver = f->ver;
        r.version = f->ver;
    }
    pthread_mutex_unlock(&gw->mu);
    gw_stdmetrics_refused(&gw->std, fn, ver, rc);
    /* A caller past its limits may keep sending: its refusals' rows are bounded (each is
     * counted all the same), so it cannot grow aicfn.db at the rate it sends. */
    uint64_t unrecorded = 0;
    if (rc == AICFN_E_QUOTA && !gw_limits_refusal_recorded(gw->limits, r.tenant, clock_now_us(), &unrecorded))
        return;
    if (unrecorded)
        log_warn(
            "tenant %.64s: %llu calls refused over its limits were counted but not written to the ledger "
            "(at most %d such rows a second)",
            r.tenant, (unsigned long long)unrecorded, AICFN_GW_REFUSED_ROWS_PER_S);
    gw_ledger_submit_invocation(gw->ledger, &r);
}

int gw_invoke_submit(gw_gateway *gw, const wire_invoke_req *req, const char *tenant, gw_invoke_done_fn done,
                     void *user, uint64_t *call_id, aicfn_error *err) {
    aicfn_error local;
    if (!err) err = &local;
    uint32_t resolved = 0;
    if (call_id) *call_id = 0;
    int rc = gw_submit(gw, req, tenant, done, user, &resolved, call_id, err);
    if (rc != AICFN_OK) gw_record_refused(gw, req, resolved, tenant, rc);
    return rc;
}

/* gw_invoke_cancel's failure of c, taken out of wherever it waited (lock held). */
static void gw_cancel_waiting_locked(gw_actions *a, gw_call *c, const char *why) {
    c->worker = NULL;
    gw_fail_locked(a, c, AICFN_E_CANCELED, "function %s:%u: canceled before it %s: %s", c->fn->name, c->fn->ver,
                   c->attempts > 1 ? "was retried" : "started", why ? why : "its caller went away");
}

bool gw_invoke_cancel(gw_gateway *gw, uint64_t call_id, const char *why) {
    if (call_id == 0) return false;
    gw_actions a;
    memset(&a, 0, sizeof a);
    bool found = false;
    pthread_mutex_lock(&gw->mu);
    for (gw_fn *f = gw->fns; f && !found; f = f->next) {
        gw_call *prev = NULL;
        for (gw_call *c = f->q_head; c; prev = c, c = c->next) {
            if (c->gid != call_id) continue;
            gw_queue_unlink_locked(f, prev, c);
            gw_cancel_waiting_locked(&a, c, why);
            found = true;
            break;
        }
    }
    /* Or waiting for a worker that is starting (a cold start from zero). */
    for (gw_worker *w = gw->workers; w && !found; w = w->next) {
        gw_call *prev = NULL;
        for (gw_call *c = w->pending_head; c; prev = c, c = c->next) {
            if (c->gid != call_id) continue;
            if (prev)
                prev->next = c->next;
            else
                w->pending_head = c->next;
            if (w->pending_tail == c) w->pending_tail = prev;
            if (!c->preload) w->pending_calls--;
            gw_cancel_waiting_locked(&a, c, why);
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&gw->mu);
    gw_process(gw, &a);
    return found;
}

int gw_invoke_precheck(gw_gateway *gw, uint64_t id, const char *fn, uint32_t ver, const char *tenant,
                       uint32_t rate_per_s, uint64_t quota_per_day, uint32_t *retry_after_s, aicfn_error *err) {
    wire_invoke_req req;
    memset(&req, 0, sizeof req);
    req.id = id;
    req.fn = fn;
    req.ver = ver;
    return gw_invoke_admit(gw, &req, tenant, rate_per_s, quota_per_day, retry_after_s, err);
}

int gw_invoke_admit(gw_gateway *gw, const wire_invoke_req *req, const char *tenant, uint32_t rate_per_s,
                    uint64_t quota_per_day, uint32_t *retry_after_s, aicfn_error *err) {
    *retry_after_s = 0;
    /* A call through a key without limits is still one of its tenant's calls today: the
     * count the quota of the tenant's other keys is checked against, as the ledger counts
     * it when a restarted gateway seeds it (gw_limits_seed_from_ledger). */
    if (rate_per_s == 0 && quota_per_day == 0 && (tenant == NULL || gw->insecure_local)) return AICFN_OK;
    aicfn_error local;
    if (!err) err = &local;
    int rc = gw_limits_check(gw->limits, tenant ? tenant : "", rate_per_s, quota_per_day, clock_now_us(),
                             clock_wall_us(), retry_after_s, err);
    if (rc != AICFN_OK) gw_record_refused(gw, req, 0, tenant, rc);
    return rc;
}

void gw_invoke_unadmit(gw_gateway *gw, const char *tenant, uint32_t rate_per_s, uint64_t quota_per_day) {
    if (rate_per_s == 0 && quota_per_day == 0 && (tenant == NULL || gw->insecure_local))
        return; /* as admit */
    gw_limits_refund(gw->limits, tenant ? tenant : "", rate_per_s, clock_wall_us());
}

void gw_invoke_refused(gw_gateway *gw, uint64_t id, const char *fn, uint32_t ver, const char *tenant,
                       int code) {
    wire_invoke_req req;
    memset(&req, 0, sizeof req);
    req.id = id;
    req.fn = fn;
    req.ver = ver;
    gw_record_refused(gw, &req, 0, tenant, code);
}

/* ---- Repository load / unload ------------------------------------------------------ */

/* A preload call (t:"preload") of f's model, not yet routed: memory only, so it may be
 * built with the lock held. `keep`: the worker keeps the model resident (keep-warm).
 * NULL when out of memory. */
static gw_call *gw_preload_call_new(gw_gateway *gw, gw_fn *f, bool keep, gw_invoke_done_fn done, void *user) {
    uint64_t now = clock_now_us();
    uint64_t timeout_ms = gw_fn_timeout_ms(f);
    gw_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->gw = gw;
    gw_fn_ref(f); /* the call's own: the caller holds the lock or a reference */
    c->fn = f;
    c->preload = true;
    c->id = __atomic_add_fetch(&gw->next_poll_id, 1, __ATOMIC_RELAXED);
    c->received_us = now;
    c->timeout_ms = (uint32_t)timeout_ms;
    c->deadline_us = now + timeout_ms * 1000;
    c->attempts = 1;
    c->done = done;
    c->user = user;
    wire_writer w;
    wire_writer_init(&w);
    wire_put_map(&w, 7);
    wire_kv_u64(&w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(&w, "t", "preload");
    wire_kv_u64(&w, "id", c->id);
    wire_kv_str(&w, "model", f->key);
    wire_kv_str(&w, "snapshot", f->snapshot_path);
    wire_kv_u64(&w, "deadline_ms", c->timeout_ms);
    wire_kv_bool(&w, "keep", keep);
    if (wire_writer_status(&w, NULL) == AICFN_OK) c->wreq = wire_writer_take(&w, &c->wreq_len);
    wire_writer_fini(&w);
    if (!c->wreq) {
        gw_call_free(c);
        return NULL;
    }
    return c;
}

/* Resolves NAME[:version] for a repository load or unload (`verb`): the function must
 * exist and have a model. */
static int gw_resolve_model_fn(gw_gateway *gw, const char *name, uint32_t version, const char *verb,
                               gw_fn **out, aicfn_error *err) {
    if (!name || !gw_fn_name_valid(name))
        return aicfn_error_set(err, AICFN_E_INVALID, "invalid function name '%s'", name ? name : "");
    int rc = gw_resolve(gw, name, version, out, err);
    if (rc != AICFN_OK) return rc;
    if (!(*out)->key[0] || !(*out)->snapshot_path[0]) {
        rc = aicfn_error_set(err, AICFN_E_INVALID, "function %s:%u has no model to %s", (*out)->name,
                             (*out)->ver, verb);
        gw_fn_unref(*out);
        *out = NULL;
        return rc;
    }
    return AICFN_OK; /* referenced */
}

int gw_model_load(gw_gateway *gw, const char *name, uint32_t version, gw_invoke_done_fn done, void *user,
                  aicfn_error *err) {
    gw_fn *f = NULL;
    int rc = gw_resolve_model_fn(gw, name, version, "load", &f, err);
    if (rc != AICFN_OK) return rc;
    gw_call *c = gw_preload_call_new(gw, f, false, done, user);
    gw_fn_unref(f); /* the call holds its own */
    if (!c) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    gw_actions a;
    memset(&a, 0, sizeof a);
    pthread_mutex_lock(&gw->mu);
    if (gw->stopping) {
        pthread_mutex_unlock(&gw->mu);
        gw_call_free(c);
        return aicfn_error_set(err, AICFN_E_UNAVAILABLE, "the gateway is stopping");
    }
    gw_route_locked(gw, c, &a);
    pthread_mutex_unlock(&gw->mu);
    gw_process(gw, &a);
    return AICFN_OK;
}

/* Sends t:"unload" of model `key` to w (lock NOT held; the caller took w->callbacks++
 * under it, and `cb` gives it back); `keep_only`: only end its keep (scaling.min_workers).
 * Returns AICFN_OK when sent (cb then runs once). */
static int gw_send_unload(gw_gateway *gw, gw_worker *w, const char *key, bool keep_only, rpc_done_fn cb,
                          void *user, aicfn_error *err) {
    wire_writer wr;
    wire_writer_init(&wr);
    wire_put_map(&wr, 5);
    wire_kv_u64(&wr, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(&wr, "t", "unload");
    wire_kv_u64(&wr, "id", __atomic_add_fetch(&gw->next_poll_id, 1, __ATOMIC_RELAXED));
    wire_kv_str(&wr, "model", key);
    wire_kv_bool(&wr, "keep_only", keep_only);
    int rc = wire_writer_status(&wr, err);
    if (rc == AICFN_OK) rc = rpc_call_async(w->client, wr.data, wr.len, GW_POLL_TIMEOUT_MS, cb, user, err);
    wire_writer_fini(&wr);
    return rc;
}

/* Decodes a worker's status answer (to a poll, preload or unload) into rep; a refusal
 * (ok false) becomes its code and message. The caller finalizes doc. */
static int gw_status_answer(int status, rpc_msg *reply, const aicfn_error *err, wire_doc *doc,
                            wire_status_reply *rep, aicfn_error *e) {
    aicfn_error_clear(e);
    int rc = status;
    if (rc == AICFN_OK) {
        rc = wire_doc_parse(doc, rpc_msg_data(reply), rpc_msg_len(reply), NULL, e);
        if (rc == AICFN_OK) rc = wire_decode_status_reply(doc, rep, e);
        if (rc == AICFN_OK && !rep->head.ok) {
            rc = rep->head.code;
            snprintf(e->msg, sizeof e->msg, "%s", rep->head.message);
        }
    } else if (err) {
        *e = *err;
    }
    return rc;
}

/* One idle unload (scaling.idle_timeout) or end of a keep, answered. */
typedef struct gw_idle_unload {
    gw_gateway *gw;
    gw_worker *w;
    char key[GW_HASH_HEX_LEN + 1];
    char fn[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t ver;
    uint64_t idle_ms;
    bool keep_only;
} gw_idle_unload;

static void gw_idle_unload_cb(void *user, int status, rpc_msg *reply, const aicfn_error *err);

/* Sends one idle unload, or the end of a keep (`keep_only`), (lock NOT held;
 * w->callbacks was taken under it). */
/* An idle unload marked its model EVICTING in w's view (gw_idle_unloads_locked) and did
 * not happen (not sent, or refused: a call pinned the model): READY again (lock held). */
static void gw_idle_unload_undone_locked(gw_worker *w, const char *key) {
    for (size_t i = 0; i < w->n_models; i++)
        if (w->models[i].state == GW_MODEL_EVICTING && strcmp(w->models[i].key, key) == 0)
            w->models[i].state = GW_MODEL_READY;
}

static void gw_idle_unload_start(gw_gateway *gw, gw_worker *w, const char *key, const char *fn, uint32_t ver,
                                 uint64_t idle_ms, bool keep_only) {
    aicfn_error e;
    gw_idle_unload *u = calloc(1, sizeof *u);
    int rc = u ? AICFN_OK : aicfn_error_set(&e, AICFN_E_NOMEM, "out of memory");
    if (u) {
        u->gw = gw;
        u->w = w;
        snprintf(u->fn, sizeof u->fn, "%s", fn);
        u->ver = ver;
        u->idle_ms = idle_ms;
        u->keep_only = keep_only;
        snprintf(u->key, sizeof u->key, "%s", key);
        rc = gw_send_unload(gw, w, key, keep_only, gw_idle_unload_cb, u, &e);
        if (rc != AICFN_OK) free(u);
    }
    if (rc != AICFN_OK) {
        log_warn("function %s:%u: %s on worker %s not sent: %s", fn, ver,
                 keep_only ? "end of keep" : "idle unload", w->name, e.msg);
        pthread_mutex_lock(&gw->mu);
        if (!keep_only) gw_idle_unload_undone_locked(w, key);
        w->callbacks--;
        pthread_mutex_unlock(&gw->mu);
    }
}

static void gw_idle_unload_cb(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    gw_idle_unload *u = user;
    gw_gateway *gw = u->gw;
    gw_worker *w = u->w;
    wire_doc doc;
    memset(&doc, 0, sizeof doc);
    wire_status_reply rep;
    aicfn_error e;
    int rc = gw_status_answer(status, reply, err, &doc, &rep, &e);
    gw_load_source src;
    pthread_mutex_lock(&gw->mu);
    w->callbacks--;
    if (rc == AICFN_OK && w->state != GW_WORKER_DEAD)
        gw_apply_summary_locked(gw, w, &rep.w.summary, clock_now_us());
    if (rc == AICFN_OK) gw_load_source_locked(gw, w, &rep.w, &src);
    if (rc == AICFN_E_UNAVAILABLE && !u->keep_only) gw_idle_unload_undone_locked(w, u->key); /* pinned */
    pthread_mutex_unlock(&gw->mu);
    if (rc == AICFN_OK) gw_record_unreported_loads(gw, &rep.w, &src);
    wire_doc_fini(&doc);
    rpc_msg_free(reply);
    if (rc == AICFN_OK && u->keep_only)
        log_info("function %s:%u: worker %s no longer keeps model %s resident (no active version has "
                 "scaling.min_workers)",
                 u->fn, u->ver, w->name, u->key);
    else if (rc == AICFN_OK)
        log_info("function %s:%u: model unloaded from worker %s after %llu ms without calls "
                 "(scaling.idle_timeout)",
                 u->fn, u->ver, w->name, (unsigned long long)u->idle_ms);
    else /* a call pinned it meanwhile, or the worker left (the next poll corrects the view) */
        log_debug("function %s:%u: %s on worker %s not done: %s", u->fn, u->ver,
                  u->keep_only ? "end of keep" : "idle unload", w->name, e.msg);
    free(u);
}

typedef struct gw_unload_op {
    gw_gateway *gw;
    char fn[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t ver;
    gw_invoke_done_fn done;
    void *user;
    pthread_mutex_t mu;
    unsigned pending;
    int code;
    char message[256];
} gw_unload_op;

typedef struct gw_unload_one {
    gw_unload_op *op;
    gw_worker *w;
} gw_unload_one;

static void gw_unload_finish(gw_unload_op *op) {
    gw_invoke_result res = {.code = op->code, .message = op->message, .version = op->ver};
    op->done(op->user, &res);
    pthread_mutex_destroy(&op->mu);
    free(op);
}

/* One worker's part done: the last one answers. */
static void gw_unload_part(gw_unload_op *op, int code, const char *msg) {
    pthread_mutex_lock(&op->mu);
    if (code != AICFN_OK && op->code == AICFN_OK) {
        op->code = code;
        snprintf(op->message, sizeof op->message, "%s", msg);
    }
    bool last = --op->pending == 0;
    pthread_mutex_unlock(&op->mu);
    if (last) gw_unload_finish(op);
}

static void gw_unload_cb(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    gw_unload_one *one = user;
    gw_unload_op *op = one->op;
    gw_gateway *gw = op->gw;
    gw_worker *w = one->w;
    free(one);
    uint64_t now = clock_now_us();
    wire_doc doc;
    memset(&doc, 0, sizeof doc);
    wire_status_reply rep;
    aicfn_error e;
    int rc = gw_status_answer(status, reply, err, &doc, &rep, &e);
    char msg[512];
    snprintf(msg, sizeof msg, "function %s:%u: unloading from worker %s: %s%s", op->fn, op->ver, w->name,
             e.msg,
             rc == AICFN_E_UNAVAILABLE ? " (the model is pinned by calls in flight or still loading)" : "");
    gw_load_source src;
    pthread_mutex_lock(&gw->mu);
    w->callbacks--;
    if (rc == AICFN_OK && w->state != GW_WORKER_DEAD) gw_apply_summary_locked(gw, w, &rep.w.summary, now);
    if (rc == AICFN_OK) gw_load_source_locked(gw, w, &rep.w, &src);
    pthread_mutex_unlock(&gw->mu);
    if (rc == AICFN_OK) gw_record_unreported_loads(gw, &rep.w, &src);
    wire_doc_fini(&doc);
    rpc_msg_free(reply);
    if (rc == AICFN_OK) log_info("function %s:%u: model unloaded from worker %s", op->fn, op->ver, w->name);
    gw_unload_part(op, rc, msg);
}

int gw_model_unload(gw_gateway *gw, const char *name, uint32_t version, gw_invoke_done_fn done, void *user,
                    aicfn_error *err) {
    gw_fn *f = NULL;
    int rc = gw_resolve_model_fn(gw, name, version, "unload", &f, err);
    if (rc != AICFN_OK) return rc;
    char key[GW_HASH_HEX_LEN + 1];
    snprintf(key, sizeof key, "%s", f->key);
    gw_unload_op *op = calloc(1, sizeof *op);
    if (!op) {
        gw_fn_unref(f);
        return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    }
    op->gw = gw;
    snprintf(op->fn, sizeof op->fn, "%s", f->name);
    op->ver = f->ver;
    gw_fn_unref(f); /* its name, version and model key are copied */
    op->done = done;
    op->user = user;
    pthread_mutex_init(&op->mu, NULL);
    op->pending = 1; /* this function's own part, released below */
    gw_worker *targets[GW_MAX_VIEW];
    size_t n = 0;
    pthread_mutex_lock(&gw->mu);
    for (gw_worker *w = gw->workers; w && n < GW_MAX_VIEW; w = w->next) {
        if (w->state == GW_WORKER_DEAD || w->state == GW_WORKER_STARTING || !w->client) continue;
        for (size_t i = 0; i < w->n_models; i++)
            if (strcmp(w->models[i].key, key) == 0) {
                w->callbacks++; /* keeps the record alive until the answer */
                targets[n++] = w;
                break;
            }
    }
    op->pending += (unsigned)n;
    pthread_mutex_unlock(&gw->mu);
    for (size_t i = 0; i < n; i++) {
        gw_worker *w = targets[i];
        aicfn_error e;
        int src = AICFN_OK;
        gw_unload_one *one = malloc(sizeof *one);
        if (!one) src = aicfn_error_set(&e, AICFN_E_NOMEM, "out of memory");
        if (one) {
            one->op = op;
            one->w = w;
            src = gw_send_unload(gw, w, key, false, gw_unload_cb, one, &e);
            if (src != AICFN_OK) free(one);
        }
        if (src != AICFN_OK) {
            /* The message first: once its callback count is back, w may be freed. */
            char msg[512];
            snprintf(msg, sizeof msg, "function %s:%u: unloading from worker %s: %s", op->fn, op->ver,
                     w->name, e.msg);
            pthread_mutex_lock(&gw->mu);
            w->callbacks--;
            pthread_mutex_unlock(&gw->mu);
            gw_unload_part(op, src, msg);
        }
    }
    gw_unload_part(op, AICFN_OK, "");
    return AICFN_OK;
}

void gw_metrics_refresh(gw_gateway *gw) {
    gw_metric_reset(gw->std.queue_depth);
    uint32_t live = 0;
    pthread_mutex_lock(&gw->mu);
    for (gw_fn *f = gw->fns; f; f = f->next) {
        if (f->removed && f->q_len == 0) continue;
        const char *l[] = {f->name};
        /* Versions of one function share its series: add, after the reset. */
        gw_metric_add(gw->std.queue_depth, l, (double)f->q_len);
    }
    for (gw_worker *w = gw->workers; w; w = w->next)
        if (w->state != GW_WORKER_DEAD) live++;
    pthread_mutex_unlock(&gw->mu);
    gw_metric_set(gw->std.workers_live, NULL, (double)live);
    gw_ledger_stats ls;
    gw_ledger_get_stats(gw->ledger, &ls);
    if (ls.dropped > gw->ledger_dropped_shown) {
        gw_metric_add(gw->std.ledger_dropped, NULL, (double)(ls.dropped - gw->ledger_dropped_shown));
        gw->ledger_dropped_shown = ls.dropped;
    }
    uint64_t stuck = bounded_close_stuck();
    if (stuck > gw->nng_stuck_shown) {
        gw_metric_add(gw->std.nng_stuck, NULL, (double)(stuck - gw->nng_stuck_shown));
        gw->nng_stuck_shown = stuck;
    }
}
