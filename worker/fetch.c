/* fetch.c: the remote worker's artifact fetcher: single-flight, chunked, hash-checked
 * downloads of content-addressed artifacts from the gateway into a local cache
 * directory (see fetch.h). Not for: choosing which artifacts are remote (worker.c) or
 * serving them (gateway/front_nng.c). */
#include "worker/fetch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/durable.h"
#include "common/log.h"
#include "common/owndir.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/wire.h"

#define FETCH_TMP_PREFIX ".tmp-"
#define FETCH_REPLY_SLACK (64u << 10) /* reply bytes beyond the chunk: the map and keys */
#define FETCH_VERIFY_BUF (1u << 20)
#define FETCH_OVERLOADED_TRIES 6     /* a chunk asked while the gateway answers AICFN_E_OVERLOADED */
#define FETCH_OVERLOADED_PAUSE_MS 50 /* ... the first pause between, doubling */
#define FETCH_LOST_TRIES 3           /* a chunk asked while its asks time out or lose their link */

/* FETCH_GONE: a READY entry whose file disappeared, taken off the list while threads
 * woken by its download still hold it (the last one frees it). */
enum { FETCH_BUSY = 0, FETCH_READY = 1, FETCH_FAILED = 2, FETCH_GONE = 3 };

/* One artifact this process verified, or is fetching. */
typedef struct fetch_entry {
    struct fetch_entry *next;
    char hash[WORKER_HASH_HEX_LEN + 1];
    int state;
    int rc;                /* FETCH_FAILED: the download's error */
    aicfn_error err;       /* FETCH_FAILED */
    unsigned waiters;      /* threads waiting on it; the last one frees a failed or gone entry */
    uint64_t used_wall_us; /* FETCH_READY: its path was last handed out then (fetch_prune) */
} fetch_entry;

struct worker_fetcher {
    char *dir;
    char *key;
    char *gateway;
    uint32_t chunk;
    uint32_t timeout_ms;
    uint64_t max_bytes;      /* the cache directory's budget (fetch_prune) */
    uint64_t prune_grace_us; /* an artifact handed out this recently is never deleted */
    rpc_client *client;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fetch_entry *entries; /* READY and BUSY (failed ones leave the list) */
    uint64_t to_write;    /* under mu: bytes the downloads in flight have yet to write */
    atomic_uint_fast64_t seq;
    atomic_bool canceled; /* worker_fetcher_cancel: downloads fail */
};

/* ---- pure helpers ---- */

int worker_fetch_hash_valid(const char *hex) {
    if (hex == NULL) return 0;
    size_t i = 0;
    for (; hex[i]; i++) {
        char c = hex[i];
        if (i >= WORKER_HASH_HEX_LEN || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return i == WORKER_HASH_HEX_LEN;
}

int worker_fetch_hash_of_path(const char *path, char hash[WORKER_HASH_HEX_LEN + 1], aicfn_error *err) {
    hash[0] = '\0';
    if (path == NULL || path[0] == '\0')
        return aicfn_error_set(err, AICFN_E_INVALID, "artifact path is empty");
    const char *slash = strrchr(path, '/');
    const char *last = slash ? slash + 1 : path;
    if (!worker_fetch_hash_valid(last))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "artifact path '%.200s' does not end in a 64-character lowercase hex SHA-256",
                               path);
    memcpy(hash, last, WORKER_HASH_HEX_LEN + 1);
    return AICFN_OK;
}

int worker_fetch_cache_path(const char *dir, const char *hash, char *out, size_t cap, aicfn_error *err) {
    if (cap) out[0] = '\0';
    if (dir == NULL || dir[0] == '\0')
        return aicfn_error_set(err, AICFN_E_INVALID, "artifact cache: no directory");
    if (!worker_fetch_hash_valid(hash))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "artifact hash '%.80s' is not 64 lowercase hex characters", hash ? hash : "");
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    int w = snprintf(out, cap, "%.*s%s%s", (int)n, dir, dir[n - 1] == '/' ? "" : "/", hash);
    if (w < 0 || (size_t)w >= cap) {
        if (cap) out[0] = '\0';
        return aicfn_error_set(err, AICFN_E_INVALID, "artifact cache path under '%.200s' is too long", dir);
    }
    return AICFN_OK;
}

