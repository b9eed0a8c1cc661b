/* safetensors.c: parsing and validating safetensors headers from untrusted files,
 * opening single, multiple and sharded checkpoints, reading tensor bytes with pread,
 * and writing a safetensors file (for `snapshot unpack`).
 * Not for: compression or the snapshot format (writer.c, reader.c). */
#include "snapshots/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/tunables.h"
#include "snapshots/tmpfile.h"

struct snap_st_set {
    uint32_t n_files;
    char **paths;
    int *fds;
    uint64_t *sizes;
    uint32_t n_tensors;
    snap_st_tensor *tensors;
    uint64_t total_bytes;
};

static uint64_t st_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int st_cmp_offset(const void *a, const void *b) {
    const snap_st_tensor *x = a, *y = b;
    if (x->data_offset != y->data_offset) return x->data_offset < y->data_offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

void snap_st_header_free(snap_st_header *h) {
    if (!h) return;
    for (uint32_t i = 0; i < h->n_tensors; i++)
        free(h->tensors[i].name);
    free(h->tensors);
    h->tensors = NULL;
    h->n_tensors = 0;
}

/* Parses one entry of the header object into `t`. */
static int st_parse_entry(const char *what, const char *name, json_t *v, uint64_t data_bytes,
                          snap_st_tensor *t, aicfn_error *err) {
    if (!json_is_object(v))
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: tensor '%s': entry is not a JSON object", what,
                               name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: tensor '%s': missing or non-string dtype", what,
                               name);
    aicfn_dtype dt = dtype_from_safetensors_name(json_string_value(jd));
    if (dt == AICFN_DTYPE_INVALID || dtype_size(dt) == 0)
        return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "%s: tensor '%s': unknown dtype '%.32s'", what, name,
                               json_string_value(jd));
    if (!json_is_array(js))
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: tensor '%s': missing or non-array shape", what,
                               name);
    size_t nd = json_array_size(js);
    if (nd > AICFN_MAX_DIMS)
        return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "%s: tensor '%s': shape has %zu dims (at most %d)",
                               what, name, nd, AICFN_MAX_DIMS);
    t->dtype = dt;
    t->ndim = (uint32_t)nd;
    for (size_t d = 0; d < nd; d++) {
        json_t *x = json_array_get(js, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return aicfn_error_set(err, AICFN_E_CORRUPT,
                                   "%s: tensor '%s': shape[%zu] is not a non-negative integer", what, name,
                                   d);
        t->shape[d] = (int64_t)json_integer_value(x);
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: tensor '%s': data_offsets is not [begin, end]",
                               what, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0)), e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: tensor '%s': data_offsets [%lld, %lld] are invalid",
                               what, name, (long long)b, (long long)e);
    if ((uint64_t)e > data_bytes)
        return aicfn_error_set(
            err, AICFN_E_CORRUPT,
            "%s: tensor '%s': data_offsets [%lld, %lld] outside the data region (%llu bytes)", what, name,
            (long long)b, (long long)e, (unsigned long long)data_bytes);
    uint64_t nbytes;
    if (dtype_tensor_bytes(dt, t->shape, t->ndim, &nbytes) != 0)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: tensor '%s': shape size overflows", what, name);
    if (nbytes != (uint64_t)(e - b))
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "%s: tensor '%s': shape x dtype size is %llu bytes but data_offsets span %llu",
                               what, name, (unsigned long long)nbytes, (unsigned long long)(e - b));
    t->nbytes = nbytes;
    t->data_offset = (uint64_t)b;
    return AICFN_OK;
}

/* Refuses, before jansson builds it, JSON whose tree would be out of proportion to any
 * real header or index: both are an object of small objects (a tensor's dtype, shape and
 * data_offsets; __metadata__'s strings; an index's weight_map entries), so nesting is at
 * most ST_SCAN_DEPTH deep, arrays hold at most ST_SCAN_ARRAY elements (shapes, offsets)
 * and objects at most AICFN_SAFETENSORS_MAX_TENSORS + 1 members. Without it, a 90 MB
 * header holding one 45M-element shape took 1.85 GB and 26 s to parse before the dims
 * check refused it. Malformed text is left to the parser to report. */
