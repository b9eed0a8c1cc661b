/* oip.c: Open Inference Protocol v2 JSON documents <-> aicfn named tensors (jansson for
 * JSON, msgpack-c for the request parameters handed on as the wire `params` map).
 *
 * Not for: HTTP (gateway/http.c). See oip.h for the rules each function enforces. */
#include "gateway/oip.h"

#include <jansson.h>
#include <math.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/tunables.h"
#include "gateway/registry.h"

/* ---- Owned allocations of a request ---- */

typedef struct oip_priv {
    void **ptrs;
    size_t n, cap;
} oip_priv;

static void *oip_keep(oip_request *r, void *p) {
    if (p == NULL) return NULL;
    oip_priv *pv = r->priv_;
    if (pv->n == pv->cap) {
        size_t cap = pv->cap ? pv->cap * 2 : 16;
        void **np = realloc(pv->ptrs, cap * sizeof *np);
        if (np == NULL) {
            free(p);
            return NULL;
        }
        pv->ptrs = np;
        pv->cap = cap;
    }
    pv->ptrs[pv->n++] = p;
    return p;
}

void oip_request_free(oip_request *r) {
    if (r == NULL) return;
    oip_priv *pv = r->priv_;
    if (pv) {
        for (size_t i = 0; i < pv->n; i++)
            free(pv->ptrs[i]);
        free(pv->ptrs);
        free(pv);
    }
    memset(r, 0, sizeof *r);
}

/* ---- Number conversions ---- */

/* Rounds |a| (finite, > 0) to a binary float with `mbits` fraction bits and exponent
 * bias `bias` (max exponent = bias), round to nearest even, subnormals included.
 * Returns the encoding without sign, or -1 on overflow. */
static int64_t oip_round_small_float(double a, int mbits, int bias) {
    int e;
    frexp(a, &e); /* a = m * 2^e, m in [0.5, 1): the unbiased exponent is e - 1 */
    int E = e - 1;
    if (E >= 1 - bias) {
        double r = nearbyint(ldexp(a, mbits - E)); /* in [2^mbits, 2^(mbits+1)] */
        int64_t mant = (int64_t)r;
        if (mant == (1ll << (mbits + 1))) {
            mant = 1ll << mbits;
            E++;
        }
        if (E > bias) return -1;
        return ((int64_t)(E + bias) << mbits) | (mant - (1ll << mbits));
    }
    /* Subnormal: value = r * 2^(1 - bias - mbits); r == 2^mbits encodes the smallest normal. */
    return (int64_t)nearbyint(ldexp(a, bias - 1 + mbits));
}

static int oip_to_small_float(double v, int mbits, int bias, uint16_t *out) {
    uint16_t sign = signbit(v) ? (uint16_t)(1u << (mbits + (bias == 15 ? 5 : 8))) : 0;
    double a = fabs(v);
    if (a == 0) {
        *out = sign;
        return 0;
    }
    int64_t enc = oip_round_small_float(a, mbits, bias);
    if (enc < 0) return -1;
    *out = (uint16_t)(sign | (uint16_t)enc);
    return 0;
}

static double oip_from_small_float(uint16_t h, int mbits, int bias) {
    int ebits = bias == 15 ? 5 : 8;
    int sign = (h >> (mbits + ebits)) & 1;
    int E = (h >> mbits) & ((1 << ebits) - 1);
    uint32_t m = h & ((1u << mbits) - 1);
    double v;
    if (E == 0)
        v = ldexp((double)m, 1 - bias - mbits);
    else if (E == (1 << ebits) - 1)
        v = m ? NAN : INFINITY;
    else
        v = ldexp((double)(m | (1u << mbits)), E - bias - mbits);
    return sign ? -v : v;
}

static void oip_store_le(uint8_t *p, uint64_t v, unsigned size) {
    for (unsigned i = 0; i < size; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t oip_load_le(const uint8_t *p, unsigned size) {
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- Request parsing ---- */

/* What jansson would build from text, in values, counted without parsing: every value
 * but the first follows '[', '{', ',' or ':' outside strings; an array or object costs
 * OIP_CONTAINER_VALUES more (its own allocation and table: about 225 bytes against a
 * number's 50), so that a body of empty objects is bounded like one of numbers (3 MB of
 * '{},' took 236 MB when a container counted as one value). */
#define OIP_CONTAINER_VALUES 4
static uint64_t oip_count_values(const uint8_t *s, size_t n) {
    uint64_t c = 1;
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = s[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"')
            in_str = 1;
        else if (ch == '[' || ch == '{')
            c += 1 + OIP_CONTAINER_VALUES;
        else if (ch == ',' || ch == ':')
            c++;
    }
    return c;
}

typedef struct oip_tctx {
    const char *name; /* for messages */
    aicfn_dtype dt;
    uint8_t *dst; /* output cursor */
    uint8_t *end;
    aicfn_error *err;
} oip_tctx;

/* Counts leaf elements (and BYTES payload bytes) of nested data; depth-bounded. */
static int oip_count_data(const json_t *d, unsigned depth, uint64_t *n, uint64_t *bytes, const char *name,
                          aicfn_error *err) {
    if (json_is_array(d)) {
        if (depth >= AICFN_MAX_DIMS)
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': data nested deeper than %d levels",
                                   name, AICFN_MAX_DIMS);
        size_t i;
        const json_t *v;
        json_array_foreach(d, i, v) {
            int rc = oip_count_data(v, depth + 1, n, bytes, name, err);
            if (rc) return rc;
        }
        return AICFN_OK;
    }
    (*n)++;
    if (json_is_string(d)) *bytes += 4 + json_string_length(d);
    return AICFN_OK;
}

/* Nested data must follow the shape at every level ([[1,2],[3,4]] for [2,2]), as a
 * row-major nesting does: a ragged or differently nested array that happens to hold as
 * many elements is a client's mistake, refused rather than flattened into a wrong
 * tensor. Flat data (no array inside the outer one) is checked by its count alone. */
static int oip_check_nesting(const json_t *d, unsigned depth, const int64_t *shape, uint32_t ndim,
                             const char *name, aicfn_error *err) {
    if (!json_is_array(d)) {
        if (depth == ndim) return AICFN_OK;
        return aicfn_error_set(
            err, AICFN_E_INVALID,
            "input '%s': an element at nesting level %u, where the shape has %u dimensions", name, depth,
            ndim);
    }
    if (depth >= ndim)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "input '%s': data nested deeper than the shape's %u dimensions", name, ndim);
    if ((uint64_t)json_array_size(d) != (uint64_t)shape[depth])
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "input '%s': an array at nesting level %u has %zu elements, shape[%u] is %lld",
                               name, depth, json_array_size(d), depth, (long long)shape[depth]);
    size_t i;
    const json_t *v;
    json_array_foreach(d, i, v) {
        int rc = oip_check_nesting(v, depth + 1, shape, ndim, name, err);
        if (rc) return rc;
    }
    return AICFN_OK;
}