static void fetch_hex(const unsigned char *d, char out[WORKER_HASH_HEX_LEN + 1]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[WORKER_HASH_HEX_LEN] = '\0';
}

/* ---- lifecycle ---- */

/* Removes `.tmp-<hash>-<pid>-<n>-<random>` files that no download writes any more:
 * another live worker may share the directory and be writing its own. Its writer holds
 * an flock on it while it writes, and a file touched in the last minute (one whose
 * writer has opened it and not yet locked it) is left alone too. Pids do not tell: a
 * worker in another pid namespace may share the directory, and a worker restarted in a
 * container gets the pid of the one whose download it cut short. */
static void fetch_clean_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        size_t pl = strlen(FETCH_TMP_PREFIX);
        if (strncmp(n, FETCH_TMP_PREFIX, pl) != 0 || strlen(n) < pl + WORKER_HASH_HEX_LEN + 2) continue;
        const char *p = n + pl + WORKER_HASH_HEX_LEN;
        if (*p != '-') continue;
        char *end = NULL;
        long pid = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end != '-' || pid <= 0) continue;
        int fd = openat(dirfd(d), n, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0) continue;
        struct stat sb;
        bool stale =
            fstat(fd, &sb) == 0 && time(NULL) - sb.st_mtime > 60 && flock(fd, LOCK_EX | LOCK_NB) == 0;
        if (stale && unlinkat(dirfd(d), n, 0) == 0)
            log_info("artifact cache %s: removed leftover %s", dir, n);
        close(fd);
    }
    closedir(d);
}

