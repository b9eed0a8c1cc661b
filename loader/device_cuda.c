/* device_cuda.c: the CUDA runtime backend of the device interface (built only when
 * AICFN_HAVE_CUDA; the only file of loader/ that touches CUDA).
 *
 * At open it selects the device (cudaSetDevice), creates AICFN_CUDA_STREAMS
 * non-blocking streams, a pool of events for copy completion, and
 * AICFN_CUDA_STAGING_BUFFERS pinned staging buffers (cudaHostAlloc) of
 * AICFN_CUDA_STAGING_BYTES each: never per load. Copies are cudaMemcpyAsync on the
 * streams in turn, each followed by an event; a ticket names (event slot, generation).
 * Every CUDA call goes through CU_CHECK, which maps cudaError_t into the aicfn error
 * enum (cudaErrorMemoryAllocation -> AICFN_E_CAPACITY, else AICFN_E_DEVICE) keeping
 * cudaGetErrorName/cudaGetErrorString in the message.
 * The runtime's current device is per host thread, so every entry point calls
 * cudaSetDevice first. Not for: kernels (handlers bring their own). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/tunables.h"
#include "loader/device.h"

/* Events in the completion pool: enough for every staging buffer and thread. */
#define CU_EVENTS 256
/* Large allocations come in 2 MiB pages. */
#define CU_GRANULE (2ull << 20)

/* Maps a CUDA error to AICFN_OK or our enum, naming the call. */
static int cu_check(cudaError_t e, aicfn_error *err, const char *call, int ordinal) {
    if (e == cudaSuccess) return AICFN_OK;
    int code = e == cudaErrorMemoryAllocation ? AICFN_E_CAPACITY : AICFN_E_DEVICE;
    return aicfn_error_set(err, code, "cuda:%d: %s failed: %s (%d: %s)", ordinal, call, cudaGetErrorName(e),
                           (int)e, cudaGetErrorString(e));
}

/* The one checking macro: every CUDA call goes through it. */
#define CU_CHECK(call, err, ordinal) cu_check((call), (err), #call, (ordinal))

typedef enum { SLOT_FREE = 0, SLOT_BUSY = 1, SLOT_PENDING = 2 } cu_slot_state;

typedef struct cu_event {
    cudaEvent_t ev;
    uint32_t gen;
    int in_flight; /* claimed by a copy, until its completion is seen */
    /* The claiming copy's event is recorded. Until then the event still holds an older
     * record (or none), which cudaEventQuery reports complete: completion checks must
     * skip the slot, or a staging buffer could be refilled while its copy still reads it. */
    int recorded;
} cu_event;

typedef struct cu_stage {
    void *ptr;
    cu_slot_state state;
    loader_ticket ticket; /* the copy that must finish before reuse (PENDING) */
} cu_stage;

typedef struct cu_dev {
    int ordinal;
    char name[32];
    cudaStream_t streams[AICFN_CUDA_STREAMS];
    int n_streams;
    cu_event events[CU_EVENTS];
    int n_events;
    uint32_t next_event;
    cu_stage stages[AICFN_CUDA_STAGING_BUFFERS];
    int n_stages;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a staging buffer was released, an event freed or recorded */
} cu_dev;

static loader_ticket cu_ticket(int slot, uint32_t gen) {
    return ((loader_ticket)gen << 16) | (loader_ticket)(slot + 1);
}

int loader_cuda_device_count(char *why, size_t why_cap) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why && why_cap)
            snprintf(why, why_cap, "cudaGetDeviceCount: %s (%d: %s)", cudaGetErrorName(e), (int)e,
                     cudaGetErrorString(e));
        (void)cudaGetLastError(); /* clear the sticky-free error state */
        return 0;
    }
    if (n <= 0 && why && why_cap) snprintf(why, why_cap, "cudaGetDeviceCount reports 0 devices");
    return n > 0 ? n : 0;
}

static const char *cu_name(loader_device *dev) {
    return ((cu_dev *)dev->ctx)->name;
}

static int cu_is_host(loader_device *dev) {
    (void)dev;
    return 0;
}

static uint64_t cu_alloc_size(loader_device *dev, uint64_t bytes) {
    (void)dev;
    if (bytes > UINT64_MAX - CU_GRANULE) return UINT64_MAX;
    return (bytes + CU_GRANULE - 1) / CU_GRANULE * CU_GRANULE;
}

