/* reader.c: opening and decoding snapshots (snapshot.h), for the loader and the CLI.
 *
 * snap_open validates everything but the data frames: the manifest's skippable frame
 * and its msgpack (decoded by a bounded cursor: every count is checked against the bytes
 * that remain and the limits, nesting is bounded, no bytes may trail), the seek table
 * (zstd seekable format) and how the two agree. Data frames are checked as they are
 * decoded: only current-format zstd frames, a bounded window, exact output sizes.
 * Not for: writing snapshots (writer.c), devices or threads (loader/). */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_getFrameHeader: exported by libzstd 1.5 */
#include "snapshots/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "common/dtype.h"
#include "common/tunables.h"
#include "snapshots/filter.h"
#include "snapshots/format.h"

struct snap_reader {
    char *path;
    int fd;
    uint64_t file_bytes;
    const unsigned char *map; /* the whole file, read-only; NULL when mmap is refused */
    snap_manifest m;
    uint32_t n_frames;
    snap_frame *frames;
    uint32_t *first_tensor;  /* per frame: first tensor whose end lies past the frame's start */
    unsigned char *filtered; /* per frame: some overlapping tensor is filtered */
    uint32_t max_comp;
    uint32_t max_raw;
};

struct snap_dctx {
    ZSTD_DCtx *z;
};

/* ---- Bounded msgpack cursor --------------------------------------------------------- */

typedef struct rd_mp {
    const unsigned char *p;
    size_t n, pos;
} rd_mp;

static int rd_mp_err(aicfn_error *err, const rd_mp *c, const char *what) {
    return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: %s at byte %zu", what, c->pos);
}

static int rd_take(rd_mp *c, size_t k, const unsigned char **out) {
    if (c->n - c->pos < k) return -1;
    *out = c->p + c->pos;
    c->pos += k;
    return 0;
}

static uint64_t rd_be(const unsigned char *p, unsigned k) {
    uint64_t v = 0;
    for (unsigned i = 0; i < k; i++)
        v = (v << 8) | p[i];
    return v;
}

/* A non-negative integer in any msgpack encoding. */
static int rd_uint(rd_mp *c, uint64_t *out, aicfn_error *err) {
    const unsigned char *b, *q;
    if (rd_take(c, 1, &b)) return rd_mp_err(err, c, "truncated integer");
    unsigned t = b[0];
    if (t <= 0x7f) {
        *out = t;
        return 0;
    }
    unsigned k = 0, sign = 0;
    switch (t) {
    case 0xcc:
        k = 1;
        break;
    case 0xcd:
        k = 2;
        break;
    case 0xce:
        k = 4;
        break;
    case 0xcf:
        k = 8;
        break;
    case 0xd0:
        k = 1;
        sign = 1;
        break;
    case 0xd1:
        k = 2;
        sign = 1;
        break;
    case 0xd2:
        k = 4;
        sign = 1;
        break;
    case 0xd3:
        k = 8;
        sign = 1;
        break;
    default:
        return rd_mp_err(err, c, "expected a non-negative integer");
    }
    if (rd_take(c, k, &q)) return rd_mp_err(err, c, "truncated integer");
    uint64_t v = rd_be(q, k);
    if (sign && (q[0] & 0x80)) return rd_mp_err(err, c, "negative integer");
    *out = v;
    return 0;
}

static int rd_str(rd_mp *c, const char **s, size_t *len, aicfn_error *err) {
    const unsigned char *b, *q;
    if (rd_take(c, 1, &b)) return rd_mp_err(err, c, "truncated string");
    uint64_t l;
    if ((b[0] & 0xe0) == 0xa0)
        l = b[0] & 0x1f;
    else {
        unsigned k = b[0] == 0xd9 ? 1 : b[0] == 0xda ? 2 : b[0] == 0xdb ? 4 : 0;
        if (!k) return rd_mp_err(err, c, "expected a string");
        if (rd_take(c, k, &q)) return rd_mp_err(err, c, "truncated string length");
        l = rd_be(q, k);
    }
    if (l > c->n - c->pos) return rd_mp_err(err, c, "string longer than the manifest");
    *s = (const char *)c->p + c->pos;
    *len = (size_t)l;
    c->pos += (size_t)l;
    return 0;
}

/* Container header; `per_item` is the fewest bytes each item needs (bounds the count). */
static int rd_container(rd_mp *c, int map, uint32_t *n, aicfn_error *err) {
    const unsigned char *b, *q;
    if (rd_take(c, 1, &b)) return rd_mp_err(err, c, "truncated container");
    uint64_t v;
    if (map && (b[0] & 0xf0) == 0x80)
        v = b[0] & 0x0f;
    else if (!map && (b[0] & 0xf0) == 0x90)
        v = b[0] & 0x0f;
    else {
        unsigned k = 0;
        if (map)
            k = b[0] == 0xde ? 2 : b[0] == 0xdf ? 4 : 0;
        else
            k = b[0] == 0xdc ? 2 : b[0] == 0xdd ? 4 : 0;
        if (!k) return rd_mp_err(err, c, map ? "expected a map" : "expected an array");
        if (rd_take(c, k, &q)) return rd_mp_err(err, c, "truncated container length");
        v = rd_be(q, k);
    }
    if (v > AICFN_MAX_CONTAINER_ITEMS || v * (map ? 2u : 1u) > c->n - c->pos)
        return rd_mp_err(err, c, "container count larger than the bytes that remain");
    *n = (uint32_t)v;
    return 0;
}

