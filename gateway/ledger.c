/* ledger.c: the invocation and cold-start ledger and the workers table's rows: a bounded
 * queue, one writer thread committing batches to aicfn.db, the coldstarts/usage
 * queries, and the workers table's start-of-gateway fix-ups.
 *
 * Not for: deciding what to record (the router and front build the records), metrics
 * (gateway/metrics.c reads gw_ledger_get_stats). */
#include "gateway/ledger.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

typedef enum { LED_INVOCATION, LED_COLD_START, LED_WORKER, LED_LOAD_CHARGE } led_kind;

/* One queued record; strings point into the same allocation (or are NULL). */
typedef struct led_rec {
    struct led_rec *next;
    led_kind kind;
    uint64_t seq;
    uint64_t time_us; /* LED_LOAD_CHARGE: the earliest its call's row can have */
    uint64_t call_id;
    uint32_t version;
    char *request_id, *tenant, *function, *worker, *device, *evicted;
    int status;
    uint32_t batch_size;
    uint64_t bytes_in, bytes_out, queue_us, load_us, exec_us, total_us, gpu_us, load_gpu_us;
    bool cold;
    bool cached;
    uint64_t compressed_bytes, raw_bytes;
    uint64_t phase[GW_PHASE_COUNT];
    /* LED_WORKER: id in `worker`, plus these. */
    char *address;
    gw_worker_row_state wstate;
    int64_t pid;
    uint64_t started_us, last_seen_us, budget_bytes;
} led_rec;

struct gw_ledger {
    gw_db *db;
    unsigned flush_ms;
    unsigned flush_records;
    size_t queue_max;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t wake; /* writer waits: records, flush request, stop */
    pthread_cond_t done; /* flushers wait: done_seq advanced */
    led_rec *head, *tail;
    size_t count;             /* queued */
    size_t inflight;          /* taken by the writer, not yet committed */
    uint64_t first_queued_us; /* monotonic time the oldest queued record arrived */
    uint64_t next_seq;        /* last seq given */
    uint64_t done_seq;        /* every record with seq <= done_seq is committed or dropped */
    bool stopping;
    bool flush_now;
    gw_ledger_stats stats;
    uint64_t last_drop_log_us;
};

static const char *const led_phase_names[GW_PHASE_COUNT] = {"spawn",  "queue", "fetch", "read", "decompress",
                                                            "filter", "copy",  "init",  "total"};
static const char *const led_phase_cols[GW_PHASE_COUNT] = {"spawn_us", "queue_us",      "fetch_us",
                                                           "read_us",  "decompress_us", "filter_us",
                                                           "copy_us",  "init_us",       "total_us"};

static const char *const led_wrow_names[GW_WROW_COUNT] = {"starting", "ready", "draining", "exited", "lost"};

const char *gw_worker_row_state_name(gw_worker_row_state s) {
    return (unsigned)s < GW_WROW_COUNT ? led_wrow_names[s] : "?";
}

const char *gw_phase_name(gw_phase p) {
    return (unsigned)p < GW_PHASE_COUNT ? led_phase_names[p] : "?";
}

uint64_t gw_ledger_gpu_us(uint64_t exec_us, uint32_t batch_size) {
    if (batch_size == 0) batch_size = 1;
    return exec_us / batch_size + (exec_us % batch_size != 0);
}

uint64_t gw_usage_billed_us(const gw_usage_row *r) {
    return r->gpu_us > UINT64_MAX - r->load_gpu_us ? UINT64_MAX : r->gpu_us + r->load_gpu_us;
}

double gw_usage_cost(uint64_t gpu_us, double price_per_gpu_s) {
    return (double)gpu_us / 1e6 * price_per_gpu_s;
}

/* ---- Queue ---------------------------------------------------------------------- */

static size_t led_len(const char *s) {
    return s ? strlen(s) + 1 : 0;
}

static char *led_put(char **cursor, const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *dst = *cursor;
    memcpy(dst, s, n);
    *cursor += n;
    return dst;
}

/* Counts a dropped record (lock held): the count so far, and in *say whether to log it
 * now (the first drop, then at most once a second). */
static uint64_t led_drop_locked(gw_ledger *l, bool *say) {
    uint64_t dropped = ++l->stats.dropped;
    uint64_t now = clock_now_us();
    *say = dropped == 1 || now - l->last_drop_log_us >= 1000000;
    if (*say) l->last_drop_log_us = now;
    return dropped;
}

/* A record lost before it could be queued (out of memory): counted in stats.dropped
 * (aicfn_ledger_records_dropped_total) and logged like a full queue's drops: the loss is
 * never silent. Returns AICFN_E_NOMEM. */
