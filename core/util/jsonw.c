#include "util/jsonw.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util/encode.h"

void mdm_jsonw_str(mdm_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    mdm_buf_reserve(b, n + 2);
    mdm_buf_putc(b, '"');
    size_t run = 0; /* start of the bytes copied as they are */
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        size_t len = c >= 0x80 ? mdm_utf8_len(u + i, n - i) : 0;
        if (len > 0) {
            i += len;
            continue;
        }
        mdm_buf_append(b, s + run, i - run);
        char esc[8];
        size_t elen = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
            } else {
                memcpy(esc, "\\ufffd", 6);
            }
            elen = 6;
        }
        mdm_buf_append(b, esc, elen);
        i++;
        run = i;
    }
    mdm_buf_append(b, s + run, n - run);
    mdm_buf_putc(b, '"');
}

void mdm_jsonw_key(mdm_buf_t *b, bool *first, const char *key)
{
    if (!*first)
        mdm_buf_putc(b, ',');
    *first = false;
    mdm_jsonw_str(b, key, strlen(key));
    mdm_buf_putc(b, ':');
}

void mdm_jsonw_member_str(mdm_buf_t *b, bool *first, const char *key, const char *v)
{
    if (v == NULL)
        return;
    mdm_jsonw_key(b, first, key);
    mdm_jsonw_str(b, v, strlen(v));
}

void mdm_jsonw_member_int(mdm_buf_t *b, bool *first, const char *key, int64_t v)
{
    mdm_jsonw_key(b, first, key);
    char num[24];
    int n = snprintf(num, sizeof(num), "%" PRId64, v);
    mdm_buf_append(b, num, (size_t)n);
}

void mdm_jsonw_real(mdm_buf_t *b, double d)
{
    if (!isfinite(d)) {
        mdm_buf_puts(b, "null");
        return;
    }
    char num[32];
    int n = snprintf(num, sizeof(num), "%.17g", d);
    /* Keep it a real for readers that tell 1 from 1.0. */
    if (strspn(num, "-0123456789") == (size_t)n && n + 2 < (int)sizeof(num)) {
        memcpy(num + n, ".0", 3);
        n += 2;
    }
    mdm_buf_append(b, num, (size_t)n);
}
