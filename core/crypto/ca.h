/* The built-in certificate authority: loading the CA, creating a
 * self-signed one, issuing server and device certificates, verifying
 * chains and signing CRLs. SCEP and the HTTP routes build on this.
 *
 * A loaded mdm_ca_t is read-only: every function here may be called from
 * several threads at once with the same CA (issuance runs on the libuv
 * thread pool). Nothing in this module keeps other state. */
#ifndef MDM_CRYPTO_CA_H
#define MDM_CRYPTO_CA_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/keys.h"
#include "util/buf.h"
#include "util/err.h"

/* Issued certificates start this long before "now", so that a device whose
 * clock is a little behind accepts them at once. */
#define MDM_CA_BACKDATE_MS (5 * 60 * 1000LL)

/* The default validity of device certificates: one year. */
#define MDM_CA_DEFAULT_VALIDITY_MS (365LL * 24 * 3600 * 1000)

/* Apple clients refuse TLS server certificates valid for longer. */
#define MDM_CA_MAX_SERVER_DAYS 825

typedef struct mdm_ca {
    X509 *cert;              /* the CA certificate that signs */
    EVP_PKEY *key;           /* its private key */
    STACK_OF(X509) *chain;   /* certificates above cert (may be empty, never NULL) */
    uint64_t validity_ms;    /* default validity of device certificates */
    char *crl_url;           /* CRL distribution point put in device certs (mdm_strdup), or NULL */
} mdm_ca_t;

/* An entry of a CRL. */
typedef struct mdm_revoked {
    unsigned char serial[MDM_SERIAL_MAX]; /* big-endian, minimal */
    size_t serial_len;
    int64_t revoked_at_ms;
    int reason;                           /* RFC 5280 CRLReason; 0 (unspecified) is left out */
} mdm_revoked_t;

/* Options of issuance; a zeroed struct gives the defaults. */
typedef struct mdm_issue_opts {
    uint64_t validity_ms;               /* 0: the CA's validity_ms */
    const X509_NAME *subject_override;  /* NULL: the CSR's subject */
    int64_t not_before_ms;              /* 0: now - MDM_CA_BACKDATE_MS; tests and tooling only */
    bool csr_verified;                  /* the caller already verified the CSR's signature */
} mdm_issue_opts_t;

/* Makes a CA object from a certificate, its key and an optional chain
 * (references are taken; the caller keeps its own). Checks that the key
 * matches, that the certificate is a CA (basicConstraints CA:TRUE and
 * keyCertSign) and that it is valid now. */
int mdm_ca_new(X509 *cert, EVP_PKEY *key, STACK_OF(X509) *chain, mdm_ca_t **out, mdm_err_t *err);

/* Loads the CA from PEM files (chain_path may be NULL) and checks it as
 * mdm_ca_new does; errors name the files and, for validity, the dates. */
int mdm_ca_load(const char *cert_path, const char *key_path, const char *chain_path,
                bool allow_insecure_key_mode, mdm_ca_t **out, mdm_err_t *err);

void mdm_ca_free(mdm_ca_t *ca);

/* Creates a self-signed CA certificate "CN=<cn>,O=moonmdm" for key, valid
 * from 5 minutes ago for days days: CA:TRUE pathlen 0 (critical), key usage
 * keyCertSign, cRLSign, digitalSignature, keyEncipherment (critical; Apple
 * SCEP clients pick the certificate to encrypt to by key usage), SKI, AKI,
 * random positive 128-bit serial, SHA-256. */
int mdm_ca_create_self_signed(EVP_PKEY *key, const char *common_name, int days, X509 **out,
                              mdm_err_t *err);

/* Issues a TLS server certificate for server_key. sans are "DNS:name" or
 * "IP:address" (IPv4 or IPv6); with none, cn is used as the one name. EKU
 * serverAuth, CA:FALSE; key usage digitalSignature, plus keyEncipherment for
 * RSA keys. days is at most MDM_CA_MAX_SERVER_DAYS. */
int mdm_ca_issue_server_cert(mdm_ca_t *ca, EVP_PKEY *server_key, const char *cn,
                             const char *const *sans, size_t nsans, int days, X509 **out,
                             mdm_err_t *err);

/* Issues a device (client) certificate for a public key directly, without
 * a CSR (tests, tooling). Same profile as mdm_ca_issue_from_csr; opts may
 * be NULL and its subject_override is ignored. */
int mdm_ca_issue_client_cert_for_key(mdm_ca_t *ca, EVP_PKEY *pubkey, const X509_NAME *subject,
                                     const mdm_issue_opts_t *opts, X509 **out, mdm_err_t *err);

/* Whether a device's key may be certified: RSA of 2048 to 8192 bits, or
 * EC on P-256 or P-384. MDM_EINVAL with the reason in err otherwise. The
 * issuing functions check it too; SCEP checks it before it asks its
 * decision hook, so that a request it would refuse never waits pending. */
int mdm_ca_check_device_key(EVP_PKEY *pk, mdm_err_t *err);

/* Issues a device certificate from a CSR. The CSR's self-signature must
 * verify; its key must be RSA 2048..8192 bits or EC P-256/P-384; the
 * subject (after override) must not be empty. The certificate gets a random
 * positive serial of 127 bits, key usage digitalSignature + keyEncipherment
 * (EC: digitalSignature + keyAgreement), EKU clientAuth, CA:FALSE, SKI, AKI,
 * the CSR's subjectAltName if it requested one, a CRL distribution point
 * when ca->crl_url is set, and a SHA-256 signature. It never outlives the
 * CA certificate. opts may be NULL. Thread-safe.
 * The returned certificate is for encoding (i2d, CMS, the store): it
 * carries the CSR's public key as encoded, not parsed, so
 * X509_get0_pubkey() on it returns NULL; to verify it or use its key, read
 * its DER back (d2i_X509). */
int mdm_ca_issue_from_csr(mdm_ca_t *ca, X509_REQ *csr, const mdm_issue_opts_t *opts, X509 **out,
                          mdm_err_t *err);

/* Verifies that cert chains to the CA (the CA certificate and its chain are
 * the trust anchors; untrusted may add intermediates) at the current time,
 * for any purpose. MDM_EEXPIRED for an expired certificate, MDM_EAUTH for
 * other failures, with OpenSSL's reason in err. */
int mdm_ca_verify_cert(mdm_ca_t *ca, X509 *cert, STACK_OF(X509) *untrusted, mdm_err_t *err);

/* Signs a v2 CRL (SHA-256) listing the revoked entries: lastUpdate now,
 * nextUpdate next_update_ms, CRL number crl_number (the caller keeps it
 * monotonic, see mdm_certdb_crl_number_next), AKI. Appends the DER to
 * der_out. */
int mdm_ca_crl(mdm_ca_t *ca, const mdm_revoked_t *revoked, size_t n, uint64_t crl_number,
               int64_t next_update_ms, mdm_buf_t *der_out, mdm_err_t *err);

#endif
