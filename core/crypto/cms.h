/* CMS (RFC 5652) as profiles and enrollment need it: attached signatures
 * (signed profiles, OTA requests) and enveloped data (encrypted profile
 * content). Always binary: no S/MIME text canonicalisation. */
#ifndef MDM_CMS_H
#define MDM_CMS_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>

#include "util/buf.h"
#include "util/err.h"

/* Signs data as an attached SignedData (eContent = data) with SHA-256;
 * chain (may be NULL) is added to the certificates. DER to out. */
int mdm_cms_sign(X509 *signer, EVP_PKEY *key, STACK_OF(X509) *chain, const void *data,
                 size_t len, mdm_buf_t *out, mdm_err_t *err);

/* Encrypts data to the recipient certificate (key transport: RSA) as
 * EnvelopedData with cipher (NULL: AES-256-CBC). DER to out. */
int mdm_cms_encrypt(X509 *recipient, const EVP_CIPHER *cipher, const void *data, size_t len,
                    mdm_buf_t *out, mdm_err_t *err);

/* Verifies an attached SignedData: the signature and digest always; the
 * signer's chain against trust when trust is not NULL (purpose any, current
 * time, no_check_time when ignore_time). Writes the content to content and
 * a new reference to the signer to *signer (may be NULL). */
int mdm_cms_verify_attached(const void *der, size_t len, X509_STORE *trust, int ignore_time,
                            mdm_buf_t *content, X509 **signer, mdm_err_t *err);

/* Decrypts EnvelopedData with the recipient's key and certificate. */
int mdm_cms_decrypt(const void *der, size_t len, X509 *cert, EVP_PKEY *key, mdm_buf_t *out,
                    mdm_err_t *err);

#endif
