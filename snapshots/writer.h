/* writer.h: packing safetensors checkpoints into an aicfn snapshot (design.md §5).
 *
 * snap_pack lays the tensors out in one blob (offsets aligned to AICFN_SNAP_ALIGN),
 * filters float tensors into byte planes, compresses the blob in independent frames of
 * at most `chunk` raw bytes on a pool of threads (one ZSTD_CCtx each), and writes the
 * manifest, the frames in order and the seek table (docs/snapshot-format.md).
 * Not for: reading snapshots (snapshot.h). */
#ifndef AICFN_SNAPSHOTS_WRITER_H
#define AICFN_SNAPSHOTS_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "snapshots/safetensors.h"

/* How filters are chosen per tensor. */
typedef enum snap_filter_mode {
    SNAP_FILTER_MODE_AUTO = 0,   /* planes for BF16/FP16/FP32 when a sample compresses smaller that way */
    SNAP_FILTER_MODE_NONE = 1,   /* no filter anywhere */
    SNAP_FILTER_MODE_PLANES = 2, /* planes for every BF16/FP16/FP32 tensor */
} snap_filter_mode;

/* Parses "auto", "none" or "planes"; -1 when unknown. */
int snap_filter_mode_from_name(const char *name);

/* Called from the writing thread after each frame is written: raw blob bytes done so far
 * and in all. Must not block for long. */
typedef void (*snap_progress_fn)(void *user, uint64_t done_bytes, uint64_t total_bytes);

typedef struct snap_pack_opts {
    const char *name; /* model name; NULL: the first input's file name without extension */
    int level;        /* zstd level for unfiltered bytes, AICFN_SNAP_MIN_LEVEL..AICFN_SNAP_MAX_LEVEL */
    uint32_t chunk;   /* raw bytes per frame: a multiple of AICFN_SNAP_ALIGN within
                         [AICFN_SNAP_MIN_CHUNK, AICFN_SNAP_MAX_CHUNK] */
    snap_filter_mode filter;
    unsigned threads;          /* compression threads; 0 = the online CPUs (at most AICFN_SNAP_MAX_THREADS) */
    snap_progress_fn progress; /* may be NULL */
    void *progress_user;
} snap_pack_opts;

/* What a pack produced. */
typedef struct snap_pack_stats {
    uint32_t n_tensors;
    uint32_t n_frames;   /* data frames */
    uint32_t n_filtered; /* tensors stored with the planes filter */
    uint64_t raw_bytes;  /* sum of tensor bytes */
    uint64_t blob_bytes; /* raw bytes plus alignment padding */
    uint64_t file_bytes; /* size of the snapshot file */
} snap_pack_stats;

/* Fills `o` with the defaults (level AICFN_SNAP_DEFAULT_LEVEL, chunk AICFN_SNAP_DEFAULT_CHUNK,
 * filter auto, threads 0, no progress). */
void snap_pack_opts_init(snap_pack_opts *o);

/* Packs the safetensors inputs (files, index.json files or directories, see snap_st_open)
 * into the snapshot `out_path`. Writes a temporary file beside it (`out_path`.tmpXXXXXX,
 * snapshots/tmpfile.h) first and renames it into place, so `out_path` is the old file or
 * the complete new one (or none, when the directory's fsync after the rename failed:
 * the call then fails). `opts` may be NULL
 * (defaults); `stats` may be NULL. Blocks; starts and joins its own threads; may be
 * called from several threads at once for different outputs. Returns AICFN_OK or an
 * error naming the input, tensor or output that failed. */
int snap_pack(const char *const *inputs, size_t n_inputs, const char *out_path, const snap_pack_opts *opts,
              snap_pack_stats *stats, aicfn_error *err);

/* The same, from a set the caller opened with snap_st_open (the set is only read). */
int snap_pack_set(const snap_st_set *set, const char *out_path, const snap_pack_opts *opts,
                  snap_pack_stats *stats, aicfn_error *err);

#endif
