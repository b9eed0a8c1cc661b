/* test_metrics.c: the Prometheus registry in gateway/metrics.c: exact exposition text,
 * label escaping, cumulative histogram buckets, registration rules, the cardinality
 * cap, concurrent updates, and `promtool check metrics` on the aicfn metric set. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
// clang-format on

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/tunables.h"
#include "gateway/metrics.h"

static char *render(gw_metrics *m) {
    char *out = NULL;
    size_t len = 0;
    aicfn_error err;
    assert_int_equal(gw_metrics_render(m, &out, &len, &err), AICFN_OK);
    assert_int_equal(strlen(out), len);
    return out;
}

static void counter_and_gauge_text(void **state) {
    (void)state;
    gw_metrics *m = gw_metrics_create();
    const char *lf[] = {"function"};
    gw_metric *c = gw_metrics_counter(m, "x_calls_total", "Calls.", lf, 1, NULL);
    gw_metric *g = gw_metrics_gauge(m, "x_live", "Live\nthings \\ here.", NULL, 0, NULL);
    assert_non_null(c);
    assert_non_null(g);
    const char *b[] = {"b"}, *a[] = {"a"};
    gw_metric_add(c, b, 2);
    gw_metric_add(c, a, 1);
    gw_metric_add(c, a, 0.5);
    gw_metric_add(c, a, -3); /* counters never go down */
    gw_metric_set(g, NULL, 7);
    gw_metric_add(g, NULL, -2);
    gw_metric_set(c, a, 100); /* set is for gauges only */
    assert_true(gw_metric_value(c, a) == 1.5);
    assert_true(gw_metric_value(g, NULL) == 5);
    char *out = render(m);
    const char *want = "# HELP x_calls_total Calls.\n"
                       "# TYPE x_calls_total counter\n"
                       "x_calls_total{function=\"a\"} 1.5\n"
                       "x_calls_total{function=\"b\"} 2\n"
                       "# HELP x_live Live\\nthings \\\\ here.\n"
                       "# TYPE x_live gauge\n"
                       "x_live 5\n";
    assert_memory_equal(out, want, strlen(want));
    free(out);
    gw_metrics_destroy(m);
}

static void label_values_are_escaped(void **state) {
    (void)state;
    gw_metrics *m = gw_metrics_create();
    const char *l[] = {"k", "v"};
    gw_metric *c = gw_metrics_counter(m, "esc_total", "h", l, 2, NULL);
    const char *vals[] = {"a\"b\\c\nd", ""};
    gw_metric_add(c, vals, 1);
    char *out = render(m);
    assert_non_null(strstr(out, "esc_total{k=\"a\\\"b\\\\c\\nd\",v=\"\"} 1\n"));
    free(out);
    gw_metrics_destroy(m);
}

static void histogram_buckets_are_cumulative(void **state) {
    (void)state;
    gw_metrics *m = gw_metrics_create();
    const double bounds[] = {1, 2, 5};
    const char *l[] = {"fn"};
    gw_metric *h = gw_metrics_histogram(m, "lat_seconds", "Latency.", l, 1, bounds, 3, NULL);
    assert_non_null(h);
    const char *v[] = {"mlp"};
    gw_metric_observe(h, v, 0.5);
    gw_metric_observe(h, v, 1); /* le is inclusive */
    gw_metric_observe(h, v, 2);
    gw_metric_observe(h, v, 100);
    gw_metric_add(h, v, 5); /* add is not for histograms */
    assert_true(gw_metric_value(h, v) == 4);
    char *out = render(m);
    const char *want = "# HELP lat_seconds Latency.\n"
                       "# TYPE lat_seconds histogram\n"
                       "lat_seconds_bucket{fn=\"mlp\",le=\"1\"} 2\n"
                       "lat_seconds_bucket{fn=\"mlp\",le=\"2\"} 3\n"
                       "lat_seconds_bucket{fn=\"mlp\",le=\"5\"} 3\n"
                       "lat_seconds_bucket{fn=\"mlp\",le=\"+Inf\"} 4\n"
                       "lat_seconds_sum{fn=\"mlp\"} 103.5\n"
                       "lat_seconds_count{fn=\"mlp\"} 4\n";
    assert_memory_equal(out, want, strlen(want));
    free(out);
    gw_metrics_destroy(m);
}

