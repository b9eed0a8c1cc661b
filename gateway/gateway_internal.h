/* gateway_internal.h: what gateway.c shares with the client front (front_nng.c):
 * the administrative operations behind the deploy/ls/rm/coldstarts/workers/register
 * messages, and the front's start/stop. Not a public API: only gateway/ includes it. */
#ifndef AICFN_GATEWAY_GATEWAY_INTERNAL_H
#define AICFN_GATEWAY_GATEWAY_INTERNAL_H

#include <jansson.h>

#include "gateway/artifacts.h"
#include "gateway/db.h"
#include "gateway/gateway.h"
#include "gateway/ledger.h"
#include "gateway/metrics.h"
#include "gateway/registry.h"

typedef struct gw_front gw_front;

/* The client front (front_nng.c): a REP server on `url` holding up to `max_requests`
 * requests at once (AICFN_GW_FRONT_MAX_REQUESTS), whose invoke messages go to
 * gw_invoke_submit and whose administrative messages run on one admin thread. */
int gw_front_start(gw_gateway *gw, const char *url, unsigned max_requests, gw_front **out, aicfn_error *err);
const char *gw_front_url(const gw_front *f);
/* Stops receiving and waits for every call to be answered. NULL accepted. */
void gw_front_stop(gw_front *f);

/* Handles the gateway owns, for the admin operations (thread-safe per their headers). */
gw_db *gw_gateway_db(gw_gateway *gw);
/* The connection for reads on the call path (function metadata, key checks): read-only,
 * never waiting behind the registry's write transactions (WAL). */
gw_db *gw_gateway_read_db(gw_gateway *gw);
/* Function NAME:VER's declared inputs and outputs (ver 0: the active version;
 * *resolved: which), through the gateway's function cache (the registry is read on a
 * miss only), at most cap of each. AICFN_E_NOT_FOUND, AICFN_E_INVALID, AICFN_E_DB as
 * resolving. */
int gw_fn_signature(gw_gateway *gw, const char *name, uint32_t ver, gw_tensor_spec *inputs, size_t *n_inputs,
                    gw_tensor_spec *outputs, size_t *n_outputs, size_t cap, uint32_t *resolved,
                    aicfn_error *err);
/* A read-only connection to the same database for reads of many rows (the coldstarts
 * percentiles, the HTTP front's model metadata and repository index), so they never hold
 * the registry's connection nor the call path's; the registry's when it could not be
 * opened. Thread-safe (gw_db serializes its users). */
gw_db *gw_gateway_query_db(gw_gateway *gw);
gw_artifacts *gw_gateway_artifacts(gw_gateway *gw);
gw_ledger *gw_gateway_ledger(gw_gateway *gw);
/* The gateway's one Prometheus registry and its aicfn metric set: every call, cold
 * start, eviction and worker restart is recorded there, whichever front it came in by.
 * Valid until gw_stop. */
gw_metrics *gw_gateway_metrics(gw_gateway *gw);
const gw_stdmetrics *gw_gateway_stdmetrics(gw_gateway *gw);
/* Sets the gauges that are sampled rather than counted (queue depth per function, live
 * workers) and adds the ledger's new drops, from the gateway's current state; call before
 * rendering. One call at a time (it resets, then adds): the HTTP front calls it under its
 * scrape lock, with the render. */
void gw_metrics_refresh(gw_gateway *gw);

/* Applies the caller's rate limit and daily quota (keys.h gw_limits, one for the whole
 * gateway, seeded from the ledger at start) to one invocation, before gw_invoke_submit.
 * rate_per_s/quota_per_day 0 = unlimited; an unlimited key's call still counts toward its
 * tenant's calls today, which other keys' quotas are checked against (not without keys,
 * --insecure-local). AICFN_OK (admitted and counted), or
 * AICFN_E_QUOTA with *retry_after_s (>= 1) and a message; a refused call gets its ledger
 * row and its count in aicfn_calls_total here. Thread-safe; never blocks on I/O. */
int gw_invoke_admit(gw_gateway *gw, const wire_invoke_req *req, const char *tenant, uint32_t rate_per_s,
                    uint64_t quota_per_day, uint32_t *retry_after_s, aicfn_error *err);

