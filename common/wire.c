/* wire.c: the message codec: key lookups on parsed documents, the writer, tensors, and
 * encode/decode of invoke (request and reply) and status. Field names and meanings are
 * those of docs/protocol.md.
 * Not for: validating raw bytes (wire_guard.c) or the transport (rpc.c). */
#include "common/wire.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/units.h"

/* ---------------------------------------------------------------------------------
 * Lookups
 * --------------------------------------------------------------------------------- */

bool wire_str_eq(wire_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && (n == 0 || memcmp(s.ptr, lit, n) == 0);
}

const msgpack_object *wire_map_get(const msgpack_object *map, const char *key) {
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP || key == NULL) return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            (klen == 0 || memcmp(k->via.str.ptr, key, klen) == 0))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static const char *wire_sep(const char *ctx) {
    return ctx && *ctx ? "." : "";
}
static const char *wire_ctx(const char *ctx) {
    return ctx ? ctx : "";
}

/* Finds `key`; returns 1 when present and non-nil, 0 when absent/nil (error if required). */
static int wire_find(const msgpack_object *map, const char *ctx, const char *key, bool required,
                     const msgpack_object **out, int *rc, aicfn_error *err) {
    *rc = AICFN_OK;
    const msgpack_object *o = wire_map_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        if (required) {
            if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
                *rc = aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: expected a map",
                                      ctx && *ctx ? ctx : "message");
            else
                *rc = aicfn_error_set(err, AICFN_E_PROTOCOL, "missing required key '%s%s%s'", wire_ctx(ctx),
                                      wire_sep(ctx), key);
        }
        return 0;
    }
    *out = o;
    return 1;
}

static int wire_type_err(aicfn_error *err, const char *ctx, const char *key, const char *want) {
    return aicfn_error_set(err, AICFN_E_PROTOCOL, "key '%s%s%s': expected %s", wire_ctx(ctx), wire_sep(ctx),
                           key, want);
}

int wire_get_u64(const msgpack_object *map, const char *ctx, const char *key, bool required, uint64_t *out,
                 aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return wire_type_err(err, ctx, key, "a non-negative integer");
    *out = o->via.u64;
    return AICFN_OK;
}

int wire_get_u32(const msgpack_object *map, const char *ctx, const char *key, bool required, uint32_t *out,
                 aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX)
        return wire_type_err(err, ctx, key, "an integer in 0..4294967295");
    *out = (uint32_t)o->via.u64;
    return AICFN_OK;
}

int wire_get_i64(const msgpack_object *map, const char *ctx, const char *key, bool required, int64_t *out,
                 aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *out = o->via.i64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
        *out = (int64_t)o->via.u64;
    else
        return wire_type_err(err, ctx, key, "a signed 64-bit integer");
    return AICFN_OK;
}

int wire_get_f64(const msgpack_object *map, const char *ctx, const char *key, bool required, double *out,
                 aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = o->via.f64;
        return AICFN_OK;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return AICFN_OK;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return AICFN_OK;
    default:
        return wire_type_err(err, ctx, key, "a number");
    }
}

int wire_get_bool(const msgpack_object *map, const char *ctx, const char *key, bool required, bool *out,
                  aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type != MSGPACK_OBJECT_BOOLEAN) return wire_type_err(err, ctx, key, "a bool");
    *out = o->via.boolean;
    return AICFN_OK;
}

int wire_get_str(const msgpack_object *map, const char *ctx, const char *key, bool required, size_t max_len,
                 wire_str *out, aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type != MSGPACK_OBJECT_STR) return wire_type_err(err, ctx, key, "a str");
    if (max_len && o->via.str.size > max_len)
        return aicfn_error_set(err, AICFN_E_PROTOCOL,
                               "key '%s%s%s': str of %u bytes exceeds the limit of %zu", wire_ctx(ctx),
                               wire_sep(ctx), key, o->via.str.size, max_len);
    out->ptr = o->via.str.ptr;
    out->len = o->via.str.size;
    return AICFN_OK;
}

/* Whether o is a str wire_obj_cstr takes: at most max_len bytes (0: no limit), no NUL. */
static bool wire_cstr_ok(const msgpack_object *o, size_t max_len) {
    return o != NULL && o->type == MSGPACK_OBJECT_STR && (!max_len || o->via.str.size <= max_len) &&
           (o->via.str.size == 0 || memchr(o->via.str.ptr, 0, o->via.str.size) == NULL);
}

/* Copies a str wire_cstr_ok took into the document's arena, NUL-terminated. */
static int wire_cstr_copy(wire_doc *doc, const msgpack_object *o, const char *what, const char **out,
                          aicfn_error *err) {
    size_t n = o->via.str.size;
    char *s = wire_doc_alloc(doc, n + 1);
    if (s == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "%s: copying %zu bytes", what, n);
    if (n) memcpy(s, o->via.str.ptr, n);
    s[n] = 0;
    *out = s;
    return AICFN_OK;
}

int wire_obj_cstr(wire_doc *doc, const msgpack_object *o, const char *what, size_t max_len, const char **out,
                  aicfn_error *err) {
    if (wire_cstr_ok(o, max_len)) return wire_cstr_copy(doc, o, what, out, err);
    if (o == NULL || o->type != MSGPACK_OBJECT_STR)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: expected a str", what);
    if (max_len && o->via.str.size > max_len)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: str of %zu bytes exceeds the limit of %zu", what,
                               (size_t)o->via.str.size, max_len);
    return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: str contains a NUL byte", what);
}

int wire_get_cstr(wire_doc *doc, const msgpack_object *map, const char *ctx, const char *key, bool required,
                  size_t max_len, const char **out, aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    /* The usual case builds no message context (this runs for most keys of every message):
     * only the copy can fail, for want of memory, and `key` names it then. */
    if (wire_cstr_ok(o, max_len)) return wire_cstr_copy(doc, o, key, out, err);
    char what[160];
    snprintf(what, sizeof what, "key '%s%s%s'", wire_ctx(ctx), wire_sep(ctx), key);
    return wire_obj_cstr(doc, o, what, max_len, out, err);
}

int wire_get_bin(const msgpack_object *map, const char *ctx, const char *key, bool required,
                 const uint8_t **data, size_t *len, aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type != MSGPACK_OBJECT_BIN) return wire_type_err(err, ctx, key, "a bin");
    *data = (const uint8_t *)o->via.bin.ptr;
    *len = o->via.bin.size;
    return AICFN_OK;
}

int wire_get_map(const msgpack_object *map, const char *ctx, const char *key, bool required,
                 const msgpack_object **out, aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type != MSGPACK_OBJECT_MAP) return wire_type_err(err, ctx, key, "a map");
    *out = o;
    return AICFN_OK;
}

int wire_get_array(const msgpack_object *map, const char *ctx, const char *key, bool required,
                   const msgpack_object **out, aicfn_error *err) {
    const msgpack_object *o;
    int rc;
    if (!wire_find(map, ctx, key, required, &o, &rc, err)) return rc;
    if (o->type != MSGPACK_OBJECT_ARRAY) return wire_type_err(err, ctx, key, "an array");
    *out = o;
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * Writer
 * --------------------------------------------------------------------------------- */

static int wire_writer_cb(void *data, const char *buf, size_t len) {
    wire_writer *w = data;
    if (w->failed) return -1;
    if (len > w->max_bytes || w->len > w->max_bytes - len) {
        w->failed = AICFN_E_TOO_LARGE;
        return -1;
    }
    if (w->len + len > w->cap) {
        size_t ncap = w->cap ? w->cap : 256;
        while (ncap < w->len + len)
            ncap = ncap > SIZE_MAX / 2 ? SIZE_MAX : ncap * 2;
        if (ncap > w->max_bytes) ncap = w->max_bytes;
        uint8_t *nd = realloc(w->data, ncap);
        if (nd == NULL) {
            w->failed = AICFN_E_NOMEM;
            return -1;
        }
        w->data = nd;
        w->cap = ncap;
    }
    if (len) memcpy(w->data + w->len, buf, len);
    w->len += len;
    return 0;
}

void wire_writer_init(wire_writer *w) {
    memset(w, 0, sizeof *w);
    w->max_bytes = AICFN_MAX_MESSAGE_BYTES;
    msgpack_packer_init(&w->pk, w, wire_writer_cb);
}

void wire_writer_fini(wire_writer *w) {
    if (w == NULL) return;
    free(w->data);
    w->data = NULL;
    w->len = w->cap = 0;
}

void wire_writer_reset(wire_writer *w) {
    w->len = 0;
    w->failed = 0;
}

int wire_writer_status(const wire_writer *w, aicfn_error *err) {
    if (w->failed == AICFN_E_TOO_LARGE)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "encoded message exceeds the limit of %zu bytes",
                               w->max_bytes);
    if (w->failed) return aicfn_error_set(err, AICFN_E_NOMEM, "encoding a message: out of memory");
    return AICFN_OK;
}

