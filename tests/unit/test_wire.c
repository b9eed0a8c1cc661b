/* test_wire.c: the bounded msgpack validator and the wire codec (common/wire.h):
 * round trips of every message type, strict prefixes, hostile headers, tensor checks,
 * trailing bytes, versioning, and agreement between the validator and msgpack-c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/dtype.h"
#include "common/wire.h"

/* ---- helpers -------------------------------------------------------------------- */

static const float x_data[6] = {1, 2, 3, 4, 5, 6};
/* BYTES tensor of 2 elements: "hi", "" */
static const uint8_t s_data[] = {2, 0, 0, 0, 'h', 'i', 0, 0, 0, 0};

static void make_inputs(wire_tensor *in) {
    memset(in, 0, 2 * sizeof *in);
    in[0].name = "x";
    in[0].dtype = AICFN_DTYPE_FP32;
    in[0].ndim = 2;
    in[0].shape[0] = 2;
    in[0].shape[1] = 3;
    in[0].data = (const uint8_t *)x_data;
    in[0].nbytes = sizeof x_data;
    in[1].name = "s";
    in[1].dtype = AICFN_DTYPE_BYTES;
    in[1].ndim = 1;
    in[1].shape[0] = 2;
    in[1].data = s_data;
    in[1].nbytes = sizeof s_data;
}

/* Encodes a full invoke request into a malloc'd buffer. */
static uint8_t *encode_request(size_t *len) {
    wire_tensor in[2];
    make_inputs(in);
    /* params: {"temperature": 0.5, "n": 3} */
    wire_writer pw;
    wire_writer_init(&pw);
    wire_put_map(&pw, 2);
    wire_kv_f64(&pw, "temperature", 0.5);
    wire_kv_u64(&pw, "n", 3);
    assert_int_equal(wire_writer_status(&pw, NULL), AICFN_OK);

    wire_invoke_req r;
    memset(&r, 0, sizeof r);
    r.id = 77;
    r.fn = "mlp";
    r.ver = 2;
    r.key = "k_secret";
    r.tenant = "acme";
    r.gid = 1ull << 40;
    r.deadline_ms = 1500;
    r.n_inputs = 2;
    r.inputs = in;
    r.params = pw.data;
    r.params_len = pw.len;
    r.has_spec = true;
    r.spec.handler = "/data/fn/mlp/2/mlp.so";
    r.spec.snapshot = "/data/fn/mlp/2/model.aicfn";
    r.spec.model = "abcdef0123";
    r.spec.model_bytes = 4096;
    r.spec.max_batch = 8;
    r.spec.max_delay_us = 2000;
    r.spec.timeout_ms = 30000;
    r.spec.idempotent = true;
    const aicfn_param sp[2] = {{"temperature", "0.7"}, {"mode", ""}};
    r.spec.n_params = 2;
    r.spec.params = sp;
    wire_writer w;
    wire_writer_init(&w);
    aicfn_error e;
    assert_int_equal(wire_encode_invoke_req(&w, &r, &e), AICFN_OK);
    wire_writer_fini(&pw);
    uint8_t *buf = wire_writer_take(&w, len);
    assert_non_null(buf);
    wire_writer_fini(&w);
    return buf;
}

/* Parses and decodes an invoke request; returns the status, fills err. */
static int decode_request(const uint8_t *buf, size_t len, aicfn_error *err) {
    wire_doc doc;
    int rc = wire_doc_parse(&doc, buf, len, NULL, err);
    if (rc) return rc;
    wire_invoke_req r;
    rc = wire_decode_invoke_req(&doc, &r, err);
    wire_doc_fini(&doc);
    return rc;
}

/* ---- round trips ------------------------------------------------------------------ */

static void invoke_request_round_trip(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = encode_request(&len);
    wire_doc doc;
    aicfn_error e;
    assert_int_equal(wire_doc_parse(&doc, buf, len, NULL, &e), AICFN_OK);
    wire_header h;
    assert_int_equal(wire_decode_header(&doc, &h, &e), AICFN_OK);
    assert_string_equal(h.t, "invoke");
    assert_int_equal(h.v, AICFN_PROTOCOL_VERSION);
    assert_int_equal(h.id, 77);
    wire_invoke_req r;
    assert_int_equal(wire_decode_invoke_req(&doc, &r, &e), AICFN_OK);
    assert_int_equal(r.id, 77);
    assert_string_equal(r.fn, "mlp");
    assert_int_equal(r.ver, 2);
    assert_string_equal(r.key, "k_secret");
    assert_string_equal(r.tenant, "acme");
    assert_int_equal(r.gid, 1ull << 40);
    assert_int_equal(r.deadline_ms, 1500);
    assert_int_equal(r.n_inputs, 2);
    assert_string_equal(r.inputs[0].name, "x");
    assert_int_equal(r.inputs[0].dtype, AICFN_DTYPE_FP32);
    assert_int_equal(r.inputs[0].ndim, 2);
    assert_int_equal(r.inputs[0].shape[1], 3);
    assert_int_equal(r.inputs[0].nbytes, sizeof x_data);
    assert_memory_equal(r.inputs[0].data, x_data, sizeof x_data);
    /* zero copy: tensor data points into the message buffer */
    assert_true(r.inputs[0].data > buf && r.inputs[0].data + r.inputs[0].nbytes <= buf + len);
    assert_string_equal(r.inputs[1].name, "s");
    assert_int_equal(r.inputs[1].dtype, AICFN_DTYPE_BYTES);
    uint64_t pos = 0;
    const uint8_t *el;
    uint32_t elen;
    assert_true(wire_bytes_next(r.inputs[1].data, r.inputs[1].nbytes, &pos, &el, &elen));
    assert_int_equal(elen, 2);
    assert_memory_equal(el, "hi", 2);
    assert_true(wire_bytes_next(r.inputs[1].data, r.inputs[1].nbytes, &pos, &el, &elen));
    assert_int_equal(elen, 0);
    assert_false(wire_bytes_next(r.inputs[1].data, r.inputs[1].nbytes, &pos, &el, &elen));
    /* params: the raw bytes of the map, inside the buffer, themselves a valid message */
    assert_non_null(r.params);
    assert_true(r.params > buf && r.params + r.params_len <= buf + len);
    wire_doc pd;
    assert_int_equal(wire_doc_parse(&pd, r.params, r.params_len, NULL, &e), AICFN_OK);
    double temp = 0;
    uint64_t n = 0;
    assert_int_equal(wire_get_f64(&pd.root, "params", "temperature", true, &temp, &e), AICFN_OK);
    assert_int_equal(wire_get_u64(&pd.root, "params", "n", true, &n, &e), AICFN_OK);
    assert_true(temp == 0.5);
    assert_int_equal(n, 3);
    wire_doc_fini(&pd);
    assert_true(r.has_spec);
    assert_string_equal(r.spec.handler, "/data/fn/mlp/2/mlp.so");
    assert_string_equal(r.spec.snapshot, "/data/fn/mlp/2/model.aicfn");
    assert_string_equal(r.spec.model, "abcdef0123");
    assert_int_equal(r.spec.model_bytes, 4096);
    assert_int_equal(r.spec.max_batch, 8);
    assert_int_equal(r.spec.max_delay_us, 2000);
    assert_int_equal(r.spec.timeout_ms, 30000);
    assert_true(r.spec.idempotent);
    assert_int_equal(r.spec.n_params, 2);
    assert_string_equal(r.spec.params[0].key, "temperature");
    assert_string_equal(r.spec.params[0].value, "0.7");
    assert_string_equal(r.spec.params[1].key, "mode");
    assert_string_equal(r.spec.params[1].value, "");
    assert_int_equal(wire_peek_id(buf, len), 77);
    wire_doc_fini(&doc);
    free(buf);
}

