/* metrics.c: the Prometheus registry (counters, gauges, histograms with labels) and
 * its text exposition, format 0.0.4; plus the aicfn gateway metric set.
 *
 * Not for: HTTP serving (gateway/http.c serves the rendered text) or collecting values
 * from workers (the gateway pushes values in as it learns them). */
#include "gateway/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/tunables.h"

typedef enum mt_type { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM } mt_type;

typedef struct mt_series {
    uint64_t hash;
    char **values;     /* n_labels strings */
    double value;      /* counter/gauge value; histogram sum */
    uint64_t count;    /* histogram observations */
    uint64_t *buckets; /* histogram: n_bounds + 1 non-cumulative counts (last is +Inf) */
} mt_series;

struct gw_metric {
    gw_metrics *reg;
    char *name;
    char *help;
    mt_type type;
    unsigned n_labels;
    char *labels[GW_METRICS_MAX_LABELS];
    unsigned n_bounds;
    double bounds[GW_METRICS_MAX_BUCKETS];
    mt_series *series;
    size_t n_series, cap_series;
    int warned_full;
};

struct gw_metrics {
    pthread_mutex_t mu;
    gw_metric **fams;
    size_t n_fams, cap_fams;
    double dropped; /* updates refused for cardinality */
};

gw_metrics *gw_metrics_create(void) {
    gw_metrics *m = calloc(1, sizeof *m);
    if (m == NULL) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void mt_series_free(const gw_metric *f, mt_series *s) {
    for (unsigned i = 0; i < f->n_labels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->buckets);
}

static void mt_family_free(gw_metric *f) {
    if (f == NULL) return;
    for (size_t i = 0; i < f->n_series; i++)
        mt_series_free(f, &f->series[i]);
    free(f->series);
    for (unsigned i = 0; i < f->n_labels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    free(f);
}

void gw_metrics_destroy(gw_metrics *m) {
    if (m == NULL) return;
    for (size_t i = 0; i < m->n_fams; i++)
        mt_family_free(m->fams[i]);
    free(m->fams);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static int mt_valid_name(const char *s, int allow_colon) {
    if (s == NULL || s[0] == '\0' || strlen(s) > 200) return 0;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':') ||
                 (i > 0 && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

static gw_metric *mt_register(gw_metrics *m, mt_type type, const char *name, const char *help,
                              const char *const *labels, unsigned n_labels, const double *bounds,
                              unsigned n_bounds, aicfn_error *err) {
    if (m == NULL) {
        aicfn_error_set(err, AICFN_E_INVALID, "metrics: no registry");
        return NULL;
    }
    if (!mt_valid_name(name, 1)) {
        aicfn_error_set(err, AICFN_E_INVALID, "metrics: invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    if (n_labels > GW_METRICS_MAX_LABELS || (n_labels > 0 && labels == NULL)) {
        aicfn_error_set(err, AICFN_E_INVALID, "metrics: %s: too many labels (%u, at most %d)", name, n_labels,
                        GW_METRICS_MAX_LABELS);
        return NULL;
    }
    for (unsigned i = 0; i < n_labels; i++) {
        if (!mt_valid_name(labels[i], 0) || strncmp(labels[i], "__", 2) == 0 ||
            (type == MT_HISTOGRAM && strcmp(labels[i], "le") == 0)) {
            aicfn_error_set(err, AICFN_E_INVALID, "metrics: %s: invalid label name '%s'", name,
                            labels[i] ? labels[i] : "(null)");
            return NULL;
        }
        for (unsigned j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0) {
                aicfn_error_set(err, AICFN_E_INVALID, "metrics: %s: label '%s' repeated", name, labels[i]);
                return NULL;
            }
    }
    if (type == MT_HISTOGRAM) {
        if (n_bounds == 0 || n_bounds > GW_METRICS_MAX_BUCKETS || bounds == NULL) {
            aicfn_error_set(err, AICFN_E_INVALID, "metrics: %s: histogram needs 1..%d bucket bounds", name,
                            GW_METRICS_MAX_BUCKETS);
            return NULL;
        }
        for (unsigned i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
                aicfn_error_set(err, AICFN_E_INVALID,
                                "metrics: %s: bucket bounds must be finite and strictly increasing", name);
                return NULL;
            }
    } else {
        n_bounds = 0;
    }

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n_fams; i++) {
        gw_metric *f = m->fams[i];
        if (strcmp(f->name, name) != 0) continue;
        int same = f->type == type && f->n_labels == n_labels && f->n_bounds == n_bounds;
        for (unsigned j = 0; same && j < n_labels; j++)
            same = strcmp(f->labels[j], labels[j]) == 0;
        for (unsigned j = 0; same && j < n_bounds; j++)
            same = f->bounds[j] == bounds[j];
        pthread_mutex_unlock(&m->mu);
        if (same) return f;
        aicfn_error_set(err, AICFN_E_EXISTS, "metrics: %s is already registered with another type or labels",
                        name);
        return NULL;
    }
    gw_metric *f = calloc(1, sizeof *f);
    if (f == NULL) goto nomem;
    f->reg = m;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (f->name == NULL || f->help == NULL) goto nomem;
    for (unsigned i = 0; i < n_labels; i++) {
        f->labels[i] = strdup(labels[i]);
        if (f->labels[i] == NULL) goto nomem;
        f->n_labels = i + 1;
    }
    f->n_bounds = n_bounds;
    if (n_bounds) memcpy(f->bounds, bounds, n_bounds * sizeof bounds[0]);
    if (m->n_fams == m->cap_fams) {
        size_t cap = m->cap_fams ? m->cap_fams * 2 : 16;
        gw_metric **nf = realloc(m->fams, cap * sizeof *nf);
        if (nf == NULL) goto nomem;
        m->fams = nf;
        m->cap_fams = cap;
    }
    m->fams[m->n_fams++] = f;
    pthread_mutex_unlock(&m->mu);
    return f;
nomem:
    pthread_mutex_unlock(&m->mu);
    mt_family_free(f);
    aicfn_error_set(err, AICFN_E_NOMEM, "metrics: out of memory registering %s", name);
    return NULL;
}

gw_metric *gw_metrics_counter(gw_metrics *m, const char *name, const char *help, const char *const *labels,
                              unsigned n_labels, aicfn_error *err) {
    return mt_register(m, MT_COUNTER, name, help, labels, n_labels, NULL, 0, err);
}

gw_metric *gw_metrics_gauge(gw_metrics *m, const char *name, const char *help, const char *const *labels,
                            unsigned n_labels, aicfn_error *err) {
    return mt_register(m, MT_GAUGE, name, help, labels, n_labels, NULL, 0, err);
}

gw_metric *gw_metrics_histogram(gw_metrics *m, const char *name, const char *help, const char *const *labels,
                                unsigned n_labels, const double *bounds, unsigned n_bounds,
                                aicfn_error *err) {
    return mt_register(m, MT_HISTOGRAM, name, help, labels, n_labels, bounds, n_bounds, err);
}

static size_t mt_value_len(const char *v) {
    if (v == NULL) return 0;
    size_t n = strnlen(v, AICFN_MAX_NAME_BYTES);
    return n;
}

static uint64_t mt_hash(const gw_metric *f, const char *const *values) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (unsigned i = 0; i < f->n_labels; i++) {
        const char *v = values[i] ? values[i] : "";
        size_t n = mt_value_len(v);
        for (size_t j = 0; j < n; j++)
            h = (h ^ (unsigned char)v[j]) * 1099511628211ull;
        h = (h ^ 0xffu) * 1099511628211ull; /* separator: ("a","b") != ("ab","") */
    }
    return h;
}

static int mt_equal(const gw_metric *f, const mt_series *s, const char *const *values) {
    for (unsigned i = 0; i < f->n_labels; i++) {
        const char *v = values[i] ? values[i] : "";
        size_t n = mt_value_len(v);
        if (strlen(s->values[i]) != n || memcmp(s->values[i], v, n) != 0) return 0;
    }
    return 1;
}

/* Finds or creates a series; called with the registry mutex held. NULL when dropped. */
static mt_series *mt_find(gw_metric *f, const char *const *values, int create) {
    if (f->n_labels > 0 && values == NULL) return NULL;
    uint64_t h = mt_hash(f, values);
    for (size_t i = 0; i < f->n_series; i++)
        if (f->series[i].hash == h && mt_equal(f, &f->series[i], values)) return &f->series[i];
    if (!create) return NULL;
    if (f->n_series >= AICFN_METRICS_MAX_SERIES) {
        f->reg->dropped += 1;
        if (!f->warned_full) {
            f->warned_full = 1;
            log_warn("metrics: %s has %d label sets; dropping updates for new ones", f->name,
                     AICFN_METRICS_MAX_SERIES);
        }
        return NULL;
    }
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 8;
        mt_series *ns = realloc(f->series, cap * sizeof *ns);
        if (ns == NULL) return NULL;
        f->series = ns;
        f->cap_series = cap;
    }
    mt_series s = {.hash = h};
    if (f->n_labels) {
        s.values = calloc(f->n_labels, sizeof *s.values);
        if (s.values == NULL) return NULL;
        for (unsigned i = 0; i < f->n_labels; i++) {
            const char *v = values[i] ? values[i] : "";
            s.values[i] = strndup(v, mt_value_len(v));
            if (s.values[i] == NULL) {
                mt_series_free(f, &s);
                return NULL;
            }
        }
    }
    if (f->type == MT_HISTOGRAM) {
        s.buckets = calloc(f->n_bounds + 1, sizeof *s.buckets);
        if (s.buckets == NULL) {
            mt_series_free(f, &s);
            return NULL;
        }
    }
    f->series[f->n_series] = s;
    return &f->series[f->n_series++];
}

void gw_metric_add(gw_metric *f, const char *const *values, double v) {
    if (f == NULL || f->type == MT_HISTOGRAM || isnan(v)) return;
    if (f->type == MT_COUNTER && v < 0) return;
    pthread_mutex_lock(&f->reg->mu);
    mt_series *s = mt_find(f, values, 1);
    if (s) s->value += v;
    pthread_mutex_unlock(&f->reg->mu);
}

void gw_metric_set(gw_metric *f, const char *const *values, double v) {
    if (f == NULL || f->type != MT_GAUGE) return;
    pthread_mutex_lock(&f->reg->mu);
    mt_series *s = mt_find(f, values, 1);
    if (s) s->value = v;
    pthread_mutex_unlock(&f->reg->mu);
}

void gw_metric_observe(gw_metric *f, const char *const *values, double v) {
    if (f == NULL || f->type != MT_HISTOGRAM || isnan(v)) return;
    pthread_mutex_lock(&f->reg->mu);
    mt_series *s = mt_find(f, values, 1);
    if (s) {
        unsigned b = 0;
        while (b < f->n_bounds && v > f->bounds[b])
            b++;
        s->buckets[b]++;
        s->count++;
        s->value += v;
    }
    pthread_mutex_unlock(&f->reg->mu);
}

void gw_metric_reset(gw_metric *f) {
    if (f == NULL) return;
    pthread_mutex_lock(&f->reg->mu);
    for (size_t i = 0; i < f->n_series; i++)
        mt_series_free(f, &f->series[i]);
    f->n_series = 0;
    pthread_mutex_unlock(&f->reg->mu);
}

void gw_metric_remove_where(gw_metric *f, const char *const *values) {
    if (f == NULL || values == NULL) return;
    pthread_mutex_lock(&f->reg->mu);
    size_t kept = 0;
    for (size_t i = 0; i < f->n_series; i++) {
        bool match = true;
        for (unsigned k = 0; k < f->n_labels && match; k++)
            match = values[k] == NULL || strcmp(f->series[i].values[k], values[k]) == 0;
        if (match)
            mt_series_free(f, &f->series[i]);
        else
            f->series[kept++] = f->series[i];
    }
    f->n_series = kept;
    pthread_mutex_unlock(&f->reg->mu);
}

double gw_metric_value(gw_metric *f, const char *const *values) {
    if (f == NULL) return 0;
    pthread_mutex_lock(&f->reg->mu);
    mt_series *s = mt_find(f, values, 0);
    double v = s == NULL ? 0 : f->type == MT_HISTOGRAM ? (double)s->count : s->value;
    pthread_mutex_unlock(&f->reg->mu);
    return v;
}

/* ---- Exposition ---- */

typedef struct mt_buf {
    char *p;
    size_t len, cap;
    int failed;
} mt_buf;

static void mt_reserve(mt_buf *b, size_t more) {
    if (b->failed || b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL) {
        b->failed = 1;
        return;
    }
    b->p = np;
    b->cap = cap;
}

static void mt_put(mt_buf *b, const char *s, size_t n) {
    mt_reserve(b, n);
    if (b->failed) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void mt_puts(mt_buf *b, const char *s) {
    mt_put(b, s, strlen(s));
}

/* Escapes per the text format: label values escape \, " and newline; HELP text escapes
 * \ and newline. */
static void mt_put_escaped(mt_buf *b, const char *s, int quote) {
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            mt_put(b, "\\\\", 2);
        else if (*p == '\n')
            mt_put(b, "\\n", 2);
        else if (quote && *p == '"')
            mt_put(b, "\\\"", 2);
        else
            mt_put(b, p, 1);
    }
}

/* Shortest text that reads back as the same double; Prometheus spellings for the rest. */
static void mt_format_double(char *out, size_t n, double v) {
    if (isnan(v))
        snprintf(out, n, "NaN");
    else if (isinf(v))
        snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
    else {
        snprintf(out, n, "%.15g", v);
        if (strtod(out, NULL) != v) snprintf(out, n, "%.17g", v);
    }
}

static void mt_put_double(mt_buf *b, double v) {
    char tmp[64];
    mt_format_double(tmp, sizeof tmp, v);
    mt_puts(b, tmp);
}

static void mt_put_labels(mt_buf *b, const gw_metric *f, const mt_series *s, const char *le) {
    if (f->n_labels == 0 && le == NULL) return;
    mt_put(b, "{", 1);
    for (unsigned i = 0; i < f->n_labels; i++) {
        if (i) mt_put(b, ",", 1);
        mt_puts(b, f->labels[i]);
        mt_put(b, "=\"", 2);
        mt_put_escaped(b, s->values[i], 1);
        mt_put(b, "\"", 1);
    }
    if (le) {
        if (f->n_labels) mt_put(b, ",", 1);
        mt_put(b, "le=\"", 4);
        mt_puts(b, le);
        mt_put(b, "\"", 1);
    }
    mt_put(b, "}", 1);
}

static int mt_cmp_series(const void *a, const void *b, void *arg) {
    const mt_series *x = *(const mt_series *const *)a, *y = *(const mt_series *const *)b;
    unsigned n_labels = *(const unsigned *)arg;
    for (unsigned i = 0; i < n_labels; i++) {
        int c = strcmp(x->values[i], y->values[i]);
        if (c) return c;
    }
    return 0;
}

static void mt_render_family(mt_buf *b, gw_metric *f) {
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    mt_puts(b, "# HELP ");
    mt_puts(b, f->name);
    mt_put(b, " ", 1);
    mt_put_escaped(b, f->help, 0);
    mt_puts(b, "\n# TYPE ");
    mt_puts(b, f->name);
    mt_put(b, " ", 1);
    mt_puts(b, type_names[f->type]);
    mt_put(b, "\n", 1);
    if (f->n_series == 0) return;
    mt_series **order = malloc(f->n_series * sizeof *order);
    if (order == NULL) {
        b->failed = 1;
        return;
    }
    for (size_t i = 0; i < f->n_series; i++)
        order[i] = &f->series[i];
    qsort_r(order, f->n_series, sizeof *order, mt_cmp_series, &f->n_labels);
    for (size_t i = 0; i < f->n_series; i++) {
        const mt_series *s = order[i];
        if (f->type != MT_HISTOGRAM) {
            mt_puts(b, f->name);
            mt_put_labels(b, f, s, NULL);
            mt_put(b, " ", 1);
            mt_put_double(b, s->value);
            mt_put(b, "\n", 1);
            continue;
        }
        uint64_t cum = 0;
        for (unsigned k = 0; k <= f->n_bounds; k++) {
            char le[64];
            if (k < f->n_bounds)
                mt_format_double(le, sizeof le, f->bounds[k]);
            else
                snprintf(le, sizeof le, "+Inf");
            cum += s->buckets[k];
            mt_puts(b, f->name);
            mt_puts(b, "_bucket");
            mt_put_labels(b, f, s, le);
            mt_put(b, " ", 1);
            mt_put_double(b, (double)cum);
            mt_put(b, "\n", 1);
        }
        mt_puts(b, f->name);
        mt_puts(b, "_sum");
        mt_put_labels(b, f, s, NULL);
        mt_put(b, " ", 1);
        mt_put_double(b, s->value);
        mt_puts(b, "\n");
        mt_puts(b, f->name);
        mt_puts(b, "_count");
        mt_put_labels(b, f, s, NULL);
        mt_put(b, " ", 1);
        mt_put_double(b, (double)s->count);
        mt_puts(b, "\n");
    }
    free(order);
}

int gw_metrics_render(gw_metrics *m, char **out, size_t *len, aicfn_error *err) {
    mt_buf b = {0};
    mt_reserve(&b, 0);
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n_fams; i++)
        mt_render_family(&b, m->fams[i]);
    double dropped = m->dropped;
    pthread_mutex_unlock(&m->mu);
    mt_puts(&b, "# HELP aicfn_metrics_dropped_series_total Metric updates refused because a family reached "
                "its label-set limit.\n# TYPE aicfn_metrics_dropped_series_total counter\n"
                "aicfn_metrics_dropped_series_total ");
    mt_put_double(&b, dropped);
    mt_puts(&b, "\n");
    if (b.failed) {
        free(b.p);
        return aicfn_error_set(err, AICFN_E_NOMEM, "metrics: out of memory rendering the exposition");
    }
    *out = b.p;
    if (len) *len = b.len;
    return AICFN_OK;
}

/* ---- The aicfn metric set ---- */

int gw_stdmetrics_init(gw_metrics *m, gw_stdmetrics *s, aicfn_error *err) {
    static const double call_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
    static const double load_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                         1,     2.5,   5,    10,    30,   60,  120};
    static const char *const l_fvs[] = {"function", "version", "status"};
    static const char *const l_f[] = {"function"};
    static const char *const l_phase[] = {"phase"};
    static const char *const l_w[] = {"worker"};
    static const char *const l_http[] = {"endpoint", "code"};
    static const char *const l_fr[] = {"function", "result"};
    memset(s, 0, sizeof *s);
    if (!(s->calls = gw_metrics_counter(m, "aicfn_calls_total",
                                        "Calls finished at the gateway, by function, version "
                                        "and aicfn status.",
                                        l_fvs, 3, err)) ||
        !(s->call_duration = gw_metrics_histogram(
              m, "aicfn_call_duration_seconds", "End-to-end call duration at the gateway.", l_f, 1,
              call_bounds, sizeof call_bounds / sizeof call_bounds[0], err)) ||
        !(s->cold_starts = gw_metrics_counter(m, "aicfn_cold_starts_total",
                                              "Model loads for the function (cold starts; keep-warm preloads included, calls joining a load "
                                              "in progress not counted again).", l_f, 1, err)) ||
        !(s->load_duration = gw_metrics_histogram(
              m, "aicfn_load_duration_seconds",
              "Model load time by phase (fetch, read, decompress, filter, copy; total: the cold start at the "
              "gateway, spawn, queue and init included).", l_phase, 1,
              load_bounds, sizeof load_bounds / sizeof load_bounds[0], err)) ||
        !(s->resident_models = gw_metrics_gauge(m, "aicfn_resident_models",
                                                "Models resident in each worker's cache.", l_w, 1, err)) ||
        !(s->cache_used = gw_metrics_gauge(m, "aicfn_cache_bytes_used",
                                           "Model cache bytes in use per worker.", l_w, 1, err)) ||
        !(s->cache_budget = gw_metrics_gauge(m, "aicfn_cache_bytes_budget",
                                             "Model cache byte budget per worker.", l_w, 1, err)) ||
        !(s->evictions = gw_metrics_counter(m, "aicfn_evictions_total",
                                            "Models evicted from a worker's cache.", l_w, 1, err)) ||
        !(s->thrash_reloads =
              gw_metrics_counter(m, "aicfn_thrash_reloads_total",
                                 "Models reloaded within 60 s of their eviction.", l_f, 1, err)) ||
        !(s->queue_depth =
              gw_metrics_gauge(m, "aicfn_queue_depth", "Calls queued per function.", l_f, 1, err)) ||
        !(s->workers_live =
              gw_metrics_gauge(m, "aicfn_workers_live", "Workers registered and alive.", NULL, 0, err)) ||
        !(s->worker_restarts = gw_metrics_counter(m, "aicfn_worker_restarts_total",
                                                  "Local workers restarted after dying.", NULL, 0, err)) ||
        !(s->http_requests =
              gw_metrics_counter(m, "aicfn_http_requests_total",
                                 "HTTP requests by endpoint kind and status code.", l_http, 2, err)) ||
        !(s->response_cache = gw_metrics_counter(
              m, "aicfn_response_cache_lookups_total",
              "Response cache lookups of functions with cache.responses, by result (hit, miss).", l_fr, 2,
              err)) ||
        !(s->bundles = gw_metrics_counter(m, "aicfn_worker_bundles_total",
                                          "Bundles (several calls of short functions in one message) sent "
                                          "to workers.",
                                          NULL, 0, err)) ||
        !(s->bundled_calls = gw_metrics_counter(m, "aicfn_worker_bundled_calls_total",
                                                "Calls sent to workers inside bundles.", NULL, 0, err)) ||
        !(s->ledger_dropped =
              gw_metrics_counter(m, "aicfn_ledger_records_dropped_total",
                                 "Invocation and cold-start records never written to the "
                                 "ledger (queue full: a stalled disk; or the gateway stopping).",
                                 NULL, 0, err)) ||
        !(s->nng_stuck = gw_metrics_counter(m, "aicfn_nng_stuck_closes_total",
                                            "NNG socket closes in the gateway process that did not return "
                                            "within their bound (NNG 1.5.2's reaper deadlock, nng #1813); "
                                            "above 0, /v2/health/live fails: restart the gateway.",
                                            NULL, 0, err)))
        return err ? err->code : AICFN_E_NOMEM;
    /* Unlabelled families show a sample from the start. */
    gw_metric_set(s->workers_live, NULL, 0);
    gw_metric_add(s->worker_restarts, NULL, 0);
    gw_metric_add(s->bundles, NULL, 0);
    gw_metric_add(s->bundled_calls, NULL, 0);
    gw_metric_add(s->ledger_dropped, NULL, 0);
    gw_metric_add(s->nng_stuck, NULL, 0);
    return AICFN_OK;
}

