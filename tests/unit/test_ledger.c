/* test_ledger.c: the ledger writer (records committed, flush on close, full queue
 * drops and counts), gpu_us rounding, coldstart percentiles on known data, usage
 * totals equal to raw SQL sums exactly, and the workers table's rows (UPSERT in submit
 * order, lost-marking and local numbering at a gateway's start). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "common/clock.h"
#include "gateway/ledger.h"
#include "test_db_util.h"

static int64_t sql_int(gw_db *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    gw_db_lock(db);
    assert_int_equal(gw_db_stmt(db, sql, &st, NULL), AICFN_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    gw_db_done(st);
    gw_db_unlock(db);
    return v;
}

static void gpu_us_rounding(void **state) {
    (void)state;
    assert_int_equal(gw_ledger_gpu_us(1000, 1), 1000);
    assert_int_equal(gw_ledger_gpu_us(1000, 0), 1000);
    assert_int_equal(gw_ledger_gpu_us(1000, 4), 250);
    assert_int_equal(gw_ledger_gpu_us(1000, 3), 334); /* rounded up */
    assert_int_equal(gw_ledger_gpu_us(1, 32), 1);     /* never 0 for a call that ran */
    assert_int_equal(gw_ledger_gpu_us(0, 8), 0);
}

static void coldstart_percentiles(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    gw_ledger *l = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_ledger_create(dir, 10, 0, 0, &l, &err), AICFN_OK);
    /* 20 cold starts of "mlp": total_us = 1..20 ms, read = 100 × i; 3 of "echo". */
    for (int i = 1; i <= 20; i++) {
        const char *ev[] = {"old:1", "older:2"};
        gw_cold_start_record r = {.time_us = 1000000 + (uint64_t)i,
                                  .function = "mlp",
                                  .version = 1,
                                  .worker = "w1",
                                  .device = "host",
                                  .compressed_bytes = 10,
                                  .raw_bytes = 40,
                                  .spawn_us = 7,
                                  .fetch_us = 50u * (uint64_t)i,
                                  .read_us = 100u * (uint64_t)(21 - i), /* reversed order */
                                  .total_us = 1000u * (uint64_t)i,
                                  .evicted = ev,
                                  .n_evicted = i == 1 ? 2 : 0};
        assert_int_equal(gw_ledger_submit_cold_start(l, &r), AICFN_OK);
    }
    for (int i = 1; i <= 3; i++) {
        gw_cold_start_record r = {
            .time_us = 5, .function = "echo", .worker = "w2", .device = "host", .total_us = (uint64_t)i};
        assert_int_equal(gw_ledger_submit_cold_start(l, &r), AICFN_OK);
    }
    assert_int_equal(gw_ledger_flush(l, 5000, &err), AICFN_OK);
    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    gw_coldstart_summary *s = NULL;
    size_t n = 0;
    assert_int_equal(gw_ledger_coldstarts(db, NULL, 0, &s, &n, &err), AICFN_OK);
    assert_int_equal(n, 2);
    assert_string_equal(s[0].function, "echo");
    assert_int_equal(s[0].count, 3);
    assert_int_equal(s[0].phase[GW_PHASE_TOTAL].p50_us, 2); /* rank ceil(1.5) = 2 */
    assert_int_equal(s[0].phase[GW_PHASE_TOTAL].p95_us, 3);
    assert_string_equal(s[1].function, "mlp");
    assert_int_equal(s[1].count, 20);
    /* nearest rank: p50 -> rank 10, p95 -> rank 19 */
    assert_int_equal(s[1].phase[GW_PHASE_TOTAL].p50_us, 10000);
    assert_int_equal(s[1].phase[GW_PHASE_TOTAL].p95_us, 19000);
    assert_int_equal(s[1].phase[GW_PHASE_TOTAL].max_us, 20000);
    assert_int_equal(s[1].phase[GW_PHASE_READ].p50_us, 1000);
    assert_int_equal(s[1].phase[GW_PHASE_READ].p95_us, 1900);
    assert_int_equal(s[1].phase[GW_PHASE_READ].max_us, 2000);
    assert_int_equal(s[1].phase[GW_PHASE_SPAWN].p50_us, 7);
    assert_int_equal(s[1].phase[GW_PHASE_FETCH].p50_us, 500);
    assert_int_equal(s[1].phase[GW_PHASE_FETCH].max_us, 1000);
    assert_int_equal(s[0].phase[GW_PHASE_FETCH].max_us, 0);
    assert_int_equal(s[1].compressed_bytes, 200);
    assert_int_equal(s[1].raw_bytes, 800);
    json_t *j = gw_coldstarts_to_json(s, n);
    assert_non_null(j);
    json_t *tot = json_object_get(json_object_get(json_array_get(j, 1), "phases"), "total");
    assert_int_equal(json_integer_value(json_object_get(tot, "p95_us")), 19000);
    json_t *fetch = json_object_get(json_object_get(json_array_get(j, 1), "phases"), "fetch");
    assert_int_equal(json_integer_value(json_object_get(fetch, "p95_us")), 950);
    json_decref(j);
    free(s);
    /* --since and a function filter. */
    assert_int_equal(gw_ledger_coldstarts(db, "mlp", 1000000 + 11, &s, &n, &err), AICFN_OK);
    assert_int_equal(n, 1);
    assert_int_equal(s[0].count, 10);
    assert_int_equal(s[0].phase[GW_PHASE_TOTAL].p50_us, 15000);
    free(s);
    assert_int_equal(gw_ledger_coldstarts(db, "none", 0, &s, &n, &err), AICFN_OK);
    assert_int_equal(n, 0);
    /* Evicted list stored as JSON. */
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    assert_int_equal(gw_db_stmt(db, "SELECT evicted FROM cold_starts WHERE time_us = 1000001", &st, NULL), 0);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "[\"old:1\",\"older:2\"]");
    gw_db_done(st);
    gw_db_unlock(db);
    gw_ledger_destroy(l);
    assert_int_equal(gw_db_integrity_check(db, NULL), AICFN_OK);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

