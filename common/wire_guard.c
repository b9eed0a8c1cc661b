/* wire_guard.c: the bounded msgpack validator (design.md §4) and the parsed document.
 *
 * msgpack-c 4.0.0 trusts container counts: a 5-byte array32 header makes it allocate
 * 2^32 objects. So every message is first walked here, byte by byte and without
 * allocating, against the bytes that remain and the limits; only then is it handed to
 * msgpack_unpack, with a zone sized from the object count the walk found.
 * Not for: message semantics (wire.c). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/wire.h"

typedef struct guard_limits {
    size_t max_bytes;
    uint32_t max_depth;
    uint32_t max_items;
    uint64_t max_objects;
} guard_limits;

static guard_limits guard_resolve(const wire_limits *lim) {
    guard_limits g = {AICFN_MAX_MESSAGE_BYTES, AICFN_MAX_NESTING, AICFN_MAX_CONTAINER_ITEMS,
                      AICFN_MAX_MESSAGE_OBJECTS};
    if (lim) {
        if (lim->max_bytes) g.max_bytes = lim->max_bytes;
        if (lim->max_depth) g.max_depth = lim->max_depth;
        if (lim->max_items) g.max_items = lim->max_items;
        if (lim->max_objects) g.max_objects = lim->max_objects;
    }
    if (g.max_depth > WIRE_DEPTH_CEILING) g.max_depth = WIRE_DEPTH_CEILING;
    return g;
}

static uint64_t guard_be(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* What one type byte announces. */
typedef struct guard_head {
    const char *kind;  /* for messages */
    unsigned lenbytes; /* big-endian length/count bytes after the type byte */
    uint64_t fixed;    /* payload bytes known from the type byte alone */
    int var;           /* 0: payload = fixed; 1: payload = fixed + length (str/bin/ext) */
    int container;     /* 0, 'a' array, 'm' map */
    uint64_t count;    /* fix container/str count from the type byte */
} guard_head;

/* Decodes the type byte; returns 0, or -1 for the reserved 0xc1. */
static int guard_type(uint8_t b, guard_head *h) {
    memset(h, 0, sizeof *h);
    if (b <= 0x7f || b >= 0xe0) {
        h->kind = "fixint";
        return 0;
    }
    if (b <= 0x8f) {
        h->kind = "fixmap", h->container = 'm', h->count = b & 0x0f;
        return 0;
    }
    if (b <= 0x9f) {
        h->kind = "fixarray", h->container = 'a', h->count = b & 0x0f;
        return 0;
    }
    if (b <= 0xbf) {
        h->kind = "fixstr", h->fixed = b & 0x1f;
        return 0;
    }
    switch (b) {
    case 0xc0:
        h->kind = "nil";
        return 0;
    case 0xc1:
        h->kind = "reserved 0xc1";
        return -1;
    case 0xc2:
    case 0xc3:
        h->kind = "bool";
        return 0;
    case 0xc4:
        h->kind = "bin8", h->lenbytes = 1, h->var = 1;
        return 0;
    case 0xc5:
        h->kind = "bin16", h->lenbytes = 2, h->var = 1;
        return 0;
    case 0xc6:
        h->kind = "bin32", h->lenbytes = 4, h->var = 1;
        return 0;
    case 0xc7:
        h->kind = "ext8", h->lenbytes = 1, h->var = 1, h->fixed = 1;
        return 0;
    case 0xc8:
        h->kind = "ext16", h->lenbytes = 2, h->var = 1, h->fixed = 1;
        return 0;
    case 0xc9:
        h->kind = "ext32", h->lenbytes = 4, h->var = 1, h->fixed = 1;
        return 0;
    case 0xca:
        h->kind = "float32", h->fixed = 4;
        return 0;
    case 0xcb:
        h->kind = "float64", h->fixed = 8;
        return 0;
    case 0xcc:
        h->kind = "uint8", h->fixed = 1;
        return 0;
    case 0xcd:
        h->kind = "uint16", h->fixed = 2;
        return 0;
    case 0xce:
        h->kind = "uint32", h->fixed = 4;
        return 0;
    case 0xcf:
        h->kind = "uint64", h->fixed = 8;
        return 0;
    case 0xd0:
        h->kind = "int8", h->fixed = 1;
        return 0;
    case 0xd1:
        h->kind = "int16", h->fixed = 2;
        return 0;
    case 0xd2:
        h->kind = "int32", h->fixed = 4;
        return 0;
    case 0xd3:
        h->kind = "int64", h->fixed = 8;
        return 0;
    case 0xd4:
        h->kind = "fixext1", h->fixed = 2;
        return 0;
    case 0xd5:
        h->kind = "fixext2", h->fixed = 3;
        return 0;
    case 0xd6:
        h->kind = "fixext4", h->fixed = 5;
        return 0;
    case 0xd7:
        h->kind = "fixext8", h->fixed = 9;
        return 0;
    case 0xd8:
        h->kind = "fixext16", h->fixed = 17;
        return 0;
    case 0xd9:
        h->kind = "str8", h->lenbytes = 1, h->var = 1;
        return 0;
    case 0xda:
        h->kind = "str16", h->lenbytes = 2, h->var = 1;
        return 0;
    case 0xdb:
        h->kind = "str32", h->lenbytes = 4, h->var = 1;
        return 0;
    case 0xdc:
        h->kind = "array16", h->lenbytes = 2, h->container = 'a';
        return 0;
    case 0xdd:
        h->kind = "array32", h->lenbytes = 4, h->container = 'a';
        return 0;
    case 0xde:
        h->kind = "map16", h->lenbytes = 2, h->container = 'm';
        return 0;
    case 0xdf:
        h->kind = "map32", h->lenbytes = 4, h->container = 'm';
        return 0;
    default:
        return -1; /* unreachable: every byte is covered above */
    }
}

