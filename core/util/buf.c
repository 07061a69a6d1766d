#include "util/buf.h"

#include <stdio.h>
#include <string.h>

#include "util/alloc.h"

void mdm_buf_reserve(mdm_buf_t *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = mdm_realloc(b->data, cap);
    b->cap = cap;
}

void mdm_buf_append(mdm_buf_t *b, const void *p, size_t n)
{
    mdm_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void mdm_buf_puts(mdm_buf_t *b, const char *s)
{
    mdm_buf_append(b, s, strlen(s));
}

void mdm_buf_putc(mdm_buf_t *b, char c)
{
    mdm_buf_append(b, &c, 1);
}

void mdm_buf_vprintf(mdm_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    if ((size_t)n < sizeof(tmp)) {
        mdm_buf_append(b, tmp, (size_t)n);
    } else {
        mdm_buf_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

void mdm_buf_printf(mdm_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mdm_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void mdm_buf_consume(mdm_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void mdm_buf_reset(mdm_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void mdm_buf_free(mdm_buf_t *b)
{
    mdm_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *mdm_buf_steal(mdm_buf_t *b, size_t *len)
{
    if (b->data == NULL)
        mdm_buf_reserve(b, 0), b->data[0] = '\0';
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
