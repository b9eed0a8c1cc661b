/* cmd_activate.c: `aicfn activate NAME:VER [--canary PERCENT]`: makes an existing
 * version the active one (a rollback, or a roll forward), or sends a share of NAME's
 * calls to it (a canary), removing nothing. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "gateway/registry.h"

static void ca_help(FILE *out) {
    fprintf(out, "usage: aicfn activate NAME:VER [--canary PERCENT] [--gateway ADDR] [--key KEY] [--json]\n"
                 "\n"
                 "Makes version VER of function NAME the active one: calls to NAME go to it from now on\n"
                 "(a rollback after a bad deploy, or back to a newer version), and any canary of NAME\n"
                 "ends. No version is removed; every version stays invokable as NAME:VER. Needs an admin\n"
                 "key.\n"
                 "  --canary PERCENT  instead, send PERCENT (1..99) of the calls to NAME to VER and the\n"
                 "                  rest to the active version, which stays so (a canary: watch\n"
                 "                  aicfn_calls_total by version, then activate VER, or end it with\n"
                 "                  --canary 0). Deploy VER with --no-activate first\n"
                 "  --gateway ADDR  the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
                 "  --key KEY       admin API key (default: $AICFN_KEY)\n"
                 "  --json          print {\"name\",\"version\"} (and \"canary\" with --canary) instead of\n"
                 "                  text\n");
}

int cli_cmd_activate(int argc, char **argv) {
    const char *gateway = NULL, *key = NULL, *ref = NULL;
    int json = 0;
    long canary = -1;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            ca_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--key"))) {
            key = v;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if ((v = cli_flag_value(argc, argv, &i, "--canary"))) {
            char *end;
            canary = strtol(v, &end, 10);
            if (end == v || *end || canary < 0 || canary > 99)
                return cli_usage_error("activate",
                                       "--canary '%s': a percentage from 0 (end the canary) to 99", v);
        } else if (argv[i][0] != '-' && !ref) {
            ref = argv[i];
        } else {
            return cli_usage_error("activate", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    if (!ref || !strchr(ref, ':')) return cli_usage_error("activate", "name the version: NAME:VER");
    aicfn_error err;
    aicfn_error_clear(&err);
    char fn_name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t fn_ver = 0;
    if (gw_fn_ref_parse(ref, fn_name, &fn_ver, &err) != AICFN_OK) /* as invoke checks NAME:VER */
        return cli_usage_error("activate", "%s", err.msg);
    if (canary >= 0) {
        /* A gateway older than canaries would ignore the key and activate VER for every call. */
        bool has = false;
        if (cli_gw_has_feature(cli_gateway_addr(gateway), cli_api_key(key), "canary", &has, &err) != AICFN_OK)
            return cli_fail(&err);
        if (!has) {
            aicfn_error_set(&err, AICFN_E_UNSUPPORTED,
                            "the gateway at %s has no canaries (it would activate %s for every call): "
                            "nothing sent",
                            cli_gateway_addr(gateway), ref);
            return cli_fail(&err);
        }
    }
    wire_writer w;
    wire_writer_init(&w);
    cli_gw_begin(&w, "activate", cli_api_key(key), canary >= 0 ? 2 : 1);
    wire_kv_str(&w, "ref", ref);
    if (canary >= 0) wire_kv_u64(&w, "canary", (uint64_t)canary);
    rpc_msg *reply = NULL;
    wire_doc doc;
    int rc = cli_gw_request(cli_gateway_addr(gateway), &w, 10000, &reply, &doc, &err);
    wire_writer_fini(&w);
    if (rc == AICFN_OK) {
        const char *raw = "";
        uint64_t version = 0;
        wire_get_cstr(&doc, &doc.root, NULL, "name", false, 256, &raw, NULL);
        wire_get_u64(&doc.root, NULL, "version", false, &version, NULL);
        char name[257]; /* the gateway's text: shown safely */
        cli_text(raw, name, sizeof name);
        if (json) {
            json_t *j = json_pack("{s:s, s:I}", "name", raw, "version", (json_int_t)version);
            if (j && canary >= 0) json_object_set_new(j, "canary", json_integer(canary));
            cli_print_json(j, "{}");
            json_decref(j);
        } else if (canary > 0)
            printf("canary: %ld%% of the calls to %s go to %s:%llu\n", canary, name, name,
                   (unsigned long long)version);
        else if (canary == 0)
            printf("canary of %s ended: every call goes to its active version\n", name);
        else
            printf("activated %s:%llu\n", name, (unsigned long long)version);
        wire_doc_fini(&doc);
        rpc_msg_free(reply);
    }
    return rc == AICFN_OK ? CLI_EXIT_OK : cli_fail(&err);
}
