/* batcher.c: the per-function queue, batch formation (max_batch / max_delay_us since
 * the oldest request), deadline expiry, and the executor thread. See batcher.h.
 * Not for: what a batch does (the exec callback decides). */
#include "worker/batcher.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/tunables.h"

struct worker_batcher {
    worker_batcher_config cfg;
    char name[64];
    worker_batch_exec_fn exec;
    worker_batch_expire_fn expire;
    void *ctx;

    pthread_mutex_t mu;
    pthread_cond_t cond_exec; /* the executor waits here: items, their delay, closing */
    pthread_cond_t cond_reap; /* the reaper waits here: busy, deadlines, stop */
    worker_batch_item *head, *tail;
    uint32_t count;
    int busy; /* a batch is running */
    /* While a batch runs, the queued deadline the reaper sleeps towards (UINT64_MAX: none
     * queued); 0 while it is not watching. A submit wakes it only for an earlier one. */
    uint64_t reap_until;
    int closing;
    int flushing; /* queued items go at once, without waiting for max_delay_us */
    int stop;     /* the executor has exited; the reaper follows */
    worker_batcher_stats stats;
    worker_batch_item **batch; /* max_batch slots, used by the executor only */

    pthread_t exec_thread, reap_thread;
    int exec_started, reap_started;
};

/* Unlinks every queued item whose deadline is <= now into a list; returns its head. */
static worker_batch_item *batcher_take_expired(worker_batcher *b, uint64_t now) {
    worker_batch_item *expired = NULL, **etail = &expired;
    worker_batch_item **pp = &b->head, *prev = NULL;
    while (*pp) {
        worker_batch_item *it = *pp;
        if (it->deadline_us != 0 && it->deadline_us <= now) {
            *pp = it->next;
            if (b->tail == it) b->tail = prev;
            it->next = NULL;
            it->dequeued_us = now;
            *etail = it;
            etail = &it->next;
            b->count--;
            b->stats.expired++;
        } else {
            prev = it;
            pp = &it->next;
        }
    }
    return expired;
}

/* Earliest deadline among queued items, 0 when none has one. */
static uint64_t batcher_earliest_deadline(const worker_batcher *b) {
    uint64_t best = 0;
    for (const worker_batch_item *it = b->head; it; it = it->next)
        if (it->deadline_us != 0 && (best == 0 || it->deadline_us < best)) best = it->deadline_us;
    return best;
}

/* When the queued batch must leave: max_delay_us after the oldest item arrived, but no
 * later than halfway through any item's time between its arrival and its deadline (the
 * wait for company may take half of what a request has left, never all of it: a lone
 * request is sent, not expired, when max_delay_us is longer than its deadline allows). */
static uint64_t batcher_send_at(const worker_batcher *b) {
    uint64_t at = b->head->arrival_us + b->cfg.max_delay_us;
    for (const worker_batch_item *it = b->head; it; it = it->next)
        if (it->deadline_us != 0) {
            uint64_t half = it->deadline_us > it->arrival_us ? (it->deadline_us - it->arrival_us) / 2 : 0;
            if (it->arrival_us + half < at) at = it->arrival_us + half;
        }
    return at;
}

/* Calls expire on each item of the list with the lock released; returns with it held. */
static void batcher_run_expired(worker_batcher *b, worker_batch_item *list) {
    pthread_mutex_unlock(&b->mu);
    while (list) {
        worker_batch_item *next = list->next;
        list->next = NULL;
        b->expire(b->ctx, list);
        list = next;
    }
    pthread_mutex_lock(&b->mu);
}

static void batcher_wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, uint64_t wake_us) {
    if (wake_us == 0) {
        pthread_cond_wait(cond, mu);
        return;
    }
    struct timespec ts;
    clock_deadline_to_timespec(wake_us, &ts);
    pthread_cond_timedwait(cond, mu, &ts);
}

