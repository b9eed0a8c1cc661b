/* device_host.c: host memory standing in for a device (always built).
 *
 * Allocations are anonymous mappings (page-granular; large ones marked for transparent
 * huge pages after they are pre-faulted), pre-faulted writable at allocation time
 * (MADV_POPULATE_WRITE) so the load pipeline's decompress/unfilter writes take no page
 * faults, as into cudaMalloc'd memory; the cost shows in the load's alloc_us instead,
 * done in one batch (about half the cost of faulting page by page). The last freed
 * large mapping is kept (one "spare", still counted as used but reported free by
 * mem_info) and handed to the next allocation it can hold, trimmed to size: a model
 * replacing an evicted one takes no faults at all, as with a caching device
 * allocator. Like cudaMalloc, a reused block is not cleared below the requested size
 * (the page-rounding tail is). Mappings are charged against a byte budget from
 * configuration;
 * mem_info reports that budget. Copies are plain memcpy and complete at once, so the
 * optional copy/wait/sync/staging members stay unset and the dispatcher defaults them.
 * Not for: pinned or device memory (device_cuda.c). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "loader/device.h"

#define HOST_HUGE (2ull << 20)

typedef struct host_dev {
    uint64_t budget;
    uint64_t used; /* includes the spare */
    void *spare;   /* a freed, already faulted mapping, or NULL */
    uint64_t spare_bytes;
    pthread_mutex_t mu;
} host_dev;

static uint64_t host_page(void) {
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (uint64_t)p : 4096u;
}

static const char *host_name(loader_device *dev) {
    (void)dev;
    return "host";
}

static int host_is_host(loader_device *dev) {
    (void)dev;
    return 1;
}

static uint64_t host_alloc_size(loader_device *dev, uint64_t bytes) {
    (void)dev;
    uint64_t p = host_page();
    if (bytes > UINT64_MAX - p) return UINT64_MAX;
    return (bytes + p - 1) / p * p;
}

static int host_alloc(loader_device *dev, uint64_t bytes, loader_dev_buf *out, aicfn_error *err) {
    host_dev *h = dev->ctx;
    uint64_t size = host_alloc_size(dev, bytes);
    if (size == UINT64_MAX || size > (uint64_t)SIZE_MAX)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "host device: %llu bytes cannot be allocated",
                               (unsigned long long)bytes);
    pthread_mutex_lock(&h->mu);
    void *spare = h->spare;
    uint64_t spare_bytes = h->spare_bytes;
    h->spare = NULL;
    h->spare_bytes = 0;
    if (spare && spare_bytes >= size) {
        h->used -= spare_bytes - size;
        pthread_mutex_unlock(&h->mu);
        if (spare_bytes > size) munmap((char *)spare + size, (size_t)(spare_bytes - size));
        if (size > bytes) memset((char *)spare + bytes, 0, (size_t)(size - bytes));
        out->ptr = spare;
        out->bytes = size;
        return AICFN_OK;
    }
    h->used -= spare_bytes;
    if (spare) {
        pthread_mutex_unlock(&h->mu);
        munmap(spare, (size_t)spare_bytes);
        pthread_mutex_lock(&h->mu);
    }
    if (size > h->budget - h->used) {
        uint64_t used = h->used, budget = h->budget;
        pthread_mutex_unlock(&h->mu);
        return aicfn_error_set(
            err, AICFN_E_CAPACITY, "host device: %llu bytes requested, %llu of the %llu-byte budget free",
            (unsigned long long)size, (unsigned long long)(budget - used), (unsigned long long)budget);
    }
    h->used += size;
    pthread_mutex_unlock(&h->mu);
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        pthread_mutex_lock(&h->mu);
        h->used -= size;
        pthread_mutex_unlock(&h->mu);
        return aicfn_error_errno(err, e == ENOMEM ? AICFN_E_CAPACITY : AICFN_E_DEVICE, e,
                                 "host device: mapping %llu bytes", (unsigned long long)size);
    }
#ifdef MADV_POPULATE_WRITE
    /* Kernels before 5.14 answer EINVAL: the pages then fault in on first write, as
     * before. Any other failure means the memory is not there: say so now rather than
     * be killed for it halfway through a load. */
    if (madvise(p, (size_t)size, MADV_POPULATE_WRITE) != 0 && errno != EINVAL) {
        int e = errno;
        munmap(p, (size_t)size);
        pthread_mutex_lock(&h->mu);
        h->used -= size;
        pthread_mutex_unlock(&h->mu);
        return aicfn_error_errno(err, AICFN_E_CAPACITY, e, "host device: pre-faulting %llu bytes",
                                 (unsigned long long)size);
    }
#endif
#ifdef MADV_HUGEPAGE
    /* After the pre-fault, not before: huge pages asked for at fault time are found by
     * direct compaction when memory is fragmented (page cache full of model files), which
     * stalled a 24 MiB allocation for 100+ ms here where 4 KiB pages take 3-4 ms. Marked
     * now, the mapping is collapsed into huge pages by khugepaged in the background. */
    if (size >= HOST_HUGE) (void)madvise(p, (size_t)size, MADV_HUGEPAGE);
#endif
    out->ptr = p;
    out->bytes = size;
    return AICFN_OK;
}

static void host_free(loader_device *dev, loader_dev_buf *buf) {
    host_dev *h = dev->ctx;
    void *drop = buf->ptr;
    uint64_t drop_bytes = buf->bytes;
    pthread_mutex_lock(&h->mu);
    if (buf->bytes >= HOST_HUGE) { /* keep it as the spare; the older spare goes */
        drop = h->spare;
        drop_bytes = h->spare_bytes;
        h->spare = buf->ptr;
        h->spare_bytes = buf->bytes;
    }
    h->used -= drop_bytes;
    pthread_mutex_unlock(&h->mu);
    if (drop) munmap(drop, (size_t)drop_bytes);
}

static int host_mem_info(loader_device *dev, uint64_t *free_bytes, uint64_t *total_bytes, aicfn_error *err) {
    (void)err;
    host_dev *h = dev->ctx;
    pthread_mutex_lock(&h->mu);
    *free_bytes = h->budget - h->used + h->spare_bytes;
    *total_bytes = h->budget;
    pthread_mutex_unlock(&h->mu);
    return AICFN_OK;
}

static void host_destroy(loader_device *dev) {
    host_dev *h = dev->ctx;
    if (!h) return;
    if (h->spare) munmap(h->spare, (size_t)h->spare_bytes);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

static const loader_device_ops host_ops = {
    .name = host_name,
    .is_host = host_is_host,
    .alloc = host_alloc,
    .free = host_free,
    .mem_info = host_mem_info,
    .alloc_size = host_alloc_size,
    .destroy = host_destroy,
};

int loader_device_host_open(uint64_t budget_bytes, loader_device **out, aicfn_error *err) {
    if (!out) return aicfn_error_set(err, AICFN_E_INVALID, "host device: no output");
    *out = NULL;
    if (budget_bytes == 0)
        return aicfn_error_set(err, AICFN_E_INVALID, "host device: the budget must be > 0 bytes");
    loader_device *dev = calloc(1, sizeof *dev);
    host_dev *h = calloc(1, sizeof *h);
    if (!dev || !h) {
        free(dev);
        free(h);
        return aicfn_error_set(err, AICFN_E_NOMEM, "host device: out of memory");
    }
    h->budget = budget_bytes;
    pthread_mutex_init(&h->mu, NULL);
    dev->ops = &host_ops;
    dev->ctx = h;
    *out = dev;
    return AICFN_OK;
}
