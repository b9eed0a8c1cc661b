/* test_fetch.c: the remote worker's artifact fetcher (worker/fetch.h): the pure parts
 * (hash from a gateway path, cache naming) and whole downloads against an in-process
 * fake gateway that serves artifact_get over a real NNG REQ/REP pair: multi-chunk
 * downloads, trust of a cached file only after it was re-hashed, corrupt and short
 * downloads (AICFN_E_CORRUPT naming the artifact, nothing left behind), unknown hashes,
 * a gateway that never answers (per-chunk timeout), single flight (one download for
 * many concurrent callers, a failed flight fails them all and does not stick), and the
 * removal of temporary files dead processes left, the cache's byte budget (least
 * recently used artifacts deleted after a download, never ones used within the grace
 * period). Also the loader's optional resolve
 * hook (loader_pipeline_source.resolve), through which a remote worker fetches a
 * snapshot inside the cache's load: its time is fetch_us and counts in total_us, and
 * its error fails the load. And a remote worker's call whose handler is still
 * downloading is answered at its deadline. Every wait is bounded. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "common/clock.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/wire.h"
#include "loader/cache.h"
#include "loader/pipeline.h"
#include "snapshots/safetensors.h"
#include "snapshots/writer.h"
#include "worker/fetch.h"
#include "worker/worker.h"

#include "test_fake_artifacts.h"

#define CONTENT_BYTES 4500
#define CHUNK 1000 /* 5 chunks: 4 full, one of 500 */

enum { MODE_OK = 0, MODE_SHORT, MODE_FLIP, MODE_HUGE, MODE_SIZE_CHANGE, MODE_HOLD };

/* ---- a fake gateway that serves one artifact ---- */

typedef struct fake_gw {
    rpc_server *srv;
    int mode;
    unsigned delay_ms;
    uint8_t content[CONTENT_BYTES];
    char hash[WORKER_HASH_HEX_LEN + 1];
    atomic_uint requests;
    atomic_uint with_key;
    pthread_mutex_t mu;
    rpc_call *held[64];
    unsigned n_held;
    atomic_uint overloaded; /* the next requests answered AICFN_E_OVERLOADED */
    atomic_uint silent;     /* the next requests held unanswered (the asker times out) */
    char probe_dir[PATH_MAX]; /* when set: whether a cached file of digit '1' is there at */
    atomic_int probe_later;   /* a chunk asked after the first (-1: none asked) */
} fake_gw;

static void to_hex(const unsigned char *d, char *out) {
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void fake_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    fake_gw *g = user;
    wire_doc doc;
    tfa_get q;
    aicfn_error e;
    int rc = tfa_decode_get(&doc, msg, len, &q, &e);
    atomic_fetch_add(&g->requests, 1);
    if (q.key && strcmp(q.key, "k3y") == 0) atomic_fetch_add(&g->with_key, 1);
    if (g->delay_ms) usleep(g->delay_ms * 1000);
    if (rc != AICFN_OK) {
        assert_int_equal(tfa_reply_error(call, wire_peek_id(msg, len), rc, e.msg), AICFN_OK);
        wire_doc_fini(&doc);
        return;
    }
    unsigned busy = atomic_load(&g->overloaded);
    while (busy > 0 && !atomic_compare_exchange_weak(&g->overloaded, &busy, busy - 1)) {
    }
    if (busy > 0) {
        assert_int_equal(tfa_reply_error(call, q.h.id, AICFN_E_OVERLOADED, "too many administrative requests"),
                         AICFN_OK);
        wire_doc_fini(&doc);
        return;
    }
    unsigned quiet = atomic_load(&g->silent);
    while (quiet > 0 && !atomic_compare_exchange_weak(&g->silent, &quiet, quiet - 1)) {
    }
    if (g->mode == MODE_HOLD || quiet > 0) {
        pthread_mutex_lock(&g->mu);
        if (g->n_held < 64) {
            g->held[g->n_held++] = call;
            call = NULL;
        }
        pthread_mutex_unlock(&g->mu);
        if (call) rpc_call_drop(call);
        wire_doc_fini(&doc);
        return;
    }
    if (strcmp(q.hash, g->hash) != 0) {
        assert_int_equal(tfa_reply_error(call, q.h.id, AICFN_E_NOT_FOUND, "artifact is not stored"),
                         AICFN_OK);
        wire_doc_fini(&doc);
        return;
    }
    uint64_t off = q.offset, want = q.len;
    if (g->probe_dir[0] && off > 0) {
        char path[PATH_MAX + WORKER_HASH_HEX_LEN + 2], name[WORKER_HASH_HEX_LEN + 1];
        memset(name, '1', WORKER_HASH_HEX_LEN);
        name[WORKER_HASH_HEX_LEN] = 0;
        snprintf(path, sizeof path, "%s/%s", g->probe_dir, name);
        atomic_store(&g->probe_later, access(path, F_OK) == 0);
    }
    uint64_t size = CONTENT_BYTES;
    uint64_t n = off >= size ? 0 : (size - off < want ? size - off : want);
    uint8_t buf[CHUNK * 4];
    assert_true(n <= sizeof buf);
    memcpy(buf, g->content + off, (size_t)n);
    uint64_t announced = size;
    if (g->mode == MODE_SHORT && off == 2 * CHUNK) n--;
    if (g->mode == MODE_FLIP && off == CHUNK) buf[7] ^= 0x40;
    if (g->mode == MODE_HUGE) announced = AICFN_ARTIFACT_MAX_BYTES + 1;
    if (g->mode == MODE_SIZE_CHANGE && off > 0) announced = size + 1;
    tfa_reply_chunk(call, q.h.id, announced, buf, n);
    wire_doc_fini(&doc);
}

