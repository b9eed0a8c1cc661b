/* test_oip.c: Open Inference Protocol v2 JSON <-> tensors (gateway/oip.c): every
 * datatype, nested and flat data, the binary tensor extension both ways, parameters as
 * msgpack, checks against model metadata, and the errors that name the tensor. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
// clang-format on

#include <jansson.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/tunables.h"
#include "common/wire.h"
#include "gateway/oip.h"
#include "gateway/registry.h"

static int parse(const char *json, oip_request *r, aicfn_error *e) {
    return oip_request_parse((const uint8_t *)json, strlen(json), strlen(json), r, e);
}

static void expect_fail(const char *json, int code, const char *needle) {
    oip_request r;
    aicfn_error e = {0};
    int rc = parse(json, &r, &e);
    if (rc != code || strstr(e.msg, needle) == NULL)
        fail_msg("parse(%s): rc %d (want %d), msg '%s' (want '%s')", json, rc, code, e.msg, needle);
    /* a failed parse leaves nothing to free, and a free of it is harmless */
    oip_request_free(&r);
}

static float f32_at(const wire_tensor *t, size_t i) {
    float f;
    memcpy(&f, t->data + 4 * i, 4);
    return f;
}

static void parses_every_datatype(void **state) {
    (void)state;
    const char *json =
        "{\"id\":\"r1\",\"inputs\":["
        "{\"name\":\"x\",\"shape\":[2,3],\"datatype\":\"FP32\",\"data\":[[1,2.5,-3],[4,5,6e-1]]},"
        "{\"name\":\"i\",\"shape\":[3],\"datatype\":\"INT64\",\"data\":[-9223372036854775808,0,"
        "9223372036854775807]},"
        "{\"name\":\"u8\",\"shape\":[2],\"datatype\":\"UINT8\",\"data\":[0,255]},"
        "{\"name\":\"i16\",\"shape\":[2],\"datatype\":\"INT16\",\"data\":[-32768,32767]},"
        "{\"name\":\"b\",\"shape\":[3],\"datatype\":\"BOOL\",\"data\":[true,false,true]},"
        "{\"name\":\"s\",\"shape\":[2],\"datatype\":\"BYTES\",\"data\":[\"hi\",\"\\u00e9\\u0000z\"]},"
        "{\"name\":\"h\",\"shape\":[4],\"datatype\":\"FP16\",\"data\":[1,65504,-2,5.960464477539063e-08]},"
        "{\"name\":\"bf\",\"shape\":[2],\"datatype\":\"BF16\",\"data\":[1,3.140625]},"
        "{\"name\":\"d\",\"shape\":[],\"datatype\":\"FP64\",\"data\":0.1}"
        "]}";
    oip_request r;
    aicfn_error e;
    assert_int_equal(parse(json, &r, &e), AICFN_OK);
    assert_string_equal(r.id, "r1");
    assert_int_equal(r.n_inputs, 9);
    assert_null(r.params);
    assert_int_equal(r.n_outputs, 0);
    const wire_tensor *x = &r.inputs[0];
    assert_string_equal(x->name, "x");
    assert_int_equal(x->dtype, AICFN_DTYPE_FP32);
    assert_int_equal(x->ndim, 2);
    assert_int_equal(x->nbytes, 24);
    assert_true(f32_at(x, 1) == 2.5f && f32_at(x, 2) == -3.0f && f32_at(x, 5) == 0.6f);
    int64_t i64[3];
    memcpy(i64, r.inputs[1].data, 24);
    assert_true(i64[0] == INT64_MIN && i64[1] == 0 && i64[2] == INT64_MAX);
    assert_int_equal(r.inputs[2].data[1], 255);
    int16_t i16[2];
    memcpy(i16, r.inputs[3].data, 4);
    assert_true(i16[0] == -32768 && i16[1] == 32767);
    assert_memory_equal(r.inputs[4].data, "\1\0\1", 3);
    const wire_tensor *s = &r.inputs[5];
    assert_int_equal(s->nbytes, 4 + 2 + 4 + 4);
    assert_memory_equal(s->data, "\2\0\0\0hi\4\0\0\0\xc3\xa9\0z", 14);
    uint16_t h[4];
    memcpy(h, r.inputs[6].data, 8);
    assert_int_equal(h[0], 0x3c00);
    assert_int_equal(h[1], 0x7bff);
    assert_int_equal(h[2], 0xc000);
    assert_int_equal(h[3], 0x0001); /* smallest subnormal */
    uint16_t bf[2];
    memcpy(bf, r.inputs[7].data, 4);
    assert_int_equal(bf[0], 0x3f80);
    assert_int_equal(bf[1], 0x4049);
    double d;
    memcpy(&d, r.inputs[8].data, 8);
    assert_true(d == 0.1);
    assert_int_equal(r.inputs[8].ndim, 0);
    oip_request_free(&r);
    oip_request_free(NULL);
}