static int rd_skip(rd_mp *c, int depth, aicfn_error *err) {
    if (depth > AICFN_MAX_NESTING) return rd_mp_err(err, c, "nesting too deep");
    const unsigned char *b, *q;
    if (rd_take(c, 1, &b)) return rd_mp_err(err, c, "truncated value");
    unsigned t = b[0];
    uint64_t skip = 0, items = 0;
    int is_map = 0;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return 0;
    if ((t & 0xe0) == 0xa0)
        skip = t & 0x1f;
    else if ((t & 0xf0) == 0x80) {
        items = t & 0x0f;
        is_map = 1;
    } else if ((t & 0xf0) == 0x90)
        items = t & 0x0f;
    else {
        switch (t) {
        case 0xcc:
        case 0xd0:
            skip = 1;
            break;
        case 0xcd:
        case 0xd1:
            skip = 2;
            break;
        case 0xca:
        case 0xce:
        case 0xd2:
            skip = 4;
            break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
            skip = 8;
            break;
        case 0xd4:
            skip = 2;
            break;
        case 0xd5:
            skip = 3;
            break;
        case 0xd6:
            skip = 5;
            break;
        case 0xd7:
            skip = 9;
            break;
        case 0xd8:
            skip = 17;
            break;
        case 0xc4:
        case 0xd9:
        case 0xc7:
        case 0xc5:
        case 0xda:
        case 0xc8:
        case 0xc6:
        case 0xdb:
        case 0xc9: {
            unsigned k = (t == 0xc4 || t == 0xd9 || t == 0xc7)   ? 1
                         : (t == 0xc5 || t == 0xda || t == 0xc8) ? 2
                                                                 : 4;
            if (rd_take(c, k, &q)) return rd_mp_err(err, c, "truncated length");
            skip = rd_be(q, k) + ((t >= 0xc7 && t <= 0xc9) ? 1 : 0);
            break;
        }
        case 0xdc:
        case 0xdd:
        case 0xde:
        case 0xdf: {
            unsigned k = (t == 0xdc || t == 0xde) ? 2 : 4;
            if (rd_take(c, k, &q)) return rd_mp_err(err, c, "truncated length");
            items = rd_be(q, k);
            is_map = t >= 0xde;
            break;
        }
        default:
            return rd_mp_err(err, c, "invalid msgpack type byte");
        }
    }
    if (skip > c->n - c->pos) return rd_mp_err(err, c, "value longer than the manifest");
    c->pos += (size_t)skip;
    if (is_map) items *= 2;
    if (items > c->n - c->pos) return rd_mp_err(err, c, "container count larger than the bytes that remain");
    for (uint64_t i = 0; i < items; i++)
        if (rd_skip(c, depth + 1, err)) return AICFN_E_CORRUPT;
    return 0;
}

static int rd_key_is(const char *k, size_t kl, const char *want) {
    return kl == strlen(want) && !memcmp(k, want, kl);
}

/* A model or tensor name: 1..AICFN_SNAP_MAX_NAME_BYTES bytes of UTF-8 without NUL (names
 * travel as JSON: safetensors headers, `snapshot inspect --json`). A tensor may not be
 * called __metadata__, which safetensors reserves. 0, or -1 bad (*why says how), -2 no
 * memory. jansson judges the UTF-8 (json_stringn refuses anything else). */
static int rd_name(const char *s, size_t l, bool tensor, char **out, const char **why) {
    *why = "empty, longer than the limit or holds NUL";
    if (l == 0 || l > AICFN_SNAP_MAX_NAME_BYTES || memchr(s, 0, l)) return -1;
    *why = "is __metadata__, which safetensors reserves";
    if (tensor && l == strlen("__metadata__") && memcmp(s, "__metadata__", l) == 0) return -1;
    json_t *utf8 = json_stringn(s, l);
    if (!utf8) {
        *why = "is not valid UTF-8";
        return -1;
    }
    json_decref(utf8);
    *out = strndup(s, l);
    return *out ? 0 : -2;
}

static void rd_manifest_free(snap_manifest *m) {
    for (uint32_t i = 0; i < m->n_tensors; i++)
        free(m->tensors[i].name);
    free(m->tensors);
    free(m->model_name);
    memset(m, 0, sizeof *m);
}

static int rd_tensor(rd_mp *c, uint32_t idx, snap_tensor *t, aicfn_error *err) {
    uint32_t nk;
    if (rd_container(c, 1, &nk, err)) return AICFN_E_CORRUPT;
    unsigned seen = 0;
    for (uint32_t k = 0; k < nk; k++) {
        const char *key, *s;
        size_t kl, sl;
        uint64_t v;
        if (rd_str(c, &key, &kl, err)) return AICFN_E_CORRUPT;
        unsigned bit = 0;
        if (rd_key_is(key, kl, "name")) {
            bit = 1;
            if (rd_str(c, &s, &sl, err)) return AICFN_E_CORRUPT;
            if (seen & bit)
                return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: tensor %u: duplicate key 'name'",
                                       idx);
            const char *why;
            int r = rd_name(s, sl, true, &t->name, &why);
            if (r == -2) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
            if (r) return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: tensor %u: name %s", idx, why);
        } else if (rd_key_is(key, kl, "dtype")) {
            bit = 2;
            if (rd_str(c, &s, &sl, err)) return AICFN_E_CORRUPT;
            char buf[16] = {0};
            bool fits = sl < sizeof buf && memchr(s, 0, sl) == NULL; /* "FP32\0junk" is not FP32 */
            if (fits) memcpy(buf, s, sl);
            t->dtype = fits ? dtype_from_name(buf) : AICFN_DTYPE_INVALID;
            if (t->dtype == AICFN_DTYPE_INVALID || dtype_size(t->dtype) == 0)
                return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "manifest: tensor %u: unknown dtype '%.*s'",
                                       idx, (int)(sl < 32 ? sl : 32), s);
        } else if (rd_key_is(key, kl, "shape")) {
            bit = 4;
            uint32_t nd;
            if (rd_container(c, 0, &nd, err)) return AICFN_E_CORRUPT;
            if (nd > AICFN_MAX_DIMS)
                return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "manifest: tensor %u: %u dims (at most %d)",
                                       idx, nd, AICFN_MAX_DIMS);
            t->ndim = nd;
            for (uint32_t d = 0; d < nd; d++) {
                if (rd_uint(c, &v, err)) return AICFN_E_CORRUPT;
                if (v > INT64_MAX)
                    return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: tensor %u: dim too large", idx);
                t->shape[d] = (int64_t)v;
            }
        } else if (rd_key_is(key, kl, "offset")) {
            bit = 8;
            if (rd_uint(c, &t->offset, err)) return AICFN_E_CORRUPT;
        } else if (rd_key_is(key, kl, "nbytes")) {
            bit = 16;
            if (rd_uint(c, &t->nbytes, err)) return AICFN_E_CORRUPT;
        } else if (rd_key_is(key, kl, "filter")) {
            bit = 32;
            if (rd_str(c, &s, &sl, err)) return AICFN_E_CORRUPT;
            int f = snap_filter_from_name(s, sl);
            if (f < 0)
                return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "manifest: tensor %u: unknown filter '%.*s'",
                                       idx, (int)(sl < 32 ? sl : 32), s);
            t->filter = (snap_filter)f;
        } else if (rd_key_is(key, kl, "xxh3")) {
            bit = 64;
            if (rd_uint(c, &t->xxh3, err)) return AICFN_E_CORRUPT;
        } else {
            if (rd_skip(c, 2, err)) return AICFN_E_CORRUPT;
            continue;
        }
        if (seen & bit)
            return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: tensor %u: duplicate key '%.*s'", idx,
                                   (int)kl, key);
        seen |= bit;
    }
    if (seen != 127)
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "manifest: tensor %u: missing keys (have mask %u of 127)", idx, seen);
    return AICFN_OK;
}

