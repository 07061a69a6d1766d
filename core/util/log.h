/* Structured logging: one line per event, key=value pairs, to stderr by
 * default. Every request-related line carries req=<request id>. Lines are
 * written with a single write(2), so threads may log too. Never pass
 * secrets (passwords, challenges, tokens, keys) to these functions. */
#ifndef MDM_LOG_H
#define MDM_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum mdm_log_level {
    MDM_LOG_DEBUG = 0,
    MDM_LOG_INFO = 1,
    MDM_LOG_WARN = 2,
    MDM_LOG_ERROR = 3,
};

/* Sets the threshold and the destination descriptor (2 = stderr). */
void mdm_log_setup(int level, int fd);

/* Parses "debug", "info", "warn" or "error"; returns -1 if unknown. */
int mdm_log_level_parse(const char *name);

bool mdm_log_enabled(int level);

/* Logs `ts=... level=... event=<event> [req=<reqid>] <fmt...>`. reqid may be
 * NULL. The caller quotes values that may hold spaces with mdm_logq(). */
void mdm_log(int level, const char *reqid, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Returns s as a log value: unchanged when it is a plain token, otherwise in
 * double quotes with quotes, backslashes and control bytes escaped. Output is
 * written to buf (truncated to n) and buf is returned. NULL gives "-". */
const char *mdm_logq(char *buf, size_t n, const char *s);

/* Same for a byte range that need not be NUL-terminated. */
const char *mdm_logqn(char *buf, size_t n, const char *s, size_t len);

#endif
