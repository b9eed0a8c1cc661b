/* test_page_cache.h: helpers for the tests that check files are written so the page
 * cache holds them in 2 MiB folios (docs/snapshot-format.md §9): how much of a file a
 * read-only mapping maps with 2 MiB (PMD) entries, and whether this kernel and
 * filesystem size folios by write at all. Header-only (static); needs cmocka. */
#ifndef AICFN_TEST_PAGE_CACHE_H
#define AICFN_TEST_PAGE_CACHE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/tunables.h"

/* FilePmdMapped (kB) of the mapping that starts at `addr`, from /proc/self/smaps; -1
 * when not found. */
static long tpc_smaps_pmd_kb(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0;
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            if (in) break;
            in = lo == (unsigned long)addr;
        } else if (in && sscanf(line, "FilePmdMapped: %ld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb;
}

/* Maps `path` read-only as the loader does, touches every page, and returns how many kB
 * the kernel mapped with 2 MiB (PMD) entries. */
static long tpc_file_pmd_kb(const char *path) {
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    unsigned char *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(m != MAP_FAILED);
    volatile unsigned char sink = 0;
    for (off_t o = 0; o < st.st_size; o += 4096)
        sink ^= m[o];
    (void)sink;
    long kb = tpc_smaps_pmd_kb(m);
    munmap(m, (size_t)st.st_size);
    close(fd);
    return kb;
}

/* Writes `total` bytes of noise to `path` in writes of `piece` bytes. */
static void tpc_write_in_pieces(const char *path, size_t total, size_t piece) {
    unsigned char *b = malloc(piece);
    assert_non_null(b);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)piece;
    for (size_t done = 0; done < total; done += piece) {
        for (size_t i = 0; i < piece; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b[i] = (unsigned char)(x >> 24);
        }
        assert_int_equal(write(fd, b, piece), (ssize_t)piece);
    }
    close(fd);
    free(b);
}

/* Whether the page cache of `dir`'s filesystem sizes folios by the write that creates
 * them (Linux 6.16+ ext4, xfs): an 8 MiB file written there in 2 MiB writes must be
 * PMD-mapped whole, and one written in 64 KiB writes not at all. When not, prints why
 * and returns 0 (the caller skips). */
static int tpc_folios_follow_writes(const char *dir) {
    char blocks[1024], small[1024];
    snprintf(blocks, sizeof blocks, "%s/tpc-blocks.bin", dir);
    snprintf(small, sizeof small, "%s/tpc-small.bin", dir);
    tpc_write_in_pieces(blocks, 8u << 20, AICFN_PAGE_CACHE_BLOCK);
    tpc_write_in_pieces(small, 8u << 20, 64u << 10);
    long kb_blocks = tpc_file_pmd_kb(blocks), kb_small = tpc_file_pmd_kb(small);
    unlink(blocks);
    unlink(small);
    if (kb_blocks == 8192 && kb_small == 0) return 1;
    print_message("skipped: this kernel/filesystem does not size page-cache folios by write (a file "
                  "written in 2 MiB writes: %ld kB PMD-mapped of 8192; in 64 KiB writes: %ld kB)\n",
                  kb_blocks, kb_small);
    return 0;
}

#endif
