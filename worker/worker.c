/* worker.c: the worker process: function table, the NNG request handler (decode,
 * validate, queue), the per-function batch executor (acquire the model, (re)create the
 * handler instance, invoke, release, reply), status and drain. See worker.h.
 * Not for: the ABI mechanics (host.c), batching policy (batcher.c), model loading
 * (model.c, loader/) or message encoding details (common/wire.c). */
#include "worker/worker.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "common/clock.h"
#include "common/dtype.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/units.h"
#include "common/wire.h"
#include "loader/cache.h"
#include "loader/device.h"
#include "worker/batcher.h"
#include "worker/bundle.h"
#include "worker/faultnote.h"
#include "worker/host.h"
#include "worker/model.h"

/* A remote worker's snapshot "path" for the cache: this prefix and the artifact's hash;
 * worker_resolve fetches it when the model is loaded. Never a gateway path. */
#define WORKER_ARTIFACT_PREFIX "artifact:"

typedef struct worker_fn {
    struct worker_fn *next;
    worker *w;
    char *name;
    uint32_t version;
    char *handler_path;
    char *snapshot;  /* NULL: no model */
    char *model_key; /* cache key */
    uint32_t max_batch;
    uint64_t max_delay_us;
    uint64_t timeout_us;
    aicfn_param *params;
    uint32_t n_params;
    worker_handler *handler;
    worker_batcher *batcher;
    atomic_uint inflight;              /* its calls accepted and not yet answered */
    atomic_uint inits;                 /* init threads running (worker_init_main) */
    atomic_uint_fast64_t exec_ewma_us; /* recent handler time per batch (1/8 weight); 0: none yet */
    bool from_spec;                    /* registered by a call's spec: retired when idle */
    atomic_uint_fast64_t last_call_us; /* registration, then each call's arrival and end */
    /* Executor-thread state (never touched concurrently). */
    worker_instance *inst;
    uint64_t inst_generation;              /* the model generation inst was made for; 0 without a model */
    struct worker_init_wait *init_pending; /* an init still running, or done and not adopted */
    aicfn_request *areqs;                  /* max_batch */
    aicfn_response **resps;                /* max_batch */
    uint64_t *call_ids;                    /* max_batch: the calls a handler call serves (faultnote.h) */
} worker_fn;

/* The calls of the batch that made a load (their gateway ids, gid; up to
 * WIRE_MAX_LOAD_CALLS of them): a load they all gave up on is billed to them. */
typedef struct worker_load_makers {
    uint32_t n;     /* calls in the batch */
    uint32_t n_ids; /* <= WIRE_MAX_LOAD_CALLS: those with a gid */
    uint64_t ids[WIRE_MAX_LOAD_CALLS];
} worker_load_makers;

/* A load no reply carried (worker_model_wait abandoned by its calls), kept for the next
 * status reply so that the gateway records the cold start (wire_unreported_load). */
typedef struct worker_unreported_load {
    uint64_t seq; /* numbered from 1 when kept */
    char fn[AICFN_MAX_NAME_BYTES];
    uint32_t ver;
    loader_acquire_info acq;
    worker_load_makers makers; /* whom the gateway bills it to */
} worker_unreported_load;

struct worker {
    char *listen;
    char *device_spec;
    char id[64];
    uint64_t memory_bytes;
    loader_device *dev;
    loader_cache *cache;
    worker_model_ops_arg ops_arg;
    rpc_server *srv;
    rpc_server *link_srv;              /* the gateway's socketpair (worker_config.link_fd), or NULL */
    int link_fd;                       /* until worker_start takes it; -1 after */
    worker_bundle_watch *bundle_watch; /* parts of bundles overrunning their deadlines */
    uint64_t started_us;
    int refuse_specs;
    char *exit_token;        /* NULL: `exit` refused (worker_config.exit_token) */
    worker_fetcher *fetcher; /* borrowed; NULL: artifact paths are local */

    pthread_mutex_t mu; /* fns, n_fns, inflight, draining */
    pthread_cond_t cv;  /* inflight reached 0 */
    worker_fn *fns;
    worker_fn *retired; /* removed while calls still held them: freed by worker_destroy */
    struct worker_reg *regs; /* registrations parked calls run (worker_park) */
    /* Functions worker_remove unlinked and has not freed yet (their fini may be running):
     * a spec naming one waits for it to be gone before registering it again, so that an
     * instance's fini comes before its successor's init (aicfn.h). */
    struct worker_removal *removing;
    unsigned n_fns;
    uint64_t max_timeout_us; /* the longest function or preload timeout (bounds a drain) */
    unsigned inflight;
    uint32_t overrun_grace_ms; /* worker_config's */
    unsigned parked;           /* threads of calls waiting for a new function's handler (worker_park_main)
                                  and of the handlers' downloads (worker_handler_fetch_main) */
    struct worker_handler_wait *handler_fetches; /* downloads of handlers in progress, one per
                                                    path (worker_handler_fetch_main) */
    unsigned loaders; /* model-wait and init threads (each also counted in inflight, so a
                         drain waits for it; the status reports inflight less these): destroy
                         waits for them, since a drain that timed out does not (a preload's
                         thread needs no count: its call stays outstanding until it is done) */
    int draining;
    bool retiring;              /* a worker_retire_main pass runs (counted in parked) */
    uint64_t fn_idle_retire_us; /* worker_config's */
    worker_unreported_load unreported[AICFN_WORKER_UNREPORTED_LOADS]; /* under mu, oldest first */
    uint32_t n_unreported;
    uint64_t last_load_seq; /* the seq of the last load put in unreported (from the start's
                               wall time in µs) */
    bool loads_acked;       /* the last status request carried `ack`: each load stays listed until
                               acknowledged, not only in the next reply */

    atomic_uint_fast64_t n_invocations, n_errors, n_cold;
    atomic_uint_fast64_t n_batches; /* handler invocations since start (status counters.batches) */
};

/* Where an invocation's reply goes: its own call, or slot `slot` of a bundle. */
typedef struct worker_out {
    rpc_call *call;
    worker_bundle *bundle;
    uint32_t slot;
    bool one_reader; /* it came on a link, whose reader thread runs what the NNG callback threads
                        would (nothing known to be slow: registrations and unloads park) */
} worker_out;

/* One invocation, from receipt to reply. */
typedef struct worker_req {
    worker_batch_item item; /* first: the batcher hands this pointer back */
    worker *w;
    worker_fn *fn;
    worker_out out;
    wire_doc doc;
    wire_invoke_req req;
    uint64_t id;
    uint64_t note_id; /* what a fault note calls it: the gateway's gid, else id */
    uint64_t received_us;
    aicfn_request areq;
    aicfn_tensor *inputs;
    void *aligned; /* copies of inputs whose data was misaligned in the message */
    aicfn_param *params;
    char id_str[24];
    aicfn_response *resp;
    struct worker_reg *reg;  /* parked: the registration of its function it runs */
    struct worker_req *next; /* waiting on another call's registration (worker_reg.waiters) */
} worker_req;

/* A registration of function `fn` v`ver` from a spec, run by the first call that needed
 * it on a parked thread; later calls that need the same one wait on it (`waiters`, in
 * arrival order) and are dispatched (or failed) with its outcome, instead of each
 * parking a thread and running dlopen and building a batcher only to find the function
 * there. Only a registration that waits for nothing is shared (worker_park's `shared`):
 * a download or a previous instance's removal is waited for until the parked call's own
 * deadline, which a waiter's may not match, so such calls each park as before. */
