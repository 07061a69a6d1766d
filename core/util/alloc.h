/* Allocation gateway: every C allocation of the core goes through here.
 * Out of memory is not recoverable for a server that must not lose state
 * half-way through a request, so these abort with a clear message. */
#ifndef MDM_ALLOC_H
#define MDM_ALLOC_H

#include <stddef.h>

void *mdm_malloc(size_t n);
void *mdm_calloc(size_t count, size_t size);
void *mdm_realloc(void *p, size_t n);
char *mdm_strdup(const char *s);
char *mdm_strndup(const char *s, size_t n);
void *mdm_memdup(const void *p, size_t n);
void mdm_free(void *p);

/* Formats into a newly allocated string (never NULL). */
char *mdm_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