int worker_fetcher_create(const worker_fetch_config *cfg, worker_fetcher **out, aicfn_error *err) {
    *out = NULL;
    if (cfg == NULL || cfg->gateway == NULL || cfg->gateway[0] == '\0')
        return aicfn_error_set(err, AICFN_E_INVALID, "artifact fetcher: no gateway address");
    if (cfg->chunk_bytes > AICFN_UPLOAD_CHUNK_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "artifact fetcher: chunk of %u bytes over the %u the gateway serves",
                               cfg->chunk_bytes, AICFN_UPLOAD_CHUNK_BYTES);
    if (sodium_init() < 0)
        return aicfn_error_set(err, AICFN_E_INTERNAL, "artifact fetcher: sodium_init failed");
    worker_fetcher *f = calloc(1, sizeof *f);
    if (f == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "artifact fetcher: out of memory");
    pthread_mutex_init(&f->mu, NULL);
    clock_cond_init(&f->cv);
    f->chunk = cfg->chunk_bytes ? cfg->chunk_bytes : AICFN_UPLOAD_CHUNK_BYTES;
    f->timeout_ms = cfg->chunk_timeout_ms ? cfg->chunk_timeout_ms : AICFN_FETCH_CHUNK_TIMEOUT_MS;
    f->max_bytes = cfg->max_bytes ? cfg->max_bytes : AICFN_WORKER_CACHE_MAX_BYTES;
    f->prune_grace_us =
        (uint64_t)(cfg->prune_grace_ms ? cfg->prune_grace_ms : AICFN_FETCH_PRUNE_GRACE_MS) * 1000;
    f->dir = strdup(cfg->cache_dir && cfg->cache_dir[0] ? cfg->cache_dir : AICFN_WORKER_CACHE_DIR);
    f->gateway = strdup(cfg->gateway);
    f->key = cfg->key ? strdup(cfg->key) : NULL;
    if (f->dir == NULL || f->gateway == NULL || (cfg->key && f->key == NULL)) {
        worker_fetcher_destroy(f);
        return aicfn_error_set(err, AICFN_E_NOMEM, "artifact fetcher: out of memory");
    }
    if (mkdir(f->dir, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        aicfn_error_errno(err, AICFN_E_IO, e, "artifact cache directory %s", f->dir);
        worker_fetcher_destroy(f);
        return AICFN_E_IO;
    }
    struct stat st;
    if (stat(f->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        aicfn_error_set(err, AICFN_E_IO, "artifact cache %s is not a directory", f->dir);
        worker_fetcher_destroy(f);
        return AICFN_E_IO;
    }
    /* Absolute from here on: handlers are dlopened by these paths. */
    char *abs = realpath(f->dir, NULL);
    if (abs == NULL) {
        aicfn_error_errno(err, AICFN_E_IO, errno, "artifact cache directory %s", f->dir);
        worker_fetcher_destroy(f);
        return AICFN_E_IO;
    }
    free(f->dir);
    f->dir = abs;
    /* Handlers are dlopened from here after their hash was checked: nobody else may be
     * able to swap one in between. */
    int own = owndir_check(f->dir, "the artifact cache", err);
    if (own != AICFN_OK) {
        worker_fetcher_destroy(f);
        return own;
    }
    fetch_clean_tmp(f->dir);
    rpc_client_opts o = {.recv_max = (size_t)f->chunk + FETCH_REPLY_SLACK, .background = true};
    int rc = rpc_client_open(&f->client, f->gateway, &o, err);
    if (rc != AICFN_OK) {
        aicfn_error_wrap(err, "artifact fetcher: gateway %s", cfg->gateway);
        worker_fetcher_destroy(f);
        return rc;
    }
    *out = f;
    return AICFN_OK;
}

void worker_fetcher_cancel(worker_fetcher *f) {
    atomic_store(&f->canceled, true);
    rpc_client_cancel(f->client); /* the round trip in progress ends now, and any about to start */
}

void worker_fetcher_destroy(worker_fetcher *f) {
    if (f == NULL) return;
    rpc_client_close(f->client);
    fetch_entry *e = f->entries;
    while (e) {
        fetch_entry *next = e->next;
        free(e);
        e = next;
    }
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f->dir);
    free(f->gateway);
    free(f->key);
    free(f);
}

const char *worker_fetcher_dir(const worker_fetcher *f) {
    return f->dir;
}

/* ---- verification of a cached file ---- */

/* AICFN_OK when `path` holds bytes hashing to `hash`; AICFN_E_NOT_FOUND when there is
 * no such file; AICFN_E_CORRUPT when it hashes to something else; AICFN_E_IO. */
static int fetch_verify_file(const char *path, const char *hash, aicfn_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return aicfn_error_errno(err, e == ENOENT ? AICFN_E_NOT_FOUND : AICFN_E_IO, e, "cached artifact %s",
                                 path);
    }
    /* A file another user owns or may write could change after this check (the directory
     * is this user's own, but it may not always have been): treated as corrupt, so it is
     * removed and fetched again. */
    struct stat st_file;
    if (fstat(fd, &st_file) != 0 || !S_ISREG(st_file.st_mode) || st_file.st_uid != geteuid() ||
        (st_file.st_mode & 022)) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "cached artifact %s is not a file of this user that nobody else may write",
                               path);
    }
    unsigned char *buf = malloc(FETCH_VERIFY_BUF);
    if (buf == NULL) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_NOMEM, "cached artifact %s: out of memory", path);
    }
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    int rc = AICFN_OK;
    for (;;) {
        ssize_t n = read(fd, buf, FETCH_VERIFY_BUF);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = aicfn_error_errno(err, AICFN_E_IO, errno, "reading cached artifact %s", path);
            break;
        }
        if (n == 0) break;
        crypto_hash_sha256_update(&st, buf, (unsigned long long)n);
    }
    free(buf);
    close(fd);
    if (rc != AICFN_OK) return rc;
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, d);
    char hex[WORKER_HASH_HEX_LEN + 1];
    fetch_hex(d, hex);
    if (strcmp(hex, hash) != 0)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "cached artifact %s hashes to %s", path, hex);
    return AICFN_OK;
}

/* ---- download ---- */

