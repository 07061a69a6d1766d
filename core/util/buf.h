/* A growable byte buffer. The bytes are always followed by a NUL so that a
 * buffer holding text can be used as a C string. */
#ifndef MDM_BUF_H
#define MDM_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct mdm_buf {
    char *data;
    size_t len;
    size_t cap;
} mdm_buf_t;

#define MDM_BUF_INIT {NULL, 0, 0}

void mdm_buf_reserve(mdm_buf_t *b, size_t extra);
void mdm_buf_append(mdm_buf_t *b, const void *p, size_t n);
void mdm_buf_puts(mdm_buf_t *b, const char *s);
void mdm_buf_putc(mdm_buf_t *b, char c);
void mdm_buf_printf(mdm_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mdm_buf_vprintf(mdm_buf_t *b, const char *fmt, va_list ap);
/* Drops the first n bytes. */
void mdm_buf_consume(mdm_buf_t *b, size_t n);
void mdm_buf_reset(mdm_buf_t *b);
void mdm_buf_free(mdm_buf_t *b);
/* Hands the bytes to the caller (who frees them with mdm_free). */
char *mdm_buf_steal(mdm_buf_t *b, size_t *len);

#endif
