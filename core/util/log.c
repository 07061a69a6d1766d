#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static int log_level = MDM_LOG_INFO;
static int log_fd = 2;

static const char *level_names[] = {"debug", "info", "warn", "error"};

void mdm_log_setup(int level, int fd)
{
    log_level = level;
    log_fd = fd;
}

int mdm_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    if (strcasecmp(name, "warning") == 0)
        return MDM_LOG_WARN;
    return -1;
}

bool mdm_log_enabled(int level)
{
    return level >= log_level;
}

void mdm_log(int level, const char *reqid, const char *event, const char *fmt, ...)
{
    if (level < log_level)
        return;
    if (level < 0 || level > MDM_LOG_ERROR)
        level = MDM_LOG_ERROR;

    char line[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], event);
    if (reqid != NULL && n > 0 && (size_t)n < sizeof(line))
        n += snprintf(line + n, sizeof(line) - (size_t)n, " req=%s", reqid);
    if (fmt != NULL && fmt[0] && n > 0 && (size_t)n < sizeof(line) - 1) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line) - 1) {
        n = (int)sizeof(line) - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    }
    line[n++] = '\n';
    const char *p = line;
    size_t left = (size_t)n;
    while (left > 0) {
        ssize_t w = write(log_fd, p, left);
        if (w <= 0)
            break;
        p += w;
        left -= (size_t)w;
    }
}

const char *mdm_logqn(char *buf, size_t n, const char *s, size_t len)
{
    if (n == 0)
        return "";
    if (s == NULL) {
        snprintf(buf, n, "-");
        return buf;
    }
    bool plain = len > 0;
    for (size_t i = 0; i < len && plain; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '"' || c == '\\' || c == '=' || c >= 0x7f)
            plain = false;
    }
    size_t o = 0;
    if (plain) {
        for (size_t i = 0; i < len && o + 1 < n; i++)
            buf[o++] = s[i];
        buf[o] = '\0';
        return buf;
    }
    if (o + 1 < n)
        buf[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t el;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            el = 2;
        } else if (c < 0x20 || c == 0x7f) {
            el = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", c);
        } else {
            esc[0] = (char)c;
            el = 1;
        }
        if (o + el + 2 > n)
            break;
        memcpy(buf + o, esc, el);
        o += el;
    }
    if (o + 1 < n)
        buf[o++] = '"';
    buf[o < n ? o : n - 1] = '\0';
    return buf;
}

const char *mdm_logq(char *buf, size_t n, const char *s)
{
    return mdm_logqn(buf, n, s, s ? strlen(s) : 0);
}
