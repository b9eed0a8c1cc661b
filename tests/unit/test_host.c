/* test_host.c: the function host (worker/host.c): loading handler libraries with the
 * ABI check, the instance lifecycle, the helper table, and handler errors, using the
 * real handler .so files the build installs next to this binary
 * (<prefix>/bin/tests/unit/test_host -> <prefix>/lib/handlers/). */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "common/tunables.h"
#include "worker/host.h"

static char handlers_dir[PATH_MAX];

static const char *handler_path(const char *name) {
    static _Thread_local char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s.so", handlers_dir, name);
    return buf;
}

static int find_handlers(void **state) {
    (void)state;
    const char *prefix = getenv("AICFN_PREFIX");
    if (prefix && prefix[0]) {
        snprintf(handlers_dir, sizeof handlers_dir, "%s/lib/handlers", prefix);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = '\0';
    /* <prefix>/bin/tests/unit/test_host: strip four components. */
    for (int i = 0; i < 4; i++) {
        char *s = strrchr(exe, '/');
        if (s == NULL) return -1;
        *s = '\0';
    }
    snprintf(handlers_dir, sizeof handlers_dir, "%s/lib/handlers", exe);
    return 0;
}

static aicfn_tensor host_tensor(const char *name, aicfn_dtype dt, uint32_t ndim, const int64_t *shape,
                                void *data, uint64_t nbytes) {
    aicfn_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = dt;
    t.ndim = ndim;
    for (uint32_t i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    t.data = data;
    t.nbytes = nbytes;
    t.mem = AICFN_MEM_HOST;
    t.device_id = -1;
    return t;
}

static void echo_roundtrip(void **state) {
    (void)state;
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("echo"), &h, &err), AICFN_OK);
    assert_int_equal(worker_handler_abi_version(h), AICFN_ABI_ENCODE(AICFN_ABI_MAJOR, AICFN_ABI_MINOR));
    aicfn_fn_config cfg = {.function = "echo", .max_batch = 2};
    worker_instance *inst = NULL;
    assert_int_equal(worker_instance_create(h, NULL, &cfg, &inst, &err), AICFN_OK);

    float x[4] = {1, 2, 3, 4};
    int64_t shape[2] = {1, 4};
    uint8_t bytes[4 + 5 + 4 + 0] = {5, 0, 0, 0, 'h', 'e', 'l', 'l', 'o', 0, 0, 0, 0};
    int64_t bshape[1] = {2};
    aicfn_tensor in0[2] = {host_tensor("x", AICFN_DTYPE_FP32, 2, shape, x, sizeof x),
                           host_tensor("s", AICFN_DTYPE_BYTES, 1, bshape, bytes, sizeof bytes)};
    aicfn_tensor in1[1] = {host_tensor("y", AICFN_DTYPE_FP32, 2, shape, x, sizeof x)};
    aicfn_request reqs[2] = {{.id = "1", .n_inputs = 2, .inputs = in0},
                             {.id = "2", .n_inputs = 1, .inputs = in1}};
    aicfn_response *resps[2] = {worker_response_create(0), worker_response_create(0)};
    assert_int_equal(worker_instance_invoke(inst, reqs, resps, 2, &err), AICFN_OK);
    assert_int_equal(worker_response_status(resps[0], NULL), AICFN_OK);
    assert_int_equal(worker_response_n_outputs(resps[0]), 2);
    const aicfn_tensor *o = worker_response_outputs(resps[0]);
    assert_string_equal(o[0].name, "x");
    assert_int_equal(o[0].dtype, AICFN_DTYPE_FP32);
    assert_int_equal(o[0].shape[1], 4);
    assert_memory_equal(o[0].data, x, sizeof x);
    assert_int_equal(o[1].dtype, AICFN_DTYPE_BYTES);
    assert_memory_equal(o[1].data, bytes, sizeof bytes);
    assert_int_equal(worker_response_n_outputs(resps[1]), 1);
    assert_string_equal(worker_response_outputs(resps[1])[0].name, "y");
    /* A batch larger than max_batch is refused before the handler runs. */
    aicfn_request three[3] = {reqs[0], reqs[1], reqs[1]};
    aicfn_response *r3[3] = {resps[0], resps[1], resps[1]};
    assert_int_equal(worker_instance_invoke(inst, three, r3, 3, &err), AICFN_E_INVALID);
    worker_response_destroy(resps[0]);
    worker_response_destroy(resps[1]);
    worker_instance_destroy(inst);
    worker_handler_close(h);
}

