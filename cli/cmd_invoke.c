/* cmd_invoke.c: `aicfn invoke`: builds an invocation from JSON inputs, sends it, and
 * prints the reply as JSON.
 *
 * Targets: `--worker ADDR` talks to one worker directly (the raw protocol of
 * docs/protocol.md). Gateway mode (the default target, with API keys) is added beside
 * it: cli_invoke_send() is the one place a target is dialed, everything else (input
 * parsing, the request, printing the reply) is shared.
 *
 * Input format (--input NAME=VALUE or NAME=@FILE.json):
 *   {"dtype":"FP32","shape":[1,4],"data":[1,2,3,4]}   explicit; data flat or nested;
 *                                                     shape defaults to data's nesting
 *   [[1,2,3,4]]        a bare (nested) list: FP32, shape from the nesting; a list of
 *                      strings is BYTES, of booleans BOOL
 *   3.5                a number: an FP32 scalar (shape [])
 *   "text"             a string: BYTES of shape [1]
 *   anything that is not JSON is taken as text (BYTES [1]), except what looks like a
 *   number JSON cannot read (1e400, +1, .5, 0x10, NaN): an error, not text.
 * An object takes only "data", "dtype" and "shape". Integer dtypes also take decimal
 * strings ("18446744073709551615": JSON readers stop at 2^63).
 * Output: {"outputs":[{"name","dtype","shape","data":[flat, row-major]}], ...}; BYTES
 * elements print as strings (or lists of byte values when not UTF-8); NaN and the
 * infinities print as the strings "NaN", "Infinity", "-Infinity"; UINT64 values past
 * INT64_MAX as exact decimal strings. */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "common/clock.h"
#include "common/dtype.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/units.h"
#include "common/wire.h"

#define CI_MAX_PARAMS 64

typedef struct ci_input {
    char name[AICFN_MAX_NAME_BYTES + 1];
    aicfn_dtype dtype;
    uint32_t ndim;
    int64_t shape[AICFN_MAX_DIMS];
    uint8_t *data;
    uint64_t nbytes;
} ci_input;

typedef struct ci_args {
    const char *worker;  /* --worker ADDR */
    const char *gateway; /* --gateway ADDR (gateway mode: the default) */
    const char *key;     /* --key KEY or $AICFN_KEY (gateway mode) */
    char fn_buf[AICFN_MAX_NAME_BYTES];
    const char *fn;
    uint32_t ver;
    uint64_t id;
    uint32_t deadline_ms;
    uint32_t timeout_ms; /* client-side wait */
    bool timeout_set;    /* --timeout given */
    int json;
    int n_inputs;
    ci_input inputs[AICFN_MAX_TENSORS];
    int n_params;
    const char *param_keys[CI_MAX_PARAMS];
    const char *param_vals[CI_MAX_PARAMS];
} ci_args;

static void ci_help(FILE *out) {
    fprintf(
        out,
        "usage: aicfn invoke NAME[:VER] --input NAME=VALUE|NAME=@FILE.json ...\n"
        "                    [--gateway ADDR] [--key KEY] [--worker ADDR]\n"
        "                    [--param KEY=VALUE ...] [--ver N] [--deadline-ms N] [--timeout DUR] [--json]\n"
        "\n"
        "Invokes function NAME (version VER, else the active one) and prints its outputs as JSON.\n"
        "  --gateway ADDR     the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
        "  --key KEY          API key for the gateway (default: $AICFN_KEY)\n"
        "  --worker ADDR      send straight to the worker listening on ADDR (ipc:// or tcp://)\n"
        "  --input NAME=V     an input tensor; V is JSON or @file.json:\n"
        "                       {\"dtype\":\"FP32\",\"shape\":[1,4],\"data\":[1,2,3,4]}  explicit\n"
        "                       [[1,2,3,4]]   nested list: FP32 (strings: BYTES, booleans: BOOL)\n"
        "                       3.5           FP32 scalar;   \"text\"  BYTES [1]\n"
        "                       other text: BYTES [1] (a number JSON cannot read is an error)\n"
        "                       integer dtypes also take \"decimal strings\" (UINT64 past 2^63)\n"
        "  --param KEY=VALUE  a request param (JSON numbers/booleans keep their type, else text)\n"
        "  --ver N            function version (default: active)\n"
        "  --deadline-ms N    the call's time budget on the server (default: --timeout when given,\n"
        "                     else the function's timeout); a handler that started is not cut\n"
        "                     short, so the reply is waited for past it (below)\n"
        "  --timeout DUR      how long to wait for the reply (default 30s); at least the call's\n"
        "                     deadline + 1s, so that the server's answer to it arrives\n"
        "  --json             print the whole reply (ok, cold, cached, batch, timing, outputs) on one "
        "line\n");
}

/* ---- half and bfloat16 ---- */

static uint16_t ci_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) half++;
    return (uint16_t)half;
}

