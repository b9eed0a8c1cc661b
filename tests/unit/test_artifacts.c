/* test_artifacts.c: the content-addressed store: chunked upload happy path, hash
 * mismatch, wrong offsets and sizes, abort and an interrupted upload (reopen) leave
 * nothing, hash validation (no paths from clients), a chunk whose write failed partway
 * retried in place, uploads refused when the disk lacks the room, put_file, and that
 * what the store writes is cached in 2 MiB page-cache folios. */
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cmocka.h>

#include "common/tunables.h"
#include "gateway/artifacts.h"
#include "test_db_util.h"
#include "test_page_cache.h"

static void sha_hex(const void *data, size_t len, char out[65]) {
    unsigned char d[32];
    crypto_hash_sha256(d, data, len);
    sodium_bin2hex(out, 65, d, 32);
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

typedef struct fx {
    char *dir;
    char art[600], tmp[640];
    gw_artifacts *a;
    unsigned char data[300000];
    char hash[65];
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    f->dir = tdb_mkdtemp("art");
    snprintf(f->art, sizeof f->art, "%s/artifacts", f->dir);
    snprintf(f->tmp, sizeof f->tmp, "%s/tmp", f->art);
    for (size_t i = 0; i < sizeof f->data; i++)
        f->data[i] = (unsigned char)(i * 7 + (i >> 9));
    sha_hex(f->data, sizeof f->data, f->hash);
    if (gw_artifacts_open(f->dir, &f->a, NULL) != AICFN_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    gw_artifacts_close(f->a);
    tdb_rm_rf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static void upload_happy_path(void **state) {
    fx *f = *state;
    gw_upload *u = NULL;
    aicfn_error err;
    assert_false(gw_artifacts_exists(f->a, f->hash, NULL));
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u, &err), AICFN_OK);
    size_t off = 0;
    while (off < sizeof f->data) {
        size_t n = sizeof f->data - off < 65536 ? sizeof f->data - off : 65536;
        assert_int_equal(gw_upload_write(u, off, f->data + off, n, &err), AICFN_OK);
        off += n;
    }
    assert_int_equal(gw_upload_received(u), sizeof f->data);
    assert_false(gw_artifacts_exists(f->a, f->hash, NULL)); /* not before commit */
    assert_int_equal(gw_upload_commit(u, &err), AICFN_OK);
    uint64_t size = 0;
    assert_true(gw_artifacts_exists(f->a, f->hash, &size));
    assert_int_equal(size, sizeof f->data);
    char path[1024];
    assert_int_equal(gw_artifacts_path(f->a, f->hash, path, sizeof path, NULL), AICFN_OK);
    size_t len;
    unsigned char *back = tdb_read_file(path, &len);
    assert_non_null(back);
    assert_int_equal(len, sizeof f->data);
    assert_memory_equal(back, f->data, len);
    free(back);
    assert_int_equal(count_entries(f->tmp), 0);
    /* A second upload of the same hash is refused as already stored. */
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u, &err), AICFN_E_EXISTS);
    assert_int_equal(gw_artifacts_remove(f->a, f->hash, NULL), AICFN_OK);
    assert_false(gw_artifacts_exists(f->a, f->hash, NULL));
    assert_int_equal(gw_artifacts_remove(f->a, f->hash, NULL), AICFN_OK);
}

/* Two uploads of the same bytes open at once: the first commit stores the file, the
 * second one is taken as done without replacing it (a function may use it already). */
static void second_commit_of_the_same_bytes_keeps_the_first(void **state) {
    fx *f = *state;
    gw_upload *u1 = NULL, *u2 = NULL;
    aicfn_error err;
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u1, &err), AICFN_OK);
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u2, &err), AICFN_OK);
    assert_int_equal(gw_upload_write(u1, 0, f->data, sizeof f->data, &err), AICFN_OK);
    assert_int_equal(gw_upload_write(u2, 0, f->data, sizeof f->data, &err), AICFN_OK);
    assert_int_equal(gw_upload_commit(u1, &err), AICFN_OK);
    char path[1024];
    assert_int_equal(gw_artifacts_path(f->a, f->hash, path, sizeof path, NULL), AICFN_OK);
    struct stat st1, st2;
    assert_int_equal(stat(path, &st1), 0);
    assert_int_equal(gw_upload_commit(u2, &err), AICFN_OK);
    assert_int_equal(stat(path, &st2), 0);
    assert_true(st1.st_ino == st2.st_ino); /* the same file, not replaced */
    assert_int_equal(st2.st_size, sizeof f->data);
    assert_int_equal(count_entries(f->tmp), 0); /* the second one's temporary file is gone */
}