/* Whether data is an array holding an array (nested, not flat). */
static bool oip_is_nested(const json_t *d) {
    size_t i;
    const json_t *v;
    if (!json_is_array(d)) return false;
    json_array_foreach(d, i, v) {
        if (json_is_array(v)) return true;
    }
    return false;
}

static int oip_convert_one(const json_t *v, oip_tctx *c, uint64_t idx) {
    aicfn_dtype dt = c->dt;
    unsigned size = dtype_size(dt);
    switch (dt) {
    case AICFN_DTYPE_BOOL:
        if (!json_is_boolean(v))
            return aicfn_error_set(c->err, AICFN_E_INVALID,
                                   "input '%s': element %llu is not true/false (BOOL)", c->name,
                                   (unsigned long long)idx);
        *c->dst = json_is_true(v) ? 1 : 0;
        break;
    case AICFN_DTYPE_UINT8:
    case AICFN_DTYPE_UINT16:
    case AICFN_DTYPE_UINT32:
    case AICFN_DTYPE_UINT64:
    case AICFN_DTYPE_INT8:
    case AICFN_DTYPE_INT16:
    case AICFN_DTYPE_INT32:
    case AICFN_DTYPE_INT64: {
        if (!json_is_integer(v))
            return aicfn_error_set(c->err, AICFN_E_INVALID, "input '%s': element %llu is not an integer (%s)",
                                   c->name, (unsigned long long)idx, dtype_name(dt));
        json_int_t x = json_integer_value(v);
        int64_t lo = 0, hi = 0;
        dtype_int_range(dt, &lo, &hi);
        if (x < lo || x > hi)
            return aicfn_error_set(c->err, AICFN_E_INVALID,
                                   "input '%s': element %llu (%lld) is out of range for %s", c->name,
                                   (unsigned long long)idx, (long long)x, dtype_name(dt));
        oip_store_le(c->dst, (uint64_t)x, size);
        break;
    }
    case AICFN_DTYPE_FP16:
    case AICFN_DTYPE_BF16:
    case AICFN_DTYPE_FP32:
    case AICFN_DTYPE_FP64: {
        if (!json_is_number(v))
            return aicfn_error_set(c->err, AICFN_E_INVALID, "input '%s': element %llu is not a number (%s)",
                                   c->name, (unsigned long long)idx, dtype_name(dt));
        double x = json_number_value(v);
        if (dt == AICFN_DTYPE_FP64) {
            uint64_t bits;
            memcpy(&bits, &x, 8);
            oip_store_le(c->dst, bits, 8);
        } else if (dt == AICFN_DTYPE_FP32) {
            float f = (float)x;
            if (isinf(f) && !isinf(x))
                return aicfn_error_set(c->err, AICFN_E_INVALID,
                                       "input '%s': element %llu (%g) overflows FP32", c->name,
                                       (unsigned long long)idx, x);
            uint32_t bits;
            memcpy(&bits, &f, 4);
            oip_store_le(c->dst, bits, 4);
        } else {
            uint16_t h;
            if (oip_to_small_float(x, dt == AICFN_DTYPE_FP16 ? 10 : 7, dt == AICFN_DTYPE_FP16 ? 15 : 127, &h))
                return aicfn_error_set(c->err, AICFN_E_INVALID, "input '%s': element %llu (%g) overflows %s",
                                       c->name, (unsigned long long)idx, x, dtype_name(dt));
            oip_store_le(c->dst, h, 2);
        }
        break;
    }
    case AICFN_DTYPE_BYTES: {
        if (!json_is_string(v))
            return aicfn_error_set(c->err, AICFN_E_INVALID,
                                   "input '%s': element %llu is not a string (BYTES)", c->name,
                                   (unsigned long long)idx);
        size_t n = json_string_length(v);
        if (n > UINT32_MAX || (size_t)(c->end - c->dst) < 4 + n)
            return aicfn_error_set(c->err, AICFN_E_INTERNAL, "input '%s': BYTES size mismatch", c->name);
        oip_store_le(c->dst, n, 4);
        memcpy(c->dst + 4, json_string_value(v), n);
        c->dst += 4 + n;
        return AICFN_OK;
    }
    default:
        return aicfn_error_set(c->err, AICFN_E_UNSUPPORTED,
                               "input '%s': datatype %s cannot be sent as JSON data", c->name,
                               dtype_name(dt));
    }
    c->dst += size;
    return AICFN_OK;
}

