/* fuzz_snapshot.c: libFuzzer harness for the snapshot reader (snapshots/snapshot.h):
 * the input is written to a memfd, opened with snap_open, and every frame is decoded,
 * unfiltered and checked (snap_verify, then snap_read_all when the blob is small).
 * The manifest's XXH3 is recomputed before writing (when the input has a manifest frame
 * header) so that mutations reach the msgpack decoder instead of stopping at the hash.
 * Must never crash, leak, hang, or read or write out of bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "snapshots/format.h"

#include "snapshots/snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz_snapshot", MFD_CLOEXEC);
    if (fd < 0) abort();
    uint8_t *copy = malloc(size + 1);
    if (!copy) abort();
    memcpy(copy, data, size);
    if (size >= 8 + SNAP_MANIFEST_PREFIX && snap_get_le32(copy) == SNAP_MANIFEST_MAGIC) {
        uint64_t fs = snap_get_le32(copy + 4);
        if (fs >= SNAP_MANIFEST_PREFIX && 8 + fs <= size)
            snap_put_le64(copy + 16, XXH3_64bits(copy + 8 + SNAP_MANIFEST_PREFIX, fs - SNAP_MANIFEST_PREFIX));
    }
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, copy + off, size - off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    snap_reader *r;
    aicfn_error err;
    if (snap_open(path, &r, &err) == AICFN_OK) {
        const snap_manifest *m = snap_reader_manifest(r);
        uint64_t end = 0;
        for (uint32_t i = 0; i < snap_reader_frame_count(r); i++) {
            const snap_frame *f = snap_reader_frame(r, i);
            if (f->raw_offset != end || f->raw_size > m->chunk_bytes) abort();
            end += f->raw_size;
        }
        if (end != m->blob_bytes) abort();
        (void)snap_verify(r, &err);
        if (m->blob_bytes <= (16u << 20)) {
            void *blob = malloc(m->blob_bytes + 1);
            if (!blob) abort();
            (void)snap_read_all(r, blob, &err);
            free(blob);
        }
        snap_close(r);
    }
    close(fd);
    free(copy);
    return 0;
}
