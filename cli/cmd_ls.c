/* cmd_ls.c: `aicfn ls`: the deployed functions with their versions, sizes and the
 * scaling in effect (the active version's). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "common/units.h"

/* "5m", "90s", "250ms", "never" (0). */
static const char *cl_duration(uint64_t us, char *buf, size_t len) {
    if (us == 0)
        snprintf(buf, len, "never");
    else if (us % 3600000000ull == 0)
        snprintf(buf, len, "%lluh", (unsigned long long)(us / 3600000000ull));
    else if (us % 60000000ull == 0)
        snprintf(buf, len, "%llum", (unsigned long long)(us / 60000000ull));
    else if (us % 1000000ull == 0)
        snprintf(buf, len, "%llus", (unsigned long long)(us / 1000000ull));
    else
        snprintf(buf, len, "%llums", (unsigned long long)(us / 1000ull));
    return buf;
}

static void cl_help(FILE *out) {
    fprintf(out, "usage: aicfn ls [--gateway ADDR] [--key KEY] [--json]\n"
                 "\n"
                 "Lists the deployed functions: active and latest version, number of versions, handler,\n"
                 "snapshot and model sizes of the active version, and its scaling: WORKERS is\n"
                 "min_workers..max_workers, IDLE the idle_timeout after which its model is unloaded.\n"
                 "CANARY is VER@PERCENT%% when that share of the calls to NAME goes to version VER\n"
                 "(aicfn activate NAME:VER --canary PERCENT), else -.\n"
                 "  --gateway ADDR  the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
                 "  --key KEY       admin API key (default: $AICFN_KEY)\n"
                 "  --json          print the list as JSON\n");
}

int cli_cmd_ls(int argc, char **argv) {
    const char *gateway = NULL, *key = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cl_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--key"))) {
            key = v;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            return cli_usage_error("ls", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    aicfn_error err;
    aicfn_error_clear(&err);
    json_t *j = NULL;
    if (cli_gw_query(gateway, key, "ls", &j, &err) != AICFN_OK) return cli_fail(&err);
    if (json) {
        cli_print_json(j, "[]");
    } else {
        printf("%-24s %6s %6s %8s %12s %12s %12s %9s %6s %8s\n", "NAME", "ACTIVE", "LATEST", "VERSIONS",
               "HANDLER", "SNAPSHOT", "MODEL", "WORKERS", "IDLE", "CANARY");
        size_t i;
        json_t *o;
        json_array_foreach(j, i, o) {
            char h[32], s[32], m[32], wk[32], idle[32], canary[32] = "-";
            json_t *sc = json_object_get(o, "scaling");
            json_t *cn = json_object_get(o, "canary");
            if (json_is_object(cn))
                snprintf(canary, sizeof canary, "%lld@%lld%%",
                         (long long)json_integer_value(json_object_get(cn, "version")),
                         (long long)json_integer_value(json_object_get(cn, "percent")));
            snprintf(wk, sizeof wk, "%lld..%lld",
                     (long long)json_integer_value(json_object_get(sc, "min_workers")),
                     (long long)json_integer_value(json_object_get(sc, "max_workers")));
            char nm[AICFN_MAX_NAME_BYTES + 1];
            printf("%-24s %6lld %6lld %8lld %12s %12s %12s %9s %6s %8s\n",
                   cli_text(json_string_value(json_object_get(o, "name")), nm, sizeof nm),
                   (long long)json_integer_value(json_object_get(o, "active_version")),
                   (long long)json_integer_value(json_object_get(o, "latest_version")),
                   (long long)json_integer_value(json_object_get(o, "versions")),
                   units_format_size((uint64_t)json_integer_value(json_object_get(o, "handler_bytes")), h,
                                     sizeof h),
                   units_format_size((uint64_t)json_integer_value(json_object_get(o, "snapshot_bytes")), s,
                                     sizeof s),
                   units_format_size((uint64_t)json_integer_value(json_object_get(o, "model_raw_bytes")), m,
                                     sizeof m),
                   wk,
                   cl_duration((uint64_t)json_integer_value(json_object_get(sc, "idle_timeout_us")), idle,
                               sizeof idle),
                   canary);
        }
    }
    json_decref(j);
    return CLI_EXIT_OK;
}
