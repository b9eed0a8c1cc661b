/* test_pipeline.c: the load pipeline (loader/pipeline.h) on real snapshots packed by
 * snap_pack from a generated safetensors file: bit-exact blobs with 1 and N threads and
 * every filter mode, a corrupt frame, a truncated file, allocation failure and the
 * cache's pipeline load ops, on the host device, an emulated staging device and, where
 * a GPU is present, the real CUDA device (skipped, saying why, elsewhere). Nothing may
 * leak (ASan) or stay allocated on the device. */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#ifdef AICFN_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "common/clock.h"
#include "loader/cache.h"
#include "loader/pipeline.h"
#include "snapshots/safetensors.h"
#include "snapshots/snapshot.h"
#include "snapshots/writer.h"

enum { NT = 6 };

typedef struct fixture {
    char dir[64];
    char st_path[128];
    void *data[NT];
    uint64_t nbytes[NT];
    const char *names[NT];
} fixture;

static fixture fx;

static uint32_t rng_state = 12345;
static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}
static float gauss(void) { /* Irwin-Hall approximation of N(0, 0.02) */
    float s = 0;
    for (int i = 0; i < 4; i++)
        s += (float)(rng() & 0xffffff) / 16777216.0f;
    return (s - 2.0f) * 0.0346f;
}

