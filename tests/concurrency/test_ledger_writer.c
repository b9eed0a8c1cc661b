/* test_ledger_writer.c: many threads submitting to one ledger while readers query it;
 * every accepted record is committed exactly once, counts are exact, and close flushes.
 * Also run under ThreadSanitizer. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/ledger.h"
#include "test_db_util.h"

#define THREADS 8
#define PER_THREAD 1250 /* 10,000 records in all */

typedef struct sub_arg {
    gw_ledger *l;
    int id;
    int failures;
} sub_arg;

static void *submitter(void *p) {
    sub_arg *a = p;
    char tenant[32], rid[48];
    snprintf(tenant, sizeof tenant, "tenant%d", a->id);
    for (int i = 0; i < PER_THREAD; i++) {
        snprintf(rid, sizeof rid, "t%d-%d", a->id, i);
        if (i % 50 == 0) {
            gw_cold_start_record c = {
                .function = "mlp", .version = 1, .worker = tenant, .device = "host", .total_us = (uint64_t)i};
            if (gw_ledger_submit_cold_start(a->l, &c) != AICFN_OK) a->failures++;
        }
        gw_invocation_record r = {.request_id = rid,
                                  .tenant = tenant,
                                  .function = i % 2 ? "mlp" : "echo",
                                  .version = 1,
                                  .status = AICFN_OK,
                                  .batch_size = 1 + (uint32_t)(i % 4),
                                  .exec_us = (uint64_t)i,
                                  .total_us = (uint64_t)i + 5};
        if (gw_ledger_submit_invocation(a->l, &r) != AICFN_OK) a->failures++;
    }
    return NULL;
}

typedef struct reader_arg {
    const char *dir;
    volatile int *stop;
    int queries;
    int failures;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    gw_db *db = NULL;
    if (gw_db_open(a->dir, &db, NULL) != AICFN_OK) {
        a->failures++;
        return NULL;
    }
    while (!__atomic_load_n(a->stop, __ATOMIC_ACQUIRE) && a->queries < 10000) {
        gw_usage_row *rows = NULL, total;
        size_t n = 0;
        aicfn_error err;
        if (gw_ledger_usage(db, NULL, 0, &rows, &n, &total, &err) != AICFN_OK) a->failures++;
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += rows[i].calls;
        if (sum != total.calls) a->failures++; /* same snapshot */
        free(rows);
        a->queries++;
        usleep(2000);
    }
    gw_db_close(db);
    return NULL;
}

static void many_threads_all_committed(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("ledw");
    gw_ledger *l = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_ledger_create(dir, 0, 0, 0, &l, &err), AICFN_OK);
    volatile int stop = 0;
    reader_arg ra = {.dir = dir, .stop = &stop};
    pthread_t rt;
    assert_int_equal(pthread_create(&rt, NULL, reader, &ra), 0);
    pthread_t th[THREADS];
    sub_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (sub_arg){.l = l, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, submitter, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    gw_ledger_stats s;
    gw_ledger_get_stats(l, &s);
    const uint64_t cold_per_thread = (PER_THREAD + 49) / 50;
    assert_int_equal(s.submitted, THREADS * (PER_THREAD + cold_per_thread));
    assert_int_equal(s.dropped, 0);
    gw_ledger_destroy(l); /* flushes everything */
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(rt, NULL);
    assert_int_equal(ra.failures, 0);
    assert_true(ra.queries > 0);

    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    gw_usage_row *rows = NULL, total;
    size_t n = 0;
    assert_int_equal(gw_ledger_usage(db, NULL, 0, &rows, &n, &total, &err), AICFN_OK);
    assert_int_equal(total.calls, THREADS * PER_THREAD);
    assert_int_equal(n, THREADS * 2);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(rows[i].calls, PER_THREAD / 2);
    free(rows);
    /* Each request id exactly once. */
    sqlite3_stmt *st = NULL;
    gw_db_lock(db);
    assert_int_equal(gw_db_stmt(db, "SELECT count(DISTINCT request_id) FROM invocations", &st, NULL),
                     AICFN_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), THREADS * PER_THREAD);
    gw_db_done(st);
    gw_db_unlock(db);
    gw_coldstart_summary *cs = NULL;
    assert_int_equal(gw_ledger_coldstarts(db, "mlp", 0, &cs, &n, &err), AICFN_OK);
    assert_int_equal(n, 1);
    assert_int_equal(cs[0].count, THREADS * cold_per_thread);
    free(cs);
    assert_int_equal(gw_db_integrity_check(db, &err), AICFN_OK);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

typedef struct flush_arg {
    gw_ledger *l;
    int failures;
} flush_arg;

static void *flusher(void *p) {
    flush_arg *a = p;
    for (int i = 0; i < 50; i++) {
        gw_invocation_record r = {.tenant = "f", .function = "fn", .version = 1};
        if (gw_ledger_submit_invocation(a->l, &r) != AICFN_OK) a->failures++;
        /* Every record submitted before the flush (ours and the other threads') is
         * committed when it returns (nothing is dropped here). */
        gw_ledger_stats before, after;
        gw_ledger_get_stats(a->l, &before);
        if (gw_ledger_flush(a->l, 10000, NULL) != AICFN_OK) a->failures++;
        gw_ledger_get_stats(a->l, &after);
        if (after.committed < before.submitted) a->failures++;
    }
    return NULL;
}

static void concurrent_flushes(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("ledf");
    gw_ledger *l = NULL;
    assert_int_equal(gw_ledger_create(dir, 1000, 0, 0, &l, NULL), AICFN_OK);
    pthread_t th[4];
    flush_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (flush_arg){.l = l};
        assert_int_equal(pthread_create(&th[i], NULL, flusher, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].failures, 0);
    }
    gw_ledger_stats s;
    gw_ledger_get_stats(l, &s);
    assert_int_equal(s.committed, 200);
    gw_ledger_destroy(l);
    tdb_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(many_threads_all_committed),
        cmocka_unit_test(concurrent_flushes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
