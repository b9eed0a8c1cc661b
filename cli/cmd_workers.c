/* cmd_workers.c: `aicfn workers`: the gateway's live pool, with each worker's resident
 * models and bytes. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "common/units.h"

static void cw2_help(FILE *out) {
    fprintf(out, "usage: aicfn workers [--gateway ADDR] [--key KEY] [--json]\n"
                 "\n"
                 "Lists the workers the gateway knows (local and registered): state, device, budget,\n"
                 "free bytes, calls in flight, and the models each holds (READY, LOADING) with sizes.\n"
                 "  --gateway ADDR  the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
                 "  --key KEY       API key (default: $AICFN_KEY)\n"
                 "  --json          print the pool as JSON\n");
}

int cli_cmd_workers(int argc, char **argv) {
    const char *gateway = NULL, *key = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cw2_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--key"))) {
            key = v;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            return cli_usage_error("workers", "unknown or incomplete argument '%s'", argv[i]);
        }
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
    printf("%-6s %-9s %-8s %-24s %12s %12s %9s\n", "NAME", "STATE", "PID", "DEVICE", "BUDGET", "FREE",
           "IN_FLIGHT");
    size_t i;
    json_t *o;
    json_array_foreach(j, i, o) {
        char b[32], f[32];
        printf(
            "%-6s %-9s %-8lld %-24s %12s %12s %9lld\n", json_string_value(json_object_get(o, "name")),
            json_string_value(json_object_get(o, "state")),
            (long long)json_integer_value(json_object_get(o, "pid")),
            json_string_value(json_object_get(o, "device")),
            units_format_size((uint64_t)json_integer_value(json_object_get(o, "budget_bytes")), b, sizeof b),
            units_format_size((uint64_t)json_integer_value(json_object_get(o, "free_bytes")), f, sizeof f),
            (long long)json_integer_value(json_object_get(o, "in_flight")));
        size_t k;
        json_t *m;
        json_array_foreach(json_object_get(o, "models"), k, m) {
            char sz[32];
            const char *fn = json_string_value(json_object_get(m, "function"));
            printf(
                "         %-9s %s:%lld (%.12s) %s, idle %lld ms\n",
                json_string_value(json_object_get(m, "state")), fn && fn[0] ? fn : "?",
                (long long)json_integer_value(json_object_get(m, "version")),
                json_string_value(json_object_get(m, "model")),
                units_format_size((uint64_t)json_integer_value(json_object_get(m, "bytes")), sz, sizeof sz),
                (long long)json_integer_value(json_object_get(m, "idle_ms")));
        }
    }
    if (json_array_size(j) == 0) printf("(no workers: the pool is scaled to zero)\n");
    json_decref(j);
    return CLI_EXIT_OK;
}
