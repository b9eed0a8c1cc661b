/* test_worker.c: the worker in process (worker/worker.c), driven over a real NNG
 * socket with the rpc client and the wire codec: echo round trip, cold then warm model
 * calls, batching, deadlines, handler errors, status, adding functions, and drain.
 * Handlers are the real .so files installed next to this binary. */
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "common/clock.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/wire.h"
#include "loader/pipeline.h"
#include "snapshots/safetensors.h"
#include "snapshots/writer.h"
#include "worker/worker.h"

static char handlers_dir[PATH_MAX];
static char tmp_dir[] = "/tmp/aicfn_test_worker_XXXXXX";
static char snap_path[PATH_MAX + 32];

static const char *hpath(const char *name) {
    static _Thread_local char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s.so", handlers_dir, name);
    return buf;
}

/* A two-layer mlp checkpoint (16 -> 64 -> 10) in safetensors, packed into a snapshot. */
static int make_snapshot(void) {
    enum { D = 16, H = 64, C = 10 };
    static float w1[H * D], b1[H], w2[C * H], b2[C];
    for (int i = 0; i < H * D; i++)
        w1[i] = (float)((i * 37) % 23 - 11) / 64.0f;
    for (int i = 0; i < H; i++)
        b1[i] = (float)(i % 5) / 20.0f;
    for (int i = 0; i < C * H; i++)
        w2[i] = (float)((i * 13) % 19 - 9) / 64.0f;
    for (int i = 0; i < C; i++)
        b2[i] = (float)i / 100.0f;
    char header[512];
    size_t o1 = sizeof w1, o2 = o1 + sizeof b1, o3 = o2 + sizeof w2, o4 = o3 + sizeof b2;
    int n = snprintf(header, sizeof header,
                     "{\"fc1.weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]},"
                     "\"fc1.bias\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]},"
                     "\"fc2.weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]},"
                     "\"fc2.bias\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]}}",
                     H, D, o1, H, o1, o2, C, H, o2, o3, C, o3, o4);
    while (n % 8)
        header[n++] = ' ';
    char st[PATH_MAX + 32];
    snprintf(st, sizeof st, "%s/mlp.safetensors", tmp_dir);
    FILE *f = fopen(st, "wb");
    if (f == NULL) return -1;
    uint64_t hl = (uint64_t)n;
    fwrite(&hl, 8, 1, f);
    fwrite(header, 1, (size_t)n, f);
    fwrite(w1, sizeof w1, 1, f);
    fwrite(b1, sizeof b1, 1, f);
    fwrite(w2, sizeof w2, 1, f);
    fwrite(b2, sizeof b2, 1, f);
    fclose(f);
    snprintf(snap_path, sizeof snap_path, "%s/mlp.aicsnap", tmp_dir);
    const char *in[1] = {st};
    snap_pack_opts o = {.level = AICFN_SNAP_DEFAULT_LEVEL,
                        .chunk = AICFN_SNAP_DEFAULT_CHUNK,
                        .filter = SNAP_FILTER_MODE_AUTO,
                        .threads = 1};
    aicfn_error err;
    int rc = snap_pack(in, 1, snap_path, &o, NULL, &err);
    if (rc != AICFN_OK) fprintf(stderr, "snap_pack: %s\n", err.msg);
    return rc;
}

static int setup(void **state) {
    (void)state;
    const char *prefix = getenv("AICFN_PREFIX");
    if (prefix && prefix[0]) {
        snprintf(handlers_dir, sizeof handlers_dir, "%s/lib/handlers", prefix);
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) return -1;
        exe[n] = '\0';
        for (int i = 0; i < 4; i++) {
            char *s = strrchr(exe, '/');
            if (s == NULL) return -1;
            *s = '\0';
        }
        snprintf(handlers_dir, sizeof handlers_dir, "%s/lib/handlers", exe);
    }
    if (mkdtemp(tmp_dir) == NULL) return -1;
    return make_snapshot();
}

static int teardown(void **state) {
    (void)state;
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- a small client ---- */

typedef struct reply {
    rpc_msg *msg;
    wire_doc doc;
    wire_invoke_reply rep;
} reply;

static void reply_free(reply *r) {
    wire_doc_fini(&r->doc);
    rpc_msg_free(r->msg);
    memset(r, 0, sizeof *r);
}

static uint8_t *encode_invoke(uint64_t id, const char *fn, const wire_tensor *in, uint32_t n_in,
                              const char *param_key, const char *param_val, uint32_t deadline_ms,
                              size_t *len) {
    wire_writer pw;
    wire_writer_init(&pw);
    uint8_t *params = NULL;
    size_t plen = 0;
    if (param_key) {
        wire_put_map(&pw, 1);
        wire_kv_str(&pw, param_key, param_val);
        params = wire_writer_take(&pw, &plen);
    }
    wire_invoke_req req = {.id = id,
                           .fn = fn,
                           .deadline_ms = deadline_ms,
                           .n_inputs = n_in,
                           .inputs = in,
                           .params = params,
                           .params_len = plen};
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_invoke_req(&w, &req, NULL), AICFN_OK);
    uint8_t *out = wire_writer_take(&w, len);
    wire_writer_fini(&w);
    wire_writer_fini(&pw);
    free(params);
    return out;
}

static void decode(reply *r) {
    aicfn_error err;
    assert_int_equal(wire_doc_parse(&r->doc, rpc_msg_data(r->msg), rpc_msg_len(r->msg), NULL, &err),
                     AICFN_OK);
    assert_int_equal(wire_decode_invoke_reply(&r->doc, &r->rep, &err), AICFN_OK);
}

static void invoke(rpc_client *c, uint64_t id, const char *fn, const wire_tensor *in, uint32_t n_in,
                   const char *pk, const char *pv, uint32_t deadline_ms, reply *r) {
    size_t len;
    uint8_t *req = encode_invoke(id, fn, in, n_in, pk, pv, deadline_ms, &len);
    memset(r, 0, sizeof *r);
    aicfn_error err;
    assert_int_equal(rpc_call_sync(c, req, len, 10000, &r->msg, &err), AICFN_OK);
    free(req);
    decode(r);
    assert_int_equal(r->rep.head.id, id);
}

static worker *start(const char *url, uint64_t memory) {
    worker_config cfg = {.listen = url, .device = "host", .memory_bytes = memory, .id = "wt"};
    worker *w = NULL;
    aicfn_error err;
    assert_int_equal(worker_create(&cfg, &w, &err), AICFN_OK);
    return w;
}

static void add(worker *w, const char *name, const char *so, const char *snap, uint32_t max_batch,
                uint64_t max_delay_us) {
    worker_fn_config f = {.name = name,
                          .handler = hpath(so),
                          .snapshot = snap,
                          .max_batch = max_batch,
                          .max_delay_us = max_delay_us};
    aicfn_error err;
    int rc = worker_add_function(w, &f, &err);
    if (rc != AICFN_OK) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, AICFN_OK);
}

/* add() of a function (max_batch 1) with its own timeout. */
static void add_timed(worker *w, const char *name, const char *so, uint64_t timeout_us) {
    worker_fn_config f = {.name = name, .handler = hpath(so), .max_batch = 1, .timeout_us = timeout_us};
    aicfn_error err;
    int rc = worker_add_function(w, &f, &err);
    if (rc != AICFN_OK) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, AICFN_OK);
}

/* Starts w serving on `url` (its worker_url) and opens a client to it. */
static rpc_client *serve(worker *w, const char *url) {
    aicfn_error err;
    assert_int_equal(worker_start(w, &err), AICFN_OK);
    assert_string_equal(worker_url(w), url);
    rpc_client *c = NULL;
    assert_int_equal(rpc_client_open(&c, url, NULL, &err), AICFN_OK);
    return c;
}

/* A 1-D FP32 tensor named "x" over x[0..n) (borrowed). */
static wire_tensor fp32_x(const float *x, uint32_t n) {
    return (wire_tensor){.name = "x",
                         .dtype = AICFN_DTYPE_FP32,
                         .ndim = 1,
                         .shape = {n},
                         .data = (const uint8_t *)x,
                         .nbytes = n * sizeof *x};
}

/* Closes the client, drains w (every call answered within drain_ms) and destroys it. */
static void stop(worker *w, rpc_client *c, uint32_t drain_ms) {
    rpc_client_close(c);
    assert_int_equal(worker_drain(w, drain_ms), 0);
    worker_destroy(w);
}

/* ---- tests ---- */

