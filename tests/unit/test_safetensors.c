/* test_safetensors.c: safetensors import (snapshots/safetensors.c) against valid, sharded
 * and hostile files the test writes itself. Each hostile case checks the error code and
 * that the message names the problem. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
// clang-format on

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/tunables.h"
#include "snapshots/safetensors.h"

static char tdir[64];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int setup(void **state) {
    (void)state;
    snprintf(tdir, sizeof tdir, "/tmp/aicfn-st-XXXXXX");
    return mkdtemp(tdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return nftw(tdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *path_of(const char *name) {
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tdir, name);
    return buf[k];
}

static void write_bytes(const char *name, const void *p, size_t n) {
    FILE *f = fopen(path_of(name), "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* A safetensors file: header length `hlen_field` (the real length when UINT64_MAX),
 * the JSON, then `data` bytes of a counting pattern. */
static void write_st(const char *name, const char *json, size_t data, uint64_t hlen_field) {
    size_t jl = strlen(json);
    unsigned char *buf = calloc(1, 8 + jl + data + 1);
    assert_non_null(buf);
    uint64_t h = hlen_field == UINT64_MAX ? jl : hlen_field;
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(h >> (8 * i));
    memcpy(buf + 8, json, jl);
    for (size_t i = 0; i < data; i++)
        buf[8 + jl + i] = (unsigned char)(i * 7 + 1);
    write_bytes(name, buf, 8 + jl + data);
    free(buf);
}

/* Opens one path and expects failure with `code` and `needle` in the message. */
static void expect_fail(const char *name, int code, const char *needle) {
    const char *p = path_of(name);
    snap_st_set *s = (snap_st_set *)0x1;
    aicfn_error e;
    aicfn_error_clear(&e);
    int rc = snap_st_open(&p, 1, &s, &e);
    if (rc != code || !strstr(e.msg, needle))
        fail_msg("%s: got %d '%s', want %d with '%s'", name, rc, e.msg, code, needle);
    assert_null(s);
}

static void valid_file_with_metadata(void **state) {
    (void)state;
    write_st("ok.safetensors",
             "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_"
             "offsets\":[16,32]},"
             "\"a\":{\"dtype\":\"BF16\",\"shape\":[8],\"data_offsets\":[0,16]},"
             "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]},"
             "\"z\":{\"dtype\":\"U8\",\"shape\":[0,3],\"data_offsets\":[40,40]}}",
             40, UINT64_MAX);
    const char *p = path_of("ok.safetensors");
    snap_st_set *s;
    aicfn_error e;
    assert_int_equal(snap_st_open(&p, 1, &s, &e), AICFN_OK);
    assert_int_equal(snap_st_count(s), 4);
    const snap_st_tensor *a = snap_st_tensor_at(s, 0), *b = snap_st_tensor_at(s, 1),
                         *sc = snap_st_tensor_at(s, 2);
    assert_string_equal(a->name, "a"); /* sorted by offset */
    assert_int_equal(a->dtype, AICFN_DTYPE_BF16);
    assert_string_equal(b->name, "b");
    assert_int_equal(b->ndim, 2);
    assert_int_equal(b->nbytes, 16);
    assert_int_equal(sc->ndim, 0);
    assert_int_equal(sc->nbytes, 8);
    assert_int_equal(snap_st_total_bytes(s), 40);
    unsigned char buf[16];
    assert_int_equal(snap_st_read(s, 1, 0, buf, 16, &e), AICFN_OK);
    for (int i = 0; i < 16; i++)
        assert_int_equal(buf[i], (unsigned char)((16 + i) * 7 + 1));
    assert_int_equal(snap_st_read(s, 1, 8, buf, 16, &e), AICFN_E_INVALID);
    snap_st_close(s);
}