static int guard_fail(aicfn_error *err, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int guard_fail(aicfn_error *err, size_t off, const char *fmt, ...) {
    if (err == NULL) return AICFN_E_PROTOCOL;
    char what[AICFN_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return aicfn_error_set(err, AICFN_E_PROTOCOL, "malformed msgpack at offset %zu: %s", off, what);
}

/* Reads one object header at p[*pos]; on success advances *pos past the header and any
 * scalar payload and fills *children (0 for scalars) and *is_container. */
static int guard_one(const uint8_t *p, size_t len, size_t *pos, const guard_limits *g, uint64_t *children,
                     int *is_container, aicfn_error *err) {
    size_t start = *pos;
    if (start >= len) return guard_fail(err, start, "truncated: expected another object, message ends");
    guard_head h;
    if (guard_type(p[start], &h) != 0) return guard_fail(err, start, "invalid type byte 0x%02x", p[start]);
    size_t at = start + 1;
    uint64_t n = h.count;
    if (h.lenbytes) {
        if (len - at < h.lenbytes)
            return guard_fail(err, start, "truncated %s header: needs %u length bytes, %zu remain", h.kind,
                              h.lenbytes, len - at);
        n = guard_be(p + at, h.lenbytes);
        at += h.lenbytes;
    }
    *children = 0;
    *is_container = 0;
    if (h.container) {
        if (h.container == 'm' && n > AICFN_MAX_MAP_PAIRS)
            return guard_fail(err, start, "%s of %llu pairs exceeds the limit of %d", h.kind, (unsigned long long)n,
                              AICFN_MAX_MAP_PAIRS);
        if (n > g->max_items)
            return guard_fail(err, start, "%s of %llu %s exceeds the limit of %u", h.kind,
                              (unsigned long long)n, h.container == 'm' ? "pairs" : "items", g->max_items);
        uint64_t need = h.container == 'm' ? 2 * n : n;
        if (need > len - at)
            return guard_fail(err, start, "%s of %llu %s needs at least %llu bytes, only %zu remain", h.kind,
                              (unsigned long long)n, h.container == 'm' ? "pairs" : "items",
                              (unsigned long long)need, len - at);
        *children = need;
        *is_container = 1;
    } else {
        uint64_t payload = h.fixed + (h.var ? n : 0);
        if (payload > len - at)
            return guard_fail(err, start, "%s needs %llu payload bytes, only %zu remain", h.kind,
                              (unsigned long long)payload, len - at);
        at += (size_t)payload;
    }
    *pos = at;
    return AICFN_OK;
}

/* Walks one whole object starting at *pos (with the given limits); advances *pos. */
static int guard_walk(const uint8_t *p, size_t len, size_t *pos, const guard_limits *g, uint64_t *objects,
                      aicfn_error *err) {
    uint64_t stack[WIRE_DEPTH_CEILING];
    unsigned depth = 0;
    uint64_t nobj = 0;
    do {
        size_t start = *pos;
        uint64_t children;
        int container;
        int rc = guard_one(p, len, pos, g, &children, &container, err);
        if (rc != AICFN_OK) return rc;
        if (++nobj > g->max_objects)
            return guard_fail(err, start, "more than %llu objects in one message",
                              (unsigned long long)g->max_objects);
        if (container) {
            if (depth + 1 > g->max_depth)
                return guard_fail(err, start, "containers nested deeper than %u", g->max_depth);
            if (children > 0) {
                stack[depth++] = children;
                continue;
            }
        }
        while (depth > 0) {
            if (--stack[depth - 1] > 0) break;
            depth--;
        }
    } while (depth > 0);
    if (objects) *objects = nobj;
    return AICFN_OK;
}

int wire_validate(const void *buf, size_t len, const wire_limits *lim, uint64_t *objects, aicfn_error *err) {
    guard_limits g = guard_resolve(lim);
    if (len > g.max_bytes)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "message of %zu bytes exceeds the limit of %zu bytes",
                               len, g.max_bytes);
    if (buf == NULL || len == 0) return aicfn_error_set(err, AICFN_E_PROTOCOL, "empty message");
    size_t pos = 0;
    int rc = guard_walk(buf, len, &pos, &g, objects, err);
    if (rc != AICFN_OK) return rc;
    if (pos != len) return guard_fail(err, pos, "%zu trailing bytes after the message", len - pos);
    return AICFN_OK;
}

int wire_skip(const void *buf, size_t len, size_t *off, aicfn_error *err) {
    guard_limits g = {SIZE_MAX, WIRE_DEPTH_CEILING, UINT32_MAX, UINT64_MAX};
    if (buf == NULL || off == NULL || *off > len)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "bad skip offset");
    return guard_walk(buf, len, off, &g, NULL, err);
}