static void usage_totals_equal_sql_sums(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    gw_ledger *l = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_ledger_create(dir, 0, 0, 0, &l, &err), AICFN_OK);
    const char *tenants[] = {"alice", "bob", "carol"};
    const char *fns[] = {"mlp", "echo"};
    uint64_t seed = 12345;
    for (int i = 0; i < 3000; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t batch = (uint32_t)(seed >> 60) + 1; /* 1..16 */
        gw_invocation_record r = {.time_us = 1000 + (uint64_t)i,
                                  .request_id = "rid",
                                  .tenant = tenants[(seed >> 20) % 3],
                                  .function = fns[(seed >> 30) % 2],
                                  .version = 1,
                                  .worker = "w1",
                                  .device = "cuda:0",
                                  .status = (seed >> 40) % 10 == 0 ? AICFN_E_TIMEOUT : AICFN_OK,
                                  .batch_size = batch,
                                  .bytes_in = (seed >> 12) % 5000,
                                  .bytes_out = (seed >> 22) % 700,
                                  .queue_us = 10,
                                  .load_us = (seed >> 44) % 2 ? 50000 : 0,
                                  .exec_us = (seed >> 8) % 100000 + 1,
                                  .total_us = 200000,
                                  /* a cold call's share of the load its batch made (none when
                                   * it joined another batch's) */
                                  .load_gpu_us =
                                      (seed >> 44) % 2 && (seed >> 50) % 3 == 0 ? 41234 / batch : 0,
                                  .cold = (seed >> 44) % 2};
        assert_int_equal(gw_ledger_submit_invocation(l, &r), AICFN_OK);
    }
    gw_ledger_destroy(l); /* flush on close */
    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM invocations"), 3000);
    /* gpu_us is the documented rounding of every row. */
    assert_int_equal(sql_int(db,
                             "SELECT count(*) FROM invocations WHERE gpu_us != (exec_us + batch_size - 1) / "
                             "batch_size"),
                     0);
    gw_usage_row *rows = NULL, total;
    size_t n = 0;
    assert_int_equal(gw_ledger_usage(db, NULL, 0, &rows, &n, &total, &err), AICFN_OK);
    assert_int_equal(n, 6);
    uint64_t calls = 0, errors = 0, gpu = 0, load_gpu = 0, cold = 0, bin = 0, bout = 0;
    for (size_t i = 0; i < n; i++) {
        calls += rows[i].calls;
        errors += rows[i].errors;
        gpu += rows[i].gpu_us;
        load_gpu += rows[i].load_gpu_us;
        cold += rows[i].cold_us;
        bin += rows[i].bytes_in;
        bout += rows[i].bytes_out;
    }
    assert_int_equal(total.calls, 3000);
    assert_int_equal(calls, total.calls);
    assert_int_equal(errors, total.errors);
    assert_int_equal(gpu, total.gpu_us);
    assert_int_equal(load_gpu, total.load_gpu_us);
    assert_int_equal(cold, total.cold_us);
    assert_int_equal(bin, total.bytes_in);
    assert_int_equal(bout, total.bytes_out);
    assert_int_equal(total.gpu_us, sql_int(db, "SELECT sum(gpu_us) FROM invocations"));
    assert_int_equal(total.errors,
                     sql_int(db, "SELECT count(*) FROM invocations WHERE status != 'AICFN_OK'"));
    assert_true(total.errors > 0);
    /* A cold batch's load is counted once, split across its calls like GPU time. */
    assert_int_equal(total.cold_us, sql_int(db, "SELECT sum((load_us + batch_size - 1) / batch_size) FROM "
                                                "invocations WHERE cold = 1"));
    assert_true(total.cold_us < (uint64_t)sql_int(db, "SELECT sum(load_us) FROM invocations WHERE cold = 1"));
    assert_int_equal(total.bytes_in, sql_int(db, "SELECT sum(bytes_in) FROM invocations"));
    /* Each row keeps the share of the cold start it was given, as given (the rows above give
     * one to some cold calls only: none to warm ones and to those that joined a load), and
     * the usage sums add exactly those. */
    assert_int_equal(total.load_gpu_us,
                     sql_int(db, "SELECT sum(41234 / batch_size) FROM invocations WHERE load_gpu_us > 0"));
    assert_true(sql_int(db, "SELECT count(*) FROM invocations WHERE cold = 1 AND load_gpu_us = 0") > 0);
    assert_true(sql_int(db, "SELECT count(*) FROM invocations WHERE load_gpu_us > 0") > 0);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM invocations WHERE cold = 0 AND load_gpu_us > 0"), 0);
    assert_int_equal(gw_usage_billed_us(&total), total.gpu_us + total.load_gpu_us);
    assert_int_equal(
        rows[0].gpu_us,
        sql_int(db, "SELECT sum(gpu_us) FROM invocations WHERE tenant='alice' AND function='echo'"));
    json_t *j = gw_usage_to_json(rows, n, &total, 2.5);
    assert_non_null(j);
    json_t *jt = json_object_get(j, "total");
    assert_int_equal(json_integer_value(json_object_get(jt, "gpu_us")), (json_int_t)total.gpu_us);
    assert_int_equal(json_integer_value(json_object_get(jt, "load_gpu_us")), (json_int_t)total.load_gpu_us);
    assert_true(json_real_value(json_object_get(jt, "cost")) ==
                gw_usage_cost(total.gpu_us + total.load_gpu_us, 2.5));
    json_decref(j);
    free(rows);
    /* Tenant filter and --since. */
    assert_int_equal(gw_ledger_usage(db, "bob", 1000 + 1500, &rows, &n, &total, &err), AICFN_OK);
    assert_int_equal(total.calls,
                     sql_int(db, "SELECT count(*) FROM invocations WHERE tenant='bob' AND time_us >= 2500"));
    assert_true(n <= 2);
    free(rows);
    assert_int_equal(gw_ledger_usage(db, "nobody", 0, &rows, &n, &total, &err), AICFN_OK);
    assert_int_equal(n, 0);
    assert_int_equal(total.calls, 0);
    assert_int_equal(total.gpu_us, 0);
    assert_true(gw_usage_cost(2000000, 0.5) == 1.0);
    assert_int_equal(gw_db_integrity_check(db, NULL), AICFN_OK);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