#define ST_SCAN_DEPTH 3
#define ST_SCAN_ARRAY 64
static int st_prescan(const char *s, size_t n, const char *what, aicfn_error *err) {
    char kind[ST_SCAN_DEPTH + 1] = {0};
    uint64_t members[ST_SCAN_DEPTH + 1] = {0}; /* commas seen at each depth: members - 1 */
    unsigned depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = false;
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == '{' || ch == '[') {
            if (depth == ST_SCAN_DEPTH)
                return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: JSON nested deeper than %d levels", what,
                                       ST_SCAN_DEPTH);
            depth++;
            kind[depth] = ch;
            members[depth] = 0;
        } else if (ch == '}' || ch == ']') {
            if (depth == 0) return AICFN_OK; /* malformed: the parser says where */
            depth--;
        } else if (ch == ',' && depth > 0) {
            uint64_t m = ++members[depth] + 1;
            if (kind[depth] == '[' && m > ST_SCAN_ARRAY)
                return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: a JSON array of more than %d elements",
                                       what, ST_SCAN_ARRAY);
            if (kind[depth] == '{' && m > (uint64_t)AICFN_SAFETENSORS_MAX_TENSORS + 1)
                return aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: a JSON object of more than %u members",
                                       what, AICFN_SAFETENSORS_MAX_TENSORS + 1);
        }
    }
    return AICFN_OK;
}

int snap_st_parse_header(const char *json, size_t len, uint64_t data_bytes, const char *what,
                         snap_st_header *out, aicfn_error *err) {
    out->n_tensors = 0;
    out->tensors = NULL;
    if (len > AICFN_SAFETENSORS_MAX_HEADER)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: header of %zu bytes exceeds the limit of %u",
                               what, len, AICFN_SAFETENSORS_MAX_HEADER);
    int src = st_prescan(json, len, what, err);
    if (src != AICFN_OK) return src;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: header is not valid JSON (%s at byte %d)", what,
                               jerr.text, jerr.position);
    int rc = AICFN_OK;
    if (!json_is_object(root)) {
        rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: header JSON is not an object", what);
        goto done;
    }
    size_t n = json_object_size(root);
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta) {
        if (!json_is_object(meta)) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: __metadata__ is not an object", what);
            goto done;
        }
        const char *mk;
        json_t *mv;
        json_object_foreach(meta, mk, mv) {
            if (!json_is_string(mv)) {
                rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: __metadata__['%.64s'] is not a string", what,
                                     mk);
                goto done;
            }
        }
        n--;
    }
    if (n > AICFN_SAFETENSORS_MAX_TENSORS) {
        rc = aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: %zu tensors exceed the limit of %u", what, n,
                             AICFN_SAFETENSORS_MAX_TENSORS);
        goto done;
    }
    out->tensors = calloc(n ? n : 1, sizeof *out->tensors);
    if (!out->tensors) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "%s: no memory for %zu tensors", what, n);
        goto done;
    }
    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach(root, key, key_len, v) {
        if (key_len == strlen("__metadata__") && memcmp(key, "__metadata__", key_len) == 0) continue;
        if (key_len == 0 || key_len > AICFN_SNAP_MAX_NAME_BYTES || memchr(key, 0, key_len)) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "%s: tensor name of %zu bytes is empty, too long or holds NUL", what,
                                 key_len);
            goto done;
        }
        snap_st_tensor *t = &out->tensors[out->n_tensors];
        rc = st_parse_entry(what, key, v, data_bytes, t, err);
        if (rc) goto done;
        t->name = strndup(key, key_len);
        if (!t->name) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "%s: no memory", what);
            goto done;
        }
        out->n_tensors++;
    }
    /* The non-empty tensors must tile the data region exactly, in offset order: no
     * overlap (an empty tensor between two must not hide one) and no hole, as the format
     * requires (a hole could carry a second file: a polyglot). */
    qsort(out->tensors, out->n_tensors, sizeof *out->tensors, st_cmp_offset);
    const snap_st_tensor *p = NULL; /* the last non-empty tensor */
    uint64_t end = 0;
    for (uint32_t i = 0; i < out->n_tensors; i++) {
        const snap_st_tensor *t = &out->tensors[i];
        if (t->nbytes == 0) continue;
        if (p && t->data_offset < end) {
            rc = aicfn_error_set(
                err, AICFN_E_CORRUPT, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", what,
                p->name, (unsigned long long)p->data_offset, (unsigned long long)end, t->name,
                (unsigned long long)t->data_offset, (unsigned long long)(t->data_offset + t->nbytes));
            goto done;
        }
        if (t->data_offset > end) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                 "%s: data bytes [%llu, %llu) before tensor '%s' belong to no tensor", what,
                                 (unsigned long long)end, (unsigned long long)t->data_offset, t->name);
            goto done;
        }
        p = t;
        end = t->data_offset + t->nbytes;
    }
    if (end != data_bytes) {
        rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                             "%s: data bytes [%llu, %llu) at the end belong to no tensor", what,
                             (unsigned long long)end, (unsigned long long)data_bytes);
        goto done;
    }
