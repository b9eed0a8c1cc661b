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
#define AICFN_MAX_CONTAINER_ITEMS (1u << 20)  /* one array */
/* One map's pairs. Every map of the protocol is small (`params`: 256 entries at most), and
 * a key is looked up by a linear scan: a message of one map with a million junk keys
 * would cost a million comparisons per lookup, before authentication. */
#define AICFN_MAX_MAP_PAIRS 1024
#define AICFN_MAX_TENSORS 64                  /* per request or reply */
#define AICFN_MAX_NAME_BYTES 256              /* tensor, function and model names */
#define AICFN_DEFAULT_REQUEST_BYTES (8u << 20) /* limits.max_request_bytes */
#define AICFN_PROTOCOL_VERSION 1
#define AICFN_MAX_MESSAGE_OBJECTS (1u << 20)  /* msgpack objects per message (bounds the unpack zone) */
#define AICFN_RPC_MAX_ASYNC 4096              /* in-flight async calls per rpc client */
#define AICFN_NNG_CLOSE_BOUND_MS 10000        /* an NNG close not back by then is stuck (bounded_close.h) */
#define AICFN_IPC_PROBE_MS 1000               /* rpc server: ipc listener self-probe period (nng #1518) */
#define AICFN_IPC_PROBE_WAIT_MS 2000          /* probe dial must reach the socket within this */
#define AICFN_IPC_PROBE_FAILURES 2            /* failed probes in a row before a listener restart */

/* ---- Snapshots (design.md §5) ---- */
#define AICFN_SNAP_DEFAULT_CHUNK (1u << 20)   /* uncompressed bytes per data frame */
#define AICFN_SNAP_MAX_CHUNK (64u << 20)
#define AICFN_SNAP_MIN_CHUNK (64u << 10)
#define AICFN_SNAP_ALIGN 256                  /* tensor offset alignment in the blob */
#define AICFN_SNAP_DEFAULT_LEVEL 3
#define AICFN_SNAP_WINDOW_LOG_MAX 27          /* ZSTD_d_windowLogMax for readers */
#define AICFN_SNAP_MAX_MANIFEST_BYTES (64u << 20)
#define AICFN_SNAP_MAX_TENSORS 1000000
#define AICFN_SAFETENSORS_MAX_HEADER (100u << 20)
#define AICFN_SAFETENSORS_MAX_TENSORS 1000000  /* tensors in one safetensors header */
#define AICFN_SAFETENSORS_MAX_FILES 4096       /* shards in one sharded checkpoint */
#define AICFN_SAFETENSORS_MAX_INDEX_BYTES (64u << 20) /* model.safetensors.index.json */
#define AICFN_SNAP_MAX_NAME_BYTES 1024         /* tensor and model names in a snapshot */
#define AICFN_SNAP_MAX_FRAMES 0x8000000u       /* zstd seekable format's ZSTD_SEEKABLE_MAXFRAMES */
#define AICFN_SNAP_MAX_LEVEL 19                /* highest zstd level `snapshot pack` accepts */
#define AICFN_SNAP_MIN_LEVEL (-7)              /* lowest (fastest) zstd level accepted */
#define AICFN_SNAP_EXP_PLANE_LEVEL 1           /* measured: level 1 beats 3..15 on exponent planes */
#define AICFN_SNAP_MANT_PLANE_LEVEL 1          /* measured: mantissa planes are ~random; 1 = fastest at the same ratio */
#define AICFN_SNAP_MAX_THREADS 64
#define AICFN_SNAP_UNFILTER_PIECE (1u << 10)   /* loader: unfilter + checksum in pieces this size: each piece is hashed
                                                 while the last one's streaming stores drain (measured: 1 KiB beat 4 and 16) */
#define AICFN_SNAP_COPY_PIECE (16u << 10)      /* loader: unfiltered bytes are copied + checksummed in pieces this size */
#define AICFN_PAGE_CACHE_BLOCK (2u << 20)     /* snapshots are written in aligned writes this size: 2 MiB page-cache folios */

/* ---- Loader and cache (design.md §6) ---- */
#define AICFN_DEFAULT_HOST_BUDGET (1ull << 30) /* host device budget when none is given */
/* CUDA staging: each pipeline thread holds one buffer per frame until its copy is
 * issued, so the count bounds the threads that work at once. Measured on an H200
 * (bench-load --device cuda, 1 GiB bf16, 1 MiB frames): 4 buffers capped loads at
 * 3.3-3.7 GB/s from 4 threads up; 32 scaled to 11.4 GB/s with 16 threads (host: 13.0).
 * Pinning costs ~0.5 ms per MiB when a worker opens the device (64 MiB: 27-38 ms), so
 * buffers are sized for the default 1 MiB frames (and 2 MiB ones); larger frames go
 * through a bounce buffer. */
