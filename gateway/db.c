/* db.c: opening aicfn.db (pragmas, migrations), the prepared-statement cache,
 * transactions and the mapping of SQLite errors to AICFN_E_DB.
 *
 * Not for: queries of the registry, ledger or keys (their own files). The schema lives
 * here, as an ordered list of migrations: append new ones, never edit an applied one. */
#include "gateway/db.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/grow.h"
#include "common/log.h"
#include "common/tunables.h"

typedef struct db_cached {
    char *sql;
    sqlite3_stmt *st;
} db_cached;

struct gw_db {
    sqlite3 *conn;
    char *path;
    pthread_mutex_t mu;
    db_cached cache[AICFN_DB_STMT_CACHE];
    int ncache;
};

/* The migrations, applied in order; migration i brings user_version from i to i+1.
 *
 * Times are integer microseconds since the Unix epoch (wall clock); durations are
 * integer microseconds; sizes are integer bytes. Nothing in the ledger references the
 * functions or tenants tables by foreign key: history outlives the removal of a function
 * version or the revocation of a key.
 *
 * `workers` mirrors the gateway's live pool (ledger.h gw_ledger_submit_worker, an UPSERT
 * by id through the ledger writer, so the request path never waits on it). id is the
 * worker's name: w<N> for a local worker (N continues across gateway restarts, so a row
 * is never reused by a later gateway's worker), the registered name for a remote one
 * (pid NULL; registering that name again overwrites its row). device is '' and
 * budget_bytes 0 until its first status answer. started_us: spawn or registration;
 * last_seen_us: its last status answer (refreshed once per AICFN_WORKER_POLL_MS poll,
 * not per call). state is one of
 *   'starting'  spawned or registered, first status not answered yet
 *   'ready'     answered; routable
 *   'draining'  asked to drain (idle scale-down) or says it drains
 *   'exited'    left the pool in order: drained and exited, or the gateway stopped
 *   'lost'      left unexpectedly: crashed, killed (kill -9, or by the gateway after a
 *               call overran its timeout), failed to start or to answer status polls,
 *               or still live when an earlier gateway process died (a starting gateway
 *               marks those rows 'lost' before it starts any worker). */