/* Starts {v:1, t:"invoke", id:1, fn:"f", ...} with `extra` more pairs to follow. */
static void put_invoke_head(wire_writer *w, uint32_t extra) {
    wire_put_map(w, 4 + extra);
    wire_kv_u64(w, "v", 1);
    wire_kv_str(w, "t", "invoke");
    wire_kv_u64(w, "id", 1);
    wire_kv_str(w, "fn", "f");
}

/* An invoke whose spec carries `params` written by put_params; decoding it returns. */
static int decode_spec_params(void (*put_params)(wire_writer *), aicfn_error *e) {
    wire_writer w;
    wire_writer_init(&w);
    put_invoke_head(&w, 2);
    wire_put_str(&w, "inputs");
    wire_put_array(&w, 0);
    wire_put_str(&w, "spec");
    wire_put_map(&w, 2);
    wire_kv_str(&w, "handler", "/h.so");
    wire_put_str(&w, "params");
    put_params(&w);
    wire_doc doc;
    int rc = wire_doc_parse(&doc, w.data, w.len, NULL, e);
    wire_invoke_req r;
    if (rc == AICFN_OK) rc = wire_decode_invoke_req(&doc, &r, e);
    if (rc == AICFN_OK) rc = r.spec.n_params == 1 ? AICFN_OK : AICFN_E_INTERNAL;
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
    return rc;
}
static void pp_ok(wire_writer *w) {
    wire_put_map(w, 1);
    wire_kv_str(w, "k", "v");
}
static void pp_number(wire_writer *w) {
    wire_put_map(w, 1);
    wire_kv_u64(w, "k", 1);
}
static void pp_nul_key(wire_writer *w) {
    wire_put_map(w, 1);
    wire_put_strn(w, "k\0x", 3);
    wire_put_str(w, "v");
}
static void pp_long_value(wire_writer *w) {
    static char v[AICFN_PARAM_VALUE_MAX + 2];
    memset(v, 'a', sizeof v - 1);
    wire_put_map(w, 1);
    wire_kv_str(w, "k", v);
}
static void pp_too_big(wire_writer *w) {
    static char v[AICFN_PARAM_VALUE_MAX + 1];
    memset(v, 'a', sizeof v - 1);
    uint32_t n = AICFN_PARAMS_TOTAL_MAX / AICFN_PARAM_VALUE_MAX + 1;
    wire_put_map(w, n);
    for (uint32_t i = 0; i < n; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%u", i);
        wire_kv_str(w, k, v);
    }
}
static void pp_too_many(wire_writer *w) {
    wire_put_map(w, AICFN_MAX_PARAMS + 1);
    for (int i = 0; i < AICFN_MAX_PARAMS + 1; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        wire_kv_str(w, k, "v");
    }
}

/* spec.params (a function's handler params) are text, bounded like the manifest's. */
static void spec_params_are_bounded(void **state) {
    (void)state;
    aicfn_error e;
    assert_int_equal(decode_spec_params(pp_ok, &e), AICFN_OK);
    void (*bad[])(wire_writer *) = {pp_number, pp_nul_key, pp_long_value, pp_too_big, pp_too_many};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(decode_spec_params(bad[i], &e), AICFN_E_PROTOCOL);
        assert_non_null(strstr(e.msg, "spec.params"));
    }
}

static void invoke_request_minimal_defaults(void **state) {
    (void)state;
    wire_invoke_req r;
    memset(&r, 0, sizeof r);
    r.id = 1;
    r.fn = "echo";
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_invoke_req(&w, &r, NULL), AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_invoke_req d;
    assert_int_equal(wire_decode_invoke_req(&doc, &d, NULL), AICFN_OK);
    assert_int_equal(d.ver, 0);
    assert_null(d.key);
    assert_null(d.tenant);
    assert_int_equal(d.gid, 0);
    assert_null(d.params);
    assert_false(d.has_spec);
    assert_int_equal(d.spec.n_params, 0);
    assert_int_equal(d.n_inputs, 0);
    assert_int_equal(d.deadline_ms, 0);
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
}

static void invoke_reply_round_trip(void **state) {
    (void)state;
    wire_tensor out[2];
    make_inputs(out);
    wire_model_status models[2] = {
        {.model = "abc",
         .fn = "mlp",
         .ver = 2,
         .state = WIRE_MODEL_READY,
         .bytes = 1 << 20,
         .idle_ms = 5,
         .refs = 1,
         .kept = true},
        {.model = "def",
         .fn = "big",
         .ver = 1,
         .state = WIRE_MODEL_LOADING,
         .bytes = 0,
         .idle_ms = 0,
         .refs = 0},
    };
    const char *evicted[] = {"old1", "old2"};
    wire_invoke_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.head.id = 99;
    rep.head.ok = true;
    rep.n_outputs = 2;
    rep.outputs = out;
    rep.cold = true;
    rep.batch = 4;
    rep.timing = (wire_timing){.queue_us = 10,
                               .load_us = 2000,
                               .exec_us = 30,
                               .total_us = 2100,
                               .read_us = 100,
                               .decompress_us = 200,
                               .filter_us = 50,
                               .copy_us = 400,
                               .init_us = 7,
                               .cold_share_us = 1900};
    rep.has_coldstart = true;
    rep.coldstart =
        (wire_coldstart){.compressed_bytes = 1000, .raw_bytes = 4096, .n_evicted = 2, .evicted = evicted};
    rep.has_st = true;
    rep.st = (wire_worker_summary){.budget_bytes = 1 << 30,
                                   .used_bytes = 1 << 20,
                                   .free_bytes = (1 << 30) - (1 << 20),
                                   .queued = 3,
                                   .inflight = 5,
                                   .draining = false,
                                   .n_models = 2,
                                   .models = models};
    wire_writer w;
    wire_writer_init(&w);
    aicfn_error e;
    assert_int_equal(wire_encode_invoke_reply(&w, &rep, &e), AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, &e), AICFN_OK);
    wire_invoke_reply d;
    assert_int_equal(wire_decode_invoke_reply(&doc, &d, &e), AICFN_OK);
    assert_int_equal(d.head.id, 99);
    assert_true(d.head.ok);
    assert_int_equal(d.head.code, AICFN_OK);
    assert_int_equal(d.n_outputs, 2);
    assert_memory_equal(d.outputs[0].data, x_data, sizeof x_data);
    assert_true(d.cold);
    assert_int_equal(d.batch, 4);
    assert_memory_equal(&d.timing, &rep.timing, sizeof d.timing);
    assert_true(d.has_coldstart);
    assert_int_equal(d.coldstart.raw_bytes, 4096);
    assert_int_equal(d.coldstart.n_evicted, 2);
    assert_string_equal(d.coldstart.evicted[1], "old2");
    assert_true(d.has_st);
    assert_int_equal(d.st.inflight, 5);
    assert_int_equal(d.st.n_models, 2);
    assert_false(d.st.partial); /* the whole list */
    assert_string_equal(d.st.models[0].model, "abc");
    assert_string_equal(d.st.models[0].fn, "mlp");
    assert_int_equal(d.st.models[0].state, WIRE_MODEL_READY);
    assert_int_equal(d.st.models[1].state, WIRE_MODEL_LOADING);
    assert_int_equal(d.st.models[0].bytes, 1 << 20);
    assert_true(d.st.models[0].kept);
    assert_false(d.st.models[1].kept);
    assert_false(d.cached);
    assert_null(wire_map_get(&doc.root, "cached")); /* sent only when true */
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
    /* A reply served from the gateway's response cache says so. */
    rep.cached = true;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_invoke_reply(&w, &rep, &e), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, &e), AICFN_OK);
    assert_int_equal(wire_decode_invoke_reply(&doc, &d, &e), AICFN_OK);
    assert_true(d.cached);
    assert_int_equal(d.n_outputs, 2);
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
    /* A summary of the most recent models only says so. */
    rep.st.partial = true;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_invoke_reply(&w, &rep, &e), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, &e), AICFN_OK);
    assert_int_equal(wire_decode_invoke_reply(&doc, &d, &e), AICFN_OK);
    assert_true(d.st.partial);
    assert_int_equal(d.st.n_models, 2);
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
}