static int oip_convert_data(const json_t *d, oip_tctx *c, uint64_t *idx) {
    if (json_is_array(d)) {
        size_t i;
        const json_t *v;
        json_array_foreach(d, i, v) {
            int rc = oip_convert_data(v, c, idx);
            if (rc) return rc;
        }
        return AICFN_OK;
    }
    int rc = oip_convert_one(d, c, *idx);
    (*idx)++;
    return rc;
}

/* Checks BYTES data: exactly `count` 4-byte-LE-length-prefixed elements filling len. */
static int oip_bytes_ok(const uint8_t *p, uint64_t len, uint64_t count) {
    uint64_t off = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (len - off < 4) return 0;
        uint64_t n = oip_load_le(p + off, 4);
        off += 4;
        if (len - off < n) return 0;
        off += n;
    }
    return off == len;
}

static int oip_parse_shape(const json_t *s, wire_tensor *t, const char *name, aicfn_error *err) {
    if (!json_is_array(s))
        return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': \"shape\" must be an array of integers",
                               name);
    if (json_array_size(s) > AICFN_MAX_DIMS)
        return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': shape has %zu dims (at most %d)", name,
                               json_array_size(s), AICFN_MAX_DIMS);
    t->ndim = (uint32_t)json_array_size(s);
    for (uint32_t i = 0; i < t->ndim; i++) {
        const json_t *d = json_array_get(s, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return aicfn_error_set(err, AICFN_E_INVALID,
                                   "input '%s': shape[%u] is not a non-negative integer", name, i);
        t->shape[i] = json_integer_value(d);
    }
    return AICFN_OK;
}

/* The request's "parameters" become the wire `params` map, which a worker hands to the
 * handler as text key/values (aicfn_param, find_param): at most AICFN_MAX_PARAMS entries,
 * names under AICFN_MAX_NAME_BYTES, each value a string without NUL, a number, a bool or
 * null (worker_decode_params). The front refuses anything else itself, naming the
 * parameter, instead of routing a call every worker would refuse. */
static int oip_pack_param(msgpack_packer *pk, const char *name, const json_t *v, aicfn_error *err) {
    size_t kl = strlen(name);
    if (kl >= AICFN_MAX_NAME_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID, "parameter name of %zu bytes (at most %d)", kl,
                               AICFN_MAX_NAME_BYTES - 1);
    if (json_is_string(v) && strlen(json_string_value(v)) != json_string_length(v))
        return aicfn_error_set(err, AICFN_E_INVALID, "parameter '%.64s' holds a NUL character", name);
    if (json_is_object(v) || json_is_array(v))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "parameter '%.64s' must be a string, number, bool or null (handlers read "
                               "parameters as text)",
                               name);
    msgpack_pack_str(pk, kl);
    msgpack_pack_str_body(pk, name, kl);
    switch (json_typeof(v)) {
    case JSON_STRING:
        msgpack_pack_str(pk, json_string_length(v));
        msgpack_pack_str_body(pk, json_string_value(v), json_string_length(v));
        return AICFN_OK;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(v));
        return AICFN_OK;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(v));
        return AICFN_OK;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        return AICFN_OK;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        return AICFN_OK;
    default:
        msgpack_pack_nil(pk);
        return AICFN_OK;
    }
}

static int oip_get_bool_param(const json_t *params, const char *key, bool *out, const char *what,
                              aicfn_error *err) {
    const json_t *v = params ? json_object_get(params, key) : NULL;
    if (v == NULL) return AICFN_OK;
    if (!json_is_boolean(v))
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: \"%s\" must be true or false", what, key);
    *out = json_is_true(v);
    return AICFN_OK;
}