static void parameters_and_outputs(void **state) {
    (void)state;
    const char *json = "{\"parameters\":{\"binary_data_output\":true,\"temp\":0.5,\"tag\":\"a\","
                       "\"n\":null},\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"INT32\","
                       "\"data\":[7]}],\"outputs\":[{\"name\":\"y\"},{\"name\":\"z\",\"parameters\":"
                       "{\"binary_data\":false}}]}";
    oip_request r;
    aicfn_error e;
    assert_int_equal(parse(json, &r, &e), AICFN_OK);
    assert_true(r.binary_output);
    assert_int_equal(r.n_outputs, 2);
    assert_string_equal(r.outputs[0].name, "y");
    assert_true(r.outputs[0].binary);
    assert_false(r.outputs[1].binary);
    assert_non_null(r.params);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)r.params, r.params_len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, r.params_len);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(u.data.via.map.size, 4);
    int saw_temp = 0;
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        if (kv->key.via.str.size == 4 && memcmp(kv->key.via.str.ptr, "temp", 4) == 0) {
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_FLOAT64);
            assert_true(kv->val.via.f64 == 0.5);
            saw_temp = 1;
        }
    }
    assert_true(saw_temp);
    msgpack_unpacked_destroy(&u);
    oip_request_free(&r);
}

