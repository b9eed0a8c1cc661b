/* cmd_workers.c: `aicfn workers`: the gateway's live pool, with each worker's resident
 * models and bytes (asked of the gateway), or with --history the workers table of
 * aicfn.db (every worker a gateway on that data directory has run or registered, and how
 * each one left). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "common/tunables.h"
#include "common/units.h"
#include "gateway/db.h"
#include "gateway/registry.h"

static void cw2_help(FILE *out) {
    fprintf(out,
            "usage: aicfn workers [--gateway ADDR] [--key KEY] [--json]\n"
            "       aicfn workers --history [--data-dir DIR] [--limit N] [--json]\n"
            "\n"
            "Lists the workers the gateway knows (local and registered): state, pid, device, budget,\n"
            "free bytes, calls in flight, when each started and last answered a status poll, and the\n"
            "models each holds (READY, LOADING) with sizes.\n"
            "  --gateway ADDR  the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
            "  --key KEY       admin API key (default: $AICFN_KEY)\n"
            "  --json          print JSON (times are wall-clock microseconds since the epoch)\n"
            "  --history       read the workers table of aicfn.db instead: every worker run or\n"
            "                  registered, most recent first, with its last state (starting, ready,\n"
            "                  draining, exited, lost)\n"
            "  --data-dir DIR  the gateway's data directory (default: $AICFN_DATA_DIR, else %s)\n"
            "  --limit N       at most N rows of history (default 100, 0: all)\n",
            AICFN_DEFAULT_DATA_DIR);
}

/* "2026-11-22 01:23:45" (local time) of a wall-clock µs value; "-" for 0. */
static const char *cw2_time(uint64_t us, char *buf, size_t len) {
    if (us == 0) return "-";
    time_t t = (time_t)(us / 1000000u);
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm) == 0) return "?";
    return buf;
}