static int led_lost(gw_ledger *l, const char *what) {
    bool say;
    pthread_mutex_lock(&l->mu);
    uint64_t dropped = led_drop_locked(l, &say);
    pthread_mutex_unlock(&l->mu);
    if (say)
        log_warn("ledger: out of memory for a %s record: dropped, %llu dropped so far", what,
                 (unsigned long long)dropped);
    return AICFN_E_NOMEM;
}

/* `keep`: queued even when the queue is full, up to twice its bound (a worker's first and
 * last rows: two per worker, but workers that register and fail again and again while
 * the disk is stalled must not grow it without end); `shed`: dropped once it is half
 * full (a refused call's row). */
static int led_enqueue(gw_ledger *l, led_rec *r, bool keep, bool shed) {
    pthread_mutex_lock(&l->mu);
    if (l->stopping) {
        l->stats.dropped++; /* a call ending while the gateway stops: not recorded either */
        pthread_mutex_unlock(&l->mu);
        free(r);
        return AICFN_E_CANCELED;
    }
    size_t room = shed ? l->queue_max / 2 : keep ? 2 * l->queue_max : l->queue_max;
    if (l->count + l->inflight >= room) {
        bool say;
        uint64_t dropped = led_drop_locked(l, &say);
        pthread_mutex_unlock(&l->mu);
        free(r);
        if (say)
            log_warn("ledger: queue %s (%zu records): record dropped, %llu dropped so far; is the disk "
                     "stalled or full?%s",
                     shed ? "half full" : "full", l->queue_max, (unsigned long long)dropped,
                     shed ? " (a refused call's row: those go first)" : "");
        return AICFN_E_OVERLOADED;
    }
    r->seq = ++l->next_seq;
    r->next = NULL;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    if (l->count++ == 0) {
        l->first_queued_us = clock_now_us();
        pthread_cond_signal(&l->wake);
    } else if (l->count == l->flush_records) {
        pthread_cond_signal(&l->wake);
    }
    l->stats.submitted++;
    pthread_mutex_unlock(&l->mu);
    return AICFN_OK;
}

int gw_ledger_submit_invocation(gw_ledger *l, const gw_invocation_record *in) {
    const char *tenant = in->tenant ? in->tenant : "";
    const char *function = in->function ? in->function : "";
    size_t extra = led_len(in->request_id) + led_len(tenant) + led_len(function) + led_len(in->worker) +
                   led_len(in->device);
    led_rec *r = calloc(1, sizeof *r + extra);
    if (!r) return led_lost(l, "call");
    char *cur = (char *)(r + 1);
    r->kind = LED_INVOCATION;
    r->time_us = in->time_us ? in->time_us : clock_wall_us();
    r->call_id = in->call_id;
    r->request_id = led_put(&cur, in->request_id);
    r->tenant = led_put(&cur, tenant);
    r->function = led_put(&cur, function);
    r->worker = led_put(&cur, in->worker);
    r->device = led_put(&cur, in->device);
    r->version = in->version;
    r->status = in->status;
    r->batch_size = in->batch_size ? in->batch_size : 1;
    r->bytes_in = in->bytes_in;
    r->bytes_out = in->bytes_out;
    r->queue_us = in->queue_us;
    r->load_us = in->load_us;
    r->exec_us = in->exec_us;
    r->total_us = in->total_us;
    r->gpu_us = gw_ledger_gpu_us(in->exec_us, r->batch_size);
    r->load_gpu_us = in->load_gpu_us;
    r->cold = in->cold;
    r->cached = in->cached;
    return led_enqueue(l, r, false, in->refused);
}

int gw_ledger_submit_load_charge(gw_ledger *l, uint64_t call_id, uint64_t since_us, uint64_t load_gpu_us) {
    if (call_id == 0 || load_gpu_us == 0) return AICFN_OK;
    led_rec *r = calloc(1, sizeof *r);
    if (!r) return led_lost(l, "load charge");
    r->kind = LED_LOAD_CHARGE;
    r->call_id = call_id;
    r->time_us = since_us;
    r->load_gpu_us = load_gpu_us;
    return led_enqueue(l, r, false, false);
}