static void *batcher_exec_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:batch");
    worker_batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        uint64_t now = clock_now_us();
        worker_batch_item *expired = batcher_take_expired(b, now);
        if (expired) {
            batcher_run_expired(b, expired);
            continue;
        }
        if (b->busy) { /* a batch runs inline on a submitting thread */
            batcher_wait_until(&b->cond_exec, &b->mu, 0);
            continue;
        }
        if (b->count == 0) {
            if (b->closing) break;
            batcher_wait_until(&b->cond_exec, &b->mu, 0);
            continue;
        }
        uint64_t send_at = batcher_send_at(b);
        if (b->count < b->cfg.max_batch && !b->closing && !b->flushing && now < send_at) {
            batcher_wait_until(&b->cond_exec, &b->mu, send_at);
            continue;
        }
        uint32_t n = 0;
        while (b->head && n < b->cfg.max_batch) {
            worker_batch_item *it = b->head;
            b->head = it->next;
            it->next = NULL;
            it->dequeued_us = now;
            b->batch[n++] = it;
        }
        if (b->head == NULL) b->tail = NULL;
        b->count -= n;
        b->busy = 1;
        b->stats.running = n;
        pthread_cond_signal(&b->cond_reap);
        pthread_mutex_unlock(&b->mu);
        b->exec(b->ctx, b->batch, n);
        pthread_mutex_lock(&b->mu);
        b->busy = 0;
        b->stats.running = 0;
        b->stats.batches++;
        b->stats.executed += n;
    }
    b->stop = 1;
    pthread_cond_broadcast(&b->cond_reap);
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

static void *batcher_reap_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:deadlines");
    worker_batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    while (!b->stop) {
        if (!b->busy) {
            b->reap_until = 0;
            pthread_cond_wait(&b->cond_reap, &b->mu);
            continue;
        }
        worker_batch_item *expired = batcher_take_expired(b, clock_now_us());
        if (expired) {
            batcher_run_expired(b, expired);
            continue;
        }
        uint64_t dl = batcher_earliest_deadline(b);
        b->reap_until = dl ? dl : UINT64_MAX;
        batcher_wait_until(&b->cond_reap, &b->mu, dl);
    }
    b->reap_until = 0;
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

int worker_batcher_create(const worker_batcher_config *cfg, worker_batch_exec_fn exec,
                          worker_batch_expire_fn expire, void *ctx, worker_batcher **out, aicfn_error *err) {
    *out = NULL;
    if (cfg == NULL || cfg->max_batch == 0 || exec == NULL || expire == NULL)
        return aicfn_error_set(err, AICFN_E_INVALID, "batcher: max_batch must be >= 1 with both callbacks");
    worker_batcher *b = calloc(1, sizeof *b);
    if (b == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "batcher: out of memory");
    b->cfg = *cfg;
    if (b->cfg.max_queue == 0) b->cfg.max_queue = AICFN_DEFAULT_QUEUE_PER_FUNCTION;
    snprintf(b->name, sizeof b->name, "%s", cfg->name ? cfg->name : "?");
    b->cfg.name = b->name;
    b->exec = exec;
    b->expire = expire;
    b->ctx = ctx;
    b->batch = calloc(b->cfg.max_batch, sizeof *b->batch);
    if (b->batch == NULL) {
        free(b);
        return aicfn_error_set(err, AICFN_E_NOMEM, "batcher: out of memory");
    }
    pthread_mutex_init(&b->mu, NULL);
    clock_cond_init(&b->cond_exec);
    clock_cond_init(&b->cond_reap);
    if (pthread_create(&b->exec_thread, NULL, batcher_exec_main, b) != 0) {
        aicfn_error_set(err, AICFN_E_INTERNAL, "batcher %s: cannot start the executor thread", b->name);
        worker_batcher_destroy(b);
        return AICFN_E_INTERNAL;
    }
    b->exec_started = 1;
    if (pthread_create(&b->reap_thread, NULL, batcher_reap_main, b) != 0) {
        aicfn_error_set(err, AICFN_E_INTERNAL, "batcher %s: cannot start the reaper thread", b->name);
        worker_batcher_destroy(b);
        return AICFN_E_INTERNAL;
    }
    b->reap_started = 1;
    *out = b;
    return AICFN_OK;
}

