/* test_manifest.c: aicfn.yaml parsing: the design.md example, defaults, file
 * resolution (file, list, directory), and bad cases, each error naming the file,
 * line:column and key; aliases/anchors/tags, depth and size bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "cli/manifest.h"
#include "test_db_util.h"

static const char *example = "name: mlp\n"
                             "handler: mlp.c            # or a prebuilt .so\n"
                             "model: weights.safetensors\n"
                             "batching: { max_batch: 32, max_delay_us: 2000 }\n"
                             "limits:   { timeout: 30s, max_request_bytes: 8MiB }\n"
                             "scaling:  { min_workers: 0, max_workers: 2, idle_timeout: 5m }\n"
                             "cache:    { responses: true, ttl: 10m }\n"
                             "idempotent: true\n"
                             "inputs:\n"
                             "  - { name: x, dtype: FP32, shape: [-1, 784] }\n"
                             "outputs:\n"
                             "  - name: y\n"
                             "    dtype: FP32\n"
                             "    shape: [-1, 10]\n";

static void parses_design_example(void **state) {
    (void)state;
    cli_manifest *m = NULL;
    aicfn_error err = {0};
    assert_int_equal(cli_manifest_parse(example, strlen(example), "aicfn.yaml", NULL, &m, &err), AICFN_OK);
    assert_string_equal(m->name, "mlp");
    assert_string_equal(m->handler, "mlp.c");
    assert_int_equal(m->handler_kind, CLI_HANDLER_C);
    assert_int_equal(m->n_model_files, 1);
    assert_string_equal(m->model_files[0], "weights.safetensors");
    assert_int_equal(m->config.max_batch, 32);
    assert_int_equal(m->config.max_delay_us, 2000);
    assert_int_equal(m->config.timeout_us, 30000000);
    assert_int_equal(m->config.max_request_bytes, 8u << 20);
    assert_int_equal(m->config.min_workers, 0);
    assert_int_equal(m->config.max_workers, 2);
    assert_int_equal(m->config.idle_timeout_us, 300000000ull);
    assert_true(m->config.cache_responses);
    assert_int_equal(m->config.cache_ttl_us, 600000000ull);
    assert_true(m->config.idempotent);
    assert_int_equal(m->config.n_inputs, 1);
    assert_string_equal(m->config.inputs[0].name, "x");
    assert_int_equal(m->config.inputs[0].ndim, 2);
    assert_int_equal(m->config.inputs[0].shape[0], -1);
    assert_int_equal(m->config.inputs[0].shape[1], 784);
    assert_int_equal(m->config.n_outputs, 1);
    assert_int_equal(m->config.outputs[0].shape[1], 10);
    /* The JSON form round-trips through the gateway's parser. */
    json_t *j = cli_manifest_config_json(m);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    gw_fn_config c;
    assert_int_equal(gw_fn_config_from_string(text, &c, &err), AICFN_OK);
    assert_int_equal(c.max_batch, 32);
    assert_int_equal(c.n_outputs, 1);
    gw_fn_config_clear(&c);
    free(text);
    cli_manifest_free(m);
    cli_manifest_free(NULL);
}

static void defaults_when_minimal(void **state) {
    (void)state;
    const char *y = "name: echo\nhandler: echo.so\n";
    cli_manifest *m = NULL;
    assert_int_equal(cli_manifest_parse(y, strlen(y), "x.yaml", NULL, &m, NULL), AICFN_OK);
    assert_int_equal(m->handler_kind, CLI_HANDLER_SO);
    assert_int_equal(m->n_model_files, 0);
    assert_int_equal(m->config.max_batch, 1);
    assert_int_equal(m->config.timeout_us, 30000000);
    assert_false(m->config.idempotent);
    cli_manifest_free(m);
}

/* Expects parsing to fail with AICFN_E_INVALID and a message holding every needle. */
static void expect_error(const char *yaml, const char *n1, const char *n2, const char *n3) {
    cli_manifest *m = NULL;
    aicfn_error err = {0};
    int rc = cli_manifest_parse(yaml, strlen(yaml), "aicfn.yaml", NULL, &m, &err);
    if (rc != AICFN_E_INVALID) fail_msg("expected AICFN_E_INVALID for:\n%s\ngot %d: %s", yaml, rc, err.msg);
    assert_null(m);
    const char *needles[] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && !strstr(err.msg, needles[i]))
            fail_msg("error '%s' lacks '%s' for:\n%s", err.msg, needles[i], yaml);
}