uint8_t *wire_writer_take(wire_writer *w, size_t *len) {
    if (w->failed || w->len == 0) {
        if (len) *len = 0;
        return NULL;
    }
    uint8_t *d = w->data;
    if (len) *len = w->len;
    w->data = NULL;
    w->len = w->cap = 0;
    return d;
}

void wire_put_map(wire_writer *w, uint32_t n) {
    msgpack_pack_map(&w->pk, n);
}
void wire_put_array(wire_writer *w, uint32_t n) {
    msgpack_pack_array(&w->pk, n);
}
void wire_put_nil(wire_writer *w) {
    msgpack_pack_nil(&w->pk);
}
void wire_put_bool(wire_writer *w, bool v) {
    v ? msgpack_pack_true(&w->pk) : msgpack_pack_false(&w->pk);
}
void wire_put_u64(wire_writer *w, uint64_t v) {
    msgpack_pack_uint64(&w->pk, v);
}
void wire_put_i64(wire_writer *w, int64_t v) {
    msgpack_pack_int64(&w->pk, v);
}
void wire_put_f64(wire_writer *w, double v) {
    msgpack_pack_double(&w->pk, v);
}
void wire_put_strn(wire_writer *w, const char *s, size_t n) {
    if (n > UINT32_MAX) {
        w->failed = AICFN_E_TOO_LARGE;
        return;
    }
    msgpack_pack_str(&w->pk, n);
    if (n) msgpack_pack_str_body(&w->pk, s, n);
}
void wire_put_str(wire_writer *w, const char *s) {
    wire_put_strn(w, s ? s : "", s ? strlen(s) : 0);
}
void wire_put_bin(wire_writer *w, const void *p, size_t n) {
    if (n > UINT32_MAX) {
        w->failed = AICFN_E_TOO_LARGE;
        return;
    }
    msgpack_pack_bin(&w->pk, n);
    if (n) msgpack_pack_bin_body(&w->pk, p, n);
}
void wire_put_raw(wire_writer *w, const void *p, size_t n) {
    if (n) wire_writer_cb(w, p, n);
}
void wire_kv_u64(wire_writer *w, const char *key, uint64_t v) {
    wire_put_str(w, key);
    wire_put_u64(w, v);
}
void wire_kv_i64(wire_writer *w, const char *key, int64_t v) {
    wire_put_str(w, key);
    wire_put_i64(w, v);
}
void wire_kv_f64(wire_writer *w, const char *key, double v) {
    wire_put_str(w, key);
    wire_put_f64(w, v);
}
void wire_kv_bool(wire_writer *w, const char *key, bool v) {
    wire_put_str(w, key);
    wire_put_bool(w, v);
}
void wire_kv_str(wire_writer *w, const char *key, const char *s) {
    wire_put_str(w, key);
    wire_put_str(w, s);
}
void wire_kv_bin(wire_writer *w, const char *key, const void *p, size_t n) {
    wire_put_str(w, key);
    wire_put_bin(w, p, n);
}

/* ---------------------------------------------------------------------------------
 * Header, errors
 * --------------------------------------------------------------------------------- */

int wire_decode_header(const wire_doc *doc, wire_header *h, aicfn_error *err) {
    memset(h, 0, sizeof *h);
    const msgpack_object *root = &doc->root;
    if (root->type != MSGPACK_OBJECT_MAP)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "message is not a map (msgpack type %d)",
                               (int)root->type);
    uint64_t v = 0;
    int rc = wire_get_u64(root, NULL, "v", true, &v, err);
    if (rc) return rc;
    if (v == 0) return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 'v': protocol version 0 is invalid");
    if (v > AICFN_PROTOCOL_VERSION)
        return aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                               "protocol version %" PRIu64 " is newer than the supported version %d", v,
                               AICFN_PROTOCOL_VERSION);
    h->v = (uint32_t)v;
    wire_str t = {"", 0};
    if ((rc = wire_get_str(root, NULL, "t", false, WIRE_TYPE_MAX - 1, &t, err))) return rc;
    if (t.len) memcpy(h->t, t.ptr, t.len);
    h->t[t.len] = 0;
    if (memchr(h->t, 0, t.len) != NULL)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 't': contains NUL");
    const msgpack_object *id = wire_map_get(root, "id");
    h->has_id = id != NULL && id->type != MSGPACK_OBJECT_NIL; /* nil: absent (protocol.md §2) */
    if ((rc = wire_get_u64(root, NULL, "id", false, &h->id, err))) return rc;
    if (h->t[0] && !h->has_id) /* a reply could not be matched to it */
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "'%s' request without key 'id' (required in requests)",
                               h->t);
    return AICFN_OK;
}

uint64_t wire_peek_id(const void *buf, size_t len) {
    size_t off, vlen;
    if (buf == NULL || len == 0 || len > AICFN_MAX_MESSAGE_BYTES) return 0;
    /* the whole message must be valid for wire_raw_find's walk to be safe */
    if (wire_validate(buf, len, NULL, NULL, NULL) != AICFN_OK) return 0;
    if (wire_raw_find(buf, len, "id", &off, &vlen, NULL) != AICFN_OK) return 0;
    const uint8_t *p = (const uint8_t *)buf + off;
    uint64_t v = 0;
    if (p[0] <= 0x7f) return p[0];
    unsigned n = p[0] == 0xcc ? 1 : p[0] == 0xcd ? 2 : p[0] == 0xce ? 4 : p[0] == 0xcf ? 8 : 0;
    if (n == 0 || vlen != 1 + n) return 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[1 + i];
    return v;
}

static void wire_put_error_map(wire_writer *w, int code, const char *message) {
    wire_put_str(w, "error");
    wire_put_map(w, 3);
    wire_kv_u64(w, "code", (uint64_t)code);
    wire_kv_str(w, "name", aicfn_status_name(code));
    wire_kv_str(w, "message", message ? message : aicfn_strerror(code));
}

int wire_encode_error_reply(wire_writer *w, uint64_t id, int code, const char *message, aicfn_error *err) {
    return wire_encode_marked_error_reply(w, id, code, message, NULL, err);
}

int wire_encode_marked_error_reply(wire_writer *w, uint64_t id, int code, const char *message,
                                   const char *mark, aicfn_error *err) {
    if (code <= AICFN_OK || code >= AICFN_STATUS_COUNT) code = AICFN_E_INTERNAL;
    wire_put_map(w, mark ? 5 : 4);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_u64(w, "id", id);
    wire_kv_bool(w, "ok", false);
    if (mark) wire_kv_bool(w, mark, true);
    wire_put_error_map(w, code, message);
    return wire_writer_status(w, err);
}

