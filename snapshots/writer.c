/* writer.c: `snapshot pack`: safetensors in, snapshot file out (writer.h).
 *
 * Threads: the calling thread lays out the blob, chooses filters, then writes frames in
 * order while a pool of workers (one ZSTD_CCtx each) reads, filters and compresses frames
 * ahead of it, at most 2 x threads frames in flight. The calling thread also hashes each
 * tensor's raw bytes (XXH3, in blob order) as frames arrive, and rewrites the manifest,
 * whose size does not depend on the hashes, once they are known.
 * Not for: reading snapshots (reader.c) or parsing safetensors (safetensors.c). */
#include "snapshots/writer.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "common/clock.h"
#include "common/dtype.h"
#include "common/tunables.h"
#include "snapshots/filter.h"
#include "snapshots/format.h"
#include "snapshots/snapshot.h"
#include "snapshots/tmpfile.h"

#define WR_MIN_RUN (16u << 10) /* runs shorter than this join their neighbour's zstd frame */
#define WR_SAMPLE (64u << 10)  /* bytes of a tensor that `auto` compresses both ways */

typedef struct wr_tensor {
    const snap_st_tensor *src;
    uint32_t index; /* in the set */
    uint64_t offset;
    snap_filter filter;
    uint64_t xxh3;
} wr_tensor;

typedef struct wr_run {
    size_t off, len;
    int level;
} wr_run;

typedef struct wr_slot {
    int done;
    int rc;
    aicfn_error err;
    unsigned char *raw;  /* the frame's raw bytes (kept for hashing) */
    unsigned char *comp; /* compressed bytes */
    size_t comp_cap, comp_len;
} wr_slot;

typedef struct wr_job {
    const snap_st_set *set;
    wr_tensor *tensors;
    uint32_t n_tensors;
    uint64_t blob_bytes;
    uint32_t chunk;
    uint32_t n_frames;
    int level_other, level_exp, level_mant;

    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    uint32_t next_take, next_write, n_slots;
    int abort;
    wr_slot *slots;
} wr_job;

typedef struct wr_worker {
    wr_job *job;
    pthread_t thread;
    ZSTD_CCtx *cctx;
    unsigned char *filt;
    wr_run *runs;
    size_t runs_cap;
} wr_worker;

void snap_pack_opts_init(snap_pack_opts *o) {
    memset(o, 0, sizeof *o);
    o->level = AICFN_SNAP_DEFAULT_LEVEL;
    o->chunk = AICFN_SNAP_DEFAULT_CHUNK;
    o->filter = SNAP_FILTER_MODE_AUTO;
}

int snap_filter_mode_from_name(const char *name) {
    if (strcmp(name, "auto") == 0) return SNAP_FILTER_MODE_AUTO;
    if (strcmp(name, "none") == 0) return SNAP_FILTER_MODE_NONE;
    if (strcmp(name, "planes") == 0) return SNAP_FILTER_MODE_PLANES;
    return -1;
}

/* ---- Runs: the zstd frames inside one data frame -------------------------------------- */

/* Appends [off, off + len) at `level`, joining the previous run when the levels match or
 * either is short. A `boundary` (the start of a tensor segment) keeps two long runs apart,
 * so each tensor gets its own zstd frames (and its own entropy tables). */
static int wr_add_run(wr_run **runs, size_t *n, size_t *cap, size_t off, size_t len, int level,
                      int boundary) {
    if (len == 0) return 0;
    if (*n > 0) {
        wr_run *last = &(*runs)[*n - 1];
        int both_long = len >= WR_MIN_RUN && last->len >= WR_MIN_RUN;
        if (last->off + last->len == off && !(boundary && both_long) &&
            (last->level == level || len < WR_MIN_RUN || last->len < WR_MIN_RUN)) {
            if (last->len < WR_MIN_RUN && len >= WR_MIN_RUN) last->level = level;
            last->len += len;
            return 0;
        }
    }
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        wr_run *nr = realloc(*runs, nc * sizeof *nr);
        if (!nr) return -1;
        *runs = nr;
        *cap = nc;
    }
    (*runs)[(*n)++] = (wr_run){off, len, level};
    return 0;
}

