/* wire.h: the msgpack wire codec (design.md §4): the bounded validator every message
 * passes before msgpack_unpack, a parsed-document type with key lookups, a writer for
 * encoding, and the message structs (invoke, reply, status) with encode/decode.
 *
 * Not for: the transport (see common/rpc.h), routing or any policy. docs/protocol.md is
 * the normative description of every message; this header follows it.
 *
 * Memory model. Decoding never copies tensor data: a decoded wire_tensor's `data`
 * points INTO the message buffer, and every other decoded pointer (names, arrays of
 * tensors, models...) points into the wire_doc's zone. So a decoded struct is valid
 * exactly as long as BOTH the message buffer and the wire_doc it was decoded from are
 * alive and unchanged. Decoded tensor data is NOT aligned (it follows a msgpack bin
 * header); read it with memcpy or copy it to aligned storage.
 * Encoding copies: a wire_writer owns its output buffer.
 *
 * Thread-safety: every function is reentrant; a wire_doc or wire_writer must not be used
 * by two threads at once, but distinct ones may be used concurrently. Nothing blocks. */
#ifndef AICFN_COMMON_WIRE_H
#define AICFN_COMMON_WIRE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aicfn.h"
#include "common/error.h"
#include "common/tunables.h"

/* ===================================================================================
 * 1. Bounded validator
 * =================================================================================== */

/* Bounds applied to one msgpack message. A limit of 0 means "the default"
 * (AICFN_MAX_MESSAGE_BYTES, AICFN_MAX_NESTING, AICFN_MAX_CONTAINER_ITEMS,
 * AICFN_MAX_MESSAGE_OBJECTS). max_depth is clamped to WIRE_DEPTH_CEILING, the most
 * msgpack-c's unpacker itself can nest. */
typedef struct wire_limits {
    size_t max_bytes;     /* whole message */
    uint32_t max_depth;   /* nested containers: a top-level map of scalars has depth 1 */
    uint32_t max_items;   /* items in one array, pairs in one map */
    uint64_t max_objects; /* objects in the whole message (bounds the unpack zone) */
} wire_limits;

#define WIRE_DEPTH_CEILING 32

/* Walks `len` raw bytes at `buf` without allocating: checks every type byte (0xc1 is
 * rejected), every str/bin/ext length and container count against the bytes that remain
 * (an array of N items needs at least N bytes, a map of N pairs 2N), the limits in `lim`
 * (NULL = defaults), and that exactly one object fills the buffer (no trailing bytes).
 * Returns AICFN_OK and stores the object count in *objects (may be NULL), or
 * AICFN_E_PROTOCOL with a message naming the byte offset and the fault
 * (AICFN_E_TOO_LARGE when len exceeds max_bytes). */
int wire_validate(const void *buf, size_t len, const wire_limits *lim, uint64_t *objects, aicfn_error *err);

/* Skips one msgpack object at buf[*off] in an ALREADY VALIDATED buffer, advancing *off
 * past it. Returns AICFN_OK, or AICFN_E_PROTOCOL if the bytes are not a whole object
 * (it still never reads out of bounds). */
int wire_skip(const void *buf, size_t len, size_t *off, aicfn_error *err);

/* Finds the value of `key` in the top-level map of an ALREADY VALIDATED message and
 * returns its raw msgpack bytes as an (offset, length) pair into buf: this is how
 * `params` travels to handlers unchanged. Returns AICFN_OK, AICFN_E_NOT_FOUND when the
 * key is absent, AICFN_E_PROTOCOL when the top object is not a map. */
int wire_raw_find(const void *buf, size_t len, const char *key, size_t *val_off, size_t *val_len,
                  aicfn_error *err);

/* ===================================================================================
 * 2. Parsed documents and key lookups (decoding plumbing for every message type)
 * =================================================================================== */

/* A validated, unpacked message. `root` and everything reachable from it live in
 * `zone`; str/bin/ext payloads point into `buf` (not copied). Keep `buf` alive and
 * unchanged until wire_doc_fini. Not copyable after parse (copy the pointer instead). */
