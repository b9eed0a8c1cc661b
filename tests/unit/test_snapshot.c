/* test_snapshot.c: snapshot pack -> read round trips (bf16/fp16/fp32/int tensors,
 * multi-frame tensors, sharded input, every filter mode), `zstd -d` compatibility, and
 * hostile snapshots: truncation at every offset, flipped bits in data frames, manifest
 * and seek table, a legacy zstd magic, a frame that claims more than its range, and
 * overlapping tensors, a frame asking for an over-large window; the load path's streaming inverse filter; and
 * that a packed snapshot is cached in 2 MiB page-cache folios. Files are made here, in a temporary folder. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
// clang-format on

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_getFrameHeader */
#include <zstd.h>

#include "common/dtype.h"
#include "common/tunables.h"
#include "snapshots/filter.h"
#include "snapshots/format.h"
#include "snapshots/safetensors.h"
#include "snapshots/snapshot.h"
#include "snapshots/unpack.h"
#include "snapshots/writer.h"
#include "test_page_cache.h"

static char tdir[64];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int setup(void **state) {
    (void)state;
    snprintf(tdir, sizeof tdir, "/tmp/aicfn-snap-XXXXXX");
    return mkdtemp(tdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return nftw(tdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *path_of(const char *name) {
    static char buf[8][256];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tdir, name);
    return buf[k];
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* A weight-like float: roughly normal, scale 0.05. */
static float weight(void) {
    float s = 0;
    for (int i = 0; i < 4; i++)
        s += (float)(next32() & 0xffff) / 65536.0f - 0.5f;
    return s * 0.1f;
}

typedef struct model {
    int n;
    char names[16][32];
    aicfn_dtype dt[16];
    uint32_t ndim[16];
    int64_t shape[16][3];
    unsigned char *data[16];
    uint64_t nbytes[16];
} model;

static void model_add(model *m, const char *name, aicfn_dtype dt, uint32_t ndim, int64_t d0, int64_t d1) {
    int i = m->n++;
    snprintf(m->names[i], sizeof m->names[i], "%s", name);
    m->dt[i] = dt;
    m->ndim[i] = ndim;
    m->shape[i][0] = d0;
    m->shape[i][1] = d1;
    uint64_t nb;
    assert_int_equal(dtype_tensor_bytes(dt, m->shape[i], ndim, &nb), 0);
    m->nbytes[i] = nb;
    m->data[i] = malloc(nb ? nb : 1);
    unsigned char *p = m->data[i];
    size_t es = dtype_size(dt);
    for (uint64_t k = 0; k < nb / es; k++) {
        float w = weight();
        uint32_t bits;
        memcpy(&bits, &w, 4);
        if (dt == AICFN_DTYPE_FP32)
            memcpy(p + 4 * k, &bits, 4);
        else if (dt == AICFN_DTYPE_BF16) {
            uint16_t h = (uint16_t)(bits >> 16);
            memcpy(p + 2 * k, &h, 2);
        } else if (dt == AICFN_DTYPE_FP16) {
            uint16_t h = (uint16_t)((next32() & 0x8000) | ((8 + next32() % 8) << 10) | (next32() & 0x3ff));
            memcpy(p + 2 * k, &h, 2);
        } else {
            for (size_t b = 0; b < es; b++)
                p[es * k + b] = (unsigned char)(b == 0 ? next32() % 7 : 0);
        }
    }
}

static void model_free(model *m) {
    for (int i = 0; i < m->n; i++)
        free(m->data[i]);
    m->n = 0;
}

static void model_write(const model *m, int first, int count, const char *path) {
    snap_st_out_tensor ts[16];
    for (int i = 0; i < count; i++) {
        int k = first + i;
        ts[i] =
            (snap_st_out_tensor){m->names[k], m->dt[k], m->ndim[k], m->shape[k], m->data[k], m->nbytes[k]};
    }
    aicfn_error e;
    assert_int_equal(snap_st_write(path, ts, (uint32_t)count, &e), AICFN_OK);
}

/* A mixed model; `big` makes tensors span several 64 KiB frames. */
static void model_make(model *m, int big) {
    memset(m, 0, sizeof *m);
    model_add(m, "emb.bf16", AICFN_DTYPE_BF16, 2, big ? 300 : 30, 128);
    model_add(m, "attn.fp16", AICFN_DTYPE_FP16, 2, big ? 257 : 17, 96);
    model_add(m, "mlp.fp32", AICFN_DTYPE_FP32, 2, big ? 333 : 33, 64);
    model_add(m, "ids.i64", AICFN_DTYPE_INT64, 1, 77, 0);
    model_add(m, "mask.u8", AICFN_DTYPE_UINT8, 1, 1001, 0);
    model_add(m, "bias.fp32", AICFN_DTYPE_FP32, 1, 5, 0);
    model_add(m, "empty.i32", AICFN_DTYPE_INT32, 2, 0, 4);
    model_add(m, "scalar.fp16", AICFN_DTYPE_FP16, 0, 0, 0);
    model_add(m, "q.i8", AICFN_DTYPE_INT8, 1, 333, 0);
}

/* Decodes `snap` and checks it against the model, by name. */
static void check_snapshot(const model *m, const char *snap) {
    snap_reader *r;
    aicfn_error e;
    if (snap_open(snap, &r, &e)) fail_msg("snap_open: %s", e.msg);
    const snap_manifest *man = snap_reader_manifest(r);
    assert_int_equal(man->n_tensors, m->n);
    /* The largest frame, which sizes the loaders' scratch (not the declared chunk). */
    uint32_t max_raw = 0;
    for (uint32_t i = 0; i < snap_reader_frame_count(r); i++)
        if (snap_reader_frame(r, i)->raw_size > max_raw) max_raw = snap_reader_frame(r, i)->raw_size;
    assert_int_equal(snap_reader_max_raw_size(r), max_raw);
    assert_true(max_raw <= man->chunk_bytes);
    unsigned char *blob = malloc(man->blob_bytes ? man->blob_bytes : 1);
    if (snap_read_all(r, blob, &e)) fail_msg("snap_read_all: %s", e.msg);
    if (snap_verify(r, &e)) fail_msg("snap_verify: %s", e.msg);
    for (int i = 0; i < m->n; i++) {
        const snap_tensor *t = NULL;
        for (uint32_t k = 0; k < man->n_tensors; k++)
            if (strcmp(man->tensors[k].name, m->names[i]) == 0) t = &man->tensors[k];
        assert_non_null(t);
        assert_int_equal(t->dtype, m->dt[i]);
        assert_int_equal(t->ndim, m->ndim[i]);
        for (uint32_t d = 0; d < t->ndim; d++)
            assert_int_equal(t->shape[d], m->shape[i][d]);
        assert_int_equal(t->nbytes, m->nbytes[i]);
        assert_int_equal(t->offset % AICFN_SNAP_ALIGN, 0);
        assert_memory_equal(blob + t->offset, m->data[i], m->nbytes[i] ? m->nbytes[i] : 0);
    }
    free(blob);
    snap_close(r);
}

static void pack_ok(const char *in, const char *out, uint32_t chunk, snap_filter_mode f, unsigned threads,
                    snap_pack_stats *st) {
    snap_pack_opts o;
    snap_pack_opts_init(&o);
    o.chunk = chunk;
    o.filter = f;
    o.threads = threads;
    o.name = "test-model";
    aicfn_error e;
    if (snap_pack(&in, 1, out, &o, st, &e)) fail_msg("snap_pack: %s", e.msg);
}

/* The load path's streaming inverse writes exactly the raw bytes asked for, to `dst`
 * and to `hot`, whatever the destination's alignment, the range's start and a length
 * that leaves a tail the vector form does not take; nothing around the range changes. */
static void filter_inverse_stream_matches(void **state) {
    (void)state;
    enum { N = 3 * 4096 + 36, PAD = 128, CAP = (N + 2 * PAD + 63) / 64 * 64 };
    unsigned char *raw = malloc(N), *planes = malloc(N);
    unsigned char *dst = aligned_alloc(64, CAP), *hot = aligned_alloc(64, CAP);
    assert_non_null(raw);
    assert_non_null(planes);
    assert_non_null(dst);
    assert_non_null(hot);
    for (int i = 0; i < N; i++)
        raw[i] = (unsigned char)next32();
    aicfn_dtype dts[4] = {AICFN_DTYPE_BF16, AICFN_DTYPE_FP16, AICFN_DTYPE_FP32, AICFN_DTYPE_INT32};
    size_t starts[4] = {0, 64, 4, 4096 + 12}, lens[5] = {0, 4, 60, 4096, 2 * 4096 + 24};
    size_t shifts[4] = {0, 4, 16, 32}; /* destination alignment: 64, 4, 16, 32 bytes */
    int cases = 0;
    for (int k = 0; k < 4; k++) {
        snap_filter f = k < 3 ? SNAP_FILTER_PLANES : SNAP_FILTER_NONE;
        if (f == SNAP_FILTER_PLANES)
            snap_filter_forward(dts[k], raw, N, planes);
        else
            memcpy(planes, raw, N);
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 5; b++)
                for (int c = 0; c < 4; c++)
                    for (int with_hot = 0; with_hot < 2; with_hot++) {
                        size_t from = starts[a], len = lens[b];
                        if (from + len > N) continue;
                        memset(dst, 0xA5, N + 2 * PAD);
                        memset(hot, 0x5A, N + 2 * PAD);
                        unsigned char *d = dst + PAD + shifts[c];
                        snap_filter_inverse_stream(dts[k], f, planes, N, from, len, d, with_hot ? hot : NULL);
                        assert_memory_equal(d, raw + from, len);
                        for (size_t i = 0; i < PAD + shifts[c]; i++)
                            assert_int_equal(dst[i], 0xA5);
                        for (size_t i = PAD + shifts[c] + len; i < N + 2 * PAD; i++)
                            assert_int_equal(dst[i], 0xA5);
                        if (with_hot) {
                            assert_memory_equal(hot, raw + from, len);
                            assert_int_equal(hot[len], 0x5A);
                        }
                        cases++;
                    }
    }
    assert_int_equal(cases, 4 * 4 * 5 * 4 * 2);
    free(raw);
    free(planes);
    free(dst);
    free(hot);
}

/* The model's name must be UTF-8, as the reader requires: a --name that is not is
 * refused, and a default taken from a file name that is not (another encoding) becomes
 * "model". Before, both packed snapshots that the reader refused ("model name is not
 * valid UTF-8"). */
static void pack_writes_only_names_the_reader_takes(void **state) {
    (void)state;
    model m;
    model_make(&m, 1);
    const char *latin1 = path_of("mod\xff.safetensors");
    model_write(&m, 0, m.n, latin1);
    snap_pack_opts o;
    snap_pack_opts_init(&o);
    aicfn_error e;
    o.name = "bad\xffname";
    assert_int_equal(snap_pack(&latin1, 1, path_of("n.aicsnap"), &o, NULL, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "UTF-8"));
    o.name = NULL;
    if (snap_pack(&latin1, 1, path_of("n.aicsnap"), &o, NULL, &e)) fail_msg("snap_pack: %s", e.msg);
    snap_reader *r = NULL;
    if (snap_open(path_of("n.aicsnap"), &r, &e)) fail_msg("snap_open: %s", e.msg);
    assert_string_equal(snap_reader_manifest(r)->model_name, "model");
    snap_close(r);
    model_free(&m);
}

static void round_trip_all_modes(void **state) {
    (void)state;
    model m;
    model_make(&m, 1);
    model_write(&m, 0, m.n, path_of("in.safetensors"));
    snap_filter_mode modes[3] = {SNAP_FILTER_MODE_AUTO, SNAP_FILTER_MODE_NONE, SNAP_FILTER_MODE_PLANES};
    for (int k = 0; k < 3; k++) {
        snap_pack_stats st;
        pack_ok(path_of("in.safetensors"), path_of("rt.aicsnap"), AICFN_SNAP_MIN_CHUNK, modes[k], k + 1, &st);
        assert_true(st.n_frames > 3); /* tensors span several frames */
        if (modes[k] == SNAP_FILTER_MODE_PLANES) assert_int_equal(st.n_filtered, 5);
        if (modes[k] == SNAP_FILTER_MODE_NONE) assert_int_equal(st.n_filtered, 0);
        check_snapshot(&m, path_of("rt.aicsnap"));
    }
    /* One big frame, default chunk. */
    pack_ok(path_of("in.safetensors"), path_of("rt1.aicsnap"), 0, SNAP_FILTER_MODE_PLANES, 0, NULL);
    check_snapshot(&m, path_of("rt1.aicsnap"));
    /* The snapshot gets the mode any file of the user's would: private weights packed
     * under umask 077 are not readable by others. */
    mode_t old_mask = umask(077);
    pack_ok(path_of("in.safetensors"), path_of("private.aicsnap"), 0, SNAP_FILTER_MODE_NONE, 1, NULL);
    umask(022);
    pack_ok(path_of("in.safetensors"), path_of("shared.aicsnap"), 0, SNAP_FILTER_MODE_NONE, 1, NULL);
    umask(old_mask);
    struct stat st_priv, st_shared;
    assert_int_equal(stat(path_of("private.aicsnap"), &st_priv), 0);
    assert_int_equal(stat(path_of("shared.aicsnap"), &st_shared), 0);
    assert_int_equal(st_priv.st_mode & 0777, 0600);
    assert_int_equal(st_shared.st_mode & 0777, 0644);
    model_free(&m);
}

static void unpack_is_bit_exact(void **state) {
    (void)state;
    model m;
    model_make(&m, 1);
    model_write(&m, 0, m.n, path_of("u.safetensors"));
    pack_ok(path_of("u.safetensors"), path_of("u.aicsnap"), AICFN_SNAP_MIN_CHUNK, SNAP_FILTER_MODE_PLANES, 2,
            NULL);
    snap_reader *r;
    aicfn_error e;
    assert_int_equal(snap_open(path_of("u.aicsnap"), &r, &e), AICFN_OK);
    assert_string_equal(snap_reader_manifest(r)->model_name, "test-model");
    assert_true(snap_reader_frame_count(r) > 2); /* tensors spanning frames come in pieces */
    assert_int_equal(snap_unpack(r, path_of("back.safetensors"), &e), AICFN_OK);
    snap_close(r);
    /* Read both safetensors files and compare tensor by tensor. */
    const char *a = path_of("u.safetensors"), *b = path_of("back.safetensors");
    snap_st_set *sa, *sb;
    assert_int_equal(snap_st_open(&a, 1, &sa, &e), AICFN_OK);
    assert_int_equal(snap_st_open(&b, 1, &sb, &e), AICFN_OK);
    assert_int_equal(snap_st_count(sa), snap_st_count(sb));
    for (uint32_t i = 0; i < snap_st_count(sa); i++) {
        const snap_st_tensor *x = snap_st_tensor_at(sa, i);
        uint32_t j = 0;
        while (j < snap_st_count(sb) && strcmp(snap_st_tensor_at(sb, j)->name, x->name))
            j++;
        assert_true(j < snap_st_count(sb));
        const snap_st_tensor *y = snap_st_tensor_at(sb, j);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->ndim, y->ndim);
        assert_memory_equal(x->shape, y->shape, sizeof(int64_t) * x->ndim);
        assert_int_equal(x->nbytes, y->nbytes);
        unsigned char *p = malloc(x->nbytes + 1), *q = malloc(y->nbytes + 1);
        assert_int_equal(snap_st_read(sa, i, 0, p, x->nbytes, &e), AICFN_OK);
        assert_int_equal(snap_st_read(sb, j, 0, q, y->nbytes, &e), AICFN_OK);
        assert_memory_equal(p, q, x->nbytes);
        free(p);
        free(q);
    }
    snap_st_close(sa);
    snap_st_close(sb);
    model_free(&m);
}

static void sharded_input(void **state) {
    (void)state;
    model m;
    model_make(&m, 0);
    mkdir(path_of("shards"), 0755);
    model_write(&m, 0, 4, path_of("shards/model-00001-of-00002.safetensors"));
    model_write(&m, 4, m.n - 4, path_of("shards/model-00002-of-00002.safetensors"));
    FILE *f = fopen(path_of("shards/model.safetensors.index.json"), "w");
    assert_non_null(f);
    fprintf(f, "{\"metadata\":{},\"weight_map\":{");
    for (int i = 0; i < m.n; i++)
        fprintf(f, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"", i ? "," : "", m.names[i], i < 4 ? 1 : 2);
    fprintf(f, "}}");
    fclose(f);
    pack_ok(path_of("shards"), path_of("sh.aicsnap"), AICFN_SNAP_MIN_CHUNK, SNAP_FILTER_MODE_AUTO, 2, NULL);
    check_snapshot(&m, path_of("sh.aicsnap"));
    model_free(&m);
}

static unsigned char *slurp(const char *p, size_t *n) {
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)l + 1);
    assert_int_equal(fread(b, 1, (size_t)l, f), (size_t)l);
    fclose(f);
    *n = (size_t)l;
    return b;
}

