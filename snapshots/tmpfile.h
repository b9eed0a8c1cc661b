/* tmpfile.h: writing a file under a temporary name beside its destination, then renaming
 * it into place once it is on disk, the directory synced too: a crash, a full disk or a
 * second writer of the same destination never leaves a partial file under its name, and
 * a renamed file survives a power loss. Used by pack (writer.c) and unpack
 * (safetensors.c).
 * Not for: what is written. */
#ifndef AICFN_SNAPSHOTS_TMPFILE_H
#define AICFN_SNAPSHOTS_TMPFILE_H

#include "common/error.h"

/* Creates `<dest>.tmpXXXXXX` (mkstemp: a unique name, never an existing file or link)
 * with the mode a file the user creates gets (0666 less the umask). *tmp_path (malloc'd,
 * the caller frees) and *fd are set on success. AICFN_E_IO naming dest, AICFN_E_NOMEM. */
int snap_tmp_create(const char *dest, char **tmp_path, int *fd, aicfn_error *err);

/* fsync, close, rename tmp_path to dest, fsync dest's directory. The fd is closed either
 * way; on failure neither tmp_path nor dest is left (dest is removed when only the
 * directory's fsync failed). AICFN_E_IO naming the step and the paths. */
int snap_tmp_commit(int fd, const char *tmp_path, const char *dest, aicfn_error *err);

/* Closes fd (when >= 0) and removes tmp_path (when not NULL): a write that failed. */
void snap_tmp_discard(int fd, const char *tmp_path);

#endif