done:
    json_decref(root);
    if (rc) snap_st_header_free(out);
    return rc;
}

/* Checks the 8-byte length prefix against the file size; stores the header length. */
static int st_check_prefix(const unsigned char *p8, uint64_t file_bytes, const char *what, uint64_t *hlen,
                           aicfn_error *err) {
    if (file_bytes == 0)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: empty file (not safetensors)", what);
    if (file_bytes < 8)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: %llu bytes, shorter than the 8-byte header length",
                               what, (unsigned long long)file_bytes);
    uint64_t n = st_le64(p8);
    if (n > AICFN_SAFETENSORS_MAX_HEADER)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: header length %llu exceeds the limit of %u bytes",
                               what, (unsigned long long)n, AICFN_SAFETENSORS_MAX_HEADER);
    if (n > file_bytes - 8)
        return aicfn_error_set(err, AICFN_E_CORRUPT,
                               "%s: header length %llu larger than the file (%llu bytes)", what,
                               (unsigned long long)n, (unsigned long long)file_bytes);
    if (n < 2)
        return aicfn_error_set(err, AICFN_E_CORRUPT, "%s: header length %llu is too short for a JSON object",
                               what, (unsigned long long)n);
    *hlen = n;
    return AICFN_OK;
}

int snap_st_parse_buffer(const void *buf, size_t len, const char *what, snap_st_header *out,
                         aicfn_error *err) {
    out->n_tensors = 0;
    out->tensors = NULL;
    uint64_t hlen;
    int rc = st_check_prefix(buf, len, what, &hlen, err);
    if (rc) return rc;
    const char *p = buf;
    rc = snap_st_parse_header(p + 8, hlen, len - 8 - hlen, what, out, err);
    if (rc) return rc;
    for (uint32_t i = 0; i < out->n_tensors; i++)
        out->tensors[i].file_offset = 8 + hlen + out->tensors[i].data_offset;
    return AICFN_OK;
}

/* ---- Sets of files ---------------------------------------------------------------- */

static int st_pread_full(int fd, void *dst, size_t len, uint64_t off, const char *what, aicfn_error *err) {
    unsigned char *p = dst;
    while (len) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return aicfn_error_errno(err, AICFN_E_IO, errno, "%s: read at offset %llu", what,
                                     (unsigned long long)off);
        }
        if (r == 0)
            return aicfn_error_set(err, AICFN_E_IO, "%s: file ends at offset %llu (truncated while reading?)",
                                   what, (unsigned long long)off);
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return AICFN_OK;
}