static atomic_uint url_seq;

typedef struct fixture {
    fake_gw *g;
    char dir[64];
    char url[64];
} fixture;

static int setup(void **state) {
    assert_true(sodium_init() >= 0);
    fixture *fx = calloc(1, sizeof *fx);
    fake_gw *g = calloc(1, sizeof *g);
    assert_non_null(fx);
    assert_non_null(g);
    pthread_mutex_init(&g->mu, NULL);
    randombytes_buf(g->content, sizeof g->content);
    unsigned char d[32];
    crypto_hash_sha256(d, g->content, sizeof g->content);
    to_hex(d, g->hash);
    snprintf(fx->url, sizeof fx->url, "inproc://fetch-test-%d-%u", (int)getpid(),
             atomic_fetch_add(&url_seq, 1));
    aicfn_error e;
    assert_int_equal(rpc_server_start(&g->srv, fx->url, NULL, fake_handler, g, &e), AICFN_OK);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/aicfn-fetch-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    fx->g = g;
    *state = fx;
    return 0;
}

static void release_held(fake_gw *g) {
    pthread_mutex_lock(&g->mu);
    for (unsigned i = 0; i < g->n_held; i++)
        rpc_call_drop(g->held[i]);
    g->n_held = 0;
    pthread_mutex_unlock(&g->mu);
}

static int teardown(void **state) {
    fixture *fx = *state;
    release_held(fx->g);
    rpc_server_destroy(fx->g->srv);
    pthread_mutex_destroy(&fx->g->mu);
    DIR *d = opendir(fx->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL)
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
    }
    rmdir(fx->dir);
    free(fx->g);
    free(fx);
    return 0;
}

static worker_fetcher *open_fetcher(fixture *fx, const char *key, uint32_t timeout_ms) {
    worker_fetch_config c = {.gateway = fx->url,
                             .key = key,
                             .cache_dir = fx->dir,
                             .chunk_bytes = CHUNK,
                             .chunk_timeout_ms = timeout_ms};
    worker_fetcher *f = NULL;
    aicfn_error e;
    int rc = worker_fetcher_create(&c, &f, &e);
    if (rc != AICFN_OK) fail_msg("fetcher: %s", e.msg);
    return f;
}

/* Number of directory entries other than . and .. (and how many are temporaries). */
static unsigned dir_entries(const char *dir, unsigned *tmps) {
    unsigned n = 0;
    if (tmps) *tmps = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        n++;
        if (tmps && strncmp(de->d_name, ".tmp-", 5) == 0) (*tmps)++;
    }
    closedir(d);
    return n;
}

static void assert_file_is(const char *path, const uint8_t *content, size_t len) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t *buf = malloc(len + 1);
    assert_non_null(buf);
    size_t got = fread(buf, 1, len + 1, fp);
    fclose(fp);
    assert_int_equal(got, len);
    assert_memory_equal(buf, content, len);
    free(buf);
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

/* ---- pure parts ---- */

static void hash_of_path(void **state) {
    (void)state;
    const char *h = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char out[65], path[256];
    aicfn_error e;
    snprintf(path, sizeof path, "/var/lib/aicfn/artifacts/%s", h);
    assert_int_equal(worker_fetch_hash_of_path(path, out, &e), AICFN_OK);
    assert_string_equal(out, h);
    assert_int_equal(worker_fetch_hash_of_path(h, out, &e), AICFN_OK);
    assert_string_equal(out, h);
    snprintf(path, sizeof path, "rel/%s", h);
    assert_int_equal(worker_fetch_hash_of_path(path, out, &e), AICFN_OK);
    const char *bad[] = {
        "",
        "/",
        "/var/lib/aicfn/artifacts/",
        "/a/0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",  /* uppercase */
        "/a/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",   /* 63 */
        "/a/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0", /* 65 */
        "/a/0123456789abcdeg0123456789abcdef0123456789abcdef0123456789abcdef",  /* 'g' */
        "/a/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/", /* trailing / */
        "/a/handler.so",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        aicfn_error_clear(&e);
        assert_int_equal(worker_fetch_hash_of_path(bad[i], out, &e), AICFN_E_INVALID);
        assert_string_equal(out, "");
        assert_true(strlen(e.msg) > 0);
    }
    assert_int_equal(worker_fetch_hash_of_path(NULL, out, &e), AICFN_E_INVALID);
    assert_true(worker_fetch_hash_valid(h));
    assert_false(worker_fetch_hash_valid(NULL));
    assert_false(worker_fetch_hash_valid("abc"));
}

static void cache_path(void **state) {
    (void)state;
    const char *h = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char out[256], expect[256];
    aicfn_error e;
    snprintf(expect, sizeof expect, "/tmp/cache/%s", h);
    assert_int_equal(worker_fetch_cache_path("/tmp/cache", h, out, sizeof out, &e), AICFN_OK);
    assert_string_equal(out, expect);
    assert_int_equal(worker_fetch_cache_path("/tmp/cache//", h, out, sizeof out, &e), AICFN_OK);
    assert_string_equal(out, expect);
    snprintf(expect, sizeof expect, "/%s", h);
    assert_int_equal(worker_fetch_cache_path("/", h, out, sizeof out, &e), AICFN_OK);
    assert_string_equal(out, expect);
    /* Exactly the room needed, then one byte less. */
    size_t need = strlen("/tmp/cache/") + 64 + 1;
    assert_int_equal(worker_fetch_cache_path("/tmp/cache", h, out, need, &e), AICFN_OK);
    assert_int_equal(worker_fetch_cache_path("/tmp/cache", h, out, need - 1, &e), AICFN_E_INVALID);
    assert_string_equal(out, "");
    assert_int_equal(worker_fetch_cache_path("/tmp/cache", "../../etc/passwd", out, sizeof out, &e),
                     AICFN_E_INVALID);
    assert_int_equal(worker_fetch_cache_path("", h, out, sizeof out, &e), AICFN_E_INVALID);
    assert_int_equal(worker_fetch_cache_path(NULL, h, out, sizeof out, &e), AICFN_E_INVALID);
}

