/* owndir.c: the check of a directory's owner and mode (owndir.h). */
#include "common/owndir.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

int owndir_check(const char *path, const char *what, aicfn_error *err) {
    struct stat st;
    if (lstat(path, &st) != 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "checking %s %s", what, path);
    if (S_ISDIR(st.st_mode) && st.st_uid == geteuid() && (st.st_mode & 022) == 0) return AICFN_OK;
    return aicfn_error_set(err, AICFN_E_INVALID,
                           "%s %s must be a directory of this user that nobody else may write (it is %s, "
                           "owner %ld, mode %03o): remove it and it is made again",
                           what, path,
                           S_ISLNK(st.st_mode)   ? "a symlink"
                           : S_ISDIR(st.st_mode) ? "a directory"
                                                 : "no directory",
                           (long)st.st_uid, (unsigned)(st.st_mode & 0777));
}