typedef struct wire_doc {
    const uint8_t *buf; /* borrowed: the message bytes */
    size_t len;
    msgpack_zone *zone; /* owned */
    msgpack_object root;
    uint64_t objects; /* object count from the validator */
} wire_doc;

/* Validates (wire_validate with `lim`, NULL = defaults) then msgpack_unpacks `buf` into
 * a zone sized from the object count. On success the doc must be released with
 * wire_doc_fini. On failure nothing needs releasing (wire_doc_fini is still safe).
 * Errors: AICFN_E_PROTOCOL (malformed, trailing bytes, over a limit; the message names
 * the offset), AICFN_E_TOO_LARGE (over max_bytes), AICFN_E_NOMEM. */
int wire_doc_parse(wire_doc *doc, const void *buf, size_t len, const wire_limits *lim, aicfn_error *err);

/* Releases the zone; every pointer decoded from the doc becomes invalid. NULL and a
 * zeroed or failed doc are accepted. */
void wire_doc_fini(wire_doc *doc);

/* Allocates `n` bytes in the doc's zone (freed by wire_doc_fini), 8-byte aligned.
 * NULL on exhaustion. */
void *wire_doc_alloc(wire_doc *doc, size_t n);

/* A string slice: NOT NUL-terminated, points into the message buffer. */
typedef struct wire_str {
    const char *ptr;
    size_t len;
} wire_str;

/* True when `s` equals the NUL-terminated `lit`. */
bool wire_str_eq(wire_str s, const char *lit);

/* The value of string key `key` in `map`, or NULL when `map` is not a map or has no
 * such key (the first occurrence wins). */
const msgpack_object *wire_map_get(const msgpack_object *map, const char *key);

/* Typed lookups. `required` = true: an absent (or nil) key is AICFN_E_PROTOCOL
 * "missing required key 'KEY'". required = false: an absent or nil key returns AICFN_OK
 * and leaves *out unchanged (set the default first). A present key of the wrong type or
 * out of range is AICFN_E_PROTOCOL naming the key. Unknown keys are never an error.
 * `ctx` (may be NULL) prefixes error messages with where the map is ("inputs[2]"). */
int wire_get_u64(const msgpack_object *map, const char *ctx, const char *key, bool required, uint64_t *out,
                 aicfn_error *err);
int wire_get_u32(const msgpack_object *map, const char *ctx, const char *key, bool required, uint32_t *out,
                 aicfn_error *err);
int wire_get_i64(const msgpack_object *map, const char *ctx, const char *key, bool required, int64_t *out,
                 aicfn_error *err);
int wire_get_f64(const msgpack_object *map, const char *ctx, const char *key, bool required, double *out,
                 aicfn_error *err); /* accepts float32/64 and integers */
int wire_get_bool(const msgpack_object *map, const char *ctx, const char *key, bool required, bool *out,
                  aicfn_error *err);
/* A str of at most max_len bytes (0 = no limit beyond the message's), borrowed. */
int wire_get_str(const msgpack_object *map, const char *ctx, const char *key, bool required, size_t max_len,
                 wire_str *out, aicfn_error *err);
/* Like wire_get_str, but copies into the doc's zone with a NUL terminator; rejects
 * strings containing NUL bytes. *out lives until wire_doc_fini. */
int wire_get_cstr(wire_doc *doc, const msgpack_object *map, const char *ctx, const char *key, bool required,
                  size_t max_len, const char **out, aicfn_error *err);
/* A bin (borrowed pointer into the message buffer). */
int wire_get_bin(const msgpack_object *map, const char *ctx, const char *key, bool required,
                 const uint8_t **data, size_t *len, aicfn_error *err);
/* A nested map or array (borrowed msgpack_object inside the doc). */
int wire_get_map(const msgpack_object *map, const char *ctx, const char *key, bool required,
                 const msgpack_object **out, aicfn_error *err);
int wire_get_array(const msgpack_object *map, const char *ctx, const char *key, bool required,
                   const msgpack_object **out, aicfn_error *err);

/* Copies a msgpack str object into the doc's zone as a NUL-terminated string, checking
 * type, length (max_len, 0 = none) and absence of NUL bytes. `what` names it in errors. */