/* Amounts come from workers' replies, unbounded on the wire: one absurd value is stored
 * capped, so the sums of usage and coldstarts still work for every later query. */
static void absurd_amounts_do_not_break_the_sums(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("ledger-amounts");
    gw_ledger *l = NULL;
    aicfn_error err;
    assert_int_equal(gw_ledger_create(dir, 0, 0, 0, &l, &err), AICFN_OK);
    for (int i = 0; i < 3; i++) {
        gw_invocation_record r = {.time_us = 1000 + (uint64_t)i,
                                  .tenant = "t",
                                  .function = "f",
                                  .batch_size = 1,
                                  .bytes_out = UINT64_MAX,
                                  .exec_us = UINT64_MAX - (uint64_t)i,
                                  .load_us = UINT64_MAX,
                                  .cold = true};
        assert_int_equal(gw_ledger_submit_invocation(l, &r), AICFN_OK);
        gw_cold_start_record cs = {.time_us = 1000 + (uint64_t)i,
                                   .function = "f",
                                   .version = 1,
                                   .compressed_bytes = UINT64_MAX,
                                   .raw_bytes = UINT64_MAX,
                                   .total_us = UINT64_MAX};
        assert_int_equal(gw_ledger_submit_cold_start(l, &cs), AICFN_OK);
    }
    gw_ledger_destroy(l);
    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    gw_usage_row *rows = NULL, total;
    size_t n = 0;
    assert_int_equal(gw_ledger_usage(db, NULL, 0, &rows, &n, &total, &err), AICFN_OK);
    assert_int_equal(total.calls, 3);
    assert_int_equal(total.gpu_us, 3 * AICFN_LEDGER_AMOUNT_MAX);
    free(rows);
    gw_coldstart_summary *cs = NULL;
    assert_int_equal(gw_ledger_coldstarts(db, NULL, 0, &cs, &n, &err), AICFN_OK);
    assert_int_equal(n, 1);
    free(cs);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

/* A load a call made and gave up on is charged to that call's row (gateway.c bills it):
 * found by its call id among rows no older than `since`, added up, capped like any amount;
 * a charge for no row (another id, or an older row: a previous run's id) changes nothing. */
static void load_charges_add_to_their_calls_row(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("ledger-charges");
    gw_ledger *l = NULL;
    aicfn_error err;
    assert_int_equal(gw_ledger_create(dir, 0, 0, 0, &l, &err), AICFN_OK);
    const uint64_t ids[] = {42, 42, 7}; /* 42 twice: a previous run's row, then this run's */
    for (int i = 0; i < 3; i++) {
        gw_invocation_record r = {.time_us = 1000 + 1000 * (uint64_t)i,
                                  .call_id = ids[i],
                                  .tenant = "t",
                                  .function = "f",
                                  .status = AICFN_E_TIMEOUT,
                                  .load_gpu_us = 5};
        assert_int_equal(gw_ledger_submit_invocation(l, &r), AICFN_OK);
    }
    gw_invocation_record none = {.tenant = "t", .function = "f"}; /* no call id: NULL */
    assert_int_equal(gw_ledger_submit_invocation(l, &none), AICFN_OK);
    assert_int_equal(gw_ledger_submit_load_charge(l, 42, 2000, 300), AICFN_OK);
    assert_int_equal(gw_ledger_submit_load_charge(l, 42, 2000, 20), AICFN_OK);
    assert_int_equal(gw_ledger_submit_load_charge(l, 42, 2001, 1000), AICFN_OK); /* no row that new */
    assert_int_equal(gw_ledger_submit_load_charge(l, 9, 0, 1000), AICFN_OK);     /* no such call */
    assert_int_equal(gw_ledger_submit_load_charge(l, 7, 3000, UINT64_MAX), AICFN_OK);
    gw_ledger_destroy(l);
    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    assert_int_equal(sql_int(db, "SELECT load_gpu_us FROM invocations WHERE time_us = 1000"), 5);
    assert_int_equal(sql_int(db, "SELECT load_gpu_us FROM invocations WHERE time_us = 2000"), 325);
    assert_int_equal(sql_int(db, "SELECT load_gpu_us FROM invocations WHERE call_id = 7"),
                     AICFN_LEDGER_AMOUNT_MAX);
    assert_int_equal(
        sql_int(db, "SELECT count(*) FROM invocations WHERE call_id IS NULL AND load_gpu_us = 0"), 1);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

static void full_queue_drops_and_counts(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    gw_ledger *l = NULL;
    /* A long flush interval and a tiny queue: submits beyond 8 queued are dropped. */
    assert_int_equal(gw_ledger_create(dir, 60000, 100000, 8, &l, NULL), AICFN_OK);
    gw_invocation_record r = {.tenant = "t", .function = "f", .version = 1, .exec_us = 5};
    int ok = 0, dropped = 0;
    for (int i = 0; i < 20; i++) {
        int rc = gw_ledger_submit_invocation(l, &r);
        if (rc == AICFN_OK)
            ok++;
        else if (rc == AICFN_E_OVERLOADED)
            dropped++;
    }
    assert_int_equal(ok, 8);
    assert_int_equal(dropped, 12);
    /* A refused call's row goes once the queue is half full (it is full here). */
    gw_invocation_record refused = {.tenant = "t", .function = "f", .status = AICFN_E_QUOTA, .refused = true};
    assert_int_equal(gw_ledger_submit_invocation(l, &refused), AICFN_E_OVERLOADED);
    /* A worker's first and last rows are kept even so (its name stays reserved); a
     * refresh is not. */
    gw_worker_record wr = {.id = "w7", .address = "ipc:///x", .state = GW_WROW_STARTING};
    assert_int_equal(gw_ledger_submit_worker(l, &wr), AICFN_OK);
    wr.state = GW_WROW_READY;
    assert_int_equal(gw_ledger_submit_worker(l, &wr), AICFN_E_OVERLOADED);
    wr.state = GW_WROW_LOST;
    assert_int_equal(gw_ledger_submit_worker(l, &wr), AICFN_OK);
    /* ... but not without end (remote workers registering and failing while the disk
     * stalls): up to twice the queue's bound (16 here, 10 queued). */
    for (int i = 0; i < 10; i++) {
        char id[8];
        snprintf(id, sizeof id, "r%d", i);
        gw_worker_record rr = {.id = id, .address = "tcp://h:1", .state = GW_WROW_STARTING};
        assert_int_equal(gw_ledger_submit_worker(l, &rr), i < 6 ? AICFN_OK : AICFN_E_OVERLOADED);
    }
    gw_ledger_stats s;
    gw_ledger_get_stats(l, &s);
    assert_int_equal(s.submitted, 16);
    assert_int_equal(s.dropped, 18);
    assert_int_equal(s.queued, 16);
    assert_int_equal(s.committed, 0);
    /* flush() commits without waiting for the 60 s interval. */
    assert_int_equal(gw_ledger_flush(l, 5000, NULL), AICFN_OK);
    gw_ledger_get_stats(l, &s);
    assert_int_equal(s.committed, 16);
    assert_int_equal(s.queued, 0);
    assert_int_equal(gw_ledger_submit_invocation(l, &r), AICFN_OK);
    /* Below half full, refused calls' rows are queued like any other, up to half (4). */
    for (int i = 0; i < 5; i++)
        assert_int_equal(gw_ledger_submit_invocation(l, &refused), i < 3 ? AICFN_OK : AICFN_E_OVERLOADED);
    gw_ledger_destroy(l); /* the 9th and the 3 refused are committed at close */
    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM invocations"), 12);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM invocations WHERE status = 'AICFN_E_QUOTA'"), 3);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM workers WHERE id = 'w7' AND state = 'lost'"), 1);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM workers WHERE id LIKE 'r%'"), 6);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

