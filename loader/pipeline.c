/* pipeline.c: the parallel load pipeline (pipeline.h): snapshot frames -> one device
 * allocation, verified, timed.
 *
 * N threads each own a snap_dctx and a scratch buffer, and take frames in order. A
 * frame's compressed bytes are decompressed in place from the reader's mapping of the
 * file (the page cache; no copy), or read with pread into a per-thread buffer when the
 * file cannot be mapped. Host devices: decompress straight into the destination (or
 * into scratch when the frame is filtered). Other devices: the same into a staging
 * buffer (pinned), then an asynchronous copy whose ticket hands the staging buffer back.
 * A thread takes its frame number only after it holds a staging buffer, so a frame never
 * waits on an earlier one that still lacks a buffer.
 * The filter is reversed in pieces of 1 KiB: each piece is written to the destination
 * with streaming stores (around the cache; fenced once per frame, so they drain while
 * the next piece is hashed) and to a buffer in L1, where it is
 * checksummed (one pass over the raw bytes instead of an unfilter pass and a hashing
 * pass, and no destination line read before it is written). A tensor inside one frame has its own
 * XXH3 state; a tensor spanning frames has a shared state fed in blob order. A part
 * whose turn has not come when its frame is done is posted: the thread that feeds the
 * part before it feeds it too, so no thread waits for another's frame. On host devices
 * the posted bytes stay in the destination; on staged devices the posted part takes
 * its staging buffer along (its copy already issued), and the feeder hands the buffer
 * back after hashing it, so the check is still on the staging bytes that were copied.
 * Only a frame that went through the per-thread bounce buffer (larger than a staging
 * buffer) waits for its turn (that is wait_us).
 * Not for: residency (cache.c) or the file format (snapshots/). */
#include "loader/pipeline.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/clock.h"
#include "common/tunables.h"
#include "loader/cache.h"

struct loader_model {
    loader_device *dev;
    loader_dev_buf buf;
    snap_manifest man; /* deep copy */
};

typedef struct pl_span {
    XXH3_state_t *st;
    uint64_t fed; /* bytes of the tensor hashed so far */
} pl_span;

/* A frame's first part of a spanning tensor, posted for whoever feeds the part before
 * it (host devices: the bytes stay in the destination). len 0: nothing posted. */
typedef struct pl_part {
    uint64_t off; /* blob offset */
    const unsigned char *p;
    size_t len;
    loader_staging stg; /* staged devices: the buffer holding p (ptr NULL: none), and */
    loader_ticket tk;   /* the copy issued from it, for loader_device_staging_release */
} pl_part;

typedef struct pl_job {
    const snap_reader *r;
    const snap_manifest *man;
    loader_device *dev;
    const loader_dev_buf *buf;
    int host, staged, verify;
    int mapped; /* frames are read in place from the reader's mapping (no read buffer) */
    uint32_t n_frames;
    size_t max_comp, scratch_bytes; /* scratch: per thread, for filtered frames (0: none) */
    size_t bounce_bytes;            /* non-host devices: a frame larger than a staging buffer */
    _Atomic uint32_t next_frame;
    _Atomic int abort;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int rc;
    aicfn_error err;
    int32_t *span_of; /* per tensor: index into spans, or -1 when it lies in one frame */
    pl_span *spans;
    uint32_t n_spans;
    pl_part *posted;   /* per frame (when verifying tensors that span frames; NULL otherwise) */
    loader_timing sum; /* per-thread sums, added under mu */
} pl_job;

/* What a load asks the device for: the blob, or one aligned unit when it is empty. */
static uint64_t pl_blob_request(const snap_manifest *man) {
    return man->blob_bytes ? man->blob_bytes : AICFN_SNAP_ALIGN;
}

uint64_t loader_manifest_device_bytes(loader_device *dev, const snap_manifest *man) {
    return loader_device_alloc_size(dev, pl_blob_request(man));
}

uint32_t loader_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > AICFN_LOADER_MAX_THREADS) n = AICFN_LOADER_MAX_THREADS;
    return (uint32_t)n;
}