/* One artifact_get round trip: fills *size and the chunk (data/len point into *reply,
 * which the caller frees). */
static int fetch_chunk_once(worker_fetcher *f, const char *hash, uint64_t offset, uint32_t want, rpc_msg **reply,
                       wire_doc *doc, uint64_t *size, const uint8_t **data, size_t *len, aicfn_error *err) {
    *reply = NULL;
    memset(doc, 0, sizeof *doc);
    wire_writer w;
    wire_writer_init(&w);
    wire_put_map(&w, 6 + (f->key ? 1 : 0));
    wire_kv_u64(&w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(&w, "t", "artifact_get");
    wire_kv_u64(&w, "id", atomic_fetch_add(&f->seq, 1) + 1);
    if (f->key) wire_kv_str(&w, "key", f->key);
    wire_kv_str(&w, "hash", hash);
    wire_kv_u64(&w, "offset", offset);
    wire_kv_u64(&w, "len", want);
    int rc = wire_writer_status(&w, err);
    if (rc == AICFN_OK) rc = rpc_call_sync(f->client, w.data, w.len, f->timeout_ms, reply, err);
    wire_writer_fini(&w);
    if (rc != AICFN_OK) return rc;
    rc = wire_doc_parse(doc, rpc_msg_data(*reply), rpc_msg_len(*reply), NULL, err);
    wire_reply_head h;
    if (rc == AICFN_OK) rc = wire_decode_reply_head(doc, &h, err);
    if (rc == AICFN_OK && !h.ok)
        rc = aicfn_error_set(err, h.code != AICFN_OK ? h.code : AICFN_E_PROTOCOL, "gateway: %s",
                             h.message ? h.message : "");
    if (rc == AICFN_OK) rc = wire_get_u64(&doc->root, "artifact_get reply", "size", true, size, err);
    if (rc == AICFN_OK) rc = wire_get_bin(&doc->root, "artifact_get reply", "data", true, data, len, err);
    return rc;
}

/* fetch_chunk_once, asked again (a chunk is safe to ask twice): while the gateway answers
 * AICFN_E_OVERLOADED (its admin queue is full: the request was refused unseen), up to
 * FETCH_OVERLOADED_TRIES times; while the ask times out or its link drops (the admin
 * thread held by a long commit, a gateway restarting), up to FETCH_LOST_TRIES times, so
 * that one slow answer does not throw away what was downloaded. The pause between doubles
 * from FETCH_OVERLOADED_PAUSE_MS. */
static int fetch_chunk(worker_fetcher *f, const char *hash, uint64_t offset, uint32_t want, rpc_msg **reply,
                       wire_doc *doc, uint64_t *size, const uint8_t **data, size_t *len, aicfn_error *err) {
    uint32_t pause_ms = FETCH_OVERLOADED_PAUSE_MS;
    for (int overloaded = 0, lost = 0;;) {
        int rc = fetch_chunk_once(f, hash, offset, want, reply, doc, size, data, len, err);
        bool again = false;
        if (rc == AICFN_E_OVERLOADED)
            again = ++overloaded < FETCH_OVERLOADED_TRIES;
        else if (rc == AICFN_E_TIMEOUT || rc == AICFN_E_WORKER_LOST || rc == AICFN_E_UNAVAILABLE)
            again = ++lost < FETCH_LOST_TRIES;
        if (!again || atomic_load(&f->canceled)) return rc;
        if (rc != AICFN_E_OVERLOADED)
            log_warn("fetching %s at offset %llu: %s; asking again in %u ms", hash,
                     (unsigned long long)offset, err->msg, pause_ms);
        wire_doc_fini(doc);
        rpc_msg_free(*reply);
        *reply = NULL;
        memset(doc, 0, sizeof *doc);
        struct timespec ts = {.tv_sec = pause_ms / 1000, .tv_nsec = (long)(pause_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        pause_ms *= 2;
    }
}

/* Whether the file system of `fd` has `bytes` free for an unprivileged writer (true when
 * it cannot tell). */
static bool fetch_disk_has_room(int fd, uint64_t bytes) {
    struct statvfs sv;
    if (fstatvfs(fd, &sv) != 0) return true;
    return (uint64_t)sv.f_bavail * sv.f_frsize >= bytes;
}

static int fetch_write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void fetch_prune(worker_fetcher *f, const char *keep, uint64_t room);

/* Counts a download of `size` bytes that is starting in f->to_write (*reserved: what it
 * counts there), makes room for it and every other download in flight in the cache's
 * budget, and checks that the disk of `fd` has room for them all: concurrent cold
 * starts must not each pass the check alone and then fill the disk together. */
static int fetch_reserve(worker_fetcher *f, const char *hash, int fd, uint64_t size, uint64_t *reserved,
                         aicfn_error *err) {
    pthread_mutex_lock(&f->mu);
    uint64_t others = f->to_write;
    f->to_write += size;
    *reserved = size;
    pthread_mutex_unlock(&f->mu);
    fetch_prune(f, hash, size + others);
    if (!fetch_disk_has_room(fd, size + others))
        return aicfn_error_set(err, AICFN_E_CAPACITY,
                               "artifact %s: %" PRIu64
                               " bytes do not fit on the disk of %s (less is free, with %" PRIu64
                               " bytes of other downloads still to come)",
                               hash, size, f->dir, others);
    return AICFN_OK;
}

/* Takes `n` written (or never to be written) bytes out of f->to_write and *reserved. */
static void fetch_unreserve(worker_fetcher *f, uint64_t *reserved, uint64_t n) {
    if (n > *reserved) n = *reserved;
    pthread_mutex_lock(&f->mu);
    f->to_write -= n;
    pthread_mutex_unlock(&f->mu);
    *reserved -= n;
}

/* Downloads `hash` into `final` through a temporary file in the same directory. */
static int fetch_download(worker_fetcher *f, const char *hash, const char *final, aicfn_error *err) {
    char tmp[PATH_MAX];
    /* Random too: a restarted worker may have the pid (and restart the sequence) of the
     * one that left a temporary file behind. */
    uint64_t salt = 0;
    randombytes_buf(&salt, sizeof salt);
    int n = snprintf(tmp, sizeof tmp, "%s/" FETCH_TMP_PREFIX "%s-%ld-%" PRIuFAST64 "-%016" PRIx64, f->dir,
                     hash, (long)getpid(), atomic_fetch_add(&f->seq, 1) + 1, salt);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return aicfn_error_set(err, AICFN_E_INVALID, "artifact %s: cache directory path too long", hash);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "artifact %s: creating %s", hash, tmp);
    (void)flock(fd, LOCK_EX); /* in use: fetch_clean_tmp of another worker leaves it alone */
    uint64_t t0 = clock_now_us();
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    uint64_t size = 0, off = 0, reserved = 0;
    unsigned chunks = 0;
    int rc = AICFN_OK;
    do {
        uint32_t want = f->chunk;
        if (chunks > 0 && size - off < want) want = (uint32_t)(size - off);
        rpc_msg *reply = NULL;
        wire_doc doc = {0}; /* as fetch_chunk leaves it on failure */
        uint64_t got_size = 0;
        const uint8_t *data = NULL;
        size_t len = 0;
        rc = atomic_load(&f->canceled)
                 ? AICFN_E_CANCELED
                 : fetch_chunk(f, hash, off, want, &reply, &doc, &got_size, &data, &len, err);
        if (rc != AICFN_OK && atomic_load(&f->canceled)) {
            rc = aicfn_error_set(err, AICFN_E_CANCELED,
                                 "artifact %s: download canceled (the worker is stopping)", hash);
        } else if (rc != AICFN_OK) {
            aicfn_error_wrap(err, "artifact %s: fetching %u bytes at offset %" PRIu64 " from %s", hash, want,
                             off, f->gateway);
        } else if (chunks == 0 && got_size > AICFN_ARTIFACT_MAX_BYTES) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "artifact %s: the gateway announces %" PRIu64
                                 " bytes, over the limit of %llu",
                                 hash, got_size, (unsigned long long)AICFN_ARTIFACT_MAX_BYTES);
        } else if (chunks == 0 && got_size > f->max_bytes) {
            rc = aicfn_error_set(err, AICFN_E_TOO_LARGE,
                                 "artifact %s: %" PRIu64
                                 " bytes do not fit in the artifact cache's budget of %" PRIu64
                                 " bytes (aicfn worker --cache-max)",
                                 hash, got_size, f->max_bytes);
        } else if (chunks == 0 && (rc = fetch_reserve(f, hash, fd, got_size, &reserved, err)) != AICFN_OK) {
            /* err says why */
        } else if (chunks > 0 && got_size != size) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "artifact %s: the gateway announced %" PRIu64 " bytes, then %" PRIu64
                                 " at offset %" PRIu64,
                                 hash, size, got_size, off);
        } else {
            if (chunks == 0) size = got_size;
            uint64_t expect = size - off < want ? size - off : want;
            if ((uint64_t)len != expect) {
                rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                     "artifact %s: chunk at offset %" PRIu64
                                     " has %zu bytes, expected %" PRIu64 " (of %" PRIu64 ")",
                                     hash, off, len, expect, size);
            } else if (len > 0 && fetch_write_all(fd, data, len) != 0) {
                rc = aicfn_error_errno(err, AICFN_E_IO, errno, "artifact %s: writing %s", hash, tmp);
            } else {
                crypto_hash_sha256_update(&st, data, (unsigned long long)len);
                off += len;
                chunks++;
                fetch_unreserve(f, &reserved, len);
            }
        }
        wire_doc_fini(&doc);
        rpc_msg_free(reply);
    } while (rc == AICFN_OK && off < size);
    fetch_unreserve(f, &reserved, reserved); /* a download that stopped short */
    if (rc == AICFN_OK) {
        unsigned char d[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_final(&st, d);
        char hex[WORKER_HASH_HEX_LEN + 1];
        fetch_hex(d, hex);
        if (strcmp(hex, hash) != 0)
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "artifact %s: the %" PRIu64 " bytes the gateway sent hash to %s", hash, size,
                                 hex);
    }
    if (rc == AICFN_OK && fsync(fd) != 0)
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "artifact %s: fsync %s", hash, tmp);
    if (close(fd) != 0 && rc == AICFN_OK)
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "artifact %s: close %s", hash, tmp);
    if (rc == AICFN_OK && rename(tmp, final) != 0)
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "artifact %s: rename to %s", hash, final);
    if (rc != AICFN_OK) {
        unlink(tmp);
        return rc;
    }
    aicfn_error serr;
    if (durable_sync_dir(f->dir, &serr) != AICFN_OK) log_warn("artifact cache: %s", serr.msg);
    log_info("fetched artifact %s (%" PRIu64 " bytes, %u chunks) in %" PRIu64 " ms", hash, size, chunks,
             (clock_now_us() - t0) / 1000);
    return AICFN_OK;
}