typedef struct worker_reg {
    char fn[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t ver;
    worker_req *waiters;
    struct worker_reg *next;
} worker_reg;

/* What a batch's execution tells each reply. */
typedef struct worker_exec_info {
    bool cold;
    uint32_t batch;
    uint64_t load_us, exec_us, init_us;
    uint64_t init_charged_us;       /* of init_us, what the calls waited for (cold_share) */
    uint64_t init_end_us;           /* when that init ended (monotonic) */
    uint64_t init_level_us;         /* a call's share of it: what it waited, at most this (0: none) */
    const loader_acquire_info *acq; /* when the batch loaded the model; NULL otherwise */
    /* What each reply's cold_share is made of: the load the batch made (not joined), split
     * over the calls that waited for it (load_calls; all of it, they were all there), and
     * its init, split over the calls that waited for it, each paying at most what it
     * waited (worker_fill_level). 0: none. */
    uint64_t made_load_us;
    uint32_t load_calls;
    bool attach_coldstart;
} worker_exec_info;

/* ---- summary and status ---- */

/* The function that uses cache key `key`, for the summary ("" when none). */
static const worker_fn *worker_fn_of_key(worker *w, const char *key) {
    for (const worker_fn *f = w->fns; f; f = f->next)
        if (f->model_key && strcmp(f->model_key, key) == 0) return f;
    return NULL;
}

static int worker_model_state(loader_entry_state s) {
    return s == LOADER_ENTRY_LOADING ? WIRE_MODEL_LOADING
           : s == LOADER_ENTRY_READY ? WIRE_MODEL_READY
                                     : WIRE_MODEL_EVICTING;
}

/* A function's name copied out of w->fns under w->mu: what a reply encodes after the
 * lock is released, when worker_remove_function may already have freed the function. */
typedef struct worker_name {
    char s[AICFN_MAX_NAME_BYTES + 1];
} worker_name;

/* Fills `sum` with `models` (capacity cap) from `ents` and `names` (scratch of the same
 * capacity; the models' fn strings point into names). */
static void worker_summary(worker *w, wire_worker_summary *sum, wire_model_status *models,
                           loader_cache_entry_status *ents, worker_name *names, size_t cap) {
    loader_cache_status cs;
    loader_cache_get_status(w->cache, &cs, ents, cap);
    memset(sum, 0, sizeof *sum);
    sum->budget_bytes = cs.budget_bytes;
    sum->used_bytes = cs.used_bytes;
    sum->free_bytes = cs.budget_bytes > cs.used_bytes ? cs.budget_bytes - cs.used_bytes : 0;
    pthread_mutex_lock(&w->mu);
    /* Requests only (protocol.md §4): a model-wait or init thread counts in both. */
    sum->inflight = w->inflight - w->loaders;
    sum->draining = w->draining != 0;
    uint32_t queued = 0;
    for (worker_fn *f = w->fns; f; f = f->next) {
        worker_batcher_stats bs;
        worker_batcher_get_stats(f->batcher, &bs);
        queued += bs.queued;
    }
    sum->queued = queued;
    for (uint32_t i = 0; i < cs.n_returned; i++) {
        const worker_fn *f = worker_fn_of_key(w, ents[i].key);
        snprintf(names[i].s, sizeof names[i].s, "%s", f ? f->name : "");
        models[i] = (wire_model_status){
            .model = ents[i].key,
            .fn = names[i].s,
            .ver = f ? f->version : 0,
            .state = worker_model_state(ents[i].state),
            .bytes = ents[i].bytes,
            .idle_ms = ents[i].idle_us / 1000,
            .refs = ents[i].refcount,
            .kept = ents[i].kept != 0,
        };
    }
    pthread_mutex_unlock(&w->mu);
    sum->n_models = cs.n_returned;
    sum->models = models;
    sum->partial = cs.n_entries > cs.n_returned;
}

static void worker_reply_bytes(rpc_call *call, wire_writer *wr) {
    size_t len = 0;
    uint8_t *data = wire_writer_take(wr, &len);
    if (data == NULL) {
        rpc_call_drop(call);
        return;
    }
    rpc_reply(call, data, len);
    free(data);
}

/* Sends an invocation's encoded reply where it goes (worker_out). */
static void worker_out_send(worker_out out, wire_writer *wr) {
    if (out.bundle == NULL) {
        worker_reply_bytes(out.call, wr);
        return;
    }
    size_t len = 0;
    uint8_t *data = wire_writer_take(wr, &len);
    worker_bundle_put(out.bundle, out.slot, data, len);
}

/* Replies with a plain error (no decoded request behind it). */
static void worker_reply_error(rpc_call *call, uint64_t id, int code, const char *msg) {
    wire_writer wr;
    wire_writer_init(&wr);
    if (wire_encode_error_reply(&wr, id, code, msg, NULL) != AICFN_OK) {
        wire_writer_fini(&wr);
        rpc_call_drop(call);
        return;
    }
    worker_reply_bytes(call, &wr);
    wire_writer_fini(&wr);
}

static void worker_reply_status(worker *w, rpc_call *call, uint64_t id, const wire_load_record *load) {
    static const size_t cap = AICFN_WORKER_STATUS_MODELS;
    wire_model_status *models = calloc(cap, sizeof *models);
    loader_cache_entry_status *ents = calloc(cap, sizeof *ents);
    worker_name *names = calloc(cap, sizeof *names), *qnames = NULL;
    wire_queue_status *queues = NULL;
    worker_unreported_load *un = NULL; /* taken from w: this reply reports them */
    wire_unreported_load *loads = NULL;
    const char **evicted = NULL; /* LOADER_MAX_REPORTED_EVICTIONS per load */
    uint32_t n_un = 0;
    if (models == NULL || ents == NULL || names == NULL) goto oom;
    wire_worker_status st;
    memset(&st, 0, sizeof st);
    worker_summary(w, &st.summary, models, ents, names, cap);
    pthread_mutex_lock(&w->mu);
    queues = calloc(w->n_fns ? w->n_fns : 1, sizeof *queues);
    qnames = calloc(w->n_fns ? w->n_fns : 1, sizeof *qnames);
    if (queues == NULL || qnames == NULL) {
        pthread_mutex_unlock(&w->mu);
        goto oom;
    }
    if (w->n_unreported) {
        un = malloc(w->n_unreported * sizeof *un);
        loads = calloc(w->n_unreported, sizeof *loads);
        evicted = calloc((size_t)w->n_unreported * LOADER_MAX_REPORTED_EVICTIONS, sizeof *evicted);
        if (un == NULL || loads == NULL || evicted == NULL) {
            pthread_mutex_unlock(&w->mu);
            goto oom;
        }
        n_un = w->n_unreported;
        memcpy(un, w->unreported, n_un * sizeof *un);
        if (!w->loads_acked) { /* listed once: this reply reports them */
            w->n_unreported = 0;
            pthread_cond_broadcast(&w->cv); /* a drain may be waiting for them to go */
        }
    }
    uint32_t nq = 0;
    for (worker_fn *f = w->fns; f && nq < WIRE_MAX_QUEUES; f = f->next) {
        worker_batcher_stats bs;
        worker_batcher_get_stats(f->batcher, &bs);
        snprintf(qnames[nq].s, sizeof qnames[nq].s, "%s", f->name);
        queues[nq] = (wire_queue_status){.fn = qnames[nq].s,
                                         .ver = f->version,
                                         .queued = bs.queued,
                                         .inflight = atomic_load(&f->inflight)};
        nq++;
    }
    pthread_mutex_unlock(&w->mu);
    loader_cache_counters cc;
    loader_cache_get_counters(w->cache, &cc);
    st.worker = w->id;
    st.device = loader_device_name(w->dev);
    st.is_host = loader_device_is_host(w->dev) != 0;
    st.uptime_ms = (clock_now_us() - w->started_us) / 1000;
    st.n_queues = nq;
    st.queues = queues;
    for (uint32_t i = 0; i < n_un; i++) {
        const loader_acquire_info *a = &un[i].acq;
        const char **ev = evicted + (size_t)i * LOADER_MAX_REPORTED_EVICTIONS;
        uint32_t ne =
            a->n_evictions < LOADER_MAX_REPORTED_EVICTIONS ? a->n_evictions : LOADER_MAX_REPORTED_EVICTIONS;
        for (uint32_t k = 0; k < ne; k++)
            ev[k] = a->evictions[k].key;
        loads[i] = (wire_unreported_load){
            .seq = un[i].seq,
            .fn = un[i].fn,
            .ver = un[i].ver,
            .timing = {.load_us = a->wait_us,
                       .total_us = a->wait_us,
                       .fetch_us = a->timing.fetch_us,
                       .read_us = a->timing.read_us,
                       .decompress_us = a->timing.decompress_us,
                       .filter_us = a->timing.filter_us,
                       .copy_us = a->timing.copy_us},
            .coldstart = {.compressed_bytes = a->timing.compressed_bytes,
                          .raw_bytes = a->timing.raw_bytes,
                          .n_evicted = ne,
                          .evicted = ev},
            .makers = un[i].makers.n,
            .n_calls = un[i].makers.n_ids,
            .calls = un[i].makers.ids,
        };
        loads[i].timing.cold_share_us = un[i].makers.n ? a->timing.total_us : 0; /* as a reply's would be */
    }
    st.n_loads = n_un;
    st.loads = loads;
    st.counters = (wire_worker_counters){.invocations = atomic_load(&w->n_invocations),
                                         .errors = atomic_load(&w->n_errors),
                                         .cold_starts = atomic_load(&w->n_cold),
                                         .evictions = cc.evictions,
                                         .batches = atomic_load(&w->n_batches)};
    wire_writer wr;
    wire_writer_init(&wr);
    aicfn_error err;
    if (wire_encode_status_reply(&wr, id, &st, load, &err) != AICFN_OK) {
        wire_writer_fini(&wr);
        if (n_un) log_warn("worker %s: %u unreported loads lost: %s", w->id, n_un, err.msg);
        worker_reply_error(call, id, err.code, err.msg);
    } else {
        worker_reply_bytes(call, &wr);
        wire_writer_fini(&wr);
    }
    goto done;
oom:
    worker_reply_error(call, id, AICFN_E_NOMEM, "status: out of memory");
done:
    free(models);
    free(ents);
    free(names);
    free(queues);
    free(qnames);
    free(un);
    free(loads);
    free(evicted);
}

/* ---- replies to invocations ---- */

static void worker_req_free(worker_req *r) {
    wire_doc_fini(&r->doc);
    free(r->aligned);
    worker_response_destroy(r->resp);
    free(r);
}

/* Frees r, answered, and takes it out of flight (the worker's and its function's counts). */
static void worker_req_done(worker_req *r) {
    worker *w = r->w;
    worker_fn *fn = r->fn;
    if (fn) atomic_store(&fn->last_call_us, clock_now_us()); /* idle from its calls' ends */
    worker_req_free(r);
    pthread_mutex_lock(&w->mu);
    int wake = --w->inflight == 0;
    if (fn && atomic_fetch_sub(&fn->inflight, 1) == 1) wake = 1; /* a removal may wait for it */
    if (wake) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* a / b rounded up (b > 0): a call's share of a time its batch spent for all of it. */
static uint64_t worker_div_up(uint64_t a, uint32_t b) {
    return a / b + (a % b != 0);
}

static int worker_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Water filling: the level L at which the shares min(waited[i], L) of n calls add up to
 * `total` (L rounded up): a call pays at most what it waited, and what it cannot pay the
 * calls that waited longer share. Sorts `waited`. When the waits add up to less than
 * `total`, the longest wait (each pays all it waited). */
static uint64_t worker_fill_level(uint64_t *waited, uint32_t n, uint64_t total) {
    if (n == 0) return 0;
    qsort(waited, n, sizeof *waited, worker_cmp_u64);
    uint64_t left = total;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t level = worker_div_up(left, n - i);
        if (waited[i] >= level) return level;
        left -= waited[i];
    }
    return waited[n - 1];
}

/* A call that came at arrival_us waited this much of the init ex tells of (at most the
 * part charged). */
static uint64_t worker_init_waited(const worker_exec_info *ex, uint64_t arrival_us) {
    uint64_t waited = ex->init_end_us > arrival_us ? ex->init_end_us - arrival_us : 0;
    return waited < ex->init_charged_us ? waited : ex->init_charged_us;
}

/* Encodes and sends the reply of an accepted invocation, then frees it and counts it
 * out of the in-flight total. `code` != OK overrides the response. */
static void worker_finish(worker_req *r, int code, const char *msg, const worker_exec_info *ex) {
    worker *w = r->w;
    const char *rmsg = "";
    if (code == AICFN_OK && r->resp) code = worker_response_status(r->resp, &rmsg);
    if (code == AICFN_OK && r->resp == NULL) code = AICFN_E_INTERNAL;
    if (msg == NULL) msg = rmsg;

    wire_invoke_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.head.id = r->id;
    rep.head.ok = code == AICFN_OK;
    rep.head.code = code;
    rep.head.message = code == AICFN_OK ? "" : msg;
    wire_tensor outs[AICFN_MAX_TENSORS];
    if (code == AICFN_OK) {
        uint32_t n = worker_response_n_outputs(r->resp);
        const aicfn_tensor *o = worker_response_outputs(r->resp);
        for (uint32_t i = 0; i < n; i++) {
            outs[i] = (wire_tensor){.name = o[i].name,
                                    .dtype = o[i].dtype,
                                    .ndim = o[i].ndim,
                                    .data = o[i].data,
                                    .nbytes = o[i].nbytes};
            memcpy(outs[i].shape, o[i].shape, sizeof outs[i].shape);
        }
        rep.n_outputs = n;
        rep.outputs = outs;
    }
    uint64_t now = clock_now_us();
    if (ex) {
        rep.cold = ex->cold;
        rep.batch = ex->batch;
        rep.timing.load_us = ex->load_us;
        rep.timing.exec_us = ex->exec_us;
        rep.timing.init_us = ex->init_us;
        if (ex->acq && ex->cold) {
            rep.timing.fetch_us = ex->acq->timing.fetch_us;
            rep.timing.read_us = ex->acq->timing.read_us;
            rep.timing.decompress_us = ex->acq->timing.decompress_us;
            rep.timing.filter_us = ex->acq->timing.filter_us;
            rep.timing.copy_us = ex->acq->timing.copy_us;
        }
        uint64_t share = ex->load_calls ? worker_div_up(ex->made_load_us, ex->load_calls) : 0;
        if (ex->init_level_us) {
            uint64_t waited = worker_init_waited(ex, r->item.arrival_us);
            share += waited < ex->init_level_us ? waited : ex->init_level_us;
        }
        rep.timing.cold_share_us = share;
    }
    const char *evicted[LOADER_MAX_REPORTED_EVICTIONS];
    if (ex && ex->attach_coldstart && ex->acq) {
        rep.has_coldstart = true;
        rep.coldstart.compressed_bytes = ex->acq->timing.compressed_bytes;
        rep.coldstart.raw_bytes = ex->acq->timing.raw_bytes;
        uint32_t ne = ex->acq->n_evictions < LOADER_MAX_REPORTED_EVICTIONS ? ex->acq->n_evictions
                                                                           : LOADER_MAX_REPORTED_EVICTIONS;
        for (uint32_t i = 0; i < ne; i++)
            evicted[i] = ex->acq->evictions[i].key;
        rep.coldstart.n_evicted = ne;
        rep.coldstart.evicted = evicted;
    }
    if (r->item.dequeued_us >= r->received_us) rep.timing.queue_us = r->item.dequeued_us - r->received_us;
    rep.timing.total_us = now - r->received_us;

    static const size_t cap = 64;
    wire_model_status models[64];
    loader_cache_entry_status *ents = calloc(cap, sizeof *ents);
    worker_name *names = calloc(cap, sizeof *names);
    if (ents && names) {
        worker_summary(w, &rep.st, models, ents, names, cap);
        rep.has_st = true;
    }
    wire_writer wr;
    wire_writer_init(&wr);
    aicfn_error err;
    int rc = wire_encode_invoke_reply(&wr, &rep, &err);
    if (rc != AICFN_OK) {
        /* The outputs did not fit or were refused: say so instead. */
        wire_writer_reset(&wr);
        rep.head.ok = false;
        rep.head.code = err.code;
        rep.head.message = err.msg;
        rep.n_outputs = 0;
        rep.outputs = NULL;
        code = err.code;
        if (wire_encode_invoke_reply(&wr, &rep, NULL) != AICFN_OK) {
            wire_writer_reset(&wr);
            wire_encode_error_reply(&wr, r->id, err.code, err.msg, NULL);
        }
    }
    free(ents);
    free(names);
    if (code != AICFN_OK) atomic_fetch_add(&w->n_errors, 1);
    worker_out_send(r->out, &wr);
    wire_writer_fini(&wr);
    worker_req_done(r);
}

/* ---- the executor ---- */

static void worker_fn_expire(void *ctx, worker_batch_item *item) {
    worker_fn *fn = ctx;
    worker_req *r = (worker_req *)item;
    char msg[256];
    snprintf(msg, sizeof msg, "function %s: deadline passed after %" PRIu64 " ms in the queue; not executed",
             fn->name, (clock_now_us() - r->received_us) / 1000);
    worker_finish(r, AICFN_E_TIMEOUT, msg, NULL);
}

/* worker_drop_expired's `during` for calls waiting for their model: a call that gives up
 * while its load still waits for room is answered AICFN_E_CAPACITY, not a timeout. */
static const char WORKER_DURING_MODEL[] = "waiting for the model";

/* Answers AICFN_E_TIMEOUT, without running them, the requests whose deadline has passed
 * (`during`: what they waited for; WORKER_DURING_MODEL while the model's load still finds
 * no room: AICFN_E_CAPACITY) and compacts the rest to the front; returns how many
 * remain. Only the first reply given here carries the load's cold-start record. */
static uint32_t worker_drop_expired(worker_fn *fn, worker_batch_item **items, uint32_t n, const char *during,
                                    worker_exec_info *ex) {
    uint64_t now = clock_now_us();
    uint32_t k = 0;
    int code = AICFN_E_TIMEOUT;
    bool checked = during != WORKER_DURING_MODEL;
    for (uint32_t i = 0; i < n; i++) {
        worker_req *r = (worker_req *)items[i];
        if (r->item.deadline_us != 0 && r->item.deadline_us <= now) {
            if (!checked) {
                checked = true;
                if (loader_cache_waits_for_room(fn->w->cache, fn->model_key)) {
                    code = AICFN_E_CAPACITY; /* its load has not even found room yet */
                    during = "waiting for room for its model (the rest of the device budget pinned or loading)";
                }
            }
            char msg[256];
            snprintf(msg, sizeof msg, "function %s: deadline passed while %s; not executed", fn->name,
                     during);
            worker_finish(r, code, msg, ex);
            ex->attach_coldstart = false;
        } else {
            items[k++] = items[i];
        }
    }
    return k;
}

/* Starts fn(arg) on a detached thread (the worker's background work: model waits,
 * preloads, parked calls, each kept alive by its caller's count or outstanding call).
 * pthread_create's result. */
static int worker_start_detached(void *(*fn)(void *), void *arg) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

/* A batch's wait for its model when it is not resident: the acquire (a load, a join, a
 * wait for room) runs on a thread of its own, so that the executor answers each request
 * at its own deadline meanwhile instead of all of them when the load ends (a gateway
 * kills a worker whose call is late past its grace, and with it the load). Whichever of
 * the two is done last frees it; a wait the executor gave up on releases its model once
 * loaded, which stays resident for the next call, its load kept for the next status
 * reply (no invocation reply carries it). Counted in w->inflight, so a drain waits for it
 * before the cache goes. */
typedef struct worker_model_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    worker *w;
    char key[AICFN_MAX_NAME_BYTES];
    char fn[AICFN_MAX_NAME_BYTES]; /* the function whose batch asked */
    uint32_t ver;
    char *path;
    uint64_t deadline_us;
    bool done, abandoned;
    int rc;
    loader_cache_entry *entry;
    loader_acquire_info acq;
    aicfn_error err;
    worker_load_makers makers; /* the batch that asked */
} worker_model_wait;

static void worker_model_wait_free(worker_model_wait *mw) {
    pthread_mutex_destroy(&mw->mu);
    pthread_cond_destroy(&mw->cv);
    free(mw->path);
    free(mw);
}

/* Keeps the record of a load that no reply carries for the next status reply (lock held;
 * at most AICFN_WORKER_UNREPORTED_LOADS, the oldest dropped). */
static void worker_unreported_add_locked(worker *w, const worker_unreported_load *un) {
    if (w->n_unreported == AICFN_WORKER_UNREPORTED_LOADS) { /* nobody asked for a status since */
        log_warn("worker %s: dropping the record of an unreported load of %s:%u (more than %d)", w->id,
                 w->unreported[0].fn, w->unreported[0].ver, AICFN_WORKER_UNREPORTED_LOADS);
        memmove(&w->unreported[0], &w->unreported[1], (w->n_unreported - 1) * sizeof w->unreported[0]);
        w->n_unreported--;
    }
    w->unreported[w->n_unreported] = *un;
    w->unreported[w->n_unreported++].seq = ++w->last_load_seq;
}

/* A status request's `ack` (the highest load seq the gateway recorded; absent: a peer
 * that does not acknowledge, whose replies list each load once): drops what it covers. */
