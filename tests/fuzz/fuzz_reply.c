/* fuzz_reply.c: libFuzzer harness for the reply side of the wire codec (common/wire.h):
 * invoke replies (outputs, error, timing, cold-start record, worker summary) and status
 * replies, plus a re-encode/decode round trip of every invoke reply that decodes. Must
 * never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/wire.h"

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    wire_doc doc;
    aicfn_error err;
    if (wire_doc_parse(&doc, data, size, NULL, &err) != AICFN_OK) return 0;
    wire_invoke_reply rep;
    if (wire_decode_invoke_reply(&doc, &rep, &err) == AICFN_OK) {
        sink += strlen(rep.head.message) + (uint64_t)rep.head.code;
        for (uint32_t i = 0; i < rep.n_outputs; i++)
            for (uint64_t b = 0; b < rep.outputs[i].nbytes; b++)
                sink += rep.outputs[i].data[b];
        for (uint32_t i = 0; rep.has_coldstart && i < rep.coldstart.n_evicted; i++)
            sink += strlen(rep.coldstart.evicted[i]);
        for (uint32_t i = 0; rep.has_st && i < rep.st.n_models; i++)
            sink += strlen(rep.st.models[i].model) + strlen(rep.st.models[i].fn);
        wire_writer w;
        wire_writer_init(&w);
        if (wire_encode_invoke_reply(&w, &rep, &err) == AICFN_OK) {
            wire_doc d2;
            wire_invoke_reply r2;
            if (wire_doc_parse(&d2, w.data, w.len, NULL, &err) != AICFN_OK) abort();
            if (wire_decode_invoke_reply(&d2, &r2, &err) != AICFN_OK) abort();
            if (r2.head.ok != rep.head.ok || r2.head.id != rep.head.id || r2.n_outputs != rep.n_outputs)
                abort();
            if (!r2.head.ok && r2.head.code != rep.head.code) abort();
            wire_doc_fini(&d2);
        }
        wire_writer_fini(&w);
    }
    wire_status_reply st;
    if (wire_decode_status_reply(&doc, &st, &err) == AICFN_OK && st.head.ok) {
        sink += strlen(st.w.worker) + strlen(st.w.device);
        for (uint32_t i = 0; i < st.w.n_queues; i++)
            sink += strlen(st.w.queues[i].fn);
        wire_writer w;
        wire_writer_init(&w);
        if (wire_encode_status_reply(&w, st.head.id, &st.w, &st.load, &err) == AICFN_OK) {
            wire_doc d2;
            wire_status_reply s2;
            if (wire_doc_parse(&d2, w.data, w.len, NULL, &err) != AICFN_OK) abort();
            if (wire_decode_status_reply(&d2, &s2, &err) != AICFN_OK) abort();
            if (s2.w.n_queues != st.w.n_queues || s2.w.summary.n_models != st.w.summary.n_models) abort();
            if (s2.load.coldstart.n_evicted != st.load.coldstart.n_evicted) abort();
            wire_doc_fini(&d2);
        }
        wire_writer_fini(&w);
    }
    wire_doc_fini(&doc);
    return 0;
}
