/* unpack.h: restoring a snapshot as the safetensors file it was packed from (`aicfn
 * snapshot unpack`), one frame in memory at a time.
 * Not for: reading frames (snapshot.h) or the safetensors format itself (safetensors.h). */
#ifndef AICFN_SNAPSHOTS_UNPACK_H
#define AICFN_SNAPSHOTS_UNPACK_H

#include "snapshots/snapshot.h"

/* Writes every tensor of `r` (names, dtypes, shapes, bytes; blob order) to a safetensors
 * file at `path`, decoding frame by frame and checking every checksum and the padding
 * (snap_verify_each): memory for one frame, whatever the model's size. The file goes
 * through a temporary file renamed into place only when everything matched; on any
 * error (AICFN_E_CORRUPT naming the frame or tensor, AICFN_E_IO, ...) nothing is left at
 * `path` or beside it. */
int snap_unpack(const snap_reader *r, const char *path, aicfn_error *err);

#endif