/* The work of one flight: trust a cached file that verifies, else download. */
static int fetch_one(worker_fetcher *f, const char *hash, const char *path, aicfn_error *err) {
    aicfn_error verr;
    aicfn_error_clear(&verr);
    /* Used now: another worker sharing the directory does not prune it while it is hashed. */
    (void)utimensat(AT_FDCWD, path, NULL, 0);
    int rc = fetch_verify_file(path, hash, &verr);
    if (rc == AICFN_OK) {
        log_info("artifact %s: cached copy verified", hash);
        return AICFN_OK;
    }
    if (rc == AICFN_E_CORRUPT) {
        log_warn("%s; removing it and fetching again", verr.msg);
        if (unlink(path) != 0 && errno != ENOENT)
            return aicfn_error_errno(err, AICFN_E_IO, errno, "artifact %s: removing the bad cached copy %s",
                                     hash, path);
    } else if (rc != AICFN_E_NOT_FOUND) {
        if (err) *err = verr;
        return rc;
    }
    return fetch_download(f, hash, path, err);
}

/* ---- the cache's budget ---- */

typedef struct fetch_file {
    char hash[WORKER_HASH_HEX_LEN + 1];
    uint64_t bytes;
    uint64_t mtime_us;
} fetch_file;

static int fetch_file_older(const void *a, const void *b) {
    const fetch_file *x = a, *y = b;
    return x->mtime_us < y->mtime_us ? -1 : x->mtime_us > y->mtime_us;
}