static int oip_parse_inputs(const json_t *inputs, const uint8_t *bin, size_t bin_len, oip_request *r,
                            aicfn_error *err) {
    size_t n = json_array_size(inputs);
    r->inputs = oip_keep(r, calloc(n, sizeof *r->inputs));
    if (r->inputs == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory parsing inputs");
    size_t bin_off = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *in = json_array_get(inputs, i);
        wire_tensor *t = &r->inputs[i];
        if (!json_is_object(in))
            return aicfn_error_set(err, AICFN_E_INVALID, "inputs[%zu] must be an object", i);
        const json_t *jn = json_object_get(in, "name");
        if (!json_is_string(jn) || json_string_length(jn) == 0 ||
            json_string_length(jn) > AICFN_MAX_NAME_BYTES ||
            strlen(json_string_value(jn)) != json_string_length(jn))
            return aicfn_error_set(err, AICFN_E_INVALID,
                                   "inputs[%zu]: \"name\" must be a string of 1..%d bytes", i,
                                   AICFN_MAX_NAME_BYTES);
        const char *name = json_string_value(jn);
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->inputs[j].name, name) == 0)
                return aicfn_error_set(err, AICFN_E_INVALID, "input '%s' appears twice", name);
        t->name = oip_keep(r, strdup(name));
        if (t->name == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
        const json_t *jd = json_object_get(in, "datatype");
        if (!json_is_string(jd))
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': \"datatype\" missing or not a string",
                                   name);
        t->dtype = dtype_from_name(json_string_value(jd));
        if (t->dtype == AICFN_DTYPE_INVALID)
            return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "input '%s': unknown datatype '%.32s'", name,
                                   json_string_value(jd));
        int rc = oip_parse_shape(json_object_get(in, "shape"), t, name, err);
        if (rc) return rc;
        uint64_t elems;
        if (dtype_shape_elements(t->shape, t->ndim, &elems) != 0)
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': shape overflows", name);
        const json_t *params = json_object_get(in, "parameters");
        if (params && !json_is_object(params))
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': \"parameters\" must be an object",
                                   name);
        const json_t *bsz = params ? json_object_get(params, "binary_data_size") : NULL;
        const json_t *data = json_object_get(in, "data");
        if (bsz) {
            if (!json_is_integer(bsz) || json_integer_value(bsz) < 0)
                return aicfn_error_set(err, AICFN_E_INVALID,
                                       "input '%s': binary_data_size must be a non-negative integer", name);
            if (data)
                return aicfn_error_set(err, AICFN_E_INVALID,
                                       "input '%s': has both \"data\" and binary_data_size", name);
            uint64_t sz = (uint64_t)json_integer_value(bsz);
            if (sz > bin_len - bin_off)
                return aicfn_error_set(err, AICFN_E_INVALID,
                                       "input '%s': binary_data_size %llu exceeds the %zu binary bytes left",
                                       name, (unsigned long long)sz, bin_len - bin_off);
            const uint8_t *p = bin + bin_off;
            if (t->dtype == AICFN_DTYPE_BYTES) {
                if (!oip_bytes_ok(p, sz, elems))
                    return aicfn_error_set(
                        err, AICFN_E_INVALID,
                        "input '%s': binary BYTES data is not %llu length-prefixed elements of "
                        "%llu bytes in all",
                        name, (unsigned long long)elems, (unsigned long long)sz);
            } else {
                uint64_t want;
                if (dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &want) != 0 || want != sz)
                    return aicfn_error_set(err, AICFN_E_INVALID,
                                           "input '%s': binary_data_size %llu does not match shape and %s",
                                           name, (unsigned long long)sz, dtype_name(t->dtype));
            }
            t->data = p;
            t->nbytes = sz;
            bin_off += sz;
            continue;
        }
        if (data == NULL) return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': \"data\" missing", name);
        uint64_t count = 0, sbytes = 0;
        rc = oip_count_data(data, 0, &count, &sbytes, name, err);
        if (rc) return rc;
        if (count != elems)
            return aicfn_error_set(err, AICFN_E_INVALID,
                                   "input '%s': shape holds %llu elements but data has %llu", name,
                                   (unsigned long long)elems, (unsigned long long)count);
        if (oip_is_nested(data) && (rc = oip_check_nesting(data, 0, t->shape, t->ndim, name, err)) != 0)
            return rc;
        uint64_t nbytes;
        if (t->dtype == AICFN_DTYPE_BYTES)
            nbytes = sbytes;
        else if (dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &nbytes) != 0)
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': size overflows", name);
        /* count == elems was found by walking the JSON, so nbytes is bounded by the body. */
        uint8_t *buf = oip_keep(r, malloc(nbytes ? nbytes : 1));
        if (buf == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "input '%s': out of memory", name);
        oip_tctx c = {.name = name, .dt = t->dtype, .dst = buf, .end = buf + nbytes, .err = err};
        uint64_t idx = 0;
        rc = oip_convert_data(data, &c, &idx);
        if (rc) return rc;
        t->data = buf;
        t->nbytes = nbytes;
    }
    if (bin_off != bin_len)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "%zu bytes of binary data follow the JSON but inputs use %zu", bin_len,
                               bin_off);
    r->n_inputs = (uint32_t)n;
    return AICFN_OK;
}