static void abi_major_mismatch_refused(void **state) {
    (void)state;
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("test_abi_mismatch"), &h, &err), AICFN_E_ABI);
    assert_null(h);
    char want_theirs[32], want_mine[32];
    snprintf(want_theirs, sizeof want_theirs, "ABI %d.%d", AICFN_ABI_MAJOR + 1, AICFN_ABI_MINOR);
    snprintf(want_mine, sizeof want_mine, "ABI %d.%d", AICFN_ABI_MAJOR, AICFN_ABI_MINOR);
    assert_non_null(strstr(err.msg, want_theirs));
    assert_non_null(strstr(err.msg, want_mine));
    assert_non_null(strstr(err.msg, "major"));
}

static void abi_newer_minor_refused(void **state) {
    (void)state;
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("test_abi_newer_minor"), &h, &err), AICFN_E_ABI);
    char want[32];
    snprintf(want, sizeof want, "ABI %d.%d", AICFN_ABI_MAJOR, AICFN_ABI_MINOR + 1);
    assert_non_null(strstr(err.msg, want));
}

static void missing_symbol_and_file(void **state) {
    (void)state;
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("test_no_invoke"), &h, &err), AICFN_E_ABI);
    assert_non_null(strstr(err.msg, "aicfn_fn_invoke"));
    assert_int_equal(worker_handler_open(handler_path("does_not_exist"), &h, &err), AICFN_E_NOT_FOUND);
    assert_non_null(strstr(err.msg, "does_not_exist"));
    /* A file that is not a shared library. */
    char tmp[] = "/tmp/aicfn_test_host_XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not an ELF file", 15), 15);
    close(fd);
    assert_int_equal(worker_handler_open(tmp, &h, &err), AICFN_E_ABI);
    assert_non_null(strstr(err.msg, "cannot load"));
    unlink(tmp);
}

static void handler_errors(void **state) {
    (void)state;
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("test_fail"), &h, &err), AICFN_OK);
    aicfn_param bad[1] = {{"init_fail", "1"}};
    aicfn_fn_config cfg = {.function = "fail", .max_batch = 3, .n_params = 1, .params = bad};
    worker_instance *inst = NULL;
    assert_int_equal(worker_instance_create(h, NULL, &cfg, &inst, &err), AICFN_E_INVALID);
    assert_null(inst);
    assert_non_null(strstr(err.msg, "init failed"));
    cfg.n_params = 0;
    assert_int_equal(worker_instance_create(h, NULL, &cfg, &inst, &err), AICFN_OK);

    aicfn_param p_req[1] = {{"mode", "request"}};
    aicfn_param p_ok[1] = {{"mode", "ok"}};
    aicfn_param p_batch[2] = {{"mode", "batch"}, {"code", "11"}};
    aicfn_request reqs[3] = {{.id = "a", .n_params = 1, .params = p_req},
                             {.id = "b", .n_params = 1, .params = p_ok},
                             {.id = "c", .n_params = 0}};
    aicfn_response *resps[3] = {worker_response_create(0), worker_response_create(0),
                                worker_response_create(0)};
    assert_int_equal(worker_instance_invoke(inst, reqs, resps, 3, &err), AICFN_OK);
    const char *msg;
    assert_int_equal(worker_response_status(resps[0], &msg), AICFN_E_HANDLER);
    assert_non_null(strstr(msg, "on purpose"));
    assert_int_equal(worker_response_status(resps[1], NULL), AICFN_OK);
    assert_int_equal(*(int32_t *)worker_response_outputs(resps[1])[0].data, 1);
    assert_int_equal(worker_response_status(resps[2], NULL), AICFN_E_HANDLER);

    /* A whole-batch failure reaches every response without an error of its own. */
    for (int i = 0; i < 3; i++)
        worker_response_reset(resps[i]);
    reqs[0].params = p_batch;
    reqs[0].n_params = 2;
    assert_int_equal(worker_instance_invoke(inst, reqs, resps, 2, &err), AICFN_OK);
    assert_int_equal(worker_response_status(resps[0], &msg), AICFN_E_OVERLOADED);
    assert_non_null(strstr(msg, "handler returned"));
    assert_int_equal(worker_response_status(resps[1], NULL), AICFN_E_OVERLOADED);
    assert_int_equal(worker_response_n_outputs(resps[1]), 0);
    for (int i = 0; i < 3; i++)
        worker_response_destroy(resps[i]);
    worker_instance_destroy(inst);
    worker_handler_close(h);
}

