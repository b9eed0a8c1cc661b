/* device.c: the device dispatcher and `--device` selection.
 *
 * The dispatch functions check arguments and default the optional vtable members
 * (device.h); loader_device_open parses "auto|host|cuda[:N]" and picks a backend.
 * Not for: any backend's own code (device_host.c, device_cuda.c). */
#include "loader/device.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/tunables.h"

const char *loader_device_name(loader_device *dev) {
    return dev ? dev->ops->name(dev) : "(none)";
}

int loader_device_is_host(loader_device *dev) {
    return dev && dev->ops->is_host(dev);
}

int loader_device_alloc(loader_device *dev, uint64_t bytes, loader_dev_buf *out, aicfn_error *err) {
    if (!dev || !out) return aicfn_error_set(err, AICFN_E_INVALID, "device alloc: no device or output");
    out->ptr = NULL;
    out->bytes = 0;
    if (bytes == 0)
        return aicfn_error_set(err, AICFN_E_INVALID, "device alloc: zero bytes on %s",
                               loader_device_name(dev));
    return dev->ops->alloc(dev, bytes, out, err);
}

void loader_device_free(loader_device *dev, loader_dev_buf *buf) {
    if (!dev || !buf || !buf->ptr) return;
    dev->ops->free(dev, buf);
    buf->ptr = NULL;
    buf->bytes = 0;
}

int loader_device_mem_info(loader_device *dev, uint64_t *free_bytes, uint64_t *total_bytes,
                           aicfn_error *err) {
    if (!dev) return aicfn_error_set(err, AICFN_E_INVALID, "device mem_info: no device");
    uint64_t f = 0, t = 0;
    int rc = dev->ops->mem_info(dev, &f, &t, err);
    if (rc != AICFN_OK) return rc;
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return AICFN_OK;
}

uint64_t loader_device_alloc_size(loader_device *dev, uint64_t bytes) {
    if (dev && dev->ops->alloc_size) return dev->ops->alloc_size(dev, bytes);
    uint64_t a = AICFN_SNAP_ALIGN;
    if (bytes > UINT64_MAX - a) return UINT64_MAX;
    return (bytes + a - 1) / a * a;
}

int loader_device_copy_to_device(loader_device *dev, const loader_dev_buf *dst, uint64_t dst_off,
                                 const void *src, size_t n, loader_ticket *ticket, aicfn_error *err) {
    if (ticket) *ticket = 0;
    if (!dev || !dst || !dst->ptr || (!src && n))
        return aicfn_error_set(err, AICFN_E_INVALID, "copy to device: missing device, destination or source");
    if (dst_off > dst->bytes || n > dst->bytes - dst_off)
        return aicfn_error_set(
            err, AICFN_E_INVALID, "copy to device %s: [%llu, +%zu) is outside the %llu-byte allocation",
            loader_device_name(dev), (unsigned long long)dst_off, n, (unsigned long long)dst->bytes);
    if (n == 0) return AICFN_OK;
    loader_ticket t = 0;
    int rc;
    if (dev->ops->copy_to_device) {
        rc = dev->ops->copy_to_device(dev, dst, dst_off, src, n, &t, err);
    } else if (loader_device_is_host(dev)) {
        memmove((char *)dst->ptr + dst_off, src, n);
        rc = AICFN_OK;
    } else {
        rc = aicfn_error_set(err, AICFN_E_INTERNAL, "device %s has no copy_to_device",
                             loader_device_name(dev));
    }
    if (rc == AICFN_OK && ticket) *ticket = t;
    return rc;
}

int loader_device_wait(loader_device *dev, loader_ticket ticket, aicfn_error *err) {
    if (!dev) return aicfn_error_set(err, AICFN_E_INVALID, "device wait: no device");
    if (ticket == 0 || !dev->ops->wait) return AICFN_OK;
    return dev->ops->wait(dev, ticket, err);
}

