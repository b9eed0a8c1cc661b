/* device.h: the device interface the loader copies model blobs into (design.md §6).
 *
 * A device is a vtable in the style of ggml's backends plus the dispatch functions
 * below, which every caller uses (never call the vtable directly): they check
 * arguments and supply the defaults of the optional members. Two backends exist:
 *   - host (device_host.c, always built): plain host memory standing in for a device,
 *     with a byte budget from configuration. Backs the tests and CPU-only machines.
 *   - cuda (device_cuda.c, built when AICFN_HAVE_CUDA): the CUDA runtime. Pinned
 *     staging buffers are allocated once when the device opens; copies run on several
 *     streams and complete through events.
 * Not for: deciding what stays resident (cache.h) or decoding snapshots (pipeline.h).
 *
 * Thread-safety: every dispatch function may be called concurrently on one device
 * from any thread (a load's pipeline threads copy at the same time). open/close are
 * not concurrent with anything else on that device.
 *
 * Copy model. The pipeline writes raw bytes into host memory, then calls
 * loader_device_copy_to_device, which returns a ticket right away; the bytes are on
 * the device once loader_device_wait(ticket) (or loader_device_sync) returns OK.
 * Until then the source bytes must stay untouched. For the host device the copy is a
 * memcpy that has completed when copy_to_device returns (ticket 0 = already done).
 * For CUDA, sources should be staging buffers (pinned; loader_device_staging_acquire);
 * a staging buffer is handed back with loader_device_staging_release(ticket) and
 * becomes reusable by the next acquirer only once that ticket has completed. */
#ifndef AICFN_LOADER_DEVICE_H
#define AICFN_LOADER_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct loader_device loader_device;

/* Completion ticket of an asynchronous copy. 0 means "already complete". A ticket is
 * only meaningful to the device that issued it; waiting on it more than once, or
 * after the device recycled its event, is fine (it reports complete). */
typedef uint64_t loader_ticket;

/* One device allocation. `ptr` is a device address (for host, a host address); it is
 * not dereferenceable on the host unless loader_device_is_host. `bytes` is what the
 * device actually reserved (>= what was asked: page or allocation granularity); the
 * model cache charges this figure against its budget. */
typedef struct loader_dev_buf {
    void *ptr;
    uint64_t bytes;
} loader_dev_buf;

/* A staging buffer: host memory the device copies from efficiently (pinned for CUDA). */
typedef struct loader_staging {
    void *ptr;
    size_t cap; /* bytes */
    int slot;   /* the backend's index; opaque to callers */
} loader_staging;

/* The vtable a backend fills. `ctx` in loader_device is the backend's state. */
typedef struct loader_device_ops {
    /* required: short kind name ("host", "cuda:0"), stable for the device's life. */
    const char *(*name)(loader_device *dev);
    /* required: 1 when device pointers are host pointers. */
    int (*is_host)(loader_device *dev);
    /* required: reserves at least `bytes` (> 0). AICFN_E_CAPACITY when the device or
     * its budget is out of memory, AICFN_E_DEVICE on other device errors. */
    int (*alloc)(loader_device *dev, uint64_t bytes, loader_dev_buf *out, aicfn_error *err);
    /* required: frees a buffer from alloc. Pending copies into it must have completed. */
    void (*free)(loader_device *dev, loader_dev_buf *buf);
    /* required: free and total bytes on the device (for host: of its budget). */
    int (*mem_info)(loader_device *dev, uint64_t *free_bytes, uint64_t *total_bytes, aicfn_error *err);
    /* optional (default: `bytes` rounded up to 256): the bytes alloc(bytes) would
     * reserve, so the cache can charge the real figure before the load starts. */
    uint64_t (*alloc_size)(loader_device *dev, uint64_t bytes);
    /* optional for host devices (default: memcpy, ticket 0); required otherwise.
     * Copies n bytes from host `src` to `dst + dst_off`, asynchronously. */
    int (*copy_to_device)(loader_device *dev, const loader_dev_buf *dst, uint64_t dst_off, const void *src,
                          size_t n, loader_ticket *ticket, aicfn_error *err);
    /* optional (default: nothing to wait for): waits for one ticket. */
    int (*wait)(loader_device *dev, loader_ticket ticket, aicfn_error *err);
    /* optional (default: no-op): waits for every copy issued so far on this device. */
    int (*sync)(loader_device *dev, aicfn_error *err);
    /* optional (default: none; the pipeline then decompresses straight into device
     * memory, which requires is_host): blocks until a staging buffer whose previous
     * copy has completed is free, and hands it out. */
    int (*staging_acquire)(loader_device *dev, loader_staging *out, aicfn_error *err);
    /* optional (required with staging_acquire): hands a staging buffer back; it is
     * reusable once `ticket` completes (0: at once). */
    void (*staging_release)(loader_device *dev, loader_staging *s, loader_ticket ticket);
    /* optional: frees the backend state (ctx). */
    void (*destroy)(loader_device *dev);
} loader_device_ops;