static float ci_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
    if (exp == 0) {
        if (man == 0)
            x = sign;
        else {
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 0x400u));
            x = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7f800000u | (man << 13);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint16_t ci_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static float ci_bf16_to_f32(uint16_t b) {
    uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* ---- JSON -> tensor ---- */

/* Infers the shape of a nested list (rectangular) and the kind of its leaves (*kind 0
 * until the first leaf: from then on no list may add a dimension, so [1, [2]] is
 * ragged, not [2, 1]). `int_strings`: the declared dtype is an integer one, whose
 * values may be decimal strings too (as UINT64 past INT64_MAX is printed): numbers. */
static int ci_infer(json_t *v, ci_input *t, uint32_t depth, bool int_strings, int *kind, char *msg,
                    size_t cap) {
    if (json_is_array(v)) {
        if (depth >= AICFN_MAX_DIMS) {
            snprintf(msg, cap, "nested deeper than %d dimensions", AICFN_MAX_DIMS);
            return -1;
        }
        int64_t n = (int64_t)json_array_size(v);
        if (depth == t->ndim) {
            if (*kind) {
                snprintf(msg, cap, "ragged list: a list sits where values sit elsewhere (depth %u)", depth);
                return -1;
            }
            t->shape[t->ndim++] = n;
        } else if (t->shape[depth] != n) {
            snprintf(msg, cap, "ragged list: dimension %u has sizes %" PRId64 " and %" PRId64, depth,
                     t->shape[depth], n);
            return -1;
        }
        for (size_t i = 0; i < (size_t)n; i++)
            if (ci_infer(json_array_get(v, i), t, depth + 1, int_strings, kind, msg, cap)) return -1;
        return 0;
    }
    if (depth != t->ndim) {
        snprintf(msg, cap, "ragged list: a value sits at depth %u of %u", depth, t->ndim);
        return -1;
    }
    int k = json_is_string(v) ? (int_strings ? 1 : 2) : json_is_boolean(v) ? 3 : json_is_number(v) ? 1 : 0;
    if (k == 0) {
        snprintf(msg, cap, "values must be numbers, booleans or strings");
        return -1;
    }
    if (*kind && *kind != k) {
        snprintf(msg, cap, "mixed value kinds (numbers, strings, booleans) in one tensor");
        return -1;
    }
    *kind = k;
    return 0;
}

typedef struct ci_buf {
    uint8_t *p;
    size_t len, cap;
} ci_buf;

static int ci_put(ci_buf *b, const void *src, size_t n) {
    if (b->len + n > AICFN_MAX_MESSAGE_BYTES) return -1;
    if (b->len + n > b->cap) {
        size_t c = b->cap ? b->cap * 2 : 256;
        while (c < b->len + n)
            c *= 2;
        uint8_t *q = realloc(b->p, c);
        if (q == NULL) return -1;
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

/* Whether a float of dtype dt as written (u: FP16/BF16 bits, or the FP32 value) is
 * infinite. A finite JSON number is out of range exactly when it is written so: one
 * above the largest finite value by less than half a step rounds to it (FLT_MAX printed
 * with 9 digits, 3.40282347e+38, is a valid FP32 input). */
static bool ci_written_inf(aicfn_dtype dt, uint16_t bits, float f) {
    switch (dt) {
    case AICFN_DTYPE_FP16:
        return (bits & 0x7fff) == 0x7c00;
    case AICFN_DTYPE_BF16:
        return (bits & 0x7fff) == 0x7f80;
    case AICFN_DTYPE_FP32:
        return isinf(f);
    default:
        return false;
    }
}

/* An integer written as a decimal string, for the full range of 64-bit dtypes: *u when
 * it is non-negative (and fits 64 bits), else *s. 0 on success. */
static int ci_parse_decimal(const char *s, bool *negative, uint64_t *u, int64_t *i) {
    char *end = NULL;
    errno = 0;
    *negative = s[0] == '-';
    if (*negative)
        *i = strtoll(s, &end, 10);
    else if (s[0] >= '0' && s[0] <= '9')
        *u = strtoull(s, &end, 10);
    else
        return -1;
    return errno || end == s || *end ? -1 : 0;
}

/* Appends one leaf converted to dtype. */
static int ci_put_leaf(ci_buf *b, aicfn_dtype dt, json_t *v, char *msg, size_t cap) {
    if (dt == AICFN_DTYPE_BYTES) {
        if (!json_is_string(v)) {
            snprintf(msg, cap, "BYTES values must be strings");
            return -1;
        }
        size_t n = json_string_length(v);
        uint8_t le[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
        if (n > UINT32_MAX || ci_put(b, le, 4) || ci_put(b, json_string_value(v), n)) goto big;
        return 0;
    }
    int64_t lo, hi;
    bool integral = dtype_int_range(dt, &lo, &hi);
    if (integral && json_is_string(v)) {
        bool neg = false;
        uint64_t uv = 0;
        int64_t sv = 0;
        if (ci_parse_decimal(json_string_value(v), &neg, &uv, &sv) != 0) {
            snprintf(msg, cap, "\"%.40s\" is not a decimal integer", json_string_value(v));
            return -1;
        }
        if (dt == AICFN_DTYPE_UINT64 && !neg) { /* the one dtype beyond int64 */
            if (ci_put(b, &uv, 8)) goto big;
            return 0;
        }
        if (!neg && uv > (uint64_t)INT64_MAX) {
            snprintf(msg, cap, "%s is out of range for %s", json_string_value(v), dtype_name(dt));
            return -1;
        }
        v = json_integer(neg ? sv : (json_int_t)uv); /* checked below like a JSON integer */
        if (v == NULL) goto big;
        int rc = ci_put_leaf(b, dt, v, msg, cap);
        json_decref(v);
        return rc;
    }
    if (!json_is_number(v) && !json_is_boolean(v)) {
        snprintf(msg, cap, "%s values must be numbers", dtype_name(dt));
        return -1;
    }
    double d = json_is_boolean(v) ? (json_is_true(v) ? 1.0 : 0.0) : json_number_value(v);
    json_int_t iv = 0;
    if (integral) {
        /* UINT64 past int64: a whole real in [2^63, 2^64) (1e19) is exact; larger
         * integers need the decimal string form. */
        if (dt == AICFN_DTYPE_UINT64 && json_is_real(v) && d >= 9223372036854775808.0 &&
            d < 18446744073709551616.0 && d == floor(d)) {
            uint64_t big = (uint64_t)d;
            if (ci_put(b, &big, 8)) goto big;
            return 0;
        }
        /* The value must be a whole number in the dtype's range: nothing wraps. */
        if (json_is_integer(v)) {
            iv = json_integer_value(v);
        } else if (json_is_boolean(v)) {
            iv = json_is_true(v);
        } else if (!isfinite(d) || d != floor(d)) {
            snprintf(msg, cap, "%s values must be integers (got %g)", dtype_name(dt), d);
            return -1;
        } else if (d < -9223372036854775808.0 || d >= 9223372036854775808.0) {
            snprintf(msg, cap, "%g is out of range for %s", d, dtype_name(dt));
            return -1;
        } else {
            iv = (json_int_t)d;
        }
        if (iv < lo || iv > hi) {
            snprintf(msg, cap, "%lld is out of range for %s (%lld..%lld)", (long long)iv, dtype_name(dt),
                     (long long)lo, (long long)hi);
            return -1;
        }
    } else if (dt != AICFN_DTYPE_BOOL && dt != AICFN_DTYPE_FP64 && isfinite(d) && fabs(d) >= 2.0 * FLT_MAX) {
        /* Far past every narrow float (and a double -> float conversion of such a value
         * is undefined in ISO C): out of range without converting. */
        snprintf(msg, cap, "%g is out of range for %s", d, dtype_name(dt));
        return -1;
    }
    union {
        uint8_t u8;
        uint16_t u16;
        uint32_t u32;
        uint64_t u64;
        int8_t i8;
        int16_t i16;
        int32_t i32;
        int64_t i64;
        float f;
        double dd;
    } u;
    size_t n = dtype_size(dt);
    switch (dt) {
    case AICFN_DTYPE_BOOL:
        u.u8 = d != 0.0;
        break;
    case AICFN_DTYPE_UINT8:
        u.u8 = (uint8_t)iv;
        break;
    case AICFN_DTYPE_UINT16:
        u.u16 = (uint16_t)iv;
        break;
    case AICFN_DTYPE_UINT32:
        u.u32 = (uint32_t)iv;
        break;
    case AICFN_DTYPE_UINT64:
        u.u64 = (uint64_t)iv;
        break;
    case AICFN_DTYPE_INT8:
        u.i8 = (int8_t)iv;
        break;
    case AICFN_DTYPE_INT16:
        u.i16 = (int16_t)iv;
        break;
    case AICFN_DTYPE_INT32:
        u.i32 = (int32_t)iv;
        break;
    case AICFN_DTYPE_INT64:
        u.i64 = (int64_t)iv;
        break;
    case AICFN_DTYPE_FP16:
        u.u16 = ci_f32_to_f16((float)d);
        break;
    case AICFN_DTYPE_BF16:
        u.u16 = ci_f32_to_bf16((float)d);
        break;
    case AICFN_DTYPE_FP32:
        u.f = (float)d;
        break;
    case AICFN_DTYPE_FP64:
        u.dd = d;
        break;
    default:
        snprintf(msg, cap, "dtype %s cannot be written from JSON", dtype_name(dt));
        return -1;
    }
    if (isfinite(d) && ci_written_inf(dt, u.u16, u.f)) {
        snprintf(msg, cap, "%.9g is out of range for %s", d, dtype_name(dt));
        return -1;
    }
    if (ci_put(b, &u, n)) goto big;
    return 0;
big:
    snprintf(msg, cap, "tensor larger than %u bytes", (unsigned)AICFN_MAX_MESSAGE_BYTES);
    return -1;
}

static int ci_put_all(ci_buf *b, aicfn_dtype dt, json_t *v, uint64_t *count, char *msg, size_t cap) {
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (ci_put_all(b, dt, json_array_get(v, i), count, msg, cap)) return -1;
        return 0;
    }
    (*count)++;
    return ci_put_leaf(b, dt, v, msg, cap);
}

/* True when all of `s` (but trailing space) reads as a number to strtod: 1e400, +1,
 * .5, 0x10, nan, inf; not "3 apples" or "information". */
static bool ci_looks_numeric(const char *s) {
    char *end = NULL;
    (void)strtod(s, &end);
    if (end == s) return false;
    return end[strspn(end, " \t\r\n")] == '\0';
}

/* Fills t from a JSON value (format in the file comment). */
static int ci_tensor_from_json(json_t *v, ci_input *t, char *msg, size_t cap) {
    json_t *data = v;
    json_t *jshape = NULL;
    t->dtype = AICFN_DTYPE_INVALID;
    if (json_is_object(v)) {
        const char *key;
        json_t *val;
        json_object_foreach(v, key, val) {
            if (strcmp(key, "data") != 0 && strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0) {
                snprintf(msg, cap, "unknown key \"%.40s\" in an object input (it takes data, dtype, shape)",
                         key);
                return -1;
            }
        }
        data = json_object_get(v, "data");
        if (data == NULL) {
            snprintf(msg, cap, "an object input needs \"data\" (and optionally \"dtype\", \"shape\")");
            return -1;
        }
        json_t *jd = json_object_get(v, "dtype");
        if (jd) {
            if (!json_is_string(jd) ||
                (t->dtype = dtype_from_name(json_string_value(jd))) == AICFN_DTYPE_INVALID) {
                snprintf(
                    msg, cap,
                    "unknown dtype (use BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16, FP32, FP64, BYTES)");
                return -1;
            }
        }
        jshape = json_object_get(v, "shape");
    }
    ci_input inferred = {0};
    int kind = 0;
    int64_t lo, hi;
    if (json_is_string(data) && (jshape == NULL)) {
        inferred.ndim = 1;
        inferred.shape[0] = 1;
        kind = 2;
    } else if (ci_infer(data, &inferred, 0, dtype_int_range(t->dtype, &lo, &hi), &kind, msg, cap)) {
        return -1;
    }
    if (t->dtype == AICFN_DTYPE_INVALID)
        t->dtype = kind == 2 ? AICFN_DTYPE_BYTES : kind == 3 ? AICFN_DTYPE_BOOL : AICFN_DTYPE_FP32;
    if (jshape) {
        if (!json_is_array(jshape) || json_array_size(jshape) > AICFN_MAX_DIMS) {
            snprintf(msg, cap, "\"shape\" must be a list of at most %d integers", AICFN_MAX_DIMS);
            return -1;
        }
        t->ndim = (uint32_t)json_array_size(jshape);
        for (uint32_t i = 0; i < t->ndim; i++) {
            json_t *d = json_array_get(jshape, i);
            if (!json_is_integer(d) || json_integer_value(d) < 0) {
                snprintf(msg, cap, "\"shape\" must hold non-negative integers");
                return -1;
            }
            t->shape[i] = json_integer_value(d);
        }
    } else {
        t->ndim = inferred.ndim;
        memcpy(t->shape, inferred.shape, sizeof t->shape);
    }
    uint64_t want = 0, count = 0;
    if (dtype_shape_elements(t->shape, t->ndim, &want) != 0) {
        snprintf(msg, cap, "shape overflows");
        return -1;
    }
    ci_buf b = {0};
    if (ci_put_all(&b, t->dtype, data, &count, msg, cap)) {
        free(b.p);
        return -1;
    }
    if (count != want) {
        free(b.p);
        snprintf(msg, cap, "shape holds %" PRIu64 " elements but data has %" PRIu64, want, count);
        return -1;
    }
    t->data = b.p;
    t->nbytes = b.len;
    return 0;
}

static int ci_parse_input(const char *arg, ci_input *t) {
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg)
        return cli_usage_error("invoke", "--input '%s': expected NAME=VALUE or NAME=@FILE.json", arg);
    if ((size_t)(eq - arg) >= sizeof t->name)
        return cli_usage_error("invoke", "--input '%.40s...': the name is longer than %d bytes", arg,
                               AICFN_MAX_NAME_BYTES);
    memcpy(t->name, arg, (size_t)(eq - arg));
    t->name[eq - arg] = '\0';
    const char *val = eq + 1;
    json_error_t jerr;
    json_t *v;
    if (val[0] == '@') {
        struct stat st;
        if (stat(val + 1, &st) != 0)
            return cli_usage_error("invoke", "--input %s: %s: %s", t->name, val + 1, strerror(errno));
        if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > AICFN_MAX_MESSAGE_BYTES)
            return cli_usage_error("invoke", "--input %s: %s: not a regular file of at most %u bytes",
                                   t->name, val + 1, (unsigned)AICFN_MAX_MESSAGE_BYTES);
        v = json_load_file(val + 1, JSON_DECODE_ANY, &jerr);
        if (v == NULL)
            return cli_usage_error("invoke", "--input %s: %s: %s (line %d)", t->name, val + 1, jerr.text,
                                   jerr.line);
    } else {
        v = json_loads(val, JSON_DECODE_ANY, &jerr);
        /* Not JSON: text (a BYTES element), unless it was meant as JSON: an array, an
         * object or a string that does not parse is a typo to report, not text to send. */
        size_t lead = strspn(val, " \t\r\n");
        if (v == NULL && strchr("[{\"", val[lead]) && val[lead] != '\0')
            return cli_usage_error("invoke", "--input %s: not valid JSON: %s (column %d)", t->name, jerr.text,
                                   jerr.column);
        /* Nor is a number JSON cannot read (out of range, or not JSON's syntax) text. */
        const char *num = val + lead;
        if (v == NULL && ci_looks_numeric(num))
            return cli_usage_error("invoke",
                                   "--input %s: '%s' is not a number JSON can read (%s); for text, quote it: "
                                   "%s='\"%s\"'",
                                   t->name, num, jerr.text, t->name, num);
        if (v == NULL) v = json_string(val);
        if (v == NULL) return cli_usage_error("invoke", "--input %s: not JSON and not UTF-8 text", t->name);
    }
    char msg[256];
    int rc = ci_tensor_from_json(v, t, msg, sizeof msg);
    json_decref(v);
    if (rc) return cli_usage_error("invoke", "--input %s: %s", t->name, msg);
    return 0;
}

/* ---- tensor -> JSON ---- */

/* A float as JSON: a number, or for what JSON has no number for (jansson refuses them),
 * the strings "NaN", "Infinity", "-Infinity" (as Python's json writes them, quoted). */
static json_t *ci_json_real(double d) {
    if (isnan(d)) return json_string("NaN");
    if (isinf(d)) return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

static json_t *ci_tensor_json(const wire_tensor *t) {
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(t->name));
    json_object_set_new(o, "dtype", json_string(dtype_name(t->dtype)));
    json_t *shape = json_array();
    for (uint32_t i = 0; i < t->ndim; i++)
        json_array_append_new(shape, json_integer(t->shape[i]));
    json_object_set_new(o, "shape", shape);
    json_t *data = json_array();
    const uint8_t *p = t->data;
    if (t->dtype == AICFN_DTYPE_BYTES) {
        uint64_t off = 0;
        while (off + 4 <= t->nbytes) {
            uint32_t n = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                         (uint32_t)p[off + 3] << 24;
            off += 4;
            if (n > t->nbytes - off) break;
            json_t *s = json_stringn((const char *)p + off, n);
            if (s == NULL) {
                s = json_array();
                for (uint32_t i = 0; i < n; i++)
                    json_array_append_new(s, json_integer(p[off + i]));
            }
            json_array_append_new(data, s);
            off += n;
        }
    } else {
        unsigned es = dtype_size(t->dtype);
        for (uint64_t off = 0; es && off + es <= t->nbytes; off += es) {
            union {
                uint8_t b[8];
                uint16_t u16;
                uint32_t u32;
                uint64_t u64;
                int8_t i8;
                int16_t i16;
                int32_t i32;
                int64_t i64;
                float f;
                double d;
            } u;
            memcpy(u.b, p + off, es);
            json_t *x;
            switch (t->dtype) {
            case AICFN_DTYPE_BOOL:
                x = json_boolean(u.b[0] != 0);
                break;
            case AICFN_DTYPE_UINT8:
                x = json_integer(u.b[0]);
                break;
            case AICFN_DTYPE_UINT16:
                x = json_integer(u.u16);
                break;
            case AICFN_DTYPE_UINT32:
                x = json_integer(u.u32);
                break;
            case AICFN_DTYPE_UINT64: { /* beyond INT64_MAX: an exact decimal string, as input takes */
                char dec[24];
                snprintf(dec, sizeof dec, "%" PRIu64, u.u64);
                x = u.u64 > (uint64_t)INT64_MAX ? json_string(dec) : json_integer((json_int_t)u.u64);
                break;
            }
            case AICFN_DTYPE_INT8:
                x = json_integer(u.i8);
                break;
            case AICFN_DTYPE_INT16:
                x = json_integer(u.i16);
                break;
            case AICFN_DTYPE_INT32:
                x = json_integer(u.i32);
                break;
            case AICFN_DTYPE_INT64:
                x = json_integer(u.i64);
                break;
            case AICFN_DTYPE_FP16:
                x = ci_json_real(ci_f16_to_f32(u.u16));
                break;
            case AICFN_DTYPE_BF16:
                x = ci_json_real(ci_bf16_to_f32(u.u16));
                break;
            case AICFN_DTYPE_FP32:
                x = ci_json_real(u.f);
                break;
            case AICFN_DTYPE_FP64:
                x = ci_json_real(u.d);
                break;
            default:
                x = json_integer(u.b[0]);
                break; /* FP8: raw bytes */
            }
            json_array_append_new(data, x ? x : json_null());
        }
    }
    json_object_set_new(o, "data", data);
    return o;
}

/* ---- the request, the target, the reply ---- */

/* Encodes the invocation for `a`. */
static int ci_encode(const ci_args *a, wire_writer *w, aicfn_error *err) {
    wire_writer pw;
    wire_writer_init(&pw);
    uint8_t *params = NULL;
    size_t params_len = 0;
    if (a->n_params) {
        wire_put_map(&pw, (uint32_t)a->n_params);
        for (int i = 0; i < a->n_params; i++) {
            wire_put_str(&pw, a->param_keys[i]);
            json_t *v = json_loads(a->param_vals[i], JSON_DECODE_ANY, NULL);
            if (v && json_is_integer(v))
                wire_put_i64(&pw, json_integer_value(v));
            else if (v && json_is_real(v))
                wire_put_f64(&pw, json_real_value(v));
            else if (v && json_is_boolean(v))
                wire_put_bool(&pw, json_is_true(v));
            else
                wire_put_str(&pw, a->param_vals[i]);
            json_decref(v);
        }
        if (wire_writer_status(&pw, err) != AICFN_OK) {
            wire_writer_fini(&pw);
            return err->code;
        }
        params = wire_writer_take(&pw, &params_len);
    }
    wire_tensor ts[AICFN_MAX_TENSORS];
    for (int i = 0; i < a->n_inputs; i++) {
        const ci_input *in = &a->inputs[i];
        ts[i] = (wire_tensor){
            .name = in->name, .dtype = in->dtype, .ndim = in->ndim, .data = in->data, .nbytes = in->nbytes};
        memcpy(ts[i].shape, in->shape, sizeof ts[i].shape);
    }
    wire_invoke_req req = {.id = a->id,
                           .fn = a->fn,
                           .ver = a->ver,
                           .key = a->worker ? NULL : a->key,
                           .deadline_ms = a->deadline_ms,
                           .n_inputs = (uint32_t)a->n_inputs,
                           .inputs = ts,
                           .params = params,
                           .params_len = params_len};
    int rc = wire_encode_invoke_req(w, &req, err);
    free(params);
    wire_writer_fini(&pw);
    return rc;
}

/* Sends `req` to the chosen target and returns the reply. The one place a target is
 * dialed: gateway mode adds its branch here. */
static int ci_send(const ci_args *a, const uint8_t *req, size_t len, rpc_msg **reply, aicfn_error *err) {
    rpc_client *c = NULL;
    rpc_client_opts o = {
        .recv_max = AICFN_MAX_MESSAGE_BYTES, .send_max = AICFN_MAX_MESSAGE_BYTES, .background = false};
    const char *target = a->worker ? a->worker : cli_gateway_addr(a->gateway);
    int rc = rpc_client_open(&c, target, &o, err);
    if (rc != AICFN_OK) return aicfn_error_wrap(err, "%s %s", a->worker ? "worker" : "gateway", target);
    rc = rpc_call_sync(c, req, len, a->timeout_ms, reply, err);
    if (rc != AICFN_OK) aicfn_error_wrap(err, "invoke %s on %s", a->fn, target);
    rpc_client_close(c);
    return rc;
}

/* A failure with no reply to print (the gateway or worker unreachable, no answer within
 * the wait, a malformed reply): with --json, stdout still gets one JSON object
 * {"ok":false,"error":{code,name,message}} as for an error reply; stderr says it too. */
static int ci_fail(const ci_args *a, const aicfn_error *err) {
    if (a->json) {
        json_t *o = json_pack("{s:b, s:{s:i, s:s, s:s}}", "ok", 0, "error", "code", err->code, "name",
                              aicfn_status_name(err->code), "message", err->msg);
        cli_print_json(o, "{\"ok\":false}");
        json_decref(o);
    }
    return cli_fail(err);
}

static int ci_print_reply(const ci_args *a, const uint8_t *buf, size_t len) {
    wire_doc doc;
    aicfn_error err;
    int rc = wire_doc_parse(&doc, buf, len, NULL, &err);
    wire_invoke_reply rep;
    if (rc == AICFN_OK) rc = wire_decode_invoke_reply(&doc, &rep, &err);
    if (rc != AICFN_OK) {
        wire_doc_fini(&doc);
        aicfn_error_wrap(&err, "malformed reply");
        return ci_fail(a, &err);
    }
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer((json_int_t)rep.head.id));
    json_object_set_new(o, "ok", json_boolean(rep.head.ok));
    if (!rep.head.ok) {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_integer(rep.head.code));
        json_object_set_new(e, "name", json_string(aicfn_status_name(rep.head.code)));
        json_object_set_new(e, "message", json_string(rep.head.message ? rep.head.message : ""));
        json_object_set_new(o, "error", e);
    }
    json_object_set_new(o, "cold", json_boolean(rep.cold));
    json_object_set_new(o, "cached", json_boolean(rep.cached));
    json_object_set_new(o, "batch", json_integer(rep.batch));
    json_t *tm = json_object();
    json_object_set_new(tm, "queue_us", json_integer((json_int_t)rep.timing.queue_us));
    json_object_set_new(tm, "load_us", json_integer((json_int_t)rep.timing.load_us));
    json_object_set_new(tm, "init_us", json_integer((json_int_t)rep.timing.init_us));
    json_object_set_new(tm, "exec_us", json_integer((json_int_t)rep.timing.exec_us));
    json_object_set_new(tm, "total_us", json_integer((json_int_t)rep.timing.total_us));
    json_object_set_new(o, "timing", tm);
    json_t *outs = json_array();
    for (uint32_t i = 0; i < rep.n_outputs; i++)
        json_array_append_new(outs, ci_tensor_json(&rep.outputs[i]));
    json_object_set_new(o, "outputs", outs);
    /* Reals are printed with as many digits as round-trip their dtype: 9 for FP32 and the
     * smaller floats, 17 when an output is FP64. */
    int digits = 9;
    for (uint32_t i = 0; i < rep.n_outputs; i++)
        if (rep.outputs[i].dtype == AICFN_DTYPE_FP64) digits = 17;
    int exit_rc = CLI_EXIT_OK;
    if (!rep.head.ok) {
        aicfn_error e;
        aicfn_error_set(&e, rep.head.code, "%s", rep.head.message ? rep.head.message : "");
        exit_rc = cli_fail(&e);
    }
    if (a->json) {
        char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(digits));
        if (s) printf("%s\n", s);
        free(s);
    } else if (rep.head.ok) {
        json_t *p = json_object();
        json_object_set(p, "outputs", outs);
        char *s = json_dumps(p, JSON_INDENT(2) | JSON_REAL_PRECISION(digits));
        if (s) printf("%s\n", s);
        free(s);
        json_decref(p);
        fprintf(stderr, "%s, batch %u, total %.3f ms (queue %.3f, load %.3f, exec %.3f)\n",
                rep.cached ? "cached by the gateway"
                : rep.cold ? "cold"
                           : "warm",
                rep.batch, rep.timing.total_us / 1e3, rep.timing.queue_us / 1e3, rep.timing.load_us / 1e3,
                rep.timing.exec_us / 1e3);
    }
    json_decref(o);
    wire_doc_fini(&doc);
    return exit_rc;
}

