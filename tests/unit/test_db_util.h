/* test_db_util.h: helpers shared by the SQLite/registry/ledger/artifacts/keys tests:
 * a fresh temporary data directory and its recursive removal. Header-only (static). */
#ifndef AICFN_TEST_DB_UTIL_H
#define AICFN_TEST_DB_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int tdb_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes a directory tree (test data only). */
static inline void tdb_rm_rf(const char *dir) {
    nftw(dir, tdb_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Creates a fresh directory under $TMPDIR (or /tmp); returns a malloc'd path. */
static inline char *tdb_mkdtemp(const char *tag) {
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/aicfn-%s-XXXXXX", base && base[0] ? base : "/tmp", tag);
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

/* Reads a whole file into a malloc'd buffer (NULL when missing); *len gets its size. */
static inline unsigned char *tdb_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    *len = 0;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) *len = (size_t)(n > 0 ? n : 0);
    return buf;
}

#endif
