/* The SCEP message layer (RFC 8894): parsing a client's pkiMessage and
 * building the server's CertRep, with OpenSSL 3 (CMS for the signed outer
 * layer; the pkcsPKIEnvelope is opened by hand so that the content cipher
 * of the request is known and can be mirrored in the reply).
 *
 * Nothing here touches the store or the network, and nothing keeps state:
 * every function may run on the libuv thread pool, several at once with the
 * same keys. The HTTP service and the enrollment flow are in
 * scep/service.h; one-time challenges in scep/challenge.h.
 *
 * Who a certificate was enrolled for: when a PKCSReq is answered with
 * SUCCESS on a one-time challenge, the challenge's owner (the user name
 * given to mdm_challenge_create) is recorded under the new certificate's
 * SHA-256 (mdm_challenge_owner_of_cert in scep/challenge.h); a RenewalReq
 * carries the owner and the enrollment binding of the old certificate over
 * to the new one. The MDM layer reads the owner when the device first
 * authenticates with that certificate. */
#ifndef MDM_SCEP_H
#define MDM_SCEP_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

#include "crypto/ca.h"
#include "util/buf.h"
#include "util/err.h"

/* messageType values (RFC 8894 section 3.2.1.2). */
enum mdm_scep_msgtype {
    MDM_SCEP_CERTREP = 3,
    MDM_SCEP_RENEWALREQ = 17,
    MDM_SCEP_PKCSREQ = 19,
    MDM_SCEP_CERTPOLL = 20, /* also called GetCertInitial */
    MDM_SCEP_GETCERT = 21,
    MDM_SCEP_GETCRL = 22,
};

/* pkiStatus values. */
enum mdm_scep_status {
    MDM_SCEP_SUCCESS = 0,
    MDM_SCEP_FAILURE = 2,
    MDM_SCEP_PENDING = 3,
};

/* failInfo values. */
enum mdm_scep_failinfo {
    MDM_SCEP_NOFAIL = -1,
    MDM_SCEP_BADALG = 0,
    MDM_SCEP_BADMESSAGECHECK = 1,
    MDM_SCEP_BADREQUEST = 2,
    MDM_SCEP_BADTIME = 3,
    MDM_SCEP_BADCERTID = 4,
};

/* Longest transactionID accepted (clients use 32 to 64 characters). */
#define MDM_SCEP_TXID_MAX 128
/* Longest senderNonce accepted (RFC 8894: 16 bytes). */
#define MDM_SCEP_NONCE_MAX 64
/* Longest pkiMessage accepted. */
#define MDM_SCEP_MSG_MAX (256 * 1024)

/* The keys a server decrypts with. A request must be encrypted to ra_cert
 * (when set) or ca_cert; their keys must be RSA (key transport). */
typedef struct mdm_scep_keys {
    X509 *ra_cert;          /* may be NULL */
    EVP_PKEY *ra_key;
    X509 *ca_cert;
    EVP_PKEY *ca_key;
    bool allow_single_des;  /* open DES-CBC envelopes (old Go clients) */
} mdm_scep_keys_t;

/* A parsed request. Strings are NUL-terminated; the owned objects are
 * freed by mdm_scep_msg_free. */
typedef struct mdm_scep_msg {
    int type;                          /* enum mdm_scep_msgtype */
    char txid[MDM_SCEP_TXID_MAX + 1];  /* transactionID (printable ASCII) */
    int txid_type;                     /* its ASN.1 string type, echoed in the reply */
    unsigned char sender_nonce[MDM_SCEP_NONCE_MAX];
    size_t sender_nonce_len;
    int digest_nid;                    /* NID_sha1, NID_sha256 or NID_sha512 */
    int cipher_nid;                    /* content cipher of the envelope, 0 if unknown */
    X509 *signer;                      /* the signer's certificate */
    X509_REQ *csr;                     /* PKCSReq and RenewalReq */
    X509_NAME *poll_issuer;            /* CertPoll: IssuerAndSubject */
    X509_NAME *poll_subject;
    char *challenge;                   /* the CSR's challengePassword, or NULL; never log it */
    int fail_info;                     /* MDM_SCEP_NOFAIL, or the failInfo to answer with */
    char reason[200];                  /* why (for the log; holds no secret) */
} mdm_scep_msg_t;