static void batches_commit_by_time(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    gw_ledger *l = NULL;
    assert_int_equal(gw_ledger_create(dir, 20, 1000, 0, &l, NULL), AICFN_OK);
    gw_invocation_record r = {.tenant = "t", .function = "f", .version = 1};
    assert_int_equal(gw_ledger_submit_invocation(l, &r), AICFN_OK);
    /* Without flush(): the writer commits within the interval (bounded wait, 5 s). */
    gw_ledger_stats s = {0};
    for (int i = 0; i < 500; i++) {
        gw_ledger_get_stats(l, &s);
        if (s.committed == 1) break;
        usleep(10000);
    }
    assert_int_equal(s.committed, 1);
    assert_int_equal(s.batches, 1);
    gw_ledger_destroy(l);
    gw_ledger_destroy(NULL);
    tdb_rm_rf(dir);
    free(dir);
}

/* Records that queued up while the writer was stuck (another process holding the write
 * lock) are committed flush_records at a time, not in one long transaction. */
static void backlog_commits_in_bounded_batches(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    gw_ledger *l = NULL;
    assert_int_equal(gw_ledger_create(dir, 20, 10, 0, &l, NULL), AICFN_OK);
    gw_db *other = NULL;
    assert_int_equal(gw_db_open(dir, &other, NULL), AICFN_OK);
    gw_db_lock(other);
    assert_int_equal(gw_db_begin(other, NULL), AICFN_OK); /* the write lock */
    gw_invocation_record r = {.tenant = "t", .function = "f", .version = 1};
    for (int i = 0; i < 35; i++)
        assert_int_equal(gw_ledger_submit_invocation(l, &r), AICFN_OK);
    usleep(300000); /* the writer waits for the lock with its first batch */
    assert_int_equal(gw_db_commit(other, NULL), AICFN_OK);
    gw_db_unlock(other);
    assert_int_equal(gw_ledger_flush(l, 10000, NULL), AICFN_OK);
    gw_ledger_stats s;
    gw_ledger_get_stats(l, &s);
    assert_int_equal(s.committed, 35);
    assert_true(s.batches >= 4); /* 35 records, 10 at most per transaction */
    gw_ledger_destroy(l);
    assert_int_equal(sql_int(other, "SELECT count(*) FROM invocations"), 35);
    gw_db_close(other);
    tdb_rm_rf(dir);
    free(dir);
}

