/* front_http.h: connects the HTTP front (http.h) to a running gateway (gateway.h): the
 * gw_http_callbacks implemented over gw_invoke_submit, the registry, the keys and the
 * worker pool, plus the gateway's Prometheus registry served at GET /metrics.
 *
 * Not for: HTTP itself (http.c) or the call path (gateway.c). Only the gateway process
 * (gateway.c / cli/cmd_gateway.c) uses it. */
#ifndef AICFN_GATEWAY_FRONT_HTTP_H
#define AICFN_GATEWAY_FRONT_HTTP_H

#include <stdint.h>

#include "common/error.h"
#include "gateway/gateway.h"
#include "gateway/metrics.h"

typedef struct gw_front_http gw_front_http;

/* Starts the HTTP front on `listen` ("127.0.0.1:8080") for gateway `gw`, which must
 * outlive it. Authentication uses the gateway's keys (none when the gateway runs
 * --insecure-local: every caller is tenant "local" with admin rights). GET /metrics
 * serves `metrics` with its aicfn set `std` when given (the gateway's registry, so
 * cold starts, evictions and NNG calls recorded by the gateway appear too); when both
 * are NULL it serves the gateway's own registry (gw_gateway_metrics). Calls are counted
 * by the gateway where they complete (aicfn_calls_total, aicfn_call_duration_seconds),
 * never by this front. Rate limits and quotas go through gw_invoke_precheck at a
 * request's head (gw_invoke_admit, shared with the NNG front). Repository load/unload run
 * gw_model_load/gw_model_unload. `opts` (NULL: the defaults) bounds the connections and
 * says who may scrape /metrics. Returns AICFN_OK and *out, or the error of gw_http_start. */
typedef struct gw_front_http_opts {
    unsigned connections; /* open HTTP connections at most; 0: AICFN_HTTP_MAX_CONNECTIONS */
    unsigned per_ip;      /* from one client address; 0: AICFN_HTTP_MAX_CONNECTIONS_PER_IP,
                             GW_HTTP_PER_IP_UNLIMITED: none (behind a load balancer) */
    bool metrics_public;  /* GET /metrics without a key (else an admin key's, unless
                             --insecure-local: then every caller is admin) */
} gw_front_http_opts;

int gw_front_http_start(gw_gateway *gw, const char *listen, const char *version, gw_metrics *metrics,
                        const gw_stdmetrics *std, const gw_front_http_opts *opts, gw_front_http **out,
                        aicfn_error *err);

/* The bound port (after "host:0"). */
uint16_t gw_front_http_port(const gw_front_http *f);

/* The Prometheus registry and the aicfn metric set it serves (the ones given to start,
 * or its own). Valid until gw_front_http_stop. */
gw_metrics *gw_front_http_metrics(gw_front_http *f);
const gw_stdmetrics *gw_front_http_stdmetrics(gw_front_http *f);

/* Stops the HTTP front (waits for its calls in flight; call it before gw_stop). NULL
 * accepted. */
void gw_front_http_stop(gw_front_http *f);

#endif
