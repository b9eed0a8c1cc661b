/* bundle.c: collecting a bundle's replies and sending them as one (see bundle.h).
 * The reply must fit the gateway's receive limit (AICFN_MAX_MESSAGE_BYTES): a slot whose
 * reply would overflow it, with room kept for the slots after it, is answered with
 * AICFN_E_TOO_LARGE instead, so every slot is answered (the gateway only bundles
 * functions whose replies are small, so this is a safety net, not a path). */
#include "worker/bundle.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "common/tunables.h"
#include "common/wire.h"

struct worker_bundle {
    rpc_call *call;
    uint64_t id;
    uint32_t n;
    atomic_uint left; /* unfilled slots, plus one while the creator holds it */
    uint8_t **replies;
    size_t *lens;
};

worker_bundle *worker_bundle_new(rpc_call *call, uint64_t id, uint32_t n) {
    if (n == 0 || n > AICFN_BUNDLE_MAX_CALLS) return NULL;
    worker_bundle *b = calloc(1, sizeof *b);
    if (b == NULL) return NULL;
    b->replies = calloc(n, sizeof *b->replies);
    b->lens = calloc(n, sizeof *b->lens);
    if (b->replies == NULL || b->lens == NULL) {
        free(b->replies);
        free(b->lens);
        free(b);
        return NULL;
    }
    b->call = call;
    b->id = id;
    b->n = n;
    atomic_init(&b->left, n + 1);
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

static void bundle_send(worker_bundle *b) {
    wire_part *parts = calloc(b->n, sizeof *parts);
    size_t total = 64;
    const size_t limit = AICFN_MAX_MESSAGE_BYTES - 4096;
    int ok = parts != NULL;
    for (uint32_t i = 0; ok && i < b->n; i++) {
        /* A reply fits if the slots after it can still be answered, at worst with an
         * error reply each; otherwise it becomes one itself. */
        size_t rest = (size_t)(b->n - i - 1) * (BUNDLE_ERROR_REPLY_MAX + 8);
        if (b->replies[i] && total + b->lens[i] + 8 + rest > limit) {
            uint64_t id = wire_peek_id(b->replies[i], b->lens[i]);
            char msg[160];
            snprintf(msg, sizeof msg,
                     "the reply (%zu bytes) does not fit in its bundle's message; call again", b->lens[i]);
            free(b->replies[i]);
            b->replies[i] = bundle_error_reply(id, AICFN_E_TOO_LARGE, msg, &b->lens[i]);
        }
        if (b->replies[i] == NULL)
            b->replies[i] =
                bundle_error_reply(0, AICFN_E_NOMEM, "out of memory encoding the reply", &b->lens[i]);
        if (b->replies[i] == NULL) ok = 0;
        if (ok) {
            parts[i] = (wire_part){b->replies[i], b->lens[i]};
            total += b->lens[i] + 8;
        }
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
    for (uint32_t i = 0; i < b->n; i++)
        free(b->replies[i]);
    free(parts);
    free(b->replies);
    free(b->lens);
    free(b);
}

void worker_bundle_put(worker_bundle *b, uint32_t slot, uint8_t *reply, size_t len) {
    b->replies[slot] = reply;
    b->lens[slot] = reply ? len : 0;
    if (atomic_fetch_sub(&b->left, 1) == 1) bundle_send(b);
}

void worker_bundle_release(worker_bundle *b) {
    if (atomic_fetch_sub(&b->left, 1) == 1) bundle_send(b);
}