int wire_decode_reply_head(wire_doc *doc, wire_reply_head *h, aicfn_error *err) {
    memset(h, 0, sizeof *h);
    h->message = "";
    wire_header hd;
    int rc = wire_decode_header(doc, &hd, err);
    if (rc) return rc;
    const msgpack_object *root = &doc->root;
    if ((rc = wire_get_u64(root, NULL, "id", true, &h->id, err))) return rc;
    if ((rc = wire_get_bool(root, NULL, "ok", true, &h->ok, err))) return rc;
    if (h->ok) {
        h->code = AICFN_OK;
        return AICFN_OK;
    }
    if ((rc = wire_get_bool(root, NULL, WIRE_MARK_NOT_RUN, false, &h->not_run, err))) return rc;
    if ((rc = wire_get_bool(root, NULL, WIRE_MARK_OVERRAN, false, &h->overran, err))) return rc;
    const msgpack_object *e;
    if ((rc = wire_get_map(root, NULL, "error", true, &e, err))) return rc;
    uint64_t code = UINT64_MAX;
    if ((rc = wire_get_u64(e, "error", "code", false, &code, err))) return rc;
    wire_str name = {NULL, 0};
    if ((rc = wire_get_str(e, "error", "name", false, 64, &name, err))) return rc;
    if ((rc = wire_get_cstr(doc, e, "error", "message", false, 0, &h->message, err))) return rc;
    if (code == UINT64_MAX && name.ptr) {
        char nb[65];
        memcpy(nb, name.ptr, name.len);
        nb[name.len] = 0;
        int c = aicfn_status_from_name(nb);
        code = c < 0 ? AICFN_E_INTERNAL : (uint64_t)c;
    }
    if (code == UINT64_MAX)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "missing required key 'error.code' (or 'error.name')");
    if (code == AICFN_OK || code >= AICFN_STATUS_COUNT) code = AICFN_E_INTERNAL;
    h->code = (int)code;
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * Tensors
 * --------------------------------------------------------------------------------- */

static uint32_t wire_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int wire_bytes_check(const uint8_t *data, uint64_t len, uint64_t count, aicfn_error *err) {
    if (count > len / 4)
        return aicfn_error_set(
            err, AICFN_E_PROTOCOL,
            "BYTES data of %" PRIu64 " bytes cannot hold %" PRIu64 " elements (4-byte lengths)", len, count);
    uint64_t pos = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (len - pos < 4)
            return aicfn_error_set(err, AICFN_E_PROTOCOL,
                                   "BYTES element %" PRIu64 ": length truncated at byte %" PRIu64, i, pos);
        uint32_t l = wire_le32(data + pos);
        pos += 4;
        if (l > len - pos)
            return aicfn_error_set(err, AICFN_E_PROTOCOL,
                                   "BYTES element %" PRIu64 ": length %u exceeds the %" PRIu64 " bytes left",
                                   i, l, len - pos);
        pos += l;
    }
    if (pos != len)
        return aicfn_error_set(err, AICFN_E_PROTOCOL,
                               "BYTES data has %" PRIu64 " bytes after its %" PRIu64 " elements", len - pos,
                               count);
    return AICFN_OK;
}

bool wire_bytes_next(const uint8_t *data, uint64_t len, uint64_t *pos, const uint8_t **elem, uint32_t *elen) {
    if (*pos > len || len - *pos < 4) return false;
    uint32_t l = wire_le32(data + *pos);
    if (l > len - *pos - 4) return false;
    *elem = data + *pos + 4;
    *elen = l;
    *pos += 4 + (uint64_t)l;
    return true;
}

int wire_tensor_check(const wire_tensor *t, const char *what, aicfn_error *err) {
    if (t->name == NULL || t->name[0] == 0)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: empty tensor name", what);
    size_t nl = strnlen(t->name, AICFN_MAX_NAME_BYTES + 1);
    if (nl > AICFN_MAX_NAME_BYTES)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: tensor name longer than %d bytes", what,
                               AICFN_MAX_NAME_BYTES);
    if (t->dtype <= AICFN_DTYPE_INVALID || t->dtype >= AICFN_DTYPE_COUNT)
        return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "%s: unknown dtype %d", what, (int)t->dtype);
    if (t->ndim > AICFN_MAX_DIMS)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: %u dims exceed the limit of %d", what, t->ndim,
                               AICFN_MAX_DIMS);
    for (uint32_t i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: negative dim %" PRId64 " at shape[%u]", what,
                                   t->shape[i], i);
    if (t->data == NULL && t->nbytes != 0)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: no data for %" PRIu64 " bytes", what, t->nbytes);
    uint64_t elems;
    if (dtype_shape_elements(t->shape, t->ndim, &elems) != 0)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: element count of the shape overflows", what);
    if (t->dtype == AICFN_DTYPE_BYTES) {
        int rc = wire_bytes_check(t->data, t->nbytes, elems, err);
        if (rc) aicfn_error_wrap(err, "%s", what);
        return rc;
    }
    uint64_t want;
    if (dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &want) != 0)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: byte size of the shape overflows", what);
    if (want != t->nbytes)
        return aicfn_error_set(err, AICFN_E_PROTOCOL,
                               "%s: %s shape of %" PRIu64 " elements needs %" PRIu64
                               " bytes, data has %" PRIu64,
                               what, dtype_name(t->dtype), elems, want, t->nbytes);
    return AICFN_OK;
}

static void wire_put_tensor(wire_writer *w, const wire_tensor *t) {
    wire_put_map(w, 4);
    wire_kv_str(w, "name", t->name);
    wire_kv_str(w, "dtype", dtype_name(t->dtype));
    wire_put_str(w, "shape");
    wire_put_array(w, t->ndim);
    for (uint32_t i = 0; i < t->ndim; i++)
        wire_put_i64(w, t->shape[i]);
    wire_kv_bin(w, "data", t->data, (size_t)t->nbytes);
}

/* "what[i]" in buf (at least WIRE_INDEX_CTX bytes; what is cut to fit), without printf:
 * every tensor of every message gets one, and it is read only when something fails. */
#define WIRE_INDEX_CTX 64
static const char *wire_index_ctx(char buf[WIRE_INDEX_CTX], const char *what, uint32_t i) {
    size_t n = strnlen(what, WIRE_INDEX_CTX - 13); /* room for "[4294967295]" and the NUL */
    memcpy(buf, what, n);
    buf[n++] = '[';
    n += units_put_u64(buf + n, i);
    buf[n++] = ']';
    buf[n] = 0;
    return buf;
}

/* Checks tensors before encoding; inconsistent input from our own code is INVALID. */
static int wire_check_tensors(const wire_tensor *ts, uint32_t n, const char *what, aicfn_error *err) {
    if (n > AICFN_MAX_TENSORS)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: %u tensors exceed the limit of %d", what, n,
                               AICFN_MAX_TENSORS);
    if (n && ts == NULL) return aicfn_error_set(err, AICFN_E_INVALID, "%s: NULL tensor array", what);
    for (uint32_t i = 0; i < n; i++) {
        if (wire_tensor_check(&ts[i], what, NULL) == AICFN_OK) continue; /* no message to write */
        char ctx[WIRE_INDEX_CTX];
        int rc = wire_tensor_check(&ts[i], wire_index_ctx(ctx, what, i), err);
        if (rc) {
            if (err) err->code = AICFN_E_INVALID;
            return AICFN_E_INVALID;
        }
    }
    return AICFN_OK;
}

#define WIRE_NAMED "%s '%s'"

