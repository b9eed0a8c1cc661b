/* cmd_coldstarts.c: `aicfn coldstarts [NAME]`: per function, how many cold starts and
 * the p50/p95/max of each phase (spawn, queue, fetch, read, decompress, filter, copy,
 * init, total) with the bytes moved, read from the cold_starts table through the gateway. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "common/clock.h"
#include "common/units.h"

static void cc_help(FILE *out) {
    fprintf(out, "usage: aicfn coldstarts [NAME] [--since DUR] [--gateway ADDR] [--key KEY] [--json]\n"
                 "\n"
                 "Cold starts per function: count, then p50 / p95 / max in milliseconds of each phase:\n"
                 "  spawn (starting a worker for the call), queue, fetch (a remote worker downloading the\n"
                 "  snapshot from the gateway), read, decompress, filter (byte planes), copy (to the\n"
                 "  device), init (the handler's), total; and the compressed and raw bytes.\n"
                 "  NAME            only this function\n"
                 "  --since DUR     only cold starts in the last DUR (e.g. 1h, 30m; default: all)\n"
                 "  --gateway ADDR  the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
                 "  --key KEY       admin API key (default: $AICFN_KEY)\n"
                 "  --json          print the summaries as JSON\n");
}

static const char *cc_phases[] = {"spawn",  "queue", "fetch", "read", "decompress",
                                  "filter", "copy",  "init",  "total"};

int cli_cmd_coldstarts(int argc, char **argv) {
    const char *gateway = NULL, *key = NULL, *fn = NULL;
    uint64_t since_us = 0;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cc_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--key"))) {
            key = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--since"))) {
            uint64_t d;
            if (units_parse_duration_us(v, &d, NULL) != AICFN_OK)
                return cli_usage_error("coldstarts", "--since '%s' is not a duration (e.g. 1h)", v);
            uint64_t now = clock_wall_us();
            since_us = d < now ? now - d : 1;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (argv[i][0] != '-' && !fn) {
            fn = argv[i];
        } else {
            return cli_usage_error("coldstarts", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    aicfn_error err;
    aicfn_error_clear(&err);
    wire_writer w;
    wire_writer_init(&w);
    cli_gw_begin(&w, "coldstarts", cli_api_key(key), (fn ? 1 : 0) + (since_us ? 1 : 0));
    if (fn) wire_kv_str(&w, "fn", fn);
    if (since_us) wire_kv_u64(&w, "since_us", since_us);
    json_t *j = NULL;
    int rc = cli_gw_json(cli_gateway_addr(gateway), NULL, &w, 10000, &j, &err);
    wire_writer_fini(&w);
    if (rc != AICFN_OK) return cli_fail(&err);
    if (json) {
        cli_print_json(j, "[]");
        json_decref(j);
        return CLI_EXIT_OK;
    }
    if (json_array_size(j) == 0) {
        printf("no cold starts recorded%s%s\n", fn ? " for " : "", fn ? fn : "");
        json_decref(j);
        return CLI_EXIT_OK;
    }
    size_t i;
    json_t *o;
    json_array_foreach(j, i, o) {
        char cb[32], rb[32], nm[AICFN_MAX_NAME_BYTES + 1];
        printf(
            "%s: %lld cold start%s, %s compressed -> %s raw\n",
            cli_text(json_string_value(json_object_get(o, "function")), nm, sizeof nm),
            (long long)json_integer_value(json_object_get(o, "count")),
            json_integer_value(json_object_get(o, "count")) == 1 ? "" : "s",
            units_format_size((uint64_t)json_integer_value(json_object_get(o, "compressed_bytes")), cb,
                              sizeof cb),
            units_format_size((uint64_t)json_integer_value(json_object_get(o, "raw_bytes")), rb, sizeof rb));
        printf("  %-11s %10s %10s %10s\n", "phase (ms)", "p50", "p95", "max");
        json_t *ph = json_object_get(o, "phases");
        for (size_t k = 0; k < sizeof cc_phases / sizeof cc_phases[0]; k++) {
            json_t *p = json_object_get(ph, cc_phases[k]);
            printf("  %-11s %10.3f %10.3f %10.3f\n", cc_phases[k],
                   (double)json_integer_value(json_object_get(p, "p50_us")) / 1000.0,
                   (double)json_integer_value(json_object_get(p, "p95_us")) / 1000.0,
                   (double)json_integer_value(json_object_get(p, "max_us")) / 1000.0);
        }
    }
    json_decref(j);
    return CLI_EXIT_OK;
}
