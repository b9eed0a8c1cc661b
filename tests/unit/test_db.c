/* test_db.c: aicfn.db opening, pragmas, migrations (from empty, re-open, newer schema
 * refused), opening an existing database without migrating it, the statement cache, error mapping,
 * integrity_check and gw_db_collect. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "gateway/db.h"
#include "test_db_util.h"

static int pragma_int(gw_db *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    gw_db_lock(db);
    assert_int_equal(gw_db_stmt(db, sql, &st, NULL), AICFN_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int v = sqlite3_column_int(st, 0);
    gw_db_done(st);
    gw_db_unlock(db);
    return v;
}

static void migrations_from_empty_and_reopen(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("db");
    assert_non_null(dir);
    char sub[600];
    snprintf(sub, sizeof sub, "%s/data", dir); /* gw_db_open creates the data dir */
    gw_db *db = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_db_open(sub, &db, &err), AICFN_OK);
    int v = -1;
    assert_int_equal(gw_db_schema_version(db, &v, NULL), AICFN_OK);
    assert_int_equal(v, gw_db_schema_latest());
    assert_true(v >= 1);
    /* Every table exists. */
    const char *tables[] = {"functions", "workers", "cold_starts", "invocations", "tenants"};
    for (size_t i = 0; i < 5; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_schema WHERE type='table' AND name='%s'",
                 tables[i]);
        assert_int_equal(pragma_int(db, sql), 1);
    }
    assert_int_equal(pragma_int(db, "PRAGMA foreign_keys"), 1);
    assert_int_equal(pragma_int(db, "PRAGMA synchronous"), 2); /* FULL: acknowledged commits are on disk */
    assert_int_equal(pragma_int(db, "PRAGMA journal_size_limit"), 64 << 20); /* the WAL shrinks back */
    /* The database and its WAL are the gateway's alone, whatever the umask. */
    char path[700];
    struct stat fst;
    snprintf(path, sizeof path, "%s/aicfn.db", sub);
    assert_int_equal(stat(path, &fst), 0);
    assert_int_equal(fst.st_mode & 0777, 0600);
    snprintf(path, sizeof path, "%s/aicfn.db-wal", sub);
    if (stat(path, &fst) == 0) assert_int_equal(fst.st_mode & 0777, 0600);
    assert_int_equal(gw_db_set_batched(db, &err), AICFN_OK);
    assert_int_equal(pragma_int(db, "PRAGMA synchronous"), 1); /* NORMAL */
    assert_true(pragma_int(db, "PRAGMA busy_timeout") > 0);
    gw_db_lock(db);
    assert_int_equal(
        gw_db_exec(db, "INSERT INTO workers VALUES ('w1','ipc:///x','host',1,2,3,4,'ready')", &err),
        AICFN_OK);
    gw_db_unlock(db);
    gw_db_close(db);

    /* Re-open: nothing re-applied, data kept, still WAL. */
    assert_int_equal(gw_db_open(sub, &db, &err), AICFN_OK);
    assert_int_equal(gw_db_schema_version(db, &v, NULL), AICFN_OK);
    assert_int_equal(v, gw_db_schema_latest());
    assert_int_equal(pragma_int(db, "SELECT count(*) FROM workers"), 1);
    sqlite3_stmt *st = NULL;
    gw_db_lock(db);
    assert_int_equal(gw_db_stmt(db, "PRAGMA journal_mode", &st, NULL), AICFN_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    gw_db_done(st);
    gw_db_unlock(db);
    assert_int_equal(gw_db_integrity_check(db, &err), AICFN_OK);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

/* A database written by the schema-1 gateway (before invocations.cached and
 * cold_starts.fetch_us) is migrated in place when a newer gateway opens it, and keeps its
 * rows. */
static void schema_1_database_migrates_keeping_rows(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("db");
    gw_db *db = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_db_open(dir, &db, &err), AICFN_OK);
    /* Turn it back into what schema 1 left. */
    gw_db_lock(db);
    assert_int_equal(
        gw_db_exec(
            db,
            "ALTER TABLE invocations DROP COLUMN cached; ALTER TABLE cold_starts DROP COLUMN fetch_us; "
            "ALTER TABLE tenants DROP COLUMN worker; DROP INDEX functions_deploy_id; "
            "ALTER TABLE functions DROP COLUMN deploy_id; ALTER TABLE functions DROP COLUMN staged; "
            "ALTER TABLE function_names DROP COLUMN canary_version; "
            "ALTER TABLE function_names DROP COLUMN canary_percent; "
            "ALTER TABLE invocations DROP COLUMN load_gpu_us; DROP INDEX invocations_call; "
            "ALTER TABLE invocations DROP COLUMN call_id; PRAGMA user_version = 1",
            &err),
        AICFN_OK);
    assert_int_equal(
        gw_db_exec(db,
                   "INSERT INTO cold_starts(time_us, function, version, worker, device, "
                   "compressed_bytes, raw_bytes, spawn_us, queue_us, read_us, decompress_us, "
                   "filter_us, copy_us, init_us, total_us) VALUES (1, 'f', 1, 'w1', 'host', 1, 2, "
                   "3, 4, 5, 6, 7, 8, 9, 10)",
                   &err),
        AICFN_OK);
    assert_int_equal(
        gw_db_exec(db,
                   "INSERT INTO invocations(time_us, tenant, function, version, status, "
                   "batch_size, bytes_in, bytes_out, queue_us, load_us, exec_us, total_us, "
                   "gpu_us, cold) VALUES (1, 't', 'f', 1, 'AICFN_OK', 1, 2, 3, 4, 5, 6, 7, 6, 1)",
                   &err),
        AICFN_OK);
    assert_int_equal(
        gw_db_exec(db,
                   "INSERT INTO tenants(key_id, tenant, key_hash, admin, rate_per_s, quota_per_day, "
                   "created_us) VALUES ('k1', 'ops', zeroblob(32), 1, 0, 0, 1)",
                   &err),
        AICFN_OK);
    gw_db_unlock(db);
    gw_db_close(db);
    assert_int_equal(gw_db_open(dir, &db, &err), AICFN_OK);
    int v = -1;
    assert_int_equal(gw_db_schema_version(db, &v, NULL), AICFN_OK);
    assert_int_equal(v, gw_db_schema_latest());
    assert_int_equal(pragma_int(db, "SELECT count(*) FROM invocations WHERE function = 'f' AND gpu_us = 6"),
                     1);
    assert_int_equal(pragma_int(db, "SELECT cached FROM invocations WHERE function = 'f'"), 0);
    assert_int_equal(pragma_int(db, "SELECT load_gpu_us FROM invocations WHERE function = 'f'"), 0);
    assert_int_equal(
        pragma_int(db, "SELECT count(*) FROM invocations WHERE function = 'f' AND call_id IS NULL"), 1);
    assert_int_equal(pragma_int(db, "SELECT total_us + 100 * fetch_us FROM cold_starts WHERE function = 'f'"),
                     10);
    assert_int_equal(pragma_int(db, "SELECT admin * 10 + worker FROM tenants WHERE key_id = 'k1'"), 10);
    assert_int_equal(gw_db_integrity_check(db, &err), AICFN_OK);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

typedef struct collect_row {
    int64_t v;
} collect_row;

/* Fills v; refuses the row whose value is `*arg` (when arg is not NULL). */
static int collect_fill(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    collect_row *r = elem;
    assert_int_equal(r->v, 0); /* zeroed before the call */
    r->v = sqlite3_column_int64(st, 0);
    if (arg && r->v == *(int64_t *)arg)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "row %lld", (long long)r->v);
    return AICFN_OK;
}

