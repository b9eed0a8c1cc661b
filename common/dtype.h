/* dtype.h: facts about tensor data types: wire names (Open Inference Protocol v2),
 * safetensors names, element sizes, and checked size arithmetic for shapes. */
#ifndef AICFN_COMMON_DTYPE_H
#define AICFN_COMMON_DTYPE_H

#include <stdbool.h>
#include <stdint.h>

#include "aicfn.h"

/* Bytes per element; 0 for BYTES (variable length) and INVALID. */
unsigned dtype_size(aicfn_dtype dt);

/* OIP v2 name ("FP32"); "INVALID" for unknown values. */
const char *dtype_name(aicfn_dtype dt);

/* Parses an OIP v2 name; AICFN_DTYPE_INVALID when unknown. Case-sensitive. */
aicfn_dtype dtype_from_name(const char *name);

/* Safetensors name ("F32", "BF16", "U8"...); NULL when safetensors has none (BYTES). */
const char *dtype_safetensors_name(aicfn_dtype dt);

/* Parses a safetensors dtype name; AICFN_DTYPE_INVALID when unknown. */
aicfn_dtype dtype_from_safetensors_name(const char *name);

/* For the integer dtypes (UINT8..INT64): true, and the values they hold as int64 in
 * [*lo, *hi] (UINT64 stops at INT64_MAX, the most an int64 holds). False otherwise. */
bool dtype_int_range(aicfn_dtype dt, int64_t *lo, int64_t *hi);

/* Element count of a shape, with overflow checking. Returns 0 on success and stores
 * the product (1 for ndim 0); returns -1 on a negative dimension or when the product of
 * the non-zero dims overflows (so [0, 2^40, 2^40] is refused as [2^40, 2^40, 0] is). */
int dtype_shape_elements(const int64_t *shape, unsigned ndim, uint64_t *out);

/* Byte size of a fixed-size tensor (elements × element size), overflow-checked;
 * -1 on overflow, negative dims, or a variable-size dtype. */
int dtype_tensor_bytes(aicfn_dtype dt, const int64_t *shape, unsigned ndim, uint64_t *out);

#endif
