/* dtype.c: the dtype table: names on the wire and in safetensors, element sizes. */
#include "common/dtype.h"

#include <stdbool.h>
#include <string.h>

typedef struct dtype_entry {
    const char *name;
    const char *st_name;
    unsigned size;
} dtype_entry;

static const dtype_entry dtype_table[AICFN_DTYPE_COUNT] = {
    [AICFN_DTYPE_INVALID] = {"INVALID", NULL, 0},
    [AICFN_DTYPE_BOOL] = {"BOOL", "BOOL", 1},
    [AICFN_DTYPE_UINT8] = {"UINT8", "U8", 1},
    [AICFN_DTYPE_UINT16] = {"UINT16", "U16", 2},
    [AICFN_DTYPE_UINT32] = {"UINT32", "U32", 4},
    [AICFN_DTYPE_UINT64] = {"UINT64", "U64", 8},
    [AICFN_DTYPE_INT8] = {"INT8", "I8", 1},
    [AICFN_DTYPE_INT16] = {"INT16", "I16", 2},
    [AICFN_DTYPE_INT32] = {"INT32", "I32", 4},
    [AICFN_DTYPE_INT64] = {"INT64", "I64", 8},
    [AICFN_DTYPE_FP16] = {"FP16", "F16", 2},
    [AICFN_DTYPE_BF16] = {"BF16", "BF16", 2},
    [AICFN_DTYPE_FP32] = {"FP32", "F32", 4},
    [AICFN_DTYPE_FP64] = {"FP64", "F64", 8},
    [AICFN_DTYPE_BYTES] = {"BYTES", NULL, 0},
    [AICFN_DTYPE_FP8_E4M3] = {"FP8_E4M3", "F8_E4M3", 1},
    [AICFN_DTYPE_FP8_E5M2] = {"FP8_E5M2", "F8_E5M2", 1},
};

static int dtype_valid(aicfn_dtype dt) {
    return dt > AICFN_DTYPE_INVALID && dt < AICFN_DTYPE_COUNT;
}

unsigned dtype_size(aicfn_dtype dt) {
    return dtype_valid(dt) ? dtype_table[dt].size : 0;
}

const char *dtype_name(aicfn_dtype dt) {
    return dtype_valid(dt) ? dtype_table[dt].name : "INVALID";
}

aicfn_dtype dtype_from_name(const char *name) {
    if (name == NULL) return AICFN_DTYPE_INVALID;
    for (int i = 1; i < AICFN_DTYPE_COUNT; i++)
        if (strcmp(dtype_table[i].name, name) == 0) return (aicfn_dtype)i;
    return AICFN_DTYPE_INVALID;
}

const char *dtype_safetensors_name(aicfn_dtype dt) {
    return dtype_valid(dt) ? dtype_table[dt].st_name : NULL;
}

aicfn_dtype dtype_from_safetensors_name(const char *name) {
    if (name == NULL) return AICFN_DTYPE_INVALID;
    for (int i = 1; i < AICFN_DTYPE_COUNT; i++)
        if (dtype_table[i].st_name && strcmp(dtype_table[i].st_name, name) == 0) return (aicfn_dtype)i;
    return AICFN_DTYPE_INVALID;
}

bool dtype_int_range(aicfn_dtype dt, int64_t *lo, int64_t *hi) {
    bool is_signed;
    switch (dt) {
    case AICFN_DTYPE_UINT8:
    case AICFN_DTYPE_UINT16:
    case AICFN_DTYPE_UINT32:
    case AICFN_DTYPE_UINT64:
        is_signed = false;
        break;
    case AICFN_DTYPE_INT8:
    case AICFN_DTYPE_INT16:
    case AICFN_DTYPE_INT32:
    case AICFN_DTYPE_INT64:
        is_signed = true;
        break;
    default:
        return false;
    }
    unsigned bits = 8 * dtype_size(dt);
    if (bits == 64) {
        *lo = is_signed ? INT64_MIN : 0;
        *hi = INT64_MAX;
    } else {
        *lo = is_signed ? -((int64_t)1 << (bits - 1)) : 0;
        *hi = is_signed ? ((int64_t)1 << (bits - 1)) - 1 : ((int64_t)1 << bits) - 1;
    }
    return true;
}

int dtype_shape_elements(const int64_t *shape, unsigned ndim, uint64_t *out) {
    /* The product of the non-zero dims must not overflow, whatever their order: an
     * empty tensor may not carry dims whose strides would overflow downstream. */
    uint64_t n = 1;
    bool empty = false;
    for (unsigned i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        uint64_t d = (uint64_t)shape[i];
        if (d == 0) {
            empty = true;
            continue;
        }
        if (n > UINT64_MAX / d) return -1;
        n *= d;
    }
    *out = empty ? 0 : n;
    return 0;
}

int dtype_tensor_bytes(aicfn_dtype dt, const int64_t *shape, unsigned ndim, uint64_t *out) {
    unsigned sz = dtype_size(dt);
    uint64_t n;
    if (sz == 0 || dtype_shape_elements(shape, ndim, &n) != 0) return -1;
    if (n > UINT64_MAX / sz) return -1;
    *out = n * sz;
    return 0;
}