#define AICFN_CUDA_STAGING_BUFFERS 32
#define AICFN_CUDA_STREAMS 4
#define AICFN_CUDA_STAGING_BYTES (2u << 20) /* each pinned staging buffer */
#define AICFN_LOADER_MAX_THREADS 64           /* pipeline threads per load */
#define AICFN_THRASH_WINDOW_US (60ull * 1000000ull)

/* ---- Worker and gateway ---- */
#define AICFN_DEFAULT_GATEWAY "tcp://127.0.0.1:7070"
#define AICFN_DEFAULT_DATA_DIR "./aicfn-data"
#define AICFN_DEFAULT_MAX_BATCH 1
#define AICFN_DEFAULT_MAX_DELAY_US 0
#define AICFN_DEFAULT_TIMEOUT_MS 30000
#define AICFN_DEFAULT_IDLE_TIMEOUT_MS (5 * 60 * 1000)
#define AICFN_NNG_CONTEXTS 64                 /* concurrent nng_ctx per REP socket */
/* Of a worker's AICFN_NNG_CONTEXTS, those kept for status polls and model operations: the
 * gateway has at most AICFN_NNG_CONTEXTS - this many call messages (a call, a bundle, a
 * preload) in flight to one worker; further calls wait in the gateway's queue. */
#define AICFN_WORKER_CONTEXTS_KEPT 8
#define AICFN_WORKER_MAX_CALL_MSGS (AICFN_NNG_CONTEXTS - AICFN_WORKER_CONTEXTS_KEPT)
/* The gateway's NNG client front (aicfn gateway --max-requests): requests it holds at once.
 * Invocations past MAX - min(32, MAX / 4), or past AICFN_GW_FRONT_MAX_HELD_BYTES of requests
 * held, get AICFN_E_OVERLOADED at once; the rest of the contexts are kept for
 * administrative requests and status. */
#define AICFN_GW_FRONT_MAX_REQUESTS 1024
#define AICFN_GW_MAX_LIVE_WORKERS 256 /* live workers (local and registered) the router sees at once */
/* `coldstarts` waits this long for the ledger's queued records to commit, then answers
 * with what is committed. */
#define AICFN_GW_COLDSTARTS_FLUSH_MS 1000
/* Ledger rows written for a tenant's calls refused over its rate or quota, at most (a
 * token bucket of this many a second): a caller past its limits cannot grow aicfn.db at
 * the rate it sends. The rest are counted (aicfn_calls_total, a log line) but not rows. */
#define AICFN_GW_REFUSED_ROWS_PER_S 10
#define AICFN_GW_REFUSED_REPORT_MS 10000 /* ... and the rest reported (logged) at most this often */
/* Calls that timed out at a worker, kept to bill the loads they made (gaveup.h). */
#define AICFN_GW_GAVE_UP_CALLS 1024
#define AICFN_GW_GAVE_UP_MAX_AGE_MS 600000 /* ... for this long at most */
/* A load's share listed for a call whose timeout the gateway has not handled yet (the
 * status and the reply come on different threads) is held this long for it. */
#define AICFN_GW_GAVE_UP_HOLD_MS 30000
#define AICFN_GW_GAVE_UP_HOLDS_PER_WORKER                                                                    \
    64 /* ... for at most this many calls of one worker (a load's list) */
#define AICFN_GW_FRONT_MAX_HELD_BYTES (1ull << 30)
/* An administrative request's bytes at most (an upload_chunk's: its chunk plus this). */
#define AICFN_GW_ADMIN_MAX_BYTES (1u << 20)
/* A reply to a client not taken by its connection within this (the client does not read):
 * dropped, and the connection closed (its other replies' contexts come back). */
#define AICFN_GW_REPLY_TIMEOUT_MS 10000
/* The same for a worker's NNG listener (a remote worker's address is reachable by more
 * than its gateway): longer, since its replies (model outputs) may be large and its
 * gateway far away. Not on a local worker's link to its gateway (its one trusted peer). */
#define AICFN_WORKER_REPLY_TIMEOUT_MS 60000
#define AICFN_BUNDLE_MAX_CALLS 64             /* invocations in one gateway -> worker bundle */
#define AICFN_BUNDLE_MAX_BYTES (1u << 20)     /* request bytes in one bundle (a bigger call goes alone) */
#define AICFN_BUNDLE_WINDOW 2                 /* bundle while this many short messages are in flight */
#define AICFN_BUNDLE_SHORT_US 2000            /* "short" function: mean worker time (not cold) at most this */
#define AICFN_BUNDLE_SHORT_REPLY 65536        /* ... and mean reply at most this many bytes */
#define AICFN_BUNDLE_HOLD_MAX_US 5000         /* a held call is sent by the maintenance tick after this */
#define AICFN_BUNDLE_MAX_HELD 256             /* calls held in one worker's outbox at most */
#define AICFN_DEFAULT_QUEUE_PER_FUNCTION 256
#define AICFN_WORKER_MAX_BATCH 4096          /* upper bound of a function's max_batch */
#define AICFN_WORKER_MAX_FUNCTIONS 1024      /* functions one worker hosts */
#define AICFN_WORKER_FN_IDLE_RETIRE_MS 600000 /* a function a spec registered, not called this
                                                 long: its handler and instance are retired */
