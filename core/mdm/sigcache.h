/* Verified Mdm-Signature signers, and the fast check of later signatures
 * by them (see sigcache.c). Loop thread only. */
#ifndef MDM_SIGCACHE_H
#define MDM_SIGCACHE_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mdm_sigcache mdm_sigcache_t;

enum {
    MDM_SIGCACHE_OK = 0,     /* verified with a kept key */
    MDM_SIGCACHE_MISS = 1,   /* not decided here: use the full verification */
    MDM_SIGCACHE_BAD = 2,    /* the kept signer's signature does not hold */
};

mdm_sigcache_t *mdm_sigcache_new(size_t slots);
void mdm_sigcache_free(mdm_sigcache_t *c);

/* Keeps cert (a new reference) as verified until valid_until_ms. */
void mdm_sigcache_put(mdm_sigcache_t *c, const unsigned char fp[32], X509 *cert,
                      int64_t valid_until_ms);

/* True when fp is kept and still valid. */
bool mdm_sigcache_known(mdm_sigcache_t *c, const unsigned char fp[32], int64_t now_ms);

/* Verifies a detached SignedData (DER) over body with a kept signer. On OK,
 * *signer is a new reference and fp_out its SHA-256. */
int mdm_sigcache_verify(mdm_sigcache_t *c, const void *der, size_t len, const void *body,
                        size_t blen, int64_t now_ms, X509 **signer, unsigned char fp_out[32]);

#endif