static void worker_loads_ack(worker *w, const wire_doc *doc) {
    uint64_t ack = 0;
    const msgpack_object *a = wire_map_get(&doc->root, "ack"); /* nil: absent (protocol.md §2) */
    bool acks = a != NULL && a->type != MSGPACK_OBJECT_NIL &&
                wire_get_u64(&doc->root, NULL, "ack", true, &ack, NULL) == AICFN_OK;
    pthread_mutex_lock(&w->mu);
    w->loads_acked = acks; /* per request: a gateway without acks may follow one with them */
    if (!acks) {
        pthread_mutex_unlock(&w->mu);
        return;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < w->n_unreported; i++)
        if (w->unreported[i].seq > ack) w->unreported[k++] = w->unreported[i];
    if (k < w->n_unreported) pthread_cond_broadcast(&w->cv); /* a drain may be waiting for them */
    w->n_unreported = k;
    pthread_mutex_unlock(&w->mu);
}

static void *worker_model_wait_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:modelwait");
    worker_model_wait *mw = arg;
    worker *w = mw->w;
    loader_cache_entry *entry = NULL;
    loader_acquire_info acq;
    aicfn_error err;
    aicfn_error_clear(&err);
    int rc = loader_cache_acquire(w->cache, mw->key, mw->path, mw->deadline_us, &entry, &acq, &err);
    pthread_mutex_lock(&mw->mu);
    bool abandoned = mw->abandoned;
    mw->done = true;
    mw->rc = rc;
    mw->entry = entry;
    mw->acq = acq;
    mw->err = err;
    pthread_cond_signal(&mw->cv);
    pthread_mutex_unlock(&mw->mu);
    worker_unreported_load un = {.acq = acq};
    bool report = abandoned && rc == AICFN_OK && acq.cold && !acq.joined; /* a joined load is its maker's */
    if (abandoned) {
        if (rc == AICFN_OK) loader_cache_release(w->cache, entry);
        log_info("worker %s: model %s %s after its calls' deadlines", w->id, mw->key,
                 rc == AICFN_OK ? "became resident" : "failed to load");
        snprintf(un.fn, sizeof un.fn, "%s", mw->fn);
        un.ver = mw->ver;
        un.makers = mw->makers;
        worker_model_wait_free(mw);
    }
    if (report) atomic_fetch_add(&w->n_cold, 1);
    pthread_mutex_lock(&w->mu);
    if (report) worker_unreported_add_locked(w, &un);
    if (--w->inflight == 0) pthread_cond_broadcast(&w->cv);
    if (--w->loaders == 0) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu); /* the last touch of w */
    return NULL;
}

/* The earliest deadline among items[0..n), 0 when none has one. */
static uint64_t worker_items_earliest(worker_batch_item **items, uint32_t n) {
    uint64_t dl = 0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i]->deadline_us != 0 && (dl == 0 || items[i]->deadline_us < dl)) dl = items[i]->deadline_us;
    return dl;
}

/* Waits, with *mu held (on entry and on return), until *done (set under mu by another
 * thread, which signals cv) while the calls items[0..*n) wait for it, answering each
 * whose deadline passes meanwhile (AICFN_E_TIMEOUT, "not executed", `during` saying
 * what they waited for; *n shrinks). true when done; false when no call is left first. */
static bool worker_wait_answering(worker_fn *fn, worker_batch_item **items, uint32_t *n, pthread_mutex_t *mu,
                                  pthread_cond_t *cv, const bool *done, const char *during,
                                  worker_exec_info *ex) {
    while (!*done) {
        uint64_t first = worker_items_earliest(items, *n);
        if (first == 0) {
            pthread_cond_wait(cv, mu);
            continue;
        }
        if (clock_now_us() < first) {
            struct timespec ts;
            clock_deadline_to_timespec(first, &ts);
            pthread_cond_timedwait(cv, mu, &ts);
            continue;
        }
        pthread_mutex_unlock(mu);
        *n = worker_drop_expired(fn, items, *n, during, ex);
        pthread_mutex_lock(mu);
        if (*n == 0 && !*done) return false;
    }
    return true;
}

/* The calls of items[0..n), the batch that asks for a model: whom its load is billed to
 * should they all give up. */
static void worker_makers_of(worker_batch_item **items, uint32_t n, worker_load_makers *m) {
    memset(m, 0, sizeof *m);
    m->n = n;
    for (uint32_t i = 0; i < n && m->n_ids < WIRE_MAX_LOAD_CALLS; i++)
        if (((worker_req *)items[i])->req.gid) m->ids[m->n_ids++] = ((worker_req *)items[i])->req.gid;
}

/* Acquires fn's model for items[0..*n), the most patient one's deadline bounding the
 * wait (dl, 0: none). A resident model is pinned at once; otherwise the acquire runs on
 * a worker_model_wait thread while requests whose deadline passes are answered here
 * (*n shrinks; items is compacted). makers: the batch as it came (worker_makers_of), whom
 * a load they all give up on is billed to. Returns the acquire's result; AICFN_E_TIMEOUT
 * with *n == 0 when every request's deadline passed first (their replies are sent). */
static int worker_fn_acquire(worker_fn *fn, worker_batch_item **items, uint32_t *n, uint64_t dl,
                             const worker_load_makers *makers, loader_cache_entry **entry,
                             loader_acquire_info *acq, worker_exec_info *ex, aicfn_error *err) {
    worker *w = fn->w;
    if (loader_cache_acquire_ready(w->cache, fn->model_key, entry) == AICFN_OK) return AICFN_OK;
    worker_model_wait *mw = calloc(1, sizeof *mw);
    char *path = strdup(fn->snapshot);
    if (!mw || !path) {
        free(mw);
        free(path);
        return loader_cache_acquire(w->cache, fn->model_key, fn->snapshot, dl, entry, acq, err);
    }
    pthread_mutex_init(&mw->mu, NULL);
    clock_cond_init(&mw->cv);
    mw->w = w;
    snprintf(mw->key, sizeof mw->key, "%s", fn->model_key);
    snprintf(mw->fn, sizeof mw->fn, "%s", fn->name);
    mw->ver = fn->version;
    mw->path = path;
    mw->deadline_us = dl;
    mw->makers = *makers;
    pthread_mutex_lock(&w->mu);
    w->inflight++;
    w->loaders++;
    pthread_mutex_unlock(&w->mu);
    int trc = worker_start_detached(worker_model_wait_main, mw);
    if (trc != 0) {
        pthread_mutex_lock(&w->mu);
        if (--w->inflight == 0) pthread_cond_broadcast(&w->cv);
        if (--w->loaders == 0) pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        worker_model_wait_free(mw);
        return loader_cache_acquire(w->cache, fn->model_key, fn->snapshot, dl, entry, acq, err);
    }
    pthread_mutex_lock(&mw->mu);
    if (!worker_wait_answering(fn, items, n, &mw->mu, &mw->cv, &mw->done, WORKER_DURING_MODEL, ex)) {
        mw->abandoned = true; /* the thread frees it */
        pthread_mutex_unlock(&mw->mu);
        return aicfn_error_set(err, AICFN_E_TIMEOUT, "model %s: still loading at every deadline",
                               fn->model_key);
    }
    pthread_mutex_unlock(&mw->mu);
    int rc = mw->rc;
    *entry = mw->entry;
    *acq = mw->acq;
    if (rc != AICFN_OK && err) *err = mw->err;
    worker_model_wait_free(mw);
    return rc;
}

/* A handler's init running on its own thread, so that the calls waiting for it are
 * answered at their deadlines, as those waiting for the model are: an init (a warm-up
 * that builds engines or graphs, say) may outlast a call's timeout, and calls held past
 * it would make the gateway end the worker as stuck. The executor adopts the instance;
 * an init whose calls all gave up stays in fn->init_pending for the next batch. Until
 * it ends it counts in the worker's in-flight total and in the function's inits (a drain
 * or a removal waits for it; the function's calls in flight, which status reports, do
 * not include it) and holds its own pin on the model. */
typedef struct worker_init_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    worker_fn *fn;
    loader_cache_entry *entry; /* the init's pin; NULL without a model */
    const aicfn_model *model;
    uint64_t generation;
    uint64_t *ids; /* the calls that started it, for the fault note */
    uint32_t n_ids;
    bool done; /* under mu; the rest below is the thread's until then */
    int rc;
    worker_instance *inst;
    aicfn_error err;
    uint64_t started_us, init_us; /* when it began (clock_now_us) and how long it took */
} worker_init_wait;

static void worker_init_wait_free(worker_init_wait *iw) {
    if (iw == NULL) return;
    pthread_mutex_destroy(&iw->mu);
    pthread_cond_destroy(&iw->cv);
    free(iw->ids);
    free(iw);
}

static void *worker_init_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:init");
    worker_init_wait *iw = arg;
    worker_fn *fn = iw->fn;
    worker *w = fn->w;
    aicfn_fn_config cfg = {.function = fn->name,
                           .version = fn->version,
                           .max_batch = fn->max_batch,
                           .n_params = fn->n_params,
                           .params = fn->params};
    worker_instance *inst = NULL;
    aicfn_error err;
    aicfn_error_clear(&err);
    uint64_t t0 = clock_now_us();
    worker_fault_note_enter(fn->name, fn->version, iw->ids, iw->n_ids);
    int rc = worker_instance_create(fn->handler, iw->model, &cfg, &inst, &err);
    worker_fault_note_leave();
    uint64_t took = clock_now_us() - t0;
    if (iw->entry) loader_cache_release(w->cache, iw->entry);
    pthread_mutex_lock(&iw->mu);
    iw->entry = NULL;
    iw->rc = rc;
    iw->inst = rc == AICFN_OK ? inst : NULL;
    iw->err = err;
    iw->started_us = t0;
    iw->init_us = took;
    iw->done = true;
    pthread_cond_signal(&iw->cv);
    pthread_mutex_unlock(&iw->mu); /* the executor may free iw from here on */
    pthread_mutex_lock(&w->mu);
    int wake = --w->inflight == 0;
    if (--w->loaders == 0) wake = 1;
    if (atomic_fetch_sub(&fn->inits, 1) == 1) wake = 1;
    if (wake) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu); /* the last touch of w and fn */
    return NULL;
}

/* Starts an init of fn's handler for `model` (generation `generation`; entry pinned by
 * the caller, NULL without a model) on its own thread, named by items[0..k) in the
 * fault note, as fn->init_pending. AICFN_E_NOMEM or AICFN_E_INTERNAL when it cannot. */
static int worker_init_start(worker_fn *fn, worker_batch_item **items, uint32_t k, loader_cache_entry *entry,
                             const aicfn_model *model, uint64_t generation, aicfn_error *err) {
    worker *w = fn->w;
    worker_init_wait *iw = calloc(1, sizeof *iw);
    if (iw == NULL || (iw->ids = malloc(k * sizeof *iw->ids)) == NULL) {
        free(iw);
        return aicfn_error_set(err, AICFN_E_NOMEM, "function %s: out of memory starting init", fn->name);
    }
    pthread_mutex_init(&iw->mu, NULL);
    clock_cond_init(&iw->cv);
    iw->fn = fn;
    iw->model = model;
    iw->generation = generation;
    for (uint32_t i = 0; i < k; i++)
        iw->ids[i] = ((worker_req *)items[i])->note_id;
    iw->n_ids = k;
    /* Its own pin: the executor releases its pin after this batch, the init may not be
     * done by then. The model is pinned by the caller, so this cannot fail but by a bug. */
    if (entry && loader_cache_acquire_ready(w->cache, fn->model_key, &iw->entry) != AICFN_OK) {
        worker_init_wait_free(iw);
        return aicfn_error_set(err, AICFN_E_INTERNAL, "function %s: model %s not resident for init", fn->name,
                               fn->model_key);
    }
    pthread_mutex_lock(&w->mu);
    w->inflight++;
    w->loaders++;
    atomic_fetch_add(&fn->inits, 1);
    pthread_mutex_unlock(&w->mu);
    if (worker_start_detached(worker_init_main, iw) != 0) {
        if (iw->entry) loader_cache_release(w->cache, iw->entry);
        pthread_mutex_lock(&w->mu);
        int wake = --w->inflight == 0;
        if (--w->loaders == 0) wake = 1;
        if (atomic_fetch_sub(&fn->inits, 1) == 1) wake = 1;
        if (wake) pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        worker_init_wait_free(iw);
        return aicfn_error_set(err, AICFN_E_INTERNAL, "function %s: cannot start a thread for init",
                               fn->name);
    }
    fn->init_pending = iw;
    return AICFN_OK;
}

/* Waits for fn->init_pending to end while items[0..*k) wait for it, answering each whose
 * deadline passes (*k shrinks). true when it ended; false when no call is left. */
static bool worker_init_wait_for(worker_fn *fn, worker_batch_item **items, uint32_t *k,
                                 worker_exec_info *ex) {
    worker_init_wait *iw = fn->init_pending;
    pthread_mutex_lock(&iw->mu);
    bool done =
        worker_wait_answering(fn, items, k, &iw->mu, &iw->cv, &iw->done, "the handler's init ran", ex);
    pthread_mutex_unlock(&iw->mu);
    return done;
}

/* Makes fn->inst an instance for `model` (generation `generation`, entry pinned; NULL and
 * 0 without a model) for the calls items[0..*k), whose deadlines bound the wait: those
 * that pass are answered (*k shrinks; with *k == 0 the init goes on for a later batch).
 * An init left by an earlier batch is waited for first, then adopted, or ended if it was
 * made for a model since evicted (fini before its successor's init: aicfn.h), or tried
 * again if it failed (its error was for calls that had given up). Returns the error of an
 * init these calls waited for from its start. */
static int worker_fn_instance(worker_fn *fn, worker_batch_item **items, uint32_t *k,
                              loader_cache_entry *entry, const aicfn_model *model, uint64_t generation,
                              worker_exec_info *ex, aicfn_error *err) {
    bool started = false; /* an init of this batch's own (whose failure is its calls') */
    while (*k > 0) {
        worker_init_wait *iw = fn->init_pending;
        if (iw == NULL) {
            worker_instance_destroy(fn->inst); /* the predecessor ends before the init */
            fn->inst = NULL;
            int rc = worker_init_start(fn, items, *k, entry, model, generation, err);
            if (rc != AICFN_OK) return rc;
            started = true;
            continue;
        }
        if (!worker_init_wait_for(fn, items, k, ex)) return AICFN_OK;
        fn->init_pending = NULL;
        int rc = iw->rc;
        bool ours = iw->generation == generation;
        bool final = ours && (rc == AICFN_OK || started); /* the init these calls end with */
        if (final) {
            /* The calls that waited for it to the end share it; an init an earlier batch
             * started (and gave up on) only from when the first of them came: what ran
             * before no call of theirs waited for (a gateway takes no more as their cost). */
            uint64_t charged = iw->init_us, first = 0;
            for (uint32_t i = 0; !started && i < *k; i++)
                if (first == 0 || items[i]->arrival_us < first) first = items[i]->arrival_us;
            if (first > iw->started_us) {
                uint64_t waited =
                    iw->started_us + iw->init_us > first ? iw->started_us + iw->init_us - first : 0;
                if (waited < charged) charged = waited;
            }
            ex->init_us = iw->init_us;
            ex->init_charged_us = charged;
            ex->init_end_us = iw->started_us + iw->init_us;
            /* Calls of an adopted init came at different times: each pays at most what it
             * waited (a gateway caps a share at the call's stay), the earlier ones the rest. */
            uint64_t *waited = malloc(*k * sizeof *waited);
            if (waited) {
                for (uint32_t i = 0; i < *k; i++)
                    waited[i] = worker_init_waited(ex, items[i]->arrival_us);
                ex->init_level_us = worker_fill_level(waited, *k, charged);
                free(waited);
            } else {
                ex->init_level_us = worker_div_up(charged, *k); /* an even split */
            }
        }
        if (rc == AICFN_OK && ours) {
            fn->inst = iw->inst;
            fn->inst_generation = generation;
        } else if (rc == AICFN_OK) {
            worker_instance_destroy(iw->inst); /* made for a residency that ended */
        } else if (ours && started && err) {
            *err = iw->err;
        }
        worker_init_wait_free(iw);
        /* Done, unless the init was another residency's, or failed for calls that had
         * all given up (an earlier batch's): then these calls get an init of their own. */
        if (final) return rc;
    }
    return AICFN_OK;
}

