/* test_registry.c: deploy versions (N+1, active switch, old versions resolvable),
 * resolve, ls, rm (one version, all, orphaned hashes, never reusing numbers), the
 * config JSON round trip and its validation, workers. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "gateway/registry.h"
#include "test_db_util.h"

#define H(c)                                                                                                 \
    c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c  \
        c c c c c c c c c c c c
#define HASH_A H("a")
#define HASH_B H("b")
#define HASH_C H("c")

typedef struct fx {
    char *dir;
    gw_db *db;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    f->dir = tdb_mkdtemp("reg");
    if (!f->dir || gw_db_open(f->dir, &f->db, NULL) != AICFN_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    assert_int_equal(gw_db_integrity_check(f->db, NULL), AICFN_OK);
    gw_db_close(f->db);
    tdb_rm_rf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static uint32_t deploy(gw_db *db, const char *name, const char *handler, const char *snap, const char *cfg) {
    gw_function_spec s = {.name = name,
                          .handler_hash = handler,
                          .handler_bytes = 1000,
                          .snapshot_hash = snap,
                          .snapshot_bytes = snap ? 5000 : 0,
                          .model_raw_bytes = snap ? 9000 : 0,
                          .config_json = cfg};
    uint32_t v = 0;
    aicfn_error err = {0};
    int rc = gw_registry_deploy(db, &s, &v, NULL, &err);
    if (rc) fail_msg("deploy: %s", err.msg);
    return v;
}

static void refs_and_names(void **state) {
    (void)state;
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t v;
    assert_int_equal(gw_fn_ref_parse("mlp", name, &v, NULL), AICFN_OK);
    assert_string_equal(name, "mlp");
    assert_int_equal(v, 0);
    assert_int_equal(gw_fn_ref_parse("mlp:12", name, &v, NULL), AICFN_OK);
    assert_int_equal(v, 12);
    assert_int_equal(gw_fn_ref_parse("mlp:0", name, &v, NULL), AICFN_E_INVALID);
    assert_int_equal(gw_fn_ref_parse("mlp:", name, &v, NULL), AICFN_E_INVALID);
    assert_int_equal(gw_fn_ref_parse("mlp:1x", name, &v, NULL), AICFN_E_INVALID);
    assert_int_equal(gw_fn_ref_parse(":1", name, &v, NULL), AICFN_E_INVALID);
    assert_int_equal(gw_fn_ref_parse("../etc:1", name, &v, NULL), AICFN_E_INVALID);
    assert_int_equal(gw_fn_ref_parse("a/b", name, &v, NULL), AICFN_E_INVALID);
    assert_true(gw_fn_name_valid("resnet-50_v1.2"));
    assert_false(gw_fn_name_valid("-x"));
    assert_false(gw_fn_name_valid(""));
    char longname[AICFN_FN_NAME_MAX_BYTES + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_false(gw_fn_name_valid(longname));
}

static void deploy_versions_and_resolve(void **state) {
    fx *f = *state;
    assert_int_equal(deploy(f->db, "mlp", HASH_A, HASH_B, NULL), 1);
    assert_int_equal(deploy(f->db, "mlp", HASH_C, HASH_B, "{\"batching\":{\"max_batch\":8}}"), 2);
    assert_int_equal(deploy(f->db, "echo", HASH_A, NULL, NULL), 1);
    gw_function fn;
    aicfn_error err;
    assert_int_equal(gw_registry_resolve(f->db, "mlp", &fn, &err), AICFN_OK);
    assert_int_equal(fn.version, 2);
    assert_true(fn.active);
    assert_string_equal(fn.handler_hash, HASH_C);
    assert_string_equal(fn.snapshot_hash, HASH_B);
    assert_int_equal(fn.model_raw_bytes, 9000);
    gw_fn_config cfg;
    assert_int_equal(gw_fn_config_from_string(fn.config_json, &cfg, &err), AICFN_OK);
    assert_int_equal(cfg.max_batch, 8);
    gw_fn_config_clear(&cfg);
    gw_function_clear(&fn);
    /* The old version stays addressable, inactive. */
    assert_int_equal(gw_registry_resolve(f->db, "mlp:1", &fn, &err), AICFN_OK);
    assert_int_equal(fn.version, 1);
    assert_false(fn.active);
    assert_string_equal(fn.handler_hash, HASH_A);
    gw_function_clear(&fn);
    assert_int_equal(gw_registry_resolve(f->db, "echo", &fn, &err), AICFN_OK);
    assert_string_equal(fn.snapshot_hash, "");
    gw_function_clear(&fn);
    assert_int_equal(gw_registry_resolve(f->db, "mlp:3", &fn, &err), AICFN_E_NOT_FOUND);
    assert_non_null(strstr(err.msg, "mlp:3"));
    assert_int_equal(gw_registry_resolve(f->db, "nope", &fn, &err), AICFN_E_NOT_FOUND);
    /* Exactly one active version per name. */
    gw_function *vs = NULL;
    size_t n = 0;
    assert_int_equal(gw_registry_versions(f->db, "mlp", &vs, &n, NULL), AICFN_OK);
    assert_int_equal(n, 2);
    assert_false(vs[0].active);
    assert_true(vs[1].active);
    gw_function_array_free(vs, n);
    /* Rollback to 1. */
    assert_int_equal(gw_registry_activate(f->db, "mlp", 1, NULL), AICFN_OK);
    assert_int_equal(gw_registry_resolve(f->db, "mlp", &fn, NULL), AICFN_OK);
    assert_int_equal(fn.version, 1);
    gw_function_clear(&fn);
    assert_int_equal(gw_registry_activate(f->db, "mlp", 9, NULL), AICFN_E_NOT_FOUND);
}