/* A worker's refusal of a call it did not run (it drains) says so: not_run. */
static void not_run_reply_round_trip(void **state) {
    (void)state;
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(
        wire_encode_marked_error_reply(&w, 7, AICFN_E_UNAVAILABLE, "draining", WIRE_MARK_NOT_RUN, NULL),
        AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_invoke_reply d;
    assert_int_equal(wire_decode_invoke_reply(&doc, &d, NULL), AICFN_OK);
    assert_false(d.head.ok);
    assert_true(d.head.not_run);
    assert_int_equal(d.head.id, 7);
    assert_int_equal(d.head.code, AICFN_E_UNAVAILABLE);
    assert_string_equal(d.head.message, "draining");
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
}

static void error_reply_round_trip(void **state) {
    (void)state;
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_error_reply(&w, 5, AICFN_E_NOT_FOUND, "function 'nope' not found", NULL),
                     AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_invoke_reply d;
    assert_int_equal(wire_decode_invoke_reply(&doc, &d, NULL), AICFN_OK);
    assert_false(d.head.ok);
    assert_int_equal(d.head.id, 5);
    assert_int_equal(d.head.code, AICFN_E_NOT_FOUND);
    assert_string_equal(d.head.message, "function 'nope' not found");
    assert_false(d.head.not_run);
    assert_int_equal(d.n_outputs, 0);
    /* name carries the symbolic code too */
    wire_str name;
    const msgpack_object *em = wire_map_get(&doc.root, "error");
    assert_int_equal(wire_get_str(em, "error", "name", true, 0, &name, NULL), AICFN_OK);
    assert_true(wire_str_eq(name, "AICFN_E_NOT_FOUND"));
    wire_doc_fini(&doc);

    /* an error given by name only (third-party producers) */
    wire_writer_reset(&w);
    wire_put_map(&w, 4);
    wire_kv_u64(&w, "v", 1);
    wire_kv_u64(&w, "id", 6);
    wire_kv_bool(&w, "ok", false);
    wire_put_str(&w, "error");
    wire_put_map(&w, 1);
    wire_kv_str(&w, "name", "AICFN_E_QUOTA");
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_reply_head h;
    assert_int_equal(wire_decode_reply_head(&doc, &h, NULL), AICFN_OK);
    assert_int_equal(h.code, AICFN_E_QUOTA);
    assert_string_equal(h.message, "");
    wire_doc_fini(&doc);

    /* an error without code or name is malformed */
    wire_writer_reset(&w);
    wire_put_map(&w, 4);
    wire_kv_u64(&w, "v", 1);
    wire_kv_u64(&w, "id", 6);
    wire_kv_bool(&w, "ok", false);
    wire_put_str(&w, "error");
    wire_put_map(&w, 1);
    wire_kv_str(&w, "message", "x");
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    aicfn_error e;
    assert_int_equal(wire_decode_reply_head(&doc, &h, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "error.code"));
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
}

static void status_round_trip(void **state) {
    (void)state;
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_status_req(&w, 12, 0, NULL), AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_header h;
    assert_int_equal(wire_decode_header(&doc, &h, NULL), AICFN_OK);
    assert_string_equal(h.t, WIRE_T_STATUS);
    assert_int_equal(h.id, 12);
    assert_true(h.has_id);
    wire_doc_fini(&doc);

    wire_model_status m = {.model = "abc", .fn = "mlp", .ver = 1, .state = WIRE_MODEL_EVICTING, .bytes = 77};
    wire_queue_status q[2] = {{"mlp", 1, 4, 2}, {"echo", 3, 0, 1}};
    wire_worker_status st = {
        .worker = "w1",
        .device = "NVIDIA H100",
        .is_host = false,
        .uptime_ms = 12345,
        .summary = {.budget_bytes = 100,
                    .used_bytes = 77,
                    .free_bytes = 23,
                    .queued = 4,
                    .inflight = 3,
                    .draining = true,
                    .n_models = 1,
                    .models = &m},
        .n_queues = 2,
        .queues = q,
        .counters = {.invocations = 10, .errors = 1, .cold_starts = 2, .evictions = 3, .batches = 4}};
    wire_writer_reset(&w);
    assert_int_equal(wire_encode_status_reply(&w, 12, &st, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_status_reply r;
    aicfn_error e;
    assert_int_equal(wire_decode_status_reply(&doc, &r, &e), AICFN_OK);
    assert_true(r.head.ok);
    assert_int_equal(r.head.id, 12);
    assert_string_equal(r.w.worker, "w1");
    assert_string_equal(r.w.device, "NVIDIA H100");
    assert_false(r.w.is_host);
    assert_int_equal(r.w.uptime_ms, 12345);
    assert_true(r.w.summary.draining);
    assert_int_equal(r.w.summary.n_models, 1);
    assert_int_equal(r.w.summary.models[0].state, WIRE_MODEL_EVICTING);
    assert_int_equal(r.w.n_queues, 2);
    assert_string_equal(r.w.queues[1].fn, "echo");
    assert_int_equal(r.w.queues[0].queued, 4);
    assert_int_equal(r.w.counters.evictions, 3);
    assert_int_equal(r.w.counters.batches, 4);
    assert_false(r.load.cold);
    assert_false(r.load.has_coldstart);
    wire_doc_fini(&doc);

    /* A preload's answer: the same, with the load it made. */
    const char *ev[2] = {"old1", "old2"};
    wire_load_record ld = {
        .cold = true,
        .timing = {.load_us = 900, .read_us = 10, .decompress_us = 700, .copy_us = 50},
        .has_coldstart = true,
        .coldstart = {.compressed_bytes = 1000, .raw_bytes = 4000, .n_evicted = 2, .evicted = ev}};
    wire_writer_reset(&w);
    assert_int_equal(wire_encode_status_reply(&w, 13, &st, &ld, NULL), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_status_reply(&doc, &r, &e), AICFN_OK);
    assert_int_equal(r.w.n_queues, 2);
    assert_true(r.load.cold);
    assert_int_equal(r.load.timing.load_us, 900);
    assert_int_equal(r.load.timing.decompress_us, 700);
    assert_true(r.load.has_coldstart);
    assert_int_equal(r.load.coldstart.raw_bytes, 4000);
    assert_int_equal(r.load.coldstart.n_evicted, 2);
    assert_string_equal(r.load.coldstart.evicted[1], "old2");
    wire_doc_fini(&doc);

    /* Loads no reply carried, listed in w.loads. */
    wire_unreported_load ul[2] = {
        {.seq = 1733300000000001ull,
         .fn = "mlp",
         .ver = 3,
         .timing = {.load_us = 800, .total_us = 800, .decompress_us = 600},
         .coldstart = {.compressed_bytes = 10, .raw_bytes = 40, .n_evicted = 2, .evicted = ev}},
        {.fn = "echo", .ver = 1, .timing = {.load_us = 5, .total_us = 5}, .coldstart = {.raw_bytes = 1}}};
    st.n_loads = 2;
    st.loads = ul;
    wire_writer_reset(&w);
    assert_int_equal(wire_encode_status_reply(&w, 14, &st, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_status_reply(&doc, &r, &e), AICFN_OK);
    assert_int_equal(r.w.n_loads, 2);
    assert_string_equal(r.w.loads[0].fn, "mlp");
    assert_int_equal(r.w.loads[0].seq, 1733300000000001ull);
    assert_int_equal(r.w.loads[1].seq, 0); /* unnumbered: no "seq" key */
    assert_int_equal(r.w.loads[0].ver, 3);
    assert_int_equal(r.w.loads[0].timing.decompress_us, 600);
    assert_int_equal(r.w.loads[0].coldstart.raw_bytes, 40);
    assert_string_equal(r.w.loads[0].coldstart.evicted[0], "old1");
    assert_string_equal(r.w.loads[1].fn, "echo");
    assert_int_equal(r.w.loads[1].coldstart.n_evicted, 0);
    assert_false(r.load.cold);
    wire_doc_fini(&doc);
    st.n_loads = WIRE_MAX_UNREPORTED_LOADS + 1; /* refused before anything is read */
    wire_writer_reset(&w);
    assert_int_equal(wire_encode_status_reply(&w, 15, &st, NULL, &e), AICFN_E_INVALID);
    wire_writer_fini(&w);
}

/* One w.loads element for status_loads_are_checked: `shape` picks what is wrong. */
enum { LOAD_OK, LOAD_NOT_MAP, LOAD_NO_FN, LOAD_NO_CS, LOAD_NO_TIMING, LOAD_BIG_VER, LOAD_SHAPES };

static void put_load(wire_writer *w, int shape) {
    if (shape == LOAD_NOT_MAP) {
        wire_put_u64(w, 1);
        return;
    }
    wire_put_map(w, 4 - (shape != LOAD_OK && shape != LOAD_BIG_VER));
    if (shape != LOAD_NO_FN) wire_kv_str(w, "fn", "f");
    wire_kv_u64(w, "ver", shape == LOAD_BIG_VER ? (uint64_t)UINT32_MAX + 1 : 1);
    if (shape != LOAD_NO_TIMING) {
        wire_put_str(w, "timing");
        wire_put_map(w, 0);
    }
    if (shape != LOAD_NO_CS) {
        wire_put_str(w, "cs");
        wire_put_map(w, 0);
    }
}

/* w.loads from a hostile worker: too many, not maps, or missing what a row needs; each
 * refused with AICFN_E_PROTOCOL naming the problem (and a well-formed one accepted). */
static void status_loads_are_checked(void **state) {
    (void)state;
    static const char *const want[LOAD_SHAPES + 1] = {NULL,
                                                      "w.loads[0]: expected a map",
                                                      "'w.loads[0].fn'",
                                                      "'w.loads[0].cs'",
                                                      "'w.loads[0].timing'",
                                                      "w.loads[0].ver",
                                                      "exceed the limit"};
    wire_writer w;
    wire_writer_init(&w);
    for (int shape = 0; shape <= LOAD_SHAPES; shape++) {
        wire_writer_reset(&w);
        wire_put_map(&w, 4);
        wire_kv_u64(&w, "v", AICFN_PROTOCOL_VERSION);
        wire_kv_u64(&w, "id", 1);
        wire_kv_bool(&w, "ok", true);
        wire_put_str(&w, "w");
        wire_put_map(&w, 2);
        wire_put_str(&w, "st");
        wire_put_map(&w, 0);
        wire_put_str(&w, "loads");
        uint32_t n = shape == LOAD_SHAPES ? WIRE_MAX_UNREPORTED_LOADS + 1 : 1;
        wire_put_array(&w, n);
        for (uint32_t k = 0; k < n; k++)
            put_load(&w, shape == LOAD_SHAPES ? LOAD_OK : shape);
        wire_doc doc;
        assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
        wire_status_reply r;
        aicfn_error e;
        int rc = wire_decode_status_reply(&doc, &r, &e);
        if (shape == LOAD_OK) {
            assert_int_equal(rc, AICFN_OK);
            assert_int_equal(r.w.n_loads, 1);
        } else {
            assert_int_equal(rc, AICFN_E_PROTOCOL);
            if (!strstr(e.msg, want[shape]))
                fail_msg("shape %d: '%s' does not name %s", shape, e.msg, want[shape]);
        }
        wire_doc_fini(&doc);
    }
    wire_writer_fini(&w);
}

/* ---- hostile and malformed input ----------------------------------------------------- */

static void every_strict_prefix_is_rejected(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = encode_request(&len);
    for (size_t n = 0; n < len; n++) {
        /* copy so ASan catches any read past the prefix */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, buf, n);
        aicfn_error e;
        aicfn_error_clear(&e);
        int rc = decode_request(p, n, &e);
        assert_int_equal(rc, AICFN_E_PROTOCOL);
        assert_true(strlen(e.msg) > 0);
        free(p);
    }
    aicfn_error e;
    assert_int_equal(decode_request(buf, len, &e), AICFN_OK);
    free(buf);
}

static void trailing_bytes_rejected(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = encode_request(&len);
    uint8_t *p = malloc(len + 1);
    memcpy(p, buf, len);
    p[len] = 0xc0;
    aicfn_error e;
    assert_int_equal(decode_request(p, len + 1, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "trailing"));
    char off[32];
    snprintf(off, sizeof off, "offset %zu", len);
    assert_non_null(strstr(e.msg, off));
    free(p);
    free(buf);
}

static void hostile_headers_rejected_without_allocation(void **state) {
    (void)state;
    aicfn_error e;
    wire_doc doc;
    /* array32 announcing 2^31 items: msgpack-c alone would allocate 48 GiB */
    const uint8_t arr32[] = {0xdd, 0x80, 0x00, 0x00, 0x00, 0xc0, 0xc0};
    assert_int_equal(wire_doc_parse(&doc, arr32, sizeof arr32, NULL, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "offset 0"));
    assert_non_null(strstr(e.msg, "array32"));
    /* the same with a count under the item cap: caught by the bytes-remaining check */
    const uint8_t arr32b[] = {0xdd, 0x00, 0x01, 0x00, 0x00, 0xc0, 0xc0};
    assert_int_equal(wire_doc_parse(&doc, arr32b, sizeof arr32b, NULL, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "only 2 remain"));
    /* map32 of 2^32-1 pairs */
    const uint8_t map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0};
    assert_int_equal(wire_doc_parse(&doc, map32, sizeof map32, NULL, &e), AICFN_E_PROTOCOL);
    /* A map of AICFN_MAX_MAP_PAIRS pairs is taken; one more is refused, naming the limit
     * (keys are looked up linearly: a million junk keys cost a million compares each). */
    for (uint32_t pairs = AICFN_MAX_MAP_PAIRS; pairs <= AICFN_MAX_MAP_PAIRS + 1; pairs++) {
        size_t mlen = 3 + (size_t)pairs * 2;
        uint8_t *m = malloc(mlen);
        assert_non_null(m);
        m[0] = 0xde, m[1] = (uint8_t)(pairs >> 8), m[2] = (uint8_t)pairs; /* map16 */
        for (uint32_t i = 0; i < pairs; i++)
            m[3 + 2 * i] = 0x00, m[4 + 2 * i] = 0xc0; /* 0: nil (keys need not be unique) */
        int rc = wire_doc_parse(&doc, m, mlen, NULL, &e);
        if (pairs == AICFN_MAX_MAP_PAIRS) {
            assert_int_equal(rc, AICFN_OK);
            wire_doc_fini(&doc);
        } else {
            assert_int_equal(rc, AICFN_E_PROTOCOL);
            assert_non_null(strstr(e.msg, "exceeds the limit of 1024"));
        }
        free(m);
    }
    /* str32 / bin32 / ext32 with huge lengths */
    const uint8_t str32[] = {0xdb, 0xff, 0xff, 0xff, 0xf0, 'a', 'b'};
    assert_int_equal(wire_doc_parse(&doc, str32, sizeof str32, NULL, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "str32"));
    const uint8_t bin32[] = {0xc6, 0x7f, 0xff, 0xff, 0xff, 1};
    assert_int_equal(wire_doc_parse(&doc, bin32, sizeof bin32, NULL, &e), AICFN_E_PROTOCOL);
    const uint8_t ext32[] = {0xc9, 0x00, 0x00, 0x10, 0x00, 5, 1};
    assert_int_equal(wire_doc_parse(&doc, ext32, sizeof ext32, NULL, &e), AICFN_E_PROTOCOL);
    /* the reserved type byte */
    const uint8_t c1[] = {0x81, 0xa1, 'v', 0xc1};
    assert_int_equal(wire_doc_parse(&doc, c1, sizeof c1, NULL, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "0xc1"));
    assert_non_null(strstr(e.msg, "offset 3"));
    /* truncated length field */
    const uint8_t tr[] = {0xdb, 0x00, 0x00};
    assert_int_equal(wire_doc_parse(&doc, tr, sizeof tr, NULL, &e), AICFN_E_PROTOCOL);
    /* empty */
    assert_int_equal(wire_doc_parse(&doc, "", 0, NULL, &e), AICFN_E_PROTOCOL);
}

static void deep_nesting_rejected(void **state) {
    (void)state;
    enum { DEPTH = 1000 };
    uint8_t buf[DEPTH + 1];
    memset(buf, 0x91, DEPTH); /* fixarray of 1, nested */
    buf[DEPTH] = 0xc0;
    aicfn_error e;
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, buf, sizeof buf, NULL, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "nested deeper"));
    char off[32];
    snprintf(off, sizeof off, "offset %d", AICFN_MAX_NESTING);
    assert_non_null(strstr(e.msg, off));
    /* exactly AICFN_MAX_NESTING levels pass, and msgpack-c unpacks them */
    uint8_t ok[AICFN_MAX_NESTING + 1];
    memset(ok, 0x91, AICFN_MAX_NESTING);
    ok[AICFN_MAX_NESTING] = 0x01;
    assert_int_equal(wire_doc_parse(&doc, ok, sizeof ok, NULL, &e), AICFN_OK);
    wire_doc_fini(&doc);
    /* limits above msgpack-c's own stack are clamped */
    wire_limits lim = {.max_depth = 100};
    assert_int_equal(wire_doc_parse(&doc, buf, sizeof buf, &lim, &e), AICFN_E_PROTOCOL);
}