static void rejects_bad_requests(void **state) {
    (void)state;
    expect_fail("{\"inputs\":[", AICFN_E_INVALID, "malformed JSON");
    expect_fail("", AICFN_E_INVALID, "empty");
    expect_fail("[1,2]", AICFN_E_INVALID, "JSON object");
    expect_fail("{\"inputs\":[]}", AICFN_E_INVALID, "non-empty");
    expect_fail(
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[2],\"datatype\":\"FP32\",\"data\":[1,2]}],\"inputs\":[]}",
        AICFN_E_INVALID, "malformed JSON");
    expect_fail("{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,3]}]}",
                AICFN_E_INVALID, "input 'x': shape holds 4 elements but data has 3");
    expect_fail("{\"inputs\":[{\"name\":\"x\",\"shape\":[2],\"datatype\":\"FP33\",\"data\":[1,2]}]}",
                AICFN_E_UNSUPPORTED, "input 'x': unknown datatype 'FP33'");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"INT8\",\"data\":[300]}]}",
                AICFN_E_INVALID, "input 'q': element 0 (300) is out of range for INT8");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"UINT32\",\"data\":[-1]}]}",
                AICFN_E_INVALID, "out of range for UINT32");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"INT32\",\"data\":[1.5]}]}",
                AICFN_E_INVALID, "input 'q': element 0 is not an integer");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"BOOL\",\"data\":[1]}]}",
                AICFN_E_INVALID, "not true/false");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[\"1\"]}]}",
                AICFN_E_INVALID, "not a number");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1e39]}]}",
                AICFN_E_INVALID, "overflows FP32");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP16\",\"data\":[70000]}]}",
                AICFN_E_INVALID, "overflows FP16");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[3]}]}",
                AICFN_E_INVALID, "not a string");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\"}]}", AICFN_E_INVALID,
                "input 'q': \"data\" missing");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[-1],\"datatype\":\"FP32\",\"data\":[]}]}",
                AICFN_E_INVALID, "shape[0]");
    expect_fail(
        "{\"inputs\":[{\"name\":\"q\",\"shape\":[1,1,1,1,1,1,1,1,1],\"datatype\":\"FP32\",\"data\":[1]}]}",
        AICFN_E_INVALID, "9 dims");
    expect_fail(
        "{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[[[[[[[[[[1]]]]]]]]]]}]}",
        AICFN_E_INVALID, "nested deeper");
    /* Nested data follows the shape: ragged rows, or rows of another shape, are refused
     * even when they hold as many elements. */
    expect_fail(
        "{\"inputs\":[{\"name\":\"q\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[[1,2,3],[4]]}]}",
        AICFN_E_INVALID, "an array at nesting level 1 has 3 elements, shape[1] is 2");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[4],\"datatype\":\"FP32\",\"data\":[[1,2],[3,4]]}]}",
                AICFN_E_INVALID, "an array at nesting level 0 has 2 elements, shape[0] is 4");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[[1,2],3,4]}]}",
                AICFN_E_INVALID, "input 'q'");
    expect_fail(
        "{\"inputs\":[{\"name\":\"q\",\"shape\":[2,1],\"datatype\":\"FP32\",\"data\":[[[1]],[[2]]]}]}",
        AICFN_E_INVALID, "deeper than the shape's 2 dimensions");
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]},"
                "{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}",
                AICFN_E_INVALID, "input 'q' appears twice");
    expect_fail("{\"inputs\":[{\"name\":\"\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}",
                AICFN_E_INVALID, "\"name\"");
    expect_fail("{\"inputs\":[{\"name\":\"a\\u0000b\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}",
                AICFN_E_INVALID, "\"name\"");
    expect_fail(
        "{\"inputs\":[{\"name\":\"q\",\"shape\":[4294967296,4294967296,4294967296],\"datatype\":\"FP32\","
        "\"data\":[1]}]}",
        AICFN_E_INVALID, "overflows");
    expect_fail(
        "{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],\"outputs\":[{}]}",
        AICFN_E_INVALID, "outputs[0]");
    expect_fail(
        "{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],\"parameters\":"
        "{\"binary_data_output\":1}}",
        AICFN_E_INVALID, "binary_data_output");
    /* A huge shape with no data is refused before anything is allocated for it. */
    expect_fail("{\"inputs\":[{\"name\":\"q\",\"shape\":[1000000000000],\"datatype\":\"FP64\",\"data\":[]}]}",
                AICFN_E_INVALID, "shape holds 1000000000000 elements but data has 0");
    /* More values than the limit: refused before parsing. */
    size_t n = (AICFN_HTTP_MAX_JSON_VALUES + 10) * 2 + 100;
    char *big = malloc(n);
    size_t off = (size_t)snprintf(
        big, n, "{\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[");
    for (unsigned i = 0; i < AICFN_HTTP_MAX_JSON_VALUES + 5; i++) {
        big[off++] = '0';
        big[off++] = ',';
    }
    memcpy(big + off, "0]}]}", 6);
    expect_fail(big, AICFN_E_TOO_LARGE, "values");
    free(big);
    /* Containers count for what jansson builds of them: a fifth as many empty objects
     * (3 bytes each, 225 bytes of memory each) are refused too. */
    size_t nobj = AICFN_HTTP_MAX_JSON_VALUES / 5 + 10;
    big = malloc(nobj * 3 + 64);
    off = (size_t)snprintf(big, nobj * 3 + 64, "{\"inputs\":[");
    for (size_t i = 0; i < nobj; i++) {
        memcpy(big + off, "{},", 3);
        off += 3;
    }
    memcpy(big + off - 1, "]}", 3);
    expect_fail(big, AICFN_E_TOO_LARGE, "values");
    free(big);
}

/* The wire invoke the gateway sends for r, through wire_doc_parse (wire_guard.c's
 * limits): the code of the parse. */
