/* artifacts.c: the content-addressed artifact store and its chunked, verified upload.
 *
 * Not for: reference counting of artifacts (the registry knows which versions use
 * which hash). */
#include "gateway/artifacts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/durable.h"
#include "common/log.h"
#include "common/tunables.h"

struct gw_artifacts {
    char *dir;    /* <data>/artifacts */
    char *tmpdir; /* <data>/artifacts/tmp */
    pthread_mutex_t mu;
    int open_uploads;
    uint64_t reserved; /* bytes that open uploads announced and have not written yet */
};

struct gw_upload {
    gw_artifacts *store;
    char hash[65];
    uint64_t size;
    uint64_t received;
    int fd;
    char *tmp_path;
    crypto_hash_sha256_state sha;
};

static void art_hex(const unsigned char *bin, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bin[i] >> 4];
        out[2 * i + 1] = digits[bin[i] & 15];
    }
    out[2 * n] = '\0';
}

bool gw_hash_hex_valid(const char *hex) {
    if (!hex) return false;
    for (int i = 0; i < 64; i++) {
        char c = hex[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return hex[64] == '\0';
}

static int art_init_sodium(aicfn_error *err) {
    if (sodium_init() < 0) return aicfn_error_set(err, AICFN_E_INTERNAL, "libsodium failed to initialize");
    return AICFN_OK;
}

static char *art_join(const char *a, const char *b) {
    size_t n = strlen(a) + 1 + strlen(b) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

/* Removes every regular file left in tmp/ by an interrupted upload. */
static void art_clean_tmp(const char *tmpdir) {
    DIR *d = opendir(tmpdir);
    if (!d) return;
    int dfd = dirfd(d);
    struct dirent *e;
    unsigned removed = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (unlinkat(dfd, e->d_name, 0) == 0)
            removed++;
        else
            log_warn("artifacts: cannot remove leftover %s/%s: %s", tmpdir, e->d_name, strerror(errno));
    }
    closedir(d);
    if (removed) log_info("artifacts: removed %u interrupted upload(s) from %s", removed, tmpdir);
}

int gw_artifacts_open(const char *data_dir, gw_artifacts **out, aicfn_error *err) {
    *out = NULL;
    int rc = art_init_sodium(err);
    if (rc) return rc;
    if ((rc = durable_mkdir(data_dir, NULL, NULL, err))) return rc; /* its parent synced too */
    gw_artifacts *a = calloc(1, sizeof *a);
    if (!a) return aicfn_error_set(err, AICFN_E_NOMEM, "allocating the artifact store");
    a->dir = art_join(data_dir, "artifacts");
    a->tmpdir = a->dir ? art_join(a->dir, "tmp") : NULL;
    pthread_mutex_init(&a->mu, NULL);
    if (!a->tmpdir) {
        gw_artifacts_close(a);
        return aicfn_error_set(err, AICFN_E_NOMEM, "allocating the artifact store");
    }
    if ((rc = durable_mkdir(a->dir, data_dir, NULL, err)) || (rc = durable_mkdir(a->tmpdir, a->dir, NULL, err))) {
        gw_artifacts_close(a);
        return rc;
    }
    art_clean_tmp(a->tmpdir);
    *out = a;
    return AICFN_OK;
}

void gw_artifacts_close(gw_artifacts *a) {
    if (!a) return;
    if (a->open_uploads) log_warn("artifacts: closing the store with %d upload(s) open", a->open_uploads);
    pthread_mutex_destroy(&a->mu);
    free(a->dir);
    free(a->tmpdir);
    free(a);
}

int gw_artifacts_path(const gw_artifacts *a, const char *hash, char *buf, size_t len, aicfn_error *err) {
    if (!gw_hash_hex_valid(hash)) return aicfn_error_set(err, AICFN_E_INVALID, "invalid artifact hash");
    int n = snprintf(buf, len, "%s/%s", a->dir, hash);
    if (n < 0 || (size_t)n >= len) return aicfn_error_set(err, AICFN_E_INVALID, "artifact path too long");
    return AICFN_OK;
}

bool gw_artifacts_exists(const gw_artifacts *a, const char *hash, uint64_t *size) {
    char path[4096];
    if (gw_artifacts_path(a, hash, path, sizeof path, NULL)) return false;
    struct stat stt;
    if (stat(path, &stt) != 0 || !S_ISREG(stt.st_mode)) return false;
    if (size) *size = (uint64_t)stt.st_size;
    return true;
}

int gw_artifacts_list(const gw_artifacts *a, char (**hashes)[65], size_t *n, aicfn_error *err) {
    *hashes = NULL;
    *n = 0;
    DIR *d = opendir(a->dir);
    if (!d) return aicfn_error_errno(err, AICFN_E_IO, errno, "listing %s", a->dir);
    char(*arr)[65] = NULL;
    size_t cap = 0, len = 0;
    int rc = AICFN_OK;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!gw_hash_hex_valid(e->d_name)) continue; /* ".", "..", tmp/ */
        if (len == cap) {
            size_t nc = cap ? 2 * cap : 64;
            void *na = realloc(arr, nc * sizeof *arr);
            if (!na) {
                rc = aicfn_error_set(err, AICFN_E_NOMEM, "listing %s", a->dir);
                break;
            }
            arr = na;
            cap = nc;
        }
        memcpy(arr[len++], e->d_name, 65);
    }
    closedir(d);
    if (rc != AICFN_OK) {
        free(arr);
        return rc;
    }
    *hashes = arr;
    *n = len;
    return AICFN_OK;
}