static int rd_cmp_name(const void *a, const void *b) {
    return strcmp((*(snap_tensor *const *)a)->name, (*(snap_tensor *const *)b)->name);
}

/* Decodes and checks the manifest (everything that does not need the seek table). */
static int rd_manifest(const unsigned char *p, size_t n, snap_manifest *m, aicfn_error *err) {
    rd_mp c = {p, n, 0};
    memset(m, 0, sizeof *m);
    uint32_t nk;
    if (rd_container(&c, 1, &nk, err)) return AICFN_E_CORRUPT;
    unsigned seen = 0;
    int have_tensors = 0;
    for (uint32_t k = 0; k < nk; k++) {
        const char *key, *s;
        size_t kl, sl;
        uint64_t v;
        if (rd_str(&c, &key, &kl, err)) return AICFN_E_CORRUPT;
        unsigned bit;
        if (rd_key_is(key, kl, "format")) {
            bit = 1;
            if (rd_uint(&c, &v, err)) return AICFN_E_CORRUPT;
            if (v != SNAP_FORMAT_VERSION)
                return aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                                       "manifest: format version %llu (this build reads %d)",
                                       (unsigned long long)v, SNAP_FORMAT_VERSION);
            m->format_version = (uint32_t)v;
        } else if (rd_key_is(key, kl, "name")) {
            bit = 2;
            if (rd_str(&c, &s, &sl, err)) return AICFN_E_CORRUPT;
            if (m->model_name) return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: duplicate key 'name'");
            const char *why;
            int r = rd_name(s, sl, false, &m->model_name, &why);
            if (r == -2) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
            if (r) return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: model name %s", why);
        } else if (rd_key_is(key, kl, "blob_bytes")) {
            bit = 4;
            if (rd_uint(&c, &m->blob_bytes, err)) return AICFN_E_CORRUPT;
        } else if (rd_key_is(key, kl, "chunk")) {
            bit = 8;
            if (rd_uint(&c, &v, err)) return AICFN_E_CORRUPT;
            if (v < AICFN_SNAP_MIN_CHUNK || v > AICFN_SNAP_MAX_CHUNK || v % AICFN_SNAP_ALIGN)
                return aicfn_error_set(
                    err, AICFN_E_CORRUPT, "manifest: chunk %llu is not a multiple of %u in [%u, %u]",
                    (unsigned long long)v, AICFN_SNAP_ALIGN, AICFN_SNAP_MIN_CHUNK, AICFN_SNAP_MAX_CHUNK);
            m->chunk_bytes = (uint32_t)v;
        } else if (rd_key_is(key, kl, "tensors")) {
            bit = 16;
            if (have_tensors)
                return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: duplicate key 'tensors'");
            have_tensors = 1;
            uint32_t nt;
            if (rd_container(&c, 0, &nt, err)) return AICFN_E_CORRUPT;
            if (nt > AICFN_SNAP_MAX_TENSORS || (uint64_t)nt * SNAP_MIN_TENSOR_ENTRY_BYTES > n - c.pos)
                return aicfn_error_set(
                    err, AICFN_E_CORRUPT,
                    "manifest: %u tensors cannot fit in the %zu bytes that remain (or exceed %u)", nt,
                    n - c.pos, AICFN_SNAP_MAX_TENSORS);
            m->tensors = calloc(nt ? nt : 1, sizeof *m->tensors);
            if (!m->tensors) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for %u tensors", nt);
            for (uint32_t i = 0; i < nt; i++) {
                m->n_tensors = i + 1; /* so that free() sees the names decoded so far */
                int rc = rd_tensor(&c, i, &m->tensors[i], err);
                if (rc) return rc;
            }
            m->n_tensors = nt;
        } else {
            if (rd_skip(&c, 1, err)) return AICFN_E_CORRUPT;
            continue;
        }
        if (seen & bit)
            return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: duplicate key '%.*s'", (int)kl, key);
        seen |= bit;
    }
    if (seen != 31)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: missing keys (have mask %u of 31)", seen);
    if (c.pos != n)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: %zu bytes trail the manifest object",
                               n - c.pos);

    /* Each tensor: size matches shape, aligned, inside the blob, sorted, no overlap. */
    uint64_t prev_end = 0;
    for (uint32_t i = 0; i < m->n_tensors; i++) {
        snap_tensor *t = &m->tensors[i];
        uint64_t nb;
        if (dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &nb) != 0 || nb != t->nbytes)
            return aicfn_error_set(err, AICFN_E_CORRUPT,
                                   "manifest: tensor '%s': nbytes %llu does not match its shape", t->name,
                                   (unsigned long long)t->nbytes);
        if (t->offset % AICFN_SNAP_ALIGN)
            return aicfn_error_set(err, AICFN_E_CORRUPT,
                                   "manifest: tensor '%s': offset %llu not aligned to %u", t->name,
                                   (unsigned long long)t->offset, AICFN_SNAP_ALIGN);
        if (t->offset > m->blob_bytes || t->nbytes > m->blob_bytes - t->offset)
            return aicfn_error_set(err, AICFN_E_CORRUPT,
                                   "manifest: tensor '%s': [%llu, +%llu) lies outside the blob (%llu bytes)",
                                   t->name, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                                   (unsigned long long)m->blob_bytes);
        if (t->offset < prev_end)
            return aicfn_error_set(
                err, AICFN_E_CORRUPT,
                "manifest: tensor '%s' at offset %llu overlaps the previous tensor (ends at %llu) "
                "or is out of order",
                t->name, (unsigned long long)t->offset, (unsigned long long)prev_end);
        if (t->filter == SNAP_FILTER_PLANES && !snap_filter_planes_of(t->dtype))
            return aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: tensor '%s': filter planes on dtype %s",
                                   t->name, dtype_name(t->dtype));
        prev_end = t->offset + t->nbytes;
    }
    if (m->n_tensors > 1) {
        snap_tensor **by = malloc(m->n_tensors * sizeof *by);
        if (!by) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
        for (uint32_t i = 0; i < m->n_tensors; i++)
            by[i] = &m->tensors[i];
        qsort(by, m->n_tensors, sizeof *by, rd_cmp_name);
        int rc = AICFN_OK;
        for (uint32_t i = 1; i < m->n_tensors && !rc; i++)
            if (strcmp(by[i - 1]->name, by[i]->name) == 0)
                rc = aicfn_error_set(err, AICFN_E_CORRUPT, "manifest: duplicate tensor name '%s'",
                                     by[i]->name);
        free(by);
        if (rc) return rc;
    }
    /* The blob ends with the last tensor (no trailing padding; a reader takes up to the
     * next alignment boundary): a loader reserves blob_bytes before reading any frame. */
    uint64_t blob_end = (prev_end + AICFN_SNAP_ALIGN - 1) / AICFN_SNAP_ALIGN * AICFN_SNAP_ALIGN;
    if (m->blob_bytes > blob_end)
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "manifest: blob_bytes %llu runs past the last tensor, which ends at %llu",
                               (unsigned long long)m->blob_bytes, (unsigned long long)prev_end);
    return AICFN_OK;
}