/* Opens one file, parses its header and appends its tensors to the set. */
static int st_add_file(snap_st_set *s, const char *path, snap_st_header *hdr, aicfn_error *err) {
    hdr->n_tensors = 0;
    hdr->tensors = NULL;
    if (s->n_files >= AICFN_SAFETENSORS_MAX_FILES)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "more than %u safetensors files",
                               AICFN_SAFETENSORS_MAX_FILES);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
    if (fd < 0)
        return aicfn_error_errno(err, errno == ENOENT ? AICFN_E_NOT_FOUND : AICFN_E_IO, errno, "opening %s",
                                 path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return aicfn_error_errno(err, AICFN_E_IO, e, "stat %s", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: not a regular file", path);
    }
    uint32_t idx = s->n_files;
    char **np = realloc(s->paths, (idx + 1) * sizeof *np);
    if (np) s->paths = np;
    int *nf = np ? realloc(s->fds, (idx + 1) * sizeof *nf) : NULL;
    if (nf) s->fds = nf;
    uint64_t *ns = nf ? realloc(s->sizes, (idx + 1) * sizeof *ns) : NULL;
    if (ns) s->sizes = ns;
    char *dup = ns ? strdup(path) : NULL;
    if (!dup) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_NOMEM, "no memory opening %s", path);
    }
    s->paths[idx] = dup;
    s->fds[idx] = fd;
    s->sizes[idx] = (uint64_t)st.st_size;
    s->n_files++;

    uint64_t fsize = (uint64_t)st.st_size, hlen;
    unsigned char p8[8] = {0};
    if (fsize >= 8) {
        int rc = st_pread_full(fd, p8, 8, 0, path, err);
        if (rc) return rc;
    }
    int rc = st_check_prefix(p8, fsize, path, &hlen, err);
    if (rc) return rc;
    char *json = malloc(hlen); /* bounded: hlen <= file size - 8 and <= the header limit */
    if (!json)
        return aicfn_error_set(err, AICFN_E_NOMEM, "%s: no memory for a %llu-byte header", path,
                               (unsigned long long)hlen);
    rc = st_pread_full(fd, json, hlen, 8, path, err);
    if (!rc) rc = snap_st_parse_header(json, hlen, fsize - 8 - hlen, path, hdr, err);
    free(json);
    if (rc) return rc;
    if ((uint64_t)s->n_tensors + hdr->n_tensors > AICFN_SAFETENSORS_MAX_TENSORS)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "more than %u tensors in all",
                               AICFN_SAFETENSORS_MAX_TENSORS);
    snap_st_tensor *nt = realloc(s->tensors, ((size_t)s->n_tensors + hdr->n_tensors + 1) * sizeof *nt);
    if (!nt) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for the tensors of %s", path);
    s->tensors = nt;
    for (uint32_t i = 0; i < hdr->n_tensors; i++) {
        snap_st_tensor *t = &s->tensors[s->n_tensors++];
        *t = hdr->tensors[i];
        hdr->tensors[i].name = NULL; /* moved */
        t->file = idx;
        t->file_offset = 8 + hlen + t->data_offset;
        s->total_bytes += t->nbytes;
    }
    return AICFN_OK;
}

static int st_add_path(snap_st_set *s, const char *path, aicfn_error *err) {
    snap_st_header h;
    int rc = st_add_file(s, path, &h, err);
    snap_st_header_free(&h);
    return rc;
}