static int wire_decode_tensors(wire_doc *doc, const msgpack_object *arr, const char *what, uint32_t *n_out,
                               const wire_tensor **out, aicfn_error *err) {
    uint32_t n = arr->via.array.size;
    if (n > AICFN_MAX_TENSORS)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: %u tensors exceed the limit of %d", what, n,
                               AICFN_MAX_TENSORS);
    wire_tensor *ts = wire_doc_alloc(doc, (n ? n : 1) * sizeof *ts);
    if (ts == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "%s: %u tensors", what, n);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        wire_tensor *t = &ts[i];
        memset(t, 0, sizeof *t);
        char ctx[WIRE_INDEX_CTX];
        wire_index_ctx(ctx, what, i);
        if (o->type != MSGPACK_OBJECT_MAP)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: expected a map", ctx);
        int rc = wire_get_cstr(doc, o, ctx, "name", true, AICFN_MAX_NAME_BYTES, &t->name, err);
        if (rc) return rc;
        /* Messages below name the tensor: "inputs[0] 'x': ..." (WIRE_NAMED, ctx, t->name). */
        wire_str dt;
        if ((rc = wire_get_str(o, ctx, "dtype", true, 31, &dt, err))) return rc;
        char dtb[32];
        memcpy(dtb, dt.ptr, dt.len);
        dtb[dt.len] = 0;
        t->dtype = dtype_from_name(dtb);
        if (t->dtype == AICFN_DTYPE_INVALID)
            return aicfn_error_set(err, AICFN_E_UNSUPPORTED, WIRE_NAMED ": unknown dtype '%s'", ctx, t->name,
                                   dtb);
        const msgpack_object *shape;
        if ((rc = wire_get_array(o, ctx, "shape", true, &shape, err))) return rc;
        if (shape->via.array.size > AICFN_MAX_DIMS)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, WIRE_NAMED ": %u dims exceed the limit of %d", ctx,
                                   t->name, shape->via.array.size, AICFN_MAX_DIMS);
        t->ndim = shape->via.array.size;
        for (uint32_t d = 0; d < t->ndim; d++) {
            const msgpack_object *dim = &shape->via.array.ptr[d];
            if (dim->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return aicfn_error_set(err, AICFN_E_PROTOCOL,
                                       WIRE_NAMED ": negative dim %" PRId64 " at shape[%u]", ctx, t->name,
                                       dim->via.i64, d);
            if (dim->type != MSGPACK_OBJECT_POSITIVE_INTEGER || dim->via.u64 > INT64_MAX)
                return aicfn_error_set(err, AICFN_E_PROTOCOL,
                                       WIRE_NAMED ": shape[%u] is not a non-negative integer", ctx, t->name,
                                       d);
            t->shape[d] = (int64_t)dim->via.u64;
        }
        size_t dlen = 0;
        if ((rc = wire_get_bin(o, ctx, "data", true, &t->data, &dlen, err))) return rc;
        t->nbytes = dlen;
        if (wire_tensor_check(t, ctx, NULL) != AICFN_OK) { /* again, for the message */
            char named[WIRE_INDEX_CTX + AICFN_MAX_NAME_BYTES + 4];
            snprintf(named, sizeof named, WIRE_NAMED, ctx, t->name);
            return wire_tensor_check(t, named, err);
        }
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(ts[j].name, t->name) == 0)
                return aicfn_error_set(err, AICFN_E_PROTOCOL, WIRE_NAMED ": duplicate tensor name", ctx,
                                       t->name);
    }
    *n_out = n;
    *out = ts;
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * invoke request
 * --------------------------------------------------------------------------------- */

static bool wire_has(const char *s) {
    return s != NULL;
}

int wire_encode_invoke_req(wire_writer *w, const wire_invoke_req *req, aicfn_error *err) {
    if (req->fn == NULL || req->fn[0] == 0 || strlen(req->fn) > AICFN_MAX_NAME_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID, "invoke: function name empty or longer than %d bytes",
                               AICFN_MAX_NAME_BYTES);
    int rc = wire_check_tensors(req->inputs, req->n_inputs, "inputs", err);
    if (rc) return rc;
    if (req->params) {
        uint64_t objs;
        if (wire_validate(req->params, req->params_len, NULL, &objs, err) != AICFN_OK ||
            req->params_len == 0 ||
            !((req->params[0] >= 0x80 && req->params[0] <= 0x8f) || req->params[0] == 0xde ||
              req->params[0] == 0xdf))
            return aicfn_error_set(err, AICFN_E_INVALID, "invoke: params is not one valid msgpack map");
    }
    if (req->has_spec && (req->spec.handler == NULL || req->spec.handler[0] == 0))
        return aicfn_error_set(err, AICFN_E_INVALID, "invoke: spec without a handler path");
    uint32_t n = 5; /* v t id fn inputs */
    n += req->ver != 0;
    n += wire_has(req->key);
    n += wire_has(req->tenant);
    n += req->gid != 0;
    n += req->deadline_ms != 0;
    n += req->params != NULL;
    n += req->has_spec;
    wire_put_map(w, n);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(w, "t", WIRE_T_INVOKE);
    wire_kv_u64(w, "id", req->id);
    wire_kv_str(w, "fn", req->fn);
    if (req->ver) wire_kv_u64(w, "ver", req->ver);
    if (req->key) wire_kv_str(w, "key", req->key);
    if (req->tenant) wire_kv_str(w, "tenant", req->tenant);
    if (req->gid) wire_kv_u64(w, "gid", req->gid);
    if (req->deadline_ms) wire_kv_u64(w, "deadline_ms", req->deadline_ms);
    wire_put_str(w, "inputs");
    wire_put_array(w, req->n_inputs);
    for (uint32_t i = 0; i < req->n_inputs; i++)
        wire_put_tensor(w, &req->inputs[i]);
    if (req->params) {
        wire_put_str(w, "params");
        wire_put_raw(w, req->params, req->params_len);
    }
    if (req->has_spec) {
        const wire_fn_spec *s = &req->spec;
        wire_put_str(w, "spec");
        wire_put_map(w, 8 + (s->n_params > 0));
        wire_kv_str(w, "handler", s->handler);
        wire_kv_str(w, "snapshot", s->snapshot ? s->snapshot : "");
        wire_kv_str(w, "model", s->model ? s->model : "");
        wire_kv_u64(w, "model_bytes", s->model_bytes);
        wire_kv_u64(w, "max_batch", s->max_batch ? s->max_batch : 1);
        wire_kv_u64(w, "max_delay_us", s->max_delay_us);
        wire_kv_u64(w, "timeout_ms", s->timeout_ms);
        wire_kv_bool(w, "idempotent", s->idempotent);
        if (s->n_params) {
            wire_put_str(w, "params");
            wire_put_map(w, s->n_params);
            for (uint32_t i = 0; i < s->n_params; i++)
                wire_kv_str(w, s->params[i].key, s->params[i].value);
        }
    }
    return wire_writer_status(w, err);
}

/* spec.params: a map of at most AICFN_MAX_PARAMS str keys (1..AICFN_MAX_NAME_BYTES - 1
 * bytes) to str values (at most AICFN_PARAM_VALUE_MAX bytes), neither holding a NUL. */
static int wire_decode_spec_params(wire_doc *doc, const msgpack_object *m, wire_fn_spec *s, aicfn_error *err) {
    uint32_t n = m->via.map.size;
    if (n > AICFN_MAX_PARAMS)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 'spec.params': %u entries, at most %d", n,
                               AICFN_MAX_PARAMS);
    if (n == 0) return AICFN_OK;
    aicfn_param *p = wire_doc_alloc(doc, n * sizeof *p);
    if (!p) return aicfn_error_set(err, AICFN_E_NOMEM, "spec.params: out of memory");
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0 || k->via.str.size >= AICFN_MAX_NAME_BYTES ||
            memchr(k->via.str.ptr, 0, k->via.str.size))
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 'spec.params': entry %u: a key must be a str of "
                                   "1..%d bytes without NUL", i, AICFN_MAX_NAME_BYTES - 1);
        if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > AICFN_PARAM_VALUE_MAX ||
            memchr(v->via.str.ptr, 0, v->via.str.size))
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 'spec.params.%.*s': a value must be a str of at "
                                   "most %d bytes without NUL", (int)k->via.str.size, k->via.str.ptr,
                                   AICFN_PARAM_VALUE_MAX);
        total += k->via.str.size + v->via.str.size;
        if (total > AICFN_PARAMS_TOTAL_MAX)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 'spec.params': more than %u bytes of keys and values",
                                   AICFN_PARAMS_TOTAL_MAX);
        char *ks = wire_doc_alloc(doc, k->via.str.size + 1), *vs = wire_doc_alloc(doc, v->via.str.size + 1);
        if (!ks || !vs) return aicfn_error_set(err, AICFN_E_NOMEM, "spec.params: out of memory");
        memcpy(ks, k->via.str.ptr, k->via.str.size);
        ks[k->via.str.size] = 0;
        memcpy(vs, v->via.str.ptr, v->via.str.size);
        vs[v->via.str.size] = 0;
        p[i] = (aicfn_param){.key = ks, .value = vs};
    }
    s->params = p;
    s->n_params = n;
    return AICFN_OK;
}

