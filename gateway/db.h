/* db.h: the gateway's SQLite connection: opening aicfn.db with the right pragmas,
 * schema migrations, a cache of prepared statements, transactions and error mapping.
 *
 * Durability choice. aicfn.db runs in WAL mode. The registry's connection commits with
 * synchronous=FULL (gw_db_open): a deploy, an rm or a key change is fsync'd before the
 * gateway replies, so an acknowledged one survives a kill -9 and a power loss alike.
 * The ledger writer's connection commits its batches with synchronous=NORMAL
 * (gw_db_set_batched): a batch is in the WAL (write(2)) when COMMIT returns, so it
 * survives a crash of the process, and a power loss may drop the last batches but never
 * corrupts the database (WAL checksums drop a torn tail); nobody was told those records
 * were stored, and an fsync per 100 ms batch would cost more than it saves.
 *
 * Not for: the schema's users (registry.h, ledger.h, keys.h own their queries).
 *
 * Thread-safety: a gw_db handle is one SQLite connection. The functions of registry.h,
 * ledger.h and keys.h lock the handle (gw_db_lock) for each call, so they may be called
 * on one handle from many threads. Direct users of gw_db_stmt must hold the lock from
 * getting a statement until gw_db_done. Open one handle per thread that must not wait
 * behind the others (the ledger writer opens its own). */
#ifndef AICFN_GATEWAY_DB_H
#define AICFN_GATEWAY_DB_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

typedef struct gw_db gw_db;

/* The schema version that gw_db_open migrates to (PRAGMA user_version). */
int gw_db_schema_latest(void);

/* Opens (creating when missing) `<data_dir>/aicfn.db`, creating data_dir (mode 0700)
 * when missing. Sets WAL, synchronous=FULL (a commit is on disk when it returns: what
 * the gateway acknowledges, a deploy, an rm, a key, survives a power loss, not only a
 * crash of the process), foreign_keys=ON, the busy timeout, then
 * applies the migrations that user_version says are missing, each in one transaction
 * (BEGIN IMMEDIATE, re-checked inside, so concurrent openers apply each once).
 * Returns AICFN_OK and a handle in *out, or AICFN_E_IO (directory) / AICFN_E_DB, with
 * the SQLite message, and *out = NULL. Blocks on disk I/O. */
int gw_db_open(const char *data_dir, gw_db **out, aicfn_error *err);

/* Same, on an explicit file path (tests; ":memory:" is accepted but not WAL). */
int gw_db_open_path(const char *path, gw_db **out, aicfn_error *err);

/* How a command beside the gateway (keys, usage, workers --history) opens the gateway's
 * database: never creating it and never migrating it, since a gateway of another version
 * may have it open. AICFN_E_NOT_FOUND when <data_dir>/aicfn.db is missing (a typo in
 * --data-dir must not pass for an empty database); AICFN_E_UNSUPPORTED, naming both
 * versions, when its schema is not the one this aicfn knows; AICFN_E_DB otherwise.
 * GW_DB_READ_ONLY opens it SQLITE_OPEN_READONLY: a writing statement fails. */
typedef enum { GW_DB_READ_ONLY, GW_DB_READ_WRITE } gw_db_access;
int gw_db_open_existing(const char *data_dir, gw_db_access access, gw_db **out, aicfn_error *err);

/* For a connection that commits batches of records nobody was told were stored (the
 * ledger writer): synchronous=NORMAL, no fsync per commit. A power loss may drop its
 * last commits but never corrupts the file; a crash of the process loses nothing
 * committed (WAL). */
int gw_db_set_batched(gw_db *db, aicfn_error *err);

/* Finalizes the cached statements and closes the connection. NULL is accepted.
 * No other thread may use the handle during or after the call. */
void gw_db_close(gw_db *db);

/* The file path the handle was opened on (owned by the handle). */
const char *gw_db_path(const gw_db *db);

/* The raw connection, for code that needs an SQLite call not wrapped here. Hold the
 * lock while using it. */