static int oip_parse_doc(const json_t *root, const uint8_t *bin, size_t bin_len, oip_request *r,
                         aicfn_error *err) {
    if (!json_is_object(root))
        return aicfn_error_set(err, AICFN_E_INVALID, "the request body must be a JSON object");
    const json_t *id = json_object_get(root, "id");
    if (id && (!json_is_string(id) || json_string_length(id) > AICFN_MAX_NAME_BYTES ||
               strlen(json_string_value(id)) != json_string_length(id)))
        return aicfn_error_set(err, AICFN_E_INVALID, "\"id\" must be a string of at most %d bytes",
                               AICFN_MAX_NAME_BYTES);
    r->id = oip_keep(r, strdup(id ? json_string_value(id) : ""));
    if (r->id == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    const json_t *params = json_object_get(root, "parameters");
    if (params) {
        if (!json_is_object(params))
            return aicfn_error_set(err, AICFN_E_INVALID, "\"parameters\" must be an object");
        int rc = oip_get_bool_param(params, "binary_data_output", &r->binary_output, "parameters", err);
        if (rc) return rc;
        if (json_object_size(params) > AICFN_MAX_PARAMS)
            return aicfn_error_set(err, AICFN_E_INVALID, "\"parameters\" has %zu entries (at most %d)",
                                   json_object_size(params), AICFN_MAX_PARAMS);
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, json_object_size(params));
        const char *k;
        const json_t *x;
        json_object_foreach((json_t *)params, k, x) {
            if ((rc = oip_pack_param(&pk, k, x, err)) != AICFN_OK) break;
        }
        if (rc || sb.data == NULL) {
            msgpack_sbuffer_destroy(&sb);
            return rc ? rc : aicfn_error_set(err, AICFN_E_NOMEM, "out of memory packing parameters");
        }
        r->params_len = sb.size;
        r->params = oip_keep(r, msgpack_sbuffer_release(&sb));
        if (r->params == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    }
    const json_t *inputs = json_object_get(root, "inputs");
    if (!json_is_array(inputs) || json_array_size(inputs) == 0)
        return aicfn_error_set(err, AICFN_E_INVALID, "\"inputs\" must be a non-empty array");
    if (json_array_size(inputs) > AICFN_MAX_TENSORS)
        return aicfn_error_set(err, AICFN_E_INVALID, "%zu inputs (at most %d)", json_array_size(inputs),
                               AICFN_MAX_TENSORS);
    int rc = oip_parse_inputs(inputs, bin, bin_len, r, err);
    if (rc) return rc;
    const json_t *outputs = json_object_get(root, "outputs");
    if (outputs) {
        if (!json_is_array(outputs) || json_array_size(outputs) > AICFN_MAX_TENSORS)
            return aicfn_error_set(err, AICFN_E_INVALID, "\"outputs\" must be an array of at most %d objects",
                                   AICFN_MAX_TENSORS);
        size_t n = json_array_size(outputs);
        if (n) {
            r->outputs = oip_keep(r, calloc(n, sizeof *r->outputs));
            if (r->outputs == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < n; i++) {
            const json_t *o = json_array_get(outputs, i);
            const json_t *on = json_is_object(o) ? json_object_get(o, "name") : NULL;
            if (!json_is_string(on) || json_string_length(on) == 0 ||
                json_string_length(on) > AICFN_MAX_NAME_BYTES ||
                strlen(json_string_value(on)) != json_string_length(on))
                return aicfn_error_set(err, AICFN_E_INVALID,
                                       "outputs[%zu]: \"name\" must be a string of 1..%d bytes", i,
                                       AICFN_MAX_NAME_BYTES);
            for (size_t j = 0; j < i; j++)
                if (strcmp(r->outputs[j].name, json_string_value(on)) == 0)
                    return aicfn_error_set(err, AICFN_E_INVALID, "output '%s' requested twice",
                                           json_string_value(on));
            r->outputs[i].name = oip_keep(r, strdup(json_string_value(on)));
            if (r->outputs[i].name == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
            r->outputs[i].binary = r->binary_output;
            const json_t *op = json_object_get(o, "parameters");
            if (op && !json_is_object(op))
                return aicfn_error_set(err, AICFN_E_INVALID, "output '%s': \"parameters\" must be an object",
                                       r->outputs[i].name);
            char what[AICFN_MAX_NAME_BYTES + 16];
            snprintf(what, sizeof what, "output '%s'", r->outputs[i].name);
            rc = oip_get_bool_param(op, "binary_data", &r->outputs[i].binary, what, err);
            if (rc) return rc;
        }
        r->n_outputs = (uint32_t)n;
    }
    return AICFN_OK;
}

int oip_request_parse(const uint8_t *body, size_t len, size_t json_len, oip_request *out, aicfn_error *err) {
    memset(out, 0, sizeof *out);
    if (json_len > len)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s is %zu but the body has %zu bytes",
                               OIP_HEADER_LENGTH, json_len, len);
    if (json_len == 0) return aicfn_error_set(err, AICFN_E_INVALID, "empty request body");
    if (oip_count_values(body, json_len) > AICFN_HTTP_MAX_JSON_VALUES)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE,
                               "the JSON request has more than %u values; send large tensors as binary data",
                               (unsigned)AICFN_HTTP_MAX_JSON_VALUES);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)body, json_len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (root == NULL)
        return aicfn_error_set(err, AICFN_E_INVALID, "malformed JSON at line %d column %d: %s", jerr.line,
                               jerr.column, jerr.text);
    out->priv_ = calloc(1, sizeof(oip_priv));
    int rc = out->priv_ ? oip_parse_doc(root, body + json_len, len - json_len, out, err)
                        : aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    json_decref(root);
    if (rc) oip_request_free(out);
    return rc;
}

int oip_request_check(const oip_request *r, const gw_tensor_spec *specs, size_t n_specs, aicfn_error *err) {
    if (n_specs == 0) return AICFN_OK;
    for (uint32_t i = 0; i < r->n_inputs; i++) {
        const wire_tensor *t = &r->inputs[i];
        const gw_tensor_spec *s = NULL;
        for (size_t j = 0; j < n_specs && s == NULL; j++)
            if (strcmp(specs[j].name, t->name) == 0) s = &specs[j];
        if (s == NULL)
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s' is not an input of this model", t->name);
        if (s->dtype != t->dtype)
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': datatype %s, but the model expects %s",
                                   t->name, dtype_name(t->dtype), dtype_name(s->dtype));
        int ok = s->ndim == t->ndim;
        for (unsigned d = 0; ok && d < s->ndim; d++)
            ok = s->shape[d] < 0 || s->shape[d] == t->shape[d];
        if (!ok) {
            char want[160] = "[", got[160] = "[";
            for (unsigned d = 0; d < s->ndim; d++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "," : "",
                         (long long)s->shape[d]);
            for (unsigned d = 0; d < t->ndim; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "",
                         (long long)t->shape[d]);
            return aicfn_error_set(err, AICFN_E_INVALID, "input '%s': shape %s], but the model expects %s]",
                                   t->name, got, want);
        }
    }
    for (size_t j = 0; j < n_specs; j++) {
        int found = 0;
        for (uint32_t i = 0; i < r->n_inputs && !found; i++)
            found = strcmp(specs[j].name, r->inputs[i].name) == 0;
        if (!found) return aicfn_error_set(err, AICFN_E_INVALID, "input '%s' is missing", specs[j].name);
    }
    return AICFN_OK;
}

