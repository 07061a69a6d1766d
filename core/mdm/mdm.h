/* The MDM check-in and command protocols (PUT /mdm/checkin, PUT
 * /mdm/connect, PUT /mdm dispatching on Content-Type): device identity
 * (mTLS, Mdm-Signature, proxy header), binding of certificates to
 * enrollments, check-in messages, command reports and the next command.
 *
 * Records (binary plists):
 *   enrollments/<eid>: type ("device" or "user"), device_id, topic, token,
 *     push_magic, unlock_token and bootstrap_token (sealed, see
 *     crypto/secret.h), enabled, token_invalid, token_updates,
 *     pending_first_token, new_enrollment, awaiting_configuration,
 *     authenticated_at, enrolled_at, token_updated_at, last_seen_at,
 *     checked_out_at, session, user, cert_fp, user_id, user_short_name.
 *   devices/<device id>: facts from Authenticate (serial, model, ...) and
 *     "facts" (the last DeviceInformation QueryResponses), tags.
 * The enrollment id (eid) is the UDID (or EnrollmentID for User Enrollment)
 * for the device channel, and "<device id>:<user>" for a user channel. */
#ifndef MDM_MDM_H
#define MDM_MDM_H

#include <openssl/x509.h>
#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/secret.h"
#include "mdm/certauth.h"
#include "server.h"

#define MDM_EID_MAX MDM_ENROLLMENT_ID_MAX
/* Longest UDID or EnrollmentID a message may name. */
#define MDM_DEVICE_ID_MAX 128

/* Who sent a request, as proven by a certificate. */
typedef struct mdm_identity {
    X509 *cert;                 /* borrowed from the request, or owned */
    bool owned;
    unsigned char fp[32];       /* SHA-256 of the certificate */
    const char *source;         /* "tls", "header" or "signature" */
} mdm_identity_t;

typedef struct mdm_mdm {
    mdm_server_t *server;
    mdm_secretkey_t secret;
    struct mdm_sigcache *sigcache; /* verified Mdm-Signature signers */
    uv_timer_t prune_timer;
    mdm_metric_t *m_checkins, *m_reports, *m_refused, *m_commands_sent, *m_sig_cache_hits,
        *m_sig_verified, *m_idle_fast, *m_parsed_in_pool;
} mdm_mdm_t;

/* Registers the routes and loads the secrets key. */
int mdm_mdm_service_init(mdm_server_t *s, mdm_err_t *err);
void mdm_mdm_service_free(mdm_server_t *s);

/* The outcome of one MDM message, independent of HTTP (so that fuzzing and
 * tests can drive the protocol without a socket). */
typedef struct mdm_outcome {
    const char *reqid;          /* in: the request id, for logs and the decision log */
    int status;                 /* HTTP status */
    const char *ctype;          /* Content-Type of body, or NULL */
    mdm_buf_t body;
    char eid[MDM_EID_MAX + 1];  /* resolved enrollment id, for logs */
    char detail[256];           /* why, for logs (never a secret) */
    char message_type[48];
    char command_uuid[40];      /* the command sent back, if any */
    size_t policy_commands;     /* commands the policy queued */
    size_t installs, removals;  /* profile changes reconciliation queued */
    bool unchanged;             /* answered from a read-only look: the answer tells
                                   of nothing stored (at most last_seen_at was
                                   written) */
} mdm_outcome_t;

/* A message body parsed ahead of its handling: large bodies are parsed in
 * the thread pool (mdm__parse_body is safe there) so that the loop does
 * not stop for them. */
typedef struct mdm_parsed {
    plist_t msg;   /* the dictionary, or NULL when rc != 0 */
    int rc;        /* 0, MDM_EPARSE or MDM_ELIMIT */
    mdm_buf_t bin; /* a report's binary plist, stored instead of its XML
                      (2.9 MB for 7.5 MB of apps): empty when not made */
} mdm_parsed_t;

/* Bodies of at least this many bytes are parsed in the thread pool. */
#define MDM_PARSE_IN_POOL_BYTES (64u << 10)

/* Parses a message body of at most max_bytes into a dictionary. For a
 * report (report true) sent as XML, also writes the binary plist of the
 * message into out->bin: the result record keeps that instead, so that a
 * large report costs the store, and the commit that writes it, about 40 %
 * of its XML. Free out->msg with plist_free() and out->bin with mdm_buf_free(). */
void mdm__parse_body(const void *body, size_t len, size_t max_bytes, bool report,
                     mdm_parsed_t *out);

/* Handles a check-in message body from the device with identity id.
 * pre: the body parsed ahead, or NULL to parse it here; its tree is
 * handed back in pre->msg for the caller to free (off the loop if it
 * likes). */
void mdm__process_checkin(mdm_mdm_t *m, const mdm_identity_t *id, const void *body, size_t len,
                          mdm_parsed_t *pre, mdm_outcome_t *out);

/* Handles a command report body; answers with the next command. pre as
 * above. */
void mdm__process_report(mdm_mdm_t *m, const mdm_identity_t *id, const void *body, size_t len,
                         mdm_parsed_t *pre, mdm_outcome_t *out);

/* Verifies an Mdm-Signature header value over body: a detached CMS
 * signature whose signer chains to a trusted CA. On success out->cert is an
 * owned reference to the signer. */
int mdm__verify_signature(mdm_mdm_t *m, const char *header, const void *body, size_t len,
                          mdm_identity_t *out, const char **why);

/* Resolves the enrollment id and the device channel id of a message
 * (PROTOCOL.md 1.1). Returns 0 or MDM_EPARSE with *why saying what is
 * wrong. */
int mdm__resolve_ids(plist_t msg, char eid[MDM_EID_MAX + 1], char device_id[MDM_EID_MAX + 1],
                     bool *user_channel, const char **why);

/* Enrollment and device records. */
int mdm_enrollment_load(mdm_txn_t *txn, const char *eid, plist_t *out);
int mdm_enrollment_save(mdm_txn_t *txn, const char *eid, plist_t rec);
int mdm_device_load(mdm_txn_t *txn, const char *device_id, plist_t *out);
int mdm_device_save(mdm_txn_t *txn, const char *device_id, plist_t rec);

/* Whether id can name a device (a UDID or EnrollmentID): 1 to
 * MDM_DEVICE_ID_MAX printable ASCII characters, no space and no ':'. */
bool mdm_device_id_ok(const char *id);

/* Removes everything known about a device: its enrollments (device and
 * user channels), queues, results, binding. The certificate records stay. */
int mdm_device_forget(mdm_txn_t *txn, const char *device_id);

#endif
