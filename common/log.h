/* log.h: leveled logging to stderr, one line per call, safe from any thread.
 *
 * The level comes from AICFN_LOG (error, warn, info, debug; default info). Each line
 * carries a wall-clock timestamp, the process role set by log_set_role ("gateway",
 * "worker w1") and the level. Not for: records (those go to SQLite). */
#ifndef AICFN_COMMON_LOG_H
#define AICFN_COMMON_LOG_H

typedef enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 } log_level;

/* Sets the role shown on every line (copied; up to 47 bytes). Call once at start. */
void log_set_role(const char *role);

/* Overrides the level read from AICFN_LOG. */
void log_set_level(log_level level);

/* True when lines of `level` are printed (to skip building costly messages). */
int log_enabled(log_level level);

void log_write(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)

#endif
