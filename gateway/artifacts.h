/* artifacts.h: the content-addressed artifact store: handler .so files and model
 * snapshots under <data dir>/artifacts, each named by the lowercase hex SHA-256 of its
 * bytes, and the chunked upload that puts them there.
 *
 * An upload writes into <store>/tmp/ (a unique temporary file), hashes as it goes, and
 * on commit checks the size and hash, fsyncs the file, renames it into place and
 * fsyncs the directory; only then does the file exist under its hash. Abort, a failed
 * commit, or a crash leave nothing but a temporary file, and opening the store removes
 * every file left in tmp/. Names on disk come only from validated hex hashes, never
 * from a client's path.
 *
 * Not for: knowing which functions use an artifact (registry.h), the transport of the
 * chunks (the gateway front).
 *
 * Thread-safety: a gw_artifacts store may be used from any thread. One gw_upload is
 * used by one thread at a time; different uploads run in parallel (two uploads of the
 * same hash both succeed: the rename is atomic and the bytes are the same). */
#ifndef AICFN_GATEWAY_ARTIFACTS_H
#define AICFN_GATEWAY_ARTIFACTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct gw_artifacts gw_artifacts;
typedef struct gw_upload gw_upload;

/* True when `hex` is exactly 64 lowercase hexadecimal characters. */
bool gw_hash_hex_valid(const char *hex);

/* Opens the store at <data_dir>/artifacts (creating it and tmp/, mode 0700) and removes
 * every leftover temporary file in tmp/. AICFN_E_IO naming the path on failure. */
int gw_artifacts_open(const char *data_dir, gw_artifacts **out, aicfn_error *err);

/* Frees the store. Uploads still open must be aborted or committed first. NULL ok. */
void gw_artifacts_close(gw_artifacts *a);

/* Writes the path of artifact `hash` into buf. AICFN_E_INVALID for a bad hash or a too
 * small buffer. Does not check that the file exists. */
int gw_artifacts_path(const gw_artifacts *a, const char *hash, char *buf, size_t len, aicfn_error *err);

/* True when the artifact is stored; its size into *size when not NULL. */
bool gw_artifacts_exists(const gw_artifacts *a, const char *hash, uint64_t *size);

/* The hashes of every artifact stored, in a new malloc'd array (*n entries; the caller
 * frees it; NULL when there are none). AICFN_E_IO, AICFN_E_NOMEM. */
int gw_artifacts_list(const gw_artifacts *a, char (**hashes)[65], size_t *n, aicfn_error *err);

/* Deletes artifact `hash` (no error when absent). Callers check first that no function
 * version references it (gw_registry_remove's orphans). */
int gw_artifacts_remove(gw_artifacts *a, const char *hash, aicfn_error *err);

/* The checks of gw_upload_begin that need no store: AICFN_E_INVALID for a bad hash,
 * AICFN_E_TOO_LARGE over AICFN_ARTIFACT_MAX_BYTES, else AICFN_OK. */
int gw_upload_check(const char *hash, uint64_t size, aicfn_error *err);

/* Starts an upload of `size` bytes (<= AICFN_ARTIFACT_MAX_BYTES) expected to hash to
 * `hash`. AICFN_E_EXISTS when the artifact is already stored (the client may skip the
 * upload), AICFN_E_INVALID for a bad hash, AICFN_E_TOO_LARGE over the limit or when the
 * store's file system lacks the room (its free space, less what open uploads still
 * need and AICFN_ARTIFACT_DISK_RESERVE; the message names the figures),
 * AICFN_E_OVERLOADED when AICFN_ARTIFACT_MAX_UPLOADS are already open, AICFN_E_IO. */
int gw_upload_begin(gw_artifacts *a, const char *hash, uint64_t size, gw_upload **out, aicfn_error *err);

/* Appends a chunk. `offset` must equal the bytes received so far (a chunk past it, or
 * one overlapping what was received, is AICFN_E_INVALID naming both offsets; one lying
 * wholly within it, a client's retry after a lost reply, is accepted and ignored), and
 * the total may not exceed the size given to begin (AICFN_E_TOO_LARGE). On error the upload stays open
 * and nothing of the chunk counts: a write that failed partway (AICFN_E_IO, e.g. a full
 * disk) may be retried at the same offset, and its bytes are written in place. Blocks
 * on disk I/O. */
int gw_upload_write(gw_upload *u, uint64_t offset, const void *data, size_t len, aicfn_error *err);

/* Bytes received so far. */
uint64_t gw_upload_received(const gw_upload *u);

/* Finishes the upload: checks the byte count and the SHA-256 (AICFN_E_CORRUPT naming
 * the expected and actual hashes), fsyncs, renames into place, fsyncs the directory (a
 * failure there removes the file again: a failed commit stores nothing). When another
 * upload of the same bytes was committed meanwhile, that file stays and this one's is
 * dropped (AICFN_OK). Always frees `u` and removes the temporary file when anything failed. */
int gw_upload_commit(gw_upload *u, aicfn_error *err);

/* Abandons an upload: removes the temporary file and frees `u`. NULL accepted. */
void gw_upload_abort(gw_upload *u);

/* Hashes a local file: lowercase hex SHA-256 into hex_out (65 bytes) and its size. */
int gw_artifacts_hash_file(const char *path, char hex_out[65], uint64_t *size, aicfn_error *err);

/* Stores a local file through the upload path (hash, then upload in chunks). Fills
 * hex_out with its hash. Storing a file already present is AICFN_OK. */
int gw_artifacts_put_file(gw_artifacts *a, const char *path, char hex_out[65], uint64_t *size,
                          aicfn_error *err);

#endif