static void registration_rules(void **state) {
    (void)state;
    gw_metrics *m = gw_metrics_create();
    aicfn_error err;
    const char *l[] = {"a"};
    const char *bad_label[] = {"__x"};
    const char *le[] = {"le"};
    const char *dup[] = {"a", "a"};
    const double b_bad[] = {1, 1};
    const double b_ok[] = {0.1};
    assert_null(gw_metrics_counter(m, "9bad", "", NULL, 0, &err));
    assert_int_equal(err.code, AICFN_E_INVALID);
    assert_null(gw_metrics_counter(m, "bad-name", "", NULL, 0, &err));
    assert_null(gw_metrics_counter(m, "ok_total", "", bad_label, 1, &err));
    assert_null(gw_metrics_counter(m, "ok_total", "", dup, 2, &err));
    assert_null(gw_metrics_histogram(m, "h", "", le, 1, b_ok, 1, &err));
    assert_null(gw_metrics_histogram(m, "h", "", NULL, 0, b_bad, 2, &err));
    assert_null(gw_metrics_histogram(m, "h", "", NULL, 0, NULL, 0, &err));
    gw_metric *c1 = gw_metrics_counter(m, "ok_total", "", l, 1, &err);
    gw_metric *c2 = gw_metrics_counter(m, "ok_total", "", l, 1, &err);
    assert_non_null(c1);
    assert_ptr_equal(c1, c2);
    assert_null(gw_metrics_gauge(m, "ok_total", "", l, 1, &err));
    assert_int_equal(err.code, AICFN_E_EXISTS);
    /* A NULL family or missing values are no-ops, not crashes. */
    gw_metric_add(NULL, NULL, 1);
    gw_metric_add(c1, NULL, 1);
    assert_true(gw_metric_value(c1, NULL) == 0);
    gw_metrics_destroy(m);
    gw_metrics_destroy(NULL);
}

static void cardinality_is_capped(void **state) {
    (void)state;
    gw_metrics *m = gw_metrics_create();
    const char *l[] = {"k"};
    gw_metric *c = gw_metrics_counter(m, "many_total", "", l, 1, NULL);
    char buf[32];
    for (int i = 0; i < AICFN_METRICS_MAX_SERIES + 50; i++) {
        snprintf(buf, sizeof buf, "v%d", i);
        const char *v[] = {buf};
        gw_metric_add(c, v, 1);
    }
    const char *first[] = {"v0"};
    assert_true(gw_metric_value(c, first) == 1);
    snprintf(buf, sizeof buf, "v%d", AICFN_METRICS_MAX_SERIES + 10);
    const char *dropped[] = {buf};
    assert_true(gw_metric_value(c, dropped) == 0);
    char *out = render(m);
    assert_non_null(strstr(out, "aicfn_metrics_dropped_series_total 50\n"));
    free(out);
    /* A long value is truncated, not copied whole. */
    char *longv = malloc(100000);
    memset(longv, 'x', 99999);
    longv[99999] = '\0';
    gw_metric_reset(c);
    const char *lv[] = {longv};
    gw_metric_add(c, lv, 1);
    out = render(m);
    assert_true(strlen(out) < 5000);
    free(out);
    free(longv);
    gw_metrics_destroy(m);
}

typedef struct thr_arg {
    gw_metric *c, *h;
} thr_arg;

static void *thr_main(void *p) {
    thr_arg *a = p;
    const char *v[] = {"f"};
    for (int i = 0; i < 20000; i++) {
        gw_metric_add(a->c, v, 1);
        gw_metric_observe(a->h, v, 0.001 * (i % 7));
    }
    return NULL;
}

static void concurrent_updates_are_exact(void **state) {
    (void)state;
    gw_metrics *m = gw_metrics_create();
    const char *l[] = {"fn"};
    const double b[] = {0.002, 0.004};
    thr_arg a = {gw_metrics_counter(m, "c_total", "", l, 1, NULL),
                 gw_metrics_histogram(m, "h", "", l, 1, b, 2, NULL)};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, thr_main, &a);
    for (int i = 0; i < 4; i++) {
        char *out = render(m);
        free(out);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    const char *v[] = {"f"};
    assert_true(gw_metric_value(a.c, v) == 80000);
    assert_true(gw_metric_value(a.h, v) == 80000);
    gw_metrics_destroy(m);
}