static void hash_mismatch_leaves_nothing(void **state) {
    fx *f = *state;
    gw_upload *u = NULL;
    aicfn_error err;
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u, &err), AICFN_OK);
    unsigned char bad[sizeof f->data];
    memcpy(bad, f->data, sizeof bad);
    bad[12345] ^= 1;
    assert_int_equal(gw_upload_write(u, 0, bad, sizeof bad, &err), AICFN_OK);
    assert_int_equal(gw_upload_commit(u, &err), AICFN_E_CORRUPT);
    assert_non_null(strstr(err.msg, f->hash));
    assert_false(gw_artifacts_exists(f->a, f->hash, NULL));
    assert_int_equal(count_entries(f->tmp), 0);
    assert_int_equal(count_entries(f->art), 1); /* just tmp/ */
}

static void offsets_and_sizes_are_checked(void **state) {
    fx *f = *state;
    gw_upload *u = NULL;
    aicfn_error err;
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u, &err), AICFN_OK);
    assert_int_equal(gw_upload_write(u, 0, f->data, 1000, &err), AICFN_OK);
    /* A chunk sent again (its reply was lost): taken as a no-op, received unchanged. */
    assert_int_equal(gw_upload_write(u, 0, f->data, 1000, &err), AICFN_OK);
    assert_int_equal(gw_upload_write(u, 200, f->data + 200, 800, &err), AICFN_OK);
    assert_int_equal(gw_upload_received(u), 1000);
    /* One overlapping the end of what was received is not. */
    assert_int_equal(gw_upload_write(u, 500, f->data + 500, 1000, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "expected offset 1000"));
    assert_int_equal(gw_upload_write(u, 5000, f->data, 1000, &err), AICFN_E_INVALID); /* gap */
    assert_int_equal(gw_upload_write(u, 1000, f->data, sizeof f->data, &err), AICFN_E_TOO_LARGE);
    /* Short upload: commit refuses. */
    assert_int_equal(gw_upload_commit(u, &err), AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "received 1000"));
    assert_int_equal(count_entries(f->tmp), 0);
    /* Bad hashes are never paths. */
    const char *bad[] = {"../../etc/passwd", "", "ABCDEF", NULL};
    for (int i = 0; bad[i]; i++)
        assert_int_equal(gw_upload_begin(f->a, bad[i], 1, &u, NULL), AICFN_E_INVALID);
    char upper[65];
    memcpy(upper, f->hash, 65);
    upper[0] = 'A';
    assert_int_equal(gw_upload_begin(f->a, upper, 1, &u, NULL), AICFN_E_INVALID);
    char longer[70];
    snprintf(longer, sizeof longer, "%s00", f->hash);
    assert_int_equal(gw_upload_begin(f->a, longer, 1, &u, NULL), AICFN_E_INVALID);
    assert_int_equal(gw_upload_begin(f->a, f->hash, (256ull << 30) + 1, &u, NULL), AICFN_E_TOO_LARGE);
    assert_false(gw_hash_hex_valid(NULL));
    assert_true(gw_hash_hex_valid(f->hash));
}

static void abort_and_interrupted_leave_nothing(void **state) {
    fx *f = *state;
    gw_upload *u = NULL;
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u, NULL), AICFN_OK);
    assert_int_equal(gw_upload_write(u, 0, f->data, 100, NULL), AICFN_OK);
    assert_int_equal(count_entries(f->tmp), 1);
    gw_upload_abort(u);
    gw_upload_abort(NULL);
    assert_int_equal(count_entries(f->tmp), 0);
    assert_false(gw_artifacts_exists(f->a, f->hash, NULL));

    /* Interrupted: the gateway "dies" mid-upload (the handle is never committed or
     * aborted; simulate by leaving the temp file behind), then the store is reopened. */
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u, NULL), AICFN_OK);
    assert_int_equal(gw_upload_write(u, 0, f->data, 5000, NULL), AICFN_OK);
    char keep[1024];
    snprintf(keep, sizeof keep, "%s/stale.partial", f->tmp);
    FILE *fp = fopen(keep, "wb");
    assert_non_null(fp);
    fwrite(f->data, 1, 10, fp);
    fclose(fp);
    gw_upload_abort(u); /* frees the handle; the stale file stays as a crash would leave it */
    assert_int_equal(count_entries(f->tmp), 1);
    gw_artifacts_close(f->a);
    f->a = NULL;
    assert_int_equal(gw_artifacts_open(f->dir, &f->a, NULL), AICFN_OK);
    assert_int_equal(count_entries(f->tmp), 0);
    assert_false(gw_artifacts_exists(f->a, f->hash, NULL));
}