static void spill(const char *p, const void *b, size_t n) {
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* The writer issues whole, aligned 2 MiB writes, so the page cache holds a fresh
 * snapshot in 2 MiB folios and the loader's mapping of it uses 2 MiB page-table
 * entries. Only kernels and filesystems whose page cache sizes folios by the write
 * (Linux 6.16+ ext4, xfs) do this: tpc_folios_follow_writes tells whether this one does,
 * and the test skips when not. */
static void snapshot_is_cached_in_huge_folios(void **state) {
    (void)state;
    if (!tpc_folios_follow_writes(tdir)) skip();
    model m;
    memset(&m, 0, sizeof m);
    model_add(&m, "w.fp32", AICFN_DTYPE_FP32, 2, 2048, 1024); /* 8 MiB of weights: ~7 MiB packed */
    model_add(&m, "b.bf16", AICFN_DTYPE_BF16, 1, 777, 0);
    model_write(&m, 0, m.n, path_of("huge.safetensors"));
    pack_ok(path_of("huge.safetensors"), path_of("huge.aicsnap"), AICFN_SNAP_MIN_CHUNK, SNAP_FILTER_MODE_AUTO,
            2, NULL);
    struct stat st;
    assert_int_equal(stat(path_of("huge.aicsnap"), &st), 0);
    long whole_blocks_kb = (long)(st.st_size / AICFN_PAGE_CACHE_BLOCK) * (AICFN_PAGE_CACHE_BLOCK >> 10);
    assert_true(whole_blocks_kb >= 4096);
    assert_int_equal(tpc_file_pmd_kb(path_of("huge.aicsnap")), whole_blocks_kb);
    check_snapshot(&m, path_of("huge.aicsnap"));
    model_free(&m);
}

static void zstd_cli_accepts(void **state) {
    (void)state;
    model m;
    model_make(&m, 1);
    model_write(&m, 0, m.n, path_of("z.safetensors"));
    pack_ok(path_of("z.safetensors"), path_of("z.aicsnap"), AICFN_SNAP_MIN_CHUNK, SNAP_FILTER_MODE_PLANES, 2,
            NULL);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "/usr/bin/zstd -q -t '%s'", path_of("z.aicsnap"));
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "/usr/bin/zstd -q -d -c '%s' > '%s'", path_of("z.aicsnap"), path_of("z.out"));
    assert_int_equal(system(cmd), 0);
    /* `zstd -d` output = every frame's decompressed (still filtered) bytes, in order. */
    snap_reader *r;
    aicfn_error e;
    assert_int_equal(snap_open(path_of("z.aicsnap"), &r, &e), AICFN_OK);
    const snap_manifest *man = snap_reader_manifest(r);
    size_t n;
    unsigned char *cli = slurp(path_of("z.out"), &n);
    assert_int_equal(n, man->blob_bytes);
    snap_dctx *d;
    assert_int_equal(snap_dctx_create(&d, &e), AICFN_OK);
    unsigned char *comp = malloc(snap_reader_max_comp_size(r)), *out = malloc(man->chunk_bytes);
    unsigned char *raw = malloc(man->blob_bytes ? man->blob_bytes : 1); /* the whole blob */
    int filtered_frames = 0;
    for (uint32_t i = 0; i < snap_reader_frame_count(r); i++) {
        const snap_frame *f = snap_reader_frame(r, i);
        assert_int_equal(snap_frame_read(r, i, comp, snap_reader_max_comp_size(r), &e), AICFN_OK);
        assert_int_equal(snap_frame_decompress(d, r, i, comp, out, &e), AICFN_OK);
        assert_memory_equal(out, cli + f->raw_offset, f->raw_size);
        filtered_frames += snap_frame_is_filtered(r, i);
        /* Unfiltered into the blob (a buffer of its own: not in place, by contract). */
        assert_int_equal(snap_frame_unfilter(r, i, out, raw + f->raw_offset, &e), AICFN_OK);
    }
    assert_true(filtered_frames > 0);
    /* ... gives the raw bytes: every tensor's checksum holds. */
    for (uint32_t t = 0; t < man->n_tensors; t++)
        if (snap_tensor_verify(r, t, raw, &e) != AICFN_OK) fail_msg("%s", e.msg);
    free(comp);
    free(out);
    free(raw);
    free(cli);
    snap_dctx_free(d);
    snap_close(r);
    model_free(&m);
}