/* ---- downloads ---- */

static void download_in_chunks_then_trusted(void **state) {
    fixture *fx = *state;
    worker_fetcher *f = open_fetcher(fx, "k3y", 5000);
    char local[PATH_MAX], expect[PATH_MAX];
    aicfn_error e;
    snprintf(expect, sizeof expect, "%s/%s", fx->dir, fx->g->hash);
    char real[PATH_MAX];
    assert_non_null(realpath(fx->dir, real));
    snprintf(expect, sizeof expect, "%s/%s", real, fx->g->hash);
    assert_string_equal(worker_fetcher_dir(f), real);
    int rc = worker_fetch(f, fx->g->hash, local, sizeof local, &e);
    if (rc != AICFN_OK) fail_msg("fetch: %s", e.msg);
    assert_string_equal(local, expect);
    assert_file_is(local, fx->g->content, CONTENT_BYTES);
    assert_int_equal(atomic_load(&fx->g->requests), 5);
    assert_int_equal(atomic_load(&fx->g->with_key), 5); /* the key travels with every chunk */
    unsigned tmps;
    assert_int_equal(dir_entries(fx->dir, &tmps), 1);
    assert_int_equal(tmps, 0);
    struct stat st;
    assert_int_equal(stat(local, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* Downloaded by this process: trusted without another request. */
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_int_equal(atomic_load(&fx->g->requests), 5);
    /* Removed behind its back (another worker sharing the directory pruned it): fetched
     * again, not handed out as a path that no longer exists. */
    assert_int_equal(unlink(local), 0);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_file_is(local, fx->g->content, CONTENT_BYTES);
    assert_int_equal(atomic_load(&fx->g->requests), 10);
    /* By gateway path: only the last component is used. */
    char gpath[PATH_MAX];
    snprintf(gpath, sizeof gpath, "/nonexistent/gateway/data/artifacts/%s", fx->g->hash);
    assert_int_equal(worker_fetch_path(f, gpath, local, sizeof local, &e), AICFN_OK);
    assert_string_equal(local, expect);
    assert_int_equal(worker_fetch_path(f, "/nonexistent/handler.so", local, sizeof local, &e),
                     AICFN_E_INVALID);
    /* Too small a buffer for the local path. */
    assert_int_equal(worker_fetch(f, fx->g->hash, local, 10, &e), AICFN_E_INVALID);
    /* A gateway whose admin queue is full (AICFN_E_OVERLOADED, refused unseen) is asked
     * again: three refusals in a row do not fail the download. */
    assert_int_equal(unlink(expect), 0);
    unsigned before = atomic_load(&fx->g->requests);
    atomic_store(&fx->g->overloaded, 3);
    rc = worker_fetch(f, fx->g->hash, local, sizeof local, &e);
    if (rc != AICFN_OK) fail_msg("fetch past refusals: %s", e.msg);
    assert_file_is(local, fx->g->content, CONTENT_BYTES);
    assert_int_equal(atomic_load(&fx->g->requests) - before, 5 + 3);
    worker_fetcher_destroy(f);
}

/* A file in the cache under a valid hash name, `age_s` seconds old (mtime). */
static void place_old(const char *dir, char digit, size_t bytes, long age_s) {
    char path[PATH_MAX], name[WORKER_HASH_HEX_LEN + 1];
    memset(name, digit, WORKER_HASH_HEX_LEN);
    name[WORKER_HASH_HEX_LEN] = 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint8_t *buf = calloc(1, bytes);
    assert_non_null(buf);
    write_file(path, buf, bytes);
    free(buf);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct timespec ts[2] = {{now.tv_sec - age_s, 0}, {now.tv_sec - age_s, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static int has_file(const char *dir, char digit) {
    char path[PATH_MAX], name[WORKER_HASH_HEX_LEN + 1];
    memset(name, digit, WORKER_HASH_HEX_LEN);
    name[WORKER_HASH_HEX_LEN] = 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void cache_budget_prunes_least_recently_used(void **state) {
    fixture *fx = *state;
    /* Left by earlier processes: two old artifacts and one used a moment ago. */
    place_old(fx->dir, '1', 3000, 3600);
    place_old(fx->dir, '2', 3000, 1800);
    place_old(fx->dir, '3', 3000, 0);
    worker_fetch_config c = {.gateway = fx->url,
                             .cache_dir = fx->dir,
                             .chunk_bytes = CHUNK,
                             .chunk_timeout_ms = 5000,
                             .max_bytes = 8000,
                             .prune_grace_ms = 60000};
    worker_fetcher *f = NULL;
    aicfn_error e;
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_OK);
    char local[PATH_MAX];
    snprintf(fx->g->probe_dir, sizeof fx->g->probe_dir, "%s", fx->dir);
    atomic_store(&fx->g->probe_later, -1);
    int rc = worker_fetch(f, fx->g->hash, local, sizeof local, &e);
    if (rc != AICFN_OK) fail_msg("fetch: %s", e.msg);
    fx->g->probe_dir[0] = '\0';
    /* 4500 fetched + 9000 cached > 8000: the oldest go until the rest fits (7500), and
     * before the download writes (once its size is known): downloads at once must not
     * fill the disk together. */
    assert_int_equal(atomic_load(&fx->g->probe_later), 0);
    assert_false(has_file(fx->dir, '1'));
    assert_false(has_file(fx->dir, '2'));
    assert_true(has_file(fx->dir, '3'));
    assert_file_is(local, fx->g->content, CONTENT_BYTES);
    assert_int_equal(dir_entries(fx->dir, NULL), 2);
    worker_fetcher_destroy(f);

    /* Within the grace period nothing is deleted, even over budget; the fetch succeeds. */
    unlink(local);
    place_old(fx->dir, '4', 3000, 10);
    c.max_bytes = 5000; /* the artifact (4500) fits; with '3' and '4' the cache does not */
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_OK);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_true(has_file(fx->dir, '3') && has_file(fx->dir, '4'));
    assert_file_is(local, fx->g->content, CONTENT_BYTES);
    worker_fetcher_destroy(f);

    /* An artifact larger than the whole budget is refused when its size is announced,
     * before anything is written (it was downloaded in full, and kept over budget). */
    unlink(local);
    c.max_bytes = 1000;
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_OK);
    unsigned before = atomic_load(&fx->g->requests);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_E_TOO_LARGE);
    assert_non_null(strstr(e.msg, "4500 bytes do not fit in the artifact cache's budget of 1000"));
    assert_int_equal(atomic_load(&fx->g->requests), before + 1); /* the first chunk only */
    unsigned tmps = 0;
    dir_entries(fx->dir, &tmps);
    assert_int_equal(tmps, 0);
    assert_int_equal(access(local, F_OK), -1);
    worker_fetcher_destroy(f);
}

static void cached_file_verified_at_first_use(void **state) {
    fixture *fx = *state;
    char path[PATH_MAX], local[PATH_MAX];
    aicfn_error e;
    snprintf(path, sizeof path, "%s/%s", fx->dir, fx->g->hash);
    /* A good copy left by an earlier process: re-hashed, used, nothing fetched. */
    write_file(path, fx->g->content, CONTENT_BYTES);
    worker_fetcher *f = open_fetcher(fx, NULL, 5000);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_int_equal(atomic_load(&fx->g->requests), 0);
    assert_int_equal(atomic_load(&fx->g->with_key), 0);
    worker_fetcher_destroy(f);
    /* A tampered copy (same size): replaced by a fresh download. */
    uint8_t bad[CONTENT_BYTES];
    memcpy(bad, fx->g->content, sizeof bad);
    bad[CONTENT_BYTES / 2] ^= 1;
    write_file(path, bad, sizeof bad);
    f = open_fetcher(fx, NULL, 5000);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_int_equal(atomic_load(&fx->g->requests), 5);
    assert_file_is(path, fx->g->content, CONTENT_BYTES);
    worker_fetcher_destroy(f);
    /* A truncated copy, too. */
    write_file(path, fx->g->content, 100);
    f = open_fetcher(fx, NULL, 5000);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_int_equal(atomic_load(&fx->g->requests), 10);
    assert_file_is(path, fx->g->content, CONTENT_BYTES);
    worker_fetcher_destroy(f);
    /* A good copy that others may write (it could change after its check, before its
     * handler is dlopened): fetched again, into a file only this user may write. */
    write_file(path, fx->g->content, CONTENT_BYTES);
    assert_int_equal(chmod(path, 0666), 0);
    f = open_fetcher(fx, NULL, 5000);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_int_equal(atomic_load(&fx->g->requests), 15);
    assert_file_is(path, fx->g->content, CONTENT_BYTES);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 022, 0);
    worker_fetcher_destroy(f);
}

static void corrupt_downloads_fail_and_leave_nothing(void **state) {
    fixture *fx = *state;
    const int modes[] = {MODE_SHORT, MODE_FLIP, MODE_HUGE, MODE_SIZE_CHANGE};
    const char *what[] = {"has 999 bytes, expected 1000", "hash to", "over the limit", "then 4501"};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        fx->g->mode = modes[i];
        worker_fetcher *f = open_fetcher(fx, NULL, 5000);
        char local[PATH_MAX];
        aicfn_error e;
        aicfn_error_clear(&e);
        assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_E_CORRUPT);
        assert_string_equal(local, "");
        if (!strstr(e.msg, fx->g->hash) || !strstr(e.msg, what[i]))
            fail_msg("mode %d: '%s'", modes[i], e.msg);
        assert_int_equal(dir_entries(fx->dir, NULL), 0); /* no partial file, no temporary */
        /* A failed flight does not stick: the next call tries again (and fails again). */
        unsigned before = atomic_load(&fx->g->requests);
        assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_E_CORRUPT);
        assert_true(atomic_load(&fx->g->requests) > before);
        worker_fetcher_destroy(f);
    }
    fx->g->mode = MODE_OK;
    worker_fetcher *f = open_fetcher(fx, NULL, 5000);
    char local[PATH_MAX];
    aicfn_error e;
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_OK);
    assert_file_is(local, fx->g->content, CONTENT_BYTES);
    worker_fetcher_destroy(f);
}

