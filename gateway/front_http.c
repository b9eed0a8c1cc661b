/* front_http.c: the HTTP front's callbacks over a running gateway: authentication
 * with keys.h, model metadata from the registry (inputs/outputs declared in the
 * manifest), inference through gw_invoke_submit (the same call path as the NNG front),
 * the repository index, and the gauges refreshed from the worker pool before each
 * /metrics scrape. Rate limits and daily quotas go through gw_invoke_precheck, at the
 * request's head (one gw_limits for the whole gateway, shared with the NNG front); calls
 * are counted in the gateway's call path (gateway.c), not here, so none is counted twice.
 *
 * Not for: HTTP parsing or limits (http.c), JSON tensors (oip.c). */
#include "gateway/front_http.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/bounded_close.h"
#include "gateway/gateway_internal.h"
#include "gateway/http.h"
#include "gateway/keys.h"
#include "gateway/loopback.h"
#include "gateway/registry.h"

struct gw_front_http {
    gw_gateway *gw;
    gw_http *http;
    gw_metrics *metrics;
    bool own_metrics;
    gw_stdmetrics std;
    atomic_uint_fast64_t next_id;
};

typedef struct fh_pending {
    gw_front_http *f;
    gw_http_call *call;
    uint64_t t0_us;
    char fn[AICFN_FN_NAME_MAX_BYTES + 1];
} fh_pending;

static int fh_authenticate(void *ctx, const char *key, gw_http_principal *out, aicfn_error *err) {
    gw_front_http *f = ctx;
    gw_key_info info;
    int rc = gw_keys_authenticate(gw_gateway_read_db(f->gw), key, &info, err);
    if (rc != AICFN_OK) return rc;
    if (info.role == GW_KEY_WORKER)
        return aicfn_error_set(err, AICFN_E_FORBIDDEN,
                               "API key %s is a worker key: it registers a worker and fetches artifacts, "
                               "over NNG only",
                               info.key_id);
    snprintf(out->tenant, sizeof out->tenant, "%s", info.tenant);
    out->admin = info.role == GW_KEY_ADMIN;
    out->rate_per_s = info.rate_per_s;
    out->quota_per_day = info.quota_per_day;
    return AICFN_OK;
}

static int fh_model_info(void *ctx, const char *model, uint32_t version, gw_http_model_info *out,
                         aicfn_error *err) {
    gw_front_http *f = ctx;
    if (out->signature_only) /* every infer: the gateway's function cache, no SQLite read */
        return gw_fn_signature(f->gw, model, version, out->inputs, &out->n_inputs, out->outputs,
                               &out->n_outputs, AICFN_MAX_TENSORS, &out->version, err);
    /* Full metadata and the index read many rows, at any caller's pace: through the
     * reports' connection, so they never hold the one key checks and resolutions use. */
    gw_db *db = gw_gateway_query_db(f->gw);
    gw_function fn;
    memset(&fn, 0, sizeof fn);
    int rc = gw_registry_get(db, model, version, &fn, err);
    if (rc != AICFN_OK) return rc;
    out->version = fn.version;
    out->ready = true; /* models load on demand: a registered version can serve */
    gw_fn_config cfg;
    gw_fn_config_init(&cfg);
    if (fn.config_json && gw_fn_config_from_string(fn.config_json, &cfg, NULL) == AICFN_OK) {
        for (size_t i = 0; i < cfg.n_inputs && i < AICFN_MAX_TENSORS; i++)
            out->inputs[out->n_inputs++] = cfg.inputs[i];
        for (size_t i = 0; i < cfg.n_outputs && i < AICFN_MAX_TENSORS; i++)
            out->outputs[out->n_outputs++] = cfg.outputs[i];
    }
    gw_fn_config_clear(&cfg);
    gw_function_clear(&fn);
    gw_function *vs = NULL;
    size_t n = 0;
    if (gw_registry_versions(db, model, &vs, &n, NULL) == AICFN_OK) {
        size_t first = n > GW_HTTP_MAX_VERSIONS ? n - GW_HTTP_MAX_VERSIONS : 0;
        for (size_t i = first; i < n; i++)
            out->versions[out->n_versions++] = vs[i].version;
        gw_function_array_free(vs, n);
    }
    return AICFN_OK;
}

static void fh_done(void *user, const gw_invoke_result *res) {
    fh_pending *p = user;
    if (res->code == AICFN_OK && res->decoded) {
        gw_http_result r = {.version = res->version,
                            .outputs = res->decoded->outputs,
                            .n_outputs = res->decoded->n_outputs,
                            .cold = res->cold};
        gw_http_complete(p->call, AICFN_OK, NULL, &r, 0);
    } else {
        aicfn_error e;
        aicfn_error_set(&e, res->code == AICFN_OK ? AICFN_E_INTERNAL : res->code, "%s",
                        res->message && res->message[0] ? res->message : aicfn_strerror(res->code));
        gw_http_complete(p->call, e.code, &e, NULL, 0);
    }
    rpc_msg_free(res->reply);
    free(p);
}

/* Before the body: the call is admitted against the caller's rate and quota (a caller
 * over them is refused without its body being read; one within them has spent its token
 * before the body is read and parsed). */