static void upload_limit(void **state) {
    fx *f = *state;
    gw_upload *u[17] = {0};
    for (int i = 0; i < 16; i++)
        assert_int_equal(gw_upload_begin(f->a, f->hash, 10, &u[i], NULL), AICFN_OK);
    assert_int_equal(gw_upload_begin(f->a, f->hash, 10, &u[16], NULL), AICFN_E_OVERLOADED);
    for (int i = 0; i < 16; i++)
        gw_upload_abort(u[i]);
    assert_int_equal(gw_upload_begin(f->a, f->hash, 10, &u[0], NULL), AICFN_OK);
    gw_upload_abort(u[0]);
}

/* A chunk whose write stored part of its bytes and then failed (here the file size
 * limit, EFBIG; in production a full disk) is retried by the client at the same
 * offset: its bytes must land in place, not after the partial ones, or the stored file
 * would not be the bytes that were hashed. */
static void failed_write_retried_in_place(void **state) {
    fx *f = *state;
    gw_upload *u = NULL;
    aicfn_error err;
    assert_int_equal(gw_upload_begin(f->a, f->hash, sizeof f->data, &u, &err), AICFN_OK);
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_xfsz)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old;
    small.rlim_cur = 1000;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    int rc = gw_upload_write(u, 0, f->data, 65536, &err); /* 1000 bytes written, then EFBIG */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_xfsz);
    assert_int_equal(rc, AICFN_E_IO);
    assert_int_equal(gw_upload_received(u), 0);
    size_t off = 0;
    while (off < sizeof f->data) {
        size_t n = sizeof f->data - off < 65536 ? sizeof f->data - off : 65536;
        assert_int_equal(gw_upload_write(u, off, f->data + off, n, &err), AICFN_OK);
        assert_int_equal(gw_upload_write(u, off, f->data + off, n, &err), AICFN_OK); /* reply lost: again */
        off += n;
    }
    assert_int_equal(gw_upload_commit(u, &err), AICFN_OK);
    char path[1024];
    assert_int_equal(gw_artifacts_path(f->a, f->hash, path, sizeof path, NULL), AICFN_OK);
    size_t len = 0;
    unsigned char *back = tdb_read_file(path, &len);
    assert_non_null(back);
    assert_int_equal(len, sizeof f->data);
    assert_memory_equal(back, f->data, len);
    free(back);
}

/* An upload is refused at begin when the store's file system cannot hold it beside what
 * open uploads still need and the database's reserve; the room comes back when an
 * upload ends. */
static void uploads_must_fit_the_disk(void **state) {
    fx *f = *state;
    struct statvfs vfs;
    assert_int_equal(statvfs(f->tmp, &vfs), 0);
    uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (free_bytes < AICFN_ARTIFACT_DISK_RESERVE + (64u << 20) ||
        free_bytes + (1ull << 30) > AICFN_ARTIFACT_MAX_BYTES)
        skip(); /* too little free to split, or more than one upload may declare */
    gw_upload *u = NULL, *v = NULL;
    aicfn_error err;
    assert_int_equal(gw_upload_begin(f->a, f->hash, free_bytes + (1ull << 30), &u, &err), AICFN_E_TOO_LARGE);
    assert_non_null(strstr(err.msg, "do not fit"));
    assert_null(u);
    uint64_t part = (free_bytes - AICFN_ARTIFACT_DISK_RESERVE) / 10 * 6;
    assert_int_equal(gw_upload_begin(f->a, f->hash, part, &u, &err), AICFN_OK);
    assert_int_equal(gw_upload_begin(f->a, f->hash, part, &v, &err), AICFN_E_TOO_LARGE);
    assert_non_null(strstr(err.msg, "promised to open uploads"));
    /* Written bytes no longer count as promised (the file system counts them). */
    assert_int_equal(gw_upload_write(u, 0, f->data, sizeof f->data, &err), AICFN_OK);
    gw_upload_abort(u);
    assert_int_equal(gw_upload_begin(f->a, f->hash, part, &v, &err), AICFN_OK);
    gw_upload_abort(v);
}