static void deploy_rejects_bad_input(void **state) {
    fx *f = *state;
    gw_function_spec s = {.name = "x y", .handler_hash = HASH_A};
    uint32_t v;
    aicfn_error err;
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, NULL, &err), AICFN_E_INVALID);
    s.name = "ok";
    s.handler_hash = "../../etc/passwd";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, NULL, &err), AICFN_E_INVALID);
    s.handler_hash = HASH_A;
    s.config_json = "{\"batching\":{\"max_batch\":0}}";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, NULL, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "max_batch"));
    s.config_json = "{\"bogus\":1}";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, NULL, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "bogus"));
    s.config_json = "{not json";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, NULL, &err), AICFN_E_INVALID);
    /* Nothing was registered by the failures. */
    gw_function_summary *ls = NULL;
    size_t n = 9;
    assert_int_equal(gw_registry_list(f->db, &ls, &n, NULL), AICFN_OK);
    assert_int_equal(n, 0);
    assert_null(ls);
}

/* A deploy_id names one deploy: made again with the same content it returns the version
 * it made and changes nothing (not even which version is active); with other content it
 * is AICFN_E_EXISTS; ids are per name; a malformed id is refused. */
static void deploy_id_makes_a_deploy_idempotent(void **state) {
    fx *f = *state;
    gw_function_spec s = {
        .name = "m", .handler_hash = HASH_A, .snapshot_hash = HASH_B, .deploy_id = "ci-run-17"};
    uint32_t v = 0;
    bool existing = true;
    aicfn_error err;
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_OK);
    assert_int_equal(v, 1);
    assert_false(existing);
    assert_int_equal(deploy(f->db, "m", HASH_C, NULL, NULL), 2); /* another deploy, no id */
    s.config_json = "{}";                                        /* the same canonical config */
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_OK);
    assert_int_equal(v, 1);
    assert_true(existing);
    /* A stored config an older gateway wrote with fewer fields is still the same config. */
    gw_db_lock(f->db);
    assert_int_equal(
        gw_db_exec(f->db, "UPDATE functions SET config = '{}' WHERE name = 'm' AND version = 1", &err),
        AICFN_OK);
    gw_db_unlock(f->db);
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_OK);
    assert_int_equal(v, 1);
    assert_true(existing);
    gw_function fn;
    assert_int_equal(gw_registry_resolve(f->db, "m", &fn, NULL), AICFN_OK);
    assert_int_equal(fn.version, 2); /* still the active one */
    gw_function_clear(&fn);
    s.snapshot_hash = HASH_C;
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_E_EXISTS);
    assert_non_null(strstr(err.msg, "ci-run-17"));
    assert_non_null(strstr(err.msg, "m:1"));
    s.snapshot_hash = HASH_B;
    s.config_json = "{\"batching\":{\"max_batch\":4}}";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_E_EXISTS);
    s.config_json = NULL;
    s.name = "other"; /* the same id under another name is another deploy */
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_OK);
    assert_int_equal(v, 1);
    assert_false(existing);
    s.deploy_id = "has space";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_E_INVALID);
    s.deploy_id = "";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, &existing, &err), AICFN_E_INVALID);
    assert_int_equal(deploy(f->db, "m", HASH_A, HASH_B, NULL), 3); /* no id: always a new version */
}