static int fh_precheck(void *ctx, const char *model, uint32_t version, const gw_http_principal *who,
                       uint32_t *retry_after_s, aicfn_error *err) {
    gw_front_http *f = ctx;
    uint64_t id = atomic_fetch_add(&f->next_id, 1) + 1; /* the refused row's request id, as fh_infer's */
    return gw_invoke_precheck(f->gw, id, model, version, who->tenant, who->rate_per_s, who->quota_per_day,
                              retry_after_s, err);
}

/* After the body: a request refused for the caller's fault gets its ledger row (it was
 * admitted, and counted against the caller's limits, at its head). */
static void fh_refused(void *ctx, const char *model, uint32_t version, const gw_http_principal *who,
                       int code) {
    gw_front_http *f = ctx;
    uint64_t id = atomic_fetch_add(&f->next_id, 1) + 1;
    gw_invoke_refused(f->gw, id, model, version, who->tenant, code);
}

/* An infer admitted at its head that never reached fh_infer for the gateway's reason or
 * its client's leaving: the admission is undone. */
static void fh_unadmit(void *ctx, const gw_http_principal *who) {
    gw_front_http *f = ctx;
    gw_invoke_unadmit(f->gw, who->tenant, who->rate_per_s, who->quota_per_day);
}

static int fh_infer(void *ctx, gw_http_call *call, const gw_http_infer *inv, aicfn_error *err) {
    gw_front_http *f = ctx;
    fh_pending *p = calloc(1, sizeof *p);
    if (p == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    p->f = f;
    p->call = call;
    p->t0_us = inv->received_us;
    snprintf(p->fn, sizeof p->fn, "%s", inv->model);
    wire_invoke_req req;
    memset(&req, 0, sizeof req);
    req.id = atomic_fetch_add(&f->next_id, 1) + 1;
    req.fn = inv->model;
    req.ver = inv->version;
    req.key = inv->key;
    req.n_inputs = inv->req->n_inputs;
    req.inputs = inv->req->inputs;
    req.params = inv->req->params;
    req.params_len = inv->req->params_len;
    const char *tenant = inv->principal ? inv->principal->tenant : "local"; /* admitted at its head */
    uint64_t call_id = 0;
    int rc = gw_invoke_submit(f->gw, &req, tenant, fh_done, p, &call_id, err);
    if (rc != AICFN_OK) {
        free(p);
        return rc;
    }
    gw_http_set_cancel_token(call, call_id); /* p may be gone already: call is not (http.h) */
    return AICFN_OK;
}

/* Its client closed the connection: a call still queued is not run (nobody would get its
 * answer, and it would take a worker from those who wait); one already sent runs on. */
static void fh_client_gone(void *ctx, uint64_t call_id) {
    gw_front_http *f = ctx;
    gw_invoke_cancel(f->gw, call_id, "its HTTP client closed the connection");
}

/* Repository load/unload: complete the HTTP call with the gateway's outcome. */
static void fh_model_done(void *user, const gw_invoke_result *res) {
    gw_http_call *call = user;
    if (res->code == AICFN_OK) {
        gw_http_complete(call, AICFN_OK, NULL, NULL, 0);
    } else {
        aicfn_error e;
        aicfn_error_set(&e, res->code, "%s",
                        res->message && res->message[0] ? res->message : aicfn_strerror(res->code));
        gw_http_complete(call, e.code, &e, NULL, 0);
    }
    rpc_msg_free(res->reply);
}

static int fh_load(void *ctx, gw_http_call *call, const char *model, uint32_t version,
                   const gw_http_principal *who, aicfn_error *err) {
    (void)who; /* http.c lets only admins (or --insecure-local) through */
    gw_front_http *f = ctx;
    return gw_model_load(f->gw, model, version, fh_model_done, call, err);
}

static int fh_unload(void *ctx, gw_http_call *call, const char *model, uint32_t version,
                     const gw_http_principal *who, aicfn_error *err) {
    (void)who;
    gw_front_http *f = ctx;
    return gw_model_unload(f->gw, model, version, fh_model_done, call, err);
}

static int fh_index(void *ctx, bool ready_only, gw_http_emit_fn emit, void *arg, aicfn_error *err) {
    gw_front_http *f = ctx;
    gw_function_summary *s = NULL;
    size_t n = 0;
    int rc = gw_registry_list(gw_gateway_query_db(f->gw), &s, &n, err); /* as fh_model_info's */
    if (rc != AICFN_OK) return rc;
    for (size_t i = 0; i < n; i++) {
        bool ready = s[i].active_version != 0;
        if (ready_only && !ready) continue;
        gw_http_repo_entry e = {.name = s[i].name,
                                .version = ready ? s[i].active_version : s[i].latest_version,
                                .state = ready ? "READY" : "UNAVAILABLE",
                                .reason = ready ? "" : "no active version"};
        emit(arg, &e);
    }
    free(s);
    return AICFN_OK;
}

/* Live unless an NNG close got stuck in this process (bounded_close.h): NNG 1.5.2's reaper
 * is then wedged for good, and only a restart brings the gateway back to health. */
static bool fh_live(void *ctx, char *why, size_t cap) {
    (void)ctx;
    uint64_t stuck = bounded_close_stuck();
    if (stuck == 0) return true;
    snprintf(why, cap,
             "%llu NNG socket close(s) stuck in this process (NNG 1.5.2's reaper deadlock, nng #1813); "
             "restart the gateway",
             (unsigned long long)stuck);
    return false;
}

/* Not ready while not live: a load balancer stops sending calls to a gateway that asks
 * to be restarted. */
static bool fh_ready(void *ctx) {
    char why[8];
    return fh_live(ctx, why, sizeof why);
}

static void fh_before_metrics(void *ctx) {
    gw_front_http *f = ctx;
    if (!f->own_metrics) gw_metrics_refresh(f->gw);
    json_t *ws = gw_workers_json(f->gw);
    if (ws == NULL) return;
    gw_metric_reset(f->std.resident_models);
    gw_metric_reset(f->std.cache_used);
    gw_metric_reset(f->std.cache_budget);
    size_t i;
    json_t *w;
    json_array_foreach(ws, i, w) {
        const char *name = json_string_value(json_object_get(w, "name"));
        if (name == NULL) continue;
        const char *l[] = {name};
        double budget = (double)json_integer_value(json_object_get(w, "budget_bytes"));
        double free_b = (double)json_integer_value(json_object_get(w, "free_bytes"));
        gw_metric_set(f->std.resident_models, l, (double)json_array_size(json_object_get(w, "models")));
        gw_metric_set(f->std.cache_budget, l, budget);
        gw_metric_set(f->std.cache_used, l, budget > free_b ? budget - free_b : 0);
    }
    gw_metric_set(f->std.workers_live, NULL, (double)json_array_size(ws));
    json_decref(ws);
}

int gw_front_http_start(gw_gateway *gw, const char *listen, const char *version, gw_metrics *metrics,
                        const gw_stdmetrics *std, const gw_front_http_opts *opts, gw_front_http **out,
                        aicfn_error *err) {
    *out = NULL;
    if (gw_insecure_local(gw) && !gw_addr_is_loopback(listen))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "--insecure-local serves without API keys: --http must be a loopback "
                               "address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT), not '%s'",
                               listen ? listen : "");
    gw_front_http *f = calloc(1, sizeof *f);
    if (f == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "http: out of memory");
    f->gw = gw;
    atomic_init(&f->next_id, 0);
    int rc = AICFN_OK;
    if (metrics && std) {
        f->metrics = metrics;
        f->std = *std;
    } else if (gw_gateway_metrics(gw)) {
        /* The gateway's registry: NNG calls, cold starts and restarts are counted there. */
        f->metrics = gw_gateway_metrics(gw);
        f->std = *gw_gateway_stdmetrics(gw);
    } else {
        f->own_metrics = true;
        f->metrics = gw_metrics_create();
        rc = f->metrics ? gw_stdmetrics_init(f->metrics, &f->std, err)
                        : aicfn_error_set(err, AICFN_E_NOMEM, "http: out of memory");
    }
    if (rc == AICFN_OK) {
        gw_http_callbacks cb = {.ctx = f,
                                .authenticate = gw_insecure_local(gw) ? NULL : fh_authenticate,
                                .model_info = fh_model_info,
                                .infer = fh_infer,
                                .precheck = gw_insecure_local(gw) ? NULL : fh_precheck,
                                .load = fh_load,
                                .unload = fh_unload,
                                .repository_index = fh_index,
                                .before_metrics = fh_before_metrics,
                                .live = fh_live,
                                .ready = fh_ready,
                                .refused = gw_insecure_local(gw) ? NULL : fh_refused,
                                .unadmit = gw_insecure_local(gw) ? NULL : fh_unadmit,
                                .client_gone = fh_client_gone};
        gw_http_config cfg = {
            .listen = listen, .metrics = f->metrics, .std = &f->std, .server_version = version};
        if (opts) {
            cfg.max_connections = opts->connections;
            cfg.per_ip_connections = opts->per_ip;
            cfg.metrics_public = opts->metrics_public;
        }
        rc = gw_http_start(&cfg, &cb, &f->http, err);
    }
    if (rc != AICFN_OK) {
        if (f->own_metrics) gw_metrics_destroy(f->metrics);
        free(f);
        return rc;
    }
    *out = f;
    return AICFN_OK;
}

uint16_t gw_front_http_port(const gw_front_http *f) {
    return f ? gw_http_port(f->http) : 0;
}

gw_metrics *gw_front_http_metrics(gw_front_http *f) {
    return f ? f->metrics : NULL;
}

const gw_stdmetrics *gw_front_http_stdmetrics(gw_front_http *f) {
    return f ? &f->std : NULL;
}

void gw_front_http_stop(gw_front_http *f) {
    if (f == NULL) return;
    /* A server left running with calls in flight (false) is detached: it no longer uses
     * f, its metrics or callbacks, so f can go. */
    gw_http_stop(f->http);
    if (f->own_metrics) gw_metrics_destroy(f->metrics);
    free(f);
}
