/* Secrets at rest (bootstrap tokens, unlock tokens): AES-256-GCM with a key
 * kept in <data_dir>/secret.key (32 random bytes, mode 0600, created on
 * first use). A sealed value is: version (1 byte) | nonce (12) | ciphertext
 * | tag (16); the additional data binds it to its purpose and owner, so a
 * sealed value copied to another record does not open. */
#ifndef MDM_SECRET_H
#define MDM_SECRET_H

#include <stdbool.h>
#include <stddef.h>

#include "util/buf.h"
#include "util/err.h"

typedef struct mdm_secretkey {
    unsigned char key[32];
} mdm_secretkey_t;

/* Reads the key file, or creates it (0600) when missing. A key file that is
 * readable by group or others is refused unless allow_insecure_mode. */
int mdm_secretkey_load(const char *path, bool create, bool allow_insecure_mode,
                       mdm_secretkey_t *out, mdm_err_t *err);

/* Appends the sealed form of p to out. */
int mdm_secret_seal(const mdm_secretkey_t *k, const char *aad, const void *p, size_t n,
                    mdm_buf_t *out);

/* Appends the plaintext of a sealed value to out; MDM_EAUTH when it does not
 * open (wrong key, wrong aad, tampered). */
int mdm_secret_open(const mdm_secretkey_t *k, const char *aad, const void *p, size_t n,
                    mdm_buf_t *out);

#endif