int wire_decode_invoke_req(wire_doc *doc, wire_invoke_req *req, aicfn_error *err) {
    memset(req, 0, sizeof *req);
    wire_header h;
    int rc = wire_decode_header(doc, &h, err);
    if (rc) return rc;
    if (strcmp(h.t, WIRE_T_INVOKE) != 0)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "message type '%s' is not '%s'", h.t, WIRE_T_INVOKE);
    const msgpack_object *root = &doc->root;
    if ((rc = wire_get_u64(root, NULL, "id", true, &req->id, err))) return rc;
    /* Longer than any function name may be: AICFN_E_PROTOCOL (protocol.md §2); a name
     * within the limit that breaks the character rules is the gateway's AICFN_E_INVALID. */
    if ((rc = wire_get_cstr(doc, root, NULL, "fn", true, AICFN_FN_NAME_MAX_BYTES, &req->fn, err))) return rc;
    if (req->fn[0] == 0) return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 'fn': empty function name");
    if ((rc = wire_get_u32(root, NULL, "ver", false, &req->ver, err))) return rc;
    if ((rc = wire_get_cstr(doc, root, NULL, "key", false, AICFN_API_KEY_MAX_BYTES, &req->key, err))) return rc;
    if ((rc = wire_get_cstr(doc, root, NULL, "tenant", false, AICFN_MAX_NAME_BYTES, &req->tenant, err)))
        return rc;
    if ((rc = wire_get_u64(root, NULL, "gid", false, &req->gid, err))) return rc;
    if ((rc = wire_get_u32(root, NULL, "deadline_ms", false, &req->deadline_ms, err))) return rc;
    const msgpack_object *inputs;
    if ((rc = wire_get_array(root, NULL, "inputs", true, &inputs, err))) return rc;
    if ((rc = wire_decode_tensors(doc, inputs, "inputs", &req->n_inputs, &req->inputs, err))) return rc;
    const msgpack_object *params = NULL;
    if ((rc = wire_get_map(root, NULL, "params", false, &params, err))) return rc;
    if (params) {
        size_t off, len;
        if ((rc = wire_raw_find(doc->buf, doc->len, "params", &off, &len, err))) return rc;
        req->params = doc->buf + off;
        req->params_len = len;
    }
    const msgpack_object *spec = NULL;
    if ((rc = wire_get_map(root, NULL, "spec", false, &spec, err))) return rc;
    if (spec) {
        wire_fn_spec *s = &req->spec;
        req->has_spec = true;
        s->snapshot = s->model = "";
        s->max_batch = 1;
        if ((rc = wire_get_cstr(doc, spec, "spec", "handler", true, 4096, &s->handler, err))) return rc;
        if ((rc = wire_get_cstr(doc, spec, "spec", "snapshot", false, 4096, &s->snapshot, err))) return rc;
        if ((rc = wire_get_cstr(doc, spec, "spec", "model", false, AICFN_MAX_NAME_BYTES, &s->model, err)))
            return rc;
        if ((rc = wire_get_u64(spec, "spec", "model_bytes", false, &s->model_bytes, err))) return rc;
        if ((rc = wire_get_u32(spec, "spec", "max_batch", false, &s->max_batch, err))) return rc;
        if (s->max_batch == 0)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "key 'spec.max_batch': must be >= 1");
        if ((rc = wire_get_u32(spec, "spec", "max_delay_us", false, &s->max_delay_us, err))) return rc;
        if ((rc = wire_get_u32(spec, "spec", "timeout_ms", false, &s->timeout_ms, err))) return rc;
        if ((rc = wire_get_bool(spec, "spec", "idempotent", false, &s->idempotent, err))) return rc;
        const msgpack_object *params = NULL;
        if ((rc = wire_get_map(spec, "spec", "params", false, &params, err))) return rc;
        if (params && (rc = wire_decode_spec_params(doc, params, s, err))) return rc;
    }
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * Worker summary, timing, cold start
 * --------------------------------------------------------------------------------- */

static const char *const wire_state_names[] = {"UNKNOWN", "LOADING", "READY", "EVICTING"};

const char *wire_model_state_name(int state) {
    return state >= WIRE_MODEL_LOADING && state <= WIRE_MODEL_EVICTING ? wire_state_names[state] : "UNKNOWN";
}

int wire_model_state_from_name(const char *name, size_t len) {
    for (int s = WIRE_MODEL_LOADING; s <= WIRE_MODEL_EVICTING; s++)
        if (strlen(wire_state_names[s]) == len && memcmp(wire_state_names[s], name, len) == 0) return s;
    return 0;
}

void wire_put_summary(wire_writer *w, const wire_worker_summary *s) {
    uint32_t nm = s->n_models > WIRE_MAX_MODELS ? WIRE_MAX_MODELS : s->n_models;
    bool partial = s->partial || nm < s->n_models;
    wire_put_map(w, 7 + partial);
    if (partial) wire_kv_bool(w, "partial", true);
    wire_kv_u64(w, "budget", s->budget_bytes);
    wire_kv_u64(w, "used", s->used_bytes);
    wire_kv_u64(w, "free", s->free_bytes);
    wire_kv_u64(w, "queued", s->queued);
    wire_kv_u64(w, "inflight", s->inflight);
    wire_kv_bool(w, "draining", s->draining);
    wire_put_str(w, "models");
    wire_put_array(w, nm);
    for (uint32_t i = 0; i < nm; i++) {
        const wire_model_status *m = &s->models[i];
        wire_put_map(w, 8);
        wire_kv_str(w, "model", m->model ? m->model : "");
        wire_kv_str(w, "fn", m->fn ? m->fn : "");
        wire_kv_u64(w, "ver", m->ver);
        wire_kv_str(w, "state", wire_model_state_name(m->state));
        wire_kv_u64(w, "bytes", m->bytes);
        wire_kv_u64(w, "idle_ms", m->idle_ms);
        wire_kv_u64(w, "refs", m->refs);
        wire_kv_bool(w, "kept", m->kept);
    }
}

