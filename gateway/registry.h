/* registry.h: the functions the gateway knows, stored in aicfn.db: deploy (a new
 * version, made active, in one committed transaction), resolve (NAME or NAME:VER),
 * list, remove; the function config and its JSON form; and reading back the workers
 * table (`aicfn workers --history`).
 *
 * Not for: artifact bytes (artifacts.h), the invocation ledger (ledger.h), keys
 * (keys.h), writing the workers table (the ledger writer does, gw_ledger_submit_worker:
 * the gateway mirrors its live pool there), routing decisions (router.h).
 *
 * Thread-safety: every function taking a gw_db locks it for the call; any thread may
 * call them. They block on SQLite (a few ms at most, plus the busy timeout). */
#ifndef AICFN_GATEWAY_REGISTRY_H
#define AICFN_GATEWAY_REGISTRY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aicfn.h"
#include "common/error.h"
#include "common/tunables.h"
#include "gateway/db.h"

/* ---- Names and references ---------------------------------------------------- */

/* True when `name` is a valid function name: 1..AICFN_FN_NAME_MAX_BYTES bytes of
 * [A-Za-z0-9_.-], starting with a letter or digit (safe in URLs and file names; ':'
 * separates the version). */
bool gw_fn_name_valid(const char *name);

/* Splits "NAME" or "NAME:VER" (VER a decimal >= 1). Copies the name into name_out
 * (AICFN_FN_NAME_MAX_BYTES + 1 bytes) and sets *version (0 when absent = the active
 * one). AICFN_E_INVALID with a message naming the reference when malformed. */
int gw_fn_ref_parse(const char *ref, char *name_out, uint32_t *version, aicfn_error *err);

/* ---- Function config (the manifest's runtime settings, stored as JSON) ---------- */

/* Input or output metadata for the HTTP front's model metadata (OIP v2). A dim of -1
 * is variable. */
typedef struct gw_tensor_spec {
    char name[AICFN_MAX_NAME_BYTES + 1];
    aicfn_dtype dtype;
    unsigned ndim;
    int64_t shape[AICFN_MAX_DIMS];
} gw_tensor_spec;

/* A function's handler params (the manifest's `params`) are text, as init gets them
 * (aicfn_fn_config.params): keys 1..AICFN_MAX_NAME_BYTES - 1 bytes, values at most
 * AICFN_PARAM_VALUE_MAX bytes, neither holding a NUL. */

typedef struct gw_fn_config {
    uint32_t max_batch;         /* batching.max_batch, 1..AICFN_MAX_BATCH */
    uint64_t max_delay_us;      /* batching.max_delay_us, <= AICFN_MAX_DELAY_US_MAX */
    uint64_t timeout_us;        /* limits.timeout, 1..AICFN_MAX_TIMEOUT_US */
    uint64_t max_request_bytes; /* limits.max_request_bytes, 1..AICFN_MAX_MESSAGE_BYTES */
    uint32_t min_workers;       /* scaling.min_workers <= max_workers */
    uint32_t max_workers;       /* scaling.max_workers, 1..AICFN_MAX_WORKERS */
    uint64_t idle_timeout_us;   /* scaling.idle_timeout */
    bool cache_responses;       /* cache.responses */
    uint64_t cache_ttl_us;      /* cache.ttl */
    bool idempotent;            /* may be retried on another worker */
    gw_tensor_spec *inputs;     /* malloc'd, n_inputs <= AICFN_MAX_TENSORS; owned */
    size_t n_inputs;
    gw_tensor_spec *outputs;
    size_t n_outputs;
    aicfn_param *params; /* n_params <= AICFN_MAX_PARAMS, distinct keys; owned (malloc'd strings) */
    size_t n_params;
} gw_fn_config;

/* Fills `c` with the defaults of common/tunables.h (max_batch 1, timeout 30 s, max
 * request 8 MiB, workers 0..1, idle 5 m, no cache, not idempotent, no metadata). */
void gw_fn_config_init(gw_fn_config *c);

/* Frees the tensor arrays and resets to defaults. NULL accepted. */
void gw_fn_config_clear(gw_fn_config *c);

/* Appends one param (copied; key and value need no NUL terminator). AICFN_E_INVALID for
 * an empty, over-long or NUL-holding key or value, a duplicate key, or more than
 * AICFN_MAX_PARAMS; AICFN_E_NOMEM. */
int gw_fn_config_add_param(gw_fn_config *c, const char *key, size_t key_len, const char *value,
                           size_t value_len, aicfn_error *err);

/* Checks the bounds listed in the struct; AICFN_E_INVALID naming the field. */
int gw_fn_config_validate(const gw_fn_config *c, aicfn_error *err);