/* Runs promtool on the text; returns its exit status, or -1 when promtool is absent. */
static int promtool_check(const char *text, char *msgs, size_t msgs_len) {
    if (access("/usr/bin/promtool", X_OK) != 0) return -1;
    char path[] = "/tmp/aicfn-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t got = fread(msgs, 1, msgs_len - 1, p);
    msgs[got] = '\0';
    int st = pclose(p);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void stdmetrics_pass_promtool(void **state) {
    (void)state;
    gw_metrics *m = gw_metrics_create();
    gw_stdmetrics s;
    aicfn_error err;
    assert_int_equal(gw_stdmetrics_init(m, &s, &err), AICFN_OK);
    gw_stdmetrics_call(&s, "mlp", 1, AICFN_OK, 1500);
    gw_stdmetrics_call(&s, "mlp", 1, AICFN_E_TIMEOUT, 30000000);
    gw_stdmetrics_call(&s, "echo", 2, AICFN_OK, 200);
    gw_stdmetrics_cold_start(&s, "mlp", 0, 1000, 2000, 300, 400, 4000);
    const char *w[] = {"w1"};
    gw_metric_set(s.resident_models, w, 2);
    gw_metric_set(s.cache_used, w, 123456);
    gw_metric_set(s.cache_budget, w, 1 << 30);
    gw_metric_add(s.evictions, w, 1);
    const char *f[] = {"mlp"};
    gw_metric_add(s.thrash_reloads, f, 1);
    gw_metric_set(s.queue_depth, f, 3);
    gw_metric_set(s.workers_live, NULL, 1);
    const char *h[] = {"infer", "200"};
    gw_metric_add(s.http_requests, h, 1);
    const char *mlp1ok[] = {"mlp", "1", "AICFN_OK"};
    assert_true(gw_metric_value(s.calls, mlp1ok) == 1);
    /* A refused call is counted, but no 0 s duration joins the latency histogram. */
    gw_stdmetrics_refused(&s, "mlp", 1, AICFN_E_QUOTA);
    const char *mlp1q[] = {"mlp", "1", "AICFN_E_QUOTA"}, *mlp[] = {"mlp"};
    assert_true(gw_metric_value(s.calls, mlp1q) == 1);
    assert_true(gw_metric_value(s.call_duration, mlp) == 2);
    const char *phase[] = {"decompress"}, *fetch[] = {"fetch"};
    assert_true(gw_metric_value(s.load_duration, phase) == 1);
    assert_true(gw_metric_value(s.load_duration, fetch) == 1); /* observed even when 0 */
    char *out = render(m);
    assert_non_null(strstr(out, "aicfn_load_duration_seconds_bucket{phase=\"decompress\",le=\"0.005\"} 1\n"));
    assert_non_null(
        strstr(out, "aicfn_calls_total{function=\"mlp\",version=\"1\",status=\"AICFN_E_TIMEOUT\"} 1\n"));
    char msgs[4096];
    int rc = promtool_check(out, msgs, sizeof msgs);
    if (rc == -1) {
        free(out);
        gw_metrics_destroy(m);
        fail_msg("/usr/bin/promtool is missing (scripts/bootstrap.sh installs it)");
    }
    if (rc != 0 || msgs[0] != '\0') fprintf(stderr, "promtool (rc %d): %s\n--\n%s", rc, msgs, out);
    assert_int_equal(rc, 0);
    assert_string_equal(msgs, "");
    /* And promtool does catch a broken exposition: the check can fail. */
    rc = promtool_check("# TYPE x counter\nx{a=\"1\" 2\n", msgs, sizeof msgs);
    assert_int_not_equal(rc, 0);
    free(out);
    gw_metrics_destroy(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counter_and_gauge_text),
        cmocka_unit_test(label_values_are_escaped),
        cmocka_unit_test(histogram_buckets_are_cumulative),
        cmocka_unit_test(registration_rules),
        cmocka_unit_test(cardinality_is_capped),
        cmocka_unit_test(concurrent_updates_are_exact),
        cmocka_unit_test(stdmetrics_pass_promtool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