int wire_decode_summary(wire_doc *doc, const msgpack_object *o, const char *ctx, wire_worker_summary *s,
                        aicfn_error *err) {
    memset(s, 0, sizeof *s);
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: expected a map", ctx);
    int rc;
    if ((rc = wire_get_u64(o, ctx, "budget", false, &s->budget_bytes, err))) return rc;
    if ((rc = wire_get_u64(o, ctx, "used", false, &s->used_bytes, err))) return rc;
    if ((rc = wire_get_u64(o, ctx, "free", false, &s->free_bytes, err))) return rc;
    if ((rc = wire_get_u32(o, ctx, "queued", false, &s->queued, err))) return rc;
    if ((rc = wire_get_u32(o, ctx, "inflight", false, &s->inflight, err))) return rc;
    if ((rc = wire_get_bool(o, ctx, "draining", false, &s->draining, err))) return rc;
    if ((rc = wire_get_bool(o, ctx, "partial", false, &s->partial, err))) return rc;
    const msgpack_object *models = NULL;
    if ((rc = wire_get_array(o, ctx, "models", false, &models, err))) return rc;
    if (models == NULL) return AICFN_OK;
    uint32_t n = models->via.array.size;
    if (n > WIRE_MAX_MODELS)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s.models: %u models exceed the limit of %d", ctx, n,
                               WIRE_MAX_MODELS);
    wire_model_status *ms = wire_doc_alloc(doc, (n ? n : 1) * sizeof *ms);
    if (ms == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "%s.models", ctx);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *m = &models->via.array.ptr[i];
        wire_model_status *x = &ms[i];
        memset(x, 0, sizeof *x);
        char mctx[96];
        snprintf(mctx, sizeof mctx, "%s.models[%u]", ctx, i);
        if (m->type != MSGPACK_OBJECT_MAP)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: expected a map", mctx);
        x->model = x->fn = "";
        if ((rc = wire_get_cstr(doc, m, mctx, "model", true, AICFN_MAX_NAME_BYTES, &x->model, err)))
            return rc;
        if ((rc = wire_get_cstr(doc, m, mctx, "fn", false, AICFN_MAX_NAME_BYTES, &x->fn, err))) return rc;
        if ((rc = wire_get_u32(m, mctx, "ver", false, &x->ver, err))) return rc;
        wire_str st = {"", 0};
        if ((rc = wire_get_str(m, mctx, "state", true, 16, &st, err))) return rc;
        x->state = wire_model_state_from_name(st.ptr, st.len);
        if (x->state == 0)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s.state: unknown model state '%.*s'", mctx,
                                   (int)st.len, st.ptr);
        if ((rc = wire_get_u64(m, mctx, "bytes", false, &x->bytes, err))) return rc;
        if ((rc = wire_get_u64(m, mctx, "idle_ms", false, &x->idle_ms, err))) return rc;
        if ((rc = wire_get_u32(m, mctx, "refs", false, &x->refs, err))) return rc;
        if ((rc = wire_get_bool(m, mctx, "kept", false, &x->kept, err))) return rc;
    }
    s->n_models = n;
    s->models = ms;
    return AICFN_OK;
}

typedef struct wire_timing_field {
    const char *key;
    size_t off;
} wire_timing_field;

static const wire_timing_field wire_timing_fields[] = {
    {"queue", offsetof(wire_timing, queue_us)},
    {"load", offsetof(wire_timing, load_us)},
    {"exec", offsetof(wire_timing, exec_us)},
    {"total", offsetof(wire_timing, total_us)},
    {"read", offsetof(wire_timing, read_us)},
    {"decompress", offsetof(wire_timing, decompress_us)},
    {"filter", offsetof(wire_timing, filter_us)},
    {"copy", offsetof(wire_timing, copy_us)},
    {"init", offsetof(wire_timing, init_us)},
    {"fetch", offsetof(wire_timing, fetch_us)},
    {"cold_share", offsetof(wire_timing, cold_share_us)},
};
#define WIRE_NTIMING (sizeof wire_timing_fields / sizeof wire_timing_fields[0])

static uint64_t *wire_timing_at(wire_timing *t, size_t i) {
    return (uint64_t *)((char *)t + wire_timing_fields[i].off);
}

static void wire_put_timing(wire_writer *w, const wire_timing *t) {
    uint32_t n = 0;
    for (size_t i = 0; i < WIRE_NTIMING; i++)
        n += *wire_timing_at((wire_timing *)t, i) != 0 || i == 3;
    wire_put_map(w, n);
    for (size_t i = 0; i < WIRE_NTIMING; i++) {
        uint64_t v = *wire_timing_at((wire_timing *)t, i);
        if (v != 0 || i == 3) wire_kv_u64(w, wire_timing_fields[i].key, v);
    }
}

static int wire_decode_timing(const msgpack_object *o, wire_timing *t, aicfn_error *err) {
    for (size_t i = 0; i < WIRE_NTIMING; i++) {
        int rc = wire_get_u64(o, "timing", wire_timing_fields[i].key, false, wire_timing_at(t, i), err);
        if (rc) return rc;
    }
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * invoke reply
 * --------------------------------------------------------------------------------- */

/* `cs`: the cold-start record of the call (or preload) that made a load. */
static void wire_put_coldstart(wire_writer *w, const wire_coldstart *c) {
    wire_put_str(w, "cs");
    wire_put_map(w, 3);
    wire_kv_u64(w, "cbytes", c->compressed_bytes);
    wire_kv_u64(w, "rbytes", c->raw_bytes);
    wire_put_str(w, "evicted");
    wire_put_array(w, c->n_evicted);
    for (uint32_t i = 0; i < c->n_evicted; i++)
        wire_put_str(w, c->evicted[i]);
}

/* The optional `cs` of map `root`: *has set when present. */
static int wire_decode_coldstart(wire_doc *doc, const msgpack_object *root, bool *has, wire_coldstart *c,
                                 aicfn_error *err) {
    const msgpack_object *o = NULL;
    int rc = wire_get_map(root, NULL, "cs", false, &o, err);
    if (rc || !o) return rc;
    *has = true;
    if ((rc = wire_get_u64(o, "cs", "cbytes", false, &c->compressed_bytes, err))) return rc;
    if ((rc = wire_get_u64(o, "cs", "rbytes", false, &c->raw_bytes, err))) return rc;
    const msgpack_object *ev = NULL;
    if ((rc = wire_get_array(o, "cs", "evicted", false, &ev, err))) return rc;
    if (ev) {
        uint32_t n = ev->via.array.size;
        if (n > WIRE_MAX_EVICTED)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "cs.evicted: %u names exceed the limit of %d", n,
                                   WIRE_MAX_EVICTED);
        const char **names = wire_doc_alloc(doc, (n ? n : 1) * sizeof *names);
        if (names == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "cs.evicted");
        for (uint32_t i = 0; i < n; i++) {
            char what[48];
            snprintf(what, sizeof what, "cs.evicted[%u]", i);
            if ((rc = wire_obj_cstr(doc, &ev->via.array.ptr[i], what, AICFN_MAX_NAME_BYTES, &names[i], err)))
                return rc;
        }
        c->n_evicted = n;
        c->evicted = names;
    }
    return AICFN_OK;
}

int wire_encode_invoke_reply(wire_writer *w, const wire_invoke_reply *rep, aicfn_error *err) {
    const wire_reply_head *h = &rep->head;
    int rc;
    if (h->ok && (rc = wire_check_tensors(rep->outputs, rep->n_outputs, "outputs", err))) return rc;
    if (rep->has_coldstart && rep->coldstart.n_evicted > WIRE_MAX_EVICTED)
        return aicfn_error_set(err, AICFN_E_INVALID, "reply: %u evicted models exceed the limit of %d",
                               rep->coldstart.n_evicted, WIRE_MAX_EVICTED);
    uint32_t n = 4 + 1 + 1; /* v id ok outputs|error cold timing */
    n += rep->batch != 0;
    n += rep->cached;
    n += rep->has_coldstart;
    n += rep->has_st;
    wire_put_map(w, n);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_u64(w, "id", h->id);
    wire_kv_bool(w, "ok", h->ok);
    if (h->ok) {
        wire_put_str(w, "outputs");
        wire_put_array(w, rep->n_outputs);
        for (uint32_t i = 0; i < rep->n_outputs; i++)
            wire_put_tensor(w, &rep->outputs[i]);
    } else {
        int code = h->code <= AICFN_OK || h->code >= AICFN_STATUS_COUNT ? AICFN_E_INTERNAL : h->code;
        wire_put_error_map(w, code, h->message);
    }
    wire_kv_bool(w, "cold", rep->cold);
    wire_put_str(w, "timing");
    wire_put_timing(w, &rep->timing);
    if (rep->batch) wire_kv_u64(w, "batch", rep->batch);
    if (rep->cached) wire_kv_bool(w, "cached", true);
    if (rep->has_coldstart) wire_put_coldstart(w, &rep->coldstart);
    if (rep->has_st) {
        wire_put_str(w, "st");
        wire_put_summary(w, &rep->st);
    }
    return wire_writer_status(w, err);
}