static int cu_alloc(loader_device *dev, uint64_t bytes, loader_dev_buf *out, aicfn_error *err) {
    cu_dev *c = dev->ctx;
    uint64_t size = cu_alloc_size(dev, bytes);
    if (size == UINT64_MAX || size > (uint64_t)SIZE_MAX)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: %llu bytes cannot be allocated", c->name,
                               (unsigned long long)bytes);
    int rc = CU_CHECK(cudaSetDevice(c->ordinal), err, c->ordinal);
    if (rc != AICFN_OK) return rc;
    void *p = NULL;
    rc = CU_CHECK(cudaMalloc(&p, (size_t)size), err, c->ordinal);
    if (rc != AICFN_OK) {
        (void)cudaGetLastError();
        if (err) aicfn_error_wrap(err, "allocating %llu bytes", (unsigned long long)size);
        return rc; /* AICFN_E_CAPACITY for cudaErrorMemoryAllocation, with or without err */
    }
    out->ptr = p;
    out->bytes = size;
    return AICFN_OK;
}

static void cu_free(loader_device *dev, loader_dev_buf *buf) {
    cu_dev *c = dev->ctx;
    aicfn_error e;
    if (CU_CHECK(cudaSetDevice(c->ordinal), &e, c->ordinal) == AICFN_OK &&
        CU_CHECK(cudaFree(buf->ptr), &e, c->ordinal) == AICFN_OK)
        return;
    fprintf(stderr, "aicfn: %s\n", e.msg); /* a free cannot report; never silently */
}

static int cu_mem_info(loader_device *dev, uint64_t *free_bytes, uint64_t *total_bytes, aicfn_error *err) {
    cu_dev *c = dev->ctx;
    int rc = CU_CHECK(cudaSetDevice(c->ordinal), err, c->ordinal);
    if (rc != AICFN_OK) return rc;
    size_t f = 0, t = 0;
    rc = CU_CHECK(cudaMemGetInfo(&f, &t), err, c->ordinal);
    if (rc != AICFN_OK) return rc;
    *free_bytes = f;
    *total_bytes = t;
    return AICFN_OK;
}

/* Under c->mu: marks completed events free. */
static void cu_reap_locked(cu_dev *c) {
    for (int i = 0; i < c->n_events; i++) {
        if (!c->events[i].in_flight || !c->events[i].recorded) continue;
        cudaError_t e = cudaEventQuery(c->events[i].ev);
        if (e == cudaSuccess)
            c->events[i].in_flight = 0;
        else if (e != cudaErrorNotReady)
            (void)cudaGetLastError(); /* reported by wait/sync */
    }
}

static int cu_wait(loader_device *dev, loader_ticket ticket, aicfn_error *err) {
    cu_dev *c = dev->ctx;
    int slot = (int)(ticket & 0xffff) - 1;
    uint32_t gen = (uint32_t)(ticket >> 16);
    if (slot < 0 || slot >= c->n_events)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: bad ticket", c->name);
    pthread_mutex_lock(&c->mu);
    int pending = c->events[slot].in_flight && c->events[slot].gen == gen;
    pthread_mutex_unlock(&c->mu);
    if (!pending) return AICFN_OK; /* completed (the slot is only recycled once complete) */
    int rc = CU_CHECK(cudaSetDevice(c->ordinal), err, c->ordinal);
    if (rc == AICFN_OK) rc = CU_CHECK(cudaEventSynchronize(c->events[slot].ev), err, c->ordinal);
    if (rc != AICFN_OK) return rc;
    pthread_mutex_lock(&c->mu);
    if (c->events[slot].gen == gen) c->events[slot].in_flight = 0;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return AICFN_OK;
}