static int setup(void **state) {
    (void)state;
    snprintf(fx.dir, sizeof fx.dir, "/tmp/aicfn-test-pipeline-XXXXXX");
    if (!mkdtemp(fx.dir)) return -1;
    snprintf(fx.st_path, sizeof fx.st_path, "%s/model.safetensors", fx.dir);
    static const int64_t s_big[] = {600, 500}, s_emb[] = {1000, 130}, s_ids[] = {1000}, s_tiny[] = {3},
                         s_odd[] = {1001}, s_h[] = {70, 1000};
    const int64_t *shapes[NT] = {s_big, s_emb, s_ids, s_tiny, s_odd, s_h};
    uint32_t ndims[NT] = {2, 2, 1, 1, 1, 2};
    aicfn_dtype dts[NT] = {AICFN_DTYPE_FP32, AICFN_DTYPE_BF16,  AICFN_DTYPE_INT64,
                           AICFN_DTYPE_FP32, AICFN_DTYPE_UINT8, AICFN_DTYPE_FP16};
    const char *names[NT] = {"layer.big.weight", "embed.bf16", "ids", "tiny", "odd.u8", "half.f16"};
    snap_st_out_tensor ts[NT];
    for (int i = 0; i < NT; i++) {
        uint64_t n = 1;
        for (uint32_t d = 0; d < ndims[i]; d++)
            n *= (uint64_t)shapes[i][d];
        size_t es = dts[i] == AICFN_DTYPE_FP32    ? 4
                    : dts[i] == AICFN_DTYPE_INT64 ? 8
                    : dts[i] == AICFN_DTYPE_UINT8 ? 1
                                                  : 2;
        fx.nbytes[i] = n * es;
        fx.names[i] = names[i];
        unsigned char *p = malloc(fx.nbytes[i]);
        if (!p) return -1;
        for (uint64_t k = 0; k < n; k++) {
            float g = gauss();
            uint32_t bits;
            memcpy(&bits, &g, 4);
            switch (dts[i]) {
            case AICFN_DTYPE_FP32:
                memcpy(p + k * 4, &g, 4);
                break;
            case AICFN_DTYPE_BF16:
                p[k * 2] = (unsigned char)(bits >> 16), p[k * 2 + 1] = (unsigned char)(bits >> 24);
                break;
            case AICFN_DTYPE_FP16:
                p[k * 2] = (unsigned char)rng(), p[k * 2 + 1] = (unsigned char)(0x20 | (rng() & 0x8f));
                break;
            case AICFN_DTYPE_INT64: {
                int64_t v = (int64_t)(rng() % 30522);
                memcpy(p + k * 8, &v, 8);
                break;
            }
            default:
                p[k] = (unsigned char)rng();
                break;
            }
        }
        fx.data[i] = p;
        ts[i] = (snap_st_out_tensor){.name = names[i],
                                     .dtype = dts[i],
                                     .ndim = ndims[i],
                                     .shape = shapes[i],
                                     .data = p,
                                     .nbytes = fx.nbytes[i]};
    }
    aicfn_error err;
    if (snap_st_write(fx.st_path, ts, NT, &err) != AICFN_OK) {
        fprintf(stderr, "snap_st_write: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < NT; i++)
        free(fx.data[i]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx.dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void pack(const char *out, snap_filter_mode mode, uint32_t chunk) {
    snap_pack_opts o;
    snap_pack_opts_init(&o);
    o.filter = mode;
    o.chunk = chunk;
    o.threads = 2;
    const char *in[] = {fx.st_path};
    aicfn_error err;
    snap_pack_stats st;
    if (snap_pack(in, 1, out, &o, &st, &err) != AICFN_OK) fail_msg("snap_pack: %s", err.msg);
    assert_true(st.n_frames > 1);
}

static void assert_exact(const loader_model *m) {
    const snap_manifest *man = loader_model_manifest(m);
    assert_int_equal(man->n_tensors, NT);
    for (int i = 0; i < NT; i++) {
        int t = loader_model_find_tensor(m, fx.names[i]);
        assert_true(t >= 0);
        assert_int_equal(man->tensors[t].nbytes, fx.nbytes[i]);
        assert_memory_equal(loader_model_tensor_ptr(m, (uint32_t)t), fx.data[i], fx.nbytes[i]);
        assert_int_equal(man->tensors[t].offset % 256, 0);
    }
    assert_int_equal(loader_model_find_tensor(m, "nope"), -1);
    assert_null(loader_model_tensor_ptr(m, NT));
}

static void bit_exact_threads_and_filters(void **state) {
    (void)state;
    aicfn_error err;
    loader_device *dev;
    assert_int_equal(loader_device_host_open(64u << 20, &dev, &err), AICFN_OK);
    snap_filter_mode modes[] = {SNAP_FILTER_MODE_AUTO, SNAP_FILTER_MODE_NONE, SNAP_FILTER_MODE_PLANES};
    /* 64 KiB frames: one unfilter piece per frame; 320 KiB: several pieces per tensor
     * part, tensors spanning frames, parts whose turn comes while another thread feeds. */
    uint32_t chunks[] = {64u << 10, 320u << 10};
    for (int ci = 0; ci < 2; ci++) {
        for (int mi = 0; mi < 3; mi++) {
            char path[160];
            snprintf(path, sizeof path, "%s/m%d-%d.aicfn", fx.dir, mi, ci);
            pack(path, modes[mi], chunks[ci]);
            uint32_t threads[] = {1, 3, 8};
            for (int ti = 0; ti < 3; ti++) {
                for (int pread_frames = 0; pread_frames <= 1; pread_frames++) {
                    loader_load_opts o = {.threads = threads[ti], .pread_frames = pread_frames};
                    loader_model *m = NULL;
                    loader_timing t;
                    assert_int_equal(loader_load_snapshot(dev, path, &o, &m, &t, &err), AICFN_OK);
                    assert_exact(m);
                    const snap_manifest *man = loader_model_manifest(m);
                    assert_int_equal(t.raw_bytes, man->blob_bytes);
                    assert_true(t.compressed_bytes > 0 && t.compressed_bytes < t.raw_bytes);
                    assert_true(t.frames > 1);
                    assert_int_equal(t.threads, threads[ti] < t.frames ? threads[ti] : t.frames);
                    assert_true(t.total_us >= t.alloc_us);
                    assert_true(loader_model_alloc_bytes(m) >= man->blob_bytes);
                    assert_ptr_equal(loader_model_device(m), dev);
                    loader_model_free(m);
                }
            }
        }
    }
    uint64_t f, tot;
    assert_int_equal(loader_device_mem_info(dev, &f, &tot, &err), AICFN_OK);
    assert_int_equal(f, tot);
    loader_device_close(dev);
}

/* Flips bytes inside data frame `fi` of a copy of `src`. */
/* dst = src with 16 bytes flipped at `num`/`den` of frame fi's compressed bytes. */
static void corrupt_copy(const char *src, const char *dst, uint32_t fi, uint64_t num, uint64_t den) {
    aicfn_error err;
    snap_reader *r;
    assert_int_equal(snap_open(src, &r, &err), AICFN_OK);
    const snap_frame *f = snap_reader_frame(r, fi);
    assert_non_null(f);
    uint64_t off = f->file_offset + f->comp_size * num / den;
    snap_close(r);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", src, dst);
    assert_int_equal(system(cmd), 0);
    int fd = open(dst, O_RDWR);
    assert_true(fd >= 0);
    unsigned char b[16];
    assert_int_equal(pread(fd, b, sizeof b, (off_t)off), (ssize_t)sizeof b);
    for (int i = 0; i < 16; i++)
        b[i] ^= 0x5a;
    assert_int_equal(pwrite(fd, b, sizeof b, (off_t)off), (ssize_t)sizeof b);
    close(fd);
}

/* How many times `needle` occurs in `s`. */
static int occurrences(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void corrupt_frame_names_frame_and_tensor(void **state) {
    (void)state;
    aicfn_error err;
    loader_device *dev;
    assert_int_equal(loader_device_host_open(64u << 20, &dev, &err), AICFN_OK);
    char good[160], bad[160];
    snprintf(good, sizeof good, "%s/good.aicfn", fx.dir);
    snprintf(bad, sizeof bad, "%s/bad.aicfn", fx.dir);
    pack(good, SNAP_FILTER_MODE_AUTO, 64u << 10);
    for (uint32_t threads = 1; threads <= 4; threads += 3) {
        corrupt_copy(good, bad, 5, 1, 2);
        loader_model *m = (void *)1;
        loader_load_opts o = {.threads = threads, .pread_frames = threads == 1};
        int rc = loader_load_snapshot(dev, bad, &o, &m, NULL, &err);
        assert_int_equal(rc, AICFN_E_CORRUPT);
        assert_null(m);
        print_message("corrupt (%u threads): %s\n", threads, err.msg);
        assert_non_null(strstr(err.msg, "bad.aicfn"));
        /* Either the bad frame itself, or (when zstd decoded garbage) the tensor spanning it. */
        assert_true(strstr(err.msg, "frame 5 ") || strstr(err.msg, "in frames 0.."));
        assert_int_equal(occurrences(err.msg, "tensor '"), 1); /* the one at fault, named once */
        uint64_t f, tot;
        assert_int_equal(loader_device_mem_info(dev, &f, &tot, &err), AICFN_OK);
        assert_int_equal(f, tot); /* nothing left on the device */
    }
    /* Corrupt bytes that zstd decodes without noticing (no content checksum) inside a
     * tensor spanning frames: its XXH3 no longer matches, whichever thread feeds which
     * part (live, after waiting, or posted and fed by the thread holding the turn). */
    snap_reader *r;
    assert_int_equal(snap_open(good, &r, &err), AICFN_OK);
    uint32_t n_frames = snap_reader_frame_count(r);
    snap_close(r);
    int mismatches = 0;
    for (uint32_t fi = 1; fi + 1 < n_frames && mismatches < 3; fi++) {
        for (uint64_t num = 1; num < 4 && mismatches < 3; num++) {
            corrupt_copy(good, bad, fi, num, 4);
            for (uint32_t threads = 2; threads <= 4; threads += 2) {
                loader_model *m = (void *)1;
                loader_load_opts o = {.threads = threads};
                int rc = loader_load_snapshot(dev, bad, &o, &m, NULL, &err);
                assert_int_equal(rc, AICFN_E_CORRUPT);
                assert_null(m);
                if (strstr(err.msg, "XXH3 mismatch") && strstr(err.msg, "(in frames ")) mismatches++;
                assert_int_equal(occurrences(err.msg, "tensor '"), 1);
                uint64_t f, tot;
                assert_int_equal(loader_device_mem_info(dev, &f, &tot, &err), AICFN_OK);
                assert_int_equal(f, tot);
            }
        }
    }
    assert_true(mismatches > 0); /* some corruption reached the checksums of a spanning tensor */
    loader_device_close(dev);
}

static void truncated_file_is_io_error(void **state) {
    (void)state;
    aicfn_error err;
    loader_device *dev;
    assert_int_equal(loader_device_host_open(64u << 20, &dev, &err), AICFN_OK);
    char path[160];
    snprintf(path, sizeof path, "%s/trunc.aicfn", fx.dir);
    pack(path, SNAP_FILTER_MODE_AUTO, 64u << 10);
    snap_reader *r;
    assert_int_equal(snap_open(path, &r, &err), AICFN_OK);
    assert_int_equal(truncate(path, (off_t)(snap_reader_file_bytes(r) / 2)), 0);
    /* In place from the mapping (the pages past the end are refused before decompressing,
     * not a SIGBUS) and through pread. */
    for (int pread_frames = 0; pread_frames <= 1; pread_frames++) {
        loader_model *m = NULL;
        loader_load_opts o = {.threads = 2, .pread_frames = pread_frames};
        int rc = loader_load_reader(dev, r, &o, &m, NULL, &err);
        assert_int_equal(rc, AICFN_E_IO); /* either way: the file changed under the load */
        assert_null(m);
        print_message("truncated (%s): %s\n", pread_frames ? "pread" : "mapped", err.msg);
        assert_non_null(strstr(err.msg, "frame"));
        assert_non_null(strstr(err.msg, "shrank"));
    }
    snap_close(r);
    uint64_t f, tot;
    assert_int_equal(loader_device_mem_info(dev, &f, &tot, &err), AICFN_OK);
    assert_int_equal(f, tot);
    loader_device_close(dev);
}

static void allocation_failure_and_max_bytes(void **state) {
    (void)state;
    aicfn_error err;
    char path[160];
    snprintf(path, sizeof path, "%s/alloc.aicfn", fx.dir);
    pack(path, SNAP_FILTER_MODE_AUTO, 64u << 10);
    loader_device *small;
    assert_int_equal(loader_device_host_open(1u << 20, &small, &err), AICFN_OK);
    loader_model *m = NULL;
    assert_int_equal(loader_load_snapshot(small, path, NULL, &m, NULL, &err), AICFN_E_CAPACITY);
    assert_null(m);
    assert_non_null(strstr(err.msg, "alloc.aicfn"));
    loader_device_close(small);
    loader_device *dev;
    assert_int_equal(loader_device_host_open(64u << 20, &dev, &err), AICFN_OK);
    loader_load_opts o = {.max_bytes = 4096};
    assert_int_equal(loader_load_snapshot(dev, path, &o, &m, NULL, &err), AICFN_E_CAPACITY);
    assert_int_equal(loader_load_snapshot(dev, "/nonexistent/x.aicfn", NULL, &m, NULL, &err),
                     AICFN_E_NOT_FOUND);
    loader_device_close(dev);
}

static void cache_with_pipeline_ops(void **state) {
    (void)state;
    aicfn_error err;
    char path[160];
    snprintf(path, sizeof path, "%s/cache.aicfn", fx.dir);
    pack(path, SNAP_FILTER_MODE_AUTO, 64u << 10);
    loader_device *dev;
    assert_int_equal(loader_device_host_open(64u << 20, &dev, &err), AICFN_OK);
    loader_pipeline_source src = {.device = dev, .threads = 2};
    loader_cache_config cfg = {.budget_bytes = 32u << 20, .ops = &loader_pipeline_cache_ops, .ops_arg = &src};
    loader_cache *c;
    assert_int_equal(loader_cache_create(&cfg, &c, &err), AICFN_OK);
    loader_cache_entry *e;
    loader_acquire_info info;
    assert_int_equal(loader_cache_acquire(c, "m", path, 0, &e, &info, &err), AICFN_OK);
    assert_true(info.cold);
    assert_true(info.timing.raw_bytes > 0);
    loader_model *m = loader_cache_entry_model(e);
    assert_exact(m);
    assert_int_equal(loader_cache_entry_bytes(e), loader_model_alloc_bytes(m));
    loader_cache_release(c, e);
    assert_int_equal(loader_cache_acquire(c, "x", "/nonexistent.aicfn", 0, &e, &info, &err),
                     AICFN_E_NOT_FOUND);
    loader_cache_config tiny = cfg;
    tiny.budget_bytes = 4096;
    loader_cache *c2;
    assert_int_equal(loader_cache_create(&tiny, &c2, &err), AICFN_OK);
    assert_int_equal(loader_cache_acquire(c2, "m", path, 0, &e, &info, &err), AICFN_E_TOO_LARGE);
    loader_cache_destroy(c2);
    loader_cache_destroy(c);
    uint64_t f, tot;
    assert_int_equal(loader_device_mem_info(dev, &f, &tot, &err), AICFN_OK);
    assert_int_equal(f, tot);
    loader_device_close(dev);
}

/* ---- An emulated non-host device: host memory behind the device interface, with a
 * staging pool and tickets, so the pipeline's device path (staging, copies, bounce for
 * frames larger than a staging buffer) runs without a GPU. Copies are deferred until a
 * wait, sync or staging reuse, as an asynchronous device would. ---- */

enum { EMU_STAGES = 3, EMU_PENDING = 64 };

typedef struct emu_copy {
    void *dst;
    const void *src;
    size_t n;
    loader_ticket t;
} emu_copy;

typedef struct emu_dev {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t cap;
    unsigned char *stage[EMU_STAGES];
    int busy[EMU_STAGES];
    loader_ticket stage_ticket[EMU_STAGES];
    emu_copy pending[EMU_PENDING];
    int n_pending;
    loader_ticket next, done_upto;
    uint64_t used, copies, bytes_copied;
    int max_busy, now_busy;
} emu_dev;

static const char *emu_name(loader_device *d) {
    (void)d;
    return "emu";
}
static int emu_is_host(loader_device *d) {
    (void)d;
    return 0;
}
static int emu_alloc(loader_device *d, uint64_t bytes, loader_dev_buf *out, aicfn_error *err) {
    emu_dev *e = d->ctx;
    out->ptr = malloc(bytes);
    if (!out->ptr) return aicfn_error_set(err, AICFN_E_CAPACITY, "emu: out of memory");
    out->bytes = bytes;
    pthread_mutex_lock(&e->mu);
    e->used += bytes;
    pthread_mutex_unlock(&e->mu);
    return AICFN_OK;
}
static void emu_free(loader_device *d, loader_dev_buf *b) {
    emu_dev *e = d->ctx;
    pthread_mutex_lock(&e->mu);
    e->used -= b->bytes;
    pthread_mutex_unlock(&e->mu);
    free(b->ptr);
}
static int emu_mem_info(loader_device *d, uint64_t *f, uint64_t *t, aicfn_error *err) {
    (void)err;
    emu_dev *e = d->ctx;
    pthread_mutex_lock(&e->mu);
    *t = 1ull << 30;
    *f = *t - e->used;
    pthread_mutex_unlock(&e->mu);
    return AICFN_OK;
}
/* Under mu: performs pending copies up to ticket t (in order). */
static void emu_complete_locked(emu_dev *e, loader_ticket t) {
    int w = 0;
    for (int i = 0; i < e->n_pending; i++) {
        if (e->pending[i].t <= t) {
            memcpy(e->pending[i].dst, e->pending[i].src, e->pending[i].n);
            e->bytes_copied += e->pending[i].n;
        } else {
            e->pending[w++] = e->pending[i];
        }
    }
    e->n_pending = w;
    if (t > e->done_upto) e->done_upto = t;
    pthread_cond_broadcast(&e->cv);
}
static int emu_copy_fn(loader_device *d, const loader_dev_buf *dst, uint64_t off, const void *src, size_t n,
                       loader_ticket *ticket, aicfn_error *err) {
    (void)err;
    emu_dev *e = d->ctx;
    pthread_mutex_lock(&e->mu);
    if (e->n_pending == EMU_PENDING) emu_complete_locked(e, e->next);
    loader_ticket t = ++e->next;
    e->pending[e->n_pending++] = (emu_copy){(char *)dst->ptr + off, src, n, t};
    e->copies++;
    pthread_mutex_unlock(&e->mu);
    *ticket = t;
    return AICFN_OK;
}
static int emu_wait(loader_device *d, loader_ticket t, aicfn_error *err) {
    (void)err;
    emu_dev *e = d->ctx;
    pthread_mutex_lock(&e->mu);
    emu_complete_locked(e, t);
    pthread_mutex_unlock(&e->mu);
    return AICFN_OK;
}
static int emu_sync(loader_device *d, aicfn_error *err) {
    (void)err;
    emu_dev *e = d->ctx;
    pthread_mutex_lock(&e->mu);
    emu_complete_locked(e, e->next);
    pthread_mutex_unlock(&e->mu);
    return AICFN_OK;
}
static int emu_stage_acquire(loader_device *d, loader_staging *out, aicfn_error *err) {
    (void)err;
    emu_dev *e = d->ctx;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        for (int i = 0; i < EMU_STAGES; i++) {
            if (!e->busy[i]) {
                e->busy[i] = 1;
                if (++e->now_busy > e->max_busy) e->max_busy = e->now_busy;
                emu_complete_locked(e, e->stage_ticket[i]); /* its last copy must be done */
                pthread_mutex_unlock(&e->mu);
                out->ptr = e->stage[i];
                out->cap = e->cap;
                out->slot = i;
                return AICFN_OK;
            }
        }
        pthread_cond_wait(&e->cv, &e->mu);
    }
}
static void emu_stage_release(loader_device *d, loader_staging *s, loader_ticket t) {
    emu_dev *e = d->ctx;
    pthread_mutex_lock(&e->mu);
    e->stage_ticket[s->slot] = t;
    e->busy[s->slot] = 0;
    e->now_busy--;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}
static void emu_destroy(loader_device *d) {
    emu_dev *e = d->ctx;
    for (int i = 0; i < EMU_STAGES; i++)
        free(e->stage[i]);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
static const loader_device_ops emu_ops = {
    .name = emu_name,
    .is_host = emu_is_host,
    .alloc = emu_alloc,
    .free = emu_free,
    .mem_info = emu_mem_info,
    .copy_to_device = emu_copy_fn,
    .wait = emu_wait,
    .sync = emu_sync,
    .staging_acquire = emu_stage_acquire,
    .staging_release = emu_stage_release,
    .destroy = emu_destroy,
};

static loader_device *emu_open(size_t stage_cap) {
    loader_device *d = calloc(1, sizeof *d);
    emu_dev *e = calloc(1, sizeof *e);
    assert_non_null(d);
    assert_non_null(e);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->cap = stage_cap;
    for (int i = 0; i < EMU_STAGES; i++) {
        e->stage[i] = malloc(stage_cap);
        assert_non_null(e->stage[i]);
    }
    d->ops = &emu_ops;
    d->ctx = e;
    return d;
}

/* The device path: staging buffers big enough for a frame, and too small (bounce). */
static void device_path_bit_exact(void **state) {
    (void)state;
    aicfn_error err;
    char path[160];
    snprintf(path, sizeof path, "%s/emu.aicfn", fx.dir);
    pack(path, SNAP_FILTER_MODE_AUTO, 64u << 10);
    size_t caps[] = {64u << 10, 16u << 10};
    for (int ci = 0; ci < 2; ci++) {
        for (uint32_t threads = 1; threads <= 5; threads += 4) {
            loader_device *dev = emu_open(caps[ci]);
            emu_dev *e = dev->ctx;
            loader_load_opts o = {.threads = threads};
            loader_model *m = NULL;
            loader_timing t;
            assert_int_equal(loader_load_snapshot(dev, path, &o, &m, &t, &err), AICFN_OK);
            assert_false(loader_device_is_host(loader_model_device(m)));
            assert_exact(m); /* emu device memory is host-readable */
            assert_int_equal(e->bytes_copied, loader_model_manifest(m)->blob_bytes);
            assert_int_equal(e->n_pending, 0);
            assert_true(e->max_busy >= 1); /* the copies went through staging buffers */
            assert_int_equal(e->now_busy, 0); /* every staging buffer came back */
            loader_model_free(m);
            assert_int_equal(e->used, 0);
            /* A corrupt frame on the device path: error, nothing left, staging returned,
             * also the buffers of parts posted for a feeder that the failure stopped. */
            char bad[160];
            snprintf(bad, sizeof bad, "%s/emu-bad.aicfn", fx.dir);
            for (uint32_t fi = 1; fi + 1 < t.frames; fi++) {
                corrupt_copy(path, bad, fi, 1, 2);
                m = NULL;
                assert_int_equal(loader_load_snapshot(dev, bad, &o, &m, NULL, &err), AICFN_E_CORRUPT);
                assert_null(m);
                assert_int_equal(e->used, 0);
                assert_int_equal(e->now_busy, 0);
            }
            loader_device_close(dev);
        }
    }
}

/* The real CUDA device: the blob goes through the pinned staging buffers and the copy
 * streams (XXH3 checked on the staging bytes) and reads back bit-exact; a corrupt
 * frame fails with nothing left allocated; device memory returns to where it was. */
static void cuda_path_bit_exact(void **state) {
    (void)state;
    char why[256] = "";
    if (loader_cuda_device_count(why, sizeof why) == 0) {
        print_message("skipping: no usable CUDA device (%s)\n", why);
        skip();
    }
#ifdef AICFN_HAVE_CUDA
    aicfn_error err;
    loader_device *dev;
    assert_int_equal(loader_device_open("cuda", 0, &dev, &err), AICFN_OK);
    assert_false(loader_device_is_host(dev));
    assert_true(loader_device_has_staging(dev));
    char path[160], bad[160];
    snprintf(path, sizeof path, "%s/cuda.aicfn", fx.dir);
    snprintf(bad, sizeof bad, "%s/cuda-bad.aicfn", fx.dir);
    pack(path, SNAP_FILTER_MODE_AUTO, 320u << 10);
    uint64_t free_before = 0, free_after, total;
    uint32_t threads[] = {1, 4, 8};
    for (int ti = 0; ti < 3; ti++) {
        loader_load_opts o = {.threads = threads[ti]};
        loader_model *m = NULL;
        loader_timing t;
        assert_int_equal(loader_load_snapshot(dev, path, &o, &m, &t, &err), AICFN_OK);
        const snap_manifest *man = loader_model_manifest(m);
        assert_int_equal(t.raw_bytes, man->blob_bytes);
        for (int i = 0; i < NT; i++) {
            int k = loader_model_find_tensor(m, fx.names[i]);
            assert_true(k >= 0);
            unsigned char *back = malloc(fx.nbytes[i]);
            assert_non_null(back);
            assert_int_equal(cudaMemcpy(back, loader_model_tensor_ptr(m, (uint32_t)k), fx.nbytes[i],
                                        cudaMemcpyDeviceToHost),
                             cudaSuccess);
            assert_memory_equal(back, fx.data[i], fx.nbytes[i]);
            free(back);
        }
        loader_model_free(m);
        for (uint32_t fi = 1; fi + 1 < t.frames; fi++) {
            corrupt_copy(path, bad, fi, 1, 2);
            m = NULL;
            assert_int_equal(loader_load_snapshot(dev, bad, &o, &m, NULL, &err), AICFN_E_CORRUPT);
            assert_null(m);
        }
        /* The first round warms the context (the runtime's own buffers) up. */
        if (ti == 0) assert_int_equal(loader_device_mem_info(dev, &free_before, &total, &err), AICFN_OK);
    }
    assert_int_equal(loader_device_mem_info(dev, &free_after, &total, &err), AICFN_OK);
    print_message("cuda: %s, free %llu -> %llu of %llu bytes\n", loader_device_name(dev),
                  (unsigned long long)free_before, (unsigned long long)free_after, (unsigned long long)total);
    /* Every model and failed load freed (an allocation is >= 2 MiB; 1 MiB of slack). */
    assert_true(free_after + (1u << 20) >= free_before);
    loader_device_close(dev);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bit_exact_threads_and_filters),
        cmocka_unit_test(corrupt_frame_names_frame_and_tensor),
        cmocka_unit_test(truncated_file_is_io_error),
        cmocka_unit_test(allocation_failure_and_max_bytes),
        cmocka_unit_test(cache_with_pipeline_ops),
        cmocka_unit_test(device_path_bit_exact),
        cmocka_unit_test(cuda_path_bit_exact),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
