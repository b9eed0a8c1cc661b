/* snapshot.h: reading aicfn snapshots (design.md §5, docs/snapshot-format.md).
 *
 * A snapshot is one model's tensors in a file that is a valid zstd stream:
 *   [skippable frame: manifest (msgpack)] [data frame 0] ... [data frame N-1]
 *   [skippable frame: seek table, zstd seekable format]
 * The tensors are laid out in one "blob" (offsets 256-byte aligned). Data frame i
 * holds blob bytes [raw_offset, raw_offset + raw_size), at most `chunk` bytes, after a
 * per-tensor byte-plane filter. Frames are independent: N threads can each take frames.
 *
 * This is the API the loader uses. It knows nothing of devices or the network.
 * A snap_reader is immutable after snap_open and may be shared by threads; each thread
 * needs its own snap_dctx. Every function validates what it reads: a hostile file
 * gets AICFN_E_CORRUPT (or AICFN_E_UNSUPPORTED) with a message naming the frame or
 * tensor and the byte offset, never a crash or an unbounded allocation. */
#ifndef AICFN_SNAPSHOTS_SNAPSHOT_H
#define AICFN_SNAPSHOTS_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "aicfn.h"
#include "common/error.h"

#define SNAP_FORMAT_VERSION 1

/* Per-tensor filter, reversed after decompression. */
typedef enum snap_filter {
    SNAP_FILTER_NONE = 0,
    SNAP_FILTER_PLANES = 1, /* ZipNN-style: exponent byte rotated out, values split into byte planes */
} snap_filter;

typedef struct snap_tensor {
    char *name; /* NUL-terminated, owned by the reader */
    aicfn_dtype dtype;
    uint32_t ndim;
    int64_t shape[AICFN_MAX_DIMS];
    uint64_t offset; /* in the blob; a multiple of 256 */
    uint64_t nbytes; /* = product(shape) × dtype size */
    snap_filter filter;
    uint64_t xxh3; /* XXH3-64 of the raw (unfiltered) bytes */
} snap_tensor;

typedef struct snap_manifest {
    uint32_t format_version;
    char *model_name;
    uint64_t blob_bytes;  /* size of the one device allocation the model needs */
    uint32_t chunk_bytes; /* most raw bytes in a data frame */
    uint32_t n_tensors;
    snap_tensor *tensors; /* sorted by offset, non-overlapping */
} snap_manifest;

typedef struct snap_frame {
    uint64_t file_offset; /* where the frame's compressed bytes start in the file */
    uint32_t comp_size;   /* compressed bytes (may be several zstd frames back to back) */
    uint64_t raw_offset;  /* in the blob */
    uint32_t raw_size;    /* raw bytes this frame restores, <= chunk_bytes */
} snap_frame;

typedef struct snap_reader snap_reader;
typedef struct snap_dctx snap_dctx;

/* Opens `path`, reads and validates the manifest and the seek table (frames must tile
 * the blob exactly, tensors must lie inside the blob without overlapping). Does not
 * decompress data frames. Returns AICFN_OK and a reader the caller frees with
 * snap_close, or an error naming the problem. */
int snap_open(const char *path, snap_reader **out, aicfn_error *err);

/* Closes the file and frees the reader. NULL is accepted. */
void snap_close(snap_reader *r);

/* The validated manifest; owned by the reader, valid until snap_close. */
const snap_manifest *snap_reader_manifest(const snap_reader *r);
const char *snap_reader_path(const snap_reader *r);
uint64_t snap_reader_file_bytes(const snap_reader *r); /* size of the file */
uint32_t snap_reader_frame_count(const snap_reader *r);
const snap_frame *snap_reader_frame(const snap_reader *r, uint32_t i); /* NULL if i is out of range */

/* Largest comp_size over all frames: size per-thread read buffers with it. */
uint32_t snap_reader_max_comp_size(const snap_reader *r);

/* Largest raw_size over all frames (<= the manifest's chunk_bytes, which the file
 * declares and may overstate): size per-thread scratch buffers with it. */
uint32_t snap_reader_max_raw_size(const snap_reader *r);

/* True when some tensor overlapping frame i is filtered (then decompression needs a
 * separate buffer from the destination; see snap_frame_unfilter). */
int snap_frame_is_filtered(const snap_reader *r, uint32_t i);

/* Per-thread decompression context: a ZSTD_DCtx with a bounded window
 * (ZSTD_d_windowLogMax) that accepts only current-format frames, plus scratch. */
int snap_dctx_create(snap_dctx **out, aicfn_error *err);
void snap_dctx_free(snap_dctx *d);

/* Reads frame i's compressed bytes with pread into `buf` (capacity `cap` >= comp_size).
 * Thread-safe. */