static const char *const db_migrations[] = {
    /* 1: the initial schema. */
    "CREATE TABLE function_names ("
    "  name TEXT PRIMARY KEY,"
    "  last_version INTEGER NOT NULL CHECK (last_version >= 1)"
    ");"
    "CREATE TABLE functions ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL REFERENCES function_names(name),"
    "  version INTEGER NOT NULL CHECK (version >= 1),"
    "  handler_hash TEXT NOT NULL,"
    "  handler_bytes INTEGER NOT NULL CHECK (handler_bytes >= 0),"
    "  snapshot_hash TEXT,"
    "  snapshot_bytes INTEGER NOT NULL DEFAULT 0 CHECK (snapshot_bytes >= 0),"
    "  model_raw_bytes INTEGER NOT NULL DEFAULT 0 CHECK (model_raw_bytes >= 0),"
    "  config TEXT NOT NULL DEFAULT '{}',"
    "  created_us INTEGER NOT NULL,"
    "  active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),"
    "  UNIQUE (name, version)"
    ");"
    "CREATE UNIQUE INDEX functions_one_active ON functions(name) WHERE active = 1;"
    "CREATE INDEX functions_handler ON functions(handler_hash);"
    "CREATE INDEX functions_snapshot ON functions(snapshot_hash);"
    "CREATE TABLE workers ("
    "  id TEXT PRIMARY KEY,"
    "  address TEXT NOT NULL,"
    "  device TEXT NOT NULL,"
    "  budget_bytes INTEGER NOT NULL,"
    "  pid INTEGER,"
    "  started_us INTEGER NOT NULL,"
    "  last_seen_us INTEGER NOT NULL,"
    "  state TEXT NOT NULL"
    ");"
    "CREATE TABLE cold_starts ("
    "  id INTEGER PRIMARY KEY,"
    "  time_us INTEGER NOT NULL,"
    "  function TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  worker TEXT NOT NULL,"
    "  device TEXT NOT NULL,"
    "  compressed_bytes INTEGER NOT NULL,"
    "  raw_bytes INTEGER NOT NULL,"
    "  spawn_us INTEGER NOT NULL,"
    "  queue_us INTEGER NOT NULL,"
    "  read_us INTEGER NOT NULL,"
    "  decompress_us INTEGER NOT NULL,"
    "  filter_us INTEGER NOT NULL,"
    "  copy_us INTEGER NOT NULL,"
    "  init_us INTEGER NOT NULL,"
    "  total_us INTEGER NOT NULL,"
    "  evicted TEXT NOT NULL DEFAULT '[]'"
    ");"
    "CREATE INDEX cold_starts_fn_time ON cold_starts(function, time_us);"
    "CREATE INDEX cold_starts_time ON cold_starts(time_us);"
    "CREATE TABLE invocations ("
    "  id INTEGER PRIMARY KEY,"
    "  time_us INTEGER NOT NULL,"
    "  request_id TEXT,"
    "  tenant TEXT NOT NULL,"
    "  function TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  worker TEXT,"
    "  device TEXT,"
    "  status TEXT NOT NULL,"
    "  batch_size INTEGER NOT NULL CHECK (batch_size >= 1),"
    "  bytes_in INTEGER NOT NULL,"
    "  bytes_out INTEGER NOT NULL,"
    "  queue_us INTEGER NOT NULL,"
    "  load_us INTEGER NOT NULL,"
    "  exec_us INTEGER NOT NULL,"
    "  total_us INTEGER NOT NULL,"
    "  gpu_us INTEGER NOT NULL,"
    "  cold INTEGER NOT NULL CHECK (cold IN (0, 1))"
    ");"
    "CREATE INDEX invocations_time ON invocations(time_us);"
    "CREATE INDEX invocations_tenant_time ON invocations(tenant, time_us);"
    "CREATE INDEX invocations_fn_time ON invocations(function, time_us);"
    "CREATE TABLE tenants ("
    "  key_id TEXT PRIMARY KEY,"
    "  tenant TEXT NOT NULL,"
    "  key_hash BLOB NOT NULL CHECK (length(key_hash) = 32),"
    "  admin INTEGER NOT NULL CHECK (admin IN (0, 1)),"
    "  rate_per_s INTEGER NOT NULL CHECK (rate_per_s >= 0),"
    "  quota_per_day INTEGER NOT NULL CHECK (quota_per_day >= 0),"
    "  created_us INTEGER NOT NULL,"
    "  revoked_us INTEGER"
    ");"
    "CREATE INDEX tenants_tenant ON tenants(tenant);",
    /* 2: invocations served from the gateway's response cache (no worker ran them). */
    "ALTER TABLE invocations ADD COLUMN cached INTEGER NOT NULL DEFAULT 0 CHECK (cached IN (0, 1));",
    /* 3: the snapshot download of a remote worker's cold start (0 when the file was local). */
    "ALTER TABLE cold_starts ADD COLUMN fetch_us INTEGER NOT NULL DEFAULT 0;",
    /* 4: worker keys (keys.h): a remote worker's, which registers and fetches artifacts only. */
    "ALTER TABLE tenants ADD COLUMN worker INTEGER NOT NULL DEFAULT 0 CHECK (worker IN (0, 1));",
    /* 5: a deploy's idempotency key (registry.h): the same deploy made again adds no version. */
    ("ALTER TABLE functions ADD COLUMN deploy_id TEXT;"
     "CREATE UNIQUE INDEX functions_deploy_id ON functions(name, deploy_id) WHERE deploy_id IS NOT NULL;"),
    /* 6: a version deployed staged (--no-activate) and not activated since, which never
     * takes over when the active version is removed (registry.h gw_registry_remove).
     * Schema 5 kept no such mark, though --no-activate existed: an inactive version
     * newer than its function's active one (or of a function with none) can only have
     * been deployed so (a newer version is active when deployed unless staged; a
     * rolled-back one cannot be told apart, and stays out too: fail closed), while an
     * older one was most likely active once (a staged version under a newer active one
     * cannot be told apart from one, and stays promotable). The first form of this migration marked none, so
     * a database upgraded by it (gateways built before this comment) may let rm promote such a version; no
     * release shipped it. */
    ("ALTER TABLE functions ADD COLUMN staged INTEGER NOT NULL DEFAULT 0 CHECK (staged IN (0, 1));"
     "UPDATE functions SET staged = 1 WHERE active = 0 AND version > coalesce("
     "(SELECT a.version FROM functions a WHERE a.name = functions.name AND a.active = 1), 0);"),
    /* 7: a canary: canary_percent of the calls to the plain NAME go to canary_version
     * (registry.h gw_registry_set_canary); 0: none. */
    ("ALTER TABLE function_names ADD COLUMN canary_version INTEGER;"
     "ALTER TABLE function_names ADD COLUMN canary_percent INTEGER NOT NULL DEFAULT 0 "
     "CHECK (canary_percent BETWEEN 0 AND 99);"),
    /* 8: a call's share of the device time of the cold start its batch made (the load, unless
     * it joined another's, and the handler's init: wire.h cold_share_us); rows written
     * before it paid for none. */
    "ALTER TABLE invocations ADD COLUMN load_gpu_us INTEGER NOT NULL DEFAULT 0 CHECK (load_gpu_us >= 0);",
    /* 9: the call's id in the gateway that served it (gid: what workers' fault notes and
     * load records name), so that a load its calls gave up on is billed to their rows;
     * NULL for rows written before it. */
    ("ALTER TABLE invocations ADD COLUMN call_id INTEGER;"
     "CREATE INDEX invocations_call ON invocations(call_id) WHERE call_id IS NOT NULL;"),
};