/* Opens and fully verifies a file; returns the error code (0 when it is accepted). */
static int open_verify(const char *p, aicfn_error *e) {
    snap_reader *r;
    aicfn_error_clear(e);
    int rc = snap_open(p, &r, e);
    if (rc) return rc;
    rc = snap_verify(r, e);
    if (!rc) {
        unsigned char *blob = malloc(snap_reader_manifest(r)->blob_bytes + 1);
        rc = snap_read_all(r, blob, e);
        free(blob);
    }
    snap_close(r);
    return rc;
}

/* A small snapshot with two data frames. */
static unsigned char *small_snapshot(size_t *n) {
    model m;
    memset(&m, 0, sizeof m);
    model_add(&m, "a", AICFN_DTYPE_BF16, 1, 40000, 0);
    for (int k = 0; k < 40000; k++) { /* few distinct values: a small file */
        uint16_t v = (uint16_t)(0x3C00 + (k * 7 % 13) * 3 + ((k / 97) & 1) * 0x8000);
        memcpy(m.data[0] + 2 * k, &v, 2);
    }
    model_add(&m, "b", AICFN_DTYPE_FP32, 1, 50, 0);
    model_add(&m, "c", AICFN_DTYPE_UINT8, 1, 3, 0);
    model_write(&m, 0, m.n, path_of("small.safetensors"));
    model_free(&m);
    pack_ok(path_of("small.safetensors"), path_of("small.aicsnap"), AICFN_SNAP_MIN_CHUNK,
            SNAP_FILTER_MODE_PLANES, 1, NULL);
    return slurp(path_of("small.aicsnap"), n);
}

