/* durable.c: directory fsyncs for crash consistency (see durable.h). */
#include "common/durable.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int durable_sync_dir(const char *dir, aicfn_error *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "opening directory %s", dir);
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) return aicfn_error_errno(err, AICFN_E_IO, e, "fsync of directory %s", dir);
    return AICFN_OK;
}

int durable_mkdir(const char *path, const char *parent, int *created, aicfn_error *err) {
    if (created) *created = 0;
    if (mkdir(path, 0700) != 0) {
        if (errno == EEXIST) return AICFN_OK;
        return aicfn_error_errno(err, AICFN_E_IO, errno, "creating %s", path);
    }
    if (created) *created = 1;
    if (parent) return durable_sync_dir(parent, err);
    char copy[PATH_MAX];
    if (snprintf(copy, sizeof copy, "%s", path) >= (int)sizeof copy)
        return aicfn_error_set(err, AICFN_E_INVALID, "path too long: %s", path);
    return durable_sync_dir(dirname(copy), err);
}