int wire_obj_cstr(wire_doc *doc, const msgpack_object *o, const char *what, size_t max_len, const char **out,
                  aicfn_error *err);

/* ===================================================================================
 * 3. Writer (encoding plumbing for every message type)
 * =================================================================================== */

/* A growable output buffer with a msgpack_packer writing into it. The put functions
 * never fail visibly: the first failure (allocation, or growing past max_bytes) makes
 * the writer sticky-failed and later puts do nothing; check wire_writer_status once at
 * the end. msgpack map/array headers need their counts up front. */
typedef struct wire_writer {
    uint8_t *data; /* owned */
    size_t len;
    size_t cap;
    size_t max_bytes; /* AICFN_MAX_MESSAGE_BYTES unless changed after init */
    int failed;       /* 0, AICFN_E_NOMEM or AICFN_E_TOO_LARGE */
    msgpack_packer pk;
} wire_writer;

/* Initializes an empty writer; cannot fail (the buffer grows on the first put). */
void wire_writer_init(wire_writer *w);
/* Frees the buffer. NULL accepted. */
void wire_writer_fini(wire_writer *w);
/* Empties the writer (keeps the buffer and clears a sticky failure) for reuse. */
void wire_writer_reset(wire_writer *w);
/* AICFN_OK, or the sticky failure (AICFN_E_NOMEM, AICFN_E_TOO_LARGE) with a message. */
int wire_writer_status(const wire_writer *w, aicfn_error *err);
/* Hands the buffer to the caller (release with free()) and resets the writer to empty.
 * Returns NULL (and *len = 0) if the writer failed or is empty. */
uint8_t *wire_writer_take(wire_writer *w, size_t *len);

void wire_put_map(wire_writer *w, uint32_t n);
void wire_put_array(wire_writer *w, uint32_t n);
void wire_put_nil(wire_writer *w);
void wire_put_bool(wire_writer *w, bool v);
void wire_put_u64(wire_writer *w, uint64_t v);
void wire_put_i64(wire_writer *w, int64_t v);
void wire_put_f64(wire_writer *w, double v);
void wire_put_str(wire_writer *w, const char *s); /* NUL-terminated; NULL packs "" */
void wire_put_strn(wire_writer *w, const char *s, size_t n);
void wire_put_bin(wire_writer *w, const void *p, size_t n);
/* Appends already-encoded msgpack bytes verbatim (e.g. a `params` map). The caller
 * vouches they are one valid object. */
void wire_put_raw(wire_writer *w, const void *p, size_t n);
/* key + value pairs in one call (the key is a NUL-terminated str). */
void wire_kv_u64(wire_writer *w, const char *key, uint64_t v);
void wire_kv_i64(wire_writer *w, const char *key, int64_t v);
void wire_kv_f64(wire_writer *w, const char *key, double v);
void wire_kv_bool(wire_writer *w, const char *key, bool v);
void wire_kv_str(wire_writer *w, const char *key, const char *s);
void wire_kv_bin(wire_writer *w, const char *key, const void *p, size_t n);

/* ===================================================================================
 * 4. Common header, errors and tensors
 * =================================================================================== */

/* Message types (`t`). Requests always carry `t`; replies do not. Other components
 * add their own types (the gateway: deploy, register, ls, rm, coldstarts, usage...);
 * list them in docs/protocol.md. */
#define WIRE_T_INVOKE "invoke"
#define WIRE_T_STATUS "status"
#define WIRE_T_BUNDLE "bundle"
#define WIRE_TYPE_MAX 32 /* longest `t` */

/* The fields every message may carry. */
typedef struct wire_header {
    uint32_t v;            /* protocol version, 1..AICFN_PROTOCOL_VERSION */
    char t[WIRE_TYPE_MAX]; /* "" when absent (replies) */
    uint64_t id;           /* 0 when absent */
    bool has_id;
} wire_header;

/* Reads `v`, `t` and `id` from the root map of `doc`. Errors: AICFN_E_PROTOCOL (root
 * not a map, `v` missing or 0, `t` not a str or too long, `id` not a uint, or missing
 * in a request: a message with `t`),
 * AICFN_E_UNSUPPORTED (`v` newer than AICFN_PROTOCOL_VERSION). */
