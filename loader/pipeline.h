/* pipeline.h: loads a snapshot into one device allocation with a pool of threads
 * (design.md §6).
 *
 * Each thread has its own snap_dctx and takes frames in order: pread the frame,
 * decompress it (for host, straight into the destination when the frame is
 * unfiltered; otherwise into a per-thread scratch), reverse the filter into the
 * destination (host) or into a staging buffer (CUDA, pinned), then copy to the device.
 * Every tensor's XXH3 is checked on the raw bytes as they pass (a tensor that spans
 * frames is hashed with a streaming XXH3 state fed in blob order), so a CUDA load
 * verifies the very staging bytes it copies (a part whose hashing waits for an earlier
 * frame keeps its staging buffer until hashed; a mismatch frees the whole allocation). A failure at any step frees
 * everything and names the file, frame and tensor: no half-loaded model is left.
 * Not for: deciding what is resident (cache.h), the snapshot format (snapshots/). */
#ifndef AICFN_LOADER_PIPELINE_H
#define AICFN_LOADER_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "loader/device.h"
#include "snapshots/snapshot.h"

/* The timing record of one load. Phases overlap across threads, so the per-phase
 * figures are SUMS over threads (thread-µs); total_us is the wall time of the load.
 * wait_us is time threads stalled on a full pipeline (no staging buffer free, or a
 * frame larger than a staging buffer waiting for the in-order hash of a tensor spanning
 * frames; other such parts are handed on to the thread feeding that hash, not waited
 * for). */
typedef struct loader_timing {
    uint64_t open_us;          /* opening the snapshot and reading the manifest (wall) */
    uint64_t alloc_us;         /* the device allocation (wall) */
    uint64_t read_us;          /* sum over threads: pread of frames, or paging them in from the mapping */
    uint64_t decompress_us;    /* sum over threads */
    uint64_t filter_us;        /* sum over threads: reversing byte-plane filters into the destination
                                  and the XXH3 of each piece as it is written, one pass (timing the
                                  two apart per 1 KiB piece would cost more than the hashing) */
    uint64_t verify_us;        /* sum over threads: XXH3 outside that pass: parts of tensors spanning
                                  frames that one thread hands to another */
    uint64_t copy_us;          /* sum over threads: issuing copies + waiting for them */
    uint64_t wait_us;          /* sum over threads: stalled on a full pipeline */
    uint64_t fetch_us;         /* resolving the path (loader_resolve_fn: a download), wall; 0 when
                                  none; included in total_us */
    uint64_t total_us;         /* wall time of the whole load, fetch and open to last copy done */
    uint64_t compressed_bytes; /* data frame bytes read */
    uint64_t raw_bytes;        /* blob bytes restored */
    uint32_t threads;          /* threads that ran */
    uint32_t frames;
} loader_timing;

/* A model resident on a device: one allocation holding the blob, and a copy of the
 * manifest (tensor names, dtypes, shapes, offsets). Immutable once loaded: may be
 * read by any number of threads. */
typedef struct loader_model loader_model;

typedef struct loader_load_opts {
    uint32_t threads;   /* 0 = number of online cores */
    uint64_t max_bytes; /* 0 = no limit; else the device allocation may not exceed this
                           (AICFN_E_CAPACITY): the cache passes what it reserved */
    int skip_verify;    /* 1 = do not check XXH3 (benchmarks of the codec only) */
    int pread_frames;   /* 1 = read frames with pread into a buffer instead of decompressing
                           them in place from the file's mapping (the default; the fallback
                           when the file cannot be mapped). For comparisons and tests. */
} loader_load_opts;

/* Loads the snapshot at `path` onto `dev`. On success *out is a model the caller frees
 * with loader_model_free, and *timing (may be NULL) holds the record. On failure
 * nothing is left allocated and `err` names the file and, where it applies, the frame
 * and tensor. Blocking; thread-safe (loads of different models may run at once). */
int loader_load_snapshot(loader_device *dev, const char *path, const loader_load_opts *opts,
                         loader_model **out, loader_timing *timing, aicfn_error *err);

/* Same, from a reader the caller opened (and still owns). */
int loader_load_reader(loader_device *dev, const snap_reader *r, const loader_load_opts *opts,
                       loader_model **out, loader_timing *timing, aicfn_error *err);

/* Frees the device allocation and the manifest copy. NULL is accepted. */
void loader_model_free(loader_model *m);

/* The device this model lives on. */
loader_device *loader_model_device(const loader_model *m);
/* The blob: a device pointer (a host pointer when loader_device_is_host). */
void *loader_model_blob(const loader_model *m);
/* Bytes the device reserved for the blob (>= manifest blob_bytes). */
uint64_t loader_model_alloc_bytes(const loader_model *m);

/* The device bytes a load of `man` allocates on `dev` (what a cache charges for it before
 * loading): the blob rounded up by the device; an empty blob still takes one aligned
 * unit (AICFN_SNAP_ALIGN). */
uint64_t loader_manifest_device_bytes(loader_device *dev, const snap_manifest *man);
/* The manifest copy (tensor names etc.); owned by the model. */
const snap_manifest *loader_model_manifest(const loader_model *m);
/* Index of the tensor named `name`, or -1. Linear scan. */
int loader_model_find_tensor(const loader_model *m, const char *name);
/* Device pointer of tensor t's bytes (blob + offset), or NULL if t is out of range. */
void *loader_model_tensor_ptr(const loader_model *m, uint32_t t);

/* ---- The cache's load function (cache.h) ----
 * loader_pipeline_cache_ops loads snapshots with this pipeline; its ops_arg is a
 * loader_pipeline_source that must outlive the cache. prepare opens the snapshot and
 * charges loader_device_alloc_size(blob_bytes); load runs loader_load_reader with
 * max_bytes = the reservation; the model is a loader_model *. */
/* Optional: maps the `path` the cache was given to a local file before it is opened,
 * e.g. by downloading it (a remote worker fetches snapshots from its gateway). Writes
 * the local path into `local` (capacity `cap`, at least PATH_MAX) and returns AICFN_OK,
 * or fails with an error naming what failed. Called by prepare on the loading thread
 * (outside the cache lock, single-flight per model), so it may block; its time counts
 * in the load's total_us (and fetch_us). Must be thread-safe. */
typedef int (*loader_resolve_fn)(void *arg, const char *path, char *local, size_t cap, aicfn_error *err);

typedef struct loader_pipeline_source {
    loader_device *device;
    uint32_t threads;          /* 0 = cores */
    loader_resolve_fn resolve; /* optional (NULL: paths are local files) */
    void *resolve_arg;
} loader_pipeline_source;

struct loader_cache_load_ops;
extern const struct loader_cache_load_ops loader_pipeline_cache_ops;

/* Number of online cores (the default thread count). */
uint32_t loader_default_threads(void);

#endif