/* Names items[0..n) as the calls the coming handler call serves (faultnote.h). */
static void worker_fn_note_calls(worker_fn *fn, worker_batch_item **items, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        fn->call_ids[i] = ((worker_req *)items[i])->note_id;
    worker_fault_note_enter(fn->name, fn->version, fn->call_ids, n);
}

static void worker_fn_exec(void *ctx, worker_batch_item **items, uint32_t n) {
    worker_fn *fn = ctx;
    worker *w = fn->w;
    aicfn_error err;
    aicfn_error_clear(&err);
    worker_exec_info ex = {.batch = n};
    loader_cache_entry *entry = NULL;
    loader_acquire_info acq;
    memset(&acq, 0, sizeof acq);
    const aicfn_model *model = NULL;
    uint64_t generation = 0;

    if (fn->snapshot) {
        /* Wait for the model as long as the most patient request of the batch. */
        uint64_t dl = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (items[i]->deadline_us == 0) {
                dl = 0;
                break;
            }
            if (items[i]->deadline_us > dl) dl = items[i]->deadline_us;
        }
        worker_load_makers makers; /* before the acquire drops calls that give up */
        worker_makers_of(items, n, &makers);
        uint64_t t0 = clock_now_us();
        int rc = worker_fn_acquire(fn, items, &n, dl, &makers, &entry, &acq, &ex, &err);
        ex.cold = acq.cold != 0;
        ex.load_us = clock_now_us() - t0;
        if (!ex.cold) ex.load_us = 0;
        if (rc != AICFN_OK) {
            aicfn_error_wrap(&err, "function %s: model %s", fn->name, fn->model_key);
            for (uint32_t i = 0; i < n; i++)
                worker_finish((worker_req *)items[i], rc, err.msg, &ex);
            return;
        }
        if (ex.cold) {
            atomic_fetch_add(&w->n_cold, 1);
            ex.acq = &acq;
            if (!acq.joined) { /* the calls still here share it (those that gave up are gone) */
                ex.made_load_us = acq.timing.total_us;
                ex.load_calls = n;
            }
            ex.attach_coldstart = !acq.joined;
        }
        if (n == 0 && ex.attach_coldstart) {
            /* Every call gave up while the load finished (its thread saw them still
             * waiting): no reply carries the load, so the next status does. */
            worker_unreported_load un = {.acq = acq, .ver = fn->version, .makers = makers};
            snprintf(un.fn, sizeof un.fn, "%s", fn->name);
            pthread_mutex_lock(&w->mu);
            worker_unreported_add_locked(w, &un);
            pthread_mutex_unlock(&w->mu);
        }
        worker_model *wm = loader_cache_entry_model(entry);
        model = &wm->view;
        generation = wm->generation;
    }

    /* Requests whose deadline passed while the model loaded are never executed. */
    uint32_t k = worker_drop_expired(fn, items, n, WORKER_DURING_MODEL, &ex);
    if (k > 0 && (fn->inst == NULL || fn->inst_generation != generation || fn->init_pending)) {
        /* First call, or the model became resident again: a new instance. */
        int rc = worker_fn_instance(fn, items, &k, entry, model, generation, &ex, &err);
        if (rc != AICFN_OK) {
            for (uint32_t i = 0; i < k; i++) {
                worker_finish((worker_req *)items[i], rc, err.msg, &ex);
                ex.attach_coldstart = false;
            }
            k = 0;
        }
        /* Nor those whose deadline passed as the handler's init (warm-up) ended. */
        k = worker_drop_expired(fn, items, k, "the handler's init ran", &ex);
    }
    if (k > 0) {
        ex.batch = k;
        for (uint32_t i = 0; i < k; i++) {
            worker_req *r = (worker_req *)items[i];
            fn->areqs[i] = r->areq;
            fn->resps[i] = r->resp;
        }
        uint64_t t0 = clock_now_us();
        worker_fn_note_calls(fn, items, k);
        int rc = worker_instance_invoke(fn->inst, fn->areqs, fn->resps, k, &err);
        worker_fault_note_leave();
        ex.exec_us = clock_now_us() - t0;
        uint64_t avg = atomic_load(&fn->exec_ewma_us);
        atomic_store(&fn->exec_ewma_us, avg ? avg - avg / 8 + ex.exec_us / 8 + 1 : ex.exec_us + 1);
        atomic_fetch_add(&w->n_batches, 1);
        for (uint32_t i = 0; i < k; i++) {
            worker_finish((worker_req *)items[i], rc, rc == AICFN_OK ? NULL : err.msg, &ex);
            ex.attach_coldstart = false; /* only the first reply carries the load's record */
        }
    }
    if (entry) loader_cache_release(w->cache, entry);
}

/* ---- functions ---- */

static void worker_fn_free(worker_fn *f) {
    if (f == NULL) return;
    worker_batcher_destroy(f->batcher);
    if (f->init_pending) { /* done: its thread counted in f->inits, which removal awaits */
        worker_instance_destroy(f->init_pending->inst);
        worker_init_wait_free(f->init_pending);
    }
    worker_instance_destroy(f->inst);
    worker_handler_close(f->handler);
    for (uint32_t i = 0; i < f->n_params; i++) {
        free((char *)f->params[i].key);
        free((char *)f->params[i].value);
    }
    free(f->params);
    free(f->areqs);
    free(f->call_ids);
    free(f->resps);
    free(f->name);
    free(f->handler_path);
    free(f->snapshot);
    free(f->model_key);
    free(f);
}

static worker_fn *worker_find_fn_locked(worker *w, const char *name, uint32_t version) {
    worker_fn *best = NULL;
    for (worker_fn *f = w->fns; f; f = f->next) {
        if (strcmp(f->name, name) != 0) continue;
        if (version != 0) {
            if (f->version == version) return f;
        } else if (best == NULL || f->version > best->version) {
            best = f;
        }
    }
    return best;
}

/* worker_add_function; from_spec marks a function a call's spec registered (retired when
 * idle: worker_retire_idle). */
static int worker_add(worker *w, const worker_fn_config *c, bool from_spec, aicfn_error *err) {
    /* As long as an invocation may name it (wire_decode_invoke_req). */
    if (c == NULL || c->name == NULL || c->name[0] == '\0' || strlen(c->name) > AICFN_FN_NAME_MAX_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID, "function name must be 1..%d bytes",
                               AICFN_FN_NAME_MAX_BYTES);
    if (c->handler == NULL || c->handler[0] == '\0')
        return aicfn_error_set(err, AICFN_E_INVALID, "function %s: no handler", c->name);
    if (c->max_batch > AICFN_WORKER_MAX_BATCH)
        return aicfn_error_set(err, AICFN_E_INVALID, "function %s: max_batch %u exceeds %d", c->name,
                               c->max_batch, AICFN_WORKER_MAX_BATCH);
    if (c->n_params > AICFN_MAX_PARAMS)
        return aicfn_error_set(err, AICFN_E_INVALID, "function %s: more than %d params", c->name,
                               AICFN_MAX_PARAMS);
    if (c->timeout_us > AICFN_MAX_TIMEOUT_US) /* as the registry; a drain's wait is sized by it */
        return aicfn_error_set(err, AICFN_E_INVALID, "function %s: timeout of %llu ms exceeds %llu ms",
                               c->name, (unsigned long long)(c->timeout_us / 1000),
                               (unsigned long long)(AICFN_MAX_TIMEOUT_US / 1000));
    worker_fn *f = calloc(1, sizeof *f);
    if (f == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "function %s: out of memory", c->name);
    f->w = w;
    f->version = c->version;
    f->from_spec = from_spec;
    atomic_store(&f->last_call_us, clock_now_us());
    f->max_batch = c->max_batch ? c->max_batch : AICFN_DEFAULT_MAX_BATCH;
    f->max_delay_us = c->max_delay_us;
    f->timeout_us = c->timeout_us ? c->timeout_us : (uint64_t)AICFN_DEFAULT_TIMEOUT_MS * 1000;
    f->name = strdup(c->name);
    f->handler_path = strdup(c->handler);
    int has_model = c->snapshot && c->snapshot[0];
    if (has_model) {
        f->snapshot = strdup(c->snapshot);
        f->model_key = strdup(c->model_key && c->model_key[0] ? c->model_key : c->snapshot);
    }
    f->areqs = calloc(f->max_batch, sizeof *f->areqs);
    f->resps = calloc(f->max_batch, sizeof *f->resps);
    f->call_ids = calloc(f->max_batch, sizeof *f->call_ids);
    f->params = c->n_params ? calloc(c->n_params, sizeof *f->params) : NULL;
    int oom = !f->name || !f->handler_path || (has_model && (!f->snapshot || !f->model_key)) || !f->areqs ||
              !f->resps || !f->call_ids || (c->n_params && !f->params);
    for (uint32_t i = 0; !oom && i < c->n_params; i++) {
        f->params[i].key = strdup(c->params[i].key ? c->params[i].key : "");
        f->params[i].value = strdup(c->params[i].value ? c->params[i].value : "");
        f->n_params = i + 1;
        oom = !f->params[i].key || !f->params[i].value;
    }
    if (has_model && !oom && strlen(f->model_key) >= AICFN_MAX_NAME_BYTES) {
        worker_fn_free(f);
        return aicfn_error_set(err, AICFN_E_INVALID, "function %s: model key longer than %d bytes", c->name,
                               AICFN_MAX_NAME_BYTES - 1);
    }
    if (oom) {
        worker_fn_free(f);
        return aicfn_error_set(err, AICFN_E_NOMEM, "function %s: out of memory", c->name);
    }
    /* A remote worker's snapshot is fetched when the model loads (worker_resolve). */
    int fetched = w->fetcher && strncmp(f->snapshot ? f->snapshot : "", WORKER_ARTIFACT_PREFIX,
                                        strlen(WORKER_ARTIFACT_PREFIX)) == 0;
    if (has_model && !fetched && access(f->snapshot, R_OK) != 0) {
        int e = errno;
        worker_fn_free(f);
        return aicfn_error_errno(err, e == ENOENT ? AICFN_E_NOT_FOUND : AICFN_E_IO, e,
                                 "function %s: snapshot %s", c->name, c->snapshot);
    }
    int rc = worker_handler_open(c->handler, &f->handler, err);
    if (rc != AICFN_OK) {
        worker_fn_free(f);
        return aicfn_error_wrap(err, "function %s", c->name);
    }
    worker_batcher_config bc = {.max_batch = f->max_batch,
                                .max_delay_us = f->max_delay_us,
                                .max_queue = c->max_queue,
                                .name = f->name,
                                /* No model to wait for: a warm call runs on the NNG
                                 * callback thread, without a hop to the executor. */
                                .run_inline = f->max_batch == 1 && !f->snapshot};
    rc = worker_batcher_create(&bc, worker_fn_exec, worker_fn_expire, f, &f->batcher, err);
    if (rc != AICFN_OK) {
        worker_fn_free(f);
        return rc;
    }
    pthread_mutex_lock(&w->mu);
    const char *why = NULL;
    if (w->draining)
        why = "draining";
    else if (w->n_fns >= AICFN_WORKER_MAX_FUNCTIONS)
        why = "full";
    else {
        for (worker_fn *g = w->fns; g; g = g->next)
            if (strcmp(g->name, f->name) == 0 && g->version == f->version) why = "exists";
    }
    if (why == NULL) {
        /* Append, in registration order. A function may be removed while serving
         * (worker_remove_function), so nothing keeps a pointer to one past w->mu unless
         * it raised its inflight count (removal waits for those); replies copy names. */
        worker_fn **pp = &w->fns;
        while (*pp)
            pp = &(*pp)->next;
        *pp = f;
        w->n_fns++;
        if (f->timeout_us > w->max_timeout_us) w->max_timeout_us = f->timeout_us;
    }
    pthread_mutex_unlock(&w->mu);
    if (why) {
        worker_fn_free(f);
        if (strcmp(why, "exists") == 0)
            return aicfn_error_set(err, AICFN_E_EXISTS, "function %s version %u is already loaded", c->name,
                                   c->version);
        if (strcmp(why, "full") == 0)
            return aicfn_error_set(err, AICFN_E_OVERLOADED,
                                   "function %s: the worker hosts %d functions already", c->name,
                                   AICFN_WORKER_MAX_FUNCTIONS);
        return aicfn_error_set(err, AICFN_E_UNAVAILABLE, "function %s: the worker is draining", c->name);
    }
    log_info("function %s v%u: handler %s (ABI %u.%u)%s%s, max_batch %u, max_delay %" PRIu64 " us", f->name,
             f->version, f->handler_path, AICFN_ABI_MAJOR_OF(worker_handler_abi_version(f->handler)),
             AICFN_ABI_MINOR_OF(worker_handler_abi_version(f->handler)),
             has_model ? ", model " : ", no model", has_model ? f->snapshot : "", f->max_batch,
             f->max_delay_us);
    return AICFN_OK;
}

int worker_add_function(worker *w, const worker_fn_config *c, aicfn_error *err) {
    return worker_add(w, c, false, err);
}

/* A function being removed (worker.removing). */
typedef struct worker_removal {
    char name[AICFN_MAX_NAME_BYTES];
    uint32_t version;
    struct worker_removal *next;
} worker_removal;

static bool worker_removing_locked(const worker *w, const char *name, uint32_t version) {
    for (const worker_removal *x = w->removing; x; x = x->next)
        if (x->version == version && strcmp(x->name, name) == 0) return true;
    return false;
}