static int guard_is_key(const uint8_t *p, size_t len, size_t *pos, const char *key, int *match) {
    /* p[*pos] is a map key; report whether it is the str `key` and skip it */
    size_t start = *pos;
    uint8_t b = p[start];
    size_t klen = strlen(key);
    uint64_t slen = 0;
    size_t hdr = 0;
    *match = 0;
    if (b >= 0xa0 && b <= 0xbf)
        slen = b & 0x1f, hdr = 1;
    else if (b == 0xd9 && len - start >= 2)
        slen = p[start + 1], hdr = 2;
    else if (b == 0xda && len - start >= 3)
        slen = guard_be(p + start + 1, 2), hdr = 3;
    else if (b == 0xdb && len - start >= 5)
        slen = guard_be(p + start + 1, 4), hdr = 5;
    if (hdr && slen == klen && len - start - hdr >= slen && memcmp(p + start + hdr, key, klen) == 0)
        *match = 1;
    return wire_skip(p, len, pos, NULL);
}

int wire_raw_find(const void *buf, size_t len, const char *key, size_t *val_off, size_t *val_len,
                  aicfn_error *err) {
    const uint8_t *p = buf;
    if (p == NULL || len == 0) return aicfn_error_set(err, AICFN_E_PROTOCOL, "empty message");
    size_t pos = 0;
    guard_head h;
    if (guard_type(p[0], &h) != 0 || h.container != 'm')
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "message is not a map");
    uint64_t n = h.count;
    pos = 1;
    if (h.lenbytes) {
        if (len - pos < h.lenbytes) return aicfn_error_set(err, AICFN_E_PROTOCOL, "truncated map header");
        n = guard_be(p + pos, h.lenbytes);
        pos += h.lenbytes;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (pos >= len) return aicfn_error_set(err, AICFN_E_PROTOCOL, "truncated map at offset %zu", pos);
        int match;
        if (guard_is_key(p, len, &pos, key, &match) != AICFN_OK)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "malformed map key at offset %zu", pos);
        size_t vstart = pos;
        if (wire_skip(p, len, &pos, err) != AICFN_OK) return AICFN_E_PROTOCOL;
        if (match) {
            if (val_off) *val_off = vstart;
            if (val_len) *val_len = pos - vstart;
            return AICFN_OK;
        }
    }
    return aicfn_error_set(err, AICFN_E_NOT_FOUND, "key '%s' not found", key);
}

int wire_doc_parse(wire_doc *doc, const void *buf, size_t len, const wire_limits *lim, aicfn_error *err) {
    memset(doc, 0, sizeof *doc);
    uint64_t objects = 0;
    int rc = wire_validate(buf, len, lim, &objects, err);
    if (rc != AICFN_OK) return rc;
    /* Each object costs at most one msgpack_object (24 bytes) in the zone (map pairs are
     * two objects); strings and bins point into buf. One chunk holds a typical message;
     * larger arrays get chunks of their own from msgpack_zone_malloc. */
    uint64_t want = objects * sizeof(msgpack_object) + 2048;
    size_t chunk = want > (1u << 20) ? (1u << 20) : (size_t)want;
    msgpack_zone *z = msgpack_zone_new(chunk);
    if (z == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "msgpack zone of %zu bytes", chunk);
    size_t off = 0;
    msgpack_object root;
    msgpack_unpack_return ur = msgpack_unpack(buf, len, &off, z, &root);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        msgpack_zone_free(z);
        if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
            return aicfn_error_set(err, AICFN_E_NOMEM, "msgpack_unpack: out of memory (%llu objects)",
                                   (unsigned long long)objects);
        /* The validator accepted it, so msgpack-c disagrees with it: report, never crash. */
        return aicfn_error_set(err, AICFN_E_PROTOCOL,
                               "msgpack_unpack rejected a validated message (%d at %zu)", (int)ur, off);
    }
    doc->buf = buf;
    doc->len = len;
    doc->zone = z;
    doc->root = root;
    doc->objects = objects;
    return AICFN_OK;
}

void wire_doc_fini(wire_doc *doc) {
    if (doc == NULL) return;
    if (doc->zone) msgpack_zone_free(doc->zone);
    memset(doc, 0, sizeof *doc);
}

void *wire_doc_alloc(wire_doc *doc, size_t n) {
    if (doc == NULL || doc->zone == NULL) return NULL;
    if (n == 0) n = 1;
    return msgpack_zone_malloc(doc->zone, n);
}
