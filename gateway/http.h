/* http.h: the gateway's HTTP front: an Open Inference Protocol v2 (KServe / Triton
 * REST) server on libmicrohttpd, plus GET /metrics (Prometheus).
 *
 * Endpoints: GET /v2/health/live, GET /v2/health/ready, GET /v2 (server metadata),
 * GET /v2/models/{m}[/versions/{v}] (model metadata), GET .../ready (model readiness),
 * POST .../infer (JSON tensors and the binary tensor extension), POST
 * /v2/repository/index, POST /v2/repository/models/{m}/load and /unload (admin only),
 * and GET /metrics. Errors are {"error": "..."} with the one HTTP status of each aicfn
 * code (aicfn_http_status); 429 carries Retry-After.
 *
 * The server knows nothing of workers, the registry or keys: the gateway connects it
 * through gw_http_callbacks. Calls that take time (infer, load, unload) are
 * asynchronous: the callback starts the operation and returns; the gateway later calls
 * gw_http_complete from any thread. Meanwhile the HTTP connection is suspended
 * (MHD_suspend_connection), so no MHD thread ever waits on a worker.
 *
 * Limits (each from common/tunables.h unless set in gw_http_config): request body size
 * (413 before the body is read when Content-Length says so; counted while streaming
 * otherwise; only inference and the repository endpoints take a body: any other
 * refuses one with 400 and buffers none), header bytes per connection (MHD answers 431),
 * connections in all and
 * per client IP, an idle timeout, and a whole-request receive deadline enforced by a
 * reaper thread so a client trickling one byte per second is cut off.
 * Authentication: "Authorization: Bearer <key>" on every endpoint except the health
 * probes and server metadata (and /metrics with metrics_public); missing -> 401;
 * load/unload and /metrics need an admin key (403); a worker key (keys.h) gets 403
 * everywhere. Not for: TLS (put a proxy in front), HTTP/2, NNG's HTTP
 * server (never used). */
#ifndef AICFN_GATEWAY_HTTP_H
#define AICFN_GATEWAY_HTTP_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/wire.h"
#include "gateway/metrics.h"
#include "gateway/oip.h"
#include "gateway/registry.h"

/* The server. Opaque; gw_http_start / gw_http_stop. */
typedef struct gw_http gw_http;

/* One asynchronous operation (infer, load, unload) in flight: handed to the callback,
 * completed exactly once with gw_http_complete. Owned by the server. */
typedef struct gw_http_call gw_http_call;

/* Who the caller is, as the authenticate callback says. */
typedef struct gw_http_principal {
    char tenant[AICFN_MAX_NAME_BYTES + 1];
    bool admin;
    uint32_t rate_per_s; /* the key's limits, for the infer callback (0 = unlimited) */
    uint64_t quota_per_day;
} gw_http_principal;

/* An inference to run. Everything is borrowed and stays valid until gw_http_complete
 * is called for the call (so tensors can be encoded to the wire without a copy). */
typedef struct gw_http_infer {
    const char *model;                  /* validated function name */
    uint32_t version;                   /* 0 = the active version */
    const char *key;                    /* the bearer key; NULL when none was sent */
    const gw_http_principal *principal; /* NULL when authentication is off */
    const oip_request *req;             /* id, inputs (wire_tensor), params (msgpack map) */
    uint64_t received_us;               /* clock_now_us() when the request arrived */
} gw_http_infer;

/* A finished inference. Read only during gw_http_complete (encoded before it returns). */
typedef struct gw_http_result {
    uint32_t version; /* the version that ran */
    const wire_tensor *outputs;
    uint32_t n_outputs;
    bool cold; /* sent back as header "Aicfn-Cold: 1" */
} gw_http_result;

/* Model metadata and readiness, filled by the model_info callback into a zeroed struct. */
#define GW_HTTP_MAX_VERSIONS 64
typedef struct gw_http_model_info {
    bool signature_only;                     /* set by the caller: only version, inputs and outputs are needed
                                                (an infer's check, on every call: the callback may answer from a
                                                cache) */
    uint32_t version;                        /* the version the reference resolved to */
    uint32_t versions[GW_HTTP_MAX_VERSIONS]; /* existing versions (newest last; up to 64) */
    size_t n_versions;
    bool ready;                               /* can serve calls now (GET .../ready) */
    gw_tensor_spec inputs[AICFN_MAX_TENSORS]; /* declared in the manifest; 0 = undeclared */
    size_t n_inputs;
    gw_tensor_spec outputs[AICFN_MAX_TENSORS];
    size_t n_outputs;
} gw_http_model_info;