static void item_object_and_size_limits(void **state) {
    (void)state;
    /* array of 5 nils with max_items 4 */
    const uint8_t arr[] = {0x95, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0};
    wire_limits lim = {.max_items = 4};
    aicfn_error e;
    assert_int_equal(wire_validate(arr, sizeof arr, &lim, NULL, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "limit of 4"));
    lim = (wire_limits){.max_objects = 5};
    assert_int_equal(wire_validate(arr, sizeof arr, &lim, NULL, &e), AICFN_E_PROTOCOL);
    uint64_t objs = 0;
    assert_int_equal(wire_validate(arr, sizeof arr, NULL, &objs, &e), AICFN_OK);
    assert_int_equal(objs, 6);
    lim = (wire_limits){.max_bytes = 5};
    assert_int_equal(wire_validate(arr, sizeof arr, &lim, NULL, &e), AICFN_E_TOO_LARGE);
}

static void all_formats_validate_and_unpack(void **state) {
    (void)state;
    /* one array holding every msgpack format */
    const uint8_t msg[] = {
        0xdc, 0x00, 0x20,                                     /* array16 of 32 */
        0x05, 0xe0,                                           /* fixint +5, -32 */
        0xc0, 0xc2, 0xc3,                                     /* nil false true */
        0xcc, 0xff, 0xcd, 0x01, 0x00, 0xce, 0,    0, 1,    0, /* uint8/16/32 */
        0xcf, 0,    0,    0,    1,    0,    0,    0, 0,       /* uint64 */
        0xd0, 0x80, 0xd1, 0x80, 0x00, 0xd2, 0x80, 0, 0,    0,   0xd3, 0x80, 0, 0, 0,    0,    0,    0,
        0,    0xca, 0x3f, 0x80, 0,    0,                /* float32 1.0 */
        0xcb, 0x3f, 0xf0, 0,    0,    0,    0,    0, 0, /* float64 1.0 */
        0xa2, 'h',  'i',  0xd9, 1,    'a',  0xda, 0, 1,    'b', 0xdb, 0,    0, 0, 1,    'c',  0xc4, 1,
        9,    0xc5, 0,    1,    9,    0xc6, 0,    0, 0,    1,   9,    0xd4, 1, 9, 0xd5, 1,    9,    9,
        0xd6, 1,    1,    2,    3,    4,    0xd7, 1, 1,    2,   3,    4,    5, 6, 7,    8,    0xd8, 1,
        1,    2,    3,    4,    5,    6,    7,    8, 1,    2,   3,    4,    5, 6, 7,    8,    0xc7, 2,
        1,    9,    9,    0xc8, 0,    1,    1,    9, 0xc9, 0,   0,    0,    1, 1, 9,    0x80, 0x90, /* empty
                                                                                                       fixmap,
                                                                                                       fixarray
                                                                                                     */
    };
    wire_doc doc;
    aicfn_error e;
    assert_int_equal(wire_doc_parse(&doc, msg, sizeof msg, NULL, &e), AICFN_OK);
    assert_int_equal(doc.root.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(doc.root.via.array.size, 32);
    assert_int_equal(doc.objects, 33);
    assert_int_equal(doc.root.via.array.ptr[1].via.i64, -32);
    wire_doc_fini(&doc);
    /* with one byte less anywhere in the payload, it must fail cleanly */
    for (size_t n = 0; n < sizeof msg; n++)
        assert_int_not_equal(wire_validate(msg, n, NULL, NULL, NULL), AICFN_OK);
}

/* xorshift for the mutation loop */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void validator_agrees_with_msgpack_c(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = encode_request(&len);
    uint8_t *m = malloc(len);
    unsigned accepted = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(m, buf, len);
        int muts = 1 + (int)(rng() % 4);
        for (int k = 0; k < muts; k++)
            m[rng() % len] = (uint8_t)rng();
        size_t n = len - (rng() % 3 == 0 ? rng() % len : 0);
        uint64_t objs;
        if (wire_validate(m, n, NULL, &objs, NULL) != AICFN_OK) continue;
        accepted++;
        /* accepted by the validator => msgpack-c unpacks exactly n bytes */
        msgpack_zone *z = msgpack_zone_new(4096);
        size_t off = 0;
        msgpack_object o;
        assert_int_equal(msgpack_unpack((const char *)m, n, &off, z, &o), MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(off, n);
        msgpack_zone_free(z);
        /* and the codec either decodes it or names the problem */
        aicfn_error e;
        aicfn_error_clear(&e);
        int rc = decode_request(m, n, &e);
        if (rc != AICFN_OK) assert_true(strlen(e.msg) > 0);
    }
    assert_true(accepted > 100);
    free(m);
    free(buf);
}

/* ---- semantics: keys, versions, tensors ----------------------------------------------- */

/* Builds {v, t:"invoke", id:1, fn:"f", inputs:[tensor]} with the given tensor fields. */
static int decode_with_tensor(const char *name, const char *dtype, const int64_t *shape, unsigned ndim,
                              const void *data, size_t dlen, aicfn_error *e) {
    wire_writer w;
    wire_writer_init(&w);
    put_invoke_head(&w, 1);
    wire_put_str(&w, "inputs");
    wire_put_array(&w, 1);
    wire_put_map(&w, 4);
    wire_kv_str(&w, "name", name);
    wire_kv_str(&w, "dtype", dtype);
    wire_put_str(&w, "shape");
    wire_put_array(&w, ndim);
    for (unsigned i = 0; i < ndim; i++)
        wire_put_i64(&w, shape[i]);
    wire_kv_bin(&w, "data", data, dlen);
    int rc = decode_request(w.data, w.len, e);
    wire_writer_fini(&w);
    return rc;
}

static void tensor_mismatches_name_the_tensor(void **state) {
    (void)state;
    aicfn_error e;
    uint8_t data[64] = {0};
    int64_t s23[] = {2, 3};
    assert_int_equal(decode_with_tensor("x", "FP32", s23, 2, data, 24, &e), AICFN_OK);
    assert_int_equal(decode_with_tensor("x", "FP32", s23, 2, data, 20, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "'x'"));
    assert_non_null(strstr(e.msg, "24 bytes"));
    assert_int_equal(decode_with_tensor("img", "BOGUS", s23, 2, data, 24, &e), AICFN_E_UNSUPPORTED);
    assert_non_null(strstr(e.msg, "'img'"));
    int64_t neg[] = {2, -1};
    assert_int_equal(decode_with_tensor("y", "FP32", neg, 2, data, 8, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "negative"));
    assert_non_null(strstr(e.msg, "'y'"));
    int64_t many[AICFN_MAX_DIMS + 1];
    for (int i = 0; i <= AICFN_MAX_DIMS; i++)
        many[i] = 1;
    assert_int_equal(decode_with_tensor("z", "UINT8", many, AICFN_MAX_DIMS + 1, data, 1, &e),
                     AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "dims"));
    int64_t huge[] = {INT64_MAX, INT64_MAX};
    assert_int_equal(decode_with_tensor("h", "FP64", huge, 2, data, 8, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "overflow"));
    /* BYTES: 2 elements declared, data holds 1; then a length running past the end */
    const uint8_t one[] = {1, 0, 0, 0, 'a'};
    int64_t s2[] = {2};
    assert_int_equal(decode_with_tensor("b", "BYTES", s2, 1, one, sizeof one, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "'b'"));
    const uint8_t past[] = {9, 0, 0, 0, 'a', 1, 0, 0, 0, 'b'};
    assert_int_equal(decode_with_tensor("b", "BYTES", s2, 1, past, sizeof past, &e), AICFN_E_PROTOCOL);
    const uint8_t extra[] = {1, 0, 0, 0, 'a', 1, 0, 0, 0, 'b', 7};
    assert_int_equal(decode_with_tensor("b", "BYTES", s2, 1, extra, sizeof extra, &e), AICFN_E_PROTOCOL);
    const uint8_t good[] = {1, 0, 0, 0, 'a', 1, 0, 0, 0, 'b'};
    assert_int_equal(decode_with_tensor("b", "BYTES", s2, 1, good, sizeof good, &e), AICFN_OK);
    /* a shape announcing 2^40 BYTES elements fails fast */
    int64_t big[] = {1ll << 40};
    assert_int_equal(decode_with_tensor("b", "BYTES", big, 1, good, sizeof good, &e), AICFN_E_PROTOCOL);
    /* names: empty, too long */
    assert_int_equal(decode_with_tensor("", "FP32", s23, 2, data, 24, &e), AICFN_E_PROTOCOL);
    char longname[AICFN_MAX_NAME_BYTES + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    assert_int_equal(decode_with_tensor(longname, "FP32", s23, 2, data, 24, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "limit"));
    /* zero-size tensor */
    int64_t s0[] = {0, 5};
    assert_int_equal(decode_with_tensor("e", "FP16", s0, 2, data, 0, &e), AICFN_OK);
}

static void tensor_count_and_duplicates(void **state) {
    (void)state;
    wire_writer w;
    wire_writer_init(&w);
    /* Pass 2: the duplicate is tensor 12 of 13, and the message says so exactly. */
    for (int pass = 0; pass < 3; pass++) {
        unsigned n = pass == 0 ? AICFN_MAX_TENSORS + 1 : pass == 1 ? 2 : 13;
        wire_writer_reset(&w);
        wire_put_map(&w, 5);
        wire_kv_u64(&w, "v", 1);
        wire_kv_str(&w, "t", "invoke");
        wire_kv_u64(&w, "id", 1);
        wire_kv_str(&w, "fn", "f");
        wire_put_str(&w, "inputs");
        wire_put_array(&w, n);
        for (unsigned i = 0; i < n; i++) {
            char name[16];
            snprintf(name, sizeof name, "t%u", pass == 0 || (pass == 2 && i < 12) ? i : 0);
            wire_put_map(&w, 4);
            wire_kv_str(&w, "name", name);
            wire_kv_str(&w, "dtype", "UINT8");
            wire_put_str(&w, "shape");
            wire_put_array(&w, 1);
            wire_put_u64(&w, 1);
            wire_kv_bin(&w, "data", "x", 1);
        }
        aicfn_error e;
        assert_int_equal(decode_request(w.data, w.len, &e), AICFN_E_PROTOCOL);
        assert_non_null(strstr(e.msg, pass == 0 ? "limit" : "duplicate"));
        if (pass == 2) assert_string_equal(e.msg, "inputs[12] 't0': duplicate tensor name");
    }
    wire_writer_fini(&w);
}

static void keys_versions_and_types(void **state) {
    (void)state;
    wire_writer w;
    wire_writer_init(&w);
    aicfn_error e;
    /* missing fn */
    wire_put_map(&w, 4);
    wire_kv_u64(&w, "v", 1);
    wire_kv_str(&w, "t", "invoke");
    wire_kv_u64(&w, "id", 1);
    wire_put_str(&w, "inputs");
    wire_put_array(&w, 0);
    assert_int_equal(decode_request(w.data, w.len, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "'fn'"));
    /* newer version */
    wire_writer_reset(&w);
    wire_put_map(&w, 5);
    wire_kv_u64(&w, "v", AICFN_PROTOCOL_VERSION + 1);
    wire_kv_str(&w, "t", "invoke");
    wire_kv_u64(&w, "id", 1);
    wire_kv_str(&w, "fn", "f");
    wire_put_str(&w, "inputs");
    wire_put_array(&w, 0);
    assert_int_equal(decode_request(w.data, w.len, &e), AICFN_E_UNSUPPORTED);
    /* missing v */
    wire_writer_reset(&w);
    wire_put_map(&w, 4);
    wire_kv_str(&w, "t", "invoke");
    wire_kv_u64(&w, "id", 1);
    wire_kv_str(&w, "fn", "f");
    wire_put_str(&w, "inputs");
    wire_put_array(&w, 0);
    assert_int_equal(decode_request(w.data, w.len, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "'v'"));
    /* unknown keys are ignored, nil optional keys are absent */
    wire_writer_reset(&w);
    wire_put_map(&w, 8);
    wire_kv_u64(&w, "v", 1);
    wire_kv_str(&w, "t", "invoke");
    wire_kv_u64(&w, "id", 1);
    wire_kv_str(&w, "fn", "f");
    wire_put_str(&w, "inputs");
    wire_put_array(&w, 0);
    wire_kv_str(&w, "future_key", "whatever");
    wire_put_str(&w, "ver");
    wire_put_nil(&w);
    wire_put_u64(&w, 5); /* a non-str key */
    wire_put_u64(&w, 6);
    assert_int_equal(decode_request(w.data, w.len, &e), AICFN_OK);
    /* wrong types */
    wire_writer_reset(&w);
    wire_put_map(&w, 5);
    wire_kv_u64(&w, "v", 1);
    wire_kv_str(&w, "t", "invoke");
    wire_kv_str(&w, "id", "seven");
    wire_kv_str(&w, "fn", "f");
    wire_put_str(&w, "inputs");
    wire_put_array(&w, 0);
    assert_int_equal(decode_request(w.data, w.len, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "'id'"));
    /* wrong message type */
    wire_writer_reset(&w);
    assert_int_equal(wire_encode_status_req(&w, 3, 0, NULL), AICFN_OK);
    assert_int_equal(decode_request(w.data, w.len, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "status"));
    /* not a map */
    const uint8_t arr[] = {0x90};
    assert_int_equal(decode_request(arr, 1, &e), AICFN_E_PROTOCOL);
    assert_int_equal(wire_peek_id(arr, 1), 0);
    /* a request of any type needs an id (its reply could not be matched); a header without t
     * (a reply's) may lack one: the reply decoders require it themselves */
    wire_writer_reset(&w);
    wire_put_map(&w, 2);
    wire_kv_u64(&w, "v", 1);
    wire_kv_str(&w, "t", "status");
    wire_doc doc;
    wire_header h;
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_header(&doc, &h, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "'status' request without key 'id'"));
    wire_doc_fini(&doc);
    wire_writer_reset(&w);
    wire_put_map(&w, 3); /* a nil id is an absent one */
    wire_kv_u64(&w, "v", 1);
    wire_kv_str(&w, "t", "ls");
    wire_put_str(&w, "id");
    wire_put_nil(&w);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_header(&doc, &h, &e), AICFN_E_PROTOCOL);
    assert_non_null(strstr(e.msg, "'ls' request without key 'id'"));
    wire_doc_fini(&doc);
    wire_writer_reset(&w);
    wire_put_map(&w, 2);
    wire_kv_u64(&w, "v", 1);
    wire_put_str(&w, "ok");
    wire_put_bool(&w, true);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_header(&doc, &h, &e), AICFN_OK);
    assert_false(h.has_id);
    wire_doc_fini(&doc);
    wire_writer_fini(&w);
}