static void truncated_at_every_offset(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = small_snapshot(&n);
    aicfn_error e;
    assert_int_equal(open_verify(path_of("small.aicsnap"), &e), AICFN_OK);
    spill(path_of("trunc.aicsnap"), b, n);
    for (size_t k = n; k-- > 0;) { /* shrinking keeps the prefix */
        assert_int_equal(truncate(path_of("trunc.aicsnap"), (off_t)k), 0);
        int rc = open_verify(path_of("trunc.aicsnap"), &e);
        if (rc == AICFN_OK) fail_msg("truncated at %zu of %zu bytes was accepted", k, n);
        assert_int_equal(rc, AICFN_E_CORRUPT);
        assert_true(strlen(e.msg) > 10);
    }
    free(b);
}

/* Decodes a snapshot file into a new buffer; NULL when anything fails. */
static unsigned char *decode_file(const char *p, uint64_t *n) {
    snap_reader *r;
    aicfn_error e;
    if (snap_open(p, &r, &e)) return NULL;
    *n = snap_reader_manifest(r)->blob_bytes;
    unsigned char *blob = malloc(*n + 1);
    if (snap_read_all(r, blob, &e)) {
        free(blob);
        blob = NULL;
    }
    snap_close(r);
    return blob;
}

/* Flips one bit at each offset in [a, b) (every `step`). Each flip must be rejected with
 * `needle1` or `needle2` in the message, or, when accepted (a field that does not change
 * the content, such as a zstd window descriptor), decode to exactly the original blob.
 * Returns how many flips were rejected. */