int gw_ledger_submit_cold_start(gw_ledger *l, const gw_cold_start_record *in) {
    json_t *ev = json_array();
    for (size_t i = 0; ev && i < in->n_evicted; i++)
        if (json_array_append_new(ev, json_string(in->evicted[i] ? in->evicted[i] : "")) != 0) {
            json_decref(ev);
            ev = NULL;
        }
    char *evicted = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    if (!evicted) return led_lost(l, "cold start");
    const char *function = in->function ? in->function : "";
    const char *worker = in->worker ? in->worker : "";
    const char *device = in->device ? in->device : "";
    size_t extra = led_len(function) + led_len(worker) + led_len(device) + led_len(evicted);
    led_rec *r = calloc(1, sizeof *r + extra);
    if (!r) {
        free(evicted);
        return led_lost(l, "cold start");
    }
    char *cur = (char *)(r + 1);
    r->kind = LED_COLD_START;
    r->time_us = in->time_us ? in->time_us : clock_wall_us();
    r->function = led_put(&cur, function);
    r->worker = led_put(&cur, worker);
    r->device = led_put(&cur, device);
    r->evicted = led_put(&cur, evicted);
    free(evicted);
    r->version = in->version;
    r->compressed_bytes = in->compressed_bytes;
    r->raw_bytes = in->raw_bytes;
    const uint64_t ph[GW_PHASE_COUNT] = {in->spawn_us, in->queue_us,      in->fetch_us,
                                         in->read_us,  in->decompress_us, in->filter_us,
                                         in->copy_us,  in->init_us,       in->total_us};
    memcpy(r->phase, ph, sizeof ph);
    return led_enqueue(l, r, false, false);
}

int gw_ledger_submit_worker(gw_ledger *l, const gw_worker_record *in) {
    if (!in->id || !in->id[0] || strlen(in->id) > AICFN_WORKER_ID_MAX_BYTES ||
        (unsigned)in->state >= GW_WROW_COUNT)
        return AICFN_E_INVALID;
    const char *address = in->address ? in->address : "";
    const char *device = in->device ? in->device : "";
    led_rec *r = calloc(1, sizeof *r + led_len(in->id) + led_len(address) + led_len(device));
    if (!r) return led_lost(l, "worker");
    char *cur = (char *)(r + 1);
    r->kind = LED_WORKER;
    r->worker = led_put(&cur, in->id);
    r->address = led_put(&cur, address);
    r->device = led_put(&cur, device);
    r->wstate = in->state;
    r->pid = in->pid > 0 ? in->pid : 0;
    r->budget_bytes = in->budget_bytes;
    r->started_us = in->started_us ? in->started_us : clock_wall_us();
    r->last_seen_us = in->last_seen_us ? in->last_seen_us : r->started_us;
    bool first_or_last =
        in->state == GW_WROW_STARTING || in->state == GW_WROW_EXITED || in->state == GW_WROW_LOST;
    return led_enqueue(l, r, first_or_last, false);
}

/* ---- Writer --------------------------------------------------------------------- */

static sqlite3_int64 led_i64(uint64_t v) {
    return v > INT64_MAX ? INT64_MAX : (sqlite3_int64)v;
}

/* A measured amount (µs or bytes) as stored: capped at AICFN_LEDGER_AMOUNT_MAX, so that
 * one absurd value from a worker's reply (they are not bounded on the wire) cannot make
 * the sums of `aicfn usage` and `aicfn coldstarts` overflow for every later query. */
static sqlite3_int64 led_amount(uint64_t v) {
    return v > AICFN_LEDGER_AMOUNT_MAX ? (sqlite3_int64)AICFN_LEDGER_AMOUNT_MAX : (sqlite3_int64)v;
}

