/* error.h: aicfn's error values and the error record carried across layers.
 *
 * Every fallible internal function returns an aicfn_status (0 = AICFN_OK) and, when
 * given one, fills an aicfn_error with a message that names what failed. Foreign
 * errors (errno, zstd, NNG, SQLite, CUDA) are mapped at the boundary with
 * aicfn_error_set, keeping their original text inside the message.
 * Not for: logging (see log.h). */
#ifndef AICFN_COMMON_ERROR_H
#define AICFN_COMMON_ERROR_H

#include <stdarg.h>
#include <stddef.h>

#include "aicfn.h"

#define AICFN_ERRMSG_MAX 512

/* An error code with its message. Plain data: copy it freely; one per thread or call. */
typedef struct aicfn_error {
    int code;                     /* an aicfn_status */
    char msg[AICFN_ERRMSG_MAX];   /* NUL-terminated, truncated if longer */
} aicfn_error;

/* Human-readable text for a status ("model larger than the memory budget"...).
 * Never NULL; unknown codes give "unknown error". Thread-safe. */
const char *aicfn_strerror(int code);

/* Stable symbolic name ("AICFN_E_TOO_LARGE"), used on the wire and in JSON. Never NULL. */
const char *aicfn_status_name(int code);

/* Parses a symbolic name back into a code; returns -1 when unknown. */
int aicfn_status_from_name(const char *name);

/* The one HTTP status of each code (400, 404, 507...). */
int aicfn_http_status(int code);

/* Fills `err` (which may be NULL) with `code` and a printf-style message, and returns
 * `code`, so a failure path reads `return aicfn_error_set(err, AICFN_E_IO, "...")`. */
int aicfn_error_set(aicfn_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int aicfn_error_vset(aicfn_error *err, int code, const char *fmt, va_list ap);

/* Like aicfn_error_set, appending ": <strerror(errnum)>" to the message. */
int aicfn_error_errno(aicfn_error *err, int code, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prefixes the message already in `err` with more context ("loading mlp: <old>").
 * Keeps the code, returns it. */
int aicfn_error_wrap(aicfn_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Resets `err` to AICFN_OK with an empty message. NULL is accepted. */
void aicfn_error_clear(aicfn_error *err);

#endif
