/* A small streaming JSON writer for hot paths (the decision log), where
 * building jansson values first would cost an allocation per value. The
 * caller writes the braces; these helpers write strings (escaped, invalid
 * UTF-8 as U+FFFD, so that any JSON reader accepts the text), keys and
 * numbers. */
#ifndef MDM_JSONW_H
#define MDM_JSONW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* "text", escaped. */
void mdm_jsonw_str(mdm_buf_t *b, const char *s, size_t n);

/* ,"key": (no comma before the first member: *first says which). */
void mdm_jsonw_key(mdm_buf_t *b, bool *first, const char *key);

/* A member "key":"value"; nothing when v is NULL. */
void mdm_jsonw_member_str(mdm_buf_t *b, bool *first, const char *key, const char *v);

/* A member "key":integer. */
void mdm_jsonw_member_int(mdm_buf_t *b, bool *first, const char *key, int64_t v);

/* A number (null for NaN and infinities, which JSON cannot hold). */
void mdm_jsonw_real(mdm_buf_t *b, double d);

#endif