static int st_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int st_has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* A sharded checkpoint: the index's weight_map names every tensor's shard. */
static int st_add_index(snap_st_set *s, const char *index_path, aicfn_error *err) {
    int fd = open(index_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    if (fd < 0)
        return aicfn_error_errno(err, errno == ENOENT ? AICFN_E_NOT_FOUND : AICFN_E_IO, errno, "opening %s",
                                 index_path);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: not a regular file", index_path);
    }
    if ((uint64_t)st.st_size > AICFN_SAFETENSORS_MAX_INDEX_BYTES) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: %lld bytes exceed the index limit of %u",
                               index_path, (long long)st.st_size, AICFN_SAFETENSORS_MAX_INDEX_BYTES);
    }
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for %s", index_path);
    }
    int rc = st_pread_full(fd, buf, len, 0, index_path, err);
    close(fd);
    json_t *root = NULL;
    char **files = NULL;
    size_t n_files = 0;
    char *dir = NULL;
    if (rc) goto done;
    rc = st_prescan(buf, len, index_path, err);
    if (rc) goto done;
    json_error_t jerr;
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: not valid JSON (%s at byte %d)", index_path,
                             jerr.text, jerr.position);
        goto done;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm)) {
        rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: no weight_map object", index_path);
        goto done;
    }
    size_t n = json_object_size(wm);
    files = calloc(n ? n : 1, sizeof *files);
    if (!files) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory for %s", index_path);
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        const char *f = json_string_value(v);
        if (!f || !f[0] || f[0] == '/' || strstr(f, "..") || strlen(f) > 4096) {
            rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: weight_map['%s'] is not a relative file name",
                                 index_path, key);
            goto done;
        }
        files[n_files++] = (char *)f;
    }
    qsort(files, n_files, sizeof *files, st_cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n_files; i++)
        if (u == 0 || strcmp(files[u - 1], files[i]) != 0) files[u++] = files[i];
    n_files = u;
    dir = strdup(index_path);
    if (!dir) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
        goto done;
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = 0;
    else
        dir[0] = 0;
    uint32_t first = s->n_tensors;
    for (size_t i = 0; i < n_files && !rc; i++) {
        size_t pl = strlen(dir) + strlen(files[i]) + 1;
        char *p = malloc(pl);
        if (!p) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
            break;
        }
        snprintf(p, pl, "%s%s", dir, files[i]);
        uint32_t fidx = s->n_files, before = s->n_tensors;
        rc = st_add_path(s, p, err);
        free(p);
        for (uint32_t t = before; t < s->n_tensors && !rc; t++) {
            const char *shard = json_string_value(json_object_get(wm, s->tensors[t].name));
            if (!shard || strcmp(shard, files[i]) != 0)
                rc = aicfn_error_set(err, AICFN_E_CORRUPT,
                                     "%s: tensor '%s' of shard %s is %s in the weight_map", index_path,
                                     s->tensors[t].name, s->paths[fidx], shard ? "elsewhere" : "missing");
        }
    }
    if (!rc && s->n_tensors - first != n)
        rc = aicfn_error_set(err, AICFN_E_CORRUPT, "%s: weight_map lists %zu tensors but the shards hold %u",
                             index_path, n, s->n_tensors - first);
done:
    free(dir);
    free(files);
    json_decref(root);
    free(buf);
    return rc;
}