static void writer_limits_and_encoder_checks(void **state) {
    (void)state;
    wire_writer w;
    wire_writer_init(&w);
    w.max_bytes = 64;
    static uint8_t big[100];
    wire_put_map(&w, 1);
    wire_kv_bin(&w, "data", big, sizeof big);
    aicfn_error e;
    assert_int_equal(wire_writer_status(&w, &e), AICFN_E_TOO_LARGE);
    size_t n = 1;
    assert_null(wire_writer_take(&w, &n));
    assert_int_equal(n, 0);
    wire_writer_reset(&w);
    assert_int_equal(wire_writer_status(&w, &e), AICFN_OK);
    wire_writer_fini(&w);

    /* encoders refuse inconsistent tensors and bad params */
    wire_writer_init(&w);
    wire_tensor t = {
        .name = "x", .dtype = AICFN_DTYPE_FP32, .ndim = 1, .shape = {3}, .data = big, .nbytes = 8};
    wire_invoke_req r = {.id = 1, .fn = "f", .n_inputs = 1, .inputs = &t};
    assert_int_equal(wire_encode_invoke_req(&w, &r, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "inputs[0]"));
    t.nbytes = 12;
    const uint8_t notmap[] = {0x91, 0x01};
    r.params = notmap;
    r.params_len = sizeof notmap;
    wire_writer_reset(&w);
    assert_int_equal(wire_encode_invoke_req(&w, &r, &e), AICFN_E_INVALID);
    r.params = NULL;
    r.fn = "";
    assert_int_equal(wire_encode_invoke_req(&w, &r, &e), AICFN_E_INVALID);
    wire_writer_fini(&w);
}