/* A handler rewrites an output it was given: a larger size (the reply would read past
 * the buffer; for BYTES, so would the check of its framing), its own data or name (the worker would free
 * them), device memory: each is AICFN_E_HANDLER naming the problem, nothing is read or freed wrongly (ASan);
 * a reshape within the same bytes is fine. */
static void outputs_rewritten_by_the_handler(void **state) {
    (void)state;
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("test_fail"), &h, &err), AICFN_OK);
    aicfn_fn_config cfg = {.function = "fail", .max_batch = 1};
    worker_instance *inst = NULL;
    assert_int_equal(worker_instance_create(h, NULL, &cfg, &inst, &err), AICFN_OK);
    static const char *const bad[][2] = {{"grow", "more than the 32 alloc_output gave it"},
                                         {"grow_bytes", "more than the 32 alloc_output gave it"},
                                         {"swap_data", "not what alloc_output returned"},
                                         {"swap_name", "not what alloc_output returned"},
                                         {"null_name", "not what alloc_output returned"},
                                         {"device", "not what alloc_output returned"}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0] + 1; k++) {
        const char *mode = k < sizeof bad / sizeof bad[0] ? bad[k][0] : "reshape";
        aicfn_param p[1] = {{"mode", mode}};
        aicfn_request req = {.id = "r", .n_params = 1, .params = p};
        aicfn_response *resp = worker_response_create(0);
        assert_int_equal(worker_instance_invoke(inst, &req, &resp, 1, &err), AICFN_OK);
        const char *msg;
        int code = worker_response_status(resp, &msg);
        if (k < sizeof bad / sizeof bad[0]) {
            assert_int_equal(code, AICFN_E_HANDLER);
            if (!strstr(msg, bad[k][1])) fail_msg("%s: '%s' does not say '%s'", mode, msg, bad[k][1]);
            assert_int_equal(worker_response_n_outputs(resp), 0);
        } else {
            assert_int_equal(code, AICFN_OK);
            assert_int_equal(worker_response_n_outputs(resp), 1);
            assert_int_equal(worker_response_outputs(resp)[0].ndim, 1);
            assert_int_equal(worker_response_output_bytes(resp), 32);
        }
        worker_response_destroy(resp);
    }
    worker_instance_destroy(inst);
    worker_handler_close(h);
}

