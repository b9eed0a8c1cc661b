/* ledger.h: the records of every invocation and cold start, and the rows of the
 * `workers` table that mirror the gateway's live pool, written to aicfn.db by ONE writer
 * thread in batched transactions, and the queries `aicfn coldstarts` and `aicfn usage`
 * print (the workers table is read back by registry.h gw_registry_worker_list).
 *
 * The request path never waits on SQLite: gw_ledger_submit_* copies the record into a
 * bounded in-memory queue and returns. The writer commits whatever is queued at least
 * every AICFN_LEDGER_FLUSH_MS, or as soon as AICFN_LEDGER_FLUSH_RECORDS are waiting, in
 * one transaction per batch. gw_ledger_destroy drains the queue before returning, so a
 * clean stop loses nothing that was accepted. A crash (kill -9) loses at most the
 * records not yet committed (up to one flush interval); SQLite's WAL guarantees the
 * database itself is never corrupted (db.h). The writer's connection is batched
 * (gw_db_set_batched: no fsync per commit), so a power loss may also drop its last
 * commits; the registry's connection, whose commits are acknowledged, fsyncs each.
 *
 * Full queue: drop, count, log. The queue holds AICFN_LEDGER_QUEUE_MAX records (a few
 * seconds of the writer's full speed, tens of MB at most). It only fills when SQLite
 * cannot commit (a stalled or full disk). Blocking the submitter then would turn a
 * disk problem into an outage of every invocation, and the calls being recorded have
 * already run; so a submit to a full queue is refused, counted in
 * gw_ledger_stats.dropped (aicfn_ledger_records_dropped_total on /metrics), and logged at warn level (the
 * first drop, then at most once per second with the running count). Billing data matters: the bound is
 * generous and the loss is never silent.
 *
 * Thread-safety: submit and stats may be called from any thread concurrently; create
 * and destroy from one owner. The query functions take a gw_db (usually the registry's
 * handle, not the writer's) and may run concurrently with the writer (WAL readers do
 * not block the writer). */
#ifndef AICFN_GATEWAY_LEDGER_H
#define AICFN_GATEWAY_LEDGER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/tunables.h"
#include "gateway/db.h"

typedef struct gw_ledger gw_ledger;

/* ---- Records ------------------------------------------------------------------ */

/* One invocation. Strings are borrowed for the call (copied; NULL is stored as NULL for
 * request_id/worker/device, as "" for tenant/function). */
typedef struct gw_invocation_record {
    uint64_t time_us; /* wall clock, µs since the epoch; 0 = now */
    uint64_t call_id; /* the gateway's id for the call (gid); 0: none (stored as NULL) */
    const char *request_id;
    const char *tenant;
    const char *function;
    uint32_t version;
    const char *worker;
    const char *device;
    int status;          /* aicfn_status; stored as its name ("AICFN_OK") */
    uint32_t batch_size; /* requests in the handler call that served it; 0 is taken as 1 */
    uint64_t bytes_in, bytes_out;
    uint64_t queue_us, load_us, exec_us, total_us;
    uint64_t load_gpu_us; /* its share of the cold start its batch made (wire_timing.cold_share_us) */
    bool cold;
    bool cached;  /* served from the gateway's response cache: no worker, exec_us 0 */
    bool refused; /* refused before anything ran (rate, quota, unknown function...): its row
                     is dropped once the queue is half full (AICFN_E_OVERLOADED, counted),
                     so that a client hammering past its limits cannot crowd out the rows
                     of the calls that ran */
} gw_invocation_record;

/* One cold start (a model loaded into a worker). `evicted` lists the models evicted to
 * make room ("name:ver" strings), stored as a JSON array text. */
typedef struct gw_cold_start_record {
    uint64_t time_us; /* 0 = now */
    const char *function;
    uint32_t version;
    const char *worker;
    const char *device;
    uint64_t compressed_bytes, raw_bytes;
    uint64_t spawn_us, queue_us, fetch_us, read_us, decompress_us, filter_us, copy_us, init_us, total_us;
    const char *const *evicted;
    size_t n_evicted;
} gw_cold_start_record;

