/* bundle.c: collecting a bundle's replies and sending them as one (see bundle.h).
 * The reply must fit the gateway's receive limit (AICFN_MAX_MESSAGE_BYTES): a slot whose
 * reply would overflow it, with room kept for the slots after it, is answered with
 * AICFN_E_TOO_LARGE instead, so every slot is answered (the gateway only bundles
 * functions whose replies are small, so this is a safety net, not a path). That check
 * runs as each reply is put, on the slots filled so far: a reply it refuses would be
 * refused at the send too (the slots before it only grow), and it is freed at once, so
 * a bundle holds at most one message's worth of replies, not one per slot. */
#include "worker/bundle.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/tunables.h"
#include "common/wire.h"

struct worker_bundle {
    rpc_call *call;
    rpc_msg *request; /* the bundle's message, which the parts point into: freed last */
    uint64_t id;
    uint32_t n;
    worker_bundle_watch *watch;
    atomic_uint left;   /* unfilled slots, plus one while the creator holds it */
    atomic_uint refs;   /* one per slot's put, one for the send, one while in the watch's list */
    pthread_mutex_t mu; /* the slots' replies and lens, from the first put to the send */
    atomic_bool *filled;
    uint8_t **replies;
    size_t *lens;
    /* Under watch->mu: */
    uint64_t *expire_us; /* 0: not watched */
    uint64_t *call_ids;
    bool linked;
    struct worker_bundle *wnext;
};

struct worker_bundle_watch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    worker_bundle *head; /* bundles with a watched slot, until sent */
    uint64_t next_us;    /* the expiry the thread sleeps towards; 0: none (waits for a signal) */
    bool stop;
    pthread_t thread;
};

static void bundle_unref(worker_bundle *b) {
    if (atomic_fetch_sub(&b->refs, 1) != 1) return;
    rpc_msg_free(b->request);
    pthread_mutex_destroy(&b->mu);
    free(b->filled);
    free(b->replies);
    free(b->lens);
    free(b->expire_us);
    free(b->call_ids);
    free(b);
}

worker_bundle *worker_bundle_new(worker_bundle_watch *watch, rpc_call *call, uint64_t id, uint32_t n) {
    if (n == 0 || n > AICFN_BUNDLE_MAX_CALLS) return NULL;
    worker_bundle *b = calloc(1, sizeof *b);
    if (b == NULL) return NULL;
    pthread_mutex_init(&b->mu, NULL);
    b->filled = calloc(n, sizeof *b->filled);
    b->replies = calloc(n, sizeof *b->replies);
    b->lens = calloc(n, sizeof *b->lens);
    b->expire_us = calloc(n, sizeof *b->expire_us);
    b->call_ids = calloc(n, sizeof *b->call_ids);
    if (!b->filled || !b->replies || !b->lens || !b->expire_us || !b->call_ids) {
        atomic_init(&b->refs, 1);
        bundle_unref(b);
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++)
        atomic_init(&b->filled[i], false);
    b->watch = watch;
    b->call = call;
    b->request = rpc_call_take_request(call);
    b->id = id;
    b->n = n;
    atomic_init(&b->left, n + 1);
    atomic_init(&b->refs, n + 1);
    return b;
}

uint64_t worker_bundle_received_us(const worker_bundle *b) {
    return rpc_call_received_us(b->call);
}

/* The most bytes bundle_error_reply makes (its message is at most 160 bytes): room kept
 * for each slot not yet placed, so replacing one never overflows the message. */
#define BUNDLE_ERROR_REPLY_MAX 512

/* An error reply for a slot, malloc'd (NULL when even that cannot be encoded). */
static uint8_t *bundle_error_reply(uint64_t id, int code, const char *msg, size_t *len) {
    wire_writer wr;
    wire_writer_init(&wr);
    uint8_t *p = NULL;
    if (wire_encode_error_reply(&wr, id, code, msg, NULL) == AICFN_OK) p = wire_writer_take(&wr, len);
    wire_writer_fini(&wr);
    return p;
}

/* The bundle's reply, less its envelope: what its slots' replies may take. */
#define BUNDLE_REPLY_ROOM (AICFN_MAX_MESSAGE_BYTES - 4096)