/* ---- Opening ---------------------------------------------------------------------------- */

static int rd_pread(const snap_reader *r, void *dst, size_t len, uint64_t off, aicfn_error *err) {
    unsigned char *p = dst;
    while (len) {
        ssize_t k = pread(r->fd, p, len, (off_t)off);
        if (k < 0) {
            if (errno == EINTR) continue;
            return aicfn_error_errno(err, AICFN_E_IO, errno, "%s: read at offset %llu", r->path,
                                     (unsigned long long)off);
        }
        if (k == 0)
            return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: file ends at offset %llu (truncated)", r->path,
                                   (unsigned long long)off);
        p += k;
        len -= (size_t)k;
        off += (uint64_t)k;
    }
    return AICFN_OK;
}

static uint32_t rd_first_tensor(const snap_manifest *m, uint64_t pos) {
    uint32_t lo = 0, hi = m->n_tensors;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->tensors[mid].offset + m->tensors[mid].nbytes <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int rd_open(snap_reader *r, aicfn_error *err) {
    const char *path = r->path;
    uint64_t fb = r->file_bytes;
    const uint64_t min_file = 8 + SNAP_MANIFEST_PREFIX + 1 + 8 + 8 + SNAP_SEEKTABLE_FOOTER;
    if (fb < min_file)
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "%s: %llu bytes is too short for a snapshot (truncated?)", path,
                               (unsigned long long)fb);
    unsigned char head[8 + SNAP_MANIFEST_PREFIX];
    int rc = rd_pread(r, head, sizeof head, 0, err);
    if (rc) return rc;
    if (snap_get_le32(head) != SNAP_MANIFEST_MAGIC ||
        memcmp(head + 8, SNAP_MANIFEST_TAG, SNAP_MANIFEST_TAG_LEN))
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "%s: no snapshot manifest frame at offset 0 (not an aicfn snapshot)", path);
    uint64_t mframe = snap_get_le32(head + 4); /* tag + hash + msgpack */
    if (mframe < SNAP_MANIFEST_PREFIX + 1 || mframe - SNAP_MANIFEST_PREFIX > AICFN_SNAP_MAX_MANIFEST_BYTES)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: manifest frame size %llu outside [%d, %u]", path,
                               (unsigned long long)mframe, SNAP_MANIFEST_PREFIX + 1,
                               AICFN_SNAP_MAX_MANIFEST_BYTES + SNAP_MANIFEST_PREFIX);
    if (8 + mframe > fb - 8 - SNAP_SEEKTABLE_FOOTER)
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "%s: manifest frame (%llu bytes) runs past the end of the file", path,
                               (unsigned long long)mframe);

    /* Seek table: footer, frame header, entries. */
    unsigned char foot[SNAP_SEEKTABLE_FOOTER];
    rc = rd_pread(r, foot, sizeof foot, fb - sizeof foot, err);
    if (rc) return rc;
    if (snap_get_le32(foot + 5) != SNAP_SEEKABLE_MAGIC)
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "%s: no seek table at the end (seekable magic missing; truncated?)", path);
    uint32_t n_entries = snap_get_le32(foot);
    unsigned desc = foot[4];
    if (desc & SNAP_SEEK_RESERVED_BITS)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "seek table: reserved descriptor bits set (0x%02x)",
                               desc);
    uint64_t esize = (desc & SNAP_SEEK_CHECKSUM_FLAG) ? 12 : 8;
    if (n_entries < 1 || n_entries > AICFN_SNAP_MAX_FRAMES)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "seek table: %u frames outside [1, %u]", n_entries,
                               AICFN_SNAP_MAX_FRAMES);
    uint64_t table = (uint64_t)n_entries * esize + SNAP_SEEKTABLE_FOOTER;
    if (table + 8 > fb - 8 - mframe)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "seek table: %u entries do not fit in the file",
                               n_entries);
    uint64_t seek_start = fb - 8 - table;
    unsigned char sh[8];
    rc = rd_pread(r, sh, 8, seek_start, err);
    if (rc) return rc;
    if (snap_get_le32(sh) != SNAP_SEEKTABLE_MAGIC || snap_get_le32(sh + 4) != table)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "seek table: bad skippable frame header at offset %llu",
                               (unsigned long long)seek_start);
    unsigned char *ent = malloc((size_t)(n_entries * esize));
    if (!ent) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for the seek table");
    rc = rd_pread(r, ent, (size_t)(n_entries * esize), seek_start + 8, err);
    if (rc) goto out;
    if (snap_get_le32(ent) != 8 + mframe || snap_get_le32(ent + 4) != 0) {
        rc =
            aicfn_error_set(err, AICFN_E_CORRUPT, "seek table: entry 0 does not describe the manifest frame");
        goto out;
    }

    /* Manifest: its hash first, then the msgpack. */
    size_t mlen = (size_t)(mframe - SNAP_MANIFEST_PREFIX);
    unsigned char *mb = malloc(mlen);
    if (!mb) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for a %zu-byte manifest", mlen);
        goto out;
    }
    rc = rd_pread(r, mb, mlen, sizeof head, err);
    if (!rc && XXH3_64bits(mb, mlen) != snap_get_le64(head + 16))
        rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                             "manifest: checksum mismatch (the manifest frame is corrupt)");
    if (!rc) rc = rd_manifest(mb, mlen, &r->m, err);
    free(mb);
    if (rc) goto out;
    snap_manifest *m = &r->m;

    /* Frames tile the blob and the data region exactly: one per chunk (checked before
     * anything is sized from the seek table's count). */
    r->n_frames = n_entries - 1;
    uint64_t chunks = (m->blob_bytes + m->chunk_bytes - 1) / m->chunk_bytes;
    if (r->n_frames != chunks) {
        rc = aicfn_error_set(
            err, AICFN_E_CORRUPT,
            "seek table: %u data frames, but a blob of %llu bytes in chunks of %u makes %llu", r->n_frames,
            (unsigned long long)m->blob_bytes, m->chunk_bytes, (unsigned long long)chunks);
        goto out;
    }
    r->frames = calloc(r->n_frames ? r->n_frames : 1, sizeof *r->frames);
    r->first_tensor = calloc(r->n_frames ? r->n_frames : 1, sizeof *r->first_tensor);
    r->filtered = calloc(r->n_frames ? r->n_frames : 1, 1);
    if (!r->frames || !r->first_tensor || !r->filtered) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for %u frames", r->n_frames);
        goto out;
    }
    uint64_t foff = 8 + mframe, roff = 0;
    for (uint32_t i = 0; i < r->n_frames; i++) {
        const unsigned char *e = ent + (size_t)(i + 1) * esize;
        snap_frame *f = &r->frames[i];
        f->comp_size = snap_get_le32(e);
        f->raw_size = snap_get_le32(e + 4);
        f->file_offset = foff;
        f->raw_offset = roff;
        if (f->comp_size == 0 || f->raw_size == 0 || f->raw_size > m->chunk_bytes) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT, "seek table: frame %u has sizes %u -> %u (chunk %u)",
                                 i, f->comp_size, f->raw_size, m->chunk_bytes);
            goto out;
        }
        /* Readers size buffers from the largest frame: bounded by the chunk, not the file. */
        if (f->comp_size > SNAP_FRAME_COMP_BOUND(f->raw_size)) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "seek table: frame %u: %u compressed bytes for %u raw bytes (at most %llu)",
                                 i, f->comp_size, f->raw_size,
                                 (unsigned long long)SNAP_FRAME_COMP_BOUND(f->raw_size));
            goto out;
        }
        if (f->comp_size < SNAP_FRAME_COMP_FLOOR(f->raw_size)) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "seek table: frame %u: %u compressed bytes cannot restore %u raw bytes (zstd "
                                 "needs at least %llu)",
                                 i, f->comp_size, f->raw_size,
                                 (unsigned long long)SNAP_FRAME_COMP_FLOOR(f->raw_size));
            goto out;
        }
        /* Every frame but the last restores exactly one chunk (what the writer makes), so
         * the frame table costs a few bytes per chunk of blob, never per 256 bytes of file. */
        if (i + 1 < r->n_frames && f->raw_size != m->chunk_bytes) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "seek table: frame %u restores %u bytes; every frame but the last must "
                                 "restore exactly the chunk (%u)",
                                 i, f->raw_size, m->chunk_bytes);
            goto out;
        }
        if (roff % AICFN_SNAP_ALIGN) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "seek table: frame %u starts at blob offset %llu, not aligned", i,
                                 (unsigned long long)roff);
            goto out;
        }
        if (f->comp_size > seek_start - foff) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "seek table: frame %u (%u bytes at %llu) runs into the seek table", i,
                                 f->comp_size, (unsigned long long)foff);
            goto out;
        }
        foff += f->comp_size;
        roff += f->raw_size;
        if (f->comp_size > r->max_comp) r->max_comp = f->comp_size;
        if (f->raw_size > r->max_raw) r->max_raw = f->raw_size;
    }
    if (foff != seek_start) {
        rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                             "seek table: frames end at %llu but the seek table starts at %llu",
                             (unsigned long long)foff, (unsigned long long)seek_start);
        goto out;
    }
    if (roff != m->blob_bytes) {
        rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                             "seek table: frames restore %llu bytes but the blob has %llu",
                             (unsigned long long)roff, (unsigned long long)m->blob_bytes);
        goto out;
    }
    for (uint32_t i = 0; i < r->n_frames; i++) {
        const snap_frame *f = &r->frames[i];
        r->first_tensor[i] = rd_first_tensor(m, f->raw_offset);
        for (uint32_t t = r->first_tensor[i];
             t < m->n_tensors && m->tensors[t].offset < f->raw_offset + f->raw_size; t++)
            if (m->tensors[t].filter == SNAP_FILTER_PLANES && m->tensors[t].nbytes) {
                r->filtered[i] = 1;
                break;
            }
    }
