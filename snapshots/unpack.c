/* unpack.c: a snapshot back to safetensors (unpack.h): the verified pieces of every
 * tensor, in blob order, go straight to the safetensors writer's sink. Tensors are
 * stored in blob order and a safetensors data section has no gaps, so the pieces are the
 * data section as it is written.
 * Not for: checking frames (reader.c) or building the header (safetensors.c). */
#include "snapshots/unpack.h"

#include <stdlib.h>

#include "snapshots/safetensors.h"

typedef struct unpack_out {
    snap_st_sink *sink;
    aicfn_error *err;
} unpack_out;

static int unpack_piece(void *arg, uint32_t tensor, uint64_t blob_off, const unsigned char *p, size_t len) {
    (void)tensor;
    (void)blob_off;
    unpack_out *o = arg;
    return snap_st_sink_write(o->sink, p, len, o->err);
}

static int unpack_fill(void *arg, snap_st_sink *sink, aicfn_error *err) {
    unpack_out o = {sink, err};
    return snap_verify_each(arg, unpack_piece, &o, err);
}

int snap_unpack(const snap_reader *r, const char *path, aicfn_error *err) {
    const snap_manifest *m = snap_reader_manifest(r);
    snap_st_out_tensor *ts = calloc(m->n_tensors ? m->n_tensors : 1, sizeof *ts);
    if (!ts) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory for %u tensors", m->n_tensors);
    for (uint32_t t = 0; t < m->n_tensors; t++) {
        const snap_tensor *x = &m->tensors[t];
        ts[t] = (snap_st_out_tensor){x->name, x->dtype, x->ndim, x->shape, NULL, x->nbytes};
    }
    int rc = snap_st_write_streamed(path, ts, m->n_tensors, unpack_fill, (void *)r, err);
    free(ts);
    return rc;
}
