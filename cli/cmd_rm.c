/* cmd_rm.c: `aicfn rm NAME[:VER]`: removes one version, or every version of a function. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "gateway/registry.h"

static void cr_help(FILE *out) {
    fprintf(out, "usage: aicfn rm NAME[:VER] [--gateway ADDR] [--key KEY]\n"
                 "\n"
                 "Removes version VER of function NAME, or all its versions when no VER is given. When\n"
                 "the active version goes, the newest remaining one becomes active, except one deployed\n"
                 "with --no-activate and not activated since (that goes live only by `aicfn activate`).\n"
                 "Version numbers are never reused.\n"
                 "  --gateway ADDR  the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
                 "  --key KEY       admin API key (default: $AICFN_KEY)\n");
}

int cli_cmd_rm(int argc, char **argv) {
    const char *gateway = NULL, *key = NULL, *ref = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cr_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--key"))) {
            key = v;
        } else if (argv[i][0] != '-' && !ref) {
            ref = argv[i];
        } else {
            return cli_usage_error("rm", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    if (!ref) return cli_usage_error("rm", "name the function: NAME or NAME:VER");
    aicfn_error perr;
    char fn_name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t fn_ver = 0;
    if (gw_fn_ref_parse(ref, fn_name, &fn_ver, &perr) != AICFN_OK) /* as invoke checks NAME:VER */
        return cli_usage_error("rm", "%s", perr.msg);
    aicfn_error err;
    aicfn_error_clear(&err);
    wire_writer w;
    wire_writer_init(&w);
    cli_gw_begin(&w, "rm", cli_api_key(key), 1);
    wire_kv_str(&w, "ref", ref);
    rpc_msg *reply = NULL;
    wire_doc doc;
    int rc = cli_gw_request(cli_gateway_addr(gateway), &w, 10000, &reply, &doc, &err);
    wire_writer_fini(&w);
    if (rc == AICFN_OK) {
        uint64_t removed = 0;
        wire_get_u64(&doc.root, NULL, "removed", false, &removed, NULL);
        printf("removed %s (%llu version%s)\n", ref, (unsigned long long)removed, removed == 1 ? "" : "s");
        wire_doc_fini(&doc);
        rpc_msg_free(reply);
    }
    return rc == AICFN_OK ? CLI_EXIT_OK : cli_fail(&err);
}
