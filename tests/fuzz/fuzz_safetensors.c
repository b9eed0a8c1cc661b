/* fuzz_safetensors.c: libFuzzer harness for the safetensors header parser
 * (snapshots/safetensors.h): the whole input as a file held in memory (length prefix,
 * JSON header, data region), and the input as a bare JSON header. Must never crash, leak,
 * read out of bounds, or accept a tensor outside its data region. */
#include <stdint.h>
#include <stdlib.h>

#include "snapshots/safetensors.h"

static void check(const snap_st_header *h, uint64_t data_end) {
    for (uint32_t i = 0; i < h->n_tensors; i++) {
        const snap_st_tensor *t = &h->tensors[i];
        if (t->file_offset + t->nbytes > data_end || !t->name || !t->name[0]) abort();
        if (i && t->nbytes && h->tensors[i - 1].nbytes &&
            t->data_offset < h->tensors[i - 1].data_offset + h->tensors[i - 1].nbytes)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    snap_st_header h;
    aicfn_error err;
    if (snap_st_parse_buffer(data, size, "fuzz", &h, &err) == AICFN_OK) {
        check(&h, size);
        snap_st_header_free(&h);
    }
    const uint64_t data_bytes = 1u << 20;
    if (snap_st_parse_header((const char *)data, size, data_bytes, "fuzz", &h, &err) == AICFN_OK) {
        for (uint32_t i = 0; i < h.n_tensors; i++)
            h.tensors[i].file_offset = h.tensors[i].data_offset;
        check(&h, data_bytes);
        snap_st_header_free(&h);
    }
    return 0;
}