static void unknown_hash_is_not_found(void **state) {
    fixture *fx = *state;
    worker_fetcher *f = open_fetcher(fx, NULL, 5000);
    const char *h = "0000000000000000000000000000000000000000000000000000000000000000";
    char local[PATH_MAX];
    aicfn_error e;
    assert_int_equal(worker_fetch(f, h, local, sizeof local, &e), AICFN_E_NOT_FOUND);
    assert_non_null(strstr(e.msg, h));
    assert_non_null(strstr(e.msg, "not stored"));
    assert_int_equal(worker_fetch(f, "NOTAHASH", local, sizeof local, &e), AICFN_E_INVALID);
    assert_int_equal(dir_entries(fx->dir, NULL), 0);
    worker_fetcher_destroy(f);
}

static void silent_gateway_times_out_per_chunk(void **state) {
    fixture *fx = *state;
    fx->g->mode = MODE_HOLD;
    worker_fetcher *f = open_fetcher(fx, NULL, 200);
    char local[PATH_MAX];
    aicfn_error e;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_E_TIMEOUT);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    assert_true(s >= 0.6 && s < 5.0); /* the first chunk asked 3 times, 200 ms each */
    assert_int_equal(atomic_load(&fx->g->requests), 3);
    assert_non_null(strstr(e.msg, fx->g->hash));
    assert_int_equal(dir_entries(fx->dir, NULL), 0);
    worker_fetcher_destroy(f);
}