/* The removal `x` is over (lock NOT held): a spec waiting for it may register anew. */
static void worker_removal_end(worker *w, worker_removal *x) {
    if (x == NULL) return;
    pthread_mutex_lock(&w->mu);
    for (worker_removal **pp = &w->removing; *pp; pp = &(*pp)->next)
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    free(x);
}

/* Waits (until `deadline_us`) for function name:version to be out of the removals.
 * AICFN_OK, or AICFN_E_TIMEOUT. */
static int worker_wait_removed(worker *w, const char *name, uint32_t version, uint64_t deadline_us,
                               aicfn_error *err) {
    pthread_mutex_lock(&w->mu);
    while (worker_removing_locked(w, name, version) && clock_now_us() < deadline_us) {
        struct timespec ts;
        clock_deadline_to_timespec(deadline_us, &ts);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    bool still = worker_removing_locked(w, name, version);
    pthread_mutex_unlock(&w->mu);
    if (still)
        return aicfn_error_set(err, AICFN_E_TIMEOUT,
                               "function %s v%u: its previous instance was still ending (fini) at the call's "
                               "deadline (not executed)",
                               name, version);
    return AICFN_OK;
}

/* worker_remove_function; evict_model false leaves the model to the cache's LRU (a
 * retirement: another version may use the model soon). */
static int worker_remove(worker *w, const char *name, uint32_t version, bool evict_model, aicfn_error *err) {
    if (name == NULL) return aicfn_error_set(err, AICFN_E_INVALID, "remove: no function name");
    worker_removal *x = calloc(1, sizeof *x);
    if (x == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "remove: out of memory");
    snprintf(x->name, sizeof x->name, "%s", name);
    x->version = version;
    pthread_mutex_lock(&w->mu);
    worker_fn **pp = &w->fns, *f = NULL;
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->name, name) == 0 && (*pp)->version == version) {
            f = *pp;
            *pp = f->next;
            f->next = NULL;
            w->n_fns--;
            x->next = w->removing; /* until its fini is done */
            w->removing = x;
            break;
        }
    if (f == NULL) {
        pthread_mutex_unlock(&w->mu);
        free(x);
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "function %s version %u is not loaded", name, version);
    }
    int shared = 0;
    if (f->model_key)
        for (worker_fn *g = w->fns; g; g = g->next)
            if (g->model_key && strcmp(g->model_key, f->model_key) == 0) shared = 1;
    pthread_mutex_unlock(&w->mu);
    /* New calls can no longer find it. The ones that did are counted in f->inflight
     * (worker_accept, under w->mu) but may not have reached the batcher yet: it keeps
     * accepting them, without holding a partial batch for more, until all are done.
     * Wait for them (each is bounded by its deadline), then close it. */
    worker_batcher_flush(f->batcher);
    uint64_t until = clock_now_us() + f->timeout_us + (uint64_t)AICFN_CALL_GRACE_MS * 1000;
    pthread_mutex_lock(&w->mu);
    while ((atomic_load(&f->inflight) > 0 || atomic_load(&f->inits) > 0) && clock_now_us() < until) {
        struct timespec ts;
        clock_deadline_to_timespec(until, &ts);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    unsigned left = atomic_load(&f->inflight) + atomic_load(&f->inits);
    worker_batcher_close(f->batcher); /* calls counted after the wait's end are refused */
    if (left) {
        f->next = w->retired;
        w->retired = f;
    }
    pthread_mutex_unlock(&w->mu);
    if (left) {
        /* Stuck in its handler: a successor need not wait for a fini that runs at exit. */
        worker_removal_end(w, x);
        log_warn("function %s v%u: removed with %u calls still in flight; freed at exit", name, version,
                 left);
        return AICFN_OK;
    }
    char key[AICFN_MAX_NAME_BYTES] = "";
    if (f->model_key && !shared && evict_model) snprintf(key, sizeof key, "%s", f->model_key);
    worker_fn_free(f); /* joins its batcher, runs fini, unloads the handler */
    worker_removal_end(w, x);
    if (key[0]) loader_cache_evict(w->cache, key, NULL); /* best effort: it may be pinned or gone */
    log_info("function %s v%u: removed", name, version);
    return AICFN_OK;
}

int worker_remove_function(worker *w, const char *name, uint32_t version, aicfn_error *err) {
    return worker_remove(w, name, version, true, err);
}

/* ---- retiring idle functions ---- */

/* Whether f, a function a spec registered, has had no call for the retirement period
 * and none is in flight (lock held). */
static bool worker_fn_retirable_locked(const worker *w, worker_fn *f, uint64_t now) {
    uint64_t last = atomic_load(&f->last_call_us);
    return f->from_spec && atomic_load(&f->inflight) == 0 && atomic_load(&f->inits) == 0 && now > last &&
           now - last >= w->fn_idle_retire_us;
}

/* Removes, one at a time, the functions worker_fn_retirable_locked picks. A call that
 * arrives meanwhile is served first (worker_remove waits for it); its spec registers the
 * function again once it is gone. */
static void *worker_retire_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:retire");
    worker *w = arg;
    for (;;) {
        char name[AICFN_MAX_NAME_BYTES] = "";
        uint32_t ver = 0;
        uint64_t idle_ms = 0, now = clock_now_us();
        pthread_mutex_lock(&w->mu);
        for (worker_fn *f = w->draining ? NULL : w->fns; f && !name[0]; f = f->next)
            if (worker_fn_retirable_locked(w, f, now)) {
                snprintf(name, sizeof name, "%s", f->name);
                ver = f->version;
                idle_ms = (now - atomic_load(&f->last_call_us)) / 1000;
            }
        pthread_mutex_unlock(&w->mu);
        if (!name[0]) break;
        aicfn_error err;
        if (worker_remove(w, name, ver, false, &err) != AICFN_OK) break; /* gone meanwhile */
        log_info("function %s v%u: retired after %llu ms without a call", name, ver,
                 (unsigned long long)idle_ms);
    }
    pthread_mutex_lock(&w->mu);
    w->retiring = false;
    if (--w->parked == 0) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu); /* the last touch of w */
    return NULL;
}

/* Starts a retirement pass when a function is due and none runs (at each status
 * request: the gateway polls every worker). Its handler instance may hold device memory
 * outside the model cache's budget, and each function keeps threads and a dlopen: a
 * long-lived worker must not keep every version it ever served. */
static void worker_retire_idle(worker *w) {
    uint64_t now = clock_now_us();
    bool due = false;
    pthread_mutex_lock(&w->mu);
    if (!w->retiring && !w->draining)
        for (worker_fn *f = w->fns; f && !due; f = f->next)
            due = worker_fn_retirable_locked(w, f, now);
    if (due) {
        w->retiring = true;
        w->parked++; /* worker_destroy waits for it */
    }
    pthread_mutex_unlock(&w->mu);
    if (!due || worker_start_detached(worker_retire_main, w) == 0) return;
    pthread_mutex_lock(&w->mu);
    w->retiring = false;
    if (--w->parked == 0) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* ---- the request handler (NNG callback threads) ---- */

/* Converts the request's `params` map into text key/values in the doc's zone. */
static int worker_decode_params(worker_req *r, aicfn_error *err) {
    const msgpack_object *m = wire_map_get(&r->doc.root, "params");
    if (m == NULL || m->type == MSGPACK_OBJECT_NIL) return AICFN_OK;
    if (m->type != MSGPACK_OBJECT_MAP)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "'params' must be a map");
    uint32_t n = m->via.map.size;
    if (n > AICFN_MAX_PARAMS)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "'params' has %u entries, at most %d", n,
                               AICFN_MAX_PARAMS);
    if (n == 0) return AICFN_OK;
    r->params = wire_doc_alloc(&r->doc, n * sizeof *r->params);
    if (r->params == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "params: out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        const char *key;
        int rc = wire_obj_cstr(&r->doc, &kv->key, "params key", AICFN_MAX_NAME_BYTES - 1, &key, err);
        if (rc != AICFN_OK) return rc;
        char buf[64];
        const char *val = buf;
        const msgpack_object *v = &kv->val;
        switch (v->type) {
        case MSGPACK_OBJECT_STR:
            rc = wire_obj_cstr(&r->doc, v, key, 0, &val, err);
            if (rc != AICFN_OK) return rc;
            break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            snprintf(buf, sizeof buf, "%" PRIu64, v->via.u64);
            break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            snprintf(buf, sizeof buf, "%" PRId64, v->via.i64);
            break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            snprintf(buf, sizeof buf, "%.17g", v->via.f64);
            break;
        case MSGPACK_OBJECT_BOOLEAN:
            snprintf(buf, sizeof buf, "%s", v->via.boolean ? "true" : "false");
            break;
        case MSGPACK_OBJECT_NIL:
            buf[0] = '\0';
            break;
        default:
            return aicfn_error_set(err, AICFN_E_INVALID, "params['%s'] must be a string, number, bool or nil",
                                   key);
        }
        if (val == buf) {
            size_t len = strlen(buf) + 1;
            char *copy = wire_doc_alloc(&r->doc, len);
            if (copy == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "params: out of memory");
            memcpy(copy, buf, len);
            val = copy;
        }
        r->params[i] = (aicfn_param){.key = key, .value = val};
    }
    r->areq.params = r->params;
    r->areq.n_params = n;
    return AICFN_OK;
}

/* Where an empty input's data points: aligned for any dtype (its place in the message
 * may not be, and there is nothing to copy). */
static _Alignas(64) const uint8_t worker_empty_input[64];

/* Builds the handler's view of the inputs: host memory, each aligned for its dtype
 * (misaligned data in the message is copied once into one aligned buffer). */
static int worker_build_inputs(worker_req *r, aicfn_error *err) {
    uint32_t n = r->req.n_inputs;
    if (n == 0) return AICFN_OK;
    r->inputs = wire_doc_alloc(&r->doc, n * sizeof *r->inputs);
    if (r->inputs == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "inputs: out of memory");
    uint64_t copy_bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        const wire_tensor *t = &r->req.inputs[i];
        unsigned align = t->dtype == AICFN_DTYPE_BYTES ? 4 : dtype_size(t->dtype);
        if (t->nbytes && align > 1 && ((uintptr_t)t->data % align) != 0)
            copy_bytes += (t->nbytes + 63) & ~(uint64_t)63;
    }
    uint8_t *store = NULL;
    if (copy_bytes) {
        store = aligned_alloc(64, (size_t)copy_bytes);
        if (store == NULL)
            return aicfn_error_set(err, AICFN_E_NOMEM, "inputs: out of memory for %" PRIu64 " bytes",
                                   copy_bytes);
        r->aligned = store;
    }
    uint64_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        const wire_tensor *t = &r->req.inputs[i];
        aicfn_tensor *a = &r->inputs[i];
        memset(a, 0, sizeof *a);
        a->name = t->name;
        a->dtype = t->dtype;
        a->ndim = t->ndim;
        memcpy(a->shape, t->shape, sizeof a->shape);
        a->nbytes = t->nbytes;
        a->mem = AICFN_MEM_HOST;
        a->device_id = -1;
        unsigned align = t->dtype == AICFN_DTYPE_BYTES ? 4 : dtype_size(t->dtype);
        if (t->nbytes == 0) {
            a->data = (void *)worker_empty_input;
        } else if (align > 1 && ((uintptr_t)t->data % align) != 0) {
            memcpy(store + at, t->data, (size_t)t->nbytes);
            a->data = store + at;
            at += (t->nbytes + 63) & ~(uint64_t)63;
        } else {
            a->data = (void *)t->data;
        }
        int rc = worker_tensor_check(a, err);
        if (rc != AICFN_OK) return rc;
    }
    r->areq.inputs = r->inputs;
    r->areq.n_inputs = n;
    return AICFN_OK;
}

/* Registers the function a gateway's `spec` describes (the run-time seam). `handler`
 * is the local handler path: the spec's own, or (remote worker) the fetched copy; a
 * remote worker's snapshot becomes WORKER_ARTIFACT_PREFIX + its hash. */
static int worker_add_from_spec(worker *w, const wire_invoke_req *q, const char *handler, aicfn_error *err) {
    if (w->refuse_specs)
        return aicfn_error_set(err, AICFN_E_FORBIDDEN,
                               "function %s: this worker does not accept function specs", q->fn);
    if (handler == NULL || handler[0] != '/')
        return aicfn_error_set(err, AICFN_E_INVALID, "function %s: spec.handler must be an absolute path",
                               q->fn);
    const char *snapshot = q->spec.snapshot;
    char snap[sizeof WORKER_ARTIFACT_PREFIX + WORKER_HASH_HEX_LEN];
    if (w->fetcher && snapshot && snapshot[0]) {
        char hash[WORKER_HASH_HEX_LEN + 1];
        int rc = worker_fetch_hash_of_path(snapshot, hash, err);
        if (rc != AICFN_OK) return aicfn_error_wrap(err, "function %s: spec.snapshot", q->fn);
        snprintf(snap, sizeof snap, WORKER_ARTIFACT_PREFIX "%s", hash);
        snapshot = snap;
    }
    worker_fn_config c = {
        .name = q->fn,
        .version = q->ver,
        .handler = handler,
        .snapshot = snapshot,
        .model_key = q->spec.model,
        .max_batch = q->spec.max_batch,
        .max_delay_us = q->spec.max_delay_us,
        .timeout_us = (uint64_t)q->spec.timeout_ms * 1000,
        .n_params = q->spec.n_params, /* copied by worker_add */
        .params = q->spec.params,
    };
    int rc = worker_add(w, &c, true, err);
    return rc == AICFN_E_EXISTS ? AICFN_OK : rc;
}

/* Replies with an error on behalf of `w`, counting it. */
static void worker_reply_fail(worker *w, rpc_call *call, uint64_t id, int code, const char *msg) {
    atomic_fetch_add(&w->n_errors, 1);
    worker_reply_error(call, id, code, msg);
}

/* The same for an invocation, wherever its reply goes. */
static void worker_out_fail(worker *w, worker_out out, uint64_t id, int code, const char *msg) {
    if (out.bundle == NULL) {
        worker_reply_fail(w, out.call, id, code, msg);
        return;
    }
    atomic_fetch_add(&w->n_errors, 1);
    wire_writer wr;
    wire_writer_init(&wr);
    if (wire_encode_error_reply(&wr, id, code, msg, NULL) != AICFN_OK) wire_writer_reset(&wr);
    worker_out_send(out, &wr); /* an empty writer: the bundle answers the slot with AICFN_E_NOMEM */
    wire_writer_fini(&wr);
}