static int cu_copy(loader_device *dev, const loader_dev_buf *dst, uint64_t dst_off, const void *src, size_t n,
                   loader_ticket *ticket, aicfn_error *err) {
    cu_dev *c = dev->ctx;
    int rc = CU_CHECK(cudaSetDevice(c->ordinal), err, c->ordinal);
    if (rc != AICFN_OK) return rc;
    /* Take a free event slot, reaping (and if need be waiting on) completed ones. */
    int slot = -1;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        for (int k = 0; k < c->n_events && slot < 0; k++) {
            int i = (int)((c->next_event + (uint32_t)k) % (uint32_t)c->n_events);
            if (!c->events[i].in_flight) slot = i;
        }
        if (slot >= 0) break;
        cu_reap_locked(c);
        for (int i = 0; i < c->n_events && slot < 0; i++)
            if (!c->events[i].in_flight) slot = i;
        if (slot >= 0) break;
        /* All in flight: wait for the oldest outside the lock (or, while its copy is
         * still being queued by another thread, for that copy's event to be recorded). */
        int oldest = (int)(c->next_event % (uint32_t)c->n_events);
        if (!c->events[oldest].recorded) {
            pthread_cond_wait(&c->cv, &c->mu);
            continue;
        }
        loader_ticket t = cu_ticket(oldest, c->events[oldest].gen);
        pthread_mutex_unlock(&c->mu);
        rc = cu_wait(dev, t, err);
        pthread_mutex_lock(&c->mu);
        if (rc != AICFN_OK) {
            pthread_mutex_unlock(&c->mu);
            return rc;
        }
    }
    c->next_event = (uint32_t)slot + 1;
    c->events[slot].gen = (c->events[slot].gen + 1) & 0xffffffffu;
    if (c->events[slot].gen == 0) c->events[slot].gen = 1;
    c->events[slot].in_flight = 1;
    c->events[slot].recorded = 0;
    uint32_t gen = c->events[slot].gen;
    pthread_mutex_unlock(&c->mu);

    /* Queued outside the lock (a copy from pageable memory blocks while the runtime
     * stages it); nothing else touches a claimed slot before it is recorded. */
    cudaStream_t s = c->streams[slot % c->n_streams];
    rc = CU_CHECK(cudaMemcpyAsync((char *)dst->ptr + dst_off, src, n, cudaMemcpyHostToDevice, s), err,
                  c->ordinal);
    int queued = rc == AICFN_OK;
    if (rc == AICFN_OK) rc = CU_CHECK(cudaEventRecord(c->events[slot].ev, s), err, c->ordinal);
    if (rc != AICFN_OK) {
        if (queued) {
            /* The copy may still read src, which the caller reuses once we return. */
            (void)cudaStreamSynchronize(s);
            (void)cudaGetLastError();
        }
        pthread_mutex_lock(&c->mu);
        c->events[slot].in_flight = 0;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        return rc;
    }
    pthread_mutex_lock(&c->mu);
    c->events[slot].recorded = 1;
    pthread_cond_broadcast(&c->cv); /* a copy may wait for this slot to be recorded */
    pthread_mutex_unlock(&c->mu);
    *ticket = cu_ticket(slot, gen);
    return AICFN_OK;
}

static int cu_sync(loader_device *dev, aicfn_error *err) {
    cu_dev *c = dev->ctx;
    int rc = CU_CHECK(cudaSetDevice(c->ordinal), err, c->ordinal);
    for (int i = 0; rc == AICFN_OK && i < c->n_streams; i++)
        rc = CU_CHECK(cudaStreamSynchronize(c->streams[i]), err, c->ordinal);
    if (rc != AICFN_OK) return rc;
    pthread_mutex_lock(&c->mu);
    cu_reap_locked(c);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return AICFN_OK;
}

static int cu_staging_acquire(loader_device *dev, loader_staging *out, aicfn_error *err) {
    cu_dev *c = dev->ctx;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        for (int i = 0; i < c->n_stages; i++) {
            if (c->stages[i].state == SLOT_FREE) {
                c->stages[i].state = SLOT_BUSY;
                pthread_mutex_unlock(&c->mu);
                out->ptr = c->stages[i].ptr;
                out->cap = AICFN_CUDA_STAGING_BYTES;
                out->slot = i;
                return AICFN_OK;
            }
        }
        /* Claim a pending one and wait for its copy outside the lock. */
        int pend = -1;
        for (int i = 0; i < c->n_stages && pend < 0; i++)
            if (c->stages[i].state == SLOT_PENDING) pend = i;
        if (pend >= 0) {
            loader_ticket t = c->stages[pend].ticket;
            c->stages[pend].state = SLOT_BUSY;
            pthread_mutex_unlock(&c->mu);
            int rc = cu_wait(dev, t, err);
            if (rc != AICFN_OK) {
                pthread_mutex_lock(&c->mu);
                c->stages[pend].state = SLOT_FREE;
                pthread_cond_broadcast(&c->cv);
                pthread_mutex_unlock(&c->mu);
                return rc;
            }
            out->ptr = c->stages[pend].ptr;
            out->cap = AICFN_CUDA_STAGING_BYTES;
            out->slot = pend;
            return AICFN_OK;
        }
        pthread_cond_wait(&c->cv, &c->mu); /* all BUSY: wait for a release */
    }
}

