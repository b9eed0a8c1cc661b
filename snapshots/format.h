/* format.h: the byte-level constants of the snapshot file, shared by writer.c and
 * reader.c (docs/snapshot-format.md describes the layout they make).
 * Not for: anything with behaviour; see writer.h and snapshot.h. */
#ifndef AICFN_SNAPSHOTS_FORMAT_H
#define AICFN_SNAPSHOTS_FORMAT_H

#include <stdint.h>

/* The manifest's skippable frame: magic, 4-byte LE content size, then the 8-byte tag, the
 * XXH3-64 of the msgpack bytes (8 bytes LE), and the msgpack manifest. */
#define SNAP_MANIFEST_MAGIC 0x184D2A50u
#define SNAP_MANIFEST_TAG "AICFNSNP"
#define SNAP_MANIFEST_TAG_LEN 8
#define SNAP_MANIFEST_PREFIX 16 /* tag + hash, before the msgpack */

/* The seek table (zstd seekable format, contrib/seekable_format). */
#define SNAP_SEEKTABLE_MAGIC 0x184D2A5Eu
#define SNAP_SEEKABLE_MAGIC 0x8F92EAB1u
#define SNAP_SEEKTABLE_FOOTER 9
#define SNAP_SEEK_CHECKSUM_FLAG 0x80u
#define SNAP_SEEK_RESERVED_BITS 0x7Cu

/* The most compressed bytes a data frame of `raw` bytes may take. The writer's zstd
 * frames (one per run of at least 16 KiB) each stay within ZSTD_compressBound, which adds
 * raw/256 plus at most 64 bytes a frame; this bound leaves room to spare, and a reader
 * refuses a seek table past it before sizing any buffer from it. */
#define SNAP_FRAME_COMP_BOUND(raw) ((uint64_t)(raw) + (uint64_t)(raw) / 64 + 4096)
/* The fewest compressed bytes that can restore `raw` bytes: a zstd frame's header takes at
 * least 6 (magic, descriptor, window or size), and each block restores at most 128 KiB for
 * at least 4 (a 3-byte header and one RLE byte). A seek table claiming less is hostile: it
 * would have a loader reserve the blob before any frame showed it false. */
#define SNAP_FRAME_COMP_FLOOR(raw) (6 + 4 * (((uint64_t)(raw) + (128u << 10) - 1) / (128u << 10)))

/* A valid tensor entry needs at least this many msgpack bytes (seven required keys and
 * their shortest values), which bounds the tensor count by the manifest's size. */
#define SNAP_MIN_TENSOR_ENTRY_BYTES 51

static inline void snap_put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void snap_put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t snap_get_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline uint32_t snap_get_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#endif
