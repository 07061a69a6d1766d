#include "util/arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util/alloc.h"

struct mdm_arena_chunk {
    mdm_arena_chunk_t *next;
    size_t size;
    size_t used;
    _Alignas(max_align_t) unsigned char data[];
};

void mdm_arena_init(mdm_arena_t *a, size_t chunk_size)
{
    a->head = NULL;
    a->chunk_size = chunk_size ? chunk_size : 4096;
}

void *mdm_arena_alloc(mdm_arena_t *a, size_t n)
{
    const size_t align = _Alignof(max_align_t);
    n = (n + align - 1) & ~(align - 1);
    if (n == 0)
        n = align;
    mdm_arena_chunk_t *c = a->head;
    if (c == NULL || c->size - c->used < n) {
        size_t size = n > a->chunk_size ? n : a->chunk_size;
        mdm_arena_chunk_t *nc = mdm_malloc(sizeof(*nc) + size);
        nc->size = size;
        nc->used = 0;
        if (c != NULL && n > a->chunk_size) {
            /* A large block goes behind the current chunk so that the space
             * left in the current one stays usable. */
            nc->next = c->next;
            c->next = nc;
            nc->used = n;
            return nc->data;
        }
        nc->next = c;
        a->head = nc;
        c = nc;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

void *mdm_arena_memdup(mdm_arena_t *a, const void *p, size_t n)
{
    void *q = mdm_arena_alloc(a, n + 1);
    if (n)
        memcpy(q, p, n);
    ((char *)q)[n] = '\0';
    return q;
}

char *mdm_arena_strndup(mdm_arena_t *a, const char *s, size_t n)
{
    return mdm_arena_memdup(a, s, strnlen(s, n));
}

char *mdm_arena_strdup(mdm_arena_t *a, const char *s)
{
    return mdm_arena_memdup(a, s, strlen(s));
}

char *mdm_arena_sprintf(mdm_arena_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    char *s = mdm_arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void mdm_arena_reset(mdm_arena_t *a)
{
    mdm_arena_chunk_t *c = a->head;
    if (c == NULL)
        return;
    /* Keep the last chunk in the list (the first allocated, normal size). */
    mdm_arena_chunk_t *keep = NULL;
    while (c != NULL) {
        mdm_arena_chunk_t *next = c->next;
        if (next == NULL && c->size == a->chunk_size) {
            keep = c;
        } else {
            mdm_free(c);
        }
        c = next;
    }
    if (keep != NULL) {
        keep->used = 0;
        keep->next = NULL;
    }
    a->head = keep;
}

void mdm_arena_free(mdm_arena_t *a)
{
    mdm_arena_chunk_t *c = a->head;
    while (c != NULL) {
        mdm_arena_chunk_t *next = c->next;
        mdm_free(c);
        c = next;
    }
    a->head = NULL;
}