int oip_request_check_outputs(const oip_request *r, const gw_tensor_spec *specs, size_t n_specs,
                              aicfn_error *err) {
    if (n_specs == 0) return AICFN_OK;
    for (uint32_t i = 0; i < r->n_outputs; i++) {
        bool found = false;
        for (size_t j = 0; j < n_specs && !found; j++)
            found = strcmp(specs[j].name, r->outputs[i].name) == 0;
        if (!found)
            return aicfn_error_set(err, AICFN_E_INVALID,
                                   "requested output '%s' is not an output of this model",
                                   r->outputs[i].name);
    }
    return AICFN_OK;
}

/* ---- Response encoding ---- */

static int oip_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0)
            k = 1, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0)
            k = 2, cp = c & 0x0f;
        else if ((c & 0xf8) == 0xf0)
            k = 3, cp = c & 0x07;
        else
            return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

static int oip_check_output(const wire_tensor *t, aicfn_error *err) {
    if (t->name == NULL || t->dtype <= AICFN_DTYPE_INVALID || t->dtype >= AICFN_DTYPE_COUNT ||
        t->ndim > AICFN_MAX_DIMS || (t->nbytes && t->data == NULL))
        return aicfn_error_set(err, AICFN_E_INTERNAL, "output '%s' is malformed", t->name ? t->name : "?");
    uint64_t elems;
    if (dtype_shape_elements(t->shape, t->ndim, &elems) != 0)
        return aicfn_error_set(err, AICFN_E_INTERNAL, "output '%s': bad shape", t->name);
    if (t->dtype == AICFN_DTYPE_BYTES) {
        if (!oip_bytes_ok(t->data, t->nbytes, elems))
            return aicfn_error_set(err, AICFN_E_INTERNAL, "output '%s': BYTES data does not match its shape",
                                   t->name);
        return AICFN_OK;
    }
    uint64_t want;
    if (dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &want) != 0 || want != t->nbytes)
        return aicfn_error_set(err, AICFN_E_INTERNAL, "output '%s': %llu data bytes do not match its shape",
                               t->name, (unsigned long long)t->nbytes);
    return AICFN_OK;
}