int wire_decode_header(const wire_doc *doc, wire_header *h, aicfn_error *err);

/* Best effort: the `id` of a message that may be malformed (for the error reply);
 * 0 when it cannot be read. Never fails, never allocates. */
uint64_t wire_peek_id(const void *buf, size_t len);

/* The start of every reply. */
typedef struct wire_reply_head {
    uint64_t id;
    bool ok;
    int code;            /* an aicfn_status: AICFN_OK when ok */
    const char *message; /* when !ok: NUL-terminated, in the doc's zone; "" when ok */
    bool not_run;        /* when !ok: the worker refused the call before running any of it
                            (it drains): the gateway may send it to another worker */
    bool overran;        /* when !ok: a bundle's part still running past its deadline, answered
                            so that the others' replies could leave (bundle.h): it is stuck */
} wire_reply_head;

/* Encodes a whole error reply {v, id, ok:false, error:{code, name, message}} (one
 * message). `message` may be NULL. Returns wire_writer_status. */
int wire_encode_error_reply(wire_writer *w, uint64_t id, int code, const char *message, aicfn_error *err);

/* The same with `mark`: true beside them: WIRE_MARK_NOT_RUN (a worker's refusal of a call
 * it did not run) or WIRE_MARK_OVERRAN (a bundle's part still running past its deadline);
 * NULL: none (wire_encode_error_reply). */
#define WIRE_MARK_NOT_RUN "not_run"
#define WIRE_MARK_OVERRAN "overran"
int wire_encode_marked_error_reply(wire_writer *w, uint64_t id, int code, const char *message,
                                   const char *mark, aicfn_error *err);

/* Reads `id`, `ok` and, when ok is false, `error` {code (int, authoritative), name
 * (the AICFN_E_* string, used only when code is absent), message} from a reply's root
 * map. An unknown code maps to AICFN_E_INTERNAL with the text kept. */
int wire_decode_reply_head(wire_doc *doc, wire_reply_head *h, aicfn_error *err);

/* A named tensor. On decode every field is checked: name 1..AICFN_MAX_NAME_BYTES bytes
 * without NUL; dtype an OIP name; ndim <= AICFN_MAX_DIMS; dims >= 0; and data length ==
 * product(shape) x dtype_size, or for BYTES a sequence of exactly product(shape)
 * elements, each a 4-byte little-endian length then that many bytes, filling the data. */
typedef struct wire_tensor {
    const char *name; /* NUL-terminated (decode: in the doc's zone) */
    aicfn_dtype dtype;
    uint32_t ndim;
    int64_t shape[AICFN_MAX_DIMS];
    const uint8_t *data; /* decode: into the message buffer, unaligned; encode: caller's */
    uint64_t nbytes;     /* bytes at data */
} wire_tensor;

/* Checks one tensor as described above; `what` names it in errors ("inputs[1] 'x'").
 * AICFN_OK or AICFN_E_PROTOCOL/AICFN_E_UNSUPPORTED. Used by decode and by encoders
 * (which refuse to emit an inconsistent tensor: AICFN_E_INVALID). */
int wire_tensor_check(const wire_tensor *t, const char *what, aicfn_error *err);

/* Validates BYTES tensor data: exactly `count` elements filling `len` bytes. */
int wire_bytes_check(const uint8_t *data, uint64_t len, uint64_t count, aicfn_error *err);

/* Iterates BYTES elements: given *pos (start at 0) returns the next element's bytes
 * and length and advances *pos; returns false at the end or on malformed data. */
bool wire_bytes_next(const uint8_t *data, uint64_t len, uint64_t *pos, const uint8_t **elem, uint32_t *elen);

/* ===================================================================================
 * 5. invoke: request
 * =================================================================================== */

/* What the worker needs to run a function version: set by the gateway when it forwards
 * an invocation to a worker (`spec` key). A client never sends it; the gateway must
 * overwrite whatever a client put there. Paths are on the worker's host. */