#define DB_NMIGRATIONS ((int)(sizeof db_migrations / sizeof db_migrations[0]))

int gw_db_schema_latest(void) {
    return DB_NMIGRATIONS;
}

int gw_db_error(gw_db *db, int rc, aicfn_error *err, const char *what) {
    int code = AICFN_E_DB;
    int ext = db && db->conn ? sqlite3_extended_errcode(db->conn) : rc;
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) code = AICFN_E_EXISTS;
    const char *msg = db && db->conn ? sqlite3_errmsg(db->conn) : sqlite3_errstr(rc);
    return aicfn_error_set(err, code, "%s: %s (%s)", what, msg, sqlite3_errstr(rc));
}

static int db_user_version(gw_db *db, int *out, aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->conn, "PRAGMA user_version", -1, &st, NULL);
    if (rc != SQLITE_OK) return gw_db_error(db, rc, err, "reading user_version");
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int code = gw_db_error(db, rc, err, "reading user_version");
        sqlite3_finalize(st);
        return code;
    }
    *out = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return AICFN_OK;
}

static int db_migrate(gw_db *db, aicfn_error *err) {
    for (;;) {
        int v = 0;
        int rc = db_user_version(db, &v, err);
        if (rc) return rc;
        if (v > DB_NMIGRATIONS)
            return aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                                   "%s has schema version %d, newer than this aicfn knows (%d)", db->path, v,
                                   DB_NMIGRATIONS);
        if (v == DB_NMIGRATIONS) return AICFN_OK;
        /* One migration per transaction; re-read the version under the write lock so two
         * processes opening a new database apply each migration once. */
        if ((rc = gw_db_begin(db, err))) return rc;
        if ((rc = db_user_version(db, &v, err))) {
            gw_db_rollback(db);
            return rc;
        }
        if (v < DB_NMIGRATIONS) {
            char *emsg = NULL;
            int src = sqlite3_exec(db->conn, db_migrations[v], NULL, NULL, &emsg);
            if (src != SQLITE_OK) {
                aicfn_error_set(err, AICFN_E_DB, "migration %d of %s: %s", v + 1, db->path,
                                emsg ? emsg : sqlite3_errstr(src));
                sqlite3_free(emsg);
                gw_db_rollback(db);
                return AICFN_E_DB;
            }
            char pragma[64];
            snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
            src = sqlite3_exec(db->conn, pragma, NULL, NULL, NULL);
            if (src != SQLITE_OK) {
                gw_db_error(db, src, err, "setting user_version");
                gw_db_rollback(db);
                return AICFN_E_DB;
            }
        }
        if ((rc = gw_db_commit(db, err))) return rc;
    }
}