/* Parses a pkiMessage: checks the outer SignedData and its signature (the
 * signer's certificate is not chain-verified here), reads the SCEP
 * attributes, opens the envelope with the RA or CA key, and parses the
 * message data (CSR with its self-signature checked, or IssuerAndSubject).
 *
 * Returns MDM_EPARSE when the input cannot be answered with a CertRep (not
 * DER, not SignedData, no signer, no transactionID, messageType or
 * senderNonce): the caller answers HTTP 400 and out->reason says why.
 * Returns 0 otherwise; then out->fail_info is MDM_SCEP_NOFAIL for a good
 * message, or the failInfo that the CertRep must carry (bad signature:
 * badMessageCheck; digest or cipher not accepted: badAlg; not encrypted to
 * us, undecryptable, bad CSR signature: badMessageCheck; unsupported
 * message type or malformed message data: badRequest). Decryption errors
 * all read the same, so that the reply is no padding oracle. out must be
 * freed with mdm_scep_msg_free in every case. */
int mdm_scep_parse(const void *der, size_t len, const mdm_scep_keys_t *keys, mdm_scep_msg_t *out);

/* Frees what a parse allocated (the challenge is wiped) and zeroes m. */
void mdm_scep_msg_free(mdm_scep_msg_t *m);

/* What a CertRep says. */
typedef struct mdm_scep_reply {
    X509 *signer_cert;              /* the RA, or the CA without an RA */
    EVP_PKEY *signer_key;
    int digest_nid;                 /* 0: SHA-256 */
    int status;                     /* enum mdm_scep_status */
    int fail_info;                  /* FAILURE only */
    const char *txid;               /* copied from the request */
    int txid_type;                  /* its ASN.1 type; 0: PrintableString */
    const unsigned char *recipient_nonce; /* the request's senderNonce */
    size_t recipient_nonce_len;
    X509 *issued;                   /* SUCCESS: the new certificate */
    X509 *recipient;                /* SUCCESS: the request's signer certificate */
    int cipher_nid;                 /* SUCCESS: content cipher (mdm_scep_reply_cipher) */
} mdm_scep_reply_t;

/* Builds a CertRep (DER) into out. SUCCESS: a degenerate certs-only
 * SignedData holding the issued certificate, enveloped to the recipient
 * with the given cipher, inside a SignedData signed by the signer;
 * FAILURE and PENDING: the signed attributes only, eContent absent. The
 * signed attributes are messageType 3, pkiStatus, failInfo (FAILURE),
 * transactionID, a fresh 16-byte senderNonce and recipientNonce. */
int mdm_scep_certrep(const mdm_scep_reply_t *r, mdm_buf_t *out, mdm_err_t *err);

/* The cipher to answer a request with: the request's own (AES-128-CBC,
 * AES-192-CBC, AES-256-CBC, DES-EDE3-CBC), or DES-EDE3-CBC for a
 * single-DES request (we never encrypt with single DES). */
int mdm_scep_reply_cipher(int request_cipher_nid);

/* A degenerate certs-only SignedData (no signers, eContent absent) with
 * the certificates, as GetCACert with an RA and CertRep SUCCESS use. */
int mdm_scep_certs_only(STACK_OF(X509) *certs, mdm_buf_t *out, mdm_err_t *err);

/* Issues an RA certificate for ra_key, signed by the CA: "CN=<cn>,
 * O=moonmdm", key usage digitalSignature + keyEncipherment (critical;
 * Apple clients choose the certificate to encrypt to by key usage),
 * CA:FALSE, SKI, AKI, SHA-256, valid for days days but never past the CA.
 * ra_key must be RSA. */
int mdm_scep_ra_create(mdm_ca_t *ca, EVP_PKEY *ra_key, const char *cn, int days, X509 **out,
                       mdm_err_t *err);

/* Names for logs: "PKCSReq", "badRequest", "SUCCESS", "aes-128-cbc"... */
const char *mdm_scep_msgtype_name(int type);
const char *mdm_scep_failinfo_name(int fail_info);
const char *mdm_scep_status_name(int status);
const char *mdm_scep_nid_name(int nid);

#endif