static void alloc_output_rules(void **state) {
    (void)state;
    const aicfn_host_api *api = worker_host_api();
    assert_int_equal(api->abi_version, AICFN_ABI_ENCODE(AICFN_ABI_MAJOR, AICFN_ABI_MINOR));
    assert_int_equal(api->struct_size, sizeof(aicfn_host_api));
    aicfn_response *r = worker_response_create(1024);
    int64_t shape[2] = {2, 3};
    aicfn_tensor *t = api->alloc_output(r, "a", AICFN_DTYPE_FP32, 2, shape, 0);
    assert_non_null(t);
    assert_int_equal(t->nbytes, 24);
    assert_int_equal(t->mem, AICFN_MEM_HOST);
    /* Duplicate name. */
    assert_null(api->alloc_output(r, "a", AICFN_DTYPE_FP32, 2, shape, 0));
    assert_int_equal(worker_response_status(r, NULL), AICFN_E_INVALID);
    assert_int_equal(worker_response_n_outputs(r), 0); /* an error discards outputs */
    /* ... but does not free them under the handler, which may still write the first
     * (ASan reports a write to freed memory otherwise); a failed response takes no more. */
    ((float *)t->data)[5] = 1.5f;
    assert_null(api->alloc_output(r, "z", AICFN_DTYPE_FP32, 2, shape, 0));
    assert_int_equal(worker_response_status(r, NULL), AICFN_E_INVALID);
    worker_response_reset(r);
    /* nbytes that do not match the dtype and shape. */
    assert_null(api->alloc_output(r, "b", AICFN_DTYPE_FP32, 2, shape, 25));
    worker_response_reset(r);
    /* Names: 1..AICFN_MAX_NAME_BYTES bytes, as the protocol carries them. */
    char name[AICFN_MAX_NAME_BYTES + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    assert_null(api->alloc_output(r, name, AICFN_DTYPE_FP32, 2, shape, 0)); /* one byte over */
    assert_int_equal(worker_response_status(r, NULL), AICFN_E_INVALID);
    worker_response_reset(r);
    name[AICFN_MAX_NAME_BYTES] = '\0';
    assert_non_null(api->alloc_output(r, name, AICFN_DTYPE_FP32, 2, shape, 0));
    assert_null(api->alloc_output(r, "", AICFN_DTYPE_FP32, 2, shape, 0));
    worker_response_reset(r);
    /* Over the reply limit. */
    int64_t big[1] = {1000};
    assert_null(api->alloc_output(r, "c", AICFN_DTYPE_FP32, 1, big, 0));
    assert_int_equal(worker_response_status(r, NULL), AICFN_E_TOO_LARGE);
    worker_response_reset(r);
    /* Negative dimension, bad dtype, empty name. */
    int64_t neg[1] = {-1};
    assert_null(api->alloc_output(r, "d", AICFN_DTYPE_FP32, 1, neg, 0));
    worker_response_reset(r);
    assert_null(api->alloc_output(r, "e", (aicfn_dtype)99, 1, shape, 0));
    worker_response_reset(r);
    assert_null(api->alloc_output(r, "", AICFN_DTYPE_FP32, 1, shape, 0));
    worker_response_reset(r);
    /* BYTES needs at least 4 bytes per element. */
    int64_t two[1] = {2};
    assert_null(api->alloc_output(r, "s", AICFN_DTYPE_BYTES, 1, two, 7));
    worker_response_reset(r);
    aicfn_tensor *s8 = api->alloc_output(r, "s", AICFN_DTYPE_BYTES, 1, two, 8);
    assert_non_null(s8);
    /* set_error: code and message, outputs not sent (their buffers stay valid). */
    assert_int_equal(api->set_error(r, AICFN_E_INVALID, "bad %s", "thing"), AICFN_E_INVALID);
    ((uint8_t *)s8->data)[7] = 1;
    const char *msg;
    assert_int_equal(worker_response_status(r, &msg), AICFN_E_INVALID);
    assert_string_equal(msg, "bad thing");
    assert_int_equal(worker_response_n_outputs(r), 0);
    /* find_param / find_input. */
    aicfn_param ps[2] = {{"k", "v"}, {"n", "1"}};
    assert_string_equal(api->find_param(ps, 2, "n"), "1");
    assert_null(api->find_param(ps, 2, "zz"));
    worker_response_destroy(r);
}

static void tensor_checks(void **state) {
    (void)state;
    aicfn_error err;
    float x[6] = {0};
    int64_t shape[2] = {2, 3};
    aicfn_tensor t = host_tensor("x", AICFN_DTYPE_FP32, 2, shape, x, sizeof x);
    assert_int_equal(worker_tensor_check(&t, &err), AICFN_OK);
    t.nbytes = 20;
    assert_int_equal(worker_tensor_check(&t, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "24 bytes"));
    t.nbytes = 24;
    t.shape[0] = -2;
    assert_int_equal(worker_tensor_check(&t, &err), AICFN_E_INVALID);
    /* BYTES: lengths must tile the data exactly. */
    uint8_t good[] = {1, 0, 0, 0, 'a', 2, 0, 0, 0, 'b', 'c'};
    int64_t n2[1] = {2};
    aicfn_tensor b = host_tensor("s", AICFN_DTYPE_BYTES, 1, n2, good, sizeof good);
    assert_int_equal(worker_tensor_check(&b, &err), AICFN_OK);
    b.nbytes = sizeof good - 1; /* last element runs past the end */
    assert_int_equal(worker_tensor_check(&b, &err), AICFN_E_INVALID);
    b.nbytes = sizeof good;
    int64_t n1[1] = {1}; /* one element: trailing bytes */
    memcpy(b.shape, n1, sizeof n1);
    assert_int_equal(worker_tensor_check(&b, &err), AICFN_E_INVALID);
    int64_t n3[1] = {3}; /* three elements: prefix runs out */
    memcpy(b.shape, n3, sizeof n3);
    assert_int_equal(worker_tensor_check(&b, &err), AICFN_E_INVALID);
    uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 'x'};
    aicfn_tensor hb = host_tensor("h", AICFN_DTYPE_BYTES, 1, n1, huge, sizeof huge);
    assert_int_equal(worker_tensor_check(&hb, &err), AICFN_E_INVALID);
}

