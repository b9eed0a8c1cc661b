/* bench/load: cold-load throughput of the pipeline into a device (host by default),
 * against the codec limit and a plain read() + copy of the uncompressed file, measured
 * in one run.
 *
 * Models: all-MiniLM-L6-v2 in fp32 and bf16 (bench/.cache/minilm*, from
 * bench/setup_data.sh) and a generated 1 GiB bf16 model with N(0, 0.02) weights
 * (bench/.cache/gen-1g-bf16.safetensors, written here on first use). Each is packed once
 * into bench/.cache/load/NAME.aicsnap with the default options.
 * For 1 and 2 threads (--threads LIST for others) it prints, per model:
 *   load      raw GB/s of loader_load_snapshot into the device (best of reps)
 *   limit     the same frames (already in memory) decompressed by the same number of
 *             threads into a plain per-thread buffer, nothing else: the codec limit
 *             (the output stays in cache: no load, which must write every raw byte to
 *             memory, can reach it)
 *   unfilter_limit  the limit plus reversing the filter into a second per-thread buffer
 *   plain_verify  that plus an XXH3 of every frame's raw bytes: the computing a verified
 *             load must do (decompress, unfilter, checksum), done plainly one step after
 *             the other with every byte staying in cache. Not a limit: the pipeline fuses
 *             the unfilter and the checksum per 1 KiB piece, so a ratio above 1 says it
 *             does that work, plus writing the model to memory, faster than the plain
 *             steps do it in cache
 *   limit_whole_buffer  the limit's decompression into one plain model-sized buffer (malloc'd, faulted
 *             before timing), each frame at its raw offset, nothing else: the codec
 *             writing the model to memory, as a load must, without the pipeline's
 *             unfilter, checksums and device
 *   baseline  read() of the uncompressed safetensors file + memcpy into a fresh host
 *             device allocation (one thread); on a device with staging buffers (CUDA),
 *             read() into a pinned staging buffer + the device copy from it
 * and the ratios load/limit (target >= 0.85) and load/baseline. Every timed load and
 * baseline includes its device allocation (alloc_in_timed_region). The host device
 * keeps the last freed large mapping for the next allocation (device_host.c), so
 * repeated loads reuse already faulted memory, as on a GPU with a caching allocator;
 * fresh_device_gb_s is one load into a new device (a new mapping, pre-faulted inside
 * the timed alloc) for comparison; pread_frames_gb_s is the same load reading frames
 * with pread into a buffer instead of decompressing in place from the file's mapping
 * (the loader's fallback), measured in the same repetitions. Files are warm in the
 * page cache for the main figures (read once before timing); a cold pass after
 * posix_fadvise(DONTNEED) on both files is printed too.
 * --device SPEC loads into another device (loader_device_open: cuda, cuda:N); the
 * host-only fresh_device_gb_s is then the same load into a newly opened device.
 * Usage: zig build bench-load -Doptimize=ReleaseFast -- [--reps N] [--no-gen] [--chunk BYTES]
 *        [--device SPEC] [--threads 1,2,8] [extra.safetensors...]
 *        (--chunk packs with that frame size, into NAME-chunkN.aicsnap)
 * Output: JSON lines, the last {"bench": "load", "summary": {...}}. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL /* the same inlined XXH3 as the loader's */
#include <xxhash.h>

#include "common/clock.h"
#include "common/units.h"
#include "loader/device.h"
#include "loader/pipeline.h"
#include "snapshots/snapshot.h"
#include "snapshots/writer.h"

#define CACHE_DIR "bench/.cache"
#define GEN_PATH CACHE_DIR "/gen-1g-bf16.safetensors"
#define GEN_BYTES (1ull << 30)
#define MAX_THREADS 64
#define MAX_THREAD_COUNTS 8

static const char *g_device = "host";                  /* --device */
static uint32_t g_threads[MAX_THREAD_COUNTS] = {1, 2}; /* --threads */
static int g_n_threads = 2;

