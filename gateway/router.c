/* router.c: the routing decision of design.md §6 over the gateway's view of its
 * workers. Pure and allocation-free; see router.h. Not for: the view's upkeep. */
#include "gateway/router.h"

#include <string.h>

static const gw_route_model *router_find(const gw_route_worker *w, const char *key) {
    for (size_t i = 0; i < w->n_models; i++)
        if (w->models[i].key && strcmp(w->models[i].key, key) == 0) return &w->models[i];
    return NULL;
}

static bool router_victim(const gw_route_model *m) {
    return m->state == GW_MODEL_READY && m->pinned == 0 && !m->kept;
}

/* Walks w's unpinned READY models oldest first (ties by index) until free + freed
 * covers `need`. Returns true when that is possible, with the victim count and the
 * last-use time of the newest victim taken. Quadratic in the model count, which is
 * small (the models one device holds), and free of allocation. */
static bool router_victims(const gw_route_worker *w, uint64_t need, uint32_t *n_out, uint64_t *age_out) {
    uint64_t have = w->free_bytes;
    uint32_t n = 0;
    uint64_t prev_age = 0;
    size_t prev_idx = 0;
    bool first = true;
    while (have < need) {
        size_t best = w->n_models;
        for (size_t i = 0; i < w->n_models; i++) {
            const gw_route_model *m = &w->models[i];
            if (!router_victim(m)) continue;
            if (!first && (m->last_use_us < prev_age || (m->last_use_us == prev_age && i <= prev_idx)))
                continue;
            if (best == w->n_models || m->last_use_us < w->models[best].last_use_us) best = i;
        }
        if (best == w->n_models) return false;
        have += w->models[best].bytes;
        n++;
        prev_age = w->models[best].last_use_us;
        prev_idx = best;
        first = false;
    }
    *n_out = n;
    *age_out = prev_age;
    return true;
}

/* Whether w holds req's model: GW_MODEL_READY (routable now), GW_MODEL_LOADING (a
 * call joins the load, or the start of the worker), or 0 (not a holder). */
static int router_holds(const gw_route_worker *w, const gw_route_request *req) {
    if (!w->usable && !w->starting) return 0;
    if (req->any_worker) return w->usable ? GW_MODEL_READY : GW_MODEL_LOADING;
    const gw_route_model *m = router_find(w, req->key);
    if (!m) return 0;
    if (m->state == GW_MODEL_READY) return w->usable ? GW_MODEL_READY : GW_MODEL_LOADING;
    if (m->state == GW_MODEL_LOADING) return GW_MODEL_LOADING;
    return 0;
}

uint32_t gw_route_holders(const gw_route_worker *workers, size_t n, const gw_route_request *req) {
    uint32_t holders = 0;
    for (size_t i = 0; i < n; i++)
        if (router_holds(&workers[i], req)) holders++;
    return holders;
}

/* Levels 3-5: a place for a new copy of the model (a worker that does not hold it in
 * any state). Returns the kind, or 0 when there is none; *fits_somewhere says whether
 * any worker in view (or a new one) could ever hold the model. */