/* gw_invoke_admit for a call of fn:ver (0: active) whose request is not read yet: a front
 * admits a call at its head, so that a caller over its rate or quota is refused before
 * its body is read and parsed, and one within them has spent its token before that work
 * (callers cannot have many bodies parsed at once on one token). A call so admitted is
 * not admitted again. A refusal is recorded with `id` as its request id. Thread-safe;
 * never blocks on I/O. */
int gw_invoke_precheck(gw_gateway *gw, uint64_t id, const char *fn, uint32_t ver, const char *tenant,
                       uint32_t rate_per_s, uint64_t quota_per_day, uint32_t *retry_after_s, aicfn_error *err);

/* Undoes gw_invoke_precheck's admission of a call that then never reached the gateway for
 * the gateway's own reason (its buffers full, it is stopping) or because its client left
 * before its body: no row, and neither its token nor its count today spent. Thread-safe. */
void gw_invoke_unadmit(gw_gateway *gw, const char *tenant, uint32_t rate_per_s, uint64_t quota_per_day);

/* Records a call of fn:ver that a front admitted at its head (gw_invoke_precheck) and then
 * refused for the caller's own fault (`code`: its request does not parse, or does not
 * match the function's signature): its ledger row and its count in aicfn_calls_total.
 * Thread-safe; never blocks on I/O. */
void gw_invoke_refused(gw_gateway *gw, uint64_t id, const char *fn, uint32_t ver, const char *tenant,
                       int code);

/* Forgets cached function resolutions (after deploy, rm, activate). Thread-safe. */
void gw_functions_changed(gw_gateway *gw);

/* After an rm of NAME (version 0: every version) or NAME:VER committed: those versions'
 * metric series are forgotten (gw_stdmetrics_forget), and their queue depth is no
 * longer published once nothing waits in their queue. */
void gw_functions_removed(gw_gateway *gw, const char *name, uint32_t version);

/* Registers a remote worker listening on `addr` (tcp:// or ipc://) under `name` (NULL:
 * generated). The gateway dials it and routes to it once its first status arrives.
 * AICFN_E_EXISTS when a live worker has that address. Thread-safe. */
int gw_register_worker(gw_gateway *gw, const char *name, const char *addr, const char *exit_token,
                       aicfn_error *err);

/* Repository load: makes function `name` (version 0 = active)'s model resident on a
 * worker, routed like an invocation (a worker that has it, one loading it, one with room,
 * or a new one; queued until the function's timeout), with no handler call and no ledger
 * row. Repository unload: evicts it from every worker that has it resident; fails with
 * AICFN_E_UNAVAILABLE naming the worker when it is pinned (calls in flight) or loading.
 * Returns AICFN_OK when started: `done` then runs exactly once (res->reply is NULL;
 * code/message say how it went; for unload it may run before this returns). Otherwise
 * the error, without running done: AICFN_E_NOT_FOUND, AICFN_E_INVALID (no model),
 * AICFN_E_UNAVAILABLE (stopping). Thread-safe. */
int gw_model_load(gw_gateway *gw, const char *name, uint32_t version, gw_invoke_done_fn done, void *user,
                  aicfn_error *err);
int gw_model_unload(gw_gateway *gw, const char *name, uint32_t version, gw_invoke_done_fn done, void *user,
                    aicfn_error *err);

/* True when the gateway runs without API keys (--insecure-local). */
bool gw_insecure_local(const gw_gateway *gw);

/* How long an upload may go without a chunk before the front aborts it (µs). */
uint64_t gw_upload_idle_us(const gw_gateway *gw);

/* The live pool as JSON: [{"name","address","pid","state","device","budget_bytes",
 * "free_bytes","in_flight","spawn_us","models":[{"model","function","version","state",
 * "bytes","pinned","idle_ms"}]}]. New reference, or NULL when out of memory. */
json_t *gw_workers_json(gw_gateway *gw);

/* A short status of the gateway as JSON ({"workers","queued","in_flight",...}). */
json_t *gw_status_json(gw_gateway *gw);

#endif