/* Opens the device under test with room for a few copies of a `blob`-byte model. */
static int open_device(uint64_t blob, loader_device **dev, aicfn_error *err) {
    return loader_device_open(g_device, 4 * blob + (64u << 20), dev, err);
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

static uint64_t file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static uint64_t file_mtime(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_mtime : 0;
}

/* ---- The generated model: 32 tensors of 4096x4096 bf16 with N(0, 0.02) values ---- */
static uint64_t gen_rng = 0x9e3779b97f4a7c15ull;
static inline uint64_t gen_next(void) {
    gen_rng ^= gen_rng << 13;
    gen_rng ^= gen_rng >> 7;
    gen_rng ^= gen_rng << 17;
    return gen_rng;
}

static int generate_model(void) {
    const int n = 32;
    const int64_t rows = 4096, cols = 4096;
    const uint64_t each = (uint64_t)rows * (uint64_t)cols * 2;
    char header[8192];
    size_t h = 0;
    h += (size_t)snprintf(header + h, sizeof header - h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++)
        h += (size_t)snprintf(header + h, sizeof header - h,
                              ",\"model.layers.%d.weight\":{\"dtype\":\"BF16\",\"shape\":[%lld,%lld],"
                              "\"data_offsets\":[%llu,%llu]}",
                              i, (long long)rows, (long long)cols, (unsigned long long)(each * (uint64_t)i),
                              (unsigned long long)(each * (uint64_t)(i + 1)));
    h += (size_t)snprintf(header + h, sizeof header - h, "}");
    while (h % 8)
        header[h++] = ' ';
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", GEN_PATH, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return -1;
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)h >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, h, f);
    size_t buf_elems = 1u << 20;
    uint16_t *buf = malloc(buf_elems * 2);
    if (!buf) {
        fclose(f);
        return -1;
    }
    for (uint64_t done = 0; done < GEN_BYTES; done += buf_elems * 2) {
        for (size_t k = 0; k < buf_elems; k += 2) {
            /* Box-Muller: two normals from two uniforms */
            uint64_t r = gen_next();
            double u1 = ((double)(r >> 11) + 1.0) / 9007199254740993.0;
            double u2 = (double)(gen_next() >> 11) / 9007199254740992.0;
            double m = sqrt(-2.0 * log(u1)) * 0.02;
            float a = (float)(m * cos(6.283185307179586 * u2)), b = (float)(m * sin(6.283185307179586 * u2));
            uint32_t ba, bb;
            memcpy(&ba, &a, 4);
            memcpy(&bb, &b, 4);
            buf[k] = (uint16_t)((ba + 0x7fff + ((ba >> 16) & 1)) >> 16); /* round to nearest even */
            buf[k + 1] = (uint16_t)((bb + 0x7fff + ((bb >> 16) & 1)) >> 16);
        }
        if (fwrite(buf, 2, buf_elems, f) != buf_elems) {
            free(buf);
            fclose(f);
            return -1;
        }
    }
    free(buf);
    if (fclose(f) != 0) return -1;
    return rename(tmp, GEN_PATH);
}

/* ---- Codec limit: the same frames, in memory, decompressed into per-thread buffers ---- */
typedef struct limit_job {
    const snap_reader *r;
    unsigned char **comp; /* per frame */
    uint32_t n;
    _Atomic uint32_t next;
    size_t chunk;
    int unfilter;         /* 1: also reverse the filter into a second plain buffer */
    int checksum;         /* 1: also XXH3 each frame's raw bytes (with unfilter: plain_verify) */
    unsigned char *whole; /* not NULL: frames go to whole + raw offset instead */
    uint64_t *sink;       /* per frame: its checksum (checksum mode) */
    _Atomic int failed;
} limit_job;

