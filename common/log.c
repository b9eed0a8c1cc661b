/* log.c: the stderr logger behind log.h. Each line is formatted into one buffer and
 * written with a single write(2), so lines from threads and processes never interleave. */
#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static char log_role[48] = "aicfn";
static atomic_int log_level_now = -1;

static int log_level_from_env(void) {
    const char *s = getenv("AICFN_LOG");
    if (s == NULL || *s == '\0') return LOG_INFO;
    if (strcasecmp(s, "error") == 0) return LOG_ERROR;
    if (strcasecmp(s, "warn") == 0) return LOG_WARN;
    if (strcasecmp(s, "debug") == 0) return LOG_DEBUG;
    return LOG_INFO;
}

void log_set_role(const char *role) {
    snprintf(log_role, sizeof log_role, "%s", role ? role : "aicfn");
}

void log_set_level(log_level level) { atomic_store(&log_level_now, (int)level); }

int log_enabled(log_level level) {
    int now = atomic_load(&log_level_now);
    if (now < 0) {
        now = log_level_from_env();
        atomic_store(&log_level_now, now);
    }
    return (int)level <= now;
}

void log_write(log_level level, const char *fmt, ...) {
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if (!log_enabled(level)) return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %s %s[%d] ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, names[level], log_role, (int)getpid());
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len >= sizeof line - 1) len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