/* A database that keeps failing at shutdown (a full disk): the retries are bounded for
 * the whole backlog (about 5 s), not per batch, and nothing half-written is left behind.
 * 40 records in batches of 10 took 18 s before. */
static void failing_shutdown_is_bounded(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    gw_ledger *l = NULL;
    assert_int_equal(gw_ledger_create(dir, 20, 10, 0, &l, NULL), AICFN_OK);
    gw_db *other = NULL;
    assert_int_equal(gw_db_open(dir, &other, NULL), AICFN_OK);
    gw_db_lock(other);
    assert_int_equal(gw_db_exec(other,
                                "CREATE TRIGGER full BEFORE INSERT ON invocations "
                                "BEGIN SELECT RAISE(ABORT, 'disk full'); END",
                                NULL),
                     AICFN_OK);
    gw_db_unlock(other);
    gw_invocation_record r = {.tenant = "t", .function = "f", .version = 1};
    for (int i = 0; i < 40; i++)
        assert_int_equal(gw_ledger_submit_invocation(l, &r), AICFN_OK);
    usleep(200000); /* the writer is retrying its first batch */
    uint64_t t0 = clock_now_us();
    gw_ledger_destroy(l);
    uint64_t took_ms = (clock_now_us() - t0) / 1000;
    if (took_ms >= 8000) fail_msg("shutdown took %llu ms (about 5 s allowed)", (unsigned long long)took_ms);
    assert_int_equal(sql_int(other, "SELECT count(*) FROM invocations"), 0);
    gw_db_close(other);
    tdb_rm_rf(dir);
    free(dir);
}

