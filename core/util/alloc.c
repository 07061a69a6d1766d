#include "util/alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void out_of_memory(size_t n)
{
    fprintf(stderr, "moonmdm: fatal: out of memory allocating %zu bytes\n", n);
    abort();
}

void *mdm_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        out_of_memory(n);
    return p;
}

void *mdm_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p == NULL)
        out_of_memory(count * size);
    return p;
}

void *mdm_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        out_of_memory(n);
    return q;
}

char *mdm_strdup(const char *s)
{
    return mdm_memdup(s, strlen(s) + 1);
}

char *mdm_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = mdm_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void *mdm_memdup(const void *p, size_t n)
{
    void *q = mdm_malloc(n);
    if (n)
        memcpy(q, p, n);
    return q;
}

void mdm_free(void *p)
{
    free(p);
}

char *mdm_sprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        out_of_memory(0);
    char *s = mdm_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}
