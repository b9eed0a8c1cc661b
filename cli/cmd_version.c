/* cmd_version.c: `aicfn version`: prints the release, the ABI and library versions. */
#include <stdio.h>
#include <string.h>
#include <zstd.h>

#include "cli/cli.h"

int cli_cmd_version(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: aicfn version\n\nPrints aicfn's release and the zstd library it runs with.\n");
        return CLI_EXIT_OK;
    }
    if (argc > 1) return cli_usage_error("version", "unknown argument '%s'", argv[1]);
    printf("aicfn 0.1.0 (zstd %s)\n", ZSTD_versionString());
    return CLI_EXIT_OK;
}