/* The states a row of the `workers` table takes (the gateway's live pool, mirrored;
 * the states are documented with the schema in db.c and in docs/architecture.md):
 *   starting  spawned (local) or registered (remote); its first status not answered yet
 *   ready     answered its first status; routable
 *   draining  asked to drain (idle scale-down) or says it drains; takes no new calls
 *   exited    left the pool in order: drained and exited, or the gateway stopped cleanly
 *   lost      left the pool unexpectedly: crashed or killed (kill -9, or by the gateway
 *             after a call overran its timeout), failed to start, stopped answering
 *             status polls, or was live when an earlier gateway process ended without
 *             stopping it (marked at the next gateway's start, gw_workers_mark_lost). */
typedef enum gw_worker_row_state {
    GW_WROW_STARTING = 0,
    GW_WROW_READY = 1,
    GW_WROW_DRAINING = 2,
    GW_WROW_EXITED = 3,
    GW_WROW_LOST = 4,
    GW_WROW_COUNT
} gw_worker_row_state;

/* "starting", "ready", "draining", "exited", "lost"; "?" for anything else. */
const char *gw_worker_row_state_name(gw_worker_row_state s);

/* One worker's row, written as an UPSERT keyed by `id`: the row always holds the latest
 * record of that worker name. Strings are borrowed for the call (copied; NULL is stored
 * as ""). `id` must be 1..AICFN_WORKER_ID_MAX_BYTES bytes. */
typedef struct gw_worker_record {
    const char *id;        /* the worker's name: w<N> (local) or the name it registered with */
    const char *address;   /* the address the gateway dials */
    const char *device;    /* "" until its first status */
    uint64_t budget_bytes; /* its cache budget; 0 until its first status */
    int64_t pid;           /* local workers; <= 0 (remote: unknown) is stored as NULL */
    uint64_t started_us;   /* wall clock: spawn or registration; 0 = now */
    uint64_t last_seen_us; /* wall clock: its last status answer; 0 = started_us */
    gw_worker_row_state state;
} gw_worker_record;

/* The device time billed to one request of a batch: exec_us divided by batch_size,
 * rounded UP to a whole µs (so a call that ran is never billed 0, and a batch's
 * members together are billed at most batch_size - 1 µs more than the batch ran).
 * batch_size 0 is taken as 1. Pure. */
uint64_t gw_ledger_gpu_us(uint64_t exec_us, uint32_t batch_size);

/* ---- Writer ------------------------------------------------------------------- */

/* Opens its own connection to <data_dir>/aicfn.db (migrating it if needed) and starts
 * the writer thread. flush_ms / flush_records of 0 take AICFN_LEDGER_FLUSH_MS /
 * AICFN_LEDGER_FLUSH_RECORDS; queue_max of 0 takes AICFN_LEDGER_QUEUE_MAX. */
int gw_ledger_create(const char *data_dir, unsigned flush_ms, unsigned flush_records, size_t queue_max,
                     gw_ledger **out, aicfn_error *err);

/* Stops taking records, commits everything queued, stops the thread and closes the
 * connection. If the final commits fail, retries for up to ~5 s in all
 * (AICFN_LEDGER_STOP_RETRY_MS, however many batches are queued), then drops the rest and
 * logs how many records were lost. NULL accepted. */
void gw_ledger_destroy(gw_ledger *l);

/* Queue a record; never blocks on SQLite (only briefly on the queue's mutex).
 * AICFN_OK; AICFN_E_OVERLOADED when the queue is full (dropped and counted);
 * AICFN_E_CANCELED after destroy began; AICFN_E_NOMEM (dropped, counted and logged as a
 * full queue's). Thread-safe. */