#define AICFN_MAX_PARAMS 256                  /* params per request or function config */
#define AICFN_PARAM_VALUE_MAX 4096            /* a function config param's value (manifest `params`), bytes */
#define AICFN_PARAMS_TOTAL_MAX (16u << 10)    /* a function's params, keys and values together: every call's
                                                 spec carries them to the worker */
#define AICFN_WORKER_STATUS_MODELS                                                                           \
    4096                                     /* resident models listed in a status reply (WIRE_MAX_MODELS):  \
                                                all of them, so the gateway's view drops the evicted;        \
                                                a call's reply lists the 64 most recently used */
#define AICFN_WORKER_MAX_PARKED 256          /* threads of calls waiting for a handler's download
                                                 and of the downloads (those of calls that timed
                                                 out included); a call beyond: AICFN_E_OVERLOADED */
#define AICFN_WORKER_UNREPORTED_LOADS 16      /* loads whose calls all gave up, held for the next
                                                 status reply (the oldest beyond are dropped) */
#define AICFN_LEDGER_FLUSH_MS 100
#define AICFN_LEDGER_FLUSH_RECORDS 1000
#define AICFN_WORKER_KILL_GRACE_MS 5000      /* SIGTERM'd local worker: SIGKILL after this */
#define AICFN_WORKER_REAP_GIVE_UP_MS 10000   /* SIGKILL'd local worker still not exited (asleep in
                                                 a driver, uninterruptibly): logged; a stopping
                                                 gateway leaves it unreaped and exits */
