/* units.h: parsing and printing of sizes ("512MiB", "2GiB", "4096") and durations
 * ("250ms", "30s", "5m", "1h"), as flags and manifests spell them, and of plain decimal
 * numbers where printf is not wanted. Pure functions. */
#ifndef AICFN_COMMON_UNITS_H
#define AICFN_COMMON_UNITS_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* Parses a byte size: digits with an optional suffix B, K/KB/KiB, M/MB/MiB, G/GB/GiB,
 * T/TB/TiB (K, M, G, T and the *iB forms are powers of 1024; KB, MB, GB, TB powers of
 * 1000). Returns AICFN_OK or AICFN_E_INVALID (overflow, junk, empty). */
int units_parse_size(const char *s, uint64_t *out, aicfn_error *err);

/* Parses a duration into microseconds: digits with us, ms, s, m or h (a bare number is
 * seconds). Returns AICFN_OK or AICFN_E_INVALID. */
int units_parse_duration_us(const char *s, uint64_t *out_us, aicfn_error *err);

/* Formats a size for people ("1.50 GiB") into buf; returns buf. */
char *units_format_size(uint64_t bytes, char *buf, unsigned len);

/* Writes the decimal digits of v at p (at most UNITS_U64_DIGITS, no NUL) and returns how
 * many. Async-signal-safe (no locale, no allocation), and far cheaper than printf on hot
 * paths. */
#define UNITS_U64_DIGITS 20
size_t units_put_u64(char *p, uint64_t v);

#endif