typedef struct wire_fn_spec {
    const char *handler;  /* path of the handler .so (required in a spec) */
    const char *snapshot; /* path of the snapshot file; NULL/"" = no model */
    const char *model;    /* model identity in the cache (snapshot hash, hex); NULL/"" = none */
    uint64_t model_bytes; /* raw model bytes per the manifest (the cache measures its own) */
    uint32_t max_batch;   /* >= 1 */
    uint32_t max_delay_us;
    uint32_t timeout_ms; /* the function's timeout */
    bool idempotent;
    uint32_t n_params;          /* the handler's config params (`params`, sent only when any) */
    const aicfn_param *params;  /* <= AICFN_MAX_PARAMS; decoded: in the doc's zone */
} wire_fn_spec;

/* An invocation. */
typedef struct wire_invoke_req {
    uint64_t id;               /* caller-chosen, echoed in the reply (required) */
    const char *fn;            /* function name, 1..AICFN_MAX_NAME_BYTES (required) */
    uint32_t ver;              /* 0 = the active version */
    const char *key;           /* caller's API key; NULL when absent */
    const char *tenant;        /* gateway -> worker: the authenticated tenant; NULL otherwise */
    uint64_t gid;              /* gateway -> worker: the call's id unique in the gateway (callers'
                                  ids may collide), which fault notes name; 0 = absent */
    uint32_t deadline_ms;      /* relative time budget from receipt; 0 = the function's timeout */
    uint32_t n_inputs;         /* <= AICFN_MAX_TENSORS */
    const wire_tensor *inputs; /* n_inputs tensors, names unique */
    const uint8_t *params;     /* raw msgpack bytes of the `params` map; NULL when absent */
    size_t params_len;
    bool has_spec;
    wire_fn_spec spec;
} wire_invoke_req;

/* Decodes an invoke request from a parsed doc (whose header says t = "invoke"). All
 * pointers in *req live as long as doc and its buffer. Errors: AICFN_E_PROTOCOL naming
 * the key or tensor, AICFN_E_UNSUPPORTED (version, dtype). */
int wire_decode_invoke_req(wire_doc *doc, wire_invoke_req *req, aicfn_error *err);

/* Encodes *req as one message (v = AICFN_PROTOCOL_VERSION, t = "invoke"). Checks the
 * tensors (AICFN_E_INVALID), that params (if any) is one valid msgpack map, and the
 * size limit (AICFN_E_TOO_LARGE). */
int wire_encode_invoke_req(wire_writer *w, const wire_invoke_req *req, aicfn_error *err);

/* ===================================================================================
 * 6. invoke: reply, with timings, cold-start figures and the worker summary
 * =================================================================================== */

/* Phase times in microseconds (0 = not measured / not applicable). */
typedef struct wire_timing {
    uint64_t queue_us; /* receipt to batch start */
    uint64_t load_us;  /* waiting for the model (0 when warm) */
    uint64_t exec_us;  /* handler run */
    uint64_t total_us; /* receipt to reply */
    uint64_t fetch_us; /* cold start: downloading the snapshot (a remote worker's first use; wall) */
    uint64_t read_us;  /* cold start phases (summed over the pipeline's threads) */
    uint64_t decompress_us;
    uint64_t filter_us;
    uint64_t copy_us;
    uint64_t init_us; /* handler init */
    uint64_t cold_share_us; /* this call's share of the device time of the cold start its batch
                               made: the load (the loader's wall time, fetch included; none when
                               the batch joined another's load) and the handler's init, each split
                               over the calls that waited for it, rounded up; 0 when neither
                               was waited for. What the ledger bills for cold starts (ledger.h
                               load_gpu_us). In an unreported load: its whole device time,
                               before the split over its makers */
} wire_timing;

/* The cold-start record sent with the reply that paid for the load (`cs`). */
typedef struct wire_coldstart {
    uint64_t compressed_bytes;
    uint64_t raw_bytes;
    uint32_t n_evicted;         /* <= WIRE_MAX_EVICTED */
    const char *const *evicted; /* model identities evicted to make room */
} wire_coldstart;

