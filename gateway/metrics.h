/* metrics.h: a small thread-safe registry of Prometheus counters, gauges and
 * histograms with labels, and its text exposition (format 0.0.4), plus the fixed set
 * of aicfn gateway metrics (gw_stdmetrics) that the gateway updates and GET /metrics
 * serves.
 *
 * Not for: pushing, remote write, or metric types beyond counter/gauge/histogram.
 *
 * Threads: every function may be called concurrently from any thread; one mutex per
 * registry guards all families and series (updates are short: a lookup and an add).
 * Cardinality: each family holds at most AICFN_METRICS_MAX_SERIES label sets; updates
 * that would create more are dropped (and counted in aicfn_metrics_dropped_series_total),
 * so a label fed from untrusted input cannot grow memory without bound. Callers should
 * still only label with validated, registered names (functions, workers). */
#ifndef AICFN_GATEWAY_METRICS_H
#define AICFN_GATEWAY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* A registry of metric families. Opaque; create/destroy pair. */
typedef struct gw_metrics gw_metrics;

/* One metric family (a name, a help text, a type, fixed label names). Owned by its
 * registry: valid until gw_metrics_destroy; never freed separately. */
typedef struct gw_metric gw_metric;

/* Most labels per family. */
#define GW_METRICS_MAX_LABELS 6
/* Most histogram bucket bounds per family (+Inf is implicit and not counted). */
#define GW_METRICS_MAX_BUCKETS 32

/* Creates an empty registry. Returns NULL when out of memory. */
gw_metrics *gw_metrics_create(void);

/* Frees the registry and every family in it. NULL is accepted. Not concurrently with
 * any other call on the same registry. */
void gw_metrics_destroy(gw_metrics *m);

/* Registers a counter, gauge or histogram family. `name` must match
 * [a-zA-Z_:][a-zA-Z0-9_:]* (counters should end in _total); each label name must match
 * [a-zA-Z_][a-zA-Z0-9_]*, not start with "__", and not be "le" for histograms. `help` is
 * any text (escaped on output). Histogram `bounds` must be finite and strictly
 * increasing (1..GW_METRICS_MAX_BUCKETS of them); +Inf is added by the registry.
 * The strings and arrays are copied. Registering the same name twice with the same type
 * and labels returns the existing family; with a different shape it fails.
 * Returns the family, or NULL with `err` set (AICFN_E_INVALID, AICFN_E_EXISTS,
 * AICFN_E_NOMEM). */
gw_metric *gw_metrics_counter(gw_metrics *m, const char *name, const char *help, const char *const *labels,
                              unsigned n_labels, aicfn_error *err);
gw_metric *gw_metrics_gauge(gw_metrics *m, const char *name, const char *help, const char *const *labels,
                            unsigned n_labels, aicfn_error *err);
gw_metric *gw_metrics_histogram(gw_metrics *m, const char *name, const char *help, const char *const *labels,
                                unsigned n_labels, const double *bounds, unsigned n_bounds, aicfn_error *err);

/* Updates the series named by `values` (n_labels strings, in the family's label order;
 * NULL when the family has no labels; any bytes, escaped on output; each truncated to
 * AICFN_MAX_NAME_BYTES). A new label set creates the series at 0 first.
 *  - gw_metric_add: counters (v >= 0; negative or NaN is ignored) and gauges (any v).
 *  - gw_metric_set: gauges only.
 *  - gw_metric_observe: histograms only.
 * A NULL family, the wrong type, or a dropped series is a no-op. Never blocks beyond the
 * registry mutex. */
void gw_metric_add(gw_metric *f, const char *const *values, double v);
void gw_metric_set(gw_metric *f, const char *const *values, double v);
void gw_metric_observe(gw_metric *f, const char *const *values, double v);

/* Removes every series of a family (a gauge refreshed wholesale: resident models per
 * worker, when workers come and go). */
void gw_metric_reset(gw_metric *f);

/* Removes the series whose label values equal `values` where those are not NULL (a
 * NULL entry matches any value): the series of a function that no longer exists. */
void gw_metric_remove_where(gw_metric *f, const char *const *values);

/* Current value of a counter or gauge series, or the _count of a histogram series;
 * 0 when the series does not exist. For tests and for reconciling with the ledger. */
double gw_metric_value(gw_metric *f, const char *const *values);

/* Renders the whole registry in the Prometheus text format 0.0.4: for each family (in
 * registration order) a # HELP and a # TYPE line, then its series sorted by label
 * values; histograms as cumulative _bucket{le="..."} lines ending with le="+Inf", then
 * _sum and _count. On success *out is a NUL-terminated malloc'd string (caller frees)
 * and *len its length. Returns AICFN_OK or AICFN_E_NOMEM. */