int wire_decode_invoke_reply(wire_doc *doc, wire_invoke_reply *rep, aicfn_error *err) {
    memset(rep, 0, sizeof *rep);
    int rc = wire_decode_reply_head(doc, &rep->head, err);
    if (rc) return rc;
    const msgpack_object *root = &doc->root;
    if (rep->head.ok) {
        const msgpack_object *outs;
        if ((rc = wire_get_array(root, NULL, "outputs", true, &outs, err))) return rc;
        if ((rc = wire_decode_tensors(doc, outs, "outputs", &rep->n_outputs, &rep->outputs, err))) return rc;
    }
    if ((rc = wire_get_bool(root, NULL, "cold", false, &rep->cold, err))) return rc;
    if ((rc = wire_get_bool(root, NULL, "cached", false, &rep->cached, err))) return rc;
    if ((rc = wire_get_u32(root, NULL, "batch", false, &rep->batch, err))) return rc;
    const msgpack_object *o = NULL;
    if ((rc = wire_get_map(root, NULL, "timing", false, &o, err))) return rc;
    if (o && (rc = wire_decode_timing(o, &rep->timing, err))) return rc;
    if ((rc = wire_decode_coldstart(doc, root, &rep->has_coldstart, &rep->coldstart, err))) return rc;
    o = NULL;
    if ((rc = wire_get_map(root, NULL, "st", false, &o, err))) return rc;
    if (o) {
        rep->has_st = true;
        if ((rc = wire_decode_summary(doc, o, "st", &rep->st, err))) return rc;
    }
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * status
 * --------------------------------------------------------------------------------- */

int wire_encode_status_req(wire_writer *w, uint64_t id, uint64_t ack, aicfn_error *err) {
    wire_put_map(w, 4);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(w, "t", WIRE_T_STATUS);
    wire_kv_u64(w, "id", id);
    wire_kv_u64(w, "ack", ack);
    return wire_writer_status(w, err);
}

int wire_encode_status_reply(wire_writer *w, uint64_t id, const wire_worker_status *st,
                             const wire_load_record *load, aicfn_error *err) {
    if (st->n_queues > WIRE_MAX_QUEUES || st->summary.n_models > WIRE_MAX_MODELS)
        return aicfn_error_set(err, AICFN_E_INVALID, "status: %u queues / %u models exceed the limits",
                               st->n_queues, st->summary.n_models);
    if (load && load->coldstart.n_evicted > WIRE_MAX_EVICTED)
        return aicfn_error_set(err, AICFN_E_INVALID, "status: %u evicted models exceed the limit",
                               load->coldstart.n_evicted);
    if (st->n_loads > WIRE_MAX_UNREPORTED_LOADS)
        return aicfn_error_set(err, AICFN_E_INVALID, "status: %u unreported loads exceed the limit",
                               st->n_loads);
    for (uint32_t i = 0; i < st->n_loads; i++) {
        const wire_unreported_load *l = &st->loads[i];
        if (l->coldstart.n_evicted > WIRE_MAX_EVICTED)
            return aicfn_error_set(err, AICFN_E_INVALID, "status: %u evicted models exceed the limit",
                                   l->coldstart.n_evicted);
        if (l->n_calls > WIRE_MAX_LOAD_CALLS || l->n_calls > l->makers || (l->n_calls && !l->calls))
            return aicfn_error_set(err, AICFN_E_INVALID, "status: a load lists %u calls of %u (at most %d)",
                                   l->n_calls, l->makers, WIRE_MAX_LOAD_CALLS);
    }
    wire_put_map(w, 4 + (load ? 2 + (load->has_coldstart ? 1 : 0) : 0));
    if (load) {
        wire_kv_bool(w, "cold", load->cold);
        wire_put_str(w, "timing");
        wire_put_timing(w, &load->timing);
        if (load->has_coldstart) wire_put_coldstart(w, &load->coldstart);
    }
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_u64(w, "id", id);
    wire_kv_bool(w, "ok", true);
    wire_put_str(w, "w");
    wire_put_map(w, 7 + (st->n_loads ? 1 : 0));
    wire_kv_str(w, "worker", st->worker ? st->worker : "");
    wire_kv_str(w, "device", st->device ? st->device : "");
    wire_kv_bool(w, "host", st->is_host);
    wire_kv_u64(w, "uptime_ms", st->uptime_ms);
    wire_put_str(w, "st");
    wire_put_summary(w, &st->summary);
    wire_put_str(w, "queues");
    wire_put_array(w, st->n_queues);
    for (uint32_t i = 0; i < st->n_queues; i++) {
        const wire_queue_status *q = &st->queues[i];
        wire_put_map(w, 4);
        wire_kv_str(w, "fn", q->fn ? q->fn : "");
        wire_kv_u64(w, "ver", q->ver);
        wire_kv_u64(w, "queued", q->queued);
        wire_kv_u64(w, "inflight", q->inflight);
    }
    const wire_worker_counters *c = &st->counters;
    wire_put_str(w, "counters");
    wire_put_map(w, 5);
    wire_kv_u64(w, "invocations", c->invocations);
    wire_kv_u64(w, "errors", c->errors);
    wire_kv_u64(w, "cold_starts", c->cold_starts);
    wire_kv_u64(w, "evictions", c->evictions);
    wire_kv_u64(w, "batches", c->batches);
    if (st->n_loads) {
        wire_put_str(w, "loads");
        wire_put_array(w, st->n_loads);
        for (uint32_t i = 0; i < st->n_loads; i++) {
            const wire_unreported_load *l = &st->loads[i];
            wire_put_map(w, 4 + (l->seq ? 1 : 0) + (l->makers ? 2 : 0));
            if (l->seq) wire_kv_u64(w, "seq", l->seq);
            wire_kv_str(w, "fn", l->fn ? l->fn : "");
            wire_kv_u64(w, "ver", l->ver);
            wire_put_str(w, "timing");
            wire_put_timing(w, &l->timing);
            wire_put_coldstart(w, &l->coldstart);
            if (l->makers) {
                wire_kv_u64(w, "makers", l->makers);
                wire_put_str(w, "calls");
                wire_put_array(w, l->n_calls);
                for (uint32_t k = 0; k < l->n_calls; k++)
                    wire_put_u64(w, l->calls[k]);
            }
        }
    }
    return wire_writer_status(w, err);
}

/* An unreported load's `makers` and `calls` (both absent from a worker that predates
 * them: makers 0, no calls). */
static int wire_decode_load_calls(wire_doc *doc, const msgpack_object *l, const char *ctx,
                                  wire_unreported_load *out, aicfn_error *err) {
    int rc = wire_get_u32(l, ctx, "makers", false, &out->makers, err);
    if (rc) return rc;
    const msgpack_object *a = NULL;
    if ((rc = wire_get_array(l, ctx, "calls", false, &a, err))) return rc;
    if (!a) return AICFN_OK;
    uint32_t n = a->via.array.size;
    if (n > WIRE_MAX_LOAD_CALLS || n > out->makers)
        return aicfn_error_set(err, AICFN_E_PROTOCOL,
                               "%s.calls: %u calls (at most %d, and at most makers = %u)", ctx, n,
                               WIRE_MAX_LOAD_CALLS, out->makers);
    uint64_t *ids = wire_doc_alloc(doc, (n ? n : 1) * sizeof *ids);
    if (ids == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "%s.calls", ctx);
    for (uint32_t k = 0; k < n; k++) {
        const msgpack_object *o = &a->via.array.ptr[k];
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 == 0)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s.calls[%u]: expected a call id (uint >= 1)", ctx,
                                   k);
        ids[k] = o->via.u64;
    }
    out->n_calls = n;
    out->calls = ids;
    return AICFN_OK;
}

