/* util.c: error and usage reporting shared by the subcommands. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"

int cli_fail(const aicfn_error *err) {
    fprintf(stderr, "aicfn: %s: %s\n", aicfn_status_name(err->code), err->msg[0] ? err->msg : aicfn_strerror(err->code));
    return CLI_EXIT_FAIL;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "aicfn %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see 'aicfn %s --help')\n", cmd);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_print_json(const json_t *j, const char *fallback) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s == NULL && fallback == NULL) {
        fprintf(stderr, "aicfn: AICFN_E_NOMEM: cannot encode the JSON output\n");
        return CLI_EXIT_FAIL;
    }
    printf("%s\n", s ? s : fallback);
    free(s);
    return CLI_EXIT_OK;
}