struct loader_device {
    const loader_device_ops *ops;
    void *ctx;
};

/* Opens the device named by `spec`:
 *   "host"     host memory with a budget of `host_budget` bytes
 *              (0 = AICFN_DEFAULT_HOST_BUDGET);
 *   "cuda"     CUDA device 0; "cuda:N" device N;
 *   "auto"     CUDA device 0 when cudaGetDeviceCount reports >= 1 device, host
 *              otherwise (every CUDA error counts as "no GPU"); logs the choice.
 * Errors: AICFN_E_INVALID for a malformed spec; for "cuda" on a machine without a
 * usable GPU AICFN_E_UNAVAILABLE naming the CUDA error; AICFN_E_UNSUPPORTED when
 * aicfn was built without CUDA. The caller closes the device with loader_device_close.
 * Not thread-safe with respect to other opens of the same CUDA device. */
int loader_device_open(const char *spec, uint64_t host_budget, loader_device **out, aicfn_error *err);

/* Opens a host device directly (the function "host" resolves to). */
int loader_device_host_open(uint64_t budget_bytes, loader_device **out, aicfn_error *err);

#ifdef AICFN_HAVE_CUDA
/* Opens CUDA device `ordinal` (device_cuda.c). Allocates the pinned staging buffers
 * (AICFN_CUDA_STAGING_BUFFERS of AICFN_CUDA_STAGING_BYTES) and the streams once. */
int loader_device_cuda_open(int ordinal, loader_device **out, aicfn_error *err);
#endif

/* Number of CUDA devices visible, or 0 when there is none, CUDA is not built, or
 * any CUDA error occurred (its text goes to `why` when non-NULL, up to why_cap bytes). */
int loader_cuda_device_count(char *why, size_t why_cap);

/* Waits for outstanding copies, frees the backend. NULL is accepted. Every buffer
 * from alloc must have been freed first. */
void loader_device_close(loader_device *dev);

/* ---- Dispatch (use these; they default the optional members) ---- */
const char *loader_device_name(loader_device *dev);
int loader_device_is_host(loader_device *dev);
int loader_device_alloc(loader_device *dev, uint64_t bytes, loader_dev_buf *out, aicfn_error *err);
/* Frees and zeroes *buf; a zeroed buf (ptr NULL) is accepted. */
void loader_device_free(loader_device *dev, loader_dev_buf *buf);
int loader_device_mem_info(loader_device *dev, uint64_t *free_bytes, uint64_t *total_bytes, aicfn_error *err);
uint64_t loader_device_alloc_size(loader_device *dev, uint64_t bytes);
/* Bounds-checks dst_off + n against dst->bytes (AICFN_E_INVALID), then dispatches. */
int loader_device_copy_to_device(loader_device *dev, const loader_dev_buf *dst, uint64_t dst_off,
                                 const void *src, size_t n, loader_ticket *ticket, aicfn_error *err);
int loader_device_wait(loader_device *dev, loader_ticket ticket, aicfn_error *err);
int loader_device_sync(loader_device *dev, aicfn_error *err);
/* 1 when the device offers staging buffers. */
int loader_device_has_staging(loader_device *dev);
/* AICFN_E_UNSUPPORTED when the device has no staging buffers. */
int loader_device_staging_acquire(loader_device *dev, loader_staging *out, aicfn_error *err);
void loader_device_staging_release(loader_device *dev, loader_staging *s, loader_ticket ticket);

#endif