/* Refuses a call without running it (the worker drains): AICFN_E_UNAVAILABLE marked
 * not_run, so that the gateway sends it to another worker, idempotent or not. */
static void worker_out_refuse(worker *w, worker_out out, uint64_t id, const char *msg) {
    wire_writer wr;
    wire_writer_init(&wr);
    if (wire_encode_marked_error_reply(&wr, id, AICFN_E_UNAVAILABLE, msg, WIRE_MARK_NOT_RUN, NULL) !=
        AICFN_OK) {
        wire_writer_fini(&wr);
        worker_out_fail(w, out, id, AICFN_E_UNAVAILABLE, msg);
        return;
    }
    atomic_fetch_add(&w->n_errors, 1);
    worker_out_send(out, &wr);
    wire_writer_fini(&wr);
}

/* Answers r, counted in flight but never run, as worker_out_refuse does, and takes it out
 * of flight like worker_finish: for a call whose function could not be registered because
 * the worker began draining while the call waited (for its handler's download). */
static void worker_finish_not_run(worker_req *r, const char *msg) {
    worker_out_refuse(r->w, r->out, r->id, msg);
    worker_req_done(r);
}

/* Answers r after worker_add_from_spec failed: a refusal because the worker drains is
 * marked not_run (the gateway sends the call elsewhere); any other failure is the call's. */
static void worker_finish_spec_failed(worker_req *r, int rc, const char *msg) {
    if (rc == AICFN_E_UNAVAILABLE) /* worker_add_function: only when draining */
        worker_finish_not_run(r, msg);
    else
        worker_finish(r, rc, msg, NULL);
}

/* ---- preload / unload (the gateway's repository load and unload) ----
 * {t:"preload", id, model, snapshot, deadline_ms?, keep?}: makes model `model` resident
 * from the snapshot at the absolute path `snapshot` (no handler call), on its own thread
 * (a load takes time; NNG callbacks must not block); `keep` true also keeps it resident
 * (never an LRU victim: scaling.min_workers). {t:"unload", id, model, keep_only?}:
 * evicts it, kept or not (AICFN_E_UNAVAILABLE when pinned or loading; not resident is
 * success); `keep_only` true only ends the keep, and the model stays as an ordinary
 * entry. All answer with a status reply (the worker's state after the operation), or an
 * error reply. */

typedef struct worker_preload {
    worker *w;
    rpc_call *call;
    uint64_t id;
    uint64_t received_us, deadline_us;
    bool keep; /* loader_cache_keep instead of loader_cache_preload */
    char key[AICFN_MAX_NAME_BYTES];
    char path[PATH_MAX];
} worker_preload;

static void *worker_preload_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:preload");
    worker_preload *p = arg;
    worker *w = p->w;
    aicfn_error err;
    aicfn_error_clear(&err);
    loader_acquire_info info;
    memset(&info, 0, sizeof info);
    int rc = p->keep ? loader_cache_keep(w->cache, p->key, p->path, p->deadline_us, &info, &err)
                     : loader_cache_preload(w->cache, p->key, p->path, p->deadline_us, &info, &err);
    if (rc == AICFN_OK && info.cold) atomic_fetch_add(&w->n_cold, 1);
    if (rc == AICFN_OK)
        log_info("worker %s: preloaded model %s%s%s", w->id, p->key, info.cold ? "" : " (already resident)",
                 p->keep ? ", kept resident" : "");
    /* Out of flight before the reply: once answered, the worker may be destroyed. */
    pthread_mutex_lock(&w->mu);
    if (--w->inflight == 0) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (rc == AICFN_OK) {
        /* What it loaded, for the gateway's cold_starts: a preload's load is a cold start
         * like an invocation's (a joined one is recorded by whoever made it). */
        wire_load_record load = {.cold = info.cold != 0};
        const char *evicted[LOADER_MAX_REPORTED_EVICTIONS];
        if (info.cold) {
            load.timing = (wire_timing){.load_us = info.wait_us,
                                        .fetch_us = info.timing.fetch_us,
                                        .read_us = info.timing.read_us,
                                        .decompress_us = info.timing.decompress_us,
                                        .filter_us = info.timing.filter_us,
                                        .copy_us = info.timing.copy_us,
                                        .total_us = clock_now_us() - p->received_us};
        }
        if (info.cold && !info.joined) {
            load.has_coldstart = true;
            load.coldstart.compressed_bytes = info.timing.compressed_bytes;
            load.coldstart.raw_bytes = info.timing.raw_bytes;
            uint32_t ne = info.n_evictions < LOADER_MAX_REPORTED_EVICTIONS ? info.n_evictions
                                                                           : LOADER_MAX_REPORTED_EVICTIONS;
            for (uint32_t i = 0; i < ne; i++)
                evicted[i] = info.evictions[i].key;
            load.coldstart.n_evicted = ne;
            load.coldstart.evicted = evicted;
        }
        worker_reply_status(w, p->call, p->id, &load);
    } else {
        worker_reply_fail(w, p->call, p->id, rc, err.msg);
    }
    free(p);
    return NULL;
}

/* {t:"exit", id, ctl, reason?}: the gateway that registered this worker ends it (a call
 * stuck past its timeout cannot be taken back otherwise: the handler's thread cannot be
 * stopped). `ctl` must be the token the worker sent in its `register`; the process then
 * exits at once, without a reply, as a SIGKILL would end it: the gateway has already
 * failed or re-routed its calls. */
static void worker_on_exit(worker *w, rpc_call *call, wire_doc *doc, const wire_header *h) {
    aicfn_error err;
    aicfn_error_clear(&err);
    const char *ctl = NULL, *reason = NULL;
    int rc = wire_get_cstr(doc, &doc->root, NULL, "ctl", true, AICFN_WORKER_EXIT_TOKEN_MAX, &ctl, &err);
    if (rc == AICFN_OK) rc = wire_get_cstr(doc, &doc->root, NULL, "reason", false, 256, &reason, &err);
    if (rc != AICFN_OK) {
        worker_reply_fail(w, call, h->id, rc, err.msg);
        return;
    }
    size_t n = strlen(ctl);
    if (w->exit_token == NULL || n != strlen(w->exit_token) || sodium_memcmp(ctl, w->exit_token, n) != 0) {
        log_warn("worker %s: an exit order with a wrong token was refused", w->id);
        worker_reply_fail(w, call, h->id, AICFN_E_FORBIDDEN,
                          w->exit_token ? "exit: wrong token"
                                        : "exit: this worker takes no exit order (not registered)");
        return;
    }
    log_error("worker %s: its gateway ends it: %s", w->id,
              reason && reason[0] ? reason : "(no reason given)");
    fflush(NULL);
    _exit(WORKER_EXIT_ORDERED);
}

/* An unload (or the end of a keep) the gateway asked for, answered with a status. */
static void worker_unload(worker *w, rpc_call *call, uint64_t id, const char *key, bool keep_only) {
    aicfn_error err;
    aicfn_error_clear(&err);
    int rc = keep_only ? loader_cache_unkeep(w->cache, key, &err) : loader_cache_evict(w->cache, key, &err);
    if (rc == AICFN_OK)
        log_info("worker %s: model %s %s", w->id, key, keep_only ? "no longer kept resident" : "unloaded");
    if (rc == AICFN_OK || rc == AICFN_E_NOT_FOUND)
        worker_reply_status(w, call, id, NULL);
    else
        worker_reply_fail(w, call, id, rc, err.msg);
}

typedef struct worker_unload_job {
    worker *w;
    rpc_call *call;
    uint64_t id;
    bool keep_only;
    char key[AICFN_MAX_NAME_BYTES];
} worker_unload_job;

/* Off a link's reader (the eviction frees device memory): rpc_server_destroy waits for
 * the call, which is answered last. */
static void *worker_unload_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:unload");
    worker_unload_job *j = arg;
    worker_unload(j->w, j->call, j->id, j->key, j->keep_only);
    free(j);
    return NULL;
}

static void worker_on_model_op(worker *w, rpc_call *call, wire_doc *doc, const wire_header *h) {
    aicfn_error err;
    aicfn_error_clear(&err);
    const char *key = NULL, *path = NULL;
    uint32_t deadline_ms = 0;
    bool keep = false, keep_only = false;
    int preload = strcmp(h->t, "preload") == 0;
    int rc = wire_get_cstr(doc, &doc->root, NULL, "model", true, AICFN_MAX_NAME_BYTES - 1, &key, &err);
    if (rc == AICFN_OK && preload)
        rc = wire_get_cstr(doc, &doc->root, NULL, "snapshot", true, PATH_MAX - 1, &path, &err);
    if (rc == AICFN_OK && preload)
        rc = wire_get_u32(&doc->root, NULL, "deadline_ms", false, &deadline_ms, &err);
    if (rc == AICFN_OK)
        rc = wire_get_bool(&doc->root, NULL, preload ? "keep" : "keep_only", false,
                           preload ? &keep : &keep_only, &err);
    if (rc == AICFN_OK && key[0] == 0) rc = aicfn_error_set(&err, AICFN_E_PROTOCOL, "%s: empty model", h->t);
    if (rc != AICFN_OK) {
        worker_reply_fail(w, call, h->id, rc, err.msg);
        return;
    }
    if (!preload) {
        worker_unload_job *j = rpc_call_one_reader(call) ? calloc(1, sizeof *j) : NULL;
        if (j) {
            *j = (worker_unload_job){.w = w, .call = call, .id = h->id, .keep_only = keep_only};
            snprintf(j->key, sizeof j->key, "%s", key);
            if (worker_start_detached(worker_unload_main, j) == 0) return;
            free(j);
        }
        worker_unload(w, call, h->id, key, keep_only); /* an NNG callback thread (or no thread) */
        return;
    }
    if (w->refuse_specs) {
        /* Keeping a model already resident loads nothing: allowed. */
        if (keep && loader_cache_keep_resident(w->cache, key, NULL) == AICFN_OK) {
            log_info("worker %s: model %s kept resident", w->id, key);
            worker_reply_status(w, call, h->id, NULL);
            return;
        }
        worker_reply_fail(w, call, h->id, AICFN_E_FORBIDDEN,
                          "preload: this worker does not accept function specs");
        return;
    }
    char fetched[sizeof WORKER_ARTIFACT_PREFIX + WORKER_HASH_HEX_LEN];
    if (w->fetcher) {
        /* Remote: the snapshot is fetched by hash in the cache's load (worker_resolve). */
        char hash[WORKER_HASH_HEX_LEN + 1];
        if (worker_fetch_hash_of_path(path, hash, &err) != AICFN_OK) {
            aicfn_error_wrap(&err, "preload: snapshot");
            worker_reply_fail(w, call, h->id, err.code, err.msg);
            return;
        }
        snprintf(fetched, sizeof fetched, WORKER_ARTIFACT_PREFIX "%s", hash);
        path = fetched;
    } else if (path[0] != '/') {
        worker_reply_fail(w, call, h->id, AICFN_E_INVALID, "preload: snapshot must be an absolute path");
        return;
    }
    worker_preload *p = calloc(1, sizeof *p);
    if (p == NULL) {
        worker_reply_fail(w, call, h->id, AICFN_E_NOMEM, "preload: out of memory");
        return;
    }
    p->w = w;
    p->call = call;
    p->id = h->id;
    p->received_us = rpc_call_received_us(call);
    /* At most AICFN_MAX_TIMEOUT_US; a drain waits for this reply that long too (below). */
    uint64_t budget_us = (uint64_t)(deadline_ms ? deadline_ms : AICFN_DEFAULT_TIMEOUT_MS) * 1000;
    if (budget_us > AICFN_MAX_TIMEOUT_US) budget_us = AICFN_MAX_TIMEOUT_US;
    p->deadline_us = clock_now_us() + budget_us;
    p->keep = keep;
    snprintf(p->key, sizeof p->key, "%s", key);
    snprintf(p->path, sizeof p->path, "%s", path);
    pthread_mutex_lock(&w->mu);
    int draining = w->draining;
    if (!draining) w->inflight++;
    /* A drain's bound (the longest timeout + grace) covers this preload's deadline, which
     * a keep-warm preload may bring before any call registered its function here. */
    if (!draining && budget_us > w->max_timeout_us) w->max_timeout_us = budget_us;
    pthread_mutex_unlock(&w->mu);
    if (draining) {
        free(p);
        worker_reply_fail(w, call, h->id, AICFN_E_UNAVAILABLE, "the worker is draining (shutting down)");
        return;
    }
    rc = worker_start_detached(worker_preload_main, p);
    if (rc != 0) {
        pthread_mutex_lock(&w->mu);
        if (--w->inflight == 0) pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        free(p);
        worker_reply_fail(w, call, h->id, AICFN_E_NOMEM, "preload: cannot start a thread");
    }
}

/* ---- a remote worker's new function: fetch its handler, then run the call ----
 * A spec that names a function this worker does not hold yet parks the call on a
 * thread of its own (with the download's threads, at most AICFN_WORKER_MAX_PARKED: a
 * bundle's parts park one each; beyond, AICFN_E_OVERLOADED), which fetches the handler
 * by hash (single-flight in the fetcher) until the call's deadline, registers the
 * function and continues the call, or fails it naming the artifact. The call's deadline
 * still counts from its receipt. worker_destroy waits for these threads. */

static void worker_dispatch(worker_req *r);

/* A handler's download for the parked calls that need it: one thread per handler path
 * (w->handler_fetches), however many calls wait for it, while each parked thread answers
 * its call at its deadline if the download is not done by then (a gateway replaces a
 * worker whose call is late past its grace). The download goes on and lands in the
 * fetcher's cache for the next call. The fetch thread and each waiting call hold a
 * reference; the last frees it. The thread counts in w->parked, which worker_destroy
 * waits for. */
typedef struct worker_handler_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    worker *w;
    char *gateway_path;
    char local[PATH_MAX];
    bool done;
    int rc;
    aicfn_error err;
    unsigned refs;                    /* under mu */
    struct worker_handler_wait *next; /* in w->handler_fetches, under w->mu, until done */
} worker_handler_wait;

static void worker_handler_wait_free(worker_handler_wait *hw) {
    pthread_mutex_destroy(&hw->mu);
    pthread_cond_destroy(&hw->cv);
    free(hw->gateway_path);
    free(hw);
}

/* Drops a reference; true when it was the last (then hw is freed). */
static bool worker_handler_wait_unref(worker_handler_wait *hw) {
    pthread_mutex_lock(&hw->mu);
    bool last = --hw->refs == 0;
    pthread_mutex_unlock(&hw->mu);
    if (last) worker_handler_wait_free(hw);
    return last;
}