/* gw_db_collect: every row in order into a growing array; a fill error stops it with the
 * rows so far (the failing one included) left for the caller. */
static void collect_rows_into_an_array(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("db");
    gw_db *db = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_db_open(dir, &db, &err), AICFN_OK);
    const char *sql =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT x FROM c";
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    assert_int_equal(gw_db_stmt(db, sql, &st, &err), AICFN_OK);
    void *arr = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(
        gw_db_collect(db, st, sizeof(collect_row), collect_fill, NULL, &arr, &n, &cap, "count", &err),
        AICFN_OK);
    assert_int_equal(n, 100);
    assert_true(cap >= n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(((collect_row *)arr)[i].v, (int64_t)i + 1);
    free(arr);
    arr = NULL;
    n = cap = 0;
    int64_t stop = 7;
    assert_int_equal(gw_db_stmt(db, sql, &st, &err), AICFN_OK);
    assert_int_equal(
        gw_db_collect(db, st, sizeof(collect_row), collect_fill, &stop, &arr, &n, &cap, "count", &err),
        AICFN_E_CORRUPT);
    assert_int_equal(n, 7);
    assert_non_null(strstr(err.msg, "row 7"));
    free(arr);
    /* The statement was reset: it runs again from the start. */
    arr = NULL;
    n = cap = 0;
    assert_int_equal(gw_db_stmt(db, sql, &st, &err), AICFN_OK);
    assert_int_equal(
        gw_db_collect(db, st, sizeof(collect_row), collect_fill, NULL, &arr, &n, &cap, "count", &err),
        AICFN_OK);
    assert_int_equal(n, 100);
    free(arr);
    gw_db_unlock(db);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

static void newer_schema_is_refused(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("db");
    gw_db *db = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_db_open(dir, &db, &err), AICFN_OK);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", gw_db_schema_latest() + 1);
    gw_db_lock(db);
    assert_int_equal(gw_db_exec(db, sql, NULL), AICFN_OK);
    gw_db_unlock(db);
    gw_db_close(db);
    assert_int_equal(gw_db_open(dir, &db, &err), AICFN_E_UNSUPPORTED);
    assert_null(db);
    assert_non_null(strstr(err.msg, "newer"));
    tdb_rm_rf(dir);
    free(dir);
}