static const char *ci_flag(int argc, char **argv, int *i, const char *name) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != '\0' || *i + 1 >= argc) return NULL;
    return argv[++*i];
}

static int ci_u32(const char *s, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-' || s[0] == '\0' || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

int cli_cmd_invoke(int argc, char **argv) {
    ci_args *a = calloc(1, sizeof *a);
    if (a == NULL) return cli_usage_error("invoke", "out of memory");
    a->timeout_ms = AICFN_DEFAULT_TIMEOUT_MS;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    a->id = ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) & ((1ull << 53) - 1);
    int rc = CLI_EXIT_OK;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            ci_help(stdout);
            goto out;
        } else if ((v = ci_flag(argc, argv, &i, "--worker"))) {
            a->worker = v;
        } else if ((v = ci_flag(argc, argv, &i, "--gateway"))) {
            a->gateway = v;
        } else if ((v = ci_flag(argc, argv, &i, "--key"))) {
            a->key = v;
        } else if ((v = ci_flag(argc, argv, &i, "--input"))) {
            if (a->n_inputs >= AICFN_MAX_TENSORS) {
                rc = cli_usage_error("invoke", "at most %d inputs", AICFN_MAX_TENSORS);
                goto out;
            }
            if ((rc = ci_parse_input(v, &a->inputs[a->n_inputs])) != 0) goto out;
            /* The inputs travel in one message: past its size, stop before reading more. */
            uint64_t total = 0;
            for (int k = 0; k <= a->n_inputs; k++)
                total += a->inputs[k].nbytes;
            if (total > AICFN_MAX_MESSAGE_BYTES) {
                a->n_inputs++;
                rc = cli_usage_error("invoke",
                                     "the inputs so far (to '%s') come to %llu bytes, more than the %u bytes "
                                     "one message carries",
                                     a->inputs[a->n_inputs - 1].name, (unsigned long long)total,
                                     (unsigned)AICFN_MAX_MESSAGE_BYTES);
                goto out;
            }
            for (int k = 0; k < a->n_inputs; k++)
                if (strcmp(a->inputs[k].name, a->inputs[a->n_inputs].name) == 0) {
                    a->n_inputs++;
                    rc = cli_usage_error("invoke", "two inputs named '%s'", a->inputs[k].name);
                    goto out;
                }
            a->n_inputs++;
        } else if ((v = ci_flag(argc, argv, &i, "--param"))) {
            const char *eq = strchr(v, '=');
            if (eq == NULL || eq == v || a->n_params >= CI_MAX_PARAMS) {
                rc = cli_usage_error("invoke", "--param '%s': expected KEY=VALUE (at most %d)", v,
                                     CI_MAX_PARAMS);
                goto out;
            }
            char *key = strndup(v, (size_t)(eq - v));
            if (key == NULL) {
                rc = cli_usage_error("invoke", "out of memory");
                goto out;
            }
            a->param_keys[a->n_params] = key;
            a->param_vals[a->n_params++] = eq + 1;
        } else if ((v = ci_flag(argc, argv, &i, "--ver"))) {
            if (ci_u32(v, &a->ver)) {
                rc = cli_usage_error("invoke", "--ver must be a number");
                goto out;
            }
        } else if ((v = ci_flag(argc, argv, &i, "--deadline-ms"))) {
            if (ci_u32(v, &a->deadline_ms)) {
                rc = cli_usage_error("invoke", "--deadline-ms must be a number");
                goto out;
            }
        } else if ((v = ci_flag(argc, argv, &i, "--timeout"))) {
            uint64_t us;
            if (units_parse_duration_us(v, &us, NULL) != AICFN_OK || us < 1000 || us / 1000 > UINT32_MAX) {
                rc = cli_usage_error("invoke", "--timeout '%s' is not a duration (e.g. 30s)", v);
                goto out;
            }
            a->timeout_ms = (uint32_t)(us / 1000);
            a->timeout_set = true;
        } else if (strcmp(argv[i], "--json") == 0) {
            a->json = 1;
        } else if (argv[i][0] == '-') {
            rc = cli_usage_error("invoke", "unknown or incomplete argument '%s'", argv[i]);
            goto out;
        } else if (a->fn == NULL) {
            a->fn = argv[i];
        } else {
            rc = cli_usage_error("invoke", "unexpected argument '%s' (one FUNCTION per call)", argv[i]);
            goto out;
        }
    }
    if (a->fn == NULL || a->fn[0] == '\0' || strlen(a->fn) >= AICFN_MAX_NAME_BYTES) {
        rc = cli_usage_error("invoke", "name the FUNCTION to invoke");
        goto out;
    }
    /* NAME:VER selects a version (gateway mode). */
    const char *colon = strchr(a->fn, ':');
    if (colon) {
        uint32_t ver = 0;
        if (colon == a->fn || strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
            ci_u32(colon + 1, &ver) || ver == 0) {
            rc = cli_usage_error("invoke", "'%s': expected NAME or NAME:VER (VER a version number)", a->fn);
            goto out;
        }
        if (a->ver && a->ver != ver) {
            rc = cli_usage_error("invoke", "'%s' and --ver %u name different versions", a->fn, a->ver);
            goto out;
        }
        a->ver = ver;
        snprintf(a->fn_buf, sizeof a->fn_buf, "%.*s", (int)(colon - a->fn), a->fn);
        a->fn = a->fn_buf;
    }
    if (a->worker == NULL) a->key = cli_api_key(a->key);
    /* A handler that started is not cut short by its deadline (protocol.md §4): the reply
     * is waited for at least a little past the deadline, never less than by default. And a
     * call is given no deadline past the wait: the server would run it for nobody. */
    if (a->timeout_set && !a->deadline_ms) a->deadline_ms = a->timeout_ms;
    if (a->deadline_ms && a->deadline_ms + 1000ull > a->timeout_ms)
        a->timeout_ms = a->deadline_ms > UINT32_MAX - 1000 ? UINT32_MAX : a->deadline_ms + 1000;

    aicfn_error err;
    aicfn_error_clear(&err);
    wire_writer w;
    wire_writer_init(&w);
    if (ci_encode(a, &w, &err) != AICFN_OK) {
        wire_writer_fini(&w);
        rc = ci_fail(a, &err);
        goto out;
    }
    rpc_msg *reply = NULL;
    if (ci_send(a, w.data, w.len, &reply, &err) != AICFN_OK) {
        wire_writer_fini(&w);
        rc = ci_fail(a, &err);
        goto out;
    }
    wire_writer_fini(&w);
    rc = ci_print_reply(a, rpc_msg_data(reply), rpc_msg_len(reply));
    rpc_msg_free(reply);
out:
    for (int i = 0; i < a->n_inputs; i++)
        free(a->inputs[i].data);
    for (int i = 0; i < a->n_params; i++)
        free((char *)a->param_keys[i]);
    free(a);
    return rc;
}