out:
    free(ent);
    return rc;
}

int snap_open(const char *path, snap_reader **out, aicfn_error *err) {
    *out = NULL;
    snap_reader *r = calloc(1, sizeof *r);
    if (!r) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    r->fd = -1;
    r->path = strdup(path);
    if (!r->path) {
        snap_close(r);
        return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    }
    r->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
    if (r->fd < 0) {
        int e = errno;
        snap_close(r);
        return aicfn_error_errno(err, e == ENOENT ? AICFN_E_NOT_FOUND : AICFN_E_IO, e, "opening %s", path);
    }
    struct stat st;
    if (fstat(r->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snap_close(r);
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: not a regular file", path);
    }
    r->file_bytes = (uint64_t)st.st_size;
    int rc = rd_open(r, err);
    if (rc == AICFN_OK && r->file_bytes) {
        void *m = mmap(NULL, (size_t)r->file_bytes, PROT_READ, MAP_SHARED, r->fd, 0);
        if (m != MAP_FAILED) r->map = m; /* else: snap_frame_mapped says so; callers pread */
        /* Pages missing from the page cache are then read in 2 MiB folios, which the
         * kernel maps with one PMD entry each (docs/snapshot-format.md §9):
         * the next load of this file pages in almost for free. Advice only: kernels or
         * filesystems without large folios ignore it or refuse it (EINVAL). */
        if (r->map) (void)madvise((void *)r->map, (size_t)r->file_bytes, MADV_HUGEPAGE);
    }
    if (rc) {
        if (err && !strstr(err->msg, path)) aicfn_error_wrap(err, "%s", path);
        snap_close(r);
        return rc;
    }
    *out = r;
    return AICFN_OK;
}

void snap_close(snap_reader *r) {
    if (!r) return;
    if (r->map) munmap((void *)r->map, (size_t)r->file_bytes);
    if (r->fd >= 0) close(r->fd);
    rd_manifest_free(&r->m);
    free(r->frames);
    free(r->first_tensor);
    free(r->filtered);
    free(r->path);
    free(r);
}

const snap_manifest *snap_reader_manifest(const snap_reader *r) {
    return &r->m;
}
const char *snap_reader_path(const snap_reader *r) {
    return r->path;
}
uint64_t snap_reader_file_bytes(const snap_reader *r) {
    return r->file_bytes;
}
uint32_t snap_reader_frame_count(const snap_reader *r) {
    return r->n_frames;
}
const snap_frame *snap_reader_frame(const snap_reader *r, uint32_t i) {
    return i < r->n_frames ? &r->frames[i] : NULL;
}
uint32_t snap_reader_max_comp_size(const snap_reader *r) {
    return r->max_comp;
}

uint32_t snap_reader_max_raw_size(const snap_reader *r) {
    return r->max_raw;
}
int snap_frame_is_filtered(const snap_reader *r, uint32_t i) {
    return i < r->n_frames && r->filtered[i];
}

/* ---- Frames ------------------------------------------------------------------------------ */

int snap_dctx_create(snap_dctx **out, aicfn_error *err) {
    *out = NULL;
    snap_dctx *d = calloc(1, sizeof *d);
    if (!d) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    d->z = ZSTD_createDCtx();
    if (!d->z) {
        free(d);
        return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for a zstd context");
    }
    /* windowLogMax bounds the streaming decoder; snap_frame_decompress decodes each frame in
     * one shot, which it does not bound, so that checks every frame header's window too. */
    size_t rc = ZSTD_DCtx_setParameter(d->z, ZSTD_d_windowLogMax, AICFN_SNAP_WINDOW_LOG_MAX);
    if (ZSTD_isError(rc)) {
        snap_dctx_free(d);
        return aicfn_error_set(err, AICFN_E_INTERNAL, "zstd windowLogMax: %s", ZSTD_getErrorName(rc));
    }
    *out = d;
    return AICFN_OK;
}

void snap_dctx_free(snap_dctx *d) {
    if (!d) return;
    ZSTD_freeDCtx(d->z);
    free(d);
}

int snap_frame_read(const snap_reader *r, uint32_t i, void *buf, size_t cap, aicfn_error *err) {
    if (i >= r->n_frames)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: frame %u out of range", r->path, i);
    const snap_frame *f = &r->frames[i];
    if (cap < f->comp_size)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: frame %u needs %u bytes, buffer has %zu", r->path,
                               i, f->comp_size, cap);
    int rc = rd_pread(r, buf, f->comp_size, f->file_offset, err);
    /* snap_open saw the file cover every frame: a short read now is the file shrinking
     * under us, an I/O condition as snap_frame_mapped reports it, not a corrupt file. */
    if (rc == AICFN_E_CORRUPT)
        return aicfn_error_set(
            err, AICFN_E_IO, "%s: frame %u (file bytes %llu..%llu): the file shrank while open", r->path, i,
            (unsigned long long)f->file_offset, (unsigned long long)(f->file_offset + f->comp_size));
    if (rc) aicfn_error_wrap(err, "frame %u", i);
    return rc;
}