static size_t flip_range(const unsigned char *orig, size_t n, size_t a, size_t b, size_t step,
                         const char *needle1, const char *needle2) {
    uint64_t ref_n;
    unsigned char *ref = decode_file(path_of("small.aicsnap"), &ref_n);
    assert_non_null(ref);
    unsigned char *c = malloc(n);
    aicfn_error e;
    size_t rejected = 0;
    for (size_t k = a; k < b; k += step) {
        memcpy(c, orig, n);
        c[k] ^= (unsigned char)(1u << (k % 8));
        spill(path_of("flip.aicsnap"), c, n);
        int rc = open_verify(path_of("flip.aicsnap"), &e);
        if (rc == AICFN_OK) {
            uint64_t got_n;
            unsigned char *got = decode_file(path_of("flip.aicsnap"), &got_n);
            if (!got || got_n != ref_n || memcmp(got, ref, ref_n) != 0)
                fail_msg("bit flip at offset %zu (range [%zu, %zu)) was accepted with different content", k,
                         a, b);
            free(got);
            continue;
        }
        rejected++;
        if (!strstr(e.msg, needle1) && !(needle2 && strstr(e.msg, needle2)))
            fail_msg("bit flip at %zu: message '%s' names neither '%s' nor '%s'", k, e.msg, needle1,
                     needle2 ? needle2 : "");
    }
    free(c);
    free(ref);
    return rejected;
}

static void flipped_bits(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = small_snapshot(&n);
    snap_reader *r;
    aicfn_error e;
    assert_int_equal(snap_open(path_of("small.aicsnap"), &r, &e), AICFN_OK);
    assert_int_equal(snap_reader_frame_count(r), 2);
    const snap_frame *f0 = snap_reader_frame(r, 0), *f1 = snap_reader_frame(r, 1);
    size_t data_start = (size_t)f0->file_offset, data_end = (size_t)(f1->file_offset + f1->comp_size);
    snap_close(r);
    /* Manifest (after the 8-byte frame header) and the seek table: every byte. */
    assert_int_equal(flip_range(b, n, 0, data_start, 1, "manifest", "snapshot"), data_start);
    assert_int_equal(flip_range(b, n, data_end, n, 1, "seek", "frame"), n - data_end);
    /* Data frames: a zstd error naming the frame, or a tensor checksum; nearly all flips
     * are caught, and the rest leave the content as it was. */
    size_t caught = flip_range(b, n, data_start, data_end, 1, "frame", "tensor");
    assert_true(caught * 100 >= (data_end - data_start) * 90);
    free(b);
}

/* ---- Hand-made snapshots -------------------------------------------------------------------- */

typedef struct hand_tensor {
    const char *name;
    uint64_t offset, nbytes;
    uint64_t xxh3;
} hand_tensor;

/* Writes a snapshot with the given manifest tensors (1-D, all of dtype `dtype`, `dtype_len`
 * bytes that may hold a NUL) and data frames. */
static void hand_snapshot_dtype(const char *path, uint64_t blob_bytes, const hand_tensor *ts, int nt,
                                const unsigned char *const *frames, const size_t *comp, const uint32_t *raw,
                                int nf, const char *dtype, size_t dtype_len) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
#define KEY(s) (msgpack_pack_str(&pk, strlen(s)), msgpack_pack_str_body(&pk, s, strlen(s)))
    msgpack_pack_map(&pk, 5);
    KEY("format");
    msgpack_pack_uint32(&pk, 1);
    KEY("name");
    KEY("hand");
    KEY("blob_bytes");
    msgpack_pack_uint64(&pk, blob_bytes);
    KEY("chunk");
    msgpack_pack_uint32(&pk, AICFN_SNAP_MIN_CHUNK);
    KEY("tensors");
    msgpack_pack_array(&pk, (size_t)nt);
    for (int i = 0; i < nt; i++) {
        msgpack_pack_map(&pk, 7);
        KEY("name");
        KEY(ts[i].name);
        KEY("dtype");
        msgpack_pack_str(&pk, dtype_len);
        msgpack_pack_str_body(&pk, dtype, dtype_len);
        KEY("shape");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_uint64(&pk, ts[i].nbytes);
        KEY("offset");
        msgpack_pack_uint64(&pk, ts[i].offset);
        KEY("nbytes");
        msgpack_pack_uint64(&pk, ts[i].nbytes);
        KEY("filter");
        KEY("none");
        KEY("xxh3");
        msgpack_pack_fix_uint64(&pk, ts[i].xxh3);
    }