/* Most recently started first; ties by name. */
static int cw2_by_start_desc(const void *a, const void *b) {
    const gw_worker_row *x = a, *y = b;
    if (x->started_us != y->started_us) return x->started_us > y->started_us ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* A JSON string of text a worker reported (kept verbatim in aicfn.db): as it is when it is
 * UTF-8, else with every byte past ASCII shown as '?' (JSON must be UTF-8). */
static json_t *cw2_str(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    char buf[512];
    size_t i = 0;
    for (; s[i] && i + 1 < sizeof buf; i++)
        buf[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    buf[i] = '\0';
    return json_string(buf);
}

static json_t *cw2_rows_json(const gw_worker_row *rows, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        const gw_worker_row *r = &rows[i];
        json_t *o =
            json_pack("{s:o, s:o, s:o, s:I, s:o, s:o, s:I, s:I}", "name", cw2_str(r->id), "address",
                      cw2_str(r->address), "device", cw2_str(r->device), "budget_bytes",
                      (json_int_t)r->budget_bytes, "pid", r->pid > 0 ? json_integer(r->pid) : json_null(),
                      "state", cw2_str(r->state), "started_us", (json_int_t)r->started_us, "last_seen_us",
                      (json_int_t)r->last_seen_us);
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static int cw2_history(const char *data_dir, size_t limit, int json) {
    aicfn_error err;
    aicfn_error_clear(&err);
    gw_db *db = NULL;
    if (gw_db_open_existing(data_dir, GW_DB_READ_ONLY, &db, &err) != AICFN_OK) return cli_fail(&err);
    gw_worker_row *rows = NULL;
    size_t n = 0;
    int rc = gw_registry_worker_list(db, &rows, &n, &err);
    gw_db_close(db);
    if (rc != AICFN_OK) return cli_fail(&err);
    if (n > 1) qsort(rows, n, sizeof *rows, cw2_by_start_desc);
    if (limit && n > limit) n = limit;
    if (json) {
        json_t *j = cw2_rows_json(rows, n);
        free(rows);
        if (!j) return cli_fail(&(aicfn_error){AICFN_E_NOMEM, "out of memory"});
        cli_print_json(j, "[]");
        json_decref(j);
        return CLI_EXIT_OK;
    }
    printf("%-10s %-9s %-8s %-24s %12s %-19s  %-19s\n", "NAME", "STATE", "PID", "DEVICE", "BUDGET", "STARTED",
           "LAST_SEEN");
    for (size_t i = 0; i < n; i++) {
        const gw_worker_row *r = &rows[i];
        char b[32], t1[32], t2[32], pid[24], id[128], st[32], dev[256];
        snprintf(pid, sizeof pid, "%lld", (long long)r->pid);
        /* Text a worker reported is shown safely (cli_text), as in the live view. */
        printf("%-10s %-9s %-8s %-24s %12s %-19s  %-19s\n", cli_text(r->id, id, sizeof id),
               cli_text(r->state, st, sizeof st), r->pid > 0 ? pid : "-",
               r->device[0] ? cli_text(r->device, dev, sizeof dev) : "-", units_format_size(r->budget_bytes, b, sizeof b),
               cw2_time(r->started_us, t1, sizeof t1), cw2_time(r->last_seen_us, t2, sizeof t2));
    }
    if (n == 0) printf("(no workers recorded)\n");
    free(rows);
    return CLI_EXIT_OK;
}

int cli_cmd_workers(int argc, char **argv) {
    const char *gateway = NULL, *key = NULL, *data_dir = getenv("AICFN_DATA_DIR");
    int json = 0, history = 0;
    bool history_flag = false; /* --data-dir or --limit: they serve --history only */
    size_t limit = 100;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cw2_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--key"))) {
            key = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--data-dir"))) {
            data_dir = v;
            history_flag = true;
        } else if ((v = cli_flag_value(argc, argv, &i, "--limit"))) {
            history_flag = true;
            char *end = NULL;
            errno = 0;
            unsigned long long l = strtoull(v, &end, 10);
            if (errno || !end || *end || v[0] == '-' || !v[0] || l > 1000000000ull)
                return cli_usage_error("workers", "--limit '%s' is not a count", v);
            limit = (size_t)l;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--history")) {
            history = 1;
        } else {
            return cli_usage_error("workers", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    if (history_flag && !history)
        return cli_usage_error("workers", "--data-dir and --limit go with --history (the live pool is the "
                                          "gateway's: --gateway)");
    if (history) {
        if (gateway || key) return cli_usage_error("workers", "--history reads aicfn.db: no --gateway/--key");
        return cw2_history(data_dir && data_dir[0] ? data_dir : AICFN_DEFAULT_DATA_DIR, limit, json);
    }
    aicfn_error err;
    aicfn_error_clear(&err);
    json_t *j = NULL;
    if (cli_gw_query(gateway, key, "workers", &j, &err) != AICFN_OK) return cli_fail(&err);
    if (json) {
        cli_print_json(j, "[]");
        json_decref(j);
        return CLI_EXIT_OK;
    }
    printf("%-10s %-9s %-8s %-24s %12s %12s %9s %-19s  %-19s\n", "NAME", "STATE", "PID", "DEVICE", "BUDGET",
           "FREE", "IN_FLIGHT", "STARTED", "LAST_SEEN");
    size_t i;
    json_t *o;
    json_array_foreach(j, i, o) {
        char b[32], f[32], t1[32], t2[32], pid[24], nm[80], sts[32], dv[160];
        long long p = (long long)json_integer_value(json_object_get(o, "pid"));
        snprintf(pid, sizeof pid, "%lld", p);
        const char *dev = json_string_value(json_object_get(o, "device"));
        printf(
            "%-10s %-9s %-8s %-24s %12s %12s %9lld %-19s  %-19s\n",
            cli_text(json_string_value(json_object_get(o, "name")), nm, sizeof nm),
            cli_text(json_string_value(json_object_get(o, "state")), sts, sizeof sts), p > 0 ? pid : "-",
            dev && dev[0] ? cli_text(dev, dv, sizeof dv) : "-",
            units_format_size((uint64_t)json_integer_value(json_object_get(o, "budget_bytes")), b, sizeof b),
            units_format_size((uint64_t)json_integer_value(json_object_get(o, "free_bytes")), f, sizeof f),
            (long long)json_integer_value(json_object_get(o, "in_flight")),
            cw2_time((uint64_t)json_integer_value(json_object_get(o, "started_us")), t1, sizeof t1),
            cw2_time((uint64_t)json_integer_value(json_object_get(o, "last_seen_us")), t2, sizeof t2));
        size_t k;
        json_t *m;
        json_array_foreach(json_object_get(o, "models"), k, m) {
            char sz[32], mst[32], mfn[80], mkey[80];
            const char *fn = json_string_value(json_object_get(m, "function"));
            printf(
                "           %-9s %s:%lld (%.12s) %s, idle %lld ms%s\n",
                cli_text(json_string_value(json_object_get(m, "state")), mst, sizeof mst),
                fn && fn[0] ? cli_text(fn, mfn, sizeof mfn) : "?",
                (long long)json_integer_value(json_object_get(m, "version")),
                cli_text(json_string_value(json_object_get(m, "model")), mkey, sizeof mkey),
                units_format_size((uint64_t)json_integer_value(json_object_get(m, "bytes")), sz, sizeof sz),
                (long long)json_integer_value(json_object_get(m, "idle_ms")),
                json_is_true(json_object_get(m, "kept")) ? ", kept (min_workers)" : "");
        }
    }
    if (json_array_size(j) == 0) printf("(no workers: the pool is scaled to zero)\n");
    json_decref(j);
    return CLI_EXIT_OK;
}
