/* aicfn.h: the public function ABI for handler authors, and nothing else.
 *
 * A handler is a shared library that aicfn's worker loads with dlopen. This header
 * is everything it needs: the status codes a handler may return, the tensor data
 * types, and (below, section "Function ABI") the entry points and helpers.
 * It is self-contained C17 with no dependency beyond <stddef.h> and <stdint.h>.
 *
 * Status codes and dtype values are stable: they are never renumbered, only added. */
#ifndef AICFN_H
#define AICFN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status codes -------------------------------------------------------------
 * One enum for the whole system: handlers, the wire protocol (`error.code`), the
 * CLI's exit status and the HTTP front all use these values. Each has exactly one
 * HTTP status (see common/error.c). */
typedef enum aicfn_status {
    AICFN_OK = 0,
    AICFN_E_INVALID = 1,         /* bad argument or input: 400 */
    AICFN_E_NOMEM = 2,           /* host memory exhausted: 500 */
    AICFN_E_IO = 3,              /* file or socket I/O failed: 500 */
    AICFN_E_CORRUPT = 4,         /* stored data failed a format or checksum check: 500 */
    AICFN_E_UNSUPPORTED = 5,     /* valid but unsupported (format version, dtype): 400 */
    AICFN_E_NOT_FOUND = 6,       /* unknown function, version, model or file: 404 */
    AICFN_E_TOO_LARGE = 7,       /* exceeds a size limit or the whole memory budget: 413 */
    AICFN_E_CAPACITY = 8,        /* no memory free before the deadline (all pinned): 507 */
    AICFN_E_TIMEOUT = 9,         /* deadline passed: 504 */
    AICFN_E_UNAVAILABLE = 10,    /* draining, stopping, or backing off: 503 */
    AICFN_E_OVERLOADED = 11,     /* queue full: 429 */
    AICFN_E_WORKER_LOST = 12,    /* the worker died with the call in flight: 502 */
    AICFN_E_UNAUTHENTICATED = 13,/* missing or revoked key: 401 */
    AICFN_E_FORBIDDEN = 14,      /* key lacks the right (admin): 403 */
    AICFN_E_QUOTA = 15,          /* tenant over rate or daily quota: 429 */
    AICFN_E_HANDLER = 16,        /* the handler failed without a more specific code: 500 */
    AICFN_E_ABI = 17,            /* handler built for another ABI, or missing entry point: 500 */
    AICFN_E_DEVICE = 18,         /* device (CUDA) error: 500 */
    AICFN_E_PROTOCOL = 19,       /* malformed or oversized message: 400 */
    AICFN_E_EXISTS = 20,         /* already exists: 409 */
    AICFN_E_DB = 21,             /* SQLite error: 500 */
    AICFN_E_INTERNAL = 22,       /* a bug: 500 */
    AICFN_E_CANCELED = 23,       /* canceled by shutdown: 503 */
} aicfn_status;

/* Number of status codes; every value in [0, AICFN_STATUS_COUNT) is defined. */
#define AICFN_STATUS_COUNT 24

/* ---- Tensor data types ---------------------------------------------------------
 * Names on the wire are those of the Open Inference Protocol v2 ("FP32", "BYTES"...).
 * Data is little-endian and row-major. FP8 types are aicfn extensions for snapshots
 * of models stored in 8-bit floats. */
typedef enum aicfn_dtype {
    AICFN_DTYPE_INVALID = 0,
    AICFN_DTYPE_BOOL = 1,
    AICFN_DTYPE_UINT8 = 2,
    AICFN_DTYPE_UINT16 = 3,
    AICFN_DTYPE_UINT32 = 4,
    AICFN_DTYPE_UINT64 = 5,
    AICFN_DTYPE_INT8 = 6,
    AICFN_DTYPE_INT16 = 7,
    AICFN_DTYPE_INT32 = 8,
    AICFN_DTYPE_INT64 = 9,
    AICFN_DTYPE_FP16 = 10,
    AICFN_DTYPE_BF16 = 11,
    AICFN_DTYPE_FP32 = 12,
    AICFN_DTYPE_FP64 = 13,
    AICFN_DTYPE_BYTES = 14, /* variable-length elements: each is a 4-byte LE length then bytes */
    AICFN_DTYPE_FP8_E4M3 = 15,
    AICFN_DTYPE_FP8_E5M2 = 16,
} aicfn_dtype;

#define AICFN_DTYPE_COUNT 17

/* Most dimensions a tensor may have. */
#define AICFN_MAX_DIMS 8

/* ---- Function ABI ----------------------------------------------------------------
 * (Defined by the worker issue: AICFN_ABI_MAJOR/MINOR, aicfn_fn_init/invoke/fini and
 * the tensor helpers are added here.) */

#ifdef __cplusplus
}
#endif
#endif /* AICFN_H */