static void *worker_handler_fetch_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:fetch");
    worker_handler_wait *hw = arg;
    worker *w = hw->w;
    char local[PATH_MAX];
    aicfn_error err;
    aicfn_error_clear(&err);
    int rc = worker_fetch_path(w->fetcher, hw->gateway_path, local, sizeof local, &err);
    pthread_mutex_lock(&w->mu); /* no new call joins it now: a later one fetches anew (cached) */
    worker_handler_wait **pp = &w->handler_fetches;
    while (*pp != hw)
        pp = &(*pp)->next;
    *pp = hw->next;
    pthread_mutex_unlock(&w->mu);
    pthread_mutex_lock(&hw->mu);
    hw->done = true;
    hw->rc = rc;
    hw->err = err;
    snprintf(hw->local, sizeof hw->local, "%s", local);
    pthread_cond_broadcast(&hw->cv);
    bool waited_for = hw->refs > 1;
    pthread_mutex_unlock(&hw->mu);
    if (!waited_for)
        log_info("worker %s: handler %s %s after its calls' deadlines", w->id, hw->gateway_path,
                 rc == AICFN_OK ? "downloaded" : "failed to download");
    worker_handler_wait_unref(hw);
    pthread_mutex_lock(&w->mu);
    if (--w->parked == 0) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu); /* the last touch of w */
    return NULL;
}

/* The deadline of r before it reaches its function: the spec's timeout, shortened by the
 * caller's deadline_ms. */
static uint64_t worker_spec_deadline(const worker_req *r) {
    uint64_t budget =
        (uint64_t)(r->req.spec.timeout_ms ? r->req.spec.timeout_ms : AICFN_DEFAULT_TIMEOUT_MS) * 1000;
    if (r->req.deadline_ms && (uint64_t)r->req.deadline_ms * 1000 < budget)
        budget = (uint64_t)r->req.deadline_ms * 1000;
    if (budget > AICFN_MAX_TIMEOUT_US) budget = AICFN_MAX_TIMEOUT_US; /* the spec is checked later */
    return r->received_us + budget;
}

/* Fetches the handler of r's spec into `local`, waiting at most until r's deadline (the
 * spec's timeout, shortened by the caller's deadline_ms). AICFN_E_TIMEOUT when the
 * download is still going then (it goes on). */
