/* fuzz_manifest.c: libFuzzer harness for the aicfn.yaml parser (cli/manifest.c),
 * parsing from a buffer without a base directory (no file system access). A manifest
 * that parses is also serialized to its config JSON and parsed back by the gateway's
 * config parser, which must accept it. */
#include <stdint.h>
#include <stdlib.h>

#include "cli/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cli_manifest *m = NULL;
    aicfn_error err;
    if (cli_manifest_parse((const char *)data, size, "fuzz.yaml", NULL, &m, &err) != AICFN_OK) return 0;
    json_t *j = cli_manifest_config_json(m);
    if (j) {
        gw_fn_config c;
        if (gw_fn_config_from_json(j, &c, &err) != AICFN_OK) abort(); /* round trip must hold */
        gw_fn_config_clear(&c);
        json_decref(j);
    }
    cli_manifest_free(m);
    return 0;
}
