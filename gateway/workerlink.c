/* workerlink.c: the gateway's record of one worker: its REQ client and the view of its
 * cache that routing reads (see workerlink.h). Not for: policy or process control. */
#include "gateway/workerlink.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/tunables.h"

gw_worker *gw_worker_new(const char *name, const char *addr, uint32_t pool_id, pid_t pid, uint64_t now_us) {
    static _Atomic uint64_t last_serial;
    gw_worker *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->serial = atomic_fetch_add(&last_serial, 1) + 1;
    snprintf(w->name, sizeof w->name, "%s", name ? name : "");
    snprintf(w->addr, sizeof w->addr, "%s", addr ? addr : "");
    w->pool_id = pool_id;
    w->pid = pid;
    w->state = GW_WORKER_STARTING;
    w->started_us = now_us;
    w->started_wall_us = clock_wall_us();
    w->last_call_us = now_us;
    return w;
}

int gw_worker_connect(gw_worker *w, int link_fd, bool await_listen, aicfn_error *err) {
    rpc_client_opts o = {.recv_max = AICFN_MAX_MESSAGE_BYTES,
                         .send_max = AICFN_MAX_MESSAGE_BYTES,
                         .background = true,
                         .single_peer = true,
                         .await_listen = await_listen};
    w->linked = link_fd >= 0;
    if (w->linked) return rpc_client_open_link(&w->client, link_fd, &o, err);
    return rpc_client_open(&w->client, w->addr, &o, err);
}

static int wl_reserve(gw_worker *w, size_t n) {
    if (n <= w->cap_models) return AICFN_OK;
    size_t cap = w->cap_models ? w->cap_models * 2 : 8;
    while (cap < n)
        cap *= 2;
    gw_route_model *m = realloc(w->models, cap * sizeof *m);
    if (!m) return AICFN_E_NOMEM;
    w->models = m;
    uint64_t *h = realloc(w->hold_until, cap * sizeof *h);
    if (!h) return AICFN_E_NOMEM;
    w->hold_until = h;
    w->cap_models = cap;
    return AICFN_OK;
}

static void wl_free_models(gw_route_model *m, size_t n) {
    for (size_t i = 0; i < n; i++)
        free((char *)m[i].key);
}

static gw_route_model *wl_find(gw_worker *w, const char *key) {
    for (size_t i = 0; i < w->n_models; i++)
        if (strcmp(w->models[i].key, key) == 0) return &w->models[i];
    return NULL;
}

static gw_model_state wl_state(int wire_state) {
    return wire_state == WIRE_MODEL_READY     ? GW_MODEL_READY
           : wire_state == WIRE_MODEL_LOADING ? GW_MODEL_LOADING
                                              : GW_MODEL_EVICTING;
}

/* A partial summary (a reply's, listing the most recently used models of a worker that
 * holds more): the listed models are updated or added, the others kept as they were
 * (the next status, which lists them all, drops the evicted). */
static int wl_merge_summary(gw_worker *w, const wire_worker_summary *s, uint64_t now_us) {
    for (uint32_t k = 0; k < s->n_models; k++) {
        const wire_model_status *ms = &s->models[k];
        if (!ms->model || !ms->model[0]) continue;
        uint64_t idle_us = ms->idle_ms * 1000;
        gw_route_model v = {
            NULL,    wl_state(ms->state), ms->bytes, ms->refs, now_us > idle_us ? now_us - idle_us : 0,
            ms->kept};
        gw_route_model *have = wl_find(w, ms->model);
        if (have) {
            v.key = have->key;
            *have = v;
            w->hold_until[have - w->models] = 0; /* the worker's word now */
            continue;
        }
        if (wl_reserve(w, w->n_models + 1) != AICFN_OK || !(v.key = strdup(ms->model))) return AICFN_E_NOMEM;
        w->models[w->n_models] = v;
        w->hold_until[w->n_models] = 0;
        w->n_models++;
    }
    uint64_t held_bytes = 0; /* gateway-added loads the worker does not count yet */
    for (size_t i = 0; i < w->n_models; i++)
        if (w->hold_until[i] > now_us) held_bytes += w->models[i].bytes;
    w->budget_bytes = s->budget_bytes;
    w->free_bytes = s->free_bytes > held_bytes ? s->free_bytes - held_bytes : 0;
    if (s->draining && w->state == GW_WORKER_READY) w->state = GW_WORKER_DRAINING;
    return AICFN_OK;
}

