/* batcher.h: one function's request queue and its executor. Requests are grouped into
 * batches: a batch leaves when it holds max_batch requests, or when max_delay_us has
 * passed since its OLDEST request arrived, or halfway through any request's time between
 * its arrival and its deadline, whichever comes first. Batches run one at a
 * time on the batcher's own executor thread, or with run_inline on the submitting
 * thread (either way a handler instance is never called concurrently), and a request
 * whose deadline passes while it waits is dropped with the expire callback instead of
 * running.
 *
 * Not for: decoding, models or replies. The caller embeds a worker_batch_item in its
 * own request record and gets it back in the callbacks.
 *
 * Threads: two per batcher. The executor forms batches and runs the exec callback on
 * them; while it is busy with a batch, the reaper expires queued requests at their
 * deadlines, so a long batch (or a cold model load inside one) never delays a timeout
 * reply. The queue keeps filling while a batch runs; the next batch forms when it ends.
 * worker_batcher_submit may be called from any thread. */
#ifndef AICFN_WORKER_BATCHER_H
#define AICFN_WORKER_BATCHER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

/* Embed this in the caller's request record. Fill arrival_us and deadline_us
 * (monotonic µs, clock_now_us; deadline 0 = none) before submitting. */
typedef struct worker_batch_item {
    struct worker_batch_item *next; /* owned by the batcher while queued */
    uint64_t arrival_us;
    uint64_t deadline_us;
    uint64_t dequeued_us; /* set by the batcher when the item leaves the queue */
    bool no_inline;       /* never run on the submitting thread (run_inline): the caller's
                             thread must not wait for it (worker.c: a function not known to
                             be quick) */
} worker_batch_item;

/* Runs one batch of n items (1 <= n <= max_batch) in arrival order, on the executor
 * thread (or inline in worker_batcher_submit, see run_inline). The callee owns the
 * items from then on (it replies and frees them). */
typedef void (*worker_batch_exec_fn)(void *ctx, worker_batch_item **items, uint32_t n);

/* An item whose deadline passed while queued: never executed. Called on one of the
 * batcher's threads without its lock; the callee owns the item. */
typedef void (*worker_batch_expire_fn)(void *ctx, worker_batch_item *item);

typedef struct worker_batcher_config {
    uint32_t max_batch;    /* >= 1 */
    uint64_t max_delay_us; /* 0: send what is there as soon as the executor is free */
    uint32_t max_queue;    /* most queued items; 0 = AICFN_DEFAULT_QUEUE_PER_FUNCTION */
    const char *name;      /* for log lines (copied) */
    /* With max_batch 1: a request submitted while nothing is queued or running runs
     * at once on the submitting thread, inside worker_batcher_submit (one thread
     * hand-off less per call). Still one batch at a time; queued ones go to the
     * executor. Only for exec callbacks that never wait long (no model loads). */
    bool run_inline;
} worker_batcher_config;

typedef struct worker_batcher worker_batcher;

typedef struct worker_batcher_stats {
    uint32_t queued;   /* items waiting now */
    uint32_t running;  /* items in the batch running now */
    uint64_t batches;  /* batches executed */
    uint64_t executed; /* items executed */
    uint64_t expired;  /* items dropped at their deadline */
} worker_batcher_stats;

/* Creates the batcher and starts its two threads. Returns AICFN_OK, AICFN_E_INVALID
 * (max_batch 0, no exec/expire), or AICFN_E_NOMEM / AICFN_E_INTERNAL (thread). */
int worker_batcher_create(const worker_batcher_config *cfg, worker_batch_exec_fn exec,
                          worker_batch_expire_fn expire, void *ctx, worker_batcher **out, aicfn_error *err);

/* Queues an item. Returns AICFN_OK (the batcher owns it until a callback hands it
 * back), AICFN_E_OVERLOADED when max_queue items wait, or AICFN_E_UNAVAILABLE after
 * worker_batcher_close; on error the caller still owns the item. Never blocks on a
 * running batch. Thread-safe. */
int worker_batcher_submit(worker_batcher *b, worker_batch_item *item, aicfn_error *err);

/* From now on, queued items run at once, without waiting for max_delay_us (a partial
 * batch is not held for more); items are still accepted. For a function being removed,
 * whose last accepted calls may still arrive. Returns at once; thread-safe; idempotent. */
void worker_batcher_flush(worker_batcher *b);

/* Stops accepting items. Items already queued still run (without waiting for
 * max_delay_us) or expire. Returns at once; thread-safe; idempotent. */
void worker_batcher_close(worker_batcher *b);

/* Closes, waits until every queued item has been executed or expired and the
 * threads have exited, then frees. Blocks. NULL is accepted. Not from a callback. */
void worker_batcher_destroy(worker_batcher *b);

/* A consistent snapshot of the counters. Thread-safe. */
void worker_batcher_get_stats(worker_batcher *b, worker_batcher_stats *out);

#endif