static void raw_find_and_skip(void **state) {
    (void)state;
    wire_writer w;
    wire_writer_init(&w);
    wire_put_map(&w, 3);
    wire_kv_u64(&w, "a", 1);
    wire_put_str(&w, "b");
    wire_put_array(&w, 2);
    wire_put_str(&w, "x");
    wire_put_map(&w, 0);
    wire_kv_str(&w, "c", "z");
    size_t off, len;
    assert_int_equal(wire_raw_find(w.data, w.len, "b", &off, &len, NULL), AICFN_OK);
    assert_int_equal(len, 4); /* 0x92 0xa1 'x' 0x80 */
    assert_int_equal(w.data[off], 0x92);
    assert_int_equal(wire_raw_find(w.data, w.len, "nope", &off, &len, NULL), AICFN_E_NOT_FOUND);
    size_t pos = 0;
    assert_int_equal(wire_skip(w.data, w.len, &pos, NULL), AICFN_OK);
    assert_int_equal(pos, w.len);
    pos = 0;
    assert_int_equal(wire_skip(w.data, w.len - 1, &pos, NULL), AICFN_E_PROTOCOL);
    wire_writer_fini(&w);
}

/* bundle: the request and reply round-trip their parts byte for byte (each part then
 * parses on its own); every malformed shape is refused naming the key or the index. */