static gw_route_kind router_place(const gw_route_worker *workers, size_t n, const gw_route_request *req,
                                  gw_route_decision *out, bool *fits_somewhere) {
    int best = -1;
    /* 3. Enough free budget: fewest in flight, then most free bytes. */
    *fits_somewhere = req->new_worker_budget > 0 && req->new_worker_budget >= req->model_bytes;
    for (size_t i = 0; i < n; i++) {
        const gw_route_worker *w = &workers[i];
        /* A starting worker's budget is unknown (0) until its first status: it may fit. */
        if ((w->usable || w->starting) &&
            (w->budget_bytes >= req->model_bytes || (w->starting && w->budget_bytes == 0)))
            *fits_somewhere = true;
        if (!w->usable || w->full || router_holds(w, req) || router_find(w, req->key))
            continue; /* EVICTING: not here */
        if (w->free_bytes < req->model_bytes) continue;
        if (best < 0 || w->in_flight < workers[best].in_flight ||
            (w->in_flight == workers[best].in_flight && w->free_bytes > workers[best].free_bytes))
            best = (int)i;
    }
    if (best >= 0) {
        out->worker = best;
        return GW_ROUTE_FREE;
    }

    /* 4. Oldest eviction victims: the worker whose newest needed victim is oldest. */
    uint32_t best_n = 0;
    uint64_t best_age = 0;
    for (size_t i = 0; i < n; i++) {
        const gw_route_worker *w = &workers[i];
        if (!w->usable || w->full || w->budget_bytes < req->model_bytes || router_holds(w, req) ||
            router_find(w, req->key))
            continue;
        uint32_t vn;
        uint64_t age;
        if (!router_victims(w, req->model_bytes, &vn, &age)) continue;
        if (best < 0 || age < best_age || (age == best_age && w->in_flight < workers[best].in_flight)) {
            best = (int)i;
            best_n = vn;
            best_age = age;
        }
    }
    if (best >= 0) {
        out->worker = best;
        out->n_victims = best_n;
        out->victims_age_us = best_age;
        return GW_ROUTE_EVICT;
    }

    /* 5. A new worker. */
    if (req->pool_may_grow && req->new_worker_budget >= req->model_bytes) return GW_ROUTE_SPAWN;
    return (gw_route_kind)0;
}

gw_route_kind gw_route_decide(const gw_route_worker *workers, size_t n, const gw_route_request *req,
                              gw_route_decision *out) {
    out->worker = -1;
    out->n_victims = 0;
    out->victims_age_us = 0;

    /* The holders: the least-loaded READY one and the least-loaded LOADING one. */
    int ready = -1, loading = -1;
    uint32_t holders = 0;
    for (size_t i = 0; i < n; i++) {
        const gw_route_worker *w = &workers[i];
        int st = router_holds(w, req);
        if (!st) continue;
        holders++;
        if (w->full) continue;
        int *best = st == GW_MODEL_READY ? &ready : &loading;
        if (*best < 0 || w->in_flight < workers[*best].in_flight) *best = (int)i;
    }
    uint32_t busy = req->busy_in_flight;
    if (!req->new_replica) {
        /* 1. READY, fewest in flight, unless busy. */
        if (ready >= 0 && (busy == 0 || workers[ready].in_flight < busy)) {
            out->worker = ready;
            return out->kind = GW_ROUTE_READY;
        }
        /* 2. LOADING (a starting worker that will load it counts too), unless busy. */
        if (loading >= 0 && (busy == 0 || workers[loading].in_flight < busy)) {
            out->worker = loading;
            return out->kind = GW_ROUTE_LOADING;
        }
    }

    /* 3-5. Every holder is busy (or there is none): one more replica, below the limit. */
    bool fits_somewhere = true;
    if (req->max_holders == 0 || holders < req->max_holders) {
        gw_route_kind k = router_place(workers, n, req, out, &fits_somewhere);
        if (k) return out->kind = k;
    }

    /* At the limit, or no room for a replica: the least-loaded READY holder, else the
     * least-loaded LOADING one (design.md §6's order: a busy READY holder serves a call
     * in its calls' time, a load takes the load's). */
    if (!req->new_replica) {
        if (ready >= 0) {
            out->worker = ready;
            return out->kind = GW_ROUTE_READY;
        }
        if (loading >= 0) {
            out->worker = loading;
            return out->kind = GW_ROUTE_LOADING;
        }
    }

    /* 6. Queue, unless nothing in view (and no new local worker) could ever hold it.
     * With no worker in view and no local pool, queueing is right: a remote worker
     * may still register before the deadline. */
    if (!fits_somewhere && (n > 0 || req->new_worker_budget > 0)) return out->kind = GW_ROUTE_TOO_LARGE;
    return out->kind = GW_ROUTE_QUEUE;
}

const char *gw_route_kind_name(gw_route_kind kind) {
    switch (kind) {
    case GW_ROUTE_READY:
        return "ready";
    case GW_ROUTE_LOADING:
        return "loading";
    case GW_ROUTE_FREE:
        return "free";
    case GW_ROUTE_EVICT:
        return "evict";
    case GW_ROUTE_SPAWN:
        return "spawn";
    case GW_ROUTE_QUEUE:
        return "queue";
    case GW_ROUTE_TOO_LARGE:
        return "too_large";
    }
    return "unknown";
}
