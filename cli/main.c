/* main.c: the `aicfn` binary: dispatches to the subcommand named by argv[1]. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cli_command;

static const cli_command cli_commands[] = {
    {"version", cli_cmd_version, "print versions"},
    {"snapshot", cli_cmd_snapshot, "pack, inspect, verify or unpack model snapshots"},
    {"worker", cli_cmd_worker, "run a worker: one device, its model cache and functions"},
    {"invoke", cli_cmd_invoke, "invoke a function (--worker ADDR: directly on a worker)"},
    {"gateway", cli_cmd_gateway, "run the gateway (router, local worker pool, registry, records)"},
    {"deploy", cli_cmd_deploy, "build, pack and upload a function as a new version"},
    {"ls", cli_cmd_ls, "list deployed functions"},
    {"rm", cli_cmd_rm, "remove a function or one of its versions"},
    {"activate", cli_cmd_activate, "make NAME:VER the active version (rollback)"},
    {"coldstarts", cli_cmd_coldstarts, "cold-start phases per function (p50/p95/max)"},
    {"workers", cli_cmd_workers, "the gateway's live workers and their resident models"},
    {"usage", cli_cmd_usage, "calls, GPU-seconds and cost per tenant and function (from the ledger)"},
    {"keys", cli_cmd_keys, "create, list and revoke tenants' API keys"},
};

static void cli_print_help(FILE *out) {
    fprintf(out, "usage: aicfn COMMAND [ARGS...]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof cli_commands / sizeof cli_commands[0]; i++)
        fprintf(out, "  %-12s %s\n", cli_commands[i].name, cli_commands[i].summary);
    fprintf(out, "\n'aicfn COMMAND --help' describes each command.\n"
                 "exit status: 0 success, 1 failure (the message names the error code), 2 usage error,\n"
                 "3 (`aicfn worker --gateway` only) its gateway ordered it to exit: restart it\n");
}

int main(int argc, char **argv) {
    /* A SIGCHLD ignored by whoever started us is inherited: the kernel would then reap
     * our children unasked, their statuses lost (a gateway's crashed worker reported as
     * a clean exit, its pid free for reuse while the pool may still signal it; a deploy's
     * failed build taken for a success), and the children inherit it too. */
    signal(SIGCHLD, SIG_DFL);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        cli_print_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof cli_commands / sizeof cli_commands[0]; i++)
        if (strcmp(argv[1], cli_commands[i].name) == 0) return cli_commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "aicfn: unknown command '%s'\n", argv[1]);
    cli_print_help(stderr);
    return CLI_EXIT_USAGE;
}
