/* fuzz_request.c: libFuzzer harness for the request side of the wire codec
 * (common/wire.h): the bounded validator, wire_doc_parse, the header and invoke-request
 * decoders, wire_peek_id, wire_raw_find, BYTES iteration, a re-encode/decode round
 * trip of every request that decodes, and the bundle decoder (each part then parsed as a
 * message of its own, as the worker does). Must never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/tunables.h"
#include "common/wire.h"

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sink += wire_peek_id(data, size);
    wire_doc doc;
    aicfn_error err;
    if (wire_doc_parse(&doc, data, size, NULL, &err) != AICFN_OK) return 0;
    size_t off, len;
    if (wire_raw_find(data, size, "params", &off, &len, &err) == AICFN_OK && (off + len > size || len == 0))
        abort();
    wire_part parts[AICFN_BUNDLE_MAX_CALLS];
    uint32_t np = 0;
    if (wire_decode_bundle(&doc, "calls", parts, AICFN_BUNDLE_MAX_CALLS, &np, &err) == AICFN_OK) {
        if (np == 0 || np > AICFN_BUNDLE_MAX_CALLS) abort();
        for (uint32_t i = 0; i < np; i++) {
            if (parts[i].data < data || parts[i].data + parts[i].len > data + size) abort();
            wire_doc pd;
            if (wire_doc_parse(&pd, parts[i].data, parts[i].len, NULL, &err) == AICFN_OK) wire_doc_fini(&pd);
        }
    }
    wire_header h;
    wire_invoke_req req;
    if (wire_decode_header(&doc, &h, &err) == AICFN_OK &&
        wire_decode_invoke_req(&doc, &req, &err) == AICFN_OK) {
        /* touch every byte the decoder vouched for */
        for (uint32_t i = 0; i < req.n_inputs; i++) {
            const wire_tensor *t = &req.inputs[i];
            for (uint64_t b = 0; b < t->nbytes; b++)
                sink += t->data[b];
            sink += strlen(t->name);
            if (t->dtype == AICFN_DTYPE_BYTES) {
                uint64_t pos = 0;
                const uint8_t *el;
                uint32_t elen;
                while (wire_bytes_next(t->data, t->nbytes, &pos, &el, &elen))
                    sink += elen ? el[elen - 1] : 0;
            }
        }
        if (req.params)
            for (size_t b = 0; b < req.params_len; b++)
                sink += req.params[b];
        /* round trip: what decodes must encode, and decode again to the same fields */
        wire_writer w;
        wire_writer_init(&w);
        if (wire_encode_invoke_req(&w, &req, &err) == AICFN_OK) {
            wire_doc d2;
            wire_invoke_req r2;
            if (wire_doc_parse(&d2, w.data, w.len, NULL, &err) != AICFN_OK) abort();
            if (wire_decode_invoke_req(&d2, &r2, &err) != AICFN_OK) abort();
            if (r2.id != req.id || r2.n_inputs != req.n_inputs || strcmp(r2.fn, req.fn) != 0) abort();
            for (uint32_t i = 0; i < r2.n_inputs; i++)
                if (r2.inputs[i].nbytes != req.inputs[i].nbytes ||
                    (r2.inputs[i].nbytes &&
                     memcmp(r2.inputs[i].data, req.inputs[i].data, r2.inputs[i].nbytes)))
                    abort();
            wire_doc_fini(&d2);
        }
        wire_writer_fini(&w);
    }
    wire_doc_fini(&doc);
    return 0;
}