static void echo_mlp_status(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-a", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "echo", "echo", NULL, 1, 0);
    add(w, "mlp", "mlp", snap_path, 8, 1000);
    aicfn_error err;
    /* Adding a function twice, or one with a mismatched ABI, is refused. */
    worker_fn_config dup = {.name = "echo", .handler = hpath("echo")};
    assert_int_equal(worker_add_function(w, &dup, &err), AICFN_E_EXISTS);
    worker_fn_config abi = {.name = "abi", .handler = hpath("test_abi_mismatch")};
    assert_int_equal(worker_add_function(w, &abi, &err), AICFN_E_ABI);
    assert_non_null(strstr(err.msg, "ABI 2.0"));
    rpc_client *c = serve(w, url);

    float x[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)i / 10.0f;
    wire_tensor in = {.name = "x",
                      .dtype = AICFN_DTYPE_FP32,
                      .ndim = 2,
                      .shape = {1, 16},
                      .data = (const uint8_t *)x,
                      .nbytes = sizeof x};
    reply r;
    invoke(c, 1, "echo", &in, 1, NULL, NULL, 0, &r);
    assert_true(r.rep.head.ok);
    assert_int_equal(r.rep.n_outputs, 1);
    assert_memory_equal(r.rep.outputs[0].data, x, sizeof x);
    assert_true(r.rep.has_st);
    reply_free(&r);

    invoke(c, 2, "mlp", &in, 1, NULL, NULL, 0, &r);
    assert_true(r.rep.head.ok);
    assert_true(r.rep.cold);
    assert_true(r.rep.has_coldstart);
    assert_true(r.rep.timing.load_us > 0);
    assert_int_equal(r.rep.n_outputs, 3);
    float first[10];
    memcpy(first, r.rep.outputs[0].data, sizeof first);
    reply_free(&r);
    invoke(c, 3, "mlp", &in, 1, NULL, NULL, 0, &r);
    assert_true(r.rep.head.ok);
    assert_false(r.rep.cold);
    assert_false(r.rep.has_coldstart);
    assert_memory_equal(r.rep.outputs[0].data, first, sizeof first);
    assert_int_equal(r.rep.st.n_models, 1);
    assert_int_equal(r.rep.st.models[0].state, WIRE_MODEL_READY);
    assert_string_equal(r.rep.st.models[0].fn, "mlp");
    reply_free(&r);

    /* Unknown function; wrong input for mlp: error replies. */
    invoke(c, 4, "nope", &in, 1, NULL, NULL, 0, &r);
    assert_false(r.rep.head.ok);
    assert_int_equal(r.rep.head.code, AICFN_E_NOT_FOUND);
    reply_free(&r);
    wire_tensor bad = {.name = "y",
                       .dtype = AICFN_DTYPE_FP32,
                       .ndim = 1,
                       .shape = {16},
                       .data = (const uint8_t *)x,
                       .nbytes = sizeof x};
    invoke(c, 5, "mlp", &bad, 1, NULL, NULL, 0, &r);
    assert_false(r.rep.head.ok);
    assert_int_equal(r.rep.head.code, AICFN_E_INVALID);
    assert_non_null(strstr(r.rep.head.message, "'x'"));
    reply_free(&r);

    /* Status. */
    wire_writer sw;
    wire_writer_init(&sw);
    assert_int_equal(wire_encode_status_req(&sw, 9, 0, NULL), AICFN_OK);
    rpc_msg *m = NULL;
    assert_int_equal(rpc_call_sync(c, sw.data, sw.len, 5000, &m, &err), AICFN_OK);
    wire_writer_fini(&sw);
    wire_doc d;
    wire_status_reply st;
    assert_int_equal(wire_doc_parse(&d, rpc_msg_data(m), rpc_msg_len(m), NULL, &err), AICFN_OK);
    assert_int_equal(wire_decode_status_reply(&d, &st, &err), AICFN_OK);
    assert_true(st.head.ok);
    assert_string_equal(st.w.worker, "wt");
    assert_true(st.w.is_host);
    assert_int_equal(st.w.summary.budget_bytes, 16u << 20);
    assert_int_equal(st.w.n_queues, 2);
    assert_int_equal(st.w.counters.invocations, 5);
    assert_int_equal(st.w.counters.cold_starts, 1);
    assert_int_equal(st.w.counters.errors, 2);
    wire_doc_fini(&d);
    rpc_msg_free(m);

    stop(w, c, 5000);
}

typedef struct async_rec {
    pthread_mutex_t mu;
    int done;
    int ok;
    uint32_t max_batch_seen;
    int codes[64];
    int order[64]; /* the indices in the order their replies came */
} async_rec;

static async_rec arec;

static void on_done(void *user, int status, rpc_msg *msg, const aicfn_error *err) {
    (void)err;
    intptr_t i = (intptr_t)user;
    int code = status;
    uint32_t batch = 0;
    if (status == AICFN_OK) {
        wire_doc d;
        wire_invoke_reply rep;
        if (wire_doc_parse(&d, rpc_msg_data(msg), rpc_msg_len(msg), NULL, NULL) == AICFN_OK &&
            wire_decode_invoke_reply(&d, &rep, NULL) == AICFN_OK) {
            code = rep.head.ok ? AICFN_OK : rep.head.code;
            batch = rep.batch;
        } else {
            code = AICFN_E_PROTOCOL;
        }
        wire_doc_fini(&d);
        rpc_msg_free(msg);
    }
    pthread_mutex_lock(&arec.mu);
    arec.codes[i] = code;
    if (code == AICFN_OK) arec.ok++;
    if (batch > arec.max_batch_seen) arec.max_batch_seen = batch;
    if (arec.done < 64) arec.order[arec.done] = (int)i;
    arec.done++;
    pthread_mutex_unlock(&arec.mu);
}

/* Sends invoke `id` of fn (one param pk=pv, deadline_ms) asynchronously; on_done records
 * its outcome under index `slot`. */
static void invoke_async(rpc_client *c, uint64_t id, const char *fn, const char *pk, const char *pv,
                         uint32_t deadline_ms, intptr_t slot) {
    size_t len;
    aicfn_error err;
    uint8_t *req = encode_invoke(id, fn, NULL, 0, pk, pv, deadline_ms, &len);
    assert_int_equal(rpc_call_async(c, req, len, 10000, on_done, (void *)slot, &err), AICFN_OK);
    free(req);
}

static int arec_done(void) {
    pthread_mutex_lock(&arec.mu);
    int d = arec.done;
    pthread_mutex_unlock(&arec.mu);
    return d;
}

static void batching_deadlines_and_drain(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-b", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "slow", "test_sleep", NULL, 8, 5000);
    rpc_client *c = serve(w, url);
    memset(&arec, 0, sizeof arec);
    pthread_mutex_init(&arec.mu, NULL);

    /* 24 calls sleeping 100 ms per batch, 2 with a 30 ms deadline that cannot be met
     * behind the first batch: those expire, the rest run in batches of up to 8. */
    for (intptr_t i = 0; i < 24; i++) {
        if (i == 20) usleep(20000); /* the first batch is running now */
        invoke_async(c, 100 + (uint64_t)i, "slow", "sleep_ms", "100", (i == 20 || i == 21) ? 30 : 0, i);
    }
    uint64_t until = clock_now_us() + 3000000;
    while (clock_now_us() < until && arec_done() < 4)
        usleep(2000);
    /* Drain while calls are in flight: they all finish; new ones are refused. */
    reply r;
    uint64_t t0 = clock_now_us();
    unsigned left;
    {
        /* Mark draining, then show a new call is refused, then wait. */
        left = worker_drain(w, 1); /* sets draining; returns at once (1 ms) */
        (void)left;
        invoke(c, 500, "slow", NULL, 0, NULL, NULL, 0, &r);
        assert_false(r.rep.head.ok);
        assert_int_equal(r.rep.head.code, AICFN_E_UNAVAILABLE);
        reply_free(&r);
        left = worker_drain(w, 5000);
    }
    assert_int_equal(left, 0);
    assert_true(clock_now_us() - t0 < 5000000);
    until = clock_now_us() + 3000000;
    while (clock_now_us() < until && arec_done() < 24)
        usleep(2000);
    assert_int_equal(arec_done(), 24);
    assert_int_equal(arec.ok, 22);
    assert_int_equal(arec.codes[20], AICFN_E_TIMEOUT);
    assert_int_equal(arec.codes[21], AICFN_E_TIMEOUT);
    assert_true(arec.max_batch_seen > 1 && arec.max_batch_seen <= 8);
    rpc_client_close(c);
    worker_destroy(w);
    pthread_mutex_destroy(&arec.mu);
}

static void status_of(rpc_client *c, rpc_msg **m, wire_doc *d, wire_status_reply *st);

/* counters.batches of a status now. */
static uint64_t batches_now(rpc_client *c) {
    rpc_msg *m;
    wire_doc d;
    wire_status_reply st;
    status_of(c, &m, &d, &st);
    uint64_t n = st.w.counters.batches;
    wire_doc_fini(&d);
    rpc_msg_free(m);
    return n;
}