#undef KEY
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned char h[24];
    snap_put_le32(h, SNAP_MANIFEST_MAGIC);
    snap_put_le32(h + 4, (uint32_t)(SNAP_MANIFEST_PREFIX + sb.size));
    memcpy(h + 8, SNAP_MANIFEST_TAG, 8);
    snap_put_le64(h + 16, XXH3_64bits(sb.data, sb.size));
    fwrite(h, 1, sizeof h, f);
    fwrite(sb.data, 1, sb.size, f);
    unsigned char e[8];
    size_t table = (size_t)(nf + 1) * 8 + SNAP_SEEKTABLE_FOOTER;
    for (int i = 0; i < nf; i++)
        fwrite(frames[i], 1, comp[i], f);
    snap_put_le32(e, SNAP_SEEKTABLE_MAGIC);
    snap_put_le32(e + 4, (uint32_t)table);
    fwrite(e, 1, 8, f);
    snap_put_le32(e, (uint32_t)(sizeof h + sb.size));
    snap_put_le32(e + 4, 0);
    fwrite(e, 1, 8, f);
    for (int i = 0; i < nf; i++) {
        snap_put_le32(e, (uint32_t)comp[i]);
        snap_put_le32(e + 4, raw[i]);
        fwrite(e, 1, 8, f);
    }
    unsigned char foot[9];
    snap_put_le32(foot, (uint32_t)nf + 1);
    foot[4] = 0;
    snap_put_le32(foot + 5, SNAP_SEEKABLE_MAGIC);
    fwrite(foot, 1, 9, f);
    fclose(f);
    msgpack_sbuffer_destroy(&sb);
}

/* The same, all tensors UINT8. */
static void hand_snapshot(const char *path, uint64_t blob_bytes, const hand_tensor *ts, int nt,
                          const unsigned char *const *frames, const size_t *comp, const uint32_t *raw,
                          int nf) {
    hand_snapshot_dtype(path, blob_bytes, ts, nt, frames, comp, raw, nf, "UINT8", 5);
}

static size_t compress_with(const void *src, size_t n, void *dst, size_t cap, int content_size) {
    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, content_size);
    size_t r = ZSTD_compress2(c, dst, cap, src, n);
    ZSTD_freeCCtx(c);
    assert_false(ZSTD_isError(r));
    return r;
}

