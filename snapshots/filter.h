/* filter.h: the byte-plane filter applied per tensor before compression (design.md §5).
 *
 * For BF16, FP16 and FP32 values ("planes" filter, after ZipNN): each little-endian value
 * v of w bytes is rotated left by one bit, r = (v << 1) | (v >> (8w - 1)), which moves
 * the sign bit from the top to the bottom. For BF16 and FP32 the top byte of r is then
 * exactly the 8 exponent bits; for FP16 (5-bit exponent) it holds the exponent and the
 * 3 top mantissa bits. The n values are then split into w planes of n bytes each, most
 * significant byte of r first: plane 0 = the exponent bytes of every value, then the
 * mantissa planes from high to low (the last one ends with the sign bit).
 * The inverse is written to vectorize: plain loops over uint8_t, no calls per value.
 * Not for: choosing filters or compressing (writer.c), reading frames (reader.c). */
#ifndef AICFN_SNAPSHOTS_FILTER_H
#define AICFN_SNAPSHOTS_FILTER_H

#include <stddef.h>

#include "aicfn.h"
#include "snapshots/snapshot.h"

/* Number of byte planes the planes filter makes for `dt` (2 for BF16 and FP16, 4 for
 * FP32), or 0 when the filter does not apply to the dtype. */
unsigned snap_filter_planes_of(aicfn_dtype dt);

/* Filters `nbytes` bytes of `dt` values (nbytes a multiple of the element size) from
 * `src` into `dst` as planes: plane k occupies dst[k * n, (k + 1) * n), n = element
 * count. `src` and `dst` must not overlap. `dt` must have planes. */
void snap_filter_forward(aicfn_dtype dt, const void *src, size_t nbytes, void *dst);

/* Reverses snap_filter_forward: reads planes from `src`, writes the values to `dst`. */
void snap_filter_inverse(aicfn_dtype dt, const void *src, size_t nbytes, void *dst);

/* Reverses bytes [from, from + len) of the values only: `planes` holds the filtered form
 * of `nbytes` bytes of `dt` values (as snap_filter_forward wrote it) and `dst` receives
 * the `len` raw bytes that start at raw byte `from`. `from` and `len` must be multiples
 * of the element size with from + len <= nbytes. The loader calls this on cache-sized
 * pieces so each piece can be checksummed while it is still in cache. */
void snap_filter_inverse_part(aicfn_dtype dt, const void *planes, size_t nbytes, size_t from, size_t len,
                              void *dst);

/* Writes raw bytes [from, from + len) of a tensor stored with filter `f` on the load
 * path: `src` holds the tensor as stored (`nbytes` bytes: planes for SNAP_FILTER_PLANES,
 * the raw bytes themselves for SNAP_FILTER_NONE, then this is a copy). The bytes go to
 * `dst` through streaming stores where the CPU has them (x86-64: 64 bytes a store with
 * AVX-512BW, 16 with SSE2; the build targets the machine it runs on): a load writes far more than it reads
 * back soon, and ordinary stores would first read every destination line and push out the frame being
 * unfiltered. When `hot` is not NULL (len bytes), the raw bytes go there as well, with ordinary stores: a
 * small buffer that stays in cache, for checksumming. The streaming stores are not fenced here (a fence waits
 * for them to drain, and a load calls this for every small piece, hashing each while the previous ones
 * drain): call snap_filter_stream_fence before any other thread or device may read `dst`. The calling thread
 * sees its own stores at once. `dst` needs no alignment (unaligned destinations take the plain path); `from`
 * and `len` are as for snap_filter_inverse_part. */
void snap_filter_inverse_stream(aicfn_dtype dt, snap_filter f, const void *src, size_t nbytes, size_t from,
                                size_t len, void *dst, void *hot);

/* Orders every streaming store this thread made (snap_filter_inverse_stream) before its
 * later stores, so that whatever it publishes next (a lock, a flag) comes after them. */
void snap_filter_stream_fence(void);

/* The manifest name of a filter ("none", "planes"); NULL for unknown values. */
const char *snap_filter_name(snap_filter f);

/* Parses a manifest filter name; returns -1 when unknown. */
int snap_filter_from_name(const char *name, size_t len);

#endif