#define AICFN_CALL_GRACE_MS 5000              /* call past its timeout + this: worker killed, replaced */
#define AICFN_WORKER_EXIT_TOKEN_MAX 128       /* a registered worker's exit token (worker.h), in bytes */
#define AICFN_BUNDLE_REPLY_MARGIN_MS 2000     /* a bundle's reply is awaited this much longer than
                                                 its longest call's timeout + AICFN_CALL_GRACE_MS, at
                                                 which its worker answers a part still running as an
                                                 overrun (and the others' replies leave) */
#define AICFN_INLINE_MAX_US 200               /* a call runs on the thread that received it only
                                                 when its function's recent batches took this long */
#define AICFN_WORKER_POLL_MS 1000             /* gateway's status poll of each worker */
#define AICFN_WORKER_START_TIMEOUT_MS 30000   /* spawned worker must answer its first status by then */
#define AICFN_WORKER_RESTART_BACKOFF_MIN_MS 100 /* after a local worker died starting: next start in */
#define AICFN_WORKER_RESTART_BACKOFF_MAX_MS 30000 /* ... doubling per failure in a row, up to this */
#define AICFN_CRASH_BACKOFF_MS 60000          /* request that crashed its worker twice: refused this long */
/* A tenant whose calls of one function crashed its workers this many times, each within
 * AICFN_CRASH_TENANT_WINDOW_MS of the one before, is refused that function for
 * AICFN_CRASH_BACKOFF_MS: requests varied by a byte are new requests, not a new tenant. */
#define AICFN_CRASH_TENANT_MAX 5
#define AICFN_CRASH_TENANT_WINDOW_MS 600000
#define AICFN_DEFAULT_MAX_WORKERS 2           /* aicfn gateway --workers 0..2 */
#define AICFN_KEEP_WARM_RETRY_MS 2000         /* failed keep-warm load (scaling.min_workers): retry after */
#define AICFN_UPLOAD_CHUNK_BYTES (4u << 20)   /* aicfn deploy: artifact bytes per upload message */
#define AICFN_REGISTER_RENEW_MS 5000          /* a --gateway worker re-sends `register` this often */
#define AICFN_DEFAULT_RESPONSE_CACHE_BYTES (256ull << 20) /* aicfn gateway --response-cache */
#define AICFN_WORKER_CACHE_DIR "./aicfn-worker-cache" /* aicfn worker --gateway: fetched artifacts */
#define AICFN_FETCH_CHUNK_TIMEOUT_MS 30000    /* remote worker: one artifact_get round trip */
#define AICFN_WORKER_CACHE_MAX_BYTES (64ull << 30) /* remote worker: artifact cache budget (--cache-max) */
#define AICFN_FETCH_PRUNE_GRACE_MS 60000      /* an artifact handed out this recently is never pruned */

/* ---- SQLite, registry, ledger, artifacts, keys (gateway/db.c ...) ---- */
#define AICFN_DB_FILE "aicfn.db"              /* inside the data dir */
#define AICFN_DB_BUSY_TIMEOUT_MS 5000         /* sqlite3_busy_timeout on every connection */
#define AICFN_DB_WAL_LIMIT_BYTES (64ll << 20) /* PRAGMA journal_size_limit: a WAL grown past it
                                                 (a long reader held back checkpoints) is
                                                 truncated to it at its next reset */
#define AICFN_DB_STMT_CACHE 96                /* prepared statements cached per connection */
#define AICFN_LEDGER_QUEUE_MAX 200000         /* records waiting for the writer; beyond: dropped, counted */
#define AICFN_LEDGER_RETRY_MS 500             /* pause after a failed ledger commit before retrying */
#define AICFN_LEDGER_STOP_RETRY_MS 5000      /* at shutdown, failing commits are retried this long in all, then
                                                 what is still queued is dropped (and counted) */
#define AICFN_LEDGER_AMOUNT_MAX (1ull << 40)  /* a stored duration (µs, ~12.7 days) or byte count, at most */
#define AICFN_ARTIFACT_MAX_BYTES (256ull << 30) /* one handler .so or snapshot */
#define AICFN_ARTIFACT_MAX_UPLOADS 16         /* uploads open at once per store */
#define AICFN_ARTIFACT_DISK_RESERVE (64ull << 20) /* kept free beside uploads (aicfn.db shares the disk) */
#define AICFN_GW_FN_CACHE_IDLE_MS 600000      /* gateway: a function version not called this long leaves its cache */
#define AICFN_UPLOAD_IDLE_TIMEOUT_MS 120000   /* an upload without a chunk this long is aborted */
#define AICFN_UPLOAD_KEY_CHECK_MS 1000 /* open uploads' keys looked up this often: a revoked one's ends */
#define AICFN_TENANT_MAX_BYTES 64             /* tenant names */
#define AICFN_FN_NAME_MAX_BYTES 64            /* function names ([A-Za-z0-9_.-], URL-safe) */
#define AICFN_API_KEY_MAX_BYTES 1024          /* a message's `key`; longer: AICFN_E_PROTOCOL */
#define AICFN_WORKER_ID_MAX_BYTES 63          /* worker names (gateway's view, workers table id) */
#define AICFN_MAX_BATCH 4096                  /* batching.max_batch */
#define AICFN_MAX_DELAY_US_MAX 10000000ull    /* batching.max_delay_us: at most 10 s */
#define AICFN_MAX_TIMEOUT_US (3600ull * 1000000ull) /* limits.timeout: at most 1 h */
#define AICFN_MAX_WORKERS 256                 /* scaling.max_workers */

/* ---- Manifest (aicfn.yaml, cli/manifest.c) ---- */
#define AICFN_MANIFEST_MAX_BYTES (1u << 20)   /* the whole document */
#define AICFN_MANIFEST_MAX_DEPTH 8            /* nesting of mappings and sequences */
#define AICFN_MANIFEST_MAX_NODES 20000        /* scalars + containers */
#define AICFN_MANIFEST_MAX_MODEL_FILES 4096   /* model: files listed or found in a directory */

/* ---- HTTP ---- */
#define AICFN_HTTP_MAX_BODY (16u << 20)
#define AICFN_HTTP_MAX_CONNECTIONS 256
#define AICFN_HTTP_FD_HEADROOM 256          /* open files kept for the rest of the gateway beside 2 per HTTP
                                                 connection (MHD's socket, the reaper's dup) */
#define AICFN_HTTP_CONNECTION_TIMEOUT_S 10      /* idle: no byte received or sent */
#define AICFN_HTTP_RECEIVE_TIMEOUT_S 15         /* whole request (headers + body) must arrive within */
#define AICFN_HTTP_MAX_CONNECTIONS_PER_IP 64
#define AICFN_HTTP_CONNECTION_MEMORY (128u << 10) /* per connection: bounds the request headers */
#define AICFN_HTTP_MAX_BUFFERED (512u << 20)    /* request and response bytes held at once, all
                                                   connections (bodies, decoded inputs, the gateway's
                                                   copies, responses being encoded or sent) */
#define AICFN_HTTP_BODY_FIRST_BYTES (64u << 10) /* reserved for a body at its headers; the rest as it arrives */
#define AICFN_HTTP_MAX_JSON_VALUES (1u << 21)   /* JSON values in one OIP request body or response */
#define AICFN_HTTP_MAX_INDEX_BODY 4096          /* POST /v2/repository/index body ({"ready": bool}) */
#define AICFN_HTTP_STOP_WAIT_MS 30000           /* gw_http_stop waits this long for calls in flight */
#define AICFN_METRICS_MAX_SERIES 10000          /* label sets per metric family */

#endif