/* params: scalars handed to the handler's init as text, as written. */
static void params_are_text_for_init(void **state) {
    (void)state;
    const char *y = "name: g\nhandler: g.so\nparams: {temperature: 0.70, greedy: true, prompt: \"a: b\"}\n";
    cli_manifest *m = NULL;
    aicfn_error err = {0};
    if (cli_manifest_parse(y, strlen(y), "x.yaml", NULL, &m, &err) != AICFN_OK) fail_msg("%s", err.msg);
    assert_int_equal(m->config.n_params, 3);
    assert_string_equal(m->config.params[0].key, "temperature");
    assert_string_equal(m->config.params[0].value, "0.70");
    assert_string_equal(m->config.params[1].value, "true");
    assert_string_equal(m->config.params[2].value, "a: b");
    cli_manifest_free(m);
    expect_error("name: g\nhandler: g.so\nparams: {a: {b: 1}}\n", ":3:", "params.a", "expected a string");
    expect_error("name: g\nhandler: g.so\nparams: [a]\n", ":3:", "params", "expected a mapping");
    expect_error("name: g\nhandler: g.so\nparams: {a: 1, a: 2}\n", ":3:", "params: duplicate key 'a'", NULL);
    expect_error("name: g\nhandler: g.so\nparams: {a: ~}\n", ":3:", "params.a", NULL);
}

static void bad_cases_name_key_and_line(void **state) {
    (void)state;
    expect_error("name: a\nhandler: a.c\nbatching: { max_batch: 32, max_dely_us: 5 }\n",
                 "aicfn.yaml:3:", "batching.max_dely_us", "unknown key");
    expect_error("name: a\nhandler: a.c\nbogus: 1\n", "aicfn.yaml:3:1", "bogus", "unknown key");
    expect_error("name: a\nhandler: a.c\nbatching:\n  max_batch: lots\n", "aicfn.yaml:4:14",
                 "batching.max_batch", "expected an integer");
    expect_error("name: a\nhandler: a.c\nbatching: { max_batch: 0 }\n", ":3:", "batching.max_batch",
                 "out of range");
    expect_error("name: a\nhandler: a.c\nbatching: { max_batch: 9999999999999999999 }\n",
                 ":3:", "batching.max_batch", "9999999999999999999 is out of range"); /* past int64 */
    expect_error("name: a\nhandler: a.c\nlimits: { timeout: \"30s\\0junk\" }\n", ":3:", "limits.timeout",
                 "duration"); /* a NUL inside is not the end of the value */
    expect_error("name: a\nhandler: a.c\nlimits: { max_request_bytes: \"8MiB\\0x\" }\n",
                 ":3:", "limits.max_request_bytes", "size");
    expect_error("name: a\nhandler: a.c\nidempotent: yes\n", ":3:13", "idempotent", "true or false");
    expect_error("name: a\nhandler: a.c\nidempotent: \"true\"\n", ":3:", "idempotent", NULL);
    expect_error("name: a\nhandler: a.c\nlimits: { timeout: soon }\n", ":3:", "limits.timeout", "duration");
    expect_error("name: a\nhandler: a.c\nlimits: { max_request_bytes: 1PiB }\n",
                 ":3:", "limits.max_request_bytes", NULL);
    expect_error("name: a\nhandler: a.c\nlimits: { max_request_bytes: 1TiB }\n",
                 ":3:", "limits.max_request_bytes", NULL);
    expect_error("name: a\nhandler: a.c\nscaling: { min_workers: 3, max_workers: 2 }\n", ":3:", "scaling",
                 "exceeds");
    expect_error("name: a\nhandler: a.c\nbatching: 5\n", ":3:", "batching", "expected a mapping");
    expect_error("name: a\nhandler: a.c\ncache: { responses: true, ttl: 10000h }\n", "cache.ttl",
                 "36000000 s", "at most 366 days");
    expect_error("name: a\nhandler: a.c\nscaling: { idle_timeout: 9000h }\n", "scaling.idle_timeout",
                 "at most 366 days", NULL);
    expect_error("handler: a.c\n", "aicfn.yaml:1:1", "name", "missing required key");
    expect_error("name: a\n", "aicfn.yaml:1:1", "handler", "missing required key");
    expect_error("name: a\nhandler: a.py\n", ":2:10", "handler", ".c, .cu or .so");
    expect_error("name: a b\nhandler: a.c\n", ":1:7", "name", "not a valid function name");
    expect_error("name: [a]\nhandler: a.c\n", ":1:7", "name", "expected a string");
    expect_error("name:\nhandler: a.c\n", "name", "expected a string", NULL);
    expect_error("name: a\nname: b\nhandler: a.c\n", ":2:1", "name", "duplicate key");
    expect_error("name: a\nhandler: a.c\ninputs: [ { name: x, dtype: F32, shape: [1] } ]\n",
                 ":3:", "inputs[0].dtype", "unknown dtype");
    expect_error("name: a\nhandler: a.c\ninputs: [ { name: x, dtype: FP32, shape: [-2] } ]\n",
                 ":3:", "inputs[0].shape", "out of range");
    expect_error("name: a\nhandler: a.c\ninputs: [ { name: x, dtype: FP32 } ]\n", ":3:", "inputs[0]",
                 "shape");
    expect_error("name: a\nhandler: a.c\nmodel: []\n", ":3:", "model", "empty");
    expect_error("", "empty manifest", NULL, NULL);
    expect_error("# only a comment\n", "empty manifest", NULL, NULL);
    expect_error("- a\n- b\n", "expected a mapping", NULL, NULL);
    expect_error("name: a\nhandler: [unclosed\n", "YAML syntax error", "aicfn.yaml:", NULL);
    expect_error("name: a\nhandler: a.c\n---\nname: b\n", "more than one YAML document", ":3:", NULL);
}