const void *snap_frame_mapped(const snap_reader *r, uint32_t i, aicfn_error *err) {
    if (i >= r->n_frames) {
        aicfn_error_set(err, AICFN_E_INVALID, "%s: frame %u out of range", r->path, i);
        return NULL;
    }
    if (!r->map) {
        aicfn_error_set(err, AICFN_E_UNSUPPORTED, "%s: not mapped", r->path);
        return NULL;
    }
    const snap_frame *f = &r->frames[i];
    /* Fault the frame's pages in now. MADV_POPULATE_READ fails with EFAULT where an
     * access would raise SIGBUS (the file shrank since it was opened): that becomes an
     * error here instead of a crash in the decompressor. Kernels before 5.14 lack it
     * (EINVAL): fstat then checks that the file still covers the frame. */
    long page = sysconf(_SC_PAGESIZE);
    uint64_t lo = f->file_offset & ~(uint64_t)(page - 1), hi = f->file_offset + f->comp_size;
    if (madvise((void *)(r->map + lo), (size_t)(hi - lo), MADV_POPULATE_READ) != 0) {
        int e = errno;
        struct stat st;
        if (e == EFAULT || (e == EINVAL && (fstat(r->fd, &st) != 0 || (uint64_t)st.st_size < hi))) {
            aicfn_error_set(err, AICFN_E_IO,
                            "%s: frame %u (file bytes %llu..%llu): the file shrank while open", r->path, i,
                            (unsigned long long)f->file_offset, (unsigned long long)hi);
            return NULL;
        }
        if (e != EINVAL && e != EINTR && e != EAGAIN && e != ENOMEM) {
            aicfn_error_errno(err, AICFN_E_IO, e, "%s: paging in frame %u", r->path, i);
            return NULL;
        }
    }
    return r->map + f->file_offset;
}