static void hand_made_hostile(void **state) {
    (void)state;
    unsigned char raw[2048], comp[4096];
    for (int i = 0; i < 2048; i++)
        raw[i] = (unsigned char)(i % 251);
    aicfn_error e;

    /* A valid hand-made file first, so the cases below fail for their own reason. */
    hand_tensor ok = {"t", 0, 1024, XXH3_64bits(raw, 1024)};
    size_t c = compress_with(raw, 1024, comp, sizeof comp, 1);
    const unsigned char *fr[1] = {comp};
    uint32_t rs[1] = {1024};
    hand_snapshot(path_of("hand.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    if (open_verify(path_of("hand.aicsnap"), &e)) fail_msg("valid hand-made snapshot: %s", e.msg);

    /* A frame whose header claims 2048 bytes for a 1024-byte range. */
    c = compress_with(raw, 2048, comp, sizeof comp, 1);
    hand_snapshot(path_of("claims.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("claims.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "frame 0"));
    assert_non_null(strstr(e.msg, "claims 2048 bytes"));

    /* The same without a content size in the header: it produces too much. */
    c = compress_with(raw, 2048, comp, sizeof comp, 0);
    hand_snapshot(path_of("produces.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("produces.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "frame 0"));
    assert_non_null(strstr(e.msg, "more than the frame's raw size"));

    /* Too little output. */
    c = compress_with(raw, 512, comp, sizeof comp, 1);
    hand_snapshot(path_of("short.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("short.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "restored 512 bytes, expected 1024"));

    /* A legacy (v0.7) magic number on an otherwise valid frame. */
    c = compress_with(raw, 1024, comp, sizeof comp, 1);
    snap_put_le32(comp, 0xFD2FB527u);
    hand_snapshot(path_of("legacy.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("legacy.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "0xfd2fb527"));
    assert_non_null(strstr(e.msg, "legacy"));

    /* A frame that asks for a 256 MiB window (design.md §4: the window is bounded). Without a
     * content size the header has a window descriptor (byte 5): 0x90 is 2^28. The frame
     * still decodes with that window, so only the bound rejects it. */
    c = compress_with(raw, 1024, comp, sizeof comp, 0);
    assert_int_equal(comp[4] & 0x20, 0); /* not single-segment: byte 5 is the window */
    comp[5] = 0x90;
    {
        ZSTD_frameHeader fh;
        assert_int_equal(ZSTD_getFrameHeader(&fh, comp, c), 0);
        assert_int_equal(fh.windowSize, 1ull << 28);
        unsigned char back[1024];
        assert_int_equal(ZSTD_decompress(back, sizeof back, comp, c), 1024);
    }
    hand_snapshot(path_of("window.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("window.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "window of 268435456 bytes"));
    /* The same frame naming a dictionary (a 1-byte id after the window descriptor). */
    c = compress_with(raw, 1024, comp, sizeof comp, 0);
    memmove(comp + 7, comp + 6, c - 6);
    comp[4] |= 0x01;
    comp[6] = 5;
    c++;
    hand_snapshot(path_of("dict.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("dict.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "a dictionary (id 5)"));

    /* A skippable frame hiding inside a data frame is not data either. */
    snap_put_le32(comp, ZSTD_MAGIC_SKIPPABLE_START);
    hand_snapshot(path_of("skip.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("skip.aicsnap"), &e), AICFN_E_CORRUPT);

    /* Overlapping tensors. */
    c = compress_with(raw, 1024, comp, sizeof comp, 1);
    hand_tensor ov[2] = {{"x", 0, 512, 0}, {"y", 256, 512, 0}};
    hand_snapshot(path_of("overlap.aicsnap"), 1024, ov, 2, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("overlap.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "'y'"));
    assert_non_null(strstr(e.msg, "overlaps"));

    /* Out of the blob, misaligned, duplicate names. */
    hand_tensor out[1] = {{"z", 768, 512, 0}};
    hand_snapshot(path_of("outside.aicsnap"), 1024, out, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("outside.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "outside the blob"));
    hand_tensor mis[1] = {{"m", 100, 10, 0}};
    hand_snapshot(path_of("mis.aicsnap"), 1024, mis, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("mis.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "not aligned"));
    hand_tensor dup[2] = {{"d", 0, 10, 0}, {"d", 256, 10, 0}};
    hand_snapshot(path_of("dup.aicsnap"), 1024, dup, 2, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("dup.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "duplicate tensor name 'd'"));

    /* Names safetensors cannot carry: the reserved __metadata__, bytes that are not UTF-8. */
    hand_tensor meta = {"__metadata__", 0, 1024, ok.xxh3};
    hand_snapshot(path_of("metaname.aicsnap"), 1024, &meta, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("metaname.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "tensor 0: name is __metadata__"));
    hand_tensor latin1 = {"caf\xe9", 0, 1024, ok.xxh3};
    hand_snapshot(path_of("latin1.aicsnap"), 1024, &latin1, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("latin1.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "tensor 0: name is not valid UTF-8"));
    hand_tensor utf8 = {"caf\xc3\xa9", 0, 1024, ok.xxh3};
    hand_snapshot(path_of("utf8.aicsnap"), 1024, &utf8, 1, fr, &c, rs, 1);
    if (open_verify(path_of("utf8.aicsnap"), &e)) fail_msg("a UTF-8 tensor name: %s", e.msg);

    /* A seek table claiming more compressed bytes than any zstd frame of its raw size can
     * take (readers size buffers from it): refused at open, whatever the bytes hold. */
    {
        static unsigned char big[1024 + 1024 / 64 + 4096 + 1];
        memcpy(big, comp, c);
        size_t bc = sizeof big;
        const unsigned char *bfr[1] = {big};
        hand_snapshot(path_of("bound.aicsnap"), 1024, &ok, 1, bfr, &bc, rs, 1);
        assert_int_equal(open_verify(path_of("bound.aicsnap"), &e), AICFN_E_CORRUPT);
        assert_non_null(strstr(e.msg, "5137 compressed bytes for 1024 raw bytes (at most 5136)"));
    }

    /* Two frames where the writer makes one (a frame before the last restoring less than
     * the chunk): tiny frames would cost a reader memory per 256 bytes of file. Refused
     * by their count, before anything is sized from it. */
    {
        unsigned char half[2][1024];
        size_t hc[2] = {compress_with(raw, 512, half[0], sizeof half[0], 1),
                        compress_with(raw + 512, 512, half[1], sizeof half[1], 1)};
        const unsigned char *hf[2] = {half[0], half[1]};
        uint32_t hr[2] = {512, 512};
        hand_snapshot(path_of("split.aicsnap"), 1024, &ok, 1, hf, hc, hr, 2);
        assert_int_equal(open_verify(path_of("split.aicsnap"), &e), AICFN_E_CORRUPT);
        assert_non_null(strstr(e.msg, "2 data frames, but a blob of 1024 bytes in chunks of 65536 makes 1"));
    }
    /* The right count, tiled otherwise: a first frame of half a chunk. */
    {
        static unsigned char zeros[65536 + 1024], zc[2][4096];
        hand_tensor z = {"z", 0, sizeof zeros, XXH3_64bits(zeros, sizeof zeros)};
        size_t zcs[2] = {compress_with(zeros, 32768, zc[0], sizeof zc[0], 1),
                         compress_with(zeros, 33792, zc[1], sizeof zc[1], 1)};
        const unsigned char *zf[2] = {zc[0], zc[1]};
        uint32_t zr[2] = {32768, 33792};
        hand_snapshot(path_of("halves.aicsnap"), sizeof zeros, &z, 1, zf, zcs, zr, 2);
        assert_int_equal(open_verify(path_of("halves.aicsnap"), &e), AICFN_E_CORRUPT);
        assert_non_null(strstr(e.msg, "frame 0 restores 32768 bytes; every frame but the last must restore "
                                      "exactly the chunk (65536)"));
    }

    /* Frames that do not tile the blob. */
    uint32_t short_rs[1] = {768};
    hand_snapshot(path_of("tile.aicsnap"), 1024, &ok, 1, fr, &c, short_rs, 1);
    assert_int_equal(open_verify(path_of("tile.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "frames restore 768 bytes but the blob has 1024"));
    /* A blob running on past its last tensor, or a frame too small to restore its raw
     * bytes: a loader would reserve memory a tiny file never fills. Refused at open. */
    hand_snapshot(path_of("blobpast.aicsnap"), 2048, &ok, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("blobpast.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "blob_bytes 2048 runs past the last tensor, which ends at 1024"));
    size_t tiny = 9;
    hand_snapshot(path_of("floor.aicsnap"), 1024, &ok, 1, fr, &tiny, rs, 1);
    assert_int_equal(open_verify(path_of("floor.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "9 compressed bytes cannot restore 1024 raw bytes (zstd needs at least 10)"));

    /* A wrong checksum names the tensor. */
    hand_tensor bad = {"bad", 0, 1024, 12345};
    hand_snapshot(path_of("sum.aicsnap"), 1024, &bad, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("sum.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "tensor 'bad': checksum mismatch"));

    /* A dtype with a NUL inside is not the dtype before the NUL. */
    hand_snapshot_dtype(path_of("nul.aicsnap"), 1024, &ok, 1, fr, &c, rs, 1, "UINT8\0junk", 10);
    assert_int_equal(open_verify(path_of("nul.aicsnap"), &e), AICFN_E_UNSUPPORTED);
    assert_non_null(strstr(e.msg, "unknown dtype"));

    /* Non-zero padding after the tensor. */
    hand_tensor pad = {"p", 0, 1000, XXH3_64bits(raw, 1000)};
    hand_snapshot(path_of("pad.aicsnap"), 1024, &pad, 1, fr, &c, rs, 1);
    assert_int_equal(open_verify(path_of("pad.aicsnap"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "padding byte at blob offset 1000"));
}

/* How many entries of the test folder start with `prefix`. */
static int files_starting(const char *prefix) {
    DIR *d = opendir(tdir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* A checksum that fails in the second tensor, after the first was written out: unpack
 * fails naming it and leaves no file, temporary or not; the same file with the right
 * checksum unpacks. */
static void unpack_of_a_bad_snapshot_leaves_nothing(void **state) {
    (void)state;
    unsigned char raw[1024], comp[2048];
    for (int i = 0; i < 1024; i++)
        raw[i] = (unsigned char)(i % 251);
    size_t c = compress_with(raw, 1024, comp, sizeof comp, 1);
    const unsigned char *fr[1] = {comp};
    uint32_t rs[1] = {1024};
    hand_tensor ts[2] = {{"good", 0, 512, XXH3_64bits(raw, 512)}, {"bad", 512, 512, 12345}};
    hand_snapshot(path_of("unpack-bad.aicsnap"), 1024, ts, 2, fr, &c, rs, 1);
    snap_reader *r;
    aicfn_error e;
    assert_int_equal(snap_open(path_of("unpack-bad.aicsnap"), &r, &e), AICFN_OK);
    assert_int_equal(snap_unpack(r, path_of("unpacked.safetensors"), &e), AICFN_E_CORRUPT);
    assert_non_null(strstr(e.msg, "tensor 'bad': checksum mismatch"));
    snap_close(r);
    assert_int_equal(files_starting("unpacked.safetensors"), 0);

    ts[1].xxh3 = XXH3_64bits(raw + 512, 512);
    hand_snapshot(path_of("unpack-good.aicsnap"), 1024, ts, 2, fr, &c, rs, 1);
    assert_int_equal(snap_open(path_of("unpack-good.aicsnap"), &r, &e), AICFN_OK);
    assert_int_equal(snap_unpack(r, path_of("unpacked.safetensors"), &e), AICFN_OK);
    snap_close(r);
    assert_int_equal(files_starting("unpacked.safetensors"), 1);
    size_t n;
    unsigned char *back = slurp(path_of("unpacked.safetensors"), &n);
    assert_true(n > 1024);
    assert_memory_equal(back + n - 1024, raw, 1024); /* the data section: both tensors, no gap */
    free(back);
}

static void bad_options(void **state) {
    (void)state;
    model m;
    model_make(&m, 0);
    model_write(&m, 0, m.n, path_of("o.safetensors"));
    const char *in = path_of("o.safetensors");
    snap_pack_opts o;
    aicfn_error e;
    snap_pack_opts_init(&o);
    o.chunk = AICFN_SNAP_MIN_CHUNK + 1;
    assert_int_equal(snap_pack(&in, 1, path_of("x.aicsnap"), &o, NULL, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "chunk"));
    snap_pack_opts_init(&o);
    o.level = 99;
    assert_int_equal(snap_pack(&in, 1, path_of("x.aicsnap"), &o, NULL, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "level"));
    snap_pack_opts_init(&o);
    assert_int_equal(snap_pack(&in, 1, "/nonexistent-dir/x.aicsnap", &o, NULL, &e), AICFN_E_IO);
    assert_int_equal(access(path_of("x.aicsnap"), F_OK), -1);
    model_free(&m);
}

static void filter_inverts(void **state) {
    (void)state;
    unsigned char src[4096], mid[4096], back[4096];
    for (int i = 0; i < 4096; i++)
        src[i] = (unsigned char)next32();
    aicfn_dtype dts[3] = {AICFN_DTYPE_BF16, AICFN_DTYPE_FP16, AICFN_DTYPE_FP32};
    for (int k = 0; k < 3; k++) {
        snap_filter_forward(dts[k], src, sizeof src, mid);
        snap_filter_inverse(dts[k], mid, sizeof mid, back);
        assert_memory_equal(src, back, sizeof src);
    }
    /* bf16 1.0 = 0x3F80: exponent 0x7F lands in plane 0, sign in the low bit of plane 1. */
    uint16_t one[2] = {0x3F80, 0xBF80};
    unsigned char pl[4];
    snap_filter_forward(AICFN_DTYPE_BF16, one, 4, pl);
    assert_int_equal(pl[0], 0x7F);
    assert_int_equal(pl[1], 0x7F);
    assert_int_equal(pl[2], 0x00);
    assert_int_equal(pl[3], 0x01);
    /* fp32 -2.0 = 0xC0000000: exponent 0x80, sign bit last. */
    uint32_t two = 0xC0000000u;
    unsigned char p4[4];
    snap_filter_forward(AICFN_DTYPE_FP32, &two, 4, p4);
    assert_int_equal(p4[0], 0x80);
    assert_int_equal(p4[3], 0x01);
    assert_int_equal(snap_filter_planes_of(AICFN_DTYPE_INT32), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(filter_inverts),
        cmocka_unit_test(filter_inverse_stream_matches),
        cmocka_unit_test(round_trip_all_modes),
        cmocka_unit_test(pack_writes_only_names_the_reader_takes),
        cmocka_unit_test(unpack_is_bit_exact),
        cmocka_unit_test(unpack_of_a_bad_snapshot_leaves_nothing),
        cmocka_unit_test(sharded_input),
        cmocka_unit_test(zstd_cli_accepts),
        cmocka_unit_test(truncated_at_every_offset),
        cmocka_unit_test(flipped_bits),
        cmocka_unit_test(hand_made_hostile),
        cmocka_unit_test(bad_options),
        cmocka_unit_test(snapshot_is_cached_in_huge_folios),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