int snap_frame_read(const snap_reader *r, uint32_t i, void *buf, size_t cap, aicfn_error *err);

/* Decompresses frame i from `comp` (its comp_size bytes) into `out`, which must hold
 * raw_size bytes. Exactly raw_size bytes must come out, else AICFN_E_CORRUPT naming the
 * frame. The result is still filtered if snap_frame_is_filtered(r, i). */
int snap_frame_decompress(snap_dctx *d, const snap_reader *r, uint32_t i, const void *comp, void *out,
                          aicfn_error *err);

/* Reverses the filters of the tensors overlapping frame i: reads the filtered bytes in
 * `filtered` (raw_size bytes) and writes the raw bytes to `dst` (raw_size bytes).
 * `filtered` and `dst` must not overlap unless the frame is unfiltered (then this is a
 * copy, or nothing when they are the same pointer). Thread-safe. */
int snap_frame_unfilter(const snap_reader *r, uint32_t i, const void *filtered, void *dst, aicfn_error *err);

/* Called by snap_frame_unfilter_each for each piece of raw bytes [blob_off, blob_off +
 * len) of tensor `tensor`, in cache at `p`. The bytes land in the destination at the
 * same place in the frame, written around the cache (streaming stores), so `p` may be a
 * copy that lives only during the call: to read them later, read the destination.
 * Pieces of one tensor come in order. Return AICFN_OK to go on; anything else stops the
 * walk and is returned. */
typedef int (*snap_piece_fn)(void *arg, uint32_t tensor, uint64_t blob_off, const unsigned char *p,
                             size_t len);

/* snap_frame_unfilter in pieces of at most AICFN_SNAP_UNFILTER_PIECE bytes (filtered
 * tensors) or AICFN_SNAP_COPY_PIECE (the others), calling
 * `piece` (may be NULL) for each piece of tensor bytes as it lands; padding between
 * tensors is copied but not reported. The destination is written with streaming stores
 * (snap_filter_inverse_stream), fenced before it returns. For an unfiltered frame `filtered` may equal `dst`
 * (decompressed in place): then nothing is copied and the pieces are reported where
 * they lie. Thread-safe. */
int snap_frame_unfilter_each(const snap_reader *r, uint32_t i, const void *filtered, void *dst,
                             snap_piece_fn piece, void *arg, aicfn_error *err);

/* Frame i's compressed bytes inside the reader's read-only mapping of the file, paged
 * in, or NULL with an error: AICFN_E_UNSUPPORTED when the file could not be mapped
 * (callers then use snap_frame_read), AICFN_E_IO when the file shrank since it was
 * opened. Zero-copy: the loader decompresses straight from the page cache.
 * The mapping assumes nobody truncates the file while it is open. A truncation is
 * caught before each frame is decompressed, but one landing during a frame's
 * decompression raises SIGBUS, as it would for the dlopen'd handler of the same
 * artifact store: snapshots in the store are immutable (content-addressed, written
 * to a temporary file and renamed), so only an outside writer can do that.
 * Thread-safe; valid until snap_close. */
const void *snap_frame_mapped(const snap_reader *r, uint32_t i, aicfn_error *err);

/* Checks tensor t's XXH3 against the raw bytes at `blob + offset`. AICFN_E_CORRUPT
 * names the tensor on a mismatch. Thread-safe. */
int snap_tensor_verify(const snap_reader *r, uint32_t t, const void *blob, aicfn_error *err);

/* Convenience: decodes the whole blob into `blob` (blob_bytes) on the calling thread and
 * verifies every checksum: memory for the whole blob, for tests and small files
 * (`snapshot verify` and `unpack` stream, below); the loader has its own pipeline. */
int snap_read_all(const snap_reader *r, void *blob, aicfn_error *err);

/* Decodes every frame in order with memory for one frame (not the whole blob) and checks
 * every tensor's XXH3 and that the padding between tensors is zeros. Returns AICFN_OK, or
 * AICFN_E_CORRUPT naming the first bad frame or tensor. Used by `snapshot verify`. */
int snap_verify(const snap_reader *r, aicfn_error *err);

/* snap_verify, calling `piece` (may be NULL) with each tensor's raw bytes in blob order
 * (a tensor spanning frames comes in several pieces), each piece before its tensor's
 * checksum is known: a caller that writes them out commits only when this returns
 * AICFN_OK. A piece's bytes live only during the call. What `piece` returns other than
 * AICFN_OK stops the walk and is returned (it sets err itself). Used by `snapshot
 * unpack`, which streams the tensors to a file with memory for one frame. */
int snap_verify_each(const snap_reader *r, snap_piece_fn piece, void *arg, aicfn_error *err);

#endif