/* First tensor whose bytes end after `off` (tensors are sorted and non-overlapping). */
static uint32_t pl_first_tensor(const snap_manifest *m, uint64_t off) {
    uint32_t lo = 0, hi = m->n_tensors;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->tensors[mid].offset + m->tensors[mid].nbytes <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Index of the frame holding blob byte `off` (frames tile the blob in order). */
static uint32_t pl_frame_of(const snap_reader *r, uint64_t off) {
    uint32_t lo = 0, hi = snap_reader_frame_count(r);
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const snap_frame *f = snap_reader_frame(r, mid);
        if (f->raw_offset + f->raw_size <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Records the first failure (with frame context: frame UINT32_MAX for a failure of no
 * frame's) and tells every thread to stop. The frame's first tensor is named unless the
 * error names its own (a checksum mismatch may be a later tensor's, or a split one's). */
static void pl_fail(pl_job *j, uint32_t frame, const aicfn_error *e) {
    pthread_mutex_lock(&j->mu);
    if (j->rc == AICFN_OK) {
        j->rc = e->code ? e->code : AICFN_E_INTERNAL;
        const snap_frame *f = snap_reader_frame(j->r, frame);
        char where[AICFN_ERRMSG_MAX / 2] = "";
        if (f) {
            uint32_t t = pl_first_tensor(j->man, f->raw_offset);
            int n = snprintf(where, sizeof where, "frame %u (blob bytes %llu..%llu", frame,
                             (unsigned long long)f->raw_offset,
                             (unsigned long long)(f->raw_offset + f->raw_size));
            if (t < j->man->n_tensors && j->man->tensors[t].offset < f->raw_offset + f->raw_size && n > 0 &&
                (size_t)n < sizeof where && strstr(e->msg, "tensor '") == NULL)
                snprintf(where + n, sizeof where - (size_t)n, ", tensor '%s')", j->man->tensors[t].name);
            else if (n > 0 && (size_t)n < sizeof where)
                snprintf(where + n, sizeof where - (size_t)n, ")");
        }
        j->err = *e;
        j->err.code = j->rc;
        aicfn_error_wrap(&j->err, "loading %s: %s", snap_reader_path(j->r), where);
    }
    atomic_store(&j->abort, 1);
    pthread_cond_broadcast(&j->cv);
    /* Posted parts will not be fed now: their staging buffers go back at once (reusable
     * once their copies complete), or threads waiting for a buffer would wait forever.
     * Nothing is posted after abort (pl_hasher_finish checks it under mu). */
    for (uint32_t f = 0; j->posted && f < j->n_frames; f++) {
        if (!j->posted[f].stg.ptr) continue;
        pl_part part = j->posted[f];
        j->posted[f].stg.ptr = NULL;
        j->posted[f].len = 0;
        pthread_mutex_unlock(&j->mu);
        loader_device_staging_release(j->dev, &part.stg, part.tk);
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
}

/* Per-thread state of the checksums of one frame, fed piece by piece from
 * snap_frame_unfilter_each while each piece is in cache. A tensor inside the
 * frame gets a local XXH3 state. A tensor spanning frames has a shared state fed in blob
 * order: when this frame's part is next (every part before it fed) it is fed live;
 * otherwise the part is deferred, and hashed from the destination after waiting for its
 * turn (only a frame's first part can be deferred: a later part starts its tensor). */
typedef struct pl_hasher {
    pl_job *j;
    uint32_t t;          /* tensor being fed; UINT32_MAX before the first piece */
    uint64_t start, fed; /* blob offset where this frame's part of it starts; bytes fed */
    enum { PL_LOCAL, PL_SPAN_LIVE, PL_SPAN_DEFERRED } mode;
    unsigned char *dst;  /* where the frame lands (at blob offset frame_off): a deferred */
    uint64_t frame_off;  /* part is hashed from there (a piece's bytes are a passing copy) */
    uint32_t deferred_t; /* the deferred part, if any */
    uint64_t deferred_off;
    const unsigned char *deferred_p;
    size_t deferred_len;
    uint64_t hash_us, wait_us;
    XXH3_state_t local;
    aicfn_error *err;
} pl_hasher;

static int pl_mismatch(pl_hasher *h, uint32_t t) {
    const snap_tensor *ts = &h->j->man->tensors[t];
    if (h->j->span_of[t] < 0)
        return aicfn_error_set(h->err, AICFN_E_CORRUPT, "tensor '%s': XXH3 mismatch (expected %016llx)",
                               ts->name, (unsigned long long)ts->xxh3);
    return aicfn_error_set(h->err, AICFN_E_CORRUPT,
                           "tensor '%s' (in frames %u..%u): XXH3 mismatch (expected %016llx)", ts->name,
                           pl_frame_of(h->j->r, ts->offset),
                           pl_frame_of(h->j->r, ts->offset + ts->nbytes - 1), (unsigned long long)ts->xxh3);
}

/* Ends this frame's part of the current tensor: checks a local digest, or hands a live
 * span's turn to the next part. */
static int pl_hasher_close(pl_hasher *h) {
    if (h->t == UINT32_MAX) return AICFN_OK;
    uint32_t t = h->t;
    h->t = UINT32_MAX;
    const snap_tensor *ts = &h->j->man->tensors[t];
    if (h->mode == PL_LOCAL) {
        if (h->start != ts->offset || h->fed != ts->nbytes) /* cannot happen: the part is the whole */
            return aicfn_error_set(h->err, AICFN_E_INTERNAL, "tensor '%s': hashed %llu of %llu bytes",
                                   ts->name, (unsigned long long)h->fed, (unsigned long long)ts->nbytes);
        return XXH3_64bits_digest(&h->local) == ts->xxh3 ? AICFN_OK : pl_mismatch(h, t);
    }
    if (h->mode == PL_SPAN_DEFERRED) return AICFN_OK;
    pl_job *j = h->j;
    pl_span *sp = &j->spans[j->span_of[t]];
    pthread_mutex_lock(&j->mu);
    sp->fed += h->fed;
    /* The turn passes on: feed the parts that were posted meanwhile, in order. */
    while (j->posted && sp->fed < ts->nbytes) {
        pl_part *pp = &j->posted[pl_frame_of(j->r, ts->offset + sp->fed)];
        if (!pp->len || pp->off != ts->offset + sp->fed) break; /* not posted yet: its thread feeds it */
        pl_part part = *pp;
        pp->len = 0;
        pp->stg.ptr = NULL;
        pthread_mutex_unlock(&j->mu);
        uint64_t t0 = clock_now_us();
        (void)XXH3_64bits_update(sp->st, part.p, part.len); /* the turn is this thread's alone */
        if (part.stg.ptr) loader_device_staging_release(j->dev, &part.stg, part.tk);
        h->hash_us += clock_now_us() - t0;
        pthread_mutex_lock(&j->mu);
        sp->fed += part.len;
    }
    int bad = sp->fed == ts->nbytes && XXH3_64bits_digest(sp->st) != ts->xxh3;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return bad ? pl_mismatch(h, t) : AICFN_OK;
}

static int pl_hash_piece(void *arg, uint32_t t, uint64_t off, const unsigned char *p, size_t len) {
    pl_hasher *h = arg;
    if (t != h->t) {
        int rc = pl_hasher_close(h);
        if (rc != AICFN_OK) return rc;
        h->t = t;
        h->start = off;
        h->fed = 0;
        int32_t s = h->j->span_of[t];
        if (s < 0) {
            h->mode = PL_LOCAL;
            (void)XXH3_64bits_reset(&h->local);
        } else {
            pthread_mutex_lock(&h->j->mu);
            int turn = h->j->spans[s].fed == off - h->j->man->tensors[t].offset;
            pthread_mutex_unlock(&h->j->mu);
            h->mode = turn ? PL_SPAN_LIVE : PL_SPAN_DEFERRED;
            if (!turn) {
                h->deferred_t = t;
                h->deferred_off = off;
                h->deferred_p = h->dst + (off - h->frame_off);
                h->deferred_len = 0;
            }
        }
    }
    if (h->mode == PL_LOCAL)
        (void)XXH3_64bits_update(&h->local, p, len);
    else if (h->mode == PL_SPAN_LIVE)
        (void)XXH3_64bits_update(h->j->spans[h->j->span_of[t]].st, p, len); /* only this thread feeds now */
    else
        h->deferred_len += len; /* pieces of one part are contiguous in the destination */
    h->fed += len;
    return AICFN_OK;
}

/* After the frame: closes the last part, then feeds a deferred part if its turn has
 * come. If not: with `can_post` it posts the part (and *stg, the staging buffer holding
 * it, with the ticket of its copy: *stg is then the feeder's to hand back and is cleared
 * here); otherwise it waits for its turn (the wait is wait_us). */
static int pl_hasher_finish(pl_hasher *h, int can_post, loader_staging *stg, loader_ticket tk) {
    int rc = pl_hasher_close(h);
    if (rc != AICFN_OK || !h->deferred_len) return rc;
    uint32_t deferred = h->deferred_t;
    pl_job *j = h->j;
    const snap_tensor *ts = &j->man->tensors[deferred];
    pl_span *sp = &j->spans[j->span_of[deferred]];
    uint64_t want = h->deferred_off - ts->offset;
    uint64_t w0 = clock_now_us();
    pthread_mutex_lock(&j->mu);
    if (can_post && j->posted && sp->fed != want) {
        if (atomic_load(&j->abort)) { /* nobody would feed it */
            pthread_mutex_unlock(&j->mu);
            return AICFN_E_CANCELED;
        }
        pl_part *pp = &j->posted[pl_frame_of(j->r, h->deferred_off)];
        *pp = (pl_part){.off = h->deferred_off, .p = h->deferred_p, .len = h->deferred_len, .tk = tk};
        if (stg) {
            pp->stg = *stg;
            stg->ptr = NULL;
        }
        pthread_mutex_unlock(&j->mu);
        h->deferred_len = 0;
        return AICFN_OK;
    }
    while (sp->fed != want && !atomic_load(&j->abort))
        pthread_cond_wait(&j->cv, &j->mu);
    pthread_mutex_unlock(&j->mu);
    uint64_t w1 = clock_now_us();
    h->wait_us += w1 - w0;
    if (atomic_load(&j->abort)) return AICFN_E_CANCELED;
    h->t = deferred;
    h->mode = PL_SPAN_LIVE;
    h->start = h->deferred_off;
    h->fed = h->deferred_len;
    (void)XXH3_64bits_update(sp->st, h->deferred_p, h->deferred_len);
    h->deferred_len = 0;
    uint64_t before = h->hash_us;
    rc = pl_hasher_close(h); /* may hash parts posted meanwhile: inside this interval too */
    h->hash_us = before + (clock_now_us() - w1);
    return rc;
}

/* What is left of an interval of `total` µs after `part` µs of it (measured inside it, so
 * at most total, save for clock reads a microsecond apart). */
static uint64_t pl_rest_us(uint64_t total, uint64_t part) {
    return total > part ? total - part : 0;
}

static void *pl_thread(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:load");
    pl_job *j = arg;
    loader_timing t;
    memset(&t, 0, sizeof t);
    aicfn_error err;
    aicfn_error_clear(&err);
    snap_dctx *dctx = NULL;
    unsigned char *rbuf = j->mapped ? NULL : malloc(j->max_comp ? j->max_comp : 1);
    unsigned char *scratch = j->scratch_bytes ? malloc(j->scratch_bytes) : NULL;
    unsigned char *bounce = NULL; /* non-host frames larger than a staging buffer */
    uint32_t fi = UINT32_MAX;
    pl_hasher hasher = {.j = j, .t = UINT32_MAX, .err = &err};
    if ((!j->mapped && !rbuf) || (j->scratch_bytes && !scratch)) {
        aicfn_error_set(&err, AICFN_E_NOMEM, "pipeline buffers (%zu + %zu bytes)", j->max_comp,
                        j->scratch_bytes);
        pl_fail(j, UINT32_MAX, &err);
        goto out;
    }
    if (snap_dctx_create(&dctx, &err) != AICFN_OK) {
        pl_fail(j, UINT32_MAX, &err);
        goto out;
    }
    for (;;) {
        if (atomic_load(&j->abort)) break;
        loader_staging stg = {0};
        if (j->staged) {
            uint64_t w0 = clock_now_us();
            int rc = loader_device_staging_acquire(j->dev, &stg, &err);
            t.wait_us += clock_now_us() - w0;
            if (rc != AICFN_OK) {
                pl_fail(j, UINT32_MAX, &err);
                break;
            }
        }
        fi = atomic_fetch_add(&j->next_frame, 1);
        if (fi >= j->n_frames || atomic_load(&j->abort)) {
            if (stg.ptr) loader_device_staging_release(j->dev, &stg, 0);
            break;
        }
        const snap_frame *f = snap_reader_frame(j->r, fi);
        uint64_t t0 = clock_now_us();
        const void *comp = j->mapped ? snap_frame_mapped(j->r, fi, &err) : rbuf;
        int rc = comp ? AICFN_OK : AICFN_E_IO;
        if (comp && !j->mapped) rc = snap_frame_read(j->r, fi, rbuf, j->max_comp, &err);
        if (!comp) rc = err.code ? err.code : AICFN_E_IO;
        uint64_t t1 = clock_now_us();
        t.read_us += t1 - t0;
        t.compressed_bytes += f->comp_size;
        unsigned char *dst;
        if (j->host) {
            dst = (unsigned char *)j->buf->ptr + f->raw_offset;
        } else if (stg.ptr && f->raw_size <= stg.cap) {
            dst = stg.ptr;
        } else {
            /* Too big for it: the staging buffer goes back now, not after this frame's
             * bounce, copy and turn, to the loads of other models on the device. */
            if (stg.ptr) loader_device_staging_release(j->dev, &stg, 0);
            stg.ptr = NULL;
            if (!bounce && rc == AICFN_OK) {
                bounce = malloc(j->bounce_bytes ? j->bounce_bytes : 1);
                if (!bounce)
                    rc = aicfn_error_set(&err, AICFN_E_NOMEM, "bounce buffer (%zu bytes)", j->bounce_bytes);
            }
            dst = bounce;
        }
        int filtered = snap_frame_is_filtered(j->r, fi);
        if (rc == AICFN_OK) rc = snap_frame_decompress(dctx, j->r, fi, comp, filtered ? scratch : dst, &err);
        uint64_t t2 = clock_now_us();
        t.decompress_us += t2 - t1;
        if (rc == AICFN_OK && (filtered || j->verify)) {
            /* Unfilter into the destination in cache-sized pieces, each checksummed as it lands. */
            hasher.t = UINT32_MAX;
            hasher.deferred_len = 0;
            hasher.hash_us = hasher.wait_us = 0;
            hasher.dst = dst;
            hasher.frame_off = f->raw_offset;
            rc = snap_frame_unfilter_each(j->r, fi, filtered ? scratch : dst, dst,
                                          j->verify ? pl_hash_piece : NULL, &hasher, &err);
            /* Host and bounce frames finish hashing now; staged ones after their copy. */
            if (rc == AICFN_OK && j->verify && dst != stg.ptr)
                rc = pl_hasher_finish(&hasher, j->host, NULL, 0);
            t.verify_us += hasher.hash_us;
            t.wait_us += hasher.wait_us;
            t.filter_us += pl_rest_us(clock_now_us() - t2, hasher.hash_us + hasher.wait_us);
        }
        uint64_t t4 = clock_now_us();
        loader_ticket tk = 0; /* the copy from dst, once issued (the staging buffer's release waits for it) */
        if (rc == AICFN_OK && !j->host) {
            rc = loader_device_copy_to_device(j->dev, j->buf, f->raw_offset, dst, f->raw_size, &tk, &err);
            if (rc != AICFN_OK) tk = 0;
            if (rc == AICFN_OK && dst == bounce) rc = loader_device_wait(j->dev, tk, &err);
        }
        t.copy_us += clock_now_us() - t4;
        if (rc == AICFN_OK && j->verify && stg.ptr && dst == stg.ptr) {
            /* The copy reads the staging bytes the hash checks; a posted part keeps them. */
            uint64_t t5 = clock_now_us();
            hasher.hash_us = hasher.wait_us = 0;
            rc = pl_hasher_finish(&hasher, 1, &stg, tk);
            t.verify_us += hasher.hash_us;
            t.wait_us += hasher.wait_us;
            t.filter_us += pl_rest_us(clock_now_us() - t5, hasher.hash_us + hasher.wait_us);
        }
        if (stg.ptr) loader_device_staging_release(j->dev, &stg, tk);
        if (rc != AICFN_OK) {
            if (rc != AICFN_E_CANCELED || !atomic_load(&j->abort)) pl_fail(j, fi, &err);
            break;
        }
        t.raw_bytes += f->raw_size;
        t.frames++;
    }
out:
    snap_dctx_free(dctx);
    free(rbuf);
    free(scratch);
    free(bounce);
    pthread_mutex_lock(&j->mu);
    j->sum.read_us += t.read_us;
    j->sum.decompress_us += t.decompress_us;
    j->sum.filter_us += t.filter_us;
    j->sum.verify_us += t.verify_us;
    j->sum.copy_us += t.copy_us;
    j->sum.wait_us += t.wait_us;
    j->sum.compressed_bytes += t.compressed_bytes;
    j->sum.raw_bytes += t.raw_bytes;
    j->sum.frames += t.frames;
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

static void pl_manifest_free(snap_manifest *m) {
    for (uint32_t i = 0; i < m->n_tensors; i++)
        free(m->tensors[i].name);
    free(m->tensors);
    free(m->model_name);
    memset(m, 0, sizeof *m);
}

static int pl_manifest_copy(const snap_manifest *src, snap_manifest *dst) {
    memset(dst, 0, sizeof *dst);
    *dst = *src;
    dst->model_name = NULL;
    dst->tensors = NULL;
    dst->n_tensors = 0;
    dst->model_name = strdup(src->model_name ? src->model_name : "");
    dst->tensors = src->n_tensors ? calloc(src->n_tensors, sizeof *dst->tensors) : NULL;
    if (!dst->model_name || (src->n_tensors && !dst->tensors)) {
        pl_manifest_free(dst);
        return AICFN_E_NOMEM;
    }
    for (uint32_t i = 0; i < src->n_tensors; i++) {
        dst->tensors[i] = src->tensors[i];
        dst->tensors[i].name = strdup(src->tensors[i].name ? src->tensors[i].name : "");
        dst->n_tensors = i + 1;
        if (!dst->tensors[i].name) {
            pl_manifest_free(dst);
            return AICFN_E_NOMEM;
        }
    }
    return AICFN_OK;
}

void loader_model_free(loader_model *m) {
    if (!m) return;
    loader_device_free(m->dev, &m->buf);
    pl_manifest_free(&m->man);
    free(m);
}

/* Runs the threads over every frame into `buf`. */
static int pl_run(loader_device *dev, const snap_reader *r, const loader_dev_buf *buf, uint32_t threads,
                  int verify, int use_map, loader_timing *sum, aicfn_error *err) {
    const snap_manifest *man = snap_reader_manifest(r);
    pl_job j;
    memset(&j, 0, sizeof j);
    j.r = r;
    j.man = man;
    j.dev = dev;
    j.buf = buf;
    j.host = loader_device_is_host(dev);
    j.staged = !j.host && loader_device_has_staging(dev);
    j.verify = verify;
    j.n_frames = snap_reader_frame_count(r);
    j.max_comp = snap_reader_max_comp_size(r);
    aicfn_error probe;
    j.mapped = use_map && j.n_frames && snap_frame_mapped(r, 0, &probe) != NULL;
    int any_filtered = 0;
    for (uint32_t i = 0; i < j.n_frames && !any_filtered; i++)
        any_filtered = snap_frame_is_filtered(r, i);
    j.scratch_bytes = any_filtered ? snap_reader_max_raw_size(r) : 0;
    j.bounce_bytes = j.host ? 0 : snap_reader_max_raw_size(r);
    pthread_mutex_init(&j.mu, NULL);
    clock_cond_init(&j.cv);
    int rc = AICFN_OK;
    if (verify && man->n_tensors) {
        j.span_of = malloc(man->n_tensors * sizeof *j.span_of);
        if (!j.span_of)
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "loading %s: verification state", snap_reader_path(r));
        for (uint32_t t = 0; rc == AICFN_OK && t < man->n_tensors; t++) {
            const snap_tensor *ts = &man->tensors[t];
            j.span_of[t] = -1;
            if (ts->nbytes == 0) {
                if (XXH3_64bits(NULL, 0) != ts->xxh3)
                    rc = aicfn_error_set(err, AICFN_E_CORRUPT, "loading %s: tensor '%s': XXH3 mismatch",
                                         snap_reader_path(r), ts->name);
                continue;
            }
            uint32_t f0 = pl_frame_of(r, ts->offset), f1 = pl_frame_of(r, ts->offset + ts->nbytes - 1);
            if (f0 != f1) j.span_of[t] = (int32_t)j.n_spans++;
        }
        if (rc == AICFN_OK && j.n_spans) {
            j.spans = calloc(j.n_spans, sizeof *j.spans);
            if (!j.spans)
                rc = aicfn_error_set(err, AICFN_E_NOMEM, "loading %s: hash states", snap_reader_path(r));
            for (uint32_t s = 0; rc == AICFN_OK && s < j.n_spans; s++) {
                j.spans[s].st = XXH3_createState();
                if (!j.spans[s].st || XXH3_64bits_reset(j.spans[s].st) != XXH_OK)
                    rc = aicfn_error_set(err, AICFN_E_NOMEM, "loading %s: hash states", snap_reader_path(r));
            }
            if (rc == AICFN_OK && !(j.posted = calloc(j.n_frames, sizeof *j.posted)))
                rc = aicfn_error_set(err, AICFN_E_NOMEM, "loading %s: hash states", snap_reader_path(r));
        }
    }
    if (threads > j.n_frames) threads = j.n_frames ? j.n_frames : 1;
    pthread_t th[AICFN_LOADER_MAX_THREADS];
    uint32_t started = 0;
    for (; rc == AICFN_OK && started < threads; started++) {
        if (pthread_create(&th[started], NULL, pl_thread, &j) != 0) {
            aicfn_error e;
            aicfn_error_set(&e, AICFN_E_NOMEM, "starting pipeline thread %u", started);
            pl_fail(&j, UINT32_MAX, &e);
            break;
        }
    }
    for (uint32_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (rc == AICFN_OK && j.rc != AICFN_OK) {
        rc = j.rc;
        if (err) *err = j.err;
    }
    /* Every spanning tensor was fed whole (and so checked). */
    for (uint32_t t = 0; rc == AICFN_OK && j.span_of && t < man->n_tensors; t++)
        if (j.span_of[t] >= 0 && j.spans[j.span_of[t]].fed != man->tensors[t].nbytes)
            rc = aicfn_error_set(err, AICFN_E_INTERNAL, "loading %s: tensor '%s': hashed %llu of %llu bytes",
                                 snap_reader_path(r), man->tensors[t].name,
                                 (unsigned long long)j.spans[j.span_of[t]].fed,
                                 (unsigned long long)man->tensors[t].nbytes);
    if (rc == AICFN_OK && !j.host) {
        uint64_t t0 = clock_now_us();
        rc = loader_device_sync(dev, err);
        j.sum.copy_us += clock_now_us() - t0;
        if (rc != AICFN_OK) aicfn_error_wrap(err, "loading %s", snap_reader_path(r));
    }
    if (rc != AICFN_OK && !j.host) (void)loader_device_sync(dev, NULL); /* no copy may still target buf */
    /* A failed load may leave posted parts behind: hand their staging buffers back. */
    for (uint32_t f = 0; j.posted && f < j.n_frames; f++)
        if (j.posted[f].stg.ptr) loader_device_staging_release(dev, &j.posted[f].stg, j.posted[f].tk);
    j.sum.threads = started;
    *sum = j.sum;
    for (uint32_t s = 0; j.spans && s < j.n_spans; s++)
        XXH3_freeState(j.spans[s].st);
    free(j.spans);
    free(j.posted);
    free(j.span_of);
    pthread_cond_destroy(&j.cv);
    pthread_mutex_destroy(&j.mu);
    return rc;
}

int loader_load_reader(loader_device *dev, const snap_reader *r, const loader_load_opts *opts,
                       loader_model **out, loader_timing *timing, aicfn_error *err) {
    uint64_t t0 = clock_now_us();
    if (timing) memset(timing, 0, sizeof *timing);
    if (!out) return aicfn_error_set(err, AICFN_E_INVALID, "load: no output");
    *out = NULL;
    if (!dev || !r) return aicfn_error_set(err, AICFN_E_INVALID, "load: no device or snapshot");
    loader_load_opts o = opts ? *opts : (loader_load_opts){0};
    uint32_t threads = o.threads ? o.threads : loader_default_threads();
    if (threads > AICFN_LOADER_MAX_THREADS) threads = AICFN_LOADER_MAX_THREADS;
    const snap_manifest *man = snap_reader_manifest(r);
    const char *path = snap_reader_path(r);
    uint64_t want = pl_blob_request(man);
    uint64_t size = loader_manifest_device_bytes(dev, man);
    if (o.max_bytes && size > o.max_bytes)
        return aicfn_error_set(err, AICFN_E_CAPACITY, "loading %s: needs %llu device bytes, %llu allowed",
                               path, (unsigned long long)size, (unsigned long long)o.max_bytes);
    loader_model *m = calloc(1, sizeof *m);
    if (!m) return aicfn_error_set(err, AICFN_E_NOMEM, "loading %s: out of memory", path);
    m->dev = dev;
    if (pl_manifest_copy(man, &m->man) != AICFN_OK) {
        free(m);
        return aicfn_error_set(err, AICFN_E_NOMEM, "loading %s: copying the manifest", path);
    }
    uint64_t ta = clock_now_us();
    int rc = loader_device_alloc(dev, want, &m->buf, err);
    uint64_t alloc_us = clock_now_us() - ta;
    if (rc == AICFN_OK && o.max_bytes && m->buf.bytes > o.max_bytes)
        rc =
            aicfn_error_set(err, AICFN_E_CAPACITY, "loading %s: the device reserved %llu bytes, %llu allowed",
                            path, (unsigned long long)m->buf.bytes, (unsigned long long)o.max_bytes);
    if (rc != AICFN_OK) {
        aicfn_error_wrap(err, "loading %s (%llu blob bytes)", path, (unsigned long long)man->blob_bytes);
        loader_model_free(m);
        return rc;
    }
    loader_timing sum;
    memset(&sum, 0, sizeof sum);
    rc = pl_run(dev, r, &m->buf, threads, !o.skip_verify, !o.pread_frames, &sum, err);
    if (rc != AICFN_OK) {
        loader_model_free(m);
        return rc;
    }
    if (timing) {
        *timing = sum;
        timing->alloc_us = alloc_us;
        timing->total_us = clock_now_us() - t0;
    }
    *out = m;
    return AICFN_OK;
}

int loader_load_snapshot(loader_device *dev, const char *path, const loader_load_opts *opts,
                         loader_model **out, loader_timing *timing, aicfn_error *err) {
    uint64_t t0 = clock_now_us();
    if (out) *out = NULL;
    snap_reader *r = NULL;
    int rc = snap_open(path, &r, err);
    uint64_t open_us = clock_now_us() - t0;
    if (rc != AICFN_OK) return rc;
    rc = loader_load_reader(dev, r, opts, out, timing, err);
    snap_close(r);
    if (rc == AICFN_OK && timing) {
        timing->open_us = open_us;
        timing->total_us = clock_now_us() - t0;
    }
    return rc;
}

loader_device *loader_model_device(const loader_model *m) {
    return m ? m->dev : NULL;
}
void *loader_model_blob(const loader_model *m) {
    return m ? m->buf.ptr : NULL;
}
uint64_t loader_model_alloc_bytes(const loader_model *m) {
    return m ? m->buf.bytes : 0;
}
const snap_manifest *loader_model_manifest(const loader_model *m) {
    return m ? &m->man : NULL;
}

int loader_model_find_tensor(const loader_model *m, const char *name) {
    if (!m || !name) return -1;
    for (uint32_t i = 0; i < m->man.n_tensors; i++)
        if (strcmp(m->man.tensors[i].name, name) == 0) return (int)i;
    return -1;
}

void *loader_model_tensor_ptr(const loader_model *m, uint32_t t) {
    if (!m || t >= m->man.n_tensors) return NULL;
    return (char *)m->buf.ptr + m->man.tensors[t].offset;
}

/* ---- The cache's load function ---- */
typedef struct pl_prep {
    snap_reader *r;
    uint64_t t_open_us;
    uint64_t t_fetch_us;
} pl_prep;

static int pl_cache_prepare(void *arg, const char *key, const char *path, void **prep, uint64_t *bytes,
                            aicfn_error *err) {
    loader_pipeline_source *src = arg;
    (void)key;
    uint64_t t_fetch = 0;
    char local[PATH_MAX];
    if (src->resolve) {
        /* The optional resolve hook (e.g. a download): timed apart, counted in the total. */
        uint64_t tf = clock_now_us();
        int rc = src->resolve(src->resolve_arg, path, local, sizeof local, err);
        if (rc != AICFN_OK) return rc;
        t_fetch = clock_now_us() - tf;
        path = local;
    }
    uint64_t t0 = clock_now_us();
    snap_reader *r = NULL;
    int rc = snap_open(path, &r, err);
    if (rc != AICFN_OK) return rc;
    pl_prep *p = malloc(sizeof *p);
    if (!p) {
        snap_close(r);
        return aicfn_error_set(err, AICFN_E_NOMEM, "loading %s: out of memory", path);
    }
    p->r = r;
    p->t_open_us = clock_now_us() - t0;
    p->t_fetch_us = t_fetch;
    *bytes = loader_manifest_device_bytes(src->device, snap_reader_manifest(r));
    *prep = p;
    return AICFN_OK;
}

static int pl_cache_load(void *arg, void *prep, uint64_t max_bytes, void **model, uint64_t *alloc_bytes,
                         loader_timing *timing, aicfn_error *err) {
    loader_pipeline_source *src = arg;
    pl_prep *p = prep;
    loader_load_opts o = {.threads = src->threads, .max_bytes = max_bytes};
    loader_model *m = NULL;
    int rc = loader_load_reader(src->device, p->r, &o, &m, timing, err);
    if (rc == AICFN_OK) {
        timing->open_us = p->t_open_us;
        timing->fetch_us = p->t_fetch_us;
        /* The fetch and the open ran in prepare, before the load proper. */
        timing->total_us += p->t_open_us + p->t_fetch_us;
        *model = m;
        *alloc_bytes = loader_model_alloc_bytes(m);
    }
    snap_close(p->r);
    free(p);
    return rc;
}

static void pl_cache_abort(void *arg, void *prep) {
    (void)arg;
    pl_prep *p = prep;
    snap_close(p->r);
    free(p);
}

static void pl_cache_unload(void *arg, void *model) {
    (void)arg;
    loader_model_free(model);
}

const loader_cache_load_ops loader_pipeline_cache_ops = {
    .prepare = pl_cache_prepare, .load = pl_cache_load, .abort = pl_cache_abort, .unload = pl_cache_unload};