sqlite3 *gw_db_sqlite(gw_db *db);

/* Serialize users of one handle. Not recursive: a function that takes the lock must
 * not call another public function of registry/ledger/keys on the same handle. */
void gw_db_lock(gw_db *db);
void gw_db_unlock(gw_db *db);

/* Returns in *out a prepared statement for `sql`, reset and with its bindings cleared,
 * preparing it on first use and caching it in the handle (up to AICFN_DB_STMT_CACHE
 * distinct statements; more fail with AICFN_E_INTERNAL). The statement is owned by
 * the handle: never finalize it; call gw_db_done when finished so that a read
 * statement releases its snapshot of the WAL. Lock held. */
int gw_db_stmt(gw_db *db, const char *sql, sqlite3_stmt **out, aicfn_error *err);

/* Resets a statement got from gw_db_stmt (NULL accepted). */
void gw_db_done(sqlite3_stmt *st);

/* Runs SQL without results (one or more statements). Lock held. */
int gw_db_exec(gw_db *db, const char *sql, aicfn_error *err);

/* Transactions. begin takes the write lock at once (BEGIN IMMEDIATE), so a transaction
 * that reads then writes never fails half-way with SQLITE_BUSY. rollback accepts a
 * handle with no open transaction. Lock held. */
int gw_db_begin(gw_db *db, aicfn_error *err);
int gw_db_commit(gw_db *db, aicfn_error *err);
/* Starts a read transaction (deferred BEGIN): one consistent snapshot for several
 * SELECTs without taking the write lock. End it with gw_db_rollback. Lock held. */
int gw_db_begin_read(gw_db *db, aicfn_error *err);
void gw_db_rollback(gw_db *db);

/* Maps an SQLite result code to AICFN_E_DB (AICFN_E_EXISTS for a UNIQUE or PRIMARY KEY
 * violation) and fills err with "<what>: <sqlite3_errmsg> (<sqlite3_errstr>)".
 * Returns the aicfn code. */
int gw_db_error(gw_db *db, int rc, aicfn_error *err, const char *what);

/* Reads PRAGMA user_version. Takes the lock. */
int gw_db_schema_version(gw_db *db, int *out, aicfn_error *err);

/* Runs PRAGMA integrity_check; AICFN_OK when it answers "ok", else AICFN_E_CORRUPT with
 * the first problem. Takes the lock. */
int gw_db_integrity_check(gw_db *db, aicfn_error *err);

/* Binds a NUL-terminated string or NULL (as SQL NULL), transient copy. */
int gw_db_bind_text(sqlite3_stmt *st, int idx, const char *s);

/* Copies column `col` as text into buf (truncated to len-1, "" for NULL). */
void gw_db_column_text(sqlite3_stmt *st, int col, char *buf, size_t len);

/* Copies column `col` as text into a new malloc'd string ("" for NULL); NULL when out of
 * memory. The caller frees it. */
char *gw_db_column_strdup(sqlite3_stmt *st, int col);

/* Fills one array element (zeroed beforehand) from the current row of `st`. Returns
 * AICFN_OK, or an error that stops the collection. */
typedef int (*gw_db_row_fn)(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err);

/* The loop of every list query: steps `st` (prepared and bound by the caller, who holds
 * the lock) to its end, appending one zeroed element of `elem_size` bytes per row to
 * *arr (*n elements, *cap allocated; grown with grow_array) and filling it with `fill`
 * (`arg` passed through), then resets `st`. Errors: AICFN_E_NOMEM, the SQLite error
 * (gw_db_error naming `what`), or fill's. On error the elements appended so far (the
 * failing one included, once counted) stay in *arr for the caller to free its way. */
int gw_db_collect(gw_db *db, sqlite3_stmt *st, size_t elem_size, gw_db_row_fn fill, void *arg, void **arr,
                  size_t *n, size_t *cap, const char *what, aicfn_error *err);

#endif