/* Adds the runs of one filtered segment of `len` bytes at `off` (planes laid out by
 * snap_filter_forward). */
static int wr_add_planes(wr_run **runs, size_t *n, size_t *cap, size_t off, size_t len, unsigned planes,
                         int level_exp, int level_mant) {
    size_t plane = len / planes;
    if (wr_add_run(runs, n, cap, off, plane, level_exp, 1)) return -1;
    for (unsigned k = 1; k < planes; k++)
        if (wr_add_run(runs, n, cap, off + k * plane, plane, level_mant, 0)) return -1;
    return 0;
}

/* Compresses each run of `src` as its own zstd frame into *dst (grown as needed). */
static int wr_compress_runs(ZSTD_CCtx *cctx, const unsigned char *src, const wr_run *runs, size_t n_runs,
                            unsigned char **dst, size_t *cap, size_t *out_len, aicfn_error *err) {
    size_t need = 0;
    for (size_t i = 0; i < n_runs; i++)
        need += ZSTD_compressBound(runs[i].len);
    if (need > *cap) {
        unsigned char *nd = realloc(*dst, need);
        if (!nd) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for %zu compressed bytes", need);
        *dst = nd;
        *cap = need;
    }
    size_t pos = 0;
    for (size_t i = 0; i < n_runs; i++) {
        size_t r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, runs[i].level);
        if (!ZSTD_isError(r))
            r = ZSTD_compress2(cctx, *dst + pos, *cap - pos, src + runs[i].off, runs[i].len);
        if (ZSTD_isError(r))
            return aicfn_error_set(err, AICFN_E_INTERNAL, "zstd compression failed: %s",
                                   ZSTD_getErrorName(r));
        pos += r;
    }
    *out_len = pos;
    return AICFN_OK;
}

/* ---- Frames ------------------------------------------------------------------------- */

