/* A bump allocator for per-request memory: everything allocated from it is
 * released at once by mdm_arena_reset() or mdm_arena_free(). */
#ifndef MDM_ARENA_H
#define MDM_ARENA_H

#include <stddef.h>

typedef struct mdm_arena_chunk mdm_arena_chunk_t;

typedef struct mdm_arena {
    mdm_arena_chunk_t *head;
    size_t chunk_size;
} mdm_arena_t;

void mdm_arena_init(mdm_arena_t *a, size_t chunk_size);
void *mdm_arena_alloc(mdm_arena_t *a, size_t n);
char *mdm_arena_strdup(mdm_arena_t *a, const char *s);
char *mdm_arena_strndup(mdm_arena_t *a, const char *s, size_t n);
void *mdm_arena_memdup(mdm_arena_t *a, const void *p, size_t n);
char *mdm_arena_sprintf(mdm_arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Frees every chunk but the first, which is kept for reuse. */
void mdm_arena_reset(mdm_arena_t *a);
void mdm_arena_free(mdm_arena_t *a);

#endif