/* A chunk whose ask times out (the gateway's admin thread held by a long commit) is asked
 * again, twice at most, and the download goes on with what it had. */
static void a_chunk_that_times_out_is_asked_again(void **state) {
    fixture *fx = *state;
    worker_fetcher *f = open_fetcher(fx, NULL, 200);
    char local[PATH_MAX];
    aicfn_error e;
    atomic_store(&fx->g->silent, 2);
    int rc = worker_fetch(f, fx->g->hash, local, sizeof local, &e);
    if (rc != AICFN_OK) fail_msg("fetch past two silent asks: %s", e.msg);
    assert_file_is(local, fx->g->content, CONTENT_BYTES);
    assert_int_equal(atomic_load(&fx->g->requests), 5 + 2);
    worker_fetcher_destroy(f);
}

/* A worker (id `id`, on inproc://fetch-<id>-<pid>) that fetches artifacts with f, and a
 * client connected to it. */
static worker *start_fetching_worker(worker_fetcher *f, const char *id, rpc_client **c) {
    char url[64];
    snprintf(url, sizeof url, "inproc://fetch-%s-%d", id, (int)getpid());
    worker_config wc = {.listen = url, .device = "host", .memory_bytes = 16u << 20, .id = id, .fetcher = f};
    worker *w = NULL;
    aicfn_error e;
    assert_int_equal(worker_create(&wc, &w, &e), AICFN_OK);
    assert_int_equal(worker_start(w, &e), AICFN_OK);
    assert_int_equal(rpc_client_open(c, url, NULL, &e), AICFN_OK);
    return w;
}

/* Answers of the calls made by many_calls_waiting_for_one_slow_handler..., by code. */
typedef struct answers {
    atomic_int done;
    atomic_int codes[AICFN_STATUS_COUNT];
} answers;

static void on_answer(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    answers *a = user;
    int code = status;
    wire_doc d;
    wire_reply_head h;
    if (reply && wire_doc_parse(&d, rpc_msg_data(reply), rpc_msg_len(reply), NULL, NULL) == AICFN_OK) {
        if (wire_decode_reply_head(&d, &h, NULL) == AICFN_OK) code = h.ok ? AICFN_OK : h.code;
        wire_doc_fini(&d);
    }
    rpc_msg_free(reply);
    if (code >= 0 && code < AICFN_STATUS_COUNT) atomic_fetch_add(&a->codes[code], 1);
    atomic_fetch_add(&a->done, 1);
}

/* An invoke of `fn` whose handler is the artifact `hash`, with a deadline. */
static uint8_t *invoke_remote(const char *fn, const char *hash, uint64_t id, uint32_t deadline_ms,
                              size_t *len) {
    char handler[160];
    snprintf(handler, sizeof handler, "/data/artifacts/%s", hash);
    wire_invoke_req req = {.id = id,
                           .fn = fn,
                           .ver = 1,
                           .deadline_ms = deadline_ms,
                           .has_spec = true,
                           .spec = {.handler = handler, .max_batch = 1, .timeout_ms = 10000}};
    wire_writer wr;
    wire_writer_init(&wr);
    assert_int_equal(wire_encode_invoke_req(&wr, &req, NULL), AICFN_OK);
    uint8_t *p = wire_writer_take(&wr, len);
    wire_writer_fini(&wr);
    return p;
}

/* A remote worker's call names a function it does not hold: its handler is fetched first
 * (the gateway here never answers). The call is answered AICFN_E_TIMEOUT at its deadline
 * (200 ms), not when the download gives up (the fetcher's 2 s per chunk): a gateway
 * replaces a worker whose call is late past its grace. */
static void call_waiting_for_its_handler_is_answered_at_its_deadline(void **state) {
    fixture *fx = *state;
    fx->g->mode = MODE_HOLD;
    worker_fetcher *f = open_fetcher(fx, NULL, 2000);
    rpc_client *c = NULL;
    worker *w = start_fetching_worker(f, "wf", &c);
    aicfn_error e;
    size_t len = 0;
    uint8_t *req = invoke_remote("remote", fx->g->hash, 7, 200, &len);
    uint64_t t0 = clock_now_us();
    rpc_msg *m = NULL;
    assert_int_equal(rpc_call_sync(c, req, len, 5000, &m, &e), AICFN_OK);
    uint64_t took = clock_now_us() - t0;
    free(req);
    wire_doc d;
    wire_invoke_reply rep;
    assert_int_equal(wire_doc_parse(&d, rpc_msg_data(m), rpc_msg_len(m), NULL, &e), AICFN_OK);
    assert_int_equal(wire_decode_invoke_reply(&d, &rep, &e), AICFN_OK);
    assert_false(rep.head.ok);
    assert_int_equal(rep.head.code, AICFN_E_TIMEOUT);
    assert_non_null(strstr(rep.head.message, "still downloading"));
    assert_true(took >= 150000 && took < 1500000);
    wire_doc_fini(&d);
    rpc_msg_free(m);
    rpc_client_close(c);
    /* The download goes on for no call; destroying the worker ends it at once, not at its
     * chunk timeout (2 s here; a whole handler's download in general). */
    t0 = clock_now_us();
    worker_destroy(w);
    assert_true(clock_now_us() - t0 < 1000000);
    /* Later downloads fail at once; nothing was cached. */
    char local[PATH_MAX];
    t0 = clock_now_us();
    assert_int_equal(worker_fetch(f, fx->g->hash, local, sizeof local, &e), AICFN_E_CANCELED);
    assert_non_null(strstr(e.msg, "canceled"));
    assert_true(clock_now_us() - t0 < 500000);
    release_held(fx->g);
    worker_fetcher_destroy(f);
}

