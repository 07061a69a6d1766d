/* The SCEP service: the HTTP routes (GetCACaps, GetCACert, PKIOperation by
 * GET and POST, the CRL, and the admin API for challenges and issued
 * certificates) and the enrollment flow behind PKIOperation.
 *
 * Flow of a PKIOperation. On the thread pool: parse, verify the signature,
 * open the envelope with the RA (or CA) key, and for a RenewalReq check the
 * signer's chain. On the loop: the challenge (one-time or static), the
 * renewed certificate's record, or the pending request of a CertPoll; then
 * the decision (policy seam below). On the thread pool: issue and sign the
 * CertRep. On the loop: one store transaction consumes the one-time
 * challenge (or the pending request), records the certificate (with the
 * transaction id), the challenge's owner, and for a renewal the old
 * certificate's enrollment and binding; a challenge that another request
 * consumed in the meantime turns the reply into FAILURE badRequest and
 * nothing is recorded or sent. The store is touched only on the loop.
 *
 * Store keys besides certdb and challenges (MDM_T_INDEX):
 *   "sceppend\0" + transactionID -> a pending request (binary plist)
 *   "scepowner\0" + cert SHA-256  -> owner of the challenge (challenge.h)
 * and the meta counter "revocations", bumped by mdm_scep_revoke, which
 * tells the CRL cache (also in other processes) to rebuild. */
#ifndef MDM_SCEP_SERVICE_H
#define MDM_SCEP_SERVICE_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "crypto/ca.h"
#include "server.h"
#include "store/store.h"
#include "util/err.h"

/* What the decision hook says about a request. */
enum mdm_scep_decision {
    MDM_SCEP_DECIDE_ISSUE = 0,   /* issue the certificate */
    MDM_SCEP_DECIDE_DENY = 1,    /* FAILURE badRequest; the reason is logged */
    MDM_SCEP_DECIDE_PENDING = 2, /* PENDING; the request is kept for CertPoll */
};

/* What the decision hook sees; valid during the call only. */
typedef struct mdm_scep_decision_ctx {
    const char *reqid;          /* HTTP request id, for logs */
    int message_type;           /* PKCSReq, RenewalReq, or CertPoll (a pending request) */
    int request_type;           /* the request being decided: PKCSReq or RenewalReq */
    const char *transaction_id;
    const char *subject;        /* the CSR's subject, RFC 2253 */
    const char *cn;             /* the subject's only CN (UTF-8), "" when none */
    /* Every subjectAltName of the CSR (the certificate gets them all):
     * "DNS:..", "email:..", "URI:..", "IP:..", "upn:.." (a Microsoft UPN),
     * "othername:OID:HEX" (the value's DER), "dirname:DN", "rid:OID",
     * "x400:HEX", "ediparty:HEX". A CSR with a NUL byte in a CN or SAN,
     * two CNs, or a subject longer than 511 bytes as text is refused
     * before the hook is asked. */
    const char *const *sans;
    size_t nsans;
    const char *owner;          /* the one-time challenge's owner; "" for the static challenge */
    const char *challenge;      /* PKCSReq: the challenge password, else NULL */
    bool challenge_ok;          /* a valid one-time or static challenge came with it */
    const char *remote_addr;    /* the client's "ip:port", or NULL */
    X509_REQ *csr;
    X509 *renewing;             /* RenewalReq: the certificate being renewed, else NULL */
} mdm_scep_decision_ctx_t;

/* The decision hook: called on the loop thread after the core's own
 * checks passed, for every PKCSReq, RenewalReq and CertPoll of a pending
 * request. Returns an enum mdm_scep_decision; may write a reason (a
 * NUL-terminated sentence without secrets) for the log. The default
 * (no hook) issues. */
typedef int (*mdm_scep_decide_fn)(void *udata, const mdm_scep_decision_ctx_t *ctx, char *reason,
                                  size_t reason_len);

typedef struct mdm_scep_service mdm_scep_service_t;

/* How to build a service without an HTTP server (the server uses
 * mdm_scep_service_init; tests and tools use this). */
typedef struct mdm_scep_service_opts {
    uv_loop_t *loop;
    mdm_store_t *store;
    mdm_ca_t *ca;                  /* borrowed; must outlive the service */
    X509 *ra_cert;                 /* optional RA (references are taken) */
    EVP_PKEY *ra_key;
    const char *static_challenge;  /* optional, never consumed */
    bool allow_single_des;
    size_t max_inflight;           /* PKIOperations at once before 503 (0: 512) */
} mdm_scep_service_opts_t;

/* Called with the outcome of a PKIOperation or a CRL request: the HTTP
 * status (200, 400, 500 or 503), the Content-Type and the body. */
typedef void (*mdm_scep_done_fn)(void *arg, int status, const char *ctype, const void *body,
                                 size_t len);

/* Creates a service. Checks the RA: both or neither of cert and key, the
 * key matches, RSA, key usage digitalSignature + keyEncipherment, not a CA,
 * chains to the CA. */
int mdm_scep_service_new(const mdm_scep_service_opts_t *opts, mdm_scep_service_t **out,
                         mdm_err_t *err);

/* Frees a service; no operation may be in flight (after uv_run ended). */
void mdm_scep_service_destroy(mdm_scep_service_t *svc);

/* Sets the decision hook (NULL: the default, issue). */
void mdm_scep_service_set_decision(mdm_scep_service_t *svc, mdm_scep_decide_fn fn, void *udata);

/* Handles a pkiMessage; done is called later on the loop, exactly once,
 * unless this returns non-zero (MDM_ELIMIT: too many in flight, answer 503;
 * MDM_EINVAL: empty or too large, answer 400). reqid and remote_addr (the
 * client's "ip:port" for the decision hook, or NULL) are copied. */
int mdm_scep_pkioperation(mdm_scep_service_t *svc, const char *reqid, const char *remote_addr,
                          const void *msg, size_t len, mdm_scep_done_fn done, void *arg);

/* Serves the current CRL (DER): from the cache when no revocation
 * happened since it was built and it is less than a day old (done is then
 * called before this returns), else signs a new one off the loop with the
 * next CRL number. Non-zero (a store error) means done is not called. */
int mdm_scep_crl(mdm_scep_service_t *svc, const char *reqid, mdm_scep_done_fn done, void *arg);

/* The GetCACaps body. */
const char *mdm_scep_caps(void);

/* Revokes a certificate (mdm_certdb_revoke) and bumps the "revocations"
 * counter so that every server rebuilds its CRL. Use it rather than
 * mdm_certdb_revoke directly. */
int mdm_scep_revoke(mdm_txn_t *txn, const unsigned char *serial, size_t len, int reason,
                    int64_t now_ms);

/* Server glue: builds the service from the server's config and CA, and
 * adds its routes (scep.path, the CRL path, /v1/challenges, /v1/certs,
 * /v1/certs/{serial}/revoke). Called from mdm__modules_init. */
int mdm_scep_service_init(mdm_server_t *s, mdm_err_t *err);

/* Frees what mdm_scep_service_init made. */
void mdm_scep_service_free(mdm_server_t *s);

/* Sweeps expired challenges, stale pending requests and dead phase-3 slots
 * when the last sweep is ten minutes old. SCEP requests call it, and so
 * does the MDM service's pruning timer, so that a server without SCEP
 * traffic sweeps too. Nothing when the service is not set up. */
void mdm_scep_prune_due(mdm_server_t *s);

/* Sets the decision hook of a running server's SCEP service (the policy
 * engine calls this when it loads). */
void mdm_scep_set_decision(mdm_server_t *s, mdm_scep_decide_fn fn, void *udata);

#endif