/* One row of the repository index. */
typedef struct gw_http_repo_entry {
    const char *name;
    uint32_t version;
    const char *state;  /* "READY", "LOADING", "UNAVAILABLE" */
    const char *reason; /* "" when none */
} gw_http_repo_entry;

typedef void (*gw_http_emit_fn)(void *arg, const gw_http_repo_entry *e);

/* What the gateway provides. `ctx` is passed to every callback. Callbacks run on MHD
 * threads (several may run at once) and must not block on workers: the synchronous
 * ones (authenticate, ready, model_info, repository_index, before_metrics) read
 * in-memory state or SQLite briefly. Optional members may be NULL as noted. */
typedef struct gw_http_callbacks {
    void *ctx;
    /* Identity only: maps a bearer key to a principal. Must NOT spend rate-limit tokens
     * or quota (the infer path does that). AICFN_OK, AICFN_E_UNAUTHENTICATED (unknown or
     * revoked key) or AICFN_E_FORBIDDEN (a key no HTTP endpoint serves: a worker key).
     * NULL = authentication off: every caller may do everything. */
    int (*authenticate)(void *ctx, const char *key, gw_http_principal *out, aicfn_error *err);
    /* Whether the gateway serves calls (GET /v2/health/ready). NULL = always. */
    bool (*ready)(void *ctx);
    /* Whether the gateway process is sound (GET /v2/health/live): false (with why, a
     * message for the 503) asks for a restart. NULL = always. Not called once stopping
     * (live is then 200: the process still runs). */
    bool (*live)(void *ctx, char *why, size_t cap);
    /* Resolves model/version (0 = active) and fills *out. AICFN_E_NOT_FOUND when unknown. */
    int (*model_info)(void *ctx, const char *model, uint32_t version, gw_http_model_info *out,
                      aicfn_error *err);
    /* Starts an inference. Returns AICFN_OK when started: gw_http_complete will then be
     * called exactly once, from any thread, possibly before infer returns. Any other
     * return means nothing started and the call is answered with that error. An
     * authenticated call was admitted against its caller's limits at precheck. */
    int (*infer)(void *ctx, gw_http_call *call, const gw_http_infer *inv, aicfn_error *err);
    /* Before an authenticated infer's body is read: admits the call against the caller's
     * rate and quota, spending its token, or refuses it (AICFN_E_QUOTA with
     * *retry_after_s), so a caller over its limits costs no body upload or parse, and a
     * caller within them cannot have more bodies read and parsed than its rate allows.
     * NULL = no limits. */
    int (*precheck)(void *ctx, const char *model, uint32_t version, const gw_http_principal *who,
                    uint32_t *retry_after_s, aicfn_error *err);
    /* An infer refused after its body was read (it does not parse, or does not match the
     * function's signature; `code` says why), before infer was called: recorded as a call
     * the gateway refused (its precheck counted it). NULL = refusals are not recorded. */
    void (*refused)(void *ctx, const char *model, uint32_t version, const gw_http_principal *who, int code);
    /* An infer admitted at precheck that never reached infer for the gateway's own reason
     * (its buffers full, stopping) or because its client left before its body: the
     * admission is undone (token and count given back). NULL = nothing to undo. */
    void (*unadmit)(void *ctx, const gw_http_principal *who);
    /* Repository extension, same contract as infer (complete with res = NULL): load makes
     * the model resident on a worker, unload evicts it everywhere. NULL = 404. */
    int (*load)(void *ctx, gw_http_call *call, const char *model, uint32_t version,
                const gw_http_principal *who, aicfn_error *err);
    int (*unload)(void *ctx, gw_http_call *call, const char *model, uint32_t version,
                  const gw_http_principal *who, aicfn_error *err);
    /* Lists functions (emit once per active version row; ready_only: only READY ones).
     * NULL = an empty index. */
    int (*repository_index)(void *ctx, bool ready_only, gw_http_emit_fn emit, void *arg, aicfn_error *err);
    /* Called before /metrics renders, to refresh gauges. NULL = nothing. */
    void (*before_metrics)(void *ctx);
    /* The client of a call that infer started (and tagged with gw_http_set_cancel_token)
     * closed its connection, or shut down its sending side, before the call was
     * completed: cancel it if it has not started. gw_http_complete is still due exactly
     * once. Called on the reaper thread, at most once per call, within about 200 ms of
     * the close. NULL = calls run to their end whoever waits for them. */
    void (*client_gone)(void *ctx, uint64_t token);
} gw_http_callbacks;