int snap_frame_decompress(snap_dctx *d, const snap_reader *r, uint32_t i, const void *comp, void *out,
                          aicfn_error *err) {
    if (i >= r->n_frames)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: frame %u out of range", r->path, i);
    const snap_frame *f = &r->frames[i];
    const unsigned char *src = comp;
    unsigned char *dst = out;
    size_t left = f->comp_size, pos = 0, cap = f->raw_size, sub = 0;
    while (left) {
        size_t at = f->comp_size - left;
        if (left < 4 || snap_get_le32(src) != ZSTD_MAGICNUMBER)
            return aicfn_error_set(
                err, AICFN_E_CORRUPT,
                "%s: frame %u: zstd frame %zu at +%zu has magic 0x%08x, not 0x%08x (legacy format "
                "or not zstd)",
                r->path, i, sub, at, left < 4 ? 0u : snap_get_le32(src), ZSTD_MAGICNUMBER);
        ZSTD_frameHeader fh;
        size_t h = ZSTD_getFrameHeader(&fh, src, left);
        if (ZSTD_isError(h) || h != 0 || fh.frameType != ZSTD_frame)
            return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: frame %u: bad zstd frame header at +%zu (%s)",
                                   r->path, i, at, ZSTD_isError(h) ? ZSTD_getErrorName(h) : "truncated");
        if (fh.windowSize > (1ull << AICFN_SNAP_WINDOW_LOG_MAX) || fh.dictID != 0)
            return aicfn_error_set(err, AICFN_E_CORRUPT,
                                   "%s: frame %u: window of %llu bytes or a dictionary (id %u)", r->path, i,
                                   (unsigned long long)fh.windowSize, fh.dictID);
        if (fh.frameContentSize != ZSTD_CONTENTSIZE_UNKNOWN && fh.frameContentSize > cap - pos)
            return aicfn_error_set(
                err, AICFN_E_CORRUPT,
                "%s: frame %u: zstd frame at +%zu claims %llu bytes, more than the %zu left of its "
                "%u-byte range",
                r->path, i, at, (unsigned long long)fh.frameContentSize, cap - pos, f->raw_size);
        size_t fsz = ZSTD_findFrameCompressedSize(src, left);
        if (ZSTD_isError(fsz))
            return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: frame %u: zstd frame at +%zu: %s", r->path, i,
                                   at, ZSTD_getErrorName(fsz));
        size_t got = ZSTD_decompressDCtx(d->z, dst + pos, cap - pos, src, fsz);
        if (ZSTD_isError(got)) {
            int too_big = ZSTD_getErrorCode(got) == ZSTD_error_dstSize_tooSmall;
            return aicfn_error_set(
                err, AICFN_E_CORRUPT, "%s: frame %u: zstd frame at +%zu: %s", r->path, i, at,
                too_big ? "produces more than the frame's raw size" : ZSTD_getErrorName(got));
        }
        if (fh.frameContentSize != ZSTD_CONTENTSIZE_UNKNOWN && got != fh.frameContentSize)
            return aicfn_error_set(err, AICFN_E_CORRUPT,
                                   "%s: frame %u: zstd frame at +%zu restored %zu of %llu bytes", r->path, i,
                                   at, got, (unsigned long long)fh.frameContentSize);
        pos += got;
        src += fsz;
        left -= fsz;
        sub++;
    }
    if (pos != cap)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: frame %u restored %zu bytes, expected %u", r->path,
                               i, pos, f->raw_size);
    return AICFN_OK;
}

int snap_frame_unfilter(const snap_reader *r, uint32_t i, const void *filtered, void *dst, aicfn_error *err) {
    return snap_frame_unfilter_each(r, i, filtered, dst, NULL, NULL, err);
}

int snap_frame_unfilter_each(const snap_reader *r, uint32_t i, const void *filtered, void *dst,
                             snap_piece_fn piece, void *arg, aicfn_error *err) {
    if (i >= r->n_frames)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: frame %u out of range", r->path, i);
    const snap_frame *f = &r->frames[i];
    const unsigned char *s = filtered;
    unsigned char *d = dst;
    if (!r->filtered[i] && !piece) {
        if (s != d) memmove(d, s, f->raw_size);
        return AICFN_OK;
    }
    const snap_manifest *m = &r->m;
    uint64_t fo = f->raw_offset, fe = fo + f->raw_size;
    size_t cursor = 0;
    _Alignas(64) unsigned char hot[AICFN_SNAP_UNFILTER_PIECE]; /* a piece's raw bytes, for `piece` */
    for (uint32_t ti = r->first_tensor[i]; ti < m->n_tensors; ti++) {
        const snap_tensor *t = &m->tensors[ti];
        if (t->offset >= fe) break;
        uint64_t a = t->offset > fo ? t->offset : fo,
                 e = t->offset + t->nbytes < fe ? t->offset + t->nbytes : fe;
        if (e <= a) continue;
        size_t sa = (size_t)(a - fo), len = (size_t)(e - a);
        if (sa > cursor && s != d) /* padding */
            snap_filter_inverse_stream(AICFN_DTYPE_UINT8, SNAP_FILTER_NONE, s + cursor, sa - cursor, 0,
                                       sa - cursor, d + cursor, NULL);
        int planes = t->filter == SNAP_FILTER_PLANES;
        /* Pieces are whole elements: tensor slices in a frame are (dtype_size) multiples. */
        size_t step = planes ? AICFN_SNAP_UNFILTER_PIECE : AICFN_SNAP_COPY_PIECE;
        size_t esz = dtype_size(t->dtype);
        if (esz > 1) step -= step % esz;
        for (size_t at = 0; at < len; at += step) {
            size_t n = len - at < step ? len - at : step;
            const unsigned char *raw = s + sa + at; /* where the piece's raw bytes are in cache */
            if (planes) {
                snap_filter_inverse_stream(t->dtype, SNAP_FILTER_PLANES, s + sa, len, at, n, d + sa + at,
                                           piece ? hot : NULL);
                raw = hot;
            } else if (s != d) {
                snap_filter_inverse_stream(t->dtype, SNAP_FILTER_NONE, s + sa, len, at, n, d + sa + at, NULL);
            }
            if (piece) {
                int rc = piece(arg, ti, a + at, raw, n);
                if (rc != AICFN_OK) {
                    snap_filter_stream_fence();
                    return rc;
                }
            }
        }
        cursor = sa + len;
    }
    if (f->raw_size > cursor && s != d)
        snap_filter_inverse_stream(AICFN_DTYPE_UINT8, SNAP_FILTER_NONE, s + cursor, f->raw_size - cursor, 0,
                                   f->raw_size - cursor, d + cursor, NULL);
    snap_filter_stream_fence(); /* the frame is whole before anyone else may read it */
    return AICFN_OK;
}

int snap_tensor_verify(const snap_reader *r, uint32_t t, const void *blob, aicfn_error *err) {
    if (t >= r->m.n_tensors)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: tensor %u out of range", r->path, t);
    const snap_tensor *x = &r->m.tensors[t];
    uint64_t h = XXH3_64bits((const unsigned char *)blob + x->offset, (size_t)x->nbytes);
    if (h != x->xxh3)
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "%s: tensor '%s': checksum mismatch (xxh3 %016llx, expected %016llx)", r->path,
                               x->name, (unsigned long long)h, (unsigned long long)x->xxh3);
    return AICFN_OK;
}