int gw_ledger_submit_invocation(gw_ledger *l, const gw_invocation_record *r);
int gw_ledger_submit_cold_start(gw_ledger *l, const gw_cold_start_record *r);
/* Queues a worker row (UPSERT into `workers`). Rows are committed in the order they were
 * submitted, so a caller that submits one worker's changes in order (gateway.c does it
 * under its own lock) leaves the row with the latest. A full queue drops 'ready' and
 * 'draining' rows (refreshes) but not a worker's first row ('starting', which reserves
 * its name w<N> for good: gw_workers_next_local_id) nor its last ('exited', 'lost'):
 * two per worker process, whose starts are paced; but remote registrations are paced by
 * no one, so those too are dropped (and counted) once the queue holds twice its bound.
 * Same returns as above, plus
 * AICFN_E_INVALID for an empty or overlong id or an unknown state. Thread-safe. */
int gw_ledger_submit_worker(gw_ledger *l, const gw_worker_record *r);

/* Adds load_gpu_us to the load_gpu_us of the row of call `call_id` written at or after
 * since_us (wall clock): a load the call's batch made and gave up on before it ended
 * (gateway.c gw_bill_abandoned_load). Queued behind the row itself; a row not found (dropped,
 * never written) is charged nothing. Same returns as above. Thread-safe. */
int gw_ledger_submit_load_charge(gw_ledger *l, uint64_t call_id, uint64_t since_us, uint64_t load_gpu_us);

/* Waits until every record submitted before the call is committed (or dropped), or
 * timeout_ms passes (AICFN_E_TIMEOUT). For tests and for a CLI query right after a
 * call. Thread-safe; blocks. */
int gw_ledger_flush(gw_ledger *l, unsigned timeout_ms, aicfn_error *err);

typedef struct gw_ledger_stats {
    uint64_t submitted;      /* accepted into the queue */
    uint64_t committed;      /* rows committed to SQLite */
    uint64_t dropped;        /* refused (queue full), lost (out of memory before it was queued, or
                                a commit failed at shutdown) */
    uint64_t batches;        /* committed transactions */
    uint64_t failed_commits; /* transactions that failed and were retried */
    uint64_t queued;         /* waiting now */
} gw_ledger_stats;

/* A consistent snapshot of the counters. Thread-safe. */
void gw_ledger_get_stats(gw_ledger *l, gw_ledger_stats *out);

/* ---- Queries (aicfn coldstarts, aicfn usage) ---------------------------------- */

/* Phases of a cold start, in column order. */
typedef enum gw_phase {
    GW_PHASE_SPAWN,
    GW_PHASE_QUEUE,
    GW_PHASE_FETCH, /* a remote worker downloading the snapshot; 0 otherwise */
    GW_PHASE_READ,
    GW_PHASE_DECOMPRESS,
    GW_PHASE_FILTER,
    GW_PHASE_COPY,
    GW_PHASE_INIT,
    GW_PHASE_TOTAL,
    GW_PHASE_COUNT
} gw_phase;

/* "spawn", "queue", ... "total". */
const char *gw_phase_name(gw_phase p);

/* Percentiles use the nearest-rank method: pN is the value at 1-based rank
 * ceil(N/100 * count) of the sorted values (so p50 of {1,2,3,4} is 2, and p100 = max). */
typedef struct gw_phase_stats {
    uint64_t p50_us, p95_us, max_us;
} gw_phase_stats;

typedef struct gw_coldstart_summary {
    char function[AICFN_FN_NAME_MAX_BYTES + 1];
    uint64_t count;
    gw_phase_stats phase[GW_PHASE_COUNT];
    uint64_t compressed_bytes; /* sums over the cold starts */
    uint64_t raw_bytes;
} gw_coldstart_summary;

/* Cold starts with time_us >= since_us, per function (only `function` when not NULL),
 * sorted by name, into a new malloc'd array (caller frees; NULL/0 when none). */
int gw_ledger_coldstarts(gw_db *db, const char *function, uint64_t since_us, gw_coldstart_summary **out,
                         size_t *n, aicfn_error *err);