static int db_pragma(gw_db *db, const char *sql, const char *expect, aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->conn, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return gw_db_error(db, rc, err, sql);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        int code = gw_db_error(db, rc, err, sql);
        sqlite3_finalize(st);
        return code;
    }
    if (expect && rc == SQLITE_ROW) {
        const char *got = (const char *)sqlite3_column_text(st, 0);
        if (!got || strcasecmp(got, expect) != 0) {
            aicfn_error_set(err, AICFN_E_DB, "%s: got '%s', wanted '%s'", sql, got ? got : "(null)", expect);
            sqlite3_finalize(st);
            return AICFN_E_DB;
        }
    }
    sqlite3_finalize(st);
    return AICFN_OK;
}

/* A handle on path, not yet connected (NULL when out of memory). */
static gw_db *db_handle_new(const char *path) {
    gw_db *db = calloc(1, sizeof *db);
    if (!db || !(db->path = strdup(path))) {
        free(db);
        return NULL;
    }
    pthread_mutex_init(&db->mu, NULL);
    return db;
}

static void db_private_files(const char *path) {
    static const char *const suffix[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        char p[4200];
        int n = snprintf(p, sizeof p, "%s%s", path, suffix[i]);
        if (n > 0 && (size_t)n < sizeof p && chmod(p, 0600) != 0 && errno != ENOENT)
            log_warn("%s: chmod 0600: %s", p, strerror(errno));
    }
}

int gw_db_open_path(const char *path, gw_db **out, aicfn_error *err) {
    *out = NULL;
    gw_db *db = db_handle_new(path);
    if (!db) return aicfn_error_set(err, AICFN_E_NOMEM, "allocating a database handle");
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &db->conn, flags, NULL);
    if (rc != SQLITE_OK) {
        char what[600];
        snprintf(what, sizeof what, "opening %s", path);
        gw_db_error(db, rc, err, what);
        gw_db_close(db);
        return AICFN_E_DB;
    }
    sqlite3_extended_result_codes(db->conn, 1);
    sqlite3_busy_timeout(db->conn, AICFN_DB_BUSY_TIMEOUT_MS);
    int is_mem = strcmp(path, ":memory:") == 0;
    int code = db_pragma(db, "PRAGMA journal_mode = WAL", is_mem ? "memory" : "wal", err);
    if (!code) code = db_pragma(db, "PRAGMA synchronous = FULL", NULL, err);
    if (!code) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %lld", (long long)AICFN_DB_WAL_LIMIT_BYTES);
        code = db_pragma(db, sql, NULL, err);
    }
    /* The ledger (usage, billing) and the tenants are no one else's to read: 0600 however
     * the umask or a directory made beforehand (SQLite gives the -wal and -shm files the
     * database's mode when it creates them; those left from before are set too). */
    if (!code && !is_mem) db_private_files(path);
    if (!code) code = db_pragma(db, "PRAGMA foreign_keys = ON", NULL, err);
    if (!code) code = db_migrate(db, err);
    if (code) {
        aicfn_error_wrap(err, "opening %s", path);
        gw_db_close(db);
        return code;
    }
    *out = db;
    return AICFN_OK;
}