static int wire_check(const oip_request *r) {
    wire_invoke_req req = {.id = 1,
                           .fn = "f",
                           .n_inputs = r->n_inputs,
                           .inputs = r->inputs,
                           .params = r->params,
                           .params_len = r->params_len};
    wire_writer w;
    wire_writer_init(&w);
    aicfn_error e;
    assert_int_equal(wire_encode_invoke_req(&w, &req, &e), AICFN_OK);
    wire_doc doc;
    int rc = wire_doc_parse(&doc, w.data, w.len, NULL, &e);
    if (rc == AICFN_OK) wire_doc_fini(&doc);
    wire_writer_fini(&w);
    return rc;
}

#define Q_INPUT "\"inputs\":[{\"name\":\"q\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]"

/* "parameters" reach a handler as text key/values (worker_decode_params): what a worker
 * takes (strings, numbers, bools, null) passes and makes a valid wire message; what it
 * refuses (a nested value, a NUL in a string, too many entries, a name too long) the
 * front refuses itself, naming the parameter, instead of routing a call every worker
 * would refuse. */
static void parameters_are_what_a_worker_takes(void **state) {
    (void)state;
    oip_request r;
    aicfn_error e;
    assert_int_equal(
        parse("{\"parameters\":{\"s\":\"x\",\"i\":-3,\"f\":1.5,\"b\":false,\"z\":null}," Q_INPUT "}", &r, &e),
        AICFN_OK);
    assert_int_equal(wire_check(&r), AICFN_OK);
    oip_request_free(&r);
    expect_fail("{\"parameters\":{\"opts\":{\"a\":1}}," Q_INPUT "}", AICFN_E_INVALID,
                "parameter 'opts' must be a string, number, bool or null");
    expect_fail("{\"parameters\":{\"tags\":[1]}," Q_INPUT "}", AICFN_E_INVALID, "parameter 'tags' must be");
    expect_fail("{\"parameters\":{\"s\":\"a\\u0000b\"}," Q_INPUT "}", AICFN_E_INVALID,
                "parameter 's' holds a NUL character");

    size_t n = 64 + (AICFN_MAX_PARAMS + 1) * 16 + 128;
    char *j = malloc(n);
    assert_non_null(j);
    size_t off = (size_t)snprintf(j, n, "{\"parameters\":{");
    for (int i = 0; i <= AICFN_MAX_PARAMS; i++)
        off += (size_t)snprintf(j + off, n - off, "%s\"p%d\":1", i ? "," : "", i);
    snprintf(j + off, n - off, "}," Q_INPUT "}");
    expect_fail(j, AICFN_E_INVALID, "has 257 entries (at most 256)");
    free(j);
    char name[AICFN_MAX_NAME_BYTES + 1];
    memset(name, 'k', AICFN_MAX_NAME_BYTES);
    name[AICFN_MAX_NAME_BYTES] = '\0';
    n = 2 * AICFN_MAX_NAME_BYTES + 256;
    j = malloc(n);
    assert_non_null(j);
    snprintf(j, n, "{\"parameters\":{\"%s\":1}," Q_INPUT "}", name);
    expect_fail(j, AICFN_E_INVALID, "parameter name of 256 bytes (at most 255)");
    free(j);
}

