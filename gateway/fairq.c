/* fairq.c: where an arriving call joins a function's queue, and which queued call gives
 * way to it when the queue is full (fairq.h). Each is one pass over the queue; the second
 * counts per tenant in an open-addressing table twice the queue's size. */
#include "gateway/fairq.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t gw_fairq_tenant_id(const char *tenant) {
    return XXH3_64bits(tenant ? tenant : "", tenant ? strlen(tenant) : 0);
}

typedef struct fq_tally {
    uint64_t tenant;
    size_t n;      /* its calls in the queue */
    size_t newest; /* index of the newest of them */
    bool used;
} fq_tally;

long gw_fairq_victim(const uint64_t *tenant, size_t n, uint64_t arriving) {
    if (n == 0 || n > ((size_t)1 << 24)) return -1;
    size_t cap = 1;
    while (cap < 2 * n)
        cap <<= 1;
    fq_tally *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    size_t mine = 0;
    fq_tally *top = NULL;
    for (size_t i = 0; i < n; i++) {
        size_t at = (size_t)(tenant[i] ^ (tenant[i] >> 29)) & (cap - 1);
        while (t[at].used && t[at].tenant != tenant[i])
            at = (at + 1) & (cap - 1);
        fq_tally *e = &t[at];
        e->used = true;
        e->tenant = tenant[i];
        e->n++;
        e->newest = i;
        if (tenant[i] == arriving) {
            mine++;
        } else if (!top || e->n >= top->n) { /* a tie goes to the newest call (i grows) */
            top = e;
        }
    }
    long victim = top && top->n >= mine + 2 ? (long)top->newest : -1;
    free(t);
    return victim;
}

size_t gw_fairq_place(const uint64_t *tenant, const uint64_t *tag, size_t n, uint64_t clock,
                      uint64_t arriving, uint64_t *tag_out) {
    /* Calls that left unserved (timed out, canceled, pushed out) leave the clock behind
     * the head's round: caught up, or a newcomer would be credited the rounds they
     * skipped and go ahead of every call waiting. */
    if (n > 0 && tag[0] > clock + 1) clock = tag[0] - 1;
    uint64_t last = clock;
    for (size_t i = 0; i < n; i++)
        if (tenant[i] == arriving && tag[i] > last) last = tag[i];
    uint64_t t = last + 1;
    size_t at = n;
    while (at > 0 && tag[at - 1] > t)
        at--;
    *tag_out = t;
    return at;
}