#define WIRE_MAX_EVICTED 256
#define WIRE_MAX_MODELS 4096 /* resident models in a summary or status */
#define WIRE_MAX_QUEUES 4096 /* per-function queues in a status */

typedef enum wire_model_state {
    WIRE_MODEL_LOADING = 1,
    WIRE_MODEL_READY = 2,
    WIRE_MODEL_EVICTING = 3,
} wire_model_state;

/* "LOADING", "READY", "EVICTING"; "UNKNOWN" otherwise. */
const char *wire_model_state_name(int state);
/* The state for a name; 0 when unknown. */
int wire_model_state_from_name(const char *name, size_t len);

/* One model in a worker's cache. */
typedef struct wire_model_status {
    const char *model; /* model identity (snapshot hash) */
    const char *fn;    /* function that loaded it, "" when unknown */
    uint32_t ver;
    int state;        /* wire_model_state */
    uint64_t bytes;   /* measured device bytes */
    uint64_t idle_ms; /* since last use */
    uint32_t refs;    /* pins (calls using it now) */
    bool kept;        /* kept resident for scaling.min_workers: never an LRU victim */
} wire_model_status;

/* The summary a worker piggybacks on every reply (`st`) and returns in status. */
typedef struct wire_worker_summary {
    uint64_t budget_bytes;
    uint64_t used_bytes;
    uint64_t free_bytes;
    uint32_t queued;   /* requests waiting in all batchers */
    uint32_t inflight; /* requests received and not yet answered */
    bool draining;
    uint32_t n_models; /* <= WIRE_MAX_MODELS */
    const wire_model_status *models;
    bool partial; /* `models` lists only the most recently used of the resident models (sent
                     only when true): a reader updates those and keeps what it knows of the
                     others, rather than taking the list as the whole */
} wire_worker_summary;

/* The reply to an invoke. When head.ok is false only head (and possibly st) is set. */
typedef struct wire_invoke_reply {
    wire_reply_head head;
    uint32_t n_outputs; /* <= AICFN_MAX_TENSORS */
    const wire_tensor *outputs;
    bool cold;      /* this call waited for a load */
    bool cached;    /* gateway -> client: served from the response cache (sent only when true) */
    uint32_t batch; /* size of the batch it ran in (0 = unknown) */
    wire_timing timing;
    bool has_coldstart;
    wire_coldstart coldstart;
    bool has_st;
    wire_worker_summary st;
} wire_invoke_reply;

/* Encodes a successful reply, or an error reply (head.ok false) that still carries the
 * timing and st fields. Checks the outputs (AICFN_E_INVALID) and the size limit
 * (AICFN_E_TOO_LARGE: then encode an error reply instead). */
int wire_encode_invoke_reply(wire_writer *w, const wire_invoke_reply *rep, aicfn_error *err);

/* Decodes an invoke reply (ok or error). Returns AICFN_OK whenever the message is well
 * formed; the remote outcome is in rep->head. */
int wire_decode_invoke_reply(wire_doc *doc, wire_invoke_reply *rep, aicfn_error *err);

/* Encodes / decodes a worker summary map on its own (for other messages that carry one,
 * e.g. the gateway's register/heartbeat). Decode: `o` must be a map; `ctx` names it. */
void wire_put_summary(wire_writer *w, const wire_worker_summary *s);
int wire_decode_summary(wire_doc *doc, const msgpack_object *o, const char *ctx, wire_worker_summary *s,
                        aicfn_error *err);

/* ===================================================================================
 * 7. status: request and reply
 * =================================================================================== */

typedef struct wire_queue_status {
    const char *fn;
    uint32_t ver;
    uint32_t queued;
    uint32_t inflight;
} wire_queue_status;

typedef struct wire_worker_counters {
    uint64_t invocations;
    uint64_t errors;
    uint64_t cold_starts;
    uint64_t evictions;
    uint64_t batches;
} wire_worker_counters;

/* A load no reply carried: every call waiting for it gave up (its deadline passed) before
 * the model became resident. The worker lists it in its next status reply (`loads`),
 * once, so that the gateway records the cold start all the same. */