static void binary_extension_inputs(void **state) {
    (void)state;
    const char *hdr =
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[2],\"datatype\":\"FP32\",\"parameters\":"
        "{\"binary_data_size\":8}},{\"name\":\"s\",\"shape\":[2],\"datatype\":\"BYTES\",\"parameters\":"
        "{\"binary_data_size\":11}},{\"name\":\"j\",\"shape\":[1],\"datatype\":\"INT8\",\"data\":[3]}]}";
    size_t hl = strlen(hdr);
    uint8_t body[512];
    memcpy(body, hdr, hl);
    float xs[2] = {1.5f, -2.0f};
    memcpy(body + hl, xs, 8);
    memcpy(body + hl + 8, "\3\0\0\0abc\0\0\0\0", 11);
    oip_request r;
    aicfn_error e;
    assert_int_equal(oip_request_parse(body, hl + 19, hl, &r, &e), AICFN_OK);
    assert_int_equal(r.n_inputs, 3);
    assert_ptr_equal(r.inputs[0].data, body + hl); /* no copy of binary data */
    assert_true(f32_at(&r.inputs[0], 1) == -2.0f);
    assert_int_equal(r.inputs[1].nbytes, 11);
    assert_int_equal(r.inputs[2].data[0], 3);
    oip_request_free(&r);
    /* Trailing binary bytes no input claims. */
    assert_int_equal(oip_request_parse(body, hl + 20, hl, &r, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "binary data"));
    /* Fewer bytes than declared. */
    assert_int_equal(oip_request_parse(body, hl + 18, hl, &r, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "input 's': binary_data_size 11 exceeds"));
    /* Header length beyond the body. */
    assert_int_equal(oip_request_parse(body, hl, hl + 1, &r, &e), AICFN_E_INVALID);
    /* Size that does not match shape x dtype. */
    const char *h2 = "{\"inputs\":[{\"name\":\"x\",\"shape\":[3],\"datatype\":\"FP32\",\"parameters\":"
                     "{\"binary_data_size\":8}}]}";
    memcpy(body, h2, strlen(h2));
    memcpy(body + strlen(h2), xs, 8);
    assert_int_equal(oip_request_parse(body, strlen(h2) + 8, strlen(h2), &r, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "input 'x': binary_data_size 8 does not match"));
    /* Malformed BYTES elements. */
    const char *h3 = "{\"inputs\":[{\"name\":\"s\",\"shape\":[1],\"datatype\":\"BYTES\",\"parameters\":"
                     "{\"binary_data_size\":6}}]}";
    memcpy(body, h3, strlen(h3));
    memcpy(body + strlen(h3), "\xff\0\0\0ab", 6);
    assert_int_equal(oip_request_parse(body, strlen(h3) + 6, strlen(h3), &r, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "input 's': binary BYTES"));
}

static void checks_against_metadata(void **state) {
    (void)state;
    gw_tensor_spec spec[1] = {{.name = "x", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .shape = {-1, 3}}};
    oip_request r;
    aicfn_error e;
    assert_int_equal(
        parse("{\"inputs\":[{\"name\":\"x\",\"shape\":[2,3],\"datatype\":\"FP32\",\"data\":[1,2,3,4,5,6]}]}",
              &r, &e),
        0);
    assert_int_equal(oip_request_check(&r, spec, 1, &e), AICFN_OK);
    assert_int_equal(oip_request_check(&r, NULL, 0, &e), AICFN_OK);
    spec[0].shape[1] = 4;
    assert_int_equal(oip_request_check(&r, spec, 1, &e), AICFN_E_INVALID);
    assert_string_equal(e.msg, "input 'x': shape [2,3], but the model expects [-1,4]");
    spec[0].shape[1] = 3;
    spec[0].dtype = AICFN_DTYPE_FP16;
    assert_int_equal(oip_request_check(&r, spec, 1, &e), AICFN_E_INVALID);
    assert_string_equal(e.msg, "input 'x': datatype FP32, but the model expects FP16");
    gw_tensor_spec two[2] = {{.name = "x", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .shape = {-1, 3}},
                             {.name = "y", .dtype = AICFN_DTYPE_FP32, .ndim = 0}};
    assert_int_equal(oip_request_check(&r, two, 2, &e), AICFN_E_INVALID);
    assert_string_equal(e.msg, "input 'y' is missing");
    assert_int_equal(oip_request_check(&r, &two[1], 1, &e), AICFN_E_INVALID);
    assert_string_equal(e.msg, "input 'x' is not an input of this model");
    oip_request_free(&r);
    /* Requested outputs: each must be declared, when outputs are declared at all. */
    assert_int_equal(parse("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],"
                           "\"outputs\":[{\"name\":\"p\"},{\"name\":\"q\"}]}",
                           &r, &e),
                     0);
    gw_tensor_spec outs[2] = {{.name = "p", .dtype = AICFN_DTYPE_FP32},
                              {.name = "q", .dtype = AICFN_DTYPE_FP32}};
    assert_int_equal(oip_request_check_outputs(&r, outs, 2, &e), AICFN_OK);
    assert_int_equal(oip_request_check_outputs(&r, NULL, 0, &e), AICFN_OK);
    assert_int_equal(oip_request_check_outputs(&r, outs, 1, &e), AICFN_E_INVALID);
    assert_string_equal(e.msg, "requested output 'q' is not an output of this model");
    oip_request_free(&r);
}