static int worker_fetch_handler_by_deadline(worker_req *r, char *local, size_t cap, aicfn_error *err) {
    worker *w = r->w;
    uint64_t deadline = worker_spec_deadline(r);
    /* Join the download of this handler in progress, or start it. */
    pthread_mutex_lock(&w->mu);
    worker_handler_wait *hw = w->handler_fetches;
    while (hw && strcmp(hw->gateway_path, r->req.spec.handler) != 0)
        hw = hw->next;
    if (hw) {
        pthread_mutex_lock(&hw->mu);
        hw->refs++;
        pthread_mutex_unlock(&hw->mu);
    } else {
        hw = calloc(1, sizeof *hw);
        char *path = strdup(r->req.spec.handler);
        if (hw && path) {
            pthread_mutex_init(&hw->mu, NULL);
            clock_cond_init(&hw->cv);
            hw->w = w;
            hw->gateway_path = path;
            hw->refs = 2; /* the thread's and this call's */
            if (worker_start_detached(worker_handler_fetch_main, hw) == 0) {
                hw->next = w->handler_fetches;
                w->handler_fetches = hw; /* before the thread can look for it: w->mu is held */
                w->parked++;
            } else {
                worker_handler_wait_free(hw);
                hw = NULL;
            }
        } else {
            free(hw);
            free(path);
            hw = NULL;
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (hw == NULL) return worker_fetch_path(w->fetcher, r->req.spec.handler, local, cap, err);
    pthread_mutex_lock(&hw->mu);
    while (!hw->done && clock_now_us() < deadline) {
        struct timespec ts;
        clock_deadline_to_timespec(deadline, &ts);
        pthread_cond_timedwait(&hw->cv, &hw->mu, &ts);
    }
    bool done = hw->done;
    int rc = hw->rc;
    if (done && rc == AICFN_OK)
        snprintf(local, cap, "%s", hw->local);
    else if (done && err)
        *err = hw->err;
    pthread_mutex_unlock(&hw->mu);
    worker_handler_wait_unref(hw);
    if (!done)
        return aicfn_error_set(err, AICFN_E_TIMEOUT,
                               "the handler was still downloading at the call's deadline (not executed)");
    return rc;
}

/* Ends r's registration (worker_reg): takes it off the list and frees it. Returns the
 * calls that waited on it, chained on `next`. */
static worker_req *worker_reg_end(worker *w, worker_req *r) {
    worker_reg *reg = r->reg;
    if (reg == NULL) return NULL;
    pthread_mutex_lock(&w->mu);
    for (worker_reg **pp = &w->regs; *pp; pp = &(*pp)->next)
        if (*pp == reg) {
            *pp = reg->next;
            break;
        }
    worker_req *waiters = reg->waiters;
    pthread_mutex_unlock(&w->mu);
    free(reg);
    r->reg = NULL;
    return waiters;
}

/* A call whose spec registers its function, off the NNG callback thread: it fetches the
 * handler (a remote worker), waits for a previous instance of the function still being
 * removed (its fini runs first), then registers the function and dispatches the call. */
static void *worker_park_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:park");
    worker_req *r = arg;
    worker *w = r->w;
    aicfn_error err;
    aicfn_error_clear(&err);
    char handler[PATH_MAX];
    uint64_t t0 = clock_now_us();
    int rc = AICFN_OK;
    if (w->fetcher) {
        rc = worker_fetch_handler_by_deadline(r, handler, sizeof handler, &err);
        if (rc != AICFN_OK)
            aicfn_error_wrap(&err, "function %s: handler", r->req.fn);
        else
            log_info("function %s v%u: handler %s ready after %llu ms", r->req.fn, r->req.ver, handler,
                     (unsigned long long)((clock_now_us() - t0) / 1000));
    } else {
        snprintf(handler, sizeof handler, "%s", r->req.spec.handler ? r->req.spec.handler : "");
    }
    if (rc == AICFN_OK) rc = worker_wait_removed(w, r->req.fn, r->req.ver, worker_spec_deadline(r), &err);
    bool added = false;
    if (rc == AICFN_OK) {
        rc = worker_add_from_spec(w, &r->req, handler, &err);
        added = true;
    }
    /* This call, and the calls that waited on its registration, share its outcome. */
    r->next = worker_reg_end(w, r);
    char msg[AICFN_ERRMSG_MAX];
    snprintf(msg, sizeof msg, "%s", err.msg);
    for (worker_req *q = r, *next; q; q = next) {
        next = q->next;
        q->next = NULL;
        if (rc == AICFN_OK)
            worker_dispatch(q);
        else if (added)
            worker_finish_spec_failed(q, rc, msg);
        else
            worker_finish(q, rc, msg, NULL);
    }
    pthread_mutex_lock(&w->mu);
    if (--w->parked == 0) pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void worker_park(worker_req *r, bool shared) {
    worker *w = r->w;
    aicfn_error err;
    char hash[WORKER_HASH_HEX_LEN + 1];
    if (w->fetcher && worker_fetch_hash_of_path(r->req.spec.handler, hash, &err) != AICFN_OK) {
        aicfn_error_wrap(&err, "function %s: spec.handler", r->req.fn);
        worker_finish(r, err.code, err.msg, NULL);
        return;
    }
    worker_reg *reg = NULL;
    if (shared && (reg = calloc(1, sizeof *reg)) == NULL) {
        worker_finish(r, AICFN_E_NOMEM, "out of memory", NULL);
        return;
    }
    pthread_mutex_lock(&w->mu);
    if (reg) {
        snprintf(reg->fn, sizeof reg->fn, "%s", r->req.fn);
        reg->ver = r->req.ver;
        for (worker_reg *g = w->regs; g; g = g->next)
            if (g->ver == reg->ver && strcmp(g->fn, reg->fn) == 0) { /* under way: wait on it, last */
                worker_req **tail = &g->waiters;
                while (*tail)
                    tail = &(*tail)->next;
                *tail = r;
                pthread_mutex_unlock(&w->mu);
                free(reg);
                return;
            }
    }
    bool full = w->parked >= AICFN_WORKER_MAX_PARKED;
    if (!full) {
        w->parked++;
        if (reg) {
            reg->next = w->regs;
            w->regs = reg;
            r->reg = reg;
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (full) { /* each parked call holds a thread, and its download another */
        free(reg);
        worker_finish(r, AICFN_E_OVERLOADED,
                      "too many calls waiting for their functions' handlers; retry shortly", NULL);
        return;
    }
    int rc = worker_start_detached(worker_park_main, r);
    if (rc != 0) {
        r->next = worker_reg_end(w, r);
        pthread_mutex_lock(&w->mu);
        if (--w->parked == 0) pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        for (worker_req *q = r, *next; q; q = next) {
            next = q->next;
            q->next = NULL;
            worker_finish(q, AICFN_E_NOMEM, "cannot start a thread to register the function", NULL);
        }
    }
}

static void worker_on_bundle(worker *w, rpc_call *call, const wire_doc *doc, const wire_header *h);

/* One message: a request of its own (`out.call`), or one invocation of a bundle, whose
 * parts share one message's object budget (`objects_left`, NULL for a request of its
 * own): each part's unpack zone lives as long as its call, so per-part budgets would let
 * one bundle hold AICFN_BUNDLE_MAX_CALLS messages' worth of zones. */
static void worker_accept(worker *w, worker_out out, const uint8_t *msg, size_t len, uint64_t *objects_left) {
    aicfn_error err;
    aicfn_error_clear(&err);
    if (objects_left && *objects_left == 0) {
        worker_out_fail(w, out, wire_peek_id(msg, len), AICFN_E_PROTOCOL,
                        "bundle: its parts exceed the message's object limit");
        return;
    }
    worker_req *r = calloc(1, sizeof *r);
    if (r == NULL) {
        worker_out_fail(w, out, wire_peek_id(msg, len), AICFN_E_NOMEM, "out of memory");
        return;
    }
    wire_limits lim = {.max_objects = objects_left ? *objects_left : 0};
    int rc = wire_doc_parse(&r->doc, msg, len, &lim, &err);
    if (rc == AICFN_OK && objects_left) *objects_left -= r->doc.objects;
    if (rc != AICFN_OK) {
        worker_req_free(r);
        worker_out_fail(w, out, wire_peek_id(msg, len), rc, err.msg);
        return;
    }
    wire_header h;
    rc = wire_decode_header(&r->doc, &h, &err);
    if (rc != AICFN_OK) {
        worker_req_free(r);
        worker_out_fail(w, out, wire_peek_id(msg, len), rc, err.msg);
        return;
    }
    if (strcmp(h.t, WIRE_T_INVOKE) != 0 && out.bundle) {
        worker_req_free(r);
        snprintf(err.msg, sizeof err.msg, "a bundle holds invoke messages only, not '%s'", h.t);
        worker_out_fail(w, out, h.id, AICFN_E_PROTOCOL, err.msg);
        return;
    }
    if (strcmp(h.t, WIRE_T_STATUS) == 0) {
        worker_loads_ack(w, &r->doc);
        worker_req_free(r);
        worker_reply_status(w, out.call, h.id, NULL);
        worker_retire_idle(w);
        return;
    }
    if (strcmp(h.t, "preload") == 0 || strcmp(h.t, "unload") == 0) {
        worker_on_model_op(w, out.call, &r->doc, &h);
        worker_req_free(r);
        return;
    }
    if (strcmp(h.t, "exit") == 0) {
        worker_on_exit(w, out.call, &r->doc, &h);
        worker_req_free(r);
        return;
    }
    if (strcmp(h.t, WIRE_T_BUNDLE) == 0) {
        worker_on_bundle(w, out.call, &r->doc, &h);
        worker_req_free(r); /* the zone only: the parts point into the message */
        return;
    }
    if (strcmp(h.t, WIRE_T_INVOKE) != 0) {
        worker_req_free(r);
        snprintf(err.msg, sizeof err.msg,
                 "unknown message type '%s' (a worker answers invoke, bundle, status, preload, unload and "
                 "exit)",
                 h.t);
        worker_out_fail(w, out, h.id, AICFN_E_PROTOCOL, err.msg);
        return;
    }
    rc = wire_decode_invoke_req(&r->doc, &r->req, &err);
    if (rc != AICFN_OK) {
        worker_req_free(r);
        worker_out_fail(w, out, h.id, rc, err.msg);
        return;
    }
    r->w = w;
    r->out = out;
    r->id = r->req.id;
    r->note_id = r->req.gid ? r->req.gid : r->req.id;
    r->received_us = out.bundle ? worker_bundle_received_us(out.bundle) : rpc_call_received_us(out.call);
    snprintf(r->id_str, sizeof r->id_str, "%" PRIu64, r->id);
    r->areq.id = r->id_str;

    /* Count it in flight now, unless draining; from here on worker_finish replies. */
    pthread_mutex_lock(&w->mu);
    int draining = w->draining;
    if (!draining) w->inflight++;
    worker_fn *fn = draining ? NULL : worker_find_fn_locked(w, r->req.fn, r->req.ver);
    if (fn) {
        /* Counted under the lock: a function being removed waits for these. */
        atomic_fetch_add(&fn->inflight, 1);
        atomic_store(&fn->last_call_us, r->received_us);
        r->fn = fn;
    }
    bool removing = !fn && !draining && worker_removing_locked(w, r->req.fn, r->req.ver);
    pthread_mutex_unlock(&w->mu);
    atomic_fetch_add(&w->n_invocations, 1);
    if (draining) {
        uint64_t id = r->id;
        worker_req_free(r);
        worker_out_refuse(w, out, id, "the worker is draining (shutting down); call another");
        return;
    }
    if (fn == NULL && r->req.has_spec) {
        if ((w->fetcher || removing || out.one_reader) && !w->refuse_specs) {
            /* Off this NNG callback thread: the handler's download, or the end of the
             * function's previous instance (its fini), may take a while; and off a link's
             * one reader for any registration (dlopen, the handler's init). */
            /* One registration at a time per function when it waits for nothing. */
            worker_park(r, !w->fetcher && !removing);
            return;
        }
        rc = worker_add_from_spec(w, &r->req, r->req.spec.handler, &err);
        if (rc != AICFN_OK) {
            worker_finish_spec_failed(r, rc, err.msg);
            return;
        }
    }
    worker_dispatch(r);
}

/* {t:"bundle", id, calls:[bin...]}: each part accepted as an invocation of its own,
 * answered together (bundle.h). The parts point into the request, which the bundle
 * keeps until every part is done, and the hold taken by worker_bundle_new keeps it from
 * being answered before the last part was accepted. Only parts of functions known to be
 * quick run on this thread (worker_dispatch), and a part still running past its deadline
 * is answered as an overrun, so the others' replies leave. */
static void worker_on_bundle(worker *w, rpc_call *call, const wire_doc *doc, const wire_header *h) {
    aicfn_error err;
    aicfn_error_clear(&err);
    wire_part parts[AICFN_BUNDLE_MAX_CALLS];
    uint32_t n = 0;
    int rc = wire_decode_bundle(doc, "calls", parts, AICFN_BUNDLE_MAX_CALLS, &n, &err);
    if (rc != AICFN_OK) {
        worker_reply_fail(w, call, h->id, rc, err.msg);
        return;
    }
    worker_bundle *b = worker_bundle_new(w->bundle_watch, call, h->id, n);
    if (b == NULL) {
        worker_reply_fail(w, call, h->id, AICFN_E_NOMEM, "bundle: out of memory");
        return;
    }
    uint64_t objects_left = AICFN_MAX_MESSAGE_OBJECTS;
    for (uint32_t i = 0; i < n; i++)
        worker_accept(w, (worker_out){.bundle = b, .slot = i, .one_reader = rpc_call_one_reader(call)},
                      parts[i].data, parts[i].len, &objects_left);
    worker_bundle_release(b);
}

static void worker_on_call(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    worker_accept(user, (worker_out){.call = call, .one_reader = rpc_call_one_reader(call)}, msg, len, NULL);
}

/* The rest of an accepted invocation: find its function (once more, when a spec may
 * just have added it), build the handler's view, queue it in the batcher. Runs on the
 * NNG callback thread, or on the parked call's thread. */
static void worker_dispatch(worker_req *r) {
    worker *w = r->w;
    aicfn_error err;
    aicfn_error_clear(&err);
    int rc;
    worker_fn *fn = r->fn;
    if (fn == NULL) {
        pthread_mutex_lock(&w->mu);
        fn = worker_find_fn_locked(w, r->req.fn, r->req.ver);
        if (fn) {
            atomic_fetch_add(&fn->inflight, 1);
            r->fn = fn;
        }
        pthread_mutex_unlock(&w->mu);
    }
    if (fn == NULL) {
        if (r->req.ver)
            snprintf(err.msg, sizeof err.msg, "unknown function '%s' version %u on this worker", r->req.fn,
                     r->req.ver);
        else
            snprintf(err.msg, sizeof err.msg, "unknown function '%s' on this worker", r->req.fn);
        worker_finish(r, AICFN_E_NOT_FOUND, err.msg, NULL);
        return;
    }
    r->resp = worker_response_create(AICFN_MAX_MESSAGE_BYTES - (1u << 16));
    if (r->resp == NULL) {
        worker_finish(r, AICFN_E_NOMEM, "out of memory", NULL);
        return;
    }
    if ((rc = worker_build_inputs(r, &err)) != AICFN_OK || (rc = worker_decode_params(r, &err)) != AICFN_OK) {
        worker_finish(r, rc, err.msg, NULL);
        return;
    }
    /* A caller's deadline only shortens the function's timeout (as at the gateway): a
     * peer talking to the worker directly cannot make a call outlive the drain bound. */
    uint64_t budget = fn->timeout_us;
    if (r->req.deadline_ms && (uint64_t)r->req.deadline_ms * 1000 < budget)
        budget = (uint64_t)r->req.deadline_ms * 1000;
    r->item.arrival_us = r->received_us;
    r->item.deadline_us = r->received_us + budget;
    /* Run on this thread (an NNG callback's, for a function whose batches may run inline)
     * only by a function known to be quick: a slow handler would hold one of NNG's few
     * callback threads, and with them the worker's status answers, and in a bundle the
     * others' acceptance and the reply (NNG sends it once this callback returns); on its
     * function's executor the watch can answer a stuck part as an overrun. On a link's
     * reader too: a quick function's slow call holds up the requests behind it for 2 ms,
     * until the link's standby takes the reading over (rpc_link_ops.takeover_ms). */
    uint64_t avg = atomic_load(&fn->exec_ewma_us);
    r->item.no_inline = avg == 0 || avg > AICFN_INLINE_MAX_US;
    /* Stuck is past the function's timeout, not the caller's deadline: a handler that
     * started in time cannot be cut short, and a caller's short deadline must not make a
     * healthy call count as stuck (its worker killed, at the gateway). */
    if (r->out.bundle)
        worker_bundle_expire_at(r->out.bundle, r->out.slot, r->id,
                                r->received_us + fn->timeout_us + (uint64_t)w->overrun_grace_ms * 1000);
    rc = worker_batcher_submit(fn->batcher, &r->item, &err);
    if (rc != AICFN_OK) worker_finish(r, rc, err.msg, NULL);
}

/* ---- lifecycle ---- */

/* The model cache's resolve hook of a remote worker (loader_resolve_fn): a snapshot
 * named WORKER_ARTIFACT_PREFIX + hash is fetched from the gateway into the cache dir;
 * any other path (a --function snapshot) is a local file, used as it is. */
static int worker_resolve(void *arg, const char *path, char *local, size_t cap, aicfn_error *err) {
    worker *w = arg;
    size_t n = strlen(WORKER_ARTIFACT_PREFIX);
    if (strncmp(path, WORKER_ARTIFACT_PREFIX, n) == 0)
        return worker_fetch(w->fetcher, path + n, local, cap, err);
    if ((size_t)snprintf(local, cap, "%s", path) >= cap)
        return aicfn_error_set(err, AICFN_E_INVALID, "snapshot path %.200s is too long", path);
    return AICFN_OK;
}

int worker_create(const worker_config *cfg, worker **out, aicfn_error *err) {
    *out = NULL;
    if (cfg == NULL || cfg->listen == NULL || cfg->listen[0] == '\0')
        return aicfn_error_set(err, AICFN_E_INVALID, "worker: --listen ADDR is required");
    int rc = rpc_check_url(cfg->listen, err);
    if (rc != AICFN_OK) return rc;
    worker *w = calloc(1, sizeof *w);
    if (w == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "worker: out of memory");
    pthread_mutex_init(&w->mu, NULL);
    clock_cond_init(&w->cv);
    w->started_us = clock_now_us();
    /* Load seqs count up from the start's wall time: a worker restarted under the same
     * name and address numbers its loads past those of the process before it. */
    w->last_load_seq = clock_wall_us();
    w->refuse_specs = cfg->refuse_specs;
    w->overrun_grace_ms = cfg->overrun_grace_ms ? cfg->overrun_grace_ms : AICFN_CALL_GRACE_MS;
    w->fn_idle_retire_us =
        (uint64_t)(cfg->fn_idle_retire_ms ? cfg->fn_idle_retire_ms : AICFN_WORKER_FN_IDLE_RETIRE_MS) * 1000;
    w->listen = strdup(cfg->listen);
    w->link_fd = cfg->link_fd > 0 ? cfg->link_fd : -1;
    w->device_spec = strdup(cfg->device && cfg->device[0] ? cfg->device : "auto");
    if (cfg->exit_token && cfg->exit_token[0] &&
        (strlen(cfg->exit_token) > AICFN_WORKER_EXIT_TOKEN_MAX ||
         !(w->exit_token = strdup(cfg->exit_token)))) {
        worker_destroy(w);
        return aicfn_error_set(err, AICFN_E_INVALID, "worker: exit token too long or out of memory");
    }
    if (cfg->id && cfg->id[0])
        snprintf(w->id, sizeof w->id, "%s", cfg->id);
    else
        snprintf(w->id, sizeof w->id, "w%d", (int)getpid());
    if (w->listen == NULL || w->device_spec == NULL) {
        worker_destroy(w);
        return aicfn_error_set(err, AICFN_E_NOMEM, "worker: out of memory");
    }
    rc = worker_bundle_watch_create(&w->bundle_watch, err);
    if (rc != AICFN_OK) {
        worker_destroy(w);
        return rc;
    }
    rc = loader_device_open(w->device_spec, cfg->memory_bytes, &w->dev, err);
    if (rc != AICFN_OK) {
        worker_destroy(w);
        return aicfn_error_wrap(err, "worker: device '%s'", cfg->device ? cfg->device : "auto");
    }
    uint64_t budget = cfg->memory_bytes;
    if (budget == 0) {
        uint64_t free_b = 0, total_b = 0;
        if (loader_device_mem_info(w->dev, &free_b, &total_b, NULL) == AICFN_OK && free_b > 0)
            budget = loader_device_is_host(w->dev) ? free_b : free_b / 10 * 9;
        if (budget == 0) budget = AICFN_DEFAULT_HOST_BUDGET;
    }
    w->memory_bytes = budget;
    w->ops_arg = (worker_model_ops_arg){.device = w->dev, .load_threads = cfg->load_threads};
    if (cfg->fetcher) {
        w->ops_arg.resolve = worker_resolve;
        w->ops_arg.resolve_arg = w;
    }
    loader_cache_config cc = {
        .budget_bytes = budget, .ops = &worker_model_ops, .ops_arg = &w->ops_arg, .policy = NULL};
    rc = loader_cache_create(&cc, &w->cache, err);
    if (rc != AICFN_OK) {
        worker_destroy(w);
        return aicfn_error_wrap(err, "worker: model cache");
    }
    char size[32];
    log_info("worker %s: device %s, model budget %s", w->id, loader_device_name(w->dev),
             units_format_size(budget, size, sizeof size));
    /* Last: a failed create's worker_destroy must not cancel the caller's fetcher. */
    w->fetcher = cfg->fetcher;
    *out = w;
    return AICFN_OK;
}

int worker_start(worker *w, aicfn_error *err) {
    /* keep_peers: the gateway's link to a local worker is single-peer (never redialed). */
    rpc_server_opts so = {.recv_max = AICFN_MAX_MESSAGE_BYTES,
                          .contexts = AICFN_NNG_CONTEXTS,
                          .keep_peers = true,
                          .reply_timeout_ms = AICFN_WORKER_REPLY_TIMEOUT_MS};
    int rc = rpc_server_start(&w->srv, w->listen, &so, worker_on_call, w, err);
    if (rc != AICFN_OK) return aicfn_error_wrap(err, "worker: listening on %s", w->listen);
    log_info("worker %s: listening on %s", w->id, rpc_server_url(w->srv));
    if (w->link_fd >= 0) {
        int fd = w->link_fd;
        w->link_fd = -1; /* rpc_server_start_link takes it, failing or not */
        so.reply_timeout_ms = 0;
        rc = rpc_server_start_link(&w->link_srv, fd, &so, worker_on_call, w, err);
        if (rc != AICFN_OK) return aicfn_error_wrap(err, "worker: serving its gateway's link");
        log_info("worker %s: serving its gateway's link (%s)", w->id, rpc_server_url(w->link_srv));
    }
    return AICFN_OK;
}

const char *worker_url(const worker *w) {
    return w->srv ? rpc_server_url(w->srv) : NULL;
}

unsigned worker_drain(worker *w, uint32_t max_wait_ms) {
    pthread_mutex_lock(&w->mu);
    w->draining = 1;
    log_info("worker %s: draining, %u calls in flight", w->id, w->inflight);
    if (max_wait_ms == 0) {
        /* Every call ends by its deadline: the longest timeout plus a grace period. */
        uint64_t longest = w->max_timeout_us ? w->max_timeout_us : (uint64_t)AICFN_DEFAULT_TIMEOUT_MS * 1000;
        max_wait_ms = (uint32_t)(longest / 1000) + AICFN_CALL_GRACE_MS;
    }
    uint64_t until = clock_now_us() + (uint64_t)max_wait_ms * 1000;
    while (w->inflight > 0) {
        if (clock_now_us() >= until) break;
        struct timespec ts;
        clock_deadline_to_timespec(until, &ts);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    /* Loads no reply carried (their calls gave up) are reported by the next status
     * reply and acknowledged by the one after; a gateway asks every AICFN_WORKER_POLL_MS:
     * wait a little for that, or their cold starts leave with this process. */
    uint64_t report_until = clock_now_us() + 3ull * AICFN_WORKER_POLL_MS * 1000;
    if (report_until > until) report_until = until;
    while (w->inflight == 0 && w->n_unreported > 0 && clock_now_us() < report_until) {
        struct timespec ts;
        clock_deadline_to_timespec(report_until, &ts);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    if (w->n_unreported)
        log_warn("worker %s: exiting with %u load(s) no status reply reported", w->id, w->n_unreported);
    unsigned left = w->inflight;
    pthread_mutex_unlock(&w->mu);
    return left;
}

void worker_destroy(worker *w) {
    if (w == NULL) return;
    pthread_mutex_lock(&w->mu);
    w->draining = 1;
    pthread_mutex_unlock(&w->mu);
    /* Downloads end first (the drain, which let calls finish, is over): a handler's or a
     * preload's may otherwise run for minutes, and the server below waits for the preload's
     * answer, which comes when its download fails. A call still waiting for one is
     * answered with the cancellation. */
    if (w->fetcher) worker_fetcher_cancel(w->fetcher);
    /* Then the network: it waits until every call was answered (the batchers are still
     * running, so queued calls complete or expire) and every callback returned. */
    rpc_server_destroy(w->link_srv);
    w->link_srv = NULL;
    rpc_server_destroy(w->srv);
    w->srv = NULL;
    if (w->link_fd >= 0) close(w->link_fd); /* never started */
    /* Every call was answered; a parked call's thread may still be on its way out, and
     * a model wait whose calls are gone may still be loading. */
    pthread_mutex_lock(&w->mu);
    while (w->parked > 0 || w->loaders > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    /* A bundle part the watch already answered as overrun may still be running: its
     * reply builds a summary that walks w->fns. Take the list away first (under the lock
     * the summary walks it with), then free each function, which joins its executor. */
    worker_fn *f = w->fns, *retired = w->retired;
    w->fns = w->retired = NULL;
    w->n_fns = 0;
    pthread_mutex_unlock(&w->mu);
    while (f) {
        worker_fn *next = f->next;
        worker_fn_free(f); /* joins the batcher, then fini */
        f = next;
    }
    f = retired;
    while (f) {
        worker_fn *next = f->next;
        worker_fn_free(f);
        f = next;
    }
    /* Only now can no thread send a bundle (bundle_send unlinks it from the watch after
     * its reply, which is what let rpc_server_destroy return). */
    worker_bundle_watch_destroy(w->bundle_watch);
    w->bundle_watch = NULL;
    loader_cache_destroy(w->cache); /* frees the device memory of every resident model */
    loader_device_close(w->dev);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w->exit_token);
    free(w->listen);
    free(w->device_spec);
    free(w);
}