static void remove_function_while_serving(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-d", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "slow", "test_sleep", NULL, 1, 0);
    add(w, "mlp", "mlp", snap_path, 4, 0);
    aicfn_error err;
    rpc_client *c = serve(w, url);
    float x[16] = {0};
    wire_tensor in = {.name = "x",
                      .dtype = AICFN_DTYPE_FP32,
                      .ndim = 2,
                      .shape = {1, 16},
                      .data = (const uint8_t *)x,
                      .nbytes = sizeof x};
    reply r;
    invoke(c, 1, "mlp", &in, 1, NULL, NULL, 0, &r);
    assert_true(r.rep.head.ok && r.rep.cold);
    assert_int_equal(r.rep.st.n_models, 1);
    reply_free(&r);

    memset(&arec, 0, sizeof arec);
    pthread_mutex_init(&arec.mu, NULL);
    for (intptr_t i = 0; i < 3; i++) {
        invoke_async(c, 10 + (uint64_t)i, "slow", "sleep_ms", "60", 0, i);
    }
    /* Wait until the worker holds all three, then remove: they all complete first. */
    uint64_t until = clock_now_us() + 3000000;
    for (;;) {
        wire_writer sw;
        wire_writer_init(&sw);
        assert_int_equal(wire_encode_status_req(&sw, 9, 0, NULL), AICFN_OK);
        rpc_msg *m = NULL;
        assert_int_equal(rpc_call_sync(c, sw.data, sw.len, 5000, &m, &err), AICFN_OK);
        wire_writer_fini(&sw);
        wire_doc d;
        wire_status_reply st;
        assert_int_equal(wire_doc_parse(&d, rpc_msg_data(m), rpc_msg_len(m), NULL, &err), AICFN_OK);
        assert_int_equal(wire_decode_status_reply(&d, &st, &err), AICFN_OK);
        uint32_t inflight = 0; /* slow's own */
        for (uint32_t q = 0; q < st.w.n_queues; q++)
            if (strcmp(st.w.queues[q].fn, "slow") == 0) inflight = st.w.queues[q].inflight;
        uint32_t all = st.w.summary.inflight; /* requests only, not mlp's model-wait thread */
        wire_doc_fini(&d);
        rpc_msg_free(m);
        if (inflight == 3 || clock_now_us() > until) {
            assert_int_equal(inflight, 3);
            assert_int_equal(all, 3);
            break;
        }
        usleep(1000);
    }
    assert_int_equal(worker_remove_function(w, "slow", 0, &err), AICFN_OK);
    until = clock_now_us() + 3000000; /* the replies were sent; their callbacks may lag */
    while (clock_now_us() < until && arec_done() < 3)
        usleep(1000);
    assert_int_equal(arec_done(), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(arec.codes[i], AICFN_OK);
    invoke(c, 20, "slow", NULL, 0, NULL, NULL, 0, &r);
    assert_false(r.rep.head.ok);
    assert_int_equal(r.rep.head.code, AICFN_E_NOT_FOUND);
    reply_free(&r);
    assert_int_equal(worker_remove_function(w, "slow", 0, &err), AICFN_E_NOT_FOUND);
    uint64_t batches = batches_now(c); /* mlp's and slow's: counted since start */
    assert_int_equal(batches, 4);

    /* Removing the model's only function evicts the model. */
    assert_int_equal(worker_remove_function(w, "mlp", 0, &err), AICFN_OK);
    add(w, "echo", "echo", NULL, 1, 0);
    invoke(c, 21, "echo", &in, 1, NULL, NULL, 0, &r);
    assert_true(r.rep.head.ok);
    assert_int_equal(r.rep.st.n_models, 0);
    reply_free(&r);
    assert_int_equal(batches_now(c), batches + 1); /* removed functions' batches still count */
    stop(w, c, 5000);
    pthread_mutex_destroy(&arec.mu);
}

static void bad_config(void **state) {
    (void)state;
    worker *w = NULL;
    aicfn_error err;
    worker_config cfg = {.listen = "http://127.0.0.1:1", .device = "host"};
    assert_int_equal(worker_create(&cfg, &w, &err), AICFN_E_INVALID);
    cfg.listen = NULL;
    assert_int_equal(worker_create(&cfg, &w, &err), AICFN_E_INVALID);
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-c", (int)getpid());
    w = start(url, 1u << 20);
    worker_fn_config f = {.name = "m", .handler = hpath("mlp"), .snapshot = "/nonexistent.aicsnap"};
    assert_int_equal(worker_add_function(w, &f, &err), AICFN_E_NOT_FOUND);
    f = (worker_fn_config){.name = "", .handler = hpath("echo")};
    assert_int_equal(worker_add_function(w, &f, &err), AICFN_E_INVALID);
    f = (worker_fn_config){.name = "e", .handler = hpath("echo"), .max_batch = 100000};
    assert_int_equal(worker_add_function(w, &f, &err), AICFN_E_INVALID);
    /* A timeout past the registry's limit (a drain's wait is sized by it). */
    f = (worker_fn_config){.name = "e", .handler = hpath("echo"), .timeout_us = 4294967295ull * 1000};
    assert_int_equal(worker_add_function(w, &f, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "timeout"));
    f = (worker_fn_config){.name = "e", .handler = hpath("test_no_invoke")};
    assert_int_equal(worker_add_function(w, &f, &err), AICFN_E_ABI);
    worker_destroy(w); /* never started: fine */
    worker_destroy(NULL);
}

/* A bundle (t:"bundle", docs/protocol.md §9): each part is answered as if it came alone,
 * in the bundle's order, in one reply: echo inline, mlp through its batcher (a cold
 * load on the executor thread), and parts that are refused on their own (unknown
 * function, not msgpack, a status or a bundle inside a bundle). An empty bundle is
 * refused as a whole. */
static uint8_t *encode_bundle(uint64_t id, const wire_part *parts, uint32_t n, size_t *len) {
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_bundle_req(&w, id, parts, n, NULL), AICFN_OK);
    uint8_t *out = wire_writer_take(&w, len);
    wire_writer_fini(&w);
    return out;
}

/* An empty input whose place in the message is misaligned for its dtype (FP64 [0] after
 * names of 1..8 bytes: one of them lands off 8 bytes) is answered: the worker copied 0
 * bytes to a NULL buffer before, undefined behaviour that UBSan stops the worker on. */
static void empty_misaligned_input_is_answered(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-empty", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "echo", "echo", NULL, 1, 0);
    rpc_client *c = serve(w, url);
    static const char *names[] = {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"};
    for (uint64_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        wire_tensor in = {
            .name = names[k], .dtype = AICFN_DTYPE_FP64, .ndim = 1, .shape = {0}, .data = NULL, .nbytes = 0};
        reply r;
        invoke(c, 200 + k, "echo", &in, 1, NULL, NULL, 0, &r);
        assert_true(r.rep.head.ok);
        assert_int_equal(r.rep.n_outputs, 1);
        assert_int_equal(r.rep.outputs[0].nbytes, 0);
        reply_free(&r);
    }
    stop(w, c, 5000);
}

/* A bundle's parts share one message's object budget (AICFN_MAX_MESSAGE_OBJECTS): three
 * parts of 400k objects each (ignored keys, whose unpack zones live as long as their
 * calls) are two accepted and one refused. Before, each part had a budget of its own, so
 * one 64 MiB bundle could hold 64 messages' worth of zones. */
static void bundle_parts_share_one_object_budget(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-objects", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "echo", "echo", NULL, 1, 0);
    aicfn_error err;
    rpc_client *c = serve(w, url);
    enum { PARTS = 3, JUNK = 400000 };
    wire_part parts[PARTS];
    uint8_t *bufs[PARTS];
    static const uint8_t one[4] = {1, 2, 3, 4};
    for (int i = 0; i < PARTS; i++) {
        /* An echo invoke, its map (a fixmap) given one more key: "junk". */
        wire_tensor in = {
            .name = "x", .dtype = AICFN_DTYPE_UINT8, .ndim = 1, .shape = {4}, .data = one, .nbytes = 4};
        size_t ilen = 0;
        uint8_t *inv = encode_invoke(300 + (uint64_t)i, "echo", &in, 1, NULL, NULL, 0, &ilen);
        assert_true((inv[0] & 0xf0) == 0x80 && (inv[0] & 0x0f) < 15);
        wire_writer pw;
        wire_writer_init(&pw);
        wire_put_map(&pw, (uint32_t)(inv[0] & 0x0f) + 1);
        wire_put_raw(&pw, inv + 1, ilen - 1);
        free(inv);
        wire_put_str(&pw, "junk");
        wire_put_array(&pw, JUNK);
        for (int k = 0; k < JUNK; k++)
            wire_put_u64(&pw, 0);
        size_t n = 0;
        bufs[i] = wire_writer_take(&pw, &n);
        wire_writer_fini(&pw);
        assert_non_null(bufs[i]);
        parts[i] = (wire_part){bufs[i], n};
    }
    size_t blen;
    uint8_t *b = encode_bundle(98, parts, PARTS, &blen);
    for (int i = 0; i < PARTS; i++)
        free(bufs[i]);
    rpc_msg *msg = NULL;
    assert_int_equal(rpc_call_sync(c, b, blen, 20000, &msg, &err), AICFN_OK);
    free(b);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, rpc_msg_data(msg), rpc_msg_len(msg), NULL, &err), AICFN_OK);
    wire_part out[PARTS];
    uint32_t n = 0;
    assert_int_equal(wire_decode_bundle(&doc, "replies", out, PARTS, &n, &err), AICFN_OK);
    assert_int_equal(n, PARTS);
    for (uint32_t i = 0; i < n; i++) {
        wire_doc pd;
        wire_invoke_reply rep;
        assert_int_equal(wire_doc_parse(&pd, out[i].data, out[i].len, NULL, &err), AICFN_OK);
        assert_int_equal(wire_decode_invoke_reply(&pd, &rep, &err), AICFN_OK);
        if (i < 2) {
            if (!rep.head.ok) fail_msg("part %u: %s", i, rep.head.message);
        } else {
            assert_int_equal(rep.head.code, AICFN_E_PROTOCOL);
            assert_non_null(strstr(rep.head.message, "object"));
        }
        wire_doc_fini(&pd);
    }
    wire_doc_fini(&doc);
    rpc_msg_free(msg);
    stop(w, c, 5000);
}