int gw_db_open_existing(const char *data_dir, gw_db_access access, gw_db **out, aicfn_error *err) {
    *out = NULL;
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", data_dir, AICFN_DB_FILE);
    if (n < 0 || (size_t)n >= sizeof path)
        return aicfn_error_set(err, AICFN_E_INVALID, "data directory path too long: %s", data_dir);
    struct stat st;
    if (stat(path, &st) != 0)
        return aicfn_error_errno(err, AICFN_E_NOT_FOUND, errno, "no database at %s (see --data-dir)", path);
    gw_db *db = db_handle_new(path);
    if (!db) return aicfn_error_set(err, AICFN_E_NOMEM, "allocating a database handle");
    int flags =
        (access == GW_DB_READ_ONLY ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &db->conn, flags, NULL);
    int code = AICFN_OK;
    if (rc != SQLITE_OK) {
        char what[600];
        snprintf(what, sizeof what, "opening %s", path);
        code = gw_db_error(db, rc, err, what);
    } else {
        sqlite3_extended_result_codes(db->conn, 1);
        sqlite3_busy_timeout(db->conn, AICFN_DB_BUSY_TIMEOUT_MS);
        if (access == GW_DB_READ_WRITE) {
            code = db_pragma(db, "PRAGMA synchronous = FULL", NULL, err);
            if (!code) code = db_pragma(db, "PRAGMA foreign_keys = ON", NULL, err);
        }
        int v = 0;
        if (!code) code = db_user_version(db, &v, err);
        if (!code && v > DB_NMIGRATIONS)
            code = aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                                   "%s has schema version %d, newer than this aicfn knows (%d)", path, v,
                                   DB_NMIGRATIONS);
        else if (!code && v < DB_NMIGRATIONS)
            code = aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                                   "%s has schema version %d, older than this aicfn's (%d): start the "
                                   "gateway on it once, which migrates it",
                                   path, v, DB_NMIGRATIONS);
    }
    if (code) {
        gw_db_close(db);
        return code;
    }
    *out = db;
    return AICFN_OK;
}

int gw_db_set_batched(gw_db *db, aicfn_error *err) {
    return db_pragma(db, "PRAGMA synchronous = NORMAL", NULL, err);
}

int gw_db_open(const char *data_dir, gw_db **out, aicfn_error *err) {
    *out = NULL;
    if (mkdir(data_dir, 0700) != 0 && errno != EEXIST)
        return aicfn_error_errno(err, AICFN_E_IO, errno, "creating data directory %s", data_dir);
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", data_dir, AICFN_DB_FILE);
    if (n < 0 || (size_t)n >= sizeof path)
        return aicfn_error_set(err, AICFN_E_INVALID, "data directory path too long: %s", data_dir);
    return gw_db_open_path(path, out, err);
}

void gw_db_close(gw_db *db) {
    if (!db) return;
    for (int i = 0; i < db->ncache; i++) {
        sqlite3_finalize(db->cache[i].st);
        free(db->cache[i].sql);
    }
    if (db->conn) sqlite3_close(db->conn);
    pthread_mutex_destroy(&db->mu);
    free(db->path);
    free(db);
}

const char *gw_db_path(const gw_db *db) {
    return db->path;
}
sqlite3 *gw_db_sqlite(gw_db *db) {
    return db->conn;
}
void gw_db_lock(gw_db *db) {
    pthread_mutex_lock(&db->mu);
}
void gw_db_unlock(gw_db *db) {
    pthread_mutex_unlock(&db->mu);
}

int gw_db_stmt(gw_db *db, const char *sql, sqlite3_stmt **out, aicfn_error *err) {
    *out = NULL;
    for (int i = 0; i < db->ncache; i++) {
        /* Compared by content: callers may build SQL in stack buffers. */
        if (strcmp(db->cache[i].sql, sql) == 0) {
            sqlite3_reset(db->cache[i].st);
            sqlite3_clear_bindings(db->cache[i].st);
            *out = db->cache[i].st;
            return AICFN_OK;
        }
    }
    if (db->ncache >= AICFN_DB_STMT_CACHE)
        return aicfn_error_set(err, AICFN_E_INTERNAL, "prepared statement cache full (%d)",
                               AICFN_DB_STMT_CACHE);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(db->conn, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK) return gw_db_error(db, rc, err, "preparing a statement");
    char *copy = strdup(sql);
    if (!copy) {
        sqlite3_finalize(st);
        return aicfn_error_set(err, AICFN_E_NOMEM, "caching a statement");
    }
    db->cache[db->ncache].sql = copy;
    db->cache[db->ncache].st = st;
    db->ncache++;
    *out = st;
    return AICFN_OK;
}