static void encodes_responses(void **state) {
    (void)state;
    float y[4] = {0.5f, -1.0f, 3.25f, 0.0f};
    int32_t k[2] = {-7, 2147483647};
    uint16_t hf[1] = {0x3555}; /* fp16 0.333251953125 */
    uint8_t txt[] = "\5\0\0\0hello";
    wire_tensor outs[4] = {
        {.name = "y",
         .dtype = AICFN_DTYPE_FP32,
         .ndim = 2,
         .shape = {2, 2},
         .data = (uint8_t *)y,
         .nbytes = 16},
        {.name = "k", .dtype = AICFN_DTYPE_INT32, .ndim = 1, .shape = {2}, .data = (uint8_t *)k, .nbytes = 8},
        {.name = "h", .dtype = AICFN_DTYPE_FP16, .ndim = 1, .shape = {1}, .data = (uint8_t *)hf, .nbytes = 2},
        {.name = "t", .dtype = AICFN_DTYPE_BYTES, .ndim = 1, .shape = {1}, .data = txt, .nbytes = 9},
    };
    oip_body b;
    aicfn_error e;
    assert_int_equal(oip_response_encode("mlp", 3, NULL, outs, 4, &b, &e), AICFN_OK);
    assert_int_equal(b.len, b.json_len);
    json_error_t je;
    json_t *j = json_loadb((const char *)b.body, b.len, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "model_name")), "mlp");
    assert_string_equal(json_string_value(json_object_get(j, "model_version")), "3");
    json_t *o = json_object_get(j, "outputs");
    assert_int_equal(json_array_size(o), 4);
    json_t *o0 = json_array_get(o, 0);
    assert_string_equal(json_string_value(json_object_get(o0, "datatype")), "FP32");
    assert_int_equal(json_array_size(json_object_get(o0, "shape")), 2);
    assert_true(json_number_value(json_array_get(json_object_get(o0, "data"), 2)) == 3.25);
    json_t *o1 = json_array_get(o, 1);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(o1, "data"), 0)), -7);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(o1, "data"), 1)), 2147483647);
    assert_true(json_number_value(json_array_get(json_object_get(json_array_get(o, 2), "data"), 0)) ==
                0.333251953125);
    assert_string_equal(json_string_value(json_array_get(json_object_get(json_array_get(o, 3), "data"), 0)),
                        "hello");
    json_decref(j);
    free(b.body);

    /* Selected outputs, one binary, with the request's id. */
    oip_request r;
    assert_int_equal(
        parse("{\"id\":\"abc\",\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":"
              "[1]}],\"outputs\":[{\"name\":\"k\"},{\"name\":\"y\",\"parameters\":{\"binary_data\":true}}]}",
              &r, &e),
        0);
    assert_int_equal(oip_response_encode("mlp", 1, &r, outs, 4, &b, &e), AICFN_OK);
    assert_int_equal(b.len, b.json_len + 16);
    assert_memory_equal(b.body + b.json_len, y, 16);
    j = json_loadb((const char *)b.body, b.json_len, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "abc");
    o = json_object_get(j, "outputs");
    assert_int_equal(json_array_size(o), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(o, 0), "name")), "k");
    json_t *p = json_object_get(json_array_get(o, 1), "parameters");
    assert_int_equal(json_integer_value(json_object_get(p, "binary_data_size")), 16);
    assert_null(json_object_get(json_array_get(o, 1), "data"));
    json_decref(j);
    free(b.body);
    oip_request_free(&r);

    /* A requested output the model does not produce. */
    assert_int_equal(parse("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],"
                           "\"outputs\":[{\"name\":\"nope\"}]}",
                           &r, &e),
                     0);
    assert_int_equal(oip_response_encode("mlp", 1, &r, outs, 4, &b, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "'nope'"));
    oip_request_free(&r);

    /* NaN and non-UTF-8 cannot travel as JSON data; an inconsistent output is a bug. */
    float nanv[1] = {NAN};
    wire_tensor bad = {.name = "n",
                       .dtype = AICFN_DTYPE_FP32,
                       .ndim = 1,
                       .shape = {1},
                       .data = (uint8_t *)nanv,
                       .nbytes = 4};
    assert_int_equal(oip_response_encode("m", 1, NULL, &bad, 1, &b, &e), AICFN_E_UNSUPPORTED);
    assert_non_null(strstr(e.msg, "output 'n'"));
    uint8_t raw[] = "\2\0\0\0\xff\xfe";
    wire_tensor bt = {
        .name = "t", .dtype = AICFN_DTYPE_BYTES, .ndim = 1, .shape = {1}, .data = raw, .nbytes = 6};
    assert_int_equal(oip_response_encode("m", 1, NULL, &bt, 1, &b, &e), AICFN_E_UNSUPPORTED);
    wire_tensor bn = {
        .name = "\xff\xfe", .dtype = AICFN_DTYPE_UINT8, .ndim = 1, .shape = {1}, .data = raw, .nbytes = 1};
    /* An output name only the handler chose: its fault (500), not the caller's. */
    assert_int_equal(oip_response_encode("m", 1, NULL, &bn, 1, &b, &e), AICFN_E_HANDLER);
    assert_non_null(strstr(e.msg, "UTF-8"));
    bad.nbytes = 3;
    assert_int_equal(oip_response_encode("m", 1, NULL, &bad, 1, &b, &e), AICFN_E_INTERNAL);
    /* UINT64: 2^63-1 goes out exactly; past it JSON data here could only round it. */
    uint64_t u64[2] = {INT64_MAX, (uint64_t)INT64_MAX + 1};
    wire_tensor bu = {
        .name = "u", .dtype = AICFN_DTYPE_UINT64, .ndim = 1, .shape = {1}, .data = (uint8_t *)u64, .nbytes = 8};
    assert_int_equal(oip_response_encode("m", 1, NULL, &bu, 1, &b, &e), AICFN_OK);
    assert_non_null(memmem(b.body, b.len, "[9223372036854775807]", 21));
    free(b.body);
    bu.data = (uint8_t *)&u64[1];
    assert_int_equal(oip_response_encode("m", 1, NULL, &bu, 1, &b, &e), AICFN_E_UNSUPPORTED);
    assert_non_null(strstr(e.msg, "output 'u'"));
    assert_non_null(strstr(e.msg, "binary_data"));

    /* A reply too large for JSON values (a 2 MiB uint8 output would take ~100 MB of
     * jansson heap) is refused with a pointer to binary_data; as binary it goes out. */
    size_t big_n = AICFN_HTTP_MAX_JSON_VALUES + 1;
    uint8_t *big_data = calloc(big_n, 1);
    assert_non_null(big_data);
    wire_tensor big = {.name = "big",
                       .dtype = AICFN_DTYPE_UINT8,
                       .ndim = 1,
                       .shape = {(int64_t)big_n},
                       .data = big_data,
                       .nbytes = big_n};
    assert_int_equal(oip_response_encode("m", 1, NULL, &big, 1, &b, &e), AICFN_E_TOO_LARGE);
    assert_non_null(strstr(e.msg, "binary_data"));
    assert_int_equal(parse("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],"
                           "\"parameters\":{\"binary_data_output\":true}}",
                           &r, &e),
                     0);
    assert_int_equal(oip_response_encode("m", 1, &r, &big, 1, &b, &e), AICFN_OK);
    assert_int_equal(b.len, b.json_len + big_n);
    free(b.body);
    oip_request_free(&r);
    free(big_data);
}