/* 400 calls of one function whose handler's download hangs, answered at their 50 ms
 * deadlines, leave one download thread behind, not one each: a call of another new
 * function is still taken. Before, each left a thread waiting on the download; past
 * AICFN_WORKER_MAX_PARKED of them every call needing any new handler was refused with
 * AICFN_E_OVERLOADED until the download ended. */
static void many_calls_waiting_for_one_slow_handler_hold_one_thread(void **state) {
    fixture *fx = *state;
    fx->g->mode = MODE_HOLD;
    worker_fetcher *f = open_fetcher(fx, NULL, 20000);
    rpc_client *c = NULL;
    worker *w = start_fetching_worker(f, "wp", &c);
    aicfn_error e;
    static answers slow;
    memset(&slow, 0, sizeof slow);
    int sent = 0;
    for (int round = 0; round < 8; round++) {
        for (int i = 0; i < 50; i++) {
            size_t len;
            uint8_t *p = invoke_remote("slowfn", fx->g->hash, (uint64_t)++sent, 50, &len);
            assert_int_equal(rpc_call_async(c, p, len, 5000, on_answer, &slow, &e), AICFN_OK);
            free(p);
        }
        for (int k = 0; k < 500 && atomic_load(&slow.done) < sent; k++) /* bounded: 5 s */
            usleep(10000);
        assert_int_equal(atomic_load(&slow.done), sent);
    }
    assert_int_equal(atomic_load(&slow.codes[AICFN_E_TIMEOUT]), sent);
    /* Another function's handler (not on the gateway: answered at once). */
    fx->g->mode = MODE_OK;
    const char *other = "1111111111111111111111111111111111111111111111111111111111111111";
    size_t len;
    uint8_t *p = invoke_remote("otherfn", other, 9999, 50, &len);
    rpc_msg *m = NULL;
    assert_int_equal(rpc_call_sync(c, p, len, 5000, &m, &e), AICFN_OK);
    free(p);
    wire_doc d;
    wire_reply_head h;
    assert_int_equal(wire_doc_parse(&d, rpc_msg_data(m), rpc_msg_len(m), NULL, &e), AICFN_OK);
    assert_int_equal(wire_decode_reply_head(&d, &h, &e), AICFN_OK);
    assert_false(h.ok);
    if (h.code == AICFN_E_OVERLOADED) fail_msg("a new function's call was refused: %s", h.message);
    assert_int_equal(h.code, AICFN_E_NOT_FOUND);
    wire_doc_fini(&d);
    rpc_msg_free(m);
    rpc_client_close(c);
    release_held(fx->g);
    worker_drain(w, 1000);
    worker_destroy(w);
    worker_fetcher_destroy(f);
}

typedef struct racer {
    worker_fetcher *f;
    const char *hash;
    pthread_barrier_t *go;
    int rc;
    char local[PATH_MAX];
    aicfn_error err;
} racer;

typedef struct preload_answer {
    atomic_int done;
    int status;
} preload_answer;

static void on_preload_answer(void *user, int status, rpc_msg *reply, const aicfn_error *err) {
    (void)err;
    preload_answer *a = user;
    a->status = status;
    rpc_msg_free(reply);
    atomic_store(&a->done, 1);
}

/* A preload (a keep-warm request) whose snapshot download the gateway holds when the
 * worker stops: destroying the worker ends the download at once, so the preload is
 * answered and the server's wait for it ends, instead of waiting out the fetcher's chunk
 * timeout (5 s here; a multi-GB snapshot's whole download in general). */