static int st_add_dir(snap_st_set *s, const char *path, aicfn_error *err) {
    size_t pl = strlen(path);
    const char *sep = (pl && path[pl - 1] == '/') ? "" : "/";
    char idx[4096];
    if ((size_t)snprintf(idx, sizeof idx, "%s%smodel.safetensors.index.json", path, sep) >= sizeof idx)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: path too long", path);
    if (access(idx, F_OK) == 0) return st_add_index(s, idx, err);
    DIR *d = opendir(path);
    if (!d) return aicfn_error_errno(err, AICFN_E_IO, errno, "opening directory %s", path);
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = AICFN_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !st_has_suffix(de->d_name, ".safetensors")) continue;
        if (n >= AICFN_SAFETENSORS_MAX_FILES) {
            rc = aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: more than %u safetensors files", path,
                                 AICFN_SAFETENSORS_MAX_FILES);
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
                break;
            }
            names = nn;
        }
        size_t l = pl + strlen(sep) + strlen(de->d_name) + 1;
        names[n] = malloc(l);
        if (!names[n]) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
            break;
        }
        snprintf(names[n], l, "%s%s%s", path, sep, de->d_name);
        n++;
    }
    closedir(d);
    if (!rc && n == 0)
        rc = aicfn_error_set(err, AICFN_E_NOT_FOUND, "%s: no *.safetensors files and no index", path);
    if (!rc) qsort(names, n, sizeof *names, st_cmp_str);
    for (size_t i = 0; i < n && !rc; i++)
        rc = st_add_path(s, names[i], err);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static int st_cmp_name_ptr(const void *a, const void *b) {
    const snap_st_tensor *x = *(snap_st_tensor *const *)a, *y = *(snap_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

int snap_st_open(const char *const *paths, size_t n_paths, snap_st_set **out, aicfn_error *err) {
    *out = NULL;
    if (n_paths == 0) return aicfn_error_set(err, AICFN_E_INVALID, "no safetensors input given");
    snap_st_set *s = calloc(1, sizeof *s);
    if (!s) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    int rc = AICFN_OK;
    for (size_t i = 0; i < n_paths && !rc; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0) {
            rc = aicfn_error_errno(err, errno == ENOENT ? AICFN_E_NOT_FOUND : AICFN_E_IO, errno, "%s",
                                   paths[i]);
        } else if (S_ISDIR(st.st_mode)) {
            rc = st_add_dir(s, paths[i], err);
        } else if (st_has_suffix(paths[i], ".index.json")) {
            rc = st_add_index(s, paths[i], err);
        } else {
            rc = st_add_path(s, paths[i], err);
        }
    }
    if (!rc && s->n_tensors > 1) {
        snap_st_tensor **by = malloc(s->n_tensors * sizeof *by);
        if (!by) {
            rc = aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
        } else {
            for (uint32_t i = 0; i < s->n_tensors; i++)
                by[i] = &s->tensors[i];
            qsort(by, s->n_tensors, sizeof *by, st_cmp_name_ptr);
            for (uint32_t i = 1; i < s->n_tensors && !rc; i++)
                if (strcmp(by[i - 1]->name, by[i]->name) == 0)
                    rc = aicfn_error_set(err, AICFN_E_CORRUPT, "duplicate tensor name '%s' in %s and %s",
                                         by[i]->name, s->paths[by[i - 1]->file], s->paths[by[i]->file]);
            free(by);
        }
    }
    if (rc) {
        snap_st_close(s);
        return rc;
    }
    *out = s;
    return AICFN_OK;
}

void snap_st_close(snap_st_set *s) {
    if (!s) return;
    for (uint32_t i = 0; i < s->n_files; i++) {
        close(s->fds[i]);
        free(s->paths[i]);
    }
    for (uint32_t i = 0; i < s->n_tensors; i++)
        free(s->tensors[i].name);
    free(s->paths);
    free(s->fds);
    free(s->sizes);
    free(s->tensors);
    free(s);
}

uint32_t snap_st_count(const snap_st_set *s) {
    return s->n_tensors;
}
const snap_st_tensor *snap_st_tensor_at(const snap_st_set *s, uint32_t i) {
    return i < s->n_tensors ? &s->tensors[i] : NULL;
}
uint32_t snap_st_file_count(const snap_st_set *s) {
    return s->n_files;
}
const char *snap_st_file_path(const snap_st_set *s, uint32_t file) {
    return file < s->n_files ? s->paths[file] : NULL;
}
uint64_t snap_st_total_bytes(const snap_st_set *s) {
    return s->total_bytes;
}

int snap_st_read(const snap_st_set *s, uint32_t i, uint64_t off, void *dst, size_t len, aicfn_error *err) {
    if (i >= s->n_tensors) return aicfn_error_set(err, AICFN_E_INVALID, "tensor index %u out of range", i);
    const snap_st_tensor *t = &s->tensors[i];
    if (off > t->nbytes || len > t->nbytes - off)
        return aicfn_error_set(err, AICFN_E_INVALID, "read past the end of tensor '%s'", t->name);
    return st_pread_full(s->fds[t->file], dst, len, t->file_offset + off, s->paths[t->file], err);
}

/* ---- Writing ----------------------------------------------------------------------- */

static int st_write_full(FILE *f, const void *p, size_t len, const char *path, aicfn_error *err) {
    if (len && fwrite(p, 1, len, f) != len)
        return aicfn_error_errno(err, AICFN_E_IO, errno, "writing %s", path);
    return AICFN_OK;
}

struct snap_st_sink {
    FILE *f;
    const char *tmp;
    uint64_t written, total;
};

int snap_st_sink_write(snap_st_sink *s, const void *p, size_t len, aicfn_error *err) {
    if (len > s->total - s->written)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "writing %s: %zu more bytes than the %llu the header declares", s->tmp,
                               len - (size_t)(s->total - s->written), (unsigned long long)s->total);
    int rc = st_write_full(s->f, p, len, s->tmp, err);
    if (rc == AICFN_OK) s->written += len;
    return rc;
}