static void fp16_bf16_roundtrip_exactly(void **state) {
    (void)state;
    /* Every finite FP16 and BF16 value survives output (to double) then input (back). */
    char json[256];
    for (int which = 0; which < 2; which++) {
        const char *dt = which ? "BF16" : "FP16";
        int checked = 0;
        for (uint32_t bits = 0; bits < 65536; bits++) {
            uint16_t h = (uint16_t)bits;
            wire_tensor t = {.name = "v",
                             .dtype = which ? AICFN_DTYPE_BF16 : AICFN_DTYPE_FP16,
                             .ndim = 1,
                             .shape = {1},
                             .data = (uint8_t *)&h,
                             .nbytes = 2};
            oip_body b;
            aicfn_error e;
            /* Exponent all ones (FP16 5 bits, BF16 8): NaN or infinite, the only refusals. */
            bool special = which ? (h & 0x7f80) == 0x7f80 : (h & 0x7c00) == 0x7c00;
            int rc = oip_response_encode("m", 1, NULL, &t, 1, &b, &e);
            if (special) {
                if (rc != AICFN_E_UNSUPPORTED) fail_msg("%s 0x%04x (NaN/Inf): encode gave %d", dt, h, rc);
                continue;
            }
            if (rc != AICFN_OK) fail_msg("%s 0x%04x: %s", dt, h, e.msg);
            json_t *j = json_loadb((const char *)b.body, b.len, 0, NULL);
            double v = json_number_value(
                json_array_get(json_object_get(json_array_get(json_object_get(j, "outputs"), 0), "data"), 0));
            json_decref(j);
            free(b.body);
            snprintf(json, sizeof json,
                     "{\"inputs\":[{\"name\":\"v\",\"shape\":[1],\"datatype\":\"%s\",\"data\":[%.17g]}]}", dt,
                     v);
            oip_request r;
            assert_int_equal(parse(json, &r, &e), AICFN_OK);
            uint16_t back;
            memcpy(&back, r.inputs[0].data, 2);
            if (back != h && !(v == 0 && (back & 0x7fff) == 0 && (h & 0x7fff) == 0))
                fail_msg("%s 0x%04x -> %.17g -> 0x%04x", dt, h, v, back);
            oip_request_free(&r);
            checked++;
        }
        assert_int_equal(checked, which ? 65280 : 63488); /* every finite value */
    }
}