static uint64_t fetch_mtime_us(const struct stat *st) {
    return (uint64_t)st->st_mtim.tv_sec * 1000000u + (uint64_t)st->st_mtim.tv_nsec / 1000u;
}

/* Keeps the cache directory within its budget, `room` bytes of it left free for downloads
 * in flight (before a download: it and the others; 0 after one): deletes the least
 * recently used artifacts (file mtime, refreshed at every use, or this process's last
 * hand-out of the path, whichever is later) until the rest fits. Never deletes `keep`
 * (being or just fetched), an artifact being fetched, or one handed out within the grace period
 * (its caller may not have opened it yet; a handler or snapshot already opened is not
 * affected by the unlink). The directory is listed without the lock; each deletion is
 * decided and done under it, so no thread can be handed a path that is being deleted. */
static void fetch_prune(worker_fetcher *f, const char *keep, uint64_t room) {
    DIR *d = opendir(f->dir);
    if (d == NULL) return;
    fetch_file *files = NULL;
    size_t n = 0, cap = 0;
    uint64_t total = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        if (!worker_fetch_hash_valid(de->d_name) || fstatat(dirfd(d), de->d_name, &st, 0) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            fetch_file *nf = realloc(files, nc * sizeof *nf);
            if (nf == NULL) break;
            files = nf;
            cap = nc;
        }
        memcpy(files[n].hash, de->d_name, WORKER_HASH_HEX_LEN + 1);
        files[n].bytes = (uint64_t)st.st_size;
        files[n].mtime_us = fetch_mtime_us(&st);
        total += files[n].bytes;
        n++;
    }
    uint64_t budget = room < f->max_bytes ? f->max_bytes - room : 0; /* what the files may keep */
    if (total <= budget) {
        closedir(d);
        free(files);
        return;
    }
    qsort(files, n, sizeof *files, fetch_file_older);
    uint64_t now = clock_wall_us();
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < n && total > budget; i++) {
        if (strcmp(files[i].hash, keep) == 0) continue;
        fetch_entry **pp = &f->entries;
        while (*pp && strcmp((*pp)->hash, files[i].hash) != 0)
            pp = &(*pp)->next;
        fetch_entry *e = *pp;
        if (e && (e->state != FETCH_READY || e->waiters)) continue; /* being fetched, verified or waited on */
        struct stat st;
        if (fstatat(dirfd(d), files[i].hash, &st, 0) != 0) continue; /* gone meanwhile */
        uint64_t used = fetch_mtime_us(&st);
        if (e && e->used_wall_us > used) used = e->used_wall_us;
        if (now < used + f->prune_grace_us) continue;
        if (unlinkat(dirfd(d), files[i].hash, 0) != 0) continue;
        if (e) {
            *pp = e->next;
            free(e);
        }
        total -= files[i].bytes;
        log_info("artifact cache %s: removed %s (%" PRIu64 " bytes, unused for %" PRIu64
                 " s) to stay within %" PRIu64 " bytes (%" PRIu64 " of them for downloads in flight)",
                 f->dir, files[i].hash, files[i].bytes, (now - used) / 1000000u, f->max_bytes, room);
    }
    pthread_mutex_unlock(&f->mu);
    if (total > budget)
        log_warn("artifact cache %s: %" PRIu64 " bytes, over its budget of %" PRIu64
                 " bytes: the rest is in use or was used in the last %" PRIu64 " ms",
                 f->dir, total, f->max_bytes, f->prune_grace_us / 1000);
    closedir(d);
    free(files);
}

