/* owndir.h: checking that a directory is this user's own and that nobody else may write
 * it. Directories whose files the processes execute (handler libraries) or trust (ipc
 * sockets) must be: another local user who could write there could swap a file for one
 * of theirs between its check and its use. */
#ifndef AICFN_COMMON_OWNDIR_H
#define AICFN_COMMON_OWNDIR_H

#include "common/error.h"

/* AICFN_OK when `path` is a directory (not a symlink to one) owned by the effective user,
 * with no group or other write permission; AICFN_E_INVALID naming what it is otherwise
 * (`what` names the directory's role in the message), AICFN_E_IO when it cannot be
 * checked. */
int owndir_check(const char *path, const char *what, aicfn_error *err);

#endif