static void put_file_and_hash_file(void **state) {
    fx *f = *state;
    char src[1024];
    snprintf(src, sizeof src, "%s/handler.so", f->dir);
    FILE *fp = fopen(src, "wb");
    assert_non_null(fp);
    fwrite(f->data, 1, sizeof f->data, fp);
    fclose(fp);
    char hex[65];
    uint64_t size = 0;
    assert_int_equal(gw_artifacts_hash_file(src, hex, &size, NULL), AICFN_OK);
    assert_string_equal(hex, f->hash);
    assert_int_equal(size, sizeof f->data);
    assert_int_equal(gw_artifacts_put_file(f->a, src, hex, &size, NULL), AICFN_OK);
    assert_true(gw_artifacts_exists(f->a, f->hash, NULL));
    assert_int_equal(gw_artifacts_put_file(f->a, src, hex, &size, NULL), AICFN_OK); /* already there */
    aicfn_error err;
    assert_int_equal(gw_artifacts_put_file(f->a, "/nonexistent/x.so", hex, &size, &err), AICFN_E_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/x.so"));
}

/* A file copied into the store, and an upload in the chunks `aicfn deploy` sends, land
 * in 2 MiB page-cache folios, so workers map stored snapshots with 2 MiB entries
 * (docs/snapshot-format.md §9). Skips where the kernel does not size folios by write. */
static void stored_files_are_cached_in_huge_folios(void **state) {
    fx *f = *state;
    if (!tpc_folios_follow_writes(f->dir)) skip();
    enum { SIZE = 12u << 20 };
    char src[1024], stored[1024], hex[65];
    snprintf(src, sizeof src, "%s/model.aicsnap", f->dir);
    tpc_write_in_pieces(src, SIZE, 64u << 10); /* the source itself in small folios */
    uint64_t size = 0;
    assert_int_equal(gw_artifacts_put_file(f->a, src, hex, &size, NULL), AICFN_OK);
    assert_int_equal(size, SIZE);
    assert_int_equal(gw_artifacts_path(f->a, hex, stored, sizeof stored, NULL), AICFN_OK);
    assert_int_equal(tpc_file_pmd_kb(stored), SIZE >> 10);

    size_t len = 0;
    unsigned char *data = tdb_read_file(src, &len);
    assert_non_null(data);
    assert_int_equal(len, SIZE);
    data[0] ^= 1; /* another artifact */
    sha_hex(data, len, hex);
    gw_upload *u = NULL;
    assert_int_equal(gw_upload_begin(f->a, hex, len, &u, NULL), AICFN_OK);
    for (size_t off = 0; off < len; off += AICFN_UPLOAD_CHUNK_BYTES) {
        size_t n = len - off < AICFN_UPLOAD_CHUNK_BYTES ? len - off : AICFN_UPLOAD_CHUNK_BYTES;
        assert_int_equal(gw_upload_write(u, off, data + off, n, NULL), AICFN_OK);
    }
    assert_int_equal(gw_upload_commit(u, NULL), AICFN_OK);
    assert_int_equal(gw_artifacts_path(f->a, hex, stored, sizeof stored, NULL), AICFN_OK);
    assert_int_equal(tpc_file_pmd_kb(stored), SIZE >> 10);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(upload_happy_path, setup, teardown),
        cmocka_unit_test_setup_teardown(second_commit_of_the_same_bytes_keeps_the_first, setup, teardown),
        cmocka_unit_test_setup_teardown(hash_mismatch_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(offsets_and_sizes_are_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(abort_and_interrupted_leave_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(upload_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_write_retried_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(uploads_must_fit_the_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(put_file_and_hash_file, setup, teardown),
        cmocka_unit_test_setup_teardown(stored_files_are_cached_in_huge_folios, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
