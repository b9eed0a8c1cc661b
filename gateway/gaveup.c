/* gaveup.c: the book of calls that timed out at a worker (gaveup.h): a ring under its own
 * mutex, searched from the newest. */
#include "gateway/gaveup.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct gw_gaveup {
    pthread_mutex_t mu;
    uint32_t cap;
    uint32_t next; /* the slot the next call takes */
    gw_gaveup_call *calls;
};

gw_gaveup *gw_gaveup_create(uint32_t cap) {
    gw_gaveup *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->cap = cap ? cap : AICFN_GW_GAVE_UP_CALLS;
    g->calls = calloc(g->cap, sizeof *g->calls);
    if (!g->calls) {
        free(g);
        return NULL;
    }
    pthread_mutex_init(&g->mu, NULL);
    return g;
}

void gw_gaveup_destroy(gw_gaveup *g) {
    if (!g) return;
    pthread_mutex_destroy(&g->mu);
    free(g->calls);
    free(g);
}

void gw_gaveup_note(gw_gaveup *g, const gw_gaveup_call *c) {
    if (!g || !c || c->gid == 0 || !memchr(c->worker, 0, sizeof c->worker) || !memchr(c->fn, 0, sizeof c->fn))
        return;
    pthread_mutex_lock(&g->mu);
    g->calls[g->next] = *c;
    g->next = (g->next + 1) % g->cap;
    pthread_mutex_unlock(&g->mu);
}

bool gw_gaveup_take(gw_gaveup *g, uint64_t gid, const char *worker, const char *fn, uint32_t ver,
                    uint64_t now_us, gw_gaveup_call *out) {
    if (!g || gid == 0 || !worker || !fn) return false;
    bool found = false;
    pthread_mutex_lock(&g->mu);
    for (uint32_t k = 1; k <= g->cap && !found; k++) {
        gw_gaveup_call *c = &g->calls[(g->next + g->cap - k) % g->cap];
        if (c->gid != gid || c->ver != ver || strcmp(c->worker, worker) != 0 || strcmp(c->fn, fn) != 0)
            continue;
        if (now_us > c->row_us && now_us - c->row_us > AICFN_GW_GAVE_UP_MAX_AGE_MS * 1000ull)
            break; /* too late */
        if (out) *out = *c;
        memset(c, 0, sizeof *c);
        found = true;
    }
    pthread_mutex_unlock(&g->mu);
    return found;
}
