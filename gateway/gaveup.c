/* gaveup.c: the book of calls that timed out at a worker (gaveup.h), under one mutex: a
 * ring of the calls, searched from the newest, and a table of the shares held for calls
 * not noted yet. */
#include "gateway/gaveup.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A share listed for a call before its timeout was noted. */
typedef struct gw_gaveup_held {
    uint64_t gid; /* 0: an empty slot */
    uint64_t share_us;
    uint64_t until_us; /* wall clock: a note after this finds nothing */
    uint64_t worker;   /* its record's serial */
    uint32_t ver;
    char fn[AICFN_FN_NAME_MAX_BYTES + 1];
} gw_gaveup_held;

struct gw_gaveup {
    pthread_mutex_t mu;
    uint32_t cap;
    uint32_t next; /* the slot the next call takes */
    gw_gaveup_call *calls;
    gw_gaveup_held *held; /* cap slots, in no order */
};

gw_gaveup *gw_gaveup_create(uint32_t cap) {
    gw_gaveup *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->cap = cap ? cap : AICFN_GW_GAVE_UP_CALLS;
    g->calls = calloc(g->cap, sizeof *g->calls);
    g->held = calloc(g->cap, sizeof *g->held);
    if (!g->calls || !g->held) {
        free(g->calls);
        free(g->held);
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
    free(g->held);
    free(g);
}

/* The held share for that call, or NULL (lock held). */
static gw_gaveup_held *gw_gaveup_held_of(gw_gaveup *g, uint64_t gid, uint64_t worker, const char *fn,
                                         uint32_t ver) {
    for (uint32_t k = 0; k < g->cap; k++) {
        gw_gaveup_held *h = &g->held[k];
        if (h->gid == gid && h->worker == worker && h->ver == ver && strcmp(h->fn, fn) == 0) return h;
    }
    return NULL;
}

/* The slot a new share held for `worker` takes at now_us: its own oldest when it holds
 * its most, else an empty or lapsed one; NULL when there is none (lock held). */
static gw_gaveup_held *gw_gaveup_held_slot(gw_gaveup *g, uint64_t worker, uint64_t now_us) {
    gw_gaveup_held *oldest = NULL, *free_slot = NULL;
    uint32_t mine = 0;
    for (uint32_t k = 0; k < g->cap; k++) {
        gw_gaveup_held *h = &g->held[k];
        if (h->gid == 0 || h->until_us < now_us) {
            if (!free_slot) free_slot = h;
        } else if (h->worker == worker) {
            mine++;
            if (!oldest || h->until_us < oldest->until_us) oldest = h;
        }
    }
    return mine >= AICFN_GW_GAVE_UP_HOLDS_PER_WORKER ? oldest : free_slot;
}

uint64_t gw_gaveup_note(gw_gaveup *g, const gw_gaveup_call *c) {
    if (!g || !c || c->gid == 0 || !memchr(c->fn, 0, sizeof c->fn)) return 0;
    uint64_t share = 0;
    pthread_mutex_lock(&g->mu);
    gw_gaveup_held *h = gw_gaveup_held_of(g, c->gid, c->worker, c->fn, c->ver);
    if (h && h->until_us >= c->row_us) {
        share = h->share_us;
        memset(h, 0, sizeof *h);
    } else {
        if (h) memset(h, 0, sizeof *h); /* lapsed */
        g->calls[g->next] = *c;
        g->next = (g->next + 1) % g->cap;
    }
    pthread_mutex_unlock(&g->mu);
    return share;
}

gw_gaveup_taken gw_gaveup_take(gw_gaveup *g, uint64_t gid, uint64_t worker, const char *fn, uint32_t ver,
                               uint64_t now_us, uint64_t hold_share_us, gw_gaveup_call *out) {
    if (!g || gid == 0 || !fn) return GW_GAVEUP_NONE;
    gw_gaveup_taken taken = GW_GAVEUP_NONE;
    bool seen = false;
    pthread_mutex_lock(&g->mu);
    for (uint32_t k = 1; k <= g->cap && !seen; k++) {
        gw_gaveup_call *c = &g->calls[(g->next + g->cap - k) % g->cap];
        if (c->gid != gid || c->worker != worker || c->ver != ver || strcmp(c->fn, fn) != 0) continue;
        seen = true;
        if (now_us > c->row_us && now_us - c->row_us > AICFN_GW_GAVE_UP_MAX_AGE_MS * 1000ull)
            break; /* too late */
        if (out) *out = *c;
        memset(c, 0, sizeof *c);
        taken = GW_GAVEUP_TAKEN;
    }
    gw_gaveup_held *h = NULL;
    if (!seen && hold_share_us > 0 && strlen(fn) <= AICFN_FN_NAME_MAX_BYTES) {
        h = gw_gaveup_held_of(g, gid, worker, fn, ver);
        if (!h) h = gw_gaveup_held_slot(g, worker, now_us);
    }
    if (h) {
        *h = (gw_gaveup_held){.gid = gid,
                              .share_us = hold_share_us,
                              .until_us = now_us + AICFN_GW_GAVE_UP_HOLD_MS * 1000ull,
                              .worker = worker,
                              .ver = ver};
        snprintf(h->fn, sizeof h->fn, "%s", fn);
        taken = GW_GAVEUP_HELD;
    }
    pthread_mutex_unlock(&g->mu);
    return taken;
}

uint64_t gw_gaveup_charge(const gw_gaveup_call *c, uint64_t share_us, uint64_t now_us) {
    uint64_t since_sent = now_us > c->sent_us ? now_us - c->sent_us : 0;
    uint64_t room = since_sent > c->charged_us ? since_sent - c->charged_us : 0;
    return share_us < room ? share_us : room;
}