/* The JSON object stored in functions.config:
 * {"batching":{"max_batch":N,"max_delay_us":N},"limits":{"timeout_us":N,
 *  "max_request_bytes":N},"scaling":{"min_workers":N,"max_workers":N,"idle_timeout_us":N},
 *  "cache":{"responses":B,"ttl_us":N},"idempotent":B,
 *  "inputs":[{"name":S,"datatype":"FP32","shape":[-1,4]}],"outputs":[...]}, and
 *  "params":{"KEY":"VALUE",...} when there are any
 * Returns a new reference (caller json_decref's) or NULL when out of memory. */
json_t *gw_fn_config_to_json(const gw_fn_config *c);

/* Parses that JSON (from the database or from an untrusted deploy request): unknown
 * keys and wrong types are AICFN_E_INVALID naming the key; missing keys keep their
 * defaults; the result is validated. On error `c` is left cleared. */
int gw_fn_config_from_json(const json_t *j, gw_fn_config *c, aicfn_error *err);

/* Same from a JSON text (at most AICFN_MAX_MESSAGE_BYTES). */
int gw_fn_config_from_string(const char *text, gw_fn_config *c, aicfn_error *err);

/* ---- Functions ---------------------------------------------------------------- */

/* Artifact hashes are 64 lowercase hex characters (SHA-256, see artifacts.h). */
#define GW_HASH_HEX_LEN 64

/* What a deploy registers. Strings are borrowed for the call. */
typedef struct gw_function_spec {
    const char *name;         /* gw_fn_name_valid */
    const char *handler_hash; /* the handler .so artifact */
    uint64_t handler_bytes;
    const char *snapshot_hash; /* NULL: a function without a model */
    uint64_t snapshot_bytes;   /* compressed size of the snapshot file */
    uint64_t model_raw_bytes;  /* uncompressed tensor bytes */
    const char *config_json;   /* gw_fn_config_to_json text; NULL = defaults ("{}") */
    const char *deploy_id;     /* the deploy's idempotency key (gw_deploy_id_valid); NULL: none */
    bool inactive;             /* registered without becoming the active version (staged) */
} gw_function_spec;

/* A deploy id is 1..GW_DEPLOY_ID_MAX bytes of [A-Za-z0-9_.:-]. */
#define GW_DEPLOY_ID_MAX 128
bool gw_deploy_id_valid(const char *id);

/* One version of a function, as stored. */
typedef struct gw_function {
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t version;
    char handler_hash[GW_HASH_HEX_LEN + 1];
    uint64_t handler_bytes;
    char snapshot_hash[GW_HASH_HEX_LEN + 1]; /* "" when none */
    uint64_t snapshot_bytes;
    uint64_t model_raw_bytes;
    char *config_json; /* malloc'd, owned; free with gw_function_clear */
    uint64_t created_us;
    bool active;
} gw_function;

/* Frees config_json and zeroes the struct. NULL accepted. */
void gw_function_clear(gw_function *f);

/* Frees an array of n gw_function (clearing each). NULL accepted. */
void gw_function_array_free(gw_function *fs, size_t n);

/* Registers a new version of spec->name and makes it the active one (unless
 * spec->inactive: then the active version, if any, stays so, and the new one is invokable
 * as NAME:VER until gw_registry_activate), in ONE transaction committed before returning (so a reply sent
 * after it acknowledges a durable deploy, see db.h). The version is 1 for a new name, else one more than the
 * highest version ever deployed under that name: numbers are never reused, even after
 * `rm`, so a cached result or a log line for NAME:3 always means the same code.
 * A deploy with a deploy_id that a version of the same name already holds is the same
 * deploy made again (a client retrying after its answer was lost, or a pipeline run
 * again): nothing changes and that version is returned with *existing_out (may be NULL)
 * true, provided its handler, snapshot and config are the ones asked; otherwise
 * AICFN_E_EXISTS. Validates the name, hashes, deploy id and config JSON. Returns
 * AICFN_OK and *version_out, or AICFN_E_INVALID / AICFN_E_EXISTS / AICFN_E_DB. */
int gw_registry_deploy(gw_db *db, const gw_function_spec *spec, uint32_t *version_out, bool *existing_out,
                       aicfn_error *err);

/* Looks up NAME (its active version) or NAME:VER into *out (owned by the caller:
 * gw_function_clear). AICFN_E_NOT_FOUND naming the reference when absent (a name whose
 * versions were all removed, or with no active version); AICFN_E_INVALID when malformed. */
int gw_registry_resolve(gw_db *db, const char *ref, gw_function *out, aicfn_error *err);