/* First tensor whose end lies past `pos` (ends are non-decreasing in blob order). */
static uint32_t wr_first_tensor(const wr_job *job, uint64_t pos) {
    uint32_t lo = 0, hi = job->n_tensors;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const wr_tensor *t = &job->tensors[mid];
        if (t->offset + t->src->nbytes <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int wr_do_frame(wr_worker *w, uint32_t f, wr_slot *slot, aicfn_error *err) {
    wr_job *job = w->job;
    uint64_t fo = (uint64_t)f * job->chunk;
    size_t fs = (size_t)((job->blob_bytes - fo) < job->chunk ? (job->blob_bytes - fo) : job->chunk);
    size_t n_runs = 0, cursor = 0;
    for (uint32_t ti = wr_first_tensor(job, fo); ti < job->n_tensors; ti++) {
        const wr_tensor *t = &job->tensors[ti];
        if (t->offset >= fo + fs) break;
        uint64_t s = t->offset > fo ? t->offset : fo, e = t->offset + t->src->nbytes;
        if (e > fo + fs) e = fo + fs;
        if (e <= s) continue;
        size_t a = (size_t)(s - fo), len = (size_t)(e - s);
        if (a > cursor) {
            memset(slot->raw + cursor, 0, a - cursor);
            memset(w->filt + cursor, 0, a - cursor);
            if (wr_add_run(&w->runs, &n_runs, &w->runs_cap, cursor, a - cursor, job->level_other, 0))
                goto nomem;
        }
        int rc = snap_st_read(job->set, t->index, s - t->offset, slot->raw + a, len, err);
        if (rc) return rc;
        if (t->filter == SNAP_FILTER_PLANES) {
            snap_filter_forward(t->src->dtype, slot->raw + a, len, w->filt + a);
            if (wr_add_planes(&w->runs, &n_runs, &w->runs_cap, a, len, snap_filter_planes_of(t->src->dtype),
                              job->level_exp, job->level_mant))
                goto nomem;
        } else {
            memcpy(w->filt + a, slot->raw + a, len);
            if (wr_add_run(&w->runs, &n_runs, &w->runs_cap, a, len, job->level_other, 1)) goto nomem;
        }
        cursor = a + len;
    }
    if (fs > cursor) {
        memset(slot->raw + cursor, 0, fs - cursor);
        memset(w->filt + cursor, 0, fs - cursor);
        if (wr_add_run(&w->runs, &n_runs, &w->runs_cap, cursor, fs - cursor, job->level_other, 0)) goto nomem;
    }
    return wr_compress_runs(w->cctx, w->filt, w->runs, n_runs, &slot->comp, &slot->comp_cap, &slot->comp_len,
                            err);
nomem:
    return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for frame %u", f);
}

static void *wr_worker_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:pack");
    wr_worker *w = arg;
    wr_job *job = w->job;
    for (;;) {
        pthread_mutex_lock(&job->mu);
        while (!job->abort && job->next_take < job->n_frames &&
               job->next_take >= job->next_write + job->n_slots)
            pthread_cond_wait(&job->work_cv, &job->mu);
        if (job->abort || job->next_take >= job->n_frames) {
            pthread_mutex_unlock(&job->mu);
            return NULL;
        }
        uint32_t f = job->next_take++;
        wr_slot *slot = &job->slots[f % job->n_slots];
        pthread_mutex_unlock(&job->mu);

        aicfn_error e;
        aicfn_error_clear(&e);
        int rc = wr_do_frame(w, f, slot, &e);

        pthread_mutex_lock(&job->mu);
        slot->rc = rc;
        slot->err = e;
        slot->done = 1;
        pthread_cond_broadcast(&job->done_cv);
        pthread_mutex_unlock(&job->mu);
    }
}

/* ---- Filter choice -------------------------------------------------------------------- */

static int wr_choose_filters(const snap_st_set *set, wr_tensor *ts, uint32_t n, snap_filter_mode mode,
                             int level_other, int level_exp, int level_mant, aicfn_error *err) {
    if (mode == SNAP_FILTER_MODE_NONE) return AICFN_OK;
    ZSTD_CCtx *cctx = NULL;
    unsigned char *raw = NULL, *filt = NULL, *comp = NULL;
    size_t comp_cap = 0, n_runs = 0, runs_cap = 0;
    wr_run *runs = NULL;
    int rc = AICFN_OK;
    for (uint32_t i = 0; i < n; i++) {
        aicfn_dtype dt = ts[i].src->dtype;
        unsigned planes = snap_filter_planes_of(dt);
        if (!planes || ts[i].src->nbytes == 0) continue;
        if (mode == SNAP_FILTER_MODE_PLANES) {
            ts[i].filter = SNAP_FILTER_PLANES;
            continue;
        }
        if (!cctx) {
            cctx = ZSTD_createCCtx();
            raw = malloc(WR_SAMPLE);
            filt = malloc(WR_SAMPLE);
            if (!cctx || !raw || !filt) {
                rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for the filter trial");
                break;
            }
        }
        uint64_t nb = ts[i].src->nbytes;
        size_t len = nb < WR_SAMPLE ? (size_t)nb : WR_SAMPLE;
        uint64_t off = ((nb - len) / 2) & ~(uint64_t)(AICFN_SNAP_ALIGN - 1); /* the middle, element-aligned */
        rc = snap_st_read(set, ts[i].index, off, raw, len, err);
        if (rc) break;
        size_t plain, filtered;
        n_runs = 0;
        if (wr_add_run(&runs, &n_runs, &runs_cap, 0, len, level_other, 1)) goto nomem;
        rc = wr_compress_runs(cctx, raw, runs, n_runs, &comp, &comp_cap, &plain, err);
        if (rc) break;
        snap_filter_forward(dt, raw, len, filt);
        n_runs = 0;
        if (wr_add_planes(&runs, &n_runs, &runs_cap, 0, len, planes, level_exp, level_mant)) goto nomem;
        rc = wr_compress_runs(cctx, filt, runs, n_runs, &comp, &comp_cap, &filtered, err);
        if (rc) break;
        ts[i].filter = filtered < plain ? SNAP_FILTER_PLANES : SNAP_FILTER_NONE;
    }
    goto out;
nomem:
    rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for the filter trial");
out:
    ZSTD_freeCCtx(cctx);
    free(raw);
    free(filt);
    free(comp);
    free(runs);
    return rc;
}

/* ---- Manifest ------------------------------------------------------------------------- */

static int wr_pack_str(msgpack_packer *pk, const char *s) {
    size_t l = strlen(s);
    return msgpack_pack_str(pk, l) | msgpack_pack_str_body(pk, s, l);
}

/* Encodes the manifest. Its size does not depend on the xxh3 values (fixed uint64). */
static int wr_manifest(msgpack_sbuffer *sb, const char *name, uint64_t blob_bytes, uint32_t chunk,
                       const wr_tensor *ts, uint32_t n) {
    msgpack_sbuffer_clear(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int bad = msgpack_pack_map(&pk, 5);
    bad |= wr_pack_str(&pk, "format") | msgpack_pack_uint32(&pk, SNAP_FORMAT_VERSION);
    bad |= wr_pack_str(&pk, "name") | wr_pack_str(&pk, name);
    bad |= wr_pack_str(&pk, "blob_bytes") | msgpack_pack_uint64(&pk, blob_bytes);
    bad |= wr_pack_str(&pk, "chunk") | msgpack_pack_uint32(&pk, chunk);
    bad |= wr_pack_str(&pk, "tensors") | msgpack_pack_array(&pk, n);
    for (uint32_t i = 0; i < n && !bad; i++) {
        const wr_tensor *t = &ts[i];
        bad |= msgpack_pack_map(&pk, 7);
        bad |= wr_pack_str(&pk, "name") | wr_pack_str(&pk, t->src->name);
        bad |= wr_pack_str(&pk, "dtype") | wr_pack_str(&pk, dtype_name(t->src->dtype));
        bad |= wr_pack_str(&pk, "shape") | msgpack_pack_array(&pk, t->src->ndim);
        for (uint32_t d = 0; d < t->src->ndim; d++)
            bad |= msgpack_pack_uint64(&pk, (uint64_t)t->src->shape[d]);
        bad |= wr_pack_str(&pk, "offset") | msgpack_pack_uint64(&pk, t->offset);
        bad |= wr_pack_str(&pk, "nbytes") | msgpack_pack_uint64(&pk, t->src->nbytes);
        bad |= wr_pack_str(&pk, "filter") | wr_pack_str(&pk, snap_filter_name(t->filter));
        bad |= wr_pack_str(&pk, "xxh3") | msgpack_pack_fix_uint64(&pk, t->xxh3);
    }
    return bad ? -1 : 0;
}

/* ---- Output ----------------------------------------------------------------------------- */

static int wr_write(int fd, const void *p, size_t len, const char *path, aicfn_error *err) {
    const unsigned char *b = p;
    while (len) {
        ssize_t r = write(fd, b, len);
        if (r < 0) {
            if (errno == EINTR) continue;
            return aicfn_error_errno(err, AICFN_E_IO, errno, "writing %s", path);
        }
        b += r;
        len -= (size_t)r;
    }
    return AICFN_OK;
}

/* The file goes out in whole, aligned blocks of AICFN_PAGE_CACHE_BLOCK bytes (the last
 * one shorter). Linux sizes the page-cache folios a write creates by the write, so the
 * snapshot is then cached in 2 MiB folios, which the loader's mapping of the file maps
 * with one page-table entry each: paging a frame in costs next to nothing and reads
 * miss the TLB less (docs/snapshot-format.md §9). */
typedef struct wr_out {
    int fd;
    const char *path;
    unsigned char *block;
    size_t used;
} wr_out;

static int wr_out_put(wr_out *o, const void *p, size_t len, aicfn_error *err) {
    const unsigned char *b = p;
    while (len) {
        size_t n = AICFN_PAGE_CACHE_BLOCK - o->used < len ? AICFN_PAGE_CACHE_BLOCK - o->used : len;
        memcpy(o->block + o->used, b, n);
        o->used += n;
        b += n;
        len -= n;
        if (o->used == AICFN_PAGE_CACHE_BLOCK) {
            int rc = wr_write(o->fd, o->block, o->used, o->path, err);
            if (rc) return rc;
            o->used = 0;
        }
    }
    return AICFN_OK;
}

static int wr_out_flush(wr_out *o, aicfn_error *err) {
    int rc = wr_write(o->fd, o->block, o->used, o->path, err);
    o->used = 0;
    return rc;
}

static int wr_pwrite(int fd, const void *p, size_t len, off_t off, const char *path, aicfn_error *err) {
    const unsigned char *b = p;
    while (len) {
        ssize_t r = pwrite(fd, b, len, off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return aicfn_error_errno(err, AICFN_E_IO, errno, "writing %s", path);
        }
        b += r;
        len -= (size_t)r;
        off += r;
    }
    return AICFN_OK;
}

/* True when `s` (l bytes) is UTF-8, as the reader requires of names (jansson judges). */
static bool wr_utf8(const char *s, size_t l) {
    json_t *j = json_stringn(s, l);
    json_decref(j);
    return j != NULL;
}

/* The input file's name up to its first dot; "model" when that is empty or not UTF-8 (a
 * file name in another encoding). */
static char *wr_default_name(const snap_st_set *set) {
    const char *p = snap_st_file_count(set) ? snap_st_file_path(set, 0) : "model";
    const char *b = strrchr(p, '/');
    b = b ? b + 1 : p;
    size_t l = strcspn(b, "."); /* <= NAME_MAX (255) < AICFN_SNAP_MAX_NAME_BYTES */
    if (l == 0 || l > AICFN_SNAP_MAX_NAME_BYTES || !wr_utf8(b, l)) return strdup("model");
    return strndup(b, l);
}

static int wr_level_ok(int l) {
    return l >= AICFN_SNAP_MIN_LEVEL && l <= AICFN_SNAP_MAX_LEVEL;
}

int snap_pack_set(const snap_st_set *set, const char *out_path, const snap_pack_opts *opts_in,
                  snap_pack_stats *stats, aicfn_error *err) {
    snap_pack_opts opts;
    if (opts_in)
        opts = *opts_in;
    else
        snap_pack_opts_init(&opts);
    if (opts.level == 0) opts.level = AICFN_SNAP_DEFAULT_LEVEL;
    if (opts.chunk == 0) opts.chunk = AICFN_SNAP_DEFAULT_CHUNK;
    if (!wr_level_ok(opts.level))
        return aicfn_error_set(err, AICFN_E_INVALID, "level %d outside [%d, %d]", opts.level,
                               AICFN_SNAP_MIN_LEVEL, AICFN_SNAP_MAX_LEVEL);
    if (opts.chunk < AICFN_SNAP_MIN_CHUNK || opts.chunk > AICFN_SNAP_MAX_CHUNK ||
        opts.chunk % AICFN_SNAP_ALIGN)
        return aicfn_error_set(err, AICFN_E_INVALID, "chunk %u must be a multiple of %u within [%u, %u]",
                               opts.chunk, AICFN_SNAP_ALIGN, AICFN_SNAP_MIN_CHUNK, AICFN_SNAP_MAX_CHUNK);
    if (opts.filter != SNAP_FILTER_MODE_AUTO && opts.filter != SNAP_FILTER_MODE_NONE &&
        opts.filter != SNAP_FILTER_MODE_PLANES)
        return aicfn_error_set(err, AICFN_E_INVALID, "unknown filter mode %d", (int)opts.filter);
    if (opts.name && (strlen(opts.name) == 0 || strlen(opts.name) > AICFN_SNAP_MAX_NAME_BYTES))
        return aicfn_error_set(err, AICFN_E_INVALID, "model name must have 1 to %d bytes",
                               AICFN_SNAP_MAX_NAME_BYTES);
    if (opts.name && !wr_utf8(opts.name, strlen(opts.name)))
        return aicfn_error_set(err, AICFN_E_INVALID, "model name is not valid UTF-8");

    wr_job job;
    memset(&job, 0, sizeof job);
    job.set = set;
    job.n_tensors = snap_st_count(set);
    job.chunk = opts.chunk;
    job.level_other = opts.level;
    job.level_exp = opts.level >= 16
                        ? opts.level
                        : (opts.level < AICFN_SNAP_EXP_PLANE_LEVEL ? opts.level : AICFN_SNAP_EXP_PLANE_LEVEL);
    job.level_mant = opts.level < AICFN_SNAP_MANT_PLANE_LEVEL ? opts.level : AICFN_SNAP_MANT_PLANE_LEVEL;

    int rc = AICFN_OK, fd = -1, sync_ready = 0;
    unsigned threads = 0;
    char *name = NULL, *tmp = NULL;
    wr_worker *workers = NULL;
    unsigned n_workers = 0;
    unsigned char *seek = NULL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    XXH3_state_t *xs = XXH3_createState();
    wr_out dest = {.fd = -1, .block = malloc(AICFN_PAGE_CACHE_BLOCK)};

    job.tensors = calloc(job.n_tensors ? job.n_tensors : 1, sizeof *job.tensors);
    name = opts.name ? strdup(opts.name) : wr_default_name(set);
    if (!job.tensors || !name || !xs || !dest.block) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for %u tensors", job.n_tensors);
        goto out;
    }
    uint64_t cur = 0, raw_bytes = 0;
    for (uint32_t i = 0; i < job.n_tensors; i++) {
        wr_tensor *t = &job.tensors[i];
        t->src = snap_st_tensor_at(set, i);
        t->index = i;
        if (cur > UINT64_MAX - AICFN_SNAP_ALIGN ||
            t->src->nbytes >
                UINT64_MAX - ((cur + AICFN_SNAP_ALIGN - 1) & ~(uint64_t)(AICFN_SNAP_ALIGN - 1))) {
            rc = aicfn_error_set(err, AICFN_E_TOO_LARGE,
                                 "tensor '%s': the tensors add up to more than 2^64 bytes", t->src->name);
            goto out;
        }
        t->offset = (cur + AICFN_SNAP_ALIGN - 1) & ~(uint64_t)(AICFN_SNAP_ALIGN - 1);
        cur = t->offset + t->src->nbytes;
        raw_bytes += t->src->nbytes;
        if (t->src->nbytes == 0) t->xxh3 = XXH3_64bits(NULL, 0);
    }
    job.blob_bytes = cur;
    uint64_t nf = (job.blob_bytes + job.chunk - 1) / job.chunk;
    if (nf >= AICFN_SNAP_MAX_FRAMES) {
        rc = aicfn_error_set(err, AICFN_E_TOO_LARGE, "%llu frames exceed the seek table's limit",
                             (unsigned long long)nf);
        goto out;
    }
    job.n_frames = (uint32_t)nf;

    rc = wr_choose_filters(set, job.tensors, job.n_tensors, opts.filter, job.level_other, job.level_exp,
                           job.level_mant, err);
    if (rc) goto out;

    /* The output: a temporary file beside out_path, renamed at the end. */
    if ((rc = snap_tmp_create(out_path, &tmp, &fd, err))) goto out;

    /* Manifest frame (hashes filled in at the end; the size does not change). */
    if (wr_manifest(&sb, name, job.blob_bytes, job.chunk, job.tensors, job.n_tensors) != 0) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for the manifest");
        goto out;
    }
    size_t manifest_len = sb.size;
    if (manifest_len > AICFN_SNAP_MAX_MANIFEST_BYTES) {
        rc = aicfn_error_set(err, AICFN_E_TOO_LARGE, "manifest of %zu bytes exceeds the limit of %u",
                             manifest_len, AICFN_SNAP_MAX_MANIFEST_BYTES);
        goto out;
    }
    unsigned char mh[8 + SNAP_MANIFEST_PREFIX];
    snap_put_le32(mh, SNAP_MANIFEST_MAGIC);
    snap_put_le32(mh + 4, (uint32_t)(SNAP_MANIFEST_PREFIX + manifest_len));
    memcpy(mh + 8, SNAP_MANIFEST_TAG, SNAP_MANIFEST_TAG_LEN);
    snap_put_le64(mh + 16, 0); /* the hash, written with the final manifest */
    dest.fd = fd;
    dest.path = tmp;
    rc = wr_out_put(&dest, mh, sizeof mh, err);
    if (!rc) rc = wr_out_put(&dest, sb.data, sb.size, err);
    if (rc) goto out;

    /* Seek table entries: the manifest frame, then one per data frame. */
    size_t seek_len = 8 + ((size_t)job.n_frames + 1) * 8 + SNAP_SEEKTABLE_FOOTER;
    seek = malloc(seek_len);
    if (!seek) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for the seek table");
        goto out;
    }
    snap_put_le32(seek, SNAP_SEEKTABLE_MAGIC);
    snap_put_le32(seek + 4, (uint32_t)(seek_len - 8));
    snap_put_le32(seek + 8, (uint32_t)(sizeof mh + manifest_len));
    snap_put_le32(seek + 12, 0);

    /* Workers. */
    threads = opts.threads;
    if (threads == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        threads = c > 0 ? (unsigned)c : 1;
    }
    if (threads > AICFN_SNAP_MAX_THREADS) threads = AICFN_SNAP_MAX_THREADS;
    if (threads > job.n_frames) threads = job.n_frames ? job.n_frames : 1;
    job.n_slots = 2 * threads;
    if (pthread_mutex_init(&job.mu, NULL) || clock_cond_init(&job.work_cv) || clock_cond_init(&job.done_cv)) {
        rc = aicfn_error_set(err, AICFN_E_INTERNAL, "pthread init failed");
        goto out;
    }
    sync_ready = 1;
    job.slots = calloc(job.n_slots, sizeof *job.slots);
    workers = calloc(threads, sizeof *workers);
    if (!job.slots || !workers) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for the pack pool");
        goto out;
    }
    size_t frame_cap = job.n_frames == 1 ? (size_t)job.blob_bytes : job.chunk;
    for (uint32_t s = 0; s < job.n_slots && job.n_frames; s++) {
        job.slots[s].raw = malloc(frame_cap);
        if (!job.slots[s].raw) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for frame buffers");
            goto out;
        }
    }
    for (unsigned i = 0; i < threads && job.n_frames; i++) {
        wr_worker *w = &workers[i];
        w->job = &job;
        w->cctx = ZSTD_createCCtx();
        w->filt = malloc(frame_cap);
        if (!w->cctx || !w->filt) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for a compression context");
            goto out;
        }
        if (pthread_create(&w->thread, NULL, wr_worker_main, w) != 0) {
            rc = aicfn_error_set(err, AICFN_E_INTERNAL, "cannot start a pack thread");
            goto out;
        }
        n_workers++;
    }

    /* Write frames in order; hash tensors in blob order as their bytes pass. */
    uint32_t ht = 0;    /* tensor being hashed */
    uint64_t hdone = 0; /* its bytes hashed so far */
    for (uint32_t f = 0; f < job.n_frames; f++) {
        wr_slot *slot = &job.slots[f % job.n_slots];
        pthread_mutex_lock(&job.mu);
        while (!slot->done)
            pthread_cond_wait(&job.done_cv, &job.mu);
        pthread_mutex_unlock(&job.mu);
        if (slot->rc) {
            rc = slot->rc;
            if (err) *err = slot->err;
            goto out;
        }
        uint64_t fo = (uint64_t)f * job.chunk;
        uint64_t fs = job.blob_bytes - fo < job.chunk ? job.blob_bytes - fo : job.chunk;
        while (ht < job.n_tensors) {
            wr_tensor *t = &job.tensors[ht];
            uint64_t end = t->offset + t->src->nbytes;
            if (t->src->nbytes == 0) {
                ht++;
                continue;
            }
            if (t->offset >= fo + fs) break;
            if (hdone == 0) XXH3_64bits_reset(xs);
            uint64_t s = t->offset + hdone, e = end < fo + fs ? end : fo + fs;
            XXH3_64bits_update(xs, slot->raw + (s - fo), (size_t)(e - s));
            hdone += e - s;
            if (hdone < t->src->nbytes) break;
            t->xxh3 = XXH3_64bits_digest(xs);
            hdone = 0;
            ht++;
        }
        if (slot->comp_len > UINT32_MAX) {
            rc = aicfn_error_set(err, AICFN_E_TOO_LARGE, "frame %u compressed to more than 4 GiB", f);
            goto out;
        }
        rc = wr_out_put(&dest, slot->comp, slot->comp_len, err);
        if (rc) goto out;
        snap_put_le32(seek + 16 + (size_t)f * 8, (uint32_t)slot->comp_len);
        snap_put_le32(seek + 20 + (size_t)f * 8, (uint32_t)fs);
        pthread_mutex_lock(&job.mu);
        slot->done = 0;
        job.next_write++;
        pthread_cond_broadcast(&job.work_cv);
        pthread_mutex_unlock(&job.mu);
        if (opts.progress) opts.progress(opts.progress_user, fo + fs, job.blob_bytes);
    }

    /* Seek table footer, then the manifest with its hashes. */
    unsigned char *foot = seek + seek_len - SNAP_SEEKTABLE_FOOTER;
    snap_put_le32(foot, job.n_frames + 1);
    foot[4] = 0; /* no per-frame checksums: the manifest's XXH3 per tensor covers the data */
    snap_put_le32(foot + 5, SNAP_SEEKABLE_MAGIC);
    rc = wr_out_put(&dest, seek, seek_len, err);
    if (!rc) rc = wr_out_flush(&dest, err);
    if (rc) goto out;
    if (wr_manifest(&sb, name, job.blob_bytes, job.chunk, job.tensors, job.n_tensors) != 0 ||
        sb.size != manifest_len) {
        rc = aicfn_error_set(err, AICFN_E_INTERNAL, "manifest changed size when its hashes were filled in");
        goto out;
    }
    snap_put_le64(mh + 16, XXH3_64bits(sb.data, sb.size));
    rc = wr_pwrite(fd, mh + 16, 8, 16, tmp, err);
    if (!rc) rc = wr_pwrite(fd, sb.data, sb.size, (off_t)sizeof mh, tmp, err);
    if (rc) goto out;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "stat %s", tmp);
        goto out;
    }
    rc = snap_tmp_commit(fd, tmp, out_path, err);
    fd = -1;
    if (rc) goto out;
    if (stats) {
        stats->n_tensors = job.n_tensors;
        stats->n_frames = job.n_frames;
        stats->n_filtered = 0;
        for (uint32_t i = 0; i < job.n_tensors; i++)
            stats->n_filtered += job.tensors[i].filter == SNAP_FILTER_PLANES;
        stats->raw_bytes = raw_bytes;
        stats->blob_bytes = job.blob_bytes;
        stats->file_bytes = (uint64_t)st.st_size;
    }

