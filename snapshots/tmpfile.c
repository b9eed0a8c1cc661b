/* tmpfile.c: a file written under a temporary name and renamed into place (tmpfile.h).
 * Not for: what is written. */
#include "snapshots/tmpfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/durable.h"

/* The process's umask, read without changing it (umask(2) would, for every thread);
 * 022 when /proc does not say. */
static mode_t tmp_umask(void) {
    FILE *f = fopen("/proc/self/status", "r");
    unsigned um = 022;
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Umask: %o", &um) == 1) break;
    if (f) fclose(f);
    return (mode_t)(um & 0777);
}

int snap_tmp_create(const char *dest, char **tmp_path, int *fd, aicfn_error *err) {
    *tmp_path = NULL;
    *fd = -1;
    size_t n = strlen(dest) + 16;
    char *tmpl = malloc(n);
    if (!tmpl) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    snprintf(tmpl, n, "%s.tmpXXXXXX", dest);
    int f = mkstemp(tmpl);
    if (f < 0) {
        int e = errno;
        free(tmpl);
        return aicfn_error_errno(err, AICFN_E_IO, e, "creating a temporary file for %s", dest);
    }
    (void)fchmod(f, 0666 & ~tmp_umask()); /* mkstemp made it 0600: as any file the user creates */
    *tmp_path = tmpl;
    *fd = f;
    return AICFN_OK;
}

int snap_tmp_commit(int fd, const char *tmp_path, const char *dest, aicfn_error *err) {
    int rc = AICFN_OK;
    if (fsync(fd) != 0) rc = aicfn_error_errno(err, AICFN_E_IO, errno, "writing %s to disk", tmp_path);
    if (close(fd) != 0 && rc == AICFN_OK)
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "closing %s", tmp_path);
    if (rc == AICFN_OK && rename(tmp_path, dest) != 0)
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "renaming %s to %s", tmp_path, dest);
    if (rc != AICFN_OK) {
        unlink(tmp_path);
        return rc;
    }
    /* The rename is durable once the directory is on disk. A failure leaves nothing at
     * dest (as any failure here): the caller is told the write failed, and a file that
     * might not survive a crash must not pass for one that will. */
    char *copy = strdup(dest);
    rc = copy ? durable_sync_dir(dirname(copy), err) : aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    free(copy);
    if (rc != AICFN_OK) unlink(dest);
    return rc;
}

void snap_tmp_discard(int fd, const char *tmp_path) {
    if (fd >= 0) close(fd);
    if (tmp_path) unlink(tmp_path);
}
