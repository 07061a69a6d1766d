/* Records of the certificates the CA issued, in the store's certs table.
 *
 * Key: the serial number as 20 big-endian bytes, zero-padded on the left
 * (MDM_SERIAL_MAX), so that key order is numeric serial order whatever the
 * serial's length. Value: a binary plist dictionary (libplist) with the keys
 *   serial (string, uppercase hex), subject (string, RFC 2253),
 *   sha256 (data, 32 bytes), not_before, not_after (integer, ms),
 *   revoked (bool), revoked_at (integer, ms), reason (integer, RFC 5280
 *   CRLReason), transaction_id (string), enrollment_id (string),
 *   der (data, the certificate).
 * Indexes in MDM_T_INDEX:
 *   "certfp\0" + SHA-256 (32 bytes)   -> serial (minimal bytes)
 *   "certrev\0" + padded serial (20)  -> revoked_at (8 bytes BE) + reason (1)
 * The meta counter "crl_number" numbers the CRLs.
 *
 * Every function works inside the caller's transaction, so that a request
 * can compose them with its other changes into one commit. */
#ifndef MDM_CRYPTO_CERTDB_H
#define MDM_CRYPTO_CERTDB_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/ca.h"
#include "crypto/keys.h"
#include "store/store.h"

/* Uppercase hex of a serial: two digits a byte and a NUL. */
#define MDM_SERIAL_HEX_MAX (2 * MDM_SERIAL_MAX + 1)

/* One issued certificate. Strings are never NULL (empty when unset). */
typedef struct mdm_certrec {
    unsigned char serial[MDM_SERIAL_MAX]; /* big-endian, minimal */
    size_t serial_len;
    char serial_hex[MDM_SERIAL_HEX_MAX];
    char *subject;
    unsigned char sha256[32];
    int64_t not_before_ms;
    int64_t not_after_ms;
    bool revoked;
    int64_t revoked_at_ms;  /* 0 unless revoked */
    int reason;             /* CRLReason, 0 unless revoked */
    char *transaction_id;   /* SCEP transaction id, may be empty */
    char *enrollment_id;    /* enrollment the certificate is bound to, may be empty */
    unsigned char *der;
    size_t der_len;
} mdm_certrec_t;

/* Called for each record of a listing; a non-zero return stops the
 * listing and is returned by it. The record is valid during the call. */
typedef int (*mdm_certrec_fn)(const mdm_certrec_t *rec, void *arg);

/* Frees the members of rec (not rec itself) and zeroes it. */
void mdm_certrec_free(mdm_certrec_t *rec);

/* Parses a serial written in hex, with or without colons or spaces between
 * bytes and an optional "0x" prefix ("0A:1B", "a1b", "0x0A1B"). Leading zero
 * bytes are dropped. MDM_EINVAL for anything else or more than 20 bytes. */
int mdm_serial_parse(const char *text, unsigned char out[MDM_SERIAL_MAX], size_t *len);

/* Formats a serial as uppercase hex without separators. */
void mdm_serial_format(const unsigned char *serial, size_t len, char out[MDM_SERIAL_HEX_MAX]);

/* Records an issued certificate. Putting the same certificate again
 * changes nothing; another certificate with the same serial is MDM_EEXIST. */
int mdm_certdb_put(mdm_txn_t *txn, X509 *cert, const char *transaction_id);

/* Looks a certificate up by serial (MDM_ENOTFOUND if unknown). The caller
 * frees out with mdm_certrec_free. */
int mdm_certdb_get_by_serial(mdm_txn_t *txn, const unsigned char *serial, size_t len,
                             mdm_certrec_t *out);

/* Looks a certificate up by the SHA-256 of its DER. */
int mdm_certdb_get_by_fingerprint(mdm_txn_t *txn, const unsigned char sha256[32],
                                  mdm_certrec_t *out);

/* Records the enrollment a certificate is bound to (empty string: none). */
int mdm_certdb_set_enrollment(mdm_txn_t *txn, const unsigned char *serial, size_t len,
                              const char *enrollment_id);

/* Revokes a certificate with a CRLReason (0..10) at now_ms. MDM_ENOTFOUND
 * for an unknown serial; revoking again keeps the first time and reason. */
int mdm_certdb_revoke(mdm_txn_t *txn, const unsigned char *serial, size_t len, int reason,
                      int64_t now_ms);

/* Sets *revoked; MDM_ENOTFOUND for an unknown serial. */
int mdm_certdb_is_revoked(mdm_txn_t *txn, const unsigned char *serial, size_t len,
                          bool *revoked);

/* Calls fn for the records in serial order, skipping offset of them and
 * stopping after limit (0: no limit). */
int mdm_certdb_list(mdm_txn_t *txn, size_t offset, size_t limit, mdm_certrec_fn fn, void *arg);

/* Every revoked certificate, in serial order, for building a CRL. The
 * caller frees *out with mdm_free (NULL when *n is 0). */
int mdm_certdb_revoked_list(mdm_txn_t *txn, mdm_revoked_t **out, size_t *n);

/* Increments and returns the CRL number (the first is 1). */
int mdm_certdb_crl_number_next(mdm_txn_t *txn, uint64_t *out);

#endif