static void bundle_round_trip_and_refusals(void **state) {
    (void)state;
    size_t l1, l2;
    uint8_t *r1 = encode_request(&l1), *r2 = encode_request(&l2);
    wire_part in[2] = {{r1, l1}, {r2, l2}};
    wire_writer w;
    wire_writer_init(&w);
    assert_int_equal(wire_encode_bundle_req(&w, 77, in, 2, NULL), AICFN_OK);
    wire_doc doc;
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_header h;
    assert_int_equal(wire_decode_header(&doc, &h, NULL), AICFN_OK);
    assert_string_equal(h.t, WIRE_T_BUNDLE);
    assert_int_equal(h.id, 77);
    wire_part out[4];
    uint32_t n = 0;
    assert_int_equal(wire_decode_bundle(&doc, "calls", out, 4, &n, NULL), AICFN_OK);
    assert_int_equal(n, 2);
    for (uint32_t i = 0; i < 2; i++) {
        assert_int_equal(out[i].len, in[i].len);
        assert_memory_equal(out[i].data, in[i].data, in[i].len);
        wire_doc part;
        wire_invoke_req q;
        assert_int_equal(wire_doc_parse(&part, out[i].data, out[i].len, NULL, NULL), AICFN_OK);
        assert_int_equal(wire_decode_invoke_req(&part, &q, NULL), AICFN_OK);
        wire_doc_fini(&part);
    }
    /* more parts than the caller allows */
    aicfn_error err;
    assert_int_equal(wire_decode_bundle(&doc, "calls", out, 1, &n, &err), AICFN_E_PROTOCOL);
    assert_non_null(strstr(err.msg, "'calls' holds 2 parts"));
    assert_int_equal(n, 0);
    /* a request has no "replies" */
    assert_int_equal(wire_decode_bundle(&doc, "replies", out, 4, &n, &err), AICFN_E_PROTOCOL);
    assert_non_null(strstr(err.msg, "replies"));
    wire_doc_fini(&doc);

    /* the reply: {v, id, ok:true, replies:[...]}, no t */
    wire_writer_reset(&w);
    wire_writer e;
    wire_writer_init(&e);
    assert_int_equal(wire_encode_error_reply(&e, 9, AICFN_E_TIMEOUT, "late", NULL), AICFN_OK);
    wire_part rin[1] = {{e.data, e.len}};
    assert_int_equal(wire_encode_bundle_reply(&w, 77, rin, 1, NULL), AICFN_OK);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    wire_reply_head rh;
    assert_int_equal(wire_decode_reply_head(&doc, &rh, NULL), AICFN_OK);
    assert_true(rh.ok);
    assert_int_equal(rh.id, 77);
    assert_int_equal(wire_decode_bundle(&doc, "replies", out, 4, &n, NULL), AICFN_OK);
    assert_int_equal(n, 1);
    assert_memory_equal(out[0].data, e.data, e.len);
    wire_doc_fini(&doc);

    /* empty, not an array, an element that is not a bin */
    wire_writer_reset(&w);
    wire_put_map(&w, 4);
    wire_kv_u64(&w, "v", 1);
    wire_kv_str(&w, "t", WIRE_T_BUNDLE);
    wire_kv_u64(&w, "id", 1);
    wire_put_str(&w, "calls");
    wire_put_array(&w, 0);
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_bundle(&doc, "calls", out, 4, &n, &err), AICFN_E_PROTOCOL);
    assert_non_null(strstr(err.msg, "0 parts"));
    wire_doc_fini(&doc);
    wire_writer_reset(&w);
    wire_put_map(&w, 2);
    wire_kv_u64(&w, "v", 1);
    wire_kv_str(&w, "calls", "x");
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_bundle(&doc, "calls", out, 4, &n, &err), AICFN_E_PROTOCOL);
    assert_non_null(strstr(err.msg, "calls"));
    wire_doc_fini(&doc);
    wire_writer_reset(&w);
    wire_put_map(&w, 2);
    wire_kv_u64(&w, "v", 1);
    wire_put_str(&w, "calls");
    wire_put_array(&w, 2);
    wire_put_bin(&w, r1, l1);
    wire_put_str(&w, "not a bin");
    assert_int_equal(wire_doc_parse(&doc, w.data, w.len, NULL, NULL), AICFN_OK);
    assert_int_equal(wire_decode_bundle(&doc, "calls", out, 4, &n, &err), AICFN_E_PROTOCOL);
    assert_non_null(strstr(err.msg, "calls[1] is not a bin"));
    wire_doc_fini(&doc);
    wire_writer_fini(&e);
    wire_writer_fini(&w);
    free(r1);
    free(r2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(invoke_request_round_trip),
        cmocka_unit_test(invoke_request_minimal_defaults),
        cmocka_unit_test(spec_params_are_bounded),
        cmocka_unit_test(invoke_reply_round_trip),
        cmocka_unit_test(error_reply_round_trip),
        cmocka_unit_test(not_run_reply_round_trip),
        cmocka_unit_test(status_round_trip),
        cmocka_unit_test(status_loads_are_checked),
        cmocka_unit_test(every_strict_prefix_is_rejected),
        cmocka_unit_test(trailing_bytes_rejected),
        cmocka_unit_test(hostile_headers_rejected_without_allocation),
        cmocka_unit_test(deep_nesting_rejected),
        cmocka_unit_test(item_object_and_size_limits),
        cmocka_unit_test(all_formats_validate_and_unpack),
        cmocka_unit_test(validator_agrees_with_msgpack_c),
        cmocka_unit_test(tensor_mismatches_name_the_tensor),
        cmocka_unit_test(tensor_count_and_duplicates),
        cmocka_unit_test(keys_versions_and_types),
        cmocka_unit_test(writer_limits_and_encoder_checks),
        cmocka_unit_test(raw_find_and_skip),
        cmocka_unit_test(bundle_round_trip_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