/* Marks `local` used now (best effort; fetch_prune also has the in-memory time). */
static void fetch_touch(const char *local) {
    (void)utimensat(AT_FDCWD, local, NULL, 0);
}

int worker_fetch(worker_fetcher *f, const char *hash, char *local, size_t cap, aicfn_error *err) {
    int rc = worker_fetch_cache_path(f->dir, hash, local, cap, err);
    if (rc != AICFN_OK) return rc;
    pthread_mutex_lock(&f->mu);
    fetch_entry **pe = &f->entries;
    while (*pe && strcmp((*pe)->hash, hash) != 0)
        pe = &(*pe)->next;
    fetch_entry *e = *pe;
    if (e && e->state == FETCH_READY) {
        struct stat st;
        if (stat(local, &st) == 0 && S_ISREG(st.st_mode)) {
            e->used_wall_us = clock_wall_us();
            pthread_mutex_unlock(&f->mu);
            fetch_touch(local);
            return AICFN_OK;
        }
        /* Gone: another worker sharing this cache directory pruned it, or someone
         * removed it. Forget it and fetch it again. */
        log_info("artifact cache %s: %s is no longer there; fetching it again", f->dir, hash);
        *pe = e->next;
        if (e->waiters == 0)
            free(e);
        else
            e->state = FETCH_GONE; /* woken by its download, they have not looked yet */
        e = NULL;
    }
    if (e) {
        /* Someone is fetching it: wait for that flight's result. */
        e->waiters++;
        while (e->state == FETCH_BUSY)
            pthread_cond_wait(&f->cv, &f->mu);
        bool gone = e->state == FETCH_GONE; /* its file vanished before this thread looked */
        rc = e->state == FETCH_READY ? AICFN_OK : e->rc;
        if (rc == AICFN_OK) e->used_wall_us = clock_wall_us();
        if (rc != AICFN_OK && !gone && err) *err = e->err;
        if (--e->waiters == 0 && (e->state == FETCH_FAILED || gone)) free(e);
        pthread_mutex_unlock(&f->mu);
        if (gone) return worker_fetch(f, hash, local, cap, err); /* fetch it again */
        if (rc != AICFN_OK) local[0] = '\0';
        return rc;
    }
    e = calloc(1, sizeof *e);
    if (e == NULL) {
        pthread_mutex_unlock(&f->mu);
        local[0] = '\0';
        return aicfn_error_set(err, AICFN_E_NOMEM, "artifact %s: out of memory", hash);
    }
    memcpy(e->hash, hash, sizeof e->hash);
    e->state = FETCH_BUSY;
    e->next = f->entries;
    f->entries = e;
    pthread_mutex_unlock(&f->mu);

    aicfn_error ferr;
    aicfn_error_clear(&ferr);
    rc = fetch_one(f, hash, local, &ferr);
    if (rc != AICFN_OK) log_warn("%s", ferr.msg);

    pthread_mutex_lock(&f->mu);
    if (rc == AICFN_OK) {
        e->state = FETCH_READY;
        e->used_wall_us = clock_wall_us();
    } else {
        fetch_entry **pp = &f->entries;
        while (*pp != e)
            pp = &(*pp)->next;
        *pp = e->next;
        e->state = FETCH_FAILED;
        e->rc = rc;
        e->err = ferr;
        if (e->waiters == 0) free(e);
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (rc != AICFN_OK) {
        if (err) *err = ferr;
        local[0] = '\0';
        return rc;
    }
    fetch_touch(local);
    fetch_prune(f, hash, 0);
    return AICFN_OK;
}

int worker_fetch_path(worker_fetcher *f, const char *gateway_path, char *local, size_t cap,
                      aicfn_error *err) {
    char hash[WORKER_HASH_HEX_LEN + 1];
    int rc = worker_fetch_hash_of_path(gateway_path, hash, err);
    if (rc != AICFN_OK) {
        if (cap) local[0] = '\0';
        return rc;
    }
    return worker_fetch(f, hash, local, cap, err);
}