out:
    if (sync_ready) {
        pthread_mutex_lock(&job.mu);
        job.abort = 1;
        pthread_cond_broadcast(&job.work_cv);
        pthread_mutex_unlock(&job.mu);
    }
    for (unsigned i = 0; i < n_workers; i++)
        pthread_join(workers[i].thread, NULL);
    if (workers)
        for (unsigned i = 0; i < threads; i++) {
            ZSTD_freeCCtx(workers[i].cctx);
            free(workers[i].filt);
            free(workers[i].runs);
        }
    free(workers);
    if (job.slots)
        for (uint32_t s = 0; s < job.n_slots; s++) {
            free(job.slots[s].raw);
            free(job.slots[s].comp);
        }
    free(job.slots);
    if (sync_ready) {
        pthread_mutex_destroy(&job.mu);
        pthread_cond_destroy(&job.work_cv);
        pthread_cond_destroy(&job.done_cv);
    }
    if (rc) snap_tmp_discard(fd, tmp);
    free(tmp);
    free(seek);
    free(dest.block);
    free(name);
    free(job.tensors);
    XXH3_freeState(xs);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int snap_pack(const char *const *inputs, size_t n_inputs, const char *out_path, const snap_pack_opts *opts,
              snap_pack_stats *stats, aicfn_error *err) {
    snap_st_set *set;
    int rc = snap_st_open(inputs, n_inputs, &set, err);
    if (rc) return rc;
    rc = snap_pack_set(set, out_path, opts, stats, err);
    snap_st_close(set);
    return rc;
}
