/* fetch.h: the artifact fetcher of a remote worker (`aicfn worker --gateway`): it
 * downloads one content-addressed artifact (a handler .so or a snapshot) by its SHA-256
 * from the gateway, in chunks of `artifact_get` messages (docs/protocol.md, "Gateway
 * messages"), into a local cache directory, so that a worker on another host never
 * needs the gateway's disk.
 *
 * A download streams every chunk through SHA-256 (libsodium) into a temporary file
 * `<dir>/.tmp-<hash>-<pid>-<n>-<random>`, then checks the hash, fsyncs the file, renames
 * it to `<dir>/<hash>` and fsyncs the directory: a file under a hash's name is complete.
 * It is bounded: the size the gateway announces must be <= AICFN_ARTIFACT_MAX_BYTES
 * (else AICFN_E_CORRUPT), within the cache's budget (else AICFN_E_TOO_LARGE) and the
 * disk's free space when the download starts (else AICFN_E_CAPACITY), and the same in
 * every reply, each chunk must be exactly the size asked (the last one the
 * rest), and the final hash must match; otherwise AICFN_E_CORRUPT naming the artifact,
 * and the temporary file is removed. Each round trip is bounded by a timeout.
 *
 * Trust of the cache: a file already under `<dir>/<hash>` (from an earlier process) is
 * re-hashed at its first use by this process and used only when it matches (else it is
 * removed and downloaded again); once verified or downloaded, the process trusts it.
 * Single flight: concurrent requests for one hash wait on the same download (or
 * verification) and get its result.
 *
 * Budget: after each download the directory is brought back within `max_bytes` by
 * deleting the least recently used artifacts (each use refreshes the file's mtime),
 * except the one just fetched, ones being fetched, and ones handed out within the grace
 * period (a handler or snapshot already opened keeps working after its unlink). If what
 * remains is still over budget, the log says so.
 *
 * Not for: deciding which paths are remote (worker.c), the gateway's side of the
 * transfer (gateway/front_nng.c, gateway/artifacts.c).
 *
 * Thread-safety: a worker_fetcher may be used by any number of threads at once. */
#ifndef AICFN_WORKER_FETCH_H
#define AICFN_WORKER_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define WORKER_HASH_HEX_LEN 64

typedef struct worker_fetcher worker_fetcher;

typedef struct worker_fetch_config {
    const char *gateway;       /* the gateway's NNG address (required) */
    const char *key;           /* API key sent with each request; NULL = none (--insecure-local) */
    const char *cache_dir;     /* NULL/"" = AICFN_WORKER_CACHE_DIR; created (0700) if missing */
    uint32_t chunk_bytes;      /* bytes asked per request; 0 = AICFN_UPLOAD_CHUNK_BYTES (the most the
                                  gateway serves) */
    uint32_t chunk_timeout_ms; /* one round trip; 0 = AICFN_FETCH_CHUNK_TIMEOUT_MS */
    uint64_t max_bytes;        /* the cache directory's budget; 0 = AICFN_WORKER_CACHE_MAX_BYTES */
    uint32_t prune_grace_ms;   /* never delete an artifact handed out this recently;
                                  0 = AICFN_FETCH_PRUNE_GRACE_MS */
} worker_fetch_config;

/* Creates the cache directory if needed (its path is made absolute), removes temporary files that dead
 * processes left in it, and opens a REQ client to the gateway (dialing in the background: a gateway that is
 * not up yet is no error; requests then time out). Errors: AICFN_E_INVALID (no gateway, bad address, chunk
 * size over AICFN_UPLOAD_CHUNK_BYTES), AICFN_E_IO naming the directory, AICFN_E_NOMEM. Blocking (mkdir). */
int worker_fetcher_create(const worker_fetch_config *cfg, worker_fetcher **out, aicfn_error *err);

/* Ends every download in progress (it fails with AICFN_E_CANCELED and leaves nothing in
 * the cache) and makes later ones fail at once; artifacts already cached are still
 * handed out. For a worker shutting down, which must not wait for downloads that no
 * call waits for any more. Thread-safe; cannot be undone. */
void worker_fetcher_cancel(worker_fetcher *f);

/* Closes the client (downloads in progress fail with AICFN_E_CANCELED) and frees the
 * fetcher. No call may be in progress or start. NULL accepted. Blocks. */
void worker_fetcher_destroy(worker_fetcher *f);

/* The cache directory, made absolute at create. Owned by the fetcher. */
const char *worker_fetcher_dir(const worker_fetcher *f);

/* Ensures artifact `hash` (64 lowercase hex) is in the cache and writes its local path
 * (`<dir>/<hash>`) into `local` (capacity `cap`). Downloads it when missing (see the
 * top of this file), or joins the download in progress. Errors: AICFN_E_INVALID (bad
 * hash, `local` too small), AICFN_E_NOT_FOUND (the gateway does not store it),
 * AICFN_E_CORRUPT, AICFN_E_TOO_LARGE, AICFN_E_TIMEOUT, AICFN_E_UNAVAILABLE, AICFN_E_IO,
 * or the gateway's error (AICFN_E_UNAUTHENTICATED...), each naming the artifact.
 * Thread-safe; blocks for the download. */
int worker_fetch(worker_fetcher *f, const char *hash, char *local, size_t cap, aicfn_error *err);

/* worker_fetch of the artifact a gateway path names: its hash is the path's last
 * component (worker_fetch_hash_of_path). The gateway's path itself is never opened.
 * Same errors and blocking as worker_fetch. */
int worker_fetch_path(worker_fetcher *f, const char *gateway_path, char *local, size_t cap, aicfn_error *err);

/* Pure: copies the last component of `path` (after the last '/', or all of it) into
 * `hash` (65 bytes) when it is exactly 64 lowercase hex characters; AICFN_E_INVALID
 * naming the path otherwise (empty, trailing '/', uppercase, other length). */
int worker_fetch_hash_of_path(const char *path, char hash[WORKER_HASH_HEX_LEN + 1], aicfn_error *err);

/* Pure: true when `hex` is exactly 64 lowercase hexadecimal characters. */
int worker_fetch_hash_valid(const char *hex);

/* Pure: writes `<dir>/<hash>` into `out` (capacity `cap`); a trailing '/' of dir is not
 * doubled. AICFN_E_INVALID for a bad hash, an empty dir or a too small buffer. */
int worker_fetch_cache_path(const char *dir, const char *hash, char *out, size_t cap, aicfn_error *err);

#endif
