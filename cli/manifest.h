/* manifest.h: the aicfn.yaml parser (design.md §1).
 *
 *   name: mlp                         # required, [A-Za-z0-9_.-]
 *   handler: mlp.c                    # required: .c / .cu source or a prebuilt .so,
 *                                     #   relative to the manifest's directory
 *   model: weights.safetensors        # optional: a file, a list of files, or a directory
 *                                     #   (its *.safetensors files, sorted)
 *   batching: { max_batch: 32, max_delay_us: 2000 }
 *   limits:   { timeout: 30s, max_request_bytes: 8MiB }
 *   scaling:  { min_workers: 0, max_workers: 2, idle_timeout: 5m }
 *   cache:    { responses: true, ttl: 10m }
 *   idempotent: true
 *   inputs:  [ { name: x, dtype: FP32, shape: [-1, 784] } ]   # optional, OIP v2 metadata
 *   outputs: [ { name: y, dtype: FP32, shape: [-1, 10] } ]
 *
 * Every error is AICFN_E_INVALID with a message "FILE:LINE:COL: KEY: what is wrong"
 * (line and column 1-based, from libyaml's marks), for unknown keys, wrong types,
 * duplicate keys, out-of-range values, missing required keys and missing files.
 * The input is untrusted and bounded: at most AICFN_MANIFEST_MAX_BYTES, nesting depth
 * AICFN_MANIFEST_MAX_DEPTH, AICFN_MANIFEST_MAX_NODES nodes, one document; anchors,
 * aliases and explicit tags are refused (aliases allow exponential expansion, the
 * "billion laughs"). Booleans are true/false only (not yes/no).
 *
 * Not for: building handlers or packing snapshots (cmd_deploy does that with the
 * result). Thread-safety: pure; calls on different manifests may run concurrently. */
#ifndef AICFN_CLI_MANIFEST_H
#define AICFN_CLI_MANIFEST_H

#include <jansson.h>
#include <stddef.h>

#include "common/error.h"
#include "gateway/registry.h"

typedef enum cli_handler_kind {
    CLI_HANDLER_C = 1,  /* C source, built against include/aicfn.h */
    CLI_HANDLER_CU = 2, /* CUDA source, built with nvcc */
    CLI_HANDLER_SO = 3, /* prebuilt shared library */
} cli_handler_kind;

typedef struct cli_manifest {
    char *path; /* the manifest file (or the name given to cli_manifest_parse) */
    char *dir;  /* its directory; NULL when parsed without one */
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    char *handler; /* resolved against dir (as written when dir is NULL) */
    cli_handler_kind handler_kind;
    char **model_files; /* resolved; a directory becomes its index or its *.safetensors; may be 0 */
    size_t n_model_files;
    gw_fn_config config; /* batching, limits, scaling, cache, idempotent, inputs/outputs */
} cli_manifest;

/* Reads and parses a manifest. `path` may be the aicfn.yaml file or a directory holding
 * one. Checks that the handler and model files exist. Returns AICFN_OK and a new
 * manifest (cli_manifest_free), AICFN_E_INVALID (see above), AICFN_E_IO (unreadable),
 * AICFN_E_TOO_LARGE (over AICFN_MANIFEST_MAX_BYTES). */
int cli_manifest_load(const char *path, cli_manifest **out, aicfn_error *err);

/* Parses a manifest held in memory (need not be NUL-terminated). `filename` names it in
 * messages. With base_dir NULL, file paths are kept as written and not checked (the
 * fuzz harness and tests); otherwise they are resolved against base_dir and checked. */
int cli_manifest_parse(const char *buf, size_t len, const char *filename, const char *base_dir,
                       cli_manifest **out, aicfn_error *err);

/* Frees a manifest. NULL accepted. */
void cli_manifest_free(cli_manifest *m);

/* The config's JSON for storage in functions.config (gw_fn_config_to_json). New
 * reference or NULL. */
json_t *cli_manifest_config_json(const cli_manifest *m);

#endif
