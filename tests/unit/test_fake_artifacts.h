/* test_fake_artifacts.h: the wire side of a fake gateway answering `artifact_get`
 * (docs/protocol.md §8), shared by the fetcher's tests (test_fetch, test_fetch_concurrent):
 * decoding a request and encoding a chunk or an error reply. What the fake does with a
 * request (which bytes, which faults) stays in each test. Header-only (static). */
#ifndef AICFN_TEST_FAKE_ARTIFACTS_H
#define AICFN_TEST_FAKE_ARTIFACTS_H

#include <stdint.h>
#include <string.h>

#include "common/rpc.h"
#include "common/wire.h"

/* An artifact_get request, decoded into `doc` (the caller finis it, whatever the result). */
typedef struct tfa_get {
    wire_header h;
    const char *hash, *key; /* key NULL when absent */
    uint64_t offset, len;
} tfa_get;

static inline int tfa_decode_get(wire_doc *doc, const uint8_t *msg, size_t len, tfa_get *g, aicfn_error *e) {
    memset(g, 0, sizeof *g);
    memset(doc, 0, sizeof *doc);
    int rc = wire_doc_parse(doc, msg, len, NULL, e);
    if (rc == AICFN_OK) rc = wire_decode_header(doc, &g->h, e);
    if (rc == AICFN_OK && strcmp(g->h.t, "artifact_get") != 0)
        rc = aicfn_error_set(e, AICFN_E_PROTOCOL, "type '%s' is not artifact_get", g->h.t);
    if (rc == AICFN_OK) rc = wire_get_cstr(doc, &doc->root, NULL, "hash", true, 64, &g->hash, e);
    if (rc == AICFN_OK) rc = wire_get_cstr(doc, &doc->root, NULL, "key", false, 100, &g->key, e);
    if (rc == AICFN_OK) rc = wire_get_u64(&doc->root, NULL, "offset", true, &g->offset, e);
    if (rc == AICFN_OK) rc = wire_get_u64(&doc->root, NULL, "len", true, &g->len, e);
    return rc;
}

/* An error reply; returns the encoder's status (the reply is sent either way). */
static inline int tfa_reply_error(rpc_call *call, uint64_t id, int code, const char *msg) {
    wire_writer w;
    wire_writer_init(&w);
    int rc = wire_encode_error_reply(&w, id, code, msg, NULL);
    rpc_reply(call, w.data, w.len);
    wire_writer_fini(&w);
    return rc;
}

/* {v, id, ok:true, size, data}: `n` bytes of an artifact announced as `size` bytes. */
static inline void tfa_reply_chunk(rpc_call *call, uint64_t id, uint64_t size, const uint8_t *data,
                                   uint64_t n) {
    wire_writer w;
    wire_writer_init(&w);
    wire_put_map(&w, 5);
    wire_kv_u64(&w, "v", 1);
    wire_kv_u64(&w, "id", id);
    wire_kv_bool(&w, "ok", true);
    wire_kv_u64(&w, "size", size);
    wire_kv_bin(&w, "data", data, (size_t)n);
    rpc_reply(call, w.data, w.len);
    wire_writer_fini(&w);
}

#endif