/* Replaces `reply` (freed) with the AICFN_E_TOO_LARGE error reply of its request;
 * *len: in, the reply's length; out, the error reply's (NULL when out of memory). */
static uint8_t *bundle_refuse_reply(uint8_t *reply, size_t *len) {
    uint64_t id = wire_peek_id(reply, *len);
    char msg[160];
    snprintf(msg, sizeof msg, "the reply (%zu bytes) does not fit in its bundle's message; call again", *len);
    free(reply);
    return bundle_error_reply(id, AICFN_E_TOO_LARGE, msg, len);
}

/* Refuses each reply that does not fit after the replies of the slots before it, with
 * room kept for the slots after it to be answered, at worst with an error reply each
 * (slots not yet filled count as empty: they only add to the slots after them). */
static void bundle_refuse_overflow_locked(worker_bundle *b) {
    size_t total = 64; /* the bundle reply's envelope */
    for (uint32_t i = 0; i < b->n; i++) {
        if (!b->replies[i]) continue;
        size_t rest = (size_t)(b->n - i - 1) * (BUNDLE_ERROR_REPLY_MAX + 8);
        if (total + b->lens[i] + 8 + rest > BUNDLE_REPLY_ROOM)
            b->replies[i] = bundle_refuse_reply(b->replies[i], &b->lens[i]);
        total += b->lens[i] + 8;
    }
}

static void bundle_send(worker_bundle *b) {
    wire_part *parts = calloc(b->n, sizeof *parts);
    int ok = parts != NULL;
    /* Every slot is filled (no put runs now). A slot whose reply could not be encoded
     * gets an error reply, which the check then counts like the others. */
    pthread_mutex_lock(&b->mu);
    for (uint32_t i = 0; i < b->n; i++)
        if (b->replies[i] == NULL)
            b->replies[i] =
                bundle_error_reply(0, AICFN_E_NOMEM, "out of memory encoding the reply", &b->lens[i]);
    bundle_refuse_overflow_locked(b);
    pthread_mutex_unlock(&b->mu);
    for (uint32_t i = 0; ok && i < b->n; i++) {
        if (b->replies[i] == NULL) ok = 0;
        if (ok) parts[i] = (wire_part){b->replies[i], b->lens[i]};
    }
    wire_writer wr;
    wire_writer_init(&wr);
    aicfn_error err;
    size_t len = 0;
    uint8_t *data = NULL;
    if (ok && wire_encode_bundle_reply(&wr, b->id, parts, b->n, &err) == AICFN_OK)
        data = wire_writer_take(&wr, &len);
    wire_writer_fini(&wr);
    if (data) {
        rpc_reply(b->call, data, len);
        free(data);
    } else {
        log_error(
            "bundle %llu: its reply could not be encoded (out of memory): dropped; the gateway times out",
            (unsigned long long)b->id);
        rpc_call_drop(b->call);
    }
    for (uint32_t i = 0; i < b->n; i++) {
        free(b->replies[i]);
        b->replies[i] = NULL;
    }
    free(parts);
    if (b->watch) {
        worker_bundle_watch *w = b->watch;
        pthread_mutex_lock(&w->mu);
        bool linked = b->linked;
        if (linked) {
            worker_bundle **pp = &w->head;
            while (*pp != b)
                pp = &(*pp)->wnext;
            *pp = b->wnext;
            b->linked = false;
        }
        pthread_mutex_unlock(&w->mu);
        if (linked) bundle_unref(b);
    }
    bundle_unref(b); /* the send's */
}

/* Fills slot `slot` unless it is filled already (then reply is dropped); refuses what
 * no longer fits now rather than at the send; sends the bundle when it was the last. */
static void bundle_fill(worker_bundle *b, uint32_t slot, uint8_t *reply, size_t len) {
    if (atomic_exchange(&b->filled[slot], true)) {
        free(reply);
        return;
    }
    pthread_mutex_lock(&b->mu);
    b->replies[slot] = reply;
    b->lens[slot] = reply ? len : 0;
    bundle_refuse_overflow_locked(b);
    pthread_mutex_unlock(&b->mu);
    if (atomic_fetch_sub(&b->left, 1) == 1) bundle_send(b);
}