/* An inactive deploy (staged) takes the next version but leaves the active one; NAME:VER
 * reaches it, and activate makes it the one NAME means. A new name deployed inactive has
 * no active version. */
static void inactive_deploy_leaves_the_active_version(void **state) {
    fx *f = *state;
    assert_int_equal(deploy(f->db, "m", HASH_A, NULL, NULL), 1);
    gw_function_spec s = {.name = "m", .handler_hash = HASH_C, .inactive = true};
    uint32_t v = 0;
    aicfn_error err;
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, NULL, &err), AICFN_OK);
    assert_int_equal(v, 2);
    gw_function fn;
    assert_int_equal(gw_registry_resolve(f->db, "m", &fn, NULL), AICFN_OK);
    assert_int_equal(fn.version, 1);
    assert_string_equal(fn.handler_hash, HASH_A);
    gw_function_clear(&fn);
    assert_int_equal(gw_registry_resolve(f->db, "m:2", &fn, NULL), AICFN_OK);
    assert_false(fn.active);
    assert_string_equal(fn.handler_hash, HASH_C);
    gw_function_clear(&fn);
    assert_int_equal(gw_registry_activate(f->db, "m", 2, &err), AICFN_OK);
    assert_int_equal(gw_registry_resolve(f->db, "m", &fn, NULL), AICFN_OK);
    assert_int_equal(fn.version, 2);
    gw_function_clear(&fn);
    s.name = "fresh";
    assert_int_equal(gw_registry_deploy(f->db, &s, &v, NULL, &err), AICFN_OK);
    assert_int_equal(v, 1);
    assert_int_equal(gw_registry_resolve(f->db, "fresh", &fn, &err), AICFN_E_NOT_FOUND);
    assert_int_equal(gw_registry_resolve(f->db, "fresh:1", &fn, NULL), AICFN_OK);
    gw_function_clear(&fn);
}

/* The active version of `name` (0: none). */
static uint32_t active_version(gw_db *db, const char *name) {
    gw_function fn;
    aicfn_error err;
    int rc = gw_registry_resolve(db, name, &fn, &err);
    if (rc == AICFN_E_NOT_FOUND) return 0;
    assert_int_equal(rc, AICFN_OK);
    uint32_t v = fn.version;
    gw_function_clear(&fn);
    return v;
}

static uint32_t deploy_staged(gw_db *db, const char *name) {
    gw_function_spec s = {.name = name, .handler_hash = HASH_C, .inactive = true};
    uint32_t v = 0;
    aicfn_error err;
    assert_int_equal(gw_registry_deploy(db, &s, &v, NULL, &err), AICFN_OK);
    return v;
}

static void rm(gw_db *db, const char *ref) {
    uint32_t removed = 0;
    aicfn_error err;
    assert_int_equal(gw_registry_remove(db, ref, &removed, NULL, NULL, &err), AICFN_OK);
    assert_int_equal(removed, 1);
}

/* Removing a version makes another active only when it removed the active one, and
 * never makes a staged version (deployed inactive, not activated since) live: before,
 * rm of one staged version made the other live, and rm of the active one made a staged
 * newer one live. One that was activated once counts as released. */
