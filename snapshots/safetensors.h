/* safetensors.h: reading (and writing) safetensors checkpoints, the format users have.
 *
 * A safetensors file is: 8-byte little-endian header length N, N bytes of JSON (an
 * object: tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}, plus an
 * optional "__metadata__" object), then the data region, which the offsets index.
 * This module parses and validates headers from untrusted files (bounded sizes, no
 * overlapping ranges, sizes that match shapes), opens sets of files (several paths, or a
 * sharded checkpoint's model.safetensors.index.json), and reads tensor bytes with pread
 * (never whole files into memory). It also writes a safetensors file (for unpack).
 * Not for: the snapshot format (writer.h, snapshot.h). */
#ifndef AICFN_SNAPSHOTS_SAFETENSORS_H
#define AICFN_SNAPSHOTS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "aicfn.h"
#include "common/error.h"

/* One tensor of a safetensors header. */
typedef struct snap_st_tensor {
    char *name; /* NUL-terminated, owned by the header or set */
    aicfn_dtype dtype;
    uint32_t ndim;
    int64_t shape[AICFN_MAX_DIMS];
    uint64_t nbytes;      /* product(shape) x dtype size = end - begin */
    uint64_t data_offset; /* begin, relative to the data region */
    uint32_t file;        /* index of the file in a snap_st_set (0 for a lone header) */
    uint64_t file_offset; /* absolute offset of the first byte in that file */
} snap_st_tensor;

/* A parsed header: tensors sorted by data offset (file order). */
typedef struct snap_st_header {
    uint32_t n_tensors;
    snap_st_tensor *tensors;
} snap_st_header;

/* Parses the JSON header `json` (`len` bytes, not NUL-terminated) of a file whose data
 * region holds `data_bytes` bytes. `what` names the file in messages. Checks: the JSON is
 * an object without duplicate keys; each entry has a known dtype, a shape of at most
 * AICFN_MAX_DIMS non-negative dims, data_offsets [begin, end] inside the data region with
 * end - begin = product(shape) x dtype size; the non-empty ranges tile the data region
 * exactly (no overlap, no hole); __metadata__ maps strings to strings. On success fills
 * `out` (free with snap_st_header_free). Returns AICFN_E_CORRUPT (malformed),
 * AICFN_E_UNSUPPORTED (unknown dtype), AICFN_E_TOO_LARGE, AICFN_E_NOMEM. Thread-safe. */
int snap_st_parse_header(const char *json, size_t len, uint64_t data_bytes, const char *what,
                         snap_st_header *out, aicfn_error *err);

/* Parses a whole safetensors file held in memory (the length prefix, the header and the
 * data region); the tensors' file_offset are offsets into `buf`. Used by the fuzzer and by
 * tests. Same errors as snap_st_parse_header, plus the length-prefix checks. */
int snap_st_parse_buffer(const void *buf, size_t len, const char *what, snap_st_header *out,
                         aicfn_error *err);

/* Frees what a parse filled in (not `h` itself). NULL is accepted. */
void snap_st_header_free(snap_st_header *h);

/* A set of opened safetensors files with their tensors, in input order. */
typedef struct snap_st_set snap_st_set;

/* Opens `n_paths` inputs. Each is a .safetensors file, a model.safetensors.index.json
 * (sharded checkpoint: its weight_map names the shards, relative to its folder), or a
 * directory holding either an index or *.safetensors files (taken in name order).
 * Tensor names must be unique across the set. Returns AICFN_OK and a set the caller
 * frees with snap_st_close, or an error naming the file and the problem. */
int snap_st_open(const char *const *paths, size_t n_paths, snap_st_set **out, aicfn_error *err);

/* Closes the files and frees the set. NULL is accepted. */
void snap_st_close(snap_st_set *s);

uint32_t snap_st_count(const snap_st_set *s);
/* Tensor i in set order (files in order, each file's tensors by offset); NULL past the end. */
const snap_st_tensor *snap_st_tensor_at(const snap_st_set *s, uint32_t i);
uint32_t snap_st_file_count(const snap_st_set *s);
const char *snap_st_file_path(const snap_st_set *s, uint32_t file);
/* Sum of all tensors' nbytes. */
uint64_t snap_st_total_bytes(const snap_st_set *s);

/* Reads `len` bytes of tensor i starting `off` bytes into it, with pread (thread-safe).
 * AICFN_E_IO names the file when it was truncated or a read fails. */
int snap_st_read(const snap_st_set *s, uint32_t i, uint64_t off, void *dst, size_t len, aicfn_error *err);

/* A tensor to write: name, dtype, shape and its bytes. */
typedef struct snap_st_out_tensor {
    const char *name;
    aicfn_dtype dtype;
    uint32_t ndim;
    const int64_t *shape;
    const void *data;
    uint64_t nbytes;
} snap_st_out_tensor;

/* Writes a safetensors file at `path` (through a temporary file renamed into place):
 * tensors in the given order, data packed without gaps, header padded with spaces to a
 * multiple of 8 bytes. Returns AICFN_E_INVALID for a dtype safetensors lacks or a size
 * mismatch, AICFN_E_IO on write errors. */
int snap_st_write(const char *path, const snap_st_out_tensor *tensors, uint32_t n, aicfn_error *err);

/* Where snap_st_write_streamed's `fill` writes the tensors' bytes, in order. */
typedef struct snap_st_sink snap_st_sink;

/* Appends len bytes to the data section. AICFN_E_INVALID past the sum of the tensors'
 * sizes, AICFN_E_IO on a write error. */
int snap_st_sink_write(snap_st_sink *s, const void *p, size_t len, aicfn_error *err);

typedef int (*snap_st_fill_fn)(void *arg, snap_st_sink *s, aicfn_error *err);

/* snap_st_write with the bytes produced by `fill` after the header (the tensors' data
 * members are not read; fill NULL: they are, as snap_st_write): a file larger than
 * memory is written with the producer's buffers only. The file is renamed into place only when fill returns
 * AICFN_OK having written exactly the tensors' total size; otherwise fill's error (or AICFN_E_INVALID naming
 * the shortfall) and nothing is left at `path`. */
int snap_st_write_streamed(const char *path, const snap_st_out_tensor *tensors, uint32_t n,
                           snap_st_fill_fn fill, void *arg, aicfn_error *err);

#endif
