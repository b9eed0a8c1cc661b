/* cli.h: the subcommands of the `aicfn` binary and the few helpers they share.
 *
 * Each subcommand lives in cli/cmd_NAME.c as `int cli_cmd_NAME(int argc, char **argv)`,
 * where argv[0] is the subcommand name. It returns the process exit status:
 *   0 success, 1 the operation failed (the message names the aicfn error code),
 *   2 usage error (unknown flag, missing argument).
 * Add a subcommand by declaring it here and listing it in cli/main.c. */
#ifndef AICFN_CLI_H
#define AICFN_CLI_H

#include "common/error.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

/* Prints "aicfn: <name>: <message>" to stderr and returns CLI_EXIT_FAIL. */
int cli_fail(const aicfn_error *err);

/* `s` made safe to print on a terminal: copied into buf (cap bytes) with every control
 * byte (below 0x20, and 0x7f) shown as '?', so text from a gateway or a worker cannot
 * move the cursor or retitle the window. NULL prints as "?". Returns buf. */
const char *cli_text(const char *s, char *buf, size_t cap);

/* Prints a usage error to stderr and returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct json_t;

/* Prints `j` as one line of compact JSON on stdout (`--json` output); `fallback` when j is
 * NULL or cannot be encoded. Returns CLI_EXIT_OK, or CLI_EXIT_FAIL when nothing printed. */
int cli_print_json(const struct json_t *j, const char *fallback);

/* The subcommands. */
int cli_cmd_version(int argc, char **argv);
int cli_cmd_snapshot(int argc, char **argv);
int cli_cmd_worker(int argc, char **argv);
int cli_cmd_invoke(int argc, char **argv);
int cli_cmd_gateway(int argc, char **argv);
int cli_cmd_deploy(int argc, char **argv);
int cli_cmd_ls(int argc, char **argv);
int cli_cmd_rm(int argc, char **argv);
int cli_cmd_activate(int argc, char **argv);
int cli_cmd_coldstarts(int argc, char **argv);
int cli_cmd_workers(int argc, char **argv);
int cli_cmd_usage(int argc, char **argv);
int cli_cmd_keys(int argc, char **argv);

#endif