static void stop_during_a_preload_download(void **state) {
    fixture *fx = *state;
    fx->g->mode = MODE_HOLD;
    worker_fetcher *f = open_fetcher(fx, NULL, 5000);
    rpc_client *c = NULL;
    worker *w = start_fetching_worker(f, "wp", &c);
    aicfn_error e;
    char snapshot[128];
    snprintf(snapshot, sizeof snapshot, "/data/artifacts/%s", fx->g->hash);
    wire_writer wr;
    wire_writer_init(&wr);
    wire_put_map(&wr, 6);
    wire_kv_u64(&wr, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(&wr, "t", "preload");
    wire_kv_u64(&wr, "id", 9);
    wire_kv_str(&wr, "model", fx->g->hash);
    wire_kv_str(&wr, "snapshot", snapshot);
    wire_kv_u64(&wr, "deadline_ms", 30000);
    preload_answer ans = {0};
    assert_int_equal(rpc_call_async(c, wr.data, wr.len, 30000, on_preload_answer, &ans, &e), AICFN_OK);
    wire_writer_fini(&wr);
    for (int i = 0; i < 500 && atomic_load(&fx->g->requests) == 0; i++) /* the download has begun */
        usleep(10000);
    assert_true(atomic_load(&fx->g->requests) > 0);
    uint64_t t0 = clock_now_us();
    worker_destroy(w);
    assert_true(clock_now_us() - t0 < 1000000);
    for (int i = 0; i < 300 && !atomic_load(&ans.done); i++)
        usleep(10000);
    assert_true(atomic_load(&ans.done)); /* answered (its failure, or the link's end) */
    rpc_client_close(c);
    release_held(fx->g);
    worker_fetcher_destroy(f);
}

static void *racer_main(void *arg) {
    racer *r = arg;
    pthread_barrier_wait(r->go);
    r->rc = worker_fetch(r->f, r->hash, r->local, sizeof r->local, &r->err);
    return NULL;
}

static void race(fixture *fx, worker_fetcher *f, racer *rs, unsigned n) {
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, n);
    pthread_t t[16];
    for (unsigned i = 0; i < n; i++) {
        rs[i] = (racer){.f = f, .hash = fx->g->hash, .go = &go};
        assert_int_equal(pthread_create(&t[i], NULL, racer_main, &rs[i]), 0);
    }
    for (unsigned i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);
}

static void single_flight(void **state) {
    fixture *fx = *state;
    fx->g->delay_ms = 20; /* the download lasts ~100 ms: every caller arrives during it */
    worker_fetcher *f = open_fetcher(fx, NULL, 5000);
    racer rs[8];
    race(fx, f, rs, 8);
    for (int i = 0; i < 8; i++) {
        if (rs[i].rc != AICFN_OK) fail_msg("racer %d: %s", i, rs[i].err.msg);
        assert_string_equal(rs[i].local, rs[0].local);
    }
    assert_int_equal(atomic_load(&fx->g->requests), 5); /* one download */
    assert_file_is(rs[0].local, fx->g->content, CONTENT_BYTES);
    worker_fetcher_destroy(f);

    /* A failing flight fails every caller that joined it, with its error. */
    fx->g->mode = MODE_FLIP;
    f = open_fetcher(fx, NULL, 5000);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", fx->dir, fx->g->hash);
    unlink(path);
    race(fx, f, rs, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(rs[i].rc, AICFN_E_CORRUPT);
        assert_non_null(strstr(rs[i].err.msg, fx->g->hash));
    }
    assert_int_equal(dir_entries(fx->dir, NULL), 0);
    worker_fetcher_destroy(f);
}

/* Sets path's times to `ago_s` seconds ago. */
static void age_file(const char *path, time_t ago_s) {
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= ago_s;
    ts[1] = ts[0];
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* A leftover temporary file is removed when its writer is gone: nobody holds its lock
 * (a writer in another pid namespace would) and it is over a minute old, whatever its
 * pid: one named with this process's own (a worker restarted in a container has the pid
 * of the one it replaced) was kept forever before, and the restarted worker's first
 * download of that hash collided with it. */
static void leftover_temporaries_of_dead_processes_removed(void **state) {
    fixture *fx = *state;
    char dead[PATH_MAX], alive[PATH_MAX], other[PATH_MAX], fresh[PATH_MAX], locked[PATH_MAX];
    snprintf(dead, sizeof dead, "%s/.tmp-%s-999999999-1", fx->dir, fx->g->hash);
    snprintf(alive, sizeof alive, "%s/.tmp-%s-%d-1", fx->dir, fx->g->hash, (int)getpid());
    snprintf(fresh, sizeof fresh, "%s/.tmp-%s-999999999-2", fx->dir, fx->g->hash);
    snprintf(locked, sizeof locked, "%s/.tmp-%s-999999999-3", fx->dir, fx->g->hash);
    snprintf(other, sizeof other, "%s/notes.txt", fx->dir);
    const char *all[] = {dead, alive, fresh, locked, other};
    for (int i = 0; i < 5; i++) {
        write_file(all[i], "x", 1);
        if (all[i] != fresh) age_file(all[i], 120);
    }
    /* A writer elsewhere (another pid namespace: its pid means nothing here) holds it. */
    int lfd = open(locked, O_RDONLY | O_CLOEXEC);
    assert_true(lfd >= 0);
    pid_t holder = fork();
    if (holder == 0) {
        alarm(20); /* gone even if the test fails before it kills us */
        flock(lfd, LOCK_EX);
        pause();
        _exit(0);
    }
    close(lfd);
    for (int i = 0; i < 200; i++) { /* until the child holds it (bounded) */
        int t = open(locked, O_RDONLY | O_CLOEXEC);
        int busy = flock(t, LOCK_EX | LOCK_NB) != 0;
        close(t);
        if (busy) break;
        usleep(10000);
    }
    worker_fetcher *f = open_fetcher(fx, NULL, 5000);
    assert_int_equal(access(dead, F_OK), -1);
    assert_int_equal(access(alive, F_OK), -1);
    assert_int_equal(access(fresh, F_OK), 0);
    assert_int_equal(access(locked, F_OK), 0);
    assert_int_equal(access(other, F_OK), 0);
    worker_fetcher_destroy(f);
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
}