int snap_read_all(const snap_reader *r, void *blob, aicfn_error *err) {
    snap_dctx *d = NULL;
    unsigned char *comp = NULL, *filt = NULL;
    int rc = snap_dctx_create(&d, err);
    if (rc) return rc;
    comp = malloc(r->max_comp ? r->max_comp : 1);
    filt = malloc(r->max_raw ? r->max_raw : 1);
    if (!comp || !filt) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for frame buffers");
        goto out;
    }
    unsigned char *b = blob;
    for (uint32_t i = 0; i < r->n_frames && !rc; i++) {
        const snap_frame *f = &r->frames[i];
        rc = snap_frame_read(r, i, comp, r->max_comp, err);
        if (rc) break;
        unsigned char *target = r->filtered[i] ? filt : b + f->raw_offset;
        rc = snap_frame_decompress(d, r, i, comp, target, err);
        if (!rc && r->filtered[i]) rc = snap_frame_unfilter(r, i, filt, b + f->raw_offset, err);
    }
    for (uint32_t t = 0; t < r->m.n_tensors && !rc; t++)
        rc = snap_tensor_verify(r, t, blob, err);
    /* Padding between tensors must be zeros (checksums do not cover it). */
    uint64_t cursor = 0;
    for (uint32_t t = 0; t <= r->m.n_tensors && !rc; t++) {
        uint64_t end = t < r->m.n_tensors ? r->m.tensors[t].offset : r->m.blob_bytes;
        for (uint64_t p = cursor; p < end; p++)
            if (b[p]) {
                rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: padding byte at blob offset %llu is not zero",
                                     r->path, (unsigned long long)p);
                break;
            }
        if (t < r->m.n_tensors) cursor = r->m.tensors[t].offset + r->m.tensors[t].nbytes;
    }
out:
    free(comp);
    free(filt);
    snap_dctx_free(d);
    return rc;
}

int snap_verify(const snap_reader *r, aicfn_error *err) {
    return snap_verify_each(r, NULL, NULL, err);
}

int snap_verify_each(const snap_reader *r, snap_piece_fn piece, void *arg, aicfn_error *err) {
    const snap_manifest *m = &r->m;
    snap_dctx *d = NULL;
    unsigned char *comp = NULL, *filt = NULL, *raw = NULL;
    XXH3_state_t *xs = XXH3_createState();
    int rc = snap_dctx_create(&d, err);
    if (rc) goto out;
    comp = malloc(r->max_comp ? r->max_comp : 1);
    filt = malloc(r->max_raw ? r->max_raw : 1);
    raw = malloc(r->max_raw ? r->max_raw : 1);
    if (!comp || !filt || !raw || !xs) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for frame buffers");
        goto out;
    }
    uint32_t ht = 0;    /* tensor being hashed */
    uint64_t hdone = 0; /* its bytes hashed so far */
    for (uint32_t i = 0; i < r->n_frames; i++) {
        const snap_frame *f = &r->frames[i];
        rc = snap_frame_read(r, i, comp, r->max_comp, err);
        if (rc) goto out;
        rc = snap_frame_decompress(d, r, i, comp, r->filtered[i] ? filt : raw, err);
        if (!rc && r->filtered[i]) rc = snap_frame_unfilter(r, i, filt, raw, err);
        if (rc) goto out;
        uint64_t fo = f->raw_offset, fe = fo + f->raw_size, pos = fo;
        for (;;) {
            /* Zero padding up to the next tensor's bytes (or the frame's end). */
            uint64_t next = fe;
            while (ht < m->n_tensors && m->tensors[ht].nbytes == 0) {
                if (m->tensors[ht].xxh3 != XXH3_64bits(NULL, 0)) {
                    rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                         "%s: tensor '%s': checksum mismatch (empty tensor)", r->path,
                                         m->tensors[ht].name);
                    goto out;
                }
                ht++;
            }
            if (ht < m->n_tensors && hdone == 0 && m->tensors[ht].offset < fe) next = m->tensors[ht].offset;
            if (ht < m->n_tensors && hdone > 0) next = pos;
            for (uint64_t p = pos; p < next; p++)
                if (raw[p - fo]) {
                    rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                         "%s: frame %u: padding byte at blob offset %llu is not zero",
                                         r->path, i, (unsigned long long)p);
                    goto out;
                }
            pos = next;
            if (pos >= fe) break;
            const snap_tensor *t = &m->tensors[ht];
            if (hdone == 0) XXH3_64bits_reset(xs);
            uint64_t end = t->offset + t->nbytes < fe ? t->offset + t->nbytes : fe;
            XXH3_64bits_update(xs, raw + (pos - fo), (size_t)(end - pos));
            if (piece && (rc = piece(arg, ht, pos, raw + (pos - fo), (size_t)(end - pos))) != AICFN_OK)
                goto out;
            hdone += end - pos;
            pos = end;
            if (hdone == t->nbytes) {
                uint64_t h = XXH3_64bits_digest(xs);
                if (h != t->xxh3) {
                    rc =
                        aicfn_error_set(err, AICFN_E_CORRUPT,
                                        "%s: tensor '%s': checksum mismatch (xxh3 %016llx, expected %016llx)",
                                        r->path, t->name, (unsigned long long)h, (unsigned long long)t->xxh3);
                    goto out;
                }
                hdone = 0;
                ht++;
            }
        }
    }
    /* Empty tensors after the last frame's bytes (all of them when there is no frame). */
    while (ht < m->n_tensors && m->tensors[ht].nbytes == 0) {
        if (m->tensors[ht].xxh3 != XXH3_64bits(NULL, 0)) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: tensor '%s': checksum mismatch (empty tensor)",
                                 r->path, m->tensors[ht].name);
            goto out;
        }
        ht++;
    }
    if (ht != m->n_tensors)
        rc = aicfn_error_set(err, AICFN_E_INTERNAL, "%s: tensor '%s' was not covered by the frames", r->path,
                             m->tensors[ht].name);
out:
    XXH3_freeState(xs);
    free(comp);
    free(filt);
    free(raw);
    snap_dctx_free(d);
    return rc;
}