/* Same with the name and version apart (version 0 = active). */
int gw_registry_get(gw_db *db, const char *name, uint32_t version, gw_function *out, aicfn_error *err);

/* Makes NAME:VER the active version (rollback), ending any canary of NAME.
 * AICFN_E_NOT_FOUND when absent. */
int gw_registry_activate(gw_db *db, const char *name, uint32_t version, aicfn_error *err);

/* A canary (KServe's canaryTrafficPercent): `percent` (1..99) of the calls to the plain
 * NAME go to NAME:VER, the rest to the active version, which stays so. percent 0 ends
 * NAME's canary. VER must exist (AICFN_E_NOT_FOUND; version 0 is accepted with percent
 * 0) and, with a percent, not be the active version (AICFN_E_INVALID). Activating any
 * version (a deploy that activates included), or removing the canary version, ends it
 * too. Committed before returning. */
int gw_registry_set_canary(gw_db *db, const char *name, uint32_t version, uint32_t percent, aicfn_error *err);

/* NAME's canary: *version and *percent (0 and 0 when none, or no such name). */
int gw_registry_get_canary(gw_db *db, const char *name, uint32_t *version, uint32_t *percent,
                           aicfn_error *err);

/* One line of `aicfn ls`. Sizes are those of the active version (or the newest when
 * none is active). */
typedef struct gw_function_summary {
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t active_version; /* 0 when none is active */
    uint32_t latest_version;
    uint32_t n_versions;
    uint64_t handler_bytes;
    uint64_t snapshot_bytes;
    uint64_t model_raw_bytes;
    uint64_t created_us; /* of the newest version */
    /* The scaling in effect: the shown version's scaling.* (defaults when its config
     * cannot be read). */
    uint32_t min_workers;
    uint32_t max_workers;
    uint64_t idle_timeout_us;
    uint32_t canary_version, canary_percent; /* gw_registry_set_canary; 0 when none */
} gw_function_summary;

/* Lists every function name with versions, sorted by name, into a new malloc'd array
 * (*out, caller frees; NULL with *n = 0 when empty). */
int gw_registry_list(gw_db *db, gw_function_summary **out, size_t *n, aicfn_error *err);

/* Every stored version of `name`, oldest first (new array, gw_function_array_free). */
int gw_registry_versions(gw_db *db, const char *name, gw_function **out, size_t *n, aicfn_error *err);

/* JSON for `aicfn ls --json`: an array of {"name","active_version","latest_version",
 * "versions","handler_bytes","snapshot_bytes","model_raw_bytes","created_us",
 * "scaling":{"min_workers","max_workers","idle_timeout_us"},"canary"} where canary is
 * {"version","percent"} or null.
 * New reference or NULL (out of memory). */
json_t *gw_function_summaries_to_json(const gw_function_summary *s, size_t n);

/* Removes NAME:VER, or every version of NAME when ref has no version, in one
 * transaction. When the active version is removed, the newest remaining version that
 * is not staged (deployed inactive and not activated since) becomes active (none when
 * no such version remains); removing any other version changes no active version. A
 * canary of a removed version (or of the version made active) ends. *removed gets the
 * number of versions removed. When orphans is not NULL it receives a new malloc'd array
 * of the artifact hashes that no remaining version references (each 65 bytes,
 * NUL-terminated; the caller frees the array with free()) and *n_orphans its length:
 * the caller may delete those files (gw_artifacts_remove). AICFN_E_NOT_FOUND when
 * nothing matched. */
int gw_registry_remove(gw_db *db, const char *ref, uint32_t *removed, char (**orphans)[GW_HASH_HEX_LEN + 1],
                       size_t *n_orphans, aicfn_error *err);

/* True (1) when some function version references artifact `hash`, 0 when none,
 * negative aicfn code on error. */
int gw_registry_artifact_in_use(gw_db *db, const char *hash, aicfn_error *err);

/* ---- Workers (read side of the workers table; ledger.h writes it) --------------- */

typedef struct gw_worker_row {
    char id[AICFN_MAX_NAME_BYTES + 1];
    char address[AICFN_MAX_NAME_BYTES + 1]; /* ipc:// or tcp:// */
    char device[AICFN_MAX_NAME_BYTES + 1];  /* "cuda:0", "host" */
    uint64_t budget_bytes;
    int64_t pid; /* 0 when remote or unknown */
    uint64_t started_us;
    uint64_t last_seen_us;
    char state[32]; /* "starting", "ready", "draining", "exited", "lost" (ledger.h) */
} gw_worker_row;

/* All workers sorted by id (new malloc'd array, caller frees; NULL/0 when none). */
int gw_registry_worker_list(gw_db *db, gw_worker_row **out, size_t *n, aicfn_error *err);

#endif