static json_t *oip_shape_json(const int64_t *shape, unsigned ndim) {
    json_t *a = json_array();
    for (unsigned i = 0; a && i < ndim; i++)
        if (json_array_append_new(a, json_integer(shape[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* The data of one output as a flat JSON array. */
static int oip_data_json(const wire_tensor *t, json_t **out, aicfn_error *err) {
    json_t *a = json_array();
    if (a == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    unsigned size = dtype_size(t->dtype);
    uint64_t elems;
    dtype_shape_elements(t->shape, t->ndim, &elems);
    uint64_t off = 0;
    for (uint64_t i = 0; i < elems; i++) {
        json_t *v = NULL;
        const uint8_t *p = t->data + off;
        switch (t->dtype) {
        case AICFN_DTYPE_BOOL:
            v = json_boolean(*p != 0);
            break;
        case AICFN_DTYPE_UINT8:
        case AICFN_DTYPE_UINT16:
        case AICFN_DTYPE_UINT32:
        case AICFN_DTYPE_UINT64: {
            uint64_t x = oip_load_le(p, size);
            if (x > (uint64_t)INT64_MAX) { /* jansson's integers are int64: a real would round it */
                json_decref(a);
                return aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                                       "output '%s': element %llu (%llu) is past 2^63-1, which JSON data here "
                                       "cannot carry exactly; request it with binary_data",
                                       t->name, (unsigned long long)i, (unsigned long long)x);
            }
            v = json_integer((json_int_t)x);
            break;
        }
        case AICFN_DTYPE_INT8:
        case AICFN_DTYPE_INT16:
        case AICFN_DTYPE_INT32:
        case AICFN_DTYPE_INT64: {
            uint64_t x = oip_load_le(p, size);
            if (size < 8 && (x >> (8 * size - 1)) & 1) x |= ~0ull << (8 * size); /* sign-extend */
            v = json_integer((json_int_t)(int64_t)x);
            break;
        }
        case AICFN_DTYPE_FP16:
        case AICFN_DTYPE_BF16:
        case AICFN_DTYPE_FP32:
        case AICFN_DTYPE_FP64: {
            double d;
            if (t->dtype == AICFN_DTYPE_FP64) {
                uint64_t b = oip_load_le(p, 8);
                memcpy(&d, &b, 8);
            } else if (t->dtype == AICFN_DTYPE_FP32) {
                uint32_t b = (uint32_t)oip_load_le(p, 4);
                float f;
                memcpy(&f, &b, 4);
                d = f;
            } else {
                uint16_t h = (uint16_t)oip_load_le(p, 2);
                d = t->dtype == AICFN_DTYPE_FP16 ? oip_from_small_float(h, 10, 15)
                                                 : oip_from_small_float(h, 7, 127);
            }
            if (!isfinite(d)) {
                json_decref(a);
                return aicfn_error_set(
                    err, AICFN_E_UNSUPPORTED,
                    "output '%s': element %llu is NaN or infinite, which JSON cannot carry; "
                    "request it with binary_data",
                    t->name, (unsigned long long)i);
            }
            v = json_real(d);
            break;
        }
        case AICFN_DTYPE_BYTES: {
            uint32_t n = (uint32_t)oip_load_le(p, 4);
            if (!oip_utf8_valid(p + 4, n)) {
                json_decref(a);
                return aicfn_error_set(
                    err, AICFN_E_UNSUPPORTED,
                    "output '%s': element %llu is not UTF-8 text; request it with binary_data", t->name,
                    (unsigned long long)i);
            }
            v = json_stringn((const char *)p + 4, n);
            off += 4 + n;
            break;
        }
        default:
            json_decref(a);
            return aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                                   "output '%s': datatype %s cannot be sent as JSON data", t->name,
                                   dtype_name(t->dtype));
        }
        if (t->dtype != AICFN_DTYPE_BYTES) off += size;
        if (v == NULL || json_array_append_new(a, v) != 0) {
            json_decref(a);
            return aicfn_error_set(err, AICFN_E_NOMEM, "output '%s': out of memory", t->name);
        }
    }
    *out = a;
    return AICFN_OK;
}

size_t oip_response_size_bound(const oip_request *req, const wire_tensor *outputs, uint32_t n_outputs) {
    size_t total = 4096; /* the document's own fields */
    uint64_t json_elems = 0;
    for (uint32_t j = 0; j < n_outputs; j++) {
        const wire_tensor *t = &outputs[j];
        bool sent = !(req && req->n_outputs), bin = req ? req->binary_output : false;
        for (uint32_t i = 0; req && i < req->n_outputs; i++)
            if (t->name && strcmp(t->name, req->outputs[i].name) == 0) {
                sent = true;
                bin = req->outputs[i].binary;
            }
        if (!sent) continue;
        uint64_t n = 0;
        if (!bin && dtype_shape_elements(t->shape, t->ndim, &n) != AICFN_OK) n = t->nbytes;
        /* Past AICFN_HTTP_MAX_JSON_VALUES the encoder refuses (413) before building more. */
        if (!bin && (json_elems += n) > AICFN_HTTP_MAX_JSON_VALUES) break;
        /* JSON: a value per element, and for BYTES its text too (each byte escaped at worst) */
        uint64_t add =
            bin ? t->nbytes : n * OIP_JSON_VALUE_BYTES + (t->dtype == AICFN_DTYPE_BYTES ? t->nbytes * 6 : 0);
        add += 512;
        total = add > SIZE_MAX - total ? SIZE_MAX : total + (size_t)add;
    }
    return total;
}

int oip_response_encode(const char *model, uint32_t version, const oip_request *req,
                        const wire_tensor *outputs, uint32_t n_outputs, oip_body *out, aicfn_error *err) {
    memset(out, 0, sizeof *out);
    const wire_tensor *sel[AICFN_MAX_TENSORS];
    bool bin[AICFN_MAX_TENSORS];
    uint32_t n_sel = 0;
    if (n_outputs > AICFN_MAX_TENSORS)
        return aicfn_error_set(err, AICFN_E_INTERNAL, "%u outputs (at most %d)", n_outputs,
                               AICFN_MAX_TENSORS);
    if (req && req->n_outputs) {
        for (uint32_t i = 0; i < req->n_outputs; i++) {
            const wire_tensor *t = NULL;
            for (uint32_t j = 0; j < n_outputs && t == NULL; j++)
                if (outputs[j].name && strcmp(outputs[j].name, req->outputs[i].name) == 0) t = &outputs[j];
            if (t == NULL)
                return aicfn_error_set(err, AICFN_E_INVALID,
                                       "requested output '%s' is not an output of this model",
                                       req->outputs[i].name);
            sel[n_sel] = t;
            bin[n_sel++] = req->outputs[i].binary;
        }
    } else {
        for (uint32_t j = 0; j < n_outputs; j++) {
            sel[n_sel] = &outputs[j];
            bin[n_sel++] = req ? req->binary_output : false;
        }
    }
    json_t *root = json_object();
    json_t *outs = json_array();
    char ver[16];
    snprintf(ver, sizeof ver, "%u", (unsigned)version);
    int rc = AICFN_OK;
    uint64_t bin_total = 0, json_elems = 0;
    if (root == NULL || outs == NULL || json_object_set_new(root, "model_name", json_string(model)) ||
        json_object_set_new(root, "model_version", json_string(ver)) ||
        (req && req->id && req->id[0] && json_object_set_new(root, "id", json_string(req->id)))) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory encoding the response");
        goto done;
    }
    for (uint32_t i = 0; i < n_sel && rc == AICFN_OK; i++) {
        const wire_tensor *t = sel[i];
        if ((rc = oip_check_output(t, err))) break;
        if (!bin[i]) { /* a JSON number costs ~50 bytes of heap: bound them as requests are */
            uint64_t n = 0;
            dtype_shape_elements(t->shape, t->ndim, &n);
            json_elems += n;
            if (json_elems > AICFN_HTTP_MAX_JSON_VALUES) {
                rc = aicfn_error_set(err, AICFN_E_TOO_LARGE,
                                     "output '%s': the outputs sent as JSON hold %llu elements, at most %u; "
                                     "request large outputs with \"parameters\": {\"binary_data\": true}",
                                     t->name, (unsigned long long)json_elems,
                                     (unsigned)AICFN_HTTP_MAX_JSON_VALUES);
                break;
            }
        }
        json_t *name = json_string(t->name); /* NULL for a name that is not UTF-8 */
        if (name == NULL) { /* the handler named it so: no request could have asked otherwise */
            rc = aicfn_error_set(err, AICFN_E_HANDLER,
                                 "the handler named an output with bytes that are not UTF-8: it cannot "
                                 "travel as JSON");
            break;
        }
        json_t *o = json_object();
        if (o == NULL || json_array_append_new(outs, o)) { /* append_new took o even on failure */
            json_decref(name);
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory encoding output '%s'", t->name);
            break;
        }
        if (json_object_set_new(o, "name", name) ||
            json_object_set_new(o, "datatype", json_string(dtype_name(t->dtype))) ||
            json_object_set_new(o, "shape", oip_shape_json(t->shape, t->ndim))) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory encoding output '%s'", t->name);
            break;
        }
        if (bin[i]) {
            json_t *p = json_object();
            if (p == NULL || json_object_set_new(o, "parameters", p) ||
                json_object_set_new(p, "binary_data_size", json_integer((json_int_t)t->nbytes)))
                rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
            bin_total += t->nbytes;
        } else {
            json_t *d = NULL;
            if ((rc = oip_data_json(t, &d, err)) == AICFN_OK && json_object_set_new(o, "data", d))
                rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
        }
    }
    if (rc) goto done;
    if (json_object_set(root, "outputs", outs)) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
        goto done;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    if (text == NULL) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory encoding the response");
        goto done;
    }
    size_t jl = strlen(text);
    if (bin_total > SIZE_MAX - jl - 1 || (out->body = malloc(jl + bin_total + 1)) == NULL) {
        free(text);
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "out of memory for a %llu-byte response",
                             (unsigned long long)(jl + bin_total));
        goto done;
    }
    memcpy(out->body, text, jl);
    free(text);
    size_t off = jl;
    for (uint32_t i = 0; i < n_sel; i++)
        if (bin[i] && sel[i]->nbytes) {
            memcpy(out->body + off, sel[i]->data, sel[i]->nbytes);
            off += sel[i]->nbytes;
        }
    out->body[off] = '\0';
    out->len = off;
    out->json_len = jl;
done:
    json_decref(outs);
    json_decref(root);
    return rc;
}