int gw_artifacts_remove(gw_artifacts *a, const char *hash, aicfn_error *err) {
    char path[4096];
    int rc = gw_artifacts_path(a, hash, path, sizeof path, err);
    if (rc) return rc;
    if (unlink(path) != 0 && errno != ENOENT)
        return aicfn_error_errno(err, AICFN_E_IO, errno, "removing %s", path);
    return AICFN_OK;
}

int gw_upload_check(const char *hash, uint64_t size, aicfn_error *err) {
    if (!gw_hash_hex_valid(hash))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "upload: invalid hash (want 64 lowercase hex characters)");
    if (size > AICFN_ARTIFACT_MAX_BYTES)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "upload %.12s: %llu bytes, at most %llu", hash,
                               (unsigned long long)size, (unsigned long long)AICFN_ARTIFACT_MAX_BYTES);
    return AICFN_OK;
}

int gw_upload_begin(gw_artifacts *a, const char *hash, uint64_t size, gw_upload **out, aicfn_error *err) {
    *out = NULL;
    int rc = gw_upload_check(hash, size, err);
    if (rc != AICFN_OK) return rc;
    if (gw_artifacts_exists(a, hash, NULL))
        return aicfn_error_set(err, AICFN_E_EXISTS, "artifact %s is already stored", hash);
    struct statvfs vfs;
    if (statvfs(a->tmpdir, &vfs) != 0)
        return aicfn_error_errno(err, AICFN_E_IO, errno, "checking the free space of %s", a->tmpdir);
    uint64_t free_bytes = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
    pthread_mutex_lock(&a->mu);
    if (a->open_uploads >= AICFN_ARTIFACT_MAX_UPLOADS) {
        pthread_mutex_unlock(&a->mu);
        return aicfn_error_set(err, AICFN_E_OVERLOADED, "upload %.12s: %d uploads already open", hash,
                               AICFN_ARTIFACT_MAX_UPLOADS);
    }
    /* The store shares its file system with aicfn.db: an upload may not take the space
     * that open uploads still need or the reserve kept for the database. */
    uint64_t need = size + a->reserved + AICFN_ARTIFACT_DISK_RESERVE;
    if (need < size || need > free_bytes) {
        uint64_t reserved = a->reserved;
        pthread_mutex_unlock(&a->mu);
        return aicfn_error_set(err, AICFN_E_TOO_LARGE,
                               "upload %.12s: %llu bytes do not fit in the artifact store: %s has %llu "
                               "bytes free, %llu of them promised to open uploads and %llu kept for the "
                               "database",
                               hash, (unsigned long long)size, a->tmpdir, (unsigned long long)free_bytes,
                               (unsigned long long)reserved, (unsigned long long)AICFN_ARTIFACT_DISK_RESERVE);
    }
    a->open_uploads++;
    a->reserved += size;
    pthread_mutex_unlock(&a->mu);

    gw_upload *u = calloc(1, sizeof *u);
    if (!u) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "upload %.12s", hash);
        goto fail;
    }
    u->fd = -1;
    u->store = a;
    memcpy(u->hash, hash, 65);
    u->size = size;
    size_t n = strlen(a->tmpdir) + 1 + 64 + 8 + 1;
    u->tmp_path = malloc(n);
    if (!u->tmp_path) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "upload %.12s", hash);
        goto fail;
    }
    snprintf(u->tmp_path, n, "%s/%s.XXXXXX", a->tmpdir, hash);
    u->fd = mkostemp(u->tmp_path, O_CLOEXEC);
    if (u->fd < 0) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "creating %s", u->tmp_path);
        free(u->tmp_path);
        u->tmp_path = NULL;
        goto fail;
    }
    crypto_hash_sha256_init(&u->sha);
    *out = u;
    return AICFN_OK;