int worker_batcher_submit(worker_batcher *b, worker_batch_item *item, aicfn_error *err) {
    pthread_mutex_lock(&b->mu);
    if (b->closing) {
        pthread_mutex_unlock(&b->mu);
        return aicfn_error_set(err, AICFN_E_UNAVAILABLE, "function %s is shutting down", b->name);
    }
    if (b->count >= b->cfg.max_queue) {
        pthread_mutex_unlock(&b->mu);
        return aicfn_error_set(err, AICFN_E_OVERLOADED, "function %s: queue full (%u requests waiting)",
                               b->name, b->cfg.max_queue);
    }
    item->next = NULL;
    item->dequeued_us = 0;
    if (b->cfg.run_inline && !item->no_inline && b->cfg.max_batch == 1 && b->count == 0 && !b->busy) {
        /* Nothing queued or running: run it here, saving the hand-off to the executor. */
        uint64_t now = clock_now_us();
        item->dequeued_us = now;
        bool expired = item->deadline_us != 0 && item->deadline_us <= now;
        if (expired) {
            b->stats.expired++;
        } else {
            b->busy = 1;
            b->stats.running = 1;
        }
        pthread_mutex_unlock(&b->mu);
        if (expired) {
            b->expire(b->ctx, item);
            return AICFN_OK;
        }
        worker_batch_item *one = item;
        b->exec(b->ctx, &one, 1);
        pthread_mutex_lock(&b->mu);
        b->busy = 0;
        b->stats.running = 0;
        b->stats.batches++;
        b->stats.executed++;
        /* The executor waits while a batch runs inline: wake it only when it has work
         * (items queued meanwhile) or must exit, not after every inline call. */
        if (b->count > 0 || b->closing) pthread_cond_signal(&b->cond_exec);
        pthread_mutex_unlock(&b->mu);
        return AICFN_OK;
    }
    if (b->tail)
        b->tail->next = item;
    else
        b->head = item;
    b->tail = item;
    b->count++;
    /* While a batch runs, whoever runs it takes the queue up when it ends (the executor
     * loops; an inline run signals the executor), so the executor is woken only when
     * idle. The reaper watches deadlines meanwhile: woken only when this one comes
     * before the one it sleeps towards, or when it is not watching yet. Each wake-up
     * saved is a futex call and a context switch per queued request. */
    if (!b->busy)
        pthread_cond_signal(&b->cond_exec);
    else if (item->deadline_us != 0 && (b->reap_until == 0 || item->deadline_us < b->reap_until))
        pthread_cond_signal(&b->cond_reap);
    pthread_mutex_unlock(&b->mu);
    return AICFN_OK;
}

void worker_batcher_flush(worker_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->flushing = 1;
    pthread_cond_broadcast(&b->cond_exec);
    pthread_mutex_unlock(&b->mu);
}

void worker_batcher_close(worker_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->closing = 1;
    pthread_cond_broadcast(&b->cond_exec);
    pthread_mutex_unlock(&b->mu);
}

void worker_batcher_destroy(worker_batcher *b) {
    if (b == NULL) return;
    worker_batcher_close(b);
    if (b->exec_started)
        pthread_join(b->exec_thread, NULL);
    else {
        pthread_mutex_lock(&b->mu);
        b->stop = 1;
        pthread_cond_broadcast(&b->cond_reap);
        pthread_mutex_unlock(&b->mu);
    }
    if (b->reap_started) pthread_join(b->reap_thread, NULL);
    pthread_cond_destroy(&b->cond_exec);
    pthread_cond_destroy(&b->cond_reap);
    pthread_mutex_destroy(&b->mu);
    free(b->batch);
    free(b);
}

void worker_batcher_get_stats(worker_batcher *b, worker_batcher_stats *out) {
    pthread_mutex_lock(&b->mu);
    *out = b->stats;
    out->queued = b->count;
    pthread_mutex_unlock(&b->mu);
}