static void rm_never_makes_a_staged_version_live(void **state) {
    fx *f = *state;
    assert_int_equal(deploy_staged(f->db, "fresh"), 1);
    assert_int_equal(deploy_staged(f->db, "fresh"), 2);
    rm(f->db, "fresh:1");
    assert_int_equal(active_version(f->db, "fresh"), 0);

    assert_int_equal(deploy(f->db, "m", HASH_A, NULL, NULL), 1);
    assert_int_equal(deploy(f->db, "m", HASH_A, NULL, NULL), 2);
    assert_int_equal(deploy_staged(f->db, "m"), 3);
    rm(f->db, "m:2"); /* the active one: v1 takes over, not the staged v3 */
    assert_int_equal(active_version(f->db, "m"), 1);
    rm(f->db, "m:1");
    assert_int_equal(active_version(f->db, "m"), 0); /* only the staged one is left */

    assert_int_equal(deploy(f->db, "n", HASH_A, NULL, NULL), 1);
    assert_int_equal(deploy_staged(f->db, "n"), 2);
    aicfn_error err;
    assert_int_equal(gw_registry_activate(f->db, "n", 2, &err), AICFN_OK);
    assert_int_equal(gw_registry_activate(f->db, "n", 1, &err), AICFN_OK); /* rolled back */
    rm(f->db, "n:1");
    assert_int_equal(active_version(f->db, "n"), 2); /* it was live once */
}

/* A schema-5 database (before staged versions were marked) upgraded: a version deployed
 * with --no-activate, newer than the active one, stays out of rm's promotion; an older
 * inactive one (active once, then superseded) still takes over. Before, migration 6
 * marked none, and rm of the active version put the staged one live. */
static void schema_5_staged_versions_stay_staged(void **state) {
    fx *f = *state;
    assert_int_equal(deploy(f->db, "m", HASH_A, NULL, NULL), 1);
    assert_int_equal(deploy_staged(f->db, "m"), 2);
    assert_int_equal(deploy(f->db, "q", HASH_A, NULL, NULL), 1);
    assert_int_equal(deploy(f->db, "q", HASH_A, NULL, NULL), 2);
    assert_int_equal(deploy_staged(f->db, "s"), 1); /* a function never activated */
    aicfn_error err;
    gw_db_lock(f->db);
    assert_int_equal(
        gw_db_exec(f->db,
                   "ALTER TABLE functions DROP COLUMN staged; ALTER TABLE function_names DROP COLUMN "
                   "canary_version; ALTER TABLE function_names DROP COLUMN canary_percent; "
                   "ALTER TABLE invocations DROP COLUMN load_gpu_us; DROP INDEX invocations_call; "
                   "ALTER TABLE invocations DROP COLUMN call_id; PRAGMA user_version = 5",
                   &err),
        AICFN_OK);
    gw_db_unlock(f->db);
    gw_db_close(f->db);
    assert_int_equal(gw_db_open(f->dir, &f->db, &err), AICFN_OK); /* migrates */
    rm(f->db, "m:1");
    assert_int_equal(active_version(f->db, "m"), 0);
    rm(f->db, "q:2");
    assert_int_equal(active_version(f->db, "q"), 1);
    assert_int_equal(active_version(f->db, "s"), 0);
}

static void canary_of(gw_db *db, const char *name, uint32_t *v, uint32_t *p) {
    aicfn_error err;
    assert_int_equal(gw_registry_get_canary(db, name, v, p, &err), AICFN_OK);
}

/* A canary sends a share of a name's calls to a version that is not active: it must
 * exist and not be the active one, takes 1..99 %, and ends when any version is
 * activated, when its version is removed, or with percent 0; ls shows it. */
