/* cmd_usage.c: `aicfn usage`: calls, errors, GPU-seconds (handler runs and the cold
 * starts the calls made), cold-start wait and cost per tenant and function, from the
 * invocation ledger.
 *
 * It opens aicfn.db in the gateway's data directory directly (a second SQLite reader;
 * WAL lets it read while the gateway writes), rather than asking the gateway over NNG:
 * the sums are then exactly `SELECT sum(...) FROM invocations` (gw_ledger_usage), and
 * the database file's permissions decide who may read billing data. Records the
 * gateway has not committed yet (at most AICFN_LEDGER_FLUSH_MS old) are not counted.
 * Not for: changing anything (it never writes). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/tunables.h"
#include "common/units.h"
#include "gateway/db.h"
#include "gateway/keys.h"
#include "gateway/ledger.h"

/* The value of `flag` at argv[*i] ("--flag V" or "--flag=V"), advancing *i; NULL when
 * argv[*i] is another argument. A flag without its value is reported as NULL too. */
static const char *us_flag(int argc, char **argv, int *i, const char *flag) {
    size_t n = strlen(flag);
    if (strncmp(argv[*i], flag, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != '\0' || *i + 1 >= argc) return NULL;
    return argv[++*i];
}

static void us_help(FILE *out) {
    fprintf(
        out,
        "usage: aicfn usage [--since DUR] [--tenant T] [--json] [--price-per-gpu-second P] [--data-dir DIR]\n"
        "\n"
        "Per tenant and function, from the invocation ledger: calls, errors, GPU-seconds (each\n"
        "batch's handler time split across its calls), load GPU-seconds (each load a batch made,\n"
        "and its handler's init, split the same way: a call that joined another's load pays none\n"
        "of it), cold wait seconds (each cold batch's wait for its model, split the same way;\n"
        "not billed) and cost ((GPU-seconds + load GPU-seconds) x price), then the totals.\n"
        "  --since DUR                only calls in the last DUR (e.g. 24h, 30m; default: all)\n"
        "  --tenant T                 only tenant T\n"
        "  --price-per-gpu-second P   price of one GPU-second (default: $AICFN_PRICE_PER_GPU_S, else 0)\n"
        "  --data-dir DIR             the gateway's data directory (default: $AICFN_DATA_DIR, else %s)\n"
        "  --json                     print rows and totals as JSON\n"
        "Reads <data-dir>/aicfn.db directly, so run it where the gateway keeps its data.\n",
        AICFN_DEFAULT_DATA_DIR);
}

static int us_parse_price(const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= 0) || v > 1e9) return -1;
    *out = v;
    return 0;
}

int cli_cmd_usage(int argc, char **argv) {
    const char *tenant = NULL, *data_dir = getenv("AICFN_DATA_DIR");
    uint64_t since_us = 0;
    double price = 0;
    int json = 0;
    bool price_set = false; /* --price-per-gpu-second: the environment's is not read */
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            us_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = us_flag(argc, argv, &i, "--since"))) {
            uint64_t d;
            if (units_parse_duration_us(v, &d, NULL) != AICFN_OK)
                return cli_usage_error("usage", "--since '%s' is not a duration (e.g. 24h)", v);
            uint64_t now = clock_wall_us();
            since_us = d < now ? now - d : 1;
        } else if ((v = us_flag(argc, argv, &i, "--tenant"))) {
            if (!gw_tenant_name_valid(v))
                return cli_usage_error("usage", "--tenant '%s' is not a tenant name", v);
            tenant = v;
        } else if ((v = us_flag(argc, argv, &i, "--price-per-gpu-second"))) {
            if (us_parse_price(v, &price) != 0)
                return cli_usage_error("usage", "--price-per-gpu-second '%s' is not a non-negative number",
                                       v);
            price_set = true;
        } else if ((v = us_flag(argc, argv, &i, "--data-dir"))) {
            data_dir = v;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            return cli_usage_error("usage", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    const char *envp = getenv("AICFN_PRICE_PER_GPU_S");
    if (!price_set && envp && envp[0] && us_parse_price(envp, &price) != 0)
        return cli_usage_error("usage", "AICFN_PRICE_PER_GPU_S='%s' is not a price", envp);
    if (data_dir == NULL || data_dir[0] == '\0') data_dir = AICFN_DEFAULT_DATA_DIR;
    aicfn_error err;
    aicfn_error_clear(&err);
    gw_db *db = NULL;
    int rc = gw_db_open_existing(data_dir, GW_DB_READ_ONLY, &db, &err);
    if (rc != AICFN_OK) return cli_fail(&err);
    gw_usage_row *rows = NULL, total;
    size_t n = 0;
    rc = gw_ledger_usage(db, tenant, since_us, &rows, &n, &total, &err);
    gw_db_close(db);
    if (rc != AICFN_OK) return cli_fail(&err);
    if (json) {
        json_t *j = gw_usage_to_json(rows, n, &total, price);
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        free(rows);
        if (s == NULL) return cli_fail(&(aicfn_error){AICFN_E_NOMEM, "out of memory"});
        printf("%s\n", s);
        free(s);
        return CLI_EXIT_OK;
    }
    printf("%-20s %-24s %10s %8s %14s %14s %12s %12s\n", "TENANT", "FUNCTION", "CALLS", "ERRORS",
           "GPU-SECONDS", "LOAD-GPU-SEC", "COLD-SECONDS", "COST");
    for (size_t i = 0; i <= n; i++) {
        const gw_usage_row *r = i < n ? &rows[i] : &total;
        printf("%-20s %-24s %10llu %8llu %14.6f %14.6f %12.6f %12.6f\n", i < n ? r->tenant : "TOTAL",
               r->function, (unsigned long long)r->calls, (unsigned long long)r->errors,
               (double)r->gpu_us / 1e6, (double)r->load_gpu_us / 1e6, (double)r->cold_us / 1e6,
               gw_usage_cost(gw_usage_billed_us(r), price));
    }
    if (n == 0) printf("(no calls recorded%s%s)\n", tenant ? " for tenant " : "", tenant ? tenant : "");
    free(rows);
    return CLI_EXIT_OK;
}