static void bundle_parts_answered_in_order(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-bundle", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "echo", "echo", NULL, 1, 0);
    add(w, "mlp", "mlp", snap_path, 8, 1000);
    aicfn_error err;
    rpc_client *c = serve(w, url);

    float x[2][16];
    wire_tensor in[2];
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 16; i++)
            x[k][i] = (float)(i + 100 * k) / 10.0f;
        in[k] = (wire_tensor){.name = "x",
                              .dtype = AICFN_DTYPE_FP32,
                              .ndim = 2,
                              .shape = {1, 16},
                              .data = (const uint8_t *)x[k],
                              .nbytes = sizeof x[k]};
    }
    size_t l[7];
    uint8_t *m[7];
    m[0] = encode_invoke(10, "echo", &in[0], 1, NULL, NULL, 0, &l[0]);
    m[1] = encode_invoke(11, "mlp", &in[0], 1, NULL, NULL, 0, &l[1]);
    m[2] = encode_invoke(12, "nope", &in[0], 1, NULL, NULL, 0, &l[2]);
    static uint8_t junk[] = {0xc1};
    m[3] = junk;
    l[3] = sizeof junk;
    wire_writer sw;
    wire_writer_init(&sw);
    assert_int_equal(wire_encode_status_req(&sw, 13, 0, NULL), AICFN_OK);
    m[4] = wire_writer_take(&sw, &l[4]);
    wire_part inner = {m[0], l[0]};
    m[5] = encode_bundle(14, &inner, 1, &l[5]);
    m[6] = encode_invoke(15, "echo", &in[1], 1, NULL, NULL, 0, &l[6]);
    wire_part parts[7];
    for (int i = 0; i < 7; i++)
        parts[i] = (wire_part){m[i], l[i]};
    size_t blen;
    uint8_t *b = encode_bundle(10, parts, 7, &blen);
    rpc_msg *msg = NULL;
    assert_int_equal(rpc_call_sync(c, b, blen, 10000, &msg, &err), AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, rpc_msg_data(msg), rpc_msg_len(msg), NULL, &err), AICFN_OK);
    wire_reply_head h;
    assert_int_equal(wire_decode_reply_head(&doc, &h, &err), AICFN_OK);
    assert_true(h.ok);
    assert_int_equal(h.id, 10);
    wire_part out[8];
    uint32_t n = 0;
    assert_int_equal(wire_decode_bundle(&doc, "replies", out, 8, &n, &err), AICFN_OK);
    assert_int_equal(n, 7);
    static const uint64_t ids[7] = {10, 11, 12, 0, 13, 14, 15};
    static const int codes[7] = {AICFN_OK,         AICFN_OK,         AICFN_E_NOT_FOUND, AICFN_E_PROTOCOL,
                                 AICFN_E_PROTOCOL, AICFN_E_PROTOCOL, AICFN_OK};
    for (uint32_t i = 0; i < n; i++) {
        wire_doc pd;
        wire_invoke_reply rep;
        assert_int_equal(wire_doc_parse(&pd, out[i].data, out[i].len, NULL, &err), AICFN_OK);
        assert_int_equal(wire_decode_invoke_reply(&pd, &rep, &err), AICFN_OK);
        assert_int_equal(rep.head.id, ids[i]);
        assert_int_equal(rep.head.code, codes[i]);
        if (i == 0 || i == 6) {
            assert_int_equal(rep.n_outputs, 1);
            assert_memory_equal(rep.outputs[0].data, x[i == 6], sizeof x[0]);
        }
        if (i == 1) {
            assert_true(rep.cold);
            assert_int_equal(rep.n_outputs, 3);
        }
        if (i == 4) assert_non_null(strstr(rep.head.message, "invoke messages only"));
        wire_doc_fini(&pd);
    }
    wire_doc_fini(&doc);
    rpc_msg_free(msg);
    free(b);

    /* An empty bundle: refused as a whole, naming the key. */
    wire_writer ew;
    wire_writer_init(&ew);
    wire_put_map(&ew, 4);
    wire_kv_u64(&ew, "v", 1);
    wire_kv_str(&ew, "t", WIRE_T_BUNDLE);
    wire_kv_u64(&ew, "id", 20);
    wire_put_str(&ew, "calls");
    wire_put_array(&ew, 0);
    assert_int_equal(rpc_call_sync(c, ew.data, ew.len, 10000, &msg, &err), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, rpc_msg_data(msg), rpc_msg_len(msg), NULL, &err), AICFN_OK);
    assert_int_equal(wire_decode_reply_head(&doc, &h, &err), AICFN_OK);
    assert_false(h.ok);
    assert_int_equal(h.code, AICFN_E_PROTOCOL);
    assert_non_null(strstr(h.message, "calls"));
    wire_doc_fini(&doc);
    rpc_msg_free(msg);
    wire_writer_fini(&ew);

    for (int i = 0; i < 7; i++)
        if (i != 3) free(m[i]);
    wire_writer_fini(&sw);
    rpc_client_close(c);
    worker_destroy(w);
}

/* Checks a bundle reply of np parts answering calls base, base+1, ...: each echoes x,
 * except part `overran` (-1: none), answered AICFN_E_TIMEOUT as an overrun. */
static void check_bundle_reply(rpc_msg *msg, uint32_t np, uint64_t base, int overran, const float *x,
                               size_t x_bytes) {
    aicfn_error err;
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, rpc_msg_data(msg), rpc_msg_len(msg), NULL, &err), AICFN_OK);
    wire_part out[4];
    uint32_t n = 0;
    assert_int_equal(wire_decode_bundle(&doc, "replies", out, 4, &n, &err), AICFN_OK);
    assert_int_equal(n, np);
    for (uint32_t i = 0; i < n; i++) {
        wire_doc pd;
        wire_invoke_reply rep;
        assert_int_equal(wire_doc_parse(&pd, out[i].data, out[i].len, NULL, &err), AICFN_OK);
        assert_int_equal(wire_decode_invoke_reply(&pd, &rep, &err), AICFN_OK);
        assert_int_equal(rep.head.id, base + i);
        if ((int)i == overran) {
            assert_false(rep.head.ok);
            assert_int_equal(rep.head.code, AICFN_E_TIMEOUT);
            assert_true(rep.head.overran);
        } else {
            if (!rep.head.ok) fail_msg("part %u: %s", i, rep.head.message);
            assert_false(rep.head.overran);
            assert_memory_equal(rep.outputs[0].data, x, x_bytes);
        }
        wire_doc_fini(&pd);
    }
    wire_doc_fini(&doc);
}

/* One bundle reply for all its parts: a part still running past its function's timeout
 * + the overrun grace (1 s here; the gateway's call grace by default) is answered as an
 * overrun (AICFN_E_TIMEOUT, overran) so that the others' replies leave without it,
 * wherever it stands in the bundle (its function has no history of quick calls: it runs
 * on its executor). A caller's shorter deadline_ms does not count: a part that started
 * in time is answered when it ends, within its function's timeout (an overrun would
 * have the gateway kill a healthy worker). */