static void canary_rules(void **state) {
    fx *f = *state;
    aicfn_error err;
    uint32_t v = 9, p = 9;
    canary_of(f->db, "c", &v, &p); /* no such name: none */
    assert_true(v == 0 && p == 0);
    assert_int_equal(deploy(f->db, "c", HASH_A, NULL, NULL), 1);
    assert_int_equal(deploy_staged(f->db, "c"), 2);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 3, 10, &err), AICFN_E_NOT_FOUND);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 1, 10, &err), AICFN_E_INVALID); /* the active one */
    assert_int_equal(gw_registry_set_canary(f->db, "c", 2, 100, &err), AICFN_E_INVALID);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 2, 25, &err), AICFN_OK);
    canary_of(f->db, "c", &v, &p);
    assert_true(v == 2 && p == 25);
    assert_int_equal(active_version(f->db, "c"), 1); /* the active version stays so */
    gw_function_summary *s = NULL;
    size_t n = 0;
    assert_int_equal(gw_registry_list(f->db, &s, &n, &err), AICFN_OK);
    assert_int_equal(n, 1);
    assert_true(s[0].canary_version == 2 && s[0].canary_percent == 25);
    json_t *j = gw_function_summaries_to_json(s, n);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(json_array_get(j, 0), "canary"), "percent")), 25);
    json_decref(j);
    free(s);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 2, 0, &err), AICFN_OK); /* ended */
    canary_of(f->db, "c", &v, &p);
    assert_true(v == 0 && p == 0);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 9, 0, &err), AICFN_E_NOT_FOUND); /* a typo */
    assert_int_equal(gw_registry_set_canary(f->db, "c", 2, 30, &err), AICFN_OK);
    assert_int_equal(deploy(f->db, "c", HASH_B, NULL, NULL), 3); /* a deploy that activates ends it */
    canary_of(f->db, "c", &v, &p);
    assert_true(v == 0 && p == 0);
    assert_int_equal(gw_registry_activate(f->db, "c", 1, &err), AICFN_OK); /* back to v1 for what follows */
    rm(f->db, "c:3");
    assert_int_equal(gw_registry_set_canary(f->db, "c", 2, 40, &err), AICFN_OK);
    assert_int_equal(gw_registry_activate(f->db, "c", 2, &err), AICFN_OK); /* promoted: the canary ends */
    canary_of(f->db, "c", &v, &p);
    assert_true(v == 0 && p == 0);
    assert_int_equal(deploy_staged(f->db, "c"), 4);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 4, 5, &err), AICFN_OK);
    rm(f->db, "c:4"); /* its version removed: ended */
    canary_of(f->db, "c", &v, &p);
    assert_true(v == 0 && p == 0);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 1, 50, &err), AICFN_OK); /* v1 is not active now */
    rm(f->db, "c:2"); /* the active one: v1 takes over, and its canary has nothing to split */
    assert_int_equal(active_version(f->db, "c"), 1);
    canary_of(f->db, "c", &v, &p);
    assert_true(v == 0 && p == 0);
    /* The active version removed with only staged ones left: none is active, and the
     * canary, with no version to split against, ends too. */
    assert_int_equal(deploy_staged(f->db, "c"), 5);
    assert_int_equal(gw_registry_set_canary(f->db, "c", 5, 10, &err), AICFN_OK);
    rm(f->db, "c:1");
    assert_int_equal(active_version(f->db, "c"), 0);
    canary_of(f->db, "c", &v, &p);
    assert_true(v == 0 && p == 0);
}

static void list_and_json(void **state) {
    fx *f = *state;
    deploy(f->db, "b", HASH_A, NULL, NULL);
    deploy(f->db, "a", HASH_A, HASH_B, "{\"scaling\":{\"min_workers\":1,\"max_workers\":3}}");
    deploy(f->db, "a", HASH_C, HASH_B, "{\"scaling\":{\"max_workers\":2,\"idle_timeout_us\":1000000}}");
    gw_function_summary *ls = NULL;
    size_t n = 0;
    assert_int_equal(gw_registry_list(f->db, &ls, &n, NULL), AICFN_OK);
    assert_int_equal(n, 2);
    assert_string_equal(ls[0].name, "a");
    assert_int_equal(ls[0].active_version, 2);
    assert_int_equal(ls[0].latest_version, 2);
    assert_int_equal(ls[0].n_versions, 2);
    assert_int_equal(ls[0].snapshot_bytes, 5000);
    /* The scaling in effect is the active version's (the redeploy's), not the first one's. */
    assert_int_equal(ls[0].min_workers, 0);
    assert_int_equal(ls[0].max_workers, 2);
    assert_int_equal(ls[0].idle_timeout_us, 1000000);
    assert_string_equal(ls[1].name, "b");
    assert_int_equal(ls[1].n_versions, 1);
    assert_int_equal(ls[1].min_workers, 0); /* defaults */
    assert_int_equal(ls[1].max_workers, 1);
    assert_int_equal(ls[1].idle_timeout_us, (uint64_t)AICFN_DEFAULT_IDLE_TIMEOUT_MS * 1000);
    json_t *j = gw_function_summaries_to_json(ls, n);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(j, 0), "versions")), 2);
    json_t *sc = json_object_get(json_array_get(j, 0), "scaling");
    assert_int_equal(json_integer_value(json_object_get(sc, "max_workers")), 2);
    assert_int_equal(json_integer_value(json_object_get(sc, "min_workers")), 0);
    assert_int_equal(json_integer_value(json_object_get(sc, "idle_timeout_us")), 1000000);
    json_decref(j);
    free(ls);
}