int gw_worker_apply_summary(gw_worker *w, const wire_worker_summary *s, uint64_t now_us) {
    if (s->partial) return wl_merge_summary(w, s, now_us);
    /* Fast path (every warm reply): the same models in the same order and no held
     * entries: update in place, without allocating. */
    bool same = w->n_models == s->n_models;
    for (size_t i = 0; same && i < w->n_models; i++)
        same = w->hold_until[i] <= now_us && s->models[i].model &&
               strcmp(s->models[i].model, w->models[i].key) == 0;
    if (same) {
        for (size_t i = 0; i < w->n_models; i++) {
            const wire_model_status *ms = &s->models[i];
            uint64_t idle_us = ms->idle_ms * 1000;
            w->models[i].state = wl_state(ms->state);
            w->models[i].bytes = ms->bytes;
            w->models[i].pinned = ms->refs;
            w->models[i].kept = ms->kept;
            w->models[i].last_use_us = now_us > idle_us ? now_us - idle_us : 0;
        }
        w->budget_bytes = s->budget_bytes;
        w->free_bytes = s->free_bytes;
        if (s->draining && w->state == GW_WORKER_READY) w->state = GW_WORKER_DRAINING;
        return AICFN_OK;
    }
    size_t n_new = s->n_models;
    /* Keep held gateway-added entries the summary does not list. */
    size_t keep = 0;
    for (size_t i = 0; i < w->n_models; i++) {
        if (w->hold_until[i] <= now_us) continue;
        bool listed = false;
        for (uint32_t k = 0; k < s->n_models && !listed; k++)
            listed = s->models[k].model && strcmp(s->models[k].model, w->models[i].key) == 0;
        if (!listed) keep++;
    }
    gw_route_model *m = calloc(n_new + keep + 1, sizeof *m);
    uint64_t *h = calloc(n_new + keep + 1, sizeof *h);
    if (!m || !h) {
        free(m);
        free(h);
        return AICFN_E_NOMEM;
    }
    size_t j = 0;
    uint64_t held_bytes = 0;
    for (uint32_t k = 0; k < s->n_models; k++) {
        const wire_model_status *ms = &s->models[k];
        if (!ms->model || !ms->model[0]) continue;
        char *key = strdup(ms->model);
        if (!key) goto oom;
        gw_model_state st = wl_state(ms->state);
        uint64_t idle_us = ms->idle_ms * 1000;
        m[j] =
            (gw_route_model){key, st, ms->bytes, ms->refs, now_us > idle_us ? now_us - idle_us : 0, ms->kept};
        h[j] = 0;
        j++;
    }
    for (size_t i = 0; i < w->n_models; i++) {
        if (w->hold_until[i] <= now_us) continue;
        bool listed = false;
        for (uint32_t k = 0; k < s->n_models && !listed; k++)
            listed = s->models[k].model && strcmp(s->models[k].model, w->models[i].key) == 0;
        if (listed) continue;
        char *key = strdup(w->models[i].key);
        if (!key) goto oom;
        m[j] = w->models[i];
        m[j].key = key;
        h[j] = w->hold_until[i];
        held_bytes += m[j].bytes;
        j++;
    }
    wl_free_models(w->models, w->n_models);
    free(w->models);
    free(w->hold_until);
    w->models = m;
    w->hold_until = h;
    w->n_models = j;
    w->cap_models = n_new + keep + 1;
    w->budget_bytes = s->budget_bytes;
    w->free_bytes = s->free_bytes > held_bytes ? s->free_bytes - held_bytes : 0;
    if (s->draining && w->state == GW_WORKER_READY) w->state = GW_WORKER_DRAINING;
    return AICFN_OK;
oom:
    wl_free_models(m, j);
    free(m);
    free(h);
    return AICFN_E_NOMEM;
}

int gw_worker_note_load(gw_worker *w, const char *key, uint64_t bytes, uint64_t now_us, uint64_t hold_us) {
    if (!key || !key[0]) return AICFN_OK;
    gw_route_model *have = wl_find(w, key);
    if (have && have->state == GW_MODEL_LOADING) {
        uint64_t *h = &w->hold_until[have - w->models];
        if (*h < now_us + hold_us) *h = now_us + hold_us;
        return AICFN_OK;
    }
    if (have && have->state != GW_MODEL_EVICTING) return AICFN_OK;
    /* Victims the worker's LRU will take: unpinned, unkept READY models, oldest first. */
    while (w->free_bytes < bytes && w->budget_bytes) {
        gw_route_model *oldest = NULL;
        for (size_t i = 0; i < w->n_models; i++) {
            gw_route_model *m = &w->models[i];
            if (m->state != GW_MODEL_READY || m->pinned || m->kept) continue;
            if (!oldest || m->last_use_us < oldest->last_use_us) oldest = m;
        }
        if (!oldest) break;
        oldest->state = GW_MODEL_EVICTING;
        w->free_bytes += oldest->bytes;
    }
    if (have) {
        have->state = GW_MODEL_LOADING;
        have->pinned = 1;
        have->last_use_us = now_us;
        w->hold_until[have - w->models] = now_us + hold_us;
    } else {
        if (wl_reserve(w, w->n_models + 1) != AICFN_OK) return AICFN_E_NOMEM;
        char *k = strdup(key);
        if (!k) return AICFN_E_NOMEM;
        w->models[w->n_models] = (gw_route_model){k, GW_MODEL_LOADING, bytes, 1, now_us, false};
        w->hold_until[w->n_models] = now_us + hold_us;
        w->n_models++;
    }
    w->free_bytes = w->free_bytes > bytes ? w->free_bytes - bytes : 0;
    return AICFN_OK;
}

void gw_worker_note_use(gw_worker *w, const char *key, uint64_t now_us) {
    if (!key || !key[0]) return;
    gw_route_model *m = wl_find(w, key);
    if (m) m->last_use_us = now_us;
}

void gw_worker_route_view(const gw_worker *w, gw_route_worker *out) {
    out->usable = w->state == GW_WORKER_READY;
    out->starting = w->state == GW_WORKER_STARTING;
    uint32_t sent = w->in_flight > w->preloads ? w->in_flight - w->preloads : 0;
    out->in_flight = sent + w->pending_calls;
    out->full = w->call_msgs >= AICFN_WORKER_MAX_CALL_MSGS;
    out->budget_bytes = w->budget_bytes;
    out->free_bytes = w->free_bytes;
    out->models = w->models;
    out->n_models = w->n_models;
}

void gw_worker_destroy(gw_worker *w) {
    if (!w) return;
    rpc_client_close(w->client);
    wl_free_models(w->models, w->n_models);
    free(w->models);
    free(w->hold_until);
    free(w->fault);
    free(w);
}

const char *gw_worker_state_name(gw_worker_state s) {
    switch (s) {
    case GW_WORKER_STARTING:
        return "starting";
    case GW_WORKER_READY:
        return "ready";
    case GW_WORKER_DRAINING:
        return "draining";
    case GW_WORKER_DEAD:
        return "gone";
    }
    return "unknown";
}