static void hostile_headers(void **state) {
    (void)state;
    write_bytes("empty.safetensors", "", 0);
    expect_fail("empty.safetensors", AICFN_E_CORRUPT, "empty file");

    unsigned char eight[8] = {0};
    write_bytes("eight0.safetensors", eight, 8);
    expect_fail("eight0.safetensors", AICFN_E_CORRUPT, "too short");
    eight[0] = 100;
    write_bytes("eight.safetensors", eight, 8);
    expect_fail("eight.safetensors", AICFN_E_CORRUPT, "larger than the file");
    write_bytes("five.safetensors", eight, 5);
    expect_fail("five.safetensors", AICFN_E_CORRUPT, "shorter than the 8-byte");

    write_st("big.safetensors", "{}", 0, 1000);
    expect_fail("big.safetensors", AICFN_E_CORRUPT, "larger than the file");
    write_st("huge.safetensors", "{}", 0, (uint64_t)AICFN_SAFETENSORS_MAX_HEADER + 1);
    expect_fail("huge.safetensors", AICFN_E_TOO_LARGE, "exceeds the limit");
    write_st("maxu64.safetensors", "{}", 0, UINT64_MAX - 1);
    expect_fail("maxu64.safetensors", AICFN_E_TOO_LARGE, "exceeds the limit");

    write_st("array.safetensors", "[1,2,3]", 0, UINT64_MAX);
    expect_fail("array.safetensors", AICFN_E_CORRUPT, "not an object");
    write_st("badjson.safetensors", "{\"a\":", 0, UINT64_MAX);
    expect_fail("badjson.safetensors", AICFN_E_CORRUPT, "not valid JSON");

    write_st("dtype.safetensors", "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
             UINT64_MAX);
    expect_fail("dtype.safetensors", AICFN_E_UNSUPPORTED, "unknown dtype 'Q4'");

    write_st("shape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
             UINT64_MAX);
    expect_fail("shape.safetensors", AICFN_E_CORRUPT,
                "shape x dtype size is 12 bytes but data_offsets span 8");

    write_st("negdim.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
             UINT64_MAX);
    expect_fail("negdim.safetensors", AICFN_E_CORRUPT, "shape[0]");

    write_st("overflow.safetensors",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
             UINT64_MAX);
    expect_fail("overflow.safetensors", AICFN_E_CORRUPT, "overflows");

    write_st("outside.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}", 8,
             UINT64_MAX);
    expect_fail("outside.safetensors", AICFN_E_CORRUPT, "outside the data region");

    write_st("backwards.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 8,
             UINT64_MAX);
    expect_fail("backwards.safetensors", AICFN_E_CORRUPT, "are invalid");

    write_st("overlap.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
             10, UINT64_MAX);
    expect_fail("overlap.safetensors", AICFN_E_CORRUPT, "overlap");

    write_st("dup.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
             "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
             2, UINT64_MAX);
    expect_fail("dup.safetensors", AICFN_E_CORRUPT, "duplicate");

    write_st("nooffs.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, UINT64_MAX);
    expect_fail("nooffs.safetensors", AICFN_E_CORRUPT, "data_offsets");

    write_st("dims.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
             UINT64_MAX);
    expect_fail("dims.safetensors", AICFN_E_UNSUPPORTED, "dims");

    write_st("meta.safetensors", "{\"__metadata__\":[1]}", 0, UINT64_MAX);
    expect_fail("meta.safetensors", AICFN_E_CORRUPT, "__metadata__");
    write_st("metaval.safetensors", "{\"__metadata__\":{\"a\":[1]}}", 0, UINT64_MAX);
    expect_fail("metaval.safetensors", AICFN_E_CORRUPT, "__metadata__['a'] is not a string");
    /* Refused before parsing: trees no real header has (a 45M-element shape took 1.85 GB). */
    write_st("deep.safetensors", "{\"__metadata__\":{\"a\":[{}]}}", 0, UINT64_MAX);
    expect_fail("deep.safetensors", AICFN_E_CORRUPT, "nested deeper than 3 levels");
    {
        enum { N = 200000 };
        char *h = malloc(64 + 2 * N);
        assert_non_null(h);
        int k = sprintf(h, "{\"a\":{\"dtype\":\"F32\",\"shape\":[");
        for (int i = 0; i < N; i++)
            h[k++] = '0', h[k++] = i + 1 < N ? ',' : ']';
        sprintf(h + k, ",\"data_offsets\":[0,0]}}");
        write_st("longshape.safetensors", h, 0, UINT64_MAX);
        free(h);
        expect_fail("longshape.safetensors", AICFN_E_CORRUPT, "array of more than 64 elements");
    }

    /* An empty tensor between two overlapping ones does not hide the overlap. */
    write_st("hidden.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
             "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}",
             12, UINT64_MAX);
    expect_fail("hidden.safetensors", AICFN_E_CORRUPT, "overlap");
    /* The tensors must cover the data region: no hole, nothing after the last. */
    write_st("hole.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
             10, UINT64_MAX);
    expect_fail("hole.safetensors", AICFN_E_CORRUPT,
                "data bytes [4, 6) before tensor 'b' belong to no tensor");
    write_st("tail.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 1000,
             UINT64_MAX);
    expect_fail("tail.safetensors", AICFN_E_CORRUPT, "data bytes [4, 1000) at the end belong to no tensor");
    /* An empty tensor may not carry dims whose product overflows, in any order. */
    write_st("zerofirst.safetensors",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
             UINT64_MAX);
    expect_fail("zerofirst.safetensors", AICFN_E_CORRUPT, "overflows");

    /* A FIFO named like a checkpoint is refused, not waited on for a writer. */
    assert_int_equal(mkfifo(path_of("fifo.safetensors"), 0600), 0);
    expect_fail("fifo.safetensors", AICFN_E_INVALID, "regular file");

    expect_fail("missing.safetensors", AICFN_E_NOT_FOUND, "missing.safetensors");
}

static void parse_buffer_direct(void **state) {
    (void)state;
    const char *json = "{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
    size_t jl = strlen(json);
    unsigned char buf[128] = {0};
    buf[0] = (unsigned char)jl;
    memcpy(buf + 8, json, jl);
    snap_st_header h;
    aicfn_error e;
    assert_int_equal(snap_st_parse_buffer(buf, 8 + jl + 4, "buf", &h, &e), AICFN_OK);
    assert_int_equal(h.n_tensors, 1);
    assert_int_equal(h.tensors[0].file_offset, 8 + jl);
    snap_st_header_free(&h);
    assert_int_equal(snap_st_parse_buffer(buf, 8 + jl + 3, "buf", &h, &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "outside the data region"));
    assert_int_equal(snap_st_parse_buffer(buf, 3, "buf", &h, &e), AICFN_E_CORRUPT);
    assert_int_equal(snap_st_parse_buffer(buf, 0, "buf", &h, &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "empty"));
}

static void sharded_and_multi(void **state) {
    (void)state;
    write_st("s1.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
             UINT64_MAX);
    write_st("s2.safetensors",
             "{\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             8, UINT64_MAX);
    const char *idx = "{\"metadata\":{\"total_size\":12},\"weight_map\":{\"c\":\"s2.safetensors\","
                      "\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}";
    write_bytes("model.safetensors.index.json", idx, strlen(idx));
    /* The directory: index preferred over listing. */
    const char *dir = tdir;
    snap_st_set *s;
    aicfn_error e;
    assert_int_equal(snap_st_open(&dir, 1, &s, &e), AICFN_OK);
    assert_int_equal(snap_st_count(s), 3);
    assert_int_equal(snap_st_file_count(s), 2);
    assert_string_equal(snap_st_tensor_at(s, 0)->name, "a");
    assert_string_equal(snap_st_tensor_at(s, 2)->name, "c");
    snap_st_close(s);

    /* Two files given directly. */
    const char *two[2] = {path_of("s1.safetensors"), path_of("s2.safetensors")};
    assert_int_equal(snap_st_open(two, 2, &s, &e), AICFN_OK);
    assert_int_equal(snap_st_count(s), 3);
    snap_st_close(s);

    /* The same file twice: duplicate names across files. */
    const char *same[2] = {path_of("s1.safetensors"), path_of("s1.safetensors")};
    assert_int_equal(snap_st_open(same, 2, &s, &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "duplicate tensor name 'a'"));

    /* An index that puts a tensor in the wrong shard, or lists a missing one. */
    const char *bad =
        "{\"weight_map\":{\"a\":\"s2.safetensors\",\"b\":\"s2.safetensors\",\"c\":\"s2.safetensors\"}}";
    write_bytes("bad.index.json", bad, strlen(bad));
    const char *bp = path_of("bad.index.json");
    assert_int_equal(snap_st_open(&bp, 1, &s, &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "weight_map lists 3 tensors but the shards hold 2"));
    const char *esc = "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}";
    write_bytes("esc.index.json", esc, strlen(esc));
    bp = path_of("esc.index.json");
    assert_int_equal(snap_st_open(&bp, 1, &s, &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "relative file name"));
    const char *miss = "{\"weight_map\":{\"a\":\"nope.safetensors\"}}";
    write_bytes("miss.index.json", miss, strlen(miss));
    bp = path_of("miss.index.json");
    assert_int_equal(snap_st_open(&bp, 1, &s, &e), AICFN_E_NOT_FOUND);
    assert_non_null(strstr(e.msg, "nope.safetensors"));
}

static void write_then_read(void **state) {
    (void)state;
    int64_t sh1[2] = {2, 3}, sh2[1] = {5};
    float f[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    uint8_t u[5] = {9, 8, 7, 6, 5};
    snap_st_out_tensor ts[2] = {{"w", AICFN_DTYPE_FP32, 2, sh1, f, sizeof f},
                                {"u", AICFN_DTYPE_UINT8, 1, sh2, u, 5}};
    aicfn_error e;
    const char *p = path_of("w.safetensors");
    assert_int_equal(snap_st_write(p, ts, 2, &e), AICFN_OK);
    snap_st_set *s;
    assert_int_equal(snap_st_open(&p, 1, &s, &e), AICFN_OK);
    assert_int_equal(snap_st_count(s), 2);
    float g[6];
    assert_int_equal(snap_st_read(s, 0, 0, g, sizeof g, &e), AICFN_OK);
    assert_memory_equal(f, g, sizeof f);
    assert_string_equal(snap_st_tensor_at(s, 1)->name, "u");
    snap_st_close(s);
    ts[1].nbytes = 4; /* size does not match the shape */
    assert_int_equal(snap_st_write(p, ts, 2, &e), AICFN_E_INVALID);
    ts[1].nbytes = 5;

    /* A temporary file left by an earlier run killed midway (the old name was
     * <path>.tmp<pid>, and pids repeat in containers) does not block the next write, which
     * leaves no temporary file of its own, and the file follows the umask. */
    char stale[600];
    snprintf(stale, sizeof stale, "%s.tmp%ld", p, (long)getpid());
    FILE *sf = fopen(stale, "w");
    assert_non_null(sf);
    fclose(sf);
    mode_t old_mask = umask(027);
    int rc = snap_st_write(p, ts, 2, &e);
    umask(old_mask);
    assert_int_equal(rc, AICFN_OK);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    unlink(stale);
    DIR *d = opendir(tdir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".tmp")) fail_msg("left behind: %s", de->d_name);
    closedir(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_file_with_metadata), cmocka_unit_test(hostile_headers),
        cmocka_unit_test(parse_buffer_direct),      cmocka_unit_test(sharded_and_multi),
        cmocka_unit_test(write_then_read),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
