/* Push certificates: the TLS client certificates that authenticate moonmdm
 * to APNs. Each one serves one topic, the subject's UID attribute (OID
 * 0.9.2342.19200300.100.1.1, "com.apple.mgmt.External.<uuid>"); several
 * topics may be loaded at once, one certificate each.
 *
 * Certificates come from the config (apns.cert + apns.key, or apns.p12) and
 * from the admin API (PUT /v1/pushcert), which stores them in the meta table
 * under "pushcert:<topic>" (the private key sealed with the server's secret
 * key, crypto/secret.h) so that they survive restarts. For one topic the
 * certificate that expires last wins at start; an upload always replaces. */
#ifndef MDM_APNS_PUSHCERT_H
#define MDM_APNS_PUSHCERT_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/secret.h"
#include "store/store.h"
#include "util/err.h"

/* Longest topic accepted (Apple's are about 60 characters). */
#define MDM_TOPIC_MAX 255

/* The size of a buffer for a topic quoted for the log (mdm_logq). */
#define MDM_TOPIC_LOGQ_MAX (4 * MDM_TOPIC_MAX + 3)

/* The meta-table key prefix of stored push certificates. */
#define MDM_PUSHCERT_KEY_PREFIX "pushcert:"

typedef struct mdm_pushcert {
    char topic[MDM_TOPIC_MAX + 1];
    char *cert_pem;           /* leaf first, then any chain (PEM) */
    size_t cert_len;
    char *key_pem;            /* unencrypted PKCS#8 PEM */
    size_t key_len;
    int64_t not_before_ms;
    int64_t not_after_ms;
    char sha256[65];          /* of the leaf certificate, lowercase hex */
    char subject[256];        /* RFC 2253 */
    const char *source;       /* "config" or "api" */
    int64_t updated_ms;       /* when it was uploaded or loaded */

    /* State kept by the APNs client. */
    bool blocked;             /* APNs refused it (403): no pushes until replaced */
    char blocked_reason[64];
    int64_t blocked_ms;
    int tls_alert;            /* a fatal TLS alert refusing it (SSL_AD_*), or 0 */
    int64_t expiry_warned_ms; /* last "expires soon" warning */
} mdm_pushcert_t;

/* Writes the subject's UID attribute of cert into out. MDM_ENOTFOUND when
 * the subject has none, MDM_ELIMIT when it is longer than n - 1. */
int mdm_pushcert_topic(X509 *cert, char *out, size_t n);

/* Builds a push certificate from a leaf, its private key and optional
 * chain certificates: checks that the key belongs to the certificate and
 * that the subject has a topic. Does not look at the validity period. */
int mdm_pushcert_build(X509 *cert, EVP_PKEY *key, STACK_OF(X509) *chain, const char *source,
                       mdm_pushcert_t **out, mdm_err_t *err);

/* Parses PEM text that holds a certificate and its private key in any
 * order (NanoMDM's PUT /v1/pushcert body). Further certificates are kept
 * as the chain. Encrypted keys are refused. */
int mdm_pushcert_from_pem(const void *pem, size_t len, const char *source,
                          mdm_pushcert_t **out, mdm_err_t *err);

/* Reads a certificate file and a key file (PEM). The key file must not be
 * readable by group or others unless allow_insecure_mode. */
int mdm_pushcert_from_files(const char *cert_path, const char *key_path,
                            bool allow_insecure_mode, mdm_pushcert_t **out, mdm_err_t *err);

/* Reads a PKCS#12 file (password may be NULL or ""). */
int mdm_pushcert_from_p12(const char *path, const char *password, mdm_pushcert_t **out,
                          mdm_err_t *err);

void mdm_pushcert_free(mdm_pushcert_t *pc);

/* Refuses a certificate that is expired or not yet valid at now_ms
 * (MDM_EEXPIRED, with the dates in err). */
int mdm_pushcert_check_validity(const mdm_pushcert_t *pc, int64_t now_ms, mdm_err_t *err);

/* The certificates in use, one per topic. */
typedef struct mdm_pushcerts {
    mdm_pushcert_t **v;
    size_t n;
    mdm_secretkey_t secret;   /* seals the private keys in the store */
} mdm_pushcerts_t;

/* The certificate of topic, or NULL. */
mdm_pushcert_t *mdm_pushcerts_find(const mdm_pushcerts_t *set, const char *topic);

/* Adds pc (ownership passes to the set), replacing the certificate of the
 * same topic, which is freed; *replaced tells whether there was one. */
void mdm_pushcerts_set(mdm_pushcerts_t *set, mdm_pushcert_t *pc, bool *replaced);

/* Reads every stored certificate into the set. A certificate whose topic
 * is already present replaces it only when it expires later. Entries that
 * do not open (another secret key) are logged and skipped. */
int mdm_pushcerts_load_store(mdm_pushcerts_t *set, mdm_store_t *store, mdm_err_t *err);

/* Stores pc (in the caller's transaction): the certificate as PEM and the
 * key sealed. */
int mdm_pushcert_save(mdm_txn_t *txn, const mdm_secretkey_t *secret, const mdm_pushcert_t *pc);

/* Frees every certificate of the set. */
void mdm_pushcerts_free(mdm_pushcerts_t *set);

#endif
