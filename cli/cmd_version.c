/* cmd_version.c: `aicfn version`: prints the release, the ABI and library versions. */
#include <stdio.h>
#include <zstd.h>

#include "cli/cli.h"

int cli_cmd_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("aicfn 0.1.0 (zstd %s)\n", ZSTD_versionString());
    return CLI_EXIT_OK;
}
