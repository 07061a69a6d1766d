/* Small helpers: time, randomness, UUIDs, constant-time comparison. */
#ifndef MDM_MISC_H
#define MDM_MISC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Wall-clock time in milliseconds since the epoch. */
int64_t mdm_now_ms(void);

/* Monotonic time in nanoseconds. */
uint64_t mdm_mono_ns(void);

/* Fills p with cryptographically secure random bytes; aborts on failure
 * (a server that cannot make keys or challenges must not go on). */
void mdm_random(void *p, size_t n);

/* Writes a random (version 4) UUID in upper case into out[37]. */
void mdm_uuid(char out[37]);

/* Compares two byte strings in time that depends only on their lengths. */
bool mdm_consttime_eq(const void *a, size_t alen, const void *b, size_t blen);

/* Formats ms since the epoch as RFC 3339 UTC (out holds 32 bytes). */
void mdm_time_format(char out[32], int64_t ms);

/* True when s (length n) starts with prefix. */
bool mdm_has_prefix(const char *s, size_t n, const char *prefix);

#endif