static void *limit_thread(void *arg) {
    limit_job *j = arg;
    snap_dctx *d = NULL;
    aicfn_error err;
    unsigned char *out = malloc(j->chunk), *out2 = malloc(j->chunk);
    if (!out || !out2 || snap_dctx_create(&d, &err) != AICFN_OK) {
        atomic_store(&j->failed, 1);
        free(out);
        free(out2);
        return NULL;
    }
    memset(out, 0, j->chunk);
    memset(out2, 0, j->chunk);
    for (;;) {
        uint32_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n) break;
        unsigned char *dst = j->whole ? j->whole + snap_reader_frame(j->r, i)->raw_offset : out;
        if (snap_frame_decompress(d, j->r, i, j->comp[i], dst, &err) != AICFN_OK) {
            fprintf(stderr, "limit: %s\n", err.msg);
            atomic_store(&j->failed, 1);
            break;
        }
        int filtered = snap_frame_is_filtered(j->r, i);
        if (j->unfilter && filtered && snap_frame_unfilter(j->r, i, out, out2, &err) != AICFN_OK) {
            atomic_store(&j->failed, 1);
            break;
        }
        if (j->checksum) /* the compiler may not drop it: the result is kept */
            j->sink[i] = XXH3_64bits(filtered ? out2 : out, snap_reader_frame(j->r, i)->raw_size);
    }
    snap_dctx_free(d);
    free(out2);
    free(out);
    return NULL;
}