static void bundle_part_overrunning_its_deadline_is_answered_alone(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-overrun", (int)getpid());
    worker_config cfg = {
        .listen = url, .device = "host", .memory_bytes = 16u << 20, .id = "wt", .overrun_grace_ms = 1000};
    worker *w = NULL;
    aicfn_error err;
    assert_int_equal(worker_create(&cfg, &w, &err), AICFN_OK);
    add(w, "echo", "echo", NULL, 1, 0);
    add_timed(w, "hang1", "test_sleep", 200000);
    add_timed(w, "hang2", "test_sleep", 200000);
    add(w, "patient", "test_sleep", NULL, 1, 0); /* the default timeout */
    rpc_client *c = serve(w, url);
    float x[4] = {1, 2, 3, 4};
    wire_tensor in = fp32_x(x, 4);
    for (int last = 0; last < 2; last++) {
        /* [echo, hang, echo] and then [echo, hang]: the hang sleeps 3 s, its function
         * allows 200 ms (and so does its caller's deadline_ms). */
        const char *hang = last ? "hang2" : "hang1";
        size_t l[3];
        uint8_t *m[3];
        uint64_t base = 100 + 10 * (uint64_t)last;
        m[0] = encode_invoke(base, "echo", &in, 1, NULL, NULL, 0, &l[0]);
        m[1] = encode_invoke(base + 1, hang, &in, 1, "sleep_ms", "3000", 200, &l[1]);
        m[2] = encode_invoke(base + 2, "echo", &in, 1, NULL, NULL, 0, &l[2]);
        uint32_t np = last ? 2 : 3;
        wire_part parts[3];
        for (uint32_t i = 0; i < np; i++)
            parts[i] = (wire_part){m[i], l[i]};
        size_t blen;
        uint8_t *b = encode_bundle(base, parts, np, &blen);
        uint64_t t0 = clock_now_us();
        rpc_msg *msg = NULL;
        assert_int_equal(rpc_call_sync(c, b, blen, 10000, &msg, &err), AICFN_OK);
        uint64_t took_us = clock_now_us() - t0;
        if (took_us >= 2500000)
            fail_msg("bundle %d waited for its hung part: %llu us", last, (unsigned long long)took_us);
        check_bundle_reply(msg, np, base, 1, x, sizeof x);
        rpc_msg_free(msg);
        free(b);
        for (int i = 0; i < 3; i++)
            free(m[i]);
    }

    /* [echo, patient]: the caller allows 200 ms, the function 30 s; the part sleeps 1.5 s
     * and its real reply comes (the bundle waits for it), not an overrun at 1.2 s. */
    size_t l[2];
    uint8_t *m[2];
    m[0] = encode_invoke(200, "echo", &in, 1, NULL, NULL, 0, &l[0]);
    m[1] = encode_invoke(201, "patient", &in, 1, "sleep_ms", "1500", 200, &l[1]);
    wire_part parts[2] = {{m[0], l[0]}, {m[1], l[1]}};
    size_t blen;
    uint8_t *b = encode_bundle(200, parts, 2, &blen);
    uint64_t t0 = clock_now_us();
    rpc_msg *msg = NULL;
    assert_int_equal(rpc_call_sync(c, b, blen, 10000, &msg, &err), AICFN_OK);
    assert_true(clock_now_us() - t0 >= 1400000);
    check_bundle_reply(msg, 2, 200, -1, x, sizeof x);
    rpc_msg_free(msg);
    free(b);
    free(m[0]);
    free(m[1]);
    stop(w, c, 10000); /* the hung parts end, their late replies dropped */
}

/* A bundle whose first two replies fill its message but for a few bytes, and 62 small
 * calls after them: every slot is still answered, in a reply the gateway can receive
 * (the second reply gives way to AICFN_E_TOO_LARGE, keeping room for the rest). Before,
 * each small reply that no longer fitted became a larger error reply added without a
 * check, the bundle reply outgrew the message limit, and no call was answered. */
static void bundle_reply_never_outgrows_the_message(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-bigbundle", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "echo", "echo", NULL, 1, 0);
    aicfn_error err;
    rpc_client *c = serve(w, url);

    /* What an echo reply adds to its input's bytes. */
    static uint8_t probe[1000];
    wire_tensor in = {.name = "x",
                      .dtype = AICFN_DTYPE_UINT8,
                      .ndim = 1,
                      .shape = {sizeof probe},
                      .data = probe,
                      .nbytes = sizeof probe};
    reply r;
    invoke(c, 1, "echo", &in, 1, NULL, NULL, 0, &r);
    assert_true(r.rep.head.ok);
    size_t overhead = rpc_msg_len(r.msg) - sizeof probe;
    reply_free(&r);

    /* Slot 0: the largest output a call may have (less a margin); slot 1: what leaves
     * ~100 bytes of the bundle's room (AICFN_MAX_MESSAGE_BYTES - 4096); slots 2..63: no
     * inputs, replies of ~130 bytes that no longer fit. */
    size_t room = AICFN_MAX_MESSAGE_BYTES - 4096 - 64;
    size_t n0 = AICFN_MAX_MESSAGE_BYTES - 65536 - 4096;
    size_t len0 = n0 + overhead + 2; /* a bin32 header is 2 bytes longer than the probe's */
    size_t n1 = room - (len0 + 8) - 8 - 100 - overhead;
    uint8_t *data = calloc(n0, 1);
    assert_non_null(data);
    enum { N = AICFN_BUNDLE_MAX_CALLS };
    wire_part parts[N];
    size_t lens[N];
    uint8_t *msgs[N];
    in.shape[0] = (int64_t)n0;
    in.data = data;
    in.nbytes = n0;
    msgs[0] = encode_invoke(100, "echo", &in, 1, NULL, NULL, 0, &lens[0]);
    in.shape[0] = (int64_t)n1;
    in.nbytes = n1;
    msgs[1] = encode_invoke(101, "echo", &in, 1, NULL, NULL, 0, &lens[1]);
    for (int i = 2; i < N; i++)
        msgs[i] = encode_invoke(100 + (uint64_t)i, "echo", NULL, 0, NULL, NULL, 0, &lens[i]);
    for (int i = 0; i < N; i++)
        parts[i] = (wire_part){msgs[i], lens[i]};
    size_t blen;
    uint8_t *b = encode_bundle(99, parts, N, &blen);
    assert_true(blen <= AICFN_MAX_MESSAGE_BYTES);
    for (int i = 0; i < N; i++)
        free(msgs[i]);
    free(data);
    rpc_msg *msg = NULL;
    assert_int_equal(rpc_call_sync(c, b, blen, 20000, &msg, &err), AICFN_OK);
    free(b);
    assert_true(rpc_msg_len(msg) <= AICFN_MAX_MESSAGE_BYTES);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, rpc_msg_data(msg), rpc_msg_len(msg), NULL, &err), AICFN_OK);
    wire_part out[N];
    uint32_t n = 0;
    assert_int_equal(wire_decode_bundle(&doc, "replies", out, N, &n, &err), AICFN_OK);
    assert_int_equal(n, N);
    for (uint32_t i = 0; i < n; i++) {
        wire_doc pd;
        wire_invoke_reply rep;
        assert_int_equal(wire_doc_parse(&pd, out[i].data, out[i].len, NULL, &err), AICFN_OK);
        assert_int_equal(wire_decode_invoke_reply(&pd, &rep, &err), AICFN_OK);
        assert_int_equal(rep.head.id, 100 + i);
        assert_int_equal(rep.head.code, i == 1 ? AICFN_E_TOO_LARGE : AICFN_OK);
        if (i == 0) assert_int_equal(rep.outputs[0].nbytes, n0);
        wire_doc_fini(&pd);
    }
    wire_doc_fini(&doc);
    rpc_msg_free(msg);
    stop(w, c, 5000);
}

/* A batch waiting for its model (here: for room, the budget held by a pinned model)
 * answers each request at its own deadline, not all of them when the model is in: a
 * request late past the gateway's grace gets its worker killed, and the load with it.
 * The model then loads for the patient request. */
