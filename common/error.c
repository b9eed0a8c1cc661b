/* error.c: the table of status codes (text, symbolic name, HTTP status) and the
 * helpers that fill an aicfn_error. */
#include "common/error.h"

#include <stdio.h>
#include <string.h>

typedef struct err_entry {
    const char *name;
    const char *text;
    int http;
} err_entry;

static const err_entry err_table[AICFN_STATUS_COUNT] = {
    [AICFN_OK] = {"AICFN_OK", "success", 200},
    [AICFN_E_INVALID] = {"AICFN_E_INVALID", "invalid argument or input", 400},
    [AICFN_E_NOMEM] = {"AICFN_E_NOMEM", "out of host memory", 500},
    [AICFN_E_IO] = {"AICFN_E_IO", "I/O error", 500},
    [AICFN_E_CORRUPT] = {"AICFN_E_CORRUPT", "corrupt data", 500},
    [AICFN_E_UNSUPPORTED] = {"AICFN_E_UNSUPPORTED", "unsupported", 400},
    [AICFN_E_NOT_FOUND] = {"AICFN_E_NOT_FOUND", "not found", 404},
    [AICFN_E_TOO_LARGE] = {"AICFN_E_TOO_LARGE", "too large", 413},
    [AICFN_E_CAPACITY] = {"AICFN_E_CAPACITY", "no device memory free before the deadline", 507},
    [AICFN_E_TIMEOUT] = {"AICFN_E_TIMEOUT", "deadline exceeded", 504},
    [AICFN_E_UNAVAILABLE] = {"AICFN_E_UNAVAILABLE", "unavailable", 503},
    [AICFN_E_OVERLOADED] = {"AICFN_E_OVERLOADED", "overloaded: queue full", 429},
    [AICFN_E_WORKER_LOST] = {"AICFN_E_WORKER_LOST", "worker lost with the call in flight", 502},
    [AICFN_E_UNAUTHENTICATED] = {"AICFN_E_UNAUTHENTICATED", "missing or invalid API key", 401},
    [AICFN_E_FORBIDDEN] = {"AICFN_E_FORBIDDEN", "forbidden", 403},
    [AICFN_E_QUOTA] = {"AICFN_E_QUOTA", "rate or quota exceeded", 429},
    [AICFN_E_HANDLER] = {"AICFN_E_HANDLER", "handler error", 500},
    [AICFN_E_ABI] = {"AICFN_E_ABI", "handler ABI mismatch", 500},
    [AICFN_E_DEVICE] = {"AICFN_E_DEVICE", "device error", 500},
    [AICFN_E_PROTOCOL] = {"AICFN_E_PROTOCOL", "malformed message", 400},
    [AICFN_E_EXISTS] = {"AICFN_E_EXISTS", "already exists", 409},
    [AICFN_E_DB] = {"AICFN_E_DB", "database error", 500},
    [AICFN_E_INTERNAL] = {"AICFN_E_INTERNAL", "internal error", 500},
    [AICFN_E_CANCELED] = {"AICFN_E_CANCELED", "canceled (shutdown, or its caller went away)", 503},
};

static const err_entry *err_lookup(int code) {
    if (code < 0 || code >= AICFN_STATUS_COUNT || err_table[code].name == NULL) return NULL;
    return &err_table[code];
}

const char *aicfn_strerror(int code) {
    const err_entry *e = err_lookup(code);
    return e ? e->text : "unknown error";
}

const char *aicfn_status_name(int code) {
    const err_entry *e = err_lookup(code);
    return e ? e->name : "AICFN_E_UNKNOWN";
}

int aicfn_status_from_name(const char *name) {
    if (name == NULL) return -1;
    for (int i = 0; i < AICFN_STATUS_COUNT; i++)
        if (err_table[i].name && strcmp(err_table[i].name, name) == 0) return i;
    return -1;
}

int aicfn_http_status(int code) {
    const err_entry *e = err_lookup(code);
    return e ? e->http : 500;
}

int aicfn_error_vset(aicfn_error *err, int code, const char *fmt, va_list ap) {
    if (err == NULL) return code;
    err->code = code;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    return code;
}

int aicfn_error_set(aicfn_error *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    aicfn_error_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int aicfn_error_errno(aicfn_error *err, int code, int errnum, const char *fmt, ...) {
    if (err == NULL) return code;
    va_list ap;
    va_start(ap, fmt);
    aicfn_error_vset(err, code, fmt, ap);
    va_end(ap);
    size_t n = strlen(err->msg);
    if (n < sizeof err->msg - 1) {
        char buf[128];
        const char *s = strerror_r(errnum, buf, sizeof buf); /* GNU strerror_r */
        snprintf(err->msg + n, sizeof err->msg - n, ": %s", s);
    }
    return code;
}

int aicfn_error_wrap(aicfn_error *err, const char *fmt, ...) {
    if (err == NULL) return AICFN_E_INTERNAL;
    char old[AICFN_ERRMSG_MAX];
    memcpy(old, err->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof err->msg - 1)
        snprintf(err->msg + n, sizeof err->msg - (size_t)n, ": %s", old);
    return err->code;
}

void aicfn_error_clear(aicfn_error *err) {
    if (err == NULL) return;
    err->code = AICFN_OK;
    err->msg[0] = '\0';
}
