/* Keys and certificates: generation, PEM files, fingerprints, names and
 * serial numbers. OpenSSL 3 EVP interfaces only.
 *
 * Files are written atomically (a temporary file created with O_EXCL in the
 * same directory, fsync, rename), private keys with mode 0600 and
 * certificates with mode 0644. Reading a private key refuses a file that
 * group or others can read, unless the caller allows it. */
#ifndef MDM_CRYPTO_KEYS_H
#define MDM_CRYPTO_KEYS_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "util/err.h"

/* RFC 5280 limits serial numbers to 20 octets. */
#define MDM_SERIAL_MAX 20

/* Generates a key from a spec: "rsa:2048", "rsa:3072", "rsa:4096",
 * "ec:P-256", "ec:P-384", "rsa" (= rsa:3072) or "ec" (= ec:P-256). Case does
 * not matter. Anything else is MDM_EINVAL with the accepted specs in err. */
int mdm_key_generate(const char *spec, EVP_PKEY **out, mdm_err_t *err);

/* Describes a key for messages: "RSA 2048 bits", "EC P-256", "ED25519". */
void mdm_key_describe(const EVP_PKEY *key, char *buf, size_t n);

/* Writes the private key as unencrypted PKCS#8 PEM, mode 0600, atomically. */
int mdm_key_write_pem(EVP_PKEY *key, const char *path, mdm_err_t *err);

/* Writes a certificate as PEM, mode 0644, atomically. */
int mdm_cert_write_pem(X509 *cert, const char *path, mdm_err_t *err);

/* Writes several certificates (a chain, leaf first) to one PEM file, mode
 * 0644, atomically. An empty stack is MDM_EINVAL. */
int mdm_certs_write_pem(STACK_OF(X509) *certs, const char *path, mdm_err_t *err);

/* Reads a PEM private key (PKCS#8 or traditional, unencrypted). A file that
 * group or others may read (mode & 077) is refused with MDM_EAUTH and a
 * message naming the file, its mode and the fix, unless allow_insecure_mode.
 * Encrypted keys are refused (the server has nobody to ask for a
 * passphrase). */
int mdm_key_read_pem(const char *path, bool allow_insecure_mode, EVP_PKEY **out, mdm_err_t *err);

/* Reads the first certificate of a PEM file (a DER file works too). */
int mdm_cert_read_pem(const char *path, X509 **out, mdm_err_t *err);

/* Reads every certificate of a PEM file in order; a file with none is
 * MDM_EPARSE. The caller frees with sk_X509_pop_free(s, X509_free). */
int mdm_certs_read_pem(const char *path, STACK_OF(X509) **out, mdm_err_t *err);

/* SHA-256 over the DER encoding (the fingerprint used for cert binding). */
int mdm_cert_sha256(X509 *cert, unsigned char out[32]);

/* The same as 64 lowercase hex digits and a NUL. */
int mdm_cert_sha256_hex(X509 *cert, char out[65]);

/* Formats a name in RFC 2253 form ("CN=dev,O=moonmdm"), UTF-8 kept as is.
 * Always NUL-terminates; returns MDM_ELIMIT when buf was too small (the text
 * is then cut) and MDM_ECRYPTO if the name cannot be printed. */
int mdm_x509_name_oneline(const X509_NAME *name, char *buf, size_t n);

/* Parses one DER certificate; trailing bytes are an error. */
int mdm_cert_from_der(const void *der, size_t len, X509 **out, mdm_err_t *err);

/* Appends the DER encoding of cert to out. */
int mdm_cert_to_der(X509 *cert, mdm_buf_t *out);

/* True when key is the private key of cert's public key. */
bool mdm_key_matches_cert(EVP_PKEY *key, X509 *cert);

/* The serial number as minimal big-endian bytes (zero is one 0x00 byte).
 * Negative or longer than MDM_SERIAL_MAX octets is MDM_EINVAL. */
int mdm_cert_serial(const X509 *cert, unsigned char out[MDM_SERIAL_MAX], size_t *len);

/* notBefore and notAfter in milliseconds since the epoch. */
int mdm_cert_validity_ms(const X509 *cert, int64_t *not_before_ms, int64_t *not_after_ms);

/* An ASN1_TIME in milliseconds since the epoch. */
int mdm_asn1_time_ms(const ASN1_TIME *t, int64_t *ms);

#endif
