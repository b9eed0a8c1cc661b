/* filter.c: the byte-plane filter (see filter.h for the math). Both directions are
 * simple loops over bytes that compilers vectorize; the inverse is on the load path.
 * Not for: deciding which tensors get filtered (writer.c). */
#include "snapshots/filter.h"

#include <stdint.h>
#include <string.h>

unsigned snap_filter_planes_of(aicfn_dtype dt) {
    switch (dt) {
    case AICFN_DTYPE_BF16:
    case AICFN_DTYPE_FP16:
        return 2;
    case AICFN_DTYPE_FP32:
        return 4;
    default:
        return 0;
    }
}

/* 16-bit values: r = rotl1(v); plane 0 = r >> 8, plane 1 = r & 0xff. */
static void flt_fwd16(const uint8_t *restrict s, size_t n, uint8_t *restrict d) {
    uint8_t *restrict p0 = d, *restrict p1 = d + n;
    for (size_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)(s[2 * i] | (s[2 * i + 1] << 8));
        uint16_t r = (uint16_t)((v << 1) | (v >> 15));
        p0[i] = (uint8_t)(r >> 8);
        p1[i] = (uint8_t)r;
    }
}

/* Values [0, n) from planes p0 and p1 (each already offset to the first value). */
static void flt_inv16(const uint8_t *restrict p0, const uint8_t *restrict p1, size_t n, uint8_t *restrict d) {
    for (size_t i = 0; i < n; i++) {
        uint16_t r = (uint16_t)((p0[i] << 8) | p1[i]);
        uint16_t v = (uint16_t)((r >> 1) | (r << 15));
        d[2 * i] = (uint8_t)v;
        d[2 * i + 1] = (uint8_t)(v >> 8);
    }
}

/* 32-bit values: r = rotl1(v); plane k = byte (3 - k) of r. */
static void flt_fwd32(const uint8_t *restrict s, size_t n, uint8_t *restrict d) {
    uint8_t *restrict p0 = d, *restrict p1 = d + n, *restrict p2 = d + 2 * n, *restrict p3 = d + 3 * n;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)s[4 * i] | ((uint32_t)s[4 * i + 1] << 8) | ((uint32_t)s[4 * i + 2] << 16) |
                     ((uint32_t)s[4 * i + 3] << 24);
        uint32_t r = (v << 1) | (v >> 31);
        p0[i] = (uint8_t)(r >> 24);
        p1[i] = (uint8_t)(r >> 16);
        p2[i] = (uint8_t)(r >> 8);
        p3[i] = (uint8_t)r;
    }
}

static void flt_inv32(const uint8_t *restrict p0, const uint8_t *restrict p1, const uint8_t *restrict p2,
                      const uint8_t *restrict p3, size_t n, uint8_t *restrict d) {
    for (size_t i = 0; i < n; i++) {
        uint32_t r = ((uint32_t)p0[i] << 24) | ((uint32_t)p1[i] << 16) | ((uint32_t)p2[i] << 8) | p3[i];
        uint32_t v = (r >> 1) | (r << 31);
        d[4 * i] = (uint8_t)v;
        d[4 * i + 1] = (uint8_t)(v >> 8);
        d[4 * i + 2] = (uint8_t)(v >> 16);
        d[4 * i + 3] = (uint8_t)(v >> 24);
    }
}

void snap_filter_forward(aicfn_dtype dt, const void *src, size_t nbytes, void *dst) {
    if (snap_filter_planes_of(dt) == 2)
        flt_fwd16(src, nbytes / 2, dst);
    else if (snap_filter_planes_of(dt) == 4)
        flt_fwd32(src, nbytes / 4, dst);
    else
        memcpy(dst, src, nbytes);
}

void snap_filter_inverse(aicfn_dtype dt, const void *src, size_t nbytes, void *dst) {
    snap_filter_inverse_part(dt, src, nbytes, 0, nbytes, dst);
}

void snap_filter_inverse_part(aicfn_dtype dt, const void *planes, size_t nbytes, size_t from, size_t len,
                              void *dst) {
    const uint8_t *s = planes;
    unsigned w = snap_filter_planes_of(dt);
    if (w == 2) {
        size_t n = nbytes / 2, i = from / 2;
        flt_inv16(s + i, s + n + i, len / 2, dst);
    } else if (w == 4) {
        size_t n = nbytes / 4, i = from / 4;
        flt_inv32(s + i, s + n + i, s + 2 * n + i, s + 3 * n + i, len / 4, dst);
    } else {
        memcpy(dst, s + from, len);
    }
}

const char *snap_filter_name(snap_filter f) {
    switch (f) {
    case SNAP_FILTER_NONE:
        return "none";
    case SNAP_FILTER_PLANES:
        return "planes";
    }
    return NULL;
}

int snap_filter_from_name(const char *name, size_t len) {
    if (len == 4 && memcmp(name, "none", 4) == 0) return SNAP_FILTER_NONE;
    if (len == 6 && memcmp(name, "planes", 6) == 0) return SNAP_FILTER_PLANES;
    return -1;
}