/* [{"function", "count", "compressed_bytes", "raw_bytes", "phases": {"spawn":
 * {"p50_us","p95_us","max_us"}, ...}}]. New reference or NULL. */
json_t *gw_coldstarts_to_json(const gw_coldstart_summary *s, size_t n);

/* Usage of one tenant on one function (or the total). All sums are exact integers
 * computed by SQLite over the ledger; convert to seconds only when printing. */
typedef struct gw_usage_row {
    char tenant[AICFN_TENANT_MAX_BYTES + 1];
    char function[AICFN_FN_NAME_MAX_BYTES + 1];
    uint64_t calls;
    uint64_t errors;  /* status != AICFN_OK */
    uint64_t gpu_us;  /* sum of gpu_us (handler runs) */
    uint64_t load_gpu_us; /* sum of load_gpu_us (the cold starts its calls made) */
    uint64_t cold_us; /* model-load wait over cold calls, each cold batch's load_us split
                         across its calls like gpu_us (ceil(load_us / batch_size)) */
    uint64_t cold_calls;
    uint64_t bytes_in, bytes_out;
} gw_usage_row;

/* Rows per (tenant, function) with time_us >= since_us (only `tenant` when not NULL),
 * sorted by tenant then function, into a new malloc'd array (caller frees), and in
 * *total the same sums over all those rows, computed by one separate SQL aggregate, so
 * the total equals `SELECT sum(...) FROM invocations WHERE ...` exactly (and the sum of
 * the rows). total->tenant/function are "". */
int gw_ledger_usage(gw_db *db, const char *tenant, uint64_t since_us, gw_usage_row **out, size_t *n,
                    gw_usage_row *total, aicfn_error *err);

/* The device time a usage row is charged for: gpu_us + load_gpu_us (saturating). */
uint64_t gw_usage_billed_us(const gw_usage_row *r);

/* Cost of gpu_us at a price per GPU-second (gpu_us / 1e6 * price). Presentation only. */
double gw_usage_cost(uint64_t gpu_us, double price_per_gpu_s);

/* {"rows":[{"tenant","function","calls","errors","gpu_us","gpu_s","load_gpu_us","load_gpu_s",
 * "cold_us","cold_s","cold_calls","bytes_in","bytes_out","cost"}], "total":{...},
 * "price_per_gpu_s":P}; cost is gw_usage_billed_us at the price.
 * New reference or NULL. */
json_t *gw_usage_to_json(const gw_usage_row *rows, size_t n, const gw_usage_row *total,
                         double price_per_gpu_s);

/* ---- Worker rows at gateway start ------------------------------------------------ */

/* Marks `lost` every row still `starting`, `ready` or `draining`: called synchronously
 * when a gateway opens aicfn.db, before it starts or registers any worker, so those rows
 * are leftovers of a gateway process that ended without stopping its workers (kill -9,
 * crash); they are not this gateway's workers. One data directory serves one gateway at
 * a time. *n (may be NULL) gets the number of rows changed. Takes the lock; blocks on
 * SQLite. */
int gw_workers_mark_lost(gw_db *db, uint64_t *n, aicfn_error *err);

/* The number the next local worker should take (its name is w<N>): one more than the
 * highest N of a local row (a `wN` id with a pid), 1 when there is none, so local
 * worker names, and the ledger rows that name them, stay unique across gateway
 * restarts. Takes the lock. */
int gw_workers_next_local_id(gw_db *db, uint32_t *out, aicfn_error *err);

/* Invocations per tenant with time_us >= since_us, for seeding daily quotas at start
 * (keys.h gw_limits_seed): every row but those the limits refused (AICFN_E_QUOTA),
 * which used no quota when they happened. Calls fn(tenant, count, ctx) for each tenant. */
int gw_ledger_count_by_tenant(gw_db *db, uint64_t since_us,
                              void (*fn)(const char *tenant, uint64_t count, void *ctx), void *ctx,
                              aicfn_error *err);

#endif