static void cu_staging_release(loader_device *dev, loader_staging *s, loader_ticket ticket) {
    cu_dev *c = dev->ctx;
    if (s->slot < 0 || s->slot >= c->n_stages) return;
    pthread_mutex_lock(&c->mu);
    c->stages[s->slot].ticket = ticket;
    c->stages[s->slot].state = ticket ? SLOT_PENDING : SLOT_FREE;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void cu_destroy(loader_device *dev) {
    cu_dev *c = dev->ctx;
    if (!c) return;
    if (cudaSetDevice(c->ordinal) == cudaSuccess) {
        for (int i = 0; i < c->n_streams; i++) {
            (void)cudaStreamSynchronize(c->streams[i]);
            (void)cudaStreamDestroy(c->streams[i]);
        }
        for (int i = 0; i < c->n_events; i++)
            (void)cudaEventDestroy(c->events[i].ev);
        for (int i = 0; i < c->n_stages; i++)
            (void)cudaFreeHost(c->stages[i].ptr);
    }
    (void)cudaGetLastError();
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
    dev->ctx = NULL;
}

static const loader_device_ops cu_ops = {
    .name = cu_name,
    .is_host = cu_is_host,
    .alloc = cu_alloc,
    .free = cu_free,
    .mem_info = cu_mem_info,
    .alloc_size = cu_alloc_size,
    .copy_to_device = cu_copy,
    .wait = cu_wait,
    .sync = cu_sync,
    .staging_acquire = cu_staging_acquire,
    .staging_release = cu_staging_release,
    .destroy = cu_destroy,
};

int loader_device_cuda_open(int ordinal, loader_device **out, aicfn_error *err) {
    if (!out) return aicfn_error_set(err, AICFN_E_INVALID, "cuda device: no output");
    *out = NULL;
    char why[256] = "";
    int count = loader_cuda_device_count(why, sizeof why);
    if (count <= 0)
        return aicfn_error_set(err, AICFN_E_UNAVAILABLE, "device cuda:%d: no usable GPU: %s", ordinal, why);
    if (ordinal < 0 || ordinal >= count)
        return aicfn_error_set(err, AICFN_E_UNAVAILABLE, "device cuda:%d: only %d CUDA device(s) visible",
                               ordinal, count);
    loader_device *dev = calloc(1, sizeof *dev);
    cu_dev *c = calloc(1, sizeof *c);
    if (!dev || !c) {
        free(dev);
        free(c);
        return aicfn_error_set(err, AICFN_E_NOMEM, "cuda device: out of memory");
    }
    c->ordinal = ordinal;
    snprintf(c->name, sizeof c->name, "cuda:%d", ordinal);
    pthread_mutex_init(&c->mu, NULL);
    clock_cond_init(&c->cv);
    dev->ops = &cu_ops;
    dev->ctx = c;
    /* The open is part of a worker's cold start: its phases are logged. */
    uint64_t t0 = clock_now_us();
    int rc = CU_CHECK(cudaSetDevice(ordinal), err, ordinal); /* creates the primary context */
    uint64_t t_ctx = clock_now_us();
    if (rc != AICFN_OK) {
        /* Visible but not usable (busy in exclusive-process mode, ...): device.h's
         * AICFN_E_UNAVAILABLE; out of memory for the context stays AICFN_E_CAPACITY. */
        int code = rc == AICFN_E_CAPACITY ? AICFN_E_CAPACITY : AICFN_E_UNAVAILABLE;
        aicfn_error_wrap(err, "device cuda:%d: no usable GPU", ordinal);
        loader_device_close(dev);
        if (err) err->code = code;
        return code;
    }
    for (int i = 0; rc == AICFN_OK && i < AICFN_CUDA_STREAMS; i++) {
        rc = CU_CHECK(cudaStreamCreateWithFlags(&c->streams[i], cudaStreamNonBlocking), err, ordinal);
        if (rc == AICFN_OK) c->n_streams++;
    }
    /* Blocking sync: a pipeline thread waiting for a copy (a staging buffer, cu_wait) sleeps
     * instead of spinning, which would take a core from the threads decompressing. */
    for (int i = 0; rc == AICFN_OK && i < CU_EVENTS; i++) {
        rc = CU_CHECK(
            cudaEventCreateWithFlags(&c->events[i].ev, cudaEventDisableTiming | cudaEventBlockingSync), err,
            ordinal);
        if (rc == AICFN_OK) c->n_events++;
    }
    uint64_t t_streams = clock_now_us();
    for (int i = 0; rc == AICFN_OK && i < AICFN_CUDA_STAGING_BUFFERS; i++) {
        rc = CU_CHECK(cudaHostAlloc(&c->stages[i].ptr, AICFN_CUDA_STAGING_BYTES, cudaHostAllocPortable), err,
                      ordinal);
        if (rc == AICFN_OK) c->n_stages++;
    }
    if (rc != AICFN_OK) {
        aicfn_error_wrap(err, "opening device cuda:%d", ordinal);
        loader_device_close(dev);
        return rc == AICFN_E_CAPACITY ? AICFN_E_CAPACITY : AICFN_E_DEVICE;
    }
    uint64_t t_end = clock_now_us();
    log_info("device %s opened in %.1f ms: context %.1f ms, %d streams and %d events %.1f ms, %d pinned "
             "staging buffers of %u MiB %.1f ms",
             c->name, (double)(t_end - t0) / 1e3, (double)(t_ctx - t0) / 1e3, c->n_streams, c->n_events,
             (double)(t_streams - t_ctx) / 1e3, c->n_stages, AICFN_CUDA_STAGING_BYTES >> 20,
             (double)(t_end - t_streams) / 1e3);
    *out = dev;
    return AICFN_OK;
}
