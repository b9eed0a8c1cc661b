/* util.c: error and usage reporting shared by the subcommands. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"

const char *cli_text(const char *s, char *buf, size_t cap) {
    if (cap == 0) return "";
    if (s == NULL) s = "?";
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    buf[i] = '\0';
    return buf;
}

int cli_fail(const aicfn_error *err) {
    char msg[sizeof err->msg];
    fprintf(stderr, "aicfn: %s: %s\n", aicfn_status_name(err->code),
            cli_text(err->msg[0] ? err->msg : aicfn_strerror(err->code), msg, sizeof msg));
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