int snap_st_write(const char *path, const snap_st_out_tensor *tensors, uint32_t n, aicfn_error *err) {
    return snap_st_write_streamed(path, tensors, n, NULL, NULL, err); /* fill NULL: tensors' data */
}

int snap_st_write_streamed(const char *path, const snap_st_out_tensor *tensors, uint32_t n,
                           snap_st_fill_fn fill, void *arg, aicfn_error *err) {
    json_t *root = json_object();
    if (!root) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    int rc = AICFN_OK;
    uint64_t off = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        const snap_st_out_tensor *t = &tensors[i];
        const char *dn = dtype_safetensors_name(t->dtype);
        uint64_t nb;
        if (!dn || dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &nb) != 0 || nb != t->nbytes) {
            rc = aicfn_error_set(err, AICFN_E_INVALID, "tensor '%s': dtype %s or shape cannot be written",
                                 t->name, dtype_name(t->dtype));
            break;
        }
        json_t *shape = json_array(), *offs = json_array(), *e = json_object();
        int bad = !shape || !offs || !e;
        for (uint32_t d = 0; d < t->ndim && !bad; d++)
            bad |= json_array_append_new(shape, json_integer(t->shape[d]));
        if (!bad) bad |= json_array_append_new(offs, json_integer((json_int_t)off));
        if (!bad) bad |= json_array_append_new(offs, json_integer((json_int_t)(off + nb)));
        if (!bad) bad |= json_object_set_new(e, "dtype", json_string(dn));
        if (!bad) {
            bad |= json_object_set_new(e, "shape", shape);
            shape = NULL;
        }
        if (!bad) {
            bad |= json_object_set_new(e, "data_offsets", offs);
            offs = NULL;
        }
        if (!bad) {
            bad |= json_object_set_new(root, t->name, e);
            e = NULL;
        }
        json_decref(shape);
        json_decref(offs);
        json_decref(e);
        if (bad) rc = aicfn_error_set(err, AICFN_E_NOMEM, "building the header for tensor '%s'", t->name);
        off += nb;
    }
    char *hdr = rc ? NULL : json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (rc) return rc;
    if (!hdr) return aicfn_error_set(err, AICFN_E_NOMEM, "serializing the safetensors header");
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    char *tmp = NULL;
    int fd = -1;
    FILE *f = NULL;
    if ((rc = snap_tmp_create(path, &tmp, &fd, err))) goto out;
    f = fdopen(fd, "wb");
    if (!f) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "opening %s", tmp);
        snap_tmp_discard(fd, tmp);
        goto out;
    }
    unsigned char p8[8];
    for (int i = 0; i < 8; i++)
        p8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    rc = st_write_full(f, p8, 8, tmp, err);
    if (!rc) rc = st_write_full(f, hdr, hl, tmp, err);
    for (size_t i = hl; i < padded && !rc; i++)
        rc = st_write_full(f, " ", 1, tmp, err);
    snap_st_sink sink = {.f = f, .tmp = tmp, .total = off};
    if (fill == NULL)
        for (uint32_t i = 0; i < n && !rc; i++)
            rc = snap_st_sink_write(&sink, tensors[i].data, tensors[i].nbytes, err);
    else if (!rc)
        rc = fill(arg, &sink, err);
    if (!rc && sink.written != sink.total)
        rc = aicfn_error_set(err, AICFN_E_INVALID,
                             "writing %s: %llu of the %llu data bytes the header declares", tmp,
                             (unsigned long long)sink.written, (unsigned long long)sink.total);
    if (!rc && fflush(f) != 0) rc = aicfn_error_errno(err, AICFN_E_IO, errno, "writing %s", tmp);
    /* On disk before the rename, so a crash never leaves a short file under the name. */
    if (!rc) {
        rc = snap_tmp_commit(dup(fileno(f)), tmp, path, err);
        fclose(f);
    } else {
        fclose(f);
        unlink(tmp);
    }
out:
    free(tmp);
    free(hdr);
    return rc;
}
