/* test_fetch_concurrent.c: the artifact fetcher (worker/fetch.h) under contention, run
 * under ThreadSanitizer by the suite: 16 threads fetch 4 artifacts in different orders
 * from an in-process fake gateway (artifact_get over NNG inproc), one artifact served
 * corrupt. Each good artifact is downloaded exactly once (single flight per hash while
 * other hashes download in parallel), every caller of the corrupt one gets
 * AICFN_E_CORRUPT naming it, and the cache ends with exactly the good files, intact.
 * Every wait is bounded (per-chunk timeouts). */
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "common/rpc.h"
#include "common/wire.h"
#include "worker/fetch.h"

#include "test_fake_artifacts.h"

#define N_ART 4
#define ART_BYTES 3000
#define CHUNK 1024 /* 3 chunks each */
#define N_THREADS 16
#define BAD 2 /* artifact served with a flipped byte */

typedef struct gw {
    uint8_t content[N_ART][ART_BYTES];
    char hash[N_ART][WORKER_HASH_HEX_LEN + 1];
    atomic_uint requests[N_ART];
    atomic_uint serving, most_serving; /* chunk requests being answered at once, and the peak */
} gw;

static void handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    gw *g = user;
    wire_doc doc;
    tfa_get q;
    aicfn_error e;
    int rc = tfa_decode_get(&doc, msg, len, &q, &e);
    int a = -1;
    for (int i = 0; rc == AICFN_OK && i < N_ART; i++)
        if (strcmp(q.hash, g->hash[i]) == 0) a = i;
    uint64_t off = q.offset;
    if (rc != AICFN_OK || a < 0 || off > ART_BYTES) {
        tfa_reply_error(call, wire_peek_id(msg, len), rc != AICFN_OK ? rc : AICFN_E_NOT_FOUND, "no");
        wire_doc_fini(&doc);
        return;
    }
    atomic_fetch_add(&g->requests[a], 1);
    unsigned now = atomic_fetch_add(&g->serving, 1) + 1;
    unsigned peak = atomic_load(&g->most_serving);
    while (now > peak && !atomic_compare_exchange_weak(&g->most_serving, &peak, now)) {
    }
    usleep(2000); /* keep downloads in flight long enough to overlap */
    atomic_fetch_sub(&g->serving, 1);
    uint8_t buf[CHUNK];
    uint64_t n = ART_BYTES - off < q.len ? ART_BYTES - off : q.len;
    if (n > CHUNK) n = CHUNK;
    memcpy(buf, g->content[a] + off, (size_t)n);
    if (a == BAD && off == 0) buf[0] ^= 0xff;
    tfa_reply_chunk(call, q.h.id, ART_BYTES, buf, n);
    wire_doc_fini(&doc);
}

typedef struct worker_arg {
    worker_fetcher *f;
    gw *g;
    unsigned idx;
    pthread_barrier_t *go;
    int rc[N_ART];
    char msg[N_ART][AICFN_ERRMSG_MAX];
} worker_arg;

static void *run(void *p) {
    worker_arg *a = p;
    pthread_barrier_wait(a->go);
    for (unsigned k = 0; k < N_ART; k++) {
        unsigned i = (a->idx + k) % N_ART; /* every thread starts at another artifact */
        char local[PATH_MAX];
        aicfn_error e;
        aicfn_error_clear(&e);
        a->rc[i] = worker_fetch(a->f, a->g->hash[i], local, sizeof local, &e);
        snprintf(a->msg[i], sizeof a->msg[i], "%s", e.msg);
    }
    return NULL;
}

static void contended_fetches(void **state) {
    (void)state;
    assert_true(sodium_init() >= 0);
    gw *g = calloc(1, sizeof *g);
    assert_non_null(g);
    for (int i = 0; i < N_ART; i++) {
        randombytes_buf(g->content[i], ART_BYTES);
        unsigned char d[32];
        crypto_hash_sha256(d, g->content[i], ART_BYTES);
        for (int j = 0; j < 32; j++)
            sprintf(g->hash[i] + 2 * j, "%02x", d[j]);
    }
    char url[64], dir[64];
    snprintf(url, sizeof url, "inproc://fetch-conc-%d", (int)getpid());
    snprintf(dir, sizeof dir, "/tmp/aicfn-fetchc-XXXXXX");
    assert_non_null(mkdtemp(dir));
    rpc_server *srv = NULL;
    aicfn_error e;
    assert_int_equal(rpc_server_start(&srv, url, NULL, handler, g, &e), AICFN_OK);
    worker_fetch_config c = {
        .gateway = url, .cache_dir = dir, .chunk_bytes = CHUNK, .chunk_timeout_ms = 10000};
    worker_fetcher *f = NULL;
    assert_int_equal(worker_fetcher_create(&c, &f, &e), AICFN_OK);

    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N_THREADS);
    pthread_t t[N_THREADS];
    worker_arg *args = calloc(N_THREADS, sizeof *args);
    assert_non_null(args);
    for (unsigned i = 0; i < N_THREADS; i++) {
        args[i] = (worker_arg){.f = f, .g = g, .idx = i, .go = &go};
        assert_int_equal(pthread_create(&t[i], NULL, run, &args[i]), 0);
    }
    for (unsigned i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);

    for (unsigned i = 0; i < N_THREADS; i++)
        for (int a = 0; a < N_ART; a++) {
            if (a == BAD) {
                assert_int_equal(args[i].rc[a], AICFN_E_CORRUPT);
                assert_non_null(strstr(args[i].msg[a], g->hash[a]));
            } else if (args[i].rc[a] != AICFN_OK) {
                fail_msg("thread %u artifact %d: %s", i, a, args[i].msg[a]);
            }
        }
    /* One download (3 chunks) per good artifact; the bad one may have been tried again
     * by callers arriving after a failed flight, but never more than once per caller. */
    for (int a = 0; a < N_ART; a++) {
        unsigned r = atomic_load(&g->requests[a]);
        if (a == BAD)
            assert_true(r >= 1 && r <= N_THREADS);
        else
            assert_int_equal(r, 3);
    }
    /* Different artifacts downloaded at the same time (single flight is per hash, not one
     * download at a time): a fetcher serializing them all never has two chunks asked. */
    assert_true(atomic_load(&g->most_serving) > 1);
    unsigned files = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        files++;
        assert_int_not_equal(strcmp(de->d_name, g->hash[BAD]), 0);
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        FILE *fp = fopen(p, "rb");
        assert_non_null(fp);
        uint8_t buf[ART_BYTES + 1];
        size_t n = fread(buf, 1, sizeof buf, fp);
        fclose(fp);
        int match = 0;
        for (int a = 0; a < N_ART; a++)
            if (a != BAD && strcmp(de->d_name, g->hash[a]) == 0)
                match = n == ART_BYTES && !memcmp(buf, g->content[a], n);
        assert_true(match);
        unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
    assert_int_equal(files, N_ART - 1);
    rmdir(dir);
    worker_fetcher_destroy(f);
    rpc_server_destroy(srv);
    free(args);
    free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(contended_fetches)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
