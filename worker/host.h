/* host.h: the function host: loads a handler library (dlopen + the ABI check), runs
 * its instances (init / invoke / fini), and implements the helper table handlers call
 * (aicfn_host_api) with the worker's response records.
 *
 * Not for: queues, batching, models or the network. The worker decides when to call
 * what; this file only makes the calls safe and checked.
 *
 * Thread-safety: a worker_handler may be shared by threads (it is immutable after
 * open). A worker_instance is NOT thread-safe: the caller serializes init / invoke /
 * destroy for one instance (the ABI's promise to handlers). Responses belong to one
 * thread at a time. */
#ifndef AICFN_WORKER_HOST_H
#define AICFN_WORKER_HOST_H

#include <stdint.h>

#include "aicfn.h"
#include "common/error.h"

/* A loaded handler library. */
typedef struct worker_handler worker_handler;

/* One instance of a handler: its state after init. */
typedef struct worker_instance worker_instance;

/* Loads the library at `path` (RTLD_NOW | RTLD_LOCAL), resolves its entry points
 * (aicfn_fn_abi_version and aicfn_fn_invoke required, aicfn_fn_init and aicfn_fn_fini
 * optional) and checks its ABI version: a different MAJOR or a newer MINOR than this
 * worker's is refused with AICFN_E_ABI and a message naming both versions; a missing
 * required symbol is AICFN_E_ABI naming the symbol; an unloadable file is
 * AICFN_E_NOT_FOUND (missing) or AICFN_E_ABI (dlerror's text). Caller frees with
 * worker_handler_close. Blocking (file I/O). */
int worker_handler_open(const char *path, worker_handler **out, aicfn_error *err);

/* Unloads the library. Every instance made from it must have been destroyed. NULL ok. */
void worker_handler_close(worker_handler *h);

/* The path given to open, and the library's ABI version (AICFN_ABI_ENCODE form). */
const char *worker_handler_path(const worker_handler *h);
uint32_t worker_handler_abi_version(const worker_handler *h);

/* The helper table given to handlers (static, valid for the process lifetime). */
const aicfn_host_api *worker_host_api(void);

/* Creates an instance: calls the handler's init (when it has one) with `model` (NULL
 * for a function without one; it must stay valid until worker_instance_destroy) and
 * `config` (copied: the caller may free it after this returns). A failing init
 * returns its code (AICFN_E_HANDLER if it returned something out of range) with a
 * message naming the function, and no instance. */
int worker_instance_create(worker_handler *h, const aicfn_model *model, const aicfn_fn_config *config,
                           worker_instance **out, aicfn_error *err);

/* Calls fini (if init succeeded and the handler has one) and frees the instance. NULL ok. */
void worker_instance_destroy(worker_instance *inst);

/* The model the instance was created with (NULL when none). */
const aicfn_model *worker_instance_model(const worker_instance *inst);

/* Runs one batch of n requests (1 <= n <= config.max_batch). resps[i] must be fresh
 * responses (worker_response_create / _reset). After the call each response holds
 * outputs or an error: a non-OK return from the handler is copied into every response
 * that has no error of its own. Returns AICFN_OK when the handler was called, or
 * AICFN_E_INVALID for bad arguments. Not concurrent for one instance. */
int worker_instance_invoke(worker_instance *inst, const aicfn_request *reqs, aicfn_response *const *resps,
                           uint32_t n, aicfn_error *err);

/* ---- Responses ----
 * A response records outputs (host memory it owns) or an error. `max_bytes` bounds
 * the total bytes of its outputs (0 = AICFN_MAX_MESSAGE_BYTES). */
aicfn_response *worker_response_create(uint64_t max_bytes);
void worker_response_destroy(aicfn_response *resp);

/* Frees the outputs and clears the error so the response can be reused. */
void worker_response_reset(aicfn_response *resp);

/* AICFN_OK or the error code set by the handler (or by a failed alloc_output). When
 * `msg` is non-NULL it receives the message (owned by the response, "" when none). */
int worker_response_status(const aicfn_response *resp, const char **msg);

/* Sets an error from the worker's side (a timeout, a failed load); like set_error. */
int worker_response_fail(aicfn_response *resp, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The outputs, in the order they were allocated; owned by the response. */
uint32_t worker_response_n_outputs(const aicfn_response *resp);
const aicfn_tensor *worker_response_outputs(const aicfn_response *resp);

/* Total bytes of the output data. */
uint64_t worker_response_output_bytes(const aicfn_response *resp);

/* Checks one tensor whose data is host memory: a known dtype, ndim <= AICFN_MAX_DIMS,
 * non-negative dims, nbytes equal to product(shape) × element size for fixed dtypes;
 * for BYTES, exactly product(shape) elements of (4-byte LE length, bytes) filling nbytes.
 * AICFN_E_INVALID names the tensor and the mismatch. Pure. */
int worker_tensor_check(const aicfn_tensor *t, aicfn_error *err);

#endif