static void sleep_counts_and_batch(void **state) {
    (void)state;
    char path[] = "/tmp/aicfn_test_count_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("test_sleep"), &h, &err), AICFN_OK);
    aicfn_param cp[1] = {{"count_file", path}};
    aicfn_fn_config cfg = {.function = "sleep", .max_batch = 4, .n_params = 1, .params = cp};
    worker_instance *inst = NULL;
    assert_int_equal(worker_instance_create(h, NULL, &cfg, &inst, &err), AICFN_OK);
    aicfn_request reqs[3] = {{.id = "r1"}, {.id = "r2"}, {.id = "r3"}};
    aicfn_response *resps[3] = {worker_response_create(0), worker_response_create(0),
                                worker_response_create(0)};
    assert_int_equal(worker_instance_invoke(inst, reqs, resps, 3, &err), AICFN_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(worker_response_status(resps[i], NULL), AICFN_OK);
        const aicfn_tensor *o = worker_response_outputs(resps[i]);
        assert_string_equal(o[0].name, "batch");
        assert_int_equal(*(int32_t *)o[0].data, 3);
        worker_response_destroy(resps[i]);
    }
    worker_instance_destroy(inst);
    worker_handler_close(h);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[64] = "";
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    assert_string_equal(buf, "r1\nr2\nr3\n");
    unlink(path);
}

