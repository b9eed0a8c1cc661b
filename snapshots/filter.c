/* filter.c: the byte-plane filter (see filter.h for the math). Both directions are
 * simple loops over bytes that compilers vectorize; the inverse is on the load path,
 * where snap_filter_inverse_stream also has vector forms with streaming stores (AVX-512,
 * or SSE2 on other x86-64), fenced once by the caller (snap_filter_stream_fence).
 * Not for: deciding which tensors get filtered (writer.c). */
#include "snapshots/filter.h"

#include <stdint.h>
#include <string.h>

/* FLT_STREAM: the width in bytes of the streaming forms' stores (the alignment they
 * need), 0 where there are none. AVX-512BW writes 64 bytes a step; every other x86-64
 * has SSE2, 16 bytes a step (same streaming stores, narrower). */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FLT_STREAM 64
#elif defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define FLT_STREAM 16
#else
#define FLT_STREAM 0
#endif

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

#if FLT_STREAM == 64
/* The vector forms below write 64 raw bytes per step to dst (64-byte aligned) with a
 * streaming store and to hot (if any) with an ordinary one; they return how many
 * values they did (a multiple of the step), the caller does the rest. */
static size_t flt_inv16_stream(const uint8_t *p0, const uint8_t *p1, size_t n, uint8_t *d, uint8_t *hot) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512i hi = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)(p0 + i)));
        __m512i lo = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)(p1 + i)));
        __m512i r = _mm512_or_si512(_mm512_slli_epi16(hi, 8), lo);
        __m512i v = _mm512_or_si512(_mm512_srli_epi16(r, 1), _mm512_slli_epi16(r, 15));
        _mm512_stream_si512((void *)(d + 2 * i), v);
        if (hot) _mm512_storeu_si512((void *)(hot + 2 * i), v);
    }
    return i;
}

static size_t flt_inv32_stream(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3,
                               size_t n, uint8_t *d, uint8_t *hot) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i b3 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p0 + i)));
        __m512i b2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p1 + i)));
        __m512i b1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p2 + i)));
        __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p3 + i)));
        __m512i r = _mm512_or_si512(_mm512_or_si512(_mm512_slli_epi32(b3, 24), _mm512_slli_epi32(b2, 16)),
                                    _mm512_or_si512(_mm512_slli_epi32(b1, 8), b0));
        __m512i v = _mm512_ror_epi32(r, 1);
        _mm512_stream_si512((void *)(d + 4 * i), v);
        if (hot) _mm512_storeu_si512((void *)(hot + 4 * i), v);
    }
    return i;
}

static size_t flt_copy_stream(const uint8_t *s, size_t n, uint8_t *d, uint8_t *hot) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512i v = _mm512_loadu_si512((const void *)(s + i));
        _mm512_stream_si512((void *)(d + i), v);
        if (hot) _mm512_storeu_si512((void *)(hot + i), v);
    }
    return i;
}
#elif FLT_STREAM == 16
/* The same with SSE2: 16 raw bytes per store, dst 16-byte aligned. Planes are
 * interleaved with unpack: for 32-bit values, (p3, p2) and (p1, p0) into 16-bit pairs,
 * then the pairs into r (little-endian bytes p3 p2 p1 p0); for 16-bit values, (p1, p0). */
static size_t flt_inv16_stream(const uint8_t *p0, const uint8_t *p1, size_t n, uint8_t *d, uint8_t *hot) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i hi = _mm_loadu_si128((const __m128i *)(const void *)(p0 + i));
        __m128i lo = _mm_loadu_si128((const __m128i *)(const void *)(p1 + i));
        __m128i r[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};
        for (int k = 0; k < 2; k++) {
            __m128i v = _mm_or_si128(_mm_srli_epi16(r[k], 1), _mm_slli_epi16(r[k], 15));
            _mm_stream_si128((__m128i *)(void *)(d + 2 * i + 16 * k), v);
            if (hot) _mm_storeu_si128((__m128i *)(void *)(hot + 2 * i + 16 * k), v);
        }
    }
    return i;
}

static size_t flt_inv32_stream(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3,
                               size_t n, uint8_t *d, uint8_t *hot) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i b3 = _mm_loadu_si128((const __m128i *)(const void *)(p0 + i));
        __m128i b2 = _mm_loadu_si128((const __m128i *)(const void *)(p1 + i));
        __m128i b1 = _mm_loadu_si128((const __m128i *)(const void *)(p2 + i));
        __m128i b0 = _mm_loadu_si128((const __m128i *)(const void *)(p3 + i));
        __m128i lo16[2] = {_mm_unpacklo_epi8(b0, b1), _mm_unpackhi_epi8(b0, b1)};
        __m128i hi16[2] = {_mm_unpacklo_epi8(b2, b3), _mm_unpackhi_epi8(b2, b3)};
        for (int k = 0; k < 4; k++) {
            __m128i r = k & 1 ? _mm_unpackhi_epi16(lo16[k >> 1], hi16[k >> 1])
                              : _mm_unpacklo_epi16(lo16[k >> 1], hi16[k >> 1]);
            __m128i v = _mm_or_si128(_mm_srli_epi32(r, 1), _mm_slli_epi32(r, 31));
            _mm_stream_si128((__m128i *)(void *)(d + 4 * i + 16 * k), v);
            if (hot) _mm_storeu_si128((__m128i *)(void *)(hot + 4 * i + 16 * k), v);
        }
    }
    return i;
}

static size_t flt_copy_stream(const uint8_t *s, size_t n, uint8_t *d, uint8_t *hot) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        _mm_stream_si128((__m128i *)(void *)(d + i), v);
        if (hot) _mm_storeu_si128((__m128i *)(void *)(hot + i), v);
    }
    return i;
}
#endif

void snap_filter_inverse_stream(aicfn_dtype dt, snap_filter f, const void *src, size_t nbytes, size_t from,
                                size_t len, void *dst, void *hot) {
    const uint8_t *s = src;
    uint8_t *d = dst, *h = hot;
    unsigned w = f == SNAP_FILTER_PLANES ? snap_filter_planes_of(dt) : 0;
    size_t done = 0; /* raw bytes written by the vector form */
#if FLT_STREAM
    if (((uintptr_t)d & (FLT_STREAM - 1)) == 0) {
        if (w == 2) {
            size_t n = nbytes / 2, i = from / 2;
            done = 2 * flt_inv16_stream(s + i, s + n + i, len / 2, d, h);
        } else if (w == 4) {
            size_t n = nbytes / 4, i = from / 4;
            done = 4 * flt_inv32_stream(s + i, s + n + i, s + 2 * n + i, s + 3 * n + i, len / 4, d, h);
        } else {
            done = flt_copy_stream(s + from, len, d, h);
        }
    }
#endif
    if (done == len) return;
    if (w)
        snap_filter_inverse_part(dt, src, nbytes, from + done, len - done, d + done);
    else
        memcpy(d + done, s + from + done, len - done);
    if (h) memcpy(h + done, d + done, len - done);
}

void snap_filter_stream_fence(void) {
#if FLT_STREAM
    _mm_sfence();
#endif
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