static void batch_waiting_for_its_model_answers_each_deadline(void **state) {
    (void)state;
    char snap_b[PATH_MAX + 32], counts[PATH_MAX + 32], cmd[3 * PATH_MAX];
    snprintf(snap_b, sizeof snap_b, "%s/mlp-b.aicsnap", tmp_dir);
    snprintf(counts, sizeof counts, "%s/hold.count", tmp_dir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", snap_path, snap_b);
    assert_int_equal(system(cmd), 0);
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-wait", (int)getpid());
    worker *w = start(url, 12u << 10); /* room for one of the two models */
    worker_fn_config hold = {.name = "hold",
                             .handler = hpath("test_sleep"),
                             .snapshot = snap_path,
                             .model_key = "A",
                             .max_batch = 1};
    worker_fn_config late = {.name = "late",
                             .handler = hpath("test_sleep"),
                             .snapshot = snap_b,
                             .model_key = "B",
                             .max_batch = 4,
                             .max_delay_us = 50000};
    aicfn_error err;
    assert_int_equal(worker_add_function(w, &hold, &err), AICFN_OK);
    assert_int_equal(worker_add_function(w, &late, &err), AICFN_OK);
    rpc_client *c = serve(w, url);
    memset(&arec, 0, sizeof arec);
    pthread_mutex_init(&arec.mu, NULL);

    /* 0: pins model A for 1.5 s; once it runs (its count line), 1 and 2 ask for B, which
     * has no room until then, in one batch: 1 may wait 300 ms (and is answered
     * AICFN_E_CAPACITY then, its model still without room), 2 ten seconds. */
    setenv("AICFN_TEST_COUNT_FILE", counts, 1); /* the handler appends before it sleeps */
    invoke_async(c, 1, "hold", "sleep_ms", "1500", 0, 0);
    uint64_t until = clock_now_us() + 5000000;
    while (access(counts, F_OK) != 0 && clock_now_us() < until)
        usleep(2000);
    assert_int_equal(access(counts, F_OK), 0);
    unsetenv("AICFN_TEST_COUNT_FILE");
    invoke_async(c, 2, "late", NULL, NULL, 300, 1);
    invoke_async(c, 3, "late", NULL, NULL, 10000, 2);
    until = clock_now_us() + 8000000;
    while (clock_now_us() < until && arec_done() < 3)
        usleep(2000);
    assert_int_equal(arec_done(), 3);
    assert_int_equal(arec.codes[1], AICFN_E_CAPACITY); /* B never found room: design.md §6 */
    assert_int_equal(arec.order[0], 1); /* answered while A was still pinned */
    assert_int_equal(arec.codes[0], AICFN_OK);
    assert_int_equal(arec.codes[2], AICFN_OK);
    stop(w, c, 5000);
    pthread_mutex_destroy(&arec.mu);
}

/* A handler's init runs on its own thread: a call whose deadline passes during it is
 * answered then (not when init ends), and the instance it makes is adopted by the next
 * batch, ended (fini) first when its model was evicted and loaded again meanwhile, or
 * ended by the function's removal, which waits for the init. */
static void init_outlasting_its_calls_is_adopted_or_ended(void **state) {
    (void)state;
    char snap_b[PATH_MAX + 32], fini[PATH_MAX + 32], cmd[3 * PATH_MAX];
    snprintf(snap_b, sizeof snap_b, "%s/mlp-init-b.aicsnap", tmp_dir);
    snprintf(fini, sizeof fini, "%s/init.fini", tmp_dir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", snap_path, snap_b);
    assert_int_equal(system(cmd), 0);
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-init", (int)getpid());
    worker *w = start(url, 12u << 10); /* room for one of the two models */
    aicfn_param ps[] = {{"init_sleep_ms", "600"}, {"fini_file", fini}};
    worker_fn_config slow = {.name = "slow",
                             .handler = hpath("test_sleep"),
                             .snapshot = snap_path,
                             .model_key = "A",
                             .max_batch = 1,
                             .n_params = 2,
                             .params = ps};
    worker_fn_config other = {.name = "other",
                              .handler = hpath("test_sleep"),
                              .snapshot = snap_b,
                              .model_key = "B",
                              .max_batch = 1};
    aicfn_error err;
    assert_int_equal(worker_add_function(w, &slow, &err), AICFN_OK);
    assert_int_equal(worker_add_function(w, &other, &err), AICFN_OK);
    rpc_client *c = serve(w, url);
    reply r;

    /* Answered at its 150 ms deadline while the 600 ms init runs on. */
    uint64_t t0 = clock_now_us();
    invoke(c, 1, "slow", NULL, 0, NULL, NULL, 150, &r);
    assert_false(r.rep.head.ok);
    assert_int_equal(r.rep.head.code, AICFN_E_TIMEOUT);
    assert_non_null(strstr(r.rep.head.message, "init"));
    assert_true(clock_now_us() - t0 < 450000);
    reply_free(&r);

    /* Once it ended, B takes A's room (the init's pin is gone); A comes back, and the
     * instance made for its earlier residency is ended before the new init. */
    usleep(700000);
    invoke(c, 2, "other", NULL, 0, NULL, NULL, 5000, &r);
    assert_true(r.rep.head.ok);
    reply_free(&r);
    assert_int_equal(access(fini, F_OK), -1);
    invoke(c, 3, "slow", NULL, 0, NULL, NULL, 5000, &r);
    assert_true(r.rep.head.ok);
    reply_free(&r);
    assert_int_equal(access(fini, F_OK), 0);

    /* Removed while an init runs for no call: the removal waits for it and ends what it
     * made (ASan sees nothing leak). */
    invoke(c, 4, "other", NULL, 0, NULL, NULL, 5000, &r);
    assert_true(r.rep.head.ok);
    reply_free(&r);
    invoke(c, 5, "slow", NULL, 0, NULL, NULL, 150, &r);
    assert_int_equal(r.rep.head.code, AICFN_E_TIMEOUT);
    reply_free(&r);
    assert_int_equal(unlink(fini), 0); /* the previous instance's fini, before this init */
    assert_int_equal(worker_remove_function(w, "slow", 0, &err), AICFN_OK);
    assert_int_equal(access(fini, F_OK), 0);
    stop(w, c, 5000);
}

/* The status answer of worker client c, decoded into *st; *m holds the bytes the
 * document d points into (the caller finishes d, then frees *m). */
static void status_acking(rpc_client *c, uint64_t ack, rpc_msg **m, wire_doc *d, wire_status_reply *st) {
    wire_writer sw;
    wire_writer_init(&sw);
    aicfn_error err;
    assert_int_equal(wire_encode_status_req(&sw, 9, ack, NULL), AICFN_OK);
    *m = NULL;
    assert_int_equal(rpc_call_sync(c, sw.data, sw.len, 5000, m, &err), AICFN_OK);
    wire_writer_fini(&sw);
    assert_int_equal(wire_doc_parse(d, rpc_msg_data(*m), rpc_msg_len(*m), NULL, &err), AICFN_OK);
    assert_int_equal(wire_decode_status_reply(d, st, &err), AICFN_OK);
    assert_true(st->head.ok);
}

/* The same, acknowledging no load. */
static void status_of(rpc_client *c, rpc_msg **m, wire_doc *d, wire_status_reply *st) {
    status_acking(c, 0, m, d, st);
}

/* worker_drain on a thread of its own, timed. */
typedef struct drainer {
    worker *w;
    unsigned left;
    uint64_t started_us, returned_us;
    atomic_bool done;
} drainer;

static void *drainer_main(void *arg) {
    drainer *d = arg;
    d->started_us = clock_now_us();
    d->left = worker_drain(d->w, 10000);
    d->returned_us = clock_now_us();
    atomic_store(&d->done, true);
    return NULL;
}

/* A load whose only call gave up (its deadline passed while the model loaded) still
 * becomes resident, and no invocation reply carries its record: the next status reply
 * lists it once (w.loads), so that the gateway records the cold start. The model is 256
 * MiB of random bytes (130 ms or more to load in this ASan build: 34 to 110 ms were seen
 * for 64 MiB); the call may wait 20 ms. */
/* Packs `bytes` incompressible bytes (zstd stores them, a load copies them all) as one
 * UINT8 tensor into snapshot tmp_dir/<name>.aicsnap (written to snap). */
static void pack_random(const char *name, size_t bytes, char *snap, size_t cap) {
    char st_path[PATH_MAX + 64];
    snprintf(st_path, sizeof st_path, "%s/%s.safetensors", tmp_dir, name);
    snprintf(snap, cap, "%s/%s.aicsnap", tmp_dir, name);
    unsigned char *data = malloc(bytes);
    assert_non_null(data);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(data + i, &x, 8);
    }
    int64_t shape[1] = {(int64_t)bytes};
    snap_st_out_tensor t = {"w", AICFN_DTYPE_UINT8, 1, shape, data, bytes};
    aicfn_error err;
    assert_int_equal(snap_st_write(st_path, &t, 1, &err), AICFN_OK);
    free(data);
    const char *in[1] = {st_path};
    snap_pack_opts o = {
        .level = 1, .chunk = AICFN_SNAP_DEFAULT_CHUNK, .filter = SNAP_FILTER_MODE_AUTO, .threads = 2};
    if (snap_pack(in, 1, snap, &o, NULL, &err) != AICFN_OK) fail_msg("snap_pack: %s", err.msg);
    unlink(st_path);
}

static void abandoned_load_is_reported_in_the_next_status(void **state) {
    (void)state;
    enum { BIG = 256 << 20 };
    char snap[PATH_MAX + 64];
    pack_random("big", BIG, snap, sizeof snap);
    aicfn_error err;

    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-abandon", (int)getpid());
    worker *w = start(url, 2u * BIG);
    worker_fn_config big = {.name = "big",
                            .version = 7,
                            .handler = hpath("test_sleep"),
                            .snapshot = snap,
                            .model_key = "BIG",
                            .max_batch = 1};
    assert_int_equal(worker_add_function(w, &big, &err), AICFN_OK);
    rpc_client *c = serve(w, url);
    memset(&arec, 0, sizeof arec);
    pthread_mutex_init(&arec.mu, NULL);
    invoke_async(c, 1, "big", NULL, NULL, 20, 0);
    uint64_t until = clock_now_us() + 8000000;
    while (clock_now_us() < until && arec_done() < 1)
        usleep(2000);
    assert_int_equal(arec_done(), 1);
    assert_int_equal(arec.codes[0], AICFN_E_TIMEOUT);
    /* The load goes on (256 MiB), its call answered: no request is in flight. */
    rpc_msg *m0;
    wire_doc d0;
    wire_status_reply s0;
    status_of(c, &m0, &d0, &s0);
    assert_int_equal(s0.w.summary.inflight, 0);
    assert_int_equal(s0.w.n_loads, 0); /* still loading when asked (else this shows nothing) */
    wire_doc_fini(&d0);
    rpc_msg_free(m0);

    /* The model loads all the same; its record waits for a status. A drain started now
     * waits for the load, then for the record to be acknowledged, so that it does not
     * leave with the process: it is still waiting at every status asked until one
     * acknowledges the record, and returns soon after. */
    drainer dr = {.w = w};
    pthread_t dt;
    assert_int_equal(pthread_create(&dt, NULL, drainer_main, &dr), 0);
    rpc_msg *m;
    wire_doc d;
    wire_status_reply st;
    uint32_t n_loads = 0;
    bool drained_early = false;
    until = clock_now_us() + 10000000;
    for (;;) {
        drained_early |= atomic_load(&dr.done);
        status_of(c, &m, &d, &st);
        n_loads = st.w.n_loads;
        if (n_loads || clock_now_us() >= until) break;
        wire_doc_fini(&d);
        rpc_msg_free(m);
        usleep(50000);
    }
    assert_int_equal(n_loads, 1);
    uint64_t seq = st.w.loads[0].seq;
    assert_true(seq > 0);
    /* Listed again (a reply may be lost on the way) until acknowledged. */
    rpc_msg *m2;
    wire_doc d2;
    wire_status_reply st2;
    status_of(c, &m2, &d2, &st2);
    assert_int_equal(st2.w.n_loads, 1);
    assert_int_equal(st2.w.loads[0].seq, seq);
    wire_doc_fini(&d2);
    rpc_msg_free(m2);
    drained_early |= atomic_load(&dr.done);
    status_acking(c, seq, &m2, &d2, &st2);
    assert_int_equal(st2.w.n_loads, 0); /* acknowledged: gone */
    wire_doc_fini(&d2);
    rpc_msg_free(m2);
    uint64_t reported_us = clock_now_us();
    pthread_join(dt, NULL);
    assert_false(drained_early);
    assert_int_equal(dr.left, 0);
    assert_true(dr.returned_us < reported_us + (uint64_t)AICFN_WORKER_POLL_MS * 1000); /* released by it */
    assert_string_equal(st.w.loads[0].fn, "big");
    assert_int_equal(st.w.loads[0].ver, 7);
    assert_true(st.w.loads[0].timing.load_us >= 20000); /* longer than the call waited */
    assert_int_equal(st.w.loads[0].timing.total_us, st.w.loads[0].timing.load_us);
    /* Whom the gateway bills it to: the batch that made it, one call, which carried no
     * gateway id here (test_gateway.py bills one that did); the load's device time. */
    assert_int_equal(st.w.loads[0].makers, 1);
    assert_int_equal(st.w.loads[0].n_calls, 0);
    assert_true(st.w.loads[0].timing.cold_share_us > 0);
    assert_true(st.w.loads[0].timing.cold_share_us <= st.w.loads[0].timing.load_us);
    /* at least the decompression's wall time (its phase is summed over the load threads) */
    assert_true(st.w.loads[0].timing.cold_share_us * loader_default_threads() >=
                st.w.loads[0].timing.decompress_us);
    assert_int_equal(st.w.loads[0].coldstart.raw_bytes, BIG);
    assert_true(st.w.loads[0].coldstart.compressed_bytes >= BIG);
    assert_int_equal(st.w.loads[0].coldstart.n_evicted, 0);
    assert_int_equal(st.w.counters.cold_starts, 1);
    assert_int_equal(st.w.summary.n_models, 1); /* resident, for the next call */
    wire_doc_fini(&d);
    rpc_msg_free(m);
    stop(w, c, 5000);
    pthread_mutex_destroy(&arec.mu);
    unlink(snap);
}

/* The ack mode is per status request: to a peer whose requests carry no `ack` (an older
 * gateway, or one after a gateway that acknowledged), a load is listed in the next reply
 * only, even after requests with `ack` kept it listed. */
static void loads_are_listed_once_to_a_peer_without_acks(void **state) {
    (void)state;
    enum { SIZE = 256 << 20 }; /* as the abandoned-load test: a load far longer than 20 ms */
    char snap[PATH_MAX + 64];
    pack_random("mid", SIZE, snap, sizeof snap);
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-noack", (int)getpid());
    worker *w = start(url, 2u * SIZE);
    worker_fn_config mid = {
        .name = "mid", .version = 2, .handler = hpath("test_sleep"), .snapshot = snap, .model_key = "MID"};
    aicfn_error err;
    assert_int_equal(worker_add_function(w, &mid, &err), AICFN_OK);
    rpc_client *c = serve(w, url);
    reply r;
    /* 20 ms: long enough to reach the executor and start the load, far shorter than it. */
    invoke(c, 1, "mid", NULL, 0, NULL, NULL, 20, &r);
    assert_int_equal(r.rep.head.code, AICFN_E_TIMEOUT);
    reply_free(&r);
    rpc_msg *m;
    wire_doc d;
    wire_status_reply st;
    uint32_t listed = 0;
    for (uint64_t until = clock_now_us() + 10000000; !listed && clock_now_us() < until;) {
        status_of(c, &m, &d, &st); /* with ack 0: acknowledges nothing */
        listed = st.w.n_loads;
        wire_doc_fini(&d);
        rpc_msg_free(m);
        if (!listed) usleep(20000);
    }
    assert_int_equal(listed, 1);
    status_of(c, &m, &d, &st);
    assert_int_equal(st.w.n_loads, 1); /* kept until acknowledged */
    wire_doc_fini(&d);
    rpc_msg_free(m);
    for (int i = 0; i < 2; i++) { /* requests without `ack`: listed once, then gone */
        wire_writer sw;
        wire_writer_init(&sw);
        wire_put_map(&sw, 3);
        wire_kv_u64(&sw, "v", AICFN_PROTOCOL_VERSION);
        wire_kv_str(&sw, "t", WIRE_T_STATUS);
        wire_kv_u64(&sw, "id", 40 + (uint64_t)i);
        assert_int_equal(rpc_call_sync(c, sw.data, sw.len, 5000, &m, &err), AICFN_OK);
        wire_writer_fini(&sw);
        assert_int_equal(wire_doc_parse(&d, rpc_msg_data(m), rpc_msg_len(m), NULL, &err), AICFN_OK);
        assert_int_equal(wire_decode_status_reply(&d, &st, &err), AICFN_OK);
        assert_int_equal(st.w.n_loads, i == 0 ? 1 : 0);
        wire_doc_fini(&d);
        rpc_msg_free(m);
    }
    stop(w, c, 5000);
    unlink(snap);
}

/* A model whose blob is empty (only empty tensors) loads: the cache is charged the one
 * aligned unit the device allocates for it, not 0 bytes. */
static void empty_model_loads(void **state) {
    (void)state;
    char st[PATH_MAX + 32], snap[PATH_MAX + 32];
    snprintf(st, sizeof st, "%s/empty.safetensors", tmp_dir);
    snprintf(snap, sizeof snap, "%s/empty.aicsnap", tmp_dir);
    char header[] = "{\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}   ";
    size_t hn = strlen(header);
    assert_int_equal(hn % 8, 0);
    FILE *f = fopen(st, "wb");
    assert_non_null(f);
    uint64_t hl = hn;
    fwrite(&hl, 8, 1, f);
    fwrite(header, 1, hn, f);
    fclose(f);
    const char *in[1] = {st};
    snap_pack_opts o = {.level = AICFN_SNAP_DEFAULT_LEVEL,
                        .chunk = AICFN_SNAP_DEFAULT_CHUNK,
                        .filter = SNAP_FILTER_MODE_AUTO,
                        .threads = 1};
    aicfn_error err;
    if (snap_pack(in, 1, snap, &o, NULL, &err) != AICFN_OK) fail_msg("snap_pack: %s", err.msg);

    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-empty", (int)getpid());
    worker *w = start(url, 16u << 20);
    add(w, "empty", "echo", snap, 1, 0);
    rpc_client *c = serve(w, url);
    float x[4] = {1, 2, 3, 4};
    wire_tensor t = fp32_x(x, 4);
    reply r;
    invoke(c, 1, "empty", &t, 1, NULL, NULL, 0, &r);
    if (!r.rep.head.ok) fail_msg("invoke: %s", r.rep.head.message);
    assert_true(r.rep.cold);
    reply_free(&r);
    stop(w, c, 5000);
}

/* Calls racing a removal: each is answered OK (it found the function, so it runs) or
 * AICFN_E_NOT_FOUND (it came after), never refused by the batcher of a function still
 * finishing its accepted calls (a call is counted before it reaches the batcher). */
static void remove_while_calls_arrive(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-rm", (int)getpid());
    worker *w = start(url, 16u << 20);
    rpc_client *c = serve(w, url);
    aicfn_error err;
    enum { ROUNDS = 200, N = 16 };
    int ok = 0, not_found = 0;
    for (int round = 0; round < ROUNDS; round++) {
        add(w, "t", "test_sleep", NULL, 1, 0);
        memset(&arec, 0, sizeof arec);
        pthread_mutex_init(&arec.mu, NULL);
        for (intptr_t i = 0; i < N; i++)
            invoke_async(c, 1000 + (uint64_t)i, "t", "sleep_ms", "0", 0, i);
        usleep((useconds_t)(round % 7) * 50); /* vary where the removal falls */
        assert_int_equal(worker_remove_function(w, "t", 0, &err), AICFN_OK);
        uint64_t until = clock_now_us() + 5000000;
        while (clock_now_us() < until && arec_done() < N)
            usleep(200);
        assert_int_equal(arec_done(), N);
        for (int i = 0; i < N; i++) {
            if (arec.codes[i] != AICFN_OK && arec.codes[i] != AICFN_E_NOT_FOUND)
                fail_msg("round %d, call %d: code %d", round, i, arec.codes[i]);
            ok += arec.codes[i] == AICFN_OK;
            not_found += arec.codes[i] == AICFN_E_NOT_FOUND;
        }
        pthread_mutex_destroy(&arec.mu);
    }
    assert_int_equal(ok + not_found, ROUNDS * N);
    assert_true(ok > 0 && not_found > 0); /* the removal did race the calls */
    stop(w, c, 5000);
}

/* An init whose own calls all gave up and that then failed is not the next calls'
 * error: they get an init of their own. test_sleep's init_fail_once fails the first
 * init (a 400 ms one, outlasting its 100 ms call) and not the next. */
static void failed_init_of_calls_that_gave_up_is_tried_again(void **state) {
    (void)state;
    char once[PATH_MAX + 32];
    snprintf(once, sizeof once, "%s/init.once", tmp_dir);
    FILE *fp = fopen(once, "w");
    assert_non_null(fp);
    fclose(fp);
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-initfail", (int)getpid());
    worker *w = start(url, 16u << 20);
    aicfn_param ps[] = {{"init_sleep_ms", "400"}, {"init_fail_once", once}};
    worker_fn_config f = {
        .name = "flaky", .handler = hpath("test_sleep"), .max_batch = 1, .n_params = 2, .params = ps};
    aicfn_error err;
    assert_int_equal(worker_add_function(w, &f, &err), AICFN_OK);
    rpc_client *c = serve(w, url);
    reply r;
    invoke(c, 1, "flaky", NULL, 0, NULL, NULL, 100, &r);
    assert_int_equal(r.rep.head.code, AICFN_E_TIMEOUT);
    reply_free(&r);
    usleep(600000); /* the init failed meanwhile, for no call */
    assert_int_equal(access(once, F_OK), -1);
    invoke(c, 2, "flaky", NULL, 0, NULL, NULL, 5000, &r);
    if (!r.rep.head.ok) fail_msg("the next call got: %s", r.rep.head.message);
    reply_free(&r);
    stop(w, c, 5000);
}

/* How many of worker client c's functions (status queues) are named `fn`. */
static unsigned hosted(rpc_client *c, const char *fn) {
    rpc_msg *m;
    wire_doc d;
    wire_status_reply st;
    status_of(c, &m, &d, &st);
    unsigned n = 0;
    for (uint32_t i = 0; i < st.w.n_queues; i++)
        n += strcmp(st.w.queues[i].fn, fn) == 0;
    wire_doc_fini(&d);
    rpc_msg_free(m);
    return n;
}

/* Invokes fn version 1 with a spec naming the test_sleep handler (as the gateway does). */
static void invoke_spec(rpc_client *c, uint64_t id, const char *fn) {
    wire_invoke_req req = {.id = id,
                           .fn = fn,
                           .ver = 1,
                           .has_spec = true,
                           .spec = {.handler = hpath("test_sleep"), .max_batch = 1, .timeout_ms = 5000}};
    wire_writer wr;
    wire_writer_init(&wr);
    aicfn_error err;
    assert_int_equal(wire_encode_invoke_req(&wr, &req, &err), AICFN_OK);
    reply r;
    memset(&r, 0, sizeof r);
    assert_int_equal(rpc_call_sync(c, wr.data, wr.len, 10000, &r.msg, &err), AICFN_OK);
    wire_writer_fini(&wr);
    decode(&r);
    if (!r.rep.head.ok) fail_msg("call %llu: %s", (unsigned long long)id, r.rep.head.message);
    reply_free(&r);
}

/* A function a spec registered and not called for the retirement period is removed at a
 * status request (its instance ended: fini ran), one added at start is kept, and the
 * next call's spec registers the retired one again. */
static void idle_function_from_a_spec_is_retired(void **state) {
    (void)state;
    char fini[PATH_MAX + 32];
    snprintf(fini, sizeof fini, "%s/retire.fini", tmp_dir);
    char url[64];
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-retire", (int)getpid());
    worker_config cfg = {
        .listen = url, .device = "host", .memory_bytes = 16u << 20, .id = "wt", .fn_idle_retire_ms = 300};
    worker *w = NULL;
    aicfn_error err;
    assert_int_equal(worker_create(&cfg, &w, &err), AICFN_OK);
    add(w, "fixed", "test_sleep", NULL, 1, 0);
    rpc_client *c = serve(w, url);
    setenv("AICFN_TEST_FINI_FILE", fini, 1); /* test_sleep's fini writes it */
    invoke_spec(c, 1, "dyn");
    assert_int_equal(hosted(c, "dyn"), 1);
    assert_int_equal(hosted(c, "dyn"), 1); /* called just now: not due */
    usleep(400000);
    unsigned left = 1;
    uint64_t until = clock_now_us() + 5000000;
    while (clock_now_us() < until && (left = hosted(c, "dyn")) != 0)
        usleep(20000);
    assert_int_equal(left, 0);
    assert_int_equal(access(fini, F_OK), 0);
    assert_int_equal(hosted(c, "fixed"), 1);
    invoke_spec(c, 2, "dyn");
    assert_int_equal(hosted(c, "dyn"), 1);
    unsetenv("AICFN_TEST_FINI_FILE");
    stop(w, c, 5000);
}

/* A call whose spec names a function being retired (its fini still running) waits for
 * that instance to end before the successor's init: fini comes first (aicfn.h). It used
 * to register and run a second instance at once. */
static void retired_fini_ends_before_the_successor_init(void **state) {
    (void)state;
    char fini[PATH_MAX + 32], url[64];
    snprintf(fini, sizeof fini, "%s/retire2.fini", tmp_dir);
    snprintf(url, sizeof url, "inproc://aicfn-test-worker-%d-retire2", (int)getpid());
    worker_config cfg = {
        .listen = url, .device = "host", .memory_bytes = 16u << 20, .id = "wt", .fn_idle_retire_ms = 300};
    worker *w = NULL;
    aicfn_error err;
    assert_int_equal(worker_create(&cfg, &w, &err), AICFN_OK);
    rpc_client *c = serve(w, url);
    setenv("AICFN_TEST_FINI_FILE", fini, 1);
    setenv("AICFN_TEST_FINI_SLEEP_MS", "1500", 1);
    invoke_spec(c, 1, "dyn");
    usleep(400000);
    unsigned left = 1;
    uint64_t until = clock_now_us() + 5000000;
    while (clock_now_us() < until && (left = hosted(c, "dyn")) != 0) /* a status starts the retirement */
        usleep(20000);
    assert_int_equal(left, 0);                /* unlinked; its fini sleeps */
    assert_int_equal(access(fini, F_OK), -1); /* not done yet */
    invoke_spec(c, 2, "dyn");                 /* registers it again: after that fini */
    bool fini_done = access(fini, F_OK) == 0;
    unsetenv("AICFN_TEST_FINI_SLEEP_MS");
    assert_int_equal(hosted(c, "dyn"), 1);
    stop(w, c, 5000); /* the successor's fini sleeps too */
    unsetenv("AICFN_TEST_FINI_FILE");
    assert_true(fini_done);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(echo_mlp_status),
        cmocka_unit_test(batching_deadlines_and_drain),
        cmocka_unit_test(remove_function_while_serving),
        cmocka_unit_test(bad_config),
        cmocka_unit_test(remove_while_calls_arrive),
        cmocka_unit_test(empty_misaligned_input_is_answered),
        cmocka_unit_test(bundle_parts_share_one_object_budget),
        cmocka_unit_test(bundle_parts_answered_in_order),
        cmocka_unit_test(bundle_reply_never_outgrows_the_message),
        cmocka_unit_test(bundle_part_overrunning_its_deadline_is_answered_alone),
        cmocka_unit_test(empty_model_loads),
        cmocka_unit_test(batch_waiting_for_its_model_answers_each_deadline),
        cmocka_unit_test(abandoned_load_is_reported_in_the_next_status),
        cmocka_unit_test(loads_are_listed_once_to_a_peer_without_acks),
        cmocka_unit_test(init_outlasting_its_calls_is_adopted_or_ended),
        cmocka_unit_test(failed_init_of_calls_that_gave_up_is_tried_again),
        cmocka_unit_test(idle_function_from_a_spec_is_retired),
        cmocka_unit_test(retired_fini_ends_before_the_successor_init),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