fail:
    if (u) {
        free(u->tmp_path);
        free(u);
    }
    pthread_mutex_lock(&a->mu);
    a->open_uploads--;
    a->reserved -= size;
    pthread_mutex_unlock(&a->mu);
    return rc;
}

uint64_t gw_upload_received(const gw_upload *u) {
    return u->received;
}

int gw_upload_write(gw_upload *u, uint64_t offset, const void *data, size_t len, aicfn_error *err) {
    /* A chunk received already, sent again because its reply was lost: nothing to do
     * (the SHA-256 at commit covers what was stored). */
    if (offset <= u->received && len <= u->received - offset) return AICFN_OK;
    if (offset != u->received)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "upload %.12s: chunk at offset %llu, expected offset %llu", u->hash,
                               (unsigned long long)offset, (unsigned long long)u->received);
    if (len > u->size - u->received)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE,
                               "upload %.12s: chunk of %zu bytes at %llu exceeds the "
                               "declared size %llu",
                               u->hash, len, (unsigned long long)offset, (unsigned long long)u->size);
    /* pwrite at the chunk's own offset: a write that stored part of the chunk and then
     * failed (ENOSPC, EFBIG) leaves received unchanged, and the client's retry of the
     * same offset overwrites those bytes instead of appending after them. */
    const unsigned char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = pwrite(u->fd, p, left, (off_t)(u->received + (len - left)));
        if (w < 0) {
            if (errno == EINTR) continue;
            return aicfn_error_errno(err, AICFN_E_IO, errno, "writing %s at %llu", u->tmp_path,
                                     (unsigned long long)(u->received + (len - left)));
        }
        p += w;
        left -= (size_t)w;
    }
    crypto_hash_sha256_update(&u->sha, data, len);
    u->received += len;
    pthread_mutex_lock(&u->store->mu);
    u->store->reserved -= len;
    pthread_mutex_unlock(&u->store->mu);
    return AICFN_OK;
}

static void art_upload_free(gw_upload *u, bool remove_tmp) {
    if (u->fd >= 0) close(u->fd);
    if (remove_tmp && u->tmp_path) unlink(u->tmp_path);
    pthread_mutex_lock(&u->store->mu);
    u->store->open_uploads--;
    u->store->reserved -= u->size - u->received;
    pthread_mutex_unlock(&u->store->mu);
    free(u->tmp_path);
    free(u);
}

void gw_upload_abort(gw_upload *u) {
    if (u) art_upload_free(u, true);
}