int loader_device_sync(loader_device *dev, aicfn_error *err) {
    if (!dev) return aicfn_error_set(err, AICFN_E_INVALID, "device sync: no device");
    if (!dev->ops->sync) return AICFN_OK;
    return dev->ops->sync(dev, err);
}

int loader_device_has_staging(loader_device *dev) {
    return dev && dev->ops->staging_acquire && dev->ops->staging_release;
}

int loader_device_staging_acquire(loader_device *dev, loader_staging *out, aicfn_error *err) {
    if (!out) return aicfn_error_set(err, AICFN_E_INVALID, "staging acquire: no output");
    memset(out, 0, sizeof *out);
    if (!loader_device_has_staging(dev))
        return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "device %s has no staging buffers",
                               loader_device_name(dev));
    return dev->ops->staging_acquire(dev, out, err);
}

void loader_device_staging_release(loader_device *dev, loader_staging *s, loader_ticket ticket) {
    if (!s || !s->ptr || !loader_device_has_staging(dev)) return;
    dev->ops->staging_release(dev, s, ticket);
    s->ptr = NULL;
    s->cap = 0;
}

void loader_device_close(loader_device *dev) {
    if (!dev) return;
    (void)loader_device_sync(dev, NULL);
    if (dev->ops->destroy) dev->ops->destroy(dev);
    free(dev);
}

#ifndef AICFN_HAVE_CUDA
int loader_cuda_device_count(char *why, size_t why_cap) {
    if (why && why_cap) snprintf(why, why_cap, "CUDA support was not built into aicfn");
    return 0;
}
#endif

/* Parses "cuda" / "cuda:N" into an ordinal; -1 when malformed. */
static int dev_parse_cuda(const char *spec) {
    if (strcmp(spec, "cuda") == 0) return 0;
    if (strncmp(spec, "cuda:", 5) != 0 || spec[5] < '0' || spec[5] > '9') return -1;
    errno = 0;
    char *end = NULL;
    long n = strtol(spec + 5, &end, 10);
    if (errno || *end != '\0' || n < 0 || n > 1024) return -1;
    return (int)n;
}

int loader_device_open(const char *spec, uint64_t host_budget, loader_device **out, aicfn_error *err) {
    if (!out) return aicfn_error_set(err, AICFN_E_INVALID, "device open: no output");
    *out = NULL;
    if (!spec || !*spec) spec = "auto";
    if (host_budget == 0) host_budget = AICFN_DEFAULT_HOST_BUDGET;
    if (strcmp(spec, "host") == 0) return loader_device_host_open(host_budget, out, err);
    if (strcmp(spec, "auto") == 0) {
        char why[256] = "";
        int n = loader_cuda_device_count(why, sizeof why);
        if (n >= 1) {
#ifdef AICFN_HAVE_CUDA
            int rc = loader_device_cuda_open(0, out, err);
            if (rc == AICFN_OK) {
                log_info("device auto: %d CUDA device(s) visible, using %s", n, loader_device_name(*out));
                return AICFN_OK;
            }
            log_warn("device auto: CUDA device 0 failed to open (%s); using host memory",
                     err ? err->msg : "");
            if (err) aicfn_error_clear(err); /* the fallback's success must not carry it */
#endif
        } else {
            log_info("device auto: no GPU (%s); using host memory with a %llu-byte budget", why,
                     (unsigned long long)host_budget);
        }
        return loader_device_host_open(host_budget, out, err);
    }
    int ordinal = dev_parse_cuda(spec);
    if (ordinal < 0)
        return aicfn_error_set(err, AICFN_E_INVALID, "device '%s': expected auto, host, cuda or cuda:N",
                               spec);
#ifdef AICFN_HAVE_CUDA
    return loader_device_cuda_open(ordinal, out, err);
#else
    return aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                           "device '%s': CUDA support was not built into aicfn (rebuild with -Dcuda=on)",
                           spec);
#endif
}