/* Relabels dir's database as schema version v, with SQLite alone (gw_db_open would migrate). */
static void set_user_version(const char *dir, int v) {
    char path[600], sql[64];
    snprintf(path, sizeof path, "%s/aicfn.db", dir);
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v);
    sqlite3 *conn = NULL;
    assert_int_equal(sqlite3_open(path, &conn), SQLITE_OK);
    assert_int_equal(sqlite3_exec(conn, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(conn);
}

/* The commands beside a running gateway (keys, usage, workers --history) open its
 * database without creating or migrating it; read-only means read-only. */
static void open_existing_never_creates_or_migrates(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("db");
    gw_db *db = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_db_open_existing(dir, GW_DB_READ_ONLY, &db, &err), AICFN_E_NOT_FOUND);
    assert_null(db);
    assert_non_null(strstr(err.msg, "no database at"));
    assert_int_equal(gw_db_open_existing(dir, GW_DB_READ_WRITE, &db, &err), AICFN_E_NOT_FOUND);
    char path[600];
    snprintf(path, sizeof path, "%s/aicfn.db", dir);
    assert_int_equal(access(path, F_OK), -1); /* not created */

    /* An older schema is refused, naming both versions, and left as it was. */
    assert_int_equal(gw_db_open(dir, &db, &err), AICFN_OK);
    gw_db_close(db);
    set_user_version(dir, gw_db_schema_latest() - 1);
    for (int a = GW_DB_READ_ONLY; a <= GW_DB_READ_WRITE; a++) {
        assert_int_equal(gw_db_open_existing(dir, (gw_db_access)a, &db, &err), AICFN_E_UNSUPPORTED);
        assert_null(db);
        assert_non_null(strstr(err.msg, "older"));
    }
    char expect[64];
    snprintf(expect, sizeof expect, "schema version %d", gw_db_schema_latest() - 1);
    char path_ro[640];
    snprintf(path_ro, sizeof path_ro, "file:%s?mode=ro", path);
    sqlite3 *conn = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path_ro, &conn, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(conn, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), gw_db_schema_latest() - 1); /* not migrated */
    sqlite3_finalize(st);
    sqlite3_close(conn);
    assert_non_null(strstr(err.msg, expect));
    set_user_version(dir, gw_db_schema_latest() + 1);
    assert_int_equal(gw_db_open_existing(dir, GW_DB_READ_ONLY, &db, &err), AICFN_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "newer"));
    set_user_version(dir, gw_db_schema_latest());

    assert_int_equal(gw_db_open_existing(dir, GW_DB_READ_ONLY, &db, &err), AICFN_OK);
    assert_int_equal(pragma_int(db, "SELECT count(*) FROM workers"), 0);
    gw_db_lock(db);
    assert_int_equal(gw_db_exec(db, "INSERT INTO workers VALUES ('w','a','d',1,1,1,1,'s')", &err),
                     AICFN_E_DB);
    gw_db_unlock(db);
    assert_non_null(strstr(err.msg, "readonly"));
    gw_db_close(db);
    assert_int_equal(gw_db_open_existing(dir, GW_DB_READ_WRITE, &db, &err), AICFN_OK);
    assert_int_equal(pragma_int(db, "PRAGMA synchronous"), 2);
    gw_db_lock(db);
    assert_int_equal(gw_db_exec(db, "INSERT INTO workers VALUES ('w','a','d',1,1,1,1,'s')", &err), AICFN_OK);
    gw_db_unlock(db);
    gw_db_close(db);
    tdb_rm_rf(dir);
    free(dir);
}