static int led_insert(gw_db *db, const led_rec *r, aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc;
    if (r->kind == LED_INVOCATION) {
        rc = gw_db_stmt(
            db,
            "INSERT INTO invocations(time_us, request_id, tenant, function, version, worker, device, "
            "status, batch_size, bytes_in, bytes_out, queue_us, load_us, exec_us, total_us, gpu_us, "
            "cold, cached, load_gpu_us, call_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, "
            "?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            &st, err);
        if (rc) return rc;
        sqlite3_bind_int64(st, 1, led_i64(r->time_us));
        gw_db_bind_text(st, 2, r->request_id);
        gw_db_bind_text(st, 3, r->tenant);
        gw_db_bind_text(st, 4, r->function);
        sqlite3_bind_int64(st, 5, r->version);
        gw_db_bind_text(st, 6, r->worker);
        gw_db_bind_text(st, 7, r->device);
        gw_db_bind_text(st, 8, aicfn_status_name(r->status));
        sqlite3_bind_int64(st, 9, r->batch_size);
        sqlite3_bind_int64(st, 10, led_amount(r->bytes_in));
        sqlite3_bind_int64(st, 11, led_amount(r->bytes_out));
        sqlite3_bind_int64(st, 12, led_amount(r->queue_us));
        sqlite3_bind_int64(st, 13, led_amount(r->load_us));
        sqlite3_bind_int64(st, 14, led_amount(r->exec_us));
        sqlite3_bind_int64(st, 15, led_amount(r->total_us));
        sqlite3_bind_int64(st, 16, led_amount(r->gpu_us));
        sqlite3_bind_int(st, 17, r->cold ? 1 : 0);
        sqlite3_bind_int(st, 18, r->cached ? 1 : 0);
        sqlite3_bind_int64(st, 19, led_amount(r->load_gpu_us));
        if (r->call_id)
            sqlite3_bind_int64(st, 20, led_i64(r->call_id));
        else
            sqlite3_bind_null(st, 20);
    } else if (r->kind == LED_LOAD_CHARGE) {
        /* The newest row of that call id (ids restart with the gateway; since_us keeps a
         * previous run's row out), capped like every stored amount. */
        rc = gw_db_stmt(db,
                        "UPDATE invocations SET load_gpu_us = min(load_gpu_us + ?1, ?2) WHERE id = "
                        "(SELECT max(id) FROM invocations WHERE call_id = ?3 AND time_us >= ?4)",
                        &st, err);
        if (rc) return rc;
        sqlite3_bind_int64(st, 1, led_amount(r->load_gpu_us));
        sqlite3_bind_int64(st, 2, (sqlite3_int64)AICFN_LEDGER_AMOUNT_MAX);
        sqlite3_bind_int64(st, 3, led_i64(r->call_id));
        sqlite3_bind_int64(st, 4, led_i64(r->time_us));
    } else if (r->kind == LED_WORKER) {
        /* One row per worker name, always holding its latest record (ledger.h). */
        rc = gw_db_stmt(db,
                        "INSERT INTO workers(id, address, device, budget_bytes, pid, started_us, "
                        "last_seen_us, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                        "ON CONFLICT(id) DO UPDATE SET address = excluded.address, device = "
                        "excluded.device, budget_bytes = excluded.budget_bytes, pid = excluded.pid, "
                        "started_us = excluded.started_us, last_seen_us = excluded.last_seen_us, "
                        "state = excluded.state",
                        &st, err);
        if (rc) return rc;
        gw_db_bind_text(st, 1, r->worker);
        gw_db_bind_text(st, 2, r->address);
        gw_db_bind_text(st, 3, r->device);
        sqlite3_bind_int64(st, 4, led_i64(r->budget_bytes));
        if (r->pid > 0)
            sqlite3_bind_int64(st, 5, r->pid);
        else
            sqlite3_bind_null(st, 5);
        sqlite3_bind_int64(st, 6, led_i64(r->started_us));
        sqlite3_bind_int64(st, 7, led_i64(r->last_seen_us));
        gw_db_bind_text(st, 8, gw_worker_row_state_name(r->wstate));
    } else {
        rc = gw_db_stmt(
            db,
            "INSERT INTO cold_starts(time_us, function, version, worker, device, compressed_bytes, "
            "raw_bytes, spawn_us, queue_us, fetch_us, read_us, decompress_us, filter_us, copy_us, "
            "init_us, total_us, evicted) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, "
            "?14, ?15, ?16, ?17)",
            &st, err);
        if (rc) return rc;
        sqlite3_bind_int64(st, 1, led_i64(r->time_us));
        gw_db_bind_text(st, 2, r->function);
        sqlite3_bind_int64(st, 3, r->version);
        gw_db_bind_text(st, 4, r->worker);
        gw_db_bind_text(st, 5, r->device);
        sqlite3_bind_int64(st, 6, led_amount(r->compressed_bytes));
        sqlite3_bind_int64(st, 7, led_amount(r->raw_bytes));
        for (int p = 0; p < GW_PHASE_COUNT; p++)
            sqlite3_bind_int64(st, 8 + p, led_amount(r->phase[p]));
        gw_db_bind_text(st, 8 + GW_PHASE_COUNT, r->evicted);
    }
    int s = sqlite3_step(st);
    rc = s == SQLITE_DONE ? AICFN_OK : gw_db_error(db, s, err, "ledger insert");
    gw_db_done(st);
    return rc;
}

static int led_commit_batch(gw_ledger *l, const led_rec *batch, aicfn_error *err) {
    gw_db_lock(l->db);
    int rc = gw_db_begin(l->db, err);
    for (const led_rec *r = batch; !rc && r; r = r->next)
        rc = led_insert(l->db, r, err);
    if (!rc)
        rc = gw_db_commit(l->db, err);
    else
        gw_db_rollback(l->db);
    gw_db_unlock(l->db);
    return rc;
}

static void led_free_list(led_rec *r) {
    while (r) {
        led_rec *n = r->next;
        free(r);
        r = n;
    }
}

/* Drops every queued record (lock held): the shutdown's retries ran out. */
static void led_drop_queued_locked(gw_ledger *l) {
    if (!l->head) return;
    uint64_t last_seq = l->tail->seq;
    size_t n = l->count;
    led_free_list(l->head);
    l->head = l->tail = NULL;
    l->count = 0;
    l->stats.dropped += n;
    l->done_seq = last_seq;
    log_error("ledger: %zu more records lost at shutdown (the database kept failing)", n);
}

static void *led_writer(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:ledger");
    gw_ledger *l = arg;
    /* Once stopping, failing commits are retried until this time, all batches together:
     * a backlog of many batches must not multiply the wait (0: not set yet). */
    uint64_t give_up_us = 0;
    bool gave_up = false;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stopping && !l->flush_now && l->count == 0)
            pthread_cond_wait(&l->wake, &l->mu);
        /* Let a batch fill up to flush_records or flush_ms after its first record. */
        while (!l->stopping && !l->flush_now && l->count > 0 && l->count < l->flush_records) {
            uint64_t deadline = l->first_queued_us + (uint64_t)l->flush_ms * 1000u;
            if (clock_now_us() >= deadline) break;
            struct timespec ts;
            clock_deadline_to_timespec(deadline, &ts);
            pthread_cond_timedwait(&l->wake, &l->mu, &ts);
        }
        l->flush_now = false;
        if (l->count == 0) {
            if (l->stopping) break;
            pthread_cond_broadcast(&l->done);
            continue;
        }
        /* At most flush_records per transaction, however many queued up meanwhile (a
         * stalled disk): its write lock, and a retry, stay short. */
        led_rec *batch = l->head, *last = batch;
        size_t n = 1;
        while (n < l->flush_records && last->next) {
            last = last->next;
            n++;
        }
        uint64_t last_seq = last->seq;
        l->head = last->next;
        if (!l->head) l->tail = NULL;
        last->next = NULL;
        l->count -= n;
        l->inflight = n;
        pthread_mutex_unlock(&l->mu);

        aicfn_error err = {0};
        int attempts = 0;
        int rc = AICFN_E_CANCELED;
        while (!gave_up) {
            rc = led_commit_batch(l, batch, &err);
            attempts++;
            if (rc == AICFN_OK) break;
            pthread_mutex_lock(&l->mu);
            l->stats.failed_commits++;
            bool stopping = l->stopping;
            pthread_mutex_unlock(&l->mu);
            log_error("ledger: committing %zu records failed (attempt %d): %s", n, attempts, err.msg);
            if (stopping) {
                uint64_t now = clock_now_us();
                if (!give_up_us) give_up_us = now + (uint64_t)AICFN_LEDGER_STOP_RETRY_MS * 1000;
                if (now >= give_up_us) gave_up = true;
                if (gave_up) break;
            }
            struct timespec ts = {.tv_sec = AICFN_LEDGER_RETRY_MS / 1000,
                                  .tv_nsec = (AICFN_LEDGER_RETRY_MS % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        led_free_list(batch);

        pthread_mutex_lock(&l->mu);
        l->inflight = 0;
        if (rc == AICFN_OK) {
            l->stats.committed += n;
            l->stats.batches++;
        } else {
            l->stats.dropped += n;
            log_error("ledger: %zu records lost at shutdown after %d failed commits", n, attempts);
        }
        l->done_seq = last_seq;
        if (gave_up) led_drop_queued_locked(l);
        pthread_cond_broadcast(&l->done);
    }
    pthread_cond_broadcast(&l->done);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int gw_ledger_create(const char *data_dir, unsigned flush_ms, unsigned flush_records, size_t queue_max,
                     gw_ledger **out, aicfn_error *err) {
    *out = NULL;
    gw_ledger *l = calloc(1, sizeof *l);
    if (!l) return aicfn_error_set(err, AICFN_E_NOMEM, "allocating the ledger");
    l->flush_ms = flush_ms ? flush_ms : AICFN_LEDGER_FLUSH_MS;
    l->flush_records = flush_records ? flush_records : AICFN_LEDGER_FLUSH_RECORDS;
    l->queue_max = queue_max ? queue_max : AICFN_LEDGER_QUEUE_MAX;
    pthread_mutex_init(&l->mu, NULL);
    clock_cond_init(&l->wake);
    clock_cond_init(&l->done);
    int rc = gw_db_open(data_dir, &l->db, err);
    if (rc == AICFN_OK) rc = gw_db_set_batched(l->db, err); /* nothing it commits was acknowledged */
    if (rc) {
        aicfn_error_wrap(err, "ledger");
        gw_ledger_destroy(l);
        return rc;
    }
    int e = pthread_create(&l->thread, NULL, led_writer, l);
    if (e) {
        gw_ledger_destroy(l);
        return aicfn_error_errno(err, AICFN_E_INTERNAL, e, "starting the ledger writer thread");
    }
    l->thread_started = true;
    *out = l;
    return AICFN_OK;
}

void gw_ledger_destroy(gw_ledger *l) {
    if (!l) return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->stopping = true;
        pthread_cond_broadcast(&l->wake);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    led_free_list(l->head);
    gw_db_close(l->db);
    pthread_cond_destroy(&l->wake);
    pthread_cond_destroy(&l->done);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

int gw_ledger_flush(gw_ledger *l, unsigned timeout_ms, aicfn_error *err) {
    uint64_t deadline = clock_now_us() + (uint64_t)timeout_ms * 1000u;
    struct timespec ts;
    clock_deadline_to_timespec(deadline, &ts);
    pthread_mutex_lock(&l->mu);
    uint64_t target = l->next_seq;
    l->flush_now = true;
    pthread_cond_signal(&l->wake);
    int rc = AICFN_OK;
    while (l->done_seq < target) {
        if (pthread_cond_timedwait(&l->done, &l->mu, &ts) == ETIMEDOUT && l->done_seq < target) {
            rc = aicfn_error_set(err, AICFN_E_TIMEOUT, "ledger flush: %llu records still pending after %u ms",
                                 (unsigned long long)(target - l->done_seq), timeout_ms);
            break;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void gw_ledger_get_stats(gw_ledger *l, gw_ledger_stats *out) {
    pthread_mutex_lock(&l->mu);
    *out = l->stats;
    out->queued = l->count + l->inflight;
    pthread_mutex_unlock(&l->mu);
}

/* ---- Queries -------------------------------------------------------------------- */

static int led_percentile(gw_db *db, const char *function, uint64_t since_us, gw_phase p, uint64_t count,
                          unsigned pct, uint64_t *out, aicfn_error *err) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT %s FROM cold_starts WHERE function = ?1 AND time_us >= ?2 ORDER BY %s LIMIT 1 OFFSET ?3",
             led_phase_cols[p], led_phase_cols[p]);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db, sql, &st, err);
    if (rc) return rc;
    uint64_t rank = (pct * count + 99) / 100; /* nearest rank, 1-based */
    if (rank < 1) rank = 1;
    gw_db_bind_text(st, 1, function);
    sqlite3_bind_int64(st, 2, led_i64(since_us));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)(rank - 1));
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        *out = (uint64_t)sqlite3_column_int64(st, 0);
    else if (s == SQLITE_DONE)
        *out = 0; /* rows removed meanwhile */
    else
        rc = gw_db_error(db, s, err, "coldstarts percentile");
    gw_db_done(st);
    return rc;
}

/* One row of the coldstarts aggregate: counts, bytes and the max of each phase. */
static int led_fill_coldstart(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    (void)arg;
    (void)err;
    gw_coldstart_summary *e = elem;
    gw_db_column_text(st, 0, e->function, sizeof e->function);
    e->count = (uint64_t)sqlite3_column_int64(st, 1);
    e->compressed_bytes = (uint64_t)sqlite3_column_int64(st, 2);
    e->raw_bytes = (uint64_t)sqlite3_column_int64(st, 3);
    for (int p = 0; p < GW_PHASE_COUNT; p++)
        e->phase[p].max_us = (uint64_t)sqlite3_column_int64(st, 4 + p);
    return AICFN_OK;
}

int gw_ledger_coldstarts(gw_db *db, const char *function, uint64_t since_us, gw_coldstart_summary **out,
                         size_t *n, aicfn_error *err) {
    *out = NULL;
    *n = 0;
    gw_coldstart_summary *arr = NULL;
    void *rows = NULL;
    size_t cnt = 0, cap = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_begin_read(db, err); /* one consistent snapshot for the aggregates and percentiles */
    if (rc) goto out;
    rc = gw_db_stmt(db,
                    "SELECT function, count(*), sum(compressed_bytes), sum(raw_bytes), max(spawn_us), "
                    "max(queue_us), max(fetch_us), max(read_us), max(decompress_us), max(filter_us), "
                    "max(copy_us), max(init_us), max(total_us) FROM cold_starts WHERE time_us >= ?1 AND "
                    "(?2 IS NULL OR function = ?2) GROUP BY function ORDER BY function",
                    &st, err);
    if (!rc) {
        sqlite3_bind_int64(st, 1, led_i64(since_us));
        gw_db_bind_text(st, 2, function);
        rc = gw_db_collect(db, st, sizeof *arr, led_fill_coldstart, NULL, &rows, &cnt, &cap, "coldstarts",
                           err);
    }
    arr = rows;
    for (size_t i = 0; !rc && i < cnt; i++)
        for (int p = 0; !rc && p < GW_PHASE_COUNT; p++) {
            rc = led_percentile(db, arr[i].function, since_us, (gw_phase)p, arr[i].count, 50,
                                &arr[i].phase[p].p50_us, err);
            if (!rc)
                rc = led_percentile(db, arr[i].function, since_us, (gw_phase)p, arr[i].count, 95,
                                    &arr[i].phase[p].p95_us, err);
        }
    gw_db_rollback(db); /* read-only: ends the snapshot */
out:
    gw_db_unlock(db);
    if (rc) {
        free(arr);
        return rc;
    }
    *out = arr;
    *n = cnt;
    return AICFN_OK;
}

json_t *gw_coldstarts_to_json(const gw_coldstart_summary *s, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *phases = json_object();
        for (int p = 0; phases && p < GW_PHASE_COUNT; p++) {
            json_t *o =
                json_pack("{s:I, s:I, s:I}", "p50_us", (json_int_t)s[i].phase[p].p50_us, "p95_us",
                          (json_int_t)s[i].phase[p].p95_us, "max_us", (json_int_t)s[i].phase[p].max_us);
            if (!o || json_object_set_new(phases, led_phase_names[p], o) != 0) {
                json_decref(phases);
                phases = NULL;
            }
        }
        json_t *o =
            phases ? json_pack("{s:s, s:I, s:I, s:I, s:o}", "function", s[i].function, "count",
                               (json_int_t)s[i].count, "compressed_bytes", (json_int_t)s[i].compressed_bytes,
                               "raw_bytes", (json_int_t)s[i].raw_bytes, "phases", phases)
                   : NULL;
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

#define LED_USAGE_SUMS                                                                                       \
    "count(*), coalesce(sum(status != 'AICFN_OK'), 0), coalesce(sum(gpu_us), 0), "                           \
    "coalesce(sum(CASE WHEN cold = 1 THEN (load_us + batch_size - 1) / batch_size ELSE 0 END), 0), "         \
    "coalesce(sum(cold), 0), "                                                                               \
    "coalesce(sum(bytes_in), 0), coalesce(sum(bytes_out), 0), coalesce(sum(load_gpu_us), 0)"

static void led_usage_fill(sqlite3_stmt *st, int col, gw_usage_row *r) {
    r->calls = (uint64_t)sqlite3_column_int64(st, col);
    r->errors = (uint64_t)sqlite3_column_int64(st, col + 1);
    r->gpu_us = (uint64_t)sqlite3_column_int64(st, col + 2);
    r->cold_us = (uint64_t)sqlite3_column_int64(st, col + 3);
    r->cold_calls = (uint64_t)sqlite3_column_int64(st, col + 4);
    r->bytes_in = (uint64_t)sqlite3_column_int64(st, col + 5);
    r->bytes_out = (uint64_t)sqlite3_column_int64(st, col + 6);
    r->load_gpu_us = (uint64_t)sqlite3_column_int64(st, col + 7);
}

/* One row of `aicfn usage`: tenant, function and their sums. */
static int led_fill_usage(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    (void)arg;
    (void)err;
    gw_usage_row *r = elem;
    gw_db_column_text(st, 0, r->tenant, sizeof r->tenant);
    gw_db_column_text(st, 1, r->function, sizeof r->function);
    led_usage_fill(st, 2, r);
    return AICFN_OK;
}

int gw_ledger_usage(gw_db *db, const char *tenant, uint64_t since_us, gw_usage_row **out, size_t *n,
                    gw_usage_row *total, aicfn_error *err) {
    *out = NULL;
    *n = 0;
    memset(total, 0, sizeof *total);
    gw_usage_row *arr = NULL;
    void *rows = NULL;
    size_t cnt = 0, cap = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_begin_read(db, err); /* rows and total from the same snapshot */
    if (rc) goto out;
    /* Two shapes, so that each uses its index: one tenant through invocations_tenant_time,
     * all of them through invocations_time (the window, then grouped: `+tenant` keeps the
     * planner from scanning the whole tenant index to save a sort, which makes a short
     * --since read every row ever written). */
    rc = gw_db_stmt(
        db,
        tenant ? "SELECT tenant, function, " LED_USAGE_SUMS " FROM invocations WHERE tenant = ?2 AND "
                 "time_us >= ?1 GROUP BY function ORDER BY function"
               : "SELECT tenant, function, " LED_USAGE_SUMS " FROM invocations WHERE time_us >= ?1 "
                 "GROUP BY +tenant, +function ORDER BY 1, 2",
        &st, err);
    if (!rc) {
        sqlite3_bind_int64(st, 1, led_i64(since_us));
        gw_db_bind_text(st, 2, tenant);
        rc = gw_db_collect(db, st, sizeof *arr, led_fill_usage, NULL, &rows, &cnt, &cap, "usage", err);
    }
    arr = rows;
    if (!rc) {
        rc = gw_db_stmt(db,
                        tenant ? "SELECT " LED_USAGE_SUMS
                                 " FROM invocations WHERE tenant = ?2 AND time_us >= ?1"
                               : "SELECT " LED_USAGE_SUMS " FROM invocations WHERE time_us >= ?1",
                        &st, err);
        if (!rc) {
            sqlite3_bind_int64(st, 1, led_i64(since_us));
            gw_db_bind_text(st, 2, tenant);
            int s = sqlite3_step(st);
            if (s == SQLITE_ROW)
                led_usage_fill(st, 0, total);
            else
                rc = gw_db_error(db, s, err, "usage total");
            gw_db_done(st);
        }
    }
    gw_db_rollback(db);
out:
    gw_db_unlock(db);
    if (rc) {
        free(arr);
        return rc;
    }
    *out = arr;
    *n = cnt;
    return AICFN_OK;
}

static json_t *led_usage_row_json(const gw_usage_row *r, double price, bool with_names) {
    json_t *o = json_pack("{s:I, s:I, s:I, s:f, s:I, s:f, s:I, s:f, s:I, s:I, s:I, s:f}", "calls",
                          (json_int_t)r->calls, "errors", (json_int_t)r->errors, "gpu_us",
                          (json_int_t)r->gpu_us, "gpu_s", (double)r->gpu_us / 1e6, "load_gpu_us",
                          (json_int_t)r->load_gpu_us, "load_gpu_s", (double)r->load_gpu_us / 1e6, "cold_us",
                          (json_int_t)r->cold_us, "cold_s", (double)r->cold_us / 1e6, "cold_calls",
                          (json_int_t)r->cold_calls, "bytes_in", (json_int_t)r->bytes_in, "bytes_out",
                          (json_int_t)r->bytes_out, "cost", gw_usage_cost(gw_usage_billed_us(r), price));
    if (o && with_names) {
        json_object_set_new(o, "tenant", json_string(r->tenant));
        json_object_set_new(o, "function", json_string(r->function));
    }
    return o;
}

json_t *gw_usage_to_json(const gw_usage_row *rows, size_t n, const gw_usage_row *total,
                         double price_per_gpu_s) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *o = led_usage_row_json(&rows[i], price_per_gpu_s, true);
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    json_t *t = led_usage_row_json(total, price_per_gpu_s, false);
    if (!arr || !t) {
        json_decref(arr);
        json_decref(t);
        return NULL;
    }
    return json_pack("{s:o, s:o, s:f}", "rows", arr, "total", t, "price_per_gpu_s", price_per_gpu_s);
}

/* ---- Worker rows ------------------------------------------------------------------ */

int gw_workers_mark_lost(gw_db *db, uint64_t *n, aicfn_error *err) {
    if (n) *n = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(
        db, "UPDATE workers SET state = 'lost' WHERE state IN ('starting', 'ready', 'draining')", &st, err);
    if (!rc) {
        int s = sqlite3_step(st);
        if (s != SQLITE_DONE)
            rc = gw_db_error(db, s, err, "marking the workers of an earlier gateway lost");
        else if (n)
            *n = (uint64_t)sqlite3_changes(gw_db_sqlite(db));
    }
    gw_db_done(st);
    gw_db_unlock(db);
    return rc;
}

int gw_workers_next_local_id(gw_db *db, uint32_t *out, aicfn_error *err) {
    *out = 1;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db,
                        "SELECT coalesce(max(CAST(substr(id, 2) AS INTEGER)), 0) FROM workers WHERE "
                        "id GLOB 'w[0-9]*' AND NOT id GLOB 'w*[^0-9]*' AND pid IS NOT NULL",
                        &st, err);
    if (!rc) {
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            sqlite3_int64 max = sqlite3_column_int64(st, 0);
            /* Ids wrap (never 0) rather than overflow: names repeat after 4 billion workers. */
            *out = max >= 0 && max < (sqlite3_int64)UINT32_MAX - 1 ? (uint32_t)max + 1 : 1;
        } else {
            rc = gw_db_error(db, s, err, "reading the last local worker id");
        }
    }
    gw_db_done(st);
    gw_db_unlock(db);
    return rc;
}

int gw_ledger_count_by_tenant(gw_db *db, uint64_t since_us,
                              void (*fn)(const char *tenant, uint64_t count, void *ctx), void *ctx,
                              aicfn_error *err) {
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(
        db,
        "SELECT tenant, count(*) FROM invocations WHERE time_us >= ?1 AND status != 'AICFN_E_QUOTA' "
        "GROUP BY +tenant", /* today's rows through invocations_time, not every row (usage) */
        &st, err);
    int s = SQLITE_DONE;
    if (!rc) sqlite3_bind_int64(st, 1, led_i64(since_us));
    while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW)
        fn((const char *)sqlite3_column_text(st, 0), (uint64_t)sqlite3_column_int64(st, 1), ctx);
    if (!rc && s != SQLITE_DONE) rc = gw_db_error(db, s, err, "counting calls per tenant");
    gw_db_done(st);
    gw_db_unlock(db);
    return rc;
}