static void refuses_aliases_anchors_tags_and_depth(void **state) {
    (void)state;
    expect_error("name: &n a\nhandler: a.c\n", "anchors", ":1:7", NULL);
    expect_error("x: &a [1]\nname: *a\nhandler: a.c\n", "anchors", NULL, NULL);
    expect_error("name: *a\nhandler: a.c\n", "aliases", ":1:7", NULL); /* an alias without an anchor */
    expect_error("name: !!str a\nhandler: a.c\n", "tags", NULL, NULL);
    /* Billion laughs: refused at the first anchor, nothing expanded. */
    const char *laughs = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
                         "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                         "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n";
    expect_error(laughs, "anchors", NULL, NULL);
    /* Deep nesting. */
    char deep[4096];
    size_t o = 0;
    o += (size_t)snprintf(deep + o, sizeof deep - o, "name: a\nhandler: a.c\ninputs: ");
    for (int i = 0; i < 1000; i++)
        deep[o++] = '[';
    deep[o] = '\0';
    expect_error(deep, "nesting deeper", NULL, NULL);
    /* Too large. */
    size_t big = AICFN_MANIFEST_MAX_BYTES + 1;
    char *buf = malloc(big);
    memset(buf, '#', big);
    cli_manifest *m = NULL;
    aicfn_error err;
    assert_int_equal(cli_manifest_parse(buf, big, "big.yaml", NULL, &m, &err), AICFN_E_TOO_LARGE);
    free(buf);
    /* Embedded NUL in a value. */
    const char nul[] = "name: \"a\\0b\"\nhandler: a.c\n";
    expect_error(nul, "NUL", NULL, NULL);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void load_resolves_and_checks_files(void **state) {
    (void)state;
    char *dir = tdb_mkdtemp("man");
    char p[1024], y[1024];
    snprintf(p, sizeof p, "%s/mlp.c", dir);
    write_file(p, "int x;\n");
    snprintf(p, sizeof p, "%s/weights", dir);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/weights/b.safetensors", dir);
    write_file(p, "x");
    snprintf(p, sizeof p, "%s/weights/a.safetensors", dir);
    write_file(p, "x");
    snprintf(p, sizeof p, "%s/weights/readme.txt", dir);
    write_file(p, "x");
    /* Hidden files are not weights: macOS's AppleDouble '._a.safetensors', an editor's
     * '.b.safetensors' (and the directory form skips them). */
    snprintf(p, sizeof p, "%s/weights/._a.safetensors", dir);
    write_file(p, "x");
    snprintf(p, sizeof p, "%s/weights/.b.safetensors", dir);
    write_file(p, "x");
    snprintf(y, sizeof y, "%s/aicfn.yaml", dir);
    write_file(y, "name: mlp\nhandler: mlp.c\nmodel: weights\n");
    cli_manifest *m = NULL;
    aicfn_error err = {0};
    /* A FIFO where the manifest should be is refused, not waited on for a writer. */
    char fifo_dir[1100], fifo[1200];
    snprintf(fifo_dir, sizeof fifo_dir, "%s/fifo", dir);
    assert_int_equal(mkdir(fifo_dir, 0700), 0);
    snprintf(fifo, sizeof fifo, "%s/aicfn.yaml", fifo_dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(cli_manifest_load(fifo_dir, &m, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "not a regular file"));
    assert_null(m);
    /* The directory form finds aicfn.yaml. */
    assert_int_equal(cli_manifest_load(dir, &m, &err), AICFN_OK);
    snprintf(p, sizeof p, "%s/mlp.c", dir);
    assert_string_equal(m->handler, p);
    assert_int_equal(m->n_model_files, 2);
    snprintf(p, sizeof p, "%s/weights/a.safetensors", dir);
    assert_string_equal(m->model_files[0], p);
    assert_non_null(strstr(m->model_files[1], "b.safetensors"));
    cli_manifest_free(m);
    /* A list of files. */
    write_file(y, "name: mlp\nhandler: mlp.c\nmodel: [weights/b.safetensors, weights/a.safetensors]\n");
    assert_int_equal(cli_manifest_load(y, &m, &err), AICFN_OK);
    assert_int_equal(m->n_model_files, 2);
    assert_non_null(strstr(m->model_files[0], "b.safetensors"));
    cli_manifest_free(m);
    /* A prebuilt handler must be an ELF shared object (a text file named .so, or a symlink
     * to one, is not uploaded); a real one is taken. */
    snprintf(p, sizeof p, "%s/secret.so", dir);
    write_file(p, "[default]\naws_secret_access_key = x\n");
    write_file(y, "name: mlp\nhandler: secret.so\n");
    assert_int_equal(cli_manifest_load(y, &m, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "handler: "));
    assert_non_null(strstr(err.msg, "is not an ELF shared object"));
    const char *libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    if (access(libc, R_OK) == 0) {
        snprintf(p, sizeof p, "%s/real.so", dir);
        assert_int_equal(symlink(libc, p), 0);
        write_file(y, "name: mlp\nhandler: real.so\n");
        if (cli_manifest_load(y, &m, &err) != AICFN_OK) fail_msg("%s", err.msg);
        assert_int_equal(m->handler_kind, CLI_HANDLER_SO);
        cli_manifest_free(m);
        m = NULL;
    }
    /* Missing files name the key and line. */
    write_file(y, "name: mlp\nhandler: nope.c\n");
    assert_int_equal(cli_manifest_load(y, &m, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, ":2:10: handler: cannot find"));
    assert_non_null(strstr(err.msg, "nope.c"));
    write_file(y, "name: mlp\nhandler: mlp.c\nmodel:\n  - weights/a.safetensors\n  - missing.safetensors\n");
    assert_int_equal(cli_manifest_load(y, &m, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "aicfn.yaml:5:5: model: cannot find"));
    snprintf(p, sizeof p, "%s/empty", dir);
    assert_int_equal(mkdir(p, 0700), 0);
    write_file(y, "name: mlp\nhandler: mlp.c\nmodel: empty\n");
    assert_int_equal(cli_manifest_load(y, &m, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "no .safetensors"));
    /* A directory with an index (a sharded checkpoint) is the index: the packer then
     * checks every shard it names, instead of taking whatever shards are there. */
    snprintf(p, sizeof p, "%s/sharded", dir);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/sharded/model-00001-of-00002.safetensors", dir);
    write_file(p, "x");
    snprintf(p, sizeof p, "%s/sharded/model.safetensors.index.json", dir);
    write_file(p, "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", "
                  "\"b\": \"model-00002-of-00002.safetensors\"}}");
    write_file(y, "name: mlp\nhandler: mlp.c\nmodel: sharded\n");
    assert_int_equal(cli_manifest_load(y, &m, &err), AICFN_OK);
    assert_int_equal(m->n_model_files, 1);
    assert_string_equal(m->model_files[0], p);
    cli_manifest_free(m);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(mkdir(p, 0700), 0); /* an index that is not a file */
    assert_int_equal(cli_manifest_load(y, &m, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "aicfn.yaml:3:8: model: model.safetensors.index.json in 'sharded'"));
    snprintf(p, sizeof p, "%s/none.yaml", dir);
    assert_int_equal(cli_manifest_load(p, &m, &err), AICFN_E_IO);
    tdb_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_design_example),
        cmocka_unit_test(defaults_when_minimal),
        cmocka_unit_test(params_are_text_for_init),
        cmocka_unit_test(bad_cases_name_key_and_line),
        cmocka_unit_test(refuses_aliases_anchors_tags_and_depth),
        cmocka_unit_test(load_resolves_and_checks_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
