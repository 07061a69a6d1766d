/* Text encodings: base64 (standard alphabet, decoding skips whitespace),
 * lowercase hex, URL percent-decoding, and a UTF-8 check. */
#ifndef MDM_ENCODE_H
#define MDM_ENCODE_H

#include <stdbool.h>
#include <stddef.h>

#include "util/buf.h"

/* Appends the base64 form of p to out. */
void mdm_base64_encode(mdm_buf_t *out, const void *p, size_t n);

/* Appends the bytes of base64 text s to out; whitespace is skipped, padding
 * optional. Returns 0, or MDM_EPARSE on a character outside the alphabet. */
int mdm_base64_decode(mdm_buf_t *out, const char *s, size_t n);

/* Writes 2n hex digits and a NUL into out (which holds 2n+1 bytes). */
void mdm_hex_encode(char *out, const void *p, size_t n);

/* Decodes 2n hex digits into n bytes; returns n or -1. */
int mdm_hex_decode(unsigned char *out, size_t outlen, const char *s, size_t n);

/* Percent-decodes s into out. When plus_is_space is false, '+' stays '+'
 * (the SCEP message= rule). Returns 0 or MDM_EPARSE on a bad escape or on
 * %00 (callers use the result as a C string). */
int mdm_url_decode(mdm_buf_t *out, const char *s, size_t n, int plus_is_space);

/* The length of the UTF-8 character at p[0..n) (1 for ASCII), or 0 when
 * none starts there (the same rules as mdm_utf8_valid). */
size_t mdm_utf8_len(const void *p, size_t n);

/* True when p[0..n) is UTF-8: no stray or missing continuation bytes,
 * overlong forms, surrogates or code points past U+10FFFF. */
bool mdm_utf8_valid(const void *p, size_t n);

#endif
