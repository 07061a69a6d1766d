/* Brute-force protection: failure counters per key ("addr:<ip>",
 * "user:<name>") with exponential backoff. After `threshold` failures
 * within `window`, the key is locked for `backoff`, doubling with each
 * further failure up to `backoff_max`; a success clears the key. State is
 * in memory (a restart forgets it), bounded in size. */
#ifndef MDM_GUARD_H
#define MDM_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/metrics.h"

typedef struct mdm_guard mdm_guard_t;

typedef struct mdm_guard_opts {
    const char *name;          /* "enroll", "api": metric label and log field */
    uint64_t threshold;
    uint64_t backoff_ms;
    uint64_t backoff_max_ms;
    uint64_t window_ms;
    size_t max_keys;           /* 0: 65536 */
} mdm_guard_opts_t;

mdm_guard_t *mdm_guard_new(const mdm_guard_opts_t *opts);
void mdm_guard_free(mdm_guard_t *g);

/* Milliseconds the key stays locked (0: allowed). */
uint64_t mdm_guard_locked(mdm_guard_t *g, const char *key, int64_t now_ms);

/* Records a failure; returns the lockout it caused (0: none yet). */
uint64_t mdm_guard_fail(mdm_guard_t *g, const char *key, int64_t now_ms);

/* An attempt whose outcome comes later (a sign-in whose password is being
 * hashed): attempts in flight count as failures until they end, so that a
 * burst of attempts sent together gets no more tries than attempts sent
 * one after another. Returns false (and begins nothing) when the key's
 * failures and attempts in flight reach the threshold and one is still in
 * flight: retry when it has ended. Every true must be matched by one
 * mdm_guard_end, after its mdm_guard_fail or mdm_guard_success. */
bool mdm_guard_begin(mdm_guard_t *g, const char *key, int64_t now_ms);
void mdm_guard_end(mdm_guard_t *g, const char *key);

/* Clears the key after a success. */
void mdm_guard_success(mdm_guard_t *g, const char *key);

/* The address key of a client, from "ip:port" or "[v6]:port":
 * "addr:<ipv4>" for IPv4 and IPv4-mapped IPv6 addresses, "addr:<prefix>/64"
 * for IPv6 (a client controls at least a /64), both normalised so that
 * every spelling of one address gives one key. */
void mdm_guard_addr_key(const char *remote, char *out, size_t n);

#endif