static void remove_versions(void **state) {
    fx *f = *state;
    deploy(f->db, "m", HASH_A, HASH_B, NULL); /* 1 */
    deploy(f->db, "m", HASH_C, HASH_B, NULL); /* 2 */
    deploy(f->db, "other", HASH_A, NULL, NULL);
    uint32_t removed = 0;
    char(*orph)[GW_HASH_HEX_LEN + 1] = NULL;
    size_t no = 0;
    aicfn_error err;
    /* Removing the active version 2 makes 1 active; HASH_C is orphaned. */
    assert_int_equal(gw_registry_remove(f->db, "m:2", &removed, &orph, &no, &err), AICFN_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(no, 1);
    assert_string_equal(orph[0], HASH_C);
    free(orph);
    gw_function fn;
    assert_int_equal(gw_registry_resolve(f->db, "m", &fn, NULL), AICFN_OK);
    assert_int_equal(fn.version, 1);
    gw_function_clear(&fn);
    assert_int_equal(gw_registry_remove(f->db, "m:2", &removed, NULL, NULL, &err), AICFN_E_NOT_FOUND);
    /* A new deploy never reuses number 2. */
    assert_int_equal(deploy(f->db, "m", HASH_C, HASH_B, NULL), 3);
    /* Remove all versions: HASH_B orphaned, HASH_A and HASH_C... HASH_A still used by "other". */
    assert_int_equal(gw_registry_remove(f->db, "m", &removed, &orph, &no, &err), AICFN_OK);
    assert_int_equal(removed, 2);
    int seen_b = 0, seen_c = 0;
    for (size_t i = 0; i < no; i++) {
        assert_string_not_equal(orph[i], HASH_A);
        seen_b += !strcmp(orph[i], HASH_B);
        seen_c += !strcmp(orph[i], HASH_C);
    }
    assert_int_equal(seen_b, 1);
    assert_int_equal(seen_c, 1);
    free(orph);
    assert_int_equal(gw_registry_resolve(f->db, "m", &fn, &err), AICFN_E_NOT_FOUND);
    assert_int_equal(gw_registry_resolve(f->db, "m:1", &fn, &err), AICFN_E_NOT_FOUND);
    assert_int_equal(gw_registry_artifact_in_use(f->db, HASH_A, NULL), 1);
    assert_int_equal(gw_registry_artifact_in_use(f->db, HASH_B, NULL), 0);
    assert_int_equal(gw_registry_remove(f->db, "m", &removed, NULL, NULL, &err), AICFN_E_NOT_FOUND);
    assert_int_equal(deploy(f->db, "m", HASH_A, NULL, NULL), 4);
}

static void config_json_round_trip(void **state) {
    (void)state;
    gw_fn_config c;
    gw_fn_config_init(&c);
    c.max_batch = 32;
    c.max_delay_us = 2000;
    c.timeout_us = 30000000;
    c.max_request_bytes = 8u << 20;
    c.max_workers = 2;
    c.idle_timeout_us = 300000000;
    c.cache_responses = true;
    c.cache_ttl_us = 600000000;
    c.idempotent = true;
    c.n_inputs = 1;
    c.inputs = calloc(1, sizeof *c.inputs);
    strcpy(c.inputs[0].name, "x");
    c.inputs[0].dtype = AICFN_DTYPE_FP32;
    c.inputs[0].ndim = 2;
    c.inputs[0].shape[0] = -1;
    c.inputs[0].shape[1] = 784;
    aicfn_error perr;
    assert_int_equal(gw_fn_config_add_param(&c, "temperature", 11, "0.7", 3, &perr), AICFN_OK);
    assert_int_equal(gw_fn_config_add_param(&c, "mode", 4, "", 0, &perr), AICFN_OK); /* an empty value */
    assert_int_equal(gw_fn_config_add_param(&c, "mode", 4, "x", 1, &perr), AICFN_E_INVALID);
    assert_non_null(strstr(perr.msg, "duplicate key 'mode'"));
    assert_int_equal(gw_fn_config_add_param(&c, "", 0, "x", 1, &perr), AICFN_E_INVALID);
    assert_int_equal(gw_fn_config_add_param(&c, "k", 1, "a\0b", 3, &perr), AICFN_E_INVALID);
    {
        gw_fn_config big;
        gw_fn_config_init(&big);
        static char v[AICFN_PARAM_VALUE_MAX];
        memset(v, 'v', sizeof v);
        int rc = AICFN_OK;
        for (int i = 0; rc == AICFN_OK && i < AICFN_MAX_PARAMS; i++) {
            char k[16];
            snprintf(k, sizeof k, "k%d", i);
            rc = gw_fn_config_add_param(&big, k, strlen(k), v, sizeof v, &perr);
        }
        assert_int_equal(rc, AICFN_E_INVALID); /* the total, long before 256 entries */
        assert_non_null(strstr(perr.msg, "every call carries them"));
        assert_true(big.n_params < AICFN_PARAMS_TOTAL_MAX / AICFN_PARAM_VALUE_MAX + 1);
        gw_fn_config_clear(&big);
    }
    json_t *j = gw_fn_config_to_json(&c);
    assert_non_null(j);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    gw_fn_config d;
    aicfn_error err;
    assert_int_equal(gw_fn_config_from_string(text, &d, &err), AICFN_OK);
    free(text);
    assert_int_equal(d.max_batch, 32);
    assert_int_equal(d.max_delay_us, 2000);
    assert_int_equal(d.timeout_us, 30000000);
    assert_int_equal(d.max_request_bytes, 8u << 20);
    assert_int_equal(d.max_workers, 2);
    assert_true(d.cache_responses);
    assert_int_equal(d.cache_ttl_us, 600000000);
    assert_true(d.idempotent);
    assert_int_equal(d.n_inputs, 1);
    assert_string_equal(d.inputs[0].name, "x");
    assert_int_equal(d.inputs[0].dtype, AICFN_DTYPE_FP32);
    assert_int_equal(d.inputs[0].shape[0], -1);
    assert_int_equal(d.n_outputs, 0);
    assert_int_equal(d.n_params, 2);
    assert_string_equal(d.params[0].key, "temperature");
    assert_string_equal(d.params[0].value, "0.7");
    assert_string_equal(d.params[1].key, "mode");
    assert_string_equal(d.params[1].value, "");
    gw_fn_config_clear(&d);
    gw_fn_config_clear(&c);
    /* A config without params has no "params" key (stored configs keep their form). */
    gw_fn_config_init(&c);
    j = gw_fn_config_to_json(&c);
    assert_null(json_object_get(j, "params"));
    json_decref(j);
    /* Hostile or wrong JSON. */
    const char *bad[] = {"[]",
                         "{\"batching\":1}",
                         "{\"batching\":{\"max_batch\":-1}}",
                         "{\"scaling\":{\"min_workers\":3,\"max_workers\":2}}",
                         "{\"idempotent\":1}",
                         "{\"inputs\":[{\"name\":\"x\"}]}",
                         "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"F99\"}]}",
                         "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[-2]}]}",
                         "{\"limits\":{\"max_request_bytes\":99999999999}}",
                         "{\"params\":[\"a\"]}",
                         "{\"params\":{\"a\":1}}",
                         "{\"params\":{\"\":\"x\"}}",
                         "{\"a\":1,\"a\":2}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(gw_fn_config_from_string(bad[i], &d, &err), AICFN_E_INVALID);
        assert_null(d.inputs);
        assert_null(d.params);
    }
}

/* The workers table is written by the ledger writer (ledger.h); the registry reads it
 * back for `aicfn workers --history`, sorted by id. */
static void workers_table(void **state) {
    fx *f = *state;
    char *msg = NULL;
    int s = sqlite3_exec(gw_db_sqlite(f->db),
                         "INSERT INTO workers(id, address, device, budget_bytes, pid, started_us, "
                         "last_seen_us, state) VALUES "
                         "('w2', 'ipc:///tmp/w2', 'cuda:0', 1073741824, 1234, 10, 77, 'exited'), "
                         "('w1', 'ipc:///tmp/w1', 'host', 4096, NULL, 11, 99, 'ready')",
                         NULL, NULL, &msg);
    assert_int_equal(s, SQLITE_OK);
    sqlite3_free(msg);
    gw_worker_row *ws = NULL;
    size_t n = 0;
    assert_int_equal(gw_registry_worker_list(f->db, &ws, &n, NULL), AICFN_OK);
    assert_int_equal(n, 2);
    assert_string_equal(ws[0].id, "w1");
    assert_string_equal(ws[0].state, "ready");
    assert_string_equal(ws[0].device, "host");
    assert_int_equal(ws[0].last_seen_us, 99);
    assert_int_equal(ws[0].pid, 0); /* NULL: a remote worker */
    assert_string_equal(ws[1].id, "w2");
    assert_string_equal(ws[1].state, "exited");
    assert_string_equal(ws[1].address, "ipc:///tmp/w2");
    assert_int_equal(ws[1].budget_bytes, 1073741824);
    assert_int_equal(ws[1].started_us, 10);
    assert_int_equal(ws[1].last_seen_us, 77);
    assert_int_equal(ws[1].pid, 1234);
    free(ws);
}

static void deploy_survives_reopen(void **state) {
    fx *f = *state;
    assert_int_equal(deploy(f->db, "durable", HASH_A, NULL, NULL), 1);
    /* A second connection (another process would see the same) reads the committed deploy. */
    gw_db *db2 = NULL;
    assert_int_equal(gw_db_open(f->dir, &db2, NULL), AICFN_OK);
    gw_function fn;
    assert_int_equal(gw_registry_resolve(db2, "durable", &fn, NULL), AICFN_OK);
    assert_int_equal(fn.version, 1);
    gw_function_clear(&fn);
    gw_db_close(db2);
}

/* An acknowledged deploy survives kill -9 of the process right after it returns. */
static void deploy_survives_kill9(void **state) {
    fx *f = *state;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        gw_db *db = NULL;
        if (gw_db_open(f->dir, &db, NULL) != AICFN_OK) _exit(3);
        gw_function_spec s = {.name = "k9", .handler_hash = HASH_A};
        uint32_t v = 0;
        if (gw_registry_deploy(db, &s, &v, NULL, NULL) != AICFN_OK) _exit(4);
        /* "Reply" to the client, then die without closing anything. */
        if (write(pfd[1], &v, sizeof v) != (ssize_t)sizeof v) _exit(5);
        raise(SIGKILL);
        _exit(6);
    }
    close(pfd[1]);
    uint32_t acked = 0;
    assert_int_equal(read(pfd[0], &acked, sizeof acked), (ssize_t)sizeof acked);
    close(pfd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(acked, 1);
    gw_db *db2 = NULL;
    assert_int_equal(gw_db_open(f->dir, &db2, NULL), AICFN_OK);
    gw_function fn;
    assert_int_equal(gw_registry_resolve(db2, "k9:1", &fn, NULL), AICFN_OK);
    assert_true(fn.active);
    gw_function_clear(&fn);
    assert_int_equal(gw_db_integrity_check(db2, NULL), AICFN_OK);
    gw_db_close(db2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refs_and_names),
        cmocka_unit_test_setup_teardown(deploy_versions_and_resolve, setup, teardown),
        cmocka_unit_test_setup_teardown(deploy_rejects_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(deploy_id_makes_a_deploy_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(inactive_deploy_leaves_the_active_version, setup, teardown),
        cmocka_unit_test_setup_teardown(rm_never_makes_a_staged_version_live, setup, teardown),
        cmocka_unit_test_setup_teardown(schema_5_staged_versions_stay_staged, setup, teardown),
        cmocka_unit_test_setup_teardown(canary_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(list_and_json, setup, teardown),
        cmocka_unit_test_setup_teardown(remove_versions, setup, teardown),
        cmocka_unit_test(config_json_round_trip),
        cmocka_unit_test_setup_teardown(workers_table, setup, teardown),
        cmocka_unit_test_setup_teardown(deploy_survives_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(deploy_survives_kill9, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