/* The mlp example on host memory: batched outputs equal single-call outputs. */
static void mlp_batch_equals_single(void **state) {
    (void)state;
    enum { D = 16, H = 64, C = 10 };
    static float w1[H * D], b1[H], w2[C * H], b2[C];
    uint32_t seed = 12345;
    float *all[4] = {w1, b1, w2, b2};
    size_t lens[4] = {H * D, H, C * H, C};
    for (int k = 0; k < 4; k++)
        for (size_t i = 0; i < lens[k]; i++) {
            seed = seed * 1664525u + 1013904223u;
            all[k][i] = ((float)(seed >> 8) / (float)(1u << 24) - 0.5f) * 0.5f;
        }
    int64_t s_w1[2] = {H, D}, s_b1[1] = {H}, s_w2[2] = {C, H}, s_b2[1] = {C};
    aicfn_tensor mt[4] = {host_tensor("fc1.weight", AICFN_DTYPE_FP32, 2, s_w1, w1, sizeof w1),
                          host_tensor("fc1.bias", AICFN_DTYPE_FP32, 1, s_b1, b1, sizeof b1),
                          host_tensor("fc2.weight", AICFN_DTYPE_FP32, 2, s_w2, w2, sizeof w2),
                          host_tensor("fc2.bias", AICFN_DTYPE_FP32, 1, s_b2, b2, sizeof b2)};
    aicfn_model model = {
        .name = "mlp", .n_tensors = 4, .tensors = mt, .mem = AICFN_MEM_HOST, .device_id = -1};
    worker_handler *h = NULL;
    aicfn_error err;
    assert_int_equal(worker_handler_open(handler_path("mlp"), &h, &err), AICFN_OK);
    aicfn_fn_config cfg = {.function = "mlp", .max_batch = 8};
    worker_instance *inst = NULL;
    assert_int_equal(worker_instance_create(h, &model, &cfg, &inst, &err), AICFN_OK);

    enum { N = 5 };
    static float xs[N][2 * D];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < 2 * D; k++)
            xs[i][k] = (float)((i * 31 + k * 7) % 17) / 8.0f - 1.0f;
    int64_t sx[2] = {2, D};
    aicfn_tensor in[N];
    aicfn_request reqs[N];
    aicfn_response *batch[N], *single[N];
    for (int i = 0; i < N; i++) {
        in[i] = host_tensor("x", AICFN_DTYPE_FP32, 2, sx, xs[i], sizeof xs[i]);
        reqs[i] = (aicfn_request){.id = "", .n_inputs = 1, .inputs = &in[i]};
        batch[i] = worker_response_create(0);
        single[i] = worker_response_create(0);
    }
    assert_int_equal(worker_instance_invoke(inst, reqs, batch, N, &err), AICFN_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(worker_instance_invoke(inst, &reqs[i], &single[i], 1, &err), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(worker_response_status(batch[i], NULL), AICFN_OK);
        assert_int_equal(worker_response_n_outputs(batch[i]), 3);
        for (int k = 0; k < 3; k++) {
            const aicfn_tensor *a = &worker_response_outputs(batch[i])[k];
            const aicfn_tensor *b = &worker_response_outputs(single[i])[k];
            assert_string_equal(a->name, b->name);
            assert_int_equal(a->nbytes, b->nbytes);
            assert_memory_equal(a->data, b->data, a->nbytes);
        }
        /* Check one row against a direct computation. */
        const float *logits = worker_response_outputs(batch[i])[0].data;
        for (int r = 0; r < 2; r++) {
            float hid[H];
            for (int j = 0; j < H; j++) {
                double acc = b1[j];
                for (int k = 0; k < D; k++)
                    acc += (double)w1[j * D + k] * xs[i][r * D + k];
                hid[j] = acc > 0 ? (float)acc : 0.0f;
            }
            for (int o = 0; o < C; o++) {
                double acc = b2[o];
                for (int j = 0; j < H; j++)
                    acc += (double)w2[o * H + j] * hid[j];
                assert_float_equal(logits[r * C + o], (float)acc, 1e-4);
            }
        }
        worker_response_destroy(batch[i]);
        worker_response_destroy(single[i]);
    }
    /* A request with the wrong input gets its own error; the others still succeed. */
    float bad[3] = {0};
    int64_t sbad[1] = {3};
    aicfn_tensor tb = host_tensor("x", AICFN_DTYPE_FP32, 1, sbad, bad, sizeof bad);
    aicfn_request two[2] = {{.id = "", .n_inputs = 1, .inputs = &tb}, reqs[0]};
    aicfn_response *r2[2] = {worker_response_create(0), worker_response_create(0)};
    assert_int_equal(worker_instance_invoke(inst, two, r2, 2, &err), AICFN_OK);
    assert_int_equal(worker_response_status(r2[0], NULL), AICFN_E_INVALID);
    assert_int_equal(worker_response_status(r2[1], NULL), AICFN_OK);
    worker_response_destroy(r2[0]);
    worker_response_destroy(r2[1]);
    worker_instance_destroy(inst);
    /* Without the model's tensors, init fails. */
    model.n_tensors = 2;
    assert_int_equal(worker_instance_create(h, &model, &cfg, &inst, &err), AICFN_E_INVALID);
    worker_handler_close(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(echo_roundtrip),
        cmocka_unit_test(abi_major_mismatch_refused),
        cmocka_unit_test(abi_newer_minor_refused),
        cmocka_unit_test(missing_symbol_and_file),
        cmocka_unit_test(handler_errors),
        cmocka_unit_test(alloc_output_rules),
        cmocka_unit_test(outputs_rewritten_by_the_handler),
        cmocka_unit_test(tensor_checks),
        cmocka_unit_test(sleep_counts_and_batch),
        cmocka_unit_test(mlp_batch_equals_single),
    };
    return cmocka_run_group_tests(tests, find_handlers, NULL);
}