static void errors_map_to_db_and_exists(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("db");
    gw_db *db = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_db_open(dir, &db, &err), AICFN_OK);
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    assert_int_equal(gw_db_stmt(db, "SELECT * FROM no_such_table", &st, &err), AICFN_E_DB);
    assert_non_null(strstr(err.msg, "no_such_table"));
    assert_int_equal(gw_db_exec(db, "INSERT INTO workers VALUES ('w','a','d',1,1,1,1,'s')", NULL), AICFN_OK);
    assert_int_equal(gw_db_exec(db, "INSERT INTO workers VALUES ('w','a','d',1,1,1,1,'s')", &err),
                     AICFN_E_EXISTS);
    assert_non_null(strstr(err.msg, "UNIQUE"));
    /* The cache returns the same statement for the same SQL, reset. */
    sqlite3_stmt *a = NULL, *b = NULL;
    assert_int_equal(gw_db_stmt(db, "SELECT count(*) FROM workers", &a, NULL), AICFN_OK);
    assert_int_equal(sqlite3_step(a), SQLITE_ROW);
    assert_int_equal(gw_db_stmt(db, "SELECT count(*) FROM workers", &b, NULL), AICFN_OK);
    assert_ptr_equal(a, b);
    assert_int_equal(sqlite3_step(b), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(b, 0), 1);
    gw_db_done(b);
    /* A failed transaction rolls back. */
    assert_int_equal(gw_db_begin(db, NULL), AICFN_OK);
    assert_int_equal(gw_db_exec(db, "DELETE FROM workers", NULL), AICFN_OK);
    gw_db_rollback(db);
    gw_db_unlock(db);
    assert_int_equal(pragma_int(db, "SELECT count(*) FROM workers"), 1);
    /* CHECK constraints hold: the same row is taken with a 32-byte hash and refused, by
     * its CHECK, with another length or a worker flag other than 0 or 1. */
    gw_db_lock(db);
    const char *row = "INSERT INTO tenants (key_id, tenant, key_hash, admin, rate_per_s, quota_per_day, "
                      "created_us, worker) VALUES ('%s', 't', zeroblob(%d), 0, 0, 0, 0, %d)";
    char sql[256];
    snprintf(sql, sizeof sql, row, "k1", 32, 0);
    assert_int_equal(gw_db_exec(db, sql, &err), AICFN_OK);
    snprintf(sql, sizeof sql, row, "k2", 1, 0);
    assert_int_equal(gw_db_exec(db, sql, &err), AICFN_E_DB);
    assert_non_null(strstr(err.msg, "CHECK"));
    snprintf(sql, sizeof sql, row, "k3", 32, 2);
    assert_int_equal(gw_db_exec(db, sql, &err), AICFN_E_DB);
    assert_non_null(strstr(err.msg, "CHECK"));
    gw_db_unlock(db);
    assert_int_equal(gw_db_integrity_check(db, &err), AICFN_OK);
    gw_db_close(db);
    gw_db_close(NULL);
    tdb_rm_rf(dir);
    free(dir);
}

static void unwritable_dir_is_io_error(void **state) {
    (void)state;
    gw_db *db = NULL;
    aicfn_error err = {0};
    assert_int_equal(gw_db_open("/proc/aicfn-no/such/dir", &db, &err), AICFN_E_IO);
    assert_null(db);
    assert_non_null(strstr(err.msg, "/proc/aicfn-no/such/dir"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(migrations_from_empty_and_reopen),
        cmocka_unit_test(schema_1_database_migrates_keeping_rows),
        cmocka_unit_test(collect_rows_into_an_array),
        cmocka_unit_test(newer_schema_is_refused),
        cmocka_unit_test(open_existing_never_creates_or_migrates),
        cmocka_unit_test(errors_map_to_db_and_exists),
        cmocka_unit_test(unwritable_dir_is_io_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