static void bad_configs(void **state) {
    fixture *fx = *state;
    worker_fetcher *f = NULL;
    aicfn_error e;
    worker_fetch_config c = {.gateway = NULL, .cache_dir = fx->dir};
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_E_INVALID);
    c.gateway = "http://127.0.0.1:1/";
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_E_INVALID);
    c.gateway = fx->url;
    c.chunk_bytes = AICFN_UPLOAD_CHUNK_BYTES + 1;
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_E_INVALID);
    c.chunk_bytes = 0;
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s/plainfile", fx->dir);
    write_file(file, "x", 1);
    c.cache_dir = file;
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_E_IO);
    assert_null(f);
    /* A cache others may write (handlers are dlopened from it after their check) is
     * refused, as is one that is not this user's (not testable unprivileged); a symlink
     * to a private directory is that directory. */
    char open_dir[PATH_MAX], link[PATH_MAX];
    snprintf(open_dir, sizeof open_dir, "%s/open", fx->dir);
    assert_int_equal(mkdir(open_dir, 0700), 0);
    assert_int_equal(chmod(open_dir, 0777), 0);
    c.cache_dir = open_dir;
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_E_INVALID);
    assert_null(f);
    assert_non_null(strstr(e.msg, "the artifact cache"));
    assert_non_null(strstr(e.msg, "mode 777"));
    assert_int_equal(chmod(open_dir, 0700), 0);
    snprintf(link, sizeof link, "%s/link", fx->dir);
    assert_int_equal(symlink(open_dir, link), 0);
    c.cache_dir = link;
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_OK);
    worker_fetcher_destroy(f);
    assert_int_equal(unlink(link), 0);
    assert_int_equal(rmdir(open_dir), 0);
    worker_fetcher_destroy(NULL);
}

/* ---- the loader's resolve hook ---- */

typedef struct resolve_ctx {
    char real[PATH_MAX];
    atomic_uint calls;
} resolve_ctx;

static int test_resolve(void *arg, const char *path, char *local, size_t cap, aicfn_error *err) {
    resolve_ctx *c = arg;
    atomic_fetch_add(&c->calls, 1);
    if (strcmp(path, "remote:ok") == 0) {
        usleep(30 * 1000); /* a download */
        snprintf(local, cap, "%s", c->real);
        return AICFN_OK;
    }
    return aicfn_error_set(err, AICFN_E_CORRUPT, "artifact %s: the bytes hash to something else", path);
}

static void pipeline_resolve_hook(void **state) {
    fixture *fx = *state;
    aicfn_error e;
    float vals[64];
    for (int i = 0; i < 64; i++)
        vals[i] = (float)i;
    int64_t shape[] = {64};
    snap_st_out_tensor t = {.name = "w",
                            .dtype = AICFN_DTYPE_FP32,
                            .ndim = 1,
                            .shape = shape,
                            .data = vals,
                            .nbytes = sizeof vals};
    char st[PATH_MAX];
    resolve_ctx ctx = {0};
    snprintf(st, sizeof st, "%s/m.safetensors", fx->dir);
    snprintf(ctx.real, sizeof ctx.real, "%s/m.aicsnap", fx->dir);
    assert_int_equal(snap_st_write(st, &t, 1, &e), AICFN_OK);
    const char *in[] = {st};
    if (snap_pack(in, 1, ctx.real, NULL, NULL, &e) != AICFN_OK) fail_msg("pack: %s", e.msg);
    loader_device *dev = NULL;
    assert_int_equal(loader_device_host_open(16u << 20, &dev, &e), AICFN_OK);
    loader_pipeline_source src = {.device = dev, .threads = 1, .resolve = test_resolve, .resolve_arg = &ctx};
    loader_cache_config cc = {.budget_bytes = 16u << 20, .ops = &loader_pipeline_cache_ops, .ops_arg = &src};
    loader_cache *cache = NULL;
    assert_int_equal(loader_cache_create(&cc, &cache, &e), AICFN_OK);
    loader_cache_entry *ent = NULL;
    loader_acquire_info info;
    memset(&info, 0, sizeof info);
    int rc = loader_cache_acquire(cache, "m1", "remote:ok", 0, &ent, &info, &e);
    if (rc != AICFN_OK) fail_msg("acquire: %s", e.msg);
    assert_true(info.cold);
    assert_true(info.timing.fetch_us >= 25 * 1000);
    assert_true(info.timing.total_us >= info.timing.fetch_us + info.timing.open_us);
    loader_model *m = loader_cache_entry_model(ent);
    assert_memory_equal(loader_model_tensor_ptr(m, 0), vals, sizeof vals);
    loader_cache_release(cache, ent);
    /* Resident: a hit does not resolve again. */
    assert_int_equal(loader_cache_acquire(cache, "m1", "remote:ok", 0, &ent, &info, &e), AICFN_OK);
    assert_false(info.cold);
    loader_cache_release(cache, ent);
    assert_int_equal(atomic_load(&ctx.calls), 1);
    /* The hook's error is the load's error. */
    assert_int_equal(loader_cache_acquire(cache, "m2", "remote:bad", 0, &ent, &info, &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "remote:bad"));
    loader_cache_destroy(cache);
    loader_device_close(dev);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hash_of_path),
        cmocka_unit_test(cache_path),
        cmocka_unit_test_setup_teardown(download_in_chunks_then_trusted, setup, teardown),
        cmocka_unit_test_setup_teardown(cached_file_verified_at_first_use, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_budget_prunes_least_recently_used, setup, teardown),
        cmocka_unit_test_setup_teardown(corrupt_downloads_fail_and_leave_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_hash_is_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(silent_gateway_times_out_per_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(a_chunk_that_times_out_is_asked_again, setup, teardown),
        cmocka_unit_test_setup_teardown(call_waiting_for_its_handler_is_answered_at_its_deadline, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(stop_during_a_preload_download, setup, teardown),
        cmocka_unit_test_setup_teardown(single_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(leftover_temporaries_of_dead_processes_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(many_calls_waiting_for_one_slow_handler_hold_one_thread, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(bad_configs, setup, teardown),
        cmocka_unit_test_setup_teardown(pipeline_resolve_hook, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