int wire_decode_status_reply(wire_doc *doc, wire_status_reply *rep, aicfn_error *err) {
    memset(rep, 0, sizeof *rep);
    int rc = wire_decode_reply_head(doc, &rep->head, err);
    if (rc || !rep->head.ok) return rc;
    wire_load_record *ld = &rep->load;
    if ((rc = wire_get_bool(&doc->root, NULL, "cold", false, &ld->cold, err))) return rc;
    const msgpack_object *t = NULL;
    if ((rc = wire_get_map(&doc->root, NULL, "timing", false, &t, err))) return rc;
    if (t && (rc = wire_decode_timing(t, &ld->timing, err))) return rc;
    if ((rc = wire_decode_coldstart(doc, &doc->root, &ld->has_coldstart, &ld->coldstart, err))) return rc;
    const msgpack_object *w;
    if ((rc = wire_get_map(&doc->root, NULL, "w", true, &w, err))) return rc;
    wire_worker_status *s = &rep->w;
    s->worker = s->device = "";
    if ((rc = wire_get_cstr(doc, w, "w", "worker", false, AICFN_MAX_NAME_BYTES, &s->worker, err))) return rc;
    if ((rc = wire_get_cstr(doc, w, "w", "device", false, AICFN_MAX_NAME_BYTES, &s->device, err))) return rc;
    if ((rc = wire_get_bool(w, "w", "host", false, &s->is_host, err))) return rc;
    if ((rc = wire_get_u64(w, "w", "uptime_ms", false, &s->uptime_ms, err))) return rc;
    const msgpack_object *o = NULL;
    if ((rc = wire_get_map(w, "w", "st", true, &o, err))) return rc;
    if ((rc = wire_decode_summary(doc, o, "w.st", &s->summary, err))) return rc;
    o = NULL;
    if ((rc = wire_get_array(w, "w", "queues", false, &o, err))) return rc;
    if (o) {
        uint32_t n = o->via.array.size;
        if (n > WIRE_MAX_QUEUES)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "w.queues: %u queues exceed the limit of %d", n,
                                   WIRE_MAX_QUEUES);
        wire_queue_status *qs = wire_doc_alloc(doc, (n ? n : 1) * sizeof *qs);
        if (qs == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "w.queues");
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *q = &o->via.array.ptr[i];
            char qctx[48];
            snprintf(qctx, sizeof qctx, "w.queues[%u]", i);
            memset(&qs[i], 0, sizeof qs[i]);
            if (q->type != MSGPACK_OBJECT_MAP)
                return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: expected a map", qctx);
            if ((rc = wire_get_cstr(doc, q, qctx, "fn", true, AICFN_MAX_NAME_BYTES, &qs[i].fn, err)))
                return rc;
            if ((rc = wire_get_u32(q, qctx, "ver", false, &qs[i].ver, err))) return rc;
            if ((rc = wire_get_u32(q, qctx, "queued", false, &qs[i].queued, err))) return rc;
            if ((rc = wire_get_u32(q, qctx, "inflight", false, &qs[i].inflight, err))) return rc;
        }
        s->n_queues = n;
        s->queues = qs;
    }
    o = NULL;
    if ((rc = wire_get_map(w, "w", "counters", false, &o, err))) return rc;
    if (o) {
        wire_worker_counters *c = &s->counters;
        if ((rc = wire_get_u64(o, "w.counters", "invocations", false, &c->invocations, err))) return rc;
        if ((rc = wire_get_u64(o, "w.counters", "errors", false, &c->errors, err))) return rc;
        if ((rc = wire_get_u64(o, "w.counters", "cold_starts", false, &c->cold_starts, err))) return rc;
        if ((rc = wire_get_u64(o, "w.counters", "evictions", false, &c->evictions, err))) return rc;
        if ((rc = wire_get_u64(o, "w.counters", "batches", false, &c->batches, err))) return rc;
    }
    o = NULL;
    if ((rc = wire_get_array(w, "w", "loads", false, &o, err))) return rc;
    if (o) {
        uint32_t n = o->via.array.size;
        if (n > WIRE_MAX_UNREPORTED_LOADS)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "w.loads: %u loads exceed the limit of %d", n,
                                   WIRE_MAX_UNREPORTED_LOADS);
        wire_unreported_load *ls = wire_doc_alloc(doc, (n ? n : 1) * sizeof *ls);
        if (ls == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "w.loads");
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *l = &o->via.array.ptr[i];
            char lctx[48];
            snprintf(lctx, sizeof lctx, "w.loads[%u]", i);
            memset(&ls[i], 0, sizeof ls[i]);
            if (l->type != MSGPACK_OBJECT_MAP)
                return aicfn_error_set(err, AICFN_E_PROTOCOL, "%s: expected a map", lctx);
            if ((rc = wire_get_u64(l, lctx, "seq", false, &ls[i].seq, err))) return rc;
            if ((rc = wire_get_cstr(doc, l, lctx, "fn", true, AICFN_MAX_NAME_BYTES, &ls[i].fn, err)))
                return rc;
            if ((rc = wire_get_u32(l, lctx, "ver", true, &ls[i].ver, err))) return rc;
            const msgpack_object *t = NULL;
            if ((rc = wire_get_map(l, lctx, "timing", true, &t, err))) return rc;
            if ((rc = wire_decode_timing(t, &ls[i].timing, err))) return rc;
            bool has = false;
            if ((rc = wire_decode_coldstart(doc, l, &has, &ls[i].coldstart, err))) return rc;
            if (!has) return aicfn_error_set(err, AICFN_E_PROTOCOL, "missing required key '%s.cs'", lctx);
            if ((rc = wire_decode_load_calls(doc, l, lctx, &ls[i], err))) return rc;
        }
        s->n_loads = n;
        s->loads = ls;
    }
    return AICFN_OK;
}

/* ---------------------------------------------------------------------------------
 * bundle
 * --------------------------------------------------------------------------------- */

static void wire_put_parts(wire_writer *w, const char *key, const wire_part *parts, uint32_t n) {
    wire_put_str(w, key);
    wire_put_array(w, n);
    for (uint32_t i = 0; i < n; i++)
        wire_put_bin(w, parts[i].data, parts[i].len);
}

int wire_encode_bundle_req(wire_writer *w, uint64_t id, const wire_part *calls, uint32_t n,
                           aicfn_error *err) {
    wire_put_map(w, 4);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(w, "t", WIRE_T_BUNDLE);
    wire_kv_u64(w, "id", id);
    wire_put_parts(w, "calls", calls, n);
    return wire_writer_status(w, err);
}

int wire_encode_bundle_reply(wire_writer *w, uint64_t id, const wire_part *replies, uint32_t n,
                             aicfn_error *err) {
    wire_put_map(w, 4);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_u64(w, "id", id);
    wire_kv_bool(w, "ok", true);
    wire_put_parts(w, "replies", replies, n);
    return wire_writer_status(w, err);
}

int wire_decode_bundle(const wire_doc *doc, const char *key, wire_part *parts, uint32_t max, uint32_t *n,
                       aicfn_error *err) {
    *n = 0;
    const msgpack_object *a = NULL;
    int rc = wire_get_array(&doc->root, NULL, key, true, &a, err);
    if (rc) return rc;
    uint32_t count = a->via.array.size;
    if (count == 0 || count > max)
        return aicfn_error_set(err, AICFN_E_PROTOCOL, "bundle: key '%s' holds %u parts (1..%u allowed)", key,
                               count, max);
    for (uint32_t i = 0; i < count; i++) {
        const msgpack_object *o = &a->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_BIN)
            return aicfn_error_set(err, AICFN_E_PROTOCOL, "bundle: %s[%u] is not a bin (msgpack type %d)",
                                   key, i, (int)o->type);
        parts[i] = (wire_part){(const uint8_t *)o->via.bin.ptr, o->via.bin.size};
    }
    *n = count;
    return AICFN_OK;
}