int gw_upload_commit(gw_upload *u, aicfn_error *err) {
    int rc = AICFN_OK;
    if (u->received != u->size) {
        rc = aicfn_error_set(err, AICFN_E_INVALID, "upload %.12s: received %llu of %llu bytes", u->hash,
                             (unsigned long long)u->received, (unsigned long long)u->size);
        goto out;
    }
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&u->sha, digest);
    char got[65];
    art_hex(digest, sizeof digest, got);
    if (strcmp(got, u->hash) != 0) {
        rc = aicfn_error_set(err, AICFN_E_CORRUPT, "upload: SHA-256 mismatch: expected %s, got %s", u->hash,
                             got);
        goto out;
    }
    if (fsync(u->fd) != 0) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "fsync of %s", u->tmp_path);
        goto out;
    }
    if (fchmod(u->fd, 0600) != 0) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "chmod of %s", u->tmp_path);
        goto out;
    }
    char dst[4096];
    if ((rc = gw_artifacts_path(u->store, u->hash, dst, sizeof dst, err))) goto out;
    struct stat st;
    if (stat(dst, &st) == 0) {
        /* Another upload of the same bytes committed first (commits run one at a time, on
         * the admin thread): that file stays, a function may use it already. */
        art_upload_free(u, true);
        return AICFN_OK;
    }
    if (rename(u->tmp_path, dst) != 0) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "renaming %s to %s", u->tmp_path, dst);
        goto out;
    }
    free(u->tmp_path);
    u->tmp_path = NULL; /* now in place: nothing to remove */
    rc = durable_sync_dir(u->store->dir, err);
    /* Not durable, not stored: a failed commit must leave nothing that a later
     * upload_begin would take for stored (and a deploy register) and a crash could lose. */
    if (rc != AICFN_OK) (void)unlink(dst);
out:
    art_upload_free(u, rc != AICFN_OK);
    return rc;
}

int gw_artifacts_hash_file(const char *path, char hex_out[65], uint64_t *size, aicfn_error *err) {
    int rc = art_init_sodium(err);
    if (rc) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "opening %s", path);
    crypto_hash_sha256_state sha;
    crypto_hash_sha256_init(&sha);
    unsigned char *buf = malloc(1 << 20);
    uint64_t total = 0;
    if (!buf) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_NOMEM, "hashing %s", path);
    }
    for (;;) {
        ssize_t r = read(fd, buf, 1 << 20);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = aicfn_error_errno(err, AICFN_E_IO, errno, "reading %s", path);
            break;
        }
        if (r == 0) break;
        crypto_hash_sha256_update(&sha, buf, (unsigned long long)r);
        total += (uint64_t)r;
    }
    free(buf);
    close(fd);
    if (rc) return rc;
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&sha, digest);
    art_hex(digest, sizeof digest, hex_out);
    if (size) *size = total;
    return AICFN_OK;
}

int gw_artifacts_put_file(gw_artifacts *a, const char *path, char hex_out[65], uint64_t *size,
                          aicfn_error *err) {
    uint64_t sz = 0;
    int rc = gw_artifacts_hash_file(path, hex_out, &sz, err);
    if (rc) return rc;
    if (size) *size = sz;
    gw_upload *u = NULL;
    rc = gw_upload_begin(a, hex_out, sz, &u, err);
    if (rc == AICFN_E_EXISTS) {
        aicfn_error_clear(err);
        return AICFN_OK;
    }
    if (rc) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        gw_upload_abort(u);
        return aicfn_error_errno(err, AICFN_E_IO, errno, "opening %s", path);
    }
    /* Whole, aligned writes of the upload chunk size: the stored snapshot is cached in
     * 2 MiB folios, as uploads from `aicfn deploy` are (docs/snapshot-format.md §9). */
    _Static_assert(AICFN_UPLOAD_CHUNK_BYTES % AICFN_PAGE_CACHE_BLOCK == 0, "upload chunks are whole blocks");
    unsigned char *buf = malloc(AICFN_UPLOAD_CHUNK_BYTES);
    if (!buf) rc = aicfn_error_set(err, AICFN_E_NOMEM, "storing %s", path);
    while (!rc) {
        ssize_t r = read(fd, buf, AICFN_UPLOAD_CHUNK_BYTES);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = aicfn_error_errno(err, AICFN_E_IO, errno, "reading %s", path);
        if (r <= 0) break;
        rc = gw_upload_write(u, gw_upload_received(u), buf, (size_t)r, err);
    }
    free(buf);
    close(fd);
    if (rc) {
        gw_upload_abort(u);
        return rc;
    }
    /* The file may have changed between hashing and copying: commit re-verifies. */
    rc = gw_upload_commit(u, err);
    if (rc) aicfn_error_wrap(err, "storing %s", path);
    return rc;
}