static double codec_limit_us(const snap_reader *r, unsigned char **comp, uint32_t threads, int unfilter,
                             int checksum, unsigned char *whole) {
    const snap_manifest *m = snap_reader_manifest(r);
    limit_job j = {.r = r,
                   .comp = comp,
                   .n = snap_reader_frame_count(r),
                   .chunk = m->chunk_bytes,
                   .unfilter = unfilter,
                   .checksum = checksum,
                   .whole = whole};
    uint64_t *sink = checksum ? calloc(j.n ? j.n : 1, sizeof *sink) : NULL;
    if (checksum && !sink) return -1.0;
    j.sink = sink;
    atomic_store(&j.next, 0);
    atomic_store(&j.failed, 0);
    pthread_t th[MAX_THREADS];
    uint64_t t0 = clock_now_us();
    for (uint32_t i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, limit_thread, &j);
    for (uint32_t i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    uint64_t dt = clock_now_us() - t0;
    free(sink);
    return atomic_load(&j.failed) ? -1.0 : (double)dt;
}

/* ---- Baseline: read() of the uncompressed file + copy into a fresh allocation ---- */
/* Reads `fd` into the device through its staging buffers: read() into a pinned buffer,
 * then the device copy from it; the buffers rotate, so reads overlap earlier copies. */
static uint64_t read_via_staging(loader_device *dev, int fd, const loader_dev_buf *dst, uint64_t size) {
    aicfn_error err;
    uint64_t off = 0;
    while (off < size) {
        loader_staging s;
        if (loader_device_staging_acquire(dev, &s, &err) != AICFN_OK) break;
        size_t want = size - off < s.cap ? (size_t)(size - off) : s.cap;
        ssize_t n = read(fd, s.ptr, want);
        loader_ticket t = 0;
        if (n <= 0 || loader_device_copy_to_device(dev, dst, off, s.ptr, (size_t)n, &t, &err) != AICFN_OK) {
            loader_device_staging_release(dev, &s, 0);
            break;
        }
        loader_device_staging_release(dev, &s, t);
        off += (uint64_t)n;
    }
    return loader_device_sync(dev, &err) == AICFN_OK ? off : 0;
}

static double baseline_us(loader_device *dev, const char *path, uint64_t *bytes) {
    uint64_t size = file_size(path);
    *bytes = size;
    aicfn_error err;
    uint64_t t0 = clock_now_us();
    loader_dev_buf dst;
    if (loader_device_alloc(dev, size, &dst, &err) != AICFN_OK) return -1;
    int fd = open(path, O_RDONLY);
    uint64_t off = 0;
    if (fd >= 0 && loader_device_has_staging(dev)) {
        off = read_via_staging(dev, fd, &dst, size);
    } else if (fd >= 0 && loader_device_is_host(dev)) {
        size_t bs = 4u << 20;
        unsigned char *buf = malloc(bs);
        while (buf && off < size) {
            ssize_t n = read(fd, buf, bs);
            if (n <= 0) break;
            memcpy((unsigned char *)dst.ptr + off, buf, (size_t)n);
            off += (uint64_t)n;
        }
        free(buf);
    }
    uint64_t dt = clock_now_us() - t0;
    if (fd >= 0) close(fd);
    loader_device_free(dev, &dst);
    return off == size ? (double)dt : -1.0;
}

static void drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

static void warm(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    static unsigned char buf[1 << 20];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
}

static uint32_t g_chunk; /* --chunk: raw bytes per frame; 0 = the packer's default */

/* Packs `st` into `out` unless `out` is newer and was packed with the frame size wanted
 * (the default changes over time; a stale pack would measure the old layout). */
static int ensure_packed(const char *st, const char *out) {
    snap_pack_opts o;
    snap_pack_opts_init(&o);
    if (g_chunk) o.chunk = g_chunk;
    if (file_exists(out) && file_mtime(out) >= file_mtime(st)) {
        snap_reader *r = NULL;
        aicfn_error e;
        int same = snap_open(out, &r, &e) == AICFN_OK && snap_reader_manifest(r)->chunk_bytes == o.chunk;
        snap_close(r);
        if (same) return 0;
    }
    const char *in[] = {st};
    aicfn_error err;
    if (snap_pack(in, 1, out, &o, NULL, &err) != AICFN_OK) {
        fprintf(stderr, "bench-load: packing %s: %s\n", st, err.msg);
        return -1;
    }
    return 0;
}

typedef struct bench_input {
    const char *name, *path;
} bench_input;

typedef struct model_result {
    char name[64];
    double load_gbs[MAX_THREAD_COUNTS], limit_gbs[MAX_THREAD_COUNTS], ratio_limit[MAX_THREAD_COUNTS],
        ratio_base[MAX_THREAD_COUNTS], ratio_whole[MAX_THREAD_COUNTS],
        ratio_plain_verify[MAX_THREAD_COUNTS];
    double base_gbs;
} model_result;

static int bench_model(const char *name, const char *st, int reps, model_result *res) {
    char snap[256];
    if (g_chunk)
        snprintf(snap, sizeof snap, CACHE_DIR "/load/%s-chunk%u.aicsnap", name, g_chunk);
    else
        snprintf(snap, sizeof snap, CACHE_DIR "/load/%s.aicsnap", name);
    if (ensure_packed(st, snap) != 0) return -1;
    aicfn_error err;
    snap_reader *r;
    if (snap_open(snap, &r, &err) != AICFN_OK) {
        fprintf(stderr, "bench-load: %s\n", err.msg);
        return -1;
    }
    const snap_manifest *m = snap_reader_manifest(r);
    uint32_t nf = snap_reader_frame_count(r);
    unsigned char **comp = calloc(nf, sizeof *comp);
    uint64_t comp_total = 0;
    for (uint32_t i = 0; i < nf; i++) {
        const snap_frame *f = snap_reader_frame(r, i);
        comp[i] = malloc(f->comp_size);
        if (!comp[i] || snap_frame_read(r, i, comp[i], f->comp_size, &err) != AICFN_OK) {
            fprintf(stderr, "bench-load: %s\n", err.msg);
            return -1;
        }
        comp_total += f->comp_size;
    }
    loader_device *dev;
    if (open_device(m->blob_bytes, &dev, &err) != AICFN_OK) {
        fprintf(stderr, "bench-load: %s\n", err.msg);
        return -1;
    }
    snprintf(res->name, sizeof res->name, "%s", name);
    unsigned char *whole = malloc(m->blob_bytes ? m->blob_bytes : 1);
    if (!whole) {
        fprintf(stderr, "bench-load: no memory for a %llu-byte buffer\n", (unsigned long long)m->blob_bytes);
        return -1;
    }
    memset(whole, 0, m->blob_bytes); /* faulted before any timing */
    warm(snap);
    warm(st);
    uint64_t st_bytes = 0;
    double best_base = 1e30;
    for (int k = 0; k < reps; k++) {
        double b = baseline_us(dev, st, &st_bytes);
        if (b > 0 && b < best_base) best_base = b;
    }
    res->base_gbs = (double)st_bytes / best_base / 1e3;
    printf(
        "{\"bench\":\"load\",\"model\":\"%s\",\"measure\":\"baseline_read_memcpy\",\"page_cache\":\"warm\","
        "\"threads\":1,\"bytes\":%llu,\"us\":%.0f,\"gb_s\":%.3f}\n",
        name, (unsigned long long)st_bytes, best_base, res->base_gbs);
    for (int ti = 0; ti < g_n_threads; ti++) {
        uint32_t threads = g_threads[ti];
        double best_load = 1e30, best_lim = 1e30, best_limf = 1e30, best_limw = 1e30, best_plainv = 1e30, best_pread = 1e30;
        loader_timing bt;
        memset(&bt, 0, sizeof bt);
        /* One load into a device of its own: a fresh mapping, pre-faulted by the alloc. */
        double fresh_us = -1;
        loader_device *fdev = NULL;
        if (open_device(m->blob_bytes, &fdev, &err) == AICFN_OK) {
            loader_load_opts o = {.threads = threads};
            loader_model *lm = NULL;
            loader_timing t;
            if (loader_load_snapshot(fdev, snap, &o, &lm, &t, &err) == AICFN_OK)
                fresh_us = (double)t.total_us;
            loader_model_free(lm);
            loader_device_close(fdev);
        }
        for (int k = 0; k < reps; k++) {
            double lim = codec_limit_us(r, comp, threads, 0, 0, NULL);
            if (lim > 0 && lim < best_lim) best_lim = lim;
            lim = codec_limit_us(r, comp, threads, 1, 0, NULL);
            if (lim > 0 && lim < best_limf) best_limf = lim;
            lim = codec_limit_us(r, comp, threads, 1, 1, NULL);
            if (lim > 0 && lim < best_plainv) best_plainv = lim;
            lim = codec_limit_us(r, comp, threads, 0, 0, whole);
            if (lim > 0 && lim < best_limw) best_limw = lim;
            loader_load_opts o = {.threads = threads};
            loader_model *lm = NULL;
            loader_timing t;
            if (loader_load_snapshot(dev, snap, &o, &lm, &t, &err) != AICFN_OK) {
                fprintf(stderr, "bench-load: %s\n", err.msg);
                return -1;
            }
            loader_model_free(lm);
            if ((double)t.total_us < best_load) {
                best_load = (double)t.total_us;
                bt = t;
            }
            /* The same load reading frames with pread instead of the mapping. */
            o.pread_frames = 1;
            lm = NULL;
            if (loader_load_snapshot(dev, snap, &o, &lm, &t, &err) != AICFN_OK) {
                fprintf(stderr, "bench-load: %s\n", err.msg);
                return -1;
            }
            loader_model_free(lm);
            if ((double)t.total_us < best_pread) best_pread = (double)t.total_us;
        }
        double raw = (double)m->blob_bytes;
        res->load_gbs[ti] = raw / best_load / 1e3;
        res->limit_gbs[ti] = raw / best_lim / 1e3;
        res->ratio_limit[ti] = best_lim / best_load;
        res->ratio_base[ti] = best_base / best_load * (raw / (double)st_bytes);
        res->ratio_whole[ti] = best_limw / best_load;
        res->ratio_plain_verify[ti] = best_plainv / best_load;
        printf(
            "{\"bench\":\"load\",\"model\":\"%s\",\"device\":\"%s\",\"measure\":\"load\",\"page_cache\":"
            "\"warm\",\"threads\":%u,"
            "\"raw_bytes\":%llu,\"compressed_bytes\":%llu,\"frames\":%u,\"total_us\":%llu,\"gb_s\":%.3f,"
            "\"codec_limit_gb_s\":%.3f,\"ratio_vs_limit\":%.3f,\"codec_unfilter_limit_gb_s\":%.3f,"
            "\"ratio_vs_codec_unfilter_limit\":%.3f,\"plain_verify_gb_s\":%.3f,"
            "\"ratio_vs_plain_verify\":%.3f,\"codec_limit_whole_buffer_gb_s\":%.3f,"
            "\"ratio_vs_whole_buffer_limit\":%.3f,\"ratio_vs_read_memcpy\":%.3f,"
            "\"thread_us\":{\"read\":%llu,\"decompress\":%llu,\"filter\":%llu,\"verify\":%llu,\"copy\":%llu,"
            "\"wait\":%llu},\"alloc_us\":%llu,\"open_us\":%llu,\"alloc_in_timed_region\":true,"
            "\"fresh_device_gb_s\":%.3f,\"pread_frames_gb_s\":%.3f}\n",
            name, loader_device_name(dev), threads, (unsigned long long)m->blob_bytes,
            (unsigned long long)comp_total, nf, (unsigned long long)bt.total_us, res->load_gbs[ti],
            res->limit_gbs[ti], res->ratio_limit[ti], raw / best_limf / 1e3, best_limf / best_load,
            raw / best_plainv / 1e3, res->ratio_plain_verify[ti],
            raw / best_limw / 1e3, res->ratio_whole[ti], res->ratio_base[ti], (unsigned long long)bt.read_us,
            (unsigned long long)bt.decompress_us, (unsigned long long)bt.filter_us,
            (unsigned long long)bt.verify_us, (unsigned long long)bt.copy_us, (unsigned long long)bt.wait_us,
            (unsigned long long)bt.alloc_us, (unsigned long long)bt.open_us,
            fresh_us > 0 ? raw / fresh_us / 1e3 : 0.0, raw / best_pread / 1e3);
        fflush(stdout);
    }
    /* One cold pass: both files dropped from the page cache first. */
    drop_cache(snap);
    loader_load_opts o = {.threads = 2};
    loader_model *lm = NULL;
    loader_timing t;
    if (loader_load_snapshot(dev, snap, &o, &lm, &t, &err) == AICFN_OK) {
        loader_model_free(lm);
        drop_cache(st);
        double b = baseline_us(dev, st, &st_bytes);
        printf("{\"bench\":\"load\",\"model\":\"%s\",\"measure\":\"cold\",\"page_cache\":\"dropped "
               "(posix_fadvise DONTNEED)\",\"threads\":2,\"load_gb_s\":%.3f,\"read_memcpy_gb_s\":%.3f,"
               "\"ratio_vs_read_memcpy\":%.3f}\n",
               name, (double)m->blob_bytes / (double)t.total_us / 1e3, (double)st_bytes / b / 1e3,
               (b / (double)t.total_us) * ((double)m->blob_bytes / (double)st_bytes));
    }
    for (uint32_t i = 0; i < nf; i++)
        free(comp[i]);
    free(comp);
    free(whole);
    snap_close(r);
    loader_device_close(dev);
    return 0;
}

int main(int argc, char **argv) {
    int reps = 3, gen = 1;
    const char *extra[8];
    int n_extra = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf(
                "usage: bench-load [--reps N] [--no-gen] [--chunk BYTES] [--device SPEC] [--threads 1,2,8]\n"
                "                  [extra.safetensors...]\n"
                "JSON lines: per model and thread count the load's GB/s against the codec limit (per-thread\n"
                "buffer; target 0.85), the codec into one model-sized buffer, and read()+memcpy; then a\n"
                "summary. See the comment at the top of bench/load/main.c.\n");
            return 0;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--no-gen") == 0)
            gen = 0;
        else if (strcmp(argv[i], "--chunk") == 0 && i + 1 < argc) {
            uint64_t c = 0;
            if (units_parse_size(argv[++i], &c, NULL) != AICFN_OK || c == 0 || c > UINT32_MAX) {
                fprintf(stderr, "bench-load: --chunk: want a size such as 1MiB\n");
                return 2;
            }
            g_chunk = (uint32_t)c;
        } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            g_device = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            g_n_threads = 0;
            for (char *tok = strtok(argv[++i], ","); tok; tok = strtok(NULL, ",")) {
                long t = strtol(tok, NULL, 10);
                if (t < 1 || t > MAX_THREADS || g_n_threads == MAX_THREAD_COUNTS) {
                    fprintf(stderr, "bench-load: --threads: want up to %d counts in 1..%d, such as 1,2,8\n",
                            MAX_THREAD_COUNTS, MAX_THREADS);
                    return 2;
                }
                g_threads[g_n_threads++] = (uint32_t)t;
            }
            if (g_n_threads == 0) return 2;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "bench-load: unknown option '%s' (--help)\n", argv[i]);
            return 2;
        } else if (n_extra < 8)
            extra[n_extra++] = argv[i];
    }
    if (reps < 1) reps = 1;
    mkdir(CACHE_DIR, 0755);
    mkdir(CACHE_DIR "/load", 0755);
    const char *minilm = CACHE_DIR "/minilm/model.safetensors";
    const char *minilm16 = CACHE_DIR "/minilm-bf16/model.safetensors";
    if ((!file_exists(minilm) || !file_exists(minilm16)) && file_exists("bench/setup_data.sh")) {
        fprintf(stderr, "bench-load: fetching MiniLM with bench/setup_data.sh\n");
        if (system("bash bench/setup_data.sh >&2") != 0)
            fprintf(stderr, "bench-load: setup_data.sh failed\n");
    }
    if (gen && !file_exists(GEN_PATH)) {
        fprintf(stderr, "bench-load: generating %s (1 GiB bf16, N(0, 0.02))\n", GEN_PATH);
        if (generate_model() != 0) {
            fprintf(stderr, "bench-load: generating the model failed: %s\n", strerror(errno));
            return 1;
        }
    }
    bench_input models[12];
    int nm = 0;
    if (file_exists(minilm))
        models[nm++] = (bench_input){"minilm-fp32", minilm};
    else
        printf("{\"bench\":\"load\",\"skipped\":\"%s missing (run bench/setup_data.sh)\"}\n", minilm);
    if (file_exists(minilm16))
        models[nm++] = (bench_input){"minilm-bf16", minilm16};
    else
        printf("{\"bench\":\"load\",\"skipped\":\"%s missing (run bench/setup_data.sh)\"}\n", minilm16);
    if (gen) models[nm++] = (bench_input){"gen-1g-bf16", GEN_PATH};
    for (int i = 0; i < n_extra; i++)
        models[nm++] = (bench_input){extra[i], extra[i]};
    model_result res[12];
    memset(res, 0, sizeof res);
    int ok = 0;
    for (int i = 0; i < nm; i++) {
        char nm_safe[64];
        snprintf(nm_safe, sizeof nm_safe, "%s", models[i].name);
        for (char *p = nm_safe; *p; p++)
            if (*p == '/' || *p == '.') *p = '_';
        if (bench_model(nm_safe, models[i].path, reps, &res[i]) == 0)
            ok++;
        else
            return 1;
    }
    printf("{\"bench\":\"load\",\"summary\":{\"device\":\"%s\",\"page_cache\":\"warm\",\"reps\":%d,"
           "\"target_ratio_vs_limit\":0.85",
           g_device, reps);
    for (int i = 0; i < nm; i++) {
        printf(",\"%s\":{\"read_memcpy_gb_s\":%.3f", res[i].name, res[i].base_gbs);
        for (int ti = 0; ti < g_n_threads; ti++)
            printf(",\"t%u_gb_s\":%.3f,\"t%u_ratio_vs_limit\":%.3f,\"t%u_ratio_vs_plain_verify\":%.3f,"
                   "\"t%u_ratio_vs_whole_buffer_limit\":%.3f,\"t%u_ratio_vs_read_memcpy\":%.3f",
                   g_threads[ti], res[i].load_gbs[ti], g_threads[ti], res[i].ratio_limit[ti], g_threads[ti],
                   res[i].ratio_plain_verify[ti], g_threads[ti], res[i].ratio_whole[ti], g_threads[ti],
                   res[i].ratio_base[ti]);
        printf("}");
    }
    printf("}}\n");
    return ok == nm ? 0 : 1;
}
