/* durable.h: making directory entries survive a power loss. A file renamed into place, or
 * a directory just made, is on disk only once the directory holding its entry has been
 * fsync'd; these are the one place that does so. */
#ifndef AICFN_COMMON_DURABLE_H
#define AICFN_COMMON_DURABLE_H

#include "common/error.h"

/* fsync of the directory `dir`: entries created, renamed or removed in it are durable. */
int durable_sync_dir(const char *dir, aicfn_error *err);

/* Creates the directory `path` (mode 0700) when it is missing, and then syncs its parent:
 * `parent` when given, else the directory part of `path`. An existing directory is left
 * as it is (AICFN_OK); *created (may be NULL) says which happened. */
int durable_mkdir(const char *path, const char *parent, int *created, aicfn_error *err);

#endif