void gw_stdmetrics_call(const gw_stdmetrics *s, const char *function, uint32_t version, int status,
                        uint64_t duration_us) {
    if (s == NULL || function == NULL) return;
    char ver[16];
    snprintf(ver, sizeof ver, "%u", (unsigned)version);
    const char *l3[] = {function, ver, aicfn_status_name(status)};
    gw_metric_add(s->calls, l3, 1);
    const char *l1[] = {function};
    gw_metric_observe(s->call_duration, l1, (double)duration_us / 1e6);
}

void gw_stdmetrics_refused(const gw_stdmetrics *s, const char *function, uint32_t version, int status) {
    if (s == NULL || function == NULL) return;
    char ver[16];
    snprintf(ver, sizeof ver, "%u", (unsigned)version);
    const char *l3[] = {function, ver, aicfn_status_name(status)};
    gw_metric_add(s->calls, l3, 1);
}

void gw_stdmetrics_forget(const gw_stdmetrics *s, const char *function, uint32_t version) {
    if (s == NULL || function == NULL) return;
    char ver[16];
    snprintf(ver, sizeof ver, "%u", (unsigned)version);
    const char *calls[] = {function, version ? ver : NULL, NULL};
    gw_metric_remove_where(s->calls, calls);
    if (version) return;
    const char *fn[] = {function, NULL};
    gw_metric_remove_where(s->call_duration, fn);
    gw_metric_remove_where(s->cold_starts, fn);
    gw_metric_remove_where(s->thrash_reloads, fn);
    gw_metric_remove_where(s->queue_depth, fn);
    gw_metric_remove_where(s->response_cache, fn);
}

void gw_stdmetrics_cold_start(const gw_stdmetrics *s, const char *function, uint64_t fetch_us,
                              uint64_t read_us, uint64_t decompress_us, uint64_t filter_us, uint64_t copy_us,
                              uint64_t total_us) {
    if (s == NULL || function == NULL) return;
    const char *l1[] = {function};
    gw_metric_add(s->cold_starts, l1, 1);
    const char *phases[] = {"fetch", "read", "decompress", "filter", "copy", "total"};
    uint64_t us[] = {fetch_us, read_us, decompress_us, filter_us, copy_us, total_us};
    for (int i = 0; i < 6; i++) {
        const char *lp[] = {phases[i]};
        gw_metric_observe(s->load_duration, lp, (double)us[i] / 1e6);
    }
}