static void small_documents(void **state) {
    (void)state;
    char *s = oip_error_json(AICFN_E_NOT_FOUND, "model 'x' not found");
    assert_string_equal(s, "{\"error\":\"model 'x' not found\",\"code\":6,\"name\":\"AICFN_E_NOT_FOUND\"}");
    free(s);
    s = oip_error_json(AICFN_E_INVALID, "bad \xff byte");
    assert_non_null(strstr(s, "not valid UTF-8"));
    free(s);
    gw_tensor_spec in[1] = {{.name = "x", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .shape = {-1, 16}}};
    gw_tensor_spec out[1] = {{.name = "y", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .shape = {-1, 4}}};
    uint32_t vers[2] = {1, 2};
    s = oip_model_metadata_json("mlp", vers, 2, in, 1, out, 1);
    assert_string_equal(
        s, "{\"name\":\"mlp\",\"versions\":[\"1\",\"2\"],\"platform\":\"aicfn\",\"inputs\":[{\"name\":"
           "\"x\",\"datatype\":\"FP32\",\"shape\":[-1,16]}],\"outputs\":[{\"name\":\"y\",\"datatype\":"
           "\"FP32\",\"shape\":[-1,4]}]}");
    free(s);
    const char *ext[] = {"binary_tensor_data"};
    s = oip_server_metadata_json("aicfn", "0.1.0", ext, 1);
    assert_string_equal(s,
                        "{\"name\":\"aicfn\",\"version\":\"0.1.0\",\"extensions\":[\"binary_tensor_data\"]}");
    free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_every_datatype),
        cmocka_unit_test(parameters_and_outputs),
        cmocka_unit_test(parameters_are_what_a_worker_takes),
        cmocka_unit_test(rejects_bad_requests),
        cmocka_unit_test(binary_extension_inputs),
        cmocka_unit_test(checks_against_metadata),
        cmocka_unit_test(encodes_responses),
        cmocka_unit_test(fp16_bf16_roundtrip_exactly),
        cmocka_unit_test(small_documents),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