typedef struct wire_unreported_load {
    uint64_t seq;   /* the worker's number for it (from 1); 0: unnumbered (sent once, no ack) */
    const char *fn; /* the function whose calls asked for it */
    uint32_t ver;
    wire_timing timing; /* load_us (the whole load) and its phases; total_us = load_us */
    wire_coldstart coldstart;
    uint32_t makers;       /* how many calls the batch that made the load had (0: unknown) */
    uint32_t n_calls;      /* <= WIRE_MAX_LOAD_CALLS, <= makers */
    const uint64_t *calls; /* the gateway ids (gid) of up to WIRE_MAX_LOAD_CALLS of them */
} wire_unreported_load;

#define WIRE_MAX_UNREPORTED_LOADS 64
#define WIRE_MAX_LOAD_CALLS 64 /* gids listed per unreported load */

typedef struct wire_worker_status {
    const char *worker; /* worker id ("w1") */
    const char *device; /* device name ("NVIDIA H100 80GB HBM3", "host") */
    bool is_host;
    uint64_t uptime_ms;
    wire_worker_summary summary;
    uint32_t n_queues; /* <= WIRE_MAX_QUEUES */
    const wire_queue_status *queues;
    wire_worker_counters counters;
    uint32_t n_loads; /* <= WIRE_MAX_UNREPORTED_LOADS */
    const wire_unreported_load *loads;
} wire_worker_status;

/* The load a preload made (docs/protocol.md §10): its answer is a status reply with these
 * too, so that the gateway records the cold start. */
typedef struct wire_load_record {
    bool cold;          /* the preload loaded the model (false: it was resident) */
    wire_timing timing; /* load_us (the wait), fetch/read/decompress/filter/copy */
    bool has_coldstart; /* this preload made the load (not joined another's) */
    wire_coldstart coldstart;
} wire_load_record;

typedef struct wire_status_reply {
    wire_reply_head head;
    wire_worker_status w;  /* set when head.ok */
    wire_load_record load; /* a preload's answer: what it loaded (all zero otherwise) */
} wire_status_reply;

/* {v, t:"status", id, ack}: ack is the highest w.loads seq the sender has recorded (0:
 * none yet); a worker keeps each such load until a status request acknowledges it. */
int wire_encode_status_req(wire_writer *w, uint64_t id, uint64_t ack, aicfn_error *err);
/* {v, id, ok:true, w:{...}}, plus cold, timing and cs when `load` is not NULL (a
 * preload's answer). */
int wire_encode_status_reply(wire_writer *w, uint64_t id, const wire_worker_status *st,
                             const wire_load_record *load, aicfn_error *err);
/* Decodes a status reply (ok or error); AICFN_OK whenever well formed. */
int wire_decode_status_reply(wire_doc *doc, wire_status_reply *rep, aicfn_error *err);

/* ===================================================================================
 * 8. bundle: several invocations in one gateway -> worker message (docs/protocol.md §9)
 * =================================================================================== */

/* One part of a bundle: an encoded invoke request, or an encoded reply, pointing into
 * the bundle's message buffer (valid as long as the doc's buffer). */
typedef struct wire_part {
    const uint8_t *data;
    size_t len;
} wire_part;

/* {v, t:"bundle", id, calls:[bin...]}: each bin one whole encoded invoke request. */
int wire_encode_bundle_req(wire_writer *w, uint64_t id, const wire_part *calls, uint32_t n, aicfn_error *err);
/* {v, id, ok:true, replies:[bin...]}: each bin one whole encoded reply (an invoke reply
 * or an error reply), in the order of the request's calls. */
int wire_encode_bundle_reply(wire_writer *w, uint64_t id, const wire_part *replies, uint32_t n,
                             aicfn_error *err);
/* The parts under `key` ("calls" of a request, "replies" of an ok reply): 1..max bins,
 * written to parts[0..*n). Errors: AICFN_E_PROTOCOL naming the key or the index (missing,
 * not an array, empty, more than `max`, an element not a bin). */
int wire_decode_bundle(const wire_doc *doc, const char *key, wire_part *parts, uint32_t max, uint32_t *n,
                       aicfn_error *err);

#endif
