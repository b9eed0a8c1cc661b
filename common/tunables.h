/* tunables.h: every compile-time default and hard limit, in one place.
 *
 * Runtime options override the defaults in this order of precedence: command-line
 * flags, then environment variables, then the function's manifest. Hard limits
 * (AICFN_MAX_*) bound untrusted input and are not configurable at run time. */
#ifndef AICFN_COMMON_TUNABLES_H
#define AICFN_COMMON_TUNABLES_H

/* ---- Wire protocol (design.md §4) ---- */
#define AICFN_MAX_MESSAGE_BYTES (64u << 20)   /* NNG_OPT_RECVMAXSZ on every socket */
#define AICFN_MAX_NESTING 16                  /* msgpack container depth */
#define AICFN_MAX_CONTAINER_ITEMS (1u << 20)  /* one array or map */
#define AICFN_MAX_TENSORS 64                  /* per request or reply */
#define AICFN_MAX_NAME_BYTES 256              /* tensor, function and model names */
#define AICFN_DEFAULT_REQUEST_BYTES (8u << 20) /* limits.max_request_bytes */
#define AICFN_PROTOCOL_VERSION 1

/* ---- Snapshots (design.md §5) ---- */
#define AICFN_SNAP_DEFAULT_CHUNK (4u << 20)   /* uncompressed bytes per data frame */
#define AICFN_SNAP_MAX_CHUNK (64u << 20)
#define AICFN_SNAP_MIN_CHUNK (64u << 10)
#define AICFN_SNAP_ALIGN 256                  /* tensor offset alignment in the blob */
#define AICFN_SNAP_DEFAULT_LEVEL 3
#define AICFN_SNAP_WINDOW_LOG_MAX 27          /* ZSTD_d_windowLogMax for readers */
#define AICFN_SNAP_MAX_MANIFEST_BYTES (64u << 20)
#define AICFN_SNAP_MAX_TENSORS 1000000
#define AICFN_SAFETENSORS_MAX_HEADER (100u << 20)

/* ---- Loader and cache (design.md §6) ---- */
#define AICFN_DEFAULT_HOST_BUDGET (1ull << 30) /* host device budget when none is given */
#define AICFN_CUDA_STAGING_BUFFERS 4
#define AICFN_CUDA_STREAMS 4
#define AICFN_THRASH_WINDOW_US (60ull * 1000000ull)

/* ---- Worker and gateway ---- */
#define AICFN_DEFAULT_GATEWAY "tcp://127.0.0.1:7070"
#define AICFN_DEFAULT_DATA_DIR "./aicfn-data"
#define AICFN_DEFAULT_MAX_BATCH 1
#define AICFN_DEFAULT_MAX_DELAY_US 0
#define AICFN_DEFAULT_TIMEOUT_MS 30000
#define AICFN_DEFAULT_IDLE_TIMEOUT_MS (5 * 60 * 1000)
#define AICFN_NNG_CONTEXTS 64                 /* concurrent nng_ctx per REP socket */
#define AICFN_DEFAULT_QUEUE_PER_FUNCTION 256
#define AICFN_LEDGER_FLUSH_MS 100
#define AICFN_LEDGER_FLUSH_RECORDS 1000

/* ---- HTTP ---- */
#define AICFN_HTTP_MAX_BODY (16u << 20)
#define AICFN_HTTP_MAX_CONNECTIONS 256
#define AICFN_HTTP_CONNECTION_TIMEOUT_S 10

#endif