/* kill -9 mid-stream: what flush() acknowledged is there, the rest is at most lost,
 * and the database is intact. */
static void crash_loses_only_uncommitted(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        gw_ledger *l = NULL;
        if (gw_ledger_create(dir, 5, 50, 0, &l, NULL) != AICFN_OK) _exit(3);
        gw_invocation_record r = {.tenant = "t", .function = "f", .version = 1, .exec_us = 3};
        for (int i = 0; i < 500; i++)
            if (gw_ledger_submit_invocation(l, &r) != AICFN_OK) _exit(4);
        if (gw_ledger_flush(l, 10000, NULL) != AICFN_OK) _exit(5);
        uint32_t acked = 500;
        if (write(pfd[1], &acked, sizeof acked) != (ssize_t)sizeof acked) _exit(6);
        for (int i = 0; i < 100000; i++)
            gw_ledger_submit_invocation(l, &r); /* in flight when killed */
        raise(SIGKILL);
        _exit(7);
    }
    close(pfd[1]);
    uint32_t acked = 0;
    assert_int_equal(read(pfd[0], &acked, sizeof acked), (ssize_t)sizeof acked);
    close(pfd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    assert_int_equal(gw_db_integrity_check(db, NULL), AICFN_OK);
    int64_t n = sql_int(db, "SELECT count(*) FROM invocations");
    assert_true(n >= (int64_t)acked);
    assert_true(n <= 500 + 100000);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

static void sql_text(gw_db *db, const char *sql, char *buf, size_t len) {
    sqlite3_stmt *st = NULL;
    gw_db_lock(db);
    assert_int_equal(gw_db_stmt(db, sql, &st, NULL), AICFN_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    gw_db_column_text(st, 0, buf, len);
    gw_db_done(st);
    gw_db_unlock(db);
}

/* Worker rows: one row per id, UPSERTed in submit order (the last record wins, every
 * column replaced), remote pid stored as NULL, invalid records refused before queueing;
 * at a gateway's start the rows left live are marked lost and local numbering continues. */
static void worker_rows_upsert_in_order(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("led");
    gw_ledger *l = NULL;
    aicfn_error err = {0};
    assert_string_equal(gw_worker_row_state_name(GW_WROW_STARTING), "starting");
    assert_string_equal(gw_worker_row_state_name(GW_WROW_LOST), "lost");
    assert_string_equal(gw_worker_row_state_name(GW_WROW_COUNT), "?");
    /* A long flush interval: everything below is committed in one batch, in order. */
    assert_int_equal(gw_ledger_create(dir, 60000, 100000, 0, &l, &err), AICFN_OK);
    gw_worker_record w = {.id = "w7",
                          .address = "ipc:///tmp/w7.ipc",
                          .pid = 4242,
                          .started_us = 1000,
                          .state = GW_WROW_STARTING};
    assert_int_equal(gw_ledger_submit_worker(l, &w), AICFN_OK);
    w.device = "host";
    w.budget_bytes = 64u << 20;
    w.last_seen_us = 2000;
    w.state = GW_WROW_READY;
    assert_int_equal(gw_ledger_submit_worker(l, &w), AICFN_OK);
    w.last_seen_us = 3000;
    w.state = GW_WROW_DRAINING;
    assert_int_equal(gw_ledger_submit_worker(l, &w), AICFN_OK);
    w.state = GW_WROW_EXITED;
    assert_int_equal(gw_ledger_submit_worker(l, &w), AICFN_OK);
    gw_worker_record r = {.id = "gpu-box",
                          .address = "tcp://10.0.0.2:7100",
                          .device = "NVIDIA H100",
                          .started_us = 5000,
                          .state = GW_WROW_READY};
    assert_int_equal(gw_ledger_submit_worker(l, &r), AICFN_OK);
    /* Refused before queueing: empty or overlong id, unknown state. */
    gw_worker_record bad = r;
    bad.id = "";
    assert_int_equal(gw_ledger_submit_worker(l, &bad), AICFN_E_INVALID);
    char longid[AICFN_WORKER_ID_MAX_BYTES + 2];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    bad.id = longid;
    assert_int_equal(gw_ledger_submit_worker(l, &bad), AICFN_E_INVALID);
    bad.id = "w8";
    bad.state = GW_WROW_COUNT;
    assert_int_equal(gw_ledger_submit_worker(l, &bad), AICFN_E_INVALID);
    gw_ledger_stats s;
    gw_ledger_get_stats(l, &s);
    assert_int_equal(s.submitted, 5);
    assert_int_equal(s.committed, 0);
    assert_int_equal(gw_ledger_flush(l, 5000, &err), AICFN_OK);

    gw_db *db = NULL;
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM workers"), 2);
    char txt[128];
    sql_text(db, "SELECT state FROM workers WHERE id = 'w7'", txt, sizeof txt);
    assert_string_equal(txt, "exited");
    sql_text(db, "SELECT device || ' ' || address FROM workers WHERE id = 'w7'", txt, sizeof txt);
    assert_string_equal(txt, "host ipc:///tmp/w7.ipc");
    assert_int_equal(sql_int(db, "SELECT pid FROM workers WHERE id = 'w7'"), 4242);
    assert_int_equal(sql_int(db, "SELECT budget_bytes FROM workers WHERE id = 'w7'"), 64 << 20);
    assert_int_equal(sql_int(db, "SELECT started_us FROM workers WHERE id = 'w7'"), 1000);
    assert_int_equal(sql_int(db, "SELECT last_seen_us FROM workers WHERE id = 'w7'"), 3000);
    /* Remote: no pid (NULL), last_seen defaults to its start. */
    assert_int_equal(sql_int(db, "SELECT pid IS NULL FROM workers WHERE id = 'gpu-box'"), 1);
    assert_int_equal(sql_int(db, "SELECT last_seen_us FROM workers WHERE id = 'gpu-box'"), 5000);
    assert_int_equal(sql_int(db, "SELECT budget_bytes FROM workers WHERE id = 'gpu-box'"), 0);

    /* The same id again (a new incarnation): the row is replaced, not duplicated. */
    w.pid = 4343;
    w.started_us = 9000;
    w.last_seen_us = 0;
    w.state = GW_WROW_STARTING;
    assert_int_equal(gw_ledger_submit_worker(l, &w), AICFN_OK);
    gw_worker_record more[] = {
        {.id = "w12", .address = "a", .pid = 1, .started_us = 1, .state = GW_WROW_DRAINING},
        {.id = "w3", .address = "a", .pid = 2, .started_us = 1, .state = GW_WROW_EXITED},
        {.id = "w99x", .address = "a", .pid = 3, .started_us = 1, .state = GW_WROW_LOST}, /* not wN */
        {.id = "w500", .address = "a", .pid = 0, .started_us = 1, .state = GW_WROW_LOST}, /* no pid: remote */
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        assert_int_equal(gw_ledger_submit_worker(l, &more[i]), AICFN_OK);
    gw_ledger_destroy(l); /* commits on close */
    assert_int_equal(sql_int(db, "SELECT count(*) FROM workers"), 6);
    assert_int_equal(sql_int(db, "SELECT pid FROM workers WHERE id = 'w7'"), 4343);
    assert_int_equal(sql_int(db, "SELECT last_seen_us FROM workers WHERE id = 'w7'"), 9000);
    sql_text(db, "SELECT state FROM workers WHERE id = 'w7'", txt, sizeof txt);
    assert_string_equal(txt, "starting");

    /* Next local number: after the highest wN with a pid (w12), not w99x or remote w500. */
    uint32_t next = 0;
    assert_int_equal(gw_workers_next_local_id(db, &next, &err), AICFN_OK);
    assert_int_equal(next, 13);
    /* A gateway starting: starting/ready/draining rows (w7, gpu-box, w12) become lost. */
    uint64_t n_lost = 0;
    assert_int_equal(gw_workers_mark_lost(db, &n_lost, &err), AICFN_OK);
    assert_int_equal(n_lost, 3);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM workers WHERE state = 'lost'"), 5);
    sql_text(db, "SELECT state FROM workers WHERE id = 'w3'", txt, sizeof txt);
    assert_string_equal(txt, "exited");
    assert_int_equal(gw_workers_mark_lost(db, &n_lost, &err), AICFN_OK);
    assert_int_equal(n_lost, 0);
    assert_int_equal(gw_db_integrity_check(db, NULL), AICFN_OK);
    gw_db_close(db);
    tdb_rm_rf(dir);

    /* An empty table: numbering starts at 1. */
    assert_int_equal(gw_db_open(dir, &db, NULL), AICFN_OK);
    assert_int_equal(gw_workers_next_local_id(db, &next, &err), AICFN_OK);
    assert_int_equal(next, 1);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gpu_us_rounding),
        cmocka_unit_test(coldstart_percentiles),
        cmocka_unit_test(usage_totals_equal_sql_sums),
        cmocka_unit_test(absurd_amounts_do_not_break_the_sums),
        cmocka_unit_test(load_charges_add_to_their_calls_row),
        cmocka_unit_test(full_queue_drops_and_counts),
        cmocka_unit_test(batches_commit_by_time),
        cmocka_unit_test(backlog_commits_in_bounded_batches),
        cmocka_unit_test(failing_shutdown_is_bounded),
        cmocka_unit_test(crash_loses_only_uncommitted),
        cmocka_unit_test(worker_rows_upsert_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