void worker_bundle_put(worker_bundle *b, uint32_t slot, uint8_t *reply, size_t len) {
    bundle_fill(b, slot, reply, len);
    bundle_unref(b); /* the slot's */
}

void worker_bundle_release(worker_bundle *b) {
    if (atomic_fetch_sub(&b->left, 1) == 1) bundle_send(b);
}

/* ---- The watch ---- */

void worker_bundle_expire_at(worker_bundle *b, uint32_t slot, uint64_t call_id, uint64_t expire_us) {
    worker_bundle_watch *w = b->watch;
    if (w == NULL || slot >= b->n || expire_us == 0) return;
    pthread_mutex_lock(&w->mu);
    b->expire_us[slot] = expire_us;
    b->call_ids[slot] = call_id;
    if (!b->linked) {
        atomic_fetch_add(&b->refs, 1);
        b->linked = true;
        b->wnext = w->head;
        w->head = b;
    }
    /* Woken only for an expiry earlier than the one it sleeps towards. */
    if (w->next_us == 0 || expire_us < w->next_us) pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

#define BUNDLE_WATCH_BATCH 64 /* overruns answered per pass */

static void *bundle_watch_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:bundlewatch");
    worker_bundle_watch *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        uint64_t now = clock_now_us(), next = 0;
        worker_bundle *due_b[BUNDLE_WATCH_BATCH];
        uint32_t due_slot[BUNDLE_WATCH_BATCH];
        uint64_t due_id[BUNDLE_WATCH_BATCH];
        uint32_t n_due = 0;
        for (worker_bundle *b = w->head; b; b = b->wnext)
            for (uint32_t i = 0; i < b->n; i++) {
                uint64_t t = b->expire_us[i];
                if (t == 0 || atomic_load(&b->filled[i])) continue;
                if (t <= now && n_due < BUNDLE_WATCH_BATCH) {
                    atomic_fetch_add(&b->refs, 1);
                    b->expire_us[i] = 0; /* answered now */
                    due_b[n_due] = b;
                    due_slot[n_due] = i;
                    due_id[n_due++] = b->call_ids[i];
                } else if (t > now && (next == 0 || t < next)) {
                    next = t;
                }
            }
        if (n_due) {
            pthread_mutex_unlock(&w->mu);
            for (uint32_t k = 0; k < n_due; k++) {
                log_warn("bundle %llu: call %llu still runs past its deadline: answered as overrun so the "
                         "others' replies leave",
                         (unsigned long long)due_b[k]->id, (unsigned long long)due_id[k]);
                size_t len = 0;
                wire_writer wr;
                wire_writer_init(&wr);
                uint8_t *p = NULL;
                if (wire_encode_marked_error_reply(
                        &wr, due_id[k], AICFN_E_TIMEOUT,
                        "still running past its deadline (a bundle's other replies "
                        "left without it)",
                        WIRE_MARK_OVERRAN, NULL) == AICFN_OK)
                    p = wire_writer_take(&wr, &len);
                wire_writer_fini(&wr);
                bundle_fill(due_b[k], due_slot[k], p, len);
                bundle_unref(due_b[k]);
            }
            pthread_mutex_lock(&w->mu);
            continue;
        }
        w->next_us = next;
        if (next == 0) {
            pthread_cond_wait(&w->cv, &w->mu);
        } else {
            struct timespec ts;
            clock_deadline_to_timespec(next, &ts);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int worker_bundle_watch_create(worker_bundle_watch **out, aicfn_error *err) {
    *out = NULL;
    worker_bundle_watch *w = calloc(1, sizeof *w);
    if (w == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "bundle watch: out of memory");
    pthread_mutex_init(&w->mu, NULL);
    clock_cond_init(&w->cv);
    if (pthread_create(&w->thread, NULL, bundle_watch_main, w) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return aicfn_error_set(err, AICFN_E_NOMEM, "bundle watch: cannot start a thread");
    }
    *out = w;
    return AICFN_OK;
}

void worker_bundle_watch_destroy(worker_bundle_watch *w) {
    if (w == NULL) return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