/* ---- Small documents ---- */

char *oip_error_json(int code, const char *msg) {
    json_t *s = json_string(msg ? msg : "");
    if (s == NULL) s = json_string("(error message was not valid UTF-8)");
    json_t *o = json_object();
    if (o == NULL) {
        json_decref(s);
        return NULL;
    }
    /* json_object_set_new takes its value, failed or not (nothing to free after it). */
    json_object_set_new(o, "error", s);
    json_object_set_new(o, "code", json_integer(code));
    json_object_set_new(o, "name", json_string(aicfn_status_name(code)));
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

static json_t *oip_specs_json(const gw_tensor_spec *specs, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        json_t *o = json_object();
        if (o == NULL || json_array_append_new(a, o) ||
            json_object_set_new(o, "name", json_string(specs[i].name)) ||
            json_object_set_new(o, "datatype", json_string(dtype_name(specs[i].dtype))) ||
            json_object_set_new(o, "shape", oip_shape_json(specs[i].shape, specs[i].ndim))) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

char *oip_model_metadata_json(const char *name, const uint32_t *versions, size_t n_versions,
                              const gw_tensor_spec *inputs, size_t n_inputs, const gw_tensor_spec *outputs,
                              size_t n_outputs) {
    json_t *o = json_object();
    json_t *vs = json_array();
    char *text = NULL;
    for (size_t i = 0; vs && i < n_versions; i++) {
        char v[16];
        snprintf(v, sizeof v, "%u", (unsigned)versions[i]);
        if (json_array_append_new(vs, json_string(v))) goto done;
    }
    if (o && vs && json_object_set_new(o, "name", json_string(name)) == 0 &&
        json_object_set(o, "versions", vs) == 0 &&
        json_object_set_new(o, "platform", json_string("aicfn")) == 0 &&
        json_object_set_new(o, "inputs", oip_specs_json(inputs, n_inputs)) == 0 &&
        json_object_set_new(o, "outputs", oip_specs_json(outputs, n_outputs)) == 0)
        text = json_dumps(o, JSON_COMPACT);
done:
    json_decref(vs);
    json_decref(o);
    return text;
}

char *oip_server_metadata_json(const char *name, const char *version, const char *const *extensions,
                               size_t n_extensions) {
    json_t *o = json_object();
    json_t *ex = json_array();
    char *text = NULL;
    for (size_t i = 0; ex && i < n_extensions; i++)
        if (json_array_append_new(ex, json_string(extensions[i]))) goto done;
    if (o && ex && json_object_set_new(o, "name", json_string(name)) == 0 &&
        json_object_set_new(o, "version", json_string(version)) == 0 &&
        json_object_set(o, "extensions", ex) == 0)
        text = json_dumps(o, JSON_COMPACT);
done:
    json_decref(ex);
    json_decref(o);
    return text;
}
