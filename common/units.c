/* units.c: size and duration parsing for flags and manifests, and their printing. */
#include "common/units.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct unit_suffix {
    const char *suffix;
    uint64_t mult;
} unit_suffix;

static int units_parse(const char *s, const unit_suffix *table, size_t n, uint64_t bare, uint64_t *out,
                       const char *what, aicfn_error *err) {
    if (s == NULL || !isdigit((unsigned char)*s))
        return aicfn_error_set(err, AICFN_E_INVALID, "invalid %s '%s': expected a number", what, s ? s : "");
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0) return aicfn_error_set(err, AICFN_E_INVALID, "invalid %s '%s': out of range", what, s);
    uint64_t mult = bare;
    if (*end != '\0') {
        size_t i;
        for (i = 0; i < n; i++)
            if (strcasecmp(end, table[i].suffix) == 0) break;
        if (i == n)
            return aicfn_error_set(err, AICFN_E_INVALID, "invalid %s '%s': unknown unit '%s'", what, s, end);
        mult = table[i].mult;
    }
    if (mult != 0 && v > UINT64_MAX / mult)
        return aicfn_error_set(err, AICFN_E_INVALID, "invalid %s '%s': out of range", what, s);
    *out = (uint64_t)v * mult;
    return AICFN_OK;
}

int units_parse_size(const char *s, uint64_t *out, aicfn_error *err) {
    /* One row per power of the unit. */
    /* clang-format off */
    static const unit_suffix table[] = {
        {"B", 1},
        {"K", 1ull << 10}, {"KiB", 1ull << 10}, {"KB", 1000ull},
        {"M", 1ull << 20}, {"MiB", 1ull << 20}, {"MB", 1000000ull},
        {"G", 1ull << 30}, {"GiB", 1ull << 30}, {"GB", 1000000000ull},
        {"T", 1ull << 40}, {"TiB", 1ull << 40}, {"TB", 1000000000000ull},
    };
    /* clang-format on */
    return units_parse(s, table, sizeof table / sizeof table[0], 1, out, "size", err);
}

int units_parse_duration_us(const char *s, uint64_t *out_us, aicfn_error *err) {
    static const unit_suffix table[] = {
        {"us", 1}, {"ms", 1000ull}, {"s", 1000000ull}, {"m", 60000000ull}, {"h", 3600000000ull},
    };
    return units_parse(s, table, sizeof table / sizeof table[0], 1000000ull, out_us, "duration", err);
}

char *units_format_size(uint64_t bytes, char *buf, unsigned len) {
    static const char *names[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int i = 0;
    while (v >= 1024.0 && i < 4) {
        v /= 1024.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.2f %s", v, names[i]);
    return buf;
}

size_t units_put_u64(char *p, uint64_t v) {
    char tmp[UNITS_U64_DIGITS];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}