void gw_db_done(sqlite3_stmt *st) {
    if (st) sqlite3_reset(st);
}

int gw_db_exec(gw_db *db, const char *sql, aicfn_error *err) {
    char *emsg = NULL;
    int rc = sqlite3_exec(db->conn, sql, NULL, NULL, &emsg);
    if (rc == SQLITE_OK) return AICFN_OK;
    int code = AICFN_E_DB;
    int ext = sqlite3_extended_errcode(db->conn);
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) code = AICFN_E_EXISTS;
    aicfn_error_set(err, code, "%s: %s", sql, emsg ? emsg : sqlite3_errstr(rc));
    sqlite3_free(emsg);
    return code;
}

int gw_db_begin(gw_db *db, aicfn_error *err) {
    int rc = sqlite3_exec(db->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    return rc == SQLITE_OK ? AICFN_OK : gw_db_error(db, rc, err, "beginning a transaction");
}

int gw_db_begin_read(gw_db *db, aicfn_error *err) {
    int rc = sqlite3_exec(db->conn, "BEGIN", NULL, NULL, NULL);
    return rc == SQLITE_OK ? AICFN_OK : gw_db_error(db, rc, err, "beginning a read transaction");
}

int gw_db_commit(gw_db *db, aicfn_error *err) {
    int rc = sqlite3_exec(db->conn, "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK) return AICFN_OK;
    int code = gw_db_error(db, rc, err, "committing a transaction");
    gw_db_rollback(db);
    return code;
}

void gw_db_rollback(gw_db *db) {
    if (!sqlite3_get_autocommit(db->conn)) sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
}

int gw_db_schema_version(gw_db *db, int *out, aicfn_error *err) {
    gw_db_lock(db);
    int rc = db_user_version(db, out, err);
    gw_db_unlock(db);
    return rc;
}

int gw_db_integrity_check(gw_db *db, aicfn_error *err) {
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->conn, "PRAGMA integrity_check", -1, &st, NULL);
    int code = AICFN_OK;
    if (rc != SQLITE_OK) {
        code = gw_db_error(db, rc, err, "integrity_check");
    } else if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
        code = gw_db_error(db, rc, err, "integrity_check");
    } else {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        if (!r || strcmp(r, "ok") != 0)
            code =
                aicfn_error_set(err, AICFN_E_CORRUPT, "%s: integrity_check: %s", db->path, r ? r : "(null)");
    }
    sqlite3_finalize(st);
    gw_db_unlock(db);
    return code;
}

int gw_db_bind_text(sqlite3_stmt *st, int idx, const char *s) {
    return s ? sqlite3_bind_text(st, idx, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, idx);
}

int gw_db_collect(gw_db *db, sqlite3_stmt *st, size_t elem_size, gw_db_row_fn fill, void *arg, void **arr,
                  size_t *n, size_t *cap, const char *what, aicfn_error *err) {
    int rc = AICFN_OK, s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        unsigned char *na = grow_array(*arr, cap, *n + 1, elem_size);
        if (!na) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "%s: out of memory", what);
            break;
        }
        *arr = na;
        void *elem = na + *n * elem_size;
        memset(elem, 0, elem_size);
        (*n)++;
        if ((rc = fill(arg, st, elem, err)) != AICFN_OK) break;
    }
    if (rc == AICFN_OK && s != SQLITE_DONE) rc = gw_db_error(db, s, err, what);
    gw_db_done(st);
    return rc;
}

void gw_db_column_text(sqlite3_stmt *st, int col, char *buf, size_t len) {
    if (len == 0) return;
    const unsigned char *t = sqlite3_column_text(st, col);
    if (!t) {
        buf[0] = '\0';
        return;
    }
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (n >= len) n = len - 1;
    memcpy(buf, t, n);
    buf[n] = '\0';
}

char *gw_db_column_strdup(sqlite3_stmt *st, int col) {
    const unsigned char *t = sqlite3_column_text(st, col);
    size_t n = t ? (size_t)sqlite3_column_bytes(st, col) : 0;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (n) memcpy(s, t, n);
    s[n] = '\0';
    return s;
}