int gw_metrics_render(gw_metrics *m, char **out, size_t *len, aicfn_error *err);

/* The content type of gw_metrics_render's output. */
#define GW_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* ---- The aicfn gateway metric set ------------------------------------------------
 * Registered by gw_stdmetrics_init. Names and labels:
 *   aicfn_calls_total{function,version,status}            counter (status: aicfn status name;
 *                                                         function "" and version 0 for a call
 *                                                         to a function the gateway does not know)
 *   aicfn_call_duration_seconds{function}                 histogram (end-to-end at the gateway;
 *                                                         calls refused before running are not in it)
 *   aicfn_cold_starts_total{function}                     counter (model loads: keep-warm preloads
 *                                                         included, calls joining a load not again)
 *   aicfn_load_duration_seconds{phase}                    histogram, phase = fetch|read|decompress|
 *                                                         filter|copy|total (total: the cold start at
 *                                                         the gateway: spawn, queue and init included)
 *   aicfn_resident_models{worker}                         gauge
 *   aicfn_cache_bytes_used{worker}, aicfn_cache_bytes_budget{worker}   gauges
 *   aicfn_evictions_total{worker}                         counter (a worker's series is removed
 *                                                           once it is gone)
 *   aicfn_thrash_reloads_total{function}                  counter (reloaded within 60 s of its eviction)
 *   aicfn_queue_depth{function}                           gauge
 *   aicfn_workers_live                                    gauge
 *   aicfn_worker_restarts_total                           counter
 *   aicfn_http_requests_total{endpoint,code}              counter (the HTTP front, by route kind)
 *   aicfn_ledger_records_dropped_total                    counter (ledger records not written: a
 *                                                         full queue, or submitted while stopping)
 * The pointers stay valid for the registry's life. */
typedef struct gw_stdmetrics {
    gw_metric *calls;
    gw_metric *call_duration;
    gw_metric *cold_starts;
    gw_metric *load_duration;
    gw_metric *resident_models;
    gw_metric *cache_used;
    gw_metric *cache_budget;
    gw_metric *evictions;
    gw_metric *thrash_reloads;
    gw_metric *queue_depth;
    gw_metric *workers_live;
    gw_metric *worker_restarts;
    gw_metric *http_requests;
    gw_metric *response_cache; /* lookups by function and result ("hit", "miss") */
    gw_metric *bundles;        /* bundles sent to workers (docs/protocol.md §9) */
    gw_metric *bundled_calls;  /* calls sent inside them */
    gw_metric *ledger_dropped; /* ledger records never written (gw_ledger_stats.dropped) */
    gw_metric *nng_stuck;      /* NNG closes past their bound (bounded_close_stuck) */
} gw_stdmetrics;

/* Registers the aicfn metric set in `m` and fills `out`. Returns AICFN_OK or an error
 * from registration (out of memory). Call once per registry. */
int gw_stdmetrics_init(gw_metrics *m, gw_stdmetrics *out, aicfn_error *err);

/* Convenience updates for the set (all thread-safe; NULL `s` is a no-op):
 * one finished call (status an aicfn_status, version as a decimal, 0 = unknown). */
void gw_stdmetrics_call(const gw_stdmetrics *s, const char *function, uint32_t version, int status,
                        uint64_t duration_us);

/* One call refused before it ran (rate, quota, overload, back-off): counted in
 * aicfn_calls_total but not observed in aicfn_call_duration_seconds, whose quantiles
 * would otherwise fall toward 0 under a flood of refusals. */
void gw_stdmetrics_refused(const gw_stdmetrics *s, const char *function, uint32_t version, int status);

/* Forgets the series of a removed function (`aicfn rm`): those of version `version`
 * in aicfn_calls_total, or with version 0 (every version removed) every series labelled
 * with the function, as Triton drops an unloaded model's. Keeps the registry's
 * cardinality to what exists: versions come and go with deploys. */
void gw_stdmetrics_forget(const gw_stdmetrics *s, const char *function, uint32_t version);

/* One cold start with its phase durations (µs; a phase the loader did not time is 0
 * and is still observed, so every phase histogram has the same _count). */
void gw_stdmetrics_cold_start(const gw_stdmetrics *s, const char *function, uint64_t fetch_us,
                              uint64_t read_us, uint64_t decompress_us, uint64_t filter_us, uint64_t copy_us,
                              uint64_t total_us);

#endif