/* per_ip_connections: no limit per client address (behind a load balancer or a proxy,
 * every client arrives from the proxy's address; max_connections still bounds them). */
#define GW_HTTP_PER_IP_UNLIMITED UINT_MAX

/* Server settings. Zero fields take the defaults of common/tunables.h. */
typedef struct gw_http_config {
    const char *listen;          /* "HOST:PORT" ("127.0.0.1:8080", "[::1]:8080", "localhost:0");
                                  * port 0 binds an ephemeral port (see gw_http_port) */
    size_t max_body;             /* AICFN_HTTP_MAX_BODY */
    unsigned max_connections;    /* AICFN_HTTP_MAX_CONNECTIONS */
    unsigned per_ip_connections; /* AICFN_HTTP_MAX_CONNECTIONS_PER_IP; GW_HTTP_PER_IP_UNLIMITED: none */
    unsigned idle_timeout_s;     /* AICFN_HTTP_CONNECTION_TIMEOUT_S */
    unsigned receive_timeout_s;  /* AICFN_HTTP_RECEIVE_TIMEOUT_S */
    size_t connection_memory;    /* AICFN_HTTP_CONNECTION_MEMORY (bounds request headers) */
    unsigned threads;            /* MHD polling threads (epoll); 0 = 2 */
    gw_metrics *metrics;         /* served at GET /metrics; NULL = 404 */
    bool metrics_public;         /* GET /metrics without a key; else (keys checked) an admin
                                  * key's: the series name every tenant's functions */
    const gw_stdmetrics *std;    /* counts requests in aicfn_http_requests_total; may be NULL */
    const char *server_version;  /* in GET /v2; NULL = "unknown" */
    unsigned stop_wait_ms;       /* gw_http_stop waits this long for calls; AICFN_HTTP_STOP_WAIT_MS */
    size_t max_buffered;         /* bytes held at once, all connections: bodies, an infer's
                                  * decoded inputs and the gateway's copy of them, and its
                                  * response (oip_response_size_bound while it is encoded, then
                                  * its body until sent); AICFN_HTTP_MAX_BUFFERED (over it: 429
                                  * AICFN_E_OVERLOADED before the call runs; the response of a
                                  * call that ran may overdraw it, up to twice it) */
} gw_http_config;

/* Starts the server: binds, then serves on MHD's internal epoll thread(s). `cfg` and `cb`
 * are copied (the metrics registry and ctx must outlive the server). Returns AICFN_OK
 * and *out, or AICFN_E_INVALID (bad address or config), AICFN_E_IO (bind failed: the
 * message names the address), AICFN_E_NOMEM. */
int gw_http_start(const gw_http_config *cfg, const gw_http_callbacks *cb, gw_http **out, aicfn_error *err);

/* The bound TCP port (useful after "host:0"). */
uint16_t gw_http_port(const gw_http *h);

/* Tags a call that infer is starting with `token` (not 0), which client_gone passes back
 * if its client goes away first. Call from inside infer, once the call is started. */
void gw_http_set_cancel_token(gw_http_call *call, uint64_t token);

/* Completes an operation started by infer/load/unload: status AICFN_OK with `res`
 * (infer) or NULL (load/unload), or an error code with `err` (may be NULL) naming what
 * failed. retry_after_s (0 = none) is sent as Retry-After with 429 and 503 replies.
 * Thread-safe; call exactly once per started call; never blocks on the network. */
void gw_http_complete(gw_http_call *call, int status, const aicfn_error *err, const gw_http_result *res,
                      uint32_t retry_after_s);

/* Stops accepting, answers new requests with 503 (before any callback; GET
 * /v2/health/live, which says only that the process runs, still 200), waits (up to
 * stop_wait_ms) for every started call to be completed, then closes all connections,
 * frees the server and returns true. NULL accepted (true). The gateway must keep
 * completing calls until this returns.
 * When calls are still in flight after the wait, it returns false and leaves the server
 * running, detached: from then on it calls no callback and uses nothing that cfg
 * pointed to (metrics, std, ctx may be freed), answers the late completions and every
 * new request (503; /v2/health/live 200), and stays allocated; calling gw_http_stop again waits once more
 * and frees it when nothing is left in flight. */
bool gw_http_stop(gw_http *h);

/* True when `name` is acceptable as a model name in a URL: 1..AICFN_FN_NAME_MAX_BYTES of
 * [A-Za-z0-9_.-], starting with a letter or digit (so never "..", never a slash). */
bool gw_http_model_name_ok(const char *name);

#endif
